/* test_kernels - the CPU kernel sets (portable, and avx2 / avx512 where this CPU runs them)

   For every kernel set this CPU can run, every weight type and lengths k that are awkward for the
   set's vectors and blocks:
   (a) batch invariance, bitwise: every (W row j, x row r) result of a tile of any shape (nj = 1..
       tile_cols, nr = 1..tile_rows, at shifted places in the matrices, accumulating or not) equals the
       1 x 1 tile of that pair; nothing outside the tile is written. The full grid of shapes for one k
       per type, a spread of shapes (edges of the register tiles and paths) for the other lengths;
   (b) each result against a double sum over the dequantised weights and activations (activations
       as the kernel takes them: F32, or Q8_0 for quantised weights):
           |err| <= (k/16 + 8) * 2^-23 * sum |w x| + 1e-30
       (float accumulation of at most k/16 + 4 terms per lane; the worst ratio is printed);
   (c) the vector sets agree with each other bitwise (they implement the same definitions);
   (d) the F32 -> Q8_0 activation quantisers of the vector sets equal lw__q8_0_from_float bit for bit
       (wherever the reference's result is defined: finite x and a finite 1/d), and the F32 -> Q8_K
       ones lw__q8_K_from_float (defined for every input, infinities and NaN included);
   (e) the forward pass of a small random model, per set and type: a prefill of N rows equals the same
       rows one at a time bitwise, and the logits agree with the portable set's within
           NMSE <= 1e-10 (F32, F16, BF16 weights), 1e-5 (Q8_0, Q4_0: a different rounding upstream can
           move an activation to the next Q8_0 step; measured up to 1.7e-6 with one such step), 1e-4 (Q4_K, Q6_K: the same, where one step of a
           Q8_K block, max|x| / 127 over 256 values, is larger; measured up to 3e-5 with one such step,
           while a wrong scale, offset or sub-block shows as 1e-2 and more)
       (the NMSE seen is printed).
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include "../tools/gguf_writer.h"
#include "lwtest.h"
#include <math.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rand32(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)(rng >> 16); }
static float frand(void) { return (float)((double)rand32() / 4294967296.0 * 2.0 - 1.0); }
static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static const char* const set_names[] = { "portable", "avx2", "avx512" };
enum { N_SETS = 3 };

static const lw_type types[] = { LW_TYPE_F32, LW_TYPE_F16, LW_TYPE_BF16, LW_TYPE_Q8_0, LW_TYPE_Q4_0, LW_TYPE_Q4_K, LW_TYPE_Q6_K };
enum { N_TYPES = 7 };
static int is_kquant(lw_type t) { return lw__traits((uint32_t)t)->vec_type == LW_TYPE_Q8_K; }

// ---- operands: J weight rows and R activation rows of length k, with their dequantised values

typedef struct operands {
    lw_type type, vec;
    int k, J, R;
    uint8_t *w, *x;
    size_t w_row, x_row;
    double *wd, *xd;   // [J][k], [R][k]
} operands;

static void make_operands(operands* o, lw_type type, int k, int J, int R) {
    memset(o, 0, sizeof *o);
    o->type = type;
    o->vec = lw__traits((uint32_t)type)->vec_type;
    o->k = k; o->J = J; o->R = R;
    o->w_row = lw_type_row_size(type, k);
    o->x_row = lw_type_row_size(o->vec, k);
    o->w = (uint8_t*)malloc(o->w_row * (size_t)J);
    o->x = (uint8_t*)malloc(o->x_row * (size_t)R);
    o->wd = (double*)malloc(sizeof(double) * (size_t)k * J);
    o->xd = (double*)malloc(sizeof(double) * (size_t)k * R);
    float* f = (float*)malloc(sizeof(float) * (size_t)k);
    for (int j = 0; j < J; j++) {
        float scale = (j % 5 == 0) ? 1e-3f : (j % 7 == 0) ? 50.0f : 1.0f;   // rows of different magnitudes
        for (int i = 0; i < k; i++) f[i] = scale * frand();
        lw_quantize(type, f, o->w + (size_t)j * o->w_row, k);
        lw_dequantize(type, o->w + (size_t)j * o->w_row, f, k);
        for (int i = 0; i < k; i++) o->wd[(size_t)j * k + i] = f[i];
    }
    for (int r = 0; r < R; r++) {
        float scale = (r % 3 == 0) ? 4.0f : 1.0f;
        for (int i = 0; i < k; i++) f[i] = scale * frand();
        lw_quantize(o->vec, f, o->x + (size_t)r * o->x_row, k);
        lw_dequantize(o->vec, o->x + (size_t)r * o->x_row, f, k);
        for (int i = 0; i < k; i++) o->xd[(size_t)r * k + i] = f[i];
    }
    free(f);
}
static void free_operands(operands* o) { free(o->w); free(o->x); free(o->wd); free(o->xd); }

// y1[r][j]: every pair as a 1 x 1 tile (what every other shape must reproduce)
static float* singles(const lw__cpu_kernels* K, const operands* o) {
    float* y1 = (float*)malloc(sizeof(float) * (size_t)o->J * o->R);
    lw__tile_fn tile = K->tile[o->type];
    for (int r = 0; r < o->R; r++)
        for (int j = 0; j < o->J; j++)
            tile(o->w + (size_t)j * o->w_row, 0, o->x + (size_t)r * o->x_row, 0, o->k, 1, 1, &y1[(size_t)r * o->J + j], 0, 0);
    return y1;
}

// (b): every single against the double reference; returns the worst err / (2^-24 sum|wx|)
static double check_reference(const char* set, const operands* o, const float* y1) {
    double worst = 0, bound_ulps = 2.0 * (o->k / 16.0 + 8.0);
    int bad = 0;
    for (int r = 0; r < o->R; r++)
        for (int j = 0; j < o->J; j++) {
            double ref = 0, mag = 0;
            for (int i = 0; i < o->k; i++) {
                double p = o->wd[(size_t)j * o->k + i] * o->xd[(size_t)r * o->k + i];
                ref += p;
                mag += fabs(p);
            }
            double err = fabs((double)y1[(size_t)r * o->J + j] - ref), ulps = mag > 0 ? err / (mag * 0x1p-24) : 0;
            if (ulps > worst) worst = ulps;
            if (!(err <= bound_ulps * 0x1p-24 * mag + 1e-30) && bad++ < 3)
                LWT_CHECK(0, "%s %s k=%d pair (%d,%d): %.9g vs %.12g (err %.3g, sum|wx| %.3g)", set, lw_type_get_info(o->type).name,
                          o->k, j, r, (double)y1[(size_t)r * o->J + j], ref, err, mag);
        }
    return worst;
}

// (a): one tile shape at rows (j0, r0); returns 0 when every result equals its single, bitwise
static int check_shape(const lw__cpu_kernels* K, const operands* o, const float* y1, int nj, int nr, int j0, int r0, int accumulate,
                       float* ybuf) {
    size_t ys = (size_t)nj + 3;
    const float sentinel = -12345.678f;
    for (size_t i = 0; i < ys * (size_t)nr; i++) ybuf[i] = sentinel;
    for (int r = 0; r < nr; r++)
        for (int j = 0; j < nj; j++) ybuf[(size_t)r * ys + j] = frand();
    float* before = (float*)malloc(sizeof(float) * ys * (size_t)nr);
    memcpy(before, ybuf, sizeof(float) * ys * (size_t)nr);
    K->tile[o->type](o->w + (size_t)j0 * o->w_row, o->w_row, o->x + (size_t)r0 * o->x_row, o->x_row, o->k, nj, nr, ybuf, ys, accumulate);
    int bad = 0;
    for (int r = 0; r < nr && !bad; r++)
        for (int j = 0; j < (int)ys; j++) {
            float got = ybuf[(size_t)r * ys + j];
            if (j >= nj) { if (bits(got) != bits(sentinel)) bad = 1; continue; }
            float one = y1[(size_t)(r0 + r) * o->J + j0 + j];
            float want = accumulate ? before[(size_t)r * ys + j] + one : one;
            if (bits(got) != bits(want)) {
                LWT_CHECK(0, "%s %s k=%d tile %dx%d at (%d,%d) acc %d: pair (%d,%d) = %a, alone %a", K->name, lw_type_get_info(o->type).name,
                          o->k, nj, nr, j0, r0, accumulate, j, r, (double)got, (double)want);
                bad = 1;
                break;
            }
        }
    if (bad == 1 && !lwt_case_failures) LWT_CHECK(0, "%s: a tile wrote outside its columns", K->name);
    free(before);
    return bad;
}

static void check_tiles(const lw__cpu_kernels* K, lw_type type, int k, int full_grid, double* worst) {
    operands o;
    int J = K->tile_cols + 8, R = K->tile_rows + 8;
    make_operands(&o, type, k, J, R);
    float* y1 = singles(K, &o);
    double w = check_reference(K->name, &o, y1);
    if (w > *worst) *worst = w;
    float* ybuf = (float*)malloc(sizeof(float) * (size_t)(K->tile_cols + 3) * K->tile_rows);
    static const int some_nr[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 47, 48 };
    static const int some_nj[] = { 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64 };
    int fails = 0;
    for (int acc = 0; acc < 2 && fails < 3; acc++) {
        if (full_grid) {
            for (int nj = 1; nj <= K->tile_cols && fails < 3; nj++)
                for (int nr = 1; nr <= K->tile_rows && fails < 3; nr++)
                    fails += check_shape(K, &o, y1, nj, nr, (nj * 7 + nr) % 8, (nj + nr * 3) % 8, acc, ybuf);
        } else {
            for (size_t a = 0; a < sizeof some_nj / sizeof some_nj[0]; a++)
                for (size_t b = 0; b < sizeof some_nr / sizeof some_nr[0] && fails < 3; b++) {
                    int nj = some_nj[a], nr = some_nr[b];
                    if (nj > K->tile_cols || nr > K->tile_rows) continue;
                    fails += check_shape(K, &o, y1, nj, nr, (int)(a + b) % 8, (int)(a * 3 + b) % 8, acc, ybuf);
                }
        }
    }
    free(ybuf);
    free(y1);
    free_operands(&o);
}

static const int float_lengths[] = { 1, 3, 8, 15, 16, 17, 31, 33, 64, 100, 128, 200, 768, 1040, 2055 };
static const int quant_lengths[] = { 32, 64, 160, 256, 288, 544, 768, 1056, 2080 };
static const int kquant_lengths[] = { 256, 512, 768, 1280, 2048, 2304, 5632 };   // 1 to 22 super-blocks

static void check_set(const char* name) {
    lw__cpu_kernels K;
    if (!lw__select_kernels(name, &K)) { LWT_SKIP("this CPU (or build) cannot run the %s set", name); }
    for (int t = 0; t < N_TYPES; t++) {
        int quant = lw__traits((uint32_t)types[t])->vec_type == LW_TYPE_Q8_0, kq = is_kquant(types[t]);
        double worst = 0;
        check_tiles(&K, types[t], kq ? 512 : quant ? 96 : 37, 1, &worst);
        const int* ks = kq ? kquant_lengths : quant ? quant_lengths : float_lengths;
        int nk = kq ? (int)(sizeof kquant_lengths / sizeof kquant_lengths[0])
                 : quant ? (int)(sizeof quant_lengths / sizeof quant_lengths[0]) : (int)(sizeof float_lengths / sizeof float_lengths[0]);
        for (int i = 0; i < nk; i++) check_tiles(&K, types[t], ks[i], 0, &worst);
        printf("  %-8s %-4s tile %dx%d: every shape == 1x1; worst error %.1f x 2^-24 sum|wx|\n", name, lw_type_get_info(types[t]).name,
               K.tile_cols, K.tile_rows, worst);
    }
}

static void test_tiles_portable(void) { check_set("portable"); }
static void test_tiles_avx2(void) { check_set("avx2"); }
static void test_tiles_avx512(void) { check_set("avx512"); }

// (c) the vector sets give the same numbers
static void test_vector_sets_agree(void) {
    lw__cpu_kernels A, B;
    if (!lw__select_kernels("avx2", &A) || !lw__select_kernels("avx512", &B)) LWT_SKIP("needs both the avx2 and avx512 sets");
    static const int ks[] = { 7, 37, 96, 256, 544, 1056, 2304 };
    for (int t = 0; t < N_TYPES; t++)
        for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
            if (ks[i] % lw_type_get_info(types[t]).block_size) continue;
            operands o;
            make_operands(&o, types[t], ks[i], 20, 9);
            float* a = singles(&A, &o);
            float* b = singles(&B, &o);
            LWT_CHECK(memcmp(a, b, sizeof(float) * 20 * 9) == 0, "%s k=%d: avx2 == avx512", lw_type_get_info(types[t]).name, ks[i]);
            free(a); free(b);
            free_operands(&o);
        }
}

// (d) quantisers
static void test_quantizers(void) {
#ifdef LW__X86_KERNELS
    int tested = 0;
    for (int s = 1; s < N_SETS; s++) {
        lw__cpu_kernels K;
        if (!lw__select_kernels(set_names[s], &K)) continue;
        void (*q)(const float* LW__RESTRICT, void* LW__RESTRICT, int64_t) = K.quantize_q8_0;
        LWT_REQUIRE(q != NULL, "%s has a quantiser", set_names[s]);
        enum { N = 32 * 4096 };
        float* x = (float*)malloc(sizeof(float) * N);
        uint8_t* a = (uint8_t*)malloc(34 * (N / 32));
        uint8_t* b = (uint8_t*)malloc(34 * (N / 32));
        for (int i = 0; i < N; i++) {
            int blk = i / 32;
            float scale = blk % 4 == 0 ? 1e-6f : blk % 4 == 1 ? 3.0f : blk % 4 == 2 ? 1e4f : 0.37f;
            x[i] = scale * frand();
            if (blk % 11 == 3) x[i] = scale * (float)((int)(frand() * 127.0f)) / 127.0f;   // ties: x * id near k + 0.5
            if (blk % 13 == 5) x[i] = (i % 3) ? 0.0f : -0.0f;                               // zero blocks
            if (blk % 19 == 8 && i % 32 == 9) x[i] = 3e-36f;                                 // subnormal scale
            // Blocks with an infinity or NaN, or so small that 1/d overflows (where the reference
            // converts a non-finite float to int8_t, undefined behaviour that differs by compiler and
            // code path), are left out of the comparison; they must only not upset their neighbours.
            if (blk % 17 == 6 && i % 32 == 7) x[i] = (blk % 2) ? INFINITY : NAN;
            if (blk % 23 == 9) x[i] = (i % 32 == 3) ? 1e-43f : 0.0f;
        }
        lw__q8_0_from_float(x, a, N);
        q(x, b, N);
        int bad = 0;
        for (int blk = 0; blk < N / 32; blk++)
            if (blk % 17 != 6 && blk % 23 != 9 && memcmp(a + 34 * blk, b + 34 * blk, 34) != 0 && bad++ < 3)
                LWT_CHECK(0, "%s: block %d differs", set_names[s], blk);
        LWT_CHECK(bad == 0, "%s: %d of %d blocks differ from lw__q8_0_from_float", set_names[s], bad, N / 32);
        // every float rounding case near the half steps, exhaustively over one scale
        for (int i = 0; i < N; i++) x[i] = (i % 32 == 0) ? 127.0f : (float)(i % 25400) / 100.0f - 127.0f + (float)(i / 25400) * 1e-3f;
        lw__q8_0_from_float(x, a, N);
        q(x, b, N);
        LWT_CHECK(memcmp(a, b, 34 * (N / 32)) == 0, "%s: half-step cases", set_names[s]);
        free(x); free(a); free(b);
        tested++;
    }
    if (!tested) LWT_SKIP("no vector set on this CPU");
#else
    LWT_SKIP("not an x86 build");
#endif
}

// (d) the Q8_K activation quantisers: every set's against lw__q8_K_from_float, every input defined
static void test_quantizers_q8_K(void) {
    enum { N = 256 * 512 };
    float* x = (float*)malloc(sizeof(float) * N);
    uint8_t* a = (uint8_t*)malloc(292 * (N / 256));
    uint8_t* b = (uint8_t*)malloc(292 * (N / 256));
    for (int i = 0; i < N; i++) {
        int blk = i / 256;
        float scale = blk % 4 == 0 ? 1e-6f : blk % 4 == 1 ? 3.0f : blk % 4 == 2 ? 1e4f : 0.37f;
        x[i] = scale * frand();
        if (blk % 11 == 3) x[i] = scale * (float)((int)(frand() * 127.0f)) / 127.0f;   // ties: x * id near k + 0.5
        if (blk % 13 == 5) x[i] = (i % 3) ? 0.0f : -0.0f;                               // zero blocks
        if (blk % 17 == 6 && i % 256 == 7) x[i] = (blk % 2) ? INFINITY : NAN;           // non-finite
        if (blk % 19 == 8) x[i] = (i % 256 == 3) ? 1e-43f : 0.0f;                       // 1/d overflows
        if (blk % 23 == 9) x[i] = (i % 5) ? -INFINITY : x[i];
    }
    lw__q8_K_from_float(x, a, N);
    const lw__block_q8_K* q = (const lw__block_q8_K*)a;
    int bad_sums = 0;
    for (int blk = 0; blk < N / 256; blk++)
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += q[blk].qs[16 * g + j];
            bad_sums += s != q[blk].bsums[g];
        }
    LWT_CHECK(bad_sums == 0, "bsums are the sums of 16 (%d wrong)", bad_sums);
    int tested = 0;
    for (int s = 0; s < N_SETS; s++) {
        lw__cpu_kernels K;
        if (!lw__select_kernels(set_names[s], &K)) continue;
        LWT_REQUIRE(K.quantize_q8_K != NULL, "%s has a Q8_K quantiser", set_names[s]);
        memset(b, 0xA5, 292 * (N / 256));
        K.quantize_q8_K(x, b, N);
        int bad = 0;
        for (int blk = 0; blk < N / 256; blk++)
            if (memcmp(a + 292 * blk, b + 292 * blk, 292) != 0 && bad++ < 3) LWT_CHECK(0, "%s: Q8_K block %d differs", set_names[s], blk);
        LWT_CHECK(bad == 0, "%s: %d of %d Q8_K blocks differ from lw__q8_K_from_float", set_names[s], bad, N / 256);
        tested++;
    }
    LWT_CHECK(tested >= 1, "the portable set at least");
    free(x); free(a); free(b);
}

// ---- (e) the forward pass

static float* add_matrix(gw_file* w, const char* name, lw_type type, int rows, int cols, float scale) {
    size_t n = (size_t)rows * cols;
    float* x = (float*)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = scale * frand();
    size_t bytes = lw_type_row_size(type, cols) * (size_t)rows;
    void* q = malloc(bytes);
    lw_quantize(type, x, q, (int64_t)n);
    int64_t ne[2] = { cols, rows };
    gw_tensor(w, name, (uint32_t)type, 2, ne, q, bytes);
    free(q);
    free(x);
    return NULL;
}
static void add_vector(gw_file* w, const char* name, int n) {
    float* x = (float*)malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++) x[i] = 1.0f + 0.2f * frand();
    int64_t ne[1] = { n };
    gw_tensor(w, name, LW_TYPE_F32, 1, ne, x, (size_t)n * sizeof(float));
    free(x);
}

// dim 96, 2 layers, 4 heads of 24 (2 KV heads), FFN 1120 (w_down's k is past the float k-block size
// and 35 blocks of 32: more than a Q8_0 k-chunk, odd), vocab 300. K-quants (super-blocks of 256):
// dim 256, heads of 64, FFN 1280 (5 super-blocks).
static lw_model* build_model(lw_type type, gw_file* w) {
    const int kq = is_kquant(type);
    rng = 0x2545F4914F6CDD1Dull + (uint64_t)type;   // the same weights whatever the tests before used
    const int dim = kq ? 256 : 96, layers = 2, heads = 4, kvh = 2, hd = kq ? 64 : 24, ff = kq ? 1280 : 1120, vocab = 300;
    *w = gw_begin(3);
    gw_kv_str(w, "general.architecture", "llama");
    gw_kv_u32(w, "llama.context_length", 256);
    gw_kv_u32(w, "llama.embedding_length", dim);
    gw_kv_u32(w, "llama.block_count", layers);
    gw_kv_u32(w, "llama.feed_forward_length", ff);
    gw_kv_u32(w, "llama.attention.head_count", heads);
    gw_kv_u32(w, "llama.attention.head_count_kv", kvh);
    gw_kv_u32(w, "llama.rope.dimension_count", hd);
    gw_kv_f32(w, "llama.rope.freq_base", 10000.0f);
    gw_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    float sd = 1.0f / sqrtf((float)dim);
    add_matrix(w, "token_embd.weight", type, vocab, dim, 1.0f);
    char name[64];
    for (int l = 0; l < layers; l++) {
#define NM(x) (snprintf(name, sizeof name, "blk.%d." x, l), name)
        add_vector(w, NM("attn_norm.weight"), dim);
        add_matrix(w, NM("attn_q.weight"), type, heads * hd, dim, sd);
        add_matrix(w, NM("attn_k.weight"), type, kvh * hd, dim, sd);
        add_matrix(w, NM("attn_v.weight"), type, kvh * hd, dim, sd);
        add_matrix(w, NM("attn_output.weight"), type, dim, heads * hd, 1.0f / sqrtf((float)(heads * hd)));
        add_vector(w, NM("ffn_norm.weight"), dim);
        add_matrix(w, NM("ffn_gate.weight"), type, ff, dim, sd);
        add_matrix(w, NM("ffn_up.weight"), type, ff, dim, sd);
        add_matrix(w, NM("ffn_down.weight"), type, dim, ff, 1.0f / sqrtf((float)ff));
#undef NM
    }
    add_vector(w, "output_norm.weight", dim);
    add_matrix(w, "output.weight", type, vocab, dim, sd);
    gw_finish(w);
    lw_model* m = NULL;
    if (lw_model_load_memory(&m, w->data, w->size, NULL) != LW_OK) return NULL;
    return m;
}

enum { FWD_N = 50, FWD_V = 300 };

// logits [FWD_N][V] of a causal prompt: as one prefill (all = 1) or one row per forward (all = 0)
static int run_prompt(lw_model* m, const char* set, int threads, lw_type kv_type, int all, float* logits) {
    lw_backend_desc bd;
    memset(&bd, 0, sizeof bd);
    bd.kind = LW_BACKEND_CPU;
    bd.n_threads = threads;
    bd.cpu_kernels = set;
    lw_ctx_desc cd;
    memset(&cd, 0, sizeof cd);
    cd.kv_type = kv_type;
    cd.kv_page_size = 16;
    cd.kv_tokens = 256;
    cd.max_seqs = 2;
    cd.max_rows = FWD_N;
    lw_backend* be = NULL;
    lw_ctx* ctx = NULL;
    if (lw_backend_create(&be, &bd) != LW_OK) return 0;
    int ok = lw_ctx_create(&ctx, m, be, &cd) == LW_OK;
    lw_seq s = { 0 };
    ok = ok && lw_seq_create(ctx, &s) == LW_OK;
    lw_row rows[FWD_N];
    for (int i = 0; i < FWD_N; i++) {
        rows[i].token = (i * 37 + 11) % FWD_V;
        rows[i].position = i;
        rows[i].seq = s;
        rows[i].wants_logits = 1;
        rows[i].commits = 1;
    }
    for (int i = 0; ok && i < (all ? 1 : FWD_N); i++) {
        lw_batch b;
        memset(&b, 0, sizeof b);
        b.rows = all ? rows : rows + i;
        b.n_rows = all ? FWD_N : 1;
        b.logits = all ? logits : logits + (size_t)i * FWD_V;
        ok = lw_ctx_forward(ctx, &b) == LW_OK;
    }
    lw_ctx_free(ctx);
    lw_backend_free(be);
    return ok;
}

static void test_forward_sets(void) {
    for (int t = 0; t < N_TYPES; t++) {
        gw_file file;
        lw_model* m = build_model(types[t], &file);
        LWT_REQUIRE(m != NULL, "model: %s", lw_last_error());
        int quant = lw__traits((uint32_t)types[t])->vec_type != LW_TYPE_F32;
        for (int kv = 0; kv < 2; kv++) {
            lw_type kv_type = kv ? LW_TYPE_F16 : LW_TYPE_F32;
            size_t n = (size_t)FWD_N * FWD_V;
            float* port = (float*)malloc(sizeof(float) * n);
            float* a = (float*)malloc(sizeof(float) * n);
            float* b = (float*)malloc(sizeof(float) * n);
            LWT_REQUIRE(run_prompt(m, "portable", 2, kv_type, 1, port), "portable forward: %s", lw_last_error());
            for (int s = 0; s < N_SETS; s++) {
                lw__cpu_kernels K;
                if (!lw__select_kernels(set_names[s], &K)) continue;
                LWT_REQUIRE(run_prompt(m, set_names[s], 2, kv_type, 1, a) && run_prompt(m, set_names[s], 3, kv_type, 0, b),
                            "%s forward: %s", set_names[s], lw_last_error());
                LWT_CHECK(memcmp(a, b, sizeof(float) * n) == 0, "%s %s kv %s: prefill of %d rows (2 threads) == one row at a time (3 threads)",
                          set_names[s], lw_type_get_info(types[t]).name, lw_type_get_info(kv_type).name, FWD_N);
                double num = 0, den = 0;
                for (size_t i = 0; i < n; i++) { num += ((double)a[i] - port[i]) * ((double)a[i] - port[i]); den += (double)port[i] * port[i]; }
                double nmse = num / den, bound = is_kquant(types[t]) ? 1e-4 : quant ? 1e-5 : 1e-10;
                LWT_CHECK(nmse <= bound, "%s %s kv %s: NMSE against portable %.3g > %.0e", set_names[s], lw_type_get_info(types[t]).name,
                          lw_type_get_info(kv_type).name, nmse, bound);
                if (s) printf("  %-8s %-4s kv %s: batch invariant; NMSE against portable %.2e\n", set_names[s], lw_type_get_info(types[t]).name,
                              lw_type_get_info(kv_type).name, nmse);
            }
            free(port); free(a); free(b);
        }
        lw_model_free(m);
        gw_free(&file);
    }
}

static void test_select(void) {
    lw__cpu_kernels K;
    LWT_CHECK(lw__select_kernels(NULL, &K) && lw__select_kernels("", &K) && lw__select_kernels("auto", &K), "auto");
    LWT_CHECK(lw__select_kernels("portable", &K) && strcmp(K.name, "portable") == 0, "portable is always there");
    LWT_CHECK(!lw__select_kernels("avx1024", &K) && !lw__select_kernels("AVX2", &K), "unknown names are refused");
    lw__select_kernels(NULL, &K);
    printf("  auto picks %s\n", K.name);
#ifdef LW__X86_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        LWT_CHECK(strcmp(K.name, "avx512") == 0, "auto picks avx512 on this CPU, not %s", K.name);
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        LWT_CHECK(strcmp(K.name, "avx2") == 0, "auto picks avx2 on this CPU, not %s", K.name);
#endif
    lw_backend* be = NULL;
    lw_backend_desc bd;
    memset(&bd, 0, sizeof bd);
    bd.kind = LW_BACKEND_CPU;
    bd.n_threads = 1;
    bd.cpu_kernels = "no-such-set";
    LWT_CHECK(lw_backend_create(&be, &bd) == LW_BACKEND_UNAVAILABLE && be == NULL, "an unknown set is an error");
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    LWT_RUN(test_select);
    LWT_RUN(test_tiles_portable);
    LWT_RUN(test_tiles_avx2);
    LWT_RUN(test_tiles_avx512);
    LWT_RUN(test_vector_sets_agree);
    LWT_RUN(test_quantizers);
    LWT_RUN(test_quantizers_q8_K);
    LWT_RUN(test_forward_sets);
    return lwt_finish();
}
