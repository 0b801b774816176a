/*
 * test_omadm_readers.c — the service's two SyncML readers
 * (service/omadm_syncml.c): the strict reader for plain XML and libxml2.
 * Every message a simulated PC sends for each eSIM operation the service
 * queues (and those operations' command fragments), hand-made edge cases,
 * and the fuzz corpora are read both ways: the results must be the same,
 * field for field, error text included (omadm_readers.h), and the PCs'
 * messages must be the strict reader's. The service integration tests
 * check the same on every message they make a service read (svc_harness).
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/xml_plain.h"
#include "restrictions/restrictions.h"
#include "tests/service/omadm_readers.h"
#include "tests/sim/sim_test.h"

#define URL "https://mdm.example.com/ManagementServer/MDM.svc"

static struct {
    char *dir;
    sim_pki *pki;
} fx;

static int setup_all(void **state)
{
    (void)state;
    return st_pki_open(&fx.dir, &fx.pki);
}

static int teardown_all(void **state)
{
    (void)state;
    st_pki_close(&fx.dir, &fx.pki);
    return 0;
}

/* Both ways, |want_plain| (1: the strict reader's, 0: libxml2's); a
 * difference fails with what differs. */
static void check(const void *body, size_t len, const char *uuid, int want_plain)
{
    char why[1024] = "";
    int r = omadm_readers_check(body, len, uuid, why, sizeof why);
    if (r < 0)
        fail_msg("the readers differ: %s\n%.*s", why, (int)len, (const char *)body);
    if (r != want_plain)
        fail_msg("expected the %s reader:\n%.*s", want_plain ? "strict" : "libxml2", (int)len,
                 (const char *)body);
}

static void check_str(const char *body, const char *uuid, int want_plain)
{
    check(body, strlen(body), uuid, want_plain);
}

/* ---- the simulated PC's messages ---------------------------------------------------- */

typedef struct {
    sim_winpc *pc;
    char eid[ESIM_EID_LEN + 1];
    char sid[OMADM_MAX_SESSION_ID + 1];
    unsigned msg;
    size_t checked;
} pc_session;

/* The PC's message: both readers, the strict one expected; its SessionID kept. */
static void check_pc(pc_session *s, const esim_buf *b)
{
    check(b->data, b->len, NULL, 1);
    omadm_msg m;
    assert_int_equal(omadm_parse(b->data, b->len, &m, NULL), ESIM_OK);
    snprintf(s->sid, sizeof s->sid, "%s", m.session_id);
    omadm_msg_free(&m);
    s->checked++;
}

static void pc_begin(pc_session *s, unsigned n, bool pushed)
{
    esim_buf b = {0};
    if (!s->pc) {
        st_eid(n, s->eid);
        char id[65];
        snprintf(id, sizeof id, "WINPC-%04u", n);
        sim_winpc_spec spec = {.device_id = id, .eid = s->eid};
        assert_int_equal(sim_winpc_new(fx.pki, &spec, &s->pc, NULL), ESIM_OK);
    }
    assert_int_equal(sim_winpc_session_start(s->pc, URL, pushed, &b, NULL), ESIM_OK);
    check_pc(s, &b);
    s->msg = 0;
    esim_buf_free(&b);
}

/* The server's message with |cmds|; the PC's answer checked. Returns whether
 * the PC ended the session. */
static bool pc_serve(pc_session *s, const char *cmds, bool final)
{
    esim_buf m = {0}, out = {0};
    assert_int_equal(
        st_winpc_server_msg(&m, URL, s->sid, ++s->msg, sim_winpc_device_id(s->pc), cmds, final),
        ESIM_OK);
    bool done = false;
    assert_int_equal(sim_winpc_session_reply(s->pc, m.data, m.len, &out, &done, NULL), ESIM_OK);
    if (!done)
        check_pc(s, &out);
    esim_buf_free(&m);
    esim_buf_free(&out);
    return done;
}

