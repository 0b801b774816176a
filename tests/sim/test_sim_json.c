/*
 * test_sim_json.c — sim_json_loadb (sim/json_fast.c) gives what jansson's
 * json_loadb gives: on hand-picked inputs at the edges of its plain subset
 * and on thousands of mutations of real ES9+ bodies, the two parse to
 * equal values (dumped the same, key order included) or both fail; and the
 * one pass does take the bodies the SM-DP+ receives. sim_json_dump writes
 * what json_dumps(JSON_COMPACT) writes, byte for byte, for each of them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sim/sim_internal.h"

/* sim_json_dump and json_dumps write the same bytes for |j|. */
static void same_dump(const json_t *j)
{
    char *want = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    esim_buf got = {0};
    assert_non_null(want);
    assert_int_equal(sim_json_dump(j, &got), ESIM_OK);
    assert_int_equal(got.len, strlen(want));
    assert_memory_equal(got.data, want, got.len);
    esim_buf_free(&got);
    free(want);
}

/* Both parsers on |buf|: the same answer. */
static void same(const char *buf, size_t len)
{
    json_t *a = sim_json_loadb(buf, len), *b = json_loadb(buf, len, 0, NULL);
    json_t *plain = sim_json_loadb_plain(buf, len);
    if (!b) {
        assert_null(a);
        assert_null(plain);
        return;
    }
    assert_non_null(a);
    assert_true(json_equal(a, b));
    if (json_is_object(b))
        same_dump(b);
    char *da = json_dumps(a, JSON_COMPACT | JSON_PRESERVE_ORDER);
    char *db = json_dumps(b, JSON_COMPACT | JSON_PRESERVE_ORDER);
    assert_string_equal(da, db);
    if (plain) {
        char *dp = json_dumps(plain, JSON_COMPACT | JSON_PRESERVE_ORDER);
        assert_string_equal(dp, db);
        free(dp);
    }
    free(da);
    free(db);
    json_decref(a);
    json_decref(b);
    json_decref(plain);
}

static void same_str(const char *s)
{
    same(s, strlen(s));
}

static const char *const BODIES[] = {
    "{\"transactionId\":\"0A1B2C3D4E5F60718293A4B5C6D7E8F9\",\"authenticateServerResponse\":"
    "{\"euiccSigned1\":\"eyJ0cmFuc2FjdGlvbklkIjoiMEExQiJ9\",\"euiccSignature1\":"
    "\"q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEg==\","
    "\"euiccCertificate\":\"MIIB5jCCAY2gAwIBAgIBATAKBggqhkjOPQQDAjA=\",\"eumCertificate\":"
    "\"MIICAzCCAaqgAwIBAgIBAjAKBggqhkjOPQQDAjA=\"}}",
    "{\"euiccChallenge\":\"AAECAwQFBgcICQoLDA0ODw==\",\"euiccInfo1\":\"vyAA\",\"smdpAddress\":"
    "\"127.0.0.1:8443\"}",
    "{\"seqNumber\":12,\"event\":\"install\",\"iccid\":\"8944500102198304826\","
    "\"notificationAddress\":\"127.0.0.1:8443\",\"result\":\"ok\"}",
    " { \"a\" : [ 1 , 0 , true , false , null , { } , [ ] , \"\" ] ,\n\t\"b\" : "
    "{\"c\":{\"d\":[[]]}} } ",
};

static void test_edges(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "{}",
        "[]",
        "{\"a\":1}",
        "{\"a\":1,}",
        "{\"a\":1 \"b\":2}",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":01}",
        "{\"a\":0}",
        "{\"a\":-1}",
        "{\"a\":-0}",
        "{\"a\":1.5}",
        "{\"a\":1e3}",
        "{\"a\":1E3}",
        "{\"a\":123456789012345678}",
        "{\"a\":1234567890123456789}",
        "{\"a\":99999999999999999999}",
        "{\"a\":truex}",
        "{\"a\":tru}",
        "{\"a\":nul}",
        "{\"a\":\"x\\\"y\"}",
        "{\"a\":\"\\u00e9\"}",
        "{\"a\":\"\xc3\xa9\"}",
        "{\"a\":\"\xff\"}",
        "{\"a\":\"tab\there\"}",
        "{\"a\":\"del\x7f\"}",
        "{\"a\":1}x",
        "{\"a\":1}   ",
        "  {\"a\":1}",
        "{\"a\":1,\"a\":2}",
        "{\"a\":1,\"b\":2,\"a\":3}",
        "{\"\":1}",
        "{\"a\":\"unterminated}",
        "{\"a\":[1,2,]}",
        "{\"a\":[,]}",
        "{\"a\":{\"b\":}}",
        "{\"a\"::1}",
        "{,}",
        "{",
        "}",
        "",
        "   ",
        "\"str\"",
        "1",
        "true",
        "null",
        "[{\"a\":1}]",
        "{\"a\":[1 2]}",
        "{\"a\":nulll}",
        "{\"a\":\"\"}",
        "{'a':1}",
        "{a:1}",
        "{\"a\":1}\n",
        "{\"a\":1}\v",
        "{\"a\":NaN}",
        "{\"a\":Infinity}",
        "{\"a\":+1}",
        "{\"a\":.5}",
        "{\"a\":0x10}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        same_str(cases[i]);
    /* A NUL inside a string and outside. */
    same("{\"a\":\"x\0y\"}", 11);
    same("{\"a\":1}\0", 8);
    /* Nesting around the one pass's depth bound, both sides of it. */
    for (int depth = 30; depth <= 34; depth++) {
        char buf[256];
        size_t n = 0;
        for (int k = 0; k < depth; k++)
            n += (size_t)snprintf(buf + n, sizeof buf - n, "{\"k\":");
        buf[n++] = '1';
        for (int k = 0; k < depth; k++)
            buf[n++] = '}';
        same(buf, n);
    }
    /* A key longer than the one pass's buffer. */
    char big[600];
    memset(big, 'k', sizeof big);
    big[0] = '{';
    big[1] = '"';
    memcpy(big + sizeof big - 5, "\":1}", 4);
    same(big, sizeof big - 1);
}

