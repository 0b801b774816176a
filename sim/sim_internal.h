/*
 * sim_internal.h — what the files of sim/ share and nobody else sees: the PKI
 * struct, raw-signature ECDSA and certificate-chain checks for the GSMA
 * chain, JSON helpers, and the eUICC's JSON form and signing hooks.
 */
#ifndef ESIM_SIM_SIM_INTERNAL_H
#define ESIM_SIM_SIM_INTERNAL_H

#include <limits.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "sim/sim.h"

#define SIM_PATH_MAX 1024

typedef struct sim_ec_signer sim_ec_signer; /* ec_fixed.c */

struct sim_pki {
    char dir[SIM_PATH_MAX];
    char topic[256];
    char ca_file[SIM_PATH_MAX];
    char server_cert_file[SIM_PATH_MAX];
    char server_key_file[SIM_PATH_MAX];
    esim_cert ca, server, device_ca, ci, eum, dpauth;
    esim_cert scep;           /* P-256 CA below device-ca that issues the identities */
    esim_buf scep_name_der;   /* scep's subject Name, DER: the identities' issuer */
    esim_buf scep_der;        /* scep's certificate, DER: sent along with each identity */
    sim_ec_signer *scep_sign; /* ready to sign a SHA-256 digest */
    esim_buf eum_der;         /* eum.pem as DER: eUICCs it signed point here instead of copying */
    /* Certificates the eUICCs verified against the CI: the SM-DP+'s (lpa.c)
     * and the eIMs' (es10.c), so a fleet checks each one once. */
    struct sim_cert_cache *server_certs;
    sim_ec_signer *eum_sign; /* eum's key, ready to sign a SHA-256 digest */
    esim_buf eum_name_der;   /* eum's subject Name, DER: the eUICCs' issuer */
    esim_buf eum_ski;        /* eum's subjectKeyIdentifier (may be empty) */
};

/* ---- GSMA crypto (rsp_crypto.c) ---- */

/* ECDSA P-256 over SHA-256, the signature as raw r||s (64 bytes), as GSMA does. */
esim_err sim_ecdsa_sign_raw(EVP_PKEY *key, const void *data, size_t len, unsigned char sig[64],
                            esim_error *err);
/* The same with a context from sim_sign_ctx(): no per-signature set-up. */
esim_err sim_ecdsa_sign_raw_ctx(EVP_PKEY_CTX *ctx, const void *data, size_t len,
                                unsigned char sig[64], esim_error *err);
/* A signing context for |key| (EVP_PKEY_sign_init done), or NULL. */
EVP_PKEY_CTX *sim_sign_ctx(EVP_PKEY *key);
/* The private scalar and public point of an RFC 5915 ECPrivateKey on P-256
 * written as sim_euicc_issue writes it (version 1, the curve, the
 * uncompressed point); false for any other DER (nothing is written). */
bool sim_p256_private_from_der(const unsigned char *der, size_t len, unsigned char priv[32],
                               unsigned char point[65]);
/* A private key from its DER: an RFC 5915 ECPrivateKey on P-256 with its
 * public key (what sim_euicc_issue writes) built from its numbers
 * (EVP_PKEY_fromdata, about a tenth of the instructions OpenSSL 3.0's
 * decoders take), any other form through d2i_AutoPrivateKey. NULL: not a
 * key. */
EVP_PKEY *sim_private_key_from_der(const unsigned char *der, size_t len);
/* ESIM_OK when |sig| (raw r||s) is |pub|'s signature of |data|, ESIM_ECRYPTO otherwise. */
esim_err sim_ecdsa_verify_raw(EVP_PKEY *pub, const void *data, size_t len, const unsigned char *sig,
                              size_t sig_len, esim_error *err);
/*
 * ECDSA P-256 verification for a key that signs many times (ec_fixed.c): the
 * key's point made the generator of a copy of the group with OpenSSL's
 * precomputed table, so u2·Q costs a table walk instead of a variable-point
 * multiplication (about a third of EVP_DigestVerify's instructions). Built
 * from the uncompressed |point| (checked on the curve); NULL when it is not
 * one. Not for use from two threads at once.
 */
