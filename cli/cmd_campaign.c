/*
 * cmd_campaign.c — `esim-mdm campaign`, `diagnose` and `import`: admin API
 * clients for eSIM roll-out campaigns, with a live progress bar on a
 * terminal and the API's JSON with --json. (`esim-mdm demo` is cmd_demo.c.)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/campaign_http.h"
#include "cli/progress.h"
#include "cli/cli.h"
#include "cli/options.h"

/* ---- shared ------------------------------------------------------------------------ */

static long jint(const json_t *o, const char *k)
{
    return (long)json_integer_value(json_object_get(o, k));
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void print_json(const json_t *j)
{
    char *t = json_dumps(j, JSON_COMPACT);
    if (t)
        puts(t);
    free(t);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Final device states, as the service names them. */
static const char *const final_states[] = {"verified",  "done",     "unverified", "failed",
                                           "timed_out", "canceled", "staged"};

/* One line: the counts that matter and, on a terminal (|columns| > 0), a
 * bar of finished devices, redrawn in place within its width. */
void campaign_progress_line(FILE *out, const json_t *summary, double elapsed_s, int columns)
{
    const json_t *counts = json_object_get(summary, "counts");
    progress_counts c = {.total = jint(summary, "devices"),
                         .verified = jint(counts, "verified"),
                         .refresh_acked = jint(summary, "refresh_acknowledged"),
                         .active = jint(counts, "active") + jint(counts, "pending"),
                         .waiting = jint(counts, "retry_wait"),
                         .failed = jint(counts, "failed"),
                         .unverified = jint(counts, "unverified"),
                         .timed_out = jint(counts, "timed_out"),
                         .elapsed_s = elapsed_s};
    for (size_t i = 0; i < sizeof final_states / sizeof final_states[0]; i++)
        c.finished += jint(counts, final_states[i]);
    char line[400];
    progress_format(line, sizeof line, &c, columns);
    fprintf(out, columns > 0 ? "\r%s\033[K" : "%s\n", line);
    fflush(out);
}

/*
 * Polls GET /v1/campaigns/ID until it is finished or canceled (or
 * |max_s| passes, 0 = no limit), drawing progress on stderr: redrawn in
 * place on a terminal, a line every 2 s otherwise. *last gets the final
 * summary (caller decrefs). Returns 0, or 1 on an API failure/timeout.
 */
int campaign_follow(chttp *c, const char *id, double max_s, bool quiet, json_t **last)
{
    bool tty = isatty(STDERR_FILENO);
    int columns = progress_columns(STDERR_FILENO);
    int64_t start = esim_mono_ms(), last_line = 0;
    char path[256];
    snprintf(path, sizeof path, "/v1/campaigns/%s?limit=0", id);
    *last = NULL;
    for (;;) {
        long status = 0;
        json_t *s = NULL;
        esim_error e = {{0}};
        if (chttp_call(c, "GET", path, NULL, NULL, 0, &status, &s, &e) != ESIM_OK ||
            status != 200) {
            fprintf(stderr, "%sesim-mdm: campaign %s: %s\n", tty && !quiet ? "\n" : "", id,
                    e.msg[0] ? e.msg : chttp_error_message(s));
            json_decref(s);
            return CLI_EXIT_FAIL;
        }
        double el = (double)(esim_mono_ms() - start) / 1000.0;
        const char *state = jstr(s, "state");
        bool done = strcmp(state, "finished") == 0 || strcmp(state, "canceled") == 0;
        if (!quiet && (tty || done || esim_mono_ms() - last_line >= 2000)) {
            campaign_progress_line(stderr, s, el, columns);
            last_line = esim_mono_ms();
        }
        json_decref(*last);
        *last = s;
        if (done) {
            if (tty && !quiet)
                fputc('\n', stderr);
            return CLI_EXIT_OK;
        }
        if (max_s > 0 && el > max_s) {
            if (!quiet)
                fprintf(stderr, "%sesim-mdm: campaign %s not finished after %.0f s\n",
                        tty ? "\n" : "", id, max_s);
            return CLI_EXIT_FAIL;
        }
        sleep_ms(tty ? 200 : 500);
    }
}

static void print_summary(const json_t *s)
{
    const json_t *counts = json_object_get(s, "counts");
    printf("campaign %s%s%s%s: %s, %ld devices\n", jstr(s, "id"), jstr(s, "name")[0] ? " (" : "",
           jstr(s, "name"), jstr(s, "name")[0] ? ")" : "", jstr(s, "state"), jint(s, "devices"));
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)counts, key, v)
    {
        if (json_integer_value(v))
            printf("  %-12s %lld\n", key, (long long)json_integer_value(v));
    }
    printf("  refresh acknowledged %ld (an acknowledged refresh is not an installed eSIM; "
           "verified counts those)\n",
           jint(s, "refresh_acknowledged"));
    printf("  pushes %ld, commands %ld\n", jint(s, "pushes"), jint(s, "commands"));
}

