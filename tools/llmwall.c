/* llmwall - the command-line front end of llmwall.h

       build/llmwall -m MODEL [-p TEXT | --prompt-ids 1,2,3] [-n N] [-t THREADS] [--temp T] [--top-k K]
                     [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S] [--kv-type f32|f16]
                     [--backend auto|cpu|cuda] [--mode ar] [-c N] [--parallel N] [--prompt-file F] [--json] [-v]

   Every request runs through an lw_engine, so --parallel and --prompt-file requests share forward passes.
   Without --json one request streams the prompt and the generated text to stdout (several print each
   text when it ends) and a line of statistics goes to stderr. With --json stdout carries exactly one
   line per request, in the order they finish: a JSON object with prompt_ids, ids (generated, ending
   before the end-of-generation token), text, finish, and stats (the request's, and the engine's
   summary). Errors: one line on stderr, exit 1.
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
    int             parallel;        // copies of each request
    const char*     prompt_file;     // one prompt per line
    lw_decode_mode  mode;
    lw_spec_params  spec;
    lw_diffusion_params diffusion;
    int             skip[256];       // --skip-layers
    const char*     draft;           // --draft MODEL
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
        "  --mode M                decoding mode: ar (default), spec, selfspec, lookup, lookahead\n"
        "  --draft FILE            spec: the draft model (same vocabulary)\n"
        "  --draft-max N           spec, selfspec, lookup: tokens drafted per round (4; lookup 10)\n"
        "  --adaptive              spec, selfspec: adapt the draft length to the acceptance rate\n"
        "  --skip-layers 3,5,7     selfspec: layers the draft skips\n"
        "  --ngram-max N           lookup: longest n-gram matched (3)\n"
        "  --window W --ngram N --guesses G   lookahead (7, 5, 7)\n"
        "  --gen-length G          diffusion: canvas positions after the prompt (default: -n)\n"
        "  --steps S               diffusion: steps over all blocks (default: gen length)\n"
        "  --block-length B        diffusion: positions per block (default: gen length)\n"
        "  --remasking R           diffusion: low_confidence (default) or random\n"
        "  --threshold T           diffusion, block: unmask every position with confidence >= T (steps ignored)\n"
        "  --tokens-per-step K     block: unmask K positions per step instead\n"
        "  --cfg S                 diffusion: classifier-free guidance scale\n"
        "  --parallel N            run N copies of the request at once, batched (default 1)\n"
        "  --prompt-file F         one prompt per line, all submitted at once and run batched\n"
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
    o->parallel = 1;
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
        if (!strcmp(a, "--adaptive")) { o->spec.adaptive = true; continue; }
        if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) { o->verbose = 1; continue; }
        if (a[0] != '-') die("unexpected argument '%s'%s (see --help)", a, "");
        if (i + 1 >= argc) die("%s needs a value%s", a, "");
        const char* v = argv[++i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "--prompt-ids")) parse_ids(o, v);
        else if (!strcmp(a, "--prompt-file")) o->prompt_file = v;
        else if (!strcmp(a, "--parallel")) o->parallel = (int)parse_int(a, v, 1, 4096);
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
            static const char* const modes[] = { "ar", "spec", "selfspec", "lookup", "lookahead", "diffusion", "block" };
            int m = -1;
            for (int k = 0; k < 7; k++) if (!strcmp(v, modes[k])) m = k;
            if (m < 0) die("--mode '%s': expected ar, spec, selfspec, lookup, lookahead, diffusion or block%s", v, "");
            o->mode = (lw_decode_mode)m;
        } else if (!strcmp(a, "--draft")) o->draft = v;
        else if (!strcmp(a, "--draft-max")) o->spec.draft_max = (int)parse_int(a, v, 1, 64);
        else if (!strcmp(a, "--ngram-max")) o->spec.ngram_max = (int)parse_int(a, v, 1, 64);
        else if (!strcmp(a, "--window")) o->spec.window = (int)parse_int(a, v, 1, 64);
        else if (!strcmp(a, "--ngram")) o->spec.ngram = (int)parse_int(a, v, 2, 16);
        else if (!strcmp(a, "--guesses")) o->spec.guesses = (int)parse_int(a, v, 0, 64);
        else if (!strcmp(a, "--gen-length")) o->diffusion.gen_length = (int)parse_int(a, v, 1, 1 << 20);
        else if (!strcmp(a, "--steps")) o->diffusion.steps = (int)parse_int(a, v, 1, 1 << 20);
        else if (!strcmp(a, "--block-length")) o->diffusion.block_length = (int)parse_int(a, v, 1, 1 << 20);
        else if (!strcmp(a, "--threshold")) o->diffusion.threshold = parse_float(a, v, 1e-6f, 1.0f);
        else if (!strcmp(a, "--tokens-per-step")) o->diffusion.tokens_per_step = (int)parse_int(a, v, 1, 1 << 20);
        else if (!strcmp(a, "--cfg")) o->diffusion.cfg_scale = parse_float(a, v, 0.0f, 1e3f);
        else if (!strcmp(a, "--remasking")) {
            if (!strcmp(v, "low_confidence")) o->diffusion.remasking = LW_REMASK_LOW_CONFIDENCE;
            else if (!strcmp(v, "random")) o->diffusion.remasking = LW_REMASK_RANDOM;
            else die("--remasking '%s': expected low_confidence or random%s", v, "");
        }
        else if (!strcmp(a, "--skip-layers")) {
            const char* q = v;
            o->spec.n_skip_layers = 0;
            for (;;) {
                char* end;
                errno = 0;
                long x = strtol(q, &end, 10);
                if (errno || end == q || x < 0 || x > 4095 || o->spec.n_skip_layers == 256)
                    die("--skip-layers '%s': expected comma-separated layer numbers%s", v, "");
                o->skip[o->spec.n_skip_layers++] = (int)x;
                if (*end == 0) break;
                if (*end != ',') die("--skip-layers '%s': expected comma-separated layer numbers%s", v, "");
                q = end + 1;
            }
            o->spec.skip_layers = o->skip;
        } else die("unknown option '%s'%s (see --help)", a, "");
    }
    if (!o->model) die("no model given (-m FILE)%s%s", "", "");
    if (o->mode == LW_MODE_SPEC && !o->draft) die("--mode spec needs --draft MODEL%s%s", "", "");
    if (o->draft && o->mode != LW_MODE_SPEC) die("--draft is for --mode spec%s%s", "", "");
    if (o->mode == LW_MODE_SELFSPEC && !o->spec.n_skip_layers) die("--mode selfspec needs --skip-layers%s%s", "", "");
    if ((o->prompt != NULL) + (o->prompt_ids != NULL) + (o->prompt_file != NULL) > 1)
        die("give one of -p, --prompt-ids and --prompt-file%s%s", "", "");
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

// ---- requests through the engine

typedef struct cli_req_done { lw_request h; int index; } cli_req_done;

typedef struct cli_run {
    const cli_opts*  o;
    lw_engine*       engine;
    lw_backend*      backend;
    int              n_requests;
    int              streaming;      // one request without --json: stream its text
    stream_state     stream;
    int              failed;
    cli_req_done*    done;           // [n_requests] finished in the current step, reported after it
    int              n_done;
} cli_run;

typedef struct cli_req { cli_run* run; int index; } cli_req;

static void print_json(cli_run* run, lw_request h) {
    lw_request_info in;
    if (lw_request_get(run->engine, h, &in) != LW_OK) return;
    lw_engine_stats es;
    lw_engine_get_stats(run->engine, &es);
    FILE* f = stdout;
    fputs("{\"prompt_ids\":", f);
    json_ids(f, in.prompt_ids, in.n_prompt);
    fputs(",\"ids\":", f);
    json_ids(f, in.ids, in.n_ids);
    fputs(",\"text\":", f);
    json_string(f, in.text, in.text_len);
    fprintf(f, ",\"finish\":\"%s\",\"stats\":{\"prompt_tokens\":%d,\"generated_tokens\":%d,", finish_name(in.finish), in.n_prompt,
            in.n_ids);
    json_number(f, "ttft_ms", in.ttft_ms, 0);
    json_number(f, "tpot_ms", in.tpot_ms, 0);
    json_number(f, "tokens_per_s", in.tpot_ms > 0 ? 1000.0 / in.tpot_ms : 0.0, 0);
    json_number(f, "e2e_ms", in.e2e_ms, 0);
    json_number(f, "queue_ms", in.queue_ms, 0);
    fprintf(f, "\"preemptions\":%d,\"shared_tokens\":%d,\"forwards\":%d,\"drafted\":%d,\"accepted\":%d,", in.preemptions,
            in.shared_tokens, in.forwards, in.drafted, in.accepted);
    json_number(f, "acceptance_rate", in.drafted ? (double)in.accepted / in.drafted : 0.0, 0);
    json_number(f, "tokens_per_forward", in.forwards ? (double)in.n_ids / in.forwards : 0.0, 0);
    json_number(f, "arithmetic_intensity", es.arithmetic_intensity, 0);   // mean FLOP/byte of the passes so far
    fprintf(f, "\"threads\":%d,\"backend\":\"%s\",\"engine\":{", lw_backend_threads(run->backend), lw_backend_name(run->backend));
    fprintf(f, "\"requests\":%lld,\"finished\":%lld,\"steps\":%lld,\"preemptions\":%lld,\"generated_tokens\":%lld,",
            (long long)es.submitted, (long long)es.finished, (long long)es.steps, (long long)es.preemptions,
            (long long)es.generated_tokens);
    json_number(f, "mean_rows_per_step", es.mean_rows_per_step, 0);
    json_number(f, "throughput", es.throughput, 0);
    json_number(f, "goodput", es.goodput, 0);
    json_number(f, "kv_occupancy_peak", es.kv_pages ? (double)es.kv_pages_peak / (double)es.kv_pages : 0.0, 0);
    json_number(f, "kv_bytes_per_token", es.kv_bytes_per_token, 0);
    json_number(f, "gb_per_s", es.bytes_per_s / 1e9, 0);
    json_number(f, "gflop_per_s", es.flops_per_s / 1e9, 0);
    json_number(f, "arithmetic_intensity", es.arithmetic_intensity, 1);
    fputs("}}}\n", f);
    fflush(f);
}

static void on_event(const lw_event* ev) {
    cli_req* cr = (cli_req*)ev->user;
    cli_run* run = cr->run;
    if (ev->kind == LW_EVENT_TOKEN) {
        if (run->streaming) stream_piece(ev->token, ev->piece, ev->piece_len, &run->stream);
        return;
    }
    if (ev->finish == LW_FINISH_ERROR) {
        run->failed = 1;
        return;
    }
    run->done[run->n_done].h = ev->request;   // reported once the step is over, so the engine's figures include it
    run->done[run->n_done++].index = cr->index;
}

// Reports the requests that finished in the last step: a JSON line each, or (several requests) their texts.
static void report_finished(cli_run* run) {
    for (int i = 0; i < run->n_done; i++) {
        if (run->o->json) { print_json(run, run->done[i].h); continue; }
        if (run->streaming) continue;
        lw_request_info in;
        lw_request_get(run->engine, run->done[i].h, &in);
        printf("--- request %d (%s, %d tokens)\n%.*s\n", run->done[i].index, finish_name(in.finish), in.n_ids, (int)in.text_len,
               in.text);
    }
    run->n_done = 0;
}

// one prompt per line; empty lines are skipped
static char** read_prompts(const char* path, int* n) {
    FILE* f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "error: cannot open prompt file '%s'\n", path); exit(1); }
    char** out = NULL;
    int count = 0, cap = 0;
    char line[65536];
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        if (count == cap) { cap = cap ? 2 * cap : 16; out = (char**)realloc(out, (size_t)cap * sizeof(char*)); }
        out[count] = (char*)malloc(len + 1);
        memcpy(out[count++], line, len + 1);
    }
    fclose(f);
    if (!count) { fprintf(stderr, "error: prompt file '%s' has no prompts\n", path); exit(1); }
    *n = count;
    return out;
}

int main(int argc, char** argv) {
    cli_opts o;
    parse_args(&o, argc, argv);
    lw_logger logger = { NULL, NULL };
    if (o.verbose) logger.func = log_stderr;

    int n_prompts = 1;
    char** prompts = o.prompt_file ? read_prompts(o.prompt_file, &n_prompts) : NULL;
    int n_requests = n_prompts * o.parallel;

    lw_model* model = NULL;
    lw_model* draft = NULL;
    lw_backend* backend = NULL;
    lw_engine* engine = NULL;
    lw_model_desc md;
    memset(&md, 0, sizeof md);
    md.logger = logger;
    lw_backend_desc bd;
    memset(&bd, 0, sizeof bd);
    bd.kind = o.backend;
    bd.n_threads = o.threads;
    bd.logger = logger;
    lw_engine_desc ed;
    memset(&ed, 0, sizeof ed);
    ed.n_ctx = o.n_ctx;
    ed.kv_type = o.kv_type;
    ed.max_running = n_requests < 64 ? n_requests : 64;
    ed.logger = logger;
    int status = 0;
    if (lw_model_load(&model, o.model, &md) != LW_OK || (o.draft && lw_model_load(&draft, o.draft, &md) != LW_OK) ||
        lw_backend_create(&backend, &bd) != LW_OK)
        status = 1;
    ed.draft_model = draft;
    if (!status) {
        lw_model_info info;
        memset(&info, 0, sizeof info);
        lw_model_get_info(model, &info);
        int n_ctx = o.n_ctx ? o.n_ctx : info.n_ctx_train;
        ed.kv_tokens = (int64_t)n_ctx * ed.max_running;   // room for every running sequence at full length
        if (lw_engine_create(&engine, model, backend, &ed) != LW_OK) status = 1;
    }
    if (status) {
        fprintf(stderr, "error: %s\n", lw_last_error());
        lw_backend_free(backend);
        lw_model_free(draft);
        lw_model_free(model);
        free(o.prompt_ids);
        return 1;
    }

    cli_run run;
    memset(&run, 0, sizeof run);
    run.o = &o;
    run.engine = engine;
    run.backend = backend;
    run.n_requests = n_requests;
    run.streaming = !o.json && n_requests == 1;
    run.stream.prompt = o.prompt_ids ? NULL : o.prompt;
    cli_req* reqs = (cli_req*)calloc((size_t)n_requests, sizeof(cli_req));
    run.done = (cli_req_done*)calloc((size_t)n_requests, sizeof(cli_req_done));
    lw_request* handles = (lw_request*)calloc((size_t)n_requests, sizeof(lw_request));
    for (int i = 0; i < n_requests && !status; i++) {
        lw_request_desc rd;
        memset(&rd, 0, sizeof rd);
        if (prompts) rd.prompt = prompts[i / o.parallel];
        else if (o.prompt_ids) { rd.prompt_ids = o.prompt_ids; rd.n_prompt_ids = o.n_prompt_ids; }
        else rd.prompt = o.prompt;
        rd.max_tokens = o.n_predict;
        rd.mode = o.mode;
        rd.spec = o.spec;
        rd.diffusion = o.diffusion;
        rd.sampler = o.sampler;
        rd.sampler.seed = o.sampler.seed + (uint64_t)(i % o.parallel);   // copies of a prompt draw differently
        reqs[i].run = &run;
        reqs[i].index = i;
        rd.on_event = on_event;
        rd.user = &reqs[i];
        if (lw_engine_submit(engine, &rd, &handles[i]) != LW_OK) {
            fprintf(stderr, "error: %s\n", lw_last_error());
            status = 1;
        }
    }
    lw_result r = LW_OK;
    while (!status && r == LW_OK && !lw_engine_idle(engine)) {
        r = lw_engine_step(engine);
        report_finished(&run);
    }
    if (!status && (r != LW_OK || run.failed)) {
        if (run.stream.started) printf("\n");
        fprintf(stderr, "error: %s\n", lw_last_error());
        status = 1;
    } else if (!status && run.streaming) {
        lw_request_info in;
        lw_request_get(engine, handles[0], &in);
        stream_start(&run.stream);   // nothing generated: still show the prompt
        printf("\n");
        fflush(stdout);   // the text before the statistics when both go to one terminal
        fprintf(stderr, "[%d prompt + %d generated tokens (%s), ttft %.1f ms, %.2f ms/token, %.1f tokens/s, %d forwards",
                in.n_prompt, in.n_ids, finish_name(in.finish), in.ttft_ms, in.tpot_ms, in.tpot_ms > 0 ? 1000.0 / in.tpot_ms : 0.0,
                in.forwards);
        if (in.drafted) fprintf(stderr, ", %d of %d drafted accepted", in.accepted, in.drafted);
        fprintf(stderr, ", %s x%d]\n", lw_backend_name(backend), lw_backend_threads(backend));
    } else if (!status && !o.json) {
        lw_engine_stats es;
        lw_engine_get_stats(engine, &es);
        fprintf(stderr, "[%lld requests, %lld tokens in %.2f s: %.1f tokens/s, %.1f rows per step, %lld preemptions, %s x%d]\n",
                (long long)es.finished, (long long)es.generated_tokens, es.elapsed_s, es.throughput, es.mean_rows_per_step,
                (long long)es.preemptions, lw_backend_name(backend), lw_backend_threads(backend));
    }
    free(reqs);
    free(run.done);
    free(handles);
    for (int i = 0; prompts && i < n_prompts; i++) free(prompts[i]);
    free(prompts);
    free(o.prompt_ids);
    lw_engine_free(engine);
    lw_backend_free(backend);
    lw_model_free(draft);
    lw_model_free(model);
    return status;
}
