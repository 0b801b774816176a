/*
 * cert_der.h — a device identity certificate read in place (cert_der.c):
 * what the service needs to check a device's first signed message without
 * OpenSSL 3.0's certificate decoder (d2i_X509 decodes the public key
 * through its provider decoders, ≈ 1.1 M instructions for a P-256 key).
 * Only one narrow shape is read: anything else is left to OpenSSL
 * (service/auth.c falls back to d2i_X509 and X509_verify_cert), so this
 * reader may refuse what is valid but must never accept what OpenSSL
 * would not parse. Pointers are into the caller's DER. No OpenSSL here:
 * the fuzz target (tests/fuzz/fuzz_cert_der.c) links this file alone.
 */
#ifndef ESIM_SERVICE_CERT_DER_H
#define ESIM_SERVICE_CERT_DER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { CERT_DER_ECDSA_SHA256 = 1, CERT_DER_RSA_SHA256 = 2 };

typedef struct {
    const unsigned char *tbs; /* the TBSCertificate TLV: what the issuer signed */
    size_t tbs_len;
    int sig_alg;                  /* CERT_DER_*: the same inside and out */
    const unsigned char *serial;  /* the serialNumber INTEGER, whole TLV */
    size_t serial_len;            /* (a SignerIdentifier names it that way) */
    const unsigned char *issuer;  /* Name TLVs */
    const unsigned char *subject; /* */
    size_t issuer_len, subject_len;
    int64_t not_before, not_after; /* seconds since the epoch */
    const unsigned char *point;    /* 65 bytes, 0x04 || X || Y (P-256) */
    const unsigned char *ski;      /* subjectKeyIdentifier's value; NULL: none */
    size_t ski_len;
    const unsigned char *aki; /* authorityKeyIdentifier's keyIdentifier; NULL: none */
    size_t aki_len;
    const unsigned char *sig; /* the signature BIT STRING's bytes (no unused bits) */
    size_t sig_len;
} cert_der_view;

/* The shape above or false (v zeroed first): strict DER (definite, shortest
 * lengths, nothing after the certificate), v3, a positive serial of at most
 * 20 bytes in its shortest form, ecdsa-with-SHA256 (no parameters) or
 * sha256WithRSAEncryption (NULL parameters) the same in the TBS and
 * outside, Names whose values are printable ASCII in PrintableString,
 * UTF8String or IA5String, UTCTime or GeneralizedTime
 * in their DER forms, an id-ecPublicKey prime256v1 key with an uncompressed
 * point, no unique IDs, and extensions only among basicConstraints (not a
 * CA, no path length), keyUsage, extKeyUsage (those three may be critical),
 * subjectKeyIdentifier and authorityKeyIdentifier (a keyIdentifier only;
 * neither critical), each at most once. Checks no signature and no date. */
bool cert_der_parse(const unsigned char *der, size_t len, cert_der_view *v);

#endif
