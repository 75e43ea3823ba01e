/* gguf_writer.h - builds GGUF files in memory, for llmwall's tools and tests (not part of the library)

   The writer does not validate: tests use it to write broken files on purpose. It records where each
   section starts, so a test can cut or corrupt a file at a chosen place.

       gw_file w = gw_begin(3);                              // GGUF version
       gw_kv_str(&w, "general.architecture", "llama");
       gw_kv_u32(&w, "llama.block_count", 2);
       gw_tensor(&w, "token_embd.weight", LW_TYPE_F32, 2, (int64_t[]){ 64, 512 }, data, nbytes);
       gw_finish(&w);                                        // w.data / w.size hold the file
       gw_save(&w, "model.gguf");
       gw_free(&w);

   Metadata and tensor infos are kept as encoded byte runs until gw_finish lays the file out:
   header | metadata | tensor infos | padding | tensor data (each tensor aligned).
*/
#ifndef LW_GGUF_WRITER_H
#define LW_GGUF_WRITER_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GW_FN static inline   // unused helpers are no warning

typedef struct gw_buf { uint8_t* p; size_t n, cap; } gw_buf;

typedef struct gw_file {
    uint32_t version;
    uint32_t alignment;
    uint64_t n_kv, n_tensors;
    gw_buf   kv;          // encoded key-value pairs
    gw_buf   infos;       // encoded tensor infos
    gw_buf   blobs;       // tensor data, each blob padded to the alignment
    // after gw_finish:
    uint8_t* data;
    size_t   size;
    size_t   kv_start, infos_start, data_start;   // section offsets in data
} gw_file;

GW_FN void gw_put(gw_buf* b, const void* src, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t* p = (uint8_t*)realloc(b->p, cap);
        if (!p) { fprintf(stderr, "gguf_writer: out of memory\n"); exit(1); }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
GW_FN void gw_u32(gw_buf* b, uint32_t v) { gw_put(b, &v, 4); }
GW_FN void gw_u64(gw_buf* b, uint64_t v) { gw_put(b, &v, 8); }
GW_FN void gw_str(gw_buf* b, const char* s) { uint64_t n = strlen(s); gw_u64(b, n); gw_put(b, s, n); }

GW_FN gw_file gw_begin(uint32_t version) {
    gw_file w;
    memset(&w, 0, sizeof w);
    w.version = version;
    w.alignment = 32;
    return w;
}

enum { GW_U8 = 0, GW_I8, GW_U16, GW_I16, GW_U32, GW_I32, GW_F32, GW_BOOL, GW_STRING, GW_ARRAY, GW_U64, GW_I64, GW_F64 };

// a scalar of any numeric type given as raw bytes
GW_FN void gw_kv_raw(gw_file* w, const char* key, uint32_t type, const void* value, size_t size) {
    gw_str(&w->kv, key); gw_u32(&w->kv, type); gw_put(&w->kv, value, size); w->n_kv++;
}
GW_FN void gw_kv_u32(gw_file* w, const char* key, uint32_t v) { gw_kv_raw(w, key, GW_U32, &v, 4); }
GW_FN void gw_kv_i32(gw_file* w, const char* key, int32_t v) { gw_kv_raw(w, key, GW_I32, &v, 4); }
GW_FN void gw_kv_f32(gw_file* w, const char* key, float v) { gw_kv_raw(w, key, GW_F32, &v, 4); }
GW_FN void gw_kv_bool(gw_file* w, const char* key, int v) { uint8_t b = (uint8_t)(v != 0); gw_kv_raw(w, key, GW_BOOL, &b, 1); }
GW_FN void gw_kv_str(gw_file* w, const char* key, const char* v) {
    gw_str(&w->kv, key); gw_u32(&w->kv, GW_STRING); gw_str(&w->kv, v); w->n_kv++;
}
// an array of n numeric elements of elem_size bytes
GW_FN void gw_kv_arr(gw_file* w, const char* key, uint32_t elem_type, const void* elems, uint64_t n, size_t elem_size) {
    gw_str(&w->kv, key); gw_u32(&w->kv, GW_ARRAY); gw_u32(&w->kv, elem_type); gw_u64(&w->kv, n);
    gw_put(&w->kv, elems, (size_t)n * elem_size); w->n_kv++;
}
// an array of strings given as pointers and lengths (lengths may be NULL for NUL-terminated strings)
GW_FN void gw_kv_arr_str(gw_file* w, const char* key, const char* const* strs, const uint64_t* lens, uint64_t n) {
    gw_str(&w->kv, key); gw_u32(&w->kv, GW_ARRAY); gw_u32(&w->kv, GW_STRING); gw_u64(&w->kv, n);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = lens ? lens[i] : strlen(strs[i]);
        gw_u64(&w->kv, len);
        gw_put(&w->kv, strs[i], (size_t)len);
    }
    w->n_kv++;
}

