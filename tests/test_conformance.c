/* test_conformance - llmwall against independent implementations of the same models

   1. llama.cpp on ../shared/models/stories260K.gguf. ../shared/ref/stories260K holds what llama.cpp
      (CPU, F32 KV cache) computed: the tokenization of two prompts, 64 greedy ids after each, and the
      512 logits of the first generated position of p1. Our tokenization equals llama.cpp's, our 64 greedy
      ids equal llama.cpp's (from text and from ids, 1 and 2 threads), and our first logits are within
      1e-4 of llama.cpp's (measured: about 1e-5).
   2. PyTorch on the embedded default, models/tiny-shakespeare.gguf: tools/train_tiny.py recorded in
      models/tiny-shakespeare.json the prompt's ids (SentencePiece), PyTorch's 64 greedy ids and its
      first-position logits (computed from the F16-rounded weights in float32). Ours must equal the ids,
      and the logits within 1e-3 (float32 sums in another order; measured about 1e-5).
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include "lwtest.h"
#include <math.h>

static lw_model* model;

// parses the integers of a line that starts with `prefix` (or the whole file when prefix is NULL)
static int read_ids(const char* path, const char* prefix, int32_t* ids, int max) {
    char* text = lwt_read_file(path, NULL);
    if (!text) return -1;
    char* p = text;
    if (prefix) {
        p = strstr(text, prefix);
        if (!p) { free(text); return -1; }
        p += strlen(prefix);
    }
    int n = 0;
    while (*p && *p != '\n' && n < max) {
        if ((*p >= '0' && *p <= '9')) ids[n++] = (int32_t)strtol(p, &p, 10);
        else p++;
    }
    free(text);
    return n;
}

static char* read_prompt(const char* name) {
    char* t = lwt_read_file(lwt_shared(name), NULL);
    if (t) { size_t n = strlen(t); while (n && (t[n - 1] == '\n' || t[n - 1] == '\r')) t[--n] = 0; }
    return t;
}

static void check_tokenize(const char* prompt_file, const char* ids_file) {
    char* prompt = read_prompt(prompt_file);
    LWT_REQUIRE(prompt, "read %s", prompt_file);
    int32_t want[64], got[64];
    int nw = read_ids(lwt_shared(ids_file), NULL, want, 64), ng = 0;
    lw_result r = lw_tokenize(model, prompt, strlen(prompt), LW_TOKENIZE_ADD_SPECIAL, got, 64, &ng);
    LWT_CHECK(r == LW_OK, "tokenize: %s", lw_last_error());
    LWT_CHECK(ng == nw && memcmp(got, want, (size_t)nw * 4) == 0, "'%s': %d ids, want %d", prompt, ng, nw);
    free(prompt);
}
static void test_tokenize_p1(void) { check_tokenize("ref/stories260K/p1_prompt.txt", "ref/stories260K/p1_llama-tokenize_ids.txt"); }
static void test_tokenize_p2(void) { check_tokenize("ref/stories260K/p2_prompt.txt", "ref/stories260K/p2_llama-tokenize_ids.txt"); }

// 64 greedy tokens; the reference does not stop at end-of-sequence, so we generate from ids with the
// same count and compare all 64 only up to an end-of-generation token
static void check_greedy(const char* ref_file, int threads, int from_text, const char* prompt_file) {
    int32_t prompt[64], want[64];
    int np = read_ids(lwt_shared(ref_file), "prompt_ids:", prompt, 64);
    int nw = read_ids(lwt_shared(ref_file), "gen_ids:", want, 64);
    LWT_REQUIRE(np > 0 && nw == 64, "reference %s", ref_file);
    lw_backend* be;
    lw_ctx* ctx;
    lw_backend_desc bd;
    memset(&bd, 0, sizeof bd);
    bd.kind = LW_BACKEND_CPU;
    bd.n_threads = threads;
    LWT_REQUIRE(lw_backend_create(&be, &bd) == LW_OK && lw_ctx_create(&ctx, model, be, NULL) == LW_OK, "context: %s", lw_last_error());
    lw_generate_desc gd;
    memset(&gd, 0, sizeof gd);
    char* text = from_text ? read_prompt(prompt_file) : NULL;
    if (from_text) gd.prompt = text;
    else { gd.prompt_ids = prompt; gd.n_prompt_ids = np; }
    gd.max_tokens = 64;
    lw_generate_result res;
    lw_result r = lw_generate(ctx, &gd, &res);
    LWT_CHECK(r == LW_OK, "generate: %s", lw_last_error());
    // llama.cpp's reference ran past end-of-sequence (id 2 for this vocabulary); we stop there
    int expect = 0;
    while (expect < nw && !lw_token_is_eog(model, want[expect])) expect++;
    LWT_CHECK(res.n_prompt == np && memcmp(res.prompt_ids, prompt, (size_t)np * 4) == 0, "prompt ids");
    LWT_CHECK(res.n_ids == expect, "%d ids, want %d", res.n_ids, expect);
    int first_diff = -1;
    for (int i = 0; i < res.n_ids && i < expect && first_diff < 0; i++)
        if (res.ids[i] != want[i]) first_diff = i;
    LWT_CHECK(first_diff < 0, "greedy ids differ from llama.cpp's at %d (%d vs %d)", first_diff,
              first_diff >= 0 ? res.ids[first_diff] : 0, first_diff >= 0 ? want[first_diff] : 0);
    lw_generate_result_free(&res);
    free(text);
    lw_ctx_free(ctx);
    lw_backend_free(be);
}
static void test_greedy_p1_ids(void) { check_greedy("ref/stories260K/p1_llamacpp_greedy64_f32kv.txt", 2, 0, NULL); }
static void test_greedy_p2_ids(void) { check_greedy("ref/stories260K/p2_llamacpp_greedy64_f32kv.txt", 2, 0, NULL); }
static void test_greedy_p1_one_thread(void) { check_greedy("ref/stories260K/p1_llamacpp_greedy64_f32kv.txt", 1, 0, NULL); }
static void test_greedy_p1_text(void) { check_greedy("ref/stories260K/p1_llamacpp_greedy64_f32kv.txt", 2, 1, "ref/stories260K/p1_prompt.txt"); }
static void test_greedy_p2_text(void) { check_greedy("ref/stories260K/p2_llamacpp_greedy64_f32kv.txt", 2, 1, "ref/stories260K/p2_prompt.txt"); }

static void test_first_logits(void) {
    size_t size = 0;
    char* raw = lwt_read_file(lwt_shared("ref/stories260K/p1_first_logits_llamacpp_f32kv.f32"), &size);
    LWT_REQUIRE(raw && size == 512 * 4, "reference logits");
    float ref[512], got[512];
    memcpy(ref, raw, sizeof ref);
    free(raw);
    lw_backend* be;
    lw_ctx* ctx;
    LWT_REQUIRE(lw_backend_create(&be, NULL) == LW_OK && lw_ctx_create(&ctx, model, be, NULL) == LW_OK, "context");
    lw_seq s = { 0 };
    lw_seq_create(ctx, &s);
    const int32_t p1[5] = { 1, 403, 407, 261, 378 };
    lw_row rows[5];
    for (int i = 0; i < 5; i++) { rows[i].token = p1[i]; rows[i].position = i; rows[i].seq = s; rows[i].wants_logits = i == 4; rows[i].commits = 1; }
    lw_batch b;
    memset(&b, 0, sizeof b);
    b.rows = rows; b.n_rows = 5; b.logits = got;
    LWT_REQUIRE(lw_ctx_forward(ctx, &b) == LW_OK, "forward: %s", lw_last_error());
    double maxe = 0;
    for (int i = 0; i < 512; i++) {   // (a NaN counts as a failure; fmax here also crashed GCC 12's aarch64 vectoriser)
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= maxe)) maxe = d;
    }
    printf("  first logits of p1: max |diff| against llama.cpp %.3g\n", maxe);
    LWT_CHECK(maxe < 1e-4, "max |logit - llama.cpp| = %.3g", maxe);
    lw_ctx_free(ctx);
    lw_backend_free(be);
}

// ---- the embedded default against PyTorch (numbers from models/tiny-shakespeare.json)

// the numbers of the JSON array under "key" inside the object "greedy"
static int json_numbers(const char* json, const char* key, double* out, int max) {
    const char* g = strstr(json, "\"greedy\"");
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char* p = g ? strstr(g, pat) : NULL;
    if (!p || !(p = strchr(p, '['))) return -1;
    int n = 0;
    for (p++; *p && *p != ']' && n < max;) {
        char* end;
        double v = strtod(p, &end);
        if (end == p) { p++; continue; }
        out[n++] = v;
        p = end;
    }
    return n;
}

// the string under "prompt" inside "greedy", unescaped (\n, \", \\ only)
static char* json_prompt(const char* json) {
    const char* g = strstr(json, "\"greedy\"");
    const char* p = g ? strstr(g, "\"prompt\"") : NULL;
    if (!p || !(p = strchr(p + 8, '"'))) return NULL;
    char* out = (char*)malloc(strlen(p) + 1);
    size_t n = 0;
    for (p++; *p && *p != '"'; p++) {
        if (*p == '\\' && p[1]) { p++; out[n++] = *p == 'n' ? '\n' : *p; }
        else out[n++] = *p;
    }
    out[n] = 0;
    return out;
}

static void test_tiny_shakespeare_vs_pytorch(void) {
    char* json = lwt_read_file("models/tiny-shakespeare.json", NULL);
    if (!json) LWT_SKIP("models/tiny-shakespeare.json not found (run from the repository root)");
    static double num[4096];
    int32_t prompt[256], want[64];
    int np = json_numbers(json, "prompt_ids", num, 256);
    for (int i = 0; i < np; i++) prompt[i] = (int32_t)num[i];
    int nw = json_numbers(json, "ids", num, 64);
    for (int i = 0; i < nw; i++) want[i] = (int32_t)num[i];
    static double ref_logits[4096];
    int nl = json_numbers(json, "first_logits", ref_logits, 4096);
    char* text = json_prompt(json);
    free(json);
    LWT_REQUIRE(np > 0 && nw == 64 && nl > 0 && text, "reference numbers in the JSON");
    lw_model* m;
    LWT_REQUIRE(lw_model_load(&m, "models/tiny-shakespeare.gguf", NULL) == LW_OK, "load: %s", lw_last_error());
    lw_model_info info;
    memset(&info, 0, sizeof info);
    lw_model_get_info(m, &info);
    LWT_CHECK(nl == info.n_vocab, "first logits: %d values for %d tokens", nl, info.n_vocab);
    int32_t ids[256];
    int n = 0;
    LWT_CHECK(lw_tokenize(m, text, strlen(text), LW_TOKENIZE_ADD_SPECIAL, ids, 256, &n) == LW_OK && n == np &&
              memcmp(ids, prompt, (size_t)np * 4) == 0, "SentencePiece's ids for the prompt (%d vs %d)", n, np);
    lw_backend* be;
    lw_ctx* ctx;
    LWT_REQUIRE(lw_backend_create(&be, NULL) == LW_OK && lw_ctx_create(&ctx, m, be, NULL) == LW_OK, "context");
    lw_generate_desc gd;
    memset(&gd, 0, sizeof gd);
    gd.prompt = text;
    gd.max_tokens = 64;
    lw_generate_result res;
    LWT_CHECK(lw_generate(ctx, &gd, &res) == LW_OK, "generate: %s", lw_last_error());
    int first_diff = -1;
    for (int i = 0; i < 64 && first_diff < 0; i++)
        if (i >= res.n_ids || res.ids[i] != want[i]) first_diff = i;
    LWT_CHECK(first_diff < 0, "greedy ids equal PyTorch's (first difference at %d of %d)", first_diff, res.n_ids);
    lw_generate_result_free(&res);
    // first-position logits
    lw_seq s = { 0 };
    lw_seq_create(ctx, &s);
    lw_row rows[256];
    for (int i = 0; i < np; i++) { rows[i].token = prompt[i]; rows[i].position = i; rows[i].seq = s; rows[i].wants_logits = i == np - 1; rows[i].commits = 1; }
    float* logits = (float*)malloc((size_t)info.n_vocab * sizeof(float));
    lw_batch b;
    memset(&b, 0, sizeof b);
    b.rows = rows; b.n_rows = np; b.logits = logits;
    LWT_CHECK(lw_ctx_forward(ctx, &b) == LW_OK, "forward");
    double maxe = 0;
    for (int i = 0; i < info.n_vocab && i < nl; i++) maxe = fmax(maxe, fabs(logits[i] - ref_logits[i]));
    printf("  tiny-shakespeare first logits: max |diff| against PyTorch %.3g\n", maxe);
    LWT_CHECK(maxe < 1e-3, "max |logit - PyTorch| = %.3g", maxe);
    free(logits);
    free(text);
    lw_ctx_free(ctx);
    lw_backend_free(be);
    lw_model_free(m);
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    if (lw_model_load(&model, lwt_shared("models/stories260K.gguf"), NULL) != LW_OK) {
        printf("cannot load stories260K: %s\n", lw_last_error());
        return 1;
    }
    LWT_RUN(test_tokenize_p1);
    LWT_RUN(test_tokenize_p2);
    LWT_RUN(test_first_logits);
    LWT_RUN(test_greedy_p1_ids);
    LWT_RUN(test_greedy_p2_ids);
    LWT_RUN(test_greedy_p1_one_thread);
    LWT_RUN(test_greedy_p1_text);
    LWT_RUN(test_greedy_p2_text);
    LWT_RUN(test_tiny_shakespeare_vs_pytorch);
    lw_model_free(model);
    return lwt_finish();
}
