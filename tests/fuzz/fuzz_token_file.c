/*
 * fuzz_token_file.c — the reader of API token and webhook secret files
 * (core/file.c esim_token_parse, behind esim_read_token_file): what it
 * accepts goes into an Authorization header or an HMAC key, so it must be
 * one non-empty line, without control bytes, within ESIM_TOKEN_MAX.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/esim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *tok = NULL;
    esim_error err = {{0}};
    esim_err rc = esim_token_parse(data, size, &tok, &err);
    if (rc != ESIM_OK) {
        if (tok || err.msg[0] == '\0' || (rc != ESIM_EINVAL && rc != ESIM_ENOMEM))
            abort();
        return 0;
    }
    size_t n = strlen(tok);
    if (n == 0 || n > ESIM_TOKEN_MAX || tok[0] == ' ' || tok[n - 1] == ' ')
        abort();
    for (size_t k = 0; k < n; k++)
        if ((unsigned char)tok[k] < 0x20 || tok[k] == 0x7F)
            abort();
    /* It is a piece of the input's first line. */
    const char *first_nl = memchr(data, '\n', size);
    size_t line = first_nl ? (size_t)(first_nl - (const char *)data) : size;
    if (!memmem(data, line, tok, n))
        abort();
    free(tok);
    return 0;
}
