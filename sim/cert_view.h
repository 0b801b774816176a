/*
 * cert_view.h — the fields of a DER X.509 v3 certificate with a P-256 key
 * and an ECDSA-SHA256 signature, read in place (cert_view.c). Pointers are
 * into the caller's DER.
 */
#ifndef ESIM_SIM_CERT_VIEW_H
#define ESIM_SIM_CERT_VIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const unsigned char *tbs; /* the TBSCertificate TLV: what the issuer signed */
    size_t tbs_len;
    const unsigned char *issuer, *subject; /* Name TLVs */
    size_t issuer_len, subject_len;
    int64_t not_before, not_after; /* seconds since the epoch */
    const unsigned char *point;    /* 65 bytes, 0x04 || X || Y */
    const unsigned char *serial;   /* the subject's first serialNumber; NULL: none */
    size_t serial_len;
    bool has_basic_constraints, is_ca, has_key_usage;
    unsigned key_usage;       /* the KeyUsage BIT STRING's first two bytes, bit 0x80 first */
    const unsigned char *sig; /* DER ECDSA-Sig-Value */
    size_t sig_len;
} sim_cert_view;

/* The shape above or false (v zeroed first): strict DER lengths, v3,
 * ecdsa-with-SHA256 inside and out, id-ecPublicKey prime256v1 with an
 * uncompressed point, no unique IDs, and no critical extension other than
 * basicConstraints, keyUsage, certificatePolicies, subjectAltName and
 * extKeyUsage. Checks nothing a signature or a date decides. */
bool sim_cert_view_parse(const unsigned char *der, size_t len, sim_cert_view *v);

#define SIM_KU_DIGITAL_SIGNATURE 0x80u
#define SIM_KU_KEY_CERT_SIGN 0x04u

#endif
