/*
 * The service's in-place reading of device identity certificates
 * (service/cert_der.h): what OpenSSL made reads as OpenSSL reads it, and
 * every shape it does not take — malformed DER, other algorithms, unknown
 * or duplicated extensions, odd dates — is refused (the service then
 * leaves the certificate to OpenSSL). Whatever it accepts, d2i_X509
 * accepts too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/internal.h"
#include "service/cert_der.h"

static esim_buf der_of(X509 *x)
{
    esim_buf b = {0};
    unsigned char *p = NULL;
    int n = i2d_X509(x, &p);
    assert_true(n > 0);
    assert_int_equal(esim_buf_append(&b, p, (size_t)n), ESIM_OK);
    OPENSSL_free(p);
    return b;
}

static int64_t secs_of(const ASN1_TIME *t)
{
    struct tm tm;
    assert_int_equal(ASN1_TIME_to_tm(t, &tm), 1);
    return (int64_t)timegm(&tm);
}

/* cert_der_parse accepts |der| and reads what OpenSSL reads. */
static void reads_as_openssl(const esim_buf *der)
{
    cert_der_view v;
    assert_true(cert_der_parse(der->data, der->len, &v));
    const unsigned char *p = der->data;
    X509 *x = d2i_X509(NULL, &p, (long)der->len);
    assert_non_null(x);
    const unsigned char *name;
    size_t name_len;
    assert_int_equal(X509_NAME_get0_der(X509_get_issuer_name(x), &name, &name_len), 1);
    assert_int_equal(v.issuer_len, name_len);
    assert_memory_equal(v.issuer, name, name_len);
    assert_int_equal(X509_NAME_get0_der(X509_get_subject_name(x), &name, &name_len), 1);
    assert_int_equal(v.subject_len, name_len);
    assert_memory_equal(v.subject, name, name_len);
    unsigned char serial[64], *w = serial;
    int sl = i2d_ASN1_INTEGER(X509_get0_serialNumber(x), &w);
    assert_int_equal(v.serial_len, (size_t)sl);
    assert_memory_equal(v.serial, serial, (size_t)sl);
    assert_true(v.not_before == secs_of(X509_get0_notBefore(x)));
    assert_true(v.not_after == secs_of(X509_get0_notAfter(x)));
    unsigned char point[65];
    size_t pl = 0;
    assert_int_equal(EVP_PKEY_get_octet_string_param(X509_get0_pubkey(x), OSSL_PKEY_PARAM_PUB_KEY,
                                                     point, sizeof point, &pl),
                     1);
    assert_int_equal(pl, 65);
    assert_memory_equal(v.point, point, 65);
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(x);
    assert_int_equal(v.ski != NULL, ski != NULL);
    if (ski) {
        assert_int_equal(v.ski_len, (size_t)ASN1_STRING_length(ski));
        assert_memory_equal(v.ski, ASN1_STRING_get0_data(ski), v.ski_len);
    }
    const ASN1_OCTET_STRING *aki = X509_get0_authority_key_id(x);
    assert_int_equal(v.aki != NULL, aki != NULL);
    if (aki) {
        assert_int_equal(v.aki_len, (size_t)ASN1_STRING_length(aki));
        assert_memory_equal(v.aki, ASN1_STRING_get0_data(aki), v.aki_len);
    }
    const ASN1_BIT_STRING *sig;
    const X509_ALGOR *alg;
    X509_get0_signature(&sig, &alg, x);
    assert_int_equal(v.sig_len, (size_t)sig->length);
    assert_memory_equal(v.sig, sig->data, v.sig_len);
    assert_int_equal(v.sig_alg, X509_get_signature_nid(x) == NID_ecdsa_with_SHA256
                                    ? CERT_DER_ECDSA_SHA256
                                    : CERT_DER_RSA_SHA256);
    /* The TBS is what the issuer signed: it verifies with the issuer. */
    unsigned char *tbs = NULL;
    int tl = i2d_re_X509_tbs(x, &tbs);
    assert_int_equal(v.tbs_len, (size_t)tl);
    assert_memory_equal(v.tbs, tbs, v.tbs_len);
    OPENSSL_free(tbs);
    X509_free(x);
}

