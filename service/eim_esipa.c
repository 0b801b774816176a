/*
 * eim_esipa.c — the ESipa messages of the eIM in DER (SGP.32 v1.0).
 */
#include "service/eim.h"
#include "service/service_internal.h"

void eim_esipa(esim_service *svc, struct evhttp_request *req, const unsigned char *der, size_t len)
{
    (void)der;
    (void)len;
    svc->eim->m.refused++;
    eim_reply(svc, req, 400, NULL, 0, "ESipa: not a message this eIM reads");
}

void eim_relay_free(struct svc_eim *e)
{
    (void)e;
}
