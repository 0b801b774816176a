/*
 * cmd_pki.c — `esim-mdm pki`: creates the test PKI the simulator, the APNs
 * mock, the SM-DP+ simulator and the demo use (see esim_pki_create).
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "core/esim.h"

static const char pki_help[] =
    "usage: esim-mdm pki [--dir DIR]\n"
    "\n"
    "Creates a test PKI in DIR (default ./pki). Files that already exist are\n"
    "kept, so running it again changes nothing. Each NAME is NAME.pem + NAME.key:\n"
    "  ca         test root for TLS on loopback (signs server and push)\n"
    "  server     TLS server certificate for localhost, 127.0.0.1 and ::1\n"
    "  push       APNs MDM push certificate; its subject UID is the topic,\n"
    "             also written to push.topic\n"
    "  device-ca  device identity CA (stands in for SCEP)\n"
    "  ci         GSMA test CI, root of the eSIM chain (P-256)\n"
    "  eum        eUICC manufacturer certificate, signed by ci\n"
    "  dpauth     SM-DP+ authentication certificate, signed by ci\n"
    "  eim        eIM package-signing certificate (SGP.32, P-256), signed by ca\n"
    "\n"
    "These certificates are for tests and demos on one machine, never for\n"
    "production devices.\n"
    "\n"
    "example:\n"
    "  esim-mdm pki --dir /tmp/esim-pki && cat /tmp/esim-pki/push.topic\n";

int cmd_pki(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(pki_help, stdout);
        return CLI_EXIT_OK;
    }
    const char *dir = "pki";
    static const cli_option options[] = {{"dir", true, 'd'}, {NULL, false, 0}};
    cli_parser p;
    cli_parser_init(&p, "pki", options, argc, argv, 1);
    int c;
    while ((c = cli_next(&p)) != CLI_END) {
        if (c == 'd')
            dir = p.value;
        else if (c == CLI_ARG)
            return cli_unexpected("pki", p.value);
        else
            return CLI_EXIT_USAGE;
    }
    esim_error err = {{0}};
    if (esim_pki_create(dir, &err) != ESIM_OK) {
        fprintf(stderr, "esim-mdm pki: %s\n", err.msg);
        return CLI_EXIT_FAIL;
    }
    printf("test PKI ready in %s\n", dir);
    return CLI_EXIT_OK;
}
