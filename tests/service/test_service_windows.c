/*
 * test_service_windows.c — the Windows endpoint (POST
 * /ManagementServer/MDM.svc) driven with hand-written SyncML over real TLS
 * with client certificates: the session protocol (package 1, SyncHdr
 * Status first, one Status per command, the service's own Gets, eUICC
 * discovery by Identifier, commands with CmdID = UUID, per-item statuses
 * and HRESULTs kept, session end with Status only), the eSIM operations of
 * the API, and what is refused without changing anything: malformed
 * SyncML (400), WBXML (415), no certificate (401), another device's
 * certificate or an Apple DeviceID (403), MsgID out of order, the session
 * limit; and the webhook events of Windows results. On PostgreSQL: a
 * session waiting on the store holds a pool worker, not the event loop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>

#include <libxml/parser.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>

#include "service/svc_harness.h"

#define EID "89049032000000000000000000000163"
#define ICCID "8988247000001234567"
#define CHANNEL "https://wns.example.test/?token=AwYAAAB1"

static char ca[400], server_cert[400], server_key[400];
static void use_test_pki(void);
static void forget_test_pki(void);

HARNESS_ENV_GROUP_HOOKS(env, use_test_pki, forget_test_pki)

static void use_test_pki(void)
{
    snprintf(ca, sizeof ca, "%s/ca.pem", env.pki);
    snprintf(server_cert, sizeof server_cert, "%s/server.pem", env.pki);
    snprintf(server_key, sizeof server_key, "%s/server.key", env.pki);
    harness_set_api_ca(ca);
}

static void forget_test_pki(void)
{
    harness_set_api_ca(NULL);
}

/* ---- a hand-driven Windows PC -------------------------------------------------------- */

typedef struct {
    char id[65];
    char cert[400], key[400];
    const char *url;
    unsigned msg_id;
    unsigned session;
    CURL *c;
} pc;

static void pc_new(pc *p, const char *id, const char *url)
{
    memset(p, 0, sizeof *p);
    snprintf(p->id, sizeof p->id, "%s", id);
    p->url = url;
    esim_cert dca = {0}, ident = {0};
    esim_error e;
    assert_int_equal(esim_pki_load(env.pki, "device-ca", &dca, &e), ESIM_OK);
    esim_cert_spec spec = {.common_name = id, .key_type = ESIM_KEY_EC_P256, .days = 30};
    assert_int_equal(esim_cert_issue(&spec, &dca, &ident, &e), ESIM_OK);
    snprintf(p->cert, sizeof p->cert, "%s/%s.pem", env.dir, id);
    snprintf(p->key, sizeof p->key, "%s/%s.key", env.dir, id);
    assert_int_equal(esim_cert_save(&ident, p->cert, p->key, NULL), ESIM_OK);
    esim_cert_clear(&dca);
    esim_cert_clear(&ident);
    p->c = curl_easy_init();
}

static void pc_free(pc *p)
{
    curl_easy_cleanup(p->c);
}

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    esim_buf_append(userdata, ptr, size * nmemb);
    return size * nmemb;
}

/* POSTs |body|; |cert| NULL: none. Returns the HTTP status. */
static long post_raw(pc *p, const char *cert, const char *key, const char *content_type,
                     const char *body, esim_buf *reply)
{
    char url[256];
    snprintf(url, sizeof url, "%s/ManagementServer/MDM.svc?mode=Maintenance&Platform=WoA", p->url);
    CURL *c = p->c;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    if (cert) {
        curl_easy_setopt(c, CURLOPT_SSLCERT, cert);
        curl_easy_setopt(c, CURLOPT_SSLKEY, key);
    }
    struct curl_slist *h = NULL;
    char ct[128];
    snprintf(ct, sizeof ct, "Content-Type: %s", content_type);
    h = curl_slist_append(h, ct);
    h = curl_slist_append(h, "User-Agent: MSFT OMA DM Client/1.2.0.1");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    esim_buf sink = {0};
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, reply ? reply : &sink);
    if (reply)
        esim_buf_free(reply);
    CURLcode res = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(h);
    esim_buf_free(&sink);
    if (reply)
        esim_buf_append(reply, "", 1), reply->len--;
    return res == CURLE_OK ? code : -1;
}

/* A message of the current session with |inner| as its SyncBody. */
static char *pc_msg(pc *p, const char *inner)
{
    esim_buf b = {0};
    esim_buf_printf(&b,
                    "<SyncML xmlns=\"SYNCML:SYNCML1.2\"><SyncHdr><VerDTD>1.2</VerDTD>"
                    "<VerProto>DM/1.2</VerProto><SessionID>%u</SessionID><MsgID>%u</MsgID>"
                    "<Target><LocURI>%s/ManagementServer/MDM.svc</LocURI></Target>"
                    "<Source><LocURI>%s</LocURI></Source></SyncHdr><SyncBody>%s<Final/>"
                    "</SyncBody></SyncML>",
                    p->session, p->msg_id, p->url, p->id, inner);
    return (char *)b.data;
}

static long pc_send(pc *p, const char *inner, esim_buf *reply)
{
    char *m = pc_msg(p, inner);
    long code = post_raw(p, p->cert, p->key, "application/vnd.syncml.dm+xml", m, reply);
    free(m);
    return code;
}

