/*
 * test_core.c — core/: buffers, files, encodings, identifier validators
 * (valid values and every kind of refusal), and the test PKI.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/x509v3.h>

#include "core/esim.h"
#include "core/internal.h"

static void test_buf_grows_and_stays_terminated(void **state)
{
    (void)state;
    esim_buf b = {0};
    for (int i = 0; i < 1000; i++)
        assert_int_equal(esim_buf_printf(&b, "%d,", i), ESIM_OK);
    assert_int_equal(strlen((char *)b.data), b.len);
    assert_memory_equal(b.data, "0,1,2,", 6);
    esim_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal((char *)b.data, "");
    assert_int_equal(esim_buf_append(&b, "ab\0c", 4), ESIM_OK);
    size_t len;
    unsigned char *p = esim_buf_steal(&b, &len);
    assert_int_equal(len, 4);
    assert_null(b.data);
    free(p);
    esim_buf_free(&b);
    esim_buf_free(NULL);
}

static void test_fail_writes_message_and_returns_code(void **state)
{
    (void)state;
    esim_error err = {{0}};
    assert_int_equal(esim_fail(&err, ESIM_EINVAL, "bad %s", "thing"), ESIM_EINVAL);
    assert_string_equal(err.msg, "bad thing");
    assert_int_equal(esim_fail(NULL, ESIM_EIO, "ignored"), ESIM_EIO);
    assert_string_equal(esim_strerror(ESIM_ENOTFOUND), "not found");
    assert_string_equal(esim_strerror((esim_err)-999), "unknown error");
}

static void test_uuid(void **state)
{
    (void)state;
    char a[ESIM_UUID_LEN + 1], b[ESIM_UUID_LEN + 1];
    esim_uuid_new(a);
    esim_uuid_new(b);
    assert_true(esim_uuid_valid(a));
    assert_string_not_equal(a, b);
    assert_int_equal(a[14], '4');
    for (const char *p = a; *p; p++)
        assert_false(*p >= 'A' && *p <= 'Z');
    assert_false(esim_uuid_valid("not-a-uuid"));
    assert_false(esim_uuid_valid("0123456789abcdef0123456789abcdef0123"));
    assert_true(esim_uuid_valid("0A1B2C3D-0000-4000-8000-00000000000F"));
}

/* The one digit table (core/internal.h) the decoder and the plist fast
 * path's <data> both read: the standard alphabet, '=' a pad, C-locale
 * space, every other byte refused. */
static void test_base64_digit_table(void **state)
{
    (void)state;
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int c = 0; c < 256; c++) {
        const char *at = c ? strchr(alphabet, c) : NULL;
        int want = at                                     ? (int)(at - alphabet)
                   : c == '='                             ? ESIM_BASE64_PAD
                   : c == ' ' || (c >= '\t' && c <= '\r') ? ESIM_BASE64_SPACE
                                                          : ESIM_BASE64_BAD;
        if (esim_base64_digit[c] != want)
            fail_msg("byte %d: %d, wanted %d", c, esim_base64_digit[c], want);
    }
}

