/* test_forward - the CPU forward pass against a plain reference, and batch invariance

   The reference (ref_forward below) is written from the maths, independently of llmwall.h's kernels:
   scalar loops, double accumulation, RoPE angles from pow() in double, softmax in double. It takes
   the weights as floats (a quantised model's weights after lw_dequantize, so both sides multiply the
   same numbers; with quantised weights the activations are quantised to Q8_0 by the format's
   definition, as the kernels do) and an explicit visibility matrix over every row of a scenario, so
   committed cache entries, causal/full/block/explicit masks and skipped layers are all just "which rows
   see which".

   Bounds (stated, per case): the normalised mean squared error of the logits, NMSE = sum (a-b)^2 /
   sum b^2, stays below 1e-11 with an F32 KV cache and 1e-8 with F16 (measured: about 1e-14, and up
   to 6e-12 where an F16 rounding of K or V lands on the other side); a wrong mask, RoPE or head
   grouping gives NMSE near 1. Batch invariance is checked bitwise (memcmp of logits).
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include "../tools/gguf_writer.h"
#include "lwtest.h"
#include <math.h>

// ---- a random model: weights kept as floats (what the kernels see) plus the GGUF bytes

typedef struct shape {
    const char* arch;            // llama (adjacent-pair RoPE) or qwen2 (NeoX RoPE, Q/K/V biases)
    int dim, layers, heads, kv_heads, head_dim, ff, vocab, rope_dim;
    lw_type type;
    int tied;
} shape;

typedef struct ref_layer {
    float *attn_norm, *wq, *wk, *wv, *bq, *bk, *bv, *wo, *ffn_norm, *gate, *up, *down;
} ref_layer;

typedef struct ref_model {
    shape s;
    float *embd, *out_norm, *out;          // embd [vocab][dim], out [vocab][dim]
    ref_layer* L;
    gw_file file;
    lw_model* model;
} ref_model;

static uint64_t rng = 88172645463325252ull;
static float frand(void) {   // [-1, 1)
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((double)(rng >> 11) * 0x1.0p-52 - 1.0);
}

// rows x cols random matrix in `type`: writes the tensor and returns the dequantised floats
static float* add_matrix(gw_file* w, const char* name, lw_type type, int rows, int cols, float scale) {
    size_t n = (size_t)rows * cols;
    float* x = (float*)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = scale * frand();
    size_t bytes = lw_type_row_size(type, cols) * (size_t)rows;
    void* q = malloc(bytes);
    lw_quantize(type, x, q, (int64_t)n);
    lw_dequantize(type, q, x, (int64_t)n);
    int64_t ne[2] = { cols, rows };
    gw_tensor(w, name, (uint32_t)type, rows > 1 ? 2 : 1, ne, q, bytes);
    free(q);
    return x;
}
static float* add_vector(gw_file* w, const char* name, int n, float center, float scale) {
    float* x = (float*)malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++) x[i] = center + scale * frand();
    int64_t ne[1] = { n };
    gw_tensor(w, name, LW_TYPE_F32, 1, ne, x, (size_t)n * sizeof(float));
    return x;
}

static int build_model(ref_model* m, shape s) {
    memset(m, 0, sizeof *m);
    if (!s.kv_heads) s.kv_heads = s.heads;
    if (!s.head_dim) s.head_dim = s.dim / s.heads;
    if (!s.rope_dim) s.rope_dim = s.head_dim;
    m->s = s;
    int bias = strcmp(s.arch, "qwen2") == 0;
    int qd = s.heads * s.head_dim, kvd = s.kv_heads * s.head_dim;
    gw_file* w = &m->file;
    *w = gw_begin(3);
    char key[128], name[128];
#define KEY(x) (snprintf(key, sizeof key, "%s." x, s.arch), key)
    gw_kv_str(w, "general.architecture", s.arch);
    gw_kv_u32(w, KEY("context_length"), 256);
    gw_kv_u32(w, KEY("embedding_length"), (uint32_t)s.dim);
    gw_kv_u32(w, KEY("block_count"), (uint32_t)s.layers);
    gw_kv_u32(w, KEY("feed_forward_length"), (uint32_t)s.ff);
    gw_kv_u32(w, KEY("attention.head_count"), (uint32_t)s.heads);
    gw_kv_u32(w, KEY("attention.head_count_kv"), (uint32_t)s.kv_heads);
    gw_kv_u32(w, KEY("attention.key_length"), (uint32_t)s.head_dim);
    gw_kv_u32(w, KEY("rope.dimension_count"), (uint32_t)s.rope_dim);
    gw_kv_f32(w, KEY("rope.freq_base"), 10000.0f);
    gw_kv_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
    float sd = 1.0f / sqrtf((float)s.dim);
    m->embd = add_matrix(w, "token_embd.weight", s.type, s.vocab, s.dim, 1.0f);
    m->L = (ref_layer*)calloc((size_t)s.layers, sizeof(ref_layer));
    for (int l = 0; l < s.layers; l++) {
        ref_layer* L = &m->L[l];
#define NM(x) (snprintf(name, sizeof name, "blk.%d." x, l), name)
        L->attn_norm = add_vector(w, NM("attn_norm.weight"), s.dim, 1.0f, 0.2f);
        L->wq = add_matrix(w, NM("attn_q.weight"), s.type, qd, s.dim, sd);
        L->wk = add_matrix(w, NM("attn_k.weight"), s.type, kvd, s.dim, sd);
        L->wv = add_matrix(w, NM("attn_v.weight"), s.type, kvd, s.dim, sd);
        if (bias) {
            L->bq = add_vector(w, NM("attn_q.bias"), qd, 0.0f, 0.2f);
            L->bk = add_vector(w, NM("attn_k.bias"), kvd, 0.0f, 0.2f);
            L->bv = add_vector(w, NM("attn_v.bias"), kvd, 0.0f, 0.2f);
        }
        L->wo = add_matrix(w, NM("attn_output.weight"), s.type, s.dim, qd, 1.0f / sqrtf((float)qd));
        L->ffn_norm = add_vector(w, NM("ffn_norm.weight"), s.dim, 1.0f, 0.2f);
        L->gate = add_matrix(w, NM("ffn_gate.weight"), s.type, s.ff, s.dim, sd);
        L->up = add_matrix(w, NM("ffn_up.weight"), s.type, s.ff, s.dim, sd);
        L->down = add_matrix(w, NM("ffn_down.weight"), s.type, s.dim, s.ff, 1.0f / sqrtf((float)s.ff));
    }
    m->out_norm = add_vector(w, "output_norm.weight", s.dim, 1.0f, 0.2f);
    m->out = s.tied ? m->embd : add_matrix(w, "output.weight", s.type, s.vocab, s.dim, sd);
    gw_finish(w);
    return lw_model_load_memory(&m->model, w->data, w->size, NULL) == LW_OK;
}

static void free_model(ref_model* m) {
    lw_model_free(m->model);
    for (int l = 0; l < m->s.layers; l++) {
        ref_layer* L = &m->L[l];
        free(L->attn_norm); free(L->wq); free(L->wk); free(L->wv); free(L->bq); free(L->bk); free(L->bv);
        free(L->wo); free(L->ffn_norm); free(L->gate); free(L->up); free(L->down);
    }
    free(m->L);
    if (m->out != m->embd) free(m->out);
    free(m->embd); free(m->out_norm);
    gw_free(&m->file);
}

// ---- the reference forward

static float round_f16(double x) { return (float)(_Float16)x; }   // the compiler's own conversion

static void ref_rmsnorm(double* out, const double* x, const float* w, int n) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double scale = 1.0 / sqrt(ss / n + 1e-5);
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}
// Quantised weights (Q8_0, Q4_0) multiply activations quantised to Q8_0: per block of 32,
// d = max|x| / 127 (stored as a half), q = round(x / d). K-quants (Q4_K, Q6_K) multiply Q8_K: the
// same over blocks of 256 with d kept as a float. Written here from that definition.
static int act_q8;   // the activation block: 0 (F32 activations), 32 (Q8_0) or 256 (Q8_K)

static void ref_quantize_q8(double* x, int n) {
    int bs = act_q8;
    for (int b = 0; b < n / bs; b++) {
        float v[256], amax = 0;
        for (int j = 0; j < bs; j++) { v[j] = (float)x[b * bs + j]; amax = fmaxf(amax, fabsf(v[j])); }
        float d = amax / 127, id = d != 0 ? 1.0f / d : 0.0f;
        double dh = bs == 32 ? (double)(float)(_Float16)d : (double)d;
        for (int j = 0; j < bs; j++) x[b * bs + j] = dh * roundf(v[j] * id);
    }
}

static void ref_matvec(double* out, const float* W, const double* x_in, int rows, int cols) {
    double* x = (double*)malloc((size_t)cols * sizeof(double));
    memcpy(x, x_in, (size_t)cols * sizeof(double));
    if (act_q8) ref_quantize_q8(x, cols);
    for (int j = 0; j < rows; j++) {
        double acc = 0;
        for (int i = 0; i < cols; i++) acc += (double)W[(size_t)j * cols + i] * x[i];
        out[j] = acc;
    }
    free(x);
}
static void ref_rope(double* v, int n_heads, int hd, int rope_dim, int neox, int pos) {
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < rope_dim / 2; i++) {
            double theta = pos * pow(10000.0, -2.0 * i / rope_dim);
            int a = neox ? i : 2 * i, b = neox ? i + rope_dim / 2 : 2 * i + 1;
            double x0 = v[h * hd + a], x1 = v[h * hd + b];
            v[h * hd + a] = x0 * cos(theta) - x1 * sin(theta);
            v[h * hd + b] = x0 * sin(theta) + x1 * cos(theta);
        }
}

// n rows with tokens and positions; see[i*n + j]: row i attends to row j. Writes logits [n][vocab].
static void ref_forward(const ref_model* m, int n, const int* tok, const int* pos, const uint8_t* see,
                        const uint8_t* skip, int kv_f16, double* logits) {
    const shape* s = &m->s;
    int d = s->dim, hd = s->head_dim, qd = s->heads * hd, kvd = s->kv_heads * hd, neox = !strcmp(s->arch, "qwen2");
    act_q8 = s->type == LW_TYPE_Q8_0 || s->type == LW_TYPE_Q4_0 ? 32 : s->type == LW_TYPE_Q4_K || s->type == LW_TYPE_Q6_K ? 256 : 0;
    double* x = (double*)calloc((size_t)n * d, sizeof(double));
    double* xb = (double*)calloc((size_t)n * d, sizeof(double));
    double* q = (double*)calloc((size_t)n * qd, sizeof(double));
    double* k = (double*)calloc((size_t)n * kvd, sizeof(double));
    double* v = (double*)calloc((size_t)n * kvd, sizeof(double));
    double* att = (double*)calloc((size_t)n * qd, sizeof(double));
    double* tmp = (double*)calloc((size_t)(s->ff > qd ? s->ff : qd) * 2 + d, sizeof(double));
    double* sc = (double*)calloc((size_t)n, sizeof(double));
    for (int r = 0; r < n; r++)
        for (int i = 0; i < d; i++) x[(size_t)r * d + i] = m->embd[(size_t)tok[r] * d + i];
    for (int l = 0; l < s->layers; l++) {
        if (skip && skip[l]) continue;
        const ref_layer* L = &m->L[l];
        for (int r = 0; r < n; r++) {
            ref_rmsnorm(xb + (size_t)r * d, x + (size_t)r * d, L->attn_norm, d);
            ref_matvec(q + (size_t)r * qd, L->wq, xb + (size_t)r * d, qd, d);
            ref_matvec(k + (size_t)r * kvd, L->wk, xb + (size_t)r * d, kvd, d);
            ref_matvec(v + (size_t)r * kvd, L->wv, xb + (size_t)r * d, kvd, d);
            if (L->bq) {
                for (int i = 0; i < qd; i++) q[(size_t)r * qd + i] += L->bq[i];
                for (int i = 0; i < kvd; i++) { k[(size_t)r * kvd + i] += L->bk[i]; v[(size_t)r * kvd + i] += L->bv[i]; }
            }
            ref_rope(q + (size_t)r * qd, s->heads, hd, s->rope_dim, neox, pos[r]);
            ref_rope(k + (size_t)r * kvd, s->kv_heads, hd, s->rope_dim, neox, pos[r]);
            if (kv_f16)
                for (int i = 0; i < kvd; i++) {
                    k[(size_t)r * kvd + i] = round_f16(k[(size_t)r * kvd + i]);
                    v[(size_t)r * kvd + i] = round_f16(v[(size_t)r * kvd + i]);
                }
        }
        for (int r = 0; r < n; r++)
            for (int h = 0; h < s->heads; h++) {
                int g = h / (s->heads / s->kv_heads);
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < n; j++) {
                    if (!see[(size_t)r * n + j]) continue;
                    double dot = 0;
                    for (int i = 0; i < hd; i++) dot += q[(size_t)r * qd + h * hd + i] * k[(size_t)j * kvd + g * hd + i];
                    sc[j] = dot / sqrt((double)hd);
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int i = 0; i < hd; i++) att[(size_t)r * qd + h * hd + i] = 0;
                for (int j = 0; j < n; j++) {
                    if (!see[(size_t)r * n + j]) continue;
                    double p = exp(sc[j] - mx);
                    sum += p;
                    for (int i = 0; i < hd; i++) att[(size_t)r * qd + h * hd + i] += p * v[(size_t)j * kvd + g * hd + i];
                }
                for (int i = 0; i < hd; i++) att[(size_t)r * qd + h * hd + i] /= sum;
            }
        for (int r = 0; r < n; r++) {
            ref_matvec(tmp, L->wo, att + (size_t)r * qd, d, qd);
            for (int i = 0; i < d; i++) x[(size_t)r * d + i] += tmp[i];
            ref_rmsnorm(xb + (size_t)r * d, x + (size_t)r * d, L->ffn_norm, d);
            double* g = tmp;
            double* u = tmp + s->ff;
            ref_matvec(g, L->gate, xb + (size_t)r * d, s->ff, d);
            ref_matvec(u, L->up, xb + (size_t)r * d, s->ff, d);
            for (int i = 0; i < s->ff; i++) g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            double* o = tmp + 2 * s->ff;
            ref_matvec(o, L->down, g, d, s->ff);
            for (int i = 0; i < d; i++) x[(size_t)r * d + i] += o[i];
        }
    }
    for (int r = 0; r < n; r++) {
        ref_rmsnorm(xb + (size_t)r * d, x + (size_t)r * d, m->out_norm, d);
        ref_matvec(logits + (size_t)r * s->vocab, m->out, xb + (size_t)r * d, s->vocab, d);
    }
    free(x); free(xb); free(q); free(k); free(v); free(att); free(tmp); free(sc);
}

static double nmse(const float* a, const double* b, size_t n, double* max_err) {
    double num = 0, den = 0;
    *max_err = 0;
    for (size_t i = 0; i < n; i++) {
        double e = a[i] - b[i];
        num += e * e;
        den += b[i] * b[i];
        if (fabs(e) > *max_err) *max_err = fabs(e);
    }
    return den > 0 ? num / den : num;
}

// ---- helpers around the library

typedef struct env { lw_backend* be; lw_ctx* ctx; } env;

static int env_open(env* e, lw_model* m, int threads, lw_type kv_type, int page_size) {
    lw_backend_desc bd;
    memset(&bd, 0, sizeof bd);
    bd.kind = LW_BACKEND_CPU;
    bd.n_threads = threads;
    lw_ctx_desc cd;
    memset(&cd, 0, sizeof cd);
    cd.kv_type = kv_type;
    cd.kv_page_size = page_size;
    cd.kv_tokens = 1024;
    cd.max_seqs = 8;
    return lw_backend_create(&e->be, &bd) == LW_OK && lw_ctx_create(&e->ctx, m, e->be, &cd) == LW_OK;
}
static void env_close(env* e) { lw_ctx_free(e->ctx); lw_backend_free(e->be); }

static lw_row row(lw_seq s, int token, int pos, int logits, int commit) {
    lw_row r;
    r.token = token; r.position = pos; r.seq = s; r.wants_logits = (uint8_t)logits; r.commits = (uint8_t)commit;
    return r;
}

static lw_result forward(lw_ctx* ctx, const lw_row* rows, int n, const lw_seq_mask* masks, int n_masks,
                         const uint8_t* skip, float* logits) {
    lw_batch b;
    memset(&b, 0, sizeof b);
    b.rows = rows; b.n_rows = n; b.masks = masks; b.n_masks = n_masks; b.skip_layers = skip; b.logits = logits;
    return lw_ctx_forward(ctx, &b);
}

// ---- the shapes: odd widths, GQA 1:1, 2:1, 4:1, head dims 8 to 128, both RoPE styles, every type

static const shape shapes[] = {
    { "llama", 40, 2, 5, 5, 8, 72, 300, 0, LW_TYPE_F32, 0 },     // 1:1, head dim 8, odd width
    { "llama", 40, 2, 5, 5, 8, 72, 300, 0, LW_TYPE_F16, 1 },
    { "llama", 40, 2, 5, 5, 8, 72, 300, 0, LW_TYPE_BF16, 0 },
    { "qwen2", 72, 2, 6, 3, 12, 88, 257, 8, LW_TYPE_F32, 0 },    // 2:1, NeoX, biases, partial RoPE
    { "qwen2", 72, 2, 6, 3, 12, 88, 257, 0, LW_TYPE_F16, 1 },
    { "llama", 96, 2, 4, 2, 24, 160, 300, 0, LW_TYPE_Q8_0, 0 },  // 2:1, head dim 24
    { "llama", 96, 2, 4, 2, 24, 160, 300, 0, LW_TYPE_Q4_0, 1 },
    { "llama", 128, 1, 8, 2, 16, 96, 200, 0, LW_TYPE_Q8_0, 1 },  // 4:1
    { "qwen2", 128, 1, 8, 2, 16, 96, 200, 0, LW_TYPE_Q4_0, 0 },
    { "llama", 256, 1, 2, 1, 128, 96, 150, 0, LW_TYPE_F16, 0 },  // head dim 128
    { "llama", 64, 2, 4, 4, 8, 64, 300, 0, LW_TYPE_F32, 0 },     // q_dim 32 != width 64
    { "llama", 256, 2, 4, 2, 64, 512, 300, 0, LW_TYPE_Q4_K, 0 }, // K-quants: widths of whole super-blocks
    { "qwen2", 256, 1, 4, 1, 64, 768, 200, 0, LW_TYPE_Q6_K, 1 },
};

// One scenario against the reference: a causal prompt prefill (all logits), then a decode row.
static void check_shape(const shape* s, lw_type kv_type, double bound) {
    ref_model m;
    LWT_REQUIRE(build_model(&m, *s), "model %s/%s builds: %s", s->arch, lw_type_get_info(s->type).name, lw_last_error());
    env e;
    LWT_REQUIRE(env_open(&e, m.model, 2, kv_type, 4), "context: %s", lw_last_error());
    enum { N = 13 };
    int tok[N], pos[N];
    uint8_t see[N * N];
    for (int i = 0; i < N; i++) { tok[i] = (i * 37 + 5) % s->vocab; pos[i] = i; }
    for (int i = 0; i < N; i++) for (int j = 0; j < N; j++) see[i * N + j] = j <= i;
    double* ref = (double*)malloc((size_t)N * s->vocab * sizeof(double));
    ref_forward(&m, N, tok, pos, see, NULL, kv_type == LW_TYPE_F16, ref);

    lw_seq q = { 0 };
    lw_seq_create(e.ctx, &q);
    lw_row rows[N];
    for (int i = 0; i < N - 1; i++) rows[i] = row(q, tok[i], i, 1, 1);
    float* got = (float*)malloc((size_t)N * s->vocab * sizeof(float));
    LWT_REQUIRE(forward(e.ctx, rows, N - 1, NULL, 0, NULL, got) == LW_OK, "prefill: %s", lw_last_error());
    rows[0] = row(q, tok[N - 1], N - 1, 1, 1);   // one decode row against the cache
    LWT_REQUIRE(forward(e.ctx, rows, 1, NULL, 0, NULL, got + (size_t)(N - 1) * s->vocab) == LW_OK, "decode: %s", lw_last_error());
    double maxe, e2 = nmse(got, ref, (size_t)N * s->vocab, &maxe);
    // Q8_0/Q4_0 weights quantise the activations too: a 1-ulp difference in a float activation that sits
    // on a rounding half (fused multiply-adds in the vector kernels) moves it by one quantum, which shows
    // as NMSE ~1e-7; a wrong block, scale or nibble shows as 1e-3 and more.
    if (lw_type_get_info(s->type).block_size > 1 && bound < 1e-6) bound = 1e-6;
    // Q8_K's step (max|x| / 127 over 256 values) is larger: one such move shows as NMSE up to ~1e-4.
    if (lw_type_get_info(s->type).block_size == 256 && bound < 3e-4) bound = 3e-4;
    LWT_CHECK(e2 < bound, "%s %s kv %s: NMSE %.3g (bound %.0e), max error %.3g", s->arch, lw_type_get_info(s->type).name,
              lw_type_get_info(kv_type).name, e2, bound, maxe);
    printf("  %-5s %-4s dim %3d heads %d/%d hd %3d kv %s: NMSE %.2e max err %.2e\n", s->arch, lw_type_get_info(s->type).name,
           s->dim, s->heads, s->kv_heads ? s->kv_heads : s->heads, s->head_dim, lw_type_get_info(kv_type).name, e2, maxe);
    free(ref); free(got);
    env_close(&e);
    free_model(&m);
}

static void test_reference_all_shapes_f32_kv(void) {
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_shape(&shapes[i], LW_TYPE_F32, 1e-11);
}
static void test_reference_all_shapes_f16_kv(void) {
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_shape(&shapes[i], LW_TYPE_F16, 1e-8);
}

// Masks and committed entries: a causal prompt of P committed rows, then M scratch rows (not committed)
// with the given mask; compared with the reference's visibility matrix over all P + M rows.
static void check_mask(lw_mask_kind kind, int block, const uint8_t* allow_m, const uint8_t* skip) {
    ref_model m;
    shape s = { "llama", 48, 3, 4, 2, 12, 80, 200, 0, LW_TYPE_F32, 0 };
    LWT_REQUIRE(build_model(&m, s), "model builds");
    env e;
    LWT_REQUIRE(env_open(&e, m.model, 2, LW_TYPE_F32, 4), "context");
    enum { P = 6, M = 5, N = P + M };
    int tok[N], pos[N];
    for (int i = 0; i < N; i++) { tok[i] = (i * 53 + 11) % s.vocab; pos[i] = i; }
    if (kind == LW_MASK_EXPLICIT) { pos[P + 3] = P + 1; pos[P + 4] = P + 2; }   // a second branch at the same positions (a tree)
    uint8_t see[N * N];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            int v;
            if (j < P) v = i >= P || j <= i;                         // committed prompt: causal, seen by all scratch rows
            else if (i < P) v = 0;
            else {
                int a = i - P, b = j - P;
                v = kind == LW_MASK_CAUSAL ? pos[j] <= pos[i] : kind == LW_MASK_FULL ? 1
                  : kind == LW_MASK_BLOCK ? pos[j] / block <= pos[i] / block : allow_m[a * M + b];
            }
            see[i * N + j] = (uint8_t)v;
        }
    double* ref = (double*)malloc((size_t)N * s.vocab * sizeof(double));
    ref_forward(&m, N, tok, pos, see, skip, 0, ref);
    lw_seq q = { 0 };
    lw_seq_create(e.ctx, &q);
    lw_row rows[N];
    float* got = (float*)malloc((size_t)N * s.vocab * sizeof(float));
    for (int i = 0; i < P; i++) rows[i] = row(q, tok[i], pos[i], 1, 1);
    LWT_REQUIRE(forward(e.ctx, rows, P, NULL, 0, skip, got) == LW_OK, "prompt: %s", lw_last_error());
    for (int i = 0; i < M; i++) rows[i] = row(q, tok[P + i], pos[P + i], 1, 0);
    lw_seq_mask mk;
    memset(&mk, 0, sizeof mk);
    mk.seq = q; mk.kind = kind; mk.block_size = block; mk.allow = allow_m;
    LWT_REQUIRE(forward(e.ctx, rows, M, &mk, 1, skip, got + (size_t)P * s.vocab) == LW_OK, "masked rows: %s", lw_last_error());
    int len = -1;
    lw_seq_length(e.ctx, q, &len);
    LWT_CHECK(len == P, "scratch rows commit nothing (length %d, want %d)", len, P);
    double maxe, e2 = nmse(got, ref, (size_t)N * s.vocab, &maxe);
    LWT_CHECK(e2 < 1e-11, "mask kind %d: NMSE %.3g, max error %.3g", (int)kind, e2, maxe);
    free(ref); free(got);
    env_close(&e);
    free_model(&m);
}

static void test_mask_causal(void) { check_mask(LW_MASK_CAUSAL, 0, NULL, NULL); }
static void test_mask_full(void) { check_mask(LW_MASK_FULL, 0, NULL, NULL); }
static void test_mask_block(void) { check_mask(LW_MASK_BLOCK, 4, NULL, NULL); }
static void test_mask_explicit_tree(void) {
    // rows 0,1,2 a chain; rows 3 and 4 are alternatives to rows 1 and 2 on a second branch from row 0
    static const uint8_t allow[25] = {
        1, 0, 0, 0, 0,
        1, 1, 0, 0, 0,
        1, 1, 1, 0, 0,
        1, 0, 0, 1, 0,
        1, 0, 0, 1, 1 };
    check_mask(LW_MASK_EXPLICIT, 0, allow, NULL);
}
static void test_skip_layers(void) {
    static const uint8_t skip[3] = { 0, 1, 0 };
    check_mask(LW_MASK_CAUSAL, 0, NULL, skip);
}

// ---- batch invariance: bitwise equal logits

static const shape inv_shape = { "llama", 64, 2, 4, 2, 16, 96, 300, 0, LW_TYPE_Q8_0, 0 };

static void check_prefill_vs_single(lw_type kv_type) {
    ref_model m;
    LWT_REQUIRE(build_model(&m, inv_shape), "model builds");
    env a, b;
    LWT_REQUIRE(env_open(&a, m.model, 2, kv_type, 4) && env_open(&b, m.model, 2, kv_type, 4), "contexts");
    enum { N = 19 };
    int V = inv_shape.vocab;
    float* x = (float*)malloc((size_t)N * V * sizeof(float));
    float* y = (float*)malloc((size_t)N * V * sizeof(float));
    lw_seq sa = { 0 }, sb = { 0 };
    lw_seq_create(a.ctx, &sa);
    lw_seq_create(b.ctx, &sb);
    lw_row rows[N];
    for (int i = 0; i < N; i++) rows[i] = row(sa, (i * 7 + 3) % V, i, 1, 1);
    LWT_REQUIRE(forward(a.ctx, rows, N, NULL, 0, NULL, x) == LW_OK, "prefill");
    for (int i = 0; i < N; i++) {
        lw_row r1 = row(sb, (i * 7 + 3) % V, i, 1, 1);
        LWT_REQUIRE(forward(b.ctx, &r1, 1, NULL, 0, NULL, y + (size_t)i * V) == LW_OK, "row %d", i);
    }
    LWT_CHECK(memcmp(x, y, (size_t)N * V * sizeof(float)) == 0, "prefill of %d rows == the same rows one at a time (kv %s)", N,
              lw_type_get_info(kv_type).name);
    free(x); free(y);
    env_close(&a); env_close(&b);
    free_model(&m);
}
static void test_invariance_prefill_vs_single_f32(void) { check_prefill_vs_single(LW_TYPE_F32); }
static void test_invariance_prefill_vs_single_f16(void) { check_prefill_vs_single(LW_TYPE_F16); }

// Three sequences with different prompts: prefilled together and decoded together, vs each alone;
// and the same with 1 and 3 threads.
static void run_three(lw_model* model, int threads, int together, float* out /* [3][steps][V] */, int steps) {
    env e;
    if (!env_open(&e, model, threads, LW_TYPE_F32, 4)) { LWT_CHECK(0, "context"); return; }
    int V = inv_shape.vocab, lens[3] = { 5, 9, 2 };
    lw_seq s[3] = { { 0 }, { 0 }, { 0 } };
    for (int k = 0; k < 3; k++) lw_seq_create(e.ctx, &s[k]);
    lw_row rows[32];
    float* logits = (float*)malloc((size_t)32 * V * sizeof(float));
    int n = 0;
    for (int k = 0; k < 3; k++) {   // prompts
        for (int i = 0; i < lens[k]; i++) rows[n++] = row(s[k], (k * 31 + i * 11 + 1) % V, i, i == lens[k] - 1, 1);
        if (!together || k == 2) {
            LWT_CHECK(forward(e.ctx, rows, n, NULL, 0, NULL, logits) == LW_OK, "prompt");
            n = 0;
        }
    }
    for (int t = 0; t < steps; t++) {   // decode: each step one row per sequence, token from a fixed rule
        for (int k = 0; k < 3; k++) {
            lw_row r1 = row(s[k], (t * 13 + k * 5 + 2) % V, lens[k] + t, 1, 1);
            if (together) rows[k] = r1;
            else {
                LWT_CHECK(forward(e.ctx, &r1, 1, NULL, 0, NULL, out + ((size_t)k * steps + t) * V) == LW_OK, "alone");
            }
        }
        if (together) {
            LWT_CHECK(forward(e.ctx, rows, 3, NULL, 0, NULL, logits) == LW_OK, "together");
            for (int k = 0; k < 3; k++) memcpy(out + ((size_t)k * steps + t) * V, logits + (size_t)k * V, (size_t)V * sizeof(float));
        }
    }
    free(logits);
    env_close(&e);
}