static void print_warnings(const json_t *s)
{
    const json_t *w = json_object_get(s, "warnings");
    long total = jint(s, "warnings_total");
    if (!total)
        return;
    fprintf(stderr, "warnings before sending (%ld):\n", total);
    size_t i;
    json_t *v;
    json_array_foreach((json_t *)w, i, v)
    {
        if (i >= 20) {
            fprintf(stderr, "  ... and %ld more (see --json)\n", total - 20);
            break;
        }
        fprintf(stderr, "  %s: %s%s%s\n", jstr(v, "udid"), jstr(v, "key"),
                jstr(v, "key")[0] ? " " : "", jstr(v, "reason"));
    }
}

/* ---- campaign ------------------------------------------------------------------------- */

static const char campaign_help[] =
    "usage: esim-mdm campaign create TARGET [options]\n"
    "       esim-mdm campaign status ID [--watch] [--json]\n"
    "       esim-mdm campaign devices ID [--state STATE] [--json]\n"
    "       esim-mdm campaign pause|resume|cancel ID [--json]\n"
    "       esim-mdm campaign list [--json]\n"
    "\n"
    "Rolls an eSIM out to a fleet and follows every device: restrictions profile,\n"
    "RefreshCellularPlans to the SM-DP+, then verification (DeviceInformation\n"
    "ServiceSubscriptions must show the expected EID, and ICCID where known).\n"
    "\n"
    "target (one):\n"
    "  --udid UDID (repeatable) | --group NAME | --tag TAG | --platform ios|ipados|macos|tvos | "
    "--all\n"
    "distribution:\n"
    "  --distribution all|none|custom   none = staged, nothing sent until `resume`\n"
    "  --custom-udid UDID (repeatable)  with custom: only these devices of the target\n"
    "steps and settings:\n"
    "  --steps LIST              default profile,refresh,verify; also erase_keep_esim,\n"
    "                            esim_wipe (EraseDevice with / without PreserveDataPlan)\n"
    "  --smdp URL                the SM-DP+ for RefreshCellularPlans\n"
    "  --esim-modification allow|deny  --preserve-esim-on-erase on|off\n"
    "  --esim-outgoing-transfers allow|deny  --cellular-plan-modification allow|deny\n"
    "  --pushes-per-second N     ceiling on new pushes (default 1000)\n"
    "  --repush-after S          push again a device silent this long (default 14400)\n"
    "  --expiry S                unfinished devices time out after this (default 604800)\n"
    "  --retry-base S --retry-max S --max-retries N --verify-attempts N\n"
    "  --max-in-flight N         devices with a command outstanding before new ones wait\n"
    "                            (default 0: no limit)\n"
    "  --name NAME  --wait (follow until finished)  --json\n"
    "common: --server URL (default $ESIM_MDM_SERVER or http://127.0.0.1:8080)\n"
    "        --token-file F (default $ESIM_MDM_TOKEN_FILE or esim-mdm-data/api-token)\n"
    "        --cacert PEM (an https:// service's own CA; default $ESIM_MDM_CACERT,\n"
    "        $CURL_CA_BUNDLE or $SSL_CERT_FILE, else the system's)\n"
    "\n"
    "example:\n"
    "  esim-mdm campaign create --all --smdp https://smdp.example.com \\\n"
    "      --esim-modification deny --preserve-esim-on-erase on --wait\n"
    "\n"
    "exit status: 0 done, 1 the service failed or (with --wait/--watch) devices are not\n"
    "verified, 2 bad options.\n";

typedef struct {
    const char *server, *token_file, *cacert;
    bool json, wait, watch;
    const char *state;
    json_t *body, *target, *udids, *custom, *policy, *settings;
} camp_opts;

