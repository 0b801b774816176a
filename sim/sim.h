/*
 * sim.h — the device simulator and the SM-DP+ simulator: virtual eUICCs with
 * their GSMA test certificates, virtual iOS devices that answer MDM commands
 * as an iPhone does, the operator's download server (SGP.22 ES9+ over HTTPS
 * JSON) and the runtime that drives thousands of devices against the service
 * over HTTP only, exactly as real devices do. docs/simulator.md explains the
 * protocol simplifications.
 *
 * Ownership: every sim_X_new() has a sim_X_free() that accepts NULL. Strings
 * passed in are copied unless a comment says otherwise. Pointers handed back
 * by accessors (sim_euicc_profile_at, sim_smdp_order_at, ...) are borrowed and
 * stay valid until the next call that changes that object.
 *
 * Errors: esim_err (core/esim.h) with a sentence in |err| (may be NULL).
 * Library code never prints. Nothing here keeps global mutable state;
 * callers that use threads with libevent must call evthread_use_pthreads().
 */
#ifndef ESIM_SIM_SIM_H
#define ESIM_SIM_SIM_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/esim.h"
#include "restrictions/restrictions.h"

struct event_base;

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the test PKI as the simulator uses it ------------------------------ */

typedef struct sim_pki sim_pki;

/*
 * Opens the test PKI in |dir|, creating what is missing (esim_pki_create),
 * and loads ca, server (+key), device-ca (+key), ci, eum (+key), dpauth
 * (+key) and push.topic. *out is the caller's (sim_pki_free).
 *   ESIM_EIO / ESIM_ECRYPTO  a file could not be made or read (|err| names it).
 *   ESIM_ENOMEM.
 */
esim_err sim_pki_open(const char *dir, sim_pki **out, esim_error *err);
void sim_pki_free(sim_pki *pki);
const char *sim_pki_dir(const sim_pki *pki);
/* The APNs topic of push.pem ("com.apple.mgmt.External.<uuid>"). */
const char *sim_pki_topic(const sim_pki *pki);
/* Path of ca.pem, the trust anchor for the service, APNs mock and SM-DP+ TLS. */
const char *sim_pki_ca_file(const sim_pki *pki);

/* ---- virtual eUICC (PROTOCOLS.md §5) -------------------------------------- */

typedef enum { SIM_PROFILE_DISABLED = 0, SIM_PROFILE_ENABLED = 1 } sim_profile_state;
typedef enum {
    SIM_CLASS_TEST = 0,
    SIM_CLASS_PROVISIONING = 1,
    SIM_CLASS_OPERATIONAL = 2,
} sim_profile_class;

/* Profile policy rules (SGP.22 PPR). */
#define SIM_PPR1 0x1u /* the profile may not be disabled */
#define SIM_PPR2 0x2u /* the profile may not be deleted */

#define SIM_ICCID_MAX 20
#define SIM_MAX_PROFILES 8 /* what the virtual eUICC has room for */

typedef struct {
    char iccid[SIM_ICCID_MAX + 1];
    sim_profile_state state;
    sim_profile_class profile_class;
    char nickname[64];
    char service_provider[64];
    char profile_name[64];
    unsigned ppr;           /* SIM_PPR1 | SIM_PPR2 */
    char smdp_address[128]; /* where its notifications go; may be empty */
} sim_profile;

/* Results of the eUICC's profile operations, as SGP.22 names them. */
typedef enum {
    SIM_RES_OK = 0,
    SIM_RES_ICCID_OR_AID_NOT_FOUND,
    SIM_RES_PROFILE_NOT_IN_DISABLED_STATE,
    SIM_RES_PROFILE_NOT_IN_ENABLED_STATE,
    SIM_RES_DISALLOWED_BY_POLICY,
    SIM_RES_CAT_BUSY,
    SIM_RES_ICCID_ALREADY_EXISTS,
    SIM_RES_INSUFFICIENT_MEMORY,
} sim_result;

/* "ok", "iccidOrAidNotFound", ...; never NULL. */
const char *sim_result_name(sim_result r);

typedef enum {
    SIM_NOTIF_INSTALL = 0,
    SIM_NOTIF_ENABLE,
    SIM_NOTIF_DISABLE,
    SIM_NOTIF_DELETE,
} sim_notif_event;

/* "install", "enable", "disable", "delete". */
const char *sim_notif_event_name(sim_notif_event ev);

typedef struct {
    uint32_t seq; /* monotonic per eUICC, never reused */
    sim_notif_event event;
    char iccid[SIM_ICCID_MAX + 1];
    char smdp_address[128]; /* the SM-DP+ the notification is for */
    /* An install's RSP session (its ProfileInstallationResult carries
     * it); all zero when unknown or another event. */
    uint8_t transaction_id[16];
} sim_notification;

typedef struct sim_euicc sim_euicc;

/*
 * A new eUICC with |eid| (validated), no profiles. Its P-256 key pair (kept
 * inside) and its certificate from the PKI's EUM, subject serialNumber = the
 * EID, are made on first use and kept from then on (saved with the state).
 * ESIM_EINVAL for a bad EID, ESIM_ENOMEM. |pki| must outlive the eUICC.
 */
esim_err sim_euicc_new(const sim_pki *pki, const char *eid, sim_euicc **out, esim_error *err);
void sim_euicc_free(sim_euicc *e);

const char *sim_euicc_eid(const sim_euicc *e);

/*
 * Installs |p| (its |state| is ignored: a new profile arrives disabled) and
 * queues an install notification for p->smdp_address. ESIM_EINVAL (nothing
 * changes) for a bad ICCID or class. Otherwise ESIM_OK and *res is ok,
 * iccidAlreadyExists or insufficientMemory (then nothing changed).
 */
esim_err sim_euicc_install(sim_euicc *e, const sim_profile *p, sim_result *res, esim_error *err);

/* The transactionId (16 bytes) of the RSP session whose profile the next
 * sim_euicc_install() installs: its install notification (a
 * ProfileInstallationResult) carries it. */
void sim_euicc_set_session(sim_euicc *e, const uint8_t transaction_id[16]);

/*
 * Profile operations. Enabling one profile disables the enabled one (which
 * must not carry PPR1); disabling needs an enabled profile without PPR1;
 * deleting needs a disabled profile without PPR2. A refused operation
 * changes nothing. Each change queues its notification(s).
 */
sim_result sim_euicc_enable(sim_euicc *e, const char *iccid);
sim_result sim_euicc_disable(sim_euicc *e, const char *iccid);
sim_result sim_euicc_delete(sim_euicc *e, const char *iccid);

/* eUICC memory reset: deletes every operational profile, whatever its state
 * or rules (test and provisioning profiles stay); a delete notification is
 * queued for each. Returns how many were deleted. */
size_t sim_euicc_memory_reset(sim_euicc *e);