static void test_invariance_batched_vs_alone_and_threads(void) {
    ref_model m;
    LWT_REQUIRE(build_model(&m, inv_shape), "model builds");
    enum { STEPS = 6 };
    size_t sz = (size_t)3 * STEPS * inv_shape.vocab;
    float* alone = (float*)malloc(sz * sizeof(float));
    float* together = (float*)malloc(sz * sizeof(float));
    float* t1 = (float*)malloc(sz * sizeof(float));
    float* t3 = (float*)malloc(sz * sizeof(float));
    run_three(m.model, 2, 0, alone, STEPS);
    run_three(m.model, 2, 1, together, STEPS);
    run_three(m.model, 1, 1, t1, STEPS);
    run_three(m.model, 3, 1, t3, STEPS);
    LWT_CHECK(memcmp(alone, together, sz * sizeof(float)) == 0, "three sequences batched == each alone");
    LWT_CHECK(memcmp(together, t1, sz * sizeof(float)) == 0, "2 threads == 1 thread");
    LWT_CHECK(memcmp(together, t3, sz * sizeof(float)) == 0, "2 threads == 3 threads");
    free(alone); free(together); free(t1); free(t3);
    free_model(&m);
}

// Pages given back by truncation and reused by another sequence give the same results as fresh ones.
static void test_kv_truncate_and_reuse(void) {
    ref_model m;
    LWT_REQUIRE(build_model(&m, inv_shape), "model builds");
    int V = inv_shape.vocab;
    env e, f;
    LWT_REQUIRE(env_open(&e, m.model, 2, LW_TYPE_F32, 4) && env_open(&f, m.model, 2, LW_TYPE_F32, 4), "contexts");
    int64_t free0 = lw_ctx_kv_free_tokens(e.ctx);
    lw_seq a = { 0 }, b = { 0 }, c = { 0 };
    lw_seq_create(e.ctx, &a);
    lw_row rows[16];
    float* x = (float*)malloc((size_t)16 * V * sizeof(float));
    float* y = (float*)malloc((size_t)16 * V * sizeof(float));
    for (int i = 0; i < 14; i++) rows[i] = row(a, (i * 3 + 1) % V, i, 0, 1);   // fill 4 pages with junk
    LWT_REQUIRE(forward(e.ctx, rows, 14, NULL, 0, NULL, x) == LW_OK, "fill");
    LWT_CHECK(lw_ctx_kv_free_tokens(e.ctx) == free0 - 16, "14 positions take 4 pages of 4");
    LWT_CHECK(lw_seq_truncate(e.ctx, a, 5) == LW_OK, "truncate");
    LWT_CHECK(lw_ctx_kv_free_tokens(e.ctx) == free0 - 8, "truncated to 5 positions keeps 2 pages");
    // continue a from 5 with new tokens; compare with f where the same 5 + new tokens run fresh
    for (int i = 0; i < 7; i++) rows[i] = row(a, (i * 17 + 4) % V, 5 + i, 1, 1);
    LWT_REQUIRE(forward(e.ctx, rows, 7, NULL, 0, NULL, x) == LW_OK, "continue after truncation");
    lw_seq_create(f.ctx, &c);
    for (int i = 0; i < 5; i++) rows[i] = row(c, (i * 3 + 1) % V, i, 0, 1);
    for (int i = 0; i < 7; i++) rows[5 + i] = row(c, (i * 17 + 4) % V, 5 + i, 1, 1);
    LWT_REQUIRE(forward(f.ctx, rows, 12, NULL, 0, NULL, y) == LW_OK, "fresh");
    LWT_CHECK(memcmp(x, y, (size_t)7 * V * sizeof(float)) == 0, "continuing after truncation == a fresh run");
    // free a, let b take its pages (stale contents), compare with a fresh context
    LWT_CHECK(lw_seq_free(e.ctx, a) == LW_OK, "free");
    LWT_CHECK(lw_ctx_kv_free_tokens(e.ctx) == free0, "all pages back");
    LWT_CHECK(lw_seq_length(e.ctx, a, &(int){0}) == LW_INVALID_SEQ, "a freed handle is refused");
    lw_seq_create(e.ctx, &b);
    LWT_CHECK(b.id != a.id, "a recycled slot gets a new handle");
    for (int i = 0; i < 9; i++) rows[i] = row(b, (i * 29 + 7) % V, i, 1, 1);
    LWT_REQUIRE(forward(e.ctx, rows, 9, NULL, 0, NULL, x) == LW_OK, "b");
    lw_seq_free(f.ctx, c);
    lw_seq_create(f.ctx, &c);
    for (int i = 0; i < 9; i++) rows[i] = row(c, (i * 29 + 7) % V, i, 1, 1);
    LWT_REQUIRE(forward(f.ctx, rows, 9, NULL, 0, NULL, y) == LW_OK, "c");
    LWT_CHECK(memcmp(x, y, (size_t)9 * V * sizeof(float)) == 0, "reused pages == fresh pages");
    free(x); free(y);
    env_close(&e); env_close(&f);
    free_model(&m);
}

