/*
 * test_sim_pcsc.c — the virtual eUICC through the real PC/SC stack: its own
 * pcscd (in a private mount namespace, so its socket and pid file are this
 * test's) with vsmartcard's vpcd driver on free ports, `esim-mdm sim card`
 * attached to it, then a PC/SC client (libpcsclite) and pcsc-tools'
 * scriptor open a logical channel, select the ISD-R, read the EID (BF3E)
 * and the eIM configuration (BF55). Needs root (mount namespace); every
 * child dies with the test and is stopped at the end.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <stdlib.h>

#include <cmocka.h>
#include <winscard.h>

#include "sgp32/sgp32.h"
#include "tests/ports.h"
#include "tests/sim/sim_test.h"

#define EIM_ID "eim.pcsc.test"

static struct {
    char *dir;
    const char *bin;
    sim_pki *pki;
    char eid[ESIM_EID_LEN + 1];
    char state[600], pkidir[600];
    unsigned port;
    pid_t pcscd, card;
    bool passed; /* else the teardown shows pcscd's and the card's logs */
} fx;

/* Two free TCP ports in a row: vpcd listens on PORT and PORT+1 (two slots).
 * They are taken below the kernel's ephemeral range (tests/ports.h): a
 * port that bind(0) handed out could go, between our check and pcscd's own
 * bind, to another test's listener or outgoing connection (seen under
 * ctest -j: pcscd's "Address already in use", the card talking to a
 * stranger). */
static unsigned free_port_pair(void)
{
    return (unsigned)test_port_below_ephemeral(2);
}

