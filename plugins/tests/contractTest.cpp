/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Contract test of the TensorRT adapter: loads the built plugin library with dlopen and drives it through
 * its public interfaces only, in the order TensorRT's ONNX parser, builder and runtime do. It is NOT
 * TensorRT and proves nothing about TensorRT itself; the stand-ins here (a logger finder, a constant-folding
 * expression builder) only drive our library's side of the C ABI. Run by tests/plugins/test_contract.py.
 *
 *   contract_test drive  <libroformer_trt_plugin.so> --name N --version V --namespace NS --fields a,b,c [--no-gpu]
 *   contract_test static <stub libnvinfer.so.M> <static plugin library linked to it> --namespace NS
 *   contract_test mixed  <stub libnvinfer.so.M> <libroformer_trt_plugin.so built with another major>
 *   contract_test lookup <stub libnvinfer.so.M> <libroformer_trt_plugin.so> --name N --version V --namespace NS
 *
 * Prints "ok <check>" / "FAIL <check>" per check and "contract: P passed, F failed"; exit 0 when F == 0.
 */
#include "../common/creatorLookup.h"

#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <dlfcn.h>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

using namespace nvinfer1;

namespace
{
int gPassed = 0;
int gFailed = 0;

void check(bool ok, std::string const& what)
{
    (ok ? gPassed : gFailed)++;
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    std::fflush(stdout);
}

// ------------------------------------------------------------------------------------------------ logging

class TestLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            errors.emplace_back(msg != nullptr ? msg : "");
        }
    }
    std::vector<std::string> errors;
};

class TestLoggerFinder : public ILoggerFinder
{
public:
    ILogger* findLogger() override
    {
        ++calls;
        return &logger;
    }
    TestLogger logger;
    int calls{0};
};

TestLoggerFinder gFinder;

//! True when the library logged at least one error or warning since `mark`.
bool loggedSince(size_t mark)
{
    return gFinder.logger.errors.size() > mark;
}

// ------------------------------------------------------------------------------------- expression builder

//! IExprBuilder / IDimensionExpr are non-virtual wrappers over apiv::VExprBuilder / apiv::VDimensionExpr:
//! the test implements those, folding constants (all our shapes are constants or -1 "unknown").
class ConstExpr : public IDimensionExpr
{
    class Impl : public apiv::VDimensionExpr
    {
    public:
        explicit Impl(int64_t v, bool c)
            : value(v)
            , constant(c)
        {
        }
        bool isConstant() const override { return constant; }
        int64_t getConstantValue() const override { return constant ? value : -1; }
        bool isSizeTensor() const override { return false; }
        int64_t value;
        bool constant;
    };

public:
    ConstExpr(int64_t v, bool c)
        : mImplObj(v, c)
    {
        mImpl = &mImplObj;
    }
    ~ConstExpr() noexcept override = default;

private:
    Impl mImplObj;
};

class FoldingBuilder : public IExprBuilder
{
    class Impl : public apiv::VExprBuilder
    {
    public:
        IDimensionExpr const* constant(int64_t value) override
        {
            exprs.emplace_back(value, true);
            return &exprs.back();
        }
        IDimensionExpr const* operation(
            DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
        {
            if (!a.isConstant() || !b.isConstant())
            {
                exprs.emplace_back(-1, false);
                return &exprs.back();
            }
            int64_t const x = a.getConstantValue();
            int64_t const y = b.getConstantValue();
            int64_t r = 0;
            switch (op)
            {
            case DimensionOperation::kSUM: r = x + y; break;
            case DimensionOperation::kPROD: r = x * y; break;
            case DimensionOperation::kMAX: r = x > y ? x : y; break;
            case DimensionOperation::kMIN: r = x < y ? x : y; break;
            case DimensionOperation::kSUB: r = x - y; break;
            case DimensionOperation::kEQUAL: r = x == y; break;
            case DimensionOperation::kLESS: r = x < y; break;
            case DimensionOperation::kFLOOR_DIV: r = y ? x / y : 0; break;
            case DimensionOperation::kCEIL_DIV: r = y ? (x + y - 1) / y : 0; break;
            }
            exprs.emplace_back(r, true);
            return &exprs.back();
        }
        IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
        {
            return nullptr;
        }
        std::deque<ConstExpr> exprs; // stable addresses
    };

public:
    FoldingBuilder() { mImpl = &mImplObj; }
    ~FoldingBuilder() noexcept override = default;
    IDimensionExpr const* unknown()
    {
        mImplObj.exprs.emplace_back(-1, false);
        return &mImplObj.exprs.back();
    }

private:
    Impl mImplObj;
};

// ------------------------------------------------------------------------------------------- fields

struct Field
{
    std::string name;
    PluginFieldType type;
    int32_t length;
    std::vector<unsigned char> data; // empty + nullData: a null pointer
    bool nullData{false};
};

Field intField(std::string name, int32_t v)
{
    Field f{std::move(name), PluginFieldType::kINT32, 1, std::vector<unsigned char>(sizeof(int32_t))};
    std::memcpy(f.data.data(), &v, sizeof(v));
    return f;
}

//! The same attribute as a parser that maps ONNX INT (int64 in the proto) to kINT64 would pass it.
Field int64Field(std::string name, int64_t v)
{
    Field f{std::move(name), PluginFieldType::kINT64, 1, std::vector<unsigned char>(sizeof(int64_t))};
    std::memcpy(f.data.data(), &v, sizeof(v));
    return f;
}

//! Owns the storage a PluginFieldCollection points into.
struct Fields
{
    explicit Fields(std::vector<Field> f)
        : fields(std::move(f))
    {
        for (Field const& x : fields)
        {
            raw.push_back(PluginField{x.name.c_str(), x.nullData ? nullptr : x.data.data(), x.type, x.length});
        }
        fc.nbFields = static_cast<int32_t>(raw.size());
        fc.fields = raw.data();
    }
    std::vector<Field> fields;
    std::vector<PluginField> raw;
    PluginFieldCollection fc{};
};

std::string describe(PluginFieldCollection const* fc)
{
    std::ostringstream s;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        s << (i ? ", " : "") << (f.name ? f.name : "(null)") << ":" << static_cast<int32_t>(f.type) << "x" << f.length;
        if (f.type == PluginFieldType::kINT32 && f.length == 1 && f.data != nullptr)
        {
            s << "=" << *static_cast<int32_t const*>(f.data);
        }
    }
    return s.str();
}

