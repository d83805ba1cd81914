/*
 * SPDX-License-Identifier: Apache-2.0
 */
#include "pluginLogger.h"

#include <atomic>
#include <cstdio>

namespace roformer_trt
{
namespace
{
// Set once at load time by TensorRT or the static registrar, read from any thread afterwards.
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};
std::atomic<nvinfer1::ILogger*> gLogger{nullptr};
} // namespace

void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void setPluginLogger(nvinfer1::ILogger* logger) noexcept
{
    gLogger.store(logger);
}

void logMessage(nvinfer1::ILogger::Severity severity, char const* msg) noexcept
{
    nvinfer1::ILogger* logger = gLogger.load();
    nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
    if (logger == nullptr && finder != nullptr)
    {
        try
        {
            logger = finder->findLogger(); // per call: the logger of the calling builder / runtime
        }
        catch (...) // findLogger is not declared noexcept; this function is. The message then goes to stderr.
        {
            logger = nullptr;
        }
    }
    if (logger != nullptr)
    {
        logger->log(severity, msg);
    }
    else
    {
        std::fprintf(stderr, "[roformer_trt] %s\n", msg);
    }
}

void logCaught(std::exception const& e) noexcept
{
    logMessage(nvinfer1::ILogger::Severity::kERROR, e.what());
}

} // namespace roformer_trt
