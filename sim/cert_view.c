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

#include "core/der.h"
#include "sim/cert_view.h"

static const unsigned char OID_ECDSA_SHA256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
static const unsigned char OID_EC_PUBLIC_KEY[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};
static const unsigned char OID_P256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const unsigned char OID_SERIAL_NUMBER[] = {0x55, 0x04, 0x05};

/* AlgorithmIdentifier ecdsa-with-SHA256, without parameters (RFC 5758). */
static bool alg_ecdsa_sha256(esim_der *r)
{
    esim_der a;
    const unsigned char *oid;
    size_t n;
    return esim_der_enter(r, 0x30, &a) && esim_der_take(&a, 0x06, NULL, NULL, &oid, &n) &&
           esim_der_is(oid, n, OID_ECDSA_SHA256, sizeof OID_ECDSA_SHA256) && a.p == a.end;
}

/* The first serialNumber attribute of a Name (PrintableString or
 * UTF8String). */
static void name_serial(const unsigned char *c, size_t n, sim_cert_view *v)
{
    esim_der name = {c, c + n}, rdn, atv;
    while (name.p < name.end && esim_der_enter(&name, 0x31, &rdn)) {
        while (rdn.p < rdn.end && esim_der_enter(&rdn, 0x30, &atv)) {
            const unsigned char *oid, *val;
            size_t on, vn;
            if (!esim_der_take(&atv, 0x06, NULL, NULL, &oid, &on))
                return;
            if (!esim_der_is(oid, on, OID_SERIAL_NUMBER, sizeof OID_SERIAL_NUMBER))
                continue;
            if ((esim_der_take(&atv, 0x13, NULL, NULL, &val, &vn) ||
                 esim_der_take(&atv, 0x0c, NULL, NULL, &val, &vn)) &&
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
static bool extensions(esim_der *r, sim_cert_view *v)
{
    static const unsigned char OID_BC[] = {0x55, 0x1d, 0x13}, OID_KU[] = {0x55, 0x1d, 0x0f},
                               OID_POLICIES[] = {0x55, 0x1d, 0x20}, OID_SAN[] = {0x55, 0x1d, 0x11},
                               OID_EKU[] = {0x55, 0x1d, 0x25};
    esim_der wrap, list, ext;
    if (!esim_der_enter(r, 0xa3, &wrap) || !esim_der_enter(&wrap, 0x30, &list) ||
        wrap.p != wrap.end)
        return false;
    while (list.p < list.end) {
        const unsigned char *oid, *crit, *val;
        size_t on, cn, vn;
        bool critical = false;
        if (!esim_der_enter(&list, 0x30, &ext) || !esim_der_take(&ext, 0x06, NULL, NULL, &oid, &on))
            return false;
        if (esim_der_take(&ext, 0x01, NULL, NULL, &crit, &cn)) {
            if (cn != 1 || crit[0] != 0xff) /* DER: only TRUE is written */
                return false;
            critical = true;
        }
        if (!esim_der_take(&ext, 0x04, NULL, NULL, &val, &vn) || ext.p != ext.end)
            return false;
        esim_der in = {val, val + vn};
        if (esim_der_is(oid, on, OID_BC, sizeof OID_BC)) {
            esim_der seq;
            const unsigned char *b;
            size_t bn;
            if (!esim_der_enter(&in, 0x30, &seq))
                return false;
            v->has_basic_constraints = true;
            if (esim_der_take(&seq, 0x01, NULL, NULL, &b, &bn)) {
                if (bn != 1 || b[0] != 0xff)
                    return false;
                v->is_ca = true;
            }
        } else if (esim_der_is(oid, on, OID_KU, sizeof OID_KU)) {
            const unsigned char *b;
            size_t bn;
            if (!esim_der_take(&in, 0x03, NULL, NULL, &b, &bn) || bn < 2 || bn > 3 || b[0] > 7)
                return false;
            v->has_key_usage = true;
            v->key_usage = (unsigned)b[1] | (bn == 3 ? (unsigned)b[2] << 8 : 0);
        } else if (critical && !esim_der_is(oid, on, OID_POLICIES, sizeof OID_POLICIES) &&
                   !esim_der_is(oid, on, OID_SAN, sizeof OID_SAN) &&
                   !esim_der_is(oid, on, OID_EKU, sizeof OID_EKU)) {
            return false;
        }
    }
    return true;
}

bool sim_cert_view_parse(const unsigned char *der, size_t len, sim_cert_view *v)
{
    memset(v, 0, sizeof *v);
    esim_der all = {der, der + len}, cert, tbs, spki, alg, val;
    const unsigned char *c, *sig;
    size_t n, sig_len;
    if (!esim_der_enter(&all, 0x30, &cert) || all.p != all.end)
        return false;
    if (!esim_der_take(&cert, 0x30, &v->tbs, &v->tbs_len, &c, &n))
        return false;
    tbs = (esim_der){c, c + n};
    /* version [0] v3 */
    esim_der ver;
    if (!esim_der_enter(&tbs, 0xa0, &ver) || !esim_der_take(&ver, 0x02, NULL, NULL, &c, &n) ||
        n != 1 || c[0] != 2 || ver.p != ver.end)
        return false;
    if (!esim_der_take(&tbs, 0x02, NULL, NULL, &c, &n) || n == 0 || n > 20) /* serialNumber */
        return false;
    if (!alg_ecdsa_sha256(&tbs))
        return false;
    if (!esim_der_take(&tbs, 0x30, &v->issuer, &v->issuer_len, NULL, NULL))
        return false;
    if (!esim_der_enter(&tbs, 0x30, &val) || !esim_der_time(&val, &v->not_before) ||
        !esim_der_time(&val, &v->not_after) || val.p != val.end)
        return false;
    if (!esim_der_take(&tbs, 0x30, &v->subject, &v->subject_len, &c, &n))
        return false;
    name_serial(c, n, v);
    /* SubjectPublicKeyInfo: id-ecPublicKey, prime256v1, an uncompressed point */
    const unsigned char *oid, *bits;
    size_t on, bn;
    if (!esim_der_enter(&tbs, 0x30, &spki) || !esim_der_enter(&spki, 0x30, &alg) ||
        !esim_der_take(&alg, 0x06, NULL, NULL, &oid, &on) ||
        !esim_der_is(oid, on, OID_EC_PUBLIC_KEY, sizeof OID_EC_PUBLIC_KEY) ||
        !esim_der_take(&alg, 0x06, NULL, NULL, &oid, &on) ||
        !esim_der_is(oid, on, OID_P256, sizeof OID_P256) || alg.p != alg.end ||
        !esim_der_take(&spki, 0x03, NULL, NULL, &bits, &bn) || spki.p != spki.end || bn != 66 ||
        bits[0] != 0 || bits[1] != 0x04)
        return false;
    v->point = bits + 1;
    /* issuerUniqueID [1] and subjectUniqueID [2] are not used by RSP; refuse */
    if (tbs.p < tbs.end && !extensions(&tbs, v))
        return false;
    if (tbs.p != tbs.end)
        return false;
    /* signatureAlgorithm, then the signature: a BIT STRING holding the
     * DER ECDSA-Sig-Value, passed on as it is. */
    if (!alg_ecdsa_sha256(&cert) || !esim_der_take(&cert, 0x03, NULL, NULL, &sig, &sig_len) ||
        cert.p != cert.end || sig_len < 2 || sig[0] != 0)
        return false;
    esim_der s = {sig + 1, sig + sig_len}, seq;
    if (!esim_der_enter(&s, 0x30, &seq) || s.p != s.end)
        return false;
    v->sig = sig + 1;
    v->sig_len = sig_len - 1;
    return true;
}
