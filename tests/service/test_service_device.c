/*
 * test_service_device.c — the device side of the MDM service over loopback:
 * enrolment, every result status, NotNow redelivery on the next connection,
 * answers for commands never sent, device identity (unsigned, bad signature,
 * foreign CA, another device's certificate, SHA-1 leaf-only), size, plist
 * and rate limits, CheckOut, EID learning and the result hook.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "service/svc_harness.h"
#include "tls_probe.h"

HARNESS_ENV_GROUP(env)

typedef struct {
    test_service ts;
    test_device dev;
    esim_service_config cfg;
} fixture;

static int counter;

static fixture *start(const char *name, esim_service_config *custom)
{
    fixture *f = calloc(1, sizeof *f);
    esim_service_config cfg;
    harness_config(&env, name, &cfg, f->ts.data_dir);
    if (custom) {
        custom->listen = cfg.listen;
        custom->data_dir = cfg.data_dir;
        custom->api_token = cfg.api_token;
        custom->device_ca_path = cfg.device_ca_path;
        custom->store = cfg.store;
        cfg = *custom;
    }
    f->cfg = cfg;
    harness_start(&f->ts, &cfg);
    char udid[65];
    snprintf(udid, sizeof udid, "00008110-%016d", ++counter);
    device_new(&f->dev, &env, udid, f->ts.url);
    return f;
}

static void stop(fixture *f)
{
    device_free(&f->dev);
    harness_stop(&f->ts);
    free(f);
}

static json_t *get_device(fixture *f)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/devices/%s", f->dev.udid);
    json_t *d = NULL;
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &d), 200);
    return d;
}

static size_t queue_len(fixture *f)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/devices/%s/queue", f->dev.udid);
    json_t *q = NULL;
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &q), 200);
    size_t n = json_array_size(json_object_get(q, "queue"));
    json_decref(q);
    return n;
}

/* ---- enrolment ------------------------------------------------------------------ */

static void test_enrolment_makes_device_reachable(void **state)
{
    (void)state;
    fixture *f = start("enrol", NULL);
    device_enroll(&f->dev);
    json_t *d = get_device(f);
    assert_true(json_is_true(json_object_get(d, "enrolled")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "push"), "state")),
                        "valid");
    assert_string_equal(json_string_value(json_object_get(d, "os_version")), "18.1");
    assert_string_equal(json_string_value(json_object_get(d, "serial_number")), "F2LXTEST");
    assert_true(json_is_string(json_object_get(d, "identity_sha256")));
    json_decref(d);
    /* Idle with nothing queued: 200 and an empty body. */
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_null(next.root);
    assert_int_equal(
        api_metric(f->ts.url, "esim_mdm_checkins_total{message_type=\"Authenticate\"}"), 1);
    stop(f);
}

/* ---- results ------------------------------------------------------------------------ */

static void test_acknowledged_round_trip(void **state)
{
    (void)state;
    fixture *f = start("ack", NULL);
    device_enroll(&f->dev);
    char uuid[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "smdp.example.com", uuid);
    char st[32];
    api_entry_state(f->ts.url, uuid, f->dev.udid, st, NULL, NULL);
    assert_string_equal(st, "queued");

    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_non_null(next.root);
    assert_string_equal(next.command_uuid, uuid);
    assert_string_equal(next.request_type, "RefreshCellularPlans");
    plist_t url = plist_dict_get_item(next.command, "eSIMServerURL");
    char *s = NULL;
    plist_get_string_val(url, &s);
    assert_string_equal(s, "https://smdp.example.com");
    free(s);
    esim_cmd_parsed_free(&next);
    int attempts = 0;
    api_entry_state(f->ts.url, uuid, f->dev.udid, st, &attempts, NULL);
    assert_string_equal(st, "sent");
    assert_int_equal(attempts, 1);

    /* As some clients answer: an empty RequestType; matched on CommandUUID. */
    plist_t extra = plist_new_dict();
    plist_dict_set_item(extra, "RequestType", plist_new_string(""));
    assert_int_equal(
        device_result_ex(&f->dev, ESIM_STATUS_ACKNOWLEDGED, uuid, NULL, 0, extra, &next), 200);
    plist_free(extra);
    assert_null(next.root);
    api_entry_state(f->ts.url, uuid, f->dev.udid, st, NULL, NULL);
    assert_string_equal(st, "acknowledged");
    char cpath[200];
    snprintf(cpath, sizeof cpath, "/v1/commands/%s?limit=0", uuid);
    json_t *cr = NULL;
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", cpath, NULL, NULL, &cr), 200);
    assert_int_equal(json_integer_value(json_object_get(cr, "device_count")), 1);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(cr, "counts"), "acknowledged")), 1);
    assert_int_equal(json_object_size(json_object_get(cr, "devices")), 0);
    json_decref(cr);
    /* Never delivered again once acknowledged. */
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_null(next.root);
    assert_int_equal(queue_len(f), 0);
    stop(f);
}

static void test_error_and_format_error_recorded_with_chain(void **state)
{
    (void)state;
    fixture *f = start("errors", NULL);
    device_enroll(&f->dev);
    char a[128], b[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "https://a.example.com", a);
    api_enqueue_refresh(f->ts.url, f->dev.udid, "https://b.example.com", b);
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, a);
    esim_cmd_parsed_free(&next);
    esim_error_chain_entry chain = {.code = 36003,
                                    .domain = "MCMDMErrorDomain",
                                    .localized_description = "The cellular stack is busy"};
    /* Error: recorded, and the reply is already the next command. */
    assert_int_equal(device_result_ex(&f->dev, ESIM_STATUS_ERROR, a, &chain, 1, NULL, &next), 200);
    assert_string_equal(next.command_uuid, b);
    esim_cmd_parsed_free(&next);
    f->dev.binary = true; /* binary plists are as good as XML */
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_COMMAND_FORMAT_ERROR, b, &next), 200);
    f->dev.binary = false;
    assert_null(next.root);

    char path[200];
    snprintf(path, sizeof path, "/v1/commands/%s", a);
    json_t *r = NULL;
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &r), 200);
    json_t *e = json_object_get(json_object_get(r, "devices"), f->dev.udid);
    assert_string_equal(json_string_value(json_object_get(e, "state")), "error");
    json_t *c0 = json_array_get(json_object_get(e, "error_chain"), 0);
    assert_int_equal(json_integer_value(json_object_get(c0, "error_code")), 36003);
    assert_string_equal(json_string_value(json_object_get(c0, "error_domain")), "MCMDMErrorDomain");
    assert_true(json_is_string(json_object_get(e, "result"))); /* the whole raw answer */
    json_decref(r);
    char st[32];
    api_entry_state(f->ts.url, b, f->dev.udid, st, NULL, NULL);
    assert_string_equal(st, "format_error");
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_results_total{status=\"Error\"}"), 1);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_results_total{status=\"CommandFormatError\"}"),
                     1);
    stop(f);
}

/* Text a device sends that is not UTF-8 (an ErrorChain description, a
 * command's answer) is kept with '?' in place of the bad bytes: every JSON
 * answer about the device stays whole, the diagnosis page too. */
static void test_device_text_that_is_not_utf8(void **state)
{
    (void)state;
    fixture *f = start("utf8dev", NULL);
    device_enroll(&f->dev);
    char a[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "https://a.example.com", a);
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, a);
    esim_cmd_parsed_free(&next);
    esim_error_chain_entry chain = {.code = 1,
                                    .domain = "Bad\xff"
                                              "Domain",
                                    .localized_description = "broken \xc3\x28 text \xed\xa0\x80",
                                    .us_english_description = "\xf8\x88\x80\x80\x80"};
    /* XML carries the bytes as they are (the binary writer would convert
     * them to UTF-16 and lose them on the device's side). */
    assert_int_equal(device_result_ex(&f->dev, ESIM_STATUS_ERROR, a, &chain, 1, NULL, &next), 200);
    esim_cmd_parsed_free(&next);

    char path[200];
    snprintf(path, sizeof path, "/v1/commands/%s", a);
    json_t *r = NULL;
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &r), 200);
    json_t *e = json_object_get(json_object_get(r, "devices"), f->dev.udid);
    assert_string_equal(json_string_value(json_object_get(e, "state")), "error");
    json_t *c0 = json_array_get(json_object_get(e, "error_chain"), 0);
    assert_non_null(c0);
    assert_string_equal(json_string_value(json_object_get(c0, "error_domain")), "Bad?Domain");
    assert_string_equal(json_string_value(json_object_get(c0, "localized_description")),
                        "broken ?( text ???");
    json_decref(r);
    snprintf(path, sizeof path, "/v1/devices/%s/queue?all=1", f->dev.udid);
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &r), 200);
    json_decref(r);
    snprintf(path, sizeof path, "/v1/devices/%s/diagnosis", f->dev.udid);
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &r), 200);
    json_decref(r);
    snprintf(path, sizeof path, "/v1/devices/%s/events", f->dev.udid);
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &r), 200);
    json_decref(r);
    stop(f);
}

static void test_not_now_skipped_on_connection_then_redelivered(void **state)
{
    (void)state;
    fixture *f = start("notnow", NULL);
    device_enroll(&f->dev);
    char a[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "smdp.example.com", a);
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, a);
    esim_cmd_parsed_free(&next);
    /* NotNow: kept, counted, not offered again on this connection. */
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_NOT_NOW, a, &next), 200);
    assert_null(next.root);
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_null(next.root);
    char st[32];
    int attempts = 0, not_now = 0;
    api_entry_state(f->ts.url, a, f->dev.udid, st, &attempts, &not_now);
    assert_string_equal(st, "not_now");
    assert_int_equal(not_now, 1);
    json_t *d = get_device(f);
    assert_true(json_is_string(json_object_get(json_object_get(d, "push"), "repush_due_at")));
    json_decref(d);
    /* The next connection gets it again. */
    device_reconnect(&f->dev);
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, a);
    esim_cmd_parsed_free(&next);
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_ACKNOWLEDGED, a, &next), 200);
    api_entry_state(f->ts.url, a, f->dev.udid, st, &attempts, &not_now);
    assert_string_equal(st, "acknowledged");
    assert_int_equal(attempts, 2);
    assert_int_equal(not_now, 1);
    stop(f);
}

static void test_answer_for_command_never_sent_is_an_anomaly(void **state)
{
    (void)state;
    fixture *f = start("anomaly", NULL);
    device_enroll(&f->dev);
    char a[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "smdp.example.com", a);
    /* An answer for a command nobody sent: logged, not applied, and the
     * reply is the next command. */
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_ACKNOWLEDGED,
                                   "11111111-2222-4333-8444-555555555555", &next),
                     200);
    assert_string_equal(next.command_uuid, a);
    esim_cmd_parsed_free(&next);
    /* An answer for a queued command that was sent... then answered twice. */
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_ERROR, a, &next), 200);
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_ACKNOWLEDGED, a, &next), 200);
    char st[32];
    api_entry_state(f->ts.url, a, f->dev.udid, st, NULL, NULL);
    assert_string_equal(st, "error"); /* the stray second answer changed nothing */
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_result_anomalies_total"), 2);
    /* The ledger has both anomalies, each with the body the device sent. */
    char path[200];
    snprintf(path, sizeof path, "/v1/devices/%s/events?limit=1000", f->dev.udid);
    json_t *r = NULL;
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &r), 200);
    size_t i, anomalies = 0, sent = 0;
    json_t *ev;
    json_array_foreach(json_object_get(r, "events"), i, ev)
    {
        const char *kind = json_string_value(json_object_get(ev, "kind"));
        if (strcmp(kind, "anomaly") == 0) {
            anomalies++;
            assert_true(json_is_string(json_object_get(ev, "raw")));
        }
        sent += strcmp(kind, "sent") == 0;
    }
    assert_int_equal(anomalies, 2);
    assert_int_equal(sent, 1);
    json_decref(r);
    stop(f);
}

/* ---- identity ----------------------------------------------------------------------- */

