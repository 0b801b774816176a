/*
 * svc_harness.c — the service integration tests' shared scaffolding: a real
 * service on loopback in its own thread, a scripted device that signs its
 * bodies with CMS (SHA-256 or SHA-1, leaf certificate only), API helpers.
 */
#include <ctype.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <openssl/cms.h>

#include "cli/cli.h"
#include "campaign/campaign.h"
#include "tests/service/omadm_readers.h"
#include "service/svc_harness.h"

void harness_env_setup(harness_env *env)
{
    memset(env, 0, sizeof *env);
    snprintf(env->dir, sizeof env->dir, "/tmp/esim-svc-test-XXXXXX");
    assert_non_null(mkdtemp(env->dir));
    snprintf(env->pki, sizeof env->pki, "%s/pki", env->dir);
    esim_error e;
    if (esim_pki_create(env->pki, &e) != ESIM_OK)
        fail_msg("pki: %s", e.msg);
    snprintf(env->device_ca, sizeof env->device_ca, "%s/device-ca.pem", env->pki);
    snprintf(env->topic, sizeof env->topic, "com.apple.mgmt.External.test");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN); /* as every embedder of the service must */
}

void harness_env_teardown(harness_env *env)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", env->dir);
    assert_int_equal(system(cmd), 0);
    curl_global_cleanup();
}

bool harness_store_is_sqlite(void)
{
    const char *spec = getenv("ESIM_TEST_STORE");
    return !spec || !*spec || strncmp(spec, "sqlite:", 7) == 0;
}

bool harness_store_is_pgsql(void)
{
    const char *spec = getenv("ESIM_TEST_STORE");
    return spec &&
           (strncmp(spec, "postgres://", 11) == 0 || strncmp(spec, "postgresql://", 13) == 0);
}

/* The name this process's own sessions go by: the lock waits a test counts
 * are the ones they cause (the cluster is shared by tests running at once,
 * whose sessions wait on locks of their own). */
static void harness_pg_app_name(char *out, size_t len)
{
    snprintf(out, len, "esim-test-%ld", (long)getpid());
}

PGconn *harness_pg_connect(const char *spec)
{
    PGconn *c = PQconnectdb(spec);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    char name[64], sql[128];
    harness_pg_app_name(name, sizeof name);
    snprintf(sql, sizeof sql, "SET application_name = '%s'", name);
    harness_pg_exec(c, sql);
    return c;
}

void harness_pg_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

