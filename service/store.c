/*
 * store.c — the store front, above every back end: esim_store_open() picks
 * the back end from the store specification ("sqlite:PATH", a path, or
 * postgres://), and each esim_store_* operation runs as one transaction of
 * the back end's small steps (store_internal.h). The domain rules live here,
 * once: identity binding, re-enrolment after an erase, what each Status does
 * to its queue entry, and what is an anomaly.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "service/store.h"
#include "core/internal.h"
#include "service/store_internal.h"

static const char *const qstate_names[] = {
    "queued",       "pushed",  "sent",    "acknowledged", "error",
    "format_error", "not_now", "expired", "canceled",
};

const char *esim_store_qstate_name(store_qstate s)
{
    if ((int)s < 0 || (size_t)s >= sizeof qstate_names / sizeof qstate_names[0])
        return NULL;
    return qstate_names[s];
}

esim_err esim_store_qstate_from_name(const char *name, store_qstate *out)
{
    for (size_t i = 0; name && i < sizeof qstate_names / sizeof qstate_names[0]; i++)
        if (strcmp(name, qstate_names[i]) == 0) {
            *out = (store_qstate)i;
            return ESIM_OK;
        }
    return ESIM_EINVAL;
}

bool esim_store_qstate_active(store_qstate s)
{
    return s == STORE_Q_QUEUED || s == STORE_Q_PUSHED || s == STORE_Q_SENT || s == STORE_Q_NOT_NOW;
}

const char *esim_store_push_state_name(store_push_state s)
{
    switch (s) {
    case STORE_PUSH_NONE:
        return "none";
    case STORE_PUSH_VALID:
        return "valid";
    case STORE_PUSH_DEAD:
        return "dead";
    }
    return "none";
}

void esim_store_queue_entries_free(store_queue_entry *entries, size_t n)
{
    if (!entries)
        return;
    for (size_t i = 0; i < n; i++) {
        free(entries[i].error_chain_json);
        esim_buf_free(&entries[i].result);
    }
    free(entries);
}

void esim_store_events_free(store_event *events, size_t n)
{
    if (!events)
        return;
    for (size_t i = 0; i < n; i++)
        esim_buf_free(&events[i].raw);
    free(events);
}

/* ---- opening ------------------------------------------------------------------ */

esim_err esim_store_open(const char *spec, const char *data_dir, const store_options *opts,
                         store **out, esim_error *err)
{
    store_options defaults = {0};
    if (!opts)
        opts = &defaults;
    if (!spec || !*spec) {
        if (!data_dir || !*data_dir)
            return esim_fail(err, ESIM_EINVAL,
                             "no store given: pass --store sqlite:PATH or --data-dir DIR");
        esim_err rc = esim_mkdirs(data_dir, 0700, err);
        if (rc != ESIM_OK)
            return rc;
        esim_buf path = {0};
        if (esim_buf_printf(&path, "%s/esim-mdm.db", data_dir) != ESIM_OK)
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        rc = store_sqlite_open((const char *)path.data, opts, out, err);
        esim_buf_free(&path);
        return rc;
    }
    if (strncmp(spec, "postgres://", 11) == 0 || strncmp(spec, "postgresql://", 13) == 0) {
        /* Every migration has its PostgreSQL form, or neither back end may
         * open: the two stay one schema. */
        if (store_pgsql_schema_version() != store_sqlite_schema_version())
            return esim_fail(err, ESIM_ESTORE,
                             "this build's PostgreSQL schema (version %d) lags its SQLite one "
                             "(%d): a migration lacks its PostgreSQL form",
                             store_pgsql_schema_version(), store_sqlite_schema_version());
        return store_pgsql_open(spec, opts, out, err);
    }
    if (strncmp(spec, "sqlite:", 7) == 0)
        spec += 7;
    else if (strstr(spec, "://"))
        return esim_fail(err, ESIM_EINVAL, "unknown store '%s': use sqlite:PATH", spec);
    if (!*spec)
        return esim_fail(err, ESIM_EINVAL,
                         "--store sqlite: needs a path, as in sqlite:/var/lib/esim-mdm/esim.db");
    return store_sqlite_open(spec, opts, out, err);
}

void esim_store_close(store *st)
{
    if (st)
        st->ops->close(st);
}

int esim_store_schema_version(void)
{
    return store_sqlite_schema_version();
}

const char *esim_store_backend(const store *st)
{
    return st->ops->name;
}

const char *esim_store_last_error(const store *st)
{
    return st->last_error;
}

unsigned esim_store_features(const store *st)
{
    return st->ops->features;
}

void esim_store_backend_stats(store *st, store_backend_stats *out)
{
    memset(out, 0, sizeof *out);
    st->ops->backend_stats(st, out);
}

/* ---- identity ------------------------------------------------------------------ */

/* LOCK ORDER. On a store several connections write at once (PostgreSQL), an
 * operation that changes a device's row and its queue entries changes the
 * row first. A command request changes the row (last seen) before it
 * chooses the next entry, and waits for an entry another transaction holds
 * (a push being recorded, a cancel) rather than passing over it: passed
 * over, the device was answered with nothing while its command waited, and
 * a campaign waited on it until it expired. Two requests of one device wait
 * for each other on its row, so no command is handed out twice. */

/* Checks that |udid| exists, is enrolled and (when both sides have one) is
 * bound to |cert|. |verb| names the request in messages. */
static esim_err check_identity(store *st, const char *udid, const char *cert, const char *verb,
                               int64_t now, esim_error *err)
{
    store_identity id;
    esim_err rc = st->ops->device_identity(st, udid, &id, err);
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, ESIM_ENOTFOUND,
                         "%s from unknown device %s: it must Authenticate first", verb, udid);
    if (rc != ESIM_OK)
        return rc;
    if (!id.enrolled)
        return esim_fail(err, ESIM_ESTATE,
                         "%s from device %s, which checked out: it must enroll again", verb, udid);
    if (cert && *cert && id.cert_sha256[0] && strcmp(cert, id.cert_sha256) != 0)
        return esim_fail(err, ESIM_EAUTH,
                         "%s for device %s signed by another identity certificate than the one "
                         "bound at enrolment",
                         verb, udid);
    if (cert && *cert && !id.cert_sha256[0]) {
        /* Enrolled without an identity (migrated from another server, or
         * while device auth was none): the first identity it presents is
         * bound, as at an Authenticate, and one identity binds one device. */
        char other[65];
        rc = st->ops->device_by_cert(st, cert, udid, other, err);
        if (rc == ESIM_OK)
            return esim_fail(err, ESIM_EAUTH,
                             "%s for device %s with the identity certificate of device %s: one "
                             "identity enrols one device",
                             verb, udid, other);
        if (rc != ESIM_ENOTFOUND)
            return rc;
        rc = st->ops->device_bind_cert(st, udid, cert, err);
        if (rc == ESIM_OK)
            rc =
                st->ops->event_add(st, now, "identity_bound", udid, NULL,
                                   "first identity of a device enrolled without one", NULL, 0, err);
        return rc;
    }
    return ESIM_OK;
}

/* An operation whose refusals all come before its first write. */
static esim_err op_begin_checked(store *st, esim_error *err)
{
    if (st->ops->op_begin_checked)
        return st->ops->op_begin_checked(st, err);
    return st->ops->op_begin(st, err);
}

/* check_identity, then last_seen_at = |now| (the EID too when |eid| is not
 * NULL): one statement where the back end has it and the device passes as
 * it is (nearly every request of a known device), the two steps otherwise. */
static esim_err check_identity_seen(store *st, const char *udid, const char *cert, const char *eid,
                                    const char *verb, int64_t now, esim_error *err)
{
    if (st->ops->device_seen_verified) {
        esim_err rc = st->ops->device_seen_verified(st, udid, cert, eid, now, err);
        if (rc != ESIM_ENOTFOUND)
            return rc;
    }
    esim_err rc = check_identity(st, udid, cert, verb, now, err);
    if (rc == ESIM_OK)
        rc = st->ops->device_seen(st, udid, eid, now, err);
    return rc;
}

/*
 * ...unless we wiped it. An erased device comes back through setup and
 * enrols with a fresh identity from SCEP, often without having answered the
 * EraseDevice (Apple: do not wait for that answer). So an EraseDevice handed
 * to the device during its current enrolment lets exactly one new identity
 * in: the erase is retired (never delivered again, or the phone would wipe
 * once more) and a new enrolment starts, which later erases must precede.
 *
 * That one identity is bound as tightly as the protocol allows, so another
 * device cannot claim the wiped UDID first: it must not be bound to any
 * other device (checked by the caller), it must have been issued after the
 * erase went out (its notBefore, less STORE_ERASE_ISSUE_SKEW_MS for CAs
 * that backdate), and the device must report the serial number it reported
 * before.
 */
