/*
 * cmd_service.c — `esim-mdm serve` (the MDM service, options from the
 * command line and/or a config file) and the admin subcommands that drive
 * it over its JSON API: enqueue, status, devices, cancel.
 */
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <event2/event.h>
#include <jansson.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "dashboard/dashboard.h"
#include "cli/http_client.h"
#include "campaign/campaign.h"
#include "service/service.h"

/* ---- serve -------------------------------------------------------------------------- */

static const char serve_usage[] =
    "usage: esim-mdm serve [options]\n"
    "\n"
    "Runs the MDM service: PUT /mdm and /checkin for Apple devices, POST\n"
    "/ManagementServer/MDM.svc for Windows PCs (OMA-DM; needs TLS and --device-ca), the\n"
    "JSON admin API under /v1/ (docs/api.md), /metrics and /healthz.\n"
    "\n"
    "  --listen ADDR:PORT        where to listen (default 127.0.0.1:8080; port 0 = any free one)\n"
    "  --port-file F             write the bound port to F once listening\n"
    "  --data-dir DIR            state directory (default ./esim-mdm-data)\n"
    "  --store SPEC              sqlite:PATH (default DIR/esim-mdm.db), or a PostgreSQL URI\n"
    "                            (postgres://user@host/db, postgresql://...)\n"
    "  --store-pool N            PostgreSQL: N worker connections run device check-ins and\n"
    "                            results off the event loop (default 4; 0: on the loop)\n"
    "  --store-sync MODE         group (default): answers wait for one shared fsync per loop "
    "turn;\n"
    "                            full: fsync per commit; normal: no fsync (survives crashes, not "
    "power cuts)\n"
    "  --api-token-file F        bearer token for /v1/ (default: DIR/api-token, made if missing);\n"
    "                            an admin key named api-token\n"
    "  --api-keys-file F         more API keys, one 'NAME ROLE TOKEN' a line (ROLE: read-only,\n"
    "                            operator or admin; chmod 600); see docs/api.md\n"
    "  --device-auth MODE        signature (default: Mdm-Signature header), mtls, header\n"
    "                            (see --cert-header) or none (experiments only)\n"
    "  --device-ca PEM           CA bundle that device identity certificates chain to\n"
    "  --tls-cert PEM --tls-key PEM   serve HTTPS\n"
    "  --apns URL                APNs (https://api.push.apple.com, or the mock's URL)\n"
    "  --apns-cert PEM --apns-key PEM  the MDM push certificate and key\n"
    "  --apns-ca PEM             CA for the APNs server (default: system trust store)\n"
    "  --apns-topic TOPIC        default: the push certificate's UID\n"
    "  --webhook URL             POST every check-in and result to URL (repeatable)\n"
    "  --webhook-secret-file F   HMAC-SHA256 key for the X-Hmac-Signature header\n"
    "  --wns-token-url URL       WNS OAuth token endpoint, to wake Windows devices\n"
    "                            (https://login.live.com/accesstoken.srf, or the mock's URL)\n"
    "  --wns-client-id ID --wns-secret-file F   the WNS client id and its secret (a private "
    "file)\n"
    "  --wns-ca PEM              CA for WNS (default: system trust store)\n"
    "  --eim-id ID               the eIM's eimId for IoT eUICCs (default esim-mdm)\n"
    "  --eim-key PEM --eim-cert PEM   the eIM's signing key (ECDSA P-256) and certificate:\n"
    "                            serve ESipa (POST /gsma/rsp2/asn1) to IoT devices\n"
    "  --euicc-ci PEM            the CI certificate(s) eUICC certificates must chain to\n"
    "  --eim-smdp-ca PEM         CA for the SM-DP+s the eIM relays indirect downloads to\n"
    "                            (default: system trust store)\n"
    "  --max-body BYTES          largest device message (default 1048576)\n"
    "  --device-rate N           requests per second per device (default 20, burst 2N)\n"
    "  --not-now-backoff S       seconds before re-pushing a device that said NotNow (default 30)\n"
    "  --max-connections N       connections open at once; more get 503 (default 1024, fewer\n"
    "                            when ulimit -n is lower)\n"
    "  --max-connections-per-peer N   from one IP address (default 512)\n"
    "  --max-pending-bytes-per-peer BYTES  bytes of requests still arriving (unauthenticated)\n"
    "                            from one IP address (default max(8 MiB, 8 x (max-body + 64 "
    "KiB)))\n"
    "  --max-pending-bytes BYTES the same from all addresses (default 8 x the per-peer limit)\n"
    "  --header-timeout S        a request header must arrive within S seconds (default 30)\n"
    "  --body-timeout S          then its body within S seconds (default 60)\n"
    "  --replay-window S         refuse Mdm-Signatures made more than S seconds from now, and\n"
    "                            remember messages that long to refuse replays (default 600;\n"
    "                            0 = off)\n"
    "  --signing-time MODE       optional (default): signatures without a signingTime are\n"
    "                            taken; required: refused\n"
    "  --log-level LEVEL         debug, info (default), warn, error or off; one line per event\n"
    "                            on standard error (journald-friendly under systemd)\n"
    "  --log-format FORMAT       logfmt (default) or json\n"
    "  --access-log on|off       a line per request at info (default on)\n"
    "  --migration               take NanoMDM migrations (POST /migration, API token)\n"
    "  --cert-header NAME        device identity from this header, set by a TLS proxy\n"
    "                            (RFC 9440 Client-Cert, or URL-escaped PEM); means\n"
    "                            --device-auth header. Only behind a proxy that sets it!\n"
    "  --config F                read options from F: one 'option value' per line, # comments\n"
    "                            (command-line options given after --config win)\n"
    "\n"
    "Every option can also come from the environment: ESIM_MDM_ and its name in capitals,\n"
    "dashes as underscores (ESIM_MDM_LISTEN=0.0.0.0:8443, ESIM_MDM_MIGRATION=1; repeated\n"
    "--webhook: ESIM_MDM_WEBHOOK with URLs separated by spaces). The command line wins over\n"
    "the environment, which wins over the config file (--config or ESIM_MDM_CONFIG).\n"
    "Read again on SIGHUP, like the config file.\n";

enum {
    O_LISTEN = 1000,
    O_PORT_FILE,
    O_DATA_DIR,
    O_STORE,
    O_STORE_SYNC,
    O_STORE_POOL,
    O_API_TOKEN_FILE,
    O_API_KEYS_FILE,
    O_DEVICE_AUTH,
    O_DEVICE_CA,
    O_TLS_CERT,
    O_TLS_KEY,
    O_APNS,
    O_APNS_CERT,
    O_APNS_KEY,
    O_APNS_CA,
    O_APNS_TOPIC,
    O_WEBHOOK,
    O_WEBHOOK_SECRET_FILE,
    O_WNS_TOKEN_URL,
    O_WNS_CLIENT_ID,
    O_WNS_SECRET_FILE,
    O_WNS_CA,
    O_EIM_ID,
    O_EIM_KEY,
    O_EIM_CERT,
    O_EUICC_CI,
    O_EIM_SMDP_CA,
    O_MAX_BODY,
    O_DEVICE_RATE,
    O_NOT_NOW_BACKOFF,
    O_MAX_CONNECTIONS,
    O_MAX_CONNECTIONS_PER_PEER,
    O_MAX_PENDING_BYTES_PER_PEER,
    O_MAX_PENDING_BYTES,
    O_HEADER_TIMEOUT,
    O_BODY_TIMEOUT,
    O_REPLAY_WINDOW,
    O_SIGNING_TIME,
    O_LOG_LEVEL,
    O_LOG_FORMAT,
    O_ACCESS_LOG,
    O_MIGRATION,
    O_CERT_HEADER,
    O_CONFIG,
    O_HELP,
};

static const cli_option serve_options[] = {
    {"listen", true, O_LISTEN},
    {"port-file", true, O_PORT_FILE},
    {"data-dir", true, O_DATA_DIR},
    {"store", true, O_STORE},
    {"store-sync", true, O_STORE_SYNC},
    {"store-pool", true, O_STORE_POOL},
    {"api-token-file", true, O_API_TOKEN_FILE},
    {"api-keys-file", true, O_API_KEYS_FILE},
    {"device-auth", true, O_DEVICE_AUTH},
    {"device-ca", true, O_DEVICE_CA},
    {"tls-cert", true, O_TLS_CERT},
    {"tls-key", true, O_TLS_KEY},
    {"apns", true, O_APNS},
    {"apns-cert", true, O_APNS_CERT},
    {"apns-key", true, O_APNS_KEY},
    {"apns-ca", true, O_APNS_CA},
    {"apns-topic", true, O_APNS_TOPIC},
    {"webhook", true, O_WEBHOOK},
    {"webhook-secret-file", true, O_WEBHOOK_SECRET_FILE},
    {"wns-token-url", true, O_WNS_TOKEN_URL},
    {"wns-client-id", true, O_WNS_CLIENT_ID},
    {"wns-secret-file", true, O_WNS_SECRET_FILE},
    {"wns-ca", true, O_WNS_CA},
    {"eim-id", true, O_EIM_ID},
    {"eim-key", true, O_EIM_KEY},
    {"eim-cert", true, O_EIM_CERT},
    {"euicc-ci", true, O_EUICC_CI},
    {"eim-smdp-ca", true, O_EIM_SMDP_CA},
    {"max-body", true, O_MAX_BODY},
    {"device-rate", true, O_DEVICE_RATE},
    {"not-now-backoff", true, O_NOT_NOW_BACKOFF},
    {"max-connections", true, O_MAX_CONNECTIONS},
    {"max-connections-per-peer", true, O_MAX_CONNECTIONS_PER_PEER},
    {"max-pending-bytes-per-peer", true, O_MAX_PENDING_BYTES_PER_PEER},
    {"max-pending-bytes", true, O_MAX_PENDING_BYTES},
    {"header-timeout", true, O_HEADER_TIMEOUT},
    {"body-timeout", true, O_BODY_TIMEOUT},
    {"replay-window", true, O_REPLAY_WINDOW},
    {"signing-time", true, O_SIGNING_TIME},
    {"log-level", true, O_LOG_LEVEL},
    {"log-format", true, O_LOG_FORMAT},
    {"access-log", true, O_ACCESS_LOG},
    {"migration", false, O_MIGRATION},
    {"cert-header", true, O_CERT_HEADER},
    {"config", true, O_CONFIG},
    {"help", false, O_HELP},
    {NULL, false, 0},
};

