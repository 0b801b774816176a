/*
 * test_apns_client.c — the APNs client against the APNs mock over real TLS
 * and h2c on loopback: every outcome class, GOAWAY mid-burst, SETTINGS
 * dropping to 1, connection resets, 403 stopping the credential, PING
 * timeouts, stream-id roll-over, provider tokens, and bad input.
 */
#include <arpa/inet.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <jansson.h>

#include "apns_test.h"

#define MAXP 2000

typedef struct {
    apns_outcome outcome;
    int status;
    char reason[128];
    char apns_id[40];
    char token[201];
    int64_t timestamp_ms;
    int attempts;
} result_copy;

typedef struct {
    result_copy r[MAXP];
    int count[MAXP]; /* results per push: must end at exactly 1 */
    size_t results;
    size_t expected;
} collector;

static void collect(const apns_result *res, void *arg)
{
    collector *c = arg;
    uintptr_t i = (uintptr_t)res->user_data;
    assert_true(i < MAXP);
    c->count[i]++;
    result_copy *r = &c->r[i];
    r->outcome = res->outcome;
    r->status = res->status;
    snprintf(r->reason, sizeof r->reason, "%s", res->reason);
    snprintf(r->apns_id, sizeof r->apns_id, "%s", res->apns_id);
    snprintf(r->token, sizeof r->token, "%s", res->token);
    r->timestamp_ms = res->timestamp_ms;
    r->attempts = res->attempts;
    c->results++;
}

static bool all_done(void *arg)
{
    collector *c = arg;
    return c->results >= c->expected;
}

typedef struct {
    test_pki pki;
    struct event_base *base;
    collector *col;
    mock_thread mt;
    apns_mock_config mcfg;
    apns_config ccfg;
    apns_client *client;
    char url[128];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    pki_make(&f->pki);
    f->base = event_base_new();
    f->col = calloc(1, sizeof *f->col);
    apns_mock_config_init(&f->mcfg);
    f->mcfg.listen = "127.0.0.1:0";
    f->mcfg.delivery_listen = "127.0.0.1:0";
    f->mcfg.tls_cert = pki_path(&f->pki, "server.pem");
    f->mcfg.tls_key = pki_path(&f->pki, "server.key");
    f->mcfg.client_ca = pki_path(&f->pki, "ca.pem");
    f->mcfg.seed = 42;
    esim_apns_config_init(&f->ccfg);
    f->ccfg.cert_path = pki_path(&f->pki, "push.pem");
    f->ccfg.key_path = pki_path(&f->pki, "push.key");
    f->ccfg.ca_path = pki_path(&f->pki, "ca.pem");
    f->ccfg.retry_base_ms = 5;
    f->ccfg.retry_max_ms = 50;
    f->ccfg.reconnect_min_ms = 20;
    f->ccfg.reconnect_max_ms = 200;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    esim_apns_client_free(f->client);
    drain_base(f->base);
    if (f->mt.base)
        mock_stop(&f->mt, NULL);
    event_base_free(f->base);
    pki_remove(&f->pki);
    free(f->col);
    free(f);
    return 0;
}

/* Starts the mock, then a client on the mock's TLS (or |kind|) port. */
static void start(fixture *f, apns_mock_port_kind kind)
{
    mock_start(&f->mt, &f->mcfg);
    snprintf(f->url, sizeof f->url, "%s://127.0.0.1:%d",
             kind == APNS_MOCK_PORT_H2C ? "http" : "https", apns_mock_port(f->mt.mock, kind));
    f->ccfg.url = f->url;
    esim_error err = {{0}};
    esim_err e = esim_apns_client_new(f->base, &f->ccfg, collect, f->col, &f->client, &err);
    if (e != ESIM_OK)
        fail_msg("esim_apns_client_new: %s", err.msg);
}

static void push_n(fixture *f, unsigned first, unsigned n)
{
    for (unsigned i = first; i < first + n; i++) {
        char token[65], magic[40];
        make_token(token, i);
        snprintf(magic, sizeof magic, "magic-%u", i);
        apns_push p = {.token = token, .push_magic = magic, .user_data = (void *)(uintptr_t)i};
        esim_error err = {{0}};
        esim_err e = esim_apns_client_push(f->client, &p, &err);
        if (e != ESIM_OK)
            fail_msg("esim_apns_client_push: %s", err.msg);
    }
    f->col->expected += n;
}

/* How long a test waits for something the client guarantees will happen
 * (every push ends in one callback; a PING goes out on an idle connection).
 * Only a hang guard for a broken build: far beyond what a loaded machine
 * needs, so no outcome depends on how fast the machine is; ctest's TIMEOUT
 * normally comes first. A short deadline here (it was 20 s) failed runs on a
 * busy machine that were merely slow (592 of 600 results in time). */
#define HANG_GUARD_MS (10 * 60 * 1000)

static void run(fixture *f)
{
    run_loop(f->base, all_done, f->col, HANG_GUARD_MS);
    assert_int_equal(f->col->results, f->col->expected);
}

