/* cmd_compose_policy.c — placeholder until its area lands; replaced whole by its owner. */
#include <stdio.h>
#include "cli/cli.h"
int cmd_compose_restrictions(int argc, char **argv) { (void)argc; fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]); return CLI_EXIT_FAIL; }
int cmd_compose_windows_csp(int argc, char **argv) { (void)argc; fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]); return CLI_EXIT_FAIL; }
