/*
 * p256.c — P-256 arithmetic modulo the group order n and the field prime p,
 * and an ECDSA verification for keys that verify many signatures (see
 * p256.h).
 *
 * Why not OpenSSL's: its verification (ecp_nistz256, the assembly one)
 * takes ~830,000 instructions here, three quarters of them in u2·Q, a
 * variable-point multiplication of 255 doublings. A key that verifies
 * again and again (a device's identity key, ~8 messages a phone) can keep
 * a small table instead: with 2^64·Q, 2^128·Q and 2^192·Q known, u2·Q is
 * four 64-bit multiplications sharing one chain of 64 doublings, and u1·G
 * rides on the same chain with the same split of G (tables made once per
 * process). Scalars are in width-w NAF (w = 5 for Q's eight odd multiples
 * per base, 8 for G's sixty-four), the tables affine so that each addition
 * is a mixed one. About 1,300 field products a verification; the table
 * about 2,400 once per key.
 *
 * Field elements are in Montgomery form (a·2^256 mod p), always fully
 * reduced, so that equality is equality of limbs. Points are Jacobian
 * (X/Z², Y/Z³), Z = 0 the point at infinity; the additions handle equal
 * and opposite points.
 */
#include "core/p256.h"

#include <pthread.h>
#include <string.h>

typedef unsigned __int128 u128;
typedef uint64_t fe[4];

/* ---- a Montgomery product modulo an odd 256-bit m (CIOS) ---------------- */

/* a·b·2^-256 mod m, a and b below m; m0 = -m⁻¹ mod 2^64. */
static inline void mont_mul(uint64_t r[4], const uint64_t a[4], const uint64_t b[4],
                            const uint64_t m[4], uint64_t m0)
{
    uint64_t t[6] = {0};
    for (int i = 0; i < 4; i++) {
        u128 c = 0;
        for (int j = 0; j < 4; j++) {
            c = (u128)a[j] * b[i] + t[j] + (uint64_t)(c >> 64);
            t[j] = (uint64_t)c;
        }
        c = (u128)t[4] + (uint64_t)(c >> 64);
        t[4] = (uint64_t)c;
        t[5] = (uint64_t)(c >> 64);
        uint64_t q = t[0] * m0;
        c = (u128)q * m[0] + t[0];
        for (int j = 1; j < 4; j++) {
            c = (u128)q * m[j] + t[j] + (uint64_t)(c >> 64);
            t[j - 1] = (uint64_t)c;
        }
        c = (u128)t[4] + (uint64_t)(c >> 64);
        t[3] = (uint64_t)c;
        t[4] = t[5] + (uint64_t)(c >> 64);
    }
    /* t < 2m: subtract m when t >= m (a carry in t[4], or no borrow) */
    uint64_t d[4], borrow = 0;
    for (int i = 0; i < 4; i++) {
        u128 v = (u128)t[i] - m[i] - borrow;
        d[i] = (uint64_t)v;
        borrow = (uint64_t)(v >> 64) & 1;
    }
    uint64_t take = (uint64_t)0 - (t[4] | (borrow ^ 1));
    for (int i = 0; i < 4; i++)
        r[i] = (t[i] & ~take) | (d[i] & take);
}

/* a - b into r, the borrow (0 or 1) returned. */
static inline uint64_t sub4(uint64_t r[4], const uint64_t a[4], const uint64_t b[4])
{
    uint64_t borrow = 0;
    for (int i = 0; i < 4; i++) {
        u128 d = (u128)a[i] - b[i] - borrow;
        r[i] = (uint64_t)d;
        borrow = (uint64_t)(d >> 64) & 1;
    }
    return borrow;
}

/* a + b into r, the carry (0 or 1) returned. */
static inline uint64_t add4(uint64_t r[4], const uint64_t a[4], const uint64_t b[4])
{
    uint64_t carry = 0;
    for (int i = 0; i < 4; i++) {
        u128 v = (u128)a[i] + b[i] + carry;
        r[i] = (uint64_t)v;
        carry = (uint64_t)(v >> 64);
    }
    return carry;
}

static bool is_zero4(const uint64_t a[4])
{
    return (a[0] | a[1] | a[2] | a[3]) == 0;
}

static void from_bytes(uint64_t a[4], const unsigned char b[32])
{
    for (int i = 0; i < 4; i++) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++)
            v = v << 8 | b[(3 - i) * 8 + j];
        a[i] = v;
    }
}

/* ---- numbers modulo n ------------------------------------------------------ */

const esim_p256_ord esim_p256_ord_n = {0xf3b9cac2fc632551u, 0xbce6faada7179e84u,
                                       0xffffffffffffffffu, 0xffffffff00000000u};
static const uint64_t ORD_N0 = 0xccd1c8aaee00bc4fu; /* -n⁻¹ mod 2^64 */
const esim_p256_ord esim_p256_ord_rr = {0x83244c95be79eea2u, 0x4699799c49bd6fa6u,
                                        0x2845b2392b6bec59u, 0x66e12d94f3d95620u};

void esim_p256_ord_from_bytes(esim_p256_ord a, const unsigned char b[32])
{
    from_bytes(a, b);
}

void esim_p256_ord_to_bytes(unsigned char b[32], const esim_p256_ord a)
{
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++)
            b[(3 - i) * 8 + j] = (unsigned char)(a[i] >> (56 - 8 * j));
}

bool esim_p256_ord_is_zero(const esim_p256_ord a)
{
    return is_zero4(a);
}

bool esim_p256_ord_below_n(const esim_p256_ord a)
{
    uint64_t t[4];
    return sub4(t, a, esim_p256_ord_n) == 1;
}

void esim_p256_ord_reduce_once(esim_p256_ord a)
{
    uint64_t t[4];
    uint64_t borrow = sub4(t, a, esim_p256_ord_n);
    uint64_t take = borrow - 1; /* all ones when a >= n; no branch (signing uses it) */
    for (int i = 0; i < 4; i++)
        a[i] = (a[i] & ~take) | (t[i] & take);
}

void esim_p256_ord_add(esim_p256_ord r, const esim_p256_ord a, const esim_p256_ord b)
{
    /* No branch on the values: the signer adds secrets with it. */
    uint64_t s[4], t[4];
    uint64_t carry = add4(s, a, b);
    uint64_t borrow = sub4(t, s, esim_p256_ord_n);
    uint64_t take = (uint64_t)0 - (carry | (borrow ^ 1));
    for (int i = 0; i < 4; i++)
        r[i] = (s[i] & ~take) | (t[i] & take);
}

void esim_p256_ord_mont_mul(esim_p256_ord r, const esim_p256_ord a, const esim_p256_ord b)
{
    mont_mul(r, a, b, esim_p256_ord_n, ORD_N0);
}

void esim_p256_ord_mul(esim_p256_ord r, const esim_p256_ord a, const esim_p256_ord b)
{
    mont_mul(r, a, b, esim_p256_ord_n, ORD_N0);                /* a·b·2^-256 */
    mont_mul(r, r, esim_p256_ord_rr, esim_p256_ord_n, ORD_N0); /* ·2^256 */
}