static int campaign_create(camp_opts *o)
{
    json_t *b = o->body;
    if (json_object_size(o->target) != 1)
        return cli_usage_error("campaign create: give one target: --udid, --group, --tag, "
                               "--platform or --all");
    json_object_set(b, "target", o->target);
    if (!json_object_get(b, "steps")) {
        json_t *steps = json_array();
        json_array_append_new(steps, json_string("profile"));
        json_array_append_new(steps, json_string("refresh"));
        json_array_append_new(steps, json_string("verify"));
        json_object_set_new(b, "steps", steps);
    }
    if (json_object_size(o->policy))
        json_object_set(b, "policy", o->policy);
    if (json_object_size(o->settings))
        json_object_set(b, "settings", o->settings);
    if (json_array_size(o->custom))
        json_object_set(b, "custom_udids", o->custom);
    chttp c;
    if (!chttp_open_api(&c, o->server, o->token_file))
        return CLI_EXIT_USAGE;
    if (o->cacert)
        chttp_set_ca(&c, o->cacert);
    char *text = json_dumps(b, JSON_COMPACT);
    long status = 0;
    json_t *r = NULL;
    esim_error e = {{0}};
    int rc = CLI_EXIT_OK;
    if (chttp_call(&c, "POST", "/v1/campaigns", NULL, text, text ? strlen(text) : 0, &status, &r,
                   &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm campaign: %s\n", e.msg);
        rc = CLI_EXIT_FAIL;
    } else if (status != 201) {
        fprintf(stderr, "esim-mdm campaign: the service answered %ld: %s\n", status,
                chttp_error_message(r));
        rc = status >= 400 && status < 500 && status != 401 ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    } else {
        if (!o->json) {
            print_warnings(r);
            printf("created campaign %s (%ld devices, %s)\n", jstr(r, "id"), jint(r, "devices"),
                   jstr(r, "state"));
        }
        if (o->wait) {
            json_t *last = NULL;
            rc = campaign_follow(&c, jstr(r, "id"), 0, o->json, &last);
            if (rc == CLI_EXIT_OK) {
                const json_t *counts = json_object_get(last, "counts");
                if (jint(counts, "failed") + jint(counts, "unverified") + jint(counts, "timed_out"))
                    rc = CLI_EXIT_FAIL;
                if (o->json)
                    print_json(last);
                else
                    print_summary(last);
            }
            json_decref(last);
        } else if (o->json)
            print_json(r);
    }
    free(text);
    json_decref(r);
    chttp_close(&c);
    return rc;
}

static int campaign_simple(camp_opts *o, const char *verb, const char *id)
{
    chttp c;
    if (!chttp_open_api(&c, o->server, o->token_file))
        return CLI_EXIT_USAGE;
    if (o->cacert)
        chttp_set_ca(&c, o->cacert);
    char path[512];
    const char *method = "GET";
    if (strcmp(verb, "list") == 0)
        snprintf(path, sizeof path, "/v1/campaigns");
    else if (strcmp(verb, "status") == 0)
        snprintf(path, sizeof path, "/v1/campaigns/%s?limit=%d", id, o->json ? 1000 : 0);
    else if (strcmp(verb, "devices") == 0)
        snprintf(path, sizeof path, "/v1/campaigns/%s/devices%s%s", id, o->state ? "?state=" : "",
                 o->state ? o->state : "");
    else {
        snprintf(path, sizeof path, "/v1/campaigns/%s/%s", id, verb);
        method = "POST";
    }
    long status = 0;
    json_t *r = NULL;
    esim_error e = {{0}};
    int rc = CLI_EXIT_OK;
    if (chttp_call(&c, method, path, NULL, strcmp(method, "POST") == 0 ? "" : NULL, 0, &status, &r,
                   &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm campaign: %s\n", e.msg);
        rc = CLI_EXIT_FAIL;
    } else if (status != 200) {
        fprintf(stderr, "esim-mdm campaign %s: the service answered %ld: %s\n", verb, status,
                chttp_error_message(r));
        rc = status >= 400 && status < 500 && status != 401 ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    } else if (strcmp(verb, "status") == 0 && o->watch) {
        json_t *last = NULL;
        rc = campaign_follow(&c, id, 0, o->json, &last);
        if (rc == CLI_EXIT_OK) {
            if (o->json)
                print_json(last);
            else
                print_summary(last);
        }
        json_decref(last);
    } else if (o->json) {
        print_json(r);
    } else if (strcmp(verb, "list") == 0) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(r, "campaigns"), i, v)
            printf("%s  %-9s %8ld devices  %8ld verified  %s\n", jstr(v, "id"), jstr(v, "state"),
                   jint(v, "devices"), jint(v, "verified"), jstr(v, "name"));
    } else if (strcmp(verb, "devices") == 0) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(r, "devices"), i, v)
            printf("%-40s %-10s %-16s %s\n", jstr(v, "udid"), jstr(v, "state"), jstr(v, "step"),
                   jstr(v, "reason"));
    } else {
        print_summary(r);
    }
    json_decref(r);
    chttp_close(&c);
    return rc;
}

