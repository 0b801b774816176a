/*
 * test_plist_commands.c — the command builders and esim_cmd_parse: every
 * builder's keys, XML and binary, given and fresh CommandUUIDs, the
 * eSIMServerURL rules, and every refusal leaving the output untouched.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "plist/esim_plist.h"

static const char *const GIVEN_UUID = "0f8fad5b-d9cb-469f-a165-70867728950e";

/* Parses a built command back; the caller frees with esim_cmd_parsed_free. */
static void parse_back(const esim_cmd *cmd, esim_cmd_parsed *p)
{
    esim_error err = {{0}};
    assert_int_equal(esim_cmd_parse(cmd->body.data, cmd->body.len, NULL, p, &err), ESIM_OK);
    assert_string_equal(p->command_uuid, cmd->command_uuid);
    assert_string_equal(p->request_type, cmd->request_type);
}

static const char *command_string(const esim_cmd_parsed *p, const char *key)
{
    plist_t n = plist_dict_get_item(p->command, key);
    assert_non_null(n);
    assert_int_equal(plist_get_node_type(n), PLIST_STRING);
    return plist_get_string_ptr(n, NULL);
}

static bool command_bool(const esim_cmd_parsed *p, const char *key)
{
    plist_t n = plist_dict_get_item(p->command, key);
    assert_non_null(n);
    assert_int_equal(plist_get_node_type(n), PLIST_BOOLEAN);
    uint8_t v = 0;
    plist_get_bool_val(n, &v);
    return v;
}

static bool is_lowercase_uuid(const char *s)
{
    if (!esim_uuid_valid(s))
        return false;
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'F')
            return false;
    return true;
}

/* ---- eSIMServerURL -------------------------------------------------------- */

static void test_server_url_accepts(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"smdp.example.com", "https://smdp.example.com"},
        {"localhost", "https://localhost"},
        {"https://smdp.example.com", "https://smdp.example.com"},
        {"http://127.0.0.1:8443/gsma", "http://127.0.0.1:8443/gsma"},
        {"https://smdp.example.com/path?x=1#frag", "https://smdp.example.com/path?x=1#frag"},
        {"HTTPS://SMDP.example.com", "HTTPS://SMDP.example.com"},
        {"https://[::1]:9443/", "https://[::1]:9443/"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char out[ESIM_SERVER_URL_MAX + 1];
        esim_error err = {{0}};
        assert_int_equal(esim_server_url_normalize(cases[k].in, out, sizeof out, &err), ESIM_OK);
        assert_string_equal(out, cases[k].want);
    }
}

static void test_server_url_refuses(void **state)
{
    (void)state;
    char *huge = malloc(ESIM_SERVER_URL_MAX + 64);
    assert_non_null(huge);
    strcpy(huge, "https://a.example.com/");
    memset(huge + strlen(huge), 'x', ESIM_SERVER_URL_MAX);
    huge[ESIM_SERVER_URL_MAX + 1] = '\0';
    const char *cases[] = {
        "",
        " smdp.example.com",
        "smdp.example.com ",
        "smdp example.com",
        "ftp://smdp.example.com",
        "mailto:admin@example.com",
        "https://",
        "https:///path",
        "https://user:pw@smdp.example.com",
        "https://smdp.example.com:0",
        "https://smdp.example.com:99999",
        "https://smdp.example.com:x",
        "smdp.example.com:443",
        "smdp.example.com/path",
        "https://smdp_bad.example.com",
        "https://[zz]/",
        "smdp.ex\tample.com",
        "sm\xc3\xa9"
        "dp.example.com",
        huge,
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char out[64] = "untouched";
        esim_error err = {{0}};
        assert_int_equal(esim_server_url_normalize(cases[k], out, sizeof out, &err), ESIM_EINVAL);
        assert_string_equal(out, "untouched");
        /* The message teaches the valid shape, or names the specific flaw. */
        assert_true(strlen(err.msg) > 10);
    }
    esim_error err = {{0}};
    char out[64];
    assert_int_equal(esim_server_url_normalize("ftp://x.example.com", out, sizeof out, &err),
                     ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "https://"));
    assert_non_null(strstr(err.msg, "smdp.example.com"));
    assert_int_equal(esim_server_url_normalize(NULL, out, sizeof out, &err), ESIM_EINVAL);
    /* Exactly at the limit is fine; one byte over is not. */
    huge[ESIM_SERVER_URL_MAX] = '\0';
    char *big_out = malloc(ESIM_SERVER_URL_MAX + 1);
    assert_int_equal(esim_server_url_normalize(huge, big_out, ESIM_SERVER_URL_MAX + 1, &err),
                     ESIM_OK);
    /* Output room too small is refused rather than truncated. */
    assert_int_equal(esim_server_url_normalize("smdp.example.com", out, 8, &err), ESIM_EINVAL);
    free(big_out);
    free(huge);
}

