/*
 * rsp_crypto.c — the simulator's crypto and small shared helpers: opening
 * the test PKI, ECDSA P-256 with GSMA raw r||s signatures, verifying the
 * CI -> EUM -> eUICC (and CI -> DPauth) chains, device identity certificates,
 * and the JSON/base64 glue every sim/ file uses.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "core/p256.h"
#include "core/p256_cache.h"
#include "sim/cert_view.h"
#include "sim/sim_internal.h"

/* ---- PKI ---------------------------------------------------------------- */

/* Reads |path| (a PEM private key and, with |cert|, a certificate before it). */
static esim_err read_pem_file(const char *path, EVP_PKEY **key, X509 **cert, esim_error *err)
{
    esim_err rc = esim_check_private_file(path, err);
    if (rc != ESIM_OK)
        return rc;
    FILE *f = fopen(path, "r");
    if (!f)
        return ESIM_ENOTFOUND;
    if (cert)
        *cert = PEM_read_X509(f, NULL, NULL, NULL);
    *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!*key || (cert && !*cert) || EVP_PKEY_get_base_id(*key) != EVP_PKEY_EC ||
        (cert && X509_check_private_key(*cert, *key) != 1)) {
        EVP_PKEY_free(*key);
        *key = NULL;
        if (cert) {
            X509_free(*cert);
            *cert = NULL;
        }
        return esim_fail(err, ESIM_ECRYPTO, "%s is not %s; delete it", path,
                         cert ? "a P-256 certificate with its key" : "a P-256 PEM private key");
    }
    return ESIM_OK;
}

/* Writes |pem| to |path| unless it exists. Two processes may start on a fresh
 * PKI at once: write aside, then link() (which never replaces), so exactly
 * one file wins and both read it. */
static esim_err publish_once(const char *path, const char *pem, size_t n, esim_error *err)
{
    char tmp[SIM_PATH_MAX + 64];
    snprintf(tmp, sizeof tmp, "%s.new.%ld", path, (long)getpid());
    esim_err rc = esim_write_file_atomic(tmp, pem, n, 0600, err);
    if (rc != ESIM_OK)
        return rc;
    if (link(tmp, path) != 0 && errno != EEXIST) {
        unlink(tmp);
        return esim_fail(err, ESIM_EIO, "cannot create %s: %s", path, strerror(errno));
    }
    unlink(tmp);
    return ESIM_OK;
}

/*
 * The simulated devices' identities: each device makes its own P-256 key
 * when it first needs an identity (as an iPhone does for its SCEP request,
 * sim_identity_make), and a P-256 issuing CA below the device CA signs its
 * certificate (CN = UDID or DeviceID), as a SCEP CA does. A key costs about
 * one signature to make (k·G through OpenSSL's generator table), 32 bytes
 * to keep and nothing to sign with beyond that (sim_ec_sign_with). ECDSA
 * P-256 identities exist on real iPhones (Secure Enclave keys); a P-256
 * signature costs a fraction of an RSA-2048 one, and every message of
 * every device is signed. Here: the SCEP CA, made once per PKI.
 */
