/*
 * campaign.c — campaigns inside the service: turns the engine's requests
 * into queued commands (one command per step per batch, many devices) and
 * pushes, feeds it every result through the service's result hook, drives
 * its clock from a short timer, and writes what changed to the service's
 * store in the same transaction as the commands it queues. Also: creating a campaign from the API's
 * JSON (target, distribution, steps, warnings) and the offline imports.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "core/internal.h"
#include "campaign/campaign_internal.h"
#include "campaign/platform.h"

/* How often the engine's clock advances: fine enough for the push ceiling. */
#define CAMPAIGN_TICK_MS 10
/* Answers are batched this long before their next commands are queued. */
#define CAMPAIGN_FLUSH_MS 5
#define CAMPAIGN_MAX_DEVICES 2000000u
/* Several instances on one store: each campaign is driven by the holder of
 * its lease, renewed this often and lapsing this long after its holder
 * stopped renewing (died, or lost the database). */
#define CAMPAIGN_LEASE_RENEW_MS 1000
#define CAMPAIGN_LEASE_TTL_MS 4000
/* The owner reads the answers other instances recorded this often, in
 * case their notification was lost (an instance killed between its commit
 * and its NOTIFY). */
#define CAMPAIGN_CATCH_UP_MS 5000
/* A campaign another instance drives is read again from the store when the
 * API shows it and this copy is older than this. */
#define CAMPAIGN_SNAPSHOT_MS 500
#define CAMPAIGN_MAX_WARNINGS 1000u

/* Fates of a push, as kept in campaign_dev.push_state. */
enum { PUSH_NONE = 0, PUSH_SENT, PUSH_PENDING, PUSH_NO_TOKEN, PUSH_DEAD, PUSH_FAILED };
static const char *const push_state_words[] = {"none",     "sent",       "pending",
                                               "no_token", "dead_token", "failed"};

typedef struct {
    char uuid[ESIM_UUID_LEN + 1];
    uint8_t step;
} cmd_rec;

typedef struct {
    uint32_t *v;
    size_t n, cap;
} idx_vec;

typedef struct camp_slot {
    struct campaigns *owner;
    campaign *c;
    char *spec_json;
    void *pctx[CAMPAIGN_PLATFORM_COUNT]; /* what each platform prepared for this campaign */
    cmd_rec *cmds;
    size_t n_cmds, cap_cmds;
    size_t n_cmds_saved; /* cmds[0..n_cmds_saved) are in the store */
    /* devices whose step command is to be queued, by platform and step */
    idx_vec pending[CAMPAIGN_PLATFORM_COUNT][CAMPAIGN_STEP_COUNT];
    idx_vec pushes; /* devices to push after the queueing */
    /* pushes[0..pushes_ready): asked for before the store job in flight
     * took its batches, so whatever they wake the device for is in that
     * job's unit; the rest wait for the next job's (a push must not reach
     * a device before the command it is for is committed: the device
     * would check in, find nothing, and the campaign would wait on it). */
    size_t pushes_ready;
    bool row_dirty; /* the campaign row changed (state) */
    campaign_state last_state;
    /* The warnings given at creation ({"total", "by_kind", "first"}), kept
     * in memory for the dashboard; NULL after a restart. */
    json_t *creation_warnings;
    /* Driven here: this instance holds the campaign's lease (always, on a
     * store of one instance). Otherwise |c| is a copy read from the store
     * at |loaded_ms|, shown by the API and never driven or written. */
    bool owned;
    int64_t loaded_ms;
    char holder[64]; /* who drives it, as last read */
    /* The version of the campaign's row as this instance last wrote or
     * read it (0: not in the store yet), and the one the open unit writes
     * (0: none); a state is written only over the version seen
     * (write_state, campaigns_control). */
    int64_t version, version_unit;
    /* The campaign's totals (campaign_pushes, campaign_commands) as the
     * store has them, and as the open unit writes them (|totals_unit|):
     * the instance that takes the campaign over goes on from them. */
    uint64_t pushes_saved, commands_saved, pushes_unit, commands_unit;
    bool totals_unit;
    bool in_flush; /* named by the flush on a store worker: not replaced until it is back */
} camp_slot;

typedef struct {
    uint32_t slot, cmd;
    bool used;
} map_entry;

typedef struct {
    esim_api_request *r;
    char id[128];
} flush_waiter;

typedef struct {
    char udid[65];
    char uuid[128];
} queue_cancel;

/* The engine's question at a re-push timer (campaign_io.ask_seen): has
 * device |dev| of |s| talked to the service since |since|? Read from the
 * store by a store job (a device may check in on another instance),
 * answered on the loop. */
typedef struct {
    struct camp_slot *s;
    const campaign *c;
    uint32_t dev, token;
    int64_t since;
    char udid[65];
    bool seen;
} seen_ask;

struct campaigns {
    esim_service *svc;
    camp_slot **slots;
    size_t n_slots, cap_slots;
    map_entry *map; /* command UUID -> (slot, command) */
    size_t map_cap, map_len;
    struct event *tick_ev, *flush_ev;
    bool flush_armed;
    store_device_facts *facts; /* learned since the last write */
    size_t n_facts, cap_facts;
    bool shared;                   /* the store is shared by several instances */
    int64_t next_lease_ms;         /* when leases are renewed and taken next */
    int64_t next_catch_up_ms;      /* when owned campaigns read others' answers */
    uint64_t takeovers, forwarded; /* for /metrics */
    /* With a store pool, a flush is a store job (flush_start): at most one
     * at a time; what asks for one meanwhile sets |again|, and the held
     * answers of results that asked wait in |next_holds| for that next one. */
    struct flush_job *job;
    bool again;
    bool fed; /* a result of this batch went to an engine: its answers wait for the flush */
    esim_answer_hold **next_holds;
    size_t n_next_holds, cap_next_holds;
    size_t replays_out;          /* replay jobs not back yet */
    struct lease_job *lease_job; /* the lease tick's job, while it is out */
    /* Requests answered once the next flush is back (a pause, resume or
     * cancel: what it changed is written first), and the queue entries of
     * canceled devices that flush takes off, in its own unit. */
    flush_waiter *next_waiters;
    size_t n_next_waiters, cap_next_waiters;
    queue_cancel *cancels;
    size_t n_cancels, cap_cancels;
    seen_ask *asks; /* asked by the engines, not yet in a store job */
    size_t n_asks, cap_asks;
    bool seen_out; /* their store job is out: one at a time, the next tick's wait */
};

/* Takes |uuid| off |udid|'s queue in the next flush's unit; false when out
 * of memory (then the caller does it at once). */
static bool cancel_later(campaigns *cs, const char *udid, const char *uuid)
{
    if (cs->n_cancels == cs->cap_cancels) {
        queue_cancel *grown =
            esim_grow(cs->cancels, &cs->cap_cancels, cs->n_cancels + 1, sizeof *grown);
        if (!grown)
            return false;
        cs->cancels = grown;
    }
    queue_cancel *q = &cs->cancels[cs->n_cancels++];
    snprintf(q->udid, sizeof q->udid, "%s", udid);
    snprintf(q->uuid, sizeof q->uuid, "%s", uuid);
    return true;
}

static esim_err vec_push(idx_vec *v, uint32_t x)
{
    if (v->n == v->cap) {
        uint32_t *nv = esim_grow(v->v, &v->cap, v->n + 1, sizeof *nv);
        if (!nv)
            return ESIM_ENOMEM;
        v->v = nv;
    }
    v->v[v->n++] = x;
    return ESIM_OK;
}

/* ---- command map ---------------------------------------------------------------- */

static const char *map_key(campaigns *cs, const map_entry *e)
{
    return cs->slots[e->slot]->cmds[e->cmd].uuid;
}

static esim_err map_insert(campaigns *cs, uint32_t slot, uint32_t cmd)
{
    if ((cs->map_len + 1) * 2 > cs->map_cap) {
        size_t cap = cs->map_cap ? cs->map_cap * 2 : 1024;
        map_entry *m = calloc(cap, sizeof *m);
        if (!m)
            return ESIM_ENOMEM;
        for (size_t i = 0; i < cs->map_cap; i++) {
            if (!cs->map[i].used)
                continue;
            size_t k = esim_hash_str(map_key(cs, &cs->map[i])) & (cap - 1);
            while (m[k].used)
                k = (k + 1) & (cap - 1);
            m[k] = cs->map[i];
        }
        free(cs->map);
        cs->map = m;
        cs->map_cap = cap;
    }
    map_entry e = {slot, cmd, true};
    size_t k = esim_hash_str(map_key(cs, &e)) & (cs->map_cap - 1);
    while (cs->map[k].used)
        k = (k + 1) & (cs->map_cap - 1);
    cs->map[k] = e;
    cs->map_len++;
    return ESIM_OK;
}

static const map_entry *map_find(campaigns *cs, const char *uuid)
{
    if (!cs->map_cap || !uuid)
        return NULL;
    size_t k = esim_hash_str(uuid) & (cs->map_cap - 1);
    while (cs->map[k].used) {
        if (strcmp(map_key(cs, &cs->map[k]), uuid) == 0)
            return &cs->map[k];
        k = (k + 1) & (cs->map_cap - 1);
    }
    return NULL;
}

/* Builds the map again from every slot's commands (a slot was replaced). */
static esim_err map_rebuild(campaigns *cs)
{
    free(cs->map);
    cs->map = NULL;
    cs->map_cap = cs->map_len = 0;
    for (uint32_t k = 0; k < cs->n_slots; k++)
        for (uint32_t j = 0; j < cs->slots[k]->n_cmds; j++)
            if (map_insert(cs, k, j) != ESIM_OK)
                return ESIM_ENOMEM;
    return ESIM_OK;
}

static uint32_t slot_index(campaigns *cs, const camp_slot *s)
{
    for (size_t i = 0; i < cs->n_slots; i++)
        if (cs->slots[i] == s)
            return (uint32_t)i;
    return UINT32_MAX;
}

static esim_err add_cmd(campaigns *cs, camp_slot *s, const char *uuid, int step, uint32_t *out)
{
    if (s->n_cmds == s->cap_cmds) {
        cmd_rec *nc = esim_grow(s->cmds, &s->cap_cmds, s->n_cmds + 1, sizeof *nc);
        if (!nc)
            return ESIM_ENOMEM;
        s->cmds = nc;
    }
    cmd_rec *r = &s->cmds[s->n_cmds];
    snprintf(r->uuid, sizeof r->uuid, "%s", uuid);
    r->step = (uint8_t)step;
    esim_err rc = map_insert(cs, slot_index(cs, s), (uint32_t)s->n_cmds);
    if (rc != ESIM_OK)
        return rc;
    *out = (uint32_t)s->n_cmds++;
    return ESIM_OK;
}

/* ---- the engine's I/O ---------------------------------------------------------------- */

static void arm_flush(campaigns *cs)
{
    if (cs->flush_armed)
        return;
    struct timeval tv = {0, CAMPAIGN_FLUSH_MS * 1000};
    evtimer_add(cs->flush_ev, &tv);
    cs->flush_armed = true;
}

static esim_err io_queue(void *arg, campaign *c, size_t dev, campaign_step step, esim_error *err)
{
    camp_slot *s = arg;
    uint8_t p = campaign_device_at(c, dev)->platform;
    if (p >= CAMPAIGN_PLATFORM_COUNT)
        return esim_fail(err, ESIM_EINVAL, "the device's platform has no adapter");
    if (vec_push(&s->pending[p][step], (uint32_t)dev) != ESIM_OK)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    arm_flush(s->owner);
    return ESIM_OK;
}

static esim_err io_push(void *arg, campaign *c, size_t dev, esim_error *err)
{
    (void)c;
    camp_slot *s = arg;
    if (vec_push(&s->pushes, (uint32_t)dev) != ESIM_OK)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    arm_flush(s->owner);
    return ESIM_OK;
}

static bool io_seen_since(void *arg, campaign *c, size_t dev, int64_t since_ms)
{
    camp_slot *s = arg;
    store *st = esim_service_store(s->owner->svc);
    store_device d;
    return esim_store_device_get(st, campaign_device_at(c, dev)->udid, &d, NULL) == ESIM_OK &&
           d.last_seen_at > since_ms;
}

/* With a store pool: the question is kept, and the tick's end reads the
 * answers in a store job (seen_submit). Out of memory: no answer (the
 * device's timer stays, as for a device seen). */
static void io_ask_seen(void *arg, campaign *c, size_t dev, int64_t since_ms, uint32_t token)
{
    camp_slot *s = arg;
    campaigns *cs = s->owner;
    if (cs->n_asks == cs->cap_asks) {
        seen_ask *grown = esim_grow(cs->asks, &cs->cap_asks, cs->n_asks + 1, sizeof *grown);
        if (!grown)
            return;
        cs->asks = grown;
    }
    seen_ask *a = &cs->asks[cs->n_asks++];
    a->s = s;
    a->c = c;
    a->dev = (uint32_t)dev;
    a->token = token;
    a->since = since_ms;
    a->seen = false;
    snprintf(a->udid, sizeof a->udid, "%s", campaign_device_at(c, dev)->udid);
}

typedef struct {
    campaigns *cs;
    seen_ask *asks;
    size_t n;
} seen_job;

/* On a pool worker: each device's last check-in, as the store has it
 * (written by whichever instance the device reached). A device the store
 * cannot read counts as not seen, as on the loop. */
static void seen_run(store *st, void *arg)
{
    seen_job *j = arg;
    for (size_t i = 0; i < j->n; i++) {
        store_device d;
        j->asks[i].seen = esim_store_device_get(st, j->asks[i].udid, &d, NULL) == ESIM_OK &&
                          d.last_seen_at > j->asks[i].since;
    }
}

static bool slot_alive(campaigns *cs, const camp_slot *s, const campaign *c)
{
    for (size_t k = 0; k < cs->n_slots; k++)
        if (cs->slots[k] == s)
            return s->c == c;
    return false;
}

/* On the loop: the answers to the engines of the campaigns still driven
 * here (a campaign replaced or let go meanwhile asks again). */
static void seen_done(esim_service *svc, void *arg, bool ran)
{
    (void)svc;
    seen_job *j = arg;
    j->cs->seen_out = false;
    int64_t now = esim_now_ms();
    for (size_t i = 0; ran && i < j->n; i++) {
        seen_ask *a = &j->asks[i];
        if (slot_alive(j->cs, a->s, a->c) && a->s->owned)
            campaign_seen_answer(a->s->c, a->dev, a->token, a->seen, now);
    }
    free(j->asks);
    free(j);
}

/* The questions the engines asked since the last job, as one store job. */
static void seen_submit(campaigns *cs)
{
    seen_job *j = calloc(1, sizeof *j);
    if (!j) {
        cs->n_asks = 0;
        return;
    }
    j->cs = cs;
    j->asks = cs->asks;
    j->n = cs->n_asks;
    cs->asks = NULL;
    cs->n_asks = cs->cap_asks = 0;
    cs->seen_out = true;
    if (esim_service_store_job(cs->svc, seen_run, seen_done, j) != ESIM_OK) {
        cs->seen_out = false;
        free(j->asks);
        free(j);
    }
}

/* IoT eUICCs poll the eIM: nothing is sent to wake them. */
static bool io_wakes(void *arg, campaign *c, size_t dev)
{
    (void)arg;
    return campaign_device_at(c, dev)->platform != CAMPAIGN_PLATFORM_IOT;
}

static campaign_io slot_io(camp_slot *s)
{
    campaign_io io = {s, io_queue, io_push, true, io_seen_since, io_wakes, NULL};
    /* With a store pool the store is read off the loop. */
    if (esim_service_store_jobs_async(s->owner->svc))
        io.ask_seen = io_ask_seen;
    return io;
}

/* The command of |step| for |s| on platform |p|, with identifier |uuid|
 * (NULL: a fresh one). |dev| is the device it is built for, or -1 for a
 * command a whole batch shares. */
static esim_err build_step_command(camp_slot *s, uint8_t p, campaign_step step, long dev,
                                   const char *uuid, campaign_command *out, esim_error *err)
{
    const campaign_platform *pl = campaign_platform_get(p);
    if (!pl || !s->pctx[p])
        return esim_fail(err, ESIM_EINVAL, "the device's platform has no adapter");
    const campaign_spec *spec = campaign_get_spec(s->c);
    campaign_order o = {.step = step, .policy = &spec->policy, .smdp_url = spec->smdp_url};
    if (dev >= 0) {
        const campaign_dev *d = campaign_device_at(s->c, (size_t)dev);
        o.eid = d->eid;
        o.iccid = d->iccid;
    }
    return pl->build(s->pctx[p], &o, uuid, out, err);
}

/* One step's command for a batch of devices: built and recorded (in the
 * campaign's command list, and the devices point at it) before it is
 * queued, so the record written first names it. */
typedef struct {
    camp_slot *s;
    uint8_t platform;
    campaign_step step;
    campaign_command cmd;
    uint32_t ref;
    uint32_t *devs;
    size_t n;
    /* As a store job (flush_start): the devices' UDIDs, copied, and whether
     * the all-or-nothing enqueue refused the batch, with why. */
    char **udids;
    bool refused;
    esim_error why;
} step_batch;

static void batch_udids_free(step_batch *b)
{
    for (size_t k = 0; b->udids && k < b->n; k++)
        free(b->udids[k]);
    free(b->udids);
    b->udids = NULL;
}

static void batch_free(step_batch *b)
{
    campaign_command_free(&b->cmd);
    batch_udids_free(b);
    free(b->devs);
}

/* Fills |b| from the pending devices |v| of platform |p| and |step|
 * (emptied). false when nothing is to be queued (every device failed or
 * moved on). |v| holds one device when the platform builds a command per
 * device. */
static bool prepare_step(campaigns *cs, camp_slot *s, uint8_t p, campaign_step step, idx_vec *v,
                         int64_t now, step_batch *b)
{
    campaign *c = s->c;
    memset(b, 0, sizeof *b);
    b->s = s;
    b->platform = p;
    b->step = step;
    b->devs = malloc((v->n ? v->n : 1) * sizeof *b->devs);
    bool per_device = campaign_platform_get(p) && campaign_platform_get(p)->per_device_commands;
    esim_error e = {{0}};
    esim_err rc = b->devs ? build_step_command(s, p, step, per_device && v->n ? (long)v->v[0] : -1,
                                               NULL, &b->cmd, &e)
                          : esim_fail(&e, ESIM_ENOMEM, "out of memory");
    if (rc == ESIM_OK)
        rc = add_cmd(cs, s, b->cmd.uuid, step, &b->ref);
    for (size_t k = 0; k < v->n; k++) {
        const campaign_dev *d = campaign_device_at(c, v->v[k]);
        if (d->state != CDEV_ACTIVE || d->step != step)
            continue; /* canceled or moved on meanwhile */
        if (rc != ESIM_OK) {
            campaign_fail_device(c, v->v[k], e.msg[0] ? e.msg : "out of memory", now);
            continue;
        }
        campaign_set_cmd(c, v->v[k], b->ref);
        b->devs[b->n++] = v->v[k];
    }
    v->n = 0;
    return rc == ESIM_OK && b->n > 0;
}

/* Queues a prepared batch: one command, many devices. When the
 * all-or-nothing enqueue refuses it (a device checked out meanwhile), each
 * device is tried alone so one bad device fails alone. */
static void enqueue_batch(campaigns *cs, step_batch *b, int64_t now)
{
    camp_slot *s = b->s;
    campaign *c = s->c;
    const campaign_platform *pl = campaign_platform_get(b->platform);
    const char **udids = malloc(b->n * sizeof *udids);
    esim_error e = {{0}};
    esim_err rc = udids && pl ? ESIM_OK : esim_fail(&e, ESIM_ENOMEM, "out of memory");
    for (size_t k = 0; rc == ESIM_OK && k < b->n; k++)
        udids[k] = campaign_device_at(c, b->devs[k])->udid;
    store *st = esim_service_store(cs->svc);
    if (rc == ESIM_OK)
        rc = pl->enqueue(cs->svc, st, &b->cmd, udids, b->n, &e);
    if (rc == ESIM_OK)
        esim_service_enqueued(cs->svc, udids, b->n);
    if (rc != ESIM_OK && rc != ESIM_ENOMEM && rc != ESIM_ESTORE) {
        for (size_t k = 0; k < b->n; k++) {
            const char *one = udids[k];
            campaign_command single = {0};
            esim_error e1 = {{0}};
            uint32_t ref = 0;
            esim_err r1 =
                build_step_command(s, b->platform, b->step, (long)b->devs[k], NULL, &single, &e1);
            if (r1 == ESIM_OK)
                r1 = add_cmd(cs, s, single.uuid, b->step, &ref);
            if (r1 == ESIM_OK)
                r1 = pl->enqueue(cs->svc, st, &single, &one, 1, &e1);
            if (r1 == ESIM_OK) {
                esim_service_enqueued(cs->svc, &one, 1);
                campaign_set_cmd(c, b->devs[k], ref);
            } else
                campaign_fail_device(c, b->devs[k], e1.msg[0] ? e1.msg : "could not queue", now);
            campaign_command_free(&single);
        }
        rc = ESIM_OK;
    }
    /* The store failed (nothing of the batch was kept): its devices are
     * queued again later. Out of memory: they fail. */
    for (size_t k = 0; rc != ESIM_OK && k < b->n; k++)
        if (rc == ESIM_ESTORE)
            campaign_queue_lost(c, b->devs[k], e.msg, now);
        else
            campaign_fail_device(c, b->devs[k], e.msg[0] ? e.msg : "out of memory", now);
    free(udids);
}