static void test_base64_round_trip_and_leniency(void **state)
{
    (void)state;
    esim_buf enc = {0}, dec = {0};
    const char *samples[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    for (size_t i = 0; i < sizeof samples / sizeof *samples; i++) {
        assert_int_equal(esim_base64_encode(samples[i], strlen(samples[i]), &enc), ESIM_OK);
        assert_int_equal(esim_base64_decode((char *)enc.data, enc.len, &dec, NULL), ESIM_OK);
        assert_int_equal(dec.len, strlen(samples[i]));
        assert_memory_equal(dec.data, samples[i], dec.len);
    }
    assert_int_equal(esim_base64_encode("foobar", 6, &enc), ESIM_OK);
    assert_string_equal((char *)enc.data, "Zm9vYmFy");
    /* unpadded and with line breaks, as some clients send it */
    assert_int_equal(esim_base64_decode("Zm9v\nYmE", 8, &dec, NULL), ESIM_OK);
    assert_string_equal((char *)dec.data, "fooba");
    esim_error err = {{0}};
    assert_int_equal(esim_base64_decode("Zm9v!", 5, &dec, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "offset 4"));
    assert_int_equal(esim_base64_decode("Z", 1, &dec, &err), ESIM_EINVAL);
    assert_int_equal(esim_base64_decode("Zg=a", 4, &dec, &err), ESIM_EINVAL);
    /* Bad input leaves the output as it was. */
    assert_int_equal(esim_base64_decode("Zm9v", 4, &dec, NULL), ESIM_OK);
    assert_int_equal(esim_base64_decode("Zm9vYm=FyYQ", 11, &dec, &err), ESIM_EINVAL);
    assert_int_equal(esim_base64_decode("Zm9vY", 5, &dec, &err), ESIM_EINVAL);
    assert_string_equal((char *)dec.data, "foo");
    /* Past the first eight-digit runs (read eight at a time), the same. */
    assert_int_equal(esim_base64_decode("Zm9vYmFyZm9vYmFy!m9v", 20, &dec, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "offset 16"));
    assert_int_equal(esim_base64_decode("Zm9vYmFyZm9vYmF=Zm9v", 20, &dec, &err), ESIM_EINVAL);
    assert_string_equal((char *)dec.data, "foo");
    assert_int_equal(esim_base64_decode("Zm9vYmFy\nZm9vYmE=", 17, &dec, NULL), ESIM_OK);
    assert_string_equal((char *)dec.data, "foobarfooba");
    /* Every byte value, every tail length, padded or not, with whitespace
     * anywhere. */
    unsigned char bin[300];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(i * 37 + 11);
    for (size_t n = 0; n < sizeof bin; n += 1 + n / 8) {
        assert_int_equal(esim_base64_encode(bin, n, &enc), ESIM_OK);
        char text[512];
        size_t t = 0;
        for (size_t i = 0; i < enc.len; i++) {
            if (i % 7 == 3)
                text[t++] = i % 2 ? '\n' : ' ';
            if (enc.data[i] != '=' || n % 2)
                text[t++] = (char)enc.data[i];
        }
        assert_int_equal(esim_base64_decode(text, t, &dec, NULL), ESIM_OK);
        assert_int_equal(dec.len, n);
        if (n)
            assert_memory_equal(dec.data, bin, n);
    }
    esim_buf_free(&enc);
    esim_buf_free(&dec);
}

static void test_hex(void **state)
{
    (void)state;
    esim_buf h = {0}, b = {0};
    assert_int_equal(esim_hex_encode("\x01\xab\xff", 3, &h), ESIM_OK);
    assert_string_equal((char *)h.data, "01abff");
    assert_int_equal(esim_hex_decode("01ABff", &b, NULL), ESIM_OK);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "\x01\xab\xff", 3);
    assert_int_equal(esim_hex_decode("abc", &b, NULL), ESIM_EINVAL);
    assert_int_equal(esim_hex_decode("zz", &b, NULL), ESIM_EINVAL);
    esim_buf_free(&h);
    esim_buf_free(&b);
}

static void test_eid(void **state)
{
    (void)state;
    esim_error err = {{0}};
    assert_int_equal(esim_eid_validate("89882119900000000000000000001654", &err), ESIM_OK);
    assert_int_equal(esim_eid_validate("89882119900000000000000000001600", &err), ESIM_EINVAL);
    assert_string_equal(err.msg, "EID check digits do not match: expected 54, found 00");
    assert_int_equal(esim_eid_validate("8988211990000000000000000000165", &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "31 characters"));
    assert_int_equal(esim_eid_validate("8988211990000000000000000000165x", &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "position 32"));
    assert_int_equal(esim_eid_validate("", &err), ESIM_EINVAL);
    assert_int_equal(esim_eid_validate(NULL, &err), ESIM_EINVAL);
    char eid[] = "89049032000000000000000000123400";
    assert_int_equal(esim_eid_set_check_digits(eid, NULL), ESIM_OK);
    assert_int_equal(esim_eid_validate(eid, NULL), ESIM_OK);
}

