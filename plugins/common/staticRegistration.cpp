/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Load-time registration for libroformer_trt_plugin_static.so (linked to libnvinfer): loading the library
 * registers the creator with the global registry. This is the library for every loader that only dlopens:
 * Triton's TensorRT backend (plugins=), LD_PRELOAD, ctypes.CDLL, trtexec --staticPlugins, Polygraphy
 * --plugins. Exports no getCreators, so TensorRT cannot also register it "dynamically" from this library.
 *
 * Not REGISTER_TENSORRT_PLUGIN: that passes the empty namespace to registerCreator, while our ONNX node
 * asks for plugin_namespace "roformer_trt", and whether TensorRT then files the creator under "" or under
 * the creator's own namespace is not documented. We pass the creator's own namespace, so both readings
 * agree, and log a refusal (for example a creator already registered by libroformer_trt_plugin.so).
 */
#include "../roformer_rotary/roformerRotaryPlugin.h"
#include "pluginLogger.h"
#include "runtimeVersion.h"

#include <string>

namespace
{
struct Registrar
{
    roformer_trt::RoformerRotaryPluginCreator creator;

    Registrar() noexcept
    {
        try
        {
            if (!roformer_trt::checkRunningTensorRT().compatible)
            {
                return; // another TensorRT major is running: refused, one line on stderr
            }
            roformer_trt::setPluginLogger(getLogger()); // libnvinfer's global logger (extern "C")
            nvinfer1::IPluginRegistry* registry = getPluginRegistry();
            if (registry == nullptr)
            {
                roformer_trt::logMessage(nvinfer1::ILogger::Severity::kERROR,
                    "RoformerRotary: getPluginRegistry() returned null; the creator is not registered");
                return;
            }
            if (!registry->registerCreator(creator, creator.getPluginNamespace()))
            {
                roformer_trt::logMessage(nvinfer1::ILogger::Severity::kERROR,
                    (std::string("RoformerRotary: the plugin registry refused the creator ") + creator.getPluginName()
                        + " v" + creator.getPluginVersion() + " in namespace \"" + creator.getPluginNamespace()
                        + "\" (already registered, e.g. by libroformer_trt_plugin.so loaded in the same process?)")
                        .c_str());
            }
        }
        catch (...) // nothing may escape a static initializer: it would terminate the host process
        {
        }
    }
};
Registrar gRegistrar;
} // namespace