/* The push targets (token, magic, platform) of a slot's s->pushes[0..n),
 * read on a store worker by the flush's job (flush_run). */
typedef struct {
    char udid[65];
    esim_err rc;
    esim_error e;
    store_push_target t;
} push_read_one;

typedef struct {
    camp_slot *s;
    size_t n;
    push_read_one *r;
} push_group;

/* Pushes the devices of s->pushes[0..upto) and keeps the rest for later.
 * |g| (may be NULL: read here, on the loop) holds their targets as read
 * on a store worker. */
static void flush_pushes(campaigns *cs, camp_slot *s, size_t upto, int64_t now, const push_group *g)
{
    if (upto > s->pushes.n)
        upto = s->pushes.n;
    if (g && g->n != upto)
        g = NULL;
    campaign *c = s->c;
    for (size_t k = 0; k < upto; k++) {
        size_t i = s->pushes.v[k];
        const campaign_dev *d = campaign_device_at(c, i);
        if (d->state != CDEV_ACTIVE)
            continue; /* failed while queueing, or canceled */
        esim_push_state ps = ESIM_PUSH_FAILED;
        esim_error e = {{0}};
        esim_err rc;
        if (g && strcmp(g->r[k].udid, d->udid) == 0) {
            rc = g->r[k].rc;
            if (rc == ESIM_OK)
                esim_service_push_to(cs->svc, &g->r[k].t, &ps, &e);
            else
                e = g->r[k].e;
        } else
            rc = esim_service_push(cs->svc, d->udid, &ps, &e);
        uint8_t code = PUSH_FAILED;
        const char *why = NULL;
        if (rc != ESIM_OK)
            why = e.msg;
        else if (ps == ESIM_PUSH_SENT)
            code = PUSH_SENT;
        else if (ps == ESIM_PUSH_PENDING)
            code = PUSH_PENDING;
        else if (ps == ESIM_PUSH_NO_TOKEN) {
            code = PUSH_NO_TOKEN;
            why = "the device has no push token (no TokenUpdate yet)";
        } else if (ps == ESIM_PUSH_DEAD_TOKEN) {
            code = PUSH_DEAD;
            why = "APNs said the push token is dead; waiting for a new TokenUpdate";
        } else
            why = e.msg[0] ? e.msg : "the APNs client refused the push";
        campaign_set_push_state(c, i, code);
        if (why)
            campaign_on_push_failed(c, i, why, now);
    }
    memmove(s->pushes.v, s->pushes.v + upto, (s->pushes.n - upto) * sizeof *s->pushes.v);
    s->pushes.n -= upto;
    s->pushes_ready = 0;
}

/* The store's record of device |i| of |c|, whose commands are |cmds|. */
static void device_record_of(const campaign *c, const cmd_rec *cmds, size_t n_cmds, size_t i,
                             store_campaign_device *out)
{
    const campaign_dev *d = campaign_device_at(c, i);
    /* Copied whole, as each is a terminated string in an array no longer
     * than the record's (snprintf was ≈ 600 instructions a field, four
     * fields a record, five records a device). */
    _Static_assert(sizeof d->udid == sizeof out->udid && sizeof d->eid == sizeof out->eid &&
                       sizeof d->iccid == sizeof out->iccid &&
                       sizeof cmds->uuid <= sizeof out->command_uuid,
                   "a device record's strings fit the store's");
    memset(out, 0, sizeof *out);
    out->index = i;
    memcpy(out->udid, d->udid, sizeof out->udid);
    memcpy(out->eid, d->eid, sizeof out->eid);
    memcpy(out->iccid, d->iccid, sizeof out->iccid);
    out->state = d->state;
    out->step = d->step;
    out->retries = d->retries;
    out->verify_tries = d->verify_tries;
    out->flags =
        d->esim_installed | d->refresh_acked << 1 | d->need_queue << 2 | d->install_error << 3;
    out->pushes = d->pushes;
    out->not_now = d->not_now;
    out->changed_ms = d->changed_ms;
    out->next_ms = d->next_ms;
    out->deadline_ms = d->deadline_ms;
    out->last_push_ms = d->last_push_ms;
    out->push_state = d->push_state;
    if (d->cmd < n_cmds)
        memcpy(out->command_uuid, cmds[d->cmd].uuid, sizeof cmds[d->cmd].uuid);
    out->reason = d->reason;
    out->platform = d->platform;
}

/* The store's record of device |i| of |s|. */
static void device_record(const camp_slot *s, size_t i, store_campaign_device *out)
{
    device_record_of(s->c, s->cmds, s->n_cmds, i, out);
}

static esim_err write_state(campaigns *cs, camp_slot *s, int64_t now, esim_error *err);

/* Device records go to the store this many at a time. */
#define RECORDS_PER_SAVE 512

/* Writes what changed of campaign |s| (its row, new commands, changed
 * devices) into the store's open unit. */
static esim_err write_one(campaigns *cs, camp_slot *s, int64_t now, esim_error *err)
{
    store *st = esim_service_store(cs->svc);
    campaign *c = s->c;
    if (campaign_get_state(c) != s->last_state) {
        s->row_dirty = true;
        s->last_state = campaign_get_state(c);
    }
    store_campaign row = {.id = campaign_id(c),
                          .name = campaign_name(c),
                          .definition = s->spec_json,
                          .state = (int)campaign_get_state(c),
                          .created_ms = campaign_created_ms(c)};
    store_campaign_command *cmds = NULL;
    size_t n_cmds = s->n_cmds - s->n_cmds_saved;
    if (n_cmds && !(cmds = malloc(n_cmds * sizeof *cmds)))
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    for (size_t j = 0; j < n_cmds; j++) {
        snprintf(cmds[j].uuid, sizeof cmds[j].uuid, "%s", s->cmds[s->n_cmds_saved + j].uuid);
        cmds[j].step = s->cmds[s->n_cmds_saved + j].step;
    }
    esim_err rc = ESIM_OK;
    /* Once the row is in the store, its state changes only over the
     * version this instance saw. */
    bool create = s->row_dirty && s->version == 0;
    if (s->row_dirty && !create)
        rc = write_state(cs, s, now, err);
    if (rc == ESIM_OK && (create || n_cmds))
        rc = esim_store_campaign_save(st, campaign_id(c), create ? &row : NULL, cmds, n_cmds, NULL,
                                      0, now, err);
    if (rc == ESIM_OK && create)
        s->version_unit = 1;
    free(cmds);
    uint64_t pushes = campaign_pushes(c), commands = campaign_commands(c);
    if (rc == ESIM_OK && (pushes != s->pushes_saved || commands != s->commands_saved)) {
        rc =
            esim_store_campaign_totals(st, campaign_id(c), (int64_t)pushes, (int64_t)commands, err);
        s->pushes_unit = pushes;
        s->commands_unit = commands;
        s->totals_unit = rc == ESIM_OK;
    }
    size_t n = 0;
    const size_t *dirty = campaign_take_dirty(c, &n);
    store_campaign_device *recs = NULL;
    if (rc == ESIM_OK && n && !(recs = malloc(RECORDS_PER_SAVE * sizeof *recs)))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    for (size_t j = 0; rc == ESIM_OK && j < n; j += RECORDS_PER_SAVE) {
        size_t m = n - j < RECORDS_PER_SAVE ? n - j : RECORDS_PER_SAVE;
        for (size_t x = 0; x < m; x++)
            device_record(s, dirty[j + x], &recs[x]);
        rc = esim_store_campaign_save(st, campaign_id(c), NULL, NULL, 0, recs, m, now, err);
    }
    free(recs);
    return rc;
}

/* Writes every changed record (campaign rows, new commands, changed
 * devices, learned facts) into the store's open unit: of the campaigns
 * this instance drives only (another instance writes its own). */
static esim_err write_records(campaigns *cs, int64_t now, esim_error *err)
{
    esim_err rc = ESIM_OK;
    for (size_t k = 0; rc == ESIM_OK && k < cs->n_slots; k++)
        if (cs->slots[k]->owned)
            rc = write_one(cs, cs->slots[k], now, err);
    if (rc == ESIM_OK)
        rc = esim_store_facts_put(esim_service_store(cs->svc), cs->facts, cs->n_facts, err);
    return rc;
}

/* The records are in the store: nothing of this is dirty any more. */
static void records_written(campaigns *cs)
{
    cs->n_facts = 0;
    for (size_t k = 0; k < cs->n_slots; k++) {
        camp_slot *s = cs->slots[k];
        s->n_cmds_saved = s->n_cmds;
        s->row_dirty = false;
        if (s->version_unit)
            s->version = s->version_unit;
        s->version_unit = 0;
        if (s->totals_unit) {
            s->pushes_saved = s->pushes_unit;
            s->commands_saved = s->commands_unit;
        }
        s->totals_unit = false;
    }
}

/* Nothing of this unit is in the store: write it all again next time.
 * The campaign_store_error event is appended here unless |written| (a
 * store job's run did it, on its own connection). */
static void records_lost(campaigns *cs, const char *why, int64_t now, bool written)
{
    for (size_t k = 0; k < cs->n_slots; k++) {
        cs->slots[k]->row_dirty = true;
        cs->slots[k]->version_unit = 0;
        cs->slots[k]->totals_unit = false;
        campaign_mark_all_dirty(cs->slots[k]->c);
    }
    esim_service_count_store_error(cs->svc);
    if (!written)
        esim_store_event_append(esim_service_store(cs->svc), "campaign_store_error", NULL, NULL,
                                why, NULL, 0, now, NULL);
}

/* Writes what changed, as one unit of the store. */
static void persist(campaigns *cs, int64_t now)
{
    store *st = esim_service_store(cs->svc);
    esim_error e = {{0}};
    esim_err rc = esim_store_unit_begin(st, &e);
    if (rc == ESIM_OK) {
        rc = write_records(cs, now, &e);
        esim_err end = esim_store_unit_end(st, rc == ESIM_OK, &e);
        if (rc == ESIM_OK)
            rc = end;
    }
    if (rc == ESIM_OK)
        records_written(cs);
    else
        records_lost(cs, e.msg, now, false);
}

/* The batches of what the engine asked for (*out, the caller's): the
 * pending devices of each campaign, platform and step, one command per
 * batch (or per device), recorded in the campaign before it is queued. */
static size_t prepare_batches(campaigns *cs, int64_t now, step_batch **out)
{
    size_t nb = 0, cap = 0;
    step_batch *batches = NULL;
    for (size_t k = 0; k < cs->n_slots; k++) {
        camp_slot *s = cs->slots[k];
        for (uint8_t p = 0; p < CAMPAIGN_PLATFORM_COUNT; p++) {
            bool per_device = campaign_platform_get(p)->per_device_commands;
            for (int step = 0; step < CAMPAIGN_STEP_COUNT; step++) {
                idx_vec *v = &s->pending[p][step];
                /* One batch for the step, or one per device. */
                size_t done = 0;
                while (done < v->n) {
                    if (nb == cap) {
                        step_batch *grown = esim_grow(batches, &cap, nb + 1, sizeof *grown);
                        if (!grown)
                            break; /* the rest waits for the next flush */
                        batches = grown;
                    }
                    idx_vec part = *v;
                    if (per_device)
                        part = (idx_vec){&v->v[done], 1, 1};
                    done += part.n;
                    if (prepare_step(cs, s, p, (campaign_step)step, &part, now, &batches[nb]))
                        nb++;
                    else
                        batch_free(&batches[nb]);
                }
                if (done == v->n)
                    v->n = 0;
                else if (done) { /* out of memory part-way: keep the rest */
                    memmove(v->v, v->v + done, (v->n - done) * sizeof *v->v);
                    v->n -= done;
                }
            }
        }
    }
    *out = batches;
    return nb;
}

/* The unit that would have queued |batches| was not committed: neither the
 * commands nor their records are in the store. A store failure (|rc|
 * ESIM_ESTORE: a full disk, the database away) is nothing the devices did:
 * their commands are queued again later. Anything else fails them with
 * the reason. */
static void batches_lost(step_batch *batches, size_t nb, esim_err rc, const char *why, int64_t now)
{
    for (size_t i = 0; i < nb; i++)
        for (size_t k = 0; k < batches[i].n; k++)
            if (rc == ESIM_ESTORE)
                campaign_queue_lost(batches[i].s->c, batches[i].devs[k], why, now);
            else
                campaign_fail_device(batches[i].s->c, batches[i].devs[k],
                                     why[0] ? why : "the store failed", now);
}

/* Queues what the engine asked for and writes the records that name those
 * commands in the same unit of the store: a record never names a command
 * the store lacks, and a queued command always has its record. Then the
 * pushes (a push only says "check in"), and the records of their fates.
 * At once on the loop, with the service's store (no store pool). */
static void flush_inline(campaigns *cs)
{
    int64_t now = esim_now_ms();
    step_batch *batches = NULL;
    size_t nb = prepare_batches(cs, now, &batches);
    if (nb) {
        store *st = esim_service_store(cs->svc);
        esim_error e = {{0}};
        esim_err rc = esim_store_unit_begin(st, &e);
        for (size_t i = 0; rc == ESIM_OK && i < nb; i++)
            enqueue_batch(cs, &batches[i], now);
        if (rc == ESIM_OK) {
            rc = write_records(cs, now, &e);
            esim_err end = esim_store_unit_end(st, rc == ESIM_OK, &e);
            if (rc == ESIM_OK)
                rc = end;
        }
        if (rc == ESIM_OK) {
            records_written(cs);
        } else {
            batches_lost(batches, nb, rc, e.msg, now);
            records_lost(cs, e.msg, now, false);
        }
    }
    for (size_t i = 0; i < nb; i++)
        batch_free(&batches[i]);
    free(batches);
    for (size_t k = 0; k < cs->n_slots; k++)
        if (cs->slots[k]->pushes.n)
            flush_pushes(cs, cs->slots[k], cs->slots[k]->pushes.n, now, NULL);
    /* Left by store jobs (the pool stopped since). */
    for (size_t i = 0; i < cs->n_cancels; i++)
        esim_store_queue_cancel(esim_service_store(cs->svc), cs->cancels[i].udid,
                                cs->cancels[i].uuid, now, NULL);
    cs->n_cancels = 0;
    persist(cs, now);
}

static void adopt_state(campaigns *cs, camp_slot *s, int stored, int64_t version, int64_t now);

/* ---- the flush as a store job (PostgreSQL with a store pool) -----------------------------
 * The same unit (the batches' enqueues, then the records that name them, the
 * campaign row's state as a compare-and-set on its version, the facts) runs
 * on a pool worker with its own connection, so a statement that waits (a
 * device row another transaction holds) holds that worker and never the
 * loop. Everything it needs is copied on the loop first (flush_start); the
 * engine and the slots are touched on the loop only, in flush_done, when the
 * unit is back. One flush at a time: what asks for another meanwhile waits
 * for it (|again|), and so do the held answers of the results that asked
 * (esim_service_answers_hold). */

/* What one flush writes of one campaign, copied from its slot. */
typedef struct {
    camp_slot *s;
    bool create;    /* the row is new: written whole */
    bool set_state; /* the row's state changes, over version |expect| */
    int64_t expect;
    store_campaign row; /* its strings are copies */
    store_campaign_command *cmds;
    size_t n_cmds, cmds_upto; /* s->cmds[0..cmds_upto) are in the store once committed */
    store_campaign_device *recs;
    size_t n_recs;
    bool totals; /* the campaign's pushes and commands, to write */
    uint64_t pushes, commands;
    /* The job's answer: the row's version after it; on a conflict (another
     * instance changed the state first) its state and version as found. */
    bool conflict;
    int cur_state;
    int64_t version;
} slot_write;

typedef struct flush_job {
    campaigns *cs;
    const esim_service *svc;
    int64_t now;
    int round; /* tries of the same batches (a refused batch split, a conflict adopted) */
    step_batch *batches;
    size_t nb;
    slot_write *w;
    size_t nw;
    store_device_facts *facts;
    size_t n_facts;
    esim_answer_hold **holds; /* released when the flush is over */
    size_t n_holds;
    flush_waiter *waiters; /* answered when the flush is over */
    size_t n_waiters;
    queue_cancel *cancels; /* queue entries taken off in the unit */
    size_t n_cancels;
    /* The pushes asked for before the job took its batches, by campaign,
     * and their targets, read on the worker after the unit
     * (|targets_read|): the loop only sends them. */
    push_group *pg;
    size_t n_pg;
    bool targets_read;
    bool event_written; /* the campaign_store_error event of a unit that failed for good */
    esim_err rc;
    esim_error e;
    bool refused, conflict;
} flush_job;

#define FLUSH_ROUNDS 8

static void slot_write_free(slot_write *w)
{
    free((char *)w->row.id);
    free((char *)w->row.name);
    free((char *)w->row.definition);
    free(w->cmds);
    for (size_t i = 0; i < w->n_recs; i++)
        free(w->recs[i].reason);
    free(w->recs);
}

static void job_writes_free(flush_job *j)
{
    for (size_t i = 0; i < j->nw; i++)
        slot_write_free(&j->w[i]);
    free(j->w);
    j->w = NULL;
    j->nw = 0;
    free(j->facts);
    j->facts = NULL;
    j->n_facts = 0;
}

/* Copies what changed of campaign |s| (as write_one writes it) into |w|.
 * false when nothing did. */
static bool snapshot_slot(camp_slot *s, slot_write *w)
{
    campaign *c = s->c;
    memset(w, 0, sizeof *w);
    if (campaign_get_state(c) != s->last_state) {
        s->row_dirty = true;
        s->last_state = campaign_get_state(c);
    }
    size_t n = 0;
    const size_t *dirty = campaign_take_dirty(c, &n);
    size_t n_cmds = s->n_cmds - s->n_cmds_saved;
    w->pushes = campaign_pushes(c);
    w->commands = campaign_commands(c);
    w->totals = w->pushes != s->pushes_saved || w->commands != s->commands_saved;
    if (!s->row_dirty && !n_cmds && !n && !w->totals)
        return false;
    w->s = s;
    w->create = s->row_dirty && s->version == 0;
    w->set_state = s->row_dirty && !w->create;
    w->expect = s->version;
    w->row.id = strdup(campaign_id(c));
    w->row.name = campaign_name(c) ? strdup(campaign_name(c)) : NULL;
    w->row.definition = s->spec_json ? strdup(s->spec_json) : NULL;
    w->row.state = (int)campaign_get_state(c);
    w->row.created_ms = campaign_created_ms(c);
    w->cmds = n_cmds ? malloc(n_cmds * sizeof *w->cmds) : NULL;
    w->recs = n ? calloc(n, sizeof *w->recs) : NULL;
    bool ok = w->row.id && w->row.definition && (!campaign_name(c) || w->row.name) &&
              (!n_cmds || w->cmds) && (!n || w->recs);
    for (size_t j = 0; ok && j < n_cmds; j++) {
        snprintf(w->cmds[j].uuid, sizeof w->cmds[j].uuid, "%s", s->cmds[s->n_cmds_saved + j].uuid);
        w->cmds[j].step = s->cmds[s->n_cmds_saved + j].step;
    }
    w->n_cmds = ok ? n_cmds : 0;
    w->cmds_upto = s->n_cmds;
    for (size_t j = 0; ok && j < n; j++) {
        device_record(s, dirty[j], &w->recs[j]);
        const char *why = w->recs[j].reason;
        w->recs[j].reason = NULL;
        if (why && !(w->recs[j].reason = strdup(why)))
            ok = false;
        w->n_recs = j + 1;
    }
    if (!ok) { /* out of memory: all of it next time */
        slot_write_free(w);
        memset(w, 0, sizeof *w);
        campaign_mark_all_dirty(c);
        return false;
    }
    s->row_dirty = false; /* taken: set again if the unit is not committed */
    return true;
}

/* Copies what every campaign this instance drives has to write, and the
 * facts learned, into |j|. */
