/*
 * http.c — the simulator's HTTP client: libcurl's multi interface driven by
 * a libevent loop (socket and timer callbacks), so thousands of devices share
 * one thread and curl's connection cache instead of a thread or socket each.
 *
 * TLS is set up per connection in ssl_ctx_cb (curl's CURLOPT_SSL_CTX_FUNCTION):
 * resumption of the device's own session, the client certificate loaded
 * only when a full handshake asks for it (the identity key parsed once per
 * client, not per connection), and the handshake counters. The CA file is
 * read once (curl's CA cache) instead of for every connection.
 */
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <pthread.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "sim/sim_internal.h"

#define SIM_HTTP_MAX_RESPONSE (8u << 20)

typedef struct xfer {
    struct xfer *prev, *next;
    sim_http *h;
    CURL *easy;
    struct curl_slist *headers;
    esim_buf req_body;
    esim_buf resp;
    bool too_big;
    sim_http_cb cb;
    void *arg;
    sim_tls_session *tls; /* the device's TLS session; NULL: shared */
    int kind;             /* which spare handles it comes from and goes to */
    char *cert, *key;     /* the request's identity files; NULL: none */
    char errbuf[CURL_ERROR_SIZE];
} xfer;

typedef struct sock_ctx {
    struct sock_ctx *prev, *next;
    struct event *ev;
    short kind; /* what ev waits for */
} sock_ctx;

#define SIM_HTTP_SPARE_HANDLES 64

struct sim_http {
    struct event_base *base;
    CURLM *multi;
    /* Finished easy handles, reset for reuse: [0] those that use the shared
     * TLS session cache, [1] those of private connections (curl would
     * forget a handle's own session cache when it joins the shared one). */
    CURL *spare[2][SIM_HTTP_SPARE_HANDLES];
    size_t n_spare[2];
    struct event *timer;
    xfer *xfers;
    sock_ctx *socks; /* every socket curl asked us to watch */
    size_t in_flight;
    bool closing;      /* sim_http_free is cancelling: no new requests */
    CURLSH *tls_share; /* TLS sessions of the shared connection cache, by host */
    sim_http_tls_stats tls;
    char key_path[SIM_PATH_MAX]; /* the client identity key, parsed once */
    EVP_PKEY *key;
    /* The CA certificates identity files carry after the device's own (the
     * same for every device), parsed once and recognised by their bytes. */
    struct {
        unsigned char *der;
        long len;
        X509 *x;
    } chain[4];
    size_t n_chain;
};

struct sim_tls_session {
    SSL_SESSION *sess; /* the last one the server gave; NULL: none yet */
};

void sim_tls_session_forget(sim_tls_session *t)
{
    if (!t)
        return;
    SSL_SESSION_free(t->sess);
    t->sess = NULL;
}

void sim_tls_session_free(sim_tls_session *t)
{
    sim_tls_session_forget(t);
    free(t);
}

/* What a connection's TLS callbacks need, hung on its SSL_CTX (curl makes
 * one per connection) and freed with it: the transfer that opened the
 * connection may be long gone when a session ticket arrives. */
typedef struct {
    sim_http *h;
    sim_tls_session *t; /* NULL: curl's shared session cache */
    char *cert, *key;   /* client identity files; NULL: none */
} tls_conn;

static int ctx_idx = -1, ssl_idx = -1;
static pthread_once_t idx_once = PTHREAD_ONCE_INIT;

static void tls_conn_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                          void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    tls_conn *c = ptr;
    if (!c)
        return;
    free(c->cert);
    free(c->key);
    free(c);
}

static void make_indexes(void)
{
    ctx_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, tls_conn_free);
    ssl_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static tls_conn *conn_of(const SSL *ssl)
{
    return ctx_idx < 0 ? NULL : SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_idx);
}

/* Handshake start: offer the device's session. Handshake done: count it. */
static void tls_info(const SSL *cssl, int where, int ret)
{
    (void)ret;
    SSL *ssl = (SSL *)cssl;
    tls_conn *c = conn_of(ssl);
    if (!c)
        return;
    if ((where & SSL_CB_HANDSHAKE_START) && !SSL_get_ex_data(ssl, ssl_idx) && c->t && c->t->sess)
        SSL_set_session(ssl, c->t->sess);
    if ((where & SSL_CB_HANDSHAKE_DONE) && !SSL_get_ex_data(ssl, ssl_idx)) {
        SSL_set_ex_data(ssl, ssl_idx, c); /* counted once, whatever follows */
        if (SSL_session_reused(ssl))
            c->h->tls.resumed++;
        else
            c->h->tls.full++;
    }
}