static void test_pc_messages(void **state)
{
    (void)state;
    pc_session s = {0};
    pc_begin(&s, 7, false);
    char iccid[SIM_ICCID_MAX + 1];
    st_iccid(70, iccid);
    const char *nodes[] = {"Profiles",
                           "Identifier",
                           "Policies/LocalUIEnabled",
                           "DownloadServers/smdp.example.com/DiscoveryState",
                           "Actions/Status",
                           "NoSuchNode"};
    esim_windows_op ops[] = {
        {.kind = ESIM_WIN_GET, .eid = s.eid, .nodes = nodes, .n_nodes = 6},
        {.kind = ESIM_WIN_LOCAL_UI, .eid = s.eid, .local_ui_enabled = false},
        {.kind = ESIM_WIN_ADD_SERVER,
         .eid = s.eid,
         .server = "smdp.example.com",
         .auto_enable = true,
         .discovery = ESIM_TRI_FALSE},
        {.kind = ESIM_WIN_ADD_PROFILE,
         .eid = s.eid,
         .server = "smdp.example.com",
         .iccid = iccid,
         .matching_id = "1A2B3-C4D5E-6F7A8-9B0C1",
         .enabled = ESIM_TRI_TRUE},
        {.kind = ESIM_WIN_ENABLE_PROFILE, .eid = s.eid, .iccid = iccid, .enabled = ESIM_TRI_FALSE},
        {.kind = ESIM_WIN_DELETE_PROFILE, .eid = s.eid, .iccid = iccid},
        {.kind = ESIM_WIN_DELETE_SERVER, .eid = s.eid, .server = "smdp.example.com"},
        {.kind = ESIM_WIN_LOCAL_UI, .eid = s.eid, .local_ui_enabled = true},
        {.kind = ESIM_WIN_RESET, .eid = s.eid},
    };
    esim_buf frag = {0}, all = {0};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        char uuid[32];
        snprintf(uuid, sizeof uuid, "op-%zu", i);
        esim_error err;
        assert_int_equal(esim_windows_op_syncml(&ops[i], uuid, &frag, &err), ESIM_OK);
        check(frag.data, frag.len, uuid, 1); /* the queued command, as the service checks it */
        /* Each operation in a session of its own, pushed or not, and one
         * message holding them all in a session's second message. */
        if (i > 0)
            pc_begin(&s, 7, i % 2 == 0);
        assert_true(pc_serve(&s, (const char *)frag.data, true) ||
                    pc_serve(&s, "", true)); /* the answers, then the end */
        assert_int_equal(esim_buf_append(&all, frag.data, frag.len), ESIM_OK);
    }
    /* Atomic, a message without Final (the PC's Alert 1222), then all of them. */
    pc_begin(&s, 7, false);
    esim_buf atomic = {0};
    assert_int_equal(esim_buf_printf(&atomic, "<Atomic><CmdID>at</CmdID>%s</Atomic>",
                                     strstr((const char *)all.data, "<Replace>")),
                     ESIM_OK);
    assert_false(pc_serve(&s, (const char *)atomic.data, false));
    assert_false(pc_serve(&s, (const char *)all.data, true));
    assert_true(pc_serve(&s, "", true));
    /* Every message of every session went through both readers. */
    assert_true(s.checked >= 2 * (sizeof ops / sizeof ops[0]) + 3);
    esim_buf_free(&atomic);
    esim_buf_free(&all);
    esim_buf_free(&frag);
    sim_winpc_free(s.pc);
}

/* ---- edge cases ----------------------------------------------------------------------- */

#define HDR                                                                                        \
    "<SyncML xmlns=\"SYNCML:SYNCML1.2\"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto>"  \
    "<SessionID>1A</SessionID><MsgID>2</MsgID><Target><LocURI>" URL "</LocURI></Target>"           \
    "<Source><LocURI>PC-1</LocURI></Source></SyncHdr><SyncBody>"
#define HDR_STATUS                                                                                 \
    "<Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd>"               \
    "<Data>200</Data></Status>"
#define TAIL "<Final/></SyncBody></SyncML>"
#define STATUS(ref, data)                                                                          \
    "<Status><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>" ref "</CmdRef><Cmd>Get</Cmd><Data>" data  \
    "</Data></Status>"
#define RESULTS(ref, item)                                                                         \
    "<Results><CmdID>3</CmdID><MsgRef>1</MsgRef><CmdRef>" ref "</CmdRef><Item>" item               \
    "</Item></Results>"

