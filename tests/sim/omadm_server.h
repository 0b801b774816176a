/*
 * omadm_server.h — a scripted OMA-DM server for the Windows PC tests and the
 * simulator benchmark: HTTPS with client certificates chained to the device
 * CA (the PC's certificate CN must be the DeviceID it sends), the MS-MDM
 * session rules checked on every message (counted as violations), the
 * ChannelURI read at every session, and commands queued per PC by the
 * caller (or by a script hook at each session's first message). Every
 * answer the PC gives is kept by CmdRef.
 */
#ifndef ESIM_TESTS_SIM_OMADM_SERVER_H
#define ESIM_TESTS_SIM_OMADM_SERVER_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <libxml/parser.h>
#include <libxml/xpath.h>
#include <openssl/ssl.h>

#include "sim/sim_internal.h"

typedef struct {
    char ref[64];
    int code;
    char *data;
} omadm_ans;

typedef struct {
    char id[65];
    int sessions, alert1200, violations;
    /* Sessions that began on a full TLS handshake (client certificate
     * verified) or on a resumed one; whether the PC's first one was full. */
    int tls_full, tls_resumed;
    bool first_tls_full;
    bool in_session;
    unsigned msg; /* our MsgID in the current session */
    char sid[16];
    char channel[600];
    esim_buf pending; /* commands for the next message */
    omadm_ans *ans;   /* what the PC answered, by CmdRef */
    size_t n_ans, cap_ans;
    int stage; /* free for a script */
} omadm_pc;

typedef struct omadm_server omadm_server;
struct omadm_server {
    SSL_CTX *ssl;
    struct evhttp *http;
    int port;
    omadm_pc *pcs;
    size_t n;
    int cn_mismatch;
    unsigned cmd_seq;
    size_t messages;
    /* Called at each session's first message, before the answer is written. */
    void (*script)(omadm_server *s, omadm_pc *p, void *arg);
    void *arg;
};

#define OMADM_LN(x) "*[local-name()='" x "']"

static inline char *omadm_xs(xmlXPathContext *ctx, const char *expr)
{
    xmlXPathObject *o = xmlXPathEvalExpression((const xmlChar *)expr, ctx);
    char *s = strdup(o && o->stringval ? (const char *)o->stringval : "");
    xmlXPathFreeObject(o);
    return s;
}

static inline omadm_pc *omadm_pc_by_id(omadm_server *s, const char *id)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->pcs[i].id, id) == 0)
            return &s->pcs[i];
    return NULL;
}

static inline void omadm_record(omadm_pc *p, const char *ref, int code, const char *data)
{
    for (size_t i = 0; i < p->n_ans; i++)
        if (strcmp(p->ans[i].ref, ref) == 0) {
            if (code)
                p->ans[i].code = code;
            if (data) {
                free(p->ans[i].data);
                p->ans[i].data = strdup(data);
            }
            return;
        }
    if (p->n_ans == p->cap_ans) {
        size_t cap = p->cap_ans ? p->cap_ans * 2 : 8;
        omadm_ans *a = realloc(p->ans, cap * sizeof *a);
        if (!a)
            return;
        p->ans = a;
        p->cap_ans = cap;
    }
    omadm_ans *a = &p->ans[p->n_ans++];
    snprintf(a->ref, sizeof a->ref, "%s", ref);
    a->code = code;
    a->data = strdup(data ? data : "");
}

/* The PC's answer to CmdRef |ref| (NULL when none yet); *code its Status. */
static inline const char *omadm_answer(const omadm_pc *p, const char *ref, int *code)
{
    for (size_t i = 0; i < p->n_ans; i++)
        if (strcmp(p->ans[i].ref, ref) == 0) {
            if (code)
                *code = p->ans[i].code;
            return p->ans[i].data;
        }
    return NULL;
}

