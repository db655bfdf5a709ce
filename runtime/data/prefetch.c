/* Batch prefetch: a thread assembles the next batch (decoding, augmenting, normalizing) into
 * the second of two buffers while the caller computes on the first. */
#include "prefetch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../../util/clock.h"

struct qt_prefetch {
    const struct qt_dataset *ds;
    const float *mean, *std;
    enum qt_image_layout layout;
    float *x[2];
    int32_t *y[2];
    int fill;     /* the buffer the job in flight writes */
    int pending;  /* a job was started and not yet waited for */
    /* the job: filled by start, read by the thread */
    const int *idx;
    int count;
    struct qt_augment aug;
    int has_aug;
    int busy, quit, rc;
    struct qt_error err;
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static void *worker(void *arg)
{
    struct qt_prefetch *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->busy && !p->quit) pthread_cond_wait(&p->cv, &p->mu);
        if (p->quit) break;
        const int b = p->fill;
        pthread_mutex_unlock(&p->mu);
        struct qt_error e;
        const int rc = qt_dataset_batch_augmented(p->ds, p->idx, p->count, p->mean, p->std,
                                                  p->has_aug ? &p->aug : NULL, p->layout,
                                                  p->x[b], p->y[b], &e);
        pthread_mutex_lock(&p->mu);
        p->rc = rc;
        if (rc) p->err = e;
        p->busy = 0;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

struct qt_prefetch *qt_prefetch_new(const struct qt_dataset *ds, int max_batch,
                                    const float *mean, const float *std,
                                    enum qt_image_layout layout, struct qt_error *e)
{
    struct qt_prefetch *p = calloc(1, sizeof *p);
    const size_t per = (size_t)ds->c * ds->h * ds->w;
    if (!p) {
        qt_err(e, "out of memory");
        return NULL;
    }
    p->ds = ds;
    p->mean = mean;
    p->std = std;
    p->layout = layout;
    for (int k = 0; k < 2; k++) {
        p->x[k] = malloc(sizeof(float) * per * (size_t)(max_batch > 0 ? max_batch : 1));
        p->y[k] = malloc(sizeof(int32_t) * (size_t)(max_batch > 0 ? max_batch : 1));
        if (!p->x[k] || !p->y[k]) {
            qt_prefetch_free(p);
            qt_err(e, "out of memory for two batches of %d", max_batch);
            return NULL;
        }
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->thread, NULL, worker, p)) {
        qt_prefetch_free(p);
        qt_err(e, "cannot start the data thread");
        return NULL;
    }
    p->started = 1;
    return p;
}

void qt_prefetch_start(struct qt_prefetch *p, const int *idx, int count,
                       const struct qt_augment *aug)
{
    pthread_mutex_lock(&p->mu);
    while (p->busy) pthread_cond_wait(&p->cv, &p->mu);
    if (p->pending) p->fill ^= 1; /* the batch waited for last stays in the other buffer */
    p->idx = idx;
    p->count = count;
    p->has_aug = aug != NULL;
    if (aug) p->aug = *aug;
    p->rc = 0;
    p->busy = 1;
    p->pending = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

int qt_prefetch_wait(struct qt_prefetch *p, float **x, int32_t **y, double *waited,
                     struct qt_error *e)
{
    const double t0 = qt_now();
    pthread_mutex_lock(&p->mu);
    while (p->busy) pthread_cond_wait(&p->cv, &p->mu);
    const int rc = p->rc, b = p->fill;
    if (rc) *e = p->err;
    pthread_mutex_unlock(&p->mu);
    if (waited) *waited += qt_now() - t0;
    if (rc) return -1;
    *x = p->x[b];
    *y = p->y[b];
    return 0;
}

void qt_prefetch_free(struct qt_prefetch *p)
{
    if (!p) return;
    if (p->started) {
        pthread_mutex_lock(&p->mu);
        p->quit = 1;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->thread, NULL);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
    }
    for (int k = 0; k < 2; k++) {
        free(p->x[k]);
        free(p->y[k]);
    }
    free(p);
}
