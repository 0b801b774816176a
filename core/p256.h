/*
 * p256.h — P-256 arithmetic shared by the service and the simulators (not
 * installed, nothing exported from libesim-mdm): numbers modulo the group
 * order n, and an ECDSA verification for a public key that verifies again
 * and again, with a small table made once per key.
 *
 * The verification is ECDSA's own (SEC 1 §4.1.4): r and s in [1, n-1],
 * e the digest's leftmost 256 bits, w = s⁻¹ mod n, u1 = e·w, u2 = r·w,
 * R = u1·G + u2·Q not the point at infinity, R.x mod n = r. Only public
 * data goes through it: nothing here is constant time.
 */
#ifndef ESIM_CORE_P256_H
#define ESIM_CORE_P256_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- numbers modulo n (four 64-bit limbs, least significant first) ---- */

typedef uint64_t esim_p256_ord[4];

extern const esim_p256_ord esim_p256_ord_n;
extern const esim_p256_ord esim_p256_ord_rr; /* 2^512 mod n */

void esim_p256_ord_from_bytes(esim_p256_ord a, const unsigned char b[32]); /* big-endian */
void esim_p256_ord_to_bytes(unsigned char b[32], const esim_p256_ord a);
bool esim_p256_ord_is_zero(const esim_p256_ord a);
bool esim_p256_ord_below_n(const esim_p256_ord a);
/* a mod n for any 256-bit a (a < 2n). */
void esim_p256_ord_reduce_once(esim_p256_ord a);
/* (a + b) mod n, a and b below n. */
void esim_p256_ord_add(esim_p256_ord r, const esim_p256_ord a, const esim_p256_ord b);
/* a·b·2^-256 mod n (Montgomery), a and b below n. */
void esim_p256_ord_mont_mul(esim_p256_ord r, const esim_p256_ord a, const esim_p256_ord b);
/* a·b mod n */
void esim_p256_ord_mul(esim_p256_ord r, const esim_p256_ord a, const esim_p256_ord b);
/* The affine x = X·Z⁻² mod p of the Jacobian point (X, Y, Z), X and Z
 * big-endian: false when one is not below p or Z is 0. Z⁻¹ is c·(Z·c)⁻¹
 * with |blind| (32 fresh random bytes) as c, so that the variable-time
 * inversion says nothing of Z (a signature's k·G: Z follows from the secret
 * k). */
bool esim_p256_affine_x(const unsigned char X[32], const unsigned char Z[32],
                        const unsigned char blind[32], unsigned char x[32]);
/* a⁻¹ mod n for 0 < a < n; its time depends on a (public values only, or a
 * secret blinded by a fresh random factor first). */
void esim_p256_ord_inv_vartime(esim_p256_ord out, const esim_p256_ord a);

/* ECDSA's scalars from a signature |rs| (r then s, 32 bytes each,
 * big-endian) over a digest of |digest_len| bytes (its leftmost 256 bits
 * taken): u1 = e·s⁻¹, u2 = r·s⁻¹ mod n. false when r or s is not in
 * [1, n-1]. */
bool esim_p256_ecdsa_scalars(const unsigned char *digest, size_t digest_len,
                             const unsigned char rs[64], esim_p256_ord u1, esim_p256_ord u2);

/* ---- verification with a per-key table ---- */

/* A public key Q made ready to verify: the odd multiples 1·P .. 15·P of
 * P = Q, 2^64·Q, 2^128·Q and 2^192·Q, affine (2 KiB). Plain data: copied
 * and freed as such. */
typedef struct {
    uint64_t t[4][8][2][4];
} esim_p256_key;

/* |point| (65 bytes: 0x04, X, Y big-endian) into |k|. false, |k|
 * unspecified, when it is not an uncompressed point on the curve. */
bool esim_p256_key_init(esim_p256_key *k, const unsigned char point[65]);

/* 1 when |rs| (r then s, 32 bytes each, big-endian) is an ECDSA signature
 * by |k| over |digest| (its leftmost 256 bits when longer), else 0. */
int esim_p256_verify(const esim_p256_key *k, const unsigned char *digest, size_t digest_len,
                     const unsigned char rs[64]);

/* The signature's r and s from its DER Ecdsa-Sig-Value (SEQUENCE of two
 * INTEGERs) into |rs|: false unless |der| is exactly one such value in
 * DER's one encoding (definite minimal lengths, minimal non-negative
 * INTEGERs, nothing after it) with r and s below 2^256 — the encodings
 * OpenSSL's verification takes, the others it refuses. */
bool esim_p256_sig_from_der(const unsigned char *der, size_t len, unsigned char rs[64]);

/* esim_p256_verify of the DER signature |der| (0 when it does not parse). */
int esim_p256_verify_der(const esim_p256_key *k, const unsigned char *digest, size_t digest_len,
                         const unsigned char *der, size_t der_len);

#endif