/* A session (ticket) from the server: the device keeps the newest. */
static int tls_new_session(SSL *ssl, SSL_SESSION *sess)
{
    tls_conn *c = conn_of(ssl);
    if (!c || !c->t)
        return 0;
    SSL_SESSION_free(c->t->sess);
    c->t->sess = sess;
    return 1; /* the reference is ours */
}

/* The server asked for a client certificate (a full handshake): the
 * device's chain from its identity file and the key, parsed once. */
static int tls_client_cert(SSL *ssl, void *arg)
{
    (void)arg;
    tls_conn *c = conn_of(ssl);
    if (!c || !c->cert)
        return 1; /* none: the server decides */
    sim_http *h = c->h;
    if (!h->key || strcmp(h->key_path, c->key) != 0) {
        EVP_PKEY_free(h->key);
        h->key = NULL;
        h->key_path[0] = '\0';
        FILE *f = fopen(c->key, "r");
        if (f) {
            h->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
            fclose(f);
        }
        if (!h->key) {
            ERR_clear_error();
            return 1;
        }
        snprintf(h->key_path, sizeof h->key_path, "%s", c->key);
    }
    /* The identity file: the device's certificate, then its CA chain. */
    FILE *f = fopen(c->cert, "r");
    if (!f)
        return 1;
    X509 *leaf = NULL;
    bool ok = true;
    char *name = NULL, *header = NULL;
    unsigned char *der = NULL;
    long len = 0;
    while (ok && PEM_read(f, &name, &header, &der, &len) == 1) {
        if (strcmp(name, PEM_STRING_X509) == 0) {
            const unsigned char *p = der;
            if (!leaf) {
                ok = (leaf = d2i_X509(NULL, &p, len)) && SSL_use_certificate(ssl, leaf) == 1 &&
                     SSL_use_PrivateKey(ssl, h->key) == 1;
            } else {
                X509 *ca = NULL, *fresh = NULL;
                for (size_t k = 0; k < h->n_chain && !ca; k++)
                    if (h->chain[k].len == len && memcmp(h->chain[k].der, der, (size_t)len) == 0)
                        ca = h->chain[k].x;
                if (!ca && (fresh = d2i_X509(NULL, &p, len)) != NULL) {
                    ca = fresh;
                    if (h->n_chain < sizeof h->chain / sizeof h->chain[0]) {
                        h->chain[h->n_chain].der = der;
                        h->chain[h->n_chain].len = len;
                        h->chain[h->n_chain++].x = fresh;
                        der = NULL; /* the cache's now */
                        fresh = NULL;
                    }
                }
                ok = ca && SSL_add1_chain_cert(ssl, ca) == 1;
                X509_free(fresh);
            }
        }
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(der);
        name = header = NULL;
        der = NULL;
    }
    fclose(f);
    X509_free(leaf);
    ERR_clear_error();
    if (!ok || !leaf)
        return 1;
    h->tls.client_certs++;
    return 1;
}

/* curl's hook on each new connection's SSL_CTX, before its SSL is made. */
static CURLcode ssl_ctx_cb(CURL *curl, void *ssl_ctx, void *userptr)
{
    (void)curl;
    SSL_CTX *ctx = ssl_ctx;
    xfer *x = userptr;
    pthread_once(&idx_once, make_indexes);
    tls_conn *c = calloc(1, sizeof *c);
    if (!c || ctx_idx < 0 || ssl_idx < 0)
        goto nomem;
    c->h = x->h;
    c->t = x->tls;
    if (x->cert && (!(c->cert = strdup(x->cert)) || !(c->key = strdup(x->key))))
        goto nomem;
    if (!SSL_CTX_set_ex_data(ctx, ctx_idx, c))
        goto nomem;
    SSL_CTX_set_info_callback(ctx, tls_info);
    if (c->cert)
        SSL_CTX_set_cert_cb(ctx, tls_client_cert, NULL);
    if (c->t) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
        SSL_CTX_sess_set_new_cb(ctx, tls_new_session);
    }
    return CURLE_OK;
nomem:
    tls_conn_free(NULL, c, NULL, 0, 0, NULL);
    return CURLE_OUT_OF_MEMORY;
}

sim_http_tls_stats sim_http_get_tls_stats(const sim_http *h)
{
    return h->tls;
}

static void sock_unlink(sim_http *h, sock_ctx *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        h->socks = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->ev)
        event_free(c->ev);
    free(c);
}

