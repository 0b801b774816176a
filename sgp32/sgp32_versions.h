/*
 * sgp32_versions.h — the one place that says which SGP.32 encoding esim-mdm
 * speaks and where the later revision differs, so a v1.2 binding (a second
 * module in sgp32/asn1/ and a switch here) can be added without a hunt.
 *
 * esim-mdm speaks SGP.32 v1.0 (sgp32/asn1/SGP32v10.asn), the version the
 * open IPA and eIM implementations speak. Accredited eUICCs run v1.2, which
 * encodes these differently (sources: /work/shared/sgp32-facts.md):
 *
 *   type                        v1.0 (ours)                      v1.2
 *   GetEimPackageRequest        rPLMN [1]                        stateChangeCause [1], rPLMN [2]
 *   GetEimPackageResponse       eimPackageError 1, 127           + eidNotFound 2, invalidEid 3,
 *                                                                  missingEid 4
 *   EuiccPackageSigned          transactionId [2]                eimTransactionId [2]
 *   Psmo [7]                    configureAutoEnable              configureImmediateEnable
 *   Psmo                        -                                setFallbackAttribute [8],
 *                                                                  unsetFallbackAttribute [9],
 *                                                                  setDefaultDpAddress [101]
 *   IpaEuiccDataRequest         tagList, euiccCiPKId,            + searchCriteriaEuicc-
 *                               searchCriteria [1]                 PackageResult [2],
 *                                                                  eimTransactionId [3]
 *   IpaEuiccData                defaultSmdpAddress [0]           notificationsList [0],
 *                                                                  defaultSmdpAddress [1]
 *   ProvideEimPackageResult     CHOICE (untagged)                [80] SEQ {eidValue OPT,
 *                                                                  eimPackageResult CHOICE}
 *   ProvideEimPackageResult-    [80] SEQ {eimAcknowledgements    CHOICE {eimAcknowledgements,
 *     Response                    OPT}                             emptyResponse, error}
 *   EimConfigurationData        up to euiccCiPKId [8]            + indirectProfileDownload [9],
 *                                                                  eSipaProprietary... [10]
 *   result codes                as in the module                 + disallowedByPolicy, catBusy,
 *                                                                  ecallActive, fallback codes
 */
#ifndef ESIM_SGP32_VERSIONS_H
#define ESIM_SGP32_VERSIONS_H

typedef enum {
    SGP32_V1_0 = 10, /* sgp32/asn1/SGP32v10.asn: the binding built today */
    SGP32_V1_2 = 12, /* not built yet: the differences above */
} sgp32_version;

/* The version sgp32_decode()/sgp32_encode() speak. */
#define SGP32_BINDING_VERSION SGP32_V1_0
#define SGP32_BINDING_VERSION_TEXT "1.0"

#endif
