// A CPU emulator for the subset of CUDA our kernels use: one OS thread per CUDA thread,
// __syncthreads / __syncwarp as barriers, shuffles through a per-warp buffer, blocks one after
// another. Slow, but it runs the kernels' real indexing and synchronisation on a machine
// without a GPU. Test-only: tests/plugins/test_kernels_emulated.py compiles the kernel sources
// against these headers (kernel launches rewritten to emu::launch).
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
#define __restrict__

struct dim3
{
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1)
        : x(x_)
        , y(y_)
        , z(z_)
    {
    }
};

namespace emu
{

struct Block
{
    int nthreads;
    std::barrier<> block_barrier;
    std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
    std::vector<float> shuffle; // 32 per warp
    unsigned char* dynamic_smem;
    Block(int n, unsigned char* smem)
        : nthreads(n)
        , block_barrier(n)
        , shuffle(((n + 31) / 32) * 32)
        , dynamic_smem(smem)
    {
        for (int w = 0; w < (n + 31) / 32; ++w)
        {
            int const in_warp = std::min(32, n - w * 32);
            warp_barriers.emplace_back(std::make_unique<std::barrier<>>(in_warp));
        }
    }
};

inline thread_local Block* tl_block = nullptr;

inline unsigned char* dynamic_smem()
{
    return tl_block->dynamic_smem;
}

} // namespace emu

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

inline void __syncthreads()
{
    emu::tl_block->block_barrier.arrive_and_wait();
}

inline void __syncwarp(unsigned = 0xffffffffu)
{
    emu::tl_block->warp_barriers[threadIdx.x / 32]->arrive_and_wait();
}

inline float __shfl_xor_sync(unsigned, float v, int lane_mask)
{
    int const lane = threadIdx.x % 32;
    float* buf = emu::tl_block->shuffle.data() + (threadIdx.x / 32) * 32;
    buf[lane] = v;
    __syncwarp();
    float const out = buf[lane ^ lane_mask];
    __syncwarp();
    return out;
}

inline float __ldcs(float const* p)
{
    return *p;
}

inline void __stcs(float* p, float v)
{
    *p = v;
}

[[noreturn]] inline void __trap()
{
    std::abort();
}

namespace emu
{

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t smem_bytes, void* /*stream*/, Args... args)
{
    int const n = static_cast<int>(block.x * block.y * block.z);
    std::vector<unsigned char> smem_storage(smem_bytes + 256);
    auto* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_storage.data()) + 255) & ~uintptr_t{255});
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
            {
                std::memset(smem, 0xff, smem_bytes); // NaN: reading before writing shows up
                Block blk(n, smem);
                std::vector<std::thread> threads;
                threads.reserve(n);
                for (int t = 0; t < n; ++t)
                {
                    threads.emplace_back([&, t] {
                        tl_block = &blk;
                        threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                        blockIdx = dim3(bx, by, bz);
                        blockDim = block;
                        gridDim = grid;
                        kernel(args...);
                    });
                }
                for (auto& th : threads)
                {
                    th.join();
                }
            }
}

} // namespace emu