static void test_identity_rules(void **state)
{
    (void)state;
    fixture *f = start("identity", NULL);
    device_enroll(&f->dev);
    char a[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "smdp.example.com", a);
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result(f->dev.udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    /* Unsigned: 401. */
    f->dev.sign = SIGN_NONE;
    assert_int_equal(device_put(&f->dev, idle.data, idle.len, NULL), 401);
    /* Another device's valid certificate: 403, bound identity wins. */
    test_device other;
    device_new(&other, &env, "00008110-OTHERDEVICE0001", f->ts.url);
    assert_int_equal(device_put_signed_by(&f->dev, &other.identity, idle.data, idle.len, NULL),
                     403);
    /* A certificate from a CA the service does not trust: 403. */
    esim_cert rogue = {0};
    esim_cert_spec spec = {.common_name = "rogue", .key_type = ESIM_KEY_RSA2048};
    assert_int_equal(esim_cert_issue(&spec, NULL, &rogue, NULL), ESIM_OK);
    assert_int_equal(device_put_signed_by(&f->dev, &rogue, idle.data, idle.len, NULL), 403);
    esim_cert_clear(&rogue);
    /* A valid signature, but over other bytes than those sent: 401. */
    f->dev.sign = SIGN_SHA256;
    esim_buf other_body = {0};
    assert_int_equal(esim_msg_build_result(other.udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &other_body, NULL),
                     ESIM_OK);
    assert_int_equal(
        device_put_mismatched(&f->dev, other_body.data, other_body.len, idle.data, idle.len), 401);
    esim_buf_free(&other_body);
    /* None of that changed anything: the command is still queued. */
    char st[32];
    api_entry_state(f->ts.url, a, f->dev.udid, st, NULL, NULL);
    assert_string_equal(st, "queued");
    /* An Authenticate for this UDID with another identity: 403. */
    esim_buf auth = {0};
    esim_authenticate_info info = {.udid = f->dev.udid, .topic = f->dev.topic};
    assert_int_equal(esim_msg_build_authenticate(&info, &auth, NULL), ESIM_OK);
    assert_int_equal(device_put_signed_by(&f->dev, &other.identity, auth.data, auth.len, NULL),
                     403);
    esim_buf_free(&auth);
    /* SHA-1 with RSA, leaf only, as older devices sign: accepted. */
    f->dev.sign = SIGN_SHA1;
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, a);
    esim_cmd_parsed_free(&next);
    /* MD5 with the same RSA key: a valid signature, refused for its digest
     * (issue 10 item 10), and the command stays where it was. */
    f->dev.sign = SIGN_MD5;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, NULL), 401);
    f->dev.sign = SIGN_SHA1;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, a);
    esim_cmd_parsed_free(&next);
    assert_true(api_metric(f->ts.url, "esim_mdm_device_refused_total{reason=\"auth\"}") >= 5);
    /* The device's certificate was parsed once and recognised after that. */
    assert_true(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"hit\"}") >= 3);
    device_free(&other);
    esim_buf_free(&idle);
    stop(f);
}

/* One DER TLV at |p| (single-byte tag, definite length): the value's
 * offset and length. */
static void tlv(const unsigned char *p, size_t *hdr, size_t *len)
{
    size_t l = p[1];
    *hdr = 2;
    if (l & 0x80) {
        size_t n = l & 0x7f;
        l = 0;
        for (size_t i = 0; i < n; i++)
            l = l << 8 | p[2 + i];
        *hdr = 2 + n;
    }
    *len = l;
}

/* Every byte of who signed, of the signed attributes (the body's digest,
 * the content type, signingTime) and of the signature value changed in
 * turn, in a signature that verifies as sent: each is refused, none reaches
 * the device's queue. The
 * same holds for the service's own reader of the usual shape (auth.c,
 * counted as "direct") and for CMS_verify, which takes what it does not
 * read. With |kept|, an identity read in place (a second one of its
 * issuer): its messages are checked with its kept key and the verify
 * context kept with it ("key"), the signature value's bytes are changed
 * first and each refused there, nothing parsed (what breaks the shape of
 * the rest goes the ordinary way, which parses the certificate). */
/* |d|'s identity replaced by a P-256 one for its UDID from |issuer|, as
 * newer iPhones have. */
static void give_p256_identity(test_device *d, const esim_cert *issuer)
{
    esim_cert_clear(&d->identity);
    esim_cert_spec spec = {.common_name = d->udid, .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&spec, issuer, &d->identity, NULL), ESIM_OK);
}