int cmd_campaign(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(campaign_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    const char *verb = argv[1];
    static const char *const verbs[] = {"create", "status", "devices", "pause",
                                        "resume", "cancel", "list"};
    bool known = false;
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        known |= strcmp(verb, verbs[i]) == 0;
    if (!known)
        return cli_usage_error("campaign: unknown action '%s' (create, status, devices, pause, "
                               "resume, cancel, list)",
                               verb);
    camp_opts o = {0};
    o.body = json_object();
    o.target = json_object();
    o.udids = json_array();
    o.custom = json_array();
    o.policy = json_object();
    o.settings = json_object();
    const char *id = NULL;
    int rc = -1;
    enum {
        O_JSON,
        O_WAIT,
        O_WATCH,
        O_ALL,
        O_SERVER,
        O_TOKEN_FILE,
        O_CACERT,
        O_STATE,
        O_UDID,
        O_GROUP,
        O_TAG,
        O_PLATFORM,
        O_DISTRIBUTION,
        O_CUSTOM_UDID,
        O_NAME,
        O_SMDP,
        O_STEPS,
        O_POLICY,       /* the 4 eSIM settings: O_POLICY + k */
        O_NUMBER = 100, /* the 8 numeric settings: O_NUMBER + k */
    };
    static const char *const number_keys[] = {"pushes_per_second", "repush_after_s", "expiry_s",
                                              "retry_base_s",      "retry_max_s",    "max_retries",
                                              "verify_attempts",   "max_in_flight"};
    static const cli_option options[] = {
        {"json", false, O_JSON},
        {"wait", false, O_WAIT},
        {"watch", false, O_WATCH},
        {"all", false, O_ALL},
        {"server", true, O_SERVER},
        {"token-file", true, O_TOKEN_FILE},
        {"cacert", true, O_CACERT},
        {"state", true, O_STATE},
        {"udid", true, O_UDID},
        {"group", true, O_GROUP},
        {"tag", true, O_TAG},
        {"platform", true, O_PLATFORM},
        {"distribution", true, O_DISTRIBUTION},
        {"custom-udid", true, O_CUSTOM_UDID},
        {"name", true, O_NAME},
        {"smdp", true, O_SMDP},
        {"steps", true, O_STEPS},
        {"esim-modification", true, O_POLICY + 0},
        {"preserve-esim-on-erase", true, O_POLICY + 1},
        {"esim-outgoing-transfers", true, O_POLICY + 2},
        {"cellular-plan-modification", true, O_POLICY + 3},
        {"pushes-per-second", true, O_NUMBER + 0},
        {"repush-after", true, O_NUMBER + 1},
        {"expiry", true, O_NUMBER + 2},
        {"retry-base", true, O_NUMBER + 3},
        {"retry-max", true, O_NUMBER + 4},
        {"max-retries", true, O_NUMBER + 5},
        {"verify-attempts", true, O_NUMBER + 6},
        {"max-in-flight", true, O_NUMBER + 7},
        {NULL, false, 0},
    };
    char cmd[32];
    snprintf(cmd, sizeof cmd, "campaign %s", verb);
    cli_parser p;
    cli_parser_init(&p, cmd, options, argc, argv, 2);
    for (int c; rc < 0 && (c = cli_next(&p)) != CLI_END;) {
        const char *v = p.value;
        switch (c) {
        case CLI_ERROR:
            rc = CLI_EXIT_USAGE;
            break;
        case CLI_ARG:
            if (id)
                rc = cli_unexpected(cmd, v);
            id = v;
            break;
        case O_JSON:
            o.json = true;
            break;
        case O_WAIT:
            o.wait = true;
            break;
        case O_WATCH:
            o.watch = true;
            break;
        case O_ALL:
            json_object_set_new(o.target, "all", json_true());
            break;
        case O_SERVER:
            o.server = v;
            break;
        case O_TOKEN_FILE:
            o.token_file = v;
            break;
        case O_CACERT:
            o.cacert = v;
            break;
        case O_STATE:
            o.state = v;
            break;
        case O_UDID:
            json_array_append_new(o.udids, json_string(v));
            json_object_set(o.target, "udids", o.udids);
            break;
        case O_GROUP:
            json_object_set_new(o.target, "group", json_string(v));
            break;
        case O_TAG:
            json_object_set_new(o.target, "tag", json_string(v));
            break;
        case O_PLATFORM:
            json_object_set_new(o.target, "platform", json_string(v));
            break;
        case O_DISTRIBUTION:
            json_object_set_new(o.body, "distribution", json_string(v));
            break;
        case O_CUSTOM_UDID:
            json_array_append_new(o.custom, json_string(v));
            break;
        case O_NAME:
            json_object_set_new(o.body, "name", json_string(v));
            break;
        case O_SMDP:
            json_object_set_new(o.body, "smdp_url", json_string(v));
            break;
        case O_STEPS: {
            json_t *steps = json_array();
            char *copy = strdup(v), *save = NULL;
            for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t;
                 t = strtok_r(NULL, ",", &save))
                json_array_append_new(steps, json_string(t));
            free(copy);
            json_object_set_new(o.body, "steps", steps);
            break;
        }
        default:
            if (c >= O_NUMBER) {
                double x;
                if (!cli_parse_double(v, -HUGE_VAL, HUGE_VAL, &x))
                    rc = cli_bad_value(&p, "wants a number");
                else
                    json_object_set_new(o.settings, number_keys[c - O_NUMBER], json_real(x));
            } else {
                json_object_set_new(o.policy, p.match->name, json_string(v));
            }
        }
    }
    if (rc < 0) {
        if (strcmp(verb, "create") == 0)
            rc = id ? cli_unexpected("campaign create", id) : campaign_create(&o);
        else if (strcmp(verb, "list") != 0 && !id)
            rc = cli_missing(cmd, "the campaign ID");
        else
            rc = campaign_simple(&o, verb, id);
    }
    json_decref(o.body);
    json_decref(o.target);
    json_decref(o.udids);
    json_decref(o.custom);
    json_decref(o.policy);
    json_decref(o.settings);
    return rc;
}

