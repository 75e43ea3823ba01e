/* bench_kernels - the CPU kernel sets alone: matrix products as the forward pass runs them

       build/bench_kernels [-t THREADS (2)] [-k K (768)] [-m M (2048)] [-n ROWS (128)] [--sets a,b] [--types t,u]
                           [--only decode|batch] [--seconds S (0.3, per batch measurement)]
                           [--hot 1 (decode from one copy of W: from the caches when it fits)]
                           [--decode-rows R (1: activation rows of the decode measurement)]

   For each kernel set this CPU runs and each weight type, through lw__matmul_part with the columns split
   over the threads as the forward pass splits them:
   - decode: y = W x for one activation row (or R: a batched decode step), W of M x K streamed from
     memory (a 256 MiB ring of weight copies, so nothing stays in cache): GB/s of weights read, and with
     R > 1 the GFLOP/s too;
   - batch: n activation rows against the same W (M x K, in cache after the first pass): GFLOP/s,
     2 * M * K * n per product.
   Compare with build/fma_peak (the FMA peak) and build/bench's memory bandwidth.
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct job {
    const lw__cpu_kernels* K;
    lw__tensor W;
    const uint8_t* x;
    size_t x_row;
    float* y;
    int n, m;
} job;

static void run_part(void* arg, int ith, int nth) {
    job* j = (job*)arg;
    int64_t a, b;
    lw__split(j->m, ith, nth, &a, &b);
    lw__matmul_part(j->K, &j->W, j->x, j->x_row, j->y, j->m, j->n, a, b, false);
}

// 64-byte aligned, as the forward pass's buffers and mapped weights are (a malloc'd 16-byte alignment
// splits vector loads across cache lines and reads the float kernels 15-20% low)
static void* alloc64(size_t n) { return aligned_alloc(64, (n + 63) & ~(size_t)63); }

static double cpu_now(void) {   // CPU seconds of this process (all its threads): robust to other load
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 1;
static float frand(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (float)((double)(rng >> 11) * 0x1.0p-52 - 1.0); }

int main(int argc, char** argv) {
    int threads = 2, K = 768, M = 2048, N = 128;
    const char* sets = "portable,avx2,avx512";
    const char* typelist = "f32,f16,bf16,q8_0,q4_0";
    int do_decode = 1, do_batch = 1, hot = 0, decode_rows = 1;
    double secs = 0.3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-t")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-k")) K = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-m")) M = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-n")) N = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--sets")) sets = argv[i + 1];
        else if (!strcmp(argv[i], "--types")) typelist = argv[i + 1];
        else if (!strcmp(argv[i], "--only")) { do_decode = !strcmp(argv[i + 1], "decode"); do_batch = !do_decode; }
        else if (!strcmp(argv[i], "--seconds")) secs = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--hot")) hot = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--decode-rows")) decode_rows = atoi(argv[i + 1]);
        else { fprintf(stderr, "bench_kernels: unknown option %s\n", argv[i]); return 1; }
    }
    K = (K + 31) / 32 * 32;
    lw__pool pool;
    if (lw__pool_init(&pool, threads, NULL, NULL) != LW_OK) return 1;
    static const struct { const char* name; lw_type t; } types[] = {
        { "f32", LW_TYPE_F32 }, { "f16", LW_TYPE_F16 }, { "bf16", LW_TYPE_BF16 }, { "q8_0", LW_TYPE_Q8_0 }, { "q4_0", LW_TYPE_Q4_0 },
        { "q4_k", LW_TYPE_Q4_K }, { "q6_k", LW_TYPE_Q6_K } };
    if (decode_rows < 1 || decode_rows > N) { fprintf(stderr, "bench_kernels: --decode-rows must be in [1, -n]\n"); return 1; }
    printf("threads %d, W %d x %d, batch %d rows, decode %d row%s\n\n", threads, M, K, N, decode_rows, decode_rows > 1 ? "s" : "");
    printf("| set      | type | decode GB/s | batch GFLOP/s | per CPU-second |\n|----------|------|------------:|--------------:|---------------:|\n");
    float* xf = (float*)alloc64(sizeof(float) * (size_t)K * N);
    for (size_t i = 0; i < (size_t)K * N; i++) xf[i] = frand();
    uint8_t* xq = (uint8_t*)alloc64(lw_type_row_size(LW_TYPE_Q8_0, K) * (size_t)N);
    for (int r = 0; r < N; r++) lw_quantize(LW_TYPE_Q8_0, xf + (size_t)r * K, xq + (size_t)r * lw_type_row_size(LW_TYPE_Q8_0, K), K);
    uint8_t* xk = (uint8_t*)alloc64(lw_type_row_size(LW_TYPE_Q8_K, K) * (size_t)N + 1);   // (K-quant weights; K % 256 == 0)
    if (K % 256 == 0)
        for (int r = 0; r < N; r++) lw_quantize(LW_TYPE_Q8_K, xf + (size_t)r * K, xk + (size_t)r * lw_type_row_size(LW_TYPE_Q8_K, K), K);
    float* y = (float*)alloc64(sizeof(float) * (size_t)M * N);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        if (!strstr(typelist, types[ti].name)) continue;
        lw_type t = types[ti].t;
        if (K % lw_type_get_info(t).block_size) continue;
        size_t wbytes = lw_type_row_size(t, K) * (size_t)M;
        int copies = hot ? 1 : (int)((256u << 20) / wbytes) + 1;
        uint8_t* ring = (uint8_t*)alloc64(wbytes * (size_t)copies);
        float* wf = (float*)malloc(sizeof(float) * (size_t)K);
        for (int j = 0; j < M; j++) {
            for (int i = 0; i < K; i++) wf[i] = frand();
            lw_quantize(t, wf, ring + (size_t)j * lw_type_row_size(t, K), K);
        }
        for (int c = 1; c < copies; c++) memcpy(ring + (size_t)c * wbytes, ring, wbytes);
        free(wf);
        lw_type vec = lw__traits((uint32_t)t)->vec_type;
        int q8 = vec != LW_TYPE_F32;
        const char* s0 = sets;
        while (*s0) {
            char name[32];
            size_t len = strcspn(s0, ",");
            snprintf(name, sizeof name, "%.*s", (int)len, s0);
            s0 += len + (s0[len] == ',');
            lw__cpu_kernels Kset;
            if (!lw__select_kernels(name, &Kset)) continue;
            job jb;
            memset(&jb, 0, sizeof jb);
            jb.K = &Kset;
            jb.W.type = t;
            jb.W.n_dims = 2;
            jb.W.ne[0] = K;
            jb.W.ne[1] = M;
            jb.x = vec == LW_TYPE_Q8_K ? xk : q8 ? xq : (const uint8_t*)xf;
            jb.x_row = q8 ? lw_type_row_size(vec, K) : (size_t)K * 4;
            jb.y = y;
            jb.m = M;
            // decode: decode_rows rows, a different copy of W each time
            jb.n = decode_rows;
            int reps = do_decode ? (hot ? (int)(4e9 / (double)wbytes) + 1 : copies * 4) : 0;
            double t0 = lw__now();
            for (int r = 0; r < reps; r++) {
                jb.W.data = ring + (size_t)(r % copies) * wbytes;
                lw__pool_run(&pool, run_part, &jb);
            }
            double dt = lw__now() - t0;
            double dec = reps ? (double)wbytes * reps / dt * 1e-9 : 0.0;
            double dec_gf = reps ? 2.0 * M * K * (double)decode_rows * reps / dt * 1e-9 : 0.0;
            // batch: N rows, the same W
            jb.n = N;
            jb.W.data = ring;
            int breps = 1;
            double tb = 1;
            if (do_batch) lw__pool_run(&pool, run_part, &jb);
            double cb = 1;
            for (; do_batch;) {
                t0 = lw__now();
                double c0 = cpu_now();
                for (int r = 0; r < breps; r++) lw__pool_run(&pool, run_part, &jb);
                tb = lw__now() - t0;
                cb = cpu_now() - c0;
                if (tb > secs) break;
                breps *= 2;
            }
            double gf = do_batch ? 2.0 * M * K * (double)N * breps / tb * 1e-9 : 0.0;
            double gfc = do_batch ? 2.0 * M * K * (double)N * breps / cb * 1e-9 : 0.0;
            if (decode_rows > 1) printf("| %-8s | %-4s | %11.1f (%6.1f GFLOP/s) | %13.1f | %14.1f |\n", name, types[ti].name, dec, dec_gf, gf, gfc);
            else printf("| %-8s | %-4s | %11.1f | %13.1f | %14.1f |\n", name, types[ti].name, dec, gf, gfc);
        }
        free(ring);
    }
    free(xf); free(xq); free(xk); free(y);
    lw__pool_destroy(&pool, NULL);
    return 0;
}