/* Package 1 of a new session. */
static long pc_start(pc *p, esim_buf *reply)
{
    p->session++;
    p->msg_id = 1;
    char inner[2048];
    snprintf(inner, sizeof inner,
             "<Alert><CmdID>2</CmdID><Data>1201</Data></Alert>"
             "<Alert><CmdID>3</CmdID><Data>1224</Data><Item><Meta><Type "
             "xmlns=\"syncml:metinf\">com.microsoft/MDM/LoginStatus</Type></Meta>"
             "<Data>user</Data></Item></Alert>"
             "<Replace><CmdID>4</CmdID>"
             "<Item><Source><LocURI>./DevInfo/DevId</LocURI></Source><Data>%s</Data></Item>"
             "<Item><Source><LocURI>./DevInfo/Man</LocURI></Source><Data>Contoso</Data></Item>"
             "<Item><Source><LocURI>./DevInfo/Mod</LocURI></Source><Data>Laptop 7</Data></Item>"
             "<Item><Source><LocURI>./DevInfo/DmV</LocURI></Source><Data>1.3</Data></Item>"
             "<Item><Source><LocURI>./DevInfo/Lang</LocURI></Source><Data>en-US</Data></Item>"
             "</Replace>",
             p->id);
    return pc_send(p, inner, reply);
}

/* ---- reading the service's replies ---------------------------------------------------------- */

typedef struct {
    xmlDocPtr doc;
    xmlXPathContextPtr x;
} reply_doc;

static void rd_open(reply_doc *r, const esim_buf *b)
{
    r->doc = xmlReadMemory((const char *)b->data, (int)b->len, NULL, NULL, XML_PARSE_NONET);
    assert_non_null(r->doc);
    r->x = xmlXPathNewContext(r->doc);
    xmlXPathRegisterNs(r->x, (const xmlChar *)"s", (const xmlChar *)"SYNCML:SYNCML1.2");
}

static void rd_close(reply_doc *r)
{
    xmlXPathFreeContext(r->x);
    xmlFreeDoc(r->doc);
}

static int rd_count(reply_doc *r, const char *xpath)
{
    xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)xpath, r->x);
    assert_non_null(o);
    int n = o->nodesetval ? o->nodesetval->nodeNr : 0;
    xmlXPathFreeObject(o);
    return n;
}

/* The text of the first node of |xpath| ("" when none), copied. */
static void rd_text(reply_doc *r, const char *xpath, char *out, size_t out_len)
{
    xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)xpath, r->x);
    assert_non_null(o);
    out[0] = '\0';
    if (o->nodesetval && o->nodesetval->nodeNr > 0) {
        xmlChar *t = xmlNodeGetContent(o->nodesetval->nodeTab[0]);
        snprintf(out, out_len, "%s", t ? (const char *)t : "");
        xmlFree(t);
    }
    xmlXPathFreeObject(o);
}

/* Commands (not Status) in the reply. */
static int rd_commands(reply_doc *r)
{
    return rd_count(r, "/s:SyncML/s:SyncBody/*[not(self::s:Status) and not(self::s:Final)]");
}

/* ---- fixtures ------------------------------------------------------------------------------- */

static test_service *start(const char *name, unsigned max_messages)
{
    test_service *ts = calloc(1, sizeof *ts);
    esim_service_config cfg;
    char dir[320];
    harness_config(&env, name, &cfg, dir);
    cfg.tls_cert_path = server_cert;
    cfg.tls_key_path = server_key;
    cfg.windows_max_messages = max_messages;
    harness_start(ts, &cfg);
    assert_memory_equal(ts->url, "https://", 8);
    return ts;
}

static void stop(test_service *ts)
{
    harness_stop(ts);
    free(ts);
}

/* A first session: package 1, the ChannelURI and the eUICC node
 * ("slot0", whose Identifier is EID), then the end. */
static void first_session(pc *p)
{
    esim_buf reply = {0};
    assert_int_equal(pc_start(p, &reply), 200);
    reply_doc r;
    rd_open(&r, &reply);
    char t[256];
    /* The SyncHdr Status first, then one Status per command, in order. */
    rd_text(&r, "/s:SyncML/s:SyncBody/*[1]/s:CmdRef", t, sizeof t);
    assert_string_equal(t, "0");
    rd_text(&r, "/s:SyncML/s:SyncBody/*[1]/s:Cmd", t, sizeof t);
    assert_string_equal(t, "SyncHdr");
    rd_text(&r, "/s:SyncML/s:SyncBody/*[1]/s:Data", t, sizeof t);
    assert_string_equal(t, "200");
    rd_text(&r, "/s:SyncML/s:SyncBody/*[2]/s:CmdRef", t, sizeof t);
    assert_string_equal(t, "2");
    rd_text(&r, "/s:SyncML/s:SyncBody/*[4]/s:Cmd", t, sizeof t);
    assert_string_equal(t, "Replace");
    rd_text(&r, "/s:SyncML/s:SyncHdr/s:SessionID", t, sizeof t);
    assert_int_equal(atoi(t), (int)p->session);
    rd_text(&r, "/s:SyncML/s:SyncHdr/s:Target/s:LocURI", t, sizeof t);
    assert_string_equal(t, p->id);
    assert_int_equal(rd_count(&r, "//s:Get"), 2);
    rd_text(&r, "//s:Get[1]/s:Item/s:Target/s:LocURI", t, sizeof t);
    assert_string_equal(t, "./Vendor/MSFT/DMClient/Provider/esim-mdm/Push/ChannelURI");
    assert_int_equal(rd_count(&r, "/s:SyncML/s:SyncBody/s:Final"), 1);
    rd_close(&r);

    p->msg_id++;
    assert_int_equal(
        pc_send(p,
                "<Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd>"
                "<Data>200</Data></Status>"
                "<Status><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>esim-mdm.channel</CmdRef>"
                "<Cmd>Get</Cmd><Data>200</Data></Status>"
                "<Results><CmdID>3</CmdID><MsgRef>1</MsgRef><CmdRef>esim-mdm.channel</CmdRef>"
                "<Item><Source><LocURI>./Vendor/MSFT/DMClient/Provider/esim-mdm/Push/ChannelURI"
                "</LocURI></Source><Data>" CHANNEL "</Data></Item></Results>"
                "<Status><CmdID>4</CmdID><MsgRef>1</MsgRef><CmdRef>esim-mdm.euiccs</CmdRef>"
                "<Cmd>Get</Cmd><Data>200</Data></Status>"
                "<Results><CmdID>5</CmdID><MsgRef>1</MsgRef><CmdRef>esim-mdm.euiccs</CmdRef>"
                "<Item><Source><LocURI>./Device/Vendor/MSFT/eUICCs</LocURI></Source>"
                "<Meta><Format xmlns=\"syncml:metinf\">node</Format></Meta><Data>slot0</Data>"
                "</Item></Results>",
                &reply),
        200);
    rd_open(&r, &reply);
    assert_int_equal(rd_commands(&r), 1);
    rd_text(&r, "//s:Get/s:Item/s:Target/s:LocURI", t, sizeof t);
    assert_string_equal(t, "./Device/Vendor/MSFT/eUICCs/slot0/Identifier");
    char ref[64];
    rd_text(&r, "//s:Get/s:CmdID", ref, sizeof ref);
    rd_close(&r);

    p->msg_id++;
    char inner[1024];
    snprintf(inner, sizeof inner,
             "<Status><CmdID>1</CmdID><MsgRef>2</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd>"
             "<Data>200</Data></Status>"
             "<Status><CmdID>2</CmdID><MsgRef>2</MsgRef><CmdRef>%s</CmdRef><Cmd>Get</Cmd>"
             "<Data>200</Data></Status>"
             "<Results><CmdID>3</CmdID><MsgRef>2</MsgRef><CmdRef>%s</CmdRef><Item><Source>"
             "<LocURI>./Device/Vendor/MSFT/eUICCs/slot0/Identifier</LocURI></Source>"
             "<Data>" EID "</Data></Item></Results>",
             ref, ref);
    assert_int_equal(pc_send(p, inner, &reply), 200);
    rd_open(&r, &reply);
    assert_int_equal(rd_commands(&r), 0);            /* Status only: the session is over */
    assert_int_equal(rd_count(&r, "//s:Status"), 2); /* SyncHdr, Results */
    rd_close(&r);
    esim_buf_free(&reply);
}

