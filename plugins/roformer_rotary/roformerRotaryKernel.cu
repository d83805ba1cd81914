/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * RoformerRotary CUDA kernel (contract: plugins/roformer_rotary/README.md).
 *
 * One thread owns a chunk of N adjacent channels (N/2 pairs) of one head vector and applies it to
 * every rotated tensor of the layer (q, k[, v]), so the chunk's sin/cos are read once for all k
 * tensors and the whole layer is a single launch. Memory bound: the chunk is one 16-byte load/store
 * per tensor when Dh and the pointers allow it (N = 8 for fp16/bf16, 4 for fp32), else 8- or 4-byte
 * vectors, else element loads of a pair (any even Dh, any element-aligned pointer).
 *
 * The products and sums use __fmul_rn / __fadd_rn / __fsub_rn: no FMA contraction, so the result is
 * bit-identical to the numpy and C++ host references (the contract allows FMA; we don't need it).
 */
#include "roformerRotaryKernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>

namespace roformer_trt
{
namespace
{

constexpr int32_t kTHREADS = 256;
constexpr int64_t kMAX_BLOCKS = int64_t{1} << 30; // the loop is grid-strided, so any cap is correct

template <typename T>
__device__ __forceinline__ float toFloat(T v);
template <>
__device__ __forceinline__ float toFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ float toFloat<__half>(__half v)
{
    return __half2float(v);
}
template <>
__device__ __forceinline__ float toFloat<__nv_bfloat16>(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v); // round to nearest even, as the contract's cast_T
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

//! N channels of T, aligned so that one load/store instruction moves them (N * sizeof(T) <= 16 bytes).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack
{
    T v[N];
};

//! kVECTOR: the chunk is moved as one Pack (pointers and Dh checked by the launcher); otherwise element by element.
template <typename T, int N, bool kVECTOR>
__global__ void __launch_bounds__(kTHREADS) roformerRotaryKernel(RotaryTensors<T> t,
    float const* __restrict__ sincos, // [P, R] fp32: row p = [sin(p*theta_0..) | cos(p*theta_0..)]
    int64_t rows,                     // B * H * S head vectors per tensor
    int64_t seq,                      // S
    int32_t headDim,                  // Dh, multiple of N
    int32_t rotaryDim)                // R, even, <= Dh
{
    static_assert(N % 2 == 0, "a chunk holds whole pairs");
    int32_t const chunksPerRow = headDim / N;
    int32_t const halfR = rotaryDim / 2;
    int64_t const total = rows * chunksPerRow;
    int64_t const stride = int64_t{gridDim.x} * blockDim.x;
    for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < total; c += stride)
    {
        int64_t const row = c / chunksPerRow;                                  // (b, h, p) flattened
        int32_t const d0 = static_cast<int32_t>(c - row * chunksPerRow) * N;    // first channel of the chunk
        int64_t const pos = row % seq;                                         // p: table row
        float const* tab = sincos + pos * rotaryDim;                           // [R]

        // Pairs at channel >= R pass through untouched; R is even, so a pair is entirely in or out.
        float sn[N / 2];
        float cs[N / 2];
        bool rot[N / 2];
#pragma unroll
        for (int q = 0; q < N / 2; ++q)
        {
            int32_t const j = d0 / 2 + q; // pair index
            rot[q] = j < halfR;
            sn[q] = rot[q] ? __ldg(tab + j) : 0.F;
            cs[q] = rot[q] ? __ldg(tab + halfR + j) : 0.F;
        }

        int64_t const off = row * headDim + d0;
#pragma unroll
        for (int i = 0; i < kMAX_ROTARY_TENSORS; ++i)
        {
            if (i >= t.count)
            {
                break;
            }
            Pack<T, N> in;
            if (kVECTOR)
            {
                in = *reinterpret_cast<Pack<T, N> const*>(t.x[i] + off);
            }
            else
            {
#pragma unroll
                for (int e = 0; e < N; ++e)
                {
                    in.v[e] = t.x[i][off + e];
                }
            }
            Pack<T, N> out;
#pragma unroll
            for (int q = 0; q < N / 2; ++q)
            {
                if (rot[q])
                {
                    float const x0 = toFloat(in.v[2 * q]);
                    float const x1 = toFloat(in.v[2 * q + 1]);
                    out.v[2 * q] = fromFloat<T>(__fsub_rn(__fmul_rn(x0, cs[q]), __fmul_rn(x1, sn[q])));
                    out.v[2 * q + 1] = fromFloat<T>(__fadd_rn(__fmul_rn(x1, cs[q]), __fmul_rn(x0, sn[q])));
                }
                else
                {
                    out.v[2 * q] = in.v[2 * q]; // raw copy: bit-exact, NaN payloads included
                    out.v[2 * q + 1] = in.v[2 * q + 1];
                }
            }
            if (kVECTOR)
            {
                *reinterpret_cast<Pack<T, N>*>(t.y[i] + off) = out;
            }
            else
            {
#pragma unroll
                for (int e = 0; e < N; ++e)
                {
                    t.y[i][off + e] = out.v[e];
                }
            }
        }
    }
}

//! True when Dh is a multiple of N and every x_i / y_i is aligned to N * sizeof(T) bytes.
template <typename T>
bool canVectorize(RotaryTensors<T> const& t, int64_t headDim, int n)
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

template <typename T, int N, bool kVECTOR>
void launchWith(RotaryTensors<T> const& t, float const* sincos, RotaryShape const& s, cudaStream_t stream)
{
    int64_t const chunks = s.rows() * (s.headDim / N);
    int64_t const blocks = std::min((chunks + kTHREADS - 1) / kTHREADS, kMAX_BLOCKS);
    roformerRotaryKernel<T, N, kVECTOR><<<static_cast<unsigned>(blocks), kTHREADS, 0, stream>>>(
        t, sincos, s.rows(), s.seq, static_cast<int32_t>(s.headDim), static_cast<int32_t>(s.rotaryDim));
}

template <typename T>
constexpr int32_t dtypeCode();
template <>
constexpr int32_t dtypeCode<float>()
{
    return kROTARY_F32;
}
template <>
constexpr int32_t dtypeCode<__half>()
{
    return kROTARY_F16;
}
template <>
constexpr int32_t dtypeCode<__nv_bfloat16>()
{
    return kROTARY_BF16;
}

} // namespace

template <typename T>
cudaError_t launchRoformerRotary(
    RotaryTensors<T> const& t, float const* sincos, RotaryShape const& s, cudaStream_t stream) noexcept
{
    if (validateRotaryCall(dtypeCode<T>(), t.count, s) != nullptr || s.headDim > INT32_MAX)
    {
        return cudaErrorInvalidValue;
    }
    if (s.rows() == 0)
    {
        return cudaSuccess; // nothing to rotate (B, H or S is 0)
    }
    if (sincos == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    for (int32_t i = 0; i < t.count; ++i)
    {
        if (t.x[i] == nullptr || t.y[i] == nullptr)
        {
            return cudaErrorInvalidValue;
        }
    }
    constexpr int kWIDE = 16 / static_cast<int>(sizeof(T)); // channels in 16 bytes: 4 (fp32) or 8 (fp16/bf16)
    if (canVectorize(t, s.headDim, kWIDE))
    {
        launchWith<T, kWIDE, true>(t, sincos, s, stream);
    }
    else if (kWIDE > 4 && canVectorize(t, s.headDim, 4))
    {
        launchWith<T, (kWIDE > 4 ? 4 : 2), true>(t, sincos, s, stream); // 8-byte vectors of fp16/bf16
    }
    else if (canVectorize(t, s.headDim, 2))
    {
        launchWith<T, 2, true>(t, sincos, s, stream);
    }
    else
    {
        launchWith<T, 2, false>(t, sincos, s, stream); // pointers only element-aligned
    }
    return cudaPeekAtLastError();
}

template cudaError_t launchRoformerRotary<float>(
    RotaryTensors<float> const&, float const*, RotaryShape const&, cudaStream_t) noexcept;
template cudaError_t launchRoformerRotary<__half>(
    RotaryTensors<__half> const&, float const*, RotaryShape const&, cudaStream_t) noexcept;
template cudaError_t launchRoformerRotary<__nv_bfloat16>(
    RotaryTensors<__nv_bfloat16> const&, float const*, RotaryShape const&, cudaStream_t) noexcept;

} // namespace roformer_trt

namespace
{
template <typename T>
int launchFromC(int k, void const* const* x, void* const* y, float const* sincos, roformer_trt::RotaryShape const& s,
    cudaStream_t stream)
{
    if (x == nullptr || y == nullptr || k < 1 || k > roformer_trt::kMAX_ROTARY_TENSORS)
    {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    roformer_trt::RotaryTensors<T> t{};
    t.count = k;
    for (int i = 0; i < k; ++i)
    {
        t.x[i] = static_cast<T const*>(x[i]);
        t.y[i] = static_cast<T*>(y[i]);
    }
    return static_cast<int>(roformer_trt::launchRoformerRotary<T>(t, sincos, s, stream));
}
} // namespace

extern "C" int roformer_rotary_launch(int dtype, int k, void const* const* x, void* const* y, float const* sincos,
    int64_t B, int64_t H, int64_t S, int64_t Dh, int64_t R, int64_t P, cudaStream_t stream)
{
    roformer_trt::RotaryShape const s{B, H, S, Dh, R, P};
    switch (dtype)
    {
    case roformer_trt::kROTARY_F32: return launchFromC<float>(k, x, y, sincos, s, stream);
    case roformer_trt::kROTARY_F16: return launchFromC<__half>(k, x, y, sincos, s, stream);
    case roformer_trt::kROTARY_BF16: return launchFromC<__nv_bfloat16>(k, x, y, sincos, s, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
    }
}
