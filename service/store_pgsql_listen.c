/*
 * store_pgsql_listen.c — the PostgreSQL back end's listener: a connection of
 * its own, apart from the one that runs operations, that LISTENs on the
 * store's channel and hands each NOTIFY ("topic payload") to the caller.
 * Its socket is watched by the caller's event loop; reading never blocks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "service/store_internal.h"

typedef struct {
    store_listener base;
    PGconn *conn;
} pg_listener;

static esim_err listener_fail(pg_listener *l, const char *what, esim_error *err)
{
    char clean[300];
    snprintf(clean, sizeof clean, "%s", l->conn ? PQerrorMessage(l->conn) : "out of memory");
    size_t n = strlen(clean);
    while (n && (clean[n - 1] == '\n' || clean[n - 1] == ' '))
        clean[--n] = '\0';
    return esim_fail(err, ESIM_ESTORE, "store (pgsql) listener: %s: %s", what, clean);
}

esim_err pgsql_listener_open(const struct store_ops *ops, const char *conninfo, const char *channel,
                             store_listener **out, esim_error *err)
{
    *out = NULL;
    pg_listener *l = calloc(1, sizeof *l);
    if (!l)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    l->base.ops = ops;
    l->conn = PQconnectdb(conninfo);
    esim_err rc = ESIM_OK;
    if (!l->conn || PQstatus(l->conn) != CONNECTION_OK)
        rc = listener_fail(l, "connect", err);
    char *ident = rc == ESIM_OK ? PQescapeIdentifier(l->conn, channel, strlen(channel)) : NULL;
    if (rc == ESIM_OK && !ident)
        rc = listener_fail(l, "channel name", err);
    if (rc == ESIM_OK) {
        char sql[200];
        snprintf(sql, sizeof sql, "LISTEN %s", ident);
        PGresult *r = PQexec(l->conn, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            rc = listener_fail(l, "LISTEN", err);
        PQclear(r);
    }
    PQfreemem(ident);
    /* From here on the socket is read only when the loop says it is
     * readable. */
    if (rc == ESIM_OK && PQsetnonblocking(l->conn, 1) != 0)
        rc = listener_fail(l, "non-blocking", err);
    if (rc != ESIM_OK) {
        pgsql_listener_free(&l->base);
        return rc;
    }
    *out = &l->base;
    return ESIM_OK;
}

int pgsql_listener_fd(const store_listener *base)
{
    return PQsocket(((const pg_listener *)base)->conn);
}

esim_err pgsql_listener_read(store_listener *base,
                             void (*fn)(const char *topic, const char *payload, void *arg),
                             void *arg, esim_error *err)
{
    pg_listener *l = (pg_listener *)base;
    if (!PQconsumeInput(l->conn) || PQstatus(l->conn) != CONNECTION_OK)
        return listener_fail(l, "read", err);
    PGnotify *n;
    while ((n = PQnotifies(l->conn)) != NULL) {
        char *extra = n->extra ? n->extra : "";
        char *sp = strchr(extra, ' ');
        if (sp)
            *sp = '\0';
        fn(extra, sp ? sp + 1 : "", arg);
        PQfreemem(n);
    }
    return ESIM_OK;
}

void pgsql_listener_free(store_listener *base)
{
    pg_listener *l = (pg_listener *)base;
    if (!l)
        return;
    if (l->conn)
        PQfinish(l->conn);
    free(l);
}
