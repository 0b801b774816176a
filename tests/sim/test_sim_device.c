/*
 * test_sim_device.c — the virtual iOS device: each command answered as iOS
 * does, restrictions from several profiles merged and filtered by
 * supervision and OS version, every user action under each restriction,
 * EraseDevice with and without PreserveDataPlan, the Mdm-Signature, and the
 * device file across a restart.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/err.h>

#include "plist/esim_plist.h"
#include "tests/sim/sim_test.h"

static struct {
    char *dir;
    sim_pki *pki;
} fx;

static int setup_all(void **state)
{
    (void)state;
    fx.dir = st_tempdir();
    char d[512];
    snprintf(d, sizeof d, "%s/pki", fx.dir);
    esim_error err;
    if (sim_pki_open(d, &fx.pki, &err) != ESIM_OK)
        return fprintf(stderr, "%s\n", err.msg), -1;
    return 0;
}

static int teardown_all(void **state)
{
    (void)state;
    sim_pki_free(fx.pki);
    st_rmrf(fx.dir);
    free(fx.dir);
    return 0;
}

static sim_device *device(unsigned n, bool supervised, const char *os)
{
    char udid[65], eid[33];
    snprintf(udid, sizeof udid, "00008110-%016X", n);
    st_eid(n, eid);
    sim_device_spec spec = {.udid = udid, .eid = eid, .supervised = supervised, .os_version = os};
    sim_device *d = NULL;
    esim_error err;
    assert_int_equal(sim_device_new(fx.pki, &spec, &d, &err), ESIM_OK);
    return d;
}

/* Gives |d| an enabled operational eSIM, as if downloaded. */
static void give_esim(sim_device *d, unsigned n, unsigned ppr)
{
    sim_profile p = {0};
    st_iccid(n, p.iccid);
    p.profile_class = SIM_CLASS_OPERATIONAL;
    p.ppr = ppr;
    sim_result r;
    assert_int_equal(sim_euicc_install(sim_device_euicc(d), &p, &r, NULL), ESIM_OK);
    assert_int_equal(r, SIM_RES_OK);
    assert_int_equal(sim_euicc_enable(sim_device_euicc(d), p.iccid), SIM_RES_OK);
}

/* Runs |cmd| and parses the answer. */
static void run(sim_device *d, const esim_cmd *cmd, sim_cmd_outcome *o, esim_msg *msg)
{
    esim_error err;
    assert_int_equal(sim_device_handle_command(d, cmd->body.data, cmd->body.len, o, &err), ESIM_OK);
    if (msg) {
        assert_true(o->result.len > 0);
        assert_int_equal(esim_msg_parse(o->result.data, o->result.len, NULL, msg, &err), ESIM_OK);
        assert_string_equal(msg->udid, sim_device_udid(d));
        assert_string_equal(msg->command_uuid, cmd->command_uuid);
        /* The outcome names the Status the answer carries (devsim's /stats counts it). */
        assert_int_equal(o->status, msg->status);
    }
}

static void install_policy_signed(sim_device *d, const char *ident, const char *name,
                                  const char *word, const esim_cert *signer)
{
    esim_policy p = {0};
    assert_int_equal(esim_policy_set_word(&p, name, word, NULL), ESIM_OK);
    esim_profile_opts po = {.identifier = ident};
    esim_buf prof = {0};
    esim_error err;
    assert_int_equal(esim_policy_to_profile(&p, &po, signer, &prof, &err), ESIM_OK);
    esim_cmd cmd = {0};
    assert_int_equal(esim_cmd_install_profile(prof.data, prof.len, NULL, &cmd, &err), ESIM_OK);
    sim_cmd_outcome o;
    esim_msg m = {0};
    run(d, &cmd, &o, &m);
    assert_int_equal(m.status, ESIM_STATUS_ACKNOWLEDGED);
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    esim_cmd_free(&cmd);
    esim_buf_free(&prof);
}

static void install_policy(sim_device *d, const char *ident, const char *name, const char *word)
{
    install_policy_signed(d, ident, name, word, NULL);
}

