/*
 * rsp_crypto.c — the simulator's crypto and small shared helpers: opening
 * the test PKI, ECDSA P-256 with GSMA raw r||s signatures, verifying the
 * CI -> EUM -> eUICC (and CI -> DPauth) chains, device identity certificates,
 * and the JSON/base64 glue every sim/ file uses.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "sim/sim_internal.h"

/* ---- PKI ---------------------------------------------------------------- */

static esim_err read_identity_key(const char *path, EVP_PKEY **out, esim_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return ESIM_ENOTFOUND;
    *out = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!*out)
        return esim_fail(err, ESIM_ECRYPTO, "%s is not a PEM private key; delete it", path);
    return ESIM_OK;
}

static esim_err load_identity_key(struct sim_pki *p, esim_error *err)
{
    char path[SIM_PATH_MAX + 32], tmp[SIM_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/sim-identity.key", p->dir);
    esim_err rc = read_identity_key(path, &p->identity_key, err);
    if (rc != ESIM_ENOTFOUND)
        return rc;
    /* One RSA key for every simulated identity: SCEP would give each iPhone
     * its own, but 100,000 RSA key generations would dominate the run; each
     * device still has its own certificate (CN = UDID). */
    EVP_PKEY *k = EVP_RSA_gen(2048);
    if (!k)
        return esim_fail(err, ESIM_ECRYPTO, "could not generate the simulator identity key");
    BIO *mem = BIO_new(BIO_s_mem());
    if (!mem || !PEM_write_bio_PrivateKey(mem, k, NULL, NULL, 0, NULL, NULL)) {
        BIO_free(mem);
        EVP_PKEY_free(k);
        return esim_fail(err, ESIM_ECRYPTO, "could not encode the simulator identity key");
    }
    char *data = NULL;
    long n = BIO_get_mem_data(mem, &data);
    /* Two processes may start on a fresh PKI at once: write aside, then
     * link() (which never replaces) so exactly one key wins and both use it. */
    snprintf(tmp, sizeof tmp, "%s.new.%ld", path, (long)getpid());
    rc = esim_write_file_atomic(tmp, data, (size_t)n, 0600, err);
    BIO_free(mem);
    EVP_PKEY_free(k);
    if (rc != ESIM_OK)
        return rc;
    if (link(tmp, path) != 0 && errno != EEXIST) {
        unlink(tmp);
        return esim_fail(err, ESIM_EIO, "cannot create %s: %s", path, strerror(errno));
    }
    unlink(tmp);
    return read_identity_key(path, &p->identity_key, err);
}

esim_err sim_pki_open(const char *dir, sim_pki **out, esim_error *err)
{
    if (!dir || !*dir || !out)
        return esim_fail(err, ESIM_EINVAL, "a PKI directory is required");
    if (strlen(dir) >= SIM_PATH_MAX - 32)
        return esim_fail(err, ESIM_EINVAL, "PKI directory path is too long");
    esim_err rc = esim_pki_create(dir, err);
    if (rc != ESIM_OK)
        return rc;
    struct sim_pki *p = calloc(1, sizeof *p);
    if (!p)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    snprintf(p->dir, sizeof p->dir, "%s", dir);
    snprintf(p->ca_file, sizeof p->ca_file, "%s/ca.pem", dir);
    snprintf(p->server_cert_file, sizeof p->server_cert_file, "%s/server.pem", dir);
    snprintf(p->server_key_file, sizeof p->server_key_file, "%s/server.key", dir);
    struct {
        const char *name;
        esim_cert *c;
    } certs[] = {{"ca", &p->ca}, {"server", &p->server}, {"device-ca", &p->device_ca},
                 {"ci", &p->ci}, {"eum", &p->eum},       {"dpauth", &p->dpauth}};
    for (size_t i = 0; i < sizeof certs / sizeof certs[0]; i++) {
        rc = esim_pki_load(dir, certs[i].name, certs[i].c, err);
        if (rc != ESIM_OK)
            goto fail;
    }
    char tpath[SIM_PATH_MAX + 16];
    snprintf(tpath, sizeof tpath, "%s/push.topic", dir);
    esim_buf t = {0};
    rc = esim_read_file(tpath, 1024, &t, err);
    if (rc != ESIM_OK)
        goto fail;
    size_t n = t.len;
    while (n > 0 && (t.data[n - 1] == '\n' || t.data[n - 1] == '\r' || t.data[n - 1] == ' '))
        n--;
    if (n == 0 || n >= sizeof p->topic) {
        esim_buf_free(&t);
        rc = esim_fail(err, ESIM_EINVAL, "%s is empty or too long", tpath);
        goto fail;
    }
    memcpy(p->topic, t.data, n);
    p->topic[n] = '\0';
    esim_buf_free(&t);
    rc = load_identity_key(p, err);
    if (rc == ESIM_OK && sim_x509_to_der(p->eum.x509, &p->eum_der) != ESIM_OK)
        rc = esim_fail(err, ESIM_ECRYPTO, "cannot encode eum.pem");
    if (rc != ESIM_OK)
        goto fail;
    *out = p;
    return ESIM_OK;
fail:
    sim_pki_free(p);
    return rc;
}

void sim_pki_free(sim_pki *p)
{
    if (!p)
        return;
    esim_cert_clear(&p->ca);
    esim_cert_clear(&p->server);
    esim_cert_clear(&p->device_ca);
    esim_cert_clear(&p->ci);
    esim_cert_clear(&p->eum);
    esim_cert_clear(&p->dpauth);
    EVP_PKEY_free(p->identity_key);
    esim_buf_free(&p->eum_der);
    free(p);
}

const char *sim_pki_dir(const sim_pki *p)
{
    return p->dir;
}
const char *sim_pki_topic(const sim_pki *p)
{
    return p->topic;
}
const char *sim_pki_ca_file(const sim_pki *p)
{
    return p->ca_file;
}

esim_err sim_identity_issue(const sim_pki *pki, const char *cn, X509 **out, esim_error *err)
{
    X509 *x = X509_new();
    if (!x)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    unsigned char serial[16];
    esim_err rc = esim_random_bytes(serial, sizeof serial);
    serial[0] &= 0x7f; /* a positive serial number */
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    X509_NAME *name = X509_NAME_new();
    bool ok = rc == ESIM_OK && bn && name && X509_set_version(x, 2) &&
              BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) &&
              X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1,
                                         -1, 0) &&
              X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                         (const unsigned char *)"esim-mdm simulated devices", -1,
                                         -1, 0) &&
              X509_set_subject_name(x, name) &&
              X509_set_issuer_name(x, X509_get_subject_name(pki->device_ca.x509)) &&
              X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
              X509_gmtime_adj(X509_getm_notAfter(x), 365L * 24 * 3600) &&
              X509_set_pubkey(x, pki->identity_key) &&
              /* No extended key usage, as SCEP-issued identities come. */
              X509_sign(x, pki->device_ca.key, EVP_sha256()) > 0;
    BN_free(bn);
    X509_NAME_free(name);
    if (!ok) {
        X509_free(x);
        return esim_fail(err, ESIM_ECRYPTO, "could not issue the identity certificate for %s", cn);
    }
    *out = x;
    return ESIM_OK;
}

