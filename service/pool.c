/*
 * pool.c — the store worker pool: with PostgreSQL, the device path's store
 * operations run on a few threads, each with a connection of its own, so a
 * slow query holds one worker and never the event loop. A job's |run| is
 * called on a worker with that worker's store; its |done| on the loop once
 * it is back (a pipe into the loop, as the group-commit sync thread does),
 * in the order the jobs finished. Everything else (replies, hooks, batches)
 * stays on the loop, as without the pool.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "service/service_internal.h"
#include "service/store_internal.h"

typedef struct {
    svc_pool *pool;
    store *st;
    pthread_t thread;
    bool started;
    store_backend_stats stats; /* copied from |st| after each job, under the lock */
} pool_worker;

struct svc_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool quit;
    pool_job *todo, **todo_tail; /* waiting for a worker */
    pool_job *done, **done_tail; /* finished, waiting for the loop */
    size_t waiting, busy, busy_admin;
    uint64_t jobs, errors;
    int pipe[2];
    struct event *done_ev;
    pool_worker *workers;
    size_t n;
};

/* The first job a worker may take, under the lock: the oldest, except that
 * admin jobs (the admin API's, the campaigns') hold at most half the
 * workers, so that however slow they are, device requests keep the rest. */
static pool_job **next_job(svc_pool *p)
{
    size_t admin_max = (p->n + 1) / 2;
    for (pool_job **at = &p->todo; *at; at = &(*at)->next)
        if (!(*at)->admin || p->busy_admin < admin_max)
            return at;
    return NULL;
}

