/*
 * test_p256.c — core/p256.c's ECDSA P-256 verification against OpenSSL's
 * (EVP_PKEY_verify) on the same keys, digests and signatures: thousands of
 * valid signatures by many keys, every kind of tampering (bits of r, s,
 * the digest, the key), r or s zero or at least n, high s, short r and s,
 * digests longer and shorter than 32 bytes, R.x in [n, p), points off the
 * curve, and DER encodings OpenSSL refuses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/rand.h>

#include "core/p256.h"
#include "core/p256_cache.h"

/* OpenSSL's answer: 1 verified, 0 not (a key it refuses verifies nothing). */
static int theirs(const unsigned char point[65], const unsigned char *digest, size_t dlen,
                  const unsigned char *sig, size_t slen)
{
    EVP_PKEY_CTX *mk = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"prime256v1", 0),
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)point, 65),
        OSSL_PARAM_construct_end()};
    EVP_PKEY *key = NULL;
    int ok = 0;
    if (mk && EVP_PKEY_fromdata_init(mk) == 1 &&
        EVP_PKEY_fromdata(mk, &key, EVP_PKEY_PUBLIC_KEY, params) == 1) {
        EVP_PKEY_CTX *v = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
        ok = v && EVP_PKEY_verify_init(v) == 1 && EVP_PKEY_verify(v, sig, slen, digest, dlen) == 1;
        EVP_PKEY_CTX_free(v);
    }
    EVP_PKEY_free(key);
    EVP_PKEY_CTX_free(mk);
    return ok;
}

static int mine(const unsigned char point[65], const unsigned char *digest, size_t dlen,
                const unsigned char *sig, size_t slen)
{
    esim_p256_key k;
    if (!esim_p256_key_init(&k, point))
        return 0;
    return esim_p256_verify_der(&k, digest, dlen, sig, slen);
}

static void new_key(EVP_PKEY **key, unsigned char point[65])
{
    *key = EVP_EC_gen("P-256");
    assert_non_null(*key);
    size_t len = 0;
    assert_int_equal(
        EVP_PKEY_get_octet_string_param(*key, OSSL_PKEY_PARAM_PUB_KEY, point, 65, &len), 1);
    assert_int_equal(len, 65);
}

static size_t sign(EVP_PKEY *key, const unsigned char *digest, size_t dlen, unsigned char *sig)
{
    size_t slen = 80;
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    assert_non_null(c);
    assert_int_equal(EVP_PKEY_sign_init(c), 1);
    assert_int_equal(EVP_PKEY_sign(c, sig, &slen, digest, dlen), 1);
    EVP_PKEY_CTX_free(c);
    return slen;
}

/* The DER of (r, s), any non-negative values. */
static size_t der_of(const BIGNUM *r, const BIGNUM *s, unsigned char *out, size_t cap)
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    assert_non_null(sig);
    assert_int_equal(ECDSA_SIG_set0(sig, BN_dup(r), BN_dup(s)), 1);
    unsigned char *der = NULL;
    int n = i2d_ECDSA_SIG(sig, &der);
    assert_true(n > 0 && (size_t)n <= cap);
    memcpy(out, der, (size_t)n);
    OPENSSL_free(der);
    ECDSA_SIG_free(sig);
    return (size_t)n;
}

static void parse(const unsigned char *sig, size_t slen, BIGNUM **r, BIGNUM **s)
{
    const unsigned char *p = sig;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)slen);
    assert_non_null(es);
    const BIGNUM *rr, *ss;
    ECDSA_SIG_get0(es, &rr, &ss);
    *r = BN_dup(rr);
    *s = BN_dup(ss);
    ECDSA_SIG_free(es);
}

