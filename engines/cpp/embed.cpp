// embed: token ids -> pooled embeddings with a roformer-trt TensorRT engine (TensorRT 10.x / 11.x).
//
//   embed <libroformer_trt_plugin.so> <model.plan> <ids.txt | ->
//
// ids.txt: one sequence per line, space-separated token ids ([CLS] ... [SEP] included). Sequences are
// padded with id 0 to the longest one; attention_mask marks the real tokens; every other input the engine
// declares (token_type_ids, where the model has it) is 0. Inputs are bound by name, whatever the family.
// Prints one line per sequence: the `sentence_embedding` output when the engine has one (export.build
// --pooling: any sentence-transformers pipeline, its width that of the last Dense layer or --truncate-dim; with
// --outputs sentence_embedding it is the engine's only output), otherwise the
// attention-mask mean of `last_hidden_state` computed here on the host (embedOutputs.h: the choice, the
// shape check and the mean, tested on the host).
// The plugin library is loaded through the plugin registry (loadLibrary calls its getCreators and
// setLoggerFinder) before the plan is deserialized, so the RoformerRotary creator is found: pass
// libroformer_trt_plugin.so. If libroformer_trt_plugin_static.so is already loaded (LD_PRELOAD), its
// creator is used and the library argument is not loaded again. Whether it is registered is read from the
// registry's list of creators (plugins/common/creatorLookup.h), never asked with getCreator, whose miss
// TensorRT logs as an error on every first load.
// Steps, in order: loadPlugin, loadEngine, readBatch, bindInputs, bindOutputs, infer, printEmbeddings.
#include "../../plugins/common/creatorLookup.h"
#include "NvInfer.h"
#include "embedOutputs.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#define RR_CUDA_CHECK(call)                                                                                            \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const st_ = (call);                                                                                \
        if (st_ != cudaSuccess)                                                                                        \
            throw std::runtime_error(std::string(#call) + ": " + cudaGetErrorString(st_) + " at " + __FILE__ + ":"     \
                + std::to_string(__LINE__));                                                                           \
    } while (0)

namespace
{
using nvinfer1::DataType;
using nvinfer1::Dims;

class Logger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, char const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            std::cerr << "[trt] " << msg << "\n";
        }
    }
};

struct StreamDeleter
{
    void operator()(cudaStream_t s) const noexcept { cudaStreamDestroy(s); }
};
using UniqueStream = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDeleter>;

struct DeviceDeleter
{
    void operator()(void* p) const noexcept { cudaFree(p); }
};
using UniqueDevice = std::unique_ptr<void, DeviceDeleter>;

UniqueDevice deviceAlloc(size_t bytes)
{
    void* p{nullptr};
    RR_CUDA_CHECK(cudaMalloc(&p, bytes == 0 ? 1 : bytes));
    return UniqueDevice{p};
}

UniqueStream makeStream()
{
    cudaStream_t s{nullptr};
    RR_CUDA_CHECK(cudaStreamCreate(&s));
    return UniqueStream{s};
}

size_t elementSize(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return 4;
    case DataType::kHALF: return 2;
    case DataType::kBF16: return 2;
    case DataType::kINT32: return 4;
    case DataType::kINT64: return 8;
    default: throw std::runtime_error("embed: unsupported tensor data type " + std::to_string(static_cast<int>(t)));
    }
}

int64_t volume(Dims const& d)
{
    int64_t v = 1;
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        v *= d.d[i];
    }
    return v;
}

