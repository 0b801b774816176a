/*
 * cmd_compose.c — `esim-mdm compose <kind>`: writes one MDM command plist
 * (RefreshCellularPlans, EraseDevice, InstallProfile, ...) to stdout; and
 * `esim-mdm check`: validates an EID, ICCID or activation code.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "plist/esim_plist.h"

/* Profiles and Return to Service payloads are read whole; the parser's own
 * body limit is the natural cap. */
#define PROFILE_FILE_MAX ESIM_PLIST_DEFAULT_MAX_BODY
#define MAX_QUERIES 64

/* ---- help texts ------------------------------------------------------------ */

static const char compose_help[] =
    "usage: esim-mdm compose <kind> [options] > command.plist\n"
    "       esim-mdm compose <kind> --help\n"
    "\n"
    "Writes one Apple MDM command (an XML plist, or binary with --binary) to\n"
    "stdout, with a fresh CommandUUID unless you give --uuid. Queue it for\n"
    "devices with `esim-mdm enqueue`, or hand it to your own MDM server.\n"
    "\n"
    "kinds:\n"
    "  refresh-plans       RefreshCellularPlans: send devices to the operator's\n"
    "                      SM-DP+ to download their eSIM\n"
    "  erase               EraseDevice, optionally keeping the data plan (eSIM)\n"
    "  install-profile     InstallProfile: install a .mobileconfig (plain or signed)\n"
    "  remove-profile      RemoveProfile: remove a profile by its identifier\n"
    "  profile-list        ProfileList: ask which profiles are installed\n"
    "  device-information  DeviceInformation: ask for ServiceSubscriptions (the\n"
    "                      installed eSIMs: EID, ICCID, carrier) and other queries\n"
    "  restrictions        a configuration profile with the eSIM restrictions\n"
    "                      (allowESIMModification, forcePreserveESIMOnErase, ...)\n"
    "  windows-csp         a Windows eUICCs CSP SyncML document\n"
    "\n"
    "options of every MDM command kind (not restrictions or windows-csp):\n"
    "  --uuid UUID         use this CommandUUID instead of a fresh one (any text\n"
    "                      Apple allows; a UUID is usual)\n"
    "  --binary            write a binary plist instead of XML\n"
    "  --network-tether    set RequestRequiresNetworkTether (the command needs a\n"
    "                      tethered network connection)\n"
    "\n"
    "examples:\n"
    "  esim-mdm compose refresh-plans --server-url smdp.example.com > refresh.plist\n"
    "  esim-mdm compose erase --preserve-data-plan --disallow-proximity-setup\n"
    "  esim-mdm compose device-information --query ServiceSubscriptions\n"
    "  esim-mdm compose restrictions --preserve-esim-on-erase on > esim.mobileconfig\n"
    "  esim-mdm compose install-profile --file esim.mobileconfig > install.plist\n"
    "\n"
    "exit status: 0 written, 1 failed at run time, 2 bad options or input.\n";

#define COMMON_OPTIONS                                                                             \
    "  --uuid UUID             CommandUUID to use, any text (default: a fresh UUID)\n"             \
    "  --binary                binary plist instead of XML (redirect it to a file)\n"              \
    "  --network-tether        set RequestRequiresNetworkTether\n"

static const char refresh_help[] =
    "usage: esim-mdm compose refresh-plans --server-url URL [--network-tether]\n"
    "                                      [--uuid UUID] [--binary]\n"
    "\n"
    "Writes a RefreshCellularPlans command: the device contacts the operator's\n"
    "SM-DP+ at URL and downloads the eSIM profile waiting for its EID. Works on\n"
    "iOS 13+ (iPhone and cellular iPad), supervised or not; not on User Enrollment.\n"
    "\n"
    "options:\n"
    "  --server-url URL        eSIMServerURL: the SM-DP+ address. An https:// or\n"
    "                          http:// URL with a host, or a bare host name as the\n"
    "                          operator gives it (smdp.example.com becomes\n"
    "                          https://smdp.example.com). At most 2048 bytes.\n" COMMON_OPTIONS "\n"
    "The device answers Acknowledged, or Error with code 36001 (cellular stack\n"
    "unreachable), 36002 (hardware unsupported) or 36003 (busy: retry later).\n"
    "\n"
    "examples:\n"
    "  esim-mdm compose refresh-plans --server-url smdp.example.com\n"
    "  esim-mdm compose refresh-plans --server-url https://smdp.example.com/es9 \\\n"
    "      --uuid 0f8fad5b-d9cb-469f-a165-70867728950e --binary > refresh.bplist\n";