/* Everything `serve` was told, as strings until the end. */
typedef struct {
    esim_service_config cfg;
    const char *port_file, *api_token_file, *webhook_secret_file, *store_sync, *device_auth;
    const char *api_keys_file;
    const char *webhooks[32];
    size_t n_webhooks;
    char *owned[256]; /* strings read from a config file */
    size_t n_owned;
} serve_opts;

static int apply_option(serve_opts *o, int id, const char *v);

/* A flag's value where a value is written (config file, environment):
 * "on" for 1, true, on, yes; "off" for 0, false, off, no; else NULL. */
static const char *flag_word(const char *v)
{
    if (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "on") == 0 ||
        strcmp(v, "yes") == 0)
        return "on";
    if (strcmp(v, "0") == 0 || strcmp(v, "false") == 0 || strcmp(v, "off") == 0 ||
        strcmp(v, "no") == 0)
        return "off";
    return NULL;
}

/* Reads "option value" lines; each becomes the matching --option. */
static int read_config(serve_opts *o, const char *path)
{
    esim_buf text = {0};
    esim_error e;
    if (esim_read_file(path, 1024 * 1024, &text, &e) != ESIM_OK)
        return cli_bad_option_value("serve", "config", path, e.msg);
    int rc = CLI_EXIT_OK;
    int lineno = 0;
    for (char *save = NULL, *line = strtok_r((char *)text.data, "\n", &save);
         line && rc == CLI_EXIT_OK; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        while (*line == ' ' || *line == '\t')
            line++;
        if (!*line || *line == '#')
            continue;
        char *end = line + strlen(line);
        while (end > line && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
            *--end = '\0';
        char *sep = line + strcspn(line, " \t=");
        char *value = sep;
        if (*sep) {
            *sep = '\0';
            value = sep + 1;
            while (*value == ' ' || *value == '\t' || *value == '=')
                value++;
        }
        const cli_option *opt = NULL;
        for (size_t i = 0; serve_options[i].name && !opt; i++)
            if (strcmp(serve_options[i].name, line) == 0 && serve_options[i].id != O_HELP)
                opt = &serve_options[i];
        /* The same words as on the command line, with the file's line. */
        if (!opt || opt->id == O_CONFIG) {
            rc = cli_usage_error("serve: %s:%d: unknown option '%s'; see `esim-mdm serve --help`",
                                 path, lineno, line);
            break;
        }
        if (!*value) {
            rc = cli_usage_error("serve: %s:%d: option %s needs a value; see `esim-mdm serve "
                                 "--help`",
                                 path, lineno, line);
            break;
        }
        if (!opt->takes_value && !(value = (char *)flag_word(value))) {
            rc = cli_usage_error("serve: %s:%d: option %s takes on or off; see `esim-mdm serve "
                                 "--help`",
                                 path, lineno, line);
            break;
        }
        if (o->n_owned == sizeof o->owned / sizeof o->owned[0] ||
            !(o->owned[o->n_owned] = strdup(value))) {
            rc = cli_usage_error("%s: too many options", path);
            break;
        }
        rc = apply_option(o, opt->id, o->owned[o->n_owned++]);
    }
    esim_buf_free(&text);
    return rc;
}

/* ESIM_MDM_<NAME>: every option of serve that the command line did not
 * give (|on_cmdline|, indexed by id - O_LISTEN), its name in capitals with
 * dashes as underscores; an empty variable counts as unset. Repeatable
 * --webhook adds up: URLs separated by spaces. A bad value is refused like
 * the option, and the message names the variable. */
static int read_environment(serve_opts *o, const bool *on_cmdline)
{
    int rc = CLI_EXIT_OK;
    for (size_t i = 0; serve_options[i].name && rc == CLI_EXIT_OK; i++) {
        const cli_option *opt = &serve_options[i];
        if (opt->id == O_HELP || opt->id == O_CONFIG)
            continue;
        if (opt->id != O_WEBHOOK && on_cmdline[opt->id - O_LISTEN])
            continue;
        char var[64] = "ESIM_MDM_";
        size_t n = strlen(var);
        for (const char *c = opt->name; *c && n + 1 < sizeof var; c++)
            var[n++] = *c == '-' ? '_' : (char)toupper((unsigned char)*c);
        var[n] = '\0';
        const char *v = getenv(var);
        if (!v || !*v)
            continue;
        if (!opt->takes_value && !flag_word(v))
            rc = cli_bad_option_value("serve", opt->name, v,
                                      "1, true, on, yes or 0, false, off, no");
        else if (!opt->takes_value)
            v = flag_word(v);
        if (rc == CLI_EXIT_OK && (o->n_owned == sizeof o->owned / sizeof o->owned[0] ||
                                  !(o->owned[o->n_owned] = strdup(v))))
            rc = cli_usage_error("serve: %s: too many options", var);
        else if (rc == CLI_EXIT_OK && opt->id == O_WEBHOOK) {
            char *copy = o->owned[o->n_owned++];
            for (char *save = NULL, *u = strtok_r(copy, " \t\n", &save); u && rc == CLI_EXIT_OK;
                 u = strtok_r(NULL, " \t\n", &save))
                rc = apply_option(o, O_WEBHOOK, u);
        } else if (rc == CLI_EXIT_OK) {
            rc = apply_option(o, opt->id, o->owned[o->n_owned++]);
        }
        if (rc != CLI_EXIT_OK)
            fprintf(stderr, "esim-mdm serve: (the value came from the environment variable %s)\n",
                    var);
    }
    return rc;
}

/* --|name| |v| as a number from |lo| to |hi| for subcommand |cmd|. */
static int cli_client_long(const char *cmd, const char *name, const char *v, long lo, long hi,
                           long *out)
{
    if (cli_parse_long(v, lo, hi, out))
        return CLI_EXIT_OK;
    char what[96];
    snprintf(what, sizeof what, "expected a number from %ld to %ld", lo, hi);
    return cli_bad_option_value(cmd, name, v, what);
}

static int apply_option(serve_opts *o, int id, const char *v)
{
    long n = 0;
    int rc = CLI_EXIT_OK;
    switch (id) {
    case O_LISTEN:
        o->cfg.listen = v;
        break;
    case O_PORT_FILE:
        o->port_file = v;
        break;
    case O_DATA_DIR:
        o->cfg.data_dir = v;
        break;
    case O_STORE:
        o->cfg.store = v;
        break;
    case O_STORE_SYNC:
        o->store_sync = v;
        break;
    case O_STORE_POOL:
        if ((rc = cli_client_long("serve", "store-pool", v, 0, 64, &n)) == CLI_EXIT_OK)
            o->cfg.store_pool = (int)n;
        break;
    case O_API_TOKEN_FILE:
        o->api_token_file = v;
        break;
    case O_API_KEYS_FILE:
        o->api_keys_file = v;
        break;
    case O_DEVICE_AUTH:
        o->device_auth = v;
        break;
    case O_DEVICE_CA:
        o->cfg.device_ca_path = v;
        break;
    case O_TLS_CERT:
        o->cfg.tls_cert_path = v;
        break;
    case O_TLS_KEY:
        o->cfg.tls_key_path = v;
        break;
    case O_APNS:
        o->cfg.apns_url = v;
        break;
    case O_APNS_CERT:
        o->cfg.apns_cert_path = v;
        break;
    case O_APNS_KEY:
        o->cfg.apns_key_path = v;
        break;
    case O_APNS_CA:
        o->cfg.apns_ca_path = v;
        break;
    case O_APNS_TOPIC:
        o->cfg.apns_topic = v;
        break;
    case O_WEBHOOK:
        if (o->n_webhooks == sizeof o->webhooks / sizeof o->webhooks[0])
            return cli_bad_option_value("serve", "webhook", v, "at most 32 URLs");
        o->webhooks[o->n_webhooks++] = v;
        break;
    case O_WEBHOOK_SECRET_FILE:
        o->webhook_secret_file = v;
        break;
    case O_WNS_TOKEN_URL:
        o->cfg.wns_token_url = v;
        break;
    case O_WNS_CLIENT_ID:
        o->cfg.wns_client_id = v;
        break;
    case O_WNS_SECRET_FILE:
        o->cfg.wns_secret_path = v;
        break;
    case O_WNS_CA:
        o->cfg.wns_ca_path = v;
        break;
    case O_EIM_ID:
        o->cfg.eim_id = v;
        break;
    case O_EIM_KEY:
        o->cfg.eim_key_path = v;
        break;
    case O_EIM_CERT:
        o->cfg.eim_cert_path = v;
        break;
    case O_EUICC_CI:
        o->cfg.euicc_ci_path = v;
        break;
    case O_EIM_SMDP_CA:
        o->cfg.eim_smdp_ca_path = v;
        break;
    case O_MAX_BODY:
        if ((rc = cli_client_long("serve", "max-body", v, 1024, 64L * 1024 * 1024, &n)) ==
            CLI_EXIT_OK)
            o->cfg.max_body = (size_t)n;
        break;
    case O_DEVICE_RATE:
        if ((rc = cli_client_long("serve", "device-rate", v, 1, 100000, &n)) == CLI_EXIT_OK) {
            o->cfg.device_rate = (double)n;
            o->cfg.device_burst = (unsigned)(2 * n);
        }
        break;
    case O_NOT_NOW_BACKOFF:
        if ((rc = cli_client_long("serve", "not-now-backoff", v, 1, 86400, &n)) == CLI_EXIT_OK)
            o->cfg.not_now_backoff_ms = n * 1000;
        break;
    case O_MAX_CONNECTIONS:
        if ((rc = cli_client_long("serve", "max-connections", v, 1, 1000000, &n)) == CLI_EXIT_OK)
            o->cfg.max_connections = (unsigned)n;
        break;
    case O_MAX_CONNECTIONS_PER_PEER:
        if ((rc = cli_client_long("serve", "max-connections-per-peer", v, 1, 1000000, &n)) ==
            CLI_EXIT_OK)
            o->cfg.max_connections_per_peer = (unsigned)n;
        break;
    case O_MAX_PENDING_BYTES_PER_PEER:
        if ((rc = cli_client_long("serve", "max-pending-bytes-per-peer", v, 4096, 1L << 40, &n)) ==
            CLI_EXIT_OK)
            o->cfg.max_pending_bytes_per_peer = (size_t)n;
        break;
    case O_MAX_PENDING_BYTES:
        if ((rc = cli_client_long("serve", "max-pending-bytes", v, 4096, 1L << 40, &n)) ==
            CLI_EXIT_OK)
            o->cfg.max_pending_bytes = (size_t)n;
        break;
    case O_HEADER_TIMEOUT:
        if ((rc = cli_client_long("serve", "header-timeout", v, 1, 3600, &n)) == CLI_EXIT_OK)
            o->cfg.header_timeout_ms = (int)(n * 1000);
        break;
    case O_BODY_TIMEOUT:
        if ((rc = cli_client_long("serve", "body-timeout", v, 1, 3600, &n)) == CLI_EXIT_OK)
            o->cfg.body_timeout_ms = (int)(n * 1000);
        break;
    case O_REPLAY_WINDOW:
        if ((rc = cli_client_long("serve", "replay-window", v, 0, 7 * 86400, &n)) == CLI_EXIT_OK)
            o->cfg.replay_window_ms = n ? n * 1000 : -1;
        break;
    case O_SIGNING_TIME:
        if (strcmp(v, "required") == 0)
            o->cfg.require_signing_time = true;
        else if (strcmp(v, "optional") == 0)
            o->cfg.require_signing_time = false;
        else
            return cli_bad_option_value("serve", "signing-time", v, "optional or required");
        break;
    case O_LOG_LEVEL: {
        esim_error e;
        if (esim_log_level_parse(v, &o->cfg.log_level, &e) != ESIM_OK)
            return cli_bad_option_value("serve", "log-level", v, "debug, info, warn, error or off");
        break;
    }
    case O_LOG_FORMAT:
        if (strcmp(v, "json") == 0)
            o->cfg.log_json = true;
        else if (strcmp(v, "logfmt") == 0)
            o->cfg.log_json = false;
        else
            return cli_bad_option_value("serve", "log-format", v, "logfmt or json");
        break;
    case O_MIGRATION:
        o->cfg.migration = !v || strcmp(v, "off") != 0;
        break;
    case O_CERT_HEADER:
        o->cfg.cert_header = v;
        break;
    case O_ACCESS_LOG:
        if (strcmp(v, "on") == 0)
            o->cfg.access_log = true;
        else if (strcmp(v, "off") == 0)
            o->cfg.access_log = false;
        else
            return cli_bad_option_value("serve", "access-log", v, "on or off");
        break;
    case O_CONFIG:
        rc = read_config(o, v);
        break;
    default: /* --help, answered before parsing */
        break;
    }
    return rc;
}

/* A secret from a file: the first line, without surrounding whitespace. */
static int read_secret(const char *what, const char *path, char **out)
{
    esim_error e;
    if (esim_read_token_file(path, out, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm serve: %s: %s\n", what, e.msg);
        return CLI_EXIT_FAIL;
    }
    return CLI_EXIT_OK;
}

/* Without --api-token-file: DATA_DIR/api-token, made with a random token
 * (0600) the first time, so the API is never open by accident. */
static int default_token(const char *data_dir, char **token, char *path, size_t path_len)
{
    snprintf(path, path_len, "%s/api-token", data_dir);
    esim_error e;
    if (esim_mkdirs(data_dir, 0700, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm serve: %s\n", e.msg);
        return CLI_EXIT_FAIL;
    }
    esim_buf probe = {0};
    esim_err rc = esim_read_file(path, 4096, &probe, NULL);
    esim_buf_free(&probe);
    if (rc == ESIM_ENOTFOUND) {
        unsigned char raw[24];
        esim_buf hex = {0};
        if (esim_random_bytes(raw, sizeof raw) != ESIM_OK ||
            esim_hex_encode(raw, sizeof raw, &hex) != ESIM_OK ||
            esim_buf_append_str(&hex, "\n") != ESIM_OK ||
            esim_write_file_atomic(path, hex.data, hex.len, 0600, &e) != ESIM_OK) {
            esim_buf_free(&hex);
            fprintf(stderr, "esim-mdm serve: cannot write the API token to %s\n", path);
            return CLI_EXIT_FAIL;
        }
        esim_buf_free(&hex);
    }
    return read_secret("API token", path, token);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    esim_service_request_stop(arg);
}

static int reload_setup(int argc, char **argv, esim_service *svc);

/* SIGHUP: the options, the config file, the token and the keys read again,
 * and applied without dropping a connection; refused whole when bad. */
typedef struct {
    esim_service *svc;
    int argc;
    char **argv;
} hup_ctx;

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    hup_ctx *h = arg;
    reload_setup(h->argc, h->argv, h->svc);
}

static int run_service(serve_opts *o, const char *api_token_path, int argc, char **argv)
{
    struct event_base *base = cli_event_base_new();
    if (!base) {
        fprintf(stderr, "esim-mdm serve: cannot create the event loop\n");
        return CLI_EXIT_FAIL;
    }
    /* Connections need descriptors: take what the hard limit allows (the
     * connection cap follows the soft limit; see --max-connections). */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max < 65536 ? rl.rlim_max : 65536;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    esim_service *svc = NULL;
    esim_error e = {{0}};
    esim_err rc = esim_service_new(base, &o->cfg, &svc, &e);
    if (rc != ESIM_OK) {
        fprintf(stderr, "esim-mdm serve: %s\n", e.msg);
        event_base_free(base);
        return rc == ESIM_EINVAL ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    }
    /* The composition root: campaigns (campaign/) on top of the service. */
    if ((rc = esim_campaigns_attach(svc, o->cfg.data_dir, &e)) != ESIM_OK ||
        (rc = esim_dashboard_attach(svc, &e)) != ESIM_OK) {
        fprintf(stderr, "esim-mdm serve: %s\n", e.msg);
        esim_service_free(svc);
        event_base_free(base);
        return CLI_EXIT_FAIL;
    }
    if (o->port_file) {
        char text[16];
        int len = snprintf(text, sizeof text, "%d\n", esim_service_port(svc));
        if (esim_write_file_atomic(o->port_file, text, (size_t)len, 0644, &e) != ESIM_OK) {
            fprintf(stderr, "esim-mdm serve: --port-file: %s\n", e.msg);
            esim_service_free(svc);
            event_base_free(base);
            return CLI_EXIT_FAIL;
        }
    }
    if (o->cfg.device_auth == ESIM_DEVICE_AUTH_NONE)
        fprintf(stderr,
                "esim-mdm serve: WARNING: --device-auth none: devices are NOT authenticated; any "
                "client can impersonate any device. Use this for local experiments only.\n");
    if (!o->cfg.apns_url)
        fprintf(stderr, "esim-mdm serve: no --apns: pushes are recorded as pending; devices get "
                        "their commands when they next check in\n");
    /* A device that hangs up while its answer is being written must not
     * kill the service (writev raises SIGPIPE). */
    signal(SIGPIPE, SIG_IGN);
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, svc);
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, svc);
    hup_ctx hup = {svc, argc, argv};
    struct event *sighup = evsignal_new(base, SIGHUP, on_hup, &hup);
    if (sigint)
        event_add(sigint, NULL);
    if (sigterm)
        event_add(sigterm, NULL);
    if (sighup)
        event_add(sighup, NULL);
    printf("esim-mdm: serving MDM on %s/mdm (admin API %s/v1/, token in %s, device auth %s)\n",
           esim_service_url(svc), esim_service_url(svc), api_token_path,
           o->device_auth ? o->device_auth : "signature");
    fflush(stdout);
    event_base_dispatch(base);
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    if (sighup)
        event_free(sighup);
    esim_service_free(svc);
    event_base_free(base);
    printf("esim-mdm: stopped\n");
    return CLI_EXIT_OK;
}

