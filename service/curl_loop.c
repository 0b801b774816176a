/*
 * curl_loop.c — libcurl's socket callbacks turned into libevent events
 * (curl_loop.h).
 */
#include "service/curl_loop.h"

#include <stdlib.h>

#include <openssl/ssl.h>

typedef struct {
    struct event *ev;
} sock_ctx;

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    curl_loop *l = arg;
    int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running = 0;
    curl_multi_socket_action(l->multi, fd, flags, &running);
    l->finished(l->ctx);
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    curl_loop *l = userp;
    sock_ctx *sc = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sc) {
            event_free(sc->ev);
            free(sc);
            curl_multi_assign(l->multi, s, NULL);
        }
        return 0;
    }
    short kind = (short)((what & CURL_POLL_IN ? EV_READ : 0) |
                         (what & CURL_POLL_OUT ? EV_WRITE : 0) | EV_PERSIST);
    if (!sc) {
        sc = calloc(1, sizeof *sc);
        if (!sc)
            return -1;
        curl_multi_assign(l->multi, s, sc);
    } else {
        event_free(sc->ev);
    }
    sc->ev = event_new(l->base, s, kind, on_socket_event, l);
    if (!sc->ev)
        return -1;
    event_add(sc->ev, NULL);
    return 0;
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    curl_loop *l = arg;
    int running = 0;
    curl_multi_socket_action(l->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    l->finished(l->ctx);
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    curl_loop *l = userp;
    if (timeout_ms < 0) {
        evtimer_del(l->timer_ev);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(l->timer_ev, &tv);
    return 0;
}

int curl_loop_init(curl_loop *l, struct event_base *base, void (*finished)(void *ctx), void *ctx)
{
    *l = (curl_loop){.base = base, .finished = finished, .ctx = ctx};
    l->multi = curl_multi_init();
    l->timer_ev = evtimer_new(base, on_timeout, l);
    if (!l->multi || !l->timer_ev)
        return -1;
    curl_multi_setopt(l->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(l->multi, CURLMOPT_SOCKETDATA, l);
    curl_multi_setopt(l->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(l->multi, CURLMOPT_TIMERDATA, l);
    return 0;
}

void curl_loop_free(curl_loop *l)
{
    if (l->multi)
        curl_multi_cleanup(l->multi); /* removes its sockets through on_socket */
    if (l->timer_ev)
        event_free(l->timer_ev);
    l->multi = NULL;
    l->timer_ev = NULL;
}

X509_STORE *curl_loop_system_store(X509_STORE **kept)
{
    if (*kept)
        return *kept;
    X509_STORE *store = X509_STORE_new();
    /* Fails only for want of memory: a missing file or directory is no
     * error (OpenSSL's own SSL_CTX_set_default_verify_paths, which curl's
     * default locations are on Debian). */
    if (store && X509_STORE_set_default_paths(store) != 1) {
        X509_STORE_free(store);
        store = NULL;
    }
    return *kept = store;
}

/* curl's SSL_CTX callback, after curl set the context up (its own store,
 * empty with no CA file or directory) and before the connection's SSL is
 * made from it: the kept store replaces curl's, so that one verifies. */
static CURLcode set_store(CURL *e, void *ssl_ctx, void *store)
{
    (void)e;
    SSL_CTX_set1_cert_store(ssl_ctx, store);
    return CURLE_OK;
}

static void use_store(CURL *e, X509_STORE *store)
{
    if (curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, set_store) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, store) != CURLE_OK) {
        curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, NULL);
        return;
    }
    curl_easy_setopt(e, CURLOPT_CAINFO, NULL);
    curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
}

void curl_loop_set_ca(CURL *e, const char *ca_file, X509_STORE *system_store)
{
    if (ca_file) {
        curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
        curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
    } else {
        use_store(e, system_store);
    }
}