static const char erase_help[] =
    "usage: esim-mdm compose erase [--preserve-data-plan] [--disallow-proximity-setup]\n"
    "                              [--pin PIN] [--obliteration BEHAVIOR]\n"
    "                              [--return-to-service [--wifi-profile FILE]\n"
    "                               [--mdm-profile FILE]] [--uuid UUID] [--binary]\n"
    "\n"
    "Writes an EraseDevice command. The device erases itself and does not come\n"
    "back to acknowledge twice: do not wait for a second answer.\n"
    "\n"
    "options:\n"
    "  --preserve-data-plan    PreserveDataPlan: keep the eSIM data plan (iOS 11+)\n"
    "  --disallow-proximity-setup\n"
    "                          DisallowProximitySetup: skip Quick Start on next boot\n"
    "  --pin PIN               PIN: the 6-digit Find My PIN (macOS)\n"
    "  --obliteration BEHAVIOR ObliterationBehavior (macOS): Default,\n"
    "                          DoNotObliterate, ObliterateWithWarning or Always\n"
    "  --return-to-service     ReturnToService: re-enrol by itself after the erase\n"
    "                          (iOS 17+)\n"
    "  --wifi-profile FILE     ... with this Wi-Fi .mobileconfig (WiFiProfileData)\n"
    "  --mdm-profile FILE      ... with this MDM enrolment profile "
    "(MDMProfileData)\n" COMMON_OPTIONS "\n"
    "To keep the eSIM even when the user erases the phone, see\n"
    "`esim-mdm compose restrictions --preserve-esim-on-erase on`.\n"
    "\n"
    "examples:\n"
    "  esim-mdm compose erase --preserve-data-plan --disallow-proximity-setup\n"
    "  esim-mdm compose erase --preserve-data-plan --return-to-service \\\n"
    "      --wifi-profile wifi.mobileconfig --mdm-profile enroll.mobileconfig\n";

static const char install_help[] =
    "usage: esim-mdm compose install-profile --file PROFILE\n"
    "                      [--sign-cert PEM --sign-key PEM] [--uuid UUID] [--binary]\n"
    "\n"
    "Writes an InstallProfile command carrying a configuration profile\n"
    "(.mobileconfig): an XML or binary plist whose PayloadType is Configuration,\n"
    "or such a plist signed with CMS (DER). Any other file is refused.\n"
    "\n"
    "options:\n"
    "  --file PROFILE          the profile to install (at most 1 MiB); - reads\n"
    "                          standard input\n"
    "  --sign-cert PEM         sign a plain profile with this certificate ...\n"
    "  --sign-key PEM          ... and its private key before wrapping it\n" COMMON_OPTIONS "\n"
    "examples:\n"
    "  esim-mdm compose restrictions --esim-modification deny > esim.mobileconfig\n"
    "  esim-mdm compose install-profile --file esim.mobileconfig > install.plist\n"
    "  esim-mdm compose install-profile --file esim.mobileconfig \\\n"
    "      --sign-cert signer.pem --sign-key signer.key > install.plist\n"
    "  esim-mdm compose restrictions --preserve-esim-on-erase on |\n"
    "      esim-mdm compose install-profile --file - > install.plist\n";