typedef struct sim_ec_fixed sim_ec_fixed;
sim_ec_fixed *sim_ec_fixed_new(const unsigned char point[65]);
void sim_ec_fixed_free(sim_ec_fixed *f); /* NULL ok */
const unsigned char *sim_ec_fixed_point(const sim_ec_fixed *f);
/* 1: |rs| (raw r||s) is the key's signature of the SHA-256 |digest|; 0: it
 * is not; -1: the computation failed (out of memory). */
int sim_ec_fixed_verify(sim_ec_fixed *f, const unsigned char digest[32],
                        const unsigned char rs[64]);
/* The same with a DER ECDSA-Sig-Value, which must be canonical. */
int sim_ec_fixed_verify_der(sim_ec_fixed *f, const unsigned char digest[32],
                            const unsigned char *sig, size_t sig_len);
/*
 * ECDSA P-256 signing by one private key that signs many times (ec_fixed.c):
 * set up once, then each signature is a random k, k·G through OpenSSL's
 * precomputed generator table and the arithmetic modulo n in 64-bit limbs
 * (about three quarters of EVP_PKEY_sign's instructions). Ordinary ECDSA
 * signatures. NULL when |key| is not a P-256 private key (or d is not in
 * [1, n-1]). Not for use from two threads at once.
 */
sim_ec_signer *sim_ec_signer_new(EVP_PKEY *key);
sim_ec_signer *sim_ec_signer_new_raw(const unsigned char d[32]); /* d big-endian */
void sim_ec_signer_free(sim_ec_signer *s);                       /* NULL ok */
/* The signature of the SHA-256 |digest| as raw r||s; false on failure. */
bool sim_ec_signer_sign(sim_ec_signer *s, const unsigned char digest[32], unsigned char rs[64]);
/*
 * The same for a key kept as its bare private scalar |d| (32 bytes,
 * big-endian; a simulated device's identity key): what the signature needs
 * besides d (OpenSSL's objects for k·G, the generator's table) is one set
 * per thread, made at the thread's first use, so a key costs its 32 bytes.
 * false when d is not in [1, n-1] or signing failed.
 */
bool sim_ec_sign_with(const unsigned char d[32], const unsigned char digest[32],
                      unsigned char rs[64]);
/* A new P-256 key pair, as a device makes one for its certificate request:
 * d uniformly random in [1, n-1] (RAND_priv_bytes) and its public point
 * d·G (uncompressed: 0x04 || X || Y) through OpenSSL's constant-time table
 * for the generator. false (d wiped) when randomness or the arithmetic
 * failed. */
bool sim_ec_keygen(unsigned char d[32], unsigned char point[65]);
/* The public point d·G of the private key |d|; false when d is not in
 * [1, n-1]. */
bool sim_ec_public_key(const unsigned char d[32], unsigned char point[65]);
/* An EVP_PKEY for the P-256 key pair (|d|, |point|), for OpenSSL's TLS (a
 * client certificate's key): NULL when the point is not on the curve. The
 * caller frees it. */
EVP_PKEY *sim_p256_key_pair(const unsigned char d[32], const unsigned char point[65]);
/* The DER ECDSA-Sig-Value of raw |rs| (canonical); its length (at most 72). */
size_t sim_ecdsa_raw_to_der(const unsigned char rs[64], unsigned char der[72]);
/* SHA-256 without OpenSSL 3.0's per-call algorithm fetch (SHA256()). */
void sim_sha256(const void *data, size_t len, unsigned char out[32]);
/*
 * ECDSA P-256 verification for any key, given as its uncompressed point
 * (ec_fixed.c): one group for every key and the arithmetic of
 * sim_ec_fixed_verify, where EVP_PKEY_fromdata and EVP_DigestVerify set up
 * each key and each verification anew. Not for use from two threads at
 * once.
 */
