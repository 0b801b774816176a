/*
 * mock_internal.h — the APNs mock's state, shared by mock.c (the HTTP/2
 * side that validates and answers pushes) and delivery.c (the HTTP/1.1
 * channel through which device simulators collect accepted pushes).
 */
#ifndef ESIM_APNS_MOCK_INTERNAL_H
#define ESIM_APNS_MOCK_INTERNAL_H

#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "apns/apns_mock.h"
#include "apns/internal.h"

typedef struct mock_conn mock_conn;
typedef struct delivery delivery;
typedef struct waiter waiter;

/* One accepted push waiting on a channel for its simulator. */
struct delivery {
    delivery *next;
    uint64_t seq;
    char *token, *push_magic, *topic; /* point into text[] */
    char apns_id[ESIM_UUID_LEN + 1];
    char text[];
};

typedef struct channel {
    char *name;
    delivery *head, *tail;
    size_t count;
    waiter *waiters;
} channel;

/* What the mock knows about one device token. */
typedef struct {
    int64_t dead_since_ms; /* 0: alive */
    channel *ch;           /* NULL: no simulator registered it */
    char *topic;           /* NULL: any topic */
} token_info;

struct apns_mock {
    struct event_base *base;
    apns_mock_config cfg; /* strings not kept */
    char *topic;          /* required topic on open/h2c, or NULL */
    SSL_CTX *ssl_mtls, *ssl_open;
    EVP_PKEY *token_key;
    struct evconnlistener *listeners[3];
    int ports[4];
    struct evhttp *http;
    apns_map tokens;   /* hex -> token_info */
    apns_map channels; /* name -> channel */
    apns_map jwts;     /* distinct provider tokens seen (values unused) */
    uint64_t seq;
    apns_rng rng;
    mock_conn *conns; /* all open connections */
    apns_mock_stats stats;
};

/* delivery.c */
esim_err mock_delivery_start(apns_mock *m, const char *listen, esim_error *err);
void mock_delivery_stop(apns_mock *m);
/* The token's entry, made when |create|. NULL if absent or out of memory. */
token_info *mock_token(apns_mock *m, const char *token, bool create);
/* Queues an accepted push on the token's channel and wakes its long-polls. */
void mock_deliver(apns_mock *m, token_info *ti, const char *token, const char *push_magic,
                  const char *topic, const char *apns_id);
void mock_token_info_free(void *ti);
void mock_channel_free(void *ch);

#endif