/* A later session up to the queued commands: package 1, then the answers
 * to the service's Gets (the eUICC node is known already). */
static void open_session(pc *p, esim_buf *reply)
{
    assert_int_equal(pc_start(p, reply), 200);
    p->msg_id++;
    assert_int_equal(
        pc_send(p,
                "<Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd>"
                "<Data>200</Data></Status>"
                "<Results><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>esim-mdm.channel</CmdRef>"
                "<Item><Source><LocURI>x</LocURI></Source><Data>" CHANNEL "</Data></Item>"
                "</Results>"
                "<Results><CmdID>3</CmdID><MsgRef>1</MsgRef><CmdRef>esim-mdm.euiccs</CmdRef>"
                "<Item><Source><LocURI>./Device/Vendor/MSFT/eUICCs</LocURI></Source>"
                "<Data>slot0</Data></Item></Results>",
                reply),
        200);
}

/* Answers every command of |reply| with 200, and each Get with |get_data|
 * picked by the LocURI's last segment ("State=1,ErrorDetail=0"). */
static void answer_all(pc *p, const esim_buf *reply, const char *get_data, esim_buf *next)
{
    reply_doc r;
    rd_open(&r, reply);
    esim_buf inner = {0};
    esim_buf_printf(&inner,
                    "<Status><CmdID>1</CmdID><MsgRef>%u</MsgRef><CmdRef>0</CmdRef>"
                    "<Cmd>SyncHdr</Cmd><Data>200</Data></Status>",
                    p->msg_id);
    int n = rd_commands(&r);
    for (int i = 1; i <= n; i++) {
        char q[160], id[128], cmd[32], uri[300];
        snprintf(q, sizeof q,
                 "(/s:SyncML/s:SyncBody/*[not(self::s:Status) and not(self::s:Final)])[%d]", i);
        char qq[200];
        snprintf(qq, sizeof qq, "%s/s:CmdID", q);
        rd_text(&r, qq, id, sizeof id);
        snprintf(qq, sizeof qq, "name(%s)", q);
        xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)qq, r.x);
        snprintf(cmd, sizeof cmd, "%s", o && o->stringval ? (const char *)o->stringval : "");
        xmlXPathFreeObject(o);
        snprintf(qq, sizeof qq, "%s/s:Item/s:Target/s:LocURI", q);
        rd_text(&r, qq, uri, sizeof uri);
        esim_buf_printf(&inner,
                        "<Status><CmdID>%d</CmdID><MsgRef>%u</MsgRef><CmdRef>%s</CmdRef>"
                        "<Cmd>%s</Cmd><Data>200</Data></Status>",
                        2 * i, p->msg_id, id, cmd);
        if (strcmp(cmd, "Get") == 0) {
            const char *leaf = strrchr(uri, '/') + 1;
            const char *at = strstr(get_data, leaf);
            char val[32] = "";
            if (at && at[strlen(leaf)] == '=')
                sscanf(at + strlen(leaf) + 1, "%31[^,]", val);
            esim_buf_printf(&inner,
                            "<Results><CmdID>%d</CmdID><MsgRef>%u</MsgRef><CmdRef>%s</CmdRef>"
                            "<Item><Source><LocURI>%s</LocURI></Source><Data>%s</Data></Item>"
                            "</Results>",
                            2 * i + 1, p->msg_id, id, uri, val);
        }
    }
    rd_close(&r);
    p->msg_id++;
    assert_int_equal(pc_send(p, (const char *)inner.data, next), 200);
    esim_buf_free(&inner);
}

static json_t *op_status(const test_service *ts, const char *uuid)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/windows/esim/%s", uuid);
    json_t *j = NULL;
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "GET", path, NULL, NULL, &j), 200);
    return json_array_get(json_object_get(j, "devices"), 0) ? j : (json_decref(j), NULL);
}

static const char *verification(json_t *j, const char *key)
{
    return json_string_value(
        json_object_get(json_array_get(json_object_get(j, "devices"), 0), key));
}

