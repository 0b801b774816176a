/*
 * test_plist_messages.c — device messages: what the device-side builders
 * emit, esim_msg_parse reads back identically (XML and binary); and every
 * refusal (size, depth, hostile binary trailers, missing keys, wrong types,
 * unknown values) comes with a reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "plist/esim_plist.h"
#include "plist/plist_internal.h"

static const char UDID[] = "00008030-001A2B3C4D5E6F70";
static const char TOPIC[] = "com.apple.mgmt.External.5f7e6a2c-1111-4222-8333-944455556666";
static const char CMD_UUID[] = "0f8fad5b-d9cb-469f-a165-70867728950e";

static esim_err parse_text(const char *xml, esim_msg *m, esim_error *err)
{
    return esim_msg_parse(xml, strlen(xml), NULL, m, err);
}

/* Deep equality, by comparing canonical XML (libplist 2.2 compares
 * containers by identity only). */
static bool plist_equal(plist_t a, plist_t b)
{
    esim_buf xa = {0}, xb = {0};
    assert_int_equal(esim_plist_serialize(a, ESIM_PLIST_XML, &xa, NULL), ESIM_OK);
    assert_int_equal(esim_plist_serialize(b, ESIM_PLIST_XML, &xb, NULL), ESIM_OK);
    bool same = xa.len == xb.len && memcmp(xa.data, xb.data, xa.len) == 0;
    esim_buf_free(&xa);
    esim_buf_free(&xb);
    return same;
}

/* ---- round trips ---------------------------------------------------------- */

static void test_authenticate_round_trip(void **state)
{
    (void)state;
    esim_authenticate_info info = {
        .udid = UDID,
        .topic = TOPIC,
        .os_version = "18.1",
        .build_version = "22B83",
        .product_name = "iPhone15,2",
        .serial_number = "F2LXK0Q1PLJM",
        .imei = "35 209900 176148 1",
        .meid = "35209900176148",
        .device_name = "Fleet iPhone 7",
        .model = "iPhone",
    };
    esim_buf body = {0};
    esim_error err = {{0}};
    assert_int_equal(esim_msg_build_authenticate(&info, &body, &err), ESIM_OK);
    esim_msg m;
    assert_int_equal(esim_msg_parse(body.data, body.len, NULL, &m, &err), ESIM_OK);
    assert_int_equal(m.kind, ESIM_MSG_AUTHENTICATE);
    assert_string_equal(m.message_type, "Authenticate");
    assert_string_equal(m.udid, UDID);
    assert_false(m.is_enrollment_id);
    assert_string_equal(m.topic, TOPIC);
    assert_string_equal(m.os_version, "18.1");
    assert_string_equal(m.build_version, "22B83");
    assert_string_equal(m.product_name, "iPhone15,2");
    assert_string_equal(m.serial_number, "F2LXK0Q1PLJM");
    assert_string_equal(m.imei, "35 209900 176148 1");
    assert_string_equal(m.meid, "35209900176148");
    assert_string_equal(m.device_name, "Fleet iPhone 7");
    assert_string_equal(m.model, "iPhone");
    esim_msg_free(&m);
    esim_buf_free(&body);

    /* Optional fields really are optional. */
    esim_authenticate_info bare = {.udid = UDID, .topic = TOPIC};
    assert_int_equal(esim_msg_build_authenticate(&bare, &body, &err), ESIM_OK);
    assert_int_equal(esim_msg_parse(body.data, body.len, NULL, &m, &err), ESIM_OK);
    assert_string_equal(m.os_version, "");
    esim_msg_free(&m);
    esim_buf_free(&body);
}

static void test_token_update_and_checkout_round_trip(void **state)
{
    (void)state;
    unsigned char token[32];
    for (size_t k = 0; k < sizeof token; k++)
        token[k] = (unsigned char)(k * 7 + 1);
    esim_buf body = {0};
    esim_error err = {{0}};
    assert_int_equal(esim_msg_build_token_update(UDID, TOPIC, token, sizeof token, "7C8E2A10-MAGIC",
                                                 &body, &err),
                     ESIM_OK);
    esim_msg m;
    assert_int_equal(esim_msg_parse(body.data, body.len, NULL, &m, &err), ESIM_OK);
    assert_int_equal(m.kind, ESIM_MSG_TOKEN_UPDATE);
    assert_int_equal(m.token.len, sizeof token);
    assert_memory_equal(m.token.data, token, sizeof token);
    assert_string_equal(m.push_magic, "7C8E2A10-MAGIC");
    assert_false(m.awaiting_configuration);
    esim_msg_free(&m);
    esim_buf_free(&body);

    assert_int_equal(esim_msg_build_checkout(UDID, TOPIC, &body, &err), ESIM_OK);
    assert_int_equal(esim_msg_parse(body.data, body.len, NULL, &m, &err), ESIM_OK);
    assert_int_equal(m.kind, ESIM_MSG_CHECKOUT);
    assert_string_equal(m.udid, UDID);
    esim_msg_free(&m);
    esim_buf_free(&body);
}

static void test_token_update_optional_keys(void **state)
{
    (void)state;
    const char xml[] =
        "<plist version=\"1.0\"><dict><key>MessageType</key><string>TokenUpdate</string>"
        "<key>EnrollmentID</key><string>A1B2C3D4-E5F6</string>"
        "<key>Topic</key><string>com.apple.mgmt.External.x</string>"
        "<key>Token</key><data>AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=</data>"
        "<key>PushMagic</key><string>magic</string>"
        "<key>UnlockToken</key><data>3q2+7w==</data>"
        "<key>AwaitingConfiguration</key><true/></dict></plist>";
    esim_msg m;
    esim_error err = {{0}};
    assert_int_equal(parse_text(xml, &m, &err), ESIM_OK);
    assert_true(m.is_enrollment_id);
    assert_string_equal(m.udid, "A1B2C3D4-E5F6");
    assert_int_equal(m.unlock_token.len, 4);
    assert_memory_equal(m.unlock_token.data, "\xde\xad\xbe\xef", 4);
    assert_true(m.awaiting_configuration);
    esim_msg_free(&m);
}

static plist_t subscriptions_extra(void)
{
    plist_t sub = plist_new_dict();
    plist_dict_set_item(sub, "EID", plist_new_string("89882119900000000000000000001654"));
    plist_dict_set_item(sub, "ICCID", plist_new_string("8944500102198304826"));
    plist_dict_set_item(sub, "IMEI", plist_new_string("352099001761481"));
    plist_dict_set_item(sub, "Slot", plist_new_string("CTSubscriptionSlotOne"));
    plist_dict_set_item(sub, "Label", plist_new_string("Business"));
    plist_dict_set_item(sub, "CurrentCarrierNetwork", plist_new_string("Example Mobile"));
    plist_dict_set_item(sub, "PhoneNumber", plist_new_string("+15555550100"));
    plist_dict_set_item(sub, "IsDataPreferred", plist_new_bool(1));
    plist_dict_set_item(sub, "IsVoicePreferred", plist_new_bool(0));
    plist_t second = plist_new_dict();
    plist_dict_set_item(second, "Slot", plist_new_string("CTSubscriptionSlotTwo"));
    plist_t list = plist_new_array();
    plist_array_append_item(list, sub);
    plist_array_append_item(list, second);
    plist_t responses = plist_new_dict();
    plist_dict_set_item(responses, "ServiceSubscriptions", list);
    plist_dict_set_item(responses, "OSVersion", plist_new_string("18.1"));
    plist_t extra = plist_new_dict();
    plist_dict_set_item(extra, "QueryResponses", responses);
    return extra;
}

