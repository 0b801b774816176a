/*
 * cmd_apns.c — `esim-mdm push`: sends MDM pushes from a token file through
 * the APNs client and prints one JSON line per push plus a summary; and
 * `esim-mdm apns-mock`: runs the APNs mock until interrupted.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "apns/apns_mock.h"
#include "cli/cli.h"
#include "cli/options.h"

/* ---- help texts ------------------------------------------------------------ */

static const char push_help[] =
    "usage: esim-mdm push --apns https://HOST:PORT --cert PEM --key PEM --tokens FILE\n"
    "                     [--ca PEM] [--topic TOPIC] [--connections N] [--concurrency N]\n"
    "\n"
    "Wakes MDM devices: sends one APNs push per line of FILE, each with the body\n"
    "{\"mdm\":\"<PushMagic>\"} and apns-push-type mdm, over long-lived HTTP/2\n"
    "connections. A device that gets the push checks in with its MDM server.\n"
    "\n"
    "FILE holds one `<hex token> <push magic>` per line (the Token and PushMagic\n"
    "of the device's TokenUpdate); blank lines and lines starting with # are\n"
    "skipped. A bad line is reported on stderr with its number; the others are\n"
    "still sent.\n"
    "\n"
    "options:\n"
    "  --apns URL            https://HOST[:PORT] of APNs: api.push.apple.com:443, or\n"
    "                        api.sandbox.push.apple.com for development devices, or an\n"
    "                        `esim-mdm apns-mock`; http://HOST:PORT speaks h2c (the mock's\n"
    "                        --h2c-listen port; no certificate, give --topic)\n"
    "  --cert PEM            the MDM push certificate (from Apple's push certificate\n"
    "                        portal); its subject UID is the topic\n"
    "  --key PEM             its private key (default: inside --cert)\n"
    "  --p12 FILE            instead of --cert/--key: a PKCS#12 file ...\n"
    "  --p12-password PW     ... and its password\n"
    "  --p8 FILE --key-id ID --team-id ID\n"
    "                        instead of a certificate: token authentication (ES256\n"
    "                        JWT; apps only, MDM needs a certificate)\n"
    "  --ca PEM              CA certificates the server must chain to (default: the\n"
    "                        system store, right for Apple)\n"
    "  --topic TOPIC         apns-topic (default: the certificate's UID,\n"
    "                        com.apple.mgmt.External.<uuid>)\n"
    "  --connections N       HTTP/2 connections to keep open (default 2)\n"
    "  --concurrency N       streams in flight per connection (default 1000; the\n"
    "                        server's SETTINGS_MAX_CONCURRENT_STREAMS caps it)\n"
    "  --attempts N          sends per push before giving up on 429/5xx/lost\n"
    "                        connections (default 5)\n"
    "  --expiration SECONDS  apns-expiration (0: deliver now or never)\n"
    "  --quiet               print only the summary line\n"
    "\n"
    "output: one JSON line per push\n"
    "  {\"line\":3,\"token\":\"…\",\"outcome\":\"accepted\",\"status\":200,\"reason\":\"\",\n"
    "   \"apns_id\":\"…\",\"attempts\":1}\n"
    "outcome is accepted, token_dead (410 or BadDeviceToken: stop pushing to it until\n"
    "the device sends a new token), rejected (another 4xx), retry_exhausted,\n"
    "credential_failed (a 403: check the certificate) or unreachable; then a summary\n"
    "  {\"summary\":{\"pushes\":…,\"accepted\":…,…,\"pushes_per_second\":…}}\n"
    "\n"
    "example:\n"
    "  esim-mdm push --apns https://api.push.apple.com --cert push.pem --key push.key \\\n"
    "                --tokens tokens.txt\n"
    "\n"
    "exit status: 0 every push accepted, 1 some push not accepted or a bad line,\n"
    "2 bad options or nothing could be sent (bad certificate, key or token file).\n";

