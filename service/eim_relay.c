/*
 * eim_relay.c — indirect profile download through the eIM (SGP.32
 * 3.2.3): the ESipa BF39/BF3B/BF3A/BF3D/BF41 requests of an IPA that cannot
 * reach the SM-DP+ itself. Not offered yet: such an IPA is told to
 * download directly (docs/iot.md).
 */
#include "service/eim.h"
#include "service/service_internal.h"

void eim_relay(esim_service *svc, struct evhttp_request *req, const void *msg, const uint8_t *der,
               size_t len)
{
    (void)msg;
    (void)der;
    (void)len;
    svc->eim->m.relayed[1]++;
    eim_reply(svc, req, 501, NULL, 0,
              "ESipa: this eIM does not relay indirect downloads to the SM-DP+ yet: the IPA "
              "downloads directly (ES9+)");
}

void eim_relay_free(struct svc_eim *e)
{
    (void)e;
}
