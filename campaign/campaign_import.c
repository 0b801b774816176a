/*
 * campaign_import.c — parsers for the offline workflow's files: OEM/reseller
 * EID manifests (serial,EID) and operator activation-code lists
 * (EID,LPA:1$…[,ICCID]). Pure functions: a bad line is reported with its
 * number and reason, and every good line is kept.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/internal.h"
#include "campaign/campaign_engine.h"

#define MAX_FIELDS 16
#define MAX_FIELD 600

typedef struct {
    char f[MAX_FIELDS][MAX_FIELD];
    size_t n;
    bool too_long; /* a field did not fit */
    bool bad_quote;
} csv_row;

/* Splits one line on commas outside double quotes; trims each field and
 * removes its quotes ("" inside quotes is one "). */
static void csv_split(const char *s, size_t len, csv_row *row)
{
    row->n = 0;
    row->too_long = row->bad_quote = false;
    size_t i = 0;
    while (row->n < MAX_FIELDS) {
        char *out = row->f[row->n++];
        size_t o = 0;
        while (i < len && (s[i] == ' ' || s[i] == '\t'))
            i++;
        bool quoted = i < len && s[i] == '"';
        if (quoted)
            i++;
        for (; i < len; i++) {
            char ch = s[i];
            if (quoted && ch == '"') {
                if (i + 1 < len && s[i + 1] == '"') {
                    i++;
                } else {
                    quoted = false;
                    continue;
                }
            } else if (!quoted && ch == ',') {
                break;
            }
            if (o + 1 < MAX_FIELD)
                out[o++] = ch;
            else
                row->too_long = true;
        }
        if (quoted)
            row->bad_quote = true;
        while (o > 0 && (out[o - 1] == ' ' || out[o - 1] == '\t'))
            o--;
        out[o] = '\0';
        if (i >= len)
            return;
        i++; /* the comma */
    }
}

typedef struct {
    campaign_import imp;
    size_t cap_rows, cap_bad;
    bool codes;
} import_ctx;

static esim_err add_bad(import_ctx *x, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static esim_err add_bad(import_ctx *x, unsigned line, const char *fmt, ...)
{
    x->imp.n_bad_total++;
    if (x->imp.n_bad >= CAMPAIGN_IMPORT_MAX_BAD)
        return ESIM_OK;
    if (x->imp.n_bad == x->cap_bad) {
        campaign_bad_line *b = esim_grow(x->imp.bad, &x->cap_bad, x->imp.n_bad + 1, sizeof *b);
        if (!b)
            return ESIM_ENOMEM;
        x->imp.bad = b;
    }
    campaign_bad_line *b = &x->imp.bad[x->imp.n_bad++];
    b->line = line;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->reason, sizeof b->reason, fmt, ap);
    va_end(ap);
    return ESIM_OK;
}

static esim_err grow_rows(import_ctx *x)
{
    size_t n = x->codes ? x->imp.n_codes : x->imp.n_eids;
    if (n < x->cap_rows)
        return ESIM_OK;
    size_t cap = x->cap_rows ? x->cap_rows * 2 : 64;
    if (x->codes) {
        campaign_code_row *r = realloc(x->imp.codes, cap * sizeof *r);
        if (!r)
            return ESIM_ENOMEM;
        x->imp.codes = r;
    } else {
        campaign_eid_row *r = realloc(x->imp.eids, cap * sizeof *r);
        if (!r)
            return ESIM_ENOMEM;
        x->imp.eids = r;
    }
    x->cap_rows = cap;
    return ESIM_OK;
}

void campaign_import_free(campaign_import *imp)
{
    if (!imp)
        return;
    free(imp->eids);
    free(imp->codes);
    free(imp->bad);
    memset(imp, 0, sizeof *imp);
}

/* ---- duplicate detection: an open-addressing set of line numbers keyed by
 * a string of the row, so a repeat names the line it repeats. ---- */

typedef struct {
    unsigned *slots; /* row index + 1; 0 = empty */
    size_t cap;
} dup_set;

static esim_err dup_init(dup_set *d, size_t expect)
{
    d->cap = 64;
    while (d->cap < expect * 2 + 16)
        d->cap *= 2;
    d->slots = calloc(d->cap, sizeof *d->slots);
    return d->slots ? ESIM_OK : ESIM_ENOMEM;
}

typedef const char *(*key_fn)(const void *ctx, unsigned row, int which);

/* The row index + 1 stored under |key|, or 0. */
static unsigned dup_find(const dup_set *d, const char *key, key_fn key_of, const void *x, int which)
{
    size_t i = esim_hash_str(key) & (d->cap - 1);
    while (d->slots[i]) {
        if (strcmp(key_of(x, d->slots[i] - 1, which), key) == 0)
            return d->slots[i];
        i = (i + 1) & (d->cap - 1);
    }
    return 0;
}

