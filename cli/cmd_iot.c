/*
 * cmd_iot.c — `esim-mdm iot`: IoT eUICCs and their eIM through the admin
 * API (docs/iot.md): register eUICCs, queue packages, read a device's
 * diagnosis and a package's outcome.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/http_client.h"
#include "cli/options.h"

static const char iot_usage[] =
    "usage: esim-mdm iot register --eid EID --token N [--counter N]\n"
    "       esim-mdm iot devices [--after EID] [--limit N]\n"
    "       esim-mdm iot show EID\n"
    "       esim-mdm iot enqueue --eid EID [--eid EID...] PACKAGE\n"
    "       esim-mdm iot package UUID\n"
    "\n"
    "IoT eUICCs managed by the service's eIM (GSMA SGP.32). register adds an eUICC with\n"
    "the association token its eUICC gave the eIM's configuration (and the last counter\n"
    "value used); show explains where it stands (last poll, each package's result in\n"
    "words, signature or counter errors, next action).\n"
    "\n"
    "PACKAGE, one of (operations of one kind may be repeated and combined):\n"
    "  --enable ICCID --disable ICCID --delete ICCID --list-profiles --get-rat   PSMOs\n"
    "  --list-eim --delete-eim EIMID                                             eCOs\n"
    "  --download ACTIVATION_CODE    a profile download trigger (1$SMDP$MATCHING)\n"
    "  --euicc-data                  ask the eUICC's certificates again\n"
    "\n"
    "options of every form:\n"
    "  --server URL      the service (default $ESIM_MDM_SERVER or http://127.0.0.1:8080)\n"
    "  --token-file F    the API key (default $ESIM_MDM_TOKEN_FILE or esim-mdm-data/api-token)\n"
    "  --cacert PEM      the CA of an https:// service\n"
    "  --json            print the API's JSON\n";

enum {
    I_SERVER = 1,
    I_TOKEN_FILE,
    I_CACERT,
    I_JSON,
    I_EID,
    I_TOKEN,
    I_COUNTER,
    I_AFTER,
    I_LIMIT,
    I_ENABLE,
    I_DISABLE,
    I_DELETE,
    I_LIST_PROFILES,
    I_GET_RAT,
    I_LIST_EIM,
    I_DELETE_EIM,
    I_DOWNLOAD,
    I_EUICC_DATA,
};

static const cli_option iot_options[] = {
    {"server", true, I_SERVER},
    {"token-file", true, I_TOKEN_FILE},
    {"cacert", true, I_CACERT},
    {"json", false, I_JSON},
    {"eid", true, I_EID},
    {"token", true, I_TOKEN},
    {"counter", true, I_COUNTER},
    {"after", true, I_AFTER},
    {"limit", true, I_LIMIT},
    {"enable", true, I_ENABLE},
    {"disable", true, I_DISABLE},
    {"delete", true, I_DELETE},
    {"list-profiles", false, I_LIST_PROFILES},
    {"get-rat", false, I_GET_RAT},
    {"list-eim", false, I_LIST_EIM},
    {"delete-eim", true, I_DELETE_EIM},
    {"download", true, I_DOWNLOAD},
    {"euicc-data", false, I_EUICC_DATA},
    {NULL, false, 0},
};

typedef struct {
    const char *server, *token_file, *cacert, *after, *download;
    bool json, euicc_data;
    long token, counter, limit;
    bool have_token, have_counter;
    json_t *eids, *ops;
} iot_args;

static void add_op(iot_args *a, const char *op, const char *key, const char *value)
{
    json_t *o = json_pack("{s:s}", "op", op);
    if (key)
        json_object_set_new(o, key, json_string(value));
    json_array_append_new(a->ops, o);
}

static int parse(iot_args *a, const char *cmd, int argc, char **argv, const char **pos, int max_pos,
                 int *n_pos)
{
    cli_parser p;
    cli_parser_init(&p, cmd, iot_options, argc, argv, 2);
    *n_pos = 0;
    for (int id; (id = cli_next(&p)) != CLI_END;) {
        switch (id) {
        case CLI_ERROR:
            return -1;
        case CLI_ARG:
            if (*n_pos == max_pos) {
                cli_unexpected(cmd, p.value);
                return -1;
            }
            pos[(*n_pos)++] = p.value;
            break;
        case I_SERVER:
            a->server = p.value;
            break;
        case I_TOKEN_FILE:
            a->token_file = p.value;
            break;
        case I_CACERT:
            a->cacert = p.value;
            break;
        case I_JSON:
            a->json = true;
            break;
        case I_EID:
            json_array_append_new(a->eids, json_string(p.value));
            break;
        case I_TOKEN:
            if (!cli_parse_long(p.value, 1, 0x7fffffffL, &a->token))
                return cli_bad_value(&p, "the association token, an integer from 1"), -1;
            a->have_token = true;
            break;
        case I_COUNTER:
            if (!cli_parse_long(p.value, 0, 0x7fffffffL, &a->counter))
                return cli_bad_value(&p, "the last counter value used, from 0"), -1;
            a->have_counter = true;
            break;
        case I_AFTER:
            a->after = p.value;
            break;
        case I_LIMIT:
            if (!cli_parse_long(p.value, 1, 1000, &a->limit))
                return cli_bad_value(&p, "a number from 1 to 1000"), -1;
            break;
        case I_ENABLE:
            add_op(a, "enable", "iccid", p.value);
            break;
        case I_DISABLE:
            add_op(a, "disable", "iccid", p.value);
            break;
        case I_DELETE:
            add_op(a, "delete", "iccid", p.value);
            break;
        case I_LIST_PROFILES:
            add_op(a, "list_profiles", NULL, NULL);
            break;
        case I_GET_RAT:
            add_op(a, "get_rat", NULL, NULL);
            break;
        case I_LIST_EIM:
            add_op(a, "list_eim", NULL, NULL);
            break;
        case I_DELETE_EIM:
            add_op(a, "delete_eim", "eim_id", p.value);
            break;
        case I_DOWNLOAD:
            a->download = p.value;
            break;
        case I_EUICC_DATA:
            a->euicc_data = true;
            break;
        }
    }
    return 0;
}

/* One API call; prints the JSON (--json) or hands it back for a table. */
static int call(iot_args *a, const char *method, const char *path, json_t *body, json_t **out)
{
    chttp c;
    *out = NULL;
    if (!chttp_open_api(&c, a->server, a->token_file))
        return CLI_EXIT_USAGE;
    if (a->cacert)
        chttp_set_ca(&c, a->cacert);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    long status = 0;
    esim_error e = {{0}};
    esim_err rc = chttp_call(&c, method, path, text ? "application/json" : NULL, text,
                             text ? strlen(text) : 0, &status, out, &e);
    free(text);
    chttp_close(&c);
    if (rc != ESIM_OK) {
        fprintf(stderr, "esim-mdm: %s\n", e.msg);
        return CLI_EXIT_FAIL;
    }
    if (status >= 300) {
        fprintf(stderr, "esim-mdm: the service answered %ld: %s\n", status,
                chttp_error_message(*out));
        json_decref(*out);
        *out = NULL;
        return status == 400 || status == 413 ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    }
    if (a->json) {
        char *s = json_dumps(*out, JSON_INDENT(2));
        if (s)
            puts(s);
        free(s);
    }
    return CLI_EXIT_OK;
}

