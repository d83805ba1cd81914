/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The RoformerRotary kernel's per-thread work as a __host__ __device__ function of (block, thread, grid):
 * the __global__ kernel in roformerRotaryKernel.cu is one call to rotaryThread, and
 * plugins/tests/kernelGridTest.cpp runs the same function over the whole grid on the CPU. The only code
 * that differs between the two builds is the shim in roformerRotaryPrimitives.h. Contract: README.md.
 *
 * One thread owns a chunk of N adjacent channels (N/2 pairs) of one head vector and applies it to every
 * rotated tensor of the layer (q, k[, v]), so the chunk's sin/cos are read once for all k tensors and the
 * whole layer is a single launch. The loop is grid-strided: any grid size is correct.
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
    T const* x[kMAX_ROTARY_TENSORS]; //!< x_i: [B, H, S, Dh], contiguous
    T* y[kMAX_ROTARY_TENSORS];       //!< y_i: [B, H, S, Dh], contiguous, never aliasing x_i
    int32_t count;                   //!< k
};

//! Where one thread sits: blockIdx.x, threadIdx.x, blockDim.x, gridDim.x.
struct ThreadIndex
{
    int64_t block;
    int64_t thread;
    int64_t blockDim;
    int64_t gridDim;
};

//! Which instantiation the launcher picks for a call: N channels per thread, moved as one vector or not.
struct RotaryPath
{
    int32_t channels; //!< N: 8 (fp16/bf16, 16 B), 4 (16 B fp32 or 8 B fp16/bf16), 2
    bool vector;      //!< one Pack load/store per tensor; false: element by element
};

//! True when Dh is a multiple of n and every x_i / y_i is aligned to n * sizeof(T) bytes.
template <typename T>
inline bool canVectorize(RotaryTensors<T> const& t, int64_t headDim, int32_t n)
{
    if (headDim % n != 0)
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

//! The widest vector Dh and every pointer allow: 16-byte, then 8-byte (fp16/bf16), then a pair, else elements.
template <typename T>
inline RotaryPath choosePath(RotaryTensors<T> const& t, int64_t headDim)
{
    constexpr int32_t kWIDE = 16 / static_cast<int32_t>(sizeof(T)); // 4 (fp32) or 8 (fp16/bf16)
    if (canVectorize(t, headDim, kWIDE))
    {
        return {kWIDE, true};
    }
    if (kWIDE > 4 && canVectorize(t, headDim, 4))
    {
        return {4, true};
    }
    if (canVectorize(t, headDim, 2))
    {
        return {2, true};
    }
    return {2, false}; // pointers only element-aligned
}

//! Calls f(std::integral_constant<int, N>{}, std::bool_constant<kVECTOR>{}) for the instantiation `path` names:
//! the launcher and the CPU grid test dispatch through this one switch.
template <typename T, typename F>
inline void withPath(RotaryPath path, F&& f)
{
    constexpr int kWIDE = 16 / static_cast<int>(sizeof(T));
    if (path.vector && path.channels == kWIDE)
    {
        f(std::integral_constant<int, kWIDE>{}, std::true_type{}); // 16-byte vectors
    }
    else if (path.vector && path.channels == 4)
    {
        f(std::integral_constant<int, 4>{}, std::true_type{}); // 8-byte vectors of fp16/bf16
    }
    else if (path.vector)
    {
        f(std::integral_constant<int, 2>{}, std::true_type{}); // one pair
    }
    else
    {
        f(std::integral_constant<int, 2>{}, std::false_type{}); // element by element
    }
}

//! Blocks of `threads` that give every chunk its own thread (the launcher's grid; capped, the loop strides).
inline int64_t rotaryGridBlocks(int64_t rows, int64_t headDim, int32_t channels, int32_t threads)
{
    constexpr int64_t kMAX_BLOCKS = int64_t{1} << 30;
    int64_t const chunks = rows * (headDim / channels);
    int64_t const blocks = (chunks + threads - 1) / threads;
    return blocks < kMAX_BLOCKS ? blocks : kMAX_BLOCKS;
}

//! The work of thread `at`: every chunk c = at.block * at.blockDim + at.thread + j * (gridDim * blockDim).
template <typename T, int N, bool kVECTOR>
RR_HD void rotaryThread(RotaryTensors<T> const& t,
    float const* __restrict__ sincos, // [P, R] fp32: row p = [sin(p*theta_0..) | cos(p*theta_0..)]
    int64_t rows,                     // B * H * S head vectors per tensor
    int64_t seq,                      // S
    int32_t headDim,                  // Dh, multiple of N
    int32_t rotaryDim,                // R, even, <= Dh
    ThreadIndex at)
{
    static_assert(N % 2 == 0, "a chunk holds whole pairs");
    int32_t const chunksPerRow = headDim / N;
    int32_t const halfR = rotaryDim / 2;
    int64_t const total = rows * chunksPerRow;
    int64_t const stride = at.gridDim * at.blockDim;
    for (int64_t c = at.block * at.blockDim + at.thread; c < total; c += stride)
    {
        int64_t const row = c / chunksPerRow;                                // (b, h, p) flattened
        int32_t const d0 = static_cast<int32_t>(c - row * chunksPerRow) * N; // first channel of the chunk
        int64_t const pos = row % seq;                                       // p: table row
        float const* tab = sincos + pos * rotaryDim;                         // [R]

        // Pairs at channel >= R pass through untouched; R is even, so a pair is entirely in or out.
        float sn[N / 2];
        float cs[N / 2];
        bool rot[N / 2];
        RR_UNROLL
        for (int q = 0; q < N / 2; ++q)
        {
            int32_t const j = d0 / 2 + q; // pair index
            rot[q] = j < halfR;
            sn[q] = rot[q] ? prim::ldg(tab + j) : 0.F;
            cs[q] = rot[q] ? prim::ldg(tab + halfR + j) : 0.F;
        }

        int64_t const off = row * headDim + d0;
        RR_UNROLL
        for (int i = 0; i < kMAX_ROTARY_TENSORS; ++i)
        {
            if (i >= t.count)
            {
                break;
            }
            Pack<T, N> in;
            if (kVECTOR)
            {
                in = prim::loadPack<T, N>(t.x[i] + off);
            }
            else
            {
                RR_UNROLL
                for (int e = 0; e < N; ++e)
                {
                    prim::noteElementAccess<T>();
                    in.v[e] = t.x[i][off + e];
                }
            }
            Pack<T, N> out;
            RR_UNROLL
            for (int q = 0; q < N / 2; ++q)
            {
                if (rot[q])
                {
                    float const x0 = prim::toFloat(in.v[2 * q]);
                    float const x1 = prim::toFloat(in.v[2 * q + 1]);
                    out.v[2 * q] = prim::fromFloat<T>(prim::sub(prim::mul(x0, cs[q]), prim::mul(x1, sn[q])));
                    out.v[2 * q + 1] = prim::fromFloat<T>(prim::add(prim::mul(x1, cs[q]), prim::mul(x0, sn[q])));
                }
                else
                {
                    out.v[2 * q] = in.v[2 * q]; // raw copy: bit-exact, NaN payloads included
                    out.v[2 * q + 1] = in.v[2 * q + 1];
                }
            }
            if (kVECTOR)
            {
                prim::storePack<T, N>(t.y[i] + off, out);
            }
            else
            {
                RR_UNROLL
                for (int e = 0; e < N; ++e)
                {
                    prim::noteElementAccess<T>();
                    t.y[i][off + e] = out.v[e];
                }
            }
        }
    }
}

} // namespace roformer_trt