// ------------------------------------------------------------------------------------------ helpers

struct Library
{
    void* handle{nullptr};
    void (*setLoggerFinder)(ILoggerFinder*){nullptr};
    IPluginCreatorInterface* const* (*getCreators)(int32_t&) {nullptr};
};

Library openPlugin(char const* path, int flags = RTLD_NOW | RTLD_LOCAL)
{
    Library lib;
    lib.handle = dlopen(path, flags);
    if (lib.handle == nullptr)
    {
        std::printf("FAIL dlopen %s: %s\n", path, dlerror());
        std::exit(2);
    }
    lib.setLoggerFinder = reinterpret_cast<void (*)(ILoggerFinder*)>(dlsym(lib.handle, "setLoggerFinder"));
    lib.getCreators = reinterpret_cast<IPluginCreatorInterface* const* (*)(int32_t&)>(dlsym(lib.handle, "getCreators"));
    return lib;
}

std::vector<std::string> split(std::string const& s, char sep)
{
    std::vector<std::string> out;
    std::stringstream ss(s);
    for (std::string x; std::getline(ss, x, sep);)
    {
        out.push_back(x);
    }
    return out;
}

Dims dims(std::initializer_list<int64_t> v)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(v.size());
    int32_t i = 0;
    for (int64_t x : v)
    {
        d.d[i++] = x;
    }
    return d;
}

//! k rotated tensors [B, H, S, Dh] of `t` + the table [P, R] fp32, then k outputs.
std::vector<DynamicPluginTensorDesc> ioDescs(
    int32_t k, DataType t, Dims x, Dims tab, int64_t maxS = -1, DataType tabType = DataType::kFLOAT)
{
    std::vector<DynamicPluginTensorDesc> io(static_cast<size_t>(2 * k + 1));
    for (int32_t i = 0; i < 2 * k + 1; ++i)
    {
        bool const isTab = i == k;
        DynamicPluginTensorDesc& d = io[static_cast<size_t>(i)];
        d.desc.dims = isTab ? tab : x;
        d.desc.type = isTab ? tabType : t;
        d.desc.format = TensorFormat::kLINEAR;
        d.desc.scale = 1.F;
        d.min = d.desc.dims;
        d.opt = d.desc.dims;
        d.max = d.desc.dims;
        if (!isTab && maxS > 0)
        {
            d.max.d[2] = maxS;
        }
    }
    return io;
}

//! Grouped-query attention: x_1..x_{k-1} (and y_1..y_{k-1}) get `heads` heads, x_0 keeps its own.
void setKvHeads(std::vector<DynamicPluginTensorDesc>& io, int32_t k, int64_t heads)
{
    for (int32_t i = 1; i < k; ++i)
    {
        for (size_t at : {static_cast<size_t>(i), static_cast<size_t>(k + 1 + i)})
        {
            for (Dims* d : {&io[at].desc.dims, &io[at].min, &io[at].opt, &io[at].max})
            {
                d->d[1] = heads;
            }
        }
    }
}

//! x_1.. with dim `axis` changed to `value` (a refusal: B, S and Dh are shared by all rotated tensors).
std::vector<DynamicPluginTensorDesc> withOtherDim(
    std::vector<DynamicPluginTensorDesc> io, int32_t k, int32_t axis, int64_t value)
{
    for (int32_t i = 1; i < k; ++i)
    {
        DynamicPluginTensorDesc& d = io[static_cast<size_t>(i)];
        d.desc.dims.d[axis] = value;
        d.min.d[axis] = d.opt.d[axis] = d.max.d[axis] = value;
    }
    return io;
}

// ----------------------------------------------------------------------------------------- the drive

struct Expect
{
    std::string name, version, ns;
    std::vector<std::string> fields;
    bool gpu{true};
};

IPluginCreatorV3One* findCreator(Library const& lib, Expect const& e)
{
    gFinder.calls = 0;
    lib.setLoggerFinder(&gFinder);
    int32_t n = -1;
    IPluginCreatorInterface* const* creators = lib.getCreators(n);
    check(creators != nullptr && n == 1, "getCreators returns one creator (got " + std::to_string(n) + ")");
    if (creators == nullptr || n != 1)
    {
        return nullptr;
    }
    InterfaceInfo const info = creators[0]->getInterfaceInfo();
    check(std::string(info.kind) == "PLUGIN CREATOR_V3ONE" && info.major == 1,
        std::string("interface kind PLUGIN CREATOR_V3ONE 1, got ") + info.kind + " " + std::to_string(info.major));
    auto* c = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(e.name == c->getPluginName(), "creator name " + e.name);
    check(e.version == c->getPluginVersion(), "creator version " + e.version);
    check(e.ns == c->getPluginNamespace(), "creator namespace " + e.ns);
    PluginFieldCollection const* names = c->getFieldNames();
    bool same = names != nullptr && names->nbFields == static_cast<int32_t>(e.fields.size());
    for (int32_t i = 0; same && i < names->nbFields; ++i)
    {
        PluginField const& f = names->fields[i];
        same = f.name != nullptr && e.fields[static_cast<size_t>(i)] == f.name && f.type == PluginFieldType::kINT32
            && f.length == 1;
    }
    check(same, "getFieldNames equals the contract's table (names, kINT32, length 1): " + describe(names));
    return c;
}

