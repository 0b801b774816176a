/*
 * winfleet.c — the Windows PCs of a devsim run: one slot per PC, a min-heap
 * of poll times, a queue of sessions waiting for a free place, OMA-DM
 * sessions over HTTPS with the PC's client certificate, the background jobs
 * the eUICCs CSP starts (downloads over ES9+, discovery, factory reset), and
 * the WNS mock's delivery channel: channels granted in batches, one
 * long-poll for every PC, pushes that start a session with Alert 1200.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "core/internal.h"
#include "sim/sim_internal.h"

#define REQUEST_BATCH 2000
#define LONGPOLL_WAIT_MS 20000
#define RETRY_MS 1000
#define MAX_URLS 8
/* An instance of the service that did not answer is skipped this long. */
#define URL_DOWN_MS 5000

enum {
    W_BUSY = 1u << 0,   /* a session is in flight */
    W_QUEUED = 1u << 1, /* waiting for a session place */
    W_PUSHED = 1u << 2, /* the queued session answers a push (Alert 1200) */
    W_WANT = 1u << 3,   /* a session is wanted once the current one ends */
    W_NEED_CHANNEL = 1u << 4,
};

typedef struct {
    sim_winpc *pc;
    sim_http_conn *conn;
    sim_tls_session *tls;    /* its TLS session with the service, kept between sessions */
    sim_lpa_link *es9;       /* its LPA's connection and TLS session with the SM-DP+ */
    int64_t channel_expires; /* wall ms; 0 = none */
    uint16_t flags;
    uint8_t retries;
    uint8_t jobs;      /* background jobs in flight */
    uint8_t url;       /* which instance of the service the session in flight talks to */
    esim_buf *waiting; /* the session's next message, sent once its jobs finished */
} wslot;

typedef struct {
    int64_t due;
    uint32_t slot;
    bool retry; /* a retry after a failed session, not the poll schedule */
} wtimer;

#define MAX_RESOLVE 16

struct sim_winfleet {
    sim_winfleet_config cfg;
    char resolve_name[MAX_RESOLVE][256], resolve_to[MAX_RESOLVE][300];
    size_t n_resolve;
    char urls[MAX_URLS][2100], wns_url[512], channel[128], data_dir[SIM_PATH_MAX];
    size_t n_urls;
    uint64_t next_url;                /* sessions started so far: which instance is next */
    int64_t url_down_until[MAX_URLS]; /* an instance that did not answer is left alone a while */
    wslot *slots;
    size_t n, cap;
    size_t *idx; /* open addressing on the DeviceID: slot + 1; 0 empty */
    size_t idx_cap;
    size_t *queue; /* ring of slots waiting for a session place */
    size_t q_head, q_len;
    size_t active;
    /* Serves the queue in the loop's next turn: a place freed or a pushed
     * PC queued does not wait for the tick. */
    struct event *kick;
    wtimer *heap;
    size_t n_heap, cap_heap;
    uint64_t rng;
    bool requesting, polling;
    size_t need_channel;
    int64_t channel_retry_at, poll_retry_at;
    uint64_t after_seq;
    sim_devsim_stats st;
};

static void on_kick(evutil_socket_t fd, short what, void *arg);
static void start_queued(sim_winfleet *f);

static uint64_t mix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- the poll heap ------------------------------------------------------------------------ */

static void heap_push(sim_winfleet *f, int64_t due, size_t slot, bool retry)
{
    if (f->n_heap == f->cap_heap) {
        wtimer *h = esim_grow(f->heap, &f->cap_heap, f->n_heap + 1, sizeof *h);
        if (!h)
            return;
        f->heap = h;
    }
    size_t i = f->n_heap++;
    while (i > 0 && f->heap[(i - 1) / 2].due > due) {
        f->heap[i] = f->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    f->heap[i] = (wtimer){due, (uint32_t)slot, retry};
}

static wtimer heap_pop(sim_winfleet *f)
{
    wtimer top = f->heap[0], last = f->heap[--f->n_heap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= f->n_heap)
            break;
        if (c + 1 < f->n_heap && f->heap[c + 1].due < f->heap[c].due)
            c++;
        if (f->heap[c].due >= last.due)
            break;
        f->heap[i] = f->heap[c];
        i = c;
    }
    if (f->n_heap)
        f->heap[i] = last;
    return top;
}