/* ---- diagnose ------------------------------------------------------------------------------ */

static const char diagnose_help[] =
    "usage: esim-mdm diagnose UDID [--smdp URL [--ca PEM] [--smdp-token-file F]] [--server URL] "
    "[--token-file F] [--cacert PEM] [--json]\n"
    "\n"
    "Walks the checks a support engineer would: enrolled and token valid? the last\n"
    "push, when, and APNs's answer; did the device check in after it? the commands\n"
    "it got and what it answered; the restrictions in force; the expected eSIM;\n"
    "with --smdp, the SM-DP+'s order for the device (the simulator's /admin/orders);\n"
    "is the eSIM verified? It ends with one conclusion and the next action.\n"
    "\n"
    "--cacert PEM is the CA of an https:// service with its own CA (default\n"
    "$ESIM_MDM_CACERT, $CURL_CA_BUNDLE or $SSL_CERT_FILE); --ca is the SM-DP+'s.\n"
    "\n"
    "example:\n"
    "  esim-mdm diagnose 00008110-000A1B2C3D4E5F60 --smdp https://127.0.0.1:9443 --ca pki/ca.pem\n"
    "\n"
    "exit status: 0 diagnosed, 1 the service could not be asked, 2 bad options.\n";

/* The SM-DP+ simulator's order for |eid|, as a check. */
static void smdp_check(json_t *diag, const char *smdp, const char *ca, const char *token_file)
{
    const char *eid = jstr(diag, "expected_eid");
    json_t *checks = json_object_get(diag, "checks");
    chttp c;
    chttp_open_plain(&c, smdp, ca);
    /* The simulator's admin token (esim-mdm smdp writes PKI/smdp-admin-token). */
    char *tok = NULL;
    esim_error te = {{0}};
    if (token_file && esim_read_token_file(token_file, &tok, &te) != ESIM_OK)
        fprintf(stderr, "esim-mdm diagnose: --smdp-token-file: %s\n", te.msg);
    if (tok)
        snprintf(c.token, sizeof c.token, "%s", tok);
    free(tok);
    long status = 0;
    json_t *r = NULL;
    esim_error e = {{0}};
    json_t *check = json_object();
    json_object_set_new(check, "name", json_string("smdp_order"));
    char detail[600];
    json_t *ok = json_null();
    /* That EID's orders only (the loop below still picks by EID): the whole
     * list costs the SM-DP+ ~2 KB of memory per order while it is built. */
    char opath[96] = "/admin/orders";
    if (eid[0] && esim_eid_validate(eid, NULL) == ESIM_OK)
        snprintf(opath, sizeof opath, "/admin/orders?eid=%s", eid);
    if (chttp_call(&c, "GET", opath, NULL, NULL, 0, &status, &r, &e) != ESIM_OK || status != 200) {
        snprintf(detail, sizeof detail, "could not ask the SM-DP+: %s",
                 e.msg[0] ? e.msg : chttp_error_message(r));
    } else {
        const json_t *order = NULL;
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(r, "orders"), i,
                           v) if (eid[0] && strcmp(jstr(v, "eid"), eid) == 0) order = v;
        if (!order)
            snprintf(detail, sizeof detail, "the SM-DP+ has no order for EID %s",
                     eid[0] ? eid : "(unknown)");
        else {
            snprintf(detail, sizeof detail,
                     "order %s for EID %s: %s, served %ld time%s, installed %ld%s%s",
                     jstr(order, "iccid"), eid, jstr(order, "state"), jint(order, "downloads"),
                     jint(order, "downloads") == 1 ? "" : "s", jint(order, "installs"),
                     jstr(order, "error")[0] ? ", error: " : "", jstr(order, "error"));
            json_decref(ok);
            ok = json_boolean(strcmp(jstr(order, "state"), "Installed") == 0);
            json_object_set_new(diag, "smdp_order_state", json_string(jstr(order, "state")));
        }
    }
    json_object_set_new(check, "ok", ok);
    json_object_set_new(check, "detail", json_string(detail));
    json_array_append_new(checks, check);
    json_decref(r);
    chttp_close(&c);
}