static void tamper_every_byte(fixture *f, bool p256, bool kept)
{
    if (p256) { /* a P-256 identity from the device CA */
        esim_cert ca = {0};
        assert_int_equal(esim_pki_load(env.pki, "device-ca", &ca, NULL), ESIM_OK);
        give_p256_identity(&f->dev, &ca);
        esim_cert_clear(&ca);
    }
    static const char key[] = "esim_mdm_identity_cache_total{result=\"key\"}";
    static const char miss[] = "esim_mdm_identity_cache_total{result=\"miss\"}";
    const char *path = kept ? key : "esim_mdm_signature_checks_total{path=\"direct\"}";
    long long misses = api_metric(f->ts.url, miss);
    device_enroll(&f->dev);
    long long direct = api_metric(f->ts.url, path);
    assert_true(direct >= 1); /* the enrolment's messages went that way */
    char a[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "smdp.example.com", a);
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result(f->dev.udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    /* The device's signature over the Idle, sent with another body (401)
     * to have it without the Idle being taken. */
    assert_int_equal(device_put_mismatched(&f->dev, idle.data, idle.len, "x", 1), 401);
    char *sig = strdup(f->dev.last_signature);
    esim_buf der = {0};
    assert_int_equal(esim_base64_decode(sig, strlen(sig), &der, NULL), ESIM_OK);
    /* ContentInfo -> [0] -> SignedData -> its last field, signerInfos ->
     * the one SignerInfo -> past its version. */
    size_t h, l, off;
    tlv(der.data, &h, &l);
    off = h;
    size_t oh, ol;
    tlv(der.data + off, &oh, &ol); /* contentType */
    off += oh + ol;
    tlv(der.data + off, &h, &l); /* [0] */
    off += h;
    tlv(der.data + off, &h, &l); /* SignedData */
    size_t sd_end = off + h + l;
    off += h;
    size_t last = off;
    while (off < sd_end) {
        last = off;
        tlv(der.data + off, &h, &l);
        off += h + l;
    }
    assert_int_equal(der.data[last], 0x31);
    tlv(der.data + last, &h, &l);
    size_t si = last + h;
    assert_int_equal(der.data[si], 0x30);
    tlv(der.data + si, &h, &l);
    size_t si_end = si + h + l;
    /* The signer's name, the signed attributes and the signature value:
     * the version and the two algorithm identifiers are not signed (OpenSSL
     * takes an RSA signature whose rsaEncryption parameters are not NULL;
     * it still verifies over the same bytes). */
    size_t at = si + h, spans[3][2] = {{0}}, n_spans = 0;
    for (int field = 0; at < si_end; field++) {
        tlv(der.data + at, &h, &l);
        if (field == 1 || field == 3 || field == 5) { /* sid, [0] signedAttrs, signature */
            spans[n_spans][0] = at;
            spans[n_spans++][1] = at + h + l;
        }
        at += h + l;
    }
    assert_int_equal(n_spans, 3);
    assert_int_equal(der.data[spans[1][0]], 0xa0);
    assert_int_equal(der.data[spans[2][0]], 0x04);
    size_t refused = 0;
    tlv(der.data + spans[2][0], &h, &l);
    size_t sig_value = spans[2][0] + h;
    for (size_t k = n_spans; k-- > 0;) /* the signature value's bytes first */
        for (size_t i = spans[k][1]; i-- > spans[k][0];) {
            if (kept && i == sig_value - 1) { /* all of them refused the kept way */
                assert_int_equal(api_metric(f->ts.url, miss), misses);
                assert_int_equal(api_metric(f->ts.url, key), direct);
            }
            der.data[i] ^= 0x01;
            esim_buf b64 = {0};
            assert_int_equal(esim_base64_encode(der.data, der.len, &b64), ESIM_OK);
            assert_int_equal(esim_buf_append(&b64, "", 1), ESIM_OK);
            long code = device_put_raw(&f->dev, (const char *)b64.data, idle.data, idle.len, NULL);
            esim_buf_free(&b64);
            der.data[i] ^= 0x01;
            if (code != 401 && code != 403)
                fail_msg("byte %zu of %zu changed: HTTP %ld", i, der.len, code);
            refused++;
        }
    assert_true(refused > 100);
    /* The Idle signed afresh is taken: its command. */
    esim_buf reply = {0};
    f->dev.sign = SIGN_SHA256;
    assert_int_equal(device_put(&f->dev, idle.data, idle.len, &reply), 200);
    assert_non_null(memmem(reply.data, reply.len, a, strlen(a)));
    if (!kept)
        assert_true(api_metric(f->ts.url, path) > direct);
    esim_buf_free(&reply);
    esim_buf_free(&der);
    esim_buf_free(&idle);
    free(sig);
}

static void test_signature_tampered_anywhere(void **state)
{
    (void)state;
    fixture *f = start("tamper-rsa", NULL);
    tamper_every_byte(f, false, false);
    stop(f);
    f = start("tamper-p256", NULL);
    tamper_every_byte(f, true, false);
    stop(f);
    /* A second P-256 identity of the same device CA is read in place and
     * its messages checked with its kept key and the verify context kept
     * with it, made by its first message: every tampered byte is refused,
     * and the context takes each signature on its own digest (SHA-1 after
     * SHA-256, then SHA-256 again; on a device of its own, whose
     * certificate nothing parsed). */
    static const char key[] = "esim_mdm_identity_cache_total{result=\"key\"}";
    f = start("tamper-kept", NULL);
    esim_cert ca = {0};
    assert_int_equal(esim_pki_load(env.pki, "device-ca", &ca, NULL), ESIM_OK);
    test_device first;
    device_new(&first, &env, "00008110-TAMPERFIRST0001", f->ts.url);
    give_p256_identity(&first, &ca);
    device_enroll(&first);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"read\"}"), 0);
    tamper_every_byte(f, true, true);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"read\"}"), 1);
    test_device third;
    device_new(&third, &env, "00008110-TAMPERTHIRD0001", f->ts.url);
    give_p256_identity(&third, &ca);
    esim_cert_clear(&ca);
    /* Its key's table is made by its first message and kept for the rest. */
    static const char tables[] = "esim_mdm_identity_key_tables_total";
    long long made = api_metric(f->ts.url, tables);
    device_enroll(&third);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"read\"}"), 2);
    assert_int_equal(api_metric(f->ts.url, tables), made + 1);
    long long keys = api_metric(f->ts.url, key);
    third.sign = SIGN_SHA1;
    assert_int_equal(device_result(&third, ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_int_equal(api_metric(f->ts.url, key), keys + 1);
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result(third.udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    assert_int_equal(device_put_mismatched(&third, idle.data, idle.len, "x", 1), 401);
    esim_buf_free(&idle);
    third.sign = SIGN_SHA256;
    assert_int_equal(device_result(&third, ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_int_equal(api_metric(f->ts.url, key), keys + 2);
    assert_int_equal(api_metric(f->ts.url, tables), made + 1);
    device_free(&third);
    device_free(&first);
    stop(f);
}

/* A fresh identity from the device CA, as SCEP issues one after a wipe. */
static void issue_identity(const char *udid, esim_cert *out)
{
    esim_cert ca = {0};
    assert_int_equal(esim_pki_load(env.pki, "device-ca", &ca, NULL), ESIM_OK);
    esim_cert_spec spec = {.common_name = udid, .key_type = ESIM_KEY_RSA2048};
    assert_int_equal(esim_cert_issue(&spec, &ca, out, NULL), ESIM_OK);
    esim_cert_clear(&ca);
}

/* The slot of a certificate in the service's identity cache (auth.c). */
static unsigned cache_slot(X509 *x)
{
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    assert_true(len > 0);
    unsigned char sha[SHA256_DIGEST_LENGTH];
    SHA256(der, (size_t)len, sha);
    OPENSSL_free(der);
    return ((unsigned)sha[0] | (unsigned)sha[1] << 8) % 4096;
}

/* The kept P-256 key tables are in sets of four slots by certificate
 * digest (auth.c kept_key, core/p256_cache.h: the digest's first eight
 * bytes modulo 1024 sets, the same bits as cache_slot's),
 * the least recently used of a set made again for a new key: five devices
 * whose identities share a set keep four tables, and the fifth's takes the
 * one used longest ago, not a table a device still uses. */
static void test_key_tables_least_recently_used(void **state)
{
    (void)state;
    fixture *f = start("key-lru", NULL);
    esim_cert ca = {0};
    assert_int_equal(esim_pki_load(env.pki, "device-ca", &ca, NULL), ESIM_OK);
    /* A first device, so that the next identities of its issuer go the
     * kept-key way from their first message. */
    test_device first;
    device_new(&first, &env, "00008110-KEYSETFIRST0001", f->ts.url);
    give_p256_identity(&first, &ca);
    device_enroll(&first);
    /* P-256 identities until five fall into one set (a few hundred). */
    enum { TRIES = 6000 };
    static esim_cert made[TRIES];
    static char udids[TRIES][32];
    static unsigned set_of[TRIES], count[1024];
    memset(count, 0, sizeof count);
    int n = 0, set = -1;
    for (; n < TRIES && set < 0; n++) {
        snprintf(udids[n], sizeof udids[n], "00008110-KEYSET%09d", n);
        esim_cert_spec sp = {.common_name = udids[n], .key_type = ESIM_KEY_EC_P256};
        assert_int_equal(esim_cert_issue(&sp, &ca, &made[n], NULL), ESIM_OK);
        set_of[n] = cache_slot(made[n].x509) % 1024;
        if (++count[set_of[n]] == 5)
            set = (int)set_of[n];
    }
    assert_true(set >= 0);
    test_device d[5];
    for (int i = 0, k = 0; i < n; i++) {
        if (set_of[i] == (unsigned)set && k < 5) {
            device_new(&d[k], &env, udids[i], f->ts.url);
            esim_cert_clear(&d[k].identity);
            d[k++].identity = made[i];
        } else {
            esim_cert_clear(&made[i]);
        }
    }
    esim_cert_clear(&ca);
    static const char tables[] = "esim_mdm_identity_key_tables_total";
    long long t0 = api_metric(f->ts.url, tables);
    for (int k = 0; k < 4; k++) /* one table each, made by its first message */
        device_enroll(&d[k]);
    assert_int_equal(api_metric(f->ts.url, tables), t0 + 4);
    assert_int_equal(device_result(&d[0], ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_int_equal(api_metric(f->ts.url, tables), t0 + 4); /* d[0] kept */
    device_enroll(&d[4]); /* takes d[1]'s, now the least recently used */
    assert_int_equal(api_metric(f->ts.url, tables), t0 + 5);
    assert_int_equal(device_result(&d[0], ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_int_equal(device_result(&d[2], ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_int_equal(device_result(&d[3], ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_int_equal(device_result(&d[4], ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_int_equal(api_metric(f->ts.url, tables), t0 + 5);
    assert_int_equal(device_result(&d[1], ESIM_STATUS_IDLE, NULL, NULL), 200); /* made again */
    assert_int_equal(api_metric(f->ts.url, tables), t0 + 6);
    for (int k = 0; k < 5; k++)
        device_free(&d[k]);
    device_free(&first);
    stop(f);
}

/* A certificate that falls into |slot|: the same key re-signed with new
 * serial numbers until one does (about 4096 tries). A |padding| comment
 * makes it larger than the device's identity, so that it sorts after it in
 * the signature's certificate SET (DER orders a SET by encoding). */
static X509 *cert_in_slot(const esim_cert *base, unsigned slot, long first_serial, size_t padding)
{
    X509 *x = X509_dup(base->x509);
    assert_non_null(x);
    if (padding) {
        ASN1_IA5STRING *comment = ASN1_IA5STRING_new();
        char *text = malloc(padding);
        assert_non_null(text);
        memset(text, 'p', padding);
        assert_int_equal(ASN1_STRING_set(comment, text, (int)padding), 1);
        assert_int_equal(X509_add1_ext_i2d(x, NID_netscape_comment, comment, 0, 0), 1);
        ASN1_IA5STRING_free(comment);
        free(text);
    }
    for (long serial = first_serial;; serial++) {
        assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), serial), 1);
        assert_true(X509_sign(x, base->key, EVP_sha256()) > 0);
        if (cache_slot(x) == slot)
            return x;
    }
}

/* Regression: two certificates of one Mdm-Signature in the same cache slot.
 * The second lookup freed the first while CMS_verify still used it (anyone
 * could crash the server before authentication), and a device whose CA
 * certificate shared its leaf's slot got 401 on every request. */
static void test_signature_certificates_sharing_a_cache_slot(void **state)
{
    (void)state;
    fixture *f = start("cacheslot", NULL);
    device_enroll(&f->dev);
    esim_cert other = {0};
    esim_cert_spec spec = {.common_name = "slot-mate", .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&spec, NULL, &other, NULL), ESIM_OK);
    unsigned slot = cache_slot(f->dev.identity.x509);
    X509 *mate1 = cert_in_slot(&other, slot, 1, 0);    /* sorts before the identity */
    X509 *mate2 = cert_in_slot(&other, slot, 1, 4000); /* sorts after it */
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result(f->dev.udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    X509 *sets[][2] = {{mate1, NULL}, {mate2, NULL}, {mate1, mate2}, {mate2, mate1}};
    for (int round = 0; round < 2; round++) /* the second round meets a warm cache */
        for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
            f->dev.n_extra_certs = 0;
            for (size_t k = 0; k < 2 && sets[i][k]; k++)
                f->dev.extra_certs[f->dev.n_extra_certs++] = sets[i][k];
            assert_int_equal(device_put(&f->dev, idle.data, idle.len, NULL), 200);
        }
    f->dev.n_extra_certs = 0;
    assert_int_equal(device_put(&f->dev, idle.data, idle.len, NULL), 200);
    esim_buf_free(&idle);
    X509_free(mate1);
    X509_free(mate2);
    esim_cert_clear(&other);
    stop(f);
}

/* |n| test devices at |url|, UDIDs |udids|, each with a P-256 identity
 * that intermediate |sub| issued and sends along (d[i].extra_certs[0]; set
 * n_extra_certs to 0 before device_free). */
static void devices_under(test_device *d, const char *const *udids, int n, const esim_cert *sub,
                          const char *url)
{
    for (int i = 0; i < n; i++) {
        device_new(&d[i], &env, udids[i], url);
        give_p256_identity(&d[i], sub);
        d[i].extra_certs[0] = sub->x509;
        d[i].n_extra_certs = 1;
    }
}

/* Two devices whose identities share a cache slot, taking turns: neither
 * certificate is parsed again nor its chain verified up to the device CA
 * again within 5 minutes (a fleet larger than the 4096 slots verified a
 * chain per message before, then parsed the certificate per message): the
 * P-256 key kept with the verified chain checks the signature. A
 * certificate that does not chain is refused every time, however often. */
static void test_chain_verified_once_when_slots_are_shared(void **state)
{
    (void)state;
    fixture *f = start("chainonce", NULL);
    /* Both identities come from an EC intermediate of the device CA (sent
     * along with the leaf), so that finding a certificate for a given slot
     * takes ECDSA signatures, not thousands of RSA ones. */
    esim_cert ca = {0}, sub = {0};
    assert_int_equal(esim_pki_load(env.pki, "device-ca", &ca, NULL), ESIM_OK);
    esim_cert_spec sub_spec = {
        .common_name = "SCEP EC", .is_ca = true, .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&sub_spec, &ca, &sub, NULL), ESIM_OK);
    test_device d[2];
    const char *udids[2] = {"00008110-SLOTMATE000001", "00008110-SLOTMATE000002"};
    devices_under(d, udids, 2, &sub, f->ts.url);
    /* The second identity re-signed (ECDSA: a new encoding each time)
     * until it falls into the first one's slot. */
    unsigned slot = cache_slot(d[0].identity.x509);
    while (cache_slot(d[1].identity.x509) != slot)
        assert_true(X509_sign(d[1].identity.x509, sub.key, EVP_sha256()) > 0);
    device_enroll(&d[0]);
    device_enroll(&d[1]);
    double checks = api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total");
    double misses = api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"miss\"}");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(device_result(&d[0], ESIM_STATUS_IDLE, NULL, NULL), 200);
        assert_int_equal(device_result(&d[1], ESIM_STATUS_IDLE, NULL, NULL), 200);
    }
    /* Nothing parsed again either: the first device's signatures are
     * checked with the key kept beside its verified chain, and the slot
     * stays the second one's (no more taking turns). */
    assert_true(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"miss\"}") == misses);
    assert_true(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"key\"}") >= 3);
    assert_true(api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total") == checks);
    /* That way is as strict: the first device's signature (its slot is the
     * second's now) over another body, and a message of the first device
     * signed with the second one's identity, are refused. */
    esim_buf idle0 = {0};
    assert_int_equal(esim_msg_build_result(d[0].udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle0, NULL),
                     ESIM_OK);
    double keys = api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"key\"}");
    assert_int_equal(device_put_mismatched(&d[0], idle0.data, idle0.len, "x", 1), 401);
    assert_true(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"key\"}") == keys);
    /* (The second identity was read in place, test_identity_read_in_place:
     * its signature verifies with its kept key, and the UDID refuses it.) */
    assert_int_equal(device_put_signed_by(&d[0], &d[1].identity, idle0.data, idle0.len, NULL), 403);
    assert_true(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"miss\"}") == misses);
    esim_buf_free(&idle0);
    /* The same key in a certificate the intermediate did not sign: refused
     * on every message, each one checked. */
    esim_cert forged = {.x509 = X509_dup(d[0].identity.x509), .key = d[0].identity.key};
    assert_non_null(forged.x509);
    assert_true(X509_sign(forged.x509, d[0].identity.key, EVP_sha256()) > 0);
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result(d[0].udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    for (int i = 0; i < 2; i++)
        assert_int_equal(device_put_signed_by(&d[0], &forged, idle.data, idle.len, NULL), 403);
    assert_true(api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total") == checks + 2);
    assert_int_equal(device_result(&d[0], ESIM_STATUS_IDLE, NULL, NULL), 200);
    esim_buf_free(&idle);
    X509_free(forged.x509);
    for (int i = 0; i < 2; i++) {
        d[i].n_extra_certs = 0;
        device_free(&d[i]);
    }
    esim_cert_clear(&sub);
    esim_cert_clear(&ca);
    stop(f);
}

/* A device's first message whose identity was issued by an issuer a
 * verified chain went through before: the certificate read in place and
 * checked against that issuer (esim_mdm_identity_cache_total{result="read"}),
 * not parsed by OpenSSL; as strict as the ordinary path. What that path
 * does not take goes the ordinary way and is refused there: a certificate
 * the issuer did not sign (another key under the same name), one out of
 * its dates, one whose own issuer is not the one sent along. */
static void test_identity_read_in_place(void **state)
{
    (void)state;
    fixture *f = start("readinplace", NULL);
    esim_cert ca = {0}, sub = {0}, twin = {0};
    assert_int_equal(esim_pki_load(env.pki, "device-ca", &ca, NULL), ESIM_OK);
    esim_cert_spec sub_spec = {
        .common_name = "SCEP EC", .is_ca = true, .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&sub_spec, &ca, &sub, NULL), ESIM_OK);
    assert_int_equal(esim_cert_issue(&sub_spec, NULL, &twin, NULL), ESIM_OK); /* same name */
    test_device d[3];
    const char *udids[3] = {"00008110-READINPLACE0001", "00008110-READINPLACE0002",
                            "00008110-READINPLACE0003"};
    devices_under(d, udids, 3, &sub, f->ts.url);
    /* The first: OpenSSL parses it and verifies its chain. */
    device_enroll(&d[0]);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"read\"}"), 0);
    long long checks = api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total");
    long long misses = api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"miss\"}");
    /* Refused, each the ordinary way: signed by the twin's key under the
     * same issuer name; expired; the twin sent along as the issuer. */
    esim_cert forged = {.x509 = X509_dup(d[1].identity.x509), .key = d[1].identity.key};
    assert_non_null(forged.x509);
    assert_true(X509_sign(forged.x509, twin.key, EVP_sha256()) > 0);
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result(d[1].udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    assert_int_equal(device_put_signed_by(&d[1], &forged, idle.data, idle.len, NULL), 403);
    esim_cert expired = {.x509 = X509_dup(d[2].identity.x509), .key = d[2].identity.key};
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(expired.x509), -10 * 86400L));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(expired.x509), -86400L));
    assert_true(X509_sign(expired.x509, sub.key, EVP_sha256()) > 0);
    assert_int_equal(device_put_signed_by(&d[2], &expired, idle.data, idle.len, NULL), 403);
    esim_cert other = {0};
    esim_cert_spec other_spec = {.common_name = udids[1], .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&other_spec, &sub, &other, NULL), ESIM_OK);
    d[1].extra_certs[0] = twin.x509;
    assert_int_equal(device_put_signed_by(&d[1], &other, idle.data, idle.len, NULL), 403);
    d[1].extra_certs[0] = sub.x509;
    esim_cert_clear(&other);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"read\"}"), 0);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total"), checks + 3);
    /* The next two identities of that issuer: read in place, one chain
     * check each, nothing parsed, and their later messages checked with
     * their kept keys. A body that is not the one signed: refused. */
    long long keys = api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"key\"}");
    misses = api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"miss\"}");
    for (int i = 1; i < 3; i++) {
        device_enroll(&d[i]);
        assert_int_equal(device_result(&d[i], ESIM_STATUS_IDLE, NULL, NULL), 200);
    }
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"read\"}"), 2);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total"), checks + 5);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"miss\"}"),
                     misses);
    assert_true(api_metric(f->ts.url, "esim_mdm_identity_cache_total{result=\"key\"}") >= keys + 4);
    assert_int_equal(device_put_mismatched(&d[1], idle.data, idle.len, "x", 1), 401);
    /* The identities are bound as the ordinary path binds them. */
    char path[128];
    snprintf(path, sizeof path, "/v1/devices/%s", d[2].udid);
    json_t *dev = NULL;
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &dev), 200);
    char want[65];
    assert_int_equal(esim_cert_sha256_hex(d[2].identity.x509, want), ESIM_OK);
    assert_string_equal(json_string_value(json_object_get(dev, "identity_sha256")), want);
    json_decref(dev);
    esim_buf_free(&idle);
    X509_free(forged.x509);
    X509_free(expired.x509);
    for (int i = 0; i < 3; i++) {
        d[i].n_extra_certs = 0;
        device_free(&d[i]);
    }
    esim_cert_clear(&twin);
    esim_cert_clear(&sub);
    esim_cert_clear(&ca);
    stop(f);
}