static const char remove_help[] =
    "usage: esim-mdm compose remove-profile --identifier ID [--uuid UUID] [--binary]\n"
    "\n"
    "Writes a RemoveProfile command: the device removes the installed profile\n"
    "whose PayloadIdentifier is ID (only profiles this MDM installed).\n"
    "\n"
    "options:\n"
    "  --identifier ID         the profile's PayloadIdentifier\n" COMMON_OPTIONS "\n"
    "example:\n"
    "  esim-mdm compose remove-profile --identifier com.example.esim.restrictions\n";

static const char list_help[] =
    "usage: esim-mdm compose profile-list [--managed-only] [--uuid UUID] [--binary]\n"
    "\n"
    "Writes a ProfileList command: the device answers with its installed profiles.\n"
    "\n"
    "options:\n"
    "  --managed-only          ManagedOnly: list only profiles this MDM installed\n" COMMON_OPTIONS
    "\n"
    "example:\n"
    "  esim-mdm compose profile-list --managed-only\n";

static const char info_help[] =
    "usage: esim-mdm compose device-information --query NAME [--query NAME ...]\n"
    "                      [--uuid UUID] [--binary]\n"
    "\n"
    "Writes a DeviceInformation command asking the device for the named values.\n"
    "ServiceSubscriptions answers one entry per SIM/eSIM with EID, ICCID, IMEI,\n"
    "Slot, Label and carrier: that is how a server checks an eSIM really is\n"
    "installed (needs the Network Information access right).\n"
    "\n"
    "options:\n"
    "  --query NAME            a query such as ServiceSubscriptions, OSVersion,\n"
    "                          ModelName, SerialNumber, IMEI; repeat for more\n" COMMON_OPTIONS "\n"
    "examples:\n"
    "  esim-mdm compose device-information --query ServiceSubscriptions\n"
    "  esim-mdm compose device-information --query ServiceSubscriptions --query OSVersion\n";

static const char check_help[] =
    "usage: esim-mdm check eid|iccid|activation-code VALUE\n"
    "\n"
    "Checks one eSIM identifier and says why it is wrong, if it is:\n"
    "  eid              32 digits whose check digits pass ISO 7064 MOD 97-10\n"
    "  iccid            18 to 20 digits starting 89, last digit a Luhn check digit\n"
    "  activation-code  LPA:1$<SM-DP+ host>$<matching ID>[$<OID>[$1]]\n"
    "\n"
    "examples:\n"
    "  esim-mdm check eid 89882119900000000000000000001654\n"
    "  esim-mdm check iccid 8944500102198304826\n"
    "  esim-mdm check activation-code 'LPA:1$smdp.example.com$04386-AGYFT-A74Y8-3F815'\n"
    "\n"
    "exit status: 0 valid, 2 invalid (the reason is on stderr).\n";

/* ---- option parsing ---------------------------------------------------------- */

/* Options every command kind accepts: their ids, and their entries for a
 * kind's option table. A kind's own ids start at K_OWN. */
enum { K_UUID = 1, K_BINARY, K_TETHER, K_OWN };
#define COMMON_OPTION_TABLE                                                                        \
    {"uuid", true, K_UUID}, {"binary", false, K_BINARY},                                           \
    {                                                                                              \
        "network-tether", false, K_TETHER                                                          \
    }

/* Applies a common option; false when |id| is not one. */
static bool apply_common(int id, const char *value, esim_cmd_opts *opts)
{
    if (id == K_UUID)
        opts->command_uuid = value;
    else if (id == K_BINARY)
        opts->format = ESIM_PLIST_BINARY;
    else if (id == K_TETHER)
        opts->request_requires_network_tether = true;
    else
        return false;
    return true;
}

/* The next option of a kind that takes no positional argument: its id (the
 * common ones applied already), CLI_END, or CLI_ERROR after a report. */
static int next_option(cli_parser *p, esim_cmd_opts *opts)
{
    for (;;) {
        int id = cli_next(p);
        if (id == CLI_ARG) {
            cli_unexpected(p->cmd, p->value);
            return CLI_ERROR;
        }
        if (id < 0 || !apply_common(id, p->value, opts))
            return id;
    }
}

