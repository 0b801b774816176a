/*
 * http.c — the simulator's HTTP/1.1 client: non-blocking sockets and OpenSSL
 * driven by a libevent loop, so thousands of devices share one thread.
 *
 * One SSL_CTX per trust anchor (the CA file parsed once for the whole
 * fleet); each connection is an SSL object on it with the device's own
 * session offered for resumption, its client certificate (the device's DER,
 * from memory) parsed only when a full handshake asks for it, and the
 * handshake counters. Every full handshake verifies the server's chain
 * (X509_verify_cert, its signature step the simulator's own so that the
 * CA's key checks through a precomputed table): no verdict is shared
 * between devices.
 * Connections are kept alive: a private one (sim_http_conn, one device's
 * connection) for its owner's next request; a request that names a device's
 * session but no private connection gets a connection of its own, closed
 * after its answer; only requests that name no session (the simulator's
 * own calls to the mocks, on no device's behalf) share a pool by
 * destination, and resume nothing. The response reader is http_parse.c.
 */
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "core/der.h"
#include "core/internal.h"
#include "core/p256.h"
#include "sim/cert_view.h"
#include "sim/http_parse.h"
#include "sim/sim_internal.h"

#define SIM_HTTP_MAX_RESPONSE (8u << 20)
#define POOL_MAX 256     /* idle shared connections kept */
#define CONNECT_MS 10000 /* to set up a connection (TCP and TLS) */
#define N_CTX 8          /* trust anchors (CA files) with their SSL_CTX */
#define N_RESOLVED 16    /* host names resolved */

typedef struct hconn hconn;

/* A client identity: its certificate's DER (owned), the CA certificate
 * sent after it (the caller's) and its P-256 private key d (a copy). */
typedef struct {
    unsigned char *der;
    size_t len;
    const unsigned char *chain;
    size_t chain_len;
    unsigned char key[32];
} identity;

typedef struct xfer {
    struct xfer *prev, *next; /* h->xfers */
    sim_http *h;
    hconn *c; /* the connection carrying it; NULL: none yet */
    sim_http_cb cb;
    void *arg;
    esim_buf req; /* the request's bytes */
    /* The request fails when its connection makes no progress for
     * timeout_ms: counted from when a connection starts on it (not from
     * sim_http_send: a slowed loop may hold it long before that), and
     * again from each of the connection's steps since (connected, a
     * handshake or write step, bytes read). The timer is armed at the
     * first step and, when it fires early, set again for what is left. */
    struct event *timer;
    long timeout_ms;
    int64_t progress_ms; /* the connection's last step for it (esim_mono_ms) */
    bool timer_armed;
    bool retried; /* sent again after a kept connection turned out closed */
    /* Where it goes. */
    char *key; /* scheme, host, port, CA and identity: what a connection must match */
    char host[256];
    uint16_t port;
    bool tls;
    char *ca_file;
    identity id;           /* TLS client authentication; id.der NULL: none */
    sim_tls_session *sess; /* the device's TLS session; NULL: none (pool) */
    sim_http_conn *owner;  /* the private connection it names (a reference); NULL: none */
} xfer;

enum { C_START, C_RESOLVING, C_CONNECTING, C_HANDSHAKE, C_SENDING, C_READING, C_IDLE };

struct hconn {
    hconn *prev, *next;   /* h->conns: every open connection */
    hconn *iprev, *inext; /* h->idle: the pool's idle ones, oldest first */
    bool in_pool;
    sim_http *h;
    sim_http_conn *owner; /* NULL: a pool connection, or one request's alone (doomed) */
    char *key;
    char host[256];
    uint16_t port;
    bool tls;
    sim_tls_session *sess;
    identity id; /* the client identity (its DER owned by the connection) */
    SSL_CTX *ctx;
    int fd;
    SSL *ssl;
    /* Readability is watched from the connection's start to its end (one
     * epoll registration); writability only while a write must wait. */
    struct event *ev;  /* EV_READ, persistent; made before the socket, to start it */
    struct event *wev; /* EV_WRITE, once */
    bool ev_added;
    struct evdns_getaddrinfo_request *dns;
    int state;
    bool reused;    /* has carried a request before */
    bool doomed;    /* closes after its request (its owner let go of it) */
    bool *dns_done; /* set when the resolver's callback ran */
    size_t out_off;
    xfer *x;
    sim_http_parser p;
};

/* Freed when its owner has let go (sim_http_conn_free) and no request
 * names it any more: a request sent again after its connection broke
 * still finds it. */
struct sim_http_conn {
    hconn *c;      /* its connection; NULL: none open */
    unsigned refs; /* the owner's (until freed) and each request's naming it */
    bool freed;    /* the owner let go: requests naming it get connections of their own */
};

/* The last session the server gave, as DER without the server's
 * certificate (session_keep); NULL: none yet. */
struct sim_tls_session {
    unsigned char *der;
    size_t len;
};

struct sim_http {
    struct event_base *base;
    struct evdns_base *dns;
    hconn *conns;
    hconn *idle_head, *idle_tail;
    size_t n_idle;
    xfer *xfers;
    size_t in_flight;
    bool closing; /* sim_http_free is cancelling: no new requests */
    sim_http_tls_stats tls;
    struct {
        char *ca; /* NULL: the system's trust store */
        SSL_CTX *ctx;
    } ctx[N_CTX];
    size_t n_ctx;
    struct {
        char host[256];
        struct sockaddr_storage ss;
        socklen_t len;
    } resolved[N_RESOLVED];
    size_t next_resolved;
    /* The CA certificates sent after the devices' own (the same for every
     * device), parsed once and recognised by their bytes. */
    struct {
        unsigned char *der;
        long len;
        X509 *x;
    } chain[4];
    size_t n_chain;
    /* The trust anchors' keys, for the chain signatures of every full
     * handshake (tls_chain_signatures): counted per key and, once a key has
     * signed often, verified through its precomputed table. Keys, never
     * verdicts: each handshake checks its chain's signatures itself. */
    sim_cert_cache *anchor_keys;
};

static int ssl_idx = -1, store_idx = -1;
static pthread_once_t idx_once = PTHREAD_ONCE_INIT;

