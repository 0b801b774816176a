/*
 * cert_der.c — reads a device identity certificate in place (cert_der.h).
 * Strict DER and one narrow shape: what it refuses goes to OpenSSL, so
 * every rule here errs towards refusing.
 */
#include <string.h>

#include "service/cert_der.h"

typedef struct {
    const unsigned char *p, *end;
} rd;

/* One TLV with the one-byte |tag| at r->p: definite length in its shortest
 * form. False (r unchanged) when malformed or another tag. */
static bool take(rd *r, unsigned char tag, const unsigned char **tlv, size_t *tlv_len,
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
            return false;
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

static bool enter(rd *r, unsigned char tag, rd *in)
{
    const unsigned char *v;
    size_t n;
    if (!take(r, tag, NULL, NULL, &v, &n))
        return false;
    *in = (rd){v, v + n};
    return true;
}

static bool is(const unsigned char *v, size_t n, const unsigned char *want, size_t want_len)
{
    return n == want_len && memcmp(v, want, n) == 0;
}

/* An OBJECT IDENTIFIER's contents: each subidentifier in its shortest
 * form, the last one complete. */
static bool oid_ok(const unsigned char *v, size_t n)
{
    if (n == 0 || v[n - 1] & 0x80)
        return false;
    for (size_t i = 0; i < n; i++)
        if (v[i] == 0x80 && (i == 0 || !(v[i - 1] & 0x80)))
            return false;
    return true;
}

static bool take_oid(rd *r, const unsigned char **v, size_t *n)
{
    return take(r, 0x06, NULL, NULL, v, n) && oid_ok(*v, *n);
}

static const unsigned char OID_ECDSA_SHA256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
static const unsigned char OID_RSA_SHA256[] = {0x2a, 0x86, 0x48, 0x86, 0xf7,
                                               0x0d, 0x01, 0x01, 0x0b};
static const unsigned char OID_EC_PUBLIC_KEY[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};
static const unsigned char OID_P256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

/* A signature AlgorithmIdentifier: CERT_DER_*, 0 for any other. */
static int sig_alg(rd *r)
{
    rd a;
    const unsigned char *oid, *nul;
    size_t n, nn;
    if (!enter(r, 0x30, &a) || !take_oid(&a, &oid, &n))
        return 0;
    if (is(oid, n, OID_ECDSA_SHA256, sizeof OID_ECDSA_SHA256) && a.p == a.end)
        return CERT_DER_ECDSA_SHA256;
    if (is(oid, n, OID_RSA_SHA256, sizeof OID_RSA_SHA256) &&
        take(&a, 0x05, NULL, NULL, &nul, &nn) && nn == 0 && a.p == a.end)
        return CERT_DER_RSA_SHA256;
    return 0;
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

/* UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ into seconds
 * since the epoch (RFC 5280's forms only). */
static bool take_time(rd *r, int64_t *out)
{
    const unsigned char *c;
    size_t n;
    int year;
    if (take(r, 0x17, NULL, NULL, &c, &n)) {
        if (n != 13 || (year = digits(c, 2)) < 0)
            return false;
        year += year < 50 ? 2000 : 1900;
        c += 2;
    } else if (take(r, 0x18, NULL, NULL, &c, &n)) {
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
    /* Days since 1970-01-01, proleptic Gregorian. */
    int64_t y = year - (mon <= 2);
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (mon + (mon > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    *out = (era * 146097 + doe - 719468) * 86400 + h * 3600 + m * 60 + s;
    return true;
}

/* A Name: SEQUENCE OF non-empty SETs of SEQUENCE { OID, string }, every
 * value a non-empty PrintableString, UTF8String or IA5String of printable
 * ASCII (d2i_X509 converts the values of Names and refuses a certificate
 * whose values do not convert: invalid UTF-8, say). */
static bool take_name(rd *r, const unsigned char **tlv, size_t *tlv_len)
{
    rd name, rdn, atv;
    const unsigned char *c;
    size_t n;
    if (!take(r, 0x30, tlv, tlv_len, &c, &n))
        return false;
    name = (rd){c, c + n};
    while (name.p < name.end) {
        if (!enter(&name, 0x31, &rdn) || rdn.p == rdn.end)
            return false;
        while (rdn.p < rdn.end) {
            const unsigned char *oid, *val;
            size_t on, vn;
            if (!enter(&rdn, 0x30, &atv) || !take_oid(&atv, &oid, &on) || atv.end - atv.p < 2)
                return false;
            unsigned char tag = *atv.p;
            if (!take(&atv, tag, NULL, NULL, &val, &vn) || atv.p != atv.end)
                return false;
            if ((tag != 0x13 && tag != 0x0c && tag != 0x16) || vn == 0)
                return false;
            for (size_t i = 0; i < vn; i++)
                if (val[i] < 0x20 || val[i] > 0x7e)
                    return false;
        }
    }
    return true;
}

enum { EXT_BC = 1, EXT_KU = 2, EXT_EKU = 4, EXT_SKI = 8, EXT_AKI = 16 };

/* One extension's value (the OCTET STRING's contents) by its kind. */
static bool ext_value(unsigned kind, rd in, cert_der_view *v)
{
    const unsigned char *c;
    size_t n;
    rd seq;
    switch (kind) {
    case EXT_BC: /* SEQUENCE {} : cA absent (DER's FALSE), no pathLenConstraint */
        return enter(&in, 0x30, &seq) && seq.p == seq.end && in.p == in.end;
    case EXT_KU:
        return take(&in, 0x03, NULL, NULL, &c, &n) && in.p == in.end && n >= 2 && n <= 3 &&
               c[0] <= 7;
    case EXT_EKU:
        if (!enter(&in, 0x30, &seq) || in.p != in.end || seq.p == seq.end)
            return false;
        while (seq.p < seq.end)
            if (!take_oid(&seq, &c, &n))
                return false;
        return true;
    case EXT_SKI:
        if (!take(&in, 0x04, NULL, NULL, &c, &n) || in.p != in.end || n == 0 || n > 64)
            return false;
        v->ski = c;
        v->ski_len = n;
        return true;
    case EXT_AKI: /* SEQUENCE { [0] keyIdentifier } and nothing else */
        if (!enter(&in, 0x30, &seq) || in.p != in.end || !take(&seq, 0x80, NULL, NULL, &c, &n) ||
            seq.p != seq.end || n == 0 || n > 64)
            return false;
        v->aki = c;
        v->aki_len = n;
        return true;
    }
    return false;
}

static bool extensions(rd *r, cert_der_view *v)
{
    static const struct {
        unsigned char oid[3];
        unsigned kind;
        bool may_be_critical;
    } known[] = {{{0x55, 0x1d, 0x13}, EXT_BC, true},
                 {{0x55, 0x1d, 0x0f}, EXT_KU, true},
                 {{0x55, 0x1d, 0x25}, EXT_EKU, true},
                 {{0x55, 0x1d, 0x0e}, EXT_SKI, false},
                 {{0x55, 0x1d, 0x23}, EXT_AKI, false}};
    rd wrap, list, ext;
    unsigned seen = 0;
    if (!enter(r, 0xa3, &wrap) || !enter(&wrap, 0x30, &list) || wrap.p != wrap.end ||
        list.p == list.end)
        return false;
    while (list.p < list.end) {
        const unsigned char *oid, *crit, *val;
        size_t on, cn, vn;
        bool critical = false;
        if (!enter(&list, 0x30, &ext) || !take_oid(&ext, &oid, &on))
            return false;
        if (take(&ext, 0x01, NULL, NULL, &crit, &cn)) {
            if (cn != 1 || crit[0] != 0xff) /* DER writes only TRUE */
                return false;
            critical = true;
        }
        if (!take(&ext, 0x04, NULL, NULL, &val, &vn) || ext.p != ext.end)
            return false;
        size_t k = 0;
        while (k < sizeof known / sizeof known[0] && !is(oid, on, known[k].oid, 3))
            k++;
        if (k == sizeof known / sizeof known[0] || (seen & known[k].kind) ||
            (critical && !known[k].may_be_critical))
            return false;
        seen |= known[k].kind;
        if (!ext_value(known[k].kind, (rd){val, val + vn}, v))
            return false;
    }
    return true;
}

bool cert_der_parse(const unsigned char *der, size_t len, cert_der_view *v)
{
    memset(v, 0, sizeof *v);
    rd all = {der, der + len}, cert, tbs, ver, validity, spki, alg;
    const unsigned char *c;
    size_t n;
    if (!der || !enter(&all, 0x30, &cert) || all.p != all.end ||
        !take(&cert, 0x30, &v->tbs, &v->tbs_len, &c, &n))
        goto no;
    tbs = (rd){c, c + n};
    if (!enter(&tbs, 0xa0, &ver) || !take(&ver, 0x02, NULL, NULL, &c, &n) || n != 1 || c[0] != 2 ||
        ver.p != ver.end)
        goto no;
    /* serialNumber: positive, shortest form, at most 20 bytes */
    if (!take(&tbs, 0x02, &v->serial, &v->serial_len, &c, &n) || n == 0 || n > 20 ||
        (c[0] & 0x80) || (n > 1 && c[0] == 0 && !(c[1] & 0x80)))
        goto no;
    if (!(v->sig_alg = sig_alg(&tbs)))
        goto no;
    if (!take_name(&tbs, &v->issuer, &v->issuer_len))
        goto no;
    if (!enter(&tbs, 0x30, &validity) || !take_time(&validity, &v->not_before) ||
        !take_time(&validity, &v->not_after) || validity.p != validity.end)
        goto no;
    if (!take_name(&tbs, &v->subject, &v->subject_len))
        goto no;
    const unsigned char *oid, *bits;
    size_t on, bn;
    if (!enter(&tbs, 0x30, &spki) || !enter(&spki, 0x30, &alg) || !take_oid(&alg, &oid, &on) ||
        !is(oid, on, OID_EC_PUBLIC_KEY, sizeof OID_EC_PUBLIC_KEY) || !take_oid(&alg, &oid, &on) ||
        !is(oid, on, OID_P256, sizeof OID_P256) || alg.p != alg.end ||
        !take(&spki, 0x03, NULL, NULL, &bits, &bn) || spki.p != spki.end || bn != 66 ||
        bits[0] != 0 || bits[1] != 0x04)
        goto no;
    v->point = bits + 1;
    if (tbs.p < tbs.end && !extensions(&tbs, v))
        goto no;
    if (tbs.p != tbs.end)
        goto no;
    /* signatureAlgorithm (the TBS's), then the signature BIT STRING */
    const unsigned char *sig;
    size_t sig_len;
    if (sig_alg(&cert) != v->sig_alg || !take(&cert, 0x03, NULL, NULL, &sig, &sig_len) ||
        cert.p != cert.end || sig_len < 2 || sig[0] != 0)
        goto no;
    if (v->sig_alg == CERT_DER_ECDSA_SHA256) {
        rd s = {sig + 1, sig + sig_len}, seq;
        if (!enter(&s, 0x30, &seq) || s.p != s.end)
            goto no;
    }
    v->sig = sig + 1;
    v->sig_len = sig_len - 1;
    return true;
no:
    memset(v, 0, sizeof *v);
    return false;
}
