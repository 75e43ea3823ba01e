/* lwjson.h - the tests' JSON reader: a parser that checks everything (RFC 8259) into a small tree, for
   what the CLI and tests/diffusion_ref.py print. Static functions; include it in one test program. */
#ifndef LWJSON_H
#define LWJSON_H
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
    jtype        t;
    int          b;
    double       num;
    int          is_int;       // a number without fraction or exponent that fits long long
    long long    ival;
    char*        str;          // J_STR: decoded UTF-8, NUL-terminated
    size_t       len;
    struct jval* items;        // J_ARR, J_OBJ: [n]
    char**       keys;         // J_OBJ: [n]
    int          n;
} jval;

typedef struct jparser { const char* p; const char* end; char err[160]; int depth; } jparser;

static void jfree(jval* v) {
    if (!v) return;
    for (int i = 0; i < v->n; i++) {
        jfree(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
    memset(v, 0, sizeof *v);
}

static int jfail(jparser* ps, const char* what) {
    if (!ps->err[0]) snprintf(ps->err, sizeof ps->err, "%s at offset %ld", what, (long)(ps->p - (ps->end - strlen(ps->p))));
    return 0;
}

static void jws(jparser* ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int jhex4(jparser* ps, unsigned* out) {
    if (ps->end - ps->p < 4) return jfail(ps, "short \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = ps->p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return jfail(ps, "bad hex digit in \\u escape");
    }
    ps->p += 4;
    *out = v;
    return 1;
}

static void jput_utf8(char* out, size_t* n, unsigned cp) {
    if (cp < 0x80) out[(*n)++] = (char)cp;
    else if (cp < 0x800) { out[(*n)++] = (char)(0xC0 | (cp >> 6)); out[(*n)++] = (char)(0x80 | (cp & 63)); }
    else if (cp < 0x10000) {
        out[(*n)++] = (char)(0xE0 | (cp >> 12)); out[(*n)++] = (char)(0x80 | ((cp >> 6) & 63)); out[(*n)++] = (char)(0x80 | (cp & 63));
    } else {
        out[(*n)++] = (char)(0xF0 | (cp >> 18)); out[(*n)++] = (char)(0x80 | ((cp >> 12) & 63));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 63)); out[(*n)++] = (char)(0x80 | (cp & 63));
    }
}

static int jstring(jparser* ps, char** out, size_t* out_len) {
    if (ps->p >= ps->end || *ps->p != '"') return jfail(ps, "expected a string");
    ps->p++;
    char* buf = (char*)malloc((size_t)(ps->end - ps->p) + 1);
    size_t n = 0;
    for (;;) {
        if (ps->p >= ps->end) { free(buf); return jfail(ps, "unterminated string"); }
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') { ps->p++; break; }
        if (c < 0x20) { free(buf); return jfail(ps, "control character in a string"); }
        if (c == '\\') {
            ps->p++;
            if (ps->p >= ps->end) { free(buf); return jfail(ps, "unterminated escape"); }
            char e = *ps->p++;
            unsigned cp;
            switch (e) {
            case '"': buf[n++] = '"'; break;
            case '\\': buf[n++] = '\\'; break;
            case '/': buf[n++] = '/'; break;
            case 'b': buf[n++] = '\b'; break;
            case 'f': buf[n++] = '\f'; break;
            case 'n': buf[n++] = '\n'; break;
            case 'r': buf[n++] = '\r'; break;
            case 't': buf[n++] = '\t'; break;
            case 'u':
                if (!jhex4(ps, &cp)) { free(buf); return 0; }
                if (cp >= 0xDC00 && cp <= 0xDFFF) { free(buf); return jfail(ps, "lone low surrogate"); }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') { free(buf); return jfail(ps, "lone high surrogate"); }
                    ps->p += 2;
                    if (!jhex4(ps, &lo)) { free(buf); return 0; }
                    if (lo < 0xDC00 || lo > 0xDFFF) { free(buf); return jfail(ps, "bad surrogate pair"); }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                jput_utf8(buf, &n, cp);
                break;
            default: free(buf); return jfail(ps, "unknown escape");
            }
            continue;
        }
        // raw UTF-8: well-formed, shortest form, no surrogates, at most U+10FFFF
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!len || ps->end - ps->p < len) { free(buf); return jfail(ps, "invalid UTF-8 lead byte"); }
        unsigned cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
        for (int k = 1; k < len; k++) {
            unsigned char d = (unsigned char)ps->p[k];
            if ((d & 0xC0) != 0x80) { free(buf); return jfail(ps, "invalid UTF-8 continuation"); }
            cp = (cp << 6) | (d & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF)) {
            free(buf);
            return jfail(ps, "overlong or out-of-range UTF-8");
        }
        memcpy(buf + n, ps->p, (size_t)len);
        n += (size_t)len;
        ps->p += len;
    }
    buf[n] = 0;
    *out = buf;
    *out_len = n;
    return 1;
}

