/*
 * test_sim_http.c — the simulator's HTTP/1.1 client (sim/http.c) against a
 * scripted server on raw sockets (another thread), for what the service and
 * the SM-DP+ may send: a Content-Length body, a chunked one, an interim
 * 100, a body ended by the close, Connection: close, a kept connection the
 * server closed before the next request (sent again on a new one), a
 * server that never answers (timeout), a slowed loop whose steps are late
 * but none stalls (no timeout: it counts from the connection's last step),
 * an IPv6 literal; and which
 * connections carry what: the pool (requests on no device's behalf) reuses
 * one, private connections are their own, also when freed in flight.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>

#include "tests/sim/sim_test.h"

#define MAX_CONNS 16

static struct {
    int lfd;
    uint16_t port;
    pthread_t th;
    volatile int stop;
    volatile int accepts; /* connections accepted */
    volatile int requests;
    bool v6;
    char head[1024]; /* the last request's line and headers, up to the blank line */
} srv;

/* The answer to |path|; *close_after: close the connection after it. */
static const char *answer(const char *path, bool *close_after, bool *silent)
{
    *close_after = *silent = false;
    if (strcmp(path, "/len") == 0)
        return "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    if (strcmp(path, "/chunked") == 0)
        return "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               "3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n";
    if (strcmp(path, "/interim") == 0)
        return "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\n"
               "Retry-After: 1\r\nContent-Length: 4\r\n\r\nslow";
    if (strcmp(path, "/close") == 0) {
        *close_after = true;
        return "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: "
               "2\r\n\r\nno";
    }
    if (strcmp(path, "/eof") == 0) {
        *close_after = true;
        return "HTTP/1.0 200 OK\r\n\r\nuntil the close";
    }
    if (strcmp(path, "/stale") == 0) {
        *close_after = true; /* says keep-alive, then closes anyway */
        return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    }
    if (strcmp(path, "/garbage") == 0)
        return "SMTP ready\r\n\r\n";
    *silent = true; /* "/silent": never answers */
    return "";
}

static void *serve(void *arg)
{
    (void)arg;
    struct pollfd pf[MAX_CONNS + 1];
    char buf[MAX_CONNS][4096];
    size_t have[MAX_CONNS];
    int n = 0;
    pf[0] = (struct pollfd){.fd = srv.lfd, .events = POLLIN};
    while (!srv.stop) {
        if (poll(pf, (nfds_t)n + 1, 50) <= 0)
            continue;
        if ((pf[0].revents & POLLIN) && n < MAX_CONNS) {
            int fd = accept(srv.lfd, NULL, NULL);
            if (fd >= 0) {
                pf[++n] = (struct pollfd){.fd = fd, .events = POLLIN};
                have[n - 1] = 0;
                srv.accepts++;
            }
        }
        for (int k = 1; k <= n; k++) {
            if (!(pf[k].revents & (POLLIN | POLLHUP)))
                continue;
            ssize_t r =
                recv(pf[k].fd, buf[k - 1] + have[k - 1], sizeof buf[0] - 1 - have[k - 1], 0);
            bool drop = r <= 0;
            if (r > 0) {
                have[k - 1] += (size_t)r;
                buf[k - 1][have[k - 1]] = '\0';
                char *end = strstr(buf[k - 1], "\r\n\r\n");
                const char *cl = strstr(buf[k - 1], "Content-Length: ");
                size_t body = cl ? strtoul(cl + 16, NULL, 10) : 0;
                if (end && have[k - 1] >= (size_t)(end + 4 - buf[k - 1]) + body) {
                    char path[64] = "";
                    sscanf(buf[k - 1], "%*s %63s", path);
                    size_t hl = (size_t)(end + 4 - buf[k - 1]);
                    hl = hl < sizeof srv.head ? hl : sizeof srv.head - 1;
                    memcpy(srv.head, buf[k - 1], hl);
                    srv.head[hl] = '\0';
                    srv.requests++;
                    have[k - 1] = 0;
                    bool close_after, silent;
                    const char *a = answer(path, &close_after, &silent);
                    if (!silent && send(pf[k].fd, a, strlen(a), MSG_NOSIGNAL) < 0)
                        close_after = true;
                    drop = close_after;
                }
            }
            if (drop) {
                close(pf[k].fd);
                pf[k] = pf[n];
                have[k - 1] = have[n - 1];
                memcpy(buf[k - 1], buf[n - 1], sizeof buf[0]);
                n--;
                k--;
            }
        }
    }
    for (int k = 1; k <= n; k++)
        close(pf[k].fd);
    return NULL;
}

static int start(bool v6)
{
    memset(&srv, 0, sizeof srv);
    srv.v6 = v6;
    srv.lfd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (srv.lfd < 0)
        return -1;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *a;
    }
    if (bind(srv.lfd, (struct sockaddr *)&ss, len) != 0 || listen(srv.lfd, 16) != 0) {
        close(srv.lfd);
        return -1;
    }
    srv.port = sim_bound_port(srv.lfd);
    return pthread_create(&srv.th, NULL, serve, NULL) == 0 ? 0 : -1;
}