static void schedule_poll(sim_winfleet *f, size_t i, int64_t delay_ms)
{
    heap_push(f, esim_mono_ms() + delay_ms, i, false);
}

static void schedule_retry(sim_winfleet *f, size_t i, int64_t delay_ms)
{
    heap_push(f, esim_mono_ms() + delay_ms, i, true);
}

static int64_t poll_interval(sim_winfleet *f)
{
    int64_t p = f->cfg.poll_ms;
    return p - p / 10 + (int64_t)(mix(&f->rng) % (uint64_t)(p / 5 + 1));
}

/* ---- index on DeviceID --------------------------------------------------------------------- */

static void idx_put(sim_winfleet *f, size_t i)
{
    size_t k = esim_hash_str(sim_winpc_device_id(f->slots[i].pc)) & (f->idx_cap - 1);
    while (f->idx[k])
        k = (k + 1) & (f->idx_cap - 1);
    f->idx[k] = i + 1;
}

static size_t idx_find(const sim_winfleet *f, const char *id)
{
    if (!id || !f->idx_cap)
        return SIZE_MAX;
    for (size_t k = esim_hash_str(id) & (f->idx_cap - 1); f->idx[k]; k = (k + 1) & (f->idx_cap - 1))
        if (strcmp(sim_winpc_device_id(f->slots[f->idx[k] - 1].pc), id) == 0)
            return f->idx[k] - 1;
    return SIZE_MAX;
}

/* ---- persistence ----------------------------------------------------------------------------- */

