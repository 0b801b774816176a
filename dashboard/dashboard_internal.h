/*
 * dashboard_internal.h — shared by the files of dashboard/ only.
 */
#ifndef ESIM_DASHBOARD_INTERNAL_H
#define ESIM_DASHBOARD_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "dashboard/dashboard.h"

/* One embedded file of dashboard/web/ (dashboard_assets.c, generated). */
typedef struct {
    const char *name, *content_type;
    const unsigned char *data;
    size_t len;
} dash_asset;
extern const dash_asset dash_assets[]; /* ends with a NULL name */

typedef struct dashboard dashboard;

/* The JSON endpoints under /v1/dashboard/ (dashboard_api.c). */
esim_err dash_api_add_routes(dashboard *d, esim_service *svc, esim_error *err);
/* The cached fleet counts (dashboard_api.c), freed with the dashboard.
 * |lock| guards the rest: the route runs on store pool workers. */
typedef struct {
    pthread_mutex_t lock;
    json_t *json;
    int64_t at_ms, took_ms;
} dash_fleet_cache;
dash_fleet_cache *dash_fleet_cache_of(dashboard *d);

/* "ios", "ipados", "macos", "tvos", "windows" or "other": the device
 * record's platform ("windows"), else what an Apple device said at
 * enrolment (its product name or model). */
const char *dash_platform(const char *platform, const char *product_name, const char *model);

#endif
