/* test_cli - the contract of the command-line front end, build/llmwall (tools/llmwall.c)

   Runs $BUILD/llmwall (BUILD defaults to "build") from the repository root through the shell, with
   stdout and stderr captured separately, and checks:
   - --json: stdout is exactly one line, a JSON object (checked by the small parser below: balanced,
     strings well-formed UTF-8 with valid escapes, numbers in JSON's grammar, no duplicate keys) with
     "prompt_ids" and "ids" (arrays of integers), "text" (a string) and "stats" (an object whose
     prompt_tokens, generated_tokens, ttft_ms, tpot_ms and tokens_per_s are numbers, the counts
     matching the arrays);
   - --prompt-ids are used exactly as given (no BOS added);
   - greedy decoding of ../shared/models/stories260K.gguf gives llama.cpp's ids
     (../shared/ref/stories260K/p*_llamacpp_greedy64_f32kv.txt), with 1 and 2 threads alike;
   - --kv-type f16 runs;
   - every bad argument exits with status 1, writes nothing to stdout and exactly one line to stderr,
     with and without --json.
*/
#define _DEFAULT_SOURCE   // mkdtemp, popen
#include "../llmwall.h"
#include "lwtest.h"
#include <ctype.h>
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lwjson.h"

// ---- running the CLI

static const char* g_build;
static char g_bin[512];
static char g_model[512];
static char g_tmpdir[64];
static char g_out_path[128], g_err_path[128];

typedef struct cli_run {
    int    status;             // exit status, or -1 when it did not exit normally
    char*  out;                // stdout
    size_t out_n;
    char*  err;                // stderr
    size_t err_n;
    char   cmd[2048];
} cli_run;

