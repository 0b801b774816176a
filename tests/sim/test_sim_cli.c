/*
 * test_sim_cli.c — the simulator's command line as a user meets it: `esim-mdm
 * smdp` with a manifest (good and bad) and its admin endpoint, `esim-mdm
 * devsim user-action` on a stopped simulator's device file under each
 * restriction, and usage errors with exit status 2.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "plist/esim_plist.h"
#include "tests/sim/sim_test.h"

static struct {
    char *dir;
    const char *bin;
    char pki[600];
    sim_pki *p;
} fx;

static int setup(void **state)
{
    (void)state;
    fx.bin = getenv("ESIM_MDM_BIN");
    if (!fx.bin || access(fx.bin, X_OK) != 0)
        return fprintf(stderr, "ESIM_MDM_BIN is not set\n"), -1;
    fx.dir = st_tempdir();
    snprintf(fx.pki, sizeof fx.pki, "%s/pki", fx.dir);
    return sim_pki_open(fx.pki, &fx.p, NULL) == ESIM_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    sim_pki_free(fx.p);
    st_rmrf(fx.dir);
    free(fx.dir);
    return 0;
}

/* Runs esim-mdm with |args| (NULL-terminated), stdout into |out|; returns the exit status. */
static int run_cli(esim_buf *out, const char *const *args)
{
    char *argv[32];
    size_t n = 0;
    argv[n++] = (char *)fx.bin;
    for (; *args && n < 31; args++)
        argv[n++] = (char *)*args;
    argv[n] = NULL;
    int p[2];
    if (pipe(p) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    esim_buf_reset(out);
    char buf[4096];
    ssize_t r;
    while ((r = read(p[0], buf, sizeof buf)) > 0)
        esim_buf_append(out, buf, (size_t)r);
    close(p[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *path, const char *text)
{
    assert_int_equal(esim_write_file_atomic(path, text, strlen(text), 0644, NULL), ESIM_OK);
}

static void test_usage_errors(void **state)
{
    (void)state;
    esim_buf out = {0};
    assert_int_equal(run_cli(&out, (const char *[]){"smdp", "--help", NULL}), 0);
    assert_non_null(strstr((const char *)out.data, "initiateAuthentication"));
    assert_int_equal(run_cli(&out, (const char *[]){"devsim", "--help", NULL}), 0);
    assert_non_null(strstr((const char *)out.data, "findmy-erase"));
    assert_int_equal(run_cli(&out, (const char *[]){"devsim", "--devices", "3", NULL}), 2);
    assert_int_equal(
        run_cli(&out, (const char *[]){"devsim", "--server", "http://127.0.0.1:1", "--apns-mock",
                                       "http://127.0.0.1:1", "--devices", "3", "--notnow-share",
                                       "1.5", NULL}),
        2);
    assert_int_equal(run_cli(&out, (const char *[]){"devsim", "--server", "ftp://x", "--apns-mock",
                                                    "http://127.0.0.1:1", "--devices", "3", "--pki",
                                                    fx.pki, NULL}),
                     2);
    assert_int_equal(run_cli(&out, (const char *[]){"devsim", "user-action", "--device", "X",
                                                    "reboot", "--data-dir", fx.dir, NULL}),
                     2);
    assert_int_equal(run_cli(&out, (const char *[]){"devsim", "user-action", "--device", "X",
                                                    "delete-esim", NULL}),
                     2);
    assert_int_equal(run_cli(&out, (const char *[]){"smdp", "--listen", "nowhere", NULL}), 2);
    /* Windows PCs: a count or a share, not both; a count within --devices;
     * the WNS mock's URL and the poll interval checked. */
    assert_int_equal(run_cli(&out, (const char *[]){"devsim", "--help", NULL}), 0);
    assert_non_null(strstr((const char *)out.data, "--windows-share"));
    assert_int_equal(
        run_cli(&out, (const char *[]){"devsim", "--server", "http://127.0.0.1:1", "--apns-mock",
                                       "http://127.0.0.1:1", "--devices", "3", "--windows-pcs", "1",
                                       "--windows-share", "0.5", NULL}),
        2);
    assert_int_equal(
        run_cli(&out, (const char *[]){"devsim", "--server", "http://127.0.0.1:1", "--apns-mock",
                                       "http://127.0.0.1:1", "--devices", "3", "--windows-pcs", "4",
                                       "--pki", fx.pki, NULL}),
        2);
    assert_int_equal(
        run_cli(&out, (const char *[]){"devsim", "--server", "http://127.0.0.1:1", "--apns-mock",
                                       "http://127.0.0.1:1", "--devices", "3", "--windows-share",
                                       "1.5", NULL}),
        2);
    assert_int_equal(
        run_cli(&out, (const char *[]){"devsim", "--server", "http://127.0.0.1:1", "--apns-mock",
                                       "http://127.0.0.1:1", "--devices", "3", "--windows-pcs", "1",
                                       "--wns-mock", "ftp://x", "--pki", fx.pki, NULL}),
        2);
    assert_int_equal(
        run_cli(&out, (const char *[]){"devsim", "--server", "http://127.0.0.1:1", "--apns-mock",
                                       "http://127.0.0.1:1", "--devices", "3", "--windows-poll-ms",
                                       "5", NULL}),
        2);
    assert_int_equal(
        run_cli(&out,
                (const char *[]){"devsim", "--server", "http://127.0.0.1:1", "--apns-mock",
                                 "http://127.0.0.1:1", "--devices", "3", "--windows-pcs", "1",
                                 "--smdp-resolve", "smdp.example.com", "--pki", fx.pki, NULL}),
        2);
    esim_buf_free(&out);
}

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    return esim_buf_append(userdata, ptr, size * nmemb) == ESIM_OK ? size * nmemb : 0;
}

static void test_manifest(void **state)
{
    (void)state;
    esim_buf out = {0};
    assert_int_equal(run_cli(&out, (const char *[]){"devsim", "manifest", "--devices", "3",
                                                    "--seed", "42", NULL}),
                     0);
    /* The manifest names exactly the EIDs the simulator will use, and the
     * SM-DP+ takes it as it is. */
    char udid[65], eid[33], line[200];
    sim_devsim_identity(42, 2, udid, eid);
    snprintf(line, sizeof line, "\n%s,", eid);
    assert_non_null(strstr((const char *)out.data, line));
    char path[700];
    snprintf(path, sizeof path, "%s/manifest.csv", fx.dir);
    write_file(path, (const char *)out.data);
    struct event_base *base = event_base_new();
    sim_smdp *s = NULL;
    sim_smdp_config cfg = {.pki = fx.p};
    assert_int_equal(sim_smdp_new(base, &cfg, &s, NULL), ESIM_OK);
    size_t added = 0;
    esim_error err;
    assert_int_equal(sim_smdp_load_csv(s, path, &added, &err), ESIM_OK);
    assert_int_equal(added, 3);
    sim_smdp_free(s);
    event_base_free(base);
    assert_int_equal(run_cli(&out, (const char *[]){"devsim", "manifest", NULL}), 2);
    esim_buf_free(&out);
}

static void test_smdp_cli(void **state)
{
    (void)state;
    char csv[700], bad[700], port_file[700], data[700];
    snprintf(csv, sizeof csv, "%s/orders.csv", fx.dir);
    snprintf(bad, sizeof bad, "%s/bad.csv", fx.dir);
    snprintf(port_file, sizeof port_file, "%s/smdp.port", fx.dir);
    snprintf(data, sizeof data, "%s/smdp-data", fx.dir);
    char e1[33], e2[33], i1[21], i2[21], text[400];
    st_eid(1, e1);
    st_eid(2, e2);
    st_iccid(1, i1);
    st_iccid(2, i2);
    snprintf(text, sizeof text, "eid,iccid,matching_id\n%s,%s\n%s,%s,M-2\n", e1, i1, e2, i2);
    write_file(csv, text);
    snprintf(text, sizeof text, "%s,%s\n%s,8912\n", e1, i1, e2);
    write_file(bad, text);
    esim_buf out = {0};
    assert_int_equal(run_cli(&out, (const char *[]){"smdp", "--pki", fx.pki, "--listen",
                                                    "127.0.0.1:0", "--orders", bad, NULL}),
                     2);
    /* An admin token file others may read is refused, naming the file; a
     * missing --admin-token-file is not made up. */
    char loose[700];
    snprintf(loose, sizeof loose, "%s/loose-token", fx.dir);
    write_file(loose, "s3cret\n");
    chmod(loose, 0644);
    assert_int_equal(
        run_cli(&out, (const char *[]){"smdp", "--pki", fx.pki, "--listen", "127.0.0.1:0",
                                       "--admin-token-file", loose, NULL}),
        2);
    snprintf(loose, sizeof loose, "%s/no-such-token", fx.dir);
    assert_int_equal(
        run_cli(&out, (const char *[]){"smdp", "--pki", fx.pki, "--listen", "127.0.0.1:0",
                                       "--admin-token-file", loose, NULL}),
        2);

    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        execl(fx.bin, fx.bin, "smdp", "--pki", fx.pki, "--listen", "127.0.0.1:0", "--orders", csv,
              "--port-file", port_file, "--data-dir", data, (char *)NULL);
        _exit(127);
    }
    esim_buf port = {0};
    for (int i = 0; i < 200 && esim_read_file(port_file, 64, &port, NULL) != ESIM_OK; i++)
        usleep(50000);
    assert_true(port.len > 0);
    char url[128];
    snprintf(url, sizeof url, "https://127.0.0.1:%d/admin/orders", atoi((const char *)port.data));
    /* The admin token the SM-DP+ made in the PKI directory (0600). */
    char tok_path[700], hdr[400];
    snprintf(tok_path, sizeof tok_path, "%s/smdp-admin-token", fx.pki);
    esim_buf tok = {0};
    assert_int_equal(esim_read_file(tok_path, 4096, &tok, NULL), ESIM_OK);
    struct stat tst;
    assert_int_equal(stat(tok_path, &tst), 0);
    assert_int_equal(tst.st_mode & 077, 0);
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %.*s",
             (int)strcspn((const char *)tok.data, "\n"), (const char *)tok.data);
    esim_buf_free(&tok);
    struct curl_slist *hl = curl_slist_append(NULL, hdr);
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_CAINFO, sim_pki_ca_file(fx.p));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    esim_buf_reset(&out);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_cleanup(c);
    curl_slist_free_all(hl);
    json_t *j = json_loadb((const char *)out.data, out.len, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(j, "total")), 2);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "counts"), "Released")),
                     2);
    json_decref(j);
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char saved[760];
    snprintf(saved, sizeof saved, "%s/orders.json", data);
    assert_int_equal(access(saved, R_OK), 0);
    esim_buf_free(&port);
    esim_buf_free(&out);
}