struct sim_http_conn {
    CURLSH *share; /* shares only a connection cache: the private connection */
};

esim_err sim_http_conn_new(sim_http_conn **out, esim_error *err)
{
    sim_http_conn *c = calloc(1, sizeof *c);
    if (!c || !(c->share = curl_share_init())) {
        free(c);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    *out = c;
    return ESIM_OK;
}

void sim_http_conn_free(sim_http_conn *c)
{
    if (!c)
        return;
    curl_share_cleanup(c->share);
    free(c);
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

static void release_easy(sim_http *h, CURL *e, int kind)
{
    if (h->n_spare[kind] < SIM_HTTP_SPARE_HANDLES && !h->closing) {
        /* curl_easy_reset keeps a share attached: let go of it first. */
        curl_easy_setopt(e, CURLOPT_SHARE, NULL);
        curl_easy_reset(e);
        h->spare[kind][h->n_spare[kind]++] = e;
    } else {
        curl_easy_cleanup(e);
    }
}

static void xfer_free(xfer *x)
{
    esim_buf_free(&x->req_body);
    esim_buf_free(&x->resp);
    free(x->cert);
    free(x->key);
    free(x);
}

static void check_done(sim_http *h)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(h->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        CURLcode res = msg->data.result;
        curl_multi_remove_handle(h->multi, x->easy);
        if (x->prev)
            x->prev->next = x->next;
        else
            h->xfers = x->next;
        if (x->next)
            x->next->prev = x->prev;
        h->in_flight--;
        sim_http_response r = {0};
        r.body = x->resp;
        if (res == CURLE_OK && !x->too_big) {
            curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &r.status);
            r.err = ESIM_OK;
        } else {
            r.err = x->too_big                        ? ESIM_ETOOBIG
                    : res == CURLE_OPERATION_TIMEDOUT ? ESIM_ETIMEOUT
                    : (res == CURLE_SSL_CONNECT_ERROR || res == CURLE_PEER_FAILED_VERIFICATION)
                        ? ESIM_ECRYPTO
                        : ESIM_EUNAVAIL;
            r.host_unknown = res == CURLE_COULDNT_RESOLVE_HOST;
            snprintf(r.errmsg, sizeof r.errmsg, "%s",
                     x->too_big     ? "response too large"
                     : x->errbuf[0] ? x->errbuf
                                    : curl_easy_strerror(res));
        }
        /* The easy handle goes before the callback, so the callback may free
         * the private connection it used: reset (which lets go of the share)
         * and kept for the next request, as curl_easy_init costs more. */
        release_easy(h, x->easy, x->kind);
        curl_slist_free_all(x->headers);
        x->cb(x->arg, &r);
        xfer_free(x);
    }
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    sim_http *h = arg;
    int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(h->multi, fd, flags, &running);
    check_done(h);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sim_http *h = arg;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(h);
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    sim_http *h = userp;
    sock_ctx *c = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (c) {
            sock_unlink(h, c);
            curl_multi_assign(h->multi, s, NULL);
        }
        return 0;
    }
    short kind =
        EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c)
            return -1;
        c->next = h->socks;
        if (h->socks)
            h->socks->prev = c;
        h->socks = c;
        curl_multi_assign(h->multi, s, c);
    } else if (c->ev && c->kind == kind) {
        return 0; /* already waiting for that */
    }
    /* One event per socket, re-armed in place when curl wants other events. */
    if (!c->ev && !(c->ev = event_new(h->base, s, kind, on_socket_event, h)))
        return -1;
    if (c->kind) {
        event_del(c->ev);
        event_assign(c->ev, h->base, s, kind, on_socket_event, h);
    }
    c->kind = kind;
    event_add(c->ev, NULL);
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    sim_http *h = userp;
    if (timeout_ms < 0) {
        evtimer_del(h->timer);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(h->timer, &tv);
    return 0;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    xfer *x = userdata;
    size_t n = size * nmemb;
    if (x->resp.len + n > SIM_HTTP_MAX_RESPONSE) {
        x->too_big = true;
        return 0;
    }
    return esim_buf_append(&x->resp, ptr, n) == ESIM_OK ? n : 0;
}