static void cli_free(cli_run* r) {
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

// runs `$BUILD/llmwall ARGS` (ARGS as the shell reads it); a hung program is stopped after 300 s
static cli_run cli(const char* fmt, ...) {
    cli_run r;
    memset(&r, 0, sizeof r);
    char args[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(r.cmd, sizeof r.cmd, "llmwall %s", args);
    char shell[2400];
    snprintf(shell, sizeof shell, "timeout 300 '%s' %s >'%s' 2>'%s' </dev/null", g_bin, args, g_out_path, g_err_path);
    int st = system(shell);
    r.status = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    r.out = lwt_read_file(g_out_path, &r.out_n);
    r.err = lwt_read_file(g_err_path, &r.err_n);
    if (!r.out) { r.out = (char*)calloc(1, 1); r.out_n = 0; }
    if (!r.err) { r.err = (char*)calloc(1, 1); r.err_n = 0; }
    return r;
}

static int count_lines(const char* s, size_t n) {   // newline-terminated lines; a missing final newline counts as one
    int lines = 0;
    for (size_t i = 0; i < n; i++) lines += s[i] == '\n';
    if (n && s[n - 1] != '\n') lines++;
    return lines;
}

// ---- the reference ids

typedef struct ref_ids { int32_t prompt[64]; int n_prompt; int32_t gen[128]; int n_gen; } ref_ids;

static int parse_id_line(const char* text, const char* label, int32_t* out, int max) {
    const char* p = strstr(text, label);
    if (!p) return -1;
    p += strlen(label);
    int n = 0;
    while (*p && *p != '\n' && n < max) {
        char* end;
        long v = strtol(p, &end, 10);
        if (end == p) break;
        out[n++] = (int32_t)v;
        p = end;
    }
    return n;
}

static bool load_ref(const char* name, ref_ids* r) {
    char rel[128];
    snprintf(rel, sizeof rel, "ref/stories260K/%s_llamacpp_greedy64_f32kv.txt", name);
    char* text = lwt_read_file(lwt_shared(rel), NULL);
    if (!text) return false;
    r->n_prompt = parse_id_line(text, "prompt_ids:", r->prompt, 64);
    r->n_gen = parse_id_line(text, "gen_ids:", r->gen, 128);
    free(text);
    return r->n_prompt > 0 && r->n_gen > 0;
}

static void ids_csv(const int32_t* ids, int n, char* out, size_t size) {
    size_t k = 0;
    out[0] = 0;
    for (int i = 0; i < n && k < size; i++) k += (size_t)snprintf(out + k, size - k, i ? ",%d" : "%d", ids[i]);
}

// ---- checking one --json run

typedef struct json_result { int ok; int32_t* prompt_ids; int n_prompt; int32_t* ids; int n_ids; jval root; } json_result;

static void json_result_free(json_result* j) {
    free(j->prompt_ids);
    free(j->ids);
    jfree(&j->root);
    memset(j, 0, sizeof *j);
}

// checks the whole contract of a successful --json run; on failure reports and returns ok = 0
static json_result check_json_run(const char* file, int line, const cli_run* r) {
    json_result j;
    memset(&j, 0, sizeof j);
    char err[200];
#define JFAIL(...) do { lwt_report_failure(file, line, r->cmd, __VA_ARGS__); return j; } while (0)
    if (r->status != 0) JFAIL("exit status %d, stderr: %.300s", r->status, r->err);
    if (r->out_n == 0 || r->out[r->out_n - 1] != '\n' || memchr(r->out, '\n', r->out_n - 1) != NULL)
        JFAIL("stdout is not exactly one line (%zu bytes, %d lines): %.200s", r->out_n, count_lines(r->out, r->out_n), r->out);
    if (strlen(r->out) != r->out_n) JFAIL("stdout holds a NUL byte");
    if (!jparse(r->out, r->out_n - 1, &j.root, err, sizeof err)) JFAIL("stdout is not JSON (%s): %.300s", err, r->out);
    if (j.root.t != J_OBJ) JFAIL("the JSON value is not an object");
    j.n_prompt = jints(jget(&j.root, "prompt_ids"), &j.prompt_ids);
    j.n_ids = jints(jget(&j.root, "ids"), &j.ids);
    if (j.n_prompt < 0) JFAIL("\"prompt_ids\" is missing or not an array of integers");
    if (j.n_ids < 0) JFAIL("\"ids\" is missing or not an array of integers");
    const jval* text = jget(&j.root, "text");
    if (!text || text->t != J_STR) JFAIL("\"text\" is missing or not a string");
    const jval* stats = jget(&j.root, "stats");
    if (!stats || stats->t != J_OBJ) JFAIL("\"stats\" is missing or not an object");
    static const char* const nums[] = { "prompt_tokens", "generated_tokens", "ttft_ms", "tpot_ms", "tokens_per_s" };
    for (int i = 0; i < 5; i++) {
        const jval* v = jget(stats, nums[i]);
        if (!v || v->t != J_NUM) JFAIL("stats.%s is missing or not a number", nums[i]);
        if (v->num < 0.0) JFAIL("stats.%s is negative (%g)", nums[i], v->num);
    }
    const jval* pt = jget(stats, "prompt_tokens");
    const jval* gt = jget(stats, "generated_tokens");
    if (!pt->is_int || pt->ival != j.n_prompt) JFAIL("stats.prompt_tokens %g but %d prompt_ids", pt->num, j.n_prompt);
    if (!gt->is_int || gt->ival != j.n_ids) JFAIL("stats.generated_tokens %g but %d ids", gt->num, j.n_ids);
    for (int i = 0; i < j.n_prompt; i++)
        if (j.prompt_ids[i] < 0) JFAIL("prompt_ids[%d] = %d", i, j.prompt_ids[i]);
    for (int i = 0; i < j.n_ids; i++)
        if (j.ids[i] < 0 || j.ids[i] >= 512) JFAIL("ids[%d] = %d is outside stories260K's vocabulary", i, j.ids[i]);
#undef JFAIL
    j.ok = 1;
    return j;
}
#define CHECK_JSON_RUN(r) check_json_run(__FILE__, __LINE__, &(r))

static bool ids_equal(const int32_t* a, const int32_t* b, int n) { return memcmp(a, b, (size_t)n * sizeof(int32_t)) == 0; }

static void first_difference(const int32_t* a, int na, const int32_t* b, int nb, char* out, size_t size) {
    int i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    snprintf(out, size, "first difference at %d: %d vs %d (lengths %d, %d)", i, i < na ? a[i] : -1, i < nb ? b[i] : -1, na, nb);
}

// ---- cases

static bool have_cli(void) {
    return access(g_bin, X_OK) == 0 && access(g_model, R_OK) == 0;
}
#define NEED_CLI() do { if (!have_cli()) { if (access(g_bin, X_OK) != 0) { LWT_CHECK(0, "%s is not built", g_bin); return; } \
                                          LWT_SKIP("%s is missing", g_model); } } while (0)

