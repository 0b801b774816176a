/*
 * The service's TLS session table (service/tls_session.h) on its own: what
 * goes in comes out under its ID, expired sessions are not given, and the
 * table never holds more than its bound, the oldest going first.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "service/tls_session.h"

static void id_of(unsigned n, unsigned char id[32])
{
    memset(id, 0, 32);
    for (int i = 0; i < 4; i++)
        id[i] = (unsigned char)(n >> (8 * i));
    id[31] = 0x5a;
}

static void test_put_get_remove(void **state)
{
    (void)state;
    tls_sessions *t = tls_sessions_new(8);
    assert_non_null(t);
    unsigned char id[32], other[32];
    id_of(1, id);
    id_of(2, other);
    size_t len = 0;
    assert_null(tls_sessions_get(t, id, 32, 0, &len));
    assert_true(tls_sessions_put(t, id, 32, (const unsigned char *)"first", 5, 100, 0));
    const unsigned char *der = tls_sessions_get(t, id, 32, 50, &len);
    assert_non_null(der);
    assert_int_equal(len, 5);
    assert_memory_equal(der, "first", 5);
    /* Another ID, a shorter ID with the same first bytes: not that one. */
    assert_null(tls_sessions_get(t, other, 32, 50, &len));
    assert_null(tls_sessions_get(t, id, 16, 50, &len));
    /* Replaced under the same ID, still one session. */
    assert_true(tls_sessions_put(t, id, 32, (const unsigned char *)"second", 6, 100, 0));
    assert_int_equal(tls_sessions_count(t), 1);
    der = tls_sessions_get(t, id, 32, 50, &len);
    assert_int_equal(len, 6);
    assert_memory_equal(der, "second", 6);
    /* Expired: not given, and gone at the next put. */
    assert_null(tls_sessions_get(t, id, 32, 100, &len));
    assert_true(tls_sessions_put(t, other, 32, (const unsigned char *)"x", 1, 300, 200));
    assert_int_equal(tls_sessions_count(t), 1);
    tls_sessions_remove(t, other, 32);
    assert_int_equal(tls_sessions_count(t), 0);
    assert_null(tls_sessions_get(t, other, 32, 200, &len));
    /* Unusable input changes nothing. */
    assert_false(tls_sessions_put(t, id, 0, (const unsigned char *)"x", 1, 300, 200));
    assert_false(tls_sessions_put(t, id, 33, (const unsigned char *)"x", 1, 300, 200));
    assert_false(tls_sessions_put(t, id, 32, (const unsigned char *)"x", 0, 300, 200));
    assert_int_equal(tls_sessions_count(t), 0);
    tls_sessions_free(t);
}

/* Far more sessions than the bound: the count stays at the bound, the
 * newest are all there, the oldest are gone. */
static void test_bounded(void **state)
{
    (void)state;
    enum { MAX = 1000, PUT = 25000 };
    tls_sessions *t = tls_sessions_new(MAX);
    assert_non_null(t);
    unsigned char id[32];
    for (unsigned i = 0; i < PUT; i++) {
        id_of(i, id);
        assert_true(tls_sessions_put(t, id, 32, id, 32, 1000000 + i, i));
        assert_true(tls_sessions_count(t) <= MAX);
    }
    assert_int_equal(tls_sessions_count(t), MAX);
    size_t len = 0;
    for (unsigned i = 0; i < PUT; i++) {
        id_of(i, id);
        const unsigned char *der = tls_sessions_get(t, id, 32, PUT, &len);
        if (i < PUT - MAX) {
            assert_null(der);
        } else {
            assert_non_null(der);
            assert_memory_equal(der, id, 32);
        }
    }
    tls_sessions_clear(t);
    assert_int_equal(tls_sessions_count(t), 0);
    id_of(7, id);
    assert_null(tls_sessions_get(t, id, 32, 0, &len));
    tls_sessions_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_remove),
        cmocka_unit_test(test_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
