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
#include "core/internal.h"

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

const signed char esim_base64_digit[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -3, -3, -3, -3, -3, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -3, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -2, -1, -1, -1, 0,  1,  2,  3,  4,  5,  6,
    7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48,
    49, 50, 51, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

/* Two passes over the text, the first only checks it (so bad input leaves
 * |out| untouched), the second decodes straight into |out|: the device's
 * Mdm-Signature header is decoded on every message. */
esim_err esim_base64_decode(const char *text, size_t len, esim_buf *out, esim_error *err)
{
    const signed char *digit = esim_base64_digit;
    if (len > INT32_MAX / 2)
        return esim_fail(err, ESIM_ETOOBIG, "base64 text too long");
    /* Whitespace is skipped; padding may be missing, but nothing follows it.
     * First the run of plain digits (the whole text but its padding, in a
     * header) eight at a time: any value that is not a digit is negative. */
    const unsigned char *u = (const unsigned char *)text;
    size_t pad = 0, start = 0;
    while (start + 8 <= len && (digit[u[start]] | digit[u[start + 1]] | digit[u[start + 2]] |
                                digit[u[start + 3]] | digit[u[start + 4]] | digit[u[start + 5]] |
                                digit[u[start + 6]] | digit[u[start + 7]]) >= 0)
        start += 8;
    size_t sig = start;
    for (size_t i = start; i < len; i++) {
        int v = digit[(unsigned char)text[i]];
        if (v >= 0 && pad == 0)
            sig++;
        else if (v == ESIM_BASE64_PAD)
            pad++;
        else if (v != ESIM_BASE64_SPACE)
            return esim_fail(err, ESIM_EINVAL, "not base64: unexpected character at offset %zu", i);
    }
    if (pad > 2 || sig % 4 == 1 || (pad > 0 && (sig + pad) % 4 != 0))
        return esim_fail(err, ESIM_EINVAL, "not base64: wrong length or padding");
    esim_buf_reset(out);
    esim_err rc = esim_buf_reserve(out, sig / 4 * 3 + 3);
    if (rc != ESIM_OK)
        return rc;
    uint32_t acc = 0;
    size_t n = 0, o = 0;
    if (sig + pad == len) { /* no whitespace (a header): whole groups first */
        const unsigned char *t = (const unsigned char *)text;
        for (; n + 4 <= sig; n += 4, t += 4) {
            uint32_t g = (uint32_t)digit[t[0]] << 18 | (uint32_t)digit[t[1]] << 12 |
                         (uint32_t)digit[t[2]] << 6 | (uint32_t)digit[t[3]];
            out->data[o++] = (unsigned char)(g >> 16);
            out->data[o++] = (unsigned char)(g >> 8);
            out->data[o++] = (unsigned char)g;
        }
    }
    for (size_t i = n; i < len && n < sig; i++) {
        int v = digit[(unsigned char)text[i]];
        if (v < 0)
            continue; /* whitespace */
        acc = acc << 6 | (uint32_t)v;
        if (++n % 4 == 0) {
            out->data[o++] = (unsigned char)(acc >> 16);
            out->data[o++] = (unsigned char)(acc >> 8);
            out->data[o++] = (unsigned char)acc;
            acc = 0;
        }
    }
    /* A last group of 2 or 3 digits carries 1 or 2 bytes. */
    if (n % 4 == 2) {
        out->data[o++] = (unsigned char)(acc >> 4);
    } else if (n % 4 == 3) {
        out->data[o++] = (unsigned char)(acc >> 10);
        out->data[o++] = (unsigned char)(acc >> 2);
    }
    out->len = o;
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
