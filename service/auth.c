/*
 * auth.c — device identity on the MDM endpoint: the enrolment identity
 * certificate, taken from the TLS client certificate or from the
 * Mdm-Signature header (base64 CMS detached signature of the body), must
 * chain to the configured device CA. The caller binds its hash to the UDID.
 * Devices send the same certificate with every message, so each one is
 * parsed and verified once and then recognised by its bytes (OpenSSL 3.0
 * spends most of a verification decoding the certificate's key). A new
 * P-256 identity from an issuer already seen in a verified chain is not
 * parsed by OpenSSL at all: read in place (cert_der.c) and checked
 * against that issuer (verify_fresh).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/p256.h"
#include "core/p256_cache.h"
#include "service/auth_internal.h"
#include "service/cert_der.h"
#include "service/service_internal.h"

esim_err auth_load_ca_file(const char *path, const char *what, X509_STORE **out, esim_error *err)
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
        return esim_fail(err, ESIM_ECRYPTO, "%s %s holds no PEM certificate", what, path);
    }
    *out = cas;
    return ESIM_OK;
}

static int64_t time_ms(const ASN1_TIME *t);
static bool der_header(const unsigned char *p, size_t avail, unsigned *tag, size_t *hdr,
                       size_t *len);
static void der_put_header(esim_buf *out, unsigned tag, size_t len);
static size_t der_header_size(size_t len);

/* Identity certificates issued by SCEP often carry no extended key usage,
 * so the chain is verified without asking for any purpose. X509_V_OK or
 * what is wrong with it (X509_V_ERR_OUT_OF_MEM when nothing could be
 * checked). With X509_V_OK, *until (when given) is the earliest notAfter
 * in the verified chain, ms: how long that verification can hold. */
static void issuer_note(esim_service *svc, STACK_OF(X509) * chain, int64_t until);
static bool tls_fresh(esim_service *svc, X509 *leaf, STACK_OF(X509) * untrusted,
                      const unsigned char *der, size_t der_len,
                      const unsigned char sha[SHA256_DIGEST_LENGTH], int64_t now, int64_t *until);

static int chain_code(esim_service *svc, X509 *leaf, STACK_OF(X509) * untrusted, int64_t *until)
{
    svc->m.identity_chain_checks++;
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    if (!ctx || X509_STORE_CTX_init(ctx, svc->device_ca, leaf, untrusted) != 1) {
        X509_STORE_CTX_free(ctx);
        ERR_clear_error();
        return X509_V_ERR_OUT_OF_MEM;
    }
    int ok = X509_verify_cert(ctx);
    int code = X509_STORE_CTX_get_error(ctx);
    if (ok == 1 && until) {
        STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(ctx);
        *until = INT64_MAX;
        for (int i = 0; chain && i < sk_X509_num(chain); i++) {
            int64_t t = time_ms(X509_get0_notAfter(sk_X509_value(chain, i)));
            if (t < *until)
                *until = t; /* 0 (unreadable) holds for nothing */
        }
        issuer_note(svc, chain, *until);
    }
    X509_STORE_CTX_free(ctx);
    ERR_clear_error();
    if (ok == 1)
        return X509_V_OK;
    return code != X509_V_OK ? code : X509_V_ERR_UNSPECIFIED;
}

static esim_err chain_refused(int code, esim_error *err)
{
    if (code == X509_V_ERR_OUT_OF_MEM)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    return esim_fail(err, ESIM_ECRYPTO,
                     "the identity certificate does not chain to the device CA: %s",
                     X509_verify_cert_error_string(code));
}

static esim_err verify_chain(esim_service *svc, X509 *leaf, STACK_OF(X509) * untrusted,
                             int64_t *until, esim_error *err)
{
    int code = chain_code(svc, leaf, untrusted, until);
    return code == X509_V_OK ? ESIM_OK : chain_refused(code, err);
}

/* Whether |x| is within its validity period now. */
static bool cert_current(X509 *x)
{
    bool ok = X509_cmp_current_time(X509_get0_notBefore(x)) < 0 &&
              X509_cmp_current_time(X509_get0_notAfter(x)) > 0;
    ERR_clear_error();
    return ok;
}

/* An ASN1_TIME as ms since the epoch; 0 when unreadable. */
static int64_t time_ms(const ASN1_TIME *t)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    time_t secs = timegm(&tm);
    return secs > 0 ? (int64_t)secs * 1000 : 0;
}

/* The signingTime the (verified) signer put among its signed attributes:
 * what a device says it signed at. 0 when absent. */
static int64_t signing_time(CMS_ContentInfo *cms)
{
    STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(cms);
    CMS_SignerInfo *si =
        sis && sk_CMS_SignerInfo_num(sis) > 0 ? sk_CMS_SignerInfo_value(sis, 0) : NULL;
    int idx = si ? CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, -1) : -1;
    X509_ATTRIBUTE *attr = idx >= 0 ? CMS_signed_get_attr(si, idx) : NULL;
    ASN1_TYPE *v = attr ? X509_ATTRIBUTE_get0_type(attr, 0) : NULL;
    if (!v || (v->type != V_ASN1_UTCTIME && v->type != V_ASN1_GENERALIZEDTIME))
        return 0;
    return time_ms(v->value.utctime);
}

static int64_t ver_get(esim_service *svc, const unsigned char *sha, int64_t now, int64_t *until);
static void ver_put(esim_service *svc, const unsigned char *sha, int64_t now, int64_t until);

/* ---- TLS session resumption with client certificates ------------------------------
 * Sessions resume from a table in this process (tls_session.h), keyed by
 * the session ID that TLS 1.3 sends as the ticket (stateful tickets) or
 * that TLS 1.2 resumes by. The table keeps each session's DER without the
 * peer certificate: OpenSSL 3.0 would decode the certificate's key again
 * on every resumption (≈ 3.7 M instructions), and the certificate is a
 * few hundred bytes per device. What a resumed session needs of it is in
 * an identity note (auth_session_note) the table's copy carries in its
 * ticket_appdata: the certificate's digest, when and under which device CA
 * its chain verified, and how long that verification holds. A session is
 * only ever built from the table, never from bytes a client sent, and a
 * session whose certificate did not verify is not kept at all. See
 * docs/security.md, "TLS session resumption with client certificates". */

#define AUTH_TICKET_MS (15 * 60 * 1000) /* a resumed identity lives this long at most */

static const unsigned char note_magic[4] = {'e', 'm', 's', '1'};

typedef struct {
    unsigned char magic[4];
    uint32_t ca_epoch;                       /* svc->device_ca_epoch when the chain verified */
    int64_t verified_at;                     /* ms */
    int64_t until;                           /* ms: the verified chain's earliest notAfter */
    int64_t not_before_ms;                   /* the certificate's notBefore */
    unsigned char sha[SHA256_DIGEST_LENGTH]; /* the certificate's digest */
} auth_session_note;

/* The identity note of |sess|, or NULL when it has none. */
static const auth_session_note *session_note(SSL_SESSION *sess)
{
    void *data = NULL;
    size_t len = 0;
    if (!sess || SSL_SESSION_get0_ticket_appdata(sess, &data, &len) != 1 ||
        len != sizeof(auth_session_note) || memcmp(data, note_magic, sizeof note_magic) != 0)
        return NULL;
    return data;
}

/* Why a noted identity does not hold now, or NULL when it does. */
static const char *note_refused(esim_service *svc, const auth_session_note *n, int64_t now)
{
    if (n->ca_epoch != svc->device_ca_epoch)
        return "the identity certificate was verified under a device CA since replaced: "
               "connect again";
    if (now >= n->until || now < n->not_before_ms)
        return "the identity certificate is outside its validity period";
    return NULL;
}

/* The TLS client certificate (verified possession of its key in the
 * handshake). Its chain to the device CA is verified once per certificate
 * every AUTH_REVERIFY_MS, as for Mdm-Signatures, not on every request of
 * every session: a Windows PC or an mtls device sends several per session.
 * The handshake verified it already (auth_tls_verify): a certificate
 * refused there is refused here with the same reason, without a second
 * check; one that verified is in the table. Its validity period is checked
 * on every request: a session outlasts neither the certificate nor the 5
 * minutes after which the chain is verified again. A resumed session has
 * no certificate but the identity note of the session it resumed, checked
 * on every request: the device CA unchanged since, every certificate of
 * the verified chain still valid (nothing else that verification found
 * can change without a new device CA: no CRLs are checked). */
static esim_err from_tls(esim_service *svc, struct evhttp_request *req, auth_identity *out,
                         esim_error *err)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
    X509 *peer = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    if (!peer) {
        const auth_session_note *n =
            ssl && SSL_session_reused(ssl) ? session_note(SSL_get0_session(ssl)) : NULL;
        if (!n)
            return esim_fail(err, ESIM_EAUTH,
                             "no TLS client certificate: the device must present its identity");
        const char *why = note_refused(svc, n, esim_now_ms());
        if (why)
            return esim_fail(err, ESIM_ECRYPTO, "%s", why);
        static const char hex[] = "0123456789abcdef";
        for (size_t i = 0; i < sizeof n->sha; i++) {
            out->cert_sha256[2 * i] = hex[n->sha[i] >> 4];
            out->cert_sha256[2 * i + 1] = hex[n->sha[i] & 15];
        }
        out->cert_sha256[2 * sizeof n->sha] = '\0';
        out->not_before_ms = n->not_before_ms;
        return ESIM_OK;
    }
    long handshake = SSL_get_verify_result(ssl);
    if (handshake != X509_V_OK) {
        X509_free(peer);
        return chain_refused((int)handshake, err);
    }
    if (!cert_current(peer)) {
        X509_free(peer);
        return esim_fail(err, ESIM_ECRYPTO,
                         "the identity certificate is outside its validity period");
    }
    unsigned char sha[SHA256_DIGEST_LENGTH];
    unsigned n = 0;
    bool digested = X509_digest(peer, EVP_sha256(), sha, &n) == 1 && n == sizeof sha;
    ERR_clear_error();
    int64_t now = esim_now_ms();
    esim_err rc = ESIM_OK;
    if (!digested || !ver_get(svc, sha, now, NULL)) {
        int64_t until = 0;
        rc = verify_chain(svc, peer, SSL_get_peer_cert_chain(ssl), &until, err);
        if (rc == ESIM_OK && digested)
            ver_put(svc, sha, now, until);
    }
    if (rc == ESIM_OK)
        rc = esim_cert_sha256_hex(peer, out->cert_sha256);
    out->not_before_ms = time_ms(X509_get0_notBefore(peer));
    X509_free(peer);
    return rc;
}

