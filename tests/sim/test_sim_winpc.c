/*
 * test_sim_winpc.c — the simulated Windows PC without a network: package 1,
 * the session rules (SyncHdr Status first, SessionID echoed, MsgID order,
 * the end by a Status-only message, Alert 1222), the eUICCs CSP node tree
 * and its rules (children lists, Default, 405 on read-only nodes, 404,
 * MatchingID pattern, State/ErrorDetail and DiscoveryState lifecycles,
 * Atomic, LocalUIEnabled, ResetToFactoryState) and persistence.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <libxml/parser.h>
#include <libxml/xpath.h>

#include "sim/cert_view.h"
#include "tests/sim/sim_test.h"

/* Test URIs are built in fixed buffers big enough for them. */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#define URL "https://mdm.example.com/ManagementServer/MDM.svc"

typedef struct {
    char *dir;
    sim_pki *pki;
} fixture;

static fixture fx;

static int setup_all(void **state)
{
    (void)state;
    return st_pki_open(&fx.dir, &fx.pki);
}

static int teardown_all(void **state)
{
    (void)state;
    st_pki_close(&fx.dir, &fx.pki);
    xmlCleanupParser();
    return 0;
}

/* ---- helpers ---------------------------------------------------------------- */

typedef struct {
    sim_winpc *pc;
    char eid[ESIM_EID_LEN + 1];
    char sid[16];
    unsigned msg; /* the server's MsgID */
    unsigned cmd; /* CmdIDs the server gave */
    xmlDoc *last; /* the PC's last reply */
    bool done;
    esim_err rc;
} session;

static char *xpath_str(xmlDoc *d, const char *expr)
{
    xmlXPathContext *ctx = xmlXPathNewContext(d);
    xmlXPathObject *o = ctx ? xmlXPathEvalExpression((const xmlChar *)expr, ctx) : NULL;
    char *s = strdup(o && o->stringval ? (const char *)o->stringval : "");
    xmlXPathFreeObject(o);
    xmlXPathFreeContext(ctx);
    return s;
}

#define LN(x) "*[local-name()='" x "']"

/* Data of the first Status with CmdRef |ref| in |d| (0 when none). */
static int status_of(xmlDoc *d, const char *ref)
{
    char expr[512];
    snprintf(expr, sizeof expr,
             "string(//" LN("Status") "[" LN("CmdRef") "='%s'][1]/" LN("Data") ")", ref);
    char *s = xpath_str(d, expr);
    int v = atoi(s);
    free(s);
    return v;
}

/* Data of the Results item for CmdRef |ref|. */
static char *result_of(xmlDoc *d, const char *ref)
{
    char expr[512];
    snprintf(expr, sizeof expr,
             "string(//" LN("Results") "[" LN("CmdRef") "='%s']/" LN("Item") "/" LN("Data") ")",
             ref);
    return xpath_str(d, expr);
}

static void begin(session *s, unsigned n, bool pushed)
{
    memset(s, 0, sizeof *s);
    st_eid(n, s->eid);
    char id[65];
    snprintf(id, sizeof id, "WINPC-%04u", n);
    sim_winpc_spec spec = {.device_id = id, .eid = s->eid};
    esim_error err;
    assert_int_equal(sim_winpc_new(fx.pki, &spec, &s->pc, &err), ESIM_OK);
    esim_buf b = {0};
    assert_int_equal(sim_winpc_session_start(s->pc, URL, pushed, &b, &err), ESIM_OK);
    xmlDoc *d = xmlReadMemory((const char *)b.data, (int)b.len, "p1", NULL, 0);
    assert_non_null(d);
    char *sid = xpath_str(d, "string(//" LN("SessionID") ")");
    snprintf(s->sid, sizeof s->sid, "%s", sid);
    free(sid);
    xmlFreeDoc(d);
    esim_buf_free(&b);
    s->msg = 0;
    s->cmd = 100;
}

/* Sends the server's message (SyncHdr Status, then |cmds|) and keeps the reply. */
static void serve(session *s, const char *cmds, bool final)
{
    esim_buf m = {0}, out = {0};
    st_winpc_server_msg(&m, URL, s->sid, ++s->msg, sim_winpc_device_id(s->pc), cmds, final);
    esim_error err;
    if (s->last)
        xmlFreeDoc(s->last);
    s->last = NULL;
    s->rc = sim_winpc_session_reply(s->pc, m.data, m.len, &out, &s->done, &err);
    if (out.len)
        s->last = xmlReadMemory((const char *)out.data, (int)out.len, "r", NULL, 0);
    esim_buf_free(&m);
    esim_buf_free(&out);
}

static void end(session *s)
{
    if (s->last)
        xmlFreeDoc(s->last);
    sim_winpc_free(s->pc);
}

/* "./Device/Vendor/MSFT/eUICCs/<EID>/<rest>" */
static void node(const session *s, const char *rest, char *out, size_t n)
{
    snprintf(out, n, "./Device/Vendor/MSFT/eUICCs/%s%s%s", s->eid, *rest ? "/" : "", rest);
}

static const char *get_cmd(char *buf, size_t n, const char *id, const char *uri)
{
    snprintf(buf, n,
             "<Get><CmdID>%s</CmdID><Item><Target><LocURI>%s</LocURI></Target></Item></Get>", id,
             uri);
    return buf;
}

static const char *write_cmd(char *buf, size_t n, const char *verb, const char *id, const char *uri,
                             const char *format, const char *data)
{
    if (data)
        snprintf(buf, n,
                 "<%s><CmdID>%s</CmdID><Item><Target><LocURI>%s</LocURI></Target><Meta><Format "
                 "xmlns=\"syncml:metinf\">%s</Format></Meta><Data>%s</Data></Item></%s>",
                 verb, id, uri, format, data, verb);
    else
        snprintf(buf, n,
                 "<%s><CmdID>%s</CmdID><Item><Target><LocURI>%s</LocURI></Target><Meta><Format "
                 "xmlns=\"syncml:metinf\">node</Format></Meta></Item></%s>",
                 verb, id, uri, verb);
    return buf;
}

