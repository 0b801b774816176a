/*
 * esim.h — what every part of esim-mdm shares: one error type, byte buffers,
 * identifier validators (EID, ICCID, activation codes, tokens, UDIDs), UUIDs,
 * base64/hex, crash-safe file writes, and the test PKI used by the simulator,
 * the demo and the tests. Nothing here knows about MDM, APNs or the service.
 *
 * Conventions used throughout the project:
 *  - Functions return esim_err; ESIM_OK is 0, failures are negative.
 *  - An |err| argument (esim_error *, may be NULL) receives one sentence for a
 *    person saying what was wrong and, where useful, what a good value is.
 *  - Memory a function hands back is owned by the caller; the function's
 *    comment names the matching free.
 */
#ifndef ESIM_CORE_ESIM_H
#define ESIM_CORE_ESIM_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * ESIM_EXTERN marks a function of the public API. libesim-mdm is built with
 * -fvisibility=hidden, so only what carries this mark is exported; every
 * other function, whatever its name, stays inside the library.
 */
#if defined(__GNUC__) || defined(__clang__)
#define ESIM_EXTERN __attribute__((visibility("default")))
#else
#define ESIM_EXTERN
#endif

/* ---- errors ------------------------------------------------------------ */

typedef enum {
    ESIM_OK = 0,
    ESIM_EINVAL = -1,    /* input is malformed or out of range */
    ESIM_ENOMEM = -2,    /* out of memory */
    ESIM_ENOTFOUND = -3, /* no such device, command, order, file, ... */
    ESIM_EEXIST = -4,    /* already exists */
    ESIM_ESTATE = -5,    /* not allowed in the current state */
    ESIM_EIO = -6,       /* file or socket I/O failed */
    ESIM_ECRYPTO = -7,   /* key, certificate or signature problem */
    ESIM_EAUTH = -8,     /* authentication or authorisation refused */
    ESIM_ESTORE = -9,    /* the store failed */
    ESIM_ETOOBIG = -10,  /* over a size or depth limit */
    ESIM_EPROTO = -11,   /* the peer broke the protocol */
    ESIM_ETIMEOUT = -12, /* no answer in time */
    ESIM_EUNAVAIL = -13, /* peer unreachable, closed or refusing */
} esim_err;

/* A short English name for |e| ("invalid input", ...). Never NULL. */
ESIM_EXTERN const char *esim_strerror(esim_err e);

/* One sentence for a person. Fixed size so it never needs freeing. */
typedef struct {
    char msg[512];
} esim_error;

/*
 * Writes a printf-style message into |err| (NULL is allowed and ignored) and
 * returns |code|, so a failure path reads: return esim_fail(err, ESIM_EINVAL,
 * "..."). The message is truncated to fit.
 */
