/*
 * fuzz_esipa.h — what the eIM does with an ESipa body (sgp32/), shared by
 * the esipa_* fuzz targets: decode it strictly as EsipaMessageFromIpaToEim
 * and as the one type the target is about, and when either is accepted,
 * check that it re-encodes to exactly the input and walk what the eIM reads
 * (EID, results and their signature inputs, certificates, relayed TLVs).
 */
#ifndef FUZZ_ESIPA_H
#define FUZZ_ESIPA_H

#include <stddef.h>
#include <stdint.h>

#include "sgp32/sgp32.h"

/* Decodes |data| as |td| (and as the ESipa envelope) and checks it. */
void fuzz_esipa_one(const asn_TYPE_descriptor_t *td, const uint8_t *data, size_t size);

#endif
