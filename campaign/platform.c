/*
 * platform.c — the registry of platform adapters (platform.h) and the
 * helpers they share.
 */
#include <stdlib.h>
#include <string.h>

#include "campaign/platform.h"

const campaign_platform *campaign_platform_get(uint8_t id)
{
    static const campaign_platform *const platforms[CAMPAIGN_PLATFORM_COUNT] = {
        [CAMPAIGN_PLATFORM_APPLE] = &campaign_platform_apple,
        [CAMPAIGN_PLATFORM_WINDOWS] = &campaign_platform_windows,
        [CAMPAIGN_PLATFORM_IOT] = &campaign_platform_iot,
    };
    return id < CAMPAIGN_PLATFORM_COUNT ? platforms[id] : NULL;
}

campaign_platform_id campaign_platform_named(const char *platform)
{
    if (platform && strcmp(platform, "windows") == 0)
        return CAMPAIGN_PLATFORM_WINDOWS;
    if (platform && strcmp(platform, "iot") == 0)
        return CAMPAIGN_PLATFORM_IOT;
    return CAMPAIGN_PLATFORM_APPLE;
}

campaign_platform_id campaign_platform_of_result(const esim_service_result *r)
{
    if (r->platform && strcmp(r->platform, "windows") == 0)
        return CAMPAIGN_PLATFORM_WINDOWS;
    if (r->platform && strcmp(r->platform, "iot") == 0)
        return CAMPAIGN_PLATFORM_IOT;
    return r->msg ? CAMPAIGN_PLATFORM_APPLE : CAMPAIGN_PLATFORM_COUNT;
}

void campaign_command_free(campaign_command *cmd)
{
    if (!cmd)
        return;
    esim_buf_free(&cmd->body);
    memset(cmd, 0, sizeof *cmd);
}

void campaign_reading_free(campaign_reading *r)
{
    if (!r)
        return;
    free(r->subs);
    memset(r, 0, sizeof *r);
}

void campaign_platform_host_of(const char *url, char *out, size_t out_len)
{
    out[0] = '\0';
    if (!url)
        return;
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t n = strcspn(p, "/?#");
    if (n < out_len) {
        memcpy(out, p, n);
        out[n] = '\0';
    }
}