size_t sim_euicc_profile_count(const sim_euicc *e);
const sim_profile *sim_euicc_profile_at(const sim_euicc *e, size_t i);
const sim_profile *sim_euicc_find(const sim_euicc *e, const char *iccid);
const sim_profile *sim_euicc_enabled(const sim_euicc *e); /* NULL when none */

size_t sim_euicc_notification_count(const sim_euicc *e);
const sim_notification *sim_euicc_notification_at(const sim_euicc *e, size_t i);
/* Drops the notification |seq| once its server confirmed it; ESIM_ENOTFOUND. */
esim_err sim_euicc_notification_remove(sim_euicc *e, uint32_t seq);

/*
 * SGP.32 state: the eIMs associated with the eUICC (EimConfigurationData as
 * it was added, with the counter of the last package accepted from it and
 * the association token the eUICC gave it) and the auto-enable setting.
 * Changed only through sim_euicc_es10(); saved with the rest of the state.
 */
#define SIM_MAX_EIMS 8
#define SIM_EIM_ID_MAX 128
typedef struct {
    char eim_id[SIM_EIM_ID_MAX + 1];
    char fqdn[256];            /* may be empty */
    int id_type;               /* eimIdType: 1 oid, 2 fqdn, 3 proprietary; 0 absent */
    uint64_t counter;          /* counterValue: the last accepted package's counter */
    int64_t association_token; /* >= 1 */
    esim_buf key_der; /* the eIM's certificate or SubjectPublicKeyInfo, DER; may be empty */
    bool key_is_cert;
    uint8_t protocols; /* eimSupportedProtocol bits, bit 0 = retrieveHttps */
    bool has_protocols;
} sim_eim_info;

size_t sim_euicc_eim_count(const sim_euicc *e);
const sim_eim_info *sim_euicc_eim_at(const sim_euicc *e, size_t i);
const sim_eim_info *sim_euicc_eim_find(const sim_euicc *e, const char *eim_id); /* NULL: none */

/* True when the state changed since the last save/load. */
bool sim_euicc_dirty(const sim_euicc *e);

/* Crash-safe JSON file with everything, the private key included (0600). */
esim_err sim_euicc_save(sim_euicc *e, const char *path, esim_error *err);
/* ESIM_ENOTFOUND, ESIM_EIO, ESIM_EINVAL (a damaged file: |err| says what). */
esim_err sim_euicc_load(const sim_pki *pki, const char *path, sim_euicc **out, esim_error *err);

/* ---- SGP.32 ES10 and the eUICC as a smart card (es10.c, card.c, vpcd.c) -- */

/*
 * Runs one ES10 request (DER, e.g. BF3E.., BF55 00, BF57.., BF51.., BF2D..,
 * BF2B 00, BF30.. (RemoveNotificationFromList), BF22 00, BF3C 00, BF43 00,
 * and the certificate request the IPA needs for an IpaEuiccDataRequest)
 * against the eUICC and appends the DER answer to |out|. Bad input -> a DER
 * error answer where the spec has one, else ESIM_EINVAL (|err| says why);
 * nothing changes then. A package (BF51) is checked as SGP.32 says (EID,
 * associated eimId, eimSignature with that eIM's key, counter) and answered
 * with a EuiccPackageResult signed by the eUICC's key. The caller saves the
 * eUICC (sim_euicc_dirty) when it wants the change to survive.
 */
esim_err sim_euicc_es10(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                        esim_error *err);

/* The ISD-R, where ES10 requests go (SGP.22 §2.2.3). */
#define SIM_ISDR_AID "A0000005591010FFFFFFFF8900000100"

/*
 * A card face for an eUICC: ISO 7816-4 APDUs as a UICC answers them —
 * MANAGE CHANNEL open/close (channels 1-19), SELECT of the ISD-R by AID on
 * any open channel, TERMINAL CAPABILITY, STORE DATA (80/81 E2 11|91 block#)
 * chained and passed whole to sim_euicc_es10(), answers as 61xx + GET
 * RESPONSE (default, as T=0 cards do) or, in direct mode, data + 90 00.
 * Errors are status words (6700, 6881, 6985, 6A80, 6A82, 6A86, 6D00, 6E00).
 * |e| is borrowed and must outlive the card.
 */
typedef struct sim_card sim_card;
esim_err sim_card_new(sim_euicc *e, sim_card **out, esim_error *err);
void sim_card_free(sim_card *c);
/* Direct mode: answers of up to 256 bytes come with 90 00, no 61xx. */
void sim_card_set_direct(sim_card *c, bool direct);
/* Power on, off or reset: every channel but 0 closed, nothing selected. */
void sim_card_reset(sim_card *c);
/* The ATR (offers T=0, then T=1); static. */
const uint8_t *sim_card_atr(size_t *len);
/* Appends the response APDU (data and SW1 SW2) for |apdu| to |rsp|: always
 * ESIM_OK with a status word, except ESIM_ENOMEM. */
esim_err sim_card_apdu(sim_card *c, const uint8_t *apdu, size_t len, esim_buf *rsp,
                       esim_error *err);

/* vsmartcard's vpcd (the pcscd reader driver) listens on TCP, 35963 for its
 * first reader; the card connects to it. */
#define SIM_VPCD_PORT 35963
typedef struct {
    const char *host; /* e.g. "127.0.0.1" */
    uint16_t port;
    const volatile sig_atomic_t *stop;      /* polled every 200 ms; may be NULL */
    void (*after_apdu)(void *arg);          /* e.g. save the eUICC; may be NULL */
    void (*on_connect)(void *arg, bool up); /* may be NULL */
    void *arg;
} sim_vpcd_opts;
/* Attaches |c| to vpcd until *o->stop: connects (again every 200 ms while
 * vpcd is not there or after it closed the connection), answers power, reset
 * and ATR controls and APDUs. ESIM_OK when stopped; ESIM_ENOMEM/ESIM_EIO. */
esim_err sim_vpcd_run(sim_card *c, const sim_vpcd_opts *o, esim_error *err);

/* ---- HTTP/1.1 client on libevent and OpenSSL (http.c) --------------------- */

typedef struct sim_http sim_http;

/*
 * A private connection for a series of requests: those that name it reuse
 * its connection and never share it with other requests, as one device's
 * TCP connection is its own (the service keys NotNow bookkeeping on the
 * connection). Freeing it closes the connection, after the request it
 * carries if one is in flight (requests naming it still get their
 * callbacks; one sent again after a broken connection gets a new one).
 */
typedef struct sim_http_conn sim_http_conn;
esim_err sim_http_conn_new(sim_http_conn **out, esim_error *err);
void sim_http_conn_free(sim_http_conn *c); /* NULL ok; closes the connection */

