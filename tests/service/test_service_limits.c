/*
 * test_service_limits.c — connection limits of the service over loopback,
 * with raw sockets (several loopback source addresses play several peers):
 * the cap on connections and per peer, the header and body deadlines
 * against slow senders, and the bytes of unfinished requests a peer and all
 * peers may make the service hold before anything is authenticated. Each
 * test asserts refusals and /metrics counters, never a duration.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/event.h>

#include "service/svc_harness.h"

HARNESS_ENV_GROUP(env)

static void start(test_service *ts, const char *name, esim_service_config *cfg)
{
    char dir[320];
    esim_service_config base;
    harness_config(&env, name, &base, dir);
    cfg->listen = base.listen;
    cfg->data_dir = base.data_dir;
    cfg->store = base.store;
    cfg->api_token = base.api_token;
    cfg->device_ca_path = base.device_ca_path;
    cfg->tick_ms = base.tick_ms;
    memset(ts, 0, sizeof *ts);
    harness_start(ts, cfg);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A TCP connection to the service from loopback address |from|. */
static int connect_from(test_service *ts, const char *from)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in src = {.sin_family = AF_INET};
    assert_int_equal(inet_pton(AF_INET, from, &src.sin_addr), 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&src, sizeof src), 0);
    struct sockaddr_in dst = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)esim_service_port(ts->svc))};
    inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&dst, sizeof dst), 0);
    return fd;
}

static void send_str(int fd, const char *s)
{
    ssize_t w = send(fd, s, strlen(s), MSG_NOSIGNAL);
    (void)w; /* the service may have closed it: the test looks at what comes back */
}

/* Whatever the service sends until it closes (or 10 s of silence, which
 * the caller's assertions then catch). */
static void read_all(int fd, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 10000) <= 0)
            break;
        ssize_t r = recv(fd, out + n, cap - 1 - n, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
        out[n] = '\0';
        if (n == cap - 1)
            break;
    }
}

/* True when the service closed |fd| (what it sent before goes to |out|). */
static bool closed_by_service(int fd, char *out, size_t cap)
{
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 0) <= 0)
        return false;
    read_all(fd, out, cap);
    return true;
}

/* One request on a connection of its own; the status code. */
static int request_status(test_service *ts, const char *from, const char *req)
{
    int fd = connect_from(ts, from);
    send_str(fd, req);
    char buf[2048];
    read_all(fd, buf, sizeof buf);
    close(fd);
    int code = 0;
    if (sscanf(buf, "HTTP/1.1 %d", &code) != 1)
        code = 0;
    return code;
}

/* A metric, read over a connection from an address no test limits; a
 * refusal (the service at its cap while it notices closed sockets) is
 * retried. */