static void snapshot_records(campaigns *cs, flush_job *j)
{
    for (size_t k = 0; k < cs->n_slots; k++) {
        camp_slot *s = cs->slots[k];
        if (!s->owned)
            continue;
        if (j->nw % 8 == 0) {
            slot_write *grown = realloc(j->w, (j->nw + 8) * sizeof *grown);
            if (!grown) {
                campaign_mark_all_dirty(s->c);
                continue;
            }
            j->w = grown;
        }
        if (snapshot_slot(s, &j->w[j->nw]))
            j->nw++;
    }
    j->facts = cs->facts;
    j->n_facts = cs->n_facts;
    cs->facts = NULL;
    cs->n_facts = cs->cap_facts = 0;
}

/* The batches' UDIDs, copied (the engine's memory stays on the loop). */
static bool batch_copy_udids(step_batch *b)
{
    batch_udids_free(b);
    b->udids = calloc(b->n ? b->n : 1, sizeof *b->udids);
    for (size_t k = 0; b->udids && k < b->n; k++)
        if (!(b->udids[k] = strdup(campaign_device_at(b->s->c, b->devs[k])->udid)))
            return false;
    return b->udids != NULL;
}

/* The records of |j| into the open unit on |st|. */
static esim_err write_snapshot(store *st, flush_job *j)
{
    for (size_t i = 0; i < j->nw; i++) {
        slot_write *w = &j->w[i];
        esim_err rc = ESIM_OK;
        if (w->set_state) {
            int cur = 0;
            int64_t ver = 0;
            rc = esim_store_campaign_set_state(st, w->row.id, w->row.state, w->expect, j->now, &cur,
                                               &ver, &j->e);
            if (rc == ESIM_ESTATE && cur == w->row.state)
                rc = ESIM_OK; /* the row says it already */
            if (rc == ESIM_ESTATE) {
                w->conflict = true;
                w->cur_state = cur;
                j->conflict = true;
            }
            w->version = ver;
            if (rc != ESIM_OK)
                return rc;
        }
        if (w->create || w->n_cmds)
            rc = esim_store_campaign_save(st, w->row.id, w->create ? &w->row : NULL, w->cmds,
                                          w->n_cmds, NULL, 0, j->now, &j->e);
        if (rc == ESIM_OK && w->create)
            w->version = 1;
        if (rc == ESIM_OK && w->totals)
            rc = esim_store_campaign_totals(st, w->row.id, (int64_t)w->pushes, (int64_t)w->commands,
                                            &j->e);
        for (size_t k = 0; rc == ESIM_OK && k < w->n_recs; k += RECORDS_PER_SAVE) {
            size_t m = w->n_recs - k < RECORDS_PER_SAVE ? w->n_recs - k : RECORDS_PER_SAVE;
            rc = esim_store_campaign_save(st, w->row.id, NULL, NULL, 0, &w->recs[k], m, j->now,
                                          &j->e);
        }
        if (rc != ESIM_OK)
            return rc;
    }
    return esim_store_facts_put(st, j->facts, j->n_facts, &j->e);
}

static bool job_writes(const flush_job *j)
{
    return j->nb || j->nw || j->n_facts || j->n_cancels;
}

/* On a pool worker: the push targets of |j|'s pushes, once its unit is
 * over (committed or not: the pushes that still wake a device go either
 * way). */
static void read_targets(store *st, flush_job *j)
{
    for (size_t g = 0; g < j->n_pg; g++)
        for (size_t k = 0; k < j->pg[g].n; k++) {
            push_read_one *r = &j->pg[g].r[k];
            memset(&r->e, 0, sizeof r->e);
            r->rc = esim_store_push_target(st, r->udid, &r->t, &r->e);
        }
    j->targets_read = true;
}

static void flush_unit(store *st, flush_job *j);

/* A unit that was refused (a batch as a whole) or met a version conflict,
 * with a round left: flush_done tries it again rather than failing it. */
static bool job_again(const flush_job *j)
{
    return (j->refused || (j->rc == ESIM_ESTATE && j->conflict)) && j->round < FLUSH_ROUNDS;
}

/* On a pool worker: |j|'s unit on the worker's store, then its pushes'
 * targets. Touches |j| only. */
static void flush_run(store *st, void *arg)
{
    flush_job *j = arg;
    j->refused = j->conflict = false;
    j->rc = ESIM_OK;
    j->event_written = false;
    if (job_writes(j))
        flush_unit(st, j);
    /* Failed for good (not another round, see flush_done): the event on
     * this connection (when it cannot be written either, the store is
     * down, and the loop does not try again). */
    if (j->rc != ESIM_OK && !job_again(j)) {
        esim_store_event_append(st, "campaign_store_error", NULL, NULL,
                                j->e.msg[0] ? j->e.msg : "the store failed", NULL, 0, j->now, NULL);
        j->event_written = true;
    }
    read_targets(st, j);
}

static void flush_unit(store *st, flush_job *j)
{
    esim_err rc = esim_store_unit_begin(st, &j->e);
    if (rc != ESIM_OK) {
        j->rc = rc;
        return;
    }
    for (size_t i = 0; rc == ESIM_OK && i < j->nb; i++) {
        step_batch *b = &j->batches[i];
        const campaign_platform *pl = campaign_platform_get(b->platform);
        memset(&b->why, 0, sizeof b->why);
        esim_err r = pl->enqueue(j->svc, st, &b->cmd, (const char *const *)b->udids, b->n, &b->why);
        if (r == ESIM_ESTORE || r == ESIM_ENOMEM) {
            rc = r;
            j->e = b->why;
        } else if (r != ESIM_OK) {
            /* Refused as a whole (a device checked out meanwhile): the
             * unit as it was; the loop tries its devices one by one. */
            b->refused = true;
            j->refused = true;
        }
    }
    if (rc == ESIM_OK && !j->refused)
        rc = write_snapshot(st, j);
    /* The canceled devices' commands off their queues (one already final
     * or gone is left as it is). */
    for (size_t i = 0; rc == ESIM_OK && !j->refused && i < j->n_cancels; i++)
        if (esim_store_queue_cancel(st, j->cancels[i].udid, j->cancels[i].uuid, j->now, &j->e) ==
            ESIM_ESTORE)
            rc = ESIM_ESTORE;
    esim_err end = esim_store_unit_end(st, rc == ESIM_OK && !j->refused, &j->e);
    j->rc = rc == ESIM_OK ? end : rc;
}

static void flush_start(campaigns *cs);
static void flush_submit(campaigns *cs, flush_job *j);

static void job_mark_slots(flush_job *j, bool on)
{
    for (size_t i = 0; i < j->nb; i++)
        j->batches[i].s->in_flush = on;
    for (size_t i = 0; i < j->nw; i++)
        j->w[i].s->in_flush = on;
    for (size_t i = 0; i < j->n_pg; i++)
        j->pg[i].s->in_flush = on;
}

/* The unit was not committed: what it would have written is written again
 * next time. */
static void job_records_lost(flush_job *j)
{
    for (size_t i = 0; i < j->nw; i++) {
        camp_slot *s = j->w[i].s;
        if (j->w[i].create || j->w[i].set_state)
            s->row_dirty = true;
        campaign_mark_all_dirty(s->c);
    }
}

/* Keeps of batch |b| the devices still waiting on its command (neither
 * canceled nor moved on while the unit ran); false when none is left. */
static bool batch_still_wanted(step_batch *b)
{
    size_t kept = 0;
    for (size_t k = 0; k < b->n; k++) {
        const campaign_dev *d = campaign_device_at(b->s->c, b->devs[k]);
        if (d->state == CDEV_ACTIVE && d->step == b->step && d->cmd == b->ref)
            b->devs[kept++] = b->devs[k];
    }
    batch_udids_free(b);
    b->n = kept;
    return kept > 0;
}

/* A batch the all-or-nothing enqueue refused: each of its devices gets a
 * command of its own (tried next round) so that one bad device fails
 * alone; a batch of one device fails that device. Appends to |out|. */
static void batch_split(campaigns *cs, step_batch *b, step_batch **out, size_t *n_out,
                        size_t *cap_out, int64_t now)
{
    camp_slot *s = b->s;
    for (size_t k = 0; k < b->n; k++) {
        size_t dev = b->devs[k];
        if (b->n == 1) {
            campaign_fail_device(s->c, dev, b->why.msg[0] ? b->why.msg : "could not queue", now);
            continue;
        }
        step_batch one = {.s = s, .platform = b->platform, .step = b->step, .n = 1};
        esim_error e1 = {{0}};
        one.devs = malloc(sizeof *one.devs);
        esim_err r1 =
            one.devs ? build_step_command(s, b->platform, b->step, (long)dev, NULL, &one.cmd, &e1)
                     : esim_fail(&e1, ESIM_ENOMEM, "out of memory");
        if (r1 == ESIM_OK)
            r1 = add_cmd(cs, s, one.cmd.uuid, b->step, &one.ref);
        if (r1 == ESIM_OK && *n_out == *cap_out) {
            step_batch *grown = esim_grow(*out, cap_out, *n_out + 1, sizeof *grown);
            if (grown)
                *out = grown;
            else
                r1 = esim_fail(&e1, ESIM_ENOMEM, "out of memory");
        }
        if (r1 != ESIM_OK) {
            campaign_fail_device(s->c, dev, e1.msg[0] ? e1.msg : "could not queue", now);
            batch_free(&one);
            continue;
        }
        one.devs[0] = (uint32_t)dev;
        campaign_set_cmd(s->c, dev, one.ref);
        (*out)[(*n_out)++] = one;
    }
}

/* Another round of the same batches after a refusal or a conflict: the
 * states found are adopted, refused batches split, and the records taken
 * again. false when nothing is left to queue or write. */
static void job_retry(campaigns *cs, flush_job *j, int64_t now)
{
    job_records_lost(j);
    for (size_t i = 0; i < j->nw; i++)
        if (j->w[i].conflict)
            adopt_state(cs, j->w[i].s, j->w[i].cur_state, j->w[i].version, now);
    step_batch *next = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < j->nb; i++) {
        step_batch *b = &j->batches[i];
        bool keep = batch_still_wanted(b);
        if (keep && b->refused) {
            batch_split(cs, b, &next, &n, &cap, now);
            keep = false;
        }
        if (keep && n == cap) {
            step_batch *grown = esim_grow(next, &cap, n + 1, sizeof *grown);
            if (grown)
                next = grown;
            else {
                for (size_t k = 0; k < b->n; k++)
                    campaign_fail_device(b->s->c, b->devs[k], "out of memory", now);
                keep = false;
            }
        }
        if (keep) {
            b->refused = false;
            next[n++] = *b;
        } else
            batch_free(b);
    }
    free(j->batches);
    j->batches = next;
    j->nb = n;
    job_writes_free(j);
}

static void release_holds(campaigns *cs, esim_answer_hold **holds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        esim_service_answers_release(cs->svc, holds[i]);
    free(holds);
}

/* The queue cancels of a unit that was not committed: into the next. */
static void job_cancels_back(campaigns *cs, flush_job *j)
{
    for (size_t i = 0; i < j->n_cancels; i++)
        if (!cancel_later(cs, j->cancels[i].udid, j->cancels[i].uuid))
            break;
    j->n_cancels = 0;
}

static void answer_summary(campaigns *cs, esim_api_request *r, const char *id);

static void answer_waiters(campaigns *cs, flush_waiter *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        answer_summary(cs, w[i].r, w[i].id);
    free(w);
}

static void job_free(flush_job *j)
{
    for (size_t i = 0; i < j->n_pg; i++)
        free(j->pg[i].r);
    free(j->pg);
    free(j->cancels);
    for (size_t i = 0; i < j->nb; i++)
        batch_free(&j->batches[i]);
    free(j->batches);
    job_writes_free(j);
    free(j);
}

/* On the loop: the unit is back (or never ran: |ran| false, the service
 * stopping). The engine and the slots learn what happened, then the pushes
 * go and the held answers are completed, and a flush asked for meanwhile
 * starts. */
static void flush_done(esim_service *svc, void *arg, bool ran)
{
    flush_job *j = arg;
    campaigns *cs = j->cs;
    int64_t now = esim_now_ms();
    job_mark_slots(j, false);
    cs->job = NULL;
    if (!ran) {
        /* Nothing of it is in the store: its devices are queued again by
         * the next flush (at shutdown, the last one, on the loop). */
        for (size_t i = 0; i < j->nb; i++) {
            step_batch *b = &j->batches[i];
            if (!batch_still_wanted(b))
                continue;
            for (size_t k = 0; k < b->n; k++)
                vec_push(&b->s->pending[b->platform][b->step], b->devs[k]);
        }
        job_records_lost(j);
        job_cancels_back(cs, j);
        cs->again = true;
    } else if (j->rc == ESIM_OK) {
        for (size_t i = 0; i < j->nb; i++) {
            step_batch *b = &j->batches[i];
            esim_service_enqueued(svc, (const char *const *)b->udids, b->n);
            /* Canceled while the unit ran (cancel_queued found nothing yet
             * to take off): taken off by the next unit. */
            for (size_t k = 0; k < b->n; k++)
                if (campaign_device_at(b->s->c, b->devs[k])->state == CDEV_CANCELED &&
                    cancel_later(cs, b->udids[k], b->cmd.uuid))
                    cs->again = true;
        }
        for (size_t i = 0; i < j->nw; i++) {
            slot_write *w = &j->w[i];
            if (w->cmds_upto > w->s->n_cmds_saved)
                w->s->n_cmds_saved = w->cmds_upto;
            if ((w->create || w->set_state) && w->version > w->s->version)
                w->s->version = w->version;
            if (w->totals) {
                w->s->pushes_saved = w->pushes;
                w->s->commands_saved = w->commands;
            }
        }
    } else if (job_again(j)) {
        job_retry(cs, j, now);
        j->round++;
        snapshot_records(cs, j);
        if (job_writes(j)) {
            flush_submit(cs, j);
            return;
        }
    } else {
        batches_lost(j->batches, j->nb, j->rc, j->e.msg, now);
        job_records_lost(j);
        job_cancels_back(cs, j);
        records_lost(cs, j->e.msg[0] ? j->e.msg : "the store failed", now, j->event_written);
    }
    bool pushed = false;
    for (size_t k = 0; k < cs->n_slots; k++)
        if (cs->slots[k]->owned && cs->slots[k]->pushes_ready) {
            /* Their targets as the worker read them; not read (the service
             * stopping): read here. */
            const push_group *g = NULL;
            for (size_t i = 0; j->targets_read && !g && i < j->n_pg; i++)
                if (j->pg[i].s == cs->slots[k])
                    g = &j->pg[i];
            flush_pushes(cs, cs->slots[k], cs->slots[k]->pushes_ready, now, g);
            pushed = true;
        }
    release_holds(cs, j->holds, j->n_holds);
    j->holds = NULL;
    answer_waiters(cs, j->waiters, j->n_waiters);
    j->waiters = NULL;
    job_free(j);
    if (cs->again)
        flush_start(cs);
    else if (pushed)
        arm_flush(cs); /* the pushes' fates, in the next unit */
}

static void flush_submit(campaigns *cs, flush_job *j)
{
    cs->job = j;
    job_mark_slots(j, true);
    if (esim_service_store_job(cs->svc, flush_run, flush_done, j) != ESIM_OK) {
        j->rc = ESIM_ENOMEM;
        snprintf(j->e.msg, sizeof j->e.msg, "out of memory");
        flush_done(cs->svc, j, true);
    }
}

/* The UDIDs of the pushes asked for so far (s->pushes[0..pushes_ready) of
 * each campaign driven here), copied into |j| for the worker to read their
 * targets. Out of memory: a campaign's are read on the loop, in done. */
static void job_take_pushes(campaigns *cs, flush_job *j)
{
    size_t n = 0;
    for (size_t k = 0; k < cs->n_slots; k++)
        n += cs->slots[k]->owned && cs->slots[k]->pushes_ready;
    if (!n || !(j->pg = calloc(n, sizeof *j->pg)))
        return;
    for (size_t k = 0; k < cs->n_slots; k++) {
        camp_slot *s = cs->slots[k];
        if (!s->owned || !s->pushes_ready)
            continue;
        push_group *g = &j->pg[j->n_pg];
        if (!(g->r = calloc(s->pushes_ready, sizeof *g->r)))
            continue;
        g->s = s;
        g->n = s->pushes_ready;
        for (size_t i = 0; i < g->n; i++)
            snprintf(g->r[i].udid, sizeof g->r[i].udid, "%s",
                     campaign_device_at(s->c, s->pushes.v[i])->udid);
        j->n_pg++;
    }
}

/* Starts a flush as a store job, with the held answers waiting for it. */
static void flush_start(campaigns *cs)
{
    cs->again = false;
    esim_answer_hold **holds = cs->next_holds;
    size_t n_holds = cs->n_next_holds;
    cs->next_holds = NULL;
    cs->n_next_holds = cs->cap_next_holds = 0;
    flush_job *j = calloc(1, sizeof *j);
    if (!j) {
        release_holds(cs, holds, n_holds);
        arm_flush(cs);
        return;
    }
    j->cs = cs;
    j->svc = cs->svc;
    j->now = esim_now_ms();
    j->holds = holds;
    j->n_holds = n_holds;
    j->waiters = cs->next_waiters;
    j->n_waiters = cs->n_next_waiters;
    cs->next_waiters = NULL;
    cs->n_next_waiters = cs->cap_next_waiters = 0;
    j->cancels = cs->cancels;
    j->n_cancels = cs->n_cancels;
    cs->cancels = NULL;
    cs->n_cancels = cs->cap_cancels = 0;
    for (size_t k = 0; k < cs->n_slots; k++)
        cs->slots[k]->pushes_ready = cs->slots[k]->pushes.n;
    job_take_pushes(cs, j);
    j->nb = prepare_batches(cs, j->now, &j->batches);
    for (size_t i = 0; i < j->nb; i++)
        if (!batch_copy_udids(&j->batches[i])) {
            for (size_t k = 0; k < j->batches[i].n; k++)
                campaign_fail_device(j->batches[i].s->c, j->batches[i].devs[k], "out of memory",
                                     j->now);
            batch_udids_free(&j->batches[i]);
            j->batches[i].n = 0;
        }
    snapshot_records(cs, j);
    if (!job_writes(j) && !j->n_pg) {
        /* Nothing to write or push: the answers go. */
        flush_done(cs->svc, j, true);
        return;
    }
    flush_submit(cs, j);
}

/* Queues what the engine asked for and writes what changed: at once on
 * the loop without a store pool, else as a store job (after the one in
 * flight, if any). */
static void flush(campaigns *cs)
{
    if (!esim_service_store_jobs_async(cs->svc)) {
        flush_inline(cs);
        return;
    }
    if (cs->job)
        cs->again = true;
    else
        flush_start(cs);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    campaigns *cs = arg;
    cs->flush_armed = false;
    flush(cs);
}

/* The service is about to complete the answers of the results it just
 * gave us: what those results asked for is queued now, so it goes in them.
 * As a store job, those answers wait for it (esim_service_answers_hold). */
static void on_results_done(esim_service *svc, void *arg)
{
    campaigns *cs = arg;
    bool fed = cs->fed;
    cs->fed = false;
    if (!cs->flush_armed)
        return;
    evtimer_del(cs->flush_ev);
    cs->flush_armed = false;
    /* Only a batch whose results fed an engine waits: the others' answers
     * have nothing coming from campaigns. */
    esim_answer_hold *h = fed ? esim_service_answers_hold(svc) : NULL;
    if (h && cs->n_next_holds == cs->cap_next_holds) {
        esim_answer_hold **grown =
            esim_grow(cs->next_holds, &cs->cap_next_holds, cs->n_next_holds + 1, sizeof *grown);
        if (grown)
            cs->next_holds = grown;
        else {
            esim_service_answers_release(svc, h); /* the answers go as they are */
            h = NULL;
        }
    }
    if (h)
        cs->next_holds[cs->n_next_holds++] = h;
    flush(cs);
}

static void engine_apply(campaigns *cs, camp_slot *s, campaign_state to, int64_t now);
static void adopt_state(campaigns *cs, camp_slot *s, int stored, int64_t version, int64_t now);
static void leases_refresh(campaigns *cs, int64_t now, bool at_once);
static void replay_recorded_answers(campaigns *cs, camp_slot *s, bool push_unsent);
static void lease_release_one(campaigns *cs, const char *id);
static void lease_release_later(campaigns *cs, const char *id);

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    campaigns *cs = arg;
    int64_t now = esim_now_ms();
    if (cs->shared && now >= cs->next_lease_ms)
        leases_refresh(cs, now, false);
    if (cs->shared && now >= cs->next_catch_up_ms && !cs->replays_out) {
        cs->next_catch_up_ms = now + CAMPAIGN_CATCH_UP_MS;
        for (size_t k = 0; k < cs->n_slots; k++)
            if (cs->slots[k]->owned && campaign_get_state(cs->slots[k]->c) == CAMPAIGN_RUNNING)
                replay_recorded_answers(cs, cs->slots[k], false);
    }
    size_t changed = 0;
    for (size_t k = 0; k < cs->n_slots; k++) {
        camp_slot *s = cs->slots[k];
        if (!s->owned)
            continue;
        campaign_io io = slot_io(s);
        changed += campaign_tick(s->c, now, &io);
        if (campaign_get_state(s->c) != s->last_state)
            changed++;
    }
    if (cs->n_asks && !cs->seen_out)
        seen_submit(cs);
    if (changed)
        arm_flush(cs);
}