/* A stopped simulator's device: supervised iOS 18, an enabled eSIM, restrictions. */
static void make_device(const char *data_dir, const char *udid, unsigned n, const char *mod,
                        const char *preserve)
{
    char eid[33];
    st_eid(100 + n, eid);
    sim_device_spec spec = {.udid = udid, .eid = eid, .supervised = true, .os_version = "18.1"};
    sim_device *d = NULL;
    assert_int_equal(sim_device_new(fx.p, &spec, &d, NULL), ESIM_OK);
    sim_profile p = {0};
    st_iccid(100 + n, p.iccid);
    p.profile_class = SIM_CLASS_OPERATIONAL;
    sim_result r;
    assert_int_equal(sim_euicc_install(sim_device_euicc(d), &p, &r, NULL), ESIM_OK);
    assert_int_equal(sim_euicc_enable(sim_device_euicc(d), p.iccid), SIM_RES_OK);
    esim_policy pol = {0};
    esim_policy_set_word(&pol, "esim_modification", mod, NULL);
    esim_policy_set_word(&pol, "preserve_esim_on_erase", preserve, NULL);
    esim_profile_opts po = {.identifier = "com.example.policy"};
    esim_buf prof = {0};
    esim_cmd cmd = {0};
    assert_int_equal(esim_policy_to_profile(&pol, &po, NULL, &prof, NULL), ESIM_OK);
    assert_int_equal(esim_cmd_install_profile(prof.data, prof.len, NULL, &cmd, NULL), ESIM_OK);
    sim_cmd_outcome o;
    assert_int_equal(sim_device_handle_command(d, cmd.body.data, cmd.body.len, &o, NULL), ESIM_OK);
    sim_cmd_outcome_free(&o);
    esim_cmd_free(&cmd);
    esim_buf_free(&prof);
    char path[900];
    snprintf(path, sizeof path, "%s/devices", data_dir);
    esim_mkdirs(path, 0700, NULL);
    snprintf(path, sizeof path, "%s/devices/%s.json", data_dir, udid);
    assert_int_equal(sim_device_save(d, path, NULL), ESIM_OK);
    sim_device_free(d);
}

