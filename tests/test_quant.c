/* test_quant - tensor types: conversions, quantisers and dot-product kernels against plain references

   - half and bfloat16 conversions against the compiler's own _Float16 and the bfloat16 definition,
     over every half and many floats (edges, ties, subnormals, overflow, NaN);
   - Q8_0 and Q4_0 quantisers bit for bit against llama.cpp's reference formulas written out here,
     and their round-trip error within the bound of the format (Q8_0: 0.6 d, Q4_0: 1.01 |d|, where d is
     the block's scale, for scales that are normal halves);
   - Q4_K and Q6_K: blocks built by hand from vectors whose quantisation is exact and known (every
     byte of the expected block derived in the comments below: scales packed 6-bit / int8, super-block
     scales, nibble and 2-bit positions), and round trips within stated bounds:
       Q4_K: NRMSE <= 0.075 (uniform and Gaussian super-blocks), every |err| <= 0.2 (max - min(min, 0))
             of its sub-block of 32 (heavy tails included; the least-squares fit may clip an outlier);
       Q6_K: NRMSE <= 0.02, every |err| <= 0.12 max|x| of its sub-block of 16;
     (measured 0.055 / 0.071, 0.17 and 0.013 / 0.018, 0.10). llama.cpp's llama-quantize gives the same
     bytes (checked outside the tests, where llama.cpp is installed: 100% of blocks of the 110M bench
     model, Q4_K_M and Q6_K, and of blocks with zeros, constants, outliers and tiny values);
   - Q8_K (activations for K-quants): d = max|x| / 127 as a float, the sums of 16, any input defined;
   - every type's dot kernel against a double-precision sum over the dequantised row and the
     activations in the kernel's input type (F32, Q8_0 or Q8_K), on awkward lengths, within
     |err| <= 1e-5 * sum |w x| (float accumulation of n terms).
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
    LWT_CHECK(lw_type_get_info(LW_TYPE_Q5_K).block_size == 256 && !lw_type_get_info(LW_TYPE_Q5_K).computable, "Q5_K known, not computable");
    LWT_CHECK(lw_type_get_info(LW_TYPE_Q4_K).computable && lw_type_get_info(LW_TYPE_Q6_K).computable, "Q4_K and Q6_K computable");
    LWT_CHECK(!lw_type_get_info(LW_TYPE_Q8_K).computable, "Q8_K is an activation format, not a weight type");
    LWT_CHECK(lw_type_row_size(LW_TYPE_Q4_K, 512) == 288 && lw_type_row_size(LW_TYPE_Q6_K, 768) == 630 &&
              lw_type_row_size(LW_TYPE_Q8_K, 256) == 292, "K-quant row sizes");
    LWT_CHECK(lw_type_get_info((lw_type)4).name == NULL && lw_type_get_info((lw_type)99).name == NULL, "retired and unknown ids");
    float x[33] = { 0 }, y[33];
    LWT_CHECK(lw_quantize(LW_TYPE_Q8_0, x, y, 33) == LW_INVALID_ARGS, "n not a multiple of the block");
    LWT_CHECK(lw_quantize(LW_TYPE_Q5_K, x, y, 256) == LW_INVALID_ARGS, "no quantiser for Q5_K here");
    static float big[512], out[512];
    static uint8_t blocks[4 * 292];
    LWT_CHECK(lw_quantize(LW_TYPE_Q4_K, big, blocks, 255) == LW_INVALID_ARGS && lw_quantize(LW_TYPE_Q6_K, big, blocks, 257) == LW_INVALID_ARGS &&
              lw_dequantize(LW_TYPE_Q4_K, blocks, out, 32) == LW_INVALID_ARGS, "K-quants take whole super-blocks");
    LWT_CHECK(lw_quantize(LW_TYPE_Q4_K, big, blocks, 0) == LW_OK && lw_quantize(LW_TYPE_Q6_K, big, blocks, 512) == LW_OK &&
              lw_dequantize(LW_TYPE_Q8_K, blocks, out, 256) == LW_OK, "zero and whole super-blocks are accepted");
    LWT_CHECK(lw_dequantize(LW_TYPE_F16, NULL, y, 4) == LW_INVALID_ARGS, "NULL source");
}

// ---- K-quants

// Q4_K on a vector with a known exact fit. Sub-block j (32 values) is x = q * s_j - o_j with
// q_j(l) = (l + 3j) % 16 (every value 0..15 occurs), s = 1, 2, 4, 8, 16, 32, 0.5, 0.25 (powers of two,
// so the first grid 15 / (max - min) = 1 / s_j fits exactly, error 0, and no later grid replaces it) and
// o = 63, 0, 5, 17, 32, 48, 1, 40 (each sub-block's minimum is -o_j). Then:
//   max scale 32, 6-bit scales round(63 / 32 * s_j) = 2, 4, 8, 16, 32 (31.5: ties to even), 63, 1, 0 (0.49)
//   max min 63, 6-bit minimums 63 / 63 * o_j = o_j;   d = half(32 / 63), dmin = half(1) = 0x3C00
//   scale bytes: 0-3 = sc0-3 | (sc4-7 >> 4) << 6 = 2|2<<6, 4|3<<6, 8, 16        = 130, 196, 8, 16
//                4-7 = m0-3 | (m4-7 >> 4) << 6  = 63|2<<6, 0|3<<6, 5, 17|2<<6  = 191, 192, 5, 145
//                8-11 = (sc4-7 & 15) | (m4-7 & 15) << 4 = 0|0, 15|0, 1|16, 0|128  = 0, 15, 17, 128
//   the values against the final scales half(32/63) * sc_j = s_j * (1.0156 or 0.9998) round back to q
//   (sub-block 7 has scale 0 and keeps the fit's q); byte 32c + l = q_2c(l) | q_2c+1(l) << 4.
static void test_q4_K_known_block(void) {
    static const float s[8] = { 1, 2, 4, 8, 16, 32, 0.5f, 0.25f }, o[8] = { 63, 0, 5, 17, 32, 48, 1, 40 };
    static const uint8_t scale_bytes[12] = { 130, 196, 8, 16, 191, 192, 5, 145, 0, 15, 17, 128 };
    static const uint8_t sc[8] = { 2, 4, 8, 16, 32, 63, 1, 0 };
    float x[256], y[256];
    for (int j = 0; j < 8; j++)
        for (int l = 0; l < 32; l++) x[32 * j + l] = (float)((l + 3 * j) % 16) * s[j] - o[j];
    lw__block_q4_K b;
    LWT_REQUIRE(lw_quantize(LW_TYPE_Q4_K, x, &b, 256) == LW_OK, "quantize");
    LWT_CHECK(b.d == lw__fp32_to_fp16(32.0f / 63.0f) && b.dmin == 0x3C00, "d %#06x, dmin %#06x", b.d, b.dmin);
    LWT_CHECK(memcmp(b.scales, scale_bytes, 12) == 0, "scale bytes %d %d %d %d %d %d %d %d %d %d %d %d", b.scales[0], b.scales[1],
              b.scales[2], b.scales[3], b.scales[4], b.scales[5], b.scales[6], b.scales[7], b.scales[8], b.scales[9], b.scales[10], b.scales[11]);
    int bad = 0;
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++)
            bad += b.qs[32 * c + l] != (uint8_t)((l + 6 * c) % 16 | ((l + 6 * c + 3) % 16) << 4);
    LWT_CHECK(bad == 0, "%d nibble bytes wrong", bad);
    // dequantised: half(d) * sc_j * q - half(dmin) * m_j, by the format's definition
    LWT_REQUIRE(lw_dequantize(LW_TYPE_Q4_K, &b, y, 256) == LW_OK, "dequantize");
    float d = lw__fp16_to_fp32(b.d);
    bad = 0;
    for (int j = 0; j < 8; j++)
        for (int l = 0; l < 32; l++) {
            float want = (d * (float)sc[j]) * (float)((l + 3 * j) % 16) - 1.0f * o[j];
            bad += bits(y[32 * j + l]) != bits(want);
        }
    LWT_CHECK(bad == 0, "%d dequantised values differ from d * sc * q - dmin * m", bad);
}

// Q6_K on a vector with a known exact fit: sub-block j (16 values) is x = q * s_j with s_j = 2^-(j % 8)
// and q = -32 at l = j (the value of largest magnitude, negative, so the first grid -32 / max = 1 / s_j
// is exact) and q = (7l + 5j) % 63 - 31 elsewhere. The weighted fit gives scale s_j exactly (the sums
// scale by a power of two), the largest scale is 1 (sub-blocks 0 and 8), so iscale = -128 / 1,
// d = half(-1/128) = 0xA000, int8 scales round(-128 s_j) = -128, -64, ..., -1 (twice), and
// d * scale_j = s_j gives back q exactly: the round trip is exact. Stored q + 32 at position p
// (half h = p / 128, group g = p % 128 / 32, l = p % 32): low 4 bits in ql[64h + 32(g & 1) + l] (low
// nibble for g < 2, high for g >= 2), high 2 bits in qh[32h + l] bits 2g, 2g+1. By hand: position 0 is
// q = -32 (stored 0): ql[0] & 15 = 0, qh[0] & 3 = 0; position 200 (sub-block 12, l = 8) is
// q = (56 + 60) % 63 - 31 = 22 (stored 54 = 0b11'0110): h 1, g 2, l 8: ql[72] >> 4 = 6, (qh[40] >> 4) & 3 = 3.
static void test_q6_K_known_block(void) {
    float x[256], y[256];
    for (int j = 0; j < 16; j++)
        for (int l = 0; l < 16; l++) {
            int q = l == j ? -32 : (7 * l + 5 * j) % 63 - 31;
            x[16 * j + l] = (float)q * ldexpf(1.0f, -(j % 8));
        }
    lw__block_q6_K b;
    LWT_REQUIRE(lw_quantize(LW_TYPE_Q6_K, x, &b, 256) == LW_OK, "quantize");
    LWT_CHECK(b.d == 0xA000, "d %#06x (want -1/128 = 0xa000)", b.d);
    int bad = 0;
    for (int j = 0; j < 16; j++) bad += b.scales[j] != -(128 >> (j % 8));
    LWT_CHECK(bad == 0, "%d int8 scales differ from -128 >> (j %% 8)", bad);
    LWT_CHECK((b.ql[0] & 15) == 0 && (b.qh[0] & 3) == 0, "position 0: ql %#x qh %#x", b.ql[0], b.qh[0]);
    LWT_CHECK(b.ql[72] >> 4 == 6 && (b.qh[40] >> 4 & 3) == 3, "position 200: ql[72] %#x qh[40] %#x", b.ql[72], b.qh[40]);
    bad = 0;
    for (int p = 0; p < 256; p++) {
        int h = p / 128, g = p % 128 / 32, l = p % 32;
        int lo = b.ql[64 * h + 32 * (g & 1) + l] >> (g < 2 ? 0 : 4) & 15, hi = b.qh[32 * h + l] >> (2 * g) & 3;
        int j = p / 16, q = (p % 16) == j ? -32 : (7 * (p % 16) + 5 * j) % 63 - 31;
        bad += (lo | hi << 4) != q + 32;
    }
    LWT_CHECK(bad == 0, "%d positions hold the wrong 6-bit value", bad);
    LWT_REQUIRE(lw_dequantize(LW_TYPE_Q6_K, &b, y, 256) == LW_OK, "dequantize");
    LWT_CHECK(memcmp(x, y, sizeof x) == 0, "exact round trip");
}

static float gauss(void) { float s = 0; for (int i = 0; i < 12; i++) s += frand(); return s * 0.5f; }

// Round trips of uniform, Gaussian and heavy-tailed super-blocks (scales 1e-3 .. 1e3), with some zero
// super-blocks (which must come back as zeros), against the bounds in the header.
static void check_k_round_trip(lw_type type, double nrmse_bound, double worst_bound) {
    enum { N = 256 * 1024 };
    int q6 = type == LW_TYPE_Q6_K, sub = q6 ? 16 : 32;
    float* x = (float*)malloc(sizeof(float) * N);
    float* y = (float*)malloc(sizeof(float) * N);
    uint8_t* q = (uint8_t*)malloc(lw_type_row_size(type, N));
    for (int dist = 0; dist < 3; dist++) {
        for (int i = 0; i < N; i++) {
            float s = powf(10.0f, (float)((i / 256) % 7) - 3.0f);
            x[i] = dist == 0 ? frand() * s : dist == 1 ? gauss() * s : (frand() > 0.9f ? 10.0f * gauss() * s : gauss() * s);
            if ((i / 256) % 37 == 5) x[i] = 0.0f;
        }
        LWT_REQUIRE(lw_quantize(type, x, q, N) == LW_OK && lw_dequantize(type, q, y, N) == LW_OK, "convert");
        double e2 = 0, x2 = 0, worst = 0;
        int zeros_off = 0;
        for (int b = 0; b < N / sub; b++) {
            float mn = x[b * sub], mx = x[b * sub], am = 0, me = 0;
            for (int i = b * sub; i < (b + 1) * sub; i++) {
                mn = fminf(mn, x[i]); mx = fmaxf(mx, x[i]); am = fmaxf(am, fabsf(x[i]));
                double e = fabs((double)x[i] - y[i]);
                me = fmaxf(me, (float)e);
                e2 += e * e;
                x2 += (double)x[i] * x[i];
                if ((i / 256) % 37 == 5) zeros_off += y[i] != 0.0f;
            }
            double range = q6 ? am : mx - fminf(mn, 0.0f);
            if (range > 0) worst = fmax(worst, me / range);
        }
        double nrmse = sqrt(e2 / x2);
        LWT_CHECK(zeros_off == 0, "%s: zero super-blocks come back as zeros (%d values off)", lw_type_get_info(type).name, zeros_off);
        if (dist < 2) LWT_CHECK(nrmse <= nrmse_bound, "%s dist %d: NRMSE %.4f > %.3f", lw_type_get_info(type).name, dist, nrmse, nrmse_bound);
        LWT_CHECK(worst <= worst_bound, "%s dist %d: worst error %.4f of the sub-block's range > %.2f", lw_type_get_info(type).name, dist,
                  worst, worst_bound);
        printf("  %s %-9s NRMSE %.4f, worst error %.3f of the sub-block's range\n", lw_type_get_info(type).name,
               dist == 0 ? "uniform" : dist == 1 ? "Gaussian" : "outliers", nrmse, worst);
    }
    free(x); free(y); free(q);
}
static void test_q4_K_round_trip(void) { check_k_round_trip(LW_TYPE_Q4_K, 0.075, 0.2); }
static void test_q6_K_round_trip(void) { check_k_round_trip(LW_TYPE_Q6_K, 0.02, 0.12); }

// Q8_K: d = max|x| / 127 (a float), q = round(x / d) with halves away from zero, sums of 16; odd inputs
// give defined bytes (an infinity makes d infinite and the block's other values 0; NaN becomes -127).
static void test_q8_K(void) {
    float x[512], y[512];
    for (int i = 0; i < 512; i++) x[i] = frand() * (i < 256 ? 3.0f : 1e-3f);
    x[17] = -3.5f;                      // the largest magnitude: q = -127
    x[18] = -3.5f * 63.5f / 127.0f;     // x / d = -63.5 (up to rounding)
    lw__block_q8_K b[2];
    LWT_REQUIRE(lw_quantize(LW_TYPE_Q8_K, x, b, 512) == LW_OK && lw_dequantize(LW_TYPE_Q8_K, b, y, 512) == LW_OK, "convert");
    LWT_CHECK(b[0].d == 3.5f / 127.0f && b[0].qs[17] == -127, "d = max|x| / 127 (%g), q of the max -127 (%d)", (double)b[0].d, b[0].qs[17]);
    int bad = 0, bad_sums = 0;
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 256; i++) {
            float id = 1.0f / b[k].d;
            bad += b[k].qs[i] != (int8_t)roundf(x[256 * k + i] * id) || fabsf(y[256 * k + i] - x[256 * k + i]) > 0.5f * b[k].d * 1.0001f;
        }
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += b[k].qs[16 * g + i];
            bad_sums += s != b[k].bsums[g];
        }
    }
    LWT_CHECK(bad == 0 && bad_sums == 0, "%d values, %d sums wrong", bad, bad_sums);
    for (int i = 0; i < 256; i++) x[i] = i == 5 ? INFINITY : i == 9 ? NAN : 1.0f;
    LWT_REQUIRE(lw_quantize(LW_TYPE_Q8_K, x, b, 256) == LW_OK, "convert");
    LWT_CHECK(isinf(b[0].d) && b[0].qs[0] == 0 && b[0].qs[9] == -127 && b[0].qs[5] == -127, "non-finite input: d %g, q %d %d %d",
              (double)b[0].d, b[0].qs[0], b[0].qs[5], b[0].qs[9]);
}

// every computable type's dot kernel against a double sum over the dequantised row
static void test_dot_kernels(void) {
    const lw_type types[] = { LW_TYPE_F32, LW_TYPE_F16, LW_TYPE_BF16, LW_TYPE_Q8_0, LW_TYPE_Q4_0, LW_TYPE_Q4_K, LW_TYPE_Q6_K };
    const int lengths[] = { 1, 2, 7, 15, 16, 17, 31, 32, 33, 63, 64, 96, 160, 256, 768, 1000, 2048, 2304, 4128 };
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
    LWT_RUN(test_q4_K_known_block);
    LWT_RUN(test_q6_K_known_block);
    LWT_RUN(test_q4_K_round_trip);
    LWT_RUN(test_q6_K_round_trip);
    LWT_RUN(test_q8_K);
    LWT_RUN(test_dot_kernels);
    return lwt_finish();
}
