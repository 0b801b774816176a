/*
 * test_campaign_engine.c — the campaign state machine on its own: steps in
 * order, verification against the expected EID/ICCID, NotNow and 36003
 * back-off, re-push, expiry, pacing, distribution, pause/resume/cancel and
 * restore. The engine does no I/O; |rec| records what it asked for.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "campaign/campaign_engine.h"

#define MAXDEV 256

typedef struct {
    unsigned queued[MAXDEV][CAMPAIGN_STEP_COUNT];
    unsigned pushed[MAXDEV];
    unsigned total_queued, total_pushed;
    esim_err fail_queue; /* what a queue answers (ESIM_OK: queued) */
} rec;

static esim_err rec_queue(void *arg, campaign *c, size_t dev, campaign_step step, esim_error *err)
{
    (void)c;
    rec *r = arg;
    if (r->fail_queue != ESIM_OK)
        return esim_fail(err, r->fail_queue,
                         r->fail_queue == ESIM_ESTORE ? "store is full" : "device checked out");
    r->queued[dev][step]++;
    r->total_queued++;
    return ESIM_OK;
}

static esim_err rec_push(void *arg, campaign *c, size_t dev, esim_error *err)
{
    (void)c;
    (void)err;
    rec *r = arg;
    r->pushed[dev]++;
    r->total_pushed++;
    return ESIM_OK;
}

static const char *EID1 = "89882119900000000000000000001654";

/* A valid EID per device index. */
static void make_eid(unsigned i, char out[ESIM_EID_LEN + 1])
{
    snprintf(out, ESIM_EID_LEN + 1, "8988211990000000000000%08u00", i);
    assert_int_equal(esim_eid_set_check_digits(out, NULL), ESIM_OK);
}

typedef struct {
    char udid[MAXDEV][65];
    char eid[MAXDEV][ESIM_EID_LEN + 1];
    campaign_target t[MAXDEV];
} fleet;

static void make_fleet(fleet *f, size_t n, const char *iccid)
{
    memset(f, 0, sizeof *f);
    for (size_t i = 0; i < n; i++) {
        snprintf(f->udid[i], sizeof f->udid[i], "UDID-%04zu", i);
        make_eid((unsigned)i + 1, f->eid[i]);
        f->t[i].udid = f->udid[i];
        f->t[i].expected_eid = f->eid[i];
        f->t[i].expected_iccid = iccid;
    }
}

static campaign_spec make_spec(bool profile, bool refresh, bool verify)
{
    campaign_spec s = {0};
    s.steps[CAMPAIGN_STEP_PROFILE] = profile;
    s.steps[CAMPAIGN_STEP_REFRESH] = refresh;
    s.steps[CAMPAIGN_STEP_VERIFY] = verify;
    s.policy.allow_esim_modification = ESIM_TRI_FALSE;
    s.smdp_url = "https://127.0.0.1:9443";
    campaign_settings_init(&s.settings);
    s.settings.pushes_per_second = 100000;
    s.settings.repush_after_ms = 1000;
    s.settings.expiry_ms = 10000;
    s.settings.retry_base_ms = 100;
    s.settings.retry_max_ms = 400;
    s.settings.max_retries = 3;
    s.settings.verify_attempts = 2;
    return s;
}

static campaign_result ack(void)
{
    campaign_result r = {.status = ESIM_STATUS_ACKNOWLEDGED};
    return r;
}

static size_t count(const campaign *c, campaign_dev_state s)
{
    size_t counts[CDEV_STATE_COUNT];
    campaign_counts(c, counts);
    return counts[s];
}

static void test_steps_in_order_and_verified(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 3, NULL);
    campaign_spec spec = make_spec(true, true, true);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 3, 1000, &c, NULL), ESIM_OK);
    assert_int_equal(count(c, CDEV_PENDING), 3);
    assert_int_equal(r.total_pushed, 0); /* nothing before the first tick */
    campaign_tick(c, 1000, &io);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(r.queued[i][CAMPAIGN_STEP_PROFILE], 1);
        assert_int_equal(r.pushed[i], 1);
    }
    assert_int_equal(count(c, CDEV_ACTIVE), 3);
    for (size_t i = 0; i < 3; i++) {
        campaign_result a = ack();
        assert_int_equal(campaign_on_result(c, i, CAMPAIGN_STEP_PROFILE, &a, 1100, &io), ESIM_OK);
        /* the next step is queued at once, without a second push */
        assert_int_equal(r.queued[i][CAMPAIGN_STEP_REFRESH], 1);
        assert_int_equal(r.pushed[i], 1);
        assert_int_equal(campaign_on_result(c, i, CAMPAIGN_STEP_REFRESH, &a, 1200, &io), ESIM_OK);
        assert_int_equal(r.queued[i][CAMPAIGN_STEP_VERIFY], 1);
        esim_subscription sub = {0};
        snprintf(sub.eid, sizeof sub.eid, "%s", f.eid[i]);
        snprintf(sub.iccid, sizeof sub.iccid, "8944000000000000001");
        campaign_result v = {.status = ESIM_STATUS_ACKNOWLEDGED, .subs = &sub, .n_subs = 1};
        assert_int_equal(campaign_on_result(c, i, CAMPAIGN_STEP_VERIFY, &v, 1300, &io), ESIM_OK);
    }
    assert_int_equal(count(c, CDEV_VERIFIED), 3);
    assert_int_equal(campaign_refresh_acked(c), 3);
    assert_int_equal(campaign_get_state(c), CAMPAIGN_FINISHED);
    assert_int_equal(campaign_pushes(c), 3);
    assert_int_equal(campaign_commands(c), 9);
    /* a late duplicate answer changes nothing */
    campaign_result a = ack();
    assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_REFRESH, &a, 1400, &io), ESIM_ESTATE);
    assert_int_equal(count(c, CDEV_VERIFIED), 3);
    campaign_free(c);
}

