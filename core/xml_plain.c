/*
 * xml_plain.c — the strict reader for plain XML (xml_plain.h). Every rule
 * errs towards "not mine": its callers hand what it does not read to
 * libxml2, and the differential fuzz targets (winpc_reader, syncml_readers)
 * hold it to libxml2's trees.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/xml_plain.h"

void esim_xml_free(esim_xml_tree *t)
{
    free(t->nodes);
    free(t->chars);
    memset(t, 0, sizeof *t);
}

esim_xml_node *esim_xml_add(esim_xml_tree *t, esim_xml_node *parent, esim_xml_kind k)
{
    if (t->n == t->cap)
        return NULL;
    esim_xml_node *n = &t->nodes[t->n++];
    memset(n, 0, sizeof *n);
    n->kind = k;
    if (parent) {
        if (parent->last)
            parent->last->next = n;
        else
            parent->children = n;
        parent->last = n;
    }
    return n;
}

bool esim_xml_is(const esim_xml_node *n, const char *name)
{
    return n && n->kind == ESIM_XML_EL && strcmp(n->name, name) == 0;
}

esim_xml_node *esim_xml_child(const esim_xml_node *n, const char *name)
{
    for (esim_xml_node *c = n ? n->children : NULL; c; c = c->next)
        if (esim_xml_is(c, name))
            return c;
    return NULL;
}

static esim_err content_into(const esim_xml_node *n, esim_buf *b)
{
    esim_err rc = ESIM_OK;
    for (const esim_xml_node *c = n->children; c && rc == ESIM_OK; c = c->next)
        rc = c->kind == ESIM_XML_EL ? content_into(c, b) : esim_buf_append_str(b, c->text);
    return rc;
}

char *esim_xml_content(const esim_xml_node *n)
{
    if (!n)
        return NULL;
    if (!n->children)
        return strdup("");
    if (!n->children->next && n->children->kind != ESIM_XML_EL)
        return strdup(n->children->text);
    esim_buf b = {0};
    char *s = NULL;
    if (content_into(n, &b) == ESIM_OK)
        s = strdup(b.data ? (const char *)b.data : "");
    esim_buf_free(&b);
    return s;
}

/* ---- writing back ------------------------------------------------------------------ */

/*
 * As libxml2 writes: text as xmlEscapeEntities does ('&', '<', '>'; the
 * scanner's text is ASCII); an xmlns value as xmlBufWriteQuotedString
 * quotes it: "v"; 'v' when it holds a '"'; "v" with &quot; when it holds
 * both quotes. Measured first, then written into room reserved once.
 */
static size_t text_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '&' ? 5 : *s == '<' || *s == '>' ? 4 : 1;
    return n;
}

static char *put(char *o, const char *s, size_t n)
{
    memcpy(o, s, n);
    return o + n;
}

static char *put_text(char *o, const char *s)
{
    for (;;) {
        size_t n = strcspn(s, "<>&");
        o = put(o, s, n);
        s += n;
        if (!*s)
            return o;
        o = *s == '<' ? put(o, "&lt;", 4) : *s == '>' ? put(o, "&gt;", 4) : put(o, "&amp;", 5);
        s++;
    }
}

/* The quote an xmlns value is written in: '"', '\'', or 0 for '"' with &quot;. */
static char quote_of(const char *v)
{
    return !strchr(v, '"') ? '"' : !strchr(v, '\'') ? '\'' : 0;
}

static size_t quoted_len(const char *v)
{
    size_t n = strlen(v) + 2;
    if (!quote_of(v))
        for (; *v; v++)
            n += *v == '"' ? 5 : 0;
    return n;
}

static char *put_quoted(char *o, const char *v)
{
    char q = quote_of(v);
    *o++ = q ? q : '"';
    for (; *v; v++)
        o = !q && *v == '"' ? put(o, "&quot;", 6) : put(o, v, 1);
    *o++ = q ? q : '"';
    return o;
}