static void check_result_round_trip(esim_plist_format format)
{
    esim_error_chain_entry chain[2] = {
        {.code = 36003,
         .domain = "CTCellularPlanErrorDomain",
         .localized_description = "The cellular stack is busy.",
         .us_english_description = "The cellular stack is busy."},
        {.code = -4, .domain = "MCMDMErrorDomain", .localized_description = "Ça échoue"},
    };
    plist_t extra = subscriptions_extra();
    esim_buf body = {0};
    esim_error err = {{0}};
    assert_int_equal(esim_msg_build_result(UDID, ESIM_STATUS_ERROR, CMD_UUID, chain, 2, extra,
                                           format, &body, &err),
                     ESIM_OK);
    if (format == ESIM_PLIST_BINARY)
        assert_memory_equal(body.data, "bplist00", 8);
    esim_msg m;
    assert_int_equal(esim_msg_parse(body.data, body.len, NULL, &m, &err), ESIM_OK);
    assert_int_equal(m.kind, ESIM_MSG_RESULT);
    assert_int_equal(m.status, ESIM_STATUS_ERROR);
    assert_string_equal(m.command_uuid, CMD_UUID);
    assert_string_equal(m.message_type, "");
    assert_int_equal(m.error_chain_len, 2);
    assert_int_equal(m.error_chain[0].code, 36003);
    assert_string_equal(m.error_chain[0].domain, "CTCellularPlanErrorDomain");
    assert_string_equal(m.error_chain[0].localized_description, "The cellular stack is busy.");
    assert_string_equal(m.error_chain[0].us_english_description, "The cellular stack is busy.");
    assert_int_equal(m.error_chain[1].code, -4);
    assert_string_equal(m.error_chain[1].localized_description, "Ça échoue");
    assert_string_equal(m.error_chain[1].us_english_description, "");
    /* Everything in |extra| comes back identical. */
    plist_t got = plist_dict_get_item(m.root, "QueryResponses");
    assert_true(plist_equal(got, plist_dict_get_item(extra, "QueryResponses")));

    esim_subscription *subs = NULL;
    size_t n = 0;
    assert_int_equal(esim_msg_service_subscriptions(&m, &subs, &n, &err), ESIM_OK);
    assert_int_equal(n, 2);
    assert_string_equal(subs[0].eid, "89882119900000000000000000001654");
    assert_string_equal(subs[0].iccid, "8944500102198304826");
    assert_string_equal(subs[0].imei, "352099001761481");
    assert_string_equal(subs[0].slot, "CTSubscriptionSlotOne");
    assert_string_equal(subs[0].label, "Business");
    assert_string_equal(subs[0].carrier, "Example Mobile");
    assert_string_equal(subs[0].phone_number, "+15555550100");
    assert_true(subs[0].is_data_preferred);
    assert_false(subs[0].is_voice_preferred);
    assert_string_equal(subs[1].slot, "CTSubscriptionSlotTwo");
    assert_string_equal(subs[1].eid, "");
    free(subs);
    esim_msg_free(&m);
    esim_buf_free(&body);
    plist_free(extra);
}

static void test_result_round_trip_xml(void **state)
{
    (void)state;
    check_result_round_trip(ESIM_PLIST_XML);
}

static void test_result_round_trip_binary(void **state)
{
    (void)state;
    check_result_round_trip(ESIM_PLIST_BINARY);
}

static void test_every_status_round_trips(void **state)
{
    (void)state;
    for (int s = ESIM_STATUS_IDLE; s <= ESIM_STATUS_NOT_NOW; s++) {
        esim_buf body = {0};
        esim_error err = {{0}};
        const char *uuid = s == ESIM_STATUS_IDLE ? NULL : CMD_UUID;
        assert_int_equal(esim_msg_build_result(UDID, (esim_status)s, uuid, NULL, 0, NULL,
                                               ESIM_PLIST_XML, &body, &err),
                         ESIM_OK);
        esim_msg m;
        assert_int_equal(esim_msg_parse(body.data, body.len, NULL, &m, &err), ESIM_OK);
        assert_int_equal(m.status, s);
        assert_string_equal(m.command_uuid, uuid ? uuid : "");
        esim_status back;
        assert_int_equal(esim_status_from_name(esim_status_name((esim_status)s), &back), ESIM_OK);
        assert_int_equal(back, s);
        esim_subscription *subs = (esim_subscription *)1;
        size_t n = 9;
        assert_int_equal(esim_msg_service_subscriptions(&m, &subs, &n, &err), ESIM_OK);
        assert_null(subs);
        assert_int_equal(n, 0);
        esim_msg_free(&m);
        esim_buf_free(&body);
    }
    assert_null(esim_status_name((esim_status)0));
    assert_null(esim_status_name((esim_status)99));
    esim_status s;
    assert_int_equal(esim_status_from_name("acknowledged", &s), ESIM_EINVAL);
    assert_int_equal(esim_status_from_name(NULL, &s), ESIM_EINVAL);
}

static void test_builder_refusals(void **state)
{
    (void)state;
    esim_buf body = {0};
    esim_error err = {{0}};
    unsigned char token[128] = {1};
    esim_authenticate_info no_topic = {.udid = UDID};
    assert_int_equal(esim_msg_build_authenticate(&no_topic, &body, &err), ESIM_EINVAL);
    esim_authenticate_info bad_udid = {.udid = "has space", .topic = TOPIC};
    assert_int_equal(esim_msg_build_authenticate(&bad_udid, &body, &err), ESIM_EINVAL);
    char long_name[300];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    esim_authenticate_info too_long = {.udid = UDID, .topic = TOPIC, .device_name = long_name};
    assert_int_equal(esim_msg_build_authenticate(&too_long, &body, &err), ESIM_EINVAL);
    assert_int_equal(esim_msg_build_token_update(UDID, TOPIC, token, 0, "m", &body, &err),
                     ESIM_EINVAL);
    assert_int_equal(esim_msg_build_token_update(UDID, TOPIC, token, 101, "m", &body, &err),
                     ESIM_EINVAL);
    /* A short placeholder token (test clients send them) is taken: APNs
     * judges tokens at push time. */
    assert_int_equal(esim_msg_build_token_update(UDID, TOPIC, token, 3, "m", &body, &err), ESIM_OK);
    esim_msg parsed = {0};
    assert_int_equal(esim_msg_parse(body.data, body.len, NULL, &parsed, &err), ESIM_OK);
    assert_int_equal(parsed.token.len, 3);
    esim_msg_free(&parsed);
    esim_buf_free(&body);
    assert_int_equal(esim_msg_build_token_update(UDID, TOPIC, token, 32, "", &body, &err),
                     ESIM_EINVAL);
    assert_int_equal(esim_msg_build_checkout(NULL, TOPIC, &body, &err), ESIM_EINVAL);
    assert_int_equal(esim_msg_build_result(UDID, ESIM_STATUS_ACKNOWLEDGED, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &body, &err),
                     ESIM_EINVAL);
    assert_int_equal(esim_msg_build_result(UDID, (esim_status)42, CMD_UUID, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &body, &err),
                     ESIM_EINVAL);
    assert_int_equal(esim_msg_build_result(UDID, ESIM_STATUS_ERROR, CMD_UUID, NULL, 2, NULL,
                                           ESIM_PLIST_XML, &body, &err),
                     ESIM_EINVAL);
    esim_error_chain_entry no_domain = {.code = 1};
    assert_int_equal(esim_msg_build_result(UDID, ESIM_STATUS_ERROR, CMD_UUID, &no_domain, 1, NULL,
                                           ESIM_PLIST_XML, &body, &err),
                     ESIM_EINVAL);
    plist_t not_dict = plist_new_array();
    assert_int_equal(esim_msg_build_result(UDID, ESIM_STATUS_ERROR, CMD_UUID, NULL, 0, not_dict,
                                           ESIM_PLIST_XML, &body, &err),
                     ESIM_EINVAL);
    plist_free(not_dict);
    assert_null(body.data);
}

/* ---- refusals ----------------------------------------------------------------------------------
 */

#define CHECKIN(type, rest)                                                                        \
    "<plist version=\"1.0\"><dict><key>MessageType</key><string>" type "</string>" rest            \
    "</dict></plist>"
#define UDID_TOPIC "<key>UDID</key><string>ABC-123</string><key>Topic</key><string>t</string>"
#define TOKEN32 "<key>Token</key><data>AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=</data>"
#define RESULT(rest)                                                                               \
    "<plist version=\"1.0\"><dict><key>UDID</key><string>ABC-123</string>" rest "</dict></plist>"

