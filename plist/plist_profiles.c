/*
 * plist_profiles.c — configuration profiles (.mobileconfig): payload dicts,
 * the Configuration wrapper, CMS signing with OpenSSL, and reading a profile
 * back the way a device does (plain plist or CMS SignedData).
 */
#include <string.h>

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "plist/plist_internal.h"

plist_t esim_payload_new(const char *payload_type, const char *identifier, const char *uuid,
                         const char *display_name)
{
    if (!payload_type || !payload_type[0] || !identifier || !identifier[0])
        return NULL;
    if (uuid && !esim_uuid_valid(uuid))
        return NULL;
    char fresh[ESIM_UUID_LEN + 1];
    if (!uuid) {
        esim_uuid_new(fresh);
        uuid = fresh;
    }
    plist_t d = plist_new_dict();
    if (!d)
        return NULL;
    plist_dict_set_item(d, "PayloadType", plist_new_string(payload_type));
    plist_dict_set_item(d, "PayloadIdentifier", plist_new_string(identifier));
    plist_dict_set_item(d, "PayloadUUID", plist_new_string(uuid));
    plist_dict_set_item(d, "PayloadVersion", plist_new_uint(1));
    if (display_name)
        plist_dict_set_item(d, "PayloadDisplayName", plist_new_string(display_name));
    return d;
}

/* A payload inside PayloadContent must itself say what it is. */
static esim_err check_payload(plist_t p, size_t index, esim_error *err)
{
    char what[48];
    snprintf(what, sizeof what, "payload %zu", index + 1);
    if (!p || plist_get_node_type(p) != PLIST_DICT)
        return esim_fail(err, ESIM_EINVAL, "%s is not a dictionary", what);
    char buf[256];
    esim_err rc = plist_read_string(p, "PayloadType", true, buf, sizeof buf, what, err);
    if (rc == ESIM_OK && !buf[0])
        rc = esim_fail(err, ESIM_EINVAL, "%s: PayloadType is empty", what);
    if (rc == ESIM_OK)
        rc = plist_read_string(p, "PayloadIdentifier", true, buf, sizeof buf, what, err);
    if (rc == ESIM_OK)
        rc = plist_read_string(p, "PayloadUUID", true, buf, sizeof buf, what, err);
    return rc;
}

esim_err esim_profile_build(const esim_profile_opts *opts, const plist_t *payloads, size_t n,
                            esim_plist_format format, esim_buf *out, esim_error *err)
{
    if (!opts || !opts->identifier || !opts->identifier[0])
        return esim_fail(err, ESIM_EINVAL,
                         "a profile needs a PayloadIdentifier, for example com.example.esim");
    if (strlen(opts->identifier) > 255)
        return esim_fail(err, ESIM_EINVAL, "the profile identifier is longer than 255 bytes");
    if (opts->uuid && !esim_uuid_valid(opts->uuid))
        return esim_fail(err, ESIM_EINVAL,
                         "profile PayloadUUID '%.80s' is not a UUID (8-4-4-4-12 hex digits)",
                         opts->uuid);
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the profile");
    if (n > 0 && !payloads)
        return esim_fail(err, ESIM_EINVAL, "%zu payloads announced but none given", n);
    for (size_t k = 0; k < n; k++) {
        esim_err rc = check_payload(payloads[k], k, err);
        if (rc != ESIM_OK)
            return rc;
    }
    plist_t profile = esim_payload_new("Configuration", opts->identifier, opts->uuid,
                                       opts->display_name ? opts->display_name : opts->identifier);
    if (!profile)
        return esim_fail(err, ESIM_ENOMEM, "out of memory building a profile");
    if (opts->description)
        plist_dict_set_item(profile, "PayloadDescription", plist_new_string(opts->description));
    if (opts->organization)
        plist_dict_set_item(profile, "PayloadOrganization", plist_new_string(opts->organization));
    plist_t content = plist_new_array();
    for (size_t k = 0; k < n; k++)
        plist_array_append_item(content, plist_copy(payloads[k]));
    plist_dict_set_item(profile, "PayloadContent", content);
    esim_err rc = esim_plist_serialize(profile, format, out, err);
    plist_free(profile);
    return rc;
}

/* The first OpenSSL error in words, so a crypto failure says something. */
static esim_err crypto_fail(esim_error *err, const char *doing)
{
    char why[256];
    return esim_fail(err, ESIM_ECRYPTO, "%s failed: %s", doing,
                     esim_openssl_error_text(why, sizeof why, "unknown OpenSSL error"));
}

