/*
 * test_sim_devsim.c — the runtime on its own: deterministic identities, the
 * status endpoint (stats, devices, one device, user actions and their
 * errors), device files written and loaded again after a restart, and
 * configuration refused with reasons. The service is absent here (its port
 * is closed), so the devices keep retrying enrolment, as phones would.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/http.h>

#include "tests/sim/sim_test.h"

static struct {
    char *dir;
    char pki[600];
} fx;

static int setup(void **state)
{
    (void)state;
    fx.dir = st_tempdir();
    snprintf(fx.pki, sizeof fx.pki, "%s/pki", fx.dir);
    sim_pki *p = NULL;
    if (sim_pki_open(fx.pki, &p, NULL) != ESIM_OK)
        return -1;
    sim_pki_free(p);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    st_rmrf(fx.dir);
    free(fx.dir);
    return 0;
}

static void test_identities(void **state)
{
    (void)state;
    char u1[65], e1[33], u2[65], e2[33], u3[65], e3[33];
    sim_devsim_identity(7, 0, u1, e1);
    sim_devsim_identity(7, 0, u2, e2);
    sim_devsim_identity(7, 1, u3, e3);
    assert_string_equal(u1, u2); /* the same seed and index: the same phone */
    assert_string_equal(e1, e2);
    assert_string_not_equal(u1, u3);
    assert_string_not_equal(e1, e3);
    for (unsigned i = 0; i < 200; i++) {
        sim_devsim_identity(12345, i, u1, e1);
        assert_int_equal(esim_eid_validate(e1, NULL), ESIM_OK);
        assert_int_equal(esim_udid_validate(u1, NULL), ESIM_OK);
    }
}

static void test_config_refused(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    sim_devsim *s = NULL;
    esim_error err;
    sim_devsim_config c = {.server_url = "http://127.0.0.1:1",
                           .apns_url = "http://127.0.0.1:1",
                           .pki_dir = fx.pki,
                           .devices = 1};
    c.devices = 0;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_EINVAL);
    c.devices = 1;
    c.server_url = "127.0.0.1:1";
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "--server"));
    c.server_url = "http://127.0.0.1:1";
    c.notnow_share = 2;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_EINVAL);
    c.notnow_share = 0;
    c.channel = "bad channel";
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_EINVAL);
    c.channel = NULL;
    c.status_listen = "nonsense";
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_EINVAL);
    assert_null(s);
    event_base_free(base);
}

static json_t *status(struct event_base *base, sim_http *h, sim_devsim *s, const char *method,
                      const char *path, long *st)
{
    char url[300];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", sim_devsim_status_port(s), path);
    return st_request(base, h, method, url, NULL, NULL, NULL, 0, st);
}

