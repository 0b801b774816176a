/*
 * esim_plist.h — Apple MDM on the wire: the commands the server sends, the
 * configuration profiles it installs, and the messages devices send back
 * (check-in messages and command results). Pure functions over libplist 2.2;
 * no I/O, no global state. (Named esim_plist.h, not plist.h, so it never
 * shadows libplist's own <plist/plist.h>.)
 *
 * Key names and status values follow PROTOCOLS.md §1-3 and Apple's schema
 * files; tests/schema checks every builder's output against those.
 */
#ifndef ESIM_PLIST_ESIM_PLIST_H
#define ESIM_PLIST_ESIM_PLIST_H

#include <plist/plist.h>

#include "core/esim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { ESIM_PLIST_XML = 0, ESIM_PLIST_BINARY = 1 } esim_plist_format;

/* Longest eSIMServerURL accepted, in bytes. */
#define ESIM_SERVER_URL_MAX 2048

/* ---- commands (server -> device) --------------------------------------- */

/* Options shared by every command builder. A NULL opts means all defaults. */
typedef struct {
    const char *command_uuid;             /* NULL: a fresh lowercase UUID; else any text of
                                             1 to 127 bytes, no control characters */
    esim_plist_format format;             /* XML unless asked */
    bool request_requires_network_tether; /* emitted only when true */
} esim_cmd_opts;

/* A built command: the serialized plist and the facts callers need. */
typedef struct {
    esim_buf body;          /* XML or binary plist */
    char command_uuid[128]; /* the CommandUUID in |body| */
    char request_type[64];  /* e.g. "RefreshCellularPlans" */
} esim_cmd;

ESIM_EXTERN void esim_cmd_free(esim_cmd *cmd); /* frees body; NULL ok */

/*
 * Normalizes an eSIM server address as admins type it: an https:// or
 * http:// URL with a host is kept as is; a bare FQDN becomes https://FQDN.
 * Refused (ESIM_EINVAL, |err| says what a valid value looks like): empty,
 * whitespace or control characters, another scheme, no host, over
 * ESIM_SERVER_URL_MAX bytes. |out| gets the URL and a NUL.
 */
ESIM_EXTERN esim_err esim_server_url_normalize(const char *in, char *out, size_t out_len,
                                               esim_error *err);

/* RefreshCellularPlans with eSIMServerURL = esim_server_url_normalize(server_url). */
ESIM_EXTERN esim_err esim_cmd_refresh_plans(const char *server_url, const esim_cmd_opts *opts,
                                            esim_cmd *out, esim_error *err);

typedef struct {
    bool preserve_data_plan;       /* PreserveDataPlan (emitted when true) */
    bool disallow_proximity_setup; /* DisallowProximitySetup (emitted when true) */
    const char *pin;               /* PIN: NULL = absent; 6 digits (macOS) */
    const char
        *obliteration_behavior; /* NULL, Default, DoNotObliterate, ObliterateWithWarning, Always */
    bool return_to_service;     /* emit ReturnToService {Enabled = true, ...} */
    const unsigned char *rts_wifi_profile; /* WiFiProfileData, may be NULL */
    size_t rts_wifi_profile_len;
    const unsigned char *rts_mdm_profile; /* MDMProfileData, may be NULL */
    size_t rts_mdm_profile_len;
} esim_erase_opts;

/* EraseDevice. |erase| may be NULL (a plain erase). */
ESIM_EXTERN esim_err esim_cmd_erase_device(const esim_erase_opts *erase, const esim_cmd_opts *opts,
                                           esim_cmd *out, esim_error *err);

/*
 * InstallProfile with Payload = |profile|. The bytes must be a configuration
 * profile: a plist (XML or binary) whose PayloadType is Configuration, or a
 * CMS SignedData (DER) wrapping one. Anything else is ESIM_EINVAL.
 */
ESIM_EXTERN esim_err esim_cmd_install_profile(const void *profile, size_t len,
                                              const esim_cmd_opts *opts, esim_cmd *out,
                                              esim_error *err);