IPluginV3* create(IPluginCreatorV3One* c, std::vector<Field> f, TensorRTPhase phase)
{
    Fields fields(std::move(f));
    return c->createPlugin("rotary_0", &fields.fc, phase);
}

void driveFormats(IPluginV3OneBuild* b, int32_t k, std::string const& tag)
{
    int32_t const n = 2 * k + 1;
    std::set<std::pair<int32_t, int32_t>> const rotated = {{static_cast<int32_t>(DataType::kFLOAT), 0},
        {static_cast<int32_t>(DataType::kHALF), 0}, {static_cast<int32_t>(DataType::kBF16), 0}};
    bool ok = true;
    std::string why;
    // As the builder does: position by position, earlier positions fixed to an accepted combination.
    for (auto const& [t0, f0] : rotated)
    {
        std::vector<DynamicPluginTensorDesc> io
            = ioDescs(k, static_cast<DataType>(t0), dims({1, 2, 8, 64}), dims({16, 64}));
        for (int32_t pos = 0; pos < n; ++pos)
        {
            std::set<std::pair<int32_t, int32_t>> accepted;
            for (int32_t t = 0; t < EnumMax<DataType>(); ++t)
            {
                for (int32_t f = 0; f < EnumMax<TensorFormat>(); ++f)
                {
                    io[static_cast<size_t>(pos)].desc.type = static_cast<DataType>(t);
                    io[static_cast<size_t>(pos)].desc.format = static_cast<TensorFormat>(f);
                    if (b->supportsFormatCombination(pos, io.data(), k + 1, k))
                    {
                        accepted.insert({t, f});
                    }
                }
            }
            std::set<std::pair<int32_t, int32_t>> const expected = pos == 0 ? rotated
                : pos == k ? std::set<std::pair<int32_t, int32_t>>{{static_cast<int32_t>(DataType::kFLOAT), 0}}
                           : std::set<std::pair<int32_t, int32_t>>{{t0, 0}};
            if (accepted != expected)
            {
                ok = false;
                why += " pos " + std::to_string(pos) + " (x_0 type " + std::to_string(t0) + ") accepted "
                    + std::to_string(accepted.size()) + " combinations";
            }
            // fix this position to its accepted combination for the next ones
            io[static_cast<size_t>(pos)].desc.type = static_cast<DataType>(pos == k ? 0 : t0);
            io[static_cast<size_t>(pos)].desc.format = TensorFormat::kLINEAR;
        }
    }
    check(ok, tag + "supportsFormatCombination accepts exactly the contract's combinations" + why);
}

std::string tagOf(int32_t k, int32_t interleaved)
{
    return "k=" + std::to_string(k) + " interleaved=" + std::to_string(interleaved) + ": ";
}