/* ---- tests ------------------------------------------------------------------------------ */

static json_t *api_get(const test_service *ts, const char *path)
{
    json_t *j = NULL;
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "GET", path, NULL, NULL, &j), 200);
    return j;
}

static void test_session_and_commands(void **state)
{
    (void)state;
    test_service *ts = start("win-session", 0);
    pc p;
    pc_new(&p, "1EED4F6BAE0CE745B0D6C9BC5E8F6E3E", ts->url);
    first_session(&p);

    /* Known now, as a Windows device, with its EID and WNS channel. */
    char path[256];
    snprintf(path, sizeof path, "/v1/devices/%s", p.id);
    json_t *d = api_get(ts, path);
    assert_string_equal(json_string_value(json_object_get(d, "platform")), "windows");
    assert_string_equal(json_string_value(json_object_get(d, "eid")), EID);
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "push"), "state")),
                        "valid");
    json_decref(d);

    /* An eSIM profile (validated first), and a raw Get. */
    json_t *reply = NULL;
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "POST", "/v1/windows/esim",
                              "{\"udids\":[\"1EED4F6BAE0CE745B0D6C9BC5E8F6E3E\"],"
                              "\"operation\":\"add_profile\",\"iccid\":\"" ICCID "\","
                              "\"server\":\"smdp.example.com\",\"matching_id\":\"bad\"}",
                              "application/json", &reply),
                     400);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(reply, "error"), "field")),
        "matching_id");
    json_decref(reply);
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "POST", "/v1/windows/esim",
                              "{\"udids\":[\"1EED4F6BAE0CE745B0D6C9BC5E8F6E3E\"],"
                              "\"operation\":\"add_profile\",\"iccid\":\"" ICCID "\","
                              "\"server\":\"smdp.example.com\",\"matching_id\":"
                              "\"0A1B2-C3D4E-5F6A7-B8C9D\",\"push\":false}",
                              "application/json", &reply),
                     201);
    char add_uuid[64];
    snprintf(add_uuid, sizeof add_uuid, "%s",
             json_string_value(json_object_get(
                 json_array_get(json_object_get(reply, "commands"), 0), "command_uuid")));
    json_decref(reply);
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "POST", "/v1/windows/commands",
                              "{\"udids\":[\"1EED4F6BAE0CE745B0D6C9BC5E8F6E3E\"],"
                              "\"uuid\":\"get-1\",\"request_type\":\"Get\",\"syncml\":"
                              "\"<Get><CmdID>get-1</CmdID><Item><Target><LocURI>./DevDetail/SwV"
                              "</LocURI></Target></Item></Get>\"}",
                              "application/json", &reply),
                     201);
    json_decref(reply);
    /* A command whose UUID is "0": the CmdRef of the SyncHdr's Status is
     * its UUID too, and that Status is still no answer to it. */
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "POST", "/v1/windows/commands",
                              "{\"udids\":[\"1EED4F6BAE0CE745B0D6C9BC5E8F6E3E\"],"
                              "\"uuid\":\"0\",\"request_type\":\"Get\",\"push\":false,\"syncml\":"
                              "\"<Get><CmdID>0.1</CmdID><Item><Target><LocURI>./DevDetail/OEM"
                              "</LocURI></Target></Item></Get>\"}",
                              "application/json", &reply),
                     201);
    json_decref(reply);
    /* Not a server command: refused. */
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "POST", "/v1/windows/commands",
                              "{\"udids\":[\"1EED4F6BAE0CE745B0D6C9BC5E8F6E3E\"],"
                              "\"uuid\":\"x-1\",\"syncml\":\"<Get><CmdID>other</CmdID><Item>"
                              "<Target><LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>\"}",
                              "application/json", NULL),
                     400);

    /* Session 2: the commands come once the eUICC node is known. */
    esim_buf buf = {0};
    assert_int_equal(pc_start(&p, &buf), 200);
    p.msg_id++;
    assert_int_equal(
        pc_send(&p,
                "<Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd>"
                "<Data>200</Data></Status>"
                "<Results><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>esim-mdm.channel</CmdRef>"
                "<Item><Source><LocURI>x</LocURI></Source><Data>" CHANNEL "</Data></Item>"
                "</Results>"
                "<Results><CmdID>3</CmdID><MsgRef>1</MsgRef><CmdRef>esim-mdm.euiccs</CmdRef>"
                "<Item><Source><LocURI>./Device/Vendor/MSFT/eUICCs</LocURI></Source>"
                "<Data>slot0</Data></Item></Results>",
                &buf),
        200);
    reply_doc r;
    rd_open(&r, &buf);
    assert_int_equal(rd_commands(&r), 5); /* node, ServerName, MatchingID; the Gets */
    char t[256], q[256];
    snprintf(q, sizeof q, "//s:Add[s:CmdID='%s.1']/s:Item/s:Target/s:LocURI", add_uuid);
    rd_text(&r, q, t, sizeof t);
    /* The node the device named, not the EID the command was written with. */
    assert_string_equal(t, "./Device/Vendor/MSFT/eUICCs/slot0/Profiles/" ICCID);
    rd_close(&r);

    p.msg_id++;
    char inner[2048];
    snprintf(inner, sizeof inner,
             "<Status><CmdID>1</CmdID><MsgRef>2</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd>"
             "<Data>200</Data></Status>"
             "<Status><CmdID>2</CmdID><MsgRef>2</MsgRef><CmdRef>%s.1</CmdRef><Cmd>Add</Cmd>"
             "<Data>200</Data></Status>"
             "<Status><CmdID>3</CmdID><MsgRef>2</MsgRef><CmdRef>%s.2</CmdRef><Cmd>Add</Cmd>"
             "<Data>200</Data></Status>"
             "<Status xmlns:msft=\"http://schemas.microsoft.com/MobileDevice/MDM\"><CmdID>4"
             "</CmdID><MsgRef>2</MsgRef><CmdRef>%s.3</CmdRef><Cmd>Add</Cmd>"
             "<Data msft:originalerror=\"0x86000002\">405</Data></Status>"
             "<Status><CmdID>5</CmdID><MsgRef>2</MsgRef><CmdRef>get-1</CmdRef><Cmd>Get</Cmd>"
             "<Data>200</Data></Status>"
             "<Results><CmdID>6</CmdID><MsgRef>2</MsgRef><CmdRef>get-1</CmdRef><Item><Source>"
             "<LocURI>./DevDetail/SwV</LocURI></Source><Data>10.0.22631.4460</Data></Item>"
             "</Results>"
             "<Status><CmdID>7</CmdID><MsgRef>2</MsgRef><CmdRef>0.1</CmdRef><Cmd>Get</Cmd>"
             "<Data>200</Data></Status>"
             "<Results><CmdID>8</CmdID><MsgRef>2</MsgRef><CmdRef>0.1</CmdRef><Item><Source>"
             "<LocURI>./DevDetail/OEM</LocURI></Source><Data>Contoso</Data></Item>"
             "</Results>",
             add_uuid, add_uuid, add_uuid);
    assert_int_equal(pc_send(&p, inner, &buf), 200);
    rd_open(&r, &buf);
    assert_int_equal(rd_commands(&r), 0);
    rd_close(&r);

    /* Every item's status kept; the command that failed in one item is an error. */
    snprintf(path, sizeof path, "/v1/commands/%s", add_uuid);
    json_t *c = api_get(ts, path);
    json_t *e = json_object_get(json_object_get(c, "devices"), p.id);
    if (!e) /* the devices may come as an array */
        e = json_array_get(json_object_get(c, "devices"), 0);
    assert_string_equal(json_string_value(json_object_get(e, "state")), "error");
    json_t *items = json_object_get(e, "syncml");
    assert_int_equal(json_array_size(items), 3);
    json_t *third = json_array_get(items, 2);
    assert_int_equal(json_integer_value(json_object_get(third, "code")), 405);
    assert_string_equal(json_string_value(json_object_get(third, "hresult")), "0x86000002");
    assert_string_equal(json_string_value(json_object_get(third, "target")),
                        "./Device/Vendor/MSFT/eUICCs/" EID "/Profiles/" ICCID "/MatchingID");
    json_decref(c);
    c = api_get(ts, "/v1/commands/get-1");
    e = json_object_get(json_object_get(c, "devices"), p.id);
    if (!e)
        e = json_array_get(json_object_get(c, "devices"), 0);
    assert_string_equal(json_string_value(json_object_get(e, "state")), "acknowledged");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(e, "syncml"), 0), "data")),
        "10.0.22631.4460");
    json_decref(c);
    c = api_get(ts, "/v1/commands/0");
    e = json_object_get(json_object_get(c, "devices"), p.id);
    if (!e)
        e = json_array_get(json_object_get(c, "devices"), 0);
    assert_string_equal(json_string_value(json_object_get(e, "state")), "acknowledged");
    items = json_object_get(e, "syncml");
    assert_int_equal(json_array_size(items), 1); /* its Get, not the SyncHdr's Status */
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "data")),
                        "Contoso");
    json_decref(c);
    esim_buf_free(&buf);
    pc_free(&p);
    stop(ts);
}

