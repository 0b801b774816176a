/*
 * tls.c — OpenSSL contexts for the APNs client and mock. APNs requires TLS
 * 1.2 or later with ALPN "h2"; the MDM credential is the TLS client
 * certificate, whose subject UID is the push topic.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509v3.h>

#include "apns/internal.h"
#include "core/tls.h"

static const unsigned char alpn_h2[] = "\x02h2";

static esim_err need_file(const char *path, const char *what, esim_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return esim_fail(err, ESIM_ENOTFOUND, "%s '%s' does not exist", what, path);
    if (!S_ISREG(st.st_mode))
        return esim_fail(err, ESIM_EINVAL, "%s '%s' is not a regular file", what, path);
    return ESIM_OK;
}

static esim_err crypto_fail(esim_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static esim_err crypto_fail(esim_error *err, const char *fmt, ...)
{
    char why[256];
    esim_openssl_error_text(why, sizeof why, "unknown OpenSSL error");
    char what[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return esim_fail(err, ESIM_ECRYPTO, "%s (%s)", what, why);
}

static esim_err load_p12(SSL_CTX *ctx, const char *path, const char *password, esim_error *err)
{
    esim_err e = need_file(path, "PKCS#12 file", err);
    if (e == ESIM_OK)
        e = esim_check_private_file(path, err);
    if (e != ESIM_OK)
        return e;
    BIO *bio = BIO_new_file(path, "rb");
    if (bio == NULL)
        return crypto_fail(err, "cannot open PKCS#12 file '%s'", path);
    PKCS12 *p12 = d2i_PKCS12_bio(bio, NULL);
    BIO_free(bio);
    if (p12 == NULL)
        return crypto_fail(err, "'%s' is not a PKCS#12 file", path);
    EVP_PKEY *pkey = NULL;
    X509 *cert = NULL;
    STACK_OF(X509) *chain = NULL;
    int ok = PKCS12_parse(p12, password ? password : "", &pkey, &cert, &chain);
    PKCS12_free(p12);
    if (!ok || pkey == NULL || cert == NULL) {
        EVP_PKEY_free(pkey);
        X509_free(cert);
        sk_X509_pop_free(chain, X509_free);
        return crypto_fail(err,
                           "cannot open PKCS#12 file '%s': wrong password or no key and "
                           "certificate inside",
                           path);
    }
    e = ESIM_OK;
    if (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, pkey) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        e = crypto_fail(err, "the key in '%s' does not match its certificate", path);
    for (int i = 0; e == ESIM_OK && chain && i < sk_X509_num(chain); i++)
        if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i)) != 1)
            e = crypto_fail(err, "cannot use the chain in '%s'", path);
    EVP_PKEY_free(pkey);
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
    return e;
}

static esim_err load_pem_pair(SSL_CTX *ctx, const char *cert_path, const char *key_path,
                              esim_error *err)
{
    if (key_path == NULL)
        key_path = cert_path;
    esim_err e = need_file(cert_path, "certificate", err);
    if (e == ESIM_OK)
        e = need_file(key_path, "private key", err);
    if (e == ESIM_OK)
        e = esim_check_private_file(key_path, err);
    if (e != ESIM_OK)
        return e;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_path) != 1)
        return crypto_fail(err, "'%s' is not a PEM certificate", cert_path);
    if (SSL_CTX_use_PrivateKey_file(ctx, key_path, SSL_FILETYPE_PEM) != 1)
        return crypto_fail(err, "'%s' is not a PEM private key", key_path);
    if (SSL_CTX_check_private_key(ctx) != 1)
        return crypto_fail(err, "the private key does not match the certificate '%s'", cert_path);
    return ESIM_OK;
}

esim_err apns_tls_client_ctx(const char *ca_path, const char *cert_path, const char *key_path,
                             const char *p12_path, const char *p12_password, SSL_CTX **out,
                             char *topic_out, size_t topic_len, esim_error *err)
{
    *out = NULL;
    if (topic_out && topic_len)
        topic_out[0] = '\0';
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return crypto_fail(err, "cannot make a TLS context");
    esim_err e = ESIM_OK;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_alpn_protos(ctx, alpn_h2, sizeof alpn_h2 - 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (ca_path) {
        e = need_file(ca_path, "CA file", err);
        if (e == ESIM_OK && SSL_CTX_load_verify_locations(ctx, ca_path, NULL) != 1)
            e = crypto_fail(err, "'%s' holds no usable PEM CA certificate", ca_path);
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        e = crypto_fail(err, "cannot load the system trust store");
    }
    if (e == ESIM_OK && p12_path)
        e = load_p12(ctx, p12_path, p12_password, err);
    else if (e == ESIM_OK && cert_path)
        e = load_pem_pair(ctx, cert_path, key_path, err);
    if (e == ESIM_OK && topic_out && (p12_path || cert_path)) {
        X509 *leaf = SSL_CTX_get0_certificate(ctx);
        if (leaf == NULL ||
            esim_cert_subject_field(leaf, NID_userId, topic_out, topic_len) != ESIM_OK)
            topic_out[0] = '\0';
    }
    if (e != ESIM_OK) {
        SSL_CTX_free(ctx);
        return e;
    }
    *out = ctx;
    return ESIM_OK;
}

static int select_h2(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                     const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    /* APNs speaks HTTP/2 only: a client that does not offer h2 is refused
     * during the handshake. */
    if (nghttp2_select_next_protocol((unsigned char **)out, outlen, in, inlen) != 1)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    return SSL_TLSEXT_ERR_OK;
}

esim_err apns_tls_server_ctx(const char *cert_path, const char *key_path, const char *client_ca,
                             SSL_CTX **out, esim_error *err)
{
    *out = NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return crypto_fail(err, "cannot make a TLS context");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_alpn_select_cb(ctx, select_h2, NULL);
    /* No session tickets (OpenSSL's default is two a handshake): the mock
     * resumes no session (asking for client certificates, it would need a
     * session ID context; a client that offered one of its tickets got an
     * internal-error alert), and its provider clients hold one HTTP/2
     * connection; each ticket cost it ≈ 160,000 instructions to make and the
     * service's client ≈ 100,000 to take, for nothing. */
    SSL_CTX_set_num_tickets(ctx, 0);
    esim_err e = load_pem_pair(ctx, cert_path, key_path, err);
    if (e == ESIM_OK && !esim_tls_server_chain(ctx))
        e = crypto_fail(err, "cannot settle the chain of '%s'", cert_path);
    if (e == ESIM_OK && client_ca) {
        e = need_file(client_ca, "client CA file", err);
        STACK_OF(X509_NAME) *names = e == ESIM_OK ? SSL_load_client_CA_file(client_ca) : NULL;
        if (e == ESIM_OK &&
            (names == NULL || SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1))
            e = crypto_fail(err, "'%s' holds no usable PEM CA certificate", client_ca);
        if (names) {
            if (e == ESIM_OK)
                SSL_CTX_set_client_CA_list(ctx, names);
            else
                sk_X509_NAME_pop_free(names, X509_NAME_free);
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    if (e != ESIM_OK) {
        SSL_CTX_free(ctx);
        return e;
    }
    *out = ctx;
    return ESIM_OK;
}