static long long metric(test_service *ts, const char *series)
{
    for (int attempt = 0; attempt < 200; attempt++) {
        int fd = connect_from(ts, "127.0.0.99");
        send_str(fd, "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        static char buf[65536];
        read_all(fd, buf, sizeof buf);
        close(fd);
        if (strncmp(buf, "HTTP/1.1 200", 12) == 0) {
            size_t sl = strlen(series);
            for (char *line = strstr(buf, "\r\n\r\n"); line && *line;) {
                if (*line == '\r' || *line == '\n') {
                    line++;
                    continue;
                }
                if (strncmp(line, series, sl) == 0 && line[sl] == ' ')
                    return strtoll(line + sl + 1, NULL, 10);
                char *nl = strchr(line, '\n');
                line = nl ? nl + 1 : NULL;
            }
            fail_msg("no metric %s", series);
        }
        sleep_ms(20);
    }
    fail_msg("/metrics kept being refused");
    return -1;
}

/* Waits until the gauge |series| reads |want| (the service notices closed
 * sockets on its own loop). */
static void wait_metric(test_service *ts, const char *series, long long want)
{
    for (int i = 0; i < 500 && metric(ts, series) != want; i++)
        sleep_ms(20);
    assert_int_equal(metric(ts, series), want);
}

static const char healthz[] = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

/* |n| /healthz requests one after another on connection |fd|, each
 * answered 200 (one request at a time: its answer fits one read). */
static void healthz_kept(int fd, int n)
{
    for (int i = 0; i < n; i++) {
        send_str(fd, healthz);
        char part[512];
        ssize_t r = recv(fd, part, sizeof part - 1, 0);
        assert_true(r > 0);
        part[r] = '\0';
        assert_non_null(strstr(part, "HTTP/1.1 200"));
    }
}

static const char healthz_close[] = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/* ---- the connection caps ---------------------------------------------------------- */

static void test_connection_cap_and_per_peer_cap(void **state)
{
    (void)state;
    test_service ts;
    esim_service_config cfg;
    esim_service_config_init(&cfg);
    cfg.max_connections = 7; /* six held below, and room for the metrics reader */
    cfg.max_connections_per_peer = 3;
    start(&ts, "caps", &cfg);

    /* (The metrics reader's own connection counts while it reads.) */
    int held[6];
    for (int i = 0; i < 3; i++)
        held[i] = connect_from(&ts, "127.0.0.2");
    wait_metric(&ts, "esim_mdm_connections", 3 + 1);
    /* A fourth from the same address: a clear refusal. */
    int fd = connect_from(&ts, "127.0.0.2");
    char buf[2048];
    read_all(fd, buf, sizeof buf);
    close(fd);
    assert_non_null(strstr(buf, "HTTP/1.1 503"));
    assert_non_null(strstr(buf, "too many connections from this address"));
    assert_int_equal(metric(&ts, "esim_mdm_connections_refused_total{reason=\"per_peer\"}"), 1);

    for (int i = 3; i < 6; i++)
        held[i] = connect_from(&ts, "127.0.0.3");
    wait_metric(&ts, "esim_mdm_connections", 6 + 1);
    /* Six held and a seventh slot: of three more, at least two are refused
     * (one may take the slot the metrics reader just left). */
    int extra[3], refused = 0;
    for (int i = 0; i < 3; i++) {
        char from[32];
        snprintf(from, sizeof from, "127.0.0.%d", 4 + i);
        extra[i] = connect_from(&ts, from);
    }
    for (int i = 0; i < 3; i++) {
        struct pollfd p = {extra[i], POLLIN, 0};
        if (poll(&p, 1, 2000) > 0) {
            read_all(extra[i], buf, sizeof buf);
            if (strstr(buf, "HTTP/1.1 503") && strstr(buf, "Retry-After: 1") &&
                strstr(buf, "connection limit"))
                refused++;
        }
    }
    assert_true(refused >= 2);
    for (int i = 0; i < 3; i++)
        close(extra[i]);
    assert_true(metric(&ts, "esim_mdm_connections_refused_total{reason=\"max_connections\"}") >= 2);

    /* The connections that were let in are served normally. */
    send_str(held[0], healthz);
    ssize_t r = recv(held[0], buf, sizeof buf - 1, 0);
    assert_true(r > 0);
    buf[r] = '\0';
    assert_non_null(strstr(buf, "HTTP/1.1 200"));
    /* And when they go, the slots are free again. */
    for (int i = 0; i < 6; i++)
        close(held[i]);
    wait_metric(&ts, "esim_mdm_connections", 1); /* the metrics reader itself */
    assert_int_equal(request_status(&ts, "127.0.0.2", healthz_close), 200);
    assert_int_equal(metric(&ts, "esim_mdm_connections_refused_total{reason=\"per_peer\"}"), 1);
    harness_stop(&ts);
}

/* The service's end of a connection has Nagle off (an answer over TLS is
 * several records, and with Nagle the second waits for the client's
 * delayed ACK): set once on the listening socket, which every accepted
 * socket inherits. The service runs in this process, so its end is found
 * among this process's descriptors by the two addresses. */
static void test_accepted_connections_have_nagle_off(void **state)
{
    (void)state;
    test_service ts;
    esim_service_config cfg;
    esim_service_config_init(&cfg);
    start(&ts, "nodelay", &cfg);
    int fd = connect_from(&ts, "127.0.0.5");
    wait_metric(&ts, "esim_mdm_connections", 1 + 1); /* admitted (and the metrics reader) */
    struct sockaddr_in mine, theirs;
    socklen_t l1 = sizeof mine, l2 = sizeof theirs;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&mine, &l1), 0);
    assert_int_equal(getpeername(fd, (struct sockaddr *)&theirs, &l2), 0);
    int found = 0, nodelay = 0;
    for (int s = 3; s < 4096 && !found; s++) {
        struct sockaddr_in a, b;
        socklen_t la = sizeof a, lb = sizeof b;
        if (s == fd || getsockname(s, (struct sockaddr *)&a, &la) != 0 ||
            getpeername(s, (struct sockaddr *)&b, &lb) != 0 || a.sin_family != AF_INET ||
            b.sin_family != AF_INET)
            continue;
        if (a.sin_port != theirs.sin_port || a.sin_addr.s_addr != theirs.sin_addr.s_addr ||
            b.sin_port != mine.sin_port || b.sin_addr.s_addr != mine.sin_addr.s_addr)
            continue;
        found = 1;
        socklen_t ln = sizeof nodelay;
        assert_int_equal(getsockopt(s, IPPROTO_TCP, TCP_NODELAY, &nodelay, &ln), 0);
    }
    assert_true(found);
    assert_true(nodelay != 0);
    send_str(fd, healthz);
    char buf[2048];
    ssize_t r = recv(fd, buf, sizeof buf - 1, 0);
    assert_true(r > 0);
    buf[r] = '\0';
    assert_non_null(strstr(buf, "HTTP/1.1 200"));
    close(fd);
    harness_stop(&ts);
}

