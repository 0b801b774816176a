/*
 * test_cli_http.c — cli/http_client.c against a canned server: a 503 with
 * Retry-After (nothing of the request kept) is sent again, one without it
 * is returned at once, and after CHTTP_TRIES_503 attempts the last 503 is
 * the answer.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "cli/http_client.h"

/* A server answering each connection with the next of |answers| (then the
 * last again), one request per connection, until |n_conns| were served. */
typedef struct {
    int fd;
    const char *const *answers;
    int n_answers;
    int n_conns;
    int served;
} canned;

static void *serve(void *arg)
{
    canned *c = arg;
    for (; c->served < c->n_conns; c->served++) {
        int fd = accept(c->fd, NULL, NULL);
        if (fd < 0)
            break;
        char req[4096];
        size_t got = 0;
        /* The request's head and body (small): read until the blank line
         * and what Content-Length says after it. */
        for (;;) {
            ssize_t r = read(fd, req + got, sizeof req - 1 - got);
            if (r <= 0)
                break;
            got += (size_t)r;
            req[got] = '\0';
            char *end = strstr(req, "\r\n\r\n");
            const char *cl = strstr(req, "Content-Length: ");
            if (end && (size_t)(end + 4 - req) + (cl ? (size_t)atoi(cl + 16) : 0) <= got)
                break;
        }
        const char *a = c->answers[c->served < c->n_answers ? c->served : c->n_answers - 1];
        ssize_t w = write(fd, a, strlen(a));
        (void)w;
        close(fd);
    }
    return NULL;
}

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 8), 0);
    socklen_t l = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &l), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

#define BUSY                                                                                       \
    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"     \
    "Content-Length: 20\r\nConnection: close\r\n\r\n{\"error\":\"no store\"}"
#define BUSY_NO_RETRY                                                                              \
    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
#define FINE                                                                                       \
    "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"             \
    "Connection: close\r\n\r\n{\"ok\":true}"

/* Runs one POST against a server with |answers|; returns how many
 * connections the server saw. */
static int post(const char *const *answers, int n_answers, int n_conns, long *status,
                json_t **reply)
{
    int port;
    canned c = {.answers = answers, .n_answers = n_answers, .n_conns = n_conns};
    c.fd = listen_any(&port);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, serve, &c), 0);
    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
    chttp h;
    chttp_open_plain(&h, base, NULL);
    esim_error e;
    assert_int_equal(chttp_call(&h, "POST", "/v1/campaigns", NULL, "{}", 2, status, reply, &e),
                     ESIM_OK);
    chttp_close(&h);
    /* Unblock a server still waiting for a connection that will not come. */
    shutdown(c.fd, SHUT_RDWR);
    pthread_join(t, NULL);
    close(c.fd);
    return c.served;
}

static void test_503_with_retry_after_sent_again(void **state)
{
    (void)state;
    const char *const answers[] = {BUSY, FINE};
    long status = 0;
    json_t *reply = NULL;
    assert_int_equal(post(answers, 2, 2, &status, &reply), 2);
    assert_int_equal(status, 201);
    assert_true(json_is_true(json_object_get(reply, "ok")));
    json_decref(reply);
}

static void test_503_without_retry_after_returned(void **state)
{
    (void)state;
    const char *const answers[] = {BUSY_NO_RETRY, FINE};
    long status = 0;
    json_t *reply = NULL;
    assert_int_equal(post(answers, 2, 2, &status, &reply), 1);
    assert_int_equal(status, 503);
    json_decref(reply);
}

static void test_503_gives_up(void **state)
{
    (void)state;
    const char *const answers[] = {BUSY};
    long status = 0;
    json_t *reply = NULL;
    assert_int_equal(post(answers, 1, CHTTP_TRIES_503 + 1, &status, &reply), CHTTP_TRIES_503);
    assert_int_equal(status, 503);
    assert_string_equal(chttp_error_message(reply), "no store");
    json_decref(reply);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_503_with_retry_after_sent_again),
        cmocka_unit_test(test_503_without_retry_after_returned),
        cmocka_unit_test(test_503_gives_up),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
