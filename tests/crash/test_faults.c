/*
 * test_faults.c — a campaign over 600 simulated devices (ESIM_FAULT_DEVICES)
 * while things around the service go wrong, all at once:
 *   - the APNs mock answers 5% of pushes 503 and 5% 429, sends a GOAWAY every
 *     500 streams and drops MAX_CONCURRENT_STREAMS to 1 after a connection's
 *     first error answer;
 *   - the webhook receiver fails (503) for a while, then answers slowly,
 *     then recovers;
 *   - the SM-DP+ is down for 8 s (killed), then back.
 * At the end every device is verified (every deliverable push delivered), no
 * profile was downloaded twice, every command has one answer in the ledger,
 * no webhook was lost and none was tried more than its attempts; then tokens
 * made dead at the mock are reported dead by a push. The service's CPU while
 * it only retries webhooks is measured (no busy loop). No duration is
 * asserted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/internal.h"
#include "crash/rig.h"

static unsigned devices(void)
{
    const char *e = getenv("ESIM_FAULT_DEVICES");
    long n = e ? atol(e) : 600;
    return n > 20 && n <= 100000 ? (unsigned)n : 600;
}

static long jint(const json_t *o, const char *k)
{
    return (long)json_integer_value(json_object_get(o, k));
}

/* The service's CPU seconds now (0 when not running). */
static double service_cpu(rig *r)
{
    esim_proc_usage u;
    return sup_usage(&r->sup, "service", &u) ? u.cpu_s : 0;
}

