/* test_cpp - llmwall.h compiled as C++ (implementation included, every function static) and used from C++

   The Makefile builds this with -std=c++17 -Wall -Wextra; a warning-free build is part of the test.
*/
#define LLMWALL_STATIC
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include "lwtest.h"
#include <string>
#include <vector>

static void test_cpp_generate(void) {
    lw_model* model = nullptr;
    LWT_REQUIRE(lw_model_load(&model, lwt_shared("models/stories260K.gguf"), nullptr) == LW_OK, "load: %s", lw_last_error());
    lw_backend* backend = nullptr;
    lw_ctx* ctx = nullptr;
    lw_backend_desc bd{};
    bd.kind = LW_BACKEND_CPU;
    bd.n_threads = 2;
    LWT_REQUIRE(lw_backend_create(&backend, &bd) == LW_OK, "backend");
    LWT_REQUIRE(lw_ctx_create(&ctx, model, backend, nullptr) == LW_OK, "ctx");
    std::vector<int32_t> prompt = { 1, 403, 407, 261, 378 };
    std::vector<int32_t> streamed;
    lw_generate_desc gd{};
    gd.prompt_ids = prompt.data();
    gd.n_prompt_ids = (int)prompt.size();
    gd.max_tokens = 8;
    gd.user = &streamed;
    gd.on_token = [](int32_t token, const char*, int, void* user) -> bool {
        static_cast<std::vector<int32_t>*>(user)->push_back(token);
        return true;
    };
    lw_generate_result res{};
    LWT_CHECK(lw_generate(ctx, &gd, &res) == LW_OK, "generate: %s", lw_last_error());
    LWT_CHECK(res.n_ids == 8 && streamed.size() == 8, "8 tokens (%d, streamed %zu)", res.n_ids, streamed.size());
    const int32_t want[8] = { 473, 473, 473, 473, 473, 473, 473, 483 };   // llama.cpp's greedy ids for p1
    LWT_CHECK(std::vector<int32_t>(res.ids, res.ids + res.n_ids) == std::vector<int32_t>(want, want + 8), "greedy ids");
    LWT_CHECK(std::string(lw_result_string(LW_KV_FULL)).find("KV") != std::string::npos, "result strings");
    lw_generate_result_free(&res);
    lw_ctx_free(ctx);
    lw_backend_free(backend);
    lw_model_free(model);
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    LWT_RUN(test_cpp_generate);
    return lwt_finish();
}
