/*
 * test_schema.c — every command, check-in message and profile payload the
 * builders emit (plist/, restrictions/) checked against Apple's schema, as
 * recorded in tests/data/apple-schema.tsv by scripts/extract-apple-schema.py:
 * each key exists for that RequestType / MessageType / PayloadType, has the
 * schema's type (and one of its listed values), required keys are present.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "restrictions/restrictions.h"

/* ---- the table ------------------------------------------------------------- */

typedef struct {
    const char *kind, *name, *path, *type, *presence, *values, *ios_introduced, *ios_supervised;
} schema_row;

typedef struct {
    esim_buf text; /* the file, split in place */
    schema_row *rows;
    size_t n_rows;
    const char *absent[32]; /* "#absent" source paths */
    size_t n_absent;
} schema_table;

static void table_free(schema_table *t)
{
    free(t->rows);
    esim_buf_free(&t->text);
    memset(t, 0, sizeof *t);
}

/* Splits |line| at tabs into at most |max| fields; returns how many. */
static size_t split_tabs(char *line, const char **fields, size_t max)
{
    size_t n = 0;
    fields[n++] = line;
    for (char *c = line; *c && n < max; c++)
        if (*c == '\t') {
            *c = '\0';
            fields[n++] = c + 1;
        }
    return n;
}

/* Reads $ESIM_TEST_DATA/apple-schema.tsv; false (and a message) on failure. */
static bool table_load(schema_table *t)
{
    memset(t, 0, sizeof *t);
    const char *data_dir = getenv("ESIM_TEST_DATA");
    if (!data_dir) {
        print_error("ESIM_TEST_DATA is not set (ctest sets it to <repo>/tests/data)\n");
        return false;
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/apple-schema.tsv", data_dir);
    esim_error err = {{0}};
    if (esim_read_file(path, 4u << 20, &t->text, &err) != ESIM_OK) {
        print_error("cannot read the schema table: %s\n", err.msg);
        return false;
    }
    size_t lines = 0;
    for (size_t i = 0; i < t->text.len; i++)
        lines += t->text.data[i] == '\n';
    t->rows = calloc(lines + 1, sizeof *t->rows);
    if (!t->rows)
        return false;
    char *line = (char *)t->text.data;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        const char *f[9];
        if (strncmp(line, "#absent\t", 8) == 0) {
            if (t->n_absent == sizeof t->absent / sizeof t->absent[0])
                return false;
            t->absent[t->n_absent++] = line + 8;
        } else if (line[0] != '#') {
            size_t n = split_tabs(line, f, 9);
            if (n != 8) {
                print_error("apple-schema.tsv: a row has %zu fields, not 8\n", n);
                return false;
            }
            schema_row *r = &t->rows[t->n_rows++];
            *r = (schema_row){f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]};
        }
        line = nl ? nl + 1 : NULL;
    }
    return t->n_rows > 0;
}

static const schema_row *table_find(const schema_table *t, const char *kind, const char *name,
                                    const char *path)
{
    for (size_t i = 0; i < t->n_rows; i++)
        if (strcmp(t->rows[i].kind, kind) == 0 && strcmp(t->rows[i].name, name) == 0 &&
            strcmp(t->rows[i].path, path) == 0)
            return &t->rows[i];
    return NULL;
}

static bool table_has(const schema_table *t, const char *kind, const char *name)
{
    for (size_t i = 0; i < t->n_rows; i++)
        if (strcmp(t->rows[i].kind, kind) == 0 && strcmp(t->rows[i].name, name) == 0)
            return true;
    return false;
}

/* ---- the checker --------------------------------------------------------------- */

/* What the checker found, one line per problem. */
typedef struct {
    esim_buf report;
    size_t problems;
    size_t keys_checked;
} findings;

