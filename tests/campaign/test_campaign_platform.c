/*
 * test_campaign_platform.c — the platform seam (campaign/platform.h) and its
 * Apple adapter: every platform-neutral step becomes the MDM command it
 * stands for (one command shared by a batch, under the identifier given),
 * and answers are read back: status, the error chain (36003 is "busy", known
 * codes get a sentence), the eSIMs a verification reports, IsSupervised and
 * OSVersion; an answer that is not an MDM result is refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "campaign/platform.h"

#define UDID "00008110-000A1B2C3D4E5F60"
#define EID "89049032000000000000000000000001"
#define ICCID "8944000000000000019"
#define UUID "6C1B1F4E-0D43-4A5A-9A39-2A4A1F0A9E11"

static campaign_spec make_spec(void)
{
    campaign_spec spec = {0};
    campaign_settings_init(&spec.settings);
    for (int s = 0; s < CAMPAIGN_STEP_COUNT; s++)
        spec.steps[s] = true;
    spec.policy.allow_esim_modification = ESIM_TRI_FALSE;
    spec.smdp_url = "https://smdp.example.com";
    return spec;
}

static void test_registry(void **state)
{
    (void)state;
    assert_ptr_equal(campaign_platform_get(CAMPAIGN_PLATFORM_APPLE), &campaign_platform_apple);
    assert_null(campaign_platform_get(CAMPAIGN_PLATFORM_COUNT));
    assert_string_equal(campaign_platform_apple.name, "apple");
    assert_false(campaign_platform_apple.per_device_commands);
    assert_int_equal(campaign_platform_named(""), CAMPAIGN_PLATFORM_APPLE);
    assert_int_equal(campaign_platform_named(NULL), CAMPAIGN_PLATFORM_APPLE);
    assert_int_equal(campaign_platform_named("apple"), CAMPAIGN_PLATFORM_APPLE);
    assert_int_equal(campaign_platform_named("windows"), CAMPAIGN_PLATFORM_WINDOWS);
    assert_int_equal(campaign_platform_named("iot"), CAMPAIGN_PLATFORM_IOT);
    assert_ptr_equal(campaign_platform_get(CAMPAIGN_PLATFORM_WINDOWS), &campaign_platform_windows);
    assert_true(campaign_platform_windows.per_device_commands);
}

#define WEID "89049032000000000000000000000163" /* with its check digits */

/* A Windows verification answer: the items of the Get, as the service
 * hands them to result hooks. */
static campaign_reading windows_verify(const char *state, const char *detail, int state_code)
{
    esim_syncml_status items[3] = {
        {UUID ".1", "Get", "./Device/Vendor/MSFT/eUICCs/" WEID "/Profiles", 200, "", ICCID},
        {UUID ".2", "Get", "./Device/Vendor/MSFT/eUICCs/" WEID "/Profiles/" ICCID "/State",
         state_code, "", state},
        {UUID ".3", "Get", "./Device/Vendor/MSFT/eUICCs/" WEID "/Profiles/" ICCID "/ErrorDetail",
         200, "", detail},
    };
    esim_service_result r = {.udid = UDID,
                             .command_uuid = UUID,
                             .status = "Acknowledged",
                             .platform = "windows",
                             .syncml = items,
                             .n_syncml = 3};
    campaign_reading rd;
    assert_int_equal(campaign_platform_windows.read(CAMPAIGN_STEP_VERIFY, &r, &rd), ESIM_OK);
    return rd;
}

/* The one verdict on a State and a DiscoveryState read together: what the
 * verification (win_read: 0 for a node not read) and the diagnosis's
 * words (syncml_words: -1 for one not read) both go by. */
