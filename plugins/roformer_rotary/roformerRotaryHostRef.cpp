/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * C++ host reference of RoformerRotary; see roformerRotaryHostRef.h. Must be compiled with
 * -ffp-contract=off (CMake does): a contracted x0 * c - x1 * s would round once instead of three times.
 */
#include "roformerRotaryHostRef.h"

#include "roformerRotaryShape.h"

#include <cstring>

namespace
{
using roformer_trt::RotaryShape;

uint32_t floatBits(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    return u;
}

float bitsToFloat(uint32_t u)
{
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
}

//! IEEE binary32 -> binary16, round to nearest even, overflow to inf, gradual underflow.
uint16_t floatToHalf(float f)
{
    uint32_t const x = floatBits(f);
    uint32_t const sign = (x >> 16) & 0x8000U;
    uint32_t const absx = x & 0x7FFFFFFFU;
    if (absx > 0x7F800000U) // NaN: keep the top payload bits, force quiet
    {
        return static_cast<uint16_t>(sign | 0x7E00U | ((absx >> 13) & 0x3FFU));
    }
    if (absx >= 0x477FF000U) // >= 65520 = halfway between 65504 (max) and 65536: ties-to-even goes up to inf
    {
        return static_cast<uint16_t>(sign | 0x7C00U);
    }
    if (absx >= 0x38800000U) // >= 2^-14: normal half. Rebias exponent (127 -> 15), round 13 dropped bits.
    {
        uint32_t const r = absx - 0x38000000U;
        uint32_t const lsb = (r >> 13) & 1U;
        return static_cast<uint16_t>(sign | ((r + 0xFFFU + lsb) >> 13)); // a carry moves into the exponent
    }
    if (absx <= 0x33000000U) // <= 2^-25: half of the smallest subnormal or less; the tie goes to even (0)
    {
        return static_cast<uint16_t>(sign);
    }
    // Subnormal half: value * 2^24 rounded to an integer. value = m * 2^(e - 150), so shift m right by 126 - e.
    uint32_t const e = absx >> 23;
    uint32_t const m = (absx & 0x7FFFFFU) | 0x800000U;
    uint32_t const s = 126U - e; // 14 ... 24 here
    uint32_t q = m >> s;
    uint32_t const rem = m & ((1U << s) - 1U);
    uint32_t const halfway = 1U << (s - 1U);
    if (rem > halfway || (rem == halfway && (q & 1U)))
    {
        ++q; // may become 0x400, the smallest normal: still the right encoding
    }
    return static_cast<uint16_t>(sign | q);
}

float halfToFloat(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000U) << 16;
    uint32_t const exp = (h >> 10) & 0x1FU;
    uint32_t mant = h & 0x3FFU;
    if (exp == 0x1FU) // inf / NaN
    {
        return bitsToFloat(sign | 0x7F800000U | (mant << 13));
    }
    if (exp != 0)
    {
        return bitsToFloat(sign | ((exp + 112U) << 23) | (mant << 13));
    }
    if (mant == 0)
    {
        return bitsToFloat(sign);
    }
    int32_t e = -1; // normalise the subnormal: value = mant * 2^-24
    do
    {
        mant <<= 1;
        ++e;
    } while ((mant & 0x400U) == 0);
    return bitsToFloat(sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3FFU) << 13));
}

//! binary32 -> bfloat16, round to nearest even (as export.reference.bf16_round); NaN stays a quiet NaN.
uint16_t floatToBf16(float f)
{
    uint32_t const x = floatBits(f);
    if ((x & 0x7FFFFFFFU) > 0x7F800000U)
    {
        return static_cast<uint16_t>((x >> 16) | 0x40U);
    }
    return static_cast<uint16_t>((x + 0x7FFFU + ((x >> 16) & 1U)) >> 16);
}

float bf16ToFloat(uint16_t b)
{
    return bitsToFloat(static_cast<uint32_t>(b) << 16);
}

struct F32
{
    using Storage = float;
    static float load(float v) { return v; }
    static float store(float v) { return v; }
};
struct F16
{
    using Storage = uint16_t;
    static float load(uint16_t v) { return halfToFloat(v); }
    static uint16_t store(float v) { return floatToHalf(v); }
};
struct BF16
{
    using Storage = uint16_t;
    static float load(uint16_t v) { return bf16ToFloat(v); }
    static uint16_t store(float v) { return floatToBf16(v); }
};

