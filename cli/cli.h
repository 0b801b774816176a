/*
 * cli.h — the esim-mdm command line: one program, subcommands. Each area owns
 * one file (cmd_compose.c, cmd_apns.c, ...) with the entry points below;
 * main.c only dispatches. Every entry point gets argv with argv[0] = the
 * subcommand name and returns the process exit status:
 *   0 success, 1 failure at run time (network, store), 2 bad input/usage.
 */
#ifndef ESIM_CLI_CLI_H
#define ESIM_CLI_CLI_H

#include <stdbool.h>
#include <stdio.h>

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

/* cmd_compose.c */
int cmd_compose(int argc, char **argv);
int cmd_check(int argc, char **argv);
/* cmd_compose_policy.c: `compose restrictions` and `compose windows-csp`,
 * reached through cmd_compose (argv[0] = "restrictions" / "windows-csp") */
int cmd_compose_restrictions(int argc, char **argv);
int cmd_compose_windows_csp(int argc, char **argv);
/* cmd_pki.c */
int cmd_pki(int argc, char **argv);
/* cmd_apns.c */
int cmd_push(int argc, char **argv);
int cmd_apns_mock(int argc, char **argv);
int cmd_wns_mock(int argc, char **argv);
/* cmd_service.c */
int cmd_serve(int argc, char **argv);
int cmd_enqueue(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_devices(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
int cmd_retire(int argc, char **argv);
int cmd_audit(int argc, char **argv);
int cmd_windows(int argc, char **argv); /* windows esim|command|status */
/* cmd_sim.c */
int cmd_devsim(int argc, char **argv);
int cmd_smdp(int argc, char **argv);
/* cmd_card.c: `sim card` */
int cmd_sim(int argc, char **argv);
/* cmd_campaign.c */
int cmd_demo(int argc, char **argv);
int cmd_campaign(int argc, char **argv);
int cmd_diagnose(int argc, char **argv);
int cmd_iot(int argc, char **argv);
int cmd_import(int argc, char **argv);

/* The helpers below live in options.c, with the option parser (options.h). */
/* True when argv holds -h or --help (anywhere after argv[0]). */
bool cli_wants_help(int argc, char **argv);
/* Prints "esim-mdm: <message>" to stderr and returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* loop.c: a new event loop for a long-running subcommand (epoll changes
 * batched per loop pass); NULL when out of memory. */
struct event_base;
struct event_base *cli_event_base_new(void);

#endif
