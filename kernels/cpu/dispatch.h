/* Run-time instruction-set dispatch for the CPU kernels' own loops. The build targets the
 * x86-64 baseline; QT_CPU_CLONES on a function has GCC compile it twice, for x86-64-v3 (AVX2,
 * FMA, BMI) and for the baseline, and pick one copy when the program loads (an ifunc). */
#ifndef QT_KERNELS_CPU_DISPATCH_H
#define QT_KERNELS_CPU_DISPATCH_H

/* Cloned: GCC on x86-64 when the build itself does not already assume AVX2. The OpenMP regions
 * inside a cloned function are outlined before cloning and so are cloned with it; a static
 * helper that holds a loop must be inlined into a cloned function or be cloned itself.
 * Other compilers (clang builds the fuzz targets) and -march builds get one plain copy. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__AVX2__) &&       \
    !defined(QT_NO_CPU_CLONES)
#define QT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define QT_CPU_CLONES
#endif

#endif