static void test_agrees_with_openssl_on_random_signatures(void **state)
{
    (void)state;
    static const size_t lens[] = {32, 48, 64, 20, 28, 33, 31, 1};
    int valid = 0, short_rs = 0, total = 0;
    for (int ki = 0; ki < 48; ki++) {
        EVP_PKEY *key;
        unsigned char point[65];
        new_key(&key, point);
        esim_p256_key k;
        assert_true(esim_p256_key_init(&k, point));
        for (int m = 0; m < 40; m++) {
            unsigned char d[64], sig[80], t[80], dt[64];
            size_t dlen = lens[(ki + m) % 8];
            assert_int_equal(RAND_bytes(d, sizeof d), 1);
            size_t slen = sign(key, d, dlen, sig);
            short_rs += slen < 70;
            assert_int_equal(esim_p256_verify_der(&k, d, dlen, sig, slen), 1);
            assert_int_equal(theirs(point, d, dlen, sig, slen), 1);
            valid++;
            /* one flipped bit of the signature, of the digest */
            for (int f = 0; f < 4; f++) {
                memcpy(t, sig, slen);
                memcpy(dt, d, sizeof d);
                unsigned bit = (unsigned)rand();
                if (f < 2)
                    t[(bit / 8) % slen] ^= (unsigned char)(1u << bit % 8);
                else
                    dt[(bit / 8) % dlen] ^= (unsigned char)(1u << bit % 8);
                assert_int_equal(esim_p256_verify_der(&k, dt, dlen, t, slen),
                                 theirs(point, dt, dlen, t, slen));
                total++;
            }
            /* high s: (r, n - s) is a valid signature too */
            BIGNUM *r, *s;
            parse(sig, slen, &r, &s);
            BIGNUM *n = BN_bin2bn((const unsigned char[32]){0}, 32, NULL);
            unsigned char nb[32];
            esim_p256_ord_to_bytes(nb, esim_p256_ord_n);
            assert_non_null(BN_bin2bn(nb, 32, n));
            BIGNUM *hs = BN_new();
            assert_int_equal(BN_sub(hs, n, s), 1);
            size_t tl = der_of(r, hs, t, sizeof t);
            assert_int_equal(esim_p256_verify_der(&k, d, dlen, t, tl), 1);
            assert_int_equal(theirs(point, d, dlen, t, tl), 1);
            /* r + n, s + n: the same numbers modulo n, refused */
            BIGNUM *big = BN_new();
            assert_int_equal(BN_add(big, r, n), 1);
            tl = der_of(big, s, t, sizeof t);
            assert_int_equal(esim_p256_verify_der(&k, d, dlen, t, tl), 0);
            assert_int_equal(theirs(point, d, dlen, t, tl), 0);
            assert_int_equal(BN_add(big, s, n), 1);
            tl = der_of(r, big, t, sizeof t);
            assert_int_equal(esim_p256_verify_der(&k, d, dlen, t, tl), 0);
            assert_int_equal(theirs(point, d, dlen, t, tl), 0);
            BN_free(big);
            BN_free(hs);
            BN_free(n);
            BN_free(r);
            BN_free(s);
        }
        /* one flipped bit of the key: off the curve (refused) or another key */
        for (int f = 0; f < 8; f++) {
            unsigned char q[65], d[32], sig[80];
            memcpy(q, point, 65);
            unsigned bit = (unsigned)rand() % (64 * 8);
            q[1 + bit / 8] ^= (unsigned char)(1u << bit % 8);
            assert_int_equal(RAND_bytes(d, sizeof d), 1);
            size_t slen = sign(key, d, sizeof d, sig);
            esim_p256_key other;
            bool on = esim_p256_key_init(&other, q);
            assert_int_equal(mine(q, d, sizeof d, sig, slen), theirs(q, d, sizeof d, sig, slen));
            assert_int_equal(on ? esim_p256_verify_der(&other, d, sizeof d, sig, slen) : 0, 0);
        }
        EVP_PKEY_free(key);
    }
    assert_int_equal(valid, 48 * 40);
    assert_true(total > 7000);
    /* Some r or s below 2^247 (a shorter DER INTEGER): about one signature
     * in 256, so the loop above may have had none (seen 1 run in 30); more
     * signatures until one has, both verifications taking it. */
    EVP_PKEY *key;
    unsigned char point[65];
    new_key(&key, point);
    esim_p256_key k;
    assert_true(esim_p256_key_init(&k, point));
    for (int i = 0; i < 20000 && short_rs < 4; i++) {
        unsigned char d[32], sig[80];
        assert_int_equal(RAND_bytes(d, sizeof d), 1);
        size_t slen = sign(key, d, sizeof d, sig);
        if (slen >= 70)
            continue;
        short_rs++;
        assert_int_equal(esim_p256_verify_der(&k, d, sizeof d, sig, slen), 1);
        assert_int_equal(theirs(point, d, sizeof d, sig, slen), 1);
    }
    EVP_PKEY_free(key);
    assert_true(short_rs >= 4); /* some r or s had a leading zero byte */
}