/* ---- results ---------------------------------------------------------------------------- */

static void remember_facts(campaigns *cs, const char *udid, const store_device_facts *f)
{
    if (cs->n_facts == cs->cap_facts) {
        void *nf = esim_grow(cs->facts, &cs->cap_facts, cs->n_facts + 1, sizeof *cs->facts);
        if (!nf)
            return; /* facts are a cache: losing one is harmless */
        cs->facts = nf;
    }
    cs->facts[cs->n_facts] = *f;
    snprintf(cs->facts[cs->n_facts].udid, sizeof cs->facts[cs->n_facts].udid, "%s", udid);
    cs->n_facts++;
}

/* Feeds device |i| of |s| its answer |rd| to the command of |step| (read
 * by the device's platform adapter), and keeps what it taught about the
 * device. |answer_held|: the device still waits for the service's answer. */
static void feed_reading(campaigns *cs, camp_slot *s, size_t i, campaign_step step,
                         campaign_reading *rd, bool answer_held, int64_t now)
{
    const campaign_dev *d = campaign_device_at(s->c, i);
    store_device_facts facts = {.supervised = rd->supervised, .updated_ms = now};
    snprintf(facts.os_version, sizeof facts.os_version, "%s", rd->os_version);
    if (step == CAMPAIGN_STEP_VERIFY &&
        campaign_subscriptions_match(rd->subs, rd->n_subs, d->eid, d->iccid)) {
        snprintf(facts.eid, sizeof facts.eid, "%s", d->eid);
        for (size_t k = 0; k < rd->n_subs; k++)
            if (strcmp(rd->subs[k].eid, d->eid) == 0 &&
                (!d->iccid[0] || strcmp(rd->subs[k].iccid, d->iccid) == 0))
                snprintf(facts.iccid, sizeof facts.iccid, "%.20s", rd->subs[k].iccid);
        facts.verified_ms = now;
    }
    if (facts.supervised >= 0 || facts.os_version[0] || facts.eid[0])
        remember_facts(cs, d->udid, &facts);
    campaign_io io = slot_io(s);
    /* The device waits for the service's answer to this result: the next
     * step's command, queued before that answer goes (on_results_done),
     * rides in it and needs no push. */
    io.push_after_answer = !answer_held;
    campaign_on_result(s->c, i, step, &rd->result, now, &io);
    campaign_reading_free(rd);
    /* An erased phone re-enrols with a new identity: the service admits it
     * because the EraseDevice was delivered (store.c: rebind_after_erase). */
    arm_flush(cs);
}

/* Feeds the answer |r| of device |i| of |s| to the engine, read by the
 * device's platform adapter. */
static void feed_result(campaigns *cs, camp_slot *s, size_t i, campaign_step step,
                        const esim_service_result *r, int64_t now)
{
    const campaign_platform *pl = campaign_platform_get(campaign_device_at(s->c, i)->platform);
    campaign_reading rd;
    if (!pl || pl->read(step, r, &rd) != ESIM_OK) {
        campaign_fail_device(s->c, i, "the device's answer could not be read", now);
        arm_flush(cs);
        return;
    }
    feed_reading(cs, s, i, step, &rd, r->answer_held, now);
}

/* An answer to a command this instance does not drive (or does not know:
 * a campaign another instance created or queued for since this copy was
 * read) is in the store already; tell the campaign's owner, which replays
 * it from there (on_notify). */
static void forward_result(campaigns *cs, const esim_service_result *r)
{
    char payload[300];
    snprintf(payload, sizeof payload, "%s %s", r->udid, r->command_uuid);
    if (esim_service_notify(cs->svc, "campaign_result", payload, NULL) == ESIM_OK)
        cs->forwarded++;
}

static void replay_device(campaigns *cs, camp_slot *s, size_t i, int64_t now);

static void on_result(esim_service *svc, const esim_service_result *r, void *arg)
{
    (void)svc;
    campaigns *cs = arg;
    int64_t now = esim_now_ms();
    const map_entry *m = map_find(cs, r->command_uuid);
    if (cs->shared && (!m || !cs->slots[m->slot]->owned))
        forward_result(cs, r);
    if (!m) {
        /* Not a campaign's command (an inventory, say): keep what it says
         * about the device. */
        const campaign_platform *pl = campaign_platform_get(campaign_platform_of_result(r));
        campaign_reading rd;
        if (!pl || pl->read(CAMPAIGN_STEP_COUNT, r, &rd) != ESIM_OK)
            return;
        if (rd.supervised >= 0 || rd.os_version[0]) {
            store_device_facts facts = {.supervised = rd.supervised, .updated_ms = now};
            snprintf(facts.os_version, sizeof facts.os_version, "%s", rd.os_version);
            remember_facts(cs, r->udid, &facts);
            arm_flush(cs);
        }
        campaign_reading_free(&rd);
        return;
    }
    camp_slot *s = cs->slots[m->slot];
    if (!s->owned)
        return; /* its owner replays it from the store (forward_result) */
    long i = campaign_find_device(s->c, r->udid);
    if (i < 0 || campaign_device_at(s->c, (size_t)i)->cmd != m->cmd)
        return; /* not this campaign's device, or an older command of it */
    cs->fed = true;
    feed_result(cs, s, (size_t)i, (campaign_step)s->cmds[m->cmd].step, r, now);
}

/* ---- spec <-> JSON -------------------------------------------------------------------- */

static const char *const policy_keys[] = {"esim_modification", "preserve_esim_on_erase",
                                          "esim_outgoing_transfers", "cellular_plan_modification"};

static esim_tri policy_field(const esim_policy *p, int k)
{
    switch (k) {
    case 0:
        return p->allow_esim_modification;
    case 1:
        return p->force_preserve_esim_on_erase;
    case 2:
        return p->allow_esim_outgoing_transfers;
    default:
        return p->allow_cellular_plan_modification;
    }
}

static json_t *spec_to_json(const campaign_spec *spec)
{
    json_t *o = json_object();
    json_t *steps = json_array();
    for (int s = 0; s < CAMPAIGN_STEP_COUNT; s++)
        if (spec->steps[s])
            json_array_append_new(steps, json_string(campaign_step_name((campaign_step)s)));
    json_object_set_new(o, "steps", steps);
    if (spec->name)
        json_object_set_new(o, "name", json_string(spec->name));
    if (spec->smdp_url)
        json_object_set_new(o, "smdp_url", json_string(spec->smdp_url));
    json_t *pol = json_object();
    for (int k = 0; k < 4; k++) {
        esim_tri t = policy_field(&spec->policy, k);
        if (t == ESIM_TRI_UNSET)
            continue;
        const char *word =
            k == 1 ? (t == ESIM_TRI_TRUE ? "on" : "off") : (t == ESIM_TRI_TRUE ? "allow" : "deny");
        json_object_set_new(pol, policy_keys[k], json_string(word));
    }
    json_object_set_new(o, "policy", pol);
    const campaign_settings *st = &spec->settings;
    json_object_set_new(
        o, "settings",
        json_pack("{s:f, s:i, s:f, s:f, s:f, s:f, s:i, s:i}", "pushes_per_second",
                  st->pushes_per_second, "max_in_flight", (int)st->max_in_flight, "repush_after_s",
                  (double)st->repush_after_ms / 1000.0, "expiry_s", (double)st->expiry_ms / 1000.0,
                  "retry_base_s", (double)st->retry_base_ms / 1000.0, "retry_max_s",
                  (double)st->retry_max_ms / 1000.0, "max_retries", (int)st->max_retries,
                  "verify_attempts", (int)st->verify_attempts));
    return o;
}

/* Storage for the strings a parsed spec points at. */
typedef struct {
    char name[201];
    char smdp_url[ESIM_SERVER_URL_MAX + 1];
} spec_strings;

static esim_err bad_field(const char **field, const char *name, esim_error *err, const char *fmt,
                          ...) __attribute__((format(printf, 4, 5)));

static esim_err bad_field(const char **field, const char *name, esim_error *err, const char *fmt,
                          ...)
{
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (field)
        *field = name;
    return esim_fail(err, ESIM_EINVAL, "%s: %s", name, buf);
}

static esim_err number_setting(const json_t *settings, const char *key, double min, double max,
                               double *out, const char **field, esim_error *err)
{
    json_t *v = json_object_get(settings, key);
    if (!v)
        return ESIM_OK;
    if (!json_is_number(v) || json_number_value(v) < min || json_number_value(v) > max)
        return bad_field(field, key, err, "must be a number from %g to %g", min, max);
    *out = json_number_value(v);
    return ESIM_OK;
}

/* Parses steps, policy, smdp_url, name and settings; the rest of the API
 * body (target, distribution) is read by the caller. */
static esim_err spec_from_json(const json_t *o, campaign_spec *spec, spec_strings *strs,
                               const char **field, esim_error *err)
{
    memset(spec, 0, sizeof *spec);
    campaign_settings_init(&spec->settings);
    json_t *steps = json_object_get(o, "steps");
    if (!json_is_array(steps) || json_array_size(steps) == 0)
        return bad_field(field, "steps", err,
                         "an array of steps is required: profile, refresh, verify, "
                         "erase_keep_esim, esim_wipe");
    size_t i;
    json_t *v;
    json_array_foreach(steps, i, v)
    {
        campaign_step st;
        if (!json_is_string(v) || campaign_step_parse(json_string_value(v), &st, NULL) != ESIM_OK)
            return bad_field(field, "steps", err,
                             "item %zu is not one of profile, refresh, verify, erase_keep_esim, "
                             "esim_wipe",
                             i);
        spec->steps[st] = true;
    }
    json_t *name = json_object_get(o, "name");
    if (name) {
        if (!json_is_string(name) || json_string_length(name) > 200)
            return bad_field(field, "name", err, "must be a string of at most 200 bytes");
        snprintf(strs->name, sizeof strs->name, "%s", json_string_value(name));
        spec->name = strs->name;
    }
    json_t *url = json_object_get(o, "smdp_url");
    if (url) {
        esim_error why = {{0}};
        if (!json_is_string(url) ||
            esim_server_url_normalize(json_string_value(url), strs->smdp_url, sizeof strs->smdp_url,
                                      &why) != ESIM_OK)
            return bad_field(field, "smdp_url", err, "%s",
                             why.msg[0] ? why.msg : "must be a string");
        spec->smdp_url = strs->smdp_url;
    }
    json_t *pol = json_object_get(o, "policy");
    if (pol) {
        if (!json_is_object(pol))
            return bad_field(field, "policy", err, "must be an object of restriction words");
        const char *key;
        json_object_foreach(pol, key, v)
        {
            esim_error why = {{0}};
            if (!json_is_string(v) ||
                esim_policy_set_word(&spec->policy, key, json_string_value(v), &why) != ESIM_OK)
                return bad_field(field, "policy", err, "%s",
                                 why.msg[0] ? why.msg : "values are words such as allow or deny");
        }
    }
    json_t *settings = json_object_get(o, "settings");
    if (settings && !json_is_object(settings))
        return bad_field(field, "settings", err, "must be an object");
    if (settings) {
        campaign_settings *st = &spec->settings;
        double pps = st->pushes_per_second, repush = (double)st->repush_after_ms / 1000,
               expiry = (double)st->expiry_ms / 1000, rb = (double)st->retry_base_ms / 1000,
               rm = (double)st->retry_max_ms / 1000, mr = st->max_retries, va = st->verify_attempts,
               mif = st->max_in_flight;
        esim_err rc;
        if ((rc = number_setting(settings, "pushes_per_second", 0.001, 1e7, &pps, field, err)) ||
            (rc = number_setting(settings, "repush_after_s", 0.01, 86400 * 30, &repush, field,
                                 err)) ||
            (rc = number_setting(settings, "expiry_s", 0.01, 86400 * 365, &expiry, field, err)) ||
            (rc = number_setting(settings, "retry_base_s", 0.001, 86400, &rb, field, err)) ||
            (rc = number_setting(settings, "retry_max_s", 0.001, 86400 * 7, &rm, field, err)) ||
            (rc = number_setting(settings, "max_retries", 0, 200, &mr, field, err)) ||
            (rc = number_setting(settings, "verify_attempts", 1, 100, &va, field, err)) ||
            (rc = number_setting(settings, "max_in_flight", 0, 1e7, &mif, field, err)))
            return rc;
        st->pushes_per_second = pps;
        st->repush_after_ms = (int64_t)(repush * 1000);
        st->expiry_ms = (int64_t)(expiry * 1000);
        st->retry_base_ms = (int64_t)(rb * 1000);
        st->retry_max_ms = (int64_t)(rm * 1000);
        st->max_retries = (unsigned)mr;
        st->verify_attempts = (unsigned)va;
        st->max_in_flight = (unsigned)mif;
        if (st->retry_max_ms < st->retry_base_ms)
            return bad_field(field, "settings", err, "retry_max_s is below retry_base_s");
    }
    return ESIM_OK;
}

/* ---- slots ------------------------------------------------------------------------------ */

static void slot_free(camp_slot *s)
{
    if (!s)
        return;
    campaign_free(s->c);
    free(s->spec_json);
    for (uint8_t p = 0; p < CAMPAIGN_PLATFORM_COUNT; p++)
        if (s->pctx[p])
            campaign_platform_get(p)->release(s->pctx[p]);
    free(s->cmds);
    for (int p = 0; p < CAMPAIGN_PLATFORM_COUNT; p++)
        for (int k = 0; k < CAMPAIGN_STEP_COUNT; k++)
            free(s->pending[p][k].v);
    free(s->pushes.v);
    json_decref(s->creation_warnings);
    free(s);
}

static esim_err slot_add(campaigns *cs, campaign *c, esim_error *err, camp_slot **out)
{
    camp_slot *s = calloc(1, sizeof *s);
    if (!s)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    s->owner = cs;
    s->c = c;
    s->last_state = campaign_get_state(c);
    json_t *j = spec_to_json(campaign_get_spec(c));
    s->spec_json = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    esim_err rc = s->spec_json ? ESIM_OK : esim_fail(err, ESIM_ENOMEM, "out of memory");
    /* What each platform shares over the campaign's commands (Apple: the
     * restrictions profile), prepared once. */
    for (uint8_t p = 0; rc == ESIM_OK && p < CAMPAIGN_PLATFORM_COUNT; p++)
        rc = campaign_platform_get(p)->prepare(campaign_get_spec(c), &s->pctx[p], err);
    if (rc == ESIM_OK && cs->n_slots == cs->cap_slots) {
        camp_slot **ns = esim_grow(cs->slots, &cs->cap_slots, cs->n_slots + 1, sizeof *ns);
        if (!ns)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        else
            cs->slots = ns;
    }
    if (rc != ESIM_OK) {
        s->c = NULL; /* the caller still owns it */
        slot_free(s);
        return rc;
    }
    cs->slots[cs->n_slots++] = s;
    *out = s;
    return ESIM_OK;
}

/* ---- restore at start-up ------------------------------------------------------------------ */

/* Answers the service recorded that the engine has not seen: after a crash
 * between the service recording an answer and this module writing what it
 * did with it, when this instance takes a campaign over, when another
 * instance announces one (forward_result), and when such an announcement
 * may have been lost. Read per command (one command serves a whole batch
 * of devices), and only for commands some device still waits on; or, for
 * an announcement, in one device's queue. The reads (and each platform's
 * reading of what it recorded) are a store job, on a pool worker with
 * PostgreSQL; the engine is fed on the loop in replay_done, for the devices
 * that still wait on that command then. */
#define REPLAY_PAGE 500

static camp_slot *slot_by_id(campaigns *cs, const char *id, size_t *k);

typedef struct {
    char uuid[128];
    uint8_t step, platform;
} replay_cmd;

typedef struct {
    char udid[65];
    uint32_t cmd;  /* index in replay_job.cmds */
    bool answered; /* |rd| holds the device's answer */
    bool text;     /* it has an error text: rd.error_text, pointed at in done */
    campaign_reading rd;
} replay_item;

typedef struct {
    campaigns *cs;
    char id[128];
    bool push_unsent; /* queued or pushed but not answered: pushed again */
    char udid[65];    /* one device's queue, or "" for the commands' entries */
    replay_cmd *cmds;
    size_t n_cmds;
    replay_item *items;
    size_t n_items, cap_items;
} replay_job;

static bool replay_answered(const store_queue_entry *q)
{
    return q->state == STORE_Q_ACKNOWLEDGED || q->state == STORE_Q_ERROR ||
           q->state == STORE_Q_FORMAT_ERROR;
}

/* Keeps what entry |q| of command |k| says, when it says something. */
static void replay_keep(store *st, replay_job *j, uint32_t k, const store_queue_entry *q)
{
    const replay_cmd *c = &j->cmds[k];
    bool answered = replay_answered(q);
    if (!answered &&
        !(j->push_unsent && (q->state == STORE_Q_QUEUED || q->state == STORE_Q_PUSHED)))
        return;
    if (j->n_items == j->cap_items) {
        replay_item *grown = esim_grow(j->items, &j->cap_items, j->n_items + 1, sizeof *grown);
        if (!grown)
            return;
        j->items = grown;
    }
    replay_item *it = &j->items[j->n_items];
    memset(it, 0, sizeof *it);
    snprintf(it->udid, sizeof it->udid, "%s", q->udid);
    it->cmd = k;
    if (answered) {
        /* Each platform keeps its answers its own way: its adapter reads them. */
        const campaign_platform *pl = campaign_platform_get(c->platform);
        if (!pl || pl->read_recorded(st, (campaign_step)c->step, q, &it->rd) != ESIM_OK)
            return;
        it->answered = true;
        /* The reading's text points into itself, and j->items moves as it
         * grows: replay_done points it again once the array is final. */
        it->text = it->rd.result.error_text != NULL;
        it->rd.result.error_text = NULL;
    }
    j->n_items++;
}

/* On a pool worker (or at once on the loop without a pool). */
static void replay_run(store *st, void *arg)
{
    replay_job *j = arg;
    if (j->udid[0]) {
        store_queue_entry *q = NULL;
        size_t nq = 0;
        if (esim_store_device_queue(st, j->udid, true, &q, &nq, NULL) != ESIM_OK)
            return;
        for (size_t k = 0; k < nq; k++)
            if (strcmp(q[k].command_uuid, j->cmds[0].uuid) == 0 && strcmp(q[k].udid, j->udid) == 0)
                replay_keep(st, j, 0, &q[k]);
        esim_store_queue_entries_free(q, nq);
        return;
    }
    for (uint32_t k = 0; k < j->n_cmds; k++) {
        char after[65] = "";
        for (bool more = true; more;) {
            store_command_info info;
            store_queue_entry *q = NULL;
            size_t nq = 0;
            if (esim_store_command_get(st, j->cmds[k].uuid, after, REPLAY_PAGE, &info, &q, &nq,
                                       NULL) != ESIM_OK)
                break;
            for (size_t x = 0; x < nq; x++)
                replay_keep(st, j, k, &q[x]);
            more = nq == REPLAY_PAGE;
            if (nq)
                snprintf(after, sizeof after, "%s", q[nq - 1].udid);
            esim_store_queue_entries_free(q, nq);
        }
    }
}

static void replay_job_free(replay_job *j)
{
    for (size_t i = 0; i < j->n_items; i++)
        if (j->items[i].answered)
            campaign_reading_free(&j->items[i].rd);
    free(j->items);
    free(j->cmds);
    free(j);
}

/* On the loop: the devices that still wait on the command an entry
 * answered get that answer; the ones not answered yet are pushed (a
 * campaign taken over from an instance that died between queueing and
 * pushing: a push costs a check-in, a lost one a device left waiting). */
static void replay_done(esim_service *svc, void *arg, bool ran)
{
    (void)svc;
    replay_job *j = arg;
    campaigns *cs = j->cs;
    cs->replays_out--;
    camp_slot *s = ran ? slot_by_id(cs, j->id, NULL) : NULL;
    int64_t now = esim_now_ms();
    for (size_t x = 0; s && s->owned && x < j->n_items; x++) {
        replay_item *it = &j->items[x];
        long i = campaign_find_device(s->c, it->udid);
        if (i < 0)
            continue;
        const campaign_dev *d = campaign_device_at(s->c, (size_t)i);
        if (d->state != CDEV_ACTIVE || d->cmd >= s->n_cmds ||
            strcmp(s->cmds[d->cmd].uuid, j->cmds[it->cmd].uuid) != 0)
            continue;
        if (it->answered) {
            it->answered = false; /* feed_reading frees it */
            it->rd.result.error_text = it->text ? it->rd.error_text : NULL;
            feed_reading(cs, s, (size_t)i, (campaign_step)j->cmds[it->cmd].step, &it->rd, false,
                         now);
        } else if (vec_push(&s->pushes, (uint32_t)i) == ESIM_OK)
            arm_flush(cs);
    }
    replay_job_free(j);
}

