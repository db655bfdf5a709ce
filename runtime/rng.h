/* A small seeded random generator (xoshiro256** seeded through splitmix64). Its whole
 * state is four words, saved in checkpoints so that a resumed run draws the same numbers. */
#ifndef QT_RNG_H
#define QT_RNG_H

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
    for (int i = 0; i < 4; i++) r->s[i] = qt_splitmix64(&seed);
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

#endif
