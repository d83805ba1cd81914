/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * TensorRT adapter of RoformerRotary; see roformerRotaryPlugin.h and README.md (the contract).
 * Every noexcept entry point runs its whole body inside try/catch and reports through the plugin logger.
 */
#include "roformerRotaryPlugin.h"

#include "../common/checks.h"
#include "../common/pluginLogger.h"
#include "roformerRotaryKernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>
#include <limits>
#include <memory>

using namespace nvinfer1;

namespace roformer_trt
{
namespace
{
// One spelling per field: ONNX attribute = creator field = serialized field = README Parameters row.
char const* const kNAME{"RoformerRotary"};
char const* const kVERSION{"1"};
char const* const kNAMESPACE{"roformer_trt"};
char const* const kINTERLEAVED{"interleaved"};
char const* const kROTARY_DIM{"rotary_dim"};
// In the contract's table (README Parameters, RoformerRotary_PluginConfig.yaml): TensorRT asks getNbOutputs()
// before it shows the plugin any input, so k must be an attribute. Optional, default 2 (query and key).
char const* const kNUM_TENSORS{"num_tensors"};
constexpr int32_t kDEFAULT_NUM_TENSORS{2};

bool isRotatedType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

std::string dimsToString(Dims const& d)
{
    std::string s{"["};
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        s += (i ? ", " : "") + std::to_string(d.d[i]);
    }
    return s + "]";
}

//! The dims every x_i shares: B (0), S (2) and Dh (3). H (1) is each tensor's own (grouped-query attention).
constexpr int32_t kSHARED_DIMS[] = {0, 2, 3};

//! Checks one concrete or partly known (-1) set of input descriptors; used at build and at runtime.
void checkInputs(PluginTensorDesc const* in, int32_t k, int32_t rotaryDim)
{
    Dims const& x0 = in[0].dims; // x_0: [B, H_0, S, Dh]
    for (int32_t i = 0; i < k; ++i)
    {
        Dims const& xi = in[i].dims; // x_i: [B, H_i, S, Dh]
        RR_VALIDATE(
            xi.nbDims == 4, "x_" + std::to_string(i) + " must be rank 4 [B, H, S, Dh], got " + dimsToString(xi));
        RR_VALIDATE(isRotatedType(in[i].type), "x_" + std::to_string(i) + " must be fp32, fp16 or bf16");
        RR_VALIDATE(in[i].type == in[0].type, "all rotated tensors must have the same dtype");
        for (int32_t a : kSHARED_DIMS)
        {
            RR_VALIDATE(xi.d[a] == -1 || x0.d[a] == -1 || xi.d[a] == x0.d[a],
                "all rotated tensors must share B, S and Dh (H may differ): x_0 " + dimsToString(x0) + ", x_"
                    + std::to_string(i) + " " + dimsToString(xi));
        }
    }
    int64_t const dh = x0.d[3];
    RR_VALIDATE(dh == -1 || (dh % 2 == 0 && rotaryDim <= dh),
        "rotary_dim " + std::to_string(rotaryDim) + " must be <= Dh and Dh even, Dh = " + std::to_string(dh));
    Dims const& tab = in[k].dims; // sincos: [P, R]
    RR_VALIDATE(tab.nbDims == 2, "sincos must be rank 2 [P, R], got " + dimsToString(tab));
    RR_VALIDATE(in[k].type == DataType::kFLOAT, "sincos must be fp32");
    RR_VALIDATE(tab.d[1] == -1 || tab.d[1] == rotaryDim,
        "sincos width " + std::to_string(tab.d[1]) + " must equal rotary_dim " + std::to_string(rotaryDim));
}

//! One integer field's value. TensorRT 10.x's ONNX parser passes an INT attribute as one kINT32; a kINT64 of
//! length 1 (another parser, or a host filling the fields itself) is accepted when its value fits int32, so a
//! value like 2^32 + 64 is refused instead of truncated to 64.
int32_t readIntField(PluginField const& f)
{
    std::string const name{f.name};
    RR_VALIDATE(f.length == 1 && f.data != nullptr,
        "field '" + name + "' must hold one value, got length " + std::to_string(f.length)
            + (f.data == nullptr ? " and no data" : ""));
    if (f.type == PluginFieldType::kINT32)
    {
        int32_t v{};
        std::memcpy(&v, f.data, sizeof(v));
        return v;
    }
    RR_VALIDATE(f.type == PluginFieldType::kINT64,
        "field '" + name + "' must be kINT32 or kINT64, got PluginFieldType "
            + std::to_string(static_cast<int32_t>(f.type)));
    int64_t v{};
    std::memcpy(&v, f.data, sizeof(v));
    RR_VALIDATE(v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(),
        "field '" + name + "' is " + std::to_string(v) + ", outside the int32 range");
    return static_cast<int32_t>(v);
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------
// RoformerRotaryPlugin

RoformerRotaryPlugin::RoformerRotaryPlugin(int32_t interleaved, int32_t rotaryDim, int32_t numTensors)
    : mInterleaved(interleaved)
    , mRotaryDim(rotaryDim)
    , mNumTensors(numTensors)
{
    // Build-time and deserialized plugins both come through here, so both are checked the same way.
    RR_VALIDATE(mInterleaved == kROTARY_INTERLEAVED || mInterleaved == kROTARY_SPLIT_HALVES,
        "interleaved must be 1 (pairs (2j, 2j+1)) or 0 (pairs (j, j+R/2)), got " + std::to_string(mInterleaved));
    RR_VALIDATE(
        mRotaryDim >= 2 && mRotaryDim % 2 == 0, "rotary_dim must be even and >= 2, got " + std::to_string(mRotaryDim));
    RR_VALIDATE(mNumTensors >= 1 && mNumTensors <= kMAX_ROTARY_TENSORS,
        "num_tensors must be in [1, 4], got " + std::to_string(mNumTensors));
    initFields();
}

RoformerRotaryPlugin::RoformerRotaryPlugin(RoformerRotaryPlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mInterleaved(other.mInterleaved)
    , mRotaryDim(other.mRotaryDim)
    , mNumTensors(other.mNumTensors)
{
    initFields(); // the copied PluginFields would point into `other`
}

void RoformerRotaryPlugin::initFields()
{
    mFields = {
        PluginField{kINTERLEAVED, &mInterleaved, PluginFieldType::kINT32, 1},
        PluginField{kROTARY_DIM, &mRotaryDim, PluginFieldType::kINT32, 1},
        PluginField{kNUM_TENSORS, &mNumTensors, PluginFieldType::kINT32, 1},
    };
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

void RoformerRotaryPlugin::checkIoCount(int32_t nbInputs, int32_t nbOutputs) const
{
    RR_VALIDATE(nbInputs == mNumTensors + 1 && nbOutputs == mNumTensors,
        "expected " + std::to_string(mNumTensors) + " tensors + sincos in and " + std::to_string(mNumTensors)
            + " out (num_tensors), got " + std::to_string(nbInputs) + " in, " + std::to_string(nbOutputs) + " out");
}

IPluginCapability* RoformerRotaryPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        RR_FAIL("unknown PluginCapabilityType " + std::to_string(static_cast<int32_t>(type)));
    }
    catch (std::exception const& e)
    {
        logCaught(e);
    }
    return nullptr;
}

IPluginV3* RoformerRotaryPlugin::clone() noexcept
{
    try
    {
        return std::make_unique<RoformerRotaryPlugin>(*this).release(); // TensorRT takes ownership
    }
    catch (std::exception const& e)
    {
        logCaught(e);
    }
    return nullptr;
}

char const* RoformerRotaryPlugin::getPluginName() const noexcept
{
    return kNAME;
}

char const* RoformerRotaryPlugin::getPluginVersion() const noexcept
{
    return kVERSION;
}

char const* RoformerRotaryPlugin::getPluginNamespace() const noexcept
{
    return kNAMESPACE;
}

int32_t RoformerRotaryPlugin::getNbOutputs() const noexcept
{
    return mNumTensors;
}

int32_t RoformerRotaryPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        RR_VALIDATE(outputTypes != nullptr && inputTypes != nullptr, "null type arrays");
        checkIoCount(nbInputs, nbOutputs);
        for (int32_t i = 0; i < mNumTensors; ++i)
        {
            RR_VALIDATE(isRotatedType(inputTypes[i]) && inputTypes[i] == inputTypes[0],
                "x_0..x_{k-1} must all be fp32, all fp16 or all bf16");
        }
        RR_VALIDATE(inputTypes[mNumTensors] == DataType::kFLOAT, "sincos must be fp32");
        for (int32_t i = 0; i < nbOutputs; ++i)
        {
            outputTypes[i] = inputTypes[0]; // y_i: same dtype as x_i
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logCaught(e);
    }
    return -1;
}

int32_t RoformerRotaryPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        RR_VALIDATE(inputs != nullptr && outputs != nullptr, "null shape arrays");
        checkIoCount(nbInputs, nbOutputs);
        for (int32_t i = 0; i < mNumTensors; ++i)
        {
            RR_VALIDATE(inputs[i].nbDims == 4, "x_" + std::to_string(i) + " must be rank 4 [B, H, S, Dh]");
            for (int32_t a : kSHARED_DIMS)
            {
                IDimensionExpr const* d = inputs[i].d[a];
                IDimensionExpr const* d0 = inputs[0].d[a];
                RR_VALIDATE(!d->isConstant() || !d0->isConstant() || d->getConstantValue() == d0->getConstantValue(),
                    "x_" + std::to_string(i) + " dim " + std::to_string(a)
                        + " differs from x_0's: all rotated tensors share B, S and Dh (H may differ)");
            }
            outputs[i] = inputs[i]; // y_i: [B, H_i, S, Dh], the shape of x_i
        }
        DimsExprs const& tab = inputs[mNumTensors]; // sincos: [P, R]
        RR_VALIDATE(tab.nbDims == 2, "sincos must be rank 2 [P, R]");
        RR_VALIDATE(!tab.d[1]->isConstant() || tab.d[1]->getConstantValue() == mRotaryDim,
            "sincos width must equal rotary_dim " + std::to_string(mRotaryDim));
        return 0;
    }
    catch (std::exception const& e)
    {
        logCaught(e);
    }
    return -1;
}