static void replay_submit(campaigns *cs, replay_job *j)
{
    cs->replays_out++;
    if (esim_service_store_job(cs->svc, replay_run, replay_done, j) != ESIM_OK) {
        cs->replays_out--;
        replay_job_free(j);
    }
}

/* Device |i|'s answer to the command it waits on, from its queue (another
 * instance received it: forward_result). */
static void replay_device(campaigns *cs, camp_slot *s, size_t i, int64_t now)
{
    (void)now;
    const campaign_dev *d = campaign_device_at(s->c, i);
    if (d->cmd >= s->n_cmds)
        return;
    replay_job *j = calloc(1, sizeof *j);
    if (!j || !(j->cmds = calloc(1, sizeof *j->cmds))) {
        free(j);
        return;
    }
    j->cs = cs;
    snprintf(j->id, sizeof j->id, "%s", campaign_id(s->c));
    snprintf(j->udid, sizeof j->udid, "%s", d->udid);
    snprintf(j->cmds[0].uuid, sizeof j->cmds[0].uuid, "%s", s->cmds[d->cmd].uuid);
    j->cmds[0].step = s->cmds[d->cmd].step;
    j->cmds[0].platform = d->platform;
    j->n_cmds = 1;
    replay_submit(cs, j);
}

/* The answers recorded to every command of |s| some device still waits on. */
static void replay_recorded_answers(campaigns *cs, camp_slot *s, bool push_unsent)
{
    campaign *c = s->c;
    size_t n_cmds = s->n_cmds;
    uint8_t *waiting = n_cmds ? calloc(n_cmds, 1) : NULL;
    if (!waiting)
        return;
    size_t n = 0;
    for (size_t i = 0; i < campaign_device_count(c); i++) {
        const campaign_dev *d = campaign_device_at(c, i);
        if (d->state == CDEV_ACTIVE && d->cmd < n_cmds && !waiting[d->cmd]) {
            waiting[d->cmd] = (uint8_t)(1 + d->platform);
            n++;
        }
    }
    replay_job *j = n ? calloc(1, sizeof *j) : NULL;
    if (j && !(j->cmds = calloc(n, sizeof *j->cmds))) {
        free(j);
        j = NULL;
    }
    if (j) {
        j->cs = cs;
        j->push_unsent = push_unsent;
        snprintf(j->id, sizeof j->id, "%s", campaign_id(c));
        for (size_t k = 0; k < n_cmds; k++)
            if (waiting[k]) {
                replay_cmd *rc = &j->cmds[j->n_cmds++];
                snprintf(rc->uuid, sizeof rc->uuid, "%s", s->cmds[k].uuid);
                rc->step = s->cmds[k].step;
                rc->platform = (uint8_t)(waiting[k] - 1);
            }
        replay_submit(cs, j);
    }
    free(waiting);
}

/* The engine's record of device |r|, from the store's. */
static esim_err device_from_record(const store_campaign_device *r, campaign_dev *x)
{
    memset(x, 0, sizeof *x);
    snprintf(x->udid, sizeof x->udid, "%s", r->udid);
    snprintf(x->eid, sizeof x->eid, "%s", r->eid);
    snprintf(x->iccid, sizeof x->iccid, "%s", r->iccid);
    x->state = (uint8_t)r->state;
    x->step = (uint8_t)r->step;
    x->retries = (uint8_t)r->retries;
    x->verify_tries = (uint8_t)r->verify_tries;
    x->esim_installed = r->flags & 1;
    x->refresh_acked = (r->flags >> 1) & 1;
    x->need_queue = (r->flags >> 2) & 1;
    x->install_error = (r->flags >> 3) & 1;
    x->pushes = (uint16_t)r->pushes;
    x->not_now = (uint32_t)r->not_now;
    x->changed_ms = r->changed_ms;
    x->next_ms = r->next_ms;
    x->deadline_ms = r->deadline_ms;
    x->last_push_ms = r->last_push_ms;
    x->push_state = (uint8_t)r->push_state;
    x->platform = r->platform;
    if (r->reason && !(x->reason = strdup(r->reason)))
        return ESIM_ENOMEM;
    return ESIM_OK;
}

/* What a slot is rebuilt from, read from the store (on a pool worker or
 * on the loop): the campaign's row (in |rows|, which holds its strings),
 * its device records and its commands. */
typedef struct {
    store_campaign *rows;
    size_t n_rows;
    const store_campaign *row;
    store_campaign_device *recs;
    size_t n;
    store_campaign_command *cmds;
    size_t nc;
} camp_read;

static void camp_read_free(camp_read *rd)
{
    esim_store_campaigns_free(rd->rows, rd->n_rows);
    esim_store_campaign_devices_free(rd->recs, rd->n);
    free(rd->cmds);
    memset(rd, 0, sizeof *rd);
}

/* Reads the records of campaign |row| (one of rd->rows) from |st|. */
static esim_err camp_read_load(store *st, const store_campaign *row, camp_read *rd, esim_error *err)
{
    rd->row = row;
    esim_err rc = esim_store_campaign_devices(st, row->id, &rd->recs, &rd->n, err);
    if (rc == ESIM_OK && rd->n)
        rc = esim_store_campaign_commands(st, row->id, &rd->cmds, &rd->nc, err);
    return rc;
}

/* Builds a new slot (*out, may be NULL) from campaign records |rd| read
 * from the store: driven here when |owned| (then the answers it missed are
 * replayed), a copy for the API otherwise. */
