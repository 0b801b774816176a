/*
 * The system's trust store the service's HTTP clients share
 * (service/curl_loop.h): loaded on the first call, the same store for
 * every later one, not read again.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/x509.h>

#include "core/esim.h"
#include "service/curl_loop.h"

static int certificates_in(X509_STORE *s)
{
    int n = 0;
    STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(s);
    for (int i = 0; i < sk_X509_OBJECT_num(objs); i++)
        n += X509_OBJECT_get_type(sk_X509_OBJECT_value(objs, i)) == X509_LU_X509;
    return n;
}

/* SSL_CERT_FILE a CA of the test's own: the first call reads it; with the
 * file gone, the second gives the same store, the CA still in it. */
static void test_system_store_loaded_once(void **state)
{
    (void)state;
    char dir[] = "/tmp/esim-curl-loop-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char pem[64], key[64];
    snprintf(pem, sizeof pem, "%s/ca.pem", dir);
    snprintf(key, sizeof key, "%s/ca.key", dir);
    esim_cert ca = {0};
    esim_cert_spec spec = {.common_name = "curl_loop test CA", .is_ca = true};
    assert_int_equal(esim_cert_issue(&spec, NULL, &ca, NULL), ESIM_OK);
    assert_int_equal(esim_cert_save(&ca, pem, key, NULL), ESIM_OK);
    esim_cert_clear(&ca);
    setenv("SSL_CERT_FILE", pem, 1);
    setenv("SSL_CERT_DIR", dir, 1); /* nothing hashed there */

    X509_STORE *kept = NULL;
    X509_STORE *first = curl_loop_system_store(&kept);
    assert_non_null(first);
    assert_ptr_equal(kept, first);
    assert_int_equal(certificates_in(first), 1);
    assert_int_equal(unlink(pem), 0);
    assert_ptr_equal(curl_loop_system_store(&kept), first);
    assert_ptr_equal(kept, first);
    assert_int_equal(certificates_in(first), 1);
    /* Another owner's slot loads its own: nothing there now. */
    X509_STORE *other = NULL;
    assert_non_null(curl_loop_system_store(&other));
    assert_ptr_not_equal(other, first);
    assert_int_equal(certificates_in(other), 0);
    X509_STORE_free(other);
    X509_STORE_free(kept);
    unlink(key);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_system_store_loaded_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