/* |x| (issued by |ca|, P-256) with byte |at| of its point's Y changed
 * and signed again by |ca|: a certificate its issuer signed whose point is
 * off the curve, as long as |x| (so that it can stand in its place). */
static esim_buf off_curve_copy(X509 *x, const esim_cert *ca, size_t at)
{
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    assert_true(len > 0);
    unsigned char *point = memmem(der, (size_t)len, "\x03\x42\x00\x04", 4);
    assert_non_null(point);
    point[4 + 32 + at] ^= 0x01;
    size_t h, l;
    tlv(der, &h, &l);
    const unsigned char *tbs = der + h;
    size_t th, tl;
    tlv(tbs, &th, &tl);
    size_t tbs_len = th + tl;
    size_t alg_len, ah;
    tlv(tbs + tbs_len, &ah, &alg_len);
    alg_len += ah;
    esim_buf out = {0};
    for (int tries = 0; tries < 64; tries++) {
        unsigned char sig[512];
        size_t sig_len = sizeof sig;
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        assert_non_null(ctx);
        assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, ca->key), 1);
        assert_int_equal(EVP_DigestSign(ctx, sig, &sig_len, tbs, tbs_len), 1);
        EVP_MD_CTX_free(ctx);
        esim_buf body = {0}, bits = {0};
        assert_int_equal(esim_buf_append(&body, tbs, tbs_len + alg_len), ESIM_OK);
        unsigned char zero = 0;
        assert_int_equal(esim_buf_append(&bits, &zero, 1), ESIM_OK);
        assert_int_equal(esim_buf_append(&bits, sig, sig_len), ESIM_OK);
        unsigned char hdr[4] = {0x03, 0x81, 0, 0};
        size_t hn = 2;
        if (bits.len < 0x80) {
            hdr[1] = (unsigned char)bits.len;
        } else if (bits.len < 0x100) {
            hdr[2] = (unsigned char)bits.len;
            hn = 3;
        } else {
            hdr[1] = 0x82;
            hdr[2] = (unsigned char)(bits.len >> 8);
            hdr[3] = (unsigned char)bits.len;
            hn = 4;
        }
        assert_int_equal(esim_buf_append(&body, hdr, hn), ESIM_OK);
        assert_int_equal(esim_buf_append(&body, bits.data, bits.len), ESIM_OK);
        esim_buf_free(&bits);
        esim_buf_reset(&out);
        unsigned char outer[4] = {0x30, 0x82, (unsigned char)(body.len >> 8),
                                  (unsigned char)body.len};
        assert_int_equal(esim_buf_append(&out, outer, 4), ESIM_OK);
        assert_int_equal(esim_buf_append(&out, body.data, body.len), ESIM_OK);
        esim_buf_free(&body);
        if (out.len == (size_t)len)
            break;
    }
    assert_int_equal(out.len, (size_t)len);
    OPENSSL_free(der);
    return out;
}

/* A P-256 identity whose point is off the curve, in a certificate its
 * issuer did sign, sent in place of a device's own in that device's
 * signature: refused, when the service makes that key from the point
 * (EVP_PKEY_fromdata: no key made from a point before) and when it makes
 * it as a copy of a key made before with the point replaced; nothing
 * counted as checked with a kept key. The device's own certificate goes
 * the copy way and is taken. */
static void test_identity_point_off_the_curve(void **state)
{
    (void)state;
    fixture *f = start("offcurve", NULL);
    static const char key[] = "esim_mdm_identity_cache_total{result=\"key\"}";
    static const char read[] = "esim_mdm_identity_cache_total{result=\"read\"}";
    esim_cert ca = {0};
    assert_int_equal(esim_pki_load(env.pki, "device-ca", &ca, NULL), ESIM_OK);
    test_device d[3];
    const char *udids[3] = {"00008110-OFFCURVE000001", "00008110-OFFCURVE000002",
                            "00008110-OFFCURVE000003"};
    for (int i = 0; i < 3; i++) {
        device_new(&d[i], &env, udids[i], f->ts.url);
        give_p256_identity(&d[i], &ca);
    }
    device_enroll(&d[0]); /* parsed; its issuer kept: the next are read in place */
    unsigned char *good = NULL;
    int good_len = i2d_X509(d[2].identity.x509, &good);
    assert_true(good_len > 0);
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result(d[2].udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    for (int round = 0; round < 2; round++) {
        if (round == 1)
            device_enroll(&d[1]); /* the first key made from a point: the next are copies */
        /* d[2]'s signature over the Idle (made here: nothing of d[2]
         * sent yet), its certificate swapped for one off the curve (each
         * round its own: once parsed, a certificate is not read in place
         * again). */
        esim_buf bad = off_curve_copy(d[2].identity.x509, &ca, 31 - (size_t)round);
        assert_int_equal(bad.len, (size_t)good_len);
        BIO *in = BIO_new_mem_buf(idle.data, (int)idle.len);
        assert_non_null(in);
        CMS_ContentInfo *cms = CMS_sign(d[2].identity.x509, d[2].identity.key, NULL, in,
                                        CMS_DETACHED | CMS_BINARY | CMS_NOSMIMECAP);
        assert_non_null(cms);
        unsigned char *cms_der = NULL;
        int cms_len = i2d_CMS_ContentInfo(cms, &cms_der);
        assert_true(cms_len > 0);
        esim_buf sig = {0};
        assert_int_equal(esim_buf_append(&sig, cms_der, (size_t)cms_len), ESIM_OK);
        OPENSSL_free(cms_der);
        CMS_ContentInfo_free(cms);
        BIO_free(in);
        unsigned char *at = memmem(sig.data, sig.len, good, (size_t)good_len);
        assert_non_null(at);
        memcpy(at, bad.data, bad.len);
        esim_buf b64 = {0};
        assert_int_equal(esim_base64_encode(sig.data, sig.len, &b64), ESIM_OK);
        assert_int_equal(esim_buf_append(&b64, "", 1), ESIM_OK);
        long long keys = api_metric(f->ts.url, key), reads = api_metric(f->ts.url, read);
        for (int i = 0; i < 2; i++) {
            long code = device_put_raw(&d[2], (const char *)b64.data, idle.data, idle.len, NULL);
            assert_true(code == 401 || code == 403);
        }
        /* Read in place and its link to the issuer checked, as far as
         * making its key, which fails (then parsed, and refused again). */
        assert_int_equal(api_metric(f->ts.url, read), reads + 1);
        assert_int_equal(api_metric(f->ts.url, key), keys);
        esim_buf_free(&b64);
        esim_buf_free(&sig);
        esim_buf_free(&bad);
    }
    long long keys = api_metric(f->ts.url, key);
    device_enroll(&d[2]);
    assert_int_equal(device_result(&d[2], ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_true(api_metric(f->ts.url, key) >= keys + 3);
    OPENSSL_free(good);
    esim_buf_free(&idle);
    for (int i = 0; i < 3; i++)
        device_free(&d[i]);
    esim_cert_clear(&ca);
    stop(f);
}

static void test_erase_lets_exactly_one_new_identity_in(void **state)
{
    (void)state;
    fixture *f = start("erase-identity", NULL);
    device_enroll(&f->dev);
    char body[256];
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\"],\"command\":{\"request_type\":\"EraseDevice\","
             "\"preserve_data_plan\":true}}",
             f->dev.udid);
    json_t *r = NULL;
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "POST", "/v1/commands", body, NULL, &r), 200);
    char *uuid = strdup(json_string_value(json_object_get(r, "command_uuid")));
    json_decref(r);
    /* Before the erase reaches the phone, a new identity is still refused. */
    esim_cert other = {0};
    issue_identity(f->dev.udid, &other);
    esim_buf auth = {0};
    esim_authenticate_info info = {.udid = f->dev.udid, .topic = f->dev.topic};
    assert_int_equal(esim_msg_build_authenticate(&info, &auth, NULL), ESIM_OK);
    assert_int_equal(device_put_signed_by(&f->dev, &other, auth.data, auth.len, NULL), 403);
    esim_cert_clear(&other);

    /* The phone takes the erase and wipes without answering (Apple: do not
     * wait for it), then enrols again with a fresh SCEP identity. */
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.request_type, "EraseDevice");
    esim_cmd_parsed_free(&next);
    esim_cert_clear(&f->dev.identity);
    issue_identity(f->dev.udid, &f->dev.identity);
    device_enroll(&f->dev);
    /* The erase is never delivered again: the phone would wipe once more. */
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, "");
    esim_cmd_parsed_free(&next);
    char st[32];
    api_entry_state(f->ts.url, uuid, f->dev.udid, st, NULL, NULL);
    assert_string_equal(st, "sent");
    /* One erase let one identity in: a third one is refused again. */
    issue_identity(f->dev.udid, &other);
    assert_int_equal(device_put_signed_by(&f->dev, &other, auth.data, auth.len, NULL), 403);
    esim_cert_clear(&other);
    esim_buf_free(&auth);
    free(uuid);
    stop(f);
}