typedef struct sim_ec_p256 sim_ec_p256;
sim_ec_p256 *sim_ec_p256_new(void);
void sim_ec_p256_free(sim_ec_p256 *v); /* NULL ok */
/* Whether |point| is an uncompressed point on the curve. */
bool sim_ec_p256_point_ok(sim_ec_p256 *v, const unsigned char point[65]);
/* As sim_ec_fixed_verify, by the key at |point| (0 when it is not a point
 * on the curve). */
int sim_ec_p256_verify(sim_ec_p256 *v, const unsigned char point[65],
                       const unsigned char digest[32], const unsigned char rs[64]);
/* Verifies |leaf| up to the trusted root |ci| through |intermediate| (may be NULL). */
esim_err sim_chain_verify(X509 *ci, X509 *intermediate, X509 *leaf, esim_error *err);
/*
 * Certificates that verified, so a certificate seen again is not parsed and
 * verified again: direct-mapped on the SHA-256 of its DER, a fixed number of
 * slots, each re-verified after 10 minutes. One cache per trust anchor.
 */
typedef struct sim_cert_cache sim_cert_cache;
sim_cert_cache *sim_cert_cache_new(size_t slots);
void sim_cert_cache_free(sim_cert_cache *c); /* NULL ok */
/* The certificate in base64 DER |b64|, verified to chain to |ci| through
 * |intermediate| (NULL: issued by |ci|), from the cache when this certificate
 * verified with this same intermediate. A reference the caller frees, or
 * NULL with *why ESIM_EINVAL (not a certificate) or ESIM_ECRYPTO (does not
 * verify) and |err| saying why. */
X509 *sim_cert_cache_verify(sim_cert_cache *c, const char *b64, X509 *ci, X509 *intermediate,
                            esim_err *why, esim_error *err);
/* The same with the certificate's DER (|len| bytes). */
X509 *sim_cert_cache_verify_der(sim_cert_cache *c, const unsigned char *der, size_t len, X509 *ci,
                                X509 *intermediate, esim_err *why, esim_error *err);
/* The certificate |der| checked against |ci| (its issuer) afresh, as an
 * eUICC checks what the server shows it: nothing of an earlier check is
 * taken again. A P-256 certificate is read in place and checked as the
 * chain's last link is (sim_cert_cache_verify_issued: names, one ECDSA
 * verification by the CI's key, dates, keyUsage, critical extensions, its
 * key on the curve); another goes through X509_verify_cert. Its parse
 * (d2i_X509 of the same bytes) is kept for the next call. A reference the
 * caller frees, or NULL with *why and |err| as sim_cert_cache_verify. */
X509 *sim_cert_cache_check(sim_cert_cache *c, const unsigned char *der, size_t len, X509 *ci,
                           esim_err *why, esim_error *err);
/* The certificate |der| parsed (nothing verified): the cache's own parse
 * of these same bytes when one of its verified entries (or the last
 * sim_cert_cache_check) has this DER (whatever its age), else
 * d2i_X509's. A reference the caller frees, or NULL when it is not DER
 * X.509. */
X509 *sim_cert_cache_parse_der(sim_cert_cache *c, const unsigned char *der, size_t len);
/* How many chains sim_cert_cache_verify(_der) verified (not from the
 * cache), and certificates sim_cert_cache_check checked. */
size_t sim_cert_cache_chain_checks(const sim_cert_cache *c);
/* An end-entity certificate in base64 DER |b64| (a P-256 key, ECDSA-SHA256)
 * issued by |issuer|, which the caller has verified (sim_cert_cache_verify):
 * checked as a chain verifier checks the last link (the issuer is a CA
 * that may sign certificates, the names chain, one ECDSA verification of
 * the certificate by the issuer's key, the validity dates, no critical
 * extension it does not know, keyUsage when present allowing
 * digitalSignature, its key a point on the curve), read in place
 * (cert_view.h) instead of through d2i_X509 and X509_verify_cert.
 * Remembered like the others. True with its public key's uncompressed
 * |point|, the subject's serialNumber in |serial| (|serial_len| bytes
 * with the NUL; "" when it has none) and, when |cert_sha| is not NULL,
 * the SHA-256 of the certificate's DER there (a name for the point: the
 * SM-DP+ keeps the point's table by it), or false with *why and |err| as
 * sim_cert_cache_verify. */
