/*
 * dashboard.h — the browser dashboard served by the service (docs/dashboard.md):
 * pages and scripts embedded in the binary, a log-in that exchanges an API
 * key for a session cookie, and the few read endpoints the pages need
 * beyond the admin API (/v1/dashboard/...). Everything the pages do goes
 * through the admin API with the role of the key that logged in.
 */
#ifndef ESIM_DASHBOARD_H
#define ESIM_DASHBOARD_H

#include "core/esim.h"
#include "service/service.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Serves the dashboard from |svc| (at /dashboard/; / redirects there):
 * call after esim_service_new, before the loop runs. Sessions live in
 * memory: a restart logs everyone out. Freed with the service.
 *   ESIM_EINVAL  NULL service;  ESIM_ENOMEM;  ESIM_EEXIST  attached already. */
ESIM_EXTERN esim_err esim_dashboard_attach(esim_service *svc, esim_error *err);

#ifdef __cplusplus
}
#endif
#endif
