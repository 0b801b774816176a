/*
 * der.c — the few DER encodings the simulator writes itself: a device's
 * identity certificate, the Mdm-Signature CMS SignedData over a message and
 * an eUICC's P-256 key and public key. They are fixed shapes, so building
 * them here costs one SHA-256 and one ECDSA signature each, where OpenSSL's
 * generic X509/CMS objects would parse and encode public keys through its
 * provider decoders on every message (several times the signature itself).
 * Everything written here is read back by OpenSSL (the service, the tests).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "core/der.h"
#include "sim/cert_view.h"
#include "sim/sim_internal.h"

/* ---- writing ------------------------------------------------------------- */

static esim_err put_len(esim_buf *out, size_t len)
{
    unsigned char b[5];
    size_t n = 0;
    if (len < 0x80) {
        b[n++] = (unsigned char)len;
    } else if (len < 0x100) {
        b[n++] = 0x81;
        b[n++] = (unsigned char)len;
    } else if (len < 0x10000) {
        b[n++] = 0x82;
        b[n++] = (unsigned char)(len >> 8);
        b[n++] = (unsigned char)len;
    } else if (len < 0x1000000) {
        b[n++] = 0x83;
        b[n++] = (unsigned char)(len >> 16);
        b[n++] = (unsigned char)(len >> 8);
        b[n++] = (unsigned char)len;
    } else {
        return ESIM_ETOOBIG;
    }
    return esim_buf_append(out, b, n);
}

esim_err sim_der_put(esim_buf *out, unsigned tag, const void *content, size_t len)
{
    unsigned char t = (unsigned char)tag;
    esim_err rc = esim_buf_append(out, &t, 1);
    if (rc == ESIM_OK)
        rc = put_len(out, len);
    if (rc == ESIM_OK && len)
        rc = esim_buf_append(out, content, len);
    return rc;
}

/* |inner| wrapped in |tag|, appended to |out|; |inner| is freed. */
static esim_err wrap(esim_buf *out, unsigned tag, esim_buf *inner)
{
    esim_err rc = sim_der_put(out, tag, inner->data, inner->len);
    esim_buf_free(inner);
    return rc;
}

/* ---- reading ------------------------------------------------------------- */

bool sim_der_read(const unsigned char **p, const unsigned char *end, unsigned tag,
                  const unsigned char **content, size_t *len)
{
    esim_der r = {*p, end};
    if (!esim_der_take(&r, (unsigned char)tag, NULL, NULL, content, len))
        return false;
    *p = r.p;
    return true;
}

/* The issuer Name and serialNumber INTEGER of a certificate, as whole TLVs. */
static bool cert_issuer_serial(const esim_buf *cert, const unsigned char **issuer,
                               size_t *issuer_len, const unsigned char **serial, size_t *serial_len)
{
    const unsigned char *p = cert->data, *end = cert->data + cert->len, *c, *tbs, *v;
    size_t n, tl, vl;
    if (!sim_der_read(&p, end, 0x30, &c, &n))
        return false;
    p = c;
    end = c + n;
    if (!sim_der_read(&p, end, 0x30, &tbs, &tl))
        return false;
    p = tbs;
    end = tbs + tl;
    const unsigned char *mark = p;
    if (sim_der_read(&p, end, 0xa0, &v, &vl)) /* [0] version */
        mark = p;
    p = mark;
    *serial = p;
    if (!sim_der_read(&p, end, 0x02, &v, &vl))
        return false;
    *serial_len = (size_t)(p - *serial);
    if (!sim_der_read(&p, end, 0x30, &v, &vl)) /* signature algorithm */
        return false;
    *issuer = p;
    if (!sim_der_read(&p, end, 0x30, &v, &vl))
        return false;
    *issuer_len = (size_t)(p - *issuer);
    return true;
}

/* ---- signing ------------------------------------------------------------- */

