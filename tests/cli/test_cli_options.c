/*
 * test_cli_options.c — cli/options.c: every form an option can take, and the
 * one wording for an unknown option, a missing value, a malformed value, an
 * extra argument and a missing required option.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cli/cli.h"
#include "cli/options.h"

enum { SERVER = 10, SERVER_URL, JSON, DEVICES };

static const cli_option options[] = {
    {"server", true, SERVER}, {"server-url", true, SERVER_URL},
    {"json", false, JSON},    {"devices", true, DEVICES},
    {NULL, false, 0},
};

/* What the parser printed to stderr while |fn| ran. */
static char captured[1024];

static void capture_begin(int *saved)
{
    fflush(stderr);
    *saved = dup(STDERR_FILENO);
    FILE *f = tmpfile();
    assert_non_null(f);
    dup2(fileno(f), STDERR_FILENO);
    fclose(f); /* the descriptor dup2 made stays open */
}

static const char *capture_end(int saved)
{
    fflush(stderr);
    off_t len = lseek(STDERR_FILENO, 0, SEEK_CUR);
    lseek(STDERR_FILENO, 0, SEEK_SET);
    ssize_t n = read(STDERR_FILENO, captured, sizeof captured - 1);
    captured[n > 0 ? n : 0] = '\0';
    assert_true(len >= 0);
    dup2(saved, STDERR_FILENO);
    close(saved);
    return captured;
}

/* Parses |argv| (NULL-terminated, argv[0] = "cmd") to the end or the first
 * error; returns the ids seen, comma-separated, with values as id=value. */
static const char *parse(char **argv, char *out, size_t len)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    cli_parser p;
    cli_parser_init(&p, "cmd", options, argc, argv, 1);
    out[0] = '\0';
    for (int id; (id = cli_next(&p)) != CLI_END;) {
        char item[128];
        if (id == CLI_ERROR) {
            snprintf(item, sizeof item, "ERROR");
        } else if (id == CLI_ARG) {
            snprintf(item, sizeof item, "arg=%s", p.value);
        } else if (p.value) {
            snprintf(item, sizeof item, "%d=%s", id, p.value);
        } else {
            snprintf(item, sizeof item, "%d", id);
        }
        snprintf(out + strlen(out), len - strlen(out), "%s%s", out[0] ? "," : "", item);
        if (id == CLI_ERROR)
            break;
    }
    return out;
}

#define PARSE(...) parse((char *[]){"cmd", __VA_ARGS__, NULL}, buf, sizeof buf)

static void test_forms(void **state)
{
    (void)state;
    char buf[512];
    assert_string_equal(PARSE("--server", "a", "--json", "--devices=5"), "10=a,12,13=5");
    /* The next word is a value even when it looks like an option. */
    assert_string_equal(PARSE("--server", "--json"), "10=--json");
    assert_string_equal(PARSE("--server="), "10=");
    /* Positional words anywhere; "-" is one; after "--" everything is. */
    assert_string_equal(PARSE("x", "--json", "-", "--", "--json"), "arg=x,12,arg=-,arg=--json");
    /* An exact name wins over a longer one it prefixes; a unique prefix works. */
    assert_string_equal(PARSE("--server-url", "u", "--dev", "7", "--js"), "11=u,13=7,12");
}

static void test_unknown_option(void **state)
{
    (void)state;
    char buf[512];
    int saved;
    capture_begin(&saved);
    const char *r = PARSE("--json", "--bogus", "--server", "x");
    const char *err = capture_end(saved);
    assert_string_equal(r, "12,ERROR");
    assert_string_equal(err,
                        "esim-mdm: cmd: unknown option '--bogus'; see `esim-mdm cmd --help`\n");
    /* Short options, ambiguous prefixes and a bare "--=" are unknown too. */
    static const char *const bad[] = {"-x", "--ser", "--=v", "--jsonx"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        capture_begin(&saved);
        r = PARSE((char *)bad[k]);
        err = capture_end(saved);
        assert_string_equal(r, "ERROR");
        assert_non_null(strstr(err, "unknown option"));
    }
}

static void test_missing_and_bad_values(void **state)
{
    (void)state;
    char buf[512];
    int saved;
    capture_begin(&saved);
    const char *r = PARSE("--json", "--devices");
    const char *err = capture_end(saved);
    assert_string_equal(r, "12,ERROR");
    assert_string_equal(
        err, "esim-mdm: cmd: option --devices needs a value; see `esim-mdm cmd --help`\n");

    capture_begin(&saved);
    r = PARSE("--json=yes");
    err = capture_end(saved);
    assert_string_equal(r, "ERROR");
    assert_string_equal(err, "esim-mdm: cmd: bad value 'yes' for --json: it takes no value; see "
                             "`esim-mdm cmd --help`\n");

    char *argv[] = {"cmd", "--devices", "lots", NULL};
    cli_parser p;
    cli_parser_init(&p, "cmd", options, 3, argv, 1);
    assert_int_equal(cli_next(&p), DEVICES);
    long n;
    assert_false(cli_parse_long(p.value, 1, 10, &n));
    capture_begin(&saved);
    assert_int_equal(cli_bad_value(&p, "a number from 1 to 10"), CLI_EXIT_USAGE);
    err = capture_end(saved);
    assert_string_equal(err, "esim-mdm: cmd: bad value 'lots' for --devices: a number from 1 to "
                             "10; see `esim-mdm cmd --help`\n");

    capture_begin(&saved);
    assert_int_equal(cli_unexpected("cmd", "extra"), CLI_EXIT_USAGE);
    assert_int_equal(cli_missing("cmd", "--server URL"), CLI_EXIT_USAGE);
    err = capture_end(saved);
    assert_string_equal(err, "esim-mdm: cmd: unexpected argument 'extra'; see `esim-mdm cmd "
                             "--help`\nesim-mdm: cmd: --server URL is required; see `esim-mdm cmd "
                             "--help`\n");
}

static void test_numbers(void **state)
{
    (void)state;
    long n = 0;
    double x = 0;
    assert_true(cli_parse_long("42", 1, 64, &n));
    assert_int_equal(n, 42);
    assert_true(cli_parse_long("-3", -5, 5, &n));
    assert_false(cli_parse_long("", 0, 5, &n));
    assert_false(cli_parse_long("7x", 0, 10, &n));
    assert_false(cli_parse_long("65", 1, 64, &n));
    assert_false(cli_parse_long("99999999999999999999", 0, 1L << 62, &n));
    assert_true(cli_parse_double("0.25", 0, 1, &x));
    assert_true(x == 0.25);
    assert_false(cli_parse_double("nan", 0, 1, &x));
    assert_false(cli_parse_double("1.5", 0, 1, &x));
    assert_false(cli_parse_double("", 0, 1, &x));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forms),
        cmocka_unit_test(test_unknown_option),
        cmocka_unit_test(test_missing_and_bad_values),
        cmocka_unit_test(test_numbers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
