/*
 * fuzz_csv_import.c — the campaign CSV imports (campaign/campaign_import.c):
 * EID manifests and activation-code files, as an admin uploads them. The
 * first byte picks the parser. A good row must hold valid identifiers, a
 * bad one a line number inside the file and a reason.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "campaign/campaign_engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    bool codes = data[0] & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    campaign_import imp;
    memset(&imp, 0, sizeof imp);
    esim_error err = {{0}};
    esim_err rc = codes ? campaign_import_parse_codes(text, len, &imp, &err)
                        : campaign_import_parse_eids(text, len, &imp, &err);
    if (rc != ESIM_OK) {
        if (err.msg[0] == '\0')
            abort();
        campaign_import_free(&imp);
        return 0;
    }
    size_t lines = 1;
    for (size_t k = 0; k < len; k++)
        lines += text[k] == '\n';
    for (size_t k = 0; k < imp.n_bad; k++)
        if (imp.bad[k].line == 0 || imp.bad[k].line > lines || imp.bad[k].reason[0] == '\0')
            abort();
    for (size_t k = 0; k < imp.n_eids; k++)
        if (esim_eid_validate(imp.eids[k].eid, NULL) != ESIM_OK || imp.eids[k].line == 0 ||
            imp.eids[k].line > lines || imp.eids[k].serial[0] == '\0')
            abort();
    for (size_t k = 0; k < imp.n_codes; k++)
        if (esim_eid_validate(imp.codes[k].eid, NULL) != ESIM_OK || imp.codes[k].line == 0 ||
            imp.codes[k].line > lines || imp.codes[k].smdp_address[0] == '\0')
            abort();
    campaign_import_free(&imp);
    return 0;
}