static void test_refused_changes_nothing(void **state)
{
    (void)state;
    test_service *ts = start("win-refused", 2);
    pc p, other;
    pc_new(&p, "AA11BB22CC33DD44EE55FF6600778899", ts->url);
    pc_new(&other, "0123456789ABCDEF0123456789ABCDEF", ts->url);
    esim_buf reply = {0};
    char *m = pc_msg(&p, "<Alert><CmdID>2</CmdID><Data>1201</Data></Alert>");
    /* No client certificate, WBXML, another type. */
    assert_int_equal(post_raw(&p, NULL, NULL, "application/vnd.syncml.dm+xml", m, &reply), 401);
    assert_int_equal(post_raw(&p, p.cert, p.key, "application/vnd.syncml.dm+wbxml", m, &reply),
                     415);
    assert_int_equal(post_raw(&p, p.cert, p.key, "text/xml", m, &reply), 415);
    free(m);
    /* Malformed SyncML: 400, and the device stays unknown. */
    const char *bad[] = {
        "<SyncML><SyncHdr>",
        "<SyncML xmlns=\"SYNCML:SYNCML1.2\"><SyncBody/></SyncML>",
        "<!DOCTYPE x [<!ENTITY a \"aaaa\">]><SyncML><SyncHdr/><SyncBody/></SyncML>",
        "<SyncML><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>1"
        "</SessionID><MsgID>0</MsgID><Source><LocURI>AA11BB22CC33DD44EE55FF6600778899</LocURI>"
        "</Source></SyncHdr><SyncBody/></SyncML>",
        "<SyncML><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>1"
        "</SessionID><MsgID>1</MsgID><Source><LocURI>AA11BB22CC33DD44EE55FF6600778899</LocURI>"
        "</Source></SyncHdr><SyncBody><Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>0"
        "</CmdRef><Cmd>SyncHdr</Cmd><Data>OK</Data></Status></SyncBody></SyncML>",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(post_raw(&p, p.cert, p.key, "application/vnd.syncml+xml", bad[i], &reply),
                         400);
    /* A session must start with Alert 1201/1200. */
    p.session = 7;
    p.msg_id = 1;
    assert_int_equal(pc_send(&p, "<Alert><CmdID>2</CmdID><Data>1224</Data></Alert>", &reply), 400);
    char path[128];
    snprintf(path, sizeof path, "/v1/devices/%s", p.id);
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "GET", path, NULL, NULL, NULL), 404);

    /* Bound at the first session... */
    assert_int_equal(pc_start(&p, &reply), 200);
    /* ...a MsgID out of order is refused, the same one again gets the same answer. */
    esim_buf first = {0};
    esim_buf_append(&first, reply.data, reply.len);
    p.msg_id = 3;
    assert_int_equal(pc_send(&p, "", &reply), 400);
    p.msg_id = 1;
    p.session--;
    assert_int_equal(pc_start(&p, &reply), 200); /* a new session with the same id: fresh */
    esim_buf_free(&first);

    /* Another PC's certificate cannot speak for this DeviceID. */
    json_t *j = NULL;
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "POST", "/v1/windows/commands",
                              "{\"udids\":[\"AA11BB22CC33DD44EE55FF6600778899\"],\"push\":false,"
                              "\"uuid\":\"q-1\",\"syncml\":\"<Get><CmdID>q-1</CmdID><Item><Target>"
                              "<LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>\"}",
                              "application/json", &j),
                     201);
    json_decref(j);
    char *hijack = pc_msg(&p, "<Alert><CmdID>2</CmdID><Data>1201</Data></Alert>");
    assert_int_equal(
        post_raw(&other, other.cert, other.key, "application/vnd.syncml.dm+xml", hijack, &reply),
        403);
    free(hijack);
    char st[32];
    api_entry_state(ts->url, "q-1", p.id, st, NULL, NULL);
    assert_string_equal(st, "queued");

    /* The session limit: 2 messages (the second hands out q-1), then 413;
     * q-1 stays sent, for the next session. */
    assert_int_equal(pc_start(&p, &reply), 200);
    p.msg_id++;
    assert_int_equal(pc_send(&p, "", &reply), 200);
    assert_non_null(strstr((const char *)reply.data, "<CmdID>q-1</CmdID>"));
    p.msg_id++;
    assert_int_equal(pc_send(&p, "", &reply), 413);
    api_entry_state(ts->url, "q-1", p.id, st, NULL, NULL);
    assert_string_equal(st, "sent");
    esim_buf_free(&reply);
    pc_free(&p);
    pc_free(&other);
    stop(ts);
}

