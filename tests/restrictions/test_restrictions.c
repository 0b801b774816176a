/*
 * test_restrictions.c — unit tests for restrictions/: the words admins type,
 * merging (every pair of values), the payload and profile round trip,
 * applicability per key, version and supervision, and the Windows eUICCs
 * CSP SyncML (parsed back with libxml2: well-formed, right LocURI targets).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libxml/parser.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>

#include "restrictions/restrictions.h"

#define VALID_EID "89882119900000000000000000001654"
#define EUICC_ROOT "./Device/Vendor/MSFT/eUICCs/" VALID_EID "/"

static const esim_tri all_tri[3] = {ESIM_TRI_UNSET, ESIM_TRI_FALSE, ESIM_TRI_TRUE};

/* The four fields in struct order, with their Apple key. */
typedef struct {
    const char *apple_key;
    size_t offset;
    bool true_is_restrictive;
} field_info;

static const field_info fields[4] = {
    {"allowESIMModification", offsetof(esim_policy, allow_esim_modification), false},
    {"forcePreserveESIMOnErase", offsetof(esim_policy, force_preserve_esim_on_erase), true},
    {"allowESIMOutgoingTransfers", offsetof(esim_policy, allow_esim_outgoing_transfers), false},
    {"allowCellularPlanModification", offsetof(esim_policy, allow_cellular_plan_modification),
     false},
};

static esim_tri *slot(esim_policy *p, int i)
{
    return (esim_tri *)((char *)p + fields[i].offset);
}

/* ---- esim_policy_set_word ------------------------------------------------ */