int auth_tls_verify(X509_STORE_CTX *xs, void *arg)
{
    esim_service *svc = arg;
    SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    X509 *leaf = X509_STORE_CTX_get0_cert(xs);
    int code = X509_V_ERR_UNSPECIFIED;
    if (leaf && svc->device_ca) {
        /* The leaf's DER once: its digest, and its fields when it is read
         * in place (tls_fresh). */
        unsigned char sha[SHA256_DIGEST_LENGTH], *der = NULL;
        int der_len = i2d_X509(leaf, &der);
        bool digested = der_len > 0;
        if (digested)
            svc_sha256(svc, der, (size_t)der_len, sha);
        int64_t now = esim_now_ms(), until = 0;
        STACK_OF(X509) *untrusted = X509_STORE_CTX_get0_untrusted(xs);
        if (digested && ver_get(svc, sha, now, NULL) && cert_current(leaf)) {
            code = X509_V_OK;
        } else if (digested &&
                   tls_fresh(svc, leaf, untrusted, der, (size_t)der_len, sha, now, &until)) {
            code = X509_V_OK;
            ver_put(svc, sha, now, until);
        } else if ((code = chain_code(svc, leaf, untrusted, &until)) == X509_V_OK && digested) {
            ver_put(svc, sha, now, until);
        }
        OPENSSL_free(der);
    }
    svc->m.tls_cert_full++;
    /* What SSL_get_verify_result says for this session: from_tls refuses
     * every request of it with this reason. No ticket for it (TLS 1.3; a
     * TLS 1.2 session, its ID given before the certificate came, is not
     * kept by auth_tls_session_new and never resumes). */
    X509_STORE_CTX_set_error(xs, code);
    if (code != X509_V_OK && ssl)
        SSL_set_num_tickets(ssl, 0);
    ERR_clear_error();
    return 1;
}

/* |der| (an SSL_SESSION's encoding) without its peer certificate, the
 * [3] EXPLICIT field of the session's SEQUENCE, into |out|. False when the
 * encoding is not the DER this expects. */
static bool session_der_without_peer(const unsigned char *der, size_t len, esim_buf *out)
{
    unsigned tag;
    size_t hdr, body;
    if (!der_header(der, len, &tag, &hdr, &body) || tag != 0x30 || hdr + body != len)
        return false;
    const unsigned char *p = der + hdr, *end = der + len;
    size_t keep = 0;
    const unsigned char *skip = NULL;
    size_t skip_len = 0;
    while (p < end) {
        size_t eh, el;
        if (!der_header(p, (size_t)(end - p), &tag, &eh, &el))
            return false;
        if (tag == 0xa3) {
            skip = p;
            skip_len = eh + el;
        } else {
            keep += eh + el;
        }
        p += eh + el;
    }
    out->len = 0;
    der_put_header(out, 0x30, keep);
    if (!skip) {
        esim_buf_append(out, der + hdr, body);
    } else {
        esim_buf_append(out, der + hdr, (size_t)(skip - (der + hdr)));
        esim_buf_append(out, skip + skip_len, (size_t)(end - (skip + skip_len)));
    }
    return out->len == der_header_size(keep) + keep;
}

int auth_tls_session_new(SSL *ssl, SSL_SESSION *sess)
{
    esim_service *svc = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (!svc || !svc->tls_sessions)
        return 0;
    X509 *peer = SSL_SESSION_get0_peer(sess);
    if (peer) {
        /* A full handshake with a certificate: kept only when its chain
         * verified, with the note of that verification. */
        if (SSL_get_verify_result(ssl) != X509_V_OK)
            return 0;
        auth_session_note note = {.ca_epoch = svc->device_ca_epoch};
        memcpy(note.magic, note_magic, sizeof note.magic);
        unsigned n = 0;
        int64_t now = esim_now_ms();
        if (X509_digest(peer, EVP_sha256(), note.sha, &n) != 1 || n != sizeof note.sha ||
            !(note.verified_at = ver_get(svc, note.sha, now, &note.until)) ||
            !(note.not_before_ms = time_ms(X509_get0_notBefore(peer))) ||
            SSL_SESSION_set1_ticket_appdata(sess, &note, sizeof note) != 1) {
            ERR_clear_error();
            return 0;
        }
    }
    /* Without a certificate: a session resumed from the table keeps its
     * note (a renewed ticket keeps the verification of the full handshake),
     * one of a client that showed none has none (it resumes as no one). */
    int der_len = i2d_SSL_SESSION(sess, NULL);
    unsigned char *der = der_len > 0 ? malloc((size_t)der_len) : NULL;
    unsigned char *w = der;
    esim_buf kept = {0};
    unsigned id_len = 0;
    const unsigned char *id = SSL_SESSION_get_id(sess, &id_len);
    long timeout = SSL_SESSION_get_timeout(sess);
    int64_t now = esim_now_ms();
    if (der && i2d_SSL_SESSION(sess, &w) == der_len &&
        session_der_without_peer(der, (size_t)der_len, &kept) && timeout > 0)
        tls_sessions_put(svc->tls_sessions, id, id_len, kept.data, kept.len,
                         now + (int64_t)timeout * 1000, now);
    free(der);
    esim_buf_free(&kept);
    ERR_clear_error();
    return 0; /* the table keeps its own copy */
}

SSL_SESSION *auth_tls_session_get(SSL *ssl, const unsigned char *id, int id_len, int *copy)
{
    *copy = 0;
    esim_service *svc = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (!svc || !svc->tls_sessions || id_len <= 0)
        return NULL;
    int64_t now = esim_now_ms();
    size_t len = 0;
    const unsigned char *der = tls_sessions_get(svc->tls_sessions, id, (size_t)id_len, now, &len);
    if (!der)
        return NULL;
    const unsigned char *r = der;
    SSL_SESSION *sess = d2i_SSL_SESSION(NULL, &r, (long)len);
    /* A TLS 1.3 ticket is used once: the resumed session gets a new one.
     * TLS 1.2 resumes by the same ID again and again. */
    if (!sess || SSL_SESSION_get_protocol_version(sess) >= TLS1_3_VERSION)
        tls_sessions_remove(svc->tls_sessions, id, (size_t)id_len);
    if (!sess) {
        ERR_clear_error();
        return NULL;
    }
    const auth_session_note *n = session_note(sess);
    if (n) {
        /* An identity resumes within AUTH_TICKET_MS of the handshake that
         * verified it, and while the verification holds; otherwise a full
         * handshake, which verifies again. */
        int64_t age = now - n->verified_at;
        if (age < 0 || age > AUTH_TICKET_MS || note_refused(svc, n, now)) {
            SSL_SESSION_free(sess);
            return NULL;
        }
        svc->m.tls_cert_resumed++;
    }
    return sess;
}

/* A TLS-terminating proxy's header (NanoMDM's -cert-header): RFC 9440's
 * ":base64 of the DER:", or a URL-escaped PEM (nginx's
 * $ssl_client_escaped_cert). The proxy verified possession of the key; the
 * chain to the device CA is verified here. */
static esim_err from_header(esim_service *svc, struct evhttp_request *req, auth_identity *out,
                            esim_error *err)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), svc->cert_header);
    if (!h || !*h)
        return esim_fail(err, ESIM_EAUTH,
                         "no %s header: the TLS proxy in front of the service must pass the "
                         "device's client certificate",
                         svc->cert_header);
    X509 *cert = NULL;
    size_t n = strlen(h);
    if (h[0] == ':') {
        esim_buf der = {0};
        if (n >= 3 && h[n - 1] == ':' && esim_base64_decode(h + 1, n - 2, &der, NULL) == ESIM_OK &&
            der.len) {
            const unsigned char *p = der.data;
            cert = d2i_X509(NULL, &p, (long)der.len);
        }
        esim_buf_free(&der);
    } else {
        char *pem = evhttp_uridecode(h, 0, NULL);
        BIO *bio = pem ? BIO_new_mem_buf(pem, -1) : NULL;
        cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        free(pem);
    }
    ERR_clear_error();
    if (!cert)
        return esim_fail(err, ESIM_EAUTH,
                         "the %s header is not a certificate: expected RFC 9440 ':base64 DER:' "
                         "or a URL-escaped PEM",
                         svc->cert_header);
    esim_err rc = verify_chain(svc, cert, NULL, NULL, err);
    if (rc == ESIM_OK)
        rc = esim_cert_sha256_hex(cert, out->cert_sha256);
    out->not_before_ms = time_ms(X509_get0_notBefore(cert));
    X509_free(cert);
    return rc;
}

/* ---- the certificate cache -------------------------------------------------------
 * Direct-mapped by the SHA-256 of the certificate's DER: a fixed 4096 slots,
 * so memory stays bounded whatever the fleet. An entry holds the parsed
 * certificate (a few KiB each, so not one per device of a large fleet).
 *
 * Whether a certificate's chain to the device CA verified, and when, is kept
 * apart in a table keyed by the same digest that grows with the fleet (160
 * bytes an entry): its chain is not verified again until AUTH_REVERIFY_MS
 * has passed (validity periods move on), and for a P-256 key the entry
 * keeps what a signature's check needs (the point, the signer's names, the
 * notBefore), so a message whose certificate lost its slot (a fleet larger
 * than the 4096 slots: at 10,000 devices and more almost every message) is
 * checked with that key, its certificate not parsed again (≈ 1.5 M
 * instructions with OpenSSL 3.0, nearly all decoding the key; making the
 * key from its point ≈ 0.2 M). */

#ifndef AUTH_CACHE_SLOTS /* a build may take fewer (bench/service: the path past the slots) */
#define AUTH_CACHE_SLOTS 4096
#endif
#define AUTH_REVERIFY_MS (5 * 60 * 1000)
#define AUTH_VERIFIED_MIN 1024
#define AUTH_VERIFIED_MAX (1u << 22) /* about 200 MiB at most: 4 million devices */

typedef struct {
    unsigned char sha[SHA256_DIGEST_LENGTH];
    X509 *x509; /* NULL: empty slot */
} auth_entry;

/* A verified certificate. With a P-256 key, also what an Mdm-Signature's
 * check needs of it once its parsed slot was taken by another (auth_key):
 * so a fleet larger than the slots neither parses nor verifies a chain
 * again, and keeps about 160 bytes per certificate instead of an X509. */
typedef struct {
    unsigned char sid[16];   /* SHA-256 of its issuer Name's DER and serialNumber's, 16 bytes */
    unsigned char ski[20];   /* its subjectKeyIdentifier */
    unsigned char ski_len;   /* 0: it has none */
    unsigned char point[65]; /* its public key, uncompressed; point[0] == 0: none kept */
    int64_t not_before_ms;
} auth_key;

typedef struct {
    unsigned char sha[SHA256_DIGEST_LENGTH];
    int64_t verified_at; /* 0: empty */
    int64_t until;       /* the verified chain's earliest notAfter, ms */
    auth_key key;
} auth_verified;

/* The P-256 public keys made from kept points (auth_key) ready to verify
 * (core/p256.h: a 2 KiB table of multiples of the point, made in about
 * half the instructions of one OpenSSL verification; each verification
 * with it takes about a third of OpenSSL's), by certificate digest: a
 * device's later messages reuse it. core/p256_cache.h keeps them,
 * AUTH_CACHE_SLOTS tables (at most 8 MiB) in sets of four by digest, the
 * least recently used of a set made again for a new key: a device's
 * messages of one phase come within seconds, so its table stays while
 * fewer keys than the slots came between them, where direct mapping lost
 * a table whenever one other key of its slot did. Used on the event loop
 * only (auth_device_request), as the rest of the cache. */

