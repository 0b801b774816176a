/*
 * sgp32.c — strict DER in and out of the asn1c-generated SGP.32 types, the
 * ECDSA P-256 r‖s signatures of SGP.32 and the inputs they are computed
 * over, identifier codings and the small builders both sides share.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/err.h>

#include "sgp32/sgp32.h"

/* ---- strict DER framing ------------------------------------------------ */

/* Checks the TLV at |p| (at most |len| bytes): a tag in its shortest form,
 * a definite length in its shortest form, and, when constructed, contents
 * that are exactly a run of such TLVs. *tlv_len gets its size. */
static esim_err check_tlv(const uint8_t *p, size_t len, size_t *tlv_len, int depth, esim_error *err)
{
    if (depth > SGP32_DER_DEPTH_MAX)
        return esim_fail(err, ESIM_ETOOBIG, "DER nested deeper than %d levels",
                         SGP32_DER_DEPTH_MAX);
    size_t i = 0;
    if (len < 2)
        return esim_fail(err, ESIM_EINVAL, "DER cut short");
    bool constructed = p[0] & 0x20;
    if ((p[i++] & 0x1f) == 0x1f) {
        /* High tag number: base-128, no leading 0x80, at most 3 bytes. */
        if (p[i] == 0x80 || p[i] < 0x1f)
            return esim_fail(err, ESIM_EINVAL, "DER tag not in its shortest form");
        size_t n = 0;
        while (i < len && (p[i] & 0x80)) {
            i++;
            if (++n > 2)
                return esim_fail(err, ESIM_EINVAL, "DER tag number too large");
        }
        if (i >= len)
            return esim_fail(err, ESIM_EINVAL, "DER cut short in a tag");
        i++;
    }
    if (i >= len)
        return esim_fail(err, ESIM_EINVAL, "DER cut short before a length");
    size_t body = p[i++];
    if (body == 0x80)
        return esim_fail(err, ESIM_EINVAL, "indefinite length (BER, not DER)");
    if (body > 0x80) {
        size_t n = body & 0x7f;
        if (n > 4)
            return esim_fail(err, ESIM_ETOOBIG, "DER length of %zu bytes", n);
        if (i + n > len)
            return esim_fail(err, ESIM_EINVAL, "DER cut short in a length");
        if (p[i] == 0)
            return esim_fail(err, ESIM_EINVAL, "DER length not in its shortest form");
        body = 0;
        for (size_t k = 0; k < n; k++)
            body = body << 8 | p[i++];
        if (body < 0x80)
            return esim_fail(err, ESIM_EINVAL, "DER length not in its shortest form");
    }
    if (body > len - i)
        return esim_fail(err, ESIM_EINVAL, "DER length %zu runs past the end of the input", body);
    if (constructed) {
        size_t off = 0;
        while (off < body) {
            size_t inner = 0;
            esim_err rc = check_tlv(p + i + off, body - off, &inner, depth + 1, err);
            if (rc != ESIM_OK)
                return rc;
            off += inner;
        }
    }
    *tlv_len = i + body;
    return ESIM_OK;
}

static esim_err append_len(esim_buf *out, size_t n);

/* der_encode's output compared with the input as it is produced. */
typedef struct {
    const uint8_t *want;
    size_t len, off;
} cmp_ctx;

static int cmp_cb(const void *buf, size_t size, void *arg)
{
    cmp_ctx *c = arg;
    if (size > c->len - c->off || memcmp(c->want + c->off, buf, size) != 0)
        return -1;
    c->off += size;
    return 0;
}

/* The checks of a DER before it is decoded: not empty, within
 * SGP32_DER_MAX, one well-formed TLV first (its length in *tlv_len). */
static esim_err check_der(const uint8_t *der, size_t len, size_t *tlv_len, esim_error *err)
{
    *tlv_len = 0;
    if (!der || len == 0)
        return esim_fail(err, ESIM_EINVAL, "empty DER");
    if (len > SGP32_DER_MAX)
        return esim_fail(err, ESIM_ETOOBIG, "DER of %zu bytes is over the %d-byte limit", len,
                         SGP32_DER_MAX);
    return check_tlv(der, len, tlv_len, 0, err);
}

