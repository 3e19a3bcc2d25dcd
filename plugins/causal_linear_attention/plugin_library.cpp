// The plugin library's entry points and its link to the host process's TensorRT.
//
// TensorRT loads a plugin library in one of two ways (see README.md):
//  * IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, Python registry.load_library,
//    `linexport trt`): it calls the exported setLoggerFinder() and getCreators() and registers
//    what getCreators() returns.
//  * a plain dlopen (trtexec --staticPlugins, Polygraphy --plugins, ctypes.CDLL): the library
//    must register itself while it is loaded.
// The library links no libnvinfer, so for the second way it looks for getPluginRegistry() in
// the TensorRT library the process has already loaded (libnvinfer, libnvinfer_lean or
// libnvinfer_dispatch, any major version) and never loads one itself. When loadLibrary then
// asks for getCreators(), the self-registration is withdrawn first, since the registry refuses
// a library whose creators are already registered.
#include "causal_linear_attention_plugin.h"
#include "plugin_library.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <link.h>
#include <mutex>

namespace linexport
{
namespace trt
{
namespace
{

using GetRegistryFn = nvinfer1::IPluginRegistry* (*) ();
using GetLoggerFn = nvinfer1::ILogger* (*) ();

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};
std::atomic<GetLoggerFn> gHostGetLogger{nullptr};
std::mutex gRegistrationMutex;
nvinfer1::IPluginRegistry* gSelfRegisteredIn = nullptr; // guarded by gRegistrationMutex

CausalLinearAttentionCreator& creator()
{
    static CausalLinearAttentionCreator instance;
    return instance;
}

struct SymbolSearch
{
    char const* symbol;
    void* found;
};

// Is `path` one of TensorRT's core libraries (not a plugin library, not this one)?
bool isTensorRTCoreLibrary(char const* path)
{
    char const* base = std::strrchr(path, '/');
    base = base == nullptr ? path : base + 1;
    if (std::strncmp(base, "libnvinfer", 10) != 0)
    {
        return false;
    }
    char const* rest = base + 10;
    return std::strncmp(rest, ".so", 3) == 0 || std::strncmp(rest, "_lean.so", 8) == 0
        || std::strncmp(rest, "_dispatch.so", 12) == 0;
}

int searchLoadedObject(dl_phdr_info* info, size_t /*size*/, void* data)
{
    auto* search = static_cast<SymbolSearch*>(data);
    if (info->dlpi_name == nullptr || !isTensorRTCoreLibrary(info->dlpi_name))
    {
        return 0;
    }
    // RTLD_NOLOAD: a handle to the already-loaded library, never a new load.
    void* handle = dlopen(info->dlpi_name, RTLD_NOW | RTLD_NOLOAD);
    if (handle == nullptr)
    {
        return 0;
    }
    search->found = dlsym(handle, search->symbol);
    dlclose(handle);
    return search->found != nullptr ? 1 : 0;
}

// A function exported by the TensorRT library this process has loaded, or nullptr.
void* findHostTensorRTSymbol(char const* symbol) noexcept
{
    SymbolSearch search{symbol, nullptr};
    dl_iterate_phdr(searchLoadedObject, &search);
    return search.found;
}

// Runs when the library is loaded: registers the creator if TensorRT is already in the process.
struct SelfRegistration
{
    SelfRegistration() noexcept
    {
        try
        {
            auto getRegistry = reinterpret_cast<GetRegistryFn>(findHostTensorRTSymbol("getPluginRegistry"));
            nvinfer1::IPluginRegistry* registry = getRegistry == nullptr ? nullptr : getRegistry();
            if (registry == nullptr)
            {
                return;
            }
            std::lock_guard<std::mutex> lock(gRegistrationMutex);
            if (registry->registerCreator(creator(), kPluginNamespace))
            {
                gSelfRegisteredIn = registry;
            }
        }
        catch (...)
        {
        }
    }
};

SelfRegistration const gSelfRegistration;

} // namespace

void log(nvinfer1::ILogger::Severity severity, char const* message) noexcept
{
    try
    {
        nvinfer1::ILogger* logger = nullptr;
        if (nvinfer1::ILoggerFinder* finder = gLoggerFinder.load())
        {
            logger = finder->findLogger();
        }
        if (logger == nullptr)
        {
            GetLoggerFn getLogger = gHostGetLogger.load();
            if (getLogger == nullptr)
            {
                getLogger = reinterpret_cast<GetLoggerFn>(findHostTensorRTSymbol("getLogger"));
                gHostGetLogger.store(getLogger);
            }
            logger = getLogger == nullptr ? nullptr : getLogger();
        }
        if (logger != nullptr)
        {
            logger->log(severity, message);
            return;
        }
    }
    catch (...)
    {
    }
    if (severity <= nvinfer1::ILogger::Severity::kWARNING)
    {
        std::fprintf(stderr, "[linexport plugin] %s\n", message);
    }
}

} // namespace trt
} // namespace linexport

extern "C" LINEXPORT_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    linexport::trt::gLoggerFinder.store(finder);
}

extern "C" LINEXPORT_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) noexcept
{
    using namespace linexport::trt;
    try
    {
        std::lock_guard<std::mutex> lock(gRegistrationMutex);
        if (gSelfRegisteredIn != nullptr)
        {
            gSelfRegisteredIn->deregisterCreator(creator());
            gSelfRegisteredIn = nullptr;
        }
        static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator()};
        nbCreators = 1;
        return creators;
    }
    catch (...)
    {
        nbCreators = 0;
        return nullptr;
    }
}
