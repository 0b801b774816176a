/*
 * test_cli_loop.c — cli/loop.c: the subcommands' event loop batches its
 * epoll changes per loop pass (libevent's changelist), and a descriptor
 * closed and its number reused within one pass still gets its events.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "cli/cli.h"

static void test_changes_batched(void **state)
{
    (void)state;
    struct event_base *base = cli_event_base_new();
    assert_non_null(base);
    /* libevent names the epoll backend that keeps a change list so. */
    assert_string_equal(event_base_get_method(base), "epoll (with changelist)");
    event_base_free(base);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    char c;
    if (read(fd, &c, 1) == 1)
        ++*(int *)arg;
}

static void on_bound(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

/* A connection closed and the next one given the same descriptor number
 * before the loop waits again: the kernel dropped the old registration at
 * the close, and the list's net change for that number must still reach
 * the new socket. */
static void test_reused_descriptor(void **state)
{
    (void)state;
    struct event_base *base = cli_event_base_new();
    assert_non_null(base);
    int a[2], b[2], got_a = 0, got_b = 0;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    struct event *ea = event_new(base, a[0], EV_READ | EV_PERSIST, on_read, &got_a);
    assert_non_null(ea);
    assert_int_equal(event_add(ea, NULL), 0);
    assert_int_equal(event_base_loop(base, EVLOOP_NONBLOCK), 0); /* registered, nothing ready */

    event_del(ea);
    close(a[0]);
    close(a[1]);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    assert_int_equal(b[0], a[0]); /* the lowest free number: the same */
    struct event *eb = event_new(base, b[0], EV_READ | EV_PERSIST, on_read, &got_b);
    assert_non_null(eb);
    assert_int_equal(event_add(eb, NULL), 0);
    assert_int_equal(write(b[1], "x", 1), 1);
    /* A bound on the wait, not an assertion on time. */
    struct event *bound = evtimer_new(base, on_bound, base);
    struct timeval tv = {10, 0};
    evtimer_add(bound, &tv);
    while (got_b == 0 && event_base_loop(base, EVLOOP_ONCE) == 0 && !event_base_got_break(base))
        ;
    assert_int_equal(got_b, 1);
    assert_int_equal(got_a, 0);
    event_free(bound);
    event_free(eb);
    event_free(ea);
    close(b[0]);
    close(b[1]);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_changes_batched),
        cmocka_unit_test(test_reused_descriptor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
