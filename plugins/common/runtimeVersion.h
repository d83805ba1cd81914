/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Which TensorRT major this library was built against, and which one is running in the process.
 *
 * The two must match: ILogger / ILoggerFinder (and the plugin interfaces) have a different layout in 11.x
 * (they derive from IVersionedInterface) than in 10.x, so a library built with one major and called by a
 * runtime of the other would call the wrong virtual functions (a crash in the logger path, or worse).
 * The running major is read from the runtime already loaded in the process: Python's tensorrt and Triton
 * load libnvinfer RTLD_LOCAL, so dlsym(RTLD_DEFAULT, ...) misses it; dlopen("libnvinfer.so.<N>",
 * RTLD_NOLOAD) finds it by SONAME without loading anything.
 */
#pragma once

#include <cstdint>
#include <string>

namespace roformer_trt
{

//! NV_TENSORRT_MAJOR of the headers this library was compiled with.
int32_t builtTensorRTMajor() noexcept;

struct RuntimeCheck
{
    bool compatible{true};     //!< false: a runtime of another major is loaded; register nothing
    int32_t runningVersion{0}; //!< getInferLibVersion() of the loaded runtime, 0 when none was found
    std::string library;       //!< the SONAME it was found under ("libnvinfer.so.10"), empty when none
};

//! Learns the running TensorRT once per process (thread-safe) and reports a mismatch or an unknown
//! runtime once, on stderr (never through a logger of possibly the wrong layout).
RuntimeCheck const& checkRunningTensorRT() noexcept;

} // namespace roformer_trt
