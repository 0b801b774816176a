/*
 * fuzz_http_response.c — the device simulator's HTTP/1.1 response reader
 * (sim/http_parse.c): what the service, the SM-DP+, the eIM or any server
 * named in a URL sends back. The input is read twice, whole and then in
 * pieces cut where its first byte says; both readings must agree (status,
 * body, where the response ends, keep-alive), a body never passes its limit,
 * and a closed connection after the bytes ends the response or fails it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sim/http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BODY 4096

typedef struct {
    sim_http_parse_rc rc;
    size_t used;
} reading;

static reading run(sim_http_parser *p, const char *d, size_t n, size_t step)
{
    reading r = {SIM_HTTP_PARSE_MORE, 0};
    size_t off = 0;
    while (off < n) {
        size_t k = n - off < step ? n - off : step, used = 0;
        r.rc = sim_http_parse(p, d + off, k, &used);
        if (used > k)
            abort();
        off += used;
        if (r.rc != SIM_HTTP_PARSE_MORE)
            break;
        if (used != k)
            abort(); /* MORE takes everything it was given */
    }
    r.used = off;
    if (r.rc == SIM_HTTP_PARSE_MORE) {
        r.rc = sim_http_parse_eof(p);
        if (r.rc == SIM_HTTP_PARSE_MORE)
            abort();
    }
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)(data[0] % 17) + 1;
    bool head = data[0] & 0x80;
    const char *d = (const char *)data + 1;
    size_t n = size - 1;
    sim_http_parser a, b;
    sim_http_parser_init(&a, MAX_BODY);
    sim_http_parser_init(&b, MAX_BODY);
    a.head_only = b.head_only = head;
    reading ra = run(&a, d, n, n ? n : 1), rb = run(&b, d, n, step);
    if (ra.rc != rb.rc)
        abort();
    if (a.body.len > MAX_BODY || b.body.len > MAX_BODY)
        abort();
    if (ra.rc == SIM_HTTP_PARSE_DONE) {
        if (ra.used != rb.used || a.status != b.status || a.keep_alive != b.keep_alive ||
            a.body.len != b.body.len ||
            (a.body.len && memcmp(a.body.data, b.body.data, a.body.len)))
            abort();
        if (a.status < 200 || a.status > 599)
            abort(); /* interim answers are never the response */
        if (head && a.body.len)
            abort();
    } else if (!a.err || !b.err) {
        abort(); /* an error says why */
    }
    sim_http_parser_free(&a);
    sim_http_parser_free(&b);
    return 0;
}
