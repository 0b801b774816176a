/*
 * jwt.c — APNs provider tokens: ES256 JWTs ({alg, kid} header, {iss, iat}
 * claims) signed with the team's .p8 key. JOSE wants the raw r||s signature
 * (64 bytes for P-256), not OpenSSL's DER, so we convert both ways.
 */
#include <string.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "apns/internal.h"

static esim_err check_p256(EVP_PKEY *key, const char *path, esim_error *err)
{
    char group[64] = "";
    size_t glen = 0;
    if (!EVP_PKEY_is_a(key, "EC") ||
        EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                       &glen) != 1 ||
        strcmp(group, "prime256v1") != 0)
        return esim_fail(err, ESIM_ECRYPTO,
                         "'%s' is not a P-256 EC key (APNs provider tokens are ES256)", path);
    return ESIM_OK;
}

static esim_err read_key(const char *path, bool public_ok, EVP_PKEY **out, esim_error *err)
{
    *out = NULL;
    esim_buf pem = {0};
    /* A signing key must be private; a verifier may be handed a public key. */
    esim_err e = public_ok ? esim_read_file(path, 64 * 1024, &pem, err)
                           : esim_read_private_file(path, 64 * 1024, &pem, err);
    if (e != ESIM_OK)
        return e;
    BIO *bio = BIO_new_mem_buf(pem.data, (int)pem.len);
    EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    if (key && public_ok && (e = esim_check_private_file(path, err)) != ESIM_OK) {
        EVP_PKEY_free(key);
        BIO_free(bio);
        esim_buf_free(&pem);
        return e;
    }
    if (key == NULL && bio && public_ok) {
        (void)BIO_reset(bio);
        key = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    }
    BIO_free(bio);
    esim_buf_free(&pem);
    ERR_clear_error();
    if (key == NULL)
        return esim_fail(err, ESIM_ECRYPTO, "'%s' holds no PEM %skey", path,
                         public_ok ? "public or private " : "private ");
    e = check_p256(key, path, err);
    if (e != ESIM_OK) {
        EVP_PKEY_free(key);
        return e;
    }
    *out = key;
    return ESIM_OK;
}

esim_err apns_jwt_load_key(const char *p8_path, EVP_PKEY **out, esim_error *err)
{
    return read_key(p8_path, false, out, err);
}

esim_err apns_jwt_load_verify_key(const char *path, EVP_PKEY **out, esim_error *err)
{
    return read_key(path, true, out, err);
}

esim_err apns_b64url_append(esim_buf *out, const unsigned char *data, size_t len)
{
    esim_buf b64 = {0};
    esim_err e = esim_base64_encode(data, len, &b64);
    if (e != ESIM_OK)
        return e;
    size_t n = 0;
    for (size_t i = 0; i < b64.len && b64.data[i] != '='; i++, n++)
        b64.data[i] = b64.data[i] == '+' ? '-' : b64.data[i] == '/' ? '_' : b64.data[i];
    e = esim_buf_append(out, b64.data, n);
    esim_buf_free(&b64);
    return e;
}

static esim_err b64url_decode(const char *s, size_t len, esim_buf *out)
{
    esim_buf tmp = {0};
    esim_err e = esim_buf_reserve(&tmp, len + 4);
    for (size_t i = 0; e == ESIM_OK && i < len; i++) {
        char c = s[i];
        if (c == '+' || c == '/' || c == '=')
            e = ESIM_EINVAL; /* base64url only */
        else
            tmp.data[tmp.len++] = c == '-' ? '+' : c == '_' ? '/' : (unsigned char)c;
    }
    if (e == ESIM_OK) {
        tmp.data[tmp.len] = '\0';
        e = esim_base64_decode((const char *)tmp.data, tmp.len, out, NULL);
    }
    esim_buf_free(&tmp);
    return e;
}