/* Numbers as five signed limbs of 62 bits, x = l[0] + l[1]·2^62 + ... +
 * l[4]·2^248: in canonical form l[0..3] are in [0, 2^62) and l[4] holds
 * the sign. */
#define M62 (((uint64_t)1 << 62) - 1)
typedef __int128 i128;
typedef struct {
    int64_t l[5];
} s62;
typedef struct {
    int64_t u, v, q, r; /* the transition matrix of 62 divsteps, scaled by 2^62 */
} divmat;

static void s62_from(s62 *x, const uint64_t a[4])
{
    x->l[0] = (int64_t)(a[0] & M62);
    x->l[1] = (int64_t)((a[0] >> 62 | a[1] << 2) & M62);
    x->l[2] = (int64_t)((a[1] >> 60 | a[2] << 4) & M62);
    x->l[3] = (int64_t)((a[2] >> 58 | a[3] << 6) & M62);
    x->l[4] = (int64_t)(a[3] >> 56);
}

/* |x| in [0, 2^256) back into four 64-bit limbs. */
static void s62_to(uint64_t a[4], const s62 *x)
{
    uint64_t l[5];
    for (int i = 0; i < 5; i++)
        l[i] = (uint64_t)x->l[i];
    a[0] = l[0] | l[1] << 62;
    a[1] = l[1] >> 2 | l[2] << 60;
    a[2] = l[2] >> 4 | l[3] << 58;
    a[3] = l[3] >> 6 | l[4] << 56;
}

/* x += sign·m (sign ±1), back to canonical form. */
static void s62_add_signed(s62 *x, const s62 *m, int64_t sign)
{
    int64_t c = 0;
    for (int i = 0; i < 4; i++) {
        int64_t t = x->l[i] + sign * m->l[i] + c;
        x->l[i] = (int64_t)((uint64_t)t & M62);
        c = t >> 62; /* arithmetic: the signed carry */
    }
    x->l[4] += sign * m->l[4] + c;
}

/* A canonical x >= m (m positive). */
static bool s62_at_least(const s62 *x, const s62 *m)
{
    for (int i = 4; i >= 0; i--)
        if (x->l[i] != m->l[i])
            return x->l[i] > m->l[i];
    return true;
}

/* 62 divsteps (Bernstein and Yang, "Fast constant-time gcd computation and
 * modular inversion", 2019, with δ) on the low 64 bits of f (odd) and g,
 * which decide them all: the matrix with 2^62·(f', g') = (u·f + v·g,
 * q·f + r·g). Each step: δ > 0 and g odd: (δ, f, g) = (1 - δ, g, (g - f)/2);
 * g odd: (1 + δ, f, (g + f)/2); g even: (1 + δ, f, g/2). */
static int64_t divsteps62(int64_t delta, uint64_t f, uint64_t g, divmat *t)
{
    int64_t u = 1, v = 0, q = 0, r = 1;
    for (int i = 0; i < 62; i++) {
        if (g & 1) {
            if (delta > 0) {
                int64_t nu = 2 * q, nv = 2 * r;
                q -= u;
                r -= v;
                u = nu;
                v = nv;
                uint64_t nf = g;
                g = (g - f) >> 1;
                f = nf;
                delta = 1 - delta;
                continue;
            }
            q += u;
            r += v;
            g = (g + f) >> 1;
        } else {
            g >>= 1;
        }
        u *= 2;
        v *= 2;
        delta++;
    }
    *t = (divmat){u, v, q, r};
    return delta;
}

/* (f, g) = (u·f + v·g, q·f + r·g) / 2^62, exact by the divsteps. */
static void update_fg(s62 *f, s62 *g, const divmat *t)
{
    i128 cf = (i128)t->u * f->l[0] + (i128)t->v * g->l[0];
    i128 cg = (i128)t->q * f->l[0] + (i128)t->r * g->l[0];
    cf >>= 62;
    cg >>= 62;
    for (int i = 1; i < 5; i++) {
        cf += (i128)t->u * f->l[i] + (i128)t->v * g->l[i];
        cg += (i128)t->q * f->l[i] + (i128)t->r * g->l[i];
        if (i < 4) {
            f->l[i - 1] = (int64_t)((uint64_t)cf & M62);
            g->l[i - 1] = (int64_t)((uint64_t)cg & M62);
            cf >>= 62;
            cg >>= 62;
        } else {
            f->l[3] = (int64_t)((uint64_t)cf & M62);
            g->l[3] = (int64_t)((uint64_t)cg & M62);
            f->l[4] = (int64_t)(cf >> 62);
            g->l[4] = (int64_t)(cg >> 62);
        }
    }
}

/* (d, e) = (u·d + v·e, q·d + r·e) / 2^62 modulo n, d and e in [0, n) before
 * and after: a multiple of n added first makes each sum divisible by 2^62
 * (ninv = n⁻¹ mod 2^62); the quotients are in (-2n, 2n), then reduced. */
static void update_de(s62 *d, s62 *e, const divmat *t, const s62 *n, uint64_t ninv)
{
    uint64_t lowd = (uint64_t)t->u * (uint64_t)d->l[0] + (uint64_t)t->v * (uint64_t)e->l[0];
    uint64_t lowe = (uint64_t)t->q * (uint64_t)d->l[0] + (uint64_t)t->r * (uint64_t)e->l[0];
    int64_t md = (int64_t)((0 - lowd * ninv) & M62), me = (int64_t)((0 - lowe * ninv) & M62);
    i128 cd = (i128)t->u * d->l[0] + (i128)t->v * e->l[0] + (i128)md * n->l[0];
    i128 ce = (i128)t->q * d->l[0] + (i128)t->r * e->l[0] + (i128)me * n->l[0];
    cd >>= 62;
    ce >>= 62;
    s62 nd, ne;
    for (int i = 1; i < 5; i++) {
        cd += (i128)t->u * d->l[i] + (i128)t->v * e->l[i] + (i128)md * n->l[i];
        ce += (i128)t->q * d->l[i] + (i128)t->r * e->l[i] + (i128)me * n->l[i];
        nd.l[i - 1] = (int64_t)((uint64_t)cd & M62);
        ne.l[i - 1] = (int64_t)((uint64_t)ce & M62);
        cd >>= 62;
        ce >>= 62;
    }
    nd.l[4] = (int64_t)cd;
    ne.l[4] = (int64_t)ce;
    for (s62 *x = &nd; x; x = x == &nd ? &ne : NULL) {
        while (x->l[4] < 0)
            s62_add_signed(x, n, 1);
        while (s62_at_least(x, n))
            s62_add_signed(x, n, -1);
    }
    *d = nd;
    *e = ne;
}

