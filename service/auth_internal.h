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
 * The one SignerInfo of a DER CMS ContentInfo(SignedData) with detached
 * data, as the direct signature check reads it (service/auth.c): spans
 * into |der| and the algorithms it names. False when the input is not that
 * shape (several signers, no signed attributes, an algorithm it does not
 * take, attributes out of DER order, …): CMS_verify decides those.
 */
typedef struct {
    unsigned sid_tag;         /* 0x30 issuer and serial, 0x80 key id */
    const unsigned char *sid; /* its value */
    size_t sid_len;
    int md_i, md_nid;               /* the digest: its slot and NID */
    int key_type;                   /* EVP_PKEY_EC or EVP_PKEY_RSA */
    const unsigned char *attrs_tlv; /* the [0] signed attributes, whole */
    size_t attrs_tlv_len;
    const unsigned char *sig; /* the signature's value */
    size_t sig_len;
    const unsigned char *digest; /* messageDigest's value */
    size_t digest_len;
    const unsigned char *when; /* signingTime's TLV, or NULL */
    size_t when_len;
} auth_signer_info;

bool auth_signer_parse(const unsigned char *der, size_t len, auth_signer_info *out);

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