/* ---- replays (docs/security.md, "Replays") ----------------------------------------------- */

/* The push token stored for the device of the "replay-checkin" service,
 * read from its store behind its back (a second reader). */
static void stored_token(fixture *f, char out[200])
{
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT push_token FROM devices WHERE udid = '%s'", f->dev.udid);
    harness_store_query(&f->cfg, sql, out, 200);
}

static void token_update(fixture *f, unsigned char seed, esim_buf *body)
{
    unsigned char token[32];
    for (size_t i = 0; i < sizeof token; i++)
        token[i] = (unsigned char)(i * 13 + seed);
    esim_buf_reset(body);
    assert_int_equal(esim_msg_build_token_update(f->dev.udid, f->dev.topic, token, sizeof token,
                                                 "magic-1234", body, NULL),
                     ESIM_OK);
}

static void test_replayed_idle_gets_no_command(void **state)
{
    (void)state;
    fixture *f = start("replay-idle", NULL);
    device_enroll(&f->dev);
    char a[128], b[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "https://a.example.com", a);
    /* The device's Idle, captured on the way. */
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result(f->dev.udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    esim_buf reply = {0};
    assert_int_equal(device_put(&f->dev, idle.data, idle.len, &reply), 200);
    assert_non_null(memmem(reply.data, reply.len, a, strlen(a)));
    char *captured = strdup(f->dev.last_signature);
    /* Played back from elsewhere: answered, but with no command in it, and
     * the next command stays queued for the device. */
    api_enqueue_refresh(f->ts.url, f->dev.udid, "https://b.example.com", b);
    for (int i = 0; i < 3; i++) {
        esim_buf_reset(&reply);
        long code = device_put_raw(&f->dev, captured, idle.data, idle.len, &reply);
        assert_true(code == 200 || code == 403);
        assert_int_equal(reply.len == 0 || code == 403, 1);
    }
    char st[32];
    api_entry_state(f->ts.url, b, f->dev.udid, st, NULL, NULL);
    assert_string_equal(st, "queued"); /* never sent */
    assert_true(api_metric(f->ts.url, "esim_mdm_replay_duplicates_total") >= 1);
    /* A signature made an hour ago, or an hour ahead: refused as stale. */
    f->dev.sign_offset_s = -3600;
    assert_int_equal(device_put(&f->dev, idle.data, idle.len, NULL), 403);
    f->dev.sign_offset_s = 3600;
    assert_int_equal(device_put(&f->dev, idle.data, idle.len, NULL), 403);
    f->dev.sign_offset_s = 0;
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_device_refused_total{reason=\"replay\"}"), 2);
    api_entry_state(f->ts.url, b, f->dev.udid, st, NULL, NULL);
    assert_string_equal(st, "queued");
    /* The device itself, a second later, gets what it is owed. */
    harness_next_second();
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_ACKNOWLEDGED, a, &next), 200);
    assert_string_equal(next.command_uuid, b);
    esim_cmd_parsed_free(&next);
    /* Signatures without a signing time: taken and counted by default. */
    f->dev.no_signing_time = true;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_ACKNOWLEDGED, b, &next), 200);
    f->dev.no_signing_time = false;
    esim_cmd_parsed_free(&next);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_signatures_without_time_total"), 1);
    free(captured);
    esim_buf_free(&reply);
    esim_buf_free(&idle);
    stop(f);
}

static void test_replayed_checkins_change_nothing(void **state)
{
    (void)state;
    fixture *f = start("replay-checkin", NULL);
    /* Authenticate, captured. */
    esim_buf auth = {0};
    esim_authenticate_info info = {
        .udid = f->dev.udid, .topic = f->dev.topic, .serial_number = "F2LXTEST"};
    assert_int_equal(esim_msg_build_authenticate(&info, &auth, NULL), ESIM_OK);
    assert_int_equal(device_put(&f->dev, auth.data, auth.len, NULL), 200);
    char *auth_sig = strdup(f->dev.last_signature);
    /* TokenUpdate 1, captured; a second later TokenUpdate 2. */
    esim_buf tu1 = {0}, tu2 = {0};
    token_update(f, 1, &tu1);
    token_update(f, 2, &tu2);
    assert_int_equal(device_put(&f->dev, tu1.data, tu1.len, NULL), 200);
    char *tu1_sig = strdup(f->dev.last_signature);
    char t1[200], t2[200], now[200];
    stored_token(f, t1);
    harness_next_second();
    assert_int_equal(device_put(&f->dev, tu2.data, tu2.len, NULL), 200);
    stored_token(f, t2);
    assert_string_not_equal(t1, t2);

    /* The old TokenUpdate played back does not revert the token... */
    long code = device_put_raw(&f->dev, tu1_sig, tu1.data, tu1.len, NULL);
    assert_true(code == 200 || code == 403);
    stored_token(f, now);
    assert_string_equal(now, t2);
    /* ...and the Authenticate played back does not wipe it. */
    code = device_put_raw(&f->dev, auth_sig, auth.data, auth.len, NULL);
    assert_true(code == 200 || code == 403);
    stored_token(f, now);
    assert_string_equal(now, t2);
    json_t *d = get_device(f);
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "push"), "state")),
                        "valid");
    json_decref(d);
    /* A fresh Authenticate from the bound identity (the device repeating
     * its enrolment) keeps the token too, until its TokenUpdate comes. */
    harness_next_second();
    assert_int_equal(device_put(&f->dev, auth.data, auth.len, NULL), 200);
    stored_token(f, now);
    assert_string_equal(now, t2);

    /* CheckOut, captured; the device enrols again with the same identity;
     * the old CheckOut played back does not un-enrol it. */
    harness_next_second();
    esim_buf out = {0};
    assert_int_equal(esim_msg_build_checkout(f->dev.udid, f->dev.topic, &out, NULL), ESIM_OK);
    assert_int_equal(device_put(&f->dev, out.data, out.len, NULL), 200);
    char *out_sig = strdup(f->dev.last_signature);
    harness_next_second();
    device_enroll(&f->dev);
    code = device_put_raw(&f->dev, out_sig, out.data, out.len, NULL);
    assert_true(code == 200 || code == 403);
    d = get_device(f);
    assert_true(json_is_true(json_object_get(d, "enrolled")));
    json_decref(d);
    /* Long after, the same captures are plainly stale. */
    f->dev.sign_offset_s = -3600;
    assert_int_equal(device_put(&f->dev, out.data, out.len, NULL), 403);
    f->dev.sign_offset_s = 0;
    d = get_device(f);
    assert_true(json_is_true(json_object_get(d, "enrolled")));
    json_decref(d);
    free(auth_sig);
    free(tu1_sig);
    free(out_sig);
    esim_buf_free(&auth);
    esim_buf_free(&tu1);
    esim_buf_free(&tu2);
    esim_buf_free(&out);
    stop(f);
}

/* ---- identity takeover ------------------------------------------------------------------ */

/* A fresh identity whose notBefore lies |days| in the past. */
static void issue_identity_dated(const char *udid, long days, esim_cert *out)
{
    esim_cert ca = {0};
    assert_int_equal(esim_pki_load(env.pki, "device-ca", &ca, NULL), ESIM_OK);
    esim_cert_spec spec = {.common_name = udid, .key_type = ESIM_KEY_RSA2048};
    assert_int_equal(esim_cert_issue(&spec, &ca, out, NULL), ESIM_OK);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(out->x509), -days * 86400L));
    assert_true(X509_sign(out->x509, ca.key, EVP_sha256()) > 0);
    esim_cert_clear(&ca);
}

static long authenticate_as(fixture *f, const esim_cert *who, const char *udid, const char *serial)
{
    esim_buf auth = {0};
    esim_authenticate_info info = {.udid = udid, .topic = f->dev.topic, .serial_number = serial};
    assert_int_equal(esim_msg_build_authenticate(&info, &auth, NULL), ESIM_OK);
    long code = device_put_signed_by(&f->dev, who, auth.data, auth.len, NULL);
    esim_buf_free(&auth);
    return code;
}

static void test_erased_device_cannot_be_taken_over(void **state)
{
    (void)state;
    fixture *f = start("takeover", NULL);
    device_enroll(&f->dev); /* serial F2LXTEST */
    test_device mallory;
    device_new(&mallory, &env, "00008110-MALLORY00000001", f->ts.url);
    device_enroll(&mallory);
    char body[256];
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\"],\"command\":{\"request_type\":\"EraseDevice\"}}", f->dev.udid);
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "POST", "/v1/commands", body, NULL, NULL),
                     200);
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.request_type, "EraseDevice");
    esim_cmd_parsed_free(&next);

    /* The erase went out. Another enrolled device's identity claims the UDID: no. */
    assert_int_equal(authenticate_as(f, &mallory.identity, f->dev.udid, "F2LXTEST"), 403);
    /* A never-used identity, but the wrong serial number: no. */
    esim_cert fresh = {0};
    issue_identity(f->dev.udid, &fresh);
    assert_int_equal(authenticate_as(f, &fresh, f->dev.udid, "C39XEVIL"), 403);
    assert_int_equal(authenticate_as(f, &fresh, f->dev.udid, NULL), 403);
    esim_cert_clear(&fresh);
    /* An identity issued long before the erase (kept for the occasion): no. */
    esim_cert old = {0};
    issue_identity_dated(f->dev.udid, 3, &old);
    assert_int_equal(authenticate_as(f, &old, f->dev.udid, "F2LXTEST"), 403);
    esim_cert_clear(&old);
    /* The wiped phone, with its fresh SCEP identity and its serial: yes. */
    esim_cert_clear(&f->dev.identity);
    issue_identity(f->dev.udid, &f->dev.identity);
    device_enroll(&f->dev);
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, "");
    esim_cmd_parsed_free(&next);
    device_free(&mallory);
    stop(f);
}

static void test_one_identity_enrols_one_device(void **state)
{
    (void)state;
    fixture *f = start("one-identity", NULL);
    device_enroll(&f->dev);
    /* The same identity for other UDIDs: refused, and nothing created. */
    for (int i = 0; i < 3; i++) {
        char udid[65];
        snprintf(udid, sizeof udid, "00008110-SECONDUDID%06d", i);
        assert_int_equal(authenticate_as(f, &f->dev.identity, udid, "F2LXTEST"), 403);
        char path[128];
        snprintf(path, sizeof path, "/v1/devices/%s", udid);
        assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", path, NULL, NULL, NULL), 404);
    }
    /* Its own UDID still works. */
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    esim_cmd_parsed_free(&next);
    stop(f);
}

/* ---- limits ---------------------------------------------------------------------------- */

static void test_limits_and_malformed_bodies(void **state)
{
    (void)state;
    esim_service_config cfg;
    char dir[320];
    harness_config(&env, "limits-cfg", &cfg, dir);
    cfg.max_body = 64 * 1024;
    cfg.device_rate = 1;
    cfg.device_burst = 6;
    fixture *f = start("limits", &cfg);
    device_enroll(&f->dev); /* 2 requests */
    char a[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "smdp.example.com", a);
    /* Over the body limit: 413 (whatever the signature). */
    size_t big_len = 80 * 1024;
    char *big = malloc(big_len);
    memset(big, 'x', big_len);
    f->dev.sign = SIGN_NONE;
    assert_int_equal(device_put(&f->dev, big, big_len, NULL), 413);
    free(big);
    device_reconnect(&f->dev);
    f->dev.sign = SIGN_SHA256;
    /* Not a plist: 400. */
    const char *junk = "<plist><dict><key>UDID</key>";
    assert_int_equal(device_put(&f->dev, junk, strlen(junk), NULL), 400); /* 3 */
    /* Nested past the depth limit: 400. */
    esim_buf deep = {0};
    esim_buf_append_str(
        &deep, "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>UDID</key><string>");
    esim_buf_append_str(&deep, f->dev.udid);
    esim_buf_append_str(&deep, "</string><key>Status</key><string>Idle</string><key>X</key>");
    for (int i = 0; i < 40; i++)
        esim_buf_append_str(&deep, "<array>");
    for (int i = 0; i < 40; i++)
        esim_buf_append_str(&deep, "</array>");
    esim_buf_append_str(&deep, "</dict></plist>");
    assert_int_equal(device_put(&f->dev, deep.data, deep.len, NULL), 400); /* 4 */
    esim_buf_free(&deep);
    /* Nothing changed. */
    char st[32];
    api_entry_state(f->ts.url, a, f->dev.udid, st, NULL, NULL);
    assert_string_equal(st, "queued");
    /* Rate: the bucket (6, +1/s) runs dry within a burst of requests. */
    long last = 200;
    for (int i = 0; i < 12 && last != 429; i++)
        last = device_result(&f->dev, ESIM_STATUS_IDLE, NULL, NULL);
    assert_int_equal(last, 429);
    assert_true(api_metric(f->ts.url, "esim_mdm_device_refused_total{reason=\"rate\"}") >= 1);
    stop(f);
}