/* The divsteps inverse of Bernstein and Yang, variable time: f = n, g = a,
 * 62 divsteps at a time on the numbers' low words, then their matrix
 * applied to f and g and to d and e, which keep d·a ≡ f and e·a ≡ g modulo
 * n, until g = 0 and f = ±1: a⁻¹ = ±d (0 for a = 0). The same for any odd
 * modulus m below 2^256 (inv_vartime_mod; p for esim_p256_affine_x). ~12,700 instructions
 * (callgrind, random a below n; Kaliski's almost Montgomery inverse, used
 * before, ~50,000-65,000, BN_mod_inverse ~155,000); at most 741 divsteps
 * for 256 bits by their bound, so 12 rounds of 62. */
static void inv_vartime_mod(uint64_t out[4], const uint64_t a[4], const uint64_t m[4])
{
    static const uint64_t zero[4] = {0};
    s62 n, f, g, d, e;
    s62_from(&n, m);
    s62_from(&f, m);
    s62_from(&g, a);
    s62_from(&d, zero);
    s62_from(&e, zero);
    e.l[0] = 1;
    /* m⁻¹ mod 2^64 by Newton's iteration (each step doubles the good bits) */
    uint64_t ninv = m[0];
    for (int i = 0; i < 5; i++)
        ninv *= 2 - m[0] * ninv;
    int64_t delta = 1;
    for (int round = 0; round < 16; round++) {
        if (!(g.l[0] | g.l[1] | g.l[2] | g.l[3] | g.l[4])) {
            if (f.l[4] < 0) { /* f = -1: a⁻¹ = -d */
                s62 neg = n;
                s62_add_signed(&neg, &d, -1);
                d = neg;
                if (s62_at_least(&d, &n))
                    s62_add_signed(&d, &n, -1);
            }
            s62_to(out, &d);
            return;
        }
        divmat t;
        delta = divsteps62(delta, (uint64_t)f.l[0] | (uint64_t)f.l[1] << 62,
                           (uint64_t)g.l[0] | (uint64_t)g.l[1] << 62, &t);
        update_fg(&f, &g, &t);
        update_de(&d, &e, &t, &n, ninv);
    }
    memset(out, 0, 4 * sizeof(uint64_t)); /* not reached: 16 rounds are 992 divsteps */
}

void esim_p256_ord_inv_vartime(esim_p256_ord out, const esim_p256_ord a)
{
    inv_vartime_mod(out, a, esim_p256_ord_n);
}

bool esim_p256_ecdsa_scalars(const unsigned char *digest, size_t digest_len,
                             const unsigned char rs[64], esim_p256_ord u1, esim_p256_ord u2)
{
    esim_p256_ord r, s, e, w;
    from_bytes(r, rs);
    from_bytes(s, rs + 32);
    if (is_zero4(r) || !esim_p256_ord_below_n(r) || is_zero4(s) || !esim_p256_ord_below_n(s))
        return false;
    /* e: the digest's leftmost 256 bits (n has 256), as an integer. */
    unsigned char eb[32] = {0};
    size_t take = digest_len < 32 ? digest_len : 32;
    if (take)
        memcpy(eb + 32 - take, digest, take);
    from_bytes(e, eb);
    esim_p256_ord_reduce_once(e);
    esim_p256_ord_inv_vartime(w, s);
    esim_p256_ord_mul(u1, e, w);
    esim_p256_ord_mul(u2, r, w);
    return true;
}

/* ---- the field: numbers modulo p, in Montgomery form -------------------- */

static const fe P = {0xffffffffffffffffu, 0x00000000ffffffffu, 0, 0xffffffff00000001u};
/* -p⁻¹ mod 2^64 is 1: p ≡ -1 mod 2^64. */
static const fe P_RR = {0x0000000000000003u, 0xfffffffbffffffffu, 0xfffffffffffffffeu,
                        0x00000004fffffffdu}; /* 2^512 mod p */
static const fe P_ONE = {0x0000000000000001u, 0xffffffff00000000u, 0xffffffffffffffffu,
                         0x00000000fffffffeu}; /* 2^256 mod p: 1 in Montgomery form */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(ESIM_P256_PORTABLE)
#define P256_ASM 1 /* the field's arithmetic in x86-64 assembly (below) */
#else
#define P256_ASM 0
/* Add with carry: a + b + *c, the carry out into *c. */
static inline uint64_t adc(uint64_t a, uint64_t b, unsigned char *c)
{
    u128 v = (u128)a + b + *c;
    *c = (unsigned char)(v >> 64);
    return (uint64_t)v;
}
/* Subtract with borrow: a - b - *c, the borrow out into *c. */
static inline uint64_t sbb(uint64_t a, uint64_t b, unsigned char *c)
{
    u128 v = (u128)a - b - *c;
    *c = (unsigned char)(v >> 64) & 1;
    return (uint64_t)v;
}
#endif

/* One round of the Montgomery product: t += a·bi, then t += q·p for
 * q = t0 (-p⁻¹ mod 2^64 is 1) and t shifted down a limb. p's limbs are
 * 2^64 - 1, 2^32 - 1, 0, 2^64 - 2^32 + 1: t0 + q·p0 = q·2^64 exactly (a
 * carry of q, nothing left), p2 contributes nothing. t < 2p throughout,
 * so t4 is 0 or 1. */
#define FE_ROUND(bi)                                                                               \
    do {                                                                                           \
        u128 m0_ = (u128)a0 * (bi), m1_ = (u128)a1 * (bi), m2_ = (u128)a2 * (bi),                  \
             m3_ = (u128)a3 * (bi);                                                                \
        unsigned char c_ = 0;                                                                      \
        t0 = adc(t0, (uint64_t)m0_, &c_);                                                          \
        t1 = adc(t1, (uint64_t)m1_, &c_);                                                          \
        t2 = adc(t2, (uint64_t)m2_, &c_);                                                          \
        t3 = adc(t3, (uint64_t)m3_, &c_);                                                          \
        t4 = adc(t4, 0, &c_);                                                                      \
        uint64_t t5_ = c_;                                                                         \
        c_ = 0;                                                                                    \
        t1 = adc(t1, (uint64_t)(m0_ >> 64), &c_);                                                  \
        t2 = adc(t2, (uint64_t)(m1_ >> 64), &c_);                                                  \
        t3 = adc(t3, (uint64_t)(m2_ >> 64), &c_);                                                  \
        t4 = adc(t4, (uint64_t)(m3_ >> 64), &c_);                                                  \
        t5_ += c_;                                                                                 \
        uint64_t q_ = t0;                                                                          \
        u128 r1_ = (u128)q_ * 0x00000000ffffffffu, r3_ = (u128)q_ * 0xffffffff00000001u;           \
        c_ = 0;                                                                                    \
        t0 = adc(t1, q_, &c_);                                                                     \
        t1 = adc(t2, 0, &c_);                                                                      \
        t2 = adc(t3, 0, &c_);                                                                      \
        t3 = adc(t4, 0, &c_);                                                                      \
        t4 = t5_ + c_;                                                                             \
        c_ = 0;                                                                                    \
        t0 = adc(t0, (uint64_t)r1_, &c_);                                                          \
        t1 = adc(t1, (uint64_t)(r1_ >> 64), &c_);                                                  \
        t2 = adc(t2, (uint64_t)r3_, &c_);                                                          \
        t3 = adc(t3, (uint64_t)(r3_ >> 64), &c_);                                                  \
        t4 += c_;                                                                                  \
    } while (0)