static void test_restrictions_merge_and_apply(void **state)
{
    (void)state;
    sim_device *d = device(1, true, "18.1");
    install_policy(d, "com.example.a", "esim_modification", "allow");
    install_policy(d, "com.example.b", "esim_modification", "deny");
    /* A CMS-signed profile is read the same way. */
    install_policy_signed(d, "com.example.c", "preserve_esim_on_erase", "on", &fx.pki->server);
    assert_int_equal(sim_device_profile_count(d), 3);
    esim_policy eff = sim_device_restrictions(d);
    assert_int_equal(eff.allow_esim_modification, ESIM_TRI_FALSE); /* deny wins */
    assert_int_equal(eff.force_preserve_esim_on_erase, ESIM_TRI_TRUE);
    /* Re-installing an identifier replaces that profile. */
    install_policy(d, "com.example.b", "esim_modification", "allow");
    assert_int_equal(sim_device_profile_count(d), 3);
    assert_int_equal(sim_device_restrictions(d).allow_esim_modification, ESIM_TRI_TRUE);

    /* RemoveProfile, then ProfileList shows what is left. */
    esim_cmd cmd = {0};
    sim_cmd_outcome o;
    esim_msg m = {0};
    assert_int_equal(esim_cmd_remove_profile("com.example.c", NULL, &cmd, NULL), ESIM_OK);
    run(d, &cmd, &o, &m);
    assert_int_equal(m.status, ESIM_STATUS_ACKNOWLEDGED);
    assert_int_equal(sim_device_restrictions(d).force_preserve_esim_on_erase, ESIM_TRI_UNSET);
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    esim_cmd_free(&cmd);
    assert_int_equal(esim_cmd_remove_profile("com.example.none", NULL, &cmd, NULL), ESIM_OK);
    run(d, &cmd, &o, &m);
    assert_int_equal(m.status, ESIM_STATUS_ERROR);
    assert_int_equal(m.error_chain_len, 1);
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    esim_cmd_free(&cmd);
    assert_int_equal(esim_cmd_profile_list(false, NULL, &cmd, NULL), ESIM_OK);
    run(d, &cmd, &o, &m);
    plist_t list = plist_dict_get_item(m.root, "ProfileList");
    assert_non_null(list);
    assert_int_equal(plist_array_get_size(list), 2);
    /* Each kept profile's strings (kept packed in one block, issue 17). */
    const char *want[] = {"com.example.a", "com.example.b"};
    for (uint32_t i = 0; i < 2; i++) {
        plist_t e = plist_array_get_item(list, i);
        char *ident = NULL, *uuid = NULL, *type = NULL;
        plist_get_string_val(plist_dict_get_item(e, "PayloadIdentifier"), &ident);
        plist_get_string_val(plist_dict_get_item(e, "PayloadUUID"), &uuid);
        plist_get_string_val(
            plist_dict_get_item(plist_array_get_item(plist_dict_get_item(e, "PayloadContent"), 0),
                                "PayloadType"),
            &type);
        assert_string_equal(ident, want[i]);
        assert_string_equal(sim_device_profile_identifier(d, i), want[i]);
        assert_non_null(uuid);
        assert_true(strlen(uuid) > 0);
        assert_string_equal(type, "com.apple.applicationaccess");
        free(ident);
        free(uuid);
        free(type);
    }
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    esim_cmd_free(&cmd);
    sim_device_free(d);
}

static void test_supervision_and_os_version(void **state)
{
    (void)state;
    /* Unsupervised: every eSIM key is ignored, so the user may delete. */
    sim_device *u = device(2, false, "18.1");
    install_policy(u, "com.example.lock", "esim_modification", "deny");
    assert_int_equal(sim_device_restrictions_declared(u).allow_esim_modification, ESIM_TRI_FALSE);
    assert_int_equal(sim_device_restrictions(u).allow_esim_modification, ESIM_TRI_UNSET);
    give_esim(u, 2, 0);
    sim_action_outcome a;
    assert_int_equal(sim_device_user_action(u, SIM_ACTION_DELETE_ESIM, &a, NULL), ESIM_OK);
    assert_true(a.allowed);
    assert_int_equal(sim_euicc_profile_count(sim_device_euicc(u)), 0);
    sim_device_free(u);

    /* iOS 17.1 predates forcePreserveESIMOnErase (17.2): the erase takes the eSIM. */
    sim_device *old = device(3, true, "17.1");
    install_policy(old, "com.example.keep", "preserve_esim_on_erase", "on");
    give_esim(old, 3, 0);
    assert_int_equal(sim_device_user_action(old, SIM_ACTION_ERASE_ALL_CONTENT, &a, NULL), ESIM_OK);
    assert_true(a.erased);
    assert_false(a.esim_kept);
    assert_int_equal(sim_euicc_profile_count(sim_device_euicc(old)), 0);
    sim_device_free(old);

    /* iOS 17.4 predates allowESIMOutgoingTransfers (18.0). */
    sim_device *d17 = device(4, true, "17.4");
    install_policy(d17, "com.example.tx", "esim_outgoing_transfers", "deny");
    give_esim(d17, 4, 0);
    assert_int_equal(sim_device_user_action(d17, SIM_ACTION_TRANSFER_ESIM, &a, NULL), ESIM_OK);
    assert_true(a.allowed);
    sim_device_free(d17);
}