/* Everything `serve` reads before it builds the service, and again on
 * SIGHUP: options, the config file, the token, the secret and the keys. */
typedef struct {
    serve_opts o;
    char *token, *secret;
    char token_path[4096];
    esim_api_key *keys;
    size_t n_keys;
} serve_setup;

static void serve_setup_free(serve_setup *s)
{
    esim_api_keys_free(s->keys, s->n_keys);
    if (s->token)
        OPENSSL_cleanse(s->token, strlen(s->token));
    free(s->token);
    free(s->secret);
    for (size_t i = 0; i < s->o.n_owned; i++)
        free(s->o.owned[i]);
    memset(s, 0, sizeof *s);
}

static int serve_load(int argc, char **argv, serve_setup *s)
{
    memset(s, 0, sizeof *s);
    serve_opts *o = &s->o;
    esim_service_config_init(&o->cfg);
    o->cfg.log_level = ESIM_LOG_INFO; /* a library is quiet; the program logs */
    o->cfg.access_log = true;
    /* Lowest first: the config file, the environment, the command line.
     * The command line is applied in its order (options after --config win
     * over the file), then the environment for every option it did not
     * give; ESIM_MDM_CONFIG names the file when no --config does. */
    int rc = CLI_EXIT_OK;
    int c;
    bool on_cmdline[O_HELP - O_LISTEN + 1] = {false};
    bool config_given = false;
    cli_parser p;
    cli_parser_init(&p, "serve", serve_options, argc, argv, 1);
    while (rc == CLI_EXIT_OK && (c = cli_next(&p)) != CLI_END) {
        if (c == CLI_ERROR)
            rc = CLI_EXIT_USAGE;
        else if (c == CLI_ARG)
            rc = cli_unexpected("serve", p.value);
        else if (c == O_CONFIG)
            config_given = true;
    }
    const char *env_config = getenv("ESIM_MDM_CONFIG");
    if (rc == CLI_EXIT_OK && !config_given && env_config && *env_config) {
        rc = read_config(o, env_config);
        if (rc != CLI_EXIT_OK)
            fprintf(stderr, "esim-mdm serve: (the file was named by ESIM_MDM_CONFIG)\n");
    }
    cli_parser_init(&p, "serve", serve_options, argc, argv, 1);
    while (rc == CLI_EXIT_OK && (c = cli_next(&p)) != CLI_END) {
        if (c >= O_LISTEN && c <= O_HELP)
            on_cmdline[c - O_LISTEN] = true;
        rc = apply_option(o, c, p.value);
    }
    if (rc == CLI_EXIT_OK)
        rc = read_environment(o, on_cmdline);
    esim_error e;
    if (rc == CLI_EXIT_OK && o->cfg.cert_header && !o->device_auth)
        o->device_auth = "header";
    if (rc == CLI_EXIT_OK && o->device_auth &&
        esim_device_auth_parse(o->device_auth, &o->cfg.device_auth, &e) != ESIM_OK)
        rc = cli_bad_option_value("serve", "device-auth", o->device_auth, e.msg);
    if (rc == CLI_EXIT_OK && o->store_sync) {
        if (strcmp(o->store_sync, "group") == 0)
            o->cfg.store_sync = STORE_SYNC_GROUP;
        else if (strcmp(o->store_sync, "full") == 0)
            o->cfg.store_sync = STORE_SYNC_FULL;
        else if (strcmp(o->store_sync, "normal") == 0)
            o->cfg.store_sync = STORE_SYNC_NORMAL;
        else
            rc = cli_bad_option_value("serve", "store-sync", o->store_sync,
                                      "use group, full or normal");
    }
    if (!o->cfg.data_dir)
        o->cfg.data_dir = "esim-mdm-data";
    o->cfg.webhook_urls = o->webhooks;
    o->cfg.n_webhook_urls = o->n_webhooks;
    if (rc == CLI_EXIT_OK) {
        if (o->api_token_file) {
            snprintf(s->token_path, sizeof s->token_path, "%s", o->api_token_file);
            rc = read_secret("--api-token-file", o->api_token_file, &s->token);
        } else {
            rc = default_token(o->cfg.data_dir, &s->token, s->token_path, sizeof s->token_path);
        }
    }
    if (rc == CLI_EXIT_OK && o->webhook_secret_file)
        rc = read_secret("--webhook-secret-file", o->webhook_secret_file, &s->secret);
    if (rc == CLI_EXIT_OK && o->api_keys_file &&
        esim_api_keys_load(o->api_keys_file, &s->keys, &s->n_keys, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm serve: --api-keys-file: %s\n", e.msg);
        rc = CLI_EXIT_FAIL;
    }
    o->cfg.api_keys = s->keys;
    o->cfg.n_api_keys = s->n_keys;
    o->cfg.api_token = s->token;
    o->cfg.webhook_secret = s->secret;
    if (rc != CLI_EXIT_OK)
        serve_setup_free(s);
    return rc;
}

static int reload_setup(int argc, char **argv, esim_service *svc)
{
    serve_setup s;
    int rc = serve_load(argc, argv, &s);
    if (rc != CLI_EXIT_OK) {
        esim_service_log(svc, ESIM_LOG_ERROR, "reload_refused",
                         "the new configuration is not valid (see the line above); the running "
                         "one is kept");
        return rc;
    }
    esim_error e = {{0}};
    char restart[256];
    if (esim_service_reload(svc, &s.o.cfg, restart, sizeof restart, &e) != ESIM_OK)
        rc = CLI_EXIT_FAIL; /* logged by the service, the old settings kept */
    serve_setup_free(&s);
    return rc;
}

int cmd_serve(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(serve_usage, stdout);
        return CLI_EXIT_OK;
    }
    serve_setup s;
    int rc = serve_load(argc, argv, &s);
    if (rc == CLI_EXIT_OK) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        rc = run_service(&s.o, s.token_path, argc, argv);
        curl_global_cleanup();
        serve_setup_free(&s);
    }
    return rc;
}

