/*
 * svc_harness.h — what the service integration tests share: a service run on
 * its own thread and loop over loopback, a scripted device (libcurl, one
 * easy handle = one keep-alive connection, bodies signed with CMS as real
 * devices sign them), and small JSON API helpers. Everything a test checks
 * comes back over HTTP, from the device side or the API.
 */
#ifndef ESIM_TESTS_SERVICE_SVC_HARNESS_H
#define ESIM_TESTS_SERVICE_SVC_HARNESS_H

#include <pthread.h>
#include <stdio.h>
#include <sys/types.h>

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "core/esim.h"
#include "plist/esim_plist.h"
#include "service/service.h"

#define TEST_TOKEN "test-api-token-0123456789"

typedef struct {
    char dir[256]; /* temp dir: pki/ and data dirs */
    char pki[300];
    char device_ca[320];
    char topic[128];
} harness_env;

/* mkdtemp + esim_pki_create. */
void harness_env_setup(harness_env *env);
void harness_env_teardown(harness_env *env); /* rm -rf */

typedef struct {
    struct event_base *base;
    esim_service *svc;
    pthread_t thread;
    char url[128];
    char data_dir[320];
    /* Optional: run before the loop's base is freed (e.g. free an APNs mock
     * living on the same base). A base set before harness_start is used. */
    void (*before_base_free)(void *arg);
    void *before_arg;
    /* Optional: attaches the modules on the service instead of campaigns
     * (what `esim-mdm serve` attaches, the default); run before the loop. */
    void (*attach)(esim_service *svc, void *arg);
    void *attach_arg;
} test_service;

/* Defines |name|, a file's shared harness_env, and the cmocka group setup
 * and teardown that make it before the file's tests and remove it after
 * them (pass group_setup, group_teardown to cmocka_run_group_tests).
 * |after_setup| and |before_teardown| (void functions, or NULL) add what a
 * file needs on top. */
#define HARNESS_ENV_GROUP_HOOKS(name, after_setup, before_teardown)                                \
    static harness_env name;                                                                       \
    static int group_setup(void **state)                                                           \
    {                                                                                              \
        void (*const up)(void) = after_setup;                                                      \
        (void)state;                                                                               \
        harness_env_setup(&name);                                                                  \
        if (up)                                                                                    \
            up();                                                                                  \
        return 0;                                                                                  \
    }                                                                                              \
    static int group_teardown(void **state)                                                        \
    {                                                                                              \
        void (*const down)(void) = before_teardown;                                                \
        (void)state;                                                                               \
        if (down)                                                                                  \
            down();                                                                                \
        harness_env_teardown(&name);                                                               \
        return 0;                                                                                  \
    }
#define HARNESS_ENV_GROUP(name) HARNESS_ENV_GROUP_HOOKS(name, NULL, NULL)

/* Config with the test's defaults: loopback port 0, data dir |name| under
 * env->dir, TEST_TOKEN, signature auth against the test device CA. The
 * store is the data dir's SQLite file, or, when ESIM_TEST_STORE names a
 * spec with "{n}" (ctest's PostgreSQL runs), a store of its own per |name|. */
void harness_config(const harness_env *env, const char *name, esim_service_config *cfg,
                    char data_dir[320]);
/* False when ESIM_TEST_STORE names another back end than SQLite (a test
 * reading the database file behind the service's back skips that part). */
bool harness_store_is_sqlite(void);
/* True when ESIM_TEST_STORE names a PostgreSQL cluster (ctest's _pgsql runs). */
bool harness_store_is_pgsql(void);
/* A connection of the test's own to PostgreSQL |spec|, beside the
 * service's (to hold a lock, to watch); asserts it connected. */
PGconn *harness_pg_connect(const char *spec);

/* |text| into the file |path| (created or emptied). */
void harness_write_text(const char *path, const char *text);
/* `|bin| serve --config |config|` as a child process, its standard error
 * appended to |log|: its pid, once it wrote its port into |port_file|
 * (removed first), with url set to http://127.0.0.1:PORT. Fails the test
 * as harness_await_port does. */
pid_t harness_serve(const char *bin, const char *config, const char *port_file, const char *log,
                    char url[64]);
/* The port a `serve` child |pid| wrote into |port_file|, waiting for it;
 * fails the test when the child exits first or no port comes within 30 s,
 * naming |log| (may be NULL) as where to look. */
int harness_await_port(const char *port_file, pid_t pid, const char *log);
/* Runs |sql| on |c|; fails the test with the server's message on an error. */
void harness_pg_exec(PGconn *c, const char *sql);
/* Waits (up to |tries| x 20 ms) until |want| statements wait on a lock a
 * session of this process holds (one from harness_pg_connect: directly,
 * or queued behind another such waiter), watched from |watch|, and
 * returns how many do then. Other tests' waits on the shared cluster are
 * not counted. */
long harness_pg_await_lock_waits(PGconn *watch, long want, int tries);
/* Runs |sql| (a query, or a change with RETURNING) on the store of the
 * service configured by |cfg| (SQLite file or PostgreSQL, behind the
 * service's back; stop the service first to change it) and returns the first column of
 * its first row as a number (-1 when none) and, when |out_len|, as text. */