static void test_ack_without_matching_eid_is_not_verified(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 2, "8944000000000000001");
    campaign_spec spec = make_spec(false, true, true);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 1, &io);
    campaign_result a = ack();
    /* device 0 reports another EID; device 1 the right EID but another ICCID */
    esim_subscription wrong_eid = {0}, wrong_iccid = {0};
    snprintf(wrong_eid.eid, sizeof wrong_eid.eid, "%s", EID1);
    snprintf(wrong_eid.iccid, sizeof wrong_eid.iccid, "8944000000000000001");
    snprintf(wrong_iccid.eid, sizeof wrong_iccid.eid, "%s", f.eid[1]);
    snprintf(wrong_iccid.iccid, sizeof wrong_iccid.iccid, "8944000000000000019");
    const esim_subscription *subs[2] = {&wrong_eid, &wrong_iccid};
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(campaign_on_result(c, i, CAMPAIGN_STEP_REFRESH, &a, 10, &io), ESIM_OK);
    int64_t now = 20;
    for (int attempt = 0; attempt < 2; attempt++) {
        for (size_t i = 0; i < 2; i++) {
            campaign_result v = {.status = ESIM_STATUS_ACKNOWLEDGED, .subs = subs[i], .n_subs = 1};
            assert_int_equal(campaign_on_result(c, i, CAMPAIGN_STEP_VERIFY, &v, now, &io), ESIM_OK);
        }
        if (attempt == 0) {
            assert_int_equal(count(c, CDEV_RETRY_WAIT), 2);
            now += 1000;
            campaign_tick(c, now, &io); /* back-off over: verify queued again and pushed */
            assert_int_equal(r.queued[0][CAMPAIGN_STEP_VERIFY], 2);
            assert_int_equal(r.pushed[0], 2);
        }
    }
    assert_int_equal(count(c, CDEV_UNVERIFIED), 2);
    assert_int_equal(count(c, CDEV_VERIFIED), 0);
    assert_int_equal(campaign_refresh_acked(c), 2); /* acknowledged is not installed */
    const campaign_dev *d = campaign_device_at(c, 0);
    assert_non_null(d->reason);
    assert_non_null(strstr(d->reason, "acknowledged"));
    assert_non_null(strstr(d->reason, f.eid[0]));
    assert_non_null(strstr(campaign_device_at(c, 1)->reason, "8944000000000000019"));
    campaign_free(c);
}

static void test_unknown_expected_eid_is_unverified(void **state)
{
    (void)state;
    campaign_target t = {.udid = "NO-EID-1"};
    campaign_spec spec = make_spec(false, false, true);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, &t, 1, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 1, &io);
    esim_subscription sub = {0};
    snprintf(sub.eid, sizeof sub.eid, "%s", EID1);
    campaign_result v = {.status = ESIM_STATUS_ACKNOWLEDGED, .subs = &sub, .n_subs = 1};
    assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_VERIFY, &v, 5, &io), ESIM_OK);
    assert_int_equal(count(c, CDEV_UNVERIFIED), 1);
    assert_non_null(strstr(campaign_device_at(c, 0)->reason, "import eids"));
    campaign_free(c);
}

static void test_not_now_backs_off_and_repushes_without_requeue(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 1, NULL);
    campaign_spec spec = make_spec(false, true, false);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 1, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 0, &io);
    campaign_result nn = {.status = ESIM_STATUS_NOT_NOW};
    int64_t now = 10;
    for (unsigned k = 1; k <= 3; k++) {
        assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_REFRESH, &nn, now, &io), ESIM_OK);
        assert_int_equal(count(c, CDEV_RETRY_WAIT), 1);
        unsigned pushes = r.pushed[0];
        campaign_tick(c, now + 50, &io); /* back-off (100 ms, doubling) not over */
        assert_int_equal(r.pushed[0], pushes);
        now += 100LL << (k - 1);
        campaign_tick(c, now, &io);
        assert_int_equal(r.pushed[0], pushes + 1);
        /* NotNow keeps the command queued on the service: no second copy */
        assert_int_equal(r.queued[0][CAMPAIGN_STEP_REFRESH], 1);
    }
    assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_REFRESH, &nn, now, &io), ESIM_OK);
    assert_int_equal(count(c, CDEV_FAILED), 1);
    assert_int_equal(campaign_device_at(c, 0)->not_now, 4);
    assert_non_null(strstr(campaign_device_at(c, 0)->reason, "NotNow"));
    campaign_free(c);
}

