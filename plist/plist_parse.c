/*
 * plist_parse.c — turning untrusted bytes into a libplist tree safely, and a
 * tree back into bytes. Device bodies are hostile until proven otherwise, so
 * size and nesting are checked before libplist (whose parsers recurse) sees them.
 */
#include <stdlib.h>
#include <string.h>

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

static bool xml_name_is_container(const char *p, size_t rest, size_t *name_len)
{
    static const char *const names[] = {"dict", "array"};
    for (size_t k = 0; k < 2; k++) {
        size_t n = strlen(names[k]);
        if (rest > n && memcmp(p, names[k], n) == 0) {
            char c = p[n];
            if (c == '>' || c == '/' || c == ' ' || c == '\t' || c == '\r' || c == '\n') {
                *name_len = n;
                return true;
            }
        }
    }
    return false;
}

/*
 * Counts <dict>/<array> nesting without building anything. Raw '<' only
 * appears in markup (text escapes it as &lt;), so a linear scan for tags is
 * enough; comments and CDATA are skipped. Malformed markup is left for the
 * real parser to refuse; here it only ever counts as deeper, never shallower.
 */
static esim_err xml_check_nesting(const char *p, size_t len, unsigned max_depth, esim_error *err)
{
    size_t i = 0;
    unsigned depth = 0;
    while (i < len) {
        const char *lt = memchr(p + i, '<', len - i);
        if (!lt)
            break;
        i = (size_t)(lt - p) + 1;
        size_t rest = len - i;
        if (rest >= 3 && memcmp(p + i, "!--", 3) == 0) {
            const char *end = memmem(p + i + 3, rest - 3, "-->", 3);
            if (!end)
                break;
            i = (size_t)(end - p) + 3;
            continue;
        }
        if (rest >= 8 && memcmp(p + i, "![CDATA[", 8) == 0) {
            const char *end = memmem(p + i + 8, rest - 8, "]]>", 3);
            if (!end)
                break;
            i = (size_t)(end - p) + 3;
            continue;
        }
        bool closing = false;
        if (i < len && p[i] == '/') {
            closing = true;
            i++;
        }
        size_t name_len = 0;
        if (!xml_name_is_container(p + i, len - i, &name_len))
            continue;
        i += name_len;
        if (closing) {
            if (depth > 0)
                depth--;
            continue;
        }
        /* Stop at the next '<' as well as '>', so that a run of unclosed
         * tags cannot make this scan quadratic. */
        bool self_closing = false;
        while (i < len && p[i] != '>' && p[i] != '<')
            i++;
        if (i < len && p[i] == '>' && p[i - 1] == '/')
            self_closing = true;
        if (self_closing)
            continue;
        if (++depth > max_depth)
            return esim_fail(err, ESIM_ETOOBIG,
                             "plist nests containers deeper than the limit of %u levels",
                             max_depth);
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
    for (uint64_t k = 0; k < count; k++) {
        bool nul = unit == 1 ? p[k] == 0 : (p[2 * k] == 0 && p[2 * k + 1] == 0);
        if (nul)
            return esim_fail(err, ESIM_EINVAL, "binary plist string contains a NUL character");
    }
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
 * The post-parse rule check: nesting within |depth_left| and no string whose
 * stored length disagrees with strlen() (see bplist_check_string). Keys are
 * not fetched: plist_dict_next_item() with a key pointer is where libplist
 * asserts; the pre-scans already refused NULs in keys.
 */
typedef enum { TREE_OK, TREE_TOO_DEEP, TREE_BAD_STRING } tree_verdict;

static tree_verdict check_tree(plist_t node, unsigned depth_left)
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
            v = check_tree(plist_array_get_item(node, k), depth_left - 1);
        return v;
    }
    plist_dict_iter it = NULL;
    plist_dict_new_iter(node, &it);
    while (v == TREE_OK) {
        plist_t val = NULL;
        plist_dict_next_item(node, it, NULL, &val);
        if (!val)
            break;
        v = check_tree(val, depth_left - 1);
    }
    free(it);
    return v;
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
    esim_err rc;
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
        rc = xml_check_nesting(data, len, l.max_depth, err);
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
    tree_verdict verdict = check_tree(node, l.max_depth);
    if (verdict != TREE_OK) {
        plist_free(node);
        return verdict == TREE_TOO_DEEP
                   ? esim_fail(err, ESIM_ETOOBIG,
                               "plist nests containers deeper than the limit of %u levels",
                               l.max_depth)
                   : esim_fail(err, ESIM_EINVAL, "plist string contains a NUL character");
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