static void make_index(void)
{
    ssl_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    store_idx = X509_STORE_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

void sim_tls_session_forget(sim_tls_session *t)
{
    if (!t)
        return;
    free(t->der);
    t->der = NULL;
    t->len = 0;
}

const unsigned char *sim_tls_session_der(const sim_tls_session *t, size_t *len)
{
    *len = t && t->der ? t->len : 0;
    return t ? t->der : NULL;
}

/* Keeps |sess| in |t| as the device keeps it: its DER (i2d_SSL_SESSION)
 * without the server's certificate (the session's [3] peer). A client
 * resuming a session does not look at the server's certificate again (the
 * session's secret authenticates the server), yet OpenSSL holds it parsed
 * in every session: about 3.5 KB for a P-256 certificate in OpenSSL 3.0,
 * beside the session's own 1.2 KB, for each device, which was most of the
 * simulator's 9.6 KB per device at 100,000 devices (issue 17). As DER
 * without it: about 350 bytes, read back by conn_tls_setup (about 5 us
 * with no certificate to parse). False, |t| forgotten, when it cannot be
 * encoded (the next connection is a full handshake). */
static bool session_keep(sim_tls_session *t, SSL_SESSION *sess)
{
    sim_tls_session_forget(t);
    unsigned char *der = NULL;
    int n = i2d_SSL_SESSION(sess, &der);
    const unsigned char *p = der, *end = der + (n > 0 ? n : 0), *body = NULL;
    size_t body_len = 0;
    esim_buf out = {0}, kept = {0};
    bool ok = n > 0 && sim_der_read(&p, end, 0x30, &body, &body_len) && p == end;
    for (const unsigned char *q = body; ok && q < body + body_len;) {
        const unsigned char *el = q, *content;
        size_t len;
        ok = (*el & 0x1f) != 0x1f && /* one-byte tags only, as the session's are */
             sim_der_read(&q, body + body_len, *el, &content, &len);
        if (ok && *el != 0xa3) /* [3] EXPLICIT Certificate: the server's */
            ok = esim_buf_append(&kept, el, (size_t)(q - el)) == ESIM_OK;
    }
    ok = ok && sim_der_put(&out, 0x30, kept.data, kept.len) == ESIM_OK;
    OPENSSL_free(der);
    esim_buf_free(&kept);
    if (ok && (t->der = malloc(out.len)) != NULL) { /* its exact size: one per device */
        memcpy(t->der, out.data, out.len);
        t->len = out.len;
    }
    esim_buf_free(&out);
    return t->der != NULL;
}

void sim_tls_session_free(sim_tls_session *t)
{
    sim_tls_session_forget(t);
    free(t);
}

sim_http_tls_stats sim_http_get_tls_stats(const sim_http *h)
{
    return h->tls;
}

uint16_t sim_bound_port(int fd)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return 0;
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 a6;
        memcpy(&a6, &ss, sizeof a6);
        return ntohs(a6.sin6_port);
    }
    struct sockaddr_in a4;
    memcpy(&a4, &ss, sizeof a4);
    return ntohs(a4.sin_port);
}

/* ---- TLS ------------------------------------------------------------------ */

static hconn *conn_of(const SSL *ssl)
{
    return ssl_idx < 0 ? NULL : SSL_get_ex_data(ssl, ssl_idx);
}

/* A session (ticket) from the server: the device keeps the newest; a
 * connection on no device's behalf keeps none. */
static int tls_new_session(SSL *ssl, SSL_SESSION *sess)
{
    hconn *c = conn_of(ssl);
    if (!c)
        return 0;
    c->h->tls.tickets++;
    if (c->sess)
        session_keep(c->sess, sess);
    return 0; /* libssl frees |sess|: the device keeps its DER */
}

/* The CA certificate |der| sent after a device's own: parsed once for the
 * client (the same for every device), recognised by its bytes. NULL when
 * it does not parse (or the cache is full and it cannot be kept: *fresh
 * then holds it, for the caller to free). */
static X509 *chain_cert(sim_http *h, const unsigned char *der, size_t len, X509 **fresh)
{
    *fresh = NULL;
    for (size_t k = 0; k < h->n_chain; k++)
        if ((size_t)h->chain[k].len == len && memcmp(h->chain[k].der, der, len) == 0)
            return h->chain[k].x;
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    unsigned char *copy =
        x && h->n_chain < sizeof h->chain / sizeof h->chain[0] ? OPENSSL_memdup(der, len) : NULL;
    if (copy) {
        h->chain[h->n_chain].der = copy;
        h->chain[h->n_chain].len = (long)len;
        h->chain[h->n_chain++].x = x;
        return x;
    }
    *fresh = x;
    return x;
}

/* The server asked for a client certificate (a full handshake): the
 * device's certificate from its DER, as the device holds it (in memory,
 * no file), the CA certificate after it and the device's own key, made
 * into an OpenSSL key here (the SSL holds it until the connection ends). */
static int tls_client_cert(SSL *ssl, void *arg)
{
    (void)arg;
    hconn *c = conn_of(ssl);
    if (!c || !c->id.der)
        return 1; /* none: the server decides */
    sim_http *h = c->h;
    const unsigned char *p = c->id.der;
    X509 *leaf = d2i_X509(NULL, &p, (long)c->id.len), *fresh = NULL;
    sim_cert_view v;
    EVP_PKEY *key = sim_cert_view_parse(c->id.der, c->id.len, &v)
                        ? sim_p256_key_pair(c->id.key, v.point)
                        : NULL;
    bool ok =
        leaf && key && SSL_use_certificate(ssl, leaf) == 1 && SSL_use_PrivateKey(ssl, key) == 1;
    EVP_PKEY_free(key);
    if (ok && c->id.chain) {
        X509 *ca = chain_cert(h, c->id.chain, c->id.chain_len, &fresh);
        ok = ca && SSL_add1_chain_cert(ssl, ca) == 1;
    }
    X509_free(fresh);
    X509_free(leaf);
    ERR_clear_error();
    if (!ok)
        return 1;
    h->tls.client_certs++;
    return 1;
}

/* The server's certificates in a full handshake: X509_verify_cert checks
 * the signatures up to the trust anchor, the name or address, the dates
 * and the purpose, in every full handshake of every device (a resumed one
 * has no certificate: the session's secret, which the device got from a
 * handshake that verified, authenticates the server). Counted. */
static int tls_chain_signatures(X509_STORE_CTX *xs);

static int tls_verify_server(X509_STORE_CTX *xs, void *arg)
{
    sim_http *h = arg;
    h->tls.chains_verified++;
    if (store_idx >= 0 && X509_STORE_CTX_set_ex_data(xs, store_idx, h) == 1)
        X509_STORE_CTX_set_verify(xs, tls_chain_signatures);
    return X509_verify_cert(xs);
}

/* A failure at |depth| on |x|, told to the verify callback (libssl's,
 * which ends the handshake): its answer. */
