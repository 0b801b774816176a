/*
 * omadm_syncml.c — SyncML (OMA-DM 1.2 as MS-MDM uses it) read by a strict
 * reader for plain XML (core/xml_plain.h) or, for anything else, libxml2: a
 * device's message into an omadm_msg, and the command fragments the queue
 * keeps. Nothing is taken on trust: no DTD (so no entity is ever expanded),
 * no network, bounded nesting, counts and lengths, every field the service
 * uses checked before anyone sees it.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "core/xml_plain.h"
#include "service/omadm.h"

static const char *const verb_names[] = {
    [OMADM_STATUS] = "Status",     [OMADM_RESULTS] = "Results", [OMADM_ALERT] = "Alert",
    [OMADM_ADD] = "Add",           [OMADM_REPLACE] = "Replace", [OMADM_GET] = "Get",
    [OMADM_EXEC] = "Exec",         [OMADM_DELETE] = "Delete",   [OMADM_ATOMIC] = "Atomic",
    [OMADM_SEQUENCE] = "Sequence", [OMADM_OTHER] = "?",
};

const char *omadm_verb_name(omadm_verb v)
{
    return (unsigned)v <= OMADM_OTHER ? verb_names[v] : "?";
}

esim_err omadm_xml_escape(esim_buf *b, const char *s)
{
    esim_err rc = ESIM_OK;
    const char *run = s;
    for (const char *c = s; *c && rc == ESIM_OK; c++) {
        const char *rep = *c == '&'    ? "&amp;"
                          : *c == '<'  ? "&lt;"
                          : *c == '>'  ? "&gt;"
                          : *c == '"'  ? "&quot;"
                          : *c == '\'' ? "&apos;"
                                       : NULL;
        if (!rep)
            continue;
        if (c > run)
            rc = esim_buf_append(b, run, (size_t)(c - run));
        if (rc == ESIM_OK)
            rc = esim_buf_append_str(b, rep);
        run = c + 1;
    }
    if (rc == ESIM_OK && *run)
        rc = esim_buf_append_str(b, run);
    return rc;
}

bool omadm_status_of_hdr(const omadm_cmd *c)
{
    return c->verb == OMADM_STATUS && c->cmd_ref && strcmp(c->cmd_ref, "0") == 0 && c->cmd &&
           strcmp(c->cmd, "SyncHdr") == 0;
}

int omadm_status_code(const char *data)
{
    if (!data)
        return 0;
    while (isspace((unsigned char)*data))
        data++;
    int code = 0, digits = 0;
    for (; *data >= '0' && *data <= '9' && digits < 4; data++, digits++)
        code = code * 10 + (*data - '0');
    while (isspace((unsigned char)*data))
        data++;
    /* SyncML status codes are 1xx to 5xx: "020" is not one. */
    return digits == 3 && !*data && code >= 100 && code <= 599 ? code : 0;
}

/* ---- freeing -------------------------------------------------------------------- */

static void item_free(omadm_item *it)
{
    free(it->target);
    free(it->source);
    free(it->format);
    free(it->type);
    free(it->data);
}

static void cmd_free(omadm_cmd *c)
{
    free(c->cmd_id);
    free(c->msg_ref);
    free(c->cmd_ref);
    free(c->cmd);
    free(c->data);
    free(c->hresult);
    free(c->meta_format);
    free(c->meta_type);
    for (size_t i = 0; i < c->n_items; i++)
        item_free(&c->items[i]);
    free(c->items);
    free(c->raw);
}

void omadm_msg_free(omadm_msg *m)
{
    if (!m)
        return;
    free(m->ver_dtd);
    free(m->ver_proto);
    free(m->session_id);
    free(m->target);
    free(m->source);
    for (size_t i = 0; i < m->n_cmds; i++)
        cmd_free(&m->cmds[i]);
    free(m->cmds);
    memset(m, 0, sizeof *m);
}

/* ---- reading the tree ------------------------------------------------------------ */

/*
 * Two readers build the tree the walk below reads: the strict reader of
 * core/xml_plain.h for plain XML (the messages PCs send: ASCII, elements
 * with at most an xmlns attribute, the five predefined entities), libxml2
 * for every other message, well-formed or not, so what is accepted and
 * refused stays libxml2's word. The walk is one for both: a node is one of
 * either tree, and the few places the trees differ (a node's kind, its
 * text, writing it back for the ledger, the msft:originalerror attribute,
 * which plain XML never has) look at which. test_omadm_readers and the
 * syncml_readers fuzz target hold the two to the same results.
 */