/* A certificate that issued a device identity whose chain OpenSSL
 * verified (X509_verify_cert): the next identities it issued are checked
 * against it directly (verify_fresh), with what OpenSSL checked of the
 * rest of the chain held for AUTH_REVERIFY_MS, as a verified chain is.
 * Kept only when nothing above the identity depends on the identity
 * itself: no name or policy constraints in the chain, the issuer a CA
 * that may sign certificates, the only one of its name in the trust
 * store. */
#define AUTH_ISSUERS 8
typedef struct {
    unsigned char sha[SHA256_DIGEST_LENGTH]; /* its DER's digest */
    unsigned char *der;                      /* its DER (OPENSSL_malloc'd) */
    size_t der_len;
    unsigned char *subject; /* its subject Name's DER; NULL: empty */
    size_t subject_len;
    EVP_PKEY *key;
    /* A P-256 key made ready once (core/p256.h's table; NULL: another key
     * type): every identity it issues is checked against it, so OpenSSL's
     * verification (~845,000 instructions) would be paid per device. Kept
     * while the same certificate is noted again. */
    esim_p256_key *p256;
    unsigned char ski[64];
    size_t ski_len;          /* 0: it has no subjectKeyIdentifier */
    bool anchor;             /* in the trust store (else it must come with the identity) */
    int64_t noted_at, until; /* ms; until: the chain's earliest notAfter */
} auth_issuer;

struct auth_cache {
    auth_entry slot[AUTH_CACHE_SLOTS];
    esim_p256_cache *keys; /* made at its first use (kept_key) */
    auth_issuer issuers[AUTH_ISSUERS];
    auth_verified *ver; /* open addressing, linear probing; cap a power of two */
    size_t ver_cap, ver_len;
    EVP_MD *md[5];    /* fetched once: SHA-1, SHA-224, SHA-256, SHA-384, SHA-512 */
    EVP_MD_CTX *dctx; /* reused for every digest (SHA256() fetches SHA-256 each call) */
};
_Static_assert(AUTH_CACHE_SLOTS % ESIM_P256_CACHE_WAYS == 0, "key slots in whole sets");

void auth_cache_free(esim_service *svc)
{
    if (!svc->auth_cache)
        return;
    for (size_t i = 0; i < AUTH_CACHE_SLOTS; i++)
        X509_free(svc->auth_cache->slot[i].x509);
    svc->m.identity_key_tables_before = auth_key_tables(svc); /* the counter goes on */
    esim_p256_cache_free(svc->auth_cache->keys);
    for (size_t i = 0; i < AUTH_ISSUERS; i++) {
        free(svc->auth_cache->issuers[i].subject);
        OPENSSL_free(svc->auth_cache->issuers[i].der);
        EVP_PKEY_free(svc->auth_cache->issuers[i].key);
        free(svc->auth_cache->issuers[i].p256);
    }
    free(svc->auth_cache->ver);
    for (size_t i = 0; i < sizeof svc->auth_cache->md / sizeof svc->auth_cache->md[0]; i++)
        EVP_MD_free(svc->auth_cache->md[i]);
    EVP_MD_CTX_free(svc->auth_cache->dctx);
    free(svc->auth_cache);
    svc->auth_cache = NULL;
}

static size_t ver_index(const unsigned char *sha, size_t cap)
{
    uint64_t h = 0;
    memcpy(&h, sha + 8, sizeof h); /* a digest: any 8 bytes are uniform */
    return (size_t)h & (cap - 1);
}

/* The entry for this digest, or the empty one where it would go. */
static auth_verified *ver_slot(auth_verified *tab, size_t cap, const unsigned char *sha)
{
    for (size_t i = ver_index(sha, cap);; i = (i + 1) & (cap - 1))
        if (!tab[i].verified_at || memcmp(tab[i].sha, sha, SHA256_DIGEST_LENGTH) == 0)
            return &tab[i];
}

/* When this certificate's chain last verified (0: not recently), and
 * (|until| when given) the earliest notAfter in that chain. */
static int64_t ver_get(esim_service *svc, const unsigned char *sha, int64_t now, int64_t *until)
{
    struct auth_cache *c = svc->auth_cache;
    if (!c || !c->ver)
        return 0;
    auth_verified *v = ver_slot(c->ver, c->ver_cap, sha);
    if (!v->verified_at || now - v->verified_at > AUTH_REVERIFY_MS)
        return 0;
    if (until)
        *until = v->until;
    return v->verified_at;
}

/* Rebuilds the table with |cap| slots, keeping the entries verified within
 * AUTH_REVERIFY_MS. False when memory runs out (the old table stays). */
static bool ver_rebuild(struct auth_cache *c, size_t cap, int64_t now)
{
    auth_verified *tab = calloc(cap, sizeof *tab);
    if (!tab)
        return false;
    size_t len = 0;
    for (size_t i = 0; i < c->ver_cap; i++) {
        const auth_verified *o = &c->ver[i];
        if (o->verified_at && now - o->verified_at <= AUTH_REVERIFY_MS) {
            *ver_slot(tab, cap, o->sha) = *o;
            len++;
        }
    }
    free(c->ver);
    c->ver = tab;
    c->ver_cap = cap;
    c->ver_len = len;
    return true;
}

/* Records that this certificate's chain verified at |now|, good until
 * |until|. Best effort: out of memory, the chain is simply verified again
 * next time. */
static void ver_put(esim_service *svc, const unsigned char *sha, int64_t now, int64_t until)
{
    if (!svc->auth_cache && !(svc->auth_cache = calloc(1, sizeof *svc->auth_cache)))
        return;
    struct auth_cache *c = svc->auth_cache;
    /* At most 3/4 full: past that, grow (or, at the ceiling, drop what is
     * stale; if nothing is, start over: every chain is verified again). */
    if (!c->ver || (c->ver_len + 1) * 4 > c->ver_cap * 3) {
        size_t cap = c->ver ? c->ver_cap : AUTH_VERIFIED_MIN;
        if (c->ver && cap < AUTH_VERIFIED_MAX)
            cap *= 2;
        if (!ver_rebuild(c, cap, now))
            return;
        if ((c->ver_len + 1) * 4 > c->ver_cap * 3) {
            memset(c->ver, 0, c->ver_cap * sizeof *c->ver);
            c->ver_len = 0;
        }
    }
    auth_verified *v = ver_slot(c->ver, c->ver_cap, sha);
    if (!v->verified_at) {
        memcpy(v->sha, sha, SHA256_DIGEST_LENGTH);
        c->ver_len++;
    }
    v->verified_at = now;
    v->until = until;
}

/* The fetched digest |i| of digest_of(), fetched on first use. */
static EVP_MD *cached_md(esim_service *svc, int i, int nid)
{
    struct auth_cache *c = svc->auth_cache;
    if (!c->md[i])
        c->md[i] = EVP_MD_fetch(NULL, OBJ_nid2sn(nid), NULL);
    return c->md[i];
}

/* |md| over |a| then |b| (|b| may be NULL with |blen| 0) into |out|
 * (*out_len bytes) with the cache's reused context. False on failure. */
static bool digest_two(esim_service *svc, EVP_MD *md, const void *a, size_t alen, const void *b,
                       size_t blen, unsigned char *out, unsigned *out_len)
{
    struct auth_cache *c = svc->auth_cache;
    if (!c->dctx && !(c->dctx = EVP_MD_CTX_new()))
        return false;
    bool ok = md && EVP_DigestInit_ex2(c->dctx, md, NULL) == 1 &&
              EVP_DigestUpdate(c->dctx, a ? a : "", alen) == 1 &&
              (blen == 0 || EVP_DigestUpdate(c->dctx, b, blen) == 1) &&
              EVP_DigestFinal_ex(c->dctx, out, out_len) == 1;
    if (!ok)
        ERR_clear_error();
    return ok;
}

/* |md| over |data| into |out| (*out_len bytes). False on failure. */
static bool digest_with(esim_service *svc, EVP_MD *md, const void *data, size_t len,
                        unsigned char *out, unsigned *out_len)
{
    return digest_two(svc, md, data, len, NULL, 0, out, out_len);
}

void svc_sha256(esim_service *svc, const void *data, size_t len, unsigned char out[32])
{
    unsigned n = 0;
    if ((!svc->auth_cache && !(svc->auth_cache = calloc(1, sizeof *svc->auth_cache))) ||
        !digest_with(svc, cached_md(svc, 2, NID_sha256), data, len, out, &n) || n != 32)
        SHA256(data ? data : (const void *)"", len, out);
}

/* The parsed-certificate slot for the digest |sha|. */
static auth_entry *cache_slot(esim_service *svc, const unsigned char *sha)
{
    return &svc->auth_cache->slot[((size_t)sha[0] | (size_t)sha[1] << 8) % AUTH_CACHE_SLOTS];
}

static bool cache_has(esim_service *svc, const unsigned char *sha)
{
    const auth_entry *e = cache_slot(svc, sha);
    return e->x509 && memcmp(e->sha, sha, sizeof e->sha) == 0;
}

/* The cached certificate for these DER bytes (|sha| their SHA-256),
 * parsing it on a miss. NULL when the bytes are not a certificate or
 * memory runs out. */
static auth_entry *cache_get(esim_service *svc, const unsigned char *der, size_t len,
                             const unsigned char *sha)
{
    auth_entry *e = cache_slot(svc, sha);
    if (e->x509 && memcmp(e->sha, sha, sizeof e->sha) == 0) {
        svc->m.identity_cache_hits++;
        return e;
    }
    svc->m.identity_cache_misses++;
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (!x || p != der + len) {
        X509_free(x);
        ERR_clear_error();
        return NULL;
    }
    X509_free(e->x509);
    e->x509 = x;
    memcpy(e->sha, sha, sizeof e->sha);
    return e;
}

/* ---- reading the Mdm-Signature without re-parsing its certificates --------------- */

/* One DER header: single-byte tag, definite length. False otherwise. */
static bool der_header(const unsigned char *p, size_t avail, unsigned *tag, size_t *hdr,
                       size_t *len)
{
    if (avail < 2 || (p[0] & 0x1f) == 0x1f)
        return false;
    *tag = p[0];
    size_t l = p[1];
    if (l < 0x80) {
        *hdr = 2;
    } else {
        size_t n = l & 0x7f;
        if (n == 0 || n > 4 || avail < 2 + n)
            return false;
        l = 0;
        for (size_t i = 0; i < n; i++)
            l = l << 8 | p[2 + i];
        *hdr = 2 + n;
    }
    if (l > avail - *hdr)
        return false;
    *len = l;
    return true;
}