/* ---- tests --------------------------------------------------------------------- */

static void test_package1(void **state)
{
    (void)state;
    char eid[ESIM_EID_LEN + 1];
    st_eid(1, eid);
    sim_winpc *pc;
    sim_winpc_spec spec = {.device_id = "ABCDEF0123456789", .eid = eid};
    assert_int_equal(sim_winpc_new(fx.pki, &spec, &pc, NULL), ESIM_OK);
    esim_buf b = {0};
    assert_int_equal(sim_winpc_session_start(pc, URL, false, &b, NULL), ESIM_OK);
    xmlDoc *d = xmlReadMemory((const char *)b.data, (int)b.len, "p1", NULL, 0);
    assert_non_null(d);
    char *v = xpath_str(d, "string(//" LN("SyncHdr") "/" LN("MsgID") ")");
    assert_string_equal(v, "1");
    free(v);
    v = xpath_str(d, "string(//" LN("SyncHdr") "/" LN("Source") "/" LN("LocURI") ")");
    assert_string_equal(v, "ABCDEF0123456789");
    free(v);
    v = xpath_str(d, "string(//" LN("SyncHdr") "/" LN("Target") "/" LN("LocURI") ")");
    assert_string_equal(v, URL);
    free(v);
    v = xpath_str(d, "string(//" LN("Alert") "/" LN("Data") ")");
    assert_string_equal(v, "1201");
    free(v);
    v = xpath_str(d, "string(//" LN("Replace") "/" LN("Item") "[" LN("Source") "/" LN(
                         "LocURI") "='./DevInfo/DevId']/" LN("Data") ")");
    assert_string_equal(v, "ABCDEF0123456789");
    free(v);
    v = xpath_str(d, "string(//" LN("Replace") "/" LN("Item") "[" LN("Source") "/" LN(
                         "LocURI") "='./DevInfo/DmV']/" LN("Data") ")");
    assert_string_equal(v, "1.3");
    free(v);
    v = xpath_str(d, "string(count(//" LN("Final") "))");
    assert_string_equal(v, "1");
    free(v);
    xmlFreeDoc(d);
    /* A second session while one is open is refused; after it ends, the next
     * session has a new SessionID and Alert 1200 when pushed. */
    assert_int_equal(sim_winpc_session_start(pc, URL, false, &b, NULL), ESIM_ESTATE);
    sim_winpc_session_abort(pc);
    assert_int_equal(sim_winpc_session_start(pc, URL, true, &b, NULL), ESIM_OK);
    d = xmlReadMemory((const char *)b.data, (int)b.len, "p1", NULL, 0);
    v = xpath_str(d, "string(//" LN("Alert") "/" LN("Data") ")");
    assert_string_equal(v, "1200");
    free(v);
    v = xpath_str(d, "string(//" LN("SessionID") ")");
    assert_string_equal(v, "2");
    free(v);
    xmlFreeDoc(d);
    esim_buf_free(&b);
    sim_winpc_free(pc);
    /* Bad specs. */
    spec.device_id = "has space";
    assert_int_equal(sim_winpc_new(fx.pki, &spec, &pc, NULL), ESIM_EINVAL);
    spec.device_id = "OK";
    spec.eid = "1234";
    assert_int_equal(sim_winpc_new(fx.pki, &spec, &pc, NULL), ESIM_EINVAL);
}

