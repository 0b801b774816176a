/*
 * conn.c — every HTTP connection the service accepts, before evhttp sees a
 * request on it: admission (a cap on connections, a cap per peer address),
 * deadlines (the request header, then the body, must arrive in time however
 * slowly the bytes trickle), and the bytes of requests still arriving (no
 * request is authenticated before it is complete, so these are bytes anyone
 * can make the service hold: capped per peer and in all).
 *
 * libevent 2.1 has no hook between accept and the first request, so the
 * service makes every connection's bufferevent itself (evhttp's bevcb) and
 * finishes admitting it from an event activated there, which runs in the
 * same loop pass, before anything is read from the socket. A refusal is a
 * short HTTP answer written to the socket (plain HTTP; over TLS the refusal
 * is the connection closing) and the connection freed.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "core/internal.h"
#include "service/service_internal.h"

enum { PHASE_NEW, PHASE_HEADER, PHASE_BODY, PHASE_BUSY, PHASE_REFUSING };

/* ---- peers ---------------------------------------------------------------------- */

static size_t peer_index(const unsigned char addr[16])
{
    return (size_t)(esim_hash_bytes(addr, 16) % SVC_PEER_BUCKETS);
}

/* The peer's address as 16 bytes (IPv4 as IPv4-mapped IPv6), from the
 * address evhttp kept when it accepted the connection (no getpeername per
 * connection). False when the connection has no IP peer. */
static bool peer_address(struct evhttp_connection *evcon, unsigned char out[16])
{
    const struct sockaddr *sa = evcon ? evhttp_connection_get_addr(evcon) : NULL;
    if (!sa)
        return false;
    memset(out, 0, 16);
    if (sa->sa_family == AF_INET) {
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return true;
    }
    return false;
}

static svc_peer *peer_get(esim_service *svc, const unsigned char addr[16])
{
    size_t i = peer_index(addr);
    for (svc_peer *p = svc->peers[i]; p; p = p->next)
        if (memcmp(p->addr, addr, 16) == 0)
            return p;
    svc_peer *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    memcpy(p->addr, addr, 16);
    p->next = svc->peers[i];
    svc->peers[i] = p;
    return p;
}

static void peer_put(esim_service *svc, svc_peer *p)
{
    if (!p || p->conns || p->pending)
        return;
    for (svc_peer **pp = &svc->peers[peer_index(p->addr)]; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            free(p);
            return;
        }
}

/* ---- the connection table (by bufferevent) -------------------------------------- */

static size_t conn_index(const void *bev)
{
    uintptr_t v = (uintptr_t)bev;
    v ^= v >> 17;
    v *= 0x9e3779b97f4a7c15ull;
    return (size_t)(v >> 40) % SVC_CONN_BUCKETS;
}

svc_conn *conn_of(esim_service *svc, struct evhttp_connection *evcon)
{
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    if (!bev)
        return NULL;
    for (svc_conn *c = svc->conn_table[conn_index(bev)]; c; c = c->next)
        if (c->bev == bev)
            return c;
    return NULL;
}

uint64_t conn_origin(esim_service *svc, struct evhttp_request *req)
{
    svc_conn *c = conn_of(svc, evhttp_request_get_connection(req));
    if (!c || !c->peer)
        return 0;
    uint64_t h = esim_hash_bytes(c->peer->addr, 16);
    return h ? h : 1;
}

static void pending_release(esim_service *svc, svc_conn *c)
{
    svc->pending_bytes -= c->pending;
    if (c->peer)
        c->peer->pending -= c->pending;
    c->pending = 0;
}

static void conn_destroy(esim_service *svc, svc_conn *c)
{
    for (svc_conn **pp = &svc->conn_table[conn_index(c->bev)]; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    pending_release(svc, c);
    if (c->admitted) {
        svc->n_conns--;
        c->peer->conns--;
    }
    peer_put(svc, c->peer);
    if (c->input_cb)
        evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->input_cb);
    if (c->timer)
        event_free(c->timer);
    if (c->bev_ref)
        bufferevent_decref(c->bev);
    for (size_t i = 0; i < c->n_skip; i++)
        free(c->skip[i]);
    free(c->skip);
    free(c);
}

static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    svc_conn *c = arg;
    (void)evcon;
    esim_service *svc = c->svc;
    conn_destroy(svc, c);
    /* A slot is free: if accepting paused because descriptors ran out,
     * try again now. */
    if (svc->bound)
        evconnlistener_enable(evhttp_bound_socket_get_listener(svc->bound));
}