static void save_if_dirty(sim_winfleet *f, size_t i)
{
    sim_winpc *pc = f->slots[i].pc;
    if (!f->data_dir[0] || !sim_winpc_dirty(pc))
        return;
    char path[SIM_PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/windows/%s.json", f->data_dir, sim_winpc_device_id(pc));
    sim_winpc_save(pc, path, NULL); /* retried at the next change */
}

/* ---- creation ----------------------------------------------------------------------------------
 */

esim_err sim_winfleet_new(const sim_winfleet_config *cfg, size_t capacity, sim_winfleet **out,
                          esim_error *err)
{
    if (!cfg->urls || cfg->n_urls == 0 || cfg->n_urls > MAX_URLS)
        return esim_fail(err, ESIM_EINVAL, "the Windows PCs need 1 to %d OMA-DM endpoints",
                         MAX_URLS);
    sim_winfleet *f = calloc(1, sizeof *f);
    if (!f)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    f->cfg = *cfg;
    if (!f->cfg.poll_ms)
        f->cfg.poll_ms = 60000;
    if (!f->cfg.max_concurrent)
        f->cfg.max_concurrent = 64;
    f->n_urls = cfg->n_urls;
    for (size_t u = 0; u < f->n_urls; u++)
        snprintf(f->urls[u], sizeof f->urls[u], "%s", cfg->urls[u]);
    f->cfg.urls = NULL; /* borrowed for the call only */
    snprintf(f->wns_url, sizeof f->wns_url, "%s", cfg->wns_url ? cfg->wns_url : "");
    size_t wl = strlen(f->wns_url);
    while (wl > 0 && f->wns_url[wl - 1] == '/')
        f->wns_url[--wl] = '\0';
    snprintf(f->channel, sizeof f->channel, "%s", cfg->channel ? cfg->channel : "devsim");
    snprintf(f->data_dir, sizeof f->data_dir, "%s", cfg->data_dir ? cfg->data_dir : "");
    f->rng = cfg->seed ^ 0x5eed5eedull;
    f->cfg.smdp_resolve = NULL;
    for (size_t k = 0; k < cfg->n_smdp_resolve && k < MAX_RESOLVE; k++) {
        const char *r = cfg->smdp_resolve[k], *eq = strchr(r, '=');
        snprintf(f->resolve_name[k], sizeof f->resolve_name[k], "%.*s", (int)(eq - r), r);
        snprintf(f->resolve_to[k], sizeof f->resolve_to[k], "https://%.290s", eq + 1);
        f->n_resolve++;
    }
    f->cap = capacity ? capacity : 1;
    f->idx_cap = 64;
    while (f->idx_cap < f->cap * 2)
        f->idx_cap *= 2;
    f->slots = calloc(f->cap, sizeof *f->slots);
    f->queue = calloc(f->cap, sizeof *f->queue);
    f->idx = calloc(f->idx_cap, sizeof *f->idx);
    esim_err rc = ESIM_OK;
    f->kick = cfg->base ? event_new(cfg->base, -1, 0, on_kick, f) : NULL;
    if (!f->slots || !f->queue || !f->idx || (cfg->base && !f->kick))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory for %zu Windows PCs", capacity);
    if (rc == ESIM_OK && f->data_dir[0]) {
        char d[SIM_PATH_MAX + 16];
        snprintf(d, sizeof d, "%s/windows", f->data_dir);
        rc = esim_mkdirs(d, 0700, err);
    }
    if (rc != ESIM_OK) {
        sim_winfleet_free(f);
        return rc;
    }
    *out = f;
    return ESIM_OK;
}

static void mark_need_channel(sim_winfleet *f, size_t i)
{
    if (!f->wns_url[0] || (f->slots[i].flags & W_NEED_CHANNEL))
        return;
    f->slots[i].flags |= W_NEED_CHANNEL;
    f->need_channel++;
}

esim_err sim_winfleet_add(sim_winfleet *f, unsigned i, esim_error *err)
{
    if (f->n == f->cap)
        return esim_fail(err, ESIM_ENOMEM, "the Windows fleet is full");
    char udid[65], eid[ESIM_EID_LEN + 1], id[65];
    sim_devsim_identity(f->cfg.seed, i, udid, eid);
    sim_devsim_windows_id(f->cfg.seed, i, id);
    sim_winpc *pc = NULL;
    esim_err rc = ESIM_ENOTFOUND;
    if (f->data_dir[0]) {
        char path[SIM_PATH_MAX + 128];
        snprintf(path, sizeof path, "%s/windows/%s.json", f->data_dir, id);
        rc = sim_winpc_load(f->cfg.pki, path, &pc, err);
        if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
            return rc;
    }
    if (rc == ESIM_ENOTFOUND) {
        static const char *const models[] = {"Surface Laptop 7", "Surface Pro 11",
                                             "ThinkPad X13s Gen 1"};
        static const char *const makers[] = {"Microsoft Corporation", "Microsoft Corporation",
                                             "LENOVO"};
        sim_winpc_spec spec = {
            .device_id = id, .eid = eid, .manufacturer = makers[i % 3], .model = models[i % 3]};
        if ((rc = sim_winpc_new(f->cfg.pki, &spec, &pc, err)) != ESIM_OK)
            return rc;
    }
    size_t k = f->n++;
    f->slots[k].pc = pc;
    idx_put(f, k);
    /* A restarted simulator asks for its channels again (the mock keeps none). */
    sim_winpc_set_channel_uri(pc, NULL, NULL);
    mark_need_channel(f, k);
    /* The first session comes soon after start, spread over a second. */
    schedule_poll(f, k, (int64_t)(mix(&f->rng) % 1000));
    return ESIM_OK;
}

void sim_winfleet_free(sim_winfleet *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++) {
        sim_http_conn_free(f->slots[i].conn);
        sim_tls_session_free(f->slots[i].tls);
        sim_lpa_link_free(f->slots[i].es9);
        if (f->slots[i].waiting) {
            esim_buf_free(f->slots[i].waiting);
            free(f->slots[i].waiting);
        }
        save_if_dirty(f, i);
        sim_winpc_free(f->slots[i].pc);
    }
    if (f->kick)
        event_free(f->kick);
    free(f->slots);
    free(f->queue);
    free(f->idx);
    free(f->heap);
    free(f);
}

size_t sim_winfleet_count(const sim_winfleet *f)
{
    return f ? f->n : 0;
}
sim_winpc *sim_winfleet_at(sim_winfleet *f, size_t i)
{
    return f && i < f->n ? f->slots[i].pc : NULL;
}
sim_winpc *sim_winfleet_find(sim_winfleet *f, const char *device_id)
{
    size_t i = f ? idx_find(f, device_id) : SIZE_MAX;
    return i == SIZE_MAX ? NULL : f->slots[i].pc;
}

