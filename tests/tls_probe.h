/*
 * tls_probe.h — one TLS connection to a server on loopback, made as a
 * client makes it (the server's chain verified, its tickets kept), counting
 * what the server sends in the handshake: the certificates of its chain and
 * its session tickets. Blocking: for a server on another thread or process,
 * or run on a thread of its own (tls_probe_thread) while the test runs the
 * server's loop.
 */
#ifndef ESIM_TESTS_TLS_PROBE_H
#define ESIM_TESTS_TLS_PROBE_H

#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <openssl/ssl.h>

typedef struct {
    int port;
    const char *ca;            /* the server's CA (PEM file) */
    const char *cert, *key;    /* a client certificate and key (PEM files), or NULL */
    const unsigned char *alpn; /* ALPN protocols in wire format, or NULL */
    unsigned alpn_len;
    SSL_SESSION *sess; /* in: the session to resume, taken (NULL: a full
                        * handshake); out: the newest ticket's, the caller's */
    /* what came back */
    bool ok;      /* the handshake completed and the server's chain verified */
    bool resumed; /* it resumed |sess| */
    int certs;    /* certificates the server sent, its own included (0 when resumed) */
    int tickets;  /* session tickets the server sent */
    /* in: read the whole answer (the request says Connection: close) and
     * count its records; false: only its first bytes */
    bool whole_answer;
    int answer_records; /* out: application-data records received */
    size_t answer_len;  /* out: their bytes */
    bool done;          /* set last, by the thread that ran it */
} tls_probe;

/* Counts the application-data records received (TLS 1.3: by the inner
 * content type), for tls_probe's whole_answer. */
static void tls_probe_msg(int write_p, int version, int content_type, const void *buf, size_t len,
                          SSL *ssl, void *arg)
{
    (void)version;
    (void)ssl;
    tls_probe *p = arg;
    if (!write_p && content_type == SSL3_RT_INNER_CONTENT_TYPE && len == 1 &&
        ((const unsigned char *)buf)[0] == SSL3_RT_APPLICATION_DATA)
        p->answer_records++;
}

static int tls_probe_ticket(SSL *ssl, SSL_SESSION *sess)
{
    tls_probe *p = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    p->tickets++;
    SSL_SESSION_free(p->sess);
    p->sess = sess;
    return 1; /* kept */
}

/* Connects to |p|->port, handshakes, sends a short HTTP/1.1 request (an
 * HTTP/2 server refuses it) and reads the first bytes of the answer, for at
 * most 3 seconds. */
static inline void tls_probe_run(tls_probe *p)
{
    p->ok = p->resumed = false;
    p->certs = p->tickets = p->answer_records = 0;
    p->answer_len = 0;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_SESSION *resume = p->sess;
    p->sess = NULL;
    int fd = -1;
    SSL *ssl = NULL;
    if (!ctx || SSL_CTX_load_verify_locations(ctx, p->ca, NULL) != 1)
        goto out;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_app_data(ctx, p);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, tls_probe_ticket);
    if (p->cert && (SSL_CTX_use_certificate_chain_file(ctx, p->cert) != 1 ||
                    SSL_CTX_use_PrivateKey_file(ctx, p->key, SSL_FILETYPE_PEM) != 1))
        goto out;
    if (p->alpn && SSL_CTX_set_alpn_protos(ctx, p->alpn, p->alpn_len) != 0)
        goto out;
    fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 3};
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        connect(fd, (struct sockaddr *)&a, sizeof a) != 0 || !(ssl = SSL_new(ctx)) ||
        SSL_set_fd(ssl, fd) != 1)
        goto out;
    if (resume)
        SSL_set_session(ssl, resume);
    if (SSL_connect(ssl) != 1 || SSL_get_verify_result(ssl) != X509_V_OK)
        goto out;
    p->ok = true;
    p->resumed = SSL_session_reused(ssl) == 1;
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
    p->certs = chain ? sk_X509_num(chain) : 0;
    static const char get[] = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    SSL_write(ssl, get, (int)sizeof get - 1);
    /* The first bytes of the answer (the tickets come before them), then
     * close_notify: a connection that ends without it makes OpenSSL's
     * client drop the session (not resumable). */
    char buf[4096];
    if (p->whole_answer) {
        SSL_set_msg_callback(ssl, tls_probe_msg);
        SSL_set_msg_callback_arg(ssl, p);
        int n;
        while ((n = SSL_read(ssl, buf, sizeof buf)) > 0)
            p->answer_len += (size_t)n;
    } else if (SSL_read(ssl, buf, sizeof buf) > 0) {
        SSL_shutdown(ssl);
    }
out:
    SSL_free(ssl);
    if (fd >= 0)
        close(fd);
    SSL_CTX_free(ctx);
    SSL_SESSION_free(resume);
    p->done = true;
}

/* tls_probe_run for pthread_create. */
static inline void *tls_probe_thread(void *arg)
{
    tls_probe_run(arg);
    return NULL;
}

#endif