void driveBuild(IPluginCreatorV3One* c, int32_t k, int32_t interleaved)
{
    std::string const tag = tagOf(k, interleaved);
    size_t mark = gFinder.logger.errors.size();
    IPluginV3* p
        = create(c, {intField("interleaved", interleaved), intField("rotary_dim", 64), intField("num_tensors", k)},
            TensorRTPhase::kBUILD);
    check(p != nullptr && !loggedSince(mark), tag + "createPlugin(kBUILD) with the parser's fields");
    if (p == nullptr)
    {
        return;
    }
    // The same attributes as kINT64 fields: the same plugin, serialized as the contract's kINT32 fields.
    mark = gFinder.logger.errors.size();
    IPluginV3* p64 = create(c,
        {int64Field("interleaved", interleaved), int64Field("rotary_dim", 64), int64Field("num_tensors", k)},
        TensorRTPhase::kBUILD);
    auto serialized = [](IPluginV3* q) {
        auto* r = static_cast<IPluginV3OneRuntime*>(q->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        return describe(r->getFieldsToSerialize());
    };
    check(p64 != nullptr && !loggedSince(mark) && serialized(p64) == serialized(p),
        tag + "createPlugin(kBUILD) with kINT64 fields gives the kINT32 plugin: " + (p64 ? serialized(p64) : "null"));
    delete p64;
    auto* core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && build && rt, tag + "every capability interface");
    if (!core || !build || !rt)
    {
        return;
    }
    check(std::string(core->getInterfaceInfo().kind) == "PLUGIN_V3ONE_CORE"
            && std::string(build->getInterfaceInfo().kind) == "PLUGIN_V3ONE_BUILD"
            && std::string(rt->getInterfaceInfo().kind) == "PLUGIN_V3ONE_RUNTIME",
        tag + "capability interface kinds");
    check(std::string(core->getPluginName()) == c->getPluginName()
            && std::string(core->getPluginNamespace()) == c->getPluginNamespace(),
        tag + "plugin name/namespace equal the creator's");
    check(build->getNbOutputs() == k, tag + "getNbOutputs == num_tensors");

    // output dtypes
    for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        std::vector<DataType> in(static_cast<size_t>(k), t);
        in.push_back(DataType::kFLOAT);
        std::vector<DataType> out(static_cast<size_t>(k), DataType::kINT8);
        int32_t const r = build->getOutputDataTypes(out.data(), k, in.data(), k + 1);
        bool same = r == 0;
        for (DataType o : out)
        {
            same = same && o == t;
        }
        check(same, tag + "getOutputDataTypes: y_i has x_i's type " + std::to_string(static_cast<int32_t>(t)));
    }
    std::vector<DataType> mixed(static_cast<size_t>(k + 1), DataType::kHALF);
    mixed[static_cast<size_t>(k)] = DataType::kHALF; // fp16 table
    std::vector<DataType> out(static_cast<size_t>(k));
    mark = gFinder.logger.errors.size();
    check(build->getOutputDataTypes(out.data(), k, mixed.data(), k + 1) != 0 && loggedSince(mark),
        tag + "getOutputDataTypes refuses an fp16 table, with a logged reason");

    driveFormats(build, k, tag);

    // output shapes through the expression builder; x_1.. with 4 heads against x_0's 12 (grouped-query attention)
    FoldingBuilder eb;
    std::vector<DimsExprs> inE(static_cast<size_t>(k + 1));
    for (int32_t i = 0; i < k; ++i)
    {
        DimsExprs& d = inE[static_cast<size_t>(i)];
        d.nbDims = 4;
        d.d[0] = eb.unknown(); // B
        d.d[1] = eb.constant(i == 0 ? 12 : 4);
        d.d[2] = eb.unknown(); // S
        d.d[3] = eb.constant(64);
    }
    inE[static_cast<size_t>(k)].nbDims = 2;
    inE[static_cast<size_t>(k)].d[0] = eb.constant(512);
    inE[static_cast<size_t>(k)].d[1] = eb.constant(64);
    std::vector<DimsExprs> outE(static_cast<size_t>(k));
    bool shapesOk = build->getOutputShapes(inE.data(), k + 1, nullptr, 0, outE.data(), k, eb) == 0;
    for (int32_t i = 0; shapesOk && i < k; ++i)
    {
        DimsExprs const& o = outE[static_cast<size_t>(i)];
        shapesOk = o.nbDims == 4 && !o.d[0]->isConstant() && o.d[1]->getConstantValue() == (i == 0 ? 12 : 4)
            && !o.d[2]->isConstant() && o.d[3]->getConstantValue() == 64;
    }
    check(shapesOk, tag + "getOutputShapes: y_i = [B, H_i, S, Dh] of x_i, H_i per tensor");
    if (k > 1)
    {
        DimsExprs const dh = inE[1];
        inE[1].d[3] = eb.constant(32);
        mark = gFinder.logger.errors.size();
        check(build->getOutputShapes(inE.data(), k + 1, nullptr, 0, outE.data(), k, eb) != 0 && loggedSince(mark),
            tag + "getOutputShapes refuses x_1 with another Dh");
        inE[1] = dh;
    }
    inE[static_cast<size_t>(k)].d[1] = eb.constant(32);
    mark = gFinder.logger.errors.size();
    check(build->getOutputShapes(inE.data(), k + 1, nullptr, 0, outE.data(), k, eb) != 0 && loggedSince(mark),
        tag + "getOutputShapes refuses a table narrower than rotary_dim");

    // configurePlugin
    auto io = ioDescs(k, DataType::kHALF, dims({-1, 12, -1, 64}), dims({512, 64}), 512);
    check(build->configurePlugin(io.data(), k + 1, io.data() + k + 1, k) == 0,
        tag + "configurePlugin accepts a valid profile");
    auto gqa = io;
    setKvHeads(gqa, k, 4);
    check(build->configurePlugin(gqa.data(), k + 1, gqa.data() + k + 1, k) == 0,
        tag + "configurePlugin accepts x_1.. with fewer heads than x_0");
    struct Refusal
    {
        char const* what;
        std::vector<DynamicPluginTensorDesc> io;
    };
    std::vector<Refusal> refusals;
    refusals.push_back({"R > Dh", ioDescs(k, DataType::kHALF, dims({-1, 12, -1, 32}), dims({512, 64}), 512)});
    refusals.push_back({"odd Dh", ioDescs(k, DataType::kHALF, dims({-1, 12, -1, 65}), dims({512, 64}), 512)});
    refusals.push_back(
        {"profile S above the table rows", ioDescs(k, DataType::kHALF, dims({-1, 12, -1, 64}), dims({512, 64}), 513)});
    refusals.push_back(
        {"fp16 table", ioDescs(k, DataType::kHALF, dims({-1, 12, -1, 64}), dims({512, 64}), 512, DataType::kHALF)});
    if (k > 1)
    {
        auto m = ioDescs(k, DataType::kHALF, dims({-1, 12, -1, 64}), dims({512, 64}), 512);
        m[1].desc.type = DataType::kFLOAT;
        refusals.push_back({"mixed dtypes", m});
        auto const fixed = ioDescs(k, DataType::kHALF, dims({2, 12, 16, 64}), dims({512, 64}), 512);
        refusals.push_back({"x_1.. with another B", withOtherDim(fixed, k, 0, 3)});
        refusals.push_back({"x_1.. with another S", withOtherDim(fixed, k, 2, 17)});
        refusals.push_back({"x_1.. with another Dh", withOtherDim(fixed, k, 3, 128)});
    }
    for (Refusal& r : refusals)
    {
        mark = gFinder.logger.errors.size();
        check(build->configurePlugin(r.io.data(), k + 1, r.io.data() + k + 1, k) != 0 && loggedSince(mark),
            tag + "configurePlugin refuses " + r.what + ", with a logged reason");
    }
    check(build->getWorkspaceSize(io.data(), k + 1, io.data() + k + 1, k) == 0, tag + "getWorkspaceSize is 0");
    delete p;
}

