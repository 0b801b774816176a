/*
 * handshake.c — TLS handshakes between an OpenSSL client and server in one
 * process over a memory BIO pair (issue 17): what a full handshake, one
 * with a client certificate and a resumed one cost each side, by key
 * exchange group and tickets per handshake. The two sides run in their own
 * functions (client_step, server_step, ...) so that callgrind's inclusive
 * counts split the instructions by side (bench/tls/run.sh); without
 * valgrind it prints the CPU time per handshake, both sides together
 * (cpu_us_per_handshake) and each side's (client_us, server_us).
 *
 * usage: tls_handshake_bench DIR N [--groups LIST] [--server-groups LIST]
 *        [--client-cert] [--resume] [--tickets N] [--no-auto-chain]
 * DIR holds server.pem/server.key (the server's), ca.pem (its CA),
 * dev.pem/dev.key (the client's) and device-ca.pem (their CA).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static SSL_SESSION *kept;
static long client_hellos; /* more than one a handshake: a HelloRetryRequest */

static void count_hellos(int write_p, int version, int content_type, const void *buf, size_t len,
                         SSL *ssl, void *arg)
{
    (void)version;
    (void)ssl;
    (void)arg;
    if (write_p && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
        ((const unsigned char *)buf)[0] == SSL3_MT_CLIENT_HELLO)
        client_hellos++;
}

static int keep_session(SSL *ssl, SSL_SESSION *sess)
{
    (void)ssl;
    SSL_SESSION_free(kept);
    kept = sess;
    return 1;
}

/* Each side in a function of its own, for callgrind's inclusive counts;
 * each counts its calls in its own variable, so that the compiler does not
 * fold the two sides' identical functions into one. Natively each side's
 * thread CPU time is summed around its calls (side_ns), less what the
 * clock itself costs (clock_ns, measured first). */
static volatile long client_calls, server_calls;
static double side_ns[2], clock_ns;
static struct timespec t_in;

static double ns_of(const struct timespec *t)
{
    return (double)t->tv_sec * 1e9 + (double)t->tv_nsec;
}
static void side_in(void)
{
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t_in);
}
static void side_out(int side)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    side_ns[side] += ns_of(&t) - ns_of(&t_in) - clock_ns;
}

__attribute__((noinline)) static int client_step(SSL *c)
{
    client_calls++;
    side_in();
    int r = SSL_do_handshake(c);
    side_out(0);
    return r;
}
__attribute__((noinline)) static int server_step(SSL *s)
{
    server_calls++;
    side_in();
    int r = SSL_do_handshake(s);
    side_out(1);
    return r;
}
__attribute__((noinline)) static SSL *client_new(SSL_CTX *ctx)
{
    client_calls++;
    side_in();
    SSL *c = SSL_new(ctx);
    side_out(0);
    return c;
}
__attribute__((noinline)) static SSL *server_new(SSL_CTX *ctx)
{
    server_calls++;
    side_in();
    SSL *s = SSL_new(ctx);
    side_out(1);
    return s;
}
__attribute__((noinline)) static void client_end(SSL *c)
{
    client_calls++;
    side_in();
    SSL_shutdown(c);
    SSL_free(c);
    side_out(0);
}
__attribute__((noinline)) static void server_end(SSL *s)
{
    server_calls++;
    side_in();
    SSL_shutdown(s);
    SSL_free(s);
    side_out(1);
}
/* The server's first bytes, and the client reading them (the tickets
 * come before them). */
__attribute__((noinline)) static int server_write(SSL *s)
{
    server_calls++;
    side_in();
    int r = SSL_write(s, "ok", 2);
    side_out(1);
    return r;
}
__attribute__((noinline)) static int client_read(SSL *c, char *buf, int len)
{
    client_calls++;
    side_in();
    int r = SSL_read(c, buf, len);
    side_out(0);
    return r;
}

static int usage(void)
{
    fprintf(stderr, "usage: tls_handshake_bench DIR N [--groups LIST] [--server-groups LIST] "
                    "[--client-cert] [--resume] [--tickets N] [--no-auto-chain]\n");
    return 2;
}

static SSL_CTX *sctx, *cctx;

