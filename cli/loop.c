/*
 * loop.c — the event loop every long-running subcommand runs on (serve,
 * devsim, smdp, the APNs and WNS mocks, push).
 *
 * On Linux libevent's epoll backend makes one epoll_ctl call per change of
 * an event's interest, at once. A TLS bufferevent turns its read and write
 * interest on and off several times around every request, often within one
 * pass of the loop, so most of those calls undo each other. With
 * EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST the changes wait in a list until the
 * loop is about to wait and only the net change per descriptor reaches the
 * kernel (issue 17: in a 2,000-device demo the service made 49 epoll_ctl
 * calls per device and the SM-DP+ 25; with the list 29 and 12). libevent's
 * one caveat for the list is a descriptor shared with dup(): none of ours
 * is. A descriptor closed and its number reused within one pass is
 * handled (MOD on an unknown descriptor is retried as ADD).
 */
#include "cli/cli.h"

#include <event2/event.h>

struct event_base *cli_event_base_new(void)
{
    struct event_config *cfg = event_config_new();
    if (!cfg)
        return NULL;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
}
