/*
 * http.c — the simulator's HTTP client: libcurl's multi interface driven by
 * a libevent loop (socket and timer callbacks), so thousands of devices share
 * one thread and curl's connection cache instead of a thread or socket each.
 */
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <curl/curl.h>
#include <event2/event.h>

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
    CURL *spare[SIM_HTTP_SPARE_HANDLES]; /* finished easy handles, reset for reuse */
    size_t n_spare;
    struct event *timer;
    xfer *xfers;
    sock_ctx *socks; /* every socket curl asked us to watch */
    size_t in_flight;
    bool closing; /* sim_http_free is cancelling: no new requests */
};

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

static void release_easy(sim_http *h, CURL *e)
{
    if (h->n_spare < SIM_HTTP_SPARE_HANDLES && !h->closing) {
        /* curl_easy_reset keeps a share attached: let go of it first. */
        curl_easy_setopt(e, CURLOPT_SHARE, NULL);
        curl_easy_reset(e);
        h->spare[h->n_spare++] = e;
    } else {
        curl_easy_cleanup(e);
    }
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
        release_easy(h, x->easy);
        curl_slist_free_all(x->headers);
        x->cb(x->arg, &r);
        esim_buf_free(&x->req_body);
        esim_buf_free(&x->resp);
        free(x);
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
    if (!h->multi || !h->timer) {
        sim_http_free(h);
        return esim_fail(err, ESIM_ENOMEM, "could not create the HTTP client");
    }
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    /* Many devices talk to few servers: keep a generous connection cache. */
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 256L);
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
        esim_buf_free(&x->req_body);
        esim_buf_free(&x->resp);
        free(x);
    }
    while (h->n_spare > 0)
        curl_easy_cleanup(h->spare[--h->n_spare]);
    if (h->multi)
        curl_multi_cleanup(h->multi);
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
    x->easy = h->n_spare > 0 ? h->spare[--h->n_spare] : curl_easy_init();
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
    if (req->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file);
    if (req->conn)
        curl_easy_setopt(e, CURLOPT_SHARE, req->conn->share);
    if (req->client_cert_file) {
        curl_easy_setopt(e, CURLOPT_SSLCERT, req->client_cert_file);
        curl_easy_setopt(e, CURLOPT_SSLKEY, req->client_key_file);
    }
    if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
        curl_easy_cleanup(x->easy);
        curl_slist_free_all(x->headers);
        esim_buf_free(&x->req_body);
        free(x);
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
    esim_buf_free(&x->req_body);
    free(x);
    return esim_fail(err, ESIM_ENOMEM, "out of memory");
}