static void test_refuses_out_of_range_r_and_s(void **state)
{
    (void)state;
    EVP_PKEY *key;
    unsigned char point[65], d[32];
    new_key(&key, point);
    esim_p256_key k;
    assert_true(esim_p256_key_init(&k, point));
    assert_int_equal(RAND_bytes(d, sizeof d), 1);
    unsigned char nb[32], rs[64];
    esim_p256_ord_to_bytes(nb, esim_p256_ord_n);
    BIGNUM *n = BN_bin2bn(nb, 32, NULL), *v[6];
    v[0] = BN_new();  /* 0 */
    v[1] = BN_dup(n); /* n */
    v[2] = BN_dup(n); /* n + 1 */
    v[3] = BN_dup(n); /* n - 1 */
    v[4] = BN_new();  /* 1 */
    v[5] = BN_new();  /* 2^256 - 1 */
    assert_int_equal(BN_add_word(v[2], 1), 1);
    assert_int_equal(BN_sub_word(v[3], 1), 1);
    assert_int_equal(BN_one(v[4]), 1);
    assert_int_equal(BN_set_bit(v[5], 256), 1);
    assert_int_equal(BN_sub_word(v[5], 1), 1);
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++) {
            unsigned char t[80];
            size_t tl = der_of(v[i], v[j], t, sizeof t);
            assert_int_equal(esim_p256_verify_der(&k, d, sizeof d, t, tl),
                             theirs(point, d, sizeof d, t, tl));
            assert_int_equal(esim_p256_verify_der(&k, d, sizeof d, t, tl), 0);
            assert_int_equal(BN_bn2binpad(v[i], rs, 32), 32);
            assert_int_equal(BN_bn2binpad(v[j], rs + 32, 32), 32);
            assert_int_equal(esim_p256_verify(&k, d, sizeof d, rs), 0);
        }
    for (int i = 0; i < 6; i++)
        BN_free(v[i]);
    BN_free(n);
    EVP_PKEY_free(key);
}

/* A key for which R = u1·G + u2·Q has R.x >= n, so that r = R.x - n: with
 * R a point of x in [n, p), r = R.x - n, any s and e, the key
 * Q = r⁻¹·(s·R - e·G) makes it so. Both verifications must take it. */