typedef struct {
    apns_client *client;
    size_t offset; /* of a uint64_t counter in apns_stats */
    uint64_t want;
} stat_wait;

static bool stat_reached(void *arg)
{
    stat_wait *w = arg;
    apns_stats s;
    esim_apns_client_stats(w->client, &s);
    uint64_t v;
    memcpy(&v, (const char *)&s + w->offset, sizeof v);
    return v >= w->want;
}

/* Runs the client's loop until counter |field| of apns_stats reaches |n|. */
#define WAIT_STAT(f, field, n) wait_stat((f), offsetof(apns_stats, field), (n))

static void wait_stat(fixture *f, size_t offset, uint64_t want)
{
    stat_wait w = {f->client, offset, want};
    run_loop(f->base, stat_reached, &w, HANG_GUARD_MS);
}

/* Registers tokens 0..n-1 on the mock's delivery channel "t". */
static void register_tokens(fixture *f, unsigned n, const char *topic)
{
    json_t *arr = json_array();
    for (unsigned i = 0; i < n; i++) {
        char token[65];
        make_token(token, i);
        json_array_append_new(arr, json_string(token));
    }
    json_t *body = json_pack("{s:o}", "tokens", arr);
    if (topic)
        json_object_set_new(body, "topic", json_string(topic));
    char *text = json_dumps(body, 0);
    json_decref(body);
    esim_buf out = {0};
    long st = http_call(apns_mock_port(f->mt.mock, APNS_MOCK_PORT_DELIVERY), "/tokens?channel=t",
                        text, &out);
    assert_int_equal(st, 200);
    free(text);
    esim_buf_free(&out);
}

/* Collects every delivered push of channel "t"; checks seq order and that
 * no push was delivered twice; returns how many per token index. */
static size_t fetch_deliveries(fixture *f, int *per_token, unsigned n)
{
    size_t total = 0;
    long long after = 0;
    for (;;) {
        char path[128];
        snprintf(path, sizeof path, "/deliveries?channel=t&after=%lld&limit=500", after);
        esim_buf out = {0};
        assert_int_equal(
            http_call(apns_mock_port(f->mt.mock, APNS_MOCK_PORT_DELIVERY), path, NULL, &out), 200);
        json_t *j = json_loadb((const char *)out.data, out.len, 0, NULL);
        esim_buf_free(&out);
        assert_non_null(j);
        json_t *pushes = json_object_get(j, "pushes");
        size_t i;
        json_t *p;
        json_array_foreach(pushes, i, p)
        {
            long long seq = json_integer_value(json_object_get(p, "seq"));
            assert_true(seq > after);
            after = seq;
            const char *tok = json_string_value(json_object_get(p, "token"));
            const char *magic = json_string_value(json_object_get(p, "push_magic"));
            char want_tok[65], want_magic[40];
            unsigned idx = 0;
            assert_int_equal(sscanf(tok, "%8x", &idx), 1);
            make_token(want_tok, idx);
            snprintf(want_magic, sizeof want_magic, "magic-%u", idx);
            assert_string_equal(tok, want_tok);
            assert_string_equal(magic, want_magic);
            assert_true(idx < n);
            per_token[idx]++;
            total++;
        }
        size_t got = json_array_size(pushes);
        assert_int_equal(json_integer_value(json_object_get(j, "next")), after);
        json_decref(j);
        if (got == 0)
            break;
    }
    return total;
}

static void assert_exactly_once(fixture *f, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        assert_int_equal(f->col->count[i], 1);
}

/* ---------------------------------------------------------------- tests */