static int chain_fail(X509_STORE_CTX *xs, X509 *x, int depth, int code)
{
    X509_STORE_CTX_set_error_depth(xs, depth);
    X509_STORE_CTX_set_current_cert(xs, x);
    X509_STORE_CTX_set_error(xs, code);
    return X509_STORE_CTX_get_verify_cb(xs)(0, xs);
}

/* |x|'s signature by |issuer|'s key |pub|: 1 good, 0 not. An ECDSA-SHA256
 * signature by an EC key goes through the anchors' key cache
 * (sim_cert_cache_verify_by: the key's 2 KiB table, its precomputed one
 * once it has signed 256 times), over the TBSCertificate as received (the
 * parsed certificate keeps its encoding); any other, or a signature whose
 * algorithm differs from the one inside the TBSCertificate, as
 * X509_verify. */
static int chain_link_signed(sim_http *h, X509 *x, X509 *issuer, EVP_PKEY *pub)
{
    const ASN1_BIT_STRING *sig = NULL;
    const X509_ALGOR *alg = NULL;
    X509_get0_signature(&sig, &alg, x);
    unsigned char rs[64], *der = NULL;
    int der_len;
    if (!h || EVP_PKEY_get_base_id(pub) != EVP_PKEY_EC ||
        X509_get_signature_nid(x) != NID_ecdsa_with_SHA256 || !sig || !alg ||
        X509_ALGOR_cmp(alg, X509_get0_tbs_sigalg(x)) != 0 || (sig->flags & 0x07) != 0 ||
        !esim_p256_sig_from_der(sig->data, (size_t)sig->length, rs) ||
        (!h->anchor_keys && !(h->anchor_keys = sim_cert_cache_new(16))) ||
        (der_len = i2d_X509(x, &der)) <= 0)
        return X509_verify(x, pub) > 0;
    esim_der all = {der, der + der_len}, cert;
    const unsigned char *tbs = NULL;
    size_t tbs_len = 0;
    int ok = esim_der_enter(&all, 0x30, &cert) &&
             esim_der_take(&cert, 0x30, &tbs, &tbs_len, NULL, NULL) &&
             sim_cert_cache_verify_by(h->anchor_keys, issuer, tbs, tbs_len, rs, sizeof rs, NULL) ==
                 ESIM_OK;
    OPENSSL_free(der);
    return ok;
}

/* X509_verify_cert's last step for a device's chain (set on each
 * verification by tls_verify_server): each certificate's signature by the
 * next one's key, from the leaf up to the trust anchor (the anchor's own
 * self-signature is not checked, as OpenSSL does not), with the issuer's
 * key usage, and every certificate's dates, failures told to the verify
 * callback at the depth OpenSSL reports them; the same checks in the same
 * order as OpenSSL 3.0's own step, the signatures through the anchors' key
 * tables (chain_link_signed). Everything else X509_verify_cert checks
 * (building the chain to a trusted anchor, the extensions and purpose, the
 * host name or address) it does as before. */
static int tls_chain_signatures(X509_STORE_CTX *xs)
{
    sim_http *h = store_idx >= 0 ? X509_STORE_CTX_get_ex_data(xs, store_idx) : NULL;
    STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(xs);
    int n = sk_X509_num(chain) - 1;
    if (n < 0)
        return 0;
    X509 *xi = sk_X509_value(chain, n), *x = xi;
    X509_STORE_CTX_set_error_depth(xs, n);
    X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(xs);
    unsigned long flags = X509_VERIFY_PARAM_get_flags(param);
    /* A top that is not self-issued (and not a partial chain's trusted
     * end) is the first issuer; its own signature is not checked. */
    if (!(X509_get_extension_flags(xi) & EXFLAG_SI) && !(flags & X509_V_FLAG_PARTIAL_CHAIN)) {
        if (n > 0) {
            x = sk_X509_value(chain, --n);
            X509_STORE_CTX_set_error_depth(xs, n);
        } else if (!chain_fail(xs, xi, 0, X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE)) {
            return 0;
        }
    }
    time_t at = X509_VERIFY_PARAM_get_time(param),
           *when = flags & X509_V_FLAG_USE_CHECK_TIME ? &at : NULL;
    X509_STORE_CTX_verify_cb cb = X509_STORE_CTX_get_verify_cb(xs);
    while (n >= 0) {
        if (x != xi || ((flags & X509_V_FLAG_CHECK_SS_SIGNATURE) &&
                        (X509_get_extension_flags(xi) & EXFLAG_SS))) {
            int issuer_depth = n + (x == xi ? 0 : 1);
            int usage = x == xi && !(X509_get_extension_flags(xi) & EXFLAG_CA)
                            ? X509_V_OK
                            : X509_check_issued(xi, x);
            if (usage != X509_V_OK && !chain_fail(xs, xi, issuer_depth, usage))
                return 0;
            EVP_PKEY *pub = X509_get0_pubkey(xi);
            if (!pub) {
                if (!chain_fail(xs, xi, issuer_depth,
                                X509_V_ERR_UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY))
                    return 0;
            } else if (!chain_link_signed(h, x, xi, pub) &&
                       !chain_fail(xs, x, n, X509_V_ERR_CERT_SIGNATURE_FAILURE)) {
                return 0;
            }
        }
        if (!(flags & X509_V_FLAG_NO_CHECK_TIME)) {
            int c = X509_cmp_time(X509_get0_notBefore(x), when);
            if ((c == 0 && !chain_fail(xs, x, n, X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD)) ||
                (c > 0 && !chain_fail(xs, x, n, X509_V_ERR_CERT_NOT_YET_VALID)))
                return 0;
            c = X509_cmp_time(X509_get0_notAfter(x), when);
            if ((c == 0 && !chain_fail(xs, x, n, X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD)) ||
                (c < 0 && !chain_fail(xs, x, n, X509_V_ERR_CERT_HAS_EXPIRED)))
                return 0;
        }
        X509_STORE_CTX_set_current_cert(xs, x);
        X509_STORE_CTX_set_error_depth(xs, n);
        if (!cb(1, xs))
            return 0;
        if (--n >= 0) {
            xi = x;
            x = sk_X509_value(chain, n);
        }
    }
    return 1;
}

