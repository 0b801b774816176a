/*
 * campaign_http.h — following a campaign from the command line: the status
 * line and the loop behind `campaign status --watch`, `campaign create
 * --wait` and the demo's progress bar (cmd_campaign.c).
 */
#ifndef ESIM_CLI_CAMPAIGN_HTTP_H
#define ESIM_CLI_CAMPAIGN_HTTP_H

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

#include "cli/http_client.h"

/* Progress of a campaign (cmd_campaign.c): one status line drawn from a
 * GET /v1/campaigns/ID summary, and a loop that follows a campaign until it
 * is finished or canceled (max_s > 0: give up after that long). */
void campaign_progress_line(FILE *out, const json_t *summary, double elapsed_s, int columns);
int campaign_follow(chttp *c, const char *id, double max_s, bool quiet, json_t **last);

#endif