void sim_winfleet_stats(const sim_winfleet *f, sim_devsim_stats *t)
{
    if (!f)
        return;
    t->windows_pcs = f->n;
    t->win_sessions = f->st.win_sessions;
    t->win_session_errors = f->st.win_session_errors;
    t->win_messages = f->st.win_messages;
    t->wns_pushes = f->st.wns_pushes;
    t->wns_channels = f->st.wns_channels;
    t->wns_expired = f->st.wns_expired;
    t->stray_wns_pushes = f->st.stray_wns_pushes;
    t->win_downloads_ok = f->st.win_downloads_ok;
    t->win_downloads_failed = f->st.win_downloads_failed;
    t->win_resets = f->st.win_resets;
    t->http_errors += f->st.http_errors;
}

/* ---- sessions ----------------------------------------------------------------------------------
 */

/* The queue is served in the loop's next turn (start_queued), never from
 * inside the callback that freed a place or queued a PC: that callback may
 * still be using the slot (a failed session schedules its retry after). */
static void kick(sim_winfleet *f)
{
    if (f->kick)
        event_active(f->kick, EV_TIMEOUT, 1);
}

static void want_session(sim_winfleet *f, size_t i, bool pushed)
{
    wslot *sl = &f->slots[i];
    if (pushed)
        sl->flags |= W_PUSHED;
    if (sl->flags & W_BUSY) {
        sl->flags |= W_WANT; /* once this one ends */
        return;
    }
    if (sl->flags & W_QUEUED)
        return;
    sl->flags |= W_QUEUED;
    f->queue[(f->q_head + f->q_len++) % f->cap] = i;
    if (f->active < f->cfg.max_concurrent)
        kick(f);
}

typedef struct {
    sim_winfleet *f;
    size_t slot;
} sess_ctx;

static void on_reply(void *arg, sim_http_response *r);
static void run_jobs(sim_winfleet *f, size_t i);

static esim_err post(sim_winfleet *f, size_t i, const esim_buf *body, bool pushed)
{
    wslot *sl = &f->slots[i];
    /* The PC's identity, held in memory, goes with a full handshake. */
    const esim_buf *id = NULL;
    esim_err rc = sim_winpc_identity(sl->pc, &id, NULL);
    if (rc != ESIM_OK)
        return rc;
    const char *hdrs[] = {
        "Content-Type: application/vnd.syncml.dm+xml",
        "Accept: application/vnd.syncml.dm+xml, application/vnd.syncml.dm+wbxml, "
        "application/octet-stream",
        "User-Agent: MSFT OMA DM Client/1.2.0.1",
        pushed ? "UserAgentOrigin: 3" : "UserAgentOrigin: 2",
    };
    sess_ctx *ctx = malloc(sizeof *ctx);
    if (!ctx)
        return ESIM_ENOMEM;
    *ctx = (sess_ctx){f, i};
    const char *url = sim_winpc_session_url(sl->pc);
    sim_http_request req = {
        .method = "POST",
        .url = url,
        .headers = hdrs,
        .n_headers = 4,
        .body = body->data,
        .body_len = body->len,
        .timeout_ms = 30000,
        .ca_file = strncmp(url, "https://", 8) == 0 ? sim_pki_ca_file(f->cfg.pki) : NULL,
        .client_cert_der = id->data,
        .client_cert_der_len = id->len,
        .client_chain_der = f->cfg.pki->scep_der.data,
        .client_chain_der_len = f->cfg.pki->scep_der.len,
        .client_key_p256 = sim_winpc_identity_key(sl->pc),
        .conn = sl->conn,
        .tls = strncmp(url, "https://", 8) == 0 ? &sl->tls : NULL};
    rc = sim_http_send(f->cfg.http, &req, on_reply, ctx, NULL);
    if (rc != ESIM_OK)
        free(ctx);
    return rc;
}

static void session_end(sim_winfleet *f, size_t i, bool ok)
{
    wslot *sl = &f->slots[i];
    if (sl->flags & W_BUSY) {
        sl->flags &= (uint16_t)~W_BUSY;
        f->active--;
        if (f->q_len > 0)
            kick(f); /* the place goes to the next in line at once */
    }
    sim_http_conn_free(sl->conn);
    sl->conn = NULL;
    if (sim_winpc_in_session(sl->pc))
        sim_winpc_session_abort(sl->pc);
    sim_euicc_release_key(sim_winpc_euicc(sl->pc));
    if (ok) {
        sl->retries = 0;
        run_jobs(f, i);
    }
    save_if_dirty(f, i);
    if (sl->flags & W_WANT) {
        sl->flags &= (uint16_t)~W_WANT;
        want_session(f, i, false);
    }
}