/*
 * One device's TLS session, kept between its connections as a phone's TLS
 * stack keeps it: a request that names one (sim_http_request.tls) offers the
 * session the device's last full handshake or resumption got, so a new
 * connection to the same server resumes it (no certificates, no
 * signatures). The device's first connection is always a full handshake,
 * and its client certificate is sent only then, when the server asks for
 * it. Made on first use; forget it when the device's identity changes (an
 * erase); free it once none of the device's connections is open.
 */
typedef struct sim_tls_session sim_tls_session;
void sim_tls_session_forget(sim_tls_session *t); /* NULL ok: the next connection is full */
void sim_tls_session_free(sim_tls_session *t);   /* NULL ok */
/* The session as kept: its DER without the server's certificate (none
 * yet: NULL, *len 0). */
const unsigned char *sim_tls_session_der(const sim_tls_session *t, size_t *len);

typedef struct {
    const char *method; /* "GET", "POST", "PUT" */
    const char *url;
    const char *const *headers; /* "Name: value" lines, may be NULL */
    size_t n_headers;
    const void *body; /* copied; may be NULL */
    size_t body_len;
    /* How long the request may go with no progress on its connection (0 =
     * 30 s): counted from when a connection starts on it, not from this
     * call (a slowed simulator's loop may hold it longer than that before
     * it goes out), and again from each step since (connected, handshake,
     * bytes written or read); a server that stops answering still fails
     * it this long after its last step. */
    long timeout_ms;
    const char *ca_file; /* trust anchor for https; NULL = system */
    /* TLS client authentication, sent when a full handshake asks for it:
     * the certificate's DER (copied; NULL: none), the CA certificate sent
     * after it (DER, one the caller keeps for the client's life; may be
     * NULL) and the certificate's P-256 private key, the scalar d (32
     * bytes, big-endian, copied; a device's own identity key), made into
     * an OpenSSL key only when a full handshake asks for the certificate. */
    const unsigned char *client_cert_der;
    size_t client_cert_der_len;
    const unsigned char *client_chain_der;
    size_t client_chain_der_len;
    const unsigned char *client_key_p256;
    /* The device's own connection; NULL: none (a request naming |tls| then
     * gets a connection of its own, closed after the answer). */
    sim_http_conn *conn;
    /* The device's own TLS session (*tls made on first use), offered by its
     * new connections. NULL: the request is on no device's behalf (the
     * simulator's own calls to the mocks): it may share the client's pool
     * of kept connections with other such requests, and resumes nothing. */
    sim_tls_session **tls;
} sim_http_request;

typedef struct {
    esim_err err;  /* ESIM_OK when an HTTP answer arrived (any status) */
    long status;   /* HTTP status */
    esim_buf body; /* owned by the client; valid during the callback */
    char errmsg[256];
    bool host_unknown; /* the host name did not resolve (DNS) */
} sim_http_response;

typedef void (*sim_http_cb)(void *arg, sim_http_response *resp);

/* A client on |base| (not owned). ESIM_EINVAL, ESIM_ENOMEM. */
esim_err sim_http_new(struct event_base *base, sim_http **out, esim_error *err);
/* Cancels what is in flight: each pending callback runs once with
 * ESIM_EUNAVAIL ("cancelled"), and sim_http_send from inside it fails. */
void sim_http_free(sim_http *h);
/* Starts a request; |cb| runs later from the event loop, exactly once.
 * ESIM_EINVAL no method/URL/callback; ESIM_EUNAVAIL the client is shutting
 * down or the URL is not http[s]://HOST[:PORT][/PATH]; ESIM_ENOMEM. */
esim_err sim_http_send(sim_http *h, const sim_http_request *req, sim_http_cb cb, void *arg,
                       esim_error *err);
size_t sim_http_in_flight(const sim_http *h);

/* TLS handshakes the client made: full, resumed, and client certificates
 * sent (each in a full handshake the server asked one in);
 * chains_verified: server certificate chains verified (X509_verify_cert),
 * one in each full handshake; tickets: sessions (TLS 1.3 tickets, or TLS
 * 1.2 sessions) servers gave it. */
typedef struct {
    size_t full, resumed, client_certs, chains_verified, tickets;
} sim_http_tls_stats;
sim_http_tls_stats sim_http_get_tls_stats(const sim_http *h);

/* ---- LPA side of SGP.22 ES9+ (what the device does with the eUICC) -------- */

typedef struct {
    esim_err err; /* ESIM_OK: the profile is installed on the eUICC */
    char iccid[SIM_ICCID_MAX + 1];
    char subject_code[16]; /* SM-DP+ statusCodeData when it refused, else "" */
    char reason_code[16];
    char message[256]; /* in words, for the error chain */
    bool host_unknown; /* ESIM_EUNAVAIL because the SM-DP+'s name did not resolve */
} sim_download_result;

typedef void (*sim_download_cb)(void *arg, const sim_download_result *r);

/*
 * One device's ES9+ side, as its LPA and TLS stack hold it: its own TLS
 * session with the SM-DP+ (kept between downloads: its first connection is
 * a full handshake, later ones resume it) and its own connection, open
 * while its LPA works and kept alive between the requests of a download and
 * the notifications sent after it (the install notification goes on the
 * download's connection); the connection closes when the last LPA call
 * naming the link ends, except after a download that installed a profile,
 * when the device's next call (its notifications) uses it. Each device has
 * its own; it is never another device's. Made on first use (*link NULL);
 * forget the session when the device is wiped; free it with the device
 * (requests still in flight keep what they need until their callbacks).
 */
typedef struct sim_lpa_link sim_lpa_link;
void sim_lpa_link_forget(sim_lpa_link *l); /* NULL ok: the next connection is a full handshake */
void sim_lpa_link_free(sim_lpa_link *l);   /* NULL ok */

/*
 * Runs a profile download from the SM-DP+ at |server_url| (https://host[:port])
 * for |e|: initiateAuthentication, the eUICC verifies the SM-DP+ chain and
 * signature, authenticateClient, getBoundProfilePackage, install. The new
 * profile is installed disabled (enable it with sim_euicc_enable). |matching_id|
 * may be NULL (default SM-DP+ discovery by EID). |link|: the device's
 * (sim_lpa_link; NULL: a connection and TLS session for this download only).
 * |e| must stay alive until |cb|.
 */
/* ESIM_EINVAL (not https://, no host, too long), ESIM_ECRYPTO, ESIM_ENOMEM,
 * ESIM_EUNAVAIL: then |cb| never runs. Afterwards |cb| reports: ESIM_OK;
 * ESIM_EAUTH the SM-DP+ refused (codes in the result); ESIM_ECRYPTO the eUICC
 * refused the SM-DP+; ESIM_ESTATE the eUICC refused the profile;
 * ESIM_EUNAVAIL/ESIM_EPROTO transport or protocol failures. */