static void problem(findings *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(findings *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    assert_int_equal(esim_buf_vprintf(&f->report, fmt, ap), ESIM_OK);
    va_end(ap);
    assert_int_equal(esim_buf_append_str(&f->report, "\n"), ESIM_OK);
    f->problems++;
}

static const char *plist_type_name(plist_t node)
{
    switch (plist_get_node_type(node)) {
    case PLIST_STRING:
        return "string";
    case PLIST_BOOLEAN:
        return "boolean";
    case PLIST_UINT:
        return "integer";
    case PLIST_REAL:
        return "real";
    case PLIST_DATA:
        return "data";
    case PLIST_DATE:
        return "date";
    case PLIST_ARRAY:
        return "array";
    case PLIST_DICT:
        return "dictionary";
    default:
        return "other";
    }
}

/* True when |value| is one of the '|'-separated |values|. */
static bool value_listed(const char *values, const char *value)
{
    size_t n = strlen(value);
    for (const char *v = values; v;) {
        const char *bar = strchr(v, '|');
        size_t len = bar ? (size_t)(bar - v) : strlen(v);
        if (len == n && strncmp(v, value, n) == 0)
            return true;
        v = bar ? bar + 1 : NULL;
    }
    return false;
}

typedef struct {
    const schema_table *table;
    findings *found;
    const char *kind, *name; /* the schema entry this dict belongs to */
    const char *what;        /* for messages: "EraseDevice command" */
} check_ctx;

static void check_payload(const schema_table *t, findings *f, plist_t payload, const char *what);
static void check_dict(const check_ctx *c, plist_t dict, const char *prefix);

static void check_value(const check_ctx *c, plist_t node, const schema_row *row, const char *path)
{
    c->found->keys_checked++;
    const char *have = plist_type_name(node);
    if (strcmp(row->type, "any") != 0 && strcmp(row->type, have) != 0) {
        problem(c->found, "%s: %s is %s, Apple's schema says %s", c->what, path, have, row->type);
        return;
    }
    if (strcmp(row->values, "-") != 0) {
        char num[32];
        const char *v = NULL;
        if (plist_get_node_type(node) == PLIST_STRING) {
            v = plist_get_string_ptr(node, NULL);
        } else if (plist_get_node_type(node) == PLIST_UINT) {
            uint64_t u = 0;
            plist_get_uint_val(node, &u);
            snprintf(num, sizeof num, "%llu", (unsigned long long)u);
            v = num;
        }
        if (v && !value_listed(row->values, v))
            problem(c->found, "%s: %s = '%s' is not one of Apple's values", c->what, path, v);
    }
    if (plist_get_node_type(node) == PLIST_DICT) {
        check_dict(c, node, path);
    } else if (plist_get_node_type(node) == PLIST_ARRAY) {
        char item_path[512];
        snprintf(item_path, sizeof item_path, "%s[]", path);
        const schema_row *item = table_find(c->table, c->kind, c->name, item_path);
        for (uint32_t i = 0; i < plist_array_get_size(node); i++) {
            plist_t el = plist_array_get_item(node, i);
            /* A profile's PayloadContent holds payloads: each is checked
             * against its own PayloadType. */
            if (strcmp(c->kind, "profile") == 0 && strcmp(item_path, "PayloadContent[]") == 0) {
                check_payload(c->table, c->found, el, c->what);
                continue;
            }
            if (!item) {
                problem(c->found, "%s: Apple's schema does not describe the elements of %s",
                        c->what, path);
                break;
            }
            check_value(c, el, item, item_path);
        }
    }
}

/* A required key is satisfied by its documented alternative: a device
 * names itself by UDID or, under User Enrollment, by EnrollmentID. */
static bool present_or_alternative(plist_t dict, const char *key)
{
    if (plist_dict_get_item(dict, key))
        return true;
    if (strcmp(key, "UDID") == 0)
        return plist_dict_get_item(dict, "EnrollmentID") != NULL;
    if (strcmp(key, "EnrollmentID") == 0)
        return plist_dict_get_item(dict, "UDID") != NULL;
    return false;
}

static void check_required(const check_ctx *c, const char *kind, const char *name, plist_t dict,
                           const char *prefix)
{
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < c->table->n_rows; i++) {
        const schema_row *r = &c->table->rows[i];
        if (strcmp(r->kind, kind) != 0 || strcmp(r->name, name) != 0 ||
            strcmp(r->presence, "required") != 0)
            continue;
        /* Keys Apple marks unavailable on iOS bind macOS, not us. */
        if (strcmp(r->ios_introduced, "n/a") == 0)
            continue;
        const char *key = r->path;
        if (plen) {
            if (strncmp(r->path, prefix, plen) != 0 || r->path[plen] != '/')
                continue;
            key = r->path + plen + 1;
        }
        if (strchr(key, '/') || strstr(key, "[]") || strcmp(key, "ANY") == 0)
            continue; /* not a direct child of this dict */
        if (!present_or_alternative(dict, key))
            problem(c->found, "%s: required key %s%s%s is missing", c->what, prefix,
                    plen ? "/" : "", key);
    }
}