/* An Apple device's UDID cannot be claimed by an OMA-DM client. */
static void test_apple_udid_refused(void **state)
{
    (void)state;
    test_service *ts = start("win-apple", 0);
    test_device dev;
    device_new(&dev, &env, "00008110-0000000000000042", ts->url);
    dev.ca_file = ca;
    device_enroll(&dev);
    pc p;
    pc_new(&p, "00008110-0000000000000042", ts->url);
    esim_buf reply = {0};
    assert_int_equal(pc_start(&p, &reply), 403);
    json_t *d = api_get(ts, "/v1/devices/00008110-0000000000000042");
    assert_string_equal(json_string_value(json_object_get(d, "platform")), "apple");
    json_decref(d);
    /* Nor are SyncML commands queued for it: refused, nothing queued. */
    json_t *j = NULL;
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "POST", "/v1/windows/commands",
                              "{\"udids\":[\"00008110-0000000000000042\"],\"push\":false,"
                              "\"uuid\":\"a-1\",\"syncml\":\"<Get><CmdID>a-1</CmdID><Item><Target>"
                              "<LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>\"}",
                              "application/json", &j),
                     400);
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")),
               "is an Apple device"));
    json_decref(j);
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "GET", "/v1/commands/a-1", NULL, NULL, NULL),
                     404);
    esim_buf_free(&reply);
    pc_free(&p);
    device_free(&dev);
    stop(ts);
}

/* A 200 on Add is "accepted": the profile's State is read in later
 * sessions until it is installed or failed with a reason. */
static void test_verification(void **state)
{
    (void)state;
    test_service *ts = calloc(1, sizeof *ts);
    esim_service_config cfg;
    char dir[320];
    harness_config(&env, "win-verify", &cfg, dir);
    cfg.tls_cert_path = server_cert;
    cfg.tls_key_path = server_key;
    cfg.windows_verify_interval_ms = 20;
    harness_start(ts, &cfg);
    pc p;
    pc_new(&p, "5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A", ts->url);
    first_session(&p);
    const char *ops[] = {
        "{\"udids\":[\"5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A\"],\"operation\":\"add_profile\","
        "\"iccid\":\"" ICCID "\",\"server\":\"smdp.example.com\",\"matching_id\":"
        "\"0A1B2-C3D4E-5F6A7-B8C9D\",\"enabled\":true}",
        "{\"udids\":[\"5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A\"],\"operation\":\"reset\"}",
    };
    char uuid[2][64];
    for (int i = 0; i < 2; i++) {
        json_t *j = NULL;
        assert_int_equal(api_call(ts->url, TEST_TOKEN, "POST", "/v1/windows/esim", ops[i],
                                  "application/json", &j),
                         201);
        snprintf(uuid[i], sizeof uuid[i], "%s",
                 json_string_value(json_object_get(
                     json_array_get(json_object_get(j, "commands"), 0), "command_uuid")));
        json_decref(j);
    }
    esim_buf a = {0}, b = {0};
    open_session(&p, &a);
    answer_all(&p, &a, "", &b); /* accepted; the polls wait for the next session */
    reply_doc r;
    rd_open(&r, &b);
    assert_int_equal(rd_commands(&r), 0);
    rd_close(&r);
    json_t *j = op_status(ts, uuid[0]);
    assert_string_equal(verification(j, "verification"), "pending");
    assert_string_equal(verification(j, "state"), "acknowledged");
    json_decref(j);

    /* Next session: installing, the reset still going. */
    open_session(&p, &a);
    rd_open(&r, &a);
    assert_int_equal(rd_commands(&r), 3); /* State, ErrorDetail, Actions/Status */
    rd_close(&r);
    answer_all(&p, &a, "State=1,ErrorDetail=0,Status=1", &b);
    j = op_status(ts, uuid[0]);
    assert_string_equal(verification(j, "verification"), "pending");
    assert_non_null(strstr(verification(j, "detail"), "Installing"));
    json_decref(j);

    /* Then: the operator had not released the profile; the reset is done. */
    open_session(&p, &a);
    answer_all(&p, &a, "State=4,ErrorDetail=12,Status=0x00000000", &b);
    j = op_status(ts, uuid[0]);
    assert_string_equal(verification(j, "verification"), "failed");
    assert_non_null(strstr(verification(j, "detail"), "ProfileNotReleasedByOperator"));
    json_decref(j);
    j = op_status(ts, uuid[1]);
    assert_string_equal(verification(j, "verification"), "done");
    json_decref(j);
    /* Nothing more to poll: the next session ends at once. */
    open_session(&p, &a);
    rd_open(&r, &a);
    assert_int_equal(rd_commands(&r), 0);
    rd_close(&r);
    esim_buf_free(&a);
    esim_buf_free(&b);
    pc_free(&p);
    harness_stop(ts);
    free(ts);
}