static void test_refusals_with_reasons(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        const char *reason; /* a word the message must contain */
    } cases[] = {
        {CHECKIN("Authenticate", "<key>Topic</key><string>t</string>"), "UDID"},
        {CHECKIN("Authenticate", "<key>UDID</key><string>ABC</string>"), "Topic"},
        {CHECKIN("Authenticate", "<key>UDID</key><string>ABC</string><key>Topic</key><string>"
                                 "</string>"),
         "Topic"},
        {CHECKIN("Authenticate", "<key>UDID</key><integer>3</integer><key>Topic</key><string>t"
                                 "</string>"),
         "UDID"},
        {CHECKIN("Authenticate", "<key>UDID</key><string>a/b</string><key>Topic</key><string>t"
                                 "</string>"),
         "UDID"},
        {CHECKIN("Authenticate", UDID_TOPIC "<key>OSVersion</key><real>17.2</real>"), "OSVersion"},
        {CHECKIN("Enroll", UDID_TOPIC), "MessageType"},
        {CHECKIN("TokenUpdate", UDID_TOPIC "<key>PushMagic</key><string>m</string>"), "Token"},
        {CHECKIN("TokenUpdate", UDID_TOPIC TOKEN32), "PushMagic"},
        {CHECKIN("TokenUpdate", UDID_TOPIC "<key>Token</key><string>abc</string>"
                                           "<key>PushMagic</key><string>m</string>"),
         "Token"},
        {CHECKIN("TokenUpdate", UDID_TOPIC "<key>Token</key><data></data>"
                                           "<key>PushMagic</key><string>m</string>"),
         "Token"},
        {CHECKIN("TokenUpdate",
                 UDID_TOPIC TOKEN32 "<key>PushMagic</key><string>m</string>"
                                    "<key>AwaitingConfiguration</key><string>yes</string>"),
         "AwaitingConfiguration"},
        {RESULT("<key>Status</key><string>Done</string><key>CommandUUID</key><string>u</string>"),
         "Status"},
        {RESULT("<key>Status</key><true/>"), "Status"},
        {RESULT("<key>Status</key><string>Acknowledged</string>"), "CommandUUID"},
        {RESULT("<key>Status</key><string>Error</string><key>CommandUUID</key><string>u</string>"
                "<key>ErrorChain</key><dict/>"),
         "ErrorChain"},
        {RESULT("<key>Status</key><string>Error</string><key>CommandUUID</key><string>u</string>"
                "<key>ErrorChain</key><array><string>x</string></array>"),
         "ErrorChain"},
        {RESULT("<key>Status</key><string>Error</string><key>CommandUUID</key><string>u</string>"
                "<key>ErrorChain</key><array><dict><key>ErrorDomain</key><string>d</string>"
                "</dict></array>"),
         "ErrorCode"},
        {RESULT("<key>Status</key><string>Error</string><key>CommandUUID</key><string>u</string>"
                "<key>ErrorChain</key><array><dict><key>ErrorCode</key><string>1</string>"
                "<key>ErrorDomain</key><string>d</string></dict></array>"),
         "ErrorCode"},
        {RESULT("<key>Status</key><string>Error</string><key>CommandUUID</key><string>u</string>"
                "<key>ErrorChain</key><array><dict><key>ErrorCode</key><integer>1</integer>"
                "</dict></array>"),
         "ErrorDomain"},
        {RESULT("<key>Status</key><string>Acknowledged</string><key>CommandUUID</key><string>u"
                "</string><key>QueryResponses</key><array/>"),
         "QueryResponses"},
        {RESULT("<key>Status</key><string>Idle</string><key>MessageType</key><string>CheckOut"
                "</string>"),
         "both"},
        {"<plist version=\"1.0\"><dict><key>UDID</key><string>ABC</string></dict></plist>",
         "neither"},
        {"<plist version=\"1.0\"><array><string>x</string></array></plist>", "dictionary"},
        {"<plist version=\"1.0\"><dict><key>UDID</key>", "well-formed"},
        {"{\"json\": true}", "not a plist"},
        {"bplist00garbage-that-is-not-a-binary-plist-at-all-really", "binary"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        esim_msg m;
        memset(&m, 0x5A, sizeof m);
        esim_error err = {{0}};
        esim_err rc = parse_text(cases[k].body, &m, &err);
        if (rc != ESIM_EINVAL || !strstr(err.msg, cases[k].reason))
            fail_msg("case %zu: rc %d, message '%s' (wanted '%s')", k, rc, err.msg,
                     cases[k].reason);
        assert_int_equal(((unsigned char *)&m)[0], 0x5A); /* untouched */
    }
    esim_msg m;
    assert_int_equal(esim_msg_parse(NULL, 0, NULL, &m, NULL), ESIM_EINVAL);
    assert_int_equal(esim_msg_parse("x", 1, NULL, NULL, NULL), ESIM_EINVAL);
    esim_msg_free(NULL);
}

static void test_field_too_long_refused_not_truncated(void **state)
{
    (void)state;
    char body[1024];
    char uuid[200];
    memset(uuid, 'a', 150);
    uuid[150] = '\0';
    snprintf(body, sizeof body,
             RESULT("<key>Status</key><string>Acknowledged</string><key>CommandUUID</key>"
                    "<string>%s</string>"),
             uuid);
    esim_msg m;
    esim_error err = {{0}};
    assert_int_equal(parse_text(body, &m, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "CommandUUID"));
    assert_non_null(strstr(err.msg, "longer"));
}

static void test_size_limit(void **state)
{
    (void)state;
    const char small[] = RESULT("<key>Status</key><string>Idle</string>");
    esim_parse_limits tight = {.max_body = 40};
    esim_msg m;
    esim_error err = {{0}};
    assert_int_equal(esim_msg_parse(small, sizeof small - 1, &tight, &m, &err), ESIM_ETOOBIG);
    assert_non_null(strstr(err.msg, "limit"));
    tight.max_body = sizeof small - 1;
    assert_int_equal(esim_msg_parse(small, sizeof small - 1, &tight, &m, &err), ESIM_OK);
    esim_msg_free(&m);
    /* The default cap is 1 MiB. */
    size_t big_len = ESIM_PLIST_DEFAULT_MAX_BODY + 1;
    char *big = malloc(big_len);
    memset(big, ' ', big_len);
    memcpy(big, small, sizeof small - 1);
    assert_int_equal(esim_msg_parse(big, big_len, NULL, &m, &err), ESIM_ETOOBIG);
    free(big);
}

/* A result whose QueryResponses holds |depth| - 1 nested arrays. */
static char *nested_xml(unsigned depth)
{
    esim_buf b = {0};
    esim_buf_append_str(&b, "<plist version=\"1.0\"><dict><key>UDID</key><string>ABC</string>"
                            "<key>Status</key><string>Idle</string><key>Deep</key>");
    for (unsigned k = 1; k < depth; k++)
        esim_buf_append_str(&b, "<array>");
    for (unsigned k = 1; k < depth; k++)
        esim_buf_append_str(&b, "</array>");
    esim_buf_append_str(&b, "</dict></plist>");
    return (char *)esim_buf_steal(&b, NULL);
}

static void test_depth_limit_xml(void **state)
{
    (void)state;
    esim_msg m;
    esim_error err = {{0}};
    char *ok = nested_xml(ESIM_PLIST_DEFAULT_MAX_DEPTH);
    assert_int_equal(parse_text(ok, &m, &err), ESIM_OK);
    esim_msg_free(&m);
    free(ok);
    char *deep = nested_xml(ESIM_PLIST_DEFAULT_MAX_DEPTH + 1);
    assert_int_equal(parse_text(deep, &m, &err), ESIM_ETOOBIG);
    assert_non_null(strstr(err.msg, "deeper"));
    free(deep);
    /* Far deeper than any parser's stack would survive: refused before parsing. */
    char *hostile = nested_xml(200000);
    assert_int_equal(parse_text(hostile, &m, &err), ESIM_ETOOBIG);
    free(hostile);
    /* Custom limit. */
    esim_parse_limits shallow = {.max_depth = 2};
    char *three = nested_xml(3);
    assert_int_equal(esim_msg_parse(three, strlen(three), &shallow, &m, &err), ESIM_ETOOBIG);
    free(three);
    /* Empty containers do not nest; comments do not count. */
    const char flat[] = RESULT("<key>Status</key><string>Idle</string><key>A</key><array/>"
                               "<!-- <array><array><array> --><key>B</key><dict/>");
    assert_int_equal(esim_msg_parse(flat, sizeof flat - 1, &shallow, &m, &err), ESIM_OK);
    esim_msg_free(&m);
}

