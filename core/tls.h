/*
 * tls.h — what every TLS server of esim-mdm sets the same way (the
 * service, the SM-DP+ simulator, the APNs and WNS mocks). Internal: not
 * installed, nothing exported from libesim-mdm.
 */
#ifndef ESIM_CORE_TLS_H
#define ESIM_CORE_TLS_H

#include <stdbool.h>

#include <openssl/ssl.h>

/* The chain |ctx|'s server sends in a full handshake, settled once: its
 * certificate and the intermediates its certificate file gave, never a
 * self-signed root (a client verifies up to a root it already holds; one
 * sent costs it the parsing of a certificate, ≈ 1.5 M instructions in
 * OpenSSL 3.0, for nothing), and never a chain OpenSSL would build for
 * each handshake from |ctx|'s verify store (SSL_MODE_NO_AUTO_CHAIN: that
 * store holds the CAs of client certificates, as on the APNs mock, whose
 * root then went out with every handshake). False when out of memory. */
bool esim_tls_server_chain(SSL_CTX *ctx);

#endif
