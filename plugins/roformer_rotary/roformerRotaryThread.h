/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The RoformerRotary kernel's per-thread work as a __host__ __device__ function of (block, thread, grid):
 * the __global__ kernel in roformerRotaryKernel.cu is one call to rotaryThread, and
 * plugins/tests/kernelGridTest.cpp runs the same function over the whole grid on the CPU. The only code
 * that differs between the two builds is the shim in roformerRotaryPrimitives.h. Contract: README.md.
 *
 * A thread owns one work unit of one head vector position (b, h, p) and applies it to every rotated tensor of
 * the layer (q, k[, v]) that has head h, so the unit's sin/cos are read once for all k tensors and the whole
 * layer is a single launch. The grid spans [B, max_i H_i, S]; a tensor with fewer heads (grouped-query
 * attention: K) skips the units of the heads it lacks. A unit, for N channels moved per access:
 *   interleaved (pairs (2j, 2j+1)):   the N adjacent channels [d, d+N), N/2 pairs; Dh/N units per head vector;
 *   split halves (pairs (j, j+R/2)):  the N channels [d+R/2, d+R/2+N) and, when d < R/2, their partners [d, d+N):
 *                                     N pairs, or N pass-through channels past R; (Dh - R/2)/N units.
 * Each element is read and written once. The loop is grid-strided: any grid size is correct.
 */
#pragma once

#include "roformerRotaryPrimitives.h"
#include "roformerRotaryShape.h"

#include <cstdint>
#include <type_traits>

