/*
 * fuzz_es9_relay.c — the SM-DP+'s ES9+ answers the eIM turns into ESipa
 * answers (service/eim_relay.c, eim_es9_to_esipa): SGP.22's JSON with base64
 * DER fields. The first byte picks the function (initiateAuthentication,
 * authenticateClient, getBoundProfilePackage, cancelSession,
 * handleNotification) and the HTTP status (200, or another); the rest is
 * the body. Whatever comes, the eIM must answer the IPA with well-formed
 * ESipa DER of that step (an Ok or that step's error), never crash or leak.
 * Seeds in tests/data/fuzz/es9_relay: real answers of the SM-DP+ simulator.
 * The same bytes also go through eim_smdp_key (an SM-DP+ address as the
 * relay compares it, from the IPA): a key it makes is lower case, has a
 * port and is its own key.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "service/eim.h"
#include "sgp32/sgp32.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    eim_es9_fn fn = (eim_es9_fn)(data[0] % 5);
    long status = data[0] & 0x80 ? (data[0] & 0x40 ? 204 : 500) : 200;
    esim_buf der = {0};
    uint8_t txid[16];
    size_t txid_len = 0;
    char why[300];
    esim_err rc =
        eim_es9_to_esipa(fn, status, data + 1, size - 1, &der, txid, &txid_len, why, sizeof why);
    if (rc == ESIM_ENOMEM)
        abort();
    if (txid_len > 16 || (rc != ESIM_OK && txid_len != 0))
        abort();
    /* Every answer but a notification's is ESipa DER the IPA can decode. */
    if (fn != EIM_ES9_NOTIFY) {
        void *m = NULL;
        if (!der.len ||
            sgp32_decode(&asn_DEF_EsipaMessageFromEimToIpa, der.data, der.len, &m, NULL) != ESIM_OK)
            abort();
        sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, m);
    } else if (der.len) {
        abort();
    }
    esim_buf_free(&der);

    char key[EIM_SMDP_KEY_LEN], again[EIM_SMDP_KEY_LEN];
    if (eim_smdp_key((const char *)data + 1, size - 1, key)) {
        const char *colon = strchr(key, ':');
        if (!colon || strlen(key) >= EIM_SMDP_KEY_LEN || strpbrk(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
            abort();
        if (!eim_smdp_key(key, strlen(key), again) || strcmp(key, again) != 0)
            abort();
    }
    return 0;
}