void driveRuntime(IPluginCreatorV3One* c, int32_t k, int32_t interleaved, bool gpu)
{
    std::string const tag = tagOf(k, interleaved);
    std::vector<Field> fields{intField("rotary_dim", 32), intField("num_tensors", k)};
    if (interleaved != 1)
    {
        fields.push_back(intField("interleaved", interleaved));
    }
    IPluginV3* p = create(c, fields, TensorRTPhase::kBUILD);
    check(p != nullptr,
        tag
            + (interleaved == 1 ? "createPlugin with interleaved absent (default 1)"
                                : "createPlugin, interleaved last"));
    if (p == nullptr)
    {
        return;
    }
    auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* ser = rt->getFieldsToSerialize();
    std::string const before = describe(ser);
    check(before
            == "interleaved:" + std::to_string(static_cast<int32_t>(PluginFieldType::kINT32))
                + "x1=" + std::to_string(interleaved) + ", rotary_dim:"
                + std::to_string(static_cast<int32_t>(PluginFieldType::kINT32)) + "x1=32, num_tensors:"
                + std::to_string(static_cast<int32_t>(PluginFieldType::kINT32)) + "x1=" + std::to_string(k),
        tag + "getFieldsToSerialize: " + before);
    IPluginV3* back = c->createPlugin("rotary_0", ser, TensorRTPhase::kRUNTIME);
    auto* backRt = back
        ? static_cast<IPluginV3OneRuntime*>(back->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
        : nullptr;
    check(backRt != nullptr && describe(backRt->getFieldsToSerialize()) == before,
        tag + "createPlugin(kRUNTIME) from the serialized fields gives identical fields");

    IPluginV3* cl = p->clone();
    IPluginV3* att = rt->attachToContext(nullptr);
    delete p; // the copies must not point into the original (ASan would see it)
    for (IPluginV3* copy : {cl, att})
    {
        auto* r = copy ? static_cast<IPluginV3OneRuntime*>(copy->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
                       : nullptr;
        auto* b = copy ? static_cast<IPluginV3OneBuild*>(copy->getCapabilityInterface(PluginCapabilityType::kBUILD))
                       : nullptr;
        check(r && b && describe(r->getFieldsToSerialize()) == before && b->getNbOutputs() == k,
            tag + (copy == cl ? "clone" : "attachToContext") + " is a deep copy that outlives the original");
    }

    // runtime shapes
    std::vector<PluginTensorDesc> in(static_cast<size_t>(k + 1));
    std::vector<PluginTensorDesc> out(static_cast<size_t>(k));
    for (int32_t i = 0; i <= k; ++i)
    {
        in[static_cast<size_t>(i)].dims = i == k ? dims({16, 32}) : dims({2, 4, 16, 64});
        in[static_cast<size_t>(i)].type = i == k ? DataType::kFLOAT : DataType::kHALF;
        in[static_cast<size_t>(i)].format = TensorFormat::kLINEAR;
    }
    for (int32_t i = 0; i < k; ++i)
    {
        out[static_cast<size_t>(i)] = in[0];
    }
    auto* r = static_cast<IPluginV3OneRuntime*>(cl->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(r->onShapeChange(in.data(), k + 1, out.data(), k) == 0, tag + "onShapeChange accepts S <= P");
    std::vector<PluginTensorDesc> gqa = in; // x_1.. with 2 heads against x_0's 4
    std::vector<PluginTensorDesc> gqaOut = out;
    for (int32_t i = 1; i < k; ++i)
    {
        gqa[static_cast<size_t>(i)].dims.d[1] = 2;
        gqaOut[static_cast<size_t>(i)].dims.d[1] = 2;
    }
    check(r->onShapeChange(gqa.data(), k + 1, gqaOut.data(), k) == 0,
        tag + "onShapeChange accepts x_1.. with fewer heads than x_0");
    if (k > 1)
    {
        std::vector<PluginTensorDesc> otherDh = gqa;
        otherDh[1].dims.d[3] = 32;
        size_t const before = gFinder.logger.errors.size();
        check(r->onShapeChange(otherDh.data(), k + 1, gqaOut.data(), k) != 0 && loggedSince(before),
            tag + "onShapeChange refuses x_1 with another Dh");
        std::vector<void const*> insDh(static_cast<size_t>(k + 1), nullptr);
        std::vector<void*> outsDh(static_cast<size_t>(k), nullptr);
        std::vector<uint16_t> buf(64);
        for (auto& q : insDh)
        {
            q = buf.data();
        }
        for (auto& q : outsDh)
        {
            q = buf.data();
        }
        size_t const before2 = gFinder.logger.errors.size();
        check(r->enqueue(otherDh.data(), gqaOut.data(), insDh.data(), outsDh.data(), nullptr, nullptr) != 0
                && loggedSince(before2),
            tag + "enqueue refuses x_1 with another Dh before any launch");
    }
    std::vector<PluginTensorDesc> longer = in;
    for (int32_t i = 0; i < k; ++i)
    {
        longer[static_cast<size_t>(i)].dims.d[2] = 17;
    }
    size_t mark = gFinder.logger.errors.size();
    check(r->onShapeChange(longer.data(), k + 1, out.data(), k) != 0 && loggedSince(mark),
        tag + "onShapeChange refuses S > P");

    // enqueue: refusals never touch memory
    std::vector<uint16_t> host(2 * 4 * 16 * 64 * static_cast<size_t>(k) * 2 + 16 * 32 * 2);
    std::vector<void const*> ins(static_cast<size_t>(k + 1), host.data());
    std::vector<void*> outs(static_cast<size_t>(k), host.data());
    mark = gFinder.logger.errors.size();
    check(r->enqueue(longer.data(), out.data(), ins.data(), outs.data(), nullptr, nullptr) != 0 && loggedSince(mark),
        tag + "enqueue refuses S > table rows");
    mark = gFinder.logger.errors.size();
    check(r->enqueue(in.data(), out.data(), nullptr, outs.data(), nullptr, nullptr) != 0 && loggedSince(mark),
        tag + "enqueue refuses null inputs");
    check(r->enqueue(in.data(), out.data(), ins.data(), nullptr, nullptr, nullptr) != 0,
        tag + "enqueue refuses null outputs");
    std::vector<void const*> nullIns(static_cast<size_t>(k + 1), nullptr);
    check(r->enqueue(in.data(), out.data(), nullIns.data(), outs.data(), nullptr, nullptr) != 0,
        tag + "enqueue refuses null tensor pointers");
    if (!gpu)
    {
        mark = gFinder.logger.errors.size();
        int32_t const st = r->enqueue(in.data(), out.data(), ins.data(), outs.data(), nullptr, nullptr);
        check(st != 0 && loggedSince(mark),
            tag + "enqueue without a GPU returns the CUDA error (" + std::to_string(st) + ") and logs it");
        int32_t const st2 = r->enqueue(in.data(), out.data(), ins.data(), outs.data(), nullptr, nullptr);
        check(st2 == st, tag + "a second enqueue reports the same CUDA error (" + std::to_string(st2) + ")");
    }
    delete cl;
    delete att;
    delete back;
}

//! A bad field set, in a forked child: createPlugin must return nullptr with a logged reason; never abort,
//! throw across the C ABI or die of a signal.
void badFields(IPluginCreatorV3One* c, std::string const& what, std::vector<Field> f, bool nullCollection = false,
    bool nullArray = false, int32_t nbFields = -2)
{
    for (TensorRTPhase phase : {TensorRTPhase::kBUILD, TensorRTPhase::kRUNTIME})
    {
        std::string const label = std::string(phase == TensorRTPhase::kBUILD ? "kBUILD" : "kRUNTIME") + " " + what;
        std::fflush(stdout);
        pid_t const pid = fork();
        if (pid == 0)
        {
            Fields fields(f);
            if (nullArray)
            {
                fields.fc.fields = nullptr;
            }
            if (nbFields != -2)
            {
                fields.fc.nbFields = nbFields;
            }
            size_t const mark = gFinder.logger.errors.size();
            IPluginV3* p = c->createPlugin("bad", nullCollection ? nullptr : &fields.fc, phase);
            if (p != nullptr)
            {
                _exit(3);
            }
            if (!loggedSince(mark))
            {
                _exit(4);
            }
            std::printf("     reason: %s\n", gFinder.logger.errors.back().c_str());
            std::fflush(stdout);
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        std::string how = WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
            : WEXITSTATUS(status) == 3        ? "returned a plugin"
            : WEXITSTATUS(status) == 4        ? "returned nullptr without a logged reason"
                                              : "exit " + std::to_string(WEXITSTATUS(status));
        bool const ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        check(ok, "bad fields " + label + ": nullptr with a logged reason" + (ok ? "" : " (" + how + ")"));
    }
}

void driveBadFields(IPluginCreatorV3One* c)
{
    auto R = [](int32_t v) { return intField("rotary_dim", v); };
    auto I = [](int32_t v) { return intField("interleaved", v); };
    auto K = [](int32_t v) { return intField("num_tensors", v); };
    auto typed = [](std::string name, PluginFieldType t, int32_t len, size_t bytes) {
        return Field{std::move(name), t, len, std::vector<unsigned char>(bytes, 1)};
    };
    badFields(c, "num_tensors 0", {I(1), R(64), K(0)});
    badFields(c, "num_tensors 5", {I(1), R(64), K(5)});
    badFields(c, "num_tensors -1", {I(1), R(64), K(-1)});
    badFields(c, "rotary_dim odd", {I(1), R(63), K(2)});
    badFields(c, "rotary_dim 0", {I(1), R(0), K(2)});
    badFields(c, "rotary_dim negative", {I(1), R(-64), K(2)});
    badFields(c, "rotary_dim INT32_MIN", {I(1), R(INT32_MIN), K(2)});
    badFields(c, "interleaved -1", {I(-1), R(64), K(2)});
    badFields(c, "interleaved 2", {I(2), R(64), K(2)});
    badFields(
        c, "interleaved kINT64 2^32 (0 if truncated)", {int64Field("interleaved", int64_t{1} << 32), R(64), K(2)});
    badFields(c, "rotary_dim missing", {I(1), K(2)});
    badFields(c, "no fields", {});
    badFields(c, "rotary_dim kFLOAT32", {I(1), typed("rotary_dim", PluginFieldType::kFLOAT32, 1, 4), K(2)});
    badFields(
        c, "rotary_dim kINT64 0x0101010101010101", {I(1), typed("rotary_dim", PluginFieldType::kINT64, 1, 8), K(2)});
    badFields(c, "rotary_dim kINT64 2^32 + 64 (64 if truncated)",
        {I(1), int64Field("rotary_dim", (int64_t{1} << 32) + 64), K(2)});
    badFields(c, "num_tensors kINT64 INT32_MIN - 1", {I(1), R(64), int64Field("num_tensors", int64_t{INT32_MIN} - 1)});
    badFields(c, "rotary_dim kINT64 63", {I(1), int64Field("rotary_dim", 63), K(2)});
    badFields(c, "rotary_dim kINT64 length 2", {I(1), typed("rotary_dim", PluginFieldType::kINT64, 2, 16), K(2)});
    badFields(c, "num_tensors kINT8", {I(1), R(64), typed("num_tensors", PluginFieldType::kINT8, 1, 1)});
    badFields(c, "num_tensors kINT16", {I(1), R(64), typed("num_tensors", PluginFieldType::kINT16, 1, 2)});
    badFields(c, "interleaved kCHAR", {typed("interleaved", PluginFieldType::kCHAR, 2, 2), R(64), K(2)});
    badFields(c, "rotary_dim length 2", {I(1), typed("rotary_dim", PluginFieldType::kINT32, 2, 8), K(2)});
    badFields(c, "rotary_dim length 0", {I(1), typed("rotary_dim", PluginFieldType::kINT32, 0, 4), K(2)});
    Field nullData = R(64);
    nullData.nullData = true;
    badFields(c, "rotary_dim null data", {I(1), nullData, K(2)});
    badFields(c, "null collection", {}, true);
    badFields(c, "null field array with 3 fields", {I(1), R(64), K(2)}, false, true);
    badFields(c, "negative field count", {I(1), R(64), K(2)}, false, false, -1);
}

int drive(char const* path, Expect const& e)
{
    Library lib = openPlugin(path);
    check(lib.setLoggerFinder != nullptr && lib.getCreators != nullptr, "exports setLoggerFinder and getCreators");
    if (!lib.setLoggerFinder || !lib.getCreators)
    {
        return 1;
    }
    IPluginCreatorV3One* c = findCreator(lib, e);
    if (c == nullptr)
    {
        return 1;
    }
    for (int32_t k = 1; k <= 4; ++k)
    {
        for (int32_t interleaved : {1, 0})
        {
            driveBuild(c, k, interleaved);
            driveRuntime(c, k, interleaved, e.gpu);
        }
    }
    driveBadFields(c);
    check(gFinder.calls > 0, "errors reached the logger handed over by setLoggerFinder");
    return 0;
}

// ------------------------------------------------------------------------------- stub-runtime modes

template <typename F>
F stubFn(void* stub, char const* name)
{
    auto f = reinterpret_cast<F>(dlsym(stub, name));
    if (f == nullptr)
    {
        std::printf("FAIL the stub runtime has no %s\n", name);
        std::exit(2);
    }
    return f;
}

//! Loads the stub runtime RTLD_LOCAL (as Python's tensorrt and Triton load the real one), then the
//! static plugin library: it must call registerCreator once, with the creator's own namespace.
int staticMode(char const* stubPath, char const* pluginPath, std::string const& ns)
{
    void* stub = dlopen(stubPath, RTLD_NOW | RTLD_LOCAL);
    check(stub != nullptr, std::string("load the stub runtime RTLD_LOCAL: ") + (stub ? "" : dlerror()));
    if (!stub)
    {
        return 1;
    }
    auto count = stubFn<int32_t (*)()>(stub, "rr_stub_registration_count");
    auto reg = stubFn<IPluginCreatorInterface* (*)(int32_t, char const**)>(stub, "rr_stub_registration");
    auto nMsg = stubFn<int32_t (*)()>(stub, "rr_stub_message_count");
    auto msg = stubFn<char const* (*)(int32_t)>(stub, "rr_stub_message");
    void* plugin = dlopen(pluginPath, RTLD_NOW | RTLD_LOCAL);
    check(plugin != nullptr, std::string("dlopen the static plugin library: ") + (plugin ? "" : dlerror()));
    if (!plugin)
    {
        return 1;
    }
    check(count() == 1, "loading it calls registerCreator once (got " + std::to_string(count()) + ")");
    if (count() == 1)
    {
        char const* gotNs = nullptr;
        auto* c = static_cast<IPluginCreatorV3One*>(reg(0, &gotNs));
        check(ns == gotNs,
            std::string("registerCreator gets the creator's namespace \"") + ns + "\", got \"" + gotNs + "\"");
        check(std::string(c->getPluginNamespace()) == gotNs, "the namespace passed is the creator's own");
    }
    bool const refuse = std::getenv("RR_STUB_REFUSE") != nullptr;
    bool logged = false;
    for (int32_t i = 0; i < nMsg(); ++i)
    {
        logged = logged || std::strstr(msg(i), "refused") != nullptr;
    }
    check(
        logged == refuse, refuse ? "a refused registerCreator is logged" : "nothing logged when registration succeeds");
    return 0;
}

//! A host of one TensorRT major (this binary's headers), its runtime loaded RTLD_LOCAL, loads a plugin
//! library built with another major: no creators, the logger finder never called, no crash.
int mixedMode(char const* stubPath, char const* pluginPath)
{
    void* stub = dlopen(stubPath, RTLD_NOW | RTLD_LOCAL);
    check(stub != nullptr, "load the stub runtime RTLD_LOCAL");
    Library lib = openPlugin(pluginPath);
    auto major = reinterpret_cast<int32_t (*)()>(dlsym(lib.handle, "roformer_trt_plugin_tensorrt_major"));
    check(major != nullptr && major() != NV_TENSORRT_MAJOR,
        "the library reports the major it was built against (" + std::to_string(major ? major() : -1) + ", host "
            + std::to_string(NV_TENSORRT_MAJOR) + ")");
    lib.setLoggerFinder(&gFinder);
    int32_t n = -1;
    IPluginCreatorInterface* const* creators = lib.getCreators(n);
    check(creators == nullptr && n == 0, "getCreators refuses: no creators (got " + std::to_string(n) + ")");
    if (creators != nullptr && n > 0)
    {
        // What TensorRT would do next: create a plugin, whose errors go through our logger finder.
        auto* c = static_cast<IPluginCreatorV3One*>(creators[0]);
        Fields bad({intField("rotary_dim", 63)});
        c->createPlugin("bad", &bad.fc, TensorRTPhase::kBUILD);
    }
    check(gFinder.calls == 0, "the other major's logger finder is never called");
    return 0;
}

//! A V3One creator that claims any identity and interface kind: the registry entries a lookup must tell apart.
class DecoyCreator : public IPluginCreatorV3One
{
public:
    DecoyCreator(char const* kind, int32_t major, std::string name, std::string version, std::string ns)
        : mKind(kind)
        , mMajor(major)
        , mName(std::move(name))
        , mVersion(std::move(version))
        , mNamespace(std::move(ns))
    {
    }
    InterfaceInfo getInterfaceInfo() const noexcept override { return InterfaceInfo{mKind, mMajor, 0}; }
    IPluginV3* createPlugin(AsciiChar const*, PluginFieldCollection const*, TensorRTPhase) noexcept override
    {
        return nullptr;
    }
    PluginFieldCollection const* getFieldNames() noexcept override { return &mNoFields; }
    AsciiChar const* getPluginName() const noexcept override { return mName.c_str(); }
    AsciiChar const* getPluginVersion() const noexcept override { return mVersion.c_str(); }
    AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

private:
    char const* mKind;
    int32_t mMajor;
    std::string mName, mVersion, mNamespace;
    PluginFieldCollection mNoFields{};
};

//! plugins/common/creatorLookup.h against the stub's recording registry: it finds our creator only by its
//! (name, version, namespace) and interface kind, reads the registry's list and never calls getCreator
//! (whose misses TensorRT logs as errors).
int lookupMode(char const* stubPath, char const* pluginPath, Expect const& e)
{
    void* stub = dlopen(stubPath, RTLD_NOW | RTLD_LOCAL);
    check(stub != nullptr, std::string("load the stub runtime RTLD_LOCAL: ") + (stub ? "" : dlerror()));
    if (!stub)
    {
        return 1;
    }
    IPluginRegistry& registry = *stubFn<IPluginRegistry* (*)()>(stub, "getPluginRegistry")();
    auto getCreatorCalls = stubFn<int32_t (*)()>(stub, "rr_stub_get_creator_calls");
    auto find
        = [&] { return roformer_trt::findCreatorV3One(registry, e.name.c_str(), e.version.c_str(), e.ns.c_str()); };
    check(find() == nullptr, "empty registry: not found");

    // Same identity behind another kind or layout, or one field off: none of them is ours.
    std::deque<DecoyCreator> decoys;
    decoys.emplace_back("PLUGIN CREATOR_V3QUICK", 1, e.name, e.version, e.ns);
    decoys.emplace_back("PLUGIN CREATOR_V1", 1, e.name, e.version, e.ns);
    decoys.emplace_back("PLUGIN CREATOR_V3ONE", 2, e.name, e.version, e.ns);
    decoys.emplace_back(nullptr, 1, e.name, e.version, e.ns);
    decoys.emplace_back("PLUGIN CREATOR_V3ONE", 1, e.name, e.version, ""); // REGISTER_TENSORRT_PLUGIN's namespace
    decoys.emplace_back("PLUGIN CREATOR_V3ONE", 1, e.name, e.version + "0", e.ns);
    decoys.emplace_back("PLUGIN CREATOR_V3ONE", 1, e.name + "X", e.version, e.ns);
    for (DecoyCreator& d : decoys)
    {
        registry.registerCreator(d, d.getPluginNamespace());
    }
    check(find() == nullptr,
        std::to_string(decoys.size())
            + " decoys (other kind, kind major, null kind, namespace, version, name): none found");

    // What loadLibrary does with libroformer_trt_plugin.so: ask its creators and register each under its namespace.
    Library lib = openPlugin(pluginPath);
    lib.setLoggerFinder(&gFinder);
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = lib.getCreators(n);
    check(creators != nullptr && n == 1, "getCreators returns one creator (got " + std::to_string(n) + ")");
    if (creators == nullptr || n != 1)
    {
        return 1;
    }
    auto* ours = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(registry.registerCreator(*ours, ours->getPluginNamespace()), "our creator registered after the decoys");
    check(find() == ours, "found: exactly our creator, not a decoy with its identity");
    check(registry.deregisterCreator(*ours) && find() == nullptr, "deregistered: not found again");
    check(getCreatorCalls() == 0,
        "IPluginRegistry::getCreator never called (" + std::to_string(getCreatorCalls()) + " calls)");
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 3)
    {
        std::fprintf(stderr, "usage: see the header of plugins/tests/contractTest.cpp\n");
        return 2;
    }
    std::string const mode = argv[1];
    Expect e;
    for (int i = 3; i < argc; ++i)
    {
        std::string const a = argv[i];
        auto next = [&]() { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
        if (a == "--name")
            e.name = next();
        else if (a == "--version")
            e.version = next();
        else if (a == "--namespace")
            e.ns = next();
        else if (a == "--fields")
            e.fields = split(next(), ',');
        else if (a == "--no-gpu")
            e.gpu = false;
    }
    std::printf("host built with TensorRT %d.%d headers\n", NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR);
    int rc = 0;
    if (mode == "drive")
    {
        rc = drive(argv[2], e);
    }
    else if (mode == "static" && argc >= 4)
    {
        rc = staticMode(argv[2], argv[3], e.ns);
    }
    else if (mode == "mixed" && argc >= 4)
    {
        rc = mixedMode(argv[2], argv[3]);
    }
    else if (mode == "lookup" && argc >= 4)
    {
        rc = lookupMode(argv[2], argv[3], e);
    }
    else
    {
        std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
        return 2;
    }
    std::printf("contract: %d passed, %d failed\n", gPassed, gFailed);
    return rc != 0 || gFailed != 0 ? 1 : 0;
}
