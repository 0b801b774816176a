/*
 * der.c — reading strict DER in place (der.h). Every rule errs towards
 * refusing: its callers hand what they refuse to OpenSSL, or refuse it.
 */
#include <string.h>

#include "core/der.h"

bool esim_der_take(esim_der *r, unsigned char tag, const unsigned char **tlv, size_t *tlv_len,
                   const unsigned char **val, size_t *len)
{
    const unsigned char *q = r->p;
    if (r->end - q < 2 || *q != tag)
        return false;
    q++;
    size_t n = *q++;
    if (n & 0x80) {
        size_t k = n & 0x7f;
        if (k == 0 || k > 3 || (size_t)(r->end - q) < k || *q == 0)
            return false;
        n = 0;
        while (k--)
            n = (n << 8) | *q++;
        if (n < 0x80)
            return false; /* not the shortest form */
    }
    if ((size_t)(r->end - q) < n)
        return false;
    if (tlv) {
        *tlv = r->p;
        *tlv_len = (size_t)(q + n - r->p);
    }
    if (val) {
        *val = q;
        *len = n;
    }
    r->p = q + n;
    return true;
}

bool esim_der_enter(esim_der *r, unsigned char tag, esim_der *in)
{
    const unsigned char *v;
    size_t n;
    if (!esim_der_take(r, tag, NULL, NULL, &v, &n))
        return false;
    *in = (esim_der){v, v + n};
    return true;
}

bool esim_der_is(const unsigned char *v, size_t n, const unsigned char *want, size_t want_len)
{
    return n == want_len && memcmp(v, want, n) == 0;
}

static int digits(const unsigned char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

bool esim_der_time(esim_der *r, int64_t *out)
{
    const unsigned char *c;
    size_t n;
    int year;
    if (esim_der_take(r, 0x17, NULL, NULL, &c, &n)) {
        if (n != 13 || (year = digits(c, 2)) < 0)
            return false;
        year += year < 50 ? 2000 : 1900;
        c += 2;
    } else if (esim_der_take(r, 0x18, NULL, NULL, &c, &n)) {
        if (n != 15 || (year = digits(c, 4)) < 0)
            return false;
        c += 4;
    } else {
        return false;
    }
    if (c[10] != 'Z')
        return false;
    int mon = digits(c, 2), day = digits(c + 2, 2), h = digits(c + 4, 2), m = digits(c + 6, 2),
        s = digits(c + 8, 2);
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    if (mon < 1 || mon > 12 || day < 1 || day > mdays[mon - 1] + (mon == 2 && leap) || h < 0 ||
        h > 23 || m < 0 || m > 59 || s < 0 || s > 59)
        return false;
    /* Days since 1970-01-01, proleptic Gregorian (civil-from-days). */
    int64_t y = year - (mon <= 2);
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (mon + (mon > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    *out = (era * 146097 + doe - 719468) * 86400 + h * 3600 + m * 60 + s;
    return true;
}