static void test_openssl_certificates(void **state)
{
    (void)state;
    esim_cert rsa_ca = {0}, ec_ca = {0}, leaf = {0};
    esim_cert_spec ca_spec = {.common_name = "Device CA",
                              .organization = "esim-mdm test",
                              .is_ca = true,
                              .key_type = ESIM_KEY_RSA2048};
    assert_int_equal(esim_cert_issue(&ca_spec, NULL, &rsa_ca, NULL), ESIM_OK);
    ca_spec.key_type = ESIM_KEY_EC_P256;
    assert_int_equal(esim_cert_issue(&ca_spec, &rsa_ca, &ec_ca, NULL), ESIM_OK);
    /* P-256 identities under an RSA and a P-256 issuer, with and without
     * an extended key usage, with the names a device's identity has. */
    for (int i = 0; i < 4; i++) {
        esim_cert_spec spec = {.common_name = "00008110-000A1B2C3D4E5F60",
                               .uid = i & 1 ? "com.apple.mgmt.test" : NULL,
                               .serial_number = i & 1 ? "F2LXYZ123" : NULL,
                               .client_auth = i & 2,
                               .key_type = ESIM_KEY_EC_P256};
        assert_int_equal(esim_cert_issue(&spec, i < 2 ? &rsa_ca : &ec_ca, &leaf, NULL), ESIM_OK);
        esim_buf der = der_of(leaf.x509);
        reads_as_openssl(&der);
        esim_buf_free(&der);
        esim_cert_clear(&leaf);
    }
    /* Not the shape: an RSA identity, a CA, a certificate with names
     * (subjectAltName). */
    esim_cert_spec rsa = {.common_name = "rsa device", .key_type = ESIM_KEY_RSA2048};
    assert_int_equal(esim_cert_issue(&rsa, &rsa_ca, &leaf, NULL), ESIM_OK);
    esim_buf der = der_of(leaf.x509);
    cert_der_view v;
    assert_false(cert_der_parse(der.data, der.len, &v));
    esim_buf_free(&der);
    esim_cert_clear(&leaf);
    der = der_of(ec_ca.x509);
    assert_false(cert_der_parse(der.data, der.len, &v));
    esim_buf_free(&der);
    esim_cert_spec server = {
        .common_name = "localhost", .dns_name = "localhost", .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&server, &ec_ca, &leaf, NULL), ESIM_OK);
    der = der_of(leaf.x509);
    assert_false(cert_der_parse(der.data, der.len, &v));
    esim_buf_free(&der);
    esim_cert_clear(&leaf);
    esim_cert_clear(&ec_ca);
    esim_cert_clear(&rsa_ca);
}

/* ---- hand-made certificates: a template and what can go wrong in it ---- */

static void put(esim_buf *out, unsigned char tag, const void *v, size_t n)
{
    unsigned char h[5];
    size_t hl = 0;
    h[hl++] = tag;
    if (n < 0x80) {
        h[hl++] = (unsigned char)n;
    } else if (n < 0x100) {
        h[hl++] = 0x81;
        h[hl++] = (unsigned char)n;
    } else {
        h[hl++] = 0x82;
        h[hl++] = (unsigned char)(n >> 8);
        h[hl++] = (unsigned char)n;
    }
    assert_int_equal(esim_buf_append(out, h, hl), ESIM_OK);
    assert_int_equal(esim_buf_append(out, v, n), ESIM_OK);
}

static void wrap(esim_buf *out, unsigned char tag, esim_buf *in)
{
    put(out, tag, in->data, in->len);
    esim_buf_free(in);
}

static void raw(esim_buf *out, const char *hex)
{
    for (; hex[0] && hex[1]; hex += 2) {
        unsigned v;
        assert_int_equal(sscanf(hex, "%2x", &v), 1);
        unsigned char c = (unsigned char)v;
        assert_int_equal(esim_buf_append(out, &c, 1), ESIM_OK);
    }
}

/* The pieces of a template certificate, each as hex (whole TLVs). */
typedef struct {
    const char *version, *serial, *alg, *issuer, *validity, *subject, *spki, *uids, *exts,
        *outer_alg, *sig;
} pieces;

