/*
 * eim_esipa.c — the ESipa messages of the eIM in DER (SGP.32 v1.0).
 */
#include "service/eim.h"
#include "service/service_internal.h"

void eim_esipa(esim_service *svc, struct evhttp_request *req, const unsigned char *der, size_t len)
{
    (void)der;
    (void)len;
    (void)svc;
    eim_reply(svc, req, 501, NULL, 0,
              "ESipa: this build of the eIM reads no DER yet (the sgp32 layer is not in it)");
}

void eim_relay_free(struct svc_eim *e)
{
    (void)e;
}