static void test_user_actions(void **state)
{
    (void)state;
    sim_action_outcome a;
    esim_error err;
    /* delete-esim: refused while allowESIMModification is false, allowed otherwise. */
    sim_device *d = device(10, true, "18.1");
    assert_int_equal(sim_device_user_action(d, SIM_ACTION_DELETE_ESIM, &a, &err), ESIM_ESTATE);
    give_esim(d, 10, 0);
    install_policy(d, "p.mod", "esim_modification", "deny");
    assert_int_equal(sim_device_user_action(d, SIM_ACTION_DELETE_ESIM, &a, NULL), ESIM_OK);
    assert_false(a.allowed);
    assert_non_null(strstr(a.reason, "allowESIMModification"));
    assert_non_null(sim_euicc_enabled(sim_device_euicc(d)));
    /* transfer is governed by its own key, not allowESIMModification */
    install_policy(d, "p.tx", "esim_outgoing_transfers", "deny");
    assert_int_equal(sim_device_user_action(d, SIM_ACTION_TRANSFER_ESIM, &a, NULL), ESIM_OK);
    assert_false(a.allowed);
    assert_non_null(strstr(a.reason, "allowESIMOutgoingTransfers"));
    install_policy(d, "p.tx", "esim_outgoing_transfers", "allow");
    assert_int_equal(sim_device_user_action(d, SIM_ACTION_TRANSFER_ESIM, &a, NULL), ESIM_OK);
    assert_true(a.allowed);
    assert_int_equal(sim_euicc_profile_count(sim_device_euicc(d)), 0);
    sim_device_free(d);

    d = device(11, true, "18.1");
    give_esim(d, 11, 0);
    install_policy(d, "p.mod", "esim_modification", "allow");
    assert_int_equal(sim_device_user_action(d, SIM_ACTION_DELETE_ESIM, &a, NULL), ESIM_OK);
    assert_true(a.allowed);
    assert_int_equal(sim_euicc_profile_count(sim_device_euicc(d)), 0);
    sim_device_free(d);

    /* The eUICC's own rules still apply: PPR2 refuses deletion. */
    d = device(12, true, "18.1");
    give_esim(d, 12, SIM_PPR2);
    assert_int_equal(sim_device_user_action(d, SIM_ACTION_DELETE_ESIM, &a, NULL), ESIM_OK);
    assert_false(a.allowed);
    assert_non_null(strstr(a.reason, "disallowedByPolicy"));
    sim_device_free(d);

    /* Erases: forcePreserveESIMOnErase keeps the eSIM for erase-all-content and
     * passcode-wipe, never for findmy-erase; without it the eSIM goes. */
    struct {
        sim_user_action act;
        bool force;
        bool kept;
    } cases[] = {
        {SIM_ACTION_ERASE_ALL_CONTENT, true, true}, {SIM_ACTION_ERASE_ALL_CONTENT, false, false},
        {SIM_ACTION_PASSCODE_WIPE, true, true},     {SIM_ACTION_PASSCODE_WIPE, false, false},
        {SIM_ACTION_FINDMY_ERASE, true, false},     {SIM_ACTION_FINDMY_ERASE, false, false},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        d = device(20 + i, true, "18.1");
        give_esim(d, 20 + i, 0);
        sim_device_set_enrolled(d, true);
        if (cases[i].force)
            install_policy(d, "p.keep", "preserve_esim_on_erase", "on");
        assert_int_equal(sim_device_user_action(d, cases[i].act, &a, NULL), ESIM_OK);
        assert_true(a.allowed);
        assert_true(a.erased);
        assert_int_equal(a.esim_kept, cases[i].kept);
        assert_int_equal(sim_euicc_profile_count(sim_device_euicc(d)), cases[i].kept ? 1 : 0);
        assert_int_equal(sim_device_profile_count(d), 0); /* the restrictions went with the wipe */
        assert_false(sim_device_enrolled(d));
        sim_device_free(d);
    }
    sim_user_action act;
    assert_int_equal(sim_user_action_parse("findmy-erase", &act, NULL), ESIM_OK);
    assert_int_equal(act, SIM_ACTION_FINDMY_ERASE);
    assert_int_equal(sim_user_action_parse("reboot", &act, &err), ESIM_EINVAL);
}