long harness_store_query(const esim_service_config *cfg, const char *sql, char *out,
                         size_t out_len);
/* Starts the service on a new loop in a new thread; asserts success. From
 * the first start on, every SyncML message and queued Windows command a
 * service of the process reads is read again by both readers
 * (omadm_readers.h); a difference aborts the test. */
void harness_start(test_service *ts, const esim_service_config *cfg);
/* How many of those the strict reader read, and how many went to libxml2. */
void harness_syncml_counts(size_t *plain, size_t *libxml2);
/* Stops the loop, joins, frees. */
void harness_stop(test_service *ts);

/* A scripted device. */
typedef enum { SIGN_SHA256 = 0, SIGN_SHA1, SIGN_NONE, SIGN_MD5 } sign_mode;

typedef struct {
    char udid[65];
    char topic[128];
    esim_cert identity;
    sign_mode sign;
    CURL *conn; /* one connection; device_reconnect() makes a new one */
    const char *base_url;
    bool binary; /* send results as binary plists */
    /* HTTPS: the CA to trust, and (mTLS) the client certificate and key. */
    const char *ca_file, *client_cert, *client_key;
    /* Certificates sent along in the Mdm-Signature beside the signer's (as
     * devices send their CA); not owned. */
    X509 *extra_certs[4];
    size_t n_extra_certs;
    /* The signingTime put in signatures: now + sign_offset_s; with
     * no_signing_time none at all (no signed attributes). */
    long sign_offset_s;
    bool no_signing_time;
    /* The Mdm-Signature of the last request sent (owned), for replays. */
    char *last_signature;
} test_device;

/* A device with an identity certificate issued by the test device CA. */
void device_new(test_device *d, const harness_env *env, const char *udid, const char *base_url);
void device_free(test_device *d);
void device_reconnect(test_device *d);

/* PUT |body| to /mdm (signed per d->sign with d->identity); returns the
 * HTTP status, the reply body in |reply| (may be NULL). */
long device_put(test_device *d, const void *body, size_t len, esim_buf *reply);
/* Same, signed by |signer| instead of the device's identity. */
long device_put_signed_by(test_device *d, const esim_cert *signer, const void *body, size_t len,
                          esim_buf *reply);

/* Sends |body| with |signature| as its Mdm-Signature, on a connection of
 * its own from another address, 127.0.0.2 (as a replayer would). */
long device_put_raw(test_device *d, const char *signature, const void *body, size_t len,
                    esim_buf *reply);

/* Sends |body| with a valid signature over |signed_body| (a tampered body). */
long device_put_mismatched(test_device *d, const void *signed_body, size_t signed_len,
                           const void *body, size_t len);

/* Sleeps until the wall clock's second changes. A signature's signingTime
 * has one-second resolution: the same message signed again within the
 * second is what a replay looks like when it comes from another address. */
void harness_next_second(void);

/* Authenticate + TokenUpdate; asserts 200 for both. */
void device_enroll(test_device *d);
/* Sends a result (NULL uuid for Idle); the reply's command, if any, goes to
 * |next| (request type / uuid), which may be NULL. Returns the HTTP status. */
long device_result(test_device *d, esim_status st, const char *uuid, esim_cmd_parsed *next);
long device_result_ex(test_device *d, esim_status st, const char *uuid,
                      const esim_error_chain_entry *chain, size_t n_chain, plist_t extra,
                      esim_cmd_parsed *next);

/* The CA the API helpers trust for https:// services (NULL: none). */
void harness_set_api_ca(const char *ca_file);

/* OpenSSL's default verify locations, the "system" store of a service
 * started after it, made |ca_file| alone (SSL_CERT_FILE, and SSL_CERT_DIR an
 * empty directory made under |dir|); NULL undoes it. False if it could not. */
bool harness_use_system_store(const char *dir, const char *ca_file);

/* JSON API: returns the status; *out (may be NULL) gets the parsed reply. */
long api_call(const char *base_url, const char *token, const char *method, const char *path,
              const char *body, const char *content_type, json_t **out);
/* POST /v1/commands for one device; returns the command uuid (static storage per call). */
void api_enqueue_refresh(const char *base_url, const char *udid, const char *server,
                         char uuid[128]);
/* GET /v1/commands/{uuid} -> devices[udid].state (copied into |state|). */
void api_entry_state(const char *base_url, const char *uuid, const char *udid, char state[32],
                     int *attempts, int *not_now);
/* A metric's value from /metrics (the line starting with |series|). */
long long api_metric(const char *base_url, const char *series);
/* Whether the device |udid| is known with its EID and a live push channel
 * (GET /v1/devices/{udid}: an "eid" and push.state "valid"; a Windows PC's
 * first session reports both). */
bool api_device_ready(const char *base_url, const char *udid);

/* A webhook receiver on loopback, on its own thread, writing each body it
 * gets as one line of |file| and answering 200; returns its port. */
typedef struct {
    struct event_base *base;
    struct evhttp *http;
    FILE *out;
    int requests;
    pthread_t thread;
    int stop_pipe[2];
    struct event *stop_ev;
} hook_receiver;
int hook_receiver_start(hook_receiver *rc, const char *file);
/* Stops it and closes the file; rc->requests says how many came. */
void hook_receiver_stop(hook_receiver *rc);

#endif
