/*
 * test_sim_card.c — the virtual eUICC's APDU front end (sim/card.c): the
 * ATR, logical channels, SELECT of the ISD-R, STORE DATA chaining, 61xx and
 * GET RESPONSE, direct answers, and the status word of every refusal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "tests/sim/sim_test.h"

static struct {
    char *dir;
    sim_pki *pki;
    char eid[ESIM_EID_LEN + 1];
} fx;

static int setup_all(void **state)
{
    (void)state;
    fx.dir = st_tempdir();
    char pkidir[512];
    snprintf(pkidir, sizeof pkidir, "%s/pki", fx.dir);
    esim_error err;
    if (sim_pki_open(pkidir, &fx.pki, &err) != ESIM_OK)
        return fprintf(stderr, "pki: %s\n", err.msg), -1;
    st_eid(77, fx.eid);
    return 0;
}

static int teardown_all(void **state)
{
    (void)state;
    sim_pki_free(fx.pki);
    st_rmrf(fx.dir);
    free(fx.dir);
    return 0;
}

typedef struct {
    sim_euicc *e;
    sim_card *c;
    esim_buf rsp;
} card_fx;

static int setup(void **state)
{
    card_fx *f = calloc(1, sizeof *f);
    esim_error err;
    if (!f || sim_euicc_new(fx.pki, fx.eid, &f->e, &err) != ESIM_OK ||
        sim_card_new(f->e, &f->c, &err) != ESIM_OK)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    card_fx *f = *state;
    sim_card_free(f->c);
    sim_euicc_free(f->e);
    esim_buf_free(&f->rsp);
    free(f);
    return 0;
}

/* Sends the APDU in |hex|; returns SW1SW2, the data in f->rsp (SW cut off). */
static unsigned send_hex(card_fx *f, const char *hex)
{
    esim_buf a = {0};
    assert_int_equal(esim_hex_decode(hex, &a, NULL), ESIM_OK);
    esim_buf_reset(&f->rsp);
    assert_int_equal(sim_card_apdu(f->c, a.data, a.len, &f->rsp, NULL), ESIM_OK);
    esim_buf_free(&a);
    assert_true(f->rsp.len >= 2);
    f->rsp.len -= 2;
    return (unsigned)f->rsp.data[f->rsp.len] << 8 | f->rsp.data[f->rsp.len + 1];
}

#define SELECT_ISDR(cla) cla "A4040010" SIM_ISDR_AID
#define GET_EID(cla) cla "E2910006BF3E035C015A"

static void expect_eid(const card_fx *f)
{
    esim_buf eid = {0};
    assert_int_equal(esim_hex_decode(fx.eid, &eid, NULL), ESIM_OK);
    assert_int_equal(f->rsp.len, 21);
    assert_memory_equal(f->rsp.data, "\xBF\x3E\x12\x5A\x10", 5);
    assert_memory_equal(f->rsp.data + 5, eid.data, 16);
    esim_buf_free(&eid);
}

static void test_atr_offers_t0(void **state)
{
    (void)state;
    size_t n;
    const uint8_t *atr = sim_card_atr(&n);
    assert_true(n >= 2);
    assert_int_equal(atr[0], 0x3B);
    /* T0 says TD1 follows; TD1's low nibble is the first protocol: T=0. */
    assert_true(atr[1] & 0x80);
    assert_int_equal(atr[2] & 0x0F, 0);
}

static void test_channels(void **state)
{
    card_fx *f = *state;
    /* Channels are handed out from 1 up; the answer is exactly NN 90 00. */
    for (unsigned i = 1; i < 20; i++) {
        assert_int_equal(send_hex(f, "0070000001"), 0x9000);
        assert_int_equal(f->rsp.len, 1);
        assert_int_equal(f->rsp.data[0], i);
    }
    assert_int_equal(send_hex(f, "0070000001"), 0x6A81); /* none left */
    assert_int_equal(send_hex(f, "0070800300"), 0x9000);
    assert_int_equal(send_hex(f, "0070800300"), 0x6A88); /* already closed */
    assert_int_equal(send_hex(f, "0070800000"), 0x6A86); /* the basic channel stays */
    assert_int_equal(send_hex(f, "03A4040010" SIM_ISDR_AID), 0x6881);
    assert_int_equal(send_hex(f, "0070000300"), 0x9000); /* open channel 3 by number */
    assert_int_equal(send_hex(f, "0070000300"), 0x6A86);
    assert_int_equal(send_hex(f, "0070200000"), 0x6A86);
    /* A reset closes them all. */
    sim_card_reset(f->c);
    assert_int_equal(send_hex(f, "01A4040010" SIM_ISDR_AID), 0x6881);
    assert_int_equal(send_hex(f, "0070000001"), 0x9000);
    assert_int_equal(f->rsp.data[0], 1);
}