/* Issue 10 item 6: markup that hides closing tags from the nesting scan. */
static char *hidden_nesting(const char *open, unsigned depth)
{
    esim_buf b = {0};
    esim_buf_append_str(&b, "<plist version=\"1.0\"><dict><key>UDID</key><string>ABC</string>"
                            "<key>Status</key><string>Idle</string><key>Deep</key>");
    for (unsigned k = 0; k < depth; k++)
        esim_buf_append_str(&b, open);
    for (unsigned k = 0; k < depth; k++)
        esim_buf_append_str(&b, "</array>");
    esim_buf_append_str(&b, "</dict></plist>");
    return (char *)esim_buf_steal(&b, NULL);
}

static void test_depth_scan_not_fooled_by_markup(void **state)
{
    (void)state;
    /* Each opener hides a closing tag where libplist does not see one. */
    static const char *const openers[] = {
        "<array a=\"</array>\">",    /* inside a double-quoted attribute */
        "<array a='</array>'>",      /* single quotes */
        "<array><?x </array>?>",     /* inside a processing instruction */
        "<array><?x \"</array>\"?>", /* quoted inside a PI */
        "<array a=\"x\" b='\"'>",    /* a quote libplist would chase */
    };
    /* A body of several MiB, as a raised --max-body allows: refused, no crash. */
    esim_parse_limits big = {.max_body = 64u * 1024 * 1024};
    for (size_t k = 0; k < sizeof openers / sizeof openers[0]; k++) {
        char *doc = hidden_nesting(openers[k], 200000);
        esim_msg m;
        esim_error err = {{0}};
        esim_err rc = esim_msg_parse(doc, strlen(doc), &big, &m, &err);
        assert_true(rc == ESIM_EINVAL || rc == ESIM_ETOOBIG);
        assert_true(err.msg[0] != '\0');
        free(doc);
    }
    /* Quoted '<' is refused even where the depth is small. */
    const char quoted_lt[] = RESULT("<key>Status</key><string>Idle</string>"
                                    "<key>A</key><array a=\"</array>\"></array>");
    esim_msg m;
    esim_error err = {{0}};
    assert_int_equal(parse_text(quoted_lt, &m, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "quoted attribute"));
    /* An internal DTD subset is refused; the usual prolog is accepted. */
    const char dtd[] = "<?xml version=\"1.0\"?><!DOCTYPE plist [<!ENTITY a \"b\">]>" RESULT(
        "<key>Status</key><string>Idle</string>");
    assert_int_equal(parse_text(dtd, &m, &err), ESIM_EINVAL);
    const char prolog[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD "
        "PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n" RESULT(
            "<key>Status</key><string>Idle</string><key>A</key><array x=\"a>b\"><dict/></array>");
    assert_int_equal(parse_text(prolog, &m, &err), ESIM_OK);
    esim_msg_free(&m);
}

static void test_depth_ceiling_holds(void **state)
{
    (void)state;
    /* A caller asking for a huge depth still gets the ceiling. */
    esim_parse_limits lax = {.max_body = 64u * 1024 * 1024, .max_depth = 4000000000u};
    char *deep = nested_xml(ESIM_PLIST_MAX_DEPTH_CEILING + 1);
    esim_msg m;
    esim_error err = {{0}};
    assert_int_equal(esim_msg_parse(deep, strlen(deep), &lax, &m, &err), ESIM_ETOOBIG);
    assert_non_null(strstr(err.msg, "deeper"));
    free(deep);
    char *fits = nested_xml(ESIM_PLIST_MAX_DEPTH_CEILING);
    assert_int_equal(esim_msg_parse(fits, strlen(fits), &lax, &m, &err), ESIM_OK);
    esim_msg_free(&m);
    free(fits);
}

/* A hand-written binary plist: a dict of |n| ASCII keys and string values,
 * one-byte refs and offsets (libplist's writer never repeats a key). */
static void bplist_dict(const char *const *keys, const char *const *vals, size_t n, esim_buf *out)
{
    unsigned char offsets[32];
    size_t nobj = 1 + 2 * n;
    esim_buf b = {0};
    esim_buf_append_str(&b, "bplist00");
    offsets[0] = (unsigned char)b.len;
    unsigned char head = (unsigned char)(0xD0 | n);
    esim_buf_append(&b, &head, 1);
    for (size_t k = 0; k < 2 * n; k++) {
        unsigned char ref = (unsigned char)(1 + k);
        esim_buf_append(&b, &ref, 1);
    }
    for (size_t k = 0; k < 2 * n; k++) {
        const char *str = k < n ? keys[k] : vals[k - n];
        offsets[1 + k] = (unsigned char)b.len;
        unsigned char m = (unsigned char)(0x50 | strlen(str));
        esim_buf_append(&b, &m, 1);
        esim_buf_append_str(&b, str);
    }
    size_t table = b.len;
    esim_buf_append(&b, offsets, nobj);
    unsigned char trailer[32] = {0};
    trailer[6] = 1;
    trailer[7] = 1;
    trailer[15] = (unsigned char)nobj;
    trailer[31] = (unsigned char)table;
    esim_buf_append(&b, trailer, sizeof trailer);
    esim_buf_free(out);
    *out = b;
}

static void test_duplicate_keys_refused(void **state)
{
    (void)state;
    esim_msg m;
    esim_error err = {{0}};
    esim_buf b = {0};
    /* The control: distinct keys parse. */
    const char *const ok_keys[] = {"UDID", "Status"};
    const char *const ok_vals[] = {"A", "Idle"};
    bplist_dict(ok_keys, ok_vals, 2, &b);
    assert_int_equal(esim_msg_parse(b.data, b.len, NULL, &m, &err), ESIM_OK);
    assert_string_equal(m.udid, "A");
    esim_msg_free(&m);
    /* UDID twice: libplist keeps both and answers the first, others the last. */
    const char *const dup_keys[] = {"UDID", "Status", "UDID"};
    const char *const dup_vals[] = {"A", "Idle", "B"};
    bplist_dict(dup_keys, dup_vals, 3, &b);
    assert_int_equal(esim_msg_parse(b.data, b.len, NULL, &m, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "\"UDID\" more than once"));
    esim_buf_free(&b);
    /* The same key once as ASCII, once as UTF-16. */
    static const unsigned char mixed[] = {
        'b',  'p', 'l', 'i', 's', 't', '0', '0', 0xD3, 1, 2, 3, 4, 5, 6, /* 8: dict of 3 */
        0x54, 'U', 'D', 'I', 'D',                                        /* 15 */
        0x56, 'S', 't', 'a', 't', 'u', 's',                              /* 20 */
        0x64, 0,   'U', 0,   'D', 0,   'I', 0,   'D',                    /* 27: UTF-16 "UDID" */
        0x51, 'A',                                                       /* 36 */
        0x54, 'I', 'd', 'l', 'e',                                        /* 38 */
        0x51, 'B',                                                       /* 43 */
        8,    15,  20,  27,  36,  38,  43,                               /* 45: offsets */
        0,    0,   0,   0,   0,   0,   1,   1,   0,    0, 0, 0, 0, 0, 0, 7,
        0,    0,   0,   0,   0,   0,   0,   0,   0,    0, 0, 0, 0, 0, 0, 45};
    assert_int_equal(esim_msg_parse(mixed, sizeof mixed, NULL, &m, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "more than once"));
    /* An unpaired surrogate, which libplist would drop ("UD\uD800ID" -> UDID). */
    unsigned char lone[sizeof mixed + 2];
    memcpy(lone, mixed, 30);
    lone[27] = 0x65; /* five units */
    lone[30] = 0xD8;
    lone[31] = 0x00;
    memcpy(lone + 32, mixed + 30, sizeof mixed - 30);
    for (size_t k = 45 + 2; k < 45 + 2 + 7; k++)
        if (lone[k] > 27)
            lone[k] += 2;
    lone[sizeof lone - 1] = 47;
    assert_int_equal(esim_msg_parse(lone, sizeof lone, NULL, &m, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "surrogate"));
    /* XML: libplist lets the last UDID win silently; refused too. */
    const char xml_dup[] = RESULT("<key>Status</key><string>Idle</string>"
                                  "<key>UDID</key><string>OTHER</string>");
    assert_int_equal(parse_text(xml_dup, &m, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "repeats a key"));
    /* Nested dictionaries may reuse their parent's keys. */
    const char nested_ok[] = RESULT("<key>Status</key><string>Idle</string><key>X</key><dict>"
                                    "<key>UDID</key><string>inner</string><key>K</key><key>v"
                                    "</key></dict><key>Y</key><array><dict><key>Status</key>"
                                    "<true/></dict></array>");
    assert_int_equal(parse_text(nested_ok, &m, &err), ESIM_OK);
    assert_string_equal(m.udid, "ABC-123");
    esim_msg_free(&m);
}

/* Builds a binary plist of a dict {UDID, Status=Idle, Deep: array^(depth-1)}
 * by serializing a real tree, so the layout is libplist's own. */
static void binary_nested(unsigned depth, esim_buf *out)
{
    plist_t root = plist_new_dict();
    plist_dict_set_item(root, "UDID", plist_new_string("ABC"));
    plist_dict_set_item(root, "Status", plist_new_string("Idle"));
    plist_t inner = NULL;
    for (unsigned k = 1; k < depth; k++) {
        plist_t a = plist_new_array();
        if (inner)
            plist_array_append_item(a, inner);
        inner = a;
    }
    if (inner)
        plist_dict_set_item(root, "Deep", inner);
    assert_int_equal(esim_plist_serialize(root, ESIM_PLIST_BINARY, out, NULL), ESIM_OK);
    plist_free(root);
}

static void test_depth_limit_binary(void **state)
{
    (void)state;
    esim_buf b = {0};
    esim_msg m;
    esim_error err = {{0}};
    binary_nested(ESIM_PLIST_DEFAULT_MAX_DEPTH, &b);
    assert_int_equal(esim_msg_parse(b.data, b.len, NULL, &m, &err), ESIM_OK);
    esim_msg_free(&m);
    binary_nested(ESIM_PLIST_DEFAULT_MAX_DEPTH + 1, &b);
    assert_int_equal(esim_msg_parse(b.data, b.len, NULL, &m, &err), ESIM_ETOOBIG);
    esim_buf_free(&b);
}

static void put_be64(unsigned char *p, uint64_t v)
{
    for (int k = 7; k >= 0; k--) {
        p[k] = (unsigned char)(v & 0xFF);
        v >>= 8;
    }
}

static void test_hostile_binary_trailers(void **state)
{
    (void)state;
    esim_buf good = {0};
    binary_nested(3, &good);
    struct {
        size_t field;   /* offset in the trailer */
        uint64_t value; /* 64-bit fields */
        unsigned char byte;
    } mutations[] = {
        {8, UINT64_MAX, 0},      /* object count: absurd */
        {8, 1u << 30, 0},        /* object count: more than bytes */
        {16, 1000, 0},           /* top object out of range */
        {24, UINT64_MAX - 4, 0}, /* offset table beyond the data */
        {6, 0, 9},               /* offset size 9 */
        {7, 0, 0},               /* reference size 0 */
    };
    for (size_t k = 0; k < sizeof mutations / sizeof mutations[0]; k++) {
        esim_buf copy = {0};
        esim_buf_append(&copy, good.data, good.len);
        unsigned char *ct = copy.data + copy.len - 32;
        if (mutations[k].field >= 8)
            put_be64(ct + mutations[k].field, mutations[k].value);
        else
            ct[mutations[k].field] = mutations[k].byte;
        esim_msg m;
        esim_error err = {{0}};
        assert_int_equal(esim_msg_parse(copy.data, copy.len, NULL, &m, &err), ESIM_EINVAL);
        assert_non_null(strstr(err.msg, "binary plist"));
        esim_buf_free(&copy);
    }
    esim_buf_free(&good);
}

/* 100 000 arrays, each holding the next: libplist 2.2's binary reader
 * recurses once per level and overflows its stack on this (checked by
 * hand), so the refusal must come from the pre-scan. */
static void test_binary_deep_chain_refused_before_parsing(void **state)
{
    (void)state;
    const size_t n = 100000;
    size_t len = 8 + n * 5 + n * 4 + 32;
    unsigned char *b = calloc(1, len);
    assert_non_null(b);
    memcpy(b, "bplist00", 8);
    for (size_t k = 0; k < n; k++) {
        unsigned char *obj = b + 8 + 5 * k;
        obj[0] = k + 1 < n ? 0xA1 : 0xA0;
        if (k + 1 < n)
            for (int j = 0; j < 4; j++)
                obj[1 + j] = (unsigned char)((k + 1) >> (8 * (3 - j)));
    }
    size_t table = 8 + 5 * n;
    for (size_t k = 0; k < n; k++)
        for (int j = 0; j < 4; j++)
            b[table + 4 * k + j] = (unsigned char)((8 + 5 * k) >> (8 * (3 - j)));
    unsigned char *t = b + len - 32;
    t[6] = 4;
    t[7] = 4;
    put_be64(t + 8, n);
    put_be64(t + 16, 0);
    put_be64(t + 24, table);
    esim_msg m;
    esim_error err = {{0}};
    assert_int_equal(esim_msg_parse(b, len, NULL, &m, &err), ESIM_ETOOBIG);
    assert_non_null(strstr(err.msg, "deeper"));
    free(b);
}

/* Object 0 refers |fan| times to object 1, which refers |fan| times to a
 * string: libplist 2.2 copies shared objects per reference, so 1000 x 1000
 * is a million values out of 4 KB (6000 x 6000 took 4.5 GB, checked by
 * hand). Sharing scalars, as real writers do, stays fine. */
static void test_binary_expansion_bomb_refused(void **state)
{
    (void)state;
    const size_t fan = 1000;
    esim_buf b = {0};
    esim_buf_append(&b, "bplist00", 8);
    size_t offs[3];
    for (int o = 0; o < 2; o++) {
        offs[o] = b.len;
        unsigned char head[4] = {0xAF, 0x11, (unsigned char)(fan >> 8), (unsigned char)fan};
        esim_buf_append(&b, head, 4);
        for (size_t k = 0; k < fan; k++) {
            unsigned char ref[2] = {0, (unsigned char)(o + 1)};
            esim_buf_append(&b, ref, 2);
        }
    }
    offs[2] = b.len;
    esim_buf_append(&b, "\x51x", 2);
    size_t table = b.len;
    for (int o = 0; o < 3; o++) {
        unsigned char off[2] = {(unsigned char)(offs[o] >> 8), (unsigned char)offs[o]};
        esim_buf_append(&b, off, 2);
    }
    unsigned char trailer[32] = {0};
    trailer[6] = 2;
    trailer[7] = 2;
    put_be64(trailer + 8, 3);
    put_be64(trailer + 16, 0);
    put_be64(trailer + 24, table);
    esim_buf_append(&b, trailer, 32);
    plist_t root = NULL;
    esim_error err = {{0}};
    assert_int_equal(esim_plist_parse_dict(b.data, b.len, NULL, &root, &err), ESIM_ETOOBIG);
    assert_non_null(strstr(err.msg, "expand"));
    assert_null(root);
    esim_buf_free(&b);

    /* 5000 references to one shared `true` and one shared string: fine. */
    plist_t d = plist_new_dict();
    plist_t list = plist_new_array();
    for (int k = 0; k < 5000; k++) {
        plist_array_append_item(list, plist_new_bool(1));
        plist_array_append_item(list, plist_new_string("same"));
    }
    plist_dict_set_item(d, "List", list);
    assert_int_equal(esim_plist_serialize(d, ESIM_PLIST_BINARY, &b, NULL), ESIM_OK);
    plist_free(d);
    assert_int_equal(esim_plist_parse_dict(b.data, b.len, NULL, &root, &err), ESIM_OK);
    assert_int_equal(plist_array_get_size(plist_dict_get_item(root, "List")), 10000);
    plist_free(root);
    esim_buf_free(&b);
}

/* Hand-made binary plist: object 0 = array holding a reference to itself. */
static void test_binary_cycle_refused(void **state)
{
    (void)state;
    unsigned char b[8 + 2 + 1 + 32] = "bplist00";
    b[8] = 0xA1; /* array of 1 */
    b[9] = 0x00; /* -> object 0: itself */
    b[10] = 8;   /* offset table: object 0 at byte 8 */
    unsigned char *t = b + 11;
    memset(t, 0, 32);
    t[6] = 1;
    t[7] = 1;
    put_be64(t + 8, 1);
    put_be64(t + 16, 0);
    put_be64(t + 24, 10);
    esim_msg m;
    esim_error err = {{0}};
    assert_int_equal(esim_msg_parse(b, sizeof b, NULL, &m, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "cycle"));
}

static void test_service_subscriptions_malformed(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        RESULT("<key>Status</key><string>Acknowledged</string><key>CommandUUID</key><string>u"
               "</string><key>QueryResponses</key><dict><key>ServiceSubscriptions</key><dict/>"
               "</dict>"),
        RESULT("<key>Status</key><string>Acknowledged</string><key>CommandUUID</key><string>u"
               "</string><key>QueryResponses</key><dict><key>ServiceSubscriptions</key><array>"
               "<string>x</string></array></dict>"),
        RESULT("<key>Status</key><string>Acknowledged</string><key>CommandUUID</key><string>u"
               "</string><key>QueryResponses</key><dict><key>ServiceSubscriptions</key><array>"
               "<dict><key>EID</key><integer>5</integer></dict></array></dict>"),
        RESULT("<key>Status</key><string>Acknowledged</string><key>CommandUUID</key><string>u"
               "</string><key>QueryResponses</key><dict><key>ServiceSubscriptions</key><array>"
               "<dict><key>EID</key><string>898821199000000000000000000016540000</string>"
               "</dict></array></dict>"),
        RESULT("<key>Status</key><string>Acknowledged</string><key>CommandUUID</key><string>u"
               "</string><key>QueryResponses</key><dict><key>ServiceSubscriptions</key><array>"
               "<dict><key>IsDataPreferred</key><string>yes</string></dict></array></dict>"),
    };
    for (size_t k = 0; k < sizeof bodies / sizeof bodies[0]; k++) {
        esim_msg m;
        esim_error err = {{0}};
        assert_int_equal(parse_text(bodies[k], &m, &err), ESIM_OK);
        esim_subscription *subs = (esim_subscription *)1;
        size_t n = 7;
        assert_int_equal(esim_msg_service_subscriptions(&m, &subs, &n, &err), ESIM_EINVAL);
        assert_ptr_equal(subs, (esim_subscription *)1);
        assert_int_equal(n, 7);
        assert_true(err.msg[0] != '\0');
        esim_msg_free(&m);
    }
}

