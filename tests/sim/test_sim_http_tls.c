/*
 * test_sim_http_tls.c — the simulator's HTTP client (sim/http.c) over TLS
 * against a scripted server (another thread, blocking OpenSSL): the client
 * reads ahead (a read takes what the socket has, several records), so
 * records that come after an answer in the same read are in OpenSSL, not
 * the socket, and no readiness will announce them. Such bytes after an
 * answer (here a record nobody asked for, sent in one segment with the
 * answer) must still keep the connection from being reused, as they did
 * when they waited in the socket: the next request goes on a new
 * connection and gets its own answer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "tests/sim/sim_test.h"

static struct {
    int lfd;
    uint16_t port;
    pthread_t th;
    SSL_CTX *ctx;
    volatile int accepts;
    volatile int requests;
} srv;

/* One whole request (header and Content-Length body); false at the end. */
static bool read_request(SSL *ssl)
{
    char buf[4096];
    size_t have = 0;
    for (;;) {
        int r = SSL_read(ssl, buf + have, (int)(sizeof buf - 1 - have));
        if (r <= 0)
            return false;
        have += (size_t)r;
        buf[have] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end) {
            const char *cl = strstr(buf, "Content-Length: ");
            size_t body = cl ? strtoul(cl + 16, NULL, 10) : 0;
            if (have >= (size_t)(end + 4 - buf) + body)
                return true;
        }
        if (have == sizeof buf - 1)
            return false;
    }
}

static void answer(SSL *ssl, int fd, int n)
{
    char a[128];
    snprintf(a, sizeof a, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nreply%d", n);
    int on = 1, off = 0;
    /* The first answer and a record after it leave in one segment. */
    if (n == 1)
        setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on);
    SSL_write(ssl, a, (int)strlen(a));
    if (n == 1) {
        SSL_write(ssl, "XYZZY nobody asked\r\n", 20);
        setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
    }
}

static void *serve(void *arg)
{
    (void)arg;
    while (srv.accepts < 4) {
        int fd = accept(srv.lfd, NULL, NULL);
        if (fd < 0)
            break; /* the listening socket was shut down */
        srv.accepts++;
        SSL *ssl = SSL_new(srv.ctx);
        if (ssl && SSL_set_fd(ssl, fd) == 1 && SSL_accept(ssl) == 1)
            while (read_request(ssl))
                answer(ssl, fd, ++srv.requests);
        SSL_free(ssl);
        close(fd);
    }
    return NULL;
}

static void test_bytes_read_ahead_after_an_answer(void **state)
{
    (void)state;
    char *dir = st_tempdir();
    assert_non_null(dir);
    sim_pki *pki = NULL;
    esim_error err = {{0}};
    assert_int_equal(sim_pki_open(dir, &pki, &err), ESIM_OK);
    char cert[512], key[512];
    snprintf(cert, sizeof cert, "%s/server.pem", dir);
    snprintf(key, sizeof key, "%s/server.key", dir);
    srv.ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(srv.ctx);
    assert_int_equal(SSL_CTX_use_certificate_chain_file(srv.ctx, cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(srv.ctx, key, SSL_FILETYPE_PEM), 1);
    srv.lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(srv.lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(srv.lfd, 4), 0);
    srv.port = sim_bound_port(srv.lfd);
    assert_int_equal(pthread_create(&srv.th, NULL, serve, NULL), 0);

    struct event_base *base = event_base_new();
    sim_http *h = NULL;
    assert_int_equal(sim_http_new(base, &h, NULL), ESIM_OK);
    char url[128];
    snprintf(url, sizeof url, "https://127.0.0.1:%u/x", srv.port);
    for (int i = 1; i <= 2; i++) {
        st_reply w = {0};
        sim_http_request req = {.method = "POST",
                                .url = url,
                                .body = "x=1",
                                .body_len = 3,
                                .ca_file = sim_pki_ca_file(pki)};
        assert_int_equal(sim_http_send(h, &req, st_reply_cb, &w, NULL), ESIM_OK);
        st_run_until(base, &w.done);
        assert_true(w.done);
        assert_int_equal(w.err, ESIM_OK);
        assert_int_equal(w.status, 200);
        char want[24];
        snprintf(want, sizeof want, "reply%d", i);
        assert_int_equal(w.body.len, strlen(want));
        assert_memory_equal(w.body.data, want, strlen(want));
        esim_buf_free(&w.body);
    }
    /* The first connection was not kept: the second answer came on another. */
    assert_int_equal(srv.accepts, 2);

    sim_http_free(h);
    event_base_free(base);
    shutdown(srv.lfd, SHUT_RDWR);
    pthread_join(srv.th, NULL);
    close(srv.lfd);
    SSL_CTX_free(srv.ctx);
    sim_pki_free(pki);
    st_rmrf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_read_ahead_after_an_answer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