static esim_err load_scep_ca(struct sim_pki *p, esim_error *err)
{
    char path[SIM_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/sim-scep-ca.pem", p->dir);
    esim_err rc = read_pem_file(path, &p->scep.key, &p->scep.x509, err);
    if (rc == ESIM_ENOTFOUND) {
        esim_cert_spec spec = {.common_name = "esim-mdm simulated SCEP CA",
                               .organization = "esim-mdm test",
                               .is_ca = true,
                               .key_type = ESIM_KEY_EC_P256,
                               .days = 3650};
        esim_cert c = {0};
        rc = esim_cert_issue(&spec, &p->device_ca, &c, err);
        BIO *mem = rc == ESIM_OK ? BIO_new(BIO_s_mem()) : NULL;
        char *data = NULL;
        long n = 0;
        if (mem && PEM_write_bio_X509(mem, c.x509) &&
            PEM_write_bio_PrivateKey(mem, c.key, NULL, NULL, 0, NULL, NULL))
            n = BIO_get_mem_data(mem, &data);
        if (rc == ESIM_OK)
            rc = n > 0 ? publish_once(path, data, (size_t)n, err)
                       : esim_fail(err, ESIM_ECRYPTO, "could not encode the simulator SCEP CA");
        BIO_free(mem);
        esim_cert_clear(&c);
        if (rc == ESIM_OK)
            rc = read_pem_file(path, &p->scep.key, &p->scep.x509, err);
    }
    if (rc != ESIM_OK)
        return rc;
    /* What every identity certificate and signature repeats, encoded once. */
    unsigned char *der = NULL;
    int n = i2d_X509_NAME(X509_get_subject_name(p->scep.x509), &der);
    bool ok = n > 0 && esim_buf_append(&p->scep_name_der, der, (size_t)n) == ESIM_OK;
    OPENSSL_free(der);
    ok = ok && sim_x509_to_der(p->scep.x509, &p->scep_der) == ESIM_OK;
    p->scep_sign = ok ? sim_ec_signer_new(p->scep.key) : NULL;
    if (!p->scep_sign)
        return esim_fail(err, ESIM_ECRYPTO,
                         "could not prepare the simulator SCEP CA (a P-256 key?)");
    return ESIM_OK;
}

/* What issuing an eUICC certificate repeats, set up once. */
static esim_err prepare_eum(struct sim_pki *p, esim_error *err)
{
    unsigned char *der = NULL;
    int n = i2d_X509_NAME(X509_get_subject_name(p->eum.x509), &der);
    bool ok = n > 0 && esim_buf_append(&p->eum_name_der, der, (size_t)n) == ESIM_OK;
    OPENSSL_free(der);
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(p->eum.x509);
    if (ok && ski)
        ok = esim_buf_append(&p->eum_ski, ASN1_STRING_get0_data(ski),
                             (size_t)ASN1_STRING_length(ski)) == ESIM_OK;
    p->eum_sign = ok ? sim_ec_signer_new(p->eum.key) : NULL;
    if (!p->eum_sign)
        return esim_fail(err, ESIM_ECRYPTO, "could not prepare the EUM for issuing eUICCs");
    return ESIM_OK;
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
    rc = load_scep_ca(p, err);
    if (rc == ESIM_OK && !(p->server_certs = sim_cert_cache_new(64)))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (rc == ESIM_OK)
        rc = prepare_eum(p, err);
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
    esim_cert_clear(&p->scep);
    sim_ec_signer_free(p->scep_sign);
    esim_buf_free(&p->scep_name_der);
    esim_buf_free(&p->scep_der);
    esim_buf_free(&p->eum_der);
    sim_cert_cache_free(p->server_certs);
    sim_ec_signer_free(p->eum_sign);
    esim_buf_free(&p->eum_name_der);
    esim_buf_free(&p->eum_ski);
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

/* ---- ECDSA with raw signatures --------------------------------------------- */

esim_err sim_ecdsa_sign_raw(EVP_PKEY *key, const void *data, size_t len, unsigned char sig[64],
                            esim_error *err)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[128];
    size_t der_len = sizeof der;
    esim_err rc = ESIM_ECRYPTO;
    if (md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
        EVP_DigestSign(md, der, &der_len, data, len) == 1 &&
        esim_p256_sig_from_der(der, der_len, sig))
        rc = ESIM_OK;
    EVP_MD_CTX_free(md);
    if (rc != ESIM_OK)
        return esim_fail(err, rc, "ECDSA signing failed (is the key P-256?)");
    return ESIM_OK;
}

esim_err sim_ecdsa_sign_raw_ctx(EVP_PKEY_CTX *ctx, const void *data, size_t len,
                                unsigned char sig[64], esim_error *err)
{
    unsigned char dgst[SHA256_DIGEST_LENGTH], der[80];
    size_t der_len = sizeof der;
    sim_sha256(data, len, dgst);
    esim_err rc = ESIM_ECRYPTO;
    if (ctx && EVP_PKEY_sign(ctx, der, &der_len, dgst, sizeof dgst) == 1 &&
        esim_p256_sig_from_der(der, der_len, sig))
        rc = ESIM_OK;
    if (rc != ESIM_OK)
        return esim_fail(err, rc, "ECDSA signing failed");
    return ESIM_OK;
}

EVP_PKEY_CTX *sim_sign_ctx(EVP_PKEY *key)
{
    EVP_PKEY_CTX *ctx = key ? EVP_PKEY_CTX_new(key, NULL) : NULL;
    if (ctx && EVP_PKEY_sign_init(ctx) != 1) {
        EVP_PKEY_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
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

/* ---- verified certificates ------------------------------------------------- */

#define CERT_CACHE_REVERIFY_MS (10 * 60 * 1000)
#define SERIAL_MAX 48

typedef struct {
    unsigned char sha[SHA256_DIGEST_LENGTH];     /* the certificate's DER */
    unsigned char via_sha[SHA256_DIGEST_LENGTH]; /* its intermediate's DER; zero: none */
    X509 *x509;                                  /* sim_cert_cache_verify's entries */
    unsigned char point[65]; /* sim_cert_cache_verify_issued's: the public key ([0] == 0x04) */
    char serial[SERIAL_MAX]; /* and the serialNumber */
    int64_t verified_ms;
} cert_slot;

struct sim_cert_cache {
    size_t n; /* a power of two */
    cert_slot *slots;
    /* The last issuer of sim_cert_cache_verify_issued (a reference), ready:
     * its subject Name's DER, its digest, a verification context on its key. */
    X509 *issuer;
    unsigned char *issuer_name;
    int issuer_name_len;
    unsigned char issuer_sha[SHA256_DIGEST_LENGTH];
    EVP_PKEY_CTX *issuer_verify;
    unsigned char issuer_point[65]; /* its P-256 public key; [0] == 0: not one */
    unsigned char issuer_key[32];   /* the SHA-256 of issuer_point: its name in |keys| */
    sim_ec_p256 *p256;              /* verifications by any key's point, set up at first use */
    /* Keys that sign again and again (the issuer above; the SM-DP+'s key
     * at the eUICCs): each verified with core/p256.h's small table, made
     * at its first signature and kept in one set of four (core/p256_cache.h,
     * by the SHA-256 of the point, the least recently used made again; at
     * most 8 KiB), and the last two counted and verified through
     * ec_fixed.c's larger precomputed table once one has signed
     * FIXED_AFTER times. */
    esim_p256_cache *keys; /* made at its first use */
    struct {
        unsigned char point[65];
        unsigned uses;
        sim_ec_fixed *f;
    } fixed[2];
    size_t next_fixed;
    X509 *signer; /* the last certificate of sim_cert_cache_verify_by (a reference) */
    /* The last certificate sim_cert_cache_check parsed (a parse, not a
     * verdict: the same bytes give the same object), by its SHA-256. */
    X509 *checked;
    unsigned char checked_sha[SHA256_DIGEST_LENGTH];
    unsigned char signer_point[65];
    unsigned char signer_key[32]; /* the SHA-256 of signer_point */
    size_t chain_checks;          /* X509_verify_cert runs (sim_cert_cache_verify_der's misses) */
    /* The base64 text sim_cert_cache_verify decoded last and its DER's
     * SHA-256: the same text decodes to the same DER, so the next call
     * with it finds its slot without decoding and hashing again (every
     * eUICC of an EUM sends the EUM's certificate with each ES9+ call).
     * Only the slot's name: the slot's own checks (digest, intermediate,
     * age) decide as before. */
    char *last_b64;
    size_t last_b64_len;
    unsigned char last_sha[SHA256_DIGEST_LENGTH];
};

/* Signatures by one key before its table is built: the table costs about
 * 320 verifications' worth of instructions once and makes each one after
 * about a third (ec_fixed.c), so a short run (a test, a few devices) does
 * not pay for it. */
#define FIXED_AFTER 256

sim_cert_cache *sim_cert_cache_new(size_t slots)
{
    sim_cert_cache *c = calloc(1, sizeof *c);
    size_t n = 16;
    while (n < slots)
        n *= 2;
    if (!c || !(c->slots = calloc(n, sizeof *c->slots))) {
        free(c);
        return NULL;
    }
    c->n = n;
    return c;
}

void sim_cert_cache_free(sim_cert_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        X509_free(c->slots[i].x509);
    free(c->slots);
    X509_free(c->issuer);
    OPENSSL_free(c->issuer_name);
    EVP_PKEY_CTX_free(c->issuer_verify);
    sim_ec_p256_free(c->p256);
    for (size_t i = 0; i < sizeof c->fixed / sizeof c->fixed[0]; i++)
        sim_ec_fixed_free(c->fixed[i].f);
    esim_p256_cache_free(c->keys);
    X509_free(c->signer);
    X509_free(c->checked);
    free(c->last_b64);
    free(c);
}

/* The uncompressed point of |pub| when it is a P-256 key; false otherwise. */
static bool p256_point(EVP_PKEY *pub, unsigned char point[65])
{
    char group[32];
    size_t len = 0;
    return pub && EVP_PKEY_get_base_id(pub) == EVP_PKEY_EC &&
           EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                          NULL) == 1 &&
           strcmp(group, "prime256v1") == 0 &&
           EVP_PKEY_get_octet_string_param(pub, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point, 65,
                                           &len) == 1 &&
           len == 65 && point[0] == 0x04;
}

/* The precomputed verifier of the key at |point| (named |key| in c->keys),
 * counting one more use; NULL while the key has signed fewer than
 * FIXED_AFTER times (or the table could not be built): then *small is the
 * key's small table (core/p256.h: ~2 KiB, ~263,000 instructions a
 * verification instead of EVP's ~834,000), or NULL when that could not be
 * made either (the caller verifies through EVP then). */
static sim_ec_fixed *fixed_for(sim_cert_cache *c, const unsigned char point[65],
                               const unsigned char key[32], const esim_p256_key **small)
{
    size_t n = sizeof c->fixed / sizeof c->fixed[0], k = 0;
    while (k < n && (c->fixed[k].point[0] != 0x04 || memcmp(c->fixed[k].point, point, 65) != 0))
        k++;
    if (k == n) {
        k = c->next_fixed++ % n;
        sim_ec_fixed_free(c->fixed[k].f);
        c->fixed[k].f = NULL;
        c->fixed[k].uses = 0;
        memcpy(c->fixed[k].point, point, 65);
    }
    if (!c->fixed[k].f && ++c->fixed[k].uses == FIXED_AFTER)
        c->fixed[k].f = sim_ec_fixed_new(point);
    *small = NULL;
    if (!c->fixed[k].f && (c->keys || (c->keys = esim_p256_cache_new(ESIM_P256_CACHE_WAYS))))
        *small = esim_p256_cache_get(c->keys, key, point, NULL);
    return c->fixed[k].f;
}

esim_err sim_cert_cache_verify_by(sim_cert_cache *c, X509 *signer, const void *data, size_t len,
                                  const unsigned char *sig, size_t sig_len, esim_error *err)
{
    EVP_PKEY *pub = X509_get0_pubkey(signer);
    if (!pub)
        return esim_fail(err, ESIM_ECRYPTO, "the signer's certificate has no usable key");
    if (c->signer != signer) {
        X509_free(c->signer);
        c->signer = NULL;
        if (!p256_point(pub, c->signer_point))
            c->signer_point[0] = 0;
        else
            sim_sha256(c->signer_point, sizeof c->signer_point, c->signer_key);
        if (X509_up_ref(signer))
            c->signer = signer;
    }
    const esim_p256_key *small = NULL;
    sim_ec_fixed *f = c->signer == signer && c->signer_point[0] == 0x04 && sig_len == 64
                          ? fixed_for(c, c->signer_point, c->signer_key, &small)
                          : NULL;
    if (f || small) {
        unsigned char dgst[SHA256_DIGEST_LENGTH];
        sim_sha256(data, len, dgst);
        int ok =
            f ? sim_ec_fixed_verify(f, dgst, sig) : esim_p256_verify(small, dgst, sizeof dgst, sig);
        if (ok == 1)
            return ESIM_OK;
        if (ok == 0)
            return esim_fail(err, ESIM_ECRYPTO, "signature does not verify");
    }
    return sim_ecdsa_verify_raw(pub, data, len, sig, sig_len, err);
}

static cert_slot *slot_of(sim_cert_cache *c, const unsigned char sha[SHA256_DIGEST_LENGTH]);

/* The slot's certificate when the slot holds the DER of digest |sha|,
 * verified below the intermediate of digest |via| less than
 * CERT_CACHE_REVERIFY_MS ago (a reference for the caller); else NULL. */
static X509 *slot_hit(sim_cert_cache *c, const unsigned char sha[SHA256_DIGEST_LENGTH],
                      const unsigned char via[SHA256_DIGEST_LENGTH], int64_t now)
{
    cert_slot *e = slot_of(c, sha);
    if (e->x509 && memcmp(e->sha, sha, SHA256_DIGEST_LENGTH) == 0 &&
        memcmp(e->via_sha, via, SHA256_DIGEST_LENGTH) == 0 &&
        now - e->verified_ms < CERT_CACHE_REVERIFY_MS && X509_up_ref(e->x509))
        return e->x509;
    return NULL;
}

/* The digest of the DER that |b64| (|n| bytes) decodes to, when it is the
 * text last decoded. */
static bool last_b64_is(const sim_cert_cache *c, const char *b64, size_t n)
{
    return c->last_b64 && c->last_b64_len == n && memcmp(c->last_b64, b64, n) == 0;
}

X509 *sim_cert_cache_verify(sim_cert_cache *c, const char *b64, X509 *ci, X509 *intermediate,
                            esim_err *why, esim_error *err)
{
    esim_buf der = {0};
    *why = ESIM_EINVAL;
    size_t n = b64 ? strlen(b64) : 0;
    if (b64 && !intermediate && last_b64_is(c, b64, n)) {
        static const unsigned char none[SHA256_DIGEST_LENGTH] = {0};
        X509 *x = slot_hit(c, c->last_sha, none, esim_mono_ms());
        if (x) {
            *why = ESIM_OK;
            return x;
        }
    }
    if (!b64 || esim_base64_decode(b64, n, &der, NULL) != ESIM_OK) {
        esim_buf_free(&der);
        esim_fail(err, ESIM_EINVAL, "certificate is not base64");
        return NULL;
    }
    X509 *x = sim_cert_cache_verify_der(c, der.data, der.len, ci, intermediate, why, err);
    if (x && !last_b64_is(c, b64, n)) {
        char *copy = malloc(n + 1);
        if (copy) {
            memcpy(copy, b64, n + 1);
            free(c->last_b64);
            c->last_b64 = copy;
            c->last_b64_len = n;
            sim_sha256(der.data, der.len, c->last_sha);
        }
    }
    esim_buf_free(&der);
    return x;
}

static cert_slot *slot_of(sim_cert_cache *c, const unsigned char sha[SHA256_DIGEST_LENGTH])
{
    return &c->slots[(((size_t)sha[0] << 8) | sha[1] | ((size_t)sha[2] << 16)) & (c->n - 1)];
}

X509 *sim_cert_cache_verify_der(sim_cert_cache *c, const unsigned char *der, size_t len, X509 *ci,
                                X509 *intermediate, esim_err *why, esim_error *err)
{
    unsigned char sha[SHA256_DIGEST_LENGTH], via[SHA256_DIGEST_LENGTH] = {0};
    unsigned int vl = sizeof via;
    *why = ESIM_EINVAL;
    sim_sha256(der, len, sha);
    if (intermediate && X509_digest(intermediate, EVP_sha256(), via, &vl) != 1) {
        *why = ESIM_ECRYPTO;
        esim_fail(err, ESIM_ECRYPTO, "cannot hash the intermediate certificate");
        return NULL;
    }
    cert_slot *e = slot_of(c, sha);
    int64_t now = esim_mono_ms();
    X509 *hit = slot_hit(c, sha, via, now);
    if (hit) {
        *why = ESIM_OK;
        return hit;
    }
    X509 *x = sim_x509_from_der(der, len);
    if (!x) {
        esim_fail(err, ESIM_EINVAL, "certificate is not DER X.509");
        return NULL;
    }
    c->chain_checks++;
    if (sim_chain_verify(ci, intermediate, x, err) != ESIM_OK) {
        X509_free(x);
        *why = ESIM_ECRYPTO;
        return NULL;
    }
    /* The slot keeps its own reference; the caller gets another. */
    if (X509_up_ref(x)) {
        X509_free(e->x509);
        e->point[0] = 0;
        e->x509 = x;
        memcpy(e->sha, sha, sizeof sha);
        memcpy(e->via_sha, via, sizeof via);
        e->verified_ms = now;
    }
    *why = ESIM_OK;
    return x;
}

size_t sim_cert_cache_chain_checks(const sim_cert_cache *c)
{
    return c->chain_checks;
}

X509 *sim_cert_cache_parse_der(sim_cert_cache *c, const unsigned char *der, size_t len)
{
    unsigned char sha[SHA256_DIGEST_LENGTH];
    sim_sha256(der, len, sha);
    cert_slot *e = slot_of(c, sha);
    if (e->x509 && memcmp(e->sha, sha, sizeof sha) == 0 && X509_up_ref(e->x509))
        return e->x509;
    if (c->checked && memcmp(c->checked_sha, sha, sizeof sha) == 0 && X509_up_ref(c->checked))
        return c->checked;
    return sim_x509_from_der(der, len);
}

/* Makes |issuer| the cache's current issuer; false when it may not issue
 * certificates (not a CA, or its keyUsage lacks keyCertSign). */
static bool issuer_ready(sim_cert_cache *c, X509 *issuer)
{
    if (c->issuer == issuer)
        return true;
    X509_free(c->issuer);
    OPENSSL_free(c->issuer_name);
    EVP_PKEY_CTX_free(c->issuer_verify);
    c->issuer = NULL;
    c->issuer_name = NULL;
    c->issuer_verify = NULL;
    unsigned int vl = sizeof c->issuer_sha;
    EVP_PKEY *pub = X509_get0_pubkey(issuer);
    if (X509_check_ca(issuer) < 1 ||
        ((X509_get_extension_flags(issuer) & EXFLAG_KUSAGE) &&
         !(X509_get_key_usage(issuer) & KU_KEY_CERT_SIGN)) ||
        !pub || X509_digest(issuer, EVP_sha256(), c->issuer_sha, &vl) != 1)
        return false;
    if (!p256_point(pub, c->issuer_point))
        c->issuer_point[0] = 0;
    else
        sim_sha256(c->issuer_point, sizeof c->issuer_point, c->issuer_key);
    c->issuer_name_len = i2d_X509_NAME(X509_get_subject_name(issuer), &c->issuer_name);
    c->issuer_verify = EVP_PKEY_CTX_new(pub, NULL);
    if (c->issuer_name_len <= 0 || !c->issuer_verify ||
        EVP_PKEY_verify_init(c->issuer_verify) != 1 || !X509_up_ref(issuer)) {
        OPENSSL_free(c->issuer_name);
        EVP_PKEY_CTX_free(c->issuer_verify);
        c->issuer_name = NULL;
        c->issuer_verify = NULL;
        return false;
    }
    c->issuer = issuer;
    return true;
}

/* The P-256 key pair of |priv| (32 bytes, big-endian) and its uncompressed
 * public |point| (65 bytes); EVP_PKEY_fromdata checks the point is on the
 * curve. */
EVP_PKEY *sim_p256_key_pair(const unsigned char priv[32], const unsigned char point[65])
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    BIGNUM *bn = BN_bin2bn(priv, 32, NULL);
    unsigned char native[32];
    EVP_PKEY *k = NULL;
    if (ctx && bn && EVP_PKEY_fromdata_init(ctx) == 1 &&
        BN_bn2nativepad(bn, native, sizeof native) == sizeof native) {
        char group[] = "prime256v1";
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
            OSSL_PARAM_construct_BN(OSSL_PKEY_PARAM_PRIV_KEY, native, sizeof native),
            OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)point, 65),
            OSSL_PARAM_construct_end()};
        if (EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_KEYPAIR, params) != 1)
            k = NULL;
    }
    OPENSSL_cleanse(native, sizeof native);
    BN_clear_free(bn);
    EVP_PKEY_CTX_free(ctx);
    return k;
}