static void test_erase_device_command(void **state)
{
    (void)state;
    for (int preserve = 0; preserve <= 1; preserve++) {
        sim_device *d = device(30 + preserve, true, "18.1");
        give_esim(d, 30 + preserve, 0);
        sim_device_set_enrolled(d, true);
        size_t tl;
        unsigned char old_token[32];
        memcpy(old_token, sim_device_push_token(d, &tl), 32);
        esim_erase_opts eo = {.preserve_data_plan = preserve};
        esim_cmd cmd = {0};
        assert_int_equal(esim_cmd_erase_device(&eo, NULL, &cmd, NULL), ESIM_OK);
        sim_cmd_outcome o;
        esim_msg m = {0};
        run(d, &cmd, &o, &m);
        assert_int_equal(m.status, ESIM_STATUS_ACKNOWLEDGED);
        assert_true(o.erase);
        assert_int_equal(o.preserve_data_plan, preserve);
        sim_device_erase(d, o.preserve_data_plan);
        assert_int_equal(sim_euicc_profile_count(sim_device_euicc(d)), preserve ? 1 : 0);
        assert_false(sim_device_enrolled(d));
        assert_memory_not_equal(old_token, sim_device_push_token(d, &tl), 32);
        esim_msg_free(&m);
        sim_cmd_outcome_free(&o);
        esim_cmd_free(&cmd);
        sim_device_free(d);
    }
}

