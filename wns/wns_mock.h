/*
 * wns_mock.h — a stand-in for the Windows Push Notification Services on
 * loopback (tests, the demo, `esim-mdm wns-mock`): the OAuth token endpoint
 * (login.live.com/accesstoken.srf), channel URIs to POST raw notifications
 * to, and a delivery channel through which the device simulator receives
 * them and learns of expired channels, as the APNs mock does for iPhones.
 * A test tool in its own static library, esim_wns_mock, not part of
 * libesim-mdm. It runs in a caller-owned event_base. docs/wns-mock.md.
 */
#ifndef ESIM_WNS_WNS_MOCK_H
#define ESIM_WNS_WNS_MOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/esim.h"

struct event_base;

#ifdef __cplusplus
extern "C" {
#endif

typedef struct wns_mock wns_mock;

/* Settings; wns_mock_config_init() first. Listen addresses are "HOST:PORT"
 * (port 0 picks a free one, read back with wns_mock_port()). Strings are
 * copied. */
typedef struct {
    /* HTTPS: the token endpoint and the channel URIs. Needs tls_cert and
     * tls_key (PEM files, e.g. the test PKI's server.pem/server.key). */
    const char *listen;
    const char *tls_cert;
    const char *tls_key;
    /* HTTP/1.1 delivery channel for device simulators (see below); NULL: none. */
    const char *delivery_listen;
    /* Host[:port] written into channel URIs; NULL: 127.0.0.1:<bound port>. */
    const char *public_host;
    /* The credentials the token endpoint accepts (the service's package SID
     * "ms-app://S-1-15-2-..." and secret); NULL: any non-empty value. */
    const char *client_id;
    const char *client_secret;
    unsigned token_ttl_s;   /* access tokens' lifetime (expires_in); default 86400 */
    unsigned channel_ttl_s; /* channel URIs' lifetime; default 30 days */
    /* Fault injection: a share |rate| of otherwise valid notifications is
     * answered |status| (406 throttled, 500, 503...). Seeded by |seed|. */
    struct {
        int status;
        double rate;
    } fail_rate[8];
    int fail_rate_count;
    uint64_t seed;
    /* Most undelivered notifications one delivery channel holds (default
     * 100000); beyond it notifications for its PCs get 406. */
    size_t delivery_cap;
    /* Close each HTTPS connection after its answer ("Connection: close"),
     * as a server that keeps none alive: every request a new connection. */
    bool close_connections;
    /* Hold each accepted notification's 200 this long (ms; 0: answer at
     * once), as a distant WNS would: a client's requests in flight pile up. */
    unsigned answer_delay_ms;
} wns_mock_config;

void wns_mock_config_init(wns_mock_config *cfg);

/* Parses "503=0.1,406=0.05" into cfg->fail_rate. ESIM_EINVAL (|err| says
 * which item) on a status outside 400..599, a rate outside 0..1, a total
 * over 1, more than 8 items or bad syntax. */
esim_err wns_mock_parse_fail_rates(wns_mock_config *cfg, const char *spec, esim_error *err);

/*
 * Starts the mock in |base|, binding every configured port now. *out is the
 * caller's (wns_mock_free).
 *   ESIM_EINVAL    no listen address, a bad address, listen without the TLS
 *                  files, bad fault settings.
 *   ESIM_ENOTFOUND / ESIM_ECRYPTO  the certificate or key file.
 *   ESIM_EIO       a port could not be bound.   ESIM_ENOMEM.
 */
esim_err wns_mock_new(struct event_base *base, const wns_mock_config *cfg, wns_mock **out,
                      esim_error *err);
void wns_mock_free(wns_mock *m); /* NULL ok; pending long-polls are answered first */

typedef enum { WNS_MOCK_PORT_HTTPS = 0, WNS_MOCK_PORT_DELIVERY = 1 } wns_mock_port_kind;
int wns_mock_port(const wns_mock *m, wns_mock_port_kind which); /* 0 when not configured */

/* A new channel URI for |tag| (the PC's DeviceID) on delivery channel
 * |delivery| ("default" when NULL), or its current one while that has not
 * expired, as WNS hands an app its channel. *uri and *expires_ms (wall
 * clock) are filled. ESIM_EINVAL (bad tag or name), ESIM_ENOMEM. */
esim_err wns_mock_channel(wns_mock *m, const char *tag, const char *delivery, char *uri,
                          size_t uri_len, int64_t *expires_ms, esim_error *err);
/* Expires the channel |uri| now (later notifications get 410) and tells its
 * simulator. ESIM_ENOTFOUND. */
esim_err wns_mock_expire_channel(wns_mock *m, const char *uri, esim_error *err);
/* Expires every access token now (later notifications get 401). Returns how many. */
size_t wns_mock_expire_tokens(wns_mock *m);

typedef struct {
    uint64_t token_requests; /* POSTs to the token endpoint */
    uint64_t tokens_issued;
    uint64_t token_refused; /* 400 invalid_client / invalid_request / invalid_scope */
    uint64_t notifications; /* POSTs to channel URIs */
    uint64_t accepted;      /* 200 */
    uint64_t status[6];     /* answers by class: [2]=2xx ... [5]=5xx */
    uint64_t unauthorized;  /* 401: missing, unknown or expired token */
    uint64_t gone;          /* 410: expired channel */
    uint64_t not_found;     /* 404: unknown channel */
    uint64_t bad_request;   /* 400: headers or payload type */
    uint64_t throttled;     /* 406, injected or the delivery cap */
    uint64_t injected;      /* fault-injected answers (any status) */
    uint64_t channels;      /* channel URIs handed out */
    uint64_t expired;       /* channels expired (by time, request or API) */
    uint64_t delivered;     /* queued on a delivery channel */
    uint64_t tls_full;      /* HTTPS handshakes completed: full */
    uint64_t tls_resumed;   /* ... and resumed (a session the client offered back) */
} wns_mock_stats;

void wns_mock_stats_get(const wns_mock *m, wns_mock_stats *out);

/*
 * ---- Wire protocol ----
 *
 * HTTPS (listen):
 *   POST /accesstoken.srf (any path; form body)
 *        grant_type=client_credentials&client_id=…&client_secret=…&scope=notify.windows.com
 *        -> 200 {"access_token":"…","token_type":"bearer","expires_in":N}
 *        -> 400 {"error":"invalid_request"|"invalid_client"|"invalid_scope", "error_description":…}
 *   POST <channel URI>  (https://HOST/?token=…)
 *        Authorization: Bearer <access token>, X-WNS-Type: wns/raw,
 *        Content-Type: application/octet-stream, body at most 5120 bytes
 *        -> 200 (X-WNS-Status: received, X-WNS-Msg-ID) and delivery to the simulator
 *        -> 400 bad X-WNS-Type or Content-Type; 401 missing/unknown/expired token;
 *           404 unknown channel; 410 expired channel; 413 payload too big;
 *           406 throttled (injected, or the delivery channel is full); 500/503 injected.
 *        Errors carry X-WNS-Error-Description.
 *
 * HTTP (delivery_listen), JSON:
 *   POST /channels?channel=NAME   {"tags":["<DeviceID>",…]}
 *        -> 200 {"channels":[{"tag":…,"channel_uri":…,"expires_ms":…},…]}
 *   GET  /deliveries?channel=NAME&after=SEQ&wait_ms=N&limit=L
 *        -> 200 {"next":SEQ2,"backlog":B,"deliveries":[{"seq":S,"kind":"push"|"expired",
 *                "tag":…,"channel_uri":…,"payload":"<base64>"?},…]}
 *        Long-polls up to wait_ms (max 60000) when empty; after=SEQ acknowledges
 *        (frees) everything up to SEQ, as the APNs mock's channel does.
 *   POST /expire        {"channel_uris":[…]} | {"tags":[…]} | {"all":true} -> {"expired":N}
 *   POST /expire-tokens -> {"expired":N}
 *   GET  /stats         -> the counters above, plus "channels_live"
 */

#ifdef __cplusplus
}
#endif
#endif
