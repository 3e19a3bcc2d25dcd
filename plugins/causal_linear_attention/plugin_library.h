// Process-wide pieces of the plugin library: logging through TensorRT's logger.
#ifndef LINEXPORT_PLUGIN_LIBRARY_H
#define LINEXPORT_PLUGIN_LIBRARY_H

#include "NvInferRuntime.h"

// The library is built with hidden visibility; TensorRT's own TENSORRTAPI is empty outside its
// build, so the entry points TensorRT looks up are exported with this.
#define LINEXPORT_PLUGIN_EXPORT __attribute__((visibility("default")))

namespace linexport
{
namespace trt
{

// Logs through the logger TensorRT handed over (setLoggerFinder), else the host TensorRT
// library's global logger, else stderr for errors and warnings. Never throws.
void log(nvinfer1::ILogger::Severity severity, char const* message) noexcept;

} // namespace trt
} // namespace linexport

#endif // LINEXPORT_PLUGIN_LIBRARY_H