static void test_commands(void **state)
{
    (void)state;
    sim_device *d = device(40, true, "18.1");
    give_esim(d, 40, 0);
    esim_cmd cmd = {0};
    sim_cmd_outcome o;
    esim_msg m = {0};
    esim_error err;
    /* DeviceInformation: ServiceSubscriptions carries EID and ICCID. */
    const char *q[] = {"ServiceSubscriptions", "OSVersion"};
    assert_int_equal(esim_cmd_device_information(q, 2, NULL, &cmd, NULL), ESIM_OK);
    run(d, &cmd, &o, &m);
    assert_int_equal(m.status, ESIM_STATUS_ACKNOWLEDGED);
    esim_subscription *subs = NULL;
    size_t n = 0;
    assert_int_equal(esim_msg_service_subscriptions(&m, &subs, &n, &err), ESIM_OK);
    assert_int_equal(n, 1);
    char iccid[21];
    st_iccid(40, iccid);
    assert_string_equal(subs[0].eid, sim_euicc_eid(sim_device_euicc(d)));
    assert_string_equal(subs[0].iccid, iccid);
    assert_true(subs[0].is_data_preferred);
    free(subs);
    plist_t qr = plist_dict_get_item(m.root, "QueryResponses");
    assert_non_null(plist_dict_get_item(qr, "OSVersion"));
    assert_null(plist_dict_get_item(qr, "SerialNumber")); /* not asked */
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    esim_cmd_free(&cmd);

    /* RefreshCellularPlans hands over to the LPA; the result follows. */
    assert_int_equal(esim_cmd_refresh_plans("https://127.0.0.1:9/", NULL, &cmd, NULL), ESIM_OK);
    run(d, &cmd, &o, NULL);
    assert_true(o.download);
    assert_string_equal(o.esim_server_url, "https://127.0.0.1:9/");
    assert_int_equal(o.result.len, 0);
    sim_cmd_outcome_free(&o);
    sim_download_result dr = {.err = ESIM_EAUTH};
    snprintf(dr.subject_code, sizeof dr.subject_code, "8.2");
    snprintf(dr.reason_code, sizeof dr.reason_code, "3.7");
    snprintf(dr.message, sizeof dr.message, "SM-DP+ refused: 8.2/3.7 profile already downloaded");
    esim_buf res = {0};
    esim_status st = ESIM_STATUS_ACKNOWLEDGED;
    assert_int_equal(sim_device_finish_download(d, cmd.command_uuid, &dr, &res, &st, &err),
                     ESIM_OK);
    assert_int_equal(esim_msg_parse(res.data, res.len, NULL, &m, &err), ESIM_OK);
    assert_int_equal(m.status, ESIM_STATUS_ERROR);
    assert_int_equal(st, ESIM_STATUS_ERROR);
    assert_int_equal(m.error_chain_len, 2);
    assert_int_equal(m.error_chain[0].code, 36001);
    assert_non_null(strstr(m.error_chain[1].localized_description, "8.2/3.7"));
    esim_msg_free(&m);
    /* A successful download: the new eSIM is enabled, the old one disabled. */
    sim_profile p = {0};
    st_iccid(41, p.iccid);
    p.profile_class = SIM_CLASS_OPERATIONAL;
    sim_result r;
    assert_int_equal(sim_euicc_install(sim_device_euicc(d), &p, &r, NULL), ESIM_OK);
    sim_download_result ok = {.err = ESIM_OK};
    snprintf(ok.iccid, sizeof ok.iccid, "%s", p.iccid);
    assert_int_equal(sim_device_finish_download(d, cmd.command_uuid, &ok, &res, &st, &err),
                     ESIM_OK);
    assert_int_equal(esim_msg_parse(res.data, res.len, NULL, &m, &err), ESIM_OK);
    assert_int_equal(m.status, ESIM_STATUS_ACKNOWLEDGED);
    assert_int_equal(st, ESIM_STATUS_ACKNOWLEDGED);
    assert_string_equal(sim_euicc_enabled(sim_device_euicc(d))->iccid, p.iccid);
    esim_msg_free(&m);
    esim_buf_free(&res);

    /* Busy device: 36003; locked device: NotNow. */
    sim_device_quirks qk = {.fail_download = true};
    sim_device_set_quirks(d, &qk);
    run(d, &cmd, &o, &m);
    assert_int_equal(m.status, ESIM_STATUS_ERROR);
    assert_int_equal(m.error_chain[0].code, 36003);
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    run(d, &cmd, &o, NULL); /* busy passes: the retry goes to the SM-DP+ */
    assert_true(o.download);
    sim_cmd_outcome_free(&o);
    /* A model without eSIM hardware: 36002, and no EID in ServiceSubscriptions. */
    qk = (sim_device_quirks){.no_esim = true};
    sim_device_set_quirks(d, &qk);
    run(d, &cmd, &o, &m);
    assert_int_equal(m.status, ESIM_STATUS_ERROR);
    assert_int_equal(m.error_chain[0].code, 36002);
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    esim_cmd di = {0};
    const char *q2[] = {"ServiceSubscriptions"};
    assert_int_equal(esim_cmd_device_information(q2, 1, NULL, &di, NULL), ESIM_OK);
    run(d, &di, &o, &m);
    subs = NULL;
    assert_int_equal(esim_msg_service_subscriptions(&m, &subs, &n, &err), ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(subs[0].eid, "");
    free(subs);
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    esim_cmd_free(&di);
    qk = (sim_device_quirks){.locked = true};
    sim_device_set_quirks(d, &qk);
    run(d, &cmd, &o, &m);
    assert_int_equal(m.status, ESIM_STATUS_NOT_NOW);
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    esim_cmd_free(&cmd);
    qk = (sim_device_quirks){0};
    sim_device_set_quirks(d, &qk);

    /* An unknown command: Error 12021; garbage: CommandFormatError. */
    const char *unknown =
        "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>CommandUUID</key>"
        "<string>u-1</string><key>Command</key><dict><key>RequestType</key>"
        "<string>Teleport</string></dict></dict></plist>";
    assert_int_equal(sim_device_handle_command(d, unknown, strlen(unknown), &o, &err), ESIM_OK);
    assert_int_equal(esim_msg_parse(o.result.data, o.result.len, NULL, &m, &err), ESIM_OK);
    assert_int_equal(m.status, ESIM_STATUS_ERROR);
    assert_int_equal(m.error_chain[0].code, 12021);
    assert_string_equal(m.error_chain[0].domain, "MCMDMErrorDomain");
    assert_int_equal(o.status, m.status);
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    /* InstallProfile whose Payload is not a profile: Error, nothing installed. */
    size_t before = sim_device_profile_count(d);
    const char *junk = "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>CommandUUID</key>"
                       "<string>u-3</string><key>Command</key><dict><key>RequestType</key>"
                       "<string>InstallProfile</string><key>Payload</key><data>aGVsbG8=</data>"
                       "</dict></dict></plist>";
    assert_int_equal(sim_device_handle_command(d, junk, strlen(junk), &o, &err), ESIM_OK);
    assert_int_equal(esim_msg_parse(o.result.data, o.result.len, NULL, &m, &err), ESIM_OK);
    assert_int_equal(m.status, ESIM_STATUS_ERROR);
    assert_string_equal(m.error_chain[0].domain, "MCProfileErrorDomain");
    assert_int_equal(sim_device_profile_count(d), before);
    assert_int_equal(o.status, m.status);
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    const char *bad = "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>CommandUUID</key>"
                      "<string>u-2</string></dict></plist>";
    assert_int_equal(sim_device_handle_command(d, bad, strlen(bad), &o, &err), ESIM_OK);
    assert_int_equal(esim_msg_parse(o.result.data, o.result.len, NULL, &m, &err), ESIM_OK);
    assert_int_equal(m.status, ESIM_STATUS_COMMAND_FORMAT_ERROR);
    assert_string_equal(m.command_uuid, "u-2");
    assert_int_equal(o.status, m.status);
    esim_msg_free(&m);
    sim_cmd_outcome_free(&o);
    sim_device_free(d);
}

/* |n| bytes are whole TLVs, each length in DER's shortest form, the
 * constructed ones (tag bit 0x20) made of whole TLVs too. */
static bool der_strict(const unsigned char *p, size_t n, int depth)
{
    while (n > 0) {
        if (n < 2 || (p[0] & 0x1f) == 0x1f || depth > 16)
            return false;
        size_t len = p[1], hdr = 2;
        if (len & 0x80) {
            size_t k = len & 0x7f;
            if (k == 0 || k > 3 || n < 2 + k || p[2] == 0)
                return false;
            len = 0;
            for (size_t i = 0; i < k; i++)
                len = len << 8 | p[2 + i];
            if (len < 0x80)
                return false;
            hdr += k;
        }
        if (n - hdr < len)
            return false;
        if ((p[0] & 0x20) && !der_strict(p + hdr, len, depth + 1))
            return false;
        p += hdr + len;
        n -= hdr + len;
    }
    return true;
}

static void test_mdm_signature(void **state)
{
    (void)state;
    sim_device *d = device(50, false, NULL);
    const char *body = "<plist>hello</plist>";
    esim_buf sig = {0}, der = {0};
    esim_error err;
    assert_int_equal(sim_device_sign(d, body, strlen(body), &sig, &err), ESIM_OK);
    assert_int_equal(esim_base64_decode((const char *)sig.data, sig.len, &der, &err), ESIM_OK);
    const unsigned char *p = der.data;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)der.len);
    assert_non_null(cms);
    /* All of it read, and every length in its shortest form (short and
     * 0x82 ones are inside; OpenSSL's reader takes longer forms). */
    assert_ptr_equal(p, der.data + der.len);
    assert_true(der_strict(der.data, der.len, 0));
    X509_STORE *store = X509_STORE_new();
    X509_STORE_add_cert(store, fx.pki->device_ca.x509);
    BIO *data = BIO_new_mem_buf(body, (int)strlen(body));
    /* Verifies against the device CA with no purpose required (SCEP identities carry no EKU). */
    assert_int_equal(
        CMS_verify(cms, NULL, store, data, NULL, CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY), 1);
    STACK_OF(X509) *signers = CMS_get0_signers(cms);
    char cn[80];
    assert_int_equal(
        esim_cert_subject_field(sk_X509_value(signers, 0), NID_commonName, cn, sizeof cn), ESIM_OK);
    assert_string_equal(cn, sim_device_udid(d));
    /* A P-256 identity, issued by the simulator's SCEP CA, which the
     * signature carries so the chain reaches the device CA. */
    assert_int_equal(EVP_PKEY_get_base_id(X509_get0_pubkey(sk_X509_value(signers, 0))),
                     EVP_PKEY_EC);
    STACK_OF(X509) *certs = CMS_get1_certs(cms);
    assert_int_equal(sk_X509_num(certs), 2);
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, store, sk_X509_value(signers, 0), NULL);
    assert_int_not_equal(X509_verify_cert(ctx), 1); /* not without the SCEP CA */
    X509_STORE_CTX_free(ctx);
    ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, store, sk_X509_value(signers, 0), certs);
    assert_int_equal(X509_verify_cert(ctx), 1);
    X509_STORE_CTX_free(ctx);
    sk_X509_pop_free(certs, X509_free);
    sk_X509_free(signers);
    BIO_free(data);
    /* A tampered body does not verify. */
    data = BIO_new_mem_buf("<plist>hellO</plist>", 20);
    assert_int_not_equal(
        CMS_verify(cms, NULL, store, data, NULL, CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY), 1);
    BIO_free(data);
    X509_STORE_free(store);
    CMS_ContentInfo_free(cms);
    esim_buf_free(&sig);
    esim_buf_free(&der);
    sim_device_free(d);
}