static void check_dict(const check_ctx *c, plist_t dict, const char *prefix)
{
    plist_dict_iter it = NULL;
    plist_dict_new_iter(dict, &it);
    for (;;) {
        char *key = NULL;
        plist_t val = NULL;
        plist_dict_next_item(dict, it, &key, &val);
        if (!key)
            break;
        char path[512], any_path[512];
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "/" : "", key);
        snprintf(any_path, sizeof any_path, "%s%sANY", prefix, *prefix ? "/" : "");
        const schema_row *row = table_find(c->table, c->kind, c->name, path);
        if (!row)
            row = table_find(c->table, c->kind, c->name, any_path);
        /* Every payload also has the common keys (PayloadType, ...). */
        if (!row && strcmp(c->kind, "payload") == 0 && !*prefix)
            row = table_find(c->table, "payload", "CommonPayloadKeys", path);
        if (!row)
            problem(c->found, "%s: key %s is not in Apple's schema for %s %s", c->what, path,
                    c->kind, c->name);
        else
            check_value(c, val, row, path);
        free(key);
    }
    free(it);
    check_required(c, c->kind, c->name, dict, prefix);
    if (strcmp(c->kind, "payload") == 0 && !*prefix)
        check_required(c, "payload", "CommonPayloadKeys", dict, "");
}

/* Checks a dict against (kind, name); a kind/name the table lacks is a
 * problem unless the extractor recorded its source file as absent. */
static void check_entry(const schema_table *t, findings *f, const char *kind, const char *name,
                        plist_t dict, const char *what)
{
    if (!table_has(t, kind, name)) {
        problem(f,
                "%s: Apple's schema has no %s %s in apple-schema.tsv (re-run "
                "scripts/extract-apple-schema.py on a full checkout)",
                what, kind, name);
        return;
    }
    check_ctx c = {t, f, kind, name, what};
    check_dict(&c, dict, "");
}

static void check_payload(const schema_table *t, findings *f, plist_t payload, const char *what)
{
    if (plist_get_node_type(payload) != PLIST_DICT) {
        problem(f, "%s: a PayloadContent element is not a dictionary", what);
        return;
    }
    plist_t type = plist_dict_get_item(payload, "PayloadType");
    if (!type || plist_get_node_type(type) != PLIST_STRING) {
        problem(f, "%s: a payload has no PayloadType string", what);
        return;
    }
    char inner[256];
    snprintf(inner, sizeof inner, "%s > %s payload", what, plist_get_string_ptr(type, NULL));
    check_entry(t, f, "payload", plist_get_string_ptr(type, NULL), payload, inner);
}

/*
 * The command envelope {CommandUUID, Command{RequestType, ...}} is not in
 * Apple's YAML files (each describes only its own keys); PROTOCOLS.md §1
 * and Apple's documentation give it: CommandUUID string, Command dict,
 * RequestType string, RequestRequiresNetworkTether boolean.
 */