static void session_failed(sim_winfleet *f, size_t i)
{
    wslot *sl = &f->slots[i];
    f->st.win_session_errors++;
    session_end(f, i, false);
    /* Windows retries a failed session on its first-retries schedule; here
     * 1 s doubling to 64 s, then the poll schedule takes over. */
    if (sl->retries < 6) {
        schedule_retry(f, i, (int64_t)RETRY_MS << sl->retries);
        sl->retries++;
    }
}

static void session_start(sim_winfleet *f, size_t i)
{
    wslot *sl = &f->slots[i];
    bool pushed = (sl->flags & W_PUSHED) != 0;
    sl->flags &= (uint16_t) ~(W_QUEUED | W_PUSHED);
    /* A channel about to expire is renewed first (Windows renews halfway). */
    if (sl->channel_expires && sl->channel_expires - esim_now_ms() < (int64_t)f->cfg.poll_ms)
        mark_need_channel(f, i);
    /* As a load balancer would: each session to the next instance in turn,
     * skipping one that just failed to answer at all (a dead instance);
     * the session's later messages follow the first (session affinity: the
     * service keeps an OMA-DM session's state in the instance's memory). */
    int64_t now = esim_mono_ms();
    size_t u = (size_t)(f->next_url++ % f->n_urls);
    for (size_t k = 0; k < f->n_urls && f->url_down_until[u] > now; k++)
        u = (size_t)(f->next_url++ % f->n_urls);
    sl->url = (uint8_t)u;
    esim_buf body = {0};
    if (sim_http_conn_new(&sl->conn, NULL) != ESIM_OK ||
        sim_winpc_session_start(sl->pc, f->urls[u], pushed, &body, NULL) != ESIM_OK) {
        esim_buf_free(&body);
        sim_http_conn_free(sl->conn);
        sl->conn = NULL;
        schedule_retry(f, i, RETRY_MS);
        return;
    }
    sl->flags |= W_BUSY;
    f->active++;
    if (post(f, i, &body, pushed) != ESIM_OK) {
        f->st.http_errors++;
        session_failed(f, i);
    }
    esim_buf_free(&body);
}

static void on_reply(void *arg, sim_http_response *r)
{
    sess_ctx *ctx = arg;
    sim_winfleet *f = ctx->f;
    size_t i = ctx->slot;
    free(ctx);
    wslot *sl = &f->slots[i];
    if (r->err != ESIM_OK || r->status != 200) {
        f->st.http_errors++;
        if (r->err != ESIM_OK && f->n_urls > 1)
            f->url_down_until[sl->url] = esim_mono_ms() + URL_DOWN_MS;
        session_failed(f, i);
        return;
    }
    esim_buf next = {0};
    bool done = false;
    esim_err rc = sim_winpc_session_reply(sl->pc, r->body.data, r->body.len, &next, &done, NULL);
    if (rc != ESIM_OK) {
        esim_buf_free(&next);
        session_failed(f, i);
        return;
    }
    if (done) {
        esim_buf_free(&next);
        f->st.win_sessions++;
        session_end(f, i, true);
        return;
    }
    f->st.win_messages++;
    /* What this message's commands started (a discovery, a download) runs
     * now, and the PC sends its answer once that is done: the service's
     * next command in this session (the campaign's verification) reads
     * what the eUICC did, without another session and another push. */
    run_jobs(f, i);
    if (sl->jobs > 0 && (sl->waiting = malloc(sizeof *sl->waiting)) != NULL) {
        *sl->waiting = next;
        return;
    }
    if (post(f, i, &next, false) != ESIM_OK) {
        f->st.http_errors++;
        session_failed(f, i);
    }
    esim_buf_free(&next);
}

/* The session's next message waited for the jobs its commands started. */
static void post_waiting(sim_winfleet *f, size_t i)
{
    wslot *sl = &f->slots[i];
    esim_buf *next = sl->waiting;
    if (!next || sl->jobs > 0)
        return;
    sl->waiting = NULL;
    if (post(f, i, next, false) != ESIM_OK) {
        f->st.http_errors++;
        session_failed(f, i);
    }
    esim_buf_free(next);
    free(next);
}

