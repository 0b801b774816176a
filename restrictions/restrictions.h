/*
 * restrictions.h — the eSIM policy model: what an admin wants devices to
 * allow, turned into an Apple restrictions profile
 * (com.apple.applicationaccess) or a Windows eUICCs CSP SyncML document,
 * merged as a device merges several profiles (most restrictive wins), and
 * checked against a device's OS version and supervision.
 */
#ifndef ESIM_RESTRICTIONS_RESTRICTIONS_H
#define ESIM_RESTRICTIONS_RESTRICTIONS_H

#include "plist/esim_plist.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Profile identifier used when the caller gives none. */
#define ESIM_POLICY_DEFAULT_IDENTIFIER "com.esim-mdm.restrictions"

/* A setting an admin may leave to the device default. */
typedef enum { ESIM_TRI_UNSET = 0, ESIM_TRI_FALSE = 1, ESIM_TRI_TRUE = 2 } esim_tri;

typedef struct {
    esim_tri allow_esim_modification;          /* allowESIMModification, default true */
    esim_tri force_preserve_esim_on_erase;     /* forcePreserveESIMOnErase, default false */
    esim_tri allow_esim_outgoing_transfers;    /* allowESIMOutgoingTransfers, default true */
    esim_tri allow_cellular_plan_modification; /* allowCellularPlanModification, default true */
} esim_policy;

/*
 * Sets one field from the words users type, the same on the CLI and in the
 * JSON API: |name| is one of "esim_modification" / "esim-modification"
 * (allow|deny), "preserve_esim_on_erase" (on|off|true|false),
 * "esim_outgoing_transfers" (allow|deny), "cellular_plan_modification"
 * (allow|deny); '-' and '_' are interchangeable in |name|.
 * Returns ESIM_OK, or ESIM_EINVAL (NULL argument, unknown name, or a word
 * the field does not accept; |err| names the field and the accepted words)
 * and then |p| is unchanged.
 */
ESIM_EXTERN esim_err esim_policy_set_word(esim_policy *p, const char *name, const char *word,
                                          esim_error *err);

/* Merges |other| into |into| as a device does: for allow* keys false wins,
 * for forcePreserveESIMOnErase true wins; unset yields to set. Merging is
 * commutative and associative. NULL for either argument does nothing. */
ESIM_EXTERN void esim_policy_merge(esim_policy *into, const esim_policy *other);

/* True when no field is set (also for NULL). */
ESIM_EXTERN bool esim_policy_is_empty(const esim_policy *p);

/* The com.apple.applicationaccess payload dict: PayloadType, PayloadIdentifier
 * (|payload_identifier|, or ESIM_POLICY_DEFAULT_IDENTIFIER ".applicationaccess"
 * when NULL or empty), a fresh PayloadUUID, PayloadVersion 1,
 * PayloadDisplayName, and only the eSIM keys that are set, as booleans.
 * Caller owns it (plist_free). NULL when |p| is NULL or out of memory. */
ESIM_EXTERN plist_t esim_policy_to_payload(const esim_policy *p, const char *payload_identifier);

/*
 * A whole configuration profile carrying the payload; CMS-signed when
 * |signer| is not NULL (DER), XML otherwise. |opts| may be NULL; a NULL
 * identifier becomes ESIM_POLICY_DEFAULT_IDENTIFIER, a NULL display name
 * "eSIM restrictions"; the payload's identifier is the profile's plus
 * ".applicationaccess". On success *out is replaced (its old bytes freed;
 * pass a zeroed or valid buffer) and owned by the caller (esim_buf_free).
 * On failure *out is untouched and:
 *   ESIM_EINVAL   NULL |p| or |out|, an empty policy, a field holding a
 *                 value outside esim_tri, an identifier over 200 bytes, a
 *                 signer without certificate or key, or a bad profile option
 *                 (as esim_profile_build reports it);
 *   ESIM_ECRYPTO  signing failed;  ESIM_ENOMEM  out of memory.
 */
ESIM_EXTERN esim_err esim_policy_to_profile(const esim_policy *p, const esim_profile_opts *opts,
                                            const esim_cert *signer, esim_buf *out,
                                            esim_error *err);

/* Reads the four keys back from a com.apple.applicationaccess payload dict
 * (other keys ignored; an absent key reads as unset). ESIM_EINVAL when
 * |payload| is not a dict or a key is not a boolean; *out is then unchanged. */
ESIM_EXTERN esim_err esim_policy_from_payload(plist_t payload, esim_policy *out, esim_error *err);

/* "17.2", "18", "12.1.4" -> comparable numbers: one to three dot-separated
 * decimal parts, each at most 9999; missing parts are 0. ESIM_EINVAL (and
 * *out unchanged) for anything else: "", "17.", "v17", "1.2.3.4". */
typedef struct {
    int major, minor, patch;
} esim_os_version;
ESIM_EXTERN esim_err esim_os_version_parse(const char *s, esim_os_version *out, esim_error *err);
/* <0, 0 or >0 as |a| is older than, the same as, or newer than |b|. */
ESIM_EXTERN int esim_os_version_cmp(esim_os_version a, esim_os_version b);

/* One key a device will ignore, and why, in words. */
typedef struct {
    const char *key; /* "forcePreserveESIMOnErase" */
    char
        reason[160]; /* "needs a supervised device" / "needs iOS 17.2 or later (device has 16.4)" */
} esim_ignored_key;