/* RemoveProfile with Identifier (non-empty). */
ESIM_EXTERN esim_err esim_cmd_remove_profile(const char *identifier, const esim_cmd_opts *opts,
                                             esim_cmd *out, esim_error *err);

/* ProfileList; ManagedOnly emitted when true. */
ESIM_EXTERN esim_err esim_cmd_profile_list(bool managed_only, const esim_cmd_opts *opts,
                                           esim_cmd *out, esim_error *err);

/* DeviceInformation with Queries = |queries| (n >= 1, non-empty strings). */
ESIM_EXTERN esim_err esim_cmd_device_information(const char *const *queries, size_t n,
                                                 const esim_cmd_opts *opts, esim_cmd *out,
                                                 esim_error *err);

/* ---- parsing limits ------------------------------------------------------ */

typedef struct {
    size_t max_body;    /* bytes; 0 = ESIM_PLIST_DEFAULT_MAX_BODY */
    unsigned max_depth; /* container nesting; 0 = ESIM_PLIST_DEFAULT_MAX_DEPTH,
                           above ESIM_PLIST_MAX_DEPTH_CEILING = the ceiling */
} esim_parse_limits;

#define ESIM_PLIST_DEFAULT_MAX_BODY (1024u * 1024u)
#define ESIM_PLIST_DEFAULT_MAX_DEPTH 32u
/* The deepest nesting any caller may allow, whatever max_body is: libplist
 * frees and copies trees recursively, so the bound must hold for the stack. */
#define ESIM_PLIST_MAX_DEPTH_CEILING 512u

/*
 * Parses an XML or binary plist within |limits| (NULL = defaults) into
 * *root (caller frees with plist_free). ESIM_ETOOBIG over size or depth,
 * ESIM_EINVAL when it is not a plist or its root is not a dict.
 */
ESIM_EXTERN esim_err esim_plist_parse_dict(const void *data, size_t len,
                                           const esim_parse_limits *limits, plist_t *root,
                                           esim_error *err);

/* Serializes |node| as XML or binary into |out| (replaced). */
ESIM_EXTERN esim_err esim_plist_serialize(plist_t node, esim_plist_format format, esim_buf *out,
                                          esim_error *err);

/* ---- a command as the device reads it ----------------------------------- */

typedef struct {
    char command_uuid[128];
    char request_type[64];
    plist_t root;    /* the whole command plist, owned */
    plist_t command; /* the Command dict inside |root|, borrowed */
} esim_cmd_parsed;

/* Parses a command plist (as esim_cmd_* build, or as a vendor enqueues one):
 * root dict with CommandUUID (non-empty string) and Command dict with
 * RequestType (non-empty string). */
ESIM_EXTERN esim_err esim_cmd_parse(const void *data, size_t len, const esim_parse_limits *limits,
                                    esim_cmd_parsed *out, esim_error *err);
ESIM_EXTERN void esim_cmd_parsed_free(esim_cmd_parsed *cmd); /* NULL ok */

/* ---- configuration profiles ----------------------------------------------- */

typedef struct {
    const char *identifier;   /* PayloadIdentifier, required */
    const char *uuid;         /* PayloadUUID; NULL = fresh */
    const char *display_name; /* PayloadDisplayName; NULL = identifier */
    const char *description;  /* PayloadDescription; may be NULL */
    const char *organization; /* PayloadOrganization; may be NULL */
} esim_profile_opts;

/*
 * A new payload dict with PayloadType, PayloadIdentifier, PayloadUUID (fresh
 * when |uuid| is NULL), PayloadVersion 1 and PayloadDisplayName (when not
 * NULL) set. Caller owns it (plist_free) or hands it to esim_profile_build.
 * NULL on out-of-memory or a NULL type/identifier.
 */
ESIM_EXTERN plist_t esim_payload_new(const char *payload_type, const char *identifier,
                                     const char *uuid, const char *display_name);