bool sim_cert_cache_verify_issued(sim_cert_cache *c, const char *b64, X509 *issuer, char *serial,
                                  size_t serial_len, unsigned char point[65],
                                  unsigned char cert_sha[32], esim_err *why, esim_error *err);
/* ESIM_OK when |sig| (raw r||s, 64 bytes) is the P-256 signature of |data|
 * by the key at |point| (one sim_cert_cache_verify_issued gave),
 * ESIM_ECRYPTO when it is not (ESIM_ENOMEM: could not compute). */
esim_err sim_cert_cache_verify_point(sim_cert_cache *c, const unsigned char point[65],
                                     const void *data, size_t len, const unsigned char *sig,
                                     size_t sig_len, esim_error *err);
/* ESIM_OK when |sig| (raw r||s) is |signer|'s P-256 signature of |data|
 * (a certificate the caller verified), ESIM_ECRYPTO otherwise: as
 * sim_ecdsa_verify_raw, through a precomputed table (ec_fixed.c) once the
 * same key has signed many times (the SM-DP+'s, at every eUICC). */
esim_err sim_cert_cache_verify_by(sim_cert_cache *c, X509 *signer, const void *data, size_t len,
                                  const unsigned char *sig, size_t sig_len, esim_error *err);
/* DER <-> base64. */
esim_err sim_x509_to_b64(X509 *x, esim_buf *out);
X509 *sim_x509_from_b64(const char *b64, esim_error *err);
esim_err sim_x509_to_der(X509 *x, esim_buf *out);
X509 *sim_x509_from_der(const unsigned char *der, size_t len);

/* ---- sockets (http.c) ---- */

/* The local port a listening socket is bound to; 0 if it cannot be read. */
uint16_t sim_bound_port(int fd);

/* ---- JSON helpers ---- */

/* The string at |key| or NULL when absent or not a string. */
/* What json_loadb(|buf|, |len|, 0, NULL) returns (a new reference, or NULL
 * when it is not JSON), read in one pass when it is an object of the plain
 * subset (json_fast.c: strings of printable ASCII without escapes,
 * integers without sign, fraction or exponent, true, false, null, nesting
 * up to 32), through json_loadb otherwise. */
json_t *sim_json_loadb(const char *buf, size_t len);
/* The one pass alone: NULL for anything outside the plain subset (tests). */
json_t *sim_json_loadb_plain(const char *buf, size_t len);
/* An object of that subset (no reals, strings needing no escape) written
 * into |out| (reset first) exactly as json_dumps(JSON_COMPACT) writes it;
 * false (|out| empty) for anything else. sim_json_dump tries it first. */
bool sim_json_dump_plain(const json_t *o, esim_buf *out);
const char *sim_json_str(const json_t *o, const char *key);
/* Base64 string at |key| decoded into |out|; ESIM_EINVAL names the key. */
esim_err sim_json_b64(const json_t *o, const char *key, esim_buf *out, esim_error *err);
/* Sets |key| to the base64 of |data|. */
esim_err sim_json_set_b64(json_t *o, const char *key, const void *data, size_t len);
/* Compact, key-order-preserving dump into |out| (replaced). */
esim_err sim_json_dump(const json_t *o, esim_buf *out);
/* Writes |o| to |path| crash-safely with |mode|. */
esim_err sim_json_save(const json_t *o, const char *path, unsigned mode, esim_error *err);
/* Reads a JSON object from |path| (at most |max| bytes). */
esim_err sim_json_load(const char *path, size_t max, json_t **out, esim_error *err);

/* Safe string copy that refuses rather than truncates. */
esim_err sim_copy(char *dst, size_t dst_len, const char *src, const char *what, esim_error *err);

/* ---- eUICC internals (euicc.c) ---- */

