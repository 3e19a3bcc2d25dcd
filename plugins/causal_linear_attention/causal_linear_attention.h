// Causal linear attention: the kernels' plain parameter struct and launcher.
//
// No TensorRT here: the plugin glue (causal_linear_attention_plugin.cpp), the ctypes bindings
// (linexport/plugins.py) and the GPU harness all fill this one struct. The op is specified in
// README.md next to this file; per (batch b, head h), starting from P = past_state[b, h]:
//
//     P_t = P_{t-1} + k_t [v_t, 1]^T        (P is Dk x (Dv+1): numerator S | normaliser z)
//     u_t = q_t^T P_t                       o_t = u_t[:Dv] / (u_t[Dv] + eps)
//
// or, with normalize = 0, the unnormalised form: P is Dk x Dv (S alone), P_t = P_{t-1} + k_t v_t^T,
// o_t = q_t^T P_t (eps unused); and present_state[b, h] = P after the last valid token. State and accumulation are fp32.
// The struct is C-compatible (fixed-width fields, no C++ types) so ctypes can mirror it.
#ifndef LINEXPORT_CAUSAL_LINEAR_ATTENTION_H
#define LINEXPORT_CAUSAL_LINEAR_ATTENTION_H

#include <cuda_runtime_api.h>
#include <stdint.h>

// The C API is what the shared libraries export (they are built with hidden visibility).
#if defined(_WIN32)
#define LINEXPORT_API
#else
#define LINEXPORT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Element type of q, k, v and the output. The state is always float32.
typedef enum LinexportDType
{
    LINEXPORT_FLOAT32 = 0,
    LINEXPORT_FLOAT16 = 1,
    LINEXPORT_BFLOAT16 = 2
} LinexportDType;

// Largest head dimension (Dk and Dv each) the kernels take.
#define LINEXPORT_CLA_MAX_HEAD_DIM 256

typedef struct LinexportCausalLinearAttentionParams
{
    // q, k: [B, T, H, Dk] and v, o: [B, T, H, Dv] addressed through the strides below (in
    // elements; the last dimension is contiguous). The op's packed layout [B, T, H*D] is
    // stride_b = T*H*D, stride_t = H*D, stride_h = D.
    void const* q;
    void const* k;
    void const* v;
    void* o;
    // [B, H, Dk, W] float32, contiguous, W = Dv + normalize. past_state may be NULL (zeros) and may equal
    // present_state (updated in place).
    float const* past_state;
    float* present_state;
    // Optional [B] int32: tokens t >= lengths[b] leave the state untouched and give zero output.
    // NULL means all T tokens are valid.
    int32_t const* lengths;

    int64_t q_stride_b, q_stride_t, q_stride_h;
    int64_t k_stride_b, k_stride_t, k_stride_h;
    int64_t v_stride_b, v_stride_t, v_stride_h;
    int64_t o_stride_b, o_stride_t, o_stride_h;

    int32_t batch;     // B >= 1
    int32_t seq_len;   // T >= 0 (T = 0 copies past_state to present_state)
    int32_t num_heads; // H >= 1
    int32_t head_dim_k; // Dk in [1, 256]
    int32_t head_dim_v; // Dv in [1, 256]
    int32_t dtype;      // LinexportDType
    float eps;
    int32_t normalize;  // 1: normalised (state Dv+1 wide), 0: unnormalised (state Dv wide)
} LinexportCausalLinearAttentionParams;

// Fills the strides of the op's packed layout ([B, T, H*D] for q, k, v, o).
LINEXPORT_API void linexport_cla_set_packed_strides(LinexportCausalLinearAttentionParams* params);

// Checks params without touching the GPU: returns NULL when they are valid, else a constant
// message saying which field is wrong and what it must be.
LINEXPORT_API char const* linexport_cla_check_params(LinexportCausalLinearAttentionParams const* params);

// Enqueues the op on `stream`: the decode kernel for T == 1, the chunked tensor-core kernel for
// float16/bfloat16 with T > 1, the fused recurrent kernel for float32 with T > 1. Needs no
// workspace. Returns cudaSuccess, cudaErrorInvalidValue for bad params (see
// linexport_cla_check_params), or the launch error.
LINEXPORT_API cudaError_t linexport_cla_forward(LinexportCausalLinearAttentionParams const* params, cudaStream_t stream);

// Version of this ABI (the params struct and the functions above); bumped when they change.
LINEXPORT_API int32_t linexport_cla_abi_version(void);

#ifdef __cplusplus
} // extern "C"
#endif

#endif // LINEXPORT_CAUSAL_LINEAR_ATTENTION_H