static void der_put_header(esim_buf *out, unsigned tag, size_t len)
{
    unsigned char h[6];
    size_t n = 0;
    h[n++] = (unsigned char)tag;
    if (len < 0x80) {
        h[n++] = (unsigned char)len;
    } else {
        size_t bytes = len > 0xffffff ? 4 : len > 0xffff ? 3 : len > 0xff ? 2 : 1;
        h[n++] = (unsigned char)(0x80 | bytes);
        for (size_t i = bytes; i > 0; i--)
            h[n++] = (unsigned char)(len >> (8 * (i - 1)));
    }
    esim_buf_append(out, h, n);
}

static size_t der_header_size(size_t len)
{
    return len < 0x80 ? 2 : len > 0xffffff ? 6 : len > 0xffff ? 5 : len > 0xff ? 4 : 3;
}

/*
 * Splits a CMS ContentInfo(SignedData) into the same structure without its
 * certificates field (|stripped|) and the certificates' DER (|certs|, each
 * one a span into |der|). False when the encoding is not the plain DER this
 * expects; the caller then parses the whole thing the ordinary way.
 */
bool auth_split_certificates(const unsigned char *der, size_t len, esim_buf *stripped,
                             const unsigned char **certs, size_t *cert_lens, size_t max_certs,
                             size_t *n_certs)
{
    unsigned tag;
    size_t hdr, l;
    /* ContentInfo ::= SEQUENCE { contentType, [0] EXPLICIT SignedData } */
    if (!der_header(der, len, &tag, &hdr, &l) || tag != 0x30 || hdr + l != len)
        return false;
    const unsigned char *ci = der + hdr, *ci_end = ci + l;
    size_t oh, ol;
    if (!der_header(ci, (size_t)(ci_end - ci), &tag, &oh, &ol) || tag != 0x06)
        return false;
    const unsigned char *oid = ci;
    size_t oid_len = oh + ol;
    const unsigned char *ex = ci + oid_len;
    size_t eh, el;
    if (!der_header(ex, (size_t)(ci_end - ex), &tag, &eh, &el) || tag != 0xa0 ||
        ex + eh + el != ci_end)
        return false;
    const unsigned char *sd = ex + eh;
    size_t sh, sl;
    if (!der_header(sd, el, &tag, &sh, &sl) || tag != 0x30 || sh + sl != el)
        return false;
    /* SignedData's fields: version, digestAlgorithms, encapContentInfo,
     * certificates [0] IMPLICIT (optional), crls [1], signerInfos. */
    const unsigned char *f = sd + sh, *f_end = f + sl;
    const unsigned char *cert_field = NULL;
    size_t cert_field_len = 0;
    *n_certs = 0;
    while (f < f_end) {
        size_t fh, fl;
        if (!der_header(f, (size_t)(f_end - f), &tag, &fh, &fl))
            return false;
        if (tag == 0xa0) {
            /* One certificates field at most: with two, the certificates
             * of both would be offered while only the last was stripped,
             * a structure OpenSSL itself refuses (found by fuzz_sig_split). */
            if (cert_field)
                return false;
            cert_field = f;
            cert_field_len = fh + fl;
            for (const unsigned char *c = f + fh; c < f + fh + fl;) {
                size_t ch, cl;
                if (!der_header(c, (size_t)(f + fh + fl - c), &tag, &ch, &cl) || tag != 0x30 ||
                    *n_certs == max_certs)
                    return false;
                certs[*n_certs] = c;
                cert_lens[(*n_certs)++] = ch + cl;
                c += ch + cl;
            }
        }
        f += fh + fl;
    }
    if (!cert_field || *n_certs == 0)
        return false;
    size_t new_sd = sl - cert_field_len;
    size_t new_ex = der_header_size(new_sd) + new_sd;
    size_t new_ci = oid_len + der_header_size(new_ex) + new_ex;
    esim_buf_reset(stripped);
    der_put_header(stripped, 0x30, new_ci);
    esim_buf_append(stripped, oid, oid_len);
    der_put_header(stripped, 0xa0, new_ex);
    der_put_header(stripped, 0x30, new_sd);
    esim_buf_append(stripped, sd + sh, (size_t)(cert_field - (sd + sh)));
    esim_buf_append(stripped, cert_field + cert_field_len,
                    (size_t)(f_end - (cert_field + cert_field_len)));
    return stripped->len == der_header_size(new_ci) + new_ci;
}

/*
 * Refuses a signature made over a broken digest. SHA-1 stays accepted:
 * older iPhones sign Mdm-Signature with SHA-1 and RSA (see the device test),
 * and a collision on a check-in body does not let anyone sign as a device.
 * MD5 (and MD2, MD4, anything unknown) is refused before it is verified.
 */
static esim_err check_digests(CMS_ContentInfo *cms, esim_error *err)
{
    STACK_OF(CMS_SignerInfo) *infos = CMS_get0_SignerInfos(cms);
    int n = infos ? sk_CMS_SignerInfo_num(infos) : 0;
    if (n <= 0)
        return esim_fail(err, ESIM_EAUTH, "the Mdm-Signature has no signer");
    for (int i = 0; i < n; i++) {
        X509_ALGOR *dig = NULL, *sig = NULL;
        CMS_SignerInfo_get0_algs(sk_CMS_SignerInfo_value(infos, i), NULL, NULL, &dig, &sig);
        const ASN1_OBJECT *oid = NULL;
        if (dig)
            X509_ALGOR_get0(&oid, NULL, NULL, dig);
        int nid = oid ? OBJ_obj2nid(oid) : NID_undef;
        if (nid != NID_sha1 && nid != NID_sha224 && nid != NID_sha256 && nid != NID_sha384 &&
            nid != NID_sha512)
            return esim_fail(err, ESIM_EAUTH,
                             "the Mdm-Signature uses the digest %s, which is refused; sign "
                             "with SHA-256 (or SHA-1)",
                             nid == NID_undef ? "(unknown)" : OBJ_nid2sn(nid));
        /* The signature algorithm may name its own digest (md5WithRSA). */
        const ASN1_OBJECT *soid = NULL;
        if (sig)
            X509_ALGOR_get0(&soid, NULL, NULL, sig);
        int md = NID_undef, pk = NID_undef;
        if (soid && OBJ_find_sigid_algs(OBJ_obj2nid(soid), &md, &pk) && md != NID_undef &&
            md != NID_sha1 && md != NID_sha224 && md != NID_sha256 && md != NID_sha384 &&
            md != NID_sha512)
            return esim_fail(err, ESIM_EAUTH,
                             "the Mdm-Signature uses the signature algorithm %s, which is "
                             "refused; sign with SHA-256 (or SHA-1)",
                             OBJ_nid2sn(OBJ_obj2nid(soid)));
    }
    return ESIM_OK;
}

/* ---- the signature checked directly ------------------------------------------------
 * OpenSSL's CMS_verify costs about 1,000,000 instructions for one P-256
 * signature, of which the signature itself is 823,000: the rest is decoding
 * the CMS into objects, matching the signer, encoding the signed attributes
 * again and fetching the digest and signature algorithms each time. The
 * common shape of an Mdm-Signature (one signer, signed attributes, a digest
 * of the SHA-2 family or SHA-1, ECDSA or RSA PKCS#1) is checked here from
 * its DER bytes with the same checks: the body's digest equals the signed
 * messageDigest, the content type is data, and the signer's key verifies
 * the signature over the signed attributes exactly as they were sent.
 * Anything else (several signers, no signed attributes, RSA-PSS, MD5,
 * attributes out of DER order, a signer named differently from its
 * certificate's bytes) goes to CMS_verify, which decides. */

/* One TLV at *p (before |end|): its tag and value; *p moves past it. */
static bool der_take(const unsigned char **p, const unsigned char *end, unsigned *tag,
                     const unsigned char **val, size_t *len)
{
    size_t hdr;
    if (*p >= end || !der_header(*p, (size_t)(end - *p), tag, &hdr, len))
        return false;
    *val = *p + hdr;
    *p = *val + *len;
    return true;
}

static bool bytes_are(const unsigned char *p, size_t len, const char *want, size_t want_len)
{
    return len == want_len && memcmp(p, want, len) == 0;
}

#define OID_IS(p, len, lit) bytes_are(p, len, lit, sizeof lit - 1)

/* An AlgorithmIdentifier's OID (value bytes); its parameters must be
 * absent or NULL. */
static bool der_algorithm(const unsigned char *v, size_t vl, const unsigned char **oid,
                          size_t *oid_len)
{
    const unsigned char *p = v, *end = v + vl, *pv;
    unsigned tag;
    size_t pl;
    if (!der_take(&p, end, &tag, oid, oid_len) || tag != 0x06)
        return false;
    if (p == end)
        return true;
    return der_take(&p, end, &tag, &pv, &pl) && tag == 0x05 && pl == 0 && p == end;
}

/* The digest named by an OID: index into auth_cache.md and its NID. */
static int digest_of(const unsigned char *oid, size_t len, int *nid)
{
    static const struct {
        const char *oid;
        size_t len;
        int nid;
    } tab[] = {
        {"\x2b\x0e\x03\x02\x1a", 5, NID_sha1},
        {"\x60\x86\x48\x01\x65\x03\x04\x02\x04", 9, NID_sha224},
        {"\x60\x86\x48\x01\x65\x03\x04\x02\x01", 9, NID_sha256},
        {"\x60\x86\x48\x01\x65\x03\x04\x02\x02", 9, NID_sha384},
        {"\x60\x86\x48\x01\x65\x03\x04\x02\x03", 9, NID_sha512},
    };
    for (int i = 0; i < (int)(sizeof tab / sizeof tab[0]); i++)
        if (bytes_are(oid, len, tab[i].oid, tab[i].len)) {
            *nid = tab[i].nid;
            return i;
        }
    return -1;
}

/* The signature algorithm named by an OID: the key type it needs and the
 * digest it names (NID_undef: the SignerInfo's digest). False: not one the
 * direct check takes. */
