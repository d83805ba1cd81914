/*
 * SPDX-License-Identifier: Apache-2.0
 */
#include "runtimeVersion.h"

#include <NvInferVersion.h>

#include <cstdio>
#include <dlfcn.h>
#include <mutex>

namespace roformer_trt
{
namespace
{
using GetVersion = int32_t (*)();

//! getInferLibVersion of an already loaded library `soname`, or 0 when it is not loaded.
int32_t loadedVersion(std::string const& soname, int32_t major) noexcept
{
    void* handle = dlopen(soname.c_str(), RTLD_LAZY | RTLD_NOLOAD); // never loads: only finds
    if (handle == nullptr)
    {
        return 0;
    }
    auto fn = reinterpret_cast<GetVersion>(dlsym(handle, "getInferLibVersion"));
    int32_t const version = fn != nullptr ? fn() : major * 10000; // (MAJOR * 100 + MINOR) * 100 + PATCH
    dlclose(handle);                                              // balances the reference RTLD_NOLOAD took
    return version;
}

RuntimeCheck learn() noexcept
{
    RuntimeCheck check;
    int32_t const built = builtTensorRTMajor();
    // Every major TensorRT has shipped or may ship. A runtime of another major wins over ours: the static
    // library pulls in libnvinfer.so.<built> itself, while the host may run another one.
    int32_t const majors[] = {8, 9, 10, 11, 12, 13, 14};
    char const* const stems[] = {"libnvinfer.so.", "libnvinfer_lean.so.", "libnvinfer_dispatch.so."};
    for (int32_t major : majors)
    {
        for (char const* stem : stems)
        {
            std::string const soname = stem + std::to_string(major);
            int32_t const version = loadedVersion(soname, major);
            if (version == 0)
            {
                continue;
            }
            bool const same = version / 10000 == built;
            if (check.runningVersion == 0 || !same)
            {
                check.runningVersion = version;
                check.library = soname;
                check.compatible = same;
            }
            if (!same)
            {
                return check;
            }
        }
    }
    return check; // runningVersion 0: nothing loaded (a runtime linked statically, or not yet loaded)
}

std::string versionString(int32_t v)
{
    return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}
} // namespace

int32_t builtTensorRTMajor() noexcept
{
    return NV_TENSORRT_MAJOR;
}

RuntimeCheck const& checkRunningTensorRT() noexcept
{
    static RuntimeCheck sCheck;
    static std::once_flag sOnce;
    try
    {
        std::call_once(sOnce, [] {
            sCheck = learn();
            if (!sCheck.compatible)
            {
                std::fprintf(stderr,
                    "[roformer_trt] refusing to register RoformerRotary: this library was built against TensorRT %d "
                    "headers, but the running TensorRT is %s (%s); rebuild it with python -m plugins.build "
                    "--tensorrt-include <TensorRT %d include folder>\n",
                    builtTensorRTMajor(), versionString(sCheck.runningVersion).c_str(), sCheck.library.c_str(),
                    sCheck.runningVersion / 10000);
            }
            else if (sCheck.runningVersion == 0)
            {
                std::fprintf(stderr,
                    "[roformer_trt] cannot learn the running TensorRT version (no libnvinfer.so.N is loaded in this "
                    "process); assuming it is TensorRT %d, the major this library was built against\n",
                    builtTensorRTMajor());
            }
        });
    }
    catch (...) // call_once may throw std::system_error; then nothing was learned and nothing is refused
    {
    }
    return sCheck;
}

} // namespace roformer_trt

//! Exported: the TensorRT major the library was built against (plugins.build and engines.build read it).
extern "C" __attribute__((visibility("default"))) int32_t roformer_trt_plugin_tensorrt_major()
{
    return roformer_trt::builtTensorRTMajor();
}