/* Windows results reach webhooks as Apple results do: mdm.Connect with an
 * acknowledge_event (the DeviceID as udid, Acknowledged or Error, the
 * command UUID, the request's query as url_params), the raw payload the
 * PC's Status and Results elements with every item's code and HRESULT;
 * every body valid against NanoMDM's event schema. */
static void test_result_webhooks(void **state)
{
    (void)state;
    char bodies[400];
    snprintf(bodies, sizeof bodies, "%s/win-webhooks.jsonl", env.dir);
    hook_receiver rc;
    int port = hook_receiver_start(&rc, bodies);
    char hook[100];
    snprintf(hook, sizeof hook, "http://127.0.0.1:%d/hook", port);
    const char *urls[] = {hook};
    test_service *ts = calloc(1, sizeof *ts);
    esim_service_config cfg;
    char dir[320];
    harness_config(&env, "win-hooks", &cfg, dir);
    cfg.tls_cert_path = server_cert;
    cfg.tls_key_path = server_key;
    cfg.webhook_urls = urls;
    cfg.n_webhook_urls = 1;
    harness_start(ts, &cfg);
    pc p;
    pc_new(&p, "7B7B7B7B7B7B7B7B7B7B7B7B7B7B7B7B", ts->url);
    first_session(&p); /* the service's own Gets: no webhook */
    json_t *reply = NULL;
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "POST", "/v1/windows/commands",
                              "{\"udids\":[\"7B7B7B7B7B7B7B7B7B7B7B7B7B7B7B7B\"],"
                              "\"uuid\":\"wh-get-1\",\"request_type\":\"Get\",\"syncml\":"
                              "\"<Get><CmdID>wh-get-1</CmdID><Item><Target><LocURI>./DevDetail/SwV"
                              "</LocURI></Target></Item></Get>\"}",
                              "application/json", &reply),
                     201);
    json_decref(reply);
    assert_int_equal(api_call(ts->url, TEST_TOKEN, "POST", "/v1/windows/commands",
                              "{\"udids\":[\"7B7B7B7B7B7B7B7B7B7B7B7B7B7B7B7B\"],"
                              "\"uuid\":\"wh-rep-1\",\"request_type\":\"Replace\",\"syncml\":"
                              "\"<Replace><CmdID>wh-rep-1</CmdID><Item><Target><LocURI>./Device/"
                              "Vendor/MSFT/eUICCs/slot0/Identifier</LocURI></Target><Data>x</Data>"
                              "</Item></Replace>\"}",
                              "application/json", &reply),
                     201);
    json_decref(reply);
    esim_buf buf = {0};
    open_session(&p, &buf);
    reply_doc r;
    rd_open(&r, &buf);
    assert_int_equal(rd_commands(&r), 2);
    rd_close(&r);
    p.msg_id++;
    char inner[2048];
    snprintf(inner, sizeof inner,
             "<Status><CmdID>1</CmdID><MsgRef>%u</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd>"
             "<Data>200</Data></Status>"
             "<Status><CmdID>2</CmdID><MsgRef>%u</MsgRef><CmdRef>wh-get-1</CmdRef><Cmd>Get</Cmd>"
             "<Data>200</Data></Status>"
             "<Results><CmdID>3</CmdID><MsgRef>%u</MsgRef><CmdRef>wh-get-1</CmdRef><Item>"
             "<Source><LocURI>./DevDetail/SwV</LocURI></Source><Data>10.0.22631.4460</Data>"
             "</Item></Results>"
             "<Status xmlns:msft=\"http://schemas.microsoft.com/MobileDevice/MDM\"><CmdID>4"
             "</CmdID><MsgRef>%u</MsgRef><CmdRef>wh-rep-1</CmdRef><Cmd>Replace</Cmd>"
             "<Data msft:originalerror=\"0x86000002\">405</Data></Status>",
             p.msg_id - 1, p.msg_id - 1, p.msg_id - 1, p.msg_id - 1);
    assert_int_equal(pc_send(&p, inner, &buf), 200);
    esim_buf_free(&buf);
    /* Both deliveries, then the bodies. */
    for (int k = 0; k < 200 && rc.requests < 2; k++) {
        struct timespec ts_wait = {0, 20 * 1000000L};
        nanosleep(&ts_wait, NULL);
    }
    hook_receiver_stop(&rc);
    assert_int_equal(rc.requests, 2);
    esim_buf all = {0};
    assert_int_equal(esim_read_file(bodies, 1 << 20, &all, NULL), ESIM_OK);
    esim_buf_append(&all, "", 1);
    int seen = 0;
    for (char *save = NULL, *line = strtok_r((char *)all.data, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        json_t *ev = json_loads(line, 0, NULL);
        assert_non_null(ev);
        assert_string_equal(json_string_value(json_object_get(ev, "topic")), "mdm.Connect");
        json_t *ae = json_object_get(ev, "acknowledge_event");
        assert_string_equal(json_string_value(json_object_get(ae, "udid")), p.id);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(ae, "url_params"), "mode")),
            "Maintenance");
        esim_buf raw = {0};
        const char *b64 = json_string_value(json_object_get(ae, "raw_payload"));
        assert_int_equal(esim_base64_decode(b64, strlen(b64), &raw, NULL), ESIM_OK);
        esim_buf_append(&raw, "", 1);
        const char *uuid = json_string_value(json_object_get(ae, "command_uuid"));
        const char *status = json_string_value(json_object_get(ae, "status"));
        if (strcmp(uuid, "wh-get-1") == 0) {
            assert_string_equal(status, "Acknowledged");
            assert_non_null(strstr((const char *)raw.data, "10.0.22631.4460"));
            seen |= 1;
        } else {
            assert_string_equal(uuid, "wh-rep-1");
            assert_string_equal(status, "Error");
            assert_non_null(strstr((const char *)raw.data, ">405</Data>"));
            assert_non_null(strstr((const char *)raw.data, "0x86000002"));
            seen |= 2;
        }
        esim_buf_free(&raw);
        json_decref(ev);
    }
    esim_buf_free(&all);
    assert_int_equal(seen, 3);
    const char *src = getenv("ESIM_SOURCE_DIR");
    assert_non_null(src);
    char cmd[1500];
    snprintf(cmd, sizeof cmd,
             "python3 '%s/tests/service/validate_webhooks.py' "
             "'%s/tests/data/nanomdm-webhook.schema.json' '%s'",
             src, src, bodies);
    assert_int_equal(system(cmd), 0);
    pc_free(&p);
    stop(ts);
}