/* The context for trust anchor |ca| (NULL: the system's), made once. */
static SSL_CTX *ctx_for(sim_http *h, const char *ca, char *why, size_t why_len)
{
    for (size_t k = 0; k < h->n_ctx; k++)
        if ((!ca && !h->ctx[k].ca) || (ca && h->ctx[k].ca && strcmp(ca, h->ctx[k].ca) == 0))
            return h->ctx[k].ctx;
    if (h->n_ctx == N_CTX) { /* a fleet uses one or two: let the oldest go */
        free(h->ctx[0].ca);
        SSL_CTX_free(h->ctx[0].ctx);
        memmove(&h->ctx[0], &h->ctx[1], sizeof h->ctx[0] * (N_CTX - 1));
        h->n_ctx--;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    char *dup = ca ? strdup(ca) : NULL;
    if (!ctx || (ca && !dup)) {
        snprintf(why, why_len, "out of memory");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* An idle connection gives back its 16 KB read and write buffers: the
     * simulator holds hundreds of connections open at once (issue 17). */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    /* TLS 1.3 suites in an iPhone's order: AES-128-GCM with SHA-256 first
     * (OpenSSL's default puts AES-256 with SHA-384 first, whose key
     * schedule costs a little more in every handshake). */
    SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                  "TLS_CHACHA20_POLY1305_SHA256");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, tls_verify_server, h);
    if ((ca ? SSL_CTX_load_verify_locations(ctx, ca, NULL)
            : SSL_CTX_set_default_verify_paths(ctx)) != 1) {
        snprintf(why, why_len, "error setting certificate file: %.150s", ca ? ca : "(system)");
        goto fail;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, tls_new_session);
    SSL_CTX_set_cert_cb(ctx, tls_client_cert, NULL);
    h->ctx[h->n_ctx].ca = dup;
    h->ctx[h->n_ctx++].ctx = ctx;
    return ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    free(dup);
    return NULL;
}

/* ---- connections ----------------------------------------------------------- */

static void on_conn_event(evutil_socket_t fd, short what, void *arg);
static void xfer_start(sim_http *h, xfer *x);

/* Waits for |what|: reading is always watched once the socket is
 * connected; a write that must wait adds the one-shot write event. */
static void arm(hconn *c, short what)
{
    if (!c->ev_added && c->state != C_CONNECTING) {
        event_add(c->ev, NULL);
        c->ev_added = true;
    }
    if (what == EV_WRITE && !event_pending(c->wev, EV_WRITE, NULL))
        event_add(c->wev, NULL);
}

static void pool_remove(hconn *c)
{
    if (!c->in_pool)
        return;
    sim_http *h = c->h;
    if (c->iprev)
        c->iprev->inext = c->inext;
    else
        h->idle_head = c->inext;
    if (c->inext)
        c->inext->iprev = c->iprev;
    else
        h->idle_tail = c->iprev;
    c->iprev = c->inext = NULL;
    c->in_pool = false;
    h->n_idle--;
}

/* Closes |c| (its request, if any, must have been taken off it). */
static void conn_close(hconn *c)
{
    sim_http *h = c->h;
    pool_remove(c);
    if (c->owner && c->owner->c == c)
        c->owner->c = NULL;
    if (c->x)
        c->x->c = NULL;
    if (c->dns) {
        struct evdns_getaddrinfo_request *r = c->dns;
        c->dns = NULL;
        evdns_getaddrinfo_cancel(r); /* its callback sees EVUTIL_EAI_CANCEL */
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->ev)
        event_free(c->ev);
    if (c->wev)
        event_free(c->wev);
    if (c->ssl) {
        if (c->state == C_IDLE)
            SSL_shutdown(c->ssl); /* a close_notify, as a TLS stack sends */
        SSL_free(c->ssl);
    }
    if (c->fd >= 0)
        close(c->fd);
    sim_http_parser_free(&c->p);
    free(c->key);
    free(c->id.der);
    OPENSSL_cleanse(c->id.key, sizeof c->id.key);
    free(c);
}

static void pool_put(hconn *c)
{
    sim_http *h = c->h;
    c->in_pool = true;
    c->inext = NULL;
    c->iprev = h->idle_tail;
    if (h->idle_tail)
        h->idle_tail->inext = c;
    else
        h->idle_head = c;
    h->idle_tail = c;
    if (++h->n_idle > POOL_MAX)
        conn_close(h->idle_head);
}

static char *dup_or_null(const char *s, bool *ok)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *ok = false;
    return d;
}

static hconn *conn_new(sim_http *h, const xfer *x)
{
    hconn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    bool ok = true;
    c->h = h;
    c->fd = -1;
    c->key = dup_or_null(x->key, &ok);
    memcpy(c->host, x->host, sizeof c->host);
    c->port = x->port;
    c->tls = x->tls;
    c->sess = x->sess;
    c->id = x->id;
    c->id.der = NULL;
    if (x->id.der && (c->id.der = malloc(x->id.len)) != NULL)
        memcpy(c->id.der, x->id.der, x->id.len);
    else if (x->id.der)
        ok = false;
    c->ev = event_new(h->base, -1, EV_READ | EV_PERSIST, on_conn_event, c);
    if (!ok || !c->ev) {
        if (c->ev)
            event_free(c->ev);
        free(c->key);
        free(c->id.der);
        OPENSSL_cleanse(c->id.key, sizeof c->id.key);
        free(c);
        return NULL;
    }
    c->next = h->conns;
    if (h->conns)
        h->conns->prev = c;
    h->conns = c;
    return c;
}

/* ---- requests ------------------------------------------------------------- */

/* Lets go of one reference to |o|: the last frees it. */
static void owner_unref(sim_http_conn *o)
{
    if (o && --o->refs == 0)
        free(o);
}

static void xfer_free(xfer *x)
{
    owner_unref(x->owner);
    if (x->timer)
        event_free(x->timer);
    esim_buf_free(&x->req);
    free(x->key);
    free(x->ca_file);
    free(x->id.der);
    OPENSSL_cleanse(x->id.key, sizeof x->id.key);
    free(x);
}

/* Takes |x| off the client and runs its callback, once. */
static void xfer_finish(xfer *x, sim_http_response *r)
{
    sim_http *h = x->h;
    if (x->c) {
        x->c->x = NULL;
        x->c = NULL;
    }
    if (x->prev)
        x->prev->next = x->next;
    else
        h->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    h->in_flight--;
    x->cb(x->arg, r);
    xfer_free(x);
}

static void xfer_fail(xfer *x, esim_err err, const char *prefix, const char *detail)
{
    sim_http_response r = {.err = err};
    snprintf(r.errmsg, sizeof r.errmsg, "%s%s", prefix, detail);
    xfer_finish(x, &r);
}

/* |c| failed: close it and fail its request (or send the request again on
 * a new connection when a kept one had been closed before it answered). */
