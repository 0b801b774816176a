/*
 * omadm.h — the Windows side of the service, private to service/: the
 * SyncML (OMA-DM 1.2, MS-MDM) parser and writer (omadm_syncml.c), the
 * management endpoint and its sessions (omadm.c), the WNS client (wns.c).
 * The parser is declared here for its fuzz target too. Not installed.
 *
 * Protocol facts and their sources: windows-omadm.md in the design notes;
 * what the endpoint does: docs/service.md, "Windows devices (OMA-DM)".
 */
#ifndef ESIM_SERVICE_OMADM_H
#define ESIM_SERVICE_OMADM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/esim.h"

/* ---- limits -------------------------------------------------------------------- */

#define OMADM_MAX_CMDS 512      /* elements in one SyncBody, Atomic children included */
#define OMADM_MAX_ITEMS 256     /* Items of one command */
#define OMADM_MAX_DEPTH 24      /* XML nesting */
#define OMADM_MAX_ID 128        /* CmdID, CmdRef, MsgRef, SessionID... */
#define OMADM_MAX_URI 1024      /* a LocURI */
#define OMADM_MAX_DEVICE_ID 64  /* SyncHdr Source: the DeviceID, the service's UDID */
#define OMADM_MAX_SESSION_ID 16 /* opaque, echoed back */
#define OMADM_PROVIDER_ID "esim-mdm"
#define OMADM_CHANNEL_URI "./Vendor/MSFT/DMClient/Provider/" OMADM_PROVIDER_ID "/Push/ChannelURI"
#define OMADM_EUICCS "./Device/Vendor/MSFT/eUICCs"

/* ---- a parsed message ------------------------------------------------------------- */

typedef enum {
    OMADM_STATUS,
    OMADM_RESULTS,
    OMADM_ALERT,
    OMADM_ADD,
    OMADM_REPLACE,
    OMADM_GET,
    OMADM_EXEC,
    OMADM_DELETE,
    OMADM_ATOMIC,
    OMADM_SEQUENCE,
    OMADM_OTHER, /* an element the service does not act on (answered 406) */
} omadm_verb;

/* The element name of |v| ("Status", "Add", ...). */
const char *omadm_verb_name(omadm_verb v);

typedef struct {
    char *target; /* Target/LocURI; NULL when absent */
    char *source; /* Source/LocURI; NULL when absent */
    char *format; /* Meta/Format */
    char *type;   /* Meta/Type */
    char *data;   /* Data's text; NULL when absent */
} omadm_item;

typedef struct {
    omadm_verb verb;
    char name[16]; /* the element's local name as sent (OTHER) */
    int parent;    /* index of the enclosing Atomic/Sequence, -1 at the top */
    char *cmd_id;  /* required on every command */
    /* Status and Results. */
    char *msg_ref; /* "1" when a Results has none */
    char *cmd_ref;
    char *cmd;
    /* Status and Alert: Data; Status: its msft:originalerror attribute. */
    char *data;
    char *hresult;
    char *meta_format, *meta_type; /* the command's own Meta */
    omadm_item *items;
    size_t n_items;
    /* Status and Results: the element as XML, for the ledger; NULL for the
     * Status of the SyncHdr (omadm_status_of_hdr), which answers no command. */
    char *raw;
} omadm_cmd;

/* True for the Status of the server's SyncHdr (CmdRef 0, Cmd SyncHdr). */
bool omadm_status_of_hdr(const omadm_cmd *c);

typedef struct {
    char *ver_dtd, *ver_proto;
    char *session_id;
    unsigned long msg_id;
    char *target; /* SyncHdr Target/LocURI: the server URL the client used */
    char *source; /* SyncHdr Source/LocURI: the DeviceID */
    omadm_cmd *cmds;
    size_t n_cmds;
    bool final;
} omadm_msg;

/*
 * Parses one SyncML message (XML; WBXML is refused). Checks what the
 * service relies on: a SyncML root, SyncHdr with VerDTD 1.2, VerProto
 * DM/1.2, a SessionID of at most OMADM_MAX_SESSION_ID printable characters,
 * a MsgID from 1, a Source LocURI (the DeviceID: 1 to 64 of [A-Za-z0-9-]),
 * a SyncBody; every command with a CmdID; a Status with CmdRef, Cmd and a
 * numeric Data; no DTD (entities are never expanded) and no more than the
 * limits above. On success *out is the caller's (omadm_msg_free).
 *   ESIM_EINVAL  malformed, |err| says where;  ESIM_ETOOBIG  over a limit;
 *   ESIM_ENOMEM.
 */
esim_err omadm_parse(const void *body, size_t len, omadm_msg *out, esim_error *err);
void omadm_msg_free(omadm_msg *m); /* NULL ok; leaves it zeroed */

/*
 * Parses the commands a server sends (a SyncBody fragment, as the queue
 * keeps a Windows command): Add, Replace, Get, Exec, Delete and Atomic
 * (of Add, Replace, Delete, Exec; no Get and no Atomic inside an Atomic),
 * each with a CmdID that is |uuid| or starts with "|uuid|.", unique, every
 * Item with a Target LocURI not starting with '/'. |out| gets the commands
 * as omadm_parse gives them (hdr fields empty).
 *   ESIM_EINVAL  |err| says what is wrong;  ESIM_ETOOBIG;  ESIM_ENOMEM.
 */
esim_err omadm_parse_commands(const void *fragment, size_t len, const char *uuid, omadm_msg *out,
                              esim_error *err);

/*
 * Both read a message with the strict reader for plain XML (core/xml_plain.h:
 * what PCs send) and hand anything else, malformed or not, to libxml2; the
 * results are the same either way. For tests and the fuzz targets, the
 * same with the reader chosen: libxml2 alone when |libxml2_only|; *plain
 * (NULL ok) says whether the strict reader read the bytes (then libxml2 did
 * not).
 */
esim_err omadm_parse_as(bool libxml2_only, bool *plain, const void *body, size_t len,
                        omadm_msg *out, esim_error *err);
esim_err omadm_parse_commands_as(bool libxml2_only, bool *plain, const void *fragment, size_t len,
                                 const char *uuid, omadm_msg *out, esim_error *err);
/* A link-time seam for tests: shown the bytes of every message
 * omadm_parse reads (|uuid| NULL) and every fragment omadm_parse_commands
 * reads (|uuid| its UUID, "" for none), before they are read, on the
 * thread that reads them. The library's own definition is weak and does
 * nothing; a program that defines it (the service tests' harness, which
 * reads each both ways) replaces it. No state, nothing to set. */
void omadm_parse_observe(const void *body, size_t len, const char *uuid);

/* Appends |s| to |b| with &, <, >, " and ' escaped. */
esim_err omadm_xml_escape(esim_buf *b, const char *s);

/* The status |code| read from a Status's Data ("200"); 0 when it is not a
 * SyncML status code (three digits, 100 to 599). */
int omadm_status_code(const char *data);

#endif
