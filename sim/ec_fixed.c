/*
 * ec_fixed.c — ECDSA P-256 verification for a public key that signs again
 * and again (the EUM's key over every eUICC certificate at the SM-DP+, the
 * SM-DP+'s key over every download at the eUICCs), and ECDSA P-256 signing
 * by a private key that signs again and again (the identity key's
 * Mdm-Signatures, an eUICC's ES10 signatures, the EUM's certificates).
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
 * hundred verifications; it pays from a few hundred signatures by one key.
 *
 * The arithmetic modulo the group order n (s⁻¹, the products) is core/p256.c's
 * (four 64-bit limbs rather than BIGNUMs: BN_mod_inverse alone took
 * ~155,000 instructions of a ~430,000-instruction verification; the
 * divsteps inverse there takes ~11,400). R.x is compared in Jacobian
 * coordinates (X = r·Z²) instead of converting R to affine.
 *
 * Signing (SEC 1 §4.1.3) is k random in [1, n-1], R = k·G through
 * OpenSSL's table for G (constant time), r = R.x mod n (R's Z inverted
 * blinded by a fresh random c, esim_p256_affine_x), s = k⁻¹·(e + r·d) mod
 * n, k⁻¹ computed as b·(k·b)⁻¹ with a fresh random b so that the
 * inversion's timing says nothing about k: ~143,000 instructions a
 * signature (callgrind), fewer than EVP_PKEY_sign, which also derives k
 * from the key, the digest and fresh randomness through SHA-512, inverts k
 * by Fermat and goes through the provider's dispatch on each call. The signatures are ordinary
 * ECDSA (tests verify them with OpenSSL).
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* EC_GROUP_precompute_mult, SHA256_*, Jprojective */

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/obj_mac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "core/p256.h"
#include "sim/sim_internal.h"

/* ---- arithmetic modulo n: core/p256.c ------------------------------------ */

typedef esim_p256_ord ord4;

static BIGNUM *bn_from_ord(const ord4 a, BIGNUM *out)
{
    unsigned char b[32];
    esim_p256_ord_to_bytes(b, a);
    return BN_bin2bn(b, 32, out);
}

/* ---- SHA-256 -------------------------------------------------------------------- */

void sim_sha256(const void *data, size_t len, unsigned char out[32])
{
    /* The low-level functions: SHA256() fetches the algorithm on each call
     * in OpenSSL 3.0 (~14,000 instructions before the first byte). */
    SHA256_CTX c;
    SHA256_Init(&c);
    SHA256_Update(&c, data, len);
    SHA256_Final(out, &c);
}

struct sim_ec_fixed {
    unsigned char point[65]; /* Q, uncompressed */
    EC_GROUP *g;             /* P-256 */
    EC_GROUP *gq;            /* P-256 with Q as its generator, table built */
    BIGNUM *p;               /* the field prime */
    BN_CTX *bn;
    EC_POINT *p1, *p2; /* u1·G, u2·Q */
};

