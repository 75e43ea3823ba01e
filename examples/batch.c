/* batch.c - an app serving several sources at once through lw_engine

   Three "users" type prompts at different moments; a fourth changes its mind and cancels. The app
   submits each request when it arrives and keeps stepping the engine: every step is one forward pass
   for all running requests together (continuous batching), and each request's tokens are streamed to
   its own output as they come. At the end the engine's summary shows what batching bought: rows per
   step, throughput, and the bytes and FLOPs the forward passes moved.

   Build and run (from the repository root):
       cc -O2 -I/usr/include/stb -I. examples/batch.c -o build/example_batch -lm -lpthread
       build/example_batch models/tiny-shakespeare.gguf
*/
#define LLMWALL_IMPLEMENTATION
#include "llmwall.h"
#include <stdio.h>

typedef struct source {
    const char* name;
    const char* prompt;
    int         arrives_at_step;
    int         cancel_at_step;    // 0: never
    lw_request  request;
    char        text[4096];        // what has streamed in so far
    size_t      len;
} source;

static void on_event(const lw_event* ev) {
    source* s = (source*)ev->user;
    if (ev->kind == LW_EVENT_TOKEN) {   // append the piece to this source's own output
        if (s->len + (size_t)ev->piece_len < sizeof s->text) {
            memcpy(s->text + s->len, ev->piece, (size_t)ev->piece_len);
            s->len += (size_t)ev->piece_len;
        }
    } else {
        static const char* why[] = { "running", "length", "stop", "cancelled", "error" };
        printf("== %s finished (%s):\n%s%.*s\n\n", s->name, why[ev->finish], s->prompt, (int)s->len, s->text);
    }
}

int main(int argc, char** argv) {
    lw_model* model;
    lw_backend* backend;
    lw_engine* engine;
    if (lw_model_load(&model, argc > 1 ? argv[1] : "models/tiny-shakespeare.gguf", NULL) ||
        lw_backend_create(&backend, NULL) ||
        lw_engine_create(&engine, model, backend, &(lw_engine_desc){ .max_running = 8 })) {
        fprintf(stderr, "error: %s\n", lw_last_error());
        return 1;
    }
    source sources[] = {
        { "Alice", "ROMEO:\n", 0, 0, { 0 }, "", 0 },
        { "Bob", "JULIET:\nO Romeo", 3, 0, { 0 }, "", 0 },
        { "Carol", "KING RICHARD III:\nNow is the winter", 10, 0, { 0 }, "", 0 },
        { "Dave", "HAMLET:\nTo be", 5, 12, { 0 }, "", 0 },
    };
    int n_sources = (int)(sizeof sources / sizeof sources[0]);
    for (int step = 0; step < 200; step++) {
        for (int i = 0; i < n_sources; i++) {
            source* s = &sources[i];
            if (step == s->arrives_at_step) {
                lw_request_desc d = { .prompt = s->prompt, .max_tokens = 60, .on_event = on_event, .user = s,
                                      .sampler = { .temperature = 0.8f, .top_p = 0.95f, .seed = (uint64_t)i } };
                if (lw_engine_submit(engine, &d, &s->request) != LW_OK) fprintf(stderr, "%s: %s\n", s->name, lw_last_error());
            }
            if (s->cancel_at_step && step == s->cancel_at_step) lw_engine_cancel(engine, s->request);
        }
        if (lw_engine_step(engine) != LW_OK) { fprintf(stderr, "error: %s\n", lw_last_error()); break; }
        if (step > 12 && lw_engine_idle(engine)) break;
    }
    lw_engine_stats st;
    lw_engine_get_stats(engine, &st);
    printf("%lld requests, %lld tokens, %lld steps, %.1f rows per step; forward passes moved %.1f MB at %.1f GB/s and did %.2f GFLOP\n",
           (long long)st.finished, (long long)st.generated_tokens, (long long)st.steps, st.mean_rows_per_step,
           (st.weight_bytes + st.kv_bytes_read + st.kv_bytes_written) / 1e6, st.bytes_per_s / 1e9, st.flops / 1e9);
    lw_engine_free(engine);
    lw_backend_free(backend);
    lw_model_free(model);
    return 0;
}
