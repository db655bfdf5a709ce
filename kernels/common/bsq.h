/* BSQ (bit-level sparsity quantization, BSQ_PSGD.md section 1) math, shared by the CPU and
 * CUDA kernels and the host-side precision adjustment: a layer's weights are N trainable bit
 * planes p, n (continuous in [0, 2], plane 0 the most significant) and a scale s;
 *   v = sum_b (p_b - n_b) 2^(N-1-b),  k = 2^N - 1,
 *   W = s * sign(v) * round(min(|v|, k)) / k     (round: half to even),
 * whose gradient treats the clamp and the rounding as the identity:
 *   dW/dp_b = s * 2^(N-1-b) / k = -dW/dn_b,  dW/ds = sign(v) * round(min(|v|, k)) / k. */
#ifndef QT_KERNELS_COMMON_BSQ_H
#define QT_KERNELS_COMMON_BSQ_H

#include <math.h>

#ifndef QT_HD
#if defined(__CUDACC__)
#define QT_HD __host__ __device__
#else
#define QT_HD
#endif
#endif

/* Most bit planes a layer may have (BSQ's 8-bit start of sign and magnitude planes), and the
 * planes qtune trains: 7, a sign and 7 magnitude bits, the 255 levels of an 8-bit signed grid. */
#define QT_BSQ_MAX_BITS 8
#define QT_BSQ_PLANES 7

/* k = 2^N - 1, the largest integer N planes hold. */
QT_HD static inline float qt_bsq_k(int N)
{
    return (float)((1 << N) - 1);
}

/* W / s for the integer-valued sum v: sign(v) * round(min(|v|, k)) / k. */
QT_HD static inline float qt_bsq_unit(float v, int N)
{
    const float k = qt_bsq_k(N);
    const float a = fabsf(v) < k ? fabsf(v) : k;
    return copysignf(nearbyintf(a), v) / k;
}

/* dW/dp_b for plane b of N: s * 2^(N-1-b) / k. */
QT_HD static inline float qt_bsq_plane_grad(float s, int b, int N)
{
    return s * (float)(1 << (N - 1 - b)) / qt_bsq_k(N);
}

#endif