long harness_pg_await_lock_waits(PGconn *watch, long want, int tries)
{
    /* The statements waiting, directly or behind another waiter, on a
     * lock one of this process's sessions holds. */
    char name[64], sql[700];
    harness_pg_app_name(name, sizeof name);
    snprintf(sql, sizeof sql,
             "WITH RECURSIVE held(pid) AS (SELECT pid FROM pg_stat_activity WHERE "
             "application_name = '%s' UNION SELECT a.pid FROM pg_stat_activity a JOIN held h "
             "ON h.pid = ANY(pg_blocking_pids(a.pid))) SELECT count(*) FROM pg_stat_activity s "
             "JOIN held USING (pid) WHERE s.wait_event_type = 'Lock' AND s.query NOT LIKE "
             "'%%pg_stat_activity%%'",
             name);
    long waiting = 0;
    for (int i = 0; i < tries; i++) {
        PGresult *r = PQexec(watch, sql);
        assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
        waiting = strtol(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        if (waiting >= want)
            break;
        usleep(20000);
    }
    return waiting;
}

/* ESIM_TEST_STORE (a spec with "{n}", as test_store takes): the store of the
 * service whose data dir is |data_dir| in this process, the same spec for
 * the same data dir (a restart finds its store again), a fresh one for
 * another. NULL: the default, <data_dir>/esim-mdm.db. */
static const char *test_store_spec(const char *data_dir)
{
    static char dirs[256][320], specs[256][600];
    static size_t used;
    const char *tmpl = getenv("ESIM_TEST_STORE");
    const char *at = tmpl ? strstr(tmpl, "{n}") : NULL;
    if (!at)
        return NULL;
    for (size_t i = 0; i < used; i++)
        if (strcmp(dirs[i], data_dir) == 0)
            return specs[i];
    if (used == sizeof specs / sizeof specs[0])
        fail_msg("more than %zu services in one test", used);
    snprintf(dirs[used], sizeof dirs[used], "%s", data_dir);
    snprintf(specs[used], sizeof specs[used], "%.*s%d_%zu%s", (int)(at - tmpl), tmpl, (int)getpid(),
             used + 1, at + 3);
    return specs[used++];
}

long harness_store_query(const esim_service_config *cfg, const char *sql, char *out, size_t out_len)
{
    if (out_len)
        out[0] = '\0';
    long v = -1;
    if (cfg->store && *cfg->store && strncmp(cfg->store, "sqlite:", 7) != 0) {
        PGconn *c = PQconnectdb(cfg->store);
        assert_int_equal(PQstatus(c), CONNECTION_OK);
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            char msg[600];
            snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
            PQclear(r);
            PQfinish(c);
            fail_msg("%s: %s", sql, msg);
        }
        if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) {
            v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
            if (out_len)
                snprintf(out, out_len, "%s", PQgetvalue(r, 0, 0));
        }
        PQclear(r);
        PQfinish(c);
        return v;
    }
    char path[400];
    if (cfg->store && strncmp(cfg->store, "sqlite:", 7) == 0)
        snprintf(path, sizeof path, "%s", cfg->store + 7);
    else
        snprintf(path, sizeof path, "%s/esim-mdm.db", cfg->data_dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
        v = (long)sqlite3_column_int64(st, 0);
        if (out_len)
            snprintf(out, out_len, "%s", (const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

void harness_config(const harness_env *env, const char *name, esim_service_config *cfg,
                    char data_dir[320])
{
    esim_service_config_init(cfg);
    snprintf(data_dir, 320, "%s/%s", env->dir, name);
    cfg->store = test_store_spec(data_dir);
    cfg->listen = "127.0.0.1:0";
    cfg->data_dir = data_dir;
    cfg->api_token = TEST_TOKEN;
    cfg->device_auth = ESIM_DEVICE_AUTH_SIGNATURE;
    cfg->device_ca_path = env->device_ca;
    cfg->tick_ms = 100;
    /* PostgreSQL: the store worker pool's size (a control run with 0). */
    if (getenv("ESIM_TEST_STORE_POOL"))
        cfg->store_pool = atoi(getenv("ESIM_TEST_STORE_POOL"));
}

static void *service_thread(void *arg)
{
    test_service *ts = arg;
    event_base_dispatch(ts->base);
    return NULL;
}

/* Every message and fragment a service of the tests reads is read again both
 * ways (tests/service/omadm_readers.h): a difference aborts the test. */
static atomic_size_t syncml_read[2]; /* by libxml2, by the strict reader */

/* Replaces the library's weak omadm_parse_observe: every SyncML message
 * and queued command the services of these tests read is read both ways. */
void omadm_parse_observe(const void *body, size_t len, const char *uuid)
{
    char why[512];
    int r = omadm_readers_check(body, len, uuid, why, sizeof why);
    if (r < 0) {
        fprintf(stderr, "svc_harness: the SyncML readers differ on %s: %s\n%.*s\n",
                uuid ? "a queued command" : "a message", why, (int)len, (const char *)body);
        abort();
    }
    atomic_fetch_add(&syncml_read[r], 1);
}

void harness_syncml_counts(size_t *plain, size_t *libxml2)
{
    *plain = atomic_load(&syncml_read[1]);
    *libxml2 = atomic_load(&syncml_read[0]);
}

void harness_start(test_service *ts, const esim_service_config *cfg)
{
    if (!ts->base)
        ts->base = cli_event_base_new(); /* as `esim-mdm serve` */
    assert_non_null(ts->base);
    esim_error e = {{0}};
    if (esim_service_new(ts->base, cfg, &ts->svc, &e) != ESIM_OK)
        fail_msg("service: %s", e.msg);
    /* As `esim-mdm serve` does: campaigns on top of the service. */
    if (ts->attach)
        ts->attach(ts->svc, ts->attach_arg);
    else if (esim_campaigns_attach(ts->svc, cfg->data_dir, &e) != ESIM_OK)
        fail_msg("campaigns: %s", e.msg);
    snprintf(ts->url, sizeof ts->url, "%s", esim_service_url(ts->svc));
    assert_int_equal(pthread_create(&ts->thread, NULL, service_thread, ts), 0);
}

void harness_stop(test_service *ts)
{
    esim_service_request_stop(ts->svc);
    pthread_join(ts->thread, NULL);
    esim_service_free(ts->svc);
    if (ts->before_base_free)
        ts->before_base_free(ts->before_arg);
    event_base_free(ts->base);
    ts->svc = NULL;
    ts->base = NULL;
}

/* ---- the scripted device ---------------------------------------------------------- */

void device_new(test_device *d, const harness_env *env, const char *udid, const char *base_url)
{
    memset(d, 0, sizeof *d);
    snprintf(d->udid, sizeof d->udid, "%s", udid);
    snprintf(d->topic, sizeof d->topic, "%s", env->topic);
    d->base_url = base_url;
    esim_cert ca = {0};
    esim_error e;
    if (esim_pki_load(env->pki, "device-ca", &ca, &e) != ESIM_OK)
        fail_msg("device-ca: %s", e.msg);
    /* As SCEP issues them: RSA, no extended key usage. */
    esim_cert_spec spec = {.common_name = udid, .key_type = ESIM_KEY_RSA2048, .days = 30};
    if (esim_cert_issue(&spec, &ca, &d->identity, &e) != ESIM_OK)
        fail_msg("identity: %s", e.msg);
    esim_cert_clear(&ca);
    d->conn = curl_easy_init();
    assert_non_null(d->conn);
}

void device_free(test_device *d)
{
    free(d->last_signature);
    d->last_signature = NULL;
    esim_cert_clear(&d->identity);
    if (d->conn)
        curl_easy_cleanup(d->conn);
    d->conn = NULL;
}

void device_reconnect(test_device *d)
{
    curl_easy_cleanup(d->conn);
    d->conn = curl_easy_init();
    assert_non_null(d->conn);
}

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    if (userdata)
        esim_buf_append(userdata, ptr, size * nmemb);
    return size * nmemb;
}

/* CMS detached signature, base64: SHA-1 signatures are made the way older
 * devices make them (signer certificate only, no chain). */
static char *sign_body(const test_device *d, const esim_cert *signer, sign_mode mode,
                       const void *body, size_t len)
{
    BIO *in = BIO_new_mem_buf(body, (int)len);
    CMS_ContentInfo *cms = NULL;
    unsigned flags = CMS_DETACHED | CMS_BINARY | CMS_NOSMIMECAP;
    if (mode == SIGN_SHA1 || mode == SIGN_MD5) {
        cms = CMS_sign(NULL, NULL, NULL, NULL, flags | CMS_PARTIAL);
        assert_non_null(cms);
        assert_non_null(CMS_add1_signer(cms, signer->x509, signer->key,
                                        mode == SIGN_MD5 ? EVP_md5() : EVP_sha1(), flags));
        assert_int_equal(CMS_final(cms, in, NULL, flags), 1);
    } else if (d->sign_offset_s || d->no_signing_time) {
        unsigned f = flags | (d->no_signing_time ? CMS_NOATTR : 0);
        cms = CMS_sign(NULL, NULL, NULL, NULL, f | CMS_PARTIAL);
        assert_non_null(cms);
        CMS_SignerInfo *si = CMS_add1_signer(cms, signer->x509, signer->key, EVP_sha256(), f);
        assert_non_null(si);
        if (!d->no_signing_time) {
            ASN1_TIME *t = X509_gmtime_adj(NULL, d->sign_offset_s);
            assert_non_null(t);
            assert_int_equal(CMS_signed_add1_attr_by_NID(si, NID_pkcs9_signingTime, t->type, t, -1),
                             1);
            ASN1_TIME_free(t);
        }
        assert_int_equal(CMS_final(cms, in, NULL, f), 1);
    } else {
        STACK_OF(X509) *extra = sk_X509_new_null();
        assert_non_null(extra);
        for (size_t i = 0; i < d->n_extra_certs; i++)
            assert_true(sk_X509_push(extra, d->extra_certs[i]) > 0);
        cms = CMS_sign(signer->x509, signer->key, extra, in, flags);
        sk_X509_free(extra);
        assert_non_null(cms);
    }
    unsigned char *der = NULL;
    int der_len = i2d_CMS_ContentInfo(cms, &der);
    assert_true(der_len > 0);
    esim_buf b64 = {0};
    assert_int_equal(esim_base64_encode(der, (size_t)der_len, &b64), ESIM_OK);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    size_t n;
    return (char *)esim_buf_steal(&b64, &n);
}

/* PUT |body| to |d|'s /mdm on connection |c| with |signature| (NULL:
 * unsigned), as a device sends it; |interface| (NULL: any) is curl's
 * source address. Returns the HTTP status. */
static long put_mdm(test_device *d, CURL *c, const char *interface, const char *signature,
                    const void *body, size_t len, esim_buf *reply)
{
    char url[256];
    snprintf(url, sizeof url, "%s/mdm", d->base_url);
    struct curl_slist *h = NULL;
    if (signature) {
        esim_buf line = {0};
        esim_buf_printf(&line, "Mdm-Signature: %s", signature);
        h = curl_slist_append(h, (const char *)line.data);
        esim_buf_free(&line);
    }
    /* Real devices often send results with no Content-Type at all. */
    h = curl_slist_append(h, "Content-Type:");
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    if (interface)
        curl_easy_setopt(c, CURLOPT_INTERFACE, interface);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, reply);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    if (d->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, d->ca_file);
    if (d->client_cert) {
        curl_easy_setopt(c, CURLOPT_SSLCERT, d->client_cert);
        curl_easy_setopt(c, CURLOPT_SSLKEY, d->client_key);
    }
    CURLcode res = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    if (res != CURLE_OK)
        fail_msg("PUT /mdm: %s", curl_easy_strerror(res));
    return status;
}

static long put_with(test_device *d, const esim_cert *signer, sign_mode mode, const void *sign_data,
                     size_t sign_len, const void *body, size_t len, esim_buf *reply)
{
    char *sig = NULL;
    if (mode != SIGN_NONE) {
        sig = sign_body(d, signer, mode, sign_data, sign_len);
        free(d->last_signature);
        d->last_signature = strdup(sig);
    }
    curl_easy_reset(d->conn);
    long status = put_mdm(d, d->conn, NULL, sig, body, len, reply);
    free(sig);
    return status;
}

long device_put_raw(test_device *d, const char *signature, const void *body, size_t len,
                    esim_buf *reply)
{
    CURL *c = curl_easy_init();
    assert_non_null(c);
    /* A connection of its own, from the replayer's own address. */
    long status = put_mdm(d, c, "host!127.0.0.2", signature, body, len, reply);
    curl_easy_cleanup(c);
    return status;
}

long device_put(test_device *d, const void *body, size_t len, esim_buf *reply)
{
    return put_with(d, &d->identity, d->sign, body, len, body, len, reply);
}

long device_put_mismatched(test_device *d, const void *signed_body, size_t signed_len,
                           const void *body, size_t len)
{
    return put_with(d, &d->identity, SIGN_SHA256, signed_body, signed_len, body, len, NULL);
}

long device_put_signed_by(test_device *d, const esim_cert *signer, const void *body, size_t len,
                          esim_buf *reply)
{
    return put_with(d, signer, SIGN_SHA256, body, len, body, len, reply);
}

void harness_next_second(void)
{
    time_t start = time(NULL);
    while (time(NULL) == start) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void device_enroll(test_device *d)
{
    esim_buf b = {0};
    esim_authenticate_info info = {.udid = d->udid,
                                   .topic = d->topic,
                                   .os_version = "18.1",
                                   .serial_number = "F2LXTEST",
                                   .product_name = "iPhone17,1"};
    assert_int_equal(esim_msg_build_authenticate(&info, &b, NULL), ESIM_OK);
    assert_int_equal(device_put(d, b.data, b.len, NULL), 200);
    esim_buf_free(&b);
    unsigned char token[32];
    for (size_t i = 0; i < sizeof token; i++)
        token[i] = (unsigned char)(i * 7 + (unsigned char)d->udid[0]);
    assert_int_equal(
        esim_msg_build_token_update(d->udid, d->topic, token, sizeof token, "magic-1234", &b, NULL),
        ESIM_OK);
    assert_int_equal(device_put(d, b.data, b.len, NULL), 200);
    esim_buf_free(&b);
}

long device_result_ex(test_device *d, esim_status st, const char *uuid,
                      const esim_error_chain_entry *chain, size_t n_chain, plist_t extra,
                      esim_cmd_parsed *next)
{
    esim_buf b = {0}, reply = {0};
    esim_error e;
    if (esim_msg_build_result(d->udid, st, uuid, chain, n_chain, extra,
                              d->binary ? ESIM_PLIST_BINARY : ESIM_PLIST_XML, &b, &e) != ESIM_OK)
        fail_msg("build result: %s", e.msg);
    long status = device_put(d, b.data, b.len, &reply);
    if (next) {
        memset(next, 0, sizeof *next);
        if (status == 200 && reply.len) {
            if (esim_cmd_parse(reply.data, reply.len, NULL, next, &e) != ESIM_OK)
                fail_msg("reply is not a command: %s", e.msg);
        }
    }
    esim_buf_free(&b);
    esim_buf_free(&reply);
    return status;
}

long device_result(test_device *d, esim_status st, const char *uuid, esim_cmd_parsed *next)
{
    return device_result_ex(d, st, uuid, NULL, 0, NULL, next);
}

/* ---- API helpers ---------------------------------------------------------------------- */

static const char *api_ca;

void harness_set_api_ca(const char *ca_file)
{
    api_ca = ca_file;
}

bool harness_use_system_store(const char *dir, const char *ca_file)
{
    if (!ca_file) {
        unsetenv("SSL_CERT_FILE");
        unsetenv("SSL_CERT_DIR");
        return true;
    }
    char empty_dir[700];
    snprintf(empty_dir, sizeof empty_dir, "%s/empty-certs", dir);
    return mkdir(empty_dir, 0755) == 0 && setenv("SSL_CERT_FILE", ca_file, 1) == 0 &&
           setenv("SSL_CERT_DIR", empty_dir, 1) == 0;
}

long api_call(const char *base_url, const char *token, const char *method, const char *path,
              const char *body, const char *content_type, json_t **out)
{
    CURL *c = curl_easy_init();
    assert_non_null(c);
    char url[1024];
    snprintf(url, sizeof url, "%s%s", base_url, path);
    struct curl_slist *h = NULL;
    char line[256];
    if (token) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", token);
        h = curl_slist_append(h, line);
    }
    snprintf(line, sizeof line, "Content-Type: %s",
             content_type ? content_type : "application/json");
    h = curl_slist_append(h, line);
    esim_buf reply = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &reply);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    if (api_ca)
        curl_easy_setopt(c, CURLOPT_CAINFO, api_ca);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    CURLcode res = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (res != CURLE_OK)
        fail_msg("%s %s: %s", method, path, curl_easy_strerror(res));
    if (out) {
        *out = reply.len ? json_loadb((const char *)reply.data, reply.len, 0, NULL) : NULL;
        if (reply.len && !*out)
            fail_msg("%s %s: reply is not JSON: %s", method, path, (const char *)reply.data);
    }
    esim_buf_free(&reply);
    return status;
}