static void test_select_and_get_response(void **state)
{
    card_fx *f = *state;
    assert_int_equal(send_hex(f, "0070000001"), 0x9000);
    /* STORE DATA before the ISD-R is selected on that channel. */
    assert_int_equal(send_hex(f, GET_EID("81")), 0x6985);
    assert_int_equal(send_hex(f, "01A4040005A000000063"), 0x6A82);
    assert_int_equal(send_hex(f, "01A4000C023F00"), 0x6A82);
    assert_int_equal(send_hex(f, "01A40C0002"
                                 "3F00"),
                     0x6A86);
    unsigned sw = send_hex(f, SELECT_ISDR("01"));
    assert_int_equal(sw >> 8, 0x61);
    /* GET RESPONSE gives the FCI with the AID. */
    char gr[16];
    snprintf(gr, sizeof gr, "01C00000%02X", sw & 0xFF);
    assert_int_equal(send_hex(f, gr), 0x9000);
    assert_int_equal(f->rsp.data[0], 0x6F);
    assert_int_equal(send_hex(f, gr), 0x6985); /* nothing left */
    /* Selected on channel 1 only: the basic channel is not. */
    assert_int_equal(send_hex(f, GET_EID("80")), 0x6985);
    /* GetEID: 61 15, then fetched in two parts. */
    assert_int_equal(send_hex(f, GET_EID("81")), 0x6115);
    assert_int_equal(send_hex(f, "01C0000010"), 0x6105);
    assert_int_equal(f->rsp.len, 16);
    esim_buf first = {0};
    esim_buf_append(&first, f->rsp.data, 16);
    assert_int_equal(send_hex(f, "01C0000005"), 0x9000);
    esim_buf_append(&first, f->rsp.data, 5);
    esim_buf_reset(&f->rsp);
    esim_buf_append(&f->rsp, first.data, first.len);
    expect_eid(f);
    esim_buf_free(&first);
    /* A partial AID selects too (ISO 7816-4 first-occurrence selection). */
    assert_int_equal(send_hex(f, "01A404000AA0000005591010FFFFFF") >> 8, 0x61);
    /* Another command drops an answer nobody fetched. */
    assert_int_equal(send_hex(f, GET_EID("81")), 0x6115);
    assert_int_equal(send_hex(f, "81AA000003A90100"), 0x9000);
    assert_int_equal(send_hex(f, "81C0000015"), 0x6985);
}

static void test_store_data_chaining(void **state)
{
    card_fx *f = *state;
    assert_int_equal(send_hex(f, SELECT_ISDR("00")) >> 8, 0x61);
    assert_int_equal(send_hex(f, "80E2110002BF3E"), 0x9000);
    assert_int_equal(send_hex(f, "80E2110102035C"), 0x9000);
    assert_int_equal(send_hex(f, "80E2910202015A"), 0x6115);
    assert_int_equal(send_hex(f, "00C0000000"), 0x9000); /* Le 00 = up to 256 */
    expect_eid(f);
    /* A block out of order restarts the command. */
    assert_int_equal(send_hex(f, "80E2110002BF3E"), 0x9000);
    assert_int_equal(send_hex(f, "80E2110202035C"), 0x6A86);
    assert_int_equal(send_hex(f, "80E2910102035C"), 0x6A86);
    assert_int_equal(send_hex(f, GET_EID("80")), 0x6115);
    /* P1 other than 11/91 (e.g. DGI format 01) is refused. */
    assert_int_equal(send_hex(f, "80E2810006BF3E035C015A"), 0x6A86);
    /* A request the eUICC refuses: 6A80, and nothing to fetch. */
    assert_int_equal(send_hex(f, "80E2910003BF0000"), 0x6A80);
    assert_int_equal(send_hex(f, "80C0000000"), 0x6985);
    /* More than 64 KiB chained: 6A84, then the next command starts afresh. */
    char blk[12 + 2 * 255 + 1];
    unsigned sw = 0x9000;
    for (unsigned i = 0; i < 300 && sw == 0x9000; i++) {
        snprintf(blk, sizeof blk, "80E211%02XFF", i & 0xFF);
        memset(blk + 10, 'A', 2 * 255);
        blk[10 + 2 * 255] = '\0';
        sw = send_hex(f, blk);
    }
    assert_int_equal(sw, 0x6A84);
    assert_int_equal(send_hex(f, GET_EID("80")), 0x6115);
}

static void test_status_words(void **state)
{
    card_fx *f = *state;
    assert_int_equal(send_hex(f, "FFA4040000"), 0x6E00);
    assert_int_equal(send_hex(f, "0012000000"), 0x6D00);
    assert_int_equal(send_hex(f, "00E2910006BF3E035C015A"), 0x6E00); /* STORE DATA is 8x */
    assert_int_equal(send_hex(f, "8070000001"), 0x6E00);             /* MANAGE CHANNEL is 0x */
    assert_int_equal(send_hex(f, "00AA000000"), 0x6E00);
    assert_int_equal(send_hex(f, "A0A4000002"
                                 "3F00"),
                     0x6E00);
    assert_int_equal(send_hex(f, "00A4"), 0x6700);
    assert_int_equal(send_hex(f, "00A4040010A0000005"), 0x6700); /* Lc says more */
    assert_int_equal(send_hex(f, "00A40400000000"), 0x6700);     /* extended: not offered */
    assert_int_equal(send_hex(f, "00C0000000"), 0x6985);
}

static void test_further_interindustry_and_direct(void **state)
{
    card_fx *f = *state;
    /* Channel 5 is addressed by CLA 41 (40 + 5 - 4), STORE DATA by C1. */
    assert_int_equal(send_hex(f, "0070000500"), 0x9000);
    assert_int_equal(send_hex(f, SELECT_ISDR("41")) >> 8, 0x61);
    sim_card_set_direct(f->c, true);
    assert_int_equal(send_hex(f, GET_EID("C1")), 0x9000);
    expect_eid(f);
    assert_int_equal(send_hex(f, GET_EID("C2")), 0x6881); /* channel 6 is not open */
    assert_int_equal(send_hex(f, "4170800000"), 0x9000);  /* closes its own channel */
    assert_int_equal(send_hex(f, GET_EID("C1")), 0x6881);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_atr_offers_t0),
        cmocka_unit_test_setup_teardown(test_channels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_select_and_get_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_data_chaining, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_words, setup, teardown),
        cmocka_unit_test_setup_teardown(test_further_interindustry_and_direct, setup, teardown),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