/* ---- deadlines ---------------------------------------------------------------------- */

static void test_slow_header_is_cut_off(void **state)
{
    (void)state;
    test_service ts;
    esim_service_config cfg;
    esim_service_config_init(&cfg);
    cfg.header_timeout_ms = 300;
    start(&ts, "slowheader", &cfg);
    int fd = connect_from(&ts, "127.0.0.2");
    send_str(fd, "PUT /mdm HTTP/1.1\r\n");
    /* A header line every 50 ms: each byte would reset an idle timeout,
     * never the header's deadline. At most 2000 lines (100 s). */
    char buf[2048] = "";
    bool closed = false;
    for (int i = 0; i < 2000 && !closed; i++) {
        send_str(fd, "X-Slow: 1\r\n");
        sleep_ms(50);
        closed = closed_by_service(fd, buf, sizeof buf);
    }
    close(fd);
    assert_true(closed);
    assert_non_null(strstr(buf, "HTTP/1.1 408"));
    assert_int_equal(metric(&ts, "esim_mdm_connection_timeouts_total{phase=\"header\"}"), 1);
    assert_int_equal(metric(&ts, "esim_mdm_connection_timeouts_total{phase=\"body\"}"), 0);
    /* A connection that never sends anything is closed (without an
     * answer: an idle keep-alive connection looks the same, and its client
     * could take a 408 for the answer to a request it is sending). */
    fd = connect_from(&ts, "127.0.0.2");
    read_all(fd, buf, sizeof buf);
    close(fd);
    assert_string_equal(buf, "");
    assert_int_equal(metric(&ts, "esim_mdm_connection_timeouts_total{phase=\"header\"}"), 2);
    harness_stop(&ts);
}