static void test_accepted_and_delivered_in_order(void **state)
{
    fixture *f = *state;
    f->ccfg.connections = 2;
    start(f, APNS_MOCK_PORT_TLS);
    register_tokens(f, 300, f->pki.topic);
    char id[ESIM_UUID_LEN + 1];
    esim_uuid_new(id);
    apns_push p = {.token = "00000000000000000000000000000000000000000000000000000000000000ff",
                   .push_magic = "given-id",
                   .apns_id = id,
                   .has_expiration = true,
                   .expiration = 0,
                   .user_data = (void *)(uintptr_t)1999};
    assert_int_equal(esim_apns_client_push(f->client, &p, NULL), ESIM_OK);
    f->col->expected++;
    push_n(f, 0, 300);
    run(f);
    assert_exactly_once(f, 300);
    for (unsigned i = 0; i < 300; i++) {
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_ACCEPTED);
        assert_int_equal(f->col->r[i].status, 200);
        assert_int_equal(f->col->r[i].attempts, 1);
        assert_true(esim_uuid_valid(f->col->r[i].apns_id));
    }
    assert_int_equal(f->col->r[1999].outcome, APNS_OUTCOME_ACCEPTED);
    assert_string_equal(f->col->r[1999].apns_id, id); /* APNs echoes our apns-id */
    assert_string_equal(esim_apns_client_topic(f->client), f->pki.topic);
    apns_stats s;
    esim_apns_client_stats(f->client, &s);
    assert_int_equal(s.accepted, 301);
    assert_int_equal(s.sent, 301);
    assert_int_equal(s.in_flight, 0);
    /* the pool: the second connection opens once the first is up */
    WAIT_STAT(f, connects, 2);
    esim_apns_client_stats(f->client, &s);
    assert_int_equal(s.connects, 2);
    uint64_t hist = 0;
    for (int i = 0; i < APNS_LATENCY_BUCKETS; i++)
        hist += s.latency[i];
    assert_int_equal(hist, 301);
    /* The buckets' bounds rise; the last bucket has none. */
    assert_int_equal(esim_apns_latency_bound_ms(0), 1);
    for (int i = 1; i < APNS_LATENCY_BUCKETS - 1; i++)
        assert_true(esim_apns_latency_bound_ms(i) > esim_apns_latency_bound_ms(i - 1));
    assert_int_equal(esim_apns_latency_bound_ms(APNS_LATENCY_BUCKETS - 1), -1);
    assert_int_equal(esim_apns_latency_bound_ms(-1), -1);

    int per[300] = {0};
    assert_int_equal(fetch_deliveries(f, per, 300), 300);
    for (int i = 0; i < 300; i++)
        assert_int_equal(per[i], 1);
    apns_mock_stats ms;
    esim_apns_client_free(f->client);
    f->client = NULL;
    mock_stop(&f->mt, &ms);
    f->mt.base = NULL;
    assert_int_equal(ms.accepted, 301);
    assert_int_equal(ms.delivered, 300);
    assert_int_equal(ms.undelivered, 1);
}

static void test_token_dead(void **state)
{
    fixture *f = *state;
    start(f, APNS_MOCK_PORT_TLS);
    char dead[65];
    make_token(dead, 0);
    assert_int_equal(apns_mock_add_dead_token(f->mt.mock, dead, NULL), ESIM_OK);
    /* token 1 belongs to another app's topic */
    register_tokens(f, 2, "com.example.other");
    push_n(f, 0, 3);
    run(f);
    assert_int_equal(f->col->r[0].outcome, APNS_OUTCOME_TOKEN_DEAD);
    assert_int_equal(f->col->r[0].status, 410);
    assert_string_equal(f->col->r[0].reason, "Unregistered");
    assert_true(f->col->r[0].timestamp_ms > 1600000000000LL);
    assert_int_equal(f->col->r[1].outcome, APNS_OUTCOME_TOKEN_DEAD);
    assert_int_equal(f->col->r[1].status, 400);
    assert_string_equal(f->col->r[1].reason, "DeviceTokenNotForTopic");
    assert_int_equal(f->col->r[2].outcome, APNS_OUTCOME_ACCEPTED);
    assert_exactly_once(f, 3);
}

static void test_retry_until_accepted_none_duplicated(void **state)
{
    fixture *f = *state;
    assert_int_equal(apns_mock_parse_fail_rates(&f->mcfg, "503=0.2,429=0.1,500=0.1", NULL),
                     ESIM_OK);
    f->ccfg.max_attempts = 30;
    start(f, APNS_MOCK_PORT_TLS);
    register_tokens(f, 400, NULL);
    push_n(f, 0, 400);
    run(f);
    assert_exactly_once(f, 400);
    int retried = 0;
    for (unsigned i = 0; i < 400; i++) {
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_ACCEPTED);
        retried += f->col->r[i].attempts > 1;
    }
    assert_true(retried > 0);
    apns_stats s;
    esim_apns_client_stats(f->client, &s);
    assert_true(s.retries > 0 && s.status_429 > 0 && s.status_5xx > 0);
    int per[400] = {0};
    assert_int_equal(fetch_deliveries(f, per, 400), 400);
    for (int i = 0; i < 400; i++)
        assert_int_equal(per[i], 1);
}

static void test_retry_exhausted(void **state)
{
    fixture *f = *state;
    assert_int_equal(apns_mock_parse_fail_rates(&f->mcfg, "503=1", NULL), ESIM_OK);
    f->ccfg.max_attempts = 3;
    start(f, APNS_MOCK_PORT_TLS);
    push_n(f, 0, 5);
    run(f);
    for (unsigned i = 0; i < 5; i++) {
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_RETRY_EXHAUSTED);
        assert_int_equal(f->col->r[i].status, 503);
        assert_string_equal(f->col->r[i].reason, "ServiceUnavailable");
        assert_int_equal(f->col->r[i].attempts, 3);
    }
    assert_exactly_once(f, 5);
}