void conn_forget_all(esim_service *svc)
{
    for (size_t i = 0; i < SVC_CONN_BUCKETS; i++)
        while (svc->conn_table[i])
            conn_destroy(svc, svc->conn_table[i]);
}

/* ---- refusals and deadlines ------------------------------------------------------ */

static void schedule(svc_conn *c, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(c->timer, &tv);
}

/* Writes a short answer straight to the socket (plain HTTP only: nothing
 * else is pending on it in the phases this is used in). */
static void raw_answer(esim_service *svc, svc_conn *c, int code, const char *reason,
                       const char *text)
{
    if (svc->tls)
        return;
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd < 0)
        return;
    /* The admin API's error object (every text here is plain ASCII without
     * quotes): a device ignores the body, an API client can parse it. */
    char body[400], msg[700];
    int b =
        snprintf(body, sizeof body, "{\"error\":{\"status\":%d,\"message\":\"%s\"}}\n", code, text);
    if (b <= 0 || (size_t)b >= sizeof body)
        return;
    int n = snprintf(msg, sizeof msg,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Connection: close\r\n%sContent-Length: %d\r\n\r\n%s",
                     code, reason, code == 503 ? "Retry-After: 1\r\n" : "", b, body);
    if (n > 0 && (size_t)n < sizeof msg) {
        ssize_t w = send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
}

/* Answers |code| and closes: the answer now, the connection freed from its
 * timer (never from inside evhttp's own callbacks). */
static void close_with(esim_service *svc, svc_conn *c, int code, const char *reason,
                       const char *text)
{
    if (c->phase == PHASE_REFUSING)
        return;
    raw_answer(svc, c, code, reason, text);
    c->phase = PHASE_REFUSING;
    /* Its bytes go with it, in this loop pass: they must not push the
     * peer's other requests over the limit meanwhile. */
    pending_release(svc, c);
    event_del(c->timer);
    event_active(c->timer, EV_TIMEOUT, 0);
}

/* Refuses the connection (a limit): 503. */
static void refuse(esim_service *svc, svc_conn *c, int reason, const char *text)
{
    if (c->phase == PHASE_REFUSING)
        return;
    svc->m.conn_refused[reason]++;
    close_with(svc, c, 503, "Service Unavailable", text);
}

/* The Content-Length of the request header at the start of |buf| (up to
 * its blank line), or -1 when it has none or its start was read already. */
static long long declared_length(struct evbuffer *buf)
{
    char head[8192];
    ev_ssize_t n = evbuffer_copyout(buf, head, sizeof head - 1);
    if (n <= 0)
        return -1;
    head[n] = '\0';
    /* Only a whole header: it starts with a request line. */
    if (!strstr(head, " HTTP/1."))
        return -1;
    for (char *line = strchr(head, '\n'); line; line = strchr(line, '\n')) {
        line++;
        if (*line == '\r' || *line == '\n' || !*line)
            break; /* the blank line: the body follows */
        if (strncasecmp(line, "Content-Length:", 15) != 0)
            continue;
        char *end = NULL;
        long long v = strtoll(line + 15, &end, 10);
        return end && end != line + 15 && v >= 0 ? v : -1;
    }
    return -1;
}

static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);

/* The first thing that runs for a new connection (activated from the
 * bevcb): count it, or refuse it. */