static void test_iccid(void **state)
{
    (void)state;
    esim_error err = {{0}};
    assert_int_equal(esim_iccid_validate("89014103211118510720", &err), ESIM_OK);
    assert_int_equal(esim_iccid_validate("89014103211118510721", &err), ESIM_EINVAL);
    assert_string_equal(err.msg, "ICCID check digit does not match: expected 0, found 1");
    assert_int_equal(esim_iccid_validate("79014103211118510720", &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "start with 89"));
    assert_int_equal(esim_iccid_validate("8901410321111", &err), ESIM_EINVAL);
    assert_int_equal(esim_iccid_validate("8901410321111851072F", &err), ESIM_EINVAL);
    char iccid[] = "890000000000000000";
    assert_int_equal(esim_iccid_set_check_digit(iccid, NULL), ESIM_OK);
    assert_int_equal(esim_iccid_validate(iccid, NULL), ESIM_OK);
}

static void test_activation_code(void **state)
{
    (void)state;
    esim_activation_code ac;
    esim_error err = {{0}};
    assert_int_equal(
        esim_activation_code_parse("LPA:1$smdp.example.com$K2-1A2B3C-4D5E6F", &ac, &err), ESIM_OK);
    assert_string_equal(ac.smdp_address, "smdp.example.com");
    assert_string_equal(ac.matching_id, "K2-1A2B3C-4D5E6F");
    assert_false(ac.confirmation_code_required);
    assert_int_equal(
        esim_activation_code_parse("LPA:1$smdp.example.com$ABC$1.3.6.1.4.1.31746$1", &ac, &err),
        ESIM_OK);
    assert_string_equal(ac.smdp_oid, "1.3.6.1.4.1.31746");
    assert_true(ac.confirmation_code_required);
    assert_int_equal(esim_activation_code_parse("LPA:1$smdp.example.com", &ac, &err), ESIM_OK);
    assert_string_equal(ac.matching_id, "");
    assert_int_equal(esim_activation_code_parse("LPA:2$smdp.example.com$X", &ac, &err),
                     ESIM_EINVAL);
    assert_int_equal(esim_activation_code_parse("1$smdp.example.com$X", &ac, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "LPA:"));
    assert_int_equal(esim_activation_code_parse("LPA:1$bad host$X", &ac, &err), ESIM_EINVAL);
    assert_int_equal(esim_activation_code_parse("LPA:1$$X", &ac, &err), ESIM_EINVAL);
    assert_int_equal(esim_activation_code_parse("LPA:1$smdp.example.com$X$1.2$2", &ac, &err),
                     ESIM_EINVAL);
    assert_int_equal(esim_activation_code_parse("LPA:1$smdp.example.com$X_Y", &ac, &err),
                     ESIM_EINVAL);
}

