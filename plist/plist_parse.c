/*
 * plist_parse.c — turning untrusted bytes into a libplist tree safely, and a
 * tree back into bytes. Device bodies are hostile until proven otherwise, so
 * size and nesting are checked before libplist (whose parsers recurse) sees them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "plist/plist_internal.h"

#define BPLIST_MAGIC "bplist00"
#define BPLIST_MAGIC_LEN 8
#define BPLIST_TRAILER_LEN 32

esim_parse_limits plist_effective_limits(const esim_parse_limits *limits)
{
    esim_parse_limits l = {ESIM_PLIST_DEFAULT_MAX_BODY, ESIM_PLIST_DEFAULT_MAX_DEPTH};
    if (limits) {
        if (limits->max_body)
            l.max_body = limits->max_body;
        if (limits->max_depth)
            l.max_depth = limits->max_depth;
    }
    if (l.max_depth > ESIM_PLIST_MAX_DEPTH_CEILING)
        l.max_depth = ESIM_PLIST_MAX_DEPTH_CEILING;
    return l;
}

bool plist_looks_like_plist(const void *data, size_t len)
{
    const unsigned char *p = data;
    if (!p)
        return false;
    if (len >= BPLIST_MAGIC_LEN && memcmp(p, BPLIST_MAGIC, BPLIST_MAGIC_LEN) == 0)
        return true;
    size_t i = 0;
    if (len >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF)
        i = 3;
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        i++;
    return i < len && p[i] == '<';
}

/* ---- XML nesting pre-scan ------------------------------------------------ */

/*
 * The pre-scan must see exactly the tags libplist's XML reader sees, or a
 * document can hide its nesting from it: libplist 2.2 skips double-quoted
 * text inside tags, processing instructions and DOCTYPEs, so a closing tag
 * inside a quoted attribute (<array a="</array>">) closes nothing for
 * libplist. Its parser does not recurse, but plist_free() and every walk
 * over the tree do, so a tree deeper than the limit must never be built.
 *
 * Rather than follow every corner of libplist's tokenizer, the scan refuses
 * the markup where libplist and XML could disagree on where a tag ends
 * ('<' inside a tag or a quoted value, '>' or '"' inside a single-quoted
 * value, an internal DTD subset, '<' inside a processing instruction or
 * DOCTYPE). Real plists never hold any of these. What is left is tokenized
 * the same way by both, and only <dict> and <array> open a level.
 */

typedef struct {
    const char *p;
    size_t len, i;
    esim_error *err;
} xml_scan;

static esim_err xml_malformed(xml_scan *s, const char *what)
{
    return esim_fail(s->err, ESIM_EINVAL, "the XML plist is malformed: %s at byte %zu", what, s->i);
}

/* Skips to just past |end| (a literal), skipping double-quoted runs when
 * |quotes| (as libplist does); refuses a '<' on the way when |no_lt|. */
static esim_err xml_skip_to(xml_scan *s, const char *end, bool quotes, bool no_lt, const char *what)
{
    size_t n = strlen(end);
    while (s->i < s->len) {
        char c = s->p[s->i];
        if (s->len - s->i >= n && memcmp(s->p + s->i, end, n) == 0) {
            s->i += n;
            return ESIM_OK;
        }
        if (no_lt && c == '<')
            return xml_malformed(s, what);
        if (quotes && c == '"') {
            const char *q = memchr(s->p + s->i + 1, '"', s->len - s->i - 1);
            if (!q)
                return xml_malformed(s, "an unterminated quoted string");
            if (no_lt && memchr(s->p + s->i, '<', (size_t)(q - (s->p + s->i))))
                return xml_malformed(s, what);
            s->i = (size_t)(q - s->p);
        }
        s->i++;
    }
    return xml_malformed(s, "markup that never ends");
}

static bool xml_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
 * Reads one tag from just after its '<' (and '/'): the name, then up to the
 * '>' that ends it. *self_closing when the byte before '>' is '/', as
 * libplist decides. *container when the name is dict or array.
 */
static esim_err xml_read_tag(xml_scan *s, bool *container, bool *self_closing)
{
    size_t name = s->i;
    while (s->i < s->len && !xml_is_space(s->p[s->i]) && s->p[s->i] != '<' && s->p[s->i] != '>' &&
           s->p[s->i] != '/')
        s->i++;
    size_t name_len = s->i - name;
    *container = (name_len == 4 && memcmp(s->p + name, "dict", 4) == 0) ||
                 (name_len == 5 && memcmp(s->p + name, "array", 5) == 0);
    while (s->i < s->len) {
        char c = s->p[s->i];
        if (c == '>') {
            *self_closing = s->p[s->i - 1] == '/';
            s->i++;
            return ESIM_OK;
        }
        if (c == '<')
            return xml_malformed(s, "a '<' inside a tag");
        if (c == '"' || c == '\'') {
            size_t k = s->i + 1;
            while (k < s->len && s->p[k] != c) {
                char v = s->p[k];
                /* libplist honours only double quotes: a single-quoted
                 * value must not hold what would end the tag for it. */
                if (v == '<' || (c == '\'' && (v == '>' || v == '"')))
                    return xml_malformed(s, "a '<', '>' or '\"' inside a quoted attribute value");
                k++;
            }
            if (k >= s->len)
                return xml_malformed(s, "an unterminated attribute value");
            s->i = k;
        }
        s->i++;
    }
    return xml_malformed(s, "a tag that never ends");
}