esim_err sgp32_decode(const asn_TYPE_descriptor_t *td, const uint8_t *der, size_t len, void **obj,
                      esim_error *err)
{
    *obj = NULL;
    size_t tlv_len;
    esim_err rc = check_der(der, len, &tlv_len, err);
    if (rc != ESIM_OK)
        return rc;
    if (tlv_len != len)
        return esim_fail(err, ESIM_EINVAL, "%zu bytes after the %s", len - tlv_len, td->name);

    asn_TYPE_descriptor_t *t = (asn_TYPE_descriptor_t *)td;
    /* asn1c measures its own recursion against this many bytes of stack. */
    asn_codec_ctx_t ctx = {.max_stack_size = 256 * 1024};
    void *o = NULL;
    asn_dec_rval_t dr = ber_decode(&ctx, t, &o, der, len);
    if (dr.code != RC_OK || dr.consumed != len) {
        if (o)
            t->free_struct(t, o, 0);
        if (dr.code == RC_FAIL && !o)
            return esim_fail(err, ESIM_ENOMEM, "out of memory decoding %s", td->name);
        return esim_fail(err, ESIM_EINVAL, "not a %s (SGP.32 v%s DER)", td->name,
                         SGP32_BINDING_VERSION_TEXT);
    }
    char why[128];
    size_t why_len = sizeof why;
    if (asn_check_constraints(t, o, why, &why_len) != 0) {
        t->free_struct(t, o, 0);
        return esim_fail(err, ESIM_EINVAL, "%s out of range: %s", td->name, why);
    }
    cmp_ctx c = {der, len, 0};
    asn_enc_rval_t er = der_encode(t, o, cmp_cb, &c);
    if (er.encoded < 0 || c.off != len) {
        t->free_struct(t, o, 0);
        return esim_fail(
            err, ESIM_EINVAL,
            "%s is not canonical DER (BER form, or a field this binding does not have)", td->name);
    }
    *obj = o;
    return ESIM_OK;
}

static int append_cb(const void *buf, size_t size, void *arg)
{
    return esim_buf_append(arg, buf, size) == ESIM_OK ? 0 : -1;
}

esim_err sgp32_encode(const asn_TYPE_descriptor_t *td, const void *obj, esim_buf *out,
                      esim_error *err)
{
    asn_TYPE_descriptor_t *t = (asn_TYPE_descriptor_t *)td;
    if (!obj)
        return esim_fail(err, ESIM_EINVAL, "no %s to encode", td->name);
    char why[128];
    size_t why_len = sizeof why;
    if (asn_check_constraints(t, obj, why, &why_len) != 0)
        return esim_fail(err, ESIM_EINVAL, "%s cannot be encoded: %s", td->name, why);
    size_t before = out->len;
    asn_enc_rval_t er = der_encode(t, (void *)obj, append_cb, out);
    if (er.encoded < 0) {
        out->len = before;
        return esim_fail(err, ESIM_EINVAL, "%s cannot be encoded (at %s)", td->name,
                         er.failed_type ? er.failed_type->name : "?");
    }
    return ESIM_OK;
}

void sgp32_free(const asn_TYPE_descriptor_t *td, void *obj)
{
    if (obj)
        td->free_struct((asn_TYPE_descriptor_t *)td, obj, 0);
}

esim_err sgp32_encode_explicit(uint16_t tag, const asn_TYPE_descriptor_t *td, const void *obj,
                               esim_buf *out, esim_error *err)
{
    esim_buf inner = {0};
    esim_err rc = sgp32_encode(td, obj, &inner, err);
    uint8_t t[2] = {(uint8_t)(tag >> 8), (uint8_t)tag};
    size_t before = out->len;
    if (rc == ESIM_OK && ((rc = esim_buf_append(out, t, 2)) != ESIM_OK ||
                          (rc = append_len(out, inner.len)) != ESIM_OK ||
                          (rc = esim_buf_append(out, inner.data, inner.len)) != ESIM_OK))
        out->len = before;
    esim_buf_free(&inner);
    return rc;
}