// A tensor info with an explicit offset, and no data (for broken files).
GW_FN void gw_tensor_info(gw_file* w, const char* name, uint32_t type, uint32_t n_dims, const int64_t* ne, uint64_t offset) {
    gw_str(&w->infos, name);
    gw_u32(&w->infos, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) gw_u64(&w->infos, (uint64_t)ne[d]);
    gw_u32(&w->infos, type);
    gw_u64(&w->infos, offset);
    w->n_tensors++;
}

// A tensor with its data; offsets are assigned in order, each aligned.
GW_FN void gw_tensor(gw_file* w, const char* name, uint32_t type, uint32_t n_dims, const int64_t* ne,
                      const void* data, size_t nbytes) {
    gw_tensor_info(w, name, type, n_dims, ne, (uint64_t)w->blobs.n);
    gw_put(&w->blobs, data, nbytes);
    static const uint8_t zeros[256] = {0};
    size_t pad = (w->alignment - w->blobs.n % w->alignment) % w->alignment;
    while (pad) { size_t k = pad < 256 ? pad : 256; gw_put(&w->blobs, zeros, k); pad -= k; }
}

// A byte-level ("gpt2") vocabulary of n tokens: ids 0-255 are the bytes as GPT-2's printable code points
// (printable bytes map to themselves, the others to U+0100 + k in order), then <s> (256), </s> (257),
// and control tokens <unused0>... to n (the last one <mask> when with_mask). Fills toks[n] (free each
// with gw_free_strings) and types[n] (tokenizer.ggml.token_type values).
GW_FN void gw_byte_vocab(int n, int with_mask, char** toks, int32_t* types) {
    int non_printable = 0;   // bytes below the current one that are not printable
    for (int i = 0; i < n; i++) {
        toks[i] = (char*)malloc(32);
        if (!toks[i]) { fprintf(stderr, "gguf_writer: out of memory\n"); exit(1); }
        if (i < 256) {
            int printable = (i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174 && i <= 255);
            int cp = printable ? i : 256 + non_printable++;
            if (cp < 0x80) { toks[i][0] = (char)cp; toks[i][1] = 0; }
            else { toks[i][0] = (char)(0xC0 | (cp >> 6)); toks[i][1] = (char)(0x80 | (cp & 63)); toks[i][2] = 0; }
            types[i] = 1;
        } else {
            snprintf(toks[i], 32, i == 256 ? "<s>" : i == 257 ? "</s>" : with_mask && i == n - 1 ? "<mask>" : "<unused%d>", i - 258);
            types[i] = 3;
        }
    }
}
GW_FN void gw_free_strings(char** strs, int n) {
    for (int i = 0; i < n; i++) free(strs[i]);
}

GW_FN void gw_finish(gw_file* w) {
    gw_buf out;
    memset(&out, 0, sizeof out);
    gw_put(&out, "GGUF", 4);
    gw_u32(&out, w->version);
    gw_u64(&out, w->n_tensors);
    gw_u64(&out, w->n_kv);
    w->kv_start = out.n;
    gw_put(&out, w->kv.p, w->kv.n);
    w->infos_start = out.n;
    gw_put(&out, w->infos.p, w->infos.n);
    static const uint8_t zeros[256] = {0};
    size_t pad = (w->alignment - out.n % w->alignment) % w->alignment;
    gw_put(&out, zeros, pad);
    w->data_start = out.n;
    gw_put(&out, w->blobs.p, w->blobs.n);
    free(w->data);
    w->data = out.p;
    w->size = out.n;
}

GW_FN int gw_save(const gw_file* w, const char* path) {
    FILE* f = fopen(path, "wb");
    if (!f) return -1;
    size_t ok = fwrite(w->data, 1, w->size, f);
    return fclose(f) == 0 && ok == w->size ? 0 : -1;
}

GW_FN void gw_free(gw_file* w) {
    free(w->kv.p); free(w->infos.p); free(w->blobs.p); free(w->data);
    memset(w, 0, sizeof *w);
}
#endif