static void test_session_rules(void **state)
{
    (void)state;
    session s;
    char cmd[1024], uri[512];
    /* Status only: the session ends, nothing is sent. */
    begin(&s, 2, false);
    serve(&s,
          "<Status><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>1</CmdRef><Cmd>Alert</Cmd>"
          "<Data>200</Data></Status>",
          true);
    assert_int_equal(s.rc, ESIM_OK);
    assert_true(s.done);
    assert_null(s.last);
    assert_int_equal(sim_winpc_sessions(s.pc), 1);
    assert_false(sim_winpc_in_session(s.pc));
    end(&s);

    /* A command: SyncHdr Status first (CmdRef 0, MsgRef = the server's
     * MsgID), MsgID 2, then the Get's Status and Results. */
    begin(&s, 3, false);
    serve(&s, get_cmd(cmd, sizeof cmd, "6f1c-uuid", "./Device/Vendor/MSFT/eUICCs"), true);
    assert_int_equal(s.rc, ESIM_OK);
    assert_false(s.done);
    assert_non_null(s.last);
    char *v = xpath_str(s.last, "string(//" LN("SyncHdr") "/" LN("MsgID") ")");
    assert_string_equal(v, "2");
    free(v);
    v = xpath_str(s.last, "string(//" LN("SyncBody") "/*[1]/" LN("CmdRef") ")");
    assert_string_equal(v, "0");
    free(v);
    v = xpath_str(s.last, "string(//" LN("SyncBody") "/*[1]/" LN("Cmd") ")");
    assert_string_equal(v, "SyncHdr");
    free(v);
    assert_int_equal(status_of(s.last, "6f1c-uuid"), 200);
    v = result_of(s.last, "6f1c-uuid");
    assert_string_equal(v, s.eid);
    free(v);
    /* No Final from the server: the PC asks for the next message (1222). */
    serve(&s, get_cmd(cmd, sizeof cmd, "g2", "./DevInfo/Man"), false);
    v = xpath_str(s.last, "string(//" LN("Alert") "/" LN("Data") ")");
    assert_string_equal(v, "1222");
    free(v);
    v = xpath_str(s.last, "string(//" LN("SyncHdr") "/" LN("MsgID") ")");
    assert_string_equal(v, "3");
    free(v);
    end(&s);

    /* A wrong SessionID, bad XML, a missing SyncHdr Status: EPROTO, the
     * session ends, nothing executed. */
    begin(&s, 4, false);
    snprintf(s.sid, sizeof s.sid, "77");
    node(&s, "Policies/LocalUIEnabled", uri, sizeof uri);
    serve(&s, write_cmd(cmd, sizeof cmd, "Replace", "1", uri, "bool", "false"), true);
    assert_int_equal(s.rc, ESIM_EPROTO);
    assert_true(s.done);
    assert_false(sim_winpc_in_session(s.pc));
    esim_buf b = {0};
    assert_int_equal(sim_winpc_get(s.pc, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "true");
    bool done;
    assert_int_equal(sim_winpc_session_start(s.pc, URL, false, &b, NULL), ESIM_OK);
    assert_int_equal(sim_winpc_session_reply(s.pc, "<SyncML><oops", 13, &b, &done, NULL),
                     ESIM_EPROTO);
    assert_true(done);
    assert_int_equal(sim_winpc_session_start(s.pc, URL, false, &b, NULL), ESIM_OK);
    char msg[1024];
    snprintf(msg, sizeof msg,
             "<SyncML><SyncHdr><SessionID>%u</SessionID><MsgID>1</MsgID></SyncHdr><SyncBody>"
             "<Get><CmdID>2</CmdID></Get><Final/></SyncBody></SyncML>",
             3u);
    assert_int_equal(sim_winpc_session_reply(s.pc, msg, strlen(msg), &b, &done, NULL), ESIM_EPROTO);
    /* The server refuses the PC: SyncHdr Status 403 is EAUTH. */
    assert_int_equal(sim_winpc_session_start(s.pc, URL, false, &b, NULL), ESIM_OK);
    snprintf(msg, sizeof msg,
             "<SyncML><SyncHdr><SessionID>4</SessionID><MsgID>1</MsgID></SyncHdr><SyncBody>"
             "<Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd>"
             "<Data>403</Data></Status><Final/></SyncBody></SyncML>");
    assert_int_equal(sim_winpc_session_reply(s.pc, msg, strlen(msg), &b, &done, NULL), ESIM_EAUTH);
    assert_true(done);
    esim_buf_free(&b);
    end(&s);
}

static void test_tree_and_rules(void **state)
{
    (void)state;
    session s;
    char cmds[8192], c1[1024], uri[512];
    begin(&s, 5, false);
    char e[512], d[512], ident[512], prof[512], bad[512];
    node(&s, "", e, sizeof e);
    snprintf(d, sizeof d, "./Vendor/MSFT/eUICCs/Default/Identifier");
    node(&s, "Identifier", ident, sizeof ident);
    node(&s, "Profiles/89012600000000000000", prof, sizeof prof);
    node(&s, "NoSuchNode", bad, sizeof bad);
    cmds[0] = '\0';
    strcat(cmds, get_cmd(c1, sizeof c1, "a", e));
    strcat(cmds, get_cmd(c1, sizeof c1, "b", d));
    strcat(cmds, write_cmd(c1, sizeof c1, "Replace", "c", ident, "chr", "x"));
    strcat(cmds, get_cmd(c1, sizeof c1, "d", bad));
    strcat(cmds, get_cmd(c1, sizeof c1, "e", prof));
    strcat(cmds, get_cmd(c1, sizeof c1, "f", "./User/Vendor/MSFT/eUICCs"));
    strcat(cmds, get_cmd(c1, sizeof c1, "g", "/Vendor/MSFT/eUICCs"));
    node(&s, "Actions/Status", uri, sizeof uri);
    strcat(cmds, write_cmd(c1, sizeof c1, "Replace", "h", uri, "int", "0"));
    strcat(cmds,
           get_cmd(c1, sizeof c1, "i", "./Vendor/MSFT/DMClient/Provider/esim-mdm/Push/ChannelURI"));
    node(&s, "Actions/ResetToFactoryState", uri, sizeof uri);
    strcat(cmds, write_cmd(c1, sizeof c1, "Replace", "j", uri, "chr", "1"));
    node(&s, "Policies/LocalUIEnabled", uri, sizeof uri);
    strcat(cmds, write_cmd(c1, sizeof c1, "Replace", "k", uri, "bool", "maybe"));
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "l", uri, "bool", "false"));
    /* CDATA in Data is not read. */
    snprintf(c1, sizeof c1,
             "<Replace><CmdID>m</CmdID><Item><Target><LocURI>%s</LocURI></Target>"
             "<Data><![CDATA[false]]></Data></Item></Replace>",
             uri);
    strcat(cmds, c1);
    serve(&s, cmds, true);
    assert_int_equal(s.rc, ESIM_OK);
    assert_int_equal(status_of(s.last, "a"), 200);
    char *v = result_of(s.last, "a");
    assert_string_equal(v, "Identifier/IsActive/PPR1Allowed/PPR1AlreadySet/DownloadServers/"
                           "Profiles/Policies/Actions");
    free(v);
    v = result_of(s.last, "b");
    assert_string_equal(v, s.eid);
    free(v);
    assert_int_equal(status_of(s.last, "c"), 405); /* Identifier is read-only */
    assert_int_equal(status_of(s.last, "d"), 404);
    assert_int_equal(status_of(s.last, "e"), 404);
    assert_int_equal(status_of(s.last, "f"), 404); /* device scope only */
    assert_int_equal(status_of(s.last, "g"), 400); /* LocURI never starts with '/' */
    assert_int_equal(status_of(s.last, "h"), 405);
    assert_int_equal(status_of(s.last, "i"), 404); /* no channel yet */
    assert_int_equal(status_of(s.last, "j"), 405); /* ResetToFactoryState is Exec only */
    assert_int_equal(status_of(s.last, "k"), 400);
    assert_int_equal(status_of(s.last, "l"), 405); /* LocalUIEnabled: Get, Replace */
    assert_int_equal(status_of(s.last, "m"), 400);
    /* Results carry the format. */
    v = xpath_str(s.last, "string(//" LN("Results") "[" LN("CmdRef") "='a']//" LN("Format") ")");
    assert_string_equal(v, "node");
    free(v);
    end(&s);
}

