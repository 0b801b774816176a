/* temporary: GetEID only, until sgp32/ is on main */
#include <string.h>

#include "sim/sim_internal.h"

static esim_err get_eid(sim_euicc *e, const uint8_t *c, size_t n, esim_buf *out, esim_error *err)
{
    const unsigned char *p = c, *tl;
    size_t tl_len;
    if (!sim_der_read(&p, c + n, 0x5C, &tl, &tl_len) || p != c + n || tl_len != 1 || tl[0] != 0x5A)
        return esim_fail(err, ESIM_EINVAL, "GetEuiccData: only tagList 5A (EID) is known");
    esim_buf eid = {0}, inner = {0};
    esim_err rc = esim_hex_decode(sim_euicc_eid(e), &eid, err);
    if (rc == ESIM_OK)
        rc = sim_der_put(&inner, 0x5A, eid.data, eid.len);
    if (rc == ESIM_OK)
        rc = esim_buf_append(out, "\xBF", 1);
    if (rc == ESIM_OK)
        rc = sim_der_put(out, 0x3E, inner.data, inner.len);
    esim_buf_free(&eid);
    esim_buf_free(&inner);
    return rc;
}

esim_err sim_euicc_es10(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                        esim_error *err)
{
    if (!e || !req || !out)
        return esim_fail(err, ESIM_EINVAL, "sim_euicc_es10 needs an eUICC, a request and a buffer");
    const unsigned char *p = req + 1, *c;
    size_t n;
    if (len >= 2 && req[0] == 0xBF && sim_der_read(&p, req + len, 0x3E, &c, &n) && p == req + len)
        return get_eid(e, c, n, out, err);
    return esim_fail(err, ESIM_EINVAL, "not an ES10 request this eUICC knows");
}