bool sim_p256_private_from_der(const unsigned char *der, size_t len, unsigned char priv[32],
                               unsigned char point[65])
{
    /* ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING (32),
     * [0] prime256v1, [1] BIT STRING (0x00 0x04 X Y) } */
    static const unsigned char curve[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                          0xce, 0x3d, 0x03, 0x01, 0x07};
    const unsigned char *p = der, *end = der + len, *seq, *v, *key, *c0, *c1, *bits;
    size_t seq_len, v_len, key_len, c0_len, c1_len, bits_len;
    if (!der || !sim_der_read(&p, end, 0x30, &seq, &seq_len) || p != end)
        return false;
    const unsigned char *q = seq, *qe = seq + seq_len;
    if (!(sim_der_read(&q, qe, 0x02, &v, &v_len) && v_len == 1 && v[0] == 1 &&
          sim_der_read(&q, qe, 0x04, &key, &key_len) && key_len == 32 &&
          sim_der_read(&q, qe, 0xa0, &c0, &c0_len) && c0_len == sizeof curve &&
          memcmp(c0, curve, sizeof curve) == 0 && sim_der_read(&q, qe, 0xa1, &c1, &c1_len) &&
          q == qe))
        return false;
    const unsigned char *r = c1;
    if (!(sim_der_read(&r, c1 + c1_len, 0x03, &bits, &bits_len) && r == c1 + c1_len &&
          bits_len == 66 && bits[0] == 0 && bits[1] == 0x04))
        return false;
    memcpy(priv, key, 32);
    memcpy(point, bits + 1, 65);
    return true;
}