static void test_profile_lifecycle(void **state)
{
    (void)state;
    session s;
    char cmds[8192], c1[1024], uri[512];
    char iccid[SIM_ICCID_MAX + 1], iccid2[SIM_ICCID_MAX + 1];
    st_iccid(61, iccid);
    st_iccid(62, iccid2);
    begin(&s, 6, false);
    char p[512], rel[128];
    snprintf(rel, sizeof rel, "Profiles/%s", iccid);
    node(&s, rel, p, sizeof p);
    cmds[0] = '\0';
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "1", p, NULL, NULL));
    snprintf(uri, sizeof uri, "%s/ServerName", p);
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "2", uri, "chr", "smdp.example.com"));
    snprintf(uri, sizeof uri, "%s/MatchingID", p);
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "3", uri, "chr", "not-a-matching-id"));
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "4", uri, "chr", "1A2B3-C4D5E-6F7A8-9B0C1"));
    snprintf(uri, sizeof uri, "%s/IsEnabled", p);
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "5", uri, "bool", "true"));
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "6", p, NULL, NULL)); /* again: 418 */
    snprintf(rel, sizeof rel, "Profiles/%s", iccid2);
    node(&s, rel, uri, sizeof uri);
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "7", uri, NULL, NULL));
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "8",
                           "./Device/Vendor/MSFT/eUICCs/Default/Profiles/1234", NULL, NULL));
    serve(&s, cmds, true);
    assert_int_equal(status_of(s.last, "1"), 200);
    assert_int_equal(status_of(s.last, "2"), 200);
    assert_int_equal(status_of(s.last, "3"), 400); /* outside the MatchingID pattern */
    assert_int_equal(status_of(s.last, "4"), 200);
    assert_int_equal(status_of(s.last, "5"), 200);
    assert_int_equal(status_of(s.last, "6"), 418);
    assert_int_equal(status_of(s.last, "7"), 200);
    assert_int_equal(status_of(s.last, "8"), 400); /* not an ICCID */
    /* State 1 until the download runs. */
    esim_buf b = {0};
    snprintf(uri, sizeof uri, "%s/State", p);
    assert_int_equal(sim_winpc_get(s.pc, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "1");
    /* Ending the session hands out the downloads. */
    serve(&s, "", true);
    assert_true(s.done);
    sim_winpc_job j1, j2, j3;
    assert_true(sim_winpc_next_job(s.pc, &j1));
    assert_int_equal(j1.kind, SIM_WINJOB_DOWNLOAD);
    assert_string_equal(j1.node, iccid);
    assert_string_equal(j1.server_url, "https://smdp.example.com");
    assert_string_equal(j1.matching_id, "1A2B3-C4D5E-6F7A8-9B0C1");
    assert_true(sim_winpc_next_job(s.pc, &j2));
    assert_string_equal(j2.node, iccid2);
    assert_string_equal(j2.server_url, ""); /* no ServerName */
    assert_false(sim_winpc_next_job(s.pc, &j3));
    /* The first succeeds (installed by hand here, as the LPA would), the
     * second fails: State 4 with an ErrorDetail. */
    sim_profile prof = {.profile_class = SIM_CLASS_OPERATIONAL};
    snprintf(prof.iccid, sizeof prof.iccid, "%s", iccid);
    sim_result res;
    assert_int_equal(sim_euicc_install(sim_winpc_euicc(s.pc), &prof, &res, NULL), ESIM_OK);
    sim_download_result ok = {.err = ESIM_OK};
    snprintf(ok.iccid, sizeof ok.iccid, "%s", iccid);
    sim_winpc_job_done(s.pc, &j1, &ok);
    sim_winpc_job_done(s.pc, &j2, NULL);
    assert_int_equal(sim_winpc_get(s.pc, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "2");
    assert_non_null(sim_euicc_enabled(sim_winpc_euicc(s.pc))); /* IsEnabled true */
    snprintf(uri, sizeof uri, "./Vendor/MSFT/eUICCs/Default/Profiles/%s/ErrorDetail", iccid2);
    assert_int_equal(sim_winpc_get(s.pc, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "13");
    /* ErrorDetail for the SM-DP+'s refusals. */
    sim_download_result r = {.err = ESIM_EAUTH};
    snprintf(r.subject_code, sizeof r.subject_code, "8.2.6");
    snprintf(r.reason_code, sizeof r.reason_code, "3.8");
    assert_int_equal(sim_winpc_error_detail(&r), 6);
    snprintf(r.subject_code, sizeof r.subject_code, "8.2");
    snprintf(r.reason_code, sizeof r.reason_code, "1.2");
    assert_int_equal(sim_winpc_error_detail(&r), 12);
    r.err = ESIM_EUNAVAIL;
    assert_int_equal(sim_winpc_error_detail(&r), 14);

    /* A new session: MatchingID can no longer change; Delete removes the
     * profile and its node; the profiles list follows. */
    esim_buf_reset(&b);
    assert_int_equal(sim_winpc_session_start(s.pc, URL, false, &b, NULL), ESIM_OK);
    snprintf(s.sid, sizeof s.sid, "2");
    s.msg = 0;
    cmds[0] = '\0';
    snprintf(uri, sizeof uri, "%s/MatchingID", p);
    strcat(cmds, write_cmd(c1, sizeof c1, "Replace", "1", uri, "chr", "11111-22222-33333-44444"));
    node(&s, "Profiles", uri, sizeof uri);
    strcat(cmds, get_cmd(c1, sizeof c1, "2", uri));
    strcat(cmds, "<Delete><CmdID>3</CmdID><Item><Target><LocURI>");
    strcat(cmds, p);
    strcat(cmds, "</LocURI></Target></Item></Delete>");
    strcat(cmds, get_cmd(c1, sizeof c1, "4", uri));
    serve(&s, cmds, true);
    assert_int_equal(status_of(s.last, "1"), 405);
    char *v = result_of(s.last, "2");
    char want[64];
    snprintf(want, sizeof want, "%s/%s", iccid, iccid2);
    assert_string_equal(v, want);
    free(v);
    assert_int_equal(status_of(s.last, "3"), 200);
    v = result_of(s.last, "4");
    assert_string_equal(v, iccid2);
    free(v);
    assert_null(sim_euicc_find(sim_winpc_euicc(s.pc), iccid));
    /* The delete notification waits for the SM-DP+. */
    assert_true(sim_euicc_notification_count(sim_winpc_euicc(s.pc)) > 0);
    esim_buf_free(&b);
    end(&s);
}

static void test_discovery_and_policy(void **state)
{
    (void)state;
    session s;
    char cmds[8192], c1[1024], uri[512], srv[512];
    begin(&s, 7, false);
    node(&s, "DownloadServers/smdp.example.com", srv, sizeof srv);
    cmds[0] = '\0';
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "1", srv, NULL, NULL));
    snprintf(uri, sizeof uri, "%s/AutoEnable", srv);
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "2", uri, "bool", "true"));
    snprintf(uri, sizeof uri, "%s/DiscoveryState", srv);
    strcat(cmds, get_cmd(c1, sizeof c1, "3", uri));
    node(&s, "DownloadServers", uri, sizeof uri);
    strcat(cmds, get_cmd(c1, sizeof c1, "4", uri));
    node(&s, "Policies/LocalUIEnabled", uri, sizeof uri);
    strcat(cmds, write_cmd(c1, sizeof c1, "Replace", "5", uri, "bool", "false"));
    serve(&s, cmds, true);
    assert_int_equal(status_of(s.last, "1"), 200);
    assert_int_equal(status_of(s.last, "2"), 200);
    char *v = result_of(s.last, "3");
    assert_string_equal(v, "1");
    free(v);
    v = result_of(s.last, "4");
    assert_string_equal(v, "smdp.example.com");
    free(v);
    assert_int_equal(status_of(s.last, "5"), 200);
    serve(&s, "", true);
    sim_winpc_job j;
    assert_true(sim_winpc_next_job(s.pc, &j));
    assert_int_equal(j.kind, SIM_WINJOB_DISCOVERY);
    assert_string_equal(j.matching_id, "");
    esim_buf b = {0};
    snprintf(uri, sizeof uri, "%s/DiscoveryState", srv);
    assert_int_equal(sim_winpc_get(s.pc, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "2");
    char iccid[SIM_ICCID_MAX + 1];
    st_iccid(71, iccid);
    sim_profile prof = {.profile_class = SIM_CLASS_OPERATIONAL};
    snprintf(prof.iccid, sizeof prof.iccid, "%s", iccid);
    sim_result res;
    sim_euicc_install(sim_winpc_euicc(s.pc), &prof, &res, NULL);
    sim_download_result ok = {.err = ESIM_OK};
    snprintf(ok.iccid, sizeof ok.iccid, "%s", iccid);
    sim_winpc_job_done(s.pc, &j, &ok);
    assert_int_equal(sim_winpc_get(s.pc, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "3");
    snprintf(uri, sizeof uri, "./Device/Vendor/MSFT/eUICCs/%s/Profiles/%s/State", s.eid, iccid);
    assert_int_equal(sim_winpc_get(s.pc, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "2");
    assert_non_null(sim_euicc_enabled(sim_winpc_euicc(s.pc))); /* AutoEnable */
    /* LocalUIEnabled false: the user may not delete the eSIM. */
    sim_action_outcome o;
    assert_int_equal(sim_winpc_user_delete_esim(s.pc, &o, NULL), ESIM_OK);
    assert_false(o.allowed);
    assert_non_null(strstr(o.reason, "LocalUIEnabled"));
    assert_non_null(sim_euicc_find(sim_winpc_euicc(s.pc), iccid));
    /* Reset to factory state: Actions/Status S_FALSE, then S_OK; every
     * profile goes. */
    esim_buf_reset(&b);
    assert_int_equal(sim_winpc_session_start(s.pc, URL, false, &b, NULL), ESIM_OK);
    snprintf(s.sid, sizeof s.sid, "2");
    s.msg = 0;
    node(&s, "Actions/ResetToFactoryState", uri, sizeof uri);
    snprintf(cmds, sizeof cmds,
             "<Exec><CmdID>1</CmdID><Item><Target><LocURI>%s</LocURI></Target></Item></Exec>", uri);
    node(&s, "Actions/Status", uri, sizeof uri);
    strcat(cmds, get_cmd(c1, sizeof c1, "2", uri));
    serve(&s, cmds, true);
    assert_int_equal(status_of(s.last, "1"), 200);
    v = result_of(s.last, "2");
    assert_string_equal(v, "1");
    free(v);
    serve(&s, "", true);
    assert_true(sim_winpc_next_job(s.pc, &j));
    assert_int_equal(j.kind, SIM_WINJOB_RESET);
    assert_int_equal(sim_euicc_profile_count(sim_winpc_euicc(s.pc)), 0);
    assert_int_equal(sim_winpc_get(s.pc, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "1");
    sim_winpc_job_done(s.pc, &j, NULL);
    assert_int_equal(sim_winpc_get(s.pc, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "0");
    node(&s, "Profiles", uri, sizeof uri);
    assert_int_equal(sim_winpc_get(s.pc, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "");
    /* With no eSIM left, the user action says so. */
    assert_int_equal(sim_winpc_user_delete_esim(s.pc, &o, NULL), ESIM_ESTATE);
    esim_buf_free(&b);
    end(&s);
}

static void test_atomic(void **state)
{
    (void)state;
    session s;
    char cmds[8192], c1[1024], uri[512], ui[512];
    begin(&s, 8, false);
    node(&s, "Policies/LocalUIEnabled", ui, sizeof ui);
    node(&s, "DownloadServers/a.example.com", uri, sizeof uri);
    /* A Get inside Atomic: 507, the Get 500, the rest not executed (215). */
    snprintf(cmds, sizeof cmds, "<Atomic><CmdID>1</CmdID>%s",
             write_cmd(c1, sizeof c1, "Replace", "2", ui, "bool", "false"));
    strcat(cmds, get_cmd(c1, sizeof c1, "3", ui));
    strcat(cmds, "</Atomic>");
    /* A nested Atomic: 500, its parent 507. */
    strcat(cmds, "<Atomic><CmdID>4</CmdID><Atomic><CmdID>5</CmdID>");
    strcat(cmds, write_cmd(c1, sizeof c1, "Replace", "6", ui, "bool", "false"));
    strcat(cmds, "</Atomic></Atomic>");
    /* A failing child rolls back the ones before it (216). */
    strcat(cmds, "<Atomic><CmdID>7</CmdID>");
    strcat(cmds, write_cmd(c1, sizeof c1, "Add", "8", uri, NULL, NULL));
    strcat(cmds, write_cmd(c1, sizeof c1, "Replace", "9", ui, "bool", "false"));
    node(&s, "Identifier", c1, sizeof c1);
    char c2[1024];
    strcat(cmds, write_cmd(c2, sizeof c2, "Replace", "10", c1, "chr", "x"));
    strcat(cmds, "</Atomic>");
    /* A good one applies everything. */
    strcat(cmds, "<Atomic><CmdID>11</CmdID>");
    node(&s, "DownloadServers/b.example.com", c1, sizeof c1);
    strcat(cmds, write_cmd(c2, sizeof c2, "Add", "12", c1, NULL, NULL));
    strcat(cmds, "</Atomic>");
    serve(&s, cmds, true);
    assert_int_equal(status_of(s.last, "1"), 507);
    assert_int_equal(status_of(s.last, "2"), 215);
    assert_int_equal(status_of(s.last, "3"), 500);
    assert_int_equal(status_of(s.last, "4"), 507);
    assert_int_equal(status_of(s.last, "5"), 500);
    assert_int_equal(status_of(s.last, "7"), 507);
    assert_int_equal(status_of(s.last, "8"), 216);
    assert_int_equal(status_of(s.last, "9"), 216);
    assert_int_equal(status_of(s.last, "10"), 405);
    assert_int_equal(status_of(s.last, "11"), 200);
    assert_int_equal(status_of(s.last, "12"), 200);
    esim_buf b = {0};
    assert_int_equal(sim_winpc_get(s.pc, ui, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "true");
    node(&s, "DownloadServers", uri, sizeof uri);
    assert_int_equal(sim_winpc_get(s.pc, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "b.example.com");
    esim_buf_free(&b);
    end(&s);
}

/* The two readers of a server's message (the plain-XML scanner, libxml2)
 * give the same answer, byte for byte, to plain messages, to XML the scanner
 * hands over (comments, CDATA, references, prefixes, a DOCTYPE, CR LF,
 * non-ASCII) and to malformed XML; the scanner reads the plain ones itself. */
static void test_two_readers(void **state)
{
    (void)state;
#define HDR                                                                                        \
    "<SyncML xmlns=\"SYNCML:SYNCML1.2\"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto>"  \
    "<SessionID>1</SessionID><MsgID>1</MsgID><Target><LocURI>PC</LocURI></Target><Source>"         \
    "<LocURI>" URL "?a=1&amp;b=2</LocURI></Source></SyncHdr><SyncBody><Status><CmdID>1</CmdID>"    \
    "<MsgRef>1</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd><Data>200</Data></Status>"
#define EU "./Device/Vendor/MSFT/eUICCs/"
#define POL "/Policies/LocalUIEnabled"
#define GET(id, uri)                                                                               \
    "<Get><CmdID>" id "</CmdID><Item><Target><LocURI>" uri "</LocURI></Target></Item></Get>"
#define REPL(id, uri, data)                                                                        \
    "<Replace><CmdID>" id "</CmdID><Item><Target><LocURI>" uri "</LocURI></Target><Meta><Format "  \
    "xmlns=\"syncml:metinf\">bool</Format></Meta><Data>" data "</Data></Item></Replace>"
#define TAIL "<Final/></SyncBody></SyncML>"
    static const struct {
        const char *msg;
        bool scanned; /* the scanner reads it itself */
    } cases[] = {
        {"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" HDR GET("a&lt;1&gt;", EU "%s")
             GET("b", "./DevInfo/Man") REPL("c", EU "%s" POL, "false") TAIL "\n",
         true},
        {HDR GET("&quot;q&apos;",
                 EU "Default" POL) "<Get><CmdID>d</CmdID><Item><Target><LocURI>./DevInfo/Man</"
                                   "LocURI></Target><Meta/></Item></Get>" TAIL,
         true},
        {"<?xml version='1.0' standalone='yes' ?>" HDR "\n\t<Get>\n <CmdID>e</CmdID>\n "
         "<Item><Target><LocURI>\n./DevInfo/Mod</LocURI></Target></Item></Get>\n" REPL(
             "f", EU "%s" POL, " true ") "<Final />"
                                         "</SyncBody ></SyncML>",
         true},
        {HDR REPL("g&amp;", EU "%s" POL, "fal&amp;se")
             REPL("h", "Device/Vendor/MSFT/eUICCs/%s" POL, "true") TAIL,
         true},
        {HDR REPL("i", EU "%s" POL, "tr<!-- c -->ue") TAIL, false},
        {HDR REPL("j", EU "%s" POL, "<![CDATA[false]]>") TAIL, false},
        {HDR REPL("k", EU "%s" POL, "&#102;alse") GET("&#x6c;", EU "%s") TAIL, false},
        {HDR "<Get><CmdID>l</CmdID><Item><Target><m:LocURI "
             "xmlns:m=\"x\">./DevInfo/Lang</m:LocURI></Target></Item></Get>" TAIL,
         false},
        {"<!DOCTYPE SyncML [<!ENTITY f \"false\">]>" HDR REPL("m", EU "%s" POL, "&f;") TAIL, false},
        {HDR "\r\n" GET("n", "./DevInfo/Man\r\n") TAIL, false},
        {HDR REPL("o", EU "%s" POL, "fals\xc3\xa9") TAIL, false},
        {"\xef\xbb\xbf" HDR GET("p", "./DevInfo/Man") TAIL, false},
        {"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>" HDR GET("q\xe9", "./DevInfo/Man") TAIL,
         false},
        {HDR "<Get a=\"1\"><CmdID>r</CmdID></Get>" TAIL, false},
        {HDR GET("s", "./DevInfo/Man") TAIL "<!-- end -->", false},
        {HDR
         "<Data><A><B><C><D><E><F><G><H><I><J><K><L><M><N><O><P><Q><R><S><T><U><V><W><X><Y><Z>"
         "<A><B><C><D><E><F><G><H><I><J><K><L><M><N><O><P><Q><R><S><T><U><V><W><X><Y><Z>"
         "<A><B><C><D><E><F><G><H><I><J><K><L>x</L></K></J></I></H><G/></G></F></E></D></C></B></A>"
         "</Z></Y></X></W></V></U></T></S></R></Q></P></O></N></M></L></K></J></I></H></G></F></"
         "E></D></C></B></A>"
         "</Z></Y></X></W></V></U></T></S></R></Q></P></O></N></M></L></K></J></I></H></G></F></"
         "E></D></C></B></A>"
         "</Data>" TAIL,
         false},
        /* malformed */
        {HDR GET("t", "./DevInfo/Man") "</SyncBody></SyncMl>", false},
        {HDR GET("u", "./DevInfo/&nbsp;") TAIL, false},
        {HDR REPL("v", EU "%s" POL, "a]]>b") TAIL, false},
        {HDR "<Get xmlns=\"a<b\"><CmdID>w</CmdID></Get>" TAIL, false},
        {HDR TAIL "<SyncML/>", false},
        {HDR TAIL "junk", false},
        {HDR GET("x", "./DevInfo/Man"), false},
        {HDR GET("y", "./DevInfo/\x01Man") TAIL, false},
        {HDR GET("z", "./DevInfo/\xffMan") TAIL, false},
        {"<?xml version=\"1.1\"?>" HDR GET("A", "./DevInfo/Man") TAIL, false},
        {" <?xml version=\"1.0\"?>" HDR GET("B", "./DevInfo/Man") TAIL, false},
        {HDR "<Get><CmdID>C</CmdID><1tem/></Get>" TAIL, false},
        {HDR "<Get xmlns=\"a\" xmlns=\"b\"><CmdID>D</CmdID></Get>" TAIL, false},
        {HDR "<Get xmlns=\"a\"xmlns:b=\"b\"><CmdID>E</CmdID></Get>" TAIL, false},
        {HDR "<Get><CmdID>F</CmdID></Get >< /SyncBody></SyncML>", false},
        {HDR "<Get><CmdID>G &amp</CmdID></Get>" TAIL, false},
    };
    char eid[ESIM_EID_LEN + 1];
    st_eid(40, eid);
    sim_winpc_spec spec = {.device_id = "PC", .eid = eid};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char msg[8192];
        size_t n = 0; /* each %s is the EID */
        for (const char *c = cases[i].msg; *c && n + sizeof eid < sizeof msg; c++) {
            if (c[0] == '%' && c[1] == 's') {
                memcpy(msg + n, eid, strlen(eid));
                n += strlen(eid);
                c++;
            } else {
                msg[n++] = *c;
            }
        }
        msg[n] = '\0';
        esim_buf out[2] = {{0}}, start = {0};
        bool done[2];
        esim_err rc[2];
        char got[2][64];
        size_t scanned_before = sim_winpc_xml_reader_for_tests(false);
        for (int k = 0; k < 2; k++) {
            sim_winpc *pc;
            assert_int_equal(sim_winpc_new(fx.pki, &spec, &pc, NULL), ESIM_OK);
            assert_int_equal(sim_winpc_session_start(pc, URL, false, &start, NULL), ESIM_OK);
            sim_winpc_xml_reader_for_tests(k == 1);
            rc[k] = sim_winpc_session_reply(pc, msg, strlen(msg), &out[k], &done[k], NULL);
            esim_buf v = {0};
            snprintf(got[k], sizeof got[k], "%s",
                     sim_winpc_get(pc, EU "Default" POL, &v) == ESIM_OK ? (char *)v.data : "?");
            esim_buf_free(&v);
            sim_winpc_free(pc);
        }
        size_t scanned = sim_winpc_xml_reader_for_tests(false) - scanned_before;
        if (rc[0] != rc[1] || done[0] != done[1] || out[0].len != out[1].len ||
            (out[0].len && memcmp(out[0].data, out[1].data, out[0].len) != 0) ||
            strcmp(got[0], got[1]) != 0 || scanned != (cases[i].scanned ? 1u : 0u))
            fail_msg("case %zu: rc %d/%d, done %d/%d, LocalUIEnabled %s/%s, scanned %zu\n"
                     "scanner: %.*s\nlibxml2: %.*s",
                     i, rc[0], rc[1], done[0], done[1], got[0], got[1], scanned, (int)out[0].len,
                     out[0].len ? (char *)out[0].data : "", (int)out[1].len,
                     out[1].len ? (char *)out[1].data : "");
        esim_buf_free(&out[0]);
        esim_buf_free(&out[1]);
        esim_buf_free(&start);
    }
#undef HDR
#undef EU
#undef POL
#undef GET
#undef REPL
#undef TAIL
}

static void test_persistence(void **state)
{
    (void)state;
    session s;
    char cmds[4096], c1[1024], uri[512], path[600];
    begin(&s, 9, false);
    assert_int_equal(sim_winpc_set_channel_uri(s.pc, "https://wns.example/?token=abc", NULL),
                     ESIM_OK);
    node(&s, "DownloadServers/smdp.example.com", uri, sizeof uri);
    snprintf(cmds, sizeof cmds, "%s", write_cmd(c1, sizeof c1, "Add", "1", uri, NULL, NULL));
    node(&s, "Policies/LocalUIEnabled", uri, sizeof uri);
    strcat(cmds, write_cmd(c1, sizeof c1, "Replace", "2", uri, "bool", "false"));
    strcat(cmds, get_cmd(c1, sizeof c1, "3",
                         "./Device/Vendor/MSFT/DMClient/Provider/esim-mdm/Push/ChannelURI"));
    serve(&s, cmds, true);
    char *v = result_of(s.last, "3");
    assert_string_equal(v, "https://wns.example/?token=abc");
    free(v);
    serve(&s, "", true);
    /* Its identity: its own key and certificate, kept with it. */
    const esim_buf *id = NULL;
    assert_int_equal(sim_winpc_identity(s.pc, &id, NULL), ESIM_OK);
    esim_buf cert = {0};
    assert_int_equal(esim_buf_append(&cert, id->data, id->len), ESIM_OK);
    unsigned char key[32], point[65];
    memcpy(key, sim_winpc_identity_key(s.pc), 32);
    sim_cert_view cv;
    assert_true(sim_cert_view_parse(cert.data, cert.len, &cv));
    assert_true(sim_ec_public_key(key, point));
    assert_memory_equal(point, cv.point, 65);
    assert_true(sim_winpc_dirty(s.pc));
    snprintf(path, sizeof path, "%s/pc.json", fx.dir);
    assert_int_equal(sim_winpc_save(s.pc, path, NULL), ESIM_OK);
    assert_false(sim_winpc_dirty(s.pc));
    sim_winpc *back = NULL;
    esim_error err;
    assert_int_equal(sim_winpc_load(fx.pki, path, &back, &err), ESIM_OK);
    esim_buf b = {0};
    assert_int_equal(sim_winpc_get(back, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "false");
    node(&s, "DownloadServers/smdp.example.com/DiscoveryState", uri, sizeof uri);
    assert_int_equal(sim_winpc_get(back, uri, &b), ESIM_OK);
    assert_string_equal((const char *)b.data, "1");
    assert_string_equal(sim_winpc_channel_uri(back), "https://wns.example/?token=abc");
    assert_int_equal(sim_winpc_sessions(back), 1);
    assert_int_equal(sim_winpc_identity(back, &id, NULL), ESIM_OK);
    assert_int_equal(id->len, cert.len);
    assert_memory_equal(id->data, cert.data, cert.len);
    assert_memory_equal(sim_winpc_identity_key(back), key, 32);
    /* Another PC has another key. */
    sim_winpc *other = NULL;
    sim_winpc_spec os = {.device_id = "OTHER-PC", .eid = sim_euicc_eid(sim_winpc_euicc(back))};
    assert_int_equal(sim_winpc_new(fx.pki, &os, &other, NULL), ESIM_OK);
    assert_int_equal(sim_winpc_identity(other, &id, NULL), ESIM_OK);
    sim_cert_view vo;
    assert_true(sim_cert_view_parse(id->data, id->len, &vo));
    assert_memory_not_equal(vo.point, point, 65);
    assert_memory_not_equal(sim_winpc_identity_key(other), key, 32);
    sim_winpc_free(other);
    esim_buf_free(&cert);
    /* The next session continues the SessionID sequence. */
    assert_int_equal(sim_winpc_session_start(back, URL, false, &b, NULL), ESIM_OK);
    assert_non_null(strstr((const char *)b.data, "<SessionID>2</SessionID>"));
    esim_buf_free(&b);
    sim_winpc_free(back);
    /* A damaged file is refused. */
    assert_int_equal(esim_write_file_atomic(path, "{\"device_id\":\"X\"}", 17, 0600, NULL),
                     ESIM_OK);
    assert_int_equal(sim_winpc_load(fx.pki, path, &back, &err), ESIM_EINVAL);
    assert_null(back);
    end(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_package1),
        cmocka_unit_test(test_session_rules),
        cmocka_unit_test(test_tree_and_rules),
        cmocka_unit_test(test_profile_lifecycle),
        cmocka_unit_test(test_discovery_and_policy),
        cmocka_unit_test(test_atomic),
        cmocka_unit_test(test_two_readers),
        cmocka_unit_test(test_persistence),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
