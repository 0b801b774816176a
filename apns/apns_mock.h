/*
 * apns_mock.h — the APNs mock server that stands in for Apple on loopback
 * (tests, the demo, `esim-mdm apns-mock`). A test tool: it lives in its own
 * static library, esim_apns_mock, and is not part of libesim-mdm. It runs in
 * a caller-owned event_base like the client (see apns/apns.h for the rules
 * on threads and SIGPIPE that hold for both).
 */
#ifndef ESIM_APNS_APNS_MOCK_H
#define ESIM_APNS_APNS_MOCK_H

#include "apns/apns.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct apns_mock apns_mock;

/*
 * Mock settings; apns_mock_config_init() first. Listen addresses are
 * "IPv4:PORT" or "[IPv6]:PORT" (loopback in practice); port 0 picks a free
 * one, read back with apns_mock_port(). Strings are copied.
 */
typedef struct {
    /* TLS port with client certificates (the MDM case): only clients whose
     * certificate chains to client_ca get in, and requests may use only the
     * topic in that certificate's subject UID. Needs tls_cert, tls_key,
     * client_ca. NULL: not opened. */
    const char *listen;
    const char *tls_cert;
    const char *tls_key;
    const char *client_ca;
    /* TLS port without client certificates, and cleartext h2c port (prior
     * knowledge), for load generators such as h2load. Any topic is allowed
     * there unless |topic| is set. NULL: not opened. */
    const char *open_listen;
    const char *h2c_listen;
    /* HTTP/1.1 delivery channel for device simulators (see below). */
    const char *delivery_listen;

    /* Topic required on the open/h2c ports; NULL = any non-empty topic. */
    const char *topic;
    /* File of device tokens answered 410 Unregistered: one hex token per
     * line; '#' comments and blank lines ignored. */
    const char *dead_tokens_path;
    /* Provider tokens (JWT) on the open/h2c ports: with |token_key_path|
     * (PEM public key or .p8 private key) every request must carry a valid
     * "authorization: bearer" JWT signed by it (403 MissingProviderToken /
     * InvalidProviderToken / ExpiredProviderToken otherwise). NULL: an
     * authorization header is checked for shape only. */
    const char *token_key_path;

    /* Fault injection. fail_rate[i] pairs: answer a share |rate| (0..1) of
     * valid requests with |status| (and its usual reason: 429
     * TooManyRequests, 500 InternalServerError, 503 ServiceUnavailable, 403
     * Forbidden, 400 BadTopic...). Draws come from a PRNG seeded by |seed|. */
    struct {
        int status;
        double rate;
    } fail_rate[8];
    int fail_rate_count;
    uint64_t seed;
    /* Send GOAWAY (NO_ERROR, debug data {"reason":"Shutdown"}) after every N
     * requests on a connection, naming the highest stream processed so far:
     * streams above it are refused unprocessed, lower ones still open are
     * answered. Then, with every answer written, the mock shuts the socket
     * for writing and reads (discarding) until the client closes, at most
     * 30 s: closing outright would let a request the client sent before it
     * read the GOAWAY come back as a TCP RST, which can make the client lose
     * the 200s already in its receive buffer and re-send pushes the mock
     * delivered (docs/apns-mock.md, "How a connection ends"). 0 = never. */
    unsigned goaway_every;
    /* SETTINGS_MAX_CONCURRENT_STREAMS announced (default 1000). */
    unsigned max_streams;
    /* After a connection's first non-200 answer, drop its
     * SETTINGS_MAX_CONCURRENT_STREAMS to 1 (as APNs does). */
    bool drop_streams_on_reject;
    /* Hold every response this long. */
    unsigned delay_ms;
    /* Drop a connection without GOAWAY when its Nth request arrives: that
     * request and later ones are never answered (nor delivered), answers
     * already given are flushed, then the socket is shut down for writing
     * as after a GOAWAY. The client sees a connection lost with streams in
     * flight. 0 = never. */
    unsigned reset_every;
    /* Accept every request with 200 as cheaply as possible: no validation,
     * no delivery. */
    bool benchmark;
    /* Most undelivered pushes one delivery channel holds (default 100000);
     * at the cap new pushes for its tokens get 429 TooManyRequests. */
    size_t delivery_cap;
} apns_mock_config;

void apns_mock_config_init(apns_mock_config *cfg);

/*
 * Parses "503=0.1,429=0.05" into cfg->fail_rate. ESIM_EINVAL (|err| says
 * which item) on a status outside 400..599, a rate outside 0..1, a total
 * over 1, more than 8 items or bad syntax.
 */
esim_err apns_mock_parse_fail_rates(apns_mock_config *cfg, const char *spec, esim_error *err);