#if P256_ASM
/* The field's products, squares, sums and differences in x86-64 assembly
 * (mul, adc and cmov only, no BMI2/ADX): gcc spills most of the C
 * version's 128-bit temporaries and branches on each final subtraction
 * (~300 instructions a product against ~150 here, a square ~125). A
 * product or square is made whole (512 bits), then reduced a limb at a
 * time: adding q·p for q the lowest limb, q·p0 + q·2^64 cancels it, q·p1 +
 * q (the carry of q) is q·2^32 (q << 32 and q >> 32 into the next two
 * limbs), q·p3 a mul. */
static const uint64_t P1 = 0x00000000ffffffffu, P3 = 0xffffffff00000001u;
/* One limb of the reduction on the window A..D (q = A): the window stays
 * below 2^256 and A becomes its new top limb. */
#define FE_ASM_SQR_RED(A, B, C, D)                                                                 \
    "movq %[" #A "], %[ra]\n\tmulq %[p3]\n\t"                                                      \
    "movq %[" #A "], %[h]\n\tshlq $32, %[h]\n\tshrq $32, %[" #A "]\n\t"                            \
    "addq %[h], %[" #B "]\n\tadcq %[" #A "], %[" #C "]\n\tadcq %[ra], %[" #D "]\n\t"               \
    "adcq $0, %[rd]\n\tmovq %[rd], %[" #A "]\n\t"
/* r = t - p when t (R0..R3 and a carry limb C, 0 or 1, t < 2p) is p or
 * more, else t; X0..X3 scratch. */
#define FE_ASM_FINAL(R0, R1, R2, R3, C, X0, X1, X2, X3)                                            \
    "movq %[" #R0 "], %[" #X0 "]\n\tmovq %[" #R1 "], %[" #X1 "]\n\t"                               \
    "movq %[" #R2 "], %[" #X2 "]\n\tmovq %[" #R3 "], %[" #X3 "]\n\t"                               \
    "subq $-1, %[" #X0 "]\n\tsbbq %[p1], %[" #X1 "]\n\tsbbq $0, %[" #X2 "]\n\t"                    \
    "sbbq %[p3], %[" #X3 "]\n\tsbbq $0, %[" #C "]\n\t"                                             \
    "cmovaeq %[" #X0 "], %[" #R0 "]\n\tcmovaeq %[" #X1 "], %[" #R1 "]\n\t"                         \
    "cmovaeq %[" #X2 "], %[" #R2 "]\n\tcmovaeq %[" #X3 "], %[" #R3 "]\n\t"                         \
    "movq %[" #R0 "], 0(%[r])\n\tmovq %[" #R1 "], 8(%[r])\n\t"                                     \
    "movq %[" #R2 "], 16(%[r])\n\tmovq %[" #R3 "], 24(%[r])\n\t"

/* One product of limbs into a column: (C2, C1, C0) += a[i]·b[j]. */
#define FE_ASM_PROD(i, j, C0, C1, C2)                                                              \
    "movq " #i "(%[a]), %[ra]\n\tmulq " #j "(%[b])\n\taddq %[ra], %[" #C0 "]\n\t"                  \
    "adcq %[rd], %[" #C1 "]\n\tadcq $0, %[" #C2 "]\n\t"

/* a·b·2^-256 mod p, a and b below p (r may be a or b): the 512-bit
 * product a column at a time (each column's sum in three limbs that move
 * up one), then fe_sqr's reduction. */
static inline void fe_mul(fe r, const fe a, const fe b)
{
    uint64_t t0, t1, t2, t3, t4, t5, t6, t7, h, ra, rd;
    __asm__ volatile(
        "movq 0(%[a]), %[ra]\n\tmulq 0(%[b])\n\tmovq %[ra], %[t0]\n\tmovq %[rd], %[t1]\n\t"
        "xorl %k[t2], %k[t2]\n\txorl %k[t3], %k[t3]\n\t" FE_ASM_PROD(0, 8, t1, t2, t3)
            FE_ASM_PROD(8, 0, t1, t2, t3) "xorl %k[t4], %k[t4]\n\t" FE_ASM_PROD(0, 16, t2, t3, t4)
                FE_ASM_PROD(8, 8, t2, t3, t4) FE_ASM_PROD(
                    16, 0, t2, t3, t4) "xorl %k[t5], %k[t5]\n\t" FE_ASM_PROD(0, 24, t3, t4, t5)
                    FE_ASM_PROD(8, 16, t3, t4, t5) FE_ASM_PROD(16, 8, t3, t4, t5) FE_ASM_PROD(
                        24, 0, t3, t4, t5) "xorl %k[t6], %k[t6]\n\t" FE_ASM_PROD(8, 24, t4, t5, t6)
                        FE_ASM_PROD(16, 16, t4, t5, t6)
                            FE_ASM_PROD(24, 8, t4, t5, t6) "xorl %k[t7], %k[t7]\n\t" FE_ASM_PROD(
                                16, 24, t5, t6, t7)
                                FE_ASM_PROD(24, 16, t5, t6,
                                            t7) "movq 24(%[a]), %[ra]\n\tmulq 24(%[b])\n\taddq "
                                                "%[ra], %[t6]\n\tadcq %[rd], %[t7]\n\t"
        /* reduction of t0..t3 as in fe_sqr, then the high half added */
        FE_ASM_SQR_RED(t0, t1, t2, t3) FE_ASM_SQR_RED(t1, t2, t3, t0) FE_ASM_SQR_RED(t2, t3, t0, t1)
            FE_ASM_SQR_RED(t3, t0, t1, t2) "addq %[t4], %[t0]\n\tadcq %[t5], %[t1]\n\tadcq %[t6], "
                                           "%[t2]\n\tadcq %[t7], %[t3]\n\t"
                                           "sbbq %[h], %[h]\n\tnegq %[h]\n\t" FE_ASM_FINAL(
                                               t0, t1, t2, t3, h, t4, t5, t6, t7)
        : [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2), [t3] "=&r"(t3), [t4] "=&r"(t4),
          [t5] "=&r"(t5), [t6] "=&r"(t6), [t7] "=&r"(t7), [h] "=&r"(h), [ra] "=&a"(ra),
          [rd] "=&d"(rd)
        : [a] "r"(a), [b] "r"(b), [r] "r"(r), [p1] "m"(P1), [p3] "m"(P3)
        : "cc", "memory");
}

/* a·a·2^-256 mod p, a below p: the six cross products once, doubled, the
 * four squares added, then the four rounds of reduction on the low half
 * (each leaves it below 2^256) and the high half added. */