/* A library refusal: input problems exit 2, run-time failures 1. */
static int report(const char *kind, esim_err rc, const esim_error *err)
{
    fprintf(stderr, "esim-mdm: compose %s: %s\n", kind, err->msg[0] ? err->msg : esim_strerror(rc));
    return (rc == ESIM_EINVAL || rc == ESIM_ETOOBIG || rc == ESIM_ENOTFOUND) ? CLI_EXIT_USAGE
                                                                             : CLI_EXIT_FAIL;
}

static int write_command(const char *kind, esim_cmd *cmd)
{
    int status = CLI_EXIT_OK;
    if (fwrite(cmd->body.data, 1, cmd->body.len, stdout) != cmd->body.len || fflush(stdout) != 0) {
        fprintf(stderr, "esim-mdm: compose %s: could not write to stdout\n", kind);
        status = CLI_EXIT_FAIL;
    }
    esim_cmd_free(cmd);
    return status;
}

/* Binary plists on a terminal only garble it; say what to do instead. */
static int refuse_binary_on_terminal(const char *kind, const esim_cmd_opts *opts)
{
    if (opts->format == ESIM_PLIST_BINARY && isatty(STDOUT_FILENO))
        return cli_usage_error("compose %s: --binary writes bytes a terminal cannot show; "
                               "redirect it, e.g. `> command.bplist`",
                               kind);
    return CLI_EXIT_OK;
}

/* "-" reads standard input, so commands compose in a pipe:
 * esim-mdm compose restrictions ... | esim-mdm compose install-profile --file - */
static int read_stdin(const char *kind, esim_buf *out)
{
    esim_buf fresh = {0};
    unsigned char chunk[16384];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, stdin)) > 0) {
        if (fresh.len + got > PROFILE_FILE_MAX) {
            esim_buf_free(&fresh);
            return cli_usage_error("compose %s: standard input is over %u bytes", kind,
                                   (unsigned)PROFILE_FILE_MAX);
        }
        if (esim_buf_append(&fresh, chunk, got) != ESIM_OK) {
            esim_buf_free(&fresh);
            fprintf(stderr, "esim-mdm: compose %s: out of memory\n", kind);
            return CLI_EXIT_FAIL;
        }
    }
    if (ferror(stdin)) {
        esim_buf_free(&fresh);
        fprintf(stderr, "esim-mdm: compose %s: could not read standard input\n", kind);
        return CLI_EXIT_FAIL;
    }
    esim_buf_free(out);
    *out = fresh;
    return CLI_EXIT_OK;
}

static int read_input_file(const char *kind, const char *path, esim_buf *out)
{
    if (strcmp(path, "-") == 0)
        return read_stdin(kind, out);
    esim_error err = {{0}};
    esim_err rc = esim_read_file(path, PROFILE_FILE_MAX, out, &err);
    if (rc != ESIM_OK)
        return report(kind, rc, &err);
    return CLI_EXIT_OK;
}

/* ---- the kinds ------------------------------------------------------------------- */

static int compose_refresh_plans(int argc, char **argv)
{
    const char *kind = "refresh-plans";
    esim_cmd_opts opts = {0};
    const char *url = NULL;
    static const cli_option options[] = {
        COMMON_OPTION_TABLE, {"server-url", true, K_OWN}, {NULL, false, 0}};
    cli_parser p;
    cli_parser_init(&p, "compose refresh-plans", options, argc, argv, 1);
    for (int id; (id = next_option(&p, &opts)) != CLI_END;) {
        if (id == CLI_ERROR)
            return CLI_EXIT_USAGE;
        url = p.value;
    }
    if (!url)
        return cli_missing("compose refresh-plans", "--server-url (e.g. smdp.example.com)");
    int status = refuse_binary_on_terminal(kind, &opts);
    if (status != CLI_EXIT_OK)
        return status;
    esim_cmd cmd;
    esim_error err = {{0}};
    esim_err rc = esim_cmd_refresh_plans(url, &opts, &cmd, &err);
    if (rc != ESIM_OK)
        return report(kind, rc, &err);
    return write_command(kind, &cmd);
}

