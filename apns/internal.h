/*
 * internal.h — what the apns/ files share and nobody else sees: URL and
 * address parsing, the TLS contexts, provider-token (JWT) signing and
 * checking, a small PRNG, a string map, and APNs reason tables.
 */
#ifndef ESIM_APNS_INTERNAL_H
#define ESIM_APNS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "apns/apns.h"

/* ---- parsing ---- */

/* "https://host[:port][/]" or "http://host[:port][/]". |host| gets the host
 * without brackets. */
esim_err apns_url_parse(const char *url, bool *tls, char *host, size_t host_len, int *port,
                        esim_error *err);

/* "1.2.3.4:PORT" or "[::1]:PORT" into a socket address (numeric only). */
esim_err apns_addr_parse(const char *text, struct sockaddr_storage *ss, socklen_t *len,
                         esim_error *err);

/* The local port of a bound socket, or 0 when it cannot be read. */
int apns_bound_port(int fd);

/* Token check shared by client and mock: hex, even, 64..200 digits. */
bool apns_token_ok(const char *hex, size_t len);

/* ---- PRNG (xorshift64*; per context, no global state) ---- */

typedef struct {
    uint64_t s;
} apns_rng;

void apns_rng_seed(apns_rng *r, uint64_t seed); /* seed 0: from OpenSSL random */
uint64_t apns_rng_next(apns_rng *r);
double apns_rng_unit(apns_rng *r); /* [0, 1) */
/* A version-4 UUID (lowercase) drawn from |r|: unique, not secret. Cheaper
 * than esim_uuid_new(), which asks OpenSSL (a getpid() call and a DRBG
 * round) each time. */
void apns_uuid_fast(apns_rng *r, char out[ESIM_UUID_LEN + 1]);

/* ---- string map (open hashing, keys copied) ---- */

typedef struct apns_map_entry {
    struct apns_map_entry *next;
    void *value;
    char key[];
} apns_map_entry;

typedef struct {
    apns_map_entry **slots;
    size_t nslots;
    size_t count;
} apns_map;

void apns_map_init(apns_map *m);
/* Frees every entry; |free_value| (may be NULL) is called on each value. */
void apns_map_clear(apns_map *m, void (*free_value)(void *));
void *apns_map_get(const apns_map *m, const char *key);
/* Inserts or replaces; the old value (if any) is returned in *old. */
esim_err apns_map_put(apns_map *m, const char *key, void *value, void **old);

/* ---- TLS ---- */

/* Client context: TLS 1.2+, ALPN h2, server verified against |ca_path|
 * (NULL: system store), client credential from PEM or PKCS#12 (all NULL:
 * none). On success *topic_out (if not NULL, size topic_len) receives the
 * certificate subject UID, or "" when absent. */
esim_err apns_tls_client_ctx(const char *ca_path, const char *cert_path, const char *key_path,
                             const char *p12_path, const char *p12_password, SSL_CTX **out,
                             char *topic_out, size_t topic_len, esim_error *err);

/* Server context with ALPN h2; |client_ca| NULL: no client certificates. */
esim_err apns_tls_server_ctx(const char *cert_path, const char *key_path, const char *client_ca,
                             SSL_CTX **out, esim_error *err);

/* ---- provider tokens ---- */

/* Loads a P-256 private key (.p8 PEM) for signing. */
esim_err apns_jwt_load_key(const char *p8_path, EVP_PKEY **out, esim_error *err);
/* Loads a public key (PEM) or private key (.p8) for checking. */
esim_err apns_jwt_load_verify_key(const char *path, EVP_PKEY **out, esim_error *err);
/* "<b64url header>.<b64url claims>.<b64url r||s>" into |out| (replaced). */
esim_err apns_jwt_sign(EVP_PKEY *key, const char *key_id, const char *team_id, int64_t iat_s,
                       esim_buf *out, esim_error *err);

typedef enum {
    APNS_JWT_OK = 0,
    APNS_JWT_MALFORMED, /* not three parts, bad JSON, wrong alg, no kid/iss/iat */
    APNS_JWT_BAD_SIGNATURE,
    APNS_JWT_EXPIRED, /* iat older than one hour */
} apns_jwt_check;

/* Checks shape, then (|key| not NULL) the signature, then age against
 * |now_s|. */
apns_jwt_check apns_jwt_verify(const char *jwt, size_t len, EVP_PKEY *key, int64_t now_s);

/* base64url without padding, appended to |out|. */
esim_err apns_b64url_append(esim_buf *out, const unsigned char *data, size_t len);

/* ---- HTTP/2 output ---- */

struct bufferevent;
struct nghttp2_session;

/* Moves everything nghttp2 wants to send into |bev|, coalesced into writes
 * of up to 16 KiB: a TLS bufferevent turns every write into its own TLS
 * record and system call, so writing frame by frame would cost one of each
 * per HTTP/2 frame. False on a session or buffer error. */
bool apns_h2_flush(struct nghttp2_session *h2, struct bufferevent *bev);

/* ---- APNs reasons ---- */

/* The usual reason for a status the mock injects ("TooManyRequests"). */
const char *apns_default_reason(int status);

#endif