static void test_status_and_restart(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    sim_http *h = NULL;
    assert_int_equal(sim_http_new(base, &h, NULL), ESIM_OK);
    char data[700];
    snprintf(data, sizeof data, "%s/devsim", fx.dir);
    sim_devsim_config c = {.server_url = "http://127.0.0.1:1",
                           .apns_url = "http://127.0.0.1:1",
                           .pki_dir = fx.pki,
                           .data_dir = data,
                           .devices = 4,
                           .supervised_share = 1.0,
                           .seed = 99,
                           .os_version = "18.1",
                           .status_listen = "127.0.0.1:0"};
    sim_devsim *s = NULL;
    esim_error err;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_OK);
    assert_int_equal(sim_devsim_device_count(s), 4);
    long st;
    json_t *j = status(base, h, s, "GET", "/stats", &st);
    assert_int_equal(st, 200);
    assert_int_equal(json_integer_value(json_object_get(j, "devices")), 4);
    assert_int_equal(json_integer_value(json_object_get(j, "enrolled_now")), 0);
    json_decref(j);
    j = status(base, h, s, "GET", "/devices", &st);
    assert_int_equal(json_array_size(json_object_get(j, "devices")), 4);
    json_decref(j);

    /* Give device 0 an eSIM behind the runtime's back, as a download would. */
    sim_device *d0 = sim_devsim_device_at(s, 0);
    char udid[65], path[200];
    snprintf(udid, sizeof udid, "%s", sim_device_udid(d0));
    sim_profile p = {0};
    st_iccid(31, p.iccid);
    p.profile_class = SIM_CLASS_OPERATIONAL;
    sim_result r;
    assert_int_equal(sim_euicc_install(sim_device_euicc(d0), &p, &r, NULL), ESIM_OK);
    assert_int_equal(sim_euicc_enable(sim_device_euicc(d0), p.iccid), SIM_RES_OK);

    snprintf(path, sizeof path, "/devices/%s", udid);
    j = status(base, h, s, "GET", path, &st);
    assert_int_equal(st, 200);
    assert_string_equal(sim_json_str(j, "eid"), sim_euicc_eid(sim_device_euicc_const(d0)));
    assert_int_equal(json_array_size(json_object_get(j, "esims")), 1);
    json_decref(j);
    j = status(base, h, s, "GET", "/devices/00008110-NOPE", &st);
    assert_int_equal(st, 404);
    json_decref(j);
    /* Not enrolled (the service is away): told to check in, it is refused. */
    snprintf(path, sizeof path, "/devices/%s/sync", udid);
    j = status(base, h, s, "POST", path, &st);
    assert_int_equal(st, 409);
    json_decref(j);
    snprintf(path, sizeof path, "/devices/%s/actions/reboot", udid);
    j = status(base, h, s, "POST", path, &st);
    assert_int_equal(st, 400);
    json_decref(j);
    /* A person deletes the eSIM (no restrictions on this phone). */
    snprintf(path, sizeof path, "/devices/%s/actions/delete-esim", udid);
    j = status(base, h, s, "POST", path, &st);
    assert_int_equal(st, 200);
    assert_true(json_is_true(json_object_get(j, "allowed")));
    assert_int_equal(json_array_size(json_object_get(json_object_get(j, "device"), "esims")), 0);
    json_decref(j);
    /* Nothing left to delete: refused, with the reason. */
    j = status(base, h, s, "POST", path, &st);
    assert_int_equal(st, 200);
    assert_false(json_is_true(json_object_get(j, "allowed")));
    assert_non_null(strstr(sim_json_str(j, "reason"), "no eSIM"));
    json_decref(j);
    /* The delete notification is still owed (its SM-DP+ is unreachable). */
    assert_true(sim_euicc_notification_count(sim_device_euicc_const(d0)) > 0);

    /* Device 1 gets an eSIM and keeps it across a restart of the simulator. */
    sim_device *d1 = sim_devsim_device_at(s, 1);
    char eid1[33], udid1[65];
    snprintf(eid1, sizeof eid1, "%s", sim_euicc_eid(sim_device_euicc_const(d1)));
    snprintf(udid1, sizeof udid1, "%s", sim_device_udid(d1));
    st_iccid(32, p.iccid);
    assert_int_equal(sim_euicc_install(sim_device_euicc(d1), &p, &r, NULL), ESIM_OK);
    assert_int_equal(sim_euicc_enable(sim_device_euicc(d1), p.iccid), SIM_RES_OK);
    esim_buf cert_before = {0}, cert_after = {0};
    sim_euicc_cert_b64(sim_device_euicc(d1), &cert_before, NULL);
    sim_devsim_free(s); /* saves what changed */

    char file[900];
    snprintf(file, sizeof file, "%s/devices/%s.json", data, udid1);
    assert_int_equal(access(file, R_OK), 0);
    s = NULL;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_OK);
    sim_device *again = sim_devsim_find(s, udid1);
    assert_non_null(again);
    assert_string_equal(sim_euicc_eid(sim_device_euicc_const(again)), eid1);
    assert_string_equal(sim_euicc_enabled(sim_device_euicc_const(again))->iccid, p.iccid);
    sim_euicc_cert_b64(sim_device_euicc(again), &cert_after, NULL);
    assert_string_equal(cert_before.data, cert_after.data); /* the same eUICC, not a new one */
    esim_buf_free(&cert_before);
    esim_buf_free(&cert_after);
    sim_devsim_free(s);
    sim_http_free(h);
    event_base_free(base);
}

/* One slice of a fleet (--first-device, --slice-devices): each of its
 * devices is the device a lone simulator of the whole fleet makes at that
 * index (UDID, EID, serial, OS, supervision; a PC where the lone one has a
 * PC), and two slices make the fleet with no device twice; a slice beyond
 * the fleet is refused. */