static void test_busy_36003_requeues_other_errors_fail(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 2, NULL);
    campaign_spec spec = make_spec(false, true, true);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 0, &io);
    /* The platform adapter says which errors mean "busy, try later" and
     * gives each a sentence (the Apple one: tests/campaign/test_campaign_platform.c). */
    campaign_result busy = {.status = ESIM_STATUS_ERROR,
                            .error_code = 36003,
                            .error_text = "Cellular plan busy",
                            .busy = true};
    campaign_result hw = {.status = ESIM_STATUS_ERROR,
                          .error_code = 36002,
                          .error_text = "the device's hardware does not support eSIM"};
    assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_REFRESH, &busy, 1, &io), ESIM_OK);
    assert_int_equal(campaign_on_result(c, 1, CAMPAIGN_STEP_REFRESH, &hw, 1, &io), ESIM_OK);
    assert_int_equal(count(c, CDEV_RETRY_WAIT), 1);
    /* Any other refresh error: the device is asked what it holds first. */
    assert_int_equal(r.queued[1][CAMPAIGN_STEP_VERIFY], 1);
    assert_int_equal(campaign_device_at(c, 1)->step, CAMPAIGN_STEP_VERIFY);
    campaign_result none = ack();
    assert_int_equal(campaign_on_result(c, 1, CAMPAIGN_STEP_VERIFY, &none, 2, &io), ESIM_OK);
    assert_int_equal(count(c, CDEV_FAILED), 1); /* at once: no verification retries */
    const char *why = campaign_device_at(c, 1)->reason;
    assert_non_null(strstr(why, "36002"));
    assert_non_null(strstr(why, "hardware"));
    assert_true(strstr(why, "36002") < strstr(why, "verification found no subscription"));
    campaign_tick(c, 200, &io);
    /* an Error ends the command on the service: the refresh is queued again */
    assert_int_equal(r.queued[0][CAMPAIGN_STEP_REFRESH], 2);
    assert_int_equal(r.pushed[0], 2);
    campaign_result a = ack();
    assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_REFRESH, &a, 300, &io), ESIM_OK);
    assert_int_equal(r.queued[0][CAMPAIGN_STEP_VERIFY], 1);
    campaign_free(c);
}

/* Issue 10 item 7: a refresh delivered again after a restart is refused
 * ("already downloaded"); the device that reports the expected eSIM is
 * verified, the refusal kept in its record, also across a restore. */
static void test_refresh_error_then_verified(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 2, NULL);
    campaign_spec spec = make_spec(false, true, false); /* no verify step asked */
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 0, &io);
    campaign_result refused = {.status = ESIM_STATUS_ERROR,
                               .error_code = 36001,
                               .error_text = "SM-DP+ refused the download: 8.2/3.7 profile "
                                             "already downloaded"};
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(campaign_on_result(c, i, CAMPAIGN_STEP_REFRESH, &refused, 1, &io),
                         ESIM_OK);
    assert_int_equal(count(c, CDEV_ACTIVE), 2);
    /* Device 0's record survives a restart while it verifies. */
    campaign_dev saved[2];
    memcpy(saved, campaign_device_at(c, 0), sizeof saved);
    assert_true(saved[0].install_error);
    campaign *back = NULL;
    assert_int_equal(
        campaign_restore(campaign_get_spec(c), campaign_get_state(c), 0, saved, 2, 2, &back, NULL),
        ESIM_OK);
    campaign_free(c);
    c = back;
    esim_subscription sub = {0};
    snprintf(sub.eid, sizeof sub.eid, "%s", f.eid[0]);
    campaign_result v = {.status = ESIM_STATUS_ACKNOWLEDGED, .subs = &sub, .n_subs = 1};
    assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_VERIFY, &v, 3, &io), ESIM_OK);
    assert_int_equal(campaign_device_at(c, 0)->state, CDEV_VERIFIED);
    const char *why = campaign_device_at(c, 0)->reason;
    assert_non_null(strstr(why, "already downloaded"));
    assert_non_null(strstr(why, f.eid[0]));
    assert_int_equal(campaign_refresh_acked(c), 0);
    /* The device answers the verification with an error: failed, both kept. */
    campaign_result unknown = {
        .status = ESIM_STATUS_ERROR, .error_code = 12021, .error_text = "Unknown command"};
    assert_int_equal(campaign_on_result(c, 1, CAMPAIGN_STEP_VERIFY, &unknown, 3, &io), ESIM_OK);
    assert_int_equal(campaign_device_at(c, 1)->state, CDEV_FAILED);
    why = campaign_device_at(c, 1)->reason;
    assert_true(strstr(why, "already downloaded") < strstr(why, "12021"));
    assert_int_equal(campaign_get_state(c), CAMPAIGN_FINISHED);
    campaign_free(c);
}

/* Without an expected EID nothing can be verified: the error fails it. */
static void test_refresh_error_without_eid_fails(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 1, NULL);
    f.t[0].expected_eid = NULL;
    campaign_spec spec = make_spec(false, true, true);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 1, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 0, &io);
    campaign_result e = {.status = ESIM_STATUS_ERROR, .error_code = 36001, .error_text = "x"};
    assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_REFRESH, &e, 1, &io), ESIM_OK);
    assert_int_equal(count(c, CDEV_FAILED), 1);
    assert_int_equal(r.queued[0][CAMPAIGN_STEP_VERIFY], 0);
    assert_non_null(strstr(campaign_device_at(c, 0)->reason, "36001"));
    campaign_free(c);
}