static const char mock_help[] =
    "usage: esim-mdm apns-mock --listen ADDR:PORT --tls-cert PEM --tls-key PEM\n"
    "                          --client-ca PEM [options]\n"
    "\n"
    "Runs a stand-in for Apple's push service on this machine. It answers the APNs\n"
    "provider API (HTTP/2, POST /3/device/<token>) with the statuses and reasons\n"
    "APNs uses, and hands each accepted MDM push to the simulated device that\n"
    "registered its token (see --delivery-listen). Stop it with Ctrl-C.\n"
    "\n"
    "ports (give at least one of the first three; port 0 picks a free one):\n"
    "  --listen ADDR:PORT        TLS with client certificates, as APNs: only clients\n"
    "                            whose certificate chains to --client-ca, pushing to\n"
    "                            the topic in that certificate's subject UID\n"
    "  --open-listen ADDR:PORT   TLS without client certificates (load generators)\n"
    "  --h2c-listen ADDR:PORT    cleartext HTTP/2, prior knowledge (h2load)\n"
    "  --delivery-listen ADDR:PORT\n"
    "                            HTTP/1.1 delivery channel for device simulators:\n"
    "                            POST /tokens, GET /deliveries, POST /dead-tokens,\n"
    "                            GET /stats (docs/apns-mock.md)\n"
    "  --tls-cert PEM --tls-key PEM\n"
    "                            the server certificate and key (TLS ports)\n"
    "  --client-ca PEM           CA the push certificates chain to (--listen)\n"
    "\n"
    "behaviour:\n"
    "  --dead-tokens FILE        tokens (one per line) answered 410 Unregistered\n"
    "  --topic TOPIC             topic required on the open and h2c ports (default any)\n"
    "  --token-key PEM           open/h2c ports: require provider tokens (JWT) signed by\n"
    "                            this key (.p8 or public key PEM)\n"
    "  --delivery-cap N          undelivered pushes one channel may hold (default\n"
    "                            100000); beyond, pushes for it get 429\n"
    "\n"
    "fault injection:\n"
    "  --fail-rate LIST          answer a share of valid pushes with an error, e.g.\n"
    "                            503=0.1,429=0.05 (statuses 400..599)\n"
    "  --goaway-every N          GOAWAY (reason Shutdown) after every N requests on a\n"
    "                            connection; later streams are refused\n"
    "  --max-streams N           SETTINGS_MAX_CONCURRENT_STREAMS (default 1000)\n"
    "  --drop-streams-on-reject  lower it to 1 after a connection's first error answer\n"
    "  --delay-ms N              hold every answer N ms\n"
    "  --reset-every N           drop a connection without GOAWAY at its Nth request\n"
    "  --seed N                  seed for --fail-rate draws (default random)\n"
    "  --benchmark               accept everything as cheaply as possible (no checks,\n"
    "                            no delivery)\n"
    "\n"
    "On start it prints one JSON line with the bound ports, e.g.\n"
    "  {\"listening\":{\"tls\":2197,\"open\":0,\"h2c\":0,\"delivery\":2198}}\n"
    "and on exit a line with its counters.\n"
    "\n"
    "example:\n"
    "  esim-mdm pki --dir pki\n"
    "  esim-mdm apns-mock --listen 127.0.0.1:2197 --tls-cert pki/server.pem \\\n"
    "      --tls-key pki/server.key --client-ca pki/ca.pem --delivery-listen 127.0.0.1:2198\n"
    "\n"
    "exit status: 0 stopped by a signal, 1 failed at run time, 2 bad options.\n";

/* ---- push ----------------------------------------------------------------- */

typedef struct {
    struct event_base *base;
    apns_client *client;
    FILE *tokens;
    const char *tokens_path;
    int lineno;
    bool eof;
    bool quiet;
    bool has_expiration;
    int64_t expiration;
    size_t window;    /* most pushes handed to the client at once */
    size_t submitted; /* accepted by esim_apns_client_push */
    size_t finished;
    size_t bad_lines;
    size_t counts[APNS_OUTCOME_CANCELED + 1];
    int64_t started_ms;
    int64_t last_result_ms;
    char *line;
    size_t line_cap;
} push_run;

static void push_feed(push_run *r);

static void push_result(const apns_result *res, void *arg)
{
    push_run *r = arg;
    r->finished++;
    r->counts[res->outcome]++;
    r->last_result_ms = esim_mono_ms();
    if (!r->quiet) {
        json_t *j = json_pack("{s:I,s:s,s:s,s:i,s:s,s:s,s:i}", "line",
                              (json_int_t)(intptr_t)res->user_data, "token", res->token, "outcome",
                              esim_apns_outcome_name(res->outcome), "status", res->status, "reason",
                              res->reason, "apns_id", res->apns_id, "attempts", res->attempts);
        if (j && res->timestamp_ms)
            json_object_set_new(j, "timestamp", json_integer(res->timestamp_ms));
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        if (text)
            printf("%s\n", text);
        free(text);
        json_decref(j);
    }
    push_feed(r);
    if (r->eof && r->finished == r->submitted)
        event_base_loopbreak(r->base);
}

