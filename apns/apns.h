/*
 * apns.h — the APNs provider client (HTTP/2 over TLS or h2c, driven by a
 * libevent loop) that wakes MDM devices. The APNs mock server that stands in
 * for Apple on loopback is a test tool with its own header and library
 * (apns/apns_mock.h, esim_apns_mock); it is not part of libesim-mdm.
 *
 * The client and the mock run inside a caller-owned struct event_base and never block: call
 * event_base_dispatch() (or keep your own loop running) and results arrive
 * through callbacks. Nothing here prints; failures come back as esim_err plus
 * an esim_error sentence (see core/esim.h).
 *
 * Neither is thread-safe: call a client's or a mock's functions from the
 * thread that runs its event_base. Two clients or mocks never share state,
 * so several can live in one process (or one loop).
 *
 * Like any program writing to TLS sockets through OpenSSL, a process using
 * this must ignore SIGPIPE (signal(SIGPIPE, SIG_IGN)): a peer that closes
 * its end would otherwise kill it. The library does not touch signals.
 *
 * Protocol rules followed here are summarised in PROTOCOLS.md §4.
 */
#ifndef ESIM_APNS_APNS_H
#define ESIM_APNS_APNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/esim.h"

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

/* ======================================================================
 * The client
 * ====================================================================== */

typedef struct apns_client apns_client;

typedef enum {
    /* TLS client certificate: the MDM case. PEM cert+key or PKCS#12. */
    APNS_AUTH_CERTIFICATE = 0,
    /* Provider token: ES256 JWT from a .p8 key, sent as
     * "authorization: bearer <jwt>". Apps only; MDM pushes need a cert. */
    APNS_AUTH_TOKEN = 1,
    /* No credential at all: only useful against the mock's --open-listen or
     * --h2c-listen ports (load tests). */
    APNS_AUTH_NONE = 2,
} apns_auth_kind;

/*
 * Client settings. Fill with esim_apns_config_init() first, then set what you
 * need; every string is copied by esim_apns_client_new(), so it may be freed
 * afterwards. Durations are milliseconds unless named otherwise.
 */
typedef struct {
    /* "https://HOST[:PORT]" (TLS 1.2+, ALPN h2; port defaults to 443) or
     * "http://HOST[:PORT]" (cleartext HTTP/2 with prior knowledge, for the
     * mock's h2c port; port defaults to 80). Required. */
    const char *url;

    apns_auth_kind auth;
    /* APNS_AUTH_CERTIFICATE: either cert_path + key_path (PEM; key_path may
     * be NULL when the key sits in cert_path) or p12_path (+ p12_password,
     * NULL = empty). */
    const char *cert_path;
    const char *key_path;
    const char *p12_path;
    const char *p12_password;
    /* APNS_AUTH_TOKEN: the .p8 (PEM PKCS#8 P-256 key), its 10-character
     * key id and the team id (the JWT's "iss"). */
    const char *p8_path;
    const char *key_id;
    const char *team_id;

    /* apns-topic. NULL: the certificate subject's UID
     * (com.apple.mgmt.External.<uuid> for an MDM push certificate).
     * Required with token auth and with APNS_AUTH_NONE. */
    const char *topic;

    /* PEM file of CAs that the server must chain to. NULL: the system's
     * default trust store (what real APNs needs). Ignored for http://. */
    const char *ca_path;

    /* Long-lived connections kept open for this credential. They are opened
     * one after another (the next once the previous has its SETTINGS), never
     * all at once. Default 2, range 1..64. */
    int connections;
    /* Local cap of concurrent streams per connection; the effective cap is
     * min(this, the peer's SETTINGS_MAX_CONCURRENT_STREAMS), re-read as
     * SETTINGS arrive. Default 1000, range 1..100000. */
    int max_in_flight;
    /* Sends per push before giving up on a retryable failure (429, 5xx,
     * REFUSED_STREAM, GOAWAY-skipped, connection lost). Default 5, >= 1.
     * After a GOAWAY only the streams above its last-stream-id are re-sent
     * (never processed); those at or below it may have been processed, so
     * the client waits for their answers. A push whose connection dies
     * before its answer has an unknown fate and is re-sent: at least once,
     * so such a push may reach the device twice. */
    int max_attempts;
    /* Retry back-off: attempt n waits a random time in
     * [d/2, d] with d = retry_base_ms * 2^(n-1), capped at retry_max_ms.
     * Defaults 250 and 30000. */
    int retry_base_ms;
    int retry_max_ms;
    /* Reconnect back-off after a failed or fruitless connection: doubles
     * from reconnect_min_ms up to reconnect_max_ms (defaults 1000, 60000).
     * A connection that completed at least one push is replaced at once. */
    int reconnect_min_ms;
    int reconnect_max_ms;
    /* After this many consecutive failed connection attempts (no connection
     * got ready in between), every waiting push fails with
     * APNS_OUTCOME_UNREACHABLE. Default 4; 0 = keep trying forever. */
    int max_connect_failures;
    /* TCP + TLS + first SETTINGS must complete within this. Default 10000. */
    int connect_timeout_ms;
    /* A connection with no frame received for idle_ping_ms gets a PING; if
     * no PING ACK comes within ping_timeout_ms it is dropped (its pushes
     * are re-sent elsewhere). Defaults 60000 and 10000. */
    int idle_ping_ms;
    int ping_timeout_ms;
    /* Provider-token lifetime in seconds: one JWT is reused this long.
     * Clamped to 1200..3600 (APNs refuses refreshes more often than every
     * 20 minutes and tokens older than 60). Default 2400. */
    int token_refresh_s;
    /* Highest stream id used on a connection before rolling to a new one
     * (client ids are odd, at most 2^31-1). Default 2^31-1 - 2000; tests
     * set it low to see the roll-over. */
    uint32_t max_stream_id;
    /* Pushes accepted but not yet finished (queued + in flight + waiting to
     * retry) beyond which esim_apns_client_push() refuses. Default 1000000. */
    size_t max_pending;
} apns_config;