/* The identity certificate's public key (its uncompressed point). */
static void cert_point(const esim_buf *der, unsigned char point[65])
{
    const unsigned char *p = der->data;
    X509 *x = d2i_X509(NULL, &p, (long)der->len);
    assert_non_null(x);
    size_t n = 0;
    assert_int_equal(EVP_PKEY_get_octet_string_param(
                         X509_get0_pubkey(x), OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point, 65, &n),
                     1);
    assert_int_equal(n, 65);
    X509_free(x);
}

/* Whether |d|'s Mdm-Signature of |body| verifies with the public key of
 * the certificate |by|. */
static bool signed_by(const sim_device *d, const char *body, const esim_buf *by)
{
    esim_buf sig = {0}, der = {0};
    assert_int_equal(sim_device_sign(d, body, strlen(body), &sig, NULL), ESIM_OK);
    assert_int_equal(esim_base64_decode((const char *)sig.data, sig.len, &der, NULL), ESIM_OK);
    const unsigned char *p = der.data;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)der.len);
    assert_non_null(cms);
    p = by->data;
    X509 *x = d2i_X509(NULL, &p, (long)by->len);
    assert_non_null(x);
    /* The signer's certificate set to |by|: its key checks the signature
     * over the signed attributes (they hold the body's digest, which
     * test_mdm_signature's CMS_verify checks). */
    STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(cms);
    assert_int_equal(sk_CMS_SignerInfo_num(sis), 1);
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(sis, 0);
    CMS_SignerInfo_set1_signer_cert(si, x);
    bool ok = CMS_SignerInfo_verify(si) == 1;
    ERR_clear_error();
    X509_free(x);
    CMS_ContentInfo_free(cms);
    esim_buf_free(&sig);
    esim_buf_free(&der);
    return ok;
}