static void check_command(const schema_table *t, findings *f, const esim_cmd *cmd,
                          const char *want_type)
{
    plist_t root = NULL;
    esim_error err = {{0}};
    if (esim_plist_parse_dict(cmd->body.data, cmd->body.len, NULL, &root, &err) != ESIM_OK)
        fail_msg("%s does not parse back: %s", want_type, err.msg);
    char what[128];
    snprintf(what, sizeof what, "%s command", want_type);
    plist_dict_iter it = NULL;
    plist_dict_new_iter(root, &it);
    for (;;) {
        char *key = NULL;
        plist_t val = NULL;
        plist_dict_next_item(root, it, &key, &val);
        if (!key)
            break;
        if (strcmp(key, "CommandUUID") == 0 && plist_get_node_type(val) == PLIST_STRING)
            assert_string_equal(plist_get_string_ptr(val, NULL), cmd->command_uuid);
        else if (strcmp(key, "Command") != 0 || plist_get_node_type(val) != PLIST_DICT)
            problem(f, "%s: unexpected envelope key %s (%s)", what, key, plist_type_name(val));
        free(key);
    }
    free(it);
    plist_t command = plist_dict_get_item(root, "Command");
    plist_t request_type = command ? plist_dict_get_item(command, "RequestType") : NULL;
    if (!plist_dict_get_item(root, "CommandUUID") || !request_type ||
        plist_get_node_type(request_type) != PLIST_STRING) {
        problem(f, "%s: CommandUUID, Command or Command/RequestType missing", what);
        plist_free(root);
        return;
    }
    assert_string_equal(plist_get_string_ptr(request_type, NULL), want_type);
    assert_string_equal(cmd->request_type, want_type);
    /* Check the command's own keys on a copy without the envelope's. */
    plist_t own = plist_copy(command);
    plist_dict_remove_item(own, "RequestType");
    plist_t tether = plist_dict_get_item(own, "RequestRequiresNetworkTether");
    if (tether) {
        if (plist_get_node_type(tether) != PLIST_BOOLEAN)
            problem(f, "%s: RequestRequiresNetworkTether is not a boolean", what);
        plist_dict_remove_item(own, "RequestRequiresNetworkTether");
    }
    check_entry(t, f, "command", want_type, own, what);
    plist_free(own);
    plist_free(root);
}

static void check_profile_bytes(const schema_table *t, findings *f, const void *data, size_t len,
                                const char *what)
{
    plist_t root = NULL;
    esim_error err = {{0}};
    if (esim_profile_parse(data, len, NULL, &root, NULL, &err) != ESIM_OK)
        fail_msg("%s does not parse back as a profile: %s", what, err.msg);
    check_entry(t, f, "profile", "TopLevel", root, what);
    plist_free(root);
}

static void assert_no_problems(findings *f)
{
    if (f->problems)
        fail_msg("%zu schema problem(s):\n%s", f->problems, (const char *)f->report.data);
    esim_buf_free(&f->report);
}

/* ---- fixtures ------------------------------------------------------------------ */

static int setup(void **state)
{
    schema_table *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    if (!table_load(t)) {
        table_free(t);
        free(t);
        return -1;
    }
    for (size_t i = 0; i < t->n_absent; i++)
        print_message("note: %s is absent from the schema the table was made from; nothing "
                      "this test builds depends on it unless reported below\n",
                      t->absent[i]);
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    if (!*state)
        return 0;
    table_free(*state);
    free(*state);
    return 0;
}

static void restrictions_profile(esim_buf *out, const esim_cert *signer)
{
    esim_policy p = {ESIM_TRI_FALSE, ESIM_TRI_TRUE, ESIM_TRI_FALSE, ESIM_TRI_FALSE};
    esim_profile_opts opts = {.identifier = "com.example.esim",
                              .display_name = "eSIM lock",
                              .description = "Keeps eSIMs where they are",
                              .organization = "Example Corp"};
    esim_error err = {{0}};
    if (esim_policy_to_profile(&p, &opts, signer, out, &err) != ESIM_OK)
        fail_msg("restrictions profile: %s", err.msg);
}

/* ---- the tests --------------------------------------------------------------- */