static bool signature_alg_of(const unsigned char *oid, size_t len, int *key_type, int *md_nid)
{
    static const struct {
        const char *oid;
        size_t len;
        int key, md;
    } tab[] = {
        {"\x2a\x86\x48\xce\x3d\x02\x01", 7, EVP_PKEY_EC, NID_undef}, /* id-ecPublicKey */
        {"\x2a\x86\x48\xce\x3d\x04\x01", 7, EVP_PKEY_EC, NID_sha1},
        {"\x2a\x86\x48\xce\x3d\x04\x03\x01", 8, EVP_PKEY_EC, NID_sha224},
        {"\x2a\x86\x48\xce\x3d\x04\x03\x02", 8, EVP_PKEY_EC, NID_sha256},
        {"\x2a\x86\x48\xce\x3d\x04\x03\x03", 8, EVP_PKEY_EC, NID_sha384},
        {"\x2a\x86\x48\xce\x3d\x04\x03\x04", 8, EVP_PKEY_EC, NID_sha512},
        {"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01", 9, EVP_PKEY_RSA, NID_undef}, /* rsaEncryption */
        {"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x05", 9, EVP_PKEY_RSA, NID_sha1},
        {"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0e", 9, EVP_PKEY_RSA, NID_sha224},
        {"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0b", 9, EVP_PKEY_RSA, NID_sha256},
        {"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0c", 9, EVP_PKEY_RSA, NID_sha384},
        {"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0d", 9, EVP_PKEY_RSA, NID_sha512},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (bytes_are(oid, len, tab[i].oid, tab[i].len)) {
            *key_type = tab[i].key;
            *md_nid = tab[i].md;
            return true;
        }
    return false;
}

/* Whether |x| is the certificate a SignerIdentifier names, comparing its
 * encoded issuer and serial number (or its subject key identifier). */
static bool signer_is(X509 *x, unsigned sid_tag, const unsigned char *sid, size_t sid_len)
{
    if (sid_tag == 0x80) {
        const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(x);
        return ski && (size_t)ASN1_STRING_length(ski) == sid_len &&
               memcmp(ASN1_STRING_get0_data(ski), sid, sid_len) == 0;
    }
    const unsigned char *p = sid, *end = sid + sid_len, *name = p, *v;
    unsigned tag;
    size_t l;
    if (!der_take(&p, end, &tag, &v, &l) || tag != 0x30)
        return false;
    size_t name_len = (size_t)(p - name);
    const unsigned char *serial = p;
    if (!der_take(&p, end, &tag, &v, &l) || tag != 0x02 || p != end)
        return false;
    size_t serial_len = (size_t)(p - serial);
    const unsigned char *ider = NULL;
    size_t ilen = 0;
    if (X509_NAME_get0_der(X509_get_issuer_name(x), &ider, &ilen) != 1 || ilen != name_len ||
        memcmp(ider, name, name_len) != 0)
        return false;
    unsigned char buf[64], *out = buf;
    const ASN1_INTEGER *sn = X509_get0_serialNumber(x);
    int n = i2d_ASN1_INTEGER(sn, NULL);
    if (n <= 0 || (size_t)n != serial_len || n > (int)sizeof buf)
        return false;
    i2d_ASN1_INTEGER(sn, &out);
    return memcmp(buf, serial, serial_len) == 0;
}

bool auth_signer_parse(const unsigned char *der, size_t len, auth_signer_info *out)
{
    const unsigned char *p = der, *end = der + len, *v, *sd, *sd_end, *oid;
    unsigned tag;
    size_t l, oid_len;
    /* ContentInfo { id-signedData, [0] SignedData } */
    if (!der_take(&p, end, &tag, &v, &l) || tag != 0x30 || p != end)
        return false;
    p = v;
    end = v + l;
    if (!der_take(&p, end, &tag, &oid, &oid_len) || tag != 0x06 ||
        !OID_IS(oid, oid_len, "\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02") ||
        !der_take(&p, end, &tag, &v, &l) || tag != 0xa0 || p != end)
        return false;
    p = v;
    end = v + l;
    if (!der_take(&p, end, &tag, &sd, &l) || tag != 0x30 || p != end)
        return false;
    sd_end = sd + l;
    p = sd;
    /* version, digestAlgorithms, encapContentInfo { id-data } (detached) */
    const unsigned char *eci;
    if (!der_take(&p, sd_end, &tag, &v, &l) || tag != 0x02 || !der_take(&p, sd_end, &tag, &v, &l) ||
        tag != 0x31 || !der_take(&p, sd_end, &tag, &eci, &l) || tag != 0x30)
        return false;
    const unsigned char *q = eci;
    if (!der_take(&q, eci + l, &tag, &oid, &oid_len) || tag != 0x06 || q != eci + l ||
        !OID_IS(oid, oid_len, "\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01"))
        return false;
    /* certificates [0] (already taken apart), no crls [1], signerInfos */
    if (!der_take(&p, sd_end, &tag, &v, &l))
        return false;
    if (tag == 0xa0 && !der_take(&p, sd_end, &tag, &v, &l))
        return false;
    if (tag != 0x31 || p != sd_end)
        return false;
    /* exactly one SignerInfo */
    const unsigned char *si, *si_end, *set_end = v + l;
    p = v;
    if (!der_take(&p, set_end, &tag, &si, &l) || tag != 0x30 || p != set_end)
        return false;
    si_end = si + l;
    p = si;
    /* version, sid, digestAlgorithm, [0] signedAttrs, signatureAlgorithm,
     * signature, [1] unsignedAttrs (optional) */
    const unsigned char *sid, *dalg, *attrs_tlv, *attrs, *salg, *sig;
    size_t sid_len, dalg_len, attrs_len, salg_len, sig_len;
    unsigned sid_tag;
    if (!der_take(&p, si_end, &tag, &v, &l) || tag != 0x02)
        return false;
    if (!der_take(&p, si_end, &sid_tag, &sid, &sid_len) || (sid_tag != 0x30 && sid_tag != 0x80) ||
        !der_take(&p, si_end, &tag, &dalg, &dalg_len) || tag != 0x30)
        return false;
    attrs_tlv = p;
    if (!der_take(&p, si_end, &tag, &attrs, &attrs_len) || tag != 0xa0)
        return false;
    size_t attrs_tlv_len = (size_t)(p - attrs_tlv);
    if (!der_take(&p, si_end, &tag, &salg, &salg_len) || tag != 0x30 ||
        !der_take(&p, si_end, &tag, &sig, &sig_len) || tag != 0x04 || sig_len == 0)
        return false;
    if (p != si_end && (!der_take(&p, si_end, &tag, &v, &l) || tag != 0xa1 || p != si_end))
        return false;
    /* The algorithms: a digest this takes, a signature algorithm of the
     * signer's key type naming no other digest. */
    int sig_md = NID_undef;
    if (!der_algorithm(dalg, dalg_len, &oid, &oid_len))
        return false;
    out->md_i = digest_of(oid, oid_len, &out->md_nid);
    if (out->md_i < 0 || !der_algorithm(salg, salg_len, &oid, &oid_len) ||
        !signature_alg_of(oid, oid_len, &out->key_type, &sig_md) ||
        (sig_md != NID_undef && sig_md != out->md_nid))
        return false;
    /* The signed attributes, in DER order, each of the three read here at
     * most once, with exactly one value. */
    const unsigned char *digest = NULL, *when = NULL, *prev = NULL;
    size_t digest_len = 0, when_len = 0, prev_len = 0;
    bool content_type = false;
    for (p = attrs; p < attrs + attrs_len;) {
        const unsigned char *a = p, *av, *vals, *val, *ap;
        size_t al, vals_len, val_len;
        if (!der_take(&p, attrs + attrs_len, &tag, &av, &al) || tag != 0x30)
            return false;
        size_t a_len = (size_t)(p - a);
        if (prev) {
            size_t m = prev_len < a_len ? prev_len : a_len;
            int c = memcmp(prev, a, m);
            if (c > 0 || (c == 0 && prev_len > a_len))
                return false;
        }
        prev = a;
        prev_len = a_len;
        ap = av;
        if (!der_take(&ap, av + al, &tag, &oid, &oid_len) || tag != 0x06 ||
            !der_take(&ap, av + al, &tag, &vals, &vals_len) || tag != 0x31 || ap != av + al)
            return false;
        bool is_type = OID_IS(oid, oid_len, "\x2a\x86\x48\x86\xf7\x0d\x01\x09\x03");
        bool is_digest = OID_IS(oid, oid_len, "\x2a\x86\x48\x86\xf7\x0d\x01\x09\x04");
        bool is_time = OID_IS(oid, oid_len, "\x2a\x86\x48\x86\xf7\x0d\x01\x09\x05");
        if (!is_type && !is_digest && !is_time)
            continue;
        const unsigned char *vp = vals;
        if (!der_take(&vp, vals + vals_len, &tag, &val, &val_len) || vp != vals + vals_len)
            return false;
        if (is_type) {
            if (content_type || tag != 0x06 ||
                !OID_IS(val, val_len, "\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01"))
                return false;
            content_type = true;
        } else if (is_digest) {
            if (digest || tag != 0x04)
                return false;
            digest = val;
            digest_len = val_len;
        } else {
            if (when || (tag != 0x17 && tag != 0x18))
                return false;
            when = vals; /* the time's own TLV */
            when_len = vals_len;
        }
    }
    if (!digest || !content_type)
        return false;
    out->sid_tag = sid_tag;
    out->sid = sid;
    out->sid_len = sid_len;
    out->attrs_tlv = attrs_tlv;
    out->attrs_tlv_len = attrs_tlv_len;
    out->sig = sig;
    out->sig_len = sig_len;
    out->digest = digest;
    out->digest_len = digest_len;
    out->when = when;
    out->when_len = when_len;
    return true;
}

/*
 * Checks the Mdm-Signature |der| over |body| against the certificates of
 * |stack| (already parsed, in the order the CMS carries them). ESIM_OK: it
 * verifies; *signer is the signer's index in |stack|, *signed_at its
 * signingTime (0: none). ESIM_EAUTH: it does not. ESIM_ENOTFOUND: not the
 * shape this reads; CMS_verify decides.
 */
static esim_err verify_with_key(esim_service *svc, const auth_signer_info *si,
                                const unsigned char *body, size_t len, EVP_PKEY *key,
                                const esim_p256_key *p256, int64_t *signed_at, esim_error *err);

static esim_err verify_direct(esim_service *svc, const esim_buf *der, const unsigned char *body,
                              size_t len, STACK_OF(X509) * stack, size_t *signer,
                              int64_t *signed_at, esim_error *err)
{
    auth_signer_info si;
    if (!auth_signer_parse(der->data, der->len, &si))
        return ESIM_ENOTFOUND;
    size_t n = (size_t)sk_X509_num(stack), li = n;
    for (size_t i = 0; i < n && li == n; i++)
        if (signer_is(sk_X509_value(stack, (int)i), si.sid_tag, si.sid, si.sid_len))
            li = i;
    if (li == n)
        return ESIM_ENOTFOUND;
    EVP_PKEY *key = X509_get0_pubkey(sk_X509_value(stack, (int)li));
    esim_err rc = verify_with_key(svc, &si, body, len, key, NULL, signed_at, err);
    if (rc == ESIM_OK)
        *signer = li;
    return rc;
}

/* The checks of verify_direct once the signer's key is known: the body's
 * digest, then the signature over the attributes (their SET OF tag in
 * place of the [0] they are sent with), and the signingTime. The key is
 * |key|, or with |p256| (|key| NULL) a kept P-256 key: the attributes'
 * digest is made here and esim_p256_verify_der checks the ECDSA signature
 * over it, as EVP_DigestVerifyFinal does after making the same digest
 * (the same checks, tests/core/test_p256.c compares them). */
static esim_err verify_with_key(esim_service *svc, const auth_signer_info *sip,
                                const unsigned char *body, size_t len, EVP_PKEY *key,
                                const esim_p256_key *p256, int64_t *signed_at, esim_error *err)
{
    const auth_signer_info si = *sip;
    if (p256 ? si.key_type != EVP_PKEY_EC : !key || EVP_PKEY_get_base_id(key) != si.key_type)
        return ESIM_ENOTFOUND;
    EVP_MD *md = cached_md(svc, si.md_i, si.md_nid);
    unsigned char mine[EVP_MAX_MD_SIZE];
    unsigned mine_len = 0;
    if (!digest_with(svc, md, body, len, mine, &mine_len))
        return ESIM_ENOTFOUND;
    if (mine_len != si.digest_len || CRYPTO_memcmp(mine, si.digest, si.digest_len) != 0)
        return esim_fail(err, ESIM_EAUTH, "the Mdm-Signature does not verify over the body");
    static const unsigned char set_tag = 0x31;
    int ok;
    if (p256) {
        unsigned char attrs[EVP_MAX_MD_SIZE];
        unsigned attrs_len = 0;
        if (!digest_two(svc, md, &set_tag, 1, si.attrs_tlv + 1, si.attrs_tlv_len - 1, attrs,
                        &attrs_len))
            return ESIM_ENOTFOUND;
        ok = esim_p256_verify_der(p256, attrs, attrs_len, si.sig, si.sig_len) == 1;
    } else {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        if (!ctx)
            return ESIM_ENOTFOUND;
        ok = EVP_DigestVerifyInit(ctx, NULL, md, NULL, key) == 1 &&
             EVP_DigestVerifyUpdate(ctx, &set_tag, 1) == 1 &&
             EVP_DigestVerifyUpdate(ctx, si.attrs_tlv + 1, si.attrs_tlv_len - 1) == 1 &&
             EVP_DigestVerifyFinal(ctx, si.sig, si.sig_len) == 1;
        EVP_MD_CTX_free(ctx);
    }
    ERR_clear_error();
    if (!ok)
        return esim_fail(err, ESIM_EAUTH, "the Mdm-Signature does not verify over the body");
    *signed_at = 0;
    if (si.when) {
        const unsigned char *tp = si.when;
        ASN1_TIME *t = d2i_ASN1_TIME(NULL, &tp, (long)si.when_len);
        *signed_at = t && tp == si.when + si.when_len ? time_ms(t) : 0;
        ASN1_TIME_free(t);
        ERR_clear_error();
    }
    return ESIM_OK;
}

/* Keeps in verified entry |v| what an Mdm-Signature's check needs of its
 * certificate (auth_key): its P-256 |point| (65 bytes, uncompressed), its
 * subjectKeyIdentifier |ski| (NULL: none; at most 20 bytes), its notBefore,
 * and the digest of the issuerAndSerialNumber's contents as a
 * SignerIdentifier sends them: the issuer Name's DER (|issuer|), then the
 * serialNumber INTEGER's (|serial|). false, |v| untouched, when the digest
 * cannot be made. */
static bool ver_key_fill(esim_service *svc, auth_verified *v, const unsigned char *point,
                         const unsigned char *ski, size_t ski_len, int64_t not_before_ms,
                         const unsigned char *issuer, size_t ilen, const unsigned char *serial,
                         size_t slen)
{
    auth_key k = {0};
    memcpy(k.point, point, sizeof k.point);
    k.ski_len = (unsigned char)(ski ? ski_len : 0);
    if (ski)
        memcpy(k.ski, ski, ski_len);
    k.not_before_ms = not_before_ms;
    unsigned char sid[SHA256_DIGEST_LENGTH];
    unsigned n = 0;
    if (!digest_two(svc, cached_md(svc, 2, NID_sha256), issuer, ilen, serial, slen, sid, &n) ||
        n != sizeof sid)
        return false;
    memcpy(k.sid, sid, sizeof k.sid);
    v->key = k;
    return true;
}

/* |key|'s uncompressed point (04 X Y) when it is a P-256 key; false for
 * any other key (OpenSSL's error queue left clear). */
static bool p256_point_of(EVP_PKEY *key, unsigned char point[65])
{
    char group[32];
    size_t glen = 0, plen = 0;
    bool ok =
        EVP_PKEY_get_base_id(key) == EVP_PKEY_EC &&
        EVP_PKEY_get_group_name(key, group, sizeof group, &glen) == 1 &&
        strcmp(group, "prime256v1") == 0 &&
        EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, point, 65, &plen) == 1 &&
        plen == 65 && point[0] == 0x04;
    ERR_clear_error();
    return ok;
}

