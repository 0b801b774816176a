/* cmd_service.c — placeholder until its area lands; replaced whole by its owner. */
#include <stdio.h>
#include "cli/cli.h"
int cmd_serve(int argc, char **argv) { (void)argc; fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]); return CLI_EXIT_FAIL; }
int cmd_enqueue(int argc, char **argv) { (void)argc; fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]); return CLI_EXIT_FAIL; }
int cmd_status(int argc, char **argv) { (void)argc; fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]); return CLI_EXIT_FAIL; }
int cmd_devices(int argc, char **argv) { (void)argc; fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]); return CLI_EXIT_FAIL; }
int cmd_cancel(int argc, char **argv) { (void)argc; fprintf(stderr, "esim-mdm %s: not built yet\n", argv[0]); return CLI_EXIT_FAIL; }
