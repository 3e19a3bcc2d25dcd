// Emulator stand-in for nvcuda::wmma at 16x16x16: every lane holds the whole tile (the real
// fragment layout is opaque to our code anyway). Operands are stored in their own type, so the
// rounding of A and S to half/bfloat16 happens as on the GPU; products accumulate in fp32.
#pragma once

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "emu.h"

#include <type_traits>

namespace nvcuda
{
namespace wmma
{

struct matrix_a
{
};
struct matrix_b
{
};
struct accumulator
{
};
struct row_major
{
};
struct col_major
{
};
enum layout_t
{
    mem_row_major,
    mem_col_major
};

inline float as_float(float x)
{
    return x;
}
inline float as_float(__half x)
{
    return __half2float(x);
}
inline float as_float(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment
{
    float v[256];
};

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, T const* p, unsigned ldm)
{
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j)
            f.v[i * 16 + j] = as_float(std::is_same<Layout, row_major>::value ? p[i * ldm + j] : p[i + j * ldm]);
    __syncwarp(); // the real call is warp-collective; keep lanes together like the hardware would
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, float const* p, unsigned ldm, layout_t layout)
{
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j)
            f.v[i * 16 + j] = layout == mem_row_major ? p[i * ldm + j] : p[i + j * ldm];
    __syncwarp();
}

inline void store_matrix_sync(float* p, fragment<accumulator, 16, 16, 16, float> const& f, unsigned ldm, layout_t layout)
{
    // Each lane writes a disjoint eighth of the tile.
    for (int e = static_cast<int>(threadIdx.x % 32); e < 256; e += 32)
    {
        int const i = e / 16;
        int const j = e % 16;
        (layout == mem_row_major ? p[i * ldm + j] : p[i + j * ldm]) = f.v[e];
    }
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float x)
{
    for (float& e : f.v)
        e = x;
}

template <typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, fragment<matrix_a, 16, 16, 16, T, LA> const& a,
    fragment<matrix_b, 16, 16, 16, T, LB> const& b, fragment<accumulator, 16, 16, 16, float> const& c)
{
    float out[256];
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j)
        {
            float s = c.v[i * 16 + j];
            for (int k = 0; k < 16; ++k)
                s = std::fma(a.v[i * 16 + k], b.v[k * 16 + j], s);
            out[i * 16 + j] = s;
        }
    std::memcpy(d.v, out, sizeof(out));
}

} // namespace wmma
} // namespace nvcuda
