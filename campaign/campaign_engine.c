/*
 * campaign_engine.c — the per-device state machine of an eSIM campaign:
 * paced first pushes (token bucket), the next step queued as soon as an
 * answer arrives, back-off for NotNow and 36003, re-push of silent devices,
 * expiry, verification against the expected EID/ICCID, pause/resume/cancel.
 * Work is driven by a FIFO of devices to push and a min-heap of timers, so a
 * tick costs what it does, never a scan of a million devices.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "campaign/campaign_engine.h"

typedef struct {
    int64_t at;
    uint32_t dev;
    uint16_t gen;
} timer_entry;

#define CAMPAIGN_LINES 4

struct campaign {
    char id[ESIM_UUID_LEN + 1];
    char *name;
    char *smdp_url;
    campaign_spec spec; /* strings point at the fields above */
    campaign_state state;
    int64_t created_ms;

    campaign_dev *devs;
    size_t n;

    uint32_t *ready; /* ring of devices waiting for a push slot */
    size_t ready_head, ready_len;
    uint32_t *again; /* ring of silent devices due a re-push (served first) */
    size_t again_head, again_len;

    timer_entry *heap;
    size_t heap_len, heap_cap;

    double tokens;
    int64_t last_tick_ms;
    bool ticked; /* last_tick_ms is meaningful */

    size_t counts[CDEV_STATE_COUNT];
    size_t refresh_acked;
    uint64_t pushes, commands;
    /* The line of pushed devices: the latest push time among devices that
     * answered since their push, and when the last such answer came. A
     * silent device pushed after every device that answered is still in
     * line (the service and the devices work through the pushes in order),
     * not lost: see fire_timer. One line per platform (by
     * campaign_dev.platform; the last one shared by the rest): PCs woken
     * through WNS do not queue behind iPhones woken through APNs. */
    int64_t line_push_ms[CAMPAIGN_LINES], line_answer_ms[CAMPAIGN_LINES];

    size_t *dirty; /* indices, capacity n */
    size_t n_dirty;

    uint32_t *index; /* open addressing: device index + 1 by UDID hash */
    size_t index_cap;
};

static unsigned line_of(const campaign_dev *d)
{
    return d->platform < CAMPAIGN_LINES ? d->platform : CAMPAIGN_LINES - 1;
}

/* Whether |d|, pushed and silent, is still in its line at |now|: no device
 * pushed at or after it has answered yet, while answers to earlier pushes
 * came within |wait|. */
static bool still_in_line(const campaign *c, const campaign_dev *d, int64_t now, int64_t wait)
{
    unsigned l = line_of(d);
    return d->pushes && d->last_push_ms > c->line_push_ms[l] && c->line_answer_ms[l] &&
           now - c->line_answer_ms[l] < wait;
}

static const char *const step_names[CAMPAIGN_STEP_COUNT] = {"profile", "refresh", "verify",
                                                            "erase_keep_esim", "esim_wipe"};
static const char *const dev_state_names[CDEV_STATE_COUNT] = {
    "staged", "pending",    "active", "retry_wait", "verified",
    "done",   "unverified", "failed", "timed_out",  "canceled"};
static const char *const campaign_state_names[] = {"running", "staged", "paused", "canceled",
                                                   "finished"};

const char *campaign_step_name(campaign_step s)
{
    return (unsigned)s < CAMPAIGN_STEP_COUNT ? step_names[s] : "unknown";
}

esim_err campaign_step_parse(const char *word, campaign_step *out, esim_error *err)
{
    for (int i = 0; word && i < CAMPAIGN_STEP_COUNT; i++)
        if (strcmp(word, step_names[i]) == 0) {
            *out = (campaign_step)i;
            return ESIM_OK;
        }
    return esim_fail(
        err, ESIM_EINVAL,
        "unknown step '%s': use profile, refresh, verify, erase_keep_esim or esim_wipe",
        word ? word : "");
}

const char *campaign_dev_state_name(campaign_dev_state s)
{
    return (unsigned)s < CDEV_STATE_COUNT ? dev_state_names[s] : "unknown";
}

esim_err campaign_dev_state_parse(const char *word, campaign_dev_state *out, esim_error *err)
{
    for (int i = 0; word && i < CDEV_STATE_COUNT; i++)
        if (strcmp(word, dev_state_names[i]) == 0) {
            *out = (campaign_dev_state)i;
            return ESIM_OK;
        }
    return esim_fail(
        err, ESIM_EINVAL,
        "unknown device state '%s': use staged, pending, active, retry_wait, verified, "
        "done, unverified, failed, timed_out or canceled",
        word ? word : "");
}

bool campaign_dev_state_final(campaign_dev_state s)
{
    return s == CDEV_STAGED || s >= CDEV_VERIFIED;
}

const char *campaign_state_name(campaign_state s)
{
    return (unsigned)s <= CAMPAIGN_FINISHED ? campaign_state_names[s] : "unknown";
}

void campaign_settings_init(campaign_settings *s)
{
    s->pushes_per_second = 1000;
    s->repush_after_ms = 4 * 3600 * 1000LL;
    s->expiry_ms = 7 * 24 * 3600 * 1000LL;
    s->retry_base_ms = 60 * 1000;
    s->retry_max_ms = 3600 * 1000;
    s->max_retries = 10;
    s->verify_attempts = 3;
}

bool campaign_subscriptions_match(const esim_subscription *subs, size_t n, const char *eid,
                                  const char *iccid)
{
    if (!eid || !*eid)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(subs[i].eid, eid) == 0 &&
            (!iccid || !*iccid || strcmp(subs[i].iccid, iccid) == 0))
            return true;
    return false;
}

/* ---- accessors ------------------------------------------------------------ */

