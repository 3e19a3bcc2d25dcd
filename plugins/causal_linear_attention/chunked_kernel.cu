// Chunked prefill for float16 / bfloat16 on tensor cores (WMMA 16x16x16, fp32 accumulate).
//
// A block owns (b, h) and a tile of DVT value columns and walks the sequence in chunks of C
// tokens, carrying the state from chunk to chunk:
//
//   A    = tril(Q K^T)                      C x C, fp32 (tensor cores)
//   den  = rowsum(A) + Q z                  fp32
//   O    = (A V + Q S) / (den + eps)        A and S rounded to the input type for the MMAs
//   S   += K^T V,  z += colsum(K)           fp32, S kept in accumulator fragments
//
// The unnormalised form (normalize = 0) is O = A V + Q S: no z column in the state, no division.
//
// S stays fp32 in registers for the whole sequence. Q S needs S as an MMA operand in the input
// type, so S is split as hi + lo (both in the input type) and multiplied twice: about 16
// mantissa bits instead of 8, for a quarter more MMAs. The next chunk's Q, K, V are loaded into
// registers while the current one is computed. Dk (and the value tile) is zero-padded to 16.
#include "cla_common.cuh"

#include <mma.h>

namespace linexport
{
namespace cla
{
namespace
{

using namespace nvcuda;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kDVT = 32; // value columns per block

__host__ __device__ constexpr int align128(int x)
{
    return (x + 127) & ~127;
}

// Byte offsets into dynamic shared memory; one function for host (size) and device (layout).
struct SmemLayout
{
    int q, k, v, shi, slo, af, ah, scratch, z, qz, den, total;
};

__host__ __device__ inline SmemLayout smem_layout(int C, int dkp, int elem)
{
    SmemLayout L{};
    int off = 0;
    L.q = off;
    off = align128(off + C * dkp * elem);
    L.k = off;
    off = align128(off + C * dkp * elem);
    L.v = off;
    off = align128(off + C * kDVT * elem);
    L.shi = off;
    off = align128(off + dkp * kDVT * elem);
    L.slo = off;
    off = align128(off + dkp * kDVT * elem);
    L.af = off; // A in fp32 (C x C), later reused for the fp32 output tile (C x DVT)
    off = align128(off + C * (C > kDVT ? C : kDVT) * 4);
    L.ah = off;
    off = align128(off + C * C * elem);
    L.scratch = off; // one 16x16 fp32 tile per warp
    off = align128(off + kWarps * 256 * 4);
    L.z = off;
    off = align128(off + dkp * 4);
    L.qz = off;
    off = align128(off + C * 4);
    L.den = off;
    off = align128(off + C * 4);
    L.total = off;
    return L;
}

// bfloat16 MMAs need sm_80; float16 ones run from sm_70.
template <typename T>
struct ArchHasMma
{
    static constexpr bool value = true;
};
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
template <>
struct ArchHasMma<__nv_bfloat16>
{
    static constexpr bool value = false;
};
#endif

template <typename T, int C, int DKP_MAX>
__device__ void chunked_body(Params const& p)
{
    constexpr int kCT = C / 16;                    // 16-row tiles per chunk
    constexpr int kVT = kDVT / 16;                 // 16-column tiles per value tile
    constexpr int kStateFrags = ceil_div((DKP_MAX / 16) * kVT, kWarps);
    constexpr int kQK = ceil_div(C * DKP_MAX, kThreads); // prefetched q (and k) elements per thread
    constexpr int kV = ceil_div(C * kDVT, kThreads);

    using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
    using FragAc = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major>;
    using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
    using FragBc = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
    using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

    extern __shared__ __align__(128) unsigned char smem[];

    int const Dk = p.head_dim_k;
    int const Dv = p.head_dim_v;
    int const ncols = Dv + p.normalize;
    int const T_ = p.seq_len;
    int const dkp = (Dk + 15) & ~15;
    int const kt = dkp / 16;
    int const nstate = kt * kVT;
    int const j0 = blockIdx.x * kDVT;
    int const h = blockIdx.y;
    int const b = blockIdx.z;
    int const tid = threadIdx.x;
    int const warp = tid / 32;
    int const lane = tid % 32;
    int const Tb = valid_len(p, b);
    float const eps = p.eps;

    SmemLayout const L = smem_layout(C, dkp, sizeof(T));
    T* Qs = reinterpret_cast<T*>(smem + L.q);
    T* Ks = reinterpret_cast<T*>(smem + L.k);
    T* Vs = reinterpret_cast<T*>(smem + L.v);
    T* Shi = reinterpret_cast<T*>(smem + L.shi);
    T* Slo = reinterpret_cast<T*>(smem + L.slo);
    float* Af = reinterpret_cast<float*>(smem + L.af);
    float* Of = Af;
    T* Ah = reinterpret_cast<T*>(smem + L.ah);
    float* scratch = reinterpret_cast<float*>(smem + L.scratch) + warp * 256;
    float* zs = reinterpret_cast<float*>(smem + L.z);
    float* qz = reinterpret_cast<float*>(smem + L.qz);
    float* den = reinterpret_cast<float*>(smem + L.den);

    size_t const state_base = (static_cast<size_t>(b) * p.num_heads + h) * Dk * ncols;
    T const* qg = static_cast<T const*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
    T const* kg = static_cast<T const*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
    T const* vg = static_cast<T const*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
    T* og = static_cast<T*>(p.o) + b * p.o_stride_b + h * p.o_stride_h;
    T const zero = from_float<T>(0.f);

    // State tiles: warp w owns tiles w, w + kWarps, ... of the (dkp/16) x kVT grid.
    FragC S[kStateFrags];
#pragma unroll
    for (int f = 0; f < kStateFrags; ++f)
    {
        int const tile = warp + f * kWarps;
        wmma::fill_fragment(S[f], 0.f);
        if (tile < nstate && p.past_state != nullptr)
        {
            int const di = tile / kVT;
            int const vj = tile - di * kVT;
            for (int e = lane; e < 256; e += 32)
            {
                int const row = di * 16 + e / 16;
                int const colv = j0 + vj * 16 + e % 16;
                scratch[e] = (row < Dk && colv < Dv)
                    ? p.past_state[state_base + static_cast<size_t>(row) * ncols + colv]
                    : 0.f;
            }
            __syncwarp();
            wmma::load_matrix_sync(S[f], scratch, 16, wmma::mem_row_major);
            __syncwarp();
        }
    }
    for (int d = tid; d < dkp; d += kThreads)
    {
        zs[d] = (p.normalize && p.past_state != nullptr && d < Dk) ? p.past_state[state_base + static_cast<size_t>(d) * ncols + Dv] : 0.f;
    }

    T rq[kQK];
    T rk[kQK];
    T rv[kV];
    auto load_chunk = [&](int t0) {
#pragma unroll
        for (int u = 0; u < kQK; ++u)
        {
            int const e = tid + u * kThreads;
            int const t = e / dkp;
            int const d = e - t * dkp;
            bool const ok = e < C * dkp && t0 + t < Tb && d < Dk;
            rq[u] = ok ? qg[(t0 + t) * p.q_stride_t + d] : zero;
            rk[u] = ok ? kg[(t0 + t) * p.k_stride_t + d] : zero;
        }
#pragma unroll
        for (int u = 0; u < kV; ++u)
        {
            int const e = tid + u * kThreads;
            int const t = e / kDVT;
            int const c = e - t * kDVT;
            bool const ok = e < C * kDVT && t0 + t < Tb && j0 + c < Dv;
            rv[u] = ok ? vg[(t0 + t) * p.v_stride_t + j0 + c] : zero;
        }
    };

    int const nchunks = ceil_div(Tb, C); // chunks holding at least one valid token
    if (nchunks > 0)
    {
        load_chunk(0);
    }
    for (int n = 0; n < nchunks; ++n)
    {
        int const t0 = n * C;

        // Phase 1: staged chunk -> shared; state snapshot -> hi/lo operands.
#pragma unroll
        for (int u = 0; u < kQK; ++u)
        {
            int const e = tid + u * kThreads;
            if (e < C * dkp)
            {
                Qs[e] = rq[u];
                Ks[e] = rk[u];
            }
        }
#pragma unroll
        for (int u = 0; u < kV; ++u)
        {
            int const e = tid + u * kThreads;
            if (e < C * kDVT)
            {
                Vs[e] = rv[u];
            }
        }
#pragma unroll
        for (int f = 0; f < kStateFrags; ++f)
        {
            int const tile = warp + f * kWarps;
            if (tile < nstate)
            {
                int const di = tile / kVT;
                int const vj = tile - di * kVT;
                wmma::store_matrix_sync(scratch, S[f], 16, wmma::mem_row_major);
                __syncwarp();
                for (int e = lane; e < 256; e += 32)
                {
                    float const x = scratch[e];
                    T const hi = from_float<T>(x);
                    int const idx = (di * 16 + e / 16) * kDVT + vj * 16 + e % 16;
                    Shi[idx] = hi;
                    Slo[idx] = from_float<T>(x - to_float(hi));
                }
                __syncwarp();
            }
        }
        __syncthreads();

        if (n + 1 < nchunks)
        {
            load_chunk(t0 + C); // in flight during the MMAs below
        }

        // Phase 2a: lower-triangular tiles of A = Q K^T.
        for (int idx = warp; idx < kCT * (kCT + 1) / 2; idx += kWarps)
        {
            int i = 0;
            while ((i + 1) * (i + 2) / 2 <= idx)
            {
                ++i;
            }
            int const j = idx - i * (i + 1) / 2;
            FragC acc;
            wmma::fill_fragment(acc, 0.f);
            for (int kk = 0; kk < kt; ++kk)
            {
                FragA a;
                FragBc bk;
                wmma::load_matrix_sync(a, Qs + i * 16 * dkp + kk * 16, dkp);
                wmma::load_matrix_sync(bk, Ks + j * 16 * dkp + kk * 16, dkp);
                wmma::mma_sync(acc, a, bk, acc);
            }
            wmma::store_matrix_sync(Af + i * 16 * C + j * 16, acc, C, wmma::mem_row_major);
        }
        // Phase 2b: S += K^T V (the snapshot for this chunk's output is already in Shi/Slo).
#pragma unroll
        for (int f = 0; f < kStateFrags; ++f)
        {
            int const tile = warp + f * kWarps;
            if (tile < nstate)
            {
                int const di = tile / kVT;
                int const vj = tile - di * kVT;
                for (int kk = 0; kk < kCT; ++kk)
                {
                    FragAc a;
                    FragB bv;
                    wmma::load_matrix_sync(a, Ks + kk * 16 * dkp + di * 16, dkp);
                    wmma::load_matrix_sync(bv, Vs + kk * 16 * kDVT + vj * 16, kDVT);
                    wmma::mma_sync(S[f], a, bv, S[f]);
                }
            }
        }
        // Phase 2c: q_t . z (z before this chunk).
        for (int t = warp; t < C; t += kWarps)
        {
            float s = 0.f;
            for (int d = lane; d < dkp; d += 32)
            {
                s = fmaf(to_float(Qs[t * dkp + d]), zs[d], s);
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1)
            {
                s += __shfl_xor_sync(0xffffffffu, s, off);
            }
            if (lane == 0)
            {
                qz[t] = s;
            }
        }
        __syncthreads();

        // Phase 3: causal mask, denominators from fp32 A, A -> input type; z += colsum(K).
        for (int t = warp; t < C; t += kWarps)
        {
            float s = 0.f;
            for (int c = lane; c < C; c += 32)
            {
                float const a = c <= t ? Af[t * C + c] : 0.f;
                s += a;
                Ah[t * C + c] = from_float<T>(a);
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1)
            {
                s += __shfl_xor_sync(0xffffffffu, s, off);
            }
            if (lane == 0)
            {
                den[t] = s + qz[t];
            }
        }
        for (int d = tid; d < dkp; d += kThreads)
        {
            float s = 0.f;
            for (int t = 0; t < C; ++t)
            {
                s += to_float(Ks[t * dkp + d]);
            }
            zs[d] += s;
        }
        __syncthreads();

        // Phase 4: O = A V + Q S_hi + Q S_lo, tile by tile, into fp32 (reusing A's space).
        for (int idx = warp; idx < kCT * kVT; idx += kWarps)
        {
            int const i = idx / kVT;
            int const vj = idx - i * kVT;
            FragC acc;
            wmma::fill_fragment(acc, 0.f);
            for (int j = 0; j <= i; ++j)
            {
                FragA a;
                FragB bv;
                wmma::load_matrix_sync(a, Ah + i * 16 * C + j * 16, C);
                wmma::load_matrix_sync(bv, Vs + j * 16 * kDVT + vj * 16, kDVT);
                wmma::mma_sync(acc, a, bv, acc);
            }
            for (int kk = 0; kk < kt; ++kk)
            {
                FragA a;
                FragB bs;
                wmma::load_matrix_sync(a, Qs + i * 16 * dkp + kk * 16, dkp);
                wmma::load_matrix_sync(bs, Shi + kk * 16 * kDVT + vj * 16, kDVT);
                wmma::mma_sync(acc, a, bs, acc);
                wmma::load_matrix_sync(bs, Slo + kk * 16 * kDVT + vj * 16, kDVT);
                wmma::mma_sync(acc, a, bs, acc);
            }
            wmma::store_matrix_sync(Of + i * 16 * kDVT + vj * 16, acc, kDVT, wmma::mem_row_major);
        }
        __syncthreads();

        // Phase 5: normalise and write. The next phase 1 touches none of Of / den.
        for (int e = tid; e < C * kDVT; e += kThreads)
        {
            int const t = e / kDVT;
            int const c = e - t * kDVT;
            int const tg = t0 + t;
            if (tg < T_ && j0 + c < Dv)
            {
                float const o = tg >= Tb ? 0.f : p.normalize ? Of[e] / (den[t] + eps) : Of[e];
                og[tg * p.o_stride_t + j0 + c] = from_float<T>(o);
            }
        }
    }

    // Tokens past the last valid chunk: zero output.
    for (int e = tid; e < (T_ - nchunks * C) * kDVT; e += kThreads)
    {
        int const tg = nchunks * C + e / kDVT;
        int const c = e % kDVT;
        if (j0 + c < Dv)
        {
            og[tg * p.o_stride_t + j0 + c] = zero;
        }
    }

    // Final state: S tiles of this block's columns; z from the first column block.
#pragma unroll
    for (int f = 0; f < kStateFrags; ++f)
    {
        int const tile = warp + f * kWarps;
        if (tile < nstate)
        {
            int const di = tile / kVT;
            int const vj = tile - di * kVT;
            wmma::store_matrix_sync(scratch, S[f], 16, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < 256; e += 32)
            {
                int const row = di * 16 + e / 16;
                int const colv = j0 + vj * 16 + e % 16;
                if (row < Dk && colv < Dv)
                {
                    p.present_state[state_base + static_cast<size_t>(row) * ncols + colv] = scratch[e];
                }
            }
            __syncwarp();
        }
    }
    __syncthreads(); // zs: the initial values when no chunk ran
    if (blockIdx.x == 0 && p.normalize)
    {
        for (int d = tid; d < Dk; d += kThreads)
        {
            p.present_state[state_base + static_cast<size_t>(d) * ncols + Dv] = zs[d];
        }
    }
}

template <typename T, int C, int DKP_MAX>
__global__ void __launch_bounds__(kThreads) chunked_kernel(Params p)
{
    if constexpr (ArchHasMma<T>::value)
    {
        chunked_body<T, C, DKP_MAX>(p);
    }
    else
    {
        __trap(); // the launcher refuses bfloat16 below sm_80; never reached
    }
}

template <typename T, int C, int DKP_MAX>
cudaError_t try_launch(Params const& p, cudaStream_t stream, int smem_limit, bool* launched)
{
    int const dkp = (p.head_dim_k + 15) & ~15;
    int const bytes = smem_layout(C, dkp, sizeof(T)).total;
    *launched = false;
    if (bytes > smem_limit)
    {
        return cudaSuccess;
    }
    auto kernel = chunked_kernel<T, C, DKP_MAX>;
    if (bytes > 48 * 1024)
    {
        cudaError_t const err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
        if (err != cudaSuccess)
        {
            return err;
        }
    }
    dim3 const grid(ceil_div(p.head_dim_v, kDVT), p.num_heads, p.batch);
    kernel<<<grid, kThreads, bytes, stream>>>(p);
    *launched = true;
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_for(Params const& p, cudaStream_t stream)
{
    int device = 0;
    int smem_limit = 0;
    int major = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess)
    {
        err = cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    }
    if (err == cudaSuccess)
    {
        err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    }
    if (err != cudaSuccess)
    {
        return err;
    }
    if (sizeof(T) == 2 && static_cast<int>(p.dtype) == LINEXPORT_BFLOAT16 && major < 8)
    {
        return cudaErrorNotSupported;
    }
    // Largest chunk that fits: C = 64 for Dk <= 64, 32 for Dk <= 128, 16 for Dk <= 256.
    bool launched = false;
    int const dk = p.head_dim_k;
    if (dk <= 64)
    {
        err = try_launch<T, 64, 64>(p, stream, smem_limit, &launched);
    }
    if (err == cudaSuccess && !launched && dk <= 128)
    {
        err = try_launch<T, 32, 128>(p, stream, smem_limit, &launched);
    }
    if (err == cudaSuccess && !launched)
    {
        err = try_launch<T, 16, 256>(p, stream, smem_limit, &launched);
    }
    if (err == cudaSuccess && !launched)
    {
        return cudaErrorInvalidConfiguration; // less shared memory than any config needs
    }
    return err;
}

} // namespace

cudaError_t launch_chunked(Params const& p, cudaStream_t stream)
{
    switch (p.dtype)
    {
    case LINEXPORT_FLOAT16: return launch_for<__half>(p, stream);
    case LINEXPORT_BFLOAT16: return launch_for<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
    }
}

} // namespace cla
} // namespace linexport
