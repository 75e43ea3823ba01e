/* diffusion_view.c - watch a diffusion model write: the canvas after every step

   A masked diffusion model starts from a canvas of masks after the prompt and, step by step, fills the
   positions it is most confident about; a block diffusion model does the same one block at a time
   against the KV cache of the finished blocks. This program runs one request through lw_engine and,
   after every lw_engine_step, prints the canvas (lw_request_info.canvas): masks as '_', the tokens this
   step unmasked highlighted (bold green on a terminal, [in brackets] otherwise), line breaks as '|'.

   Build and run (from the repository root):
       cc -O2 -I/usr/include/stb -I. examples/diffusion_view.c -o build/example_diffusion_view -lm -lpthread
       build/example_diffusion_view models/tiny-shakespeare-mdiff.gguf "ROMEO:" diffusion 32 16 8
       build/example_diffusion_view models/tiny-shakespeare-bdiff.gguf "ROMEO:" block 48

   Arguments: MODEL [PROMPT [MODE [N [STEPS [BLOCK_LENGTH [THRESHOLD]]]]]]
       MODE diffusion (default) or block; N tokens after the prompt (default 32); masked diffusion:
       STEPS (default N), BLOCK_LENGTH (default N); THRESHOLD > 0 unmasks every position at least that
       confident (both modes; block diffusion's default is 0.9). Greedy (temperature 0).
*/
#define LLMWALL_IMPLEMENTATION
#include "llmwall.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool use_color;

// One token as the view shows it: its text with line breaks as '|', or '_' for the mask; generated
// control tokens (an end of generation) by name.
static void show_token(const lw_model* model, int32_t id, int32_t mask, bool generated, bool fresh) {
    if (id == mask) { fputc('_', stdout); return; }
    char piece[64];
    int len = 0;
    if (lw_token_to_piece(model, id, generated, piece, (int)sizeof piece, &len) != LW_OK || len > (int)sizeof piece) len = 0;
    if (fresh) fputs(use_color ? "\x1b[1;32m" : "[", stdout);
    for (int i = 0; i < len; i++) fputc(piece[i] == '\n' ? '|' : piece[i], stdout);
    if (fresh) fputs(use_color ? "\x1b[0m" : "]", stdout);
}

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "models/tiny-shakespeare-mdiff.gguf";
    const char* prompt = argc > 2 ? argv[2] : "ROMEO:";
    const char* mode = argc > 3 ? argv[3] : "diffusion";
    int n = argc > 4 ? atoi(argv[4]) : 32;
    use_color = isatty(1);

    lw_model* model = NULL;
    lw_backend* backend = NULL;
    lw_engine* engine = NULL;
    if (lw_model_load(&model, path, NULL) || lw_backend_create(&backend, NULL) || lw_engine_create(&engine, model, backend, NULL)) {
        fprintf(stderr, "error: %s\n", lw_last_error());
        return 1;
    }
    lw_model_info info;
    memset(&info, 0, sizeof info);
    if (lw_model_get_info(model, &info) != LW_OK) return 1;

    lw_request_desc rd;
    memset(&rd, 0, sizeof rd);
    rd.prompt = prompt;
    rd.max_tokens = n;
    rd.mode = strcmp(mode, "block") == 0 ? LW_MODE_BLOCK : LW_MODE_DIFFUSION;
    if (rd.mode == LW_MODE_DIFFUSION) {
        rd.diffusion.steps = argc > 5 ? atoi(argv[5]) : 0;
        rd.diffusion.block_length = argc > 6 ? atoi(argv[6]) : 0;
    }
    rd.diffusion.threshold = argc > 7 ? (float)atof(argv[7]) : 0.0f;
    lw_request h;
    if (lw_engine_submit(engine, &rd, &h) != LW_OK) {
        fprintf(stderr, "error: %s\n", lw_last_error());
        return 1;
    }

    // the previous step's canvas, to highlight what this step unmasked
    int32_t* before = NULL;
    int before_pos = 0, n_before = 0;
    lw_request_info in;
    for (int step = 1; !lw_engine_idle(engine); step++) {
        if (lw_engine_step(engine) != LW_OK) { fprintf(stderr, "error: %s\n", lw_last_error()); return 1; }
        lw_request_get(engine, h, &in);
        if (in.n_canvas == 0 || (in.canvas_pos == before_pos && n_before == in.n_canvas &&
                                 memcmp(before, in.canvas, (size_t)n_before * sizeof(int32_t)) == 0))
            continue;   // a pass that refined nothing visible (a prefill of finished blocks)
        printf("%3d  ", step);
        // the context before the canvas: the prompt, then what earlier blocks produced
        for (int p = 0; p < in.canvas_pos; p++)
            show_token(model, p < in.n_prompt ? in.prompt_ids[p] : in.ids[p - in.n_prompt], info.mask, p >= in.n_prompt, false);
        for (int i = 0; i < in.n_canvas; i++) {
            int p = in.canvas_pos + i, j = p - before_pos;
            bool fresh = p >= in.n_prompt && in.canvas[i] != info.mask &&
                         (j < 0 || j >= n_before || before[j] == info.mask);
            show_token(model, in.canvas[i], info.mask, p >= in.n_prompt, fresh);
        }
        printf("\n");
        before = (int32_t*)realloc(before, (size_t)in.n_canvas * sizeof(int32_t));
        memcpy(before, in.canvas, (size_t)in.n_canvas * sizeof(int32_t));
        before_pos = in.canvas_pos;
        n_before = in.n_canvas;
    }
    lw_request_get(engine, h, &in);
    printf("\n%s%.*s\n[%d tokens in %d forward passes: %.2f tokens per pass]\n", prompt, (int)in.text_len, in.text, in.n_ids,
           in.forwards, in.forwards ? (double)in.n_ids / in.forwards : 0.0);
    free(before);
    lw_engine_free(engine);
    lw_backend_free(backend);
    lw_model_free(model);
    return 0;
}
