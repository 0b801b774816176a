/*
 * err.c — the one error type: names for esim_err codes and the helper that
 * writes a sentence for a person into an esim_error.
 */
#include <stdio.h>

#include <openssl/err.h>

#include "core/esim.h"

const char *esim_strerror(esim_err e)
{
    switch (e) {
    case ESIM_OK: return "success";
    case ESIM_EINVAL: return "invalid input";
    case ESIM_ENOMEM: return "out of memory";
    case ESIM_ENOTFOUND: return "not found";
    case ESIM_EEXIST: return "already exists";
    case ESIM_ESTATE: return "not allowed in the current state";
    case ESIM_EIO: return "input/output error";
    case ESIM_ECRYPTO: return "key, certificate or signature problem";
    case ESIM_EAUTH: return "authentication refused";
    case ESIM_ESTORE: return "store failure";
    case ESIM_ETOOBIG: return "too large";
    case ESIM_EPROTO: return "protocol violation by the peer";
    case ESIM_ETIMEOUT: return "timed out";
    case ESIM_EUNAVAIL: return "unavailable";
    }
    return "unknown error";
}

esim_err esim_fail(esim_error *err, esim_err code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void esim_error_clear(esim_error *err)
{
    if (err)
        err->msg[0] = '\0';
}

const char *esim_openssl_error_text(char *buf, size_t len, const char *fallback)
{
    unsigned long e = ERR_get_error();
    if (e == 0)
        snprintf(buf, len, "%s", fallback);
    else
        ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}
