/*
 * fuzz_cert_view.c — the SM-DP+ simulator's in-place reading of an eUICC
 * certificate (sim/cert_view.c): whatever an eUICC sends as its
 * certificate. Every pointer it gives back must lie inside the input, the
 * signed part must be a prefix-free piece of it, and reading the same
 * bytes twice must give the same answer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sim/cert_view.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void inside(const uint8_t *data, size_t size, const unsigned char *p, size_t n)
{
    if (!p) {
        if (n)
            abort();
        return;
    }
    if (p < data || n > size || (size_t)(p - data) > size - n)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sim_cert_view v, w;
    bool ok = sim_cert_view_parse(data, size, &v);
    if (ok != sim_cert_view_parse(data, size, &w) || memcmp(&v, &w, sizeof v) != 0)
        abort();
    if (!ok)
        return 0;
    inside(data, size, v.tbs, v.tbs_len);
    inside(data, size, v.issuer, v.issuer_len);
    inside(data, size, v.subject, v.subject_len);
    inside(data, size, v.point, 65);
    inside(data, size, v.serial, v.serial_len);
    inside(data, size, v.sig, v.sig_len);
    if (v.point[0] != 0x04 || v.tbs_len == 0 || v.sig_len < 2 || v.not_before > INT64_MAX / 2)
        abort();
    return 0;
}