static inline void fe_sqr(fe r, const fe a)
{
    uint64_t t0, t1, t2, t3, t4, t5, t6, t7, h, ra, rd;
    __asm__ volatile(
        "movq 8(%[a]), %[ra]\n\tmulq 0(%[a])\n\tmovq %[ra], %[t1]\n\tmovq %[rd], %[t2]\n\t"
        "movq 16(%[a]), %[ra]\n\tmulq 0(%[a])\n\taddq %[ra], %[t2]\n\tadcq $0, %[rd]\n\t"
        "movq %[rd], %[t3]\n\t"
        "movq 24(%[a]), %[ra]\n\tmulq 0(%[a])\n\taddq %[ra], %[t3]\n\tadcq $0, %[rd]\n\t"
        "movq %[rd], %[t4]\n\t"
        "movq 16(%[a]), %[ra]\n\tmulq 8(%[a])\n\taddq %[ra], %[t3]\n\tadcq %[rd], %[t4]\n\t"
        "movl $0, %k[t5]\n\tadcq $0, %[t5]\n\t"
        "movq 24(%[a]), %[ra]\n\tmulq 8(%[a])\n\taddq %[ra], %[t4]\n\tadcq %[rd], %[t5]\n\t"
        "movq 24(%[a]), %[ra]\n\tmulq 16(%[a])\n\taddq %[ra], %[t5]\n\tadcq $0, %[rd]\n\t"
        "movq %[rd], %[t6]\n\t"
        /* doubled: t1..t6 one bit up into t7 */
        "xorl %k[t7], %k[t7]\n\t"
        "addq %[t1], %[t1]\n\tadcq %[t2], %[t2]\n\tadcq %[t3], %[t3]\n\tadcq %[t4], %[t4]\n\t"
        "adcq %[t5], %[t5]\n\tadcq %[t6], %[t6]\n\tadcq $0, %[t7]\n\t"
        /* the squares; mul clobbers the flags, so the carry waits in h */
        "movq 0(%[a]), %[ra]\n\tmulq %[ra]\n\tmovq %[ra], %[t0]\n\taddq %[rd], %[t1]\n\t"
        "sbbq %[h], %[h]\n\t"
        "movq 8(%[a]), %[ra]\n\tmulq %[ra]\n\tnegq %[h]\n\tadcq %[ra], %[t2]\n\t"
        "adcq %[rd], %[t3]\n\tsbbq %[h], %[h]\n\t"
        "movq 16(%[a]), %[ra]\n\tmulq %[ra]\n\tnegq %[h]\n\tadcq %[ra], %[t4]\n\t"
        "adcq %[rd], %[t5]\n\tsbbq %[h], %[h]\n\t"
        "movq 24(%[a]), %[ra]\n\tmulq %[ra]\n\tnegq %[h]\n\tadcq %[ra], %[t6]\n\t"
        "adcq %[rd], %[t7]\n\t"
        /* reduction of t0..t3: each round leaves its window below 2^256, the
         * window's new top limb the product's high half (plus a carry) */
        FE_ASM_SQR_RED(t0, t1, t2, t3) FE_ASM_SQR_RED(t1, t2, t3, t0) FE_ASM_SQR_RED(t2, t3, t0, t1)
            FE_ASM_SQR_RED(t3, t0, t1, t2)
        /* + the high half: below 2p, its carry in h */
        "addq %[t4], %[t0]\n\tadcq %[t5], %[t1]\n\tadcq %[t6], %[t2]\n\tadcq %[t7], %[t3]\n\t"
        "sbbq %[h], %[h]\n\tnegq %[h]\n\t" FE_ASM_FINAL(t0, t1, t2, t3, h, t4, t5, t6, t7)
        : [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2), [t3] "=&r"(t3), [t4] "=&r"(t4),
          [t5] "=&r"(t5), [t6] "=&r"(t6), [t7] "=&r"(t7), [h] "=&r"(h), [ra] "=&a"(ra),
          [rd] "=&d"(rd)
        : [a] "r"(a), [r] "r"(r), [p1] "m"(P1), [p3] "m"(P3)
        : "cc", "memory");
}

/* (a + b) mod p, a and b below p */
static inline void fe_add(fe r, const fe a, const fe b)
{
    uint64_t s0, s1, s2, s3, x0, x1, x2, x3, c;
    __asm__ volatile(
        "movq 0(%[a]), %[s0]\n\tmovq 8(%[a]), %[s1]\n\tmovq 16(%[a]), %[s2]\n\t"
        "movq 24(%[a]), %[s3]\n\txorl %k[c], %k[c]\n\t"
        "addq 0(%[b]), %[s0]\n\tadcq 8(%[b]), %[s1]\n\tadcq 16(%[b]), %[s2]\n\t"
        "adcq 24(%[b]), %[s3]\n\tadcq $0, %[c]\n\t" FE_ASM_FINAL(s0, s1, s2, s3, c, x0, x1, x2, x3)
        : [s0] "=&r"(s0), [s1] "=&r"(s1), [s2] "=&r"(s2), [s3] "=&r"(s3), [x0] "=&r"(x0),
          [x1] "=&r"(x1), [x2] "=&r"(x2), [x3] "=&r"(x3), [c] "=&r"(c)
        : [a] "r"(a), [b] "r"(b), [r] "r"(r), [p1] "m"(P1), [p3] "m"(P3)
        : "cc", "memory");
}

/* (a - b) mod p, a and b below p: p added back when it borrowed */
static inline void fe_sub(fe r, const fe a, const fe b)
{
    uint64_t d0, d1, d2, d3, m, x1, x3;
    __asm__ volatile(
        "movq 0(%[a]), %[d0]\n\tmovq 8(%[a]), %[d1]\n\tmovq 16(%[a]), %[d2]\n\t"
        "movq 24(%[a]), %[d3]\n\t"
        "subq 0(%[b]), %[d0]\n\tsbbq 8(%[b]), %[d1]\n\tsbbq 16(%[b]), %[d2]\n\t"
        "sbbq 24(%[b]), %[d3]\n\tsbbq %[m], %[m]\n\t"
        "movq %[m], %[x1]\n\tshrq $32, %[x1]\n\tmovq %[m], %[x3]\n\tandq %[p3], %[x3]\n\t"
        "addq %[m], %[d0]\n\tadcq %[x1], %[d1]\n\tadcq $0, %[d2]\n\tadcq %[x3], %[d3]\n\t"
        "movq %[d0], 0(%[r])\n\tmovq %[d1], 8(%[r])\n\tmovq %[d2], 16(%[r])\n\t"
        "movq %[d3], 24(%[r])\n\t"
        : [d0] "=&r"(d0), [d1] "=&r"(d1), [d2] "=&r"(d2), [d3] "=&r"(d3), [m] "=&r"(m),
          [x1] "=&r"(x1), [x3] "=&r"(x3)
        : [a] "r"(a), [b] "r"(b), [r] "r"(r), [p3] "m"(P3)
        : "cc", "memory");
}
#else
/* a·b·2^-256 mod p, a and b below p. */
static inline void fe_mul(fe r, const fe a, const fe b)
{
    uint64_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    uint64_t t0 = 0, t1 = 0, t2 = 0, t3 = 0, t4 = 0;
    FE_ROUND(b[0]);
    FE_ROUND(b[1]);
    FE_ROUND(b[2]);
    FE_ROUND(b[3]);
    /* t < 2p: subtract p when t >= p (a carry in t4, or no borrow) */
    u128 d = (u128)t0 - P[0];
    uint64_t d0 = (uint64_t)d;
    d = (u128)t1 - P[1] - ((uint64_t)(d >> 64) & 1);
    uint64_t d1 = (uint64_t)d;
    d = (u128)t2 - ((uint64_t)(d >> 64) & 1);
    uint64_t d2 = (uint64_t)d;
    d = (u128)t3 - P[3] - ((uint64_t)(d >> 64) & 1);
    uint64_t d3 = (uint64_t)d, borrow = (uint64_t)(d >> 64) & 1;
    if (t4 | (borrow ^ 1)) {
        r[0] = d0, r[1] = d1, r[2] = d2, r[3] = d3;
    } else {
        r[0] = t0, r[1] = t1, r[2] = t2, r[3] = t3;
    }
}