/* ---- admin API clients ------------------------------------------------------------------
 * Each takes --server URL (default $ESIM_MDM_SERVER or http://127.0.0.1:8080)
 * and --token-file F (default $ESIM_MDM_TOKEN_FILE or esim-mdm-data/api-token),
 * prints a table for people, or the API's JSON with --json. */

/* The end of every admin client's --help: the options they all take. */
#define CLIENT_COMMON_HELP                                                                         \
    "common options:\n"                                                                            \
    "  --server URL      the service (default $ESIM_MDM_SERVER or http://127.0.0.1:8080)\n"        \
    "  --token-file F    the API key (default $ESIM_MDM_TOKEN_FILE or esim-mdm-data/api-token)\n"  \
    "  --cacert PEM      the CA of an https:// service with its own CA (default\n"                 \
    "                    $ESIM_MDM_CACERT, $CURL_CA_BUNDLE or $SSL_CERT_FILE, else the "           \
    "system's)\n"                                                                                  \
    "  --json            the API's JSON answer on stdout, nothing else\n"                          \
    "exit status: 0 done, 1 the service refused or could not be reached, 2 bad options.\n"

typedef struct {
    const char *server, *token_file, *cacert;
    bool json;
    chttp http;
} client_opts;

typedef struct {
    long status;
    esim_buf body;
} client_reply;

static int client_init(client_opts *c)
{
    if (!chttp_open_api(&c->http, c->server, c->token_file))
        return CLI_EXIT_USAGE;
    if (c->cacert)
        chttp_set_ca(&c->http, c->cacert);
    return CLI_EXIT_OK;
}