static void test_rejected_bad_expiration(void **state)
{
    fixture *f = *state;
    start(f, APNS_MOCK_PORT_TLS);
    char token[65];
    make_token(token, 0);
    apns_push p = {
        .token = token, .push_magic = "m", .has_expiration = true, .expiration = 99999999999999LL};
    assert_int_equal(esim_apns_client_push(f->client, &p, NULL), ESIM_OK);
    f->col->expected = 1;
    run(f);
    assert_int_equal(f->col->r[0].outcome, APNS_OUTCOME_REJECTED);
    assert_int_equal(f->col->r[0].status, 400);
    assert_string_equal(f->col->r[0].reason, "BadExpirationDate");
    assert_int_equal(f->col->r[0].attempts, 1);
    assert_false(esim_apns_client_stopped(f->client, NULL));
}

static void test_403_stops_credential(void **state)
{
    fixture *f = *state;
    /* A certificate that chains to the CA but carries no UID: APNs answers
     * 403 BadCertificate to every push made with it. */
    esim_cert ca = {0}, leaf = {0};
    esim_error err = {{0}};
    assert_int_equal(esim_pki_load(f->pki.dir, "ca", &ca, &err), ESIM_OK);
    esim_cert_spec spec = {.common_name = "no topic", .client_auth = true};
    assert_int_equal(esim_cert_issue(&spec, &ca, &leaf, &err), ESIM_OK);
    assert_int_equal(
        esim_cert_save(&leaf, pki_path(&f->pki, "nouid.pem"), pki_path(&f->pki, "nouid.key"), &err),
        ESIM_OK);
    esim_cert_clear(&ca);
    esim_cert_clear(&leaf);
    f->ccfg.cert_path = pki_path(&f->pki, "nouid.pem");
    f->ccfg.key_path = pki_path(&f->pki, "nouid.key");
    f->ccfg.topic = f->pki.topic;
    f->ccfg.connections = 1;
    f->ccfg.max_in_flight = 1; /* one answer stops the rest before they are sent */
    start(f, APNS_MOCK_PORT_TLS);
    push_n(f, 0, 50);
    run(f);
    assert_exactly_once(f, 50);
    assert_int_equal(f->col->r[0].outcome, APNS_OUTCOME_CREDENTIAL_FAILED);
    assert_int_equal(f->col->r[0].status, 403);
    assert_string_equal(f->col->r[0].reason, "BadCertificate");
    int never_sent = 0;
    for (unsigned i = 0; i < 50; i++) {
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_CREDENTIAL_FAILED);
        never_sent += f->col->r[i].attempts == 0;
    }
    assert_true(never_sent >= 40);
    esim_error why = {{0}};
    assert_true(esim_apns_client_stopped(f->client, &why));
    assert_non_null(strstr(why.msg, "BadCertificate"));
    char token[65];
    make_token(token, 7);
    apns_push p = {.token = token, .push_magic = "m"};
    assert_int_equal(esim_apns_client_push(f->client, &p, &err), ESIM_EAUTH);
    assert_non_null(strstr(err.msg, "403"));
}

static void test_goaway_mid_burst(void **state)
{
    fixture *f = *state;
    f->mcfg.goaway_every = 37;
    f->mcfg.delay_ms = 2; /* keep streams open so GOAWAY catches some in flight */
    f->ccfg.max_attempts = 50;
    start(f, APNS_MOCK_PORT_TLS);
    register_tokens(f, 600, NULL);
    push_n(f, 0, 600);
    run(f);
    assert_exactly_once(f, 600);
    for (unsigned i = 0; i < 600; i++)
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_ACCEPTED);
    apns_stats s;
    esim_apns_client_stats(f->client, &s);
    assert_true(s.goaways >= 10);
    assert_true(s.refused_streams > 0);
    assert_true(s.connects >= 10);
    int per[600] = {0};
    size_t delivered = fetch_deliveries(f, per, 600);
    /* scripts/stress-goaway.sh counts duplicates from this line. */
    print_message("goaway_mid_burst: pushes 600 delivered %zu goaways %llu lost_in_flight %llu\n",
                  delivered, (unsigned long long)s.goaways, (unsigned long long)s.lost_in_flight);
    assert_int_equal(delivered, 600);
    for (int i = 0; i < 600; i++)
        assert_int_equal(per[i], 1); /* none lost, none sent twice after acceptance */
    /* An orderly GOAWAY loses no stream with its connection: every stream at
     * or below the last-stream-id got its answer before the connection
     * ended (a lost one would be re-sent, and was delivered twice). */
    assert_int_equal(s.lost_in_flight, 0);
}

static void test_settings_one_stream(void **state)
{
    fixture *f = *state;
    f->mcfg.max_streams = 1;
    f->mcfg.delay_ms = 1;
    f->ccfg.connections = 1;
    start(f, APNS_MOCK_PORT_TLS);
    push_n(f, 0, 40);
    run(f);
    for (unsigned i = 0; i < 40; i++)
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_ACCEPTED);
    apns_stats s;
    esim_apns_client_stats(f->client, &s);
    assert_int_equal(s.refused_streams, 0); /* we never went over the peer's limit */
    apns_mock_stats ms;
    esim_apns_client_free(f->client);
    f->client = NULL;
    mock_stop(&f->mt, &ms);
    f->mt.base = NULL;
    assert_int_equal(ms.max_concurrent, 1);
}

