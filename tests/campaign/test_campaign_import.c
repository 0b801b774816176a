/*
 * test_campaign_import.c — the offline workflow's files: EID manifests and
 * activation-code lists with good rows, bad rows (reported by line number
 * with the reason, the rest kept), headers, comments, quotes and CRLF.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "campaign/campaign_engine.h"

#define EID_A "89882119900000000000000000001654"

static void make_eid(unsigned i, char out[ESIM_EID_LEN + 1])
{
    snprintf(out, ESIM_EID_LEN + 1, "8988211990000000000000%08u00", i);
    assert_int_equal(esim_eid_set_check_digits(out, NULL), ESIM_OK);
}

static const campaign_bad_line *bad_at(const campaign_import *imp, unsigned line)
{
    for (size_t i = 0; i < imp->n_bad; i++)
        if (imp->bad[i].line == line)
            return &imp->bad[i];
    return NULL;
}

static void test_eids_good_and_bad_rows(void **state)
{
    (void)state;
    char e2[33], e3[33], e4[33];
    make_eid(2, e2);
    make_eid(3, e3);
    make_eid(4, e4);
    char text[2048];
    snprintf(text, sizeof text,
             "\xEF\xBB\xBFSerial,EID\r\n" /* 1: header (with a BOM, as Excel writes) */
             "F2LX0001,%s\r\n"            /* 2: good */
             "\n"                         /* 3: blank */
             "# reseller batch 7\n"       /* 4: comment */
             "\"F2LX0002\" , \"%s\"\n"    /* 5: good, quoted and spaced */
             "F2LX0003,89882119900000000000000000001600\n" /* 6: bad check digits */
             "F2LX0004\n"                                  /* 7: one column */
             ",%s\n"                                       /* 8: empty serial */
             "F2LX0001,%s\n"                               /* 9: repeated serial */
             "F2LX0009,%s\n"                               /* 10: repeated EID */
             "F2LX/10,%s\n"                                /* 11: bad serial */
             "F2LX0011,%s",                                /* 12: good, no final newline */
             EID_A, e2, e3, e4, EID_A, e4, e3);
    campaign_import imp = {0};
    assert_int_equal(campaign_import_parse_eids(text, strlen(text), &imp, NULL), ESIM_OK);
    assert_int_equal(imp.n_eids, 3);
    assert_string_equal(imp.eids[0].serial, "F2LX0001");
    assert_string_equal(imp.eids[0].eid, EID_A);
    assert_int_equal(imp.eids[0].line, 2);
    assert_string_equal(imp.eids[1].serial, "F2LX0002");
    assert_string_equal(imp.eids[1].eid, e2);
    assert_string_equal(imp.eids[2].serial, "F2LX0011");
    assert_int_equal(imp.eids[2].line, 12);
    assert_int_equal(imp.n_bad, 6);
    assert_int_equal(imp.n_bad_total, 6);
    assert_non_null(strstr(bad_at(&imp, 6)->reason, "check digits"));
    assert_non_null(strstr(bad_at(&imp, 7)->reason, "column"));
    assert_non_null(strstr(bad_at(&imp, 8)->reason, "empty"));
    assert_non_null(strstr(bad_at(&imp, 9)->reason, "line 2"));
    assert_non_null(strstr(bad_at(&imp, 10)->reason, "line 2"));
    assert_non_null(bad_at(&imp, 11));
    /* the serial of a refused row stays free: line 10's F2LX0009 was not kept */
    assert_int_equal(imp.n_skipped, 3);
    campaign_import_free(&imp);
    campaign_import_free(&imp); /* twice is fine */
    campaign_import_free(NULL);
}

static void test_eids_header_picks_columns(void **state)
{
    (void)state;
    char text[512];
    snprintf(text, sizeof text,
             "imei,eid,model,serial_number\n356938035643809,%s,iPhone15,C39ABC\n", EID_A);
    campaign_import imp = {0};
    assert_int_equal(campaign_import_parse_eids(text, strlen(text), &imp, NULL), ESIM_OK);
    assert_int_equal(imp.n_eids, 1);
    assert_string_equal(imp.eids[0].serial, "C39ABC");
    assert_string_equal(imp.eids[0].eid, EID_A);
    campaign_import_free(&imp);
}