static esim_err restore_loaded(campaigns *cs, const camp_read *rd, bool owned, camp_slot **out,
                               esim_error *err)
{
    const store_campaign *row = rd->row;
    json_error_t jerr;
    json_t *j = json_loads(row->definition, 0, &jerr);
    campaign_spec spec;
    spec_strings strs;
    const char *field = NULL;
    if (!j || spec_from_json(j, &spec, &strs, &field, err) != ESIM_OK) {
        json_decref(j);
        return esim_fail(err, ESIM_ESTORE, "stored campaign %s is unreadable", row->id);
    }
    json_decref(j);
    spec.id = row->id;
    const store_campaign_device *recs = rd->recs;
    size_t n = rd->n;
    esim_err rc = ESIM_OK;
    campaign_dev *devs = n ? calloc(n, sizeof *devs) : NULL;
    if (n && !devs)
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    for (size_t i = 0; rc == ESIM_OK && i < n; i++)
        if (device_from_record(&recs[i], &devs[i]) != ESIM_OK)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    /* Canceled by an instance that did not drive it, and its driver gone
     * before it did the cancel: the new driver finishes it (below). */
    bool cancel_left = false;
    for (size_t i = 0; owned && row->state == CAMPAIGN_CANCELED && rc == ESIM_OK && i < n; i++)
        if (!campaign_dev_state_final((campaign_dev_state)devs[i].state))
            cancel_left = true;
    campaign *c = NULL;
    if (rc == ESIM_OK && n > 0)
        rc = campaign_restore(&spec, cancel_left ? CAMPAIGN_PAUSED : (campaign_state)row->state,
                              row->created_ms, devs, n, esim_now_ms(), &c, err);
    for (size_t i = 0; devs && i < n; i++)
        free(devs[i].reason);
    free(devs);
    camp_slot *s = NULL;
    if (rc == ESIM_OK && c && (rc = slot_add(cs, c, err, &s)) != ESIM_OK)
        campaign_free(c);
    if (rc == ESIM_OK && s) {
        for (size_t k = 0; rc == ESIM_OK && k < rd->nc; k++) {
            uint32_t ref;
            if (add_cmd(cs, s, rd->cmds[k].uuid, rd->cmds[k].step, &ref) != ESIM_OK)
                rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
        s->n_cmds_saved = s->n_cmds;
        /* Point each device at its command by UUID. The records and the
         * commands were written in one transaction with the queue entries,
         * so every command named here is in the store. */
        for (size_t i = 0; rc == ESIM_OK && i < n; i++) {
            const map_entry *m =
                recs[i].command_uuid[0] ? map_find(cs, recs[i].command_uuid) : NULL;
            if (m)
                campaign_set_cmd(c, i, m->cmd);
        }
        size_t dn;
        campaign_take_dirty(c, &dn);
        s->owned = owned;
        s->loaded_ms = esim_now_ms();
        s->version = row->version;
        campaign_set_totals(c, (uint64_t)row->pushes, (uint64_t)row->commands);
        s->pushes_saved = (uint64_t)row->pushes;
        s->commands_saved = (uint64_t)row->commands;
        if (rc == ESIM_OK && cancel_left) {
            engine_apply(cs, s, CAMPAIGN_CANCELED, s->loaded_ms);
            s->last_state = campaign_get_state(c);
            arm_flush(cs);
        }
        if (rc == ESIM_OK && owned)
            replay_recorded_answers(cs, s, cs->shared);
        if (out)
            *out = s;
    }
    return rc;
}

/* Reads campaign |row| from the store into a new slot, on the loop (at
 * start-up, and without a store pool): restore_loaded. */
static esim_err restore_campaign(campaigns *cs, const store_campaign *row, bool owned,
                                 camp_slot **out, esim_error *err)
{
    camp_read rd = {0};
    esim_err rc = camp_read_load(esim_service_store(cs->svc), row, &rd, err);
    if (rc == ESIM_OK)
        rc = restore_loaded(cs, &rd, owned, out, err);
    camp_read_free(&rd);
    return rc;
}

/* ---- several instances: leases ------------------------------------------------------------ */

static void lease_name(const char *id, char *out, size_t len)
{
    snprintf(out, len, "campaign:%s", id);
}

/* Takes or renews the lease of campaign |id|; false when another instance
 * holds it (or the store failed), its holder in |holder|. */
static bool lease_take(campaigns *cs, const char *id, char holder[64])
{
    char name[300];
    lease_name(id, name, sizeof name);
    bool held = false;
    if (esim_store_lease(esim_service_store(cs->svc), name, esim_service_instance_id(cs->svc),
                         CAMPAIGN_LEASE_TTL_MS, &held, holder, NULL) != ESIM_OK)
        return false;
    return held;
}

/* Replaces slot |k| by campaign records |rd| just read from the store
 * (driven here when |owned|). The slot keeps its place and its creation
 * warnings. */
static esim_err slot_replace(campaigns *cs, size_t k, const camp_read *rd, bool owned,
                             esim_error *err)
{
    camp_slot *old = cs->slots[k];
    if (old->in_flush) /* its flush is on a store worker: later */
        return esim_fail(err, ESIM_ESTATE, "campaign %s is being written", campaign_id(old->c));
    camp_slot *fresh = NULL;
    esim_err rc = restore_loaded(cs, rd, false, &fresh, err);
    if (rc != ESIM_OK || !fresh)
        return rc != ESIM_OK ? rc : esim_fail(err, ESIM_ESTORE, "campaign has no devices");
    /* |fresh| was appended: put it in |old|'s place. */
    cs->slots[k] = fresh;
    cs->n_slots--;
    fresh->creation_warnings = old->creation_warnings;
    old->creation_warnings = NULL;
    snprintf(fresh->holder, sizeof fresh->holder, "%s", old->holder);
    slot_free(old);
    if (map_rebuild(cs) != ESIM_OK)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    fresh->owned = owned;
    if (owned)
        replay_recorded_answers(cs, fresh, true);
    return ESIM_OK;
}

/* Reads campaign |id|'s records from |st| into |rd|. ESIM_ENOTFOUND when
 * the store no longer has it. */
static esim_err camp_read_id(store *st, const char *id, camp_read *rd, esim_error *err)
{
    memset(rd, 0, sizeof *rd);
    esim_err rc = esim_store_campaigns(st, &rd->rows, &rd->n_rows, err);
    const store_campaign *row = NULL;
    for (size_t i = 0; rc == ESIM_OK && i < rd->n_rows; i++)
        if (strcmp(rd->rows[i].id, id) == 0)
            row = &rd->rows[i];
    if (rc == ESIM_OK && !row)
        rc = esim_fail(err, ESIM_ENOTFOUND, "campaign %s is no longer in the store", id);
    if (rc == ESIM_OK)
        rc = camp_read_load(st, row, rd, err);
    return rc;
}

/* Replaces slot |k| by a fresh read of its campaign from the store, on the
 * loop (driven here when |owned|). */
static esim_err slot_reload(campaigns *cs, size_t k, bool owned, esim_error *err)
{
    camp_slot *old = cs->slots[k];
    if (old->in_flush) /* its flush is on a store worker: later */
        return esim_fail(err, ESIM_ESTATE, "campaign %s is being written", campaign_id(old->c));
    char id[128];
    snprintf(id, sizeof id, "%s", campaign_id(old->c));
    camp_read rd;
    esim_err rc = camp_read_id(esim_service_store(cs->svc), id, &rd, err);
    if (rc == ESIM_OK)
        rc = slot_replace(cs, k, &rd, owned, err);
    camp_read_free(&rd);
    return rc;
}

static camp_slot *slot_by_id(campaigns *cs, const char *id, size_t *k)
{
    for (size_t i = 0; id && i < cs->n_slots; i++)
        if (strcmp(campaign_id(cs->slots[i]->c), id) == 0) {
            if (k)
                *k = i;
            return cs->slots[i];
        }
    return NULL;
}

/* The lease tick is a store job: the campaign rows, the leases taken or
 * renewed, and the records of each campaign to read (one this instance
 * does not show yet, one it takes over) on a pool worker with that
 * worker's connection; the slots change on the loop in lease_done, from
 * what the job found. One at a time: a tick that finds the last one still
 * out leaves it. */
enum { LEASE_NEW_COPY, LEASE_NEW, LEASE_KNOWN };

typedef struct {
    char id[128];
    bool owned;
} lease_known;

typedef struct {
    int kind;
    const store_campaign *row; /* in lease_job.rows */
    bool held;
    char holder[64];
    camp_read rd; /* read when rd.row is set */
} lease_entry;

typedef struct lease_job {
    campaigns *cs;
    char instance[64];
    lease_known *known; /* the campaigns this instance shows, as the job started */
    size_t n_known;
    store_campaign *rows;
    size_t n_rows;
    lease_entry *e;
    size_t n;
} lease_job;

static void lease_job_free(lease_job *j)
{
    for (size_t i = 0; i < j->n; i++)
        camp_read_free(&j->e[i].rd); /* rd.rows is NULL: the rows are the job's */
    free(j->e);
    esim_store_campaigns_free(j->rows, j->n_rows);
    free(j->known);
    free(j);
}

/* Reads campaign |e->row|'s records into e->rd (left empty when it cannot). */
static void lease_read(store *st, lease_entry *e)
{
    if (camp_read_load(st, e->row, &e->rd, NULL) != ESIM_OK) {
        camp_read_free(&e->rd);
        e->rd.row = NULL;
    }
}

/* On a pool worker (or at once on the loop). */
static void lease_run(store *st, void *arg)
{
    lease_job *j = arg;
    if (esim_store_campaigns(st, &j->rows, &j->n_rows, NULL) != ESIM_OK)
        return;
    j->e = j->n_rows ? calloc(j->n_rows, sizeof *j->e) : NULL;
    if (!j->e)
        return;
    for (size_t i = 0; i < j->n_rows; i++) {
        const store_campaign *row = &j->rows[i];
        const lease_known *known = NULL;
        for (size_t k = 0; k < j->n_known && !known; k++)
            if (strcmp(j->known[k].id, row->id) == 0)
                known = &j->known[k];
        bool final = row->state == CAMPAIGN_FINISHED || row->state == CAMPAIGN_CANCELED;
        lease_entry *e = &j->e[j->n];
        e->row = row;
        if (!known && final) {
            e->kind = LEASE_NEW_COPY; /* for the API */
            lease_read(st, e);
            j->n++;
            continue;
        }
        if (known && final && !known->owned)
            continue;
        char name[300];
        lease_name(row->id, name, sizeof name);
        if (esim_store_lease(st, name, j->instance, CAMPAIGN_LEASE_TTL_MS, &e->held, e->holder,
                             NULL) != ESIM_OK)
            e->held = false;
        e->kind = known ? LEASE_KNOWN : LEASE_NEW;
        if (!known || (e->held && !known->owned))
            lease_read(st, e);
        j->n++;
    }
}

/* On the loop: every campaign of the store: the ones this instance holds
 * (or now takes over) are driven here, the others are copies. A campaign
 * taken over is rebuilt from the records as the last owner wrote them, and
 * the answers recorded since are replayed, as at a restart. */
static void lease_done(esim_service *svc, void *arg, bool ran)
{
    (void)svc;
    lease_job *j = arg;
    campaigns *cs = j->cs;
    if (cs->lease_job == j)
        cs->lease_job = NULL;
    int64_t now = esim_now_ms();
    for (size_t i = 0; ran && i < j->n; i++) {
        lease_entry *e = &j->e[i];
        size_t k = 0;
        camp_slot *s = slot_by_id(cs, e->row->id, &k);
        if (!s) {
            camp_slot *fresh = NULL;
            if (e->kind != LEASE_KNOWN && e->rd.row &&
                restore_loaded(cs, &e->rd, e->kind == LEASE_NEW && e->held, &fresh, NULL) ==
                    ESIM_OK &&
                fresh)
                snprintf(fresh->holder, sizeof fresh->holder, "%s", e->holder);
            continue;
        }
        if (e->kind != LEASE_KNOWN)
            continue; /* shown meanwhile (created here, or read by an API call) */
        snprintf(s->holder, sizeof s->holder, "%s", e->holder);
        /* Paused, resumed or canceled by another instance (its announcement
         * may have been lost): do it here too. The row as read may be older
         * than what this instance wrote since: only a newer one counts. */
        if (e->held && s->owned && e->row->version > s->version)
            adopt_state(cs, s, e->row->state, e->row->version, now);
        if (e->held && !s->owned && (s->in_flush || !e->rd.row)) {
            cs->next_lease_ms = now; /* its flush is still out (or was owned then): the next tick */
        } else if (e->held && !s->owned) {
            esim_error err = {{0}};
            if (slot_replace(cs, k, &e->rd, true, &err) == ESIM_OK)
                cs->takeovers++;
            else
                lease_release_later(cs, e->row->id);
        } else if (!e->held && s->owned && e->holder[0]) {
            /* Another instance took it over (this one could not renew in
             * time): it drives the campaign from its records now. */
            s->owned = false;
            s->loaded_ms = 0;
        }
    }
    lease_job_free(j);
}

/* Renews and takes the leases: as a store job from the tick, at once on
 * the loop when an API call needs the answer (|at_once|). */
/* A lease job for the campaigns shown now (NULL: out of memory). */
static lease_job *lease_job_new(campaigns *cs, int64_t now)
{
    cs->next_lease_ms = now + CAMPAIGN_LEASE_RENEW_MS;
    lease_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->cs = cs;
    snprintf(j->instance, sizeof j->instance, "%s", esim_service_instance_id(cs->svc));
    j->known = cs->n_slots ? calloc(cs->n_slots, sizeof *j->known) : NULL;
    if (cs->n_slots && !j->known) {
        free(j);
        return NULL;
    }
    for (size_t k = 0; k < cs->n_slots; k++) {
        snprintf(j->known[k].id, sizeof j->known[k].id, "%s", campaign_id(cs->slots[k]->c));
        j->known[k].owned = cs->slots[k]->owned;
    }
    j->n_known = cs->n_slots;
    return j;
}

static void leases_refresh(campaigns *cs, int64_t now, bool at_once)
{
    if (!at_once && cs->lease_job)
        return; /* the last one is still out: the next tick */
    lease_job *j = lease_job_new(cs, now);
    if (!j)
        return;
    if (at_once) {
        lease_run(esim_service_store(cs->svc), j);
        lease_done(cs->svc, j, true);
        return;
    }
    cs->lease_job = j;
    if (esim_service_store_job(cs->svc, lease_run, lease_done, j) != ESIM_OK) {
        cs->lease_job = NULL;
        lease_job_free(j);
    }
}

/* A lease this instance gives back: its name and the holder. */
typedef struct {
    char name[300];
    char instance[64];
} lease_release_job;

static void lease_release_fill(campaigns *cs, const char *id, lease_release_job *j)
{
    lease_name(id, j->name, sizeof j->name);
    snprintf(j->instance, sizeof j->instance, "%s", esim_service_instance_id(cs->svc));
}

static void lease_release_run(store *st, void *arg)
{
    lease_release_job *j = arg;
    esim_store_lease_release(st, j->name, j->instance, NULL);
}

/* At once, on the loop's store (at shutdown). */
static void lease_release_one(campaigns *cs, const char *id)
{
    lease_release_job j;
    lease_release_fill(cs, id, &j);
    lease_release_run(esim_service_store(cs->svc), &j);
}

static void lease_release_done(esim_service *svc, void *arg, bool ran)
{
    (void)svc;
    (void)ran;
    free(arg);
}

/* The same as a store job (on a pool worker with a pool): a lease given
 * back while the service runs (a takeover that could not be built). */
static void lease_release_later(campaigns *cs, const char *id)
{
    lease_release_job *j = calloc(1, sizeof *j);
    if (!j)
        return; /* the lease lapses by itself */
    lease_release_fill(cs, id, j);
    if (esim_service_store_job(cs->svc, lease_release_run, lease_release_done, j) != ESIM_OK)
        free(j);
}

/* Another instance said something about campaigns (or, with |topic| NULL,
 * this one may have missed what they said). */
static void on_notify(esim_service *svc, const char *topic, const char *payload, void *arg)
{
    (void)svc;
    campaigns *cs = arg;
    int64_t now = esim_now_ms();
    if (!topic) {
        cs->next_catch_up_ms = 0;
        cs->next_lease_ms = 0;
        return;
    }
    if (strcmp(topic, "campaign_result") == 0) {
        char udid[65] = "", uuid[128] = "";
        if (sscanf(payload, "%64s %127s", udid, uuid) != 2)
            return;
        const map_entry *m = map_find(cs, uuid);
        if (!m || !cs->slots[m->slot]->owned)
            return;
        camp_slot *s = cs->slots[m->slot];
        long i = campaign_find_device(s->c, udid);
        if (i >= 0 && campaign_device_at(s->c, (size_t)i)->cmd == m->cmd)
            replay_device(cs, s, (size_t)i, now);
    } else if (strcmp(topic, "campaign_changed") == 0) {
        /* "ID INSTANCE": INSTANCE wrote campaign ID's records. */
        char id[256] = "", from[64] = "";
        if (sscanf(payload, "%255s %63s", id, from) != 2 ||
            strcmp(from, esim_service_instance_id(cs->svc)) == 0)
            return;
        size_t k = 0;
        camp_slot *s = slot_by_id(cs, id, &k);
        if (!s || s->owned)
            /* A new campaign, or one this instance drives paused, resumed
             * or canceled elsewhere: the lease tick reads the rows now and
             * adopts the change (adopt_state). */
            cs->next_lease_ms = 0;
        else
            s->loaded_ms = 0; /* the copy is stale */
    }
}

static esim_err restore_all(campaigns *cs, esim_error *err)
{
    store_campaign *rows = NULL;
    size_t n = 0;
    esim_err rc = esim_store_campaigns(esim_service_store(cs->svc), &rows, &n, err);
    for (size_t i = 0; rc == ESIM_OK && i < n; i++) {
        /* On a shared store, only what this instance holds is driven. */
        char holder[64] = "";
        bool owned = !cs->shared || lease_take(cs, rows[i].id, holder);
        camp_slot *s = NULL;
        rc = restore_campaign(cs, &rows[i], owned, &s, err);
        if (s)
            snprintf(s->holder, sizeof s->holder, "%s", holder);
    }
    esim_store_campaigns_free(rows, n);
    return rc;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

esim_err campaigns_new(esim_service *svc, const char *data_dir, campaigns **out, esim_error *err)
{
    campaigns *cs = calloc(1, sizeof *cs);
    if (!cs)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    cs->svc = svc;
    cs->shared = (esim_store_features(esim_service_store(svc)) & ESIM_STORE_FEATURE_SHARED) != 0;
    /* Where an earlier version kept campaigns beside the store. */
    char path[4096];
    snprintf(path, sizeof path, "%s/campaigns.db", data_dir && *data_dir ? data_dir : ".");
    esim_err rc = campaigns_import_legacy(esim_service_store(svc), path, err);
    if (rc == ESIM_OK) {
        cs->flush_ev = evtimer_new(esim_service_base(svc), on_flush, cs);
        cs->tick_ev = event_new(esim_service_base(svc), -1, EV_PERSIST, on_tick, cs);
        if (!cs->flush_ev || !cs->tick_ev)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    /* The timers exist first: restoring may already queue work. */
    if (rc == ESIM_OK)
        rc = restore_all(cs, err);
    if (rc == ESIM_OK)
        rc = esim_service_add_result_hook(svc, on_result, cs);
    if (rc == ESIM_OK)
        rc = esim_service_add_results_done(svc, on_results_done, cs);
    if (rc == ESIM_OK && cs->shared)
        rc = esim_service_add_notify_hook(svc, on_notify, cs);
    if (rc == ESIM_OK) {
        struct timeval tv = {0, CAMPAIGN_TICK_MS * 1000};
        event_add(cs->tick_ev, &tv);
    }
    if (rc != ESIM_OK) {
        campaigns_free(cs);
        return rc;
    }
    *out = cs;
    return ESIM_OK;
}

void campaigns_free(campaigns *cs)
{
    if (!cs)
        return;
    /* Queue what the engine already decided, then write every record: a
     * restart resumes exactly here. */
    if (cs->flush_ev && cs->n_slots)
        flush(cs);
    /* Hand the campaigns over at once rather than when the leases lapse. */
    for (size_t i = 0; cs->shared && i < cs->n_slots; i++)
        if (cs->slots[i]->owned)
            lease_release_one(cs, campaign_id(cs->slots[i]->c));
    if (cs->flush_ev)
        event_free(cs->flush_ev);
    if (cs->tick_ev)
        event_free(cs->tick_ev);
    for (size_t i = 0; i < cs->n_slots; i++)
        slot_free(cs->slots[i]);
    release_holds(cs, cs->next_holds, cs->n_next_holds);
    /* Every answer waiting for a flush was given when the pool stopped (its
     * last jobs, then the ones their dones started, ran): what is left is
     * only memory. */
    free(cs->next_waiters);
    free(cs->cancels);
    free(cs->asks);
    free(cs->slots);
    free(cs->map);
    free(cs->facts);
    free(cs);
}

/* ---- attached to a service (campaign.h) ------------------------------------------------- */

static void on_metrics(esim_service *svc, esim_buf *out, void *arg)
{
    (void)svc;
    campaigns_metrics(arg, out);
}

static void on_close(esim_service *svc, void *arg)
{
    (void)svc;
    campaigns_free(arg);
}

esim_err esim_campaigns_attach(esim_service *svc, const char *data_dir, esim_error *err)
{
    if (!svc)
        return esim_fail(err, ESIM_EINVAL, "esim_campaigns_attach needs a service");
    campaigns *cs = NULL;
    esim_err rc = campaigns_new(svc, data_dir, &cs, err);
    if (rc != ESIM_OK)
        return rc;
    if ((rc = campaigns_add_routes(cs, err)) == ESIM_OK &&
        (rc = esim_service_add_metrics(svc, on_metrics, cs)) == ESIM_OK &&
        (rc = esim_service_add_close(svc, on_close, cs)) == ESIM_OK)
        return ESIM_OK;
    if (!err || !err->msg[0])
        esim_fail(err, rc, "cannot register campaigns with the service: %s", esim_strerror(rc));
    esim_service_remove_hooks(svc, cs);
    campaigns_free(cs);
    return rc;
}

esim_service *campaigns_service(campaigns *cs)
{
    return cs->svc;
}

/* A copy of a campaign another instance drives, read again when stale. */
static void refresh_copy(campaigns *cs, size_t k)
{
    camp_slot *s = cs->slots[k];
    if (!s->owned && esim_now_ms() - s->loaded_ms >= CAMPAIGN_SNAPSHOT_MS)
        slot_reload(cs, k, false, NULL);
}

campaign *campaigns_find(campaigns *cs, const char *id)
{
    camp_slot *s = slot_by_id(cs, id, NULL);
    return s ? s->c : NULL;
}

/* ---- what the API shows of campaigns other instances drive ----------------------------------
 * A campaign another instance drives is shown from a copy read from the
 * store, read again when older than CAMPAIGN_SNAPSHOT_MS; an unknown id or
 * the list first reads the rows and leases, as the tick would (created on
 * another instance a moment ago?). With a store pool these reads are one
 * store job and the route answers from its done (esim_api_defer). */

typedef struct {
    char id[128];
    esim_err rc;
    camp_read rd;
} view_read;

typedef struct {
    campaigns *cs;
    esim_api_request *r;
    campaigns_answer_fn answer;
    lease_job *lj;    /* the rows and leases, for the list or an unknown id */
    view_read *reads; /* the copies to read again */
    size_t n_reads;
} view_job;

static bool copy_stale(const camp_slot *s, int64_t now)
{
    return !s->owned && now - s->loaded_ms >= CAMPAIGN_SNAPSHOT_MS;
}

static void view_run(store *st, void *arg)
{
    view_job *j = arg;
    if (j->lj)
        lease_run(st, j->lj);
    for (size_t i = 0; i < j->n_reads; i++)
        j->reads[i].rc = camp_read_id(st, j->reads[i].id, &j->reads[i].rd, NULL);
}

static void view_job_free(view_job *j)
{
    for (size_t i = 0; i < j->n_reads; i++)
        camp_read_free(&j->reads[i].rd);
    free(j->reads);
    free(j);
}

static void view_done(esim_service *svc, void *arg, bool ran)
{
    view_job *j = arg;
    campaigns *cs = j->cs;
    if (j->lj)
        lease_done(svc, j->lj, ran);
    for (size_t i = 0; ran && i < j->n_reads; i++) {
        size_t k = 0;
        camp_slot *s = slot_by_id(cs, j->reads[i].id, &k);
        /* Still a copy (not taken over meanwhile) and not being written. */
        if (s && !s->owned && !s->in_flush && j->reads[i].rc == ESIM_OK)
            slot_replace(cs, k, &j->reads[i].rd, false, NULL);
    }
    j->answer(cs, j->r);
    view_job_free(j);
}

void campaigns_view(campaigns *cs, esim_api_request *r, const char *id, campaigns_answer_fn answer)
{
    int64_t now = esim_now_ms();
    size_t k = 0;
    bool known = id && slot_by_id(cs, id, &k);
    bool leases = cs->shared && !known;
    size_t n_stale = 0;
    for (size_t i = 0; i < cs->n_slots; i++)
        n_stale += (!id || (known && i == k)) && copy_stale(cs->slots[i], now);
    if (!leases && !n_stale) {
        answer(cs, r);
        return;
    }
    if (!esim_service_store_jobs_async(cs->svc)) { /* on the loop, at once */
        if (leases)
            leases_refresh(cs, now, true);
        for (size_t i = 0; i < cs->n_slots; i++)
            if (!id || strcmp(campaign_id(cs->slots[i]->c), id) == 0)
                refresh_copy(cs, i);
        answer(cs, r);
        return;
    }
    view_job *j = calloc(1, sizeof *j);
    if (j)
        j->reads = n_stale ? calloc(n_stale, sizeof *j->reads) : NULL;
    if (j && leases)
        j->lj = lease_job_new(cs, now);
    if (!j || (n_stale && !j->reads) || (leases && !j->lj)) {
        if (j && j->lj)
            lease_job_free(j->lj);
        if (j)
            view_job_free(j);
        answer(cs, r); /* out of memory: what this instance has */
        return;
    }
    j->cs = cs;
    j->r = r;
    j->answer = answer;
    for (size_t i = 0; i < cs->n_slots; i++)
        if ((!id || (known && i == k)) && copy_stale(cs->slots[i], now))
            snprintf(j->reads[j->n_reads++].id, sizeof j->reads[0].id, "%s",
                     campaign_id(cs->slots[i]->c));
    if (esim_service_store_job(cs->svc, view_run, view_done, j) != ESIM_OK) {
        if (j->lj)
            lease_job_free(j->lj);
        view_job_free(j);
        answer(cs, r);
        return;
    }
    esim_api_defer(r);
}

static camp_slot *slot_of(campaigns *cs, const campaign *c)
{
    for (size_t i = 0; i < cs->n_slots; i++)
        if (cs->slots[i]->c == c)
            return cs->slots[i];
    return NULL;
}

campaign *campaigns_latest_for_device(campaigns *cs, const char *udid, long *index)
{
    for (size_t k = cs->n_slots; k-- > 0;) {
        long i = campaign_find_device(cs->slots[k]->c, udid);
        if (i >= 0) {
            *index = i;
            return cs->slots[k]->c;
        }
    }
    *index = -1;
    return NULL;
}

static void notify_changed(campaigns *cs, const char *id)
{
    char payload[400];
    snprintf(payload, sizeof payload, "%s %s", id, esim_service_instance_id(cs->svc));
    esim_service_notify(cs->svc, "campaign_changed", payload, NULL);
}

/* Takes the canceled devices' commands off their queues, and forgets what
 * was still to be queued or pushed. */
static void cancel_queued(campaigns *cs, camp_slot *s, int64_t now)
{
    store *st = esim_service_store(cs->svc);
    bool later = esim_service_store_jobs_async(cs->svc);
    for (size_t i = 0; i < campaign_device_count(s->c); i++) {
        const campaign_dev *d = campaign_device_at(s->c, i);
        if (d->state != CDEV_CANCELED || d->cmd >= s->n_cmds)
            continue;
        if (!later || !cancel_later(cs, d->udid, s->cmds[d->cmd].uuid))
            esim_store_queue_cancel(st, d->udid, s->cmds[d->cmd].uuid, now, NULL);
    }
    if (later && cs->n_cancels)
        arm_flush(cs);
    for (int p = 0; p < CAMPAIGN_PLATFORM_COUNT; p++)
        for (int k = 0; k < CAMPAIGN_STEP_COUNT; k++)
            s->pending[p][k].n = 0;
    s->pushes.n = s->pushes_ready = 0;
}

/* Moves the engine of |s| to |to| (pause, resume, cancel): what a control
 * does to the campaign in memory once the store has the new state. */
static void engine_apply(campaigns *cs, camp_slot *s, campaign_state to, int64_t now)
{
    campaign_state from = campaign_get_state(s->c);
    if (from == to)
        return;
    if (to == CAMPAIGN_PAUSED && from == CAMPAIGN_RUNNING)
        campaign_pause(s->c, now, NULL);
    else if (to == CAMPAIGN_RUNNING && (from == CAMPAIGN_PAUSED || from == CAMPAIGN_STAGED))
        campaign_resume(s->c, now, NULL);
    else if (to == CAMPAIGN_CANCELED && from != CAMPAIGN_FINISHED && from != CAMPAIGN_CANCELED &&
             campaign_cancel(s->c, now, NULL) == ESIM_OK && s->owned)
        cancel_queued(cs, s, now);
}

/* The campaign row says |stored| at |version|, written by another
 * instance (a pause, resume or cancel taken there): the driving instance
 * does it too. A campaign finished here stays finished (its devices are
 * all final: nothing is left to pause or cancel), and the row says so at
 * the next write. */
static void adopt_state(campaigns *cs, camp_slot *s, int stored, int64_t version, int64_t now)
{
    s->version = version;
    engine_apply(cs, s, (campaign_state)stored, now);
    s->last_state = campaign_get_state(s->c);
    if ((int)s->last_state != stored)
        s->row_dirty = true;
    arm_flush(cs);
}

/* Writes the engine's state to the row of |s| in the open unit, as a
 * compare-and-set on the version this instance last saw: a change another
 * instance made meanwhile is adopted first (adopt_state), never
 * overwritten unseen. */
static esim_err write_state(campaigns *cs, camp_slot *s, int64_t now, esim_error *err)
{
    store *st = esim_service_store(cs->svc);
    for (int tries = 0;; tries++) {
        int cur = 0;
        int64_t ver = 0;
        esim_err rc = esim_store_campaign_set_state(
            st, campaign_id(s->c), (int)campaign_get_state(s->c), s->version, now, &cur, &ver, err);
        if (rc == ESIM_OK) {
            s->version_unit = ver; /* s->version once the unit is committed */
            return ESIM_OK;
        }
        if (rc != ESIM_ESTATE || tries == 4)
            return rc;
        adopt_state(cs, s, cur, ver, now);
        if (cur == (int)campaign_get_state(s->c))
            return ESIM_OK; /* the row says it already */
    }
}

/* A pause, resume or cancel is a store job too: the compare-and-set of the
 * campaign's row (its version) runs on a pool worker with that worker's
 * connection, and the engine follows on the loop in control_done. A change
 * another instance makes in the same instant is seen, adopted, and the
 * action decided again on it, never overwritten unseen. The instance that
 * drives the campaign decides on its engine and then does it (the queue
 * cancels go in the next flush's unit, and the answer waits for that
 * flush); another one decides on the row as the store has it, writes only
 * the row and tells the driving one (campaign_changed), which adopts it.
 * Without a pool the job runs at once on the loop. */
#define CONTROL_TRIES 5

typedef struct {
    campaigns *cs;
    esim_api_request *r;
    char id[128], verb[8], instance[64];
    bool shared;
    bool copy; /* decided on the row as the store has it (another instance drives it) */
    int to;    /* not |copy|: the state to write over |expect| */
    int64_t expect;
    int tries;
    /* The job's answer: on success the row's version; on ESIM_ESTATE from
     * the compare-and-set, its state and version as found. |fresh| is the
     * campaign as read after the change (|copy|). */
    esim_err rc;
    esim_error e;
    int cur;
    int64_t ver;
    bool missing; /* the store has no such campaign */
    camp_read fresh;
} control_job;

/* On a pool worker (or at once on the loop without a pool). */
static void control_run(store *st, void *arg)
{
    control_job *j = arg;
    int64_t now = esim_now_ms();
    camp_read_free(&j->fresh);
    if (!j->copy) {
        j->rc = esim_store_campaign_set_state(st, j->id, j->to, j->expect, now, &j->cur, &j->ver,
                                              &j->e);
        return;
    }
    /* Decide on the campaign as the store has it now, and again on what
     * another instance wrote in the same instant. */
    for (int tries = 0;; tries++) {
        camp_read rd;
        esim_error e = {{0}};
        esim_err rc = camp_read_id(st, j->id, &rd, &e);
        if (rc != ESIM_OK) {
            j->missing = rc == ESIM_ENOTFOUND;
            camp_read_free(&rd);
            j->rc = esim_fail(&j->e, ESIM_ESTORE, "the campaign could not be read: %s", e.msg);
            return;
        }
        campaign_state to = CAMPAIGN_RUNNING;
        rc = campaign_transition(j->id, (campaign_state)rd.row->state, j->verb, &to, &j->e);
        int64_t expect = rd.row->version;
        camp_read_free(&rd);
        if (rc != ESIM_OK) {
            j->rc = rc;
            return;
        }
        rc = esim_store_campaign_set_state(st, j->id, (int)to, expect, now, &j->cur, &j->ver, &e);
        if (rc == ESIM_OK) {
            j->to = (int)to;
            break;
        }
        if (rc != ESIM_ESTATE || tries == CONTROL_TRIES - 1) {
            j->rc = esim_fail(&j->e, rc == ESIM_ESTATE ? ESIM_ESTATE : ESIM_ESTORE,
                              "the campaign could not be changed: %s", e.msg);
            return;
        }
    }
    j->rc = ESIM_OK;
    if (j->shared) {
        char payload[400];
        snprintf(payload, sizeof payload, "%s %s", j->id, j->instance);
        esim_store_notify(st, "campaign_changed", payload, NULL);
    }
    /* Shown as the store has it from now on. */
    if (camp_read_id(st, j->id, &j->fresh, NULL) != ESIM_OK)
        camp_read_free(&j->fresh);
}

static void control_job_free(control_job *j)
{
    camp_read_free(&j->fresh);
    free(j);
}

static void control_fail(control_job *j, esim_err rc)
{
    campaigns_api_fail(j->r, rc, NULL, &j->e);
    control_job_free(j);
}

static void control_submit(campaigns *cs, control_job *j);

/* Answers |r| with campaign |id| as it is now. */
static void answer_summary(campaigns *cs, esim_api_request *r, const char *id)
{
    camp_slot *s = slot_by_id(cs, id, NULL);
    if (!s)
        esim_api_error(r, 404, "id", "no campaign with id %s", id);
    else
        esim_api_reply_json(r, 200, campaigns_summary_json(cs, s->c));
}

/* The flush that writes what the change did (the canceled devices' records
 * and queue cancels, the resumed pushes) first, then the answer. */
static void flush_then_answer(campaigns *cs, esim_api_request *r, const char *id)
{
    if (!esim_service_store_jobs_async(cs->svc)) {
        flush(cs);
        answer_summary(cs, r, id);
        return;
    }
    if (cs->n_next_waiters == cs->cap_next_waiters) {
        flush_waiter *grown = esim_grow(cs->next_waiters, &cs->cap_next_waiters,
                                        cs->n_next_waiters + 1, sizeof *grown);
        if (!grown) {
            flush(cs);
            answer_summary(cs, r, id);
            return;
        }
        cs->next_waiters = grown;
    }
    flush_waiter *w = &cs->next_waiters[cs->n_next_waiters++];
    w->r = r;
    snprintf(w->id, sizeof w->id, "%s", id);
    flush(cs);
}

static void control_done(esim_service *svc, void *arg, bool ran)
{
    (void)svc;
    control_job *j = arg;
    campaigns *cs = j->cs;
    int64_t now = esim_now_ms();
    if (!ran) {
        esim_api_error(j->r, 503, NULL, "the service is stopping");
        control_job_free(j);
        return;
    }
    size_t k = 0;
    camp_slot *s = slot_by_id(cs, j->id, &k);
    if (j->copy) {
        if (j->rc != ESIM_OK && j->missing && !s) {
            esim_api_error(j->r, 404, "id", "no campaign with id %s", j->id);
            control_job_free(j);
            return;
        }
        if (j->rc != ESIM_OK) {
            control_fail(j, j->rc);
            return;
        }
        if (s && s->owned) {
            /* This instance took the campaign over meanwhile: it does it. */
            adopt_state(cs, s, j->to, j->ver, now);
            flush_then_answer(cs, j->r, j->id);
        } else {
            esim_error e = {{0}};
            if (j->fresh.row) {
                if (s)
                    slot_replace(cs, k, &j->fresh, false, &e);
                else
                    restore_loaded(cs, &j->fresh, false, NULL, &e);
            }
            s = slot_by_id(cs, j->id, &k);
            if (s && !s->owned) {
                if (s->version < j->ver) { /* not replaced (being written): as the row says */
                    s->version = j->ver;
                    engine_apply(cs, s, (campaign_state)j->to, now);
                    s->last_state = campaign_get_state(s->c);
                }
                s->loaded_ms = 0; /* shown as the store has it from now on */
            }
            answer_summary(cs, j->r, j->id);
        }
        control_job_free(j);
        return;
    }
    if (!s) {
        esim_api_error(j->r, 404, "id", "no campaign with id %s", j->id);
        control_job_free(j);
        return;
    }
    if (j->rc == ESIM_OK) {
        if (j->ver > s->version)
            s->version = j->ver;
        engine_apply(cs, s, (campaign_state)j->to, now);
        s->last_state = campaign_get_state(s->c);
        if (s->owned) {
            flush_then_answer(cs, j->r, j->id);
        } else {
            /* Its lease went meanwhile: the instance that drives it now
             * adopts the change. */
            s->loaded_ms = 0;
            notify_changed(cs, j->id);
            answer_summary(cs, j->r, j->id);
        }
        control_job_free(j);
        return;
    }
    if (j->rc != ESIM_ESTATE || ++j->tries == CONTROL_TRIES) {
        esim_err rc = j->rc == ESIM_ESTATE ? ESIM_ESTATE : ESIM_ESTORE;
        esim_error e = j->e;
        esim_fail(&j->e, rc, "the campaign could not be changed: %s", e.msg);
        control_fail(j, rc);
        return;
    }
    /* Changed by another instance in the same instant: adopted, then the
     * action is decided again on it. */
    if (s->owned)
        adopt_state(cs, s, j->cur, j->ver, now);
    else
        j->copy = true;
    campaign_state to = CAMPAIGN_RUNNING;
    memset(&j->e, 0, sizeof j->e);
    if (!j->copy) {
        esim_err rc = campaign_transition(j->id, campaign_get_state(s->c), j->verb, &to, &j->e);
        if (rc != ESIM_OK) {
            control_fail(j, rc);
            return;
        }
        j->to = (int)to;
        j->expect = s->version;
    }
    control_submit(cs, j);
}

static void control_submit(campaigns *cs, control_job *j)
{
    if (esim_service_store_job(cs->svc, control_run, control_done, j) != ESIM_OK) {
        j->e.msg[0] = '\0';
        control_fail(j, ESIM_ENOMEM);
    }
}

void campaigns_control(campaigns *cs, esim_api_request *r, const char *id, const char *verb)
{
    size_t k = 0;
    camp_slot *s = slot_by_id(cs, id, &k);
    if (!s && !cs->shared) {
        esim_api_error(r, 404, "id", "no campaign with id %s", id);
        return;
    }
    control_job *j = calloc(1, sizeof *j);
    if (!j) {
        esim_api_error(r, 500, NULL, "out of memory");
        return;
    }
    j->cs = cs;
    j->r = r;
    j->shared = cs->shared;
    snprintf(j->id, sizeof j->id, "%s", id);
    snprintf(j->verb, sizeof j->verb, "%s", verb);
    snprintf(j->instance, sizeof j->instance, "%s", esim_service_instance_id(cs->svc));
    /* Not here: created on another instance a moment ago, perhaps; the job
     * reads it from the store. */
    j->copy = !s || !s->owned;
    if (!j->copy) {
        campaign_state to = CAMPAIGN_RUNNING;
        esim_err rc = campaign_transition(id, campaign_get_state(s->c), verb, &to, &j->e);
        if (rc != ESIM_OK) {
            control_fail(j, rc);
            return;
        }
        j->to = (int)to;
        j->expect = s->version;
    }
    esim_api_defer(r);
    control_submit(cs, j);
}

/* ---- JSON views -------------------------------------------------------------------------------
 */

json_t *campaigns_device_json(const campaign *c, size_t i)
{
    const campaign_dev *d = campaign_device_at(c, i);
    json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:i, s:I, s:I, s:I, s:s}", "udid", d->udid, "state",
                          campaign_dev_state_name((campaign_dev_state)d->state), "step",
                          campaign_step_name((campaign_step)d->step), "refresh_acknowledged",
                          (int)d->refresh_acked, "pushes", (int)d->pushes, "not_now",
                          (json_int_t)d->not_now, "changed_ms", (json_int_t)d->changed_ms,
                          "last_push_ms", (json_int_t)d->last_push_ms, "last_push",
                          d->push_state < 6 ? push_state_words[d->push_state] : "unknown");
    if (!o)
        return NULL;
    const campaign_platform *pl = campaign_platform_get(d->platform);
    json_object_set_new(o, "platform", json_string(pl ? pl->name : "unknown"));
    if (d->eid[0])
        json_object_set_new(o, "expected_eid", json_string(d->eid));
    if (d->iccid[0])
        json_object_set_new(o, "expected_iccid", json_string(d->iccid));
    if (d->reason)
        json_object_set_new(o, "reason", json_string(d->reason));
    return o;
}

/* What one campaign holds in the service's memory, engine and glue. */
static size_t slot_memory(const camp_slot *s)
{
    size_t b = sizeof *s + campaign_memory(s->c) + s->cap_cmds * sizeof *s->cmds +
               s->pushes.cap * sizeof *s->pushes.v;
    for (uint8_t p = 0; p < CAMPAIGN_PLATFORM_COUNT; p++) {
        if (s->pctx[p])
            b += campaign_platform_get(p)->memory(s->pctx[p]);
        for (int k = 0; k < CAMPAIGN_STEP_COUNT; k++)
            b += s->pending[p][k].cap * sizeof *s->pending[p][k].v;
    }
    return b;
}

json_t *campaigns_creation_warnings(campaigns *cs, const campaign *c)
{
    const camp_slot *s = slot_of(cs, c);
    return s && s->creation_warnings ? json_incref(s->creation_warnings) : json_null();
}

json_t *campaigns_summary_json(campaigns *cs, const campaign *c)
{
    size_t counts[CDEV_STATE_COUNT];
    campaign_counts(c, counts);
    json_t *cj = json_object();
    for (int s = 0; s < CDEV_STATE_COUNT; s++)
        json_object_set_new(cj, campaign_dev_state_name((campaign_dev_state)s),
                            json_integer((json_int_t)counts[s]));
    json_t *o = spec_to_json(campaign_get_spec(c));
    json_object_set_new(o, "id", json_string(campaign_id(c)));
    json_object_set_new(o, "state", json_string(campaign_state_name(campaign_get_state(c))));
    json_object_set_new(o, "devices", json_integer((json_int_t)campaign_device_count(c)));
    json_object_set_new(o, "counts", cj);
    /* Progress per platform: a mixed campaign shows its iPhones and its PCs
     * apart. */
    size_t per[CAMPAIGN_PLATFORM_COUNT][CDEV_STATE_COUNT];
    size_t per_n[CAMPAIGN_PLATFORM_COUNT];
    memset(per, 0, sizeof per);
    memset(per_n, 0, sizeof per_n);
    for (size_t i = 0; i < campaign_device_count(c); i++) {
        const campaign_dev *d = campaign_device_at(c, i);
        if (d->platform < CAMPAIGN_PLATFORM_COUNT && d->state < CDEV_STATE_COUNT) {
            per[d->platform][d->state]++;
            per_n[d->platform]++;
        }
    }
    json_t *bp = json_object();
    for (uint8_t p = 0; p < CAMPAIGN_PLATFORM_COUNT; p++) {
        if (!per_n[p])
            continue;
        json_t *pc = json_object();
        json_object_set_new(pc, "devices", json_integer((json_int_t)per_n[p]));
        for (int st = 0; st < CDEV_STATE_COUNT; st++)
            json_object_set_new(pc, campaign_dev_state_name((campaign_dev_state)st),
                                json_integer((json_int_t)per[p][st]));
        json_object_set_new(bp, campaign_platform_get(p)->name, pc);
    }
    json_object_set_new(o, "by_platform", bp);
    json_object_set_new(o, "refresh_acknowledged",
                        json_integer((json_int_t)campaign_refresh_acked(c)));
    json_object_set_new(o, "pushes", json_integer((json_int_t)campaign_pushes(c)));
    json_object_set_new(o, "commands", json_integer((json_int_t)campaign_commands(c)));
    json_object_set_new(o, "created_ms", json_integer(campaign_created_ms(c)));
    const camp_slot *s = slot_of(cs, c);
    if (s) {
        size_t bytes = slot_memory(s);
        json_object_set_new(o, "memory_bytes", json_integer((json_int_t)bytes));
        json_object_set_new(o, "memory_bytes_per_device",
                            json_real((double)bytes / (double)campaign_device_count(c)));
    }
    return o;
}

static size_t owned_count(const campaigns *cs)
{
    size_t n = 0;
    for (size_t k = 0; k < cs->n_slots; k++)
        n += cs->slots[k]->owned;
    return n;
}

void campaigns_metrics(campaigns *cs, esim_buf *out)
{
    if (!cs)
        return;
    esim_buf_append_str(out, "# HELP esim_mdm_campaign_devices Devices of each campaign by state.\n"
                             "# TYPE esim_mdm_campaign_devices gauge\n");
    for (size_t k = 0; k < cs->n_slots; k++) {
        const campaign *c = cs->slots[k]->c;
        if (!cs->slots[k]->owned)
            continue; /* its owner reports it */
        size_t counts[CDEV_STATE_COUNT];
        campaign_counts(c, counts);
        for (int st = 0; st < CDEV_STATE_COUNT; st++)
            esim_buf_printf(out, "esim_mdm_campaign_devices{campaign=\"%s\",state=\"%s\"} %zu\n",
                            campaign_id(c), campaign_dev_state_name((campaign_dev_state)st),
                            counts[st]);
    }
    esim_buf_append_str(out, "# HELP esim_mdm_campaign_pushes_total Pushes sent by campaigns.\n"
                             "# TYPE esim_mdm_campaign_pushes_total counter\n");
    for (size_t k = 0; k < cs->n_slots; k++)
        if (cs->slots[k]->owned)
            esim_buf_printf(out, "esim_mdm_campaign_pushes_total{campaign=\"%s\"} %llu\n",
                            campaign_id(cs->slots[k]->c),
                            (unsigned long long)campaign_pushes(cs->slots[k]->c));
    if (cs->shared)
        esim_buf_printf(out,
                        "# HELP esim_mdm_campaign_leases Campaigns this instance drives (holds"
                        " the lease of).\n# TYPE esim_mdm_campaign_leases gauge\n"
                        "esim_mdm_campaign_leases %zu\n"
                        "# HELP esim_mdm_campaign_takeovers_total Campaigns taken over from an"
                        " instance whose lease lapsed.\n"
                        "# TYPE esim_mdm_campaign_takeovers_total counter\n"
                        "esim_mdm_campaign_takeovers_total %llu\n"
                        "# HELP esim_mdm_campaign_results_forwarded_total Answers to another"
                        " instance's campaign commands, announced to it.\n"
                        "# TYPE esim_mdm_campaign_results_forwarded_total counter\n"
                        "esim_mdm_campaign_results_forwarded_total %llu\n",
                        owned_count(cs), (unsigned long long)cs->takeovers,
                        (unsigned long long)cs->forwarded);
}

json_t *campaigns_list_json(campaigns *cs)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < cs->n_slots; i++) {
        const campaign *c = cs->slots[i]->c;
        size_t counts[CDEV_STATE_COUNT];
        campaign_counts(c, counts);
        json_t *cj = json_object();
        for (int st = 0; st < CDEV_STATE_COUNT; st++)
            json_object_set_new(cj, campaign_dev_state_name((campaign_dev_state)st),
                                json_integer((json_int_t)counts[st]));
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:I, s:I, s:o, s:I, s:I}", "id",
                                             campaign_id(c), "name", campaign_name(c), "state",
                                             campaign_state_name(campaign_get_state(c)), "devices",
                                             (json_int_t)campaign_device_count(c), "verified",
                                             (json_int_t)counts[CDEV_VERIFIED], "counts", cj,
                                             "pushes", (json_int_t)campaign_pushes(c), "created_ms",
                                             (json_int_t)campaign_created_ms(c)));
    }
    return arr;
}

