/*
 * test_sim_euicc.c — the virtual eUICC: its certificate, every profile rule of
 * PROTOCOLS.md §5 (one enabled, PPR1/PPR2, delete only disabled, memory
 * reset), notifications, and persistence across a restart.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "tests/sim/sim_test.h"

typedef struct {
    char *dir;
    sim_pki *pki;
} fixture;

static fixture fx; /* per-process test fixture (tests/ may keep state) */

static int setup_all(void **state)
{
    (void)state;
    fx.dir = st_tempdir();
    char pkidir[512];
    snprintf(pkidir, sizeof pkidir, "%s/pki", fx.dir);
    esim_error err;
    if (sim_pki_open(pkidir, &fx.pki, &err) != ESIM_OK) {
        fprintf(stderr, "pki: %s\n", err.msg);
        return -1;
    }
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

static sim_euicc *new_euicc(unsigned n)
{
    char eid[ESIM_EID_LEN + 1];
    st_eid(n, eid);
    sim_euicc *e = NULL;
    esim_error err;
    assert_int_equal(sim_euicc_new(fx.pki, eid, &e, &err), ESIM_OK);
    return e;
}

static sim_profile profile(unsigned n, sim_profile_class c, unsigned ppr)
{
    sim_profile p = {0};
    st_iccid(n, p.iccid);
    p.profile_class = c;
    p.ppr = ppr;
    snprintf(p.service_provider, sizeof p.service_provider, "Operator %u", n);
    snprintf(p.smdp_address, sizeof p.smdp_address, "127.0.0.1:1");
    return p;
}

static void install(sim_euicc *e, const sim_profile *p)
{
    sim_result r;
    assert_int_equal(sim_euicc_install(e, p, &r, NULL), ESIM_OK);
    assert_int_equal(r, SIM_RES_OK);
}

static const sim_notification *last_notif(sim_euicc *e)
{
    size_t n = sim_euicc_notification_count(e);
    assert_true(n > 0);
    return sim_euicc_notification_at(e, n - 1);
}

static void test_identity_and_certificate(void **state)
{
    (void)state;
    sim_euicc *e = NULL;
    esim_error err;
    assert_int_equal(sim_euicc_new(fx.pki, "89049032000000000000000000000000", &e, &err),
                     ESIM_EINVAL);
    assert_null(e);
    assert_int_equal(sim_euicc_new(fx.pki, "12345", &e, &err), ESIM_EINVAL);
    e = new_euicc(1);
    esim_buf cb = {0}, eb = {0};
    assert_int_equal(sim_euicc_cert_b64(e, &cb, &eb), ESIM_OK);
    X509 *cert = sim_x509_from_b64((const char *)cb.data, NULL);
    X509 *eum = sim_x509_from_b64((const char *)eb.data, NULL);
    assert_non_null(cert);
    char serial[64];
    assert_int_equal(esim_cert_subject_field(cert, NID_serialNumber, serial, sizeof serial),
                     ESIM_OK);
    assert_string_equal(serial, sim_euicc_eid(e));
    /* CI -> EUM -> eUICC, P-256, and the key inside matches the certificate. */
    assert_int_equal(sim_chain_verify(fx.pki->ci.x509, eum, cert, &err), ESIM_OK);
    assert_int_equal(EVP_PKEY_get_base_id(X509_get0_pubkey(cert)), EVP_PKEY_EC);
    unsigned char sig[64];
    assert_int_equal(sim_euicc_sign(e, "abc", 3, sig, NULL), ESIM_OK);
    assert_int_equal(sim_ecdsa_verify_raw(X509_get0_pubkey(cert), "abc", 3, sig, 64, NULL),
                     ESIM_OK);
    sig[10] ^= 1;
    assert_int_equal(sim_ecdsa_verify_raw(X509_get0_pubkey(cert), "abc", 3, sig, 64, NULL),
                     ESIM_ECRYPTO);
    X509_free(cert);
    X509_free(eum);
    esim_buf_free(&cb);
    esim_buf_free(&eb);
    sim_euicc_free(e);
}

static void test_install_rules(void **state)
{
    (void)state;
    sim_euicc *e = new_euicc(2);
    sim_profile a = profile(1, SIM_CLASS_OPERATIONAL, 0);
    a.state = SIM_PROFILE_ENABLED; /* ignored: a new profile arrives disabled */
    install(e, &a);
    assert_int_equal(sim_euicc_find(e, a.iccid)->state, SIM_PROFILE_DISABLED);
    assert_int_equal(last_notif(e)->event, SIM_NOTIF_INSTALL);
    assert_int_equal(last_notif(e)->seq, 1);

    sim_result r;
    assert_int_equal(sim_euicc_install(e, &a, &r, NULL), ESIM_OK);
    assert_int_equal(r, SIM_RES_ICCID_ALREADY_EXISTS);
    sim_profile bad = a;
    bad.iccid[5] ^= 1; /* Luhn digit no longer matches */
    esim_error err;
    assert_int_equal(sim_euicc_install(e, &bad, &r, &err), ESIM_EINVAL);
    assert_int_equal(sim_euicc_profile_count(e), 1);
    assert_int_equal(sim_euicc_notification_count(e), 1);

    for (unsigned i = 2; i <= SIM_MAX_PROFILES; i++) {
        sim_profile p = profile(i, SIM_CLASS_OPERATIONAL, 0);
        install(e, &p);
    }
    sim_profile over = profile(99, SIM_CLASS_OPERATIONAL, 0);
    assert_int_equal(sim_euicc_install(e, &over, &r, NULL), ESIM_OK);
    assert_int_equal(r, SIM_RES_INSUFFICIENT_MEMORY);
    assert_int_equal(sim_euicc_profile_count(e), SIM_MAX_PROFILES);
    sim_euicc_free(e);
}

static void test_enable_disable_delete(void **state)
{
    (void)state;
    sim_euicc *e = new_euicc(3);
    sim_profile a = profile(10, SIM_CLASS_OPERATIONAL, 0),
                b = profile(11, SIM_CLASS_OPERATIONAL, 0);
    install(e, &a);
    install(e, &b);
    char unknown[21];
    st_iccid(12, unknown);
    assert_int_equal(sim_euicc_enable(e, unknown), SIM_RES_ICCID_OR_AID_NOT_FOUND);
    assert_int_equal(sim_euicc_disable(e, unknown), SIM_RES_ICCID_OR_AID_NOT_FOUND);
    assert_int_equal(sim_euicc_delete(e, unknown), SIM_RES_ICCID_OR_AID_NOT_FOUND);
    assert_int_equal(sim_euicc_disable(e, a.iccid), SIM_RES_PROFILE_NOT_IN_ENABLED_STATE);

    assert_int_equal(sim_euicc_enable(e, a.iccid), SIM_RES_OK);
    assert_string_equal(sim_euicc_enabled(e)->iccid, a.iccid);
    assert_int_equal(sim_euicc_enable(e, a.iccid), SIM_RES_PROFILE_NOT_IN_DISABLED_STATE);
    assert_int_equal(sim_euicc_delete(e, a.iccid), SIM_RES_PROFILE_NOT_IN_DISABLED_STATE);

    /* Enabling B disables A: at most one enabled, both changes notified. */
    size_t before = sim_euicc_notification_count(e);
    assert_int_equal(sim_euicc_enable(e, b.iccid), SIM_RES_OK);
    assert_int_equal(sim_euicc_find(e, a.iccid)->state, SIM_PROFILE_DISABLED);
    assert_string_equal(sim_euicc_enabled(e)->iccid, b.iccid);
    assert_int_equal(sim_euicc_notification_count(e), before + 2);
    const sim_notification *d = sim_euicc_notification_at(e, before);
    assert_int_equal(d->event, SIM_NOTIF_DISABLE);
    assert_string_equal(d->iccid, a.iccid);
    assert_int_equal(last_notif(e)->event, SIM_NOTIF_ENABLE);

    assert_int_equal(sim_euicc_delete(e, a.iccid), SIM_RES_OK);
    assert_null(sim_euicc_find(e, a.iccid));
    assert_int_equal(last_notif(e)->event, SIM_NOTIF_DELETE);
    assert_int_equal(sim_euicc_disable(e, b.iccid), SIM_RES_OK);
    assert_null(sim_euicc_enabled(e));
    assert_int_equal(sim_euicc_delete(e, b.iccid), SIM_RES_OK);
    assert_int_equal(sim_euicc_profile_count(e), 0);
    sim_euicc_free(e);
}

static void test_policy_rules(void **state)
{
    (void)state;
    sim_euicc *e = new_euicc(4);
    sim_profile p1 = profile(20, SIM_CLASS_OPERATIONAL, SIM_PPR1);
    sim_profile p2 = profile(21, SIM_CLASS_OPERATIONAL, SIM_PPR2);
    sim_profile other = profile(22, SIM_CLASS_OPERATIONAL, 0);
    install(e, &p1);
    install(e, &p2);
    install(e, &other);
    assert_int_equal(sim_euicc_enable(e, p1.iccid), SIM_RES_OK);
    size_t n = sim_euicc_notification_count(e);
    /* PPR1: may not be disabled, neither directly nor by enabling another. */
    assert_int_equal(sim_euicc_disable(e, p1.iccid), SIM_RES_DISALLOWED_BY_POLICY);
    assert_int_equal(sim_euicc_enable(e, other.iccid), SIM_RES_DISALLOWED_BY_POLICY);
    assert_string_equal(sim_euicc_enabled(e)->iccid, p1.iccid);
    /* PPR2: may not be deleted. */
    assert_int_equal(sim_euicc_delete(e, p2.iccid), SIM_RES_DISALLOWED_BY_POLICY);
    assert_non_null(sim_euicc_find(e, p2.iccid));
    assert_int_equal(sim_euicc_notification_count(e), n); /* refusals change nothing */
    sim_euicc_free(e);
}

static void test_memory_reset(void **state)
{
    (void)state;
    sim_euicc *e = new_euicc(5);
    sim_profile op1 = profile(30, SIM_CLASS_OPERATIONAL, SIM_PPR1 | SIM_PPR2);
    sim_profile op2 = profile(31, SIM_CLASS_OPERATIONAL, 0);
    sim_profile test = profile(32, SIM_CLASS_TEST, 0);
    install(e, &op1);
    install(e, &op2);
    install(e, &test);
    assert_int_equal(sim_euicc_enable(e, op1.iccid), SIM_RES_OK);
    assert_int_equal(sim_euicc_memory_reset(e), 2);
    assert_int_equal(sim_euicc_profile_count(e), 1);
    assert_non_null(sim_euicc_find(e, test.iccid));
    assert_null(sim_euicc_enabled(e));
    assert_int_equal(last_notif(e)->event, SIM_NOTIF_DELETE);
    assert_int_equal(sim_euicc_memory_reset(e), 0);
    sim_euicc_free(e);
}

static void test_notifications(void **state)
{
    (void)state;
    sim_euicc *e = new_euicc(6);
    sim_profile a = profile(40, SIM_CLASS_OPERATIONAL, 0);
    install(e, &a);
    assert_int_equal(sim_euicc_enable(e, a.iccid), SIM_RES_OK);
    assert_int_equal(sim_euicc_disable(e, a.iccid), SIM_RES_OK);
    assert_int_equal(sim_euicc_delete(e, a.iccid), SIM_RES_OK);
    assert_int_equal(sim_euicc_notification_count(e), 4);
    sim_notif_event want[] = {SIM_NOTIF_INSTALL, SIM_NOTIF_ENABLE, SIM_NOTIF_DISABLE,
                              SIM_NOTIF_DELETE};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(sim_euicc_notification_at(e, i)->seq, i + 1);
        assert_int_equal(sim_euicc_notification_at(e, i)->event, want[i]);
        assert_string_equal(sim_euicc_notification_at(e, i)->smdp_address, "127.0.0.1:1");
    }
    /* Kept until confirmed; confirmation of one leaves the others. */
    assert_int_equal(sim_euicc_notification_remove(e, 2), ESIM_OK);
    assert_int_equal(sim_euicc_notification_remove(e, 2), ESIM_ENOTFOUND);
    assert_int_equal(sim_euicc_notification_count(e), 3);
    assert_int_equal(sim_euicc_notification_at(e, 1)->seq, 3);
    /* Sequence numbers never go back, even after removals. */
    sim_profile b = profile(41, SIM_CLASS_OPERATIONAL, 0);
    install(e, &b);
    assert_int_equal(last_notif(e)->seq, 5);
    assert_string_equal(sim_notif_event_name(SIM_NOTIF_DELETE), "delete");
    assert_string_equal(sim_result_name(SIM_RES_PROFILE_NOT_IN_DISABLED_STATE),
                        "profileNotInDisabledState");
    sim_euicc_free(e);
}