int cmd_diagnose(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(diagnose_help, stdout);
        return CLI_EXIT_OK;
    }
    const char *udid = NULL, *server = NULL, *token = NULL, *smdp = NULL, *ca = NULL,
               *smdp_token = NULL, *cacert = NULL;
    bool json = false;
    enum { D_JSON, D_SERVER, D_TOKEN_FILE, D_SMDP, D_CA, D_SMDP_TOKEN_FILE, D_CACERT };
    static const cli_option options[] = {{"json", false, D_JSON},
                                         {"server", true, D_SERVER},
                                         {"token-file", true, D_TOKEN_FILE},
                                         {"smdp", true, D_SMDP},
                                         {"ca", true, D_CA},
                                         {"smdp-token-file", true, D_SMDP_TOKEN_FILE},
                                         {"cacert", true, D_CACERT},
                                         {NULL, false, 0}};
    cli_parser p;
    cli_parser_init(&p, "diagnose", options, argc, argv, 1);
    for (int c; (c = cli_next(&p)) != CLI_END;) {
        if (c == CLI_ERROR)
            return CLI_EXIT_USAGE;
        if (c == CLI_ARG && udid)
            return cli_unexpected("diagnose", p.value);
        const char **slot = c == CLI_ARG             ? &udid
                            : c == D_SERVER          ? &server
                            : c == D_TOKEN_FILE      ? &token
                            : c == D_SMDP            ? &smdp
                            : c == D_CA              ? &ca
                            : c == D_SMDP_TOKEN_FILE ? &smdp_token
                            : c == D_CACERT          ? &cacert
                                                     : NULL;
        if (slot)
            *slot = p.value;
        else
            json = true;
    }
    if (!udid)
        return cli_missing("diagnose", "the device's UDID");
    esim_error e = {{0}};
    if (esim_udid_validate(udid, &e) != ESIM_OK)
        return cli_usage_error("diagnose: %s", e.msg);
    chttp c;
    if (!chttp_open_api(&c, server, token))
        return CLI_EXIT_USAGE;
    if (cacert)
        chttp_set_ca(&c, cacert);
    char path[256];
    snprintf(path, sizeof path, "/v1/devices/%s/diagnosis", udid);
    long status = 0;
    json_t *d = NULL;
    int rc = CLI_EXIT_OK;
    if (chttp_call(&c, "GET", path, NULL, NULL, 0, &status, &d, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm diagnose: %s\n", e.msg);
        rc = CLI_EXIT_FAIL;
    } else if (status != 200) {
        fprintf(stderr, "esim-mdm diagnose: the service answered %ld: %s\n", status,
                chttp_error_message(d));
        rc = status == 404 || status == 400 ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    } else {
        if (smdp)
            smdp_check(d, smdp, ca, smdp_token);
        if (json)
            print_json(d);
        else {
            printf("diagnosis of %s\n", udid);
            size_t i;
            json_t *v;
            json_array_foreach(json_object_get(d, "checks"), i, v)
            {
                json_t *ok = json_object_get(v, "ok");
                printf("  [%s] %-22s %s\n",
                       json_is_true(ok)    ? " ok "
                       : json_is_false(ok) ? "FAIL"
                                           : " -- ",
                       jstr(v, "name"), jstr(v, "detail"));
            }
            json_array_foreach(json_object_get(d, "commands"), i, v)
            {
                if (i == 0)
                    printf("  commands (newest last):\n");
                printf("    %-22s %-13s %s\n", jstr(v, "request_type"), jstr(v, "state"),
                       jstr(v, "error"));
            }
            printf("conclusion: %s\nnext action: %s\n", jstr(d, "conclusion"),
                   jstr(d, "next_action"));
        }
    }
    json_decref(d);
    chttp_close(&c);
    return rc;
}

