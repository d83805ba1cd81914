/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * RoformerRotary CUDA kernel (contract: plugins/roformer_rotary/README.md).
 *
 * The per-thread work is rotaryThread (roformerRotaryThread.h), shared with the CPU grid test
 * (plugins/tests/kernelGridTest.cpp); this file holds the launcher. Memory bound: every access is one 16-byte
 * load/store when Dh (and R/2 for split halves) and the pointers allow it (N = 8 for fp16/bf16, 4 for fp32), else
 * 8- or 4-byte vectors, else element loads (any even Dh and R, any element-aligned pointer). Both layouts
 * (`interleaved` 1 and 0) and every vector width are separate instantiations of the same body.
 *
 * The products and sums use __fmul_rn / __fadd_rn / __fsub_rn: no FMA contraction, so the result is
 * bit-identical to the numpy and C++ host references (the contract allows FMA; we don't need it).
 */
#include "roformerRotaryKernel.h"

#include "roformerRotaryThread.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>

namespace roformer_trt
{
namespace
{

constexpr int32_t kTHREADS = 256;

//! The kernel is one call of the per-thread body (roformerRotaryThread.h), which the CPU grid test also runs.
template <typename T, int kLAYOUT, int N, bool kVECTOR>
__global__ void __launch_bounds__(kTHREADS)
    roformerRotaryKernel(RotaryTensors<T> t, float const* __restrict__ sincos, RotaryGrid g)
{
    rotaryThread<T, kLAYOUT, N, kVECTOR>(t, sincos, g, ThreadIndex{blockIdx.x, threadIdx.x, blockDim.x, gridDim.x});
}

template <typename T, int kLAYOUT, int N, bool kVECTOR>
void launchWith(RotaryTensors<T> const& t, float const* sincos, RotaryGrid const& g, cudaStream_t stream)
{
    int64_t const blocks = rotaryGridBlocks(g.rows, rotaryUnitsPerRow(kLAYOUT, g.headDim, g.rotaryDim, N), kTHREADS);
    roformerRotaryKernel<T, kLAYOUT, N, kVECTOR><<<static_cast<unsigned>(blocks), kTHREADS, 0, stream>>>(t, sincos, g);
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
    if (s.gridRows(t.count) == 0)
    {
        return cudaSuccess; // nothing to rotate (B, S or every H_i is 0)
    }
    if (sincos == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    for (int32_t i = 0; i < t.count; ++i)
    {
        if (s.heads[i] > 0 && (t.x[i] == nullptr || t.y[i] == nullptr))
        {
            return cudaErrorInvalidValue;
        }
    }
    RotaryGrid const g = rotaryGrid(s, t.count);
    withPath<T>(choosePath(t, s), [&](auto layout, auto n, auto vector) {
        launchWith<T, decltype(layout)::value, decltype(n)::value, decltype(vector)::value>(t, sincos, g, stream);
    });
    // Take (and clear) the launch's error: this library links its own static cudart, so nobody else clears
    // it, and cudaPeekAtLastError would leave a failed launch's error set for every later call on this thread.
    return cudaGetLastError();
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

extern "C" int roformer_rotary_launch(int dtype, int interleaved, int k, void const* const* x, void* const* y,
    float const* sincos, int64_t B, int64_t const* H, int64_t S, int64_t Dh, int64_t R, int64_t P, cudaStream_t stream)
{
    if (H == nullptr || k < 1 || k > roformer_trt::kMAX_ROTARY_TENSORS)
    {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    roformer_trt::RotaryShape s = roformer_trt::uniformShape(B, 0, S, Dh, R, P, interleaved);
    for (int i = 0; i < k; ++i)
    {
        s.heads[i] = H[i];
    }
    switch (dtype)
    {
    case roformer_trt::kROTARY_F32: return launchFromC<float>(k, x, y, sincos, s, stream);
    case roformer_trt::kROTARY_F16: return launchFromC<__half>(k, x, y, sincos, s, stream);
    case roformer_trt::kROTARY_BF16: return launchFromC<__nv_bfloat16>(k, x, y, sincos, s, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
    }
}