static void admit(esim_service *svc, svc_conn *c)
{
    void (*readcb)(struct bufferevent *, void *) = NULL;
    void *cbarg = NULL;
    bufferevent_getcb(c->bev, &readcb, NULL, NULL, &cbarg);
    struct evhttp_connection *evcon = cbarg;
    if (!readcb || !evcon || evhttp_connection_get_bufferevent(evcon) != c->bev) {
        conn_destroy(svc, c); /* evhttp gave up on it already */
        return;
    }
    c->evcon = evcon;
    evhttp_connection_set_closecb(evcon, on_conn_close, c);
    bufferevent_decref(c->bev); /* from now on the close callback tells us */
    c->bev_ref = false;
    /* Without Nagle (TCP_NODELAY, set on the listening socket in
     * http_setup: an accepted socket inherits it). */
    unsigned char addr[16];
    if (!peer_address(evcon, addr))
        memset(addr, 0, sizeof addr);
    c->peer = peer_get(svc, addr);
    if (!c->peer) {
        evhttp_connection_free(evcon);
        return;
    }
    c->peer->pending += c->pending;
    if (svc->n_conns >= svc->cfg.max_connections) {
        refuse(svc, c, M_REFUSED_CAP,
               "the service is at its connection limit; try again in a moment");
        return;
    }
    if (c->peer->conns >= svc->cfg.max_connections_per_peer) {
        refuse(svc, c, M_REFUSED_PEER, "too many connections from this address");
        return;
    }
    c->admitted = true;
    svc->m.conns_admitted++;
    svc->n_conns++;
    c->peer->conns++;
    c->phase = PHASE_HEADER;
    schedule(c, svc->cfg.header_timeout_ms);
    if (c->pending)
        on_input(bufferevent_get_input(c->bev), &(struct evbuffer_cb_info){0, 0, 0}, c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    svc_conn *c = arg;
    esim_service *svc = c->svc;
    switch (c->phase) {
    case PHASE_NEW:
        admit(svc, c);
        return;
    case PHASE_HEADER:
        svc->m.conn_timeouts[0]++;
        /* Nothing of a request yet (an idle keep-alive connection): closed
         * without an answer, which a client would take for the answer to
         * the request it may be sending right now. */
        if (c->pending || c->lines || c->line_len)
            raw_answer(svc, c, 408, "Request Timeout", "the request header did not arrive in time");
        break;
    case PHASE_BODY:
        svc->m.conn_timeouts[1]++;
        raw_answer(svc, c, 408, "Request Timeout", "the request body did not arrive in time");
        break;
    case PHASE_REFUSING:
        break;
    default:
        return; /* a request being answered has no deadline */
    }
    evhttp_connection_free(c->evcon); /* the close callback frees |c| */
}

/* Bytes arrived: they count against the peer and the service until the
 * request is complete, and the end of the header moves the deadline on. */
static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    svc_conn *c = arg;
    esim_service *svc = c->svc;
    size_t added = info->n_added;
    if (c->phase == PHASE_REFUSING)
        return;
    if (added) {
        c->pending += added;
        svc->pending_bytes += added;
        if (c->peer)
            c->peer->pending += added;
        if (svc->pending_bytes > svc->m.pending_bytes_peak)
            svc->m.pending_bytes_peak = svc->pending_bytes;
    }
    if (c->phase == PHASE_NEW)
        return;
    if (c->peer && c->peer->pending > svc->cfg.max_pending_bytes_per_peer) {
        refuse(svc, c, M_REFUSED_PEER_BYTES,
               "too many request bytes in flight from this address; try again in a moment");
        return;
    }
    if (svc->pending_bytes > svc->cfg.max_pending_bytes) {
        refuse(svc, c, M_REFUSED_BYTES, "too many request bytes in flight; try again in a moment");
        return;
    }
    if (c->phase != PHASE_HEADER || !added || info->n_deleted)
        return;
    /* Find the blank line that ends the header among the new bytes. */
    size_t len = evbuffer_get_length(buf);
    struct evbuffer_ptr at;
    if (added > len || evbuffer_ptr_set(buf, &at, len - added, EVBUFFER_PTR_SET) != 0)
        return;
    struct evbuffer_iovec v[8];
    int n = evbuffer_peek(buf, (ev_ssize_t)added, &at, v, 8);
    size_t left = added;
    for (int i = 0; i < n && i < 8 && left; i++) {
        const unsigned char *p = v[i].iov_base;
        size_t m = v[i].iov_len < left ? v[i].iov_len : left;
        left -= m;
        for (size_t k = 0; k < m; k++) {
            unsigned char ch = p[k];
            if (ch == '\n') {
                if (c->line_len == 0 && c->lines > 0) {
                    c->phase = PHASE_BODY;
                    event_del(c->timer);
                    schedule(c, svc->cfg.body_timeout_ms);
                    /* A body announced over the limit is refused before
                     * it is read (plain HTTP; over TLS, and when the
                     * header came in pieces, once it is read: service.c). */
                    long long declared = svc->tls ? -1 : declared_length(buf);
                    if (declared > (long long)svc->cfg.max_body)
                        close_with(svc, c, 413, "Payload Too Large",
                                   "the body is over the size limit (max-body)");
                    return;
                }
                if (c->line_len)
                    c->lines++;
                c->line_len = 0;
            } else if (ch != '\r') {
                c->line_len++;
            }
        }
    }
}

/* ---- the hooks service.c calls ------------------------------------------------------ */

/* Over TLS the bufferevent makes a record of each piece of its output
 * (evbuffer_peek) and writes each record to the socket with a write(2) of
 * its own. evhttp's answer is its header and then its body: two records,
 * two writes and two segments, and the client reads twice the records
 * (issue 17; sim/smdp.c's reply does the same for the SM-DP+). The output
 * is added to before any of it is written (evhttp turns writing on once
 * the answer is whole), so this callback makes it one piece when it is
 * more than one and fits one record (16 KiB of plaintext): one record, one
 * write, the same bytes. Every answer goes through it, held or not. */