static void test_json_checker(void) {
    static const char* const good[] = {
        "{}", "[]", "{\"a\":[1,-2,0,3e2,-0.5E-3],\"b\":\"x\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\",\"c\":{\"d\":null,\"e\":true,\"f\":false}}",
        " [ 1 , 2 ] ", "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"", "0", "-0", "1.5",
    };
    static const char* const bad[] = {
        "", "{", "}", "[1,]", "[,1]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "[01]", "[1.]", "[.5]", "[1e]", "[+1]", "[-]",
        "\"abc", "\"a\\x\"", "\"\\u12g4\"", "\"\\ud800\"", "\"\\udc00\"", "\"a\tb\"", "\"\xc3\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"",
        "\"\xf4\x90\x80\x80\"", "\"\xff\"", "[1] [2]", "{\"a\":1,\"a\":2}", "tru", "nul", "[NaN]", "[Infinity]", "{\"a\":1}x",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        jval v;
        char err[200];
        int ok = jparse(good[i], strlen(good[i]), &v, err, sizeof err);
        LWT_CHECK(ok, "rejected good JSON %s: %s", good[i], err);
        if (ok) jfree(&v);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        jval v;
        char err[200];
        int ok = jparse(bad[i], strlen(bad[i]), &v, err, sizeof err);
        LWT_CHECK(!ok, "accepted bad JSON [%s]", bad[i]);
        if (ok) jfree(&v);
    }
    jval v;
    char err[200];
    const char* s = "{\"ids\":[1,2,2147483647],\"x\":[1.5],\"y\":[2147483648],\"t\":\"\\u00e9\"}";
    if (jparse(s, strlen(s), &v, err, sizeof err)) {
        int32_t* ids;
        LWT_CHECK(jints(jget(&v, "ids"), &ids) == 3 && ids[2] == INT32_MAX, "int array");
        free(ids);
        LWT_CHECK(jints(jget(&v, "x"), &ids) == -1, "a float is not an id");
        LWT_CHECK(jints(jget(&v, "y"), &ids) == -1, "2^31 is not an int32 id");
        LWT_CHECK(strcmp(jget(&v, "t")->str, "\xc3\xa9") == 0, "\\u00e9 decodes to UTF-8");
        jfree(&v);
    } else {
        LWT_CHECK(0, "parse: %s", err);
    }
}

static void test_json_greedy_prompt_ids(void) {
    NEED_CLI();
    ref_ids ref;
    LWT_REQUIRE(load_ref("p1", &ref), "cannot read the p1 reference");
    char csv[512];
    ids_csv(ref.prompt, ref.n_prompt, csv, sizeof csv);
    cli_run r = cli("-m '%s' --prompt-ids %s -n 10 --temp 0 --json", g_model, csv);
    json_result j = CHECK_JSON_RUN(r);
    if (j.ok) {
        LWT_CHECK(j.n_prompt == ref.n_prompt && ids_equal(j.prompt_ids, ref.prompt, ref.n_prompt), "prompt_ids are not %s", csv);
        char diff[160];
        first_difference(j.ids, j.n_ids, ref.gen, 10, diff, sizeof diff);
        LWT_CHECK(j.n_ids == 10 && ids_equal(j.ids, ref.gen, 10), "ids differ from llama.cpp's first 10: %s", diff);
        const jval* finish = jget(&j.root, "finish");
        if (finish) LWT_CHECK(finish->t == J_STR && strcmp(finish->str, "length") == 0, "finish is not \"length\"");
    }
    json_result_free(&j);
    cli_free(&r);
}

