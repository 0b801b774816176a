/*
 * log.c — the service's log: one line per event, logfmt or JSON, written
 * with one write(2) so lines from several threads or processes never mix;
 * journald's priority prefix when stderr is the journal; a rate limit per
 * kind for what a peer can make the service say (refused authentications).
 * Callers pass fields they chose: nothing here reads requests, so nothing
 * secret can slip in.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "service/service_internal.h"

esim_err esim_log_level_parse(const char *word, esim_log_level *out, esim_error *err)
{
    static const struct {
        const char *word;
        esim_log_level level;
    } words[] = {{"debug", ESIM_LOG_DEBUG},  {"info", ESIM_LOG_INFO},   {"warn", ESIM_LOG_WARN},
                 {"warning", ESIM_LOG_WARN}, {"error", ESIM_LOG_ERROR}, {"off", ESIM_LOG_OFF}};
    for (size_t i = 0; word && i < sizeof words / sizeof words[0]; i++)
        if (strcmp(word, words[i].word) == 0) {
            *out = words[i].level;
            return ESIM_OK;
        }
    return esim_fail(err, ESIM_EINVAL, "unknown log level '%.32s': use debug, info, warn or error",
                     word ? word : "");
}

static const char *level_name(esim_log_level l)
{
    switch (l) {
    case ESIM_LOG_DEBUG:
        return "debug";
    case ESIM_LOG_INFO:
        return "info";
    case ESIM_LOG_WARN:
        return "warn";
    default:
        return "error";
    }
}

/* syslog priorities, as journald reads them from "<N>". */
static int level_priority(esim_log_level l)
{
    switch (l) {
    case ESIM_LOG_DEBUG:
        return 7;
    case ESIM_LOG_INFO:
        return 6;
    case ESIM_LOG_WARN:
        return 4;
    default:
        return 3;
    }
}

/* The loop thread's lines wait for the end of the loop's pass and leave in
 * one write(2) (issue 17: the access log wrote one per request). At most
 * PIPE_BUF bytes a write, so on a pipe shared with other processes (the
 * journal's stream, a supervisor's) no line is split or mixed. */
#define LOG_BATCH 4096

/* All of |data|, over several writes if one is cut short (a signal, a
 * full disk's last bytes); a log that cannot be written is not worth
 * failing a request, so an error (EAGAIN on a descriptor someone made
 * non-blocking among them) drops what is left. */
static void log_fd_write(const esim_service *svc, const void *data, size_t len)
{
    int fd = svc->cfg.log_fd > 0 ? svc->cfg.log_fd : 2;
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        len -= (size_t)w;
    }
}

/* Writes the waiting lines; log_mu held. */
static void flush_locked(esim_service *svc)
{
    if (svc->log_pending.len)
        log_fd_write(svc, svc->log_pending.data, svc->log_pending.len);
    esim_buf_reset(&svc->log_pending);
}

static void on_log_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    esim_service *svc = arg;
    pthread_mutex_lock(&svc->log_mu);
    flush_locked(svc);
    pthread_mutex_unlock(&svc->log_mu);
}

void log_setup(esim_service *svc)
{
    const char *js = getenv("JOURNAL_STREAM");
    svc->log_journal = js && *js && (svc->cfg.log_fd == 0 || svc->cfg.log_fd == 2);
    if (svc->log_ready)
        return;
    pthread_mutex_init(&svc->log_mu, NULL);
    /* Without the event (out of memory) every line is written at once. */
    svc->log_flush_ev = event_new(svc->base, -1, 0, on_log_flush, svc);
    svc->log_ready = true;
}

void log_on_loop(esim_service *svc)
{
    /* Once: the loop's thread does not change while the service lives. */
    if (svc->log_loop_known || !svc->log_ready)
        return;
    pthread_mutex_lock(&svc->log_mu);
    svc->log_loop = pthread_self();
    svc->log_loop_known = true;
    pthread_mutex_unlock(&svc->log_mu);
}

