/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Entry points of libroformer_trt_plugin.so, the library TensorRT loads by path
 * (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, Triton's plugins=). It is not linked to
 * libnvinfer: TensorRT asks for the creators and hands over its logger finder. Only these two symbols are
 * exported (visibility + the version script plugin_exports.map). Never load it in the same process as
 * libroformer_trt_plugin_static.so: the creator would be registered twice.
 */
#include "../roformer_rotary/roformerRotaryPlugin.h"
#include "pluginLogger.h"

#include <exception>

#define RR_PLUGIN_API extern "C" __attribute__((visibility("default")))

RR_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    roformer_trt::setPluginLoggerFinder(finder);
}

RR_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    try
    {
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