/* Stores |row| under |key| (not present; cap > 2 * rows, so there is room). */
static void dup_insert(dup_set *d, const char *key, unsigned row)
{
    size_t i = esim_hash_str(key) & (d->cap - 1);
    while (d->slots[i])
        i = (i + 1) & (d->cap - 1);
    d->slots[i] = row + 1;
}

static const char *row_key(const void *ctx, unsigned row, int which)
{
    const import_ctx *x = ctx;
    if (x->codes)
        return x->imp.codes[row].eid;
    return which == 0 ? x->imp.eids[row].serial : x->imp.eids[row].eid;
}

static unsigned row_line(const import_ctx *x, unsigned row)
{
    return x->codes ? x->imp.codes[row].line : x->imp.eids[row].line;
}

static size_t count_lines(const char *text, size_t len)
{
    size_t n = 1;
    for (size_t i = 0; i < len; i++)
        n += text[i] == '\n';
    return n;
}

/* Copies |src| (already checked to fit) into |dst| of |size| bytes. */
static void copy_field(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static bool field_is(const char *f, const char *name)
{
    return strcasecmp(f, name) == 0;
}

/* The header of a manifest, when the first data line is one. */
static bool eid_header(const csv_row *row, size_t *serial_col, size_t *eid_col)
{
    size_t s = MAX_FIELDS, e = MAX_FIELDS;
    for (size_t i = 0; i < row->n; i++) {
        if (field_is(row->f[i], "serial") || field_is(row->f[i], "serial_number") ||
            field_is(row->f[i], "serialnumber") || field_is(row->f[i], "serial number"))
            s = i;
        else if (field_is(row->f[i], "eid"))
            e = i;
    }
    if (s == MAX_FIELDS || e == MAX_FIELDS)
        return false;
    *serial_col = s;
    *eid_col = e;
    return true;
}

static bool serial_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-')
            return false;
    return true;
}

static esim_err parse_eid_line(import_ctx *x, const csv_row *row, unsigned line, size_t scol,
                               size_t ecol, dup_set *serials, dup_set *eids)
{
    if (row->bad_quote)
        return add_bad(x, line, "a double quote is not closed");
    if (row->too_long)
        return add_bad(x, line, "a field is longer than %d characters", MAX_FIELD - 1);
    size_t need = (scol > ecol ? scol : ecol) + 1;
    if (row->n < need)
        return add_bad(x, line, "has %zu column%s, needs at least %zu (serial,EID)", row->n,
                       row->n == 1 ? "" : "s", need);
    const char *serial = row->f[scol], *eid = row->f[ecol];
    if (!*serial)
        return add_bad(x, line, "the serial number is empty");
    if (strlen(serial) > 64 || !serial_ok(serial))
        return add_bad(x, line, "serial number '%.64s' is not 1 to 64 letters, digits or '-'",
                       serial);
    esim_error why = {{0}};
    if (esim_eid_validate(eid, &why) != ESIM_OK)
        return add_bad(x, line, "%s", why.msg);
    if (grow_rows(x) != ESIM_OK)
        return ESIM_ENOMEM;
    campaign_eid_row *r = &x->imp.eids[x->imp.n_eids];
    r->line = line;
    copy_field(r->serial, sizeof r->serial, serial);
    copy_field(r->eid, sizeof r->eid, eid);
    unsigned idx = (unsigned)x->imp.n_eids;
    unsigned prev = dup_find(serials, r->serial, row_key, x, 0);
    if (prev)
        return add_bad(x, line, "serial number %s already appeared on line %u", serial,
                       row_line(x, prev - 1));
    prev = dup_find(eids, r->eid, row_key, x, 1);
    if (prev)
        return add_bad(x, line, "EID %s already appeared on line %u", eid, row_line(x, prev - 1));
    dup_insert(serials, r->serial, idx);
    dup_insert(eids, r->eid, idx);
    x->imp.n_eids++;
    return ESIM_OK;
}