/* ---- RefreshCellularPlans ------------------------------------------------------ */

static void test_refresh_plans_xml(void **state)
{
    (void)state;
    esim_cmd cmd;
    esim_error err = {{0}};
    assert_int_equal(esim_cmd_refresh_plans("smdp.example.com", NULL, &cmd, &err), ESIM_OK);
    assert_true(is_lowercase_uuid(cmd.command_uuid));
    assert_string_equal(cmd.request_type, "RefreshCellularPlans");
    assert_non_null(strstr((char *)cmd.body.data, "<?xml"));
    esim_cmd_parsed p;
    parse_back(&cmd, &p);
    assert_string_equal(command_string(&p, "eSIMServerURL"), "https://smdp.example.com");
    assert_null(plist_dict_get_item(p.command, "RequestRequiresNetworkTether"));
    assert_int_equal(plist_dict_get_size(p.command), 2);
    esim_cmd_parsed_free(&p);
    esim_cmd_free(&cmd);
}

static void test_refresh_plans_binary_tether_uuid(void **state)
{
    (void)state;
    esim_cmd_opts opts = {.command_uuid = GIVEN_UUID,
                          .format = ESIM_PLIST_BINARY,
                          .request_requires_network_tether = true};
    esim_cmd cmd;
    esim_error err = {{0}};
    assert_int_equal(esim_cmd_refresh_plans("https://smdp.example.com/es9", &opts, &cmd, &err),
                     ESIM_OK);
    assert_string_equal(cmd.command_uuid, GIVEN_UUID);
    assert_memory_equal(cmd.body.data, "bplist00", 8);
    esim_cmd_parsed p;
    parse_back(&cmd, &p);
    assert_string_equal(command_string(&p, "eSIMServerURL"), "https://smdp.example.com/es9");
    assert_true(command_bool(&p, "RequestRequiresNetworkTether"));
    esim_cmd_parsed_free(&p);
    esim_cmd_free(&cmd);
}

static void test_fresh_uuids_differ(void **state)
{
    (void)state;
    esim_cmd a, b;
    assert_int_equal(esim_cmd_profile_list(false, NULL, &a, NULL), ESIM_OK);
    assert_int_equal(esim_cmd_profile_list(false, NULL, &b, NULL), ESIM_OK);
    assert_string_not_equal(a.command_uuid, b.command_uuid);
    esim_cmd_free(&a);
    esim_cmd_free(&b);
}

static void test_bad_opts_refused(void **state)
{
    (void)state;
    esim_cmd cmd;
    memset(&cmd, 0x5A, sizeof cmd);
    esim_cmd before = cmd;
    esim_error err = {{0}};
    esim_cmd_opts bad_uuid = {.command_uuid = "tab\there"};
    assert_int_equal(esim_cmd_refresh_plans("smdp.example.com", &bad_uuid, &cmd, &err),
                     ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "CommandUUID"));
    bad_uuid.command_uuid = "";
    assert_int_equal(esim_cmd_refresh_plans("smdp.example.com", &bad_uuid, &cmd, &err),
                     ESIM_EINVAL);
    esim_cmd_opts bad_format = {.format = (esim_plist_format)7};
    assert_int_equal(esim_cmd_profile_list(true, &bad_format, &cmd, &err), ESIM_EINVAL);
    assert_int_equal(esim_cmd_refresh_plans("ftp://x", NULL, &cmd, &err), ESIM_EINVAL);
    assert_int_equal(esim_cmd_refresh_plans(NULL, NULL, &cmd, &err), ESIM_EINVAL);
    assert_memory_equal(&cmd, &before, sizeof cmd);
    assert_int_equal(esim_cmd_refresh_plans("smdp.example.com", NULL, NULL, &err), ESIM_EINVAL);
}