static void test_slices_are_the_fleet(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    sim_devsim_config c = {.server_url = "http://127.0.0.1:1",
                           .apns_url = "http://127.0.0.1:1",
                           .pki_dir = fx.pki,
                           .devices = 10,
                           .windows_pcs = 3,
                           .supervised_share = 0.5,
                           .seed = 5};
    sim_devsim *all = NULL, *part[2] = {NULL, NULL};
    esim_error err;
    assert_int_equal(sim_devsim_new(base, &c, &all, &err), ESIM_OK);
    assert_int_equal(sim_devsim_device_count(all), 7);
    assert_int_equal(sim_devsim_windows_count(all), 3);
    c.first_device = 0;
    c.slice_devices = 4;
    c.channel = "devsim";
    assert_int_equal(sim_devsim_new(base, &c, &part[0], &err), ESIM_OK);
    c.first_device = 4;
    c.slice_devices = 0; /* to the end */
    c.channel = "devsim2";
    assert_int_equal(sim_devsim_new(base, &c, &part[1], &err), ESIM_OK);
    size_t phones = 0, pcs = 0;
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < sim_devsim_device_count(part[k]); i++, phones++) {
            const sim_device *a = sim_devsim_device_at(all, phones),
                             *b = sim_devsim_device_at(part[k], i);
            assert_string_equal(sim_device_udid(a), sim_device_udid(b));
            assert_string_equal(sim_device_serial(a), sim_device_serial(b));
            assert_string_equal(sim_device_os_version(a), sim_device_os_version(b));
            assert_int_equal(sim_device_supervised(a), sim_device_supervised(b));
            assert_string_equal(sim_euicc_eid(sim_device_euicc_const(a)),
                                sim_euicc_eid(sim_device_euicc_const(b)));
        }
        for (size_t i = 0; i < sim_devsim_windows_count(part[k]); i++, pcs++)
            assert_string_equal(sim_winpc_device_id(sim_devsim_windows_at(all, pcs)),
                                sim_winpc_device_id(sim_devsim_windows_at(part[k], i)));
    }
    assert_int_equal(phones, 7);
    assert_int_equal(pcs, 3);
    /* Devices 0..3 hold one PC (index 3 when 3 of 10 are PCs). */
    assert_int_equal(sim_devsim_device_count(part[0]), 3);
    sim_devsim *s = NULL;
    c.first_device = 11;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "slice"));
    c.first_device = 4;
    c.slice_devices = 7;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_EINVAL);
    c.first_device = 10;
    c.slice_devices = 0;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_EINVAL);
    assert_null(s);
    sim_devsim_free(all);
    sim_devsim_free(part[0]);
    sim_devsim_free(part[1]);
    event_base_free(base);
}

/* A service that refuses every enrolment, as esim-mdm does a device whose
 * identity its device CA did not issue. */
static void refuse_device(struct evhttp_request *req, void *arg)
{
    int *seen = arg;
    (*seen)++;
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "the device identity was not issued by the device CA\n");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; charset=utf-8");
    evhttp_send_reply(req, 403, "Forbidden", b);
    evbuffer_free(b);
}

typedef struct {
    int calls;
    long status;
    char reason[300];
} refusals;

static void on_refused(void *arg, const char *udid, long status, const char *reason)
{
    refusals *r = arg;
    (void)udid;
    r->calls++;
    r->status = status;
    snprintf(r->reason, sizeof r->reason, "%s", reason);
}

/* The device simulator says why the service refused an enrolment: the
 * hook once per reason, and /stats. */
static void test_enrolment_refused_with_reason(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    struct evhttp *srv = evhttp_new(base);
    int requests = 0;
    evhttp_set_gencb(srv, refuse_device, &requests);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(srv, "127.0.0.1", 0);
    assert_non_null(bs);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u",
             sim_bound_port(evhttp_bound_socket_get_fd(bs)));
    sim_http *h = NULL;
    assert_int_equal(sim_http_new(base, &h, NULL), ESIM_OK);
    refusals got = {0};
    sim_devsim_config c = {.server_url = url,
                           .apns_url = "http://127.0.0.1:1",
                           .pki_dir = fx.pki,
                           .devices = 3,
                           .supervised_share = 1.0,
                           .seed = 7,
                           .status_listen = "127.0.0.1:0",
                           .on_enrol_refused = on_refused,
                           .enrol_refused_arg = &got};
    sim_devsim *s = NULL;
    esim_error err;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_OK);
    int64_t start = esim_mono_ms();
    while ((requests < 3 || got.calls < 1) && esim_mono_ms() - start < 20000)
        event_base_loop(base, EVLOOP_ONCE);
    assert_true(requests >= 3);
    assert_int_equal(got.calls, 1); /* three devices, one reason */
    assert_int_equal(got.status, 403);
    assert_string_equal(got.reason, "the device identity was not issued by the device CA");
    long st;
    json_t *j = status(base, h, s, "GET", "/stats", &st);
    assert_int_equal(st, 200);
    json_t *r = json_object_get(j, "enrolment_refused");
    assert_true(json_integer_value(json_object_get(r, "count")) >= 1);
    assert_int_equal(json_integer_value(json_object_get(r, "status")), 403);
    assert_string_equal(sim_json_str(r, "reason"),
                        "the device identity was not issued by the device CA");
    json_decref(j);
    sim_devsim_free(s);
    sim_http_free(h);
    evhttp_free(srv);
    event_base_free(base);
}