/* Fills |cfg| with the defaults documented above (url NULL, certificate
 * auth, no paths). */
ESIM_EXTERN void esim_apns_config_init(apns_config *cfg);

/* How one push ended. Every push given to esim_apns_client_push() that returned
 * ESIM_OK ends in exactly one of these, delivered once to the callback. */
typedef enum {
    /* 200: APNs took it. apns_id is the id APNs answered with. */
    APNS_OUTCOME_ACCEPTED = 0,
    /* 410 (ExpiredToken, Unregistered, any 410) with timestamp_ms, or 400
     * BadDeviceToken / DeviceTokenNotForTopic: the token is dead until the
     * device sends a new TokenUpdate. Stop pushing to it. */
    APNS_OUTCOME_TOKEN_DEAD = 1,
    /* A retryable failure (429, 5xx, REFUSED_STREAM, skipped by GOAWAY,
     * connection lost) happened max_attempts times. status/reason are the
     * last failure's. Try again later. */
    APNS_OUTCOME_RETRY_EXHAUSTED = 2,
    /* Any other 4xx (bad topic, payload, expiration...): retrying the same
     * request cannot succeed. */
    APNS_OUTCOME_REJECTED = 3,
    /* The credential was stopped by a 403 (BadCertificate, Forbidden,
     * InvalidProviderToken, ...): this push was waiting and was never sent,
     * or was itself answered 403. Fix the certificate/key, then make a new
     * client. */
    APNS_OUTCOME_CREDENTIAL_FAILED = 4,
    /* No connection to APNs could be made max_connect_failures times in a
     * row (refused, DNS, TLS handshake, ALPN not h2, timeout). */
    APNS_OUTCOME_UNREACHABLE = 5,
    /* esim_apns_client_free() ran before the push finished. */
    APNS_OUTCOME_CANCELED = 6,
} apns_outcome;

/* "accepted", "token_dead", "retry_exhausted", "rejected",
 * "credential_failed", "unreachable", "canceled"; never NULL. */
ESIM_EXTERN const char *esim_apns_outcome_name(apns_outcome o);

/* What the callback receives. Every pointer is valid only during the
 * callback; copy what you keep. */
typedef struct {
    apns_outcome outcome;
    const char *token;    /* the device token (lowercase hex) */
    const char *apns_id;  /* APNs' apns-id when it answered, else the one
                             given in apns_push, else ""; never NULL */
    int status;           /* last HTTP status, 0 if none was received */
    const char *reason;   /* APNs reason ("Unregistered"), or for
                             UNREACHABLE/CANCELED/RETRY without a status
                             a sentence from us; "" when accepted. Never NULL */
    int64_t timestamp_ms; /* 410: when APNs learned the token was dead
                             (ms since epoch); else 0 */
    int attempts;         /* times the request was sent (0 if never) */
    int64_t latency_ms;   /* esim_apns_client_push() to this result */
    void *user_data;      /* apns_push.user_data */
} apns_result;

/* Called once per push, from inside the event loop. The callback may call
 * esim_apns_client_push() and esim_apns_client_stats(); it must not call
 * esim_apns_client_free() (do that after the loop returns, or from a timer). */
typedef void (*apns_result_cb)(const apns_result *result, void *arg);

/* One push. Strings are copied by esim_apns_client_push(). */
typedef struct {
    const char *token;      /* device token, hex, 2..200 digits (even count;
                               APNs itself refuses all but real tokens) */
    const char *push_magic; /* the device's PushMagic; body becomes exactly
                               {"mdm":"<push_magic>"}; required, 1..256
                               bytes, printable ASCII */
    const char *apns_id;    /* UUID to send as apns-id (kept across
                               retries); NULL: none is sent, APNs assigns one
                               and the result carries it */
    bool has_expiration;    /* send apns-expiration: */
    int64_t expiration;     /* seconds since epoch; 0 = deliver once or drop */
    void *user_data;        /* handed back in apns_result */
} apns_push;