void sim_ec_fixed_free(sim_ec_fixed *f)
{
    if (!f)
        return;
    EC_POINT_free(f->p1);
    EC_POINT_free(f->p2);
    EC_GROUP_free(f->g);
    EC_GROUP_free(f->gq);
    BN_free(f->p);
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
    f->p = BN_new();
    EC_POINT *q = f->g ? EC_POINT_new(f->g) : NULL;
    const BIGNUM *n = f->g ? EC_GROUP_get0_order(f->g) : NULL;
    bool ok = f->gq && f->bn && f->p && q && n &&
              EC_GROUP_get_curve(f->g, f->p, NULL, NULL, f->bn) == 1 &&
              EC_POINT_oct2point(f->g, q, point, 65, f->bn) == 1 &&
              EC_POINT_is_at_infinity(f->g, q) == 0 && EC_POINT_is_on_curve(f->g, q, f->bn) == 1 &&
              EC_GROUP_set_generator(f->gq, q, n, EC_GROUP_get0_cofactor(f->g)) == 1 &&
              EC_GROUP_precompute_mult(f->gq, f->bn) == 1 && (f->p1 = EC_POINT_new(f->g)) &&
              (f->p2 = EC_POINT_new(f->gq));
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

/* ECDSA's check of |rs| over |digest| on P-256 (|g|, field prime |p|):
 * R = u1·G + u2·Q into |p1|, Q either the generator of |gq| (its table
 * built; |p2| a point of it) or the point |q|. 1, 0, or -1 (failed). */
static int verify_rs(const EC_GROUP *g, const BIGNUM *p, const EC_GROUP *gq, EC_POINT *p2,
                     const EC_POINT *q, EC_POINT *p1, BN_CTX *ctx, const unsigned char digest[32],
                     const unsigned char rs[64])
{
    ord4 r, u1, u2;
    if (!esim_p256_ecdsa_scalars(digest, 32, rs, u1, u2))
        return 0;
    esim_p256_ord_from_bytes(r, rs);
    BN_CTX_start(ctx);
    BIGNUM *b1 = BN_CTX_get(ctx), *b2 = BN_CTX_get(ctx), *x = BN_CTX_get(ctx);
    BIGNUM *z = BN_CTX_get(ctx), *t = BN_CTX_get(ctx);
    int res = -1;
    if (!t || !bn_from_ord(u1, b1) || !bn_from_ord(u2, b2))
        goto done;
    if (gq ? EC_POINT_mul(g, p1, b1, NULL, NULL, ctx) != 1 ||
                 EC_POINT_mul(gq, p2, b2, NULL, NULL, ctx) != 1 ||
                 EC_POINT_add(g, p1, p1, p2, ctx) != 1
           : EC_POINT_mul(g, p1, b1, q, b2, ctx) != 1)
        goto done;
    if (EC_POINT_is_at_infinity(g, p1)) {
        res = 0;
        goto done;
    }
    /* R.x mod n = r, with R.x = X/Z²: X = r'·Z² for r' = r or, when it is
     * still below p, r + n (the x-coordinates in [n, p) reduce to r too). */
    if (EC_POINT_get_Jprojective_coordinates_GFp(g, p1, x, NULL, z, ctx) != 1 ||
        !BN_mod_sqr(z, z, p, ctx) || !bn_from_ord(r, b1) || !BN_mod_mul(t, b1, z, p, ctx))
        goto done;
    res = BN_cmp(t, x) == 0;
    if (!res) {
        if (!BN_add(b1, b1, EC_GROUP_get0_order(g)))
            goto done;
        if (BN_cmp(b1, p) < 0) {
            if (!BN_mod_mul(t, b1, z, p, ctx))
                goto done;
            res = BN_cmp(t, x) == 0;
        }
    }
done:
    BN_CTX_end(ctx);
    return res;
}

int sim_ec_fixed_verify(sim_ec_fixed *f, const unsigned char digest[32], const unsigned char rs[64])
{
    return verify_rs(f->g, f->p, f->gq, f->p2, NULL, f->p1, f->bn, digest, rs);
}

int sim_ec_fixed_verify_der(sim_ec_fixed *f, const unsigned char digest[32],
                            const unsigned char *sig, size_t sig_len)
{
    /* As strict as EVP's verification: the DER must be the signature's
     * one canonical encoding (core/p256.h's reader). */
    unsigned char rs[64];
    return esim_p256_sig_from_der(sig, sig_len, rs) ? sim_ec_fixed_verify(f, digest, rs) : 0;
}

/* ---- any key, by its point ------------------------------------------------------ */

struct sim_ec_p256 {
    EC_GROUP *g; /* P-256 */
    BIGNUM *p;   /* the field prime */
    BN_CTX *bn;
    EC_POINT *q, *r; /* the key; R */
};

void sim_ec_p256_free(sim_ec_p256 *v)
{
    if (!v)
        return;
    EC_POINT_free(v->q);
    EC_POINT_free(v->r);
    EC_GROUP_free(v->g);
    BN_free(v->p);
    BN_CTX_free(v->bn);
    free(v);
}

sim_ec_p256 *sim_ec_p256_new(void)
{
    sim_ec_p256 *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    v->bn = BN_CTX_new();
    v->p = BN_new();
    if (!v->g || !v->bn || !v->p || EC_GROUP_get_curve(v->g, v->p, NULL, NULL, v->bn) != 1 ||
        !(v->q = EC_POINT_new(v->g)) || !(v->r = EC_POINT_new(v->g))) {
        sim_ec_p256_free(v);
        return NULL;
    }
    return v;
}

/* |point| into v->q: false when it is not an uncompressed point on the
 * curve (EC_POINT_oct2point refuses a point off it). */
static bool load_point(sim_ec_p256 *v, const unsigned char point[65])
{
    return point[0] == 0x04 && EC_POINT_oct2point(v->g, v->q, point, 65, v->bn) == 1 &&
           EC_POINT_is_at_infinity(v->g, v->q) == 0 && EC_POINT_is_on_curve(v->g, v->q, v->bn) == 1;
}

bool sim_ec_p256_point_ok(sim_ec_p256 *v, const unsigned char point[65])
{
    return load_point(v, point);
}

int sim_ec_p256_verify(sim_ec_p256 *v, const unsigned char point[65],
                       const unsigned char digest[32], const unsigned char rs[64])
{
    if (!load_point(v, point))
        return 0;
    return verify_rs(v->g, v->p, NULL, NULL, v->q, v->r, v->bn, digest, rs);
}

/* ---- signing ----------------------------------------------------------------- */

static EC_GROUP *p256;
static pthread_once_t p256_once = PTHREAD_ONCE_INIT;

static void p256_init(void)
{
    p256 = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
}

/* What a signature needs besides the key: OpenSSL's objects for k·G, one
 * set per signer, or one per thread for the keys kept as bare scalars
 * (sim_ec_sign_with, sim_ec_keygen). */
typedef struct {
    BN_CTX *bn;
    EC_POINT *r;
    BIGNUM *k, *x, *y, *z;
} scratch;

static void scratch_clear(scratch *w)
{
    EC_POINT_free(w->r);
    BN_clear_free(w->k);
    BN_free(w->x);
    BN_free(w->y);
    BN_free(w->z);
    BN_CTX_free(w->bn);
    memset(w, 0, sizeof *w);
}

static bool scratch_init(scratch *w)
{
    pthread_once(&p256_once, p256_init);
    w->bn = p256 ? BN_CTX_new() : NULL;
    w->r = p256 ? EC_POINT_new(p256) : NULL;
    w->k = BN_secure_new();
    w->x = BN_new();
    w->y = BN_new();
    w->z = BN_new();
    if (!w->bn || !w->r || !w->k || !w->x || !w->y || !w->z) {
        scratch_clear(w);
        return false;
    }
    BN_set_flags(w->k, BN_FLG_CONSTTIME);
    return true;
}

static pthread_key_t thread_scratch;
static bool thread_scratch_ok;
static pthread_once_t thread_scratch_once = PTHREAD_ONCE_INIT;

static void thread_scratch_free(void *w)
{
    scratch_clear(w);
    free(w);
}

static void thread_scratch_key(void)
{
    thread_scratch_ok = pthread_key_create(&thread_scratch, thread_scratch_free) == 0;
}

/* The calling thread's scratch, made at its first use and freed when the
 * thread ends. NULL: out of memory. */
static scratch *scratch_of_thread(void)
{
    pthread_once(&thread_scratch_once, thread_scratch_key);
    if (!thread_scratch_ok)
        return NULL;
    scratch *w = pthread_getspecific(thread_scratch);
    if (w)
        return w;
    if (!(w = calloc(1, sizeof *w)))
        return NULL;
    if (!scratch_init(w) || pthread_setspecific(thread_scratch, w) != 0) {
        thread_scratch_free(w);
        return NULL;
    }
    return w;
}

/* x-coordinate (and with |y|, y) of k·G for the secret k in w->k, through
 * OpenSSL's constant-time table for the generator. x alone (a signature's)
 * is made affine by core/p256.h with the random |blind| (~42,600
 * instructions through EC_POINT_get_affine_coordinates, its BIGNUMs and its
 * Fermat inverse). */
static bool mul_g(scratch *w, unsigned char x[32], unsigned char *y, const unsigned char *blind)
{
    if (EC_POINT_mul(p256, w->r, w->k, NULL, NULL, w->bn) != 1)
        return false;
    if (!y) {
        unsigned char jx[32], jz[32];
        return EC_POINT_get_Jprojective_coordinates_GFp(p256, w->r, w->x, NULL, w->z, w->bn) == 1 &&
               BN_bn2binpad(w->x, jx, 32) == 32 && BN_bn2binpad(w->z, jz, 32) == 32 &&
               esim_p256_affine_x(jx, jz, blind, x);
    }
    return EC_POINT_get_affine_coordinates(p256, w->r, w->x, w->y, w->bn) == 1 &&
           BN_bn2binpad(w->x, x, 32) == 32 && BN_bn2binpad(w->y, y, 32) == 32;
}

/* The private key |d| (big-endian) in Montgomery form into |dm|: false
 * when d is not in [1, n-1]. */
static bool d_to_mont(const unsigned char d[32], ord4 dm)
{
    ord4 dv;
    esim_p256_ord_from_bytes(dv, d);
    bool ok = !esim_p256_ord_is_zero(dv) && esim_p256_ord_below_n(dv);
    if (ok)
        esim_p256_ord_mont_mul(dm, dv, esim_p256_ord_rr);
    OPENSSL_cleanse(dv, sizeof dv);
    return ok;
}

struct sim_ec_signer {
    ord4 dm; /* the private key d in Montgomery form (d·2^256 mod n) */
    scratch w;
};

void sim_ec_signer_free(sim_ec_signer *s)
{
    if (!s)
        return;
    OPENSSL_cleanse(s->dm, sizeof s->dm);
    scratch_clear(&s->w);
    free(s);
}

sim_ec_signer *sim_ec_signer_new_raw(const unsigned char d[32])
{
    pthread_once(&p256_once, p256_init);
    ord4 dm;
    if (!p256 || !d_to_mont(d, dm))
        return NULL;
    sim_ec_signer *s = calloc(1, sizeof *s);
    if (!s) {
        OPENSSL_cleanse(dm, sizeof dm);
        return NULL;
    }
    memcpy(s->dm, dm, sizeof dm);
    OPENSSL_cleanse(dm, sizeof dm);
    if (!scratch_init(&s->w)) {
        sim_ec_signer_free(s);
        return NULL;
    }
    return s;
}

sim_ec_signer *sim_ec_signer_new(EVP_PKEY *key)
{
    char group[32];
    BIGNUM *priv = NULL;
    unsigned char d[32];
    sim_ec_signer *s = NULL;
    if (key && EVP_PKEY_get_base_id(key) == EVP_PKEY_EC &&
        EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                       NULL) == 1 &&
        strcmp(group, "prime256v1") == 0 &&
        EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_PRIV_KEY, &priv) == 1 &&
        BN_bn2binpad(priv, d, sizeof d) == sizeof d)
        s = sim_ec_signer_new_raw(d);
    OPENSSL_cleanse(d, sizeof d);
    BN_clear_free(priv);
    return s;
}