void api_enqueue_refresh(const char *base_url, const char *udid, const char *server, char uuid[128])
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\"],\"command\":{\"request_type\":\"RefreshCellularPlans\","
             "\"esim_server_url\":\"%s\"}}",
             udid, server);
    json_t *r = NULL;
    assert_int_equal(api_call(base_url, TEST_TOKEN, "POST", "/v1/commands", body, NULL, &r), 200);
    const char *u = json_string_value(json_object_get(r, "command_uuid"));
    assert_non_null(u);
    snprintf(uuid, 128, "%s", u);
    json_decref(r);
}

void api_entry_state(const char *base_url, const char *uuid, const char *udid, char state[32],
                     int *attempts, int *not_now)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/commands/%s", uuid);
    json_t *r = NULL;
    assert_int_equal(api_call(base_url, TEST_TOKEN, "GET", path, NULL, NULL, &r), 200);
    json_t *e = json_object_get(json_object_get(r, "devices"), udid);
    assert_non_null(e);
    snprintf(state, 32, "%s", json_string_value(json_object_get(e, "state")));
    if (attempts)
        *attempts = (int)json_integer_value(json_object_get(e, "attempts"));
    if (not_now)
        *not_now = (int)json_integer_value(json_object_get(e, "not_now_count"));
    json_decref(r);
}

