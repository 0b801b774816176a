/*
 * options.c — the command line's one option parser and its four messages
 * (see options.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/options.h"

bool cli_wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
            return true;
        if (strcmp(argv[i], "--") == 0)
            break;
    }
    return false;
}

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("esim-mdm: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

void cli_parser_init(cli_parser *p, const char *cmd, const cli_option *options, int argc,
                     char **argv, int first)
{
    memset(p, 0, sizeof *p);
    p->cmd = cmd;
    p->options = options;
    p->argc = argc;
    p->argv = argv;
    p->next = first;
}

int cli_unknown_option(const char *cmd, const char *arg)
{
    return cli_usage_error("%s: unknown option '%s'; see `esim-mdm %s --help`", cmd, arg, cmd);
}

int cli_bad_option_value(const char *cmd, const char *name, const char *value, const char *what)
{
    return cli_usage_error("%s: bad value '%s' for --%s: %s; see `esim-mdm %s --help`", cmd, value,
                           name, what, cmd);
}

int cli_bad_value(const cli_parser *p, const char *what)
{
    return cli_bad_option_value(p->cmd, p->match ? p->match->name : "?", p->value ? p->value : "",
                                what);
}

int cli_unexpected(const char *cmd, const char *arg)
{
    return cli_usage_error("%s: unexpected argument '%s'; see `esim-mdm %s --help`", cmd, arg, cmd);
}

int cli_missing(const char *cmd, const char *what)
{
    return cli_usage_error("%s: %s is required; see `esim-mdm %s --help`", cmd, what, cmd);
}

/* The option called |name| (|len| bytes): an exact name, else the only one
 * it is a prefix of. NULL when none, or several, match. */
static const cli_option *find(const cli_option *options, const char *name, size_t len)
{
    const cli_option *found = NULL;
    int prefixes = 0;
    for (const cli_option *o = options; o->name; o++) {
        if (strncmp(o->name, name, len) != 0)
            continue;
        if (o->name[len] == '\0')
            return o;
        found = o;
        prefixes++;
    }
    return prefixes == 1 ? found : NULL;
}

int cli_next(cli_parser *p)
{
    p->value = NULL;
    p->match = NULL;
    if (p->next >= p->argc)
        return CLI_END;
    const char *word = p->argv[p->next++];
    if (p->only_args || word[0] != '-' || strcmp(word, "-") == 0) {
        p->value = word;
        return CLI_ARG;
    }
    if (strcmp(word, "--") == 0) {
        p->only_args = true;
        return cli_next(p);
    }
    if (word[1] != '-') { /* no short options */
        cli_unknown_option(p->cmd, word);
        return CLI_ERROR;
    }
    const char *name = word + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    const cli_option *o = len ? find(p->options, name, len) : NULL;
    if (!o) {
        cli_unknown_option(p->cmd, word);
        return CLI_ERROR;
    }
    p->match = o;
    if (!o->takes_value) {
        if (eq) {
            p->value = eq + 1;
            cli_bad_value(p, "it takes no value");
            return CLI_ERROR;
        }
        return o->id;
    }
    if (eq) {
        p->value = eq + 1;
    } else if (p->next < p->argc) {
        p->value = p->argv[p->next++];
    } else {
        cli_usage_error("%s: option --%s needs a value; see `esim-mdm %s --help`", p->cmd, o->name,
                        p->cmd);
        return CLI_ERROR;
    }
    return o->id;
}

bool cli_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool cli_parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || errno || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}