/* A service that is overloaded (503) until told otherwise, then answers
 * every enrolment request at once. */
typedef struct {
    bool busy;
    int requests;
} busy_service;

static void busy_then_fine(struct evhttp_request *req, void *arg)
{
    busy_service *b = arg;
    b->requests++;
    if (b->busy)
        evhttp_send_reply(req, 503, "Service Unavailable", NULL);
    else
        evhttp_send_reply(req, 200, "OK", NULL);
}

static long stats_int(struct event_base *base, sim_http *h, sim_devsim *s, const char *key)
{
    long st;
    json_t *j = status(base, h, s, "GET", "/stats", &st);
    assert_int_equal(st, 200);
    long v = (long)json_integer_value(json_object_get(j, key));
    json_decref(j);
    return v;
}

/* Runs |base| until the simulator's /stats |key| reaches |want| (at most
 * |limit_ms|), then checks it is exactly |want|. */
static void await_stat(struct event_base *base, sim_http *h, sim_devsim *s, const char *key,
                       long want, int64_t limit_ms)
{
    int64_t start = esim_mono_ms();
    while (stats_int(base, h, s, key) < want && esim_mono_ms() - start < limit_ms)
        for (int k = 0; k < 50; k++)
            event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    assert_int_equal(stats_int(base, h, s, key), want);
}

/* The sessions in flight follow the service: the window halves (once a
 * second, down to 8) while it answers 503, and opens to --max-concurrent
 * again once it answers promptly; every device enrols in the end. */
static void test_window_follows_the_service(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    struct evhttp *srv = evhttp_new(base);
    busy_service b = {.busy = true};
    evhttp_set_gencb(srv, busy_then_fine, &b);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(srv, "127.0.0.1", 0);
    assert_non_null(bs);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u",
             sim_bound_port(evhttp_bound_socket_get_fd(bs)));
    sim_http *h = NULL;
    assert_int_equal(sim_http_new(base, &h, NULL), ESIM_OK);
    sim_devsim_config c = {.server_url = url,
                           .apns_url = "http://127.0.0.1:1",
                           .pki_dir = fx.pki,
                           .devices = 100,
                           .supervised_share = 1.0,
                           .seed = 7,
                           .max_concurrent = 40,
                           .status_listen = "127.0.0.1:0"};
    sim_devsim *s = NULL;
    esim_error err;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_OK);
    assert_int_equal(stats_int(base, h, s, "window"), 32);
    int64_t start = esim_mono_ms();
    while (esim_mono_ms() - start < 3500)
        event_base_loop(base, EVLOOP_ONCE);
    assert_true(b.requests > 0);
    assert_int_equal(stats_int(base, h, s, "window"), 8);
    b.busy = false;
    await_stat(base, h, s, "enrolled_now", 100, 60000);
    assert_int_equal(stats_int(base, h, s, "window"), 40);
    sim_devsim_free(s);
    sim_http_free(h);
    evhttp_free(srv);
    event_base_free(base);
}

/* A session waiting for a place starts as soon as one frees, and a device
 * queued while a place is free starts at once: neither waits for the tick
 * (an hour here, so nothing the tick does can start them). With one place,
 * three iPhones told to check in (POST /devices/UDID/sync) all reach the
 * service, one after the other; so do two PCs. */
