/*
 * auth_internal.h — the Mdm-Signature splitter of auth.c, declared for its
 * fuzz target (tests/service/fuzz_sig_split.c) and nothing else. Not
 * installed, not part of the library's interface.
 */
#ifndef ESIM_SERVICE_AUTH_INTERNAL_H
#define ESIM_SERVICE_AUTH_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "core/esim.h"

/*
 * Splits a DER CMS ContentInfo(SignedData) into the same structure without
 * its certificates field (|stripped|, replaced) and the certificates' DER
 * (|certs|, spans into |der|, at most |max_certs|). False when the encoding
 * is not the plain DER this expects; the caller then parses it with OpenSSL.
 */
bool auth_split_certificates(const unsigned char *der, size_t len, esim_buf *stripped,
                             const unsigned char **certs, size_t *cert_lens, size_t max_certs,
                             size_t *n_certs);

#endif
