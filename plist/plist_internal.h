/*
 * plist_internal.h — helpers shared by the files of plist/ only: typed,
 * bounds-checked reads of dict values and the serializer used by every
 * builder. Not installed, not part of the contract.
 */
#ifndef ESIM_PLIST_PLIST_INTERNAL_H
#define ESIM_PLIST_PLIST_INTERNAL_H

#include "plist/esim_plist.h"

/* Limits with the defaults filled in for the zero fields. */
esim_parse_limits plist_effective_limits(const esim_parse_limits *limits);

/*
 * Reads |key| of |dict| as a string into |out|. Absent: ESIM_ENOTFOUND when
 * !required (|out| becomes ""), ESIM_EINVAL otherwise. Wrong type, embedded
 * NUL or longer than out_len - 1 bytes: ESIM_EINVAL. |what| names the dict
 * in messages ("check-in message", "ErrorChain[2]").
 */
esim_err plist_read_string(plist_t dict, const char *key, bool required, char *out, size_t out_len,
                           const char *what, esim_error *err);

/* Reads |key| as a boolean; absent leaves *out untouched and returns
 * ESIM_ENOTFOUND (or ESIM_EINVAL when required). */
esim_err plist_read_bool(plist_t dict, const char *key, bool required, bool *out, const char *what,
                         esim_error *err);

/* Reads |key| as an integer (libplist keeps signed values in its UINT). */
esim_err plist_read_int(plist_t dict, const char *key, bool required, int64_t *out,
                        const char *what, esim_error *err);

/* Reads |key| as data into |out| (replaced). */
esim_err plist_read_data(plist_t dict, const char *key, bool required, esim_buf *out,
                         const char *what, esim_error *err);

/* Builds the standard command envelope around |command| (consumed, also on
 * failure) and serializes it into |out| (which must be zeroed). */
esim_err plist_finish_command(const char *request_type, plist_t command, const esim_cmd_opts *opts,
                              esim_cmd *out, esim_error *err);

/* Copies |len| bytes of |s| as a C string into |out|; ESIM_EINVAL when it
 * does not fit or holds a NUL. */
esim_err plist_copy_field(const char *s, size_t len, char *out, size_t out_len, const char *key,
                          const char *what, esim_error *err);

/* True when |data| (len bytes) starts like a plist we can parse (binary
 * magic or, after optional BOM and whitespace, '<'). */
bool plist_looks_like_plist(const void *data, size_t len);

/* The XML fast path of esim_plist_parse_dict (plist_parse.c): the tree
 * libplist would build for a body that is one dictionary of printable
 * ASCII strings, booleans, canonical data, plain decimal integers and
 * dictionaries and arrays of the same, without a repeated key, or NULL for
 * any other body (which then takes the general path). */
plist_t plist_xml_flat_dict(const void *data, size_t len);
/* The same with containers nested at most |max_depth| deep (the top
 * dictionary is one; deeper goes to the general path, which refuses past
 * its own limit), and never more than the fast path's own depth. */
plist_t plist_xml_flat_read(const void *data, size_t len, unsigned max_depth);

#endif
