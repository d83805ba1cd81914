/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Where the plugin's error messages go. The dynamic library gets an ILoggerFinder from TensorRT through
 * setLoggerFinder (registration.cpp); the static library uses libnvinfer's getLogger()
 * (staticRegistration.cpp). With neither, messages go to stderr, so an error is never silent.
 */
#pragma once

#include <NvInferRuntime.h>

#include <exception>

namespace roformer_trt
{

void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void setPluginLogger(nvinfer1::ILogger* logger) noexcept;

void logMessage(nvinfer1::ILogger::Severity severity, char const* msg) noexcept;

//! For `catch (std::exception const& e) { logCaught(e); }` at every noexcept TensorRT entry point.
void logCaught(std::exception const& e) noexcept;

} // namespace roformer_trt
