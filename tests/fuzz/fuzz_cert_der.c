/*
 * fuzz_cert_der.c — the service's in-place reading of a device identity
 * certificate (service/cert_der.c): whatever a device sends in its
 * Mdm-Signature. Every pointer it gives back lies inside the input,
 * reading the same bytes twice gives the same answer, and whatever it
 * accepts OpenSSL's d2i_X509 accepts too, with the same names, serial
 * number and key (the reader must never take what OpenSSL would refuse).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "service/cert_der.h"

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

static void same_name(const X509_NAME *name, const unsigned char *p, size_t n)
{
    const unsigned char *der = NULL;
    size_t len = 0;
    if (X509_NAME_get0_der(name, &der, &len) != 1 || len != n || memcmp(der, p, n) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cert_der_view v, w;
    bool ok = cert_der_parse(data, size, &v);
    if (ok != cert_der_parse(data, size, &w) || memcmp(&v, &w, sizeof v) != 0)
        abort();
    if (!ok)
        return 0;
    inside(data, size, v.tbs, v.tbs_len);
    inside(data, size, v.serial, v.serial_len);
    inside(data, size, v.issuer, v.issuer_len);
    inside(data, size, v.subject, v.subject_len);
    inside(data, size, v.point, 65);
    inside(data, size, v.ski, v.ski_len);
    inside(data, size, v.aki, v.aki_len);
    inside(data, size, v.sig, v.sig_len);
    if (v.point[0] != 0x04 || v.sig_len == 0 || v.not_before > INT64_MAX / 2)
        abort();
    const unsigned char *p = data;
    X509 *x = d2i_X509(NULL, &p, (long)size);
    if (!x || p != data + size)
        abort();
    same_name(X509_get_issuer_name(x), v.issuer, v.issuer_len);
    same_name(X509_get_subject_name(x), v.subject, v.subject_len);
    unsigned char serial[64], *s = serial;
    int sl = i2d_ASN1_INTEGER(X509_get0_serialNumber(x), &s);
    if (sl <= 0 || (size_t)sl != v.serial_len || memcmp(serial, v.serial, v.serial_len) != 0)
        abort();
    /* A point that is not on the curve: OpenSSL has no key (the service
     * then makes none either and leaves the message to OpenSSL). */
    EVP_PKEY *key = X509_get0_pubkey(x);
    unsigned char point[65];
    size_t pl = 0;
    if (key && (EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point,
                                                &pl) != 1 ||
                pl != 65 || memcmp(point, v.point, 65) != 0))
        abort();
    X509_free(x);
    ERR_clear_error();
    return 0;
}