static void conn_fail(hconn *c, esim_err err, const char *prefix, const char *detail)
{
    xfer *x = c->x;
    bool again = x && c->reused && !x->retried && err == ESIM_EUNAVAIL &&
                 (c->state == C_SENDING || c->state == C_READING) &&
                 !sim_http_parser_started(&c->p);
    if (x) {
        x->c = NULL;
        c->x = NULL;
    }
    conn_close(c);
    if (!x)
        return;
    if (again && !x->h->closing) {
        x->retried = true;
        xfer_start(x->h, x);
        return;
    }
    xfer_fail(x, err, prefix, detail);
}

static const char *ssl_why(hconn *c, char *buf, size_t len)
{
    long v = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    unsigned long e = ERR_peek_last_error();
    if (v != X509_V_OK)
        snprintf(buf, len, "SSL certificate problem: %s", X509_verify_cert_error_string(v));
    else if (e)
        snprintf(buf, len, "%s", ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "error");
    else
        snprintf(buf, len, "%s", strerror(errno ? errno : ECONNRESET));
    ERR_clear_error();
    return buf;
}

/* The response is whole: the request's callback, the connection kept or
 * closed. Nothing touches |c| after the callback (which may free it). */
static ssize_t conn_read(hconn *c, char *buf, size_t len, short *want);

static void conn_response(hconn *c)
{
    xfer *x = c->x;
    sim_http_response r = {.err = ESIM_OK, .status = c->p.status};
    r.body = c->p.body; /* the body goes with the answer */
    memset(&c->p.body, 0, sizeof c->p.body);
    /* Kept: a device's private connection, or one on no device's behalf
     * (the pool); a device's other connections close after their answer. */
    bool keep = c->p.keep_alive && !c->doomed && !c->h->closing && (c->owner || !c->sess);
    /* Records read ahead past the answer are no longer the socket's to
     * signal: read them as the idle step would (a session ticket is taken;
     * anything else, bytes nobody asked for or the server's close, means
     * the connection is not kept), before a request can reuse it. */
    if (keep && c->ssl && SSL_has_pending(c->ssl)) {
        char buf[256];
        short want = 0;
        keep = conn_read(c, buf, sizeof buf, &want) == -1 && want == EV_READ;
    }
    sim_http_parser_free(&c->p);
    x->c = NULL;
    c->x = NULL;
    if (keep) {
        c->state = C_IDLE;
        c->reused = true;
        arm(c, EV_READ); /* a close (or a late session ticket) while idle */
        if (!c->owner)
            pool_put(c);
    } else {
        conn_close(c);
    }
    xfer_finish(x, &r);
    esim_buf_free(&r.body);
}

/* Reads what the socket has: TLS records or plain bytes. >0 bytes, 0 closed,
 * -1 nothing now (|want| set), -2 an error. */
static ssize_t conn_read(hconn *c, char *buf, size_t len, short *want)
{
    if (c->ssl) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, buf, (int)len);
        if (n > 0)
            return n;
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            *want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
            return -1;
        }
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0))
            return 0;
        return -2;
    }
    ssize_t n = recv(c->fd, buf, len, 0);
    if (n >= 0)
        return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        *want = EV_READ;
        return -1;
    }
    return -2;
}

static void conn_step(hconn *c);

static void conn_connect(hconn *c, const struct sockaddr *sa, socklen_t len)
{
    c->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        conn_fail(c, ESIM_EUNAVAIL, "socket: ", strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = C_CONNECTING;
    /* Not pending now (it only ran by event_active): it takes the socket. */
    event_assign(c->ev, c->h->base, c->fd, EV_READ | EV_PERSIST, on_conn_event, c);
    if (!(c->wev = event_new(c->h->base, c->fd, EV_WRITE, on_conn_event, c))) {
        conn_fail(c, ESIM_ENOMEM, "", "out of memory");
        return;
    }
    if (connect(c->fd, sa, len) != 0 && errno != EINPROGRESS) {
        char why[200];
        snprintf(why, sizeof why, "Failed to connect to %.100s port %u: %.60s", c->host, c->port,
                 strerror(errno));
        conn_fail(c, ESIM_EUNAVAIL, "", why);
        return;
    }
    arm(c, EV_WRITE);
}

static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    hconn *c = arg;
    if (c->dns_done) {
        *c->dns_done = true;
        c->dns_done = NULL;
    }
    if (result == EVUTIL_EAI_CANCEL) {
        if (res)
            evutil_freeaddrinfo(res);
        return; /* the connection is going */
    }
    c->dns = NULL;
    if (result != 0 || !res) {
        if (res)
            evutil_freeaddrinfo(res);
        xfer *x = c->x;
        if (x) {
            x->c = NULL;
            c->x = NULL;
        }
        conn_close(c);
        if (x) {
            sim_http_response r = {.err = ESIM_EUNAVAIL, .host_unknown = true};
            snprintf(r.errmsg, sizeof r.errmsg, "Could not resolve host: %.200s", x->host);
            xfer_finish(x, &r);
        }
        return;
    }
    sim_http *h = c->h;
    size_t k = h->next_resolved++ % N_RESOLVED;
    snprintf(h->resolved[k].host, sizeof h->resolved[k].host, "%s", c->host);
    memcpy(&h->resolved[k].ss, res->ai_addr, res->ai_addrlen);
    h->resolved[k].len = (socklen_t)res->ai_addrlen;
    struct sockaddr_storage ss;
    memcpy(&ss, res->ai_addr, res->ai_addrlen);
    socklen_t len = (socklen_t)res->ai_addrlen;
    evutil_freeaddrinfo(res);
    if (ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons(c->port);
    else
        ((struct sockaddr_in *)&ss)->sin_port = htons(c->port);
    conn_connect(c, (struct sockaddr *)&ss, len);
}

/* Where the connection goes: an address literal, localhost, a name
 * resolved before, or the resolver (libevent's, not blocking the loop). */
static void conn_begin(hconn *c)
{
    sim_http *h = c->h;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len = 0;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    const char *host = strcmp(c->host, "localhost") == 0 ? "127.0.0.1" : c->host;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        len = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        len = sizeof *a6;
    } else {
        for (size_t k = 0; k < N_RESOLVED && !len; k++)
            if (h->resolved[k].len && strcmp(h->resolved[k].host, host) == 0) {
                memcpy(&ss, &h->resolved[k].ss, h->resolved[k].len);
                len = h->resolved[k].len;
            }
    }
    if (len) {
        if (ss.ss_family == AF_INET6)
            a6->sin6_port = htons(c->port);
        else
            a4->sin_port = htons(c->port);
        conn_connect(c, (struct sockaddr *)&ss, len);
        return;
    }
    if (!h->dns && !(h->dns = evdns_base_new(h->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                                          EVDNS_BASE_DISABLE_WHEN_INACTIVE))) {
        conn_fail(c, ESIM_EUNAVAIL, "Could not resolve host (no resolver): ", c->host);
        return;
    }
    struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    c->state = C_RESOLVING;
    /* The callback may run before this returns (the hosts file), and may
     * close |c|: only |done| says whether it did. */
    bool done = false;
    c->dns_done = &done;
    struct evdns_getaddrinfo_request *r =
        evdns_getaddrinfo(h->dns, c->host, NULL, &hints, on_resolved, c);
    if (!done) {
        c->dns_done = NULL;
        c->dns = r;
    }
}

