/* llmwall - the command-line front end of llmwall.h

       build/llmwall -m MODEL [-p TEXT | --prompt-ids 1,2,3] [-n N] [-t THREADS] [--temp T] [--top-k K]
                     [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S] [--kv-type f32|f16]
                     [--backend auto|cpu|cuda] [--mode ar] [-c N] [--json] [-v]

   Without --json it streams the prompt and the generated text to stdout and a line of statistics to
   stderr. With --json stdout carries exactly one line: a JSON object with prompt_ids, ids (generated,
   ending before the end-of-generation token), text, and stats. Errors: one line on stderr, exit 1.
*/
#define LLMWALL_IMPLEMENTATION
#include "../llmwall.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <math.h>

typedef struct cli_opts {
    const char*     model;
    const char*     prompt;
    int32_t*        prompt_ids;
    int             n_prompt_ids;
    int             n_predict;
    int             threads;
    int             n_ctx;
    lw_sampler_desc sampler;
    lw_type         kv_type;
    lw_backend_kind backend;
    int             json;
    int             verbose;
} cli_opts;

static void usage(FILE* f) {
    fprintf(f,
        "usage: llmwall -m MODEL [options]\n"
        "  -m, --model FILE        GGUF model\n"
        "  -p, --prompt TEXT       prompt text (BOS added as the model says)\n"
        "  --prompt-ids 1,2,3      prompt as token ids (used as given, no BOS)\n"
        "  -n, --n-predict N       tokens to generate after the prompt (default 128; 0: until the end)\n"
        "  -t, --threads N         CPU threads (default: all online cores)\n"
        "  -c, --ctx-size N        context length (default: the model's)\n"
        "  --temp T                temperature (default 0.8; 0 is greedy)\n"
        "  --top-k K               keep the K most likely tokens (default 40; 0: off)\n"
        "  --top-p P               nucleus sampling (default 0.95; 1: off)\n"
        "  --min-p P               drop tokens below P x the best probability (default 0.05; 0: off)\n"
        "  --repeat-penalty R      penalise recent tokens (default 1: off)\n"
        "  --repeat-last-n N       how far back the penalty looks (default 64)\n"
        "  --seed S                sampling seed (default 0)\n"
        "  --kv-type f32|f16       KV cache entry type (default f32)\n"
        "  --backend auto|cpu|cuda (default auto)\n"
        "  --mode ar               decoding mode (ar: autoregressive)\n"
        "  --json                  print one JSON object with ids, text and stats\n"
        "  -v, --verbose           log to stderr\n"
        "  -h, --help, --version\n");
}

static void die(const char* fmt, const char* a, const char* b) {
    fprintf(stderr, "error: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    exit(1);
}

static long parse_int(const char* flag, const char* v, long lo, long hi) {
    char* end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        char range[96];
        snprintf(range, sizeof range, "an integer in [%ld, %ld]", lo, hi);
        fprintf(stderr, "error: %s '%s': expected %s\n", flag, v, range);
        exit(1);
    }
    return x;
}

static float parse_float(const char* flag, const char* v, float lo, float hi) {
    char* end;
    errno = 0;
    float x = strtof(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "error: %s '%s': expected a number in [%g, %g]\n", flag, v, (double)lo, (double)hi);
        exit(1);
    }
    return x;
}

static void parse_ids(cli_opts* o, const char* s) {
    int cap = 16;
    o->prompt_ids = (int32_t*)malloc((size_t)cap * sizeof(int32_t));
    o->n_prompt_ids = 0;
    const char* p = s;
    for (;;) {
        char* end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 0 || x > INT32_MAX) die("--prompt-ids '%s': expected comma-separated token ids%s", s, "");
        if (o->n_prompt_ids == cap) {
            cap *= 2;
            o->prompt_ids = (int32_t*)realloc(o->prompt_ids, (size_t)cap * sizeof(int32_t));
        }
        o->prompt_ids[o->n_prompt_ids++] = (int32_t)x;
        if (*end == 0) break;
        if (*end != ',') die("--prompt-ids '%s': expected comma-separated token ids%s", s, "");
        p = end + 1;
    }
}

