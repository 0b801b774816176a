/*
 * http_parse.c — the simulator's HTTP/1.1 response reader (see
 * http_parse.h). A byte-at-a-time state machine over lines for the head and
 * the chunk framing, and straight copies for body bytes.
 */
#include <string.h>

#include "sim/http_parse.h"

enum {
    S_STATUS,
    S_HEADER,
    S_BODY_LEN,
    S_BODY_EOF,
    S_CHUNK_SIZE,
    S_CHUNK_DATA,
    S_CHUNK_END,
    S_TRAILER,
    S_DONE,
    S_ERROR
};

void sim_http_parser_init(sim_http_parser *p, size_t max_body)
{
    memset(p, 0, sizeof *p);
    p->state = S_STATUS;
    p->max_body = max_body;
}

void sim_http_parser_free(sim_http_parser *p)
{
    esim_buf_free(&p->body);
}

bool sim_http_parser_started(const sim_http_parser *p)
{
    return p->state != S_STATUS || p->line_len > 0 || p->line_long || p->head_len > 0;
}

static sim_http_parse_rc fail(sim_http_parser *p, const char *why)
{
    p->state = S_ERROR;
    p->err = why;
    return SIM_HTTP_PARSE_ERROR;
}

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* Whether [s, s+n) equals the lower-case |word|, ignoring case. */
static bool word_is(const char *s, size_t n, const char *word)
{
    size_t k = 0;
    for (; k < n && word[k]; k++)
        if (lower((unsigned char)s[k]) != word[k])
            return false;
    return k == n && word[k] == '\0';
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Calls |fn| on each comma-separated token of [v, v+n), trimmed. */
static void tokens(const char *v, size_t n, void (*fn)(sim_http_parser *, const char *, size_t),
                   sim_http_parser *p)
{
    size_t i = 0;
    while (i < n) {
        size_t start = i;
        while (i < n && v[i] != ',')
            i++;
        size_t end = i;
        while (start < end && is_ows(v[start]))
            start++;
        while (end > start && is_ows(v[end - 1]))
            end--;
        if (end > start)
            fn(p, v + start, end - start);
        i++; /* past the comma */
    }
}

static void connection_token(sim_http_parser *p, const char *t, size_t n)
{
    if (word_is(t, n, "close"))
        p->close_hdr = true;
    else if (word_is(t, n, "keep-alive"))
        p->keep_hdr = true;
}

/* The status line "HTTP/1.x NNN reason". */
static sim_http_parse_rc status_line(sim_http_parser *p, const char *s, size_t n)
{
    if (n < 12 || memcmp(s, "HTTP/1.", 7) != 0 || s[7] < '0' || s[7] > '9' || s[8] != ' ')
        return fail(p, "not an HTTP/1.x status line");
    if (s[9] < '1' || s[9] > '5' || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9' ||
        (n > 12 && s[12] != ' '))
        return fail(p, "bad HTTP status code");
    p->minor = s[7] - '0';
    p->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    p->chunked = p->has_len = p->close_hdr = p->keep_hdr = false;
    p->remaining = 0;
    p->state = S_HEADER;
    return SIM_HTTP_PARSE_MORE;
}

/* One header line (without its line end); |long_line|: only its start. */
static sim_http_parse_rc header_line(sim_http_parser *p, const char *s, size_t n, bool long_line)
{
    const char *colon = memchr(s, ':', n);
    if (!colon || colon == s)
        return long_line ? SIM_HTTP_PARSE_MORE : fail(p, "malformed header line");
    size_t nl = (size_t)(colon - s);
    for (size_t k = 0; k < nl; k++)
        if (s[k] <= ' ' || s[k] == 0x7F)
            return fail(p, "malformed header name");
    bool is_len = word_is(s, nl, "content-length"), is_te = word_is(s, nl, "transfer-encoding"),
         is_conn = word_is(s, nl, "connection");
    if (!is_len && !is_te && !is_conn)
        return SIM_HTTP_PARSE_MORE;
    if (long_line)
        return fail(p, "framing header too long");
    const char *v = colon + 1, *end = s + n;
    while (v < end && is_ows(*v))
        v++;
    while (end > v && is_ows(end[-1]))
        end--;
    size_t vn = (size_t)(end - v);
    if (is_len) {
        if (vn == 0 || vn > 18)
            return fail(p, "bad Content-Length");
        uint64_t len = 0;
        for (size_t k = 0; k < vn; k++) {
            if (v[k] < '0' || v[k] > '9')
                return fail(p, "bad Content-Length");
            len = len * 10 + (uint64_t)(v[k] - '0');
        }
        if (p->has_len && p->remaining != len)
            return fail(p, "conflicting Content-Length headers");
        p->has_len = true;
        p->remaining = len;
    } else if (is_te) {
        /* The last coding must be chunked (what frames the body). */
        size_t start = vn;
        while (start > 0 && v[start - 1] != ',')
            start--;
        while (start < vn && is_ows(v[start]))
            start++;
        if (!word_is(v + start, vn - start, "chunked"))
            return fail(p, "unsupported transfer coding");
        p->chunked = true;
    } else {
        tokens(v, vn, connection_token, p);
    }
    return SIM_HTTP_PARSE_MORE;
}

/* The blank line after the headers: how the body is framed. */
static sim_http_parse_rc head_done(sim_http_parser *p)
{
    if (p->status >= 100 && p->status < 200) {
        if (p->status == 101)
            return fail(p, "unexpected protocol switch");
        p->state = S_STATUS; /* an interim answer: the real one follows */
        return SIM_HTTP_PARSE_MORE;
    }
    p->keep_alive = p->minor >= 1 ? !p->close_hdr : p->keep_hdr && !p->close_hdr;
    if (p->head_only || p->status == 204 || p->status == 304) {
        p->state = S_DONE;
    } else if (p->chunked) {
        p->state = S_CHUNK_SIZE;
    } else if (p->has_len) {
        p->state = p->remaining ? S_BODY_LEN : S_DONE;
    } else {
        p->keep_alive = false; /* the close ends the body */
        p->state = S_BODY_EOF;
    }
    return p->state == S_DONE ? SIM_HTTP_PARSE_DONE : SIM_HTTP_PARSE_MORE;
}

static sim_http_parse_rc chunk_size_line(sim_http_parser *p, const char *s, size_t n)
{
    size_t k = 0;
    uint64_t size = 0;
    for (; k < n; k++) {
        int c = lower((unsigned char)s[k]), d = c >= '0' && c <= '9'   ? c - '0'
                                                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                                                       : -1;
        if (d < 0)
            break;
        if (size >> 56)
            return fail(p, "chunk size too large");
        size = size * 16 + (uint64_t)d;
    }
    if (k == 0)
        return fail(p, "bad chunk size");
    while (k < n && is_ows(s[k]))
        k++;
    if (k < n && s[k] != ';')
        return fail(p, "bad chunk size");
    p->remaining = size;
    p->state = size ? S_CHUNK_DATA : S_TRAILER;
    return SIM_HTTP_PARSE_MORE;
}

/* A whole line is in p->line (without its end): what it means here. */
static sim_http_parse_rc line_done(sim_http_parser *p)
{
    const char *s = p->line;
    size_t n = p->line_len;
    bool long_line = p->line_long;
    p->line_len = 0;
    p->line_long = false;
    switch (p->state) {
    case S_STATUS:
        if (long_line)
            return fail(p, "status line too long");
        return status_line(p, s, n);
    case S_HEADER:
        if (n == 0 && !long_line)
            return head_done(p);
        return header_line(p, s, n, long_line);
    case S_CHUNK_SIZE:
        if (long_line)
            return fail(p, "chunk size line too long");
        return chunk_size_line(p, s, n);
    case S_CHUNK_END:
        if (n != 0 || long_line)
            return fail(p, "chunk not followed by its line end");
        p->state = S_CHUNK_SIZE;
        return SIM_HTTP_PARSE_MORE;
    case S_TRAILER:
        if (n == 0 && !long_line) {
            p->state = S_DONE;
            return SIM_HTTP_PARSE_DONE;
        }
        return SIM_HTTP_PARSE_MORE; /* trailer fields are not used */
    default:
        return fail(p, "internal parser state");
    }
}

static sim_http_parse_rc body_bytes(sim_http_parser *p, const char *data, size_t n)
{
    if (p->body.len + n > p->max_body) {
        p->too_big = true;
        return fail(p, "response too large");
    }
    if (esim_buf_append(&p->body, data, n) != ESIM_OK)
        return fail(p, "out of memory");
    return SIM_HTTP_PARSE_MORE;
}

sim_http_parse_rc sim_http_parse(sim_http_parser *p, const char *data, size_t len, size_t *used)
{
    size_t i = 0;
    sim_http_parse_rc rc = SIM_HTTP_PARSE_MORE;
    while (i < len && rc == SIM_HTTP_PARSE_MORE) {
        switch (p->state) {
        case S_BODY_LEN:
        case S_CHUNK_DATA: {
            size_t n = len - i;
            if ((uint64_t)n > p->remaining)
                n = (size_t)p->remaining;
            rc = body_bytes(p, data + i, n);
            i += n;
            p->remaining -= n;
            if (rc == SIM_HTTP_PARSE_MORE && p->remaining == 0) {
                if (p->state == S_BODY_LEN) {
                    p->state = S_DONE;
                    rc = SIM_HTTP_PARSE_DONE;
                } else {
                    p->state = S_CHUNK_END;
                }
            }
            break;
        }
        case S_BODY_EOF:
            rc = body_bytes(p, data + i, len - i);
            i = len;
            break;
        case S_DONE:
            *used = i;
            return SIM_HTTP_PARSE_DONE;
        case S_ERROR:
            *used = i;
            return SIM_HTTP_PARSE_ERROR;
        default: { /* a line */
            bool in_head = p->state == S_STATUS || p->state == S_HEADER;
            const char *nl = memchr(data + i, '\n', len - i);
            size_t n = nl ? (size_t)(nl - (data + i)) : len - i;
            if (in_head && (p->head_len += n + (nl ? 1 : 0)) > SIM_HTTP_MAX_HEAD) {
                rc = fail(p, "response head too large");
                break;
            }
            size_t room = sizeof p->line - 1 - p->line_len;
            if (n > room) {
                p->line_long = true;
                memcpy(p->line + p->line_len, data + i, room);
                p->line_len += room;
            } else {
                memcpy(p->line + p->line_len, data + i, n);
                p->line_len += n;
            }
            i += n;
            if (!nl)
                break;
            i++; /* the '\n' */
            if (!p->line_long && p->line_len > 0 && p->line[p->line_len - 1] == '\r')
                p->line_len--;
            rc = line_done(p);
            break;
        }
        }
    }
    *used = i;
    if (rc == SIM_HTTP_PARSE_MORE && p->state == S_DONE)
        rc = SIM_HTTP_PARSE_DONE;
    return rc;
}

sim_http_parse_rc sim_http_parse_eof(sim_http_parser *p)
{
    if (p->state == S_BODY_EOF) {
        p->state = S_DONE;
        return SIM_HTTP_PARSE_DONE;
    }
    if (p->state == S_DONE)
        return SIM_HTTP_PARSE_DONE;
    if (p->state != S_ERROR)
        fail(p, "connection closed before the whole response");
    return SIM_HTTP_PARSE_ERROR;
}