static void test_prompt_ids_used_as_given(void) {
    NEED_CLI();
    static const char* const lists[] = { "1,403,407", "403,407", "0", "511", "2,2,2" };
    static const int32_t want[][3] = { { 1, 403, 407 }, { 403, 407 }, { 0 }, { 511 }, { 2, 2, 2 } };
    static const int n_want[] = { 3, 2, 1, 1, 3 };
    for (int c = 0; c < 5; c++) {
        cli_run r = cli("-m '%s' --prompt-ids %s -n 4 --temp 0 --json", g_model, lists[c]);
        json_result j = CHECK_JSON_RUN(r);
        if (j.ok) {
            LWT_CHECK(j.n_prompt == n_want[c] && ids_equal(j.prompt_ids, want[c], n_want[c]),
                      "--prompt-ids %s gave %d prompt ids starting %d", lists[c], j.n_prompt, j.n_prompt ? j.prompt_ids[0] : -1);
            LWT_CHECK(j.n_ids <= 4, "-n 4 gave %d ids", j.n_ids);
        }
        json_result_free(&j);
        cli_free(&r);
    }
}

static void test_threads_agree(void) {
    NEED_CLI();
    ref_ids ref;
    LWT_REQUIRE(load_ref("p1", &ref), "cannot read the p1 reference");
    char csv[512];
    ids_csv(ref.prompt, ref.n_prompt, csv, sizeof csv);
    int32_t got[2][16];
    int n_got[2] = { -1, -1 };
    for (int t = 1; t <= 2; t++) {
        cli_run r = cli("-m '%s' --prompt-ids %s -n 10 --temp 0 -t %d --json", g_model, csv, t);
        json_result j = CHECK_JSON_RUN(r);
        if (j.ok) {
            n_got[t - 1] = (j.n_ids < 16 ? j.n_ids : 16);
            memcpy(got[t - 1], j.ids, (size_t)n_got[t - 1] * sizeof(int32_t));
            char diff[160];
            first_difference(j.ids, j.n_ids, ref.gen, 10, diff, sizeof diff);
            LWT_CHECK(j.n_ids == 10 && ids_equal(j.ids, ref.gen, 10), "-t %d: ids differ from llama.cpp's: %s", t, diff);
            const jval* th = jget(jget(&j.root, "stats"), "threads");
            if (th) LWT_CHECK(th->t == J_NUM && th->ival == t, "-t %d but stats.threads is %g", t, th->num);
        }
        json_result_free(&j);
        cli_free(&r);
    }
    LWT_CHECK(n_got[0] == n_got[1] && n_got[0] >= 0 && ids_equal(got[0], got[1], n_got[0]), "-t 1 and -t 2 give different ids");
}

static void test_greedy64_reference(void) {
    NEED_CLI();
    static const char* const names[] = { "p1", "p2" };
    for (int p = 0; p < 2; p++) {
        ref_ids ref;
        LWT_REQUIRE(load_ref(names[p], &ref), "cannot read the %s reference", names[p]);
        char csv[512];
        ids_csv(ref.prompt, ref.n_prompt, csv, sizeof csv);
        cli_run r = cli("-m '%s' --prompt-ids %s -n %d --temp 0 --json", g_model, csv, ref.n_gen);
        json_result j = CHECK_JSON_RUN(r);
        if (j.ok) {
            char diff[160];
            first_difference(j.ids, j.n_ids, ref.gen, ref.n_gen, diff, sizeof diff);
            LWT_CHECK(j.n_ids == ref.n_gen && ids_equal(j.ids, ref.gen, ref.n_gen), "%s: %s", names[p], diff);
        }
        json_result_free(&j);
        cli_free(&r);
    }
}

static void test_kv_type_f16(void) {
    NEED_CLI();
    cli_run r = cli("-m '%s' --prompt-ids 1,403,407,261,378 -n 10 --temp 0 --kv-type f16 --json", g_model);
    json_result j = CHECK_JSON_RUN(r);
    if (j.ok) LWT_CHECK(j.n_ids == 10, "--kv-type f16 gave %d ids", j.n_ids);
    json_result_free(&j);
    cli_free(&r);
    r = cli("-m '%s' --prompt-ids 1,403,407,261,378 -n 10 --temp 0 --kv-type f32 --backend cpu --mode ar --json", g_model);
    j = CHECK_JSON_RUN(r);
    json_result_free(&j);
    cli_free(&r);
}