esim_err sgp32_decode_explicit(uint16_t tag, const asn_TYPE_descriptor_t *td, const uint8_t *der,
                               size_t len, void **obj, esim_error *err)
{
    *obj = NULL;
    size_t tlv_len;
    esim_err rc = check_der(der, len, &tlv_len, err);
    if (rc != ESIM_OK)
        return rc;
    if (tlv_len != len)
        return esim_fail(err, ESIM_EINVAL, "%zu bytes after the %04X answer", len - tlv_len, tag);
    if (len < 3 || der[0] != (uint8_t)(tag >> 8) || der[1] != (uint8_t)tag)
        return esim_fail(err, ESIM_EINVAL, "not a %04X answer", tag);
    size_t hdr = der[2] < 0x80 ? 3 : 3 + (der[2] & 0x7f);
    return sgp32_decode(td, der + hdr, len - hdr, obj, err);
}

/* ---- signatures -------------------------------------------------------- */

static esim_err crypto_fail(esim_error *err, const char *what)
{
    char why[256];
    return esim_fail(err, ESIM_ECRYPTO, "%s: %s", what,
                     esim_openssl_error_text(why, sizeof why, "no detail from OpenSSL"));
}

static bool is_p256(EVP_PKEY *key)
{
    char group[64];
    size_t glen = 0;
    return key && EVP_PKEY_is_a(key, "EC") &&
           EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof group, &glen) == 1 &&
           (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0);
}

esim_err sgp32_sign_rs(EVP_PKEY *key, const uint8_t *data, size_t len, uint8_t sig[SGP32_SIG_LEN],
                       esim_error *err)
{
    if (!is_p256(key))
        return esim_fail(err, ESIM_ECRYPTO, "SGP.32 signatures need an ECDSA P-256 key");
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[80];
    size_t der_len = sizeof der;
    ECDSA_SIG *s = NULL;
    esim_err rc = ESIM_OK;
    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, der, &der_len, data, len) != 1) {
        rc = crypto_fail(err, "ECDSA signing failed");
        goto done;
    }
    const unsigned char *p = der;
    s = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    const BIGNUM *r = NULL, *sv = NULL;
    if (s)
        ECDSA_SIG_get0(s, &r, &sv);
    if (!s || BN_bn2binpad(r, sig, 32) != 32 || BN_bn2binpad(sv, sig + 32, 32) != 32)
        rc = crypto_fail(err, "ECDSA signature has an unexpected form");
done:
    ECDSA_SIG_free(s);
    EVP_MD_CTX_free(md);
    return rc;
}

esim_err sgp32_verify_rs(EVP_PKEY *pub, const uint8_t *data, size_t len,
                         const uint8_t sig[SGP32_SIG_LEN], esim_error *err)
{
    if (!is_p256(pub))
        return esim_fail(err, ESIM_ECRYPTO, "SGP.32 signatures need an ECDSA P-256 key");
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *sv = BN_bin2bn(sig + 32, 32, NULL);
    unsigned char *der = NULL;
    int der_len = -1;
    if (s && r && sv && ECDSA_SIG_set0(s, r, sv) == 1) {
        r = sv = NULL; /* owned by s now */
        der_len = i2d_ECDSA_SIG(s, &der);
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = der_len > 0 && md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub) == 1
                 ? EVP_DigestVerify(md, der, (size_t)der_len, data, len)
                 : -1;
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    BN_free(r);
    BN_free(sv);
    ECDSA_SIG_free(s);
    ERR_clear_error();
    if (ok != 1)
        return esim_fail(err, ESIM_ECRYPTO, "the signature does not verify");
    return ESIM_OK;
}

