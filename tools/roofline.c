/* roofline - where each kind of forward pass of a model sits on a machine's roofline

       build/roofline -m MODEL (--bw GB/s --flops GFLOP/s | --machine BENCH.json) [--ctx N] [--kv-type f32|f16]
                      [--svg OUT.svg [BENCH.json ...]]

   The theory: for prefill of n tokens, decode at batch b, speculative verification of k tokens and a
   diffusion step over n positions it builds the forward pass's shape (rows, sequences, cached
   positions) and counts its bytes and FLOPs with the very function the engine uses for its per-step
   statistics (lw__forward_stats), so theory and measurement cannot drift apart. Per case it prints bytes,
   FLOPs, arithmetic intensity (FLOP/byte), the bound (memory below the ridge point peak/bandwidth,
   compute above) and the time and tokens/s the roofline allows: time = max(bytes / bandwidth,
   FLOPs / peak).

   The machine: --bw and --flops as given, or the read bandwidth and FMA peak that build/bench measured
   and wrote into its JSON (--machine). --svg draws the roofline (log-log: attainable GFLOP/s against
   FLOP/byte, the memory roof, the compute roof, the ridge point), the theory's cases, and the measured
   points of the bench JSON files given after it (build/bench --mode sweep: one point per batch size).
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct roof_case {
    char   name[48];
    int    tokens;            // tokens the pass produces or refines (for tokens/s)
    lw_forward_stats st;
} roof_case;

// One forward pass's statistics: n_seqs sequences of rows_per_seq rows each, every one with `cached`
// positions in its cache; logits for `logit_rows` rows.
static lw_forward_stats shape_stats(const lw__weights* w, const lw__kv_layout* kv, int n_seqs, int rows_per_seq,
                                    int cached, int logit_rows, lw_mask_kind mask) {
    int n = n_seqs * rows_per_seq;
    lw_row* rows = (lw_row*)calloc((size_t)n, sizeof(lw_row));
    lw__fwd_seq* seqs = (lw__fwd_seq*)calloc((size_t)n_seqs, sizeof(lw__fwd_seq));
    for (int r = 0; r < n; r++) rows[r].commits = mask != LW_MASK_FULL;   // a diffusion canvas is not cached
    for (int s = 0; s < n_seqs; s++) { seqs[s].n_rows = rows_per_seq; seqs[s].kv_len = cached; seqs[s].mask = mask; }
    lw__fwd f;
    memset(&f, 0, sizeof f);
    f.w = w;
    f.kv = kv;
    f.n_rows = n;
    f.rows = rows;
    f.n_seqs = n_seqs;
    f.seqs = seqs;
    lw_forward_stats st;
    lw__forward_stats(&f, logit_rows, &st);
    free(rows);
    free(seqs);
    return st;
}

static double total_bytes(const lw_forward_stats* st) { return st->weight_bytes + st->kv_bytes_read + st->kv_bytes_written; }

// the first number after "key": at or after p (NULL when absent)
static const char* json_num(const char* p, const char* key, double* out) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char* q = strstr(p, pat);
    if (!q) return NULL;
    *out = strtod(q + strlen(pat), NULL);
    return q + strlen(pat);
}

static char* read_text(const char* path) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char* s = (char*)malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) { free(s); s = NULL; }
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

// ---- the SVG: x = log10(FLOP/byte) over [xmin, xmax], y = log10(GFLOP/s) over [ymin, ymax]
enum { W = 900, H = 600, ML = 80, MR = 30, MT = 40, MB = 60 };
static double xmin = -1, xmax = 3, ymin = 0, ymax = 4;
static double sx(double ai) { return ML + (log10(ai) - xmin) / (xmax - xmin) * (W - ML - MR); }
static double sy(double g) { return H - MB - (log10(g) - ymin) / (ymax - ymin) * (H - MT - MB); }

static void svg_point(FILE* f, double ai, double g, const char* color, const char* label) {
    if (ai <= 0 || g <= 0) return;
    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n", sx(ai), sy(g), color);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"%s\">%s</text>\n", sx(ai) + 6, sy(g) - 4, color, label);
}

static int write_svg(const char* path, const char* model_name, double bw, double peak, const roof_case* cases, int n_cases,
                     char** files, int n_files) {
    FILE* f = fopen(path, "w");
    if (!f) { fprintf(stderr, "error: cannot write %s\n", path); return 1; }
    ymax = ceil(log10(peak * 2));
    ymin = ymax - 4;
    double ridge = peak / bw;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\">\n", W, H);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
    fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"15\">Roofline: %s on %.1f GB/s, %.0f GFLOP/s (ridge %.2f FLOP/byte)</text>\n", ML,
            model_name, bw, peak, ridge);
    for (int d = (int)xmin; d <= (int)xmax; d++) {   // grid and axis labels, decades
        double v = pow(10.0, d);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>\n", sx(v), MT, sx(v), H - MB);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">%g</text>\n", sx(v), H - MB + 18, v);
    }
    for (int d = (int)ymin; d <= (int)ymax; d++) {
        double v = pow(10.0, d);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", ML, sy(v), W - MR, sy(v));
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"12\" text-anchor=\"end\">%g</text>\n", ML - 6, sy(v) + 4, v);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"13\" text-anchor=\"middle\">arithmetic intensity (FLOP/byte)</text>\n",
            (W + ML - MR) / 2, H - 15);
    fprintf(f, "<text x=\"18\" y=\"%d\" font-size=\"13\" transform=\"rotate(-90 18 %d)\" text-anchor=\"middle\">GFLOP/s</text>\n",
            (H + MT - MB) / 2, (H + MT - MB) / 2);
    // the roofs: bandwidth x intensity up to the ridge, then the peak
    double a0 = pow(10.0, xmin), a1 = pow(10.0, xmax);
    fprintf(f, "<polyline fill=\"none\" stroke=\"black\" stroke-width=\"2\" points=\"%.1f,%.1f %.1f,%.1f %.1f,%.1f\"/>\n", sx(a0),
            sy(LW__MAX(bw * a0, pow(10.0, ymin))), sx(ridge), sy(peak), sx(a1), sy(peak));
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">ridge %.2f</text>\n", sx(ridge) + 4, sy(peak) + 14, ridge);
    for (int i = 0; i < n_cases; i++) {   // the theory: where each case would sit at its bound
        double ai = cases[i].st.flops / total_bytes(&cases[i].st);
        svg_point(f, ai, LW__MIN(peak, bw * ai), "#1f77b4", cases[i].name);
    }
    static const char* colors[] = { "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b" };
    for (int k = 0; k < n_files; k++) {   // measured points
        char* j = read_text(files[k]);
        if (!j) { fprintf(stderr, "error: cannot read %s\n", files[k]); fclose(f); return 1; }
        const char* type = strstr(j, "\"type\":\"");
        char tname[16] = "";
        if (type) sscanf(type + 8, "%15[^\"]", tname);
        int n_points = 0;
        for (const char* p = strstr(j, "\"points\":"); p;) {
            double batch, ai, g;
            const char* q = json_num(p, "batch", &batch);
            if (!q || !json_num(q, "intensity", &ai) || !json_num(q, "gflops", &g)) break;
            char label[48];
            snprintf(label, sizeof label, "%s b=%d", tname, (int)batch);
            svg_point(f, ai, g, colors[k % 5], label);
            n_points++;
            p = q;
        }
        if (!n_points) fprintf(stderr, "note: %s has no sweep points\n", files[k]);
        free(j);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\" fill=\"#1f77b4\">blue: theory at its bound; other colours: measured (bench sweep)</text>\n",
            ML + 10, MT + 16);
    fprintf(f, "</svg>\n");
    fclose(f);
    return 0;
}

int main(int argc, char** argv) {
    const char *model_path = NULL, *machine = NULL, *svg = NULL;
    double bw = 0, peak = 0;
    int ctx = 256, kv_f16 = 0, first_file = argc;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "-m") && more) model_path = argv[++i];
        else if (!strcmp(a, "--bw") && more) bw = atof(argv[++i]);
        else if (!strcmp(a, "--flops") && more) peak = atof(argv[++i]);
        else if (!strcmp(a, "--machine") && more) machine = argv[++i];
        else if (!strcmp(a, "--ctx") && more) ctx = atoi(argv[++i]);
        else if (!strcmp(a, "--kv-type") && more) kv_f16 = !strcmp(argv[++i], "f16");
        else if (!strcmp(a, "--svg") && more) { svg = argv[++i]; first_file = i + 1; break; }
        else {
            fprintf(stderr, "usage: roofline -m MODEL (--bw GB/s --flops GFLOP/s | --machine BENCH.json) [--ctx N] [--kv-type f32|f16]\n"
                            "                [--svg OUT.svg [BENCH.json ...]]   (the manual: the top of tools/roofline.c)\n");
            return 1;
        }
    }
    if (machine) {
        char* j = read_text(machine);
        if (!j || !json_num(j, "read_gbs", &bw) || !json_num(j, "peak_gflops", &peak)) {
            fprintf(stderr, "error: %s: no machine.read_gbs / peak_gflops (a build/bench --json file)\n", machine);
            free(j);
            return 1;
        }
        free(j);
    }
    if (!model_path || bw <= 0 || peak <= 0 || ctx < 1) {
        fprintf(stderr, "error: a model (-m), a bandwidth and a peak (--bw and --flops, or --machine) and --ctx >= 1 are needed\n");
        return 1;
    }
    lw_model* model;
    if (lw_model_load(&model, model_path, NULL) != LW_OK) { fprintf(stderr, "error: %s\n", lw_last_error()); return 1; }
    lw__kv_layout kv;
    memset(&kv, 0, sizeof kv);
    kv.kv_type = kv_f16 ? LW_TYPE_F16 : LW_TYPE_F32;
    kv.kv_dim = model->w.cfg.n_head_kv * model->w.cfg.head_dim;

    roof_case cases[32];
    int n = 0;
    static const int prefill[] = { 16, 128, 512 }, batches[] = { 1, 2, 4, 8, 16, 32, 64 }, verify[] = { 2, 4, 8 },
                     canvas[] = { 32, 128, 256 };
    for (int i = 0; i < 3; i++) {   // one prompt of p tokens, logits for the last
        snprintf(cases[n].name, sizeof cases[n].name, "prefill %d", prefill[i]);
        cases[n].tokens = prefill[i];
        cases[n++].st = shape_stats(&model->w, &kv, 1, prefill[i], 0, 1, LW_MASK_CAUSAL);
    }
    for (int i = 0; i < 7; i++) {   // b sequences, one new token each, ctx positions cached
        snprintf(cases[n].name, sizeof cases[n].name, "decode b=%d", batches[i]);
        cases[n].tokens = batches[i];
        cases[n++].st = shape_stats(&model->w, &kv, batches[i], 1, ctx, batches[i], LW_MASK_CAUSAL);
    }
    for (int i = 0; i < 3; i++) {   // one sequence verifying k drafted tokens plus the bonus: k + 1 rows
        snprintf(cases[n].name, sizeof cases[n].name, "verify k=%d", verify[i]);
        cases[n].tokens = verify[i] + 1;   // at best
        cases[n++].st = shape_stats(&model->w, &kv, 1, verify[i] + 1, ctx, verify[i] + 1, LW_MASK_CAUSAL);
    }
    for (int i = 0; i < 3; i++) {   // a masked-diffusion step: the whole canvas, no cache (tokens: at best all of it)
        snprintf(cases[n].name, sizeof cases[n].name, "diffusion n=%d", canvas[i]);
        cases[n].tokens = canvas[i];
        cases[n++].st = shape_stats(&model->w, &kv, 1, canvas[i], 0, canvas[i], LW_MASK_FULL);
    }

    double ridge = peak / bw;
    lw_model_info info;
    lw_model_get_info(model, &info);
    printf("model %s: %.1f MB of weights; machine %.1f GB/s, %.1f GFLOP/s: ridge point %.2f FLOP/byte; %d cached positions, KV %s\n\n",
           model_path, (double)info.weight_bytes / 1e6, bw, peak, ridge, ctx, kv_f16 ? "F16" : "F32");
    printf("| case            | rows |  weight MB |    KV MB |     GFLOP | FLOP/byte | bound   | roof ms | roof tokens/s |\n");
    printf("|-----------------|-----:|-----------:|---------:|----------:|----------:|---------|--------:|--------------:|\n");
    for (int i = 0; i < n; i++) {
        const lw_forward_stats* st = &cases[i].st;
        double bytes = total_bytes(st), ai = st->flops / bytes;
        double t = LW__MAX(bytes / (bw * 1e9), st->flops / (peak * 1e9));
        printf("| %-15s | %4d | %10.1f | %8.1f | %9.4g | %9.2f | %-7s | %7.3f | %13.0f |\n", cases[i].name, st->rows,
               st->weight_bytes / 1e6, (st->kv_bytes_read + st->kv_bytes_written) / 1e6, st->flops / 1e9, ai,
               ai < ridge ? "memory" : "compute", t * 1e3, cases[i].tokens / t);
    }
    printf("\n(verify k: at most k + 1 tokens per pass, all drafts accepted; diffusion n: at most n tokens per step.)\n");
    int status = 0;
    if (svg) {
        status = write_svg(svg, model_path, bw, peak, cases, n, argv + first_file, argc - first_file);
        if (!status) printf("svg        %s\n", svg);
    }
    lw_model_free(model);
    return status;
}
