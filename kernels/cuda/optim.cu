/* CUDA optimizer update: PyTorch's SGD (momentum, Nesterov, weight decay) with PSGD's
 * position-based gradient scaling (kernels/common/apot.h) and BSQ's clamp, per parameter. */
#include "common.cuh"

struct psgd_scratch {
    float lo, hi, delta;
};

__global__ void k_minmax(struct psgd_scratch *s, const float *p, int64_t n)
{
    __shared__ float lo[QT_CUDA_THREADS], hi[QT_CUDA_THREADS];
    float a = INFINITY, b = -INFINITY;
    QT_GRID_LOOP(i, n)
    {
        a = fminf(a, p[i]);
        b = fmaxf(b, p[i]);
    }
    lo[threadIdx.x] = a;
    hi[threadIdx.x] = b;
    __syncthreads();
    for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) {
            lo[threadIdx.x] = fminf(lo[threadIdx.x], lo[threadIdx.x + k]);
            hi[threadIdx.x] = fmaxf(hi[threadIdx.x], hi[threadIdx.x + k]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        qt_atomic_min_float(&s->lo, lo[0]);
        qt_atomic_max_float(&s->hi, hi[0]);
    }
}

__global__ void k_psgd_range(struct psgd_scratch *s, float *range, int first, int L)
{
    if (threadIdx.x || blockIdx.x) return;
    s->delta = qt_psgd_range_step(range, s->lo, s->hi, first, L);
}

__global__ void k_sgd(float *p, float *buf, const float *grad, int64_t n, float lr, float momentum,
                      float wd, int nesterov, int first, const struct psgd_scratch *ps, float L,
                      float lambda, int clamp, float clo, float chi)
{
    const float delta = ps ? ps->delta : 0.0f;
    QT_GRID_LOOP(i, n)
    {
        float g = grad[i];
        if (ps) g *= qt_psgd_factor(p[i], delta, L, lambda);
        g += wd * p[i];
        if (momentum != 0.0f) {
            buf[i] = first ? g : momentum * buf[i] + g;
            g = nesterov ? g + momentum * buf[i] : buf[i];
        }
        float v = p[i] - lr * g;
        if (clamp) v = v < clo ? clo : v > chi ? chi : v;
        p[i] = v;
    }
}

__global__ void k_init_minmax(struct psgd_scratch *s)
{
    s->lo = INFINITY;
    s->hi = -INFINITY;
}

extern "C" int sgd_update_cuda(struct qt_cuda_ctx *c, const struct qt_sgd_desc *d,
                               const struct qt_sgd_param *p, struct qt_error *e)
{
    struct psgd_scratch *ps = NULL;
    if (p->psgd_range) {
        if (qt_cuda_scratch(c, sizeof *ps, e)) return -1;
        ps = (struct psgd_scratch *)c->scratch;
        k_init_minmax<<<1, 1, 0, c->stream>>>(ps);
        k_minmax<<<qt_cuda_blocks(c, p->n), QT_CUDA_THREADS, 0, c->stream>>>(ps, p->p, p->n);
        k_psgd_range<<<1, 32, 0, c->stream>>>(ps, p->psgd_range, p->psgd_first, p->psgd_levels);
    }
    if (p->n > 0)
        k_sgd<<<qt_cuda_blocks(c, p->n), QT_CUDA_THREADS, 0, c->stream>>>(
            p->p, p->buf, p->grad, p->n, p->lr, d->momentum, p->wd, d->nesterov, p->first, ps,
            (float)p->psgd_levels, p->psgd_lambda, p->clamp, p->clamp_lo, p->clamp_hi);
    return QT_CU_LAUNCH(e, "SGD update");
}
