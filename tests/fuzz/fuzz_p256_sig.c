/*
 * fuzz_p256_sig.c — the ECDSA signature reader of core/p256.c
 * (esim_p256_sig_from_der), which reads an attacker's Mdm-Signature value
 * before the service checks it with a kept P-256 key. It must take exactly
 * the encodings OpenSSL's verification takes (d2i_ECDSA_SIG, and the DER
 * encoded again identical to the input) with r and s below 2^256, and read
 * the same r and s; the whole verification then runs over the input with a
 * fixed key (an answer, never a crash).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ecdsa.h>

#include "core/p256.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char rs[64];
    bool mine = esim_p256_sig_from_der(data, size, rs);
    const unsigned char *p = data;
    ECDSA_SIG *sig = size <= 1024 ? d2i_ECDSA_SIG(NULL, &p, (long)size) : NULL;
    unsigned char *again = NULL;
    int n = sig ? i2d_ECDSA_SIG(sig, &again) : -1;
    bool theirs = sig && p == data + size && n == (int)size && memcmp(again, data, size) == 0;
    const BIGNUM *r = NULL, *s = NULL;
    if (sig)
        ECDSA_SIG_get0(sig, &r, &s);
    if (theirs && (BN_num_bytes(r) > 32 || BN_num_bytes(s) > 32))
        theirs = false; /* r or s >= 2^256 >= n: OpenSSL refuses it after reading */
    if (mine != theirs)
        abort();
    if (mine) {
        unsigned char want[64];
        if (BN_bn2binpad(r, want, 32) != 32 || BN_bn2binpad(s, want + 32, 32) != 32 ||
            memcmp(want, rs, 64) != 0)
            abort();
    }
    OPENSSL_free(again);
    ECDSA_SIG_free(sig);
    /* G itself as the key; the input as a signature over its own bytes. */
    static const unsigned char g[65] = {
        0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5,
        0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4,
        0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a,
        0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33,
        0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5};
    static esim_p256_key key;
    static bool ready;
    if (!ready && !(ready = esim_p256_key_init(&key, g)))
        abort();
    int v = esim_p256_verify_der(&key, data, size, data, size);
    if (v != 0 && v != 1)
        abort();
    return 0;
}
