/*
 * json_fast.c — JSON parsing for the simulators' busiest bodies (the
 * SM-DP+'s ES9+ requests and the signed blobs inside them). jansson's
 * json_loadb reads a byte at a time through a UTF-8-checking stream, about
 * 110 instructions per byte, and these bodies are mostly long base64
 * strings. sim_json_loadb reads the plain subset of JSON in one pass —
 * objects, arrays, strings of printable ASCII without escapes, integers
 * without sign, fraction or exponent, true, false, null — and hands
 * anything else (an escape, a byte outside printable ASCII in a string,
 * another number, deep nesting, any error) to json_loadb, so every input
 * gets what json_loadb(flags 0) gives it. Dumping likewise writes an
 * object of that subset in one pass, byte for byte what
 * json_dumps(JSON_COMPACT) writes (~85 instructions a byte there too), and
 * leaves anything else to json_dumps.
 */
#include <stdio.h>
#include <string.h>

#include "sim/sim_internal.h"

#define FAST_MAX_DEPTH 32
#define FAST_MAX_KEY 256

typedef struct {
    const char *p, *end;
    int depth;
} reader;

static void skip_ws(reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

/* A string token: its bytes in [*s, *s + *n); false when it is not one of
 * the plain subset (an escape, a control character, a byte >= 0x80: jansson
 * refuses the controls and checks the rest). */
static bool plain_string(reader *r, const char **s, size_t *n)
{
    if (r->p >= r->end || *r->p != '"')
        return false;
    const char *q = r->p + 1;
    for (; q < r->end; q++) {
        unsigned char c = (unsigned char)*q;
        if (c == '"')
            break;
        if (c < 0x20 || c >= 0x80 || c == '\\')
            return false;
    }
    if (q >= r->end)
        return false;
    *s = r->p + 1;
    *n = (size_t)(q - *s);
    r->p = q + 1;
    return true;
}

static json_t *value(reader *r);

/* After an object's member or an array's element: 1 when a ',' follows
 * (consumed, with the blanks after it), 0 when the closing `close` does
 * (consumed), -1 for anything else. */
static int after_member(reader *r, char close)
{
    skip_ws(r);
    if (r->p < r->end && *r->p == ',') {
        r->p++;
        skip_ws(r);
        return 1;
    }
    if (r->p < r->end && *r->p == close) {
        r->p++;
        return 0;
    }
    return -1;
}

static json_t *object(reader *r)
{
    json_t *o = json_object();
    r->p++; /* '{' */
    skip_ws(r);
    if (o && r->p < r->end && *r->p == '}') {
        r->p++;
        return o;
    }
    while (o) {
        const char *k;
        size_t kn;
        char key[FAST_MAX_KEY];
        if (!plain_string(r, &k, &kn) || kn >= sizeof key)
            break;
        memcpy(key, k, kn);
        key[kn] = '\0';
        skip_ws(r);
        if (r->p >= r->end || *r->p != ':')
            break;
        r->p++;
        skip_ws(r);
        json_t *v = value(r);
        /* As json_loadb without JSON_REJECT_DUPLICATES: a repeated key's
         * last value replaces the first in its place. */
        if (!v || json_object_set_new_nocheck(o, key, v) != 0)
            break;
        int next = after_member(r, '}');
        if (next > 0)
            continue;
        if (next == 0)
            return o;
        break;
    }
    json_decref(o);
    return NULL;
}

static json_t *array(reader *r)
{
    json_t *a = json_array();
    r->p++; /* '[' */
    skip_ws(r);
    if (a && r->p < r->end && *r->p == ']') {
        r->p++;
        return a;
    }
    while (a) {
        json_t *v = value(r);
        if (!v || json_array_append_new(a, v) != 0)
            break;
        int next = after_member(r, ']');
        if (next > 0)
            continue;
        if (next == 0)
            return a;
        break;
    }
    json_decref(a);
    return NULL;
}

/* 0 or a digit 1-9 and up to 17 more digits (well inside json_int_t),
 * not followed by a fraction or an exponent. */
static json_t *integer(reader *r)
{
    const char *q = r->p;
    json_int_t v = 0;
    while (q < r->end && *q >= '0' && *q <= '9' && q - r->p < 18)
        v = v * 10 + (*q++ - '0');
    size_t n = (size_t)(q - r->p);
    if (n == 0 || (n > 1 && *r->p == '0') ||
        (q < r->end && ((*q >= '0' && *q <= '9') || *q == '.' || *q == 'e' || *q == 'E')))
        return NULL;
    r->p = q;
    return json_integer(v);
}

static json_t *literal(reader *r, const char *word, json_t *(*make)(void))
{
    size_t n = strlen(word);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
        return NULL;
    r->p += n;
    return make();
}

static json_t *make_true(void)
{
    return json_true();
}
static json_t *make_false(void)
{
    return json_false();
}
static json_t *make_null(void)
{
    return json_null();
}

static json_t *value(reader *r)
{
    if (r->p >= r->end)
        return NULL;
    const char *s;
    size_t n;
    json_t *v = NULL;
    switch (*r->p) {
    case '"':
        return plain_string(r, &s, &n) ? json_stringn_nocheck(s, n) : NULL;
    case '{':
    case '[':
        if (r->depth >= FAST_MAX_DEPTH)
            return NULL;
        r->depth++;
        v = *r->p == '{' ? object(r) : array(r);
        r->depth--;
        return v;
    case 't':
        return literal(r, "true", make_true);
    case 'f':
        return literal(r, "false", make_false);
    case 'n':
        return literal(r, "null", make_null);
    default:
        return integer(r);
    }
}

json_t *sim_json_loadb_plain(const char *buf, size_t len)
{
    reader r = {buf, buf + len, 0};
    skip_ws(&r);
    if (r.p >= r.end || *r.p != '{')
        return NULL;
    json_t *o = value(&r);
    skip_ws(&r);
    if (o && r.p != r.end) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *sim_json_loadb(const char *buf, size_t len)
{
    json_t *o = sim_json_loadb_plain(buf, len);
    return o ? o : json_loadb(buf, len, 0, NULL);
}

/* ---- dumping ------------------------------------------------------------------- */

/* |s| (|n| bytes) needs no escaping in json_dumps: printable ASCII (and
 * DEL, which jansson writes as it is) without '"' or '\\'. */
static bool plain_bytes(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\')
            return false;
    }
    return true;
}

static bool quoted(esim_buf *out, const char *s, size_t n)
{
    return plain_bytes(s, n) && esim_buf_append(out, "\"", 1) == ESIM_OK &&
           esim_buf_append(out, s, n) == ESIM_OK && esim_buf_append(out, "\"", 1) == ESIM_OK;
}

static bool dump_plain(const json_t *j, esim_buf *out, int depth)
{
    char num[32];
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        if (depth >= FAST_MAX_DEPTH || esim_buf_append(out, "{", 1) != ESIM_OK)
            return false;
        bool first = true;
        for (void *it = json_object_iter((json_t *)j); it;
             it = json_object_iter_next((json_t *)j, it)) {
            const char *k = json_object_iter_key(it);
            size_t kn = strlen(k);
#if JANSSON_VERSION_HEX >= 0x020e00
            if (json_object_iter_key_len(it) != kn) /* a key with a NUL in it */
                return false;
#endif
            if ((!first && esim_buf_append(out, ",", 1) != ESIM_OK) || !quoted(out, k, kn) ||
                esim_buf_append(out, ":", 1) != ESIM_OK ||
                !dump_plain(json_object_iter_value(it), out, depth + 1))
                return false;
            first = false;
        }
        return esim_buf_append(out, "}", 1) == ESIM_OK;
    }
    case JSON_ARRAY:
        if (depth >= FAST_MAX_DEPTH || esim_buf_append(out, "[", 1) != ESIM_OK)
            return false;
        for (size_t i = 0; i < json_array_size(j); i++)
            if ((i && esim_buf_append(out, ",", 1) != ESIM_OK) ||
                !dump_plain(json_array_get(j, i), out, depth + 1))
                return false;
        return esim_buf_append(out, "]", 1) == ESIM_OK;
    case JSON_STRING:
        return quoted(out, json_string_value(j), json_string_length(j));
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(j));
        return esim_buf_append_str(out, num) == ESIM_OK;
    case JSON_TRUE:
        return esim_buf_append(out, "true", 4) == ESIM_OK;
    case JSON_FALSE:
        return esim_buf_append(out, "false", 5) == ESIM_OK;
    case JSON_NULL:
        return esim_buf_append(out, "null", 4) == ESIM_OK;
    default: /* a real: jansson's own formatting */
        return false;
    }
}

bool sim_json_dump_plain(const json_t *o, esim_buf *out)
{
    esim_buf_reset(out);
    if (json_is_object(o) && dump_plain(o, out, 0))
        return true;
    esim_buf_reset(out);
    return false;
}
