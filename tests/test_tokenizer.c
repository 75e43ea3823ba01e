/* test_tokenizer - the "llama" (SentencePiece BPE) and "gpt2" (byte-level BPE) tokenizers against llama.cpp

   ../shared/vocab holds llama.cpp's tokenizer test vocabularies (ggml-vocab-*.gguf) with its test texts
   (.inp: cases separated by lines "__ggml_vocab_test__") and the ids they must give (.out: one line per
   case). llama.cpp's tests/test-tokenizer-0 runs them with add_special = false, parse_special = false;
   so do we, and every case must match, then decode back to its text (SentencePiece: less the space the
   tokenizer put in front).

   The other references were computed with llama.cpp b4748 (c392e5094, the build in /work/llamacpp):
   - pre-tokenizers that no shared vocabulary uses (Llama 3's, Qwen2's, DeepSeek's, ...): the GPT-2
     vocabulary with tokenizer.ggml.pre patched in memory, run on the same texts plus a few more; each
     case's ids (formatted "1 2 3") are kept as an FNV-1a hash;
   - special tokens (control, user-defined, strip flags) with every flag combination, verbatim;
   - ../shared/ref/stories260K: the ids llama-tokenize gave for two prompts, with BOS.
   Then: defaults of add_bos, end-of-generation tokens, pieces, invalid ids, refused vocabularies (built
   in memory with tools/gguf_writer.h), hand-made vocabularies that pin down the merge order, every
   code point through encode and decode, long pathological inputs, and the Unicode table.
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include "../tools/gguf_writer.h"
#include "lwtest.h"
#include <sys/stat.h>

// ---- helpers

static const char* const vocab_names[] = { "gpt-2", "llama-spm", "phi-3", "deepseek-coder", "falcon", "starcoder" };
#define N_VOCABS 6
static lw_model* vocab_models[N_VOCABS];

static lw_model* load_path(const char* path) {
    lw_model* m = NULL;
    lw_model_desc d;
    memset(&d, 0, sizeof d);
    d.vocab_only = true;
    lw_result r = lw_model_load(&m, path, &d);
    if (r) printf("  cannot load %s: %s\n", path, lw_last_error());
    return m;
}

static lw_model* vocab(const char* name) {
    for (int i = 0; i < N_VOCABS; i++) {
        if (strcmp(vocab_names[i], name) != 0) continue;
        if (!vocab_models[i]) {
            char rel[128];
            snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf", name);
            vocab_models[i] = load_path(lwt_shared(rel));
        }
        return vocab_models[i];
    }
    return NULL;
}

static lw_model* load_memory(const void* data, size_t size, lw_result* r) {
    lw_model* m = NULL;
    lw_model_desc d;
    memset(&d, 0, sizeof d);
    d.vocab_only = true;
    *r = lw_model_load_memory(&m, data, size, &d);
    return m;
}

// Tokenizes into a malloc'd array; -1 on error.
static int tokenize(const lw_model* m, const char* text, size_t len, unsigned flags, int32_t** ids) {
    int n = 0;
    *ids = NULL;
    lw_result r = lw_tokenize(m, text, len, flags, NULL, 0, &n);
    if (r != LW_OK && r != LW_BUFFER_TOO_SMALL) return -1;
    *ids = (int32_t*)malloc((size_t)n * sizeof(int32_t) + 1);
    if (lw_tokenize(m, text, len, flags, *ids, n, &n) != LW_OK) return -1;
    return n;
}

// "1 2 3" into buf (cut to fit)
static const char* format_ids(const int32_t* ids, int n, char* buf, size_t size) {
    size_t at = 0;
    buf[0] = 0;
    for (int i = 0; i < n && at + 12 < size; i++) at += (size_t)snprintf(buf + at, size - at, i ? " %d" : "%d", ids[i]);
    return buf;
}

static uint32_t fnv(const char* s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

// Decodes ids; returns a malloc'd NUL-terminated string and its length.
static char* detokenize(const lw_model* m, const int32_t* ids, int n, bool strip, size_t* len) {
    size_t need = 0, got = 0;
    lw_detokenize(m, ids, n, false, strip, NULL, 0, &need);
    char* out = (char*)malloc(need + 1);
    if (lw_detokenize(m, ids, n, false, strip, out, need + 1, &got) != LW_OK) { free(out); return NULL; }
    if (len) *len = got;
    return out;
}

// Decodes ids piece by piece, as llama.cpp's detokenize does: with strip_first, a leading space of the
// first piece goes (the one a SentencePiece tokenizer put in front). malloc'd, NUL-terminated.
static char* decode_pieces(const lw_model* m, const int32_t* ids, int n, bool strip_first, size_t* len) {
    size_t at = 0, cap = 64;
    char* out = (char*)malloc(cap);
    for (int i = 0; i < n; i++) {
        char piece[512];
        int k = 0;
        if (lw_token_to_piece(m, ids[i], false, piece, sizeof piece, &k) != LW_OK) { free(out); return NULL; }
        const char* p = piece;
        if (i == 0 && strip_first && k > 0 && p[0] == ' ') { p++; k--; }
        while (at + (size_t)k + 1 > cap) cap *= 2;
        out = (char*)realloc(out, cap);
        memcpy(out + at, p, (size_t)k);
        at += (size_t)k;
    }
    out[at] = 0;
    if (len) *len = at;
    return out;
}

// Splits a .inp file into its cases (pointers into text, which is modified).
static int split_cases(char* text, char** cases, size_t* lens, int max) {
    const char* sep = "\n__ggml_vocab_test__\n";
    size_t sl = strlen(sep);
    int n = 0;
    char* p = text;
    char* end = text + strlen(text);
    while (p < end && n < max) {
        char* q = strstr(p, sep);
        cases[n] = p;
        lens[n] = q ? (size_t)(q - p) : strlen(p);
        n++;
        if (!q) break;
        p = q + sl;
    }
    return n;
}

// ---- llama.cpp's vocabulary tests: encode == .out, decode(encode(s)) == s

static void run_vocab_file(const char* name) {
    lw_model* m = vocab(name);
    LWT_REQUIRE(m, "cannot load ggml-vocab-%s.gguf: %s", name, lw_last_error());
    char rel[128];
    snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf.inp", name);
    char* inp = lwt_read_file(lwt_shared(rel), NULL);
    snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf.out", name);
    char* out = lwt_read_file(lwt_shared(rel), NULL);
    LWT_REQUIRE(inp && out, "cannot read the .inp/.out files of %s", name);
    char* cases[128];
    char* lines[128];
    size_t lens[128];
    int n = split_cases(inp, cases, lens, 128), n_lines = 0, encoded = 0, round_trip = 0;
    for (char* p = out; *p && n_lines < 128;) {      // one line per case (an empty case: an empty line)
        lines[n_lines++] = p;
        char* nl = strchr(p, '\n');
        if (!nl) break;
        *nl = 0;
        p = nl + 1;
    }
    LWT_CHECK(n == n_lines, "%s: %d cases but %d expected lines", name, n, n_lines);
    lw_model_info info;
    lw_model_get_info(m, &info);
    for (int i = 0; i < n && i < n_lines; i++) {
        int32_t* ids;
        int k = tokenize(m, cases[i], lens[i], 0, &ids);
        char got[8192];
        const char* want = lines[i];
        while (*want == ' ') want++;
        format_ids(ids, k, got, sizeof got);
        size_t wl = strlen(want);
        while (wl && (want[wl - 1] == ' ' || want[wl - 1] == '\r')) wl--;
        bool ok = k >= 0 && strlen(got) == wl && memcmp(got, want, wl) == 0;
        encoded += ok;
        LWT_CHECK(ok, "%s case %d ('%.40s'): got [%.200s], want [%.*s]", name, i, cases[i], got, (int)LW__MIN(wl, 200), want);
        size_t dl = 0;
        char* dec = k >= 0 ? decode_pieces(m, ids, k, m->tok.kind == LW__TOK_SPM && m->tok.add_space_prefix, &dl) : NULL;
        bool rt = dec && dl == lens[i] && memcmp(dec, cases[i], dl) == 0;
        round_trip += rt;
        LWT_CHECK(rt, "%s case %d ('%.40s'): decodes to '%.60s'", name, i, cases[i], dec ? dec : "(error)");
        free(dec);
        free(ids);
    }
    printf("  ggml-vocab-%s: %d/%d encoded as llama.cpp, %d/%d round-trip\n", name, encoded, n, round_trip, n);
    free(inp);
    free(out);
}

static void test_vocab_gpt2(void)           { run_vocab_file("gpt-2"); }
static void test_vocab_llama_spm(void)      { run_vocab_file("llama-spm"); }
static void test_vocab_phi3(void)           { run_vocab_file("phi-3"); }
static void test_vocab_deepseek_coder(void) { run_vocab_file("deepseek-coder"); }
static void test_vocab_falcon(void)         { run_vocab_file("falcon"); }
static void test_vocab_starcoder(void)      { run_vocab_file("starcoder"); }

// ---- pre-tokenizers without a shared vocabulary: the GPT-2 vocabulary with another tokenizer.ggml.pre

// Returns a malloc'd copy of a (tensor-free) GGUF file with the string key `key` set to value, or removed
// when value is NULL.
static uint8_t* patch_string_key(const uint8_t* data, size_t size, const char* key, const char* value, size_t* out_size) {
    lw__gguf g;
    if (lw__gguf_parse(&g, data, size, NULL, NULL) != LW_OK || g.n_tensors != 0) { lw__gguf_free(&g); return NULL; }
    const lw__gguf_kv* kv = lw__gguf_find(&g, key);
    uint64_t n_kv = g.n_kv;
    size_t start = size, end = size;                 // the bytes of the old entry
    if (kv) {
        start = (size_t)((const uint8_t*)kv->key.ptr - 8 - data);
        end = (size_t)((const uint8_t*)kv->strings[0].ptr + kv->strings[0].len - data);
        n_kv--;
    } else {
        // append after the last key: the end of the value whose data ends last
        end = 24;
        for (uint64_t i = 0; i < g.n_kv; i++) {
            const lw__gguf_kv* k = &g.kv[i];
            size_t e = k->strings ? (size_t)((const uint8_t*)k->strings[k->count - 1].ptr + k->strings[k->count - 1].len - data)
                                  : (size_t)(k->data - data) + (size_t)k->count * lw__gguf_value_size[k->elem_type];
            if (e > end) end = e;
        }
        start = end;
    }
    lw__gguf_free(&g);
    gw_buf b = { NULL, 0, 0 };
    gw_put(&b, data, start);
    if (value) {
        gw_str(&b, key);
        gw_u32(&b, GW_STRING);
        gw_str(&b, value);
        n_kv++;
    }
    gw_put(&b, data + end, size - end);
    memcpy(b.p + 16, &n_kv, 8);
    *out_size = b.n;
    return b.p;
}

static const char* const pre_extra_cases[] = {
    "Hello, World! 1234567 \xc2\xbd \xd9\xa3\xd9\xa4\xd9\xa5 'S 'LL don't WE'RE i'M",
    "  \n\n  \t\r\n x\xe3\x80\x80y\xc2\xa0z\xe2\x80\xa8w\xc2\x85v",
    "\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\xe7\xac\xa6 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x82\xab\xe3\x82\xbf\xe3\x82\xab"
    "\xe3\x83\x8a \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4 \xe3\x80\x82\xef\xbc\x8c\xe3\x80\x81",
    "a~b`c$d+e<f=g>h^i|j ~~ `` $$",
    "e\xcc\x81 \xef\xac\x81 \xe2\x85\xab \xf0\x9d\x9f\x99\xf0\x9d\x9f\x9a \xf0\x90\x90\x80 \xf0\x9f\xa6\x99\xf0\x9f\xa6\x99 "
    "\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
    "x    \n   y\n\n\n   \n",
    "ABC123def456GHI7890 12.5 3,000,000",
    "...!!!?\?\?---___ (a) [b] {c} \"d\" \xe2\x80\xa6 \xe2\x80\x94 \xe2\x80\x9cq\xe2\x80\x9d",
    "\xe0\xa4\x95\xe0\xa5\x8d\xe0\xa4\xb7 \xd8\xa7\xd9\x84\xd8\xb9\xd8\xb1\xd8\xa8\xd9\x8a\xd8\xa9 \xd7\xa2\xd7\x91\xd7\xa8\xd7\x99"
    "\xd7\xaa \xd0\x96\xd0\xb6 \xce\xbb\xce\xb1",
    "tab\there\x0bvt\x0c" "ff\x1c" "fs end  ",
};

// FNV-1a of llama.cpp's ids (formatted "1 2 3") for the 46 cases of ggml-vocab-gpt-2.gguf.inp, then the
// 10 above; NULL: tokenizer.ggml.pre removed (llama.cpp's "default").
static const struct { const char* pre; uint32_t hash[56]; } pre_expect[] = {
    { NULL, {
        0x2f25c7c2, 0xf57f1d11, 0x811c9dc5, 0x2fec7e8f, 0x06ad92f7, 0xc4a5737f, 0xf621d998, 0xf521d805,
        0xfca10b1b, 0xb6e69029, 0x2b00ecda, 0x08d315af, 0xe67af40d, 0x0fd34ad9, 0xe33af547, 0x70efa40f,
        0x836e1201, 0x36f10adb, 0xe564638d, 0xd30e2d04, 0x32d4b791, 0xd4ea9b83, 0x2cf171dd, 0xfba458fe,
        0x27a141fc, 0x0fa67814, 0xb52a636c, 0x661f6564, 0xc356b569, 0x20bd0b7e, 0x566ff0d5, 0x381c0402,
        0x9c9f85aa, 0x0891c757, 0x13eb1dac, 0x3d17efb9, 0xc360d31b, 0x53e7c358, 0x850e4155, 0xf6fa1cd7,
        0x379637bc, 0x9dbfbec9, 0xda4e626b, 0x8b35d1be, 0xb2176941, 0x532c0cf2, 0x116be9fe, 0x0510b3ea,
        0x5e88086b, 0x82717307, 0x101d5332, 0x78e660ef, 0xa5233403, 0xf9d8a11f, 0x747f8cb3, 0x0727147d,
    } },
    { "llama-bpe", {
        0x2f25c7c2, 0xf57f1d11, 0x811c9dc5, 0x2fec7e8f, 0x06ad92f7, 0xc4a5737f, 0xf621d998, 0xf521d805,
        0xfca10b1b, 0xb6e69029, 0x2b00ecda, 0x08d315af, 0xe67af40d, 0x0fd34ad9, 0xe33af547, 0x70efa40f,
        0x836e1201, 0x36f10adb, 0xe564638d, 0xd30e2d04, 0x32d4b791, 0xd4ea9b83, 0x39e3486d, 0xfba458fe,
        0x27a141fc, 0x0fa67814, 0xb52a636c, 0x661f6564, 0xc356b569, 0x405cb546, 0xf651f59f, 0x381c0402,
        0x67452548, 0x0891c757, 0x13eb1dac, 0x3d17efb9, 0xc360d31b, 0x53e7c358, 0x850e4155, 0xf6fa1cd7,
        0x379637bc, 0x9dbfbec9, 0xda4e626b, 0x8b35d1be, 0xb2176941, 0xe3dc903f, 0x36c4237a, 0x0510b3ea,
        0x5e88086b, 0xfde36974, 0x101d5332, 0x78e660ef, 0xa5233403, 0x2e8f1acf, 0x747f8cb3, 0x0727147d,
    } },
    { "qwen2", {
        0x2f25c7c2, 0xf57f1d11, 0x811c9dc5, 0x2fec7e8f, 0x06ad92f7, 0xc4a5737f, 0xf621d998, 0xf521d805,
        0xfca10b1b, 0xb6e69029, 0x2b00ecda, 0x08d315af, 0xe67af40d, 0x0fd34ad9, 0xe33af547, 0x70efa40f,
        0x836e1201, 0x36f10adb, 0xe564638d, 0xfd4b9d8a, 0x32d4b791, 0xd4ea9b83, 0x39e3486d, 0xfba458fe,
        0x27a141fc, 0x0fa67814, 0xb52a636c, 0x661f6564, 0xc356b569, 0x405cb546, 0xf651f59f, 0x381c0402,
        0xd49f3be3, 0x0891c757, 0x13eb1dac, 0x9d2d9ed5, 0x5a7667a6, 0x8f0234d3, 0xbf71bfb0, 0xb8307bb1,
        0xd154d0ca, 0x4e529b5f, 0xbcdd6004, 0x8b35d1be, 0xb2176941, 0xac404a89, 0xd7d5af23, 0x0510b3ea,
        0x5e88086b, 0xfde36974, 0x101d5332, 0x78e660ef, 0x7112d2e5, 0x2e8f1acf, 0x747f8cb3, 0x0727147d,
    } },
    { "deepseek-llm", {
        0x2f25c7c2, 0xf57f1d11, 0x811c9dc5, 0x2fec7e8f, 0x06ad92f7, 0xc4a5737f, 0xf621d998, 0xf521d805,
        0x8609fde3, 0x0d8e9451, 0x2b00ecda, 0x08d315af, 0xe67af40d, 0x0fd34ad9, 0xe33af547, 0x70efa40f,
        0x836e1201, 0x36f10adb, 0xe564638d, 0xd30e2d04, 0x32d4b791, 0xd4ea9b83, 0x042c89d5, 0xfba458fe,
        0x27a141fc, 0x0fa67814, 0xb52a636c, 0x661f6564, 0xc356b569, 0x405cb546, 0xf651f59f, 0x381c0402,
        0x25d1a0d1, 0x0891c757, 0x13eb1dac, 0x3d17efb9, 0xc360d31b, 0x94f509dd, 0x5649e039, 0x735fa7d7,
        0x479d4665, 0x649f1157, 0xf92f956b, 0x8b35d1be, 0xb2176941, 0x4554177f, 0xf61797a4, 0x696fadd2,
        0x374f903a, 0xfde36974, 0x101d5332, 0xe38f5397, 0xb18070c9, 0x8f5f5574, 0x747f8cb3, 0x0727147d,
    } },
    { "deepseek-v3", {
        0x2f25c7c2, 0xf57f1d11, 0x811c9dc5, 0x2fec7e8f, 0x06ad92f7, 0xc4a5737f, 0xf621d998, 0xf521d805,
        0xfca10b1b, 0xb6e69029, 0x2b00ecda, 0x08d315af, 0xe67af40d, 0x0fd34ad9, 0xe33af547, 0x70efa40f,
        0x836e1201, 0x36f10adb, 0xe564638d, 0xd30e2d04, 0x32d4b791, 0xd4ea9b83, 0x39e3486d, 0xfba458fe,
        0x27a141fc, 0x0fa67814, 0xb52a636c, 0x661f6564, 0xc356b569, 0x405cb546, 0xf651f59f, 0x381c0402,
        0x67452548, 0x0891c757, 0x13eb1dac, 0x3d17efb9, 0xc360d31b, 0x53e7c358, 0x850e4155, 0xf6fa1cd7,
        0x379637bc, 0x9dbfbec9, 0xda4e626b, 0x8b35d1be, 0xb2176941, 0xe3dc903f, 0x36c4237a, 0x0510b3ea,
        0x374f903a, 0xfde36974, 0x101d5332, 0x78e660ef, 0xa5233403, 0x2e8f1acf, 0x747f8cb3, 0x0727147d,
    } },
    { "poro-chat", {
        0xd7aba308, 0xf57f1d11, 0x811c9dc5, 0x2fec7e8f, 0x06ad92f7, 0xc4a5737f, 0xf621d998, 0xf521d805,
        0xfca10b1b, 0xb6e69029, 0x2b00ecda, 0x08d315af, 0xe67af40d, 0x0fd34ad9, 0xe33af547, 0x70efa40f,
        0x836e1201, 0x36f10adb, 0xe564638d, 0x31c46dde, 0x32d4b791, 0xd4ea9b83, 0x39e3486d, 0xfba458fe,
        0x27a141fc, 0x0fa67814, 0xb52a636c, 0x661f6564, 0xc356b569, 0x405cb546, 0xf651f59f, 0x381c0402,
        0x25d1a0d1, 0x0891c757, 0x13eb1dac, 0x3d17efb9, 0xc360d31b, 0x94f509dd, 0x5649e039, 0x735fa7d7,
        0x479d4665, 0x649f1157, 0xf92f956b, 0x8b35d1be, 0xb2176941, 0x66247fd3, 0xd70b8fbc, 0x0510b3ea,
        0x5e88086b, 0xfde36974, 0x550eefe6, 0x78e660ef, 0x37e64236, 0x2e8f1acf, 0x747f8cb3, 0x0727147d,
    } },
    { "viking", {
        0x2f25c7c2, 0xf57f1d11, 0x811c9dc5, 0x2fec7e8f, 0x06ad92f7, 0xc4a5737f, 0xf621d998, 0xf521d805,
        0xfca10b1b, 0xb6e69029, 0x2b00ecda, 0x08d315af, 0xe67af40d, 0x0fd34ad9, 0xe33af547, 0x70efa40f,
        0x836e1201, 0x36f10adb, 0xe564638d, 0xfd4b9d8a, 0x32d4b791, 0xd4ea9b83, 0x39e3486d, 0xfba458fe,
        0x27a141fc, 0x0fa67814, 0xb52a636c, 0x661f6564, 0xc356b569, 0x405cb546, 0xf651f59f, 0x381c0402,
        0xd49f3be3, 0x0891c757, 0x13eb1dac, 0x9d2d9ed5, 0x5a7667a6, 0x8f0234d3, 0xbf71bfb0, 0xb8307bb1,
        0xd154d0ca, 0x4e529b5f, 0xbcdd6004, 0x8b35d1be, 0xb2176941, 0xa4ac8040, 0xd7d5af23, 0x0510b3ea,
        0x5e88086b, 0xfde36974, 0x101d5332, 0x78e660ef, 0x7112d2e5, 0x2e8f1acf, 0x747f8cb3, 0x0727147d,
    } },
};

static uint8_t* gpt2_with_pre(const char* pre, size_t* size) {
    size_t n = 0;
    char* data = lwt_read_file(lwt_shared("vocab/ggml-vocab-gpt-2.gguf"), &n);
    if (!data) return NULL;
    uint8_t* p = patch_string_key((const uint8_t*)data, n, "tokenizer.ggml.pre", pre, size);
    free(data);
    return p;
}

static void test_pre_tokenizers(void) {
    char* inp = lwt_read_file(lwt_shared("vocab/ggml-vocab-gpt-2.gguf.inp"), NULL);
    LWT_REQUIRE(inp, "cannot read ggml-vocab-gpt-2.gguf.inp");
    char* cases[64];
    size_t lens[64];
    int n = split_cases(inp, cases, lens, 46);
    LWT_REQUIRE(n == 46, "46 cases expected, %d found", n);
    for (int i = 0; i < 10; i++) { cases[46 + i] = (char*)pre_extra_cases[i]; lens[46 + i] = strlen(pre_extra_cases[i]); }
    for (size_t v = 0; v < sizeof pre_expect / sizeof pre_expect[0]; v++) {
        const char* pre = pre_expect[v].pre;
        size_t size;
        uint8_t* file = gpt2_with_pre(pre, &size);
        LWT_REQUIRE(file, "cannot patch the GPT-2 vocabulary");
        lw_result r;
        lw_model* m = load_memory(file, size, &r);
        LWT_CHECK(r == LW_OK, "pre '%s': %s", pre ? pre : "(absent)", lw_last_error());
        int ok = 0;
        for (int i = 0; m && i < 56; i++) {
            int32_t* ids;
            int k = tokenize(m, cases[i], lens[i], 0, &ids);
            char got[8192];
            format_ids(ids, k, got, sizeof got);
            bool same = k >= 0 && fnv(got) == pre_expect[v].hash[i];
            ok += same;
            LWT_CHECK(same, "pre '%s' case %d ('%.40s'): ids [%.200s] are not llama.cpp's", pre ? pre : "(absent)", i, cases[i], got);
            size_t dl = 0;
            char* dec = k >= 0 ? detokenize(m, ids, k, false, &dl) : NULL;
            LWT_CHECK(dec && dl == lens[i] && memcmp(dec, cases[i], dl) == 0, "pre '%s' case %d does not round-trip",
                      pre ? pre : "(absent)", i);
            free(dec);
            free(ids);
        }
        printf("  pre-tokenizer %-13s %d/56 as llama.cpp\n", pre ? pre : "(absent)", ok);
        lw_model_free(m);
        free(file);
    }
    // every name the table knows loads; others are refused by name
    static const char* const known[] = { "default", "gpt-2", "phi-2", "mpt", "olmo", "jais", "roberta-bpe", "gigachat", "jina-es",
        "jina-de", "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code", "llama3", "llama-v3", "llama-bpe", "falcon3",
        "dbrx", "smaug-bpe", "chatglm-bpe", "qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "falcon", "starcoder",
        "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "deepseek-coder", "deepseek-llm",
        "deepseek-v3", "poro-chat", "bloom", "gpt3-finnish", "viking" };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        size_t size;
        uint8_t* file = gpt2_with_pre(known[i], &size);
        lw_result r;
        lw_model* m = load_memory(file, size, &r);
        LWT_CHECK(r == LW_OK, "pre '%s' is refused: %s", known[i], lw_last_error());
        lw_model_info info;
        if (m) {
            lw_model_get_info(m, &info);
            LWT_CHECK(!info.add_bos, "pre '%s': a gpt2 vocabulary without add_bos_token adds no BOS (%d)", known[i], info.add_bos);
        }
        lw_model_free(m);
        free(file);
    }
    static const char* const unknown[] = { "tekken", "chameleon", "no-such-thing", "" };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        size_t size;
        uint8_t* file = gpt2_with_pre(unknown[i], &size);
        lw_result r;
        lw_model* m = load_memory(file, size, &r);
        LWT_CHECK(r == LW_TOKENIZER_UNSUPPORTED && strstr(lw_last_error(), "tokenizer.ggml.pre"),
                  "pre '%s': %s (%s)", unknown[i], lw_result_string(r), lw_last_error());
        lw_model_free(m);
        free(file);
    }
    free(inp);
}

// ---- special tokens: llama.cpp's partition, strip flags and the SentencePiece space prefix

static void test_special_tokens(void) {
    static const char* const texts[] = { "Hello<s>world</s> x", "<s> <unk>a</s>", "</s>", "Hello<|end|>  world</s> x <|user|>",
                                         "<|endoftext|>Hi<|endoftext|>" };
    static const struct { const char* vocab; unsigned flags; const char* ids[5]; } expect[] = {
        { "llama-spm", 0, { "15043 29966 29879 29958 11526 829 29879 29958 921", "529 29879 29958 529 2960 29958 29874 829 29879 29958",
                            "1533 29879 29958", "15043 29966 29989 355 29989 29958 29871 3186 829 29879 29958 921 529 29989 1792 29989 29958",
                            "529 29989 355 974 726 29989 29958 18567 29966 29989 355 974 726 29989 29958" } },
        { "llama-spm", 2, { "15043 1 3186 2 29871 921", "1 259 0 263 2", "2",
                            "15043 29966 29989 355 29989 29958 29871 3186 2 29871 921 529 29989 1792 29989 29958",
                            "529 29989 355 974 726 29989 29958 18567 29966 29989 355 974 726 29989 29958" } },
        { "llama-spm", 3, { "1 15043 1 3186 2 29871 921", "1 1 259 0 263 2", "1 2",
                            "1 15043 29966 29989 355 29989 29958 29871 3186 2 29871 921 529 29989 1792 29989 29958",
                            "1 529 29989 355 974 726 29989 29958 18567 29966 29989 355 974 726 29989 29958" } },
        { "phi-3", 0, { "15043 29966 29879 29958 11526 2 921", "529 29879 29958 529 2960 29958 29874 2", "2",
                        "15043 29966 29989 355 29989 29958 29871 3186 2 921 529 29989 1792 29989 29958",
                        "529 29989 355 974 726 29989 29958 18567 29966 29989 355 974 726 29989 29958" } },
        { "phi-3", 2, { "15043 1 3186 2 921", "1 259 0 263 2", "2", "15043 32007 3186 2 921 29871 32010", "32000 6324 32000" } },
        { "phi-3", 3, { "1 15043 1 3186 2 921", "1 1 259 0 263 2", "1 2", "1 15043 32007 3186 2 921 29871 32010", "1 32000 6324 32000" } },
        { "gpt-2", 0, { "15496 27 82 29 6894 3556 82 29 2124", "27 82 29 1279 2954 29 64 3556 82 29", "3556 82 29",
                        "15496 27 91 437 91 29 220 995 3556 82 29 2124 1279 91 7220 91 29",
                        "27 91 437 1659 5239 91 29 17250 27 91 437 1659 5239 91 29" } },
        { "gpt-2", 3, { "15496 27 82 29 6894 3556 82 29 2124", "27 82 29 1279 2954 29 64 3556 82 29", "3556 82 29",
                        "15496 27 91 437 91 29 220 995 3556 82 29 2124 1279 91 7220 91 29", "50256 17250 50256" } },
    };
    for (size_t e = 0; e < sizeof expect / sizeof expect[0]; e++) {
        lw_model* m = vocab(expect[e].vocab);
        LWT_REQUIRE(m, "cannot load %s", expect[e].vocab);
        for (int i = 0; i < 5; i++) {
            int32_t* ids;
            int k = tokenize(m, texts[i], strlen(texts[i]), expect[e].flags, &ids);
            char got[1024];
            format_ids(ids, k, got, sizeof got);
            LWT_CHECK(strcmp(got, expect[e].ids[i]) == 0, "%s flags %u '%s': got [%s], want [%s]", expect[e].vocab, expect[e].flags,
                      texts[i], got, expect[e].ids[i]);
            free(ids);
        }
    }
}

// ---- stories260K: llama-tokenize's ids, with BOS

static void test_stories_prompts(void) {
    lw_model* m = load_path(lwt_shared("models/stories260K.gguf"));
    LWT_REQUIRE(m, "cannot load stories260K.gguf");
    for (int p = 1; p <= 2; p++) {
        char rel[96];
        snprintf(rel, sizeof rel, "ref/stories260K/p%d_prompt.txt", p);
        char* prompt = lwt_read_file(lwt_shared(rel), NULL);
        snprintf(rel, sizeof rel, "ref/stories260K/p%d_llama-tokenize_ids.txt", p);
        char* want = lwt_read_file(lwt_shared(rel), NULL);
        LWT_REQUIRE(prompt && want, "cannot read the p%d files", p);
        size_t len = strlen(prompt);
        while (len && prompt[len - 1] == '\n') len--;          // the prompt went through a shell's $(cat ...)
        int32_t* ids;
        int n = tokenize(m, prompt, len, LW_TOKENIZE_ADD_SPECIAL | LW_TOKENIZE_PARSE_SPECIAL, &ids);
        char got[1024] = "[", *at = got + 1;
        for (int i = 0; i < n; i++) at += snprintf(at, sizeof got - (size_t)(at - got), i ? ", %d" : "%d", ids[i]);
        snprintf(at, sizeof got - (size_t)(at - got), "]");
        size_t wl = strlen(want);
        while (wl && (want[wl - 1] == '\n' || want[wl - 1] == ' ')) wl--;
        LWT_CHECK(strlen(got) == wl && memcmp(got, want, wl) == 0, "p%d: got %s, want %.*s", p, got, (int)wl, want);
        free(ids);
        free(prompt);
        free(want);
    }
    lw_model_free(m);
}

// ---- BOS defaults: "llama" adds it when add_bos_token is absent, "gpt2" does not

static void test_bos_defaults(void) {
    lw_model* m = load_path(lwt_shared("models/stories260K.gguf"));   // llama, no add_bos_token key
    LWT_REQUIRE(m, "cannot load stories260K.gguf");
    lw_model_info info;
    lw_model_get_info(m, &info);
    LWT_CHECK(info.add_bos && !info.add_eos && info.bos == 1 && info.eos == 2 && info.unk == 0 && info.pad == -1,
              "stories260K: add_bos %d add_eos %d bos %d eos %d unk %d pad %d", info.add_bos, info.add_eos, info.bos, info.eos,
              info.unk, info.pad);
    int32_t* ids;
    int n = tokenize(m, "Once", 4, LW_TOKENIZE_ADD_SPECIAL, &ids);
    LWT_CHECK(n >= 2 && ids[0] == 1, "stories260K: no BOS in front (%d ids, first %d)", n, n > 0 ? ids[0] : -1);
    free(ids);
    n = tokenize(m, "Once", 4, 0, &ids);
    LWT_CHECK(n >= 1 && ids[0] != 1, "stories260K: BOS without LW_TOKENIZE_ADD_SPECIAL");
    free(ids);
    n = tokenize(m, "", 0, LW_TOKENIZE_ADD_SPECIAL, &ids);
    LWT_CHECK(n == 1 && ids[0] == 1, "stories260K: the empty text with specials is [BOS] (%d ids)", n);
    free(ids);
    lw_model_free(m);

    m = vocab("gpt-2");                                                // gpt2, no add_bos_token key
    LWT_REQUIRE(m, "cannot load the GPT-2 vocabulary");
    lw_model_get_info(m, &info);
    LWT_CHECK(!info.add_bos && info.bos == 50256, "gpt-2: add_bos %d bos %d", info.add_bos, info.bos);
    n = tokenize(m, "Hello", 5, LW_TOKENIZE_ADD_SPECIAL, &ids);
    LWT_CHECK(n == 1 && ids[0] == 15496, "gpt-2: 'Hello' with specials is [15496] (%d ids)", n);
    free(ids);

    m = vocab("llama-spm");                                            // add_bos_token true, add_eos_token false
    LWT_REQUIRE(m, "cannot load the llama-spm vocabulary");
    n = tokenize(m, "Hello", 5, LW_TOKENIZE_ADD_SPECIAL, &ids);
    LWT_CHECK(n == 2 && ids[0] == 1 && ids[1] == 15043, "llama-spm: 'Hello' with specials is [1 15043]");
    free(ids);
}

// ---- end of generation, as llama.cpp marks it

static void test_eog(void) {
    static const struct { const char* vocab; int32_t eot; int32_t eog[3]; } expect[] = {
        { "gpt-2", 50256, { 50256, -1, -1 } }, { "llama-spm", -1, { 2, -1, -1 } }, { "phi-3", 32007, { 32000, 32007, -1 } },
        { "deepseek-coder", 32014, { 32014, -1, -1 } }, { "falcon", 11, { 11, -1, -1 } }, { "starcoder", 0, { 0, -1, -1 } },
    };
    for (size_t e = 0; e < sizeof expect / sizeof expect[0]; e++) {
        lw_model* m = vocab(expect[e].vocab);
        LWT_REQUIRE(m, "cannot load %s", expect[e].vocab);
        lw_model_info info;
        lw_model_get_info(m, &info);
        LWT_CHECK(info.eot == expect[e].eot, "%s: eot %d, want %d", expect[e].vocab, info.eot, expect[e].eot);
        int found = 0, want = 0;
        for (int i = 0; i < 3; i++) want += expect[e].eog[i] >= 0;
        for (int id = -2; id < info.n_vocab + 2; id++) {
            if (!lw_token_is_eog(m, id)) continue;
            bool listed = false;
            for (int i = 0; i < 3; i++) listed |= expect[e].eog[i] == id;
            LWT_CHECK(listed, "%s: %d is end-of-generation, llama.cpp says not", expect[e].vocab, id);
            found += listed;
        }
        LWT_CHECK(found == want, "%s: %d end-of-generation tokens, want %d", expect[e].vocab, found, want);
    }
}

// ---- pieces

static bool piece_is(const lw_model* m, int32_t id, bool special, const char* want) {
    char buf[64];
    int n = -1;
    if (lw_token_to_piece(m, id, special, buf, sizeof buf, &n) != LW_OK) return false;
    return n == (int)strlen(want) && memcmp(buf, want, (size_t)n) == 0;
}

static void test_pieces(void) {
    lw_model* spm = vocab("llama-spm");
    lw_model* bpe = vocab("gpt-2");
    lw_model* phi = vocab("phi-3");
    LWT_REQUIRE(spm && bpe && phi, "cannot load the vocabularies");
    LWT_CHECK(piece_is(spm, 15043, false, " Hello"), "SPM: U+2581 becomes a space");
    LWT_CHECK(piece_is(spm, 13, false, "\n"), "SPM: <0x0A> is a newline byte");
    {
        char b[4];
        int n0 = 0;
        LWT_CHECK(lw_token_to_piece(spm, 3, false, b, sizeof b, &n0) == LW_OK && n0 == 1 && b[0] == 0, "SPM: <0x00> is a zero byte");
    }
    LWT_CHECK(piece_is(spm, 1, false, "") && piece_is(spm, 1, true, "<s>"), "SPM: control tokens print only when special");
    LWT_CHECK(piece_is(spm, 0, false, "") && piece_is(spm, 0, true, "<unk>"), "SPM: the unknown token prints only when special");
    LWT_CHECK(piece_is(phi, 2, false, "</s>"), "phi-3: a user-defined token prints as it is");
    LWT_CHECK(piece_is(bpe, 220, false, " ") && piece_is(bpe, 198, false, "\n") && piece_is(bpe, 15496, false, "Hello"),
              "BPE: byte-level code points become bytes");
    LWT_CHECK(piece_is(bpe, 50256, false, "") && piece_is(bpe, 50256, true, "<|endoftext|>"), "BPE: control tokens");
    // a piece cut to fit: the full length comes back with LW_BUFFER_TOO_SMALL, the prefix is written
    char buf[4] = { 'x', 'x', 'x', 'x' };
    int n = 0;
    lw_result r = lw_token_to_piece(spm, 15043, false, buf, 3, &n);
    LWT_CHECK(r == LW_BUFFER_TOO_SMALL && n == 6 && memcmp(buf, " He", 3) == 0 && buf[3] == 'x', "cut piece: %s, n %d",
              lw_result_string(r), n);
    // a single byte of a multi-byte character: byte-level BPE gives the raw byte
    int32_t* ids;
    int k = tokenize(bpe, "\xe2\x82\xac", 3, 0, &ids);   // the euro sign: bytes as their own tokens
    char* dec = k > 0 ? detokenize(bpe, ids, k, false, NULL) : NULL;
    LWT_CHECK(dec && strcmp(dec, "\xe2\x82\xac") == 0, "BPE: a character split over tokens decodes back");
    free(dec);
    free(ids);
}

// ---- lw_detokenize: the pieces joined; with strip_leading_space only the first piece loses a space

static void test_detokenize(void) {
    static const struct { const char* vocab; const char* text; } cases[] = {
        { "llama-spm", " Hello world" }, { "llama-spm", "  Hello" }, { "llama-spm", "\n =" }, { "llama-spm", "Hello" },
        { "phi-3", " (" }, { "gpt-2", " Hello" }, { "gpt-2", "  Hello world" },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        lw_model* m = vocab(cases[c].vocab);
        LWT_REQUIRE(m, "cannot load %s", cases[c].vocab);
        int32_t* ids;
        int n = tokenize(m, cases[c].text, strlen(cases[c].text), 0, &ids);
        size_t len = 0;
        char* dec = detokenize(m, ids, n, true, &len);
        LWT_CHECK(dec && strcmp(dec, cases[c].text) == 0, "%s: '%s' decodes to '%s' (strip_leading_space)", cases[c].vocab,
                  cases[c].text, dec ? dec : "(error)");
        free(dec);
        dec = detokenize(m, ids, n, false, &len);
        char* joined = decode_pieces(m, ids, n, false, NULL);
        LWT_CHECK(dec && joined && strcmp(dec, joined) == 0, "%s: '%s' without stripping", cases[c].vocab, cases[c].text);
        free(dec);
        free(joined);
        free(ids);
    }
    // the buffer contract: too small gives the size, NUL-terminated when it fits
    lw_model* m = vocab("gpt-2");
    LWT_REQUIRE(m, "cannot load gpt-2");
    int32_t ids[2] = { 15496, 995 };   // "Hello" " world"
    char buf[12];
    size_t len = 0;
    LWT_CHECK(lw_detokenize(m, ids, 2, false, false, buf, 11, &len) == LW_BUFFER_TOO_SMALL && len == 11, "11 bytes + NUL in 11");
    LWT_CHECK(lw_detokenize(m, ids, 2, false, false, buf, 12, &len) == LW_OK && len == 11 && strcmp(buf, "Hello world") == 0,
              "'Hello world' in 12");
}

// ---- invalid ids

static void test_invalid_ids(void) {
    lw_model* m = vocab("llama-spm");
    LWT_REQUIRE(m, "cannot load the llama-spm vocabulary");
    lw_model_info info;
    lw_model_get_info(m, &info);
    char buf[16];
    int n = 0;
    int32_t bad[] = { -1, info.n_vocab, INT32_MAX, INT32_MIN };
    for (int i = 0; i < 4; i++) {
        LWT_CHECK(lw_token_to_piece(m, bad[i], true, buf, sizeof buf, &n) == LW_INVALID_TOKEN, "piece of %d", bad[i]);
        LWT_CHECK(lw__tokenizer_piece(&m->tok, bad[i], true, buf, sizeof buf) == -1, "internal piece of %d", bad[i]);
        LWT_CHECK(!lw_token_is_eog(m, bad[i]), "%d is no end-of-generation token", bad[i]);
        int32_t ids[3] = { 15043, bad[i], 3186 };
        size_t len = 0;
        char out[64];
        LWT_CHECK(lw_detokenize(m, ids, 3, false, false, out, sizeof out, &len) == LW_INVALID_TOKEN, "detokenize with %d", bad[i]);
    }
    // the tokenizer without a model: encode refuses, pieces are -1
    lw__tokenizer none;
    memset(&none, 0, sizeof none);
    int32_t* ids = NULL;
    LWT_CHECK(lw__tokenizer_encode(&none, "a", 1, 0, &ids, NULL) == LW_TOKENIZER_UNSUPPORTED && !ids, "encode without a vocabulary");
    LWT_CHECK(lw__tokenizer_piece(&none, 0, true, buf, sizeof buf) == -1, "piece without a vocabulary");
}

// ---- vocabularies built in memory: refused ones, and small ones that pin the algorithms down

typedef struct vocab_spec {
    const char*  model;            // tokenizer.ggml.model (NULL: absent)
    const char*  pre;
    int          n;                // tokens
    const char** tokens;
    const float* scores;  int n_scores;      // n_scores < 0: no key
    const int*   types;   int n_types;
    const char** merges;  int n_merges;      // n_merges < 0: no key
    int          bos, eos, unk;              // -1: no key
    int          add_bos;                    // -1: no key
    bool         tokens_as_ints;             // tokenizer.ggml.tokens is an array of u32 (broken)
} vocab_spec;

static gw_file build_vocab(const vocab_spec* s) {
    gw_file w = gw_begin(3);
    gw_kv_str(&w, "general.architecture", "llama");
    if (s->model) gw_kv_str(&w, "tokenizer.ggml.model", s->model);
    if (s->pre) gw_kv_str(&w, "tokenizer.ggml.pre", s->pre);
    if (s->tokens_as_ints) {
        uint32_t v[4] = { 1, 2, 3, 4 };
        gw_kv_arr(&w, "tokenizer.ggml.tokens", GW_U32, v, 4, 4);
    } else {
        gw_kv_arr_str(&w, "tokenizer.ggml.tokens", s->tokens, NULL, (uint64_t)s->n);
    }
    if (s->n_scores >= 0 && s->scores) gw_kv_arr(&w, "tokenizer.ggml.scores", GW_F32, s->scores, (uint64_t)s->n_scores, 4);
    if (s->n_types >= 0 && s->types) gw_kv_arr(&w, "tokenizer.ggml.token_type", GW_I32, s->types, (uint64_t)s->n_types, 4);
    if (s->n_merges >= 0) gw_kv_arr_str(&w, "tokenizer.ggml.merges", s->merges, NULL, (uint64_t)s->n_merges);
    if (s->bos >= 0) gw_kv_u32(&w, "tokenizer.ggml.bos_token_id", (uint32_t)s->bos);
    if (s->eos >= 0) gw_kv_u32(&w, "tokenizer.ggml.eos_token_id", (uint32_t)s->eos);
    if (s->unk >= 0) gw_kv_u32(&w, "tokenizer.ggml.unknown_token_id", (uint32_t)s->unk);
    if (s->add_bos >= 0) gw_kv_bool(&w, "tokenizer.ggml.add_bos_token", s->add_bos);
    gw_finish(&w);
    return w;
}

// loads a copy of exactly the file's size (so ASan sees reads past the end); keeps it in *copy
static lw_model* load_spec(const vocab_spec* s, lw_result* r, void** copy) {
    gw_file w = build_vocab(s);
    *copy = malloc(w.size);
    memcpy(*copy, w.data, w.size);
    lw_model* m = load_memory(*copy, w.size, r);
    gw_free(&w);
    return m;
}

static vocab_spec spm_spec(int n, const char** tokens, const float* scores, const int* types) {
    vocab_spec s;
    memset(&s, 0, sizeof s);
    s.model = "llama";
    s.n = n; s.tokens = tokens;
    s.scores = scores; s.n_scores = n;
    s.types = types; s.n_types = n;
    s.n_merges = -1;
    s.bos = 1; s.eos = 2; s.unk = 0; s.add_bos = -1;
    return s;
}

static void expect_refused(const vocab_spec* s, lw_result want, const char* words, const char* what) {
    void* copy;
    lw_result r;
    lw_model* m = load_spec(s, &r, &copy);
    LWT_CHECK(r == want && !m, "%s: got %s, want %s (%s)", what, lw_result_string(r), lw_result_string(want), lw_last_error());
    LWT_CHECK(strstr(lw_last_error(), words) != NULL, "%s: the message '%s' does not name '%s'", what, lw_last_error(), words);
    lw_model_free(m);
    free(copy);
}

static void test_bad_vocab(void) {
    static const char* toks[4] = { "<unk>", "<s>", "</s>", "a" };
    static const float scores[4] = { 0, 0, 0, -1 };
    static const int types[4] = { 2, 3, 3, 1 };
    vocab_spec s = spm_spec(4, toks, scores, types);
    {   // the good one loads
        void* copy;
        lw_result r;
        lw_model* m = load_spec(&s, &r, &copy);
        LWT_CHECK(r == LW_OK && m, "the tiny vocabulary is refused: %s", lw_last_error());
        lw_model_free(m);
        free(copy);
    }
    vocab_spec b = s; b.n_scores = 3;
    expect_refused(&b, LW_TOKENIZER_BAD_VOCAB, "tokenizer.ggml.scores", "3 scores for 4 tokens");
    b = s; b.n_types = 5;
    static const int types5[5] = { 2, 3, 3, 1, 1 };
    b.types = types5;
    expect_refused(&b, LW_TOKENIZER_BAD_VOCAB, "tokenizer.ggml.token_type", "5 token types for 4 tokens");
    b = s; b.tokens_as_ints = true;
    expect_refused(&b, LW_TOKENIZER_BAD_VOCAB, "tokenizer.ggml.tokens", "tokens that are not strings");
    static const char* dup[4] = { "<unk>", "<s>", "a", "a" };
    b = s; b.tokens = dup;
    expect_refused(&b, LW_TOKENIZER_BAD_VOCAB, "same text", "two tokens with one text");
    b = s; b.model = "bert";
    expect_refused(&b, LW_TOKENIZER_UNSUPPORTED, "bert", "an unsupported tokenizer.ggml.model");
    b = s; b.n = 0;
    expect_refused(&b, LW_TOKENIZER_BAD_VOCAB, "tokenizer.ggml.tokens", "no tokens");
    static const char* btoks[4] = { "a", "b", "ab", "<|endoftext|>" };
    static const char* good_merges[1] = { "a b" };
    static const char* bad_merges[2] = { "a b", "ab" };
    vocab_spec g = s;
    g.model = "gpt2"; g.pre = "gpt-2"; g.tokens = btoks; g.scores = NULL; g.n_scores = -1;
    g.merges = good_merges; g.n_merges = 1; g.bos = 3; g.eos = 3; g.unk = -1;
    b = g; b.n_merges = -1;
    expect_refused(&b, LW_TOKENIZER_BAD_VOCAB, "tokenizer.ggml.merges", "gpt2 without merges");
    b = g; b.merges = bad_merges; b.n_merges = 2;
    expect_refused(&b, LW_TOKENIZER_BAD_VOCAB, "merge 1", "a merge without a space");
    {   // special ids past the vocabulary are ignored (with a warning), as llama.cpp does
        b = s; b.bos = 4; b.eos = -1;
        void* copy;
        lw_result r;
        lw_model* m = load_spec(&b, &r, &copy);
        lw_model_info info;
        LWT_CHECK(r == LW_OK && m, "bos past the vocabulary: %s", lw_last_error());
        if (m) {
            lw_model_get_info(m, &info);
            LWT_CHECK(info.bos == -1 && info.eos == -1 && info.add_bos, "bos %d eos %d add_bos %d", info.bos, info.eos, info.add_bos);
            int32_t* ids;
            int n = tokenize(m, "a", 1, LW_TOKENIZE_ADD_SPECIAL, &ids);   // no BOS to add: none added
            LWT_CHECK(n >= 1 && ids[0] != 1 && ids[n - 1] == 3, "tokens of ' a' without a BOS id: %d", n);
            free(ids);
        }
        lw_model_free(m);
        free(copy);
    }
    {   // no tokenizer.ggml.model: no tokenizer, and the internal loader says so with n_tokens = 0
        b = s; b.model = NULL;
        gw_file w = build_vocab(&b);
        lw__gguf gg;
        LWT_CHECK(lw__gguf_parse(&gg, w.data, w.size, NULL, NULL) == LW_OK, "parse");
        lw__tokenizer t;
        LWT_CHECK(lw__tokenizer_load(&t, &gg, NULL, NULL) == LW_OK && t.n_tokens == 0 && t.bos == -1, "no model key");
        lw__tokenizer_free(&t, NULL);
        lw__gguf_free(&gg);
        lw_result r;
        lw_model* m = load_memory(w.data, w.size, &r);
        LWT_CHECK(!m && r == LW_TOKENIZER_UNSUPPORTED, "a vocab-only load of a file without a tokenizer: %s", lw_result_string(r));
        gw_free(&w);
    }
}

static int encode_spec(const vocab_spec* s, const char* text, unsigned flags, char* out, size_t size) {
    void* copy;
    lw_result r;
    lw_model* m = load_spec(s, &r, &copy);
    out[0] = 0;
    if (!m) { snprintf(out, size, "(load: %.200s)", lw_last_error()); free(copy); return -1; }
    int32_t* ids;
    int n = tokenize(m, text, strlen(text), flags, &ids);
    format_ids(ids, n, out, size);
    free(ids);
    lw_model_free(m);
    free(copy);
    return n;
}

static void test_tiny_spm(void) {
    // ids:                      0        1     2      3              4    5    6    7     8      9        10       11
    static const char* toks[] = { "<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b", "c", "ab", "bc", "<0x41>", "<0xC3>", "<0xA9>",
                                  ("\xe2\x96\x81" "a"), "abc", "cab" };
    //                            12              13     14
    static const float scores[] = { 0, 0, 0, -1, -2, -2, -2, -5, -5, 0, 0, 0, -3, -4, -1 };
    static const int types[] = { 2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6, 6, 1, 1, 1 };
    vocab_spec s = spm_spec(15, toks, scores, types);
    char got[256];
    // "abc": ab and bc score the same (-5): the left one merges first, then "abc" (-4)
    encode_spec(&s, "abc", 0, got, sizeof got);
    LWT_CHECK(strcmp(got, "12 8") == 0, "' abc' -> [%s], want [12 8] (the best pair first: _a at -3, then bc)", got);
    encode_spec(&s, "bcab", 0, got, sizeof got);   // \u2581 b c a b: bc -5, ca none, ab -5 -> bc (left) then ab; no cab
    LWT_CHECK(strcmp(got, "3 8 7") == 0, "' bcab' -> [%s], want [3 8 7]", got);
    // byte fallback: 'A' has <0x41>, 'é' (C3 A9) has both bytes, 'ß' (C3 9F) falls back to unk for 9F
    encode_spec(&s, "A\xc3\xa9\xc3\x9f", 0, got, sizeof got);
    LWT_CHECK(strcmp(got, "3 9 10 11 10 0") == 0, "byte fallback -> [%s], want [3 9 10 11 10 0]", got);
    // no space prefix when the vocabulary says so
    vocab_spec np = s;
    gw_file w = build_vocab(&np);
    gw_kv_bool(&w, "tokenizer.ggml.add_space_prefix", 0);
    gw_finish(&w);
    lw_result r;
    void* copy = malloc(w.size);
    memcpy(copy, w.data, w.size);
    lw_model* m = load_memory(copy, w.size, &r);
    LWT_REQUIRE(m, "add_space_prefix false: %s", lw_last_error());
    int32_t* ids;
    int n = tokenize(m, "ab", 2, 0, &ids);
    format_ids(ids, n, got, sizeof got);
    LWT_CHECK(strcmp(got, "7") == 0, "'ab' without a space prefix -> [%s], want [7]", got);
    free(ids);
    lw_model_free(m);
    free(copy);
    gw_free(&w);
}

static void test_tiny_bpe(void) {
    // GPT-2 code points: ' ' is \xc4\xa0 (U+0120)
    static const char* toks[] = { "a", "b", "c", "\xc4\xa0", "ab", "bc", "abc", ("\xc4\xa0" "a"), "<|endoftext|>", "aa", "aaaa" };
    static const char* merges[] = { "b c", "a b", "a bc", "\xc4\xa0 a", "a a", "aa aa" };
    static const int types[] = { 1, 1, 1, 1, 1, 1, 1, 1, 3, 1, 1 };
    vocab_spec s;
    memset(&s, 0, sizeof s);
    s.model = "gpt2"; s.pre = "gpt-2"; s.n = 11; s.tokens = toks;
    s.n_scores = -1; s.types = types; s.n_types = 11;
    s.merges = merges; s.n_merges = 6;
    s.bos = 8; s.eos = 8; s.unk = -1; s.add_bos = -1;
    char got[256];
    encode_spec(&s, "abc", 0, got, sizeof got);     // b c (rank 0) before a b (rank 1): a + bc -> abc
    LWT_CHECK(strcmp(got, "6") == 0, "'abc' -> [%s], want [6]", got);
    encode_spec(&s, "ab a", 0, got, sizeof got);    // pre-tokens "ab", " a"
    LWT_CHECK(strcmp(got, "4 7") == 0, "'ab a' -> [%s], want [4 7]", got);
    encode_spec(&s, "aaaaa", 0, got, sizeof got);   // a a merges left first: aa aa a -> aaaa a
    LWT_CHECK(strcmp(got, "10 0") == 0, "'aaaaa' -> [%s], want [10 0]", got);
    encode_spec(&s, "a<|endoftext|>b", LW_TOKENIZE_PARSE_SPECIAL, got, sizeof got);
    LWT_CHECK(strcmp(got, "0 8 1") == 0, "special in the middle -> [%s], want [0 8 1]", got);
    encode_spec(&s, "ad", 0, got, sizeof got);      // 'd' has no token: dropped, as llama.cpp drops it
    LWT_CHECK(strcmp(got, "0") == 0, "'ad' -> [%s], want [0]", got);
}

// ---- every code point through encode and decode

static void roundtrip_codepoints(const char* name, bool strip) {
    lw_model* m = vocab(name);
    LWT_REQUIRE(m, "cannot load %s", name);
    int bad = 0, tried = 0;
    for (uint32_t cp = 1; cp <= 0x10FFFF; cp += cp < 0x3400 ? 1 : cp < 0x10000 ? 3 : 101) {
        if ((cp >= 0xD800 && cp <= 0xDFFF) || (strip && cp == 0x2581)) continue;   // SPM: U+2581 *is* the space
        char text[8];
        int len = lw__utf8_put(cp, text);
        int32_t* ids;
        int n = tokenize(m, text, (size_t)len, 0, &ids);
        size_t dl = 0;
        char* dec = n >= 0 ? detokenize(m, ids, n, strip, &dl) : NULL;
        bool ok = dec && dl == (size_t)len && memcmp(dec, text, dl) == 0;
        if (!ok && bad++ < 5) LWT_CHECK(ok, "%s: U+%04X does not round-trip", name, cp);
        tried++;
        free(dec);
        free(ids);
    }
    LWT_CHECK(bad == 0, "%s: %d of %d code points do not round-trip", name, bad, tried);
}
static void test_roundtrip_codepoints_bpe(void) { roundtrip_codepoints("gpt-2", false); }
static void test_roundtrip_codepoints_spm(void) { roundtrip_codepoints("llama-spm", true); }

// ---- long inputs: runs that a recursive regex engine would choke on (llama.cpp's std::regex does)

static void test_long_inputs(void) {
    static const char* const pres[] = { "gpt-2", "llama-bpe", "qwen2", "deepseek-coder", "deepseek-v3", "poro-chat", NULL };
    size_t n = 50000;
    char* texts[5];
    for (int t = 0; t < 5; t++) {
        texts[t] = (char*)malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            texts[t][i] = t == 0 ? ' ' : t == 1 ? (i & 1 ? '\n' : ' ') : t == 2 ? '7' : t == 3 ? 'a' : (i % 3 ? '\'' : '!');
        texts[t][n] = 0;
    }
    for (int p = 0; pres[p]; p++) {
        size_t size;
        uint8_t* file = gpt2_with_pre(pres[p], &size);
        lw_result r;
        lw_model* m = load_memory(file, size, &r);
        LWT_REQUIRE(m, "pre %s: %s", pres[p], lw_last_error());
        for (int t = 0; t < 5; t++) {
            int32_t* ids;
            int k = tokenize(m, texts[t], n, 0, &ids);
            size_t dl = 0;
            char* dec = k > 0 ? detokenize(m, ids, k, false, &dl) : NULL;
            LWT_CHECK(dec && dl == n && memcmp(dec, texts[t], n) == 0, "pre %s, long text %d does not round-trip", pres[p], t);
            free(dec);
            free(ids);
        }
        lw_model_free(m);
        free(file);
    }
    lw_model* spm = vocab("llama-spm");
    LWT_REQUIRE(spm, "cannot load llama-spm");
    for (int t = 0; t < 5; t++) {
        int32_t* ids;
        int k = tokenize(spm, texts[t], n, 0, &ids);
        size_t dl = 0;
        char* dec = k > 0 ? detokenize(spm, ids, k, true, &dl) : NULL;
        LWT_CHECK(dec && dl == n && memcmp(dec, texts[t], n) == 0, "SPM, long text %d does not round-trip", t);
        free(dec);
        free(ids);
    }
    for (int t = 0; t < 5; t++) free(texts[t]);
}

// ---- the Unicode table and the code point helpers

static void test_unicode(void) {
    static const struct { uint32_t cp; uint8_t flags; } expect[] = {
        { 'A', LW__UCAT_L }, { 'z', LW__UCAT_L }, { '0', LW__UCAT_N }, { '!', LW__UCAT_P }, { '~', LW__UCAT_S }, { '$', LW__UCAT_S },
        { ' ', LW__UCAT_Z | LW__UCAT_SPACE }, { '\n', LW__UCAT_C | LW__UCAT_SPACE }, { 0x1C, LW__UCAT_C }, { 0x85, LW__UCAT_C | LW__UCAT_SPACE },
        { 0xA0, LW__UCAT_Z | LW__UCAT_SPACE }, { 0xBD, LW__UCAT_N }, { 0x301, LW__UCAT_M }, { 0x378, LW__UCAT_NONE },
        { 0x3000, LW__UCAT_Z | LW__UCAT_SPACE }, { 0x4E00, LW__UCAT_L }, { 0x9FFF, LW__UCAT_L }, { 0xAC00, LW__UCAT_L },
        { 0xD800, LW__UCAT_C }, { 0xE000, LW__UCAT_C }, { 0x200B, LW__UCAT_C }, { 0x2028, LW__UCAT_Z | LW__UCAT_SPACE },
        { 0x1F999, LW__UCAT_S }, { 0x20000, LW__UCAT_L }, { 0xE0001, LW__UCAT_C }, { 0x10FFFF, LW__UCAT_NONE }, { 0x110000, LW__UCAT_NONE },
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
        LWT_CHECK(lw__ucat(expect[i].cp) == expect[i].flags, "U+%04X: flags %d, want %d", expect[i].cp, lw__ucat(expect[i].cp),
                  expect[i].flags);
    int spaces = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) spaces += (lw__ucat(cp) & LW__UCAT_SPACE) != 0;
    LWT_CHECK(spaces == 25, "%d White_Space code points, Unicode has 25", spaces);
    // GPT-2's byte mapping is a bijection onto printable code points
    int seen[512] = { 0 };
    for (int b = 0; b < 256; b++) {
        uint32_t cp = lw__byte_to_cp((uint8_t)b);
        LWT_CHECK(cp < 512 && lw__cp_to_byte(cp) == b, "byte %d -> U+%04X -> %d", b, cp, lw__cp_to_byte(cp));
        if (cp < 512) seen[cp]++;
        uint8_t f = lw__ucat(cp);
        LWT_CHECK(!(f & LW__UCAT_SPACE) && (f & 7) != LW__UCAT_C && (f & 7) != LW__UCAT_NONE, "byte %d maps to a non-printable", b);
    }
    for (int i = 0; i < 512; i++) LWT_CHECK(seen[i] <= 1, "U+%04X is taken twice", i);
    LWT_CHECK(lw__cp_to_byte(0x144) == -1 && lw__cp_to_byte(0xAD) == -1 && lw__cp_to_byte(0x20) == -1, "outside the mapping");
    // UTF-8: invalid bytes become U+FFFD one at a time
    static const struct { const char* s; int n; uint32_t cps[4]; int ncp; } utf[] = {
        { "a\xc3\xa9", 3, { 'a', 0xE9 }, 2 }, { "\xe2\x82", 2, { 0xFFFD, 0xFFFD }, 2 }, { "\x80" "a", 2, { 0xFFFD, 'a' }, 2 },
        { "\xf0\x9f\xa6\x99", 4, { 0x1F999 }, 1 }, { "\xf4\x90\x80\x80", 4, { 0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD }, 4 },
        { "\xc3" "a", 2, { 0xFFFD, 'a' }, 2 }, { "\xed\xa0\x80", 3, { 0xD800 }, 1 },
    };
    for (size_t i = 0; i < sizeof utf / sizeof utf[0]; i++) {
        size_t at = 0;
        int k = 0;
        bool ok = true;
        while (at < (size_t)utf[i].n && k < 4) ok &= lw__utf8_next((const uint8_t*)utf[i].s, (size_t)utf[i].n, &at) == utf[i].cps[k++];
        LWT_CHECK(ok && k == utf[i].ncp && at == (size_t)utf[i].n, "UTF-8 case %d", (int)i);
    }
}

// ---- the generated table is what tools/gen_unicode.py writes

static void test_unicode_tables_current(void) {
    if (system("/usr/bin/python3 --version >/dev/null 2>&1") != 0) LWT_SKIP("no /usr/bin/python3");
    struct stat st;
    if (stat("/usr/share/unicode/UnicodeData.txt", &st) != 0) LWT_SKIP("no /usr/share/unicode (Debian's unicode-data)");
    if (stat("tools/gen_unicode.py", &st) != 0) LWT_SKIP("not run from the repository root");
    const char* target = "llmwall.h";
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tools/gen_unicode.py %s --check", target);
    LWT_CHECK(system(cmd) == 0, "%s: the Unicode tables are not what tools/gen_unicode.py writes", target);
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    LWT_RUN(test_vocab_gpt2);
    LWT_RUN(test_vocab_llama_spm);
    LWT_RUN(test_vocab_phi3);
    LWT_RUN(test_vocab_deepseek_coder);
    LWT_RUN(test_vocab_falcon);
    LWT_RUN(test_vocab_starcoder);
    LWT_RUN(test_pre_tokenizers);
    LWT_RUN(test_special_tokens);
    LWT_RUN(test_stories_prompts);
    LWT_RUN(test_bos_defaults);
    LWT_RUN(test_eog);
    LWT_RUN(test_pieces);
    LWT_RUN(test_detokenize);
    LWT_RUN(test_invalid_ids);
    LWT_RUN(test_bad_vocab);
    LWT_RUN(test_tiny_spm);
    LWT_RUN(test_tiny_bpe);
    LWT_RUN(test_roundtrip_codepoints_bpe);
    LWT_RUN(test_roundtrip_codepoints_spm);
    LWT_RUN(test_long_inputs);
    LWT_RUN(test_unicode);
    LWT_RUN(test_unicode_tables_current);
    for (int i = 0; i < N_VOCABS; i++) lw_model_free(vocab_models[i]);
    return lwt_finish();
}
