/*
 * curl_loop.h — libcurl's multi interface on the service's libevent loop
 * (private to service/). Webhooks and WNS pushes both send HTTP requests
 * without ever blocking a device: each owns one curl_loop, adds its easy
 * handles to |multi|, and reads their outcome in |finished|, called after
 * every bit of work libcurl did.
 */
#ifndef ESIM_SERVICE_CURL_LOOP_H
#define ESIM_SERVICE_CURL_LOOP_H

#include <curl/curl.h>
#include <event2/event.h>
#include <openssl/x509.h>

typedef struct curl_loop {
    CURLM *multi;
    struct event_base *base;
    struct event *timer_ev;
    void (*finished)(void *ctx); /* read curl_multi_info_read's messages */
    void *ctx;
} curl_loop;

/* Sets |l| up on |base|; 0, or -1 when out of memory (curl_loop_free then). */
int curl_loop_init(curl_loop *l, struct event_base *base, void (*finished)(void *ctx), void *ctx);

/* Frees the multi handle (its sockets' events go with it) and the timer. */
void curl_loop_free(curl_loop *l);

/* The system's trust store as OpenSSL finds it by default (its CA bundle
 * file and hashed CA directory; SSL_CERT_FILE and SSL_CERT_DIR honoured):
 * *|kept| when it holds one already, else loaded now into *|kept|, so that
 * every client of one service (WNS, the eIM's SM-DP+ relay) verifies
 * against one store loaded once. NULL (and *|kept| still NULL) when out of
 * memory. The owner of *|kept| frees it with X509_STORE_free after every
 * connection that used it. */
X509_STORE *curl_loop_system_store(X509_STORE **kept);

/* The CA |e| checks its server against: the file |ca_file| alone when
 * given (no CA directory beside it, so curl keeps the file's parsed store
 * in the multi handle for its next connections instead of parsing it again
 * for each: ≈ 1.6 M instructions a connection for the test CA); else
 * |system_store| (which must outlive the transfer) in place of curl's own
 * CA file and directory: curl reads and parses those again for each new
 * connection when both are set, as they are by default (Debian: the whole
 * bundle, 144 certificates, ≈ 240 M instructions). Peer verification stays
 * on. When this curl cannot take the store (not built on OpenSSL) its own
 * defaults stay. */
void curl_loop_set_ca(CURL *e, const char *ca_file, X509_STORE *system_store);

#endif