static void test_commands_match_schema(void **state)
{
    const schema_table *t = *state;
    findings f = {0};
    esim_error err = {{0}};
    esim_cmd cmd = {0};
    esim_cmd_opts tether = {.request_requires_network_tether = true};
    esim_cmd_opts binary = {.format = ESIM_PLIST_BINARY};

    assert_int_equal(esim_cmd_refresh_plans("smdp.example.com", &tether, &cmd, &err), ESIM_OK);
    check_command(t, &f, &cmd, "RefreshCellularPlans");
    esim_cmd_free(&cmd);
    assert_int_equal(esim_cmd_refresh_plans("https://smdp.example.com/es2", &binary, &cmd, &err),
                     ESIM_OK);
    check_command(t, &f, &cmd, "RefreshCellularPlans");
    esim_cmd_free(&cmd);

    assert_int_equal(esim_cmd_erase_device(NULL, NULL, &cmd, &err), ESIM_OK);
    check_command(t, &f, &cmd, "EraseDevice");
    esim_cmd_free(&cmd);
    /* Return to Service carries real configuration profiles. */
    esim_buf rts_profile = {0};
    restrictions_profile(&rts_profile, NULL);
    esim_erase_opts erase = {.preserve_data_plan = true,
                             .disallow_proximity_setup = true,
                             .pin = "123456",
                             .obliteration_behavior = "DoNotObliterate",
                             .return_to_service = true,
                             .rts_wifi_profile = rts_profile.data,
                             .rts_wifi_profile_len = rts_profile.len,
                             .rts_mdm_profile = rts_profile.data,
                             .rts_mdm_profile_len = rts_profile.len};
    if (esim_cmd_erase_device(&erase, &tether, &cmd, &err) != ESIM_OK)
        fail_msg("EraseDevice: %s", err.msg);
    esim_buf_free(&rts_profile);
    check_command(t, &f, &cmd, "EraseDevice");
    esim_cmd_free(&cmd);

    esim_buf profile = {0};
    restrictions_profile(&profile, NULL);
    assert_int_equal(esim_cmd_install_profile(profile.data, profile.len, NULL, &cmd, &err),
                     ESIM_OK);
    check_command(t, &f, &cmd, "InstallProfile");
    /* The profile travels as Payload data: the device reads it as a profile. */
    esim_cmd_parsed parsed = {0};
    assert_int_equal(esim_cmd_parse(cmd.body.data, cmd.body.len, NULL, &parsed, &err), ESIM_OK);
    plist_t payload = plist_dict_get_item(parsed.command, "Payload");
    assert_non_null(payload);
    uint64_t payload_len = 0;
    const char *payload_bytes = plist_get_data_ptr(payload, &payload_len);
    check_profile_bytes(t, &f, payload_bytes, (size_t)payload_len, "InstallProfile Payload");
    esim_cmd_parsed_free(&parsed);
    esim_cmd_free(&cmd);
    esim_buf_free(&profile);

    assert_int_equal(esim_cmd_remove_profile("com.example.esim", NULL, &cmd, &err), ESIM_OK);
    check_command(t, &f, &cmd, "RemoveProfile");
    esim_cmd_free(&cmd);

    for (int managed = 0; managed < 2; managed++) {
        assert_int_equal(esim_cmd_profile_list(managed, NULL, &cmd, &err), ESIM_OK);
        check_command(t, &f, &cmd, "ProfileList");
        esim_cmd_free(&cmd);
    }

    /* The queries the service and the demo ask devices for. */
    static const char *const queries[] = {
        "ServiceSubscriptions", "UDID",      "SerialNumber", "OSVersion", "BuildVersion",
        "ProductName",          "ModelName", "DeviceName",   "IMEI",      "IsSupervised"};
    assert_int_equal(
        esim_cmd_device_information(queries, sizeof queries / sizeof queries[0], NULL, &cmd, &err),
        ESIM_OK);
    check_command(t, &f, &cmd, "DeviceInformation");
    esim_cmd_free(&cmd);

    assert_true(f.keys_checked >= 20);
    assert_no_problems(&f);
}

