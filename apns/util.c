/*
 * util.c — small pieces the APNs client and mock share: URL and listen
 * address parsing, the per-context PRNG used for jitter and fault draws, a
 * string map for token tables, and the names of outcomes and reasons.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <nghttp2/nghttp2.h>

#include "core/internal.h"
#include "apns/internal.h"

/* A function rather than an exported array: the library exports no data. */
int esim_apns_latency_bound_ms(int bucket)
{
    static const int bounds[APNS_LATENCY_BUCKETS - 1] = {1,   2,   5,    10,   20,   50,   100,
                                                         200, 500, 1000, 2000, 5000, 10000};
    return bucket >= 0 && bucket < APNS_LATENCY_BUCKETS - 1 ? bounds[bucket] : -1;
}

const char *esim_apns_outcome_name(apns_outcome o)
{
    switch (o) {
    case APNS_OUTCOME_ACCEPTED:
        return "accepted";
    case APNS_OUTCOME_TOKEN_DEAD:
        return "token_dead";
    case APNS_OUTCOME_RETRY_EXHAUSTED:
        return "retry_exhausted";
    case APNS_OUTCOME_REJECTED:
        return "rejected";
    case APNS_OUTCOME_CREDENTIAL_FAILED:
        return "credential_failed";
    case APNS_OUTCOME_UNREACHABLE:
        return "unreachable";
    case APNS_OUTCOME_CANCELED:
        return "canceled";
    }
    return "unknown";
}

const char *apns_default_reason(int status)
{
    switch (status) {
    case 400:
        return "BadExpirationDate";
    case 403:
        return "Forbidden";
    case 404:
        return "BadPath";
    case 405:
        return "MethodNotAllowed";
    case 410:
        return "Unregistered";
    case 413:
        return "PayloadTooLarge";
    case 429:
        return "TooManyRequests";
    case 500:
        return "InternalServerError";
    case 503:
        return "ServiceUnavailable";
    default:
        return status >= 500 ? "InternalServerError" : "BadRequest";
    }
}

bool apns_token_ok(const char *hex, size_t len)
{
    if (len < 64 || len > 200 || len % 2 != 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isxdigit((unsigned char)hex[i]))
            return false;
    return true;
}

static esim_err parse_port(const char *s, int *port, int min, const char *what, esim_error *err)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0 || v < min || v > 65535)
        return esim_fail(err, ESIM_EINVAL, "%s: port '%s' is not a number from %d to 65535", what,
                         s, min);
    *port = (int)v;
    return ESIM_OK;
}

esim_err apns_url_parse(const char *url, bool *tls, char *host, size_t host_len, int *port,
                        esim_error *err)
{
    if (url == NULL || *url == '\0')
        return esim_fail(err, ESIM_EINVAL, "APNs URL is missing; use https://HOST[:PORT]");
    const char *p;
    if (strncmp(url, "https://", 8) == 0) {
        *tls = true;
        *port = 443;
        p = url + 8;
    } else if (strncmp(url, "http://", 7) == 0) {
        *tls = false;
        *port = 80;
        p = url + 7;
    } else {
        return esim_fail(err, ESIM_EINVAL,
                         "APNs URL '%s' must start with https:// (or http:// for h2c)", url);
    }
    const char *hend;
    const char *rest;
    if (*p == '[') {
        hend = strchr(p, ']');
        if (hend == NULL)
            return esim_fail(err, ESIM_EINVAL, "APNs URL '%s': unclosed '[' in the host", url);
        p++;
        rest = hend + 1;
    } else {
        hend = p + strcspn(p, ":/");
        rest = hend;
    }
    size_t hl = (size_t)(hend - p);
    if (hl == 0 || hl >= host_len)
        return esim_fail(err, ESIM_EINVAL, "APNs URL '%s' has no usable host", url);
    memcpy(host, p, hl);
    host[hl] = '\0';
    for (size_t i = 0; i < hl; i++)
        if (!(isalnum((unsigned char)host[i]) || strchr("-.:", host[i])))
            return esim_fail(err, ESIM_EINVAL, "APNs URL '%s': bad character in the host", url);
    if (*rest == ':') {
        char portbuf[16];
        size_t pl = strcspn(rest + 1, "/");
        if (pl == 0 || pl >= sizeof portbuf)
            return esim_fail(err, ESIM_EINVAL, "APNs URL '%s': bad port", url);
        memcpy(portbuf, rest + 1, pl);
        portbuf[pl] = '\0';
        esim_err e = parse_port(portbuf, port, 1, "APNs URL", err);
        if (e != ESIM_OK)
            return e;
        rest += 1 + pl;
    }
    if (!(*rest == '\0' || strcmp(rest, "/") == 0))
        return esim_fail(err, ESIM_EINVAL, "APNs URL '%s' must not have a path", url);
    return ESIM_OK;
}