/* What an Mdm-Signature's check needs of |leaf| (whose chain just
 * verified, its digest |sha|), kept in its verified entry: a P-256 key's
 * point, the names a SignerIdentifier may give it by, its notBefore. Other
 * keys keep nothing (their messages parse the certificate on a slot miss). */
static void ver_note_key(esim_service *svc, const unsigned char *sha, X509 *leaf)
{
    struct auth_cache *c = svc->auth_cache;
    if (!c || !c->ver)
        return;
    auth_verified *v = ver_slot(c->ver, c->ver_cap, sha);
    if (!v->verified_at || v->key.point[0])
        return;
    unsigned char point[sizeof v->key.point];
    int64_t not_before_ms = 0;
    EVP_PKEY *key = X509_get0_pubkey(leaf);
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(leaf);
    const unsigned char *name = NULL;
    size_t name_len = 0;
    unsigned char serial[64], *w = serial;
    const ASN1_INTEGER *sn = X509_get0_serialNumber(leaf);
    int serial_len = sn ? i2d_ASN1_INTEGER(sn, NULL) : -1;
    bool ok = key && p256_point_of(key, point) &&
              (!ski || (size_t)ASN1_STRING_length(ski) <= sizeof v->key.ski) &&
              X509_NAME_get0_der(X509_get_issuer_name(leaf), &name, &name_len) == 1 &&
              serial_len > 0 && serial_len <= (int)sizeof serial &&
              i2d_ASN1_INTEGER(sn, &w) == serial_len &&
              (not_before_ms = time_ms(X509_get0_notBefore(leaf))) != 0;
    ERR_clear_error();
    if (!ok)
        return;
    (void)ver_key_fill(svc, v, point, ski ? ASN1_STRING_get0_data(ski) : NULL,
                       ski ? (size_t)ASN1_STRING_length(ski) : 0, not_before_ms, name, name_len,
                       serial, (size_t)serial_len);
}

/* |si|'s signer among the verified entries of |shas| (n certificates):
 * one whose chain verified within AUTH_REVERIFY_MS and whose kept key
 * matches the SignerIdentifier. NULL: none. */
static const auth_verified *known_signer(esim_service *svc, const auth_signer_info *si,
                                         unsigned char (*shas)[SHA256_DIGEST_LENGTH], size_t n,
                                         int64_t now, size_t *which)
{
    struct auth_cache *c = svc->auth_cache;
    unsigned char sid[SHA256_DIGEST_LENGTH];
    if (si->sid_tag != 0x80)
        svc_sha256(svc, si->sid, si->sid_len, sid);
    for (size_t i = 0; i < n; i++) {
        const auth_verified *v = ver_slot(c->ver, c->ver_cap, shas[i]);
        if (!v->verified_at || now - v->verified_at > AUTH_REVERIFY_MS || !v->key.point[0])
            continue;
        bool match = si->sid_tag == 0x80 ? v->key.ski_len && v->key.ski_len == si->sid_len &&
                                               memcmp(v->key.ski, si->sid, si->sid_len) == 0
                                         : memcmp(v->key.sid, sid, sizeof v->key.sid) == 0;
        if (match) {
            *which = i;
            return v;
        }
    }
    return NULL;
}

/* The table of the certificate |sha|'s key, made from its kept |point|
 * when the cache has none (counted: esim_mdm_identity_key_tables_total).
 * NULL on failure. */
static const esim_p256_key *kept_key(esim_service *svc, const unsigned char *sha,
                                     const unsigned char point[65])
{
    struct auth_cache *c = svc->auth_cache;
    if (!c->keys && !(c->keys = esim_p256_cache_new(AUTH_CACHE_SLOTS)))
        return NULL;
    return esim_p256_cache_get(c->keys, sha, point, NULL);
}

uint64_t auth_key_tables(const esim_service *svc)
{
    esim_p256_cache_counts n = {0};
    if (svc->auth_cache && svc->auth_cache->keys)
        esim_p256_cache_counts_of(svc->auth_cache->keys, &n);
    return svc->m.identity_key_tables_before + n.builds;
}

/* The path for a signer whose chain verified recently and whose P-256 key
 * was kept (ver_note_key), whether or not its certificate still has its
 * parsed slot: the signature is checked with that key's table
 * (esim_p256_verify, ~0.4 of OpenSSL's instructions), nothing parsed. The same checks as
 * verify_direct; the identity is the certificate whose key verified. ESIM_ENOTFOUND: not known, or
 * not the shape verify_direct reads; the ordinary path decides. */
static esim_err verify_known(esim_service *svc, const esim_buf *der,
                             unsigned char (*shas)[SHA256_DIGEST_LENGTH], size_t n,
                             const unsigned char *body, size_t len, auth_identity *out,
                             esim_error *err)
{
    auth_signer_info si;
    if (!svc->auth_cache->ver || !auth_signer_parse(der->data, der->len, &si) ||
        si.key_type != EVP_PKEY_EC)
        return ESIM_ENOTFOUND;
    size_t li = 0;
    const auth_verified *v = known_signer(svc, &si, shas, n, esim_now_ms(), &li);
    const esim_p256_key *k = v ? kept_key(svc, shas[li], v->key.point) : NULL;
    if (!k)
        return ESIM_ENOTFOUND;
    int64_t signed_at = 0;
    esim_err rc = verify_with_key(svc, &si, body, len, NULL, k, &signed_at, err);
    if (rc != ESIM_OK)
        return rc;
    svc->m.identity_cache_keys++;
    svc->m.signatures_direct++; /* auth.c's own reader of the usual shape */
    esim_buf hex = {0};
    rc = esim_hex_encode(shas[li], SHA256_DIGEST_LENGTH, &hex);
    if (rc == ESIM_OK)
        memcpy(out->cert_sha256, hex.data, 65);
    esim_buf_free(&hex);
    out->not_before_ms = v->key.not_before_ms;
    out->signed_at_ms = signed_at;
    return rc;
}

/* |key| made ready for esim_p256_verify when it is a P-256 key, else
 * NULL (also out of memory: the issuer is then checked by OpenSSL). */
static esim_p256_key *issuer_p256(EVP_PKEY *key)
{
    unsigned char point[65];
    esim_p256_key *k = p256_point_of(key, point) ? malloc(sizeof *k) : NULL;
    if (k && !esim_p256_key_init(k, point)) {
        free(k);
        k = NULL;
    }
    return k;
}

/* Keeps chain[1], the issuer of a device identity whose chain OpenSSL
 * just verified (until: that chain's earliest notAfter), as an issuer the
 * next identities it signed are checked against directly (verify_fresh),
 * when nothing OpenSSL checked above the identity depends on the identity:
 * see auth_issuer. */