/* ---- import ---------------------------------------------------------------------------------- */

static const char import_help[] =
    "usage: esim-mdm import eids FILE.csv [--server URL] [--token-file F] [--cacert PEM] [--json]\n"
    "       esim-mdm import activation-codes FILE [--server URL] [--token-file F] [--cacert PEM]\n"
    "                                             [--json]\n"
    "\n"
    "eids: an OEM or reseller manifest, CSV lines serial,EID (a header line naming\n"
    "the columns is allowed). The service keeps it and matches the EIDs to\n"
    "enrolled devices by serial number: campaigns then verify each device against\n"
    "its EID. Rows for devices not enrolled yet are kept and reported unmatched.\n"
    "\n"
    "activation-codes: for operators without real-time integration, lines\n"
    "EID,LPA:1$<SM-DP+>$<MatchingID>[,ICCID]. With the ICCID, verification also\n"
    "checks the ICCID.\n"
    "\n"
    "Bad rows are reported by line number with the reason; the rest is imported.\n"
    "--cacert PEM is the CA of an https:// service with its own CA (default\n"
    "$ESIM_MDM_CACERT, $CURL_CA_BUNDLE or $SSL_CERT_FILE).\n"
    "\n"
    "examples:\n"
    "  esim-mdm import eids manifest.csv\n"
    "  esim-mdm import activation-codes codes.txt --server https://mdm.example.com:8443\n"
    "\n"
    "exit status: 0 every row imported, 1 some rows bad or unmatched (or the service\n"
    "failed), 2 bad options or an unreadable file.\n";

/* Sends |text| in parts of whole lines under the service's body limit. */
#define IMPORT_PART_BYTES (768u * 1024u)

