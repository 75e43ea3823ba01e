/* test_conformance - llmwall against llama.cpp on ../shared/models/stories260K.gguf

   ../shared/ref/stories260K holds what llama.cpp (CPU, F32 KV cache) computed: the tokenization of
   two prompts, 64 greedy ids after each, and the 512 logits of the first generated position of p1.
   Checks: our tokenization equals llama.cpp's; our 64 greedy ids equal llama.cpp's (from text and from
   ids, 1 and 2 threads); our first logits are within 1e-4 of llama.cpp's (measured: about 1e-5).
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
    for (int i = 0; i < 512; i++) maxe = fmax(maxe, fabs((double)got[i] - ref[i]));
    printf("  first logits of p1: max |diff| against llama.cpp %.3g\n", maxe);
    LWT_CHECK(maxe < 1e-4, "max |logit - llama.cpp| = %.3g", maxe);
    lw_ctx_free(ctx);
    lw_backend_free(be);
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
    lw_model_free(model);
    return lwt_finish();
}