#define STORE_ERASE_ISSUE_SKEW_MS (2 * 3600 * 1000LL)

static esim_err rebind_after_erase(store *st, const store_identity *id,
                                   const store_authenticate_in *in, int64_t now, esim_error *err)
{
    int64_t erase = 0, sent_at = 0;
    esim_err rc = st->ops->entry_last_sent(st, in->udid, "EraseDevice", id->enrolled_at, &erase,
                                           &sent_at, err);
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, ESIM_EAUTH,
                         "Authenticate for enrolled device %s with another identity certificate; "
                         "the device must check out (or be erased) before it enrolls with a new "
                         "identity",
                         in->udid);
    if (rc != ESIM_OK)
        return rc;
    if (in->cert_not_before && in->cert_not_before < sent_at - STORE_ERASE_ISSUE_SKEW_MS)
        return esim_fail(err, ESIM_EAUTH,
                         "Authenticate for erased device %s with an identity certificate issued "
                         "before the erase: a wiped device enrols with a fresh identity",
                         in->udid);
    if (id->serial_number[0] &&
        (!in->serial_number || strcmp(in->serial_number, id->serial_number) != 0))
        return esim_fail(err, ESIM_EAUTH,
                         "Authenticate for erased device %s reports serial number '%.64s', not "
                         "the erased device's",
                         in->udid, in->serial_number ? in->serial_number : "");
    rc = st->ops->device_restart_enrolment(st, in->udid, now, err); /* LOCK ORDER */
    if (rc == ESIM_OK)
        rc = st->ops->entry_retire(st, erase, now, err);
    if (rc == ESIM_OK)
        rc =
            st->ops->event_add(st, now, "reenrolled_after_erase", in->udid, NULL,
                               "new identity accepted: an EraseDevice was delivered", NULL, 0, err);
    return rc;
}