/* ECDSA by the key |dm| (Montgomery form) with the scratch |w|. */
static bool sign_dm(scratch *w, const ord4 dm, const unsigned char digest[32], unsigned char rs[64])
{
    ord4 e, k, r, sv, t, b;
    unsigned char kb[96], xb[32]; /* k, the blinding factor b, then k·G's */
    esim_p256_ord_from_bytes(e, digest);
    esim_p256_ord_reduce_once(e);
    bool ok = false;
    for (int tries = 0; tries < 16 && !ok; tries++) {
        /* k uniform in [1, n-1]: 32 random bytes, drawn again when not
         * below n (a chance of about 2^-32); the blinding factors' 64 with
         * them, one call to the generator (each costs ~6,700
         * instructions). */
        if (RAND_priv_bytes(kb, sizeof kb) != 1)
            break;
        esim_p256_ord_from_bytes(k, kb);
        if (esim_p256_ord_is_zero(k) || !esim_p256_ord_below_n(k))
            continue;
        if (!BN_bin2bn(kb, 32, w->k) || !mul_g(w, xb, NULL, kb + 64))
            break;
        esim_p256_ord_from_bytes(r, xb); /* x < p < 2n */
        esim_p256_ord_reduce_once(r);
        if (esim_p256_ord_is_zero(r))
            continue;
        /* k⁻¹ = b·(k·b)⁻¹ with b a fresh random blinding factor, so the
         * inversion's time says nothing about k. */
        esim_p256_ord_from_bytes(b, kb + 32);
        esim_p256_ord_reduce_once(b);
        if (esim_p256_ord_is_zero(b))
            continue;
        esim_p256_ord_mul(t, k, b);
        esim_p256_ord_inv_vartime(t, t);
        esim_p256_ord_mul(k, t, b);       /* k⁻¹ */
        esim_p256_ord_mont_mul(t, r, dm); /* r·d */
        esim_p256_ord_add(t, t, e);       /* e + r·d */
        esim_p256_ord_mul(sv, t, k);      /* k⁻¹·(e + r·d) */
        if (esim_p256_ord_is_zero(sv))
            continue;
        esim_p256_ord_to_bytes(rs, r);
        esim_p256_ord_to_bytes(rs + 32, sv);
        ok = true;
    }
    OPENSSL_cleanse(kb, sizeof kb);
    OPENSSL_cleanse(k, sizeof k);
    OPENSSL_cleanse(t, sizeof t);
    OPENSSL_cleanse(b, sizeof b);
    BN_zero(w->k);
    return ok;
}

