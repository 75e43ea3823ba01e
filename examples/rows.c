/* rows.c - the forward pass as llmwall's decode modes see it: rows, sequences and masks

   Two sequences share one forward pass: sequence A prefills its prompt (causal rows that commit to
   the KV cache), sequence B scores four candidate next tokens at once as scratch rows (not committed)
   under an explicit mask where each candidate sees only the committed prompt and itself. One pass
   over the weights serves all rows; this is the machinery under batching, speculative verification
   and diffusion decoding.

   Build and run (from the repository root):
       cc -O2 -I/usr/include/stb -I. examples/rows.c -o build/example_rows -lm -lpthread
       build/example_rows models/tiny-shakespeare.gguf
*/
#define LLMWALL_IMPLEMENTATION
#include "llmwall.h"
#include <stdio.h>
#include <stdlib.h>

static int check(lw_result r) {
    if (r != LW_OK) { fprintf(stderr, "error: %s\n", lw_last_error()); exit(1); }
    return 0;
}

int main(int argc, char** argv) {
    lw_model* model;
    lw_backend* backend;
    lw_ctx* ctx;
    check(lw_model_load(&model, argc > 1 ? argv[1] : "models/tiny-shakespeare.gguf", NULL));
    check(lw_backend_create(&backend, NULL));
    check(lw_ctx_create(&ctx, model, backend, NULL));
    lw_model_info info = { 0 };
    lw_model_get_info(model, &info);

    int32_t prompt[64];
    int n_prompt;
    const char* text = "First Citizen:\nBefore we proceed any further, hear me speak.";
    check(lw_tokenize(model, text, strlen(text), LW_TOKENIZE_ADD_SPECIAL, prompt, 64, &n_prompt));

    lw_seq a, b;
    check(lw_seq_create(ctx, &a));
    check(lw_seq_create(ctx, &b));
    // B's prompt first (committed), so its candidates can attend to it
    lw_row rows[80];
    for (int i = 0; i < n_prompt; i++) rows[i] = (lw_row){ prompt[i], i, b, 0, 1 };
    check(lw_ctx_forward(ctx, &(lw_batch){ .rows = rows, .n_rows = n_prompt }));

    // one pass: A's prompt (causal, committed, last row wants logits) + B's 4 candidates (scratch)
    int n = 0;
    for (int i = 0; i < n_prompt; i++) rows[n++] = (lw_row){ prompt[i], i, a, i == n_prompt - 1, 1 };
    const int32_t candidates[4] = { prompt[1], prompt[2], prompt[3], prompt[4] };
    for (int k = 0; k < 4; k++) rows[n++] = (lw_row){ candidates[k], n_prompt, b, 1, 0 };
    static const uint8_t diagonal[16] = { 1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1 };   // each candidate sees itself
    lw_seq_mask mask = { .seq = b, .kind = LW_MASK_EXPLICIT, .allow = diagonal };
    float* logits = malloc((size_t)5 * info.n_vocab * sizeof(float));
    lw_forward_stats st;
    check(lw_ctx_forward(ctx, &(lw_batch){ .rows = rows, .n_rows = n, .masks = &mask, .n_masks = 1, .logits = logits, .stats = &st }));

    printf("one forward pass: %d rows, %.1f MB of weights, %.2f MFLOP, %.2f ms\n", st.rows, st.weight_bytes / 1e6, st.flops / 1e6,
           st.seconds * 1e3);
    for (int k = 0; k < 5; k++) {   // argmax of each row that wanted logits
        const float* l = logits + (size_t)k * info.n_vocab;
        int best = 0;
        for (int t = 1; t < info.n_vocab; t++) if (l[t] > l[best]) best = t;
        char piece[64];
        int len = 0;
        lw_token_to_piece(model, best, false, piece, sizeof piece - 1, &len);
        piece[len < 63 ? len : 63] = 0;
        printf("%s next token: %d '%s'\n", k == 0 ? "sequence A" : "B candidate", best, piece);
    }
    int len_a, len_b;
    lw_seq_length(ctx, a, &len_a);
    lw_seq_length(ctx, b, &len_b);
    printf("committed positions: A %d, B %d (B's candidates were scratch)\n", len_a, len_b);
    free(logits);
    lw_ctx_free(ctx);
    lw_backend_free(backend);
    lw_model_free(model);
    return 0;
}