std::vector<char> readFile(std::string const& path)
{
    std::ifstream f(path, std::ios::binary);
    if (!f)
    {
        throw std::runtime_error("cannot open " + path);
    }
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// ids: one sequence per line -> row-major [B, S] int64, padded with 0; mask [B, S] 1/0.
struct Batch
{
    int64_t batch{0}, seq{0};
    std::vector<int64_t> ids, mask;
};

Batch readIds(std::istream& in)
{
    std::vector<std::vector<int64_t>> rows;
    std::string line;
    while (std::getline(in, line))
    {
        std::istringstream ls(line);
        std::vector<int64_t> row;
        int64_t v = 0;
        while (ls >> v)
        {
            row.push_back(v);
        }
        if (!row.empty())
        {
            rows.push_back(std::move(row));
        }
    }
    if (rows.empty())
    {
        throw std::runtime_error("no token ids: give one sequence of space-separated ids per line");
    }
    Batch b;
    b.batch = static_cast<int64_t>(rows.size());
    for (auto const& r : rows)
    {
        b.seq = std::max<int64_t>(b.seq, static_cast<int64_t>(r.size()));
    }
    b.ids.assign(b.batch * b.seq, 0);
    b.mask.assign(b.batch * b.seq, 0);
    for (int64_t i = 0; i < b.batch; ++i)
    {
        for (size_t j = 0; j < rows[i].size(); ++j)
        {
            b.ids[i * b.seq + static_cast<int64_t>(j)] = rows[i][j];
            b.mask[i * b.seq + static_cast<int64_t>(j)] = 1;
        }
    }
    return b;
}

// First profile whose [min, max] box holds `shape` for `tensor`; -1 if none.
int32_t pickProfile(nvinfer1::ICudaEngine const& engine, char const* tensor, Dims const& shape)
{
    for (int32_t p = 0; p < engine.getNbOptimizationProfiles(); ++p)
    {
        Dims const lo = engine.getProfileShape(tensor, p, nvinfer1::OptProfileSelector::kMIN);
        Dims const hi = engine.getProfileShape(tensor, p, nvinfer1::OptProfileSelector::kMAX);
        bool fits = lo.nbDims == shape.nbDims;
        for (int32_t i = 0; fits && i < shape.nbDims; ++i)
        {
            fits = lo.d[i] <= shape.d[i] && shape.d[i] <= hi.d[i];
        }
        if (fits)
        {
            return p;
        }
    }
    return -1;
}

float toFloat(void const* base, DataType t, int64_t i)
{
    switch (t)
    {
    case DataType::kHALF: return __half2float(static_cast<__half const*>(base)[i]);
    case DataType::kBF16: return __bfloat162float(static_cast<__nv_bfloat16 const*>(base)[i]);
    case DataType::kFLOAT: return static_cast<float const*>(base)[i];
    default: throw std::runtime_error("embed: output type " + std::to_string(static_cast<int>(t)) + " is not a float");
    }
}

//! A failure the user can fix (a wrong file, a shape no profile takes): message on stderr, exit 2.
struct UsageError : std::runtime_error
{
    using std::runtime_error::runtime_error;
};

// Step 1. Register the RoformerRotary creator before the plan is deserialized (its layers are resolved by
// name then). loadLibrary calls the library's getCreators/setLoggerFinder: pass libroformer_trt_plugin.so.
// It returns null both when the library cannot be loaded and when its creator is already registered (by
// LD_PRELOAD of libroformer_trt_plugin_static.so, say); only the first is an error. "Registered?" is read from
// the registry's list (findCreatorV3One): getCreator would log an error for the expected miss.
void loadPlugin(char const* path)
{
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr)
    {
        throw std::runtime_error("getPluginRegistry() returned null");
    }
    auto registered = [registry] {
        return roformer_trt::findCreatorV3One(*registry, "RoformerRotary", "1", "roformer_trt") != nullptr;
    };
    if (registered())
    {
        return; // already there: loading the library again would be refused
    }
    if (registry->loadLibrary(path) == nullptr && !registered())
    {
        throw UsageError(std::string("cannot load plugin library ") + path
            + "; pass the path of libroformer_trt_plugin.so built for this TensorRT version");
    }
}

// Step 2. Deserialize the plan and create its execution context.
struct Engine
{
    std::unique_ptr<nvinfer1::IRuntime> runtime;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
};