/* libplist 2.2 aborts on an assertion when a string it parsed holds a NUL
 * and is later read with plist_get_string_val / plist_dict_next_item; such
 * bodies must be refused before anyone can read them. (Found by fuzzing.) */
static void test_nul_in_strings_refused(void **state)
{
    (void)state;
    plist_t root = plist_new_dict();
    plist_dict_set_item(root, "UDID", plist_new_string("ABC"));
    plist_dict_set_item(root, "Status", plist_new_string("Idle"));
    plist_dict_set_item(root, "KeyQ", plist_new_string("ValueQ"));
    esim_buf clean = {0};
    assert_int_equal(esim_plist_serialize(root, ESIM_PLIST_BINARY, &clean, NULL), ESIM_OK);
    plist_free(root);
    const char *const needles[] = {"KeyQ", "ValueQ"};
    for (size_t k = 0; k < 2; k++) {
        esim_buf b = {0};
        esim_buf_append(&b, clean.data, clean.len);
        unsigned char *hit = memmem(b.data, b.len, needles[k], strlen(needles[k]));
        assert_non_null(hit);
        hit[strlen(needles[k]) - 1] = '\0';
        esim_msg m;
        esim_error err = {{0}};
        assert_int_equal(esim_msg_parse(b.data, b.len, NULL, &m, &err), ESIM_EINVAL);
        assert_non_null(strstr(err.msg, "NUL"));
        esim_buf_free(&b);
    }
    esim_buf_free(&clean);
    const char xml[] = "<plist><dict><key>UDID</key><string>ABC</string><key>Status</key>"
                       "<string>Idle</string><key>X</key><string>a\0b</string></dict></plist>";
    esim_msg m;
    esim_error err = {{0}};
    assert_int_equal(esim_msg_parse(xml, sizeof xml - 1, NULL, &m, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "NUL"));
}

