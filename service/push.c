/*
 * push.c — waking devices: an MDM push ({"mdm": PushMagic} to the device's
 * token through the APNs client in apns/) only tells a device to check in.
 * Outcomes go back to the store: accepted pushes mark the device's queued
 * entries pushed; dead tokens stop further pushes until a TokenUpdate.
 */
#include <stdlib.h>
#include <string.h>

#include "apns/apns.h"
#include "service/service_internal.h"

struct svc_push {
    apns_client *client; /* NULL without --apns */
};

bool push_configured(const esim_service *svc)
{
    return svc->push && svc->push->client;
}

typedef struct {
    esim_service *svc;
    char udid[65];
} push_ticket;

/* APNs trouble is logged when it starts and when it stops, not per push:
 * a dead APNs would otherwise write a line per device. */
static void apns_health(esim_service *svc, bool ok, const char *outcome, int status,
                        const char *reason)
{
    if (ok) {
        if (svc->apns_failing) {
            char n[24];
            snprintf(n, sizeof n, "%llu", (unsigned long long)svc->apns_failing);
            svc_log(svc, ESIM_LOG_INFO, "apns_recovered", "failures", n, NULL);
        }
        svc->apns_failing = 0;
        return;
    }
    if (svc->apns_failing++ == 0) {
        char st[8];
        snprintf(st, sizeof st, "%d", status);
        svc_log(svc, ESIM_LOG_WARN, "apns_failing", "outcome", outcome, "status",
                status ? st : NULL, "reason", reason && *reason ? reason : NULL, NULL);
    }
}

static void on_push_result(const apns_result *r, void *arg)
{
    esim_service *svc = arg;
    push_ticket *t = r->user_data;
    if ((int)r->outcome >= 0 &&
        (size_t)r->outcome < sizeof svc->m.push_outcomes / sizeof svc->m.push_outcomes[0])
        svc->m.push_outcomes[r->outcome]++;
    int64_t now = esim_now_ms();
    if (r->outcome == APNS_OUTCOME_ACCEPTED || r->outcome == APNS_OUTCOME_TOKEN_DEAD)
        apns_health(svc, true, NULL, 0, NULL); /* APNs answered: a dead token is the device's */
    else if (r->outcome != APNS_OUTCOME_CANCELED)
        apns_health(svc, false, esim_apns_outcome_name(r->outcome), r->status, r->reason);
    if (r->outcome == APNS_OUTCOME_ACCEPTED) {
        if (esim_store_push_recorded(svc->st, t->udid, false, now, NULL) != ESIM_OK)
            svc->m.store_errors++;
    } else if (r->outcome == APNS_OUTCOME_TOKEN_DEAD) {
        if (esim_store_push_recorded(svc->st, t->udid, true, now, NULL) != ESIM_OK)
            svc->m.store_errors++;
    } else if (r->outcome != APNS_OUTCOME_CANCELED) {
        char detail[300];
        snprintf(detail, sizeof detail, "%s: %d %s", esim_apns_outcome_name(r->outcome), r->status,
                 r->reason);
        if (esim_store_event_append(svc->st, "push_failed", t->udid, NULL, detail, NULL, 0, now,
                                    NULL) != ESIM_OK)
            svc->m.store_errors++;
    }
    free(t);
}

const char *push_topic(const esim_service *svc)
{
    return push_configured(svc) ? esim_apns_client_topic(svc->push->client) : NULL;
}

esim_err push_init(esim_service *svc, esim_error *err)
{
    svc->push = calloc(1, sizeof *svc->push);
    if (!svc->push)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (!svc->apns_url)
        return ESIM_OK;
    apns_config cfg;
    esim_apns_config_init(&cfg);
    cfg.url = svc->apns_url;
    cfg.auth = svc->apns_cert_path ? APNS_AUTH_CERTIFICATE : APNS_AUTH_NONE;
    cfg.cert_path = svc->apns_cert_path;
    cfg.key_path = svc->apns_key_path;
    cfg.ca_path = svc->apns_ca_path;
    cfg.topic = svc->apns_topic;
    return esim_apns_client_new(svc->base, &cfg, on_push_result, svc, &svc->push->client, err);
}

void push_free(esim_service *svc)
{
    if (!svc->push)
        return;
    esim_apns_client_free(svc->push->client); /* pending pushes end as canceled */
    free(svc->push);
    svc->push = NULL;
}

esim_err push_device(esim_service *svc, const char *udid, esim_push_state *state, esim_error *err)
{
    store_push_target t;
    esim_push_state ps;
    esim_err rc = esim_store_push_target(svc->st, udid, &t, err);
    if (rc != ESIM_OK)
        return rc;
    if (!t.enrolled || t.push_state == STORE_PUSH_NONE || !t.push_token[0]) {
        ps = ESIM_PUSH_NO_TOKEN;
    } else if (t.push_state == STORE_PUSH_DEAD) {
        ps = ESIM_PUSH_DEAD_TOKEN;
    } else if (strcmp(t.platform, "windows") == 0) {
        ps = wns_push(svc, t.udid, t.push_token); /* wns.c: WNS, not APNs */
    } else if (!push_configured(svc)) {
        /* No APNs: nothing is lost, the device gets its commands at its next
         * check-in. */
        ps = ESIM_PUSH_PENDING;
    } else {
        push_ticket *ticket = calloc(1, sizeof *ticket);
        ps = ESIM_PUSH_FAILED;
        if (ticket) {
            ticket->svc = svc;
            memcpy(ticket->udid, t.udid, sizeof ticket->udid);
            apns_push p = {.token = t.push_token, .push_magic = t.push_magic, .user_data = ticket};
            esim_error pe = {{0}};
            if (esim_apns_client_push(svc->push->client, &p, &pe) == ESIM_OK) {
                ps = ESIM_PUSH_SENT;
            } else {
                free(ticket);
                apns_health(svc, false, "refused", 0, pe.msg);
                if (err)
                    *err = pe;
            }
        }
    }
    svc->m.pushes[ps]++;
    if (state)
        *state = ps;
    return ESIM_OK;
}

void push_metrics(esim_service *svc, esim_buf *out)
{
    if (!push_configured(svc))
        return;
    esim_buf_append_str(out, "# HELP esim_mdm_apns_outcomes_total APNs results by outcome.\n"
                             "# TYPE esim_mdm_apns_outcomes_total counter\n");
    for (int o = APNS_OUTCOME_ACCEPTED; o <= APNS_OUTCOME_CANCELED; o++)
        esim_buf_printf(out, "esim_mdm_apns_outcomes_total{outcome=\"%s\"} %llu\n",
                        esim_apns_outcome_name((apns_outcome)o),
                        (unsigned long long)svc->m.push_outcomes[o]);
    esim_buf_printf(out, "# TYPE esim_mdm_apns_pending gauge\nesim_mdm_apns_pending %zu\n",
                    esim_apns_client_pending(svc->push->client));
}