esim_err esim_store_device_authenticate(store *st, const store_authenticate_in *in, int64_t now,
                                        esim_error *err)
{
    if (!in || !in->udid || !*in->udid || !in->topic || !*in->topic)
        return esim_fail(err, ESIM_EINVAL, "Authenticate needs a UDID and a Topic");
    bool has_cert = in->cert_sha256 && *in->cert_sha256;
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    /* One identity enrols one device: a certificate already bound to
     * another UDID cannot claim this one (nor enrol any number of them). */
    char other[65];
    if (has_cert) {
        rc = st->ops->device_by_cert(st, in->cert_sha256, in->udid, other, err);
        if (rc == ESIM_OK)
            rc = esim_fail(err, ESIM_EAUTH,
                           "Authenticate for device %s with the identity certificate of device "
                           "%s: one identity enrols one device",
                           in->udid, other);
        else if (rc == ESIM_ENOTFOUND)
            rc = ESIM_OK;
    }
    store_identity id;
    bool keep_token = false;
    if (rc == ESIM_OK)
        rc = st->ops->device_identity(st, in->udid, &id, err);
    if (rc == ESIM_ENOTFOUND) {
        rc = ESIM_OK;
    } else if (rc == ESIM_OK && id.enrolled && id.cert_sha256[0] && has_cert &&
               strcmp(id.cert_sha256, in->cert_sha256) != 0) {
        /* The identity is bound at enrolment; while the device stays enrolled
         * another certificate must not take its UDID over... */
        rc = rebind_after_erase(st, &id, in, now, err);
    } else if (rc == ESIM_OK && id.enrolled && id.cert_sha256[0] && has_cert) {
        /* The same identity again while enrolled: a repeated (or replayed)
         * Authenticate. The device's TokenUpdate follows a real one and
         * replaces the token then; until it does, the working token stays,
         * so a replay cannot cut the device off from its pushes. */
        keep_token = true;
    }
    if (rc == ESIM_OK)
        rc = st->ops->device_enroll(st, in, keep_token, now, err);
    if (rc == ESIM_OK)
        rc = st->ops->event_add(st, now, "authenticate", in->udid, NULL, in->topic, NULL, 0, err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_device_token_update(store *st, const char *udid, const char *cert_sha256,
                                        const char *topic, const char *token_hex,
                                        const char *push_magic, int64_t now, esim_error *err)
{
    return esim_store_device_token_update_tally(st, udid, cert_sha256, topic, token_hex, push_magic,
                                                now, NULL, err);
}

esim_err esim_store_device_token_update_tally(store *st, const char *udid, const char *cert_sha256,
                                              const char *topic, const char *token_hex,
                                              const char *push_magic, int64_t now, int64_t *tally,
                                              esim_error *err)
{
    int64_t n = 0;
    if (!udid || !topic || !token_hex || !*token_hex || !push_magic || !*push_magic)
        return esim_fail(err, ESIM_EINVAL, "TokenUpdate needs a UDID, Topic, Token and PushMagic");
    esim_err rc = op_begin_checked(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = check_identity(st, udid, cert_sha256, "TokenUpdate", now, err);
    if (rc == ESIM_OK)
        rc = st->ops->device_set_token(st, udid, topic, token_hex, push_magic, now,
                                       tally ? &n : NULL, err);
    if (rc == ESIM_OK)
        rc = st->ops->event_add(st, now, "token_update", udid, NULL, topic, NULL, 0, err);
    rc = st->ops->op_end(st, rc, err);
    if (rc == ESIM_OK && tally)
        *tally = n;
    return rc;
}

esim_err esim_store_device_bootstrap_set(store *st, const char *udid, const char *cert_sha256,
                                         const void *token, size_t len, int64_t now,
                                         esim_error *err)
{
    if (!udid || (len && !token))
        return esim_fail(err, ESIM_EINVAL, "SetBootstrapToken needs a UDID");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = check_identity(st, udid, cert_sha256, "SetBootstrapToken", now, err);
    if (rc == ESIM_OK)
        rc = st->ops->device_bootstrap_set(st, udid, token, len, err);
    if (rc == ESIM_OK)
        rc = st->ops->event_add(st, now, "bootstrap_token_set", udid, NULL, NULL, NULL, 0, err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_device_bootstrap_get(store *st, const char *udid, const char *cert_sha256,
                                         esim_buf *out, int64_t now, esim_error *err)
{
    if (!udid || !out)
        return esim_fail(err, ESIM_EINVAL, "GetBootstrapToken needs a UDID");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = check_identity(st, udid, cert_sha256, "GetBootstrapToken", now, err);
    if (rc == ESIM_OK) {
        rc = st->ops->device_bootstrap_get(st, udid, out, err);
        if (rc == ESIM_ENOTFOUND)
            rc = ESIM_OK; /* none: |out| stays empty */
    }
    if (rc == ESIM_OK)
        rc = st->ops->event_add(st, now, "bootstrap_token_get", udid, NULL, NULL, NULL, 0, err);
    rc = st->ops->op_end(st, rc, err);
    if (rc != ESIM_OK && out->data) {
        OPENSSL_cleanse(out->data, out->len);
        esim_buf_free(out);
    }
    return rc;
}

esim_err esim_store_device_checkin(store *st, const char *udid, const char *cert_sha256,
                                   const char *kind, const char *detail, int64_t now,
                                   esim_error *err)
{
    if (!udid || !kind)
        return esim_fail(err, ESIM_EINVAL, "a check-in needs a UDID and a kind");
    esim_err rc = op_begin_checked(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = check_identity_seen(st, udid, cert_sha256, NULL, kind, now, err);
    if (rc == ESIM_OK)
        rc = st->ops->event_add(st, now, kind, udid, NULL, detail, NULL, 0, err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_device_checkout(store *st, const char *udid, const char *cert_sha256,
                                    int64_t now, esim_error *err)
{
    if (!udid)
        return esim_fail(err, ESIM_EINVAL, "CheckOut needs a UDID");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = check_identity(st, udid, cert_sha256, "CheckOut", now, err);
    /* CheckOut closes the queue: what was still pending will never be
     * delivered to this enrolment, so it is canceled, visibly. The device's
     * row first (LOCK ORDER above). */
    if (rc == ESIM_OK)
        rc = st->ops->device_unenroll(st, udid, now, err);
    if (rc == ESIM_OK)
        rc = st->ops->entries_cancel_device(st, udid, "canceled", "device checked out", now, err);
    if (rc == ESIM_OK)
        rc = st->ops->event_add(st, now, "checkout", udid, NULL, NULL, NULL, 0, err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_device_retire(store *st, const char *udid, const char *detail, int64_t now,
                                  esim_error *err)
{
    if (!udid || !*udid)
        return esim_fail(err, ESIM_EINVAL, "retiring a device needs its UDID");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    store_identity id;
    rc = st->ops->device_identity(st, udid, &id, err);
    if (rc == ESIM_ENOTFOUND)
        rc = esim_fail(err, ESIM_ENOTFOUND, "no device %s", udid);
    if (rc == ESIM_OK) /* the device's row first (LOCK ORDER above) */
        rc = st->ops->device_unenroll(st, udid, now, err);
    if (rc == ESIM_OK)
        rc = st->ops->entries_cancel_device(st, udid, "canceled", "device retired", now, err);
    if (rc == ESIM_OK)
        rc = st->ops->event_add(st, now, "retired", udid, NULL, detail, NULL, 0, err);
    return st->ops->op_end(st, rc, err);
}

/* ---- the command endpoint ------------------------------------------------------- */

/* What each Status does to the entry it answers. */
typedef struct {
    const char *status;
    store_qstate state;
    int not_now; /* counted as a NotNow */
} status_effect;

static const status_effect status_effects[] = {
    {"Acknowledged", STORE_Q_ACKNOWLEDGED, 0},
    {"Error", STORE_Q_ERROR, 0},
    {"CommandFormatError", STORE_Q_FORMAT_ERROR, 0},
    {"NotNow", STORE_Q_NOT_NOW, 1},
};

/* After an answer was recorded in its entry (and, when |logged|, its
 * ledger row with it). */
static esim_err answer_recorded(store *st, const store_exchange_in *in, const status_effect *fx,
                                bool logged, int64_t now, store_exchange_out *out, esim_error *err)
{
    esim_err rc = ESIM_OK;
    /* NotNow: the device did not keep the command; wake it again after a
     * back-off rather than waiting for it to come back by itself. */
    if (fx->not_now && in->not_now_backoff_ms > 0)
        rc = st->ops->device_owe_push(st, in->udid, now + in->not_now_backoff_ms, err);
    if (rc != ESIM_OK)
        return rc;
    out->outcome = STORE_RESULT_APPLIED;
    if (logged)
        return ESIM_OK;
    return st->ops->event_add(st, now, "result", in->udid, in->command_uuid, in->status, NULL, 0,
                              err);
}

/* Applies a non-Idle answer to its queue entry, or logs it as an anomaly. */
static esim_err record_answer(store *st, const store_exchange_in *in, const status_effect *fx,
                              int64_t now, store_exchange_out *out, esim_error *err)
{
    int64_t entry = 0;
    store_qstate state = STORE_Q_QUEUED;
    esim_err rc = ESIM_ENOTFOUND;
    /* The usual answer, to the command handed out: found and recorded in
     * one statement where the back end has it. */
    bool logged = st->ops->entry_answer_sent_logged != NULL;
    if (logged)
        rc = st->ops->entry_answer_sent_logged(st, in->udid, in->command_uuid, fx->state,
                                               fx->not_now, in->error_chain_json, in->raw,
                                               in->raw_len, in->status, now, err);
    else if (st->ops->entry_answer_sent)
        rc = st->ops->entry_answer_sent(st, in->udid, in->command_uuid, fx->state, fx->not_now,
                                        in->error_chain_json, in->raw, in->raw_len, now, err);
    if (rc == ESIM_OK)
        return answer_recorded(st, in, fx, logged, now, out, err);
    if (rc != ESIM_ENOTFOUND)
        return rc;
    rc = st->ops->entry_find(st, in->udid, in->command_uuid, &entry, &state, err);
    if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
        return rc;
    /* Only a command we handed to the device (state sent) awaits an answer.
     * Anything else is a stray or repeated answer: log it with the raw body
     * and never let it change the queue. */
    if (rc == ESIM_ENOTFOUND || state != STORE_Q_SENT) {
        out->outcome = STORE_RESULT_ANOMALY;
        if (rc == ESIM_ENOTFOUND)
            snprintf(out->anomaly, sizeof out->anomaly,
                     "%s for command %s, which was never queued for this device", in->status,
                     in->command_uuid);
        else
            snprintf(out->anomaly, sizeof out->anomaly,
                     "%s for command %s, which is %s: was not awaiting an answer", in->status,
                     in->command_uuid, esim_store_qstate_name(state));
        return st->ops->event_add(st, now, "anomaly", in->udid, in->command_uuid, out->anomaly,
                                  in->raw, in->raw_len, err);
    }
    rc = st->ops->entry_answer(st, entry, fx->state, fx->not_now, in->error_chain_json, in->raw,
                               in->raw_len, now, err);
    if (rc != ESIM_OK)
        return rc;
    return answer_recorded(st, in, fx, false, now, out, err);
}

/* Chooses the next deliverable command and marks it sent. */
static esim_err pick_next(store *st, const store_exchange_in *in, int64_t now,
                          store_next_command *next, esim_error *err)
{
    int64_t entry = 0;
    esim_err rc =
        st->ops->entry_next(st, in->udid, now, in->skip_uuids, in->n_skip, &entry, next, err);
    if (rc != ESIM_OK || !next->present)
        return rc;
    if (st->ops->entry_mark_sent_logged)
        return st->ops->entry_mark_sent_logged(st, entry, next->request_type, now, err);
    rc = st->ops->entry_mark_sent(st, entry, now, err);
    if (rc != ESIM_OK)
        return rc;
    return st->ops->event_add(st, now, "sent", in->udid, next->command_uuid, next->request_type,
                              NULL, 0, err);
}

esim_err esim_store_device_exchange(store *st, const store_exchange_in *in, int64_t now,
                                    store_exchange_out *out, esim_error *err)
{
    if (!in || !in->udid || !in->status || !out)
        return esim_fail(err, ESIM_EINVAL, "a command request needs a UDID and a Status");
    const status_effect *fx = NULL;
    bool idle = strcmp(in->status, "Idle") == 0;
    for (size_t i = 0; !idle && i < sizeof status_effects / sizeof status_effects[0]; i++)
        if (strcmp(in->status, status_effects[i].status) == 0)
            fx = &status_effects[i];
    if (!idle && !fx)
        return esim_fail(err, ESIM_EINVAL, "unknown Status '%s'", in->status);
    if (!idle && (!in->command_uuid || !*in->command_uuid))
        return esim_fail(err, ESIM_EINVAL, "a %s result needs a CommandUUID", in->status);

    esim_buf_free(&out->next.body);
    memset(out, 0, sizeof *out);
    esim_err rc = op_begin_checked(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = check_identity_seen(st, in->udid, in->cert_sha256, in->eid && *in->eid ? in->eid : NULL,
                             in->status, now, err);
    if (rc == ESIM_OK && fx)
        rc = record_answer(st, in, fx, now, out, err);
    if (rc == ESIM_OK)
        rc = in->hold_next ? ESIM_OK : pick_next(st, in, now, &out->next, err);
    rc = st->ops->op_end(st, rc, err);
    if (rc != ESIM_OK) {
        esim_buf_free(&out->next.body);
        memset(out, 0, sizeof *out);
    }
    return rc;
}

/* ---- reads ------------------------------------------------------------------------ */

esim_err esim_store_device_get(store *st, const char *udid, store_device *out, esim_error *err)
{
    if (!udid)
        return esim_fail(err, ESIM_ENOTFOUND, "no device (null)");
    return st->ops->device_get(st, udid, out, err);
}

esim_err esim_store_device_brief(store *st, const char *udid, store_device_brief *out,
                                 esim_error *err)
{
    if (!udid)
        return esim_fail(err, ESIM_ENOTFOUND, "no device (null)");
    if (st->ops->device_brief)
        return st->ops->device_brief(st, udid, out, err);
    store_device d;
    esim_err rc = st->ops->device_get(st, udid, &d, err);
    if (rc != ESIM_OK)
        return rc;
    memset(out, 0, sizeof *out);
    out->enrolled = d.enrolled;
    esim_copy_text(out->serial_number, sizeof out->serial_number, d.serial_number);
    esim_copy_text(out->os_version, sizeof out->os_version, d.os_version);
    esim_copy_text(out->eid, sizeof out->eid, d.eid);
    esim_copy_text(out->platform, sizeof out->platform, d.platform);
    return ESIM_OK;
}

esim_err esim_store_device_list(store *st, const char *after, size_t limit, store_device **out,
                                size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    if (limit == 0)
        return ESIM_OK;
    return st->ops->device_list(st, after ? after : "", limit, out, n, err);
}

/* Does |hay| contain |needle| (lower-case), ASCII letters in any case? */
static bool contains_folded(const char *hay, const char *needle)
{
    size_t nl = strlen(needle);
    for (const char *h = hay; *h; h++) {
        size_t i = 0;
        while (i < nl && h[i] && tolower((unsigned char)h[i]) == needle[i])
            i++;
        if (i == nl)
            return true;
    }
    return nl == 0;
}

static bool device_matches(const store_device *d, const char *q)
{
    return contains_folded(d->udid, q) || contains_folded(d->serial_number, q) ||
           contains_folded(d->device_name, q) || contains_folded(d->product_name, q) ||
           contains_folded(d->eid, q);
}

esim_err esim_store_device_search(store *st, const char *q, const char *after, size_t limit,
                                  store_device **out, size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    if (!q || !*q)
        return esim_store_device_list(st, after, limit, out, n, err);
    if (limit == 0)
        return ESIM_OK;
    char folded[128];
    size_t ql = strlen(q);
    if (ql >= sizeof folded)
        return esim_fail(err, ESIM_EINVAL, "the search text is longer than %zu bytes",
                         sizeof folded - 1);
    for (size_t i = 0; i <= ql; i++)
        folded[i] = (char)tolower((unsigned char)q[i]);
    if (st->ops->device_search)
        return st->ops->device_search(st, folded, after ? after : "", limit, out, n, err);
    /* No index for it: scan the devices in pages. */
    store_device *found = calloc(limit, sizeof *found);
    if (!found)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    char cursor[65];
    snprintf(cursor, sizeof cursor, "%s", after ? after : "");
    size_t got = 0;
    esim_err rc = ESIM_OK;
    while (got < limit) {
        store_device *page = NULL;
        size_t np = 0;
        if ((rc = st->ops->device_list(st, cursor, 1000, &page, &np, err)) != ESIM_OK)
            break;
        for (size_t i = 0; i < np && got < limit; i++)
            if (device_matches(&page[i], folded))
                found[got++] = page[i];
        if (np)
            snprintf(cursor, sizeof cursor, "%s", page[np - 1].udid);
        free(page);
        if (np < 1000)
            break;
    }
    if (rc != ESIM_OK) {
        free(found);
        return rc;
    }
    *out = found;
    *n = got;
    return ESIM_OK;
}

esim_err esim_store_fleet_counts(store *st, store_fleet_row **rows, size_t *n, esim_error *err)
{
    *rows = NULL;
    *n = 0;
    if (st->ops->fleet_counts)
        return st->ops->fleet_counts(st, rows, n, err);
    store_fleet_row *list = NULL;
    size_t count = 0, cap = 0;
    char cursor[65] = "";
    esim_err rc = ESIM_OK;
    for (;;) {
        store_device *page = NULL;
        size_t np = 0;
        if ((rc = st->ops->device_list(st, cursor, 1000, &page, &np, err)) != ESIM_OK)
            break;
        for (size_t i = 0; i < np && rc == ESIM_OK; i++) {
            const store_device *d = &page[i];
            store_device_facts f;
            memset(&f, 0, sizeof f);
            bool verified = st->ops->facts_get(st, d->udid, &f, NULL) == ESIM_OK && f.verified_ms;
            size_t k = 0;
            while (k < count &&
                   !(list[k].enrolled == d->enrolled && list[k].push_state == d->push_state &&
                     list[k].verified == verified && strcmp(list[k].platform, d->platform) == 0 &&
                     strcmp(list[k].product_name, d->product_name) == 0 &&
                     strcmp(list[k].model, d->model) == 0))
                k++;
            if (k == count) {
                if (count == cap) {
                    size_t nc = cap ? cap * 2 : 32;
                    store_fleet_row *g = realloc(list, nc * sizeof *g);
                    if (!g) {
                        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
                        break;
                    }
                    list = g;
                    cap = nc;
                }
                memset(&list[k], 0, sizeof list[k]);
                snprintf(list[k].platform, sizeof list[k].platform, "%s", d->platform);
                snprintf(list[k].product_name, sizeof list[k].product_name, "%s", d->product_name);
                snprintf(list[k].model, sizeof list[k].model, "%s", d->model);
                list[k].enrolled = d->enrolled;
                list[k].push_state = d->push_state;
                list[k].verified = verified;
                count++;
            }
            list[k].count++;
        }
        if (np)
            snprintf(cursor, sizeof cursor, "%s", page[np - 1].udid);
        free(page);
        if (rc != ESIM_OK || np < 1000)
            break;
    }
    if (rc != ESIM_OK) {
        free(list);
        return rc;
    }
    *rows = list;
    *n = count;
    return ESIM_OK;
}

esim_err esim_store_command_get(store *st, const char *uuid, const char *after, size_t limit,
                                store_command_info *info, store_queue_entry **entries, size_t *n,
                                esim_error *err)
{
    *entries = NULL;
    *n = 0;
    if (!uuid)
        return esim_fail(err, ESIM_ENOTFOUND, "no command (null)");
    return st->ops->command_get(st, uuid, after ? after : "", limit, info, entries, n, err);
}

esim_err esim_store_device_queue(store *st, const char *udid, bool with_done,
                                 store_queue_entry **entries, size_t *n, esim_error *err)
{
    *entries = NULL;
    *n = 0;
    if (!udid)
        return esim_fail(err, ESIM_ENOTFOUND, "no device (null)");
    /* One transaction, so the active and the final halves agree. */
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    store_identity id;
    rc = st->ops->device_identity(st, udid, &id, err);
    if (rc == ESIM_ENOTFOUND)
        rc = esim_fail(err, ESIM_ENOTFOUND, "no device %s", udid);
    if (rc == ESIM_OK)
        rc = st->ops->device_entries(st, udid, with_done, entries, n, err);
    rc = st->ops->op_end(st, rc, err);
    if (rc != ESIM_OK) {
        esim_store_queue_entries_free(*entries, *n);
        *entries = NULL;
        *n = 0;
    }
    return rc;
}

esim_err esim_store_push_target(store *st, const char *udid, store_push_target *out,
                                esim_error *err)
{
    if (udid && st->ops->push_target)
        return st->ops->push_target(st, udid, out, err);
    store_device d;
    esim_err rc = esim_store_device_get(st, udid, &d, err);
    if (rc != ESIM_OK)
        return rc;
    memset(out, 0, sizeof *out);
    memcpy(out->udid, d.udid, sizeof out->udid);
    memcpy(out->topic, d.topic, sizeof out->topic);
    memcpy(out->push_token, d.push_token, sizeof out->push_token);
    memcpy(out->push_magic, d.push_magic, sizeof out->push_magic);
    out->push_state = d.push_state;
    out->enrolled = d.enrolled;
    memcpy(out->platform, d.platform, sizeof out->platform);
    return ESIM_OK;
}

esim_err esim_store_events_list(store *st, const char *udid, int64_t after, size_t limit,
                                store_event **out, size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    if (limit == 0 || !udid)
        return ESIM_OK;
    return st->ops->events_list(st, udid, after, limit, out, n, err);
}

esim_err esim_store_event_latest(store *st, const char *udid, const char *const *kinds,
                                 size_t n_kinds, store_event *out, esim_error *err)
{
    if (!kinds || n_kinds == 0 || n_kinds > STORE_EVENT_KINDS_MAX)
        return esim_fail(err, ESIM_EINVAL, "the latest event of 1 to %d kinds, not %zu",
                         STORE_EVENT_KINDS_MAX, n_kinds);
    memset(out, 0, sizeof *out);
    esim_err rc = udid ? st->ops->event_latest(st, udid, kinds, n_kinds, out, err) : ESIM_ENOTFOUND;
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, ESIM_ENOTFOUND, "device %s has no %s event", udid ? udid : "(null)",
                         kinds[0]);
    return rc;
}

esim_err esim_store_audit_add(store *st, const store_audit *in, esim_error *err)
{
    if (!in || !in->who[0] || !in->method[0] || !in->target[0])
        return esim_fail(err, ESIM_EINVAL, "an audit entry needs who, method and target");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = st->ops->audit_add(st, in, err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_audit_list(store *st, int64_t after, size_t limit, store_audit **out, size_t *n,
                               esim_error *err)
{
    *out = NULL;
    *n = 0;
    if (limit == 0)
        return ESIM_OK;
    return st->ops->audit_list(st, after < 0 ? 0 : after, limit, out, n, err);
}

esim_err esim_store_stats(store *st, store_stats *out, esim_error *err)
{
    memset(out, 0, sizeof *out);
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    return st->ops->op_end(st, st->ops->stats(st, out, err), err);
}

/* ---- admin changes ------------------------------------------------------------------ */

esim_err esim_store_command_enqueue(store *st, const store_command_in *cmd,
                                    const char *const *udids, size_t n, int64_t now,
                                    esim_error *err)
{
    if (!cmd || !cmd->uuid || !*cmd->uuid || !cmd->request_type || !*cmd->request_type ||
        !cmd->body || cmd->body_len == 0)
        return esim_fail(err, ESIM_EINVAL, "a command needs a uuid, a request type and a body");
    if (n == 0 || !udids)
        return esim_fail(err, ESIM_EINVAL, "no devices to queue the command for");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = st->ops->command_insert(st, cmd, now, err);
    if (rc == ESIM_EEXIST)
        rc = esim_fail(err, ESIM_EEXIST, "command uuid %s is already used", cmd->uuid);
    for (size_t i = 0; rc == ESIM_OK && i < n; i++) {
        /* An enrolled device, the usual case, in one statement where the
         * back end has it; anything else below, which says why. */
        if (udids[i] && st->ops->entry_enqueue) {
            rc = st->ops->entry_enqueue(st, udids[i], cmd, now, err);
            if (rc == ESIM_EEXIST)
                rc = esim_fail(err, ESIM_EINVAL, "device %s is listed twice", udids[i]);
            if (rc != ESIM_ENOTFOUND)
                continue;
        }
        store_identity id;
        rc = udids[i] ? st->ops->device_identity(st, udids[i], &id, err) : ESIM_ENOTFOUND;
        if (rc == ESIM_ENOTFOUND)
            rc = esim_fail(err, ESIM_ENOTFOUND, "no device %s", udids[i] ? udids[i] : "(null)");
        else if (rc == ESIM_OK && !id.enrolled)
            rc =
                esim_fail(err, ESIM_ESTATE, "device %s is not enrolled (it checked out)", udids[i]);
        if (rc == ESIM_OK)
            rc = st->ops->entry_insert(st, udids[i], cmd, now, err);
        if (rc == ESIM_EEXIST)
            rc = esim_fail(err, ESIM_EINVAL, "device %s is listed twice", udids[i]);
        if (rc == ESIM_OK)
            rc = st->ops->event_add(st, now, "enqueued", udids[i], cmd->uuid, cmd->request_type,
                                    NULL, 0, err);
    }
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_queue_cancel(store *st, const char *udid, const char *uuid, int64_t now,
                                 esim_error *err)
{
    if (!udid || !uuid)
        return esim_fail(err, ESIM_EINVAL, "cancel needs a UDID and a command uuid");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    int64_t entry = 0;
    store_qstate state = STORE_Q_QUEUED;
    rc = st->ops->entry_find(st, udid, uuid, &entry, &state, err);
    if (rc == ESIM_ENOTFOUND)
        rc = esim_fail(err, ESIM_ENOTFOUND, "command %s is not queued for device %s", uuid, udid);
    else if (rc == ESIM_OK && !esim_store_qstate_active(state))
        rc = esim_fail(err, ESIM_ESTATE, "command %s for device %s is already %s", uuid, udid,
                       esim_store_qstate_name(state));
    if (rc == ESIM_OK)
        rc = st->ops->entry_cancel(st, entry, now, err);
    if (rc == ESIM_OK)
        rc = st->ops->event_add(st, now, "canceled", udid, uuid, "canceled by an admin", NULL, 0,
                                err);
    return st->ops->op_end(st, rc, err);
}

/* ---- pushes and time ------------------------------------------------------------------ */

esim_err esim_store_push_recorded(store *st, const char *udid, bool token_dead, int64_t now,
                                  esim_error *err)
{
    if (!udid)
        return esim_fail(err, ESIM_EINVAL, "a push needs a UDID");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    if (token_dead) {
        rc = st->ops->device_set_push_state(st, udid, STORE_PUSH_DEAD, err);
        if (rc == ESIM_OK)
            rc = st->ops->event_add(st, now, "push_token_dead", udid, NULL, NULL, NULL, 0, err);
    } else {
        /* The device's row first (LOCK ORDER above): with its entries held
         * while it waited for the row, a check-in holding the row would
         * wait for them in turn. */
        rc = st->ops->device_push_paid(st, udid, err);
        if (rc == ESIM_OK)
            rc = st->ops->entries_pushed(st, udid, now, err);
        if (rc == ESIM_OK)
            rc = st->ops->event_add(st, now, "pushed", udid, NULL, NULL, NULL, 0, err);
    }
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_device_owe_push(store *st, const char *udid, int64_t at, esim_error *err)
{
    if (!udid || !*udid || at <= 0)
        return esim_fail(err, ESIM_EINVAL, "a device and a time are needed");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    return st->ops->op_end(st, st->ops->device_owe_push(st, udid, at, err), err);
}

esim_err esim_store_push_due(store *st, int64_t now, char (*udids)[65], size_t max, size_t *n,
                             esim_error *err)
{
    *n = 0;
    if (max == 0)
        return ESIM_OK;
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = st->ops->op_end(st, st->ops->devices_take_push_due(st, now, udids, max, n, err), err);
    if (rc != ESIM_OK)
        *n = 0;
    return rc;
}

esim_err esim_store_expire(store *st, int64_t now, size_t *n, esim_error *err)
{
    size_t count = 0;
    if (n)
        *n = 0;
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = st->ops->op_end(st, st->ops->entries_expire(st, "expired", now, &count, err), err);
    if (rc == ESIM_OK && n)
        *n = count;
    return rc;
}

esim_err esim_store_event_append(store *st, const char *kind, const char *udid,
                                 const char *command_uuid, const char *detail, const void *raw,
                                 size_t raw_len, int64_t now, esim_error *err)
{
    if (!kind || !*kind)
        return esim_fail(err, ESIM_EINVAL, "an event needs a kind");
    return st->ops->event_add(st, now, kind, udid, command_uuid, detail, raw, raw_len, err);
}

/* ---- the webhook outbox ------------------------------------------------------------------ */

esim_err esim_store_outbox_add(store *st, int64_t url_key, const void *body, size_t len,
                               int64_t now, int64_t *id, esim_error *err)
{
    if (!body || !len)
        return esim_fail(err, ESIM_EINVAL, "a webhook delivery needs a body");
    return st->ops->outbox_add(st, url_key, body, len, now, NULL, 0, id, err);
}

esim_err esim_store_outbox_delete(store *st, int64_t id, esim_error *err)
{
    return st->ops->outbox_delete(st, id, err);
}

esim_err esim_store_outbox_delete_ids(store *st, const int64_t *ids, size_t n, esim_error *err)
{
    if (n == 0)
        return ESIM_OK;
    if (!ids)
        return esim_fail(err, ESIM_EINVAL, "no outbox rows to delete");
    if (st->ops->outbox_delete_ids)
        return st->ops->outbox_delete_ids(st, ids, n, err);
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    for (size_t i = 0; rc == ESIM_OK && i < n; i++)
        rc = st->ops->outbox_delete(st, ids[i], err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_outbox_list(store *st, int64_t after, size_t limit, store_outbox_row **out,
                                size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    return st->ops->outbox_list(st, after, limit, out, n, err);
}

esim_err esim_store_outbox_add_claimed(store *st, int64_t url_key, const void *body, size_t len,
                                       const char *owner, int64_t claim_ms, int64_t now,
                                       int64_t *id, esim_error *err)
{
    if (!body || !len || !owner || !*owner || claim_ms < 1)
        return esim_fail(err, ESIM_EINVAL, "a claimed webhook delivery needs a body and an owner");
    /* One INSERT that writes the claim with the row (it was an INSERT and
     * then an UPDATE of its claim). */
    return st->ops->outbox_add(st, url_key, body, len, now, owner, claim_ms, id, err);
}

esim_err esim_store_outbox_claim(store *st, const char *owner, int64_t claim_ms, size_t limit,
                                 store_outbox_row **out, size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    if (!(st->ops->features & ESIM_STORE_FEATURE_SHARED))
        return st->ops->outbox_list(st, 0, limit, out, n, err);
    if (!owner || !*owner || claim_ms < 1)
        return esim_fail(err, ESIM_EINVAL, "a claim needs an owner and a time");
    if (limit == 0)
        return ESIM_OK;
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = st->ops->outbox_claim(st, owner, claim_ms, limit, out, n, err);
    rc = st->ops->op_end(st, rc, err);
    if (rc != ESIM_OK) {
        esim_store_outbox_free(*out, *n);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

esim_err esim_store_outbox_renew(store *st, const char *owner, int64_t claim_ms, esim_error *err)
{
    if (!(st->ops->features & ESIM_STORE_FEATURE_SHARED))
        return ESIM_OK;
    if (!owner || !*owner || claim_ms < 1)
        return esim_fail(err, ESIM_EINVAL, "a claim needs an owner and a time");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = st->ops->outbox_renew(st, owner, claim_ms, err);
    return st->ops->op_end(st, rc, err);
}

void esim_store_outbox_free(store_outbox_row *rows, size_t n)
{
    for (size_t i = 0; rows && i < n; i++)
        esim_buf_free(&rows[i].body);
    free(rows);
}

/* ---- IoT devices and packages ------------------------------------------------------- */

static esim_err iot_eid_check(const char *eid, esim_error *err)
{
    if (!eid || esim_eid_validate(eid, NULL) != ESIM_OK)
        return esim_fail(err, ESIM_EINVAL, "'%s' is not an EID (32 digits, valid check digits)",
                         eid ? eid : "");
    return ESIM_OK;
}

esim_err esim_store_iot_register(store *st, const char *eid, int64_t token, int64_t counter,
                                 int64_t now, bool *created, esim_error *err)
{
    esim_err rc = iot_eid_check(eid, err);
    if (rc != ESIM_OK)
        return rc;
    if (token < 1)
        return esim_fail(err, ESIM_EINVAL, "an association token is an integer from 1");
    if (counter < 0)
        return esim_fail(err, ESIM_EINVAL, "a counter value is an integer from 0");
    if ((rc = st->ops->op_begin(st, err)) != ESIM_OK)
        return rc;
    store_iot_device d = {0};
    rc = st->ops->iot_get(st, eid, true, &d, err);
    bool fresh = rc == ESIM_ENOTFOUND;
    if (fresh) {
        rc = ESIM_OK;
        snprintf(d.eid, sizeof d.eid, "%s", eid);
    } else if (rc == ESIM_OK && strcmp(d.state, "unregistered") != 0) {
        rc = esim_fail(err, ESIM_EEXIST, "EID %s is registered already", eid);
    }
    if (rc == ESIM_OK) {
        snprintf(d.state, sizeof d.state, "registered");
        d.association_token = token;
        d.counter = counter;
        d.registered_ms = d.updated_ms = now;
        d.last_error[0] = '\0';
        esim_buf_free(&d.euicc_cert);
        rc = st->ops->iot_put(st, &d, err);
    }
    esim_buf_free(&d.euicc_cert);
    rc = st->ops->op_end(st, rc, err);
    if (rc == ESIM_OK && created)
        *created = fresh;
    return rc;
}

esim_err esim_store_iot_get(store *st, const char *eid, store_iot_device *out, esim_error *err)
{
    memset(out, 0, sizeof *out);
    if (!eid || !*eid)
        return esim_fail(err, ESIM_ENOTFOUND, "no EID");
    esim_err rc = st->ops->iot_get(st, eid, false, out, err);
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, rc, "EID %s is not known to the eIM", eid);
    return rc;
}

esim_err esim_store_iot_list(store *st, const char *after, size_t limit, store_iot_device **out,
                             size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    if (limit == 0)
        return ESIM_OK;
    return st->ops->iot_list(st, after ? after : "", limit, out, n, err);
}

esim_err esim_store_iot_poll(store *st, const char *eid, int64_t now, store_iot_device *out,
                             esim_error *err)
{
    esim_err rc = iot_eid_check(eid, err);
    if (rc != ESIM_OK)
        return rc;
    if ((rc = st->ops->op_begin(st, err)) != ESIM_OK)
        return rc;
    store_iot_device d = {0};
    rc = st->ops->iot_get(st, eid, true, &d, err);
    if (rc == ESIM_ENOTFOUND) {
        rc = ESIM_OK;
        snprintf(d.eid, sizeof d.eid, "%s", eid);
        snprintf(d.state, sizeof d.state, "unregistered");
    }
    if (rc == ESIM_OK) {
        d.last_poll_ms = d.updated_ms = now;
        rc = st->ops->iot_put(st, &d, err);
    }
    rc = st->ops->op_end(st, rc, err);
    if (rc == ESIM_OK && out)
        *out = d;
    else
        esim_buf_free(&d.euicc_cert);
    return rc;
}

esim_err esim_store_iot_counter_next(store *st, const char *eid, int64_t now, int64_t *counter,
                                     esim_error *err)
{
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    store_iot_device d = {0};
    rc = st->ops->iot_get(st, eid ? eid : "", true, &d, err);
    if (rc == ESIM_ENOTFOUND)
        rc = esim_fail(err, rc, "EID %s is not known to the eIM", eid ? eid : "");
    else if (rc == ESIM_OK && strcmp(d.state, "unregistered") == 0)
        rc = esim_fail(err, ESIM_ESTATE, "EID %s is not registered", eid);
    if (rc == ESIM_OK) {
        d.counter++;
        d.updated_ms = now;
        rc = st->ops->iot_put(st, &d, err);
    }
    esim_buf_free(&d.euicc_cert);
    rc = st->ops->op_end(st, rc, err);
    if (rc == ESIM_OK)
        *counter = d.counter;
    return rc;
}

esim_err esim_store_iot_update(store *st, const char *eid, const char *state, const void *cert,
                               size_t cert_len, const char *last_error, int64_t now,
                               esim_error *err)
{
    if (state && strcmp(state, "registered") != 0 && strcmp(state, "ready") != 0)
        return esim_fail(err, ESIM_EINVAL, "an IoT device is 'registered' or 'ready'");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    store_iot_device d = {0};
    rc = st->ops->iot_get(st, eid ? eid : "", true, &d, err);
    if (rc == ESIM_ENOTFOUND)
        rc = esim_fail(err, rc, "EID %s is not known to the eIM", eid ? eid : "");
    if (rc == ESIM_OK && state)
        snprintf(d.state, sizeof d.state, "%s", state);
    if (rc == ESIM_OK && cert) {
        esim_buf_free(&d.euicc_cert);
        rc = esim_buf_append(&d.euicc_cert, cert, cert_len);
    }
    if (rc == ESIM_OK && last_error)
        snprintf(d.last_error, sizeof d.last_error, "%s", last_error);
    if (rc == ESIM_OK) {
        d.updated_ms = now;
        rc = st->ops->iot_put(st, &d, err);
    }
    esim_buf_free(&d.euicc_cert);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_iot_package_put(store *st, const store_iot_package *p, int64_t now,
                                    esim_error *err)
{
    if (!p->command_uuid[0] || !p->kind[0] || !p->state[0])
        return esim_fail(err, ESIM_EINVAL, "an IoT package needs a command, a kind and a state");
    esim_err rc = iot_eid_check(p->eid, err);
    if (rc != ESIM_OK)
        return rc;
    if ((rc = st->ops->op_begin(st, err)) != ESIM_OK)
        return rc;
    return st->ops->op_end(st, st->ops->iot_pkg_put(st, p, now, err), err);
}

esim_err esim_store_iot_packages(store *st, const char *eid, const char *uuid, size_t limit,
                                 store_iot_package **out, size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    if ((!eid || !*eid) && (!uuid || !*uuid))
        return esim_fail(err, ESIM_EINVAL, "packages are listed by EID or by command");
    if (limit == 0)
        return ESIM_OK;
    return st->ops->iot_pkg_list(st, eid ? eid : "", uuid ? uuid : "", limit, out, n, err);
}

esim_err esim_store_iot_trigger_find(store *st, const char *smdp, const char *eid, bool pending,
                                     bool *found, esim_error *err)
{
    *found = false;
    if (!smdp || !*smdp)
        return ESIM_OK;
    return st->ops->iot_trigger_find(st, smdp, eid ? eid : "", pending, found, err);
}

esim_err esim_store_relay_session_put(store *st, const store_relay_session *s,
                                      int64_t expired_before, esim_error *err)
{
    if (!s->txid[0] || !s->smdp[0])
        return esim_fail(err, ESIM_EINVAL, "a relay session needs a transactionId and an SM-DP+");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    return st->ops->op_end(st, st->ops->relay_session_put(st, s, expired_before, err), err);
}

esim_err esim_store_relay_session_get(store *st, const char *txid, store_relay_session *out,
                                      esim_error *err)
{
    memset(out, 0, sizeof *out);
    if (!txid || !*txid)
        return esim_fail(err, ESIM_ENOTFOUND, "no transactionId");
    esim_err rc = st->ops->relay_session_get(st, txid, out, err);
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, rc, "no relay session %s", txid);
    if (rc == ESIM_OK)
        snprintf(out->txid, sizeof out->txid, "%s", txid);
    return rc;
}

esim_err esim_store_relay_session_drop(store *st, const char *txid, esim_error *err)
{
    if (!txid || !*txid)
        return ESIM_OK;
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    return st->ops->op_end(st, st->ops->relay_session_drop(st, txid, err), err);
}

void esim_store_iot_packages_free(store_iot_package *p, size_t n)
{
    for (size_t i = 0; p && i < n; i++) {
        free(p[i].result_words);
        esim_buf_free(&p[i].request);
        esim_buf_free(&p[i].result);
    }
    free(p);
}

/* ---- several instances -------------------------------------------------------------------- */

static bool shared(const store *st)
{
    return (st->ops->features & ESIM_STORE_FEATURE_SHARED) != 0;
}

static bool lease_name_ok(const char *s, size_t max)
{
    return s && *s && strlen(s) <= max;
}

esim_err esim_store_lease(store *st, const char *name, const char *owner, int64_t ttl_ms,
                          bool *held, char holder[64], esim_error *err)
{
    if (!lease_name_ok(name, 255) || !lease_name_ok(owner, 63) || ttl_ms < 1 || !held)
        return esim_fail(err, ESIM_EINVAL,
                         "a lease needs a name, an owner (1 to 63 characters)"
                         " and a time to live of at least 1 ms");
    char who[64] = "";
    *held = false;
    esim_err rc = ESIM_OK;
    if (!shared(st)) {
        *held = true; /* the one instance */
        snprintf(who, sizeof who, "%s", owner);
    } else if ((rc = st->ops->op_begin(st, err)) == ESIM_OK) {
        rc = st->ops->lease(st, name, owner, ttl_ms, held, who, err);
        rc = st->ops->op_end(st, rc, err);
        if (rc != ESIM_OK)
            *held = false;
    }
    if (holder)
        snprintf(holder, 64, "%s", rc == ESIM_OK ? who : "");
    return rc;
}

esim_err esim_store_lease_release(store *st, const char *name, const char *owner, esim_error *err)
{
    if (!lease_name_ok(name, 255) || !lease_name_ok(owner, 63))
        return esim_fail(err, ESIM_EINVAL, "a lease needs a name and an owner");
    if (!shared(st))
        return ESIM_OK;
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = st->ops->lease_release(st, name, owner, err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_notify(store *st, const char *topic, const char *payload, esim_error *err)
{
    size_t tl = topic ? strlen(topic) : 0;
    if (tl == 0 || tl > 63 || strspn(topic, "abcdefghijklmnopqrstuvwxyz_") != tl)
        return esim_fail(err, ESIM_EINVAL, "a notification's topic is 1 to 63 of [a-z_]");
    if (payload && strlen(payload) > 7000)
        return esim_fail(err, ESIM_EINVAL, "a notification's payload is at most 7000 bytes");
    if (!shared(st))
        return ESIM_OK;
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = st->ops->notify(st, topic, payload ? payload : "", err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_listen(store *st, store_listener **out, esim_error *err)
{
    *out = NULL;
    if (!shared(st))
        return esim_fail(err, ESIM_ESTATE,
                         "the %s store has one instance: there is nothing to listen to",
                         st->ops->name);
    return st->ops->listen(st, out, err);
}

int esim_store_listener_fd(const store_listener *l)
{
    return l->ops->listener_fd(l);
}

esim_err esim_store_listener_read(store_listener *l,
                                  void (*fn)(const char *topic, const char *payload, void *arg),
                                  void *arg, esim_error *err)
{
    return l->ops->listener_read(l, fn, arg, err);
}

void esim_store_listener_free(store_listener *l)
{
    if (l)
        l->ops->listener_free(l);
}

/* ---- group commit ----------------------------------------------------------------------- */

esim_err esim_store_batch_begin(store *st, esim_error *err)
{
    if (!(st->ops->features & ESIM_STORE_FEATURE_BATCH))
        return ESIM_OK;
    return st->ops->batch_begin(st, err);
}

esim_err esim_store_batch_commit(store *st, esim_error *err)
{
    if (!(st->ops->features & ESIM_STORE_FEATURE_BATCH))
        return ESIM_OK;
    return st->ops->batch_commit(st, err);
}

void esim_store_batch_rollback(store *st)
{
    if (st->ops->features & ESIM_STORE_FEATURE_BATCH)
        st->ops->batch_rollback(st);
}

int64_t esim_store_commit_count(store *st)
{
    if (!(st->ops->features & ESIM_STORE_FEATURE_DEFERRED_SYNC))
        return 0;
    return st->ops->commit_count(st);
}

esim_err esim_store_sync(store *st, esim_error *err)
{
    if (!(st->ops->features & ESIM_STORE_FEATURE_DEFERRED_SYNC))
        return ESIM_OK;
    return st->ops->sync(st, err);
}

/* ---- units ---------------------------------------------------------------------------- */

esim_err esim_store_unit_begin(store *st, esim_error *err)
{
    return st->ops->op_begin(st, err);
}

esim_err esim_store_unit_begin_whole(store *st, esim_error *err)
{
    if (st->ops->op_begin_whole)
        return st->ops->op_begin_whole(st, err);
    return st->ops->op_begin(st, err);
}

esim_err esim_store_unit_end(store *st, bool ok, esim_error *err)
{
    if (!ok) {
        st->ops->op_end(st, ESIM_ESTATE, NULL); /* any code but ESIM_OK undoes */
        return ESIM_OK;
    }
    return st->ops->op_end(st, ESIM_OK, err);
}

/* ---- campaign records ---------------------------------------------------------------- */

esim_err esim_store_campaign_save(store *st, const char *campaign_id, const store_campaign *c,
                                  const store_campaign_command *cmds, size_t n_cmds,
                                  const store_campaign_device *devs, size_t n_devs, int64_t now,
                                  esim_error *err)
{
    if (!campaign_id || !*campaign_id || (c && (!c->id || strcmp(c->id, campaign_id) != 0)))
        return esim_fail(err, ESIM_EINVAL, "a campaign record needs its campaign's id");
    if (c && !c->definition)
        return esim_fail(err, ESIM_EINVAL, "campaign %s has no definition", campaign_id);
    for (size_t i = 0; i < n_cmds; i++)
        if (!cmds[i].uuid[0])
            return esim_fail(err, ESIM_EINVAL, "a command of campaign %s has no uuid", campaign_id);
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    if (c)
        rc = st->ops->campaign_put(st, c, now, err);
    for (size_t i = 0; rc == ESIM_OK && i < n_cmds; i++)
        rc = st->ops->campaign_command_put(st, campaign_id, &cmds[i], err);
    for (size_t i = 0; rc == ESIM_OK && i < n_devs; i++)
        rc = st->ops->campaign_device_put(st, campaign_id, &devs[i], err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_campaign_set_state(store *st, const char *campaign_id, int state,
                                       int64_t expect_version, int64_t now, int *cur_state,
                                       int64_t *version, esim_error *err)
{
    if (!campaign_id || !*campaign_id)
        return esim_fail(err, ESIM_EINVAL, "a campaign record needs its campaign's id");
    int cur = 0;
    int64_t ver = 0;
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = st->ops->campaign_state_get(st, campaign_id, &cur, &ver, err);
    if (rc == ESIM_ENOTFOUND)
        esim_fail(err, rc, "no campaign %s in the store", campaign_id);
    else if (rc == ESIM_OK && ver != expect_version)
        rc = esim_fail(err, ESIM_ESTATE,
                       "campaign %s changed meanwhile (version %lld, expected %lld)", campaign_id,
                       (long long)ver, (long long)expect_version);
    else if (rc == ESIM_OK &&
             (rc = st->ops->campaign_state_put(st, campaign_id, state, now, err)) == ESIM_OK) {
        cur = state;
        ver++;
    }
    esim_err end = st->ops->op_end(st, rc, err);
    if (rc == ESIM_OK)
        rc = end;
    if (rc == ESIM_OK || rc == ESIM_ESTATE) {
        if (cur_state)
            *cur_state = cur;
        if (version)
            *version = ver;
    }
    return rc;
}

esim_err esim_store_campaign_totals(store *st, const char *campaign_id, int64_t pushes,
                                    int64_t commands, esim_error *err)
{
    if (!campaign_id || !*campaign_id)
        return esim_fail(err, ESIM_EINVAL, "a campaign record needs its campaign's id");
    if (pushes < 0 || commands < 0)
        return esim_fail(err, ESIM_EINVAL, "campaign %s: totals are never negative", campaign_id);
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    int cur = 0;
    int64_t ver = 0;
    rc = st->ops->campaign_state_get(st, campaign_id, &cur, &ver, err);
    if (rc == ESIM_ENOTFOUND)
        esim_fail(err, rc, "no campaign %s in the store", campaign_id);
    else if (rc == ESIM_OK)
        rc = st->ops->campaign_totals_put(st, campaign_id, pushes, commands, err);
    esim_err end = st->ops->op_end(st, rc, err);
    return rc == ESIM_OK ? end : rc;
}

esim_err esim_store_campaigns(store *st, store_campaign **out, size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    return st->ops->campaigns_list(st, out, n, err);
}

void esim_store_campaigns_free(store_campaign *list, size_t n)
{
    if (!list)
        return;
    for (size_t i = 0; i < n; i++) {
        free((void *)list[i].id);
        free((void *)list[i].name);
        free((void *)list[i].definition);
    }
    free(list);
}

esim_err esim_store_campaign_devices(store *st, const char *campaign_id,
                                     store_campaign_device **out, size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    if (!campaign_id)
        return ESIM_OK;
    return st->ops->campaign_devices(st, campaign_id, out, n, err);
}

void esim_store_campaign_devices_free(store_campaign_device *devs, size_t n)
{
    if (!devs)
        return;
    for (size_t i = 0; i < n; i++)
        free(devs[i].reason);
    free(devs);
}

esim_err esim_store_campaign_commands(store *st, const char *campaign_id,
                                      store_campaign_command **out, size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    if (!campaign_id)
        return ESIM_OK;
    return st->ops->campaign_commands(st, campaign_id, out, n, err);
}

/* ---- what campaigns know about devices ------------------------------------------------- */

esim_err esim_store_manifest_import(store *st, const store_manifest_row *rows, size_t n,
                                    int64_t now, esim_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (!rows[i].serial || !*rows[i].serial || !rows[i].eid || !*rows[i].eid)
            return esim_fail(err, ESIM_EINVAL, "manifest row %zu needs a serial and an EID", i + 1);
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    for (size_t i = 0; rc == ESIM_OK && i < n; i++)
        rc = st->ops->manifest_put(st, &rows[i], now, err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_codes_import(store *st, const store_code_row *rows, size_t n, int64_t now,
                                 esim_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (!rows[i].eid || !*rows[i].eid || !rows[i].code || !*rows[i].code)
            return esim_fail(err, ESIM_EINVAL, "activation-code row %zu needs an EID and a code",
                             i + 1);
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    for (size_t i = 0; rc == ESIM_OK && i < n; i++)
        rc = st->ops->code_put(st, &rows[i], now, err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_manifest_eid(store *st, const char *serial, char eid[ESIM_EID_LEN + 1],
                                 esim_error *err)
{
    esim_err rc = serial && *serial ? st->ops->manifest_eid(st, serial, eid, err) : ESIM_ENOTFOUND;
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, rc, "no manifest row for serial number %s", serial ? serial : "");
    return rc;
}

esim_err esim_store_code_for_eid(store *st, const char *eid, char iccid[21], char matching_id[256],
                                 esim_error *err)
{
    esim_err rc =
        eid && *eid ? st->ops->code_for_eid(st, eid, iccid, matching_id, err) : ESIM_ENOTFOUND;
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, rc, "no activation code for EID %s", eid ? eid : "");
    return rc;
}

esim_err esim_store_name_validate(const char *what, const char *name, esim_error *err)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n > 64)
        return esim_fail(err, ESIM_EINVAL, "%s name must have 1 to 64 characters", what);
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && !strchr("._-", name[i]))
            return esim_fail(err, ESIM_EINVAL,
                             "%s name '%s' may hold only letters, digits, '.', '_' and '-'", what,
                             name);
    return ESIM_OK;
}

esim_err esim_store_group_put(store *st, const char *name, const char *const *add, size_t n_add,
                              const char *const *remove, size_t n_remove, bool create, int64_t now,
                              esim_error *err)
{
    esim_err rc = esim_store_name_validate("group", name, err);
    for (size_t i = 0; rc == ESIM_OK && i < n_add; i++)
        rc = esim_udid_validate(add[i], err);
    for (size_t i = 0; rc == ESIM_OK && i < n_remove; i++)
        if (!remove[i])
            rc = esim_fail(err, ESIM_EINVAL, "a UDID to remove is missing");
    if (rc != ESIM_OK)
        return rc;
    if ((rc = st->ops->op_begin(st, err)) != ESIM_OK)
        return rc;
    rc = st->ops->group_exists(st, name, err);
    if (rc == ESIM_OK && create)
        rc = esim_fail(err, ESIM_EEXIST, "group %s already exists", name);
    else if (rc == ESIM_ENOTFOUND && !create)
        rc = esim_fail(err, ESIM_ENOTFOUND, "no group named %s", name);
    else if (rc == ESIM_ENOTFOUND)
        rc = st->ops->group_create(st, name, now, err);
    for (size_t i = 0; rc == ESIM_OK && i < n_add; i++)
        rc = st->ops->group_member_set(st, name, add[i], true, err);
    for (size_t i = 0; rc == ESIM_OK && i < n_remove; i++)
        rc = st->ops->group_member_set(st, name, remove[i], false, err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_group_delete(store *st, const char *name, esim_error *err)
{
    if (!name)
        return esim_fail(err, ESIM_ENOTFOUND, "no group named (null)");
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = st->ops->group_exists(st, name, err);
    if (rc == ESIM_ENOTFOUND)
        rc = esim_fail(err, ESIM_ENOTFOUND, "no group named %s", name);
    if (rc == ESIM_OK)
        rc = st->ops->group_drop(st, name, err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_groups(store *st, store_group **out, size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    return st->ops->groups_list(st, out, n, err);
}

esim_err esim_store_group_members(store *st, const char *name, char (**out)[65], size_t *n,
                                  esim_error *err)
{
    *out = NULL;
    *n = 0;
    esim_err rc = name ? st->ops->group_exists(st, name, err) : ESIM_ENOTFOUND;
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, ESIM_ENOTFOUND, "no group named %s", name ? name : "(null)");
    if (rc != ESIM_OK)
        return rc;
    return st->ops->names_list(st, STORE_NAMES_GROUP_MEMBERS, name, out, n, err);
}

esim_err esim_store_tag_devices(store *st, const char *tag, char (**out)[65], size_t *n,
                                esim_error *err)
{
    *out = NULL;
    *n = 0;
    return tag ? st->ops->names_list(st, STORE_NAMES_TAG_DEVICES, tag, out, n, err) : ESIM_OK;
}

esim_err esim_store_device_tags(store *st, const char *udid, char (**out)[65], size_t *n,
                                esim_error *err)
{
    *out = NULL;
    *n = 0;
    return udid ? st->ops->names_list(st, STORE_NAMES_DEVICE_TAGS, udid, out, n, err) : ESIM_OK;
}

esim_err esim_store_tags_set(store *st, const char *udid, const char *const *add, size_t n_add,
                             const char *const *remove, size_t n_remove, esim_error *err)
{
    esim_err rc = esim_udid_validate(udid, err);
    for (size_t i = 0; rc == ESIM_OK && i < n_add; i++)
        rc = esim_store_name_validate("tag", add[i], err);
    for (size_t i = 0; rc == ESIM_OK && i < n_remove; i++)
        if (!remove[i])
            rc = esim_fail(err, ESIM_EINVAL, "a tag to remove is missing");
    if (rc != ESIM_OK)
        return rc;
    if ((rc = st->ops->op_begin(st, err)) != ESIM_OK)
        return rc;
    for (size_t i = 0; rc == ESIM_OK && i < n_add; i++)
        rc = st->ops->tag_set(st, udid, add[i], true, err);
    for (size_t i = 0; rc == ESIM_OK && i < n_remove; i++)
        rc = st->ops->tag_set(st, udid, remove[i], false, err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_facts_put(store *st, const store_device_facts *facts, size_t n, esim_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (!facts[i].udid[0])
            return esim_fail(err, ESIM_EINVAL, "device facts need a UDID");
    if (n == 0)
        return ESIM_OK;
    esim_err rc = st->ops->op_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    for (size_t i = 0; rc == ESIM_OK && i < n; i++)
        rc = st->ops->facts_put(st, &facts[i], err);
    return st->ops->op_end(st, rc, err);
}

esim_err esim_store_facts_get(store *st, const char *udid, store_device_facts *out, esim_error *err)
{
    memset(out, 0, sizeof *out);
    out->supervised = -1;
    if (!udid)
        return esim_fail(err, ESIM_ENOTFOUND, "nothing known about device (null)");
    snprintf(out->udid, sizeof out->udid, "%s", udid);
    esim_err rc = st->ops->facts_get(st, udid, out, err);
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, rc, "nothing known about device %s", udid);
    return rc;
}