/*
 * Starts the mock in |base| (not owned): binds every configured port now.
 * On success *out owns the mock (apns_mock_free()). Otherwise *out is NULL:
 *   ESIM_EINVAL    no port configured, bad address, listen set without
 *                  tls_cert/tls_key/client_ca, bad fault settings.
 *   ESIM_ENOTFOUND a certificate/key/CA/dead-token file does not exist.
 *   ESIM_ECRYPTO   a certificate or key is unusable.
 *   ESIM_EINVAL    a bad line in the dead-token file (|err| has its number).
 *   ESIM_EIO       a port could not be bound (in use, permission).
 *   ESIM_ENOMEM    out of memory.
 */
esim_err apns_mock_new(struct event_base *base, const apns_mock_config *cfg, apns_mock **out,
                       esim_error *err);

typedef enum {
    APNS_MOCK_PORT_TLS = 0,      /* listen */
    APNS_MOCK_PORT_OPEN = 1,     /* open_listen */
    APNS_MOCK_PORT_H2C = 2,      /* h2c_listen */
    APNS_MOCK_PORT_DELIVERY = 3, /* delivery_listen */
} apns_mock_port_kind;

/* The bound port, or 0 when that listener is not configured. */
int apns_mock_port(const apns_mock *m, apns_mock_port_kind which);

/* Marks |token| (hex) dead now: later pushes to it get 410 Unregistered
 * with this moment as timestamp. ESIM_EINVAL on a malformed token. */
esim_err apns_mock_add_dead_token(apns_mock *m, const char *token, esim_error *err);

typedef struct {
    uint64_t connections; /* accepted TCP connections, ever */
    uint64_t tls_refused; /* handshakes that failed (no/unknown cert, ALPN) */
    uint64_t requests;    /* complete requests seen */
    uint64_t accepted;    /* answered 200 */
    uint64_t status[6];   /* answers by class: [2]=2xx ... [5]=5xx */
    uint64_t injected;    /* of which fault-injected */
    uint64_t refused;     /* streams refused after a GOAWAY or reset */
    uint64_t goaways;
    uint64_t resets;
    uint64_t delivered;      /* queued on a delivery channel */
    uint64_t undelivered;    /* accepted for tokens no channel registered */
    uint64_t backlog_full;   /* 429s because a channel was at its cap */
    uint64_t distinct_jwts;  /* different provider tokens seen */
    uint64_t max_concurrent; /* most streams open at once on one connection */
} apns_mock_stats;

void apns_mock_stats_get(const apns_mock *m, apns_mock_stats *out);

/* Closes every listener and connection (pending long-polls get their answer
 * first) and frees the mock. NULL allowed. */
void apns_mock_free(apns_mock *m);

/*
 * ---- The delivery channel (how a device simulator receives pushes) ----
 *
 * The mock's delivery_listen port speaks HTTP/1.1 with JSON bodies. A
 * simulator registers the tokens it owns under a channel name, then
 * long-polls for the MDM pushes the mock accepted for them.
 *
 *   POST /tokens?channel=NAME   {"tokens":["<hex>",...], "topic":"<topic>"}
 *        Registers the tokens on channel NAME (default "default"); a token
 *        registered again moves to the new channel. With "topic" (optional)
 *        pushes to these tokens under another topic get 400
 *        DeviceTokenNotForTopic, as APNs does.
 *        -> 200 {"registered": N}; 400 {"error": "..."} on bad JSON/token.
 *
 *   POST /dead-tokens           {"tokens":["<hex>",...]}
 *        Marks tokens dead now (410 Unregistered, timestamp = now).
 *        -> 200 {"dead": N}; 400 {"error": "..."}.
 *
 *   GET /deliveries?channel=NAME&after=SEQ&wait_ms=N&limit=L
 *        Returns the pushes accepted for the channel's tokens whose
 *        sequence number is > SEQ, oldest first, at most L (default 1000,
 *        max 10000). When there are none it waits up to N ms (default 0,
 *        max 60000) for one to arrive.
 *        -> 200 {"next": SEQ2, "pushes": [{"seq":S, "token":"<hex>",
 *               "push_magic":"...", "topic":"...", "apns_id":"<uuid>"}, ...],
 *               "backlog": B}
 *        Pass SEQ2 as the next |after|. Asking with after=SEQ acknowledges
 *        (and frees) every push with seq <= SEQ on that channel.
 *
 *   GET /stats  -> 200 the apns_mock_stats counters as a JSON object.
 *
 * Guarantees: seq is one counter for the whole mock, so it increases in the
 * order pushes were accepted; a push gets its seq when (and only if) the mock
 * answers it 200, so a push that was refused, failed, or lost with its
 * connection is never delivered, and a push is delivered at most once per
 * acceptance (a client that re-sends after acceptance would show up twice —
 * that is what tests look for). Pushes for tokens no channel registered are
 * still answered 200 (APNs does not know whether a device is online) and
 * counted as undelivered. A channel holds at most delivery_cap
 * unacknowledged pushes; beyond it pushes for its tokens are answered 429
 * TooManyRequests (so a well-behaved client retries and nothing is lost) and
 * /deliveries reports "error": "backlog full ..." until the simulator
 * acknowledges.
 */

#ifdef __cplusplus
}
#endif
#endif