bool RoformerRotaryPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        RR_VALIDATE(inOut != nullptr, "null tensor descriptors");
        checkIoCount(nbInputs, nbOutputs);
        RR_VALIDATE(pos >= 0 && pos < nbInputs + nbOutputs, "position out of range");
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        if (pos == mNumTensors) // sincos
        {
            return d.type == DataType::kFLOAT;
        }
        // x_0 picks fp32 / fp16 / bf16; every other x_i and every y_i must follow it (TensorRT asks in order).
        return pos == 0 ? isRotatedType(d.type) : d.type == inOut[0].desc.type;
    }
    catch (std::exception const& e)
    {
        logCaught(e);
    }
    return false;
}

int32_t RoformerRotaryPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        RR_VALIDATE(in != nullptr && out != nullptr, "null tensor descriptors");
        checkIoCount(nbInputs, nbOutputs);
        std::vector<PluginTensorDesc> desc(static_cast<size_t>(nbInputs));
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            desc[static_cast<size_t>(i)] = in[i].desc;
        }
        checkInputs(desc.data(), mNumTensors, mRotaryDim);
        for (int32_t i = 0; i < nbOutputs; ++i)
        {
            RR_VALIDATE(out[i].desc.type == in[0].desc.type, "y_i must have the dtype of x_i");
        }
        // Profile: the largest S must fit the table (P is usually a constant: the table is an initializer).
        int64_t const maxS = in[0].max.nbDims == 4 ? in[0].max.d[2] : -1;
        int64_t const rows = in[mNumTensors].desc.dims.d[0] != -1
            ? in[mNumTensors].desc.dims.d[0]
            : (in[mNumTensors].min.nbDims == 2 ? in[mNumTensors].min.d[0] : -1);
        RR_VALIDATE(maxS < 0 || rows < 0 || maxS <= rows,
            "profile max sequence " + std::to_string(maxS) + " exceeds the sincos table rows " + std::to_string(rows)
                + "; re-export with a larger --max-len");
        return 0;
    }
    catch (std::exception const& e)
    {
        logCaught(e);
    }
    return -1;
}