/* ---- creating a campaign ------------------------------------------------------------------------
 */

typedef struct {
    char (*udids)[65];
    size_t n, cap;
} udid_list;

static esim_err list_add(udid_list *l, const char *udid)
{
    if (l->n == l->cap) {
        char(*nu)[65] = esim_grow(l->udids, &l->cap, l->n + 1, sizeof *nu);
        if (!nu)
            return ESIM_ENOMEM;
        l->udids = nu;
    }
    snprintf(l->udids[l->n++], 65, "%s", udid);
    return ESIM_OK;
}

/* "ios" for iPhones, "ipados" for iPads, "macos", "tvos", "windows", "iot",
 * else "unknown". */
static const char *device_platform(const store_device *d)
{
    if (strcmp(d->platform, "windows") == 0)
        return "windows";
    if (strcmp(d->platform, "iot") == 0)
        return "iot";
    const char *p = d->product_name[0] ? d->product_name : d->model;
    if (strncmp(p, "iPhone", 6) == 0)
        return "ios";
    if (strncmp(p, "iPad", 4) == 0)
        return "ipados";
    if (strncmp(p, "Mac", 3) == 0)
        return "macos";
    if (strncmp(p, "AppleTV", 7) == 0)
        return "tvos";
    return "unknown";
}

static esim_err target_from_json(store *st, const json_t *target, udid_list *out,
                                 const char **field, esim_error *err)
{
    if (!json_is_object(target))
        return bad_field(field, "target", err,
                         "an object with one of udids, group, tag, platform or all is required");
    json_t *udids = json_object_get(target, "udids");
    json_t *group = json_object_get(target, "group");
    json_t *tag = json_object_get(target, "tag");
    json_t *platform = json_object_get(target, "platform");
    json_t *all = json_object_get(target, "all");
    int kinds = !!udids + !!group + !!tag + !!platform + !!all;
    if (kinds != 1)
        return bad_field(field, "target", err,
                         "give exactly one of udids, group, tag, platform or all");
    if (udids) {
        if (!json_is_array(udids) || json_array_size(udids) == 0)
            return bad_field(field, "target.udids", err, "must be a non-empty array of UDIDs");
        size_t i;
        json_t *v;
        json_array_foreach(udids, i, v)
        {
            esim_error why = {{0}};
            if (!json_is_string(v) || esim_udid_validate(json_string_value(v), &why) != ESIM_OK)
                return bad_field(field, "target.udids", err, "item %zu: %s", i,
                                 why.msg[0] ? why.msg : "not a string");
            if (list_add(out, json_string_value(v)) != ESIM_OK)
                return esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
        return ESIM_OK;
    }
    if (group || tag) {
        json_t *g = group ? group : tag;
        if (!json_is_string(g))
            return bad_field(field, group ? "target.group" : "target.tag", err, "must be a name");
        char(*members)[65] = NULL;
        size_t n = 0;
        esim_err rc = group ? esim_store_group_members(st, json_string_value(g), &members, &n, err)
                            : esim_store_tag_devices(st, json_string_value(g), &members, &n, err);
        if (rc != ESIM_OK) {
            if (field)
                *field = group ? "target.group" : "target.tag";
            return rc;
        }
        for (size_t i = 0; rc == ESIM_OK && i < n; i++)
            if (list_add(out, members[i]) != ESIM_OK)
                rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        free(members);
        if (rc == ESIM_OK && out->n == 0)
            return bad_field(field, group ? "target.group" : "target.tag", err,
                             "'%s' has no devices", json_string_value(g));
        return rc;
    }
    const char *want = NULL;
    if (platform) {
        if (!json_is_string(platform))
            return bad_field(field, "target.platform", err,
                             "must be ios, ipados, macos, tvos, windows or iot");
        want = json_string_value(platform);
        if (strcmp(want, "ios") && strcmp(want, "ipados") && strcmp(want, "macos") &&
            strcmp(want, "tvos") && strcmp(want, "windows") && strcmp(want, "iot"))
            return bad_field(field, "target.platform", err,
                             "must be ios, ipados, macos, tvos, windows or iot");
    } else if (!json_is_true(all))
        return bad_field(field, "target.all", err, "must be true");
    char after[65] = "";
    for (;;) {
        store_device *devs = NULL;
        size_t n = 0;
        esim_err rc = esim_store_device_list(st, after, 1000, &devs, &n, err);
        if (rc != ESIM_OK)
            return rc;
        for (size_t i = 0; i < n && rc == ESIM_OK; i++)
            if (devs[i].enrolled && (!want || strcmp(device_platform(&devs[i]), want) == 0))
                if (list_add(out, devs[i].udid) != ESIM_OK)
                    rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        if (n)
            snprintf(after, sizeof after, "%s", devs[n - 1].udid);
        free(devs);
        if (rc != ESIM_OK)
            return rc;
        if (n < 1000)
            break;
    }
    if (out->n == 0)
        return bad_field(field, "target", err, "no enrolled device matches");
    return ESIM_OK;
}

/* Every warning is counted by kind (key and reason without the device's
 * own version); the first CAMPAIGN_MAX_WARNINGS are listed one by one. */
static void add_warning(json_t *warnings, size_t *total, const char *udid, const char *key,
                        const char *reason)
{
    json_t *summary = json_array_get(warnings, 0);
    char kind[300];
    const char *paren = strstr(reason, " (device has");
    snprintf(kind, sizeof kind, "%s%s%.*s", key ? key : "", key ? " " : "",
             paren ? (int)(paren - reason) : (int)strlen(reason), reason);
    json_object_set_new(summary, kind,
                        json_integer(json_integer_value(json_object_get(summary, kind)) + 1));
    if ((*total)++ >= CAMPAIGN_MAX_WARNINGS)
        return;
    json_t *w = json_pack("{s:s, s:s}", "udid", udid, "reason", reason);
    if (w && key)
        json_object_set_new(w, "key", json_string(key));
    json_array_append_new(warnings, w);
}

/* Creating a campaign is a store job (esim_service_store_job): the body is
 * checked on the loop; the target's reads (its devices, their manifest
 * EIDs, codes and facts), the engine's new campaign, its lease and its
 * first records (the row and every device, one unit) on a pool worker with
 * that worker's connection; the slot is added and the request answered on
 * the loop in create_done. Without a pool the job runs at once on the
 * loop, as before. */
typedef struct {
    campaigns *cs;
    esim_api_request *r;
    json_t *body; /* the request's: |spec| and |field| may point into it */
    campaign_spec spec;
    spec_strings strs;
    const char *dist;
    json_t *custom;
    bool dry_run, shared;
    char instance[64];
    store_device_facts *facts; /* learned, maybe not in the store yet */
    size_t n_facts;
    /* The job's answer. */
    esim_err rc;
    esim_error e;
    const char *field;
    json_t *out;      /* a dry run's answer */
    json_t *warnings; /* [0] the counts by kind, then the first ones */
    size_t n_warn;
    campaign *c;
    char holder[64];
    bool written; /* the row and the records are in the store */
} create_job;

/* The body's checks that need no store. */
static esim_err create_parse(create_job *j)
{
    static const char *const known[] = {"name",    "target", "distribution", "custom_udids",
                                        "steps",   "policy", "smdp_url",     "settings",
                                        "dry_run", NULL};
    const json_t *body = j->body;
    const char **field = &j->field;
    esim_error *err = &j->e;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)body, key, v)
    {
        bool ok = false;
        for (size_t i = 0; known[i] && !ok; i++)
            ok = strcmp(key, known[i]) == 0;
        if (!ok)
            return bad_field(field, key, err, "unknown key (see docs/campaigns.md)");
    }
    esim_err rc = spec_from_json(body, &j->spec, &j->strs, field, err);
    if (rc != ESIM_OK)
        return rc;
    j->dist = "all";
    json_t *dj = json_object_get(body, "distribution");
    if (dj) {
        if (!json_is_string(dj) ||
            (strcmp(json_string_value(dj), "all") && strcmp(json_string_value(dj), "none") &&
             strcmp(json_string_value(dj), "custom")))
            return bad_field(field, "distribution", err, "must be all, none or custom");
        j->dist = json_string_value(dj);
    }
    json_t *custom = j->custom = json_object_get(body, "custom_udids");
    if (strcmp(j->dist, "custom") == 0 && (!json_is_array(custom) || json_array_size(custom) == 0))
        return bad_field(
            field, "custom_udids", err,
            "distribution custom needs custom_udids: the devices that get the campaign");
    if (custom && strcmp(j->dist, "custom") != 0)
        return bad_field(field, "custom_udids", err, "only with distribution custom");
    j->spec.staged = strcmp(j->dist, "none") == 0;
    json_t *dry = json_object_get(body, "dry_run");
    if (dry && !json_is_boolean(dry))
        return bad_field(field, "dry_run", err, "must be true or false");
    j->dry_run = json_is_true(dry);
    return ESIM_OK;
}