static int jnumber(jparser* ps, jval* v) {
    const char* s = ps->p;
    const char* p = s;
    int is_int = 1;
    if (p < ps->end && *p == '-') p++;
    if (p >= ps->end || !isdigit((unsigned char)*p)) return jfail(ps, "bad number");
    if (*p == '0') p++;
    else while (p < ps->end && isdigit((unsigned char)*p)) p++;
    if (p < ps->end && *p == '.') {
        is_int = 0;
        p++;
        if (p >= ps->end || !isdigit((unsigned char)*p)) return jfail(ps, "bad fraction");
        while (p < ps->end && isdigit((unsigned char)*p)) p++;
    }
    if (p < ps->end && (*p == 'e' || *p == 'E')) {
        is_int = 0;
        p++;
        if (p < ps->end && (*p == '+' || *p == '-')) p++;
        if (p >= ps->end || !isdigit((unsigned char)*p)) return jfail(ps, "bad exponent");
        while (p < ps->end && isdigit((unsigned char)*p)) p++;
    }
    char tmp[64];
    if (p - s >= (long)sizeof tmp) return jfail(ps, "number too long");
    memcpy(tmp, s, (size_t)(p - s));
    tmp[p - s] = 0;
    v->t = J_NUM;
    v->num = strtod(tmp, NULL);
    if (is_int) {
        errno = 0;
        v->ival = strtoll(tmp, NULL, 10);
        v->is_int = errno == 0;
    }
    ps->p = p;
    return 1;
}

static int jvalue(jparser* ps, jval* v) {
    memset(v, 0, sizeof *v);
    jws(ps);
    if (ps->p >= ps->end) return jfail(ps, "expected a value");
    if (++ps->depth > 64) return jfail(ps, "nesting too deep");
    int ok = 1;
    char c = *ps->p;
    if (c == '{' || c == '[') {
        int obj = c == '{';
        v->t = obj ? J_OBJ : J_ARR;
        ps->p++;
        jws(ps);
        if (ps->p < ps->end && *ps->p == (obj ? '}' : ']')) { ps->p++; ps->depth--; return 1; }
        for (;;) {
            char* key = NULL;
            size_t klen;
            if (obj) {
                jws(ps);
                if (!jstring(ps, &key, &klen)) { ok = 0; break; }
                for (int i = 0; i < v->n && ok; i++)
                    if (strcmp(v->keys[i], key) == 0) ok = jfail(ps, "duplicate key");
                if (!ok) { free(key); break; }
                jws(ps);
                if (ps->p >= ps->end || *ps->p != ':') { free(key); ok = jfail(ps, "expected ':'"); break; }
                ps->p++;
            }
            v->items = (jval*)realloc(v->items, (size_t)(v->n + 1) * sizeof(jval));
            if (obj) v->keys = (char**)realloc(v->keys, (size_t)(v->n + 1) * sizeof(char*));
            if (obj) v->keys[v->n] = key;
            int got = jvalue(ps, &v->items[v->n]);
            v->n++;
            if (!got) { ok = 0; break; }
            jws(ps);
            if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
            if (ps->p < ps->end && *ps->p == (obj ? '}' : ']')) { ps->p++; break; }
            ok = jfail(ps, obj ? "expected ',' or '}'" : "expected ',' or ']'");
            break;
        }
    } else if (c == '"') {
        v->t = J_STR;
        ok = jstring(ps, &v->str, &v->len);
    } else if (c == '-' || isdigit((unsigned char)c)) {
        ok = jnumber(ps, v);
    } else if (ps->end - ps->p >= 4 && memcmp(ps->p, "true", 4) == 0) {
        v->t = J_BOOL; v->b = 1; ps->p += 4;
    } else if (ps->end - ps->p >= 5 && memcmp(ps->p, "false", 5) == 0) {
        v->t = J_BOOL; ps->p += 5;
    } else if (ps->end - ps->p >= 4 && memcmp(ps->p, "null", 4) == 0) {
        v->t = J_NULL; ps->p += 4;
    } else {
        ok = jfail(ps, "unexpected character");
    }
    ps->depth--;
    return ok;
}

// parses all of text[0, n) as one JSON value (whitespace around it allowed); err gets the reason
static int jparse(const char* text, size_t n, jval* out, char* err, size_t err_size) {
    jparser ps;
    memset(&ps, 0, sizeof ps);
    ps.p = text;
    ps.end = text + n;
    int ok = jvalue(&ps, out);
    if (ok) {
        jws(&ps);
        if (ps.p != ps.end) ok = jfail(&ps, "text after the value");
    }
    if (!ok) { jfree(out); snprintf(err, err_size, "%s", ps.err); }
    return ok;
}

static const jval* jget(const jval* obj, const char* key) {
    if (!obj || obj->t != J_OBJ) return NULL;
    for (int i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

// an array of integers that fit int32 -> ids (malloc'd); -1 when it is not one
static int jints(const jval* v, int32_t** ids) {
    *ids = NULL;
    if (!v || v->t != J_ARR) return -1;
    int32_t* out = (int32_t*)malloc((size_t)(v->n + 1) * sizeof(int32_t));
    for (int i = 0; i < v->n; i++) {
        const jval* x = &v->items[i];
        if (x->t != J_NUM || !x->is_int || x->ival < INT32_MIN || x->ival > INT32_MAX) { free(out); return -1; }
        out[i] = (int32_t)x->ival;
    }
    *ids = out;
    return v->n;
}

// the same into out (at most cap ids); its length (which may exceed cap), or -1 when it is not one
static inline int jints_into(const jval* v, int32_t* out, int cap) {
    int32_t* ids;
    int n = jints(v, &ids);
    if (n > 0) memcpy(out, ids, sizeof(int32_t) * (size_t)(n < cap ? n : cap));
    free(ids);
    return n;
}

#endif // LWJSON_H