static esim_err parse_code_line(import_ctx *x, const csv_row *row, unsigned line, dup_set *eids)
{
    if (row->bad_quote)
        return add_bad(x, line, "a double quote is not closed");
    if (row->too_long)
        return add_bad(x, line, "a field is longer than %d characters", MAX_FIELD - 1);
    if (row->n < 2 || row->n > 3)
        return add_bad(x, line,
                       "has %zu column%s: expected EID,LPA:1$<SM-DP+>$<matching ID>[,ICCID]",
                       row->n, row->n == 1 ? "" : "s");
    esim_error why = {{0}};
    if (esim_eid_validate(row->f[0], &why) != ESIM_OK)
        return add_bad(x, line, "%s", why.msg);
    esim_activation_code ac;
    if (esim_activation_code_parse(row->f[1], &ac, &why) != ESIM_OK)
        return add_bad(x, line, "%s", why.msg);
    if (row->n == 3 && row->f[2][0] && esim_iccid_validate(row->f[2], &why) != ESIM_OK)
        return add_bad(x, line, "%s", why.msg);
    if (grow_rows(x) != ESIM_OK)
        return ESIM_ENOMEM;
    campaign_code_row *r = &x->imp.codes[x->imp.n_codes];
    memset(r, 0, sizeof *r);
    r->line = line;
    copy_field(r->eid, sizeof r->eid, row->f[0]);
    copy_field(r->code, sizeof r->code, row->f[1]);
    copy_field(r->smdp_address, sizeof r->smdp_address, ac.smdp_address);
    copy_field(r->matching_id, sizeof r->matching_id, ac.matching_id);
    if (row->n == 3)
        copy_field(r->iccid, sizeof r->iccid, row->f[2]);
    unsigned prev = dup_find(eids, r->eid, row_key, x, 0);
    if (prev)
        return add_bad(x, line, "EID %s already appeared on line %u", r->eid,
                       row_line(x, prev - 1));
    dup_insert(eids, r->eid, (unsigned)x->imp.n_codes);
    x->imp.n_codes++;
    return ESIM_OK;
}

static esim_err parse_file(const char *text, size_t len, bool codes, campaign_import *out,
                           esim_error *err)
{
    if (!text || !out)
        return esim_fail(err, ESIM_EINVAL, "no import text given");
    if (len > CAMPAIGN_IMPORT_MAX_BYTES)
        return esim_fail(err, ESIM_ETOOBIG, "import file is %zu bytes; the limit is %u", len,
                         CAMPAIGN_IMPORT_MAX_BYTES);
    if (memchr(text, '\0', len))
        return esim_fail(err, ESIM_EINVAL, "import file holds a NUL byte: it is not a text file");
    size_t lines = count_lines(text, len);
    if (lines > CAMPAIGN_IMPORT_MAX_ROWS)
        return esim_fail(err, ESIM_ETOOBIG, "import file has %zu lines; the limit is %u", lines,
                         CAMPAIGN_IMPORT_MAX_ROWS);

    import_ctx x = {.codes = codes};
    dup_set a = {0}, b = {0};
    csv_row *row = malloc(sizeof *row);
    esim_err rc = ESIM_ENOMEM;
    if (!row || dup_init(&a, lines) != ESIM_OK || dup_init(&b, lines) != ESIM_OK)
        goto fail;
    size_t scol = 0, ecol = 1;
    bool first = true;
    unsigned line = 0;
    for (size_t pos = 0; pos < len || (pos == len && line == 0 && len == 0);) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        size_t l = end - pos;
        const char *s = text + pos;
        pos = end + 1;
        line++;
        if (l > 0 && s[l - 1] == '\r')
            l--;
        if (line == 1 && l >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) { /* UTF-8 BOM (Excel) */
            s += 3;
            l -= 3;
        }
        size_t k = 0;
        while (k < l && (s[k] == ' ' || s[k] == '\t'))
            k++;
        if (k == l || s[k] == '#') {
            x.imp.n_skipped++;
            if (!nl)
                break;
            continue;
        }
        csv_split(s, l, row);
        if (first) {
            first = false;
            if (!codes && eid_header(row, &scol, &ecol)) {
                x.imp.n_skipped++;
                continue;
            }
            if (codes && row->n >= 1 && field_is(row->f[0], "eid")) {
                x.imp.n_skipped++;
                continue;
            }
        }
        rc = codes ? parse_code_line(&x, row, line, &a)
                   : parse_eid_line(&x, row, line, scol, ecol, &a, &b);
        if (rc != ESIM_OK)
            goto fail;
        if (!nl)
            break;
    }
    free(row);
    free(a.slots);
    free(b.slots);
    *out = x.imp;
    return ESIM_OK;
fail:
    free(row);
    free(a.slots);
    free(b.slots);
    campaign_import_free(&x.imp);
    return esim_fail(err, ESIM_ENOMEM, "out of memory while reading the import file");
}

esim_err campaign_import_parse_eids(const char *text, size_t len, campaign_import *out,
                                    esim_error *err)
{
    return parse_file(text, len, false, out, err);
}

esim_err campaign_import_parse_codes(const char *text, size_t len, campaign_import *out,
                                     esim_error *err)
{
    return parse_file(text, len, true, out, err);
}