esim_err sim_winfleet_sync(sim_winfleet *f, const char *device_id, esim_error *err)
{
    size_t i = f ? idx_find(f, device_id) : SIZE_MAX;
    if (i == SIZE_MAX)
        return esim_fail(err, ESIM_ENOTFOUND, "no simulated Windows PC %s",
                         device_id ? device_id : "");
    want_session(f, i, false);
    return ESIM_OK;
}

/* ---- background jobs ---------------------------------------------------------------------------
 */

typedef struct {
    sim_winfleet *f;
    size_t slot;
    sim_winpc_job job;
} job_ctx;

static void job_finished(void *arg, size_t still)
{
    (void)still;
    job_ctx *j = arg;
    sim_winfleet *f = j->f;
    wslot *sl = &f->slots[j->slot];
    if (j->job.kind == SIM_WINJOB_RESET) {
        sim_winpc_job_done(sl->pc, &j->job, NULL);
        f->st.win_resets++;
    }
    sl->jobs--;
    save_if_dirty(f, j->slot);
    size_t slot = j->slot;
    free(j);
    post_waiting(f, slot);
}

static void after_download(void *arg, const sim_download_result *r)
{
    job_ctx *j = arg;
    sim_winfleet *f = j->f;
    wslot *sl = &f->slots[j->slot];
    if (r->err == ESIM_OK)
        f->st.win_downloads_ok++;
    else
        f->st.win_downloads_failed++;
    sim_winpc_job_done(sl->pc, &j->job, r);
    /* Install (and enable) notifications go to the SM-DP+ at once. */
    if (sim_lpa_send_notifications(f->cfg.http, sim_winpc_euicc(sl->pc), &sl->es9,
                                   sim_pki_ca_file(f->cfg.pki), job_finished, j, NULL) != ESIM_OK)
        job_finished(j, 0);
}

/* The SM-DP+ URL for a job's https://<name>, through the resolve table. */
static void resolve(const sim_winfleet *f, sim_winpc_job *job)
{
    if (strncmp(job->server_url, "https://", 8) != 0)
        return;
    const char *name = job->server_url + 8;
    const char *to = NULL;
    for (size_t k = 0; k < f->n_resolve && !to; k++)
        if (strcmp(f->resolve_name[k], name) == 0)
            to = f->resolve_to[k];
    for (size_t k = 0; k < f->n_resolve && !to; k++)
        if (strcmp(f->resolve_name[k], "*") == 0 && !strchr(name, ':'))
            to = f->resolve_to[k];
    if (to)
        snprintf(job->server_url, sizeof job->server_url, "%s", to);
}

static void run_jobs(sim_winfleet *f, size_t i)
{
    wslot *sl = &f->slots[i];
    sim_winpc_job job;
    bool sent_notifications = false;
    while (sim_winpc_next_job(sl->pc, &job)) {
        job_ctx *j = malloc(sizeof *j);
        if (!j)
            return;
        resolve(f, &job);
        *j = (job_ctx){f, i, job};
        sl->jobs++;
        if (job.kind == SIM_WINJOB_RESET) {
            sent_notifications = true;
            if (sim_lpa_send_notifications(f->cfg.http, sim_winpc_euicc(sl->pc), &sl->es9,
                                           sim_pki_ca_file(f->cfg.pki), job_finished, j,
                                           NULL) != ESIM_OK)
                job_finished(j, 0);
            continue;
        }
        esim_error err;
        if (!job.server_url[0] || sim_lpa_download(f->cfg.http, sim_winpc_euicc(sl->pc), &sl->es9,
                                                   job.server_url, sim_pki_ca_file(f->cfg.pki),
                                                   job.matching_id[0] ? job.matching_id : NULL,
                                                   after_download, j, &err) != ESIM_OK) {
            sim_download_result r = {.err = job.server_url[0] ? ESIM_EINVAL : ESIM_EUNAVAIL};
            snprintf(r.message, sizeof r.message, "%.250s",
                     job.server_url[0] ? err.msg : "no ServerName");
            after_download(j, &r);
        }
    }
    /* Deletions the session made owe their SM-DP+ a notification. */
    if (!sent_notifications && sim_euicc_notification_count(sim_winpc_euicc(sl->pc)) > 0)
        sim_lpa_send_notifications(f->cfg.http, sim_winpc_euicc(sl->pc), &sl->es9,
                                   sim_pki_ca_file(f->cfg.pki), NULL, NULL, NULL);
}