const char *campaign_id(const campaign *c)
{
    return c->id;
}
const char *campaign_name(const campaign *c)
{
    return c->name ? c->name : "";
}
campaign_state campaign_get_state(const campaign *c)
{
    return c->state;
}
const campaign_spec *campaign_get_spec(const campaign *c)
{
    return &c->spec;
}
int64_t campaign_created_ms(const campaign *c)
{
    return c->created_ms;
}
size_t campaign_device_count(const campaign *c)
{
    return c->n;
}
size_t campaign_refresh_acked(const campaign *c)
{
    return c->refresh_acked;
}
uint64_t campaign_pushes(const campaign *c)
{
    return c->pushes;
}
uint64_t campaign_commands(const campaign *c)
{
    return c->commands;
}

void campaign_set_totals(campaign *c, uint64_t pushes, uint64_t commands)
{
    c->pushes = pushes;
    c->commands = commands;
}

const campaign_dev *campaign_device_at(const campaign *c, size_t i)
{
    return i < c->n ? &c->devs[i] : NULL;
}

long campaign_find_device(const campaign *c, const char *udid)
{
    if (!c || !udid || !c->index)
        return -1;
    size_t k = esim_hash_str(udid) & (c->index_cap - 1);
    while (c->index[k]) {
        if (strcmp(c->devs[c->index[k] - 1].udid, udid) == 0)
            return (long)(c->index[k] - 1);
        k = (k + 1) & (c->index_cap - 1);
    }
    return -1;
}

/* Builds the UDID index once the records are filled. */
static esim_err build_index(campaign *c)
{
    c->index_cap = 64;
    while (c->index_cap < c->n * 2)
        c->index_cap *= 2;
    c->index = calloc(c->index_cap, sizeof *c->index);
    if (!c->index)
        return ESIM_ENOMEM;
    for (size_t i = 0; i < c->n; i++) {
        size_t k = esim_hash_str(c->devs[i].udid) & (c->index_cap - 1);
        while (c->index[k])
            k = (k + 1) & (c->index_cap - 1);
        c->index[k] = (uint32_t)(i + 1);
    }
    return ESIM_OK;
}

void campaign_counts(const campaign *c, size_t counts[CDEV_STATE_COUNT])
{
    memcpy(counts, c->counts, sizeof c->counts);
}

const size_t *campaign_take_dirty(campaign *c, size_t *n)
{
    *n = c->n_dirty;
    for (size_t i = 0; i < c->n_dirty; i++)
        c->devs[c->dirty[i]].dirty = 0;
    c->n_dirty = 0;
    return c->dirty;
}

size_t campaign_memory(const campaign *c)
{
    size_t b = sizeof *c +
               c->n * (sizeof *c->devs + sizeof *c->ready + sizeof *c->again + sizeof *c->dirty) +
               c->index_cap * sizeof *c->index + c->heap_cap * sizeof *c->heap;
    for (size_t i = 0; i < c->n; i++)
        if (c->devs[i].reason)
            b += strlen(c->devs[i].reason) + 1;
    return b;
}

static void mark_dirty(campaign *c, size_t i);

void campaign_mark_all_dirty(campaign *c)
{
    for (size_t i = 0; c && i < c->n; i++)
        mark_dirty(c, i);
}

/* ---- bookkeeping ------------------------------------------------------------ */

static void mark_dirty(campaign *c, size_t i)
{
    if (!c->devs[i].dirty) {
        c->devs[i].dirty = 1;
        c->dirty[c->n_dirty++] = i;
    }
}

static void set_state(campaign *c, size_t i, campaign_dev_state s, int64_t now)
{
    campaign_dev *d = &c->devs[i];
    c->counts[d->state]--;
    c->counts[s]++;
    d->state = (uint8_t)s;
    d->changed_ms = now;
    mark_dirty(c, i);
}

