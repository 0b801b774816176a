/*
 * fuzz_sig_split.c — the Mdm-Signature splitter (service/auth.c), which
 * walks attacker-supplied DER before any signature is checked. Whatever it
 * accepts must be self-consistent: every certificate span inside the input,
 * the stripped structure exactly what its header says, and parseable by
 * OpenSSL whenever the input itself is. The same input goes through the
 * direct signature check's reader (auth_signer_parse): every span it
 * returns lies inside the input.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/cms.h>
#include <openssl/err.h>

#include "service/auth_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* |p|, |n| lie inside |data|, |size| (|p| may be NULL only when |nullable|). */
static void inside(const uint8_t *data, size_t size, const unsigned char *p, size_t n,
                   bool nullable)
{
    if (!p) {
        if (!nullable)
            abort();
        return;
    }
    if (p < data || n > size || (size_t)(p - data) > size - n)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    auth_signer_info si;
    if (auth_signer_parse(data, size, &si)) {
        inside(data, size, si.sid, si.sid_len, false);
        inside(data, size, si.attrs_tlv, si.attrs_tlv_len, false);
        inside(data, size, si.sig, si.sig_len, false);
        inside(data, size, si.digest, si.digest_len, false);
        inside(data, size, si.when, si.when_len, true);
        if (si.md_i < 0 || si.attrs_tlv_len < 2 || si.attrs_tlv[0] != 0xa0 || si.sig_len == 0)
            abort();
    }
    const unsigned char *certs[8];
    size_t lens[8], n = 99;
    esim_buf stripped = {0};
    if (auth_split_certificates(data, size, &stripped, certs, lens, 8, &n)) {
        if (n == 0 || n > 8)
            abort();
        size_t total = 0;
        for (size_t k = 0; k < n; k++) {
            if (certs[k] < data || lens[k] == 0 || lens[k] > size ||
                (size_t)(certs[k] - data) > size - lens[k])
                abort();
            total += lens[k];
        }
        /* The certificates left the structure; nothing else did, beyond
         * the certificates field's header (at most 6 bytes) and three
         * re-encoded lengths (at most 4 bytes shorter each). */
        if (stripped.len + total > size || stripped.len + total + 18 < size)
            abort();
        const unsigned char *p = data;
        CMS_ContentInfo *whole = d2i_CMS_ContentInfo(NULL, &p, (long)size);
        if (whole) {
            p = stripped.data;
            CMS_ContentInfo *lean = d2i_CMS_ContentInfo(NULL, &p, (long)stripped.len);
            if (!lean)
                abort();
            CMS_ContentInfo_free(lean);
            CMS_ContentInfo_free(whole);
        }
        ERR_clear_error();
    }
    esim_buf_free(&stripped);
    return 0;
}
