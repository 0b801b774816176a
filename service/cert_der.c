/*
 * cert_der.c — reads a device identity certificate in place (cert_der.h).
 * Strict DER and one narrow shape: what it refuses goes to OpenSSL, so
 * every rule here errs towards refusing.
 */
#include <string.h>

#include "core/der.h"

#include "service/cert_der.h"

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

static bool take_oid(esim_der *r, const unsigned char **v, size_t *n)
{
    return esim_der_take(r, 0x06, NULL, NULL, v, n) && oid_ok(*v, *n);
}

static const unsigned char OID_ECDSA_SHA256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
static const unsigned char OID_RSA_SHA256[] = {0x2a, 0x86, 0x48, 0x86, 0xf7,
                                               0x0d, 0x01, 0x01, 0x0b};
static const unsigned char OID_EC_PUBLIC_KEY[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};
static const unsigned char OID_P256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

/* A signature AlgorithmIdentifier: CERT_DER_*, 0 for any other. */
static int sig_alg(esim_der *r)
{
    esim_der a;
    const unsigned char *oid, *nul;
    size_t n, nn;
    if (!esim_der_enter(r, 0x30, &a) || !take_oid(&a, &oid, &n))
        return 0;
    if (esim_der_is(oid, n, OID_ECDSA_SHA256, sizeof OID_ECDSA_SHA256) && a.p == a.end)
        return CERT_DER_ECDSA_SHA256;
    if (esim_der_is(oid, n, OID_RSA_SHA256, sizeof OID_RSA_SHA256) &&
        esim_der_take(&a, 0x05, NULL, NULL, &nul, &nn) && nn == 0 && a.p == a.end)
        return CERT_DER_RSA_SHA256;
    return 0;
}

/* A Name: SEQUENCE OF non-empty SETs of SEQUENCE { OID, string }, every
 * value a non-empty PrintableString, UTF8String or IA5String of printable
 * ASCII (d2i_X509 converts the values of Names and refuses a certificate
 * whose values do not convert: invalid UTF-8, say). */