/* ---- EraseDevice ------------------------------------------------------------------ */

static const char MINI_PROFILE[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<plist version=\"1.0\"><dict>"
    "<key>PayloadType</key><string>Configuration</string>"
    "<key>PayloadIdentifier</key><string>com.example.wifi</string>"
    "<key>PayloadUUID</key><string>4C2D4A3E-1111-2222-3333-444455556666</string>"
    "<key>PayloadVersion</key><integer>1</integer>"
    "<key>PayloadContent</key><array/>"
    "</dict></plist>\n";

static void test_erase_plain_and_full(void **state)
{
    (void)state;
    esim_cmd cmd;
    esim_cmd_parsed p;
    assert_int_equal(esim_cmd_erase_device(NULL, NULL, &cmd, NULL), ESIM_OK);
    parse_back(&cmd, &p);
    assert_string_equal(p.request_type, "EraseDevice");
    assert_int_equal(plist_dict_get_size(p.command), 1);
    esim_cmd_parsed_free(&p);
    esim_cmd_free(&cmd);

    esim_erase_opts e = {
        .preserve_data_plan = true,
        .disallow_proximity_setup = true,
        .pin = "123456",
        .obliteration_behavior = "DoNotObliterate",
        .return_to_service = true,
        .rts_wifi_profile = (const unsigned char *)MINI_PROFILE,
        .rts_wifi_profile_len = sizeof MINI_PROFILE - 1,
        .rts_mdm_profile = (const unsigned char *)MINI_PROFILE,
        .rts_mdm_profile_len = sizeof MINI_PROFILE - 1,
    };
    esim_cmd_opts opts = {.format = ESIM_PLIST_BINARY};
    esim_error err = {{0}};
    assert_int_equal(esim_cmd_erase_device(&e, &opts, &cmd, &err), ESIM_OK);
    parse_back(&cmd, &p);
    assert_true(command_bool(&p, "PreserveDataPlan"));
    assert_true(command_bool(&p, "DisallowProximitySetup"));
    assert_string_equal(command_string(&p, "PIN"), "123456");
    assert_string_equal(command_string(&p, "ObliterationBehavior"), "DoNotObliterate");
    plist_t rts = plist_dict_get_item(p.command, "ReturnToService");
    assert_non_null(rts);
    uint8_t enabled = 0;
    plist_get_bool_val(plist_dict_get_item(rts, "Enabled"), &enabled);
    assert_true(enabled);
    uint64_t n = 0;
    const char *wifi = plist_get_data_ptr(plist_dict_get_item(rts, "WiFiProfileData"), &n);
    assert_int_equal(n, sizeof MINI_PROFILE - 1);
    assert_memory_equal(wifi, MINI_PROFILE, n);
    assert_non_null(plist_dict_get_item(rts, "MDMProfileData"));
    esim_cmd_parsed_free(&p);
    esim_cmd_free(&cmd);
}

static void test_erase_refusals(void **state)
{
    (void)state;
    esim_cmd cmd;
    esim_error err = {{0}};
    esim_erase_opts short_pin = {.pin = "12345"};
    assert_int_equal(esim_cmd_erase_device(&short_pin, NULL, &cmd, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "6 digits"));
    esim_erase_opts letters = {.pin = "12345a"};
    assert_int_equal(esim_cmd_erase_device(&letters, NULL, &cmd, &err), ESIM_EINVAL);
    esim_erase_opts obliterate = {.obliteration_behavior = "Sometimes"};
    assert_int_equal(esim_cmd_erase_device(&obliterate, NULL, &cmd, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "ObliterateWithWarning"));
    esim_erase_opts rts_off = {.rts_wifi_profile = (const unsigned char *)MINI_PROFILE,
                               .rts_wifi_profile_len = sizeof MINI_PROFILE - 1};
    assert_int_equal(esim_cmd_erase_device(&rts_off, NULL, &cmd, &err), ESIM_EINVAL);
    esim_erase_opts rts_junk = {.return_to_service = true,
                                .rts_mdm_profile = (const unsigned char *)"junk",
                                .rts_mdm_profile_len = 4};
    assert_int_equal(esim_cmd_erase_device(&rts_junk, NULL, &cmd, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "MDMProfileData"));
    esim_erase_opts len_no_bytes = {.return_to_service = true, .rts_wifi_profile_len = 3};
    assert_int_equal(esim_cmd_erase_device(&len_no_bytes, NULL, &cmd, &err), ESIM_EINVAL);
}

/* ---- InstallProfile, RemoveProfile, ProfileList, DeviceInformation ------------------------ */

static void test_install_profile(void **state)
{
    (void)state;
    esim_cmd cmd;
    esim_error err = {{0}};
    assert_int_equal(
        esim_cmd_install_profile(MINI_PROFILE, sizeof MINI_PROFILE - 1, NULL, &cmd, &err), ESIM_OK);
    esim_cmd_parsed p;
    parse_back(&cmd, &p);
    assert_string_equal(p.request_type, "InstallProfile");
    uint64_t n = 0;
    const char *payload = plist_get_data_ptr(plist_dict_get_item(p.command, "Payload"), &n);
    assert_int_equal(n, sizeof MINI_PROFILE - 1);
    assert_memory_equal(payload, MINI_PROFILE, n);
    esim_cmd_parsed_free(&p);
    esim_cmd_free(&cmd);

    const char not_config[] = "<plist><dict><key>PayloadType</key><string>com.apple.wifi.managed"
                              "</string></dict></plist>";
    assert_int_equal(esim_cmd_install_profile(not_config, sizeof not_config - 1, NULL, &cmd, &err),
                     ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "Configuration"));
    assert_int_equal(esim_cmd_install_profile("\x30\x03\x02\x01\x01", 5, NULL, &cmd, &err),
                     ESIM_EINVAL);
    assert_int_equal(esim_cmd_install_profile("hello", 5, NULL, &cmd, &err), ESIM_EINVAL);
    assert_int_equal(esim_cmd_install_profile(NULL, 0, NULL, &cmd, &err), ESIM_EINVAL);
}