static int compose_erase(int argc, char **argv)
{
    const char *kind = "erase";
    esim_cmd_opts opts = {0};
    esim_erase_opts erase = {0};
    const char *wifi_path = NULL, *mdm_path = NULL;
    enum { PIN = K_OWN, OBLITERATION, WIFI, MDM, PRESERVE, NO_PROXIMITY, RTS };
    static const cli_option options[] = {COMMON_OPTION_TABLE,
                                         {"pin", true, PIN},
                                         {"obliteration", true, OBLITERATION},
                                         {"wifi-profile", true, WIFI},
                                         {"mdm-profile", true, MDM},
                                         {"preserve-data-plan", false, PRESERVE},
                                         {"disallow-proximity-setup", false, NO_PROXIMITY},
                                         {"return-to-service", false, RTS},
                                         {NULL, false, 0}};
    cli_parser p;
    cli_parser_init(&p, "compose erase", options, argc, argv, 1);
    for (int id; (id = next_option(&p, &opts)) != CLI_END;) {
        switch (id) {
        case PIN:
            erase.pin = p.value;
            break;
        case OBLITERATION:
            erase.obliteration_behavior = p.value;
            break;
        case WIFI:
            wifi_path = p.value;
            break;
        case MDM:
            mdm_path = p.value;
            break;
        case PRESERVE:
            erase.preserve_data_plan = true;
            break;
        case NO_PROXIMITY:
            erase.disallow_proximity_setup = true;
            break;
        case RTS:
            erase.return_to_service = true;
            break;
        default:
            return CLI_EXIT_USAGE;
        }
    }
    if ((wifi_path || mdm_path) && !erase.return_to_service)
        return cli_usage_error("compose erase: --wifi-profile and --mdm-profile go with "
                               "--return-to-service");
    int status = refuse_binary_on_terminal(kind, &opts);
    if (status != CLI_EXIT_OK)
        return status;
    esim_buf wifi = {0}, mdm = {0};
    if (wifi_path && (status = read_input_file(kind, wifi_path, &wifi)) != CLI_EXIT_OK)
        goto done;
    if (mdm_path && (status = read_input_file(kind, mdm_path, &mdm)) != CLI_EXIT_OK)
        goto done;
    if (wifi_path) {
        erase.rts_wifi_profile = wifi.data;
        erase.rts_wifi_profile_len = wifi.len;
    }
    if (mdm_path) {
        erase.rts_mdm_profile = mdm.data;
        erase.rts_mdm_profile_len = mdm.len;
    }
    esim_cmd cmd;
    esim_error err = {{0}};
    esim_err rc = esim_cmd_erase_device(&erase, &opts, &cmd, &err);
    status = rc == ESIM_OK ? write_command(kind, &cmd) : report(kind, rc, &err);
done:
    esim_buf_free(&wifi);
    esim_buf_free(&mdm);
    return status;
}