static bool conn_tls_setup(hconn *c)
{
    char why[200] = "";
    pthread_once(&idx_once, make_index);
    SSL_CTX *ctx = ssl_idx < 0 ? NULL : ctx_for(c->h, c->x->ca_file, why, sizeof why);
    if (!ctx) {
        conn_fail(c, ESIM_ECRYPTO, "", why[0] ? why : "TLS set-up failed");
        return false;
    }
    c->ctx = ctx;
    if (!(c->ssl = SSL_new(ctx)) || SSL_set_fd(c->ssl, c->fd) != 1 ||
        !SSL_set_ex_data(c->ssl, ssl_idx, c)) {
        conn_fail(c, ESIM_ENOMEM, "", "out of memory");
        return false;
    }
    /* Read ahead: a read takes what the socket has, not a record's 5-byte
     * header and then its body (two reads a record, and a server's flight
     * is several records): issue 17, about 100 reads per device in the
     * demo's simulators before. What is read and not yet used stays in
     * OpenSSL; conn_response looks at it before the connection idles. */
    SSL_set_read_ahead(c->ssl, 1);
    struct in6_addr ip;
    bool literal = inet_pton(AF_INET, c->host, &ip) == 1 || inet_pton(AF_INET6, c->host, &ip) == 1;
    if (literal) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), c->host);
    } else {
        SSL_set_tlsext_host_name(c->ssl, c->host);
        SSL_set1_host(c->ssl, c->host);
    }
    /* The device's own session, if it has one; none else (a full handshake). */
    if (c->sess && c->sess->der) {
        const unsigned char *p = c->sess->der;
        SSL_SESSION *s = d2i_SSL_SESSION(NULL, &p, (long)c->sess->len);
        if (s)
            SSL_set_session(c->ssl, s);
        else
            sim_tls_session_forget(c->sess); /* a full handshake, then */
        SSL_SESSION_free(s);                 /* the connection holds its own reference */
    }
    c->state = C_HANDSHAKE;
    return true;
}

/* Sets |x|'s timer to fire in |ms|. */
static void xfer_arm(xfer *x, long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(x->timer, &tv);
}

/* The connection carrying |x| took a step for it: its timeout counts
 * from now (the first step arms it). */
static void xfer_progress(xfer *x)
{
    x->progress_ms = esim_mono_ms();
    if (!x->timer_armed) {
        xfer_arm(x, x->timeout_ms);
        x->timer_armed = true;
    }
}

/* Runs the connection as far as it goes without waiting. */
static void conn_step(hconn *c)
{
    char why[200];
    if (c->x)
        xfer_progress(c->x);
    for (;;) {
        switch (c->state) {
        case C_START:
            conn_begin(c);
            return;
        case C_RESOLVING:
            return;
        case C_CONNECTING: {
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
                soerr = errno;
            if (soerr == EINPROGRESS)
                return;
            if (soerr) {
                snprintf(why, sizeof why, "Failed to connect to %.100s port %u: %.60s", c->host,
                         c->port, strerror(soerr));
                conn_fail(c, ESIM_EUNAVAIL, "", why);
                return;
            }
            if (c->tls) {
                if (!conn_tls_setup(c))
                    return;
            } else {
                c->state = C_SENDING;
            }
            break;
        }
        case C_HANDSHAKE: {
            ERR_clear_error();
            int r = SSL_connect(c->ssl);
            if (r == 1) {
                if (SSL_session_reused(c->ssl))
                    c->h->tls.resumed++;
                else
                    c->h->tls.full++;
                c->state = C_SENDING;
                break;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                arm(c, e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE);
                return;
            }
            /* A resumed session refused (the server forgot it) is not an
             * error; a failed handshake forgets the device's session. */
            ssl_why(c, why, sizeof why);
            if (c->sess)
                sim_tls_session_forget(c->sess);
            conn_fail(c, ESIM_ECRYPTO, "TLS handshake failed: ", why);
            return;
        }
        case C_SENDING: {
            xfer *x = c->x;
            size_t left = x->req.len - c->out_off;
            const unsigned char *p = x->req.data + c->out_off;
            if (c->ssl) {
                ERR_clear_error();
                int n = SSL_write(c->ssl, p, (int)left);
                if (n <= 0) {
                    int e = SSL_get_error(c->ssl, n);
                    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                        arm(c, e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE);
                        return;
                    }
                    conn_fail(c, ESIM_EUNAVAIL, "Send failure: ", ssl_why(c, why, sizeof why));
                    return;
                }
                c->out_off += (size_t)n;
            } else {
                ssize_t n = send(c->fd, p, left, MSG_NOSIGNAL);
                if (n < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                        arm(c, EV_WRITE);
                        return;
                    }
                    conn_fail(c, ESIM_EUNAVAIL, "Send failure: ", strerror(errno));
                    return;
                }
                c->out_off += (size_t)n;
            }
            if (c->out_off == x->req.len) {
                c->state = C_READING;
                sim_http_parser_init(&c->p, SIM_HTTP_MAX_RESPONSE);
                c->p.head_only = strncmp((const char *)x->req.data, "HEAD ", 5) == 0;
            }
            break;
        }
        case C_READING: {
            char buf[16384];
            short want = 0;
            ssize_t n = conn_read(c, buf, sizeof buf, &want);
            if (n == -1) {
                arm(c, want);
                return;
            }
            if (n == -2) {
                conn_fail(c, ESIM_EUNAVAIL, "Recv failure: ", ssl_why(c, why, sizeof why));
                return;
            }
            sim_http_parse_rc rc;
            size_t used = 0;
            if (n == 0 && !sim_http_parser_started(&c->p)) {
                /* Closed before a byte of the answer: a kept connection the
                 * server had let go of (sent again), or nothing at all. */
                conn_fail(c, ESIM_EUNAVAIL, "", "Empty reply from server");
                return;
            }
            if (n == 0) {
                rc = sim_http_parse_eof(&c->p);
                c->p.keep_alive = false;
            } else {
                rc = sim_http_parse(&c->p, buf, (size_t)n, &used);
                if (rc == SIM_HTTP_PARSE_DONE && used < (size_t)n)
                    c->p.keep_alive = false; /* bytes nobody asked for */
            }
            if (rc == SIM_HTTP_PARSE_DONE) {
                conn_response(c);
                return;
            }
            if (rc == SIM_HTTP_PARSE_ERROR) {
                bool big = c->p.too_big;
                snprintf(why, sizeof why, "%s", c->p.err ? c->p.err : "bad response");
                conn_fail(c, big ? ESIM_ETOOBIG : ESIM_EUNAVAIL, "", why);
                return;
            }
            break;
        }
        case C_IDLE: {
            char buf[256];
            short want = 0;
            ssize_t n = conn_read(c, buf, sizeof buf, &want);
            if (n == -1 && want == EV_READ)
                return;    /* a session ticket, nothing else */
            conn_close(c); /* closed by the server, or bytes nobody asked for */
            return;
        }
        default:
            return;
        }
    }
}

