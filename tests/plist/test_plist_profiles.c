/*
 * test_plist_profiles.c — configuration profiles: payload dicts, the
 * Configuration wrapper, CMS signing (checked by our parser and by the
 * openssl command line, as an admin would), and the refusals.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "plist/esim_plist.h"

static const char PROFILE_UUID[] = "4c2d4a3e-1111-4222-8333-444455556666";

static plist_t sample_payload(void)
{
    plist_t p = esim_payload_new("com.apple.applicationaccess", "com.example.esim.restrictions",
                                 NULL, "eSIM restrictions");
    assert_non_null(p);
    plist_dict_set_item(p, "allowESIMModification", plist_new_bool(0));
    return p;
}

static void build_sample(esim_plist_format format, esim_buf *out)
{
    plist_t payload = sample_payload();
    esim_profile_opts opts = {.identifier = "com.example.esim",
                              .uuid = PROFILE_UUID,
                              .display_name = "eSIM policy",
                              .description = "Keeps eSIMs put",
                              .organization = "Example Corp"};
    esim_error err = {{0}};
    assert_int_equal(esim_profile_build(&opts, &payload, 1, format, out, &err), ESIM_OK);
    plist_free(payload);
}

static const char *dict_string(plist_t d, const char *key)
{
    plist_t n = plist_dict_get_item(d, key);
    assert_non_null(n);
    assert_int_equal(plist_get_node_type(n), PLIST_STRING);
    return plist_get_string_ptr(n, NULL);
}

static void test_payload_new(void **state)
{
    (void)state;
    plist_t p =
        esim_payload_new("com.apple.applicationaccess", "com.example.r", PROFILE_UUID, NULL);
    assert_non_null(p);
    assert_string_equal(dict_string(p, "PayloadType"), "com.apple.applicationaccess");
    assert_string_equal(dict_string(p, "PayloadIdentifier"), "com.example.r");
    assert_string_equal(dict_string(p, "PayloadUUID"), PROFILE_UUID);
    uint64_t v = 0;
    plist_get_uint_val(plist_dict_get_item(p, "PayloadVersion"), &v);
    assert_int_equal(v, 1);
    assert_null(plist_dict_get_item(p, "PayloadDisplayName"));
    plist_free(p);
    p = esim_payload_new("t", "i", NULL, "Shown");
    assert_true(esim_uuid_valid(dict_string(p, "PayloadUUID")));
    assert_string_equal(dict_string(p, "PayloadDisplayName"), "Shown");
    plist_free(p);
    assert_null(esim_payload_new(NULL, "i", NULL, NULL));
    assert_null(esim_payload_new("t", NULL, NULL, NULL));
    assert_null(esim_payload_new("", "i", NULL, NULL));
    assert_null(esim_payload_new("t", "i", "nope", NULL));
}

static void test_profile_build_and_parse(void **state)
{
    (void)state;
    for (int f = ESIM_PLIST_XML; f <= ESIM_PLIST_BINARY; f++) {
        esim_buf b = {0};
        build_sample((esim_plist_format)f, &b);
        plist_t root = NULL;
        bool was_signed = true;
        esim_error err = {{0}};
        assert_int_equal(esim_profile_parse(b.data, b.len, NULL, &root, &was_signed, &err),
                         ESIM_OK);
        assert_false(was_signed);
        assert_string_equal(dict_string(root, "PayloadType"), "Configuration");
        assert_string_equal(dict_string(root, "PayloadIdentifier"), "com.example.esim");
        assert_string_equal(dict_string(root, "PayloadUUID"), PROFILE_UUID);
        assert_string_equal(dict_string(root, "PayloadDisplayName"), "eSIM policy");
        assert_string_equal(dict_string(root, "PayloadDescription"), "Keeps eSIMs put");
        assert_string_equal(dict_string(root, "PayloadOrganization"), "Example Corp");
        uint64_t v = 0;
        plist_get_uint_val(plist_dict_get_item(root, "PayloadVersion"), &v);
        assert_int_equal(v, 1);
        plist_t content = plist_dict_get_item(root, "PayloadContent");
        assert_int_equal(plist_array_get_size(content), 1);
        plist_t expected = sample_payload();
        plist_t got = plist_array_get_item(content, 0);
        assert_string_equal(dict_string(got, "PayloadType"), "com.apple.applicationaccess");
        uint8_t allow = 1;
        plist_get_bool_val(plist_dict_get_item(got, "allowESIMModification"), &allow);
        assert_false(allow);
        plist_free(expected);
        plist_free(root);
        esim_buf_free(&b);
    }
    /* The display name defaults to the identifier; no payloads is allowed. */
    esim_profile_opts opts = {.identifier = "com.example.empty"};
    esim_buf b = {0};
    assert_int_equal(esim_profile_build(&opts, NULL, 0, ESIM_PLIST_XML, &b, NULL), ESIM_OK);
    plist_t root = NULL;
    assert_int_equal(esim_profile_parse(b.data, b.len, NULL, &root, NULL, NULL), ESIM_OK);
    assert_string_equal(dict_string(root, "PayloadDisplayName"), "com.example.empty");
    assert_true(esim_uuid_valid(dict_string(root, "PayloadUUID")));
    plist_free(root);
    esim_buf_free(&b);
}