namespace roformer_trt
{

//! Up to kMAX_ROTARY_TENSORS tensors of one layer, passed to the kernel by value (one launch for q, k[, v]).
template <typename T>
struct RotaryTensors
{
    T const* x[kMAX_ROTARY_TENSORS]; //!< x_i: [B, H_i, S, Dh], contiguous
    T* y[kMAX_ROTARY_TENSORS];       //!< y_i: [B, H_i, S, Dh], contiguous, never aliasing x_i
    int32_t count;                   //!< k
};

//! What the per-thread body reads of a RotaryShape (plain fields, so device code needs no member functions).
struct RotaryGrid
{
    int64_t rows;                       //!< B * max H * S: head-vector positions the grid spans
    int64_t seq;                        //!< S
    int64_t maxHeads;                   //!< max_i H_i
    int64_t heads[kMAX_ROTARY_TENSORS]; //!< H_i
    int32_t headDim;                    //!< Dh (the launcher checks it fits int32)
    int32_t rotaryDim;                  //!< R, even, <= Dh
};

inline RotaryGrid rotaryGrid(RotaryShape const& s, int32_t k)
{
    RotaryGrid g{};
    g.rows = s.gridRows(k);
    g.seq = s.seq;
    g.maxHeads = s.maxHeads(k);
    for (int32_t i = 0; i < kMAX_ROTARY_TENSORS; ++i)
    {
        g.heads[i] = i < k ? s.heads[i] : 0;
    }
    g.headDim = static_cast<int32_t>(s.headDim);
    g.rotaryDim = static_cast<int32_t>(s.rotaryDim);
    return g;
}

//! Where one thread sits: blockIdx.x, threadIdx.x, blockDim.x, gridDim.x.
struct ThreadIndex
{
    int64_t block;
    int64_t thread;
    int64_t blockDim;
    int64_t gridDim;
};

//! Which instantiation the launcher picks for a call.
struct RotaryPath
{
    int32_t layout;   //!< RotaryLayout: which body
    int32_t channels; //!< N per access: 8 (fp16/bf16, 16 B), 4 (16 B fp32 or 8 B fp16/bf16), 2; element path: 2 / 1
    bool vector;      //!< one Pack load/store per access; false: element by element
};

//! True when Dh (and, for split halves, R/2: the partner offset) is a multiple of n and every x_i / y_i is
//! aligned to n * sizeof(T) bytes, so every access of n channels is one aligned vector.
template <typename T>
inline bool canVectorize(RotaryTensors<T> const& t, RotaryShape const& s, int32_t n)
{
    if (s.headDim % n != 0 || (s.layout == kROTARY_SPLIT_HALVES && (s.rotaryDim / 2) % n != 0))
    {
        return false;
    }
    auto const bytes = static_cast<uintptr_t>(n) * sizeof(T);
    for (int32_t i = 0; i < t.count; ++i)
    {
        if (reinterpret_cast<uintptr_t>(t.x[i]) % bytes != 0 || reinterpret_cast<uintptr_t>(t.y[i]) % bytes != 0)
        {
            return false;
        }
    }
    return true;
}

//! The widest vector Dh, R/2 (split halves) and every pointer allow: 16-byte, then 8-byte (fp16/bf16), then
//! 2 channels, else elements (a pair of adjacent channels, or one channel and its partner).
template <typename T>
inline RotaryPath choosePath(RotaryTensors<T> const& t, RotaryShape const& s)
{
    constexpr int32_t kWIDE = 16 / static_cast<int32_t>(sizeof(T)); // 4 (fp32) or 8 (fp16/bf16)
    int32_t const layout = s.layout;
    if (canVectorize(t, s, kWIDE))
    {
        return {layout, kWIDE, true};
    }
    if (kWIDE > 4 && canVectorize(t, s, 4))
    {
        return {layout, 4, true};
    }
    if (canVectorize(t, s, 2))
    {
        return {layout, 2, true};
    }
    return {layout, layout == kROTARY_INTERLEAVED ? 2 : 1, false}; // pointers only element-aligned, or odd R/2
}

//! Calls f(layout, N, vector) as std::integral_constant / std::bool_constant for the instantiation `path`
//! names: the launcher and the CPU grid test dispatch through this one switch.
template <typename T, typename F>
inline void withPath(RotaryPath path, F&& f)
{
    constexpr int kWIDE = 16 / static_cast<int>(sizeof(T));
    auto byWidth = [&](auto layout) {
        if (path.vector && path.channels == kWIDE)
        {
            f(layout, std::integral_constant<int, kWIDE>{}, std::true_type{}); // 16-byte vectors
        }
        else if (path.vector && path.channels == 4)
        {
            f(layout, std::integral_constant<int, 4>{}, std::true_type{}); // 8-byte vectors of fp16/bf16
        }
        else if (path.vector)
        {
            f(layout, std::integral_constant<int, 2>{}, std::true_type{}); // 2 channels
        }
        else if constexpr (decltype(layout)::value == kROTARY_INTERLEAVED)
        {
            f(layout, std::integral_constant<int, 2>{}, std::false_type{}); // one pair, element by element
        }
        else
        {
            f(layout, std::integral_constant<int, 1>{}, std::false_type{}); // one channel and its partner
        }
    };
    if (path.layout == kROTARY_SPLIT_HALVES)
    {
        byWidth(std::integral_constant<int, kROTARY_SPLIT_HALVES>{});
    }
    else
    {
        byWidth(std::integral_constant<int, kROTARY_INTERLEAVED>{});
    }
}

//! Work units per head vector for N channels per access (see the file comment).
RR_HD int32_t rotaryUnitsPerRow(int32_t layout, int32_t headDim, int32_t rotaryDim, int32_t n)
{
    return layout == kROTARY_INTERLEAVED ? headDim / n : (headDim - rotaryDim / 2) / n;
}

//! Blocks of `threads` that give every unit its own thread (the launcher's grid; capped, the loop strides).
inline int64_t rotaryGridBlocks(int64_t rows, int32_t unitsPerRow, int32_t threads)
{
    constexpr int64_t kMAX_BLOCKS = int64_t{1} << 30;
    int64_t const units = rows * unitsPerRow;
    int64_t const blocks = (units + threads - 1) / threads;
    return blocks < kMAX_BLOCKS ? blocks : kMAX_BLOCKS;
}

//! N channels at p: one vector access, or N element accesses.
template <typename T, int N, bool kVECTOR>
RR_HD Pack<T, N> loadChunk(T const* p)
{
    if constexpr (kVECTOR)
    {
        return prim::loadPack<T, N>(p);
    }
    else
    {
        Pack<T, N> v;
        RR_UNROLL
        for (int e = 0; e < N; ++e)
        {
            prim::noteElementAccess<T>();
            v.v[e] = p[e];
        }
        return v;
    }
}

template <typename T, int N, bool kVECTOR>
RR_HD void storeChunk(T* p, Pack<T, N> const& v)
{
    if constexpr (kVECTOR)
    {
        prim::storePack<T, N>(p, v);
    }
    else
    {
        RR_UNROLL
        for (int e = 0; e < N; ++e)
        {
            prim::noteElementAccess<T>();
            p[e] = v.v[e];
        }
    }
}

//! The contract's rotation of one pair (x0, x1) by (c, s): fp32 products and sums, each rounded once, no FMA.
template <typename T>
RR_HD void rotatePair(T x0In, T x1In, float c, float s, T& y0, T& y1)
{
    float const x0 = prim::toFloat(x0In);
    float const x1 = prim::toFloat(x1In);
    y0 = prim::fromFloat<T>(prim::sub(prim::mul(x0, c), prim::mul(x1, s)));
    y1 = prim::fromFloat<T>(prim::add(prim::mul(x1, c), prim::mul(x0, s)));
}

//! Head vector row of tensor i for grid position (b, h, p) = row, or -1 when tensor i has no head h.
RR_HD int64_t tensorRow(RotaryGrid const& g, int32_t i, int64_t b, int64_t h, int64_t pos)
{
    return h < g.heads[i] ? (b * g.heads[i] + h) * g.seq + pos : -1;
}

//! The work of thread `at`: every unit c = at.block * at.blockDim + at.thread + j * (gridDim * blockDim).
template <typename T, int kLAYOUT, int N, bool kVECTOR>
RR_HD void rotaryThread(RotaryTensors<T> const& t,
    float const* __restrict__ sincos, // [P, R] fp32: row p = [sin(p*theta_0..) | cos(p*theta_0..)]
    RotaryGrid const& g, ThreadIndex at)
{
    static_assert(kLAYOUT != kROTARY_INTERLEAVED || N % 2 == 0, "an interleaved unit holds whole pairs");
    constexpr int kPAIRS = kLAYOUT == kROTARY_INTERLEAVED ? N / 2 : N;
    int32_t const unitsPerRow = rotaryUnitsPerRow(kLAYOUT, g.headDim, g.rotaryDim, N);
    int32_t const halfR = g.rotaryDim / 2;
    int64_t const total = g.rows * unitsPerRow;
    int64_t const stride = at.gridDim * at.blockDim;
    for (int64_t c = at.block * at.blockDim + at.thread; c < total; c += stride)
    {
        int64_t const row = c / unitsPerRow; // (b, h, p) over [B, max H, S], flattened
        int32_t const d = static_cast<int32_t>(c - row * unitsPerRow) * N;
        int64_t const bh = row / g.seq;
        int64_t const pos = row - bh * g.seq; // p: table row
        int64_t const h = bh % g.maxHeads;
        int64_t const b = bh / g.maxHeads;
        float const* tab = sincos + pos * g.rotaryDim; // [R]

        // Interleaved: pair q of the unit is j = d/2 + q; pairs at channel >= R pass through (R is even, so a
        // pair is entirely in or out). Split halves: pair q is j = d + q, all rotated when d < R/2 (R/2 is a
        // multiple of N), else the unit is N pass-through channels past R.
        int32_t const j0 = kLAYOUT == kROTARY_INTERLEAVED ? d / 2 : d;
        float sn[kPAIRS];
        float cs[kPAIRS];
        bool rot[kPAIRS];
        RR_UNROLL
        for (int q = 0; q < kPAIRS; ++q)
        {
            rot[q] = j0 + q < halfR;
            sn[q] = rot[q] ? prim::ldg(tab + j0 + q) : 0.F;
            cs[q] = rot[q] ? prim::ldg(tab + halfR + j0 + q) : 0.F;
        }

        RR_UNROLL
        for (int i = 0; i < kMAX_ROTARY_TENSORS; ++i)
        {
            if (i >= t.count)
            {
                break;
            }
            int64_t const rowI = tensorRow(g, i, b, h, pos);
            if (rowI < 0)
            {
                continue; // x_i has fewer heads than the grid spans
            }
            int64_t const off = rowI * g.headDim;
            if constexpr (kLAYOUT == kROTARY_INTERLEAVED)
            {
                Pack<T, N> const in = loadChunk<T, N, kVECTOR>(t.x[i] + off + d);
                Pack<T, N> out;
                RR_UNROLL
                for (int q = 0; q < kPAIRS; ++q)
                {
                    if (rot[q])
                    {
                        rotatePair<T>(in.v[2 * q], in.v[2 * q + 1], cs[q], sn[q], out.v[2 * q], out.v[2 * q + 1]);
                    }
                    else
                    {
                        out.v[2 * q] = in.v[2 * q]; // raw copy: bit-exact, NaN payloads included
                        out.v[2 * q + 1] = in.v[2 * q + 1];
                    }
                }
                storeChunk<T, N, kVECTOR>(t.y[i] + off + d, out);
            }
            else
            {
                Pack<T, N> const hi = loadChunk<T, N, kVECTOR>(t.x[i] + off + d + halfR);
                if (!rot[0])
                {
                    storeChunk<T, N, kVECTOR>(t.y[i] + off + d + halfR, hi); // past R: raw copy
                    continue;
                }
                Pack<T, N> const lo = loadChunk<T, N, kVECTOR>(t.x[i] + off + d);
                Pack<T, N> outLo;
                Pack<T, N> outHi;
                RR_UNROLL
                for (int q = 0; q < kPAIRS; ++q)
                {
                    rotatePair<T>(lo.v[q], hi.v[q], cs[q], sn[q], outLo.v[q], outHi.v[q]);
                }
                storeChunk<T, N, kVECTOR>(t.y[i] + off + d, outLo);
                storeChunk<T, N, kVECTOR>(t.y[i] + off + d + halfR, outHi);
            }
        }
    }
}

} // namespace roformer_trt
