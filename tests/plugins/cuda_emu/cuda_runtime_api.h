// Emulator stand-in for the CUDA runtime API (see emu.h): the few calls the kernels make.
#pragma once

#include "emu.h"

#include <cstddef>
#include <cstdlib>
#include <cstring>

typedef enum cudaError
{
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorNotSupported = 801
} cudaError_t;

typedef struct CUstream_st* cudaStream_t;

enum cudaDeviceAttr
{
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};

enum cudaFuncAttribute
{
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8
};

enum cudaMemcpyKind
{
    cudaMemcpyDeviceToDevice = 3
};

inline cudaError_t cudaGetLastError()
{
    return cudaSuccess;
}

inline char const* cudaGetErrorString(cudaError_t)
{
    return "emulated";
}

inline cudaError_t cudaGetDevice(int* d)
{
    *d = 0;
    return cudaSuccess;
}

// The emulated device: LINEXPORT_EMU_SMEM bytes of opt-in shared memory (default 227 KiB, an
// H100) and compute capability LINEXPORT_EMU_CC_MAJOR (default 9).
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int)
{
    char const* env = std::getenv(attr == cudaDevAttrComputeCapabilityMajor ? "LINEXPORT_EMU_CC_MAJOR" : "LINEXPORT_EMU_SMEM");
    *value = env != nullptr ? std::atoi(env) : (attr == cudaDevAttrComputeCapabilityMajor ? 9 : 227 * 1024);
    return cudaSuccess;
}

template <typename F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int)
{
    return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr)
{
    std::memset(p, v, n);
    return cudaSuccess;
}

inline cudaError_t cudaMemcpyAsync(void* d, void const* s, size_t n, cudaMemcpyKind, cudaStream_t = nullptr)
{
    std::memmove(d, s, n);
    return cudaSuccess;
}
