/*
 * loadgen.c — load generator for `esim-mdm serve`: N simulated devices over
 * C keep-alive connections (libevent HTTP client). Phases: enrol every device
 * (Authenticate + TokenUpdate), queue one command for all of them in one API
 * call, then drive the check-in round trip (Idle -> command -> Acknowledged
 * -> empty); finally the same number of requests against /healthz with the
 * same generator, which is the ceiling the round trips are compared with.
 * With LOADGEN_PKI=DIR (a test PKI, `esim-mdm pki`) every device signs each
 * message as a phone does (Mdm-Signature: CMS, detached, signingTime) with
 * a P-256 identity issued from DIR's device CA, for a service run with
 * --device-auth signature.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/cms.h>

#include "core/internal.h"

typedef enum { P_AUTH, P_TOKEN, P_IDLE, P_ACK, P_HEALTH } phase;

typedef struct gen gen;

typedef struct {
    gen *g;
    struct evhttp_connection *conn;
    int device; /* current device index */
    phase step;
    char uuid[64];
} slot;

struct gen {
    struct event_base *base;
    const char *host;
    int port;
    int devices, conc;
    int next_device; /* work queue */
    int done_devices;
    int errors;
    long requests;
    phase phase_kind; /* which phase is running */
    slot *slots;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Added to every device number: two generators driving two instances on
 * one database take disjoint devices (the optional FIRST argument, after
 * ROUNDS). */
static int udid_base;

static void udid_of(int i, char out[48])
{
    snprintf(out, 48, "BENCH-%08d-0000-0000-000000000000", udid_base + i);
}

static void body_for(slot *s, struct evbuffer *out)
{
    char udid[48];
    udid_of(s->device, udid);
    static const char head[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>";
    switch (s->step) {
    case P_AUTH:
        evbuffer_add_printf(
            out,
            "%s<key>MessageType</key><string>Authenticate</string><key>Topic</key>"
            "<string>com.apple.mgmt.External.bench</string><key>UDID</key><string>%s</string>"
            "<key>OSVersion</key><string>18.1</string></dict></plist>",
            head, udid);
        break;
    case P_TOKEN:
        evbuffer_add_printf(
            out,
            "%s<key>MessageType</key><string>TokenUpdate</string><key>Topic</key>"
            "<string>com.apple.mgmt.External.bench</string><key>UDID</key><string>%s</string>"
            "<key>Token</key><data>AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=</data>"
            "<key>PushMagic</key><string>magic-%d</string></dict></plist>",
            head, udid, s->device);
        break;
    case P_IDLE:
        evbuffer_add_printf(
            out,
            "%s<key>Status</key><string>Idle</string><key>UDID</key><string>%s</string>"
            "</dict></plist>",
            head, udid);
        break;
    case P_ACK:
        evbuffer_add_printf(
            out,
            "%s<key>Status</key><string>Acknowledged</string><key>UDID</key>"
            "<string>%s</string><key>CommandUUID</key><string>%s</string></dict></plist>",
            head, udid, s->uuid);
        break;
    case P_HEALTH:
        break;
    }
}

/* ---- signing, with LOADGEN_PKI ---- */

static esim_cert sign_ca;     /* the device CA; .x509 NULL: nothing is signed */
static esim_cert *identities; /* one per device, issued on first use */

static const esim_cert *identity_of(int device)
{
    esim_cert *c = &identities[device];
    char udid[48];
    udid_of(device, udid);
    esim_cert_spec spec = {.common_name = udid, .key_type = ESIM_KEY_EC_P256};
    if (!c->x509 && esim_cert_issue(&spec, &sign_ca, c, NULL) != ESIM_OK) {
        fprintf(stderr, "loadgen: cannot issue an identity\n");
        exit(1);
    }
    return c;
}

/* The Mdm-Signature header of |body|, signed by |device|'s identity. */
static void sign_into(struct evkeyvalq *h, int device, struct evbuffer *body)
{
    size_t len = evbuffer_get_length(body);
    BIO *in = BIO_new_mem_buf(evbuffer_pullup(body, -1), (int)len);
    const esim_cert *id = identity_of(device);
    CMS_ContentInfo *cms =
        in ? CMS_sign(id->x509, id->key, NULL, in, CMS_DETACHED | CMS_BINARY | CMS_NOSMIMECAP)
           : NULL;
    unsigned char *der = NULL;
    int der_len = cms ? i2d_CMS_ContentInfo(cms, &der) : -1;
    esim_buf b64 = {0};
    if (der_len <= 0 || esim_base64_encode(der, (size_t)der_len, &b64) != ESIM_OK) {
        fprintf(stderr, "loadgen: cannot sign\n");
        exit(1);
    }
    esim_buf_append(&b64, "", 1);
    evhttp_add_header(h, "Mdm-Signature", (const char *)b64.data);
    esim_buf_free(&b64);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
}

static void issue(slot *s);

/* The next device for this slot, or stop when the work queue is empty. */
static void next_device(slot *s)
{
    gen *g = s->g;
    g->done_devices++;
    if (g->next_device >= g->devices) {
        if (g->done_devices == g->devices)
            event_base_loopexit(g->base, NULL);
        s->device = -1;
        return;
    }
    s->device = g->next_device++;
    s->step = g->phase_kind == P_AUTH ? P_AUTH : g->phase_kind;
    issue(s);
}

static void on_reply(struct evhttp_request *req, void *arg)
{
    slot *s = arg;
    gen *g = s->g;
    g->requests++;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    if (code != 200) {
        g->errors++;
        if (g->errors < 5)
            fprintf(stderr, "loadgen: device %d step %d got %d\n", s->device, s->step, code);
        next_device(s);
        return;
    }
    switch (s->step) {
    case P_AUTH:
        s->step = P_TOKEN;
        issue(s);
        return;
    case P_IDLE: {
        /* The reply is the command; pick its CommandUUID out. */
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        char *body = (char *)evbuffer_pullup(in, -1);
        const char *k = body ? memmem(body, len, "<key>CommandUUID</key>", 22) : NULL;
        const char *v = k ? memmem(k, len - (size_t)(k - body), "<string>", 8) : NULL;
        if (!v) {
            g->errors++;
            next_device(s);
            return;
        }
        v += 8;
        const char *e = memchr(v, '<', len - (size_t)(v - body));
        size_t n = e ? (size_t)(e - v) : 0;
        if (n >= sizeof s->uuid)
            n = sizeof s->uuid - 1;
        memcpy(s->uuid, v, n);
        s->uuid[n] = '\0';
        s->step = P_ACK;
        issue(s);
        return;
    }
    default:
        next_device(s);
    }
}

static void issue(slot *s)
{
    gen *g = s->g;
    struct evhttp_request *req = evhttp_request_new(on_reply, s);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char host[64];
    snprintf(host, sizeof host, "%s:%d", g->host, g->port);
    evhttp_add_header(h, "Host", host);
    if (s->step == P_HEALTH) {
        evhttp_make_request(s->conn, req, EVHTTP_REQ_GET, "/healthz");
        return;
    }
    body_for(s, evhttp_request_get_output_buffer(req));
    if (sign_ca.x509)
        sign_into(h, s->device, evhttp_request_get_output_buffer(req));
    evhttp_make_request(s->conn, req, EVHTTP_REQ_PUT, "/mdm");
}

/* Runs one phase over every device; returns elapsed seconds. */
/* The /healthz ceiling runs at least this long, in passes of the check-in
 * phase's request count. */
#define HEALTH_MIN_S 2.0
#define HEALTH_MAX_REPS 1000

static double run_phase(gen *g, phase p, long *requests)
{
    g->phase_kind = p;
    g->next_device = 0;
    g->done_devices = 0;
    g->requests = 0;
    double t0 = now_s();
    for (int i = 0; i < g->conc && g->next_device < g->devices; i++) {
        slot *s = &g->slots[i];
        s->device = g->next_device++;
        s->step = p;
        issue(s);
    }
    event_base_dispatch(g->base);
    *requests = g->requests;
    return now_s() - t0;
}

typedef struct {
    int code;
    struct event_base *base;
} call_ctx;

static void on_done(struct evhttp_request *rq, void *arg)
{
    call_ctx *cx = arg;
    cx->code = rq ? evhttp_request_get_response_code(rq) : 0;
    event_base_loopexit(cx->base, NULL);
}

/* POST /v1/commands for devices [first, first + n) in one call (push off). */
static int enqueue_range(gen *g, const char *token, int first, int n)
{
    struct evhttp_connection *c =
        evhttp_connection_base_new(g->base, NULL, g->host, (unsigned short)g->port);
    call_ctx cx = {0, g->base};
    struct evhttp_request *r = evhttp_request_new(on_done, &cx);
    struct evbuffer *b = evhttp_request_get_output_buffer(r);
    evbuffer_add_printf(b, "{\"push\":false,\"command\":{\"request_type\":\"RefreshCellularPlans\","
                           "\"esim_server_url\":\"smdp.example.com\"},\"udids\":[");
    for (int i = first; i < first + n; i++) {
        char udid[48];
        udid_of(i, udid);
        evbuffer_add_printf(b, "%s\"%s\"", i > first ? "," : "", udid);
    }
    evbuffer_add_printf(b, "]}");
    char auth[256], host[64];
    snprintf(auth, sizeof auth, "Bearer %s", token);
    snprintf(host, sizeof host, "%s:%d", g->host, g->port);
    struct evkeyvalq *h = evhttp_request_get_output_headers(r);
    evhttp_add_header(h, "Authorization", auth);
    evhttp_add_header(h, "Host", host);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_connection_set_timeout(c, 600);
    evhttp_make_request(c, r, EVHTTP_REQ_POST, "/v1/commands");
    event_base_dispatch(g->base);
    evhttp_connection_free(c);
    return cx.code;
}

static long rss_kib(int pid)
{
    esim_proc_usage u;
    return esim_proc_usage_read(pid, &u) == ESIM_OK ? u.rss_kb : -1;
}

/* Server CPU time (user + system) in ms, from /proc: what each phase cost
 * the server, whatever else the machine is doing. */
static double cpu_ms(int pid)
{
    esim_proc_usage u;
    return esim_proc_usage_read(pid, &u) == ESIM_OK ? u.cpu_s * 1000.0 : -1;
}

/* This generator's own CPU time (user + system) in ms. */
static double self_cpu_ms(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000.0 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000.0;
}

/* The CPU time in ms of the server's main thread alone (its event loop:
 * /proc/PID/task/PID/stat), without the sync thread and pool workers. */
static double loop_cpu_ms(int pid)
{
    double s;
    return esim_thread_cpu_read(pid, pid, &s) == ESIM_OK ? s * 1000.0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr,
                "usage: loadgen PORT TOKEN DEVICES CONCURRENCY SERVER_PID [ROUNDS [FIRST]]\n"
                "  ROUNDS given: that many rounds of enqueue + round trips, and no\n"
                "  /healthz ceiling (what bench/service/run.sh runs under callgrind); 0: the\n"
                "  usual run. FIRST: the first device number (two generators on\n"
                "  two instances of one database take disjoint devices)\n");
        return 2;
    }
    int rounds = argc > 6 ? atoi(argv[6]) : 0;
    gen g = {0};
    g.host = "127.0.0.1";
    g.port = atoi(argv[1]);
    const char *token = argv[2];
    g.devices = atoi(argv[3]);
    g.conc = atoi(argv[4]);
    int pid = atoi(argv[5]);
    udid_base = argc > 7 ? atoi(argv[7]) : 0;
    const char *pki = getenv("LOADGEN_PKI");
    if (pki && *pki) {
        esim_error e = {{0}};
        if (esim_pki_load(pki, "device-ca", &sign_ca, &e) != ESIM_OK) {
            fprintf(stderr, "loadgen: %s\n", e.msg);
            return 2;
        }
        identities = calloc((size_t)g.devices, sizeof *identities);
    }
    g.base = event_base_new();
    g.slots = calloc((size_t)g.conc, sizeof *g.slots);
    for (int i = 0; i < g.conc; i++) {
        g.slots[i].g = &g;
        g.slots[i].conn = evhttp_connection_base_new(g.base, NULL, g.host, (unsigned short)g.port);
        evhttp_connection_set_timeout(g.slots[i].conn, 60);
    }
    long rss0 = rss_kib(pid), req = 0;
    double t = run_phase(&g, P_AUTH, &req);
    long rss_enrolled = rss_kib(pid);
    printf("enrol:       %d devices, %ld check-ins in %.2f s = %.0f check-ins/s (errors %d)\n",
           g.devices, req, t, (double)req / t, g.errors);
    /* Callgrind rounds: the same work again and again, nothing timed. */
    for (int k = 0; k < rounds; k++) {
        int code = 200;
        for (int first = 0; first < g.devices && code == 200; first += 10000)
            code = enqueue_range(&g, token, first,
                                 g.devices - first < 10000 ? g.devices - first : 10000);
        g.errors = 0;
        run_phase(&g, P_IDLE, &req);
        if (code != 200 || g.errors) {
            fprintf(stderr, "loadgen: round %d: enqueue HTTP %d, %d errors\n", k, code, g.errors);
            return 1;
        }
    }
    if (rounds > 0) {
        printf("rounds:      %d of %d round trips\n", rounds, g.devices);
        return 0;
    }
    /* Bodies stay under the service's 1 MiB limit: 10000 devices per call. */
    double t0 = now_s();
    int code = 200, calls = 0;
    for (int first = 0; first < g.devices && code == 200; first += 10000, calls++)
        code =
            enqueue_range(&g, token, first, g.devices - first < 10000 ? g.devices - first : 10000);
    printf("enqueue:     %d API calls for %d devices: HTTP %d in %.2f s\n", calls, g.devices, code,
           now_s() - t0);
    if (code != 200)
        return 1;
    g.errors = 0;
    double cpu0 = cpu_ms(pid), loop0 = loop_cpu_ms(pid), self0 = self_cpu_ms();
    t = run_phase(&g, P_IDLE, &req);
    double cpu_rt = cpu_ms(pid) - cpu0, loop_rt = loop_cpu_ms(pid) - loop0,
           self_rt = self_cpu_ms() - self0;
    double rt_rate = (double)g.devices / t, mdm_rps = (double)req / t;
    int rt_errors = g.errors;
    long rss_after = rss_kib(pid);
    g.errors = 0;
    /* The ceiling: the same generator, connections and request count, on
     * /healthz, repeated until it has run at least as long as the check-ins
     * and at least HEALTH_MIN_S (at most HEALTH_MAX_REPS times): one pass
     * lasts well under a second, and its rate moved 4x between identical
     * runs on a shared machine. */
    int saved = g.devices;
    g.devices = (int)req;
    long hreq = 0;
    double th = 0;
    int reps = 0;
    cpu0 = cpu_ms(pid);
    loop0 = loop_cpu_ms(pid);
    self0 = self_cpu_ms();
    while (reps < HEALTH_MAX_REPS && (th < t || th < HEALTH_MIN_S)) {
        long n = 0;
        th += run_phase(&g, P_HEALTH, &n);
        hreq += n;
        reps++;
    }
    double cpu_h = cpu_ms(pid) - cpu0, loop_h = loop_cpu_ms(pid) - loop0,
           self_h = self_cpu_ms() - self0;
    g.devices = saved;
    double h_rps = (double)hreq / th;
    printf("round trips: %d (Idle -> command -> Acknowledged -> empty) in %.2f s = %.0f round "
           "trips/s, "
           "%.0f requests/s (errors %d)\n",
           g.devices, t, rt_rate, mdm_rps, rt_errors);
    printf("ceiling:     %ld GET /healthz in %.2f s (%d passes) = %.0f requests/s (errors %d)\n",
           hreq, th, reps, h_rps, g.errors);
    printf("ratio:       check-in requests/s / healthz requests/s = %.2f\n", mdm_rps / h_rps);
    if (cpu0 >= 0)
        printf("server CPU:  %.0f us per round trip (%.0f us per check-in request), %.0f us per "
               "/healthz\n",
               cpu_rt * 1000.0 / g.devices, cpu_rt * 1000.0 / (double)req,
               cpu_h * 1000.0 / (double)hreq);
    /* What bounds each phase: a process busy for the whole phase (share
     * near 1 on an idle machine) is the limit; neither near 1 is waiting
     * (the sync thread's fdatasync) or the machine's other load. */
    if (loop0 >= 0)
        printf("busy:        server loop %.0f%% / %.0f%% of the check-ins' / /healthz's wall time "
               "(its loop thread %.0f / %.0f us a request), generator %.0f%% / %.0f%% (%.0f / "
               "%.0f us a request)\n",
               loop_rt / 10.0 / t, loop_h / 10.0 / th, loop_rt * 1000.0 / (double)req,
               loop_h * 1000.0 / (double)hreq, self_rt / 10.0 / t, self_h / 10.0 / th,
               self_rt * 1000.0 / (double)req, self_h * 1000.0 / (double)hreq);
    if (rss0 > 0)
        printf("memory:      server RSS %ld KiB idle, %ld KiB after enrolment, %ld KiB after round "
               "trips: "
               "%.0f bytes per enrolled device\n",
               rss0, rss_enrolled, rss_after, (double)(rss_after - rss0) * 1024.0 / g.devices);
    for (int i = 0; i < g.conc; i++)
        evhttp_connection_free(g.slots[i].conn);
    free(g.slots);
    event_base_free(g.base);
    for (int i = 0; identities && i < g.devices; i++)
        esim_cert_clear(&identities[i]);
    free(identities);
    esim_cert_clear(&sign_ca);
    return rt_errors ? 1 : 0;
}