esim_err sgp32_verify_rs_der(EVP_PKEY *pub, const asn_TYPE_descriptor_t *td, const void *obj,
                             const OCTET_STRING_t *sig, esim_error *err)
{
    if (!pub || !sig || sig->size != SGP32_SIG_LEN)
        return esim_fail(err, ESIM_ECRYPTO, "no key, or a signature that is not 64 bytes of r‖s");
    esim_buf der = {0};
    esim_err rc = sgp32_encode(td, obj, &der, err);
    if (rc == ESIM_OK)
        rc = sgp32_verify_rs(pub, der.data, der.len, sig->buf, err);
    esim_buf_free(&der);
    return rc;
}

/* ---- signature inputs -------------------------------------------------- */

/* A DER length. */
static esim_err append_len(esim_buf *out, size_t n)
{
    uint8_t b[5];
    size_t k = 0;
    if (n < 0x80) {
        b[k++] = (uint8_t)n;
    } else {
        size_t bytes = n > 0xffffff ? 4 : n > 0xffff ? 3 : n > 0xff ? 2 : 1;
        b[k++] = (uint8_t)(0x80 | bytes);
        for (size_t i = bytes; i-- > 0;)
            b[k++] = (uint8_t)(n >> (8 * i));
    }
    return esim_buf_append(out, b, k);
}

esim_err sgp32_append_int_tlv(uint8_t tag, long v, esim_buf *out)
{
    /* INTEGER content octets: two's complement, shortest form. */
    uint8_t c[sizeof(long)];
    size_t n = sizeof c;
    for (size_t i = 0; i < sizeof c; i++)
        c[sizeof c - 1 - i] = (uint8_t)((unsigned long)v >> (8 * i));
    size_t start = 0;
    while (n - start > 1 && ((c[start] == 0x00 && !(c[start + 1] & 0x80)) ||
                             (c[start] == 0xff && (c[start + 1] & 0x80))))
        start++;
    esim_err rc = esim_buf_append(out, &tag, 1);
    if (rc == ESIM_OK)
        rc = append_len(out, n - start);
    if (rc == ESIM_OK)
        rc = esim_buf_append(out, c + start, n - start);
    return rc;
}

esim_err sgp32_eim_signature_input(const EuiccPackageSigned_t *s, const long *token, esim_buf *out,
                                   esim_error *err)
{
    size_t before = out->len;
    esim_err rc = sgp32_encode(&asn_DEF_EuiccPackageSigned, s, out, err);
    if (rc == ESIM_OK && token && (rc = sgp32_append_int_tlv(0x84, *token, out)) != ESIM_OK)
        out->len = before;
    return rc;
}

static esim_err append_sig_tlv(const uint8_t *sig, size_t len, esim_buf *out)
{
    static const uint8_t tag[2] = {0x5f, 0x37};
    esim_err rc = esim_buf_append(out, tag, 2);
    if (rc == ESIM_OK)
        rc = append_len(out, len);
    if (rc == ESIM_OK && len)
        rc = esim_buf_append(out, sig, len);
    return rc;
}

static esim_err signed_input(const asn_TYPE_descriptor_t *td, const void *d, const uint8_t *eim_sig,
                             size_t eim_sig_len, esim_buf *out, esim_error *err)
{
    if (!eim_sig && eim_sig_len)
        return esim_fail(err, ESIM_EINVAL, "no eimSignature");
    size_t before = out->len;
    esim_err rc = sgp32_encode(td, d, out, err);
    if (rc == ESIM_OK && (rc = append_sig_tlv(eim_sig, eim_sig_len, out)) != ESIM_OK)
        out->len = before;
    return rc;
}

esim_err sgp32_euicc_sign_epr_input(const EuiccPackageResultDataSigned_t *d, const uint8_t *eim_sig,
                                    size_t eim_sig_len, esim_buf *out, esim_error *err)
{
    return signed_input(&asn_DEF_EuiccPackageResultDataSigned, d, eim_sig, eim_sig_len, out, err);
}

