/*
 * pki.c — the project's test PKI, made with OpenSSL: certificates for TLS on
 * loopback, the APNs push certificate (topic in the subject UID), the device
 * identity CA that stands in for SCEP, and the GSMA-style eSIM chain
 * (CI -> EUM -> eUICC, CI -> DPauth, CI -> eIM) whose eUICC certificates carry the EID
 * as subject serialNumber. Used by `esim-mdm pki`, the demo and the tests.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/esim.h"

static esim_err crypto_fail(esim_error *err, const char *what)
{
    char why[256];
    return esim_fail(err, ESIM_ECRYPTO, "%s: %s", what,
                     esim_openssl_error_text(why, sizeof why, "no detail from OpenSSL"));
}

static EVP_PKEY *make_key(esim_key_type type)
{
    return type == ESIM_KEY_RSA2048 ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
}

static bool add_name_entry(X509_NAME *name, int nid, const char *value)
{
    if (!value || !*value)
        return true;
    return X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8, (const unsigned char *)value, -1,
                                      -1, 0) == 1;
}

static bool add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return false;
    bool ok = X509_add_ext(cert, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

static bool add_extensions(X509 *cert, X509 *issuer, const esim_cert_spec *spec)
{
    char san[600];
    if (!add_ext(cert, issuer, NID_basic_constraints,
                 spec->is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE"))
        return false;
    if (!add_ext(cert, issuer, NID_key_usage,
                 spec->is_ca ? "critical,keyCertSign,cRLSign,digitalSignature"
                             : "critical,digitalSignature,keyEncipherment"))
        return false;
    if (!add_ext(cert, issuer, NID_subject_key_identifier, "hash"))
        return false;
    if (issuer != cert && !add_ext(cert, issuer, NID_authority_key_identifier, "keyid:always"))
        return false;
    if (spec->server_auth || spec->client_auth) {
        const char *eku = spec->server_auth && spec->client_auth ? "serverAuth,clientAuth"
                          : spec->server_auth                    ? "serverAuth"
                                                                 : "clientAuth";
        if (!add_ext(cert, issuer, NID_ext_key_usage, eku))
            return false;
    }
    if (spec->dns_name) {
        if (strcmp(spec->dns_name, "localhost") == 0)
            snprintf(san, sizeof san, "DNS:localhost,IP:127.0.0.1,IP:::1");
        else
            snprintf(san, sizeof san, "DNS:%s", spec->dns_name);
        if (!add_ext(cert, issuer, NID_subject_alt_name, san))
            return false;
    }
    return true;
}

esim_err esim_cert_issue(const esim_cert_spec *spec, const esim_cert *issuer, esim_cert *out,
                         esim_error *err)
{
    if (!spec || !spec->common_name || !*spec->common_name)
        return esim_fail(err, ESIM_EINVAL, "a certificate needs a common name");
    if (issuer && (!issuer->x509 || !issuer->key))
        return esim_fail(err, ESIM_EINVAL, "the issuer needs both its certificate and its key");

    esim_err rc = ESIM_ECRYPTO;
    EVP_PKEY *key = make_key(spec->key_type);
    X509 *cert = X509_new();
    unsigned char serial[16];
    if (!key || !cert || esim_random_bytes(serial, sizeof serial) != ESIM_OK) {
        rc = crypto_fail(err, "cannot make a key pair");
        goto fail;
    }
    serial[0] &= 0x7f; /* a positive serial number */
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    bool ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
    BN_free(bn);

    X509_NAME *name = X509_get_subject_name(cert);
    ok = ok && X509_set_version(cert, 2) == 1 &&
         add_name_entry(name, NID_commonName, spec->common_name) &&
         add_name_entry(name, NID_organizationName, spec->organization) &&
         add_name_entry(name, NID_userId, spec->uid) &&
         add_name_entry(name, NID_serialNumber, spec->serial_number);
    X509 *signer_cert = issuer ? issuer->x509 : cert;
    EVP_PKEY *signer_key = issuer ? issuer->key : key;
    int days = spec->days > 0 ? spec->days : 825;
    ok = ok && X509_set_issuer_name(cert, X509_get_subject_name(signer_cert)) == 1 &&
         X509_gmtime_adj(X509_getm_notBefore(cert), -3600) &&
         X509_gmtime_adj(X509_getm_notAfter(cert), (long)days * 86400) &&
         X509_set_pubkey(cert, key) == 1 && add_extensions(cert, signer_cert, spec) &&
         X509_sign(cert, signer_key, EVP_sha256()) > 0;
    if (!ok) {
        rc = crypto_fail(err, "cannot build the certificate");
        goto fail;
    }
    out->x509 = cert;
    out->key = key;
    return ESIM_OK;
fail:
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

void esim_cert_clear(esim_cert *c)
{
    if (!c)
        return;
    X509_free(c->x509);
    EVP_PKEY_free(c->key);
    c->x509 = NULL;
    c->key = NULL;
}

