/*
 * http_client.h — the small HTTP/JSON client every admin command uses to
 * talk to the service's API (enqueue, status, devices, cancel, campaign,
 * diagnose, import, demo), and the demo to the simulators' JSON endpoints.
 * CLI-only: the libraries never make these calls.
 */
#ifndef ESIM_CLI_HTTP_CLIENT_H
#define ESIM_CLI_HTTP_CLIENT_H

#include <stdbool.h>

#include <jansson.h>

#include "core/esim.h"

typedef struct {
    char server[512];   /* "http://127.0.0.1:8080", no trailing slash */
    char token[512];    /* bearer token, may be empty */
    char ca_file[4096]; /* trust anchor for https, may be empty */
    void *curl;         /* reused between calls */
} chttp;

/* --server / $ESIM_MDM_SERVER / http://127.0.0.1:8080 and --token-file /
 * $ESIM_MDM_TOKEN_FILE / esim-mdm-data/api-token; the CA from the
 * environment (chttp_set_ca). Prints the problem and
 * returns false when the token file cannot be read. */
bool chttp_open_api(chttp *c, const char *server, const char *token_file);
/* The CA an https:// service is checked against: |ca_file| (--cacert), or
 * when NULL the first of $ESIM_MDM_CACERT, $CURL_CA_BUNDLE, $SSL_CERT_FILE,
 * or else the system's trust store. chttp_open_api does the NULL form. */
void chttp_set_ca(chttp *c, const char *ca_file);
/* A client for another endpoint (no token). */
void chttp_open_plain(chttp *c, const char *base_url, const char *ca_file);
void chttp_close(chttp *c);

/*
 * One request to c->server + |path|. |body| may be NULL. On a transport
 * failure returns ESIM_EUNAVAIL with |err| set; otherwise ESIM_OK with
 * *status and *reply (the body as received; replaced, caller frees).
 *
 * A 503 with Retry-After (the service's store could not commit, or it was
 * at its connection limit: nothing of the request was kept) is sent again
 * after that many seconds (at most CHTTP_RETRY_AFTER_MAX), up to
 * CHTTP_TRIES_503 attempts in all, each wait said on standard error; the
 * last answer is returned. A 503 without Retry-After is returned at once.
 */
#define CHTTP_TRIES_503 4
#define CHTTP_RETRY_AFTER_MAX 10
esim_err chttp_request(chttp *c, const char *method, const char *path, const char *content_type,
                       const void *body, size_t len, long *status, esim_buf *reply,
                       esim_error *err);

/* chttp_request with the reply parsed: *out is the JSON, or NULL when the
 * body is not JSON (the caller decrefs). */
esim_err chttp_call(chttp *c, const char *method, const char *path, const char *content_type,
                    const void *body, size_t len, long *status, json_t **out, esim_error *err);

/* The API's {"error":{"message"}} of |reply|, or a fallback. */
const char *chttp_error_message(const json_t *reply);

#endif
