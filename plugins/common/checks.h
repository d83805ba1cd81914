/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Error macros shared by the roformer-trt plugins (no TensorRT, no CUDA types here).
 *
 *  - RR_VALIDATE(cond, msg): a condition the *user* can break (bad attribute, unsupported dtype,
 *    shape mismatch). Throws PluginError; TensorRT entry points catch it and log it (see logCaught).
 *  - RR_FAIL(msg): unconditional PluginError.
 *  - RR_ASSERT(cond): an internal invariant; also throws, the message says it is a bug.
 *
 * Nothing may throw across a TensorRT `noexcept` entry point: every entry point that uses these
 * macros wraps its whole body in try/catch (see roformerRotaryPlugin.cpp).
 */
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

namespace roformer_trt
{

class PluginError : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

[[noreturn]] inline void throwPluginError(char const* file, int line, std::string const& what)
{
    throw PluginError(what + " (" + file + ":" + std::to_string(line) + ")");
}

} // namespace roformer_trt

// A string literal decays to a pointer, which is always "true": refuse RR_VALIDATE("msg").
#define RR_NOT_A_STRING_(cond)                                                                                         \
    static_assert(!std::is_convertible<decltype((cond)), char const*>::value,                                          \
        "RR_VALIDATE/RR_ASSERT take a condition first, then the message")

#define RR_VALIDATE(cond, msg)                                                                                         \
    do                                                                                                                 \
    {                                                                                                                  \
        RR_NOT_A_STRING_(cond);                                                                                        \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            ::roformer_trt::throwPluginError(__FILE__, __LINE__, std::string("RoformerRotary: ") + (msg));             \
        }                                                                                                              \
    } while (0)

#define RR_FAIL(msg) ::roformer_trt::throwPluginError(__FILE__, __LINE__, std::string("RoformerRotary: ") + (msg))

#define RR_ASSERT(cond)                                                                                                \
    do                                                                                                                 \
    {                                                                                                                  \
        RR_NOT_A_STRING_(cond);                                                                                        \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            ::roformer_trt::throwPluginError(__FILE__, __LINE__, "RoformerRotary internal error: " #cond);             \
        }                                                                                                              \
    } while (0)