static void test_takes_r_from_x_above_n(void **state)
{
    (void)state;
    EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    BN_CTX *bn = BN_CTX_new();
    BIGNUM *p = BN_new(), *x = BN_new(), *r = BN_new(), *s = BN_new(), *e = BN_new();
    BIGNUM *ri = BN_new(), *a = BN_new(), *b = BN_new();
    EC_POINT *R = EC_POINT_new(g), *Q = EC_POINT_new(g);
    assert_non_null(g && bn && p && x && r && s && e && ri && a && b && R && Q);
    const BIGNUM *n = EC_GROUP_get0_order(g);
    assert_int_equal(EC_GROUP_get_curve(g, p, NULL, NULL, bn), 1);
    assert_int_equal(BN_copy(x, n) != NULL, 1);
    int found = 0;
    for (int i = 1; i < 200 && !found; i++) {
        assert_int_equal(BN_add_word(x, 1), 1);
        found = EC_POINT_set_compressed_coordinates(g, R, x, 0, bn) == 1;
    }
    ERR_clear_error();
    assert_true(found);
    assert_true(BN_cmp(x, p) < 0);
    assert_int_equal(BN_sub(r, x, n), 1);
    unsigned char d[32], point[65], sig[80];
    for (int round = 0; round < 8; round++) {
        assert_int_equal(RAND_bytes(d, sizeof d), 1);
        assert_non_null(BN_bin2bn(d, 32, e));
        assert_int_equal(BN_rand_range(s, n), 1);
        if (BN_is_zero(s))
            continue;
        /* Q = r⁻¹·s·R - r⁻¹·e·G */
        assert_non_null(BN_mod_inverse(ri, r, n, bn));
        assert_int_equal(BN_mod_mul(a, ri, s, n, bn), 1);
        assert_int_equal(BN_mod_mul(b, ri, e, n, bn), 1);
        assert_int_equal(BN_mod_sub(b, n, b, n, bn), 1); /* -r⁻¹·e */
        assert_int_equal(EC_POINT_mul(g, Q, b, R, a, bn), 1);
        assert_int_equal(EC_POINT_point2oct(g, Q, POINT_CONVERSION_UNCOMPRESSED, point, 65, bn),
                         65);
        size_t sl = der_of(r, s, sig, sizeof sig);
        assert_int_equal(theirs(point, d, sizeof d, sig, sl), 1);
        assert_int_equal(mine(point, d, sizeof d, sig, sl), 1);
        /* and r = R.x itself (not reduced) is refused by both: it is >= n */
        size_t sl2 = der_of(x, s, sig, sizeof sig);
        assert_int_equal(theirs(point, d, sizeof d, sig, sl2), 0);
        assert_int_equal(mine(point, d, sizeof d, sig, sl2), 0);
    }
    EC_POINT_free(R);
    EC_POINT_free(Q);
    BN_free(p);
    BN_free(x);
    BN_free(r);
    BN_free(s);
    BN_free(e);
    BN_free(ri);
    BN_free(a);
    BN_free(b);
    BN_CTX_free(bn);
    EC_GROUP_free(g);
}

static void test_refuses_points_off_the_curve(void **state)
{
    (void)state;
    EVP_PKEY *key;
    unsigned char point[65], q[65];
    new_key(&key, point);
    esim_p256_key k;
    memcpy(q, point, 65);
    q[0] = 0x02; /* compressed: not this reader's */
    assert_false(esim_p256_key_init(&k, q));
    memcpy(q, point, 65);
    q[64] ^= 1; /* y off by one: not on the curve */
    assert_false(esim_p256_key_init(&k, q));
    memset(q, 0, 65);
    q[0] = 0x04; /* (0, 0) */
    assert_false(esim_p256_key_init(&k, q));
    memset(q + 1, 0xff, 64); /* coordinates >= p */
    assert_false(esim_p256_key_init(&k, q));
    /* x + p for a valid x is >= p too: refused, not reduced */
    assert_true(esim_p256_key_init(&k, point));
    EVP_PKEY_free(key);
}

static void test_reads_der_as_openssl_does(void **state)
{
    (void)state;
    unsigned char rs[64];
    /* r = 1, s = 1 */
    assert_true(
        esim_p256_sig_from_der((const unsigned char *)"\x30\x06\x02\x01\x01\x02\x01\x01", 8, rs));
    assert_int_equal(rs[31], 1);
    assert_int_equal(rs[63], 1);
    static const struct {
        const char *der;
        size_t len;
    } bad[] = {
        {"\x30\x06\x02\x01\x01\x02\x01\x01\x00", 9},          /* trailing byte */
        {"\x30\x07\x02\x01\x01\x02\x01\x01", 8},              /* length past the end */
        {"\x30\x07\x02\x02\x00\x01\x02\x01\x01", 9},          /* needless leading zero */
        {"\x30\x06\x02\x01\x81\x02\x01\x01", 8},              /* negative r */
        {"\x30\x05\x02\x00\x02\x01\x01", 7},                  /* empty r */
        {"\x30\x81\x06\x02\x01\x01\x02\x01\x01", 9},          /* long-form length */
        {"\x31\x06\x02\x01\x01\x02\x01\x01", 8},              /* a SET */
        {"\x30\x06\x03\x01\x01\x02\x01\x01", 8},              /* a BIT STRING */
        {"\x30\x03\x02\x01\x01", 5},                          /* no s */
        {"\x30\x09\x02\x01\x01\x02\x01\x01\x02\x01\x01", 11}, /* a third INTEGER */
        {"", 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_false(esim_p256_sig_from_der((const unsigned char *)bad[i].der, bad[i].len, rs));
        const unsigned char *p = (const unsigned char *)bad[i].der;
        ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)bad[i].len);
        unsigned char *again = NULL;
        int n = sig ? i2d_ECDSA_SIG(sig, &again) : -1;
        /* OpenSSL's verification refuses it too: it does not read, or its
         * DER differs from the input */
        assert_true(!sig || n != (int)bad[i].len || memcmp(again, bad[i].der, bad[i].len) != 0);
        OPENSSL_free(again);
        ECDSA_SIG_free(sig);
    }
    ERR_clear_error();
    /* 33 bytes with its zero for a high first byte: read; 33 without: too big */
    unsigned char big[2 + 2 + 33 + 3] = {0x30, 2 + 33 + 3, 0x02, 33, 0x00, 0x80};
    big[37] = 0x02;
    big[38] = 0x01;
    big[39] = 0x01;
    assert_true(esim_p256_sig_from_der(big, sizeof big, rs));
    assert_int_equal(rs[0], 0x80);
    big[4] = 0x01;
    assert_false(esim_p256_sig_from_der(big, sizeof big, rs));
}