/* One line of the token file: "<hex token> <push magic>". */
static bool push_line(push_run *r, char *line)
{
    char *p = line + strspn(line, " \t");
    size_t n = strcspn(p, "\r\n");
    p[n] = '\0';
    if (*p == '\0' || *p == '#')
        return false;
    char *token = p;
    size_t tl = strcspn(token, " \t");
    char *magic = token + tl;
    if (*magic)
        *magic++ = '\0';
    magic += strspn(magic, " \t");
    size_t ml = strlen(magic);
    while (ml && (magic[ml - 1] == ' ' || magic[ml - 1] == '\t'))
        magic[--ml] = '\0';
    esim_error err = {{0}};
    if (*magic == '\0' || strpbrk(magic, " \t")) {
        fprintf(stderr, "esim-mdm push: %s line %d: expected `<hex token> <push magic>`\n",
                r->tokens_path, r->lineno);
        r->bad_lines++;
        return false;
    }
    apns_push push = {.token = token,
                      .push_magic = magic,
                      .has_expiration = r->has_expiration,
                      .expiration = r->expiration,
                      .user_data = (void *)(intptr_t)r->lineno};
    esim_err e = esim_apns_client_push(r->client, &push, &err);
    if (e == ESIM_OK) {
        r->submitted++;
        return true;
    }
    if (e == ESIM_EINVAL) {
        fprintf(stderr, "esim-mdm push: %s line %d: %s\n", r->tokens_path, r->lineno, err.msg);
        r->bad_lines++;
        return false;
    }
    /* The credential was stopped or memory ran out: read no further. */
    fprintf(stderr, "esim-mdm push: %s\n", err.msg);
    r->eof = true;
    return false;
}

/* Keeps up to |window| pushes in the client, reading the file as answers
 * come back, so a million-line file never sits in memory at once. */
static void push_feed(push_run *r)
{
    while (!r->eof && r->submitted - r->finished < r->window) {
        errno = 0;
        ssize_t n = getline(&r->line, &r->line_cap, r->tokens);
        if (n < 0) {
            if (ferror(r->tokens)) {
                fprintf(stderr, "esim-mdm push: cannot read '%s': %s\n", r->tokens_path,
                        strerror(errno ? errno : EIO));
                r->bad_lines++;
            }
            r->eof = true;
            break;
        }
        r->lineno++;
        push_line(r, r->line);
    }
}

static void push_summary(push_run *r)
{
    double secs = (double)(r->last_result_ms - r->started_ms) / 1000.0;
    if (secs <= 0)
        secs = 0.001;
    apns_stats s;
    esim_apns_client_stats(r->client, &s);
    json_t *j = json_pack(
        "{s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f}}", "summary", "pushes",
        (json_int_t)r->finished, "accepted", (json_int_t)r->counts[APNS_OUTCOME_ACCEPTED],
        "token_dead", (json_int_t)r->counts[APNS_OUTCOME_TOKEN_DEAD], "rejected",
        (json_int_t)r->counts[APNS_OUTCOME_REJECTED], "retry_exhausted",
        (json_int_t)r->counts[APNS_OUTCOME_RETRY_EXHAUSTED], "credential_failed",
        (json_int_t)r->counts[APNS_OUTCOME_CREDENTIAL_FAILED], "unreachable",
        (json_int_t)r->counts[APNS_OUTCOME_UNREACHABLE], "bad_lines", (json_int_t)r->bad_lines,
        "retries", (json_int_t)s.retries, "connections", (json_int_t)s.connects, "goaways",
        (json_int_t)s.goaways, "seconds", secs, "pushes_per_second", (double)r->finished / secs);
    char *text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(6));
    printf("%s\n", text);
    free(text);
    json_decref(j);
}

enum {
    O_APNS = 256,
    O_CERT,
    O_KEY,
    O_P12,
    O_P12_PASSWORD,
    O_P8,
    O_KEY_ID,
    O_TEAM_ID,
    O_CA,
    O_TOPIC,
    O_TOKENS,
    O_CONNECTIONS,
    O_CONCURRENCY,
    O_ATTEMPTS,
    O_EXPIRATION,
    O_QUIET,
};

