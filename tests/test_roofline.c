/* test_roofline - tools/roofline against a hand computation, and its SVG

   A random F32 model (build/mkmodel: width 64, 2 layers, 4 heads of 16, 2 KV heads, FFN 96, vocabulary
   512, tied) on a made-up machine of 10 GB/s and 100 GFLOP/s (ridge 10 FLOP/byte). By hand, per row:
     weights per layer: wq 64x64 + wk 64x32 + wv 64x32 + wo 64x64 + 3 x 64x96 = 30720 floats;
     whole pass: 2 layers x 30720 x 4 bytes (once, whatever the rows) + 64 x 4 per row (its embedding)
                 + 512 x 64 x 4 (the tied head, read when any row wants logits);
     FLOPs per row: 2 x (2 x 30720 + 512 x 64) (a decode row wanting logits) plus attention.
   The decode b=1 line must show these bytes and the memory bound; a 256-position diffusion step the
   compute bound. The SVG must be one well-formed <svg> element with the theory's points and the measured
   points of a bench sweep JSON.
*/
#define _DEFAULT_SOURCE   // popen
#include "lwtest.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char* build_dir(void) { return getenv("BUILD") ? getenv("BUILD") : "build"; }

static char* run(const char* cmd) {
    FILE* p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 1 << 16, n = 0;
    char* out = (char*)calloc(cap, 1);
    size_t got;
    while ((got = fread(out + n, 1, cap - 1 - n, p)) > 0) n += got;
    pclose(p);
    return out;
}

// the numbers of the table line that starts with "| name "
static int line_numbers(const char* out, const char* name, double* v, int max) {
    char pat[64];
    snprintf(pat, sizeof pat, "| %s ", name);
    const char* l = strstr(out, pat);
    if (!l) return 0;
    l += strlen(pat);
    int n = 0;
    while (n < max && *l && *l != '\n') {
        while (*l == ' ' || *l == '|') l++;
        char* end;
        double x = strtod(l, &end);
        if (end == l) { while (*l && *l != ' ' && *l != '|' && *l != '\n') l++; v[n++] = NAN; continue; }
        v[n++] = x;
        l = end;
    }
    return n;
}

static char model_path[256];

static void test_theory(void) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/roofline -m %s --bw 10 --flops 100 --ctx 32", build_dir(), model_path);
    char* out = run(cmd);
    LWT_REQUIRE(out && strstr(out, "ridge point 10.00 FLOP/byte"), "roofline ran: %s", out ? out : "(nothing)");
    double v[16];
    // | decode b=1 | rows | weight MB | KV MB | GFLOP | FLOP/byte | bound | roof ms | roof tokens/s |
    int n = line_numbers(out, "decode b=1", v, 16);
    LWT_REQUIRE(n >= 8, "decode b=1 line: %s", out);
    double weights = (2.0 * 30720 * 4 + 64 * 4 + 512.0 * 64 * 4) / 1e6;
    LWT_CHECK(v[0] == 1, "one row (%g)", v[0]);
    LWT_CHECK(fabs(v[1] - weights) < 0.06, "weight MB %g, by hand %.3f", v[1], weights);
    // KV: 32 cached positions read + 1 written, 2 layers, K and V of 32 floats each
    double kv = (33.0 * 2 * 2 * 32 * 4) / 1e6;
    LWT_CHECK(fabs(v[2] - kv) < 0.06, "KV MB %g, by hand %.3f", v[2], kv);
    double flops = 2.0 * (2 * 30720 + 512 * 64) + 2 * 4.0 * 4 * 16 * 33;   // + attention: 2 layers x 4 x heads x hd x visible
    LWT_CHECK(fabs(v[3] * 1e9 - flops) / flops < 0.01, "GFLOP %g, by hand %.6f", v[3], flops / 1e9);
    LWT_CHECK(strstr(strstr(out, "| decode b=1 "), "memory") != NULL, "decode at batch 1 is memory-bound");
    LWT_CHECK(strstr(strstr(out, "| diffusion n=256 "), "compute") != NULL, "a 256-position diffusion step is compute-bound");
    free(out);
}

static void test_svg(void) {
    // a measured sweep as build/bench writes it (the fields roofline reads)
    const char* sweep = "/tmp/lw_test_roofline_sweep.json";
    FILE* f = fopen(sweep, "w");
    LWT_REQUIRE(f != NULL, "temporary file");
    fprintf(f, "{\"model\":{\"type\":\"F32\"},\"machine\":{\"read_gbs\":10,\"peak_gflops\":100},\"sweep\":{\"points\":["
               "{\"batch\":1,\"intensity\":0.5,\"gflops\":4.0},{\"batch\":8,\"intensity\":4.0,\"gflops\":30.0}]}}\n");
    fclose(f);
    const char* svg = "/tmp/lw_test_roofline.svg";
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/roofline -m %s --machine %s --svg %s %s >/dev/null", build_dir(), model_path, sweep, svg, sweep);
    LWT_REQUIRE(system(cmd) == 0, "%s", cmd);
    size_t size = 0;
    char* s = lwt_read_file(svg, &size);
    LWT_REQUIRE(s && size > 100, "the SVG was written");
    LWT_CHECK(strncmp(s, "<svg ", 5) == 0, "starts with <svg");
    LWT_CHECK(strstr(s, "</svg>") && strstr(s, "</svg>")[7] == 0, "ends with </svg>");
    int circles = 0, opened = 0, closed = 0;
    for (const char* p = s; (p = strstr(p, "<circle")); p++) circles++;
    for (const char* p = s; (p = strchr(p, '<')); p++) opened++;
    for (const char* p = s; (p = strchr(p, '>')); p++) closed++;
    LWT_CHECK(circles == 16 + 2, "%d points: 16 theory cases and 2 measured", circles);
    LWT_CHECK(opened == closed, "tags balanced (%d '<', %d '>')", opened, closed);
    LWT_CHECK(strstr(s, "F32 b=8") != NULL, "the measured points are labelled");
    free(s);
    remove(sweep);
    remove(svg);
}

static void test_refusals(void) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/roofline -m %s 2>/dev/null", build_dir(), model_path);
    LWT_CHECK(system(cmd) != 0, "no machine figures: refused");
    snprintf(cmd, sizeof cmd, "%s/roofline -m /nonexistent.gguf --bw 1 --flops 1 2>/dev/null", build_dir());
    LWT_CHECK(system(cmd) != 0, "a missing model: refused");
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    snprintf(model_path, sizeof model_path, "/tmp/lw_test_roofline.gguf");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/mkmodel -o %s --dim 64 --layers 2 --heads 4 --kv-heads 2 --ff 96 --vocab 512 --tied >/dev/null 2>&1",
             build_dir(), model_path);
    if (system(cmd) != 0) { printf("(no build/mkmodel)\nRESULT passed=0 failed=0 skipped=3\n"); return 0; }
    LWT_RUN(test_theory);
    LWT_RUN(test_svg);
    LWT_RUN(test_refusals);
    remove(model_path);
    return lwt_finish();
}