static void test_user_action_on_files(void **state)
{
    (void)state;
    char data[700];
    snprintf(data, sizeof data, "%s/devsim", fx.dir);
    make_device(data, "00008110-00000000000000A1", 1, "deny", "on");
    make_device(data, "00008110-00000000000000A2", 2, "allow", "off");
    esim_buf out = {0};
#define ACT(udid, action)                                                                          \
    run_cli(&out, (const char *[]){"devsim", "user-action", "--device", udid, action,              \
                                   "--data-dir", data, "--pki", fx.pki, NULL})
    assert_int_equal(ACT("00008110-00000000000000A1", "delete-esim"), 0);
    assert_true(strncmp((const char *)out.data, "refused:", 8) == 0);
    assert_non_null(strstr((const char *)out.data, "enabled"));
    assert_int_equal(ACT("00008110-00000000000000A1", "erase-all-content"), 0);
    assert_true(strncmp((const char *)out.data, "allowed:", 8) == 0);
    assert_non_null(strstr((const char *)out.data, "eSIM kept"));
    /* The erase removed the restrictions too, and the file says so: now delete is allowed. */
    assert_int_equal(ACT("00008110-00000000000000A1", "delete-esim"), 0);
    assert_true(strncmp((const char *)out.data, "allowed:", 8) == 0);
    assert_non_null(strstr((const char *)out.data, "eSIM: none"));

    assert_int_equal(ACT("00008110-00000000000000A2", "transfer-esim"), 0);
    assert_true(strncmp((const char *)out.data, "allowed:", 8) == 0);
    assert_int_equal(ACT("00008110-00000000000000A2", "transfer-esim"), 0);
    assert_true(strncmp((const char *)out.data, "refused:", 8) == 0); /* nothing left to transfer */
    assert_int_equal(ACT("00008110-00000000000000FF", "findmy-erase"), 2); /* no such device file */
#undef ACT
    esim_buf_free(&out);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_smdp_cli),
        cmocka_unit_test(test_manifest),
        cmocka_unit_test(test_user_action_on_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
