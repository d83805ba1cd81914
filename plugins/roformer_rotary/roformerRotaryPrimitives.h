/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The one shim between the CUDA kernel and its host build (plugins/tests/kernelGridTest.cpp): the
 * primitives that exist only on the device. Everything else in roformerRotaryThread.h is the same code
 * on both sides.
 *
 *   device (nvcc, __CUDA_ARCH__)     host (g++ -ffp-contract=off)
 *   __fmul_rn / __fadd_rn / __fsub_rn a * b, a + b, a - b (each rounded once: no contraction)
 *   __ldg                             a plain load
 *   __half2float, __float2half_rn ... the same functions: cuda_fp16.h / cuda_bf16.h define them for the host too
 *   vector load/store of a Pack       the same, after checking the address is aligned to the Pack's width
 *                                     (x86 does not trap on a misaligned load; the GPU does, so the host must check)
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

// #pragma unroll for the device pass only (the host compiler does not know it and warns).
#if defined(__CUDA_ARCH__)
#define RR_UNROLL _Pragma("unroll")
#else
#define RR_UNROLL
#endif

#if defined(__CUDACC__)
#define RR_HD __host__ __device__ __forceinline__
#else
#define RR_HD inline
#endif

namespace roformer_trt
{

//! N channels of T, aligned so that one load/store instruction moves them (N * sizeof(T) <= 16 bytes).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack
{
    T v[N];
};

#if !defined(__CUDA_ARCH__)
//! Host build only: what the kernel body touched, so the grid test can check and report it.
struct HostAccessLog
{
    int64_t misaligned{0};  //!< vector accesses whose address is not a multiple of the vector width
    int64_t vectorBytes{0}; //!< width of the last vector access (0: only element accesses)
    int64_t elementAccesses{0};
};
inline HostAccessLog& hostAccessLog()
{
    static thread_local HostAccessLog sLog;
    return sLog;
}
#endif

namespace prim
{
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float mul(float a, float b)
{
    return __fmul_rn(a, b);
}
__device__ __forceinline__ float add(float a, float b)
{
    return __fadd_rn(a, b);
}
__device__ __forceinline__ float sub(float a, float b)
{
    return __fsub_rn(a, b);
}
__device__ __forceinline__ float ldg(float const* p)
{
    return __ldg(p);
}
#else
// -ffp-contract=off: mul is never fused with the add below
inline float mul(float a, float b)
{
    return a * b;
}
inline float add(float a, float b)
{
    return a + b;
}
inline float sub(float a, float b)
{
    return a - b;
}
inline float ldg(float const* p)
{
    return *p;
}
#endif

template <typename T>
RR_HD float toFloat(T v);
template <>
RR_HD float toFloat<float>(float v)
{
    return v;
}
template <>
RR_HD float toFloat<__half>(__half v)
{
    return __half2float(v);
}
template <>
RR_HD float toFloat<__nv_bfloat16>(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

template <typename T>
RR_HD T fromFloat(float v); // round to nearest even, as the contract's cast_T
template <>
RR_HD float fromFloat<float>(float v)
{
    return v;
}
template <>
RR_HD __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
RR_HD __nv_bfloat16 fromFloat<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

#if !defined(__CUDA_ARCH__)
//! Host: records the access; false when p is not aligned to the vector's width.
template <typename T, int N>
inline bool checkVectorAccess(T const* p)
{
    HostAccessLog& log = hostAccessLog();
    log.vectorBytes = static_cast<int64_t>(sizeof(Pack<T, N>));
    if (reinterpret_cast<uintptr_t>(p) % sizeof(Pack<T, N>) != 0)
    {
        ++log.misaligned;
        return false;
    }
    return true;
}
#endif

// Host: a misaligned address is counted, then moved byte-wise (an aligned SSE move would trap, and the
// count, not a crash, is what the test reports).
template <typename T, int N>
RR_HD Pack<T, N> loadPack(T const* p)
{
#if !defined(__CUDA_ARCH__)
    if (!checkVectorAccess<T, N>(p))
    {
        Pack<T, N> v;
        std::memcpy(static_cast<void*>(&v), static_cast<void const*>(p), sizeof(v));
        return v;
    }
#endif
    return *reinterpret_cast<Pack<T, N> const*>(p);
}

template <typename T, int N>
RR_HD void storePack(T* p, Pack<T, N> const& v)
{
#if !defined(__CUDA_ARCH__)
    if (!checkVectorAccess<T, N>(p))
    {
        std::memcpy(static_cast<void*>(p), static_cast<void const*>(&v), sizeof(v));
        return;
    }
#endif
    *reinterpret_cast<Pack<T, N>*>(p) = v;
}

template <typename T>
RR_HD void noteElementAccess()
{
#if !defined(__CUDA_ARCH__)
    ++hostAccessLog().elementAccesses;
#endif
}
} // namespace prim

} // namespace roformer_trt
