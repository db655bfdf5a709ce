/* Device helpers shared by the CUDA kernels: launch sizes, grid-stride loops, block sums in
 * double, float atomics for max/min. */
#ifndef QT_KERNELS_CUDA_COMMON_CUH
#define QT_KERNELS_CUDA_COMMON_CUH

#include <math.h>
#include <stdint.h>

#include "cuda.h"

#define QT_CUDA_THREADS 256

/* Blocks for n elements at QT_CUDA_THREADS per block, capped (grid-stride loops do the rest). */
static inline unsigned qt_cuda_blocks(const struct qt_cuda_ctx *c, int64_t n)
{
    int64_t b = (n + QT_CUDA_THREADS - 1) / QT_CUDA_THREADS;
    const int64_t cap = (int64_t)(c->sms > 0 ? c->sms : 80) * 16;
    if (b > cap) b = cap;
    return (unsigned)(b > 0 ? b : 1);
}

#define QT_GRID_LOOP(i, n)                                                                         \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);                     \
         i += (int64_t)blockDim.x * gridDim.x)

/* The sum of v over the block (every thread passes its value; the result is valid in thread
 * 0). blockDim.x must be a multiple of 32, at most 1024. */
__device__ static inline double qt_block_sum(double v)
{
    __shared__ double part[32];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads(); /* part[] may still be read by an earlier call */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

/* Adds the block's sum of v to *dst (one atomic per block). */
__device__ static inline void qt_block_add(double *dst, double v)
{
    v = qt_block_sum(v);
    if (threadIdx.x == 0) atomicAdd(dst, v);
}

/* *addr = max(*addr, v), v not NaN. */
__device__ static inline void qt_atomic_max_float(float *addr, float v)
{
    unsigned *a = (unsigned *)addr, old = *a;
    while (__uint_as_float(old) < v) {
        const unsigned seen = atomicCAS(a, old, __float_as_uint(v));
        if (seen == old) break;
        old = seen;
    }
}

__device__ static inline void qt_atomic_min_float(float *addr, float v)
{
    unsigned *a = (unsigned *)addr, old = *a;
    while (__uint_as_float(old) > v) {
        const unsigned seen = atomicCAS(a, old, __float_as_uint(v));
        if (seen == old) break;
        old = seen;
    }
}

__device__ static inline void qt_put(float *o, float g, int acc)
{
    *o = acc ? *o + g : g;
}

#endif
