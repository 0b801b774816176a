/* cmd_sim.c — placeholder until its area lands; replaced whole by its owner. */
#include <stdio.h>
#include "cli/cli.h"
int cmd_devsim(int argc, char **argv) { (void)argc; fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]); return CLI_EXIT_FAIL; }
int cmd_smdp(int argc, char **argv) { (void)argc; fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]); return CLI_EXIT_FAIL; }