// The stats of a forward pass follow from the shapes.
static void test_forward_stats(void) {
    ref_model m;
    LWT_REQUIRE(build_model(&m, inv_shape), "model builds");
    env e;
    LWT_REQUIRE(env_open(&e, m.model, 1, LW_TYPE_F32, 4), "context");
    lw_seq q = { 0 };
    lw_seq_create(e.ctx, &q);
    lw_row rows[3];
    for (int i = 0; i < 3; i++) rows[i] = row(q, i + 1, i, i == 2, 1);
    float logits[300];
    lw_forward_stats st;
    lw_batch b;
    memset(&b, 0, sizeof b);
    b.rows = rows; b.n_rows = 3; b.logits = logits; b.stats = &st;
    LWT_REQUIRE(lw_ctx_forward(e.ctx, &b) == LW_OK, "forward");
    const shape* s = &inv_shape;
    double params = 0;
    int qd = s->heads * s->head_dim, kvd = s->kv_heads * s->head_dim;
    params = (double)s->layers * ((double)s->dim * (qd + 2 * kvd) + (double)qd * s->dim + 3.0 * s->dim * s->ff);
    double mat_flops = 2.0 * 3 * params + 2.0 * s->dim * s->vocab;
    LWT_CHECK(st.rows == 3 && st.logit_rows == 1, "rows %d, logit rows %d", st.rows, st.logit_rows);
    LWT_CHECK(st.flops >= mat_flops && st.flops < mat_flops * 1.2, "flops %.0f vs matrix flops %.0f", st.flops, mat_flops);
    LWT_CHECK(st.kv_bytes_written == 3.0 * s->layers * 2 * kvd * 4, "kv bytes written %.0f", st.kv_bytes_written);
    LWT_CHECK(st.kv_bytes_read == 0, "nothing cached before: %.0f", st.kv_bytes_read);
    LWT_CHECK(st.weight_bytes > params * 34.0 / 32.0 && st.seconds > 0, "weight bytes %.0f", st.weight_bytes);
    env_close(&e);
    free_model(&m);
}

