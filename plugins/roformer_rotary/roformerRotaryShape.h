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

//! Which channels form a pair: the values of the `interleaved` attribute (README "Math").
enum RotaryLayout : int32_t
{
    kROTARY_SPLIT_HALVES = 0, //!< (x[j], x[j + R/2]): HF rotate_half (GPT-NeoX, LLaMA, ModernBERT, ...)
    kROTARY_INTERLEAVED = 1,  //!< (x[2j], x[2j + 1]): RoFormer
};

constexpr int32_t kMAX_ROTARY_TENSORS = 4; //!< k <= 4: query, key, value (+1 spare), as in the contract

//! Sizes of one RoformerRotary call. x_i, y_i: [B, H_i, S, Dh] (each tensor its own head count H_i, e.g. K
//! with fewer heads than Q under grouped-query attention); sincos: [P, R] fp32.
struct RotaryShape
{
    int64_t batch{0};                     //!< B
    int64_t heads[kMAX_ROTARY_TENSORS]{}; //!< H_i of x_i, i < k (entries past k are unused)
    int64_t seq{0};                       //!< S
    int64_t headDim{0};                   //!< Dh
    int64_t rotaryDim{0};                 //!< R, leading channels rotated
    int64_t tableRows{0};                 //!< P, rows of the sincos table (P >= S)
    int32_t layout{kROTARY_INTERLEAVED};  //!< RotaryLayout

    //! Number of [Dh] head vectors of x_i.
    int64_t rows(int32_t i) const noexcept { return batch * heads[i] * seq; }
    int64_t elements(int32_t i) const noexcept { return rows(i) * headDim; }
    //! max_i H_i over the first k tensors: the launch grid spans [B, max H, S] head vectors.
    int64_t maxHeads(int32_t k) const noexcept
    {
        int64_t h = 0;
        for (int32_t i = 0; i < k && i < kMAX_ROTARY_TENSORS; ++i)
        {
            h = heads[i] > h ? heads[i] : h;
        }
        return h;
    }
    int64_t gridRows(int32_t k) const noexcept { return batch * maxHeads(k) * seq; }
};

//! The shape of k tensors that all have H heads (the common case: no grouped-query attention).
inline RotaryShape uniformShape(
    int64_t b, int64_t h, int64_t s, int64_t dh, int64_t r, int64_t p, int32_t layout = kROTARY_INTERLEAVED) noexcept
{
    RotaryShape shape{};
    shape.batch = b;
    for (int64_t& hi : shape.heads)
    {
        hi = h;
    }
    shape.seq = s;
    shape.headDim = dh;
    shape.rotaryDim = r;
    shape.tableRows = p;
    shape.layout = layout;
    return shape;
}

//! Returns nullptr when (dtype, k, shape) is a valid call, else a static message saying what is wrong.
//! Zero-sized B, H_i or S is valid (nothing to do for those tensors).
inline char const* validateRotaryCall(int32_t dtype, int32_t k, RotaryShape const& s) noexcept
{
    if (dtype != kROTARY_F32 && dtype != kROTARY_F16 && dtype != kROTARY_BF16)
        return "dtype must be 0 (fp32), 1 (fp16) or 2 (bf16)";
    if (s.layout != kROTARY_SPLIT_HALVES && s.layout != kROTARY_INTERLEAVED)
        return "interleaved must be 0 (split halves) or 1 (adjacent pairs)";
    if (k < 1 || k > kMAX_ROTARY_TENSORS)
        return "k (number of rotated tensors) must be in [1, 4]";
    if (s.batch < 0 || s.seq < 0 || s.tableRows < 0)
        return "B, H, S and P must be >= 0";
    for (int32_t i = 0; i < k; ++i)
    {
        if (s.heads[i] < 0)
            return "B, H, S and P must be >= 0";
    }
    if (s.headDim < 2 || s.headDim % 2 != 0)
        return "head size Dh must be even and >= 2";
    if (s.rotaryDim < 2 || s.rotaryDim % 2 != 0 || s.rotaryDim > s.headDim)
        return "rotary_dim R must be even with 2 <= R <= Dh";
    if (s.seq > s.tableRows)
        return "sequence length S exceeds the sincos table rows P";
    return nullptr;
}

} // namespace roformer_trt