typedef struct {
    const xmlNode *dom;         /* libxml2's */
    const esim_xml_node *plain; /* the strict reader's */
} node;                         /* both NULL: none */

typedef struct {
    xmlDocPtr doc;
    omadm_msg *m;
    esim_error *err;
    size_t cap;
} reader;

static bool exists(node n)
{
    return n.dom || n.plain;
}

static node first_child(node n)
{
    return n.dom ? (node){n.dom->children, NULL} : (node){NULL, n.plain ? n.plain->children : NULL};
}

static node next_of(node n)
{
    return n.dom ? (node){n.dom->next, NULL} : (node){NULL, n.plain ? n.plain->next : NULL};
}

static bool is_element(node n)
{
    return n.dom ? n.dom->type == XML_ELEMENT_NODE : n.plain && n.plain->kind == ESIM_XML_EL;
}

static const char *name_of(node n)
{
    return n.dom ? (const char *)n.dom->name : n.plain->name;
}

static bool named(node n, const char *name)
{
    return is_element(n) && strcmp(name_of(n), name) == 0;
}

static node child(node n, const char *name)
{
    for (node c = first_child(n); exists(c); c = next_of(c))
        if (named(c, name))
            return c;
    return (node){0};
}

/* In a command list: text and comments are skipped, elements read, anything
 * else (CDATA, a PI) refused. */
typedef enum { LIST_SKIP, LIST_ELEMENT, LIST_OTHER } list_kind;

static list_kind list_kind_of(node n)
{
    if (n.plain)
        return n.plain->kind == ESIM_XML_EL     ? LIST_ELEMENT
               : n.plain->kind == ESIM_XML_TEXT ? LIST_SKIP
                                                : LIST_OTHER;
    return n.dom->type == XML_TEXT_NODE || n.dom->type == XML_COMMENT_NODE ? LIST_SKIP
           : n.dom->type == XML_ELEMENT_NODE                               ? LIST_ELEMENT
                                                                           : LIST_OTHER;
}

/* The text of |n| and everything under it (xmlNodeGetContent's), "" when
 * none; NULL when out of memory. */
static char *content_of(node n)
{
    if (n.plain)
        return esim_xml_content(n.plain);
    xmlChar *t = xmlNodeGetContent(n.dom);
    char *s = strdup(t ? (const char *)t : "");
    xmlFree(t);
    return s;
}

/* |n| written back (xmlNodeDump's, unformatted) after what |b| holds. */
static esim_err dump_into(const reader *r, esim_buf *b, node n)
{
    if (n.plain)
        return esim_xml_dump(b, n.plain);
    xmlBufferPtr buf = xmlBufferCreate();
    esim_err rc = buf && xmlNodeDump(buf, r->doc, (xmlNode *)n.dom, 0, 0) >= 0
                      ? esim_buf_append_str(b, (const char *)xmlBufferContent(buf))
                      : ESIM_ENOMEM;
    xmlBufferFree(buf);
    return rc;
}

/* The text of |n| (NULL node: *out NULL, fine). Element children are not
 * allowed inside a text field; |max| bounds its length. */
static esim_err text_of(reader *r, node n, const char *what, size_t max, char **out)
{
    *out = NULL;
    if (!exists(n))
        return ESIM_OK;
    for (node c = first_child(n); exists(c); c = next_of(c))
        if (is_element(c))
            return esim_fail(r->err, ESIM_EINVAL, "%s holds an element <%s>, not text", what,
                             name_of(c));
    char *t = content_of(n);
    if (!t)
        return esim_fail(r->err, ESIM_ENOMEM, "out of memory");
    size_t len = strlen(t);
    if (len > max) {
        free(t);
        return esim_fail(r->err, ESIM_ETOOBIG, "%s is %zu bytes long, more than %zu", what, len,
                         max);
    }
    *out = t;
    return ESIM_OK;
}

/* Text of a LocURI under |n| (Target or Source). */
static esim_err loc_uri(reader *r, node n, const char *what, char **out)
{
    *out = NULL;
    if (!exists(n))
        return ESIM_OK;
    node l = child(n, "LocURI");
    if (!exists(l))
        return esim_fail(r->err, ESIM_EINVAL, "%s has no LocURI", what);
    esim_err rc = text_of(r, l, what, OMADM_MAX_URI, out);
    if (rc == ESIM_OK && (*out)[0] == '\0')
        rc = esim_fail(r->err, ESIM_EINVAL, "%s has an empty LocURI", what);
    return rc;
}

