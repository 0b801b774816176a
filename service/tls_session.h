/*
 * tls_session.h — the service's server-side TLS session table: a session
 * ID to the session's DER (OpenSSL's SSL_SESSION encoding without the peer
 * certificate, ≈ 200 bytes), bounded in count, oldest out first. The TLS
 * callbacks that fill it and read it are in auth.c (docs/security.md, "TLS
 * session resumption with client certificates"). Internal to the service;
 * declared apart so its unit test can drive it without a server.
 */
#ifndef ESIM_SERVICE_TLS_SESSION_H
#define ESIM_SERVICE_TLS_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tls_sessions tls_sessions;

/* A table of at most |max| sessions (≥ 1); NULL when out of memory. */
tls_sessions *tls_sessions_new(size_t max);
void tls_sessions_free(tls_sessions *t);
/* Forgets every session. */
void tls_sessions_clear(tls_sessions *t);
size_t tls_sessions_count(const tls_sessions *t);

/* Keeps |der| under |id| (1 to 32 bytes) until |expires_ms|, replacing
 * what that ID had. Sessions past their expiry at |now_ms| go first; when
 * the table is full the oldest goes. False when out of memory or the input
 * is unusable (nothing changes then). */
bool tls_sessions_put(tls_sessions *t, const unsigned char *id, size_t id_len,
                      const unsigned char *der, size_t der_len, int64_t expires_ms, int64_t now_ms);

/* The DER kept under |id| and not expired at |now_ms|, or NULL. The span
 * stays valid until the table next changes. */
const unsigned char *tls_sessions_get(tls_sessions *t, const unsigned char *id, size_t id_len,
                                      int64_t now_ms, size_t *der_len);

/* Forgets the session under |id|, if any. */
void tls_sessions_remove(tls_sessions *t, const unsigned char *id, size_t id_len);

#endif