static void test_profiles_match_schema(void **state)
{
    const schema_table *t = *state;
    findings f = {0};
    esim_buf profile = {0};
    restrictions_profile(&profile, NULL);
    check_profile_bytes(t, &f, profile.data, profile.len, "restrictions profile");
    esim_buf_free(&profile);

    /* Signed: the profile inside the CMS envelope is what the device reads. */
    esim_cert_spec spec = {.common_name = "schema test signer", .key_type = ESIM_KEY_EC_P256};
    esim_cert signer = {0};
    assert_int_equal(esim_cert_issue(&spec, NULL, &signer, NULL), ESIM_OK);
    restrictions_profile(&profile, &signer);
    check_profile_bytes(t, &f, profile.data, profile.len, "signed restrictions profile");
    esim_buf_free(&profile);
    esim_cert_clear(&signer);

    /* Every combination of the four settings, through the generic builder too. */
    for (int i = 1; i < 81; i++) {
        esim_policy p = {0};
        esim_tri *fields[4] = {&p.allow_esim_modification, &p.force_preserve_esim_on_erase,
                               &p.allow_esim_outgoing_transfers,
                               &p.allow_cellular_plan_modification};
        for (int k = 0, x = i; k < 4; k++, x /= 3)
            *fields[k] = (esim_tri)(x % 3);
        plist_t payload = esim_policy_to_payload(&p, "com.example.esim.payload");
        assert_non_null(payload);
        esim_profile_opts opts = {.identifier = "com.example.combo"};
        assert_int_equal(esim_profile_build(&opts, &payload, 1, ESIM_PLIST_BINARY, &profile, NULL),
                         ESIM_OK);
        plist_free(payload);
        check_profile_bytes(t, &f, profile.data, profile.len, "restrictions profile (combination)");
        esim_buf_free(&profile);
    }
    assert_no_problems(&f);
}

static void test_checkin_messages_match_schema(void **state)
{
    const schema_table *t = *state;
    findings f = {0};
    esim_buf body = {0};
    esim_error err = {{0}};
    static const unsigned char token[32] = {1, 2, 3, 4, 5, 6, 7, 8};
    esim_authenticate_info info = {
        .udid = "00008030-000A1B2C3D4E802E",
        .topic = "com.apple.mgmt.External.1b6e8a9e-0000-4000-8000-1234567890ab",
        .os_version = "17.4",
        .build_version = "21E219",
        .product_name = "iPhone15,2",
        .serial_number = "F2LXK0ABCDEF",
        .imei = "35 123456 789012 3",
        .meid = "35123456789012",
        .device_name = "Test iPhone",
        .model = "iPhone"};
    struct {
        const char *name;
        esim_err rc;
    } built[3];
    built[0].name = "Authenticate";
    built[0].rc = esim_msg_build_authenticate(&info, &body, &err);
    for (int i = 0; i < 3; i++) {
        if (i == 1) {
            built[1].name = "TokenUpdate";
            built[1].rc = esim_msg_build_token_update(info.udid, info.topic, token, sizeof token,
                                                      "push-magic-0123", &body, &err);
        } else if (i == 2) {
            built[2].name = "CheckOut";
            built[2].rc = esim_msg_build_checkout(info.udid, info.topic, &body, &err);
        }
        if (built[i].rc != ESIM_OK)
            fail_msg("building %s: %s", built[i].name, err.msg);
        plist_t root = NULL;
        assert_int_equal(esim_plist_parse_dict(body.data, body.len, NULL, &root, &err), ESIM_OK);
        char what[64];
        snprintf(what, sizeof what, "%s check-in message", built[i].name);
        check_entry(t, &f, "checkin", built[i].name, root, what);
        plist_free(root);
        esim_buf_reset(&body);
    }
    esim_buf_free(&body);
    assert_no_problems(&f);
}