/* a·a⁻¹ = 1 modulo n: random a, and 1, 2, n-1, n-2, powers of two. */
static void test_order_inverse(void **state)
{
    (void)state;
    esim_p256_ord a, inv, prod;
    static const esim_p256_ord one = {1, 0, 0, 0};
    for (int i = 0; i < 3000; i++) {
        unsigned char b[32];
        if (i < 256) { /* 2^i */
            memset(b, 0, sizeof b);
            b[31 - i / 8] = (unsigned char)(1u << i % 8);
        } else {
            assert_int_equal(RAND_bytes(b, sizeof b), 1);
        }
        esim_p256_ord_from_bytes(a, b);
        esim_p256_ord_reduce_once(a);
        if (i == 256 || i == 257) { /* n - 1, n - 2 */
            memcpy(a, esim_p256_ord_n, sizeof a);
            a[0] -= (uint64_t)(i - 255);
        }
        if (esim_p256_ord_is_zero(a))
            continue;
        esim_p256_ord_inv_vartime(inv, a);
        assert_true(esim_p256_ord_below_n(inv));
        esim_p256_ord_mul(prod, a, inv);
        assert_memory_equal(prod, one, sizeof one);
    }
}

/* A Jacobian point (X, Z) = (x·λ², λ) for random λ gives back x, for
 * random x below p (any x: the function does not need the point's y) and
 * any blinding factor; Z = 0, X or Z not below p, or a factor ≡ 0 is
 * refused. */
static void test_affine_x(void **state)
{
    (void)state;
    BN_CTX *ctx = BN_CTX_new();
    BIGNUM *p = BN_new(), *x = BN_new(), *l = BN_new(), *bx = BN_new(), *t = BN_new();
    assert_non_null(ctx);
    assert_true(BN_hex2bn(&p, "FFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF") >
                0);
    unsigned char X[32], Z[32], want[32], got[32], blind[32];
    for (int i = 0; i < 500; i++) {
        assert_int_equal(BN_rand_range(x, p), 1);
        do
            assert_int_equal(BN_rand_range(l, p), 1);
        while (BN_is_zero(l));
        if (i == 0)
            BN_one(l); /* Z = 1: already affine */
        assert_int_equal(BN_mod_sqr(t, l, p, ctx), 1);
        assert_int_equal(BN_mod_mul(bx, x, t, p, ctx), 1);
        assert_int_equal(BN_bn2binpad(bx, X, 32), 32);
        assert_int_equal(BN_bn2binpad(l, Z, 32), 32);
        assert_int_equal(BN_bn2binpad(x, want, 32), 32);
        assert_int_equal(RAND_bytes(blind, sizeof blind), 1);
        if (i == 1)
            memset(blind, 0xff, sizeof blind); /* above p: taken modulo p */
        assert_true(esim_p256_affine_x(X, Z, blind, got));
        assert_memory_equal(got, want, 32);
    }
    memset(Z, 0, sizeof Z);
    assert_false(esim_p256_affine_x(X, Z, blind, got));
    assert_int_equal(BN_bn2binpad(p, Z, 32), 32);
    assert_false(esim_p256_affine_x(X, Z, blind, got)); /* Z = p */
    assert_false(esim_p256_affine_x(Z, X, blind, got)); /* X = p */
    assert_int_equal(BN_bn2binpad(l, Z, 32), 32);
    assert_int_equal(BN_bn2binpad(p, blind, 32), 32);
    assert_false(esim_p256_affine_x(X, Z, blind, got)); /* c = p ≡ 0 */
    BN_free(p);
    BN_free(x);
    BN_free(l);
    BN_free(bx);
    BN_free(t);
    BN_CTX_free(ctx);
}