static const char *str(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

static int do_register(iot_args *a)
{
    if (json_array_size(a->eids) != 1)
        return cli_missing("iot register", "--eid EID (one)");
    if (!a->have_token)
        return cli_missing("iot register", "--token N");
    json_t *d = json_pack("{s:O,s:I}", "eid", json_array_get(a->eids, 0), "association_token",
                          (json_int_t)a->token);
    if (a->have_counter)
        json_object_set_new(d, "counter", json_integer(a->counter));
    json_t *out = NULL;
    int rc = call(a, "POST", "/v1/iot/devices", d, &out);
    json_decref(d);
    if (rc == CLI_EXIT_OK && !a->json) {
        json_t *line = json_array_get(json_object_get(out, "devices"), 0);
        const char *res = str(line, "result");
        if (strcmp(res, "error") == 0) {
            fprintf(stderr, "esim-mdm: %s\n", str(line, "error"));
            rc = CLI_EXIT_FAIL;
        } else {
            printf("%s %s\n", str(line, "eid"), res);
        }
    }
    json_decref(out);
    return rc;
}

static int do_devices(iot_args *a)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/iot/devices?limit=%ld%s%s", a->limit ? a->limit : 100,
             a->after ? "&after=" : "", a->after ? a->after : "");
    json_t *out = NULL;
    int rc = call(a, "GET", path, NULL, &out);
    if (rc == CLI_EXIT_OK && !a->json) {
        printf("%-32s  %-12s  %8s  %s\n", "EID", "STATE", "COUNTER", "LAST POLL (ms)");
        json_t *d;
        size_t i;
        json_array_foreach(json_object_get(out, "devices"), i, d)
        {
            json_t *lp = json_object_get(d, "last_poll_ms");
            char when[32] = "never";
            if (json_is_integer(lp))
                snprintf(when, sizeof when, "%lld", (long long)json_integer_value(lp));
            printf("%-32s  %-12s  %8lld  %s\n", str(d, "eid"), str(d, "state"),
                   (long long)json_integer_value(json_object_get(d, "counter")), when);
        }
    }
    json_decref(out);
    return rc;
}