static const unsigned char OID_ECDSA_SHA256[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                                 0xce, 0x3d, 0x04, 0x03, 0x02};
static const unsigned char OID_SHA256[] = {0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                           0x65, 0x03, 0x04, 0x02, 0x01};
static const unsigned char OID_DATA[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                         0xf7, 0x0d, 0x01, 0x07, 0x01};
static const unsigned char OID_SIGNED_DATA[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                                0xf7, 0x0d, 0x01, 0x07, 0x02};
static const unsigned char OID_CONTENT_TYPE[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                                 0xf7, 0x0d, 0x01, 0x09, 0x03};
static const unsigned char OID_MESSAGE_DIGEST[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                                   0xf7, 0x0d, 0x01, 0x09, 0x04};
static const unsigned char OID_CN[] = {0x06, 0x03, 0x55, 0x04, 0x03};
static const unsigned char OID_O[] = {0x06, 0x03, 0x55, 0x04, 0x0a};

/* ECDSA over |data| hashed with SHA-256, by |signer|'s key or, with
 * |signer| NULL, by the key kept as its scalar |d| (a device's identity
 * key); the DER Ecdsa-Sig-Value in |sig|. */
static esim_err ec_sign(sim_ec_signer *signer, const unsigned char *d, const void *data, size_t len,
                        unsigned char sig[80], size_t *sig_len)
{
    unsigned char dgst[SHA256_DIGEST_LENGTH], rs[64];
    sim_sha256(data, len, dgst);
    if (!(signer ? sim_ec_signer_sign(signer, dgst, rs) : sim_ec_sign_with(d, dgst, rs)))
        return ESIM_ECRYPTO;
    *sig_len = sim_ecdsa_raw_to_der(rs, sig);
    return ESIM_OK;
}

/* AlgorithmIdentifier ecdsa-with-SHA256 (no parameters, RFC 5758). */
static esim_err put_alg(esim_buf *out, const unsigned char *oid, size_t oid_len)
{
    return sim_der_put(out, 0x30, oid, oid_len);
}

static const unsigned char OID_SERIAL_NUMBER[] = {0x06, 0x03, 0x55, 0x04, 0x05};

/* A Name with one RDN each for CN and O (UTF8String) and, when |serial| is
 * not NULL, serialNumber (PrintableString): what esim_cert_issue writes. */
static esim_err put_name(esim_buf *out, const char *cn, const char *o, const char *serial)
{
    esim_buf name = {0}, rdn = {0}, atv = {0};
    esim_err rc = ESIM_OK;
    const unsigned char *oids[3] = {OID_CN, OID_O, OID_SERIAL_NUMBER};
    const char *vals[3] = {cn, o, serial};
    for (int i = 0; i < 3 && vals[i] && rc == ESIM_OK; i++) {
        rc = esim_buf_append(&atv, oids[i], 5);
        if (rc == ESIM_OK)
            rc = sim_der_put(&atv, i == 2 ? 0x13 : 0x0c, vals[i], strlen(vals[i]));
        if (rc == ESIM_OK)
            rc = wrap(&rdn, 0x30, &atv);
        if (rc == ESIM_OK)
            rc = wrap(&name, 0x31, &rdn);
    }
    if (rc == ESIM_OK)
        rc = wrap(out, 0x30, &name);
    esim_buf_free(&name);
    esim_buf_free(&rdn);
    esim_buf_free(&atv);
    return rc;
}

static esim_err put_utctime(esim_buf *out, time_t t)
{
    struct tm tm;
    char s[16];
    /* UTCTime: a two-digit year, as RFC 5280 wants for dates before 2050. */
    if (!gmtime_r(&t, &tm) || strftime(s, sizeof s, "%Y%m%d%H%M%SZ", &tm) != 15)
        return ESIM_EINVAL;
    return sim_der_put(out, 0x17, s + 2, 13);
}