/* Each device has its own identity key: two devices' certificates carry
 * different public keys, a device's signature verifies with its own
 * certificate's key and not with another's, an erase makes a new key with
 * the new certificate (kept with reuse_identity_on_erase). */
static void test_identity_keys_per_device(void **state)
{
    (void)state;
    sim_device *a = device(70, false, NULL), *b = device(71, false, NULL);
    const esim_buf *ida = NULL, *idb = NULL;
    assert_int_equal(sim_device_identity(a, &ida, NULL), ESIM_OK);
    assert_int_equal(sim_device_identity(b, &idb, NULL), ESIM_OK);
    esim_buf a1 = {0}, b1 = {0};
    assert_int_equal(esim_buf_append(&a1, ida->data, ida->len), ESIM_OK);
    assert_int_equal(esim_buf_append(&b1, idb->data, idb->len), ESIM_OK);
    unsigned char pa[65], pb[65], q[65];
    cert_point(&a1, pa);
    cert_point(&b1, pb);
    assert_memory_not_equal(pa, pb, 65);
    /* The key the device holds is its certificate's. */
    assert_true(sim_ec_public_key(sim_device_identity_key(a), q));
    assert_memory_equal(q, pa, 65);
    assert_memory_not_equal(sim_device_identity_key(a), sim_device_identity_key(b), 32);
    assert_true(signed_by(a, "<plist>a</plist>", &a1));
    assert_false(signed_by(a, "<plist>a</plist>", &b1));
    assert_true(signed_by(b, "<plist>b</plist>", &b1));
    assert_false(signed_by(b, "<plist>b</plist>", &a1));

    /* Wiped: a new identity with a new key. */
    sim_device_erase(a, false);
    assert_int_equal(sim_device_identity(a, &ida, NULL), ESIM_OK);
    assert_memory_not_equal(ida->data, a1.data, a1.len < ida->len ? a1.len : ida->len);
    unsigned char pa2[65];
    cert_point(ida, pa2);
    assert_memory_not_equal(pa2, pa, 65);
    assert_true(sim_ec_public_key(sim_device_identity_key(a), q));
    assert_memory_equal(q, pa2, 65);
    assert_true(signed_by(a, "<plist>a2</plist>", ida));
    assert_false(signed_by(a, "<plist>a2</plist>", &a1));
    /* Told to keep its identity: the same certificate and key. */
    sim_device_set_reuse_identity_on_erase(b, true);
    sim_device_erase(b, false);
    assert_int_equal(sim_device_identity(b, &idb, NULL), ESIM_OK);
    assert_int_equal(idb->len, b1.len);
    assert_memory_equal(idb->data, b1.data, b1.len);
    assert_true(signed_by(b, "<plist>b2</plist>", &b1));
    esim_buf_free(&a1);
    esim_buf_free(&b1);
    sim_device_free(a);
    sim_device_free(b);
}