// ---- files written by tools/mkmodel in the K-quants against their dequantised F32 version
//
// $BUILD/mkmodel (BUILD defaults to "build"; skipped when it is not there) writes a random model in
// Q4_K, Q6_K and the Q4_K_M mix; the test loads it, writes the same model with every tensor dequantised
// to F32, and runs the same prompt (a prefill of 11 rows, then 3 decode rows) through both. The only
// difference left is the quantisation of the activations to Q8_K that K-quant weights multiply
// (relative step about 1/127 of a block's largest value), so the logits agree within
//     NMSE <= 1e-3   (measured: 4e-5 to 2e-4; a wrong block layout, scale or minimum gives 1e-2 and more).

// A copy of every key of g (arrays and strings as they are) into w.
static void copy_kvs(gw_file* w, const lw__gguf* g) {
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const lw__gguf_kv* kv = &g->kv[i];
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.ptr);
        if (kv->type == LW__GGUF_STRING) {
            char* v = (char*)malloc((size_t)kv->strings[0].len + 1);
            memcpy(v, kv->strings[0].ptr, (size_t)kv->strings[0].len);
            v[kv->strings[0].len] = 0;
            gw_kv_str(w, key, v);
            free(v);
        } else if (kv->type == LW__GGUF_ARRAY && kv->elem_type == LW__GGUF_STRING) {
            const char** strs = (const char**)malloc((size_t)kv->count * sizeof(char*) + 1);
            uint64_t* lens = (uint64_t*)malloc((size_t)kv->count * sizeof(uint64_t) + 1);
            for (uint64_t j = 0; j < kv->count; j++) { strs[j] = kv->strings[j].ptr; lens[j] = kv->strings[j].len; }
            gw_kv_arr_str(w, key, strs, lens, kv->count);
            free(strs); free(lens);
        } else if (kv->type == LW__GGUF_ARRAY) {
            gw_kv_arr(w, key, kv->elem_type, kv->data, kv->count, lw__gguf_value_size[kv->elem_type]);
        } else {
            gw_kv_raw(w, key, kv->type, kv->data, lw__gguf_value_size[kv->type]);
        }
    }
}

