/*
 * cmd_campaign.c — `esim-mdm campaign`, `diagnose` and `import`: admin API
 * clients for eSIM roll-out campaigns. (`esim-mdm demo` lives in cmd_demo.c.)
 */
#include <stdio.h>

#include "cli/cli.h"

int cmd_campaign(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]);
    return CLI_EXIT_FAIL;
}

int cmd_diagnose(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]);
    return CLI_EXIT_FAIL;
}

int cmd_import(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]);
    return CLI_EXIT_FAIL;
}