/* ---- ECDSA with raw signatures --------------------------------------------- */

esim_err sim_ecdsa_sign_raw(EVP_PKEY *key, const void *data, size_t len, unsigned char sig[64],
                            esim_error *err)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[128];
    size_t der_len = sizeof der;
    esim_err rc = ESIM_ECRYPTO;
    if (md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
        EVP_DigestSign(md, der, &der_len, data, len) == 1) {
        const unsigned char *p = der;
        ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
        if (s && BN_bn2binpad(ECDSA_SIG_get0_r(s), sig, 32) == 32 &&
            BN_bn2binpad(ECDSA_SIG_get0_s(s), sig + 32, 32) == 32)
            rc = ESIM_OK;
        ECDSA_SIG_free(s);
    }
    EVP_MD_CTX_free(md);
    if (rc != ESIM_OK)
        return esim_fail(err, rc, "ECDSA signing failed (is the key P-256?)");
    return ESIM_OK;
}

esim_err sim_ecdsa_verify_raw(EVP_PKEY *pub, const void *data, size_t len, const unsigned char *sig,
                              size_t sig_len, esim_error *err)
{
    if (sig_len != 64)
        return esim_fail(err, ESIM_ECRYPTO, "signature is %zu bytes, a raw P-256 one is 64",
                         sig_len);
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *ss = BN_bin2bn(sig + 32, 32, NULL);
    unsigned char *der = NULL;
    int der_len = -1;
    if (s && r && ss && ECDSA_SIG_set0(s, r, ss) == 1) {
        r = ss = NULL;
        der_len = i2d_ECDSA_SIG(s, &der);
    }
    BN_free(r);
    BN_free(ss);
    ECDSA_SIG_free(s);
    int ok = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (der_len > 0 && md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub) == 1)
        ok = EVP_DigestVerify(md, der, (size_t)der_len, data, len);
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    if (ok != 1)
        return esim_fail(err, ESIM_ECRYPTO, "signature does not verify");
    return ESIM_OK;
}