static void test_silent_device_repushed_then_timed_out(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 1, NULL);
    campaign_spec spec = make_spec(false, true, false);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 1, 0, &c, NULL), ESIM_OK);
    for (int64_t t = 0; t <= 12000; t += 100)
        campaign_tick(c, t, &io);
    /* pushed at 0, then after 1, 2 and 4 s (doubling) until the 10 s expiry */
    assert_int_equal(r.pushed[0], 4);
    assert_int_equal(r.queued[0][CAMPAIGN_STEP_REFRESH], 1); /* a re-push never re-queues */
    assert_int_equal(count(c, CDEV_TIMED_OUT), 1);
    const char *why = campaign_device_at(c, 0)->reason;
    assert_non_null(why);
    assert_non_null(strstr(why, "no answer to the refresh command"));
    assert_non_null(strstr(why, "4 pushes"));
    assert_int_equal(campaign_get_state(c), CAMPAIGN_FINISHED);
    campaign_free(c);
}

/* Issue 17: under load the devices reach the service in the order they
 * were pushed, some of them after the re-push delay. A silent device is
 * pushed again only once a device pushed after it has answered (it was
 * passed over: lost push, device off), or when answers stopped coming for
 * a re-push delay, not while it waits its turn. Lines are per platform. */
static esim_err wake_all(void *arg, campaign *c, size_t dev, esim_error *err)
{
    return rec_push(arg, c, dev, err);
}

static bool wakes_not_iot(void *arg, campaign *c, size_t dev)
{
    (void)arg;
    return campaign_device_at(c, dev)->platform != 2;
}

static void test_no_repush_while_in_line(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 5, NULL);
    f.t[4].platform = 1; /* a PC: its own line */
    campaign_spec spec = make_spec(true, false, false);
    spec.settings.pushes_per_second = 1; /* one push a second: 1, 2, 3, 4, 5 s */
    spec.settings.repush_after_ms = 10000;
    spec.settings.expiry_ms = 1000000;
    rec r = {0};
    campaign_io io = {&r, rec_queue, wake_all, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 5, 0, &c, NULL), ESIM_OK);
    /* In target order: A=0 at 1 s, B=1 at 2 s, C=2 at 3 s, D=3 at 4 s, the PC at 5 s. */
    for (int64_t t = 1000; t <= 5000; t += 1000)
        campaign_tick(c, t, &io);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(r.pushed[i], 1);
    campaign_result a = ack();
    assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_PROFILE, &a, 6000, &io), ESIM_OK);
    assert_int_equal(campaign_on_result(c, 4, CAMPAIGN_STEP_PROFILE, &a, 6000, &io), ESIM_OK);
    /* 12 to 14 s: B, C and D are silent past the delay, but nobody pushed
     * after them answered (the PC's answer is another line): in line. */
    for (int64_t t = 6000; t <= 14500; t += 100)
        campaign_tick(c, t, &io);
    assert_int_equal(r.pushed[1], 1);
    assert_int_equal(r.pushed[2], 1);
    assert_int_equal(r.pushed[3], 1);
    /* C answers at 15 s: B (pushed before C) was passed over and is pushed
     * again at its next check (22 s); D, pushed after C, is still in line
     * then, and is pushed again once answers stopped for 10 s. */
    assert_int_equal(campaign_on_result(c, 2, CAMPAIGN_STEP_PROFILE, &a, 15000, &io), ESIM_OK);
    for (int64_t t = 14600; t <= 30000; t += 100)
        campaign_tick(c, t, &io);
    assert_int_equal(r.pushed[1], 2);
    assert_int_equal(r.pushed[3], 1);
    /* B answers its re-push (22 s): it was in line at 2 s, so D, pushed at
     * 4 s, is not passed over by it. */
    assert_int_equal(campaign_on_result(c, 1, CAMPAIGN_STEP_PROFILE, &a, 23000, &io), ESIM_OK);
    for (int64_t t = 30100; t <= 32900; t += 100)
        campaign_tick(c, t, &io);
    assert_int_equal(r.pushed[3], 1);
    for (int64_t t = 33000; t <= 44000; t += 100)
        campaign_tick(c, t, &io);
    assert_int_equal(r.pushed[3], 2);
    assert_int_equal(campaign_pushes(c), 7);
    campaign_free(c);

    /* A device that polls (io.wakes false) is timed like a pushed one but
     * its nudges are not counted as pushes. */
    make_fleet(&f, 3, NULL);
    f.t[2].platform = 2;
    spec = make_spec(true, false, false);
    rec r2 = {0};
    campaign_io io2 = {&r2, rec_queue, wake_all, false, NULL, wakes_not_iot, NULL};
    assert_int_equal(campaign_new(&spec, f.t, 3, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 0, &io2);
    assert_int_equal(r2.total_pushed, 3);
    assert_int_equal(campaign_pushes(c), 2);
    campaign_free(c);
}

static void test_pushes_per_second_ceiling(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 200, NULL);
    campaign_spec spec = make_spec(false, true, false);
    spec.settings.pushes_per_second = 50;
    spec.settings.repush_after_ms = 100000;
    spec.settings.expiry_ms = 1000000;
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 200, 0, &c, NULL), ESIM_OK);
    for (int64_t t = 0; t <= 2000; t += 10) {
        campaign_tick(c, t, &io);
        /* never more than the rate allows plus a tenth of a second's burst */
        assert_true(r.total_pushed <= (unsigned)(50 * t / 1000 + 5));
    }
    assert_true(r.total_pushed >= 95);
    assert_int_equal(count(c, CDEV_PENDING), 200 - r.total_pushed);
    campaign_free(c);
}

