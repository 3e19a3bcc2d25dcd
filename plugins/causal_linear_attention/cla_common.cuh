// Internal to the kernels: element conversions, per-kernel launchers, shared helpers.
#ifndef LINEXPORT_CLA_COMMON_CUH
#define LINEXPORT_CLA_COMMON_CUH

#include "causal_linear_attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace linexport
{
namespace cla
{

using Params = LinexportCausalLinearAttentionParams;

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x)
{
    return x;
}
template <>
__device__ __forceinline__ float to_float<__half>(__half x)
{
    return __half2float(x);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x)
{
    return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x)
{
    return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

// Number of valid tokens of batch row b: min(T, lengths[b]) clamped at 0, or T.
__device__ __forceinline__ int valid_len(Params const& p, int b)
{
    if (p.lengths == nullptr)
    {
        return p.seq_len;
    }
    int const n = p.lengths[b];
    return n < 0 ? 0 : (n > p.seq_len ? p.seq_len : n);
}

__host__ __device__ constexpr int ceil_div(int a, int b)
{
    return (a + b - 1) / b;
}

// One launcher per kernel family; params already checked by linexport_cla_forward.
cudaError_t launch_decode(Params const& p, cudaStream_t stream);
cudaError_t launch_recurrent(Params const& p, cudaStream_t stream);
cudaError_t launch_chunked(Params const& p, cudaStream_t stream);

} // namespace cla
} // namespace linexport

#endif // LINEXPORT_CLA_COMMON_CUH