/* The opening of a TBSCertificate both simulated issuers write: v3, a
 * random positive 16-byte serial, ecdsa-with-SHA256, |issuer| (a DER Name)
 * and the validity. */
static esim_err put_tbs_head(esim_buf *tbs, const esim_buf *issuer, time_t not_before,
                             time_t not_after)
{
    static const unsigned char v3[] = {0x02, 0x01, 0x02};
    unsigned char serial[16];
    esim_buf validity = {0};
    esim_err rc = esim_random_bytes(serial, sizeof serial);
    serial[0] = (unsigned char)((serial[0] & 0x7f) | 0x01);
    if (rc == ESIM_OK)
        rc = sim_der_put(tbs, 0xa0, v3, sizeof v3);
    if (rc == ESIM_OK)
        rc = sim_der_put(tbs, 0x02, serial, sizeof serial);
    if (rc == ESIM_OK)
        rc = put_alg(tbs, OID_ECDSA_SHA256, sizeof OID_ECDSA_SHA256);
    if (rc == ESIM_OK)
        rc = esim_buf_append(tbs, issuer->data, issuer->len);
    if (rc == ESIM_OK)
        rc = put_utctime(&validity, not_before);
    if (rc == ESIM_OK)
        rc = put_utctime(&validity, not_after);
    if (rc == ESIM_OK)
        rc = wrap(tbs, 0x30, &validity);
    esim_buf_free(&validity);
    return rc;
}

/* Certificate ::= SEQUENCE { |tbs| as a SEQUENCE, ecdsa-with-SHA256, the
 * signature by |signer| } into |out| (reset first). |tbs| is consumed. */
static esim_err put_signed_certificate(sim_ec_signer *signer, esim_buf *tbs, esim_buf *out)
{
    esim_buf cert = {0};
    unsigned char sig[81];
    size_t sig_len = 0;
    sig[0] = 0; /* no unused bits */
    esim_err rc = wrap(&cert, 0x30, tbs);
    if (rc == ESIM_OK)
        rc = ec_sign(signer, NULL, cert.data, cert.len, sig + 1, &sig_len);
    if (rc == ESIM_OK)
        rc = put_alg(&cert, OID_ECDSA_SHA256, sizeof OID_ECDSA_SHA256);
    if (rc == ESIM_OK)
        rc = sim_der_put(&cert, 0x03, sig, sig_len + 1);
    esim_buf_reset(out);
    if (rc == ESIM_OK)
        rc = wrap(out, 0x30, &cert);
    esim_buf_free(&cert);
    return rc;
}

/* SubjectPublicKeyInfo id-ecPublicKey prime256v1 up to the BIT STRING's
 * point, as i2d_PUBKEY writes it. */
static const unsigned char P256_SPKI_HEAD[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                                               0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                               0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};

/* The identity certificate for |cn| with the public key |point|. */
static esim_err identity_issue(const sim_pki *pki, const char *cn, const unsigned char point[65],
                               esim_buf *out)
{
    esim_buf tbs = {0};
    time_t now = time(NULL);
    esim_err rc = put_tbs_head(&tbs, &pki->scep_name_der, now - 3600, now + 365L * 24 * 3600);
    /* No extended key usage, as SCEP-issued identities come. */
    if (rc == ESIM_OK)
        rc = put_name(&tbs, cn, "esim-mdm simulated devices", NULL);
    if (rc == ESIM_OK)
        rc = esim_buf_append(&tbs, P256_SPKI_HEAD, sizeof P256_SPKI_HEAD);
    if (rc == ESIM_OK)
        rc = esim_buf_append(&tbs, point, 65);
    if (rc == ESIM_OK)
        rc = put_signed_certificate(pki->scep_sign, &tbs, out);
    esim_buf_free(&tbs);
    return rc;
}

void sim_identity_clear(sim_identity *id)
{
    OPENSSL_cleanse(id->key, sizeof id->key);
    esim_buf_free(&id->der);
}

