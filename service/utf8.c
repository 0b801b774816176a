/*
 * utf8.c — text at the service's edges must be UTF-8: jansson refuses any
 * other string, and a JSON answer with one field missing (or none at all)
 * is worse than a clear 400. Route parameters and queries are checked and
 * refused; text devices send is kept, with each byte that is not part of a
 * valid sequence replaced by '?'.
 */
#include <string.h>

#include "service/service_internal.h"

/* The length of the valid sequence at |p| (at most |n| bytes), or 0. The
 * rules are jansson's: no overlong forms, no surrogates, nothing above
 * U+10FFFF. */
static size_t sequence(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

bool svc_utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    while (n) {
        size_t k = sequence(p, n);
        if (!k)
            return false;
        p += k;
        n -= k;
    }
    return true;
}

void svc_utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    size_t n = strlen(s);
    while (n) {
        size_t k = sequence(p, n);
        if (!k) {
            *p = '?';
            k = 1;
        }
        p += k;
        n -= k;
    }
}
