/*
 * sgp32.h — GSMA SGP.32 (IoT eSIM) on the wire: DER encoding and decoding of
 * the ESipa and ES10 messages the eIM, the IPA and the virtual eUICC
 * exchange, and the signatures that bind them (eimSignature on a package,
 * euiccSignEPR / euiccSignEPE on its result).
 *
 * The types come from our own ASN.1 modules in sgp32/asn1/ (SGP.32 v1.0
 * encodings; sgp32/sgp32_versions.h lists where v1.2 differs), compiled by
 * asn1c at build time. Their C structures (GetEimPackageRequest_t,
 * EuiccPackageRequest_t, ...) and descriptors (asn_DEF_GetEimPackageRequest,
 * ...) are visible through this header; fill them with the asn1c helpers
 * (OCTET_STRING_fromBuf, ASN_SEQUENCE_ADD, calloc for members) and free what
 * sgp32_decode() returns or what you built with sgp32_free().
 *
 * Used by service/ (the eIM) and sim/ (the IPA, the virtual eUICC). Needs
 * core/ and OpenSSL only. Not part of libesim-mdm's public API.
 */
#ifndef ESIM_SGP32_H
#define ESIM_SGP32_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "core/esim.h"
#include "sgp32/sgp32_versions.h"

/* The generated types (each pulls in what it uses). */
#include "AddInitialEimRequest.h"
#include "AddInitialEimResponse.h"
#include "AuthenticateServerResponse.h"
#include "CancelSessionResponse.h"
#include "Es9BoundProfilePackage.h"
#include "Es9SmdpSigned2.h"
#include "Es9StoreMetadataRequest.h"
#include "EsipaMessageFromEimToIpa.h"
#include "EsipaMessageFromIpaToEim.h"
#include "GetCertsRequest.h"
#include "GetCertsResponse.h"
#include "GetEimConfigurationDataRequest.h"
#include "GetEimConfigurationDataResponse.h"
#include "GetEuiccDataRequest.h"
#include "GetEuiccDataResponse.h"
#include "NotificationSentRequest.h"
#include "NotificationSentResponse.h"
#include "OpaqueSequence.h"
#include "PrepareDownloadResponse.h"
#include "ProfileInfoListResponse.h"
#include "RetrieveNotificationsListRequest.h"
#include "RetrieveNotificationsListResponse.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ESipa's ASN.1 binding over HTTP (SGP.32 6.1.1). */
#define SGP32_ESIPA_PATH "/gsma/rsp2/asn1"
#define SGP32_ESIPA_CONTENT_TYPE "application/x-gsma-rsp-asn1"
#define SGP32_ADMIN_PROTOCOL "gsma/rsp/v2.1.0" /* X-Admin-Protocol */

/* The largest DER sgp32_decode() accepts. A bound profile package is the
 * largest message (tens of kilobytes); everything else is far smaller. */
#define SGP32_DER_MAX (1024 * 1024)

/* Deepest nesting of TLVs sgp32_decode() accepts. */
#define SGP32_DER_DEPTH_MAX 32

/*
 * Decodes |len| bytes of DER at |der| as the type |td| (e.g.
 * &asn_DEF_GetEimPackageRequest). Strict: the input must be one TLV with
 * definite lengths that fills it exactly, at most SGP32_DER_MAX bytes and
 * SGP32_DER_DEPTH_MAX deep, and it must be the canonical DER of the value
 * (re-encoding gives the same bytes; so BER forms, and fields our modules do
 * not have, are refused). On success *obj is the decoded structure, owned by
 * the caller (sgp32_free(td, *obj)), and ESIM_OK is returned. Otherwise *obj
 * is NULL and:
 *   ESIM_EINVAL  not DER of |td|; |err| (may be NULL) says what, for a person.
 *   ESIM_ETOOBIG over SGP32_DER_MAX bytes or SGP32_DER_DEPTH_MAX deep.
 *   ESIM_ENOMEM  out of memory.
 */
esim_err sgp32_decode(const asn_TYPE_descriptor_t *td, const uint8_t *der, size_t len, void **obj,
                      esim_error *err);

/*
 * Appends the DER of |obj| (a structure of type |td|) to |out|. The value is
 * checked against the module's constraints first (an Octet16 of 15 bytes is
 * refused, not sent). ESIM_OK, or ESIM_EINVAL (|err| names the field) with
 * |out| unchanged, or ESIM_ENOMEM.
 */
esim_err sgp32_encode(const asn_TYPE_descriptor_t *td, const void *obj, esim_buf *out,
                      esim_error *err);