static void test_sampling_runs(void) {   // sampling options are accepted; the same seed gives the same ids
    NEED_CLI();
    int32_t first[32];
    int n_first = -1;
    for (int k = 0; k < 2; k++) {
        cli_run r = cli("-m '%s' --prompt-ids 1,403 -n 16 --temp 0.9 --top-k 20 --top-p 0.9 --min-p 0.02 --repeat-penalty 1.1 "
                        "--repeat-last-n 8 --seed 42 -c 64 --json", g_model);
        json_result j = CHECK_JSON_RUN(r);
        if (j.ok) {
            LWT_CHECK(j.n_ids <= 16, "-n 16 gave %d ids", j.n_ids);
            if (k == 0) { n_first = j.n_ids; memcpy(first, j.ids, (size_t)j.n_ids * sizeof(int32_t)); }
            else LWT_CHECK(j.n_ids == n_first && ids_equal(j.ids, first, n_first), "the same seed gave different ids");
        }
        json_result_free(&j);
        cli_free(&r);
    }
}

static void test_plain_output(void) {
    NEED_CLI();
    cli_run r = cli("-m '%s' --prompt-ids 1,403,407 -n 5 --temp 0", g_model);
    LWT_CHECK(r.status == 0, "exit status %d: %s", r.status, r.err);
    LWT_CHECK(count_lines(r.err, r.err_n) == 1, "stderr should be one line of statistics, got: %.300s", r.err);
    cli_free(&r);
    r = cli("--version");
    LWT_CHECK(r.status == 0 && strstr(r.out, LLMWALL_VERSION_STRING) != NULL, "--version: status %d, '%s'", r.status, r.out);
    cli_free(&r);
    r = cli("--help");
    LWT_CHECK(r.status == 0 && strstr(r.out, "usage") != NULL && r.err_n == 0, "--help: status %d", r.status);
    cli_free(&r);
}

// exit status 1, nothing on stdout, exactly one non-empty line on stderr that mentions `word`
static void check_error_run_(const char* file, int line, const cli_run* r, const char* word) {
    if (r->status != 1) lwt_report_failure(file, line, r->cmd, "exit status %d, want 1 (stderr: %.200s)", r->status, r->err);
    if (r->out_n != 0) lwt_report_failure(file, line, r->cmd, "stdout is not empty: %.200s", r->out);
    int lines = count_lines(r->err, r->err_n);
    if (lines != 1 || r->err_n < 2 || r->err[r->err_n - 1] != '\n')
        lwt_report_failure(file, line, r->cmd, "stderr has %d lines, want exactly one: [%.300s]", lines, r->err);
    else if (word && !strstr(r->err, word))
        lwt_report_failure(file, line, r->cmd, "the error line does not mention '%s': %s", word, r->err);
}
#define CHECK_ERROR_RUN(r, word) check_error_run_(__FILE__, __LINE__, &(r), word)

typedef struct bad_case { const char* args; const char* word; } bad_case;