static void parse_args(cli_opts* o, int argc, char** argv) {
    memset(o, 0, sizeof *o);
    o->n_predict = 128;
    o->sampler.temperature = 0.8f;
    o->sampler.top_k = 40;
    o->sampler.top_p = 0.95f;
    o->sampler.min_p = 0.05f;
    o->sampler.repeat_penalty = 1.0f;
    o->sampler.repeat_last_n = 64;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); exit(0); }
        if (!strcmp(a, "--version")) { printf("llmwall %s\n", lw_version_string()); exit(0); }
        if (!strcmp(a, "--json")) { o->json = 1; continue; }
        if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) { o->verbose = 1; continue; }
        if (a[0] != '-') die("unexpected argument '%s'%s (see --help)", a, "");
        if (i + 1 >= argc) die("%s needs a value%s", a, "");
        const char* v = argv[++i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "--prompt-ids")) parse_ids(o, v);
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) o->n_predict = (int)parse_int(a, v, 0, 1 << 24);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) o->threads = (int)parse_int(a, v, 1, 4096);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) o->n_ctx = (int)parse_int(a, v, 1, 1 << 24);
        else if (!strcmp(a, "--temp")) o->sampler.temperature = parse_float(a, v, 0.0f, 1e6f);
        else if (!strcmp(a, "--top-k")) o->sampler.top_k = (int)parse_int(a, v, 0, INT32_MAX);
        else if (!strcmp(a, "--top-p")) o->sampler.top_p = parse_float(a, v, 0.0f, 1.0f);
        else if (!strcmp(a, "--min-p")) o->sampler.min_p = parse_float(a, v, 0.0f, 1.0f);
        else if (!strcmp(a, "--repeat-penalty")) o->sampler.repeat_penalty = parse_float(a, v, 0.0f, 1e6f);
        else if (!strcmp(a, "--repeat-last-n")) o->sampler.repeat_last_n = (int)parse_int(a, v, 1, 1 << 24);
        else if (!strcmp(a, "--seed")) {
            char* end;
            errno = 0;
            o->sampler.seed = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') die("--seed '%s': expected a non-negative integer%s", v, "");
        } else if (!strcmp(a, "--kv-type")) {
            if (!strcmp(v, "f32")) o->kv_type = LW_TYPE_F32;
            else if (!strcmp(v, "f16")) o->kv_type = LW_TYPE_F16;
            else die("--kv-type '%s': expected f32 or f16%s", v, "");
        } else if (!strcmp(a, "--backend")) {
            if (!strcmp(v, "auto")) o->backend = LW_BACKEND_AUTO;
            else if (!strcmp(v, "cpu")) o->backend = LW_BACKEND_CPU;
            else if (!strcmp(v, "cuda")) o->backend = LW_BACKEND_CUDA;
            else die("--backend '%s': expected auto, cpu or cuda%s", v, "");
        } else if (!strcmp(a, "--mode")) {
            if (strcmp(v, "ar") != 0) die("--mode '%s': this build supports ar%s", v, "");
        } else die("unknown option '%s'%s (see --help)", a, "");
    }
    if (!o->model) die("no model given (-m FILE)%s%s", "", "");
    if (o->prompt && o->prompt_ids) die("give -p or --prompt-ids, not both%s%s", "", "");
    if (!o->prompt && !o->prompt_ids) o->prompt = "";
}

// ---- JSON output

static void json_string(FILE* f, const char* s, size_t n) {
    // valid UTF-8 passes through; invalid bytes (a token boundary inside a character) become U+FFFD
    fputc('"', f);
    const unsigned char* p = (const unsigned char*)s;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + (size_t)len <= n;
        for (int k = 1; ok && k < len; k++) ok = (p[i + k] & 0xC0) == 0x80;
        if (ok && len > 1) {   // reject overlong forms, surrogates and code points past U+10FFFF
            unsigned cp = len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
            for (int k = 1; k < len; k++) cp = (cp << 6) | (p[i + k] & 0x3F);
            ok = (len == 2 && cp >= 0x80) || (len == 3 && cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) ||
                 (len == 4 && cp >= 0x10000 && cp <= 0x10FFFF);
        }
        if (!ok) { fputs("\\ufffd", f); i++; continue; }
        if (len == 1) {
            if (c == '"') fputs("\\\"", f);
            else if (c == '\\') fputs("\\\\", f);
            else if (c == '\n') fputs("\\n", f);
            else if (c == '\r') fputs("\\r", f);
            else if (c == '\t') fputs("\\t", f);
            else if (c < 0x20 || c == 0x7f) fprintf(f, "\\u%04x", c);
            else fputc((int)c, f);
        } else {
            fwrite(p + i, 1, (size_t)len, f);
        }
        i += (size_t)len;
    }
    fputc('"', f);
}

static void json_ids(FILE* f, const int32_t* ids, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, i ? ",%d" : "%d", ids[i]);
    fputc(']', f);
}

static const char* finish_name(lw_finish_reason r) {
    switch (r) {
    case LW_FINISH_LENGTH: return "length";
    case LW_FINISH_STOP: return "stop";
    case LW_FINISH_CANCELLED: return "cancelled";
    case LW_FINISH_ERROR: return "error";
    default: return "none";
    }
}