static void stop(void)
{
    srv.stop = 1;
    pthread_join(srv.th, NULL);
    close(srv.lfd);
}

typedef struct {
    struct event_base *base;
    sim_http *h;
} client;

static int setup(void **state)
{
    client *c = calloc(1, sizeof *c);
    if (!c || !(c->base = event_base_new()) || sim_http_new(c->base, &c->h, NULL) != ESIM_OK ||
        start(false) != 0)
        return -1;
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    client *c = *state;
    sim_http_free(c->h);
    event_base_free(c->base);
    free(c);
    stop();
    return 0;
}

/* One request to |path| on |conn| (NULL: the pool), run to its answer. */
static st_reply get(client *c, const char *host, const char *path, sim_http_conn *conn,
                    long timeout_ms)
{
    char url[128];
    snprintf(url, sizeof url, "http://%s:%u%s", host, srv.port, path);
    st_reply w = {0};
    static const char *const hdrs[] = {"Content-Type: text/plain", "Expect:"};
    sim_http_request req = {.method = "POST",
                            .url = url,
                            .headers = hdrs,
                            .n_headers = 2,
                            .body = "x=1",
                            .body_len = 3,
                            .conn = conn,
                            .timeout_ms = timeout_ms};
    assert_int_equal(sim_http_send(c->h, &req, st_reply_cb, &w, NULL), ESIM_OK);
    st_run_until(c->base, &w.done);
    assert_true(w.done);
    return w;
}

static void expect(st_reply w, long status, const char *body)
{
    assert_int_equal(w.err, ESIM_OK);
    assert_int_equal(w.status, status);
    assert_int_equal(w.body.len, strlen(body));
    assert_memory_equal(w.body.len ? (const char *)w.body.data : "", body, strlen(body));
    esim_buf_free(&w.body);
}

static void test_framing(void **state)
{
    client *c = *state;
    expect(get(c, "127.0.0.1", "/len", NULL, 0), 200, "hello");
    char want[256];
    snprintf(want, sizeof want,
             "POST /len HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nContent-Type: text/plain\r\n"
             "Content-Length: 3\r\n\r\n",
             srv.port);
    assert_string_equal(srv.head, want);
    expect(get(c, "127.0.0.1", "/chunked", NULL, 0), 201, "abcdefg");
    expect(get(c, "127.0.0.1", "/interim", NULL, 0), 429, "slow");
    assert_int_equal(srv.accepts, 1); /* one kept connection for all three */
    expect(get(c, "localhost", "/close", NULL, 0), 503, "no");
    expect(get(c, "127.0.0.1", "/eof", NULL, 0), 200, "until the close");
    expect(get(c, "127.0.0.1", "/len", NULL, 0), 200, "hello");
    assert_int_equal(srv.accepts, 3); /* after each close a new one */
    assert_int_equal(srv.requests, 6);
    assert_int_equal(sim_http_in_flight(c->h), 0);
}

static void test_stale_connection(void **state)
{
    client *c = *state;
    expect(get(c, "127.0.0.1", "/stale", NULL, 0), 200, "ok");
    /* The server closed the kept connection: sent again on a new one. */
    expect(get(c, "127.0.0.1", "/len", NULL, 0), 200, "hello");
    assert_int_equal(srv.accepts, 2);
}

static void test_private_connections(void **state)
{
    client *c = *state;
    sim_http_conn *a = NULL, *b = NULL;
    assert_int_equal(sim_http_conn_new(&a, NULL), ESIM_OK);
    assert_int_equal(sim_http_conn_new(&b, NULL), ESIM_OK);
    expect(get(c, "127.0.0.1", "/len", a, 0), 200, "hello");
    expect(get(c, "127.0.0.1", "/len", b, 0), 200, "hello");
    expect(get(c, "127.0.0.1", "/chunked", a, 0), 201, "abcdefg");
    expect(get(c, "127.0.0.1", "/len", NULL, 0), 200, "hello");
    assert_int_equal(srv.accepts, 3); /* a's, b's and the pool's */
    sim_http_conn_free(a);
    sim_http_conn_free(b);
    a = NULL;
    assert_int_equal(sim_http_conn_new(&a, NULL), ESIM_OK);
    expect(get(c, "127.0.0.1", "/len", a, 0), 200, "hello");
    assert_int_equal(srv.accepts, 4); /* a new phone connection, not the pool's */
    sim_http_conn_free(a);
}

/* A private connection freed while its request is in flight: the request
 * still gets its answer, sent again on a new connection when the kept one
 * had been closed by the server (nothing of the freed connection is used;
 * ASan would see it). */