void log_free(esim_service *svc)
{
    if (!svc->log_ready)
        return;
    pthread_mutex_lock(&svc->log_mu);
    flush_locked(svc); /* a clean stop loses no line */
    pthread_mutex_unlock(&svc->log_mu);
    if (svc->log_flush_ev)
        event_free(svc->log_flush_ev);
    svc->log_flush_ev = NULL;
    esim_buf_free(&svc->log_pending);
    pthread_mutex_destroy(&svc->log_mu);
    svc->log_ready = false;
    svc->log_loop_known = false;
}

bool svc_log_on(const esim_service *svc, esim_log_level level)
{
    return svc->cfg.log_level != ESIM_LOG_OFF && level >= svc->cfg.log_level;
}

/* logfmt: bare when the value is plain, else quoted with \" \\ \n \t and
 * \xNN for other control bytes. */
static void logfmt_value(esim_buf *b, const char *v)
{
    bool plain = *v != '\0';
    for (const char *p = v; *p && plain; p++)
        plain = (unsigned char)*p > ' ' && *p != '"' && *p != '=' && *p != '\\' && *p != 0x7f;
    if (plain) {
        esim_buf_append_str(b, v);
        return;
    }
    esim_buf_append_str(b, "\"");
    for (const char *p = v; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            char esc[3] = {'\\', (char)c, 0};
            esim_buf_append_str(b, esc);
        } else if (c == '\n') {
            esim_buf_append_str(b, "\\n");
        } else if (c == '\t') {
            esim_buf_append_str(b, "\\t");
        } else if (c < 0x20 || c == 0x7f) {
            esim_buf_printf(b, "\\x%02x", c);
        } else {
            esim_buf_append(b, p, 1);
        }
    }
    esim_buf_append_str(b, "\"");
}

/* The line's time, UTC with milliseconds. The text up to the seconds is
 * kept per thread and made again only when the second changes: every
 * request writes an access line, and gmtime_r with a formatted print cost
 * more than the rest of the line. */