static int compose_install_profile(int argc, char **argv)
{
    const char *kind = "install-profile";
    esim_cmd_opts opts = {0};
    const char *path = NULL, *cert_path = NULL, *key_path = NULL;
    enum { FILE_ = K_OWN, SIGN_CERT, SIGN_KEY };
    static const cli_option options[] = {COMMON_OPTION_TABLE,
                                         {"file", true, FILE_},
                                         {"sign-cert", true, SIGN_CERT},
                                         {"sign-key", true, SIGN_KEY},
                                         {NULL, false, 0}};
    cli_parser p;
    cli_parser_init(&p, "compose install-profile", options, argc, argv, 1);
    for (int id; (id = next_option(&p, &opts)) != CLI_END;) {
        if (id == FILE_)
            path = p.value;
        else if (id == SIGN_CERT)
            cert_path = p.value;
        else if (id == SIGN_KEY)
            key_path = p.value;
        else
            return CLI_EXIT_USAGE;
    }
    if (!path)
        return cli_missing("compose install-profile", "--file (e.g. esim.mobileconfig)");
    if (!cert_path != !key_path)
        return cli_usage_error("compose install-profile: signing needs both --sign-cert and "
                               "--sign-key");
    int status = refuse_binary_on_terminal(kind, &opts);
    if (status != CLI_EXIT_OK)
        return status;
    esim_buf profile = {0}, signed_profile = {0};
    esim_cert signer = {0};
    esim_error err = {{0}};
    esim_err rc;
    if ((status = read_input_file(kind, path, &profile)) != CLI_EXIT_OK)
        goto done;
    const esim_buf *payload = &profile;
    if (cert_path) {
        if ((rc = esim_cert_load(cert_path, key_path, &signer, &err)) != ESIM_OK ||
            (rc = esim_profile_sign(profile.data, profile.len, &signer, &signed_profile, &err)) !=
                ESIM_OK) {
            status = report(kind, rc, &err);
            goto done;
        }
        payload = &signed_profile;
    }
    esim_cmd cmd;
    rc = esim_cmd_install_profile(payload->data, payload->len, &opts, &cmd, &err);
    status = rc == ESIM_OK ? write_command(kind, &cmd) : report(kind, rc, &err);
done:
    esim_cert_clear(&signer);
    esim_buf_free(&profile);
    esim_buf_free(&signed_profile);
    return status;
}

static int compose_remove_profile(int argc, char **argv)
{
    const char *kind = "remove-profile";
    esim_cmd_opts opts = {0};
    const char *identifier = NULL;
    static const cli_option options[] = {
        COMMON_OPTION_TABLE, {"identifier", true, K_OWN}, {NULL, false, 0}};
    cli_parser p;
    cli_parser_init(&p, "compose remove-profile", options, argc, argv, 1);
    for (int id; (id = next_option(&p, &opts)) != CLI_END;) {
        if (id == CLI_ERROR)
            return CLI_EXIT_USAGE;
        identifier = p.value;
    }
    if (!identifier)
        return cli_missing("compose remove-profile",
                           "--identifier (e.g. com.example.esim.restrictions)");
    int status = refuse_binary_on_terminal(kind, &opts);
    if (status != CLI_EXIT_OK)
        return status;
    esim_cmd cmd;
    esim_error err = {{0}};
    esim_err rc = esim_cmd_remove_profile(identifier, &opts, &cmd, &err);
    return rc == ESIM_OK ? write_command(kind, &cmd) : report(kind, rc, &err);
}

static int compose_profile_list(int argc, char **argv)
{
    const char *kind = "profile-list";
    esim_cmd_opts opts = {0};
    bool managed_only = false;
    static const cli_option options[] = {
        COMMON_OPTION_TABLE, {"managed-only", false, K_OWN}, {NULL, false, 0}};
    cli_parser p;
    cli_parser_init(&p, "compose profile-list", options, argc, argv, 1);
    for (int id; (id = next_option(&p, &opts)) != CLI_END;) {
        if (id == CLI_ERROR)
            return CLI_EXIT_USAGE;
        managed_only = true;
    }
    int status = refuse_binary_on_terminal(kind, &opts);
    if (status != CLI_EXIT_OK)
        return status;
    esim_cmd cmd;
    esim_error err = {{0}};
    esim_err rc = esim_cmd_profile_list(managed_only, &opts, &cmd, &err);
    return rc == ESIM_OK ? write_command(kind, &cmd) : report(kind, rc, &err);
}

