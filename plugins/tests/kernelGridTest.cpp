/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The RoformerRotary kernel's per-thread body (roformerRotaryThread.h), run over the whole grid on the CPU.
 * No copy of kernel code here: the same rotaryThread the __global__ kernel calls, dispatched through the
 * same choosePath/withPath/rotaryGridBlocks the launcher uses; only the device primitives differ
 * (roformerRotaryPrimitives.h). Compiled with -ffp-contract=off.
 *
 * Every case: bit-exact against the C++ host reference (roformer_rotary_host, with its own software
 * fp16/bf16 conversions), no byte written outside y_i (guard bytes around each output), x_i and the table
 * untouched, every vector access aligned to its width. Cases: both layouts (interleaved 1 and 0) x
 * fp32/fp16/bf16 x k = 1..4 x shapes (full rotation, R < Dh, Dh or R/2 not a multiple of the vector, odd
 * B/H/S, tensors after the first with fewer heads: grouped-query attention) x pointer offsets (aligned, 1, 2
 * and 4 elements off, x and y aligned differently) x grids (the launcher's, one block of 32, 3 blocks of 7).
 * Prints the path each case took; exit 0 when all pass. Run by tests/plugins/test_kernel_grid.py.
 */
#include "roformerRotaryHostRef.h"
#include "roformerRotaryThread.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

using namespace roformer_trt;

namespace
{
int gFailures = 0;

void fail(std::string const& what)
{
    ++gFailures;
    std::printf("FAIL %s\n", what.c_str());
}

constexpr size_t kGUARD = 64;         // bytes before and after each buffer
constexpr unsigned char kFILL = 0xA5; // guard and output pattern

//! A byte buffer holding n elements at `offset` elements past a 64-byte-aligned start, with guards.
struct Guarded
{
    std::vector<unsigned char> bytes;
    size_t start;
    size_t size;

    Guarded(size_t n, size_t elem, size_t offsetElems)
        : bytes(kGUARD * 3 + n * elem + offsetElems * elem, kFILL)
    {
        auto base = reinterpret_cast<uintptr_t>(bytes.data());
        size_t const align = (64 - base % 64) % 64;
        start = align + kGUARD + offsetElems * elem;
        size = n * elem;
    }
    unsigned char* data() { return bytes.data() + start; }
    bool guardsIntact() const
    {
        for (size_t i = 0; i < bytes.size(); ++i)
        {
            if ((i < start || i >= start + size) && bytes[i] != kFILL)
            {
                return false;
            }
        }
        return true;
    }
};

template <typename T>
int32_t codeOf();
template <>
int32_t codeOf<float>()
{
    return kROTARY_F32;
}
template <>
int32_t codeOf<__half>()
{
    return kROTARY_F16;
}
template <>
int32_t codeOf<__nv_bfloat16>()
{
    return kROTARY_BF16;
}

template <typename T>
char const* nameOf();
template <>
char const* nameOf<float>()
{
    return "fp32";
}
template <>
char const* nameOf<__half>()
{
    return "fp16";
}
template <>
char const* nameOf<__nv_bfloat16>()
{
    return "bf16";
}

struct Grid
{
    char const* name;
    int64_t blocks; // 0: the launcher's own grid for the path
    int64_t threads;
};

std::map<std::string, int> gPaths; // "split fp16 16B vector" -> cases

char const* layoutName(int32_t layout)
{
    return layout == kROTARY_INTERLEAVED ? "interleaved" : "split";
}

//! Runs rotaryThread for every (block, thread) of the grid, the way the GPU would (order does not matter:
//! every unit belongs to exactly one thread).
template <typename T>
void runGrid(RotaryTensors<T> const& t, float const* sincos, RotaryShape const& s, RotaryPath path, Grid g)
{
    RotaryGrid const geo = rotaryGrid(s, t.count);
    withPath<T>(path, [&](auto layout, auto n, auto vector) {
        constexpr int kL = decltype(layout)::value;
        constexpr int kN = decltype(n)::value;
        int64_t const threads = g.blocks ? g.threads : 256;
        int64_t const blocks = g.blocks
            ? g.blocks
            : rotaryGridBlocks(geo.rows, rotaryUnitsPerRow(kL, geo.headDim, geo.rotaryDim, kN), 256);
        for (int64_t b = 0; b < blocks; ++b)
        {
            for (int64_t th = 0; th < threads; ++th)
            {
                rotaryThread<T, kL, kN, decltype(vector)::value>(t, sincos, geo, ThreadIndex{b, th, threads, blocks});
            }
        }
    });
}

std::string pathName(RotaryPath p, size_t elem)
{
    return p.vector ? std::to_string(p.channels * elem) + "B vector" : std::string("element");
}

template <typename T>
void runCase(std::mt19937& rng, int32_t k, RotaryShape s, size_t offset, size_t yOffset, Grid g)
{
    std::uniform_real_distribution<float> dist(-4.F, 4.F);
    std::vector<Guarded> xs;
    std::vector<Guarded> ys;
    std::vector<std::vector<unsigned char>> refs;
    RotaryTensors<T> t{};
    t.count = k;
    void const* rx[kMAX_ROTARY_TENSORS];
    void* ry[kMAX_ROTARY_TENSORS];
    xs.reserve(k);
    ys.reserve(k);
    for (int32_t i = 0; i < k; ++i)
    {
        int64_t const n = s.elements(i); // x_i: [B, H_i, S, Dh]
        refs.emplace_back(static_cast<size_t>(n) * sizeof(T));
        xs.emplace_back(static_cast<size_t>(n), sizeof(T), offset);
        ys.emplace_back(static_cast<size_t>(n), sizeof(T), yOffset);
        T* x = reinterpret_cast<T*>(xs.back().data());
        for (int64_t e = 0; e < n; ++e)
        {
            x[e] = prim::fromFloat<T>(dist(rng));
        }
        t.x[i] = x;
        t.y[i] = reinterpret_cast<T*>(ys.back().data());
        rx[i] = x;
        ry[i] = refs[i].data();
    }
    std::vector<float> table(static_cast<size_t>(s.tableRows * s.rotaryDim));
    for (float& v : table)
    {
        v = dist(rng) / 4.F;
    }
    std::vector<std::vector<unsigned char>> xBefore;
    for (auto& x : xs)
    {
        xBefore.push_back(x.bytes);
    }
    std::vector<float> const tableBefore = table;

    RotaryPath const path = choosePath(t, s);
    hostAccessLog() = HostAccessLog{};
    runGrid(t, table.data(), s, path, g);
    HostAccessLog const log = hostAccessLog();

    std::string heads;
    for (int32_t i = 0; i < k; ++i)
    {
        heads += (i ? "," : "") + std::to_string(s.heads[i]);
    }
    char label[320];
    std::snprintf(label, sizeof(label), "%s %s k=%d B=%ld H=%s S=%ld Dh=%ld R=%ld P=%ld offset=%zu/%zu grid=%s path=%s",
        layoutName(s.layout), nameOf<T>(), k, static_cast<long>(s.batch), heads.c_str(), static_cast<long>(s.seq),
        static_cast<long>(s.headDim), static_cast<long>(s.rotaryDim), static_cast<long>(s.tableRows), offset, yOffset,
        g.name, pathName(path, sizeof(T)).c_str());
    gPaths[std::string(layoutName(s.layout)) + " " + nameOf<T>() + " " + pathName(path, sizeof(T))]++;

    if (roformer_rotary_host(codeOf<T>(), s.layout, k, rx, ry, table.data(), s.batch, s.heads, s.seq, s.headDim,
            s.rotaryDim, s.tableRows)
        != 0)
    {
        fail(std::string(label) + ": the host reference refused the call");
        return;
    }
    bool ok = true;
    for (int32_t i = 0; i < k; ++i)
    {
        // (an empty x_i, H_i = 0, has an empty reference whose data() may be null: nothing to compare)
        if (!refs[i].empty() && std::memcmp(ys[i].data(), refs[i].data(), refs[i].size()) != 0)
        {
            fail(std::string(label) + ": y_" + std::to_string(i) + " differs from the host reference");
            ok = false;
        }
        if (!ys[i].guardsIntact())
        {
            fail(std::string(label) + ": wrote outside y_" + std::to_string(i));
            ok = false;
        }
        if (xs[i].bytes != xBefore[i])
        {
            fail(std::string(label) + ": x_" + std::to_string(i) + " was modified");
            ok = false;
        }
    }
    if (table != tableBefore)
    {
        fail(std::string(label) + ": the sincos table was modified");
        ok = false;
    }
    if (log.misaligned != 0)
    {
        fail(std::string(label) + ": " + std::to_string(log.misaligned) + " misaligned vector accesses");
        ok = false;
    }
    int64_t const expectBytes = path.vector ? path.channels * static_cast<int64_t>(sizeof(T)) : 0;
    if (log.vectorBytes != expectBytes || (path.vector != (log.elementAccesses == 0)))
    {
        fail(std::string(label) + ": accesses do not match the path (vector bytes " + std::to_string(log.vectorBytes)
            + ", element accesses " + std::to_string(log.elementAccesses) + ")");
        ok = false;
    }
    if (ok)
    {
        std::printf("ok   %s\n", label);
    }
}

//! The alignment check itself must be able to fail: force 16-byte vectors on pointers one element off, in
//! both layouts (split halves also reads the partner chunk at +R/2).
bool alignmentCheckCatchesMisalignment()
{
    bool caught = true;
    for (int32_t layout : {kROTARY_INTERLEAVED, kROTARY_SPLIT_HALVES})
    {
        Guarded x(16, sizeof(__half), 1);
        Guarded y(16, sizeof(__half), 1);
        std::vector<float> table(2 * 16, 0.5F);
        RotaryTensors<__half> t{};
        t.count = 1;
        t.x[0] = reinterpret_cast<__half*>(x.data());
        t.y[0] = reinterpret_cast<__half*>(y.data());
        RotaryGrid const g = rotaryGrid(uniformShape(1, 1, 1, 16, 16, 1, layout), 1);
        hostAccessLog() = HostAccessLog{};
        if (layout == kROTARY_INTERLEAVED)
        {
            rotaryThread<__half, kROTARY_INTERLEAVED, 8, true>(t, table.data(), g, ThreadIndex{0, 0, 1, 1});
        }
        else
        {
            rotaryThread<__half, kROTARY_SPLIT_HALVES, 8, true>(t, table.data(), g, ThreadIndex{0, 0, 1, 1});
        }
        caught = caught && hostAccessLog().misaligned > 0; // counted, then moved byte-wise (no trap, no UB)
    }
    return caught;
}

//! B, H of x_0, H of x_1.. (grouped-query attention when smaller), S, Dh, R, P.
struct GridShape
{
    int64_t batch, heads, kvHeads, seq, headDim, rotaryDim, tableRows;
};

template <typename T>
void runDtype(std::mt19937& rng, int32_t layout)
{
    GridShape const shapes[] = {
        {2, 3, 3, 5, 64, 64, 8}, // full rotation, vector paths
        {1, 2, 2, 7, 64, 32, 7}, // R < Dh: pass-through channels
        {1, 1, 1, 3, 6, 4, 4},   // Dh = 6: no 16- or 8-byte vector fits; split: R/2 = 2
        {3, 1, 1, 9, 10, 10, 9}, // odd sizes, Dh % 4 == 2; split: R/2 = 5, elements only
        {1, 2, 2, 4, 24, 16, 6}, // Dh % 16 != 0 for fp16, R < Dh
        {1, 1, 1, 1, 2, 2, 1},   // one pair
        {2, 4, 2, 5, 64, 8, 6},  // GQA (x_1.. have 2 heads of 4); split: R/2 = 4 narrows fp16 to 8 bytes
        {1, 3, 1, 6, 16, 12, 7}, // GQA 3:1; split: R/2 = 6 narrows to 2 channels
        {1, 1, 3, 4, 12, 12, 4}, // x_0 has fewer heads than x_1..: the grid spans the largest H
        {2, 2, 0, 3, 8, 8, 3},   // x_1.. with no heads at all: nothing to do for them
    };
    Grid const grids[] = {{"launcher", 0, 0}, {"1x32", 1, 32}, {"3x7", 3, 7}};
    // element offsets of (x_i, y_i) from a 64-byte boundary: aligned, 1/2/4 off, and x and y aligned differently
    std::pair<size_t, size_t> const offsets[] = {{0, 0}, {1, 1}, {2, 2}, {4, 4}, {0, 1}, {4, 2}};
    for (int32_t k = 1; k <= kMAX_ROTARY_TENSORS; ++k)
    {
        for (GridShape const& g : shapes)
        {
            RotaryShape s = uniformShape(g.batch, g.kvHeads, g.seq, g.headDim, g.rotaryDim, g.tableRows, layout);
            s.heads[0] = g.heads;
            for (auto const& [xOff, yOff] : offsets)
            {
                for (Grid const& grid : grids)
                {
                    runCase<T>(rng, k, s, xOff, yOff, grid);
                }
            }
        }
    }
}
} // namespace

int main()
{
    std::mt19937 rng(1234);
    if (!alignmentCheckCatchesMisalignment())
    {
        fail("the host alignment check did not see a deliberately misaligned 16-byte access");
    }
    for (int32_t layout : {kROTARY_INTERLEAVED, kROTARY_SPLIT_HALVES})
    {
        runDtype<float>(rng, layout);
        runDtype<__half>(rng, layout);
        runDtype<__nv_bfloat16>(rng, layout);
    }
    for (auto const& [path, count] : gPaths)
    {
        std::printf("path %s: %d cases\n", path.c_str(), count);
    }
    std::printf("kernel grid: %s (%d failures)\n", gFailures ? "FAILED" : "passed", gFailures);
    return gFailures ? 1 : 0;
}