ESIM_EXTERN esim_err esim_fail(esim_error *err, esim_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears |err| (NULL allowed). */
ESIM_EXTERN void esim_error_clear(esim_error *err);

/*
 * The oldest error on OpenSSL's error queue, in words, written into |buf|
 * (|fallback| when the queue is empty); the queue is cleared. Returns |buf|,
 * so a failure path reads: esim_fail(err, ESIM_ECRYPTO, "signing failed: %s",
 * esim_openssl_error_text(buf, sizeof buf, "unknown reason")).
 */
ESIM_EXTERN const char *esim_openssl_error_text(char *buf, size_t len, const char *fallback);

/* ---- byte buffers ------------------------------------------------------ */

/*
 * A growable byte buffer. |data| is always NUL-terminated after any
 * successful call (the NUL is not counted in |len|), so text can be used as a
 * C string. A zeroed struct is an empty buffer. Free with esim_buf_free().
 */
typedef struct {
    unsigned char *data;
    size_t len;
    size_t cap;
} esim_buf;

ESIM_EXTERN void esim_buf_free(esim_buf *b);                      /* NULL ok; leaves b zeroed */
ESIM_EXTERN esim_err esim_buf_reserve(esim_buf *b, size_t extra); /* room for |extra| more bytes */
ESIM_EXTERN esim_err esim_buf_append(esim_buf *b, const void *data, size_t len);
ESIM_EXTERN esim_err esim_buf_append_str(esim_buf *b, const char *s);
ESIM_EXTERN esim_err esim_buf_printf(esim_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
ESIM_EXTERN esim_err esim_buf_vprintf(esim_buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
ESIM_EXTERN void esim_buf_reset(esim_buf *b); /* len = 0, keeps memory */
/* Hands the bytes to the caller (free() them); |b| is left empty. */
ESIM_EXTERN unsigned char *esim_buf_steal(esim_buf *b, size_t *len);

/* ---- files ------------------------------------------------------------- */

/*
 * Reads a whole file of at most |max_len| bytes into |out| (replaced).
 *   ESIM_ENOTFOUND  no such file;  ESIM_ETOOBIG  larger than |max_len|;
 *   ESIM_EIO        any other read error.  |err| names the path.
 */
ESIM_EXTERN esim_err esim_read_file(const char *path, size_t max_len, esim_buf *out,
                                    esim_error *err);

/*
 * For keys, tokens and secrets. esim_check_private_file() refuses a file
 * that users other than its owner may read or write (any group or other
 * read/write bit) with ESIM_EAUTH and a message naming the file and the fix
 * (chmod 600); ESIM_ENOTFOUND/ESIM_EIO when it cannot be examined.
 * esim_read_private_file() checks the file it opened (no window between the
 * check and the read) and then reads it like esim_read_file().
 */
ESIM_EXTERN esim_err esim_check_private_file(const char *path, esim_error *err);
ESIM_EXTERN esim_err esim_read_private_file(const char *path, size_t max_len, esim_buf *out,
                                            esim_error *err);

/*
 * For a database holding push tokens and PushMagic: creates |path| with
 * mode 0600 when missing, and takes group and other permissions away from
 * it and its SQLite companions (-wal, -shm, -journal) when they exist (a
 * warning on stderr when that is not allowed). ":memory:" and "file:" URIs
 * are left alone. ESIM_EIO when the file cannot be created.
 */
ESIM_EXTERN esim_err esim_make_private_db(const char *path, esim_error *err);

/*
 * A bearer token or shared secret kept in a file (API token, webhook
 * secret): its first line without surrounding spaces and tabs. Empty,
 * holding a control character (it goes into an HTTP header) or longer than
 * ESIM_TOKEN_MAX bytes: ESIM_EINVAL. *out is malloc'ed (free). The file
 * form reads with esim_read_private_file() and names the file in errors.
 */
#define ESIM_TOKEN_MAX 1024
ESIM_EXTERN esim_err esim_token_parse(const void *data, size_t len, char **out, esim_error *err);
ESIM_EXTERN esim_err esim_read_token_file(const char *path, char **out, esim_error *err);

/*
 * Replaces |path| with |data| crash-safely: writes PATH.tmp.<pid>, fsyncs it,
 * renames it over |path| and fsyncs the directory. After a crash at any
 * instant the file holds either the old or the new content, never a mix.
 * |mode| is the permission of a new file (0600 for keys).
 */
ESIM_EXTERN esim_err esim_write_file_atomic(const char *path, const void *data, size_t len,
                                            unsigned mode, esim_error *err);

/* mkdir -p with |mode| for each created level. */
ESIM_EXTERN esim_err esim_mkdirs(const char *path, unsigned mode, esim_error *err);

/* ---- time -------------------------------------------------------------- */

ESIM_EXTERN int64_t esim_now_ms(void);  /* wall clock, ms since the Unix epoch */
ESIM_EXTERN int64_t esim_mono_ms(void); /* monotonic clock, ms; for intervals only */

/* ---- UUIDs, random, encodings ------------------------------------------ */

#define ESIM_UUID_LEN 36
/* Writes a fresh random (version 4) lowercase UUID and a NUL into |out|. */
ESIM_EXTERN void esim_uuid_new(char out[ESIM_UUID_LEN + 1]);
/* True when |s| is 8-4-4-4-12 hex digits (either case). */
ESIM_EXTERN bool esim_uuid_valid(const char *s);

/* Cryptographically random bytes (OpenSSL). ESIM_ECRYPTO if it fails. */
ESIM_EXTERN esim_err esim_random_bytes(void *out, size_t len);

/* Standard base64 with padding; |out| replaced. */
ESIM_EXTERN esim_err esim_base64_encode(const void *data, size_t len, esim_buf *out);
/* Accepts standard base64 with or without padding and ignores whitespace.
 * ESIM_EINVAL (|err| says where) on any other character. */
ESIM_EXTERN esim_err esim_base64_decode(const char *text, size_t len, esim_buf *out,
                                        esim_error *err);
/* Lowercase hex; |out| replaced. */
ESIM_EXTERN esim_err esim_hex_encode(const void *data, size_t len, esim_buf *out);
/* Hex (either case, even length) to bytes. */
ESIM_EXTERN esim_err esim_hex_decode(const char *hex, esim_buf *out, esim_error *err);

/* ---- identifiers (PROTOCOLS.md §5, §6) --------------------------------- */

#define ESIM_EID_LEN 32

/* EID: 32 decimal digits whose value mod 97 == 1 (ISO 7064 MOD 97-10).
 * ESIM_EINVAL with the reason, e.g. "EID check digits do not match:
 * expected 54, found 00". */
ESIM_EXTERN esim_err esim_eid_validate(const char *eid, esim_error *err);
/* Sets the last two digits of a 32-digit |eid| so it becomes valid. */
ESIM_EXTERN esim_err esim_eid_set_check_digits(char eid[ESIM_EID_LEN + 1], esim_error *err);

/* ICCID: 18 to 20 digits, starting "89", last digit a Luhn check digit. */
ESIM_EXTERN esim_err esim_iccid_validate(const char *iccid, esim_error *err);
/* Sets the last digit of an all-digit |iccid| (18 to 20 long) to its Luhn digit. */
ESIM_EXTERN esim_err esim_iccid_set_check_digit(char *iccid, esim_error *err);

/* Activation code "LPA:1$<SM-DP+ FQDN>$<MatchingID>[$<SM-DP+ OID>[$1]]". */
typedef struct {
    char smdp_address[256];
    char matching_id[256]; /* may be empty (the code then names only the server) */
    char smdp_oid[128];    /* may be empty */
    bool confirmation_code_required;
} esim_activation_code;
ESIM_EXTERN esim_err esim_activation_code_parse(const char *code, esim_activation_code *out,
                                                esim_error *err);

/* A bare host name: letters, digits, '-' and '.', labels of 1..63, total <= 253. */
ESIM_EXTERN esim_err esim_fqdn_validate(const char *fqdn, esim_error *err);

/* Windows eUICCs CSP MatchingID: ^([0-9a-fA-F]{5}-){3}[0-9a-fA-F]{5}$ */
ESIM_EXTERN esim_err esim_windows_matching_id_validate(const char *id, esim_error *err);

/* APNs device token: hex, even length, 64 to 200 hex digits (32..100 bytes). */
ESIM_EXTERN esim_err esim_push_token_validate(const char *hex, esim_error *err);

/* UDID or EnrollmentID: 1 to 64 characters of [A-Za-z0-9-]. Covers the
 * 40-hex legacy form, the 8-16 form of newer iPhones, and UUID forms. */
ESIM_EXTERN esim_err esim_udid_validate(const char *udid, esim_error *err);

/* ---- test PKI (OpenSSL) ------------------------------------------------- */

typedef enum { ESIM_KEY_EC_P256 = 0, ESIM_KEY_RSA2048 = 1 } esim_key_type;

/* What a certificate should say. Unused string fields are NULL. */
typedef struct {
    const char *common_name;   /* CN, required */
    const char *organization;  /* O */
    const char *uid;           /* subject UID (0.9.2342.19200300.100.1.1): APNs topic */
    const char *serial_number; /* subject serialNumber (2.5.4.5): the EID of an eUICC */
    const char
        *dns_name; /* subjectAltName DNS (TLS servers); "localhost" adds 127.0.0.1 and ::1 too */
    bool is_ca;
    bool server_auth; /* extendedKeyUsage serverAuth */
    bool client_auth; /* extendedKeyUsage clientAuth; neither flag = no EKU at all */
    esim_key_type key_type;
    int days; /* validity from now (starts 1 hour ago); 0 = 825 */
} esim_cert_spec;

/* A certificate and (optionally) its private key. Zeroed = empty. */
typedef struct {
    X509 *x509;
    EVP_PKEY *key;
} esim_cert;

/* Makes a key pair and a certificate per |spec|, signed by |issuer| (NULL:
 * self-signed). |out| owns both; esim_cert_clear() frees them. */
ESIM_EXTERN esim_err esim_cert_issue(const esim_cert_spec *spec, const esim_cert *issuer,
                                     esim_cert *out, esim_error *err);
ESIM_EXTERN void esim_cert_clear(esim_cert *c); /* NULL ok */
/* PEM files; the key (if |key_path| and c->key) is written 0600. Atomic. */
ESIM_EXTERN esim_err esim_cert_save(const esim_cert *c, const char *cert_path, const char *key_path,
                                    esim_error *err);
/* Loads a PEM certificate and, if |key_path| is not NULL, its key; checks that they match. */
ESIM_EXTERN esim_err esim_cert_load(const char *cert_path, const char *key_path, esim_cert *out,
                                    esim_error *err);

/*
 * Creates the project's test PKI in |dir| (made if missing). Files that
 * already exist are kept, so a second call changes nothing. Each NAME below
 * is NAME.pem (certificate) + NAME.key (private key):
 *   ca         test root for TLS: signs server, push
 *   server     TLS server for localhost, 127.0.0.1 and ::1 (service, APNs mock, SM-DP+)
 *   push       APNs MDM push certificate, clientAuth, UID = topic in push.topic
 *   device-ca  device identity CA (stands in for the SCEP CA); devices' identity
 *              certificates are issued from it, RSA, no EKU, as SCEP issues them
 *   ci         GSMA test CI (root of the eSIM chain, P-256)
 *   eum        EUM certificate, signed by ci: it signs each eUICC certificate
 *   dpauth     SM-DP+ authentication certificate, signed by ci
 *   eim        the eIM's package-signing certificate (SGP.32 eimSignature,
 *              ECDSA P-256), signed by ca
 * plus push.topic, a text file holding "com.apple.mgmt.External.<uuid>".
 */
ESIM_EXTERN esim_err esim_pki_create(const char *dir, esim_error *err);

/* Convenience: "<dir>/<name>.pem" and "<dir>/<name>.key" loaded (see esim_cert_load). */
ESIM_EXTERN esim_err esim_pki_load(const char *dir, const char *name, esim_cert *out,
                                   esim_error *err);

/* The subject field |nid| (NID_userId, NID_serialNumber, NID_commonName) of
 * |x509| copied into |out|. ESIM_ENOTFOUND when absent. */
ESIM_EXTERN esim_err esim_cert_subject_field(X509 *x509, int nid, char *out, size_t out_len);

/* SHA-256 of the DER certificate, lowercase hex (65 bytes with the NUL). */
ESIM_EXTERN esim_err esim_cert_sha256_hex(X509 *x509, char out[65]);

#ifdef __cplusplus
}
#endif
#endif