static void test_pause_resume_cancel(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 4, NULL);
    campaign_spec spec = make_spec(true, true, false);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    esim_error err;
    assert_int_equal(campaign_new(&spec, f.t, 4, 0, &c, NULL), ESIM_OK);
    assert_int_equal(campaign_resume(c, 0, &err), ESIM_ESTATE);
    assert_int_equal(campaign_pause(c, 0, NULL), ESIM_OK);
    assert_int_equal(campaign_get_state(c), CAMPAIGN_PAUSED);
    campaign_tick(c, 100, &io);
    assert_int_equal(r.total_pushed, 0); /* paused: nothing goes out */
    assert_int_equal(campaign_resume(c, 200, NULL), ESIM_OK);
    campaign_tick(c, 200, &io);
    assert_int_equal(r.total_pushed, 4);
    assert_int_equal(campaign_pause(c, 300, NULL), ESIM_OK);
    campaign_result a = ack();
    /* answers still count while paused, but the next step waits */
    assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_PROFILE, &a, 310, &io), ESIM_OK);
    assert_int_equal(r.queued[0][CAMPAIGN_STEP_REFRESH], 0);
    assert_int_equal(count(c, CDEV_PENDING), 1);
    assert_int_equal(campaign_resume(c, 400, NULL), ESIM_OK);
    campaign_tick(c, 400, &io);
    assert_int_equal(r.queued[0][CAMPAIGN_STEP_REFRESH], 1);
    assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_REFRESH, &a, 410, &io), ESIM_OK);
    assert_int_equal(count(c, CDEV_DONE), 1);
    assert_int_equal(campaign_cancel(c, 500, NULL), ESIM_OK);
    assert_int_equal(count(c, CDEV_CANCELED), 3);
    assert_int_equal(count(c, CDEV_DONE), 1);
    assert_int_equal(campaign_cancel(c, 600, &err), ESIM_ESTATE);
    assert_non_null(strstr(err.msg, "canceled"));
    assert_int_equal(campaign_pause(c, 600, NULL), ESIM_ESTATE);
    assert_int_equal(campaign_resume(c, 600, NULL), ESIM_ESTATE);
    unsigned pushes = r.total_pushed;
    campaign_tick(c, 100000, &io);
    assert_int_equal(r.total_pushed, pushes);
    assert_int_equal(campaign_on_result(c, 1, CAMPAIGN_STEP_PROFILE, &a, 700, &io), ESIM_ESTATE);
    campaign_free(c);
}

static void test_distribution_none_and_custom(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 4, NULL);
    campaign_spec spec = make_spec(false, true, false);
    spec.staged = true;
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 4, 0, &c, NULL), ESIM_OK);
    assert_int_equal(campaign_get_state(c), CAMPAIGN_STAGED);
    campaign_tick(c, 1000, &io);
    assert_int_equal(r.total_pushed, 0);
    assert_int_equal(count(c, CDEV_STAGED), 4);
    assert_int_equal(campaign_resume(c, 2000, NULL), ESIM_OK); /* start it */
    campaign_tick(c, 2000, &io);
    assert_int_equal(r.total_pushed, 4);
    campaign_free(c);

    /* custom: only the chosen devices get anything */
    memset(&r, 0, sizeof r);
    spec.staged = false;
    f.t[1].staged = f.t[3].staged = true;
    assert_int_equal(campaign_new(&spec, f.t, 4, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 0, &io);
    assert_int_equal(r.pushed[0] + r.pushed[2], 2);
    assert_int_equal(r.pushed[1] + r.pushed[3], 0);
    campaign_result a = ack();
    campaign_on_result(c, 0, CAMPAIGN_STEP_REFRESH, &a, 1, &io);
    campaign_on_result(c, 2, CAMPAIGN_STEP_REFRESH, &a, 1, &io);
    assert_int_equal(campaign_get_state(c), CAMPAIGN_FINISHED);
    assert_int_equal(count(c, CDEV_STAGED), 2);
    campaign_free(c);
}

static void test_installed_esim_is_never_downloaded_twice(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 2, NULL);
    f.t[0].esim_installed = true;
    campaign_spec spec = make_spec(false, true, true);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 0, &io);
    assert_int_equal(r.queued[0][CAMPAIGN_STEP_REFRESH], 0);
    assert_int_equal(r.queued[0][CAMPAIGN_STEP_VERIFY], 1);
    assert_int_equal(r.queued[1][CAMPAIGN_STEP_REFRESH], 1);
    campaign_free(c);

    /* refresh only: nothing to do, and the reason says why */
    memset(&r, 0, sizeof r);
    spec = make_spec(false, true, false);
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, NULL), ESIM_OK);
    assert_int_equal(count(c, CDEV_DONE), 1);
    assert_non_null(strstr(campaign_device_at(c, 0)->reason, "reset"));
    campaign_tick(c, 0, &io);
    assert_int_equal(r.pushed[0], 0);
    campaign_free(c);
}