static inline void omadm_queue(omadm_pc *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void omadm_queue(omadm_pc *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    esim_buf_vprintf(&p->pending, fmt, ap);
    va_end(ap);
}

static inline void omadm_add(omadm_pc *p, const char *id, const char *uri, const char *format,
                             const char *data)
{
    if (data)
        omadm_queue(p,
                    "<Add><CmdID>%s</CmdID><Item><Target><LocURI>%s</LocURI></Target><Meta><Format "
                    "xmlns=\"syncml:metinf\">%s</Format></Meta><Data>%s</Data></Item></Add>",
                    id, uri, format, data);
    else
        omadm_queue(p,
                    "<Add><CmdID>%s</CmdID><Item><Target><LocURI>%s</LocURI></Target><Meta><Format "
                    "xmlns=\"syncml:metinf\">node</Format></Meta></Item></Add>",
                    id, uri);
}

static inline void omadm_get(omadm_pc *p, const char *id, const char *uri)
{
    omadm_queue(p, "<Get><CmdID>%s</CmdID><Item><Target><LocURI>%s</LocURI></Target></Item></Get>",
                id, uri);
}

static inline void omadm_reply(struct evhttp_request *req, int code, const esim_buf *body)
{
    struct evbuffer *out = evbuffer_new();
    if (body && body->len)
        evbuffer_add(out, body->data, body->len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/vnd.syncml.dm+xml");
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", out);
    evbuffer_free(out);
}

static inline void omadm_on_request(struct evhttp_request *req, void *arg)
{
    omadm_server *s = arg;
    s->messages++;
    /* Identity: the TLS client certificate's CN. */
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evhttp_request_get_connection(req));
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    X509 *peer = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    char cn[128] = "";
    if (peer)
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof cn);
    X509_free(peer);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    char *body = malloc(len + 1);
    evbuffer_remove(in, body, len);
    body[len] = 0;
    const char *ctype = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    xmlDoc *doc = xmlReadMemory(body, (int)len, "c", NULL, XML_PARSE_NONET);
    free(body);
    if (!doc || !ctype || strcmp(ctype, "application/vnd.syncml.dm+xml") != 0) {
        xmlFreeDoc(doc);
        omadm_reply(req, 400, NULL);
        return;
    }
    xmlXPathContext *ctx = xmlXPathNewContext(doc);
    char *id = omadm_xs(
        ctx, "string(//" OMADM_LN("SyncHdr") "/" OMADM_LN("Source") "/" OMADM_LN("LocURI") ")");
    char *sid = omadm_xs(ctx, "string(//" OMADM_LN("SyncHdr") "/" OMADM_LN("SessionID") ")");
    char *msgid = omadm_xs(ctx, "string(//" OMADM_LN("SyncHdr") "/" OMADM_LN("MsgID") ")");
    omadm_pc *p = omadm_pc_by_id(s, id);
    if (!p || strcmp(cn, id) != 0) {
        s->cn_mismatch++;
        xmlXPathFreeContext(ctx);
        xmlFreeDoc(doc);
        free(id);
        free(sid);
        free(msgid);
        omadm_reply(req, 403, NULL);
        return;
    }
    esim_buf out = {0};
    bool first = strcmp(msgid, "1") == 0;
    if (first) {
        /* Package 1: Alert 1201/1200 and the DevInfo Replace. */
        char *alert = omadm_xs(ctx, "string(//" OMADM_LN("Alert") "/" OMADM_LN("Data") ")");
        char *devid = omadm_xs(
            ctx, "string(//" OMADM_LN("Replace") "/" OMADM_LN("Item") "[" OMADM_LN(
                     "Source") "/" OMADM_LN("LocURI") "='./DevInfo/DevId']/" OMADM_LN("Data") ")");
        if (strcmp(devid, id) != 0 || (strcmp(alert, "1201") != 0 && strcmp(alert, "1200") != 0))
            p->violations++;
        if (strcmp(alert, "1200") == 0)
            p->alert1200++;
        free(alert);
        free(devid);
        bool resumed = ssl && SSL_session_reused(ssl);
        if (p->tls_full + p->tls_resumed == 0)
            p->first_tls_full = !resumed;
        if (resumed)
            p->tls_resumed++;
        else
            p->tls_full++;
        p->in_session = true;
        p->msg = 0;
        snprintf(p->sid, sizeof p->sid, "%s", sid);
    } else {
        /* Later messages: SyncHdr Status first, then Status/Results per command. */
        char *cr = omadm_xs(ctx, "string(//" OMADM_LN("SyncBody") "/*[1]/" OMADM_LN("CmdRef") ")");
        if (strcmp(cr, "0") != 0 || strcmp(sid, p->sid) != 0)
            p->violations++;
        free(cr);
        xmlXPathObject *o = xmlXPathEvalExpression(
            (const xmlChar *)"//" OMADM_LN("SyncBody") "/" OMADM_LN("Status"), ctx);
        for (int i = 0; o && o->nodesetval && i < o->nodesetval->nodeNr; i++) {
            ctx->node = o->nodesetval->nodeTab[i];
            char *ref = omadm_xs(ctx, "string(" OMADM_LN("CmdRef") ")");
            char *code = omadm_xs(ctx, "string(" OMADM_LN("Data") ")");
            if (strcmp(ref, "0") != 0)
                omadm_record(p, ref, atoi(code), NULL);
            free(ref);
            free(code);
        }
        xmlXPathFreeObject(o);
        o = xmlXPathEvalExpression(
            (const xmlChar *)"//" OMADM_LN("SyncBody") "/" OMADM_LN("Results"), ctx);
        for (int i = 0; o && o->nodesetval && i < o->nodesetval->nodeNr; i++) {
            ctx->node = o->nodesetval->nodeTab[i];
            char *ref = omadm_xs(ctx, "string(" OMADM_LN("CmdRef") ")");
            char *data = omadm_xs(ctx, "string(" OMADM_LN("Item") "/" OMADM_LN("Data") ")");
            omadm_record(p, ref, 0, data);
            if (strncmp(ref, "channel-", 8) == 0)
                snprintf(p->channel, sizeof p->channel, "%s", data);
            free(ref);
            free(data);
        }
        xmlXPathFreeObject(o);
    }
    esim_buf_printf(&out,
                    "<SyncML xmlns=\"SYNCML:SYNCML1.2\"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>"
                    "DM/1.2</VerProto><SessionID>%s</SessionID><MsgID>%u</MsgID><Target><LocURI>"
                    "%s</LocURI></Target><Source><LocURI>https://mdm.test/ManagementServer/MDM.svc"
                    "</LocURI></Source></SyncHdr><SyncBody><Status><CmdID>1</CmdID><MsgRef>%s"
                    "</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd><Data>200</Data></Status>",
                    sid, ++p->msg, id, msgid);
    bool commands = false;
    if (first) {
        if (s->script)
            s->script(s, p, s->arg);
        esim_buf_printf(&out,
                        "<Status><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>1</CmdRef><Cmd>Alert"
                        "</Cmd><Data>200</Data></Status><Status><CmdID>3</CmdID><MsgRef>1</MsgRef>"
                        "<CmdRef>2</CmdRef><Cmd>Replace</Cmd><Data>200</Data></Status>"
                        "<Get><CmdID>channel-%u</CmdID><Item><Target><LocURI>./Vendor/MSFT/"
                        "DMClient/Provider/esim-mdm/Push/ChannelURI</LocURI></Target></Item></Get>",
                        ++s->cmd_seq);
        commands = true;
    }
    if (p->pending.len) {
        esim_buf_append(&out, p->pending.data, p->pending.len);
        esim_buf_reset(&p->pending);
        commands = true;
    }
    esim_buf_append_str(&out, "<Final/></SyncBody></SyncML>");
    if (!commands) {
        p->in_session = false;
        p->sessions++;
    }
    xmlXPathFreeContext(ctx);
    xmlFreeDoc(doc);
    free(id);
    free(sid);
    free(msgid);
    omadm_reply(req, 200, &out);
    esim_buf_free(&out);
}