EVP_PKEY *sim_private_key_from_der(const unsigned char *der, size_t len)
{
    unsigned char priv[32], point[65];
    if (sim_p256_private_from_der(der, len, priv, point)) {
        EVP_PKEY *k = sim_p256_key_pair(priv, point);
        OPENSSL_cleanse(priv, sizeof priv);
        return k;
    }
    const unsigned char *d = der;
    EVP_PKEY *k = len <= LONG_MAX ? d2i_AutoPrivateKey(NULL, &d, (long)len) : NULL;
    ERR_clear_error();
    return k;
}

/* The cache's verifier by point, set up at its first use. */
static sim_ec_p256 *p256_of(sim_cert_cache *c)
{
    if (!c->p256)
        c->p256 = sim_ec_p256_new();
    return c->p256;
}

/* The issuer's DER signature over |dgst|, through its precomputed table
 * once it has signed often enough. */
static bool issuer_signed(sim_cert_cache *c, const unsigned char *dgst, const unsigned char *sig,
                          size_t sig_len)
{
    const esim_p256_key *small = NULL;
    sim_ec_fixed *f =
        c->issuer_point[0] == 0x04 ? fixed_for(c, c->issuer_point, c->issuer_key, &small) : NULL;
    int ok = f ? sim_ec_fixed_verify_der(f, dgst, sig, sig_len) : -1;
    if (ok >= 0)
        return ok == 1;
    if (small)
        return esim_p256_verify_der(small, dgst, SHA256_DIGEST_LENGTH, sig, sig_len) == 1;
    return EVP_PKEY_verify(c->issuer_verify, sig, sig_len, dgst, SHA256_DIGEST_LENGTH) == 1;
}