esim_err sim_lpa_download(sim_http *h, sim_euicc *e, sim_lpa_link **link, const char *server_url,
                          const char *ca_file, const char *matching_id, sim_download_cb cb,
                          void *arg, esim_error *err);

/*
 * Sends every pending notification of |e| to its SM-DP+ (https://smdp_address),
 * one at a time in sequence order, signed by the eUICC; removes each one the
 * server confirms. |link| as for sim_lpa_download. |cb| (may be NULL) runs
 * once with how many of them are still pending — before this returns when
 * there was nothing to send.
 */
typedef void (*sim_notify_cb)(void *arg, size_t still_pending);
esim_err sim_lpa_send_notifications(sim_http *h, sim_euicc *e, sim_lpa_link **link,
                                    const char *ca_file, sim_notify_cb cb, void *arg,
                                    esim_error *err);

/* ---- The IPA of an IoT device (SGP.32 IPAd, ipa.c) ------------------------- */

/*
 * ES10b AddInitialEim on |e|: the eIM |eim_id| at |eim_fqdn| (HOST:PORT),
 * eimIdType fqdn, counter 0, its certificate |eim_cert_der| (DER), protocol
 * retrieveHttps. *token gets the association token the eUICC chose.
 * ESIM_ESTATE the eUICC refused (|err| has its code), ESIM_EPROTO an answer
 * without a token, ESIM_EINVAL a certificate that is not DER, ESIM_ENOMEM.
 */
esim_err sim_ipa_add_initial_eim(sim_euicc *e, const char *eim_id, const char *eim_fqdn,
                                 const esim_buf *eim_cert_der, long *token, esim_error *err);

typedef struct sim_ipa sim_ipa;
typedef struct {
    sim_http *http;                  /* not owned; outlives the IPA's requests */
    const char *eim_url;             /* http[s]://eimFqdn/gsma/rsp2/asn1 */
    const char *ca_file;             /* trust anchor for https (eIM and SM-DP+); NULL = system */
    const char *const *smdp_resolve; /* "NAME=HOST:PORT" ("*=HOST:PORT"), as devsim's */
    size_t n_smdp_resolve;
    bool fail_downloads; /* every download trigger fails (no data connection) */
    /* Downloads go through the eIM (SGP.32 indirect download: ESipa BF39,
     * BF3B, BF3A, BF41, BF3D, relayed by the eIM to the SM-DP+) rather than
     * to the SM-DP+ directly. */
    bool indirect_downloads;
    /* The connection to the eIM stays open from one poll cycle to the next
     * (a device that polls every few seconds, as a phone keeps its
     * connection); without it each cycle opens one. Either way a new
     * connection resumes the device's own TLS session: its first is the
     * only full handshake. */
    bool keep_connection;
} sim_ipa_config;

/* What one poll cycle did. err: ESIM_OK (ended on noEimPackageAvailable or
 * after 16 packages), ESIM_EUNAVAIL (eIM unreachable), ESIM_EPROTO (an
 * answer that was not ESipa DER, or HTTP other than 200); |message| says. */
typedef struct {
    esim_err err;
    unsigned polls, packages_ok, packages_refused, package_errors, data_requests, downloads_ok,
        downloads_failed, acknowledged;
    char message[256];
} sim_ipa_poll_result;
typedef void (*sim_ipa_cb)(void *arg, const sim_ipa_poll_result *r);

/* An IPA for |e| (borrowed; it must outlive the IPA). ESIM_EINVAL: no
 * http(s):// eIM URL. */
esim_err sim_ipa_new(sim_euicc *e, const sim_ipa_config *cfg, sim_ipa **out, esim_error *err);
void sim_ipa_free(sim_ipa *ipa); /* NULL ok; not while a poll runs */
/*
 * One poll cycle: GetEimPackageRequest; a BF51 package goes to the eUICC
 * unchanged (sim_euicc_es10) and its signed answer back; a BF52 data request
 * is answered with the eUICC's certificates (ES10 GetCerts); a BF54 trigger
 * runs the download (sim_lpa_download, then the install notification to the
 * SM-DP+) and reports ProfileDownloadTriggerResult; each result goes in
 * ProvideEimPackageResult and the notifications the eIM acknowledges are
 * removed from the eUICC; then the next poll, until noEimPackageAvailable.
 * |cb| runs once, from the loop. ESIM_ESTATE when a cycle is running.
 */
esim_err sim_ipa_poll(sim_ipa *ipa, sim_ipa_cb cb, void *arg, esim_error *err);
bool sim_ipa_busy(const sim_ipa *ipa);

/* ---- SM-DP+ simulator ------------------------------------------------------ */

typedef enum {
    SIM_ORDER_AVAILABLE = 0, /* known, not released by the operator */
    SIM_ORDER_RELEASED,      /* may be downloaded once */
    SIM_ORDER_DOWNLOADED,    /* the bound package went out */
    SIM_ORDER_INSTALLED,     /* the eUICC's install notification came back */
    SIM_ORDER_ERROR,
} sim_order_state;

const char *sim_order_state_name(sim_order_state s); /* "Available", ... */

typedef struct {
    char eid[ESIM_EID_LEN + 1];
    char iccid[SIM_ICCID_MAX + 1];
    char matching_id[65];
    sim_order_state state;
    unsigned downloads; /* bound packages served */
    unsigned retries;   /* of which served again to the same eUICC (download retry) */
    unsigned installs;  /* install notifications accepted */
    char error[128];
} sim_order;

typedef struct {
    const sim_pki *pki;      /* server.pem for TLS, dpauth for signing; outlives the SM-DP+ */
    const char *listen_host; /* NULL = 127.0.0.1 */
    uint16_t port;           /* 0 = ephemeral */
    const char *data_dir;    /* NULL: orders in memory only; else DIR/orders.json */
    const char *admin_token; /* Bearer token for /admin/; NULL: the admin endpoints answer 403 */
    const char *service_provider; /* in profile metadata; NULL = "Simulated Operator" */
    size_t max_sessions;          /* download sessions open at once; 0 = 1024 */
    unsigned session_ttl_ms;      /* an unfinished session expires after; 0 = 60,000 */
    size_t key_tables;            /* eUICC keys kept ready to verify (2 KiB each); 0 = 1024 */
} sim_smdp_config;

typedef struct sim_smdp sim_smdp;

/*
 * Starts the SM-DP+ on |base| (the caller runs the loop). Endpoints:
 * POST /gsma/rsp2/es9plus/{initiateAuthentication, authenticateClient,
 * getBoundProfilePackage, handleNotification, cancelSession}; GET and POST
 * /admin/orders (list; create {eid, iccid, matching_id?, released?});
 * POST /admin/orders/release {iccid}. Orders found in data_dir are loaded.
 *   ESIM_EINVAL bad config; ESIM_EIO cannot listen (|err| says why);
 *   ESIM_ECRYPTO TLS setup failed; ESIM_ENOMEM.
 */