static size_t dump_len(const esim_xml_node *n)
{
    if (n->kind == ESIM_XML_TEXT)
        return text_len(n->text);
    if (n->kind == ESIM_XML_CDATA)
        return strlen(n->text) + 12; /* <![CDATA[ ]]> */
    size_t name = strlen(n->name);
    size_t len = 1 + name + (n->xmlns ? 7 + quoted_len(n->xmlns) : 0); /* <name xmlns=".." */
    if (!n->children)
        return len + 2;      /* /> */
    len += 1 + 2 + name + 1; /* > </name> */
    for (const esim_xml_node *c = n->children; c; c = c->next)
        len += dump_len(c);
    return len;
}

static char *dump_put(char *o, const esim_xml_node *n)
{
    if (n->kind == ESIM_XML_TEXT)
        return put_text(o, n->text);
    if (n->kind == ESIM_XML_CDATA) {
        o = put(o, "<![CDATA[", 9);
        o = put(o, n->text, strlen(n->text));
        return put(o, "]]>", 3);
    }
    size_t name = strlen(n->name);
    *o++ = '<';
    o = put(o, n->name, name);
    if (n->xmlns)
        o = put_quoted(put(o, " xmlns=", 7), n->xmlns);
    if (!n->children)
        return put(o, "/>", 2);
    *o++ = '>';
    for (const esim_xml_node *c = n->children; c; c = c->next)
        o = dump_put(o, c);
    o = put(o, "</", 2);
    o = put(o, n->name, name);
    *o++ = '>';
    return o;
}

esim_err esim_xml_dump(esim_buf *b, const esim_xml_node *n)
{
    size_t len = dump_len(n);
    if (esim_buf_reserve(b, len) != ESIM_OK)
        return ESIM_ENOMEM;
    char *end = dump_put((char *)b->data + b->len, n);
    b->len = (size_t)(end - (char *)b->data);
    b->data[b->len] = '\0';
    return ESIM_OK;
}

/* ---- the scanner ------------------------------------------------------------------- */

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n';
}

/* Per ASCII byte: 1 may start a name ([A-Za-z_]), 2 may be in one ([A-Za-z0-9_.-]). */
static const unsigned char name_class[128] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0,
    0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 3,
    0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0,
};

static bool name_start(char c)
{
    return (unsigned char)c < 128 && (name_class[(unsigned char)c] & 1);
}

static bool name_char(char c)
{
    return (unsigned char)c < 128 && (name_class[(unsigned char)c] & 2);
}

/* A name at |*i| copied into the tree's characters; NULL when none (or too long). */
static const char *take_name(esim_xml_tree *t, const char *p, size_t len, size_t *i)
{
    size_t s = *i;
    if (s >= len || !name_start(p[s]))
        return NULL;
    size_t e = s + 1;
    while (e < len && name_char(p[e]))
        e++;
    if (e - s > 1000)
        return NULL;
    char *out = t->chars + t->n_chars;
    memcpy(out, p + s, e - s);
    out[e - s] = '\0';
    t->n_chars += e - s + 1;
    *i = e;
    return out;
}

static void skip_ws(const char *p, size_t len, size_t *i)
{
    while (*i < len && is_ws(p[*i]))
        (*i)++;
}

/* The match of |lit| at |*i|, stepped over. */
static bool lit(const char *p, size_t len, size_t *i, const char *l)
{
    size_t n = strlen(l);
    if (len - *i < n || memcmp(p + *i, l, n) != 0)
        return false;
    *i += n;
    return true;
}