static esim_err read_meta(reader *r, node n, char **format, char **type)
{
    node meta = child(n, "Meta");
    if (!exists(meta))
        return ESIM_OK;
    esim_err rc = text_of(r, child(meta, "Format"), "Meta/Format", 64, format);
    if (rc == ESIM_OK)
        rc = text_of(r, child(meta, "Type"), "Meta/Type", 256, type);
    return rc;
}

static esim_err read_items(reader *r, node n, omadm_cmd *c)
{
    size_t count = 0;
    for (node it = first_child(n); exists(it); it = next_of(it))
        if (named(it, "Item"))
            count++;
    if (count > OMADM_MAX_ITEMS)
        return esim_fail(r->err, ESIM_ETOOBIG, "%s %s has %zu Items, more than %d",
                         omadm_verb_name(c->verb), c->cmd_id ? c->cmd_id : "", count,
                         OMADM_MAX_ITEMS);
    if (count == 0)
        return ESIM_OK;
    c->items = calloc(count, sizeof *c->items);
    if (!c->items)
        return esim_fail(r->err, ESIM_ENOMEM, "out of memory");
    esim_err rc = ESIM_OK;
    for (node it = first_child(n); exists(it) && rc == ESIM_OK; it = next_of(it)) {
        if (!named(it, "Item"))
            continue;
        omadm_item *x = &c->items[c->n_items++];
        rc = loc_uri(r, child(it, "Target"), "Item/Target", &x->target);
        if (rc == ESIM_OK)
            rc = loc_uri(r, child(it, "Source"), "Item/Source", &x->source);
        if (rc == ESIM_OK)
            rc = read_meta(r, it, &x->format, &x->type);
        node d = child(it, "Data");
        if (rc == ESIM_OK && exists(d)) {
            /* A Data of a node holding XML (a CSP's structured value) keeps
             * its markup; everything else is text. */
            bool has_element = false;
            for (node k = first_child(d); exists(k); k = next_of(k))
                has_element |= is_element(k);
            if (!has_element) {
                rc = text_of(r, d, "Item/Data", 1u << 24, &x->data);
            } else {
                esim_buf b = {0};
                for (node k = first_child(d); exists(k) && rc == ESIM_OK; k = next_of(k))
                    rc = dump_into(r, &b, k);
                x->data = rc == ESIM_OK ? (char *)esim_buf_steal(&b, NULL) : NULL;
                esim_buf_free(&b);
                if (!x->data)
                    rc = esim_fail(r->err, ESIM_ENOMEM, "out of memory");
            }
        }
    }
    return rc;
}

static omadm_verb verb_of(const char *name)
{
    for (int v = OMADM_STATUS; v < OMADM_OTHER; v++)
        if (strcmp(name, verb_names[v]) == 0)
            return (omadm_verb)v;
    return OMADM_OTHER;
}

static esim_err new_cmd(reader *r, omadm_cmd **out)
{
    if (r->m->n_cmds >= OMADM_MAX_CMDS)
        return esim_fail(r->err, ESIM_ETOOBIG, "more than %d commands in one message",
                         OMADM_MAX_CMDS);
    if (r->m->n_cmds == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        omadm_cmd *grown = realloc(r->m->cmds, cap * sizeof *grown);
        if (!grown)
            return esim_fail(r->err, ESIM_ENOMEM, "out of memory");
        r->m->cmds = grown;
        r->cap = cap;
    }
    omadm_cmd *c = &r->m->cmds[r->m->n_cmds++];
    memset(c, 0, sizeof *c);
    c->parent = -1;
    *out = c;
    return ESIM_OK;
}

/* A Status's msft:originalerror (on its Data), libxml2's xmlGetProp: any
 * prefix. Plain XML has no attribute but xmlns. */
static esim_err read_hresult(reader *r, node d, omadm_cmd *c)
{
    if (!d.dom)
        return ESIM_OK;
    xmlChar *h = xmlGetProp(d.dom, (const xmlChar *)"originalerror");
    esim_err rc = ESIM_OK;
    if (h) {
        if (strlen((const char *)h) > 32)
            rc =
                esim_fail(r->err, ESIM_EINVAL, "Status %s: msft:originalerror too long", c->cmd_id);
        else if (!(c->hresult = strdup((const char *)h)))
            rc = esim_fail(r->err, ESIM_ENOMEM, "out of memory");
    }
    xmlFree(h);
    return rc;
}