json_t *sim_euicc_to_json(const sim_euicc *e);
esim_err sim_euicc_from_json(const sim_pki *pki, const json_t *j, sim_euicc **out, esim_error *err);
void sim_euicc_mark_clean(sim_euicc *e);
/* Signs |data| with the eUICC's private key (raw r||s). */
esim_err sim_euicc_sign(const sim_euicc *e, const void *data, size_t len, unsigned char sig[64],
                        esim_error *err);
/* Frees the parsed key sim_euicc_sign keeps (at the end of a device's session). */
void sim_euicc_release_key(sim_euicc *e);
/* Base64 DER of the eUICC and EUM certificates. */
esim_err sim_euicc_cert_b64(const sim_euicc *e, esim_buf *euicc_b64, esim_buf *eum_b64);
/* The CI the eUICC trusts (the PKI's). */
X509 *sim_euicc_trusted_ci(const sim_euicc *e);
/* The SM-DP+ certificate in base64 DER, verified to chain to that CI (the
 * PKI's cache remembers certificates that did); a reference, or NULL. */
X509 *sim_euicc_verify_server_cert(const sim_euicc *e, const char *b64, esim_error *err);
/* A certificate in DER (an eIM's) issued by that CI, verified through the
 * same cache: a fleet's eUICCs check the one eIM certificate once. A
 * reference, or NULL when it is not one or does not verify. */
X509 *sim_euicc_verify_ci_cert_der(const sim_euicc *e, const unsigned char *der, size_t len);
/* A certificate in DER parsed (not verified): the cache's parse of the same
 * bytes when it holds one (sim_cert_cache_parse_der). A reference or NULL. */
X509 *sim_euicc_parse_cert_der(const sim_euicc *e, const unsigned char *der, size_t len);
/* ESIM_OK when |sig| (raw r||s) is the signature of |data| by |cert| (an
 * SM-DP+ certificate sim_euicc_verify_server_cert returned), through the
 * PKI's certificate cache (sim_cert_cache_verify_by). */
esim_err sim_euicc_verify_by(const sim_euicc *e, X509 *cert, const void *data, size_t len,
                             const unsigned char *sig, size_t sig_len);
/* Reallocates the eUICC's certificate from another EUM (tests of a foreign CI). */
esim_err sim_euicc_reissue(sim_euicc *e, const esim_cert *eum, X509 *eum_for_chain,
                           esim_error *err);

/* SGP.32 state (euicc.c), changed by es10.c. sim_euicc_eim_add copies |c|
 * and gives it the next association token (*token): ESIM_EEXIST for a known
 * eimId, ESIM_ETOOBIG when SIM_MAX_EIMS are there, ESIM_EINVAL without an
 * eimId. sim_euicc_eim_update replaces all but the token (ESIM_ENOTFOUND). */
esim_err sim_euicc_eim_add(sim_euicc *e, const sim_eim_info *c, int64_t *token);
esim_err sim_euicc_eim_update(sim_euicc *e, const sim_eim_info *c);
esim_err sim_euicc_eim_delete(sim_euicc *e, const char *eim_id);
/* Records |counter| as the last accepted from |eim_id| (only ever upwards). */
void sim_euicc_eim_accept_counter(sim_euicc *e, const char *eim_id, uint64_t counter);
/* The next sequence number (shared with notifications), used up. */
uint32_t sim_euicc_take_seq(sim_euicc *e);
void sim_euicc_set_auto_enable(sim_euicc *e, bool on, const char *smdp);
bool sim_euicc_auto_enable(const sim_euicc *e);
/* The SM-DP+ address configureAutoEnable set ("" when none or off). */
const char *sim_euicc_auto_enable_smdp(const sim_euicc *e);
/* The eUICC and EUM certificates, DER (made on first use); borrowed. */
esim_err sim_euicc_cert_der(const sim_euicc *e, const esim_buf **euicc, const esim_buf **eum,
                            esim_error *err);

/* ---- device internals ---- */
/* The private key (d, 32 bytes) of the identity sim_device_identity or
 * sim_winpc_identity returned, for TLS client authentication. */