int cmd_push(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(push_help, stdout);
        return CLI_EXIT_OK;
    }
    static const cli_option options[] = {
        {"apns", true, O_APNS},
        {"cert", true, O_CERT},
        {"key", true, O_KEY},
        {"p12", true, O_P12},
        {"p12-password", true, O_P12_PASSWORD},
        {"p8", true, O_P8},
        {"key-id", true, O_KEY_ID},
        {"team-id", true, O_TEAM_ID},
        {"ca", true, O_CA},
        {"topic", true, O_TOPIC},
        {"tokens", true, O_TOKENS},
        {"connections", true, O_CONNECTIONS},
        {"concurrency", true, O_CONCURRENCY},
        {"attempts", true, O_ATTEMPTS},
        {"expiration", true, O_EXPIRATION},
        {"quiet", false, O_QUIET},
        {NULL, false, 0},
    };
    apns_config cfg;
    esim_apns_config_init(&cfg);
    cfg.max_connect_failures = 3;
    const char *tokens_path = NULL;
    bool quiet = false;
    bool has_exp = false;
    long exp = 0, v;
    int c;
    cli_parser p;
    cli_parser_init(&p, "push", options, argc, argv, 1);
    while ((c = cli_next(&p)) != CLI_END) {
        switch (c) {
        case O_APNS:
            cfg.url = p.value;
            break;
        case O_CERT:
            cfg.cert_path = p.value;
            break;
        case O_KEY:
            cfg.key_path = p.value;
            break;
        case O_P12:
            cfg.p12_path = p.value;
            break;
        case O_P12_PASSWORD:
            cfg.p12_password = p.value;
            break;
        case O_P8:
            cfg.p8_path = p.value;
            cfg.auth = APNS_AUTH_TOKEN;
            break;
        case O_KEY_ID:
            cfg.key_id = p.value;
            break;
        case O_TEAM_ID:
            cfg.team_id = p.value;
            break;
        case O_CA:
            cfg.ca_path = p.value;
            break;
        case O_TOPIC:
            cfg.topic = p.value;
            break;
        case O_TOKENS:
            tokens_path = p.value;
            break;
        case O_CONNECTIONS:
            if (!cli_parse_long(p.value, 1, 64, &v))
                return cli_bad_value(&p, "must be 1 to 64");
            cfg.connections = (int)v;
            break;
        case O_CONCURRENCY:
            if (!cli_parse_long(p.value, 1, 100000, &v))
                return cli_bad_value(&p, "must be 1 to 100000");
            cfg.max_in_flight = (int)v;
            break;
        case O_ATTEMPTS:
            if (!cli_parse_long(p.value, 1, 100, &v))
                return cli_bad_value(&p, "must be 1 to 100");
            cfg.max_attempts = (int)v;
            break;
        case O_EXPIRATION:
            if (!cli_parse_long(p.value, 0, LONG_MAX, &exp))
                return cli_bad_value(&p, "must be seconds since 1970 or 0");
            has_exp = true;
            break;
        case O_QUIET:
            quiet = true;
            break;
        case CLI_ARG:
            return cli_unexpected("push", p.value);
        default:
            return CLI_EXIT_USAGE;
        }
    }
    if (cfg.url == NULL)
        return cli_missing("push", "--apns https://HOST:PORT");
    if (tokens_path == NULL)
        return cli_missing("push", "--tokens FILE");
    if (cfg.auth == APNS_AUTH_CERTIFICATE && !cfg.cert_path && !cfg.p12_path) {
        /* h2c has no TLS, hence no certificate: only the mock's h2c port
         * takes pushes like that (with --topic). */
        if (strncmp(cfg.url, "http://", 7) != 0)
            return cli_usage_error(
                "push: give the push certificate: --cert PEM --key PEM (or --p12)");
        if (cfg.topic == NULL)
            return cli_usage_error("push: an http:// (h2c) URL has no certificate; give --topic");
        cfg.auth = APNS_AUTH_NONE;
    }
    push_run r = {
        .tokens_path = tokens_path, .quiet = quiet, .has_expiration = has_exp, .expiration = exp};
    r.tokens = fopen(tokens_path, "r");
    if (r.tokens == NULL)
        return cli_usage_error("push: cannot open token file '%s': %s", tokens_path,
                               strerror(errno));
    signal(SIGPIPE, SIG_IGN);
    r.base = cli_event_base_new();
    esim_error err = {{0}};
    esim_err e = r.base ? esim_apns_client_new(r.base, &cfg, push_result, &r, &r.client, &err)
                        : esim_fail(&err, ESIM_ENOMEM, "cannot make an event loop");
    if (e != ESIM_OK) {
        fclose(r.tokens);
        if (r.base)
            event_base_free(r.base);
        fprintf(stderr, "esim-mdm push: %s\n", err.msg);
        return e == ESIM_ENOMEM ? CLI_EXIT_FAIL : CLI_EXIT_USAGE;
    }
    r.window = (size_t)cfg.connections * (size_t)cfg.max_in_flight * 2;
    r.started_ms = r.last_result_ms = esim_mono_ms();
    push_feed(&r);
    if (r.submitted > r.finished)
        event_base_dispatch(r.base);
    push_summary(&r);
    fflush(stdout);
    esim_apns_client_free(r.client);
    event_base_loop(r.base, EVLOOP_NONBLOCK);
    event_base_free(r.base);
    fclose(r.tokens);
    free(r.line);
    if (r.submitted == 0)
        return r.bad_lines ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    bool all_ok = r.counts[APNS_OUTCOME_ACCEPTED] == r.submitted && r.bad_lines == 0;
    return all_ok ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