static void test_bad_input_refused(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 2, NULL);
    campaign *c = NULL;
    esim_error err;
    campaign_spec spec = make_spec(false, false, false);
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "step"));
    spec = make_spec(false, true, false);
    spec.smdp_url = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, &err), ESIM_EINVAL);
    spec = make_spec(true, false, false);
    memset(&spec.policy, 0, sizeof spec.policy);
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, &err), ESIM_EINVAL);
    spec = make_spec(false, true, false);
    spec.steps[CAMPAIGN_STEP_ERASE_KEEP] = spec.steps[CAMPAIGN_STEP_ESIM_WIPE] = true;
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, &err), ESIM_EINVAL);
    spec = make_spec(false, true, false);
    f.t[1].udid = f.t[0].udid;
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "twice"));
    f.t[1].udid = f.udid[1];
    f.t[1].expected_eid = "89882119900000000000000000001600";
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "check digits"));
    f.t[1].expected_eid = f.eid[1];
    f.t[1].udid = "bad udid!";
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, &err), ESIM_EINVAL);
    assert_int_equal(campaign_new(&spec, f.t, 0, 0, &c, &err), ESIM_EINVAL);
    assert_null(c);
}

static void test_queue_failure_fails_device_with_reason(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 1, NULL);
    campaign_spec spec = make_spec(false, true, false);
    rec r = {.fail_queue = ESIM_ESTATE};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 1, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 0, &io);
    assert_int_equal(count(c, CDEV_FAILED), 1);
    assert_non_null(strstr(campaign_device_at(c, 0)->reason, "device checked out"));
    assert_int_equal(r.total_pushed, 0);
    campaign_free(c);
}

/* The store could not take a command (ESIM_ESTORE: nothing was kept): the
 * device has done nothing wrong. It stays pending with a note and its
 * command is queued again after the first retry back-off; once queued the
 * note goes and the device verifies as any other. The same when the
 * caller's store loses a command it had accepted (campaign_queue_lost). */
static void test_store_failure_queues_again(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 2, NULL);
    campaign_spec spec = make_spec(false, true, false);
    rec r = {.fail_queue = ESIM_ESTORE};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 2, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 0, &io);
    assert_int_equal(count(c, CDEV_PENDING), 2);
    assert_int_equal(count(c, CDEV_FAILED), 0);
    assert_non_null(strstr(campaign_device_at(c, 0)->reason, "store is full"));
    assert_int_equal(r.total_pushed, 0);
    /* Still failing at the back-off: pending again, nothing pushed. */
    campaign_tick(c, 100, &io);
    assert_int_equal(count(c, CDEV_PENDING), 2);
    assert_int_equal(r.total_pushed, 0);
    /* The store is back: queued, pushed, the note gone. */
    r.fail_queue = ESIM_OK;
    campaign_tick(c, 199, &io);
    assert_int_equal(r.total_queued, 0);
    campaign_tick(c, 200, &io);
    assert_int_equal(count(c, CDEV_ACTIVE), 2);
    assert_int_equal(r.queued[0][CAMPAIGN_STEP_REFRESH] + r.queued[0][CAMPAIGN_STEP_VERIFY], 1);
    assert_int_equal(r.total_pushed, 2);
    assert_null(campaign_device_at(c, 0)->reason);
    /* Device 1's command is lost by the caller's store after it was
     * accepted: queued again after the back-off, not failed. */
    campaign_queue_lost(c, 1, "store (sqlite): COMMIT: database or disk is full (13)", 210);
    assert_int_equal(campaign_device_at(c, 1)->state, CDEV_PENDING);
    assert_non_null(strstr(campaign_device_at(c, 1)->reason, "disk is full"));
    campaign_tick(c, 310, &io);
    assert_int_equal(campaign_device_at(c, 1)->state, CDEV_ACTIVE);
    assert_int_equal(r.total_queued, 3);
    assert_null(campaign_device_at(c, 1)->reason);
    /* Both finish as usual. */
    for (size_t i = 0; i < 2; i++) {
        const campaign_dev *d = campaign_device_at(c, i);
        campaign_result a = ack();
        assert_int_equal(campaign_on_result(c, i, (campaign_step)d->step, &a, 400, &io), ESIM_OK);
    }
    assert_int_equal(count(c, CDEV_FAILED), 0);
    campaign_free(c);
}

static void test_dirty_records_and_restore(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 3, NULL);
    campaign_spec spec = make_spec(false, true, true);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 3, 0, &c, NULL), ESIM_OK);
    size_t n = 0;
    campaign_take_dirty(c, &n);
    assert_int_equal(n, 3);
    campaign_tick(c, 0, &io);
    campaign_result a = ack();
    assert_int_equal(campaign_on_result(c, 1, CAMPAIGN_STEP_REFRESH, &a, 5, &io), ESIM_OK);
    campaign_take_dirty(c, &n);
    assert_int_equal(n, 3);
    assert_int_equal(campaign_on_result(c, 1, CAMPAIGN_STEP_VERIFY,
                                        &(campaign_result){.status = ESIM_STATUS_NOT_NOW}, 6, &io),
                     ESIM_OK);
    const size_t *d = campaign_take_dirty(c, &n);
    assert_int_equal(n, 1);
    assert_int_equal(d[0], 1);

    /* the service restarts: rebuild from the records and carry on */
    campaign_dev recs[3];
    for (size_t i = 0; i < 3; i++)
        recs[i] = *campaign_device_at(c, i);
    campaign *c2 = NULL;
    assert_int_equal(campaign_restore(campaign_get_spec(c), campaign_get_state(c),
                                      campaign_created_ms(c), recs, 3, 50, &c2, NULL),
                     ESIM_OK);
    assert_string_equal(campaign_id(c2), campaign_id(c));
    campaign_free(c);
    assert_int_equal(count(c2, CDEV_ACTIVE), 2);
    assert_int_equal(count(c2, CDEV_RETRY_WAIT), 1);
    assert_int_equal(campaign_refresh_acked(c2), 1);
    memset(&r, 0, sizeof r);
    campaign_tick(c2, 5000, &io); /* the retry and the re-pushes are due */
    assert_int_equal(r.queued[1][CAMPAIGN_STEP_VERIFY], 0); /* NotNow: still queued */
    assert_int_equal(r.pushed[0] + r.pushed[1] + r.pushed[2], 3);
    esim_subscription sub = {0};
    snprintf(sub.eid, sizeof sub.eid, "%s", f.eid[1]);
    campaign_result v = {.status = ESIM_STATUS_ACKNOWLEDGED, .subs = &sub, .n_subs = 1};
    assert_int_equal(campaign_on_result(c2, 1, CAMPAIGN_STEP_VERIFY, &v, 5001, &io), ESIM_OK);
    assert_int_equal(count(c2, CDEV_VERIFIED), 1);
    campaign_free(c2);
}

