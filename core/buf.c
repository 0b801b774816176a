/*
 * buf.c — growable byte buffers. Always NUL-terminated so text can be used
 * as a C string without a copy.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/esim.h"

void esim_buf_free(esim_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

esim_err esim_buf_reserve(esim_buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len - 1)
        return ESIM_ENOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return ESIM_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    unsigned char *p = realloc(b->data, cap);
    if (!p)
        return ESIM_ENOMEM;
    if (!b->data)
        p[0] = '\0';
    b->data = p;
    b->cap = cap;
    return ESIM_OK;
}

esim_err esim_buf_append(esim_buf *b, const void *data, size_t len)
{
    esim_err rc = esim_buf_reserve(b, len);
    if (rc != ESIM_OK)
        return rc;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return ESIM_OK;
}

esim_err esim_buf_append_str(esim_buf *b, const char *s)
{
    return esim_buf_append(b, s, strlen(s));
}

esim_err esim_buf_vprintf(esim_buf *b, const char *fmt, va_list ap)
{
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    if (n < 0)
        return ESIM_EINVAL;
    esim_err rc = esim_buf_reserve(b, (size_t)n);
    if (rc != ESIM_OK)
        return rc;
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return ESIM_OK;
}

esim_err esim_buf_printf(esim_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    esim_err rc = esim_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void esim_buf_reset(esim_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

unsigned char *esim_buf_steal(esim_buf *b, size_t *len)
{
    unsigned char *p = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
