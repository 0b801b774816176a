/*
 * fuzz_esipa_poll.c — ESipa bodies the eIM parses: GetEimPackageRequest (BF4F), the poll.
 * Seeds in tests/data/fuzz/esipa_poll; the checks are in fuzz_esipa.c.
 */
#include "fuzz_esipa.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_esipa_one(&asn_DEF_GetEimPackageRequest, data, size);
    return 0;
}