static inline void fe_sqr(fe r, const fe a)
{
    fe_mul(r, a, a);
}

/* (a + b) mod p */
static inline void fe_add(fe r, const fe a, const fe b)
{
    unsigned char c = 0, w = 0;
    uint64_t s0 = adc(a[0], b[0], &c), s1 = adc(a[1], b[1], &c), s2 = adc(a[2], b[2], &c),
             s3 = adc(a[3], b[3], &c);
    uint64_t d0 = sbb(s0, P[0], &w), d1 = sbb(s1, P[1], &w), d2 = sbb(s2, 0, &w),
             d3 = sbb(s3, P[3], &w);
    if (c || !w) { /* the sum is p or more */
        r[0] = d0, r[1] = d1, r[2] = d2, r[3] = d3;
    } else {
        r[0] = s0, r[1] = s1, r[2] = s2, r[3] = s3;
    }
}

/* (a - b) mod p */
static inline void fe_sub(fe r, const fe a, const fe b)
{
    unsigned char w = 0, c = 0;
    uint64_t d0 = sbb(a[0], b[0], &w), d1 = sbb(a[1], b[1], &w), d2 = sbb(a[2], b[2], &w),
             d3 = sbb(a[3], b[3], &w);
    uint64_t m = (uint64_t)0 - w; /* add p back when it borrowed */
    r[0] = adc(d0, P[0] & m, &c);
    r[1] = adc(d1, P[1] & m, &c);
    r[2] = adc(d2, 0, &c);
    r[3] = adc(d3, P[3] & m, &c);
}
#endif

/* a^(2^n) */
static void fe_sqr_n(fe r, const fe a, int n)
{
    memcpy(r, a, sizeof(fe));
    while (n-- > 0)
        fe_sqr(r, r);
}

/* a⁻¹ (Montgomery form in and out) as a^(p-2), a ≠ 0, for the tables. p - 2
 * is 32 ones, 31 zeros, a one, 96 zeros, 94 ones, 0, 1: from x_k =
 * a^(2^k - 1), 255 squarings and 13 products (a bit at a time: 128). */
static void fe_inv(fe r, const fe a)
{
    fe x2, x4, x8, x16, x32, t;
    fe_sqr(t, a);
    fe_mul(x2, t, a);
    fe_sqr_n(t, x2, 2);
    fe_mul(x4, t, x2);
    fe_sqr_n(t, x4, 4);
    fe_mul(x8, t, x4);
    fe_sqr_n(t, x8, 8);
    fe_mul(x16, t, x8);
    fe_sqr_n(t, x16, 16);
    fe_mul(x32, t, x16);
    fe_sqr_n(t, x32, 32); /* ffffffff 00000000 */
    fe_mul(t, t, a);      /* ffffffff 00000001 */
    fe_sqr_n(t, t, 96);   /* then 96 zeros */
    fe_sqr_n(t, t, 32);
    fe_mul(t, t, x32); /* 32 ones */
    fe_sqr_n(t, t, 32);
    fe_mul(t, t, x32); /* 64 */
    fe_sqr_n(t, t, 16);
    fe_mul(t, t, x16); /* 80 */
    fe_sqr_n(t, t, 8);
    fe_mul(t, t, x8); /* 88 */
    fe_sqr_n(t, t, 4);
    fe_mul(t, t, x4); /* 92 */
    fe_sqr_n(t, t, 2);
    fe_mul(t, t, x2); /* 94 */
    fe_sqr_n(t, t, 2);
    fe_mul(r, t, a); /* 01 */
}

/* The curve's b, Montgomery form, made once with the G tables. */
static fe curve_b;

/* ---- points -------------------------------------------------------------- */

typedef struct {
    fe x, y, z;
} jac;

typedef struct {
    fe x, y;
} aff;

/* 2·a (dbl-2001-b, a = -3): infinity stays infinity (Z3 = 0). */
static void pt_dbl(jac *r, const jac *a)
{
    fe delta, gamma, beta, alpha, t0, t1;
    fe_sqr(delta, a->z);
    fe_sqr(gamma, a->y);
    fe_mul(beta, a->x, gamma);
    fe_sub(t0, a->x, delta);
    fe_add(t1, a->x, delta);
    fe_mul(alpha, t0, t1);
    fe_add(t0, alpha, alpha);
    fe_add(alpha, t0, alpha); /* 3(X - δ)(X + δ) */
    fe_add(t0, a->y, a->z);
    fe_sqr(t0, t0);
    fe_sub(t0, t0, gamma);
    fe_sub(r->z, t0, delta); /* (Y + Z)² - γ - δ */
    fe_add(beta, beta, beta);
    fe_add(beta, beta, beta); /* 4β */
    fe_sqr(t0, alpha);
    fe_add(t1, beta, beta);
    fe_sub(r->x, t0, t1); /* α² - 8β */
    fe_sub(t0, beta, r->x);
    fe_mul(t0, alpha, t0);
    fe_sqr(gamma, gamma);
    fe_add(gamma, gamma, gamma);
    fe_add(gamma, gamma, gamma);
    fe_add(gamma, gamma, gamma); /* 8γ² */
    fe_sub(r->y, t0, gamma);
}