static inline struct bufferevent *omadm_tls_bev(struct event_base *base, void *arg)
{
    omadm_server *s = arg;
    return bufferevent_openssl_socket_new(base, -1, SSL_new(s->ssl), BUFFEREVENT_SSL_ACCEPTING,
                                          BEV_OPT_CLOSE_ON_FREE);
}

/* A server on 127.0.0.1 (ephemeral port) for the PCs |ids| (copied), with
 * the PKI in |pki_dir|; NULL on failure. */
static inline omadm_server *omadm_server_new(struct event_base *base, const char *pki_dir,
                                             char (*ids)[65], size_t n)
{
    omadm_server *s = calloc(1, sizeof *s);
    if (!s || !(s->pcs = calloc(n ? n : 1, sizeof *s->pcs))) {
        free(s);
        return NULL;
    }
    s->n = n;
    for (size_t i = 0; i < n; i++)
        snprintf(s->pcs[i].id, sizeof s->pcs[i].id, "%s", ids[i]);
    char cert[700], key[700], devca[700];
    snprintf(cert, sizeof cert, "%s/server.pem", pki_dir);
    snprintf(key, sizeof key, "%s/server.key", pki_dir);
    snprintf(devca, sizeof devca, "%s/device-ca.pem", pki_dir);
    s->ssl = SSL_CTX_new(TLS_server_method());
    if (!s->ssl || SSL_CTX_use_certificate_chain_file(s->ssl, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(s->ssl, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(s->ssl, devca, NULL) != 1)
        goto fail;
    SSL_CTX_set_verify(s->ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    /* A client resuming its TLS session needs this with client certificates. */
    SSL_CTX_set_session_id_context(s->ssl, (const unsigned char *)"omadm", 5);
    s->http = evhttp_new(base);
    if (!s->http)
        goto fail;
    evhttp_set_bevcb(s->http, omadm_tls_bev, s);
    evhttp_set_gencb(s->http, omadm_on_request, s);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(s->http, "127.0.0.1", 0);
    if (!bs)
        goto fail;
    s->port = sim_bound_port(evhttp_bound_socket_get_fd(bs));
    return s;
fail:
    if (s->http)
        evhttp_free(s->http);
    SSL_CTX_free(s->ssl);
    free(s->pcs);
    free(s);
    return NULL;
}

static inline void omadm_server_free(omadm_server *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        esim_buf_free(&s->pcs[i].pending);
        for (size_t k = 0; k < s->pcs[i].n_ans; k++)
            free(s->pcs[i].ans[k].data);
        free(s->pcs[i].ans);
    }
    evhttp_free(s->http);
    SSL_CTX_free(s->ssl);
    free(s->pcs);
    free(s);
}

#endif
