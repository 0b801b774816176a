/*
 * options.h — the one option parser of the esim-mdm command line. Every
 * subcommand reads its argv through it, so every one accepts the same forms
 * and reports a problem in the same words:
 *
 *   --name VALUE, --name=VALUE   an option that takes a value (the next word
 *                                is its value even when it starts with '-')
 *   --name                       a flag
 *   --nam                        any unambiguous prefix of a long name (an
 *                                exact name always wins), as getopt_long does
 *   WORD, -                      a positional argument, anywhere
 *   --                           everything after it is positional
 *
 * and on a problem prints one of these to stderr (through cli_usage_error,
 * so prefixed "esim-mdm: ") for the caller to exit 2:
 *
 *   CMD: unknown option '--x'; see `esim-mdm CMD --help`
 *   CMD: option --x needs a value; see `esim-mdm CMD --help`
 *   CMD: bad value 'V' for --x: WHAT; see `esim-mdm CMD --help`
 *   CMD: unexpected argument 'W'; see `esim-mdm CMD --help`
 *
 * and, for a required option that is not given (cli_missing()):
 *
 *   CMD: --x VALUE is required; see `esim-mdm CMD --help`
 */
#ifndef ESIM_CLI_OPTIONS_H
#define ESIM_CLI_OPTIONS_H

#include <stdbool.h>

typedef struct {
    const char *name; /* without the dashes: "server-url"; NULL ends a table */
    bool takes_value;
    int id; /* what cli_next() returns for it; >= 0 */
} cli_option;

/* cli_next() results besides an option's id. */
#define CLI_END (-1)   /* no more words */
#define CLI_ARG (-2)   /* a positional argument, in p->value */
#define CLI_ERROR (-3) /* a usage problem, already reported: exit CLI_EXIT_USAGE */

typedef struct {
    const char *cmd;           /* "compose erase": the subcommand, for messages */
    const cli_option *options; /* ends with a NULL name */
    int argc;
    char **argv;
    int next;                /* index of the next word */
    bool only_args;          /* "--" seen */
    const char *value;       /* the option's value (NULL for a flag), or the argument */
    const cli_option *match; /* the option matched last */
} cli_parser;

/* Reads argv[first..argc-1] (first = 1 after the subcommand's name). */
void cli_parser_init(cli_parser *p, const char *cmd, const cli_option *options, int argc,
                     char **argv, int first);

/* The next option (its id, value in p->value), positional argument (CLI_ARG),
 * CLI_END, or CLI_ERROR after reporting an unknown option, a missing value or
 * a value given to a flag. */
int cli_next(cli_parser *p);

/* Reports the value of the option matched last as malformed: |what| says what
 * a good one is ("a number from 1 to 64"). Returns CLI_EXIT_USAGE. */
int cli_bad_value(const cli_parser *p, const char *what);
/* The same for option --|name| with |value|, for checks made after parsing. */
int cli_bad_option_value(const char *cmd, const char *name, const char *value, const char *what);
/* Reports a positional argument the subcommand does not take. Returns CLI_EXIT_USAGE. */
int cli_unexpected(const char *cmd, const char *arg);
/* Reports a required option that was not given: |what| is the option as a
 * user would write it ("--tokens FILE"). Returns CLI_EXIT_USAGE. */
int cli_missing(const char *cmd, const char *what);
/* Reports an unknown option; for the few words a subcommand matches itself. */
int cli_unknown_option(const char *cmd, const char *arg);

/* Strict numbers: the whole word, within [lo, hi]. */
bool cli_parse_long(const char *s, long lo, long hi, long *out);
bool cli_parse_double(const char *s, double lo, double hi, double *out);

#endif