static void on_output(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)arg;
    if (info->n_added && evbuffer_get_length(buf) <= 16 * 1024 &&
        evbuffer_peek(buf, -1, NULL, NULL, 0) > 1)
        evbuffer_pullup(buf, -1);
}

struct bufferevent *conn_new_bufferevent(esim_service *svc)
{
    struct bufferevent *bev = NULL;
    if (svc->tls) {
        SSL *ssl = SSL_new(svc->tls);
        if (!ssl)
            return NULL;
        /* A write that must wait is retried from where on_output moved the
         * bytes (the same bytes, more of them after). */
        SSL_set_mode(ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        bev = bufferevent_openssl_socket_new(svc->base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                             BEV_OPT_CLOSE_ON_FREE);
        if (bev && !evbuffer_add_cb(bufferevent_get_output(bev), on_output, NULL)) {
            bufferevent_free(bev);
            return NULL;
        }
    } else {
        bev = bufferevent_socket_new(svc->base, -1, 0); /* evhttp closes the socket */
    }
    if (!bev)
        return NULL;
    svc_conn *c = calloc(1, sizeof *c);
    if (!c)
        return bev; /* out of memory: served without limits rather than not at all */
    c->svc = svc;
    c->bev = bev;
    c->timer = event_new(svc->base, -1, 0, on_timer, c);
    c->input_cb = c->timer ? evbuffer_add_cb(bufferevent_get_input(bev), on_input, c) : NULL;
    if (!c->input_cb) {
        if (c->timer)
            event_free(c->timer);
        free(c);
        return bev;
    }
    /* Our reference keeps the bufferevent readable until admit() ran,
     * even if evhttp dropped the connection meanwhile. */
    bufferevent_incref(bev);
    c->bev_ref = true;
    size_t i = conn_index(bev);
    c->next = svc->conn_table[i];
    svc->conn_table[i] = c;
    event_active(c->timer, EV_TIMEOUT, 0);
    return bev;
}

static void on_request_done(struct evhttp_request *req, void *arg)
{
    (void)req;
    svc_conn *c = arg;
    if (c->phase != PHASE_BUSY)
        return;
    /* Ready for the next request on this connection: its header deadline
     * starts now (this also bounds how long a keep-alive connection idles). */
    c->phase = PHASE_HEADER;
    c->line_len = 0;
    c->lines = 0;
    schedule(c, c->svc->cfg.header_timeout_ms);
}

bool conn_request_started(esim_service *svc, struct evhttp_request *req)
{
    svc_conn *c = conn_of(svc, evhttp_request_get_connection(req));
    if (!c)
        return true;
    if (c->phase == PHASE_REFUSING)
        return false;
    event_del(c->timer);
    c->phase = PHASE_BUSY;
    /* A connection's first request, or one on a kept connection. */
    svc->m.conn_requests[c->kept]++;
    c->kept = true;
    /* Its bytes are the handler's now; what is left in the input belongs to
     * the next request. */
    pending_release(svc, c);
    size_t left = evbuffer_get_length(bufferevent_get_input(c->bev));
    c->pending = left;
    svc->pending_bytes += left;
    if (c->peer)
        c->peer->pending += left;
    c->line_len = 0;
    c->lines = 0;
    evhttp_request_set_on_complete_cb(req, on_request_done, c);
    return true;
}

/* evhttp's listener calls this when accept() fails with anything but
 * EAGAIN/EINTR. Out of descriptors, the listening socket would stay
 * readable and the loop spin: accepting pauses until a connection closes
 * or the next housekeeping tick. */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    (void)arg;
    int e = EVUTIL_SOCKET_ERROR();
    if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM)
        evconnlistener_disable(lev);
}

