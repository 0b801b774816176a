/*
 * omadm_readers.h — the service's two SyncML readers (service/omadm_syncml.c:
 * the strict reader for plain XML first, libxml2 for the rest) held to one
 * result: the same bytes read both ways must give the same return code, the
 * same error text and the same omadm_msg, field for field (the items, the
 * Status and Results data, the raw text the ledger keeps). Used by
 * test_omadm_readers, by the service harness on every message and fragment
 * the service tests make it read, and by the syncml_readers fuzz target.
 */
#ifndef ESIM_TESTS_SERVICE_OMADM_READERS_H
#define ESIM_TESTS_SERVICE_OMADM_READERS_H

#include <stdio.h>
#include <string.h>

#include "service/omadm.h"

static inline bool omadm_readers_str_same(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* |a| and |b| equal, field for field; else false with the first difference in |why|. */
static inline bool omadm_readers_msg_same(const omadm_msg *a, const omadm_msg *b, char *why,
                                          size_t why_len)
{
#define OR_STR(x, y, what)                                                                         \
    if (!omadm_readers_str_same((x), (y))) {                                                       \
        snprintf(why, why_len, "%s: '%s' against '%s'", what, (x) ? (x) : "(null)",                \
                 (y) ? (y) : "(null)");                                                            \
        return false;                                                                              \
    }
    OR_STR(a->ver_dtd, b->ver_dtd, "VerDTD");
    OR_STR(a->ver_proto, b->ver_proto, "VerProto");
    OR_STR(a->session_id, b->session_id, "SessionID");
    OR_STR(a->target, b->target, "Target");
    OR_STR(a->source, b->source, "Source");
    if (a->msg_id != b->msg_id || a->final != b->final || a->n_cmds != b->n_cmds) {
        snprintf(why, why_len, "MsgID %lu/%lu, Final %d/%d, %zu/%zu commands", a->msg_id, b->msg_id,
                 a->final, b->final, a->n_cmds, b->n_cmds);
        return false;
    }
    for (size_t i = 0; i < a->n_cmds; i++) {
        const omadm_cmd *c = &a->cmds[i], *d = &b->cmds[i];
        if (c->verb != d->verb || c->parent != d->parent || strcmp(c->name, d->name) != 0 ||
            c->n_items != d->n_items) {
            snprintf(why, why_len, "command %zu: %s/%s, parent %d/%d, %zu/%zu items", i, c->name,
                     d->name, c->parent, d->parent, c->n_items, d->n_items);
            return false;
        }
        OR_STR(c->cmd_id, d->cmd_id, "CmdID");
        OR_STR(c->msg_ref, d->msg_ref, "MsgRef");
        OR_STR(c->cmd_ref, d->cmd_ref, "CmdRef");
        OR_STR(c->cmd, d->cmd, "Cmd");
        OR_STR(c->data, d->data, "Data");
        OR_STR(c->hresult, d->hresult, "originalerror");
        OR_STR(c->meta_format, d->meta_format, "Meta/Format");
        OR_STR(c->meta_type, d->meta_type, "Meta/Type");
        OR_STR(c->raw, d->raw, "raw");
        for (size_t k = 0; k < c->n_items; k++) {
            const omadm_item *x = &c->items[k], *y = &d->items[k];
            OR_STR(x->target, y->target, "Item/Target");
            OR_STR(x->source, y->source, "Item/Source");
            OR_STR(x->format, y->format, "Item/Meta/Format");
            OR_STR(x->type, y->type, "Item/Meta/Type");
            OR_STR(x->data, y->data, "Item/Data");
        }
    }
#undef OR_STR
    return true;
}

/*
 * Reads |body| both ways: as a device's message (|uuid| NULL, omadm_parse)
 * or as a queued command of |uuid| (omadm_parse_commands). 1 when the
 * strict reader read it, 0 when it handed it to libxml2 (then there is
 * nothing to compare), -1 when the two differ (|why| says how).
 */
static inline int omadm_readers_check(const void *body, size_t len, const char *uuid, char *why,
                                      size_t why_len)
{
    omadm_msg m[2];
    esim_error e[2] = {{{0}}, {{0}}};
    esim_err rc[2];
    bool plain[2];
    for (int k = 0; k < 2; k++)
        rc[k] = uuid ? omadm_parse_commands_as(k == 1, &plain[k], body, len, uuid, &m[k], &e[k])
                     : omadm_parse_as(k == 1, &plain[k], body, len, &m[k], &e[k]);
    int result = plain[0] ? 1 : 0;
    if (plain[1]) {
        snprintf(why, why_len, "the strict reader read it when told libxml2 only");
        result = -1;
    } else if (rc[0] != rc[1] || strcmp(e[0].msg, e[1].msg) != 0) {
        snprintf(why, why_len, "rc %d against %d: '%.200s' against '%.200s'", rc[0], rc[1],
                 e[0].msg, e[1].msg);
        result = -1;
    } else if (rc[0] == ESIM_OK && !omadm_readers_msg_same(&m[0], &m[1], why, why_len)) {
        result = -1;
    } else if (rc[0] != ESIM_OK && (m[0].cmds || m[0].source || m[1].cmds || m[1].source)) {
        snprintf(why, why_len, "refused (%.200s) with something left allocated", e[0].msg);
        result = -1;
    }
    omadm_msg_free(&m[0]);
    omadm_msg_free(&m[1]);
    return result;
}

#endif