static void test_profile_build_refusals(void **state)
{
    (void)state;
    esim_buf b = {0};
    esim_error err = {{0}};
    esim_profile_opts none = {0};
    assert_int_equal(esim_profile_build(&none, NULL, 0, ESIM_PLIST_XML, &b, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "PayloadIdentifier"));
    assert_int_equal(esim_profile_build(NULL, NULL, 0, ESIM_PLIST_XML, &b, &err), ESIM_EINVAL);
    esim_profile_opts bad_uuid = {.identifier = "x", .uuid = "12"};
    assert_int_equal(esim_profile_build(&bad_uuid, NULL, 0, ESIM_PLIST_XML, &b, &err), ESIM_EINVAL);
    esim_profile_opts ok = {.identifier = "x"};
    assert_int_equal(esim_profile_build(&ok, NULL, 1, ESIM_PLIST_XML, &b, &err), ESIM_EINVAL);
    plist_t not_payload = plist_new_dict();
    assert_int_equal(esim_profile_build(&ok, &not_payload, 1, ESIM_PLIST_XML, &b, &err),
                     ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "PayloadType"));
    plist_free(not_payload);
    plist_t arr = plist_new_array();
    assert_int_equal(esim_profile_build(&ok, &arr, 1, ESIM_PLIST_XML, &b, &err), ESIM_EINVAL);
    plist_free(arr);
    assert_null(b.data);
}

static void test_profile_parse_refusals(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "<plist><dict><key>PayloadType</key><string>com.apple.wifi.managed</string></dict>"
        "</plist>",
        "<plist><dict><key>PayloadIdentifier</key><string>x</string></dict></plist>",
        "<plist><dict><key>PayloadType</key><string>Configuration</string>"
        "<key>PayloadUUID</key><string>u</string></dict></plist>",
        "<plist><dict><key>PayloadType</key><string>Configuration</string>"
        "<key>PayloadIdentifier</key><string>x</string></dict></plist>",
        "<plist><dict><key>PayloadType</key><string>Configuration</string>"
        "<key>PayloadIdentifier</key><string>x</string><key>PayloadUUID</key><string>u</string>"
        "<key>PayloadContent</key><dict/></dict></plist>",
        "plain text, not a profile",
        "\x30\x82\x01\x00garbage",
    };
    for (size_t k = 0; k < sizeof bodies / sizeof bodies[0]; k++) {
        plist_t root = (plist_t)1;
        esim_error err = {{0}};
        assert_int_equal(esim_profile_parse(bodies[k], strlen(bodies[k]), NULL, &root, NULL, &err),
                         ESIM_EINVAL);
        assert_ptr_equal(root, (plist_t)1);
        assert_true(err.msg[0] != '\0');
    }
    esim_buf b = {0};
    build_sample(ESIM_PLIST_XML, &b);
    esim_parse_limits tiny = {.max_body = 64};
    plist_t root = NULL;
    assert_int_equal(esim_profile_parse(b.data, b.len, &tiny, &root, NULL, NULL), ESIM_ETOOBIG);
    esim_buf_free(&b);
}

static void make_signer(esim_cert *signer, esim_key_type type)
{
    esim_cert_spec spec = {
        .common_name = "Profile Signer", .organization = "Example Corp", .key_type = type};
    esim_error err = {{0}};
    assert_int_equal(esim_cert_issue(&spec, NULL, signer, &err), ESIM_OK);
}

