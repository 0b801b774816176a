/*
 * replay.c — signed device requests must not be replayable. What a device
 * signs carries no nonce (an Idle is byte-for-byte the same every time),
 * but the CMS signature of an Mdm-Signature carries a signingTime among its
 * signed attributes (OpenSSL and Apple's CMS both add one), which the
 * signature covers and nobody without the device's key can change. So, per
 * device:
 *
 *  - a signature signed more than replay_window_ms away from the service's
 *    clock is refused (stale), and so is one signed more than
 *    SVC_REPLAY_REORDER_MS before the newest this device sent: an old
 *    TokenUpdate or CheckOut cannot be played back once the device spoke
 *    again;
 *  - the same message signed at the same second as one already taken, from
 *    another IP address, is a duplicate. A duplicate check-in is answered
 *    200 and does nothing (done again it could only undo what came after
 *    it). A duplicate result is recorded (a second answer is an anomaly, a
 *    second Idle nothing) but the answer hands out no command, which would
 *    otherwise go to whoever replayed the device's Idle; the device is
 *    pushed instead, so a real device that did send it twice in one second
 *    comes back with a fresh signature. From the address the original came
 *    from it is taken as the device itself polling again (test rigs and
 *    simulators do, within a second, on new connections): behind a proxy
 *    that hides devices' addresses this leaves the signing-time checks
 *    alone to stand against replays.
 *
 * The memory is the service's, bounded per device (SVC_REPLAY_RECENT
 * messages) and dropped once a device has been quiet for the window.
 * Without TLS client certificates (mtls, where the TLS session itself makes
 * a capture useless) this is the defence; what remains is in
 * docs/security.md, "Replays".
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "service/service_internal.h"

static size_t seen_index(const char *udid)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)udid; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h % SVC_BUCKETS;
}

static uint64_t body_key(esim_service *svc, const void *body, size_t len)
{
    unsigned char sha[SHA256_DIGEST_LENGTH];
    svc_sha256(svc, body, len, sha);
    uint64_t k;
    memcpy(&k, sha, sizeof k);
    return k;
}

svc_replay_verdict replay_check(esim_service *svc, const char *udid, int64_t signed_at,
                                const void *body, size_t len, uint64_t origin, int64_t now,
                                esim_error *err)
{
    int64_t window = svc->cfg.replay_window_ms;
    if (window <= 0 || svc->cfg.device_auth != ESIM_DEVICE_AUTH_SIGNATURE)
        return SVC_REPLAY_FRESH;
    if (signed_at == 0) {
        svc->m.signatures_without_time++;
        if (!svc->cfg.require_signing_time)
            return SVC_REPLAY_FRESH;
        esim_fail(err, ESIM_EAUTH,
                  "the Mdm-Signature carries no signing time, which this service requires");
        return SVC_REPLAY_STALE;
    }
    if (signed_at < now - window || signed_at > now + window) {
        esim_fail(err, ESIM_EAUTH,
                  "the Mdm-Signature was made %lld s %s the service's clock, more than the %lld s "
                  "allowed: a replayed request, or the device's clock is wrong",
                  (long long)llabs((signed_at - now) / 1000),
                  signed_at < now ? "behind" : "ahead of", (long long)(window / 1000));
        return SVC_REPLAY_STALE;
    }
    size_t i = seen_index(udid);
    svc_seen *s = svc->seen[i];
    while (s && strcmp(s->udid, udid) != 0)
        s = s->next;
    uint64_t key = body_key(svc, body, len);
    if (s) {
        if (signed_at <= s->floor_ms || signed_at < s->newest_ms - SVC_REPLAY_REORDER_MS) {
            esim_fail(err, ESIM_EAUTH,
                      "the Mdm-Signature was made before messages this device sent since: a "
                      "replayed request");
            return SVC_REPLAY_STALE;
        }
        for (size_t k = 0; k < s->n_recent; k++)
            if (s->recent[k].at == signed_at && s->recent[k].key == key)
                return origin && s->recent[k].origin == origin ? SVC_REPLAY_FRESH
                                                               : SVC_REPLAY_DUPLICATE;
    } else {
        s = calloc(1, sizeof *s);
        if (!s)
            return SVC_REPLAY_FRESH; /* out of memory is not the device's fault */
        snprintf(s->udid, sizeof s->udid, "%s", udid);
        s->next = svc->seen[i];
        svc->seen[i] = s;
    }
    /* Remember it; what falls out of the memory raises the floor, so it
     * can never come back. The memory grows first, up to its bound (out of
     * memory, it stays as it is and the oldest falls out sooner). */
    if (s->n_recent == s->cap_recent && s->cap_recent < SVC_REPLAY_RECENT) {
        size_t cap = s->cap_recent ? (size_t)s->cap_recent * 2 : SVC_REPLAY_FIRST;
        svc_seen_msg *r = realloc(s->recent, cap * sizeof *r);
        if (r) {
            s->recent = r;
            s->cap_recent = (uint8_t)cap;
        }
    }
    if (s->cap_recent == 0)
        return SVC_REPLAY_FRESH; /* out of memory is not the device's fault */
    if (s->n_recent == s->cap_recent) {
        size_t oldest = 0;
        for (size_t k = 1; k < s->n_recent; k++)
            if (s->recent[k].at < s->recent[oldest].at)
                oldest = k;
        if (s->recent[oldest].at > s->floor_ms)
            s->floor_ms = s->recent[oldest].at;
        s->recent[oldest] = s->recent[--s->n_recent];
    }
    s->recent[s->n_recent].at = signed_at;
    s->recent[s->n_recent].origin = origin;
    s->recent[s->n_recent++].key = key;
    if (signed_at > s->newest_ms)
        s->newest_ms = signed_at;
    return SVC_REPLAY_FRESH;
}

bool replay_push_allowed(esim_service *svc, const char *udid, int64_t now)
{
    svc_seen *s = svc->seen[seen_index(udid)];
    while (s && strcmp(s->udid, udid) != 0)
        s = s->next;
    if (!s || now - s->pushed_ms < 1000)
        return false;
    s->pushed_ms = now;
    return true;
}

void replay_prune(esim_service *svc, int64_t now)
{
    for (size_t i = 0; i < SVC_BUCKETS; i++) {
        svc_seen **pp = &svc->seen[i];
        while (*pp) {
            svc_seen *s = *pp;
            /* Anything it could refuse is outside the window by now. */
            if (s->newest_ms < now - svc->cfg.replay_window_ms - SVC_REPLAY_REORDER_MS) {
                *pp = s->next;
                free(s->recent);
                free(s);
            } else {
                pp = &s->next;
            }
        }
    }
}

void replay_free(esim_service *svc)
{
    for (size_t i = 0; i < SVC_BUCKETS; i++)
        while (svc->seen[i]) {
            svc_seen *s = svc->seen[i];
            svc->seen[i] = s->next;
            free(s->recent);
            free(s);
        }
}