static void test_edge_cases(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        const char *uuid; /* a queued command's; NULL: a device's message */
        int plain;
        esim_err rc;
    } cases[] = {
        /* Plain: the strict reader's, the libxml2 path's bytes in every copy. */
        {HDR HDR_STATUS STATUS("u.1", "200") TAIL, NULL, 1, ESIM_OK},
        {"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n" HDR HDR_STATUS TAIL "\n", NULL, 1, ESIM_OK},
        {"<?xml version='1.0' standalone='no' ?>" HDR HDR_STATUS TAIL, NULL, 1, ESIM_OK},
        /* Pretty-printed: the white space is kept in the ledger's copy. */
        {HDR "\n  " HDR_STATUS "\n  <Status>\n\t<CmdID>2</CmdID>\n\t<MsgRef>1</MsgRef>\n\t"
             "<CmdRef>u.1</CmdRef>\n\t<Cmd>Get</Cmd>\n\t<Data> 404 </Data>\n  </Status >\n"
             "<Final />\n</SyncBody></SyncML>",
         NULL, 1, ESIM_OK},
        /* Empty elements written <a/>, entities decoded and escaped again
         * as libxml2 writes them, quotes kept. */
        {HDR HDR_STATUS RESULTS("u.2", "<Source><LocURI>./Vendor/MSFT/a&amp;b</LocURI></Source>"
                                       "<Meta><Format xmlns='syncml:metinf'>chr</Format><Type>"
                                       "</Type></Meta><Data>&lt;x&gt; &quot;q&apos; > a]b</Data>")
             TAIL,
         NULL, 1, ESIM_OK},
        /* A Data holding XML keeps its markup, xmlns declarations as libxml2 writes them. */
        {HDR HDR_STATUS RESULTS("u.3", "<Source><LocURI>./Vendor/MSFT/x</LocURI></Source><Data>"
                                       "<Node xmlns=\"urn:a\"><Leaf>1</Leaf><Empty></Empty>"
                                       "<Q xmlns='a\"b'/><R xmlns=\"\"/><S xmlns=\"a\tb\nc\"/>"
                                       "<T xmlns = \"x>y\" /></Node> tail &amp;</Data>") TAIL,
         NULL, 1, ESIM_OK},
        {HDR HDR_STATUS "<Alert><CmdID>4</CmdID><Data>1226</Data><Item><Meta><Type "
                        "xmlns=\"syncml:metinf\">com.microsoft:mdm.unenrollment.userrequest</Type>"
                        "<Format xmlns=\"syncml:metinf\">int</Format></Meta><Data>1</Data></Item>"
                        "</Alert><Replace><CmdID>5</CmdID><Item><Source><LocURI>./DevInfo/DevId"
                        "</LocURI></Source><Data>PC-1</Data></Item></Replace><Sequence><CmdID>6"
                        "</CmdID><Get><CmdID>7</CmdID></Get></Sequence><Copy><CmdID>8</CmdID>"
                        "</Copy>" TAIL,
         NULL, 1, ESIM_OK},
        /* Refused the same way, error text included. */
        {HDR HDR_STATUS "<Status><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>u</CmdRef>"
                        "<Cmd>Get</Cmd><Data>20</Data></Status>" TAIL,
         NULL, 1, ESIM_EINVAL},
        {HDR HDR_STATUS "<Get><Item/></Get>" TAIL, NULL, 1, ESIM_EINVAL},
        {HDR HDR_STATUS "<Get><CmdID>1<x/></CmdID></Get>" TAIL, NULL, 1, ESIM_EINVAL},
        {HDR HDR_STATUS "<Atomic><CmdID>2</CmdID><Atomic><CmdID>3</CmdID></Atomic></Atomic>" TAIL,
         NULL, 1, ESIM_EINVAL},
        {"<SyncML><SyncHdr/></SyncML>", NULL, 1, ESIM_EINVAL},
        {"<SyncMl/>", NULL, 1, ESIM_EINVAL},
        {HDR HDR_STATUS "<Get><CmdID>2</CmdID><Item><Target><LocURI></LocURI></Target></Item>"
                        "</Get>" TAIL,
         NULL, 1, ESIM_EINVAL},
        /* libxml2's: outside the plain subset, or not XML at all. */
        {HDR HDR_STATUS
         "<Status xmlns:msft=\"http://schemas.microsoft.com/MobileDevice/MDM\"><CmdID>2</CmdID>"
         "<MsgRef>1</MsgRef><CmdRef>u.1</CmdRef><Cmd>Add</Cmd>"
         "<Data msft:originalerror=\"0x86000002\">405</Data></Status>" TAIL,
         NULL, 0, ESIM_OK},
        {HDR HDR_STATUS "<!-- a comment -->" STATUS("u.1", "200") TAIL, NULL, 0, ESIM_OK},
        {HDR HDR_STATUS STATUS("u.1", "<![CDATA[200]]>") TAIL, NULL, 0, ESIM_OK},
        {HDR HDR_STATUS STATUS("u.1", "&#50;00") TAIL, NULL, 0, ESIM_OK},
        {HDR HDR_STATUS STATUS("u.1", "200") "<?pi x?>" TAIL, NULL, 0, ESIM_EINVAL},
        {HDR HDR_STATUS RESULTS("u.2", "<Data>caf\xc3\xa9</Data>") TAIL, NULL, 0, ESIM_OK},
        {HDR HDR_STATUS RESULTS("u.2", "<Data>a\r\nb</Data>") TAIL, NULL, 0, ESIM_OK},
        {HDR HDR_STATUS "<Get xmlns=\"http://www.w3.org/XML/1998/namespace\"><CmdID>2</CmdID>"
                        "</Get>" TAIL,
         NULL, 0, ESIM_OK},
        {HDR HDR_STATUS "<Get xmlns=\"http://www.w3.org/2000/xmlns/\"><CmdID>2</CmdID></Get>" TAIL,
         NULL, 0, ESIM_OK},
        {HDR HDR_STATUS "<Get id=\"1\"><CmdID>2</CmdID></Get>" TAIL, NULL, 0, ESIM_OK},
        {"<!DOCTYPE SyncML>" HDR HDR_STATUS TAIL, NULL, 0, ESIM_EINVAL},
        {"\xef\xbb\xbf" HDR HDR_STATUS TAIL, NULL, 0, ESIM_OK},
        {HDR HDR_STATUS TAIL "junk", NULL, 0, ESIM_EINVAL},
        {HDR HDR_STATUS "</SyncBody></SyncMl>", NULL, 0, ESIM_EINVAL},
        {HDR HDR_STATUS "</SyncBody></SyncML>", NULL, 1, ESIM_OK}, /* no Final: fine */
        {HDR HDR_STATUS STATUS("u.1", "&nbsp;") TAIL, NULL, 0, ESIM_EINVAL},
        {HDR HDR_STATUS STATUS("u.1", "a]]>b") TAIL, NULL, 0, ESIM_EINVAL},
        {"\x02\x01", NULL, 0, ESIM_EINVAL},
        {"", NULL, 0, ESIM_EINVAL},
        /* Queued commands: the same rules on the fragment. */
        {"<Replace><CmdID>c-1</CmdID><Item><Target><LocURI>./Device/Vendor/MSFT/x</LocURI>"
         "</Target><Meta><Format xmlns=\"syncml:metinf\">int</Format></Meta><Data>1</Data>"
         "</Item></Replace>",
         "c-1", 1, ESIM_OK},
        {"<Atomic><CmdID>c-1</CmdID><Add><CmdID>c-1.1</CmdID><Item><Target><LocURI>a</LocURI>"
         "</Target></Item></Add>\n<Exec><CmdID>c-1.2</CmdID><Item><Target><LocURI>b</LocURI>"
         "</Target></Item></Exec></Atomic>",
         "c-1", 1, ESIM_OK},
        {"<Get><CmdID>c-2</CmdID><Item><Target><LocURI>a</LocURI></Target></Item></Get>", "c-1", 1,
         ESIM_EINVAL},
        {"<Get><CmdID>c-1</CmdID><Item><Target><LocURI>/a</LocURI></Target></Item></Get>", "c-1", 1,
         ESIM_EINVAL},
        {"<Status><CmdID>c-1</CmdID></Status>", "c-1", 1, ESIM_EINVAL},
        {"<Get><CmdID>c-1</CmdID></Get><Final/>", "c-1", 1, ESIM_EINVAL},
        {"<Get><CmdID>c-1</CmdID><Item><Target><LocURI>a&#x41;</LocURI></Target></Item></Get>",
         "c-1", 0, ESIM_OK},
        {"<Get><CmdID>c-1</CmdID><Item><Target><LocURI>a</LocURI></Target></Item></Get></x>", "c-1",
         0, ESIM_EINVAL},
        {"<?xml version=\"1.0\"?><Get><CmdID>c-1</CmdID></Get>", "c-1", 0, ESIM_EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        check_str(cases[i].body, cases[i].uuid, cases[i].plain);
        omadm_msg m;
        esim_error err = {{0}};
        size_t len = strlen(cases[i].body);
        esim_err rc = cases[i].uuid
                          ? omadm_parse_commands(cases[i].body, len, cases[i].uuid, &m, &err)
                          : omadm_parse(cases[i].body, len, &m, &err);
        if (rc != cases[i].rc)
            fail_msg("case %zu: %d (%s), expected %d", i, rc, err.msg, cases[i].rc);
        if (rc != ESIM_OK)
            assert_true(err.msg[0] != '\0');
        omadm_msg_free(&m);
    }
    /* Nested 25 deep: over the service's limit (the strict reader's); 65 deep:
     * over the strict reader's (libxml2's), refused the same way. */
    for (int depth = 25; depth <= 65; depth += 40) {
        esim_buf b = {0};
        for (int k = 0; k < depth; k++)
            assert_int_equal(esim_buf_append_str(&b, "<a>"), ESIM_OK);
        for (int k = 0; k < depth; k++)
            assert_int_equal(esim_buf_append_str(&b, "</a>"), ESIM_OK);
        check(b.data, b.len, NULL, depth < ESIM_XML_PLAIN_MAX_DEPTH);
        omadm_msg m;
        esim_error err = {{0}};
        assert_int_equal(omadm_parse(b.data, b.len, &m, &err), ESIM_ETOOBIG);
        assert_non_null(strstr(err.msg, "nested deeper"));
        esim_buf_free(&b);
    }
}