/* One API call; the reply body is kept whatever the status. */
static int client_call(client_opts *c, const char *method, const char *path, const char *body,
                       const char *content_type, client_reply *out)
{
    memset(out, 0, sizeof *out);
    esim_error e = {{0}};
    if (chttp_request(&c->http, method, path, content_type, body, body ? strlen(body) : 0,
                      &out->status, &out->body, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm: %s\n", e.msg);
        return CLI_EXIT_FAIL;
    }
    return CLI_EXIT_OK;
}

/* Prints the answer's error and returns the exit status for it. */
static int client_error(const client_reply *r)
{
    json_t *root = r->body.data ? json_loads((const char *)r->body.data, 0, NULL) : NULL;
    json_t *msg = json_object_get(json_object_get(root, "error"), "message");
    fprintf(stderr, "esim-mdm: the service answered %ld: %s\n", r->status,
            json_is_string(msg) ? json_string_value(msg) : "(no details)");
    json_decref(root);
    /* Bad input the service found (400, 413) is a usage error like one found
     * here; any other refusal (401, 403, 404, 409, 429, 5xx) is the service's. */
    return r->status == 400 || r->status == 413 ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
}

/* The options every admin client takes; a command's own ids start at C_OWN. */
enum { C_SERVER = 1, C_TOKEN_FILE, C_JSON, C_CACERT, C_OWN };

/* A command's own options: |extra| gets each one's id and value and returns
 * 0, or -1 after reporting a problem. */
typedef int (*extra_opt_fn)(void *ctx, int id, const char *value);

/* Parses argv: the common options, |own| (may be NULL) through |extra|, and
 * at most |max_pos| positional words. 0, or -1 after reporting a problem. */
static int client_parse(client_opts *c, int argc, char **argv, const cli_option *own,
                        extra_opt_fn extra, void *ctx, const char **positional, int max_pos,
                        int *n_pos)
{
    cli_option options[32] = {{"server", true, C_SERVER},
                              {"token-file", true, C_TOKEN_FILE},
                              {"json", false, C_JSON},
                              {"cacert", true, C_CACERT}};
    for (size_t k = 4; own && own->name && k + 1 < sizeof options / sizeof options[0]; k++)
        options[k] = *own++;
    cli_parser p;
    cli_parser_init(&p, argv[0], options, argc, argv, 1);
    *n_pos = 0;
    for (int id; (id = cli_next(&p)) != CLI_END;) {
        if (id == CLI_ERROR)
            return -1;
        if (id == C_SERVER) {
            c->server = p.value;
        } else if (id == C_TOKEN_FILE) {
            c->token_file = p.value;
        } else if (id == C_JSON) {
            c->json = true;
        } else if (id == C_CACERT) {
            c->cacert = p.value;
        } else if (id == CLI_ARG) {
            if (*n_pos == max_pos) {
                cli_unexpected(argv[0], p.value);
                return -1;
            }
            positional[(*n_pos)++] = p.value;
        } else if (extra(ctx, id, p.value) != 0) {
            return -1;
        }
    }
    return 0;
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : "-";
}

/* ---- enqueue ---- */

typedef struct {
    json_t *udids;
    json_t *command;
    const char *plist_path;
    long priority, expires_in;
    bool have_priority, no_push;
    bool failed;
} enqueue_ctx;

static int set_type(enqueue_ctx *x, const char *type)
{
    if (json_object_get(x->command, "request_type") || x->plist_path) {
        cli_usage_error("enqueue: give one command only");
        return -1;
    }
    json_object_set_new(x->command, "request_type", json_string(type));
    return 0;
}

enum {
    E_UDID = C_OWN,
    E_REFRESH,
    E_DEVINFO,
    E_RESTRICTIONS,
    E_ERASE,
    E_PRESERVE,
    E_REMOVE,
    E_PROFILE_LIST,
    E_PLIST,
    E_PRIORITY,
    E_EXPIRES,
    E_NO_PUSH,
};

static const cli_option enqueue_options[] = {
    {"udid", true, E_UDID},
    {"refresh-plans", true, E_REFRESH},
    {"device-information", true, E_DEVINFO},
    {"restrictions", true, E_RESTRICTIONS},
    {"erase", false, E_ERASE},
    {"preserve-data-plan", false, E_PRESERVE},
    {"remove-profile", true, E_REMOVE},
    {"profile-list", false, E_PROFILE_LIST},
    {"plist", true, E_PLIST},
    {"priority", true, E_PRIORITY},
    {"expires-in", true, E_EXPIRES},
    {"no-push", false, E_NO_PUSH},
    {NULL, false, 0},
};

/* "a,b,c" as a JSON array of strings. */
static json_t *split_list(const char *v)
{
    json_t *q = json_array();
    char *copy = strdup(v);
    for (char *save = NULL, *t = copy ? strtok_r(copy, ",", &save) : NULL; t;
         t = strtok_r(NULL, ",", &save))
        json_array_append_new(q, json_string(t));
    free(copy);
    return q;
}

static int enqueue_opt(void *ctx, int id, const char *v)
{
    enqueue_ctx *x = ctx;
    long n = 0;
    switch (id) {
    case E_UDID:
        json_array_append_new(x->udids, json_string(v));
        return 0;
    case E_REFRESH:
        if (set_type(x, "RefreshCellularPlans"))
            return -1;
        json_object_set_new(x->command, "esim_server_url", json_string(v));
        return 0;
    case E_DEVINFO:
        if (set_type(x, "DeviceInformation"))
            return -1;
        json_object_set_new(x->command, "queries", split_list(v));
        return 0;
    case E_RESTRICTIONS: {
        if (set_type(x, "InstallProfile"))
            return -1;
        json_t *r = json_object();
        char *copy = strdup(v);
        for (char *save = NULL, *t = copy ? strtok_r(copy, ",", &save) : NULL; t;
             t = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(t, '=');
            if (!eq) {
                free(copy);
                json_decref(r);
                cli_bad_option_value("enqueue", "restrictions", v,
                                     "use name=word pairs, as "
                                     "esim_modification=deny,preserve_esim_on_erase=on");
                return -1;
            }
            *eq = '\0';
            json_object_set_new(r, t, json_string(eq + 1));
        }
        free(copy);
        json_object_set_new(x->command, "restrictions", r);
        return 0;
    }
    case E_ERASE:
        return set_type(x, "EraseDevice");
    case E_PRESERVE:
        json_object_set_new(x->command, "preserve_data_plan", json_true());
        return 0;
    case E_REMOVE:
        if (set_type(x, "RemoveProfile"))
            return -1;
        json_object_set_new(x->command, "identifier", json_string(v));
        return 0;
    case E_PROFILE_LIST:
        return set_type(x, "ProfileList");
    case E_PLIST:
        if (json_object_size(x->command)) {
            cli_usage_error("enqueue: give one command only");
            return -1;
        }
        x->plist_path = v;
        return 0;
    case E_PRIORITY:
        if (cli_client_long("enqueue", "priority", v, -1000, 1000, &n) != CLI_EXIT_OK)
            return -1;
        x->priority = n;
        x->have_priority = true;
        return 0;
    case E_EXPIRES:
        if (cli_client_long("enqueue", "expires-in", v, 1, 315360000, &n) != CLI_EXIT_OK)
            return -1;
        x->expires_in = n;
        return 0;
    case E_NO_PUSH:
        x->no_push = true;
        return 0;
    }
    return -1;
}

static const char enqueue_usage[] =
    "usage: esim-mdm enqueue --udid UDID [--udid UDID...] COMMAND [--priority N]\n"
    "                        [--expires-in SECONDS] [--no-push] [--server URL] [--token-file F] "
    "[--json]\n"
    "COMMAND is one of:\n"
    "  --refresh-plans URL          RefreshCellularPlans with eSIMServerURL\n"
    "  --device-information Q[,Q]   DeviceInformation, e.g. ServiceSubscriptions\n"
    "  --restrictions k=v[,k=v]     InstallProfile of an eSIM restrictions profile\n"
    "                               (esim_modification=allow|deny, preserve_esim_on_erase=on|off,\n"
    "                                esim_outgoing_transfers=allow|deny, "
    "cellular_plan_modification=allow|deny)\n"
    "  --erase [--preserve-data-plan]  EraseDevice\n"
    "  --remove-profile ID | --profile-list\n"
    "  --plist FILE                 a whole command plist (sent to PUT /v1/enqueue/...)\n"
    "\n"
    "example:\n"
    "  esim-mdm enqueue --udid 00008110-000A1B2C3D4E5F60 --refresh-plans smdp.example.com \\\n"
    "      --server https://mdm.example.com:8443 --cacert /etc/esim-mdm/ca.pem\n"
    "\n" CLIENT_COMMON_HELP;

int cmd_enqueue(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(enqueue_usage, stdout);
        return CLI_EXIT_OK;
    }
    client_opts c = {0};
    enqueue_ctx x = {.udids = json_array(), .command = json_object()};
    const char *pos[1] = {NULL};
    int n_pos = 0, rc = CLI_EXIT_OK;
    client_reply r = {0};
    esim_buf plist = {0}, path = {0};
    json_t *root = NULL;
    if (client_parse(&c, argc, argv, enqueue_options, enqueue_opt, &x, pos, 0, &n_pos) != 0) {
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (json_array_size(x.udids) == 0 ||
        (!x.plist_path && !json_object_get(x.command, "request_type"))) {
        rc =
            cli_missing("enqueue", json_array_size(x.udids) ? "a command (--refresh-plans URL, ...)"
                                                            : "--udid UDID");
        goto out;
    }
    if ((rc = client_init(&c)) != CLI_EXIT_OK)
        goto out;
    if (x.plist_path) {
        esim_error e;
        if (esim_read_file(x.plist_path, 16 * 1024 * 1024, &plist, &e) != ESIM_OK) {
            rc = cli_bad_option_value("enqueue", "plist", x.plist_path, e.msg);
            goto out;
        }
        esim_buf_append_str(&path, "/v1/enqueue/");
        for (size_t i = 0; i < json_array_size(x.udids); i++)
            esim_buf_printf(&path, "%s%s", i ? "," : "",
                            json_string_value(json_array_get(x.udids, i)));
        if (x.no_push)
            esim_buf_append_str(&path, "?nopush=1");
        rc = client_call(&c, "PUT", (const char *)path.data, (const char *)plist.data,
                         "application/xml", &r);
    } else {
        json_t *req =
            json_pack("{s:O,s:O,s:b}", "udids", x.udids, "command", x.command, "push", !x.no_push);
        if (x.have_priority)
            json_object_set_new(req, "priority", json_integer(x.priority));
        if (x.expires_in)
            json_object_set_new(req, "expires_in_s", json_integer(x.expires_in));
        char *text = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        rc = client_call(&c, "POST", "/v1/commands", text, NULL, &r);
        free(text);
    }
    if (rc != CLI_EXIT_OK)
        goto out;
    if (r.status != 200) {
        rc = client_error(&r);
        goto out;
    }
    if (c.json) {
        fwrite(r.body.data, 1, r.body.len, stdout);
        goto out;
    }
    root = json_loads((const char *)r.body.data, 0, NULL);
    printf("command %s (%s) queued\n", jstr(root, "command_uuid"), jstr(root, "request_type"));
    printf("%-40s  %-6s  %s\n", "UDID", "QUEUED", "PUSH");
    const char *udid;
    json_t *d;
    json_object_foreach(json_object_get(root, "devices"), udid, d)
        printf("%-40s  %-6s  %s\n", udid, json_is_true(json_object_get(d, "queued")) ? "yes" : "no",
               jstr(d, "push"));
out:
    json_decref(root);
    json_decref(x.udids);
    json_decref(x.command);
    esim_buf_free(&r.body);
    esim_buf_free(&plist);
    esim_buf_free(&path);
    chttp_close(&c.http);
    return rc;
}

/* ---- status ---- */

int cmd_status(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        puts("usage: esim-mdm status COMMAND_UUID [--server URL] [--token-file F] [--cacert PEM] "
             "[--json]\n"
             "Shows where a command stands on each device: state, attempts, NotNow count, errors.\n"
             "\n"
             "example:\n"
             "  esim-mdm status 9C1E6C6A-2F41-4C7B-8E0B-3D0F2A9B7C11\n"
             "\n" CLIENT_COMMON_HELP);
        return CLI_EXIT_OK;
    }
    client_opts c = {0};
    const char *pos[1] = {NULL};
    int n_pos = 0;
    if (client_parse(&c, argc, argv, NULL, NULL, NULL, pos, 1, &n_pos) != 0)
        return CLI_EXIT_USAGE;
    if (n_pos != 1 || !esim_uuid_valid(pos[0]))
        return cli_usage_error("status: give the command's UUID, as printed by `esim-mdm enqueue`");
    int rc = client_init(&c);
    client_reply r = {0};
    char path[128];
    snprintf(path, sizeof path, "/v1/commands/%s", pos[0]);
    if (rc == CLI_EXIT_OK)
        rc = client_call(&c, "GET", path, NULL, NULL, &r);
    if (rc == CLI_EXIT_OK && r.status != 200)
        rc = client_error(&r);
    else if (rc == CLI_EXIT_OK && c.json)
        fwrite(r.body.data, 1, r.body.len, stdout);
    else if (rc == CLI_EXIT_OK) {
        json_t *root = json_loads((const char *)r.body.data, 0, NULL);
        printf("command %s (%s) on %lld devices:", jstr(root, "command_uuid"),
               jstr(root, "request_type"),
               (long long)json_integer_value(json_object_get(root, "device_count")));
        const char *state;
        json_t *count;
        json_object_foreach(json_object_get(root, "counts"), state,
                            count) if (json_integer_value(count))
            printf(" %s %lld", state, (long long)json_integer_value(count));
        printf("\n");
        printf("%-40s  %-13s  %-8s  %-7s  %-24s  %s\n", "UDID", "STATE", "ATTEMPTS", "NOT_NOW",
               "ANSWERED", "ERROR");
        const char *udid;
        json_t *d;
        json_object_foreach(json_object_get(root, "devices"), udid, d)
        {
            json_t *chain = json_array_get(json_object_get(d, "error_chain"), 0);
            char errtext[200] = "-";
            if (chain)
                snprintf(errtext, sizeof errtext, "%s %lld: %s", jstr(chain, "error_domain"),
                         (long long)json_integer_value(json_object_get(chain, "error_code")),
                         jstr(chain, "localized_description"));
            printf("%-40s  %-13s  %-8lld  %-7lld  %-24s  %s\n", udid, jstr(d, "state"),
                   (long long)json_integer_value(json_object_get(d, "attempts")),
                   (long long)json_integer_value(json_object_get(d, "not_now_count")),
                   jstr(d, "answered_at"), errtext);
        }
        json_decref(root);
    }
    esim_buf_free(&r.body);
    chttp_close(&c.http);
    return rc;
}