int cmd_import(int argc, char **argv)
{
    if (cli_wants_help(argc, argv) || argc < 2) {
        fputs(import_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    const char *kind = argv[1], *file = NULL, *server = NULL, *token = NULL, *cacert = NULL;
    bool json = false;
    if (strcmp(kind, "eids") != 0 && strcmp(kind, "activation-codes") != 0)
        return cli_usage_error("import: unknown kind '%s' (eids or activation-codes)", kind);
    char cmd[32];
    snprintf(cmd, sizeof cmd, "import %s", kind);
    enum { I_JSON, I_SERVER, I_TOKEN_FILE, I_CACERT };
    static const cli_option options[] = {{"json", false, I_JSON},
                                         {"server", true, I_SERVER},
                                         {"token-file", true, I_TOKEN_FILE},
                                         {"cacert", true, I_CACERT},
                                         {NULL, false, 0}};
    cli_parser p;
    cli_parser_init(&p, cmd, options, argc, argv, 2);
    for (int c; (c = cli_next(&p)) != CLI_END;) {
        if (c == CLI_ERROR)
            return CLI_EXIT_USAGE;
        if (c == CLI_ARG && file)
            return cli_unexpected(cmd, p.value);
        if (c == CLI_ARG)
            file = p.value;
        else if (c == I_SERVER)
            server = p.value;
        else if (c == I_TOKEN_FILE)
            token = p.value;
        else if (c == I_CACERT)
            cacert = p.value;
        else
            json = true;
    }
    if (!file)
        return cli_missing(cmd, "the file");
    esim_buf text = {0};
    esim_error e = {{0}};
    if (esim_read_file(file, 64u * 1024u * 1024u, &text, &e) != ESIM_OK)
        return cli_usage_error("import: %s", e.msg);
    chttp c;
    if (!chttp_open_api(&c, server, token)) {
        esim_buf_free(&text);
        return CLI_EXIT_USAGE;
    }
    if (cacert)
        chttp_set_ca(&c, cacert);
    json_t *total = json_pack("{s:i, s:i, s:i, s:i, s:[], s:[]}", "imported", 0, "matched", 0,
                              "unmatched_total", 0, "bad_total", 0, "bad", "unmatched");
    int rc = CLI_EXIT_OK;
    size_t pos = 0, line = 0;
    while (rc == CLI_EXIT_OK && (pos < text.len || (pos == 0 && text.len == 0))) {
        size_t end = pos + IMPORT_PART_BYTES < text.len ? pos + IMPORT_PART_BYTES : text.len;
        if (end < text.len) {
            while (end > pos && text.data[end - 1] != '\n')
                end--;
            if (end == pos) {
                rc = cli_usage_error("import: line %zu is longer than %u bytes", line + 1,
                                     IMPORT_PART_BYTES);
                break;
            }
        }
        char path[128];
        snprintf(path, sizeof path, "/v1/import/%s?line_offset=%zu", kind, line);
        long status = 0;
        json_t *r = NULL;
        if (chttp_call(&c, "POST", path, "text/csv", text.data + pos, end - pos, &status, &r, &e) !=
            ESIM_OK) {
            fprintf(stderr, "esim-mdm import: %s\n", e.msg);
            rc = CLI_EXIT_FAIL;
        } else if (status != 200) {
            fprintf(stderr, "esim-mdm import: the service answered %ld: %s\n", status,
                    chttp_error_message(r));
            rc = CLI_EXIT_FAIL;
        } else {
            const char *keys[] = {"imported", "matched", "unmatched_total", "bad_total"};
            for (int k = 0; k < 4; k++)
                json_object_set_new(total, keys[k],
                                    json_integer(jint(total, keys[k]) + jint(r, keys[k])));
            json_array_extend(json_object_get(total, "bad"), json_object_get(r, "bad"));
            json_array_extend(json_object_get(total, "unmatched"), json_object_get(r, "unmatched"));
        }
        json_decref(r);
        for (size_t k = pos; k < end; k++)
            line += text.data[k] == '\n';
        if (end == pos)
            break;
        pos = end;
    }
    if (rc == CLI_EXIT_OK) {
        if (json)
            print_json(total);
        else {
            printf("imported %ld row%s", jint(total, "imported"),
                   jint(total, "imported") == 1 ? "" : "s");
            if (strcmp(kind, "eids") == 0)
                printf(", %ld matched to enrolled devices, %ld unmatched", jint(total, "matched"),
                       jint(total, "unmatched_total"));
            printf(", %ld bad\n", jint(total, "bad_total"));
            size_t i;
            json_t *v;
            json_array_foreach(json_object_get(total, "bad"), i, v)
                fprintf(stderr, "%s:%ld: %s\n", file, jint(v, "line"), jstr(v, "reason"));
            json_array_foreach(json_object_get(total, "unmatched"), i, v) fprintf(
                stderr,
                "%s:%ld: no enrolled device with serial %s (EID %s kept for when it enrols)\n",
                file, jint(v, "line"), jstr(v, "serial"), jstr(v, "eid"));
        }
        if (jint(total, "bad_total") || jint(total, "unmatched_total"))
            rc = CLI_EXIT_FAIL;
    }
    json_decref(total);
    chttp_close(&c);
    OPENSSL_cleanse(text.data, text.len);
    esim_buf_free(&text);
    return rc;
}