esim_err sgp32_euicc_sign_epe_input(const EuiccPackageErrorDataSigned_t *d, const uint8_t *eim_sig,
                                    size_t eim_sig_len, esim_buf *out, esim_error *err)
{
    return signed_input(&asn_DEF_EuiccPackageErrorDataSigned, d, eim_sig, eim_sig_len, out, err);
}

esim_err sgp32_package_sign(EuiccPackageRequest_t *req, EVP_PKEY *key, const long *token,
                            esim_error *err)
{
    esim_buf in = {0};
    uint8_t sig[SGP32_SIG_LEN];
    esim_err rc = sgp32_eim_signature_input(&req->euiccPackageSigned, token, &in, err);
    if (rc == ESIM_OK)
        rc = sgp32_sign_rs(key, in.data, in.len, sig, err);
    if (rc == ESIM_OK && OCTET_STRING_fromBuf(&req->eimSignature, (const char *)sig, sizeof sig))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_buf_free(&in);
    return rc;
}

esim_err sgp32_package_verify(const EuiccPackageRequest_t *req, EVP_PKEY *pub, const long *token,
                              esim_error *err)
{
    if (req->eimSignature.size != SGP32_SIG_LEN)
        return esim_fail(err, ESIM_ECRYPTO, "eimSignature is %d bytes, not 64",
                         req->eimSignature.size);
    esim_buf in = {0};
    esim_err rc = sgp32_eim_signature_input(&req->euiccPackageSigned, token, &in, err);
    if (rc == ESIM_OK)
        rc = sgp32_verify_rs(pub, in.data, in.len, req->eimSignature.buf, err);
    esim_buf_free(&in);
    return rc;
}

/* The signed part and signature field of a signed result or error. */
static esim_err result_parts(const EuiccPackageResult_t *r, const asn_TYPE_descriptor_t **td,
                             const void **data, OCTET_STRING_t **sig, esim_error *err)
{
    EuiccPackageResult_t *m = (EuiccPackageResult_t *)r;
    switch (r->present) {
    case EuiccPackageResult_PR_euiccPackageResultSigned:
        *td = &asn_DEF_EuiccPackageResultDataSigned;
        *data = &m->choice.euiccPackageResultSigned.euiccPackageResultDataSigned;
        *sig = &m->choice.euiccPackageResultSigned.euiccSignEPR;
        return ESIM_OK;
    case EuiccPackageResult_PR_euiccPackageErrorSigned:
        *td = &asn_DEF_EuiccPackageErrorDataSigned;
        *data = &m->choice.euiccPackageErrorSigned.euiccPackageErrorDataSigned;
        *sig = &m->choice.euiccPackageErrorSigned.euiccSignEPE;
        return ESIM_OK;
    default:
        return esim_fail(err, ESIM_EINVAL, "an unsigned package error carries no signature");
    }
}

esim_err sgp32_result_sign(EuiccPackageResult_t *r, EVP_PKEY *key, const uint8_t *eim_sig,
                           size_t eim_sig_len, esim_error *err)
{
    const asn_TYPE_descriptor_t *td = NULL;
    const void *data = NULL;
    OCTET_STRING_t *sig_field = NULL;
    esim_err rc = result_parts(r, &td, &data, &sig_field, err);
    if (rc != ESIM_OK)
        return rc;
    esim_buf in = {0};
    uint8_t sig[SGP32_SIG_LEN];
    rc = signed_input(td, data, eim_sig, eim_sig_len, &in, err);
    if (rc == ESIM_OK)
        rc = sgp32_sign_rs(key, in.data, in.len, sig, err);
    if (rc == ESIM_OK && OCTET_STRING_fromBuf(sig_field, (const char *)sig, sizeof sig))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_buf_free(&in);
    return rc;
}