static void now_text(char out[48])
{
    static _Thread_local time_t last_sec = -1;
    static _Thread_local char last_text[40];
    struct timespec tsp;
    clock_gettime(CLOCK_REALTIME, &tsp);
    if (tsp.tv_sec != last_sec) {
        struct tm tm;
        gmtime_r(&tsp.tv_sec, &tm);
        snprintf(last_text, sizeof last_text, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        last_sec = tsp.tv_sec;
    }
    int ms = (int)(tsp.tv_nsec / 1000000);
    size_t n = strlen(last_text);
    memcpy(out, last_text, n);
    out[n] = '.';
    out[n + 1] = (char)('0' + ms / 100);
    out[n + 2] = (char)('0' + ms / 10 % 10);
    out[n + 3] = (char)('0' + ms % 10);
    out[n + 4] = 'Z';
    out[n + 5] = '\0';
}

static void write_line(esim_service *svc, esim_log_level level, const char *event,
                       const char *suppressed, va_list ap)
{
    esim_buf b = {0};
    char ts[48];
    now_text(ts);
    (void)esim_buf_reserve(&b, 256); /* one allocation for most lines */
    if (svc->log_journal)
        esim_buf_printf(&b, "<%d>", level_priority(level));
    if (svc->cfg.log_json) {
        json_t *o = json_object();
        if (!svc->log_journal)
            json_object_set_new(o, "ts", json_string(ts));
        json_object_set_new(o, "level", json_string(level_name(level)));
        json_object_set_new(o, "event", json_string(event));
        for (const char *k = va_arg(ap, const char *); k; k = va_arg(ap, const char *)) {
            const char *v = va_arg(ap, const char *);
            if (!v)
                continue;
            char copy[1024];
            snprintf(copy, sizeof copy, "%s", v);
            svc_utf8_sanitize(copy);
            json_object_set_new(o, k, json_string(copy));
        }
        if (suppressed)
            json_object_set_new(o, "suppressed", json_string(suppressed));
        char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (text)
            esim_buf_append_str(&b, text);
        free(text);
    } else {
        if (!svc->log_journal) {
            esim_buf_append_str(&b, "ts=");
            esim_buf_append_str(&b, ts);
            esim_buf_append_str(&b, " ");
        }
        esim_buf_append_str(&b, "level=");
        esim_buf_append_str(&b, level_name(level));
        esim_buf_append_str(&b, " event=");
        logfmt_value(&b, event);
        for (const char *k = va_arg(ap, const char *); k; k = va_arg(ap, const char *)) {
            const char *v = va_arg(ap, const char *);
            if (!v)
                continue;
            esim_buf_append_str(&b, " ");
            esim_buf_append_str(&b, k);
            esim_buf_append_str(&b, "=");
            logfmt_value(&b, v);
        }
        if (suppressed)
            esim_buf_printf(&b, " suppressed=%s", suppressed);
    }
    esim_buf_append_str(&b, "\n");
    if (!b.data) {
        esim_buf_free(&b);
        return;
    }
    if (!svc->log_ready) {
        log_fd_write(svc, b.data, b.len);
        esim_buf_free(&b);
        return;
    }
    pthread_mutex_lock(&svc->log_mu);
    /* The loop thread's line waits for the pass's end (the flush event,
     * activated by the first line, runs before the loop waits again). */
    bool on_loop = svc->log_loop_known && pthread_equal(svc->log_loop, pthread_self());
    if (on_loop && svc->log_flush_ev && b.len <= LOG_BATCH) {
        if (svc->log_pending.len + b.len > LOG_BATCH)
            flush_locked(svc);
        bool first = svc->log_pending.len == 0;
        if (esim_buf_append(&svc->log_pending, b.data, b.len) == ESIM_OK) {
            if (first)
                event_active(svc->log_flush_ev, EV_TIMEOUT, 1);
            pthread_mutex_unlock(&svc->log_mu);
            esim_buf_free(&b);
            return;
        }
    }
    /* Another thread's line, or one too long to wait: the waiting lines
     * first, so the order holds. */
    flush_locked(svc);
    log_fd_write(svc, b.data, b.len);
    pthread_mutex_unlock(&svc->log_mu);
    esim_buf_free(&b);
}

void svc_log(esim_service *svc, esim_log_level level, const char *event, ...)
{
    if (!svc_log_on(svc, level))
        return;
    va_list ap;
    va_start(ap, event);
    write_line(svc, level, event, NULL, ap);
    va_end(ap);
}

#define LOG_LIMIT_LINES 10
#define LOG_LIMIT_WINDOW_MS 10000

void svc_log_limited(esim_service *svc, int kind, esim_log_level level, const char *event, ...)
{
    if (!svc_log_on(svc, level) || kind < 0 || kind >= SVC_LOGLIM_COUNT)
        return;
    svc_loglim *l = &svc->loglim[kind];
    int64_t now = esim_now_ms();
    if (now - l->window_ms >= LOG_LIMIT_WINDOW_MS) {
        l->window_ms = now;
        l->lines = 0;
    }
    if (l->lines >= LOG_LIMIT_LINES) {
        l->suppressed++;
        return;
    }
    l->lines++;
    char sup[24];
    if (l->suppressed)
        snprintf(sup, sizeof sup, "%llu", (unsigned long long)l->suppressed);
    va_list ap;
    va_start(ap, event);
    write_line(svc, level, event, l->suppressed ? sup : NULL, ap);
    va_end(ap);
    l->suppressed = 0;
}

void esim_service_log(esim_service *svc, esim_log_level level, const char *event,
                      const char *reason)
{
    if (svc && event)
        svc_log(svc, level, event, "reason", reason, NULL);
}