esim_err sim_chain_verify(X509 *ci, X509 *intermediate, X509 *leaf, esim_error *err)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    STACK_OF(X509) *untrusted = sk_X509_new_null();
    int ok = -1;
    if (store && ctx && untrusted && X509_STORE_add_cert(store, ci) == 1 &&
        (!intermediate || sk_X509_push(untrusted, intermediate) > 0) &&
        X509_STORE_CTX_init(ctx, store, leaf, untrusted) == 1)
        ok = X509_verify_cert(ctx);
    int code = ctx ? X509_STORE_CTX_get_error(ctx) : 0;
    sk_X509_free(untrusted);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    if (ok != 1)
        return esim_fail(err, ESIM_ECRYPTO, "certificate chain does not verify: %s",
                         ok < 0 ? "setup failed" : X509_verify_cert_error_string(code));
    return ESIM_OK;
}

esim_err sim_x509_to_der(X509 *x, esim_buf *out)
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    if (n <= 0)
        return ESIM_ECRYPTO;
    esim_buf_reset(out);
    esim_err rc = esim_buf_append(out, der, (size_t)n);
    OPENSSL_free(der);
    return rc;
}

X509 *sim_x509_from_der(const unsigned char *der, size_t len)
{
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x && p != der + len) {
        X509_free(x);
        return NULL;
    }
    return x;
}

esim_err sim_x509_to_b64(X509 *x, esim_buf *out)
{
    esim_buf der = {0};
    esim_err rc = sim_x509_to_der(x, &der);
    if (rc == ESIM_OK)
        rc = esim_base64_encode(der.data, der.len, out);
    esim_buf_free(&der);
    return rc;
}

X509 *sim_x509_from_b64(const char *b64, esim_error *err)
{
    esim_buf der = {0};
    if (!b64 || esim_base64_decode(b64, strlen(b64), &der, err) != ESIM_OK) {
        esim_buf_free(&der);
        esim_fail(err, ESIM_EINVAL, "certificate is not base64");
        return NULL;
    }
    X509 *x = sim_x509_from_der(der.data, der.len);
    esim_buf_free(&der);
    if (!x)
        esim_fail(err, ESIM_EINVAL, "certificate is not DER X.509");
    return x;
}

/* ---- JSON ------------------------------------------------------------------ */

const char *sim_json_str(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

esim_err sim_json_b64(const json_t *o, const char *key, esim_buf *out, esim_error *err)
{
    const char *s = sim_json_str(o, key);
    if (!s)
        return esim_fail(err, ESIM_EINVAL, "\"%s\" is missing or not a string", key);
    esim_error e2;
    if (esim_base64_decode(s, strlen(s), out, &e2) != ESIM_OK)
        return esim_fail(err, ESIM_EINVAL, "\"%s\" is not base64", key);
    return ESIM_OK;
}

esim_err sim_json_set_b64(json_t *o, const char *key, const void *data, size_t len)
{
    esim_buf b = {0};
    esim_err rc = esim_base64_encode(data, len, &b);
    if (rc == ESIM_OK && json_object_set_new(o, key, json_string((const char *)b.data)) != 0)
        rc = ESIM_ENOMEM;
    esim_buf_free(&b);
    return rc;
}

esim_err sim_json_dump(const json_t *o, esim_buf *out)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s)
        return ESIM_ENOMEM;
    esim_buf_reset(out);
    esim_err rc = esim_buf_append_str(out, s);
    free(s);
    return rc;
}

esim_err sim_json_save(const json_t *o, const char *path, unsigned mode, esim_error *err)
{
    char *s = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    if (!s)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_err rc = esim_write_file_atomic(path, s, strlen(s), mode, err);
    free(s);
    return rc;
}

esim_err sim_json_load(const char *path, size_t max, json_t **out, esim_error *err)
{
    esim_buf b = {0};
    esim_err rc = esim_read_file(path, max, &b, err);
    if (rc != ESIM_OK)
        return rc;
    json_error_t je;
    json_t *j = json_loadb((const char *)b.data, b.len, 0, &je);
    esim_buf_free(&b);
    if (!json_is_object(j)) {
        json_decref(j);
        return esim_fail(err, ESIM_EINVAL, "%s is not a JSON object (line %d: %s)", path, je.line,
                         je.text);
    }
    *out = j;
    return ESIM_OK;
}

esim_err sim_copy(char *dst, size_t dst_len, const char *src, const char *what, esim_error *err)
{
    if (!src)
        src = "";
    size_t n = strlen(src);
    if (n >= dst_len)
        return esim_fail(err, ESIM_EINVAL, "%s is too long (%zu bytes, at most %zu)", what, n,
                         dst_len - 1);
    memcpy(dst, src, n + 1);
    return ESIM_OK;
}