static void test_settings_drop_after_reject(void **state)
{
    fixture *f = *state;
    f->mcfg.drop_streams_on_reject = true;
    f->mcfg.delay_ms = 1;
    assert_int_equal(apns_mock_parse_fail_rates(&f->mcfg, "429=0.02", NULL), ESIM_OK);
    f->ccfg.connections = 1;
    f->ccfg.max_attempts = 30;
    start(f, APNS_MOCK_PORT_TLS);
    register_tokens(f, 300, NULL);
    push_n(f, 0, 300);
    run(f);
    assert_exactly_once(f, 300);
    for (unsigned i = 0; i < 300; i++)
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_ACCEPTED);
    int per[300] = {0};
    assert_int_equal(fetch_deliveries(f, per, 300), 300);
    for (int i = 0; i < 300; i++)
        assert_int_equal(per[i], 1);
    /* After the drop, the client keeps to one stream: burst 2 finds the
     * limit already at 1 and must not be refused. */
    apns_stats before, after;
    esim_apns_client_stats(f->client, &before);
    push_n(f, 300, 30);
    run(f);
    esim_apns_client_stats(f->client, &after);
    assert_int_equal(after.refused_streams, before.refused_streams);
}

static void test_connection_reset(void **state)
{
    fixture *f = *state;
    f->mcfg.reset_every = 45;
    f->ccfg.max_attempts = 50;
    start(f, APNS_MOCK_PORT_TLS);
    register_tokens(f, 500, NULL);
    push_n(f, 0, 500);
    run(f);
    assert_exactly_once(f, 500);
    for (unsigned i = 0; i < 500; i++)
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_ACCEPTED);
    apns_stats s;
    esim_apns_client_stats(f->client, &s);
    assert_true(s.lost_in_flight > 0);
    int per[500] = {0};
    assert_int_equal(fetch_deliveries(f, per, 500), 500);
    for (int i = 0; i < 500; i++)
        assert_int_equal(per[i], 1);
}

static void test_unreachable(void **state)
{
    fixture *f = *state;
    /* A port that was free a moment ago: nothing listens there. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    snprintf(f->url, sizeof f->url, "https://127.0.0.1:%d", ntohs(sa.sin_port));
    f->ccfg.url = f->url;
    f->ccfg.max_connect_failures = 3;
    esim_error err = {{0}};
    assert_int_equal(esim_apns_client_new(f->base, &f->ccfg, collect, f->col, &f->client, &err),
                     ESIM_OK);
    push_n(f, 0, 10);
    run(f);
    assert_exactly_once(f, 10);
    for (unsigned i = 0; i < 10; i++) {
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_UNREACHABLE);
        assert_int_equal(f->col->r[i].attempts, 0);
        assert_non_null(strstr(f->col->r[i].reason, "refused"));
    }
}

static void test_goaway_reason_reported(void **state)
{
    fixture *f = *state;
    f->mcfg.goaway_every = 1;
    f->mcfg.delay_ms = 50; /* all four streams are open when the GOAWAY comes */
    f->ccfg.connections = 1;
    f->ccfg.max_attempts = 1;
    start(f, APNS_MOCK_PORT_TLS);
    push_n(f, 0, 4);
    run(f);
    assert_exactly_once(f, 4);
    int accepted = 0, refused = 0;
    for (unsigned i = 0; i < 4; i++) {
        if (f->col->r[i].outcome == APNS_OUTCOME_ACCEPTED) {
            accepted++;
        } else {
            assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_RETRY_EXHAUSTED);
            assert_non_null(strstr(f->col->r[i].reason, "Shutdown"));
            refused++;
        }
    }
    assert_int_equal(accepted, 1); /* only stream 1 was processed */
    assert_int_equal(refused, 3);
}

/* A listening socket nobody accepts on: TCP connects, TLS never starts. */
static void test_connect_timeout(void **state)
{
    fixture *f = *state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 16), 0);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    snprintf(f->url, sizeof f->url, "https://127.0.0.1:%d", ntohs(sa.sin_port));
    f->ccfg.url = f->url;
    f->ccfg.connect_timeout_ms = 150;
    f->ccfg.max_connect_failures = 2;
    assert_int_equal(esim_apns_client_new(f->base, &f->ccfg, collect, f->col, &f->client, NULL),
                     ESIM_OK);
    push_n(f, 0, 2);
    run(f);
    close(fd);
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_UNREACHABLE);
        assert_non_null(strstr(f->col->r[i].reason, "within 150 ms"));
    }
}

