/* lwtest.h - the test harness of llmwall's test programs (not part of the library)

   A test program is a main() that runs named cases:

       #include "lwtest.h"
       static void test_something(void) {
           LWT_CHECK(1 + 1 == 2, "arithmetic works (%d)", 2);
       }
       int main(int argc, char** argv) {
           lwt_init(argc, argv);                   // optional filter: ./test_x name-substring
           LWT_RUN(test_something);
           return lwt_finish();                    // prints "RESULT passed=N failed=N skipped=N"
       }

   A case passes when none of its checks failed; LWT_SKIP("why") inside a case marks it skipped.
   tests/run.sh runs every test program and sums the RESULT lines into "N passed, N failed, N skipped".
   Paths to ../shared come from lwt_shared("ref/x"), which honours $LLMWALL_SHARED.
*/
#ifndef LWTEST_H
#define LWTEST_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>

static int lwt_passed, lwt_failed, lwt_skipped;
static int lwt_case_failures, lwt_case_skipped;
static const char* lwt_filter;
static const char* lwt_case_name;

static void lwt_init(int argc, char** argv) {
    lwt_filter = argc > 1 ? argv[1] : NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);
}

static void lwt_report_failure(const char* file, int line, const char* cond, const char* fmt, ...) {
    va_list ap;
    printf("  FAIL %s:%d: %s: %s -- ", file, line, lwt_case_name ? lwt_case_name : "?", cond);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    lwt_case_failures++;
}

// LWT_CHECK(condition, printf-style message): records a failure and goes on.
#define LWT_CHECK(cond, ...) \
    do { if (!(cond)) lwt_report_failure(__FILE__, __LINE__, #cond, __VA_ARGS__); } while (0)
// LWT_REQUIRE: like LWT_CHECK, but leaves the case on failure.
#define LWT_REQUIRE(cond, ...) \
    do { if (!(cond)) { lwt_report_failure(__FILE__, __LINE__, #cond, __VA_ARGS__); return; } } while (0)
#define LWT_SKIP(...) \
    do { printf("  SKIP %s: ", lwt_case_name); printf(__VA_ARGS__); printf("\n"); lwt_case_skipped = 1; return; } while (0)

#define LWT_RUN(fn) lwt_run(#fn, fn)
static void lwt_run(const char* name, void (*fn)(void)) {
    if (lwt_filter && !strstr(name, lwt_filter)) return;
    lwt_case_name = name;
    lwt_case_failures = 0;
    lwt_case_skipped = 0;
    fn();
    if (lwt_case_failures) { lwt_failed++; printf("FAIL %s\n", name); }
    else if (lwt_case_skipped) { lwt_skipped++; printf("skip %s\n", name); }
    else { lwt_passed++; printf("ok   %s\n", name); }
    lwt_case_name = NULL;
}

static int lwt_finish(void) {
    printf("RESULT passed=%d failed=%d skipped=%d\n", lwt_passed, lwt_failed, lwt_skipped);
    return lwt_failed ? 1 : 0;
}

// Path of a file under ../shared (or $LLMWALL_SHARED). Returns a static buffer.
static inline const char* lwt_shared(const char* rel) {
    static char buf[4][1024];
    static int next;
    const char* root = getenv("LLMWALL_SHARED");
    char* out = buf[next++ & 3];
    snprintf(out, sizeof buf[0], "%s/%s", root ? root : "../shared", rel);
    return out;
}

// Reads a whole file into a NUL-terminated malloc'd buffer; NULL when it cannot.
static inline char* lwt_read_file(const char* path, size_t* size) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char* data = (char*)malloc((size_t)n + 1);
    if (data && fread(data, 1, (size_t)n, f) != (size_t)n) { free(data); data = NULL; }
    fclose(f);
    if (data) { data[n] = 0; if (size) *size = (size_t)n; }
    return data;
}
#endif