esim_err sim_smdp_new(struct event_base *base, const sim_smdp_config *cfg, sim_smdp **out,
                      esim_error *err);
void sim_smdp_free(sim_smdp *s);
uint16_t sim_smdp_port(const sim_smdp *s);
/* "https://127.0.0.1:PORT": what goes into eSIMServerURL. */
const char *sim_smdp_url(const sim_smdp *s);

/* A new order. ESIM_EINVAL (bad EID, ICCID or matching ID), ESIM_EEXIST
 * (the ICCID is already ordered), ESIM_EIO (could not persist). */
esim_err sim_smdp_add_order(sim_smdp *s, const char *eid, const char *iccid,
                            const char *matching_id, bool released, esim_error *err);
/* Available -> Released. ESIM_ENOTFOUND, ESIM_ESTATE (not Available). */
esim_err sim_smdp_release_order(sim_smdp *s, const char *iccid, esim_error *err);
/* Lines "eid,iccid[,matching_id]" (a header line starting "eid" and blank
 * lines are skipped), all released. All or nothing: a bad line (|err| gives
 * its number) adds none. *added may be NULL. */
esim_err sim_smdp_load_csv(sim_smdp *s, const char *path, size_t *added, esim_error *err);
size_t sim_smdp_order_count(const sim_smdp *s);
const sim_order *sim_smdp_order_at(const sim_smdp *s, size_t i);
const sim_order *sim_smdp_find_order(const sim_smdp *s, const char *iccid);
/* Download sessions open right now (begun, neither finished nor cancelled). */
size_t sim_smdp_session_count(const sim_smdp *s);
/* eUICC keys made ready to verify so far (one per key while it stays kept). */
size_t sim_smdp_key_tables_made(const sim_smdp *s);
/* TLS handshakes the SM-DP+ completed: full, and resumed (a ticket offered back). */
void sim_smdp_tls_handshakes(const sim_smdp *s, size_t *full, size_t *resumed);

/* ---- virtual iOS device ----------------------------------------------------- */

typedef struct sim_device sim_device;

typedef struct {
    const char *udid;         /* required, esim_udid_validate */
    const char *eid;          /* required, valid EID */
    const char *serial;       /* NULL = derived from the UDID */
    const char *os_version;   /* NULL = "18.1" */
    const char *product_name; /* NULL = "iPhone16,1" */
    bool supervised;
} sim_device_spec;

/* A factory-fresh device: not enrolled, no profiles, an empty eUICC, a new
 * push token and PushMagic; its identity certificate (device-ca, CN = UDID)
 * is issued when first needed. |pki| must outlive it.
 *   ESIM_EINVAL  bad UDID, EID or OS version, or a field too long (|err| says).
 *   ESIM_ECRYPTO the eUICC key or certificate could not be made.
 *   ESIM_ENOMEM. */
esim_err sim_device_new(const sim_pki *pki, const sim_device_spec *spec, sim_device **out,
                        esim_error *err);
void sim_device_free(sim_device *d);

const char *sim_device_udid(const sim_device *d);
const char *sim_device_os_version(const sim_device *d);
const char *sim_device_serial(const sim_device *d);
const char *sim_device_imei(const sim_device *d);
const char *sim_device_product_name(const sim_device *d);
bool sim_device_supervised(const sim_device *d);
bool sim_device_enrolled(const sim_device *d);
sim_euicc *sim_device_euicc(sim_device *d);
const sim_euicc *sim_device_euicc_const(const sim_device *d);

/* The merged restrictions of every installed profile (most restrictive
 * wins), before and after what this OS/supervision ignores. */
esim_policy sim_device_restrictions_declared(const sim_device *d);
esim_policy sim_device_restrictions(const sim_device *d);

/* Installed configuration profiles. */
size_t sim_device_profile_count(const sim_device *d);
const char *sim_device_profile_identifier(const sim_device *d, size_t i);

/* Enrolment state, as the runtime sets it. The token is raw bytes. */
void sim_device_set_enrolled(sim_device *d, bool enrolled);
const unsigned char *sim_device_push_token(const sim_device *d, size_t *len);
const char *sim_device_push_magic(const sim_device *d);
/* A fresh push token and PushMagic (a device gets new ones after an erase). */
void sim_device_new_push_identity(sim_device *d);

/* The Mdm-Signature header value for |body|: base64 of a detached CMS
 * signature by the device identity (certificate included). |out| replaced.
 * ESIM_ECRYPTO when signing fails, ESIM_ENOMEM. */
esim_err sim_device_sign(const sim_device *d, const void *body, size_t len, esim_buf *out,
                         esim_error *err);
/* The identity certificate's DER (issued at first use), for TLS client
 * auth: *der points into the device (valid until it is erased or freed);
 * the key is the PKI's shared identity key. ESIM_ECRYPTO. */
esim_err sim_device_identity(const sim_device *d, const esim_buf **der, esim_error *err);

/* Misbehaviour switches, as the runtime or a test sets them. */
typedef struct {
    bool locked;        /* answer NotNow to every command (screen locked) */
    bool fail_download; /* the next RefreshCellularPlans fails with 36003 (busy), once */
    bool no_esim;       /* a model without an eSIM: RefreshCellularPlans fails with 36002 */
} sim_device_quirks;
void sim_device_set_quirks(sim_device *d, const sim_device_quirks *q);
/* Not realistic, for services that refuse to bind a UDID to a new identity:
 * keep the identity certificate across an erase. Default false. */
void sim_device_set_reuse_identity_on_erase(sim_device *d, bool reuse);

/* What to do with one command. */
typedef struct {
    esim_buf result; /* the result plist to PUT (empty when |download| is set) */
    bool download;   /* RefreshCellularPlans: run the LPA, then sim_device_finish_download */
    char esim_server_url[2049];
    char command_uuid[128];
    bool erase;              /* EraseDevice acknowledged: wipe once the answer is sent */
    bool preserve_data_plan; /* with |erase| */
    esim_status status;      /* the Status |result| carries (unset when |download|) */
} sim_cmd_outcome;

void sim_cmd_outcome_free(sim_cmd_outcome *o); /* NULL ok */

/*
 * Executes one command (the body of the service's answer) as iOS does and
 * fills |out| (zeroed first; the caller frees it). A command the device
 * cannot read is answered CommandFormatError; an unknown RequestType Error
 * 12021. ESIM_OK unless memory or the plist builder failed.
 */
esim_err sim_device_handle_command(sim_device *d, const void *cmd, size_t len, sim_cmd_outcome *out,
                                   esim_error *err);