/*
 * Counts <dict>/<array> nesting without building anything; linear in the
 * body size whatever its content. Returns ESIM_ETOOBIG past |max_depth| and
 * ESIM_EINVAL for markup the scan will not try to interpret.
 *
 * *dict_values counts the values the document puts into dictionaries, the
 * way libplist pairs them (a non-empty <key> waiting for its value, then any
 * element). libplist's XML reader lets a repeated key replace the earlier
 * value, so a tree with fewer entries than this count had a duplicate key.
 */
static esim_err xml_check_nesting(const char *p, size_t len, unsigned max_depth,
                                  size_t *dict_values, esim_error *err)
{
    xml_scan s = {.p = p, .len = len, .i = 0, .err = err};
    unsigned depth = 0;
    /* in_dict[d]: the container open at depth d is a dict. */
    bool in_dict[ESIM_PLIST_MAX_DEPTH_CEILING + 1] = {false};
    bool key_pending = false;
    *dict_values = 0;
    esim_err rc;
    while (s.i < len) {
        const char *lt = memchr(p + s.i, '<', len - s.i);
        if (!lt)
            break;
        s.i = (size_t)(lt - p) + 1;
        size_t rest = len - s.i;
        if (rest >= 3 && memcmp(p + s.i, "!--", 3) == 0) {
            s.i += 3;
            rc = xml_skip_to(&s, "-->", false, false, NULL);
        } else if (rest >= 8 && memcmp(p + s.i, "![CDATA[", 8) == 0) {
            s.i += 8;
            rc = xml_skip_to(&s, "]]>", false, false, NULL);
        } else if (rest >= 1 && p[s.i] == '?') {
            rc = xml_skip_to(&s, "?>", true, true, "a '<' inside a processing instruction");
        } else if (rest >= 8 && memcmp(p + s.i, "!DOCTYPE", 8) == 0) {
            size_t at = s.i;
            rc = xml_skip_to(&s, ">", true, true, "a '<' inside the DOCTYPE");
            if (rc == ESIM_OK && (memchr(p + at, '[', s.i - at) || memchr(p + at, '\'', s.i - at)))
                rc = esim_fail(err, ESIM_EINVAL,
                               "the XML plist's DOCTYPE has an internal subset or single "
                               "quotes; only a plain DOCTYPE is accepted");
        } else if (rest >= 1 && p[s.i] == '!') {
            rc = xml_malformed(&s, "an unknown <! declaration");
        } else {
            bool closing = rest >= 1 && p[s.i] == '/';
            if (closing)
                s.i++;
            size_t name = s.i;
            bool container = false, self_closing = false;
            rc = xml_read_tag(&s, &container, &self_closing);
            if (rc == ESIM_OK && !closing && depth > 0 && in_dict[depth]) {
                bool is_plist = len - name >= 5 && memcmp(p + name, "plist", 5) == 0;
                bool is_key = len - name >= 4 && memcmp(p + name, "key", 3) == 0 &&
                              (p[name + 3] == '>' || xml_is_space(p[name + 3]));
                if (is_key && !self_closing && !key_pending) {
                    key_pending = true;
                } else if (!is_plist && key_pending) {
                    key_pending = false;
                    (*dict_values)++;
                }
            }
            if (rc == ESIM_OK && container) {
                if (closing) {
                    if (depth > 0)
                        depth--;
                    key_pending = false;
                } else if (!self_closing) {
                    if (++depth > max_depth)
                        return esim_fail(err, ESIM_ETOOBIG,
                                         "plist nests containers deeper than the limit of %u "
                                         "levels",
                                         max_depth);
                    in_dict[depth] = p[name] == 'd';
                    key_pending = false;
                }
            }
        }
        if (rc != ESIM_OK)
            return rc;
    }
    return ESIM_OK;
}

/* ---- binary plist pre-scan ------------------------------------------------ */

static uint64_t read_be(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned k = 0; k < n; k++)
        v = (v << 8) | p[k];
    return v;
}

typedef struct {
    const unsigned char *data;
    size_t len;
    unsigned offset_size, ref_size;
    uint64_t num_objects, top_object, table_offset;
} bplist_layout;

static esim_err bplist_read_layout(const unsigned char *d, size_t len, bplist_layout *bl,
                                   esim_error *err)
{
    if (len < BPLIST_MAGIC_LEN + 2 + BPLIST_TRAILER_LEN)
        return esim_fail(err, ESIM_EINVAL, "binary plist is truncated (%zu bytes)", len);
    const unsigned char *t = d + len - BPLIST_TRAILER_LEN;
    bl->data = d;
    bl->len = len;
    bl->offset_size = t[6];
    bl->ref_size = t[7];
    bl->num_objects = read_be(t + 8, 8);
    bl->top_object = read_be(t + 16, 8);
    bl->table_offset = read_be(t + 24, 8);
    uint64_t body_end = len - BPLIST_TRAILER_LEN;
    if (bl->offset_size < 1 || bl->offset_size > 8 || bl->ref_size < 1 || bl->ref_size > 8)
        return esim_fail(err, ESIM_EINVAL, "binary plist trailer has invalid integer sizes");
    /* Every object takes at least one byte, so more objects than bytes is a lie
     * meant to make a parser allocate or loop. */
    if (bl->num_objects == 0 || bl->num_objects > len)
        return esim_fail(err, ESIM_EINVAL,
                         "binary plist trailer claims an impossible object count");
    if (bl->top_object >= bl->num_objects)
        return esim_fail(err, ESIM_EINVAL, "binary plist top object is out of range");
    if (bl->table_offset < BPLIST_MAGIC_LEN || bl->table_offset >= body_end ||
        bl->num_objects * bl->offset_size > body_end - bl->table_offset)
        return esim_fail(err, ESIM_EINVAL, "binary plist offset table is out of range");
    return ESIM_OK;
}