/* Serializes with a PEM writer into memory, then replaces the file atomically. */
static esim_err save_pem(const char *path, unsigned mode, X509 *cert, EVP_PKEY *key,
                         esim_error *err)
{
    BIO *mem = BIO_new(BIO_s_mem());
    if (!mem)
        return ESIM_ENOMEM;
    int ok = cert ? PEM_write_bio_X509(mem, cert)
                  : PEM_write_bio_PrivateKey(mem, key, NULL, NULL, 0, NULL, NULL);
    esim_err rc;
    if (!ok) {
        rc = crypto_fail(err, "cannot encode PEM");
    } else {
        char *data;
        long len = BIO_get_mem_data(mem, &data);
        rc = esim_write_file_atomic(path, data, (size_t)len, mode, err);
    }
    BIO_free(mem);
    return rc;
}

esim_err esim_cert_save(const esim_cert *c, const char *cert_path, const char *key_path,
                        esim_error *err)
{
    esim_err rc = save_pem(cert_path, 0644, c->x509, NULL, err);
    if (rc == ESIM_OK && key_path && c->key)
        rc = save_pem(key_path, 0600, NULL, c->key, err);
    return rc;
}

esim_err esim_cert_load(const char *cert_path, const char *key_path, esim_cert *out,
                        esim_error *err)
{
    esim_cert c = {0};
    FILE *f = fopen(cert_path, "r");
    if (!f)
        return esim_fail(err, ESIM_ENOTFOUND, "cannot open certificate %s", cert_path);
    c.x509 = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!c.x509)
        return crypto_fail(err, "not a PEM certificate");
    if (key_path) {
        esim_err prc = esim_check_private_file(key_path, err);
        if (prc != ESIM_OK && prc != ESIM_ENOTFOUND) {
            esim_cert_clear(&c);
            return prc;
        }
        f = fopen(key_path, "r");
        if (!f) {
            esim_cert_clear(&c);
            return esim_fail(err, ESIM_ENOTFOUND, "cannot open private key %s", key_path);
        }
        c.key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
        if (!c.key) {
            esim_cert_clear(&c);
            return crypto_fail(err, "not a PEM private key (or it is encrypted)");
        }
        if (X509_check_private_key(c.x509, c.key) != 1) {
            esim_cert_clear(&c);
            ERR_clear_error();
            return esim_fail(err, ESIM_ECRYPTO, "private key %s does not match certificate %s",
                             key_path, cert_path);
        }
    }
    *out = c;
    return ESIM_OK;
}

esim_err esim_pki_load(const char *dir, const char *name, esim_cert *out, esim_error *err)
{
    char cert_path[4096], key_path[4096];
    snprintf(cert_path, sizeof cert_path, "%s/%s.pem", dir, name);
    snprintf(key_path, sizeof key_path, "%s/%s.key", dir, name);
    return esim_cert_load(cert_path, key_path, out, err);
}

/* Loads NAME from |dir|, or issues and saves it when it is not there yet. */
static esim_err ensure(const char *dir, const char *name, const esim_cert_spec *spec,
                       const esim_cert *issuer, esim_cert *out, esim_error *err)
{
    char cert_path[4096], key_path[4096];
    snprintf(cert_path, sizeof cert_path, "%s/%s.pem", dir, name);
    snprintf(key_path, sizeof key_path, "%s/%s.key", dir, name);
    struct stat st;
    if (stat(cert_path, &st) == 0 && stat(key_path, &st) == 0)
        return esim_cert_load(cert_path, key_path, out, err);
    esim_err rc = esim_cert_issue(spec, issuer, out, err);
    if (rc == ESIM_OK && (rc = esim_cert_save(out, cert_path, key_path, err)) != ESIM_OK)
        esim_cert_clear(out);
    return rc;
}