esim_err sim_winfleet_user_action(sim_winfleet *f, const char *device_id, sim_user_action a,
                                  sim_action_outcome *out, esim_error *err)
{
    size_t i = f ? idx_find(f, device_id) : SIZE_MAX;
    if (i == SIZE_MAX)
        return esim_fail(err, ESIM_ENOTFOUND, "no simulated device %s", device_id);
    if (a != SIM_ACTION_DELETE_ESIM) {
        memset(out, 0, sizeof *out);
        return esim_fail(err, ESIM_EINVAL, "a Windows PC knows only the delete-esim action");
    }
    esim_err rc = sim_winpc_user_delete_esim(f->slots[i].pc, out, err);
    if (sim_euicc_notification_count(sim_winpc_euicc(f->slots[i].pc)) > 0)
        sim_lpa_send_notifications(f->cfg.http, sim_winpc_euicc(f->slots[i].pc), &f->slots[i].es9,
                                   sim_pki_ca_file(f->cfg.pki), NULL, NULL, NULL);
    save_if_dirty(f, i);
    return rc;
}

/* ---- WNS: channels and deliveries -------------------------------------------------------------
 */

typedef struct {
    sim_winfleet *f;
    size_t *slots;
    size_t n;
} chan_ctx;

static void on_channels(void *arg, sim_http_response *r)
{
    chan_ctx *c = arg;
    sim_winfleet *f = c->f;
    f->requesting = false;
    json_t *j = r->err == ESIM_OK && r->status == 200
                    ? json_loadb((const char *)r->body.data, r->body.len, 0, NULL)
                    : NULL;
    json_t *list = json_object_get(j, "channels");
    if (!json_is_array(list)) {
        f->st.http_errors++;
        f->channel_retry_at = esim_mono_ms() + RETRY_MS;
        for (size_t k = 0; k < c->n; k++)
            mark_need_channel(f, c->slots[k]);
    } else {
        size_t k;
        json_t *it;
        json_array_foreach(list, k, it)
        {
            size_t i = idx_find(f, sim_json_str(it, "tag"));
            const char *uri = sim_json_str(it, "channel_uri");
            if (i == SIZE_MAX || !uri)
                continue;
            sim_winpc *pc = f->slots[i].pc;
            const char *cur = sim_winpc_channel_uri(pc);
            bool fresh = !cur || strcmp(cur, uri) != 0;
            sim_winpc_set_channel_uri(pc, uri, NULL);
            f->slots[i].channel_expires = json_integer_value(json_object_get(it, "expires_ms"));
            f->st.wns_channels++;
            /* A PC that has talked to its server already tells it the new
             * channel now, in a session of its own, as a push client updates
             * its server when the channel URI changes: until then the
             * server has no channel, or a dead one, and cannot wake it (a
             * first session that raced its channel grant waited for the
             * next poll, minutes later, and held a campaign's end). A PC
             * in its first session may have answered the server's
             * ChannelURI Get already: one more session after it. */
            if (fresh && (sim_winpc_sessions(pc) > 0 || (f->slots[i].flags & W_BUSY)))
                want_session(f, i, false);
        }
    }
    json_decref(j);
    free(c->slots);
    free(c);
}

static void request_channels(sim_winfleet *f)
{
    if (f->requesting || f->need_channel == 0 || !f->wns_url[0] ||
        esim_mono_ms() < f->channel_retry_at)
        return;
    chan_ctx *c = calloc(1, sizeof *c);
    json_t *tags = json_array();
    if (!c || !tags || !(c->slots = calloc(REQUEST_BATCH, sizeof *c->slots))) {
        if (c)
            free(c->slots);
        free(c);
        json_decref(tags);
        return;
    }
    c->f = f;
    for (size_t i = 0; i < f->n && c->n < REQUEST_BATCH; i++) {
        wslot *sl = &f->slots[i];
        if (!(sl->flags & W_NEED_CHANNEL))
            continue;
        sl->flags &= (uint16_t)~W_NEED_CHANNEL;
        f->need_channel--;
        json_array_append_new(tags, json_string(sim_winpc_device_id(sl->pc)));
        c->slots[c->n++] = i;
    }
    json_t *body = json_pack("{s:o}", "tags", tags);
    char *txt = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    char url[800];
    snprintf(url, sizeof url, "%s/channels?channel=%s", f->wns_url, f->channel);
    static const char *const hdrs[] = {"Content-Type: application/json"};
    sim_http_request req = {.method = "POST",
                            .url = url,
                            .headers = hdrs,
                            .n_headers = 1,
                            .body = txt,
                            .body_len = txt ? strlen(txt) : 0,
                            .timeout_ms = 30000};
    f->requesting = true;
    if (!txt || sim_http_send(f->cfg.http, &req, on_channels, c, NULL) != ESIM_OK) {
        sim_http_response fail = {.err = ESIM_EUNAVAIL};
        on_channels(c, &fail);
    }
    free(txt);
}