/* What an eUICC keeps between sessions (issue 17, the simulator's memory
 * per device): its credentials at their exact size, no room for
 * notifications once none is owed, no SM-DP+ address for auto-enable
 * unless one is set; behaviour as before. */
static void test_kept_memory(void **state)
{
    (void)state;
    sim_euicc *e = new_euicc(9);
    assert_int_equal(sim_euicc_heap_bytes(e), 0); /* credentials made on first use */
    const esim_buf *cert = NULL, *eum = NULL;
    assert_int_equal(sim_euicc_cert_der(e, &cert, &eum, NULL), ESIM_OK);
    size_t creds = sim_euicc_heap_bytes(e);
    /* the certificate and its terminator, and a P-256 ECPrivateKey (121 bytes) */
    assert_int_equal(cert->cap, cert->len + 1);
    assert_in_range(creds - cert->cap, 100, 140);
    sim_profile a = profile(60, SIM_CLASS_OPERATIONAL, 0);
    install(e, &a);
    size_t with_notif = sim_euicc_heap_bytes(e);
    assert_int_equal(with_notif, creds + sizeof(sim_profile) + sizeof(sim_notification));
    assert_int_equal(sim_euicc_notification_remove(e, last_notif(e)->seq), ESIM_OK);
    assert_int_equal(sim_euicc_notification_count(e), 0);
    assert_int_equal(sim_euicc_heap_bytes(e), creds + sizeof(sim_profile));
    /* Owing again after none was owed: the next sequence number, kept. */
    assert_int_equal(sim_euicc_enable(e, a.iccid), SIM_RES_OK);
    assert_int_equal(sim_euicc_notification_count(e), 1);
    assert_int_equal(last_notif(e)->seq, 2);
    assert_int_equal(last_notif(e)->event, SIM_NOTIF_ENABLE);
    /* The signature still verifies with the fitted key and certificate. */
    esim_buf c1 = {0};
    assert_int_equal(sim_euicc_cert_b64(e, &c1, NULL), ESIM_OK);

    /* Auto-enable's SM-DP+ address: "" when off, at most 255 bytes, and
     * through a save and load. */
    assert_string_equal(sim_euicc_auto_enable_smdp(e), "");
    char longer[300];
    memset(longer, 'a', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    sim_euicc_set_auto_enable(e, true, longer);
    assert_int_equal(strlen(sim_euicc_auto_enable_smdp(e)), 255);
    sim_euicc_set_auto_enable(e, true, "smdp.example.com");
    assert_true(sim_euicc_auto_enable(e));
    assert_string_equal(sim_euicc_auto_enable_smdp(e), "smdp.example.com");
    char path[600];
    snprintf(path, sizeof path, "%s/euicc9.json", fx.dir);
    esim_error err;
    assert_int_equal(sim_euicc_save(e, path, &err), ESIM_OK);
    sim_euicc *r = NULL;
    assert_int_equal(sim_euicc_load(fx.pki, path, &r, &err), ESIM_OK);
    assert_true(sim_euicc_auto_enable(r));
    assert_string_equal(sim_euicc_auto_enable_smdp(r), "smdp.example.com");
    esim_buf c2 = {0};
    assert_int_equal(sim_euicc_cert_b64(r, &c2, NULL), ESIM_OK);
    assert_string_equal(c1.data, c2.data);
    sim_euicc_set_auto_enable(r, false, NULL);
    assert_false(sim_euicc_auto_enable(r));
    assert_string_equal(sim_euicc_auto_enable_smdp(r), "");
    esim_buf_free(&c1);
    esim_buf_free(&c2);
    sim_euicc_free(r);
    sim_euicc_free(e);
}

static void test_persistence(void **state)
{
    (void)state;
    sim_euicc *e = new_euicc(7);
    sim_profile a = profile(50, SIM_CLASS_OPERATIONAL, SIM_PPR2),
                b = profile(51, SIM_CLASS_TEST, 0);
    snprintf(a.nickname, sizeof a.nickname, "Work line");
    install(e, &a);
    install(e, &b);
    assert_int_equal(sim_euicc_enable(e, a.iccid), SIM_RES_OK);
    assert_int_equal(sim_euicc_notification_remove(e, 1), ESIM_OK);
    assert_true(sim_euicc_dirty(e));
    char path[600];
    snprintf(path, sizeof path, "%s/euicc7.json", fx.dir);
    esim_error err;
    esim_buf c1 = {0}, c2 = {0};
    sim_euicc_cert_b64(e, &c1, NULL); /* the credentials exist from first use on */
    assert_int_equal(sim_euicc_save(e, path, &err), ESIM_OK);
    assert_false(sim_euicc_dirty(e));
    char eid[33];
    strcpy(eid, sim_euicc_eid(e));
    sim_euicc_free(e); /* the "restart" */

    sim_euicc *r = NULL;
    assert_int_equal(sim_euicc_load(fx.pki, path, &r, &err), ESIM_OK);
    assert_string_equal(sim_euicc_eid(r), eid);
    assert_int_equal(sim_euicc_profile_count(r), 2);
    assert_string_equal(sim_euicc_enabled(r)->iccid, a.iccid);
    assert_string_equal(sim_euicc_find(r, a.iccid)->nickname, "Work line");
    assert_int_equal(sim_euicc_find(r, a.iccid)->ppr, SIM_PPR2);
    assert_int_equal(sim_euicc_find(r, b.iccid)->profile_class, SIM_CLASS_TEST);
    assert_int_equal(sim_euicc_notification_count(r), 2);
    sim_euicc_cert_b64(r, &c2, NULL);
    assert_string_equal(c1.data, c2.data);
    /* The key survived: it still signs for the same certificate. */
    X509 *cert = sim_x509_from_b64((const char *)c2.data, NULL);
    unsigned char sig[64];
    assert_int_equal(sim_euicc_sign(r, "x", 1, sig, NULL), ESIM_OK);
    assert_int_equal(sim_ecdsa_verify_raw(X509_get0_pubkey(cert), "x", 1, sig, 64, NULL), ESIM_OK);
    X509_free(cert);
    assert_int_equal(sim_euicc_disable(r, a.iccid), SIM_RES_OK);
    assert_int_equal(last_notif(r)->seq, 4); /* continues after 1..3 */
    esim_buf_free(&c1);
    esim_buf_free(&c2);
    sim_euicc_free(r);

    /* A never-used eUICC is saved without credentials and makes them on first use. */
    sim_euicc *fresh = new_euicc(8);
    char path2[600];
    snprintf(path2, sizeof path2, "%s/euicc8.json", fx.dir);
    assert_int_equal(sim_euicc_save(fresh, path2, &err), ESIM_OK);
    sim_euicc_free(fresh);
    assert_int_equal(sim_euicc_load(fx.pki, path2, &fresh, &err), ESIM_OK);
    esim_buf c3 = {0};
    assert_int_equal(sim_euicc_cert_b64(fresh, &c3, NULL), ESIM_OK);
    X509 *x3 = sim_x509_from_b64((const char *)c3.data, NULL);
    assert_int_equal(sim_chain_verify(fx.pki->ci.x509, fx.pki->eum.x509, x3, &err), ESIM_OK);
    assert_true(sim_euicc_dirty(fresh)); /* new credentials must be saved */
    X509_free(x3);
    esim_buf_free(&c3);
    sim_euicc_free(fresh);

    assert_int_equal(sim_euicc_load(fx.pki, "/nonexistent/e.json", &r, &err), ESIM_ENOTFOUND);
    /* A damaged file is refused with a reason, never half-loaded. */
    json_t *j = NULL;
    assert_int_equal(sim_json_load(path, 1 << 20, &j, &err), ESIM_OK);
    json_t *profiles = json_object_get(j, "profiles");
    json_object_set_new(json_array_get(profiles, 1), "state", json_string("enabled"));
    assert_int_equal(sim_json_save(j, path, 0600, &err), ESIM_OK);
    r = NULL;
    assert_int_equal(sim_euicc_load(fx.pki, path, &r, &err), ESIM_EINVAL);
    assert_null(r);
    assert_non_null(strstr(err.msg, "enabled"));
    json_object_set_new(j, "eid", json_string("89049032000000000000000000000000"));
    assert_int_equal(sim_json_save(j, path, 0600, &err), ESIM_OK);
    assert_int_equal(sim_euicc_load(fx.pki, path, &r, &err), ESIM_EINVAL);
    json_decref(j);
    assert_int_equal(esim_write_file_atomic(path, "{not json", 9, 0600, NULL), ESIM_OK);
    assert_int_equal(sim_euicc_load(fx.pki, path, &r, &err), ESIM_EINVAL);
}

/* The fixed-key verifier (ec_fixed.c) agrees with EVP's ECDSA verification:
 * good signatures pass, a changed digest, a changed r or s, another key's
 * signature, r or s of 0 or n, and non-canonical DER fail. */
static void test_ec_fixed_verify(void **state)
{
    (void)state;
    EVP_PKEY *k = EVP_EC_gen("P-256"), *other = EVP_EC_gen("P-256");
    assert_non_null(k);
    assert_non_null(other);
    unsigned char point[65];
    size_t plen = 0;
    assert_int_equal(EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point,
                                                     sizeof point, &plen),
                     1);
    assert_int_equal(plen, 65);
    sim_ec_fixed *f = sim_ec_fixed_new(point);
    assert_non_null(f);
    for (int i = 0; i < 20; i++) {
        char msg[64];
        snprintf(msg, sizeof msg, "message %d", i);
        unsigned char rs[64], dg[32], bad[64];
        assert_int_equal(sim_ecdsa_sign_raw(k, msg, strlen(msg), rs, NULL), ESIM_OK);
        SHA256((const unsigned char *)msg, strlen(msg), dg);
        assert_int_equal(sim_ec_fixed_verify(f, dg, rs), 1);
        assert_int_equal(sim_ecdsa_verify_raw(k, msg, strlen(msg), rs, 64, NULL), ESIM_OK);
        memcpy(bad, rs, 64);
        bad[i % 64] ^= 0x01;
        assert_int_equal(sim_ec_fixed_verify(f, dg, bad), 0);
        dg[31] ^= 0x80;
        assert_int_equal(sim_ec_fixed_verify(f, dg, rs), 0);
        dg[31] ^= 0x80;
        /* Another key's signature of the same message. */
        assert_int_equal(sim_ecdsa_sign_raw(other, msg, strlen(msg), bad, NULL), ESIM_OK);
        assert_int_equal(sim_ec_fixed_verify(f, dg, bad), 0);
        /* DER: the canonical encoding passes, a padded one does not. */
        ECDSA_SIG *es = ECDSA_SIG_new();
        assert_non_null(es);
        assert_int_equal(ECDSA_SIG_set0(es, BN_bin2bn(rs, 32, NULL), BN_bin2bn(rs + 32, 32, NULL)),
                         1);
        unsigned char *der = NULL;
        int n = i2d_ECDSA_SIG(es, &der);
        assert_true(n > 0);
        assert_int_equal(sim_ec_fixed_verify_der(f, dg, der, (size_t)n), 1);
        unsigned char longer[96];
        memcpy(longer, der, (size_t)n);
        longer[n] = 0;
        assert_int_equal(sim_ec_fixed_verify_der(f, dg, longer, (size_t)n + 1), 0);
        OPENSSL_free(der);
        ECDSA_SIG_free(es);
    }
    /* r or s out of [1, n-1]. */
    static const unsigned char n_p256[32] = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
                                             0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                             0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84,
                                             0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
    unsigned char rs[64], dg[32];
    assert_int_equal(sim_ecdsa_sign_raw(k, "x", 1, rs, NULL), ESIM_OK);
    SHA256((const unsigned char *)"x", 1, dg);
    unsigned char edge[64];
    memcpy(edge, rs, 64);
    memset(edge, 0, 32);
    assert_int_equal(sim_ec_fixed_verify(f, dg, edge), 0);
    memcpy(edge, rs, 64);
    memcpy(edge + 32, n_p256, 32);
    assert_int_equal(sim_ec_fixed_verify(f, dg, edge), 0);
    /* Not a point on the curve. */
    point[64] ^= 1;
    assert_null(sim_ec_fixed_new(point));
    sim_ec_fixed_free(f);
    EVP_PKEY_free(k);
    EVP_PKEY_free(other);
}

