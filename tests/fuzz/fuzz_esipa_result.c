/*
 * fuzz_esipa_result.c — ESipa bodies the eIM parses: ProvideEimPackageResult (BF50), a package's
 * result. Seeds in tests/data/fuzz/esipa_result; the checks are in fuzz_esipa.c.
 */
#include "fuzz_esipa.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_esipa_one(&asn_DEF_ProvideEimPackageResult, data, size);
    return 0;
}