/* ---- a slow store under a session (PostgreSQL) ------------------------------------------ */

/* A PC's later session (package 1, then the answers to the service's Gets)
 * on a thread of its own: no assertions off the main thread, codes kept. */
typedef struct {
    pc *p;
    long start_code, code;
    atomic_int finished;
    pthread_t thread;
} session_call;

static void *session_main(void *arg)
{
    session_call *c = arg;
    pc *p = c->p;
    esim_buf reply = {0};
    c->start_code = pc_start(p, &reply);
    p->msg_id++;
    c->code = pc_send(p,
                      "<Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr"
                      "</Cmd><Data>200</Data></Status>"
                      "<Results><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>esim-mdm.channel"
                      "</CmdRef><Item><Source><LocURI>x</LocURI></Source><Data>" CHANNEL
                      "</Data></Item></Results>"
                      "<Results><CmdID>3</CmdID><MsgRef>1</MsgRef><CmdRef>esim-mdm.euiccs"
                      "</CmdRef><Item><Source><LocURI>./Device/Vendor/MSFT/eUICCs</LocURI>"
                      "</Source><Data>slot0</Data></Item></Results>",
                      &reply);
    esim_buf_free(&reply);
    atomic_store(&c->finished, 1);
    return NULL;
}

/* A PC whose session waits on the store (its device row locked by another
 * session, as another instance or a long admin transaction may hold it)
 * holds one store pool worker, not the event loop: another PC's whole
 * session and an iPhone's check-in complete meanwhile, and the stuck
 * session completes once the lock is gone. With the OMA-DM sessions on the
 * loop's own connection (ESIM_TEST_STORE_POOL=0, as before they went to
 * the pool) the others wait behind the stuck one: this test fails. */
static void test_slow_session_holds_no_loop(void **state)
{
    (void)state;
    if (!harness_store_is_pgsql())
        skip();
    test_service *ts = calloc(1, sizeof *ts);
    esim_service_config cfg;
    char dir[320], spec[600];
    harness_config(&env, "win-slow", &cfg, dir);
    snprintf(spec, sizeof spec, "%s%%20-cstatement_timeout%%3D8000", cfg.store);
    cfg.store = spec;
    cfg.tls_cert_path = server_cert;
    cfg.tls_key_path = server_key;
    harness_start(ts, &cfg);
    pc slow, fast;
    pc_new(&slow, "5A0E5A0E5A0E5A0E5A0E5A0E5A0E5A01", ts->url);
    pc_new(&fast, "FA57FA57FA57FA57FA57FA57FA57FA01", ts->url);
    first_session(&slow);
    first_session(&fast);
    test_device phone;
    device_new(&phone, &env, "00008110-WINSLOWPHONE01", ts->url);
    phone.ca_file = ca;
    device_enroll(&phone);

    PGconn *locker = harness_pg_connect(spec), *watch = harness_pg_connect(spec);
    harness_pg_exec(locker, "BEGIN");
    harness_pg_exec(locker, "SELECT 1 FROM devices WHERE udid = '5A0E5A0E5A0E5A0E5A0E5A0E5A0E5A01' "
                            "FOR UPDATE");
    session_call stuck = {.p = &slow};
    assert_int_equal(pthread_create(&stuck.thread, NULL, session_main, &stuck), 0);
    /* Until its session's statement waits on that lock. */
    assert_int_equal(harness_pg_await_lock_waits(watch, 1, 300), 1);
    /* Another PC's session and an iPhone get through while it waits. */
    esim_buf reply = {0};
    open_session(&fast, &reply);
    esim_buf_free(&reply);
    assert_int_equal(device_result(&phone, ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_int_equal(atomic_load(&stuck.finished), 0);
    /* The lock goes: the stuck session carries on. */
    harness_pg_exec(locker, "ROLLBACK");
    pthread_join(stuck.thread, NULL);
    assert_int_equal(stuck.start_code, 200);
    assert_int_equal(stuck.code, 200);
    PQfinish(locker);
    PQfinish(watch);
    device_free(&phone);
    pc_free(&slow);
    pc_free(&fast);
    stop(ts);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verification),
        cmocka_unit_test(test_session_and_commands),
        cmocka_unit_test(test_refused_changes_nothing),
        cmocka_unit_test(test_apple_udid_refused),
        cmocka_unit_test(test_result_webhooks),
        cmocka_unit_test(test_slow_session_holds_no_loop),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
