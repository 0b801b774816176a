/*
 * notify.c — instances sharing a store hear of each other's work: the
 * store's listener (a connection of its own on PostgreSQL) is watched by
 * the event loop, and each notification goes to the modules that asked
 * (esim_service_add_notify_hook). A lost listener is reopened from the
 * tick, and the hooks are told to catch up from the store, since what was
 * sent meanwhile is gone.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/internal.h"
#include "service/service_internal.h"

/* A lost listener is tried again this often. */
#define NOTIFY_RETRY_MS 1000

static void deliver(const char *topic, const char *payload, void *arg)
{
    esim_service *svc = arg;
    svc->notify.received++;
    for (size_t i = 0; i < svc->n_notify_hooks; i++)
        svc->notify_hooks[i].fn(svc, topic, payload, svc->notify_hooks[i].arg);
}

static void listener_close(esim_service *svc)
{
    if (svc->notify.ev)
        event_free(svc->notify.ev);
    svc->notify.ev = NULL;
    esim_store_listener_free(svc->notify.l);
    svc->notify.l = NULL;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    esim_service *svc = arg;
    esim_error e = {{0}};
    if (esim_store_listener_read(svc->notify.l, deliver, svc, &e) == ESIM_OK)
        return;
    svc_log(svc, ESIM_LOG_WARN, "notify_listener_lost", "error", e.msg, NULL);
    listener_close(svc);
    svc->notify.retry_at = esim_now_ms() + NOTIFY_RETRY_MS;
}

/* Opens the listener; after a loss, tells every hook to catch up. */
static void listener_open(esim_service *svc, bool catch_up)
{
    esim_error e = {{0}};
    if (esim_store_listen(svc->st, &svc->notify.l, &e) != ESIM_OK) {
        svc->notify.retry_at = esim_now_ms() + NOTIFY_RETRY_MS;
        return;
    }
    svc->notify.ev = event_new(svc->base, esim_store_listener_fd(svc->notify.l),
                               EV_READ | EV_PERSIST, on_readable, svc);
    if (!svc->notify.ev || event_add(svc->notify.ev, NULL) != 0) {
        listener_close(svc);
        svc->notify.retry_at = esim_now_ms() + NOTIFY_RETRY_MS;
        return;
    }
    svc->notify.opens++;
    if (catch_up)
        deliver(NULL, NULL, svc);
}

void notify_start(esim_service *svc)
{
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    char rnd[ESIM_UUID_LEN + 1];
    esim_uuid_new(rnd);
    snprintf(svc->instance_id, sizeof svc->instance_id, "%.32s-%ld-%.8s", host[0] ? host : "host",
             (long)getpid(), rnd);
    if (esim_store_features(svc->st) & ESIM_STORE_FEATURE_SHARED)
        listener_open(svc, false);
}

void notify_tick(esim_service *svc, int64_t now)
{
    if (!(esim_store_features(svc->st) & ESIM_STORE_FEATURE_SHARED) || svc->notify.l ||
        now < svc->notify.retry_at)
        return;
    listener_open(svc, true);
}

void notify_free(esim_service *svc)
{
    listener_close(svc);
}

void notify_metrics(esim_service *svc, esim_buf *out)
{
    if (!(esim_store_features(svc->st) & ESIM_STORE_FEATURE_SHARED))
        return;
    char line[512];
    int n = snprintf(line, sizeof line,
                     "# HELP esim_store_listener_up 1 while the listener for other instances'"
                     " notifications is connected.\n"
                     "# TYPE esim_store_listener_up gauge\n"
                     "esim_store_listener_up %d\n"
                     "# HELP esim_store_notifications_received_total Notifications heard from"
                     " instances sharing the store (this one included).\n"
                     "# TYPE esim_store_notifications_received_total counter\n"
                     "esim_store_notifications_received_total %llu\n",
                     svc->notify.l ? 1 : 0, (unsigned long long)svc->notify.received);
    esim_buf_append(out, line, (size_t)n);
}

const char *esim_service_instance_id(const esim_service *svc)
{
    return svc->instance_id;
}

esim_err esim_service_notify(esim_service *svc, const char *topic, const char *payload,
                             esim_error *err)
{
    return esim_store_notify(svc->st, topic, payload, err);
}