/*
 * Makes a client that sends through |base| (not owned; it must outlive the
 * client) and reports each push to |cb| with |cb_arg|. Certificates and keys
 * are loaded and checked now; no connection is opened until the first push.
 * On success *out owns the client (esim_apns_client_free()) and ESIM_OK is
 * returned. Otherwise *out is NULL and:
 *   ESIM_EINVAL   bad URL (scheme, host, port), missing required field,
 *                 values out of range, no topic given and none in the
 *                 certificate subject (UID).
 *   ESIM_ENOTFOUND a certificate/key/.p8/CA file does not exist.
 *   ESIM_ECRYPTO  a file is not a valid certificate/key, the key does not
 *                 match the certificate, wrong PKCS#12 password, .p8 not a
 *                 P-256 key, TLS context could not be built.
 *   ESIM_ENOMEM   out of memory.
 * |err| (may be NULL) says which, with the path.
 */
ESIM_EXTERN esim_err esim_apns_client_new(struct event_base *base, const apns_config *cfg,
                                          apns_result_cb cb, void *cb_arg, apns_client **out,
                                          esim_error *err);

/*
 * Queues one push. It is sent on the next free stream of an open connection
 * (opening connections as needed) and ends in one callback. Never calls the
 * callback from inside this function.
 *   ESIM_OK       queued.
 *   ESIM_EINVAL   c or push NULL, token not 2..200 hex digits, push_magic
 *                 empty, over 256 bytes, not printable ASCII or holding a
 *                 quote or backslash, apns_id not a UUID, expiration < 0.
 *   ESIM_EAUTH    the credential was stopped by a 403; |err| carries the
 *                 reason (esim_apns_client_stopped() too).
 *   ESIM_ESTATE   called from a callback run by esim_apns_client_free().
 *   ESIM_ETOOBIG  max_pending pushes are already waiting.
 *   ESIM_ENOMEM   out of memory.
 */
ESIM_EXTERN esim_err esim_apns_client_push(apns_client *c, const apns_push *push, esim_error *err);

/* True once a 403 stopped the credential; |why| (may be NULL) receives the
 * reason ("403 BadCertificate"). */
ESIM_EXTERN bool esim_apns_client_stopped(const apns_client *c, esim_error *why);

/* Topic in use (copied from the config or read from the certificate).
 * Owned by the client. */
ESIM_EXTERN const char *esim_apns_client_topic(const apns_client *c);

/* Pushes not yet finished (queued, in flight or waiting to retry). */
ESIM_EXTERN size_t esim_apns_client_pending(const apns_client *c);

/* The latency histogram has APNS_LATENCY_BUCKETS buckets. This returns the
 * upper bound of bucket |bucket| in ms, or -1 for the last one, which has no
 * bound (everything slower), and for a bucket out of range. */
#define APNS_LATENCY_BUCKETS 14
ESIM_EXTERN int esim_apns_latency_bound_ms(int bucket);

typedef struct {
    uint64_t pushed; /* esim_apns_client_push() calls that returned OK */
    uint64_t sent;   /* requests written (a retry counts again) */
    uint64_t accepted;
    uint64_t token_dead;
    uint64_t rejected;
    uint64_t retry_exhausted;
    uint64_t credential_failed;
    uint64_t unreachable;
    uint64_t canceled;
    uint64_t retries; /* re-sends scheduled after retryable failures */
    uint64_t status_429;
    uint64_t status_5xx;
    uint64_t refused_streams; /* REFUSED_STREAM and GOAWAY-skipped streams */
    uint64_t lost_in_flight;  /* streams lost with their connection */
    uint64_t in_flight;       /* now */
    uint64_t queued;          /* now: waiting for a stream or a retry */
    uint64_t connections;     /* open now (ready for streams) */
    uint64_t connects;        /* connections that got ready, ever */
    uint64_t connect_failures;
    uint64_t goaways; /* GOAWAY frames received */
    uint64_t pings_sent;
    uint64_t ping_timeouts;
    uint64_t rollovers;                     /* connections retired as stream ids ran out */
    uint64_t jwt_issued;                    /* provider tokens signed */
    uint64_t latency[APNS_LATENCY_BUCKETS]; /* push to result, per bucket */
} apns_stats;

/* Copies the counters into |out|. */
ESIM_EXTERN void esim_apns_client_stats(const apns_client *c, apns_stats *out);

/*
 * Closes every connection and frees the client. Pushes not finished are
 * reported with APNS_OUTCOME_CANCELED from inside this call. NULL is
 * allowed. Must not be called from the result callback. libevent releases
 * a closed connection's buffers from inside the loop: if you are about to
 * event_base_free() the base, run event_base_loop(base, EVLOOP_NONBLOCK)
 * once after this call (the same holds for apns_mock_free()).
 */
ESIM_EXTERN void esim_apns_client_free(apns_client *c);

#ifdef __cplusplus
}
#endif
#endif
