/* A small seeded random generator (xoshiro256** seeded through splitmix64). Its whole
 * state is four words, saved in checkpoints so that a resumed run draws the same numbers. */
#ifndef QT_RNG_H
#define QT_RNG_H

#include <math.h>
#include <stdint.h>

struct qt_rng {
    uint64_t s[4];
};

static inline uint64_t qt_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline void qt_rng_seed(struct qt_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = qt_splitmix64(&seed);
}

static inline uint64_t qt_rng_next(struct qt_rng *r)
{
    uint64_t *s = r->s;
    uint64_t x = s[1] * 5, res = ((x << 7) | (x >> 57)) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return res;
}

/* Uniform integer in [0, n) (n > 0), without modulo bias worth measuring for n < 2^32. */
static inline uint32_t qt_rng_below(struct qt_rng *r, uint32_t n)
{
    return (uint32_t)(((qt_rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

/* Fisher-Yates shuffle of p[0..n). */
static inline void qt_rng_shuffle(struct qt_rng *r, int *p, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)qt_rng_below(r, (uint32_t)i + 1);
        int t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double qt_rng_uniform(struct qt_rng *r)
{
    return (double)(qt_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Standard normals by Box-Muller: each draw of two uniforms yields two values, the second
 * kept for the next call. */
struct qt_normal {
    struct qt_rng r;
    int has_spare;
    double spare;
};

static inline void qt_normal_seed(struct qt_normal *n, uint64_t seed)
{
    qt_rng_seed(&n->r, seed);
    n->has_spare = 0;
    n->spare = 0;
}

static inline double qt_normal_next(struct qt_normal *n)
{
    if (n->has_spare) {
        n->has_spare = 0;
        return n->spare;
    }
    const double u1 = 1.0 - qt_rng_uniform(&n->r); /* (0, 1]: log stays finite */
    const double u2 = qt_rng_uniform(&n->r);
    const double rad = sqrt(-2.0 * log(u1)), th = 2.0 * 3.14159265358979323846 * u2;
    n->spare = rad * sin(th);
    n->has_spare = 1;
    return rad * cos(th);
}

#endif