/* The verifier by point (ec_fixed.c, each eUICC's key at the SM-DP+)
 * agrees with OpenSSL: its signatures verify (enough of them to meet r or
 * s with a leading zero byte), a changed bit, digest or key does not, r or
 * s out of [1, n-1] does not, and a point off the curve or not
 * uncompressed is no key. One verifier for several keys in turn. */
static void test_ec_p256_verify(void **state)
{
    (void)state;
    EVP_PKEY *k[2] = {EVP_EC_gen("P-256"), EVP_EC_gen("P-256")};
    unsigned char point[2][65];
    for (int j = 0; j < 2; j++) {
        size_t plen = 0;
        assert_non_null(k[j]);
        assert_int_equal(EVP_PKEY_get_octet_string_param(k[j], OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                                         point[j], 65, &plen),
                         1);
        assert_int_equal(plen, 65);
    }
    sim_ec_p256 *v = sim_ec_p256_new();
    assert_non_null(v);
    assert_true(sim_ec_p256_point_ok(v, point[0]));
    for (int i = 0; i < 300; i++) {
        char msg[64];
        snprintf(msg, sizeof msg, "message %d", i);
        int j = i % 2;
        unsigned char rs[64], dg[32], bad[64];
        assert_int_equal(sim_ecdsa_sign_raw(k[j], msg, strlen(msg), rs, NULL), ESIM_OK);
        SHA256((const unsigned char *)msg, strlen(msg), dg);
        assert_int_equal(sim_ec_p256_verify(v, point[j], dg, rs), 1);
        assert_int_equal(sim_ec_p256_verify(v, point[1 - j], dg, rs), 0);
        memcpy(bad, rs, 64);
        bad[i % 64] ^= (unsigned char)(1u << (i % 8));
        assert_int_equal(sim_ec_p256_verify(v, point[j], dg, bad), 0);
        assert_int_not_equal(sim_ecdsa_verify_raw(k[j], msg, strlen(msg), bad, 64, NULL), ESIM_OK);
        dg[i % 32] ^= 0x01;
        assert_int_equal(sim_ec_p256_verify(v, point[j], dg, rs), 0);
    }
    static const unsigned char n_p256[32] = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
                                             0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                             0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84,
                                             0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
    unsigned char rs[64], dg[32], edge[64];
    assert_int_equal(sim_ecdsa_sign_raw(k[0], "x", 1, rs, NULL), ESIM_OK);
    SHA256((const unsigned char *)"x", 1, dg);
    assert_int_equal(sim_ec_p256_verify(v, point[0], dg, rs), 1);
    memcpy(edge, rs, 64);
    memset(edge, 0, 32);
    assert_int_equal(sim_ec_p256_verify(v, point[0], dg, edge), 0);
    memcpy(edge, rs, 64);
    memcpy(edge + 32, n_p256, 32);
    assert_int_equal(sim_ec_p256_verify(v, point[0], dg, edge), 0);
    memcpy(edge, n_p256, 32);
    assert_int_equal(sim_ec_p256_verify(v, point[0], dg, edge), 0);
    /* Not a point on the curve, or not uncompressed: no key. */
    point[0][64] ^= 1;
    assert_false(sim_ec_p256_point_ok(v, point[0]));
    assert_int_equal(sim_ec_p256_verify(v, point[0], dg, rs), 0);
    point[0][64] ^= 1;
    point[0][0] = 0x02;
    assert_false(sim_ec_p256_point_ok(v, point[0]));
    point[0][0] = 0x04;
    assert_int_equal(sim_ec_p256_verify(v, point[0], dg, rs), 1);
    sim_ec_p256_free(v);
    EVP_PKEY_free(k[0]);
    EVP_PKEY_free(k[1]);
}