bool sim_ec_signer_sign(sim_ec_signer *s, const unsigned char digest[32], unsigned char rs[64])
{
    return sign_dm(&s->w, s->dm, digest, rs);
}

bool sim_ec_sign_with(const unsigned char d[32], const unsigned char digest[32],
                      unsigned char rs[64])
{
    scratch *w = scratch_of_thread();
    ord4 dm;
    if (!w || !d_to_mont(d, dm))
        return false;
    bool ok = sign_dm(w, dm, digest, rs);
    OPENSSL_cleanse(dm, sizeof dm);
    return ok;
}

/* point = d·G, uncompressed, for the secret d (checked in [1, n-1]). */
static bool public_of(scratch *w, const unsigned char d[32], unsigned char point[65])
{
    ord4 dm;
    if (!d_to_mont(d, dm))
        return false;
    OPENSSL_cleanse(dm, sizeof dm);
    point[0] = 0x04;
    bool ok = BN_bin2bn(d, 32, w->k) && mul_g(w, point + 1, point + 33, NULL);
    BN_zero(w->k);
    return ok;
}

bool sim_ec_keygen(unsigned char d[32], unsigned char point[65])
{
    scratch *w = scratch_of_thread();
    if (!w)
        return false;
    for (int tries = 0; tries < 16; tries++) {
        /* d uniform in [1, n-1], as k is for a signature. */
        if (RAND_priv_bytes(d, 32) != 1)
            break;
        if (public_of(w, d, point))
            return true;
    }
    OPENSSL_cleanse(d, 32);
    return false;
}

bool sim_ec_public_key(const unsigned char d[32], unsigned char point[65])
{
    scratch *w = scratch_of_thread();
    return w && public_of(w, d, point);
}

size_t sim_ecdsa_raw_to_der(const unsigned char rs[64], unsigned char der[72])
{
    unsigned char body[70];
    size_t n = 0;
    for (int h = 0; h < 2; h++) {
        const unsigned char *v = rs + 32 * h;
        size_t i = 0;
        while (i < 31 && v[i] == 0)
            i++;
        size_t len = 32 - i + (v[i] >= 0x80);
        body[n++] = 0x02;
        body[n++] = (unsigned char)len;
        if (v[i] >= 0x80)
            body[n++] = 0;
        memcpy(body + n, v + i, 32 - i);
        n += 32 - i;
    }
    der[0] = 0x30;
    der[1] = (unsigned char)n;
    memcpy(der + 2, body, n);
    return n + 2;
}
