/*
 * fuzz_syncml_readers.c — the service's two SyncML readers
 * (service/omadm_syncml.c): the strict reader for plain XML and libxml2.
 * Each input is read as a device's message and as a queued command of
 * "u-1", each both ways: the strict reader must either hand the input to
 * libxml2 or give exactly libxml2's result (return code, error text, every
 * field of the message, the ledger's raw copies byte for byte). Any
 * difference is a finding (tests/service/omadm_readers.h says which), as is
 * a crash or a sanitizer report.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <libxml/parser.h>

#include "tests/service/omadm_readers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[1024];
    for (int k = 0; k < 2; k++) {
        const char *uuid = k ? "u-1" : NULL;
        if (omadm_readers_check(data, size, uuid, why, sizeof why) < 0) {
            fprintf(stderr, "fuzz_syncml_readers: the readers differ on %s: %s\n",
                    uuid ? "a queued command" : "a message", why);
            abort();
        }
    }
    return 0;
}