/*
 * Which of |p|'s set keys a device with |os_version| and |supervised| will
 * ignore (all four need supervision; minimum iOS 12.1, 17.2, 18.0, 11.0).
 * Writes at most 4 entries to |out|, in the order of esim_policy's fields,
 * and returns how many. |key| points to a static string. A NULL or
 * unreadable |os_version| proves nothing about versions: only supervision
 * is then checked. Unset keys are never listed. 0 when |p| or |out| is NULL.
 */
ESIM_EXTERN size_t esim_policy_ignored_keys(const esim_policy *p, const char *os_version,
                                            bool supervised, esim_ignored_key out[4]);

/* |p| less what such a device ignores: the policy it really applies
 * (ignored keys become unset). A zeroed policy for NULL |p|. */
ESIM_EXTERN esim_policy esim_policy_effective(const esim_policy *p, const char *os_version,
                                              bool supervised);

/* ---- Windows eUICCs CSP --------------------------------------------------- */

typedef struct {
    const char *eid;           /* required, validated */
    const char *server;        /* DownloadServers/{ServerName}: an FQDN; NULL = no server node */
    bool auto_enable;          /* AutoEnable */
    bool discovery_server;     /* IsDiscoveryServer (true = SM-DS) */
    esim_tri local_ui_enabled; /* Policies/LocalUIEnabled; FALSE requires auto_enable */
    bool reset_to_factory;     /* Exec Actions/ResetToFactoryState */
} esim_windows_csp;

/*
 * An OMA-DM SyncML document (<SyncML><SyncBody>…<Final/>) under
 * ./Device/Vendor/MSFT/eUICCs/{EID}, commands in this order, CmdID from 1:
 *   Exec    Actions/ResetToFactoryState             (when reset_to_factory)
 *   Add     DownloadServers/{server}/AutoEnable and
 *           DownloadServers/{server}/IsDiscoveryServer, bool (when server)
 *   Replace Policies/LocalUIEnabled, bool           (when local_ui_enabled set)
 * On success *out is replaced (old bytes freed) and owned by the caller.
 * ESIM_EINVAL (|err| says which; *out untouched) for: NULL |csp|, a missing
 * or invalid EID, a server that is not an FQDN, auto_enable or
 * discovery_server without a server, nothing to do, or local UI disabled
 * without AutoEnable. ESIM_ENOMEM out of memory.
 */
ESIM_EXTERN esim_err esim_windows_csp_syncml(const esim_windows_csp *csp, esim_buf *out,
                                             esim_error *err);

/* One eSIM operation on a Windows PC, as the service queues it. */
typedef enum {
    ESIM_WIN_ADD_SERVER = 0, /* Add DownloadServers/{server}, AutoEnable [, IsDiscoveryServer] */
    ESIM_WIN_DELETE_SERVER,  /* Delete DownloadServers/{server} */
    ESIM_WIN_ADD_PROFILE,    /* Add Profiles/{iccid}, ServerName, MatchingID [, IsEnabled] */
    ESIM_WIN_ENABLE_PROFILE, /* Replace Profiles/{iccid}/IsEnabled */
    ESIM_WIN_DELETE_PROFILE, /* Delete Profiles/{iccid} */
    ESIM_WIN_LOCAL_UI,       /* Replace Policies/LocalUIEnabled */
    ESIM_WIN_RESET,          /* Exec Actions/ResetToFactoryState */
    ESIM_WIN_GET,            /* Get of nodes under the eUICC (verification) */
    ESIM_WIN_OP_COUNT
} esim_windows_op_kind;

typedef struct {
    esim_windows_op_kind kind;
    const char *eid;          /* required: the eUICC, by EID */
    const char *server;       /* ADD_SERVER, DELETE_SERVER, ADD_PROFILE: an FQDN (or
                                 FQDN:PORT, for test servers) */
    bool auto_enable;         /* ADD_SERVER */
    esim_tri discovery;       /* ADD_SERVER: IsDiscoveryServer (unset: not sent) */
    const char *iccid;        /* *_PROFILE */
    const char *matching_id;  /* ADD_PROFILE: ^([0-9a-fA-F]{5}-){3}[0-9a-fA-F]{5}$ */
    esim_tri enabled;         /* ADD_PROFILE (unset: not sent), ENABLE_PROFILE (set) */
    bool local_ui_enabled;    /* LOCAL_UI */
    const char *const *nodes; /* GET: paths under the eUICC ("Profiles/8901.../State") */
    size_t n_nodes;           /* GET: 1 to 16 */
} esim_windows_op;

/* "add_server", "delete_server", "add_profile", "enable_profile",
 * "delete_profile", "local_ui", "reset", "get"; NULL out of range. */
ESIM_EXTERN const char *esim_windows_op_name(esim_windows_op_kind k);

/*
 * The SyncML commands of |op| (a SyncBody fragment, no Final) under
 * ./Device/Vendor/MSFT/eUICCs/{EID}/, each its own command with CmdID
 * |cmd_id| (one command) or |cmd_id|.1, .2, ... (several), so each item's
 * status comes back on its own. Everything is validated first: the EID,
 * the FQDN, the ICCID, the MatchingID pattern, relative GET paths without
 * "..". *out is replaced. ESIM_EINVAL (|err| says which), ESIM_ENOMEM.
 */
ESIM_EXTERN esim_err esim_windows_op_syncml(const esim_windows_op *op, const char *cmd_id,
                                            esim_buf *out, esim_error *err);

#ifdef __cplusplus
}
#endif
#endif