/* ---- CheckOut, EID, hook ------------------------------------------------------------------ */

static void test_checkout_closes_queue(void **state)
{
    (void)state;
    fixture *f = start("checkout", NULL);
    device_enroll(&f->dev);
    char a[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "smdp.example.com", a);
    esim_buf b = {0};
    assert_int_equal(esim_msg_build_checkout(f->dev.udid, f->dev.topic, &b, NULL), ESIM_OK);
    assert_int_equal(device_put(&f->dev, b.data, b.len, NULL), 200);
    esim_buf_free(&b);
    char st[32];
    api_entry_state(f->ts.url, a, f->dev.udid, st, NULL, NULL);
    assert_string_equal(st, "canceled");
    json_t *d = get_device(f);
    assert_true(json_is_false(json_object_get(d, "enrolled")));
    json_decref(d);
    /* A checked-out device gets nothing and cannot be given anything. */
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, NULL), 403);
    char body[256];
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\"],\"command\":{\"request_type\":\"ProfileList\"}}", f->dev.udid);
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "POST", "/v1/commands", body, NULL, NULL),
                     409);
    /* Enrolling again (a new identity is allowed after CheckOut) works. */
    esim_cert_clear(&f->dev.identity);
    issue_identity(f->dev.udid, &f->dev.identity);
    device_enroll(&f->dev);
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "POST", "/v1/commands", body, NULL, NULL),
                     200);
    stop(f);
}

typedef struct {
    int calls;
    char last_status[32];
    char last_uuid[128];
} hook_seen;

static void on_result(esim_service *svc, const esim_service_result *r, void *arg)
{
    (void)svc;
    hook_seen *h = arg;
    h->calls++;
    snprintf(h->last_status, sizeof h->last_status, "%s", r->status);
    snprintf(h->last_uuid, sizeof h->last_uuid, "%s", r->command_uuid);
}

static void test_raw_enqueue_eid_and_result_hook(void **state)
{
    (void)state;
    fixture *f = start("eid", NULL);
    hook_seen seen = {0};
    /* Registered before any request can reach the hook list. */
    assert_int_equal(esim_service_add_result_hook(f->ts.svc, on_result, &seen), ESIM_OK);
    device_enroll(&f->dev);
    const char *q[] = {"ServiceSubscriptions"};
    esim_cmd cmd = {0};
    assert_int_equal(esim_cmd_device_information(q, 1, NULL, &cmd, NULL), ESIM_OK);
    char path[200];
    snprintf(path, sizeof path, "/v1/enqueue/%s?nopush=1", f->dev.udid);
    json_t *r = NULL;
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "PUT", path, (const char *)cmd.body.data,
                              "application/xml", &r),
                     200);
    assert_string_equal(json_string_value(json_object_get(r, "command_uuid")), cmd.command_uuid);
    assert_true(json_is_true(json_object_get(r, "no_push")));
    json_decref(r);

    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.request_type, "DeviceInformation");
    esim_cmd_parsed_free(&next);
    /* QueryResponses.ServiceSubscriptions names the EID. */
    plist_t extra = plist_new_dict();
    plist_t qr = plist_new_dict();
    plist_t subs = plist_new_array();
    plist_t sub = plist_new_dict();
    plist_dict_set_item(sub, "EID", plist_new_string("89882119900000000000000000001654"));
    plist_dict_set_item(sub, "ICCID", plist_new_string("8988211000000000007"));
    plist_dict_set_item(sub, "Slot", plist_new_string("CTSubscriptionSlotOne"));
    plist_array_append_item(subs, sub);
    plist_dict_set_item(qr, "ServiceSubscriptions", subs);
    plist_dict_set_item(extra, "QueryResponses", qr);
    assert_int_equal(device_result_ex(&f->dev, ESIM_STATUS_ACKNOWLEDGED, cmd.command_uuid, NULL, 0,
                                      extra, &next),
                     200);
    plist_free(extra);
    json_t *d = get_device(f);
    assert_string_equal(json_string_value(json_object_get(d, "eid")),
                        "89882119900000000000000000001654");
    json_decref(d);
    /* The hook ran on the service's loop before the reply went out. */
    assert_int_equal(seen.calls, 1);
    assert_string_equal(seen.last_status, "Acknowledged");
    assert_string_equal(seen.last_uuid, cmd.command_uuid);
    esim_cmd_free(&cmd);
    stop(f);
}

/* Devices that hang up before their answer is written: nothing breaks, and
 * the command they never received is still theirs. */
static void test_device_hangs_up_before_the_answer(void **state)
{
    (void)state;
    esim_service_config cfg;
    char dir[320];
    harness_config(&env, "hangup-cfg", &cfg, dir);
    cfg.device_auth = ESIM_DEVICE_AUTH_NONE;
    fixture *f = start("hangup", &cfg);
    f->dev.sign = SIGN_NONE;
    device_enroll(&f->dev);
    char a[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "smdp.example.com", a);
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result(f->dev.udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    int port = esim_service_port(f->ts.svc);
    for (int i = 0; i < 20; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
        char head[256];
        int hl = snprintf(head, sizeof head,
                          "PUT /mdm HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %zu\r\n\r\n",
                          idle.len);
        assert_int_equal(write(fd, head, (size_t)hl), hl);
        assert_int_equal(write(fd, idle.data, idle.len), (ssize_t)idle.len);
        struct linger lg = {1, 0}; /* reset, not a polite close */
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(fd);
    }
    esim_buf_free(&idle);
    /* The service is fine, and the command (sent, unanswered) comes again. */
    assert_int_equal(api_call(f->ts.url, NULL, "GET", "/healthz", NULL, NULL, NULL), 200);
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, a);
    esim_cmd_parsed_free(&next);
    stop(f);
}

/* One HTTP answer read whole from |ssl|: its status. */
static int tls_read_status(SSL *ssl)
{
    static char buf[65536];
    size_t got = 0, want = 0;
    int n;
    buf[0] = '\0';
    while ((!want || got < want) &&
           (n = SSL_read(ssl, buf + got, (int)(sizeof buf - 1 - got))) > 0) {
        got += (size_t)n;
        buf[got] = '\0';
        const char *end = strstr(buf, "\r\n\r\n"), *cl = strstr(buf, "Content-Length:");
        if (end && cl)
            want = (size_t)(end + 4 - buf) + (size_t)atol(cl + 15);
    }
    assert_true(got > 12 && memcmp(buf, "HTTP/1.1 ", 9) == 0);
    return atoi(buf + 9);
}

/* PUT |body| to /mdm on an open TLS connection, kept open: the status. */
static int tls_put_keepalive(SSL *ssl, const esim_buf *body)
{
    char head[256];
    int hl =
        snprintf(head, sizeof head,
                 "PUT /mdm HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %zu\r\n\r\n", body->len);
    assert_int_equal(SSL_write(ssl, head, hl), hl);
    assert_int_equal(SSL_write(ssl, body->data, (int)body->len), (int)body->len);
    return tls_read_status(ssl);
}

/* One TLS connection to |port| with one request (|body| is PUT to /mdm,
 * or GET /healthz when NULL), offering |*sess| when set and keeping the
 * session the server gave in its place; with |cert| it shows that client
 * certificate. The answer's status; *resumed says whether the handshake
 * resumed. */
static int tls_request(int port, const char *ca, const char *cert, const char *key,
                       SSL_SESSION **sess, const esim_buf *body, bool *resumed)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, ca, NULL), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (cert) {
        assert_int_equal(SSL_CTX_use_certificate_chain_file(ctx, cert), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM), 1);
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (*sess)
        SSL_set_session(ssl, *sess);
    assert_int_equal(SSL_connect(ssl), 1);
    *resumed = SSL_session_reused(ssl) == 1;
    char head[256];
    int hl = body ? snprintf(head, sizeof head,
                             "PUT /mdm HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                             "Content-Length: %zu\r\n\r\n",
                             body->len)
                  : snprintf(head, sizeof head,
                             "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: "
                             "close\r\n\r\n");
    assert_int_equal(SSL_write(ssl, head, hl), hl);
    if (body)
        assert_int_equal(SSL_write(ssl, body->data, (int)body->len), (int)body->len);
    /* The whole answer (the tickets come before it), read before the
     * server's close: OpenSSL makes a session not resumable when the
     * connection ends without close_notify. */
    int status = tls_read_status(ssl);
    SSL_SESSION_free(*sess);
    *sess = SSL_get1_session(ssl);
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    return status;
}

/* GET /healthz over TLS (see tls_request): whether the handshake resumed. */
static bool tls_get(int port, const char *ca, const char *cert, const char *key, SSL_SESSION **sess)
{
    bool resumed = false;
    assert_int_equal(tls_request(port, ca, cert, key, sess, NULL, &resumed), 200);
    return resumed;
}

/* The paths an mTLS service's config points at (they outlive it). */
typedef struct {
    char dir[320], cert[400], key[400], ca[400];
} mtls_paths;

/* |cfg| for a service named |name| over TLS with the test PKI's server
 * certificate and key, its devices' identity their TLS client certificate;
 * |p->ca| the CA its clients trust. */
static void mtls_config(const char *name, esim_service_config *cfg, mtls_paths *p)
{
    harness_config(&env, name, cfg, p->dir);
    snprintf(p->cert, sizeof p->cert, "%s/server.pem", env.pki);
    snprintf(p->key, sizeof p->key, "%s/server.key", env.pki);
    snprintf(p->ca, sizeof p->ca, "%s/ca.pem", env.pki);
    cfg->tls_cert_path = p->cert;
    cfg->tls_key_path = p->key;
    cfg->device_auth = ESIM_DEVICE_AUTH_MTLS;
}