/* The ECDSA signer (ec_fixed.c) makes ordinary P-256 signatures: each
 * verifies with OpenSSL (EVP over its DER, which is canonical) and with the
 * fixed-key verifier, a fresh k each time (two signatures of one digest
 * differ), and signatures by OpenSSL verify with the fixed-key verifier
 * (the arithmetic modulo n both ways, over enough signatures to meet r or
 * s with a leading zero byte or the top bit set). Not P-256, d = 0 or
 * d >= n: no signer. */
static void test_ec_signer(void **state)
{
    (void)state;
    EVP_PKEY *k = EVP_EC_gen("P-256");
    assert_non_null(k);
    unsigned char point[65];
    size_t plen = 0;
    assert_int_equal(EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point,
                                                     sizeof point, &plen),
                     1);
    sim_ec_fixed *f = sim_ec_fixed_new(point);
    sim_ec_signer *s = sim_ec_signer_new(k);
    assert_non_null(f);
    assert_non_null(s);
    EVP_PKEY_CTX *vctx = EVP_PKEY_CTX_new(k, NULL);
    assert_non_null(vctx);
    assert_int_equal(EVP_PKEY_verify_init(vctx), 1);
    int padded = 0;
    for (int i = 0; i < 300; i++) {
        unsigned char dg[32], rs[64], rs2[64], der[72];
        char msg[32];
        snprintf(msg, sizeof msg, "signed %d", i);
        SHA256((const unsigned char *)msg, strlen(msg), dg);
        if (i == 299)
            memset(dg, 0xff, sizeof dg); /* a digest above n */
        assert_true(sim_ec_signer_sign(s, dg, rs));
        size_t n = sim_ecdsa_raw_to_der(rs, der);
        assert_int_equal(EVP_PKEY_verify(vctx, der, n, dg, sizeof dg), 1);
        const unsigned char *p = der;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)n);
        assert_non_null(es);
        unsigned char *again = NULL;
        assert_int_equal(i2d_ECDSA_SIG(es, &again), (int)n);
        assert_memory_equal(again, der, n);
        OPENSSL_free(again);
        ECDSA_SIG_free(es);
        padded += rs[0] >= 0x80 || rs[32] >= 0x80;
        assert_int_equal(sim_ec_fixed_verify(f, dg, rs), 1);
        assert_int_equal(sim_ecdsa_verify_raw(k, msg, strlen(msg), rs, 64, NULL),
                         i == 299 ? ESIM_ECRYPTO : ESIM_OK);
        assert_true(sim_ec_signer_sign(s, dg, rs2));
        assert_memory_not_equal(rs, rs2, 64);
        dg[0] ^= 1;
        assert_int_not_equal(EVP_PKEY_verify(vctx, der, n, dg, sizeof dg), 1);
        assert_int_equal(sim_ec_fixed_verify(f, dg, rs), 0);
        /* OpenSSL's signature, checked by the fixed-key verifier. */
        assert_int_equal(sim_ecdsa_sign_raw(k, msg, strlen(msg), rs, NULL), ESIM_OK);
        SHA256((const unsigned char *)msg, strlen(msg), dg);
        assert_int_equal(sim_ec_fixed_verify(f, dg, rs), 1);
    }
    assert_true(padded > 0);
    /* Signatures whose r or s has a leading zero byte (about one in 128):
     * a shorter DER INTEGER, still canonical and valid. */
    int short_der = 0;
    for (int i = 0; i < 20000 && short_der < 3; i++) {
        unsigned char dg[32] = {(unsigned char)i, (unsigned char)(i >> 8)}, rs[64], der[72];
        assert_true(sim_ec_signer_sign(s, dg, rs));
        if (rs[0] != 0 && rs[32] != 0)
            continue;
        short_der++;
        size_t n = sim_ecdsa_raw_to_der(rs, der);
        assert_true(n < 72);
        assert_int_equal(EVP_PKEY_verify(vctx, der, n, dg, sizeof dg), 1);
        assert_int_equal(sim_ec_fixed_verify(f, dg, rs), 1);
    }
    assert_int_equal(short_der, 3);
    EVP_PKEY_CTX_free(vctx);
    sim_ec_signer_free(s);
    sim_ec_fixed_free(f);
    EVP_PKEY_free(k);
    /* Not a P-256 private key. */
    EVP_PKEY *p384 = EVP_EC_gen("P-384");
    assert_null(sim_ec_signer_new(p384));
    EVP_PKEY_free(p384);
    assert_null(sim_ec_signer_new(NULL));
    unsigned char d[32] = {0};
    assert_null(sim_ec_signer_new_raw(d));
    static const unsigned char n_p256[32] = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
                                             0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                             0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84,
                                             0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
    assert_null(sim_ec_signer_new_raw(n_p256));
    d[31] = 1;
    sim_ec_signer *one = sim_ec_signer_new_raw(d);
    assert_non_null(one);
    sim_ec_signer_free(one);
}