#define ECDSA_SHA256 "300a06082a8648ce3d040302"
#define CN_CA "3012311030 0e0603550403 0c07 446576696365 4341" /* CN=DeviceCA */
#define P256_SPKI                                                                                  \
    "3059301306072a8648ce3d020106082a8648ce3d030107034200"                                         \
    "04"                                                                                           \
    "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"                             \
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"

static const pieces good = {
    .version = "a003020102",
    .serial = "020900a1b2c3d4e5f60718",
    .alg = ECDSA_SHA256,
    .issuer = "3013311130 0f0603550403 0c08 44657669636543 41",
    .validity = "301e170d3236303130313030303030305a170d3237303130313030303030305a",
    .subject = "3015311330110603550403130a 30303030383131302d41",
    .spki = P256_SPKI,
    .uids = "",
    .exts = "a3 2f 302d"
            "300c0603551d130101ff04023000"
            "300e0603551d0f0101ff040403020780"
            "300d0603551d0e04060404 01020304",
    .outer_alg = ECDSA_SHA256,
    .sig = "030900 3006020101020101",
};

static void hex_nospace(esim_buf *out, const char *hex)
{
    char clean[2048];
    size_t n = 0;
    for (; *hex && n + 1 < sizeof clean; hex++)
        if (*hex != ' ')
            clean[n++] = *hex;
    clean[n] = 0;
    raw(out, clean);
}

static esim_buf build(const pieces *p)
{
    esim_buf tbs = {0}, cert = {0}, out = {0};
    const char *parts[] = {p->version, p->serial, p->alg,  p->issuer, p->validity,
                           p->subject, p->spki,   p->uids, p->exts};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        hex_nospace(&tbs, parts[i]);
    wrap(&cert, 0x30, &tbs);
    hex_nospace(&cert, p->outer_alg);
    hex_nospace(&cert, p->sig);
    wrap(&out, 0x30, &cert);
    return out;
}

/* Whether the reader takes |p|; whenever it does, d2i_X509 does too. */
static bool takes(const pieces *p)
{
    esim_buf der = build(p);
    cert_der_view v;
    bool ok = cert_der_parse(der.data, der.len, &v);
    if (ok) {
        const unsigned char *q = der.data;
        X509 *x = d2i_X509(NULL, &q, (long)der.len);
        assert_non_null(x);
        assert_true(q == der.data + der.len);
        X509_free(x);
    }
    esim_buf_free(&der);
    return ok;
}

static void test_template(void **state)
{
    (void)state;
    assert_true(takes(&good));
    esim_buf der = build(&good);
    cert_der_view v;
    assert_true(cert_der_parse(der.data, der.len, &v));
    assert_true(v.not_before == 1767225600); /* 2026-01-01T00:00:00Z */
    assert_true(v.not_after == 1798761600);
    assert_int_equal(v.ski_len, 4);
    assert_null(v.aki);
    /* Every truncation, and a byte after the end, refused. */
    for (size_t n = 0; n < der.len; n++)
        assert_false(cert_der_parse(der.data, n, &v));
    assert_int_equal(esim_buf_append(&der, "\0", 1), ESIM_OK);
    assert_false(cert_der_parse(der.data, der.len, &v));
    assert_false(cert_der_parse(NULL, 0, &v));
    esim_buf_free(&der);
}