esim_err conn_setup(esim_service *svc, esim_error *err)
{
    struct rlimit rl;
    unsigned long fds = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        fds = (unsigned long)rl.rlim_cur;
    else if (rl.rlim_cur == RLIM_INFINITY)
        fds = 1ul << 20;
    unsigned long usable = fds > SVC_FD_RESERVE + 16 ? fds - SVC_FD_RESERVE : 16;
    if (svc->cfg.max_connections == 0)
        svc->cfg.max_connections =
            usable < SVC_DEFAULT_MAX_CONNECTIONS ? (unsigned)usable : SVC_DEFAULT_MAX_CONNECTIONS;
    else if (svc->cfg.max_connections > usable)
        return esim_fail(err, ESIM_EINVAL,
                         "--max-connections %u needs %u descriptors, but the process may open "
                         "%lu (ulimit -n): lower it or raise the limit",
                         svc->cfg.max_connections, svc->cfg.max_connections + SVC_FD_RESERVE, fds);
    if (svc->cfg.max_connections_per_peer == 0)
        svc->cfg.max_connections_per_peer = 512;
    size_t one = svc->cfg.max_body + 64 * 1024; /* the largest request: body and header */
    if (svc->cfg.max_pending_bytes_per_peer == 0)
        svc->cfg.max_pending_bytes_per_peer = 8 * one > 8u << 20 ? 8 * one : 8u << 20;
    if (svc->cfg.max_pending_bytes == 0)
        svc->cfg.max_pending_bytes = 8 * svc->cfg.max_pending_bytes_per_peer;
    if (svc->cfg.max_pending_bytes_per_peer < one || svc->cfg.max_pending_bytes < one)
        return esim_fail(err, ESIM_EINVAL,
                         "--max-pending-bytes (%zu per peer, %zu in all) must hold one whole "
                         "request: at least --max-body plus 64 KiB of header (%zu)",
                         svc->cfg.max_pending_bytes_per_peer, svc->cfg.max_pending_bytes, one);
    if (svc->cfg.header_timeout_ms <= 0)
        svc->cfg.header_timeout_ms = 30000;
    if (svc->cfg.body_timeout_ms <= 0)
        svc->cfg.body_timeout_ms = 60000;
    return ESIM_OK;
}

void conn_listener_ready(esim_service *svc)
{
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(svc->bound), on_accept_error);
}

void conn_tick(esim_service *svc)
{
    if (svc->bound)
        evconnlistener_enable(evhttp_bound_socket_get_listener(svc->bound));
}

void conn_metrics(esim_service *svc, esim_buf *out)
{
    const svc_metrics *m = &svc->m;
    esim_buf_printf(
        out,
        "# HELP esim_mdm_connections Connections open (admitted).\n"
        "# TYPE esim_mdm_connections gauge\n"
        "esim_mdm_connections %zu\n"
        "# HELP esim_mdm_connections_admitted_total Connections admitted.\n"
        "# TYPE esim_mdm_connections_admitted_total counter\n"
        "esim_mdm_connections_admitted_total %llu\n"
        "# HELP esim_mdm_connection_requests_total Requests started: on a new connection "
        "(its first) or on a kept one.\n"
        "# TYPE esim_mdm_connection_requests_total counter\n"
        "esim_mdm_connection_requests_total{connection=\"new\"} %llu\n"
        "esim_mdm_connection_requests_total{connection=\"kept\"} %llu\n"
        "# HELP esim_mdm_connections_refused_total Connections refused, by the limit reached.\n"
        "# TYPE esim_mdm_connections_refused_total counter\n"
        "esim_mdm_connections_refused_total{reason=\"max_connections\"} %llu\n"
        "esim_mdm_connections_refused_total{reason=\"per_peer\"} %llu\n"
        "esim_mdm_connections_refused_total{reason=\"pending_bytes_per_peer\"} %llu\n"
        "esim_mdm_connections_refused_total{reason=\"pending_bytes\"} %llu\n"
        "# HELP esim_mdm_connection_timeouts_total Connections closed because a request "
        "was too slow to arrive.\n"
        "# TYPE esim_mdm_connection_timeouts_total counter\n"
        "esim_mdm_connection_timeouts_total{phase=\"header\"} %llu\n"
        "esim_mdm_connection_timeouts_total{phase=\"body\"} %llu\n"
        "# HELP esim_mdm_pending_request_bytes Bytes of requests still arriving (not yet "
        "authenticated).\n"
        "# TYPE esim_mdm_pending_request_bytes gauge\n"
        "esim_mdm_pending_request_bytes %zu\n"
        "# TYPE esim_mdm_pending_request_bytes_peak gauge\n"
        "esim_mdm_pending_request_bytes_peak %zu\n",
        svc->n_conns, (unsigned long long)m->conns_admitted,
        (unsigned long long)m->conn_requests[0], (unsigned long long)m->conn_requests[1],
        (unsigned long long)m->conn_refused[M_REFUSED_CAP],
        (unsigned long long)m->conn_refused[M_REFUSED_PEER],
        (unsigned long long)m->conn_refused[M_REFUSED_PEER_BYTES],
        (unsigned long long)m->conn_refused[M_REFUSED_BYTES],
        (unsigned long long)m->conn_timeouts[0], (unsigned long long)m->conn_timeouts[1],
        svc->pending_bytes, m->pending_bytes_peak);
}