/* a + (bx, by) with the affine point never infinity (madd-2007-bl). */
static void pt_add_aff(jac *r, const jac *a, const fe bx, const fe by)
{
    if (is_zero4(a->z)) {
        memcpy(r->x, bx, sizeof r->x);
        memcpy(r->y, by, sizeof r->y);
        memcpy(r->z, P_ONE, sizeof r->z);
        return;
    }
    fe z1z1, u2, s2, h, hh, i, j, rr, v, t;
    fe_sqr(z1z1, a->z);
    fe_mul(u2, bx, z1z1);
    fe_mul(s2, by, a->z);
    fe_mul(s2, s2, z1z1);
    fe_sub(h, u2, a->x);
    fe_sub(rr, s2, a->y);
    if (is_zero4(h)) {
        if (is_zero4(rr)) {
            pt_dbl(r, a);
        } else {
            memset(r, 0, sizeof *r);
        }
        return;
    }
    fe_sqr(hh, h);
    fe_add(i, hh, hh);
    fe_add(i, i, i);
    fe_mul(j, h, i);
    fe_add(rr, rr, rr);
    fe_mul(v, a->x, i);
    fe_add(t, a->z, h);
    fe_sqr(t, t);
    fe_sub(t, t, z1z1);
    fe_sub(r->z, t, hh); /* (Z1 + H)² - Z1Z1 - HH */
    fe y1j;
    fe_mul(y1j, a->y, j);
    fe_sqr(t, rr);
    fe_sub(t, t, j);
    fe_sub(t, t, v);
    fe_sub(r->x, t, v); /* r² - J - 2V */
    fe_sub(t, v, r->x);
    fe_mul(t, rr, t);
    fe_add(y1j, y1j, y1j);
    fe_sub(r->y, t, y1j); /* r(V - X3) - 2·Y1·J */
}

/* a + b, both Jacobian (add-2007-bl): table making only. */
static void pt_add(jac *r, const jac *a, const jac *b)
{
    if (is_zero4(a->z)) {
        *r = *b;
        return;
    }
    if (is_zero4(b->z)) {
        *r = *a;
        return;
    }
    fe z1z1, z2z2, u1, u2, s1, s2, h, i, j, rr, v, t;
    fe_sqr(z1z1, a->z);
    fe_sqr(z2z2, b->z);
    fe_mul(u1, a->x, z2z2);
    fe_mul(u2, b->x, z1z1);
    fe_mul(s1, a->y, b->z);
    fe_mul(s1, s1, z2z2);
    fe_mul(s2, b->y, a->z);
    fe_mul(s2, s2, z1z1);
    fe_sub(h, u2, u1);
    fe_sub(rr, s2, s1);
    if (is_zero4(h)) {
        if (is_zero4(rr))
            pt_dbl(r, a);
        else
            memset(r, 0, sizeof *r);
        return;
    }
    fe_add(i, h, h);
    fe_sqr(i, i);
    fe_mul(j, h, i);
    fe_add(rr, rr, rr);
    fe_mul(v, u1, i);
    fe_add(t, a->z, b->z);
    fe_sqr(t, t);
    fe_sub(t, t, z1z1);
    fe_sub(t, t, z2z2);
    fe_mul(r->z, t, h);
    fe_sqr(t, rr);
    fe_sub(t, t, j);
    fe_sub(t, t, v);
    fe_sub(r->x, t, v);
    fe_sub(t, v, r->x);
    fe_mul(t, rr, t);
    fe_mul(s1, s1, j);
    fe_add(s1, s1, s1);
    fe_sub(r->y, t, s1);
}

/* The odd multiples 1·B .. (2m-1)·B of B, 2^64·B, 2^128·B, 2^192·B for
 * B = |base| (not infinity), affine, into out[4][m]: m Jacobian points a
 * base made, then one inversion for them all (Montgomery's trick). Every
 * multiple is below n, so none is infinity. */
static void make_table(uint64_t (*out)[2][4], int m, const jac *base, jac *work, fe *prefix)
{
    jac b = *base;
    for (int q = 0; q < 4; q++) {
        if (q)
            for (int i = 0; i < 64; i++)
                pt_dbl(&b, &b);
        jac d;
        pt_dbl(&d, &b);
        work[q * m] = b;
        for (int i = 1; i < m; i++)
            pt_add(&work[q * m + i], &work[q * m + i - 1], &d);
    }
    int cnt = 4 * m;
    memcpy(prefix[0], work[0].z, sizeof(fe));
    for (int i = 1; i < cnt; i++)
        fe_mul(prefix[i], prefix[i - 1], work[i].z);
    fe inv, zi, zi2;
    fe_inv(inv, prefix[cnt - 1]);
    for (int i = cnt - 1; i >= 0; i--) {
        if (i) {
            fe_mul(zi, inv, prefix[i - 1]);
            fe_mul(inv, inv, work[i].z);
        } else {
            memcpy(zi, inv, sizeof zi);
        }
        fe_sqr(zi2, zi);
        fe_mul(out[i][0], work[i].x, zi2);
        fe_mul(zi2, zi2, zi);
        fe_mul(out[i][1], work[i].y, zi2);
    }
}

#define WG 8 /* G's window: 64 odd multiples a base (digits to ±127: a signed char) */
#define WQ 5 /* Q's: 8 */
static uint64_t g_table[4][1 << (WG - 2)][2][4];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void g_init(void)
{
    static const unsigned char gx[32] = {0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47,
                                         0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2,
                                         0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0,
                                         0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96};
    static const unsigned char gy[32] = {0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b,
                                         0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16,
                                         0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce,
                                         0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5};
    static const unsigned char b[32] = {0x5a, 0xc6, 0x35, 0xd8, 0xaa, 0x3a, 0x93, 0xe7,
                                        0xb3, 0xeb, 0xbd, 0x55, 0x76, 0x98, 0x86, 0xbc,
                                        0x65, 0x1d, 0x06, 0xb0, 0xcc, 0x53, 0xb0, 0xf6,
                                        0x3b, 0xce, 0x3c, 0x3e, 0x27, 0xd2, 0x60, 0x4b};
    fe t;
    from_bytes(t, b);
    fe_mul(curve_b, t, P_RR);
    jac g;
    from_bytes(t, gx);
    fe_mul(g.x, t, P_RR);
    from_bytes(t, gy);
    fe_mul(g.y, t, P_RR);
    memcpy(g.z, P_ONE, sizeof g.z);
    static jac work[4 << (WG - 2)];
    static fe prefix[4 << (WG - 2)];
    make_table(&g_table[0][0], 1 << (WG - 2), &g, work, prefix);
}

bool esim_p256_affine_x(const unsigned char X[32], const unsigned char Z[32],
                        const unsigned char blind[32], unsigned char x[32])
{
    fe xv, zv, c, t;
    from_bytes(xv, X);
    from_bytes(zv, Z);
    from_bytes(c, blind);
    if (!sub4(t, c, P)) /* c mod p: 2^256 < 2p */
        memcpy(c, t, sizeof c);
    if (!sub4(t, xv, P) || !sub4(t, zv, P) || is_zero4(zv) || is_zero4(c))
        return false; /* X and Z below p, Z not 0 (and c not 0: a chance of 2^-256) */
    static const fe one = {1, 0, 0, 0};
    fe_mul(xv, xv, P_RR); /* Montgomery form */
    fe_mul(zv, zv, P_RR);
    fe_mul(c, c, P_RR);
    fe_mul(t, zv, c);         /* Z·c */
    fe_mul(t, t, one);        /* out of Montgomery form, */
    inv_vartime_mod(t, t, P); /* inverted: its time says nothing of Z, */
    fe_mul(t, t, P_RR);       /* and back */
    fe_mul(zv, t, c);         /* Z⁻¹ */
    fe_sqr(zv, zv);           /* Z⁻² */
    fe_mul(xv, xv, zv);       /* X·Z⁻² */
    fe_mul(xv, xv, one);
    esim_p256_ord_to_bytes(x, xv);
    return true;
}