/* Frees a structure of type |td| made by sgp32_decode() or built by hand
 * (its members calloc'ed). NULL is fine. */
void sgp32_free(const asn_TYPE_descriptor_t *td, void *obj);

/*
 * ES10 answers that are an explicit tag around a CHOICE (no type of their
 * own in the module): LoadEuiccPackage's BF51 around EuiccPackageResult,
 * RetrieveNotificationsList's BF2B around RetrieveNotificationsListResponse.
 * sgp32_encode_explicit() appends |tag| (two bytes, e.g. 0xBF51), the length
 * and the DER of |obj|; sgp32_decode_explicit() checks that |der| is exactly
 * such a TLV and decodes its contents as |td| (rules of sgp32_decode()).
 */
#define SGP32_TAG_EUICC_PACKAGE 0xBF51
#define SGP32_TAG_NOTIFICATIONS_LIST 0xBF2B
esim_err sgp32_encode_explicit(uint16_t tag, const asn_TYPE_descriptor_t *td, const void *obj,
                               esim_buf *out, esim_error *err);
esim_err sgp32_decode_explicit(uint16_t tag, const asn_TYPE_descriptor_t *td, const uint8_t *der,
                               size_t len, void **obj, esim_error *err);

/* ---- Signatures: ECDSA P-256 with SHA-256, as plain r‖s (TR-03111). ---- */

#define SGP32_SIG_LEN 64

/*
 * Signs |len| bytes at |data| with the P-256 private key |key| and writes r‖s
 * (32 bytes each, big-endian, left-padded) to |sig|. ESIM_OK, or
 * ESIM_ECRYPTO (not a P-256 key, or OpenSSL failed; |err| says which).
 */
esim_err sgp32_sign_rs(EVP_PKEY *key, const uint8_t *data, size_t len, uint8_t sig[SGP32_SIG_LEN],
                       esim_error *err);

/* Verifies r‖s |sig| over |data| with the P-256 public key |pub|: ESIM_OK
 * when it holds, else ESIM_ECRYPTO (|err| says why). */
esim_err sgp32_verify_rs(EVP_PKEY *pub, const uint8_t *data, size_t len,
                         const uint8_t sig[SGP32_SIG_LEN], esim_error *err);

/* The same over the DER of |obj| (type |td|), the way SGP.22 signs its
 * structures (euiccSigned1, serverSigned1, smdpSigned2, notification
 * metadata, …): ESIM_OK when |sig| is 64 bytes of r‖s by |pub| (NULL: no
 * key) over that DER, else ESIM_ECRYPTO or the encoder's error. */
esim_err sgp32_verify_rs_der(EVP_PKEY *pub, const asn_TYPE_descriptor_t *td, const void *obj,
                             const OCTET_STRING_t *sig, esim_error *err);

/*
 * The data the eIM signs for a package (eimSignature): DER(EuiccPackageSigned)
 * followed, when the association has a token (|token| not NULL), by the
 * token as a TLV '84' len <the INTEGER's content octets>. Appended to |out|.
 * ESIM_OK, ESIM_EINVAL (|s| does not encode), ESIM_ENOMEM.
 */
esim_err sgp32_eim_signature_input(const EuiccPackageSigned_t *s, const long *token, esim_buf *out,
                                   esim_error *err);

/*
 * The data the eUICC signs for a result (euiccSignEPR):
 * DER(euiccPackageResultDataSigned) ‖ the request's eimSignature TLV
 * ('5F37' '40' r‖s). |eim_sig| is the request's eimSignature (normally 64
 * bytes; any length up to 127 is encoded as given). Appended to |out|.
 */
esim_err sgp32_euicc_sign_epr_input(const EuiccPackageResultDataSigned_t *d, const uint8_t *eim_sig,
                                    size_t eim_sig_len, esim_buf *out, esim_error *err);

/* The same for a signed package error (euiccSignEPE):
 * DER(euiccPackageErrorDataSigned) ‖ '5F37' len eimSignature. */
esim_err sgp32_euicc_sign_epe_input(const EuiccPackageErrorDataSigned_t *d, const uint8_t *eim_sig,
                                    size_t eim_sig_len, esim_buf *out, esim_error *err);

/*
 * The eIM's side: sets req->eimSignature to the signature by |key| over
 * sgp32_eim_signature_input(&req->euiccPackageSigned, token). ESIM_OK,
 * ESIM_EINVAL, ESIM_ECRYPTO, ESIM_ENOMEM.
 */