static void test_persistence(void **state)
{
    (void)state;
    sim_device *d = device(60, true, "17.4");
    give_esim(d, 60, SIM_PPR2);
    install_policy(d, "p.mod", "esim_modification", "deny");
    sim_device_set_enrolled(d, true);
    esim_buf s1 = {0}, s2 = {0}, sig = {0};
    assert_int_equal(sim_device_sign(d, "x", 1, &sig, NULL), ESIM_OK); /* issues the identity */
    assert_true(sim_device_dirty(d));
    char path[600];
    snprintf(path, sizeof path, "%s/dev60.json", fx.dir);
    esim_error err;
    assert_int_equal(sim_device_save(d, path, &err), ESIM_OK);
    assert_false(sim_device_dirty(d));
    assert_int_equal(sim_device_describe_json(d, &s1, &err), ESIM_OK);
    size_t tl;
    unsigned char tok[32], key[32];
    memcpy(tok, sim_device_push_token(d, &tl), 32);
    const esim_buf *id = NULL;
    esim_buf cert = {0};
    assert_int_equal(sim_device_identity(d, &id, NULL), ESIM_OK);
    assert_int_equal(esim_buf_append(&cert, id->data, id->len), ESIM_OK);
    memcpy(key, sim_device_identity_key(d), 32);
    sim_device_free(d);

    sim_device *r = NULL;
    assert_int_equal(sim_device_load(fx.pki, path, &r, &err), ESIM_OK);
    assert_int_equal(sim_device_describe_json(r, &s2, &err), ESIM_OK);
    assert_string_equal(s1.data, s2.data); /* eSIM, restrictions, enrolment survive */
    assert_memory_equal(tok, sim_device_push_token(r, &tl), 32);
    assert_true(sim_device_enrolled(r));
    assert_false(sim_device_dirty(r));
    /* The same identity: its certificate and its key, which still signs
     * for that certificate. */
    assert_int_equal(sim_device_identity(r, &id, NULL), ESIM_OK);
    assert_int_equal(id->len, cert.len);
    assert_memory_equal(id->data, cert.data, cert.len);
    assert_memory_equal(sim_device_identity_key(r), key, 32);
    assert_true(signed_by(r, "<plist>after</plist>", &cert));
    assert_false(sim_device_dirty(r));
    sim_action_outcome a;
    assert_int_equal(sim_device_user_action(r, SIM_ACTION_DELETE_ESIM, &a, NULL), ESIM_OK);
    assert_false(a.allowed);
    sim_device_free(r);
    esim_buf_free(&s1);
    esim_buf_free(&s2);
    esim_buf_free(&sig);

    /* A file whose identity comes without its key (an older simulator's,
     * whose devices shared one), or whose key is not its certificate's, or
     * not a key: refused, saying why. */
    json_t *j = NULL;
    assert_int_equal(sim_json_load(path, 1u << 20, &j, NULL), ESIM_OK);
    char path2[620];
    snprintf(path2, sizeof path2, "%s/dev60-bad.json", fx.dir);
    unsigned char other[32], point[65];
    assert_true(sim_ec_keygen(other, point));
    static const unsigned char zero[32];
    for (int k = 0; k < 3; k++) {
        json_t *bad = json_deep_copy(j);
        if (k == 0)
            json_object_del(bad, "identity_key");
        else
            sim_json_set_b64(bad, "identity_key", k == 1 ? other : zero, 32);
        assert_int_equal(sim_json_save(bad, path2, 0600, NULL), ESIM_OK);
        json_decref(bad);
        r = NULL;
        assert_int_equal(sim_device_load(fx.pki, path2, &r, &err), ESIM_EINVAL);
        assert_null(r);
        assert_non_null(strstr(err.msg, k == 0   ? "without its key"
                                        : k == 1 ? "not for identity_key"
                                                 : "not a P-256 private key"));
    }
    json_decref(j);
    esim_buf_free(&cert);

    assert_int_equal(esim_write_file_atomic(path, "{\"udid\":\"x\"}", 12, 0600, NULL), ESIM_OK);
    r = NULL;
    assert_int_not_equal(sim_device_load(fx.pki, path, &r, &err), ESIM_OK);
    assert_null(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_restrictions_merge_and_apply),
        cmocka_unit_test(test_supervision_and_os_version),
        cmocka_unit_test(test_user_actions),
        cmocka_unit_test(test_erase_device_command),
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_mdm_signature),
        cmocka_unit_test(test_identity_keys_per_device),
        cmocka_unit_test(test_persistence),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