static void test_eids_refused_whole(void **state)
{
    (void)state;
    campaign_import imp = {0};
    esim_error err;
    const char nul[] = "A,B\0C";
    assert_int_equal(campaign_import_parse_eids(nul, sizeof nul - 1, &imp, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "NUL"));
    assert_int_equal(campaign_import_parse_eids(NULL, 0, &imp, &err), ESIM_EINVAL);
    assert_int_equal(campaign_import_parse_eids("x", CAMPAIGN_IMPORT_MAX_BYTES + 1u, &imp, &err),
                     ESIM_ETOOBIG);
    assert_null(imp.eids);
    /* an empty file is fine: nothing imported, nothing bad */
    assert_int_equal(campaign_import_parse_eids("", 0, &imp, NULL), ESIM_OK);
    assert_int_equal(imp.n_eids + imp.n_bad, 0);
    campaign_import_free(&imp);
}

static void test_many_rows_and_bad_cap(void **state)
{
    (void)state;
    size_t rows = 5000;
    char *text = malloc(rows * 64);
    size_t o = 0;
    for (size_t i = 0; i < rows; i++) {
        char e[33];
        make_eid((unsigned)i + 1, e);
        if (i % 2)
            e[31] = e[31] == '0' ? '1' : '0'; /* every other EID is wrong */
        o += (size_t)sprintf(text + o, "SN%06zu,%s\n", i, e);
    }
    campaign_import imp = {0};
    assert_int_equal(campaign_import_parse_eids(text, o, &imp, NULL), ESIM_OK);
    assert_int_equal(imp.n_eids, 2500);
    assert_int_equal(imp.n_bad, CAMPAIGN_IMPORT_MAX_BAD);
    assert_int_equal(imp.n_bad_total, 2500);
    assert_int_equal(imp.bad[0].line, 2);
    campaign_import_free(&imp);
    free(text);
}

static void test_activation_codes(void **state)
{
    (void)state;
    char e2[33], e3[33];
    make_eid(2, e2);
    make_eid(3, e3);
    char text[2048];
    snprintf(text, sizeof text,
             "EID,ActivationCode,ICCID\n"                                  /* 1 header */
             "%s,LPA:1$smdp.example.com$04386-AGYFT-A74Y8-3F815\n"         /* 2 good */
             "%s,LPA:1$smdp.example.com$ABCDE-12345,8944000000000000001\n" /* 3 good + ICCID */
             "%s,LPA:2$smdp.example.com$X\n"                               /* 4 bad format */
             "%s,LPA:1$smdp.example.com$Y\n"                               /* 5 repeated EID */
             "%s,LPA:1$smdp.example.com$Z,8944000000000000002\n"           /* 6 bad ICCID */
             "12345,LPA:1$smdp.example.com$Z\n"                            /* 7 bad EID */
             "%s\n",                                                       /* 8 one column */
             EID_A, e2, e3, EID_A, e3, e3);
    campaign_import imp = {0};
    assert_int_equal(campaign_import_parse_codes(text, strlen(text), &imp, NULL), ESIM_OK);
    assert_int_equal(imp.n_codes, 2);
    assert_string_equal(imp.codes[0].eid, EID_A);
    assert_string_equal(imp.codes[0].smdp_address, "smdp.example.com");
    assert_string_equal(imp.codes[0].matching_id, "04386-AGYFT-A74Y8-3F815");
    assert_string_equal(imp.codes[0].iccid, "");
    assert_string_equal(imp.codes[1].iccid, "8944000000000000001");
    assert_int_equal(imp.n_bad, 5);
    assert_non_null(strstr(bad_at(&imp, 4)->reason, "format"));
    assert_non_null(strstr(bad_at(&imp, 5)->reason, "line 2"));
    assert_non_null(bad_at(&imp, 6));
    assert_non_null(strstr(bad_at(&imp, 7)->reason, "EID"));
    assert_non_null(strstr(bad_at(&imp, 8)->reason, "column"));
    campaign_import_free(&imp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eids_good_and_bad_rows),
        cmocka_unit_test(test_eids_header_picks_columns),
        cmocka_unit_test(test_eids_refused_whole),
        cmocka_unit_test(test_many_rows_and_bad_cap),
        cmocka_unit_test(test_activation_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