Engine loadEngine(std::string const& planPath, Logger& logger)
{
    std::vector<char> const plan = readFile(planPath);
    Engine e;
    e.runtime.reset(nvinfer1::createInferRuntime(logger));
    if (!e.runtime)
    {
        throw std::runtime_error("createInferRuntime failed");
    }
    e.engine.reset(e.runtime->deserializeCudaEngine(plan.data(), plan.size()));
    if (!e.engine)
    {
        throw UsageError(planPath + " did not deserialize (built by another TensorRT version or GPU?)");
    }
    e.context.reset(e.engine->createExecutionContext());
    if (!e.context)
    {
        throw std::runtime_error("createExecutionContext failed");
    }
    return e;
}

// Step 3. Read the token ids ("-": stdin).
Batch readBatch(char const* path)
{
    if (std::strcmp(path, "-") == 0)
    {
        return readIds(std::cin);
    }
    std::ifstream f(path);
    if (!f)
    {
        throw UsageError(std::string("cannot open ") + path);
    }
    return readIds(f);
}

void setAddress(nvinfer1::IExecutionContext& context, char const* name, void* address)
{
    if (!context.setTensorAddress(name, address))
    {
        throw std::runtime_error(std::string("setTensorAddress failed for ") + name);
    }
}

// Step 4. Pick the profile that takes [B, S], set every input's shape and copy it to the device.
void bindInputs(Engine& e, Batch const& b, cudaStream_t stream, std::vector<UniqueDevice>& buffers)
{
    Dims shape{};
    shape.nbDims = 2; // [B, S]
    shape.d[0] = b.batch;
    shape.d[1] = b.seq;
    int32_t const profile = pickProfile(*e.engine, "input_ids", shape);
    if (profile < 0)
    {
        throw UsageError("batch " + std::to_string(b.batch) + " x sequence " + std::to_string(b.seq)
            + " fits no optimization profile of this engine");
    }
    if (!e.context->setOptimizationProfileAsync(profile, stream))
    {
        throw std::runtime_error("setOptimizationProfileAsync failed");
    }
    for (int32_t i = 0; i < e.engine->getNbIOTensors(); ++i)
    {
        char const* name = e.engine->getIOTensorName(i);
        if (e.engine->getTensorIOMode(name) != nvinfer1::TensorIOMode::kINPUT)
        {
            continue;
        }
        if (!e.context->setInputShape(name, shape))
        {
            throw std::runtime_error(std::string("setInputShape failed for ") + name);
        }
        // every input the engine declares, by name: input_ids and attention_mask from the batch, any other
        // (token_type_ids, where the family has it) zeros; [B, S], int64 or int32 as the engine declares
        DataType const type = e.engine->getTensorDataType(name);
        std::vector<int64_t> host(b.ids.size(), 0);
        if (std::strcmp(name, "input_ids") == 0)
        {
            host = b.ids;
        }
        else if (std::strcmp(name, "attention_mask") == 0)
        {
            host = b.mask;
        }
        std::vector<int32_t> host32(host.begin(), host.end());
        void const* src = type == DataType::kINT32 ? static_cast<void const*>(host32.data()) : host.data();
        size_t const bytes = host.size() * elementSize(type);
        buffers.push_back(deviceAlloc(bytes));
        RR_CUDA_CHECK(cudaMemcpyAsync(buffers.back().get(), src, bytes, cudaMemcpyHostToDevice, stream));
        setAddress(*e.context, name, buffers.back().get());
        RR_CUDA_CHECK(cudaStreamSynchronize(stream)); // host vectors die at the end of this iteration
    }
}

