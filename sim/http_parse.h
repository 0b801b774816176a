/*
 * http_parse.h — the simulator's HTTP/1.1 response reader (http_parse.c):
 * bytes from a server, in whatever pieces they arrive, into a status and a
 * body. Only what the simulator's client needs: the status line, the
 * headers that frame the body (Content-Length, Transfer-Encoding: chunked,
 * Connection), interim 1xx answers skipped, a body until the connection
 * closes when neither frames it. Everything it reads comes from outside;
 * tests/fuzz/fuzz_http_response.c drives it.
 */
#ifndef ESIM_SIM_HTTP_PARSE_H
#define ESIM_SIM_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/esim.h"

#define SIM_HTTP_MAX_HEAD 16384u /* status line and headers, in all */

typedef enum {
    SIM_HTTP_PARSE_MORE = 0,  /* give it more bytes */
    SIM_HTTP_PARSE_DONE = 1,  /* a whole response; |used| says how far */
    SIM_HTTP_PARSE_ERROR = -1 /* not HTTP/1.x, or too big: p->err says which */
} sim_http_parse_rc;

typedef struct {
    int state;
    long status;     /* of the final (non-1xx) response */
    bool keep_alive; /* the connection may carry another request */
    bool too_big;    /* the body passed max_body */
    bool head_only;  /* the request was HEAD: no body whatever the headers */
    bool chunked, has_len, close_hdr, keep_hdr;
    int minor;          /* HTTP/1.minor */
    uint64_t remaining; /* of the Content-Length body or of the current chunk */
    size_t head_len;    /* bytes of head read so far (bounded) */
    size_t max_body;
    char line[1024]; /* the header line being assembled (longer ones are skipped) */
    size_t line_len;
    bool line_long;
    esim_buf body; /* the response's body (owned; sim_http_parser_free) */
    const char *err;
} sim_http_parser;

/* Ready for one response; a body beyond |max_body| bytes is an error. */
void sim_http_parser_init(sim_http_parser *p, size_t max_body);
void sim_http_parser_free(sim_http_parser *p); /* frees the body; init again to reuse */
/* Reads |len| bytes; *used is how many belong to this response (the rest,
 * after DONE, would be the next response's). */
sim_http_parse_rc sim_http_parse(sim_http_parser *p, const char *data, size_t len, size_t *used);
/* The server closed the connection: DONE when that ends the body (a body
 * framed by the close), else ERROR (a response cut short). */
sim_http_parse_rc sim_http_parse_eof(sim_http_parser *p);
/* Whether any byte of a response has been read (a reused connection the
 * server had closed fails before the first one: the request can go again). */
bool sim_http_parser_started(const sim_http_parser *p);

#endif