const unsigned char *sim_device_identity_key(const sim_device *d);
const unsigned char *sim_winpc_identity_key(const sim_winpc *pc);
/* Tests: read every server message with libxml2 alone (true), or with the
 * plain-XML scanner first (false, the default), to compare the two; returns
 * how many messages the scanner has read in this process so far. */
size_t sim_winpc_xml_reader_for_tests(bool libxml2_only);
/* Appends the PEM form of the DER certificate |der| to |out|. */
esim_err sim_pem_append(esim_buf *out, const esim_buf *der);
/* ---- DER the simulator writes itself (der.c) ---- */
/* A fresh P-256 key for eUICC |eid| and its certificate from the PKI's EUM:
 * *key_der (RFC 5915), *cert_der and *key (the caller's). */
/* Shrinks |b|'s allocation to its length (and terminator), for buffers kept
 * per device: the encoder's doubling leaves up to twice the room. The old
 * block is cleansed (it may hold a key). Unchanged when out of memory. */
void sim_buf_fit(esim_buf *b);
/* Bytes of heap an eUICC holds beyond its struct (its buffers and arrays at
 * their allocated sizes), for tests of what per-device state keeps. */
size_t sim_euicc_heap_bytes(const sim_euicc *e);
esim_err sim_euicc_issue(const sim_pki *pki, const char *eid, esim_buf *key_der, esim_buf *cert_der,
                         esim_error *err);
/* Appends tag, length and |content| to |out|. */
esim_err sim_der_put(esim_buf *out, unsigned tag, const void *content, size_t len);
/* Reads one TLV with the one-byte |tag| at *p, in strict DER (core/der.h's
 * esim_der_take: lengths definite, in their shortest form, below 2^24): its
 * content, and *p moved past it. False (*p unchanged) when malformed or
 * another tag. */
bool sim_der_read(const unsigned char **p, const unsigned char *end, unsigned tag,
                  const unsigned char **content, size_t *len);
/*
 * A simulated device's identity (an iPhone's SCEP identity, a Windows PC's
 * client certificate), as the device holds it: its own P-256 private key,
 * made when the identity is (as a device makes its key for the SCEP
 * request), and the certificate the PKI's SCEP CA issued for it. 32 bytes
 * and the certificate per device; signing needs nothing more per key
 * (sim_ec_sign_with).
 */
typedef struct {
    unsigned char key[32]; /* d, big-endian; meaningful only with |der| */
    esim_buf der;          /* the certificate, DER; empty: no identity yet */
} sim_identity;
/* A new key and a certificate for |cn| (the UDID or DeviceID) with it:
 * issued by the PKI's SCEP CA, no extensions, valid from an hour ago for a
 * year. Whatever |id| held is replaced (cleared on failure). */
esim_err sim_identity_make(const sim_pki *pki, const char *cn, sim_identity *id, esim_error *err);
/* Forgets the identity (the key wiped, the certificate freed). */
void sim_identity_clear(sim_identity *id);
/* "identity" (base64 DER) and "identity_key" (base64 of d) into |j| when
 * |id| has an identity. */
void sim_identity_to_json(const sim_identity *id, json_t *j);
/* The identity from |j| (written by sim_identity_to_json; neither field:
 * none) into |id|: refused with a message naming |path| when one comes
 * without the other, the key is not a P-256 private key, or the
 * certificate does not hold that key's public key (a file written by a
 * simulator that shared one key between all devices). */
esim_err sim_identity_from_json(const json_t *j, const char *path, sim_identity *id,
                                esim_error *err);
/* The Mdm-Signature of |body|: DER CMS SignedData, detached, with signed
 * attributes (contentType, messageDigest), the identity's certificate and
 * the SCEP CA certificate, ECDSA-SHA256 by the identity's own key. */
esim_err sim_identity_sign(const sim_pki *pki, const sim_identity *id, const void *body, size_t len,
                           esim_buf *out, esim_error *err);

/* ---- Windows PCs inside devsim (winfleet.c) ---- */