static void issuer_note(esim_service *svc, STACK_OF(X509) * chain, int64_t until)
{
    struct auth_cache *c = svc->auth_cache;
    int n = chain ? sk_X509_num(chain) : 0;
    if (!c || n < 2 || until <= 0)
        return;
    for (int i = 0; i < n; i++) {
        X509 *x = sk_X509_value(chain, i);
        if (X509_get_ext_by_NID(x, NID_name_constraints, -1) >= 0 ||
            X509_get_ext_by_NID(x, NID_policy_constraints, -1) >= 0 ||
            X509_get_ext_by_NID(x, NID_policy_mappings, -1) >= 0 ||
            X509_get_ext_by_NID(x, NID_inhibit_any_policy, -1) >= 0)
            return;
    }
    X509 *iss = sk_X509_value(chain, 1);
    uint32_t flags = X509_get_extension_flags(iss);
    EVP_PKEY *key = X509_get0_pubkey(iss);
    const unsigned char *name = NULL;
    size_t name_len = 0;
    int type = key ? EVP_PKEY_get_base_id(key) : 0;
    if (X509_check_ca(iss) != 1 || (flags & EXFLAG_INVALID) ||
        ((flags & EXFLAG_KUSAGE) && !(X509_get_key_usage(iss) & KU_KEY_CERT_SIGN)) ||
        (type != EVP_PKEY_EC && type != EVP_PKEY_RSA) ||
        X509_NAME_get0_der(X509_get_subject_name(iss), &name, &name_len) != 1) {
        ERR_clear_error();
        return;
    }
    /* OpenSSL looks for an issuer in the trust store first: no other
     * certificate there may have this name (as OpenSSL compares names). */
    bool anchor = false;
    STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(svc->device_ca);
    for (int i = 0; objs && i < sk_X509_OBJECT_num(objs); i++) {
        X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
        if (!x || X509_NAME_cmp(X509_get_subject_name(x), X509_get_subject_name(iss)) != 0)
            continue;
        if (X509_cmp(x, iss) != 0)
            return;
        anchor = true;
    }
    if (anchor != (n == 2))
        return;
    unsigned char *der = NULL;
    int der_len = i2d_X509(iss, &der);
    if (der_len <= 0) {
        ERR_clear_error();
        return;
    }
    unsigned char sha[SHA256_DIGEST_LENGTH];
    svc_sha256(svc, der, (size_t)der_len, sha);
    /* Its own entry again, else an empty one, else the oldest. */
    auth_issuer *e = NULL;
    for (size_t i = 0; i < AUTH_ISSUERS && !e; i++)
        if (c->issuers[i].subject && memcmp(c->issuers[i].sha, sha, sizeof sha) == 0)
            e = &c->issuers[i];
    for (size_t i = 0; i < AUTH_ISSUERS && !e; i++)
        if (!c->issuers[i].subject)
            e = &c->issuers[i];
    if (!e) {
        e = &c->issuers[0];
        for (size_t i = 1; i < AUTH_ISSUERS; i++)
            if (c->issuers[i].noted_at < e->noted_at)
                e = &c->issuers[i];
    }
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(iss);
    size_t ski_len = ski ? (size_t)ASN1_STRING_length(ski) : 0;
    unsigned char *subject = ski_len <= sizeof e->ski ? malloc(name_len) : NULL;
    if (!subject || !EVP_PKEY_up_ref(key)) {
        free(subject);
        OPENSSL_free(der);
        return;
    }
    /* The same certificate noted again keeps its key's table; another
     * one's is made once here. */
    esim_p256_key *p256 = e->p256;
    e->p256 = NULL;
    if (p256 && memcmp(e->sha, sha, sizeof sha) != 0) {
        free(p256);
        p256 = NULL;
    }
    if (!p256)
        p256 = issuer_p256(key);
    free(e->subject);
    OPENSSL_free(e->der);
    EVP_PKEY_free(e->key);
    memset(e, 0, sizeof *e);
    e->p256 = p256;
    memcpy(e->sha, sha, sizeof sha);
    e->der = der;
    e->der_len = (size_t)der_len;
    memcpy(subject, name, name_len);
    e->subject = subject;
    e->subject_len = name_len;
    e->key = key;
    e->ski_len = ski_len;
    if (ski_len)
        memcpy(e->ski, ASN1_STRING_get0_data(ski), ski_len);
    e->anchor = anchor;
    e->noted_at = esim_now_ms();
    e->until = until;
}

/* The one kept issuer of |leaf|, or NULL: none, or not one alone, or its
 * note too old. */
static const auth_issuer *issuer_of(esim_service *svc, const cert_der_view *leaf, int64_t now)
{
    const auth_issuer *found = NULL;
    for (size_t i = 0; i < AUTH_ISSUERS; i++) {
        const auth_issuer *e = &svc->auth_cache->issuers[i];
        if (!e->subject || e->subject_len != leaf->issuer_len ||
            memcmp(e->subject, leaf->issuer, leaf->issuer_len) != 0)
            continue;
        if (found || now - e->noted_at > AUTH_REVERIFY_MS || now >= e->until)
            return NULL;
        found = e;
    }
    return found;
}

/* Whether the identity |v| (read in place; certificate |li| of the |n|
 * whose digests are |shas|) links to its one kept issuer as OpenSSL's
 * chain check would have it: the others sent with it are that issuer
 * alone (or nothing when the issuer is in the trust store), its
 * authorityKeyIdentifier names the issuer's key, it is within its dates
 * and the issuer's signature over its TBS verifies (a P-256 issuer with
 * its kept table). True with *until, how long that holds (ms). */
static bool issuer_link(esim_service *svc, const cert_der_view *v,
                        unsigned char (*shas)[SHA256_DIGEST_LENGTH], size_t n, size_t li,
                        int64_t now, int64_t *until)
{
    if ((v->ski && v->ski_len > sizeof((auth_key *)0)->ski) ||
        (v->issuer_len == v->subject_len && memcmp(v->issuer, v->subject, v->issuer_len) == 0))
        return false;
    const auth_issuer *iss = issuer_of(svc, v, now);
    if (!iss)
        return false;
    /* What OpenSSL would build the chain from: the identity, and the
     * issuer itself when it is not in the trust store; nothing else. */
    for (size_t i = 0; i < n; i++)
        if (i != li && memcmp(shas[i], iss->sha, sizeof iss->sha) != 0)
            return false;
    if (!iss->anchor && n != 2)
        return false;
    if (v->aki && (v->aki_len != iss->ski_len || memcmp(v->aki, iss->ski, v->aki_len) != 0))
        return false;
    int64_t secs = now / 1000;
    if (!(v->not_before < secs && secs + 1 < v->not_after))
        return false;
    int type = EVP_PKEY_get_base_id(iss->key);
    if ((v->sig_alg == CERT_DER_ECDSA_SHA256) != (type == EVP_PKEY_EC) ||
        (v->sig_alg == CERT_DER_RSA_SHA256) != (type == EVP_PKEY_RSA))
        return false;
    bool linked;
    if (iss->p256) {
        unsigned char dgst[SHA256_DIGEST_LENGTH];
        svc_sha256(svc, v->tbs, v->tbs_len, dgst);
        linked = esim_p256_verify_der(iss->p256, dgst, sizeof dgst, v->sig, v->sig_len) == 1;
    } else {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        EVP_MD *sha256 = cached_md(svc, 2, NID_sha256);
        linked = ctx && sha256 && EVP_DigestVerifyInit(ctx, NULL, sha256, NULL, iss->key) == 1 &&
                 EVP_DigestVerify(ctx, v->sig, v->sig_len, v->tbs, v->tbs_len) == 1;
        EVP_MD_CTX_free(ctx);
        ERR_clear_error();
    }
    if (!linked)
        return false;
    *until = v->not_after * 1000 < iss->until ? v->not_after * 1000 : iss->until;
    return true;
}

/* A device's first message whose identity was issued by a kept issuer
 * (issuer_note): the certificate read in place (cert_der.c) instead of by
 * d2i_X509, its link to the issuer checked here (the issuer's name and key
 * identifier, its signature over the TBS, the identity's dates) instead of
 * by X509_verify_cert, which checked the rest of the chain for an earlier
 * identity of that issuer. Then the message's signature as verify_known
 * checks it, and the identity is kept as a verified one (ver_put, its key
 * noted) so its later messages go that way too.
 *
 * Only ever accepts: anything it does not take (another shape, another
 * issuer, a signature that does not verify, dates at the edge) returns
 * ESIM_ENOTFOUND and the ordinary path decides, with its own refusal. */
static esim_err verify_fresh(esim_service *svc, const esim_buf *der, const unsigned char **certs,
                             const size_t *cert_lens, unsigned char (*shas)[SHA256_DIGEST_LENGTH],
                             size_t n, const unsigned char *body, size_t len, auth_identity *out,
                             esim_error *err)
{
    auth_signer_info si;
    if (!svc->device_ca || !auth_signer_parse(der->data, der->len, &si) ||
        si.key_type != EVP_PKEY_EC)
        return ESIM_ENOTFOUND;
    /* The signer: the one certificate the SignerIdentifier names. */
    cert_der_view v = {0};
    size_t li = n;
    for (size_t i = 0; i < n; i++) {
        cert_der_view w;
        if (!cert_der_parse(certs[i], cert_lens[i], &w))
            continue;
        bool named =
            si.sid_tag == 0x80
                ? w.ski && w.ski_len == si.sid_len && memcmp(w.ski, si.sid, si.sid_len) == 0
                : si.sid_len == w.issuer_len + w.serial_len &&
                      memcmp(si.sid, w.issuer, w.issuer_len) == 0 &&
                      memcmp(si.sid + w.issuer_len, w.serial, w.serial_len) == 0;
        if (named) {
            if (li != n)
                return ESIM_ENOTFOUND;
            li = i;
            v = w;
        }
    }
    if (li == n)
        return ESIM_ENOTFOUND;
    int64_t now = esim_now_ms(), until = 0;
    if (!issuer_link(svc, &v, shas, n, li, now, &until))
        return ESIM_ENOTFOUND;
    /* The identity is verified: kept as a verified chain would be. */
    svc->m.identity_chain_checks++;
    svc->m.identity_cache_reads++;
    ver_put(svc, shas[li], now, until);
    struct auth_cache *c = svc->auth_cache;
    auth_verified *e = c->ver ? ver_slot(c->ver, c->ver_cap, shas[li]) : NULL;
    if (!e || !e->verified_at)
        return ESIM_ENOTFOUND;
    if (!e->key.point[0] && !ver_key_fill(svc, e, v.point, v.ski, v.ski_len, v.not_before * 1000,
                                          v.issuer, v.issuer_len, v.serial, v.serial_len))
        return ESIM_ENOTFOUND;
    return verify_known(svc, der, shas, n, body, len, out, err);
}

/* The digest of the certificate |der| (|len| bytes) when those are the
 * bytes of a kept issuer (a device sends its CA's certificate with every
 * message): copied from that issuer's entry, not made again. False: not
 * one of them. */
static bool issuer_digest(esim_service *svc, const unsigned char *der, size_t len,
                          unsigned char *sha)
{
    for (size_t i = 0; i < AUTH_ISSUERS; i++) {
        const auth_issuer *e = &svc->auth_cache->issuers[i];
        if (e->der && e->der_len == len && memcmp(e->der, der, len) == 0) {
            memcpy(sha, e->sha, sizeof e->sha);
            return true;
        }
    }
    return false;
}