static int fail(const char *what)
{
    fprintf(stderr, "tls_handshake_bench: %s\n", what);
    ERR_print_errors_fp(stderr);
    SSL_SESSION_free(kept);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    const char *dir = argv[1];
    long n = strtol(argv[2], NULL, 10);
    const char *groups = NULL, *server_groups = NULL;
    int client_cert = 0, resume = 0, no_auto_chain = 0;
    long tickets = 1;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--groups") == 0 && i + 1 < argc)
            groups = argv[++i];
        else if (strcmp(argv[i], "--server-groups") == 0 && i + 1 < argc)
            server_groups = argv[++i];
        else if (strcmp(argv[i], "--client-cert") == 0)
            client_cert = 1;
        else if (strcmp(argv[i], "--resume") == 0)
            resume = 1;
        else if (strcmp(argv[i], "--no-auto-chain") == 0)
            no_auto_chain = 1; /* as core/tls.c settles the servers' chains */
        else if (strcmp(argv[i], "--tickets") == 0 && i + 1 < argc)
            tickets = strtol(argv[++i], NULL, 10);
        else
            return usage();
    }
    if (n < 1 || n > 100000 || tickets < 0 || tickets > 16)
        return usage();
    char path[4][1024];
    const char *names[4] = {"server.pem", "server.key", "ca.pem", "device-ca.pem"};
    for (int i = 0; i < 4; i++)
        snprintf(path[i], sizeof path[i], "%s/%s", dir, names[i]);
    char dev[2][1024];
    snprintf(dev[0], sizeof dev[0], "%s/dev.pem", dir);
    snprintf(dev[1], sizeof dev[1], "%s/dev.key", dir);

    sctx = SSL_CTX_new(TLS_server_method());
    cctx = SSL_CTX_new(TLS_client_method());
    if (!sctx || !cctx || SSL_CTX_use_certificate_chain_file(sctx, path[0]) != 1 ||
        SSL_CTX_use_PrivateKey_file(sctx, path[1], SSL_FILETYPE_PEM) != 1)
        return fail("cannot load the server's certificate and key");
    SSL_CTX_set_num_tickets(sctx, (size_t)tickets);
    if (no_auto_chain)
        SSL_CTX_set_mode(sctx, SSL_MODE_NO_AUTO_CHAIN);
    if ((server_groups && SSL_CTX_set1_groups_list(sctx, server_groups) != 1) ||
        (groups && SSL_CTX_set1_groups_list(cctx, groups) != 1))
        return fail("unknown group");
    /* The device simulator's suites, in an iPhone's order. */
    SSL_CTX_set_ciphersuites(cctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                   "TLS_CHACHA20_POLY1305_SHA256");
    SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(cctx, path[2], NULL) != 1)
        return fail("cannot load ca.pem");
    SSL_CTX_set_session_cache_mode(cctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(cctx, keep_session);
    SSL_CTX_set_msg_callback(cctx, count_hellos);
    if (client_cert) {
        SSL_CTX_set_verify(sctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_session_id_context(sctx, (const unsigned char *)"bench", 5);
        if (SSL_CTX_load_verify_locations(sctx, path[3], NULL) != 1 ||
            SSL_CTX_use_certificate_file(cctx, dev[0], SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_use_PrivateKey_file(cctx, dev[1], SSL_FILETYPE_PEM) != 1)
            return fail("cannot load the client's certificate and key");
    }

    /* What a clock pair costs, taken off every timed call. */
    for (int i = 0; i < 10000; i++) {
        side_in();
        side_out(0);
    }
    clock_ns = side_ns[0] / 10000;
    side_ns[0] = 0;

    long reused = 0;
    const char *group = "?";
    struct timespec t0, t1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    for (long i = 0; i < n; i++) {
        SSL *c = client_new(cctx), *s = server_new(sctx);
        BIO *cb = NULL, *sb = NULL;
        if (!c || !s || BIO_new_bio_pair(&cb, 0, &sb, 0) != 1) {
            SSL_free(c);
            SSL_free(s);
            return fail("out of memory");
        }
        SSL_set_bio(c, cb, cb);
        SSL_set_bio(s, sb, sb);
        SSL_set_connect_state(c);
        SSL_set_accept_state(s);
        SSL_set_tlsext_host_name(c, "localhost");
        SSL_set1_host(c, "localhost");
        if (resume && kept)
            SSL_set_session(c, kept);
        int done_c = 0, done_s = 0;
        for (int round = 0; round < 16 && !(done_c && done_s); round++) {
            done_c = done_c || client_step(c) == 1;
            done_s = done_s || server_step(s) == 1;
        }
        char buf[8];
        if (!done_c || !done_s || SSL_get_verify_result(c) != X509_V_OK || server_write(s) != 2 ||
            client_read(c, buf, sizeof buf) != 2) {
            SSL_free(c);
            SSL_free(s);
            return fail("a handshake did not complete");
        }
        reused += SSL_session_reused(c);
        const char *g = SSL_group_to_name(c, SSL_get_negotiated_group(c));
        group = g ? g : "?";
        client_end(c);
        server_end(s);
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / 1e3 /
                (double)n;
    printf("handshakes %ld resumed %ld hello_retries %ld group %s cpu_us_per_handshake %.1f "
           "client_us %.1f server_us %.1f\n",
           n, reused, client_hellos - n, group, us, side_ns[0] / 1e3 / (double)n,
           side_ns[1] / 1e3 / (double)n);
    SSL_SESSION_free(kept);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    return 0;
}