static void on_conn_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_step(arg);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    xfer *x = arg;
    int64_t idle = esim_mono_ms() - x->progress_ms;
    if (idle < x->timeout_ms) { /* a step since it was set */
        xfer_arm(x, x->timeout_ms - (long)idle);
        return;
    }
    if (x->c) {
        hconn *c = x->c;
        c->x = NULL;
        x->c = NULL;
        conn_close(c);
    }
    char ms[48];
    snprintf(ms, sizeof ms, "%ld milliseconds", x->timeout_ms);
    xfer_fail(x, ESIM_ETIMEOUT, "Operation timed out: no progress for ", ms);
}

/* A connection made with identity |a| may carry a request with |b|. */
static bool same_identity(const identity *a, const identity *b)
{
    return a->len == b->len && a->chain_len == b->chain_len &&
           (a->len == 0 || CRYPTO_memcmp(a->key, b->key, sizeof a->key) == 0) &&
           (a->len == 0 || memcmp(a->der, b->der, a->len) == 0) &&
           (a->chain_len == 0 || memcmp(a->chain, b->chain, a->chain_len) == 0);
}

/* Puts |x| on a connection: its owner's, an idle one from the pool (a
 * request on no device's behalf), or a new one; the work starts from the
 * event loop. A device's connections are never another's: a request that
 * names the device's session without a private connection (or one whose
 * owner let go) gets a new one. */
static void xfer_start(sim_http *h, xfer *x)
{
    hconn *c = NULL;
    sim_http_conn *owner = x->owner && !x->owner->freed ? x->owner : NULL;
    if (owner) {
        hconn *o = owner->c;
        if (o && o->state == C_IDLE && !o->x && strcmp(o->key, x->key) == 0 && o->sess == x->sess &&
            same_identity(&o->id, &x->id))
            c = o;
        else if (o && !o->x)
            conn_close(o); /* another destination: the phone's connection moves */
    } else if (!x->sess && !x->owner) {
        for (hconn *i = h->idle_tail; i && !c; i = i->iprev)
            if (i->sess == x->sess && strcmp(i->key, x->key) == 0 && same_identity(&i->id, &x->id))
                c = i;
        if (c)
            pool_remove(c);
    }
    if (!c) {
        if (!(c = conn_new(h, x))) {
            xfer_fail(x, ESIM_ENOMEM, "", "out of memory");
            return;
        }
        if (owner && !owner->c) {
            c->owner = owner;
            owner->c = c;
        } else if (x->owner || x->sess) {
            /* A second request of a busy private connection, or a device's
             * request without one: this connection is its alone. */
            c->doomed = true;
        }
        c->x = x;
        x->c = c;
        event_active(c->ev, EV_TIMEOUT, 1); /* C_START, from the loop */
    } else {
        c->x = x;
        x->c = c;
        c->state = C_SENDING;
        c->out_off = 0;
        event_active(c->ev, EV_WRITE, 1); /* sent from the loop, no waiting */
    }
}

static bool parse_url(xfer *x, const char *url, const char **path)
{
    const char *p;
    if (strncmp(url, "https://", 8) == 0) {
        x->tls = true;
        p = url + 8;
    } else if (strncmp(url, "http://", 7) == 0) {
        p = url + 7;
    } else {
        return false;
    }
    const char *end = p + strcspn(p, "/?#");
    const char *host = p, *host_end, *colon;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb)
            return false;
        host = p + 1;
        host_end = rb;
        colon = rb + 1 < end && rb[1] == ':' ? rb + 1 : NULL;
        if (!colon && rb + 1 != end)
            return false;
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        host_end = colon ? colon : end;
    }
    size_t hl = (size_t)(host_end - host);
    if (hl == 0 || hl >= sizeof x->host || memchr(host, '@', hl))
        return false;
    memcpy(x->host, host, hl);
    x->host[hl] = '\0';
    unsigned long port = x->tls ? 443 : 80;
    if (colon) {
        char *e = NULL;
        if (colon + 1 == end)
            return false;
        port = strtoul(colon + 1, &e, 10);
        if (e != end || port == 0 || port > 65535)
            return false;
    }
    x->port = (uint16_t)port;
    *path = *end == '/' || *end == '?' ? end : "/";
    return true;
}

/* Appends each string up to the NULL. */
static esim_err append_all(esim_buf *b, ...)
{
    va_list ap;
    va_start(ap, b);
    esim_err rc = ESIM_OK;
    for (const char *s; rc == ESIM_OK && (s = va_arg(ap, const char *)) != NULL;)
        rc = esim_buf_append(b, s, strlen(s));
    va_end(ap);
    return rc;
}

