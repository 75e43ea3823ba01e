/* test_cuda - the CUDA backend against the CPU backend

   Always (any build, any machine):
     - asking for LW_BACKEND_CUDA where it was not built (no LW_CUDA) or where no device exists is
       LW_BACKEND_UNAVAILABLE with a message, never a crash or a silent CPU; LW_BACKEND_AUTO then gives
       the CPU. Where a device exists the same case checks that a missing device index is refused.
   On a GPU (built by `make cuda`, a device present; otherwise every case below reports skipped):
     1. Matrix products of every weight type on random data of awkward sizes, through the backend's own
        dispatch (lw__cuda_test_matmul: matrix-vector kernels for n <= 8 rows, cuBLAS above) against the
        CPU's definition (activations quantised to the type's vec_type, the traits' dot products).
        Rows per product 1 to 64 (matrix-vector up to 8 rows, and up to 32 in launches of 8 for all but F16
        weights; cuBLAS beyond). Bounds (NMSE = sum (gpu - cpu)^2 / sum cpu^2): matrix-vector <= 1e-10 (the same integer dots and
        the same products; only the order of the float sums differs: expected ~1e-14); GEMM <= 2e-6
        (weights and activations rounded to F16: expected ~1e-7).
     2. Full forwards on random models of awkward shapes (every type; llama and qwen2, biases, NeoX and
        partial RoPE, GQA 1:1 to 4:1, head dims 8 to 128, tied output; F32 and F16 KV): a prefill, decode
        rows and a two-sequence batch, once in chunks of at most 8 rows (matrix-vector path everywhere)
        and once with a 40-row prefill (GEMM path). Logits bounds: matrix-vector path 1e-9 for F32/F16/
        BF16 weights, 1e-6 for Q8_0/Q4_0 (a float activation a rounding away from a Q8_0 half step
        moves one quantum), 3e-4 for Q4_K/Q6_K (Q8_K's larger step; the CPU's own test_forward bounds);
        with GEMM rows 1e-4, 1e-3 for the K-quants.
     3. Every mask kind (causal, full, block, explicit tree) over a committed prompt, skipped layers, and
        four sequences with four different masks in one batch (8 rows: matrix-vector; 16 rows: GEMM).
     4. The KV pool: a forked prefix (shared pages, copied on the first write: kv_copy), truncation and
        reuse, and decoding at position ~1500 (attention split over many blocks, then merged).
     5. Every decode mode through lw_engine (ar, spec with a draft model, selfspec, lookup, lookahead,
        masked diffusion, block diffusion), alone and all at once in one engine: the same greedy ids as
        the CPU up to the first token whose CPU logits have a top-2 margin below 1e-3, and the logits of
        each token within NMSE 1e-4 of the CPU's (1e-3 with Q8_0 weights: on the GEMM path the activations'
        Q8_0 quantisation sees inputs that differ in the 4th digit, and a value moved across a half step
        moves a whole quantum; diffusion events carry no logits: ids must match).
     6. An impossible KV pool (1 TiB) is LW_OUT_OF_MEMORY with a message, and the backend keeps working.
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include "../tools/gguf_writer.h"
#include "lwtest.h"
#include <math.h>

#ifdef LW_CUDA
// llmwall_cuda.cu's helpers for tests (deliberately not in llmwall.h)
#ifdef __cplusplus
extern "C" {
#endif
const char* lw__cuda_last_error(void* self);
lw_result   lw__cuda_test_matmul(void* self, int type, int k, int m, int n, const void* w, const float* x, float* y);
#ifdef __cplusplus
}
#endif
#endif

static lw_backend* gpu;            // NULL: no CUDA device (or not built with LW_CUDA)
static lw_backend* cpu;
static char        no_gpu[600];    // why the GPU cases skip

static const char* gpu_detail(void) {
#ifdef LW_CUDA
    static char buf[1200];
    snprintf(buf, sizeof buf, "%s [cuda: %s]", lw_last_error(), gpu ? lw__cuda_last_error(gpu->self) : "");
    return buf;
#else
    return lw_last_error();
#endif
}

#define NEED_GPU() do { if (!gpu) LWT_SKIP("%s", no_gpu); } while (0)

static double nmse(const float* got, const float* want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)got[i] - (double)want[i];
        num += e * e;
        den += (double)want[i] * want[i];
    }
    return den > 0 ? num / den : num;
}

static uint64_t rng = 0x243F6A8885A308D3ull;
static float frand(void) {   // [-1, 1)
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((double)(rng >> 11) * 0x1.0p-52 - 1.0);
}

// ---- 0. no device, no build: an error code, not a crash and not the CPU

static void test_unavailable_is_an_error(void) {
    lw_backend_desc d;
    memset(&d, 0, sizeof d);
    d.kind = LW_BACKEND_CUDA;
    lw_backend* be = (lw_backend*)(uintptr_t)1;
    lw_result r = lw_backend_create(&be, &d);
#ifndef LW_CUDA
    LWT_CHECK(r == LW_BACKEND_UNAVAILABLE, "built without LW_CUDA: %s (%d), want LW_BACKEND_UNAVAILABLE", lw_result_string(r), (int)r);
    LWT_CHECK(be == NULL, "no backend on failure");
    LWT_CHECK(strstr(lw_last_error(), "cuda") != NULL, "the message names cuda: '%s'", lw_last_error());
    snprintf(no_gpu, sizeof no_gpu, "built without LW_CUDA (make cuda builds build/cuda/test_cuda)");
#else
    if (r == LW_OK) {
        gpu = be;
        lw_backend* bad = NULL;
        d.device = 1 << 20;
        lw_result r2 = lw_backend_create(&bad, &d);
        LWT_CHECK(r2 == LW_BACKEND_UNAVAILABLE && bad == NULL, "device %d: %s, want LW_BACKEND_UNAVAILABLE", d.device, lw_result_string(r2));
        LWT_CHECK(strstr(lw_last_error(), "device") != NULL, "the message names the device: '%s'", lw_last_error());
        printf("  cuda backend '%s' on device 0\n", lw_backend_name(gpu));
    } else {
        LWT_CHECK(r == LW_BACKEND_UNAVAILABLE, "no device: %s (%d), want LW_BACKEND_UNAVAILABLE", lw_result_string(r), (int)r);
        LWT_CHECK(be == NULL, "no backend on failure");
        LWT_CHECK(strstr(lw_last_error(), "cuda backend: ") == lw_last_error() && strlen(lw_last_error()) > 14, "a message: '%s'",
                  lw_last_error());
        snprintf(no_gpu, sizeof no_gpu, "no CUDA device: %s", lw_last_error());
    }
#endif
    d.kind = LW_BACKEND_AUTO;
    d.device = 0;
    lw_backend* au = NULL;
    r = lw_backend_create(&au, &d);
    LWT_REQUIRE(r == LW_OK, "auto: %s", lw_last_error());
    LWT_CHECK(strcmp(lw_backend_name(au), gpu ? "cuda" : "cpu") == 0, "auto picks %s, got %s", gpu ? "cuda" : "cpu", lw_backend_name(au));
    lw_backend_free(au);
    d.kind = LW_BACKEND_CPU;
    d.n_threads = 2;
    LWT_REQUIRE(lw_backend_create(&cpu, &d) == LW_OK, "cpu backend: %s", lw_last_error());
}

// ---- 1. matrix products per type

#ifdef LW_CUDA
// y[r][j] = dot(W row j, x row r quantised to the type's vec_type): the CPU's definition of a product
static void cpu_matmul(lw_type type, int k, int m, int n, const uint8_t* w, const float* x, float* y) {
    const lw__type_traits* t = lw__traits((uint32_t)type);
    lw_type vec = t->vec_type;
    size_t xrow = lw_type_row_size(vec, k), wrow = lw_type_row_size(type, k);
    uint8_t* xq = (uint8_t*)malloc(xrow * (size_t)n);
    for (int r = 0; r < n; r++) lw__types[vec].from_float(x + (size_t)r * k, xq + (size_t)r * xrow, k);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < m; j++) y[(size_t)r * m + j] = t->dot(w + (size_t)j * wrow, xq + (size_t)r * xrow, k);
    free(xq);
}
#endif

static void test_matmul_every_type(void) {
    NEED_GPU();
#ifdef LW_CUDA
    static const lw_type types[] = { LW_TYPE_F32, LW_TYPE_F16, LW_TYPE_BF16, LW_TYPE_Q8_0, LW_TYPE_Q4_0, LW_TYPE_Q4_K, LW_TYPE_Q6_K };
    static const int ks_float[] = { 1, 7, 40, 301, 4104 }, ks_q[] = { 32, 96, 4128 }, ks_k[] = { 256, 768, 2304 };
    static const int ms[] = { 1, 37, 300 }, ns[] = { 1, 2, 3, 5, 8, 9, 17, 33, 64 };
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        int bs = lw_type_get_info(types[t]).block_size;
        const int* ks = bs == 1 ? ks_float : bs == 32 ? ks_q : ks_k;
        int nk = bs == 1 ? 5 : 3;
        double worst_mv = 0, worst_gemm = 0;
        for (int ki = 0; ki < nk; ki++)
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++)
                for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                    int k = ks[ki], m = ms[mi], n = ns[ni];
                    size_t wbytes = lw_type_row_size(types[t], k) * (size_t)m;
                    float* wf = (float*)malloc(sizeof(float) * (size_t)k * m);
                    float* x = (float*)malloc(sizeof(float) * (size_t)k * n);
                    float* want = (float*)malloc(sizeof(float) * (size_t)n * m);
                    float* got = (float*)malloc(sizeof(float) * (size_t)n * m);
                    uint8_t* w = (uint8_t*)malloc(wbytes);
                    for (size_t i = 0; i < (size_t)k * m; i++) wf[i] = frand() * 0.1f;
                    for (size_t i = 0; i < (size_t)k * n; i++) x[i] = frand() * (i % 97 == 0 ? 8.0f : 1.0f);   // some outliers
                    lw_quantize(types[t], wf, w, (int64_t)k * m);
                    cpu_matmul(types[t], k, m, n, w, x, want);
                    lw_result r = lw__cuda_test_matmul(gpu->self, types[t], k, m, n, w, x, got);
                    LWT_CHECK(r == LW_OK, "%s k %d m %d n %d: %s", lw_type_get_info(types[t]).name, k, m, n, gpu_detail());
                    if (r == LW_OK) {
                        // the backend's rule: matrix-vector up to 8 rows, and up to 32 for all but F16 weights
                        int mv = n <= 8 || (n <= 32 && types[t] != LW_TYPE_F16);
                        double e = nmse(got, want, (size_t)n * m), bound = mv ? 1e-10 : 2e-6;
                        LWT_CHECK(e <= bound, "%s k %d m %d n %d (%s): NMSE %.3g > %.0e", lw_type_get_info(types[t]).name, k, m, n,
                                  mv ? "matrix-vector" : "GEMM", e, bound);
                        if (mv) worst_mv = fmax(worst_mv, e); else worst_gemm = fmax(worst_gemm, e);
                    }
                    free(wf); free(x); free(want); free(got); free(w);
                }
        printf("  %-4s worst NMSE: matrix-vector %.2e, GEMM %.2e\n", lw_type_get_info(types[t]).name, worst_mv, worst_gemm);
    }
#endif
}

// ---- random models

typedef struct mspec {
    const char* arch;       // llama, qwen2 (biases, NeoX), llada (bidirectional), ...
    int  dim, layers, heads, kv_heads, head_dim, ff, vocab, rope_dim;
    lw_type type;
    int  tied, tokenizer;   // tokenizer: a byte-level vocabulary (with a mask token for the diffusion archs)
    int  ctx, non_causal, block_size;
    float spread;           // scale of the output head (logit spread); 0: 1
    uint64_t seed;
} mspec;

typedef struct tmodel { gw_file file; lw_model* model; } tmodel;

static void put_matrix(gw_file* w, const char* name, lw_type type, int cols, int rows, float scale, float center) {
    size_t n = (size_t)cols * rows;
    float* x = (float*)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = center + scale * frand();
    int64_t ne[2] = { cols, rows };
    if (type == LW_TYPE_F32 || rows == 1) {
        gw_tensor(w, name, LW_TYPE_F32, rows > 1 ? 2 : 1, ne, x, n * sizeof(float));
    } else {
        size_t bytes = lw_type_row_size(type, cols) * (size_t)rows;
        void* q = malloc(bytes);
        lw_quantize(type, x, q, (int64_t)n);
        gw_tensor(w, name, (uint32_t)type, 2, ne, q, bytes);
        free(q);
    }
    free(x);
}

static int make_model(tmodel* out, mspec s) {
    memset(out, 0, sizeof *out);
    if (!s.kv_heads) s.kv_heads = s.heads;
    if (!s.head_dim) s.head_dim = s.dim / s.heads;
    if (!s.ctx) s.ctx = 256;
    if (s.spread == 0) s.spread = 1.0f;
    rng = s.seed * 0x9E3779B97F4A7C15ull + 0x1234567ull;
    int qd = s.heads * s.head_dim, kvd = s.kv_heads * s.head_dim, bias = !strcmp(s.arch, "qwen2") || !strcmp(s.arch, "dream");
    gw_file* w = &out->file;
    *w = gw_begin(3);
    char key[128], name[128];
    gw_kv_str(w, "general.architecture", s.arch);
    struct { const char* k; int v; } u32s[] = {
        { "context_length", s.ctx }, { "embedding_length", s.dim }, { "block_count", s.layers }, { "feed_forward_length", s.ff },
        { "attention.head_count", s.heads }, { "attention.head_count_kv", s.kv_heads }, { "attention.key_length", s.head_dim },
        { "attention.value_length", s.head_dim }, { "rope.dimension_count", s.rope_dim ? s.rope_dim : s.head_dim } };
    for (size_t i = 0; i < sizeof u32s / sizeof u32s[0]; i++) {
        snprintf(key, sizeof key, "%s.%s", s.arch, u32s[i].k);
        gw_kv_u32(w, key, (uint32_t)u32s[i].v);
    }
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", s.arch);
    gw_kv_f32(w, key, 1e-5f);
    if (s.non_causal) {
        snprintf(key, sizeof key, "%s.attention.causal", s.arch);
        gw_kv_bool(w, key, 0);
    }
    if (s.block_size) gw_kv_u32(w, "diffusion.block_size", (uint32_t)s.block_size);
    if (s.tokenizer) {
        char** toks = (char**)malloc((size_t)s.vocab * sizeof(char*));
        int32_t* types = (int32_t*)malloc((size_t)s.vocab * sizeof(int32_t));
        gw_byte_vocab(s.vocab, s.non_causal, toks, types);
        gw_kv_str(w, "tokenizer.ggml.model", "gpt2");
        gw_kv_str(w, "tokenizer.ggml.pre", "gpt-2");
        gw_kv_arr_str(w, "tokenizer.ggml.tokens", (const char* const*)toks, NULL, (uint64_t)s.vocab);
        gw_kv_arr(w, "tokenizer.ggml.token_type", GW_I32, types, (uint64_t)s.vocab, 4);
        gw_kv_arr_str(w, "tokenizer.ggml.merges", NULL, NULL, 0);
        gw_kv_u32(w, "tokenizer.ggml.bos_token_id", 256);
        gw_kv_u32(w, "tokenizer.ggml.eos_token_id", 257);
        if (s.non_causal) gw_kv_u32(w, "tokenizer.ggml.mask_token_id", (uint32_t)(s.vocab - 1));
        gw_free_strings(toks, s.vocab);
        free(toks);
        free(types);
    }
    float sd = 1.0f / sqrtf((float)s.dim);
    put_matrix(w, "token_embd.weight", s.type, s.dim, s.vocab, 1.0f, 0.0f);
    for (int l = 0; l < s.layers; l++) {
        struct { const char* n; int cols, rows; float scale, center; } t[] = {
            { "attn_norm.weight", s.dim, 1, 0.2f, 1.0f }, { "attn_q.weight", s.dim, qd, sd, 0 }, { "attn_k.weight", s.dim, kvd, sd, 0 },
            { "attn_v.weight", s.dim, kvd, sd, 0 }, { "attn_output.weight", qd, s.dim, 1.0f / sqrtf((float)qd), 0 },
            { "ffn_norm.weight", s.dim, 1, 0.2f, 1.0f }, { "ffn_gate.weight", s.dim, s.ff, sd, 0 }, { "ffn_up.weight", s.dim, s.ff, sd, 0 },
            { "ffn_down.weight", s.ff, s.dim, 1.0f / sqrtf((float)s.ff), 0 },
            { "attn_q.bias", qd, 1, 0.2f, 0 }, { "attn_k.bias", kvd, 1, 0.2f, 0 }, { "attn_v.bias", kvd, 1, 0.2f, 0 } };
        for (size_t i = 0; i < sizeof t / sizeof t[0] - (bias ? 0 : 3); i++) {
            snprintf(name, sizeof name, "blk.%d.%s", l, t[i].n);
            put_matrix(w, name, s.type, t[i].cols, t[i].rows, t[i].scale, t[i].center);
        }
    }
    put_matrix(w, "output_norm.weight", LW_TYPE_F32, s.dim, 1, 0.2f, 1.0f);
    if (!s.tied) put_matrix(w, "output.weight", s.type, s.dim, s.vocab, s.spread * sd, 0.0f);
    gw_finish(w);
    if (lw_model_load_memory(&out->model, w->data, w->size, NULL) != LW_OK) {
        printf("  model %s/%s: %s\n", s.arch, lw_type_get_info(s.type).name, lw_last_error());
        gw_free(w);
        return 0;
    }
    return 1;
}
static void free_model(tmodel* m) { lw_model_free(m->model); gw_free(&m->file); }

static lw_ctx* open_ctx(lw_backend* be, lw_model* m, lw_type kv_type, int page, int n_ctx) {
    lw_ctx_desc d;
    memset(&d, 0, sizeof d);
    d.kv_type = kv_type;
    d.kv_page_size = page;
    d.n_ctx = n_ctx;
    d.kv_tokens = 4 * (n_ctx ? n_ctx : 256);
    d.max_seqs = 8;
    lw_ctx* ctx = NULL;
    if (lw_ctx_create(&ctx, m, be, &d) != LW_OK) printf("  context on %s: %s\n", lw_backend_name(be), gpu_detail());
    return ctx;
}

static lw_row mkrow(lw_seq s, int token, int pos, int logits, int commit) {
    lw_row r;
    memset(&r, 0, sizeof r);
    r.token = token; r.position = pos; r.seq = s; r.wants_logits = (uint8_t)logits; r.commits = (uint8_t)commit;
    return r;
}

static lw_result run(lw_ctx* ctx, const lw_row* rows, int n, const lw_seq_mask* masks, int n_masks, const uint8_t* skip, float* logits) {
    lw_batch b;
    memset(&b, 0, sizeof b);
    b.rows = rows; b.n_rows = n; b.masks = masks; b.n_masks = n_masks; b.skip_layers = skip; b.logits = logits;
    return lw_ctx_forward(ctx, &b);
}

// One script of batches run on both backends: each step's logits compared. `seqs` of each row index
// into the script's sequences (created in both contexts).
typedef struct step { int n; lw_row rows[64]; int seq_of[64]; lw_seq_mask masks[4]; int mask_seq[4]; int n_masks; const uint8_t* skip; } step;

typedef struct pair { lw_ctx* c; lw_ctx* g; lw_seq cs[8]; lw_seq gs[8]; int n_seqs; } pair;

static int pair_open(pair* p, lw_model* m, lw_type kv, int page, int n_ctx, int n_seqs) {
    memset(p, 0, sizeof *p);
    p->c = open_ctx(cpu, m, kv, page, n_ctx);
    p->g = open_ctx(gpu, m, kv, page, n_ctx);
    p->n_seqs = n_seqs;
    for (int i = 0; p->c && p->g && i < n_seqs; i++)
        if (lw_seq_create(p->c, &p->cs[i]) != LW_OK || lw_seq_create(p->g, &p->gs[i]) != LW_OK) return 0;
    return p->c && p->g;
}
static void pair_close(pair* p) { lw_ctx_free(p->c); lw_ctx_free(p->g); }

// A model and a context on each backend with n_seqs sequences; 0 (reported, nothing left open) on failure.
static int setup(tmodel* m, pair* p, const mspec* s, lw_type kv, int page, int n_ctx, int n_seqs) {
    if (!make_model(m, *s)) { LWT_CHECK(0, "model %s/%s", s->arch, lw_type_get_info(s->type).name); return 0; }
    if (pair_open(p, m->model, kv, page, n_ctx, n_seqs)) return 1;
    LWT_CHECK(0, "contexts for %s/%s: %s", s->arch, lw_type_get_info(s->type).name, gpu_detail());
    pair_close(p);
    free_model(m);
    return 0;
}

// Runs one step on both; returns the NMSE of the logits (or -1 on an error, reported).
static double pair_step(pair* p, step* st, int n_vocab) {
    int n_logits = 0;
    for (int i = 0; i < st->n; i++) n_logits += st->rows[i].wants_logits;
    size_t nl = (size_t)(n_logits ? n_logits : 1) * n_vocab;
    float* a = (float*)calloc(nl, sizeof(float));
    float* b = (float*)calloc(nl, sizeof(float));
    double e = -1;
    for (int side = 0; side < 2; side++) {
        lw_row rows[64];
        lw_seq_mask masks[4];
        const lw_seq* seqs = side ? p->gs : p->cs;
        for (int i = 0; i < st->n; i++) { rows[i] = st->rows[i]; rows[i].seq = seqs[st->seq_of[i]]; }
        for (int i = 0; i < st->n_masks; i++) { masks[i] = st->masks[i]; masks[i].seq = seqs[st->mask_seq[i]]; }
        lw_result r = run(side ? p->g : p->c, rows, st->n, masks, st->n_masks, st->skip, side ? b : a);
        if (r != LW_OK) {
            LWT_CHECK(0, "forward on %s: %s", side ? "cuda" : "cpu", gpu_detail());
            goto out;
        }
    }
    e = nmse(b, a, (size_t)n_logits * n_vocab);
out:
    free(a); free(b);
    return e;
}

static void add_row(step* st, int seq, int token, int pos, int logits, int commit) {
    lw_seq none;
    none.id = 0;   // pair_step puts each side's sequence in
    st->seq_of[st->n] = seq;
    st->rows[st->n++] = mkrow(none, token, pos, logits, commit);
}

// ---- 2. full forwards, every type and shape

static const mspec shapes[] = {
    { "llama", 40, 2, 5, 5, 8, 72, 300, 0, LW_TYPE_F32, 0, 0, 0, 0, 0, 0, 1 },     // head dim 8, 1:1, odd width
    { "llama", 40, 2, 5, 5, 8, 72, 300, 0, LW_TYPE_F16, 1, 0, 0, 0, 0, 0, 2 },
    { "llama", 40, 2, 5, 5, 8, 72, 300, 0, LW_TYPE_BF16, 0, 0, 0, 0, 0, 0, 3 },
    { "qwen2", 72, 2, 6, 3, 12, 88, 257, 8, LW_TYPE_F32, 0, 0, 0, 0, 0, 0, 4 },    // NeoX, biases, partial RoPE, 2:1
    { "qwen2", 72, 2, 6, 3, 12, 88, 257, 0, LW_TYPE_F16, 1, 0, 0, 0, 0, 0, 5 },
    { "llama", 96, 2, 4, 2, 24, 160, 300, 0, LW_TYPE_Q8_0, 0, 0, 0, 0, 0, 0, 6 },
    { "llama", 96, 2, 4, 2, 24, 160, 300, 0, LW_TYPE_Q4_0, 1, 0, 0, 0, 0, 0, 7 },
    { "qwen2", 128, 1, 8, 2, 16, 96, 200, 0, LW_TYPE_Q4_0, 0, 0, 0, 0, 0, 0, 8 },  // 4:1
    { "llama", 256, 1, 2, 1, 128, 96, 150, 0, LW_TYPE_F16, 0, 0, 0, 0, 0, 0, 9 },  // head dim 128
    { "llama", 64, 2, 4, 4, 8, 64, 300, 0, LW_TYPE_BF16, 0, 0, 0, 0, 0, 0, 10 },   // q_dim 32 != width 64
    { "llama", 256, 2, 4, 2, 64, 512, 300, 0, LW_TYPE_Q4_K, 0, 0, 0, 0, 0, 0, 11 },
    { "qwen2", 256, 1, 4, 1, 64, 768, 200, 0, LW_TYPE_Q6_K, 1, 0, 0, 0, 0, 0, 12 },
};

static void check_shape(const mspec* s, lw_type kv, int gemm) {
    tmodel m;
    pair p;
    const char* tn = lw_type_get_info(s->type).name;
    if (!setup(&m, &p, s, kv, 4, 0, 2)) return;
    int bs = lw_type_get_info(s->type).block_size, V = s->vocab;
    double bound = gemm ? (bs == 256 ? 1e-3 : 1e-4) : (bs == 1 ? 1e-9 : bs == 32 ? 1e-6 : 3e-4), worst = 0;
    step st;
    int len = 0;
    for (int chunk = 0; len < (gemm ? 40 : 13); chunk++) {   // prefill: one chunk of 40 (GEMM) or chunks of <= 8
        memset(&st, 0, sizeof st);
        int take = gemm ? 40 : (chunk == 0 ? 8 : 5);
        for (int i = 0; i < take; i++, len++) add_row(&st, 0, (len * 37 + 5) % V, len, 1, 1);
        double e = pair_step(&p, &st, V);
        if (e < 0) break;
        worst = fmax(worst, e);
    }
    for (int t = 0; t < 3; t++) {   // decode rows, then sequence 1's prompt beside sequence 0's next row
        memset(&st, 0, sizeof st);
        add_row(&st, 0, (t * 11 + 3) % V, len++, 1, 1);
        if (t == 2)
            for (int i = 0; i < 5; i++) add_row(&st, 1, (i * 29 + 1) % V, i, i == 4 || i == 1, 1);
        double e = pair_step(&p, &st, V);
        if (e < 0) break;
        worst = fmax(worst, e);
    }
    LWT_CHECK(worst <= bound, "%s %s kv %s (%s): logits NMSE %.3g > %.0e", s->arch, tn, lw_type_get_info(kv).name, gemm ? "GEMM rows" : "matrix-vector",
              worst, bound);
    printf("  %-5s %-4s dim %3d heads %d/%d hd %3d kv %s %-13s: NMSE %.2e\n", s->arch, tn, s->dim, s->heads, s->kv_heads, s->head_dim,
           lw_type_get_info(kv).name, gemm ? "GEMM" : "matrix-vector", worst);
    pair_close(&p);
    free_model(&m);
}

static void test_forward_shapes_matvec(void) {
    NEED_GPU();
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        check_shape(&shapes[i], LW_TYPE_F32, 0);
        check_shape(&shapes[i], LW_TYPE_F16, 0);
    }
}
static void test_forward_shapes_gemm(void) {
    NEED_GPU();
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        check_shape(&shapes[i], LW_TYPE_F32, 1);
        check_shape(&shapes[i], LW_TYPE_F16, 1);
    }
}

// ---- 3. masks

static const uint8_t tree5[25] = {   // rows 0,1,2 a chain; 3 and 4 a second branch from row 0
    1, 0, 0, 0, 0,
    1, 1, 0, 0, 0,
    1, 1, 1, 0, 0,
    1, 0, 0, 1, 0,
    1, 0, 0, 1, 1 };

static const mspec mask_model = { "qwen2", 48, 3, 4, 2, 12, 80, 200, 0, LW_TYPE_F32, 0, 0, 0, 0, 0, 0, 21 };

static void check_mask(lw_mask_kind kind, const uint8_t* skip, lw_type kv) {
    tmodel m;
    pair p;
    if (!setup(&m, &p, &mask_model, kv, 4, 0, 1)) return;
    enum { P = 6, M = 5 };
    step st;
    memset(&st, 0, sizeof st);
    for (int i = 0; i < P; i++) add_row(&st, 0, (i * 53 + 11) % 200, i, 1, 1);
    st.skip = skip;
    double e1 = pair_step(&p, &st, 200);
    memset(&st, 0, sizeof st);
    st.skip = skip;
    for (int i = 0; i < M; i++) {
        int pos = P + i;
        if (kind == LW_MASK_EXPLICIT && i >= 3) pos = P + i - 2;   // the second branch at the same positions
        add_row(&st, 0, (i * 31 + 7) % 200, pos, 1, 0);
    }
    st.n_masks = 1;
    st.masks[0].kind = kind;
    st.masks[0].block_size = 4;
    st.masks[0].allow = tree5;
    double e2 = pair_step(&p, &st, 200);
    int len = -1;
    lw_seq_length(p.g, p.gs[0], &len);
    LWT_CHECK(len == P, "scratch rows commit nothing on the GPU (length %d)", len);
    LWT_CHECK(e1 >= 0 && e1 <= 1e-9 && e2 >= 0 && e2 <= 1e-9, "mask %d skip %d kv %s: NMSE prompt %.3g, masked rows %.3g", (int)kind, skip != NULL,
              lw_type_get_info(kv).name, e1, e2);
    pair_close(&p);
    free_model(&m);
}

static void test_masks_each_kind(void) {
    NEED_GPU();
    static const uint8_t skip[3] = { 0, 1, 0 };
    for (int kv = 0; kv < 2; kv++) {
        lw_type t = kv ? LW_TYPE_F16 : LW_TYPE_F32;
        check_mask(LW_MASK_CAUSAL, NULL, t);
        check_mask(LW_MASK_FULL, NULL, t);
        check_mask(LW_MASK_BLOCK, NULL, t);
        check_mask(LW_MASK_EXPLICIT, NULL, t);
        check_mask(LW_MASK_CAUSAL, skip, t);
    }
}

// Four sequences with four masks in one batch, after committed prompts: 8 rows (matrix-vector) or 16 (GEMM).
static void check_mixed_masks(int big) {
    tmodel m;
    pair p;
    if (!setup(&m, &p, &mask_model, LW_TYPE_F16, 4, 0, 4)) return;
    step st;
    double e1 = 0;
    memset(&st, 0, sizeof st);
    for (int s = 0; s < 4; s++) {   // the prompts: in one batch of 18 rows (GEMM), or one batch each (matrix-vector)
        for (int i = 0; i < 3 + s; i++) add_row(&st, s, (s * 17 + i * 5 + 1) % 200, i, i == 2 + s, 1);
        if (big && s < 3) continue;
        e1 = fmax(e1, pair_step(&p, &st, 200));
        memset(&st, 0, sizeof st);
    }
    memset(&st, 0, sizeof st);
    int n_full = big ? 5 : 2, n_tree = 5, n_block = big ? 5 : 0;
    for (int i = 0; i < n_full; i++) add_row(&st, 0, (i * 7 + 2) % 200, 3 + i, 1, 0);                 // a diffusion canvas
    for (int i = 0; i < n_tree; i++) add_row(&st, 1, (i * 13 + 4) % 200, 4 + (i < 3 ? i : i - 2), 1, 0);   // a tree
    for (int i = 0; i < n_block; i++) add_row(&st, 2, (i * 19 + 9) % 200, 5 + i, i % 2, i < 3);       // block rows, 3 committed
    add_row(&st, 3, 77, 6, 1, 1);                                                                       // a causal decode row
    lw_mask_kind kinds[3] = { LW_MASK_FULL, LW_MASK_EXPLICIT, LW_MASK_BLOCK };
    for (int k = 0; k < (n_block ? 3 : 2); k++) {
        st.masks[k].kind = kinds[k];
        st.masks[k].block_size = 4;
        st.masks[k].allow = tree5;
        st.mask_seq[k] = k;
    }
    st.n_masks = n_block ? 3 : 2;
    double e2 = pair_step(&p, &st, 200);
    double bound = big ? 1e-4 : 1e-9;
    LWT_CHECK(e1 >= 0 && e1 <= bound && e2 >= 0 && e2 <= bound, "%d rows: NMSE prompts %.3g, mixed masks %.3g (bound %.0e)", st.n, e1, e2, bound);
    printf("  %2d rows of four masks: NMSE %.2e\n", st.n, e2);
    pair_close(&p);
    free_model(&m);
}
static void test_masks_mixed_batch(void) { NEED_GPU(); check_mixed_masks(0); check_mixed_masks(1); }

// ---- 4. the KV pool: forks, truncation, a long context

static void test_kv_fork_truncate_long(void) {
    NEED_GPU();
    mspec s = { "llama", 64, 2, 4, 2, 16, 96, 300, 0, LW_TYPE_Q8_0, 0, 0, 2048, 0, 0, 0, 31 };
    tmodel m;
    pair p;
    if (!setup(&m, &p, &s, LW_TYPE_F16, 16, 2048, 3)) return;
    step st;
    double worst = 0;
    memset(&st, 0, sizeof st);
    for (int i = 0; i < 7; i++) add_row(&st, 0, (i * 3 + 1) % 300, i, 0, 1);
    add_row(&st, 0, 8, 7, 1, 1);
    worst = fmax(worst, pair_step(&p, &st, 300));
    // fork 5 positions (the second page is shared and partly filled: the first write copies it)
    LWT_REQUIRE(lw_seq_fork(p.c, p.cs[0], 5, &p.cs[1]) == LW_OK && lw_seq_fork(p.g, p.gs[0], 5, &p.gs[1]) == LW_OK, "fork");
    memset(&st, 0, sizeof st);
    for (int i = 0; i < 3; i++) add_row(&st, 1, (i * 41 + 2) % 300, 5 + i, 1, 1);
    add_row(&st, 0, 9, 8, 1, 1);
    worst = fmax(worst, pair_step(&p, &st, 300));
    // truncate and continue
    LWT_REQUIRE(lw_seq_truncate(p.c, p.cs[0], 3) == LW_OK && lw_seq_truncate(p.g, p.gs[0], 3) == LW_OK, "truncate");
    memset(&st, 0, sizeof st);
    for (int i = 0; i < 4; i++) add_row(&st, 0, (i * 23 + 6) % 300, 3 + i, 1, 1);
    worst = fmax(worst, pair_step(&p, &st, 300));
    LWT_CHECK(worst >= 0 && worst <= 1e-6, "fork and truncate: NMSE %.3g", worst);
    // a long context: 1500 positions in chunks of 250 (GEMM), then decode rows (the attention split over blocks)
    double wl = 0;
    {
        lw_row rows[250];
        float* a = (float*)malloc(sizeof(float) * 300);
        float* b = (float*)malloc(sizeof(float) * 300);
        int ok = 1;
        for (int c = 0; c < 6 && ok; c++) {
            for (int side = 0; side < 2 && ok; side++) {
                for (int i = 0; i < 250; i++) rows[i] = mkrow(side ? p.gs[2] : p.cs[2], (c * 250 + i) * 7 % 300, c * 250 + i, i == 249, 1);
                ok = run(side ? p.g : p.c, rows, 250, NULL, 0, NULL, side ? b : a) == LW_OK;
            }
            if (ok) wl = fmax(wl, nmse(b, a, 300));
        }
        LWT_CHECK(ok, "long prefill: %s", gpu_detail());
        for (int t = 0; ok && t < 4; t++) {
            for (int side = 0; side < 2 && ok; side++) {
                rows[0] = mkrow(side ? p.gs[2] : p.cs[2], (t * 17 + 3) % 300, 1500 + t, 1, 1);
                ok = run(side ? p.g : p.c, rows, 1, NULL, 0, NULL, side ? b : a) == LW_OK;
            }
            if (ok) wl = fmax(wl, nmse(b, a, 300));
        }
        LWT_CHECK(ok && wl <= 1e-4, "1500 positions then decode: NMSE %.3g (bound 1e-4): %s", wl, ok ? "" : gpu_detail());
        printf("  fork/truncate NMSE %.2e, 1500-position context NMSE %.2e\n", worst, wl);
        free(a); free(b);
    }
    pair_close(&p);
    free_model(&m);
}

// ---- 5. every decode mode through the engine

typedef struct rec {
    int     n;
    int32_t ids[256];
    float*  logits[256];   // a copy of each token's logits (NULL when the event had none)
    int     n_vocab;
} rec;

static void on_event(const lw_event* ev) {
    rec* r = (rec*)ev->user;
    if (ev->kind != LW_EVENT_TOKEN || r->n >= 256) return;
    r->ids[r->n] = ev->token;
    r->logits[r->n] = NULL;
    if (ev->logits) {
        r->logits[r->n] = (float*)malloc(sizeof(float) * (size_t)r->n_vocab);
        memcpy(r->logits[r->n], ev->logits, sizeof(float) * (size_t)r->n_vocab);
    }
    r->n++;
}
static void rec_free(rec* r) { for (int i = 0; i < r->n; i++) free(r->logits[i]); memset(r, 0, sizeof *r); }

static double top2_margin(const float* x, int n) {
    float a = -INFINITY, b = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (x[i] > a) { b = a; a = x[i]; }
        else if (x[i] > b) b = x[i];
    }
    return (double)a - (double)b;
}

typedef struct mode_run { const char* name; lw_request_desc d; } mode_run;

// Runs requests on one engine over `be` (all submitted at once); rec[i] gets request i's tokens.
static int run_engine(lw_backend* be, lw_model* m, lw_model* draft, const mode_run* runs, int n, rec* recs) {
    lw_engine_desc ed;
    memset(&ed, 0, sizeof ed);
    ed.draft_model = draft;
    ed.max_running = 16;
    ed.no_prefix_sharing = true;
    lw_engine* e = NULL;
    if (lw_engine_create(&e, m, be, &ed) != LW_OK) { printf("  engine on %s: %s\n", lw_backend_name(be), gpu_detail()); return 0; }
    lw_request h[16];
    int ok = 1;
    for (int i = 0; i < n && ok; i++) {
        lw_request_desc d = runs[i].d;
        memset(&recs[i], 0, sizeof recs[i]);
        recs[i].n_vocab = m->info.n_vocab;
        d.on_event = on_event;
        d.user = &recs[i];
        ok = lw_engine_submit(e, &d, &h[i]) == LW_OK;
        if (!ok) printf("  submit %s on %s: %s\n", runs[i].name, lw_backend_name(be), lw_last_error());
    }
    for (int steps = 0; ok && !lw_engine_idle(e) && steps < 20000; steps++)
        if (lw_engine_step(e) != LW_OK) { printf("  step on %s: %s\n", lw_backend_name(be), gpu_detail()); ok = 0; }
    for (int i = 0; i < n && ok; i++) {
        lw_request_info info;
        ok = lw_request_get(e, h[i], &info) == LW_OK && info.finish != LW_FINISH_ERROR;
        if (!ok) printf("  request %s on %s failed\n", runs[i].name, lw_backend_name(be));
    }
    lw_engine_free(e);
    return ok;
}

// The GPU's tokens against the CPU's: equal up to the first CPU near-tie; logits within the bound.
static void compare_recs(const char* name, const rec* c, const rec* g, int n_vocab, double bound) {
    int upto = c->n, diff = -1, with_logits = 0;
    double worst = 0;
    for (int i = 0; i < c->n; i++)
        if (c->logits[i] && top2_margin(c->logits[i], n_vocab) < 1e-3) { upto = i; break; }
    for (int i = 0; i < upto && i < g->n && diff < 0; i++) {
        if (c->ids[i] != g->ids[i]) diff = i;
        if (c->logits[i] && g->logits[i]) {
            worst = fmax(worst, nmse(g->logits[i], c->logits[i], (size_t)n_vocab));
            with_logits++;
        }
    }
    LWT_CHECK(diff < 0 && (g->n >= upto || g->n == c->n), "%s: first different id at %d (%d ids on the GPU, %d on the CPU, compared up to %d)", name, diff,
              g->n, c->n, upto);
    LWT_CHECK(worst <= bound, "%s: logits NMSE %.3g > %.0e", name, worst, bound);
    if (with_logits) printf("  %-28s %3d ids (%3d compared), logits NMSE %.2e\n", name, g->n, upto, worst);
    else printf("  %-28s %3d ids (%3d compared; the events carry no logits)\n", name, g->n, upto);
}

static lw_request_desc req(lw_decode_mode mode, const int32_t* prompt, int n_prompt, int max_tokens) {
    lw_request_desc d;
    memset(&d, 0, sizeof d);
    d.mode = mode;
    d.prompt_ids = prompt;
    d.n_prompt_ids = n_prompt;
    d.max_tokens = max_tokens;
    d.ignore_eog = true;
    return d;
}

static void check_modes(lw_model* m, lw_model* draft, const mode_run* runs, int n, double bound) {
    static rec rc[16], rg[16];
    int V = m->info.n_vocab;
    for (int i = 0; i < n; i++) {   // each alone
        int okc = run_engine(cpu, m, draft, &runs[i], 1, &rc[i]), okg = run_engine(gpu, m, draft, &runs[i], 1, &rg[i]);
        LWT_CHECK(okc && okg, "%s alone: cpu %d cuda %d", runs[i].name, okc, okg);
        if (okc && okg) compare_recs(runs[i].name, &rc[i], &rg[i], V, bound);
        rec_free(&rc[i]); rec_free(&rg[i]);
    }
    int okc = run_engine(cpu, m, draft, runs, n, rc), okg = run_engine(gpu, m, draft, runs, n, rg);   // all together
    LWT_CHECK(okc && okg, "together: cpu %d cuda %d", okc, okg);
    for (int i = 0; okc && okg && i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s (batched)", runs[i].name);
        compare_recs(name, &rc[i], &rg[i], V, bound);
    }
    for (int i = 0; i < n; i++) { rec_free(&rc[i]); rec_free(&rg[i]); }
}

static void test_engine_causal_modes(void) {
    NEED_GPU();
    mspec ts = { "llama", 64, 4, 4, 2, 16, 128, 300, 0, LW_TYPE_F32, 0, 0, 0, 0, 0, 8.0f, 41 };
    mspec ds = { "llama", 32, 1, 4, 2, 8, 64, 300, 0, LW_TYPE_F32, 0, 0, 0, 0, 0, 8.0f, 42 };
    for (int q = 0; q < 2; q++) {
        ts.type = ds.type = q ? LW_TYPE_Q8_0 : LW_TYPE_F32;
        tmodel t, dr;
        LWT_REQUIRE(make_model(&t, ts) && make_model(&dr, ds), "models");
        static int32_t p0[40], p1[33];
        for (int i = 0; i < 40; i++) p0[i] = (i * 7 + 3) % 300;
        for (int i = 0; i < 33; i++) p1[i] = i % 5 ? 10 + i % 11 : 77;   // repetitive: lookup finds matches
        static const int skip[2] = { 1, 2 };
        mode_run runs[6];
        runs[0].name = "ar"; runs[0].d = req(LW_MODE_AR, p0, 40, 48);
        runs[1].name = "spec g=4"; runs[1].d = req(LW_MODE_SPEC, p0, 40, 48); runs[1].d.spec.draft_max = 4;
        runs[2].name = "selfspec skip 1,2"; runs[2].d = req(LW_MODE_SELFSPEC, p1, 33, 48);
        runs[2].d.spec.skip_layers = skip; runs[2].d.spec.n_skip_layers = 2;
        runs[3].name = "lookup"; runs[3].d = req(LW_MODE_LOOKUP, p1, 33, 48);
        runs[4].name = "lookahead"; runs[4].d = req(LW_MODE_LOOKAHEAD, p1, 33, 48);
        runs[5].name = "ar (short prompt)"; runs[5].d = req(LW_MODE_AR, p1, 5, 60);
        printf("  %s models:\n", q ? "Q8_0" : "F32");
        check_modes(t.model, dr.model, runs, 6, q ? 1e-3 : 1e-4);
        free_model(&dr);
        free_model(&t);
    }
}

static void test_engine_diffusion_modes(void) {
    NEED_GPU();
    mspec md = { "llada", 64, 2, 4, 2, 16, 128, 300, 0, LW_TYPE_F32, 0, 1, 0, 1, 0, 8.0f, 51 };
    mspec mb = md;
    mb.block_size = 4;
    mb.seed = 52;
    tmodel a, b;
    LWT_REQUIRE(make_model(&a, md) && make_model(&b, mb), "models");
    static int32_t p[11];
    for (int i = 0; i < 11; i++) p[i] = 40 + (i * 13) % 200;
    mode_run runs[3];
    runs[0].name = "diffusion 16/8 steps"; runs[0].d = req(LW_MODE_DIFFUSION, p, 11, 16);
    runs[0].d.diffusion.gen_length = 16; runs[0].d.diffusion.steps = 8; runs[0].d.diffusion.block_length = 8;
    runs[1].name = "diffusion threshold"; runs[1].d = req(LW_MODE_DIFFUSION, p, 11, 16);
    runs[1].d.diffusion.gen_length = 16; runs[1].d.diffusion.threshold = 0.5f;
    printf("  masked diffusion:\n");
    check_modes(a.model, NULL, runs, 2, 1e-4);
    runs[2].name = "block diffusion"; runs[2].d = req(LW_MODE_BLOCK, p, 11, 20);
    printf("  block diffusion:\n");
    check_modes(b.model, NULL, &runs[2], 1, 1e-4);
    free_model(&b);
    free_model(&a);
}

// ---- 6. resources: a pool that cannot fit is an error code, and the backend goes on working

static void test_out_of_memory(void) {
    NEED_GPU();
    mspec s = { "llama", 512, 2, 4, 4, 128, 128, 300, 0, LW_TYPE_F16, 0, 0, 0, 0, 0, 0, 61 };
    tmodel m;
    LWT_REQUIRE(make_model(&m, s), "model");
    lw_ctx_desc d;
    memset(&d, 0, sizeof d);
    d.kv_page_size = 16;
    d.kv_tokens = (int64_t)1 << 27;   // 2^23 pages of 128 KiB: 1 TiB
    lw_ctx* ctx = NULL;
    lw_result r = lw_ctx_create(&ctx, m.model, gpu, &d);
    LWT_CHECK(r == LW_OUT_OF_MEMORY && ctx == NULL, "a 1 TiB pool: %s, want LW_OUT_OF_MEMORY", lw_result_string(r));
#ifdef LW_CUDA
    LWT_CHECK(strstr(lw__cuda_last_error(gpu->self), "KV pool") != NULL, "the message: '%s'", lw__cuda_last_error(gpu->self));
#endif
    ctx = open_ctx(gpu, m.model, LW_TYPE_F32, 16, 0);
    LWT_REQUIRE(ctx != NULL, "a pool that fits, afterwards");
    lw_seq q;
    lw_seq_create(ctx, &q);
    lw_row row = mkrow(q, 5, 0, 1, 1);
    float* logits = (float*)malloc(sizeof(float) * 300);
    LWT_CHECK(run(ctx, &row, 1, NULL, 0, NULL, logits) == LW_OK, "a forward afterwards: %s", gpu_detail());
    free(logits);
    lw_ctx_free(ctx);
    free_model(&m);
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    lwt_filter = NULL;   // the first case finds the device: it always runs
    LWT_RUN(test_unavailable_is_an_error);
    lwt_filter = argc > 1 ? argv[1] : NULL;
    LWT_RUN(test_matmul_every_type);
    LWT_RUN(test_forward_shapes_matvec);
    LWT_RUN(test_forward_shapes_gemm);
    LWT_RUN(test_masks_each_kind);
    LWT_RUN(test_masks_mixed_batch);
    LWT_RUN(test_kv_fork_truncate_long);
    LWT_RUN(test_engine_causal_modes);
    LWT_RUN(test_engine_diffusion_modes);
    LWT_RUN(test_out_of_memory);
    lw_backend_free(gpu);
    lw_backend_free(cpu);
    return lwt_finish();
}