static void test_sessions_start_without_the_tick(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    struct evhttp *srv = evhttp_new(base);
    busy_service b = {.busy = false};
    evhttp_set_gencb(srv, busy_then_fine, &b);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(srv, "127.0.0.1", 0);
    assert_non_null(bs);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u",
             sim_bound_port(evhttp_bound_socket_get_fd(bs)));
    sim_http *h = NULL;
    assert_int_equal(sim_http_new(base, &h, NULL), ESIM_OK);
    char data[700];
    snprintf(data, sizeof data, "%s/devsim-kick", fx.dir);
    /* Enrolled first, with the usual tick. */
    sim_devsim_config c = {.server_url = url,
                           .apns_url = "http://127.0.0.1:1",
                           .pki_dir = fx.pki,
                           .data_dir = data,
                           .devices = 3,
                           .supervised_share = 1.0,
                           .seed = 11,
                           .max_concurrent = 1,
                           .status_listen = "127.0.0.1:0"};
    sim_devsim *s = NULL;
    esim_error err;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_OK);
    await_stat(base, h, s, "enrolled_now", 3, 60000);
    sim_devsim_free(s);

    c.tick_ms = 3600 * 1000;
    s = NULL;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_OK);
    assert_int_equal(stats_int(base, h, s, "enrolled_now"), 3);
    b.requests = 0;
    long st;
    for (size_t i = 0; i < 3; i++) {
        char path[128];
        snprintf(path, sizeof path, "/devices/%s/sync",
                 sim_device_udid(sim_devsim_device_at(s, i)));
        json_decref(status(base, h, s, "POST", path, &st));
        assert_int_equal(st, 200);
    }
    await_stat(base, h, s, "checkins", 3, 30000);
    assert_int_equal(b.requests, 3); /* three Idle check-ins, each answered empty */
    sim_devsim_free(s);

    /* Two PCs and one place: each session fails (the service answers
     * nothing OMA-DM), which frees the place for the next. */
    sim_devsim_config w = {.server_url = url,
                           .apns_url = "http://127.0.0.1:1",
                           .pki_dir = fx.pki,
                           .devices = 2,
                           .windows_pcs = 2,
                           .seed = 11,
                           .max_concurrent = 1,
                           .tick_ms = 3600 * 1000,
                           .status_listen = "127.0.0.1:0"};
    s = NULL;
    assert_int_equal(sim_devsim_new(base, &w, &s, &err), ESIM_OK);
    b.requests = 0;
    for (size_t i = 0; i < 2; i++) {
        char path[128];
        snprintf(path, sizeof path, "/devices/%s/sync",
                 sim_winpc_device_id(sim_devsim_windows_at(s, i)));
        json_decref(status(base, h, s, "POST", path, &st));
        assert_int_equal(st, 200);
    }
    int64_t start = esim_mono_ms();
    while (b.requests < 2 && esim_mono_ms() - start < 30000)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(b.requests, 2);
    sim_devsim_free(s);
    sim_http_free(h);
    evhttp_free(srv);
    event_base_free(base);
}

/* A service and both push mocks in one: pushes handed out one per
 * long-poll (a push for the first device, then one for the second, then
 * the poll is held), registrations refused, check-ins and OMA-DM messages
 * counted and answered empty. */
typedef struct {
    bool serve_pushes;
    char token[2][65], magic[2][128], pc[2][65];
    int checkins, omadm;
    struct evhttp_request *held[4];
    size_t n_held;
} push_fake;

static void push_fake_cb(struct evhttp_request *req, void *arg)
{
    push_fake *p = arg;
    const char *uri = evhttp_request_get_uri(req);
    bool apns = strncmp(uri, "/apns/", 6) == 0, wns = strncmp(uri, "/wns/", 5) == 0;
    if ((apns || wns) && strstr(uri, "/deliveries")) {
        const char *a = strstr(uri, "after=");
        int after = a ? atoi(a + 6) : 0;
        if (!p->serve_pushes || after > 1) {
            if (p->n_held < 4)
                p->held[p->n_held++] = req; /* answered never: the devsim drops it */
            else
                evhttp_send_reply(req, 503, "Busy", NULL);
            return;
        }
        struct evbuffer *b = evbuffer_new();
        if (apns)
            evbuffer_add_printf(b,
                                "{\"pushes\":[{\"token\":\"%s\",\"push_magic\":\"%s\"}],"
                                "\"next\":%d}",
                                p->token[after], p->magic[after], after + 1);
        else
            evbuffer_add_printf(b,
                                "{\"deliveries\":[{\"tag\":\"%s\",\"kind\":\"push\"}],"
                                "\"next\":%d}",
                                p->pc[after], after + 1);
        evhttp_send_reply(req, 200, "OK", b);
        evbuffer_free(b);
        return;
    }
    if (apns || wns) { /* token registration, channel requests */
        evhttp_send_reply(req, 500, "No", NULL);
        return;
    }
    if (strstr(uri, "/ManagementServer/"))
        p->omadm++;
    else if (evhttp_request_get_command(req) == EVHTTP_REQ_PUT && p->serve_pushes)
        p->checkins++;
    evhttp_send_reply(req, 200, "OK", NULL);
}

