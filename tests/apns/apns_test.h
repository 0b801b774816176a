/*
 * apns_test.h — helpers shared by the APNs tests: a temporary test PKI made
 * with esim_pki_create(), an APNs mock running in its own thread and event
 * loop (so a test can talk to its delivery channel with blocking libcurl),
 * and a loop runner that stops on a condition or a deadline.
 */
#ifndef ESIM_TESTS_APNS_TEST_H
#define ESIM_TESTS_APNS_TEST_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "apns/apns_mock.h"

typedef struct {
    char dir[256];
    char path[16][320];
    char topic[256];
} test_pki;

/* Paths inside the PKI dir: pki_path(&pki, "push.pem"); each name gets its
 * own slot, so returned paths stay valid for the test's life. */
static inline const char *pki_path(test_pki *p, const char *name)
{
    size_t dl = strlen(p->dir), nl = strlen(name);
    assert_true(dl + 1 + nl < sizeof p->path[0]);
    for (int i = 0; i < 16; i++) {
        char *slot = p->path[i];
        if (slot[0] != '\0' && strcmp(slot + dl + 1, name) != 0)
            continue;
        memcpy(slot, p->dir, dl);
        slot[dl] = '/';
        memcpy(slot + dl + 1, name, nl + 1);
        return slot;
    }
    fail_msg("pki_path: too many names");
    return NULL;
}

/* Fills |p| from the PKI in |dir| (its files already there). */
static inline void pki_read(test_pki *p)
{
    esim_error err = {{0}};
    esim_buf t = {0};
    assert_int_equal(esim_read_file(pki_path(p, "push.topic"), 4096, &t, &err), ESIM_OK);
    size_t n = strcspn((const char *)t.data, "\r\n");
    snprintf(p->topic, sizeof p->topic, "%.*s", (int)n, (const char *)t.data);
    esim_buf_free(&t);
}

static char pki_template_dir[256];

static inline void pki_template_remove(void)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", pki_template_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", pki_template_dir);
}

/*
 * A fresh test PKI in its own directory. Generating the keys was most of
 * these tests' CPU time (every test made its own), enough for a test binary
 * to overrun its ctest TIMEOUT on a busy machine: the keys are now made once
 * per process, and every test gets its own copy of the files (modes kept),
 * so a test that changes or adds files still cannot affect another.
 */
static inline void pki_make(test_pki *p)
{
    static bool made;
    if (!made) {
        if (pki_template_dir[0] == '\0') {
            snprintf(pki_template_dir, sizeof pki_template_dir, "/tmp/esim-apns-pki-XXXXXX");
            assert_non_null(mkdtemp(pki_template_dir));
            atexit(pki_template_remove);
        }
        esim_error err = {{0}};
        if (esim_pki_create(pki_template_dir, &err) != ESIM_OK)
            fail_msg("esim_pki_create: %s", err.msg);
        made = true;
    }
    memset(p, 0, sizeof *p);
    snprintf(p->dir, sizeof p->dir, "/tmp/esim-apns-test-XXXXXX");
    assert_non_null(mkdtemp(p->dir));
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cp -pR '%s'/. '%s'/", pki_template_dir, p->dir);
    assert_int_equal(system(cmd), 0);
    pki_read(p);
}

static inline void pki_remove(test_pki *p)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", p->dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- a mock in its own thread ---- */

typedef struct {
    struct event_base *base;
    apns_mock *mock;
    pthread_t thread;
    bool running;
} mock_thread;

static void *mock_thread_main(void *arg)
{
    mock_thread *t = arg;
    event_base_loop(t->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static inline void mock_start(mock_thread *t, const apns_mock_config *cfg)
{
    static bool threads_on;
    if (!threads_on) {
        evthread_use_pthreads();
        threads_on = true;
    }
    memset(t, 0, sizeof *t);
    t->base = event_base_new();
    assert_non_null(t->base);
    esim_error err = {{0}};
    esim_err e = apns_mock_new(t->base, cfg, &t->mock, &err);
    if (e != ESIM_OK)
        fail_msg("apns_mock_new: %s", err.msg);
    assert_int_equal(pthread_create(&t->thread, NULL, mock_thread_main, t), 0);
    t->running = true;
}

/* Stops the mock's loop (the mock stays allocated: a "frozen" APNs). */
static inline void mock_pause(mock_thread *t)
{
    if (!t->running)
        return;
    event_base_loopbreak(t->base);
    pthread_join(t->thread, NULL);
    t->running = false;
}

/* libevent finalizes freed bufferevents (and runs callbacks it deferred)
 * from inside the loop: give it a few turns before event_base_free(). */
static inline void drain_base(struct event_base *base)
{
    for (int i = 0; i < 8; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
}

static inline void mock_stop(mock_thread *t, apns_mock_stats *stats)
{
    mock_pause(t);
    drain_base(t->base);
    if (stats)
        apns_mock_stats_get(t->mock, stats);
    apns_mock_free(t->mock);
    drain_base(t->base);
    event_base_free(t->base);
}

/* ---- running the client loop ---- */

typedef bool (*loop_done_fn)(void *arg);

static void loop_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Runs |base| until done(arg) or |max_ms| passed (the deadline only keeps
 * a broken build from hanging; tests assert outcomes, never durations). */
static inline void run_loop(struct event_base *base, loop_done_fn done, void *arg, int max_ms)
{
    struct event *tick = event_new(base, -1, EV_PERSIST, loop_tick, NULL);
    struct timeval tv = {0, 5000};
    event_add(tick, &tv);
    int64_t end = esim_mono_ms() + max_ms;
    while (esim_mono_ms() < end) {
        event_base_loop(base, EVLOOP_ONCE);
        if (done && done(arg))
            break;
    }
    event_free(tick);
}

/* ---- HTTP/1.1 to the delivery channel (blocking libcurl) ---- */

static size_t http_collect(char *data, size_t size, size_t n, void *arg)
{
    esim_buf_append(arg, data, size * n);
    return size * n;
}

/* GET or POST (body != NULL) http://127.0.0.1:port/path; returns the status. */
static inline long http_call(int port, const char *path, const char *body, esim_buf *out)
{
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *h = curl_easy_init();
    assert_non_null(h);
    esim_buf_reset(out);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, http_collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    /* A hang guard, beyond the longest long-poll (60 s) a test asks for. */
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 120000L);
    if (body)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    return status;
}

/* A 64-hex-digit token made from |n|. */
static inline void make_token(char out[65], unsigned n)
{
    snprintf(out, 65, "%08x%056x", n, 0xabcdu);
}

#endif
