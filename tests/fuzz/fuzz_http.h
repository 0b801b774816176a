/*
 * fuzz_http.h — for fuzz targets that drive a real server (the service, the
 * SM-DP+ simulator) inside the fuzzing process: one libcurl client whose
 * transfers are stepped together with the server's event loop, keeping its
 * connection (and TLS session) between inputs.
 */
#ifndef ESIM_TESTS_FUZZ_HTTP_H
#define ESIM_TESTS_FUZZ_HTTP_H

#include <stddef.h>

#include "core/esim.h"

struct event_base;

/* Sets up the client on |base| (the server's loop); |ca_file| NULL for http. */
void fuzz_http_init(struct event_base *base, const char *ca_file);

/* Sends one request and runs the loop until the answer is in; returns the
 * HTTP status, 0 when no answer came (the caller decides if that is a finding). */
long fuzz_http_send(const char *method, const char *url, const char *content_type,
                    const char *bearer, const void *body, size_t len, esim_buf *reply);

#endif
