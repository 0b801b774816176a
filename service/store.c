/*
 * store.c — the back-end independent part of the store: names of states,
 * freeing of records, and store_open(), which picks the back end from the
 * store specification ("sqlite:PATH", a path, or postgres://).
 */
#include <stdlib.h>
#include <string.h>

#include "service/store.h"
#include "service/store_internal.h"

static const char *const qstate_names[] = {
    "queued",       "pushed",  "sent",    "acknowledged", "error",
    "format_error", "not_now", "expired", "canceled",
};

const char *store_qstate_name(store_qstate s)
{
    if ((int)s < 0 || (size_t)s >= sizeof qstate_names / sizeof qstate_names[0])
        return NULL;
    return qstate_names[s];
}

esim_err store_qstate_from_name(const char *name, store_qstate *out)
{
    for (size_t i = 0; name && i < sizeof qstate_names / sizeof qstate_names[0]; i++)
        if (strcmp(name, qstate_names[i]) == 0) {
            *out = (store_qstate)i;
            return ESIM_OK;
        }
    return ESIM_EINVAL;
}

bool store_qstate_active(store_qstate s)
{
    return s == STORE_Q_QUEUED || s == STORE_Q_PUSHED || s == STORE_Q_SENT || s == STORE_Q_NOT_NOW;
}

const char *store_push_state_name(store_push_state s)
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

void store_queue_entries_free(store_queue_entry *entries, size_t n)
{
    if (!entries)
        return;
    for (size_t i = 0; i < n; i++) {
        free(entries[i].error_chain_json);
        esim_buf_free(&entries[i].result);
    }
    free(entries);
}

void store_events_free(store_event *events, size_t n)
{
    if (!events)
        return;
    for (size_t i = 0; i < n; i++)
        esim_buf_free(&events[i].raw);
    free(events);
}

esim_err store_open(const char *spec, const char *data_dir, const store_options *opts, store **out,
                    esim_error *err)
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
    if (strncmp(spec, "postgres://", 11) == 0 || strncmp(spec, "postgresql://", 13) == 0)
        return esim_fail(err, ESIM_EINVAL,
                         "the PostgreSQL store is not supported yet; use --store sqlite:PATH "
                         "(or no --store for <data-dir>/esim-mdm.db)");
    if (strncmp(spec, "sqlite:", 7) == 0)
        spec += 7;
    else if (strstr(spec, "://"))
        return esim_fail(err, ESIM_EINVAL, "unknown store '%s': use sqlite:PATH", spec);
    if (!*spec)
        return esim_fail(err, ESIM_EINVAL,
                         "--store sqlite: needs a path, as in sqlite:/var/lib/esim-mdm/esim.db");
    return store_sqlite_open(spec, opts, out, err);
}

void store_close(store *st)
{
    if (st)
        st->ops->close(st);
}
