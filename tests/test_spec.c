/* test_spec - the speculative decoding modes: lossless at temperature 0, the target's distribution
   with sampling, and exact KV accounting

   1. Greedy equivalence: every mode (speculative with a draft model -- random, trained, or the target
      itself --, self-speculative with several skip sets, prompt lookup, lookahead with several shapes)
      emits exactly the ids of plain greedy decoding, on the shipped model and on random models, alone
      and all mixed in one engine (with a pool small enough to preempt).
   2. Distribution: on a model of 8 tokens, the joint distribution of the first three generated tokens
      under each mode at temperature 1 is compared with the target's exact one (enumerated through the
      forward pass) by a chi-square test at the 99.9% level; the same test with the speculative residual
      replaced by the target distribution (a known-wrong rule) must fail it, which shows the test can.
   3. KV accounting: after every step each sequence holds exactly its accepted positions (the target
      the cached context, the draft no more), no page is lost, and the pool is empty at the end.
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include "../tools/gguf_writer.h"
#include "lwtest.h"
#include <math.h>

static lw_backend* backend;

// ---- random models with a given vocabulary size and no tokenizer (ids only)

static uint64_t rng;
static float frand(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (float)((double)(rng >> 11) * 0x1.0p-52 - 1.0); }

static void add_tensor(gw_file* w, const char* name, int ne0, int ne1, float scale, float center) {
    size_t n = (size_t)ne0 * ne1;
    float* x = (float*)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = center + scale * frand();
    int64_t ne[2] = { ne0, ne1 };
    gw_tensor(w, name, LW_TYPE_F32, ne1 > 1 ? 2 : 1, ne, x, n * sizeof(float));
    free(x);
}

// the bytes of the in-memory models: a model reads them until it is freed, so they go at exit
static void* model_bytes[16];
static int   n_model_bytes;

// a Llama of `layers` layers, width `dim`, vocabulary `vocab`; logits of order `spread`
static lw_model* random_model(uint64_t seed, int vocab, int dim, int layers, float spread) {
    rng = seed * 0x9E3779B97F4A7C15ull + 7;
    gw_file w = gw_begin(3);
    gw_kv_str(&w, "general.architecture", "llama");
    gw_kv_u32(&w, "llama.context_length", 256);
    gw_kv_u32(&w, "llama.embedding_length", (uint32_t)dim);
    gw_kv_u32(&w, "llama.block_count", (uint32_t)layers);
    gw_kv_u32(&w, "llama.feed_forward_length", (uint32_t)(2 * dim));
    gw_kv_u32(&w, "llama.attention.head_count", 4);
    gw_kv_u32(&w, "llama.attention.head_count_kv", 2);
    float s = 1.0f / sqrtf((float)dim);
    add_tensor(&w, "token_embd.weight", dim, vocab, 1.0f, 0.0f);
    char name[64];
    for (int l = 0; l < layers; l++) {
#define T(x) (snprintf(name, sizeof name, "blk.%d." x, l), name)
        add_tensor(&w, T("attn_norm.weight"), dim, 1, 0.1f, 1.0f);
        add_tensor(&w, T("attn_q.weight"), dim, dim, s, 0.0f);
        add_tensor(&w, T("attn_k.weight"), dim, dim / 2, s, 0.0f);
        add_tensor(&w, T("attn_v.weight"), dim, dim / 2, s, 0.0f);
        add_tensor(&w, T("attn_output.weight"), dim, dim, s, 0.0f);
        add_tensor(&w, T("ffn_norm.weight"), dim, 1, 0.1f, 1.0f);
        add_tensor(&w, T("ffn_gate.weight"), dim, 2 * dim, s, 0.0f);
        add_tensor(&w, T("ffn_up.weight"), dim, 2 * dim, s, 0.0f);
        add_tensor(&w, T("ffn_down.weight"), 2 * dim, dim, s / 1.4f, 0.0f);
#undef T
    }
    add_tensor(&w, "output_norm.weight", dim, 1, 0.1f, 1.0f);
    add_tensor(&w, "output.weight", dim, vocab, spread * s, 0.0f);
    gw_finish(&w);
    // the model keeps using the bytes: hand it a copy that lives as long as the process
    void* data = malloc(w.size);
    memcpy(data, w.data, w.size);
    LW_ASSERT(n_model_bytes < (int)(sizeof model_bytes / sizeof model_bytes[0]));
    model_bytes[n_model_bytes++] = data;
    lw_model* m = NULL;
    if (lw_model_load_memory(&m, data, w.size, NULL) != LW_OK) printf("random model: %s\n", lw_last_error());
    gw_free(&w);
    return m;
}

// ---- running requests

typedef struct run_opts {
    lw_decode_mode mode;
    lw_spec_params spec;
    float          temperature;
    int            max_tokens;
} run_opts;

static lw_engine* engine_new(lw_model* m, lw_model* draft, int max_running, int64_t kv_tokens) {
    lw_engine_desc d;
    memset(&d, 0, sizeof d);
    d.draft_model = draft;
    d.max_running = max_running;
    d.kv_tokens = kv_tokens;
    d.no_prefix_sharing = true;
    lw_engine* e = NULL;
    if (lw_engine_create(&e, m, backend, &d) != LW_OK) printf("engine: %s\n", lw_last_error());
    return e;
}

static lw_request submit(lw_engine* e, const int32_t* prompt, int n_prompt, const char* text, const run_opts* o, uint64_t seed) {
    lw_request_desc d;
    memset(&d, 0, sizeof d);
    if (text) d.prompt = text;
    else { d.prompt_ids = prompt; d.n_prompt_ids = n_prompt; }
    d.mode = o->mode;
    d.spec = o->spec;
    d.max_tokens = o->max_tokens;
    d.sampler.temperature = o->temperature;
    d.sampler.seed = seed;
    lw_request h = { 0 };
    if (lw_engine_submit(e, &d, &h) != LW_OK) printf("submit: %s\n", lw_last_error());
    return h;
}

// generates alone on a fresh engine; returns the number of ids
static int generate(lw_model* m, lw_model* draft, const int32_t* prompt, int n_prompt, const char* text, const run_opts* o,
                    int32_t* ids, lw_request_info* info_out) {
    lw_engine* e = engine_new(m, draft, 4, 0);
    if (!e) return -1;
    lw_request h = submit(e, prompt, n_prompt, text, o, 1);
    lw_engine_run(e);
    lw_request_info info;
    int n = -1;
    if (lw_request_get(e, h, &info) == LW_OK) {
        n = info.n_ids;
        memcpy(ids, info.ids, (size_t)n * sizeof(int32_t));
        if (info_out) *info_out = info;
    }
    lw_engine_free(e);
    return n;
}

typedef struct mode_case { const char* name; run_opts o; int needs_draft; } mode_case;

static const int skip_a[2] = { 1, 2 }, skip_b[1] = { 3 }, skip_c[1] = { 0 };

static mode_case mode_cases[] = {
    { "spec g=4", { LW_MODE_SPEC, { 4, false, NULL, 0, 0, 0, 0, 0 }, 0, 0 }, 1 },
    { "spec g=7 adaptive", { LW_MODE_SPEC, { 7, true, NULL, 0, 0, 0, 0, 0 }, 0, 0 }, 1 },
    { "selfspec skip 1,2", { LW_MODE_SELFSPEC, { 4, false, skip_a, 2, 0, 0, 0, 0 }, 0, 0 }, 0 },
    { "selfspec skip 3 adaptive", { LW_MODE_SELFSPEC, { 6, true, skip_b, 1, 0, 0, 0, 0 }, 0, 0 }, 0 },
    { "selfspec skip 0", { LW_MODE_SELFSPEC, { 3, false, skip_c, 1, 0, 0, 0, 0 }, 0, 0 }, 0 },
    { "lookup", { LW_MODE_LOOKUP, { 0, false, NULL, 0, 0, 0, 0, 0 }, 0, 0 }, 0 },
    { "lookup n=1 k=3", { LW_MODE_LOOKUP, { 3, false, NULL, 0, 1, 0, 0, 0 }, 0, 0 }, 0 },
    { "lookahead 7/5/7", { LW_MODE_LOOKAHEAD, { 0, false, NULL, 0, 0, 0, 0, 0 }, 0, 0 }, 0 },
    { "lookahead 3/3/2", { LW_MODE_LOOKAHEAD, { 0, false, NULL, 0, 0, 3, 3, 2 }, 0, 0 }, 0 },
    { "lookahead 5/4/0", { LW_MODE_LOOKAHEAD, { 0, false, NULL, 0, 0, 5, 4, 0 }, 0, 0 }, 0 },
};
#define N_MODES ((int)(sizeof mode_cases / sizeof mode_cases[0]))

// every mode equals greedy on the model, for each prompt
static void check_greedy(lw_model* m, lw_model* draft, const char* draft_name, const char* const* texts,
                         const int32_t* const* prompts, const int* n_prompts, int n_cases, int max_tokens) {
    static int32_t want[512], got[512];
    for (int c = 0; c < n_cases; c++) {
        run_opts ar = { LW_MODE_AR, { 0, false, NULL, 0, 0, 0, 0, 0 }, 0.0f, max_tokens };
        const int32_t* pr = prompts ? prompts[c] : NULL;
        int np = prompts ? n_prompts[c] : 0;
        const char* tx = texts ? texts[c] : NULL;
        int nw = generate(m, NULL, pr, np, tx, &ar, want, NULL);
        LWT_REQUIRE(nw > 0, "greedy baseline");
        for (int k = 0; k < N_MODES; k++) {
            if (mode_cases[k].needs_draft && !draft) continue;
            if (mode_cases[k].o.mode == LW_MODE_SELFSPEC && mode_cases[k].o.spec.skip_layers[0] >= m->info.n_layer) continue;
            run_opts o = mode_cases[k].o;
            o.max_tokens = max_tokens;
            lw_request_info info;
            memset(&info, 0, sizeof info);
            int ng = generate(m, mode_cases[k].needs_draft ? draft : NULL, pr, np, tx, &o, got, &info);
            int diff = -1;
            for (int i = 0; i < LW__MIN(ng, nw) && diff < 0; i++) if (got[i] != want[i]) diff = i;
            LWT_CHECK(ng == nw && diff < 0, "%s%s%s, case %d: %d ids (greedy %d), first difference at %d", mode_cases[k].name,
                      mode_cases[k].needs_draft ? " with " : "", mode_cases[k].needs_draft ? draft_name : "", c, ng, nw, diff);
            if (mode_cases[k].o.mode != LW_MODE_AR && c == 0)
                printf("  %-26s %-10s %3d tokens in %3d target passes (%.2f per pass), %d of %d drafted accepted\n", mode_cases[k].name,
                       mode_cases[k].needs_draft ? draft_name : "", info.n_ids, info.forwards,
                       info.forwards ? (double)info.n_ids / info.forwards : 0.0, info.accepted, info.drafted);
        }
    }
}

static const char* const shakespeare[] = {
    "ROMEO:",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\n",
    "KING RICHARD III:\nNow is the winter of our discontent\nMade glorious summer by this sun of York;",
    "O Romeo, Romeo! wherefore art thou Romeo? O Romeo, Romeo! wherefore art thou",
};

static void test_greedy_shipped_random_draft(void) {
    lw_model *m = NULL, *draft = NULL;
    LWT_REQUIRE(lw_model_load(&m, "models/tiny-shakespeare.gguf", NULL) == LW_OK, "load: %s", lw_last_error());
    // a random draft with the same vocabulary: almost nothing is accepted (the rejection path)
    char path[] = "build/test_spec_draft.gguf";
    char cmd[256];
    snprintf(cmd, sizeof cmd, "%s/mkmodel -o %s --dim 64 --layers 1 --heads 2 --ff 128 --ctx 256 --vocab-from models/tiny-shakespeare.gguf 2>/dev/null",
             getenv("BUILD") ? getenv("BUILD") : "build", path);
    if (system(cmd) != 0 || lw_model_load(&draft, path, NULL) != LW_OK) {
        lw_model_free(m);
        LWT_SKIP("build/mkmodel did not make a draft model");
    }
    check_greedy(m, draft, "random", shakespeare, NULL, NULL, 4, 96);
    lw_model_free(draft);
    lw_model_free(m);
}

static void test_greedy_shipped_self_and_trained_draft(void) {
    lw_model *m = NULL, *trained = NULL;
    LWT_REQUIRE(lw_model_load(&m, "models/tiny-shakespeare.gguf", NULL) == LW_OK, "load: %s", lw_last_error());
    check_greedy(m, m, "itself", shakespeare, NULL, NULL, 2, 96);   // every draft token accepted: the bonus path
    if (lw_model_load(&trained, "models/tiny-shakespeare-draft.gguf", NULL) == LW_OK) {
        check_greedy(m, trained, "trained", shakespeare, NULL, NULL, 4, 96);
        lw_model_free(trained);
    } else {
        printf("  (models/tiny-shakespeare-draft.gguf not found: trained draft not checked)\n");
    }
    lw_model_free(m);
}

// A pool of exactly one context of target positions per running sequence (what the CLI asks for): the
// draft's positions come on top (the engine doubles the pool), so a draft model does not cut generation short.
static void test_spec_pool_of_one_context(void) {
    lw_model* m = NULL;
    LWT_REQUIRE(lw_model_load(&m, "models/tiny-shakespeare.gguf", NULL) == LW_OK, "load: %s", lw_last_error());
    static int32_t want[512];
    const int32_t bos[1] = { 1 };
    int n_ctx = m->info.n_ctx_train, max_tokens = n_ctx - 8;
    run_opts ar = { LW_MODE_AR, { 0, false, NULL, 0, 0, 0, 0, 0 }, 0.0f, max_tokens };
    int nw = generate(m, NULL, bos, 1, NULL, &ar, want, NULL);
    LWT_REQUIRE(nw == max_tokens, "greedy baseline: %d ids", nw);
    lw_engine* e = engine_new(m, m, 1, n_ctx);
    LWT_REQUIRE(e != NULL, "engine");
    run_opts o = mode_cases[0].o;
    o.max_tokens = max_tokens;
    lw_request h = submit(e, bos, 1, NULL, &o, 1);
    lw_engine_run(e);
    lw_request_info info;
    LWT_REQUIRE(lw_request_get(e, h, &info) == LW_OK, "request");
    LWT_CHECK(info.n_ids == nw && memcmp(info.ids, want, sizeof(int32_t) * (size_t)nw) == 0,
              "spec with a pool of %d positions: %d ids (greedy %d)", n_ctx, info.n_ids, nw);
    lw_engine_free(e);
    lw_model_free(m);
}

static void test_greedy_random_models(void) {
    lw_model* m = random_model(11, 300, 64, 4, 8.0f);
    lw_model* draft = random_model(12, 300, 32, 1, 8.0f);
    lw_model* copy = random_model(11, 300, 64, 4, 8.0f);   // the same weights: always accepted
    LWT_REQUIRE(m && draft && copy, "random models");
    static int32_t p0[40], p1[7], p2[33];
    for (int i = 0; i < 40; i++) p0[i] = (i * 7 + 3) % 300;
    for (int i = 0; i < 7; i++) p1[i] = (i * 13 + 1) % 300;
    for (int i = 0; i < 33; i++) p2[i] = i % 5 ? 10 + i % 11 : 77;   // repetitive: prompt lookup finds matches
    const int32_t* prompts[3] = { p0, p1, p2 };
    int n_prompts[3] = { 40, 7, 33 };
    check_greedy(m, draft, "random", NULL, prompts, n_prompts, 3, 60);
    check_greedy(m, copy, "copy", NULL, prompts, n_prompts, 1, 60);
    lw_model_free(copy);
    lw_model_free(draft);
    lw_model_free(m);
}

// Every mode together in one engine, and with a pool small enough that requests are preempted and
// recomputed mid-generation: each still emits what greedy decoding alone emits.
static void check_mixed(int64_t kv_tokens) {
    lw_model* m = NULL;
    LWT_REQUIRE(lw_model_load(&m, "models/tiny-shakespeare.gguf", NULL) == LW_OK, "load");
    enum { N_REQ = 24 };
    static int32_t want[N_REQ][256];
    int n_want[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        run_opts ar = { LW_MODE_AR, { 0, false, NULL, 0, 0, 0, 0, 0 }, 0.0f, 40 + i };
        n_want[i] = generate(m, NULL, NULL, 0, shakespeare[i % 4], &ar, want[i], NULL);
    }
    lw_engine* e = engine_new(m, m, 16, kv_tokens);   // the model is its own draft here
    LWT_REQUIRE(e, "engine");
    lw_request h[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        run_opts o = mode_cases[i % N_MODES].o;
        o.max_tokens = 40 + i;
        h[i] = submit(e, NULL, 0, shakespeare[i % 4], &o, (uint64_t)i);
    }
    int steps = 0;
    while (!lw_engine_idle(e) && steps++ < 20000) LWT_REQUIRE(lw_engine_step(e) == LW_OK, "step: %s", lw_last_error());
    lw_engine_stats st;
    lw_engine_get_stats(e, &st);
    for (int i = 0; i < N_REQ; i++) {
        lw_request_info info;
        lw_request_get(e, h[i], &info);
        LWT_CHECK(info.n_ids == n_want[i] && memcmp(info.ids, want[i], (size_t)n_want[i] * 4) == 0, "request %d (%s): batched %d ids, alone %d",
                  i, mode_cases[i % N_MODES].name, info.n_ids, n_want[i]);
    }
    LWT_CHECK(st.kv_pages_used == 0 && lw_ctx_kv_free_tokens(lw_engine_ctx(e)) == (int64_t)st.kv_pages * e->ctx->kv.page_size, "the pool is empty");
    printf("  %d mixed requests, pool %lld: %lld steps, %lld preemptions, %lld draft passes, %lld of %lld drafted accepted\n", N_REQ,
           (long long)kv_tokens, (long long)st.steps, (long long)st.preemptions, (long long)st.draft_forwards, (long long)st.accepted,
           (long long)st.drafted);
    if (kv_tokens) LWT_CHECK(st.preemptions > 0, "the small pool preempts");
    lw_engine_free(e);
    lw_model_free(m);
}
static void test_mixed_modes_batched(void) { check_mixed(0); }
static void test_mixed_modes_preempted(void) { check_mixed(320); }   // 640 positions with the draft's

// ---- KV accounting: after every step, sequences hold exactly the accepted positions

static void test_kv_accounting(void) {
    lw_model* m = NULL;
    LWT_REQUIRE(lw_model_load(&m, "models/tiny-shakespeare.gguf", NULL) == LW_OK, "load");
    lw_engine* e = engine_new(m, m, 8, 0);
    LWT_REQUIRE(e, "engine");
    for (int i = 0; i < 8; i++) {
        run_opts o = mode_cases[i % N_MODES].o;
        o.max_tokens = 60;
        o.temperature = i % 2 ? 0.9f : 0.0f;
        submit(e, NULL, 0, shakespeare[i % 4], &o, (uint64_t)i);
    }
    int bad = 0, steps = 0;
    while (!lw_engine_idle(e) && steps++ < 5000) {
        lw_engine_step(e);
        int64_t pages = 0;
        for (int i = 0; i < (int)stbds_arrlen(e->running); i++) {
            const lw__req* q = &e->reqs[e->running[i]];
            const lw__decoder* d = &q->dec;
            int len = -1;
            if (d->seq.id) lw_seq_length(e->ctx, d->seq, &len);
            if (d->seq.id && len != d->n_fed && bad++ < 5) LWT_CHECK(0, "%s: target holds %d positions, accepted context cached %d", d->mode->name, len, d->n_fed);
            if (d->seq.id) pages += lw__seq_get(e->ctx, d->seq)->n_pages;
            if (d->mode == &lw__mode_spec) {
                const lw__spec* s = (const lw__spec*)d->state;
                int dlen = 0;
                if (s->dseq.id) {
                    lw_seq_length(e->ctx, s->dseq, &dlen);
                    pages += lw__seq_get(e->ctx, s->dseq)->n_pages;
                }
                if (dlen > d->n_fed && bad++ < 5) LWT_CHECK(0, "the draft holds %d positions, more than the accepted %d", dlen, d->n_fed);
            }
            if (d->seq.id) {   // no page beyond what the cached positions need
                const lw__seq_slot* sl = lw__seq_get(e->ctx, d->seq);
                int ps = lw__seq_kv(e->ctx, sl)->page_size;
                if (sl->n_pages != (sl->length + ps - 1) / ps && bad++ < 5) LWT_CHECK(0, "%d pages for %d positions", sl->n_pages, sl->length);
            }
        }
        int64_t used = e->ctx->n_pages - e->ctx->n_free;
        if (used != pages && bad++ < 5) LWT_CHECK(0, "step %d: %lld pages in use, sequences hold %lld", steps, (long long)used, (long long)pages);
    }
    LWT_CHECK(bad == 0, "%d inconsistencies", bad);
    LWT_CHECK(e->ctx->n_free == e->ctx->n_pages, "the pool is empty at the end");
    lw_engine_free(e);
    lw_model_free(m);
}

// ---- the distribution with sampling

static const double z999 = 3.0902;   // the 99.9% quantile of the standard normal

static double chi2_bound(int dof) {   // Wilson-Hilferty: the 99.9% quantile of chi-square(dof)
    double a = 2.0 / (9.0 * dof);
    return dof * pow(1.0 - a + z999 * sqrt(a), 3.0);
}

// p(next | context) of the target at temperature 1, through the forward pass
static void next_probs(lw_ctx* ctx, const int32_t* tokens, int n, double* out, int nv) {
    lw_seq s = { 0 };
    lw_seq_create(ctx, &s);
    lw_row rows[16];
    for (int i = 0; i < n; i++) { rows[i].token = tokens[i]; rows[i].position = i; rows[i].seq = s; rows[i].wants_logits = i == n - 1; rows[i].commits = 1; }
    float logits[64];
    lw_batch b;
    memset(&b, 0, sizeof b);
    b.rows = rows; b.n_rows = n; b.logits = logits;
    lw_ctx_forward(ctx, &b);
    double mx = -1e30, sum = 0;
    for (int i = 0; i < nv; i++) mx = fmax(mx, logits[i]);
    for (int i = 0; i < nv; i++) { out[i] = exp(logits[i] - mx); sum += out[i]; }
    for (int i = 0; i < nv; i++) out[i] /= sum;
    lw_seq_free(ctx, s);
}

enum { V = 8 };
static double joint[V * V * V];   // p(t1, t2, t3 | prompt)
static const int32_t prompt8[6] = { 1, 2, 3, 1, 2, 3 };   // repeats: prompt lookup has proposals

static void exact_joint(lw_model* m) {
    lw_ctx* ctx = NULL;
    lw_ctx_create(&ctx, m, backend, NULL);
    int32_t t[16];
    memcpy(t, prompt8, sizeof prompt8);
    double p1[V], p2[V], p3[V];
    next_probs(ctx, t, 6, p1, V);
    for (int a = 0; a < V; a++) {
        t[6] = a;
        next_probs(ctx, t, 7, p2, V);
        for (int b = 0; b < V; b++) {
            t[7] = b;
            next_probs(ctx, t, 8, p3, V);
            for (int c = 0; c < V; c++) joint[(a * V + b) * V + c] = p1[a] * p2[b] * p3[c];
        }
    }
    lw_ctx_free(ctx);
}

// draws N three-token continuations in `mode` and returns the chi-square statistic against `joint`
static double sample_chi2(lw_model* m, lw_model* draft, const run_opts* o, int n, int* dof) {
    int* count = (int*)calloc(V * V * V, sizeof(int));
    lw_engine* e = engine_new(m, draft, 64, 0);
    if (!e) { free(count); return -1; }
    int done = 0, submitted = 0;
    lw_request* h = (lw_request*)calloc((size_t)n, sizeof(lw_request));
    while (done < n) {
        while (submitted < n && submitted - done < 256) { h[submitted] = submit(e, prompt8, 6, NULL, o, (uint64_t)submitted + 1000); submitted++; }
        lw_engine_step(e);
        for (int i = done; i < submitted; i++) {   // collect finished requests in order
            lw_request_info info;
            memset(&info, 0, sizeof info);
            if (lw_request_get(e, h[i], &info) != LW_OK || info.state != LW_REQUEST_FINISHED) break;
            if (info.n_ids == 3) count[(info.ids[0] * V + info.ids[1]) * V + info.ids[2]]++;
            lw_request_free(e, h[i]);
            done++;
        }
    }
    lw_engine_free(e);
    free(h);
    // categories with expected counts of at least 5
    double chi2 = 0, rest_e = 0;
    int rest_o = 0, cats = 0;
    for (int k = 0; k < V * V * V; k++) {
        double ex = joint[k] * n;
        if (ex >= 5) { chi2 += (count[k] - ex) * (count[k] - ex) / ex; cats++; }
        else { rest_e += ex; rest_o += count[k]; }
    }
    if (rest_e >= 5) { chi2 += (rest_o - rest_e) * (rest_o - rest_e) / rest_e; cats++; }
    free(count);
    *dof = cats - 1;
    return chi2;
}

static void test_sampling_distribution(void) {
    // target and draft: different random models over 8 tokens, peaked enough that q differs from p
    lw_model* m = random_model(21, V, 32, 2, 6.0f);
    lw_model* draft = random_model(22, V, 32, 1, 6.0f);
    LWT_REQUIRE(m && draft, "models");
    exact_joint(m);
    const int N = 40000;
    struct { const char* name; run_opts o; int draft; } cases[] = {
        { "ar", { LW_MODE_AR, { 0, false, NULL, 0, 0, 0, 0, 0 }, 1.0f, 3 }, 0 },
        { "spec g=3", { LW_MODE_SPEC, { 3, false, NULL, 0, 0, 0, 0, 0 }, 1.0f, 3 }, 1 },
        { "spec g=1", { LW_MODE_SPEC, { 1, false, NULL, 0, 0, 0, 0, 0 }, 1.0f, 3 }, 1 },
        { "selfspec", { LW_MODE_SELFSPEC, { 2, false, skip_c, 1, 0, 0, 0, 0 }, 1.0f, 3 }, 0 },
        { "lookup", { LW_MODE_LOOKUP, { 3, false, NULL, 0, 2, 0, 0, 0 }, 1.0f, 3 }, 0 },
        { "lookahead", { LW_MODE_LOOKAHEAD, { 0, false, NULL, 0, 0, 3, 3, 3 }, 1.0f, 3 }, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int dof = 0;
        double chi2 = sample_chi2(m, cases[i].draft ? draft : NULL, &cases[i].o, N, &dof);
        printf("  %-10s chi-square %.1f with %d dof (99.9%% bound %.1f)\n", cases[i].name, chi2, dof, chi2_bound(dof));
        LWT_CHECK(chi2 >= 0 && chi2 < chi2_bound(dof), "%s: the first three tokens do not follow the target's distribution (chi-square %.1f, bound %.1f)",
                  cases[i].name, chi2, chi2_bound(dof));
    }
    // the test can fail: a known-wrong residual (drawing rejections from p, not max(0, p - q)) is detected
    lw__spec_wrong_residual = 1;
    int dof = 0;
    double chi2 = sample_chi2(m, draft, &cases[1].o, N, &dof);
    lw__spec_wrong_residual = 0;
    printf("  wrong residual: chi-square %.1f with %d dof (must exceed %.1f)\n", chi2, dof, chi2_bound(dof));
    LWT_CHECK(chi2 > chi2_bound(dof), "a wrong residual went unnoticed (chi-square %.1f, bound %.1f)", chi2, chi2_bound(dof));
    lw_model_free(draft);
    lw_model_free(m);
}

// With sampling, prompt lookup and lookahead draw each emitted token from the target's distribution with
// one draw of the request's generator, as plain sampling does (proposals only decide how many tokens a
// pass yields), so with the same seed they emit exactly the tokens of plain sampling.
static void test_sampling_same_seed_as_ar(void) {
    lw_model* m = NULL;
    LWT_REQUIRE(lw_model_load(&m, "models/tiny-shakespeare.gguf", NULL) == LW_OK, "load");
    static int32_t want[256], got[256];
    int accepted[N_MODES] = {0};
    for (int c = 0; c < 4; c++) {
        run_opts ar = { LW_MODE_AR, { 0, false, NULL, 0, 0, 0, 0, 0 }, 0.5f, 80 };
        int nw = generate(m, NULL, NULL, 0, shakespeare[c], &ar, want, NULL);
        for (int k = 0; k < N_MODES; k++) {
            if (mode_cases[k].o.mode != LW_MODE_LOOKUP && mode_cases[k].o.mode != LW_MODE_LOOKAHEAD) continue;
            run_opts o = mode_cases[k].o;
            o.temperature = 0.5f;
            o.max_tokens = 80;
            lw_request_info info;
            memset(&info, 0, sizeof info);
            int ng = generate(m, NULL, NULL, 0, shakespeare[c], &o, got, &info);
            LWT_CHECK(ng == nw && memcmp(got, want, (size_t)nw * 4) == 0, "%s, case %d: sampled ids differ from plain sampling's", mode_cases[k].name, c);
            accepted[k] += info.accepted;
        }
    }
    for (int k = 0; k < N_MODES; k++)   // and proposals were accepted along the way
        if (mode_cases[k].o.mode == LW_MODE_LOOKUP || mode_cases[k].o.mode == LW_MODE_LOOKAHEAD)
            LWT_CHECK(accepted[k] > 0, "%s accepted no proposal while sampling", mode_cases[k].name);
    lw_model_free(m);
}

// ---- refusals

static void test_refusals(void) {
    lw_model *m = NULL, *other = NULL;
    LWT_REQUIRE(lw_model_load(&m, "models/tiny-shakespeare.gguf", NULL) == LW_OK, "load");
    other = random_model(5, 300, 32, 1, 1.0f);
    lw_engine_desc d;
    memset(&d, 0, sizeof d);
    d.draft_model = other;
    lw_engine* e = NULL;
    LWT_CHECK(lw_engine_create(&e, m, backend, &d) == LW_VOCAB_MISMATCH && e == NULL, "a draft with another vocabulary: %s", lw_last_error());
    e = engine_new(m, NULL, 4, 0);
    lw_request h;
    lw_request_desc r;
    memset(&r, 0, sizeof r);
    r.prompt = "ROMEO:";
    r.mode = LW_MODE_SPEC;
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_INVALID_ARGS && strstr(lw_last_error(), "draft"), "spec without a draft model: %s", lw_last_error());
    r.mode = LW_MODE_SELFSPEC;
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_INVALID_ARGS && strstr(lw_last_error(), "skip"), "selfspec without layers to skip");
    static const int bad_layer[1] = { 99 };
    r.spec.skip_layers = bad_layer;
    r.spec.n_skip_layers = 1;
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_INVALID_ARGS && strstr(lw_last_error(), "99"), "a layer that does not exist");
    memset(&r.spec, 0, sizeof r.spec);
    r.mode = LW_MODE_LOOKAHEAD;
    r.spec.ngram = 1;
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_INVALID_ARGS, "lookahead with 1-grams");
    r.mode = LW_MODE_LOOKUP;
    r.spec.ngram = 0;
    r.spec.draft_max = 1000;
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_INVALID_ARGS && strstr(lw_last_error(), "draft_max"), "an absurd draft length");
    lw_engine_stats st;
    lw_engine_get_stats(e, &st);
    LWT_CHECK(st.rejected == 5 && st.submitted == 0, "refused requests leave nothing behind");
    lw_engine_free(e);
    lw_model_free(other);
    lw_model_free(m);
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    lw_backend_desc bd;
    memset(&bd, 0, sizeof bd);
    bd.kind = LW_BACKEND_CPU;
    bd.n_threads = 2;
    if (lw_backend_create(&backend, &bd) != LW_OK) { printf("backend: %s\n", lw_last_error()); return 1; }
    LWT_RUN(test_greedy_shipped_random_draft);
    LWT_RUN(test_greedy_shipped_self_and_trained_draft);
    LWT_RUN(test_spec_pool_of_one_context);
    LWT_RUN(test_greedy_random_models);
    LWT_RUN(test_mixed_modes_batched);
    LWT_RUN(test_mixed_modes_preempted);
    LWT_RUN(test_kv_accounting);
    LWT_RUN(test_sampling_distribution);
    LWT_RUN(test_sampling_same_seed_as_ar);
    LWT_RUN(test_refusals);
    lw_backend_free(backend);
    for (int i = 0; i < n_model_bytes; i++) free(model_bytes[i]);
    return lwt_finish();
}