/* A key kept as its bare scalar (a device's identity key): sim_ec_keygen
 * makes a different key each time whose point is d·G (OpenSSL's key of the
 * same d agrees and passes its pair check), sim_ec_sign_with signs so that
 * OpenSSL verifies with that key and not another's, and d outside
 * [1, n-1] is refused. */
static void test_ec_scalar_keys(void **state)
{
    (void)state;
    unsigned char d1[32], d2[32], p1[65], p2[65], q[65];
    assert_true(sim_ec_keygen(d1, p1));
    assert_true(sim_ec_keygen(d2, p2));
    assert_memory_not_equal(d1, d2, 32);
    assert_memory_not_equal(p1, p2, 65);
    assert_true(sim_ec_public_key(d1, q));
    assert_memory_equal(q, p1, 65);
    EVP_PKEY *k1 = sim_p256_key_pair(d1, p1), *k2 = sim_p256_key_pair(d2, p2);
    assert_non_null(k1);
    assert_non_null(k2);
    EVP_PKEY_CTX *chk = EVP_PKEY_CTX_new(k1, NULL);
    assert_int_equal(EVP_PKEY_pairwise_check(chk), 1); /* d1·G is p1 */
    EVP_PKEY_CTX_free(chk);
    EVP_PKEY *mixed = sim_p256_key_pair(d1, p2);
    if (mixed) { /* fromdata may take it; the pair check may not */
        chk = EVP_PKEY_CTX_new(mixed, NULL);
        assert_int_not_equal(EVP_PKEY_pairwise_check(chk), 1);
        EVP_PKEY_CTX_free(chk);
        EVP_PKEY_free(mixed);
    }
    ERR_clear_error();
    for (int i = 0; i < 20; i++) {
        unsigned char dg[32], rs[64];
        char msg[32];
        snprintf(msg, sizeof msg, "device %d", i);
        SHA256((const unsigned char *)msg, strlen(msg), dg);
        assert_true(sim_ec_sign_with(d1, dg, rs));
        assert_int_equal(sim_ecdsa_verify_raw(k1, msg, strlen(msg), rs, 64, NULL), ESIM_OK);
        assert_int_equal(sim_ecdsa_verify_raw(k2, msg, strlen(msg), rs, 64, NULL), ESIM_ECRYPTO);
    }
    static const unsigned char n_p256[32] = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
                                             0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                             0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84,
                                             0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
    unsigned char zero[32] = {0}, dg[32] = {1}, rs[64];
    assert_false(sim_ec_sign_with(zero, dg, rs));
    assert_false(sim_ec_sign_with(n_p256, dg, rs));
    assert_false(sim_ec_public_key(zero, q));
    assert_false(sim_ec_public_key(n_p256, q));
    EVP_PKEY_free(k1);
    EVP_PKEY_free(k2);
}