static void *worker_main(void *arg)
{
    pool_worker *w = arg;
    svc_pool *p = w->pool;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        pool_job **at = NULL;
        while (!p->quit && !(at = next_job(p)))
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->quit)
            break;
        pool_job *j = *at;
        *at = j->next;
        if (!*at)
            p->todo_tail = at;
        p->waiting--;
        p->busy++;
        p->busy_admin += j->admin;
        pthread_mutex_unlock(&p->mu);

        j->rc = ESIM_OK;
        j->run(w->st, j);
        j->ran = true;
        store_backend_stats bs;
        esim_store_backend_stats(w->st, &bs);

        pthread_mutex_lock(&p->mu);
        w->stats = bs;
        p->busy--;
        if (j->admin) {
            p->busy_admin--;
            pthread_cond_broadcast(&p->cv); /* an admin job waiting may go now */
        }
        p->jobs++;
        p->errors += j->rc == ESIM_ESTORE;
        j->next = NULL;
        bool wake = !p->done;
        *p->done_tail = j;
        p->done_tail = &j->next;
        if (wake) {
            ssize_t n = write(p->pipe[1], "d", 1);
            (void)n;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Hands the finished jobs to their |done|, on the loop, oldest first. */
static void complete_done(esim_service *svc)
{
    svc_pool *p = svc->pool;
    pthread_mutex_lock(&p->mu);
    pool_job *list = p->done;
    p->done = NULL;
    p->done_tail = &p->done;
    pthread_mutex_unlock(&p->mu);
    while (list) {
        pool_job *next = list->next;
        list->done(svc, list); /* frees the job */
        list = next;
    }
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    complete_done(arg);
}

esim_err pool_start(esim_service *svc, esim_error *err)
{
    /* SQLite keeps its path: its operations are CPU only, and its batches
     * and deferred sync are the loop's. */
    if (svc->cfg.store_pool < 0 || svc->cfg.store_pool > SVC_POOL_MAX)
        return esim_fail(err, ESIM_EINVAL, "store pool of %d connections: give 0 (none) to %d",
                         svc->cfg.store_pool, SVC_POOL_MAX);
    if (svc->cfg.store_pool == 0 || strcmp(esim_store_backend(svc->st), "pgsql") != 0)
        return ESIM_OK;
    svc_pool *p = calloc(1, sizeof *p);
    if (!p)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    svc->pool = p;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->todo_tail = &p->todo;
    p->done_tail = &p->done;
    p->pipe[0] = p->pipe[1] = -1;
    if (pipe2(p->pipe, O_NONBLOCK | O_CLOEXEC) != 0)
        return esim_fail(err, ESIM_EIO, "pipe: %s", strerror(errno));
    p->done_ev = event_new(svc->base, p->pipe[0], EV_READ | EV_PERSIST, on_done, svc);
    p->workers = calloc((size_t)svc->cfg.store_pool, sizeof *p->workers);
    if (!p->done_ev || !p->workers)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    event_add(p->done_ev, NULL);
    store_options so = {.sync = svc->cfg.store_sync};
    for (int i = 0; i < svc->cfg.store_pool; i++) {
        pool_worker *w = &p->workers[i];
        w->pool = p;
        esim_err rc = esim_store_open(svc->store_spec, svc->data_dir, &so, &w->st, err);
        if (rc != ESIM_OK)
            return rc;
        p->n++;
        esim_store_backend_stats(w->st, &w->stats);
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
            return esim_fail(err, ESIM_EIO, "cannot start a store worker thread");
        w->started = true;
    }
    return ESIM_OK;
}

bool pool_on(const esim_service *svc)
{
    return svc->pool != NULL;
}

void pool_submit(esim_service *svc, pool_job *j)
{
    svc_pool *p = svc->pool;
    j->next = NULL;
    j->ran = false;
    pthread_mutex_lock(&p->mu);
    if (p->quit) {
        /* Submitted by a |done| while the pool stops (a module's next
         * job, a held answer's refill): the workers are gone, so it runs
         * at once on the loop's own store. */
        pthread_mutex_unlock(&p->mu);
        j->rc = ESIM_OK;
        j->run(svc->st, j);
        j->ran = true;
        j->done(svc, j);
        return;
    }
    *p->todo_tail = j;
    p->todo_tail = &j->next;
    p->waiting++;
    /* Every worker looks: the one woken might be unable to take an admin job. */
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void pool_run(esim_service *svc, pool_job *j)
{
    if (pool_on(svc)) {
        pool_submit(svc, j);
        return;
    }
    j->rc = ESIM_OK;
    j->run(svc->st, j);
    j->ran = true;
    j->done(svc, j);
}

void pool_stop(esim_service *svc)
{
    svc_pool *p = svc->pool;
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < p->n; i++)
        if (p->workers[i].started)
            pthread_join(p->workers[i].thread, NULL);
    /* What finished is answered as usual; what never reached a worker
     * changed nothing and is refused like a store that went away. */
    complete_done(svc);
    pool_job *j = p->todo;
    p->todo = NULL;
    while (j) {
        pool_job *next = j->next;
        j->rc = esim_fail(&j->e, ESIM_ESTORE, "the service is stopping");
        j->done(svc, j);
        j = next;
    }
    for (size_t i = 0; i < p->n; i++)
        esim_store_close(p->workers[i].st);
    free(p->workers);
    if (p->done_ev)
        event_free(p->done_ev);
    for (int i = 0; i < 2; i++)
        if (p->pipe[i] >= 0)
            close(p->pipe[i]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
    svc->pool = NULL;
}

void pool_metrics(esim_service *svc, esim_buf *out)
{
    svc_pool *p = svc->pool;
    if (!p)
        return;
    store_backend_stats sum = {0};
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n; i++) {
        const store_backend_stats *s = &p->workers[i].stats;
        sum.connections += s->connections;
        sum.queries += s->queries;
        sum.failures += s->failures;
        sum.reconnects += s->reconnects;
        sum.statement_timeouts += s->statement_timeouts;
    }
    size_t busy = p->busy, waiting = p->waiting;
    uint64_t jobs = p->jobs, errors = p->errors;
    pthread_mutex_unlock(&p->mu);
    esim_buf_printf(out,
                    "# HELP esim_mdm_store_pool_connections The store worker pool's database "
                    "connections: usable as of each one's last operation, and all.\n"
                    "# TYPE esim_mdm_store_pool_connections gauge\n"
                    "esim_mdm_store_pool_connections{state=\"open\"} %llu\n"
                    "esim_mdm_store_pool_connections{state=\"size\"} %zu\n"
                    "# HELP esim_mdm_store_pool_busy Workers running an operation now.\n"
                    "# TYPE esim_mdm_store_pool_busy gauge\n"
                    "esim_mdm_store_pool_busy %zu\n"
                    "# HELP esim_mdm_store_pool_waiting Operations waiting for a worker.\n"
                    "# TYPE esim_mdm_store_pool_waiting gauge\n"
                    "esim_mdm_store_pool_waiting %zu\n"
                    "# TYPE esim_mdm_store_pool_operations_total counter\n"
                    "esim_mdm_store_pool_operations_total{outcome=\"done\"} %llu\n"
                    "esim_mdm_store_pool_operations_total{outcome=\"store_error\"} %llu\n"
                    "# TYPE esim_mdm_store_pool_queries_total counter\n"
                    "esim_mdm_store_pool_queries_total{outcome=\"sent\"} %llu\n"
                    "esim_mdm_store_pool_queries_total{outcome=\"failed\"} %llu\n"
                    "# TYPE esim_mdm_store_pool_reconnects_total counter\n"
                    "esim_mdm_store_pool_reconnects_total %llu\n"
                    "# HELP esim_mdm_store_pool_statement_timeouts_total Statements of the "
                    "pool's connections cancelled by statement_timeout.\n"
                    "# TYPE esim_mdm_store_pool_statement_timeouts_total counter\n"
                    "esim_mdm_store_pool_statement_timeouts_total %llu\n",
                    (unsigned long long)sum.connections, p->n, busy, waiting,
                    (unsigned long long)(jobs - errors), (unsigned long long)errors,
                    (unsigned long long)sum.queries, (unsigned long long)sum.failures,
                    (unsigned long long)sum.reconnects, (unsigned long long)sum.statement_timeouts);
}