// logits [rows][vocab] of a fixed prompt: 11 rows of prefill, then 3 decode rows
static int run_fixed_prompt(lw_model* model, int vocab, float* logits) {
    env e;
    if (!env_open(&e, model, 2, LW_TYPE_F32, 8)) return 0;
    lw_seq q = { 0 };
    lw_seq_create(e.ctx, &q);
    lw_row rows[11];
    for (int i = 0; i < 11; i++) rows[i] = row(q, (i * 53 + 7) % vocab, i, 1, 1);
    int ok = forward(e.ctx, rows, 11, NULL, 0, NULL, logits) == LW_OK;
    for (int i = 11; ok && i < 14; i++) {
        rows[0] = row(q, (i * 53 + 7) % vocab, i, 1, 1);
        ok = forward(e.ctx, rows, 1, NULL, 0, NULL, logits + (size_t)i * vocab) == LW_OK;
    }
    env_close(&e);
    return ok;
}

static void test_mkmodel_kquants_vs_dequantised(void) {
    const char* build = getenv("BUILD");
    if (!build || !*build) build = "build";
    char exe[512], path[600], cmd[2048];
    snprintf(exe, sizeof exe, "%s/mkmodel", build);
    FILE* f = fopen(exe, "rb");
    if (!f) LWT_SKIP("%s is not built", exe);
    fclose(f);
    static const char* const kinds[] = { "q4_k", "q6_k", "q4_k_m" };
    for (int t = 0; t < 3; t++) {
        snprintf(path, sizeof path, "%s/test_forward_%s_%p.gguf", build, kinds[t], (void*)&path);
        // 256 wide (Q4_K_M: 8 layers, so attn_v / ffn_down of layers 0, 3, 6, 7 are Q6_K), head 64, GQA 2:1
        snprintf(cmd, sizeof cmd, "%s -o %s --dim 256 --layers %d --heads 4 --kv-heads 2 --ff 768 --vocab 320 --type %s %s --seed %d 2>/dev/null",
                 exe, path, t == 2 ? 8 : 2, kinds[t], t == 1 ? "--tied" : "", 11 + t);
        LWT_REQUIRE(system(cmd) == 0, "%s", cmd);
        lw_model* mq = NULL;
        lw_result r = lw_model_load(&mq, path, NULL);
        remove(path);
        LWT_REQUIRE(r == LW_OK, "%s loads: %s", kinds[t], lw_last_error());
        // the same model with every tensor dequantised to F32
        const lw__gguf* g = &mq->gguf;
        gw_file w = gw_begin(3);
        copy_kvs(&w, g);
        int n_k = 0, n_q6 = 0;
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            const lw__gguf_tensor* ti = &g->tensors[i];
            char name[256];
            snprintf(name, sizeof name, "%.*s", (int)ti->name.len, ti->name.ptr);
            int64_t n = ti->ne[0] * ti->ne[1] * ti->ne[2] * ti->ne[3];
            float* x = (float*)malloc(sizeof(float) * (size_t)n);
            LWT_REQUIRE(lw_dequantize((lw_type)ti->type, ti->data, x, n) == LW_OK, "%s dequantises", name);
            n_k += ti->type == LW_TYPE_Q4_K || ti->type == LW_TYPE_Q6_K;
            n_q6 += ti->type == LW_TYPE_Q6_K;
            gw_tensor(&w, name, LW_TYPE_F32, (uint32_t)ti->n_dims, ti->ne, x, sizeof(float) * (size_t)n);
            free(x);
        }
        gw_finish(&w);
        lw_model* mf = NULL;
        LWT_REQUIRE(lw_model_load_memory(&mf, w.data, w.size, NULL) == LW_OK, "dequantised model loads: %s", lw_last_error());
        const int vocab = 320;
        float* a = (float*)malloc(sizeof(float) * 14 * vocab);
        float* b = (float*)malloc(sizeof(float) * 14 * vocab);
        LWT_REQUIRE(run_fixed_prompt(mq, vocab, a) && run_fixed_prompt(mf, vocab, b), "forward: %s", lw_last_error());
        double num = 0, den = 0;
        for (int i = 0; i < 14 * vocab; i++) { num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]); den += (double)b[i] * b[i]; }
        double e2 = num / den;
        LWT_CHECK(n_k >= 7 * (t == 2 ? 8 : 2), "%s: the matrices are K-quants (%d)", kinds[t], n_k);
        LWT_CHECK(t != 2 || n_q6 == 2 * 4 + 1, "q4_k_m: Q6_K for attn_v and ffn_down of 4 of 8 layers and the head (%d)", n_q6);
        LWT_CHECK(e2 <= 1e-3, "%s: NMSE against the dequantised F32 model %.3g > 1e-3", kinds[t], e2);
        printf("  mkmodel --type %-6s: %d K-quant tensors (%d Q6_K); logits against the dequantised F32 model: NMSE %.2e\n", kinds[t],
               n_k, n_q6, e2);
        free(a); free(b);
        lw_model_free(mf);
        gw_free(&w);
        lw_model_free(mq);
    }
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    LWT_RUN(test_reference_all_shapes_f32_kv);
    LWT_RUN(test_reference_all_shapes_f16_kv);
    LWT_RUN(test_mask_causal);
    LWT_RUN(test_mask_full);
    LWT_RUN(test_mask_block);
    LWT_RUN(test_mask_explicit_tree);
    LWT_RUN(test_skip_layers);
    LWT_RUN(test_invariance_prefill_vs_single_f32);
    LWT_RUN(test_invariance_prefill_vs_single_f16);
    LWT_RUN(test_invariance_batched_vs_alone_and_threads);
    LWT_RUN(test_kv_truncate_and_reuse);
    LWT_RUN(test_forward_stats);
    LWT_RUN(test_mkmodel_kquants_vs_dequantised);
    return lwt_finish();
}
