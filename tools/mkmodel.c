/* mkmodel - writes a random-weight GGUF model of any supported architecture, shape and tensor type

   For tests and benchmarks: real shapes, random weights (uniform, scaled by 1/sqrt(fan-in) so
   activations stay near unit size), a vocabulary copied from another GGUF or a byte-level one.

       build/mkmodel -o /tmp/llama110m-f16.gguf --dim 768 --layers 12 --heads 12 --ff 2048 \
                     --vocab-from ../shared/vocab/ggml-vocab-llama-spm.gguf --type f16 --tied

   Run with -h for every option.
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include "gguf_writer.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

typedef struct mk_opts {
    const char* out;
    const char* arch;
    const char* vocab_from;
    int dim, layers, heads, kv_heads, head_dim, ff, vocab, ctx, rope_dim, block_size;
    float rope_base, eps, weight_scale;
    lw_type type, embd_type, out_type;
    int tied, bias, mask_token, non_causal, version;
    int q4_k_m;   // llama.cpp's Q4_K_M mix: Q6_K for the output head and some attn_v / ffn_down, Q4_K elsewhere
    uint64_t seed;
} mk_opts;

static void usage(void) {
    fprintf(stderr,
        "usage: mkmodel -o OUT.gguf [options]\n"
        "  --arch A          llama (default), qwen2, llada, dream\n"
        "  --dim N           model width (default 64)\n"
        "  --layers N        layers (default 2)\n"
        "  --heads N         query heads (default 4)\n"
        "  --kv-heads N      key/value heads (default: heads)\n"
        "  --head-dim N      head dimension (default: dim / heads)\n"
        "  --ff N            feed-forward width (default 4 * dim)\n"
        "  --vocab N         vocabulary size (default: the copied vocabulary, or 512 byte-level)\n"
        "  --vocab-from F    copy tokenizer.* metadata from GGUF file F\n"
        "  --ctx N           context length (default 512)\n"
        "  --type T          matrix type: f32, f16, bf16, q8_0, q4_0, q4_k, q6_k (default f32), or q4_k_m:\n"
        "                    Q4_K with Q6_K for the output head (the embedding when tied) and for attn_v and\n"
        "                    ffn_down of the first and last eighth of the layers and every third between, as\n"
        "                    llama.cpp's Q4_K_M (K-quants need widths that are multiples of 256)\n"
        "  --embd-type T     token embedding type (default: --type)\n"
        "  --out-type T      output head type (default: --type)\n"
        "  --tied            no output.weight: the head is the embedding\n"
        "  --bias            Q/K/V biases (default for qwen2 and dream)\n"
        "  --rope-base B     (default 10000)\n"
        "  --rope-dim N      rotated dimensions per head (default: head dim)\n"
        "  --eps E           RMSNorm epsilon (default 1e-5)\n"
        "  --scale S         weight scale multiplier (default 1)\n"
        "  --mask-token      add a mask token id (last id) for diffusion models\n"
        "  --block-size N    diffusion.block_size (block diffusion)\n"
        "  --non-causal      {arch}.attention.causal = false\n"
        "  --gguf-version V  2 or 3 (default 3)\n"
        "  --seed S          (default 1)\n");
}

static int parse_type(const char* s, lw_type* t) {
    static const struct { const char* name; lw_type type; } types[] = {
        { "f32", LW_TYPE_F32 }, { "f16", LW_TYPE_F16 }, { "bf16", LW_TYPE_BF16 }, { "q8_0", LW_TYPE_Q8_0 }, { "q4_0", LW_TYPE_Q4_0 },
        { "q4_k", LW_TYPE_Q4_K }, { "q6_k", LW_TYPE_Q6_K } };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(s, types[i].name) == 0) { *t = types[i].type; return 1; }
    return 0;
}

static uint64_t rng_state;
static float rng_uniform(void) {   // xorshift64*, [-1, 1)
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545F4914F6CDD1Dull;
    return (float)((double)(r >> 11) * 0x1.0p-52 - 1.0);
}

// random values of one tensor, converted to its type
static void add_tensor(gw_file* w, const char* name, lw_type type, int64_t ne0, int64_t ne1, float scale, float center) {
    int64_t n = ne0 * ne1;
    float* x = (float*)malloc((size_t)n * sizeof(float));
    size_t bytes = lw_type_row_size(type, ne0) * (size_t)ne1;
    void* q = malloc(bytes);
    if (!x || !q) { fprintf(stderr, "mkmodel: out of memory\n"); exit(1); }
    for (int64_t i = 0; i < n; i++) x[i] = center + scale * rng_uniform();
    if (lw_quantize(type, x, q, n) != LW_OK) { fprintf(stderr, "mkmodel: %s: %s\n", name, lw_last_error()); exit(1); }
    int64_t ne[2] = { ne0, ne1 };
    gw_tensor(w, name, (uint32_t)type, ne1 > 1 ? 2 : 1, ne, q, bytes);
    free(x);
    free(q);
}

// copies every tokenizer.* key of another GGUF; returns its token count
static int copy_vocab(gw_file* w, const char* path) {
    lw_model* m;
    if (lw_model_load(&m, path, &(lw_model_desc){ .vocab_only = true }) != LW_OK) {
        fprintf(stderr, "mkmodel: %s\n", lw_last_error());
        exit(1);
    }
    int n_tokens = 0;
    const lw__gguf* g = &m->gguf;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const lw__gguf_kv* kv = &g->kv[i];
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.ptr);
        if (strncmp(key, "tokenizer.", 10) != 0) continue;
        if (kv->type == LW__GGUF_STRING) {
            char* v = (char*)malloc((size_t)kv->strings[0].len + 1);
            memcpy(v, kv->strings[0].ptr, (size_t)kv->strings[0].len);
            v[kv->strings[0].len] = 0;
            gw_kv_str(w, key, v);
            free(v);
        } else if (kv->type == LW__GGUF_ARRAY && kv->elem_type == LW__GGUF_STRING) {
            const char** strs = (const char**)malloc((size_t)kv->count * sizeof(char*));
            uint64_t* lens = (uint64_t*)malloc((size_t)kv->count * sizeof(uint64_t));
            for (uint64_t j = 0; j < kv->count; j++) { strs[j] = kv->strings[j].ptr; lens[j] = kv->strings[j].len; }
            gw_kv_arr_str(w, key, strs, lens, kv->count);
            if (strcmp(key, "tokenizer.ggml.tokens") == 0) n_tokens = (int)kv->count;
            free(strs);
            free(lens);
        } else if (kv->type == LW__GGUF_ARRAY) {
            gw_kv_arr(w, key, kv->elem_type, kv->data, kv->count, lw__gguf_value_size[kv->elem_type]);
        } else {
            gw_kv_raw(w, key, kv->type, kv->data, lw__gguf_value_size[kv->type]);
        }
    }
    lw_model_free(m);
    return n_tokens;
}

// A byte-level vocabulary (see gw_byte_vocab), with BOS and EOS.
static void byte_vocab(gw_file* w, int n, int with_mask) {
    char** toks = (char**)malloc((size_t)n * sizeof(char*));
    int32_t* types = (int32_t*)malloc((size_t)n * sizeof(int32_t));
    gw_byte_vocab(n, with_mask, toks, types);
    gw_kv_str(w, "tokenizer.ggml.model", "gpt2");
    gw_kv_str(w, "tokenizer.ggml.pre", "gpt-2");
    gw_kv_arr_str(w, "tokenizer.ggml.tokens", (const char* const*)toks, NULL, (uint64_t)n);
    gw_kv_arr(w, "tokenizer.ggml.token_type", GW_I32, types, (uint64_t)n, 4);
    gw_kv_arr_str(w, "tokenizer.ggml.merges", NULL, NULL, 0);
    gw_kv_u32(w, "tokenizer.ggml.bos_token_id", 256);
    gw_kv_u32(w, "tokenizer.ggml.eos_token_id", 257);
    gw_free_strings(toks, n);
    free(toks);
    free(types);
}

static int arg_int(const char* flag, const char* v, int lo, int hi) {
    char* end;
    long x = strtol(v, &end, 10);
    if (*end || x < lo || x > hi) { fprintf(stderr, "mkmodel: %s %s: expected an integer in [%d, %d]\n", flag, v, lo, hi); exit(1); }
    return (int)x;
}
static float arg_float(const char* flag, const char* v) {
    char* end;
    float x = strtof(v, &end);
    if (*end || !isfinite(x)) { fprintf(stderr, "mkmodel: %s %s: expected a number\n", flag, v); exit(1); }
    return x;
}

int main(int argc, char** argv) {
    mk_opts o;
    memset(&o, 0, sizeof o);
    o.arch = "llama"; o.dim = 64; o.layers = 2; o.heads = 4; o.ctx = 512; o.rope_base = 10000.0f; o.eps = 1e-5f;
    o.weight_scale = 1.0f; o.seed = 1; o.version = 3; o.type = LW_TYPE_F32;
    int embd_type_set = 0, out_type_set = 0;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
        else if (!strcmp(a, "--tied")) { o.tied = 1; takes = 0; }
        else if (!strcmp(a, "--bias")) { o.bias = 1; takes = 0; }
        else if (!strcmp(a, "--mask-token")) { o.mask_token = 1; takes = 0; }
        else if (!strcmp(a, "--non-causal")) { o.non_causal = 1; takes = 0; }
        else if (!v) { fprintf(stderr, "mkmodel: %s needs a value (or is unknown); -h for help\n", a); return 1; }
        else if (!strcmp(a, "-o")) o.out = v;
        else if (!strcmp(a, "--arch")) o.arch = v;
        else if (!strcmp(a, "--vocab-from")) o.vocab_from = v;
        else if (!strcmp(a, "--dim")) o.dim = arg_int(a, v, 1, 1 << 16);
        else if (!strcmp(a, "--layers")) o.layers = arg_int(a, v, 1, 4096);
        else if (!strcmp(a, "--heads")) o.heads = arg_int(a, v, 1, 4096);
        else if (!strcmp(a, "--kv-heads")) o.kv_heads = arg_int(a, v, 1, 4096);
        else if (!strcmp(a, "--head-dim")) o.head_dim = arg_int(a, v, 2, 4096);
        else if (!strcmp(a, "--ff")) o.ff = arg_int(a, v, 1, 1 << 20);
        else if (!strcmp(a, "--vocab")) o.vocab = arg_int(a, v, 1, 1 << 22);
        else if (!strcmp(a, "--ctx")) o.ctx = arg_int(a, v, 1, 1 << 24);
        else if (!strcmp(a, "--rope-dim")) o.rope_dim = arg_int(a, v, 0, 4096);
        else if (!strcmp(a, "--block-size")) o.block_size = arg_int(a, v, 1, 1 << 16);
        else if (!strcmp(a, "--gguf-version")) o.version = arg_int(a, v, 2, 3);
        else if (!strcmp(a, "--rope-base")) o.rope_base = arg_float(a, v);
        else if (!strcmp(a, "--eps")) o.eps = arg_float(a, v);
        else if (!strcmp(a, "--scale")) o.weight_scale = arg_float(a, v);
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)strtoull(v, NULL, 10);
        else if (!strcmp(a, "--type") || !strcmp(a, "--embd-type") || !strcmp(a, "--out-type")) {
            lw_type t;
            int mix = !strcmp(a, "--type") && !strcmp(v, "q4_k_m");
            if (mix) t = LW_TYPE_Q4_K;
            else if (!parse_type(v, &t)) {
                fprintf(stderr, "mkmodel: %s %s: unknown type (f32, f16, bf16, q8_0, q4_0, q4_k, q6_k%s)\n", a, v,
                        strcmp(a, "--type") ? "" : ", q4_k_m");
                return 1;
            }
            if (!strcmp(a, "--type")) { o.type = t; o.q4_k_m = mix; }
            else if (!strcmp(a, "--embd-type")) { o.embd_type = t; embd_type_set = 1; }
            else { o.out_type = t; out_type_set = 1; }
        } else { fprintf(stderr, "mkmodel: unknown option %s; -h for help\n", a); return 1; }
        i += takes;
    }
    if (!o.out) { usage(); return 1; }
    if (!embd_type_set) o.embd_type = o.q4_k_m && o.tied ? LW_TYPE_Q6_K : o.type;   // (tied: the embedding is the head)
    if (!out_type_set) o.out_type = o.q4_k_m ? LW_TYPE_Q6_K : o.type;
    if (!o.kv_heads) o.kv_heads = o.heads;
    if (!o.head_dim) o.head_dim = o.dim / o.heads;
    if (!o.ff) o.ff = 4 * o.dim;
    if (!o.rope_dim) o.rope_dim = o.head_dim;
    if (!strcmp(o.arch, "qwen2") || !strcmp(o.arch, "dream")) o.bias = 1;
    if (o.heads % o.kv_heads) { fprintf(stderr, "mkmodel: heads (%d) must be a multiple of kv-heads (%d)\n", o.heads, o.kv_heads); return 1; }
    int q_dim = o.heads * o.head_dim, kv_dim = o.kv_heads * o.head_dim;
    int bs = lw_type_get_info(o.type).block_size;
    if (o.dim % bs || o.ff % bs || q_dim % bs) {
        fprintf(stderr, "mkmodel: dim %d, ff %d and heads*head_dim %d must be multiples of %d for %s\n", o.dim, o.ff, q_dim, bs,
                lw_type_get_info(o.type).name);
        return 1;
    }
    if (o.dim % lw_type_get_info(o.embd_type).block_size || o.dim % lw_type_get_info(o.out_type).block_size) {
        fprintf(stderr, "mkmodel: dim %d must be a multiple of the embedding and output types' block sizes\n", o.dim);
        return 1;
    }
    rng_state = o.seed * 0x9E3779B97F4A7C15ull + 1;

    gw_file w = gw_begin((uint32_t)o.version);
    char key[128];
#define KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, o.arch), key)
    gw_kv_str(&w, "general.architecture", o.arch);
    gw_kv_str(&w, "general.name", "mkmodel random weights");
    gw_kv_u32(&w, KEY("context_length"), (uint32_t)o.ctx);
    gw_kv_u32(&w, KEY("embedding_length"), (uint32_t)o.dim);
    gw_kv_u32(&w, KEY("block_count"), (uint32_t)o.layers);
    gw_kv_u32(&w, KEY("feed_forward_length"), (uint32_t)o.ff);
    gw_kv_u32(&w, KEY("attention.head_count"), (uint32_t)o.heads);
    gw_kv_u32(&w, KEY("attention.head_count_kv"), (uint32_t)o.kv_heads);
    gw_kv_u32(&w, KEY("attention.key_length"), (uint32_t)o.head_dim);
    gw_kv_u32(&w, KEY("attention.value_length"), (uint32_t)o.head_dim);
    gw_kv_u32(&w, KEY("rope.dimension_count"), (uint32_t)o.rope_dim);
    gw_kv_f32(&w, KEY("rope.freq_base"), o.rope_base);
    gw_kv_f32(&w, KEY("attention.layer_norm_rms_epsilon"), o.eps);
    if (o.non_causal) gw_kv_bool(&w, KEY("attention.causal"), 0);
    if (o.block_size) gw_kv_u32(&w, "diffusion.block_size", (uint32_t)o.block_size);
    int n_vocab;
    if (o.vocab_from) {
        n_vocab = copy_vocab(&w, o.vocab_from);
        if (o.vocab) {
            if (o.vocab < n_vocab) { fprintf(stderr, "mkmodel: --vocab %d is smaller than the copied vocabulary (%d)\n", o.vocab, n_vocab); return 1; }
            n_vocab = o.vocab;
        }
    } else {
        n_vocab = o.vocab ? o.vocab : 512;
        if (n_vocab < 258 + o.mask_token) { fprintf(stderr, "mkmodel: a byte-level vocabulary needs at least %d tokens\n", 258 + o.mask_token); return 1; }
        byte_vocab(&w, n_vocab, o.mask_token);
    }
    if (o.mask_token) gw_kv_u32(&w, "tokenizer.ggml.mask_token_id", (uint32_t)(n_vocab - 1));
    gw_kv_u32(&w, KEY("vocab_size"), (uint32_t)n_vocab);

    float s_in = o.weight_scale / sqrtf((float)o.dim), s_q = o.weight_scale / sqrtf((float)q_dim);
    float s_ff = o.weight_scale / sqrtf((float)o.ff);
    add_tensor(&w, "token_embd.weight", o.embd_type, o.dim, n_vocab, 1.0f, 0.0f);
    char name[96];
    for (int l = 0; l < o.layers; l++) {
#define T(suffix) (snprintf(name, sizeof name, "blk.%d." suffix, l), name)
        add_tensor(&w, T("attn_norm.weight"), LW_TYPE_F32, o.dim, 1, 0.2f, 1.0f);
        add_tensor(&w, T("attn_q.weight"), o.type, o.dim, q_dim, s_in, 0.0f);
        add_tensor(&w, T("attn_k.weight"), o.type, o.dim, kv_dim, s_in, 0.0f);
        // Q4_K_M: attn_v and ffn_down of layer l in Q6_K where llama.cpp's use_more_bits(l, layers) holds
        int more_bits = o.q4_k_m && (l < o.layers / 8 || l >= 7 * o.layers / 8 || (l - o.layers / 8) % 3 == 2);
        lw_type vd_type = more_bits ? LW_TYPE_Q6_K : o.type;
        add_tensor(&w, T("attn_v.weight"), vd_type, o.dim, kv_dim, s_in, 0.0f);
        if (o.bias) {
            add_tensor(&w, T("attn_q.bias"), LW_TYPE_F32, q_dim, 1, 0.1f, 0.0f);
            add_tensor(&w, T("attn_k.bias"), LW_TYPE_F32, kv_dim, 1, 0.1f, 0.0f);
            add_tensor(&w, T("attn_v.bias"), LW_TYPE_F32, kv_dim, 1, 0.1f, 0.0f);
        }
        add_tensor(&w, T("attn_output.weight"), o.type, q_dim, o.dim, s_q, 0.0f);
        add_tensor(&w, T("ffn_norm.weight"), LW_TYPE_F32, o.dim, 1, 0.2f, 1.0f);
        add_tensor(&w, T("ffn_gate.weight"), o.type, o.dim, o.ff, s_in, 0.0f);
        add_tensor(&w, T("ffn_up.weight"), o.type, o.dim, o.ff, s_in, 0.0f);
        add_tensor(&w, T("ffn_down.weight"), vd_type, o.ff, o.dim, s_ff, 0.0f);
#undef T
    }
    add_tensor(&w, "output_norm.weight", LW_TYPE_F32, o.dim, 1, 0.2f, 1.0f);
    if (!o.tied) add_tensor(&w, "output.weight", o.out_type, o.dim, n_vocab, s_in, 0.0f);
    gw_finish(&w);
    if (gw_save(&w, o.out) != 0) { fprintf(stderr, "mkmodel: cannot write %s\n", o.out); return 1; }
    fprintf(stderr, "mkmodel: wrote %s (%.1f MiB, %s, %d layers, width %d, vocab %d)\n", o.out,
            (double)w.size / (1024.0 * 1024.0), o.arch, o.layers, o.dim, n_vocab);
    gw_free(&w);
    return 0;
}