/* ---- the cache of key tables (core/p256_cache.h) ---- */

#define CACHE_KEYS 7

typedef struct {
    EVP_PKEY *pkey;
    unsigned char point[65];
    unsigned char key[32]; /* the cache's key for it */
    unsigned char sig[80];
    size_t sig_len;
} cache_key;

static const unsigned char cache_digest[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9};

/* |k|'s table from |c| under |k|'s key: *built says whether it was made;
 * the table verifies |k|'s signature and no other key's. */
static void cache_get(esim_p256_cache *c, const cache_key *keys, int k, bool *built)
{
    const esim_p256_key *t = esim_p256_cache_get(c, keys[k].key, keys[k].point, built);
    assert_non_null(t);
    for (int j = 0; j < CACHE_KEYS; j++)
        assert_int_equal(esim_p256_verify_der(t, cache_digest, sizeof cache_digest, keys[j].sig,
                                              keys[j].sig_len),
                         j == k);
}

static bool cache_hit(esim_p256_cache *c, const cache_key *keys, int k)
{
    bool built = true;
    cache_get(c, keys, k, &built);
    return !built;
}

/* Sets of four by the key's first eight bytes, least recently used
 * replaced, every byte of the key compared, counts kept. */
static void test_cache_sets_and_lru(void **state)
{
    (void)state;
    cache_key keys[CACHE_KEYS];
    memset(keys, 0, sizeof keys);
    for (int i = 0; i < CACHE_KEYS; i++) {
        new_key(&keys[i].pkey, keys[i].point);
        keys[i].sig_len = sign(keys[i].pkey, cache_digest, sizeof cache_digest, keys[i].sig);
        /* Keys 0..5 fall in set 0 of two (first eight bytes 2i: even),
         * differing only in their last byte; key 6 in set 1. */
        keys[i].key[0] = (unsigned char)(i == 6 ? 1 : 2 * i);
        keys[i].key[31] = (unsigned char)i;
    }
    /* Key 5 has key 0's first 31 bytes: only the last tells them apart. */
    keys[5].key[0] = keys[0].key[0];

    assert_null(esim_p256_cache_new(SIZE_MAX));
    esim_p256_cache *c = esim_p256_cache_new(0);
    assert_int_equal(esim_p256_cache_slots(c), ESIM_P256_CACHE_WAYS);
    esim_p256_cache_free(c);
    c = esim_p256_cache_new(5); /* rounded up: two sets */
    assert_non_null(c);
    assert_int_equal(esim_p256_cache_slots(c), 8);

    /* Set 1's key, then set 0 filled: 0, 1, 2, 3. */
    assert_false(cache_hit(c, keys, 6));
    for (int i = 0; i < 4; i++)
        assert_false(cache_hit(c, keys, i));
    for (int i = 0; i < 4; i++)
        assert_true(cache_hit(c, keys, i));
    /* Used now, oldest first: 0, 1, 2, 3; 0 used again: 1, 2, 3, 0. */
    assert_true(cache_hit(c, keys, 0));
    /* Key 5 (key 0's bytes but the last) is not key 0's: made, in 1's
     * place, the least recently used. */
    assert_false(cache_hit(c, keys, 5)); /* 2, 3, 0, 5 */
    assert_true(cache_hit(c, keys, 0));  /* 2, 3, 5, 0 */
    assert_false(cache_hit(c, keys, 1)); /* 3, 5, 0, 1: 2 went */
    assert_true(cache_hit(c, keys, 3));  /* 5, 0, 1, 3 */
    assert_false(cache_hit(c, keys, 2)); /* 0, 1, 3, 2: 5 went */
    assert_true(cache_hit(c, keys, 0));  /* 1, 3, 2, 0 */
    assert_false(cache_hit(c, keys, 5)); /* 3, 2, 0, 5: 1 went */
    assert_true(cache_hit(c, keys, 2));
    assert_true(cache_hit(c, keys, 0));
    assert_false(cache_hit(c, keys, 1)); /* 3 went */
    assert_false(cache_hit(c, keys, 3)); /* 5 went */
    /* Set 1 kept its key through all of set 0's. */
    assert_true(cache_hit(c, keys, 6));

    /* A point off the curve makes no table: the least recently used
     * slot (2's) is left empty, and the next new key takes it before any
     * used slot. */
    unsigned char bad[65];
    memcpy(bad, keys[4].point, 65);
    bad[64] ^= 1;
    bool built = true;
    assert_null(esim_p256_cache_get(c, keys[4].key, bad, &built));
    assert_false(built);
    assert_false(cache_hit(c, keys, 4)); /* 0, 1, 3, 4 */
    assert_true(cache_hit(c, keys, 4));
    assert_true(cache_hit(c, keys, 0));
    assert_true(cache_hit(c, keys, 1));
    assert_true(cache_hit(c, keys, 3));
    assert_false(cache_hit(c, keys, 2)); /* 4 went */

    esim_p256_cache_counts n;
    esim_p256_cache_counts_of(c, &n);
    assert_int_equal(n.lookups, 29);
    assert_int_equal(n.builds, 13);
    assert_int_equal(n.hits, 15);
    esim_p256_cache_free(c);
    esim_p256_cache_free(NULL);
    for (int i = 0; i < CACHE_KEYS; i++)
        EVP_PKEY_free(keys[i].pkey);
}

