/*
 * fuzz_es9.c — the ES9+ JSON of the SM-DP+ simulator (sim/smdp.c), through
 * the real server: it runs in the fuzzing process on a loopback TLS port,
 * and each input becomes one request. The first byte picks the function
 * (initiateAuthentication, authenticateClient, getBoundProfilePackage,
 * handleNotification, cancelSession, and the admin orders endpoints); the
 * rest is the body, where "@TXID@" is replaced by the transaction id of a
 * live session (made by a real initiateAuthentication) and "@DERTXID@" by
 * one of a session in SGP.22's DER form (euiccInfo1 as base64 DER), so
 * inputs reach the session code of both forms and not only the first
 * lookup. A crash, a sanitizer report
 * or a request left without an answer is a finding.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "fuzz_dir.h"
#include "fuzz_http.h"
#include "sim/sim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ADMIN_TOKEN "fuzz-admin-token"

static struct {
    struct event_base *base;
    sim_pki *pki;
    sim_smdp *smdp;
    char dir[64];
    char url[128];
    char txid[128];
    char der_txid[128];
    unsigned long inputs;
} g;

static void teardown(void)
{
    sim_smdp_free(g.smdp);
    sim_pki_free(g.pki);
    event_base_free(g.base);
    fuzz_dir_remove(g.dir);
}

static void open_session(const char *body, char txid[128])
{
    char url[256];
    snprintf(url, sizeof url, "%s/gsma/rsp2/es9plus/initiateAuthentication", g.url);
    esim_buf reply = {0};
    fuzz_http_send("POST", url, "application/json", NULL, (const unsigned char *)body, strlen(body),
                   &reply);
    json_t *j = reply.len ? json_loadb((const char *)reply.data, reply.len, 0, NULL) : NULL;
    const char *tx = json_string_value(json_object_get(j, "transactionId"));
    snprintf(txid, 128, "%s", tx ? tx : "none");
    json_decref(j);
    esim_buf_free(&reply);
}

static void new_session(void)
{
    open_session("{\"euiccChallenge\":\"AAECAwQFBgcICQoLDA0ODw==\","
                 "\"euiccInfo1\":\"vyAA\",\"smdpAddress\":\"127.0.0.1\"}",
                 g.txid);
    /* euiccInfo1 = BF20 09 {82 03 020200, A9 00, AA 00} */
    open_session("{\"euiccChallenge\":\"AAECAwQFBgcICQoLDA0ODw==\","
                 "\"euiccInfo1\":\"vyAJggMCAgCpAKoA\",\"smdpAddress\":\"127.0.0.1\"}",
                 g.der_txid);
}

static void setup(void)
{
    snprintf(g.dir, sizeof g.dir, "/tmp/esim-fuzz-es9-XXXXXX");
    if (!mkdtemp(g.dir))
        abort();
    g.base = event_base_new();
    esim_error err = {{0}};
    char pki_dir[128];
    snprintf(pki_dir, sizeof pki_dir, "%s/pki", g.dir);
    if (!g.base || sim_pki_open(pki_dir, &g.pki, &err) != ESIM_OK) {
        fprintf(stderr, "fuzz_es9: %s\n", err.msg);
        abort();
    }
    sim_smdp_config cfg = {.pki = g.pki, .admin_token = ADMIN_TOKEN};
    char eid[ESIM_EID_LEN + 1] = "89049032000001000000000000000000";
    if (esim_eid_set_check_digits(eid, &err) != ESIM_OK ||
        sim_smdp_new(g.base, &cfg, &g.smdp, &err) != ESIM_OK ||
        sim_smdp_add_order(g.smdp, eid, "8944500102198304826", "MATCH-1", true, &err) != ESIM_OK) {
        fprintf(stderr, "fuzz_es9: %s\n", err.msg);
        abort();
    }
    snprintf(g.url, sizeof g.url, "https://127.0.0.1:%u", (unsigned)sim_smdp_port(g.smdp));
    char ca[160];
    snprintf(ca, sizeof ca, "%s/ca.pem", pki_dir);
    fuzz_http_init(g.base, ca);
    new_session();
    atexit(teardown);
}

static const char *const paths[] = {
    "/gsma/rsp2/es9plus/initiateAuthentication",
    "/gsma/rsp2/es9plus/authenticateClient",
    "/gsma/rsp2/es9plus/getBoundProfilePackage",
    "/gsma/rsp2/es9plus/handleNotification",
    "/gsma/rsp2/es9plus/cancelSession",
    "/admin/orders",
    "/admin/orders/release",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g.smdp)
        setup();
    if (size == 0)
        return 0;
    if (++g.inputs % 1000 == 0)
        new_session();
    size_t p = data[0] % (sizeof paths / sizeof paths[0]);
    esim_buf body = {0};
    const char *s = (const char *)data + 1, *end = (const char *)data + size;
    while (s < end) {
        const char *mark = memmem(s, (size_t)(end - s), "@TXID@", 6);
        const char *der = memmem(s, (size_t)(end - s), "@DERTXID@", 9);
        if (der && (!mark || der < mark)) {
            esim_buf_append(&body, s, (size_t)(der - s));
            esim_buf_append_str(&body, g.der_txid);
            s = der + 9;
            continue;
        }
        if (!mark) {
            esim_buf_append(&body, s, (size_t)(end - s));
            break;
        }
        esim_buf_append(&body, s, (size_t)(mark - s));
        esim_buf_append_str(&body, g.txid);
        s = mark + 6;
    }
    char url[256];
    snprintf(url, sizeof url, "%s%s", g.url, paths[p]);
    esim_buf reply = {0};
    long status =
        fuzz_http_send("POST", url, "application/json", p >= 5 ? ADMIN_TOKEN : NULL,
                       body.data ? body.data : (const unsigned char *)"", body.len, &reply);
    if (status == 0) {
        fprintf(stderr, "fuzz_es9: %s got no answer\n", paths[p]);
        abort();
    }
    esim_buf_free(&reply);
    esim_buf_free(&body);
    return 0;
}