/* mTLS: the identity is the TLS client certificate, bound at Authenticate. */
static void test_mtls_identity(void **state)
{
    (void)state;
    esim_service_config cfg;
    mtls_paths paths;
    mtls_config("mtls-cfg", &cfg, &paths);
    const char *ca = paths.ca;
    fixture *f = start("mtls", &cfg);
    assert_memory_equal(f->ts.url, "https://", 8);
    harness_set_api_ca(ca);
    char id_cert[400], id_key[400], other_cert[400], other_key[400];
    snprintf(id_cert, sizeof id_cert, "%s/mtls-dev.pem", env.dir);
    snprintf(id_key, sizeof id_key, "%s/mtls-dev.key", env.dir);
    assert_int_equal(esim_cert_save(&f->dev.identity, id_cert, id_key, NULL), ESIM_OK);
    test_device other;
    device_new(&other, &env, "00008110-MTLSOTHER0000001", f->ts.url);
    snprintf(other_cert, sizeof other_cert, "%s/mtls-other.pem", env.dir);
    snprintf(other_key, sizeof other_key, "%s/mtls-other.key", env.dir);
    assert_int_equal(esim_cert_save(&other.identity, other_cert, other_key, NULL), ESIM_OK);

    f->dev.sign = SIGN_NONE;
    f->dev.ca_file = ca;
    /* No client certificate: 401. */
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result(f->dev.udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    assert_int_equal(device_put(&f->dev, idle.data, idle.len, NULL), 401);
    device_reconnect(&f->dev);
    f->dev.client_cert = id_cert;
    f->dev.client_key = id_key;
    device_enroll(&f->dev);
    char a[128];
    api_enqueue_refresh(f->ts.url, f->dev.udid, "smdp.example.com", a);
    /* Another device's certificate on this UDID: 403, nothing delivered. */
    device_reconnect(&f->dev);
    f->dev.client_cert = other_cert;
    f->dev.client_key = other_key;
    assert_int_equal(device_put(&f->dev, idle.data, idle.len, NULL), 403);
    char st[32];
    api_entry_state(f->ts.url, a, f->dev.udid, st, NULL, NULL);
    assert_string_equal(st, "queued");
    device_reconnect(&f->dev);
    f->dev.client_cert = id_cert;
    f->dev.client_key = id_key;
    esim_cmd_parsed next;
    assert_int_equal(device_result(&f->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, a);
    esim_cmd_parsed_free(&next);
    /* Each certificate's chain was verified once (the device's over four
     * requests on three connections, the other device's once), not per
     * request. A certificate from no trusted CA is refused every time, each
     * one checked. */
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total"), 2);
    char rogue_cert[600], rogue_key[600];
    snprintf(rogue_cert, sizeof rogue_cert, "%s/mtls-rogue.pem", env.dir);
    snprintf(rogue_key, sizeof rogue_key, "%s/mtls-rogue.key", env.dir);
    esim_cert rogue = {0};
    esim_cert_spec rogue_spec = {.common_name = f->dev.udid, .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&rogue_spec, NULL, &rogue, NULL), ESIM_OK);
    assert_int_equal(esim_cert_save(&rogue, rogue_cert, rogue_key, NULL), ESIM_OK);
    esim_cert_clear(&rogue);
    f->dev.client_cert = rogue_cert;
    f->dev.client_key = rogue_key;
    for (int i = 0; i < 2; i++) {
        device_reconnect(&f->dev);
        assert_int_equal(device_put(&f->dev, idle.data, idle.len, NULL), 403);
    }
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total"), 4);

    /* TLS resumption: a client without a certificate (an iPhone signing
     * its messages) resumes its session. */
    int port = atoi(strrchr(f->ts.url, ':') + 1);
    SSL_SESSION *sess = NULL;
    assert_false(tls_get(port, ca, NULL, NULL, &sess));
    assert_true(tls_get(port, ca, NULL, NULL, &sess));
    assert_true(tls_get(port, ca, NULL, NULL, &sess));
    /* A ticket of a session without a certificate resumes, but as no one:
     * a device that offers it (certificate at hand) is not asked for one
     * and gets 401. */
    bool resumed = false;
    assert_int_equal(tls_request(port, ca, id_cert, id_key, &sess, &idle, &resumed), 401);
    assert_true(resumed);
    SSL_SESSION_free(sess);
    sess = NULL;

    /* One with a verified certificate resumes too, and the resumed session
     * is that certificate's identity: this device's Idle gets its answer
     * (the queue is empty now) after the full handshake, on the resumed
     * session, and on the one resumed from that. */
    long long full0 =
        api_metric(f->ts.url, "esim_mdm_tls_client_cert_handshakes_total{kind=\"full\"}");
    long long chains0 = api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total");
    assert_int_equal(tls_request(port, ca, id_cert, id_key, &sess, &idle, &resumed), 200);
    assert_false(resumed);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tls_request(port, ca, id_cert, id_key, &sess, &idle, &resumed), 200);
        assert_true(resumed);
    }
    assert_int_equal(
        api_metric(f->ts.url, "esim_mdm_tls_client_cert_handshakes_total{kind=\"full\"}"),
        full0 + 1);
    assert_true(
        api_metric(f->ts.url, "esim_mdm_tls_client_cert_handshakes_total{kind=\"resumed\"}") >= 2);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total"), chains0);
    SSL_SESSION_free(sess);
    sess = NULL;
    /* The other device's session, resumed, is the other device: its
     * certificate on this UDID is refused as it was in a full handshake. */
    assert_int_equal(tls_request(port, ca, other_cert, other_key, &sess, &idle, &resumed), 403);
    assert_false(resumed);
    assert_int_equal(tls_request(port, ca, other_cert, other_key, &sess, &idle, &resumed), 403);
    assert_true(resumed);
    SSL_SESSION_free(sess);
    sess = NULL;

    /* A resumed session after the device CA is replaced (a reload): the
     * open connection's next request is refused (its identity was verified
     * under the old CA, and the session has no certificate to verify
     * again), and the session does not resume any more: a full handshake,
     * which verifies the chain under the new CA, and 200 again. */
    assert_int_equal(tls_request(port, ca, id_cert, id_key, &sess, &idle, &resumed), 200);
    assert_false(resumed);
    /* The service keeps one session per client that resumes (one ticket
     * per handshake, a TLS 1.3 ticket used once), not one per connection:
     * these resumptions leave the count where it was, but for the metric
     * call's own connection (curl, a full handshake without a ticket to
     * offer). */
    long long kept = api_metric(f->ts.url, "esim_mdm_tls_sessions");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tls_request(port, ca, id_cert, id_key, &sess, &idle, &resumed), 200);
        assert_true(resumed);
    }
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_tls_sessions"), kept + 1);
    {
        SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
        assert_non_null(ctx);
        assert_int_equal(SSL_CTX_load_verify_locations(ctx, ca, NULL), 1);
        assert_int_equal(SSL_CTX_use_certificate_chain_file(ctx, id_cert), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, id_key, SSL_FILETYPE_PEM), 1);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        SSL_set_session(ssl, sess);
        assert_int_equal(SSL_connect(ssl), 1);
        assert_int_equal(SSL_session_reused(ssl), 1);
        assert_int_equal(tls_put_keepalive(ssl, &idle), 200);
        char restart[256];
        esim_error e;
        assert_int_equal(esim_service_reload(f->ts.svc, &cfg, restart, sizeof restart, &e),
                         ESIM_OK);
        assert_int_equal(tls_put_keepalive(ssl, &idle), 403);
        SSL_SESSION_free(sess);
        sess = SSL_get1_session(ssl);
        SSL_shutdown(ssl);
        SSL_free(ssl);
        close(fd);
        SSL_CTX_free(ctx);
    }
    chains0 = api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total");
    assert_int_equal(tls_request(port, ca, id_cert, id_key, &sess, &idle, &resumed), 200);
    assert_false(resumed);
    assert_int_equal(api_metric(f->ts.url, "esim_mdm_identity_chain_checks_total"), chains0 + 1);
    assert_int_equal(tls_request(port, ca, id_cert, id_key, &sess, &idle, &resumed), 200);
    assert_true(resumed);
    SSL_SESSION_free(sess);
    sess = NULL;

    /* A certificate from no trusted CA never gets a ticket: its session is
     * not resumable, and offered anyway it gets a full handshake (and 403). */
    assert_int_equal(tls_request(port, ca, rogue_cert, rogue_key, &sess, &idle, &resumed), 403);
    assert_false(resumed);
    assert_false(SSL_SESSION_is_resumable(sess));
    assert_int_equal(tls_request(port, ca, rogue_cert, rogue_key, &sess, &idle, &resumed), 403);
    assert_false(resumed);
    SSL_SESSION_free(sess);
    sess = NULL;

    /* A device-CA certificate that expires between its full handshake and
     * the resumption: the ticket is refused (a full handshake, in which the
     * chain no longer verifies) and the device gets 403. */
    char short_cert[600], short_key[600];
    snprintf(short_cert, sizeof short_cert, "%s/mtls-short.pem", env.dir);
    snprintf(short_key, sizeof short_key, "%s/mtls-short.key", env.dir);
    esim_cert dca = {0}, brief = {0};
    assert_int_equal(esim_pki_load(env.pki, "device-ca", &dca, NULL), ESIM_OK);
    esim_cert_spec brief_spec = {.common_name = "00008110-MTLSBRIEF0000001",
                                 .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&brief_spec, &dca, &brief, NULL), ESIM_OK);
    /* Valid for 4 more seconds: time for the first handshake on a loaded
     * machine; then the test waits until it has expired. */
    time_t expires = time(NULL) + 4;
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(brief.x509), 4));
    assert_true(X509_sign(brief.x509, dca.key, EVP_sha256()) > 0);
    assert_int_equal(esim_cert_save(&brief, short_cert, short_key, NULL), ESIM_OK);
    esim_cert_clear(&brief);
    esim_cert_clear(&dca);
    assert_false(tls_get(port, ca, short_cert, short_key, &sess));
    assert_true(SSL_SESSION_is_resumable(sess));
    while (time(NULL) <= expires + 1)
        sleep(1);
    assert_int_equal(tls_request(port, ca, short_cert, short_key, &sess, &idle, &resumed), 403);
    assert_false(resumed);
    SSL_SESSION_free(sess);
    esim_buf_free(&idle);

    device_free(&other);
    stop(f);
    harness_set_api_ca(NULL);
}

/* The service's end of the loopback connection whose client end is |fd|
 * (the service runs in this process): its descriptor, or -1. */
static int service_end_of(int fd)
{
    struct sockaddr_in mine, theirs;
    socklen_t ml = sizeof mine, tl = sizeof theirs;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&mine, &ml), 0);
    assert_int_equal(getpeername(fd, (struct sockaddr *)&theirs, &tl), 0);
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int found = -1;
    for (struct dirent *e; found < 0 && (e = readdir(d)) != NULL;) {
        int other = atoi(e->d_name);
        struct sockaddr_in local, peer;
        socklen_t ll = sizeof local, pl = sizeof peer;
        if (other == fd || other == dirfd(d) ||
            getsockname(other, (struct sockaddr *)&local, &ll) != 0 ||
            getpeername(other, (struct sockaddr *)&peer, &pl) != 0 || local.sin_family != AF_INET)
            continue;
        if (local.sin_port == theirs.sin_port && peer.sin_port == mine.sin_port &&
            local.sin_addr.s_addr == theirs.sin_addr.s_addr)
            found = other;
    }
    closedir(d);
    return found;
}

/* |leaf| and (when |chain| is not NULL) |chain| after it in |dir|/|name|.pem
 * with the leaf's key in |name|.key, as a client sends its chain. */
static void save_with_chain(const char *dir, const char *name, const esim_cert *leaf, X509 *chain,
                            char cert[400], char key[400])
{
    snprintf(cert, 400, "%s/%s.pem", dir, name);
    snprintf(key, 400, "%s/%s.key", dir, name);
    assert_int_equal(esim_cert_save(leaf, cert, key, NULL), ESIM_OK);
    if (chain) {
        FILE *fp = fopen(cert, "a");
        assert_non_null(fp);
        assert_int_equal(PEM_write_X509(fp, chain), 1);
        fclose(fp);
    }
}

/* mTLS, an issuer already seen (a P-256 intermediate of the device CA,
 * sent with each identity): the next identities it issued are read in
 * place and linked to it with its kept key instead of X509_verify_cert,
 * one chain check each, as Mdm-Signatures' are (test_identity_read_in_place).
 * Refused the ordinary way, nothing read in place: an identity signed by
 * another key under the issuer's name, an expired one, one sent with that
 * other key's certificate as its issuer. */
