/*
 * bench_apns_memory.c — how much heap the APNs client holds per thousand
 * pushes in flight. It points the client at a mock (h2c URL, $1) that holds
 * every answer for a long time, submits N pushes, waits until all of them
 * are in flight, and compares malloc's in-use bytes before and after.
 *
 * usage: bench_apns_memory http://127.0.0.1:PORT N
 * prints: {"in_flight":N,"bytes_per_push":B,"kib_per_1000_in_flight":K}
 */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <event2/event.h>

#include "apns/apns.h"

static void on_result(const apns_result *r, void *arg)
{
    /* Nothing should finish while the mock holds the answers: say why. */
    if ((*(size_t *)arg)++ == 0 && r->outcome != APNS_OUTCOME_CANCELED)
        fprintf(stderr, "bench_apns_memory: a push ended early: %s %d %s\n",
                esim_apns_outcome_name(r->outcome), r->status, r->reason);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: bench_apns_memory http://HOST:PORT N\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int n = atoi(argv[2]);
    if (n < 1000 || n > 1000000) {
        fprintf(stderr, "N must be 1000 to 1000000\n");
        return 2;
    }
    struct event_base *base = event_base_new();
    apns_config cfg;
    esim_apns_config_init(&cfg);
    cfg.url = argv[1];
    cfg.auth = APNS_AUTH_NONE;
    cfg.topic = "com.apple.mgmt.External.bench";
    cfg.connections = 1;
    cfg.max_in_flight = n + 1; /* the warm-up push stays in flight too */
    size_t results = 0;
    apns_client *c = NULL;
    esim_error err = {{0}};
    if (esim_apns_client_new(base, &cfg, on_result, &results, &c, &err) != ESIM_OK) {
        fprintf(stderr, "bench_apns_memory: %s\n", err.msg);
        return 1;
    }
    /* Warm up: one push opens the connection, so its buffers are not
     * counted as per-push memory. */
    apns_push p = {.token = "00000000000000000000000000000000000000000000000000000000000000aa",
                   .push_magic = "00000000-1111-2222-3333-444444444444"};
    esim_apns_client_push(c, &p, NULL);
    apns_stats s;
    for (int i = 0; i < 2000; i++) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        esim_apns_client_stats(c, &s);
        if (s.in_flight == 1 && s.queued == 0)
            break;
        struct timeval tv = {0, 1000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    struct mallinfo2 before = mallinfo2();
    char token[65];
    for (int i = 0; i < n; i++) {
        snprintf(token, sizeof token, "%064x", i);
        p.token = token;
        if (esim_apns_client_push(c, &p, &err) != ESIM_OK) {
            fprintf(stderr, "bench_apns_memory: %s\n", err.msg);
            return 1;
        }
    }
    /* Run until every push is on the wire (the mock holds the answers). */
    for (int i = 0; i < 30000; i++) {
        struct timeval tv = {0, 1000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
        esim_apns_client_stats(c, &s);
        if (s.queued == 0 && s.in_flight >= (uint64_t)n)
            break;
    }
    struct mallinfo2 after = mallinfo2();
    esim_apns_client_stats(c, &s);
    double per = ((double)after.uordblks - (double)before.uordblks) / (double)n;
    printf("{\"in_flight\":%llu,\"bytes_per_push\":%.0f,\"kib_per_1000_in_flight\":%.1f}\n",
           (unsigned long long)s.in_flight - 1, per, per * 1000.0 / 1024.0);
    esim_apns_client_free(c);
    event_base_loop(base, EVLOOP_NONBLOCK);
    event_base_free(base);
    if (s.in_flight < (uint64_t)n) {
        fprintf(stderr, "bench_apns_memory: only %llu of %d pushes got in flight (%llu results)\n",
                (unsigned long long)s.in_flight, n, (unsigned long long)results);
        return 1;
    }
    return 0;
}