static bool check_link(sim_cert_cache *c, const unsigned char *der, size_t len, char *serial,
                       size_t serial_len, unsigned char point[65], esim_err *why, esim_error *err);

bool sim_cert_cache_verify_issued(sim_cert_cache *c, const char *b64, X509 *issuer, char *serial,
                                  size_t serial_len, unsigned char point[65],
                                  unsigned char cert_sha[32], esim_err *why, esim_error *err)
{
    esim_buf der = {0};
    *why = ESIM_EINVAL;
    serial[0] = 0;
    if (!b64 || esim_base64_decode(b64, strlen(b64), &der, NULL) != ESIM_OK) {
        esim_buf_free(&der);
        esim_fail(err, ESIM_EINVAL, "certificate is not base64");
        return false;
    }
    if (!issuer_ready(c, issuer)) {
        esim_buf_free(&der);
        *why = ESIM_ECRYPTO;
        esim_fail(err, ESIM_ECRYPTO, "the issuer may not issue certificates");
        return false;
    }
    unsigned char sha[SHA256_DIGEST_LENGTH];
    sim_sha256(der.data, der.len, sha);
    cert_slot *e = slot_of(c, sha);
    int64_t now = esim_mono_ms();
    if (e->point[0] == 0x04 && memcmp(e->sha, sha, sizeof sha) == 0 &&
        memcmp(e->via_sha, c->issuer_sha, sizeof sha) == 0 &&
        now - e->verified_ms < CERT_CACHE_REVERIFY_MS && strlen(e->serial) < serial_len) {
        esim_buf_free(&der);
        strcpy(serial, e->serial);
        memcpy(point, e->point, 65);
        if (cert_sha)
            memcpy(cert_sha, sha, sizeof sha);
        *why = ESIM_OK;
        return true;
    }
    bool ok = check_link(c, der.data, der.len, serial, serial_len, point, why, err);
    esim_buf_free(&der);
    if (!ok)
        return false;
    if (cert_sha)
        memcpy(cert_sha, sha, sizeof sha);
    X509_free(e->x509);
    e->x509 = NULL;
    memcpy(e->point, point, 65);
    strcpy(e->serial, serial);
    memcpy(e->sha, sha, sizeof sha);
    memcpy(e->via_sha, c->issuer_sha, sizeof sha);
    e->verified_ms = now;
    return true;
}

