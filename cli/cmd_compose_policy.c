/*
 * cmd_compose_policy.c — `esim-mdm compose restrictions` (the Apple eSIM
 * restrictions profile) and `esim-mdm compose windows-csp` (the Windows
 * eUICCs CSP as SyncML): options in, one document on stdout, errors on stderr.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "restrictions/restrictions.h"

static const char restrictions_help[] =
    "usage: esim-mdm compose restrictions [options] > esim-restrictions.mobileconfig\n"
    "\n"
    "Writes a configuration profile with a restrictions payload\n"
    "(com.apple.applicationaccess) that carries only the eSIM settings you give.\n"
    "Install it with an InstallProfile command (esim-mdm enqueue) or by hand.\n"
    "Settings you leave out stay at the device default. When several profiles\n"
    "set the same key, the device applies the most restrictive value.\n"
    "\n"
    "settings (at least one):\n"
    "  --esim-modification allow|deny         allowESIMModification: may the user\n"
    "                                         add, delete or edit eSIMs (iOS 12.1+)\n"
    "  --preserve-esim-on-erase on|off        forcePreserveESIMOnErase: keep the eSIM\n"
    "                                         on Erase All Content and Settings and\n"
    "                                         passcode-failure wipes (iOS 17.2+;\n"
    "                                         not honoured for a Find My erase)\n"
    "  --esim-outgoing-transfers allow|deny   allowESIMOutgoingTransfers: eSIM Quick\n"
    "                                         Transfer to another phone (iOS 18.0+)\n"
    "  --cellular-plan-modification allow|deny\n"
    "                                         allowCellularPlanModification (iOS 11.0+)\n"
    "All four need a supervised device; others ignore them silently.\n"
    "\n"
    "profile:\n"
    "  --identifier ID        PayloadIdentifier (default " ESIM_POLICY_DEFAULT_IDENTIFIER ");\n"
    "                         a later profile with the same ID replaces this one\n"
    "  --display-name NAME    PayloadDisplayName (default \"eSIM restrictions\")\n"
    "  --organization NAME    PayloadOrganization\n"
    "  --sign-cert PEM --sign-key PEM\n"
    "                         sign the profile (CMS, DER output: redirect it to a file)\n"
    "\n"
    "checking a device (warnings on stderr, the profile is still written):\n"
    "  --device-os VERSION    warn about keys a device on this iOS version ignores\n"
    "  --unsupervised         ... and that an unsupervised device ignores\n"
    "\n"
    "examples:\n"
    "  # keep eSIMs through an erase and block Quick Transfer:\n"
    "  esim-mdm compose restrictions --preserve-esim-on-erase on \\\n"
    "      --esim-outgoing-transfers deny > esim.mobileconfig\n"
    "  # lock eSIM changes, signed, and check against an iOS 17.1 fleet:\n"
    "  esim-mdm compose restrictions --esim-modification deny --identifier com.example.esim \\\n"
    "      --sign-cert signer.pem --sign-key signer.key --device-os 17.1 > esim.mobileconfig\n"
    "\n"
    "exit status: 0 written, 1 failed to write, 2 bad options.\n";

static const char windows_csp_help[] =
    "usage: esim-mdm compose windows-csp --eid EID [options] > euicc.syncml.xml\n"
    "\n"
    "Writes an OMA-DM SyncML document for the Windows eUICCs CSP\n"
    "(./Device/Vendor/MSFT/eUICCs/{EID}), for MDM servers that also manage\n"
    "Windows devices with eSIM. Send it through your Windows MDM channel.\n"
    "\n"
    "options:\n"
    "  --eid EID              the eUICC's EID: 32 digits with valid check digits\n"
    "                         (see `esim-mdm check`); required\n"
    "  --server FQDN          add DownloadServers/{FQDN}: the operator's SM-DP+ (or\n"
    "                         an SM-DS); adding it starts profile discovery\n"
    "  --auto-enable          AutoEnable: enable the downloaded profile by itself\n"
    "  --discovery-server     IsDiscoveryServer: FQDN is an SM-DS, not an SM-DP+\n"
    "  --local-ui on|off      Policies/LocalUIEnabled: may the user manage eSIMs in\n"
    "                         Settings; off requires --server with --auto-enable\n"
    "  --reset-to-factory     Exec Actions/ResetToFactoryState first: deletes the\n"
    "                         eUICC's operational profiles\n"
    "Give at least one of --server, --local-ui, --reset-to-factory.\n"
    "\n"
    "examples:\n"
    "  esim-mdm compose windows-csp --eid 89882119900000000000000000001654 \\\n"
    "      --server smdp.example.com --auto-enable\n"
    "  esim-mdm compose windows-csp --eid 89882119900000000000000000001654 \\\n"
    "      --server smdp.example.com --auto-enable --local-ui off\n"
    "  esim-mdm compose windows-csp --eid 89882119900000000000000000001654 --reset-to-factory\n"
    "\n"
    "exit status: 0 written, 1 failed to write, 2 bad options.\n";

static int write_stdout(const esim_buf *doc, const char *what)
{
    if (fwrite(doc->data, 1, doc->len, stdout) != doc->len || fflush(stdout) != 0) {
        fprintf(stderr, "esim-mdm: compose %s: could not write to stdout\n", what);
        return CLI_EXIT_FAIL;
    }
    return CLI_EXIT_OK;
}

typedef struct {
    esim_policy policy;
    esim_profile_opts profile;
    const char *sign_cert, *sign_key;
    const char *device_os;
    bool unsupervised;
} restrictions_args;

static const char *const policy_options[] = {"--esim-modification", "--preserve-esim-on-erase",
                                             "--esim-outgoing-transfers",
                                             "--cellular-plan-modification"};

static int parse_restrictions_args(int argc, char **argv, restrictions_args *a)
{
    bool seen_policy[4] = {false, false, false, false};
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        int m = 0;
        bool handled = false;
        for (size_t k = 0; k < 4 && !handled; k++) {
            m = cli_match_option(argc, argv, &i, policy_options[k], true, &v);
            if (m == 0)
                continue;
            if (m < 0)
                return cli_usage_error("compose restrictions: %s needs a value", policy_options[k]);
            if (seen_policy[k])
                return cli_usage_error("compose restrictions: %s given twice", policy_options[k]);
            seen_policy[k] = true;
            esim_error err = {{0}};
            if (esim_policy_set_word(&a->policy, policy_options[k] + 2, v, &err) != ESIM_OK)
                return cli_usage_error("compose restrictions: %s", err.msg);
            handled = true;
        }
        if (handled)
            continue;
        struct {
            const char *name;
            const char **slot;
        } valued[] = {
            {"--identifier", &a->profile.identifier},
            {"--display-name", &a->profile.display_name},
            {"--organization", &a->profile.organization},
            {"--sign-cert", &a->sign_cert},
            {"--sign-key", &a->sign_key},
            {"--device-os", &a->device_os},
        };
        for (size_t k = 0; k < sizeof valued / sizeof valued[0] && !handled; k++) {
            m = cli_match_option(argc, argv, &i, valued[k].name, true, &v);
            if (m == 0)
                continue;
            if (m < 0)
                return cli_usage_error("compose restrictions: %s needs a value", valued[k].name);
            if (*valued[k].slot)
                return cli_usage_error("compose restrictions: %s given twice", valued[k].name);
            if (!*v)
                return cli_usage_error("compose restrictions: %s must not be empty",
                                       valued[k].name);
            *valued[k].slot = v;
            handled = true;
        }
        if (handled)
            continue;
        if (strcmp(argv[i], "--unsupervised") == 0) {
            a->unsupervised = true;
            continue;
        }
        return cli_usage_error("compose restrictions: unknown option '%s'; see "
                               "`esim-mdm compose restrictions --help`",
                               argv[i]);
    }
    if (esim_policy_is_empty(&a->policy))
        return cli_usage_error("compose restrictions: give at least one eSIM setting, e.g. "
                               "--esim-modification deny; see --help");
    if (!a->sign_cert != !a->sign_key)
        return cli_usage_error("compose restrictions: --sign-cert and --sign-key go together");
    if (a->unsupervised && !a->device_os)
        return cli_usage_error("compose restrictions: --unsupervised needs --device-os VERSION");
    if (a->device_os) {
        esim_os_version ver;
        esim_error err = {{0}};
        if (esim_os_version_parse(a->device_os, &ver, &err) != ESIM_OK)
            return cli_usage_error("compose restrictions: --device-os: %s", err.msg);
    }
    return CLI_EXIT_OK;
}

int cmd_compose_restrictions(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(restrictions_help, stdout);
        return CLI_EXIT_OK;
    }
    restrictions_args a;
    memset(&a, 0, sizeof a);
    int rc = parse_restrictions_args(argc, argv, &a);
    if (rc != CLI_EXIT_OK)
        return rc;
    if (a.sign_cert && isatty(STDOUT_FILENO))
        return cli_usage_error("compose restrictions: a signed profile is binary (DER); redirect "
                               "stdout to a file, e.g. > esim.mobileconfig");

    esim_error err = {{0}};
    esim_cert signer = {0};
    if (a.sign_cert && esim_cert_load(a.sign_cert, a.sign_key, &signer, &err) != ESIM_OK)
        return cli_usage_error("compose restrictions: signing certificate: %s", err.msg);

    esim_buf profile = {0};
    esim_err e =
        esim_policy_to_profile(&a.policy, &a.profile, a.sign_cert ? &signer : NULL, &profile, &err);
    esim_cert_clear(&signer);
    if (e != ESIM_OK) {
        esim_buf_free(&profile);
        if (e == ESIM_EINVAL)
            return cli_usage_error("compose restrictions: %s", err.msg);
        fprintf(stderr, "esim-mdm: compose restrictions: %s (%s)\n", err.msg, esim_strerror(e));
        return CLI_EXIT_FAIL;
    }

    if (a.device_os) {
        esim_ignored_key ignored[4];
        size_t n = esim_policy_ignored_keys(&a.policy, a.device_os, !a.unsupervised, ignored);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, "esim-mdm: warning: a %s device on iOS %s ignores %s: %s\n",
                    a.unsupervised ? "unsupervised" : "supervised", a.device_os, ignored[i].key,
                    ignored[i].reason);
    }
    rc = write_stdout(&profile, "restrictions");
    esim_buf_free(&profile);
    return rc;
}

int cmd_compose_windows_csp(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(windows_csp_help, stdout);
        return CLI_EXIT_OK;
    }
    esim_windows_csp csp;
    memset(&csp, 0, sizeof csp);
    bool seen_local_ui = false;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        int m;
        const char *name = "--eid";
        const char **slot = &csp.eid;
        m = cli_match_option(argc, argv, &i, name, true, &v);
        if (m == 0) {
            name = "--server";
            slot = &csp.server;
            m = cli_match_option(argc, argv, &i, name, true, &v);
        }
        if (m != 0) {
            if (m < 0)
                return cli_usage_error("compose windows-csp: %s needs a value", name);
            if (*slot)
                return cli_usage_error("compose windows-csp: %s given twice", name);
            *slot = v;
        } else if ((m = cli_match_option(argc, argv, &i, "--local-ui", true, &v)) != 0) {
            if (m < 0)
                return cli_usage_error("compose windows-csp: --local-ui needs on or off");
            if (seen_local_ui)
                return cli_usage_error("compose windows-csp: --local-ui given twice");
            seen_local_ui = true;
            if (strcmp(v, "on") == 0)
                csp.local_ui_enabled = ESIM_TRI_TRUE;
            else if (strcmp(v, "off") == 0)
                csp.local_ui_enabled = ESIM_TRI_FALSE;
            else
                return cli_usage_error("compose windows-csp: --local-ui must be on or off (got "
                                       "'%.64s')",
                                       v);
        } else if (strcmp(argv[i], "--auto-enable") == 0) {
            csp.auto_enable = true;
        } else if (strcmp(argv[i], "--discovery-server") == 0) {
            csp.discovery_server = true;
        } else if (strcmp(argv[i], "--reset-to-factory") == 0) {
            csp.reset_to_factory = true;
        } else {
            return cli_usage_error("compose windows-csp: unknown option '%s'; see "
                                   "`esim-mdm compose windows-csp --help`",
                                   argv[i]);
        }
    }
    if (!csp.eid)
        return cli_usage_error("compose windows-csp: --eid EID is required (32 digits); see "
                               "--help");

    esim_error err = {{0}};
    esim_buf doc = {0};
    esim_err e = esim_windows_csp_syncml(&csp, &doc, &err);
    if (e != ESIM_OK) {
        esim_buf_free(&doc);
        if (e == ESIM_EINVAL)
            return cli_usage_error("compose windows-csp: %s", err.msg);
        fprintf(stderr, "esim-mdm: compose windows-csp: %s (%s)\n", err.msg, esim_strerror(e));
        return CLI_EXIT_FAIL;
    }
    int rc = write_stdout(&doc, "windows-csp");
    esim_buf_free(&doc);
    return rc;
}