esim_err sgp32_package_sign(EuiccPackageRequest_t *req, EVP_PKEY *key, const long *token,
                            esim_error *err);

/* The eUICC's side: ESIM_OK when req->eimSignature is 64 bytes and verifies
 * with |pub| over the same input; ESIM_ECRYPTO otherwise. */
esim_err sgp32_package_verify(const EuiccPackageRequest_t *req, EVP_PKEY *pub, const long *token,
                              esim_error *err);

/*
 * The eUICC's side: signs a result in place. |r| is an
 * euiccPackageResultSigned (euiccSignEPR set) or an euiccPackageErrorSigned
 * (euiccSignEPE set) for the request whose eimSignature is |eim_sig|. An
 * EuiccPackageErrorUnsigned has nothing to sign: ESIM_EINVAL.
 */
esim_err sgp32_result_sign(EuiccPackageResult_t *r, EVP_PKEY *key, const uint8_t *eim_sig,
                           size_t eim_sig_len, esim_error *err);

/* The eIM's side: ESIM_OK when the signed result or signed error |r|
 * verifies with the eUICC's key |pub| against the request's |eim_sig|;
 * ESIM_ECRYPTO when it does not; ESIM_EINVAL for an unsigned error. */
esim_err sgp32_result_verify(const EuiccPackageResult_t *r, EVP_PKEY *pub, const uint8_t *eim_sig,
                             size_t eim_sig_len, esim_error *err);

/* ---- Identifiers as SGP.32 codes them. ---- */

/* The EID (32 decimal digits) as the 16 bytes of eidValue ('5A'), one digit
 * per nibble. ESIM_EINVAL unless |eid| is 32 digits. */
esim_err sgp32_eid_to_bytes(const char *eid, uint8_t out[16], esim_error *err);
/* Back: |out| gets 32 characters and a NUL. ESIM_EINVAL on a nibble above 9. */
esim_err sgp32_eid_from_bytes(const uint8_t *b, size_t len, char out[33], esim_error *err);

/* An ICCID (18-20 digits) as EF.ICCID codes it (10 bytes, nibbles swapped,
 * padded with F), as in Iccid ('5A'). ESIM_EINVAL otherwise. */
esim_err sgp32_iccid_to_bytes(const char *iccid, uint8_t out[10], esim_error *err);
/* Back: |out| gets the digits (up to 20) and a NUL. */
esim_err sgp32_iccid_from_bytes(const uint8_t *b, size_t len, char out[21], esim_error *err);

/* ---- Builders both sides and the tests need. ---- */

/* GetEimPackageResponse "no package available": BF4F 03 02 01 01. */
esim_err sgp32_no_package(esim_buf *out);

/* GetEimPackageRequest for |eid| (BF4F 12 5A10 <EID>). */
esim_err sgp32_get_package_request(const char *eid, esim_buf *out, esim_error *err);

/* The long value of an INTEGER field as asn1c keeps it, as the wire bytes
 * '84' len <content> would carry it (helper for the token TLV, exposed for
 * tests). Appends the TLV to |out|. */
esim_err sgp32_append_int_tlv(uint8_t tag, long v, esim_buf *out);

/*
 * One TLV around bytes, and back (the indirect download: ESipa carries
 * ES10b answers as the CHOICE's alternative under its own tag, ES9+ as the
 * whole TLV, e.g. BF38 around it; SGP.22 signatures travel as 5F37 TLVs).
 * |tag| is one byte (0x04) or two (0xBF38, 0x5F37). sgp32_tlv_unwrap()
 * checks that |der| is exactly one well-formed TLV with that tag and points
 * *value at its contents (inside |der|).
 */
esim_err sgp32_tlv_wrap(uint16_t tag, const uint8_t *value, size_t len, esim_buf *out);
esim_err sgp32_tlv_unwrap(uint16_t tag, const uint8_t *der, size_t len, const uint8_t **value,
                          size_t *value_len, esim_error *err);

/*
 * The simulators' bound profile package (SGP.22's shape, the metadata and
 * profile in clear): smdpSign is the SM-DP+'s signature over the
 * transactionId, its one-time key, the eUICC's euiccSignature2 (binding the
 * package to the eUICC that made it) and the 88 and 86 blocks. Appends that
 * input to |out|.
 */
esim_err sgp32_bpp_sign_input(const Es9BoundProfilePackage_t *b, const OCTET_STRING_t *euicc_sig2,
                              esim_buf *out);

#ifdef __cplusplus
}
#endif

#endif