static esim_err bplist_object_offset(const bplist_layout *bl, uint64_t index, uint64_t *off,
                                     esim_error *err)
{
    *off = read_be(bl->data + bl->table_offset + index * bl->offset_size, bl->offset_size);
    if (*off < BPLIST_MAGIC_LEN || *off >= bl->table_offset)
        return esim_fail(err, ESIM_EINVAL, "binary plist object offset is out of range");
    return ESIM_OK;
}

/* The length field of the object at |off|: low nibble, or 0xF and an int
 * object after the marker. *pos is where the object's contents start. */
static esim_err bplist_read_count(const bplist_layout *bl, uint64_t off, uint64_t *count,
                                  uint64_t *pos, esim_error *err)
{
    *count = bl->data[off] & 0xF;
    *pos = off + 1;
    if (*count != 0xF)
        return ESIM_OK;
    if (*pos >= bl->table_offset)
        return esim_fail(err, ESIM_EINVAL, "binary plist object is truncated");
    unsigned int_marker = bl->data[*pos];
    unsigned width = 1u << (int_marker & 0xF);
    if ((int_marker >> 4) != 0x1 || width > 8 || *pos + 1 + width > bl->table_offset)
        return esim_fail(err, ESIM_EINVAL, "binary plist object has a bad length");
    *count = read_be(bl->data + *pos + 1, width);
    *pos += 1 + width;
    return ESIM_OK;
}

/*
 * Strings must not hold U+0000: libplist 2.2 keeps the decoded length and
 * asserts (aborting the process) when a later read finds strlen() shorter.
 */
static esim_err bplist_check_string(const bplist_layout *bl, uint64_t off, esim_error *err)
{
    unsigned type = bl->data[off] >> 4;
    if (type != 0x5 && type != 0x6)
        return ESIM_OK;
    uint64_t count, pos;
    esim_err rc = bplist_read_count(bl, off, &count, &pos, err);
    if (rc != ESIM_OK)
        return rc;
    uint64_t unit = type == 0x6 ? 2 : 1;
    if (count > (bl->table_offset - pos) / unit)
        return esim_fail(err, ESIM_EINVAL, "binary plist string runs past its data");
    const unsigned char *p = bl->data + pos;
    bool want_trail = false;
    for (uint64_t k = 0; k < count; k++) {
        bool nul = unit == 1 ? p[k] == 0 : (p[2 * k] == 0 && p[2 * k + 1] == 0);
        if (nul)
            return esim_fail(err, ESIM_EINVAL, "binary plist string contains a NUL character");
        if (unit == 2) {
            /* libplist drops an unpaired surrogate silently, so "UD\uD800ID"
             * would read as UDID here and as something else elsewhere. */
            unsigned hi = p[2 * k];
            bool lead = hi >= 0xD8 && hi <= 0xDB, trail = hi >= 0xDC && hi <= 0xDF;
            if (trail != want_trail)
                return esim_fail(err, ESIM_EINVAL,
                                 "binary plist string holds an unpaired UTF-16 surrogate");
            want_trail = lead;
        }
    }
    if (want_trail)
        return esim_fail(err, ESIM_EINVAL,
                         "binary plist string holds an unpaired UTF-16 surrogate");
    return ESIM_OK;
}

/* For a container object: where its references start and how many there
 * are (dicts list keys then values). Scalars report *n_refs = 0. */
static esim_err bplist_container_refs(const bplist_layout *bl, uint64_t off, uint64_t *refs_at,
                                      uint64_t *n_refs, esim_error *err)
{
    unsigned type = bl->data[off] >> 4;
    *n_refs = 0;
    *refs_at = 0;
    if (type != 0xA && type != 0xC && type != 0xD)
        return bplist_check_string(bl, off, err);
    uint64_t count, pos;
    esim_err rc = bplist_read_count(bl, off, &count, &pos, err);
    if (rc != ESIM_OK)
        return rc;
    uint64_t per_entry = (type == 0xD) ? 2u * bl->ref_size : bl->ref_size;
    if (count > (bl->table_offset - pos) / per_entry)
        return esim_fail(err, ESIM_EINVAL, "binary plist container runs past its data");
    *refs_at = pos;
    *n_refs = (type == 0xD) ? 2 * count : count;
    return ESIM_OK;
}

typedef struct {
    uint64_t object, refs_at, n_refs, next_ref;
    unsigned height; /* deepest child container chain seen so far */
    uint64_t nodes;  /* values this object becomes once parsed, so far */
} bplist_frame;

enum { OBJ_UNSEEN = 0, OBJ_ON_PATH = 1, OBJ_DONE = 2 };

/*
 * How many values a binary plist of |len| bytes may expand to. libplist 2.2
 * copies a shared object at every reference, so a 24 KB body whose array
 * refers 6000 times to an array of 6000 references becomes 36 million values
 * (4.5 GB). A body written by a real device shares only scalars, so it never
 * expands to more values than it has bytes.
 */
static uint64_t bplist_max_nodes(size_t len)
{
    return (uint64_t)len + 1024;
}

/*
 * Walks the object graph from the top object with an explicit stack no
 * deeper than |max_depth|, memoizing each container's height and expanded
 * size so shared sub-trees are visited once. A reference back onto the
 * current path is a cycle, which libplist would otherwise chase.
 */