/* A push is fetched as soon as the previous long-poll answered, not at the
 * next tick (an hour here): two pushes handed out one per poll reach both
 * iPhones and both PCs. */
static void test_pushes_fetched_without_the_tick(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    struct evhttp *srv = evhttp_new(base);
    push_fake p = {0};
    evhttp_set_gencb(srv, push_fake_cb, &p);
    evhttp_set_allowed_methods(srv, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(srv, "127.0.0.1", 0);
    assert_non_null(bs);
    unsigned port = sim_bound_port(evhttp_bound_socket_get_fd(bs));
    char url[64], apns[64], wns[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u", port);
    snprintf(apns, sizeof apns, "http://127.0.0.1:%u/apns", port);
    snprintf(wns, sizeof wns, "http://127.0.0.1:%u/wns", port);
    sim_http *h = NULL;
    assert_int_equal(sim_http_new(base, &h, NULL), ESIM_OK);
    char data[700];
    snprintf(data, sizeof data, "%s/devsim-push", fx.dir);
    sim_devsim_config c = {.server_url = url,
                           .apns_url = apns,
                           .wns_url = wns,
                           .pki_dir = fx.pki,
                           .data_dir = data,
                           .devices = 4,
                           .windows_pcs = 2,
                           .supervised_share = 1.0,
                           .seed = 13,
                           .status_listen = "127.0.0.1:0"};
    sim_devsim *s = NULL;
    esim_error err;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_OK);
    await_stat(base, h, s, "enrolled_now", 2, 60000);
    sim_devsim_free(s);
    for (size_t k = 0; k < p.n_held; k++)
        evhttp_send_reply(p.held[k], 503, "Busy", NULL);
    p.n_held = 0;

    c.tick_ms = 3600 * 1000;
    s = NULL;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_OK);
    for (size_t i = 0; i < 2; i++) {
        sim_device *d = sim_devsim_device_at(s, i);
        size_t len = 0;
        const unsigned char *tok = sim_device_push_token(d, &len);
        assert_int_equal(len, 32);
        for (size_t k = 0; k < 32; k++)
            snprintf(p.token[i] + 2 * k, 3, "%02x", tok[k]);
        snprintf(p.magic[i], sizeof p.magic[i], "%s", sim_device_push_magic(d));
        snprintf(p.pc[i], sizeof p.pc[i], "%s", sim_winpc_device_id(sim_devsim_windows_at(s, i)));
    }
    p.serve_pushes = true;
    int64_t start = esim_mono_ms();
    while ((p.checkins < 2 || p.omadm < 2) && esim_mono_ms() - start < 30000)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(p.checkins, 2);
    assert_int_equal(p.omadm, 2);
    sim_devsim_free(s);
    for (size_t k = 0; k < p.n_held; k++)
        evhttp_send_reply(p.held[k], 503, "Busy", NULL);
    sim_http_free(h);
    evhttp_free(srv);
    event_base_free(base);
}

/* Windows PCs in the runtime without a service: spread over the indices,
 * listed and described on the status endpoint, a person's action, a sync,
 * failed sessions counted, and a PC kept across a restart. */