/* A device's push token (hex) from the simulator's saved state. */
static bool token_of(rig *r, const char *udid, char *out, size_t n)
{
    char path[PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/devsim/devices/%s.json", r->dir, udid);
    json_t *j = json_load_file(path, 0, NULL);
    const char *t = json_string_value(json_object_get(j, "push_token"));
    bool ok = t && *t;
    if (ok)
        snprintf(out, n, "%s", t);
    json_decref(j);
    return ok;
}

static void test_faults_everywhere(void **state)
{
    (void)state;
    rig r = {0};
    snprintf(r.apns_extra[r.n_apns_extra++], 64, "--fail-rate");
    snprintf(r.apns_extra[r.n_apns_extra++], 64, "503=0.05,429=0.05");
    snprintf(r.apns_extra[r.n_apns_extra++], 64, "--goaway-every");
    snprintf(r.apns_extra[r.n_apns_extra++], 64, "500");
    snprintf(r.apns_extra[r.n_apns_extra++], 64, "--drop-streams-on-reject");
    snprintf(r.apns_extra[r.n_apns_extra++], 64, "--seed");
    snprintf(r.apns_extra[r.n_apns_extra++], 64, "5");
    unsigned n = devices();
    bool ok = rig_start(&r, n) && rig_create_campaign(&r);

    /* The faults, by progress: receiver failing from 10%, slow from 30%
     * (once the SM-DP+ is back), fine from 45%; the SM-DP+ down from 20%,
     * for 8 s. */
    enum { HOOK_FAILING = 1, HOOK_SLOWED = 2, HOOK_FINE = 4, SMDP_DOWN = 8, SMDP_BACK = 16 };
    unsigned done = 0;
    int64_t smdp_down_at = 0, until = esim_mono_ms() + 900000;
    long smdp_down_s = 0;
    double cpu_idle_retry = -1;
    size_t refused_then = 0;
    bool finished = false;
    while (ok && !finished && esim_mono_ms() < until) {
        json_t *s = rig_campaign_summary(&r);
        long f = s ? rig_finals(s) : 0;
        finished = s && strcmp(json_string_value(json_object_get(s, "state")), "finished") == 0;
        json_decref(s);
        if (!(done & HOOK_FAILING) && f >= (long)n / 10) {
            hook_sink_set_mode(r.hooks, HOOK_FAIL, 0);
            done |= HOOK_FAILING;
            print_message("webhook receiver failing (503) at %ld devices final\n", f);
        }
        if (!(done & SMDP_DOWN) && f >= (long)n / 5) {
            ok = rig_kill(&r, RIG_SMDP);
            smdp_down_at = esim_mono_ms();
            done |= SMDP_DOWN;
            print_message("SM-DP+ down at %ld devices final\n", f);
        }
        if ((done & SMDP_DOWN) && !(done & SMDP_BACK) && esim_mono_ms() - smdp_down_at > 8000) {
            smdp_down_s = (long)((esim_mono_ms() - smdp_down_at) / 1000);
            ok = rig_restart(&r, RIG_SMDP);
            done |= SMDP_BACK;
            print_message("SM-DP+ back after %ld s, at %ld devices final\n", smdp_down_s, f);
        }
        if (!(done & HOOK_SLOWED) && (done & SMDP_BACK) && f >= (long)n * 3 / 10) {
            hook_sink_set_mode(r.hooks, HOOK_SLOW, 300);
            done |= HOOK_SLOWED;
        }
        if (!(done & HOOK_FINE) && (done & HOOK_SLOWED) && f >= (long)n * 45 / 100) {
            hook_sink_set_mode(r.hooks, HOOK_OK, 0);
            done |= HOOK_FINE;
        }
        if (!finished)
            sup_sleep_ms(100);
    }
    if (!(done & SMDP_BACK) && ok)
        ok = rig_restart(&r, RIG_SMDP);
    hook_sink_set_mode(r.hooks, HOOK_OK, 0);
    assert_true(ok);
    assert_true(finished);
    refused_then = hook_sink_refused(r.hooks);

    /* Idle but for webhook retries: the receiver fails, the devices wake
     * (one push each through the faulty mock) and check in; then the
     * service only retries. Its CPU over 5 s of that. */
    hook_sink_set_mode(r.hooks, HOOK_FAIL, 0);
    for (unsigned i = 0; i < n && i < 50; i++) {
        char path[120];
        snprintf(path, sizeof path, "/v1/push/%s", r.devs[i].udid);
        long st = 0;
        json_t *j = NULL;
        chttp_call(&r.api, "POST", path, NULL, "", 0, &st, &j, NULL);
        json_decref(j);
    }
    sup_sleep_ms(3000);
    double cpu0 = service_cpu(&r);
    int64_t t0 = esim_mono_ms();
    sup_sleep_ms(5000);
    cpu_idle_retry = service_cpu(&r) - cpu0;
    double wall = (double)(esim_mono_ms() - t0) / 1000.0;
    hook_sink_set_mode(r.hooks, HOOK_OK, 0);
    print_message("service CPU while retrying webhooks: %.2f s in %.1f s\n", cpu_idle_retry, wall);
    /* A busy loop would take a core; retries with back-off take next to
     * nothing. A bound, not a duration: half a core. */
    assert_true(cpu_idle_retry < wall / 2);

    rig_report rep;
    bool checked = rig_check(&r, &rep);

    /* No delivery was tried more than its attempts (12): refusals stay
     * under twelve per event received. */
    size_t refused = hook_sink_refused(r.hooks);
    print_message("webhook deliveries refused: %zu (%zu during the campaign), %ld received\n",
                  refused, refused_then, rep.webhooks);
    assert_true(refused <= 12 * (size_t)rep.webhooks);

    /* Dead tokens: made dead at the mock, then a push to each is reported
     * as such by the service. */
    chttp deliv;
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", r.apns_delivery);
    chttp_open_plain(&deliv, url, NULL);
    json_t *toks = json_array();
    enum { DEAD = 5 };
    for (unsigned i = n - DEAD; i < n; i++) {
        char t[200];
        if (token_of(&r, r.devs[i].udid, t, sizeof t))
            json_array_append_new(toks, json_string(t));
    }
    assert_int_equal(json_array_size(toks), DEAD);
    json_t *body = json_pack("{s:o}", "tokens", toks);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    long st = 0;
    json_t *ans = NULL;
    assert_int_equal(
        chttp_call(&deliv, "POST", "/dead-tokens", NULL, text, strlen(text), &st, &ans, NULL),
        ESIM_OK);
    free(text);
    assert_int_equal(st, 200);
    json_decref(ans);
    long dead_seen = 0;
    for (int64_t end = esim_mono_ms() + 120000; esim_mono_ms() < end && dead_seen < DEAD;) {
        dead_seen = 0;
        for (unsigned i = n - DEAD; i < n; i++) {
            char path[200];
            snprintf(path, sizeof path, "/v1/push/%s", r.devs[i].udid);
            json_t *j = NULL;
            chttp_call(&r.api, "POST", path, NULL, "", 0, &st, &j, NULL);
            json_decref(j);
            snprintf(path, sizeof path, "/v1/devices/%s", r.devs[i].udid);
            chttp_call(&r.api, "GET", path, NULL, NULL, 0, &st, &j, NULL);
            const char *ps =
                json_string_value(json_object_get(json_object_get(j, "push"), "state"));
            dead_seen += ps && strcmp(ps, "dead") == 0;
            json_decref(j);
        }
        if (dead_seen < DEAD)
            sup_sleep_ms(500);
    }
    print_message("dead tokens reported: %ld of %d\n", dead_seen, DEAD);

    /* The mock's own count of what it injected. */
    json_t *ms = NULL;
    chttp_call(&deliv, "GET", "/stats", NULL, NULL, 0, &st, &ms, NULL);
    print_message("APNs mock: %ld requests, %ld faults injected (429/5xx), %ld GOAWAYs; SM-DP+ "
                  "down %ld s; webhook receiver refused %zu deliveries\n",
                  jint(ms, "requests"), jint(ms, "injected"), jint(ms, "goaways"), smdp_down_s,
                  refused);
    long injected = jint(ms, "injected"), goaways = jint(ms, "goaways");
    json_decref(ms);
    chttp_close(&deliv);
    rig_stop(&r);
    assert_true(checked);
    assert_int_equal(dead_seen, DEAD);
    assert_true(injected > 0);
    (void)goaways;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_faults_everywhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