static esim_err read_body(reader *r, node body, int parent);

static esim_err read_command(reader *r, node n, int parent)
{
    omadm_cmd *c = NULL;
    esim_err rc = new_cmd(r, &c);
    if (rc != ESIM_OK)
        return rc;
    int index = (int)(c - r->m->cmds);
    c->verb = verb_of(name_of(n));
    c->parent = parent;
    snprintf(c->name, sizeof c->name, "%s", name_of(n));
    rc = text_of(r, child(n, "CmdID"), "CmdID", OMADM_MAX_ID, &c->cmd_id);
    if (rc == ESIM_OK && (!c->cmd_id || !c->cmd_id[0]))
        rc = esim_fail(r->err, ESIM_EINVAL, "a <%s> without a CmdID", c->name);
    if (rc == ESIM_OK && strcmp(c->cmd_id, "0") == 0 && c->verb != OMADM_STATUS)
        rc = esim_fail(r->err, ESIM_EINVAL, "a <%s> with CmdID 0", c->name);
    if (rc != ESIM_OK)
        return rc;
    switch (c->verb) {
    case OMADM_STATUS:
    case OMADM_RESULTS: {
        rc = text_of(r, child(n, "MsgRef"), "MsgRef", OMADM_MAX_ID, &c->msg_ref);
        if (rc == ESIM_OK)
            rc = text_of(r, child(n, "CmdRef"), "CmdRef", OMADM_MAX_ID, &c->cmd_ref);
        if (rc == ESIM_OK)
            rc = text_of(r, child(n, "Cmd"), "Cmd", 32, &c->cmd);
        if (rc == ESIM_OK && !c->msg_ref && c->verb == OMADM_RESULTS)
            c->msg_ref = strdup("1");
        if (rc == ESIM_OK && (!c->msg_ref || !c->cmd_ref || !c->cmd_ref[0]))
            rc = esim_fail(r->err, ESIM_EINVAL, "%s %s without %s", c->name, c->cmd_id,
                           !c->msg_ref ? "a MsgRef" : "a CmdRef");
        if (rc == ESIM_OK && c->verb == OMADM_STATUS) {
            node d = child(n, "Data");
            rc = text_of(r, d, "Status/Data", 16, &c->data);
            if (rc == ESIM_OK && (!c->cmd || !omadm_status_code(c->data)))
                rc = esim_fail(r->err, ESIM_EINVAL,
                               "Status %s needs a Cmd and a three-digit code in Data", c->cmd_id);
            if (rc == ESIM_OK)
                rc = read_hresult(r, d, c);
        }
        if (rc == ESIM_OK)
            rc = read_items(r, n, c);
        /* The ledger keeps the answers to commands; serializing the
         * SyncHdr's Status (one in every message) was ≈ 16,000 instructions
         * for nothing. */
        if (rc == ESIM_OK && !omadm_status_of_hdr(c)) {
            esim_buf b = {0};
            if (dump_into(r, &b, n) == ESIM_OK)
                c->raw = (char *)esim_buf_steal(&b, NULL);
            esim_buf_free(&b);
            if (!c->raw)
                rc = esim_fail(r->err, ESIM_ENOMEM, "out of memory");
        }
        return rc;
    }
    case OMADM_ALERT:
        rc = text_of(r, child(n, "Data"), "Alert/Data", 16, &c->data);
        if (rc == ESIM_OK && (!c->data || !c->data[0]))
            rc = esim_fail(r->err, ESIM_EINVAL, "Alert %s without an alert code", c->cmd_id);
        if (rc == ESIM_OK)
            rc = read_meta(r, n, &c->meta_format, &c->meta_type);
        if (rc == ESIM_OK)
            rc = read_items(r, n, c);
        return rc;
    case OMADM_ATOMIC:
    case OMADM_SEQUENCE:
        if (parent >= 0 && r->m->cmds[parent].verb == OMADM_ATOMIC && c->verb == OMADM_ATOMIC)
            return esim_fail(r->err, ESIM_EINVAL, "an Atomic inside an Atomic");
        rc = read_meta(r, n, &c->meta_format, &c->meta_type);
        return rc == ESIM_OK ? read_body(r, n, index) : rc;
    default:
        rc = read_meta(r, n, &c->meta_format, &c->meta_type);
        return rc == ESIM_OK ? read_items(r, n, c) : rc;
    }
}