bool api_device_ready(const char *base_url, const char *udid)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/devices/%s", udid);
    json_t *d = NULL;
    long code = api_call(base_url, TEST_TOKEN, "GET", path, NULL, NULL, &d);
    const char *st = json_string_value(json_object_get(json_object_get(d, "push"), "state"));
    bool ok = code == 200 && json_string_value(json_object_get(d, "eid")) && st &&
              strcmp(st, "valid") == 0;
    json_decref(d);
    return ok;
}

long long api_metric(const char *base_url, const char *series)
{
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "%s/metrics", base_url);
    esim_buf reply = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &reply);
    if (api_ca)
        curl_easy_setopt(c, CURLOPT_CAINFO, api_ca);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_cleanup(c);
    long long v = -1;
    size_t sl = strlen(series);
    for (char *line = (char *)reply.data; line && *line;) {
        char *nl = strchr(line, '\n');
        if (strncmp(line, series, sl) == 0 && line[sl] == ' ')
            v = strtoll(line + sl + 1, NULL, 10);
        line = nl ? nl + 1 : NULL;
    }
    esim_buf_free(&reply);
    return v;
}

/* ---- a webhook receiver writing each body as one line of a file ---- */

static void on_hook(struct evhttp_request *req, void *arg)
{
    hook_receiver *rc = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    char *body = calloc(1, len + 1);
    evbuffer_remove(in, body, len);
    fprintf(rc->out, "%s\n", body);
    fflush(rc->out);
    rc->requests++;
    free(body);
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void *receiver_thread(void *arg)
{
    hook_receiver *rc = arg;
    event_base_dispatch(rc->base);
    return NULL;
}

static void on_receiver_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopexit(arg, NULL);
}