/* ---- devices ---- */

static const cli_option devices_options[] = {
    {"after", true, C_OWN}, {"csv", false, C_OWN + 1}, {NULL, false, 0}};

typedef struct {
    const char *after;
    bool csv;
} devices_ctx;

static int devices_after_opt(void *ctx, int id, const char *v)
{
    devices_ctx *x = ctx;
    if (id == C_OWN + 1) {
        x->csv = true;
        return 0;
    }
    if (esim_udid_validate(v, NULL) != ESIM_OK) {
        cli_bad_option_value("devices", "after", v, "not a UDID");
        return -1;
    }
    x->after = v;
    return 0;
}

/* One device's queue as a table (after its own line). */
static int print_queue(client_opts *c, const char *udid)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/devices/%s/queue", udid);
    client_reply r = {0};
    int rc = client_call(c, "GET", path, NULL, NULL, &r);
    if (rc == CLI_EXIT_OK && r.status != 200)
        rc = client_error(&r);
    if (rc == CLI_EXIT_OK) {
        json_t *root = json_loads((const char *)r.body.data, 0, NULL);
        json_t *q = json_object_get(root, "queue");
        printf("\nqueue: %zu command(s) waiting\n", json_array_size(q));
        if (json_array_size(q))
            printf("%-36s  %-22s  %-9s  %-8s  %s\n", "COMMAND", "REQUEST_TYPE", "STATE", "ATTEMPTS",
                   "NOT_NOW");
        size_t i;
        json_t *e;
        json_array_foreach(q, i, e) printf(
            "%-36s  %-22s  %-9s  %-8lld  %lld\n", jstr(e, "command_uuid"), jstr(e, "request_type"),
            jstr(e, "state"), (long long)json_integer_value(json_object_get(e, "attempts")),
            (long long)json_integer_value(json_object_get(e, "not_now_count")));
        json_decref(root);
    }
    esim_buf_free(&r.body);
    return rc;
}

int cmd_devices(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        puts(
            "usage: esim-mdm devices [UDID | --after UDID | --csv] [--server URL] [--token-file F] "
            "[--cacert PEM] [--json]\n"
            "Lists devices 1000 at a time (--after the last one shown for the next page), or\n"
            "shows one device and the commands waiting on its queue. --csv writes the whole\n"
            "inventory as CSV (one line per device, a header line) to stdout.\n"
            "\n"
            "examples:\n"
            "  esim-mdm devices\n"
            "  esim-mdm devices --csv > inventory.csv\n"
            "\n" CLIENT_COMMON_HELP);
        return CLI_EXIT_OK;
    }
    client_opts c = {0};
    const char *pos[1] = {NULL};
    devices_ctx x = {0};
    int n_pos = 0;
    if (client_parse(&c, argc, argv, devices_options, devices_after_opt, &x, pos, 1, &n_pos) != 0)
        return CLI_EXIT_USAGE;
    const char *after = x.after;
    if (x.csv && (n_pos || after || c.json))
        return cli_usage_error("devices: --csv is the whole inventory: no UDID, --after or --json");
    if (x.csv) {
        int rc = client_init(&c);
        client_reply r = {0};
        if (rc == CLI_EXIT_OK)
            rc = client_call(&c, "GET", "/v1/devices?format=csv", NULL, NULL, &r);
        if (rc == CLI_EXIT_OK && r.status != 200)
            rc = client_error(&r);
        else if (rc == CLI_EXIT_OK)
            fwrite(r.body.data, 1, r.body.len, stdout);
        esim_buf_free(&r.body);
        chttp_close(&c.http);
        return rc;
    }
    if (n_pos == 1 && esim_udid_validate(pos[0], NULL) != ESIM_OK)
        return cli_usage_error("devices: '%s' is not a UDID", pos[0]);
    if (n_pos == 1 && after)
        return cli_usage_error("devices: give a UDID or --after, not both");
    int rc = client_init(&c);
    client_reply r = {0};
    char path[200];
    if (n_pos == 1)
        snprintf(path, sizeof path, "/v1/devices/%s", pos[0]);
    else
        snprintf(path, sizeof path, "/v1/devices?limit=1000%s%s", after ? "&after=" : "",
                 after ? after : "");
    if (rc == CLI_EXIT_OK)
        rc = client_call(&c, "GET", path, NULL, NULL, &r);
    if (rc == CLI_EXIT_OK && r.status != 200) {
        rc = client_error(&r);
    } else if (rc == CLI_EXIT_OK && c.json) {
        fwrite(r.body.data, 1, r.body.len, stdout);
    } else if (rc == CLI_EXIT_OK) {
        json_t *root = json_loads((const char *)r.body.data, 0, NULL);
        json_t *list =
            n_pos == 1 ? json_pack("[O]", root) : json_incref(json_object_get(root, "devices"));
        printf("%-40s  %-8s  %-6s  %-10s  %-24s  %s\n", "UDID", "ENROLLED", "PUSH", "OS",
               "LAST_SEEN", "EID");
        size_t i;
        json_t *d;
        json_array_foreach(list, i, d)
            printf("%-40s  %-8s  %-6s  %-10s  %-24s  %s\n", jstr(d, "udid"),
                   json_is_true(json_object_get(d, "enrolled")) ? "yes" : "no",
                   jstr(json_object_get(d, "push"), "state"), jstr(d, "os_version"),
                   jstr(d, "last_seen_at"), jstr(d, "eid"));
        if (n_pos == 0 && json_is_string(json_object_get(root, "next_after")))
            printf("more: esim-mdm devices --after %s\n", jstr(root, "next_after"));
        json_decref(list);
        json_decref(root);
        if (n_pos == 1)
            rc = print_queue(&c, pos[0]);
    }
    esim_buf_free(&r.body);
    chttp_close(&c.http);
    return rc;
}

/* ---- cancel, retire ---- */

/* DELETE |path| on the service: its reply as is with --json, else |done|,
 * a line in words; an error reply in words (client_error). */
static int client_delete(client_opts *c, const char *path, const char *done)
{
    int rc = client_init(c);
    client_reply r = {0};
    if (rc == CLI_EXIT_OK)
        rc = client_call(c, "DELETE", path, NULL, NULL, &r);
    if (rc == CLI_EXIT_OK && r.status != 200)
        rc = client_error(&r);
    else if (rc == CLI_EXIT_OK && c->json)
        fwrite(r.body.data, 1, r.body.len, stdout);
    else if (rc == CLI_EXIT_OK)
        puts(done);
    esim_buf_free(&r.body);
    chttp_close(&c->http);
    return rc;
}

int cmd_cancel(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        puts("usage: esim-mdm cancel UDID COMMAND_UUID [--server URL] [--token-file F] "
             "[--cacert PEM] [--json]\n"
             "Cancels a command still waiting on a device's queue.\n"
             "\n"
             "example:\n"
             "  esim-mdm cancel 00008110-000A1B2C3D4E5F60 9C1E6C6A-2F41-4C7B-8E0B-3D0F2A9B7C11\n"
             "\n" CLIENT_COMMON_HELP);
        return CLI_EXIT_OK;
    }
    client_opts c = {0};
    const char *pos[2] = {NULL, NULL};
    int n_pos = 0;
    if (client_parse(&c, argc, argv, NULL, NULL, NULL, pos, 2, &n_pos) != 0)
        return CLI_EXIT_USAGE;
    if (n_pos != 2 || esim_udid_validate(pos[0], NULL) != ESIM_OK || strlen(pos[1]) > 127 ||
        strchr(pos[1], '/'))
        return cli_usage_error("cancel: give the device's UDID and the command's UUID");
    char path[256], done[256];
    snprintf(path, sizeof path, "/v1/devices/%s/queue/%s", pos[0], pos[1]);
    snprintf(done, sizeof done, "canceled %s on %s", pos[1], pos[0]);
    return client_delete(&c, path, done);
}

/* ---- retire ---- */

int cmd_retire(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        puts("usage: esim-mdm retire UDID [--server URL] [--token-file F] [--cacert PEM] [--json]\n"
             "Retires a device that left the fleet (DELETE /v1/devices/UDID; an admin key):\n"
             "the commands still waiting on it are canceled, it is no longer enrolled, its\n"
             "push token is forgotten and its identity released; its record and ledger stay.\n"
             "It does not touch the phone: send RemoveProfile first for that.\n"
             "\n"
             "example:\n"
             "  esim-mdm retire 00008110-000A1B2C3D4E5F60\n"
             "\n" CLIENT_COMMON_HELP);
        return CLI_EXIT_OK;
    }
    client_opts c = {0};
    const char *pos[1] = {NULL};
    int n_pos = 0;
    if (client_parse(&c, argc, argv, NULL, NULL, NULL, pos, 1, &n_pos) != 0)
        return CLI_EXIT_USAGE;
    if (n_pos != 1 || esim_udid_validate(pos[0], NULL) != ESIM_OK)
        return cli_usage_error("retire: give the device's UDID");
    char path[200], done[200];
    snprintf(path, sizeof path, "/v1/devices/%s", pos[0]);
    snprintf(done, sizeof done, "retired %s: no longer enrolled, its waiting commands canceled",
             pos[0]);
    return client_delete(&c, path, done);
}

