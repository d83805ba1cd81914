/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * C++ host reference of RoformerRotary (plain C++, no CUDA runtime). It states the contract's math
 * (plugins/roformer_rotary/README.md) a second time, independently of numpy, and is built with
 * -ffp-contract=off so fp32 products and sums round exactly as export/reference.py does.
 * fp16/bf16 are uint16 bit patterns, converted in software with round-to-nearest-even
 * (what __float2half_rn / __float2bfloat16_rn do on the device).
 */
#pragma once

#include "roformerRotaryShape.h"

#include <cstdint>

extern "C"
{
    //! nullptr when the call is valid, else a static message (same checks as the CUDA launcher).
    //! interleaved: a RotaryLayout (1: pairs (2j, 2j+1), 0: pairs (j, j+R/2)); H: k head counts, one per tensor.
    RR_C_API char const* roformer_rotary_host_check(
        int dtype, int interleaved, int k, int64_t B, int64_t const* H, int64_t S, int64_t Dh, int64_t R, int64_t P);

    //! y_i = RoformerRotary(x_i) for i < k on host memory; x, y: k pointers to [B, H[i], S, Dh] arrays of the
    //! dtype (fp16 / bf16 as uint16 bit patterns); sincos: [P, R] float. Returns 0, or 1 when the call is invalid.
    RR_C_API int roformer_rotary_host(int dtype, int interleaved, int k, void const* const* x, void* const* y,
        float const* sincos, int64_t B, int64_t const* H, int64_t S, int64_t Dh, int64_t R, int64_t P);

    //! Software conversions (round to nearest even), exported so tests can check them exhaustively.
    RR_C_API void roformer_rotary_host_float_to_half(float const* in, uint16_t* out, int64_t n);
    RR_C_API void roformer_rotary_host_float_to_bf16(float const* in, uint16_t* out, int64_t n);
    RR_C_API void roformer_rotary_host_half_to_float(uint16_t const* in, float* out, int64_t n);
}