/* An HTTP/1.1 server (the mock's delivery port) where HTTP/2 was expected. */
static void test_not_http2(void **state)
{
    fixture *f = *state;
    f->mcfg.listen = NULL;
    f->mcfg.h2c_listen = "127.0.0.1:0";
    f->ccfg.auth = APNS_AUTH_NONE;
    f->ccfg.topic = "com.apple.mgmt.External.x";
    f->ccfg.max_connect_failures = 2;
    mock_start(&f->mt, &f->mcfg);
    snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d",
             apns_mock_port(f->mt.mock, APNS_MOCK_PORT_DELIVERY));
    f->ccfg.url = f->url;
    assert_int_equal(esim_apns_client_new(f->base, &f->ccfg, collect, f->col, &f->client, NULL),
                     ESIM_OK);
    push_n(f, 0, 2);
    run(f);
    for (unsigned i = 0; i < 2; i++)
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_UNREACHABLE);
}

static void test_untrusted_server(void **state)
{
    fixture *f = *state;
    /* The client trusts only a CA that did not sign the mock's certificate. */
    f->ccfg.ca_path = pki_path(&f->pki, "device-ca.pem");
    f->ccfg.max_connect_failures = 2;
    start(f, APNS_MOCK_PORT_TLS);
    push_n(f, 0, 3);
    run(f);
    for (unsigned i = 0; i < 3; i++) {
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_UNREACHABLE);
        assert_non_null(strstr(f->col->r[i].reason, "certificate"));
    }
}

/* An idle connection to a live peer gets PINGs, their ACKs come back and
 * the connection stays. The PING timeout is far beyond any scheduling delay:
 * with a short one (it was 500 ms) a busy machine that ran the mock's thread
 * late made a live connection look dead. The timeout itself is tested
 * against a peer that really stopped answering, below. */
static void test_ping_answered(void **state)
{
    fixture *f = *state;
    f->ccfg.idle_ping_ms = 50;
    f->ccfg.ping_timeout_ms = HANG_GUARD_MS;
    f->ccfg.connections = 1;
    start(f, APNS_MOCK_PORT_TLS);
    push_n(f, 0, 1);
    run(f);
    assert_int_equal(f->col->r[0].outcome, APNS_OUTCOME_ACCEPTED);
    /* A PING is sent only once the previous one was answered, so three sent
     * means at least two ACKs came back. */
    WAIT_STAT(f, pings_sent, 3);
    apns_stats s;
    esim_apns_client_stats(f->client, &s);
    assert_true(s.pings_sent >= 3);
    assert_int_equal(s.ping_timeouts, 0);
    assert_int_equal(s.connects, 1);
}

static void test_ping_timeout(void **state)
{
    fixture *f = *state;
    f->ccfg.idle_ping_ms = 50;
    f->ccfg.ping_timeout_ms = 200;
    f->ccfg.connections = 1;
    start(f, APNS_MOCK_PORT_TLS);
    push_n(f, 0, 1);
    run(f);
    assert_int_equal(f->col->r[0].outcome, APNS_OUTCOME_ACCEPTED);
    mock_pause(&f->mt); /* APNs stops answering, TCP stays up */
    WAIT_STAT(f, ping_timeouts, 1);
    apns_stats s;
    esim_apns_client_stats(f->client, &s);
    assert_true(s.pings_sent >= 1);
    assert_true(s.ping_timeouts >= 1);
}

static void test_stream_id_rollover(void **state)
{
    fixture *f = *state;
    f->ccfg.connections = 1;
    f->ccfg.max_stream_id = 21; /* ten streams per connection */
    start(f, APNS_MOCK_PORT_TLS);
    push_n(f, 0, 55);
    run(f);
    for (unsigned i = 0; i < 55; i++) {
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_ACCEPTED);
        assert_int_equal(f->col->r[i].attempts, 1);
    }
    apns_stats s;
    esim_apns_client_stats(f->client, &s);
    assert_true(s.rollovers >= 4); /* 55 streams, 11 per connection */
    assert_true(s.connects >= 5);
    assert_int_equal(s.refused_streams, 0);
}

static void test_h2c(void **state)
{
    fixture *f = *state;
    f->mcfg.listen = NULL;
    f->mcfg.h2c_listen = "127.0.0.1:0";
    f->ccfg.auth = APNS_AUTH_NONE;
    f->ccfg.topic = "com.apple.mgmt.External.h2c-test";
    start(f, APNS_MOCK_PORT_H2C);
    push_n(f, 0, 100);
    run(f);
    for (unsigned i = 0; i < 100; i++)
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_ACCEPTED);
}

static void write_p8(fixture *f, const char *name)
{
    esim_cert k = {0};
    esim_error err = {{0}};
    esim_cert_spec spec = {.common_name = "p8"};
    assert_int_equal(esim_cert_issue(&spec, NULL, &k, &err), ESIM_OK);
    char cert[64];
    snprintf(cert, sizeof cert, "%s.crt", name);
    assert_int_equal(esim_cert_save(&k, pki_path(&f->pki, cert), pki_path(&f->pki, name), &err),
                     ESIM_OK);
    esim_cert_clear(&k);
}

