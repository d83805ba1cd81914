/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * RoformerRotary CUDA launcher: no TensorRT types, so tests and benchmarks call it directly
 * (C++ through launchRoformerRotary<T>, Python through the extern "C" roformer_rotary_launch + ctypes).
 * Math and layout: plugins/roformer_rotary/README.md.
 */
#pragma once

#include "roformerRotaryShape.h"
#include "roformerRotaryThread.h" // RotaryTensors

#include <cuda_runtime_api.h>

namespace roformer_trt
{

//! Rotates all `t.count` tensors (x_i: [B, s.heads[i], S, Dh]) in one launch, pairs as s.layout says.
//! sincos: [P, R] fp32 ([sin | cos] halves per row).
//! Instantiated for float, __half and __nv_bfloat16. Returns cudaErrorInvalidValue for a bad call
//! (see validateRotaryCall), else the launch status (cudaGetLastError: taken, so it does not stick to later calls).
//! Allocates nothing.
template <typename T>
cudaError_t launchRoformerRotary(
    RotaryTensors<T> const& t, float const* sincos, RotaryShape const& s, cudaStream_t stream) noexcept;

} // namespace roformer_trt

extern "C"
{
    //! C entry for ctypes: dtype is a RotaryDType code, interleaved a RotaryLayout (1: pairs (2j, 2j+1), 0: pairs
    //! (j, j+R/2)); x[0..k) and y[0..k) device pointers ([B, H[i], S, Dh] each); H: k head counts (host memory);
    //! sincos a device pointer [P, R] fp32. Returns a cudaError_t as int (0 = success).
    RR_C_API int roformer_rotary_launch(int dtype, int interleaved, int k, void const* const* x, void* const* y,
        float const* sincos, int64_t B, int64_t const* H, int64_t S, int64_t Dh, int64_t R, int64_t P,
        cudaStream_t stream);
}
