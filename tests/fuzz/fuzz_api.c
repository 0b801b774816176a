/*
 * fuzz_api.c — the admin API's request bodies, through the real service:
 * a service (with the campaign layer attached) runs inside the fuzzing
 * process on a loopback port, and each input becomes one authorised
 * request. The first byte picks the endpoint (campaign create, enqueue by
 * JSON and raw plist, groups, tags, CSV imports); the rest is the body.
 * A crash, a sanitizer report, a request left without an answer, or a 500
 * that is not "the store failed" is a finding.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "campaign/campaign.h"
#include "fuzz_dir.h"
#include "fuzz_http.h"
#include "service/service.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TOKEN "fuzz-api-token"

static struct {
    struct event_base *base;
    esim_service *svc;
    char dir[64];
    char url[128];
} g;

static void teardown(void)
{
    esim_service_free(g.svc);
    event_base_free(g.base);
    fuzz_dir_remove(g.dir);
}

static void setup(void)
{
    snprintf(g.dir, sizeof g.dir, "/tmp/esim-fuzz-api-XXXXXX");
    if (!mkdtemp(g.dir))
        abort();
    g.base = event_base_new();
    esim_service_config cfg;
    esim_service_config_init(&cfg);
    cfg.listen = "127.0.0.1:0";
    cfg.data_dir = g.dir;
    cfg.api_token = TOKEN;
    cfg.device_auth = ESIM_DEVICE_AUTH_NONE;
    cfg.store_sync = STORE_SYNC_NORMAL;
    esim_error err = {{0}};
    if (!g.base || esim_service_new(g.base, &cfg, &g.svc, &err) != ESIM_OK ||
        esim_campaigns_attach(g.svc, g.dir, &err) != ESIM_OK) {
        fprintf(stderr, "fuzz_api: %s\n", err.msg);
        abort();
    }
    snprintf(g.url, sizeof g.url, "%s", esim_service_url(g.svc));
    fuzz_http_init(g.base, NULL);
    atexit(teardown);
}

static const struct {
    const char *method, *path, *type;
} routes[] = {
    {"POST", "/v1/campaigns", "application/json"},
    {"POST", "/v1/commands", "application/json"},
    {"PUT", "/v1/enqueue/00008030-001A2B3C4D5E6F70", "application/x-apple-aspen-mdm"},
    {"POST", "/v1/groups", "application/json"},
    {"POST", "/v1/groups/fleet-a/members", "application/json"},
    {"POST", "/v1/devices/00008030-001A2B3C4D5E6F70/tags", "application/json"},
    {"POST", "/v1/import/eids", "text/csv"},
    {"POST", "/v1/import/activation-codes", "text/csv"},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g.svc)
        setup();
    if (size == 0)
        return 0;
    size_t r = data[0] % (sizeof routes / sizeof routes[0]);
    char url[256];
    snprintf(url, sizeof url, "%s%s", g.url, routes[r].path);
    esim_buf reply = {0};
    long status =
        fuzz_http_send(routes[r].method, url, routes[r].type, TOKEN, data + 1, size - 1, &reply);
    if (status == 0) {
        fprintf(stderr, "fuzz_api: %s %s got no answer\n", routes[r].method, routes[r].path);
        abort();
    }
    if (status >= 500 && status != 503) {
        fprintf(stderr, "fuzz_api: %s %s answered %ld: %.*s\n", routes[r].method, routes[r].path,
                status, (int)(reply.len > 300 ? 300 : reply.len), (const char *)reply.data);
        if (getenv("FUZZ_API_500_IS_FINDING"))
            abort();
    }
    esim_buf_free(&reply);
    return 0;
}