/* The ledger's copies, byte for byte as the libxml2 path has always made them. */
static void test_ledger_bytes(void **state)
{
    (void)state;
    static const char msg[] =
        HDR HDR_STATUS "<Status ><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>u.1</CmdRef>"
                       "<Cmd>Get</Cmd><Data>200</Data><Meta></Meta></Status>\n" RESULTS(
                           "u.1", "<Source><LocURI>a</LocURI></Source><Meta><Format xmlns='s:m'>"
                                  "xml</Format></Meta><Data><P xmlns=\"urn:x\"><Q>a&amp;b&gt;"
                                  "&apos;</Q><R></R></P></Data>") TAIL;
    for (int k = 0; k < 2; k++) {
        omadm_msg m;
        bool plain;
        assert_int_equal(omadm_parse_as(k == 1, &plain, msg, sizeof msg - 1, &m, NULL), ESIM_OK);
        assert_int_equal(plain, k == 0);
        assert_int_equal(m.n_cmds, 3);
        assert_null(m.cmds[0].raw); /* the SyncHdr's Status is not kept */
        assert_string_equal(m.cmds[1].raw, "<Status><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>u.1"
                                           "</CmdRef><Cmd>Get</Cmd><Data>200</Data><Meta/>"
                                           "</Status>");
        assert_string_equal(m.cmds[2].items[0].data,
                            "<P xmlns=\"urn:x\"><Q>a&amp;b&gt;'</Q><R/></P>");
        assert_string_equal(m.cmds[2].items[0].format, "xml");
        assert_non_null(strstr(m.cmds[2].raw, "<Format xmlns=\"s:m\">xml</Format>"));
        omadm_msg_free(&m);
    }
}