/* The target's reads, the warnings, and the engine's campaign (j->c), or a
 * dry run's answer (j->out). Touches |j| and |st| only. */
static esim_err create_read(store *st, create_job *j, int64_t now)
{
    const char **field = &j->field;
    esim_error *err = &j->e;
    const campaign_spec *spec = &j->spec;
    udid_list list = {0};
    campaign_target *targets = NULL;
    char(*eids)[ESIM_EID_LEN + 1] = NULL;
    char(*iccids)[21] = NULL;
    json_t *warnings = j->warnings;
    size_t n_warn = 0;
    esim_err rc;
    if ((rc = target_from_json(st, json_object_get(j->body, "target"), &list, field, err)) !=
        ESIM_OK)
        goto out;
    if (list.n > CAMPAIGN_MAX_DEVICES) {
        rc = bad_field(field, "target", err, "%zu devices: the limit is %u per campaign", list.n,
                       CAMPAIGN_MAX_DEVICES);
        goto out;
    }
    targets = calloc(list.n, sizeof *targets);
    eids = calloc(list.n, sizeof *eids);
    iccids = calloc(list.n, sizeof *iccids);
    if (!targets || !eids || !iccids || !warnings) {
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < list.n; i++) {
        store_device_brief d;
        const char *udid = list.udids[i];
        esim_error why = {{0}};
        if ((rc = esim_store_device_brief(st, udid, &d, &why)) != ESIM_OK) {
            if (rc == ESIM_ENOTFOUND) {
                *field = "target";
                rc = esim_fail(err, ESIM_ENOTFOUND, "device %s is not known to the service", udid);
            } else
                rc = esim_fail(err, rc, "%s", why.msg);
            goto out;
        }
        targets[i].udid = udid;
        targets[i].platform = (uint8_t)campaign_platform_named(d.platform);
        if (!d.enrolled)
            add_warning(warnings, &n_warn, udid, NULL,
                        "not enrolled (checked out): it will not check in until it re-enrols");
        /* The expected EID: the OEM manifest by serial number, else what the
         * device itself reported. */
        if (d.serial_number[0] &&
            esim_store_manifest_eid(st, d.serial_number, eids[i], NULL) == ESIM_OK) {
        } else if (d.eid[0]) {
            snprintf(eids[i], sizeof eids[i], "%s", d.eid);
        } else if (strcmp(d.platform, "iot") == 0) {
            snprintf(eids[i], sizeof eids[i], "%s", udid); /* an IoT eUICC's UDID is its EID */
        } else if (spec->steps[CAMPAIGN_STEP_VERIFY]) {
            add_warning(warnings, &n_warn, udid, NULL,
                        "no expected EID: import the OEM manifest (esim-mdm import eids) or it "
                        "cannot be verified");
        }
        char mid[256];
        if (eids[i][0] && esim_eid_validate(eids[i], NULL) != ESIM_OK)
            eids[i][0] = '\0';
        if (eids[i][0])
            esim_store_code_for_eid(st, eids[i], iccids[i], mid, NULL);
        targets[i].expected_eid = eids[i];
        targets[i].expected_iccid = iccids[i];
        store_device_facts f;
        bool known_facts = esim_store_facts_get(st, udid, &f, NULL) == ESIM_OK;
        if (known_facts && f.verified_ms && eids[i][0] && strcmp(f.eid, eids[i]) == 0 &&
            (!iccids[i][0] || strcmp(f.iccid, iccids[i]) == 0))
            targets[i].esim_installed = true;
        const char *os = f.os_version[0] ? f.os_version : d.os_version;
        if (spec->steps[CAMPAIGN_STEP_PROFILE]) {
            if (f.supervised < 0)
                add_warning(warnings, &n_warn, udid, NULL,
                            "supervision unknown (no DeviceInformation answer yet): the eSIM "
                            "restrictions apply only to supervised devices");
            esim_ignored_key ig[4];
            size_t k =
                esim_policy_ignored_keys(&spec->policy, os[0] ? os : NULL, f.supervised != 0, ig);
            for (size_t x = 0; x < k; x++)
                add_warning(warnings, &n_warn, udid, ig[x].key, ig[x].reason);
        }
        if (spec->steps[CAMPAIGN_STEP_REFRESH] && os[0]) {
            esim_os_version ov, min = {13, 0, 0};
            if (esim_os_version_parse(os, &ov, NULL) == ESIM_OK && esim_os_version_cmp(ov, min) < 0)
                add_warning(warnings, &n_warn, udid, NULL,
                            "RefreshCellularPlans needs iOS 13 or later: this device will answer "
                            "with an error");
        }
        if (targets[i].esim_installed && spec->steps[CAMPAIGN_STEP_REFRESH])
            add_warning(warnings, &n_warn, udid, NULL,
                        "its eSIM is already installed and verified: no second download will be "
                        "asked (a consumed profile needs a reset on the SM-DP+ first)");
    }
    if (j->custom) {
        /* Only the listed devices get the campaign; the rest stay staged. */
        for (size_t i = 0; i < list.n; i++)
            targets[i].staged = true;
        size_t i;
        json_t *v;
        json_array_foreach(j->custom, i, v)
        {
            bool found = false;
            for (size_t k = 0; json_is_string(v) && k < list.n; k++)
                if (strcmp(list.udids[k], json_string_value(v)) == 0) {
                    targets[k].staged = false;
                    found = true;
                }
            if (!found) {
                rc = bad_field(field, "custom_udids", err, "item %zu is not a device of the target",
                               i);
                goto out;
            }
        }
    }
    j->n_warn = n_warn;
    if (j->dry_run) {
        /* Everything is checked and the warnings found: nothing is created. */
        size_t staged = 0;
        for (size_t i = 0; i < list.n; i++)
            staged += targets[i].staged;
        json_t *o = json_pack("{s:b,s:I,s:I,s:s}", "dry_run", 1, "devices", (json_int_t)list.n,
                              "staged", (json_int_t)staged, "distribution", j->dist);
        json_object_set(o, "warnings_by_kind", json_array_get(warnings, 0));
        json_array_remove(warnings, 0);
        json_object_set_new(o, "warnings", warnings);
        json_object_set_new(o, "warnings_total", json_integer((json_int_t)n_warn));
        j->warnings = NULL;
        j->out = o;
        goto out;
    }
    if ((rc = campaign_new(spec, targets, list.n, now, &j->c, err)) != ESIM_OK)
        *field = "target";
out:
    free(list.udids);
    free(targets);
    free(eids);
    free(iccids);
    return rc;
}

/* The new campaign's lease (on a shared store: another instance that sees
 * it finds it held), then its row and every device's record as one unit:
 * written whole before anything is sent, so a crash leaves a campaign that
 * resumes, never commands without a campaign. */
static esim_err create_write(store *st, create_job *j, int64_t now)
{
    campaign *c = j->c;
    esim_error *err = &j->e;
    if (j->shared) {
        char name[300];
        bool held = false;
        lease_name(campaign_id(c), name, sizeof name);
        esim_store_lease(st, name, j->instance, CAMPAIGN_LEASE_TTL_MS, &held, j->holder, NULL);
    }
    json_t *sj = spec_to_json(campaign_get_spec(c));
    char *spec_json = sj ? json_dumps(sj, JSON_COMPACT) : NULL;
    json_decref(sj);
    size_t n = campaign_device_count(c);
    store_campaign_device *recs = malloc(RECORDS_PER_SAVE * sizeof *recs);
    if (!spec_json || !recs) {
        free(spec_json);
        free(recs);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    store_campaign row = {.id = campaign_id(c),
                          .name = campaign_name(c),
                          .definition = spec_json,
                          .state = (int)campaign_get_state(c),
                          .created_ms = campaign_created_ms(c)};
    esim_err rc = esim_store_unit_begin(st, err);
    if (rc == ESIM_OK) {
        rc = esim_store_campaign_save(st, row.id, &row, NULL, 0, NULL, 0, now, err);
        for (size_t k = 0; rc == ESIM_OK && k < n; k += RECORDS_PER_SAVE) {
            size_t m = n - k < RECORDS_PER_SAVE ? n - k : RECORDS_PER_SAVE;
            for (size_t x = 0; x < m; x++)
                device_record_of(c, NULL, 0, k + x, &recs[x]);
            rc = esim_store_campaign_save(st, row.id, NULL, NULL, 0, recs, m, now, err);
        }
        if (rc == ESIM_OK && j->shared) {
            char payload[400];
            snprintf(payload, sizeof payload, "%s %s", row.id, j->instance);
            esim_store_notify(st, "campaign_changed", payload, NULL);
        }
        esim_err end = esim_store_unit_end(st, rc == ESIM_OK, err);
        if (rc == ESIM_OK)
            rc = end;
    }
    free(spec_json);
    free(recs);
    return rc;
}

/* On a pool worker (or at once on the loop without a pool). */
static void create_run(store *st, void *arg)
{
    create_job *j = arg;
    int64_t now = esim_now_ms();
    /* Facts learned moments ago count for the warnings. */
    if (j->n_facts)
        esim_store_facts_put(st, j->facts, j->n_facts, NULL);
    j->rc = create_read(st, j, now);
    /* A store that fails here leaves the campaign to the next flush, which
     * writes it whole before its first commands (as on the loop before). */
    if (j->rc == ESIM_OK && j->c)
        j->written = create_write(st, j, now) == ESIM_OK;
}

static void create_job_free(create_job *j)
{
    campaign_free(j->c);
    json_decref(j->out);
    json_decref(j->warnings);
    json_decref(j->body);
    free(j->facts);
    free(j);
}

/* On the loop: the campaign joins the ones this instance drives, and the
 * request is answered (201, or 200 for a dry run). */
static void create_done(esim_service *svc, void *arg, bool ran)
{
    (void)svc;
    create_job *j = arg;
    campaigns *cs = j->cs;
    esim_api_request *r = j->r;
    if (!ran) {
        esim_api_error(r, 503, NULL, "the service is stopping");
        create_job_free(j);
        return;
    }
    esim_err rc = j->rc;
    camp_slot *s = NULL;
    if (rc == ESIM_OK && j->c && (rc = slot_add(cs, j->c, &j->e, &s)) == ESIM_OK) {
        j->c = NULL;     /* the slot owns it */
        s->owned = true; /* the instance that creates a campaign drives it */
        snprintf(s->holder, sizeof s->holder, "%s", j->holder);
        if (j->written) {
            size_t dn;
            campaign_take_dirty(s->c, &dn);
            s->version = 1;
        } else {
            /* Not in the store: the next flush writes it whole, with the
             * first commands, as a store error before did. */
            s->row_dirty = true;
            campaign_mark_all_dirty(s->c);
            esim_service_count_store_error(cs->svc);
        }
    }
    if (rc != ESIM_OK) {
        campaigns_api_fail(r, rc, j->field, &j->e);
    } else if (j->out) {
        json_t *o = j->out;
        j->out = NULL;
        esim_api_reply_json(r, 200, o);
    } else {
        json_t *warnings = j->warnings;
        size_t n_warn = j->n_warn;
        j->warnings = NULL;
        json_t *o = campaigns_summary_json(cs, s->c);
        json_object_set_new(o, "distribution", json_string(j->dist));
        json_object_set(o, "warnings_by_kind", json_array_get(warnings, 0));
        json_array_remove(warnings, 0);
        json_object_set_new(o, "warnings", warnings);
        json_object_set_new(o, "warnings_total", json_integer((json_int_t)n_warn));
        json_t *first = json_array();
        for (size_t i = 0; i < json_array_size(warnings) && i < 100; i++)
            json_array_append(first, json_array_get(warnings, i));
        s->creation_warnings = json_pack("{s:I,s:O,s:o}", "total", (json_int_t)n_warn, "by_kind",
                                         json_object_get(o, "warnings_by_kind"), "first", first);
        esim_api_reply_json(r, 201, o);
    }
    create_job_free(j);
}

void campaigns_create(campaigns *cs, esim_api_request *r, json_t *body)
{
    create_job *j = calloc(1, sizeof *j);
    if (!j) {
        json_decref(body);
        esim_api_error(r, 500, NULL, "out of memory");
        return;
    }
    j->cs = cs;
    j->r = r;
    j->body = body;
    j->shared = cs->shared;
    snprintf(j->instance, sizeof j->instance, "%s", esim_service_instance_id(cs->svc));
    j->warnings = json_array();
    json_array_append_new(j->warnings, json_object());
    esim_err rc = create_parse(j);
    if (rc != ESIM_OK) {
        /* |field| may point at a key of |body|: answer before letting it go. */
        campaigns_api_fail(r, rc, j->field, &j->e);
        create_job_free(j);
        return;
    }
    if (!esim_service_store_jobs_async(cs->svc)) {
        flush(cs); /* facts learned moments ago count for the warnings */
    } else {
        /* Those not written yet, and those of the flush in flight, go in the
         * job's own connection first. */
        size_t n = cs->n_facts + (cs->job ? cs->job->n_facts : 0);
        j->facts = n ? malloc(n * sizeof *j->facts) : NULL;
        if (j->facts) {
            if (cs->job && cs->job->n_facts)
                memcpy(j->facts, cs->job->facts, cs->job->n_facts * sizeof *j->facts);
            if (cs->n_facts)
                memcpy(j->facts + (cs->job ? cs->job->n_facts : 0), cs->facts,
                       cs->n_facts * sizeof *j->facts);
            j->n_facts = n;
        }
    }
    esim_api_defer(r);
    if (esim_service_store_job(cs->svc, create_run, create_done, j) != ESIM_OK) {
        j->rc = esim_fail(&j->e, ESIM_ENOMEM, "out of memory");
        j->field = NULL;
        create_done(cs->svc, j, true);
    }
}

/* ---- imports ------------------------------------------------------------------------------------
 */

static json_t *bad_lines_json(const campaign_import *imp)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < imp->n_bad; i++)
        json_array_append_new(arr, json_pack("{s:i, s:s}", "line", (int)imp->bad[i].line, "reason",
                                             imp->bad[i].reason));
    return arr;
}

/* Serial numbers of every known device, for matching a manifest. */
static esim_err known_serials(store *st, char (**serials)[64], size_t *n, esim_error *err)
{
    char after[65] = "";
    size_t cap = 0, len = 0;
    char(*out)[64] = NULL;
    for (;;) {
        store_device *devs = NULL;
        size_t got = 0;
        esim_err rc = esim_store_device_list(st, after, 1000, &devs, &got, err);
        if (rc != ESIM_OK) {
            free(out);
            return rc;
        }
        for (size_t i = 0; i < got; i++) {
            if (!devs[i].serial_number[0])
                continue;
            if (len == cap) {
                char(*no)[64] = esim_grow(out, &cap, len + 1, sizeof *no);
                if (!no) {
                    free(out);
                    free(devs);
                    return esim_fail(err, ESIM_ENOMEM, "out of memory");
                }
                out = no;
            }
            memcpy(out[len++], devs[i].serial_number, 64);
        }
        if (got)
            snprintf(after, sizeof after, "%s", devs[got - 1].udid);
        free(devs);
        if (got < 1000)
            break;
    }
    *serials = out;
    *n = len;
    return ESIM_OK;
}

static int cmp_serial(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* The parsed rows, into the store in one operation. */
static esim_err import_manifest(store *st, const campaign_import *imp, esim_error *err)
{
    store_manifest_row *rows = malloc((imp->n_eids ? imp->n_eids : 1) * sizeof *rows);
    if (!rows)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    for (size_t i = 0; i < imp->n_eids; i++)
        rows[i] = (store_manifest_row){imp->eids[i].serial, imp->eids[i].eid};
    esim_err rc = esim_store_manifest_import(st, rows, imp->n_eids, esim_now_ms(), err);
    free(rows);
    return rc;
}

static esim_err import_codes(store *st, const campaign_import *imp, esim_error *err)
{
    store_code_row *rows = malloc((imp->n_codes ? imp->n_codes : 1) * sizeof *rows);
    if (!rows)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    for (size_t i = 0; i < imp->n_codes; i++) {
        const campaign_code_row *c = &imp->codes[i];
        rows[i] = (store_code_row){c->eid, c->code, c->smdp_address, c->matching_id, c->iccid};
    }
    esim_err rc = esim_store_codes_import(st, rows, imp->n_codes, esim_now_ms(), err);
    free(rows);
    return rc;
}

esim_err campaigns_import_eids(store *st, const char *text, size_t len, json_t **out,
                               esim_error *err)
{
    campaign_import imp = {0};
    esim_err rc = campaign_import_parse_eids(text, len, &imp, err);
    if (rc != ESIM_OK)
        return rc;
    char(*serials)[64] = NULL;
    size_t n_serials = 0;
    if ((rc = import_manifest(st, &imp, err)) == ESIM_OK)
        rc = known_serials(st, &serials, &n_serials, err);
    if (rc != ESIM_OK) {
        campaign_import_free(&imp);
        return rc;
    }
    /* No known serial yet: serials is NULL, which qsort may not be given. */
    if (n_serials)
        qsort(serials, n_serials, sizeof *serials, cmp_serial);
    json_t *unmatched = json_array();
    size_t matched = 0, n_unmatched = 0;
    for (size_t i = 0; i < imp.n_eids; i++) {
        char key[64];
        snprintf(key, sizeof key, "%.63s", imp.eids[i].serial);
        if (n_serials && bsearch(key, serials, n_serials, sizeof *serials, cmp_serial)) {
            matched++;
            continue;
        }
        if (n_unmatched++ < CAMPAIGN_IMPORT_MAX_BAD)
            json_array_append_new(unmatched,
                                  json_pack("{s:i, s:s, s:s}", "line", (int)imp.eids[i].line,
                                            "serial", imp.eids[i].serial, "eid", imp.eids[i].eid));
    }
    *out = json_pack("{s:I, s:I, s:I, s:o, s:I, s:o, s:I}", "imported", (json_int_t)imp.n_eids,
                     "matched", (json_int_t)matched, "unmatched_total", (json_int_t)n_unmatched,
                     "unmatched", unmatched, "bad_total", (json_int_t)imp.n_bad_total, "bad",
                     bad_lines_json(&imp), "skipped", (json_int_t)imp.n_skipped);
    free(serials);
    campaign_import_free(&imp);
    return *out ? ESIM_OK : esim_fail(err, ESIM_ENOMEM, "out of memory");
}

esim_err campaigns_import_codes(store *st, const char *text, size_t len, json_t **out,
                                esim_error *err)
{
    campaign_import imp = {0};
    esim_err rc = campaign_import_parse_codes(text, len, &imp, err);
    if (rc != ESIM_OK)
        return rc;
    if ((rc = import_codes(st, &imp, err)) != ESIM_OK) {
        campaign_import_free(&imp);
        return rc;
    }
    *out = json_pack("{s:I, s:I, s:o, s:I}", "imported", (json_int_t)imp.n_codes, "bad_total",
                     (json_int_t)imp.n_bad_total, "bad", bad_lines_json(&imp), "skipped",
                     (json_int_t)imp.n_skipped);
    campaign_import_free(&imp);
    return *out ? ESIM_OK : esim_fail(err, ESIM_ENOMEM, "out of memory");
}