/* An eUICC's key as sim_euicc_issue writes it (the eUICC signs by the
 * scalar read from it): sim_p256_private_from_der reads the scalar and
 * point OpenSSL writes for the same key (i2d_PrivateKey), refuses PKCS#8
 * and damaged DER; each eUICC has its own key, which OpenSSL reads back
 * from the eUICC's saved state and finds to be its certificate's. */
static void test_euicc_key_der(void **state)
{
    (void)state;
    EVP_PKEY *k = EVP_EC_gen("P-256");
    assert_non_null(k);
    unsigned char *der = NULL, *p8 = NULL;
    PKCS8_PRIV_KEY_INFO *p8i = EVP_PKEY2PKCS8(k);
    assert_non_null(p8i);
    int n = i2d_PrivateKey(k, &der), n8 = i2d_PKCS8_PRIV_KEY_INFO(p8i, &p8);
    PKCS8_PRIV_KEY_INFO_free(p8i);
    assert_true(n > 0 && n8 > 0);
    unsigned char d[32], pt[65], want_pt[65];
    size_t pt_len = 0;
    BIGNUM *bn = NULL;
    unsigned char want_d[32];
    assert_int_equal(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_PRIV_KEY, &bn), 1);
    assert_int_equal(BN_bn2binpad(bn, want_d, 32), 32);
    assert_int_equal(EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_PUB_KEY, want_pt,
                                                     sizeof want_pt, &pt_len),
                     1);
    assert_true(sim_p256_private_from_der(der, (size_t)n, d, pt));
    assert_memory_equal(d, want_d, 32);
    assert_memory_equal(pt, want_pt, 65);
    assert_false(sim_p256_private_from_der(p8, (size_t)n8, d, pt));
    assert_false(sim_p256_private_from_der(der, (size_t)n - 1, d, pt));
    assert_false(sim_p256_private_from_der(NULL, 0, d, pt));
    der[6] ^= 1; /* the scalar's OCTET STRING length 32 -> 33 */
    assert_false(sim_p256_private_from_der(der, (size_t)n, d, pt));
    BN_free(bn);
    OPENSSL_free(der);
    OPENSSL_free(p8);
    EVP_PKEY_free(k);

    sim_euicc *a = new_euicc(21), *b = new_euicc(22);
    const esim_buf *ca, *cb, *eum;
    assert_int_equal(sim_euicc_cert_der(a, &ca, &eum, NULL), ESIM_OK);
    assert_int_equal(sim_euicc_cert_der(b, &cb, &eum, NULL), ESIM_OK);
    X509 *xa = sim_x509_from_der(ca->data, ca->len), *xb = sim_x509_from_der(cb->data, cb->len);
    assert_non_null(xa);
    assert_non_null(xb);
    assert_int_not_equal(EVP_PKEY_eq(X509_get0_pubkey(xa), X509_get0_pubkey(xb)), 1);
    char path[600];
    snprintf(path, sizeof path, "%s/euicc21.json", fx.dir);
    assert_int_equal(sim_euicc_save(a, path, NULL), ESIM_OK);
    json_t *j = NULL;
    assert_int_equal(sim_json_load(path, 1 << 20, &j, NULL), ESIM_OK);
    esim_buf key = {0};
    assert_int_equal(sim_json_b64(j, "key", &key, NULL), ESIM_OK);
    const unsigned char *kp = key.data;
    EVP_PKEY *ka = d2i_AutoPrivateKey(NULL, &kp, (long)key.len);
    assert_non_null(ka);
    assert_int_equal(X509_check_private_key(xa, ka), 1);
    assert_int_not_equal(X509_check_private_key(xb, ka), 1);
    ERR_clear_error();
    unsigned char sig[64];
    assert_int_equal(sim_euicc_sign(a, "abc", 3, sig, NULL), ESIM_OK);
    assert_int_equal(sim_ecdsa_verify_raw(ka, "abc", 3, sig, 64, NULL), ESIM_OK);
    assert_int_equal(sim_ecdsa_verify_raw(X509_get0_pubkey(xb), "abc", 3, sig, 64, NULL),
                     ESIM_ECRYPTO);
    EVP_PKEY_free(ka);
    esim_buf_free(&key);
    json_decref(j);
    X509_free(xa);
    X509_free(xb);
    sim_euicc_free(a);
    sim_euicc_free(b);
}