esim_err apns_addr_parse(const char *text, struct sockaddr_storage *ss, socklen_t *len,
                         esim_error *err)
{
    if (text == NULL || *text == '\0')
        return esim_fail(err, ESIM_EINVAL, "listen address is empty; use ADDR:PORT");
    char host[64];
    const char *colon;
    const char *h = text;
    size_t hl;
    if (*text == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':')
            return esim_fail(err, ESIM_EINVAL, "listen address '%s': use [IPv6]:PORT", text);
        h = text + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL)
            return esim_fail(err, ESIM_EINVAL, "listen address '%s' has no :PORT", text);
        hl = (size_t)(colon - text);
    }
    if (hl == 0 || hl >= sizeof host)
        return esim_fail(err, ESIM_EINVAL, "listen address '%s' has no usable host", text);
    memcpy(host, h, hl);
    host[hl] = '\0';
    int port = 0;
    esim_err e = parse_port(colon + 1, &port, 0, text, err);
    if (e != ESIM_OK)
        return e;
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        *len = sizeof *in4;
    } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *len = sizeof *in6;
    } else {
        return esim_fail(err, ESIM_EINVAL,
                         "listen address '%s': '%s' is not a numeric IPv4 or IPv6 address", text,
                         host);
    }
    return ESIM_OK;
}

int apns_bound_port(int fd)
{
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
        struct sockaddr_storage ss;
    } u;
    memset(&u, 0, sizeof u);
    socklen_t len = sizeof u;
    if (getsockname(fd, &u.sa, &len) != 0)
        return 0;
    return ntohs(u.sa.sa_family == AF_INET ? u.in4.sin_port : u.in6.sin6_port);
}

/* ---- PRNG ---- */

void apns_rng_seed(apns_rng *r, uint64_t seed)
{
    if (seed == 0 && esim_random_bytes(&seed, sizeof seed) != ESIM_OK)
        seed = (uint64_t)esim_mono_ms();
    r->s = seed ? seed : 0x9e3779b97f4a7c15ULL;
}

uint64_t apns_rng_next(apns_rng *r)
{
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

double apns_rng_unit(apns_rng *r)
{
    return (double)(apns_rng_next(r) >> 11) / 9007199254740992.0;
}

void apns_uuid_fast(apns_rng *r, char out[ESIM_UUID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = apns_rng_next(r), b = apns_rng_next(r);
    unsigned char u[16];
    for (int i = 0; i < 8; i++) {
        u[i] = (unsigned char)(a >> (8 * i));
        u[8 + i] = (unsigned char)(b >> (8 * i));
    }
    u[6] = (unsigned char)((u[6] & 0x0f) | 0x40); /* version 4 */
    u[8] = (unsigned char)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[u[i] >> 4];
        *o++ = hex[u[i] & 15];
    }
    *o = '\0';
}

/* ---- string map ---- */

static size_t hash_key(const char *s)
{
    return (size_t)esim_hash_str(s);
}

void apns_map_init(apns_map *m)
{
    memset(m, 0, sizeof *m);
}

void apns_map_clear(apns_map *m, void (*free_value)(void *))
{
    for (size_t i = 0; i < m->nslots; i++) {
        apns_map_entry *e = m->slots[i];
        while (e) {
            apns_map_entry *next = e->next;
            if (free_value)
                free_value(e->value);
            free(e);
            e = next;
        }
    }
    free(m->slots);
    memset(m, 0, sizeof *m);
}

void *apns_map_get(const apns_map *m, const char *key)
{
    if (m->nslots == 0)
        return NULL;
    for (apns_map_entry *e = m->slots[hash_key(key) % m->nslots]; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e->value;
    return NULL;
}

static esim_err map_grow(apns_map *m)
{
    size_t n = m->nslots ? m->nslots * 2 : 64;
    apns_map_entry **slots = calloc(n, sizeof *slots);
    if (slots == NULL)
        return ESIM_ENOMEM;
    for (size_t i = 0; i < m->nslots; i++) {
        apns_map_entry *e = m->slots[i];
        while (e) {
            apns_map_entry *next = e->next;
            size_t k = hash_key(e->key) % n;
            e->next = slots[k];
            slots[k] = e;
            e = next;
        }
    }
    free(m->slots);
    m->slots = slots;
    m->nslots = n;
    return ESIM_OK;
}

esim_err apns_map_put(apns_map *m, const char *key, void *value, void **old)
{
    if (old)
        *old = NULL;
    if (m->count + 1 > m->nslots && map_grow(m) != ESIM_OK)
        return ESIM_ENOMEM;
    size_t k = hash_key(key) % m->nslots;
    for (apns_map_entry *e = m->slots[k]; e; e = e->next) {
        if (strcmp(e->key, key) == 0) {
            if (old)
                *old = e->value;
            e->value = value;
            return ESIM_OK;
        }
    }
    size_t kl = strlen(key);
    apns_map_entry *e = malloc(sizeof *e + kl + 1);
    if (e == NULL)
        return ESIM_ENOMEM;
    memcpy(e->key, key, kl + 1);
    e->value = value;
    e->next = m->slots[k];
    m->slots[k] = e;
    m->count++;
    return ESIM_OK;
}

/* ---- HTTP/2 output ---- */

bool apns_h2_flush(struct nghttp2_session *h2, struct bufferevent *bev)
{
    uint8_t buf[16384];
    size_t used = 0;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h2, &data);
        if (n < 0)
            return false;
        if (n == 0)
            break;
        if (used + (size_t)n > sizeof buf) {
            if (used && bufferevent_write(bev, buf, used) != 0)
                return false;
            used = 0;
            if ((size_t)n > sizeof buf) {
                if (bufferevent_write(bev, data, (size_t)n) != 0)
                    return false;
                continue;
            }
        }
        memcpy(buf + used, data, (size_t)n);
        used += (size_t)n;
    }
    return used == 0 || bufferevent_write(bev, buf, used) == 0;
}
