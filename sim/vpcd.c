/*
 * vpcd.c — puts a sim_card into the reader of vsmartcard's vpcd (the PC/SC
 * driver pcscd loads): the card side of its socket protocol, a TCP client
 * that answers each framed APDU and the power/ATR controls.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sim/sim_internal.h"

/* vpcd's framing: every message is a 2-byte big-endian length then that
 * many bytes. A 1-byte message is a control. */
enum { VPCD_OFF = 0, VPCD_ON = 1, VPCD_RESET = 2, VPCD_ATR = 4 };

static int vpcd_connect(const char *host, uint16_t port)
{
    char svc[8];
    snprintf(svc, sizeof svc, "%u", (unsigned)port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, svc, &hints, &res) != 0)
        return -1;
    int fd = -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

static bool read_full(int fd, uint8_t *p, size_t n)
{
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

static bool send_msg(int fd, const uint8_t *data, size_t len)
{
    if (len > 0xFFFF)
        return false;
    uint8_t hdr[2] = {(uint8_t)(len >> 8), (uint8_t)len};
    const uint8_t *parts[2] = {hdr, data};
    size_t lens[2] = {2, len};
    for (int i = 0; i < 2; i++) {
        const uint8_t *p = parts[i];
        size_t n = lens[i];
        while (n) {
            ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return false;
            p += w;
            n -= (size_t)w;
        }
    }
    return true;
}

/* Serves one connection until vpcd closes it or *stop is set. */
static esim_err serve(int fd, sim_card *c, const sim_vpcd_opts *o, esim_error *err)
{
    static const size_t max = 0xFFFF;
    uint8_t *msg = malloc(max);
    esim_buf rsp = {0};
    esim_err rc = msg ? ESIM_OK : esim_fail(err, ESIM_ENOMEM, "out of memory");
    while (rc == ESIM_OK && !(o->stop && *o->stop)) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int n = poll(&pfd, 1, 200);
        if (n < 0 && errno != EINTR)
            rc = esim_fail(err, ESIM_EIO, "poll: %s", strerror(errno));
        if (n <= 0)
            continue;
        uint8_t hdr[2];
        if (!read_full(fd, hdr, 2))
            break; /* vpcd went away (pcscd stopped): the caller reconnects */
        size_t len = (size_t)hdr[0] << 8 | hdr[1];
        if (!read_full(fd, msg, len))
            break;
        if (len == 1) {
            size_t atr_len;
            const uint8_t *atr = sim_card_atr(&atr_len);
            if (msg[0] == VPCD_ATR) {
                if (!send_msg(fd, atr, atr_len))
                    break;
            } else if (msg[0] == VPCD_OFF || msg[0] == VPCD_ON || msg[0] == VPCD_RESET) {
                sim_card_reset(c);
            }
            continue;
        }
        esim_buf_reset(&rsp);
        rc = sim_card_apdu(c, msg, len, &rsp, err);
        if (rc == ESIM_OK && !send_msg(fd, rsp.data, rsp.len))
            break;
        if (rc == ESIM_OK && o->after_apdu)
            o->after_apdu(o->arg);
    }
    free(msg);
    esim_buf_free(&rsp);
    return rc;
}

esim_err sim_vpcd_run(sim_card *c, const sim_vpcd_opts *o, esim_error *err)
{
    if (!c || !o || !o->host)
        return esim_fail(err, ESIM_EINVAL, "sim_vpcd_run needs a card and a host");
    while (!(o->stop && *o->stop)) {
        int fd = vpcd_connect(o->host, o->port);
        if (fd < 0) { /* vpcd not listening (yet): pcscd loads it on start */
            poll(NULL, 0, 200);
            continue;
        }
        if (o->on_connect)
            o->on_connect(o->arg, true);
        sim_card_reset(c);
        esim_err rc = serve(fd, c, o, err);
        close(fd);
        if (o->on_connect)
            o->on_connect(o->arg, false);
        if (rc != ESIM_OK)
            return rc;
    }
    return ESIM_OK;
}
