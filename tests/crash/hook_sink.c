/*
 * hook_sink.c — the tests' webhook receiver (hook_sink.h): libevent's evhttp
 * on a thread of its own.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <jansson.h>

#include "crash/hook_sink.h"

struct hook_sink {
    struct event_base *base;
    struct evhttp *http;
    pthread_t thread;
    int port;
    pthread_mutex_t mu;
    hook_mode mode;
    int slow_ms;
    hook_event *events;
    size_t n, cap, refused;
};

typedef struct {
    hook_sink *h;
    struct evhttp_request *req;
    struct event *ev;
} slow_reply;

static void copy(char *dst, size_t n, const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    snprintf(dst, n, "%s", v ? v : "");
}

static void record(hook_sink *h, const char *body, size_t len)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    hook_event e;
    memset(&e, 0, sizeof e);
    copy(e.event_id, sizeof e.event_id, j, "event_id");
    copy(e.topic, sizeof e.topic, j, "topic");
    const json_t *ev = json_object_get(j, "acknowledge_event");
    if (!ev)
        ev = json_object_get(j, "checkin_event");
    copy(e.udid, sizeof e.udid, ev, "udid");
    copy(e.command_uuid, sizeof e.command_uuid, ev, "command_uuid");
    copy(e.status, sizeof e.status, ev, "status");
    json_decref(j);
    pthread_mutex_lock(&h->mu);
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 4096;
        hook_event *ne = realloc(h->events, cap * sizeof *ne);
        if (!ne) {
            pthread_mutex_unlock(&h->mu);
            return;
        }
        h->events = ne;
        h->cap = cap;
    }
    h->events[h->n++] = e;
    pthread_mutex_unlock(&h->mu);
}

static void on_slow(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    slow_reply *s = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(s->req);
    size_t len = evbuffer_get_length(in);
    record(s->h, (const char *)evbuffer_pullup(in, -1), len);
    evhttp_send_reply(s->req, 200, "OK", NULL);
    event_free(s->ev);
    free(s);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    hook_sink *h = arg;
    pthread_mutex_lock(&h->mu);
    hook_mode mode = h->mode;
    int slow_ms = h->slow_ms;
    if (mode == HOOK_FAIL)
        h->refused++;
    pthread_mutex_unlock(&h->mu);
    if (mode == HOOK_FAIL) {
        evhttp_send_reply(req, 503, "Unavailable", NULL);
        return;
    }
    if (mode == HOOK_SLOW) {
        slow_reply *s = calloc(1, sizeof *s);
        if (s) {
            s->h = h;
            s->req = req;
            s->ev = evtimer_new(h->base, on_slow, s);
            struct timeval tv = {slow_ms / 1000, (slow_ms % 1000) * 1000};
            if (s->ev && evtimer_add(s->ev, &tv) == 0)
                return;
            if (s->ev)
                event_free(s->ev);
            free(s);
        }
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    record(h, (const char *)evbuffer_pullup(in, -1), len);
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void *run(void *arg)
{
    hook_sink *h = arg;
    event_base_loop(h->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

hook_sink *hook_sink_start(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, (void (*)(void))evthread_use_pthreads);
    hook_sink *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    pthread_mutex_init(&h->mu, NULL);
    h->base = event_base_new();
    h->http = h->base ? evhttp_new(h->base) : NULL;
    struct evhttp_bound_socket *bs =
        h->http ? evhttp_bind_socket_with_handle(h->http, "127.0.0.1", 0) : NULL;
    if (!bs) {
        if (h->http)
            evhttp_free(h->http);
        if (h->base)
            event_base_free(h->base);
        free(h);
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl);
    h->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    evhttp_set_max_body_size(h->http, 1 << 20);
    evhttp_set_gencb(h->http, on_request, h);
    pthread_create(&h->thread, NULL, run, h);
    return h;
}

int hook_sink_port(const hook_sink *h)
{
    return h->port;
}

void hook_sink_set_mode(hook_sink *h, hook_mode mode, int slow_ms)
{
    pthread_mutex_lock(&h->mu);
    h->mode = mode;
    h->slow_ms = slow_ms;
    pthread_mutex_unlock(&h->mu);
}

size_t hook_sink_count(hook_sink *h)
{
    pthread_mutex_lock(&h->mu);
    size_t n = h->n;
    pthread_mutex_unlock(&h->mu);
    return n;
}

size_t hook_sink_refused(hook_sink *h)
{
    pthread_mutex_lock(&h->mu);
    size_t n = h->refused;
    pthread_mutex_unlock(&h->mu);
    return n;
}

hook_event *hook_sink_events(hook_sink *h, size_t *n)
{
    pthread_mutex_lock(&h->mu);
    hook_event *copy = malloc((h->n ? h->n : 1) * sizeof *copy);
    *n = copy ? h->n : 0;
    if (copy && h->n)
        memcpy(copy, h->events, h->n * sizeof *copy);
    pthread_mutex_unlock(&h->mu);
    return copy;
}

void hook_sink_stop(hook_sink *h)
{
    if (!h)
        return;
    event_base_loopbreak(h->base);
    pthread_join(h->thread, NULL);
    evhttp_free(h->http);
    event_base_free(h->base);
    pthread_mutex_destroy(&h->mu);
    free(h->events);
    free(h);
}
