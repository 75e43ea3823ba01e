/* skipsearch - picks the layers a self-speculative draft should skip

       build/skipsearch -m MODEL [-p "calibration text" ...] [-n 64] [--draft-max 4] [--max-skip K] [-t THREADS]

   Self-speculative decoding drafts with the model itself, some layers skipped; the target verifies. A
   skip set is good when it yields many accepted tokens per unit of work. Work is counted in layer
   passes: a target pass costs n_layer, a draft pass n_layer - skipped. For a skip set S the score is

       tokens generated / (target passes * n_layer + draft passes * (n_layer - |S|))

   relative to plain decoding's 1 / n_layer (so > 1 means the draft pays for itself in weight traffic).
   The search is greedy: starting from nothing skipped, it adds the layer whose skipping scores best
   and keeps going while the score improves (up to --max-skip layers), decoding the calibration prompts
   greedily each time. Output: the skip set, ready for `llmwall --mode selfspec --skip-layers ...`.
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct score { double value, tokens_per_pass; int tokens, passes, drafts; } score;

static lw_model* model;
static lw_backend* backend;
static const char* prompts[16];
static int n_prompts, n_gen = 64, draft_max = 4;

// decodes every calibration prompt with the skip set and scores it
static score evaluate(const int* skip, int n_skip) {
    score sc;
    memset(&sc, 0, sizeof sc);
    lw_engine* e = NULL;
    lw_engine_desc ed;
    memset(&ed, 0, sizeof ed);
    ed.max_running = 1;
    if (lw_engine_create(&e, model, backend, &ed) != LW_OK) { fprintf(stderr, "skipsearch: %s\n", lw_last_error()); exit(1); }
    for (int i = 0; i < n_prompts; i++) {
        lw_request_desc d;
        memset(&d, 0, sizeof d);
        d.prompt = prompts[i];
        d.max_tokens = n_gen;
        d.mode = n_skip ? LW_MODE_SELFSPEC : LW_MODE_AR;
        d.spec.draft_max = draft_max;
        d.spec.skip_layers = skip;
        d.spec.n_skip_layers = n_skip;
        lw_request h;
        if (lw_engine_submit(e, &d, &h) != LW_OK) { fprintf(stderr, "skipsearch: %s\n", lw_last_error()); exit(1); }
        lw_engine_run(e);
        lw_request_info info;
        lw_request_get(e, h, &info);
        sc.tokens += info.n_ids;
        sc.passes += info.forwards;
        lw_request_free(e, h);
    }
    lw_engine_stats st;
    lw_engine_get_stats(e, &st);
    sc.drafts = (int)st.draft_forwards;
    lw_engine_free(e);
    lw_model_info in;
    memset(&in, 0, sizeof in);
    lw_model_get_info(model, &in);
    double work = (double)sc.passes * in.n_layer + (double)sc.drafts * (in.n_layer - n_skip);
    sc.value = work > 0 ? sc.tokens * (double)in.n_layer / work : 0.0;   // plain decoding scores 1
    sc.tokens_per_pass = sc.passes ? (double)sc.tokens / sc.passes : 0.0;
    return sc;
}

static void print_set(const int* skip, int n) {
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", skip[i]);
    if (!n) printf("(none)");
}

int main(int argc, char** argv) {
    const char* path = NULL;
    int threads = 0, max_skip = -1;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: skipsearch -m MODEL [-p TEXT]... [-n 64] [--draft-max 4] [--max-skip K] [-t THREADS]\n");
            return 0;
        }
        if (!v) { fprintf(stderr, "skipsearch: %s needs a value\n", a); return 1; }
        if (!strcmp(a, "-m")) path = v;
        else if (!strcmp(a, "-p")) { if (n_prompts < 16) prompts[n_prompts++] = v; }
        else if (!strcmp(a, "-n")) n_gen = atoi(v);
        else if (!strcmp(a, "--draft-max")) draft_max = atoi(v);
        else if (!strcmp(a, "--max-skip")) max_skip = atoi(v);
        else if (!strcmp(a, "-t")) threads = atoi(v);
        else { fprintf(stderr, "skipsearch: unknown option %s\n", a); return 1; }
        i++;
    }
    if (!path || n_gen < 1 || draft_max < 1) { fprintf(stderr, "skipsearch: -m MODEL is required; -n and --draft-max positive\n"); return 1; }
    if (!n_prompts) {   // a default calibration set: text like the embedded model's corpus
        prompts[n_prompts++] = "ROMEO:\n";
        prompts[n_prompts++] = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n";
        prompts[n_prompts++] = "KING RICHARD III:\nNow is the winter of our discontent\n";
    }
    lw_backend_desc bd;
    memset(&bd, 0, sizeof bd);
    bd.n_threads = threads;
    if (lw_model_load(&model, path, NULL) != LW_OK || lw_backend_create(&backend, &bd) != LW_OK) {
        fprintf(stderr, "skipsearch: %s\n", lw_last_error());
        return 1;
    }
    lw_model_info in;
    memset(&in, 0, sizeof in);
    lw_model_get_info(model, &in);
    if (max_skip < 0 || max_skip > in.n_layer - 1) max_skip = in.n_layer - 1;
    int skip[4096], n_skip = 0;
    score best = evaluate(skip, 0);
    printf("plain decoding: %d tokens in %d passes; score 1.000\n", best.tokens, best.passes);
    while (n_skip < max_skip) {
        int best_layer = -1;
        score best_try = best;
        for (int l = 0; l < in.n_layer; l++) {
            bool used = false;
            for (int k = 0; k < n_skip; k++) used |= skip[k] == l;
            if (used) continue;
            skip[n_skip] = l;
            score sc = evaluate(skip, n_skip + 1);
            printf("  skip ");
            print_set(skip, n_skip + 1);
            printf(": %.2f tokens per target pass, %d draft passes, score %.3f\n", sc.tokens_per_pass, sc.drafts, sc.value);
            if (sc.value > best_try.value) { best_try = sc; best_layer = l; }
        }
        if (best_layer < 0) break;
        skip[n_skip++] = best_layer;
        best = best_try;
    }
    printf("best skip set: ");
    print_set(skip, n_skip);
    printf("  (score %.3f, %.2f tokens per target pass)\n", best.value, best.tokens_per_pass);
    if (n_skip) {
        printf("use: llmwall -m %s --mode selfspec --skip-layers ", path);
        print_set(skip, n_skip);
        printf("\n");
    }
    lw_backend_free(backend);
    lw_model_free(model);
    return 0;
}