/*
 * A configuration profile (PayloadType Configuration, PayloadVersion 1,
 * PayloadContent = copies of |payloads|) serialized into |out|. |payloads|
 * stay the caller's.
 */
ESIM_EXTERN esim_err esim_profile_build(const esim_profile_opts *opts, const plist_t *payloads,
                                        size_t n, esim_plist_format format, esim_buf *out,
                                        esim_error *err);

/* CMS SignedData (DER, content attached) of |profile| signed by |signer|
 * (certificate and key). Verifies with `openssl cms -verify -inform DER`. */
ESIM_EXTERN esim_err esim_profile_sign(const void *profile, size_t len, const esim_cert *signer,
                                       esim_buf *out, esim_error *err);

/*
 * Reads a profile as a device does: plain plist or CMS SignedData (the
 * signature's integrity is checked; its signer is not required to chain
 * anywhere). *root gets the profile dict (plist_free), *was_signed says
 * which it was (may be NULL). ESIM_EINVAL when it is neither, or when the
 * PayloadType is not Configuration.
 */
ESIM_EXTERN esim_err esim_profile_parse(const void *data, size_t len,
                                        const esim_parse_limits *limits, plist_t *root,
                                        bool *was_signed, esim_error *err);

/* ---- device -> server messages ------------------------------------------- */

typedef enum {
    ESIM_MSG_AUTHENTICATE = 1,
    ESIM_MSG_TOKEN_UPDATE,
    ESIM_MSG_CHECKOUT,
    ESIM_MSG_RESULT, /* a command result: has Status */
    /* Check-ins beyond enrolment (NanoMDM handles them too): */
    ESIM_MSG_USER_AUTHENTICATE,      /* a directory user's channel; UserID */
    ESIM_MSG_SET_BOOTSTRAP_TOKEN,    /* BootstrapToken (absent: clear it) */
    ESIM_MSG_GET_BOOTSTRAP_TOKEN,    /* answered with the stored token */
    ESIM_MSG_DECLARATIVE_MANAGEMENT, /* Endpoint, Data */
    ESIM_MSG_GET_TOKEN,              /* TokenServiceType */
} esim_msg_kind;

typedef enum {
    ESIM_STATUS_IDLE = 1,
    ESIM_STATUS_ACKNOWLEDGED,
    ESIM_STATUS_ERROR,
    ESIM_STATUS_COMMAND_FORMAT_ERROR,
    ESIM_STATUS_NOT_NOW,
} esim_status;

/* "Idle", "Acknowledged", ... ; NULL for an out-of-range value. */
ESIM_EXTERN const char *esim_status_name(esim_status s);
/* The reverse; ESIM_EINVAL for anything else. */
ESIM_EXTERN esim_err esim_status_from_name(const char *name, esim_status *out);

typedef struct {
    int64_t code;                     /* ErrorCode */
    char domain[128];                 /* ErrorDomain */
    char localized_description[512];  /* LocalizedDescription */
    char us_english_description[512]; /* USEnglishDescription (may be empty) */
} esim_error_chain_entry;

/*
 * One parsed device message. Strings are copied into fixed fields; a value
 * longer than its field is refused (ESIM_EINVAL) rather than truncated.
 */
typedef struct {
    esim_msg_kind kind;
    char message_type[32]; /* check-in MessageType, empty for results */
    char udid[65];         /* UDID, or EnrollmentID when the device sent that */
    bool is_enrollment_id; /* true when |udid| came from EnrollmentID */
    char topic[256];

    /* Authenticate */
    char os_version[32], build_version[32], product_name[64], serial_number[64];
    char imei[32], meid[32], device_name[256], model[64];

    /* TokenUpdate */
    esim_buf token; /* raw APNs token bytes */
    char push_magic[128];
    esim_buf unlock_token;
    bool awaiting_configuration;

    /* The user channel: UserID (macOS user, or the Shared iPad's
     * EnrollmentUserID); empty on the device channel. */
    char user_id[128];

    /* SetBootstrapToken: the token (empty: clear it). DeclarativeManagement:
     * Endpoint and Data. GetToken: TokenServiceType. UserAuthenticate:
     * whether a DigestResponse came. */
    esim_buf bootstrap_token;
    char dm_endpoint[256];
    esim_buf dm_data;
    char token_service_type[128];
    bool has_digest_response;

    /* Results */
    esim_status status;
    char command_uuid[128]; /* empty for Idle */
    char request_type[64];  /* often absent in acknowledgements: match on command_uuid */
    esim_error_chain_entry *error_chain; /* malloc'd array, may be NULL */
    size_t error_chain_len;

    plist_t root; /* the whole message, owned: QueryResponses and the rest */
} esim_msg;