static void test_provider_token(void **state)
{
    fixture *f = *state;
    write_p8(f, "AuthKey.p8");
    f->mcfg.listen = NULL;
    f->mcfg.open_listen = "127.0.0.1:0";
    f->mcfg.token_key_path = pki_path(&f->pki, "AuthKey.p8");
    f->ccfg.auth = APNS_AUTH_TOKEN;
    f->ccfg.cert_path = f->ccfg.key_path = NULL;
    f->ccfg.p8_path = pki_path(&f->pki, "AuthKey.p8");
    f->ccfg.key_id = "ABC123DEFG";
    f->ccfg.team_id = "DEF123GHIJ";
    f->ccfg.topic = "com.apple.mgmt.External.token-test";
    start(f, APNS_MOCK_PORT_OPEN);
    push_n(f, 0, 200);
    run(f);
    for (unsigned i = 0; i < 200; i++)
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_ACCEPTED);
    apns_stats s;
    esim_apns_client_stats(f->client, &s);
    assert_int_equal(s.jwt_issued, 1); /* one token reused, never one per request */
    apns_mock_stats ms;
    esim_apns_client_free(f->client);
    f->client = NULL;
    mock_stop(&f->mt, &ms);
    f->mt.base = NULL;
    assert_int_equal(ms.distinct_jwts, 1);
}

static void test_provider_token_wrong_key(void **state)
{
    fixture *f = *state;
    write_p8(f, "AuthKey.p8");
    write_p8(f, "Other.p8");
    f->mcfg.listen = NULL;
    f->mcfg.open_listen = "127.0.0.1:0";
    f->mcfg.token_key_path = pki_path(&f->pki, "AuthKey.p8");
    f->ccfg.auth = APNS_AUTH_TOKEN;
    f->ccfg.p8_path = pki_path(&f->pki, "Other.p8");
    f->ccfg.key_id = "ABC123DEFG";
    f->ccfg.team_id = "DEF123GHIJ";
    f->ccfg.topic = "com.apple.mgmt.External.token-test";
    f->ccfg.max_in_flight = 1;
    f->ccfg.connections = 1;
    start(f, APNS_MOCK_PORT_OPEN);
    push_n(f, 0, 5);
    run(f);
    assert_int_equal(f->col->r[0].status, 403);
    assert_string_equal(f->col->r[0].reason, "InvalidProviderToken");
    for (unsigned i = 0; i < 5; i++)
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_CREDENTIAL_FAILED);
    assert_true(esim_apns_client_stopped(f->client, NULL));
}

static void test_free_cancels(void **state)
{
    fixture *f = *state;
    f->mcfg.delay_ms = 600000; /* no answer comes before the free, however slow the machine */
    start(f, APNS_MOCK_PORT_TLS);
    push_n(f, 0, 20);
    run_loop(f->base, NULL, NULL, 300);
    assert_int_equal(f->col->results, 0);
    assert_int_equal(esim_apns_client_pending(f->client), 20);
    esim_apns_client_free(f->client);
    f->client = NULL;
    assert_exactly_once(f, 20);
    for (unsigned i = 0; i < 20; i++)
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_CANCELED);
}