/* A caller that gives a point under another point's key is given the
 * table kept under that key, which verifies the other key's signatures
 * and not its own: the key must name its point (p256_cache.h). This is
 * what a wrong table would do, so the test above would see one. */
static void test_cache_table_is_its_keys(void **state)
{
    (void)state;
    cache_key keys[2];
    memset(keys, 0, sizeof keys);
    for (int i = 0; i < 2; i++) {
        new_key(&keys[i].pkey, keys[i].point);
        keys[i].sig_len = sign(keys[i].pkey, cache_digest, sizeof cache_digest, keys[i].sig);
    }
    esim_p256_cache *c = esim_p256_cache_new(4);
    assert_non_null(c);
    const esim_p256_key *t = esim_p256_cache_get(c, keys[0].key, keys[0].point, NULL);
    assert_non_null(t);
    t = esim_p256_cache_get(c, keys[0].key, keys[1].point, NULL);
    assert_int_equal(
        esim_p256_verify_der(t, cache_digest, sizeof cache_digest, keys[1].sig, keys[1].sig_len),
        0);
    assert_int_equal(
        esim_p256_verify_der(t, cache_digest, sizeof cache_digest, keys[0].sig, keys[0].sig_len),
        1);
    esim_p256_cache_free(c);
    for (int i = 0; i < 2; i++)
        EVP_PKEY_free(keys[i].pkey);
}

int main(void)
{
    srand(17);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agrees_with_openssl_on_random_signatures),
        cmocka_unit_test(test_refuses_out_of_range_r_and_s),
        cmocka_unit_test(test_takes_r_from_x_above_n),
        cmocka_unit_test(test_refuses_points_off_the_curve),
        cmocka_unit_test(test_reads_der_as_openssl_does),
        cmocka_unit_test(test_order_inverse),
        cmocka_unit_test(test_affine_x),
        cmocka_unit_test(test_cache_sets_and_lru),
        cmocka_unit_test(test_cache_table_is_its_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