/* ---- apns-mock ------------------------------------------------------------ */

static void mock_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

static void mock_print_stats(const apns_mock_stats *s)
{
    json_t *j =
        json_pack("{s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}}", "stats", "connections",
                  (json_int_t)s->connections, "tls_refused", (json_int_t)s->tls_refused, "requests",
                  (json_int_t)s->requests, "accepted", (json_int_t)s->accepted, "injected",
                  (json_int_t)s->injected, "refused", (json_int_t)s->refused, "goaways",
                  (json_int_t)s->goaways, "resets", (json_int_t)s->resets, "delivered",
                  (json_int_t)s->delivered, "undelivered", (json_int_t)s->undelivered,
                  "max_concurrent", (json_int_t)s->max_concurrent);
    char *text = json_dumps(j, JSON_COMPACT);
    printf("%s\n", text);
    free(text);
    json_decref(j);
}

enum {
    M_LISTEN = 256,
    M_OPEN,
    M_H2C,
    M_DELIVERY,
    M_CERT,
    M_KEY,
    M_CLIENT_CA,
    M_DEAD,
    M_TOPIC,
    M_TOKEN_KEY,
    M_CAP,
    M_FAIL,
    M_GOAWAY,
    M_MAX_STREAMS,
    M_DROP,
    M_DELAY,
    M_RESET,
    M_SEED,
    M_BENCH,
};

