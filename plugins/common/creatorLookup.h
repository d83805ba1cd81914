/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Is a plugin creator registered? Asked without IPluginRegistry::getCreator, which reports every miss through
 * TensorRT's logger as an error ("Error Code 4: API Usage Error (Cannot find plugin ...)"), so a host that asks
 * before its first load of our library would log an error on every start. Instead the registry's list of
 * creators (getAllCreators) is walked, and each creator's name, version and namespace are read through the
 * interface its kind names, as TensorRT's ONNX parser does (onnx-tensorrt importerUtils.cpp,
 * importPluginCreator). Header-only and TensorRT-headers-only: engines/cpp/embed.cpp uses it, and
 * plugins/tests/contractTest.cpp drives it against a recording registry.
 */
#pragma once

#include <NvInferRuntime.h>

#include <cstring>

namespace roformer_trt
{

//! The IPluginCreatorV3One registered in `registry` as (name, version, pluginNamespace), or nullptr.
//! A creator of another kind ("PLUGIN CREATOR_V1", "PLUGIN CREATOR_V3QUICK", one these headers do not know) is
//! skipped unread: its name lives behind another interface, and calling it through this one is undefined.
inline nvinfer1::IPluginCreatorV3One* findCreatorV3One(nvinfer1::IPluginRegistry const& registry, char const* name,
    char const* version, char const* pluginNamespace) noexcept
{
    auto same = [](char const* a, char const* b) { return a != nullptr && b != nullptr && std::strcmp(a, b) == 0; };
    int32_t n{0};
    nvinfer1::IPluginCreatorInterface* const* creators = registry.getAllCreators(&n);
    for (int32_t i = 0; creators != nullptr && i < n; ++i)
    {
        nvinfer1::IPluginCreatorInterface* c = creators[i];
        if (c == nullptr)
        {
            continue;
        }
        nvinfer1::InterfaceInfo const info = c->getInterfaceInfo();
        // Major 1 is the layout these headers declare; another major may order its functions differently.
        if (!same(info.kind, "PLUGIN CREATOR_V3ONE") || info.major != 1)
        {
            continue;
        }
        auto* v3 = static_cast<nvinfer1::IPluginCreatorV3One*>(c);
        if (same(v3->getPluginName(), name) && same(v3->getPluginVersion(), version)
            && same(v3->getPluginNamespace(), pluginNamespace))
        {
            return v3;
        }
    }
    return nullptr;
}

} // namespace roformer_trt
