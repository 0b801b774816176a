/*
 * hook_sink.h — a webhook receiver for the crash and fault tests: an HTTP
 * server on loopback, on its own thread, that records every event the
 * service POSTs (event id, topic, UDID, command UUID, status) and answers
 * 200 — or, when told, 503 or a slow 200, so a test can play a receiver
 * that fails or lags.
 */
#ifndef ESIM_TEST_HOOK_SINK_H
#define ESIM_TEST_HOOK_SINK_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char event_id[64];
    char topic[32];
    char udid[80];
    char command_uuid[64];
    char status[32];
} hook_event;

typedef enum {
    HOOK_OK,   /* 200 */
    HOOK_FAIL, /* 503 to every delivery */
    HOOK_SLOW, /* 200 after |slow_ms| */
} hook_mode;

typedef struct hook_sink hook_sink;

/* Listens on 127.0.0.1 (any free port). NULL when it cannot. */
hook_sink *hook_sink_start(void);
int hook_sink_port(const hook_sink *h);
void hook_sink_set_mode(hook_sink *h, hook_mode mode, int slow_ms);
/* Deliveries answered 2xx so far, and those refused (503). */
size_t hook_sink_count(hook_sink *h);
size_t hook_sink_refused(hook_sink *h);
/* A copy of every event answered 2xx, in arrival order (free() it). */
hook_event *hook_sink_events(hook_sink *h, size_t *n);
void hook_sink_stop(hook_sink *h);

#endif