static void test_remove_profile_and_list(void **state)
{
    (void)state;
    esim_cmd cmd;
    esim_cmd_parsed p;
    esim_error err = {{0}};
    assert_int_equal(esim_cmd_remove_profile("com.example.esim", NULL, &cmd, &err), ESIM_OK);
    parse_back(&cmd, &p);
    assert_string_equal(command_string(&p, "Identifier"), "com.example.esim");
    esim_cmd_parsed_free(&p);
    esim_cmd_free(&cmd);
    assert_int_equal(esim_cmd_remove_profile("", NULL, &cmd, &err), ESIM_EINVAL);
    assert_int_equal(esim_cmd_remove_profile(NULL, NULL, &cmd, &err), ESIM_EINVAL);

    assert_int_equal(esim_cmd_profile_list(true, NULL, &cmd, &err), ESIM_OK);
    parse_back(&cmd, &p);
    assert_string_equal(p.request_type, "ProfileList");
    assert_true(command_bool(&p, "ManagedOnly"));
    esim_cmd_parsed_free(&p);
    esim_cmd_free(&cmd);
    assert_int_equal(esim_cmd_profile_list(false, NULL, &cmd, &err), ESIM_OK);
    parse_back(&cmd, &p);
    assert_null(plist_dict_get_item(p.command, "ManagedOnly"));
    esim_cmd_parsed_free(&p);
    esim_cmd_free(&cmd);
}