static void test_push_after_answer_and_lookup(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 50, NULL);
    campaign_spec spec = make_spec(true, true, false);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, true, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 50, 0, &c, NULL), ESIM_OK);
    for (size_t i = 0; i < 50; i++)
        assert_int_equal(campaign_find_device(c, f.udid[i]), (long)i);
    assert_int_equal(campaign_find_device(c, "UDID-9999"), -1);
    campaign_tick(c, 0, &io);
    campaign_result a = ack();
    assert_int_equal(campaign_on_result(c, 7, CAMPAIGN_STEP_PROFILE, &a, 1, &io), ESIM_OK);
    /* the service already replied: the refresh needs a push of its own */
    assert_int_equal(r.queued[7][CAMPAIGN_STEP_REFRESH], 1);
    assert_int_equal(r.pushed[7], 2);
    assert_int_equal(campaign_device_at(c, 7)->last_push_ms, 1);
    campaign_fail_device(c, 8, "device unknown to the service", 2);
    assert_int_equal(count(c, CDEV_FAILED), 1);
    assert_string_equal(campaign_device_at(c, 8)->reason, "device unknown to the service");
    campaign_free(c);
}

static bool always_seen(void *arg, campaign *c, size_t dev, int64_t since)
{
    (void)arg;
    (void)c;
    (void)dev;
    (void)since;
    return true;
}

static void test_no_repush_while_the_device_is_talking(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 1, NULL);
    campaign_spec spec = make_spec(false, true, false);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, always_seen, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 1, 0, &c, NULL), ESIM_OK);
    for (int64_t t = 0; t <= 12000; t += 100)
        campaign_tick(c, t, &io);
    /* one push; it checked in since, so it was left to finish its download */
    assert_int_equal(r.pushed[0], 1);
    assert_int_equal(count(c, CDEV_TIMED_OUT), 1);
    campaign_free(c);
}

/* Heard from at 500 ms (it fetched its command), then nothing: its answer
 * was lost (the service restarted) and it waits for a push. */
static bool seen_at_500(void *arg, campaign *c, size_t dev, int64_t since)
{
    (void)arg;
    (void)c;
    (void)dev;
    return 500 > since;
}

static void test_repush_once_the_device_went_quiet(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 1, NULL);
    campaign_spec spec = make_spec(false, true, false);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, seen_at_500, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 1, 0, &c, NULL), ESIM_OK);
    for (int64_t t = 0; t <= 1000; t += 100)
        campaign_tick(c, t, &io);
    /* at 1000 ms it was heard from within the last second: left alone */
    assert_int_equal(r.pushed[0], 1);
    for (int64_t t = 1100; t <= 12000; t += 100)
        campaign_tick(c, t, &io);
    /* then quiet for longer than the re-push delay: pushed again */
    assert_true(r.pushed[0] >= 2);
    campaign_free(c);
}

/* The question asked without waiting (ask_seen): kept, answered later. */
static struct {
    size_t dev;
    uint32_t token;
    int64_t since;
    int asked;
} g_ask;

static void ask_seen(void *arg, campaign *c, size_t dev, int64_t since, uint32_t token)
{
    (void)arg;
    (void)c;
    g_ask.dev = dev;
    g_ask.token = token;
    g_ask.since = since;
    g_ask.asked++;
}

/* Asked at a re-push timer, the engine keeps the device's timer until the
 * answer: "seen" changes nothing, "not seen" pushes it again at the next
 * tick, and an answer to a question that no longer stands (the device
 * answered meanwhile) changes nothing. */
