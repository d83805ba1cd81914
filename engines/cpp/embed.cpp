// embed: token ids -> pooled embeddings with a roformer-trt TensorRT engine (TensorRT 10.x / 11.x).
//
//   embed <libroformer_trt_plugin.so> <model.plan> <ids.txt | ->
//
// ids.txt: one sequence per line, space-separated token ids ([CLS] ... [SEP] included). Sequences are
// padded with id 0 to the longest one; attention_mask marks the real tokens, token_type_ids are 0.
// Prints one line per sequence: the `sentence_embedding` output when the engine has one, otherwise
// the attention-mask mean of `last_hidden_state` computed here on the host.
// The plugin library is loaded through the plugin registry (getCreators + setLoggerFinder entry
// points) before the plan is deserialized, so the RoformerRotary creator is found.
#include "NvInfer.h"

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
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
    if (t == DataType::kHALF)
    {
        return __half2float(static_cast<__half const*>(base)[i]);
    }
    return static_cast<float const*>(base)[i];
}

int run(int argc, char** argv)
{
    if (argc != 4)
    {
        std::cerr << "usage: embed <libroformer_trt_plugin.so> <model.plan> <ids.txt | ->\n";
        return 2;
    }
    Logger logger;
    // Registry first: the plan's RoformerRotary layers are resolved by name at deserialization.
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr || registry->loadLibrary(argv[1]) == nullptr)
    {
        std::cerr << "error: cannot load plugin library " << argv[1] << "; pass the path of libroformer_trt_plugin.so\n";
        return 2;
    }
    std::vector<char> const plan = readFile(argv[2]);
    std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
    if (!runtime)
    {
        throw std::runtime_error("createInferRuntime failed");
    }
    std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(plan.data(), plan.size())};
    if (!engine)
    {
        std::cerr << "error: " << argv[2] << " did not deserialize (built by another TensorRT version or GPU?)\n";
        return 2;
    }
    std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};
    if (!context)
    {
        throw std::runtime_error("createExecutionContext failed");
    }

    Batch b;
    if (std::strcmp(argv[3], "-") == 0)
    {
        b = readIds(std::cin);
    }
    else
    {
        std::ifstream f(argv[3]);
        if (!f)
        {
            std::cerr << "error: cannot open " << argv[3] << "\n";
            return 2;
        }
        b = readIds(f);
    }
    Dims shape{};
    shape.nbDims = 2; // [B, S]
    shape.d[0] = b.batch;
    shape.d[1] = b.seq;

    int32_t const profile = pickProfile(*engine, "input_ids", shape);
    if (profile < 0)
    {
        std::cerr << "error: batch " << b.batch << " x sequence " << b.seq
                  << " fits no optimization profile of this engine\n";
        return 2;
    }
    UniqueStream stream = makeStream();
    if (!context->setOptimizationProfileAsync(profile, stream.get()))
    {
        throw std::runtime_error("setOptimizationProfileAsync failed");
    }

    std::vector<UniqueDevice> buffers;
    char const* pooledName = nullptr;
    char const* hiddenName = nullptr;
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i)
    {
        char const* name = engine->getIOTensorName(i);
        DataType const type = engine->getTensorDataType(name);
        if (engine->getTensorIOMode(name) != nvinfer1::TensorIOMode::kINPUT)
        {
            continue;
        }
        if (!context->setInputShape(name, shape))
        {
            throw std::runtime_error(std::string("setInputShape failed for ") + name);
        }
        // input_ids / attention_mask / token_type_ids: [B, S], int64 or int32 as the engine declares
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
        RR_CUDA_CHECK(cudaMemcpyAsync(buffers.back().get(), src, bytes, cudaMemcpyHostToDevice, stream.get()));
        context->setTensorAddress(name, buffers.back().get());
        RR_CUDA_CHECK(cudaStreamSynchronize(stream.get())); // host vectors die at the end of this iteration
    }
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i)
    {
        char const* name = engine->getIOTensorName(i);
        if (engine->getTensorIOMode(name) != nvinfer1::TensorIOMode::kOUTPUT)
        {
            continue;
        }
        Dims const d = context->getTensorShape(name);
        buffers.push_back(deviceAlloc(static_cast<size_t>(volume(d)) * elementSize(engine->getTensorDataType(name))));
        context->setTensorAddress(name, buffers.back().get());
        if (std::strcmp(name, "sentence_embedding") == 0)
        {
            pooledName = name;
        }
        if (std::strcmp(name, "last_hidden_state") == 0)
        {
            hiddenName = name;
        }
    }
    char const* outName = pooledName != nullptr ? pooledName : hiddenName;
    if (outName == nullptr)
    {
        std::cerr << "error: engine has neither sentence_embedding nor last_hidden_state\n";
        return 2;
    }
    if (!context->enqueueV3(stream.get()))
    {
        throw std::runtime_error("enqueueV3 failed");
    }
    Dims const od = context->getTensorShape(outName); // [B, D] pooled or [B, S, D] hidden
    DataType const ot = engine->getTensorDataType(outName);
    std::vector<char> out(static_cast<size_t>(volume(od)) * elementSize(ot));
    RR_CUDA_CHECK(cudaMemcpyAsync(out.data(), context->getTensorAddress(outName), out.size(), cudaMemcpyDeviceToHost,
        stream.get()));
    RR_CUDA_CHECK(cudaStreamSynchronize(stream.get()));

    int64_t const hidden = od.d[od.nbDims - 1];
    for (int64_t i = 0; i < b.batch; ++i)
    {
        std::vector<double> v(static_cast<size_t>(hidden), 0.0);
        if (outName == pooledName)
        {
            for (int64_t k = 0; k < hidden; ++k)
            {
                v[k] = toFloat(out.data(), ot, i * hidden + k);
            }
        }
        else
        {
            double count = 0.0; // mean over real tokens; all-padding rows stay zero
            for (int64_t s = 0; s < b.seq; ++s)
            {
                if (b.mask[i * b.seq + s] == 0)
                {
                    continue;
                }
                count += 1.0;
                for (int64_t k = 0; k < hidden; ++k)
                {
                    v[k] += toFloat(out.data(), ot, (i * b.seq + s) * hidden + k);
                }
            }
            for (auto& x : v)
            {
                x /= std::max(count, 1e-9);
            }
        }
        for (int64_t k = 0; k < hidden; ++k)
        {
            std::cout << (k ? " " : "") << v[k];
        }
        std::cout << "\n";
    }
    return 0;
}
} // namespace

int main(int argc, char** argv)
{
    try
    {
        return run(argc, argv);
    }
    catch (std::exception const& e)
    {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
