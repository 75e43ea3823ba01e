/* test_quant - tensor types: conversions, quantisers and dot-product kernels against plain references

   - half and bfloat16 conversions against the compiler's own _Float16 and the bfloat16 definition,
     over every half and many floats (edges, ties, subnormals, overflow, NaN);
   - Q8_0 and Q4_0 quantisers bit for bit against llama.cpp's reference formulas written out here,
     and their round-trip error within the bound of the format (Q8_0: 0.6 d, Q4_0: 1.01 |d|, where d is
     the block's scale, for scales that are normal halves);
   - every type's dot kernel against a double-precision sum over the dequantised row and the
     activations in the kernel's input type (F32, or Q8_0 for quantised weights), on awkward lengths,
     within |err| <= 1e-5 * sum |w x| (float accumulation of n terms).
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include "lwtest.h"
#include <math.h>

static uint64_t rng = 0x243F6A8885A308D3ull;
static uint32_t rand32(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)(rng >> 16); }
static float frand(void) { return (float)((double)rand32() / 4294967296.0 * 2.0 - 1.0); }

static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static void test_fp16_every_half(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 ref;
        uint16_t hh = (uint16_t)h;
        memcpy(&ref, &hh, 2);
        float want = (float)ref, got = lw__fp16_to_fp32(hh);
        int same = isnan(want) ? isnan(got) : bits(want) == bits(got);
        if (!same && bad++ < 5) LWT_CHECK(0, "half %#06x: got %g, want %g", h, (double)got, (double)want);
        uint16_t back = lw__fp32_to_fp16(got);
        if (!isnan(want) && back != hh && bad++ < 5) LWT_CHECK(0, "half %#06x round trip gives %#06x", h, back);
    }
    LWT_CHECK(bad == 0, "%d halves differ", bad);
}

static void test_fp16_from_float(void) {
    float edge[] = { 0.0f, -0.0f, 1.0f, 65504.0f, 65519.99f, 65520.0f, 1e6f, -1e6f, INFINITY, -INFINITY, 5.96e-8f, 2.98e-8f,
                     2.99e-8f, 6.1e-5f, 6.09e-5f, 1.0f + 1.0f / 2048.0f, 1.0f + 3.0f / 2048.0f, 1e-10f, 3.14159f };
    int bad = 0, n = 0;
    for (int i = 0; i < (int)(sizeof edge / sizeof edge[0]) + 2000000; i++) {
        float f;
        if (i < (int)(sizeof edge / sizeof edge[0])) f = edge[i];
        else { uint32_t u = rand32(); memcpy(&f, &u, 4); if (isnan(f)) continue; }
        _Float16 ref = (_Float16)f;
        uint16_t want;
        memcpy(&want, &ref, 2);
        uint16_t got = lw__fp32_to_fp16(f);
        n++;
        if (got != want && bad++ < 5) LWT_CHECK(0, "fp16(%a): got %#06x, want %#06x", (double)f, got, want);
    }
    uint16_t nan16 = lw__fp32_to_fp16(NAN);
    LWT_CHECK((nan16 & 0x7c00) == 0x7c00 && (nan16 & 0x3ff), "NaN stays NaN (%#06x)", nan16);
    LWT_CHECK(bad == 0, "%d of %d floats round differently from the compiler", bad, n);
}

static void test_bf16(void) {
    int bad = 0;
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = rand32();
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f)) continue;
        // round to nearest even on the upper 16 bits, by the definition
        uint32_t lower = u & 0xffff, upper = u >> 16;
        if (lower > 0x8000 || (lower == 0x8000 && (upper & 1))) upper++;
        if (lw__fp32_to_bf16(f) != (uint16_t)upper && bad++ < 5) LWT_CHECK(0, "bf16(%a)", (double)f);
        float back = lw__bf16_to_fp32((uint16_t)upper);
        if (bits(back) != upper << 16 && bad++ < 5) LWT_CHECK(0, "bf16 -> f32");
    }
    LWT_CHECK(bad == 0, "%d bf16 conversions differ", bad);
    uint16_t nb = lw__fp32_to_bf16(NAN);
    LWT_CHECK((nb & 0x7f80) == 0x7f80 && (nb & 0x7f), "bf16 NaN stays NaN");
}

// llama.cpp's reference quantisers, written from their definition
static void ref_q8_0(const float* x, uint8_t* out) {   // one block of 32 -> 34 bytes
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127, id = d ? 1.0f / d : 0.0f;
    uint16_t dh = lw__fp32_to_fp16(d);
    memcpy(out, &dh, 2);
    for (int j = 0; j < 32; j++) out[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}
static void ref_q4_0(const float* x, uint8_t* out) {   // one block of 32 -> 18 bytes
    float amax = 0, max = 0;
    for (int j = 0; j < 32; j++) if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
    float d = max / -8, id = d ? 1.0f / d : 0.0f;
    uint16_t dh = lw__fp32_to_fp16(d);
    memcpy(out, &dh, 2);
    for (int j = 0; j < 16; j++) {
        int a = (int8_t)(x[j] * id + 8.5f), b = (int8_t)(x[16 + j] * id + 8.5f);
        out[2 + j] = (uint8_t)((a < 15 ? a : 15) | ((b < 15 ? b : 15) << 4));
    }
}

static void check_quantiser(lw_type type, void (*ref)(const float*, uint8_t*), double bound_in_d) {
    enum { N = 32 * 64 };
    lw_type_info ti = lw_type_get_info(type);
    float x[N], y[N];
    uint8_t q[N * 2], r[N * 2];   // room for any 32-block format
    for (int b = 0; b < N / 32; b++)   // blocks of varied scale (d a normal half), some zero, some one-signed
        for (int j = 0; j < 32; j++) {
            float v = frand() * powf(10.0f, (float)(b % 6) - 1.0f);
            x[b * 32 + j] = b % 13 == 0 ? 0.0f : b % 7 == 0 ? fabsf(v) : v;
        }
    LWT_REQUIRE(lw_quantize(type, x, q, N) == LW_OK, "quantize");
    for (int b = 0; b < N / 32; b++) ref(x + b * 32, r + b * ti.type_size);
    LWT_CHECK(memcmp(q, r, (size_t)(N / 32) * ti.type_size) == 0, "%s blocks equal llama.cpp's reference quantiser", ti.name);
    LWT_REQUIRE(lw_dequantize(type, q, y, N) == LW_OK, "dequantize");
    double worst = 0;
    int zero_blocks_off = 0;
    for (int b = 0; b < N / 32; b++) {
        uint16_t dh;
        memcpy(&dh, q + b * ti.type_size, 2);
        double d = fabs(lw__fp16_to_fp32(dh));
        for (int j = 0; j < 32; j++) {
            double err = fabs((double)x[b * 32 + j] - y[b * 32 + j]);
            if (d > 0) worst = fmax(worst, err / d);
            else zero_blocks_off += err != 0;
        }
    }
    LWT_CHECK(zero_blocks_off == 0, "zero blocks dequantise to zero (%d values off)", zero_blocks_off);
    LWT_CHECK(worst <= bound_in_d, "%s round trip: worst error %.3f d (bound %.2f d)", ti.name, worst, bound_in_d);
}
static void test_q8_0_quantiser(void) { check_quantiser(LW_TYPE_Q8_0, ref_q8_0, 0.6); }
static void test_q4_0_quantiser(void) { check_quantiser(LW_TYPE_Q4_0, ref_q4_0, 1.01); }

static void test_type_table(void) {
    LWT_CHECK(lw_type_row_size(LW_TYPE_Q8_0, 64) == 68 && lw_type_row_size(LW_TYPE_Q4_0, 32) == 18, "row sizes");
    LWT_CHECK(lw_type_row_size(LW_TYPE_F16, 7) == 14 && lw_type_row_size(LW_TYPE_BF16, 3) == 6, "plain row sizes");
    LWT_CHECK(lw_type_get_info(LW_TYPE_Q4_K).block_size == 256 && !lw_type_get_info(LW_TYPE_Q4_K).computable, "Q4_K known, not computable");
    LWT_CHECK(lw_type_get_info((lw_type)4).name == NULL && lw_type_get_info((lw_type)99).name == NULL, "retired and unknown ids");
    float x[33], y[33];
    LWT_CHECK(lw_quantize(LW_TYPE_Q8_0, x, y, 33) == LW_INVALID_ARGS, "n not a multiple of the block");
    LWT_CHECK(lw_quantize(LW_TYPE_Q4_K, x, y, 256) == LW_INVALID_ARGS, "no quantiser for Q4_K here");
    LWT_CHECK(lw_dequantize(LW_TYPE_F16, NULL, y, 4) == LW_INVALID_ARGS, "NULL source");
}

// every computable type's dot kernel against a double sum over the dequantised row
static void test_dot_kernels(void) {
    const lw_type types[] = { LW_TYPE_F32, LW_TYPE_F16, LW_TYPE_BF16, LW_TYPE_Q8_0, LW_TYPE_Q4_0 };
    const int lengths[] = { 1, 2, 7, 15, 16, 17, 31, 32, 33, 63, 64, 96, 160, 768, 1000, 2048, 4128 };
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const lw__type_traits* tr = lw__traits((uint32_t)types[t]);
        for (size_t k = 0; k < sizeof lengths / sizeof lengths[0]; k++) {
            int n = lengths[k];
            if (n % tr->block_size) continue;
            float* w = (float*)malloc((size_t)n * 4);
            float* x = (float*)malloc((size_t)n * 4);
            void* q = malloc(lw_type_row_size(types[t], n));
            void* xv = malloc(lw_type_row_size(tr->vec_type, n));   // x as the kernel takes it
            for (int i = 0; i < n; i++) { w[i] = frand(); x[i] = frand() * 3.0f; }
            lw_quantize(types[t], w, q, n);
            lw_dequantize(types[t], q, w, n);
            lw_quantize(tr->vec_type, x, xv, n);
            lw_dequantize(tr->vec_type, xv, x, n);
            double ref = 0, mag = 0;
            for (int i = 0; i < n; i++) { ref += (double)w[i] * x[i]; mag += fabs((double)w[i] * x[i]); }
            float got = tr->dot(q, xv, n);
            LWT_CHECK(fabs(got - ref) <= 1e-5 * mag + 1e-30, "%s dot, n = %d: %.9g vs %.9g", tr->name, n, (double)got, ref);
            free(w); free(x); free(q); free(xv);
        }
    }
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    LWT_RUN(test_fp16_every_half);
    LWT_RUN(test_fp16_from_float);
    LWT_RUN(test_bf16);
    LWT_RUN(test_q8_0_quantiser);
    LWT_RUN(test_q4_0_quantiser);
    LWT_RUN(test_type_table);
    LWT_RUN(test_dot_kernels);
    return lwt_finish();
}
