/*
 * main.c — the esim-mdm program: finds the subcommand and hands over argv.
 * Everything a subcommand does lives in its own cmd_*.c file.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} subcommand;

static const subcommand subcommands[] = {
    {"compose", cmd_compose, "write an MDM command, profile or Windows CSP document to stdout"},
    {"check", cmd_check, "validate an EID, ICCID or activation code"},
    {"pki", cmd_pki, "create the test PKI (CA, push, device, eSIM CI/EUM/SM-DP+ certificates)"},
    {"serve", cmd_serve, "run the MDM service"},
    {"enqueue", cmd_enqueue, "queue a command for devices (admin API client)"},
    {"status", cmd_status, "show a command's per-device state (admin API client)"},
    {"devices", cmd_devices, "list enrolled devices (admin API client)"},
    {"cancel", cmd_cancel, "cancel a queued command for a device (admin API client)"},
    {"retire", cmd_retire, "retire a device that left the fleet (admin API client)"},
    {"audit", cmd_audit, "show the audit log of admin actions (admin API client)"},
    {"windows", cmd_windows,
     "eSIM operations and SyncML commands for Windows PCs (admin API client)"},
    {"push", cmd_push, "send MDM pushes to APNs from a token file"},
    {"apns-mock", cmd_apns_mock, "run a faithful APNs stand-in on loopback"},
    {"wns-mock", cmd_wns_mock, "run a WNS stand-in on loopback for simulated Windows PCs"},
    {"smdp", cmd_smdp, "run the SM-DP+ (operator download server) simulator"},
    {"devsim", cmd_devsim, "run simulated iOS devices with virtual eUICCs"},
    {"sim", cmd_sim, "attach a virtual eUICC to PC/SC as a card in vpcd (sim card)"},
    {"campaign", cmd_campaign, "create and follow eSIM roll-out campaigns"},
    {"iot", cmd_iot, "IoT eUICCs and their eIM packages (admin API client)"},
    {"diagnose", cmd_diagnose, "explain where one device stands and what to do next"},
    {"import", cmd_import, "import EID manifests and activation codes"},
    {"demo", cmd_demo, "run the whole system on this machine and roll eSIMs out"},
};

static void print_help(FILE *out)
{
    fputs("esim-mdm — an MDM command service for eSIM fleets\n\n"
          "usage: esim-mdm <command> [options]\n"
          "       esim-mdm <command> --help\n\n"
          "commands:\n",
          out);
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        fprintf(out, "  %-10s %s\n", subcommands[i].name, subcommands[i].summary);
    fputs("\nStart with `esim-mdm demo`, or `esim-mdm compose refresh-plans --help`.\n", out);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_help(stderr);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_help(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        puts("esim-mdm " ESIM_VERSION);
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        if (strcmp(argv[1], subcommands[i].name) == 0)
            return subcommands[i].run(argc - 1, argv + 1);
    return cli_usage_error("unknown command '%s'; `esim-mdm --help` lists them", argv[1]);
}