esim_err sim_http_new(struct event_base *base, sim_http **out, esim_error *err)
{
    if (!base || !out)
        return esim_fail(err, ESIM_EINVAL, "sim_http_new needs an event base");
    sim_http *h = calloc(1, sizeof *h);
    if (!h)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    h->base = base;
    h->multi = curl_multi_init();
    h->timer = evtimer_new(base, on_timer, h);
    h->tls_share = curl_share_init();
    if (!h->multi || !h->timer || !h->tls_share) {
        sim_http_free(h);
        return esim_fail(err, ESIM_ENOMEM, "could not create the HTTP client");
    }
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    /* Many devices talk to few servers: keep a generous connection cache. */
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 256L);
    curl_share_setopt(h->tls_share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
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
        h->xfers = x->next;
        if (h->xfers)
            h->xfers->prev = NULL;
        h->in_flight--;
        curl_multi_remove_handle(h->multi, x->easy);
        curl_easy_cleanup(x->easy);
        curl_slist_free_all(x->headers);
        /* Every request gets its one callback, so its owner can free what
         * it attached; new requests from inside it are refused. */
        sim_http_response r = {.err = ESIM_EUNAVAIL};
        snprintf(r.errmsg, sizeof r.errmsg, "cancelled: the client is shutting down");
        x->cb(x->arg, &r);
        xfer_free(x);
    }
    for (int k = 0; k < 2; k++)
        while (h->n_spare[k] > 0)
            curl_easy_cleanup(h->spare[k][--h->n_spare[k]]);
    if (h->multi)
        curl_multi_cleanup(h->multi);
    if (h->tls_share)
        curl_share_cleanup(h->tls_share);
    EVP_PKEY_free(h->key);
    for (size_t k = 0; k < h->n_chain; k++) {
        OPENSSL_free(h->chain[k].der);
        X509_free(h->chain[k].x);
    }
    while (h->socks) { /* what curl closed without telling the socket callback */
        sock_ctx *c = h->socks;
        h->socks = c->next;
        if (c->ev)
            event_free(c->ev);
        free(c);
    }
    if (h->timer)
        event_free(h->timer);
    free(h);
}

size_t sim_http_in_flight(const sim_http *h)
{
    return h->in_flight;
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
    if (req->tls && !*req->tls && !(*req->tls = calloc(1, sizeof **req->tls)))
        goto nomem;
    x->tls = req->tls ? *req->tls : NULL;
    x->kind = req->conn || x->tls ? 1 : 0;
    x->easy = h->n_spare[x->kind] > 0 ? h->spare[x->kind][--h->n_spare[x->kind]] : curl_easy_init();
    if (!x->easy)
        goto nomem;
    for (size_t i = 0; i < req->n_headers; i++) {
        struct curl_slist *n = curl_slist_append(x->headers, req->headers[i]);
        if (!n)
            goto nomem;
        x->headers = n;
    }
    /* No "Expect: 100-continue" round trip: devices send small bodies. */
    struct curl_slist *n = curl_slist_append(x->headers, "Expect:");
    if (!n)
        goto nomem;
    x->headers = n;
    if (req->body && req->body_len &&
        esim_buf_append(&x->req_body, req->body, req->body_len) != ESIM_OK)
        goto nomem;
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    if (strcmp(req->method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->req_body.data ? (char *)x->req_body.data : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)x->req_body.len);
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : 30000L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (req->ca_file) {
        curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file);
        /* No CA directory beside the file: curl then keeps the parsed file
         * (its CA cache, 24 h) instead of reading it for each connection. */
        curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
    }
    if (req->conn)
        curl_easy_setopt(e, CURLOPT_SHARE, req->conn->share);
    else if (x->kind == 0)
        curl_easy_setopt(e, CURLOPT_SHARE, h->tls_share);
    if (strncmp(req->url, "https://", 8) == 0) {
        /* The identity goes in only when a full handshake asks for it. */
        if (req->client_cert_file &&
            (!(x->cert = strdup(req->client_cert_file)) ||
             !(x->key =
                   strdup(req->client_key_file ? req->client_key_file : req->client_cert_file))))
            goto nomem;
        if (x->tls)
            curl_easy_setopt(e, CURLOPT_SSL_SESSIONID_CACHE, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, ssl_ctx_cb);
        curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, x);
    }
    if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
        curl_easy_cleanup(x->easy);
        curl_slist_free_all(x->headers);
        xfer_free(x);
        return esim_fail(err, ESIM_EUNAVAIL, "could not start the request to %s", req->url);
    }
    x->next = h->xfers;
    if (h->xfers)
        h->xfers->prev = x;
    h->xfers = x;
    h->in_flight++;
    return ESIM_OK;
nomem:
    if (x->easy)
        curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->headers);
    xfer_free(x);
    return esim_fail(err, ESIM_ENOMEM, "out of memory");
}