static void test_parse_dict_and_serialize(void **state)
{
    (void)state;
    plist_t root = NULL;
    esim_error err = {{0}};
    const char xml[] = "<plist><dict><key>a</key><integer>1</integer></dict></plist>";
    assert_int_equal(esim_plist_parse_dict(xml, sizeof xml - 1, NULL, &root, &err), ESIM_OK);
    esim_buf bin = {0};
    assert_int_equal(esim_plist_serialize(root, ESIM_PLIST_BINARY, &bin, &err), ESIM_OK);
    plist_t again = NULL;
    assert_int_equal(esim_plist_parse_dict(bin.data, bin.len, NULL, &again, &err), ESIM_OK);
    assert_true(plist_equal(root, again));
    assert_int_equal(esim_plist_serialize(root, (esim_plist_format)3, &bin, &err), ESIM_EINVAL);
    assert_int_equal(esim_plist_serialize(NULL, ESIM_PLIST_XML, &bin, &err), ESIM_EINVAL);
    assert_int_equal(esim_plist_parse_dict(xml, sizeof xml - 1, NULL, NULL, &err), ESIM_EINVAL);
    plist_free(root);
    plist_free(again);
    esim_buf_free(&bin);
}

/* ---- the flat XML fast path ------------------------------------------------------ */

/* What libplist's own reader builds from |xml| (NULL: nothing). */
static plist_t libplist_tree(const char *xml)
{
    plist_t t = NULL;
    plist_from_xml(xml, (uint32_t)strlen(xml), &t);
    return t;
}