esim_err sim_http_send(sim_http *h, const sim_http_request *req, sim_http_cb cb, void *arg,
                       esim_error *err)
{
    if (!h || !req || !req->url || !req->method || !cb)
        return esim_fail(err, ESIM_EINVAL, "a request needs a method, a URL and a callback");
    if (h->closing)
        return esim_fail(err, ESIM_EUNAVAIL, "the HTTP client is shutting down");
    xfer *x = calloc(1, sizeof *x);
    if (!x)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    x->h = h;
    x->cb = cb;
    x->arg = arg;
    const char *path = "/";
    if (!parse_url(x, req->url, &path)) {
        free(x);
        return esim_fail(err, ESIM_EUNAVAIL, "could not start the request to %s", req->url);
    }
    if (req->tls && !*req->tls && !(*req->tls = calloc(1, sizeof **req->tls)))
        goto nomem;
    x->sess = x->tls && req->tls ? *req->tls : NULL;
    if ((x->owner = req->conn) != NULL)
        x->owner->refs++;
    bool ok = true;
    if (x->tls) {
        x->ca_file = dup_or_null(req->ca_file, &ok);
        /* The identity goes in only when a full handshake asks for it. */
        if (req->client_cert_der && req->client_cert_der_len && req->client_key_p256) {
            if ((x->id.der = malloc(req->client_cert_der_len)) != NULL)
                memcpy(x->id.der, req->client_cert_der, req->client_cert_der_len);
            else
                ok = false;
            x->id.len = req->client_cert_der_len;
            x->id.chain = req->client_chain_der_len ? req->client_chain_der : NULL;
            x->id.chain_len = x->id.chain ? req->client_chain_der_len : 0;
            memcpy(x->id.key, req->client_key_p256, sizeof x->id.key);
        }
    }
    /* Built by appending (a printf was ~3,600 instructions a call, three a
     * request). */
    char port[21], len_dec[21];
    esim_format_u64(port, (uint64_t)x->port);
    esim_buf key = {0};
    if (!ok || append_all(&key, x->tls ? "s|" : "p|", x->host, "|", port, "|",
                          x->ca_file ? x->ca_file : "", (const char *)NULL) != ESIM_OK)
        goto nomem;
    x->key = (char *)esim_buf_steal(&key, NULL);
    /* The request: the Host a client sends, the caller's headers, the body
     * with its length (no "Expect: 100-continue": devices send small bodies). */
    bool v6 = strchr(x->host, ':') != NULL, default_port = x->port == (x->tls ? 443 : 80);
    size_t plen = strcspn(path, "#");
    if (esim_buf_reserve(&x->req, 256 + plen + (req->body ? req->body_len : 0)) != ESIM_OK ||
        append_all(&x->req, req->method, " ", (const char *)NULL) != ESIM_OK ||
        esim_buf_append(&x->req, path, plen) != ESIM_OK ||
        append_all(&x->req, " HTTP/1.1\r\nHost: ", v6 ? "[" : "", x->host, v6 ? "]" : "",
                   default_port ? "" : ":", default_port ? "" : port, "\r\n",
                   (const char *)NULL) != ESIM_OK)
        goto nomem;
    for (size_t i = 0; i < req->n_headers; i++) {
        const char *hd = req->headers[i];
        if (!hd || strpbrk(hd, "\r\n"))
            continue;
        const char *colon = strchr(hd, ':');
        if (colon && colon[1 + strspn(colon + 1, " \t")] == '\0')
            continue; /* "Name:" with no value: curl's way to send none */
        if (esim_buf_append_str(&x->req, hd) != ESIM_OK ||
            esim_buf_append(&x->req, "\r\n", 2) != ESIM_OK)
            goto nomem;
    }
    bool has_body = strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0;
    esim_format_u64(len_dec, req->body ? req->body_len : 0);
    if ((has_body &&
         append_all(&x->req, "Content-Length: ", len_dec, "\r\n", (const char *)NULL) != ESIM_OK) ||
        esim_buf_append(&x->req, "\r\n", 2) != ESIM_OK ||
        (has_body && req->body && req->body_len &&
         esim_buf_append(&x->req, req->body, req->body_len) != ESIM_OK))
        goto nomem;
    x->timeout_ms = req->timeout_ms > 0 ? req->timeout_ms : 30000L;
    if (!(x->timer = evtimer_new(h->base, on_timeout, x)))
        goto nomem; /* armed by the connection's first step for it (xfer_progress) */
    x->next = h->xfers;
    if (h->xfers)
        h->xfers->prev = x;
    h->xfers = x;
    h->in_flight++;
    xfer_start(h, x);
    return ESIM_OK;
nomem:
    xfer_free(x);
    return esim_fail(err, ESIM_ENOMEM, "out of memory");
}

esim_err sim_http_conn_new(sim_http_conn **out, esim_error *err)
{
    sim_http_conn *c = calloc(1, sizeof *c);
    if (!c)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    c->refs = 1;
    *out = c;
    return ESIM_OK;
}

void sim_http_conn_free(sim_http_conn *c)
{
    if (!c || c->freed)
        return;
    c->freed = true;
    if (c->c) {
        hconn *hc = c->c;
        hc->owner = NULL;
        c->c = NULL;
        if (!hc->x)
            conn_close(hc);
        /* else: its request still runs; the connection closes after it */
        else
            hc->doomed = true;
    }
    owner_unref(c); /* requests naming it may still be in flight */
}

esim_err sim_http_new(struct event_base *base, sim_http **out, esim_error *err)
{
    if (!base || !out)
        return esim_fail(err, ESIM_EINVAL, "sim_http_new needs an event base");
    sim_http *h = calloc(1, sizeof *h);
    if (!h)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    h->base = base;
    /* A peer that closed its end must not kill the process on a write
     * (OpenSSL writes without MSG_NOSIGNAL): unless the program chose. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    *out = h;
    return ESIM_OK;
}

void sim_http_free(sim_http *h)
{
    if (!h)
        return;
    h->closing = true;
    while (h->xfers) {
        xfer *x = h->xfers;
        if (x->c) {
            hconn *c = x->c;
            c->x = NULL;
            x->c = NULL;
            conn_close(c);
        }
        /* Every request gets its one callback, so its owner can free what
         * it attached; new requests from inside it are refused. */
        xfer_fail(x, ESIM_EUNAVAIL, "", "cancelled: the client is shutting down");
    }
    while (h->conns) {
        if (h->conns->owner)
            h->conns->owner->c = NULL;
        conn_close(h->conns);
    }
    if (h->dns)
        evdns_base_free(h->dns, 1);
    for (size_t k = 0; k < h->n_ctx; k++) {
        free(h->ctx[k].ca);
        SSL_CTX_free(h->ctx[k].ctx);
    }
    for (size_t k = 0; k < h->n_chain; k++) {
        OPENSSL_free(h->chain[k].der);
        X509_free(h->chain[k].x);
    }
    sim_cert_cache_free(h->anchor_keys);
    free(h);
}

size_t sim_http_in_flight(const sim_http *h)
{
    return h->in_flight;
}
