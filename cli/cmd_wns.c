/*
 * cmd_wns.c — `esim-mdm wns-mock`: runs the WNS mock (wns/wns_mock.h) until
 * interrupted, as `esim-mdm apns-mock` runs the APNs mock.
 */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <event2/event.h>
#include <jansson.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "wns/wns_mock.h"

static const char wns_help[] =
    "usage: esim-mdm wns-mock --listen ADDR:PORT --tls-cert PEM --tls-key PEM\n"
    "                         [--delivery-listen ADDR:PORT] [options]\n"
    "\n"
    "Runs a stand-in for the Windows Push Notification Services on loopback:\n"
    "the OAuth token endpoint (POST any path, form grant_type=client_credentials,\n"
    "client_id, client_secret, scope=notify.windows.com) and channel URIs\n"
    "(https://HOST/?token=...) that take raw notifications (X-WNS-Type: wns/raw,\n"
    "Content-Type: application/octet-stream, Authorization: Bearer TOKEN) and\n"
    "deliver them to the simulated Windows PCs of `esim-mdm devsim`.\n"
    "\n"
    "options:\n"
    "  --listen ADDR:PORT        HTTPS port (token endpoint and channel URIs); port 0 = any\n"
    "  --tls-cert PEM --tls-key PEM   its certificate (the test PKI's server.pem/server.key)\n"
    "  --delivery-listen ADDR:PORT    HTTP port for device simulators: POST /channels,\n"
    "                            GET /deliveries, POST /expire, POST /expire-tokens,\n"
    "                            GET /stats (docs/wns-mock.md)\n"
    "  --public-host HOST[:PORT] host written into channel URIs (default 127.0.0.1:PORT)\n"
    "  --client-id ID            the only client_id the token endpoint accepts\n"
    "  --client-secret SECRET    the only client_secret it accepts (default: any)\n"
    "  --token-ttl SECONDS       access tokens' expires_in (default 86400)\n"
    "  --channel-ttl SECONDS     channel URIs' lifetime (default 2592000, 30 days)\n"
    "  --fail-rate 503=0.1,406=0.05  answer that share of valid notifications with that\n"
    "                            status (406 = throttled)\n"
    "  --seed N                  makes the fault draws repeatable\n"
    "  --delivery-cap N          undelivered notifications one channel holds (default\n"
    "                            100000); beyond it: 406\n"
    "\n"
    "It prints {\"listening\":{\"https\":P,\"delivery\":Q}} once bound and its counters\n"
    "as one JSON line when stopped (SIGINT/SIGTERM).\n"
    "\n"
    "example:\n"
    "  esim-mdm wns-mock --listen 127.0.0.1:2443 --tls-cert pki/server.pem \\\n"
    "      --tls-key pki/server.key --delivery-listen 127.0.0.1:2444\n";

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

enum {
    W_LISTEN = 256,
    W_DELIVERY,
    W_CERT,
    W_KEY,
    W_HOST,
    W_ID,
    W_SECRET,
    W_TOKEN_TTL,
    W_CHANNEL_TTL,
    W_FAIL,
    W_SEED,
    W_CAP,
};