/* sim_cert_cache_verify_by: the same answers before and after the signer's
 * table is built (past 256 signatures by one key), other keys untouched. */
static void test_cert_cache_verify_by(void **state)
{
    (void)state;
    sim_cert_cache *c = sim_cert_cache_new(16);
    assert_non_null(c);
    X509 *signer = fx.pki->dpauth.x509, *other = fx.pki->eum.x509;
    for (int i = 0; i < 300; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "blob %d", i);
        unsigned char rs[64];
        assert_int_equal(sim_ecdsa_sign_raw(fx.pki->dpauth.key, msg, strlen(msg), rs, NULL),
                         ESIM_OK);
        assert_int_equal(sim_cert_cache_verify_by(c, signer, msg, strlen(msg), rs, 64, NULL),
                         ESIM_OK);
        if (i % 50 == 0 || i > 290) {
            assert_int_equal(sim_cert_cache_verify_by(c, other, msg, strlen(msg), rs, 64, NULL),
                             ESIM_ECRYPTO);
            assert_int_equal(
                sim_cert_cache_verify_by(c, signer, msg, strlen(msg) - 1, rs, 64, NULL),
                ESIM_ECRYPTO);
            rs[40] ^= 4;
            assert_int_equal(sim_cert_cache_verify_by(c, signer, msg, strlen(msg), rs, 64, NULL),
                             ESIM_ECRYPTO);
            assert_int_equal(sim_cert_cache_verify_by(c, signer, msg, strlen(msg), rs, 63, NULL),
                             ESIM_ECRYPTO);
        }
    }
    sim_cert_cache_free(c);
}

