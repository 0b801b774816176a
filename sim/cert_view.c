/*
 * cert_view.c — reads the fields of a DER X.509 certificate with a P-256
 * key and an ECDSA-SHA256 signature that the SM-DP+ needs to check an
 * eUICC certificate against an EUM it has already verified: the signed
 * TBSCertificate, the issuer and subject Names, the validity, the public
 * point, the subject's serialNumber (the EID) and the extensions that
 * matter. OpenSSL 3.0's d2i_X509 decodes the public key through its
 * provider decoders (several P-256 verifications' worth of CPU per
 * certificate); this reads the bytes in place. It checks the shape only:
 * the signature, the names and the dates are the caller's (rsp_crypto.c).
 * No OpenSSL here, so the fuzz target links this file alone.
 */
#include <string.h>
#include <time.h>

#include "sim/cert_view.h"

typedef struct {
    const unsigned char *p, *end;
} rd;

/* One TLV with |tag| (one byte) at r->p, strict DER lengths; false when
 * malformed or another tag (r unchanged then). */
static bool take(rd *r, unsigned char tag, const unsigned char **tlv, size_t *tlv_len,
                 const unsigned char **content, size_t *len)
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
    if (content) {
        *content = q;
        *len = n;
    }
    r->p = q + n;
    return true;
}

static bool enter(rd *r, unsigned char tag, rd *inner)
{
    const unsigned char *c;
    size_t n;
    if (!take(r, tag, NULL, NULL, &c, &n))
        return false;
    inner->p = c;
    inner->end = c + n;
    return true;
}

static bool is(const unsigned char *c, size_t n, const unsigned char *want, size_t want_len)
{
    return n == want_len && memcmp(c, want, n) == 0;
}

static const unsigned char OID_ECDSA_SHA256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
static const unsigned char OID_EC_PUBLIC_KEY[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};
static const unsigned char OID_P256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const unsigned char OID_SERIAL_NUMBER[] = {0x55, 0x04, 0x05};