esim_err esim_profile_sign(const void *profile, size_t len, const esim_cert *signer, esim_buf *out,
                           esim_error *err)
{
    if (!signer || !signer->x509 || !signer->key)
        return esim_fail(err, ESIM_EINVAL, "signing a profile needs a certificate and its key");
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the signed profile");
    plist_t root = NULL;
    bool was_signed = false;
    esim_err rc = esim_profile_parse(profile, len, NULL, &root, &was_signed, err);
    plist_free(root);
    if (rc != ESIM_OK)
        return rc;
    if (was_signed)
        return esim_fail(err, ESIM_EINVAL, "the profile is already signed");
    if (X509_check_private_key(signer->x509, signer->key) != 1) {
        ERR_clear_error();
        return esim_fail(err, ESIM_ECRYPTO, "the signing key does not match the certificate");
    }
    BIO *in = BIO_new_mem_buf(profile, (int)len);
    if (!in)
        return esim_fail(err, ESIM_ENOMEM, "out of memory signing a profile");
    /* CMS_BINARY: the profile's bytes are signed as they are, with no MIME
     * line-ending canonicalisation, so the device hashes exactly the same. */
    CMS_ContentInfo *cms = CMS_sign(signer->x509, signer->key, NULL, in, CMS_BINARY);
    BIO_free(in);
    if (!cms)
        return crypto_fail(err, "CMS signing");
    unsigned char *der = NULL;
    int der_len = i2d_CMS_ContentInfo(cms, &der);
    CMS_ContentInfo_free(cms);
    if (der_len <= 0)
        return crypto_fail(err, "CMS encoding");
    esim_buf fresh = {0};
    rc = esim_buf_append(&fresh, der, (size_t)der_len);
    OPENSSL_free(der);
    if (rc != ESIM_OK) {
        esim_buf_free(&fresh);
        return esim_fail(err, rc, "out of memory signing a profile");
    }
    esim_buf_free(out);
    *out = fresh;
    return ESIM_OK;
}

/* Opens CMS SignedData with attached content and checks its signature
 * (integrity only: the signer need not chain to anything we know, as on a
 * device that shows "Not Verified" but still installs). */
static esim_err cms_open(const unsigned char *data, size_t len, esim_buf *content, esim_error *err)
{
    const unsigned char *p = data;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    if (!cms) {
        ERR_clear_error();
        return esim_fail(err, ESIM_EINVAL,
                         "not a configuration profile: neither a plist nor CMS SignedData (DER)");
    }
    esim_err rc = ESIM_OK;
    BIO *bio = NULL;
    if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed) {
        rc = esim_fail(err, ESIM_EINVAL, "the CMS structure is not SignedData");
        goto done;
    }
    ASN1_OCTET_STRING **inner = CMS_get0_content(cms);
    if (!inner || !*inner) {
        rc = esim_fail(err, ESIM_EINVAL,
                       "the CMS signature is detached: the profile itself is not inside");
        goto done;
    }
    bio = BIO_new(BIO_s_mem());
    if (!bio) {
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory reading a signed profile");
        goto done;
    }
    if (CMS_verify(cms, NULL, NULL, NULL, bio, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY) != 1) {
        char why[256];
        rc = esim_fail(err, ESIM_EINVAL, "the profile's CMS signature does not verify: %s",
                       esim_openssl_error_text(why, sizeof why, "unknown reason"));
        goto done;
    }
    char *bytes = NULL;
    long n = BIO_get_mem_data(bio, &bytes);
    esim_buf fresh = {0};
    if (n < 0 || esim_buf_append(&fresh, bytes, (size_t)n) != ESIM_OK) {
        esim_buf_free(&fresh);
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory reading a signed profile");
        goto done;
    }
    esim_buf_free(content);
    *content = fresh;
done:
    BIO_free(bio);
    CMS_ContentInfo_free(cms);
    return rc;
}

esim_err esim_profile_parse(const void *data, size_t len, const esim_parse_limits *limits,
                            plist_t *root, bool *was_signed, esim_error *err)
{
    if (!root)
        return esim_fail(err, ESIM_EINVAL, "no place to put the profile");
    if (!data || len == 0)
        return esim_fail(err, ESIM_EINVAL, "the profile is empty");
    esim_parse_limits l = plist_effective_limits(limits);
    if (len > l.max_body || len > INT32_MAX)
        return esim_fail(err, ESIM_ETOOBIG, "the profile is %zu bytes, over the limit of %zu", len,
                         l.max_body);
    bool signed_profile = !plist_looks_like_plist(data, len);
    esim_buf inner = {0};
    const void *plist_bytes = data;
    size_t plist_len = len;
    esim_err rc;
    if (signed_profile) {
        if ((rc = cms_open(data, len, &inner, err)) != ESIM_OK)
            return rc;
        plist_bytes = inner.data;
        plist_len = inner.len;
    }
    plist_t node = NULL;
    rc = esim_plist_parse_dict(plist_bytes, plist_len, &l, &node, err);
    esim_buf_free(&inner);
    if (rc != ESIM_OK)
        return rc;
    char type[64];
    char buf[256];
    const char *what = "profile";
    if ((rc = plist_read_string(node, "PayloadType", true, type, sizeof type, what, err)) !=
        ESIM_OK)
        goto fail;
    if (strcmp(type, "Configuration") != 0) {
        rc = esim_fail(err, ESIM_EINVAL,
                       "profile: PayloadType is '%s'; a configuration profile says Configuration",
                       type);
        goto fail;
    }
    if ((rc = plist_read_string(node, "PayloadIdentifier", true, buf, sizeof buf, what, err)) !=
        ESIM_OK)
        goto fail;
    if (!buf[0]) {
        rc = esim_fail(err, ESIM_EINVAL, "profile: PayloadIdentifier is empty");
        goto fail;
    }
    if ((rc = plist_read_string(node, "PayloadUUID", true, buf, sizeof buf, what, err)) != ESIM_OK)
        goto fail;
    plist_t content = plist_dict_get_item(node, "PayloadContent");
    if (content && plist_get_node_type(content) != PLIST_ARRAY) {
        rc = esim_fail(err, ESIM_EINVAL, "profile: PayloadContent must be an array");
        goto fail;
    }
    *root = node;
    if (was_signed)
        *was_signed = signed_profile;
    return ESIM_OK;
fail:
    plist_free(node);
    return rc;
}