static void test_small_validators(void **state)
{
    (void)state;
    assert_int_equal(esim_fqdn_validate("smdp.example.com", NULL), ESIM_OK);
    assert_int_equal(esim_fqdn_validate("localhost", NULL), ESIM_OK);
    assert_int_equal(esim_fqdn_validate("a..b", NULL), ESIM_EINVAL);
    assert_int_equal(esim_fqdn_validate("-a.b", NULL), ESIM_EINVAL);
    assert_int_equal(esim_fqdn_validate("a_b.c", NULL), ESIM_EINVAL);
    assert_int_equal(esim_windows_matching_id_validate("0A1B2-C3D4E-5F6A7-B8C9D", NULL), ESIM_OK);
    assert_int_equal(esim_windows_matching_id_validate("0A1B2-C3D4E-5F6A7-B8C9", NULL),
                     ESIM_EINVAL);
    assert_int_equal(esim_windows_matching_id_validate("0A1B2_C3D4E-5F6A7-B8C9D", NULL),
                     ESIM_EINVAL);
    assert_int_equal(esim_windows_matching_id_validate("GA1B2-C3D4E-5F6A7-B8C9D", NULL),
                     ESIM_EINVAL);
    char token[65];
    memset(token, 'a', 64);
    token[64] = '\0';
    assert_int_equal(esim_push_token_validate(token, NULL), ESIM_OK);
    token[10] = 'g';
    assert_int_equal(esim_push_token_validate(token, NULL), ESIM_EINVAL);
    assert_int_equal(esim_push_token_validate("abcd", NULL), ESIM_EINVAL);
    assert_int_equal(esim_udid_validate("00008020-001C30E22E87002E", NULL), ESIM_OK);
    assert_int_equal(esim_udid_validate("a/b", NULL), ESIM_EINVAL);
    assert_int_equal(esim_udid_validate("", NULL), ESIM_EINVAL);
}

static char tmpdir[64];

static void test_files_atomic_write_and_limits(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/sub/dir", tmpdir);
    assert_int_equal(esim_mkdirs(path, 0700, NULL), ESIM_OK);
    snprintf(path, sizeof path, "%s/sub/dir/f", tmpdir);
    assert_int_equal(esim_write_file_atomic(path, "hello", 5, 0600, NULL), ESIM_OK);
    assert_int_equal(esim_write_file_atomic(path, "bye", 3, 0600, NULL), ESIM_OK);
    esim_buf b = {0};
    assert_int_equal(esim_read_file(path, 100, &b, NULL), ESIM_OK);
    assert_string_equal((char *)b.data, "bye");
    assert_int_equal(esim_read_file(path, 2, &b, NULL), ESIM_ETOOBIG);
    assert_string_equal((char *)b.data, "bye"); /* unchanged on failure */
    snprintf(path, sizeof path, "%s/missing", tmpdir);
    esim_error err = {{0}};
    assert_int_equal(esim_read_file(path, 100, &b, &err), ESIM_ENOTFOUND);
    assert_non_null(strstr(err.msg, "missing"));
    /* The same replacement without the fsyncs: new content, its mode, no
     * temporary left beside it; a directory that is not there is an error. */
    snprintf(path, sizeof path, "%s/sub/dir/g", tmpdir);
    assert_int_equal(esim_write_file_replace(path, "one", 3, 0644, NULL), ESIM_OK);
    assert_int_equal(esim_write_file_replace(path, "two!", 4, 0644, NULL), ESIM_OK);
    assert_int_equal(esim_read_file(path, 100, &b, NULL), ESIM_OK);
    assert_string_equal((char *)b.data, "two!");
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644 & ~(unsigned)umask(umask(0)));
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_int_not_equal(access(tmp, F_OK), 0);
    snprintf(path, sizeof path, "%s/nowhere/g", tmpdir);
    assert_int_equal(esim_write_file_replace(path, "x", 1, 0644, &err), ESIM_EIO);
    assert_non_null(strstr(err.msg, "nowhere"));
    esim_buf_free(&b);
}

/* Issue 10 item 10: secrets others may read or write are refused, naming
 * the file and the fix; databases are made private. */
