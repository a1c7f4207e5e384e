// Compile a CPU loop three times (AVX-512, AVX2 + FMA, baseline SSE2) and pick one when the library
// loads: the wheel's baseline flags alone leave loops 4 floats wide without FMA. x86-64 Linux builds
// only (target_clones of "arch=" levels needs g++ 12 and glibc's ifunc, not musl); elsewhere the
// portable loop as compiled. The clones use FMA where the CPU has it, so their float results may differ
// in the last bit from the baseline's (and between CPUs); each clone is deterministic.
// Macros only: define the cloned functions in an anonymous namespace of one .cpp (or of a header that
// one .cpp includes), so their ifunc symbols stay local to the library.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__) && \
    __GNUC__ >= 12
#define FFT_TENSOR_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FFT_TENSOR_CPU_LANES 1
#else
#define FFT_TENSOR_CPU_CLONES
#define FFT_TENSOR_CPU_LANES 0
#endif
// Loops inlined into a clone are compiled for that clone's instruction set.
#if defined(__GNUC__)
#define FFT_TENSOR_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define FFT_TENSOR_ALWAYS_INLINE inline
#endif
