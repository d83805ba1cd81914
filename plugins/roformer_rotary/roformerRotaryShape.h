/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Plain C++ (no CUDA, no TensorRT): the problem description shared by the CUDA launcher, the C++ host
 * reference and the TensorRT adapter, so the three validate arguments with the same code.
 * Contract: plugins/roformer_rotary/README.md.
 */
#pragma once

#include <cstdint>

//! Marks the extern "C" entry points that the shared libraries export (everything else is hidden).
#define RR_C_API __attribute__((visibility("default")))

namespace roformer_trt
{

//! dtype codes of the C entry points (roformer_rotary_launch / roformer_rotary_host); also used by ctypes callers.
enum RotaryDType : int32_t
{
    kROTARY_F32 = 0,
    kROTARY_F16 = 1,
    kROTARY_BF16 = 2,
};

constexpr int32_t kMAX_ROTARY_TENSORS = 4; //!< k <= 4: query, key, value (+1 spare), as in the contract

//! Sizes of one RoformerRotary call. x_i, y_i: [B, H, S, Dh]; sincos: [P, R] fp32.
struct RotaryShape
{
    int64_t batch{0};     //!< B
    int64_t heads{0};     //!< H
    int64_t seq{0};       //!< S
    int64_t headDim{0};   //!< Dh
    int64_t rotaryDim{0}; //!< R, leading channels rotated
    int64_t tableRows{0}; //!< P, rows of the sincos table (P >= S)

    int64_t rows() const noexcept { return batch * heads * seq; } //!< number of [Dh] head vectors per tensor
    int64_t elements() const noexcept { return rows() * headDim; }
};

//! Returns nullptr when (dtype, k, shape) is a valid call, else a static message saying what is wrong.
//! Zero-sized B, H or S is valid (nothing to do).
inline char const* validateRotaryCall(int32_t dtype, int32_t k, RotaryShape const& s) noexcept
{
    if (dtype != kROTARY_F32 && dtype != kROTARY_F16 && dtype != kROTARY_BF16)
        return "dtype must be 0 (fp32), 1 (fp16) or 2 (bf16)";
    if (k < 1 || k > kMAX_ROTARY_TENSORS)
        return "k (number of rotated tensors) must be in [1, 4]";
    if (s.batch < 0 || s.heads < 0 || s.seq < 0 || s.tableRows < 0)
        return "B, H, S and P must be >= 0";
    if (s.headDim < 2 || s.headDim % 2 != 0)
        return "head size Dh must be even and >= 2";
    if (s.rotaryDim < 2 || s.rotaryDim % 2 != 0 || s.rotaryDim > s.headDim)
        return "rotary_dim R must be even with 2 <= R <= Dh";
    if (s.seq > s.tableRows)
        return "sequence length S exceeds the sincos table rows P";
    return nullptr;
}

} // namespace roformer_trt
