/* bench - prefill and decode speed of a model, against this machine's memory bandwidth

       build/bench -m MODEL [-t THREADS] [-p 128] [-n 64] [-r 3] [--kv-type f32|f16] [--bandwidth GB/s]
                   [--json FILE]

   1. Measures the memory bandwidth with the same number of threads (a read of a 256 MiB array, the
      access pattern of decoding, and a copy), unless --bandwidth gives it.
   2. Prefill: one forward pass over p prompt rows (llama-bench's ppN): tokens/s and FLOP/s.
   3. Decode: n forward passes of one row from position 0 (llama-bench's tgN): tokens/s, and the bytes
      each pass streams (weights + KV cache read, from the library's lw_forward_stats) per second, as a
      fraction of the measured bandwidth: how close decoding is to the memory wall.
   Each is run r times after a warm-up; the table shows the mean and the spread. Random-weight models
   of real shapes come from build/mkmodel.
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

typedef struct bench_opts {
    const char* model;
    const char* json;
    int threads, n_prompt, n_gen, reps;
    lw_type kv_type;
    double bandwidth;   // GB/s, 0: measure
} bench_opts;

// ---- memory bandwidth, threads split the array like the forward pass splits a weight matrix

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

static void measure_bandwidth(lw__pool* pool, double* read_gbs, double* copy_gbs) {
    size_t n = (size_t)256 << 20 >> 2;   // 256 MiB of floats
    bw_job j;
    memset(&j, 0, sizeof j);
    j.n = n;
    float* src = (float*)lw__alloc(NULL, n * sizeof(float));
    float* dst = (float*)lw__alloc(NULL, n * sizeof(float));
    for (size_t i = 0; i < n; i++) { src[i] = (float)(i & 1023); dst[i] = 0.0f; }
    j.src = src;
    j.dst = dst;
    double best_read = 0, best_copy = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t = lw__now();
        lw__pool_run(pool, bw_read, &j);
        t = lw__now() - t;
        best_read = fmax(best_read, (double)n * 4 / t / 1e9);
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

// ---- model runs

typedef struct run_stats { double tok_s, gbs, gflops, weight_mb; } run_stats;

static double mean(const double* x, int n) { double s = 0; for (int i = 0; i < n; i++) s += x[i]; return s / n; }
static double stdev(const double* x, int n) {
    double m = mean(x, n), s = 0;
    for (int i = 0; i < n; i++) s += (x[i] - m) * (x[i] - m);
    return n > 1 ? sqrt(s / (n - 1)) : 0.0;
}

static void fail(const char* what) {
    fprintf(stderr, "bench: %s: %s\n", what, lw_last_error());
    exit(1);
}

// one prefill of n_prompt rows, or n_gen single-row decode passes; returns tokens/s and fills stats
static double run_once(lw_ctx* ctx, int n_vocab, int prefill, int n, float* logits, run_stats* rs) {
    lw_seq s = { 0 };
    if (lw_seq_create(ctx, &s) != LW_OK) fail("sequence");
    lw_row* rows = (lw_row*)malloc((size_t)n * sizeof(lw_row));
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
    return rs->tok_s;
}

int main(int argc, char** argv) {
    bench_opts o;
    memset(&o, 0, sizeof o);
    o.n_prompt = 128;
    o.n_gen = 64;
    o.reps = 3;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: bench -m MODEL [-t THREADS] [-p 128] [-n 64] [-r 3] [--kv-type f32|f16] [--bandwidth GB/s] [--json FILE]\n");
            return 0;
        }
        if (!v) { fprintf(stderr, "bench: %s needs a value\n", a); return 1; }
        if (!strcmp(a, "-m")) o.model = v;
        else if (!strcmp(a, "-t")) o.threads = atoi(v);
        else if (!strcmp(a, "-p")) o.n_prompt = atoi(v);
        else if (!strcmp(a, "-n")) o.n_gen = atoi(v);
        else if (!strcmp(a, "-r")) o.reps = atoi(v);
        else if (!strcmp(a, "--bandwidth")) o.bandwidth = atof(v);
        else if (!strcmp(a, "--json")) o.json = v;
        else if (!strcmp(a, "--kv-type")) o.kv_type = !strcmp(v, "f16") ? LW_TYPE_F16 : LW_TYPE_F32;
        else { fprintf(stderr, "bench: unknown option %s\n", a); return 1; }
        i++;
    }
    if (!o.model) { fprintf(stderr, "bench: -m MODEL is required (make one with build/mkmodel)\n"); return 1; }
    if (o.n_prompt < 1 || o.n_gen < 1 || o.reps < 1 || o.threads < 0) { fprintf(stderr, "bench: -p, -n and -r must be positive\n"); return 1; }

    lw_model* model;
    lw_backend* be;
    lw_ctx* ctx;
    if (lw_model_load(&model, o.model, NULL) != LW_OK) fail("model");
    lw_backend_desc bd;
    memset(&bd, 0, sizeof bd);
    bd.kind = LW_BACKEND_CPU;
    bd.n_threads = o.threads;
    if (lw_backend_create(&be, &bd) != LW_OK) fail("backend");
    lw_ctx_desc cd;
    memset(&cd, 0, sizeof cd);
    cd.n_ctx = LW__MAX(o.n_prompt, o.n_gen) + 1;
    cd.max_rows = o.n_prompt;
    cd.max_seqs = 2;
    cd.kv_type = o.kv_type;
    if (lw_ctx_create(&ctx, model, be, &cd) != LW_OK) fail("context");
    lw_model_info info;
    memset(&info, 0, sizeof info);
    lw_model_get_info(model, &info);
    int threads = lw_backend_threads(be);

    double read_gbs = o.bandwidth, copy_gbs = 0;
    if (read_gbs <= 0) measure_bandwidth(&((lw__cpu*)be->self)->pool, &read_gbs, &copy_gbs);

    float* logits = (float*)malloc((size_t)info.n_vocab * sizeof(float));
    run_stats rs;
    double pp[64], tg[64], tg_gbs[64], pp_gf[64];
    int reps = LW__MIN(o.reps, 64);
    run_once(ctx, info.n_vocab, 1, o.n_prompt, logits, &rs);   // warm-up: page in the weights
    run_once(ctx, info.n_vocab, 0, LW__MIN(o.n_gen, 8), logits, &rs);
    for (int r = 0; r < reps; r++) {
        pp[r] = run_once(ctx, info.n_vocab, 1, o.n_prompt, logits, &rs);
        pp_gf[r] = rs.gflops;
        tg[r] = run_once(ctx, info.n_vocab, 0, o.n_gen, logits, &rs);
        tg_gbs[r] = rs.gbs;
    }
    double tg_frac = mean(tg_gbs, reps) / read_gbs;

    printf("model      %s (%s, %s, %.1f MiB, %.1f M params)\n", o.model, info.arch, lw_type_get_info(info.weight_type).name,
           (double)info.weight_bytes / (1024.0 * 1024.0), (double)info.n_params / 1e6);
    printf("machine    %d threads; memory read %.1f GB/s%s", threads, read_gbs, o.bandwidth > 0 ? " (given)" : "");
    if (copy_gbs > 0) printf(", copy %.1f GB/s", copy_gbs);
    printf("\n\n");
    printf("| test   |     tokens/s |   GB/s | of bandwidth | GFLOP/s |\n");
    printf("|--------|-------------:|-------:|-------------:|--------:|\n");
    printf("| pp%-4d | %7.1f ± %-3.0f |        |              | %7.1f |\n", o.n_prompt, mean(pp, reps), stdev(pp, reps), mean(pp_gf, reps));
    printf("| tg%-4d | %7.1f ± %-3.1f | %6.1f | %11.0f%% |         |\n", o.n_gen, mean(tg, reps), stdev(tg, reps), mean(tg_gbs, reps),
           100.0 * tg_frac);
    if (o.json) {
        FILE* f = fopen(o.json, "w");
        if (!f) { fprintf(stderr, "bench: cannot write %s\n", o.json); return 1; }
        fprintf(f, "{\"model\":\"%s\",\"arch\":\"%s\",\"type\":\"%s\",\"weight_bytes\":%llu,\"threads\":%d,"
                   "\"read_gbs\":%.2f,\"copy_gbs\":%.2f,\"pp\":{\"n\":%d,\"tokens_per_s\":%.2f,\"stdev\":%.2f,\"gflops\":%.2f},"
                   "\"tg\":{\"n\":%d,\"tokens_per_s\":%.2f,\"stdev\":%.2f,\"gbs\":%.2f,\"fraction_of_bandwidth\":%.4f}}\n",
                o.model, info.arch, lw_type_get_info(info.weight_type).name, (unsigned long long)info.weight_bytes, threads,
                read_gbs, copy_gbs, o.n_prompt, mean(pp, reps), stdev(pp, reps), mean(pp_gf, reps), o.n_gen, mean(tg, reps),
                stdev(tg, reps), mean(tg_gbs, reps), tg_frac);
        fclose(f);
    }
    free(logits);
    lw_ctx_free(ctx);
    lw_backend_free(be);
    lw_model_free(model);
    return 0;
}
