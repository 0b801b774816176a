/*
 * der.h — reading strict DER in place (der.c): the TLV walk and the times
 * of RFC 5280 that the service's identity reader (service/cert_der.c) and
 * the simulator's certificate reader (sim/cert_view.c) share. Internal: not
 * installed, no OpenSSL (the fuzz targets link these readers alone).
 */
#ifndef ESIM_CORE_DER_H
#define ESIM_CORE_DER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What is left to read: [p, end). */
typedef struct {
    const unsigned char *p, *end;
} esim_der;

/* One TLV with the one-byte |tag| at r->p, its length definite and in its
 * shortest form (at most three length bytes). The whole TLV in |tlv|,
 * |tlv_len| and its contents in |val|, |len| (each pair may be NULL), r
 * moved past it. False (r unchanged) when malformed or another tag. */
bool esim_der_take(esim_der *r, unsigned char tag, const unsigned char **tlv, size_t *tlv_len,
                   const unsigned char **val, size_t *len);
/* esim_der_take, then |in| reads its contents. */
bool esim_der_enter(esim_der *r, unsigned char tag, esim_der *in);
/* |v| (|n| bytes) is exactly |want|. */
bool esim_der_is(const unsigned char *v, size_t n, const unsigned char *want, size_t want_len);
/* A UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ (RFC 5280's
 * DER forms, a real calendar date) into seconds since the epoch. */
bool esim_der_time(esim_der *r, int64_t *out);

#endif