static void test_windows_pcs(void **state)
{
    (void)state;
    /* The spread: 2 of 5, and the share form rounds. */
    unsigned n = 0;
    for (unsigned i = 0; i < 5; i++)
        n += sim_devsim_is_windows(5, 2, i);
    assert_int_equal(n, 2);
    assert_false(sim_devsim_is_windows(5, 0, 0));
    char id1[65], id2[65];
    sim_devsim_windows_id(3, 1, id1);
    sim_devsim_windows_id(3, 1, id2);
    assert_string_equal(id1, id2);
    assert_int_equal(strlen(id1), 32);

    struct event_base *base = event_base_new();
    sim_http *h = NULL;
    assert_int_equal(sim_http_new(base, &h, NULL), ESIM_OK);
    char data[700];
    snprintf(data, sizeof data, "%s/devsim-win", fx.dir);
    sim_devsim_config c = {.server_url = "https://127.0.0.1:1",
                           .apns_url = "http://127.0.0.1:1",
                           .wns_url = "http://127.0.0.1:1",
                           .pki_dir = fx.pki,
                           .data_dir = data,
                           .devices = 5,
                           .windows_share = 0.4,
                           .seed = 3,
                           .status_listen = "127.0.0.1:0"};
    sim_devsim *s = NULL;
    esim_error err;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_OK);
    assert_int_equal(sim_devsim_windows_count(s), 2);
    assert_int_equal(sim_devsim_device_count(s), 3);
    sim_winpc *pc = sim_devsim_windows_at(s, 0);
    char id[65];
    snprintf(id, sizeof id, "%s", sim_winpc_device_id(pc));
    assert_ptr_equal(sim_devsim_find_windows(s, id), pc);
    long st;
    json_t *j = status(base, h, s, "GET", "/stats", &st);
    assert_int_equal(json_integer_value(json_object_get(j, "devices")), 5);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "windows"), "pcs")), 2);
    json_decref(j);
    j = status(base, h, s, "GET", "/devices", &st);
    json_t *list = json_object_get(j, "devices");
    assert_int_equal(json_array_size(list), 5);
    size_t k, wins = 0;
    json_t *it;
    json_array_foreach(list, k, it) wins +=
        sim_json_str(it, "platform") && strcmp(sim_json_str(it, "platform"), "windows") == 0;
    assert_int_equal(wins, 2);
    json_decref(j);
    char path[200];
    snprintf(path, sizeof path, "/devices/%s", id);
    j = status(base, h, s, "GET", path, &st);
    assert_int_equal(st, 200);
    assert_string_equal(sim_json_str(j, "device_id"), id);
    assert_true(json_is_object(json_object_get(j, "csp")));
    json_decref(j);
    /* A PC knows delete-esim only; with no eSIM it says so. */
    snprintf(path, sizeof path, "/devices/%s/actions/transfer-esim", id);
    j = status(base, h, s, "POST", path, &st);
    assert_int_equal(st, 400);
    json_decref(j);
    snprintf(path, sizeof path, "/devices/%s/actions/delete-esim", id);
    j = status(base, h, s, "POST", path, &st);
    assert_int_equal(st, 200);
    assert_false(json_is_true(json_object_get(j, "allowed")));
    json_decref(j);
    snprintf(path, sizeof path, "/devices/%s/sync", id);
    j = status(base, h, s, "POST", path, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    /* The endpoint is closed: sessions fail and are counted, nothing else. */
    int64_t start = esim_mono_ms();
    while (sim_devsim_get_stats(s).win_session_errors < 2 && esim_mono_ms() - start < 20000)
        event_base_loop(base, EVLOOP_ONCE);
    assert_true(sim_devsim_get_stats(s).win_session_errors >= 2);
    assert_int_equal(sim_winpc_sessions(pc), 0);
    /* An eSIM given behind the runtime's back survives a restart. */
    sim_profile p = {.profile_class = SIM_CLASS_OPERATIONAL};
    st_iccid(41, p.iccid);
    sim_result r;
    assert_int_equal(sim_euicc_install(sim_winpc_euicc(pc), &p, &r, NULL), ESIM_OK);
    sim_devsim_free(s);
    s = NULL;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_OK);
    pc = sim_devsim_find_windows(s, id);
    assert_non_null(pc);
    assert_non_null(sim_euicc_find(sim_winpc_euicc_const(pc), p.iccid));
    sim_devsim_free(s);
    /* More PCs than devices is refused. */
    c.windows_share = 0;
    c.windows_pcs = 6;
    assert_int_equal(sim_devsim_new(base, &c, &s, &err), ESIM_EINVAL);
    sim_http_free(h);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identities),
        cmocka_unit_test(test_config_refused),
        cmocka_unit_test(test_status_and_restart),
        cmocka_unit_test(test_slices_are_the_fleet),
        cmocka_unit_test(test_windows_pcs),
        cmocka_unit_test(test_enrolment_refused_with_reason),
        cmocka_unit_test(test_window_follows_the_service),
        cmocka_unit_test(test_sessions_start_without_the_tick),
        cmocka_unit_test(test_pushes_fetched_without_the_tick),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