esim_err sim_identity_make(const sim_pki *pki, const char *cn, sim_identity *id, esim_error *err)
{
    /* The device's own key first, as for its certificate request; then the
     * SCEP CA's certificate for it. */
    unsigned char point[65];
    sim_identity_clear(id);
    esim_err rc =
        sim_ec_keygen(id->key, point) ? identity_issue(pki, cn, point, &id->der) : ESIM_ECRYPTO;
    if (rc != ESIM_OK) {
        sim_identity_clear(id);
        return esim_fail(err, ESIM_ECRYPTO, "could not make the identity of %s", cn);
    }
    sim_buf_fit(&id->der); /* kept for the device's life */
    return ESIM_OK;
}

void sim_identity_to_json(const sim_identity *id, json_t *j)
{
    if (!j || !id->der.len)
        return;
    sim_json_set_b64(j, "identity", id->der.data, id->der.len);
    sim_json_set_b64(j, "identity_key", id->key, sizeof id->key);
}

esim_err sim_identity_from_json(const json_t *j, const char *path, sim_identity *id,
                                esim_error *err)
{
    sim_identity_clear(id);
    bool has_cert = json_object_get(j, "identity") != NULL;
    bool has_key = json_object_get(j, "identity_key") != NULL;
    if (!has_cert && !has_key)
        return ESIM_OK;
    esim_buf key = {0};
    esim_err rc = ESIM_OK;
    if (!has_key)
        rc = esim_fail(err, ESIM_EINVAL,
                       "%s: the identity certificate comes without its key (made by an older "
                       "simulator, whose devices shared one key?); remove the file or the data "
                       "directory",
                       path);
    else if (!has_cert)
        rc = esim_fail(err, ESIM_EINVAL, "%s: identity_key without its identity certificate", path);
    if (rc == ESIM_OK && ((rc = sim_json_b64(j, "identity", &id->der, err)) != ESIM_OK ||
                          (rc = sim_json_b64(j, "identity_key", &key, err)) != ESIM_OK)) {
        sim_identity_clear(id);
        return rc;
    }
    unsigned char point[65];
    sim_cert_view v;
    if (rc == ESIM_OK && (key.len != sizeof id->key || !sim_ec_public_key(key.data, point)))
        rc = esim_fail(err, ESIM_EINVAL, "%s: identity_key is not a P-256 private key", path);
    else if (rc == ESIM_OK && (!sim_cert_view_parse(id->der.data, id->der.len, &v) ||
                               memcmp(v.point, point, sizeof point) != 0))
        rc = esim_fail(err, ESIM_EINVAL,
                       "%s: the identity certificate is not for identity_key; remove the file "
                       "or the data directory",
                       path);
    if (rc == ESIM_OK)
        memcpy(id->key, key.data, sizeof id->key);
    if (key.data)
        OPENSSL_cleanse(key.data, key.len);
    esim_buf_free(&key);
    if (rc != ESIM_OK)
        sim_identity_clear(id);
    return rc;
}

/* Bytes a DER length field takes for |n| (at most 16 MiB: put_len's). */
static size_t len_len(size_t n)
{
    return n < 0x80 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : 4;
}

/* A TLV's whole size for |n| bytes of content. */
static size_t tlv_size(size_t n)
{
    return 1 + len_len(n) + n;
}

/* Tag and length at |p|; the byte after them. */
static unsigned char *put_head(unsigned char *p, unsigned tag, size_t n)
{
    *p++ = (unsigned char)tag;
    size_t k = len_len(n);
    if (k == 1) {
        *p++ = (unsigned char)n;
        return p;
    }
    *p++ = (unsigned char)(0x80 | (k - 1));
    for (size_t i = k - 1; i > 0; i--)
        *p++ = (unsigned char)(n >> (8 * (i - 1)));
    return p;
}

static unsigned char *put_bytes(unsigned char *p, const void *b, size_t n)
{
    memcpy(p, b, n);
    return p + n;
}

