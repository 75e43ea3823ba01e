/* generate.c - the smallest program: load a model, stream a continuation of a prompt

   Build and run (from the repository root):
       cc -O2 -I/usr/include/stb -I. examples/generate.c -o build/example_generate -lm -lpthread
       build/example_generate models/tiny-shakespeare.gguf "ROMEO:"
*/
#define LLMWALL_IMPLEMENTATION
#include "llmwall.h"
#include <stdio.h>

static bool print_piece(int32_t token, const char* piece, int len, void* user) {
    (void)token; (void)user;
    fwrite(piece, 1, (size_t)len, stdout);
    fflush(stdout);
    return true;
}

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "models/tiny-shakespeare.gguf";
    const char* prompt = argc > 2 ? argv[2] : "ROMEO:";
    lw_model* model;
    lw_backend* backend;
    lw_ctx* ctx;
    if (lw_model_load(&model, path, NULL) || lw_backend_create(&backend, NULL) || lw_ctx_create(&ctx, model, backend, NULL)) {
        fprintf(stderr, "error: %s\n", lw_last_error());
        return 1;
    }
    lw_generate_desc desc = { 0 };
    desc.prompt = prompt;
    desc.max_tokens = 100;
    desc.sampler.temperature = 0.8f;
    desc.sampler.top_p = 0.95f;
    desc.on_token = print_piece;
    printf("%s", prompt);
    lw_result r = lw_generate(ctx, &desc, NULL);
    printf("\n");
    if (r != LW_OK) fprintf(stderr, "error: %s\n", lw_last_error());
    lw_ctx_free(ctx);
    lw_backend_free(backend);
    lw_model_free(model);
    return r != LW_OK;
}