/* ---- audit ---- */

static const cli_option audit_options[] = {
    {"after", true, C_OWN}, {"limit", true, C_OWN + 1}, {NULL, false, 0}};

typedef struct {
    long after, limit;
} audit_ctx;

static int audit_opt(void *ctx, int id, const char *v)
{
    audit_ctx *x = ctx;
    if (id == C_OWN)
        return cli_client_long("audit", "after", v, 0, 0x7fffffffffffffffL, &x->after) ==
                       CLI_EXIT_OK
                   ? 0
                   : -1;
    return cli_client_long("audit", "limit", v, 1, 1000, &x->limit) == CLI_EXIT_OK ? 0 : -1;
}

int cmd_audit(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        puts("usage: esim-mdm audit [--after ID] [--limit N] [--server URL] [--token-file F] "
             "[--cacert PEM] [--json]\n"
             "Shows the audit log of admin actions (GET /v1/audit; an admin key), oldest\n"
             "first: when, which API key and role, what (method and path), and the result.\n"
             "--limit N entries (1 to 1000, default 100) after the entry --after ID.\n"
             "\n"
             "example:\n"
             "  esim-mdm audit --after 1200 --limit 50\n"
             "\n" CLIENT_COMMON_HELP);
        return CLI_EXIT_OK;
    }
    client_opts c = {0};
    audit_ctx x = {0, 100};
    const char *pos[1] = {NULL};
    int n_pos = 0;
    if (client_parse(&c, argc, argv, audit_options, audit_opt, &x, pos, 0, &n_pos) != 0)
        return CLI_EXIT_USAGE;
    int rc = client_init(&c);
    client_reply r = {0};
    char path[200];
    snprintf(path, sizeof path, "/v1/audit?after=%ld&limit=%ld", x.after, x.limit);
    if (rc == CLI_EXIT_OK)
        rc = client_call(&c, "GET", path, NULL, NULL, &r);
    if (rc == CLI_EXIT_OK && r.status != 200) {
        rc = client_error(&r);
    } else if (rc == CLI_EXIT_OK && c.json) {
        fwrite(r.body.data, 1, r.body.len, stdout);
    } else if (rc == CLI_EXIT_OK) {
        json_t *root = json_loads((const char *)r.body.data, 0, NULL);
        printf("%-6s  %-24s  %-16s  %-9s  %-6s  %-40s  %s\n", "ID", "AT", "WHO", "ROLE", "METHOD",
               "TARGET", "RESULT");
        size_t i;
        json_t *a;
        json_array_foreach(json_object_get(root, "entries"), i, a)
        {
            json_t *detail = json_object_get(a, "detail");
            printf("%-6lld  %-24s  %-16s  %-9s  %-6s  %-40s  %lld%s%s\n",
                   (long long)json_integer_value(json_object_get(a, "id")), jstr(a, "at"),
                   jstr(a, "who"), jstr(a, "role"), jstr(a, "method"), jstr(a, "target"),
                   (long long)json_integer_value(json_object_get(a, "status")),
                   json_is_string(detail) ? " " : "",
                   json_is_string(detail) ? json_string_value(detail) : "");
        }
        json_t *next = json_object_get(root, "next_after");
        if (json_is_integer(next))
            printf("more: esim-mdm audit --after %lld\n", (long long)json_integer_value(next));
        json_decref(root);
    }
    esim_buf_free(&r.body);
    chttp_close(&c.http);
    return rc;
}

/* ---- windows: the Windows operations of the admin API ----
 * `esim-mdm windows esim|command|status`: POST /v1/windows/esim,
 * POST /v1/windows/commands and GET /v1/windows/esim/{uuid}. */

static const char windows_usage[] =
    "usage: esim-mdm windows esim OPERATION --udid ID [--udid ID...] [fields] [options]\n"
    "       esim-mdm windows command --udid ID [--udid ID...] --syncml FILE [options]\n"
    "       esim-mdm windows status COMMAND_UUID [options]\n"
    "\n"
    "Windows PCs managed over OMA-DM (the eUICCs CSP). `esim` queues an eSIM operation\n"
    "(one command per PC, its paths naming the PC's eUICC) and prints each PC's command\n"
    "UUID; `status` shows what became of it: each item's status code and the\n"
    "verification the service runs in the PC's later sessions (a 200 on Add only means\n"
    "accepted). `command` queues a raw SyncBody fragment (Add, Replace, Get, Exec,\n"
    "Delete, Atomic); FILE `-` reads standard input.\n"
    "\n"
    "OPERATION and its fields (docs/api.md, \"POST /v1/windows/esim\"):\n"
    "  add-server      --smdp FQDN [--auto-enable on|off] [--discovery on|off]\n"
    "  delete-server   --smdp FQDN\n"
    "  add-profile     --iccid ICCID --smdp FQDN --matching-id ID, or --activation-code\n"
    "                  LPA:1$FQDN$ID (or neither: from the imported activation codes)\n"
    "                  [--enabled on|off]\n"
    "  enable-profile  --iccid ICCID --enabled on|off\n"
    "  delete-profile  --iccid ICCID\n"
    "  local-ui        --local-ui on|off\n"
    "  reset           (Exec Actions/ResetToFactoryState: erases every profile)\n"
    "  --eid EID       the eUICC to address (one PC only; default: the EID it reported)\n"
    "\n"
    "queueing options (esim, command):\n"
    "  --priority N      -1000..1000 (default 0)\n"
    "  --expires-in S    the command expires after S seconds\n"
    "  --no-push         do not wake the PCs through WNS (they get it at their next poll)\n"
    "  --uuid U          (command) the command's UUID, its CmdID (default: a new one)\n"
    "  --request-type T  (command) what the ledger calls it (default: the first element)\n"
    "\n"
    "examples:\n"
    "  esim-mdm windows esim add-profile --udid 1EED4F6BAE0CE745B0D6C9BC5E8F6E3E \\\n"
    "      --iccid 8988247000001234567 --smdp smdp.example.com \\\n"
    "      --matching-id 0A1B2-C3D4E-5F6A7-B8C9D --enabled on\n"
    "  esim-mdm windows status 5F0C2D1E-8A47-4B6C-9D3E-1F2A3B4C5D6E\n"
    "\n"
    "common options:\n"
    "  --server URL      the service (default $ESIM_MDM_SERVER or http://127.0.0.1:8080)\n"
    "  --token-file F    the API key (default $ESIM_MDM_TOKEN_FILE or esim-mdm-data/api-token)\n"
    "  --cacert PEM      the CA of an https:// service with its own CA (default\n"
    "                    $ESIM_MDM_CACERT, $CURL_CA_BUNDLE or $SSL_CERT_FILE, else the system's)\n"
    "  --json            the API's JSON answer on stdout, nothing else\n"
    "exit status: 0 done, 1 the service refused or could not be reached, 2 bad options.\n";

enum {
    W_UDID = C_OWN,
    W_SMDP,
    W_ICCID,
    W_MID,
    W_AC,
    W_EID,
    W_ENABLED,
    W_AUTO,
    W_DISCOVERY,
    W_LOCAL_UI,
    W_PRIORITY,
    W_EXPIRES,
    W_NO_PUSH,
    W_SYNCML,
    W_UUID,
    W_TYPE,
};

static const cli_option windows_options[] = {
    {"udid", true, W_UDID},
    {"smdp", true, W_SMDP},
    {"iccid", true, W_ICCID},
    {"matching-id", true, W_MID},
    {"activation-code", true, W_AC},
    {"eid", true, W_EID},
    {"enabled", true, W_ENABLED},
    {"auto-enable", true, W_AUTO},
    {"discovery", true, W_DISCOVERY},
    {"local-ui", true, W_LOCAL_UI},
    {"priority", true, W_PRIORITY},
    {"expires-in", true, W_EXPIRES},
    {"no-push", false, W_NO_PUSH},
    {"syncml", true, W_SYNCML},
    {"uuid", true, W_UUID},
    {"request-type", true, W_TYPE},
    {NULL, false, 0},
};

typedef struct {
    const char *sub; /* "esim", "command", "status" */
    json_t *body;    /* the request, filled as options come */
    json_t *udids;
    const char *syncml_path;
} windows_ctx;

/* The JSON key each string-valued option fills, and for which subcommand. */
static const struct {
    int id;
    const char *key;
    bool esim; /* esim (true) or command (false) */
} windows_string_keys[] = {
    {W_SMDP, "server", true},        {W_ICCID, "iccid", true}, {W_MID, "matching_id", true},
    {W_AC, "activation_code", true}, {W_EID, "eid", true},     {W_UUID, "uuid", false},
    {W_TYPE, "request_type", false},
};

/* on|off (true|false) options and their JSON keys (esim only). */
static const struct {
    int id;
    const char *key;
} windows_bool_keys[] = {{W_ENABLED, "enabled"},
                         {W_AUTO, "auto_enable"},
                         {W_DISCOVERY, "discovery"},
                         {W_LOCAL_UI, "local_ui_enabled"}};