static void test_bad_arguments(void) {
    NEED_CLI();
    char not_gguf[256], missing[256];
    snprintf(not_gguf, sizeof not_gguf, "%s/not-a-model.gguf", g_tmpdir);
    snprintf(missing, sizeof missing, "%s/no-such-model.gguf", g_tmpdir);
    FILE* f = fopen(not_gguf, "wb");
    if (f) { fputs("hello, this is text\n", f); fclose(f); }
    char empty[256];
    snprintf(empty, sizeof empty, "%s/empty.gguf", g_tmpdir);
    f = fopen(empty, "wb");
    if (f) fclose(f);
    // %M is replaced by the model path
    const bad_case cases[] = {
        { "-m %M --bogus", "--bogus" },
        { "--bogus -m %M", "--bogus" },
        { "-m %M -n", "-n" },
        { "-m %M --prompt-ids", "--prompt-ids" },
        { "-m", "-m" },
        { "-m %M -n -1", "-n" },
        { "-m %M -n abc", "abc" },
        { "-m %M -n 5x", "5x" },
        { "-m %M -n ''", "-n" },
        { "-m %M -n 99999999999999999999", "-n" },
        { "-m %M --temp x", "--temp" },
        { "-m %M --temp -1", "--temp" },
        { "-m %M --temp nan", "--temp" },
        { "-m %M --top-p 2", "--top-p" },
        { "-m %M --top-k -1", "--top-k" },
        { "-m %M --min-p 1.5", "--min-p" },
        { "-m %M --repeat-penalty -1", "--repeat-penalty" },
        { "-m %M --seed -5", "--seed" },
        { "-m %M -t 0", "-t" },
        { "-m %M -t -1", "-t" },
        { "-m %M -c 0", "-c" },
        { "-m %M --kv-type q8", "q8" },
        { "-m %M --kv-type q8_0", "q8_0" },
        { "-m %M --backend gpu", "gpu" },
        { "-m %M --mode foo", "foo" },
        { "-m %M --prompt-ids 1,,2", "--prompt-ids" },
        { "-m %M --prompt-ids 1,2,", "--prompt-ids" },
        { "-m %M --prompt-ids ,1", "--prompt-ids" },
        { "-m %M --prompt-ids -1", "--prompt-ids" },
        { "-m %M --prompt-ids x", "--prompt-ids" },
        { "-m %M --prompt-ids 99999999999", "--prompt-ids" },
        { "-m %M --prompt-ids 999999", "999999" },
        { "-m %M --prompt-ids 512", "512" },
        { "-m %M -p hello --prompt-ids 1", NULL },
        { "-m %M stray-argument", "stray-argument" },
        { "-m %M -c 4 --prompt-ids 1,2,3,4 -n 2", "context" },
        { "-m %N --prompt-ids 1", "no-such-model.gguf" },
        { "-m %T --prompt-ids 1", "not-a-model.gguf" },
        { "-m %E --prompt-ids 1", "empty.gguf" },
        { "-m %D --prompt-ids 1", NULL },
        { "--prompt-ids 1 -n 3", "-m" },
        { "", "-m" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[1024];
        size_t k = 0;
        for (const char* p = cases[i].args; *p && k < sizeof args - 300; p++) {
            if (p[0] == '%' && (p[1] == 'M' || p[1] == 'N' || p[1] == 'T' || p[1] == 'E' || p[1] == 'D')) {
                const char* path = p[1] == 'M' ? g_model : p[1] == 'N' ? missing : p[1] == 'T' ? not_gguf : p[1] == 'E' ? empty : g_tmpdir;
                k += (size_t)snprintf(args + k, sizeof args - k, "'%s'", path);
                p++;
            } else {
                args[k++] = *p;
            }
        }
        args[k] = 0;
        for (int json = 0; json < 2; json++) {
            cli_run r = cli("%s%s", json ? "--json " : "", args);
            CHECK_ERROR_RUN(r, cases[i].word);
            cli_free(&r);
        }
    }
    unlink(not_gguf);
    unlink(empty);
}

static void test_backend_cuda(void) {
    NEED_CLI();
    for (int json = 0; json < 2; json++) {
        cli_run r = cli("-m '%s' --prompt-ids 1,403 -n 2 --temp 0 --backend cuda%s", g_model, json ? " --json" : "");
        if (r.status == 0) {   // a build with CUDA on a machine with a device: it must really be CUDA
            if (json) {
                json_result j = CHECK_JSON_RUN(r);
                const jval* be = j.ok ? jget(jget(&j.root, "stats"), "backend") : NULL;
                LWT_CHECK(!be || (be->t == J_STR && strcmp(be->str, "cuda") == 0), "--backend cuda ran on '%s'", be ? be->str : "?");
                json_result_free(&j);
            }
        } else {
            CHECK_ERROR_RUN(r, "cuda");
        }
        cli_free(&r);
    }
}

static void test_text_prompt(void) {
    NEED_CLI();
    static const char* const names[] = { "p1", "p2" };
    for (int p = 0; p < 2; p++) {
        ref_ids ref;
        LWT_REQUIRE(load_ref(names[p], &ref), "cannot read the %s reference", names[p]);
        char rel[96];
        snprintf(rel, sizeof rel, "ref/stories260K/%s_prompt.txt", names[p]);
        char* prompt = lwt_read_file(lwt_shared(rel), NULL);
        LWT_REQUIRE(prompt, "cannot read %s", rel);
        size_t n = strlen(prompt);
        while (n && (prompt[n - 1] == '\n' || prompt[n - 1] == '\r')) prompt[--n] = 0;
        LWT_REQUIRE(!strchr(prompt, '\''), "the prompt holds a quote");
        cli_run r = cli("-m '%s' -p '%s' --temp 0 -n %d --json", g_model, prompt, ref.n_gen);
        json_result j = CHECK_JSON_RUN(r);
        if (j.ok) {
            char diff[160];
            first_difference(j.prompt_ids, j.n_prompt, ref.prompt, ref.n_prompt, diff, sizeof diff);
            LWT_CHECK(j.n_prompt == ref.n_prompt && ids_equal(j.prompt_ids, ref.prompt, ref.n_prompt), "%s prompt ids: %s", names[p], diff);
            first_difference(j.ids, j.n_ids, ref.gen, ref.n_gen, diff, sizeof diff);
            LWT_CHECK(j.n_ids == ref.n_gen && ids_equal(j.ids, ref.gen, ref.n_gen), "%s ids: %s", names[p], diff);
            const jval* text = jget(&j.root, "text");
            LWT_CHECK(text && text->len > 0, "%s: empty text", names[p]);
        }
        json_result_free(&j);
        cli_free(&r);
        // plain mode streams the prompt, then the text
        r = cli("-m '%s' -p '%s' --temp 0 -n 8", g_model, prompt);
        LWT_CHECK(r.status == 0 && strncmp(r.out, prompt, strlen(prompt)) == 0, "plain output does not start with the prompt: %.200s",
                  r.out);
        cli_free(&r);
        free(prompt);
    }
    // an empty prompt still gets BOS (stories260K adds it), and the default prompt is ""
    cli_run r = cli("-m '%s' -p '' --temp 0 -n 3 --json", g_model);
    json_result j = CHECK_JSON_RUN(r);
    if (j.ok) LWT_CHECK(j.n_prompt == 1 && j.prompt_ids[0] == 1, "empty prompt: %d ids", j.n_prompt);
    json_result_free(&j);
    cli_free(&r);
    // a text prompt longer than the context
    for (int json = 0; json < 2; json++) {   // plain mode too: the prompt must not reach stdout before the error
        r = cli("-m '%s' -c 4 -p 'Once upon a time there was a little girl' -n 2%s", g_model, json ? " --json" : "");
        CHECK_ERROR_RUN(r, "context");
        cli_free(&r);
    }
}

// --parallel and --prompt-file: every request gets exactly one JSON line with its own prompt_ids; batched
// greedy requests give what the same request gives alone
static void test_parallel_and_prompt_file(void) {
    NEED_CLI();
    ref_ids p1, p2;
    LWT_REQUIRE(load_ref("p1", &p1) && load_ref("p2", &p2), "cannot read the references");
    char csv[512];
    ids_csv(p1.prompt, p1.n_prompt, csv, sizeof csv);
    cli_run r = cli("-m '%s' --prompt-ids %s -n 16 --temp 0 --parallel 5 --json", g_model, csv);
    LWT_CHECK(r.status == 0 && count_lines(r.out, r.out_n) == 5, "--parallel 5: exit %d, %d lines", r.status, count_lines(r.out, r.out_n));
    char* line = r.out;
    for (int k = 0; k < 5 && line && *line; k++) {
        char* nl = strchr(line, '\n');
        jval v;
        char err[200];
        int ok = nl && jparse(line, (size_t)(nl - line), &v, err, sizeof err);
        LWT_CHECK(ok, "line %d is JSON: %s", k, ok ? "" : err);
        if (ok) {
            int32_t *pid = NULL, *ids = NULL;
            int np = jints(jget(&v, "prompt_ids"), &pid), ni = jints(jget(&v, "ids"), &ids);
            LWT_CHECK(np == p1.n_prompt && ids_equal(pid, p1.prompt, np), "line %d: prompt_ids", k);
            LWT_CHECK(ni == 16 && ids_equal(ids, p1.gen, 16), "line %d: the greedy ids of the request alone", k);
            free(pid);
            free(ids);
            jfree(&v);
        }
        line = nl ? nl + 1 : NULL;
    }
    cli_free(&r);
    // two prompts from a file, two copies each: four lines, each with its prompt's ids
    char path[160];
    snprintf(path, sizeof path, "%s/prompts.txt", g_tmpdir);
    FILE* f = fopen(path, "w");
    LWT_REQUIRE(f, "temp file");
    char* t1 = lwt_read_file(lwt_shared("ref/stories260K/p1_prompt.txt"), NULL);
    char* t2 = lwt_read_file(lwt_shared("ref/stories260K/p2_prompt.txt"), NULL);
    LWT_REQUIRE(t1 && t2, "prompts");
    fprintf(f, "%s\n\n%s\n", strtok(t1, "\r\n"), strtok(t2, "\r\n"));
    fclose(f);
    r = cli("-m '%s' --prompt-file '%s' --parallel 2 -n 12 --temp 0 --json", g_model, path);
    LWT_CHECK(r.status == 0 && count_lines(r.out, r.out_n) == 4, "--prompt-file with 2 prompts x 2: exit %d, %d lines", r.status,
              count_lines(r.out, r.out_n));
    int seen1 = 0, seen2 = 0;
    line = r.out;
    for (int k = 0; k < 4 && line && *line; k++) {
        char* nl = strchr(line, '\n');
        jval v;
        char err[200];
        if (nl && jparse(line, (size_t)(nl - line), &v, err, sizeof err)) {
            int32_t *pid = NULL, *ids = NULL;
            int np = jints(jget(&v, "prompt_ids"), &pid), ni = jints(jget(&v, "ids"), &ids);
            if (np == p1.n_prompt && ids_equal(pid, p1.prompt, np)) { seen1++; LWT_CHECK(ni == 12 && ids_equal(ids, p1.gen, 12), "p1's ids"); }
            if (np == p2.n_prompt && ids_equal(pid, p2.prompt, np)) { seen2++; LWT_CHECK(ni == 12 && ids_equal(ids, p2.gen, 12), "p2's ids"); }
            free(pid);
            free(ids);
            jfree(&v);
        }
        line = nl ? nl + 1 : NULL;
    }
    LWT_CHECK(seen1 == 2 && seen2 == 2, "each prompt twice (%d, %d)", seen1, seen2);
    free(t1);
    free(t2);
    cli_free(&r);
    r = cli("-m '%s' --prompt-file '%s/no-such-file' -n 4", g_model, g_tmpdir);
    LWT_CHECK(r.status == 1 && r.out_n == 0 && count_lines(r.err, r.err_n) == 1, "a missing prompt file: one error line");
    cli_free(&r);
}

int main(int argc, char** argv) {
    lwt_init(argc, argv);
    g_build = getenv("BUILD");
    if (!g_build || !g_build[0]) g_build = "build";
    snprintf(g_bin, sizeof g_bin, "%s/llmwall", g_build);
    snprintf(g_model, sizeof g_model, "%s", lwt_shared("models/stories260K.gguf"));
    snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/lw_test_cli_XXXXXX");
    if (!mkdtemp(g_tmpdir)) { printf("cannot make a temporary directory\n"); return 1; }
    snprintf(g_out_path, sizeof g_out_path, "%s/stdout", g_tmpdir);
    snprintf(g_err_path, sizeof g_err_path, "%s/stderr", g_tmpdir);

    LWT_RUN(test_json_checker);
    LWT_RUN(test_json_greedy_prompt_ids);
    LWT_RUN(test_prompt_ids_used_as_given);
    LWT_RUN(test_threads_agree);
    LWT_RUN(test_greedy64_reference);
    LWT_RUN(test_kv_type_f16);
    LWT_RUN(test_sampling_runs);
    LWT_RUN(test_plain_output);
    LWT_RUN(test_bad_arguments);
    LWT_RUN(test_backend_cuda);
    LWT_RUN(test_text_prompt);
    LWT_RUN(test_parallel_and_prompt_file);

    unlink(g_out_path);
    unlink(g_err_path);
    rmdir(g_tmpdir);
    return lwt_finish();
}