static void test_slow_body_is_cut_off(void **state)
{
    (void)state;
    test_service ts;
    esim_service_config cfg;
    esim_service_config_init(&cfg);
    cfg.body_timeout_ms = 300;
    start(&ts, "slowbody", &cfg);
    int fd = connect_from(&ts, "127.0.0.2");
    send_str(fd, "PUT /mdm HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
    char buf[2048] = "";
    bool closed = false;
    for (int i = 0; i < 2000 && !closed; i++) {
        send_str(fd, "0123456789");
        sleep_ms(50);
        closed = closed_by_service(fd, buf, sizeof buf);
    }
    close(fd);
    assert_true(closed);
    assert_non_null(strstr(buf, "HTTP/1.1 408"));
    assert_int_equal(metric(&ts, "esim_mdm_connection_timeouts_total{phase=\"body\"}"), 1);
    assert_int_equal(metric(&ts, "esim_mdm_connection_timeouts_total{phase=\"header\"}"), 0);
    /* Keep-alive: a request answered, the next one gets its own deadline. */
    fd = connect_from(&ts, "127.0.0.2");
    healthz_kept(fd, 3);
    close(fd);
    harness_stop(&ts);
}

/* ---- connections and the requests they carry ------------------------------------------ */

/* Every admitted connection is counted once, and each request as a new
 * connection's first or one on a kept connection (demo --json's
 * service_connections per phase reads the first). Each metric() read is a
 * connection of its own with one request, counted with the rest. */
static void test_connections_and_kept_requests_are_counted(void **state)
{
    (void)state;
    test_service ts;
    esim_service_config cfg;
    esim_service_config_init(&cfg);
    start(&ts, "keptcount", &cfg);
    assert_int_equal(metric(&ts, "esim_mdm_connections_admitted_total"), 1);
    assert_int_equal(metric(&ts, "esim_mdm_connection_requests_total{connection=\"new\"}"), 2);
    assert_int_equal(metric(&ts, "esim_mdm_connection_requests_total{connection=\"kept\"}"), 0);
    /* Three requests on one connection: one connection, one new, two kept. */
    int fd = connect_from(&ts, "127.0.0.2");
    healthz_kept(fd, 3);
    close(fd);
    /* Two connections of one request each. */
    assert_int_equal(request_status(&ts, "127.0.0.3", healthz_close), 200);
    assert_int_equal(request_status(&ts, "127.0.0.3", healthz_close), 200);
    /* Three reads before, three connections here, and this read's own;
     * then the five reads' requests and the three connections' first. */
    assert_int_equal(metric(&ts, "esim_mdm_connections_admitted_total"), 3 + 3 + 1);
    assert_int_equal(metric(&ts, "esim_mdm_connection_requests_total{connection=\"new\"}"), 5 + 3);
    assert_int_equal(metric(&ts, "esim_mdm_connection_requests_total{connection=\"kept\"}"), 2);
    harness_stop(&ts);
}

/* ---- bytes of unfinished requests ------------------------------------------------------ */

/* Starts |n| uploads of |declared| bytes from |from|, each sending |sent|
 * bytes of its body and no more; the sockets go to |fds|. */
static void start_uploads(test_service *ts, const char *from, int *fds, int n, size_t declared,
                          size_t sent)
{
    char *body = malloc(sent);
    memset(body, 'x', sent);
    for (int i = 0; i < n; i++) {
        fds[i] = connect_from(ts, from);
        char head[256];
        snprintf(head, sizeof head, "PUT /mdm HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n",
                 declared);
        send_str(fds[i], head);
        struct timeval tv = {5, 0};
        setsockopt(fds[i], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        for (size_t off = 0; off < sent;) {
            ssize_t w = send(fds[i], body + off, sent - off, MSG_NOSIGNAL);
            if (w <= 0)
                break; /* refused and closed */
            off += (size_t)w;
        }
    }
    free(body);
}

/* How many of the sockets got a 503 (and were closed). */
static int count_refused(int *fds, int n)
{
    int refused = 0;
    for (int i = 0; i < n; i++) {
        char buf[1024];
        struct pollfd p = {fds[i], POLLIN, 0};
        if (poll(&p, 1, 0) > 0) {
            read_all(fds[i], buf, sizeof buf);
            if (strstr(buf, "HTTP/1.1 503"))
                refused++;
        }
        close(fds[i]);
    }
    return refused;
}

static void test_unfinished_uploads_are_capped_per_peer_and_in_all(void **state)
{
    (void)state;
    test_service ts;
    esim_service_config cfg;
    esim_service_config_init(&cfg);
    cfg.max_body = 64 * 1024;
    cfg.max_pending_bytes_per_peer = 256 * 1024;
    cfg.max_pending_bytes = 512 * 1024;
    start(&ts, "pending", &cfg);

    /* One peer, 20 uploads of 60000 bytes that never finish: about four fit. */
    int fds[20];
    start_uploads(&ts, "127.0.0.2", fds, 20, 65000, 60000);
    for (int i = 0; i < 500 && metric(&ts, "esim_mdm_connections_refused_total{reason=\"pending_"
                                           "bytes_per_peer\"}") < 16;
         i++)
        sleep_ms(20);
    long long per_peer =
        metric(&ts, "esim_mdm_connections_refused_total{reason=\"pending_bytes_per_peer\"}");
    assert_true(per_peer >= 16);
    long long held = metric(&ts, "esim_mdm_pending_request_bytes");
    assert_true(held <= 256 * 1024 + 64 * 1024);
    /* Meanwhile another address is served. */
    assert_int_equal(request_status(&ts, "127.0.0.3", healthz_close), 200);
    assert_true(count_refused(fds, 20) >= 16);
    wait_metric(&ts, "esim_mdm_pending_request_bytes", 0);

    /* Many peers, each within its own limit, meet the limit for all. */
    int many[16];
    char from[32];
    for (int i = 0; i < 16; i++) {
        snprintf(from, sizeof from, "127.0.1.%d", i + 1);
        start_uploads(&ts, from, &many[i], 1, 65000, 60000);
    }
    for (int i = 0;
         i < 500 && metric(&ts, "esim_mdm_connections_refused_total{reason=\"pending_bytes\"}") < 8;
         i++)
        sleep_ms(20);
    assert_true(metric(&ts, "esim_mdm_connections_refused_total{reason=\"pending_bytes\"}") >= 8);
    assert_true(count_refused(many, 16) >= 8);
    /* Never more held than the limit plus one read's worth. */
    long long peak = metric(&ts, "esim_mdm_pending_request_bytes_peak");
    print_message("peak bytes of unfinished requests: %lld\n", peak);
    assert_true(peak <= 512 * 1024 + 64 * 1024);
    wait_metric(&ts, "esim_mdm_pending_request_bytes", 0);
    harness_stop(&ts);
}

static void test_limits_that_cannot_hold_one_request_are_refused(void **state)
{
    (void)state;
    esim_service_config cfg;
    char dir[320];
    harness_config(&env, "badlimits", &cfg, dir);
    cfg.max_body = 1024 * 1024;
    cfg.max_pending_bytes_per_peer = 512 * 1024;
    struct event_base *base = event_base_new();
    esim_service *svc = NULL;
    esim_error e = {{0}};
    assert_int_equal(esim_service_new(base, &cfg, &svc, &e), ESIM_EINVAL);
    assert_non_null(strstr(e.msg, "max-pending-bytes"));
    cfg.max_pending_bytes_per_peer = 0;
    cfg.max_connections = 100000000;
    assert_int_equal(esim_service_new(base, &cfg, &svc, &e), ESIM_EINVAL);
    assert_non_null(strstr(e.msg, "ulimit"));
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connection_cap_and_per_peer_cap),
        cmocka_unit_test(test_accepted_connections_have_nagle_off),
        cmocka_unit_test(test_slow_header_is_cut_off),
        cmocka_unit_test(test_slow_body_is_cut_off),
        cmocka_unit_test(test_connections_and_kept_requests_are_counted),
        cmocka_unit_test(test_unfinished_uploads_are_capped_per_peer_and_in_all),
        cmocka_unit_test(test_limits_that_cannot_hold_one_request_are_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
