/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Load-time registration for libroformer_trt_plugin_static.so (linked to libnvinfer): loading the library
 * (dlopen, ctypes.CDLL, LD_PRELOAD, trtexec --staticPlugins) registers the creator with the global registry.
 * Exports no getCreators, so TensorRT cannot also register it "dynamically" from this library.
 */
#include "../roformer_rotary/roformerRotaryPlugin.h"
#include "pluginLogger.h"

namespace
{
//! Before the registrar below (same translation unit: initialised in order), so its errors are logged.
struct UseLibraryLogger
{
    UseLibraryLogger() noexcept
    {
        roformer_trt::setPluginLogger(getLogger()); // libnvinfer's global logger (extern "C")
    }
};
UseLibraryLogger const gUseLibraryLogger{};
} // namespace

using roformer_trt::RoformerRotaryPluginCreator; // the macro pastes the name into an identifier
REGISTER_TENSORRT_PLUGIN(RoformerRotaryPluginCreator);