static void test_free_in_flight(void **state)
{
    client *c = *state;
    sim_http_conn *a = NULL;
    assert_int_equal(sim_http_conn_new(&a, NULL), ESIM_OK);
    expect(get(c, "127.0.0.1", "/stale", a, 0), 200, "ok"); /* the server closes it after */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/len", srv.port);
    st_reply w = {0};
    sim_http_request req = {.method = "GET", .url = url, .conn = a};
    assert_int_equal(sim_http_send(c->h, &req, st_reply_cb, &w, NULL), ESIM_OK);
    sim_http_conn_free(a);
    st_run_until(c->base, &w.done);
    expect(w, 200, "hello");
    assert_int_equal(srv.accepts, 2);
    /* The one it was sent again on closed after its answer: not pooled. */
    expect(get(c, "127.0.0.1", "/len", NULL, 0), 200, "hello");
    assert_int_equal(srv.accepts, 3);
    assert_int_equal(sim_http_in_flight(c->h), 0);
}

static void test_failures(void **state)
{
    client *c = *state;
    st_reply w = get(c, "127.0.0.1", "/silent", NULL, 300);
    assert_int_equal(w.err, ESIM_ETIMEOUT);
    esim_buf_free(&w.body);
    w = get(c, "127.0.0.1", "/garbage", NULL, 0);
    assert_int_equal(w.err, ESIM_EUNAVAIL);
    esim_buf_free(&w.body);
    /* A closed port: refused at once. */
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:1/x");
    st_reply r = {0};
    sim_http_request req = {.method = "GET", .url = url};
    assert_int_equal(sim_http_send(c->h, &req, st_reply_cb, &r, NULL), ESIM_OK);
    assert_false(r.done); /* the callback runs from the loop, never inside send */
    st_run_until(c->base, &r.done);
    assert_int_equal(r.err, ESIM_EUNAVAIL);
    esim_buf_free(&r.body);
    /* Not a URL this client takes. */
    sim_http_request bad = {.method = "GET", .url = "ftp://127.0.0.1/x"};
    assert_int_not_equal(sim_http_send(c->h, &bad, st_reply_cb, &r, NULL), ESIM_OK);
    /* Shutting down with a request in flight: its callback runs, cancelled. */
    st_reply p = {0};
    snprintf(url, sizeof url, "http://127.0.0.1:%u/silent", srv.port);
    sim_http_request pending = {.method = "GET", .url = url};
    assert_int_equal(sim_http_send(c->h, &pending, st_reply_cb, &p, NULL), ESIM_OK);
    event_base_loop(c->base, EVLOOP_NONBLOCK);
    sim_http_free(c->h);
    c->h = NULL;
    assert_true(p.done);
    assert_int_equal(p.err, ESIM_EUNAVAIL);
    esim_buf_free(&p.body);
}

static void hold_loop(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* A slowed simulator (callgrind): the loop is held longer than the
 * request's timeout before its connection starts, and again after each of
 * its steps, while the server answers at once. The timeout counts from the
 * connection's last step, so the request gets its answer; a server that
 * says nothing still times out (test_failures). */
static void test_timeout_counts_from_progress(void **state)
{
    client *c = *state;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/len", srv.port);
    sim_http_request req = {.method = "GET", .url = url, .timeout_ms = 300};
    /* Held before the first step: a queue of work ahead of it. */
    st_reply w = {0};
    assert_int_equal(sim_http_send(c->h, &req, st_reply_cb, &w, NULL), ESIM_OK);
    hold_loop(700);
    st_run_until(c->base, &w.done);
    expect(w, 200, "hello");
    /* Held after every turn of the loop: each step is late, none stalls. */
    st_reply v = {0};
    sim_http_conn *own = NULL;
    assert_int_equal(sim_http_conn_new(&own, NULL), ESIM_OK);
    req.conn = own; /* a connection of its own: connect, send, read all held */
    assert_int_equal(sim_http_send(c->h, &req, st_reply_cb, &v, NULL), ESIM_OK);
    for (int k = 0; k < 20 && !v.done; k++) {
        hold_loop(700);
        event_base_loop(c->base, EVLOOP_ONCE);
    }
    assert_true(v.done);
    expect(v, 200, "hello");
    sim_http_conn_free(own);
}

static void test_ipv6_literal(void **state)
{
    (void)state;
    stop();
    if (start(true) != 0) { /* no IPv6 loopback here */
        start(false);
        skip();
    }
    struct event_base *base = event_base_new();
    sim_http *h = NULL;
    assert_int_equal(sim_http_new(base, &h, NULL), ESIM_OK);
    client c = {base, h};
    expect(get(&c, "[::1]", "/len", NULL, 0), 200, "hello");
    /* What the client wrote: the request line, Host with the bracketed
     * literal and the port, the caller's headers (not the empty one), the
     * body's length. */
    char want[256];
    snprintf(want, sizeof want,
             "POST /len HTTP/1.1\r\nHost: [::1]:%u\r\nContent-Type: text/plain\r\n"
             "Content-Length: 3\r\n\r\n",
             srv.port);
    assert_string_equal(srv.head, want);
    sim_http_free(h);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_framing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_private_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_counts_from_progress, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6_literal, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
