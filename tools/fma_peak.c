/* fma_peak - the peak fused multiply-add rate of this CPU, per kernel set's widest vectors

   Each thread runs chains of independent FMAs on registers (no memory traffic): 12 accumulators, so
   the FMA latency (4-5 cycles) is covered twice over on a CPU with two FMA pipes. It reports FLOP/s
   (2 per lane per FMA) for AVX-512 (16 floats), AVX2 (8 floats) and, for the integer kernels, the
   int8 multiply-accumulate rate of VPDPBUSD (4 MACs per 32-bit lane) where the CPU has AVX-512 VNNI.
   The number is what the roofline of `build/bench` and bench/ reports are measured against.

   Build: make build/fma_peak        Run: build/fma_peak [threads (2)] [seconds per test (1)]
*/
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_X86 1
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct job { int kind; long iters; double sink; } job;
enum { ITER = 1000 };   // inner loop: 12 FMAs per accumulator step, ITER steps per outer iteration

#ifdef HAVE_X86
// 12 accumulators in named variables (an array would live in memory); the empty asm keeps the compiler
// from folding the loop, at no cost.
#define CHAINS(T, FMA, REG) \
    for (long it = 0; it < n; it++) \
        for (int s = 0; s < ITER; s++) { \
            a0 = FMA(a0); a1 = FMA(a1); a2 = FMA(a2); a3 = FMA(a3); a4 = FMA(a4); a5 = FMA(a5); \
            a6 = FMA(a6); a7 = FMA(a7); a8 = FMA(a8); a9 = FMA(a9); a10 = FMA(a10); a11 = FMA(a11); \
            __asm__("" : "+" REG(a0), "+" REG(a1), "+" REG(a2), "+" REG(a3), "+" REG(a4), "+" REG(a5)); \
            __asm__("" : "+" REG(a6), "+" REG(a7), "+" REG(a8), "+" REG(a9), "+" REG(a10), "+" REG(a11)); \
        }

__attribute__((target("avx512f"))) static double run_avx512(long n) {
    __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2), a3 = _mm512_set1_ps(3);
    __m512 a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5), a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7);
    __m512 a8 = _mm512_set1_ps(8), a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11);
#define FMA(x) _mm512_fmadd_ps(x, b, c)
#define REG(x) "v"(x)
    CHAINS(__m512, FMA, REG)
#undef FMA
    __m512 t = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)), _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    t = _mm512_add_ps(t, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return (double)_mm512_reduce_add_ps(t);
}
__attribute__((target("avx2,fma"))) static double run_avx2(long n) {
    __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3);
    __m256 a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7);
    __m256 a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9), a10 = _mm256_set1_ps(10), a11 = _mm256_set1_ps(11);
#define FMA(x) _mm256_fmadd_ps(x, b, c)
    CHAINS(__m256, FMA, REG)
#undef FMA
    __m256 t = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)), _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    t = _mm256_add_ps(t, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float f[8];
    _mm256_storeu_ps(f, t);
    return (double)f[0];
}
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static double run_vnni(long n) {
    __m512i b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(-5);
    __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2), a3 = _mm512_set1_epi32(3);
    __m512i a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5), a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7);
    __m512i a8 = _mm512_set1_epi32(8), a9 = _mm512_set1_epi32(9), a10 = _mm512_set1_epi32(10), a11 = _mm512_set1_epi32(11);
#define FMA(x) _mm512_dpbusd_epi32(x, b, c)
    CHAINS(__m512i, FMA, REG)
#undef FMA
#undef REG
    __m512i t = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)), _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    t = _mm512_add_epi32(t, _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)));
    return (double)_mm512_reduce_add_epi32(t);
}
#endif

static void* worker(void* arg) {
    job* j = (job*)arg;
#ifdef HAVE_X86
    if (j->kind == 0) j->sink = run_avx512(j->iters);
    else if (j->kind == 1) j->sink = run_avx2(j->iters);
    else j->sink = run_vnni(j->iters);
#endif
    return NULL;
}

// The core clock, from a chain of dependent 1-cycle integer additions.
static double clock_ghz(void) {
    long n = 200000000;
    unsigned long x = 0;
    double t = now();
    for (long i = 0; i < n; i++) __asm__ volatile("add $1, %0" : "+r"(x));
    t = now() - t;
    return (double)n / t * 1e-9;
}

// Runs `threads` workers of `iters` outer iterations; returns seconds.
static double run(int kind, int threads, long iters) {
    pthread_t th[64];
    job jobs[64];
    double t0 = now();
    for (int i = 0; i < threads; i++) {
        jobs[i].kind = kind;
        jobs[i].iters = iters;
        pthread_create(&th[i], NULL, worker, &jobs[i]);
    }
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    return now() - t0;
}

int main(int argc, char** argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    double secs = argc > 2 ? atof(argv[2]) : 1.0;
    if (threads < 1 || threads > 64) threads = 2;
#ifdef HAVE_X86
    __builtin_cpu_init();
    static const char* names[3] = { "avx512 fp32 FMA (16 lanes)", "avx2 fp32 FMA (8 lanes)", "avx512 VNNI int8 (vpdpbusd)" };
    static const int lanes[3] = { 16, 8, 64 };
    int ok[3] = { __builtin_cpu_supports("avx512f"), __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
                  __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") };
    double ghz = clock_ghz();
    printf("threads %d, clock about %.2f GHz (one thread, dependent integer adds)\n", threads, ghz);
    for (int k = 0; k < 3; k++) {
        if (!ok[k]) { printf("%-30s  not supported\n", names[k]); continue; }
        long iters = 1000;
        double t = run(k, threads, iters);
        while (t < 0.05) { iters *= 4; t = run(k, threads, iters); }
        iters = (long)((double)iters * secs / t) + 1;
        t = run(k, threads, iters);
        double ops = 2.0 * lanes[k] * 12.0 * ITER * (double)iters * threads;   // FLOP (or int8 OP: 2 per MAC)
        printf("%-30s  %8.1f G%s/s total  %7.1f per thread  %5.1f per cycle per thread\n", names[k], ops / t * 1e-9,
               k == 2 ? "OP" : "FLOP", ops / t * 1e-9 / threads, ops / t / threads / ghz * 1e-9);
    }
#else
    (void)secs;
    printf("fma_peak: x86-64 only\n");
#endif
    return 0;
}