static pid_t spawn(char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* SIGTERM, then SIGKILL after 5 s; the exit status (-1 when killed). */
static int stop(pid_t pid)
{
    if (pid <= 0)
        return -1;
    kill(pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 100; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        usleep(50 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

static void print_log(const char *name)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s", fx.dir, name);
    esim_buf b = {0};
    if (esim_read_file(path, 1 << 16, &b, NULL) == ESIM_OK && b.len) {
        fprintf(stderr, "---- %s ----\n%.*s\n", name, (int)b.len, (const char *)b.data);
    }
    esim_buf_free(&b);
}

/* AddInitialEim through the eUICC's own ES10 entry point, as the IPA does
 * when the device is made: the eIM configuration the card must give back. */
static void associate(sim_euicc *e)
{
    EimConfigurationData_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    assert_int_equal(OCTET_STRING_fromString(&c->eimId, EIM_ID), 0);
    c->eimFqdn = OCTET_STRING_new_fromBuf(&asn_DEF_UTF8String, "127.0.0.1:8443", -1);
    c->counterValue = calloc(1, sizeof *c->counterValue); /* 0 */
    AddInitialEimRequest_t *q = calloc(1, sizeof *q);
    assert_non_null(q);
    ASN_SEQUENCE_ADD(&q->eimConfigurationDataList.list, c);
    esim_buf req = {0}, out = {0};
    assert_int_equal(sgp32_encode(&asn_DEF_AddInitialEimRequest, q, &req, NULL), ESIM_OK);
    sgp32_free(&asn_DEF_AddInitialEimRequest, q);
    esim_error err;
    assert_int_equal(sim_euicc_es10(e, req.data, req.len, &out, &err), ESIM_OK);
    /* BF57 { A0 { 84 01 01 } }: the first association token */
    assert_int_equal(out.len, 8);
    assert_memory_equal(out.data, "\xBF\x57\x05\xA0\x03\x84\x01\x01", 8);
    esim_buf_free(&req);
    esim_buf_free(&out);
}

static int setup_all(void **state)
{
    (void)state;
    fx.bin = getenv("ESIM_MDM_BIN");
    fx.dir = st_tempdir();
    if (!fx.bin || !fx.dir)
        return -1;
    snprintf(fx.pkidir, sizeof fx.pkidir, "%s/pki", fx.dir);
    snprintf(fx.state, sizeof fx.state, "%s/card.json", fx.dir);
    esim_error err;
    if (sim_pki_open(fx.pkidir, &fx.pki, &err) != ESIM_OK)
        return fprintf(stderr, "pki: %s\n", err.msg), -1;
    st_eid(4242, fx.eid);
    return 0;
}

static int teardown_all(void **state)
{
    (void)state;
    if (!fx.passed && fx.pcscd) {
        print_log("pcscd.log");
        print_log("card.log");
    }
    stop(fx.card);
    stop(fx.pcscd);
    sim_pki_free(fx.pki);
    st_rmrf(fx.dir);
    free(fx.dir);
    return 0;
}

/* Sends |apdu| (hex) and fetches a 61xx answer with GET RESPONSE on the
 * same channel, as T=0 clients do. Returns SW1SW2; the data in |data|. */
static unsigned transmit(SCARDHANDLE h, const char *hex, esim_buf *data)
{
    esim_buf cmd = {0};
    assert_int_equal(esim_hex_decode(hex, &cmd, NULL), ESIM_OK);
    uint8_t rsp[300];
    DWORD rlen = sizeof rsp;
    LONG rv = SCardTransmit(h, SCARD_PCI_T0, cmd.data, (DWORD)cmd.len, NULL, rsp, &rlen);
    assert_int_equal(rv, SCARD_S_SUCCESS);
    assert_true(rlen >= 2);
    esim_buf_reset(data);
    unsigned sw = (unsigned)rsp[rlen - 2] << 8 | rsp[rlen - 1];
    esim_buf_append(data, rsp, rlen - 2);
    while ((sw >> 8) == 0x61) {
        uint8_t gr[5] = {(uint8_t)(cmd.data[0] & 0x03), 0xC0, 0, 0, (uint8_t)sw};
        rlen = sizeof rsp;
        rv = SCardTransmit(h, SCARD_PCI_T0, gr, 5, NULL, rsp, &rlen);
        assert_int_equal(rv, SCARD_S_SUCCESS);
        assert_true(rlen >= 2);
        sw = (unsigned)rsp[rlen - 2] << 8 | rsp[rlen - 1];
        esim_buf_append(data, rsp, rlen - 2);
    }
    esim_buf_free(&cmd);
    return sw;
}

static void start_stack(void)
{
    if (geteuid() != 0) {
        fprintf(stderr, "test_sim_pcsc: needs root (a private mount namespace for pcscd)\n");
        skip();
    }
    fx.port = free_port_pair();
    assert_true(fx.port > 0);
    char conf[700], run[700], path[800], script[1600];
    snprintf(conf, sizeof conf, "%s/reader.conf.d", fx.dir);
    snprintf(run, sizeof run, "%s/run", fx.dir);
    assert_int_equal(mkdir(conf, 0700), 0);
    assert_int_equal(mkdir(run, 0755), 0);
    mkdir("/run/pcscd", 0755); /* the mount point; pcscd's own directory */
    snprintf(path, sizeof path, "%s/vpcd", conf);
    char text[400];
    snprintf(text, sizeof text,
             "FRIENDLYNAME \"Virtual PCD\"\nDEVICENAME /dev/null:%u\n"
             "LIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so\nCHANNELID %u\n",
             fx.port, fx.port);
    assert_int_equal(esim_write_file_atomic(path, text, strlen(text), 0644, NULL), ESIM_OK);
    /* pcscd's socket and pid file are fixed paths under /run/pcscd: in its
     * own mount namespace that directory is this test's |run|, and clients
     * find the socket through PCSCLITE_CSOCK_NAME. */
    snprintf(script, sizeof script, "mount --bind '%s' /run/pcscd && exec pcscd -f -c '%s'", run,
             conf);
    char log[700];
    snprintf(log, sizeof log, "%s/pcscd.log", fx.dir);
    fx.pcscd = spawn((char *[]){"unshare", "-m", "sh", "-c", script, NULL}, log);
    char vpcd[64];
    snprintf(vpcd, sizeof vpcd, "127.0.0.1:%u", fx.port);
    snprintf(log, sizeof log, "%s/card.log", fx.dir);
    fx.card = spawn((char *[]){(char *)fx.bin, "sim", "card", "--state", fx.state, "--vpcd", vpcd,
                               "--pki", fx.pkidir, NULL},
                    log);
    snprintf(path, sizeof path, "%s/pcscd.comm", run);
    setenv("PCSCLITE_CSOCK_NAME", path, 1);
    struct stat sb;
    for (int i = 0; i < 200 && stat(path, &sb) != 0; i++)
        usleep(50 * 1000);
    if (stat(path, &sb) != 0)
        print_log("pcscd.log");
    assert_int_equal(stat(path, &sb), 0);
}

/* Waits (at most 15 s) until the reader named |reader| holds a card. */
static void wait_card(SCARDCONTEXT ctx, char *reader, size_t len)
{
    for (int i = 0; i < 150; i++) {
        char names[1024];
        DWORD n = sizeof names;
        if (SCardListReaders(ctx, NULL, names, &n) == SCARD_S_SUCCESS) {
            SCARD_READERSTATE rs = {.szReader = names, .dwCurrentState = SCARD_STATE_UNAWARE};
            if (SCardGetStatusChange(ctx, 0, &rs, 1) == SCARD_S_SUCCESS &&
                (rs.dwEventState & SCARD_STATE_PRESENT)) {
                if (strlen(names) < len) {
                    memcpy(reader, names, strlen(names) + 1);
                    return;
                }
            }
        }
        usleep(100 * 1000);
    }
    print_log("pcscd.log");
    print_log("card.log");
    fail_msg("no card appeared in vpcd's reader in 15 s");
}

static void test_pcsc_stack(void **state)
{
    (void)state;
    /* The card's state as the device left it: associated with one eIM. */
    sim_euicc *e = NULL;
    esim_error err;
    assert_int_equal(sim_euicc_new(fx.pki, fx.eid, &e, &err), ESIM_OK);
    associate(e);
    assert_int_equal(sim_euicc_save(e, fx.state, &err), ESIM_OK);
    sim_euicc_free(e);

    start_stack();
    SCARDCONTEXT ctx;
    assert_int_equal(SCardEstablishContext(SCARD_SCOPE_SYSTEM, NULL, NULL, &ctx), SCARD_S_SUCCESS);
    char reader[256];
    wait_card(ctx, reader, sizeof reader);
    assert_non_null(strstr(reader, "Virtual PCD"));

    /* T=0 only, as eUICC clients connect. */
    SCARDHANDLE h;
    DWORD proto = 0;
    assert_int_equal(SCardConnect(ctx, reader, SCARD_SHARE_SHARED, SCARD_PROTOCOL_T0, &h, &proto),
                     SCARD_S_SUCCESS);
    assert_int_equal(proto, SCARD_PROTOCOL_T0);
    esim_buf d = {0};
    /* TERMINAL CAPABILITY: accepted, nothing to read. */
    assert_int_equal(transmit(h, "80AA00000AA9088100820101830107", &d), 0x9000);
    /* MANAGE CHANNEL open: exactly 01 90 00. */
    assert_int_equal(transmit(h, "0070000001", &d), 0x9000);
    assert_int_equal(d.len, 1);
    assert_int_equal(d.data[0], 1);
    /* SELECT ISD-R on channel 1. */
    assert_int_equal(transmit(h, "01A4040010" SIM_ISDR_AID, &d), 0x9000);
    /* GetEID, in one block and then chained in two. */
    esim_buf eid = {0};
    assert_int_equal(esim_hex_decode(fx.eid, &eid, NULL), ESIM_OK);
    assert_int_equal(transmit(h, "81E2910006BF3E035C015A", &d), 0x9000);
    assert_int_equal(d.len, 21);
    assert_memory_equal(d.data, "\xBF\x3E\x12\x5A\x10", 5);
    assert_memory_equal(d.data + 5, eid.data, 16);
    assert_int_equal(transmit(h, "81E2110003BF3E03", &d), 0x9000);
    assert_int_equal(d.len, 0);
    assert_int_equal(transmit(h, "81E29101035C015A", &d), 0x9000);
    assert_memory_equal(d.data + 5, eid.data, 16);
    /* GetEimConfigurationData: the eIM added above, counter 0, token 1. */
    assert_int_equal(transmit(h, "81E2910003BF5500", &d), 0x9000);
    GetEimConfigurationDataResponse_t *g = NULL;
    assert_int_equal(
        sgp32_decode(&asn_DEF_GetEimConfigurationDataResponse, d.data, d.len, (void **)&g, NULL),
        ESIM_OK);
    assert_int_equal(g->eimConfigurationDataList.list.count, 1);
    const EimConfigurationData_t *c = g->eimConfigurationDataList.list.array[0];
    assert_int_equal(c->eimId.size, strlen(EIM_ID));
    assert_memory_equal(c->eimId.buf, EIM_ID, strlen(EIM_ID));
    assert_int_equal(*c->counterValue, 0);
    assert_int_equal(*c->associationToken, 1);
    sgp32_free(&asn_DEF_GetEimConfigurationDataResponse, g);
    /* Errors come back as status words. */
    assert_int_equal(transmit(h, "81CA000000", &d), 0x6D00);
    assert_int_equal(transmit(h, "02A4040010" SIM_ISDR_AID, &d), 0x6881);
    assert_int_equal(transmit(h, "01A4040005A000000063", &d), 0x6A82);
    assert_int_equal(transmit(h, "81E2910003BF0000", &d), 0x6A80);
    /* MANAGE CHANNEL close. */
    assert_int_equal(transmit(h, "0070800100", &d), 0x9000);
    assert_int_equal(transmit(h, "81E2910006BF3E035C015A", &d), 0x6881);
    SCardDisconnect(h, SCARD_RESET_CARD);
    SCardReleaseContext(ctx);

    /* The same through pcsc-tools' scriptor, a standard PC/SC program. */
    char script[700], out[700], cmdline[2400];
    snprintf(script, sizeof script, "%s/script", fx.dir);
    snprintf(out, sizeof out, "%s/scriptor.out", fx.dir);
    const char *apdus = "00 70 00 00 01\n"
                        "01 A4 04 00 10 A0 00 00 05 59 10 10 FF FF FF FF 89 00 00 01 00\n"
                        "81 E2 91 00 06 BF 3E 03 5C 01 5A\n"
                        "01 C0 00 00 15\n"
                        "81 E2 91 00 03 BF 55 00\n";
    assert_int_equal(esim_write_file_atomic(script, apdus, strlen(apdus), 0600, NULL), ESIM_OK);
    snprintf(cmdline, sizeof cmdline, "timeout 30 scriptor -r '%s' -p T=0 '%s' > '%s' 2>&1", reader,
             script, out);
    int rc = system(cmdline);
    esim_buf o = {0};
    assert_int_equal(esim_read_file(out, 1 << 16, &o, NULL), ESIM_OK);
    esim_buf_append(&o, "", 1);
    /* scriptor breaks long answers after 16 bytes: read them as one line. */
    size_t w = 0;
    for (size_t i = 0; i < o.len; i++)
        if (o.data[i] != '\n')
            o.data[w++] = o.data[i];
    o.len = w;
    if (rc != 0)
        fprintf(stderr, "scriptor:\n%s\n", (const char *)o.data);
    assert_int_equal(rc, 0);
    /* scriptor prints answers as "< XX XX ... : meaning"; the EID's hex. */
    esim_buf want = {0};
    for (size_t i = 0; i < eid.len; i++)
        esim_buf_printf(&want, "%02X ", eid.data[i]);
    want.data[want.len - 1] = '\0';
    assert_non_null(strstr((const char *)o.data, "< 01 90 00"));
    assert_non_null(strstr((const char *)o.data, (const char *)want.data));
    assert_non_null(strstr((const char *)o.data, "< 61 "));
    /* and BF55's answer started (61xx: scriptor does not fetch it) */
    assert_non_null(strstr((const char *)o.data, "> 81 E2 91 00 03 BF 55 00< 61 "));
    esim_buf_free(&want);
    esim_buf_free(&o);
    esim_buf_free(&eid);
    esim_buf_free(&d);

    /* The card saves its state and stops cleanly on SIGTERM. */
    assert_int_equal(stop(fx.card), 0);
    fx.card = 0;
    stop(fx.pcscd);
    fx.pcscd = 0;
    sim_euicc *back = NULL;
    assert_int_equal(sim_euicc_load(fx.pki, fx.state, &back, &err), ESIM_OK);
    assert_string_equal(sim_euicc_eid(back), fx.eid);
    assert_int_equal(sim_euicc_eim_count(back), 1);
    sim_euicc_free(back);
    fx.passed = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_pcsc_stack)};
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