/*
 * Parses a check-in message or a command result (XML or binary) within
 * |limits| (NULL = defaults). Refused with a reason: over size (ESIM_ETOOBIG)
 * or depth (ESIM_ETOOBIG), not a dict, no UDID/EnrollmentID, an
 * Authenticate, TokenUpdate or CheckOut without Topic, a
 * DeclarativeManagement without Endpoint, a GetToken without
 * TokenServiceType, TokenUpdate without Token or PushMagic, a wrong type, an
 * unknown MessageType, an unknown Status, a non-Idle result without
 * CommandUUID, a malformed ErrorChain.
 */
ESIM_EXTERN esim_err esim_msg_parse(const void *body, size_t len, const esim_parse_limits *limits,
                                    esim_msg *out, esim_error *err);
ESIM_EXTERN void esim_msg_free(esim_msg *msg); /* NULL ok; leaves it zeroed */

/* One entry of DeviceInformation's ServiceSubscriptions answer. */
typedef struct {
    char eid[ESIM_EID_LEN + 1];
    char iccid[24];
    char imei[32];
    char slot[32]; /* "CTSubscriptionSlotOne", ... */
    char label[64];
    char carrier[128]; /* CurrentCarrierNetwork */
    char phone_number[32];
    bool is_data_preferred;
    bool is_voice_preferred;
} esim_subscription;

/*
 * The ServiceSubscriptions array of a result's QueryResponses. *out is a
 * malloc'd array (free()), *n its length (0 with *out NULL when the answer
 * has no such query). ESIM_EINVAL when it is present but malformed.
 */
ESIM_EXTERN esim_err esim_msg_service_subscriptions(const esim_msg *msg, esim_subscription **out,
                                                    size_t *n, esim_error *err);

/* ---- device-side builders (the simulator and tests) ----------------------- */

typedef struct {
    const char *udid, *topic; /* required */
    const char *os_version, *build_version, *product_name, *serial_number;
    const char *imei, *meid, *device_name, *model; /* each may be NULL */
} esim_authenticate_info;

ESIM_EXTERN esim_err esim_msg_build_authenticate(const esim_authenticate_info *info, esim_buf *out,
                                                 esim_error *err);
ESIM_EXTERN esim_err esim_msg_build_token_update(const char *udid, const char *topic,
                                                 const void *token, size_t token_len,
                                                 const char *push_magic, esim_buf *out,
                                                 esim_error *err);
ESIM_EXTERN esim_err esim_msg_build_checkout(const char *udid, const char *topic, esim_buf *out,
                                             esim_error *err);
/*
 * A command result: UDID, Status, CommandUUID (required unless Idle),
 * ErrorChain (when n_chain > 0), and a copy of every key of |extra| (a dict
 * such as {QueryResponses: ...}; may be NULL).
 */
ESIM_EXTERN esim_err esim_msg_build_result(const char *udid, esim_status status,
                                           const char *command_uuid,
                                           const esim_error_chain_entry *chain, size_t n_chain,
                                           plist_t extra, esim_plist_format format, esim_buf *out,
                                           esim_error *err);