esim_err sim_identity_sign(const sim_pki *pki, const sim_identity *id, const void *body, size_t len,
                           esim_buf *out, esim_error *err)
{
    const esim_buf *cert = &id->der;
    const unsigned char *issuer, *serial;
    size_t issuer_len, serial_len;
    if (!cert_issuer_serial(cert, &issuer, &issuer_len, &serial, &serial_len))
        return esim_fail(err, ESIM_ECRYPTO, "the identity certificate is not DER X.509");
    static const unsigned char one[] = {0x02, 0x01, 0x01};
    /* signedAttrs: contentType id-data, then messageDigest (DER order);
     * the signature covers them encoded as a SET (RFC 5652 5.4), and the
     * SignerInfo carries the same bytes under [0]. */
    unsigned char attrs[2 + 77];
    unsigned char *a = attrs + 2; /* room for the SET's or [0]'s header */
    a = put_head(a, 0x30, sizeof OID_CONTENT_TYPE + tlv_size(sizeof OID_DATA));
    a = put_bytes(a, OID_CONTENT_TYPE, sizeof OID_CONTENT_TYPE);
    a = put_head(a, 0x31, sizeof OID_DATA);
    a = put_bytes(a, OID_DATA, sizeof OID_DATA);
    a = put_head(a, 0x30, sizeof OID_MESSAGE_DIGEST + tlv_size(tlv_size(SHA256_DIGEST_LENGTH)));
    a = put_bytes(a, OID_MESSAGE_DIGEST, sizeof OID_MESSAGE_DIGEST);
    a = put_head(a, 0x31, tlv_size(SHA256_DIGEST_LENGTH));
    a = put_head(a, 0x04, SHA256_DIGEST_LENGTH);
    sim_sha256(body ? body : (const void *)"", len, a);
    a += SHA256_DIGEST_LENGTH;
    size_t attrs_len = (size_t)(a - (attrs + 2));
    put_head(attrs, 0x31, attrs_len);
    unsigned char sig[80];
    size_t sig_len = 0;
    esim_err rc = ec_sign(NULL, id->key, attrs, attrs_len + 2, sig, &sig_len);
    if (rc != ESIM_OK)
        return esim_fail(err, ESIM_ECRYPTO, "could not sign the message");
    put_head(attrs, 0xa0, attrs_len);
    /* The sizes, innermost first: SignerInfo, SignedData, ContentInfo. */
    size_t alg_sha = tlv_size(sizeof OID_SHA256), alg_ecdsa = tlv_size(sizeof OID_ECDSA_SHA256);
    size_t ias = issuer_len + serial_len;
    size_t si =
        sizeof one + tlv_size(ias) + alg_sha + attrs_len + 2 + alg_ecdsa + tlv_size(sig_len);
    size_t certs = cert->len + pki->scep_der.len;
    size_t sd = sizeof one + tlv_size(alg_sha) + tlv_size(sizeof OID_DATA) + tlv_size(certs) +
                tlv_size(tlv_size(si));
    size_t ci = sizeof OID_SIGNED_DATA + tlv_size(tlv_size(sd));
    size_t total = tlv_size(ci);
    esim_buf_reset(out);
    if (ci >= 0x1000000 || esim_buf_reserve(out, total) != ESIM_OK)
        return esim_fail(err, ESIM_ECRYPTO, "could not sign the message");
    unsigned char *p = out->data;
    p = put_head(p, 0x30, ci);
    p = put_bytes(p, OID_SIGNED_DATA, sizeof OID_SIGNED_DATA);
    p = put_head(p, 0xa0, tlv_size(sd));
    p = put_head(p, 0x30, sd);
    /* SignedData: version 1, {sha256}, detached id-data, the leaf and the
     * issuing CA the service needs to reach its device CA, the signer. */
    p = put_bytes(p, one, sizeof one);
    p = put_head(p, 0x31, alg_sha);
    p = put_head(p, 0x30, sizeof OID_SHA256);
    p = put_bytes(p, OID_SHA256, sizeof OID_SHA256);
    p = put_head(p, 0x30, sizeof OID_DATA);
    p = put_bytes(p, OID_DATA, sizeof OID_DATA);
    p = put_head(p, 0xa0, certs);
    p = put_bytes(p, cert->data, cert->len);
    p = put_bytes(p, pki->scep_der.data, pki->scep_der.len);
    p = put_head(p, 0x31, tlv_size(si));
    p = put_head(p, 0x30, si);
    p = put_bytes(p, one, sizeof one);
    p = put_head(p, 0x30, ias);
    p = put_bytes(p, issuer, issuer_len);
    p = put_bytes(p, serial, serial_len);
    p = put_head(p, 0x30, sizeof OID_SHA256);
    p = put_bytes(p, OID_SHA256, sizeof OID_SHA256);
    p = put_bytes(p, attrs, attrs_len + 2);
    p = put_head(p, 0x30, sizeof OID_ECDSA_SHA256);
    p = put_bytes(p, OID_ECDSA_SHA256, sizeof OID_ECDSA_SHA256);
    p = put_head(p, 0x04, sig_len);
    p = put_bytes(p, sig, sig_len);
    out->len = (size_t)(p - out->data);
    out->data[out->len] = 0;
    return ESIM_OK;
}