/* auth_tls_verify's first sight of a client certificate whose issuer is
 * kept (issuer_note), as verify_fresh for a signed message: |der| (the
 * leaf |leaf| as libssl parsed it) read in place and linked to the issuer
 * by issuer_link, the other certificates the client sent being that issuer
 * alone, instead of X509_verify_cert (which verified the issuer's own
 * signature again for every device, ~1.3 M instructions). True with
 * *until; false: the ordinary path decides, with its own refusal. */
static bool tls_fresh(esim_service *svc, X509 *leaf, STACK_OF(X509) * untrusted,
                      const unsigned char *der, size_t der_len,
                      const unsigned char sha[SHA256_DIGEST_LENGTH], int64_t now, int64_t *until)
{
    cert_der_view v;
    if (!svc->auth_cache || !cert_der_parse(der, der_len, &v))
        return false;
    unsigned char shas[8][SHA256_DIGEST_LENGTH];
    size_t n = 0;
    memcpy(shas[n++], sha, SHA256_DIGEST_LENGTH);
    bool ok = true;
    for (int i = 0; ok && untrusted && i < sk_X509_num(untrusted); i++) {
        X509 *x = sk_X509_value(untrusted, i);
        if (x == leaf)
            continue;
        unsigned char *d = NULL;
        int len = n < 8 ? i2d_X509(x, &d) : -1;
        ok = len > 0;
        if (ok && !issuer_digest(svc, d, (size_t)len, shas[n]))
            svc_sha256(svc, d, (size_t)len, shas[n]);
        n += ok;
        OPENSSL_free(d);
    }
    ERR_clear_error();
    if (!ok || !issuer_link(svc, &v, shas, n, 0, now, until))
        return false;
    svc->m.identity_chain_checks++;
    svc->m.identity_cache_reads++;
    return true;
}

/* The fast path: certificates come from the cache, the signature is checked
 * against them, and a signer whose chain verified recently is not verified
 * again. ESIM_ENOTFOUND: this CMS needs the ordinary path.
 *
 * Two certificates of one signature may share a cache slot (the device's CA
 * sent along with its leaf, or a crafted pair): the second lookup then
 * replaces the first. So the stack holds a reference of its own to every
 * certificate, and the signer's slot is looked up again by digest once the
 * signature has verified, never remembered as a pointer across lookups. */
static esim_err verify_cached(esim_service *svc, const esim_buf *der, const unsigned char *body,
                              size_t len, auth_identity *out, esim_error *err)
{
    const unsigned char *certs[8];
    size_t cert_lens[8], n = 0;
    esim_buf stripped = {0};
    if (!auth_split_certificates(der->data, der->len, &stripped, certs, cert_lens, 8, &n)) {
        esim_buf_free(&stripped);
        return ESIM_ENOTFOUND;
    }
    if (!svc->auth_cache && !(svc->auth_cache = calloc(1, sizeof *svc->auth_cache))) {
        esim_buf_free(&stripped);
        return ESIM_ENOTFOUND;
    }
    unsigned char shas[8][SHA256_DIGEST_LENGTH];
    bool parsed = true;
    for (size_t i = 0; i < n; i++) {
        if (!issuer_digest(svc, certs[i], cert_lens[i], shas[i]))
            svc_sha256(svc, certs[i], cert_lens[i], shas[i]);
        parsed = parsed && cache_has(svc, shas[i]);
    }
    /* A signer whose chain verified recently goes by its kept key whether
     * or not its certificate is parsed: that key's check (esim_p256_verify)
     * is cheaper than OpenSSL's with the parsed certificate's key. */
    esim_err known = verify_known(svc, der, shas, n, body, len, out, err);
    if (known != ESIM_ENOTFOUND) {
        esim_buf_free(&stripped);
        return known;
    }
    if (!parsed) {
        known = verify_fresh(svc, der, certs, cert_lens, shas, n, body, len, out, err);
        if (known != ESIM_ENOTFOUND) {
            esim_buf_free(&stripped);
            return known;
        }
    }
    STACK_OF(X509) *stack = sk_X509_new_null();
    esim_err rc = stack ? ESIM_OK : ESIM_ENOMEM;
    for (size_t i = 0; rc == ESIM_OK && i < n; i++) {
        auth_entry *e = cache_get(svc, certs[i], cert_lens[i], shas[i]);
        if (!e || !X509_up_ref(e->x509)) {
            rc = ESIM_ENOTFOUND;
        } else if (!sk_X509_push(stack, e->x509)) {
            X509_free(e->x509);
            rc = ESIM_ENOTFOUND;
        }
    }
    /* The signature: directly when it has the usual shape, else by
     * CMS_verify over the same structure without its certificates. */
    size_t li = n;
    int64_t signed_at = 0;
    CMS_ContentInfo *cms = NULL;
    BIO *content = NULL;
    esim_err direct = ESIM_ENOTFOUND;
    if (rc == ESIM_OK) {
        direct = verify_direct(svc, der, body, len, stack, &li, &signed_at, err);
        if (direct != ESIM_ENOTFOUND)
            rc = direct;
        if (direct == ESIM_OK)
            svc->m.signatures_direct++;
    }
    if (rc == ESIM_OK && direct == ESIM_ENOTFOUND) {
        svc->m.signatures_cms++;
        const unsigned char *p = stripped.data;
        cms = d2i_CMS_ContentInfo(NULL, &p, (long)stripped.len);
        content = cms ? BIO_new_mem_buf(body ? (const void *)body : "", (int)len) : NULL;
        if (!cms || !content)
            rc = ESIM_ENOTFOUND;
        if (rc == ESIM_OK)
            rc = check_digests(cms, err);
        if (rc == ESIM_OK && CMS_verify(cms, stack, NULL, content, NULL,
                                        CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) != 1)
            rc = esim_fail(err, ESIM_EAUTH, "the Mdm-Signature does not verify over the body");
        if (rc == ESIM_OK) {
            STACK_OF(X509) *signers = CMS_get0_signers(cms);
            X509 *leaf = signers && sk_X509_num(signers) > 0 ? sk_X509_value(signers, 0) : NULL;
            for (size_t i = 0; leaf && i < n; i++)
                if (sk_X509_value(stack, (int)i) == leaf)
                    li = i;
            sk_X509_free(signers);
            signed_at = signing_time(cms);
        }
    }
    if (rc == ESIM_OK) {
        X509 *leaf = li < n ? sk_X509_value(stack, (int)li) : NULL;
        if (!leaf) {
            rc = esim_fail(err, ESIM_EAUTH, "the Mdm-Signature carries no signer certificate");
        } else {
            /* By digest, not by slot: the signer's slot may have been
             * taken over by a later certificate of this same signature. */
            int64_t now = esim_now_ms();
            int64_t until = 0;
            if (!ver_get(svc, shas[li], now, NULL)) {
                rc = verify_chain(svc, leaf, stack, &until, err);
                if (rc == ESIM_OK)
                    ver_put(svc, shas[li], now, until);
            }
            if (rc == ESIM_OK)
                ver_note_key(svc, shas[li], leaf);
        }
        if (rc == ESIM_OK) {
            esim_buf hex = {0};
            rc = esim_hex_encode(shas[li], sizeof shas[li], &hex);
            if (rc == ESIM_OK)
                memcpy(out->cert_sha256, hex.data, 65);
            esim_buf_free(&hex);
            out->not_before_ms = time_ms(X509_get0_notBefore(leaf));
            out->signed_at_ms = signed_at;
        }
    }
    ERR_clear_error();
    BIO_free(content);
    CMS_ContentInfo_free(cms);
    sk_X509_pop_free(stack, X509_free); /* our references; the cache keeps its own */
    esim_buf_free(&stripped);
    return rc;
}

static esim_err from_signature(esim_service *svc, struct evhttp_request *req,
                               const unsigned char *body, size_t len, auth_identity *out,
                               esim_error *err)
{
    const char *sig = evhttp_find_header(evhttp_request_get_input_headers(req), "Mdm-Signature");
    if (!sig || !*sig)
        return esim_fail(err, ESIM_EAUTH, "unsigned request: the Mdm-Signature header is missing");
    esim_buf der = {0};
    if (esim_base64_decode(sig, strlen(sig), &der, NULL) != ESIM_OK || der.len == 0) {
        esim_buf_free(&der);
        return esim_fail(err, ESIM_EAUTH, "the Mdm-Signature header is not base64");
    }
    esim_err fast = verify_cached(svc, &der, body, len, out, err);
    if (fast != ESIM_ENOTFOUND) {
        esim_buf_free(&der);
        return fast;
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
    if ((rc = check_digests(cms, err)) != ESIM_OK) {
        /* refused before any verification */
    } else if (!content || CMS_verify(cms, NULL, NULL, content, NULL,
                                      CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) != 1) {
        rc = esim_fail(err, ESIM_EAUTH, "the Mdm-Signature does not verify over the body");
    } else {
        STACK_OF(X509) *signers = CMS_get0_signers(cms);
        STACK_OF(X509) *certs = CMS_get1_certs(cms);
        X509 *leaf = signers && sk_X509_num(signers) > 0 ? sk_X509_value(signers, 0) : NULL;
        if (!leaf)
            rc = esim_fail(err, ESIM_EAUTH, "the Mdm-Signature carries no signer certificate");
        else
            rc = verify_chain(svc, leaf, certs, NULL, err);
        if (rc == ESIM_OK) {
            rc = esim_cert_sha256_hex(leaf, out->cert_sha256);
            out->not_before_ms = time_ms(X509_get0_notBefore(leaf));
            out->signed_at_ms = signing_time(cms);
        }
        sk_X509_free(signers);
        sk_X509_pop_free(certs, X509_free);
    }
    ERR_clear_error();
    BIO_free(content);
    CMS_ContentInfo_free(cms);
    return rc;
}

esim_err auth_tls_identity(esim_service *svc, struct evhttp_request *req, auth_identity *id,
                           esim_error *err)
{
    memset(id, 0, sizeof *id);
    if (svc->cfg.device_auth == ESIM_DEVICE_AUTH_NONE)
        return ESIM_OK;
    return from_tls(svc, req, id, err);
}

esim_err auth_device_request(esim_service *svc, struct evhttp_request *req,
                             const unsigned char *body, size_t len, auth_identity *id,
                             esim_error *err)
{
    memset(id, 0, sizeof *id);
    switch (svc->cfg.device_auth) {
    case ESIM_DEVICE_AUTH_NONE:
        return ESIM_OK;
    case ESIM_DEVICE_AUTH_MTLS:
        return from_tls(svc, req, id, err);
    case ESIM_DEVICE_AUTH_SIGNATURE:
        return from_signature(svc, req, body, len, id, err);
    case ESIM_DEVICE_AUTH_HEADER:
        return from_header(svc, req, id, err);
    }
    return esim_fail(err, ESIM_EAUTH, "unknown device auth mode");
}
