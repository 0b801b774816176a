/*
 * sim_test.h — helpers the simulator tests share: temporary directories
 * (mkdtemp, removed afterwards), a test PKI per test program, and running a
 * libevent loop until an asynchronous answer arrives.
 */
#ifndef ESIM_TESTS_SIM_SIM_TEST_H
#define ESIM_TESTS_SIM_SIM_TEST_H

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <jansson.h>

#include "sim/sim_internal.h"

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static inline void st_rmrf(const char *dir)
{
    if (dir && *dir)
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static inline char *st_tempdir(void)
{
    char tmpl[] = "/tmp/esim-simtest-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

/* A test file's scratch directory (*dir) with the simulators' PKI in
 * DIR/pki (*pki): 0, or -1 with the reason on standard error. */
static inline int st_pki_open(char **dir, sim_pki **pki)
{
    *dir = st_tempdir();
    char pkidir[512];
    snprintf(pkidir, sizeof pkidir, "%s/pki", *dir ? *dir : "/nonexistent");
    esim_error err;
    if (!*dir || sim_pki_open(pkidir, pki, &err) != ESIM_OK) {
        fprintf(stderr, "pki: %s\n", *dir ? err.msg : "no temporary directory");
        return -1;
    }
    return 0;
}

/* Frees what st_pki_open made and removes the directory. */
static inline void st_pki_close(char **dir, sim_pki **pki)
{
    sim_pki_free(*pki);
    *pki = NULL;
    if (*dir)
        st_rmrf(*dir);
    free(*dir);
    *dir = NULL;
}

/* One asynchronous HTTP exchange run to completion. */
typedef struct {
    bool done;
    esim_err err;
    long status;
    esim_buf body;
} st_reply;

static inline void st_reply_cb(void *arg, sim_http_response *r)
{
    st_reply *w = arg;
    w->done = true;
    w->err = r->err;
    w->status = r->status;
    esim_buf_reset(&w->body);
    esim_buf_append(&w->body, r->body.data ? r->body.data : (const unsigned char *)"", r->body.len);
}

static inline void st_run_until(struct event_base *base, const bool *done)
{
    int64_t start = esim_mono_ms();
    while (!*done && esim_mono_ms() - start < 30000)
        event_base_loop(base, EVLOOP_ONCE);
}

/* Sends |method| |url| with |body| (may be NULL; not consumed) and |headers|,
 * waits, and returns the answer parsed as JSON (NULL if not JSON). */
static inline json_t *st_request(struct event_base *base, sim_http *h, const char *method,
                                 const char *url, const char *ca, const json_t *body,
                                 const char *const *headers, size_t n_headers, long *status)
{
    st_reply w = {0};
    char *txt = body ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    sim_http_request req = {.method = method,
                            .url = url,
                            .headers = headers,
                            .n_headers = n_headers,
                            .body = txt,
                            .body_len = txt ? strlen(txt) : 0,
                            .ca_file = ca};
    if (sim_http_send(h, &req, st_reply_cb, &w, NULL) != ESIM_OK) {
        free(txt);
        return NULL;
    }
    free(txt);
    st_run_until(base, &w.done);
    if (status)
        *status = w.err == ESIM_OK ? w.status : -1;
    json_t *j = w.body.len ? json_loadb((const char *)w.body.data, w.body.len, 0, NULL) : NULL;
    esim_buf_free(&w.body);
    return j;
}

/* An EID made valid from |n|. */
static inline void st_eid(unsigned n, char eid[ESIM_EID_LEN + 1])
{
    snprintf(eid, ESIM_EID_LEN + 1, "8904903200000000000000%08u00", n);
    esim_eid_set_check_digits(eid, NULL);
}

/* An ICCID made valid from |n|. */
static inline void st_iccid(unsigned n, char iccid[SIM_ICCID_MAX + 1])
{
    snprintf(iccid, SIM_ICCID_MAX + 1, "8901260%012u0", n);
    esim_iccid_set_check_digit(iccid, NULL);
}

/* A server's OMA-DM message to the simulated PC |device_id| at server
 * |url|, in session |sid|: the Status of the PC's SyncHdr, then |cmds|,
 * then <Final/> when |final|. Into |m| (replaced). */
static inline esim_err st_winpc_server_msg(esim_buf *m, const char *url, const char *sid,
                                           unsigned msg_id, const char *device_id, const char *cmds,
                                           bool final)
{
    esim_buf_reset(m);
    return esim_buf_printf(m,
                           "<SyncML xmlns=\"SYNCML:SYNCML1.2\"><SyncHdr><VerDTD>1.2</VerDTD>"
                           "<VerProto>DM/1.2</VerProto><SessionID>%s</SessionID><MsgID>%u</MsgID>"
                           "<Target><LocURI>%s</LocURI></Target><Source><LocURI>%s</LocURI>"
                           "</Source></SyncHdr><SyncBody><Status><CmdID>1</CmdID><MsgRef>1"
                           "</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd><Data>200</Data>"
                           "</Status>%s%s</SyncBody></SyncML>",
                           sid, msg_id, device_id, url, cmds, final ? "<Final/>" : "");
}

/* The connections a server running in this process accepted on TCP |port|
 * (IPv4): how many are open now; *without_nodelay counts those with
 * Nagle's algorithm on (whose answers wait for the client's delayed ACK). */
static inline size_t st_accepted_on(uint16_t port, size_t *without_nodelay)
{
    size_t n = 0;
    *without_nodelay = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        int fd = atoi(e->d_name);
        struct sockaddr_in local, peer;
        socklen_t ll = sizeof local, pl = sizeof peer;
        if (fd == dirfd(d) || getsockname(fd, (struct sockaddr *)&local, &ll) != 0 ||
            local.sin_family != AF_INET || ntohs(local.sin_port) != port ||
            getpeername(fd, (struct sockaddr *)&peer, &pl) != 0)
            continue; /* not a socket of |port|, or its listener */
        int on = 0;
        socklen_t ol = sizeof on;
        n++;
        if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &ol) != 0 || !on)
            (*without_nodelay)++;
    }
    closedir(d);
    return n;
}

#endif