/* ---- eUICC credentials ----------------------------------------------------- */

esim_err sim_euicc_issue(const sim_pki *pki, const char *eid, esim_buf *key_der, esim_buf *cert_der,
                         esim_error *err)
{
    /* The eUICC's own key, made as a device makes its identity key
     * (sim_ec_keygen: the scalar and its point at once, no OpenSSL key
     * object to make and read back; it signs by the scalar). */
    unsigned char pub[65], priv[32];
    esim_err rc = sim_ec_keygen(priv, pub) ? ESIM_OK : ESIM_ECRYPTO;
    /* RFC 5915 ECPrivateKey with its curve and public key, as i2d_PrivateKey
     * writes it; SubjectPublicKeyInfo id-ecPublicKey prime256v1. */
    static const unsigned char ec_alg[] = {0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                                           0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
                                           0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static const unsigned char curve[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                          0xce, 0x3d, 0x03, 0x01, 0x07};
    static const unsigned char one[] = {0x02, 0x01, 0x01};
    unsigned char bits[66];
    bits[0] = 0;
    memcpy(bits + 1, pub, sizeof pub);
    esim_buf ecpk = {0}, tmp = {0}, spki = {0}, tbs = {0}, exts = {0}, ext = {0};
    esim_buf_reset(key_der);
    if (rc == ESIM_OK)
        rc = esim_buf_append(&ecpk, one, sizeof one);
    if (rc == ESIM_OK)
        rc = sim_der_put(&ecpk, 0x04, priv, sizeof priv);
    if (rc == ESIM_OK)
        rc = sim_der_put(&ecpk, 0xa0, curve, sizeof curve);
    if (rc == ESIM_OK)
        rc = sim_der_put(&tmp, 0x03, bits, sizeof bits);
    if (rc == ESIM_OK)
        rc = wrap(&ecpk, 0xa1, &tmp);
    if (rc == ESIM_OK)
        rc = wrap(key_der, 0x30, &ecpk);
    OPENSSL_cleanse(priv, sizeof priv);
    if (rc == ESIM_OK)
        rc = esim_buf_append(&tmp, ec_alg, sizeof ec_alg);
    if (rc == ESIM_OK)
        rc = sim_der_put(&tmp, 0x03, bits, sizeof bits);
    if (rc == ESIM_OK)
        rc = wrap(&spki, 0x30, &tmp);
    /* TBSCertificate: v3, 16-byte serial, ecdsa-with-SHA256, issuer the EUM,
     * valid from an hour ago for ten years, subject CN/O/serialNumber = EID. */
    char cn[64];
    snprintf(cn, sizeof cn, "eUICC %s", eid);
    time_t now = time(NULL);
    if (rc == ESIM_OK)
        rc = put_tbs_head(&tbs, &pki->eum_name_der, now - 3600, now + 3650L * 24 * 3600);
    if (rc == ESIM_OK)
        rc = put_name(&tbs, cn, "esim-mdm simulated eUICC", eid);
    if (rc == ESIM_OK)
        rc = esim_buf_append(&tbs, spki.data, spki.len);
    /* Extensions: basicConstraints CA:FALSE and keyUsage digitalSignature
     * (both critical), the key identifiers (SKI = SHA-1 of the key, AKI = the
     * EUM's SKI). */
    static const unsigned char bc[] = {0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13,
                                       0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00};
    static const unsigned char ku[] = {0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01,
                                       0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x07, 0x80};
    static const unsigned char ski_oid[] = {0x06, 0x03, 0x55, 0x1d, 0x0e};
    static const unsigned char aki_oid[] = {0x06, 0x03, 0x55, 0x1d, 0x23};
    unsigned char ski[SHA_DIGEST_LENGTH];
    SHA1(pub, sizeof pub, ski);
    if (rc == ESIM_OK)
        rc = esim_buf_append(&exts, bc, sizeof bc);
    if (rc == ESIM_OK)
        rc = esim_buf_append(&exts, ku, sizeof ku);
    if (rc == ESIM_OK)
        rc = esim_buf_append(&ext, ski_oid, sizeof ski_oid);
    if (rc == ESIM_OK)
        rc = sim_der_put(&tmp, 0x04, ski, sizeof ski);
    if (rc == ESIM_OK)
        rc = wrap(&ext, 0x04, &tmp);
    if (rc == ESIM_OK)
        rc = wrap(&exts, 0x30, &ext);
    if (rc == ESIM_OK && pki->eum_ski.len) {
        rc = esim_buf_append(&ext, aki_oid, sizeof aki_oid);
        esim_buf kid = {0};
        if (rc == ESIM_OK)
            rc = sim_der_put(&kid, 0x80, pki->eum_ski.data, pki->eum_ski.len);
        if (rc == ESIM_OK)
            rc = wrap(&tmp, 0x30, &kid);
        esim_buf_free(&kid);
        if (rc == ESIM_OK)
            rc = wrap(&ext, 0x04, &tmp);
        if (rc == ESIM_OK)
            rc = wrap(&exts, 0x30, &ext);
    }
    if (rc == ESIM_OK)
        rc = wrap(&tmp, 0x30, &exts);
    if (rc == ESIM_OK)
        rc = wrap(&tbs, 0xa3, &tmp);
    if (rc == ESIM_OK)
        rc = put_signed_certificate(pki->eum_sign, &tbs, cert_der);
    esim_buf_free(&ecpk);
    esim_buf_free(&tmp);
    esim_buf_free(&spki);
    esim_buf_free(&tbs);
    esim_buf_free(&exts);
    esim_buf_free(&ext);
    if (rc != ESIM_OK) {
        if (key_der->data)
            OPENSSL_cleanse(key_der->data, key_der->len);
        esim_buf_free(key_der);
        esim_buf_free(cert_der);
        return esim_fail(err, ESIM_ECRYPTO, "could not issue the eUICC credentials for %s", eid);
    }
    return ESIM_OK;
}

void sim_buf_fit(esim_buf *b)
{
    if (!b->data || b->cap <= b->len + 1)
        return;
    unsigned char *p = malloc(b->len + 1);
    if (!p)
        return;
    memcpy(p, b->data, b->len + 1);
    OPENSSL_cleanse(b->data, b->cap);
    free(b->data);
    b->data = p;
    b->cap = b->len + 1;
}