static void test_bad_input(void **state)
{
    fixture *f = *state;
    apns_client *c = NULL;
    esim_error err = {{0}};
    apns_config cfg = f->ccfg;
    cfg.url = "ftp://example.com";
    assert_int_equal(esim_apns_client_new(f->base, &cfg, collect, f->col, &c, &err), ESIM_EINVAL);
    assert_null(c);
    cfg.url = "https://127.0.0.1:99999";
    assert_int_equal(esim_apns_client_new(f->base, &cfg, collect, f->col, &c, &err), ESIM_EINVAL);
    cfg.url = "https://127.0.0.1:2197";
    cfg.cert_path = "/nonexistent/push.pem";
    assert_int_equal(esim_apns_client_new(f->base, &cfg, collect, f->col, &c, &err),
                     ESIM_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/push.pem"));
    cfg.cert_path = pki_path(&f->pki, "push.topic"); /* not a certificate */
    assert_int_equal(esim_apns_client_new(f->base, &cfg, collect, f->col, &c, &err), ESIM_ECRYPTO);
    cfg.cert_path = pki_path(&f->pki, "push.pem");
    cfg.key_path = pki_path(&f->pki, "server.key"); /* another certificate's key */
    assert_int_equal(esim_apns_client_new(f->base, &cfg, collect, f->col, &c, &err), ESIM_ECRYPTO);
    cfg.key_path = pki_path(&f->pki, "push.key");
    cfg.connections = 0;
    assert_int_equal(esim_apns_client_new(f->base, &cfg, collect, f->col, &c, &err), ESIM_EINVAL);
    cfg.connections = 2;
    cfg.p12_path = pki_path(&f->pki, "push.key"); /* not PKCS#12 */
    assert_int_equal(esim_apns_client_new(f->base, &cfg, collect, f->col, &c, &err), ESIM_ECRYPTO);
    /* Keys others may read are refused, naming the file and the fix (issue
     * 10 item 10): a PKCS#12, a PEM key, a provider token key. */
    cfg.p12_path = pki_path(&f->pki, "push.pem"); /* mode 0644 */
    assert_int_equal(esim_apns_client_new(f->base, &cfg, collect, f->col, &c, &err), ESIM_EAUTH);
    assert_non_null(strstr(err.msg, "chmod 600"));
    assert_non_null(strstr(err.msg, "push.pem"));
    cfg.p12_path = NULL;
    assert_int_equal(chmod(pki_path(&f->pki, "push.key"), 0640), 0);
    assert_int_equal(esim_apns_client_new(f->base, &cfg, collect, f->col, &c, &err), ESIM_EAUTH);
    assert_non_null(strstr(err.msg, "push.key"));
    assert_int_equal(chmod(pki_path(&f->pki, "push.key"), 0600), 0);
    write_p8(f, "Loose.p8");
    assert_int_equal(chmod(pki_path(&f->pki, "Loose.p8"), 0644), 0);
    apns_config tok = cfg;
    tok.auth = APNS_AUTH_TOKEN;
    tok.cert_path = tok.key_path = NULL;
    tok.p8_path = pki_path(&f->pki, "Loose.p8");
    tok.key_id = "ABC123DEFG";
    tok.team_id = "DEF123GHIJ";
    tok.topic = "com.apple.mgmt.External.token-test";
    assert_int_equal(esim_apns_client_new(f->base, &tok, collect, f->col, &c, &err), ESIM_EAUTH);
    assert_non_null(strstr(err.msg, "Loose.p8"));
    assert_null(c);
    assert_int_equal(esim_apns_client_new(f->base, &cfg, collect, f->col, &c, &err), ESIM_OK);
    apns_push p = {.token = "abc", .push_magic = "m"};
    assert_int_equal(esim_apns_client_push(c, &p, &err), ESIM_EINVAL);
    p.token = "zz00000000000000000000000000000000000000000000000000000000000000";
    assert_int_equal(esim_apns_client_push(c, &p, &err), ESIM_EINVAL);
    p.token = "0000000000000000000000000000000000000000000000000000000000000000";
    p.push_magic = "";
    assert_int_equal(esim_apns_client_push(c, &p, &err), ESIM_EINVAL);
    p.push_magic = "a\"b";
    assert_int_equal(esim_apns_client_push(c, &p, &err), ESIM_EINVAL);
    p.push_magic = "ok";
    p.apns_id = "not-a-uuid";
    assert_int_equal(esim_apns_client_push(c, &p, &err), ESIM_EINVAL);
    assert_int_equal(esim_apns_client_pending(c), 0);
    esim_apns_client_free(c);
    assert_int_equal(f->col->results, 0);
}

static void test_pkcs12(void **state)
{
    fixture *f = *state;
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "openssl pkcs12 -export -in '%s' -inkey '%s' -passout pass:s3cret -out '%s' "
             ">/dev/null 2>&1",
             pki_path(&f->pki, "push.pem"), pki_path(&f->pki, "push.key"),
             pki_path(&f->pki, "push.p12"));
    if (system(cmd) != 0)
        skip();
    /* It holds the private key: only its owner may read it. */
    assert_int_equal(chmod(pki_path(&f->pki, "push.p12"), 0600), 0);
    f->ccfg.cert_path = f->ccfg.key_path = NULL;
    f->ccfg.p12_path = pki_path(&f->pki, "push.p12");
    f->ccfg.p12_password = "wrong";
    apns_client *c = NULL;
    esim_error err = {{0}};
    f->ccfg.url = "https://127.0.0.1:2197";
    assert_int_equal(esim_apns_client_new(f->base, &f->ccfg, collect, f->col, &c, &err),
                     ESIM_ECRYPTO);
    assert_non_null(strstr(err.msg, "password"));
    f->ccfg.p12_password = "s3cret";
    start(f, APNS_MOCK_PORT_TLS);
    assert_string_equal(esim_apns_client_topic(f->client), f->pki.topic);
    push_n(f, 0, 10);
    run(f);
    for (unsigned i = 0; i < 10; i++)
        assert_int_equal(f->col->r[i].outcome, APNS_OUTCOME_ACCEPTED);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]); /* run one test by name while debugging */
    signal(SIGPIPE, SIG_IGN);            /* a peer closing a TLS socket must not kill us */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_accepted_and_delivered_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_dead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_until_accepted_none_duplicated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_exhausted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejected_bad_expiration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_403_stops_credential, setup, teardown),
        cmocka_unit_test_setup_teardown(test_goaway_mid_burst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settings_one_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settings_drop_after_reject, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unreachable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_untrusted_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_goaway_reason_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_http2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ping_answered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ping_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_id_rollover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2c, setup, teardown),
        cmocka_unit_test_setup_teardown(test_provider_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_provider_token_wrong_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_cancels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pkcs12, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
