/*
 * ec_fixed.c — ECDSA P-256 verification for a public key that signs again
 * and again (the EUM's key over every eUICC certificate at the SM-DP+, the
 * SM-DP+'s key over every download at the eUICCs).
 *
 * The check is ECDSA's own (SEC 1 §4.1.4): r and s in [1, n-1],
 * w = s⁻¹ mod n, u1 = e·w, u2 = r·w, R = u1·G + u2·Q not at infinity, and
 * R.x mod n = r. What differs from EVP_DigestVerify is how u2·Q is computed:
 * OpenSSL's P-256 code (ecp_nistz256) has a precomputed table for the
 * curve's generator G, and builds one for any other generator on request
 * (EC_GROUP_precompute_mult). A copy of the P-256 group whose generator is
 * Q, with its table built once, turns the variable-point multiplication —
 * most of a verification's ~825,000 instructions — into a table walk like
 * u1·G's. The table is ~150 KB and takes about as long to build as a few
 * verifications; it pays from the fourth or so signature by the same key.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* EC_GROUP_precompute_mult */

#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/obj_mac.h>

#include "sim/sim_internal.h"

struct sim_ec_fixed {
    unsigned char point[65]; /* Q, uncompressed */
    EC_GROUP *g;             /* P-256 */
    EC_GROUP *gq;            /* P-256 with Q as its generator, table built */
    const BIGNUM *n;         /* the order (g's) */
    BN_CTX *bn;
};

void sim_ec_fixed_free(sim_ec_fixed *f)
{
    if (!f)
        return;
    EC_GROUP_free(f->g);
    EC_GROUP_free(f->gq);
    BN_CTX_free(f->bn);
    free(f);
}

sim_ec_fixed *sim_ec_fixed_new(const unsigned char point[65])
{
    sim_ec_fixed *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    memcpy(f->point, point, 65);
    f->g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    f->gq = f->g ? EC_GROUP_dup(f->g) : NULL;
    f->bn = BN_CTX_new();
    EC_POINT *q = f->g ? EC_POINT_new(f->g) : NULL;
    bool ok = f->gq && f->bn && q && EC_POINT_oct2point(f->g, q, point, 65, f->bn) == 1 &&
              EC_POINT_is_at_infinity(f->g, q) == 0 && EC_POINT_is_on_curve(f->g, q, f->bn) == 1 &&
              (f->n = EC_GROUP_get0_order(f->g)) != NULL &&
              EC_GROUP_set_generator(f->gq, q, f->n, EC_GROUP_get0_cofactor(f->g)) == 1 &&
              EC_GROUP_precompute_mult(f->gq, f->bn) == 1;
    EC_POINT_free(q);
    if (!ok) {
        sim_ec_fixed_free(f);
        return NULL;
    }
    return f;
}

const unsigned char *sim_ec_fixed_point(const sim_ec_fixed *f)
{
    return f->point;
}

int sim_ec_fixed_verify(sim_ec_fixed *f, const unsigned char digest[32], const unsigned char rs[64])
{
    BN_CTX *ctx = f->bn;
    BN_CTX_start(ctx);
    BIGNUM *r = BN_CTX_get(ctx), *s = BN_CTX_get(ctx), *e = BN_CTX_get(ctx);
    BIGNUM *w = BN_CTX_get(ctx), *u1 = BN_CTX_get(ctx), *u2 = BN_CTX_get(ctx);
    BIGNUM *x = BN_CTX_get(ctx);
    EC_POINT *p1 = EC_POINT_new(f->g), *p2 = EC_POINT_new(f->gq);
    int res = -1;
    if (!x || !p1 || !p2 || !BN_bin2bn(rs, 32, r) || !BN_bin2bn(rs + 32, 32, s) ||
        !BN_bin2bn(digest, 32, e))
        goto done;
    if (BN_is_zero(r) || BN_is_negative(r) || BN_cmp(r, f->n) >= 0 || BN_is_zero(s) ||
        BN_is_negative(s) || BN_cmp(s, f->n) >= 0) {
        res = 0;
        goto done;
    }
    /* A 256-bit digest for a 256-bit order: e is taken whole (no
     * truncation), reduced with the products below. */
    if (!BN_mod_inverse(w, s, f->n, ctx) || !BN_mod_mul(u1, e, w, f->n, ctx) ||
        !BN_mod_mul(u2, r, w, f->n, ctx) || EC_POINT_mul(f->g, p1, u1, NULL, NULL, ctx) != 1 ||
        EC_POINT_mul(f->gq, p2, u2, NULL, NULL, ctx) != 1 ||
        EC_POINT_add(f->g, p1, p1, p2, ctx) != 1)
        goto done;
    if (EC_POINT_is_at_infinity(f->g, p1)) {
        res = 0;
        goto done;
    }
    if (EC_POINT_get_affine_coordinates(f->g, p1, x, NULL, ctx) != 1 || !BN_nnmod(x, x, f->n, ctx))
        goto done;
    res = BN_cmp(x, r) == 0;
done:
    EC_POINT_free(p1);
    EC_POINT_free(p2);
    BN_CTX_end(ctx);
    return res;
}

int sim_ec_fixed_verify_der(sim_ec_fixed *f, const unsigned char digest[32],
                            const unsigned char *sig, size_t sig_len)
{
    /* As strict as EVP's verification: the DER must be the signature's
     * one canonical encoding. */
    const unsigned char *p = sig;
    ECDSA_SIG *es = sig_len <= 80 ? d2i_ECDSA_SIG(NULL, &p, (long)sig_len) : NULL;
    unsigned char *again = NULL, rs[64];
    int n = es ? i2d_ECDSA_SIG(es, &again) : -1;
    int res = 0;
    if (es && p == sig + sig_len && n == (int)sig_len && memcmp(again, sig, sig_len) == 0) {
        const BIGNUM *r, *s;
        ECDSA_SIG_get0(es, &r, &s);
        if (BN_num_bytes(r) <= 32 && BN_num_bytes(s) <= 32 && BN_bn2binpad(r, rs, 32) == 32 &&
            BN_bn2binpad(s, rs + 32, 32) == 32)
            res = sim_ec_fixed_verify(f, digest, rs);
    }
    OPENSSL_free(again);
    ECDSA_SIG_free(es);
    return res;
}