/* The certificate |der| checked as the last link of a chain below the
 * cache's current issuer (issuer_ready), afresh: see
 * sim_cert_cache_verify_issued. */
static bool check_link(sim_cert_cache *c, const unsigned char *der, size_t len, char *serial,
                       size_t serial_len, unsigned char point[65], esim_err *why, esim_error *err)
{
    sim_cert_view v;
    unsigned char dgst[SHA256_DIGEST_LENGTH];
    int64_t t = (int64_t)time(NULL);
    const char *bad = NULL;
    *why = ESIM_EINVAL;
    serial[0] = 0;
    if (!sim_cert_view_parse(der, len, &v)) {
        esim_fail(err, ESIM_EINVAL, "certificate is not DER X.509 with a P-256 key");
        return false;
    }
    sim_ec_p256 *p256 = p256_of(c);
    sim_sha256(v.tbs, v.tbs_len, dgst);
    if (v.issuer_len != (size_t)c->issuer_name_len ||
        memcmp(v.issuer, c->issuer_name, v.issuer_len) != 0)
        bad = "unable to get local issuer certificate";
    else if (!issuer_signed(c, dgst, v.sig, v.sig_len))
        bad = "certificate signature failure";
    else if (t < v.not_before)
        bad = "certificate is not yet valid";
    else if (t > v.not_after)
        bad = "certificate has expired";
    else if (v.has_key_usage && !(v.key_usage & SIM_KU_DIGITAL_SIGNATURE))
        bad = "its keyUsage does not allow signatures";
    else if (v.serial && (v.serial_len >= serial_len || v.serial_len >= SERIAL_MAX ||
                          memchr(v.serial, 0, v.serial_len)))
        bad = "its serialNumber is too long";
    else if (!p256 || !sim_ec_p256_point_ok(p256, v.point))
        bad = "its public key is not a P-256 point";
    if (bad) {
        *why = ESIM_ECRYPTO;
        esim_fail(err, ESIM_ECRYPTO, "certificate chain does not verify: %s", bad);
        return false;
    }
    if (v.serial) {
        memcpy(serial, v.serial, v.serial_len);
        serial[v.serial_len] = 0;
    }
    memcpy(point, v.point, 65);
    *why = ESIM_OK;
    return true;
}

