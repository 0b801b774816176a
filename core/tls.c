/*
 * tls.c — what every TLS server of esim-mdm sets the same way (tls.h).
 */
#include "core/tls.h"

#include <openssl/x509v3.h>

bool esim_tls_server_chain(SSL_CTX *ctx)
{
    SSL_CTX_set_mode(ctx, SSL_MODE_NO_AUTO_CHAIN);
    STACK_OF(X509) *chain = NULL;
    if (SSL_CTX_get0_chain_certs(ctx, &chain) != 1 || !chain)
        return true; /* none: the certificate alone */
    int n = sk_X509_num(chain), roots = 0;
    for (int i = 0; i < n; i++)
        if (X509_get_extension_flags(sk_X509_value(chain, i)) & EXFLAG_SS)
            roots++;
    if (roots == 0)
        return true;
    STACK_OF(X509) *kept = sk_X509_new_reserve(NULL, n - roots);
    bool ok = kept != NULL;
    for (int i = 0; ok && i < n; i++) {
        X509 *x = sk_X509_value(chain, i);
        if (!(X509_get_extension_flags(x) & EXFLAG_SS))
            ok = sk_X509_push(kept, x) > 0;
    }
    ok = ok && SSL_CTX_set1_chain(ctx, kept) == 1; /* its own references */
    sk_X509_free(kept);
    return ok;
}
