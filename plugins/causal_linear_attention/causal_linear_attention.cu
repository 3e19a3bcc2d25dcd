// The C entry points: parameter checks and dispatch to the three kernel families.
#include "cla_common.cuh"

namespace
{
constexpr int32_t kAbiVersion = 2; // 2: the normalize field
} // namespace

extern "C" void linexport_cla_set_packed_strides(LinexportCausalLinearAttentionParams* p)
{
    int64_t const T = p->seq_len;
    int64_t const H = p->num_heads;
    int64_t const Dk = p->head_dim_k;
    int64_t const Dv = p->head_dim_v;
    p->q_stride_b = T * H * Dk;
    p->q_stride_t = H * Dk;
    p->q_stride_h = Dk;
    p->k_stride_b = T * H * Dk;
    p->k_stride_t = H * Dk;
    p->k_stride_h = Dk;
    p->v_stride_b = T * H * Dv;
    p->v_stride_t = H * Dv;
    p->v_stride_h = Dv;
    p->o_stride_b = T * H * Dv;
    p->o_stride_t = H * Dv;
    p->o_stride_h = Dv;
}

extern "C" char const* linexport_cla_check_params(LinexportCausalLinearAttentionParams const* p)
{
    if (p == nullptr)
    {
        return "params is NULL";
    }
    if (p->batch < 1 || p->batch > 65535)
    {
        return "batch must be in [1, 65535]";
    }
    if (p->num_heads < 1 || p->num_heads > 65535)
    {
        return "num_heads must be in [1, 65535]";
    }
    if (p->seq_len < 0)
    {
        return "seq_len must be >= 0";
    }
    if (p->head_dim_k < 1 || p->head_dim_k > LINEXPORT_CLA_MAX_HEAD_DIM)
    {
        return "head_dim_k must be in [1, 256]";
    }
    if (p->head_dim_v < 1 || p->head_dim_v > LINEXPORT_CLA_MAX_HEAD_DIM)
    {
        return "head_dim_v must be in [1, 256]";
    }
    if (p->dtype != LINEXPORT_FLOAT32 && p->dtype != LINEXPORT_FLOAT16 && p->dtype != LINEXPORT_BFLOAT16)
    {
        return "dtype must be LINEXPORT_FLOAT32, LINEXPORT_FLOAT16 or LINEXPORT_BFLOAT16";
    }
    if (!(p->eps >= 0.f) || p->eps == __builtin_huge_valf())
    {
        return "eps must be finite and >= 0";
    }
    if (p->normalize != 0 && p->normalize != 1)
    {
        return "normalize must be 0 or 1";
    }
    if (p->present_state == nullptr)
    {
        return "present_state must not be NULL";
    }
    if (p->seq_len > 0 && (p->q == nullptr || p->k == nullptr || p->v == nullptr || p->o == nullptr))
    {
        return "q, k, v and o must not be NULL when seq_len > 0";
    }
    // Several column blocks read the normaliser column (or, unnormalised, all rows) of past_state
    // while others write present_state.
    if (p->seq_len > 1 && p->past_state == p->present_state)
    {
        return "past_state may equal present_state only when seq_len <= 1";
    }
    return nullptr;
}

extern "C" cudaError_t linexport_cla_forward(LinexportCausalLinearAttentionParams const* p, cudaStream_t stream)
{
    if (linexport_cla_check_params(p) != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (p->seq_len == 0)
    {
        size_t const bytes = sizeof(float) * p->batch * p->num_heads * p->head_dim_k * (p->head_dim_v + p->normalize);
        if (p->past_state == nullptr)
        {
            return cudaMemsetAsync(p->present_state, 0, bytes, stream);
        }
        if (p->past_state == p->present_state)
        {
            return cudaSuccess;
        }
        return cudaMemcpyAsync(p->present_state, p->past_state, bytes, cudaMemcpyDeviceToDevice, stream);
    }
    if (p->seq_len == 1)
    {
        return linexport::cla::launch_decode(*p, stream);
    }
    if (p->dtype == LINEXPORT_FLOAT32)
    {
        return linexport::cla::launch_recurrent(*p, stream);
    }
    return linexport::cla::launch_chunked(*p, stream);
}

extern "C" int32_t linexport_cla_abi_version(void)
{
    return kAbiVersion;
}