size_t RoformerRotaryPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

int32_t RoformerRotaryPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        RR_VALIDATE(in != nullptr && out != nullptr, "null tensor descriptors");
        checkIoCount(nbInputs, nbOutputs);
        checkInputs(in, mNumTensors, mRotaryDim);
        RR_VALIDATE(in[0].dims.d[2] <= in[mNumTensors].dims.d[0],
            "sequence length " + std::to_string(in[0].dims.d[2]) + " exceeds the sincos table rows "
                + std::to_string(in[mNumTensors].dims.d[0]));
        return 0;
    }
    catch (std::exception const& e)
    {
        logCaught(e);
    }
    return -1;
}

namespace
{
template <typename T>
cudaError_t dispatch(
    int32_t k, RotaryShape const& s, void const* const* inputs, void* const* outputs, cudaStream_t stream)
{
    RotaryTensors<T> t{};
    t.count = k;
    for (int32_t i = 0; i < k; ++i)
    {
        t.x[i] = static_cast<T const*>(inputs[i]); // x_i: [B, H, S, Dh]
        t.y[i] = static_cast<T*>(outputs[i]);      // y_i: [B, H, S, Dh]
    }
    return launchRoformerRotary<T>(t, static_cast<float const*>(inputs[k]), s, stream); // sincos: [P, R]
}
} // namespace

