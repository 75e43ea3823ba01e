/* test_engine - continuous batching: batched equals alone, preemption, prefix sharing, cancellation,
   accounting, metrics and rejections

   The reference for "batched" is the same request run alone on a fresh engine. With batch-invariant
   kernels the logits each token was drawn from must be bitwise equal too, so every TOKEN event's logits
   are hashed and compared.
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include "lwtest.h"

static lw_model* model;
static lw_backend* backend;
static int n_vocab;

// ---- one request's record, filled by its events

typedef struct rec {
    int32_t  ids[256];
    uint64_t logit_hash[256];
    int      n, n_finish;
    lw_finish_reason finish;
} rec;

static uint64_t hash_floats(const float* x, int n) {   // FNV-1a over the bytes
    uint64_t h = 1469598103934665603ull;
    const uint8_t* p = (const uint8_t*)x;
    for (size_t i = 0; i < (size_t)n * sizeof(float); i++) { h ^= p[i]; h *= 1099511628211ull; }
    return h;
}

static void on_event(const lw_event* ev) {
    rec* r = (rec*)ev->user;
    if (ev->kind == LW_EVENT_TOKEN) {
        if (r->n < 256) {
            r->ids[r->n] = ev->token;
            r->logit_hash[r->n] = ev->logits ? hash_floats(ev->logits, n_vocab) : 0;
        }
        r->n++;
    } else {
        r->n_finish++;
        r->finish = ev->finish;
    }
}

// ---- a workload: prompts of random ids and lengths, output lengths

enum { N_REQ = 40 };
typedef struct job { int32_t prompt[48]; int n_prompt, max_tokens; } job;
static job jobs[N_REQ];

static uint64_t rng = 12345;
static uint32_t rnd(uint32_t n) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)(rng >> 11) % n; }

static void make_jobs(void) {
    for (int i = 0; i < N_REQ; i++) {
        jobs[i].n_prompt = 1 + (int)rnd(40);
        jobs[i].prompt[0] = 1;   // BOS
        for (int k = 1; k < jobs[i].n_prompt; k++) jobs[i].prompt[k] = 4 + (int)rnd((uint32_t)n_vocab - 4);
        jobs[i].max_tokens = 1 + (int)rnd(24);
    }
    // a few share prefixes: copies and partial copies of job 0's prompt
    jobs[0].n_prompt = 40;
    for (int k = 1; k < 40; k++) jobs[0].prompt[k] = 4 + (k * 37) % (n_vocab - 4);
    for (int i = 1; i <= 4; i++) {
        jobs[i] = jobs[0];
        if (i >= 3) jobs[i].prompt[35] = 5 + i;   // differs after 35 tokens
        jobs[i].max_tokens = 5 + i;
    }
}

static lw_engine* engine_new(int max_running, int budget, int64_t kv_tokens, int sharing) {
    lw_engine_desc d;
    memset(&d, 0, sizeof d);
    d.max_running = max_running;
    d.token_budget = budget;
    d.kv_tokens = kv_tokens;
    d.no_prefix_sharing = !sharing;
    lw_engine* e = NULL;
    if (lw_engine_create(&e, model, backend, &d) != LW_OK) printf("engine: %s\n", lw_last_error());
    return e;
}

static lw_request submit(lw_engine* e, int i, rec* r) {
    lw_request_desc d;
    memset(&d, 0, sizeof d);
    d.prompt_ids = jobs[i].prompt;
    d.n_prompt_ids = jobs[i].n_prompt;
    d.max_tokens = jobs[i].max_tokens;
    d.on_event = on_event;
    d.user = r;
    lw_request h = { 0 };
    lw_result res = lw_engine_submit(e, &d, &h);
    if (res != LW_OK) printf("submit %d: %s\n", i, lw_last_error());
    return h;
}

static rec alone[N_REQ];

static void run_alone(void) {
    for (int i = 0; i < N_REQ; i++) {
        lw_engine* e = engine_new(1, 64, 0, 0);
        memset(&alone[i], 0, sizeof alone[i]);
        submit(e, i, &alone[i]);
        lw_engine_run(e);
        lw_engine_free(e);
    }
}

static void compare(const rec* got, const rec* want, int i, int prefix_only) {
    int n = prefix_only ? got->n : want->n;
    LWT_CHECK(got->n_finish == 1, "request %d: %d finish events", i, got->n_finish);
    LWT_CHECK(prefix_only ? got->n <= want->n : got->n == want->n, "request %d: %d tokens, alone %d", i, got->n, want->n);
    LWT_CHECK(n <= 256 && memcmp(got->ids, want->ids, (size_t)LW__MIN(n, 256) * 4) == 0, "request %d: ids differ from alone", i);
    LWT_CHECK(memcmp(got->logit_hash, want->logit_hash, (size_t)LW__MIN(n, 256) * 8) == 0, "request %d: logits not bitwise equal to alone", i);
}

// All requests at once on one engine; with a small pool and cancellations as asked.
static void check_batched(int64_t kv_tokens, int budget, int cancel_every, int sharing, const char* what) {
    lw_engine* e = engine_new(64, budget, kv_tokens, sharing);
    LWT_REQUIRE(e, "engine");
    rec got[N_REQ];
    lw_request h[N_REQ];
    memset(got, 0, sizeof got);
    for (int i = 0; i < N_REQ; i++) h[i] = submit(e, i, &got[i]);
    int64_t free0 = lw_ctx_kv_free_tokens(lw_engine_ctx(e));
    int cancelled[N_REQ] = {0};
    int steps = 0;
    while (!lw_engine_idle(e)) {
        LWT_REQUIRE(lw_engine_step(e) == LW_OK, "%s: step: %s", what, lw_last_error());
        steps++;
        if (cancel_every && steps % cancel_every == 0) {   // cancel one unfinished request
            int i = (int)rnd(N_REQ);
            lw_request_info info;
            if (lw_request_get(e, h[i], &info) == LW_OK && info.state != LW_REQUEST_FINISHED) {
                LWT_CHECK(lw_engine_cancel(e, h[i]) == LW_OK, "cancel");
                cancelled[i] = 1;
            }
        }
        LWT_REQUIRE(steps < 10000, "%s: the engine does not finish", what);
    }
    lw_engine_stats st;
    lw_engine_get_stats(e, &st);
    int64_t tokens = 0;
    for (int i = 0; i < N_REQ; i++) {
        compare(&got[i], &alone[i], i, cancelled[i]);
        if (cancelled[i]) LWT_CHECK(got[i].finish == LW_FINISH_CANCELLED, "request %d: cancelled", i);
        else LWT_CHECK(got[i].finish == alone[i].finish, "request %d: finish %d, alone %d", i, got[i].finish, alone[i].finish);
        lw_request_info info;
        LWT_CHECK(lw_request_get(e, h[i], &info) == LW_OK && info.n_ids == got[i].n, "request %d: info matches events", i);
        LWT_CHECK(info.ttft_ms <= info.e2e_ms && info.queue_ms <= info.e2e_ms, "request %d: ttft %.3f, e2e %.3f", i, info.ttft_ms, info.e2e_ms);
        tokens += info.n_ids;
        LWT_CHECK(lw_request_free(e, h[i]) == LW_OK, "free");
        LWT_CHECK(lw_request_get(e, h[i], &info) == LW_INVALID_REQUEST, "a freed handle is refused");
    }
    LWT_CHECK(st.finished == N_REQ && st.submitted == N_REQ, "%s: %lld submitted, %lld finished", what, (long long)st.submitted, (long long)st.finished);
    LWT_CHECK(st.generated_tokens == tokens, "%s: %lld tokens counted, %lld returned", what, (long long)st.generated_tokens, (long long)tokens);
    LWT_CHECK(lw_ctx_kv_free_tokens(lw_engine_ctx(e)) == free0 && st.kv_pages_used == 0, "%s: the pool is empty again", what);
    printf("  %s: %d steps, %.1f rows/step, %lld preemptions, %lld recomputed, %lld shared tokens, peak %lld of %lld pages\n", what, steps,
           st.mean_rows_per_step, (long long)st.preemptions, (long long)st.recomputed_tokens, (long long)st.shared_tokens,
           (long long)st.kv_pages_peak, (long long)st.kv_pages);
    if (kv_tokens && kv_tokens < 1024) LWT_CHECK(st.preemptions > 0, "%s: the small pool forces preemptions", what);
    lw_engine_free(e);
}

static void test_batched_equals_alone(void) { check_batched(0, 512, 0, 0, "40 requests, big pool"); }
static void test_batched_small_budget(void) { check_batched(0, 16, 0, 0, "40 requests, budget 16 rows"); }
static void test_preemption(void) { check_batched(160, 64, 0, 0, "40 requests, pool of 160 positions"); }
static void test_cancellations(void) { check_batched(320, 64, 3, 1, "40 requests, cancellations, sharing, pool of 320"); }
static void test_prefix_sharing_outputs(void) { check_batched(0, 512, 0, 1, "40 requests with prefix sharing"); }

// Identical and partly identical prompts share pages: the pool holds fewer pages than separate copies need.
static void test_prefix_sharing_pages(void) {
    int64_t peak[2];
    for (int sharing = 0; sharing < 2; sharing++) {
        lw_engine* e = engine_new(8, 512, 0, sharing);
        LWT_REQUIRE(e, "engine");
        rec got[5];
        memset(got, 0, sizeof got);
        for (int i = 0; i < 5; i++) submit(e, i, &got[i]);   // jobs 0-4: 40-token prompts, 0-2 identical, 3-4 share 35
        lw_engine_run(e);
        lw_engine_stats st;
        lw_engine_get_stats(e, &st);
        peak[sharing] = st.kv_pages_peak;
        for (int i = 0; i < 5; i++) compare(&got[i], &alone[i], i, 0);
        if (sharing) LWT_CHECK(st.shared_tokens >= 4 * 32, "shared prompt positions: %lld", (long long)st.shared_tokens);
        lw_engine_free(e);
    }
    // without sharing: 5 x ceil(~50/16) pages; with: one prompt's pages plus each request's own tail
    printf("  peak pages: %lld without sharing, %lld with\n", (long long)peak[0], (long long)peak[1]);
    LWT_CHECK(peak[1] + 8 <= peak[0], "sharing saves pages (%lld vs %lld)", (long long)peak[1], (long long)peak[0]);
}

// ---- metrics on a virtual clock: known timings, hand-computed goodput

static double vclock_now;
static double vclock(void* user) { (void)user; return vclock_now; }

static void test_metrics_virtual_clock(void) {
    lw_engine_desc d;
    memset(&d, 0, sizeof d);
    d.clock = vclock;
    lw_engine* e;
    LWT_REQUIRE(lw_engine_create(&e, model, backend, &d) == LW_OK, "engine");
    vclock_now = 0.0;
    // Steps at 0.125 s, 0.25 s, 0.375 s (binary fractions: the arithmetic is exact).
    // A: 3 tokens, TTFT target 150 ms, TPOT target 125 ms -> met; B: TTFT target 50 ms -> missed.
    static const int32_t pa[4] = { 1, 848, 983, 272 }, pb[3] = { 1, 848, 983 };
    lw_request_desc ra, rb;
    memset(&ra, 0, sizeof ra);
    ra.prompt_ids = pa; ra.n_prompt_ids = 4; ra.max_tokens = 3; ra.ttft_target_ms = 150; ra.tpot_target_ms = 125;
    rb = ra;
    rb.prompt_ids = pb; rb.n_prompt_ids = 3; rb.ttft_target_ms = 50;
    lw_request a, b;
    LWT_REQUIRE(lw_engine_submit(e, &ra, &a) == LW_OK && lw_engine_submit(e, &rb, &b) == LW_OK, "submit");
    for (int step = 1; !lw_engine_idle(e); step++) {   // every step happens at a known time
        vclock_now = 0.125 * step;
        lw_engine_step(e);
    }
    lw_request_info ia, ib;
    lw_request_get(e, a, &ia);
    lw_request_get(e, b, &ib);
    LWT_CHECK(ia.n_ids == 3 && ib.n_ids == 3, "3 tokens each (%d, %d)", ia.n_ids, ib.n_ids);
    LWT_CHECK(ia.ttft_ms == 125 && ib.ttft_ms == 125, "TTFT 125 ms (%.17g, %.17g)", ia.ttft_ms, ib.ttft_ms);
    LWT_CHECK(ia.tpot_ms == 125 && ia.e2e_ms == 375, "TPOT 125 ms, e2e 375 ms (%.17g, %.17g)", ia.tpot_ms, ia.e2e_ms);
    LWT_CHECK(ia.token_ms[0] == 125 && ia.token_ms[1] == 250 && ia.token_ms[2] == 375, "per-token times");
    LWT_CHECK(ia.met_slo && !ib.met_slo, "A meets its targets, B misses its TTFT (%d, %d)", ia.met_slo, ib.met_slo);
    lw_engine_stats st;
    lw_engine_get_stats(e, &st);
    LWT_CHECK(st.elapsed_s == 0.375, "elapsed %.17g s", st.elapsed_s);
    LWT_CHECK(fabs(st.goodput - 1.0 / 0.375) < 1e-12, "goodput %.6f requests/s (1 of 2 in 0.375 s)", st.goodput);
    LWT_CHECK(fabs(st.requests_per_s - 2.0 / 0.375) < 1e-12 && fabs(st.throughput - 6.0 / 0.375) < 1e-12, "throughput %.3f tokens/s", st.throughput);
    LWT_CHECK(st.steps == 3 && st.generated_tokens == 6 && st.prompt_tokens == 7, "steps %lld, tokens %lld", (long long)st.steps,
              (long long)st.generated_tokens);
    LWT_CHECK(st.flops > 0 && st.weight_bytes > 0 && st.arithmetic_intensity > 0, "roofline totals");
    lw_engine_free(e);
}

// ---- stop conditions, streaming order, rejections

static void test_stop_ids_and_strings(void) {
    lw_engine* e = engine_new(4, 64, 0, 0);
    LWT_REQUIRE(e, "engine");
    rec base;
    memset(&base, 0, sizeof base);
    lw_request_desc d;
    memset(&d, 0, sizeof d);
    d.prompt = "ROMEO:";
    d.max_tokens = 40;
    d.on_event = on_event;
    d.user = &base;
    lw_request h;
    LWT_REQUIRE(lw_engine_submit(e, &d, &h) == LW_OK, "submit");
    lw_engine_run(e);
    lw_request_info info;
    lw_request_get(e, h, &info);
    LWT_REQUIRE(info.n_ids >= 10, "a baseline of %d tokens", info.n_ids);
    char* text = (char*)malloc(info.text_len + 1);
    memcpy(text, info.text, info.text_len + 1);
    // a stop id: the 6th token ends generation and is not part of the output
    rec r1;
    memset(&r1, 0, sizeof r1);
    int32_t stop = base.ids[5];
    int first = 0;
    while (base.ids[first] != stop) first++;
    d.stop_ids = &stop;
    d.n_stop_ids = 1;
    d.user = &r1;
    LWT_REQUIRE(lw_engine_submit(e, &d, &h) == LW_OK, "submit");
    lw_engine_run(e);
    lw_request_get(e, h, &info);
    LWT_CHECK(info.finish == LW_FINISH_STOP && info.n_ids == first && memcmp(info.ids, base.ids, (size_t)first * 4) == 0,
              "stop id: %d ids (want %d), finish %d", info.n_ids, first, info.finish);
    // a stop string from the middle of the baseline text
    size_t cut = info.text_len;   // (unused)
    (void)cut;
    char stop_text[8];
    size_t at = strlen(text) / 2;
    memcpy(stop_text, text + at, 3);
    stop_text[3] = 0;
    const char* stops[1] = { stop_text };
    rec r2;
    memset(&r2, 0, sizeof r2);
    d.stop_ids = NULL;
    d.n_stop_ids = 0;
    d.stop_strings = stops;
    d.n_stop_strings = 1;
    d.user = &r2;
    LWT_REQUIRE(lw_engine_submit(e, &d, &h) == LW_OK, "submit");
    lw_engine_run(e);
    lw_request_get(e, h, &info);
    const char* first_hit = strstr(text, stop_text);
    LWT_CHECK(info.finish == LW_FINISH_STOP && first_hit && info.text_len == (size_t)(first_hit - text) &&
              strncmp(info.text, text, info.text_len) == 0, "stop string '%s': text cut at %zu (want %zu)", stop_text, info.text_len,
              first_hit ? (size_t)(first_hit - text) : 0);
    LWT_CHECK(r2.n == info.n_ids && r2.n_finish == 1, "every token streamed before the finish");
    free(text);
    lw_engine_free(e);
}

static void test_rejections(void) {
    lw_engine_desc d;
    memset(&d, 0, sizeof d);
    d.n_ctx = 64;
    d.kv_tokens = 48;
    d.kv_page_size = 16;
    d.max_queue = 2;
    lw_engine* e;
    LWT_REQUIRE(lw_engine_create(&e, model, backend, &d) == LW_OK, "engine");
    int32_t ids[80];
    for (int i = 0; i < 80; i++) ids[i] = 4 + i;
    lw_request_desc r;
    memset(&r, 0, sizeof r);
    r.prompt_ids = ids;
    lw_request h;
    r.n_prompt_ids = 64;
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_CONTEXT_FULL && strstr(lw_last_error(), "64"), "a prompt as long as the context: %s", lw_last_error());
    r.n_prompt_ids = 50;
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_KV_FULL && strstr(lw_last_error(), "never fit"), "a prompt larger than the pool: %s", lw_last_error());
    r.n_prompt_ids = 8;
    r.max_tokens = -1;
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_INVALID_ARGS && strstr(lw_last_error(), "max_tokens"), "negative max_tokens");
    r.max_tokens = 4;
    r.sampler.temperature = -2;
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_INVALID_ARGS && strstr(lw_last_error(), "temperature"), "bad sampler");
    r.sampler.temperature = 0;
    ids[3] = n_vocab;
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_INVALID_TOKEN, "token out of range");
    ids[3] = 7;
    r.mode = (lw_decode_mode)42;
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_INVALID_ARGS && strstr(lw_last_error(), "mode"), "unknown mode");
    r.mode = LW_MODE_AR;
    lw_request a, b;
    LWT_CHECK(lw_engine_submit(e, &r, &a) == LW_OK && lw_engine_submit(e, &r, &b) == LW_OK, "two fit in the queue");
    LWT_CHECK(lw_engine_submit(e, &r, &h) == LW_QUEUE_FULL, "the third is refused: %s", lw_last_error());
    lw_engine_stats st;
    lw_engine_get_stats(e, &st);
    LWT_CHECK(st.rejected == 7 && st.submitted == 2, "7 rejected, 2 submitted (%lld, %lld)", (long long)st.rejected, (long long)st.submitted);
    lw_request bogus = { 0x00050007 };
    LWT_CHECK(lw_engine_cancel(e, bogus) == LW_INVALID_REQUEST, "a fabricated handle");
    LWT_CHECK(lw_engine_cancel(e, a) == LW_OK, "cancel a waiting request");
    lw_request_info info;
    LWT_CHECK(lw_request_get(e, a, &info) == LW_OK && info.finish == LW_FINISH_CANCELLED, "it is finished as cancelled");
    LWT_CHECK(lw_engine_run(e) == LW_OK, "run");
    LWT_CHECK(lw_request_free(e, a) == LW_OK && lw_request_free(e, b) == LW_OK, "free both");
    lw_request c;
    LWT_CHECK(lw_engine_submit(e, &r, &c) == LW_OK && c.id != a.id && c.id != b.id, "a recycled slot gets a new handle");
    LWT_CHECK(lw_request_get(e, a, &info) == LW_INVALID_REQUEST, "the old handle stays invalid");
    lw_engine_free(e);
}

// A lone sequence that outgrows the pool ends with LW_FINISH_LENGTH instead of failing.
static void test_pool_limits_lone_sequence(void) {
    lw_engine_desc d;
    memset(&d, 0, sizeof d);
    d.kv_tokens = 32;
    d.kv_page_size = 16;
    lw_engine* e;
    LWT_REQUIRE(lw_engine_create(&e, model, backend, &d) == LW_OK, "engine");
    static const int32_t p[3] = { 1, 848, 983 };
    lw_request_desc r;
    memset(&r, 0, sizeof r);
    r.prompt_ids = p;
    r.n_prompt_ids = 3;
    r.max_tokens = 100;
    lw_request h;
    LWT_REQUIRE(lw_engine_submit(e, &r, &h) == LW_OK, "submit");
    LWT_CHECK(lw_engine_run(e) == LW_OK, "run");
    lw_request_info info;
    lw_request_get(e, h, &info);
    // 32 positions hold the prompt and 29 generated tokens; the 30th is sampled but never needs a position
    LWT_CHECK(info.finish == LW_FINISH_LENGTH && info.n_ids == 32 - 3 + 1, "stops when the pool is full: %d tokens, finish %d", info.n_ids, info.finish);
    lw_engine_free(e);
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    lw_backend_desc bd;
    memset(&bd, 0, sizeof bd);
    bd.kind = LW_BACKEND_CPU;
    bd.n_threads = 2;
    if (lw_model_load(&model, "models/tiny-shakespeare.gguf", NULL) != LW_OK || lw_backend_create(&backend, &bd) != LW_OK) {
        printf("setup: %s\n", lw_last_error());
        return 1;
    }
    lw_model_info info;
    memset(&info, 0, sizeof info);
    lw_model_get_info(model, &info);
    n_vocab = info.n_vocab;
    make_jobs();
    run_alone();
    LWT_RUN(test_batched_equals_alone);
    LWT_RUN(test_batched_small_budget);
    LWT_RUN(test_preemption);
    LWT_RUN(test_cancellations);
    LWT_RUN(test_prefix_sharing_outputs);
    LWT_RUN(test_prefix_sharing_pages);
    LWT_RUN(test_metrics_virtual_clock);
    LWT_RUN(test_stop_ids_and_strings);
    LWT_RUN(test_rejections);
    LWT_RUN(test_pool_limits_lone_sequence);
    lw_backend_free(backend);
    lw_model_free(model);
    return lwt_finish();
}