static esim_err bplist_check_graph(const unsigned char *d, size_t len, unsigned max_depth,
                                   esim_error *err)
{
    bplist_layout bl;
    esim_err rc = bplist_read_layout(d, len, &bl, err);
    if (rc != ESIM_OK)
        return rc;
    size_t n = (size_t)bl.num_objects;
    uint64_t max_nodes = bplist_max_nodes(len);
    unsigned char *state = calloc(n, 1);
    unsigned *height = calloc(n, sizeof *height);
    uint64_t *nodes = calloc(n, sizeof *nodes);
    size_t stack_cap = (max_depth < n ? max_depth : n) + 1;
    bplist_frame *stack = calloc(stack_cap, sizeof *stack);
    if (!state || !height || !nodes || !stack) {
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory checking a binary plist");
        goto done;
    }
    size_t top = 0;
    uint64_t off;
    if ((rc = bplist_object_offset(&bl, bl.top_object, &off, err)) != ESIM_OK)
        goto done;
    bplist_frame root = {.object = bl.top_object, .nodes = 1};
    if ((rc = bplist_container_refs(&bl, off, &root.refs_at, &root.n_refs, err)) != ESIM_OK)
        goto done;
    stack[top++] = root;
    state[bl.top_object] = OBJ_ON_PATH;
    while (top > 0) {
        bplist_frame *f = &stack[top - 1];
        if (f->next_ref == f->n_refs) {
            unsigned h = f->height + 1;
            state[f->object] = OBJ_DONE;
            height[f->object] = h;
            nodes[f->object] = f->nodes;
            top--;
            if (top > 0) {
                bplist_frame *parent = &stack[top - 1];
                if (parent->height < h)
                    parent->height = h;
                parent->nodes += f->nodes;
                if (parent->nodes > max_nodes)
                    goto too_many;
            }
            continue;
        }
        uint64_t child = read_be(d + f->refs_at + f->next_ref * bl.ref_size, bl.ref_size);
        f->next_ref++;
        if (child >= bl.num_objects) {
            rc = esim_fail(err, ESIM_EINVAL, "binary plist refers to a missing object");
            goto done;
        }
        if (state[child] == OBJ_ON_PATH) {
            rc = esim_fail(err, ESIM_EINVAL, "binary plist contains a reference cycle");
            goto done;
        }
        if (state[child] == OBJ_DONE) {
            if (top + height[child] > max_depth)
                goto too_deep;
            if (f->height < height[child])
                f->height = height[child];
            f->nodes += nodes[child];
            if (f->nodes > max_nodes)
                goto too_many;
            continue;
        }
        if ((rc = bplist_object_offset(&bl, child, &off, err)) != ESIM_OK)
            goto done;
        bplist_frame next = {.object = child, .nodes = 1};
        if ((rc = bplist_container_refs(&bl, off, &next.refs_at, &next.n_refs, err)) != ESIM_OK)
            goto done;
        unsigned type = d[off] >> 4;
        if (type != 0xA && type != 0xC && type != 0xD) {
            state[child] = OBJ_DONE; /* a scalar: height 0, one value */
            nodes[child] = 1;
            if (++f->nodes > max_nodes)
                goto too_many;
            continue;
        }
        if (top >= max_depth || top >= stack_cap)
            goto too_deep;
        state[child] = OBJ_ON_PATH;
        stack[top++] = next;
    }
    rc = ESIM_OK;
    goto done;
too_deep:
    rc = esim_fail(err, ESIM_ETOOBIG, "plist nests containers deeper than the limit of %u levels",
                   max_depth);
    goto done;
too_many:
    rc = esim_fail(err, ESIM_ETOOBIG,
                   "binary plist of %zu bytes would expand to more than %llu values (shared "
                   "containers referenced over and over)",
                   len, (unsigned long long)max_nodes);
done:
    free(state);
    free(height);
    free(nodes);
    free(stack);
    return rc;
}

/* ---- parse and serialize ---------------------------------------------------- */

/*
 * The post-parse rule check: nesting within |depth_left|, no string whose
 * stored length disagrees with strlen() (see bplist_check_string), and no
 * dictionary holding the same key twice. libplist's binary reader keeps
 * both entries and plist_dict_get_item() answers the first, while other
 * readers (a webhook consumer, Apple's own) take the last: one body, two
 * readings of UDID. Keys are safe to fetch here: the pre-scans refused NULs
 * (the XML reader refuses &#0; itself), so libplist's strlen assertion holds.
 */
typedef enum { TREE_OK, TREE_TOO_DEEP, TREE_BAD_STRING, TREE_DUP_KEY, TREE_NOMEM } tree_verdict;

typedef struct {
    char dup[65];        /* the repeated key, when printable */
    size_t dict_entries; /* entries over every dictionary */
} tree_check;