int32_t RoformerRotaryPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        RR_VALIDATE(inputDesc != nullptr && inputs != nullptr && outputs != nullptr, "null enqueue arguments");
        Dims const& x = inputDesc[0].dims;             // x_0: [B, H_0, S, Dh]
        Dims const& tab = inputDesc[mNumTensors].dims; // [P, R]
        RR_VALIDATE(tab.nbDims == 2, "bad ranks at enqueue");
        RotaryShape s = uniformShape(x.d[0], 0, x.d[2], x.d[3], mRotaryDim, tab.d[0], mInterleaved);
        for (int32_t i = 0; i < mNumTensors; ++i)
        {
            Dims const& xi = inputDesc[i].dims; // x_i: [B, H_i, S, Dh]; the kernel indexes x_i with x_0's B, S, Dh
            RR_VALIDATE(xi.nbDims == 4 && xi.d[0] == x.d[0] && xi.d[2] == x.d[2] && xi.d[3] == x.d[3]
                    && inputDesc[i].type == inputDesc[0].type,
                "bad shapes or dtypes at enqueue: x_" + std::to_string(i) + " " + dimsToString(xi) + ", x_0 "
                    + dimsToString(x));
            s.heads[i] = xi.d[1];
        }
        int32_t const dtype = inputDesc[0].type == DataType::kFLOAT ? kROTARY_F32
            : inputDesc[0].type == DataType::kHALF                  ? kROTARY_F16
                                                                    : kROTARY_BF16;
        if (char const* why = validateRotaryCall(dtype, mNumTensors, s))
        {
            // Refuse the launch (e.g. S > P): a CUDA error status, never a silent wrong result.
            logMessage(ILogger::Severity::kERROR, (std::string("RoformerRotary enqueue: ") + why).c_str());
            return static_cast<int32_t>(cudaErrorInvalidValue);
        }
        cudaError_t st = cudaErrorInvalidValue;
        switch (inputDesc[0].type)
        {
        case DataType::kFLOAT: st = dispatch<float>(mNumTensors, s, inputs, outputs, stream); break;
        case DataType::kHALF: st = dispatch<__half>(mNumTensors, s, inputs, outputs, stream); break;
        case DataType::kBF16: st = dispatch<__nv_bfloat16>(mNumTensors, s, inputs, outputs, stream); break;
        default: RR_FAIL("x must be fp32, fp16 or bf16");
        }
        if (st != cudaSuccess)
        {
            logMessage(ILogger::Severity::kERROR,
                (std::string("RoformerRotary enqueue: launch failed: ") + cudaGetErrorString(st)).c_str());
        }
        return static_cast<int32_t>(st);
    }
    catch (std::exception const& e)
    {
        logCaught(e);
    }
    return static_cast<int32_t>(cudaErrorUnknown);
}

IPluginV3* RoformerRotaryPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // no per-context resources
}

PluginFieldCollection const* RoformerRotaryPlugin::getFieldsToSerialize() noexcept
{
    return &mFieldCollection; // fields point at the members, so they are always current
}

// ---------------------------------------------------------------------------------------------------------------
// RoformerRotaryPluginCreator

RoformerRotaryPluginCreator::RoformerRotaryPluginCreator()
{
    mFields = {
        PluginField{kINTERLEAVED, nullptr, PluginFieldType::kINT32, 1},
        PluginField{kROTARY_DIM, nullptr, PluginFieldType::kINT32, 1},
        PluginField{kNUM_TENSORS, nullptr, PluginFieldType::kINT32, 1},
    };
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* RoformerRotaryPluginCreator::getPluginName() const noexcept
{
    return kNAME;
}

char const* RoformerRotaryPluginCreator::getPluginVersion() const noexcept
{
    return kVERSION;
}

char const* RoformerRotaryPluginCreator::getPluginNamespace() const noexcept
{
    return kNAMESPACE;
}

PluginFieldCollection const* RoformerRotaryPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* RoformerRotaryPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        RR_VALIDATE(fc != nullptr && (fc->nbFields == 0 || fc->fields != nullptr), "null PluginFieldCollection");
        int32_t interleaved{1};
        int32_t rotaryDim{-1};
        int32_t numTensors{kDEFAULT_NUM_TENSORS};
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            if (f.name == nullptr)
            {
                continue;
            }
            int32_t* dst = std::strcmp(f.name, kINTERLEAVED) == 0 ? &interleaved
                : std::strcmp(f.name, kROTARY_DIM) == 0           ? &rotaryDim
                : std::strcmp(f.name, kNUM_TENSORS) == 0          ? &numTensors
                                                                  : nullptr;
            if (dst == nullptr)
            {
                logMessage(ILogger::Severity::kWARNING,
                    (std::string("RoformerRotary: ignoring unknown field '") + f.name + "'").c_str());
                continue;
            }
            *dst = readIntField(f);
        }
        RR_VALIDATE(rotaryDim != -1, "the rotary_dim field is required");
        // The same constructor validates build-time and deserialized (kRUNTIME) plugins.
        return std::make_unique<RoformerRotaryPlugin>(interleaved, rotaryDim, numTensors).release();
    }
    catch (std::exception const& e)
    {
        logCaught(e);
    }
    return nullptr;
}

} // namespace roformer_trt