static int windows_opt(void *ctx, int id, const char *v)
{
    windows_ctx *x = ctx;
    const char *cmd = "windows";
    bool esim = strcmp(x->sub, "esim") == 0, command = strcmp(x->sub, "command") == 0;
    const char *name = NULL;
    for (size_t i = 0; windows_options[i].name; i++)
        if (windows_options[i].id == id)
            name = windows_options[i].name;
    if (!esim && !command) {
        fprintf(stderr, "esim-mdm windows: --%s does not apply to `windows %s`\n", name, x->sub);
        return -1;
    }
    for (size_t i = 0; i < sizeof windows_string_keys / sizeof windows_string_keys[0]; i++) {
        if (windows_string_keys[i].id != id)
            continue;
        if (windows_string_keys[i].esim != esim) {
            fprintf(stderr, "esim-mdm windows: --%s does not apply to `windows %s`\n", name,
                    x->sub);
            return -1;
        }
        json_object_set_new(x->body, windows_string_keys[i].key, json_string(v));
        return 0;
    }
    for (size_t i = 0; i < sizeof windows_bool_keys / sizeof windows_bool_keys[0]; i++) {
        if (windows_bool_keys[i].id != id)
            continue;
        if (!esim) {
            fprintf(stderr, "esim-mdm windows: --%s does not apply to `windows %s`\n", name,
                    x->sub);
            return -1;
        }
        bool on = strcmp(v, "on") == 0 || strcmp(v, "true") == 0;
        if (!on && strcmp(v, "off") != 0 && strcmp(v, "false") != 0) {
            cli_bad_option_value(cmd, name, v, "on or off");
            return -1;
        }
        json_object_set_new(x->body, windows_bool_keys[i].key, json_boolean(on));
        return 0;
    }
    long n = 0;
    switch (id) {
    case W_UDID:
        json_array_append_new(x->udids, json_string(v));
        return 0;
    case W_PRIORITY:
        if (cli_client_long(cmd, "priority", v, -1000, 1000, &n) != CLI_EXIT_OK)
            return -1;
        json_object_set_new(x->body, "priority", json_integer(n));
        return 0;
    case W_EXPIRES:
        if (cli_client_long(cmd, "expires-in", v, 1, 315360000, &n) != CLI_EXIT_OK)
            return -1;
        json_object_set_new(x->body, "expires_in_s", json_integer(n));
        return 0;
    case W_NO_PUSH:
        json_object_set_new(x->body, "push", json_false());
        return 0;
    case W_SYNCML:
        if (!command) {
            fprintf(stderr, "esim-mdm windows: --syncml applies to `windows command` only\n");
            return -1;
        }
        x->syncml_path = v;
        return 0;
    }
    return -1;
}

/* "add-profile" -> "add_profile", when it is an operation of the API. */
static bool windows_operation(const char *word, char *out, size_t len)
{
    static const char *const ops[] = {"add-server",     "delete-server",  "add-profile",
                                      "enable-profile", "delete-profile", "local-ui",
                                      "reset"};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        if (strcmp(word, ops[i]) != 0)
            continue;
        snprintf(out, len, "%s", word);
        for (char *c = out; *c; c++)
            if (*c == '-')
                *c = '_';
        return true;
    }
    return false;
}

/* The SyncML of --syncml FILE (or - for stdin), into *out (caller frees). */
static int windows_read_syncml(const char *path, char **out)
{
    esim_buf b = {0};
    esim_error e = {{0}};
    if (strcmp(path, "-") == 0) {
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
            if (esim_buf_append(&b, chunk, n) != ESIM_OK || b.len > (1u << 20))
                break;
        if (b.len > (1u << 20)) {
            esim_buf_free(&b);
            fprintf(stderr, "esim-mdm windows: --syncml -: more than 1 MiB\n");
            return CLI_EXIT_USAGE;
        }
    } else if (esim_read_file(path, 1u << 20, &b, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm windows: --syncml %s: %s\n", path, e.msg);
        return CLI_EXIT_USAGE;
    }
    *out = strndup(b.data ? (const char *)b.data : "", b.len);
    esim_buf_free(&b);
    return *out ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

static void windows_print_queued(json_t *root)
{
    json_t *cmds = json_object_get(root, "commands");
    if (json_is_array(cmds)) {
        printf("%s queued for %zu PC(s)\n%-34s  %-36s  %s\n", jstr(root, "operation"),
               json_array_size(cmds), "DEVICE", "COMMAND_UUID", "PUSH");
        size_t i;
        json_t *c;
        json_array_foreach(cmds, i, c)
            printf("%-34s  %-36s  %s\n", jstr(c, "udid"), jstr(c, "command_uuid"), jstr(c, "push"));
        return;
    }
    printf("command %s queued\n%-34s  %s\n", jstr(root, "command_uuid"), "DEVICE", "PUSH");
    const char *udid;
    json_t *d;
    json_object_foreach(json_object_get(root, "devices"), udid, d)
        printf("%-34s  %s\n", udid, jstr(d, "push"));
}

static void windows_print_status(json_t *root)
{
    printf("command %s (%s)\n", jstr(root, "command_uuid"), jstr(root, "request_type"));
    size_t i, k;
    json_t *d, *it;
    json_array_foreach(json_object_get(root, "devices"), i, d)
    {
        json_t *v = json_object_get(d, "verification");
        printf("%s  %s  verification %s%s%s\n", jstr(d, "udid"), jstr(d, "state"),
               json_is_string(v) ? json_string_value(v) : "(no answer yet)",
               json_is_string(json_object_get(d, "detail")) ? ": " : "",
               json_is_string(json_object_get(d, "detail")) ? jstr(d, "detail") : "");
        json_array_foreach(json_object_get(d, "syncml"), k, it)
        {
            json_t *hr = json_object_get(it, "hresult"), *data = json_object_get(it, "data");
            printf("  %-7s %3lld  %s%s%s%s%s\n", jstr(it, "cmd"),
                   (long long)json_integer_value(json_object_get(it, "code")), jstr(it, "target"),
                   json_is_string(hr) ? "  HRESULT " : "",
                   json_is_string(hr) ? jstr(it, "hresult") : "",
                   json_is_string(data) ? "  = " : "",
                   json_is_string(data) ? jstr(it, "data") : "");
        }
    }
}

int cmd_windows(int argc, char **argv)
{
    if (cli_wants_help(argc, argv) || argc < 2) {
        if (argc < 2 && !cli_wants_help(argc, argv)) {
            fputs(windows_usage, stderr);
            return CLI_EXIT_USAGE;
        }
        fputs(windows_usage, stdout);
        return CLI_EXIT_OK;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "esim") != 0 && strcmp(sub, "command") != 0 && strcmp(sub, "status") != 0)
        return cli_usage_error("windows: give esim, command or status (esim-mdm windows --help)");
    windows_ctx x = {.sub = sub, .body = json_object(), .udids = json_array()};
    client_opts c = {0};
    const char *pos[1] = {NULL};
    int n_pos = 0, rc = CLI_EXIT_USAGE;
    char *syncml = NULL, *text = NULL, path[160];
    client_reply r = {0};
    /* Parse from the subcommand on, named "windows esim" (...) in messages. */
    char name[32];
    snprintf(name, sizeof name, "windows %s", sub);
    char **av = calloc((size_t)argc, sizeof *av);
    if (!av) {
        rc = CLI_EXIT_FAIL;
        goto out;
    }
    av[0] = name;
    for (int i = 2; i < argc; i++)
        av[i - 1] = argv[i];
    int parsed = client_parse(&c, argc - 1, av, windows_options, windows_opt, &x, pos, 1, &n_pos);
    free(av);
    if (parsed != 0)
        goto out;
    if (strcmp(sub, "status") == 0) {
        if (n_pos != 1 || strlen(pos[0]) > 100 || strchr(pos[0], '/') || strchr(pos[0], '?')) {
            rc = cli_usage_error("windows status: give the command's UUID, as printed by "
                                 "`esim-mdm windows esim`");
            goto out;
        }
        snprintf(path, sizeof path, "/v1/windows/esim/%s", pos[0]);
    } else {
        if (!json_array_size(x.udids)) {
            rc = cli_missing("windows", "--udid ID (one per PC)");
            goto out;
        }
        json_object_set(x.body, "udids", x.udids);
        if (strcmp(sub, "esim") == 0) {
            char op[32];
            if (n_pos != 1 || !windows_operation(pos[0], op, sizeof op)) {
                rc = cli_usage_error("windows esim: give one operation: add-server, "
                                     "delete-server, add-profile, enable-profile, "
                                     "delete-profile, local-ui or reset");
                goto out;
            }
            json_object_set_new(x.body, "operation", json_string(op));
            snprintf(path, sizeof path, "/v1/windows/esim");
        } else {
            if (n_pos != 0) {
                rc = cli_unexpected("windows", pos[0]);
                goto out;
            }
            if (!x.syncml_path) {
                rc = cli_missing("windows", "--syncml FILE (the SyncBody fragment; - for stdin)");
                goto out;
            }
            if ((rc = windows_read_syncml(x.syncml_path, &syncml)) != CLI_EXIT_OK)
                goto out;
            json_object_set_new(x.body, "syncml", json_string(syncml));
            if (!json_object_get(x.body, "syncml")) {
                fprintf(stderr, "esim-mdm windows: --syncml %s is not UTF-8 text\n", x.syncml_path);
                rc = CLI_EXIT_USAGE;
                goto out;
            }
            snprintf(path, sizeof path, "/v1/windows/commands");
        }
        text = json_dumps(x.body, JSON_COMPACT);
    }
    if ((rc = client_init(&c)) != CLI_EXIT_OK)
        goto out;
    rc = client_call(&c, text ? "POST" : "GET", path, text, text ? "application/json" : NULL, &r);
    if (rc == CLI_EXIT_OK && r.status != 200 && r.status != 201)
        rc = client_error(&r);
    else if (rc == CLI_EXIT_OK && c.json)
        fwrite(r.body.data, 1, r.body.len, stdout);
    else if (rc == CLI_EXIT_OK) {
        json_t *root = json_loadb((const char *)r.body.data, r.body.len, 0, NULL);
        if (text)
            windows_print_queued(root);
        else
            windows_print_status(root);
        json_decref(root);
    }
out:
    esim_buf_free(&r.body);
    chttp_close(&c.http);
    free(syncml);
    free(text);
    json_decref(x.body);
    json_decref(x.udids);
    return rc;
}
