/*
 * eim.h — the eIM's parts, private to service/: set-up and the package
 * queue (eim.c), the ESipa messages in DER (eim_esipa.c), the ES9+ relay
 * for indirect downloads (eim_relay.c). Protocol facts and their sources:
 * sgp32-facts.md in the design notes; what it does: docs/iot.md.
 */
#ifndef ESIM_SERVICE_EIM_H
#define ESIM_SERVICE_EIM_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/http.h>
#include <openssl/x509.h>

#include "core/esim.h"
#include "service/service.h"

#define EIM_CONTENT_TYPE "application/x-gsma-rsp-asn1"
#define EIM_ADMIN_PROTOCOL "gsma/rsp/v2.1.0"

typedef struct eim_relay_state eim_relay_state;

struct svc_eim {
    bool on;          /* key, certificate and CI loaded: the endpoint serves */
    char eim_id[129]; /* eimId, as the eUICCs know it */
    esim_cert cert;   /* the eIM's certificate and signing key */
    esim_buf cert_der;
    X509_STORE *ci; /* the eUICC CI(s) the eUICC certificates must chain to */
    eim_relay_state *relay;
    struct {
        uint64_t polls[3];   /* a package, none, unregistered EID */
        uint64_t results[4]; /* done, failed, signature_error, counter_error */
        uint64_t refused;    /* bad headers or DER */
        uint64_t relayed[2]; /* ES9+ relay: ok, failed */
    } m;
};

/* Answers DER (|der| not NULL) or a short text. */
void eim_reply(esim_service *svc, struct evhttp_request *req, int code, const void *der, size_t len,
               const char *text);

/* One ESipa message, its HTTP checks passed: decodes it and answers it
 * (eim_esipa.c). */
void eim_esipa(esim_service *svc, struct evhttp_request *req, const unsigned char *der, size_t len);

/* An indirect-download request (BF39, BF3B, BF3A, BF3D, BF41; |msg| its
 * decoded EsipaMessageFromIpaToEim) for the SM-DP+ (eim_relay.c). */
void eim_relay(esim_service *svc, struct evhttp_request *req, const void *msg, const uint8_t *der,
               size_t len);

/* Frees the ES9+ relay's pending requests (eim_relay.c). */
void eim_relay_free(struct svc_eim *e);

#endif
