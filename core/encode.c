/*
 * encode.c — UUIDs, random bytes, base64 and hex. Randomness and base64 come
 * from OpenSSL; this file only adapts them to esim_buf and to the lenient
 * input real clients send (unpadded base64, line breaks).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "core/esim.h"

esim_err esim_random_bytes(void *out, size_t len)
{
    return RAND_bytes(out, (int)len) == 1 ? ESIM_OK : ESIM_ECRYPTO;
}

void esim_uuid_new(char out[ESIM_UUID_LEN + 1])
{
    unsigned char b[16];
    if (esim_random_bytes(b, sizeof b) != ESIM_OK)
        abort(); /* no randomness left: nothing safe can continue */
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

bool esim_uuid_valid(const char *s)
{
    if (!s || strlen(s) != ESIM_UUID_LEN)
        return false;
    for (int i = 0; i < ESIM_UUID_LEN; i++) {
        bool dash = (i == 8 || i == 13 || i == 18 || i == 23);
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return false;
    }
    return true;
}

esim_err esim_base64_encode(const void *data, size_t len, esim_buf *out)
{
    if (len > (SIZE_MAX / 4) * 3 - 3 || len > INT32_MAX / 2)
        return ESIM_ETOOBIG;
    esim_buf_reset(out);
    size_t need = 4 * ((len + 2) / 3);
    esim_err rc = esim_buf_reserve(out, need);
    if (rc != ESIM_OK)
        return rc;
    int n = EVP_EncodeBlock(out->data, data, (int)len);
    out->len = (size_t)n;
    out->data[out->len] = '\0';
    return ESIM_OK;
}

static bool is_b64_char(unsigned char c)
{
    return isalnum(c) || c == '+' || c == '/';
}

esim_err esim_base64_decode(const char *text, size_t len, esim_buf *out, esim_error *err)
{
    if (len > INT32_MAX / 2)
        return esim_fail(err, ESIM_ETOOBIG, "base64 text too long");
    /* Gather the significant characters; padding may be missing. */
    esim_buf clean = {0};
    esim_err rc = esim_buf_reserve(&clean, len + 4);
    if (rc != ESIM_OK)
        return rc;
    size_t pad = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (isspace(c))
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        if (!is_b64_char(c) || pad > 0) {
            esim_buf_free(&clean);
            return esim_fail(err, ESIM_EINVAL, "not base64: unexpected character at offset %zu", i);
        }
        clean.data[clean.len++] = c;
    }
    size_t sig = clean.len;
    if (pad > 2 || sig % 4 == 1 || (pad > 0 && (sig + pad) % 4 != 0)) {
        esim_buf_free(&clean);
        return esim_fail(err, ESIM_EINVAL, "not base64: wrong length or padding");
    }
    while (clean.len % 4)
        clean.data[clean.len++] = '=';
    clean.data[clean.len] = '\0';

    esim_buf_reset(out);
    if ((rc = esim_buf_reserve(out, clean.len / 4 * 3)) != ESIM_OK) {
        esim_buf_free(&clean);
        return rc;
    }
    int n = clean.len ? EVP_DecodeBlock(out->data, clean.data, (int)clean.len) : 0;
    esim_buf_free(&clean);
    if (n < 0)
        return esim_fail(err, ESIM_EINVAL, "not base64");
    /* EVP_DecodeBlock counts padding as zero bytes: the true length follows
     * from the number of significant characters. */
    out->len = sig / 4 * 3 + (sig % 4 == 2 ? 1 : sig % 4 == 3 ? 2 : 0);
    out->data[out->len] = '\0';
    return ESIM_OK;
}

esim_err esim_hex_encode(const void *data, size_t len, esim_buf *out)
{
    static const char hex[] = "0123456789abcdef";
    esim_buf_reset(out);
    if (len > SIZE_MAX / 2 - 1)
        return ESIM_ETOOBIG;
    esim_err rc = esim_buf_reserve(out, len * 2);
    if (rc != ESIM_OK)
        return rc;
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        out->data[2 * i] = (unsigned char)hex[p[i] >> 4];
        out->data[2 * i + 1] = (unsigned char)hex[p[i] & 15];
    }
    out->len = len * 2;
    out->data[out->len] = '\0';
    return ESIM_OK;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

esim_err esim_hex_decode(const char *hex, esim_buf *out, esim_error *err)
{
    size_t n = strlen(hex);
    if (n % 2)
        return esim_fail(err, ESIM_EINVAL, "hex text has an odd number of digits (%zu)", n);
    esim_buf_reset(out);
    esim_err rc = esim_buf_reserve(out, n / 2);
    if (rc != ESIM_OK)
        return rc;
    for (size_t i = 0; i < n; i += 2) {
        int hi = hex_value(hex[i]), lo = hex_value(hex[i + 1]);
        if (hi < 0 || lo < 0) {
            esim_buf_reset(out);
            return esim_fail(err, ESIM_EINVAL, "not a hex digit at offset %zu", hi < 0 ? i : i + 1);
        }
        out->data[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    out->len = n / 2;
    out->data[out->len] = '\0';
    return ESIM_OK;
}