int cmd_wns_mock(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(wns_help, stdout);
        return CLI_EXIT_OK;
    }
    static const cli_option options[] = {
        {"listen", true, W_LISTEN},
        {"delivery-listen", true, W_DELIVERY},
        {"tls-cert", true, W_CERT},
        {"tls-key", true, W_KEY},
        {"public-host", true, W_HOST},
        {"client-id", true, W_ID},
        {"client-secret", true, W_SECRET},
        {"token-ttl", true, W_TOKEN_TTL},
        {"channel-ttl", true, W_CHANNEL_TTL},
        {"fail-rate", true, W_FAIL},
        {"seed", true, W_SEED},
        {"delivery-cap", true, W_CAP},
        {NULL, false, 0},
    };
    wns_mock_config cfg;
    wns_mock_config_init(&cfg);
    esim_error err = {{0}};
    long v;
    int c;
    cli_parser p;
    cli_parser_init(&p, "wns-mock", options, argc, argv, 1);
    while ((c = cli_next(&p)) != CLI_END) {
        switch (c) {
        case W_LISTEN:
            cfg.listen = p.value;
            break;
        case W_DELIVERY:
            cfg.delivery_listen = p.value;
            break;
        case W_CERT:
            cfg.tls_cert = p.value;
            break;
        case W_KEY:
            cfg.tls_key = p.value;
            break;
        case W_HOST:
            cfg.public_host = p.value;
            break;
        case W_ID:
            cfg.client_id = p.value;
            break;
        case W_SECRET:
            cfg.client_secret = p.value;
            break;
        case W_TOKEN_TTL:
        case W_CHANNEL_TTL:
            if (!cli_parse_long(p.value, 1, 365L * 86400, &v))
                return cli_bad_value(&p, "must be 1 to 31536000 seconds");
            if (c == W_TOKEN_TTL)
                cfg.token_ttl_s = (unsigned)v;
            else
                cfg.channel_ttl_s = (unsigned)v;
            break;
        case W_FAIL:
            if (wns_mock_parse_fail_rates(&cfg, p.value, &err) != ESIM_OK)
                return cli_bad_value(&p, err.msg);
            break;
        case W_SEED:
            if (!cli_parse_long(p.value, 0, LONG_MAX, &v))
                return cli_bad_value(&p, "must be a number");
            cfg.seed = (uint64_t)v;
            break;
        case W_CAP:
            if (!cli_parse_long(p.value, 1, 100000000, &v))
                return cli_bad_value(&p, "must be 1 to 100000000");
            cfg.delivery_cap = (size_t)v;
            break;
        case CLI_ARG:
            return cli_unexpected("wns-mock", p.value);
        default:
            return CLI_EXIT_USAGE;
        }
    }
    if (!cfg.listen)
        return cli_usage_error("wns-mock: give --listen ADDR:PORT; see --help");
    if (!cfg.tls_cert || !cfg.tls_key)
        return cli_usage_error("wns-mock: --listen needs --tls-cert and --tls-key (`esim-mdm "
                               "pki` makes them)");
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = cli_event_base_new();
    if (!base) {
        fprintf(stderr, "esim-mdm wns-mock: cannot make an event loop\n");
        return CLI_EXIT_FAIL;
    }
    wns_mock *mock = NULL;
    esim_err e = wns_mock_new(base, &cfg, &mock, &err);
    if (e != ESIM_OK) {
        event_base_free(base);
        fprintf(stderr, "esim-mdm wns-mock: %s\n", err.msg);
        return e == ESIM_EIO || e == ESIM_ENOMEM ? CLI_EXIT_FAIL : CLI_EXIT_USAGE;
    }
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    printf("{\"listening\":{\"https\":%d,\"delivery\":%d}}\n",
           wns_mock_port(mock, WNS_MOCK_PORT_HTTPS), wns_mock_port(mock, WNS_MOCK_PORT_DELIVERY));
    fflush(stdout);
    event_base_dispatch(base);
    wns_mock_stats s;
    wns_mock_stats_get(mock, &s);
    json_t *j = json_pack("{s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}}", "stats",
                          "token_requests", (json_int_t)s.token_requests, "tokens_issued",
                          (json_int_t)s.tokens_issued, "notifications", (json_int_t)s.notifications,
                          "accepted", (json_int_t)s.accepted, "unauthorized",
                          (json_int_t)s.unauthorized, "gone", (json_int_t)s.gone, "not_found",
                          (json_int_t)s.not_found, "bad_request", (json_int_t)s.bad_request,
                          "throttled", (json_int_t)s.throttled, "injected", (json_int_t)s.injected,
                          "channels", (json_int_t)s.channels, "delivered", (json_int_t)s.delivered);
    char *text = json_dumps(j, JSON_COMPACT);
    printf("%s\n", text ? text : "{}");
    free(text);
    json_decref(j);
    wns_mock_free(mock);
    event_free(sigint);
    event_free(sigterm);
    event_base_loop(base, EVLOOP_NONBLOCK);
    event_base_free(base);
    return CLI_EXIT_OK;
}