X509 *sim_cert_cache_check(sim_cert_cache *c, const unsigned char *der, size_t len, X509 *ci,
                           esim_err *why, esim_error *err)
{
    char serial[SERIAL_MAX];
    unsigned char point[65], sha[SHA256_DIGEST_LENGTH];
    *why = ESIM_ECRYPTO;
    if (!issuer_ready(c, ci)) {
        esim_fail(err, ESIM_ECRYPTO, "the issuer may not issue certificates");
        return NULL;
    }
    bool viewed = sim_cert_view_parse(der, len, &(sim_cert_view){0});
    c->chain_checks++;
    if (viewed && !check_link(c, der, len, serial, sizeof serial, point, why, err))
        return NULL;
    sim_sha256(der, len, sha);
    X509 *x = c->checked && memcmp(c->checked_sha, sha, sizeof sha) == 0 && X509_up_ref(c->checked)
                  ? c->checked
                  : sim_x509_from_der(der, len);
    if (!x) {
        *why = ESIM_EINVAL;
        esim_fail(err, ESIM_EINVAL, "certificate is not DER X.509");
        return NULL;
    }
    /* Another shape (a key other than P-256): OpenSSL's verifier, every time. */
    if (!viewed) {
        if (sim_chain_verify(ci, NULL, x, err) != ESIM_OK) {
            X509_free(x);
            *why = ESIM_ECRYPTO;
            return NULL;
        }
    }
    if (x != c->checked && X509_up_ref(x)) {
        X509_free(c->checked);
        c->checked = x;
        memcpy(c->checked_sha, sha, sizeof sha);
    }
    *why = ESIM_OK;
    return x;
}

esim_err sim_cert_cache_verify_point(sim_cert_cache *c, const unsigned char point[65],
                                     const void *data, size_t len, const unsigned char *sig,
                                     size_t sig_len, esim_error *err)
{
    if (sig_len != 64)
        return esim_fail(err, ESIM_ECRYPTO, "signature is %zu bytes, a raw P-256 one is 64",
                         sig_len);
    sim_ec_p256 *p256 = p256_of(c);
    unsigned char dgst[SHA256_DIGEST_LENGTH];
    sim_sha256(data, len, dgst);
    int ok = p256 ? sim_ec_p256_verify(p256, point, dgst, sig) : -1;
    if (ok < 0)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (ok == 0)
        return esim_fail(err, ESIM_ECRYPTO, "signature does not verify");
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
    /* Base64 is ASCII: no UTF-8 check (json_string's) to run over it. */
    if (rc == ESIM_OK &&
        json_object_set_new(o, key, json_stringn_nocheck((const char *)b.data, b.len)) != 0)
        rc = ESIM_ENOMEM;
    esim_buf_free(&b);
    return rc;
}

esim_err sim_json_dump(const json_t *o, esim_buf *out)
{
    if (sim_json_dump_plain(o, out))
        return ESIM_OK;
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