static void test_repush_decided_by_a_later_answer(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 1, NULL);
    campaign_spec spec = make_spec(false, true, false);
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, ask_seen};
    campaign *c = NULL;
    memset(&g_ask, 0, sizeof g_ask);
    assert_int_equal(campaign_new(&spec, f.t, 1, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 0, &io);
    assert_int_equal(r.pushed[0], 1);
    campaign_tick(c, 1000, &io); /* the re-push timer: asked, not pushed */
    assert_int_equal(g_ask.asked, 1);
    assert_int_equal(g_ask.since, 0);
    assert_int_equal(r.pushed[0], 1);
    campaign_seen_answer(c, 0, g_ask.token, true, 1010);
    campaign_tick(c, 1020, &io);
    assert_int_equal(r.pushed[0], 1); /* seen: left to work */
    campaign_tick(c, 2000, &io);      /* asked again a re-push delay later */
    assert_int_equal(g_ask.asked, 2);
    campaign_seen_answer(c, 0, g_ask.token + 1, false, 2010); /* not its question */
    campaign_tick(c, 2020, &io);
    assert_int_equal(r.pushed[0], 1);
    campaign_seen_answer(c, 0, g_ask.token, false, 2030);
    campaign_tick(c, 2040, &io);
    assert_int_equal(r.pushed[0], 2);                     /* not seen: pushed again */
    campaign_seen_answer(c, 0, g_ask.token, false, 2050); /* answered already */
    campaign_tick(c, 2060, &io);
    assert_int_equal(r.pushed[0], 2);
    /* Asked again, then the device answers before the store does. */
    for (int64_t t = 2100; g_ask.asked < 3 && t <= 8000; t += 100)
        campaign_tick(c, t, &io);
    assert_int_equal(g_ask.asked, 3);
    campaign_result ok = ack();
    assert_int_equal(campaign_on_result(c, 0, CAMPAIGN_STEP_REFRESH, &ok, 5000, &io), ESIM_OK);
    campaign_seen_answer(c, 0, g_ask.token, false, 5010);
    campaign_tick(c, 5020, &io);
    assert_int_equal(r.pushed[0], 2);
    assert_int_equal(count(c, CDEV_DONE), 1);
    campaign_free(c);
}

static void test_window_of_devices_in_flight(void **state)
{
    (void)state;
    static fleet f;
    make_fleet(&f, 20, NULL);
    campaign_spec spec = make_spec(false, true, false);
    spec.settings.max_in_flight = 5;
    spec.settings.repush_after_ms = 500;
    rec r = {0};
    campaign_io io = {&r, rec_queue, rec_push, false, NULL, NULL, NULL};
    campaign *c = NULL;
    assert_int_equal(campaign_new(&spec, f.t, 20, 0, &c, NULL), ESIM_OK);
    campaign_tick(c, 0, &io);
    assert_int_equal(r.total_pushed, 5); /* the window, not the push ceiling */
    assert_int_equal(count(c, CDEV_ACTIVE), 5);
    /* Silent devices are re-pushed even while the window is full. */
    campaign_tick(c, 600, &io);
    assert_int_equal(r.total_pushed, 10);
    assert_int_equal(count(c, CDEV_PENDING), 15);
    /* Two answers free two places. */
    campaign_result a = ack();
    for (size_t i = 0; i < 20; i++)
        if (campaign_device_at(c, i)->state == CDEV_ACTIVE && count(c, CDEV_DONE) < 2)
            campaign_on_result(c, i, CAMPAIGN_STEP_REFRESH, &a, 700, &io);
    campaign_tick(c, 700, &io);
    assert_int_equal(count(c, CDEV_ACTIVE), 5);
    assert_int_equal(count(c, CDEV_PENDING), 13);
    campaign_free(c);
}

static void test_names_round_trip(void **state)
{
    (void)state;
    for (int s = 0; s < CDEV_STATE_COUNT; s++) {
        campaign_dev_state back;
        assert_int_equal(
            campaign_dev_state_parse(campaign_dev_state_name((campaign_dev_state)s), &back, NULL),
            ESIM_OK);
        assert_int_equal(back, s);
    }
    for (int s = 0; s < CAMPAIGN_STEP_COUNT; s++) {
        campaign_step back;
        assert_int_equal(campaign_step_parse(campaign_step_name((campaign_step)s), &back, NULL),
                         ESIM_OK);
        assert_int_equal(back, s);
    }
    campaign_dev_state st;
    assert_int_equal(campaign_dev_state_parse("installed", &st, NULL), ESIM_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_steps_in_order_and_verified),
        cmocka_unit_test(test_ack_without_matching_eid_is_not_verified),
        cmocka_unit_test(test_unknown_expected_eid_is_unverified),
        cmocka_unit_test(test_not_now_backs_off_and_repushes_without_requeue),
        cmocka_unit_test(test_busy_36003_requeues_other_errors_fail),
        cmocka_unit_test(test_refresh_error_then_verified),
        cmocka_unit_test(test_refresh_error_without_eid_fails),
        cmocka_unit_test(test_silent_device_repushed_then_timed_out),
        cmocka_unit_test(test_no_repush_while_in_line),
        cmocka_unit_test(test_pushes_per_second_ceiling),
        cmocka_unit_test(test_pause_resume_cancel),
        cmocka_unit_test(test_distribution_none_and_custom),
        cmocka_unit_test(test_installed_esim_is_never_downloaded_twice),
        cmocka_unit_test(test_bad_input_refused),
        cmocka_unit_test(test_queue_failure_fails_device_with_reason),
        cmocka_unit_test(test_store_failure_queues_again),
        cmocka_unit_test(test_dirty_records_and_restore),
        cmocka_unit_test(test_push_after_answer_and_lookup),
        cmocka_unit_test(test_no_repush_while_the_device_is_talking),
        cmocka_unit_test(test_repush_once_the_device_went_quiet),
        cmocka_unit_test(test_repush_decided_by_a_later_answer),
        cmocka_unit_test(test_window_of_devices_in_flight),
        cmocka_unit_test(test_names_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