static int compose_device_information(int argc, char **argv)
{
    const char *kind = "device-information";
    esim_cmd_opts opts = {0};
    const char *queries[MAX_QUERIES];
    size_t n = 0;
    static const cli_option options[] = {
        COMMON_OPTION_TABLE, {"query", true, K_OWN}, {NULL, false, 0}};
    cli_parser p;
    cli_parser_init(&p, "compose device-information", options, argc, argv, 1);
    for (int id; (id = next_option(&p, &opts)) != CLI_END;) {
        if (id == CLI_ERROR)
            return CLI_EXIT_USAGE;
        if (n == MAX_QUERIES)
            return cli_usage_error("compose device-information: at most %d queries", MAX_QUERIES);
        queries[n++] = p.value;
    }
    if (n == 0)
        return cli_missing("compose device-information",
                           "--query (at least one, e.g. ServiceSubscriptions)");
    int status = refuse_binary_on_terminal(kind, &opts);
    if (status != CLI_EXIT_OK)
        return status;
    esim_cmd cmd;
    esim_error err = {{0}};
    esim_err rc = esim_cmd_device_information(queries, n, &opts, &cmd, &err);
    return rc == ESIM_OK ? write_command(kind, &cmd) : report(kind, rc, &err);
}

/* ---- dispatch --------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help; /* NULL: the kind prints its own help */
} compose_kind;

static const compose_kind kinds[] = {
    {"refresh-plans", compose_refresh_plans, refresh_help},
    {"erase", compose_erase, erase_help},
    {"install-profile", compose_install_profile, install_help},
    {"remove-profile", compose_remove_profile, remove_help},
    {"profile-list", compose_profile_list, list_help},
    {"device-information", compose_device_information, info_help},
    {"restrictions", cmd_compose_restrictions, NULL},
    {"windows-csp", cmd_compose_windows_csp, NULL},
};

int cmd_compose(int argc, char **argv)
{
    if (argc < 2) {
        fputs(compose_help, stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        fputs(compose_help, stdout);
        return CLI_EXIT_OK;
    }
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        if (strcmp(name, kinds[k].name) != 0)
            continue;
        if (kinds[k].help && cli_wants_help(argc - 1, argv + 1)) {
            fputs(kinds[k].help, stdout);
            return CLI_EXIT_OK;
        }
        return kinds[k].run(argc - 1, argv + 1);
    }
    return cli_usage_error("compose: unknown kind '%s'; one of refresh-plans, erase, "
                           "install-profile, remove-profile, profile-list, device-information, "
                           "restrictions, windows-csp (see `esim-mdm compose --help`)",
                           name);
}

int cmd_check(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(check_help, stdout);
        return CLI_EXIT_OK;
    }
    if (argc != 3) {
        fputs(check_help, stderr);
        return CLI_EXIT_USAGE;
    }
    const char *what = argv[1], *value = argv[2];
    esim_error err = {{0}};
    esim_err rc;
    if (strcmp(what, "eid") == 0) {
        if ((rc = esim_eid_validate(value, &err)) == ESIM_OK)
            printf("valid EID: %s\n", value);
    } else if (strcmp(what, "iccid") == 0) {
        if ((rc = esim_iccid_validate(value, &err)) == ESIM_OK)
            printf("valid ICCID: %s\n", value);
    } else if (strcmp(what, "activation-code") == 0) {
        esim_activation_code ac;
        if ((rc = esim_activation_code_parse(value, &ac, &err)) == ESIM_OK)
            printf("valid activation code\n"
                   "  SM-DP+ address:    %s\n"
                   "  matching ID:       %s\n"
                   "  SM-DP+ OID:        %s\n"
                   "  confirmation code: %s\n",
                   ac.smdp_address, ac.matching_id[0] ? ac.matching_id : "(none)",
                   ac.smdp_oid[0] ? ac.smdp_oid : "(none)",
                   ac.confirmation_code_required ? "required" : "not required");
    } else {
        return cli_usage_error("check: '%s' is not something I can check; use eid, iccid or "
                               "activation-code",
                               what);
    }
    if (rc != ESIM_OK) {
        fprintf(stderr, "esim-mdm: check %s: %s\n", what, err.msg[0] ? err.msg : esim_strerror(rc));
        return CLI_EXIT_USAGE;
    }
    return CLI_EXIT_OK;
}