static void set_reason(campaign *c, size_t i, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_reason(campaign *c, size_t i, const char *fmt, ...)
{
    char buf[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    free(c->devs[i].reason);
    c->devs[i].reason = strdup(buf); /* on ENOMEM the reason is lost, the state is not */
    mark_dirty(c, i);
}

static void check_finished(campaign *c)
{
    if (c->state != CAMPAIGN_RUNNING && c->state != CAMPAIGN_PAUSED)
        return;
    size_t open = 0;
    for (int s = 0; s < CDEV_STATE_COUNT; s++)
        if (!campaign_dev_state_final((campaign_dev_state)s))
            open += c->counts[s];
    if (open == 0)
        c->state = CAMPAIGN_FINISHED;
}

/* ---- timers: a binary min-heap with lazy deletion (stale generation) ------ */

static esim_err heap_push(campaign *c, int64_t at, size_t dev)
{
    if (c->heap_len == c->heap_cap) {
        timer_entry *h = esim_grow(c->heap, &c->heap_cap, c->heap_len + 1, sizeof *h);
        if (!h)
            return ESIM_ENOMEM;
        c->heap = h;
    }
    timer_entry e = {at, (uint32_t)dev, c->devs[dev].gen};
    size_t k = c->heap_len++;
    while (k > 0) {
        size_t p = (k - 1) / 2;
        if (c->heap[p].at <= at)
            break;
        c->heap[k] = c->heap[p];
        k = p;
    }
    c->heap[k] = e;
    return ESIM_OK;
}

static void heap_pop(campaign *c)
{
    timer_entry last = c->heap[--c->heap_len];
    size_t k = 0;
    for (;;) {
        size_t l = 2 * k + 1;
        if (l >= c->heap_len)
            break;
        size_t m = (l + 1 < c->heap_len && c->heap[l + 1].at < c->heap[l].at) ? l + 1 : l;
        if (c->heap[m].at >= last.at)
            break;
        c->heap[k] = c->heap[m];
        k = m;
    }
    if (c->heap_len)
        c->heap[k] = last;
}

/* Arms the device's single timer at |at| (capped by its expiry). Older
 * entries for it become stale. */
static void arm(campaign *c, size_t i, int64_t at)
{
    campaign_dev *d = &c->devs[i];
    if (d->deadline_ms && at > d->deadline_ms)
        at = d->deadline_ms;
    d->gen++;
    d->next_ms = at;
    mark_dirty(c, i);
    if (heap_push(c, at, i) != ESIM_OK)
        d->next_ms = 0; /* out of memory: the device waits for its answer or a restart */
}

static void disarm(campaign *c, size_t i)
{
    c->devs[i].gen++;
    c->devs[i].next_ms = 0;
}

/* A re-push of a silent device: it already holds a place in the window. */
static void again_add(campaign *c, size_t i)
{
    if (c->devs[i].in_again)
        return;
    c->devs[i].in_again = 1;
    c->again[(c->again_head + c->again_len++) % c->n] = (uint32_t)i;
}

static void ready_add(campaign *c, size_t i)
{
    if (c->devs[i].in_ready)
        return;
    c->devs[i].in_ready = 1;
    c->ready[(c->ready_head + c->ready_len++) % c->n] = (uint32_t)i;
}

/* ---- steps ------------------------------------------------------------------ */

static int first_step(const campaign *c)
{
    for (int s = 0; s < CAMPAIGN_STEP_COUNT; s++)
        if (c->spec.steps[s])
            return s;
    return -1;
}

/* The step after |s| for device |i|, or -1. A device known to hold its eSIM
 * skips the refresh: a consumed profile cannot be downloaded twice. */
static int next_step(const campaign *c, size_t i, int s)
{
    for (int t = s + 1; t < CAMPAIGN_STEP_COUNT; t++) {
        if (!c->spec.steps[t])
            continue;
        if (t == CAMPAIGN_STEP_REFRESH && c->devs[i].esim_installed)
            continue;
        return t;
    }
    return -1;
}

static void finish_device(campaign *c, size_t i, campaign_dev_state s, int64_t now)
{
    disarm(c, i);
    set_state(c, i, s, now);
}

static void fail_device(campaign *c, size_t i, campaign_dev_state s, int64_t now, const char *fmt,
                        ...) __attribute__((format(printf, 5, 6)));

static void fail_device(campaign *c, size_t i, campaign_dev_state s, int64_t now, const char *fmt,
                        ...)
{
    char buf[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    const char *first = c->devs[i].reason;
    if (c->devs[i].install_error && first && !strstr(buf, first))
        set_reason(c, i, "%s; then %s", first, buf); /* the refresh's error stays first */
    else
        set_reason(c, i, "%s", buf);
    finish_device(c, i, s, now);
    check_finished(c);
}

static int64_t backoff_ms(const campaign *c, unsigned retries)
{
    int64_t d = c->spec.settings.retry_base_ms;
    for (unsigned k = 1; k < retries && d < c->spec.settings.retry_max_ms; k++)
        d *= 2;
    return d < c->spec.settings.retry_max_ms ? d : c->spec.settings.retry_max_ms;
}

/* The store could not keep device |i|'s command (nothing of it was kept):
 * nothing is wrong with the device, so it waits its turn again after the
 * first retry back-off (the campaign's expiry bounds how long), its note
 * saying why until the command is queued. */
static void wait_for_store(campaign *c, size_t i, int64_t now, const char *why)
{
    campaign_dev *d = &c->devs[i];
    if (!d->install_error) { /* the refresh's error stays the reason */
        set_reason(c, i, "the %s command could not be queued yet (%s); it will be again",
                   campaign_step_name((campaign_step)d->step), why);
        d->store_wait = 1;
    }
    d->need_queue = 1;
    set_state(c, i, CDEV_PENDING, now);
    arm(c, i, now + backoff_ms(c, 1));
}

/* Queues the current step's command; false when it was not queued: the
 * device failed, or the store could not take the command now and the
 * device is pending again. */
static bool queue_step(campaign *c, size_t i, int64_t now, const campaign_io *io)
{
    campaign_dev *d = &c->devs[i];
    esim_error why = {{0}};
    esim_err rc = io->queue(io->arg, c, i, (campaign_step)d->step, &why);
    if (rc == ESIM_ESTORE) {
        wait_for_store(c, i, now, why.msg);
        return false;
    }
    if (rc != ESIM_OK) {
        fail_device(c, i, CDEV_FAILED, now, "the %s command could not be queued: %s",
                    campaign_step_name((campaign_step)d->step), why.msg);
        return false;
    }
    if (d->store_wait) { /* its note is over */
        d->store_wait = 0;
        free(d->reason);
        d->reason = NULL;
        mark_dirty(c, i);
    }
    c->commands++;
    d->need_queue = 0;
    d->pushes = 0;
    return true;
}

/* A silent device is pushed again after repush_after, then after twice
 * that, and so on up to 8 times: a device that is busy (downloading) or
 * behind a slow network is not flooded, one that is off is still retried. */
static int64_t repush_delay(const campaign *c, unsigned pushes)
{
    int64_t d = c->spec.settings.repush_after_ms;
    for (unsigned k = 1; k < pushes && k < 4; k++)
        d *= 2;
    return d;
}

static void push_device(campaign *c, size_t i, int64_t now, const campaign_io *io)
{
    campaign_dev *d = &c->devs[i];
    esim_error why = {{0}};
    if (io->push(io->arg, c, i, &why) != ESIM_OK) {
        if (!d->install_error) /* the refresh's error stays the reason */
            set_reason(c, i, "the push could not be sent: %s", why.msg);
    } else {
        if (!io->wakes || io->wakes(io->arg, c, i))
            c->pushes++;
        d->last_push_ms = now;
        if (d->pushes < UINT16_MAX)
            d->pushes++;
    }
    arm(c, i, now + repush_delay(c, d->pushes));
}

/* Moves device |i| to |step| and queues its command at once (the device is
 * connected), or waits for resume when the campaign is paused. */
static void start_step(campaign *c, size_t i, int64_t now, const campaign_io *io, int step)
{
    campaign_dev *d = &c->devs[i];
    d->step = (uint8_t)step;
    d->retries = 0;
    d->need_queue = 1;
    if (c->state != CAMPAIGN_RUNNING) { /* paused: wait for resume */
        set_state(c, i, CDEV_PENDING, now);
        ready_add(c, i);
        return;
    }
    if (!queue_step(c, i, now, io))
        return;
    set_state(c, i, CDEV_ACTIVE, now);
    if (io->push_after_answer)
        push_device(c, i, now, io);
    else
        arm(c, i, now + c->spec.settings.repush_after_ms);
}

/* The device answered its step and is connected: queue the next step now,
 * without a push, so it arrives in the same exchange. */
static void advance(campaign *c, size_t i, int64_t now, const campaign_io *io,
                    campaign_dev_state final_state)
{
    int next = next_step(c, i, c->devs[i].step);
    if (next < 0) {
        finish_device(c, i, final_state, now);
        check_finished(c);
        return;
    }
    start_step(c, i, now, io, next);
}

/* The refresh answered an error other than busy. Its command may have been
 * delivered twice (a restart before its acknowledgement was committed): the
 * SM-DP+ then refuses a second download ("already downloaded") although the
 * eSIM is installed. So the device is asked what it holds: verified if it
 * reports the expected EID/ICCID, failed (with this error first) if not.
 * Without an expected EID nothing could be verified: failed at once. */
static void verify_after_error(campaign *c, size_t i, int64_t now, const campaign_io *io,
                               const char *error)
{
    campaign_dev *d = &c->devs[i];
    if (!d->eid[0]) {
        fail_device(c, i, CDEV_FAILED, now, "%s", error);
        return;
    }
    set_reason(c, i, "%s", error);
    d->install_error = 1;
    d->verify_tries = 0;
    start_step(c, i, now, io, CAMPAIGN_STEP_VERIFY);
}

/* NotNow or busy: wait, then push again (and queue again when the service
 * dropped the command, as it does after an Error). */
static void retry_later(campaign *c, size_t i, int64_t now, bool requeue, const char *what)
{
    campaign_dev *d = &c->devs[i];
    if (d->retries < UINT8_MAX)
        d->retries++;
    if (d->retries > c->spec.settings.max_retries) {
        fail_device(c, i, CDEV_FAILED, now, "%s %u times in a row at the %s step; giving up", what,
                    (unsigned)d->retries, campaign_step_name((campaign_step)d->step));
        return;
    }
    d->need_queue = requeue;
    set_state(c, i, CDEV_RETRY_WAIT, now);
    arm(c, i, now + backoff_ms(c, d->retries));
}

esim_err campaign_on_result(campaign *c, size_t dev, campaign_step step, const campaign_result *r,
                            int64_t now, const campaign_io *io)
{
    if (!c || dev >= c->n || !r)
        return ESIM_EINVAL;
    campaign_dev *d = &c->devs[dev];
    if (campaign_dev_state_final((campaign_dev_state)d->state) || d->step != step)
        return ESIM_ESTATE;
    /* The line moves: an answer to a push of this step. Only an answer to
     * a first push tells how far the line got: a device pushed again is
     * back at its old place in it, not at its re-push's. */
    if (d->pushes) {
        unsigned l = line_of(d);
        if (d->pushes == 1 && d->last_push_ms > c->line_push_ms[l])
            c->line_push_ms[l] = d->last_push_ms;
        c->line_answer_ms[l] = now;
    }
    const char *stepname = campaign_step_name(step);
    switch (r->status) {
    case ESIM_STATUS_ACKNOWLEDGED:
        if (step == CAMPAIGN_STEP_REFRESH && !d->refresh_acked) {
            d->refresh_acked = 1;
            c->refresh_acked++;
        }
        if (step == CAMPAIGN_STEP_VERIFY) {
            if (!d->eid[0]) {
                fail_device(c, dev, CDEV_UNVERIFIED, now,
                            "the service does not know which EID this device should report: "
                            "import the OEM manifest (esim-mdm import eids) and verify again");
                return ESIM_OK;
            }
            if (!campaign_subscriptions_match(r->subs, r->n_subs, d->eid, d->iccid)) {
                /* After a refresh error nothing is being downloaded: one
                 * answer is the device's final word. */
                if (!d->install_error && ++d->verify_tries < c->spec.settings.verify_attempts) {
                    d->need_queue = 1;
                    set_state(c, dev, CDEV_RETRY_WAIT, now);
                    arm(c, dev, now + backoff_ms(c, d->verify_tries));
                    return ESIM_OK;
                }
                char seen[200] = "";
                size_t o = 0;
                for (size_t k = 0; k < r->n_subs && o + 60 < sizeof seen; k++)
                    o += (size_t)snprintf(seen + o, sizeof seen - o, "%sEID %s ICCID %s",
                                          k ? "; " : "", r->subs[k].eid[0] ? r->subs[k].eid : "-",
                                          r->subs[k].iccid[0] ? r->subs[k].iccid : "-");
                if (d->install_error) /* the refresh's error stays first (fail_device) */
                    fail_device(c, dev, CDEV_FAILED, now,
                                "verification found no subscription with EID %s%s%s (the device "
                                "reports: %s)",
                                d->eid, d->iccid[0] ? " and ICCID " : "", d->iccid,
                                r->n_subs ? seen : "none");
                else
                    fail_device(c, dev, CDEV_UNVERIFIED, now,
                                "%s, but the device reports no subscription with EID %s%s%s (it "
                                "reports: %s)",
                                d->refresh_acked ? "the refresh was acknowledged"
                                                 : "verification ran",
                                d->eid, d->iccid[0] ? " and ICCID " : "", d->iccid,
                                r->n_subs ? seen : "none");
                return ESIM_OK;
            }
            if (d->install_error) {
                set_reason(c, dev,
                           "%s; then verification found EID %s%s%s on the device: the eSIM "
                           "is installed",
                           d->reason ? d->reason : "the refresh answered an error", d->eid,
                           d->iccid[0] ? " and ICCID " : "", d->iccid);
                d->install_error = 0;
            }
            advance(c, dev, now, io, CDEV_VERIFIED);
            return ESIM_OK;
        }
        advance(c, dev, now, io, CDEV_DONE);
        return ESIM_OK;
    case ESIM_STATUS_NOT_NOW:
        d->not_now++;
        retry_later(c, dev, now, false, "the device answered NotNow");
        return ESIM_OK;
    case ESIM_STATUS_ERROR: {
        const char *text = r->error_text && *r->error_text ? r->error_text : NULL;
        if (r->busy) {
            char what[160];
            snprintf(what, sizeof what, "the device answered %lld (%s)", (long long)r->error_code,
                     text ? text : "busy");
            retry_later(c, dev, now, true, what);
            return ESIM_OK;
        }
        char why[800];
        if (r->error_code)
            snprintf(why, sizeof why, "the %s command failed with error %lld: %s", stepname,
                     (long long)r->error_code, text ? text : "no description");
        else
            snprintf(why, sizeof why, "the %s command failed: %s", stepname,
                     text ? text : "no error chain given");
        if (step == CAMPAIGN_STEP_REFRESH)
            verify_after_error(c, dev, now, io, why);
        else
            fail_device(c, dev, CDEV_FAILED, now, "%s", why);
        return ESIM_OK;
    }
    case ESIM_STATUS_COMMAND_FORMAT_ERROR:
        fail_device(c, dev, CDEV_FAILED, now,
                    "the device could not read the %s command (CommandFormatError)", stepname);
        return ESIM_OK;
    default:
        return ESIM_EINVAL;
    }
}

void campaign_fail_device(campaign *c, size_t dev, const char *why, int64_t now)
{
    if (!c || dev >= c->n || campaign_dev_state_final((campaign_dev_state)c->devs[dev].state))
        return;
    fail_device(c, dev, CDEV_FAILED, now, "%s", why ? why : "failed");
}

void campaign_queue_lost(campaign *c, size_t dev, const char *why, int64_t now)
{
    if (!c || dev >= c->n || campaign_dev_state_final((campaign_dev_state)c->devs[dev].state))
        return;
    if (c->commands)
        c->commands--; /* counted when it was accepted */
    wait_for_store(c, dev, now, why && *why ? why : "the store failed");
}

void campaign_set_cmd(campaign *c, size_t dev, uint32_t cmd)
{
    if (!c || dev >= c->n)
        return;
    c->devs[dev].cmd = cmd;
    mark_dirty(c, dev);
}

void campaign_set_push_state(campaign *c, size_t dev, uint8_t push_state)
{
    if (!c || dev >= c->n)
        return;
    c->devs[dev].push_state = push_state;
    mark_dirty(c, dev);
}

void campaign_on_push_failed(campaign *c, size_t dev, const char *why, int64_t now)
{
    if (!c || dev >= c->n || campaign_dev_state_final((campaign_dev_state)c->devs[dev].state))
        return;
    if (!c->devs[dev].install_error) /* the refresh's error stays the reason */
        set_reason(c, dev, "the last push failed: %s", why ? why : "no reason given");
    c->devs[dev].changed_ms = now;
}

/* ---- tick -------------------------------------------------------------------- */

static void expire(campaign *c, size_t i, int64_t now)
{
    campaign_dev *d = &c->devs[i];
    const char *step = campaign_step_name((campaign_step)d->step);
    char prev[300] = "";
    if (d->reason)
        snprintf(prev, sizeof prev, "; %s", d->reason);
    switch (d->state) {
    case CDEV_PENDING:
        fail_device(c, i, CDEV_TIMED_OUT, now,
                    "the campaign expired before the device's turn at the %s step%s", step, prev);
        break;
    case CDEV_RETRY_WAIT:
        fail_device(c, i, CDEV_TIMED_OUT, now,
                    "the campaign expired while the device kept deferring the %s step "
                    "(%u NotNow/busy answers)%s",
                    step, (unsigned)d->retries, prev);
        break;
    default:
        fail_device(c, i, CDEV_TIMED_OUT, now,
                    "no answer to the %s command before the campaign expired, after %u "
                    "push%s%s",
                    step, (unsigned)d->pushes, d->pushes == 1 ? "" : "es", prev);
    }
}

static void fire_timer(campaign *c, size_t i, int64_t now, const campaign_io *io)
{
    campaign_dev *d = &c->devs[i];
    d->next_ms = 0;
    if (d->deadline_ms && now >= d->deadline_ms) {
        expire(c, i, now);
        return;
    }
    switch (d->state) {
    case CDEV_RETRY_WAIT: /* back-off over: push again (queue again if needed) */
        set_state(c, i, CDEV_PENDING, now);
        ready_add(c, i);
        break;
    case CDEV_PENDING: /* the store could not queue its command: its turn again */
        ready_add(c, i);
        break;
    case CDEV_ACTIVE: { /* silent: wake it again; the queued command stays as it is */
        /* Not silent while it talks: heard from since the last push and
         * within the last re-push delay, it is busy with its command. One
         * heard from once and silent since (its answer lost to a restart of
         * the service, say, and its retries over) is pushed again. */
        int64_t wait = repush_delay(c, d->pushes);
        int64_t since = d->last_push_ms > now - wait ? d->last_push_ms : now - wait;
        if (io->ask_seen && d->pushes) {
            /* As if seen until the answer comes (campaign_seen_answer). */
            arm(c, i, now + wait);
            io->ask_seen(io->arg, c, i, since, d->gen);
        } else if (io->seen_since && d->pushes && io->seen_since(io->arg, c, i, since))
            arm(c, i, now + wait);
        /* Still in line: no device pushed at or after it has answered yet,
         * while answers to earlier pushes keep coming. A loaded service (or
         * simulator) takes the pushed devices in turn; pushing one again
         * before its turn only adds a wake-up (and, if it lands during its
         * session, a second session). Once a later-pushed device answers,
         * or the answers stop for a re-push delay, it is pushed again. */
        else if (still_in_line(c, d, now, wait))
            arm(c, i, now + wait);
        else
            again_add(c, i);
        break;
    }
    default:
        break;
    }
}

void campaign_seen_answer(campaign *c, size_t dev, uint32_t token, bool seen, int64_t now)
{
    if (!c || dev >= c->n || seen || c->state != CAMPAIGN_RUNNING)
        return;
    campaign_dev *d = &c->devs[dev];
    if (d->gen != token || d->state != CDEV_ACTIVE || !d->next_ms)
        return;
    if (still_in_line(c, d, now, repush_delay(c, d->pushes)))
        return; /* its timer stays */
    disarm(c, dev);
    mark_dirty(c, dev);
    again_add(c, dev);
}

/* Sends what the device in the FIFO needs; true when a push went out. */
static bool serve_ready(campaign *c, size_t i, int64_t now, const campaign_io *io)
{
    campaign_dev *d = &c->devs[i];
    d->in_ready = 0;
    if (d->state == CDEV_PENDING) {
        if (d->need_queue && !queue_step(c, i, now, io))
            return false;
        set_state(c, i, CDEV_ACTIVE, now);
        push_device(c, i, now, io);
        return true;
    }
    if (d->state == CDEV_ACTIVE) {
        push_device(c, i, now, io);
        return true;
    }
    return false;
}

size_t campaign_tick(campaign *c, int64_t now, const campaign_io *io)
{
    if (!c || c->state != CAMPAIGN_RUNNING)
        return 0;
    size_t before = c->n_dirty;
    double rate = c->spec.settings.pushes_per_second;
    double cap = rate / 10 > 1 ? rate / 10 : 1;
    if (c->ticked && now > c->last_tick_ms)
        c->tokens += rate * (double)(now - c->last_tick_ms) / 1000.0;
    else if (!c->ticked)
        c->tokens = cap;
    c->ticked = true;
    if (c->tokens > cap)
        c->tokens = cap;
    c->last_tick_ms = now;

    while (c->heap_len && c->heap[0].at <= now) {
        timer_entry e = c->heap[0];
        heap_pop(c);
        if (e.gen == c->devs[e.dev].gen &&
            !campaign_dev_state_final((campaign_dev_state)c->devs[e.dev].state))
            fire_timer(c, e.dev, now, io);
    }
    /* Re-pushes first: those devices already hold their place in the window. */
    while (c->again_len && c->tokens >= 1 && c->state == CAMPAIGN_RUNNING) {
        size_t i = c->again[c->again_head];
        c->again_head = (c->again_head + 1) % c->n;
        c->again_len--;
        c->devs[i].in_again = 0;
        if (c->devs[i].state == CDEV_ACTIVE) {
            push_device(c, i, now, io);
            c->tokens -= 1;
        }
    }
    /* New work, within the window of devices with a command outstanding:
     * beyond it devices would only wait in line and be re-pushed for nothing. */
    unsigned window = c->spec.settings.max_in_flight;
    while (c->ready_len && c->tokens >= 1 && c->state == CAMPAIGN_RUNNING) {
        size_t i = c->ready[c->ready_head];
        if (window && c->devs[i].state == CDEV_PENDING && c->counts[CDEV_ACTIVE] >= window)
            break;
        c->ready_head = (c->ready_head + 1) % c->n;
        c->ready_len--;
        if (serve_ready(c, i, now, io))
            c->tokens -= 1;
    }
    check_finished(c);
    return c->n_dirty - before;
}

/* ---- lifecycle ------------------------------------------------------------------ */

esim_err campaign_transition(const char *id, campaign_state from, const char *verb,
                             campaign_state *to, esim_error *err)
{
    const char *name = campaign_state_name(from);
    if (strcmp(verb, "pause") == 0) {
        if (from != CAMPAIGN_RUNNING)
            return esim_fail(err, ESIM_ESTATE,
                             "campaign %s is %s: only a running campaign can be paused", id, name);
        *to = CAMPAIGN_PAUSED;
    } else if (strcmp(verb, "resume") == 0) {
        if (from != CAMPAIGN_PAUSED && from != CAMPAIGN_STAGED)
            return esim_fail(err, ESIM_ESTATE,
                             "campaign %s is %s: only a paused or staged campaign can be resumed",
                             id, name);
        *to = CAMPAIGN_RUNNING;
    } else if (strcmp(verb, "cancel") == 0) {
        if (from == CAMPAIGN_CANCELED || from == CAMPAIGN_FINISHED)
            return esim_fail(err, ESIM_ESTATE, "campaign %s is already %s", id, name);
        *to = CAMPAIGN_CANCELED;
    } else {
        return esim_fail(err, ESIM_EINVAL, "unknown action '%s': pause, resume or cancel", verb);
    }
    return ESIM_OK;
}

esim_err campaign_pause(campaign *c, int64_t now, esim_error *err)
{
    (void)now;
    campaign_state to;
    esim_err rc = campaign_transition(c->id, c->state, "pause", &to, err);
    if (rc == ESIM_OK)
        c->state = to;
    return rc;
}

static void start_staged(campaign *c, int64_t now)
{
    for (size_t i = 0; i < c->n; i++) {
        campaign_dev *d = &c->devs[i];
        if (d->state != CDEV_STAGED)
            continue;
        d->deadline_ms = now + c->spec.settings.expiry_ms;
        set_state(c, i, CDEV_PENDING, now);
        ready_add(c, i);
        arm(c, i, d->deadline_ms);
    }
}

esim_err campaign_resume(campaign *c, int64_t now, esim_error *err)
{
    if (c->state == CAMPAIGN_STAGED) {
        c->state = CAMPAIGN_RUNNING;
        c->spec.staged = false;
        start_staged(c, now);
        c->ticked = false;
        return ESIM_OK;
    }
    campaign_state to;
    esim_err rc = campaign_transition(c->id, c->state, "resume", &to, err);
    if (rc != ESIM_OK)
        return rc;
    c->state = to;
    c->ticked = false; /* no allowance saved up while paused */
    return ESIM_OK;
}

esim_err campaign_cancel(campaign *c, int64_t now, esim_error *err)
{
    campaign_state to;
    esim_err rc = campaign_transition(c->id, c->state, "cancel", &to, err);
    if (rc != ESIM_OK)
        return rc;
    for (size_t i = 0; i < c->n; i++) {
        if (campaign_dev_state_final((campaign_dev_state)c->devs[i].state))
            continue;
        disarm(c, i);
        set_state(c, i, CDEV_CANCELED, now);
    }
    c->ready_len = c->again_len = 0;
    for (size_t i = 0; i < c->n; i++)
        c->devs[i].in_ready = c->devs[i].in_again = 0;
    c->state = CAMPAIGN_CANCELED;
    return ESIM_OK;
}

/* ---- construction ---------------------------------------------------------------- */

static esim_err check_spec(const campaign_spec *spec, esim_error *err)
{
    if (!spec)
        return esim_fail(err, ESIM_EINVAL, "no campaign description given");
    bool any = false;
    for (int s = 0; s < CAMPAIGN_STEP_COUNT; s++)
        any |= spec->steps[s];
    if (!any)
        return esim_fail(err, ESIM_EINVAL,
                         "a campaign needs at least one step "
                         "(profile, refresh, verify, erase_keep_esim, esim_wipe)");
    if (spec->steps[CAMPAIGN_STEP_ERASE_KEEP] && spec->steps[CAMPAIGN_STEP_ESIM_WIPE])
        return esim_fail(err, ESIM_EINVAL,
                         "erase_keep_esim and esim_wipe contradict each other: choose one");
    if (spec->steps[CAMPAIGN_STEP_REFRESH] && (!spec->smdp_url || !*spec->smdp_url))
        return esim_fail(err, ESIM_EINVAL, "the refresh step needs the SM-DP+ URL (smdp_url)");
    if (spec->steps[CAMPAIGN_STEP_PROFILE] && esim_policy_is_empty(&spec->policy))
        return esim_fail(err, ESIM_EINVAL,
                         "the profile step needs at least one restriction in the policy");
    if (spec->id && !esim_uuid_valid(spec->id))
        return esim_fail(err, ESIM_EINVAL, "campaign id '%s' is not a UUID", spec->id);
    const campaign_settings *s = &spec->settings;
    if (!(s->pushes_per_second > 0 && s->pushes_per_second <= 1e7))
        return esim_fail(err, ESIM_EINVAL,
                         "pushes per second must be above 0 and at most 10000000");
    if (s->repush_after_ms < 10 || s->expiry_ms < 10 || s->retry_base_ms < 1 ||
        s->retry_max_ms < s->retry_base_ms)
        return esim_fail(err, ESIM_EINVAL,
                         "timings out of range: repush and expiry at least 10 ms, retry back-off "
                         "base at least 1 ms and not above its maximum");
    if (s->max_in_flight > 10000000)
        return esim_fail(err, ESIM_EINVAL, "max in flight must be at most 10000000 (0: no limit)");
    if (s->verify_attempts < 1 || s->verify_attempts > 100 || s->max_retries > 200)
        return esim_fail(err, ESIM_EINVAL,
                         "verify attempts must be 1 to 100 and retries at most 200");
    return ESIM_OK;
}

static esim_err alloc_campaign(const campaign_spec *spec, size_t n, campaign **out, esim_error *err)
{
    if (n == 0 || n > UINT32_MAX - 1)
        return esim_fail(err, ESIM_EINVAL, "a campaign needs 1 to 4294967294 devices, got %zu", n);
    campaign *c = calloc(1, sizeof *c);
    if (!c)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    c->devs = calloc(n, sizeof *c->devs);
    c->ready = malloc(n * sizeof *c->ready);
    c->again = malloc(n * sizeof *c->again);
    c->dirty = malloc(n * sizeof *c->dirty);
    c->name = spec->name ? strdup(spec->name) : NULL;
    c->smdp_url = spec->smdp_url ? strdup(spec->smdp_url) : NULL;
    if (!c->devs || !c->ready || !c->again || !c->dirty || (spec->name && !c->name) ||
        (spec->smdp_url && !c->smdp_url)) {
        campaign_free(c);
        return esim_fail(err, ESIM_ENOMEM, "out of memory for %zu devices", n);
    }
    c->n = n;
    c->spec = *spec;
    c->spec.name = c->name;
    c->spec.smdp_url = c->smdp_url;
    if (spec->id)
        snprintf(c->id, sizeof c->id, "%s", spec->id);
    else
        esim_uuid_new(c->id);
    c->spec.id = c->id;
    *out = c;
    return ESIM_OK;
}

/* An open-addressing check that |targets| holds no UDID twice. */
static esim_err check_distinct(const char *const *udids, size_t n, esim_error *err)
{
    size_t cap = 64;
    while (cap < n * 2)
        cap *= 2;
    const char **slots = calloc(cap, sizeof *slots);
    if (!slots)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_err rc = ESIM_OK;
    for (size_t i = 0; i < n && rc == ESIM_OK; i++) {
        size_t k = esim_hash_str(udids[i]) & (cap - 1);
        while (slots[k]) {
            if (strcmp(slots[k], udids[i]) == 0) {
                rc = esim_fail(err, ESIM_EINVAL, "device %s is listed twice", udids[i]);
                break;
            }
            k = (k + 1) & (cap - 1);
        }
        slots[k] = udids[i];
    }
    free(slots);
    return rc;
}

esim_err campaign_new(const campaign_spec *spec, const campaign_target *targets, size_t n,
                      int64_t now, campaign **out, esim_error *err)
{
    esim_err rc = check_spec(spec, err);
    if (rc != ESIM_OK)
        return rc;
    if (!targets || !out)
        return esim_fail(err, ESIM_EINVAL, "no devices given");
    const char **udids = malloc((n ? n : 1) * sizeof *udids);
    if (!udids)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (esim_udid_validate(targets[i].udid, err) != ESIM_OK) {
            free(udids);
            return ESIM_EINVAL;
        }
        if (targets[i].expected_eid && *targets[i].expected_eid &&
            esim_eid_validate(targets[i].expected_eid, err) != ESIM_OK) {
            free(udids);
            return ESIM_EINVAL;
        }
        if (targets[i].expected_iccid && *targets[i].expected_iccid &&
            esim_iccid_validate(targets[i].expected_iccid, err) != ESIM_OK) {
            free(udids);
            return ESIM_EINVAL;
        }
        udids[i] = targets[i].udid;
    }
    rc = check_distinct(udids, n, err);
    free(udids);
    if (rc != ESIM_OK)
        return rc;
    campaign *c = NULL;
    if ((rc = alloc_campaign(spec, n, &c, err)) != ESIM_OK)
        return rc;
    c->created_ms = now;
    c->state = spec->staged ? CAMPAIGN_STAGED : CAMPAIGN_RUNNING;
    int first = first_step(c);
    for (size_t i = 0; i < n; i++) {
        campaign_dev *d = &c->devs[i];
        snprintf(d->udid, sizeof d->udid, "%s", targets[i].udid);
        snprintf(d->eid, sizeof d->eid, "%s",
                 targets[i].expected_eid ? targets[i].expected_eid : "");
        snprintf(d->iccid, sizeof d->iccid, "%s",
                 targets[i].expected_iccid ? targets[i].expected_iccid : "");
        d->esim_installed = targets[i].esim_installed;
        d->platform = targets[i].platform;
        d->step = (uint8_t)first;
        if (first == CAMPAIGN_STEP_REFRESH && d->esim_installed) {
            int ns = next_step(c, i, first);
            if (ns >= 0)
                d->step = (uint8_t)ns;
        }
        d->need_queue = 1;
        d->changed_ms = now;
        d->state = CDEV_STAGED;
        c->counts[CDEV_STAGED]++;
        if (!spec->staged && !targets[i].staged) {
            d->deadline_ms = now + spec->settings.expiry_ms;
            set_state(c, i, CDEV_PENDING, now);
            ready_add(c, i);
            arm(c, i, d->deadline_ms);
        } else {
            mark_dirty(c, i);
        }
    }
    if (build_index(c) != ESIM_OK) {
        campaign_free(c);
        return esim_fail(err, ESIM_ENOMEM, "out of memory for %zu devices", n);
    }
    /* A device whose only remaining step was a refresh it must not repeat
     * has nothing to do: it is done without a second download. */
    for (size_t i = 0; i < n; i++) {
        campaign_dev *d = &c->devs[i];
        if (d->state == CDEV_PENDING && d->step == CAMPAIGN_STEP_REFRESH && d->esim_installed) {
            set_reason(c, i,
                       "the eSIM is already installed; its profile was consumed and "
                       "cannot be downloaded again (reset the order on the SM-DP+ first)");
            finish_device(c, i, CDEV_DONE, now);
        }
    }
    check_finished(c);
    *out = c;
    return ESIM_OK;
}

esim_err campaign_restore(const campaign_spec *spec, campaign_state state, int64_t created_ms,
                          const campaign_dev *devs, size_t n, int64_t now, campaign **out,
                          esim_error *err)
{
    esim_err rc = check_spec(spec, err);
    if (rc != ESIM_OK)
        return rc;
    if (!devs || !out)
        return esim_fail(err, ESIM_EINVAL, "no devices given");
    campaign *c = NULL;
    if ((rc = alloc_campaign(spec, n, &c, err)) != ESIM_OK)
        return rc;
    c->created_ms = created_ms;
    c->state = state;
    for (size_t i = 0; i < n; i++) {
        campaign_dev *d = &c->devs[i];
        *d = devs[i];
        d->reason = devs[i].reason ? strdup(devs[i].reason) : NULL;
        d->dirty = d->in_ready = d->in_again = 0;
        d->gen = 0;
        if (d->state >= CDEV_STATE_COUNT || d->step >= CAMPAIGN_STEP_COUNT) {
            campaign_free(c);
            return esim_fail(err, ESIM_EINVAL, "stored record of device %s is corrupt", d->udid);
        }
        c->counts[d->state]++;
        if (d->refresh_acked)
            c->refresh_acked++;
        if (campaign_dev_state_final((campaign_dev_state)d->state))
            continue;
        if (d->state == CDEV_PENDING)
            ready_add(c, i);
        int64_t at = d->next_ms ? d->next_ms : d->deadline_ms;
        if (!at)
            at = now;
        arm(c, i, at);
    }
    c->n_dirty = 0;
    for (size_t i = 0; i < n; i++)
        c->devs[i].dirty = 0;
    if (build_index(c) != ESIM_OK) {
        campaign_free(c);
        return esim_fail(err, ESIM_ENOMEM, "out of memory for %zu devices", n);
    }
    check_finished(c);
    *out = c;
    return ESIM_OK;
}

void campaign_free(campaign *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        free(c->devs[i].reason);
    free(c->devs);
    free(c->ready);
    free(c->again);
    free(c->dirty);
    free(c->heap);
    free(c->index);
    free(c->name);
    free(c->smdp_url);
    free(c);
}