static void test_mtls_identity_read_in_place(void **state)
{
    (void)state;
    esim_service_config cfg;
    mtls_paths paths;
    mtls_config("mtls-rip-cfg", &cfg, &paths);
    const char *ca = paths.ca;
    fixture *f = start("mtls-rip", &cfg);
    harness_set_api_ca(ca);
    static const char read[] = "esim_mdm_identity_cache_total{result=\"read\"}";
    static const char checks[] = "esim_mdm_identity_chain_checks_total";
    esim_cert dca = {0}, sub = {0}, twin = {0};
    assert_int_equal(esim_pki_load(env.pki, "device-ca", &dca, NULL), ESIM_OK);
    esim_cert_spec sub_spec = {
        .common_name = "SCEP EC TLS", .is_ca = true, .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&sub_spec, &dca, &sub, NULL), ESIM_OK);
    assert_int_equal(esim_cert_issue(&sub_spec, NULL, &twin, NULL), ESIM_OK); /* same name */
    test_device d[3];
    const char *udids[3] = {"00008110-MTLSREADPLACE001", "00008110-MTLSREADPLACE002",
                            "00008110-MTLSREADPLACE003"};
    devices_under(d, udids, 3, &sub, f->ts.url);
    char certs[3][400], keys[3][400];
    for (int i = 0; i < 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "mtls-rip-%d", i);
        save_with_chain(env.dir, name, &d[i].identity, sub.x509, certs[i], keys[i]);
        d[i].n_extra_certs = 0;
        d[i].sign = SIGN_NONE;
        d[i].ca_file = ca;
        d[i].client_cert = certs[i];
        d[i].client_key = keys[i];
    }
    /* The first: OpenSSL verifies its chain (and keeps the issuer). */
    device_enroll(&d[0]);
    assert_int_equal(api_metric(f->ts.url, read), 0);
    long long c0 = api_metric(f->ts.url, checks);
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result(d[1].udid, ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    char bad_cert[400], bad_key[400];
    /* Signed by the twin's key under the issuer's name. */
    esim_cert forged = {.x509 = X509_dup(d[1].identity.x509), .key = d[1].identity.key};
    assert_non_null(forged.x509);
    assert_true(X509_sign(forged.x509, twin.key, EVP_sha256()) > 0);
    save_with_chain(env.dir, "mtls-rip-forged", &forged, sub.x509, bad_cert, bad_key);
    d[1].client_cert = bad_cert;
    d[1].client_key = bad_key;
    assert_int_equal(device_put(&d[1], idle.data, idle.len, NULL), 403);
    /* Expired. */
    esim_cert expired = {.x509 = X509_dup(d[2].identity.x509), .key = d[2].identity.key};
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(expired.x509), -10 * 86400L));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(expired.x509), -86400L));
    assert_true(X509_sign(expired.x509, sub.key, EVP_sha256()) > 0);
    save_with_chain(env.dir, "mtls-rip-expired", &expired, sub.x509, bad_cert, bad_key);
    device_reconnect(&d[1]);
    assert_int_equal(device_put(&d[1], idle.data, idle.len, NULL), 403);
    /* The twin sent as the issuer of a good identity. */
    save_with_chain(env.dir, "mtls-rip-twin", &d[1].identity, twin.x509, bad_cert, bad_key);
    device_reconnect(&d[1]);
    assert_int_equal(device_put(&d[1], idle.data, idle.len, NULL), 403);
    assert_int_equal(api_metric(f->ts.url, read), 0);
    assert_int_equal(api_metric(f->ts.url, checks), c0 + 3);
    /* The next two: read in place, one check each, enrolled and answered. */
    d[1].client_cert = certs[1];
    d[1].client_key = keys[1];
    for (int i = 1; i < 3; i++) {
        device_reconnect(&d[i]);
        device_enroll(&d[i]);
        assert_int_equal(device_result(&d[i], ESIM_STATUS_IDLE, NULL, NULL), 200);
    }
    assert_int_equal(api_metric(f->ts.url, read), 2);
    assert_int_equal(api_metric(f->ts.url, checks), c0 + 5);
    /* Bound as the ordinary path binds them. */
    char path[128];
    snprintf(path, sizeof path, "/v1/devices/%s", d[2].udid);
    json_t *dev = NULL;
    assert_int_equal(api_call(f->ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &dev), 200);
    char want[65];
    assert_int_equal(esim_cert_sha256_hex(d[2].identity.x509, want), ESIM_OK);
    assert_string_equal(json_string_value(json_object_get(dev, "identity_sha256")), want);
    json_decref(dev);
    esim_buf_free(&idle);
    X509_free(forged.x509);
    X509_free(expired.x509);
    for (int i = 0; i < 3; i++)
        device_free(&d[i]);
    esim_cert_clear(&twin);
    esim_cert_clear(&sub);
    esim_cert_clear(&dca);
    stop(f);
    harness_set_api_ca(NULL);
}

/* Over TLS an answer leaves in several writes (the session ticket, a record
 * for the header, one for the body); with Nagle's algorithm on its socket
 * the service held each write after the first until the client's delayed
 * ACK came, about 40 ms per answer on Linux, and an mtls campaign of 3,000
 * phones took 39.5 s instead of 7 (issue 17). The service's end of every
 * connection has TCP_NODELAY, for a device with a client certificate and
 * for one without, on a full handshake and on a resumed one. */
static void test_tls_answers_not_held_back(void **state)
{
    (void)state;
    esim_service_config cfg;
    mtls_paths paths;
    mtls_config("nodelay-cfg", &cfg, &paths);
    const char *ca = paths.ca;
    char id_cert[400], id_key[400];
    fixture *f = start("nodelay", &cfg);
    snprintf(id_cert, sizeof id_cert, "%s/nodelay-dev.pem", env.dir);
    snprintf(id_key, sizeof id_key, "%s/nodelay-dev.key", env.dir);
    assert_int_equal(esim_cert_save(&f->dev.identity, id_cert, id_key, NULL), ESIM_OK);
    int port = atoi(strrchr(f->ts.url, ':') + 1);
    for (int with_cert = 0; with_cert < 2; with_cert++) {
        SSL_SESSION *sess = NULL;
        for (int round = 0; round < 2; round++) {
            SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
            assert_non_null(ctx);
            assert_int_equal(SSL_CTX_load_verify_locations(ctx, ca, NULL), 1);
            if (with_cert) {
                assert_int_equal(SSL_CTX_use_certificate_chain_file(ctx, id_cert), 1);
                assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, id_key, SSL_FILETYPE_PEM), 1);
            }
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
            SSL *ssl = SSL_new(ctx);
            SSL_set_fd(ssl, fd);
            if (sess)
                SSL_set_session(ssl, sess);
            assert_int_equal(SSL_connect(ssl), 1);
            assert_int_equal(SSL_session_reused(ssl) == 1, round == 1);
            static const char get[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
            assert_int_equal(SSL_write(ssl, get, (int)strlen(get)), (int)strlen(get));
            assert_int_equal(tls_read_status(ssl), 200); /* admitted: the connection is set up */
            int theirs = service_end_of(fd);
            assert_true(theirs >= 0);
            int nodelay = 0;
            socklen_t nl = sizeof nodelay;
            assert_int_equal(getsockopt(theirs, IPPROTO_TCP, TCP_NODELAY, &nodelay, &nl), 0);
            assert_int_not_equal(nodelay, 0);
            SSL_SESSION_free(sess);
            sess = SSL_get1_session(ssl);
            SSL_shutdown(ssl);
            SSL_free(ssl);
            close(fd);
            SSL_CTX_free(ctx);
        }
        SSL_SESSION_free(sess);
    }
    stop(f);
}

/* The service's certificate file with its CA after the certificate (a
 * full chain as some operators give it): a full handshake sends the
 * certificate alone, the root being what clients trust already (it went
 * out with every handshake before: each client parsed it for nothing).
 * One session ticket per handshake, a resumed one included: a TLS 1.3
 * ticket is used once (auth.c), and the device resumes from the newest. */
static void test_tls_chain_without_root(void **state)
{
    (void)state;
    esim_service_config cfg;
    char dir[320], cert[400], key[400], ca[400];
    harness_config(&env, "chain-cfg", &cfg, dir);
    snprintf(cert, sizeof cert, "%s/server-and-ca.pem", env.dir);
    snprintf(key, sizeof key, "%s/server.key", env.pki);
    snprintf(ca, sizeof ca, "%s/ca.pem", env.pki);
    esim_buf both = {0}, part = {0};
    char leaf[400];
    snprintf(leaf, sizeof leaf, "%s/server.pem", env.pki);
    assert_int_equal(esim_read_file(leaf, 1 << 16, &part, NULL), ESIM_OK);
    assert_int_equal(esim_buf_append(&both, part.data, part.len), ESIM_OK);
    esim_buf_free(&part);
    assert_int_equal(esim_read_file(ca, 1 << 16, &part, NULL), ESIM_OK);
    assert_int_equal(esim_buf_append(&both, part.data, part.len), ESIM_OK);
    esim_buf_free(&part);
    assert_int_equal(esim_write_file_atomic(cert, both.data, both.len, 0644, NULL), ESIM_OK);
    esim_buf_free(&both);
    cfg.tls_cert_path = cert;
    cfg.tls_key_path = key;
    cfg.device_auth = ESIM_DEVICE_AUTH_MTLS;
    fixture *f = start("chain", &cfg);
    tls_probe p = {.port = atoi(strrchr(f->ts.url, ':') + 1), .ca = ca};
    tls_probe_run(&p);
    assert_true(p.ok);
    assert_false(p.resumed);
    assert_int_equal(p.certs, 1);
    assert_int_equal(p.tickets, 1);
    assert_non_null(p.sess);
    tls_probe_run(&p);
    assert_true(p.ok);
    assert_true(p.resumed);
    assert_int_equal(p.tickets, 1);
    SSL_SESSION_free(p.sess);
    stop(f);
}

/* An answer over TLS is one record, its header and body together (one
 * write and one segment, not one for each): the service's answer to the
 * probe's GET / has a JSON body. */
static void test_tls_answer_in_one_record(void **state)
{
    (void)state;
    esim_service_config cfg;
    mtls_paths paths;
    mtls_config("onerec-cfg", &cfg, &paths);
    fixture *f = start("onerec", &cfg);
    tls_probe p = {.port = atoi(strrchr(f->ts.url, ':') + 1), .ca = paths.ca, .whole_answer = true};
    tls_probe_run(&p);
    assert_true(p.ok);
    assert_true(p.answer_len > 0);
    assert_int_equal(p.answer_records, 1);
    SSL_SESSION_free(p.sess);
    stop(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enrolment_makes_device_reachable),
        cmocka_unit_test(test_tls_answer_in_one_record),
        cmocka_unit_test(test_acknowledged_round_trip),
        cmocka_unit_test(test_error_and_format_error_recorded_with_chain),
        cmocka_unit_test(test_device_text_that_is_not_utf8),
        cmocka_unit_test(test_not_now_skipped_on_connection_then_redelivered),
        cmocka_unit_test(test_answer_for_command_never_sent_is_an_anomaly),
        cmocka_unit_test(test_identity_rules),
        cmocka_unit_test(test_signature_certificates_sharing_a_cache_slot),
        cmocka_unit_test(test_signature_tampered_anywhere),
        cmocka_unit_test(test_key_tables_least_recently_used),
        cmocka_unit_test(test_chain_verified_once_when_slots_are_shared),
        cmocka_unit_test(test_identity_read_in_place),
        cmocka_unit_test(test_identity_point_off_the_curve),
        cmocka_unit_test(test_erase_lets_exactly_one_new_identity_in),
        cmocka_unit_test(test_replayed_idle_gets_no_command),
        cmocka_unit_test(test_replayed_checkins_change_nothing),
        cmocka_unit_test(test_erased_device_cannot_be_taken_over),
        cmocka_unit_test(test_one_identity_enrols_one_device),
        cmocka_unit_test(test_limits_and_malformed_bodies),
        cmocka_unit_test(test_checkout_closes_queue),
        cmocka_unit_test(test_raw_enqueue_eid_and_result_hook),
        cmocka_unit_test(test_device_hangs_up_before_the_answer),
        cmocka_unit_test(test_mtls_identity),
        cmocka_unit_test(test_mtls_identity_read_in_place),
        cmocka_unit_test(test_tls_answers_not_held_back),
        cmocka_unit_test(test_tls_chain_without_root),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