static void poll_deliveries(sim_winfleet *f);

static void on_deliveries(void *arg, sim_http_response *r)
{
    sim_winfleet *f = arg;
    f->polling = false;
    json_t *j = r->err == ESIM_OK && r->status == 200
                    ? json_loadb((const char *)r->body.data, r->body.len, 0, NULL)
                    : NULL;
    json_t *list = json_object_get(j, "deliveries"), *next = json_object_get(j, "next");
    if (!json_is_array(list) || !json_is_integer(next)) {
        if (r->err != ESIM_EUNAVAIL || r->status != 0)
            f->st.http_errors++;
        f->poll_retry_at = esim_mono_ms() + RETRY_MS;
        json_decref(j);
        return;
    }
    f->after_seq = (uint64_t)json_integer_value(next);
    size_t k;
    json_t *it;
    json_array_foreach(list, k, it)
    {
        size_t i = idx_find(f, sim_json_str(it, "tag"));
        const char *kind = sim_json_str(it, "kind"), *uri = sim_json_str(it, "channel_uri");
        if (i == SIZE_MAX || !kind) {
            f->st.stray_wns_pushes++;
            continue;
        }
        const char *cur = sim_winpc_channel_uri(f->slots[i].pc);
        if (strcmp(kind, "expired") == 0) {
            /* The channel died: the PC's push client gets a new one. */
            f->st.wns_expired++;
            if (cur && uri && strcmp(cur, uri) == 0) {
                f->slots[i].channel_expires = 0;
                mark_need_channel(f, i);
            }
        } else if (strcmp(kind, "push") == 0) {
            f->st.wns_pushes++;
            want_session(f, i, true);
        }
    }
    json_decref(j);
    /* The next long-poll at once, as a push client's connection stays
     * open: a push does not wait for the tick to be fetched. */
    poll_deliveries(f);
}

static void poll_deliveries(sim_winfleet *f)
{
    if (f->polling || !f->wns_url[0] || esim_mono_ms() < f->poll_retry_at)
        return;
    char url[900];
    snprintf(url, sizeof url, "%s/deliveries?channel=%s&after=%llu&wait_ms=%d&limit=5000",
             f->wns_url, f->channel, (unsigned long long)f->after_seq, LONGPOLL_WAIT_MS);
    sim_http_request req = {.method = "GET", .url = url, .timeout_ms = LONGPOLL_WAIT_MS + 10000};
    if (sim_http_send(f->cfg.http, &req, on_deliveries, f, NULL) == ESIM_OK)
        f->polling = true;
    else
        f->poll_retry_at = esim_mono_ms() + RETRY_MS;
}

/* ---- the tick
 * ------------------------------------------------------------------------------------ */

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    start_queued(arg);
}

void sim_winfleet_tick(sim_winfleet *f)
{
    if (!f || f->n == 0)
        return;
    int64_t now = esim_mono_ms();
    while (f->n_heap && f->heap[0].due <= now) {
        wtimer t = heap_pop(f);
        want_session(f, t.slot, false);
        /* The next poll is due one interval later, whatever happens now. */
        if (!t.retry)
            schedule_poll(f, t.slot, poll_interval(f));
    }
    request_channels(f);
    poll_deliveries(f);
    start_queued(f);
}

/* Starts the queued sessions the cap lets in. */
static void start_queued(sim_winfleet *f)
{
    while (f->q_len > 0 && f->active < f->cfg.max_concurrent) {
        size_t i = f->queue[f->q_head];
        f->q_head = (f->q_head + 1) % f->cap;
        f->q_len--;
        wslot *sl = &f->slots[i];
        sl->flags &= (uint16_t)~W_QUEUED;
        if (sl->flags & W_BUSY) {
            sl->flags |= W_WANT;
            continue;
        }
        session_start(f, i);
    }
}
