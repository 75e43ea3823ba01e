/* bench - llmwall's benchmark: the machine's peaks, prefill and decode, serving workloads, the batching curve

       build/bench -m MODEL [-t THREADS] [--mode pp-tg|serve|sweep] [options]

   Every run first measures the machine with the threads the model will use (-t, default every online
   core), and prints it:
     - memory bandwidth: a read of a 256 MiB array split between the threads as the forward pass splits a
       weight matrix (the access pattern of decoding), and a copy; best of 5. --peak-gbs (or --bandwidth)
       gives it instead.
     - peak FLOP/s: chains of independent fused multiply-adds on registers, 12 per thread, with the widest
       vectors this CPU has (AVX-512 and AVX2+FMA are both timed; the better one is the peak), plus the
       int8 rate of AVX-512 VNNI (vpdpbusd) for reference; best of 5. --peak-gflops gives it instead.
     - whether the threads had the cores: each measurement also takes the threads' CPU time; when a thread
       ran less than 90% of the wall time (other processes on the same cores), a warning says so, with
       the FMA rate while the threads ran.
     - the ridge point: peak FLOP/s / bandwidth, in FLOP per byte. A step whose arithmetic intensity
       (FLOPs / bytes moved) is below it is memory-bound, above it compute-bound; the roofline says it
       can reach at most min(peak FLOP/s, intensity x bandwidth).
   Bytes and FLOPs of every forward pass come from the library (lw_forward_stats, lw_step_stats,
   lw_engine_stats): weight bytes streamed (once per pass), KV bytes read and written, and FLOPs with a
   multiply-add counted as 2.

   --mode pp-tg (the default): llama-bench's ppN and tgN.
       -p N     prefill: one forward pass over N prompt rows: tokens/s and FLOP/s (default 128)
       -n N     decode: N passes of one row from position 0: tokens/s and GB/s (default 64)
       -r N     repetitions after a warm-up; mean ± standard deviation (default 3)

   --mode sweep: the batching curve. For each batch size b, b sequences each holding P positions decode
   together: after one untimed step, n steps of b rows (one per sequence) are timed, r times (the sequences
   are cut back to P positions between repetitions). Sequences are prefilled once, with distinct random
   tokens, directly on an lw_ctx (no scheduler, no sampling: the forward pass alone).
       --batches 1,2,4,8,16,32,64   batch sizes (default)
       -p P     positions each sequence holds when decoding starts (default 64); the KV bytes each row
                reads grow with P, and at large batch they can outweigh the weights
       -n N     timed decode steps per repetition (default 16)
       -r N     repetitions; mean ± standard deviation (default 3)
     Prints per batch: aggregate tokens/s, step time, weight and KV megabytes and GFLOPs per step,
     arithmetic intensity, achieved GB/s and GFLOP/s and their fractions of the peaks, the roofline's
     attainable GFLOP/s and the fraction of it reached, and whether the step is memory- or compute-bound;
     then the batch at which the curve crosses the ridge point, the batches whose step reaches half the
     peak FLOP/s, and each batch's speed-up over the first.

   --mode serve: a workload through lw_engine (continuous batching), on the real clock.
       --rate R[,R...]      open loop: requests arrive as a Poisson process of R requests/s; the driver
                            submits each when its arrival time has come, stepping the engine in between
                            (sleeping while it is idle). Several rates: one run each, same workload.
       --clients C[,C...]   closed loop: C requests outstanding; each that finishes is replaced at once
       --requests N         requests per run (default 64; with --trace, its lines unless fewer are asked)
       --prompt-len D       prompt length distribution (default 64)
       --gen-len D          generated tokens per request (max_tokens; default 64)
                            D is a number, uniform:A:B (integers A..B), or normal:MEAN:SD (rounded, >= 1)
       --trace FILE         requests from a file instead: lines "arrival_s prompt_len gen_len" ('#' starts
                            a comment); arrival times are used as they are (seconds from the start)
                            unless --clients is given
       --ttft-slo MS        each request's time-to-first-token target (goodput)
       --tpot-slo MS        each request's time-per-output-token target (goodput)
       --temp T             sampling temperature (default 0, greedy); each request seeded by its index
       --max-running N      engine: sequences in flight (default 64)
       --budget N           engine: rows per step (default 512)
       --kv-tokens N        engine: KV pool in positions (default: room for max-running of the
                            workload's longest requests, at least the engine's 4 x context)
       -c N                 engine: context length (default: the model's training context)
       --prefill-first      engine: prompt chunks before decode rows
       --prompt TEXT        every request's prompt is TEXT (tokenized with BOS as the model says)
                            instead of random ids
       --decode M           the requests' decoding mode: ar (default), diffusion (masked diffusion:
                            --gen-length, --steps, --block-length, --threshold as lw_diffusion_params)
                            or block (block diffusion: --threshold or --tokens-per-step)
     Prompts are random token ids (seeded, no BOS). Arrivals are backdated: a request that arrives while
     a step runs is submitted when the step ends, but its times (TTFT, end-to-end, the SLO) count from its
     arrival (lw_request_desc.arrival_time). In the closed
     loop a request arrives when the one it replaces finishes.
     Prints two tables, one row per load: latency (finished requests, throughput in generated tokens/s,
     requests/s, goodput in requests/s meeting both targets, the share that met them, TTFT p50/p90/p99,
     TPOT p50/p99) and hardware (steps, mean rows and decode rows per step, KV occupancy mean (weighted by
     step time) and peak, preemptions, achieved GB/s and GFLOP/s during forward passes and their
     fractions of the peaks, arithmetic intensity, and "busy": the share of the elapsed time spent in
     forward passes). Percentiles interpolate linearly between ranks; TPOT counts requests with two
     tokens or more. Requests ignore end-of-generation tokens (lw_request_desc.ignore_eog), so each
     generates exactly its gen-len; the "stop" column should stay 0.

   With --backend cuda (build/cuda/bench, from make cuda) the machine is the GPU: its bandwidth is a
   device-to-device copy (bytes read + written per second) and its peak a large F16 cuBLAS GEMM with F32
   accumulation, both measured by llmwall_cuda.cu (lw__cuda_measure_peaks); best of several runs.

   Common options:
       -m FILE              the model (random-weight models of real shapes come from build/mkmodel)
       --backend cpu|cuda   where the forward passes run (default cpu)
       -t N                 threads (default: every online core)
       --kernels SET        CPU kernel set: auto, portable, avx2, avx512
       --kv-type f32|f16    KV cache entries (default f32)
       --peak-gbs X         memory bandwidth in GB/s instead of measuring it (--bandwidth X: the same)
       --peak-gflops X      peak FLOP/s in GFLOP/s instead of measuring it
       --seed S             workload and token seed (default 1)
       --json FILE          also write every number as JSON: the machine and its peaks, the model, the
                            threads, the kernel set, the date, the command line, the results (serve: one
                            record per request too)

   Output: Markdown tables on stdout; errors as one line on stderr and exit status 1.

   Examples:
       build/bench -m /tmp/llmwall-bench/llama110m-f16.gguf -t 2
       build/bench -m /tmp/llmwall-bench/llama110m-q8_0.gguf -t 2 --mode sweep --json sweep.json
       build/bench -m models/tiny-shakespeare.gguf --mode serve --rate 5,10,20 --requests 100 \
                   --prompt-len uniform:8:64 --gen-len normal:48:16 --ttft-slo 200 --tpot-slo 50
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdarg.h>
#include <time.h>
#include <unistd.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define BENCH_X86 1
#endif

enum { MODE_PPTG, MODE_SERVE, MODE_SWEEP };
enum { MAX_LOADS = 32, MAX_BATCHES = 32, MAX_REPS = 64 };

typedef struct dist { int kind; double a, b; } dist;   // kind 0: the number a; 1: uniform a..b; 2: normal(a, b)

typedef struct bench_opts {
    const char* model;
    const char* json;
    const char* kernels;
    const char* trace;
    int         mode, threads, reps, n_prompt, n_gen;   // n_prompt, n_gen: -p, -n (0: the mode's default)
    bool        cuda;                                   // --backend cuda
    lw_type     kv_type;
    double      peak_gbs, peak_gflops;   // given (0: measure)
    uint64_t    seed;
    // sweep
    int         batches[MAX_BATCHES], n_batches;
    // serve
    double      rates[MAX_LOADS];
    int         n_rates, clients[MAX_LOADS], n_clients, n_requests;
    dist        prompt_len, gen_len;
    double      ttft_slo, tpot_slo, temp;
    int         max_running, budget, n_ctx, prefill_first;
    int64_t     kv_tokens;
    const char* prompt_text;             // --prompt: every request's prompt (else random ids)
    lw_decode_mode decode;               // --decode: the requests' decoding mode
    lw_diffusion_params diffusion;       // its parameters
} bench_opts;

__attribute__((format(printf, 1, 2))) static void die(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}
static void fail(const char* what) { fprintf(stderr, "bench: %s: %s\n", what, lw_last_error()); exit(1); }

static double mean(const double* x, int n) { double s = 0; for (int i = 0; i < n; i++) s += x[i]; return n ? s / n : 0.0; }
static double stdev(const double* x, int n) {
    double m = mean(x, n), s = 0;
    for (int i = 0; i < n; i++) s += (x[i] - m) * (x[i] - m);
    return n > 1 ? sqrt(s / (n - 1)) : 0.0;
}
static int cmp_int(const void* a, const void* b) { int x = *(const int*)a, y = *(const int*)b; return (x > y) - (x < y); }
static int cmp_double(const void* a, const void* b) { double x = *(const double*)a, y = *(const double*)b; return (x > y) - (x < y); }
// p-th percentile of sorted x[n], interpolating linearly between ranks (numpy's default); NAN when empty
static double percentile(const double* x, int n, double p) {
    if (n <= 0) return NAN;
    double r = p / 100.0 * (n - 1);
    int i = (int)r;
    return i + 1 < n ? x[i] + (r - i) * (x[i + 1] - x[i]) : x[n - 1];
}

// ---- random numbers: splitmix64

static uint64_t rng_next(uint64_t* s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rng_uniform(uint64_t* s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }   // [0, 1)
static int32_t rng_token(uint64_t* s, int n_vocab) { return (int32_t)(rng_next(s) % (uint64_t)n_vocab); }

static int dist_sample(const dist* d, uint64_t* s) {
    double x = d->a;
    if (d->kind == 1) x = d->a + floor(rng_uniform(s) * (d->b - d->a + 1));
    if (d->kind == 2) {   // Box-Muller
        double u = 1.0 - rng_uniform(s), v = rng_uniform(s);
        x = floor(d->a + d->b * sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v) + 0.5);
    }
    return x < 1 ? 1 : x > 1e9 ? 1000000000 : (int)x;
}

static dist dist_parse(const char* s) {
    dist d = { 0, 0, 0 };
    char* end;
    if (!strncmp(s, "uniform:", 8)) {
        d.kind = 1;
        d.a = strtod(s + 8, &end);
        if (*end != ':') die("bad distribution '%s' (uniform:A:B)", s);
        d.b = strtod(end + 1, &end);
        if (*end || d.a < 1 || d.b < d.a) die("bad distribution '%s' (uniform:A:B with 1 <= A <= B)", s);
    } else if (!strncmp(s, "normal:", 7)) {
        d.kind = 2;
        d.a = strtod(s + 7, &end);
        if (*end != ':') die("bad distribution '%s' (normal:MEAN:SD)", s);
        d.b = strtod(end + 1, &end);
        if (*end || d.a < 1 || d.b < 0) die("bad distribution '%s' (normal:MEAN:SD with MEAN >= 1, SD >= 0)", s);
    } else {
        d.a = strtod(s, &end);
        if (*end || d.a < 1 || d.a != floor(d.a)) die("bad length '%s' (N, uniform:A:B or normal:MEAN:SD)", s);
    }
    return d;
}
static void dist_print(char* buf, size_t n, const dist* d) {
    if (d->kind == 0) snprintf(buf, n, "%.0f", d->a);
    else snprintf(buf, n, "%s:%g:%g", d->kind == 1 ? "uniform" : "normal", d->a, d->b);
}

// ---- a small JSON writer

typedef struct jw { FILE* f; int depth; int n[32]; } jw;   // n: items written at each depth

static void jw_sep(jw* w, const char* key) {
    if (w->depth > 0 && w->n[w->depth]++) fputc(',', w->f);
    if (key) fprintf(w->f, "\"%s\":", key);
}
static void jw_strval(jw* w, const char* s) {
    fputc('"', w->f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(w->f, "\\%c", c);
        else if (c < 0x20) fprintf(w->f, "\\u%04x", c);
        else fputc(c, w->f);
    }
    fputc('"', w->f);
}
static void jw_open(jw* w, const char* key, char c) { jw_sep(w, key); fputc(c, w->f); w->n[++w->depth] = 0; }
static void jw_close(jw* w, char c) { fputc(c, w->f); w->depth--; }
static void jw_num(jw* w, const char* key, double x) {
    jw_sep(w, key);
    if (isfinite(x)) fprintf(w->f, "%.6g", x); else fputs("null", w->f);
}
static void jw_int(jw* w, const char* key, int64_t x) { jw_sep(w, key); fprintf(w->f, "%lld", (long long)x); }
static void jw_str(jw* w, const char* key, const char* s) { jw_sep(w, key); jw_strval(w, s); }
static void jw_bool(jw* w, const char* key, bool b) { jw_sep(w, key); fputs(b ? "true" : "false", w->f); }

// ---- the machine: a pool run that also measures how much of the wall time each thread actually ran
// (its CPU time): on a machine shared with other work the threads are descheduled and every figure is
// low; the share says so.

typedef struct timed_job { lw__task_fn fn; void* arg; double cpu[64]; } timed_job;

static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
static void timed_task(void* arg, int ith, int nth) {
    timed_job* j = (timed_job*)arg;
    double c = thread_cpu_s();
    j->fn(j->arg, ith, nth);
    j->cpu[ith % 64] = thread_cpu_s() - c;
}
// Runs fn on every thread; returns the wall time, and in *share the smallest CPU time / wall time.
static double timed_run(lw__pool* pool, lw__task_fn fn, void* arg, double* share) {
    timed_job j;
    memset(&j, 0, sizeof j);
    j.fn = fn;
    j.arg = arg;
    double t = lw__now();
    lw__pool_run(pool, timed_task, &j);
    t = lw__now() - t;
    double least = 1.0;
    for (int i = 0; i < LW__MIN(pool->n_threads, 64); i++) least = fmin(least, j.cpu[i] / t);
    *share = least;
    return t;
}

// ---- the machine: memory bandwidth (threads split the array like the forward pass splits a weight matrix)

typedef struct bw_job { const float* src; float* dst; size_t n; double sums[64]; } bw_job;

static void bw_read(void* arg, int ith, int nth) {
    bw_job* j = (bw_job*)arg;
    int64_t a, b;
    lw__split((int64_t)j->n / 16, ith, nth, &a, &b);
    float acc[16] = {0};
    for (int64_t i = a * 16; i < b * 16; i += 16)
        for (int l = 0; l < 16; l++) acc[l] += j->src[i + l];
    j->sums[ith % 64] = lw__sum16(acc);
}

static void bw_copy(void* arg, int ith, int nth) {
    bw_job* j = (bw_job*)arg;
    int64_t a, b;
    lw__split((int64_t)j->n, ith, nth, &a, &b);
    memcpy(j->dst + a, j->src + a, (size_t)(b - a) * sizeof(float));
}

static void measure_bandwidth(lw__pool* pool, double* read_gbs, double* copy_gbs, double* share) {
    size_t n = (size_t)256 << 20 >> 2;   // 256 MiB of floats
    bw_job j;
    memset(&j, 0, sizeof j);
    j.n = n;
    float* src = (float*)lw__alloc(NULL, n * sizeof(float));
    float* dst = (float*)lw__alloc(NULL, n * sizeof(float));
    if (!src || !dst) die("out of memory for the bandwidth test");
    for (size_t i = 0; i < n; i++) { src[i] = (float)(i & 1023); dst[i] = 0.0f; }
    j.src = src;
    j.dst = dst;
    double best_read = 0, best_copy = 0;
    *share = 0;
    for (int rep = 0; rep < 5; rep++) {
        double sh, t = timed_run(pool, bw_read, &j, &sh);
        if ((double)n * 4 / t / 1e9 > best_read) { best_read = (double)n * 4 / t / 1e9; *share = sh; }
        t = lw__now();
        lw__pool_run(pool, bw_copy, &j);
        t = lw__now() - t;
        best_copy = fmax(best_copy, (double)n * 8 / t / 1e9);   // read + write
    }
    lw__free(NULL, src);
    lw__free(NULL, dst);
    *read_gbs = best_read;
    *copy_gbs = best_copy;
}

// ---- the machine: peak FLOP/s from independent FMAs on registers
// 12 accumulators per thread cover the FMA latency (4-5 cycles) twice over on a core with two FMA pipes.
// They are named variables (an array would live in memory); the empty asm keeps the compiler from
// folding the loop, at no cost. One call does 12 x FMA_STEPS x n vector FMAs.

enum { FMA_STEPS = 250, FMA_AVX512 = 0, FMA_AVX2 = 1, FMA_VNNI = 2, FMA_PORTABLE = 3, FMA_KINDS = 4 };
static const int fma_lanes[FMA_KINDS] = { 16, 8, 64, 8 };   // MACs per instruction (VNNI: 16 lanes x 4 int8)
static const char* const fma_names[FMA_KINDS] = { "avx512", "avx2", "avx512-vnni int8", "portable" };

#define FMA_CHAINS(FMA, ASM)                                                                               \
    for (long it = 0; it < n; it++)                                                                        \
        for (int s = 0; s < FMA_STEPS; s++) {                                                              \
            a0 = FMA(a0); a1 = FMA(a1); a2 = FMA(a2); a3 = FMA(a3); a4 = FMA(a4); a5 = FMA(a5);            \
            a6 = FMA(a6); a7 = FMA(a7); a8 = FMA(a8); a9 = FMA(a9); a10 = FMA(a10); a11 = FMA(a11);        \
            ASM                                                                                            \
        }
#define FMA_ASM_V                                                                                          \
    __asm__("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));                              \
    __asm__("" : "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));

#ifdef BENCH_X86
__attribute__((target("avx512f"))) static double fma_avx512(long n) {
    __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2), a3 = _mm512_set1_ps(3);
    __m512 a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5), a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7);
    __m512 a8 = _mm512_set1_ps(8), a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11);
#define FMA(x) _mm512_fmadd_ps(x, b, c)
    FMA_CHAINS(FMA, FMA_ASM_V)
#undef FMA
    __m512 t = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)), _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    t = _mm512_add_ps(t, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return (double)_mm512_reduce_add_ps(t);
}
__attribute__((target("avx2,fma"))) static double fma_avx2(long n) {
    __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3);
    __m256 a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7);
    __m256 a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9), a10 = _mm256_set1_ps(10), a11 = _mm256_set1_ps(11);
#define FMA(x) _mm256_fmadd_ps(x, b, c)
    FMA_CHAINS(FMA, FMA_ASM_V)
#undef FMA
    __m256 t = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)), _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    t = _mm256_add_ps(t, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float f[8];
    _mm256_storeu_ps(f, t);
    return (double)f[0];
}
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static double fma_vnni(long n) {
    __m512i b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(-5);
    __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2), a3 = _mm512_set1_epi32(3);
    __m512i a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5), a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7);
    __m512i a8 = _mm512_set1_epi32(8), a9 = _mm512_set1_epi32(9), a10 = _mm512_set1_epi32(10), a11 = _mm512_set1_epi32(11);
#define FMA(x) _mm512_dpbusd_epi32(x, b, c)
    FMA_CHAINS(FMA, FMA_ASM_V)
#undef FMA
    __m512i t = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)), _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    t = _mm512_add_epi32(t, _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)));
    return (double)_mm512_reduce_add_epi32(t);
}
#endif

// Elsewhere: 8-float vectors in the compiler's vector extension (a multiply and an add where it does not fuse).
typedef float bench_v8 __attribute__((vector_size(32)));
static double fma_portable(long n) {
    bench_v8 b = { 0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f };
    bench_v8 c = { 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f };
    bench_v8 a0 = b * 0, a1 = b * 1, a2 = b * 2, a3 = b * 3, a4 = b * 4, a5 = b * 5, a6 = b * 6, a7 = b * 7;
    bench_v8 a8 = b * 8, a9 = b * 9, a10 = b * 10, a11 = b * 11;
#define FMA(x) ((x) * b + c)
    FMA_CHAINS(FMA, )
#undef FMA
    bench_v8 t = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
    return (double)t[0];
}

static bool fma_supported(int kind) {
#ifdef BENCH_X86
    __builtin_cpu_init();
    if (kind == FMA_AVX512) return __builtin_cpu_supports("avx512f");
    if (kind == FMA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (kind == FMA_VNNI) return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
    return !__builtin_cpu_supports("avx2");   // portable only where neither AVX2 nor AVX-512 runs
#else
    return kind == FMA_PORTABLE;
#endif
}

typedef struct fma_job { int kind; long iters; double sink[64]; } fma_job;

static void fma_task(void* arg, int ith, int nth) {
    fma_job* j = (fma_job*)arg;
    (void)nth;
    double s = 0;
#ifdef BENCH_X86
    if (j->kind == FMA_AVX512) s = fma_avx512(j->iters);
    if (j->kind == FMA_AVX2) s = fma_avx2(j->iters);
    if (j->kind == FMA_VNNI) s = fma_vnni(j->iters);
#endif
    if (j->kind == FMA_PORTABLE) s = fma_portable(j->iters);
    j->sink[ith % 64] = s;
}

// FLOP/s (int8: OP/s) of one kind on every thread of the pool: best of 5 runs of about 0.05 s each.
// *share: the CPU share of the best run; *running: the rate while the threads ran (ops / CPU time).
static double measure_fma(lw__pool* pool, int kind, double* share, double* running) {
    fma_job j;
    memset(&j, 0, sizeof j);
    j.kind = kind;
    j.iters = 16;
    double t = 0;
    for (;;) {   // grow the run to 20 ms, then aim at 100 ms
        t = lw__now();
        lw__pool_run(pool, fma_task, &j);
        t = lw__now() - t;
        if (t > 0.02) break;
        j.iters *= 4;
    }
    j.iters = (long)((double)j.iters * 0.05 / t) + 1;
    double best = 0, ops = 2.0 * fma_lanes[kind] * 12.0 * FMA_STEPS * (double)j.iters * pool->n_threads;
    *share = 0;
    *running = 0;
    for (int rep = 0; rep < 5; rep++) {
        double sh;
        t = timed_run(pool, fma_task, &j, &sh);
        if (ops / t > best) { best = ops / t; *share = sh; }
        *running = fmax(*running, ops / (t * fmax(sh, 1e-3)));
    }
    return best;
}

typedef struct machine {
    int    threads, cores;
    char   cpu[128];
    double read_gbs, copy_gbs;       // bandwidth (read: the peak used), GB/s
    double fma_gflops[FMA_KINDS];    // measured per kind (0: not supported or not measured)
    double peak_gflops;              // the fp32 peak used
    bool   gbs_given, gflops_given;
    double ridge;                    // FLOP per byte
    double share;                    // the least CPU share of a thread in the best measurements (1: had the cores)
    double running_gflops;           // the fp32 peak while the threads ran (FLOPs / CPU time)
    bool   gpu;                      // the CUDA device: copy bandwidth and F16 GEMM peak
} machine;

static void measure_machine(lw__pool* pool, const bench_opts* o, machine* m) {
    memset(m, 0, sizeof *m);
    m->threads = pool->n_threads;
    m->cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    FILE* f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10)) continue;
        const char* v = strchr(line, ':');
        if (v) {
            snprintf(m->cpu, sizeof m->cpu, "%s", v + 2);
            m->cpu[strcspn(m->cpu, "\n")] = 0;
        }
        break;
    }
    if (f) fclose(f);
    m->share = 1.0;
    if (o->peak_gbs > 0) { m->read_gbs = o->peak_gbs; m->gbs_given = true; }
    else measure_bandwidth(pool, &m->read_gbs, &m->copy_gbs, &m->share);
    if (o->peak_gflops > 0) { m->peak_gflops = o->peak_gflops; m->gflops_given = true; }
    else {
        for (int k = 0; k < FMA_KINDS; k++) {
            if (!fma_supported(k)) continue;
            double share, running;
            m->fma_gflops[k] = measure_fma(pool, k, &share, &running) / 1e9;
            if (k == FMA_VNNI) continue;
            if (m->fma_gflops[k] > m->peak_gflops) { m->peak_gflops = m->fma_gflops[k]; m->running_gflops = running / 1e9; }
            m->share = fmin(m->share, share);
        }
    }
    m->ridge = m->peak_gflops / m->read_gbs;
}

#ifdef LW_CUDA
static void measure_gpu(const bench_opts* o, machine* m) {
    memset(m, 0, sizeof *m);
    m->gpu = true;
    m->threads = 1;
    m->cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    m->share = 1.0;
    char err[512] = "";
    double gbs, tflops;
    if (lw__cuda_measure_peaks(0, &gbs, &tflops, m->cpu, sizeof m->cpu, err, sizeof err) != LW_OK) die("measuring the GPU: %s", err);
    m->read_gbs = m->copy_gbs = gbs;
    m->peak_gflops = tflops * 1e3;
    if (o->peak_gbs > 0) { m->read_gbs = o->peak_gbs; m->gbs_given = true; }
    if (o->peak_gflops > 0) { m->peak_gflops = o->peak_gflops; m->gflops_given = true; }
    m->ridge = m->peak_gflops / m->read_gbs;
}
#endif

static void print_machine(const machine* m) {
    if (m->gpu) {
        printf("machine    %s\nbandwidth  %.1f GB/s%s\npeak       %.1f GFLOP/s%s\nridge      %.2f FLOP/byte (peak FLOP/s / bandwidth)\n", m->cpu,
               m->read_gbs, m->gbs_given ? " (given)" : " device-to-device copy (read + written)", m->peak_gflops,
               m->gflops_given ? " (given)" : " F16 GEMM with F32 accumulation (cuBLAS)", m->ridge);
        return;
    }
    printf("machine    %s, %d threads (%d cores online)\n", m->cpu[0] ? m->cpu : "?", m->threads, m->cores);
    printf("bandwidth  %.1f GB/s%s", m->read_gbs, m->gbs_given ? " (given)" : " memory read");
    if (m->copy_gbs > 0) printf(", copy %.1f GB/s", m->copy_gbs);
    printf("\npeak       %.1f GFLOP/s fp32%s", m->peak_gflops, m->gflops_given ? " (given)" : " (FMA");
    if (!m->gflops_given) {
        for (int k = 0; k < FMA_KINDS; k++)
            if (m->fma_gflops[k] > 0 && k != FMA_VNNI) printf(" %s %.1f", fma_names[k], m->fma_gflops[k]);
        printf(")");
        if (m->fma_gflops[FMA_VNNI] > 0) printf("; int8 %.1f GOP/s (vpdpbusd)", m->fma_gflops[FMA_VNNI]);
    }
    printf("\nridge      %.2f FLOP/byte (peak FLOP/s / bandwidth)\n", m->ridge);
    if (m->share < 0.9)
        printf("warning    a thread ran only %.0f%% of the time while the peaks were measured: other work is using these cores, so\n"
               "           the peaks (%.1f GFLOP/s while running) and every figure below are low\n", 100.0 * m->share, m->running_gflops);
}

static void json_machine(jw* w, const machine* m) {
    jw_open(w, "machine", '{');
    jw_str(w, "cpu", m->cpu);
    jw_bool(w, "gpu", m->gpu);
    jw_int(w, "threads", m->threads);
    jw_int(w, "cores_online", m->cores);
    jw_num(w, "read_gbs", m->read_gbs);
    jw_num(w, "copy_gbs", m->copy_gbs);
    jw_bool(w, "bandwidth_given", m->gbs_given);
    jw_num(w, "peak_gflops", m->peak_gflops);
    jw_bool(w, "peak_given", m->gflops_given);
    jw_num(w, "fma_avx512_gflops", m->fma_gflops[FMA_AVX512]);
    jw_num(w, "fma_avx2_gflops", m->fma_gflops[FMA_AVX2]);
    jw_num(w, "fma_portable_gflops", m->fma_gflops[FMA_PORTABLE]);
    jw_num(w, "int8_vnni_gops", m->fma_gflops[FMA_VNNI]);
    jw_num(w, "ridge_flop_per_byte", m->ridge);
    jw_num(w, "cpu_share", m->share);
    jw_num(w, "peak_gflops_while_running", m->running_gflops);
    jw_close(w, '}');
}

// ---- the run's context: model, backend, what every mode prints first and writes into its JSON

typedef struct bench {
    bench_opts     o;
    lw_model*      model;
    lw_backend*    be;
    lw_model_info  info;
    int32_t*       prompt_ids;     // --prompt tokenized (with BOS as the model says), or NULL
    int            n_prompt_ids;
    machine        mach;
    int            argc;
    char**         argv;
    jw             json;
} bench;

static lw_ctx* make_ctx(bench* B, int n_ctx, int max_rows, int max_seqs, int64_t kv_tokens) {
    lw_ctx_desc cd;
    memset(&cd, 0, sizeof cd);
    cd.n_ctx = n_ctx;
    cd.max_rows = max_rows;
    cd.max_seqs = max_seqs;
    cd.kv_page_size = 16;
    cd.kv_tokens = kv_tokens;
    cd.kv_type = B->o.kv_type;
    lw_ctx* ctx = NULL;
    if (lw_ctx_create(&ctx, B->model, B->be, &cd) != LW_OK) fail("context");
    return ctx;
}

static void json_begin(bench* B, const char* mode) {
    if (!B->o.json) return;
    jw* w = &B->json;
    memset(w, 0, sizeof *w);
    w->f = fopen(B->o.json, "w");
    if (!w->f) die("cannot write %s", B->o.json);
    char date[32], cmd[4096] = "";
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    for (int i = 0; i < B->argc; i++) {
        if (i) strncat(cmd, " ", sizeof cmd - strlen(cmd) - 1);
        strncat(cmd, B->argv[i], sizeof cmd - strlen(cmd) - 1);
    }
    jw_open(w, NULL, '{');
    jw_str(w, "tool", "bench");
    jw_str(w, "mode", mode);
    jw_str(w, "date", date);
    jw_str(w, "command", cmd);
    jw_open(w, "model", '{');
    jw_str(w, "path", B->o.model);
    jw_str(w, "arch", B->info.arch);
    jw_str(w, "type", lw_type_get_info(B->info.weight_type).name);
    jw_int(w, "weight_bytes", (int64_t)B->info.weight_bytes);
    jw_int(w, "n_params", (int64_t)B->info.n_params);
    jw_int(w, "n_layer", B->info.n_layer);
    jw_int(w, "n_embd", B->info.n_embd);
    jw_int(w, "n_vocab", B->info.n_vocab);
    jw_int(w, "n_ctx_train", B->info.n_ctx_train);
    jw_close(w, '}');
    jw_int(w, "threads", lw_backend_threads(B->be));
    jw_str(w, "kernels", lw_backend_kernels(B->be));
    jw_str(w, "backend", lw_backend_name(B->be));
    jw_str(w, "kv_type", lw_type_get_info(B->o.kv_type).name);
    jw_int(w, "seed", (int64_t)B->o.seed);
    json_machine(w, &B->mach);
}

static void json_end(bench* B) {
    if (!B->o.json) return;
    jw_close(&B->json, '}');
    fputc('\n', B->json.f);
    if (fclose(B->json.f) != 0) die("cannot write %s", B->o.json);
    printf("\njson       %s\n", B->o.json);
}

// ---- mode pp-tg: one prefill of n rows, or n single-row decode passes

typedef struct run_stats { double tok_s, gbs, gflops; } run_stats;

static void run_once(lw_ctx* ctx, int n_vocab, int prefill, int n, float* logits, run_stats* rs) {
    lw_seq s = { 0 };
    if (lw_seq_create(ctx, &s) != LW_OK) fail("sequence");
    lw_row* rows = (lw_row*)malloc((size_t)n * sizeof(lw_row));
    if (!rows) die("out of memory");
    double bytes = 0, flops = 0, t0 = lw__now();
    for (int i = 0; i < n; i++) {
        rows[i].token = (int32_t)((i * 7919 + 1) % n_vocab);
        rows[i].position = i;
        rows[i].seq = s;
        rows[i].commits = 1;
        rows[i].wants_logits = prefill ? i == n - 1 : 1;
    }
    int passes = prefill ? 1 : n;
    for (int p = 0; p < passes; p++) {
        lw_forward_stats st;
        lw_batch b;
        memset(&b, 0, sizeof b);
        b.rows = prefill ? rows : rows + p;
        b.n_rows = prefill ? n : 1;
        b.logits = logits;
        b.stats = &st;
        if (lw_ctx_forward(ctx, &b) != LW_OK) fail("forward");
        bytes += st.weight_bytes + st.kv_bytes_read + st.kv_bytes_written;
        flops += st.flops;
    }
    double t = lw__now() - t0;
    lw_seq_free(ctx, s);
    free(rows);
    rs->tok_s = n / t;
    rs->gbs = bytes / t / 1e9;
    rs->gflops = flops / t / 1e9;
}

static void mode_pptg(bench* B) {
    const bench_opts* o = &B->o;
    int n_prompt = o->n_prompt ? o->n_prompt : 128, n_gen = o->n_gen ? o->n_gen : 64, reps = LW__MIN(o->reps ? o->reps : 3, MAX_REPS);
    lw_ctx* ctx = make_ctx(B, LW__MAX(n_prompt, n_gen) + 1, n_prompt, 2, 0);
    float* logits = (float*)malloc((size_t)B->info.n_vocab * sizeof(float));
    if (!logits) die("out of memory");
    run_stats rs;
    double pp[MAX_REPS], tg[MAX_REPS], tg_gbs[MAX_REPS], pp_gf[MAX_REPS];
    run_once(ctx, B->info.n_vocab, 1, n_prompt, logits, &rs);   // warm-up: page in the weights
    run_once(ctx, B->info.n_vocab, 0, LW__MIN(n_gen, 8), logits, &rs);
    for (int r = 0; r < reps; r++) {
        run_once(ctx, B->info.n_vocab, 1, n_prompt, logits, &rs);
        pp[r] = rs.tok_s;
        pp_gf[r] = rs.gflops;
        run_once(ctx, B->info.n_vocab, 0, n_gen, logits, &rs);
        tg[r] = rs.tok_s;
        tg_gbs[r] = rs.gbs;
    }
    double bw = B->mach.read_gbs, pk = B->mach.peak_gflops;
    printf("\n| test   |         tokens/s |   GB/s | of bandwidth | GFLOP/s | of peak |\n");
    printf("|--------|-----------------:|-------:|-------------:|--------:|--------:|\n");
    printf("| pp%-4d | %8.1f ± %-5.0f |        |              | %7.1f | %6.1f%% |\n", n_prompt, mean(pp, reps), stdev(pp, reps),
           mean(pp_gf, reps), 100.0 * mean(pp_gf, reps) / pk);
    printf("| tg%-4d | %8.1f ± %-5.1f | %6.1f | %11.1f%% |         |         |\n", n_gen, mean(tg, reps), stdev(tg, reps),
           mean(tg_gbs, reps), 100.0 * mean(tg_gbs, reps) / bw);
    if (o->json) {
        jw* w = &B->json;
        jw_int(w, "reps", reps);
        jw_open(w, "pp", '{');
        jw_int(w, "n", n_prompt);
        jw_num(w, "tokens_per_s", mean(pp, reps));
        jw_num(w, "stdev", stdev(pp, reps));
        jw_num(w, "gflops", mean(pp_gf, reps));
        jw_num(w, "fraction_of_peak_flops", mean(pp_gf, reps) / pk);
        jw_close(w, '}');
        jw_open(w, "tg", '{');
        jw_int(w, "n", n_gen);
        jw_num(w, "tokens_per_s", mean(tg, reps));
        jw_num(w, "stdev", stdev(tg, reps));
        jw_num(w, "gbs", mean(tg_gbs, reps));
        jw_num(w, "fraction_of_bandwidth", mean(tg_gbs, reps) / bw);
        jw_close(w, '}');
    }
    free(logits);
    lw_ctx_free(ctx);
}

// ---- mode sweep: the batching curve

typedef struct sweep_point {
    int    batch;
    double tok_s, tok_s_sd, tok_s_best, step_s;
    double weight_bytes, kv_read, kv_written, flops;   // per step, mean over the timed steps
    double intensity, gbs, gflops, attainable;         // FLOP/B, achieved, roofline GFLOP/s
} sweep_point;

static void mode_sweep(bench* B) {
    const bench_opts* o = &B->o;
    int P = o->n_prompt ? o->n_prompt : 64, n = o->n_gen ? o->n_gen : 16, reps = LW__MIN(o->reps ? o->reps : 3, MAX_REPS);
    int n_vocab = B->info.n_vocab, bmax = 0;
    for (int i = 0; i < o->n_batches; i++) bmax = LW__MAX(bmax, o->batches[i]);
    int n_ctx = P + n, max_rows = LW__MAX(bmax, 512);
    lw_ctx* ctx = make_ctx(B, n_ctx, max_rows, bmax, (int64_t)bmax * ((n_ctx + 15) / 16 * 16));
    lw_seq* seqs = (lw_seq*)calloc((size_t)bmax, sizeof(lw_seq));
    lw_row* rows = (lw_row*)calloc((size_t)max_rows, sizeof(lw_row));
    float* logits = (float*)malloc((size_t)bmax * n_vocab * sizeof(float));
    if (!seqs || !rows || !logits) die("out of memory");
    uint64_t rng = o->seed;

    // prefill every sequence with its own random tokens, max_rows rows a pass (no logits needed)
    double t_prefill = lw__now();
    for (int s = 0; s < bmax; s++)
        if (lw_seq_create(ctx, &seqs[s]) != LW_OK) fail("sequence");
    int m = 0;
    for (int s = 0; s < bmax; s++)
        for (int p = 0; p < P; p++) {
            rows[m].token = rng_token(&rng, n_vocab);
            rows[m].position = p;
            rows[m].seq = seqs[s];
            rows[m].commits = 1;
            rows[m].wants_logits = 0;
            if (++m == max_rows || (s == bmax - 1 && p == P - 1)) {
                lw_batch b;
                memset(&b, 0, sizeof b);
                b.rows = rows;
                b.n_rows = m;
                if (lw_ctx_forward(ctx, &b) != LW_OK) fail("prefill");
                m = 0;
            }
        }
    t_prefill = lw__now() - t_prefill;
    printf("\nsweep: %d sequences of %d positions prefilled in %.1f s; then per batch 1 untimed + %d timed decode steps, %d reps\n\n",
           bmax, P, t_prefill, n, reps);

    sweep_point pts[MAX_BATCHES];
    memset(pts, 0, sizeof pts);
    double bw = B->mach.read_gbs, pk = B->mach.peak_gflops;
    printf("| batch |         tokens/s | step ms | weight MB | KV MB | GFLOP | FLOP/B |  GB/s | of bw | GFLOP/s | of peak | roof GFLOP/s | of roof | bound   |\n");
    printf("|------:|-----------------:|--------:|----------:|------:|------:|-------:|------:|------:|--------:|--------:|-------------:|--------:|---------|\n");
    for (int bi = 0; bi < o->n_batches; bi++) {
        int b = o->batches[bi];
        sweep_point* pt = &pts[bi];
        pt->batch = b;
        double tok_s[MAX_REPS];
        for (int rep = -1; rep < reps; rep++) {   // rep -1: one untimed step
            int steps = rep < 0 ? 1 : n;
            double t0 = lw__now();
            for (int st = 0; st < steps; st++) {
                for (int i = 0; i < b; i++) {
                    rows[i].token = rng_token(&rng, n_vocab);
                    rows[i].position = P + st;
                    rows[i].seq = seqs[i];
                    rows[i].commits = 1;
                    rows[i].wants_logits = 1;
                }
                lw_forward_stats fs;
                lw_batch bt;
                memset(&bt, 0, sizeof bt);
                bt.rows = rows;
                bt.n_rows = b;
                bt.logits = logits;
                bt.stats = &fs;
                if (lw_ctx_forward(ctx, &bt) != LW_OK) fail("decode");
                if (rep == 0) {
                    pt->weight_bytes += fs.weight_bytes / n;
                    pt->kv_read += fs.kv_bytes_read / n;
                    pt->kv_written += fs.kv_bytes_written / n;
                    pt->flops += fs.flops / n;
                }
            }
            double t = lw__now() - t0;
            if (rep >= 0) tok_s[rep] = (double)b * n / t;
            for (int i = 0; i < b; i++)
                if (lw_seq_truncate(ctx, seqs[i], P) != LW_OK) fail("truncate");
        }
        pt->tok_s = mean(tok_s, reps);
        pt->tok_s_sd = stdev(tok_s, reps);
        for (int r = 0; r < reps; r++) pt->tok_s_best = fmax(pt->tok_s_best, tok_s[r]);
        pt->step_s = b / pt->tok_s;
        double bytes = pt->weight_bytes + pt->kv_read + pt->kv_written;
        pt->intensity = pt->flops / bytes;
        pt->gbs = bytes / pt->step_s / 1e9;
        pt->gflops = pt->flops / pt->step_s / 1e9;
        pt->attainable = fmin(pk, pt->intensity * bw);
        printf("| %5d | %8.1f ± %-5.0f | %7.2f | %9.1f | %5.1f | %5.2f | %6.2f | %5.1f | %4.0f%% | %7.1f | %6.1f%% | %12.1f | %6.1f%% | %-7s |\n",
               b, pt->tok_s, pt->tok_s_sd, pt->step_s * 1e3, pt->weight_bytes / 1e6, (pt->kv_read + pt->kv_written) / 1e6,
               pt->flops / 1e9, pt->intensity, pt->gbs, 100.0 * pt->gbs / bw, pt->gflops, 100.0 * pt->gflops / pk, pt->attainable,
               100.0 * pt->gflops / pt->attainable, pt->intensity < B->mach.ridge ? "memory" : "compute");
        fflush(stdout);
    }
    // where the curve crosses the ridge point (by arithmetic intensity)
    int cross = -1;
    for (int i = 0; i < o->n_batches && cross < 0; i++)
        if (pts[i].intensity >= B->mach.ridge) cross = i;
    printf("\nridge point %.2f FLOP/byte: ", B->mach.ridge);
    if (cross < 0) printf("every batch is memory-bound (the largest reaches %.2f FLOP/byte)\n", pts[o->n_batches - 1].intensity);
    else if (cross == 0) printf("compute-bound from the first batch (%d, %.2f FLOP/byte)\n", pts[0].batch, pts[0].intensity);
    else printf("memory-bound up to batch %d (%.2f FLOP/byte), compute-bound from batch %d (%.2f FLOP/byte)\n", pts[cross - 1].batch,
                pts[cross - 1].intensity, pts[cross].batch, pts[cross].intensity);
    printf("half the peak (%.1f GFLOP/s) reached at batch:", pk / 2);
    int half = 0;
    for (int i = 0; i < o->n_batches; i++)
        if (pts[i].gflops >= pk / 2) printf("%s %d", half++ ? "," : "", pts[i].batch);
    printf("%s\n", half ? "" : " none");
    printf("speed-up over batch %d: ", pts[0].batch);
    for (int i = 0; i < o->n_batches; i++) printf("%s%d: %.2fx", i ? ", " : "", pts[i].batch, pts[i].tok_s / pts[0].tok_s);
    printf("\n");
    if (o->json) {
        jw* w = &B->json;
        jw_open(w, "sweep", '{');
        jw_int(w, "positions", P);
        jw_int(w, "steps", n);
        jw_int(w, "reps", reps);
        jw_num(w, "prefill_s", t_prefill);
        jw_num(w, "ridge_flop_per_byte", B->mach.ridge);
        jw_num(w, "compute_bound_from_batch", cross >= 0 ? (double)pts[cross].batch : NAN);   // null: never
        jw_num(w, "half_peak_gflops", pk / 2);
        jw_open(w, "points", '[');
        for (int i = 0; i < o->n_batches; i++) {
            const sweep_point* pt = &pts[i];
            jw_open(w, NULL, '{');
            jw_int(w, "batch", pt->batch);
            jw_num(w, "tokens_per_s", pt->tok_s);
            jw_num(w, "stdev", pt->tok_s_sd);
            jw_num(w, "tokens_per_s_best", pt->tok_s_best);
            jw_num(w, "step_ms", pt->step_s * 1e3);
            jw_num(w, "weight_bytes", pt->weight_bytes);
            jw_num(w, "kv_bytes_read", pt->kv_read);
            jw_num(w, "kv_bytes_written", pt->kv_written);
            jw_num(w, "flops", pt->flops);
            jw_num(w, "intensity", pt->intensity);
            jw_num(w, "gbs", pt->gbs);
            jw_num(w, "fraction_of_bandwidth", pt->gbs / bw);
            jw_num(w, "gflops", pt->gflops);
            jw_num(w, "fraction_of_peak_flops", pt->gflops / pk);
            jw_num(w, "attainable_gflops", pt->attainable);
            jw_num(w, "fraction_of_attainable", pt->gflops / pt->attainable);
            jw_str(w, "bound", pt->intensity < B->mach.ridge ? "memory" : "compute");
            jw_close(w, '}');
        }
        jw_close(w, ']');
        jw_close(w, '}');
    }
    for (int s = 0; s < bmax; s++) lw_seq_free(ctx, seqs[s]);
    free(seqs);
    free(rows);
    free(logits);
    lw_ctx_free(ctx);
}

// ---- mode serve: a workload through the engine

typedef struct workload {
    int     n;
    double* arrival;       // seconds from the start at rate 1 (Poisson) or as the trace says
    int*    prompt_len;
    int*    gen_len;
    int     clipped;       // requests shortened to fit the context
    bool    from_trace;
} workload;

typedef struct req_rec {
    double           arrival;    // seconds from the run's start
    int              prompt_len, gen_len, n_ids, preemptions;
    lw_request       h;
    bool             submitted, finished_event, done, met_slo;
    lw_finish_reason finish;
    double           ttft_ms, tpot_ms, e2e_ms, queue_ms;
} req_rec;

typedef struct serve_result {
    char             load[48];
    double           rate;       // offered requests/s (0: closed loop)
    int              clients;
    lw_engine_stats  es;
    int              n_done, n_stop, n_length, n_error, n_rejected;
    double           slo_met;    // fraction of finished requests
    double           ttft[3], tpot[2], e2e[2], queue[2];   // p50 p90 p99; p50 p99; p50 p99; p50 p99
    double           steps, decode_rows, prefill_rows, kv_mean, kv_peak, step_s, busy;
    int64_t          tokens_sum;
    bool             checks_ok;
} serve_result;

typedef struct driver {
    lw_engine* e;
    double     kv_time, step_time, fwd_time;
    int64_t    steps, decode_rows, prefill_rows, kv_pages;
} driver;

static void drv_on_step(const lw_step_stats* s, void* user) {
    driver* d = (driver*)user;
    d->kv_time += (double)s->kv_pages_used / (double)d->kv_pages * s->seconds;   // KV occupancy weighted by time
    d->step_time += s->seconds;
    d->fwd_time += s->forward.seconds;
    d->steps++;
    d->decode_rows += s->decode_rows;
    d->prefill_rows += s->prefill_rows;
}

static void drv_on_event(const lw_event* ev) {
    if (ev->kind == LW_EVENT_FINISH) ((req_rec*)ev->user)->finished_event = true;
}

static void workload_make(bench* B, workload* wl, int n_ctx) {
    const bench_opts* o = &B->o;
    memset(wl, 0, sizeof *wl);
    int cap = 0;
    if (o->trace) {
        FILE* f = fopen(o->trace, "r");
        if (!f) die("cannot read %s", o->trace);
        char line[512];
        int lineno = 0;
        double last = 0;
        while (fgets(line, sizeof line, f) && (!o->n_requests || wl->n < o->n_requests)) {
            lineno++;
            char* hash = strchr(line, '#');
            if (hash) *hash = 0;
            double a;
            int p, g;
            char extra;
            int k = sscanf(line, "%lf %d %d %c", &a, &p, &g, &extra);
            if (k <= 0) continue;   // blank
            if (k != 3 || a < 0 || p < 1 || g < 1 || a < last) {
                fprintf(stderr, "bench: %s:%d: expected \"arrival_s prompt_len gen_len\" (arrival >= the previous, lengths >= 1)\n", o->trace, lineno);
                exit(1);
            }
            last = a;
            if (wl->n == cap) {
                cap = cap ? 2 * cap : 64;
                wl->arrival = (double*)realloc(wl->arrival, (size_t)cap * sizeof(double));
                wl->prompt_len = (int*)realloc(wl->prompt_len, (size_t)cap * sizeof(int));
                wl->gen_len = (int*)realloc(wl->gen_len, (size_t)cap * sizeof(int));
                if (!wl->arrival || !wl->prompt_len || !wl->gen_len) die("out of memory");
            }
            wl->arrival[wl->n] = a;
            wl->prompt_len[wl->n] = p;
            wl->gen_len[wl->n] = g;
            wl->n++;
        }
        fclose(f);
        if (!wl->n) die("%s holds no requests", o->trace);
        wl->from_trace = true;
    } else {
        wl->n = o->n_requests ? o->n_requests : 64;
        wl->arrival = (double*)malloc((size_t)wl->n * sizeof(double));
        wl->prompt_len = (int*)malloc((size_t)wl->n * sizeof(int));
        wl->gen_len = (int*)malloc((size_t)wl->n * sizeof(int));
        if (!wl->arrival || !wl->prompt_len || !wl->gen_len) die("out of memory");
        uint64_t rng = o->seed * 0x9e3779b97f4a7c15ull + 1;
        double t = 0;
        for (int i = 0; i < wl->n; i++) {   // the first arrives at 0; gaps are exponential with mean 1
            wl->arrival[i] = t;
            t += -log(1.0 - rng_uniform(&rng));
            wl->prompt_len[i] = dist_sample(&o->prompt_len, &rng);
            if (B->prompt_ids) wl->prompt_len[i] = B->n_prompt_ids;
            wl->gen_len[i] = dist_sample(&o->gen_len, &rng);
        }
    }
    for (int i = 0; i < wl->n; i++) {   // prompt + output must fit the context
        int p = LW__MIN(wl->prompt_len[i], n_ctx - 1), g = LW__MIN(wl->gen_len[i], n_ctx - p);
        if (p != wl->prompt_len[i] || g != wl->gen_len[i]) wl->clipped++;
        wl->prompt_len[i] = p;
        wl->gen_len[i] = g;
    }
}

static void workload_free(workload* wl) { free(wl->arrival); free(wl->prompt_len); free(wl->gen_len); }

static void sleep_until(double t) {
    double d = t - lw__now();
    if (d <= 0) return;
    struct timespec ts;
    ts.tv_sec = (time_t)d;
    ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}

// Submits request i of the workload, its arrival backdated to `arrival` (absolute seconds).
static void serve_submit(bench* B, driver* d, req_rec* r, int i, double arrival, double t0, int32_t* ids) {
    uint64_t rng = B->o.seed * 0x2545f4914f6cdd1dull + (uint64_t)i * 0x9e3779b97f4a7c15ull;
    for (int k = 0; k < r->prompt_len; k++) ids[k] = B->prompt_ids ? B->prompt_ids[k] : rng_token(&rng, B->info.n_vocab);
    lw_request_desc rd;
    memset(&rd, 0, sizeof rd);
    rd.mode = B->o.decode;
    rd.diffusion = B->o.diffusion;
    rd.prompt_ids = ids;
    rd.n_prompt_ids = r->prompt_len;
    rd.max_tokens = r->gen_len;
    rd.sampler.temperature = (float)B->o.temp;
    rd.sampler.seed = (uint64_t)i + 1;
    rd.ttft_target_ms = B->o.ttft_slo;
    rd.tpot_target_ms = B->o.tpot_slo;
    rd.ignore_eog = true;          // exact output lengths
    rd.arrival_time = arrival;     // TTFT counts from the arrival, even when it fell inside a step
    rd.on_event = drv_on_event;
    rd.user = r;
    r->arrival = arrival - t0;
    r->submitted = true;
    lw_result res = lw_engine_submit(d->e, &rd, &r->h);
    if (res != LW_OK) {   // refused (it can never fit): counted, not run
        r->done = true;
        r->finish = LW_FINISH_ERROR;
    }
}

static void serve_harvest(driver* d, req_rec* r) {
    lw_request_info info;
    if (lw_request_get(d->e, r->h, &info) != LW_OK) fail("request");
    r->n_ids = info.n_ids;
    r->finish = info.finish;
    r->ttft_ms = info.ttft_ms;
    r->tpot_ms = info.tpot_ms;
    r->e2e_ms = info.e2e_ms;
    r->queue_ms = info.queue_ms;
    r->preemptions = info.preemptions;
    r->met_slo = info.met_slo;
    r->done = true;
    if (lw_request_free(d->e, r->h) != LW_OK) fail("request free");
}

// One run of the workload at one load: rate > 0 (Poisson) or clients > 0 (closed loop) or the trace's times.
static void serve_run(bench* B, const workload* wl, int n_ctx, int64_t kv_tokens, double rate, int clients, serve_result* out, req_rec* recs) {
    const bench_opts* o = &B->o;
    driver d;
    memset(&d, 0, sizeof d);
    lw_engine_desc ed;
    memset(&ed, 0, sizeof ed);
    ed.n_ctx = n_ctx;
    ed.max_running = o->max_running;
    ed.token_budget = o->budget;
    ed.kv_tokens = kv_tokens;
    ed.kv_type = o->kv_type;
    ed.prefill_first = o->prefill_first;
    ed.on_step = drv_on_step;
    ed.step_user = &d;
    if (lw_engine_create(&d.e, B->model, B->be, &ed) != LW_OK) fail("engine");
    lw_engine_stats es0;
    lw_engine_get_stats(d.e, &es0);
    d.kv_pages = es0.kv_pages;
    int n = wl->n, max_prompt = 1;
    for (int i = 0; i < n; i++) max_prompt = LW__MAX(max_prompt, wl->prompt_len[i]);
    int32_t* ids = (int32_t*)malloc((size_t)max_prompt * sizeof(int32_t));
    double* finish_times = (double*)malloc((size_t)n * sizeof(double));   // closed loop: arrivals of the next requests
    if (!ids || !finish_times) die("out of memory");
    memset(recs, 0, (size_t)n * sizeof(req_rec));
    for (int i = 0; i < n; i++) {
        recs[i].prompt_len = wl->prompt_len[i];
        recs[i].gen_len = wl->gen_len[i];
    }
    int next = 0, done = 0, in_flight = 0, n_finish_times = 0, used_finish_times = 0;
    double t0 = lw__now(), scale = rate > 0 ? 1.0 / rate : 1.0;   // open loop: arrival i at t0 + arrival[i] x scale
    while (done < n) {
        double now = lw__now();
        if (clients > 0) {   // closed loop: keep `clients` requests outstanding
            while (next < n && in_flight < clients) {
                double arrival = used_finish_times < n_finish_times ? finish_times[used_finish_times++] : t0;
                serve_submit(B, &d, &recs[next], next, arrival, t0, ids);
                if (recs[next].done) done++; else in_flight++;
                next++;
            }
        } else {   // open loop: every request whose arrival time has come
            while (next < n && t0 + wl->arrival[next] * scale <= now) {
                serve_submit(B, &d, &recs[next], next, t0 + wl->arrival[next] * scale, t0, ids);
                if (recs[next].done) done++; else in_flight++;
                next++;
            }
        }
        if (lw_engine_idle(d.e)) {
            if (next >= n) break;
            if (clients <= 0) sleep_until(t0 + wl->arrival[next] * scale);
            continue;
        }
        if (lw_engine_step(d.e) != LW_OK) fail("step");
        for (int i = 0; i < next; i++) {
            req_rec* r = &recs[i];
            if (r->done || !r->finished_event) continue;
            serve_harvest(&d, r);
            done++;
            in_flight--;
            finish_times[n_finish_times++] = t0 + r->arrival + r->e2e_ms / 1e3;
        }
    }
    lw_engine_get_stats(d.e, &out->es);

    // summary
    double* ttft = (double*)malloc((size_t)n * sizeof(double));
    double* tpot = (double*)malloc((size_t)n * sizeof(double));
    double* e2e = (double*)malloc((size_t)n * sizeof(double));
    double* queue = (double*)malloc((size_t)n * sizeof(double));
    if (!ttft || !tpot || !e2e || !queue) die("out of memory");
    int n_ttft = 0, n_tpot = 0, n_e2e = 0, met = 0;
    out->checks_ok = true;
    for (int i = 0; i < n; i++) {
        const req_rec* r = &recs[i];
        if (!r->submitted) continue;
        if (r->finish == LW_FINISH_ERROR && !r->h.id) { out->n_rejected++; continue; }
        out->n_done++;
        out->tokens_sum += r->n_ids;
        if (r->finish == LW_FINISH_STOP) out->n_stop++;
        if (r->finish == LW_FINISH_LENGTH) out->n_length++;
        if (r->finish == LW_FINISH_ERROR) out->n_error++;
        if (r->met_slo) met++;
        if (r->n_ids > 0) ttft[n_ttft++] = r->ttft_ms;
        if (r->n_ids > 1) tpot[n_tpot++] = r->tpot_ms;
        e2e[n_e2e] = r->e2e_ms;
        queue[n_e2e++] = r->queue_ms;
        if (r->n_ids > 0 && r->ttft_ms > r->e2e_ms + 1e-9) out->checks_ok = false;
    }
    qsort(ttft, (size_t)n_ttft, sizeof(double), cmp_double);
    qsort(tpot, (size_t)n_tpot, sizeof(double), cmp_double);
    qsort(e2e, (size_t)n_e2e, sizeof(double), cmp_double);
    qsort(queue, (size_t)n_e2e, sizeof(double), cmp_double);
    out->ttft[0] = percentile(ttft, n_ttft, 50);
    out->ttft[1] = percentile(ttft, n_ttft, 90);
    out->ttft[2] = percentile(ttft, n_ttft, 99);
    out->tpot[0] = percentile(tpot, n_tpot, 50);
    out->tpot[1] = percentile(tpot, n_tpot, 99);
    out->e2e[0] = percentile(e2e, n_e2e, 50);
    out->e2e[1] = percentile(e2e, n_e2e, 99);
    out->queue[0] = percentile(queue, n_e2e, 50);
    out->queue[1] = percentile(queue, n_e2e, 99);
    out->slo_met = out->n_done ? (double)met / out->n_done : 0.0;
    out->rate = rate;
    out->clients = clients;
    out->steps = (double)d.steps;
    out->decode_rows = d.steps ? (double)d.decode_rows / d.steps : 0.0;
    out->prefill_rows = d.steps ? (double)d.prefill_rows / d.steps : 0.0;
    out->kv_mean = d.step_time > 0 ? d.kv_time / d.step_time : 0.0;
    out->kv_peak = out->es.kv_pages ? (double)out->es.kv_pages_peak / (double)out->es.kv_pages : 0.0;
    out->step_s = d.step_time;
    out->busy = out->es.elapsed_s > 0 ? out->es.forward_s / out->es.elapsed_s : 0.0;
    // the sums must agree: tokens the requests report = the engine's count = throughput x elapsed
    if (out->tokens_sum != out->es.generated_tokens) out->checks_ok = false;
    if (fabs(out->es.throughput * out->es.elapsed_s - (double)out->tokens_sum) > 1e-6 * (double)out->tokens_sum + 1e-6) out->checks_ok = false;
    if (out->es.finished != out->n_done) out->checks_ok = false;
    free(ttft);
    free(tpot);
    free(e2e);
    free(queue);
    free(ids);
    free(finish_times);
    lw_engine_free(d.e);
}

static void fmt_ms(char* buf, size_t n, double ms) {
    if (!isfinite(ms)) snprintf(buf, n, "-");
    else if (ms >= 100) snprintf(buf, n, "%.0f", ms);
    else snprintf(buf, n, "%.1f", ms);
}

static void mode_serve(bench* B) {
    const bench_opts* o = &B->o;
    int n_ctx = o->n_ctx ? o->n_ctx : B->info.n_ctx_train;
    workload wl;
    workload_make(B, &wl, n_ctx);
    int n_loads = o->n_rates ? o->n_rates : o->n_clients ? o->n_clients : 1;

    // warm-up on a private context: page in the weights, so the first requests do not pay for it
    {
        int p = LW__MIN(64, n_ctx);
        lw_ctx* ctx = make_ctx(B, p, p, 1, 0);
        float* logits = (float*)malloc((size_t)B->info.n_vocab * sizeof(float));
        run_stats rs;
        if (!logits) die("out of memory");
        run_once(ctx, B->info.n_vocab, 1, p, logits, &rs);
        free(logits);
        lw_ctx_free(ctx);
    }

    // the KV pool: as asked, else room for max_running of the workload's longest requests (and at least
    // the engine's default, 4 x context), so that nothing is preempted unless the pool is made smaller
    int longest = 1, max_running = o->max_running ? o->max_running : 64;
    for (int i = 0; i < wl.n; i++) longest = LW__MAX(longest, wl.prompt_len[i] + wl.gen_len[i]);
    int64_t kv_tokens = o->kv_tokens;
    if (!kv_tokens) kv_tokens = LW__MAX(4 * (int64_t)n_ctx, (int64_t)LW__MIN(max_running, wl.n) * ((longest + 15) / 16 * 16));

    char pl[64], gl[64], slo[96] = "none";
    dist_print(pl, sizeof pl, &o->prompt_len);
    dist_print(gl, sizeof gl, &o->gen_len);
    if (o->ttft_slo > 0 || o->tpot_slo > 0) snprintf(slo, sizeof slo, "TTFT <= %g ms, TPOT <= %g ms", o->ttft_slo, o->tpot_slo);
    int64_t sum_p = 0, sum_g = 0;
    for (int i = 0; i < wl.n; i++) { sum_p += wl.prompt_len[i]; sum_g += wl.gen_len[i]; }
    if (wl.from_trace) printf("\nworkload   %d requests from %s", wl.n, o->trace);
    else printf("\nworkload   %d requests, prompt %s, gen %s", wl.n, pl, gl);
    printf(" (mean %.1f + %.1f tokens, seed %llu)", (double)sum_p / wl.n, (double)sum_g / wl.n, (unsigned long long)o->seed);
    if (o->prompt_text) printf(", prompt \"%s\"", o->prompt_text);
    if (o->decode == LW_MODE_DIFFUSION)
        printf(", masked diffusion (gen length %d, %d steps, blocks of %d%s)", o->diffusion.gen_length, o->diffusion.steps, o->diffusion.block_length,
               o->diffusion.threshold > 0 ? ", threshold" : "");
    if (o->decode == LW_MODE_BLOCK) printf(", block diffusion (%s)", o->diffusion.tokens_per_step ? "tokens per step" : "threshold");
    if (wl.clipped) printf(", %d clipped to the context of %d", wl.clipped, n_ctx);
    printf("\nslo        %s\n", slo);
    printf("engine     max_running %d, budget %d rows, context %d, KV pool %lld positions of %s%s\n", max_running, o->budget ? o->budget : 512,
           n_ctx, (long long)kv_tokens, lw_type_get_info(o->kv_type).name, o->prefill_first ? ", prefill first" : "");

    serve_result* res = (serve_result*)calloc((size_t)n_loads, sizeof(serve_result));
    req_rec** recs = (req_rec**)calloc((size_t)n_loads, sizeof(req_rec*));
    if (!res || !recs) die("out of memory");
    for (int l = 0; l < n_loads; l++) {
        double rate = o->n_rates ? o->rates[l] : 0.0;
        int clients = o->n_clients ? o->clients[l] : 0;
        serve_result* r = &res[l];
        if (rate > 0) snprintf(r->load, sizeof r->load, "%g req/s", rate);
        else if (clients > 0) snprintf(r->load, sizeof r->load, "%d clients", clients);
        else snprintf(r->load, sizeof r->load, "trace");
        recs[l] = (req_rec*)calloc((size_t)wl.n, sizeof(req_rec));
        if (!recs[l]) die("out of memory");
        if (isatty(2)) fprintf(stderr, "bench: serve %s ...\n", r->load);
        serve_run(B, &wl, n_ctx, kv_tokens, rate, clients, r, recs[l]);
    }

    printf("\n| load | done | stop | tok/s | req/s | goodput req/s | SLO met | TTFT p50 ms | p90 | p99 | TPOT p50 ms | p99 |\n");
    printf("|------|-----:|-----:|------:|------:|--------------:|--------:|------------:|----:|----:|------------:|----:|\n");
    for (int l = 0; l < n_loads; l++) {
        const serve_result* r = &res[l];
        char t0[16], t1[16], t2[16], p0[16], p1[16];
        fmt_ms(t0, sizeof t0, r->ttft[0]);
        fmt_ms(t1, sizeof t1, r->ttft[1]);
        fmt_ms(t2, sizeof t2, r->ttft[2]);
        fmt_ms(p0, sizeof p0, r->tpot[0]);
        fmt_ms(p1, sizeof p1, r->tpot[1]);
        printf("| %s | %d | %d | %.1f | %.2f | %.2f | %.0f%% | %s | %s | %s | %s | %s |\n", r->load, r->n_done, r->n_stop, r->es.throughput,
               r->es.requests_per_s, r->es.goodput, 100.0 * r->slo_met, t0, t1, t2, p0, p1);
    }
    double bw = B->mach.read_gbs, pk = B->mach.peak_gflops;
    printf("\n| load | elapsed s | steps | rows/step | decode rows/step | tokens/step | KV mean | KV peak | preempt | GB/s | of bw | GFLOP/s | of peak | FLOP/B | busy |\n");
    printf("|------|----------:|------:|----------:|-----------------:|------------:|--------:|--------:|--------:|-----:|------:|--------:|--------:|-------:|-----:|\n");
    for (int l = 0; l < n_loads; l++) {
        const serve_result* r = &res[l];
        printf("| %s | %.2f | %.0f | %.1f | %.1f | %.2f | %.0f%% | %.0f%% | %lld | %.1f | %.0f%% | %.1f | %.1f%% | %.2f | %.0f%% |\n", r->load, r->es.elapsed_s,
               r->steps, r->es.mean_rows_per_step, r->decode_rows, r->steps > 0 ? (double)r->es.generated_tokens / r->steps : 0.0,
               100.0 * r->kv_mean, 100.0 * r->kv_peak, (long long)r->es.preemptions,
               r->es.bytes_per_s / 1e9, 100.0 * r->es.bytes_per_s / 1e9 / bw, r->es.flops_per_s / 1e9, 100.0 * r->es.flops_per_s / 1e9 / pk,
               r->es.arithmetic_intensity, 100.0 * r->busy);
    }
    printf("\n");
    for (int l = 0; l < n_loads; l++) {
        const serve_result* r = &res[l];
        printf("%s: %lld tokens generated (requests %lld, throughput x elapsed %.1f), %d length / %d stop / %d error / %d refused; "
               "e2e p50 %.0f ms p99 %.0f ms; queue p50 %.1f ms p99 %.1f ms; checks %s\n",
               r->load, (long long)r->es.generated_tokens, (long long)r->tokens_sum, r->es.throughput * r->es.elapsed_s, r->n_length,
               r->n_stop, r->n_error, r->n_rejected, r->e2e[0], r->e2e[1], r->queue[0], r->queue[1], r->checks_ok ? "ok" : "FAILED");
    }

    if (o->json) {
        jw* w = &B->json;
        jw_open(w, "serve", '{');
        jw_open(w, "workload", '{');
        jw_int(w, "requests", wl.n);
        if (wl.from_trace) jw_str(w, "trace", o->trace);
        else { jw_str(w, "prompt_len", pl); jw_str(w, "gen_len", gl); }
        jw_int(w, "clipped", wl.clipped);
        jw_num(w, "mean_prompt_len", (double)sum_p / wl.n);
        jw_num(w, "mean_gen_len", (double)sum_g / wl.n);
        jw_num(w, "ttft_slo_ms", o->ttft_slo);
        jw_num(w, "tpot_slo_ms", o->tpot_slo);
        jw_num(w, "temperature", o->temp);
        static const char* const decodes[] = { "ar", "spec", "selfspec", "lookup", "lookahead", "diffusion", "block" };
        jw_str(w, "decode", decodes[o->decode]);
        if (o->prompt_text) jw_str(w, "prompt", o->prompt_text);
        jw_close(w, '}');
        jw_open(w, "engine", '{');
        jw_int(w, "max_running", max_running);
        jw_int(w, "kv_tokens", kv_tokens);
        jw_int(w, "token_budget", o->budget ? o->budget : 512);
        jw_int(w, "n_ctx", n_ctx);
        jw_int(w, "kv_pages", res[0].es.kv_pages);
        jw_num(w, "kv_bytes_per_token", res[0].es.kv_bytes_per_token);
        jw_bool(w, "prefill_first", o->prefill_first);
        jw_close(w, '}');
        jw_open(w, "runs", '[');
        for (int l = 0; l < n_loads; l++) {
            const serve_result* r = &res[l];
            const lw_engine_stats* es = &r->es;
            jw_open(w, NULL, '{');
            jw_str(w, "load", r->load);
            jw_num(w, "rate", r->rate);
            jw_int(w, "clients", r->clients);
            jw_int(w, "finished", r->n_done);
            jw_int(w, "finish_length", r->n_length);
            jw_int(w, "finish_stop", r->n_stop);
            jw_int(w, "finish_error", r->n_error);
            jw_int(w, "refused", r->n_rejected);
            jw_num(w, "elapsed_s", es->elapsed_s);
            jw_int(w, "prompt_tokens", es->prompt_tokens);
            jw_int(w, "generated_tokens", es->generated_tokens);
            jw_int(w, "request_tokens_sum", r->tokens_sum);
            jw_num(w, "throughput_tokens_per_s", es->throughput);
            jw_num(w, "requests_per_s", es->requests_per_s);
            jw_num(w, "goodput_requests_per_s", es->goodput);
            jw_num(w, "slo_met_fraction", r->slo_met);
            jw_num(w, "ttft_p50_ms", r->ttft[0]);
            jw_num(w, "ttft_p90_ms", r->ttft[1]);
            jw_num(w, "ttft_p99_ms", r->ttft[2]);
            jw_num(w, "tpot_p50_ms", r->tpot[0]);
            jw_num(w, "tpot_p99_ms", r->tpot[1]);
            jw_num(w, "e2e_p50_ms", r->e2e[0]);
            jw_num(w, "e2e_p99_ms", r->e2e[1]);
            jw_num(w, "queue_p50_ms", r->queue[0]);
            jw_num(w, "queue_p99_ms", r->queue[1]);
            jw_int(w, "steps", es->steps);
            jw_num(w, "mean_rows_per_step", es->mean_rows_per_step);
            jw_num(w, "mean_decode_rows_per_step", r->decode_rows);
            jw_num(w, "mean_prefill_rows_per_step", r->prefill_rows);
            jw_num(w, "kv_occupancy_mean", r->kv_mean);
            jw_num(w, "kv_occupancy_peak", r->kv_peak);
            jw_int(w, "preemptions", es->preemptions);
            jw_int(w, "recomputed_tokens", es->recomputed_tokens);
            jw_num(w, "weight_bytes", es->weight_bytes);
            jw_num(w, "kv_bytes_read", es->kv_bytes_read);
            jw_num(w, "kv_bytes_written", es->kv_bytes_written);
            jw_num(w, "flops", es->flops);
            jw_num(w, "forward_s", es->forward_s);
            jw_num(w, "step_s", r->step_s);
            jw_num(w, "busy_fraction", r->busy);
            jw_num(w, "gbs", es->bytes_per_s / 1e9);
            jw_num(w, "fraction_of_bandwidth", es->bytes_per_s / 1e9 / bw);
            jw_num(w, "gflops", es->flops_per_s / 1e9);
            jw_num(w, "fraction_of_peak_flops", es->flops_per_s / 1e9 / pk);
            jw_num(w, "intensity", es->arithmetic_intensity);
            jw_bool(w, "checks_ok", r->checks_ok);
            jw_open(w, "requests", '[');
            for (int i = 0; i < wl.n; i++) {
                const req_rec* q = &recs[l][i];
                static const char* const fin[] = { "none", "length", "stop", "cancelled", "error" };
                jw_open(w, NULL, '{');
                jw_num(w, "arrival_s", q->arrival);
                jw_int(w, "prompt", q->prompt_len);
                jw_int(w, "gen_asked", q->gen_len);
                jw_int(w, "gen", q->n_ids);
                jw_str(w, "finish", q->h.id ? fin[q->finish] : "refused");
                jw_num(w, "ttft_ms", q->ttft_ms);
                jw_num(w, "tpot_ms", q->tpot_ms);
                jw_num(w, "e2e_ms", q->e2e_ms);
                jw_num(w, "queue_ms", q->queue_ms);
                jw_int(w, "preemptions", q->preemptions);
                jw_bool(w, "met_slo", q->met_slo);
                jw_close(w, '}');
            }
            jw_close(w, ']');
            jw_close(w, '}');
        }
        jw_close(w, ']');
        jw_close(w, '}');
    }
    for (int l = 0; l < n_loads; l++) free(recs[l]);
    free(recs);
    free(res);
    workload_free(&wl);
}

// ---- options

static void usage(FILE* f) {
    fprintf(f,
        "usage: bench -m MODEL [-t THREADS] [--mode pp-tg|serve|sweep] [options]   (the manual: the top of tools/bench.c)\n"
        "  common   --backend cpu|cuda  --kernels SET  --kv-type f32|f16  --peak-gbs X  --peak-gflops X  --seed S  --json FILE\n"
        "  pp-tg    -p 128  -n 64  -r 3\n"
        "  sweep    --batches 1,2,4,8,16,32,64  -p 64 (positions held)  -n 16 (timed steps)  -r 3\n"
        "  serve    --rate R[,R..] | --clients C[,C..] | --trace FILE   --requests 64\n"
        "           --prompt-len D  --gen-len D  (D: N, uniform:A:B, normal:MEAN:SD; default 64)\n"
        "           --ttft-slo MS  --tpot-slo MS  --temp T  --max-running 64  --budget 512  --kv-tokens N\n"
        "           -c CTX  --prefill-first  --prompt TEXT\n"
        "           --decode ar|diffusion|block  [--gen-length G --steps S --block-length B --threshold T --tokens-per-step K]\n");
}

static int parse_int(const char* s, const char* opt) {
    char* end;
    long v = strtol(s, &end, 10);
    if (*end || end == s || v < 0 || v > 1000000000) die("%s needs a non-negative integer", opt);
    return (int)v;
}
static double parse_num(const char* s, const char* opt) {
    char* end;
    double v = strtod(s, &end);
    if (*end || end == s || !(v >= 0)) die("%s needs a non-negative number", opt);
    return v;
}
static int parse_list(const char* s, const char* opt, double* out, int cap) {
    int n = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", s);
    for (char* tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (n == cap) die("%s: too many values", opt);
        out[n] = parse_num(tok, opt);
        if (out[n] <= 0) die("%s: values must be positive", opt);
        n++;
    }
    if (!n) die("%s needs values", opt);
    return n;
}

static void parse_args(int argc, char** argv, bench_opts* o) {
    memset(o, 0, sizeof *o);
    o->mode = MODE_PPTG;
    o->seed = 1;
    o->prompt_len.a = 64;
    o->gen_len.a = 64;
    static const int def_batches[] = { 1, 2, 4, 8, 16, 32, 64 };
    o->n_batches = 7;
    memcpy(o->batches, def_batches, sizeof def_batches);
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); exit(0); }
        if (!strcmp(a, "--prefill-first")) { o->prefill_first = 1; continue; }
        const char* v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) die("%s needs a value (or is unknown; -h for help)", a);
        double list[MAX_LOADS];
        if (!strcmp(a, "-m")) o->model = v;
        else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "pp-tg")) o->mode = MODE_PPTG;
            else if (!strcmp(v, "serve")) o->mode = MODE_SERVE;
            else if (!strcmp(v, "sweep")) o->mode = MODE_SWEEP;
            else die("--mode: '%s' is not pp-tg, serve or sweep", v);
        }
        else if (!strcmp(a, "-t")) o->threads = parse_int(v, a);
        else if (!strcmp(a, "-p")) o->n_prompt = parse_int(v, a);
        else if (!strcmp(a, "-n")) o->n_gen = parse_int(v, a);
        else if (!strcmp(a, "-r")) o->reps = parse_int(v, a);
        else if (!strcmp(a, "-c")) o->n_ctx = parse_int(v, a);
        else if (!strcmp(a, "--bandwidth") || !strcmp(a, "--peak-gbs")) o->peak_gbs = parse_num(v, a);
        else if (!strcmp(a, "--peak-gflops")) o->peak_gflops = parse_num(v, a);
        else if (!strcmp(a, "--json")) o->json = v;
        else if (!strcmp(a, "--kernels")) o->kernels = v;
        else if (!strcmp(a, "--backend")) {
            if (strcmp(v, "cpu") && strcmp(v, "cuda")) die("--backend: '%s' is not cpu or cuda", v);
            o->cuda = !strcmp(v, "cuda");
        }
        else if (!strcmp(a, "--seed")) o->seed = (uint64_t)strtoull(v, NULL, 10);
        else if (!strcmp(a, "--kv-type")) {
            if (!strcmp(v, "f32")) o->kv_type = LW_TYPE_F32;
            else if (!strcmp(v, "f16")) o->kv_type = LW_TYPE_F16;
            else die("--kv-type: '%s' is not f32 or f16", v);
        }
        else if (!strcmp(a, "--batches")) {
            o->n_batches = parse_list(v, a, list, MAX_BATCHES);
            for (int k = 0; k < o->n_batches; k++) {
                o->batches[k] = (int)list[k];
                if (list[k] != floor(list[k]) || list[k] > 4096) die("--batches: '%s' must be integers from 1 to 4096", v);
            }
            qsort(o->batches, (size_t)o->n_batches, sizeof(int), cmp_int);   // ascending, for the crossing
        }
        else if (!strcmp(a, "--rate")) o->n_rates = parse_list(v, a, o->rates, MAX_LOADS);
        else if (!strcmp(a, "--clients")) {
            o->n_clients = parse_list(v, a, list, MAX_LOADS);
            for (int k = 0; k < o->n_clients; k++) {
                o->clients[k] = (int)list[k];
                if (list[k] != floor(list[k])) die("--clients: '%s' must be integers", v);
            }
        }
        else if (!strcmp(a, "--requests")) o->n_requests = parse_int(v, a);
        else if (!strcmp(a, "--prompt-len")) o->prompt_len = dist_parse(v);
        else if (!strcmp(a, "--gen-len")) o->gen_len = dist_parse(v);
        else if (!strcmp(a, "--trace")) o->trace = v;
        else if (!strcmp(a, "--ttft-slo")) o->ttft_slo = parse_num(v, a);
        else if (!strcmp(a, "--tpot-slo")) o->tpot_slo = parse_num(v, a);
        else if (!strcmp(a, "--temp")) o->temp = parse_num(v, a);
        else if (!strcmp(a, "--max-running")) o->max_running = parse_int(v, a);
        else if (!strcmp(a, "--budget")) o->budget = parse_int(v, a);
        else if (!strcmp(a, "--kv-tokens")) o->kv_tokens = parse_int(v, a);
        else if (!strcmp(a, "--prompt")) o->prompt_text = v;
        else if (!strcmp(a, "--decode")) {
            if (!strcmp(v, "ar")) o->decode = LW_MODE_AR;
            else if (!strcmp(v, "diffusion")) o->decode = LW_MODE_DIFFUSION;
            else if (!strcmp(v, "block")) o->decode = LW_MODE_BLOCK;
            else die("--decode '%s': expected ar, diffusion or block", v);
        }
        else if (!strcmp(a, "--gen-length")) o->diffusion.gen_length = parse_int(v, a);
        else if (!strcmp(a, "--steps")) o->diffusion.steps = parse_int(v, a);
        else if (!strcmp(a, "--block-length")) o->diffusion.block_length = parse_int(v, a);
        else if (!strcmp(a, "--threshold")) o->diffusion.threshold = (float)parse_num(v, a);
        else if (!strcmp(a, "--tokens-per-step")) o->diffusion.tokens_per_step = parse_int(v, a);
        else die("unknown option %s (-h for help)", a);
        i++;
    }
    if (!o->model) die("-m MODEL is required (make one with build/mkmodel; -h for help)");
    if (o->n_rates && o->n_clients) die("--rate and --clients exclude each other");
    if (o->n_rates && o->trace) die("--rate and --trace exclude each other (the trace has the arrival times)");
    if (o->mode != MODE_SERVE && (o->n_rates || o->n_clients || o->trace)) die("--rate, --clients and --trace are for --mode serve");
    if (o->mode != MODE_SERVE && (o->prompt_text || o->decode != LW_MODE_AR)) die("--prompt and --decode are for --mode serve");
    if (o->reps > MAX_REPS) die("-r is at most 64");
    if (o->mode == MODE_SERVE && !o->n_rates && !o->n_clients && !o->trace) die("--mode serve needs --rate R, --clients C or --trace FILE");
    if (o->trace) {
        FILE* f = fopen(o->trace, "r");
        if (!f) die("cannot read %s", o->trace);
        fclose(f);
    }
}

int main(int argc, char** argv) {
    bench B;
    memset(&B, 0, sizeof B);
    B.argc = argc;
    B.argv = argv;
    parse_args(argc, argv, &B.o);

    lw_backend_desc bd;
    memset(&bd, 0, sizeof bd);
    bd.kind = B.o.cuda ? LW_BACKEND_CUDA : LW_BACKEND_CPU;
    bd.n_threads = B.o.threads;
    bd.cpu_kernels = B.o.kernels;
    if (lw_backend_create(&B.be, &bd) != LW_OK) fail("backend");
#ifdef LW_CUDA
    if (B.o.cuda) measure_gpu(&B.o, &B.mach);
    else
#endif
    measure_machine(&((lw__cpu*)B.be->self)->pool, &B.o, &B.mach);   // before the model: nothing else runs
    if (lw_model_load(&B.model, B.o.model, NULL) != LW_OK) fail("model");
    lw_model_get_info(B.model, &B.info);
    if (!B.info.has_weights) die("%s has no weights (a vocabulary-only file)", B.o.model);
    if (B.o.prompt_text) {
        int n = 0;
        lw_tokenize(B.model, B.o.prompt_text, strlen(B.o.prompt_text), LW_TOKENIZE_ADD_SPECIAL, NULL, 0, &n);
        B.prompt_ids = (int32_t*)malloc(sizeof(int32_t) * (size_t)(n + 1));
        if (!B.prompt_ids || lw_tokenize(B.model, B.o.prompt_text, strlen(B.o.prompt_text), LW_TOKENIZE_ADD_SPECIAL, B.prompt_ids, n + 1,
                                         &B.n_prompt_ids) != LW_OK || B.n_prompt_ids < 1)
            die("--prompt: cannot tokenize '%s'", B.o.prompt_text);
    }

    static const char* const mode_names[] = { "pp-tg", "serve", "sweep" };
    printf("model      %s (%s, %s, %.1f MiB, %.1f M params)\n", B.o.model, B.info.arch, lw_type_get_info(B.info.weight_type).name,
           (double)B.info.weight_bytes / (1024.0 * 1024.0), (double)B.info.n_params / 1e6);
    printf("kernels    %s, %d threads, KV %s\n", B.o.cuda ? "cuda" : lw_backend_kernels(B.be), lw_backend_threads(B.be), lw_type_get_info(B.o.kv_type).name);
    print_machine(&B.mach);
    json_begin(&B, mode_names[B.o.mode]);
    if (B.o.mode == MODE_PPTG) mode_pptg(&B);
    else if (B.o.mode == MODE_SWEEP) mode_sweep(&B);
    else mode_serve(&B);
    json_end(&B);
    free(B.prompt_ids);
    lw_model_free(B.model);
    lw_backend_free(B.be);
    return 0;
}