bool esim_p256_key_init(esim_p256_key *k, const unsigned char point[65])
{
    pthread_once(&g_once, g_init);
    if (point[0] != 0x04)
        return false;
    fe x, y, t;
    from_bytes(x, point + 1);
    from_bytes(y, point + 33);
    if (!sub4(t, x, P) || !sub4(t, y, P)) /* coordinates below p */
        return false;
    jac q;
    fe_mul(q.x, x, P_RR);
    fe_mul(q.y, y, P_RR);
    memcpy(q.z, P_ONE, sizeof q.z);
    /* y² = x³ - 3x + b */
    fe lhs, rhs;
    fe_sqr(lhs, q.y);
    fe_sqr(rhs, q.x);
    fe_mul(rhs, rhs, q.x);
    fe_sub(rhs, rhs, q.x);
    fe_sub(rhs, rhs, q.x);
    fe_sub(rhs, rhs, q.x);
    fe_add(rhs, rhs, curve_b);
    if (memcmp(lhs, rhs, sizeof lhs) != 0)
        return false;
    jac work[4 << (WQ - 2)];
    fe prefix[4 << (WQ - 2)];
    make_table(&k->t[0][0], 1 << (WQ - 2), &q, work, prefix);
    return true;
}

/* Bits |i| .. |i| + |n| - 1 of |a| (n <= 8; bits from 256 up are zero). */
static inline unsigned bits_at(const esim_p256_ord a, int i, int n)
{
    int l = i >> 6, o = i & 63;
    uint64_t v = l < 4 ? a[l] >> o : 0;
    if (o + n > 64 && l + 1 < 4)
        v |= a[l + 1] << (64 - o);
    return (unsigned)(v & ((1u << n) - 1));
}

/* |a| (below 2^256) in width-w NAF into digits[0..256]: odd digits in
 * (-2^(w-1), 2^(w-1)) or 0, at most one nonzero in any w in a row. A
 * carry instead of adding to |a|: where bit i differs from the carry the
 * window of w bits there, plus the carry, is odd; from 2^(w-1) up it
 * becomes negative and carries one into the next window. Each window
 * read in one go rather than |a| shifted a bit at a time. */
static void wnaf(signed char digits[257], const esim_p256_ord a, int w)
{
    memset(digits, 0, 257);
    unsigned carry = 0;
    for (int i = 0; i < 257;) {
        if (bits_at(a, i, 1) == carry) {
            i++;
            continue;
        }
        int n = 257 - i < w ? 257 - i : w;
        int d = (int)(bits_at(a, i, n) + carry);
        carry = (unsigned)(d >> (w - 1)) & 1;
        d -= (int)(carry << w);
        digits[i] = (signed char)d;
        i += n;
    }
}

/* acc + d·T for the table entry of odd digit d (negated point for d < 0). */
static void add_digit(jac *acc, const uint64_t (*tab)[2][4], int d)
{
    const uint64_t(*e)[4] = tab[(d < 0 ? -d : d) >> 1];
    if (d > 0) {
        pt_add_aff(acc, acc, e[0], e[1]);
    } else {
        fe ny;
        fe_sub(ny, (const uint64_t[4]){0, 0, 0, 0}, e[1]);
        pt_add_aff(acc, acc, e[0], ny);
    }
}

int esim_p256_verify(const esim_p256_key *k, const unsigned char *digest, size_t digest_len,
                     const unsigned char rs[64])
{
    esim_p256_ord u1, u2;
    if (!esim_p256_ecdsa_scalars(digest, digest_len, rs, u1, u2))
        return 0;
    pthread_once(&g_once, g_init);
    signed char n1[257], n2[257];
    wnaf(n1, u1, WG);
    wnaf(n2, u2, WQ);
    /* Digit i of a scalar multiplies 2^(64j)·P by 2^(i-64j), j = min(i/64, 3):
     * one chain of 65 doublings serves the four bases of both points. */
    jac acc;
    memset(&acc, 0, sizeof acc);
    for (int c = 64; c >= 0; c--) {
        pt_dbl(&acc, &acc);
        for (int j = c == 64 ? 3 : 0; j < 4; j++) {
            int i = 64 * j + c;
            if (n1[i])
                add_digit(&acc, g_table[j], n1[i]);
            if (n2[i])
                add_digit(&acc, k->t[j], n2[i]);
        }
    }
    if (is_zero4(acc.z))
        return 0;
    /* R.x mod n = r, R.x = X/Z²: X = r'·Z² for r' = r, or r + n when that
     * is still below p (x-coordinates in [n, p) reduce to r too). */
    fe r, z2, t, rm;
    from_bytes(r, rs);
    fe_sqr(z2, acc.z);
    fe_mul(rm, r, P_RR);
    fe_mul(t, rm, z2);
    if (memcmp(t, acc.x, sizeof t) == 0)
        return 1;
    if (add4(r, r, esim_p256_ord_n) || !sub4(t, r, P))
        return 0;
    fe_mul(rm, r, P_RR);
    fe_mul(t, rm, z2);
    return memcmp(t, acc.x, sizeof t) == 0;
}

/* One DER INTEGER at *p (before |end|), non-negative and minimal, into
 * 32 bytes big-endian: false when it is not one or is 2^256 or more. */
static bool der_uint256(const unsigned char **p, const unsigned char *end, unsigned char out[32])
{
    const unsigned char *q = *p;
    if (end - q < 2 || q[0] != 0x02 || q[1] & 0x80) /* short lengths only: <= 33 bytes */
        return false;
    size_t len = q[1];
    q += 2;
    if (len == 0 || (size_t)(end - q) < len || q[0] & 0x80) /* empty, short, negative */
        return false;
    if (q[0] == 0 && len > 1 && !(q[1] & 0x80)) /* a needless leading zero */
        return false;
    const unsigned char *v = q;
    size_t vl = len;
    if (v[0] == 0 && vl > 1) {
        v++;
        vl--;
    }
    if (vl > 32)
        return false;
    memset(out, 0, 32);
    memcpy(out + 32 - vl, v, vl);
    *p = q + len;
    return true;
}

bool esim_p256_sig_from_der(const unsigned char *der, size_t len, unsigned char rs[64])
{
    if (!der || len < 2 || der[0] != 0x30 || der[1] & 0x80 || (size_t)der[1] != len - 2)
        return false;
    const unsigned char *p = der + 2, *end = der + len;
    return der_uint256(&p, end, rs) && der_uint256(&p, end, rs + 32) && p == end;
}

int esim_p256_verify_der(const esim_p256_key *k, const unsigned char *digest, size_t digest_len,
                         const unsigned char *der, size_t der_len)
{
    unsigned char rs[64];
    if (!esim_p256_sig_from_der(der, der_len, rs))
        return 0;
    return esim_p256_verify(k, digest, digest_len, rs);
}