typedef struct sim_winfleet sim_winfleet;
typedef struct {
    struct event_base *base;
    sim_http *http; /* shared with devsim; outlives the fleet's requests */
    const sim_pki *pki;
    /* The OMA-DM endpoints, complete: one per instance of the service
     * (1 to 8). Each session goes to the next in turn, all its messages to
     * that one (as a load balancer with session affinity would); one that
     * did not answer at all is skipped a while. */
    const char *const *urls;
    size_t n_urls;
    const char *wns_url;  /* NULL: no push */
    const char *channel;  /* WNS mock delivery channel name */
    const char *data_dir; /* "" or NULL: nothing persisted */
    unsigned poll_ms, max_concurrent;
    uint64_t seed;
    const char *const *smdp_resolve; /* "NAME=HOST:PORT" (checked by devsim) */
    size_t n_smdp_resolve;
} sim_winfleet_config;
esim_err sim_winfleet_new(const sim_winfleet_config *cfg, size_t capacity, sim_winfleet **out,
                          esim_error *err);
/* Makes (or loads from data_dir) the PC for device index |i|. */
esim_err sim_winfleet_add(sim_winfleet *f, unsigned i, esim_error *err);
void sim_winfleet_tick(sim_winfleet *f);
void sim_winfleet_free(sim_winfleet *f); /* saves what changed */
size_t sim_winfleet_count(const sim_winfleet *f);
sim_winpc *sim_winfleet_at(sim_winfleet *f, size_t i);
sim_winpc *sim_winfleet_find(sim_winfleet *f, const char *device_id);
esim_err sim_winfleet_sync(sim_winfleet *f, const char *device_id, esim_error *err);
/* A person's action on a PC (delete-esim only). */
esim_err sim_winfleet_user_action(sim_winfleet *f, const char *device_id, sim_user_action a,
                                  sim_action_outcome *out, esim_error *err);
/* Adds the fleet's counters into |t|. */
void sim_winfleet_stats(const sim_winfleet *f, sim_devsim_stats *t);

/* ---- IoT devices inside devsim (iotfleet.c) ---- */

typedef struct sim_iotfleet sim_iotfleet;
typedef struct {
    struct event_base *base;
    sim_http *http; /* shared with devsim; outlives the fleet's requests */
    const sim_pki *pki;
    const char *pki_dir;  /* where eim.pem is */
    const char *ca_file;  /* trust anchor for https (eIM, SM-DP+, API) */
    const char *eim_url;  /* http[s]://HOST:PORT[/path]; /gsma/rsp2/asn1 added without a path */
    const char *eim_id;   /* NULL: "esim-mdm" */
    const char *api_url;  /* NULL: no registration */
    const char *api_key;  /* NULL: none */
    const char *data_dir; /* "" or NULL: nothing persisted; else DIR/iot/<EID>.json */
    unsigned poll_ms, offline_ms, max_concurrent;
    double offline_share, fail_share;
    double indirect_share; /* share whose downloads go through the eIM (drawn only when > 0) */
    uint64_t seed;
    const char *const *smdp_resolve;
    size_t n_smdp_resolve;
} sim_iotfleet_config;
esim_err sim_iotfleet_new(const sim_iotfleet_config *cfg, size_t capacity, sim_iotfleet **out,
                          esim_error *err);
/* Makes (or loads) IoT device |i| (AddInitialEim on a new eUICC) and arms
 * its first poll. */
esim_err sim_iotfleet_add(sim_iotfleet *f, unsigned i, esim_error *err);
/* Sends the association list to the eIM's admin API (in batches). */
void sim_iotfleet_start(sim_iotfleet *f);
void sim_iotfleet_free(sim_iotfleet *f); /* saves what changed; NULL ok */
size_t sim_iotfleet_count(const sim_iotfleet *f);
sim_euicc *sim_iotfleet_euicc_at(sim_iotfleet *f, size_t i);
long sim_iotfleet_token_at(const sim_iotfleet *f, size_t i);
sim_iotfleet_stats sim_iotfleet_get_stats(const sim_iotfleet *f);

#endif