/* Values the one-pass dump leaves to json_dumps (escapes, UTF-8, reals, a
 * key with a NUL in it) and values it writes itself. */
static void test_dump(void **state)
{
    (void)state;
    json_t *o = json_pack("{s:s, s:i, s:b, s:n, s:[i, s, {}], s:{}}", "a", "plain", "n", -42, "t",
                          1, "z", "l", 7, "x", "m", "e");
    assert_non_null(o);
    esim_buf b = {0};
    assert_true(sim_json_dump_plain(o, &b));
    same_dump(o);
    static const char *const odd[] = {"q\"uote", "back\\slash", "tab\t", "\xc3\xa9t\xc3\xa9",
                                      "nul",     "del\x7f",     "/slash"};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        json_object_set_new(o, "v", json_string(odd[i]));
        same_dump(o);
        json_t *k = json_object();
        json_object_set_new(k, odd[i], json_true());
        same_dump(k);
        json_decref(k);
    }
    json_object_set_new(o, "v", json_stringn("a\0b", 3));
    same_dump(o);
    assert_false(sim_json_dump_plain(o, &b));
    json_object_set_new(o, "v", json_real(1.5));
    same_dump(o);
    assert_false(sim_json_dump_plain(o, &b));
    json_object_del(o, "v");
#if JANSSON_VERSION_HEX >= 0x020e00
    json_object_setn_new(o, "k\0ey", 4, json_integer(1));
    same_dump(o);
    assert_false(sim_json_dump_plain(o, &b));
#endif
    esim_buf_free(&b);
    json_decref(o);
}

/* sim_json_set_b64 (its string made without jansson's UTF-8 check): the
 * same string json_string makes of the same base64, of the full length,
 * and sim_json_b64 reads the bytes back. */
static void test_set_b64(void **state)
{
    (void)state;
    unsigned char bytes[70];
    for (size_t i = 0; i < sizeof bytes; i++)
        bytes[i] = (unsigned char)(i * 37 + 200);
    for (size_t n = 0; n <= sizeof bytes; n++) {
        json_t *o = json_object();
        assert_int_equal(sim_json_set_b64(o, "k", bytes, n), ESIM_OK);
        esim_buf want = {0}, back = {0};
        assert_int_equal(esim_base64_encode(bytes, n, &want), ESIM_OK);
        json_t *w = json_string(want.data ? (const char *)want.data : "");
        assert_true(json_equal(json_object_get(o, "k"), w));
        assert_int_equal(json_string_length(json_object_get(o, "k")), want.len);
        if (n > 0) {
            assert_int_equal(sim_json_b64(o, "k", &back, NULL), ESIM_OK);
            assert_int_equal(back.len, n);
            assert_memory_equal(back.data, bytes, n);
        }
        json_decref(w);
        json_decref(o);
        esim_buf_free(&want);
        esim_buf_free(&back);
    }
}

/* The bodies the SM-DP+ receives are read by the one pass. */
static void test_es9_bodies_take_the_one_pass(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof BODIES / sizeof BODIES[0]; i++) {
        json_t *o = sim_json_loadb_plain(BODIES[i], strlen(BODIES[i]));
        assert_non_null(o);
        json_decref(o);
        same_str(BODIES[i]);
    }
}

static uint64_t rng = 0x9e3779b97f4a7c15u;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Mutations of real bodies: bytes changed (often to JSON's own
 * punctuation), removed, inserted, the input cut short. */
static void test_mutations_agree_with_jansson(void **state)
{
    (void)state;
    static const char alphabet[] = "{}[]:,\"\\ 0123456789-.eEtrufalsn\t\n\x01\x7f\x80\xc3\xa9";
    char buf[1024];
    for (int round = 0; round < 40000; round++) {
        const char *src = BODIES[next() % (sizeof BODIES / sizeof BODIES[0])];
        size_t n = strlen(src);
        memcpy(buf, src, n);
        int edits = 1 + (int)(next() % 3);
        for (int k = 0; k < edits && n > 0; k++) {
            size_t at = (size_t)(next() % n);
            char c = alphabet[next() % (sizeof alphabet - 1)];
            switch (next() % 4) {
            case 0:
                buf[at] = c;
                break;
            case 1:
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
                break;
            case 2:
                if (n + 1 < sizeof buf) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = c;
                    n++;
                }
                break;
            default:
                n = at;
                break;
            }
        }
        same(buf, n);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edges),
        cmocka_unit_test(test_dump),
        cmocka_unit_test(test_set_b64),
        cmocka_unit_test(test_es9_bodies_take_the_one_pass),
        cmocka_unit_test(test_mutations_agree_with_jansson),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