/*
 * After the LPA finished for |command_uuid|: on success enables the new
 * profile (the enabled one is disabled) and answers Acknowledged; otherwise
 * answers Error with a chain naming the cause (36001..36003 or the SM-DP+
 * reason). |result| replaced; |status| (NULL ok) is the Status it carries.
 */
esim_err sim_device_finish_download(sim_device *d, const char *command_uuid,
                                    const sim_download_result *r, esim_buf *result,
                                    esim_status *status, esim_error *err);

/* The answer to a command the device declines right now (NotNow). */
esim_err sim_device_not_now(sim_device *d, const char *command_uuid, esim_buf *result,
                            esim_error *err);

/* Wipes the device as EraseDevice or a user erase does: configuration
 * profiles and enrolment go, the push token and PushMagic are new, and so is
 * the identity certificate (a real phone gets a new SCEP identity when it
 * enrols again) unless sim_device_set_reuse_identity_on_erase() said
 * otherwise; the eUICC is memory-reset unless |keep_esim|. */
void sim_device_erase(sim_device *d, bool keep_esim);

typedef enum {
    SIM_ACTION_DELETE_ESIM = 0,   /* Settings > Cellular > Delete eSIM */
    SIM_ACTION_TRANSFER_ESIM,     /* eSIM Quick Transfer to another iPhone */
    SIM_ACTION_ERASE_ALL_CONTENT, /* Erase All Content and Settings */
    SIM_ACTION_PASSCODE_WIPE,     /* wipe after too many passcode failures */
    SIM_ACTION_FINDMY_ERASE,      /* erase started from Find My */
} sim_user_action;

/* "delete-esim", "transfer-esim", "erase-all-content", "passcode-wipe",
 * "findmy-erase" in both directions; ESIM_EINVAL for another word. */
const char *sim_user_action_name(sim_user_action a);
esim_err sim_user_action_parse(const char *word, sim_user_action *out, esim_error *err);

typedef struct {
    bool allowed;     /* false: the restrictions refused it, nothing changed */
    bool erased;      /* the device was wiped (it must re-enrol) */
    bool esim_kept;   /* an erase kept the operational eSIM(s) */
    char reason[256]; /* in words: what happened and which key decided */
} sim_action_outcome;

/* Performs |a| as a person on the phone, honouring the effective
 * restrictions. ESIM_ESTATE when there is no eSIM to act on (delete/transfer);
 * the outcome is filled either way. */
esim_err sim_device_user_action(sim_device *d, sim_user_action a, sim_action_outcome *out,
                                esim_error *err);

bool sim_device_dirty(const sim_device *d);
/* Crash-safe JSON file (0600: it holds the keys); clears the dirty flag.
 * ESIM_EIO (|err| names the path), ESIM_ENOMEM. */
esim_err sim_device_save(sim_device *d, const char *path, esim_error *err);
/* ESIM_ENOTFOUND no file; ESIM_EIO unreadable; ESIM_EINVAL a damaged file
 * (|err| says which field), never half-loaded. *out is the caller's. */
esim_err sim_device_load(const sim_pki *pki, const char *path, sim_device **out, esim_error *err);

/* A JSON summary (udid, eid, enrolled, supervised, os, restrictions, profiles,
 * eSIMs, pending notifications) appended to |out|. ESIM_ENOMEM only. */
esim_err sim_device_describe_json(const sim_device *d, esim_buf *out, esim_error *err);

/* ---- virtual Windows 11 PC (MS-MDM / OMA-DM 1.2, the eUICCs CSP) --------------
 *
 * A PC with the same virtual eUICC as the iPhones, an OMA-DM client session
 * engine (SyncML 1.2 XML, no I/O: the caller carries the messages over HTTPS
 * with the PC's TLS client certificate) and the eUICCs configuration service
 * provider's node tree with its rules (docs/simulator.md, "Windows PCs").
 * Downloads and resets run in the background: the engine hands them out as
 * jobs (sim_winpc_next_job) and the caller reports their end.
 */

typedef struct sim_winpc sim_winpc;

typedef struct {
    const char *device_id;    /* required: 1..64 of [A-Za-z0-9-]; SyncHdr Source, DevInfo/DevId */
    const char *eid;          /* required, valid EID */
    const char *manufacturer; /* NULL = "Simulated" */
    const char *model;        /* NULL = "Surface Laptop 7" */
    const char *os_version;   /* NULL = "10.0.26100.2454" (Windows 11 24H2) */
    const char *provider_id;  /* DMClient provider; NULL = "esim-mdm" */
} sim_winpc_spec;

/* A new PC: no sessions yet, an empty eUICC, LocalUIEnabled true. Its TLS
 * identity (device-ca chain, CN = DeviceID, the simulator's shared P-256 key)
 * is issued when first needed. ESIM_EINVAL (|err| says which field),
 * ESIM_ENOMEM. |pki| must outlive it. */
esim_err sim_winpc_new(const sim_pki *pki, const sim_winpc_spec *spec, sim_winpc **out,
                       esim_error *err);
void sim_winpc_free(sim_winpc *pc); /* NULL ok */
const char *sim_winpc_device_id(const sim_winpc *pc);
sim_euicc *sim_winpc_euicc(sim_winpc *pc);
const sim_euicc *sim_winpc_euicc_const(const sim_winpc *pc);
/* Sessions that ended with the server's closing message. */
unsigned sim_winpc_sessions(const sim_winpc *pc);

/* The PC's WNS channel URI (DMClient Provider/<id>/Push/ChannelURI), NULL
 * when it has none; setting NULL clears it. ESIM_EINVAL when over 2048. */
esim_err sim_winpc_set_channel_uri(sim_winpc *pc, const char *uri, esim_error *err);
const char *sim_winpc_channel_uri(const sim_winpc *pc);

/* The PC's identity certificate's DER (issued at first use), for TLS
 * client authentication with the PKI's shared identity key: *der points
 * into the PC (valid until it is reset or freed). ESIM_ECRYPTO. */
esim_err sim_winpc_identity(sim_winpc *pc, const esim_buf **der, esim_error *err);

/*
 * Session engine. sim_winpc_session_start() writes package 1 into |out|
 * (replaced): Alert 1201, or 1200 when |pushed| (woken by WNS), and a Replace
 * of ./DevInfo/{DevId,Man,Mod,DmV,Lang}, with a new SessionID and MsgID 1;
 * |server_url| becomes SyncHdr Target. ESIM_ESTATE when a session is open.
 *
 * sim_winpc_session_reply() reads the server's message and, when it carries
 * commands, executes them in order and writes the PC's next message to |out|:
 * Status for the SyncHdr, then one Status per command (Results after each
 * Get), then <Final/> (or Alert 1222 when the server's message had none).
 * A message of Status only ends the session: *done is set and |out| empty.
 * ESIM_EPROTO (malformed XML, wrong SessionID, the first element is not the
 * SyncHdr Status, ...) and ESIM_EAUTH (the server's SyncHdr Status is 401,
 * 403 or 407) end the session too (*done set, nothing executed; |err| says
 * why). sim_winpc_session_url() is where the next message goes (the
 * server's RespURI when it gave one).
 */
