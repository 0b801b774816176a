/*
 * campaign_http.h — the small HTTP/JSON client that `campaign`, `diagnose`,
 * `import` and `demo` use to talk to the admin API (and, for the demo and
 * diagnosis, to the simulators' JSON endpoints). CLI-only.
 */
#ifndef ESIM_CLI_CAMPAIGN_HTTP_H
#define ESIM_CLI_CAMPAIGN_HTTP_H

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

#include "core/esim.h"

typedef struct {
    char server[512];   /* "http://127.0.0.1:8080", no trailing slash */
    char token[512];    /* bearer token, may be empty */
    char ca_file[4096]; /* trust anchor for https, may be empty */
    void *curl;         /* reused between calls */
} chttp;

/* --server / $ESIM_MDM_SERVER / http://127.0.0.1:8080 and --token-file /
 * $ESIM_MDM_TOKEN_FILE / esim-mdm-data/api-token. Prints the problem and
 * returns false when the token file cannot be read. */
bool chttp_open_api(chttp *c, const char *server, const char *token_file);
/* A client for another endpoint (no token). */
void chttp_open_plain(chttp *c, const char *base_url, const char *ca_file);
void chttp_close(chttp *c);

/*
 * One request to c->server + |path|. |body| may be NULL. On a transport
 * failure returns ESIM_EUNAVAIL with |err| set; otherwise ESIM_OK with
 * *status and *out (parsed JSON, or NULL when the body is not JSON; the
 * caller decrefs).
 */
esim_err chttp_call(chttp *c, const char *method, const char *path, const char *content_type,
                    const void *body, size_t len, long *status, json_t **out, esim_error *err);

/* The API's {"error":{"message"}} of |reply|, or a fallback. */
const char *chttp_error_message(const json_t *reply);

/* Progress of a campaign (cmd_campaign.c): one status line drawn from a
 * GET /v1/campaigns/ID summary, and a loop that follows a campaign until it
 * is finished or canceled (max_s > 0: give up after that long). */
void campaign_progress_line(FILE *out, const json_t *summary, double elapsed_s, bool tty);
int campaign_follow(chttp *c, const char *id, double max_s, bool quiet, json_t **last);

#endif
