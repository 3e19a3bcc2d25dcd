// Decode (T == 1): one fused pass over the state, bandwidth-bound by design.
//
// Per (b, h) the state P is Dk x (Dv+1) contiguous fp32. Thread (r, j) of a block owns column j
// and rows r, r+R, r+2R, ...; with blockDim = R * (Dv+1) each pass over R rows reads one
// contiguous span of the state, so every load and store is fully coalesced. The state is read
// once and written once; q, k, v are a few hundred bytes. Column Dv is the normaliser z (the
// ones column appended to v), so the denominator falls out of the same reduction; the
// unnormalised form (normalize = 0) has no such column and no division.
#include "cla_common.cuh"

namespace linexport
{
namespace cla
{
namespace
{

// Rows each thread loads before it stores any: enough bytes in flight to cover DRAM latency.
constexpr int kRowBatch = 8;
// Target block size; R = max(1, kTargetThreads / (Dv+1)) row groups.
constexpr int kTargetThreads = 256;

template <typename T>
__global__ void decode_kernel(Params p, int rows_per_pass)
{
    extern __shared__ float smem[];
    int const Dk = p.head_dim_k;
    int const Dv = p.head_dim_v;
    int const ncols = Dv + p.normalize;
    int const R = rows_per_pass;
    int const bh = blockIdx.x;
    int const b = bh / p.num_heads;
    int const h = bh - b * p.num_heads;
    int const tid = threadIdx.x;

    float* qs = smem;
    float* ks = qs + Dk;
    float* v1s = ks + Dk;
    float* part = v1s + ncols; // [R][ncols], row 0 reused for the reduced u

    // A batch row with length 0 keeps its state and outputs zeros: k = 0 adds nothing.
    bool const valid = valid_len(p, b) > 0;
    T const* q = static_cast<T const*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
    T const* k = static_cast<T const*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
    T const* v = static_cast<T const*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
    for (int i = tid; i < Dk; i += blockDim.x)
    {
        qs[i] = valid ? to_float(q[i]) : 0.f;
        ks[i] = valid ? to_float(k[i]) : 0.f;
    }
    for (int j = tid; j < ncols; j += blockDim.x)
    {
        v1s[j] = j < Dv ? (valid ? to_float(v[j]) : 0.f) : 1.f;
    }
    __syncthreads();

    int const j = tid % ncols;
    int const r = tid / ncols;
    size_t const base = static_cast<size_t>(bh) * Dk * ncols;
    float const* past = p.past_state == nullptr ? nullptr : p.past_state + base;
    float* present = p.present_state + base;
    float const vj = v1s[j];
    float acc = 0.f;
    // past may equal present: each element is read and then written by the same thread, and
    // all loads of a batch are issued before its stores.
    for (int i0 = r; i0 < Dk; i0 += kRowBatch * R)
    {
        float s[kRowBatch];
#pragma unroll
        for (int u = 0; u < kRowBatch; ++u)
        {
            int const i = i0 + u * R;
            s[u] = (past != nullptr && i < Dk) ? __ldcs(past + static_cast<size_t>(i) * ncols + j) : 0.f;
        }
#pragma unroll
        for (int u = 0; u < kRowBatch; ++u)
        {
            int const i = i0 + u * R;
            if (i < Dk)
            {
                float const x = fmaf(ks[i], vj, s[u]);
                __stcs(present + static_cast<size_t>(i) * ncols + j, x);
                acc = fmaf(qs[i], x, acc);
            }
        }
    }
    part[r * ncols + j] = acc;
    __syncthreads();
    if (tid < ncols)
    {
        float u = 0.f;
        for (int rr = 0; rr < R; ++rr)
        {
            u += part[rr * ncols + tid];
        }
        part[tid] = u; // only this thread reads or writes column tid of row 0
    }
    __syncthreads();
    if (tid < Dv)
    {
        float const o = !valid ? 0.f : p.normalize ? part[tid] / (part[Dv] + p.eps) : part[tid];
        T* out = static_cast<T*>(p.o) + b * p.o_stride_b + h * p.o_stride_h;
        out[tid] = from_float<T>(o);
    }
}

template <typename T>
cudaError_t launch(Params const& p, cudaStream_t stream)
{
    int const ncols = p.head_dim_v + p.normalize;
    int rows = kTargetThreads / ncols;
    rows = rows < 1 ? 1 : (rows > p.head_dim_k ? p.head_dim_k : rows);
    int const threads = rows * ncols;
    size_t const smem = sizeof(float) * (2 * p.head_dim_k + ncols + rows * ncols);
    unsigned const blocks = static_cast<unsigned>(p.batch) * static_cast<unsigned>(p.num_heads);
    decode_kernel<T><<<blocks, threads, smem, stream>>>(p, rows);
    return cudaGetLastError();
}

} // namespace

cudaError_t launch_decode(Params const& p, cudaStream_t stream)
{
    switch (p.dtype)
    {
    case LINEXPORT_FLOAT32: return launch<float>(p, stream);
    case LINEXPORT_FLOAT16: return launch<__half>(p, stream);
    case LINEXPORT_BFLOAT16: return launch<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
    }
}

} // namespace cla
} // namespace linexport
