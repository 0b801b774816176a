/*
 * test_schema_extractor.c — scripts/extract-apple-schema.py is deterministic
 * and its committed output is current: re-run on the shared reference beside
 * the project ($ESIM_SOURCE_DIR/../shared/reference), it reproduces
 * tests/data/apple-schema.tsv byte for byte. Skips when that reference is
 * absent (the project must build and test with nothing beside it).
 */
#include <fcntl.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/esim.h"

extern char **environ;

#define PYTHON "/usr/bin/python3"

typedef struct {
    char dir[64];
    char script[1024];
    char reference[1024];
} fixture;

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    const char *src = getenv("ESIM_SOURCE_DIR");
    if (!fx || !src)
        return -1;
    snprintf(fx->script, sizeof fx->script, "%s/scripts/extract-apple-schema.py", src);
    snprintf(fx->reference, sizeof fx->reference, "%s/../shared/reference/apple-device-management",
             src);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/esim-schema-XXXXXX");
    if (!mkdtemp(fx->dir)) {
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

/* Removes the fixture's directory tree (it holds at most two levels). */
static void remove_tree(const char *path)
{
    char cmd_path[1200];
    const char *const sub[] = {"mdm/commands", "mdm/profiles", "mdm/checkin", "mdm"};
    const char *const files[] = {"out1.tsv", "out2.tsv", "log", "bad.tsv"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(cmd_path, sizeof cmd_path, "%s/%s", path, files[i]);
        unlink(cmd_path);
    }
    snprintf(cmd_path, sizeof cmd_path, "%s/schema/mdm/commands/device.esim.yaml", path);
    unlink(cmd_path);
    snprintf(cmd_path, sizeof cmd_path, "%s/schema/mdm/profiles/TopLevel.yaml", path);
    unlink(cmd_path);
    for (size_t i = 0; i < sizeof sub / sizeof sub[0]; i++) {
        snprintf(cmd_path, sizeof cmd_path, "%s/schema/%s", path, sub[i]);
        rmdir(cmd_path);
    }
    snprintf(cmd_path, sizeof cmd_path, "%s/schema", path);
    rmdir(cmd_path);
    rmdir(path);
}

static int teardown(void **state)
{
    fixture *fx = *state;
    remove_tree(fx->dir);
    free(fx);
    return 0;
}

/* Runs the extractor on |schema| writing |output|; returns its exit status. */
static int run_extractor(const fixture *fx, const char *schema, const char *output)
{
    char log[128];
    snprintf(log, sizeof log, "%s/log", fx->dir);
    char *argv[] = {(char *)PYTHON,
                    (char *)fx->script,
                    (char *)"--schema",
                    (char *)schema,
                    (char *)"--output",
                    (char *)output,
                    NULL};
    posix_spawn_file_actions_t fa;
    assert_int_equal(posix_spawn_file_actions_init(&fa), 0);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    pid_t pid;
    int rc = posix_spawn(&pid, PYTHON, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        fail_msg(PYTHON " cannot be started; scripts/install-deps.sh installs python3");
    int ws = 0;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
}

static void read_whole(const char *path, esim_buf *out)
{
    esim_error err = {{0}};
    if (esim_read_file(path, 8u << 20, out, &err) != ESIM_OK)
        fail_msg("%s", err.msg);
}

static void test_reproduces_committed_table(void **state)
{
    fixture *fx = *state;
    char mdm[1100];
    snprintf(mdm, sizeof mdm, "%s/mdm", fx->reference);
    if (!is_dir(mdm))
        skip(); /* no shared reference beside the project */
    char out1[128], out2[128], committed[1024];
    snprintf(out1, sizeof out1, "%s/out1.tsv", fx->dir);
    snprintf(out2, sizeof out2, "%s/out2.tsv", fx->dir);
    snprintf(committed, sizeof committed, "%s/apple-schema.tsv", getenv("ESIM_TEST_DATA"));
    assert_int_equal(run_extractor(fx, fx->reference, out1), 0);
    assert_int_equal(run_extractor(fx, fx->reference, out2), 0);

    esim_buf a = {0}, b = {0}, c = {0};
    read_whole(out1, &a);
    read_whole(out2, &b);
    read_whole(committed, &c);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    if (a.len != c.len || memcmp(a.data, c.data, a.len) != 0)
        fail_msg("tests/data/apple-schema.tsv is not what scripts/extract-apple-schema.py makes "
                 "from %s: re-run the script and commit the table",
                 fx->reference);
    esim_buf_free(&a);
    esim_buf_free(&b);
    esim_buf_free(&c);
}

/* The table follows the YAML: a changed type shows up, broken YAML fails. */
static void test_reads_the_yaml(void **state)
{
    fixture *fx = *state;
    char path[1200];
    snprintf(path, sizeof path, "%s/schema/mdm/commands", fx->dir);
    assert_int_equal(esim_mkdirs(path, 0700, NULL), ESIM_OK);
    snprintf(path, sizeof path, "%s/schema/mdm/commands/device.esim.yaml", fx->dir);
    static const char yaml_doc[] = "title: Refresh Cellular Plans Command\n"
                                   "payload:\n"
                                   "  requesttype: RefreshCellularPlans\n"
                                   "payloadkeys:\n"
                                   "- key: eSIMServerURL\n"
                                   "  type: <integer>\n"
                                   "  presence: optional\n"
                                   "  rangelist: [1, 2]\n";
    assert_int_equal(esim_write_file_atomic(path, yaml_doc, sizeof yaml_doc - 1, 0600, NULL),
                     ESIM_OK);
    char schema[128], out[128];
    snprintf(schema, sizeof schema, "%s/schema", fx->dir);
    snprintf(out, sizeof out, "%s/out1.tsv", fx->dir);
    assert_int_equal(run_extractor(fx, schema, out), 0);
    esim_buf table = {0};
    read_whole(out, &table);
    const char *text = (const char *)table.data;
    assert_non_null(strstr(text, "\ncommand\tRefreshCellularPlans\teSIMServerURL\tinteger\t"
                                 "optional\t1|2\t-\t-\n"));
    assert_non_null(strstr(text, "\n#absent\tmdm/profiles/com.apple.applicationaccess.yaml\n"));
    esim_buf_free(&table);

    /* A profile file: nested arrays of dictionaries, ANY keys, dates, reals,
     * iOS availability. */
    snprintf(path, sizeof path, "%s/schema/mdm/profiles", fx->dir);
    assert_int_equal(esim_mkdirs(path, 0700, NULL), ESIM_OK);
    snprintf(path, sizeof path, "%s/schema/mdm/profiles/TopLevel.yaml", fx->dir);
    static const char top_level[] = "payload:\n"
                                    "  payloadtype: TopLevel\n"
                                    "payloadkeys:\n"
                                    "- key: PayloadContent\n"
                                    "  type: <array>\n"
                                    "  presence: required\n"
                                    "  subkeys:\n"
                                    "  - key: PayloadContentItem\n"
                                    "    type: <dictionary>\n"
                                    "    subkeys:\n"
                                    "    - key: ANY\n"
                                    "      type: <any>\n"
                                    "      presence: required\n"
                                    "- key: RemovalDate\n"
                                    "  type: <date>\n"
                                    "- key: DurationUntilRemoval\n"
                                    "  supportedOS:\n"
                                    "    iOS:\n"
                                    "      introduced: '12.2'\n"
                                    "      supervised: true\n"
                                    "  type: <real>\n"
                                    "  presence: optional\n";
    assert_int_equal(esim_write_file_atomic(path, top_level, sizeof top_level - 1, 0600, NULL),
                     ESIM_OK);
    assert_int_equal(run_extractor(fx, schema, out), 0);
    read_whole(out, &table);
    text = (const char *)table.data;
    static const char *const want[] = {
        "\nprofile\tTopLevel\tPayloadContent\tarray\trequired\t-\t-\t-\n",
        "\nprofile\tTopLevel\tPayloadContent[]\tdictionary\t-\t-\t-\t-\n",
        "\nprofile\tTopLevel\tPayloadContent[]/ANY\tany\trequired\t-\t-\t-\n",
        "\nprofile\tTopLevel\tRemovalDate\tdate\toptional\t-\t-\t-\n",
        "\nprofile\tTopLevel\tDurationUntilRemoval\treal\toptional\t-\t12.2\ttrue\n",
        "\n#source\tmdm/profiles/TopLevel.yaml\t",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(text, want[i]))
            fail_msg("extractor output lacks '%s':\n%s", want[i], text);
    esim_buf_free(&table);

    /* An unknown type is an error, not a guess. */
    static const char odd_type[] = "payload:\n  payloadtype: TopLevel\npayloadkeys:\n"
                                   "- key: X\n  type: <blob>\n";
    assert_int_equal(esim_write_file_atomic(path, odd_type, sizeof odd_type - 1, 0600, NULL),
                     ESIM_OK);
    snprintf(out, sizeof out, "%s/bad.tsv", fx->dir);
    assert_int_not_equal(run_extractor(fx, schema, out), 0);
    assert_int_equal(access(out, F_OK), -1);
    snprintf(path, sizeof path, "%s/schema/mdm/profiles/TopLevel.yaml", fx->dir);
    unlink(path);
    snprintf(out, sizeof out, "%s/out1.tsv", fx->dir);
    snprintf(path, sizeof path, "%s/schema/mdm/commands/device.esim.yaml", fx->dir);

    /* Not YAML at all: the script says so and writes nothing. */
    static const char broken[] = "payload: [unclosed\n";
    assert_int_equal(esim_write_file_atomic(path, broken, sizeof broken - 1, 0600, NULL), ESIM_OK);
    snprintf(out, sizeof out, "%s/bad.tsv", fx->dir);
    assert_int_not_equal(run_extractor(fx, schema, out), 0);
    assert_int_equal(access(out, F_OK), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reproduces_committed_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reads_the_yaml, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