int hook_receiver_start(hook_receiver *rc, const char *file)
{
    memset(rc, 0, sizeof *rc);
    rc->out = fopen(file, "w");
    assert_non_null(rc->out);
    rc->base = event_base_new();
    rc->http = evhttp_new(rc->base);
    evhttp_set_gencb(rc->http, on_hook, rc);
    struct evhttp_bound_socket *sock = evhttp_bind_socket_with_handle(rc->http, "127.0.0.1", 0);
    assert_non_null(sock);
    struct sockaddr_in sin;
    socklen_t sl = sizeof sin;
    getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&sin, &sl);
    assert_int_equal(pipe(rc->stop_pipe), 0);
    rc->stop_ev = event_new(rc->base, rc->stop_pipe[0], EV_READ, on_receiver_stop, rc->base);
    event_add(rc->stop_ev, NULL);
    pthread_create(&rc->thread, NULL, receiver_thread, rc);
    return ntohs(sin.sin_port);
}

void hook_receiver_stop(hook_receiver *rc)
{
    assert_int_equal(write(rc->stop_pipe[1], "x", 1), 1);
    pthread_join(rc->thread, NULL);
    close(rc->stop_pipe[0]);
    close(rc->stop_pipe[1]);
    event_free(rc->stop_ev);
    evhttp_free(rc->http);
    event_base_free(rc->base);
    fclose(rc->out);
}

void harness_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

pid_t harness_serve(const char *bin, const char *config, const char *port_file, const char *log,
                    char url[64])
{
    unlink(port_file);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(devnull, 1);
        dup2(fd >= 0 ? fd : devnull, 2);
        execl(bin, bin, "serve", "--config", config, (char *)NULL);
        _exit(127);
    }
    snprintf(url, 64, "http://127.0.0.1:%d", harness_await_port(port_file, pid, log));
    return pid;
}

int harness_await_port(const char *port_file, pid_t pid, const char *log)
{
    for (int i = 0; i < 1200; i++) {
        FILE *f = fopen(port_file, "r");
        int port = 0;
        if (f) {
            if (fscanf(f, "%d", &port) != 1)
                port = 0;
            fclose(f);
        }
        if (port > 0)
            return port;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid)
            fail_msg("esim-mdm serve exited with %d (see %s)", status, log ? log : "its stderr");
        usleep(25 * 1000);
    }
    fail_msg("esim-mdm serve did not write %s (see %s)", port_file, log ? log : "its stderr");
    return 0;
}