esim_err sim_winpc_session_start(sim_winpc *pc, const char *server_url, bool pushed, esim_buf *out,
                                 esim_error *err);
esim_err sim_winpc_session_reply(sim_winpc *pc, const void *msg, size_t len, esim_buf *out,
                                 bool *done, esim_error *err);
const char *sim_winpc_session_url(const sim_winpc *pc);
bool sim_winpc_in_session(const sim_winpc *pc);
/* Ends an open session without a message (the transport failed). */
void sim_winpc_session_abort(sim_winpc *pc);

/* Background work the CSP started. */
typedef enum {
    SIM_WINJOB_DOWNLOAD = 0, /* Profiles/{ICCID}: download with ServerName and MatchingID */
    SIM_WINJOB_DISCOVERY,    /* DownloadServers/{server}: default SM-DP+ discovery by EID */
    SIM_WINJOB_RESET,        /* Actions/ResetToFactoryState: done; send the delete notifications */
} sim_winjob_kind;

typedef struct {
    sim_winjob_kind kind;
    char node[256];       /* the ICCID or the server name */
    char server_url[300]; /* https://<ServerName> (a port in the name is kept) */
    char matching_id[65]; /* empty: none */
} sim_winpc_job;

/* The next job to run, marked started (DiscoveryState 2; a reset has already
 * erased the profiles when this returns it). False when there is none. */
bool sim_winpc_next_job(sim_winpc *pc, sim_winpc_job *out);
/* The end of |job|: a download's Profiles/{ICCID}/State becomes 2 (enabled
 * when IsEnabled is true) or 4 with ErrorDetail from |r|; a discovery's
 * DiscoveryState 3 (the profile appears under Profiles, enabled when
 * AutoEnable) or 4; a reset's Actions/Status S_OK. |r| may be NULL for a reset. */
void sim_winpc_job_done(sim_winpc *pc, const sim_winpc_job *job, const sim_download_result *r);
/* The eUICCs CSP ErrorDetail for a download result: 0 None, 6 InvalidMatchingId,
 * 7 NoEligibleProfileForThisDevice, 8 NotEnoughSpaceOnCard, 10 ProfileEidMismatch,
 * 11 ProfileNotAvailableForNewBinding, 12 ProfileNotReleasedByOperator,
 * 13 RemoteServerGeneralFailure, 14 RemoteServerUnreachable, 1 CardGeneralFailure. */
int sim_winpc_error_detail(const sim_download_result *r);

/* A person deletes the eSIM in Settings: refused when Policies/LocalUIEnabled
 * is false; otherwise the enabled (else the first) operational profile is
 * disabled and deleted and its Profiles node goes. ESIM_ESTATE: no eSIM. */
esim_err sim_winpc_user_delete_esim(sim_winpc *pc, sim_action_outcome *out, esim_error *err);

/* A CSP node's value as the PC would answer a Get (tests, the status
 * endpoint): ESIM_OK and the text in |out|, or ESIM_ENOTFOUND. */
esim_err sim_winpc_get(const sim_winpc *pc, const char *uri, esim_buf *out);

bool sim_winpc_dirty(const sim_winpc *pc);
/* Crash-safe JSON (0600), as sim_device_save; ESIM_EINVAL for a damaged file. */
esim_err sim_winpc_save(sim_winpc *pc, const char *path, esim_error *err);
esim_err sim_winpc_load(const sim_pki *pki, const char *path, sim_winpc **out, esim_error *err);
/* JSON summary (device_id, eid, sessions, channel, CSP state, eSIMs). */
esim_err sim_winpc_describe_json(const sim_winpc *pc, esim_buf *out, esim_error *err);

/* ---- the runtime: N devices against the service ---------------------------- */

typedef struct {
    const char *server_url; /* the service's check-in/command URL base (…/mdm added when no path) */
    /* More instances of the service (behind no load balancer): each request
     * of a phone goes to the next of server_url and these in turn, and a
     * failed one is tried again at the next, so every phone talks to every
     * instance; each OMA-DM session of a PC goes to the next in turn too,
     * all of a session's messages to the one it started on (session
     * affinity), unless windows_server_url is set. Up to 7; may be NULL. */
    const char *const *more_server_urls;
    size_t n_more_server_urls;
    const char *apns_url;      /* APNs mock delivery listener */
    const char *pki_dir;       /* required: the test PKI (created if missing) */
    const char *data_dir;      /* NULL: nothing persisted; else DIR/devices/<UDID>.json */
    const char *channel;       /* APNs mock channel; NULL = "devsim" */
    const char *status_listen; /* "127.0.0.1:PORT" (0 = ephemeral) or NULL: no status endpoint */
    unsigned devices;
    /* One slice of a fleet shared by several simulator processes: this one
     * runs devices [first_device, first_device + slice_devices) of the
     * |devices| (slice_devices 0: to the end), each exactly as a lone
     * simulator of |devices| would (identity, Windows or not, draws).
     * Give each process its own |channel| so each gets its own pushes. */
    unsigned first_device, slice_devices;
    double supervised_share, notnow_share, offline_share, fail_share;
    double no_esim_share; /* phones without eSIM hardware (36002) */
    uint64_t seed;
    const char *os_version;       /* NULL: a mix of 16.4, 17.4, 18.1 */
    bool tls_client_auth;         /* identity by TLS client certificate instead of Mdm-Signature */
    bool no_identity;             /* neither, for a service run with --device-auth none: saves
                                     an RSA signature per message in load tests */
    bool reuse_identity_on_erase; /* see sim_device_set_reuse_identity_on_erase */
    unsigned offline_ms;          /* how long an offline device stays away; 0 = 3000 */
    unsigned notnow_ms;           /* how long a locked device stays locked; 0 = 2000 */
    unsigned max_concurrent;      /* check-ins in flight at once; 0 = 64 */
    /* The timer tick (device timers, token registration, the push long-poll,
     * the PCs' poll schedule); 0 = 50 ms. A session waiting for a place
     * starts as soon as one frees, not on the tick. */
    unsigned tick_ms;
    /* Windows 11 PCs among the |devices|: windows_pcs of them, or else the
     * share windows_share (rounded), spread evenly over the indices (device i
     * keeps the EID sim_devsim_identity gives, so one manifest covers both). */
    unsigned windows_pcs;
    double windows_share;
    const char *windows_server_url; /* the OMA-DM endpoint; NULL: server_url
                                       (…/ManagementServer/MDM.svc added when no path) */
    const char
        *wns_url; /* the WNS mock's delivery listener (http://); NULL: no push, polling only */
    unsigned windows_poll_ms; /* each PC's polling interval (±10%); 0 = 60,000 */
    /* Where the PCs find an SM-DP+ named in ServerName or DownloadServers, as
     * DNS would: "NAME=HOST:PORT" each ("*=HOST:PORT" for every name without
     * a port). A name not listed is https://NAME (a ":port" in it is kept). */
    const char *const *smdp_resolve;
    size_t n_smdp_resolve;
    /* IoT devices (SGP.32), apart from |devices|: each a virtual eUICC with an
     * IPA that polls the eIM at eim_url (the service's device listener, path
     * /gsma/rsp2/asn1 added when none) every iot_poll_ms (±10%; 0 = 60,000);
     * iot_offline_share of them stay away offline_ms first, iot_fail_share
     * fail every download, iot_indirect_share download through the eIM's
     * relay (SGP.32 indirect download) instead of from the SM-DP+. With api_url (+ api_key, an
     * operator key) devsim sends their association list to POST /v1/iot/devices at start. */
    unsigned iot_devices;
    unsigned iot_poll_ms;
    double iot_offline_share, iot_fail_share, iot_indirect_share;
    const char *eim_url; /* NULL: server_url */
    const char *eim_id;  /* NULL: "esim-mdm" */
    const char *api_url; /* the service's admin API base; NULL: no registration */
    const char *api_key;
    /* Optional: told when the service refuses an enrolment (Authenticate or
     * TokenUpdate answered other than 200), with the HTTP status (0: no
     * answer) and the service's reason in words; once per distinct reason
     * (a device retries with back-off, and a fleet would repeat it). */
    void (*on_enrol_refused)(void *arg, const char *udid, long status, const char *reason);
    void *enrol_refused_arg;
} sim_devsim_config;

