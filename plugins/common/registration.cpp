/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Entry points of libroformer_trt_plugin.so, the library TensorRT loads by path and asks for its creators:
 * IPluginRegistry::loadLibrary (Python's registry.load_library, engines.build) and trtexec --dynamicPlugins.
 * A plain dlopen never calls these, so Triton's plugins=, LD_PRELOAD and trtexec --staticPlugins need
 * libroformer_trt_plugin_static.so (staticRegistration.cpp) instead. It is not linked to libnvinfer:
 * TensorRT asks for the creators and hands over its logger finder. Exported: these two and
 * roformer_trt_plugin_tensorrt_major (plugin_exports.map). Never load it in the same process as
 * libroformer_trt_plugin_static.so: the creator would be registered twice.
 *
 * Both entry points first check that the running TensorRT has the major these headers have
 * (runtimeVersion.h): with another major, the logger finder is not used and no creator is returned.
 */
#include "../roformer_rotary/roformerRotaryPlugin.h"
#include "pluginLogger.h"
#include "runtimeVersion.h"

#include <exception>

#define RR_PLUGIN_API extern "C" __attribute__((visibility("default")))

RR_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    if (roformer_trt::checkRunningTensorRT().compatible) // else its layout is not ours: never call it
    {
        roformer_trt::setPluginLoggerFinder(finder);
    }
}

RR_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    nbCreators = 0;
    try
    {
        if (!roformer_trt::checkRunningTensorRT().compatible)
        {
            return nullptr; // refused, with one line on stderr naming both versions
        }
        static roformer_trt::RoformerRotaryPluginCreator sRotaryCreator;
        static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sRotaryCreator};
        nbCreators = static_cast<int32_t>(sizeof(sCreators) / sizeof(sCreators[0]));
        return sCreators;
    }
    catch (std::exception const& e)
    {
        roformer_trt::logCaught(e);
    }
    nbCreators = 0;
    return nullptr;
}