esim_err sgp32_result_verify(const EuiccPackageResult_t *r, EVP_PKEY *pub, const uint8_t *eim_sig,
                             size_t eim_sig_len, esim_error *err)
{
    const asn_TYPE_descriptor_t *td = NULL;
    const void *data = NULL;
    OCTET_STRING_t *sig_field = NULL;
    esim_err rc = result_parts(r, &td, &data, &sig_field, err);
    if (rc != ESIM_OK)
        return rc;
    if (sig_field->size != SGP32_SIG_LEN)
        return esim_fail(err, ESIM_ECRYPTO, "the eUICC's signature is %d bytes, not 64",
                         sig_field->size);
    esim_buf in = {0};
    rc = signed_input(td, data, eim_sig, eim_sig_len, &in, err);
    if (rc == ESIM_OK)
        rc = sgp32_verify_rs(pub, in.data, in.len, sig_field->buf, err);
    esim_buf_free(&in);
    return rc;
}

/* ---- identifiers ------------------------------------------------------- */

esim_err sgp32_eid_to_bytes(const char *eid, uint8_t out[16], esim_error *err)
{
    if (!eid || strlen(eid) != ESIM_EID_LEN || strspn(eid, "0123456789") != ESIM_EID_LEN)
        return esim_fail(err, ESIM_EINVAL, "an EID is 32 digits");
    for (size_t i = 0; i < 16; i++)
        out[i] = (uint8_t)((eid[2 * i] - '0') << 4 | (eid[2 * i + 1] - '0'));
    return ESIM_OK;
}

esim_err sgp32_eid_from_bytes(const uint8_t *b, size_t len, char out[33], esim_error *err)
{
    if (!b || len != 16)
        return esim_fail(err, ESIM_EINVAL, "an eidValue is 16 bytes");
    for (size_t i = 0; i < 16; i++) {
        if ((b[i] >> 4) > 9 || (b[i] & 15) > 9)
            return esim_fail(err, ESIM_EINVAL, "eidValue has a nibble that is not a digit");
        out[2 * i] = (char)('0' + (b[i] >> 4));
        out[2 * i + 1] = (char)('0' + (b[i] & 15));
    }
    out[32] = '\0';
    return ESIM_OK;
}

esim_err sgp32_iccid_to_bytes(const char *iccid, uint8_t out[10], esim_error *err)
{
    size_t n = iccid ? strlen(iccid) : 0;
    if (n < 18 || n > 20 || strspn(iccid, "0123456789") != n)
        return esim_fail(err, ESIM_EINVAL, "an ICCID is 18 to 20 digits");
    for (size_t i = 0; i < 10; i++) {
        unsigned lo = 2 * i < n ? (unsigned)(iccid[2 * i] - '0') : 0xf;
        unsigned hi = 2 * i + 1 < n ? (unsigned)(iccid[2 * i + 1] - '0') : 0xf;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return ESIM_OK;
}

esim_err sgp32_iccid_from_bytes(const uint8_t *b, size_t len, char out[21], esim_error *err)
{
    if (!b || len != 10)
        return esim_fail(err, ESIM_EINVAL, "an ICCID is 10 bytes");
    size_t n = 0;
    bool ended = false;
    for (size_t i = 0; i < 20; i++) {
        unsigned d = i % 2 == 0 ? b[i / 2] & 15 : b[i / 2] >> 4;
        if (d == 0xf) {
            ended = true;
            continue;
        }
        if (d > 9 || ended)
            return esim_fail(err, ESIM_EINVAL, "ICCID bytes are not swapped BCD digits");
        out[n++] = (char)('0' + d);
    }
    out[n] = '\0';
    if (n < 18)
        return esim_fail(err, ESIM_EINVAL, "an ICCID is 18 to 20 digits");
    return ESIM_OK;
}

/* ---- builders ---------------------------------------------------------- */

esim_err sgp32_no_package(esim_buf *out)
{
    static const uint8_t none[] = {0xbf, 0x4f, 0x03, 0x02, 0x01, 0x01};
    return esim_buf_append(out, none, sizeof none);
}

esim_err sgp32_get_package_request(const char *eid, esim_buf *out, esim_error *err)
{
    uint8_t b[16];
    esim_err rc = sgp32_eid_to_bytes(eid, b, err);
    if (rc != ESIM_OK)
        return rc;
    GetEimPackageRequest_t req = {0};
    if (OCTET_STRING_fromBuf(&req.eidValue, (const char *)b, sizeof b))
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    rc = sgp32_encode(&asn_DEF_GetEimPackageRequest, &req, out, err);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_GetEimPackageRequest, &req);
    return rc;
}