static void print_package(const json_t *p)
{
    printf("  %s  %-10s %-16s %s", str(p, "command_uuid"), str(p, "kind"), str(p, "state"),
           str(p, "summary"));
    json_t *c = json_object_get(p, "counter");
    if (json_is_integer(c))
        printf(" (counter %lld)", (long long)json_integer_value(c));
    printf("\n");
    json_t *res = json_object_get(p, "result");
    const char *words = json_string_value(json_object_get(res, "words"));
    if (words)
        printf("      result: %s\n", words);
    if (json_is_string(json_object_get(p, "error")))
        printf("      error: %s\n", str(p, "error"));
}

static int do_show(iot_args *a, const char *eid)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/iot/devices/%s", eid);
    json_t *out = NULL;
    int rc = call(a, "GET", path, NULL, &out);
    if (rc == CLI_EXIT_OK && !a->json) {
        json_t *lp = json_object_get(out, "last_poll_ms");
        printf("EID %s: %s, counter %lld, certificate %s, last poll %s\n", str(out, "eid"),
               str(out, "state"), (long long)json_integer_value(json_object_get(out, "counter")),
               json_is_true(json_object_get(out, "certificate")) ? "verified" : "not yet",
               json_is_integer(lp) ? "seen" : "never");
        if (json_is_string(json_object_get(out, "last_error")))
            printf("last error: %s\n", str(out, "last_error"));
        printf("packages (newest first):\n");
        json_t *p;
        size_t i;
        json_array_foreach(json_object_get(out, "packages"), i, p) print_package(p);
        printf("next action: %s\n", str(out, "next_action"));
    }
    json_decref(out);
    return rc;
}

static int do_enqueue(iot_args *a)
{
    if (json_array_size(a->eids) == 0)
        return cli_missing("iot enqueue", "--eid EID");
    int forms = (json_array_size(a->ops) > 0) + (a->download != NULL) + a->euicc_data;
    if (forms != 1)
        return cli_usage_error("iot enqueue: give one PACKAGE: operations, --download or "
                               "--euicc-data; see `esim-mdm iot --help`");
    json_t *body = json_pack("{s:O}", "eids", a->eids);
    if (a->download)
        json_object_set_new(body, "download", json_pack("{s:s}", "activation_code", a->download));
    else if (a->euicc_data)
        json_object_set_new(body, "euicc_data", json_true());
    else
        json_object_set(body, "operations", a->ops);
    json_t *out = NULL;
    int rc = call(a, "POST", "/v1/iot/packages", body, &out);
    json_decref(body);
    if (rc == CLI_EXIT_OK && !a->json)
        printf("%s\n", str(out, "command_uuid"));
    json_decref(out);
    return rc;
}

static int do_package(iot_args *a, const char *uuid)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/iot/packages/%s", uuid);
    json_t *out = NULL;
    int rc = call(a, "GET", path, NULL, &out);
    if (rc == CLI_EXIT_OK && !a->json) {
        printf("%s %s: %s\n", str(out, "command_uuid"), str(out, "request_type"),
               str(out, "summary"));
        json_t *p;
        size_t i;
        json_array_foreach(json_object_get(out, "devices"), i, p)
        {
            printf("%s (queue %s)\n", str(p, "eid"), str(p, "queue_state"));
            print_package(p);
        }
    }
    json_decref(out);
    return rc;
}

int cmd_iot(int argc, char **argv)
{
    if (argc < 2 || cli_wants_help(argc, argv)) {
        fputs(iot_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    const char *sub = argv[1];
    char cmd[32];
    snprintf(cmd, sizeof cmd, "iot %s", sub);
    iot_args a = {.eids = json_array(), .ops = json_array()};
    const char *pos[1];
    int n_pos = 0;
    bool one_arg = strcmp(sub, "show") == 0 || strcmp(sub, "package") == 0;
    int rc;
    if (parse(&a, cmd, argc, argv, pos, one_arg ? 1 : 0, &n_pos) != 0)
        rc = CLI_EXIT_USAGE;
    else if (one_arg && n_pos != 1)
        rc = cli_missing(cmd, strcmp(sub, "show") == 0 ? "EID" : "UUID");
    else if (strcmp(sub, "register") == 0)
        rc = do_register(&a);
    else if (strcmp(sub, "devices") == 0)
        rc = do_devices(&a);
    else if (strcmp(sub, "show") == 0)
        rc = do_show(&a, pos[0]);
    else if (strcmp(sub, "enqueue") == 0)
        rc = do_enqueue(&a);
    else if (strcmp(sub, "package") == 0)
        rc = do_package(&a, pos[0]);
    else
        rc = cli_usage_error("iot: unknown form '%s'; `esim-mdm iot --help` lists them", sub);
    json_decref(a.eids);
    json_decref(a.ops);
    return rc;
}