esim_err apns_jwt_sign(EVP_PKEY *key, const char *key_id, const char *team_id, int64_t iat_s,
                       esim_buf *out, esim_error *err)
{
    esim_buf_reset(out);
    esim_buf part = {0};
    esim_err e = esim_buf_printf(&part, "{\"alg\":\"ES256\",\"kid\":\"%s\"}", key_id);
    if (e == ESIM_OK)
        e = apns_b64url_append(out, part.data, part.len);
    esim_buf_reset(&part);
    if (e == ESIM_OK)
        e = esim_buf_printf(&part, "{\"iss\":\"%s\",\"iat\":%lld}", team_id, (long long)iat_s);
    if (e == ESIM_OK)
        e = esim_buf_append_str(out, ".");
    if (e == ESIM_OK)
        e = apns_b64url_append(out, part.data, part.len);
    esim_buf_free(&part);
    if (e != ESIM_OK)
        return esim_fail(err, e, "out of memory building a provider token");

    unsigned char der[128];
    size_t der_len = sizeof der;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
             EVP_DigestSign(md, der, &der_len, out->data, out->len) == 1;
    EVP_MD_CTX_free(md);
    const unsigned char *p = der;
    ECDSA_SIG *sig = ok ? d2i_ECDSA_SIG(NULL, &p, (long)der_len) : NULL;
    unsigned char raw[64];
    ok = sig && BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32) == 32 &&
         BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32) == 32;
    ECDSA_SIG_free(sig);
    if (!ok) {
        ERR_clear_error();
        return esim_fail(err, ESIM_ECRYPTO, "signing the provider token failed");
    }
    e = esim_buf_append_str(out, ".");
    if (e == ESIM_OK)
        e = apns_b64url_append(out, raw, sizeof raw);
    return e == ESIM_OK ? ESIM_OK : esim_fail(err, e, "out of memory building a provider token");
}

static bool verify_signature(EVP_PKEY *key, const char *signed_part, size_t signed_len,
                             const esim_buf *raw)
{
    if (raw->len != 64)
        return false;
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(raw->data, 32, NULL);
    BIGNUM *s = BN_bin2bn(raw->data + 32, 32, NULL);
    if (sig == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(sig, r, s) != 1) {
        ECDSA_SIG_free(sig);
        BN_free(r);
        BN_free(s);
        return false;
    }
    unsigned char *der = NULL;
    int der_len = i2d_ECDSA_SIG(sig, &der);
    ECDSA_SIG_free(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = der_len > 0 && md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
              EVP_DigestVerify(md, der, (size_t)der_len, (const unsigned char *)signed_part,
                               signed_len) == 1;
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ERR_clear_error();
    return ok;
}

static json_t *decode_json_part(const char *s, size_t len)
{
    esim_buf raw = {0};
    json_t *j = NULL;
    if (b64url_decode(s, len, &raw) == ESIM_OK && raw.len > 0)
        j = json_loadb((const char *)raw.data, raw.len, 0, NULL);
    esim_buf_free(&raw);
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

apns_jwt_check apns_jwt_verify(const char *jwt, size_t len, EVP_PKEY *key, int64_t now_s)
{
    if (len == 0 || len > 4096)
        return APNS_JWT_MALFORMED;
    const char *dot1 = memchr(jwt, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - jwt)) : NULL;
    if (dot1 == NULL || dot2 == NULL || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - jwt)))
        return APNS_JWT_MALFORMED;
    json_t *hdr = decode_json_part(jwt, (size_t)(dot1 - jwt));
    json_t *claims = decode_json_part(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    apns_jwt_check rc = APNS_JWT_OK;
    const char *alg = hdr ? json_string_value(json_object_get(hdr, "alg")) : NULL;
    json_t *iat = claims ? json_object_get(claims, "iat") : NULL;
    if (alg == NULL || strcmp(alg, "ES256") != 0 || !json_is_string(json_object_get(hdr, "kid")) ||
        !json_is_string(json_object_get(claims, "iss")) || !json_is_integer(iat))
        rc = APNS_JWT_MALFORMED;
    esim_buf sig = {0};
    if (rc == APNS_JWT_OK &&
        b64url_decode(dot2 + 1, len - (size_t)(dot2 + 1 - jwt), &sig) != ESIM_OK)
        rc = APNS_JWT_MALFORMED;
    if (rc == APNS_JWT_OK && key && !verify_signature(key, jwt, (size_t)(dot2 - jwt), &sig))
        rc = APNS_JWT_BAD_SIGNATURE;
    /* APNs refuses tokens issued more than an hour ago. */
    if (rc == APNS_JWT_OK && now_s - (int64_t)json_integer_value(iat) > 3600)
        rc = APNS_JWT_EXPIRED;
    esim_buf_free(&sig);
    json_decref(hdr);
    json_decref(claims);
    return rc;
}