/* AlgorithmIdentifier ecdsa-with-SHA256, without parameters (RFC 5758). */
static bool alg_ecdsa_sha256(rd *r)
{
    rd a;
    const unsigned char *oid;
    size_t n;
    return enter(r, 0x30, &a) && take(&a, 0x06, NULL, NULL, &oid, &n) &&
           is(oid, n, OID_ECDSA_SHA256, sizeof OID_ECDSA_SHA256) && a.p == a.end;
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

/* UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ (RFC 5280's
 * DER forms) into seconds since the epoch. */
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
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (mon < 1 || mon > 12 || day < 1 || day > mdays[mon - 1] || h > 23 || m > 59 || s > 59 ||
        h < 0 || m < 0 || s < 0)
        return false;
    /* Days since 1970-01-01 (civil-from-days, proleptic Gregorian). */
    int y = year - (mon <= 2);
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (mon + (mon > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    int64_t days = era * 146097 + doe - 719468;
    *out = days * 86400 + h * 3600 + m * 60 + s;
    return true;
}

/* The first serialNumber attribute of a Name (PrintableString or
 * UTF8String). */
static void name_serial(const unsigned char *c, size_t n, sim_cert_view *v)
{
    rd name = {c, c + n}, rdn, atv;
    while (name.p < name.end && enter(&name, 0x31, &rdn)) {
        while (rdn.p < rdn.end && enter(&rdn, 0x30, &atv)) {
            const unsigned char *oid, *val;
            size_t on, vn;
            if (!take(&atv, 0x06, NULL, NULL, &oid, &on))
                return;
            if (!is(oid, on, OID_SERIAL_NUMBER, sizeof OID_SERIAL_NUMBER))
                continue;
            if ((take(&atv, 0x13, NULL, NULL, &val, &vn) ||
                 take(&atv, 0x0c, NULL, NULL, &val, &vn)) &&
                !v->serial) {
                v->serial = val;
                v->serial_len = vn;
            }
            return;
        }
    }
}

/* Extensions: basicConstraints and keyUsage read, any other critical one
 * refused (a verifier must not accept what it does not understand). */
static bool extensions(rd *r, sim_cert_view *v)
{
    static const unsigned char OID_BC[] = {0x55, 0x1d, 0x13}, OID_KU[] = {0x55, 0x1d, 0x0f},
                               OID_POLICIES[] = {0x55, 0x1d, 0x20}, OID_SAN[] = {0x55, 0x1d, 0x11},
                               OID_EKU[] = {0x55, 0x1d, 0x25};
    rd wrap, list, ext;
    if (!enter(r, 0xa3, &wrap) || !enter(&wrap, 0x30, &list) || wrap.p != wrap.end)
        return false;
    while (list.p < list.end) {
        const unsigned char *oid, *crit, *val;
        size_t on, cn, vn;
        bool critical = false;
        if (!enter(&list, 0x30, &ext) || !take(&ext, 0x06, NULL, NULL, &oid, &on))
            return false;
        if (take(&ext, 0x01, NULL, NULL, &crit, &cn)) {
            if (cn != 1 || crit[0] != 0xff) /* DER: only TRUE is written */
                return false;
            critical = true;
        }
        if (!take(&ext, 0x04, NULL, NULL, &val, &vn) || ext.p != ext.end)
            return false;
        rd in = {val, val + vn};
        if (is(oid, on, OID_BC, sizeof OID_BC)) {
            rd seq;
            const unsigned char *b;
            size_t bn;
            if (!enter(&in, 0x30, &seq))
                return false;
            v->has_basic_constraints = true;
            if (take(&seq, 0x01, NULL, NULL, &b, &bn)) {
                if (bn != 1 || b[0] != 0xff)
                    return false;
                v->is_ca = true;
            }
        } else if (is(oid, on, OID_KU, sizeof OID_KU)) {
            const unsigned char *b;
            size_t bn;
            if (!take(&in, 0x03, NULL, NULL, &b, &bn) || bn < 2 || bn > 3 || b[0] > 7)
                return false;
            v->has_key_usage = true;
            v->key_usage = (unsigned)b[1] | (bn == 3 ? (unsigned)b[2] << 8 : 0);
        } else if (critical && !is(oid, on, OID_POLICIES, sizeof OID_POLICIES) &&
                   !is(oid, on, OID_SAN, sizeof OID_SAN) && !is(oid, on, OID_EKU, sizeof OID_EKU)) {
            return false;
        }
    }
    return true;
}

bool sim_cert_view_parse(const unsigned char *der, size_t len, sim_cert_view *v)
{
    memset(v, 0, sizeof *v);
    rd all = {der, der + len}, cert, tbs, spki, alg, val;
    const unsigned char *c, *sig;
    size_t n, sig_len;
    if (!enter(&all, 0x30, &cert) || all.p != all.end)
        return false;
    if (!take(&cert, 0x30, &v->tbs, &v->tbs_len, &c, &n))
        return false;
    tbs = (rd){c, c + n};
    /* version [0] v3 */
    rd ver;
    if (!enter(&tbs, 0xa0, &ver) || !take(&ver, 0x02, NULL, NULL, &c, &n) || n != 1 || c[0] != 2 ||
        ver.p != ver.end)
        return false;
    if (!take(&tbs, 0x02, NULL, NULL, &c, &n) || n == 0 || n > 20) /* serialNumber */
        return false;
    if (!alg_ecdsa_sha256(&tbs))
        return false;
    if (!take(&tbs, 0x30, &v->issuer, &v->issuer_len, NULL, NULL))
        return false;
    if (!enter(&tbs, 0x30, &val) || !take_time(&val, &v->not_before) ||
        !take_time(&val, &v->not_after) || val.p != val.end)
        return false;
    if (!take(&tbs, 0x30, &v->subject, &v->subject_len, &c, &n))
        return false;
    name_serial(c, n, v);
    /* SubjectPublicKeyInfo: id-ecPublicKey, prime256v1, an uncompressed point */
    const unsigned char *oid, *bits;
    size_t on, bn;
    if (!enter(&tbs, 0x30, &spki) || !enter(&spki, 0x30, &alg) ||
        !take(&alg, 0x06, NULL, NULL, &oid, &on) ||
        !is(oid, on, OID_EC_PUBLIC_KEY, sizeof OID_EC_PUBLIC_KEY) ||
        !take(&alg, 0x06, NULL, NULL, &oid, &on) || !is(oid, on, OID_P256, sizeof OID_P256) ||
        alg.p != alg.end || !take(&spki, 0x03, NULL, NULL, &bits, &bn) || spki.p != spki.end ||
        bn != 66 || bits[0] != 0 || bits[1] != 0x04)
        return false;
    v->point = bits + 1;
    /* issuerUniqueID [1] and subjectUniqueID [2] are not used by RSP; refuse */
    if (tbs.p < tbs.end && !extensions(&tbs, v))
        return false;
    if (tbs.p != tbs.end)
        return false;
    /* signatureAlgorithm, then the signature: a BIT STRING holding the
     * DER ECDSA-Sig-Value, passed on as it is. */
    if (!alg_ecdsa_sha256(&cert) || !take(&cert, 0x03, NULL, NULL, &sig, &sig_len) ||
        cert.p != cert.end || sig_len < 2 || sig[0] != 0)
        return false;
    rd s = {sig + 1, sig + sig_len}, seq;
    if (!enter(&s, 0x30, &seq) || s.p != s.end)
        return false;
    v->sig = sig + 1;
    v->sig_len = sig_len - 1;
    return true;
}