//! Channel indices of pair j: (2j, 2j+1) interleaved, (j, j+R/2) split halves (README "Math").
struct PairIndex
{
    int64_t first;
    int64_t second;
};

PairIndex pairOf(int32_t layout, int64_t j, int64_t halfR)
{
    return layout == roformer_trt::kROTARY_INTERLEAVED ? PairIndex{2 * j, 2 * j + 1} : PairIndex{j, j + halfR};
}

template <typename Cvt>
void rotateHost(int k, void const* const* xs, void* const* ys, float const* sincos, RotaryShape const& s)
{
    using T = typename Cvt::Storage;
    int64_t const halfR = s.rotaryDim / 2;
    for (int i = 0; i < k; ++i)
    {
        auto const* x = static_cast<T const*>(xs[i]); // [B, H_i, S, Dh]
        auto* y = static_cast<T*>(ys[i]);             // [B, H_i, S, Dh]
        for (int64_t row = 0; row < s.rows(i); ++row)
        {
            float const* tab = sincos + (row % s.seq) * s.rotaryDim; // [R] = [sin | cos] of position p
            T const* xr = x + row * s.headDim;
            T* yr = y + row * s.headDim;
            for (int64_t j = 0; j < halfR; ++j)
            {
                PairIndex const at = pairOf(s.layout, j, halfR);
                float const sn = tab[j];
                float const cs = tab[halfR + j];
                float const x0 = Cvt::load(xr[at.first]);
                float const x1 = Cvt::load(xr[at.second]);
                float const a = x0 * cs; // each product and the sum round to fp32 separately (no FMA)
                float const b = x1 * sn;
                float const c = x1 * cs;
                float const d = x0 * sn;
                yr[at.first] = Cvt::store(a - b);
                yr[at.second] = Cvt::store(c + d);
            }
            for (int64_t d = s.rotaryDim; d < s.headDim; ++d)
            {
                yr[d] = xr[d]; // passthrough, bit-exact
            }
        }
    }
}

//! The shape of a C call: H points to k head counts (null or k out of range: left 0, refused by validation).
RotaryShape shapeOf(int interleaved, int k, int64_t B, int64_t const* H, int64_t S, int64_t Dh, int64_t R, int64_t P)
{
    RotaryShape s = roformer_trt::uniformShape(B, 0, S, Dh, R, P, interleaved);
    for (int i = 0; H != nullptr && i < k && i < roformer_trt::kMAX_ROTARY_TENSORS; ++i)
    {
        s.heads[i] = H[i];
    }
    return s;
}

} // namespace

extern "C" char const* roformer_rotary_host_check(
    int dtype, int interleaved, int k, int64_t B, int64_t const* H, int64_t S, int64_t Dh, int64_t R, int64_t P)
{
    if (H == nullptr)
    {
        return "H (the k head counts) is null";
    }
    return roformer_trt::validateRotaryCall(dtype, k, shapeOf(interleaved, k, B, H, S, Dh, R, P));
}

extern "C" int roformer_rotary_host(int dtype, int interleaved, int k, void const* const* x, void* const* y,
    float const* sincos, int64_t B, int64_t const* H, int64_t S, int64_t Dh, int64_t R, int64_t P)
{
    if (roformer_rotary_host_check(dtype, interleaved, k, B, H, S, Dh, R, P) != nullptr)
    {
        return 1;
    }
    RotaryShape const s = shapeOf(interleaved, k, B, H, S, Dh, R, P);
    if (s.gridRows(k) == 0)
    {
        return 0;
    }
    if (x == nullptr || y == nullptr || sincos == nullptr)
    {
        return 1;
    }
    for (int i = 0; i < k; ++i)
    {
        if (s.rows(i) > 0 && (x[i] == nullptr || y[i] == nullptr))
        {
            return 1;
        }
    }
    switch (dtype)
    {
    case roformer_trt::kROTARY_F32: rotateHost<F32>(k, x, y, sincos, s); break;
    case roformer_trt::kROTARY_F16: rotateHost<F16>(k, x, y, sincos, s); break;
    default: rotateHost<BF16>(k, x, y, sincos, s); break;
    }
    return 0;
}

extern "C" void roformer_rotary_host_float_to_half(float const* in, uint16_t* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = floatToHalf(in[i]);
    }
}

extern "C" void roformer_rotary_host_float_to_bf16(float const* in, uint16_t* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = floatToBf16(in[i]);
    }
}

extern "C" void roformer_rotary_host_half_to_float(uint16_t const* in, float* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = halfToFloat(in[i]);
    }
}