static void test_flat_fast_path(void **state)
{
    (void)state;
    /* Taken: the fast path builds exactly libplist's tree. */
    const char *const flat[] = {
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict><key>Status</key>"
        "<string>Idle</string><key>UDID</key><string>BENCH-1</string></dict></plist>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST "
        "1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n"
        "<dict>\n\t<key>CommandUUID</key>\n\t<string>0f8fad5b-d9cb-469f-a165-70867728950e</string>"
        "\n\t<key>Status</key>\n\t<string>Acknowledged</string>\n\t<key>UDID</key>\n\t<string>"
        "00008030-001A2B3C4D5E6F70</string>\n</dict>\n</plist>\n",
        "<plist><dict><key>UDID</key><string> spaced  out </string><key>Empty</key><string/>"
        "<key>Yes</key><true/><key>No</key><false/><key>Status</key><string>Idle</string>"
        "<key>Q</key><string>\"quoted\" 'single' / ? ! = ;</string></dict></plist>",
        "<plist><dict></dict></plist>",
        /* TokenUpdate's Token as libplist writes data (one pad), and the
         * other paddings, line breaks and tabs inside. */
        "<plist><dict><key>Token</key><data>\n\tq83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k=\n\t"
        "</data><key>PushMagic</key><string>m</string></dict></plist>",
        "<plist><dict><key>A</key><data>AA==</data><key>B</key><data>AAE=</data>"
        "<key>C</key><data>AAEC</data><key>D</key><data> QU JD\nRA == </data>"
        "<key>E</key><data>/+/+</data></dict></plist>",
        "<plist><dict><key>Status</key><string>Idle</string><key>N</key><integer>7</integer>"
        "<key>Z</key><integer>0</integer><key>M</key><integer>999999999999999999</integer>"
        "</dict></plist>",
        /* Nested, as commands and profiles come: dicts, arrays of dicts,
         * empty containers written open and closed, integers. */
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">\n<dict>\n"
        "\t<key>Command</key>\n\t<dict>\n\t\t<key>RequestType</key>\n\t\t<string>"
        "DeviceInformation</string>\n\t\t<key>Queries</key>\n\t\t<array>\n\t\t\t<string>"
        "UDID</string>\n\t\t\t<string>EID</string>\n\t\t</array>\n\t</dict>\n\t<key>"
        "CommandUUID</key>\n\t<string>c-1</string>\n</dict>\n</plist>\n",
        "<plist><dict><key>PayloadContent</key><array><dict><key>PayloadType</key><string>x"
        "</string><key>PayloadVersion</key><integer>1</integer><key>Inner</key><dict><key>A"
        "</key><array><true/><false/><string/><array></array></array></dict></dict><dict>"
        "</dict></array><key>PayloadVersion</key><integer>1</integer></dict></plist>",
        /* Seven containers deep below the top dict: the fast path's limit. */
        "<plist><dict><key>a</key><array><array><array><array><array><array><array>"
        "<string>deep</string></array></array></array></array></array></array></array>"
        "</dict></plist>",
    };
    for (size_t k = 0; k < sizeof flat / sizeof flat[0]; k++) {
        plist_t fast = plist_xml_flat_dict(flat[k], strlen(flat[k]));
        plist_t slow = libplist_tree(flat[k]);
        assert_non_null(fast);
        assert_non_null(slow);
        assert_true(plist_equal(fast, slow));
        plist_free(fast);
        plist_free(slow);
    }
    esim_msg m;
    esim_error err = {{0}};
    assert_int_equal(parse_text(flat[1], &m, &err), ESIM_OK);
    assert_int_equal(m.status, ESIM_STATUS_ACKNOWLEDGED);
    assert_string_equal(m.udid, "00008030-001A2B3C4D5E6F70");
    assert_string_equal(m.command_uuid, "0f8fad5b-d9cb-469f-a165-70867728950e");
    esim_msg_free(&m);

    /* Left to the general path, which decides as before. */
    static const struct {
        const char *xml;
        esim_err rc;
    } general[] = {
        {RESULT("<key>Status</key><string>Idle</string><key>N</key><string>a&amp;b</string>"),
         ESIM_OK},
        {RESULT("<key>Status</key><string>Idle</string><key>N</key><string>caf\xc3\xa9</string>"),
         ESIM_OK},
        {RESULT("<key>Status</key><string>Idle</string><key>N</key><dict/>"), ESIM_OK},
        {RESULT("<key>Status</key><string>Idle</string><!-- c --><key>N</key><string>x</string>"),
         ESIM_OK},
        {RESULT("<key>Status</key><string><![CDATA[Idle]]></string>"), ESIM_OK},
        {RESULT("<key>Status</key><string>Idle</string><key>N</key><string>a\tb</string>"),
         ESIM_OK},
        {RESULT("<key>Status</key><string>Idle</string><key>UDID</key><string>X</string>"),
         ESIM_EINVAL},
        {RESULT("<key>Status</key><string>Idle</string><key></key><string>x</string>"), ESIM_OK},
        {"<?xml version=\"1.0\x01\"?><plist><dict><key>UDID</key><string>A</string><key>Status"
         "</key><string>Idle</string></dict></plist>",
         ESIM_OK},
    };
    for (size_t k = 0; k < sizeof general / sizeof general[0]; k++) {
        const char *xml = general[k].xml;
        assert_null(plist_xml_flat_dict(xml, strlen(xml)));
        esim_error e = {{0}};
        esim_err rc = parse_text(xml, &m, &e);
        if (rc == ESIM_OK)
            esim_msg_free(&m);
        assert_int_equal(rc, general[k].rc);
    }
    /* Not flat, whatever the general path makes of them. */
    const char *const odd[] = {
        "<plist version=\">\"><dict><key>UDID</key><string>A</string></dict></plist>",
        "<plist><dict><key>UDID</key><string>A</string></dict></plist>x",
        "<plist><dict><key>UDID</key><string>A>B</string></dict></plist>",
        "<plist><dict><key>UDID</key><string>A</string></dict>",
        "<plist><dict><key>UDID</key></dict></plist>",
        "<plist><dict><key>UDID</key><true></true></dict></plist>",
        "<plist/>",
        "<!DOCTYPE plist [<!ENTITY x \"y\">]><plist><dict></dict></plist>",
        "\xef\xbb\xbf<plist><dict></dict></plist>",
        /* libplist skips quoted text in markup: an unclosed quote hides the
         * rest of the declaration from it (a fuzzing find). */
        "<?xml version=*1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST "
        "1.0//EN\" \"x\">\n<plist version=\"1.0\"><dict><key>UDID</key><string>A</string></dict>"
        "</plist>",
        "<?xml version=\"1.0?>\"?><plist><dict></dict></plist>",
        "<plist version=\"1.0>\"><dict></dict></plist>",
        /* Each character a run of markup refuses (plist_parse.c's FLAT_*). */
        "<?xml version=\"1.0\"<?><plist><dict></dict></plist>",
        "<!DOCTYPE plist 'x'><plist><dict></dict></plist>",
        "<plist version='1.0'><dict></dict></plist>",
        "<plist version=\"1/0\"><dict></dict></plist>",
        "<plist version=\"1.0\" x=\"<\"><dict></dict></plist>",
        /* <data> the fast path leaves to libplist: empty, self-closed, not
         * whole quanta, a pad inside or too many, other characters. */
        "<plist><dict><key>T</key><data></data></dict></plist>",
        "<plist><dict><key>T</key><data/></dict></plist>",
        "<plist><dict><key>T</key><data>AAE</data></dict></plist>",
        "<plist><dict><key>T</key><data>AA=A</data></dict></plist>",
        "<plist><dict><key>T</key><data>AA==AAAA</data></dict></plist>",
        "<plist><dict><key>T</key><data>A===</data></dict></plist>",
        "<plist><dict><key>T</key><data>====</data></dict></plist>",
        "<plist><dict><key>T</key><data>AA-_</data></dict></plist>",
        "<plist><dict><key>T</key><data>AA\rAA</data></dict></plist>",
        "<plist><dict><key>T</key><data>AA&#65;A</data></dict></plist>",
        /* Integers other than plain decimal below 10^18 (libplist reads a
         * leading 0 as octal), containers written self-closed, a key
         * repeated inside a nested dict, deeper than the fast path goes. */
        "<plist><dict><key>N</key><integer>07</integer></dict></plist>",
        "<plist><dict><key>N</key><integer>-1</integer></dict></plist>",
        "<plist><dict><key>N</key><integer>+1</integer></dict></plist>",
        "<plist><dict><key>N</key><integer> 1</integer></dict></plist>",
        "<plist><dict><key>N</key><integer>0x10</integer></dict></plist>",
        "<plist><dict><key>N</key><integer></integer></dict></plist>",
        "<plist><dict><key>N</key><integer>1000000000000000000</integer></dict></plist>",
        "<plist><dict><key>N</key><real>1.5</real></dict></plist>",
        "<plist><dict><key>N</key><array/></dict></plist>",
        "<plist><dict><key>N</key><dict/></dict></plist>",
        "<plist><dict><key>N</key><dict><key>a</key><true/><key>a</key><true/></dict></dict>"
        "</plist>",
        "<plist><dict><key>N</key><array><key>a</key></array></dict></plist>",
        "<plist><dict><key>N</key><array><string>a</string></dict></plist>",
        "<plist><dict><key>a</key><array><array><array><array><array><array><array><array>"
        "<string>deep</string></array></array></array></array></array></array></array></array>"
        "</dict></plist>",
    };
    for (size_t k = 0; k < sizeof odd / sizeof odd[0]; k++)
        assert_null(plist_xml_flat_dict(odd[k], strlen(odd[k])));
    /* A nesting limit below the fast path's: deeper bodies go to the
     * general path, which refuses them as before. */
    const char *three = "<plist><dict><key>a</key><array><dict><key>b</key><string>c</string>"
                        "</dict></array></dict></plist>";
    plist_t t3 = plist_xml_flat_read(three, strlen(three), 3);
    assert_non_null(t3);
    plist_free(t3);
    assert_null(plist_xml_flat_read(three, strlen(three), 2));
    const esim_parse_limits two = {.max_depth = 2};
    plist_t root = NULL;
    esim_error e2 = {{0}};
    assert_int_equal(esim_plist_parse_dict(three, strlen(three), &two, &root, &e2), ESIM_ETOOBIG);
    assert_null(root);
    /* Data longer than a string's room, in lines as libplist writes it. */
    char big[4096] = "<plist><dict><key>Payload</key><data>\n";
    for (int k = 0; k < 40; k++)
        strcat(big, "\tAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v\n");
    strcat(big, "\tMDEy\n</data></dict></plist>");
    plist_t bf = plist_xml_flat_dict(big, strlen(big)), bs = libplist_tree(big);
    assert_non_null(bf);
    assert_non_null(bs);
    assert_true(plist_equal(bf, bs));
    uint64_t blen = 0;
    plist_get_data_ptr(plist_dict_get_item(bf, "Payload"), &blen);
    assert_int_equal(blen, 40 * 48 + 3);
    plist_free(bf);
    plist_free(bs);
    /* A NUL the general path refuses is no text for the fast path either. */
    const char nul[] = "<plist><dict><key>UDID</key><string>A\0B</string></dict></plist>";
    assert_null(plist_xml_flat_dict(nul, sizeof nul - 1));
}