/* Every input of the SyncML fuzz corpora, as a message and as a command. */
static void test_corpora(void **state)
{
    (void)state;
    const char *data = getenv("ESIM_TEST_DATA");
    assert_non_null(data);
    const char *corpora[] = {"syncml", "syncml_readers"};
    size_t files = 0;
    for (size_t c = 0; c < 2; c++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/fuzz/%s", data, corpora[c]);
        DIR *d = opendir(dir);
        assert_non_null(d);
        for (struct dirent *e; (e = readdir(d)) != NULL;) {
            if (e->d_name[0] == '.')
                continue;
            char path[1024];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            esim_buf b = {0};
            assert_int_equal(esim_read_file(path, 1u << 20, &b, NULL), ESIM_OK);
            char why[1024] = "";
            if (omadm_readers_check(b.data, b.len, NULL, why, sizeof why) < 0 ||
                omadm_readers_check(b.data, b.len, "u-1", why, sizeof why) < 0)
                fail_msg("%s: the readers differ: %s", path, why);
            esim_buf_free(&b);
            files++;
        }
        closedir(d);
    }
    assert_true(files >= 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pc_messages),
        cmocka_unit_test(test_edge_cases),
        cmocka_unit_test(test_ledger_bytes),
        cmocka_unit_test(test_corpora),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