static void test_malformed(void **state)
{
    (void)state;
    struct {
        const char *why;
        pieces p;
    } bad[] = {
        {"v1: no version", {.version = ""}},
        {"v2", {.version = "a003020101"}},
        {"negative serial", {.serial = "020180"}},
        {"serial padded", {.serial = "02020001"}},
        {"empty serial", {.serial = "0200"}},
        {"21-byte serial", {.serial = "0215010203040506070809101112131415161718192021"}},
        {"ECDSA with NULL parameters", {.alg = "300c06082a8648ce3d0403020500"}},
        {"SHA-1 with ECDSA",
         {.alg = "300906072a8648ce3d0401", .outer_alg = "300906072a8648ce3d0401"}},
        {"inner and outer algorithms differ", {.outer_alg = "300d06092a864886f70d01010b0500"}},
        {"UTCTime without Z",
         {.validity = "301e170d3236303130313030303030302b170d3237303130313030303030305a"}},
        {"UTCTime without seconds",
         {.validity = "301a170b323630313031303030305a170b323730313031303030305a"}},
        {"29 February 2026",
         {.validity = "301e170d3236303232393030303030305a170d3237303130313030303030305a"}},
        {"hour 24",
         {.validity = "301e170d3236303130313234303030305a170d3237303130313030303030305a"}},
        {"subject value with a control byte",
         {.subject = "3015311330110603550403130a 3030303038313130 0a41"}},
        {"subject value BMPString", {.subject = "300f310d300b06035504031e 0400410042"}},
        {"empty RDN", {.subject = "30023100"}},
        {"OID with a leading 0x80",
         {.subject = "3016311430120604 55800403130a 30303030383131302d41"}},
        {"compressed point",
         {.spki = "3039301306072a8648ce3d020106082a8648ce3d030107032200"
                  "02"
                  "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"}},
        {"P-384",
         {.spki = "3056301006072a8648ce3d020106052b81040022034200"
                  "04"
                  "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
                  "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"}},
        {"issuerUniqueID", {.uids = "810200ff"}},
        {"empty extensions", {.exts = "a3023000"}},
        {"unknown critical extension", {.exts = "a3 11 300f 300d0603551d200101ff0403300100"}},
        {"unknown extension", {.exts = "a3 0e 300c 300a0603551d1f0403300100"}},
        {"subjectAltName", {.exts = "a3 15 3013 30110603551d11040a3008820663616c6c6572"}},
        {"basicConstraints twice",
         {.exts = "a3 1e 301c 300c0603551d130101ff04023000 300c0603551d130101ff04023000"}},
        {"basicConstraints CA", {.exts = "a3 12 3010 300e0603551d130101ff040430030101ff"}},
        {"basicConstraints FALSE written out",
         {.exts = "a3 12 3010 300e0603551d130101ff04043003010100"}},
        {"basicConstraints with a path length",
         {.exts = "a3 13 3011 300f0603551d130101ff0405300302 0100"}},
        {"critical written as FALSE", {.exts = "a3 10 300e 300c0603551d1301010004023000"}},
        {"critical subjectKeyIdentifier", {.exts = "a3 12 3010 300e0603551d0e0101ff0404040201 02"}},
        {"authorityKeyIdentifier with an issuer",
         {.exts = "a3 16 3014 30120603551d23040b3009800201 02a103 820100"}},
        {"keyUsage not a BIT STRING", {.exts = "a3 10 300e 300c0603551d0f0101ff0402 0500"}},
        {"empty extKeyUsage", {.exts = "a3 0d 300b 30090603551d250402 3000"}},
        {"signature with unused bits", {.sig = "030901 3006020101020101"}},
        {"ECDSA signature not a SEQUENCE", {.sig = "030900 0406020101020101"}},
        {"long form for a short length", {.sig = "03810900 3006020101020101"}},
        {"indefinite length", {.sig = "038000 3006020101020101 0000"}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pieces p = good;
        const pieces *b = &bad[i].p;
#define TAKE(f)                                                                                    \
    if (b->f)                                                                                      \
        p.f = b->f;
        TAKE(version)
        TAKE(serial) TAKE(alg) TAKE(issuer) TAKE(validity) TAKE(subject) TAKE(spki) TAKE(uids)
            TAKE(exts) TAKE(outer_alg) TAKE(sig)
#undef TAKE
                if (b->alg && !b->outer_alg) p.outer_alg = b->alg;
        if (takes(&p))
            fail_msg("taken: %s", bad[i].why);
    }
    /* What is fine: the extensions the reader knows, in any order, a
     * GeneralizedTime, 29 February of a leap year, no extensions at all. */
    pieces ok = good;
    ok.exts = "a3 44 3042"
              "300d0603551d0e04060404 01020304"
              "300f0603551d2304083006800401020304"
              "30130603551d25040c300a06082b06010505070302"
              "300b0603551d0f0404030205a0";
    assert_true(takes(&ok));
    ok = good;
    ok.validity = "3020180f32303236303232383030303030305a170d3238303232393030303030305a";
    assert_true(takes(&ok));
    ok.exts = "";
    assert_true(takes(&ok));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openssl_certificates),
        cmocka_unit_test(test_template),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
