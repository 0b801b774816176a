/*
 * fuzz_esipa_download.c — ESipa bodies the eIM parses: the indirect-download requests (BF39, BF3B,
 * BF3A, BF41, BF3D). Seeds in tests/data/fuzz/esipa_download; the checks are in fuzz_esipa.c.
 */
#include "fuzz_esipa.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* each request also alone, as its own type */
    const asn_TYPE_descriptor_t *td = &asn_DEF_HandleNotificationEsipa;
    if (size >= 2 && data[0] == 0xbf) {
        switch (data[1]) {
        case 0x39:
            td = &asn_DEF_InitiateAuthenticationRequestEsipa;
            break;
        case 0x3b:
            td = &asn_DEF_AuthenticateClientRequestEsipa;
            break;
        case 0x3a:
            td = &asn_DEF_GetBoundProfilePackageRequestEsipa;
            break;
        case 0x41:
            td = &asn_DEF_CancelSessionRequestEsipa;
            break;
        default:
            break;
        }
    }
    fuzz_esipa_one(td, data, size);
    return 0;
}