/* ws? = ws? "value" (or 'value'): the value's bounds, plain characters only. */
static bool attr_value(const char *p, size_t len, size_t *i, size_t *vs, size_t *ve)
{
    skip_ws(p, len, i);
    if (*i >= len || p[*i] != '=')
        return false;
    (*i)++;
    skip_ws(p, len, i);
    if (*i >= len || (p[*i] != '"' && p[*i] != '\''))
        return false;
    char q = p[(*i)++];
    *vs = *i;
    while (*i < len && p[*i] != q) {
        unsigned char c = (unsigned char)p[*i];
        if (c == '<' || c == '&' || c >= 0x80 || (c < 0x20 && c != '\t' && c != '\n'))
            return false;
        (*i)++;
    }
    if (*i >= len)
        return false;
    *ve = (*i)++;
    return true;
}

/* <?xml version="1.0" encoding="UTF-8" standalone="yes"?>, the last two optional. */
static bool decl(const char *p, size_t len, size_t *i)
{
    size_t vs, ve;
    if (!lit(p, len, i, "<?xml") || *i >= len || !is_ws(p[*i]))
        return false;
    skip_ws(p, len, i);
    if (!lit(p, len, i, "version") || !attr_value(p, len, i, &vs, &ve) || ve - vs != 3 ||
        memcmp(p + vs, "1.0", 3) != 0)
        return false;
    size_t j = *i;
    skip_ws(p, len, &j);
    if (j > *i && lit(p, len, &j, "encoding")) {
        if (!attr_value(p, len, &j, &vs, &ve) || ve - vs != 5 ||
            strncasecmp(p + vs, "UTF-8", 5) != 0)
            return false;
        *i = j;
    }
    j = *i;
    skip_ws(p, len, &j);
    if (j > *i && lit(p, len, &j, "standalone")) {
        if (!attr_value(p, len, &j, &vs, &ve) ||
            !((ve - vs == 3 && memcmp(p + vs, "yes", 3) == 0) ||
              (ve - vs == 2 && memcmp(p + vs, "no", 2) == 0)))
            return false;
        *i = j;
    }
    skip_ws(p, len, i);
    return lit(p, len, i, "?>");
}

/* The xmlns value [vs, ve) copied as libxml2 keeps it (attribute-value
 * normalization: tab and line feed become spaces); NULL for the namespace
 * names libxml2 refuses to declare (it then leaves the declaration out). */
static const char *take_xmlns(esim_xml_tree *t, const char *p, size_t vs, size_t ve)
{
    char *out = t->chars + t->n_chars;
    for (size_t k = vs; k < ve; k++)
        out[k - vs] = is_ws(p[k]) ? ' ' : p[k];
    out[ve - vs] = '\0';
    if (strcmp(out, "http://www.w3.org/XML/1998/namespace") == 0 ||
        strcmp(out, "http://www.w3.org/2000/xmlns/") == 0)
        return NULL;
    t->n_chars += ve - vs + 1;
    return out;
}

/* Text up to the next '<' into a new node under |parent|: false when not plain. */
static bool take_text(esim_xml_tree *t, esim_xml_node *parent, const char *p, size_t len, size_t *i)
{
    esim_xml_node *txt = esim_xml_add(t, parent, ESIM_XML_TEXT);
    if (!txt)
        return false;
    char *out = t->chars + t->n_chars, *o = out;
    while (*i < len && p[*i] != '<') {
        /* A run of printable ASCII but '&', '<' and '>' is copied as it is. */
        size_t s = *i;
        while (s < len) {
            unsigned char c = (unsigned char)p[s];
            if (c < 0x20 || c >= 0x80 || c == '<' || c == '&' || c == '>')
                break;
            s++;
        }
        memcpy(o, p + *i, s - *i);
        o += s - *i;
        *i = s;
        if (s == len || p[s] == '<')
            break;
        unsigned char u = (unsigned char)p[*i];
        if (u == '&') {
            static const struct {
                const char *ref;
                char c;
            } ents[] = {
                {"&lt;", '<'}, {"&gt;", '>'}, {"&amp;", '&'}, {"&quot;", '"'}, {"&apos;", '\''}};
            size_t k;
            for (k = 0; k < 5; k++)
                if (lit(p, len, i, ents[k].ref))
                    break;
            if (k == 5)
                return false;
            *o++ = ents[k].c;
            continue;
        }
        if (u >= 0x80 || (u < 0x20 && u != '\t' && u != '\n'))
            return false;
        if (u == '>' && *i >= 2 && p[*i - 1] == ']' && p[*i - 2] == ']')
            return false; /* "]]>" is not allowed in text */
        *o++ = (char)u;
        (*i)++;
    }
    *o = '\0';
    txt->text = out;
    t->n_chars += (size_t)(o - out) + 1;
    return true;
}