static int compare_keys(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static tree_verdict check_dict_keys(plist_t node, tree_check *tc)
{
    char *dup = tc->dup;
    size_t dup_len = sizeof tc->dup;
    uint32_t n = plist_dict_get_size(node);
    tc->dict_entries += n;
    if (n < 2)
        return TREE_OK;
    char **keys = calloc(n, sizeof *keys);
    if (!keys)
        return TREE_NOMEM;
    plist_dict_iter it = NULL;
    plist_dict_new_iter(node, &it);
    uint32_t got = 0;
    tree_verdict v = TREE_OK;
    while (got < n) {
        char *key = NULL;
        plist_t val = NULL;
        plist_dict_next_item(node, it, &key, &val);
        if (!val) {
            free(key);
            break;
        }
        keys[got++] = key ? key : strdup("");
        if (!keys[got - 1])
            v = TREE_NOMEM;
    }
    free(it);
    if (v == TREE_OK) {
        qsort(keys, got, sizeof *keys, compare_keys);
        for (uint32_t k = 1; k < got && v == TREE_OK; k++) {
            if (strcmp(keys[k - 1], keys[k]) == 0) {
                v = TREE_DUP_KEY;
                /* Named only when it is short and printable (it goes into logs). */
                bool plain = strlen(keys[k]) < dup_len;
                for (const char *c = keys[k]; plain && *c; c++)
                    plain = *c >= 0x20 && *c < 0x7F && *c != '"';
                snprintf(dup, dup_len, "%s", plain ? keys[k] : "(unprintable)");
            }
        }
    }
    for (uint32_t k = 0; k < got; k++)
        free(keys[k]);
    free(keys);
    return v;
}

static tree_verdict check_tree(plist_t node, unsigned depth_left, tree_check *tc)
{
    plist_type t = plist_get_node_type(node);
    if (t == PLIST_STRING) {
        uint64_t len = 0;
        const char *s = plist_get_string_ptr(node, &len);
        return (s && strlen(s) == len) ? TREE_OK : TREE_BAD_STRING;
    }
    if (t != PLIST_DICT && t != PLIST_ARRAY)
        return TREE_OK;
    if (depth_left == 0)
        return TREE_TOO_DEEP;
    tree_verdict v = TREE_OK;
    if (t == PLIST_ARRAY) {
        uint32_t n = plist_array_get_size(node);
        for (uint32_t k = 0; k < n && v == TREE_OK; k++)
            v = check_tree(plist_array_get_item(node, k), depth_left - 1, tc);
        return v;
    }
    plist_dict_iter it = NULL;
    plist_dict_new_iter(node, &it);
    while (v == TREE_OK) {
        plist_t val = NULL;
        plist_dict_next_item(node, it, NULL, &val);
        if (!val)
            break;
        v = check_tree(val, depth_left - 1, tc);
    }
    free(it);
    return v == TREE_OK ? check_dict_keys(node, tc) : v;
}

/* ---- the flat XML fast path ------------------------------------------------------
 * Nearly every message a device sends on its busy path (Idle, Acknowledged,
 * the check-ins without data) is one dictionary of short ASCII strings.
 * Such a body is read here in one pass into the tree libplist would have
 * built (a dict of PLIST_STRING, PLIST_DATA and PLIST_BOOLEAN values in
 * document order),
 * without the nesting pre-scan, libplist's tokenizer and the tree walk after
 * it, which cost about three quarters of a message's parse. The shape is
 * narrow on purpose: an XML declaration and a DOCTYPE without '<', '[' or
 * single quotes, <plist ...>, one <dict> whose entries are <key>text</key>
 * followed by <string>text</string>, <string/>, <true/>, <false/>,
 * <data>base64</data> (TokenUpdate's Token: canonical base64, its padding
 * only at the end, spaces, tabs and line feeds between, not empty),
 * <integer> of plain decimal digits (no sign, no leading zero, below
 * 10^18), or a <dict>...</dict> or <array>...</array> of the same values
 * (what commands, profiles and DeviceInformation answers hold; at most
 * FLAT_MAX_DEPTH containers deep and the caller's limit), and text of
 * printable ASCII without '&' (so no entity, CDATA or comment to decode).
 * Anything else, a repeated key in any dictionary included, returns NULL
 * and the body takes the general path, which refuses or accepts it as
 * before (tests/plist: the two paths build the same tree). */

#define FLAT_MAX_ENTRIES 64 /* in one dict */
#define FLAT_MAX_NODES 4096 /* values in the whole body */
#define FLAT_MAX_DEPTH 8    /* containers, the top dict included */
#define FLAT_MAX_TEXT 1024

static void flat_space(const char *p, size_t len, size_t *i)
{
    while (*i < len && xml_is_space(p[*i]))
        (*i)++;
}

static bool flat_lit(const char *p, size_t len, size_t *i, const char *lit, size_t n)
{
    if (len - *i < n || memcmp(p + *i, lit, n) != 0)
        return false;
    *i += n;
    return true;
}

/* The characters a run may refuse (flat_run's |refused|, a set of these),
 * and what is never printable ASCII. */
enum {
    FLAT_AMP = 1,
    FLAT_GT = 2,
    FLAT_LT = 4,
    FLAT_BRACKET = 8,
    FLAT_APOS = 16,
    FLAT_SLASH = 32,
    FLAT_UNPRINTABLE = 64,
};

static unsigned flat_class(unsigned char c)
{
    if (c < 0x20 || c > 0x7E)
        return FLAT_UNPRINTABLE;
    switch (c) {
    case '&':
        return FLAT_AMP;
    case '>':
        return FLAT_GT;
    case '<':
        return FLAT_LT;
    case '[':
        return FLAT_BRACKET;
    case '\'':
        return FLAT_APOS;
    case '/':
        return FLAT_SLASH;
    default:
        return 0;
    }
}

/* Printable ASCII up to the next |stop|, none of it in |refused| (FLAT_*
 * bits: a switch, not a strchr for each character of a message). In
 * markup (|quotes|) libplist skips double-quoted runs, so a quote must be
 * closed and hold no '>' or '?' that would end the markup for a reader
 * that does not. */
static bool flat_run(const char *p, size_t len, size_t *i, char stop, unsigned refused, bool quotes)
{
    bool quoted = false;
    refused |= FLAT_UNPRINTABLE;
    for (; *i < len; (*i)++) {
        unsigned char c = (unsigned char)p[*i];
        if (c == (unsigned char)stop && !quoted)
            return true;
        if (flat_class(c) & refused)
            return false;
        if (quotes && c == '"')
            quoted = !quoted;
        else if (quoted && (c == '>' || c == '?'))
            return false;
    }
    return false;
}

/* Element text into |out| (NUL-terminated), then the closing tag. */
static bool flat_text(const char *p, size_t len, size_t *i, const char *close, size_t close_len,
                      char *out)
{
    size_t at = *i;
    if (!flat_run(p, len, i, '<', FLAT_AMP | FLAT_GT, false) || *i - at >= FLAT_MAX_TEXT)
        return false;
    memcpy(out, p + at, *i - at);
    out[*i - at] = '\0';
    return flat_lit(p, len, i, close, close_len);
}

/* <data>'s base64 decoded into |out| (at most |cap| bytes), then
 * its closing tag. Whole quanta of four, '=' only as the last one's one or
 * two pads, nothing but base64, ' ', '\t' and '\n' before the '<'. */
static bool flat_data(const char *p, size_t len, size_t *i, unsigned char *out, size_t cap,
                      size_t *out_len)
{
    unsigned q[4];
    unsigned nq = 0, pads = 0;
    size_t n = 0;
    for (; *i < len && p[*i] != '<'; (*i)++) {
        unsigned char c = (unsigned char)p[*i];
        if (c == ' ' || c == '\t' || c == '\n')
            continue;
        int v = esim_base64_digit[c]; /* negative: not a digit */
        if (c == '=' && nq >= 2)
            pads++, v = 0;
        else if (v < 0 || pads)
            return false; /* not base64, or a symbol after a pad */
        q[nq++] = (unsigned)v;
        if (nq < 4)
            continue;
        if (n + 3 > cap)
            return false;
        out[n++] = (unsigned char)(q[0] << 2 | q[1] >> 4);
        out[n++] = (unsigned char)(q[1] << 4 | q[2] >> 2);
        out[n++] = (unsigned char)(q[2] << 6 | q[3]);
        nq = 0;
    }
    /* "x=" + symbol: a pad then more symbols is refused above; "xx=y" too
     * (pads counted, then a symbol). Whole quanta only, something in them. */
    if (nq != 0 || n == 0)
        return false;
    *out_len = n - pads;
    return flat_lit(p, len, i, "</data>", 7);
}

/* The reader's place, and room for a string's text (a key has its own in
 * each dictionary being read). */
typedef struct {
    const char *p;
    size_t len, i;
    size_t nodes; /* values read so far, over every container */
    char text[FLAT_MAX_TEXT];
} flat_reader;

static bool flat_entries(flat_reader *r, plist_t dict, unsigned depth_left);

/* An <array>'s items up to its </array> into |array|. */
static bool flat_items(flat_reader *r, plist_t array, unsigned depth_left);

/* One value at the reader's place (whitespace skipped before it), or NULL
 * to leave the body to the general path. A container is read only while
 * |depth_left| allows one more level. */
static plist_t flat_value(flat_reader *r, unsigned depth_left)
{
    const char *p = r->p;
    size_t len = r->len;
    flat_space(p, len, &r->i);
    if (++r->nodes > FLAT_MAX_NODES)
        return NULL;
    if (flat_lit(p, len, &r->i, "<string>", 8))
        return flat_text(p, len, &r->i, "</string>", 9, r->text) ? plist_new_string(r->text) : NULL;
    if (flat_lit(p, len, &r->i, "<string/>", 9))
        return plist_new_string("");
    if (flat_lit(p, len, &r->i, "<true/>", 7))
        return plist_new_bool(1);
    if (flat_lit(p, len, &r->i, "<false/>", 8))
        return plist_new_bool(0);
    if (flat_lit(p, len, &r->i, "<integer>", 9)) {
        /* Plain decimal only: no sign, no leading zero (libplist reads
         * "010" as octal), at most 18 digits (below INT64_MAX). */
        uint64_t v = 0;
        size_t at = r->i;
        while (r->i < len && p[r->i] >= '0' && p[r->i] <= '9' && r->i - at < 19)
            v = v * 10 + (uint64_t)(p[r->i++] - '0');
        size_t digits = r->i - at;
        if (digits == 0 || digits > 18 || (digits > 1 && p[at] == '0') ||
            !flat_lit(p, len, &r->i, "</integer>", 10))
            return NULL;
        return plist_new_uint(v);
    }
    if (flat_lit(p, len, &r->i, "<data>", 6)) {
        const char *end = memchr(p + r->i, '<', len - r->i);
        if (!end)
            return NULL;
        size_t cap = (size_t)(end - (p + r->i)) / 4 * 3 + 3;
        unsigned char *buf = malloc(cap);
        size_t n = 0;
        plist_t v =
            buf && flat_data(p, len, &r->i, buf, cap, &n) ? plist_new_data((char *)buf, n) : NULL;
        free(buf);
        return v;
    }
    if (depth_left == 0)
        return NULL;
    if (flat_lit(p, len, &r->i, "<dict>", 6)) {
        plist_t d = plist_new_dict();
        if (d && flat_entries(r, d, depth_left - 1))
            return d;
        plist_free(d);
        return NULL;
    }
    if (flat_lit(p, len, &r->i, "<array>", 7)) {
        plist_t a = plist_new_array();
        if (a && flat_items(r, a, depth_left - 1))
            return a;
        plist_free(a);
        return NULL;
    }
    return NULL;
}

static bool flat_entries(flat_reader *r, plist_t dict, unsigned depth_left)
{
    size_t entries = 0;
    for (;;) {
        flat_space(r->p, r->len, &r->i);
        if (flat_lit(r->p, r->len, &r->i, "</dict>", 7))
            return true;
        char key[FLAT_MAX_TEXT];
        if (entries == FLAT_MAX_ENTRIES || !flat_lit(r->p, r->len, &r->i, "<key>", 5) ||
            !flat_text(r->p, r->len, &r->i, "</key>", 6, key) || !key[0] ||
            plist_dict_get_item(dict, key))
            return false;
        plist_t value = flat_value(r, depth_left);
        if (!value)
            return false;
        plist_dict_set_item(dict, key, value);
        entries++;
    }
}

static bool flat_items(flat_reader *r, plist_t array, unsigned depth_left)
{
    for (;;) {
        flat_space(r->p, r->len, &r->i);
        if (flat_lit(r->p, r->len, &r->i, "</array>", 8))
            return true;
        plist_t value = flat_value(r, depth_left);
        if (!value)
            return false;
        plist_array_append_item(array, value);
    }
}

plist_t plist_xml_flat_dict(const void *data, size_t len)
{
    return plist_xml_flat_read(data, len, FLAT_MAX_DEPTH);
}

plist_t plist_xml_flat_read(const void *data, size_t len, unsigned max_depth)
{
    if (max_depth > FLAT_MAX_DEPTH)
        max_depth = FLAT_MAX_DEPTH;
    if (max_depth == 0)
        return NULL;
    const char *p = data;
    size_t i = 0;
    flat_space(p, len, &i);
    if (flat_lit(p, len, &i, "<?xml", 5)) {
        if (!flat_run(p, len, &i, '?', FLAT_LT | FLAT_GT, true) || !flat_lit(p, len, &i, "?>", 2))
            return NULL;
        flat_space(p, len, &i);
    }
    if (flat_lit(p, len, &i, "<!DOCTYPE", 9)) {
        if (!flat_run(p, len, &i, '>', FLAT_LT | FLAT_BRACKET | FLAT_APOS, true) ||
            !flat_lit(p, len, &i, ">", 1))
            return NULL;
        flat_space(p, len, &i);
    }
    if (!flat_lit(p, len, &i, "<plist", 6) || i >= len || (p[i] != '>' && p[i] != ' '))
        return NULL;
    if (!flat_run(p, len, &i, '>', FLAT_LT | FLAT_SLASH | FLAT_APOS, true) ||
        !flat_lit(p, len, &i, ">", 1))
        return NULL;
    flat_space(p, len, &i);
    if (!flat_lit(p, len, &i, "<dict>", 6))
        return NULL;
    flat_reader r; /* its text needs no clearing: each string is written whole */
    r.p = p;
    r.len = len;
    r.i = i;
    r.nodes = 0;
    plist_t dict = plist_new_dict();
    if (!dict || !flat_entries(&r, dict, max_depth - 1))
        goto general;
    i = r.i;
    flat_space(p, len, &i);
    if (!flat_lit(p, len, &i, "</plist>", 8))
        goto general;
    flat_space(p, len, &i);
    if (i == len)
        return dict;
general:
    plist_free(dict);
    return NULL;
}

esim_err esim_plist_parse_dict(const void *data, size_t len, const esim_parse_limits *limits,
                               plist_t *root, esim_error *err)
{
    if (!root)
        return esim_fail(err, ESIM_EINVAL, "no place to put the parsed plist");
    if (!data || len == 0)
        return esim_fail(err, ESIM_EINVAL, "the body is empty; expected an XML or binary plist");
    esim_parse_limits l = plist_effective_limits(limits);
    if (len > l.max_body || len > UINT32_MAX)
        return esim_fail(err, ESIM_ETOOBIG, "the body is %zu bytes, over the limit of %zu bytes",
                         len, l.max_body);
    const unsigned char *p = data;
    bool binary = len >= BPLIST_MAGIC_LEN && memcmp(p, BPLIST_MAGIC, BPLIST_MAGIC_LEN) == 0;
    if (!binary) {
        plist_t flat = plist_xml_flat_read(data, len, l.max_depth);
        if (flat) {
            *root = flat;
            return ESIM_OK;
        }
    }
    esim_err rc;
    size_t xml_dict_values = 0;
    if (binary) {
        rc = bplist_check_graph(p, len, l.max_depth, err);
    } else {
        if (!plist_looks_like_plist(data, len))
            return esim_fail(err, ESIM_EINVAL,
                             "the body is not a plist (neither XML nor binary \"bplist00\")");
        /* XML forbids U+0000, and libplist 2.2 would keep it inside a string
         * whose later reads then abort on an assertion. */
        if (memchr(data, '\0', len))
            return esim_fail(err, ESIM_EINVAL, "the XML plist contains a NUL byte");
        rc = xml_check_nesting(data, len, l.max_depth, &xml_dict_values, err);
    }
    if (rc != ESIM_OK)
        return rc;
    plist_t node = NULL;
    if (binary)
        plist_from_bin(data, (uint32_t)len, &node);
    else
        plist_from_xml(data, (uint32_t)len, &node);
    if (!node)
        return esim_fail(err, ESIM_EINVAL, "the body is not a well-formed %s plist",
                         binary ? "binary" : "XML");
    if (plist_get_node_type(node) != PLIST_DICT) {
        plist_free(node);
        return esim_fail(err, ESIM_EINVAL, "the plist's top level is not a dictionary");
    }
    /* The pre-scans are conservative; this walk is the rule itself. */
    tree_check tc = {.dup = "", .dict_entries = 0};
    tree_verdict verdict = check_tree(node, l.max_depth, &tc);
    if (verdict == TREE_OK && !binary && tc.dict_entries != xml_dict_values) {
        plist_free(node);
        return esim_fail(err, ESIM_EINVAL,
                         "the XML plist repeats a key inside a dictionary (or has dictionary "
                         "entries after its top-level one); a key may appear only once");
    }
    if (verdict != TREE_OK) {
        plist_free(node);
        switch (verdict) {
        case TREE_TOO_DEEP:
            return esim_fail(err, ESIM_ETOOBIG,
                             "plist nests containers deeper than the limit of %u levels",
                             l.max_depth);
        case TREE_DUP_KEY:
            return esim_fail(err, ESIM_EINVAL,
                             "plist dictionary holds the key \"%s\" more than once; a "
                             "key may appear only once",
                             tc.dup);
        case TREE_NOMEM:
            return esim_fail(err, ESIM_ENOMEM, "out of memory checking the plist");
        default:
            return esim_fail(err, ESIM_EINVAL, "plist string contains a NUL character");
        }
    }
    *root = node;
    return ESIM_OK;
}

esim_err esim_plist_serialize(plist_t node, esim_plist_format format, esim_buf *out,
                              esim_error *err)
{
    if (!node || !out)
        return esim_fail(err, ESIM_EINVAL, "nothing to serialize");
    if (format != ESIM_PLIST_XML && format != ESIM_PLIST_BINARY)
        return esim_fail(err, ESIM_EINVAL, "unknown plist format %d; use XML or binary",
                         (int)format);
    char *bytes = NULL;
    uint32_t n = 0;
    if (format == ESIM_PLIST_XML)
        plist_to_xml(node, &bytes, &n);
    else
        plist_to_bin(node, &bytes, &n);
    if (!bytes)
        return esim_fail(err, ESIM_ENOMEM, "could not serialize the plist");
    esim_buf fresh = {0};
    esim_err rc = esim_buf_append(&fresh, bytes, n);
    if (format == ESIM_PLIST_XML)
        plist_to_xml_free(bytes);
    else
        plist_to_bin_free(bytes);
    if (rc != ESIM_OK) {
        esim_buf_free(&fresh);
        return esim_fail(err, rc, "out of memory serializing the plist");
    }
    esim_buf_free(out);
    *out = fresh;
    return ESIM_OK;
}

/* ---- typed reads ------------------------------------------------------------ */

esim_err plist_copy_field(const char *s, size_t len, char *out, size_t out_len, const char *key,
                          const char *what, esim_error *err)
{
    if (memchr(s, '\0', len))
        return esim_fail(err, ESIM_EINVAL, "%s: %s contains a NUL character", what, key);
    if (len >= out_len)
        return esim_fail(err, ESIM_EINVAL, "%s: %s is %zu bytes, longer than the %zu allowed", what,
                         key, len, out_len - 1);
    memcpy(out, s, len);
    out[len] = '\0';
    return ESIM_OK;
}

static const char *type_name(plist_type t)
{
    switch (t) {
    case PLIST_BOOLEAN:
        return "a boolean";
    case PLIST_UINT:
        return "an integer";
    case PLIST_REAL:
        return "a real";
    case PLIST_STRING:
        return "a string";
    case PLIST_ARRAY:
        return "an array";
    case PLIST_DICT:
        return "a dictionary";
    case PLIST_DATE:
        return "a date";
    case PLIST_DATA:
        return "data";
    default:
        return "an unexpected type";
    }
}

static esim_err lookup(plist_t dict, const char *key, bool required, plist_type want, plist_t *node,
                       const char *what, esim_error *err)
{
    *node = plist_dict_get_item(dict, key);
    if (!*node)
        return required ? esim_fail(err, ESIM_EINVAL, "%s: required key %s is missing", what, key)
                        : ESIM_ENOTFOUND;
    plist_type got = plist_get_node_type(*node);
    if (got != want)
        return esim_fail(err, ESIM_EINVAL, "%s: %s must be %s, not %s", what, key, type_name(want),
                         type_name(got));
    return ESIM_OK;
}

esim_err plist_read_string(plist_t dict, const char *key, bool required, char *out, size_t out_len,
                           const char *what, esim_error *err)
{
    plist_t node;
    if (out_len)
        out[0] = '\0';
    esim_err rc = lookup(dict, key, required, PLIST_STRING, &node, what, err);
    if (rc != ESIM_OK)
        return rc;
    uint64_t len = 0;
    const char *s = plist_get_string_ptr(node, &len);
    if (!s)
        return plist_copy_field("", 0, out, out_len, key, what, err);
    return plist_copy_field(s, (size_t)len, out, out_len, key, what, err);
}

esim_err plist_read_bool(plist_t dict, const char *key, bool required, bool *out, const char *what,
                         esim_error *err)
{
    plist_t node;
    esim_err rc = lookup(dict, key, required, PLIST_BOOLEAN, &node, what, err);
    if (rc != ESIM_OK)
        return rc;
    uint8_t v = 0;
    plist_get_bool_val(node, &v);
    *out = v != 0;
    return ESIM_OK;
}

esim_err plist_read_int(plist_t dict, const char *key, bool required, int64_t *out,
                        const char *what, esim_error *err)
{
    plist_t node;
    esim_err rc = lookup(dict, key, required, PLIST_UINT, &node, what, err);
    if (rc != ESIM_OK)
        return rc;
    uint64_t v = 0;
    plist_get_uint_val(node, &v);
    *out = (int64_t)v;
    return ESIM_OK;
}

esim_err plist_read_data(plist_t dict, const char *key, bool required, esim_buf *out,
                         const char *what, esim_error *err)
{
    plist_t node;
    esim_err rc = lookup(dict, key, required, PLIST_DATA, &node, what, err);
    if (rc != ESIM_OK)
        return rc;
    uint64_t len = 0;
    const char *p = plist_get_data_ptr(node, &len);
    esim_buf fresh = {0};
    if ((rc = esim_buf_append(&fresh, p ? p : "", p ? (size_t)len : 0)) != ESIM_OK) {
        esim_buf_free(&fresh);
        return esim_fail(err, rc, "out of memory reading %s", key);
    }
    esim_buf_free(out);
    *out = fresh;
    return ESIM_OK;
}