/* ---- one TLV around bytes -------------------------------------------------------------- */

esim_err sgp32_tlv_wrap(uint16_t tag, const uint8_t *value, size_t len, esim_buf *out)
{
    uint8_t t[2] = {(uint8_t)(tag >> 8), (uint8_t)tag};
    size_t before = out->len;
    esim_err rc = tag > 0xff ? esim_buf_append(out, t, 2) : esim_buf_append(out, t + 1, 1);
    if (rc == ESIM_OK)
        rc = append_len(out, len);
    if (rc == ESIM_OK && len)
        rc = esim_buf_append(out, value, len);
    if (rc != ESIM_OK)
        out->len = before;
    return rc;
}

esim_err sgp32_tlv_unwrap(uint16_t tag, const uint8_t *der, size_t len, const uint8_t **value,
                          size_t *value_len, esim_error *err)
{
    size_t tlv_len = 0, tag_len = tag > 0xff ? 2 : 1;
    if (!der || len < tag_len + 1)
        return esim_fail(err, ESIM_EINVAL, "not a %04X TLV: too short", tag);
    if (len > SGP32_DER_MAX)
        return esim_fail(err, ESIM_ETOOBIG, "DER of %zu bytes is over the %d-byte limit", len,
                         SGP32_DER_MAX);
    if ((tag_len == 2 && (der[0] != (uint8_t)(tag >> 8) || der[1] != (uint8_t)tag)) ||
        (tag_len == 1 && der[0] != (uint8_t)tag))
        return esim_fail(err, ESIM_EINVAL, "not a %04X TLV", tag);
    esim_err rc = check_tlv(der, len, &tlv_len, 0, err);
    if (rc != ESIM_OK)
        return rc;
    if (tlv_len != len)
        return esim_fail(err, ESIM_EINVAL, "%zu bytes after the %04X TLV", len - tlv_len, tag);
    uint8_t l = der[tag_len];
    size_t hdr = tag_len + (l < 0x80 ? 1 : 1 + (size_t)(l & 0x7f));
    *value = der + hdr;
    *value_len = len - hdr;
    return ESIM_OK;
}

/* ---- the simulators' bound profile package ------------------------------------------------ */

esim_err sgp32_bpp_sign_input(const Es9BoundProfilePackage_t *b, const OCTET_STRING_t *euicc_sig2,
                              esim_buf *out)
{
    const InitialiseSecureChannelRequest_t *i = &b->initialiseSecureChannelRequest;
    esim_err rc = esim_buf_append(out, i->transactionId.buf, i->transactionId.size);
    if (rc == ESIM_OK)
        rc = esim_buf_append(out, i->smdpOtpk.buf, i->smdpOtpk.size);
    if (rc == ESIM_OK)
        rc = esim_buf_append(out, euicc_sig2->buf, euicc_sig2->size);
    for (int k = 0; rc == ESIM_OK && k < b->sequenceOf88.list.count; k++)
        rc = esim_buf_append(out, b->sequenceOf88.list.array[k]->buf,
                             b->sequenceOf88.list.array[k]->size);
    for (int k = 0; rc == ESIM_OK && k < b->sequenceOf86.list.count; k++)
        rc = esim_buf_append(out, b->sequenceOf86.list.array[k]->buf,
                             b->sequenceOf86.list.array[k]->size);
    return rc;
}