/* IoT devices (iotfleet.c): how many; poll cycles and their failures
 * (eIM unreachable, bad answers); GetEimPackageRequests answered; eUICC
 * packages executed (signed result) or refused (signed or unsigned error)
 * and packages the eUICC could not read; IPA data requests answered;
 * downloads; notifications removed on the eIM's acknowledgement; the
 * association list sent to the eIM (registered, already there, errors);
 * devices offline right now. */
typedef struct {
    size_t devices, cycles, cycle_errors, polls, packages_ok, packages_refused, package_errors,
        data_requests, downloads_ok, downloads_failed, acknowledged, registered, already_registered,
        register_errors, offline_now;
} sim_iotfleet_stats;

typedef struct {
    size_t devices, enrolled, pushes, checkins, commands;
    size_t acknowledged, errors, not_now, downloads_ok, downloads_failed, http_errors;
    /* Windows PCs: how many; OMA-DM sessions ended by the server; sessions
     * that failed (protocol, refused, transport); server messages answered;
     * WNS pushes received; channels granted; channel expiries seen; eSIM
     * downloads and discoveries (ok/failed); factory resets. */
    size_t windows_pcs, win_sessions, win_session_errors, win_messages, wns_pushes, wns_channels,
        wns_expired, win_downloads_ok, win_downloads_failed, win_resets;
    sim_iotfleet_stats iot;
    /* TLS handshakes of every connection (service, SM-DP+, mocks): full,
     * resumed, and client certificates sent (full handshakes only); server
     * chains verified, one per full handshake (sim_http_tls_stats). */
    size_t tls_full, tls_resumed, tls_client_certs, tls_chains_verified;
    /* The iPhones' sessions (enrolments, check-ins) in flight now; check-ins
     * waiting for one to end (behind --max-concurrent or the window); and
     * check-ins that had to wait so (queued while every place was taken),
     * since the start. */
    size_t sessions_now, checkins_waiting, checkins_waited;
    /* Pushes delivered on this simulator's channels (APNs, WNS) for no
     * device of its own (another process's on a shared channel, or a token
     * or PushMagic its device no longer has after a wipe). */
    size_t stray_pushes, stray_wns_pushes;
} sim_devsim_stats;

typedef struct sim_devsim sim_devsim;

/* Creates (or loads from data_dir) the devices and starts enrolling them on
 * |base| (the caller runs the loop). *out is the caller's (sim_devsim_free).
 *   ESIM_EINVAL   bad configuration: URL scheme, shares outside 0..1, device
 *                 count, channel name, status address (|err| names it).
 *   ESIM_EIO      the data directory, a device file or the status port.
 *   ESIM_ECRYPTO  the PKI.  ESIM_ENOMEM. */
esim_err sim_devsim_new(struct event_base *base, const sim_devsim_config *cfg, sim_devsim **out,
                        esim_error *err);
/* Saves what changed and frees. */
void sim_devsim_free(sim_devsim *s);
uint16_t sim_devsim_status_port(const sim_devsim *s);
size_t sim_devsim_device_count(const sim_devsim *s);
sim_device *sim_devsim_device_at(sim_devsim *s, size_t i);
sim_device *sim_devsim_find(sim_devsim *s, const char *udid);
sim_devsim_stats sim_devsim_get_stats(const sim_devsim *s);
/* Performs a user action on a running device (re-enrols it after an erase;
 * deletions send their notifications). ESIM_ENOTFOUND no such UDID, else as
 * sim_device_user_action. */
esim_err sim_devsim_user_action(sim_devsim *s, const char *udid, sim_user_action a,
                                sim_action_outcome *out, esim_error *err);

/* Deterministic identities for device |i| of a run seeded with |seed|. */
void sim_devsim_identity(uint64_t seed, unsigned i, char udid[65], char eid[ESIM_EID_LEN + 1]);
/* The DeviceID device |i| has when it is a Windows PC (32 uppercase hex). */
void sim_devsim_windows_id(uint64_t seed, unsigned i, char id[65]);
/* Whether device |i| of |devices| is a Windows PC when |pcs| of them are. */
bool sim_devsim_is_windows(unsigned devices, unsigned pcs, unsigned i);
/* The Windows PCs of a running simulator. */
size_t sim_devsim_windows_count(const sim_devsim *s);
sim_winpc *sim_devsim_windows_at(sim_devsim *s, size_t i);
sim_winpc *sim_devsim_find_windows(sim_devsim *s, const char *device_id);
/* The IoT devices' eUICCs and the association token each got. */
size_t sim_devsim_iot_count(const sim_devsim *s);
sim_euicc *sim_devsim_iot_euicc_at(sim_devsim *s, size_t i);
long sim_devsim_iot_token_at(const sim_devsim *s, size_t i);
/* Starts an OMA-DM session of that PC now (as a person clicking "Sync" in
 * Settings > Accounts > Access work or school). ESIM_ENOTFOUND. */
esim_err sim_devsim_windows_sync(sim_devsim *s, const char *device_id, esim_error *err);

#ifdef __cplusplus
}
#endif
#endif