static void test_set_word_accepts_documented_words(void **state)
{
    (void)state;
    static const struct {
        const char *name, *word;
        int field;
        esim_tri want;
    } cases[] = {
        {"esim_modification", "allow", 0, ESIM_TRI_TRUE},
        {"esim-modification", "deny", 0, ESIM_TRI_FALSE},
        {"preserve_esim_on_erase", "on", 1, ESIM_TRI_TRUE},
        {"preserve-esim-on-erase", "off", 1, ESIM_TRI_FALSE},
        {"preserve_esim_on_erase", "true", 1, ESIM_TRI_TRUE},
        {"preserve_esim_on_erase", "false", 1, ESIM_TRI_FALSE},
        {"esim_outgoing_transfers", "allow", 2, ESIM_TRI_TRUE},
        {"esim-outgoing-transfers", "deny", 2, ESIM_TRI_FALSE},
        {"cellular_plan_modification", "allow", 3, ESIM_TRI_TRUE},
        {"cellular-plan-modification", "deny", 3, ESIM_TRI_FALSE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        esim_policy p = {0};
        esim_error err = {{0}};
        assert_int_equal(esim_policy_set_word(&p, cases[i].name, cases[i].word, &err), ESIM_OK);
        for (int f = 0; f < 4; f++)
            assert_int_equal(*slot(&p, f), f == cases[i].field ? cases[i].want : ESIM_TRI_UNSET);
    }
}

static void test_set_word_refusals_change_nothing(void **state)
{
    (void)state;
    static const struct {
        const char *name, *word, *message_part;
    } cases[] = {
        {"esim_modification", "on", "allow or deny"},
        {"esim_modification", "ALLOW", "allow or deny"},
        {"esim_modification", "", "allow or deny"},
        {"preserve_esim_on_erase", "allow", "on, off"},
        {"preserve_esim_on_erase", "yes", "on, off"},
        {"esim_outgoing_transfers", "true", "allow or deny"},
        {"cellular_plan_modification", "denied", "allow or deny"},
        {"esim_modifications", "allow", "unknown eSIM policy setting"},
        {"esim__modification", "allow", "unknown eSIM policy setting"},
        {"", "allow", "unknown eSIM policy setting"},
        {"allowESIMModification", "allow", "unknown eSIM policy setting"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        esim_policy p = {ESIM_TRI_TRUE, ESIM_TRI_FALSE, ESIM_TRI_TRUE, ESIM_TRI_FALSE};
        esim_policy before = p;
        esim_error err = {{0}};
        assert_int_equal(esim_policy_set_word(&p, cases[i].name, cases[i].word, &err), ESIM_EINVAL);
        assert_memory_equal(&p, &before, sizeof p);
        assert_non_null(strstr(err.msg, cases[i].message_part));
    }
    esim_policy p = {0};
    assert_int_equal(esim_policy_set_word(NULL, "esim_modification", "allow", NULL), ESIM_EINVAL);
    assert_int_equal(esim_policy_set_word(&p, NULL, "allow", NULL), ESIM_EINVAL);
    assert_int_equal(esim_policy_set_word(&p, "esim_modification", NULL, NULL), ESIM_EINVAL);
    assert_true(esim_policy_is_empty(&p));
}

/* ---- merge --------------------------------------------------------------- */

/* The device's rule, written independently of the implementation. */
static esim_tri expected_merge(esim_tri a, esim_tri b, bool true_is_restrictive)
{
    if (a == ESIM_TRI_UNSET)
        return b;
    if (b == ESIM_TRI_UNSET)
        return a;
    bool va = a == ESIM_TRI_TRUE, vb = b == ESIM_TRI_TRUE;
    bool merged = true_is_restrictive ? (va || vb) : (va && vb);
    return merged ? ESIM_TRI_TRUE : ESIM_TRI_FALSE;
}

static void test_merge_every_pair_of_values(void **state)
{
    (void)state;
    for (int f = 0; f < 4; f++) {
        for (int a = 0; a < 3; a++) {
            for (int b = 0; b < 3; b++) {
                esim_policy into = {0}, other = {0};
                *slot(&into, f) = all_tri[a];
                *slot(&other, f) = all_tri[b];
                esim_policy_merge(&into, &other);
                esim_tri want =
                    expected_merge(all_tri[a], all_tri[b], fields[f].true_is_restrictive);
                assert_int_equal(*slot(&into, f), want);
                /* Untouched fields stay unset. */
                for (int g = 0; g < 4; g++)
                    if (g != f)
                        assert_int_equal(*slot(&into, g), ESIM_TRI_UNSET);
            }
        }
    }
}

static void test_merge_spelled_out(void **state)
{
    (void)state;
    /* allow*: false wins over true; force*: true wins over false. */
    esim_policy a = {ESIM_TRI_TRUE, ESIM_TRI_FALSE, ESIM_TRI_FALSE, ESIM_TRI_UNSET};
    esim_policy b = {ESIM_TRI_FALSE, ESIM_TRI_TRUE, ESIM_TRI_TRUE, ESIM_TRI_TRUE};
    esim_policy_merge(&a, &b);
    assert_int_equal(a.allow_esim_modification, ESIM_TRI_FALSE);
    assert_int_equal(a.force_preserve_esim_on_erase, ESIM_TRI_TRUE);
    assert_int_equal(a.allow_esim_outgoing_transfers, ESIM_TRI_FALSE);
    assert_int_equal(a.allow_cellular_plan_modification, ESIM_TRI_TRUE);
}

static void test_merge_is_commutative_and_associative(void **state)
{
    (void)state;
    /* All 81 policies, three at a time on one field pattern per index. */
    esim_policy all[81];
    for (int i = 0; i < 81; i++) {
        int x = i;
        for (int f = 0; f < 4; f++) {
            *slot(&all[i], f) = all_tri[x % 3];
            x /= 3;
        }
    }
    for (int i = 0; i < 81; i++) {
        for (int j = 0; j < 81; j++) {
            esim_policy ab = all[i], ba = all[j];
            esim_policy_merge(&ab, &all[j]);
            esim_policy_merge(&ba, &all[i]);
            assert_memory_equal(&ab, &ba, sizeof ab);
            int k = (i * 7 + j) % 81;
            esim_policy left = ab, bc = all[j], right = all[i];
            esim_policy_merge(&left, &all[k]);
            esim_policy_merge(&bc, &all[k]);
            esim_policy_merge(&right, &bc);
            assert_memory_equal(&left, &right, sizeof left);
        }
    }
    esim_policy p = all[40];
    esim_policy_merge(&p, NULL);
    esim_policy_merge(NULL, &p);
    assert_memory_equal(&p, &all[40], sizeof p);
}

static void test_is_empty(void **state)
{
    (void)state;
    esim_policy p = {0};
    assert_true(esim_policy_is_empty(&p));
    assert_true(esim_policy_is_empty(NULL));
    for (int f = 0; f < 4; f++) {
        esim_policy q = {0};
        *slot(&q, f) = ESIM_TRI_FALSE;
        assert_false(esim_policy_is_empty(&q));
    }
}

/* ---- payload and profile ---------------------------------------------------- */

static const char *string_of(plist_t dict, const char *key)
{
    plist_t n = plist_dict_get_item(dict, key);
    if (!n || plist_get_node_type(n) != PLIST_STRING)
        return NULL;
    return plist_get_string_ptr(n, NULL);
}

static void test_payload_carries_only_set_keys(void **state)
{
    (void)state;
    for (int i = 0; i < 81; i++) {
        esim_policy p = {0};
        int x = i;
        for (int f = 0; f < 4; f++) {
            *slot(&p, f) = all_tri[x % 3];
            x /= 3;
        }
        plist_t payload = esim_policy_to_payload(&p, "com.example.esim.payload");
        assert_non_null(payload);
        assert_string_equal(string_of(payload, "PayloadType"), "com.apple.applicationaccess");
        assert_string_equal(string_of(payload, "PayloadIdentifier"), "com.example.esim.payload");
        assert_true(esim_uuid_valid(string_of(payload, "PayloadUUID")));
        for (int f = 0; f < 4; f++) {
            plist_t n = plist_dict_get_item(payload, fields[f].apple_key);
            if (*slot(&p, f) == ESIM_TRI_UNSET) {
                assert_null(n);
                continue;
            }
            assert_non_null(n);
            assert_int_equal(plist_get_node_type(n), PLIST_BOOLEAN);
            uint8_t b = 0;
            plist_get_bool_val(n, &b);
            assert_int_equal(b != 0, *slot(&p, f) == ESIM_TRI_TRUE);
        }
        esim_policy back = {0};
        assert_int_equal(esim_policy_from_payload(payload, &back, NULL), ESIM_OK);
        assert_memory_equal(&back, &p, sizeof p);
        plist_free(payload);
    }
    esim_policy p = {ESIM_TRI_FALSE, 0, 0, 0};
    plist_t payload = esim_policy_to_payload(&p, NULL);
    assert_non_null(payload);
    assert_string_equal(string_of(payload, "PayloadIdentifier"),
                        ESIM_POLICY_DEFAULT_IDENTIFIER ".applicationaccess");
    plist_free(payload);
    assert_null(esim_policy_to_payload(NULL, "x"));
}

static void test_from_payload_refusals(void **state)
{
    (void)state;
    esim_policy out = {ESIM_TRI_TRUE, ESIM_TRI_TRUE, ESIM_TRI_TRUE, ESIM_TRI_TRUE};
    esim_policy before = out;
    esim_error err = {{0}};
    for (int f = 0; f < 4; f++) {
        plist_t d = plist_new_dict();
        plist_dict_set_item(d, "allowESIMModification", plist_new_bool(0));
        plist_dict_set_item(d, fields[f].apple_key, plist_new_string("false"));
        assert_int_equal(esim_policy_from_payload(d, &out, &err), ESIM_EINVAL);
        assert_non_null(strstr(err.msg, fields[f].apple_key));
        assert_memory_equal(&out, &before, sizeof out);
        plist_free(d);
    }
    plist_t arr = plist_new_array();
    assert_int_equal(esim_policy_from_payload(arr, &out, &err), ESIM_EINVAL);
    plist_free(arr);
    assert_int_equal(esim_policy_from_payload(NULL, &out, &err), ESIM_EINVAL);
    plist_t d = plist_new_dict();
    assert_int_equal(esim_policy_from_payload(d, NULL, &err), ESIM_EINVAL);
    /* Other keys are ignored, absent keys read as unset. */
    plist_dict_set_item(d, "allowCamera", plist_new_string("not ours"));
    plist_dict_set_item(d, "forcePreserveESIMOnErase", plist_new_bool(1));
    assert_int_equal(esim_policy_from_payload(d, &out, &err), ESIM_OK);
    esim_policy want = {ESIM_TRI_UNSET, ESIM_TRI_TRUE, ESIM_TRI_UNSET, ESIM_TRI_UNSET};
    assert_memory_equal(&out, &want, sizeof out);
    plist_free(d);
}

/* Parses a profile back as a device would and returns its one payload's policy. */
static void read_profile_policy(const esim_buf *profile, bool want_signed, const char *identifier,
                                esim_policy *policy)
{
    plist_t root = NULL;
    bool was_signed = !want_signed;
    esim_error err = {{0}};
    assert_int_equal(
        esim_profile_parse(profile->data, profile->len, NULL, &root, &was_signed, &err), ESIM_OK);
    assert_int_equal(was_signed, want_signed);
    assert_string_equal(string_of(root, "PayloadType"), "Configuration");
    assert_string_equal(string_of(root, "PayloadIdentifier"), identifier);
    plist_t content = plist_dict_get_item(root, "PayloadContent");
    assert_non_null(content);
    assert_int_equal(plist_get_node_type(content), PLIST_ARRAY);
    assert_int_equal(plist_array_get_size(content), 1);
    plist_t payload = plist_array_get_item(content, 0);
    assert_string_equal(string_of(payload, "PayloadType"), "com.apple.applicationaccess");
    char want_id[300];
    snprintf(want_id, sizeof want_id, "%s.applicationaccess", identifier);
    assert_string_equal(string_of(payload, "PayloadIdentifier"), want_id);
    assert_int_equal(esim_policy_from_payload(payload, policy, &err), ESIM_OK);
    plist_free(root);
}

static void test_profile_round_trip(void **state)
{
    (void)state;
    esim_policy p = {ESIM_TRI_FALSE, ESIM_TRI_TRUE, ESIM_TRI_UNSET, ESIM_TRI_TRUE};
    esim_profile_opts opts = {.identifier = "com.example.esim", .organization = "Example"};
    esim_buf out = {0};
    esim_error err = {{0}};
    assert_int_equal(esim_policy_to_profile(&p, &opts, NULL, &out, &err), ESIM_OK);
    assert_non_null(strstr((const char *)out.data, "<plist"));
    esim_policy back;
    read_profile_policy(&out, false, "com.example.esim", &back);
    assert_memory_equal(&back, &p, sizeof p);

    /* NULL opts: the default identifier; *out is replaced, not appended to. */
    assert_int_equal(esim_policy_to_profile(&p, NULL, NULL, &out, &err), ESIM_OK);
    read_profile_policy(&out, false, ESIM_POLICY_DEFAULT_IDENTIFIER, &back);
    assert_memory_equal(&back, &p, sizeof p);
    esim_buf_free(&out);
}

static void test_profile_signed(void **state)
{
    (void)state;
    esim_cert_spec spec = {.common_name = "esim-mdm test profile signer",
                           .key_type = ESIM_KEY_EC_P256};
    esim_cert signer = {0};
    esim_error err = {{0}};
    assert_int_equal(esim_cert_issue(&spec, NULL, &signer, &err), ESIM_OK);
    esim_policy p = {ESIM_TRI_UNSET, ESIM_TRI_TRUE, ESIM_TRI_FALSE, ESIM_TRI_UNSET};
    esim_profile_opts opts = {.identifier = "com.example.signed"};
    esim_buf out = {0};
    assert_int_equal(esim_policy_to_profile(&p, &opts, &signer, &out, &err), ESIM_OK);
    assert_true(out.len > 0 && out.data[0] == 0x30); /* DER SEQUENCE */
    esim_policy back;
    read_profile_policy(&out, true, "com.example.signed", &back);
    assert_memory_equal(&back, &p, sizeof p);

    /* A signer without its key is refused and *out is left alone. */
    esim_cert no_key = {signer.x509, NULL};
    unsigned char *kept = out.data;
    size_t kept_len = out.len;
    assert_int_equal(esim_policy_to_profile(&p, &opts, &no_key, &out, &err), ESIM_EINVAL);
    assert_ptr_equal(out.data, kept);
    assert_int_equal(out.len, kept_len);
    esim_buf_free(&out);
    esim_cert_clear(&signer);
}

static void test_profile_refusals(void **state)
{
    (void)state;
    esim_policy empty = {0};
    esim_policy p = {ESIM_TRI_FALSE, 0, 0, 0};
    esim_buf out = {0};
    esim_error err = {{0}};
    assert_int_equal(esim_policy_to_profile(&empty, NULL, NULL, &out, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "sets nothing"));
    assert_null(out.data);
    assert_int_equal(esim_policy_to_profile(NULL, NULL, NULL, &out, &err), ESIM_EINVAL);
    assert_int_equal(esim_policy_to_profile(&p, NULL, NULL, NULL, &err), ESIM_EINVAL);
    char long_id[260];
    memset(long_id, 'a', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    esim_profile_opts opts = {.identifier = long_id};
    assert_int_equal(esim_policy_to_profile(&p, &opts, NULL, &out, &err), ESIM_EINVAL);
    assert_null(out.data);
    /* A value outside the enum (a caller's uninitialised memory) is refused. */
    esim_policy garbage = {ESIM_TRI_FALSE, (esim_tri)5, ESIM_TRI_UNSET, ESIM_TRI_UNSET};
    assert_int_equal(esim_policy_to_profile(&garbage, NULL, NULL, &out, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "forcePreserveESIMOnErase"));
    assert_null(out.data);
}

/* ---- OS versions and applicability ------------------------------------------ */

static void test_os_version_parse(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int major, minor, patch;
    } good[] = {{"17.2", 17, 2, 0},
                {"18", 18, 0, 0},
                {"12.1.4", 12, 1, 4},
                {"0", 0, 0, 0},
                {"9999.9999.9999", 9999, 9999, 9999},
                {"11.0", 11, 0, 0}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        esim_os_version v;
        assert_int_equal(esim_os_version_parse(good[i].s, &v, NULL), ESIM_OK);
        assert_int_equal(v.major, good[i].major);
        assert_int_equal(v.minor, good[i].minor);
        assert_int_equal(v.patch, good[i].patch);
    }
    static const char *const bad[] = {"",      "17.",   ".17",   "v17",   "17.2.1.0",
                                      "17..2", "17.2a", " 17.2", "17.2 ", "-1",
                                      "10000", "17.x",  "iOS 17"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        esim_os_version v = {1, 2, 3};
        esim_error err = {{0}};
        assert_int_equal(esim_os_version_parse(bad[i], &v, &err), ESIM_EINVAL);
        assert_true(v.major == 1 && v.minor == 2 && v.patch == 3);
        assert_true(err.msg[0] != '\0');
    }
    esim_os_version v;
    assert_int_equal(esim_os_version_parse(NULL, &v, NULL), ESIM_EINVAL);
    assert_int_equal(esim_os_version_parse("1", NULL, NULL), ESIM_EINVAL);
}

static void test_os_version_cmp(void **state)
{
    (void)state;
    esim_os_version a = {17, 2, 0}, b = {17, 10, 0}, c = {18, 0, 0}, d = {17, 2, 1};
    assert_true(esim_os_version_cmp(a, b) < 0);
    assert_true(esim_os_version_cmp(b, a) > 0);
    assert_true(esim_os_version_cmp(b, c) < 0);
    assert_true(esim_os_version_cmp(a, d) < 0);
    assert_true(esim_os_version_cmp(d, a) > 0);
    assert_int_equal(esim_os_version_cmp(a, a), 0);
}

/* For each key: its minimum, a version just below, and the expected reasons. */
static void test_ignored_keys_every_combination(void **state)
{
    (void)state;
    static const struct {
        const char *min, *below, *above;
    } versions[4] = {
        {"12.1", "12.0.9", "12.1.1"},
        {"17.2", "17.1.2", "17.3"},
        {"18.0", "17.7", "18.0.1"},
        {"11.0", "10.3.4", "11.1"},
    };
    for (int f = 0; f < 4; f++) {
        for (int value = 1; value < 3; value++) {
            esim_policy p = {0};
            *slot(&p, f) = all_tri[value];
            const char *os_list[4] = {versions[f].min, versions[f].below, versions[f].above,
                                      "26.1"};
            for (int o = 0; o < 4; o++) {
                for (int sup = 0; sup < 2; sup++) {
                    esim_ignored_key out[4];
                    memset(out, 0, sizeof out);
                    size_t n = esim_policy_ignored_keys(&p, os_list[o], sup, out);
                    bool too_old = o == 1;
                    bool ignored = !sup || too_old;
                    assert_int_equal(n, ignored ? 1 : 0);
                    esim_policy eff = esim_policy_effective(&p, os_list[o], sup);
                    assert_int_equal(*slot(&eff, f), ignored ? ESIM_TRI_UNSET : all_tri[value]);
                    if (!ignored)
                        continue;
                    assert_string_equal(out[0].key, fields[f].apple_key);
                    if (!sup)
                        assert_non_null(strstr(out[0].reason, "supervised"));
                    else
                        assert_null(strstr(out[0].reason, "supervised"));
                    if (too_old) {
                        char want[96];
                        snprintf(want, sizeof want, "iOS %s or later (device has %s)",
                                 versions[f].min, versions[f].below);
                        assert_non_null(strstr(out[0].reason, want));
                    } else {
                        assert_null(strstr(out[0].reason, "iOS"));
                    }
                }
            }
        }
    }
}

static void test_ignored_keys_all_four(void **state)
{
    (void)state;
    esim_policy p = {ESIM_TRI_FALSE, ESIM_TRI_TRUE, ESIM_TRI_FALSE, ESIM_TRI_FALSE};
    esim_ignored_key out[4];
    /* iOS 17.1 supervised: forcePreserve (17.2) and outgoing transfers (18.0). */
    size_t n = esim_policy_ignored_keys(&p, "17.1", true, out);
    assert_int_equal(n, 2);
    assert_string_equal(out[0].key, "forcePreserveESIMOnErase");
    assert_string_equal(out[0].reason, "needs iOS 17.2 or later (device has 17.1)");
    assert_string_equal(out[1].key, "allowESIMOutgoingTransfers");
    assert_string_equal(out[1].reason, "needs iOS 18.0 or later (device has 17.1)");
    esim_policy eff = esim_policy_effective(&p, "17.1", true);
    esim_policy want = {ESIM_TRI_FALSE, ESIM_TRI_UNSET, ESIM_TRI_UNSET, ESIM_TRI_FALSE};
    assert_memory_equal(&eff, &want, sizeof eff);

    /* Unsupervised on an old OS: all four, in struct order, both reasons. */
    n = esim_policy_ignored_keys(&p, "10.3", false, out);
    assert_int_equal(n, 4);
    for (int f = 0; f < 4; f++) {
        assert_string_equal(out[f].key, fields[f].apple_key);
        assert_non_null(strstr(out[f].reason, "supervised device and iOS"));
    }
    eff = esim_policy_effective(&p, "10.3", false);
    assert_true(esim_policy_is_empty(&eff));

    /* Unknown version: only supervision can be judged. */
    assert_int_equal(esim_policy_ignored_keys(&p, NULL, true, out), 0);
    assert_int_equal(esim_policy_ignored_keys(&p, "not a version", true, out), 0);
    assert_int_equal(esim_policy_ignored_keys(&p, NULL, false, out), 4);
    assert_string_equal(out[0].reason, "needs a supervised device");

    /* Unset keys are never reported; NULLs are harmless. */
    esim_policy empty = {0};
    assert_int_equal(esim_policy_ignored_keys(&empty, "9.0", false, out), 0);
    assert_int_equal(esim_policy_ignored_keys(NULL, "9.0", false, out), 0);
    assert_int_equal(esim_policy_ignored_keys(&p, "9.0", false, NULL), 0);
    eff = esim_policy_effective(NULL, "18.0", true);
    assert_true(esim_policy_is_empty(&eff));
}

/* ---- Windows eUICCs CSP ---------------------------------------------------- */

typedef struct {
    xmlDocPtr doc;
    xmlXPathContextPtr xpath;
} syncml_doc;

/* libxml2 parses strictly: any well-formedness error yields NULL. No
 * network, no entity expansion. */
static void parse_syncml(const esim_buf *b, syncml_doc *out)
{
    out->doc = xmlReadMemory((const char *)b->data, (int)b->len, "syncml.xml", NULL,
                             XML_PARSE_NONET | XML_PARSE_NOBLANKS);
    assert_non_null(out->doc);
    out->xpath = xmlXPathNewContext(out->doc);
    assert_non_null(out->xpath);
    assert_int_equal(xmlXPathRegisterNs(out->xpath, BAD_CAST "s", BAD_CAST "SYNCML:SYNCML1.2"), 0);
    assert_int_equal(xmlXPathRegisterNs(out->xpath, BAD_CAST "m", BAD_CAST "syncml:metinf"), 0);
}

static void free_syncml(syncml_doc *d)
{
    xmlXPathFreeContext(d->xpath);
    xmlFreeDoc(d->doc);
}

/* The text of every node matching |expr|, joined by '\n' into |out|. */
static void xpath_texts(syncml_doc *d, const char *expr, char *out, size_t out_len)
{
    xmlXPathObjectPtr r = xmlXPathEvalExpression(BAD_CAST expr, d->xpath);
    assert_non_null(r);
    out[0] = '\0';
    size_t used = 0;
    int n = r->nodesetval ? r->nodesetval->nodeNr : 0;
    for (int i = 0; i < n; i++) {
        xmlChar *t = xmlNodeGetContent(r->nodesetval->nodeTab[i]);
        int w = snprintf(out + used, out_len - used, "%s%s", i ? "\n" : "", (const char *)t);
        xmlFree(t);
        assert_true(w >= 0 && (size_t)w < out_len - used);
        used += (size_t)w;
    }
    xmlXPathFreeObject(r);
}

static double xpath_number(syncml_doc *d, const char *expr)
{
    xmlXPathObjectPtr r = xmlXPathEvalExpression(BAD_CAST expr, d->xpath);
    assert_non_null(r);
    double v = xmlXPathCastToNumber(r);
    xmlXPathFreeObject(r);
    return v;
}

static void test_syncml_full_document(void **state)
{
    (void)state;
    esim_windows_csp csp = {.eid = VALID_EID,
                            .server = "smdp.example.com",
                            .auto_enable = true,
                            .discovery_server = false,
                            .local_ui_enabled = ESIM_TRI_FALSE,
                            .reset_to_factory = true};
    esim_buf out = {0};
    esim_error err = {{0}};
    assert_int_equal(esim_windows_csp_syncml(&csp, &out, &err), ESIM_OK);
    syncml_doc d;
    parse_syncml(&out, &d);

    char text[2048];
    xpath_texts(&d, "/s:SyncML/s:SyncBody/*/s:Item/s:Target/s:LocURI", text, sizeof text);
    assert_string_equal(text,
                        EUICC_ROOT "Actions/ResetToFactoryState\n" EUICC_ROOT
                                   "DownloadServers/smdp.example.com/AutoEnable\n" EUICC_ROOT
                                   "DownloadServers/smdp.example.com/IsDiscoveryServer\n" EUICC_ROOT
                                   "Policies/LocalUIEnabled");
    /* The verbs, in order. */
    xpath_texts(&d, "/s:SyncML/s:SyncBody/s:Exec/s:Item/s:Target/s:LocURI", text, sizeof text);
    assert_string_equal(text, EUICC_ROOT "Actions/ResetToFactoryState");
    xpath_texts(&d, "/s:SyncML/s:SyncBody/s:Add/s:Item/s:Data", text, sizeof text);
    assert_string_equal(text, "true\nfalse");
    xpath_texts(&d, "/s:SyncML/s:SyncBody/s:Replace/s:Item/s:Data", text, sizeof text);
    assert_string_equal(text, "false");
    /* CmdIDs 1..3 in document order, each command has exactly one. */
    xpath_texts(&d, "/s:SyncML/s:SyncBody/*/s:CmdID", text, sizeof text);
    assert_string_equal(text, "1\n2\n3");
    assert_true(xpath_number(&d, "count(/s:SyncML/s:SyncBody/*[not(self::s:Final)])") == 3);
    assert_true(xpath_number(&d, "count(/s:SyncML/s:SyncBody/s:Final)") == 1);
    /* Every boolean carries its Format in the metinf namespace; Exec has none. */
    assert_true(xpath_number(&d, "count(//s:Item[s:Data])") == 3);
    assert_true(xpath_number(&d, "count(//s:Item[s:Data]/s:Meta/m:Format[.='bool'])") == 3);
    assert_true(xpath_number(&d, "count(//s:Exec/s:Item/s:Meta)") == 0);
    free_syncml(&d);
    esim_buf_free(&out);
}

static void test_syncml_minimal_documents(void **state)
{
    (void)state;
    esim_error err = {{0}};
    char text[1024];

    /* A server alone: AutoEnable false and IsDiscoveryServer as given. */
    esim_windows_csp csp = {
        .eid = VALID_EID, .server = "smds.example.net", .discovery_server = true};
    esim_buf out = {0};
    assert_int_equal(esim_windows_csp_syncml(&csp, &out, &err), ESIM_OK);
    syncml_doc d;
    parse_syncml(&out, &d);
    xpath_texts(&d, "/s:SyncML/s:SyncBody/s:Add/s:Item/s:Target/s:LocURI", text, sizeof text);
    assert_string_equal(text, EUICC_ROOT "DownloadServers/smds.example.net/AutoEnable\n" EUICC_ROOT
                                         "DownloadServers/smds.example.net/IsDiscoveryServer");
    xpath_texts(&d, "/s:SyncML/s:SyncBody/s:Add/s:Item/s:Data", text, sizeof text);
    assert_string_equal(text, "false\ntrue");
    assert_true(xpath_number(&d, "count(//s:Exec|//s:Replace)") == 0);
    free_syncml(&d);

    /* Only the local UI back on (no AutoEnable needed to enable it). */
    esim_windows_csp ui = {.eid = VALID_EID, .local_ui_enabled = ESIM_TRI_TRUE};
    assert_int_equal(esim_windows_csp_syncml(&ui, &out, &err), ESIM_OK);
    parse_syncml(&out, &d);
    xpath_texts(&d, "/s:SyncML/s:SyncBody/s:Replace/s:Item/s:Target/s:LocURI", text, sizeof text);
    assert_string_equal(text, EUICC_ROOT "Policies/LocalUIEnabled");
    xpath_texts(&d, "//s:Replace/s:CmdID", text, sizeof text);
    assert_string_equal(text, "1");
    free_syncml(&d);

    /* Only a factory reset. */
    esim_windows_csp reset = {.eid = VALID_EID, .reset_to_factory = true};
    assert_int_equal(esim_windows_csp_syncml(&reset, &out, &err), ESIM_OK);
    parse_syncml(&out, &d);
    xpath_texts(&d, "//s:LocURI", text, sizeof text);
    assert_string_equal(text, EUICC_ROOT "Actions/ResetToFactoryState");
    free_syncml(&d);
    esim_buf_free(&out);
}

static void test_syncml_refusals(void **state)
{
    (void)state;
    static const struct {
        esim_windows_csp csp;
        const char *message_part;
    } cases[] = {
        {{.eid = NULL, .reset_to_factory = true}, "EID"},
        {{.eid = "89882119900000000000000000001600", .reset_to_factory = true}, "EID"},
        {{.eid = "8988211990000000000000000000165", .reset_to_factory = true}, "EID"},
        {{.eid = "8988211990000000000000000000165x", .reset_to_factory = true}, "EID"},
        {{.eid = VALID_EID, .server = "smdp example.com"}, "server"},
        {{.eid = VALID_EID, .server = "smdp.example.com/<x>"}, "server"},
        {{.eid = VALID_EID, .server = ""}, "server"},
        {{.eid = VALID_EID, .auto_enable = true}, "server"},
        {{.eid = VALID_EID, .discovery_server = true, .reset_to_factory = true}, "server"},
        {{.eid = VALID_EID}, "nothing to do"},
        {{.eid = VALID_EID, .local_ui_enabled = ESIM_TRI_FALSE}, "AutoEnable"},
        {{.eid = VALID_EID, .server = "smdp.example.com", .local_ui_enabled = ESIM_TRI_FALSE},
         "AutoEnable"},
        {{.eid = VALID_EID, .local_ui_enabled = (esim_tri)7}, "LocalUIEnabled"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        esim_buf out = {0};
        esim_error err = {{0}};
        assert_int_equal(esim_windows_csp_syncml(&cases[i].csp, &out, &err), ESIM_EINVAL);
        assert_null(out.data);
        if (!strstr(err.msg, cases[i].message_part))
            fail_msg("case %zu: '%s' does not mention '%s'", i, err.msg, cases[i].message_part);
    }
    esim_buf out = {0};
    assert_int_equal(esim_windows_csp_syncml(NULL, &out, NULL), ESIM_EINVAL);
    esim_windows_csp ok = {.eid = VALID_EID, .reset_to_factory = true};
    assert_int_equal(esim_windows_csp_syncml(&ok, NULL, NULL), ESIM_EINVAL);
}

static void test_syncml_replaces_output(void **state)
{
    (void)state;
    esim_buf out = {0};
    assert_int_equal(esim_buf_append_str(&out, "stale bytes"), ESIM_OK);
    esim_windows_csp ok = {.eid = VALID_EID, .reset_to_factory = true};
    assert_int_equal(esim_windows_csp_syncml(&ok, &out, NULL), ESIM_OK);
    assert_null(strstr((const char *)out.data, "stale"));
    assert_int_equal(strncmp((const char *)out.data, "<?xml", 5), 0);
    esim_buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_word_accepts_documented_words),
        cmocka_unit_test(test_set_word_refusals_change_nothing),
        cmocka_unit_test(test_merge_every_pair_of_values),
        cmocka_unit_test(test_merge_spelled_out),
        cmocka_unit_test(test_merge_is_commutative_and_associative),
        cmocka_unit_test(test_is_empty),
        cmocka_unit_test(test_payload_carries_only_set_keys),
        cmocka_unit_test(test_from_payload_refusals),
        cmocka_unit_test(test_profile_round_trip),
        cmocka_unit_test(test_profile_signed),
        cmocka_unit_test(test_profile_refusals),
        cmocka_unit_test(test_os_version_parse),
        cmocka_unit_test(test_os_version_cmp),
        cmocka_unit_test(test_ignored_keys_every_combination),
        cmocka_unit_test(test_ignored_keys_all_four),
        cmocka_unit_test(test_syncml_full_document),
        cmocka_unit_test(test_syncml_minimal_documents),
        cmocka_unit_test(test_syncml_refusals),
        cmocka_unit_test(test_syncml_replaces_output),
    };
    xmlInitParser();
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    xmlCleanupParser();
    return failed;
}