static void test_private_files(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/token", tmpdir);
    assert_int_equal(esim_write_file_atomic(path, " s3cret \nsecond line\n", 21, 0644, NULL),
                     ESIM_OK);
    chmod(path, 0644); /* whatever the umask */
    esim_error err = {{0}};
    esim_buf b = {0};
    char *tok = NULL;
    assert_int_equal(esim_check_private_file(path, &err), ESIM_EAUTH);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "chmod 600"));
    assert_int_equal(esim_read_private_file(path, 100, &b, &err), ESIM_EAUTH);
    assert_int_equal(esim_read_token_file(path, &tok, &err), ESIM_EAUTH);
    assert_null(tok);
    static const unsigned modes[] = {0640, 0620, 0604, 0602, 0666};
    for (size_t k = 0; k < sizeof modes / sizeof modes[0]; k++) {
        chmod(path, modes[k]);
        assert_int_equal(esim_check_private_file(path, NULL), ESIM_EAUTH);
    }
    chmod(path, 0600);
    assert_int_equal(esim_check_private_file(path, NULL), ESIM_OK);
    assert_int_equal(esim_read_token_file(path, &tok, &err), ESIM_OK);
    assert_string_equal(tok, "s3cret");
    free(tok);
    chmod(path, 0400);
    assert_int_equal(esim_read_private_file(path, 100, &b, NULL), ESIM_OK);
    esim_buf_free(&b);
    /* Not a regular file. */
    assert_int_equal(esim_check_private_file(tmpdir, NULL), ESIM_EAUTH);
    /* Token lines: first line, trimmed; empty or with control bytes refused. */
    static const struct {
        const char *text;
        const char *want;
    } cases[] = {{"abc", "abc"},   {"\tabc \r\nx", "abc"}, {"", NULL},
                 {"\n abc", NULL}, {" \t \n", NULL},       {"a\x01b", NULL},
                 {"a\rb\n", NULL}, {"a b", "a b"},         {"\x7f", NULL}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        tok = NULL;
        esim_err rc = esim_token_parse(cases[k].text, strlen(cases[k].text), &tok, &err);
        if (cases[k].want) {
            assert_int_equal(rc, ESIM_OK);
            assert_string_equal(tok, cases[k].want);
        } else {
            assert_int_equal(rc, ESIM_EINVAL);
            assert_null(tok);
        }
        free(tok);
    }
    /* Databases: created 0600; an existing 0644 one and its log tightened. */
    char db[256], wal[300];
    snprintf(db, sizeof db, "%s/fresh.db", tmpdir);
    assert_int_equal(esim_make_private_db(db, NULL), ESIM_OK);
    struct stat st;
    assert_int_equal(stat(db, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    snprintf(db, sizeof db, "%s/old.db", tmpdir);
    snprintf(wal, sizeof wal, "%s-wal", db);
    assert_int_equal(esim_write_file_atomic(db, "x", 1, 0644, NULL), ESIM_OK);
    assert_int_equal(esim_write_file_atomic(wal, "x", 1, 0644, NULL), ESIM_OK);
    chmod(db, 0644);
    chmod(wal, 0664);
    assert_int_equal(esim_make_private_db(db, NULL), ESIM_OK);
    assert_int_equal(stat(db, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(wal, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(esim_make_private_db(":memory:", NULL), ESIM_OK);
}

static void test_pki_create_is_idempotent_and_chains(void **state)
{
    (void)state;
    char dir[256], topic_path[300];
    snprintf(dir, sizeof dir, "%s/pki", tmpdir);
    esim_error err = {{0}};
    assert_int_equal(esim_pki_create(dir, &err), ESIM_OK);
    snprintf(topic_path, sizeof topic_path, "%s/push.topic", dir);
    esim_buf topic1 = {0}, topic2 = {0};
    assert_int_equal(esim_read_file(topic_path, 200, &topic1, NULL), ESIM_OK);
    assert_int_equal(strncmp((char *)topic1.data, "com.apple.mgmt.External.", 24), 0);

    esim_cert push = {0}, ca = {0};
    assert_int_equal(esim_pki_load(dir, "push", &push, &err), ESIM_OK);
    char uid[128];
    assert_int_equal(esim_cert_subject_field(push.x509, NID_userId, uid, sizeof uid), ESIM_OK);
    assert_int_equal(strncmp(uid, (char *)topic1.data, strlen(uid)), 0);
    char fp1[65], fp2[65];
    assert_int_equal(esim_cert_sha256_hex(push.x509, fp1), ESIM_OK);

    /* a second run keeps everything */
    assert_int_equal(esim_pki_create(dir, &err), ESIM_OK);
    assert_int_equal(esim_read_file(topic_path, 200, &topic2, NULL), ESIM_OK);
    assert_string_equal((char *)topic1.data, (char *)topic2.data);
    esim_cert push2 = {0};
    assert_int_equal(esim_pki_load(dir, "push", &push2, &err), ESIM_OK);
    assert_int_equal(esim_cert_sha256_hex(push2.x509, fp2), ESIM_OK);
    assert_string_equal(fp1, fp2);

    /* push chains to ca; an eUICC certificate from eum carries the EID */
    assert_int_equal(esim_pki_load(dir, "ca", &ca, &err), ESIM_OK);
    assert_int_equal(X509_verify(push.x509, ca.key), 1);
    esim_cert eum = {0}, euicc = {0};
    assert_int_equal(esim_pki_load(dir, "eum", &eum, &err), ESIM_OK);
    esim_cert_spec spec = {.common_name = "eUICC",
                           .serial_number = "89882119900000000000000000001654"};
    assert_int_equal(esim_cert_issue(&spec, &eum, &euicc, &err), ESIM_OK);
    char eid[40];
    assert_int_equal(esim_cert_subject_field(euicc.x509, NID_serialNumber, eid, sizeof eid),
                     ESIM_OK);
    assert_string_equal(eid, "89882119900000000000000000001654");
    assert_int_equal(X509_verify(euicc.x509, eum.key), 1);
    assert_int_equal(X509_verify(euicc.x509, ca.key), 0);
    assert_int_equal(esim_cert_subject_field(euicc.x509, NID_userId, uid, sizeof uid),
                     ESIM_ENOTFOUND);

    /* a key that does not match is refused */
    char cert_path[300], key_path[300];
    snprintf(cert_path, sizeof cert_path, "%s/push.pem", dir);
    snprintf(key_path, sizeof key_path, "%s/ca.key", dir);
    esim_cert bad = {0};
    assert_int_equal(esim_cert_load(cert_path, key_path, &bad, &err), ESIM_ECRYPTO);
    assert_non_null(strstr(err.msg, "does not match"));
    assert_int_equal(esim_cert_issue(&(esim_cert_spec){0}, NULL, &bad, &err), ESIM_EINVAL);

    esim_cert_clear(&push);
    esim_cert_clear(&push2);
    esim_cert_clear(&ca);
    esim_cert_clear(&eum);
    esim_cert_clear(&euicc);
    esim_buf_free(&topic1);
    esim_buf_free(&topic2);
}

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/esim-core-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_hash_is_fnv1a(void **state)
{
    (void)state;
    /* Published FNV-1a 64-bit values. */
    assert_true(esim_hash_str("") == 0xcbf29ce484222325ull);
    assert_true(esim_hash_str("a") == 0xaf63dc4c8601ec8cull);
    assert_true(esim_hash_str("foobar") == 0x85944171f73967e8ull);
    assert_true(esim_hash_bytes("foobar", 6) == esim_hash_str("foobar"));
    assert_true(esim_hash_bytes(NULL, 0) == 0xcbf29ce484222325ull);
}

/* The access line's copies: the same text snprintf("%s") and "%llu" give. */
static void test_copy_text_and_format_u64(void **state)
{
    (void)state;
    const char *texts[] = {"", "a", "/mdm", "0123456789abcdef", "0123456789abcdefg"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        for (size_t size = 1; size <= 20; size++) {
            char a[20], b[20];
            memset(a, 'x', sizeof a);
            memset(b, 'x', sizeof b);
            esim_copy_text(a, size, texts[i]);
            snprintf(b, size, "%s", texts[i]);
            assert_memory_equal(a, b, sizeof a); /* nothing written past the end */
        }
    const uint64_t values[] = {0, 7, 10, 200, 503, 18446744073709551615ull};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char a[21], b[21];
        esim_format_u64(a, values[i]);
        snprintf(b, sizeof b, "%llu", (unsigned long long)values[i]);
        assert_string_equal(a, b);
    }
}

static void test_grow_doubles_and_keeps_items(void **state)
{
    (void)state;
    int *a = NULL;
    size_t cap = 0;
    for (int i = 0; i < 1000; i++) {
        if ((size_t)i == cap) {
            int *g = esim_grow(a, &cap, (size_t)i + 1, sizeof *g);
            assert_non_null(g);
            a = g;
        }
        a[i] = i;
    }
    assert_int_equal(cap, 1024);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(a[i], i);
    /* Already big enough: the same array, nothing changes. */
    assert_ptr_equal(esim_grow(a, &cap, 10, sizeof *a), a);
    assert_int_equal(cap, 1024);
    /* An impossible size fails and leaves the array and its capacity alone. */
    assert_null(esim_grow(a, &cap, SIZE_MAX / 2, sizeof *a));
    assert_int_equal(cap, 1024);
    free(a);
}

static void test_proc_usage_of_self(void **state)
{
    (void)state;
    esim_proc_usage u;
    assert_int_equal(esim_proc_usage_read(0, &u), ESIM_OK);
    assert_true(u.rss_kb > 0);
    assert_true(u.peak_rss_kb >= u.rss_kb);
    assert_true(u.cpu_s >= 0);
    esim_proc_usage other;
    assert_int_equal(esim_proc_usage_read(getpid(), &other), ESIM_OK);
    assert_true(other.rss_kb > 0);
    /* No process has pid INT_MAX - 1 on Linux (pid_max is at most 2^22). */
    assert_int_equal(esim_proc_usage_read(2147483646, &u), ESIM_ENOTFOUND);
    assert_int_equal(u.rss_kb, 0);
}

/* The main thread's CPU time alone, from the same stat line's fields as
 * the process's (/proc/self/task/PID/stat): some after a spin. */
static void test_thread_cpu_of_self(void **state)
{
    (void)state;
    volatile uint64_t spin = 0;
    for (uint64_t i = 0; i < 20000000; i++)
        spin += i;
    double main_s = -1;
    assert_int_equal(esim_thread_cpu_read(getpid(), getpid(), &main_s), ESIM_OK);
    assert_true(main_s > 0);
    /* Not a thread of this process; no such process. */
    assert_int_equal(esim_thread_cpu_read(getpid(), 2147483646, &main_s), ESIM_ENOTFOUND);
    assert_true(main_s == 0);
    assert_int_equal(esim_thread_cpu_read(2147483646, 2147483646, &main_s), ESIM_ENOTFOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_grows_and_stays_terminated),
        cmocka_unit_test(test_fail_writes_message_and_returns_code),
        cmocka_unit_test(test_uuid),
        cmocka_unit_test(test_base64_digit_table),
        cmocka_unit_test(test_base64_round_trip_and_leniency),
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_eid),
        cmocka_unit_test(test_iccid),
        cmocka_unit_test(test_activation_code),
        cmocka_unit_test(test_small_validators),
        cmocka_unit_test(test_files_atomic_write_and_limits),
        cmocka_unit_test(test_private_files),
        cmocka_unit_test(test_pki_create_is_idempotent_and_chains),
        cmocka_unit_test(test_hash_is_fnv1a),
        cmocka_unit_test(test_copy_text_and_format_u64),
        cmocka_unit_test(test_grow_doubles_and_keeps_items),
        cmocka_unit_test(test_proc_usage_of_self),
        cmocka_unit_test(test_thread_cpu_of_self),
    };
    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
