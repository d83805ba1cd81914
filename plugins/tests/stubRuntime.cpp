/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * TEST-ONLY stand-in for libnvinfer.so.<major>, built only with the C++ tests and never installed or
 * shipped. It is not TensorRT: it exports just the functions our libraries call (getInferLibVersion,
 * getPluginRegistry, getLogger), with TensorRT's SONAME, so that
 *   - the static plugin library can be linked and loaded, and its registerCreator call recorded;
 *   - a host can load it RTLD_LOCAL first, as Python's tensorrt and Triton load the real one, and our
 *     library's check of the running major (runtimeVersion.cpp) can be driven.
 *   - a creator lookup can be driven against a registry that lists what was registered (getAllCreators) and
 *     counts the getCreator calls a host makes (plugins/common/creatorLookup.h must make none).
 * Recordings are read back through the extern "C" rr_stub_* functions. RR_STUB_REFUSE=1 in the
 * environment makes registerCreator return false (and the creator is not listed).
 */
#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
struct Registration
{
    IPluginCreatorInterface* creator;
    std::string pluginNamespace;
};
std::vector<Registration> gRegistrations;      // every registerCreator call, refused ones too
std::vector<IPluginCreatorInterface*> gListed; // accepted and not deregistered: what getAllCreators returns
std::vector<std::string> gMessages;
int32_t gGetCreatorCalls{0};

class RecordingLogger : public ILogger
{
public:
    void log(Severity /*severity*/, AsciiChar const* msg) noexcept override
    {
        gMessages.emplace_back(msg != nullptr ? msg : "(null)");
    }
};

class RecordingRegistry : public IPluginRegistry
{
public:
#if NV_TENSORRT_MAJOR < 11
    bool registerCreator(IPluginCreator& /*creator*/, AsciiChar const* const /*ns*/) noexcept override { return false; }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(
        AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const& /*creator*/) noexcept override { return false; }
#endif
    void setErrorRecorder(IErrorRecorder* const /*recorder*/) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const /*enabled*/) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const* /*path*/) noexcept override { return nullptr; }
    void deregisterLibrary(PluginLibraryHandle /*handle*/) noexcept override {}
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override
    {
        gRegistrations.push_back({&creator, ns != nullptr ? ns : "(null)"});
        char const* refuse = std::getenv("RR_STUB_REFUSE");
        bool const accepted = !(refuse != nullptr && std::strcmp(refuse, "1") == 0);
        if (accepted)
        {
            gListed.push_back(&creator);
        }
        return accepted;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override
    {
        *n = static_cast<int32_t>(gListed.size());
        return gListed.empty() ? nullptr : gListed.data(); // as TensorRT: nullptr when there are none
    }
    IPluginCreatorInterface* getCreator(
        AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        ++gGetCreatorCalls; // only counted: a host that asks here is what the test refuses
        return nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override
    {
        auto const it = std::find(gListed.begin(), gListed.end(), &creator);
        if (it == gListed.end())
        {
            return false;
        }
        gListed.erase(it);
        return true;
    }
    IPluginResource* acquirePluginResource(AsciiChar const* /*key*/, IPluginResource* /*res*/) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const* /*key*/) noexcept override { return -1; }
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override
    {
        *n = 0;
        return nullptr;
    }
};

RecordingLogger gLogger;
RecordingRegistry gRegistry;
} // namespace

#define RR_STUB_API extern "C" __attribute__((visibility("default")))

RR_STUB_API int32_t getInferLibVersion() noexcept
{
    return (NV_TENSORRT_MAJOR * 100 + NV_TENSORRT_MINOR) * 100 + NV_TENSORRT_PATCH;
}
RR_STUB_API IPluginRegistry* getPluginRegistry() noexcept
{
    return &gRegistry;
}
RR_STUB_API ILogger* getLogger() noexcept
{
    return &gLogger;
}

// Read-back for the contract test (not TensorRT functions).
RR_STUB_API int32_t rr_stub_registration_count()
{
    return static_cast<int32_t>(gRegistrations.size());
}
RR_STUB_API IPluginCreatorInterface* rr_stub_registration(int32_t i, char const** pluginNamespace)
{
    *pluginNamespace = gRegistrations.at(static_cast<size_t>(i)).pluginNamespace.c_str();
    return gRegistrations.at(static_cast<size_t>(i)).creator;
}
RR_STUB_API int32_t rr_stub_message_count()
{
    return static_cast<int32_t>(gMessages.size());
}
RR_STUB_API int32_t rr_stub_get_creator_calls()
{
    return gGetCreatorCalls;
}
RR_STUB_API char const* rr_stub_message(int32_t i)
{
    return gMessages.at(static_cast<size_t>(i)).c_str();
}