static void test_device_information(void **state)
{
    (void)state;
    const char *queries[] = {"ServiceSubscriptions", "OSVersion"};
    esim_cmd cmd;
    esim_error err = {{0}};
    assert_int_equal(esim_cmd_device_information(queries, 2, NULL, &cmd, &err), ESIM_OK);
    esim_cmd_parsed p;
    parse_back(&cmd, &p);
    plist_t q = plist_dict_get_item(p.command, "Queries");
    assert_int_equal(plist_get_node_type(q), PLIST_ARRAY);
    assert_int_equal(plist_array_get_size(q), 2);
    assert_string_equal(plist_get_string_ptr(plist_array_get_item(q, 0), NULL),
                        "ServiceSubscriptions");
    assert_string_equal(plist_get_string_ptr(plist_array_get_item(q, 1), NULL), "OSVersion");
    esim_cmd_parsed_free(&p);
    esim_cmd_free(&cmd);

    assert_int_equal(esim_cmd_device_information(queries, 0, NULL, &cmd, &err), ESIM_EINVAL);
    assert_int_equal(esim_cmd_device_information(NULL, 1, NULL, &cmd, &err), ESIM_EINVAL);
    const char *empty[] = {"ServiceSubscriptions", ""};
    assert_int_equal(esim_cmd_device_information(empty, 2, NULL, &cmd, &err), ESIM_EINVAL);
    const char *odd[] = {"Service Subscriptions"};
    assert_int_equal(esim_cmd_device_information(odd, 1, NULL, &cmd, &err), ESIM_EINVAL);
}

/* ---- esim_cmd_parse refusals ----------------------------------------------------------- */

static void test_cmd_parse_refusals(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "<plist><dict><key>Command</key><dict><key>RequestType</key><string>X</string></dict>"
        "</dict></plist>",
        "<plist><dict><key>CommandUUID</key><string></string><key>Command</key><dict>"
        "<key>RequestType</key><string>X</string></dict></dict></plist>",
        "<plist><dict><key>CommandUUID</key><integer>5</integer><key>Command</key><dict>"
        "<key>RequestType</key><string>X</string></dict></dict></plist>",
        "<plist><dict><key>CommandUUID</key><string>u</string></dict></plist>",
        "<plist><dict><key>CommandUUID</key><string>u</string><key>Command</key><array/>"
        "</dict></plist>",
        "<plist><dict><key>CommandUUID</key><string>u</string><key>Command</key><dict/>"
        "</dict></plist>",
        "<plist><dict><key>CommandUUID</key><string>u</string><key>Command</key><dict>"
        "<key>RequestType</key><string></string></dict></dict></plist>",
        "<plist><array/></plist>",
        "not a plist",
    };
    for (size_t k = 0; k < sizeof bodies / sizeof bodies[0]; k++) {
        esim_cmd_parsed p;
        memset(&p, 0x5A, sizeof p);
        esim_error err = {{0}};
        assert_int_equal(esim_cmd_parse(bodies[k], strlen(bodies[k]), NULL, &p, &err), ESIM_EINVAL);
        assert_true(err.msg[0] != '\0');
        assert_int_equal(((unsigned char *)&p)[0], 0x5A);
    }
    /* Vendors' own commands (any RequestType) parse. */
    const char vendor[] = "<plist><dict><key>CommandUUID</key><string>vendor-1</string>"
                          "<key>Command</key><dict><key>RequestType</key><string>Settings</string>"
                          "</dict></dict></plist>";
    esim_cmd_parsed p;
    assert_int_equal(esim_cmd_parse(vendor, sizeof vendor - 1, NULL, &p, NULL), ESIM_OK);
    assert_string_equal(p.command_uuid, "vendor-1");
    assert_string_equal(p.request_type, "Settings");
    esim_cmd_parsed_free(&p);
    esim_cmd_parsed_free(NULL);
    esim_cmd_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_url_accepts),
        cmocka_unit_test(test_server_url_refuses),
        cmocka_unit_test(test_refresh_plans_xml),
        cmocka_unit_test(test_refresh_plans_binary_tether_uuid),
        cmocka_unit_test(test_fresh_uuids_differ),
        cmocka_unit_test(test_bad_opts_refused),
        cmocka_unit_test(test_erase_plain_and_full),
        cmocka_unit_test(test_erase_refusals),
        cmocka_unit_test(test_install_profile),
        cmocka_unit_test(test_remove_profile_and_list),
        cmocka_unit_test(test_device_information),
        cmocka_unit_test(test_cmd_parse_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