/* The commands under |body| (SyncBody, Atomic or Sequence). */
static esim_err read_body(reader *r, node body, int parent)
{
    for (node n = first_child(body); exists(n); n = next_of(n)) {
        list_kind k = list_kind_of(n);
        if (k == LIST_SKIP)
            continue;
        if (k == LIST_OTHER)
            return esim_fail(r->err, ESIM_EINVAL, "unexpected content in a command list");
        if (strcmp(name_of(n), "Final") == 0 && parent < 0) {
            r->m->final = true;
            continue;
        }
        if (parent >= 0 && (named(n, "CmdID") || named(n, "Meta") || named(n, "NoResp")))
            continue;
        esim_err rc = read_command(r, n, parent);
        if (rc != ESIM_OK)
            return rc;
    }
    return ESIM_OK;
}

/* The DeviceID becomes the device's UDID everywhere (API, ledger). */
static bool device_id_ok(const char *s)
{
    return esim_udid_validate(s, NULL) == ESIM_OK;
}

static esim_err read_header(reader *r, node hdr)
{
    omadm_msg *m = r->m;
    char *msg_id = NULL;
    esim_err rc = text_of(r, child(hdr, "VerDTD"), "VerDTD", 16, &m->ver_dtd);
    if (rc == ESIM_OK)
        rc = text_of(r, child(hdr, "VerProto"), "VerProto", 16, &m->ver_proto);
    if (rc == ESIM_OK)
        rc = text_of(r, child(hdr, "SessionID"), "SessionID", OMADM_MAX_SESSION_ID, &m->session_id);
    if (rc == ESIM_OK)
        rc = text_of(r, child(hdr, "MsgID"), "MsgID", 10, &msg_id);
    if (rc == ESIM_OK)
        rc = loc_uri(r, child(hdr, "Target"), "SyncHdr/Target", &m->target);
    if (rc == ESIM_OK)
        rc = loc_uri(r, child(hdr, "Source"), "SyncHdr/Source", &m->source);
    if (rc != ESIM_OK) {
        free(msg_id);
        return rc;
    }
    if (!m->ver_dtd || strcmp(m->ver_dtd, "1.2") != 0)
        rc = esim_fail(r->err, ESIM_EINVAL, "SyncHdr VerDTD must be 1.2");
    else if (!m->ver_proto || strcmp(m->ver_proto, "DM/1.2") != 0)
        rc = esim_fail(r->err, ESIM_EINVAL, "SyncHdr VerProto must be DM/1.2");
    else if (!m->session_id || !m->session_id[0])
        rc = esim_fail(r->err, ESIM_EINVAL, "SyncHdr has no SessionID");
    else if (!m->source || !device_id_ok(m->source))
        rc = esim_fail(r->err, ESIM_EINVAL,
                       "SyncHdr Source/LocURI must be the DeviceID: 1 to %d characters of "
                       "A-Z, a-z, 0-9 and -",
                       OMADM_MAX_DEVICE_ID);
    for (const char *s = m->session_id; rc == ESIM_OK && *s; s++)
        if (!isgraph((unsigned char)*s) || *s == '<' || *s == '&')
            rc = esim_fail(r->err, ESIM_EINVAL,
                           "SyncHdr SessionID has a character that is "
                           "not printable");
    if (rc == ESIM_OK) {
        char *end = NULL;
        unsigned long id = msg_id ? strtoul(msg_id, &end, 10) : 0;
        if (!msg_id || !msg_id[0] || *end || id == 0 || !isdigit((unsigned char)msg_id[0]))
            rc = esim_fail(r->err, ESIM_EINVAL, "SyncHdr MsgID must be a number from 1");
        m->msg_id = id;
    }
    free(msg_id);
    return rc;
}

static bool nesting_ok(node n, int depth)
{
    if (depth > OMADM_MAX_DEPTH)
        return false;
    for (node c = first_child(n); exists(c); c = next_of(c))
        if (is_element(c) && !nesting_ok(c, depth + 1))
            return false;
    return true;
}

/* libxml2 prints its own complaints to stderr unless told not to. */
static void quiet(void *ctx, const char *msg, ...)
{
    (void)ctx;
    (void)msg;
}