/* sim_cert_cache_verify: the base64 text decoded last names its slot
 * without decoding again, and only that very text: a copy changed in one
 * character (its signature) is checked afresh and refused, and the slot's
 * own checks still decide. */
static void test_cert_cache_verify_text(void **state)
{
    (void)state;
    sim_cert_cache *c = sim_cert_cache_new(16);
    assert_non_null(c);
    esim_buf der = {0}, b64 = {0};
    assert_int_equal(sim_x509_to_der(fx.pki->eum.x509, &der), ESIM_OK);
    assert_int_equal(esim_base64_encode(der.data, der.len, &b64), ESIM_OK);
    char *text = (char *)b64.data, *bad = strdup(text);
    assert_non_null(bad);
    size_t n = strlen(bad);
    while (n > 0 && bad[n - 1] == '=')
        n--;
    bad[n - 3] = bad[n - 3] == 'A' ? 'B' : 'A'; /* in the signature's last bytes */
    esim_err why;
    X509 *x = sim_cert_cache_verify(c, text, fx.pki->ci.x509, NULL, &why, NULL);
    assert_non_null(x);
    assert_int_equal(why, ESIM_OK);
    assert_int_equal(sim_cert_cache_chain_checks(c), 1);
    for (int i = 0; i < 3; i++) {
        X509 *y = sim_cert_cache_verify(c, text, fx.pki->ci.x509, NULL, &why, NULL);
        assert_ptr_equal(y, x);
        X509_free(y);
        assert_int_equal(sim_cert_cache_chain_checks(c), 1 + (size_t)i);
        assert_null(sim_cert_cache_verify(c, bad, fx.pki->ci.x509, NULL, &why, NULL));
        assert_int_equal(why == ESIM_ECRYPTO || why == ESIM_EINVAL, true);
    }
    /* the chain is checked each time the changed copy comes */
    assert_int_equal(sim_cert_cache_chain_checks(c), 4);
    /* Verified with an intermediate, the slot holds that verdict: the
     * text decoded last, asked without one, is checked again. */
    X509 *y = sim_cert_cache_verify(c, text, fx.pki->ci.x509, fx.pki->dpauth.x509, &why, NULL);
    assert_non_null(y);
    assert_int_equal(sim_cert_cache_chain_checks(c), 5);
    X509_free(y);
    y = sim_cert_cache_verify(c, text, fx.pki->ci.x509, NULL, &why, NULL);
    assert_non_null(y);
    assert_int_equal(sim_cert_cache_chain_checks(c), 6);
    X509_free(y);
    y = sim_cert_cache_verify(c, text, fx.pki->ci.x509, NULL, &why, NULL);
    assert_int_equal(sim_cert_cache_chain_checks(c), 6);
    X509_free(y);
    X509_free(x);
    free(bad);
    esim_buf_free(&der);
    esim_buf_free(&b64);
    sim_cert_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity_and_certificate),
        cmocka_unit_test(test_install_rules),
        cmocka_unit_test(test_enable_disable_delete),
        cmocka_unit_test(test_policy_rules),
        cmocka_unit_test(test_memory_reset),
        cmocka_unit_test(test_notifications),
        cmocka_unit_test(test_kept_memory),
        cmocka_unit_test(test_persistence),
        cmocka_unit_test(test_ec_fixed_verify),
        cmocka_unit_test(test_ec_p256_verify),
        cmocka_unit_test(test_ec_signer),
        cmocka_unit_test(test_ec_scalar_keys),
        cmocka_unit_test(test_euicc_key_der),
        cmocka_unit_test(test_cert_cache_verify_by),
        cmocka_unit_test(test_cert_cache_verify_text),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