int cmd_apns_mock(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(mock_help, stdout);
        return CLI_EXIT_OK;
    }
    static const cli_option options[] = {
        {"listen", true, M_LISTEN},
        {"open-listen", true, M_OPEN},
        {"h2c-listen", true, M_H2C},
        {"delivery-listen", true, M_DELIVERY},
        {"tls-cert", true, M_CERT},
        {"tls-key", true, M_KEY},
        {"client-ca", true, M_CLIENT_CA},
        {"dead-tokens", true, M_DEAD},
        {"topic", true, M_TOPIC},
        {"token-key", true, M_TOKEN_KEY},
        {"delivery-cap", true, M_CAP},
        {"fail-rate", true, M_FAIL},
        {"goaway-every", true, M_GOAWAY},
        {"max-streams", true, M_MAX_STREAMS},
        {"drop-streams-on-reject", false, M_DROP},
        {"delay-ms", true, M_DELAY},
        {"reset-every", true, M_RESET},
        {"seed", true, M_SEED},
        {"benchmark", false, M_BENCH},
        {NULL, false, 0},
    };
    apns_mock_config cfg;
    apns_mock_config_init(&cfg);
    esim_error err = {{0}};
    long v;
    int c;
    cli_parser p;
    cli_parser_init(&p, "apns-mock", options, argc, argv, 1);
    while ((c = cli_next(&p)) != CLI_END) {
        switch (c) {
        case M_LISTEN:
            cfg.listen = p.value;
            break;
        case M_OPEN:
            cfg.open_listen = p.value;
            break;
        case M_H2C:
            cfg.h2c_listen = p.value;
            break;
        case M_DELIVERY:
            cfg.delivery_listen = p.value;
            break;
        case M_CERT:
            cfg.tls_cert = p.value;
            break;
        case M_KEY:
            cfg.tls_key = p.value;
            break;
        case M_CLIENT_CA:
            cfg.client_ca = p.value;
            break;
        case M_DEAD:
            cfg.dead_tokens_path = p.value;
            break;
        case M_TOPIC:
            cfg.topic = p.value;
            break;
        case M_TOKEN_KEY:
            cfg.token_key_path = p.value;
            break;
        case M_CAP:
            if (!cli_parse_long(p.value, 1, 100000000, &v))
                return cli_bad_value(&p, "must be 1 to 100000000");
            cfg.delivery_cap = (size_t)v;
            break;
        case M_FAIL:
            if (apns_mock_parse_fail_rates(&cfg, p.value, &err) != ESIM_OK)
                return cli_bad_value(&p, err.msg);
            break;
        case M_GOAWAY:
            if (!cli_parse_long(p.value, 1, 1000000000, &v))
                return cli_bad_value(&p, "must be a positive number");
            cfg.goaway_every = (unsigned)v;
            break;
        case M_MAX_STREAMS:
            if (!cli_parse_long(p.value, 1, 1000000, &v))
                return cli_bad_value(&p, "must be 1 to 1000000");
            cfg.max_streams = (unsigned)v;
            break;
        case M_DROP:
            cfg.drop_streams_on_reject = true;
            break;
        case M_DELAY:
            if (!cli_parse_long(p.value, 0, 600000, &v))
                return cli_bad_value(&p, "must be 0 to 600000");
            cfg.delay_ms = (unsigned)v;
            break;
        case M_RESET:
            if (!cli_parse_long(p.value, 1, 1000000000, &v))
                return cli_bad_value(&p, "must be a positive number");
            cfg.reset_every = (unsigned)v;
            break;
        case M_SEED:
            if (!cli_parse_long(p.value, 0, LONG_MAX, &v))
                return cli_bad_value(&p, "must be a number");
            cfg.seed = (uint64_t)v;
            break;
        case M_BENCH:
            cfg.benchmark = true;
            break;
        case CLI_ARG:
            return cli_unexpected("apns-mock", p.value);
        default:
            return CLI_EXIT_USAGE;
        }
    }
    if (!cfg.listen && !cfg.open_listen && !cfg.h2c_listen)
        return cli_usage_error("apns-mock: give --listen ADDR:PORT (or --open-listen / "
                               "--h2c-listen); see --help");
    if (cfg.listen && (!cfg.tls_cert || !cfg.tls_key || !cfg.client_ca))
        return cli_usage_error("apns-mock: --listen needs --tls-cert, --tls-key and --client-ca "
                               "(`esim-mdm pki` makes them)");
    if (cfg.open_listen && (!cfg.tls_cert || !cfg.tls_key))
        return cli_usage_error("apns-mock: --open-listen needs --tls-cert and --tls-key");

    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = cli_event_base_new();
    if (base == NULL) {
        fprintf(stderr, "esim-mdm apns-mock: cannot make an event loop\n");
        return CLI_EXIT_FAIL;
    }
    apns_mock *mock = NULL;
    esim_err e = apns_mock_new(base, &cfg, &mock, &err);
    if (e != ESIM_OK) {
        event_base_free(base);
        fprintf(stderr, "esim-mdm apns-mock: %s\n", err.msg);
        return e == ESIM_EIO || e == ESIM_ENOMEM ? CLI_EXIT_FAIL : CLI_EXIT_USAGE;
    }
    struct event *sigint = evsignal_new(base, SIGINT, mock_signal, base);
    struct event *sigterm = evsignal_new(base, SIGTERM, mock_signal, base);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    printf("{\"listening\":{\"tls\":%d,\"open\":%d,\"h2c\":%d,\"delivery\":%d}}\n",
           apns_mock_port(mock, APNS_MOCK_PORT_TLS), apns_mock_port(mock, APNS_MOCK_PORT_OPEN),
           apns_mock_port(mock, APNS_MOCK_PORT_H2C), apns_mock_port(mock, APNS_MOCK_PORT_DELIVERY));
    fflush(stdout);
    event_base_dispatch(base);
    apns_mock_stats stats;
    apns_mock_stats_get(mock, &stats);
    mock_print_stats(&stats);
    apns_mock_free(mock);
    event_free(sigint);
    event_free(sigterm);
    event_base_loop(base, EVLOOP_NONBLOCK);
    event_base_free(base);
    return CLI_EXIT_OK;
}