// Step 5. Give every output a device buffer (TensorRT needs an address for each); returns the one to print:
// sentence_embedding, else last_hidden_state (embed::chooseOutput).
char const* bindOutputs(Engine& e, std::vector<UniqueDevice>& buffers)
{
    std::vector<char const*> outputs;
    std::vector<std::string> names;
    for (int32_t i = 0; i < e.engine->getNbIOTensors(); ++i)
    {
        char const* name = e.engine->getIOTensorName(i);
        if (e.engine->getTensorIOMode(name) != nvinfer1::TensorIOMode::kOUTPUT)
        {
            continue;
        }
        Dims const d = e.context->getTensorShape(name);
        buffers.push_back(deviceAlloc(static_cast<size_t>(volume(d)) * elementSize(e.engine->getTensorDataType(name))));
        setAddress(*e.context, name, buffers.back().get());
        outputs.push_back(name);
        names.emplace_back(name);
    }
    int32_t const chosen = embed::chooseOutput(names);
    if (chosen < 0)
    {
        throw UsageError("the engine has neither sentence_embedding nor last_hidden_state");
    }
    return outputs[static_cast<size_t>(chosen)];
}

// Step 6. Run the engine and copy the chosen output back: [B, D] pooled or [B, S, D] hidden.
std::vector<char> infer(Engine& e, char const* outName, cudaStream_t stream, Dims& outDims)
{
    if (!e.context->enqueueV3(stream))
    {
        throw std::runtime_error("enqueueV3 failed");
    }
    outDims = e.context->getTensorShape(outName);
    std::vector<char> out(static_cast<size_t>(volume(outDims)) * elementSize(e.engine->getTensorDataType(outName)));
    RR_CUDA_CHECK(
        cudaMemcpyAsync(out.data(), e.context->getTensorAddress(outName), out.size(), cudaMemcpyDeviceToHost, stream));
    RR_CUDA_CHECK(cudaStreamSynchronize(stream));
    return out;
}

// Step 7. One line per sequence: the pooled vector, or the attention-mask mean of the hidden states.
void printEmbeddings(std::vector<char> const& out, DataType type, Dims const& od, bool pooled, Batch const& b)
{
    std::string const bad = embed::checkShape(pooled, std::vector<int64_t>(od.d, od.d + od.nbDims), b.batch, b.seq);
    if (!bad.empty())
    {
        throw std::runtime_error("embed: " + bad);
    }
    int64_t const hidden = od.d[od.nbDims - 1];
    auto const value = [&out, type](int64_t j) { return toFloat(out.data(), type, j); };
    for (int64_t i = 0; i < b.batch; ++i)
    {
        std::vector<double> v(static_cast<size_t>(hidden), 0.0);
        if (pooled)
        {
            for (int64_t k = 0; k < hidden; ++k)
            {
                v[k] = value(i * hidden + k);
            }
        }
        else
        {
            v = embed::maskedMean(value, b.mask, i, b.seq, hidden);
        }
        for (int64_t k = 0; k < hidden; ++k)
        {
            std::cout << (k ? " " : "") << v[k];
        }
        std::cout << "\n";
    }
}

int run(int argc, char** argv)
{
    if (argc != 4)
    {
        std::cerr << "usage: embed <libroformer_trt_plugin.so> <model.plan> <ids.txt | ->\n";
        return 2;
    }
    Logger logger;
    loadPlugin(argv[1]);
    Engine e = loadEngine(argv[2], logger);
    Batch const b = readBatch(argv[3]);
    UniqueStream stream = makeStream();
    std::vector<UniqueDevice> buffers;
    bindInputs(e, b, stream.get(), buffers);
    char const* outName = bindOutputs(e, buffers);
    Dims outDims{};
    std::vector<char> const out = infer(e, outName, stream.get(), outDims);
    printEmbeddings(
        out, e.engine->getTensorDataType(outName), outDims, std::strcmp(outName, "sentence_embedding") == 0, b);
    return 0;
}
} // namespace

int main(int argc, char** argv)
{
    try
    {
        return run(argc, argv);
    }
    catch (UsageError const& e)
    {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
    catch (std::exception const& e)
    {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