/* A message read by one of the two readers. */
typedef struct {
    xmlDocPtr doc;
    esim_xml_tree tree;
    node root;
} loaded;

static void unload(loaded *l)
{
    xmlFreeDoc(l->doc);
    esim_xml_free(&l->tree);
}

static esim_err load(const void *body, size_t len, bool libxml2_only, loaded *out, bool *plain,
                     esim_error *err)
{
    memset(out, 0, sizeof *out);
    if (plain)
        *plain = false;
    if (!body || len == 0)
        return esim_fail(err, ESIM_EINVAL, "empty body: expected a SyncML message");
    if (len > (size_t)INT32_MAX)
        return esim_fail(err, ESIM_ETOOBIG, "message too large");
    const unsigned char *b = body;
    if (b[0] < 0x04) /* WBXML starts with its version byte (0x01..0x03) */
        return esim_fail(err, ESIM_EINVAL, "WBXML is not accepted: send SyncML as XML");
    if (!libxml2_only && esim_xml_plain_read(&out->tree, body, len)) {
        if (plain)
            *plain = true;
        out->root.plain = out->tree.root;
    } else {
        esim_xml_free(&out->tree);
        xmlSetGenericErrorFunc(NULL, quiet);
        out->doc = xmlReadMemory(body, (int)len, NULL, NULL,
                                 XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
        if (!out->doc) {
            const xmlError *e = xmlGetLastError();
            esim_fail(err, ESIM_EINVAL, "not well-formed XML (line %d: %.120s)", e ? e->line : 0,
                      e && e->message ? e->message : "parse error");
            /* libxml2's messages end with a newline: drop it. */
            if (err) {
                size_t l = strlen(err->msg);
                while (l && (err->msg[l - 1] == '\n' || err->msg[l - 1] == ')'))
                    err->msg[--l] = '\0';
                snprintf(err->msg + l, sizeof err->msg - l, ")");
            }
            xmlResetLastError();
            return ESIM_EINVAL;
        }
        if (out->doc->intSubset || out->doc->extSubset) {
            unload(out);
            return esim_fail(err, ESIM_EINVAL, "a DOCTYPE is not accepted in SyncML");
        }
        out->root.dom = xmlDocGetRootElement(out->doc);
    }
    if (!exists(out->root) || !nesting_ok(out->root, 1)) {
        bool root = exists(out->root);
        unload(out);
        return esim_fail(err, root ? ESIM_ETOOBIG : ESIM_EINVAL,
                         root ? "XML nested deeper than %d elements" : "no root element",
                         OMADM_MAX_DEPTH);
    }
    return ESIM_OK;
}

__attribute__((weak)) void omadm_parse_observe(const void *body, size_t len, const char *uuid)
{
    (void)body;
    (void)len;
    (void)uuid;
}

esim_err omadm_parse_as(bool libxml2_only, bool *plain, const void *body, size_t len,
                        omadm_msg *out, esim_error *err)
{
    memset(out, 0, sizeof *out);
    loaded l;
    esim_err rc = load(body, len, libxml2_only, &l, plain, err);
    if (rc != ESIM_OK)
        return rc;
    reader r = {l.doc, out, err, 0};
    node hdr = child(l.root, "SyncHdr"), sb = child(l.root, "SyncBody");
    if (!named(l.root, "SyncML"))
        rc = esim_fail(err, ESIM_EINVAL, "the root element is <%s>, not <SyncML>", name_of(l.root));
    else if (!exists(hdr) || !exists(sb))
        rc = esim_fail(err, ESIM_EINVAL, "a SyncML message needs a SyncHdr and a SyncBody");
    if (rc == ESIM_OK)
        rc = read_header(&r, hdr);
    if (rc == ESIM_OK)
        rc = read_body(&r, sb, -1);
    unload(&l);
    if (rc != ESIM_OK)
        omadm_msg_free(out);
    return rc;
}

esim_err omadm_parse(const void *body, size_t len, omadm_msg *out, esim_error *err)
{
    omadm_parse_observe(body, len, NULL);
    return omadm_parse_as(false, NULL, body, len, out, err);
}

static bool is_own_id(const char *id, const char *uuid)
{
    size_t n = strlen(uuid);
    return strncmp(id, uuid, n) == 0 && (id[n] == '\0' || id[n] == '.');
}

esim_err omadm_parse_commands(const void *fragment, size_t len, const char *uuid, omadm_msg *out,
                              esim_error *err)
{
    omadm_parse_observe(fragment, len, uuid ? uuid : "");
    return omadm_parse_commands_as(false, NULL, fragment, len, uuid, out, err);
}

esim_err omadm_parse_commands_as(bool libxml2_only, bool *plain, const void *fragment, size_t len,
                                 const char *uuid, omadm_msg *out, esim_error *err)
{
    if (plain)
        *plain = false;
    memset(out, 0, sizeof *out);
    if (!uuid || !*uuid)
        return esim_fail(err, ESIM_EINVAL, "a Windows command needs its UUID");
    if (!fragment || len == 0)
        return esim_fail(err, ESIM_EINVAL, "empty SyncML command");
    esim_buf doc_text = {0};
    esim_err rc = esim_buf_append_str(&doc_text, "<SyncBody>");
    if (rc == ESIM_OK)
        rc = esim_buf_append(&doc_text, fragment, len);
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(&doc_text, "</SyncBody>");
    if (rc != ESIM_OK) {
        esim_buf_free(&doc_text);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    if (memchr(fragment, '\0', len) || memmem(fragment, len, "<?xml", 5) ||
        memmem(fragment, len, "<!", 2)) {
        esim_buf_free(&doc_text);
        return esim_fail(err, ESIM_EINVAL,
                         "a Windows command is SyncML commands (Add, Replace, Get, Exec, Delete, "
                         "Atomic), without an XML declaration, DOCTYPE or CDATA");
    }
    loaded l;
    rc = load(doc_text.data, doc_text.len, libxml2_only, &l, plain, err);
    esim_buf_free(&doc_text);
    if (rc != ESIM_OK)
        return rc;
    reader r = {l.doc, out, err, 0};
    rc = read_body(&r, l.root, -1);
    unload(&l);
    if (rc == ESIM_OK && out->final)
        rc = esim_fail(err, ESIM_EINVAL, "<Final/> belongs to the message, not to a command");
    if (rc == ESIM_OK && out->n_cmds == 0)
        rc = esim_fail(err, ESIM_EINVAL, "no SyncML command");
    for (size_t i = 0; rc == ESIM_OK && i < out->n_cmds; i++) {
        const omadm_cmd *c = &out->cmds[i];
        bool in_atomic = c->parent >= 0 && out->cmds[c->parent].verb == OMADM_ATOMIC;
        switch (c->verb) {
        case OMADM_ADD:
        case OMADM_REPLACE:
        case OMADM_DELETE:
        case OMADM_EXEC:
            break;
        case OMADM_GET:
            if (in_atomic)
                rc = esim_fail(err, ESIM_EINVAL, "a Get inside an Atomic");
            break;
        case OMADM_ATOMIC:
            break;
        default:
            rc = esim_fail(err, ESIM_EINVAL,
                           "<%s> is not a command a server sends: use Add, Replace, Get, Exec, "
                           "Delete or Atomic",
                           c->name);
        }
        if (rc == ESIM_OK && !is_own_id(c->cmd_id, uuid))
            rc = esim_fail(err, ESIM_EINVAL,
                           "CmdID '%.128s' is not the command's UUID %s (or %s.N inside it)",
                           c->cmd_id, uuid, uuid);
        for (size_t j = 0; rc == ESIM_OK && j < i; j++)
            if (strcmp(out->cmds[j].cmd_id, c->cmd_id) == 0)
                rc = esim_fail(err, ESIM_EINVAL, "CmdID '%.128s' is used twice", c->cmd_id);
        if (rc == ESIM_OK && c->verb != OMADM_ATOMIC && c->n_items == 0)
            rc = esim_fail(err, ESIM_EINVAL, "%s %s has no Item", c->name, c->cmd_id);
        for (size_t k = 0; rc == ESIM_OK && k < c->n_items; k++) {
            const char *t = c->items[k].target;
            if (!t)
                rc = esim_fail(err, ESIM_EINVAL, "%s %s: an Item without a Target LocURI", c->name,
                               c->cmd_id);
            else if (t[0] == '/')
                rc = esim_fail(err, ESIM_EINVAL, "LocURI '%.200s' must not start with '/'", t);
        }
    }
    if (rc != ESIM_OK)
        omadm_msg_free(out);
    return rc;
}