esim_err esim_pki_create(const char *dir, esim_error *err)
{
    esim_err rc = esim_mkdirs(dir, 0700, err);
    if (rc != ESIM_OK)
        return rc;

    char topic_path[4096], topic[128];
    snprintf(topic_path, sizeof topic_path, "%s/push.topic", dir);
    esim_buf existing = {0};
    if (esim_read_file(topic_path, 200, &existing, NULL) == ESIM_OK && existing.len > 0) {
        snprintf(topic, sizeof topic, "%.*s", (int)strcspn((char *)existing.data, "\r\n"),
                 (char *)existing.data);
    } else {
        char uuid[ESIM_UUID_LEN + 1];
        esim_uuid_new(uuid);
        snprintf(topic, sizeof topic, "com.apple.mgmt.External.%s", uuid);
    }
    esim_buf_free(&existing);

    esim_cert ca = {0}, leaf = {0}, device_ca = {0}, ci = {0}, eum = {0};
    const esim_cert_spec ca_spec = {.common_name = "esim-mdm test CA",
                                    .organization = "esim-mdm test",
                                    .is_ca = true,
                                    .days = 3650};
    const esim_cert_spec server_spec = {.common_name = "localhost",
                                        .organization = "esim-mdm test",
                                        .dns_name = "localhost",
                                        .server_auth = true};
    const esim_cert_spec push_spec = {.common_name = "APSP:esim-mdm test push",
                                      .uid = topic,
                                      .organization = "esim-mdm test",
                                      .client_auth = true,
                                      .key_type = ESIM_KEY_RSA2048};
    const esim_cert_spec device_ca_spec = {.common_name = "esim-mdm test device CA",
                                           .organization = "esim-mdm test",
                                           .is_ca = true,
                                           .key_type = ESIM_KEY_RSA2048,
                                           .days = 3650};
    const esim_cert_spec ci_spec = {.common_name = "esim-mdm test CI",
                                    .organization = "GSMA test",
                                    .is_ca = true,
                                    .days = 3650};
    const esim_cert_spec eum_spec = {.common_name = "esim-mdm test EUM",
                                     .organization = "EUM test",
                                     .is_ca = true,
                                     .days = 3650};
    const esim_cert_spec dpauth_spec = {.common_name = "esim-mdm test SM-DP+ auth",
                                        .organization = "SM-DP+ test",
                                        .dns_name = "localhost"};
    /* The eIM's package-signing key (SGP.32 eimSignature): ECDSA P-256,
     * certified by the CI, which the eUICCs check it against when it is
     * associated (AddInitialEim, addEim). */
    const esim_cert_spec eim_spec = {.common_name = "esim-mdm test eIM",
                                     .organization = "esim-mdm test"};

    if ((rc = ensure(dir, "ca", &ca_spec, NULL, &ca, err)) ||
        (rc = ensure(dir, "server", &server_spec, &ca, &leaf, err)))
        goto done;
    esim_cert_clear(&leaf);
    if ((rc = ensure(dir, "push", &push_spec, &ca, &leaf, err)))
        goto done;
    /* The topic is the push certificate's UID: read it back so an existing
     * certificate and push.topic always agree. */
    if (esim_cert_subject_field(leaf.x509, NID_userId, topic, sizeof topic) != ESIM_OK) {
        rc = esim_fail(err, ESIM_ECRYPTO, "%s/push.pem has no UID (topic) in its subject", dir);
        goto done;
    }
    esim_cert_clear(&leaf);
    size_t tlen = strlen(topic);
    topic[tlen] = '\n';
    rc = esim_write_file_atomic(topic_path, topic, tlen + 1, 0644, err);
    topic[tlen] = '\0';
    if (rc || (rc = ensure(dir, "device-ca", &device_ca_spec, NULL, &device_ca, err)) ||
        (rc = ensure(dir, "ci", &ci_spec, NULL, &ci, err)) ||
        (rc = ensure(dir, "eum", &eum_spec, &ci, &eum, err)) ||
        (rc = ensure(dir, "dpauth", &dpauth_spec, &ci, &leaf, err)))
        goto done;
    esim_cert_clear(&leaf);
    if ((rc = ensure(dir, "eim", &eim_spec, &ci, &leaf, err)))
        goto done;
    if (X509_check_issued(ci.x509, leaf.x509) != X509_V_OK) {
        /* From an older PKI, issued by the test CA: the eUICCs would refuse
         * it (ciPKUnknown). Issued again, by the CI. */
        char path[4096];
        esim_cert_clear(&leaf);
        snprintf(path, sizeof path, "%s/eim.pem", dir);
        remove(path);
        if ((rc = ensure(dir, "eim", &eim_spec, &ci, &leaf, err)))
            goto done;
    }
done:
    esim_cert_clear(&ca);
    esim_cert_clear(&leaf);
    esim_cert_clear(&device_ca);
    esim_cert_clear(&ci);
    esim_cert_clear(&eum);
    return rc;
}

esim_err esim_cert_subject_field(X509 *x509, int nid, char *out, size_t out_len)
{
    X509_NAME *name = X509_get_subject_name(x509);
    int idx = name ? X509_NAME_get_index_by_NID(name, nid, -1) : -1;
    if (idx < 0)
        return ESIM_ENOTFOUND;
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx)));
    if (n < 0)
        return ESIM_ECRYPTO;
    esim_err rc = ESIM_OK;
    if ((size_t)n >= out_len)
        rc = ESIM_ETOOBIG;
    else {
        memcpy(out, utf8, (size_t)n);
        out[n] = '\0';
    }
    OPENSSL_free(utf8);
    return rc;
}

esim_err esim_cert_sha256_hex(X509 *x509, char out[65])
{
    unsigned char md[32];
    unsigned int len = 0;
    if (X509_digest(x509, EVP_sha256(), md, &len) != 1 || len != 32)
        return ESIM_ECRYPTO;
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
    return ESIM_OK;
}