static void test_sign_and_parse(void **state)
{
    (void)state;
    esim_key_type types[] = {ESIM_KEY_EC_P256, ESIM_KEY_RSA2048};
    for (size_t t = 0; t < 2; t++) {
        esim_cert signer = {0};
        make_signer(&signer, types[t]);
        esim_buf plain = {0}, signed_der = {0};
        build_sample(ESIM_PLIST_XML, &plain);
        esim_error err = {{0}};
        assert_int_equal(esim_profile_sign(plain.data, plain.len, &signer, &signed_der, &err),
                         ESIM_OK);
        assert_int_equal(signed_der.data[0], 0x30);
        plist_t root = NULL;
        bool was_signed = false;
        assert_int_equal(
            esim_profile_parse(signed_der.data, signed_der.len, NULL, &root, &was_signed, &err),
            ESIM_OK);
        assert_true(was_signed);
        assert_string_equal(dict_string(root, "PayloadIdentifier"), "com.example.esim");
        plist_free(root);

        /* The signed form installs too, byte for byte. */
        esim_cmd cmd;
        assert_int_equal(
            esim_cmd_install_profile(signed_der.data, signed_der.len, NULL, &cmd, &err), ESIM_OK);
        esim_cmd_free(&cmd);

        /* Signing twice is refused. */
        esim_buf twice = {0};
        assert_int_equal(esim_profile_sign(signed_der.data, signed_der.len, &signer, &twice, &err),
                         ESIM_EINVAL);

        /* Tampering with the signed content breaks the signature. */
        unsigned char *hit = memmem(signed_der.data, signed_der.len, "com.example.esim", 16);
        assert_non_null(hit);
        hit[0] = 'C';
        root = NULL;
        assert_int_equal(
            esim_profile_parse(signed_der.data, signed_der.len, NULL, &root, NULL, &err),
            ESIM_EINVAL);
        assert_non_null(strstr(err.msg, "signature"));
        assert_null(root);
        esim_buf_free(&plain);
        esim_buf_free(&signed_der);
        esim_cert_clear(&signer);
    }
}

static void test_sign_refusals(void **state)
{
    (void)state;
    esim_cert signer = {0}, other = {0};
    make_signer(&signer, ESIM_KEY_EC_P256);
    make_signer(&other, ESIM_KEY_EC_P256);
    esim_buf plain = {0}, out = {0};
    build_sample(ESIM_PLIST_XML, &plain);
    esim_error err = {{0}};
    esim_cert mismatched = {.x509 = signer.x509, .key = other.key};
    assert_int_equal(esim_profile_sign(plain.data, plain.len, &mismatched, &out, &err),
                     ESIM_ECRYPTO);
    esim_cert no_key = {.x509 = signer.x509};
    assert_int_equal(esim_profile_sign(plain.data, plain.len, &no_key, &out, &err), ESIM_EINVAL);
    assert_int_equal(esim_profile_sign(plain.data, plain.len, NULL, &out, &err), ESIM_EINVAL);
    assert_int_equal(esim_profile_sign("junk", 4, &signer, &out, &err), ESIM_EINVAL);
    assert_null(out.data);
    esim_buf_free(&plain);
    esim_cert_clear(&signer);
    esim_cert_clear(&other);
}

/* The acceptance check an admin would run: `openssl cms -verify`. */
static void test_signed_profile_verifies_with_openssl(void **state)
{
    (void)state;
    if (system("command -v openssl >/dev/null 2>&1") != 0)
        skip();
    char dir[] = "/tmp/esim-plist-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cert_path[256], der_path[256], out_path[256], cmd[1024];
    snprintf(cert_path, sizeof cert_path, "%s/signer.pem", dir);
    snprintf(der_path, sizeof der_path, "%s/profile.mobileconfig", dir);
    snprintf(out_path, sizeof out_path, "%s/content.plist", dir);
    esim_cert signer = {0};
    make_signer(&signer, ESIM_KEY_RSA2048);
    esim_error err = {{0}};
    assert_int_equal(esim_cert_save(&signer, cert_path, NULL, &err), ESIM_OK);
    esim_buf plain = {0}, signed_der = {0};
    build_sample(ESIM_PLIST_XML, &plain);
    assert_int_equal(esim_profile_sign(plain.data, plain.len, &signer, &signed_der, &err), ESIM_OK);
    assert_int_equal(esim_write_file_atomic(der_path, signed_der.data, signed_der.len, 0600, &err),
                     ESIM_OK);
    snprintf(cmd, sizeof cmd,
             "openssl cms -verify -inform DER -in %s -CAfile %s -binary -out %s 2>/dev/null",
             der_path, cert_path, out_path);
    assert_int_equal(system(cmd), 0);
    esim_buf content = {0};
    assert_int_equal(esim_read_file(out_path, 1 << 20, &content, &err), ESIM_OK);
    assert_int_equal(content.len, plain.len);
    assert_memory_equal(content.data, plain.data, plain.len);
    snprintf(cmd, sizeof cmd,
             "openssl smime -verify -inform DER -in %s -CAfile %s -binary -out /dev/null "
             "2>/dev/null",
             der_path, cert_path);
    assert_int_equal(system(cmd), 0);
    unlink(cert_path);
    unlink(der_path);
    unlink(out_path);
    assert_int_equal(rmdir(dir), 0);
    esim_buf_free(&content);
    esim_buf_free(&plain);
    esim_buf_free(&signed_der);
    esim_cert_clear(&signer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_payload_new),
        cmocka_unit_test(test_profile_build_and_parse),
        cmocka_unit_test(test_profile_build_refusals),
        cmocka_unit_test(test_profile_parse_refusals),
        cmocka_unit_test(test_sign_and_parse),
        cmocka_unit_test(test_sign_refusals),
        cmocka_unit_test(test_signed_profile_verifies_with_openssl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
