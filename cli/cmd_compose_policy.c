/*
 * cmd_compose_policy.c — `esim-mdm compose restrictions` (the Apple eSIM
 * restrictions profile) and `esim-mdm compose windows-csp` (the Windows
 * eUICCs CSP as SyncML): options in, one document on stdout, errors on stderr.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/options.h"
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

/* Ids 0..3 are the eSIM settings, named as esim_policy_set_word() knows them. */
enum {
    R_IDENTIFIER = 4,
    R_DISPLAY_NAME,
    R_ORGANIZATION,
    R_SIGN_CERT,
    R_SIGN_KEY,
    R_DEVICE_OS,
    R_UNSUPERVISED
};
static const cli_option restrictions_options[] = {
    {"esim-modification", true, 0},          {"preserve-esim-on-erase", true, 1},
    {"esim-outgoing-transfers", true, 2},    {"cellular-plan-modification", true, 3},
    {"identifier", true, R_IDENTIFIER},      {"display-name", true, R_DISPLAY_NAME},
    {"organization", true, R_ORGANIZATION},  {"sign-cert", true, R_SIGN_CERT},
    {"sign-key", true, R_SIGN_KEY},          {"device-os", true, R_DEVICE_OS},
    {"unsupervised", false, R_UNSUPERVISED}, {NULL, false, 0},
};

static int parse_restrictions_args(int argc, char **argv, restrictions_args *a)
{
    static const char cmd[] = "compose restrictions";
    bool seen_policy[4] = {false, false, false, false};
    cli_parser p;
    cli_parser_init(&p, cmd, restrictions_options, argc, argv, 1);
    for (int id; (id = cli_next(&p)) != CLI_END;) {
        if (id == CLI_ERROR)
            return CLI_EXIT_USAGE;
        if (id == CLI_ARG)
            return cli_unexpected(cmd, p.value);
        if (id == R_UNSUPERVISED) {
            a->unsupervised = true;
            continue;
        }
        if (id < 4) {
            if (seen_policy[id])
                return cli_usage_error("%s: --%s given twice", cmd, p.match->name);
            seen_policy[id] = true;
            esim_error err = {{0}};
            if (esim_policy_set_word(&a->policy, p.match->name, p.value, &err) != ESIM_OK)
                return cli_bad_value(&p, err.msg);
            continue;
        }
        const char **slot = id == R_IDENTIFIER     ? &a->profile.identifier
                            : id == R_DISPLAY_NAME ? &a->profile.display_name
                            : id == R_ORGANIZATION ? &a->profile.organization
                            : id == R_SIGN_CERT    ? &a->sign_cert
                            : id == R_SIGN_KEY     ? &a->sign_key
                                                   : &a->device_os;
        if (*slot)
            return cli_usage_error("%s: --%s given twice", cmd, p.match->name);
        if (!*p.value)
            return cli_bad_value(&p, "must not be empty");
        *slot = p.value;
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
            return cli_bad_option_value("compose restrictions", "device-os", a->device_os, err.msg);
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
    static const char cmd[] = "compose windows-csp";
    enum { W_EID, W_SERVER, W_LOCAL_UI, W_AUTO_ENABLE, W_DISCOVERY, W_RESET };
    static const cli_option options[] = {
        {"eid", true, W_EID},
        {"server", true, W_SERVER},
        {"local-ui", true, W_LOCAL_UI},
        {"auto-enable", false, W_AUTO_ENABLE},
        {"discovery-server", false, W_DISCOVERY},
        {"reset-to-factory", false, W_RESET},
        {NULL, false, 0},
    };
    bool seen_local_ui = false;
    cli_parser p;
    cli_parser_init(&p, cmd, options, argc, argv, 1);
    for (int id; (id = cli_next(&p)) != CLI_END;) {
        switch (id) {
        case W_EID:
        case W_SERVER: {
            const char **slot = id == W_EID ? &csp.eid : &csp.server;
            if (*slot)
                return cli_usage_error("%s: --%s given twice", cmd, p.match->name);
            *slot = p.value;
            break;
        }
        case W_LOCAL_UI:
            if (seen_local_ui)
                return cli_usage_error("%s: --local-ui given twice", cmd);
            seen_local_ui = true;
            if (strcmp(p.value, "on") == 0)
                csp.local_ui_enabled = ESIM_TRI_TRUE;
            else if (strcmp(p.value, "off") == 0)
                csp.local_ui_enabled = ESIM_TRI_FALSE;
            else
                return cli_bad_value(&p, "must be on or off");
            break;
        case W_AUTO_ENABLE:
            csp.auto_enable = true;
            break;
        case W_DISCOVERY:
            csp.discovery_server = true;
            break;
        case W_RESET:
            csp.reset_to_factory = true;
            break;
        case CLI_ARG:
            return cli_unexpected(cmd, p.value);
        default:
            return CLI_EXIT_USAGE;
        }
    }
    if (!csp.eid)
        return cli_missing(cmd, "--eid EID (32 digits)");

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