bool esim_xml_plain_read(esim_xml_tree *t, const void *msg, size_t len)
{
    const char *p = msg;
    if (len > ESIM_XML_PLAIN_MAX_LEN)
        return false;
    size_t n_lt = 0;
    for (const char *q = p; (q = memchr(q, '<', len - (size_t)(q - p))) != NULL; q++)
        n_lt++;
    /* Per '<': at most a node for its element and one for the text before
     * it; its name, that text and an xmlns value, each NUL-terminated, come
     * from disjoint parts of the message. */
    t->cap = 2 * n_lt + 2;
    t->nodes = malloc(t->cap * sizeof *t->nodes);
    t->chars = malloc(len + 3 * n_lt + 2);
    if (!t->nodes || !t->chars)
        return false;
    size_t i = 0;
    if (len >= 5 && memcmp(p, "<?xml", 5) == 0 && !decl(p, len, &i))
        return false;
    esim_xml_node *stack[ESIM_XML_PLAIN_MAX_DEPTH];
    size_t name_len[ESIM_XML_PLAIN_MAX_DEPTH]; /* stack[k]'s */
    size_t depth = 0;
    bool closed = false;
    while (i < len) {
        char c = p[i];
        if (c != '<') {
            if (depth == 0) { /* outside the root: white space only */
                if (!is_ws(c))
                    return false;
                i++;
                continue;
            }
            if (!take_text(t, stack[depth - 1], p, len, &i))
                return false;
            continue;
        }
        if (closed || i + 1 >= len)
            return false;
        if (p[i + 1] == '/') {
            if (depth == 0)
                return false;
            i += 2;
            size_t n = name_len[depth - 1];
            if (len - i < n || memcmp(p + i, stack[depth - 1]->name, n) != 0 ||
                (i + n < len && name_char(p[i + n])))
                return false;
            i += n;
            skip_ws(p, len, &i);
            if (i >= len || p[i] != '>')
                return false;
            i++;
            if (--depth == 0)
                closed = true;
            continue;
        }
        size_t name_at = ++i;
        const char *name = take_name(t, p, len, &i);
        size_t nlen = i - name_at;
        if (!name || depth == ESIM_XML_PLAIN_MAX_DEPTH)
            return false;
        if (depth == 0 && t->root)
            return false;
        esim_xml_node *el = esim_xml_add(t, depth ? stack[depth - 1] : NULL, ESIM_XML_EL);
        if (!el)
            return false;
        el->name = name;
        if (depth == 0)
            t->root = el;
        /* At most one attribute, xmlns, after white space. */
        size_t j = i;
        skip_ws(p, len, &j);
        if (j > i && lit(p, len, &j, "xmlns")) {
            size_t vs, ve;
            if (!attr_value(p, len, &j, &vs, &ve) || !(el->xmlns = take_xmlns(t, p, vs, ve)))
                return false;
            i = j;
            skip_ws(p, len, &i);
        } else {
            i = j;
        }
        if (lit(p, len, &i, "/>")) {
            if (depth == 0)
                closed = true;
            continue;
        }
        if (i >= len || p[i] != '>')
            return false;
        i++;
        name_len[depth] = nlen;
        stack[depth++] = el;
    }
    return closed;
}