/* A result without extra keys or an ErrorChain is written directly: the
 * same bytes as libplist's XML of the same dictionary, for plain values
 * and for a CommandUUID that needs escaping (libplist's path then). */
static void test_result_written_as_libplist_does(void **state)
{
    (void)state;
    const char *udid = "00008030-001A2B3C4D5E6F70";
    static const struct {
        esim_status st;
        const char *uuid;
    } cases[] = {
        {ESIM_STATUS_IDLE, NULL},
        {ESIM_STATUS_IDLE, ""},
        {ESIM_STATUS_ACKNOWLEDGED, "0f8fad5b-d9cb-469f-a165-70867728950e"},
        {ESIM_STATUS_NOT_NOW, "c 'quoted' \"x\" ~"},
        {ESIM_STATUS_ERROR, "a&b<c>d"},
        {ESIM_STATUS_ACKNOWLEDGED, "caf\xc3\xa9"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        esim_buf got = {0}, want = {0};
        esim_error err = {{0}};
        assert_int_equal(esim_msg_build_result(udid, cases[k].st, cases[k].uuid, NULL, 0, NULL,
                                               ESIM_PLIST_XML, &got, &err),
                         ESIM_OK);
        plist_t d = plist_new_dict();
        plist_dict_set_item(d, "UDID", plist_new_string(udid));
        plist_dict_set_item(d, "Status", plist_new_string(esim_status_name(cases[k].st)));
        if (cases[k].uuid && cases[k].uuid[0])
            plist_dict_set_item(d, "CommandUUID", plist_new_string(cases[k].uuid));
        assert_int_equal(esim_plist_serialize(d, ESIM_PLIST_XML, &want, NULL), ESIM_OK);
        plist_free(d);
        assert_int_equal(got.len, want.len);
        assert_memory_equal(got.data, want.data, got.len);
        /* And it reads back as the result it is. */
        esim_msg m;
        assert_int_equal(esim_msg_parse(got.data, got.len, NULL, &m, &err), ESIM_OK);
        assert_int_equal(m.status, cases[k].st);
        assert_string_equal(m.udid, udid);
        esim_msg_free(&m);
        esim_buf_free(&got);
        esim_buf_free(&want);
    }
}

/* Authenticate is written directly too when every value is plain: the
 * bytes libplist's XML of the same dictionary has (keys in the builder's
 * order, a missing value left out), and libplist's own path when a value
 * needs escaping. */
static void test_authenticate_written_as_libplist_does(void **state)
{
    (void)state;
    const char *names[] = {"Simulated iPhone", "Bob's \"phone\"", "R&D <lab>", "caf\xc3\xa9"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        esim_authenticate_info info = {.udid = "00008030-001A2B3C4D5E6F70",
                                       .topic = "com.apple.mgmt.External.x",
                                       .os_version = "17.5",
                                       .build_version = "22B83",
                                       .product_name = "iPhone15,2",
                                       .serial_number = "F2LXXXX",
                                       .imei = k == 1 ? NULL : "35 332011 000000 1",
                                       .device_name = names[k],
                                       .model = "MTUW3LL/A"};
        esim_buf got = {0}, want = {0};
        assert_int_equal(esim_msg_build_authenticate(&info, &got, NULL), ESIM_OK);
        const char *keys[] = {"MessageType",  "UDID",        "Topic",        "OSVersion",
                              "BuildVersion", "ProductName", "SerialNumber", "IMEI",
                              "MEID",         "DeviceName",  "Model"};
        const char *vals[] = {"Authenticate",     info.udid,          info.topic,
                              info.os_version,    info.build_version, info.product_name,
                              info.serial_number, info.imei,          info.meid,
                              info.device_name,   info.model};
        plist_t d = plist_new_dict();
        for (size_t f = 0; f < sizeof keys / sizeof keys[0]; f++)
            if (vals[f])
                plist_dict_set_item(d, keys[f], plist_new_string(vals[f]));
        assert_int_equal(esim_plist_serialize(d, ESIM_PLIST_XML, &want, NULL), ESIM_OK);
        plist_free(d);
        assert_int_equal(got.len, want.len);
        assert_memory_equal(got.data, want.data, got.len);
        esim_msg m;
        assert_int_equal(esim_msg_parse(got.data, got.len, NULL, &m, NULL), ESIM_OK);
        assert_int_equal(m.kind, ESIM_MSG_AUTHENTICATE);
        esim_msg_free(&m);
        esim_buf_free(&got);
        esim_buf_free(&want);
    }
}

/* TokenUpdate written directly: for every token length the builder
 * takes (1 to 100 bytes: one to three lines of base64), the bytes
 * libplist's XML of the same dictionary has; libplist's path for a
 * PushMagic that needs escaping. */
static void test_token_update_written_as_libplist_does(void **state)
{
    (void)state;
    unsigned char tok[100];
    for (size_t i = 0; i < sizeof tok; i++)
        tok[i] = (unsigned char)(i * 7 + 3);
    for (size_t n = 1; n <= sizeof tok + 1; n++) {
        const char *magic = n == sizeof tok + 1 ? "a&b" : "0F1E2D3C-magic";
        size_t len = n > sizeof tok ? sizeof tok : n;
        esim_buf got = {0}, want = {0};
        assert_int_equal(esim_msg_build_token_update("00008030-001A2B3C4D5E6F70",
                                                     "com.apple.mgmt.External.x", tok, len, magic,
                                                     &got, NULL),
                         ESIM_OK);
        plist_t d = plist_new_dict();
        plist_dict_set_item(d, "MessageType", plist_new_string("TokenUpdate"));
        plist_dict_set_item(d, "UDID", plist_new_string("00008030-001A2B3C4D5E6F70"));
        plist_dict_set_item(d, "Topic", plist_new_string("com.apple.mgmt.External.x"));
        plist_dict_set_item(d, "Token", plist_new_data((const char *)tok, len));
        plist_dict_set_item(d, "PushMagic", plist_new_string(magic));
        assert_int_equal(esim_plist_serialize(d, ESIM_PLIST_XML, &want, NULL), ESIM_OK);
        plist_free(d);
        assert_int_equal(got.len, want.len);
        assert_memory_equal(got.data, want.data, got.len);
        esim_buf_free(&got);
        esim_buf_free(&want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_authenticate_round_trip),
        cmocka_unit_test(test_token_update_and_checkout_round_trip),
        cmocka_unit_test(test_token_update_optional_keys),
        cmocka_unit_test(test_result_round_trip_xml),
        cmocka_unit_test(test_result_round_trip_binary),
        cmocka_unit_test(test_every_status_round_trips),
        cmocka_unit_test(test_builder_refusals),
        cmocka_unit_test(test_refusals_with_reasons),
        cmocka_unit_test(test_field_too_long_refused_not_truncated),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_depth_limit_xml),
        cmocka_unit_test(test_depth_limit_binary),
        cmocka_unit_test(test_hostile_binary_trailers),
        cmocka_unit_test(test_binary_cycle_refused),
        cmocka_unit_test(test_binary_expansion_bomb_refused),
        cmocka_unit_test(test_binary_deep_chain_refused_before_parsing),
        cmocka_unit_test(test_service_subscriptions_malformed),
        cmocka_unit_test(test_nul_in_strings_refused),
        cmocka_unit_test(test_parse_dict_and_serialize),
        cmocka_unit_test(test_depth_scan_not_fooled_by_markup),
        cmocka_unit_test(test_depth_ceiling_holds),
        cmocka_unit_test(test_duplicate_keys_refused),
        cmocka_unit_test(test_flat_fast_path),
        cmocka_unit_test(test_result_written_as_libplist_does),
        cmocka_unit_test(test_authenticate_written_as_libplist_does),
        cmocka_unit_test(test_token_update_written_as_libplist_does),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