static bool take_name(esim_der *r, const unsigned char **tlv, size_t *tlv_len)
{
    esim_der name, rdn, atv;
    const unsigned char *c;
    size_t n;
    if (!esim_der_take(r, 0x30, tlv, tlv_len, &c, &n))
        return false;
    name = (esim_der){c, c + n};
    while (name.p < name.end) {
        if (!esim_der_enter(&name, 0x31, &rdn) || rdn.p == rdn.end)
            return false;
        while (rdn.p < rdn.end) {
            const unsigned char *oid, *val;
            size_t on, vn;
            if (!esim_der_enter(&rdn, 0x30, &atv) || !take_oid(&atv, &oid, &on) ||
                atv.end - atv.p < 2)
                return false;
            unsigned char tag = *atv.p;
            if (!esim_der_take(&atv, tag, NULL, NULL, &val, &vn) || atv.p != atv.end)
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
static bool ext_value(unsigned kind, esim_der in, cert_der_view *v)
{
    const unsigned char *c;
    size_t n;
    esim_der seq;
    switch (kind) {
    case EXT_BC: /* SEQUENCE {} : cA absent (DER's FALSE), no pathLenConstraint */
        return esim_der_enter(&in, 0x30, &seq) && seq.p == seq.end && in.p == in.end;
    case EXT_KU:
        return esim_der_take(&in, 0x03, NULL, NULL, &c, &n) && in.p == in.end && n >= 2 && n <= 3 &&
               c[0] <= 7;
    case EXT_EKU:
        if (!esim_der_enter(&in, 0x30, &seq) || in.p != in.end || seq.p == seq.end)
            return false;
        while (seq.p < seq.end)
            if (!take_oid(&seq, &c, &n))
                return false;
        return true;
    case EXT_SKI:
        if (!esim_der_take(&in, 0x04, NULL, NULL, &c, &n) || in.p != in.end || n == 0 || n > 64)
            return false;
        v->ski = c;
        v->ski_len = n;
        return true;
    case EXT_AKI: /* SEQUENCE { [0] keyIdentifier } and nothing else */
        if (!esim_der_enter(&in, 0x30, &seq) || in.p != in.end ||
            !esim_der_take(&seq, 0x80, NULL, NULL, &c, &n) || seq.p != seq.end || n == 0 || n > 64)
            return false;
        v->aki = c;
        v->aki_len = n;
        return true;
    }
    return false;
}

static bool extensions(esim_der *r, cert_der_view *v)
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
    esim_der wrap, list, ext;
    unsigned seen = 0;
    if (!esim_der_enter(r, 0xa3, &wrap) || !esim_der_enter(&wrap, 0x30, &list) ||
        wrap.p != wrap.end || list.p == list.end)
        return false;
    while (list.p < list.end) {
        const unsigned char *oid, *crit, *val;
        size_t on, cn, vn;
        bool critical = false;
        if (!esim_der_enter(&list, 0x30, &ext) || !take_oid(&ext, &oid, &on))
            return false;
        if (esim_der_take(&ext, 0x01, NULL, NULL, &crit, &cn)) {
            if (cn != 1 || crit[0] != 0xff) /* DER writes only TRUE */
                return false;
            critical = true;
        }
        if (!esim_der_take(&ext, 0x04, NULL, NULL, &val, &vn) || ext.p != ext.end)
            return false;
        size_t k = 0;
        while (k < sizeof known / sizeof known[0] && !esim_der_is(oid, on, known[k].oid, 3))
            k++;
        if (k == sizeof known / sizeof known[0] || (seen & known[k].kind) ||
            (critical && !known[k].may_be_critical))
            return false;
        seen |= known[k].kind;
        if (!ext_value(known[k].kind, (esim_der){val, val + vn}, v))
            return false;
    }
    return true;
}

bool cert_der_parse(const unsigned char *der, size_t len, cert_der_view *v)
{
    memset(v, 0, sizeof *v);
    esim_der all = {der, der + len}, cert, tbs, ver, validity, spki, alg;
    const unsigned char *c;
    size_t n;
    if (!der || !esim_der_enter(&all, 0x30, &cert) || all.p != all.end ||
        !esim_der_take(&cert, 0x30, &v->tbs, &v->tbs_len, &c, &n))
        goto no;
    tbs = (esim_der){c, c + n};
    if (!esim_der_enter(&tbs, 0xa0, &ver) || !esim_der_take(&ver, 0x02, NULL, NULL, &c, &n) ||
        n != 1 || c[0] != 2 || ver.p != ver.end)
        goto no;
    /* serialNumber: positive, shortest form, at most 20 bytes */
    if (!esim_der_take(&tbs, 0x02, &v->serial, &v->serial_len, &c, &n) || n == 0 || n > 20 ||
        (c[0] & 0x80) || (n > 1 && c[0] == 0 && !(c[1] & 0x80)))
        goto no;
    if (!(v->sig_alg = sig_alg(&tbs)))
        goto no;
    if (!take_name(&tbs, &v->issuer, &v->issuer_len))
        goto no;
    if (!esim_der_enter(&tbs, 0x30, &validity) || !esim_der_time(&validity, &v->not_before) ||
        !esim_der_time(&validity, &v->not_after) || validity.p != validity.end)
        goto no;
    if (!take_name(&tbs, &v->subject, &v->subject_len))
        goto no;
    const unsigned char *oid, *bits;
    size_t on, bn;
    if (!esim_der_enter(&tbs, 0x30, &spki) || !esim_der_enter(&spki, 0x30, &alg) ||
        !take_oid(&alg, &oid, &on) ||
        !esim_der_is(oid, on, OID_EC_PUBLIC_KEY, sizeof OID_EC_PUBLIC_KEY) ||
        !take_oid(&alg, &oid, &on) || !esim_der_is(oid, on, OID_P256, sizeof OID_P256) ||
        alg.p != alg.end || !esim_der_take(&spki, 0x03, NULL, NULL, &bits, &bn) ||
        spki.p != spki.end || bn != 66 || bits[0] != 0 || bits[1] != 0x04)
        goto no;
    v->point = bits + 1;
    if (tbs.p < tbs.end && !extensions(&tbs, v))
        goto no;
    if (tbs.p != tbs.end)
        goto no;
    /* signatureAlgorithm (the TBS's), then the signature BIT STRING */
    const unsigned char *sig;
    size_t sig_len;
    if (sig_alg(&cert) != v->sig_alg || !esim_der_take(&cert, 0x03, NULL, NULL, &sig, &sig_len) ||
        cert.p != cert.end || sig_len < 2 || sig[0] != 0)
        goto no;
    if (v->sig_alg == CERT_DER_ECDSA_SHA256) {
        esim_der s = {sig + 1, sig + sig_len}, seq;
        if (!esim_der_enter(&s, 0x30, &seq) || s.p != s.end)
            goto no;
    }
    v->sig = sig + 1;
    v->sig_len = sig_len - 1;
    return true;
no:
    memset(v, 0, sizeof *v);
    return false;
}
