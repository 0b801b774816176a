/* cmd_compose.c — placeholder until its area lands; replaced whole by its owner. */
#include <stdio.h>
#include "cli/cli.h"
int cmd_compose(int argc, char **argv) { (void)argc; fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]); return CLI_EXIT_FAIL; }
int cmd_check(int argc, char **argv) { (void)argc; fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]); return CLI_EXIT_FAIL; }