static void json_number(FILE* f, const char* key, double v, int last) {
    fprintf(f, "\"%s\":", key);
    if (isfinite(v)) fprintf(f, "%.4f", v); else fputs("null", f);
    if (!last) fputc(',', f);
}

// ---- streaming: the prompt is echoed with the first generated piece, so a refused request prints
// nothing on stdout

typedef struct stream_state { const char* prompt; int started; } stream_state;

static void stream_start(stream_state* st) {
    if (st->started) return;
    st->started = 1;
    if (st->prompt) fputs(st->prompt, stdout);
}

static bool stream_piece(int32_t token, const char* piece, int len, void* user) {
    (void)token;
    stream_start((stream_state*)user);
    fwrite(piece, 1, (size_t)len, stdout);
    fflush(stdout);
    return true;
}

static void log_stderr(lw_log_level level, const char* msg, void* user) {
    (void)user;
    static const char* names[] = { "", "error", "warn", "info", "debug" };
    fprintf(stderr, "[%s] %s\n", names[level >= 1 && level <= 4 ? level : 0], msg);
}

int main(int argc, char** argv) {
    cli_opts o;
    parse_args(&o, argc, argv);
    lw_logger logger = { NULL, NULL };
    if (o.verbose) logger.func = log_stderr;

    lw_model* model = NULL;
    lw_backend* backend = NULL;
    lw_ctx* ctx = NULL;
    lw_model_desc md;
    memset(&md, 0, sizeof md);
    md.logger = logger;
    if (lw_model_load(&model, o.model, &md) != LW_OK) {
        fprintf(stderr, "error: %s\n", lw_last_error());
        free(o.prompt_ids);
        return 1;
    }
    lw_backend_desc bd;
    memset(&bd, 0, sizeof bd);
    bd.kind = o.backend;
    bd.n_threads = o.threads;
    bd.logger = logger;
    lw_ctx_desc cd;
    memset(&cd, 0, sizeof cd);
    cd.n_ctx = o.n_ctx;
    cd.kv_type = o.kv_type;
    cd.max_seqs = 1;
    cd.logger = logger;
    if (lw_backend_create(&backend, &bd) != LW_OK || lw_ctx_create(&ctx, model, backend, &cd) != LW_OK) {
        fprintf(stderr, "error: %s\n", lw_last_error());
        lw_backend_free(backend);
        lw_model_free(model);
        free(o.prompt_ids);
        return 1;
    }
    lw_generate_desc gd;
    memset(&gd, 0, sizeof gd);
    gd.prompt = o.prompt_ids ? NULL : o.prompt;
    gd.prompt_ids = o.prompt_ids;
    gd.n_prompt_ids = o.n_prompt_ids;
    gd.max_tokens = o.n_predict;
    gd.sampler = o.sampler;
    stream_state st = { o.prompt_ids ? NULL : o.prompt, 0 };
    if (!o.json) {
        gd.on_token = stream_piece;
        gd.user = &st;
    }
    lw_generate_result res;
    lw_result r = lw_generate(ctx, &gd, &res);
    int status = 0;
    if (r != LW_OK) {
        if (st.started) printf("\n");
        fprintf(stderr, "error: %s\n", lw_last_error());
        status = 1;
    } else if (o.json) {
        FILE* f = stdout;
        fputs("{\"prompt_ids\":", f);
        json_ids(f, res.prompt_ids, res.n_prompt);
        fputs(",\"ids\":", f);
        json_ids(f, res.ids, res.n_ids);
        fputs(",\"text\":", f);
        json_string(f, res.text, strlen(res.text));
        fprintf(f, ",\"finish\":\"%s\",\"stats\":{\"prompt_tokens\":%d,\"generated_tokens\":%d,", finish_name(res.finish),
                res.n_prompt, res.n_ids);
        json_number(f, "ttft_ms", res.ttft_ms, 0);
        json_number(f, "tpot_ms", res.tpot_ms, 0);
        json_number(f, "tokens_per_s", res.tokens_per_s, 0);
        fprintf(f, "\"forwards\":%d,\"threads\":%d,\"backend\":\"%s\"}}\n", res.forwards, lw_backend_threads(backend),
                lw_backend_name(backend));
    } else {
        stream_start(&st);   // nothing generated: still show the prompt
        printf("\n");
        fprintf(stderr, "[%d prompt + %d generated tokens (%s), ttft %.1f ms, %.2f ms/token, %.1f tokens/s, %s x%d]\n",
                res.n_prompt, res.n_ids, finish_name(res.finish), res.ttft_ms, res.tpot_ms, res.tokens_per_s,
                lw_backend_name(backend), lw_backend_threads(backend));
    }
    lw_generate_result_free(&res);
    free(o.prompt_ids);
    lw_ctx_free(ctx);
    lw_backend_free(backend);
    lw_model_free(model);
    return status;
}
