/*
 * store_internal.h — what the store front (store.c) needs from the back ends.
 * Private to service/.
 */
#ifndef ESIM_SERVICE_STORE_INTERNAL_H
#define ESIM_SERVICE_STORE_INTERNAL_H

#include "service/store.h"

/* Opens (creating and migrating) the SQLite database at |path|. */
esim_err store_sqlite_open(const char *path, const store_options *opts, store **out,
                           esim_error *err);

#endif