static void test_windows_verdict(void **state)
{
    (void)state;
    static const struct {
        long st, ds;
        campaign_windows_verdict v;
    } cases[] = {
        {2, 0, CAMPAIGN_WINDOWS_SETTLED},
        {2, 4, CAMPAIGN_WINDOWS_SETTLED}, /* installed: a failed discovery does not matter */
        {2, 1, CAMPAIGN_WINDOWS_SETTLED},
        {0, 0, CAMPAIGN_WINDOWS_SETTLED},
        {-1, -1, CAMPAIGN_WINDOWS_SETTLED},
        {-1, 3, CAMPAIGN_WINDOWS_SETTLED},
        {1, 0, CAMPAIGN_WINDOWS_BUSY},
        {3, -1, CAMPAIGN_WINDOWS_BUSY},
        {1, 4, CAMPAIGN_WINDOWS_BUSY}, /* installing: later, whatever discovery said */
        {0, 1, CAMPAIGN_WINDOWS_BUSY},
        {-1, 2, CAMPAIGN_WINDOWS_BUSY},
        {4, 0, CAMPAIGN_WINDOWS_PROFILE_ERROR},
        {4, 4, CAMPAIGN_WINDOWS_PROFILE_ERROR},
        {4, 2, CAMPAIGN_WINDOWS_PROFILE_ERROR},
        {0, 4, CAMPAIGN_WINDOWS_DISCOVERY_FAILED},
        {-1, 4, CAMPAIGN_WINDOWS_DISCOVERY_FAILED},
        {5, 4, CAMPAIGN_WINDOWS_DISCOVERY_FAILED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (campaign_windows_verdict_of(cases[i].st, cases[i].ds) != cases[i].v)
            fail_msg("State %ld, DiscoveryState %ld: verdict %d, wanted %d", cases[i].st,
                     cases[i].ds, (int)campaign_windows_verdict_of(cases[i].st, cases[i].ds),
                     (int)cases[i].v);
    }
}

/* The ErrorDetail names the verification's words and the service's own
 * verification both use (service.h). */
static void test_windows_error_detail_names(void **state)
{
    (void)state;
    assert_string_equal(esim_windows_error_detail_name(0), "None");
    assert_string_equal(esim_windows_error_detail_name(6), "InvalidMatchingId");
    assert_string_equal(esim_windows_error_detail_name(12), "ProfileNotReleasedByOperator");
    assert_string_equal(esim_windows_error_detail_name(14), "RemoteServerUnreachable");
    assert_string_equal(esim_windows_error_detail_name(2),
                        "Unknown"); /* a gap in the CSP's codes */
    assert_string_equal(esim_windows_error_detail_name(15), "Unknown");
    assert_string_equal(esim_windows_error_detail_name(-1), "Unknown");
}

static void test_windows_steps_and_answers(void **state)
{
    (void)state;
    const campaign_platform *pl = &campaign_platform_windows;
    campaign_spec spec = make_spec();
    spec.smdp_url = "https://smdp.example.com:8443/x";
    void *ctx = NULL;
    esim_error err;
    assert_int_equal(pl->prepare(&spec, &ctx, &err), ESIM_OK);
    campaign_order o = {.step = CAMPAIGN_STEP_REFRESH, .eid = WEID, .iccid = ICCID};
    campaign_command cmd = {0};
    assert_int_equal(pl->build(ctx, &o, UUID, &cmd, &err), ESIM_OK);
    assert_non_null(strstr((const char *)cmd.body.data,
                           "eUICCs/" WEID "/DownloadServers/smdp.example.com:8443/AutoEnable"));
    assert_non_null(strstr((const char *)cmd.body.data, "<CmdID>" UUID ".2</CmdID>"));
    campaign_command_free(&cmd);
    o.step = CAMPAIGN_STEP_VERIFY;
    assert_int_equal(pl->build(ctx, &o, UUID, &cmd, &err), ESIM_OK);
    assert_non_null(strstr((const char *)cmd.body.data, "Profiles/" ICCID "/State"));
    campaign_command_free(&cmd);
    o.step = CAMPAIGN_STEP_ERASE_KEEP;
    assert_int_equal(pl->build(ctx, &o, UUID, &cmd, &err), ESIM_EINVAL);
    o.step = CAMPAIGN_STEP_REFRESH;
    o.eid = "";
    assert_int_equal(pl->build(ctx, &o, UUID, &cmd, &err), ESIM_EINVAL);
    pl->release(ctx);

    /* Installed: the pair the engine verifies. */
    campaign_reading rd = windows_verify("2", "0", 200);
    assert_int_equal(rd.result.status, ESIM_STATUS_ACKNOWLEDGED);
    assert_int_equal(rd.result.n_subs, 1);
    assert_string_equal(rd.result.subs[0].eid, WEID);
    assert_string_equal(rd.result.subs[0].iccid, ICCID);
    campaign_reading_free(&rd);
    /* Still installing: busy, later. */
    rd = windows_verify("1", "0", 200);
    assert_true(rd.result.busy);
    campaign_reading_free(&rd);
    /* Failed, in words. */
    rd = windows_verify("4", "12", 200);
    assert_int_equal(rd.result.status, ESIM_STATUS_ERROR);
    assert_false(rd.result.busy);
    assert_non_null(strstr(rd.result.error_text, "ProfileNotReleasedByOperator"));
    campaign_reading_free(&rd);
    /* Not there at all: no eSIM to verify. */
    rd = windows_verify("", "", 404);
    assert_int_equal(rd.result.n_subs, 0);
    campaign_reading_free(&rd);
    /* An Apple answer is not a Windows one. */
    esim_service_result apple = {
        .udid = UDID, .command_uuid = UUID, .status = "Acknowledged", .platform = "apple"};
    assert_int_equal(pl->read(CAMPAIGN_STEP_VERIFY, &apple, &rd), ESIM_EINVAL);
}

static void test_apple_steps_become_commands(void **state)
{
    (void)state;
    const campaign_platform *pl = &campaign_platform_apple;
    campaign_spec spec = make_spec();
    void *ctx = NULL;
    assert_int_equal(pl->prepare(&spec, &ctx, NULL), ESIM_OK);
    assert_true(pl->memory(ctx) > 0);
    static const char *const want[CAMPAIGN_STEP_COUNT] = {"InstallProfile", "RefreshCellularPlans",
                                                          "DeviceInformation", "EraseDevice",
                                                          "EraseDevice"};
    for (int s = 0; s < CAMPAIGN_STEP_COUNT; s++) {
        campaign_order o = {
            .step = (campaign_step)s, .policy = &spec.policy, .smdp_url = spec.smdp_url};
        campaign_command cmd = {0};
        assert_int_equal(pl->build(ctx, &o, s == 1 ? UUID : NULL, &cmd, NULL), ESIM_OK);
        assert_string_equal(cmd.kind, want[s]);
        esim_cmd_parsed p = {0};
        assert_int_equal(esim_cmd_parse(cmd.body.data, cmd.body.len, NULL, &p, NULL), ESIM_OK);
        assert_string_equal(p.request_type, want[s]);
        assert_string_equal(p.command_uuid, cmd.uuid);
        if (s == CAMPAIGN_STEP_REFRESH) {
            assert_string_equal(cmd.uuid, UUID);
            char *url = NULL;
            plist_get_string_val(plist_dict_get_item(p.command, "eSIMServerURL"), &url);
            assert_string_equal(url, "https://smdp.example.com");
            free(url);
        }
        if (s == CAMPAIGN_STEP_ERASE_KEEP || s == CAMPAIGN_STEP_ESIM_WIPE) {
            plist_t keep = plist_dict_get_item(p.command, "PreserveDataPlan");
            uint8_t b = 0;
            if (keep)
                plist_get_bool_val(keep, &b);
            assert_int_equal(b, s == CAMPAIGN_STEP_ERASE_KEEP);
        }
        esim_cmd_parsed_free(&p);
        campaign_command_free(&cmd);
        assert_null(cmd.body.data);
    }
    campaign_order bad = {.step = CAMPAIGN_STEP_COUNT};
    campaign_command cmd = {0};
    esim_error e = {{0}};
    assert_int_equal(pl->build(ctx, &bad, NULL, &cmd, &e), ESIM_EINVAL);
    assert_null(cmd.body.data);
    pl->release(ctx);
}

/* A result as a device sends it, parsed as the service hands it over. */
static void read_answer(campaign_step step, esim_status st, const esim_error_chain_entry *chain,
                        size_t n_chain, plist_t extra, campaign_reading *out)
{
    esim_buf body = {0};
    esim_error e = {{0}};
    if (esim_msg_build_result(UDID, st, UUID, chain, n_chain, extra, ESIM_PLIST_XML, &body, &e) !=
        ESIM_OK)
        fail_msg("result: %s", e.msg);
    esim_msg m = {0};
    assert_int_equal(esim_msg_parse(body.data, body.len, NULL, &m, NULL), ESIM_OK);
    esim_service_result r = {.udid = UDID,
                             .command_uuid = UUID,
                             .status = esim_status_name(st),
                             .msg = &m,
                             .platform = "apple"};
    assert_int_equal(campaign_platform_apple.read(step, &r, out), ESIM_OK);
    /* Everything the reading holds is its own: the message may go. */
    esim_msg_free(&m);
    esim_buf_free(&body);
}

static void test_apple_reads_answers(void **state)
{
    (void)state;
    campaign_reading rd;

    /* Busy: retried, with the device's words and ours. */
    esim_error_chain_entry busy = {.code = 36003, .domain = "CTCellularPlanErrorDomain"};
    snprintf(busy.us_english_description, sizeof busy.us_english_description, "Plan busy");
    read_answer(CAMPAIGN_STEP_REFRESH, ESIM_STATUS_ERROR, &busy, 1, NULL, &rd);
    assert_int_equal(rd.result.status, ESIM_STATUS_ERROR);
    assert_int_equal(rd.result.error_code, 36003);
    assert_true(rd.result.busy);
    assert_non_null(strstr(rd.result.error_text, "Plan busy"));
    assert_non_null(strstr(rd.result.error_text, "cellular stack is busy"));
    campaign_reading_free(&rd);

    /* A known final error without a description gets ours. */
    esim_error_chain_entry hw = {.code = 36002, .domain = "CTCellularPlanErrorDomain"};
    read_answer(CAMPAIGN_STEP_REFRESH, ESIM_STATUS_ERROR, &hw, 1, NULL, &rd);
    assert_false(rd.result.busy);
    assert_string_equal(rd.result.error_text, "the device's hardware does not support eSIM");
    campaign_reading_free(&rd);

    /* An unknown code without words: no text, the engine says so. */
    esim_error_chain_entry odd = {.code = 99, .domain = "MCMDMErrorDomain"};
    read_answer(CAMPAIGN_STEP_REFRESH, ESIM_STATUS_ERROR, &odd, 1, NULL, &rd);
    assert_null(rd.result.error_text);
    campaign_reading_free(&rd);

    /* A chain: every entry's words (the SM-DP+'s refusal after a generic
     * first entry, as the device simulator answers), not 36001's gloss. */
    esim_error_chain_entry chain[2] = {{.code = 36001, .domain = "CTCellularPlanErrorDomain"},
                                       {.code = 1, .domain = "SGP22.ES9Plus.8.2.3.7"}};
    snprintf(chain[0].us_english_description, sizeof chain[0].us_english_description,
             "The cellular plan could not be installed.");
    snprintf(chain[1].localized_description, sizeof chain[1].localized_description,
             "profile already downloaded");
    read_answer(CAMPAIGN_STEP_REFRESH, ESIM_STATUS_ERROR, chain, 2, NULL, &rd);
    assert_int_equal(rd.result.error_code, 36001);
    assert_string_equal(rd.result.error_text, "The cellular plan could not be installed. — "
                                              "SGP22.ES9Plus.8.2.3.7: profile already downloaded");
    campaign_reading_free(&rd);

    /* Verification: the subscriptions and the facts. */
    plist_t qr = plist_new_dict(), subs = plist_new_array(), s1 = plist_new_dict();
    plist_dict_set_item(s1, "EID", plist_new_string(WEID));
    plist_dict_set_item(s1, "ICCID", plist_new_string(ICCID));
    plist_array_append_item(subs, s1);
    plist_dict_set_item(qr, "ServiceSubscriptions", subs);
    plist_dict_set_item(qr, "IsSupervised", plist_new_bool(1));
    plist_dict_set_item(qr, "OSVersion", plist_new_string("17.4"));
    plist_t extra = plist_new_dict();
    plist_dict_set_item(extra, "QueryResponses", qr);
    read_answer(CAMPAIGN_STEP_VERIFY, ESIM_STATUS_ACKNOWLEDGED, NULL, 0, extra, &rd);
    assert_int_equal(rd.result.status, ESIM_STATUS_ACKNOWLEDGED);
    assert_int_equal(rd.result.n_subs, 1);
    assert_ptr_equal(rd.result.subs, rd.subs);
    assert_true(campaign_subscriptions_match(rd.result.subs, rd.result.n_subs, WEID, ICCID));
    assert_int_equal(rd.supervised, 1);
    assert_string_equal(rd.os_version, "17.4");
    campaign_reading_free(&rd);

    /* The same answer to no campaign's command: facts only. */
    read_answer(CAMPAIGN_STEP_COUNT, ESIM_STATUS_ACKNOWLEDGED, NULL, 0, extra, &rd);
    assert_int_equal(rd.result.n_subs, 0);
    assert_int_equal(rd.supervised, 1);
    campaign_reading_free(&rd);
    plist_free(extra);

    /* NotNow: no facts, no error. */
    read_answer(CAMPAIGN_STEP_VERIFY, ESIM_STATUS_NOT_NOW, NULL, 0, NULL, &rd);
    assert_int_equal(rd.result.status, ESIM_STATUS_NOT_NOW);
    assert_int_equal(rd.supervised, -1);
    assert_int_equal(rd.result.error_code, 0);
    campaign_reading_free(&rd);

    /* Not an MDM answer at all. */
    esim_service_result none = {.udid = UDID, .command_uuid = UUID, .status = "Acknowledged"};
    assert_int_equal(campaign_platform_apple.read(CAMPAIGN_STEP_VERIFY, &none, &rd), ESIM_EINVAL);
}

/* What the service records with a Windows PC's answer (service/omadm.c)
 * reads as the live answer does: an instance that did not receive it
 * replays it from the store. */
static void test_windows_recorded_answers(void **state)
{
    (void)state;
    const campaign_platform *pl = &campaign_platform_windows;
    store_queue_entry q = {.udid = UDID, .command_uuid = UUID, .state = STORE_Q_ACKNOWLEDGED};
    char json[1200];
    snprintf(json, sizeof json,
             "{\"syncml\":[{\"cmd_ref\":\"%s.1\",\"cmd\":\"Get\",\"target\":"
             "\"./Device/Vendor/MSFT/eUICCs/%s/Profiles\",\"code\":200,\"data\":\"%s\"},"
             "{\"cmd_ref\":\"%s.2\",\"cmd\":\"Get\",\"target\":"
             "\"./Device/Vendor/MSFT/eUICCs/%s/Profiles/%s/State\",\"code\":200,\"data\":"
             "\"%s\"}]}",
             UUID, WEID, ICCID, UUID, WEID, ICCID, "2");
    q.error_chain_json = json;
    campaign_reading rd;
    assert_int_equal(pl->read_recorded(NULL, CAMPAIGN_STEP_VERIFY, &q, &rd), ESIM_OK);
    assert_int_equal(rd.result.status, ESIM_STATUS_ACKNOWLEDGED);
    assert_int_equal(rd.result.n_subs, 1);
    assert_string_equal(rd.result.subs[0].eid, WEID);
    assert_string_equal(rd.result.subs[0].iccid, ICCID);
    campaign_reading_free(&rd);
    /* An Add refused, with its HRESULT, as an error in words. */
    snprintf(json, sizeof json,
             "{\"syncml\":[{\"cmd_ref\":\"%s.2\",\"cmd\":\"Add\",\"target\":"
             "\"./Device/Vendor/MSFT/eUICCs/%s/DownloadServers/x\",\"code\":405,"
             "\"hresult\":\"0x86000002\"}]}",
             UUID, WEID);
    q.state = STORE_Q_ERROR;
    assert_int_equal(pl->read_recorded(NULL, CAMPAIGN_STEP_REFRESH, &q, &rd), ESIM_OK);
    assert_int_equal(rd.result.status, ESIM_STATUS_ERROR);
    assert_int_equal(rd.result.error_code, 405);
    assert_non_null(strstr(rd.result.error_text, "0x86000002"));
    campaign_reading_free(&rd);
    /* Nothing recorded that Windows reads. */
    q.error_chain_json = NULL;
    assert_int_equal(pl->read_recorded(NULL, CAMPAIGN_STEP_VERIFY, &q, &rd), ESIM_ENOTFOUND);
    snprintf(json, sizeof json, "[{\"code\":36003}]");
    q.error_chain_json = json;
    assert_int_equal(pl->read_recorded(NULL, CAMPAIGN_STEP_VERIFY, &q, &rd), ESIM_ENOTFOUND);
    /* Apple's recorded answer is the plist: none here. */
    assert_int_equal(campaign_platform_apple.read_recorded(NULL, CAMPAIGN_STEP_VERIFY, &q, &rd),
                     ESIM_ENOTFOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_apple_steps_become_commands),
        cmocka_unit_test(test_apple_reads_answers),
        cmocka_unit_test(test_windows_verdict),
        cmocka_unit_test(test_windows_error_detail_names),
        cmocka_unit_test(test_windows_steps_and_answers),
        cmocka_unit_test(test_windows_recorded_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
