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

#define EIM_KEY_SLOTS 1024

struct svc_eim {
    bool on;          /* key, certificate and CI loaded: the endpoint serves */
    char eim_id[129]; /* eimId, as the eUICCs know it */
    esim_cert cert;   /* the eIM's certificate and signing key */
    esim_buf cert_der;
    X509_STORE *ci; /* the eUICC CI(s) the eUICC certificates must chain to */
    eim_relay_state *relay;
    /* The public keys of the eUICC certificates of recent package results,
     * by the certificate's digest (eim_esipa.c, euicc_key): a package
     * result's signature is checked without decoding the certificate
     * again (d2i_X509 of a P-256 certificate ≈ 1.1 M instructions). */
    struct {
        unsigned char sha[32];
        EVP_PKEY *key; /* NULL: empty */
    } keys[EIM_KEY_SLOTS];
    struct {
        uint64_t polls[3];   /* a package, none, unregistered EID */
        uint64_t results[4]; /* done, failed, signature_error, counter_error */
        uint64_t refused;    /* bad headers or DER */
        uint64_t relayed[2]; /* ES9+ relay: ok, failed */
        /* ES9+ relay requests refused before any connection: an SM-DP+
         * address no pending trigger names, an eUICC no trigger is for, a
         * notification address no trigger named (eim_relay.c) */
        uint64_t relay_refused[3];
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

/* The ES9+ functions the relay calls. */
typedef enum {
    EIM_ES9_INITIATE,
    EIM_ES9_AUTHENTICATE,
    EIM_ES9_BPP,
    EIM_ES9_CANCEL,
    EIM_ES9_NOTIFY
} eim_es9_fn;

/*
 * The SM-DP+'s answer to ES9+ function |fn| (HTTP |status|, |body| of
 * |len| bytes, JSON as SGP.22 gives it: base64 DER fields) as the ESipa DER
 * answer for the IPA, in |der| (empty for handleNotification). ESIM_OK: the
 * function succeeded and |der| carries its Ok answer (an initiate's
 * transactionId in |txid|, *txid_len bytes). ESIM_EPROTO: the SM-DP+
 * refused, answered with something else than that, or an answer that is
 * not the right DER; |der| is the ESipa error of that step (the SGP.22
 * subject/reason codes mapped to its code, else undefinedError 127) and
 * |why| says it in words. ESIM_ENOMEM. (No I/O: tests/fuzz es9_relay.)
 */
esim_err eim_es9_to_esipa(eim_es9_fn fn, long status, const uint8_t *body, size_t len,
                          esim_buf *der, uint8_t txid[16], size_t *txid_len, char *why,
                          size_t why_len);

/* An SM-DP+ address (|n| bytes: HOST or HOST:PORT, as an activation code
 * gives it) as the relay compares it, in |out|: the host (letters, digits,
 * '.', '-', not starting with '.' or '-') in lower case, ':', the port (1 to
 * 65535; 443 when none is given). false: not such an address. */
#define EIM_SMDP_KEY_LEN 262
bool eim_smdp_key(const char *p, size_t n, char out[EIM_SMDP_KEY_LEN]);

/* Why the last relay to SM-DP+ |smdp| (HOST[:PORT]) for eUICC |eid| failed
 * (or, before the eUICC was known, for any eUICC: unreachable, refusing to
 * start), if that was in the last ten minutes; else NULL. For a failed
 * download's result in words. */
const char *eim_relay_failure(const struct svc_eim *e, const char *smdp, const char *eid);

#endif