/* ---- errors, function by function (appendix) ------------------------------
 *
 * Every function that can fail returns an esim_err and, when |err| is not
 * NULL, one sentence saying what was wrong. On failure every output
 * argument is left exactly as it was (an esim_cmd or esim_msg the caller
 * zeroed stays zeroed; an esim_buf keeps its old content).
 *
 * esim_server_url_normalize   ESIM_EINVAL  empty, whitespace/control/non-ASCII,
 *                             a scheme other than http/https, no host, a host
 *                             that is not a host name / IPv4 / [IPv6], a port
 *                             outside 1..65535, user:password@ in the URL,
 *                             over ESIM_SERVER_URL_MAX, or |out_len| too small.
 * esim_cmd_* builders         ESIM_EINVAL  bad arguments (see each builder),
 *                             opts->command_uuid empty, over 127 bytes or
 *                             holding a control character, an
 *                             unknown opts->format; ESIM_ENOMEM.
 *   esim_cmd_erase_device     also: PIN not 6 digits, an ObliterationBehavior
 *                             outside the four values, rts_* data given while
 *                             return_to_service is false, or rts_* data that is
 *                             not a configuration profile.
 *   esim_cmd_device_information  also: a query that is not a name
 *                             ([A-Za-z0-9_.]+).
 * esim_plist_parse_dict       ESIM_ETOOBIG over max_body or max_depth (checked
 *                             before libplist parses: XML nesting is counted,
 *                             a binary plist's trailer and object graph are
 *                             walked), or a binary plist whose shared objects
 *                             would expand to more values than it has bytes
 *                             (+1024); ESIM_EINVAL not a plist, a binary plist
 *                             with impossible counts/offsets or a reference
 *                             cycle, a NUL character in any string or key
 *                             (libplist 2.2 would abort the process on it
 *                             later), a root that is not a dict.
 * esim_plist_serialize        ESIM_EINVAL NULL node or unknown format;
 *                             ESIM_ENOMEM.
 * esim_cmd_parse              as esim_plist_parse_dict, plus ESIM_EINVAL for a
 *                             missing/empty/mistyped CommandUUID, Command or
 *                             RequestType, or one longer than its field.
 * esim_payload_new            NULL also when |uuid| is given but not a UUID.
 * esim_profile_build          ESIM_EINVAL no identifier (or over 255 bytes), a
 *                             bad opts->uuid, n > 0 with NULL payloads, a payload
 *                             that is not a dict with PayloadType,
 *                             PayloadIdentifier and PayloadUUID strings.
 * esim_profile_sign           ESIM_EINVAL no certificate or key, |profile| not
 *                             a plain configuration profile (a signed one is
 *                             refused: sign once); ESIM_ECRYPTO key does not
 *                             match the certificate, or OpenSSL failed.
 * esim_profile_parse          ESIM_ETOOBIG over the limits; ESIM_EINVAL neither
 *                             plist nor CMS SignedData, detached or failing
 *                             signature, PayloadType not Configuration, no
 *                             PayloadIdentifier/PayloadUUID string,
 *                             PayloadContent present but not an array.
 * esim_msg_parse              ESIM_ETOOBIG / ESIM_EINVAL as documented above,
 *                             and: both MessageType and Status present, a UDID
 *                             or EnrollmentID failing esim_udid_validate(), a
 *                             TokenUpdate Token outside 32..100 bytes, an
 *                             ErrorChain entry without an integer ErrorCode or
 *                             a string ErrorDomain (the descriptions are
 *                             optional), QueryResponses that is not a dict.
 *                             Known optional keys of the wrong type are refused
 *                             too; unknown keys are kept in |root|.
 * esim_msg_service_subscriptions  ESIM_EINVAL an entry that is not a dict or
 *                             has a known key of the wrong type or too long.
 * esim_msg_build_*            ESIM_EINVAL a UDID failing esim_udid_validate(),
 *                             a Topic empty or over 255 bytes, a token outside
 *                             32..100 bytes, PushMagic empty or over 127 bytes,
 *                             a non-Idle result without CommandUUID, an unknown
 *                             status, an ErrorChain entry without ErrorDomain,
 *                             |extra| not a dict; ESIM_ENOMEM.
 */

#ifdef __cplusplus
}
#endif
#endif
