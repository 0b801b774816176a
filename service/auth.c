/*
 * auth.c — device identity on the MDM endpoint: the enrolment identity
 * certificate, taken from the TLS client certificate or from the
 * Mdm-Signature header (base64 CMS detached signature of the body), must
 * chain to the configured device CA. The caller binds its hash to the UDID.
 */
#include <string.h>

#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "service/service_internal.h"

esim_err auth_load_device_ca(const char *path, X509_STORE **out, esim_error *err)
{
    esim_buf pem = {0};
    esim_err rc = esim_read_file(path, 4 * 1024 * 1024, &pem, err);
    if (rc != ESIM_OK)
        return rc;
    X509_STORE *cas = X509_STORE_new();
    BIO *bio = BIO_new_mem_buf(pem.data, (int)pem.len);
    size_t count = 0;
    X509 *x;
    while (cas && bio && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (X509_STORE_add_cert(cas, x) == 1)
            count++;
        X509_free(x);
    }
    ERR_clear_error();
    BIO_free(bio);
    esim_buf_free(&pem);
    if (!cas)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (count == 0) {
        X509_STORE_free(cas);
        return esim_fail(err, ESIM_ECRYPTO, "device CA %s holds no PEM certificate", path);
    }
    *out = cas;
    return ESIM_OK;
}

/* Identity certificates issued by SCEP often carry no extended key usage,
 * so the chain is verified without asking for any purpose. */
static esim_err verify_chain(esim_service *svc, X509 *leaf, STACK_OF(X509) * untrusted,
                             esim_error *err)
{
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    if (!ctx || X509_STORE_CTX_init(ctx, svc->device_ca, leaf, untrusted) != 1) {
        X509_STORE_CTX_free(ctx);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    int ok = X509_verify_cert(ctx);
    int code = X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    ERR_clear_error();
    if (ok != 1)
        return esim_fail(err, ESIM_ECRYPTO,
                         "the identity certificate does not chain to the device CA: %s",
                         X509_verify_cert_error_string(code));
    return ESIM_OK;
}

static esim_err from_tls(esim_service *svc, struct evhttp_request *req, char out[65],
                         esim_error *err)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
    X509 *peer = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    if (!peer)
        return esim_fail(err, ESIM_EAUTH,
                         "no TLS client certificate: the device must present its identity");
    esim_err rc = verify_chain(svc, peer, SSL_get_peer_cert_chain(ssl), err);
    if (rc == ESIM_OK)
        rc = esim_cert_sha256_hex(peer, out);
    X509_free(peer);
    return rc;
}

static esim_err from_signature(esim_service *svc, struct evhttp_request *req,
                               const unsigned char *body, size_t len, char out[65], esim_error *err)
{
    const char *sig = evhttp_find_header(evhttp_request_get_input_headers(req), "Mdm-Signature");
    if (!sig || !*sig)
        return esim_fail(err, ESIM_EAUTH, "unsigned request: the Mdm-Signature header is missing");
    esim_buf der = {0};
    if (esim_base64_decode(sig, strlen(sig), &der, NULL) != ESIM_OK || der.len == 0) {
        esim_buf_free(&der);
        return esim_fail(err, ESIM_EAUTH, "the Mdm-Signature header is not base64");
    }
    const unsigned char *p = der.data;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)der.len);
    esim_buf_free(&der);
    if (!cms) {
        ERR_clear_error();
        return esim_fail(err, ESIM_EAUTH, "the Mdm-Signature header is not a CMS signature");
    }
    esim_err rc = ESIM_OK;
    BIO *content = BIO_new_mem_buf(body ? (const void *)body : "", (int)len);
    /* First the signature over the body, with the signer certificate the
     * CMS carries (real devices send the leaf only); then, separately, the
     * chain of that certificate to the device CA. */
    if (!content ||
        CMS_verify(cms, NULL, NULL, content, NULL, CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) != 1) {
        rc = esim_fail(err, ESIM_EAUTH, "the Mdm-Signature does not verify over the body");
    } else {
        STACK_OF(X509) *signers = CMS_get0_signers(cms);
        STACK_OF(X509) *certs = CMS_get1_certs(cms);
        X509 *leaf = signers && sk_X509_num(signers) > 0 ? sk_X509_value(signers, 0) : NULL;
        if (!leaf)
            rc = esim_fail(err, ESIM_EAUTH, "the Mdm-Signature carries no signer certificate");
        else
            rc = verify_chain(svc, leaf, certs, err);
        if (rc == ESIM_OK)
            rc = esim_cert_sha256_hex(leaf, out);
        sk_X509_free(signers);
        sk_X509_pop_free(certs, X509_free);
    }
    ERR_clear_error();
    BIO_free(content);
    CMS_ContentInfo_free(cms);
    return rc;
}

esim_err auth_device_request(esim_service *svc, struct evhttp_request *req,
                             const unsigned char *body, size_t len, char cert_sha256[65],
                             esim_error *err)
{
    cert_sha256[0] = '\0';
    switch (svc->cfg.device_auth) {
    case ESIM_DEVICE_AUTH_NONE:
        return ESIM_OK;
    case ESIM_DEVICE_AUTH_MTLS:
        return from_tls(svc, req, cert_sha256, err);
    case ESIM_DEVICE_AUTH_SIGNATURE:
        return from_signature(svc, req, body, len, cert_sha256, err);
    }
    return esim_fail(err, ESIM_EAUTH, "unknown device auth mode");
}
