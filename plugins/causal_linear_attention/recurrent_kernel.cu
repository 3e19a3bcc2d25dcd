// Fused recurrent prefill for float32 inputs: exact fp32 FMAs, no tensor cores (TF32 would
// drop the precision an fp32 caller asked for).
//
// A block owns (b, h) and 32 value columns plus the normaliser column (idle in the
// unnormalised form, normalize = 0, whose state has no such column); thread (r, c) keeps
// rows r, r+R, ... of its column of the state in registers for the whole sequence. Tokens are
// staged through shared memory kTokens at a time; per token each thread updates its rows,
// forms its partial q.P, and one barrier later the row-group-0 threads reduce the partials and
// write the output. Sequential in T by design; float16/bfloat16 take the chunked kernel.
#include "cla_common.cuh"

namespace linexport
{
namespace cla
{
namespace
{

constexpr int kCols = 32;        // value columns per block
constexpr int kGroups = 8;       // row groups R
constexpr int kThreads = (kCols + 1) * kGroups;
constexpr int kTokens = 16;      // tokens staged per barrier

template <typename T, int DK_MAX>
__global__ void __launch_bounds__(kThreads) recurrent_kernel(Params p)
{
    constexpr int kRows = DK_MAX / kGroups;
    __shared__ float qs[kTokens][DK_MAX];
    __shared__ float ks[kTokens][DK_MAX];
    __shared__ float vs[kTokens][kCols];
    __shared__ float part[2][kGroups][kCols + 1];

    int const Dk = p.head_dim_k;
    int const Dv = p.head_dim_v;
    int const ncols = Dv + p.normalize;
    int const seq = p.seq_len;
    int const j0 = blockIdx.x * kCols;
    int const h = blockIdx.y;
    int const b = blockIdx.z;
    int const tid = threadIdx.x;
    int const c = tid % (kCols + 1);
    int const r = tid / (kCols + 1);
    bool const is_z = c == kCols;
    int const col = is_z ? Dv : j0 + c;
    bool const col_ok = is_z ? p.normalize != 0 : col < Dv;
    int const Tb = valid_len(p, b);

    size_t const state_base = (static_cast<size_t>(b) * p.num_heads + h) * Dk * ncols;
    float S[kRows];
#pragma unroll
    for (int m = 0; m < kRows; ++m)
    {
        int const i = r + kGroups * m;
        S[m] = (p.past_state != nullptr && i < Dk && col_ok)
            ? p.past_state[state_base + static_cast<size_t>(i) * ncols + col]
            : 0.f;
    }

    T const* qg = static_cast<T const*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
    T const* kg = static_cast<T const*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
    T const* vg = static_cast<T const*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
    T* og = static_cast<T*>(p.o) + b * p.o_stride_b + h * p.o_stride_h;

    for (int t0 = 0; t0 < seq; t0 += kTokens)
    {
        __syncthreads(); // the previous stage is done with qs/ks/vs
        for (int e = tid; e < kTokens * Dk; e += kThreads)
        {
            int const tt = e / Dk;
            int const d = e - tt * Dk;
            int const t = t0 + tt;
            bool const ok = t < Tb;
            qs[tt][d] = ok ? to_float(qg[t * p.q_stride_t + d]) : 0.f;
            ks[tt][d] = ok ? to_float(kg[t * p.k_stride_t + d]) : 0.f;
        }
        for (int e = tid; e < kTokens * kCols; e += kThreads)
        {
            int const tt = e / kCols;
            int const cc = e - tt * kCols;
            int const t = t0 + tt;
            vs[tt][cc] = (t < Tb && j0 + cc < Dv) ? to_float(vg[t * p.v_stride_t + j0 + cc]) : 0.f;
        }
        __syncthreads();

        int const nt = seq - t0 < kTokens ? seq - t0 : kTokens;
        for (int tt = 0; tt < nt; ++tt)
        {
            float const v1 = is_z ? 1.f : vs[tt][c];
            float acc = 0.f;
#pragma unroll
            for (int m = 0; m < kRows; ++m)
            {
                int const i = r + kGroups * m;
                if (i < Dk)
                {
                    S[m] = fmaf(ks[tt][i], v1, S[m]);
                    acc = fmaf(qs[tt][i], S[m], acc);
                }
            }
            // Double-buffered by token parity: the readers of token tt are past the barrier of
            // token tt+1 before anyone writes this buffer again.
            part[tt & 1][r][c] = acc;
            __syncthreads();
            if (r == 0 && !is_z && col < Dv)
            {
                float u = 0.f;
                float den = 0.f;
#pragma unroll
                for (int rr = 0; rr < kGroups; ++rr)
                {
                    u += part[tt & 1][rr][c];
                    den += part[tt & 1][rr][kCols];
                }
                int const t = t0 + tt;
                float const o = p.normalize ? u / (den + p.eps) : u;
                og[t * p.o_stride_t + col] = from_float<T>(t < Tb ? o : 0.f);
            }
        }
    }

    // The normaliser column is written by the first column block only (all compute it).
    if (col_ok && (!is_z || blockIdx.x == 0))
    {
#pragma unroll
        for (int m = 0; m < kRows; ++m)
        {
            int const i = r + kGroups * m;
            if (i < Dk)
            {
                p.present_state[state_base + static_cast<size_t>(i) * ncols + col] = S[m];
            }
        }
    }
}

template <typename T, int DK_MAX>
cudaError_t launch(Params const& p, cudaStream_t stream)
{
    dim3 const grid(ceil_div(p.head_dim_v, kCols), p.num_heads, p.batch);
    recurrent_kernel<T, DK_MAX><<<grid, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_for(Params const& p, cudaStream_t stream)
{
    if (p.head_dim_k <= 64)
    {
        return launch<T, 64>(p, stream);
    }
    if (p.head_dim_k <= 128)
    {
        return launch<T, 128>(p, stream);
    }
    return launch<T, 256>(p, stream);
}

} // namespace

cudaError_t launch_recurrent(Params const& p, cudaStream_t stream)
{
    if (p.dtype != LINEXPORT_FLOAT32)
    {
        return cudaErrorInvalidValue;
    }
    return launch_for<float>(p, stream);
}

} // namespace cla
} // namespace linexport