/* The applicability rules in restrictions/ agree with Apple's schema. */
static void test_applicability_matches_schema(void **state)
{
    const schema_table *t = *state;
    static const char *const keys[4] = {"allowESIMModification", "forcePreserveESIMOnErase",
                                        "allowESIMOutgoingTransfers",
                                        "allowCellularPlanModification"};
    for (int k = 0; k < 4; k++) {
        const schema_row *r = table_find(t, "payload", "com.apple.applicationaccess", keys[k]);
        assert_non_null(r);
        assert_string_equal(r->type, "boolean");
        esim_os_version introduced;
        assert_int_equal(esim_os_version_parse(r->ios_introduced, &introduced, NULL), ESIM_OK);
        esim_policy p = {0};
        esim_tri *fields[4] = {&p.allow_esim_modification, &p.force_preserve_esim_on_erase,
                               &p.allow_esim_outgoing_transfers,
                               &p.allow_cellular_plan_modification};
        *fields[k] = ESIM_TRI_FALSE;
        esim_ignored_key out[4];
        char below[32];
        if (introduced.minor > 0)
            snprintf(below, sizeof below, "%d.%d.99", introduced.major, introduced.minor - 1);
        else
            snprintf(below, sizeof below, "%d.99", introduced.major - 1);
        assert_int_equal(esim_policy_ignored_keys(&p, r->ios_introduced, true, out), 0);
        assert_int_equal(esim_policy_ignored_keys(&p, below, true, out), 1);
        assert_string_equal(out[0].key, keys[k]);
        bool needs_supervision = strcmp(r->ios_supervised, "true") == 0;
        assert_int_equal(esim_policy_ignored_keys(&p, "99.0", false, out), needs_supervision);
    }
}

/* The checker itself finds each kind of mistake. */
static void test_checker_catches_mistakes(void **state)
{
    const schema_table *t = *state;
    findings f = {0};
    plist_t d = plist_new_dict();
    plist_dict_set_item(d, "eSIMServerURL", plist_new_bool(1)); /* wrong type */
    check_entry(t, &f, "command", "RefreshCellularPlans", d, "bad RefreshCellularPlans");
    assert_int_equal(f.problems, 1);
    plist_dict_set_item(d, "eSIMServerURL", plist_new_string("https://x.example"));
    plist_dict_set_item(d, "eSIMServerUrl", plist_new_string("https://x.example")); /* typo */
    check_entry(t, &f, "command", "RefreshCellularPlans", d, "bad RefreshCellularPlans");
    assert_int_equal(f.problems, 2);
    plist_dict_remove_item(d, "eSIMServerURL"); /* required key missing */
    plist_dict_remove_item(d, "eSIMServerUrl");
    check_entry(t, &f, "command", "RefreshCellularPlans", d, "bad RefreshCellularPlans");
    assert_int_equal(f.problems, 3);
    plist_free(d);

    d = plist_new_dict();
    plist_t rts = plist_new_dict();
    plist_dict_set_item(rts, "WiFiProfileData", plist_new_data("x", 1)); /* Enabled missing */
    plist_dict_set_item(d, "ReturnToService", rts);
    plist_dict_set_item(d, "ObliterationBehavior", plist_new_string("Sometimes")); /* value */
    check_entry(t, &f, "command", "EraseDevice", d, "bad EraseDevice");
    assert_int_equal(f.problems, 5);
    plist_free(d);

    d = plist_new_dict();
    plist_t q = plist_new_array();
    plist_array_append_item(q, plist_new_string("ServiceSubscription")); /* unknown query */
    plist_dict_set_item(d, "Queries", q);
    check_entry(t, &f, "command", "DeviceInformation", d, "bad DeviceInformation");
    assert_int_equal(f.problems, 6);
    plist_free(d);

    esim_policy p = {ESIM_TRI_FALSE, 0, 0, 0};
    plist_t payload = esim_policy_to_payload(&p, "com.example.x");
    plist_dict_set_item(payload, "allowESIMModification", plist_new_string("false"));
    plist_dict_set_item(payload, "allowESIMTransfers", plist_new_bool(0));
    plist_dict_remove_item(payload, "PayloadVersion");
    check_payload(t, &f, payload, "bad restrictions payload");
    assert_int_equal(f.problems, 9);
    plist_free(payload);

    d = plist_new_dict();
    check_entry(t, &f, "payload", "com.example.unknown", d, "unknown payload");
    assert_int_equal(f.problems, 10);
    plist_free(d);
    esim_buf_free(&f.report);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commands_match_schema),
        cmocka_unit_test(test_profiles_match_schema),
        cmocka_unit_test(test_checkin_messages_match_schema),
        cmocka_unit_test(test_applicability_matches_schema),
        cmocka_unit_test(test_checker_catches_mistakes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
