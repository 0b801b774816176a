/*
 * euicc.c — the virtual eUICC: its EID, a P-256 key that never leaves it and
 * a certificate from the test EUM, the profiles with their SGP.22 rules
 * (one enabled at a time, PPR1/PPR2, delete only when disabled), the
 * notifications it owes its SM-DP+s, and its crash-safe JSON form.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>

#include "core/internal.h"
#include "sim/sim_internal.h"

/* Pending notifications the eUICC keeps; SGP.22 leaves the number to the
 * implementation. When full, the oldest is dropped to make room. */
#define SIM_MAX_NOTIFICATIONS 64

struct sim_euicc {
    const sim_pki *pki;
    char eid[ESIM_EID_LEN + 1];
    esim_buf key_der;      /* private key, DER; parsed only when signing */
    EVP_PKEY *key;         /* key_der parsed, while the device is in a session */
    sim_ec_signer *sign;   /* and ready to sign */
    esim_buf cert_der;     /* eUICC certificate, DER */
    esim_buf eum_der;      /* the EUM that signed it, DER; empty when it is the PKI's (shared) */
    sim_profile *profiles; /* grown on demand, at most SIM_MAX_PROFILES */
    size_t n_profiles, cap_profiles;
    sim_notification *notifs;
    size_t n_notifs, cap_notifs; /* grown on demand from one, freed when none is owed: */
    /* most eUICCs owe nothing once their SM-DP+ confirmed the install */
    uint32_t next_seq;
    sim_eim_info *eims; /* SGP.32: the associated eIMs, at most SIM_MAX_EIMS */
    size_t n_eims;
    int64_t next_token;       /* the next association token handed out, >= 1 */
    bool auto_enable;         /* configureAutoEnable */
    char *auto_enable_smdp;   /* NULL unless set (SGP.32 IoT eUICCs only); < 256 bytes */
    uint8_t session_txid[16]; /* the RSP session installing now (sim_euicc_set_session) */
    bool dirty;
};

const char *sim_result_name(sim_result r)
{
    switch (r) {
    case SIM_RES_OK:
        return "ok";
    case SIM_RES_ICCID_OR_AID_NOT_FOUND:
        return "iccidOrAidNotFound";
    case SIM_RES_PROFILE_NOT_IN_DISABLED_STATE:
        return "profileNotInDisabledState";
    case SIM_RES_PROFILE_NOT_IN_ENABLED_STATE:
        return "profileNotInEnabledState";
    case SIM_RES_DISALLOWED_BY_POLICY:
        return "disallowedByPolicy";
    case SIM_RES_CAT_BUSY:
        return "catBusy";
    case SIM_RES_ICCID_ALREADY_EXISTS:
        return "iccidAlreadyExists";
    case SIM_RES_INSUFFICIENT_MEMORY:
        return "insufficientMemory";
    }
    return "undefinedError";
}

const char *sim_notif_event_name(sim_notif_event ev)
{
    switch (ev) {
    case SIM_NOTIF_INSTALL:
        return "install";
    case SIM_NOTIF_ENABLE:
        return "enable";
    case SIM_NOTIF_DISABLE:
        return "disable";
    case SIM_NOTIF_DELETE:
        return "delete";
    }
    return "unknown";
}

static const char *class_name(sim_profile_class c)
{
    return c == SIM_CLASS_TEST           ? "test"
           : c == SIM_CLASS_PROVISIONING ? "provisioning"
                                         : "operational";
}

static bool class_parse(const char *s, sim_profile_class *out)
{
    if (!s)
        return false;
    if (strcmp(s, "test") == 0)
        *out = SIM_CLASS_TEST;
    else if (strcmp(s, "provisioning") == 0)
        *out = SIM_CLASS_PROVISIONING;
    else if (strcmp(s, "operational") == 0)
        *out = SIM_CLASS_OPERATIONAL;
    else
        return false;
    return true;
}

/* ---- creation -------------------------------------------------------------- */

static esim_err key_to_der(EVP_PKEY *k, esim_buf *out)
{
    unsigned char *der = NULL;
    int n = i2d_PrivateKey(k, &der);
    if (n <= 0)
        return ESIM_ECRYPTO;
    esim_buf_reset(out);
    esim_err rc = esim_buf_append(out, der, (size_t)n);
    OPENSSL_clear_free(der, (size_t)n);
    return rc;
}

/* 100,000 eUICCs from one EUM need not hold 100,000 copies of it. */
static void share_eum(sim_euicc *e)
{
    const esim_buf *pe = &e->pki->eum_der;
    if (e->eum_der.len == pe->len && memcmp(e->eum_der.data, pe->data, pe->len) == 0)
        esim_buf_free(&e->eum_der);
}

static const esim_buf *eum_of(const sim_euicc *e)
{
    return e->eum_der.len ? &e->eum_der : &e->pki->eum_der;
}

static EVP_PKEY *key_from_der(const esim_buf *b)
{
    return sim_private_key_from_der(b->data, b->len);
}

/* Issues a fresh key and certificate for the eUICC from |eum|. */
static esim_err issue_cert(sim_euicc *e, const esim_cert *eum, X509 *eum_for_chain, esim_error *err)
{
    char cn[64];
    snprintf(cn, sizeof cn, "eUICC %s", e->eid);
    esim_cert_spec spec = {
        .common_name = cn,
        .organization = "esim-mdm simulated eUICC",
        .serial_number = e->eid, /* SGP.22: the eUICC certificate names its EID */
        .key_type = ESIM_KEY_EC_P256,
        .days = 3650,
    };
    esim_cert c = {0};
    esim_err rc = esim_cert_issue(&spec, eum, &c, err);
    if (rc != ESIM_OK)
        return rc;
    esim_buf key = {0}, cert = {0}, eumd = {0};
    rc = key_to_der(c.key, &key);
    if (rc == ESIM_OK)
        rc = sim_x509_to_der(c.x509, &cert);
    if (rc == ESIM_OK)
        rc = sim_x509_to_der(eum_for_chain, &eumd);
    EVP_PKEY *k = rc == ESIM_OK && EVP_PKEY_up_ref(c.key) ? c.key : NULL;
    esim_cert_clear(&c);
    if (rc != ESIM_OK) {
        esim_buf_free(&key);
        esim_buf_free(&cert);
        esim_buf_free(&eumd);
        return esim_fail(err, rc, "could not encode the eUICC key or certificate");
    }
    esim_buf_free(&e->key_der);
    esim_buf_free(&e->cert_der);
    esim_buf_free(&e->eum_der);
    /* The new key is used right away (the download that made it signs next). */
    sim_euicc_release_key(e);
    e->key = k;
    sim_buf_fit(&key);  /* kept for the eUICC's life: their exact size, not the */
    sim_buf_fit(&cert); /* encoder's doubled room (~500 bytes per eUICC) */
    e->key_der = key;
    e->cert_der = cert;
    e->eum_der = eumd;
    share_eum(e);
    e->dirty = true;
    return ESIM_OK;
}

esim_err sim_euicc_new(const sim_pki *pki, const char *eid, sim_euicc **out, esim_error *err)
{
    if (!pki || !out)
        return esim_fail(err, ESIM_EINVAL, "sim_euicc_new needs a PKI");
    esim_err rc = esim_eid_validate(eid, err);
    if (rc != ESIM_OK)
        return rc;
    sim_euicc *e = calloc(1, sizeof *e);
    if (!e)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    e->pki = pki;
    memcpy(e->eid, eid, ESIM_EID_LEN + 1);
    e->next_seq = 1;
    e->next_token = 1;
    /* The key pair and certificate are made when first used (the first
     * download), then kept: 100,000 simulated phones start in moments. */
    e->dirty = true;
    *out = e;
    return ESIM_OK;
}

static esim_err ensure_credentials(sim_euicc *e, esim_error *err)
{
    if (e->key_der.len)
        return ESIM_OK;
    /* From the PKI's EUM, encoded directly (sim_euicc_issue); the key
     * signs by its scalar, read from key_der when it signs. */
    esim_buf key = {0}, cert = {0};
    esim_err rc = sim_euicc_issue(e->pki, e->eid, &key, &cert, err);
    if (rc != ESIM_OK)
        return rc;
    esim_buf_free(&e->key_der);
    esim_buf_free(&e->cert_der);
    esim_buf_free(&e->eum_der); /* the PKI's, shared */
    sim_euicc_release_key(e);
    sim_buf_fit(&key);  /* kept for the eUICC's life: their exact size, not the */
    sim_buf_fit(&cert); /* encoder's doubled room (~500 bytes per eUICC) */
    e->key_der = key;
    e->cert_der = cert;
    e->dirty = true;
    return ESIM_OK;
}

esim_err sim_euicc_reissue(sim_euicc *e, const esim_cert *eum, X509 *eum_for_chain, esim_error *err)
{
    return issue_cert(e, eum, eum_for_chain, err);
}

void sim_euicc_free(sim_euicc *e)
{
    if (!e)
        return;
    if (e->key_der.data)
        OPENSSL_cleanse(e->key_der.data, e->key_der.len);
    esim_buf_free(&e->key_der);
    sim_euicc_release_key(e);
    esim_buf_free(&e->cert_der);
    esim_buf_free(&e->eum_der);
    free(e->profiles);
    free(e->notifs);
    for (size_t i = 0; i < e->n_eims; i++)
        esim_buf_free(&e->eims[i].key_der);
    free(e->eims);
    free(e->auto_enable_smdp);
    free(e);
}

const char *sim_euicc_eid(const sim_euicc *e)
{
    return e->eid;
}
bool sim_euicc_dirty(const sim_euicc *e)
{
    return e->dirty;
}
void sim_euicc_mark_clean(sim_euicc *e)
{
    e->dirty = false;
}
X509 *sim_euicc_trusted_ci(const sim_euicc *e)
{
    return e->pki->ci.x509;
}

/* Each eUICC checks the certificate it is shown itself, every time: no
 * eUICC takes another's verdict (the cache lends the parse and the CI
 * key's precomputed table, not a result). */
X509 *sim_euicc_verify_server_cert(const sim_euicc *e, const char *b64, esim_error *err)
{
    esim_err why;
    esim_buf der = {0};
    if (!b64 || esim_base64_decode(b64, strlen(b64), &der, NULL) != ESIM_OK) {
        esim_buf_free(&der);
        esim_fail(err, ESIM_EINVAL, "certificate is not base64");
        return NULL;
    }
    X509 *x =
        sim_cert_cache_check(e->pki->server_certs, der.data, der.len, e->pki->ci.x509, &why, err);
    esim_buf_free(&der);
    return x;
}

X509 *sim_euicc_verify_ci_cert_der(const sim_euicc *e, const unsigned char *der, size_t len)
{
    esim_err why;
    return sim_cert_cache_check(e->pki->server_certs, der, len, e->pki->ci.x509, &why, NULL);
}

X509 *sim_euicc_parse_cert_der(const sim_euicc *e, const unsigned char *der, size_t len)
{
    return sim_cert_cache_parse_der(e->pki->server_certs, der, len);
}

esim_err sim_euicc_verify_by(const sim_euicc *e, X509 *cert, const void *data, size_t len,
                             const unsigned char *sig, size_t sig_len)
{
    return sim_cert_cache_verify_by(e->pki->server_certs, cert, data, len, sig, sig_len, NULL);
}

/* ---- profiles -------------------------------------------------------------- */

static sim_profile *find(sim_euicc *e, const char *iccid)
{
    if (!iccid)
        return NULL;
    for (size_t i = 0; i < e->n_profiles; i++)
        if (strcmp(e->profiles[i].iccid, iccid) == 0)
            return &e->profiles[i];
    return NULL;
}

const sim_profile *sim_euicc_find(const sim_euicc *e, const char *iccid)
{
    return find((sim_euicc *)e, iccid);
}

const sim_profile *sim_euicc_enabled(const sim_euicc *e)
{
    for (size_t i = 0; i < e->n_profiles; i++)
        if (e->profiles[i].state == SIM_PROFILE_ENABLED)
            return &e->profiles[i];
    return NULL;
}

size_t sim_euicc_profile_count(const sim_euicc *e)
{
    return e->n_profiles;
}

const sim_profile *sim_euicc_profile_at(const sim_euicc *e, size_t i)
{
    return i < e->n_profiles ? &e->profiles[i] : NULL;
}

/* Queues a notification; the eUICC owes it to the profile's SM-DP+ until
 * that server confirms it (ES9+ handleNotification). */
static void notify(sim_euicc *e, sim_notif_event ev, const sim_profile *p)
{
    if (e->n_notifs == SIM_MAX_NOTIFICATIONS) {
        memmove(e->notifs, e->notifs + 1, (e->n_notifs - 1) * sizeof *e->notifs);
        e->n_notifs--;
    }
    if (e->n_notifs == e->cap_notifs) {
        size_t cap = e->cap_notifs ? e->cap_notifs * 2 : 1;
        if (cap > SIM_MAX_NOTIFICATIONS)
            cap = SIM_MAX_NOTIFICATIONS;
        sim_notification *nn = realloc(e->notifs, cap * sizeof *nn);
        if (!nn)
            return; /* out of memory: the notification is lost, the profile change stands */
        e->notifs = nn;
        e->cap_notifs = cap;
    }
    sim_notification *n = &e->notifs[e->n_notifs++];
    memset(n, 0, sizeof *n);
    n->seq = e->next_seq++;
    n->event = ev;
    memcpy(n->iccid, p->iccid, sizeof n->iccid);
    memcpy(n->smdp_address, p->smdp_address, sizeof n->smdp_address);
    if (ev == SIM_NOTIF_INSTALL) {
        memcpy(n->transaction_id, e->session_txid, sizeof n->transaction_id);
        memset(e->session_txid, 0, sizeof e->session_txid);
    }
}

void sim_euicc_set_session(sim_euicc *e, const uint8_t transaction_id[16])
{
    memcpy(e->session_txid, transaction_id, sizeof e->session_txid);
}

esim_err sim_euicc_install(sim_euicc *e, const sim_profile *p, sim_result *res, esim_error *err)
{
    if (!e || !p || !res)
        return esim_fail(err, ESIM_EINVAL, "sim_euicc_install needs a profile");
    esim_err rc = esim_iccid_validate(p->iccid, err);
    if (rc != ESIM_OK)
        return rc;
    if (p->profile_class > SIM_CLASS_OPERATIONAL)
        return esim_fail(err, ESIM_EINVAL,
                         "profile class %d is not test, provisioning or operational",
                         (int)p->profile_class);
    if (find(e, p->iccid)) {
        *res = SIM_RES_ICCID_ALREADY_EXISTS;
        return ESIM_OK;
    }
    if (e->n_profiles == SIM_MAX_PROFILES) {
        *res = SIM_RES_INSUFFICIENT_MEMORY;
        return ESIM_OK;
    }
    if (e->n_profiles == e->cap_profiles) {
        sim_profile *np = esim_grow(e->profiles, &e->cap_profiles, e->n_profiles + 1, sizeof *np);
        if (!np)
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        e->profiles = np;
    }
    sim_profile *n = &e->profiles[e->n_profiles++];
    *n = *p;
    n->state = SIM_PROFILE_DISABLED; /* SGP.22: a downloaded profile arrives disabled */
    n->iccid[SIM_ICCID_MAX] = '\0';
    n->nickname[sizeof n->nickname - 1] = '\0';
    n->service_provider[sizeof n->service_provider - 1] = '\0';
    n->profile_name[sizeof n->profile_name - 1] = '\0';
    n->smdp_address[sizeof n->smdp_address - 1] = '\0';
    n->ppr &= SIM_PPR1 | SIM_PPR2;
    notify(e, SIM_NOTIF_INSTALL, n);
    e->dirty = true;
    *res = SIM_RES_OK;
    return ESIM_OK;
}

sim_result sim_euicc_enable(sim_euicc *e, const char *iccid)
{
    sim_profile *p = find(e, iccid);
    if (!p)
        return SIM_RES_ICCID_OR_AID_NOT_FOUND;
    if (p->state == SIM_PROFILE_ENABLED)
        return SIM_RES_PROFILE_NOT_IN_DISABLED_STATE;
    sim_profile *cur = (sim_profile *)sim_euicc_enabled(e);
    /* Enabling implicitly disables the current profile, which PPR1 forbids. */
    if (cur && (cur->ppr & SIM_PPR1))
        return SIM_RES_DISALLOWED_BY_POLICY;
    if (cur) {
        cur->state = SIM_PROFILE_DISABLED;
        notify(e, SIM_NOTIF_DISABLE, cur);
    }
    p->state = SIM_PROFILE_ENABLED;
    notify(e, SIM_NOTIF_ENABLE, p);
    e->dirty = true;
    return SIM_RES_OK;
}

sim_result sim_euicc_disable(sim_euicc *e, const char *iccid)
{
    sim_profile *p = find(e, iccid);
    if (!p)
        return SIM_RES_ICCID_OR_AID_NOT_FOUND;
    if (p->state != SIM_PROFILE_ENABLED)
        return SIM_RES_PROFILE_NOT_IN_ENABLED_STATE;
    if (p->ppr & SIM_PPR1)
        return SIM_RES_DISALLOWED_BY_POLICY;
    p->state = SIM_PROFILE_DISABLED;
    notify(e, SIM_NOTIF_DISABLE, p);
    e->dirty = true;
    return SIM_RES_OK;
}

static void remove_at(sim_euicc *e, size_t i)
{
    memmove(&e->profiles[i], &e->profiles[i + 1], (e->n_profiles - i - 1) * sizeof e->profiles[0]);
    e->n_profiles--;
}

sim_result sim_euicc_delete(sim_euicc *e, const char *iccid)
{
    sim_profile *p = find(e, iccid);
    if (!p)
        return SIM_RES_ICCID_OR_AID_NOT_FOUND;
    if (p->state != SIM_PROFILE_DISABLED)
        return SIM_RES_PROFILE_NOT_IN_DISABLED_STATE;
    if (p->ppr & SIM_PPR2)
        return SIM_RES_DISALLOWED_BY_POLICY;
    notify(e, SIM_NOTIF_DELETE, p);
    remove_at(e, (size_t)(p - e->profiles));
    e->dirty = true;
    return SIM_RES_OK;
}

size_t sim_euicc_memory_reset(sim_euicc *e)
{
    size_t deleted = 0;
    for (size_t i = 0; i < e->n_profiles;) {
        /* SGP.22 eUICCMemoryReset removes operational profiles regardless of
         * their state and policy rules; test profiles survive. */
        if (e->profiles[i].profile_class == SIM_CLASS_OPERATIONAL) {
            notify(e, SIM_NOTIF_DELETE, &e->profiles[i]);
            remove_at(e, i);
            deleted++;
        } else {
            i++;
        }
    }
    if (deleted)
        e->dirty = true;
    return deleted;
}

/* ---- notifications -------------------------------------------------------- */

size_t sim_euicc_notification_count(const sim_euicc *e)
{
    return e->n_notifs;
}

const sim_notification *sim_euicc_notification_at(const sim_euicc *e, size_t i)
{
    return i < e->n_notifs ? &e->notifs[i] : NULL;
}

size_t sim_euicc_heap_bytes(const sim_euicc *e)
{
    size_t n = e->key_der.cap + e->cert_der.cap + e->eum_der.cap +
               e->cap_profiles * sizeof *e->profiles + e->cap_notifs * sizeof *e->notifs +
               e->n_eims * sizeof *e->eims +
               (e->auto_enable_smdp ? strlen(e->auto_enable_smdp) + 1 : 0);
    for (size_t i = 0; i < e->n_eims; i++)
        n += e->eims[i].key_der.cap;
    return n;
}

esim_err sim_euicc_notification_remove(sim_euicc *e, uint32_t seq)
{
    for (size_t i = 0; i < e->n_notifs; i++) {
        if (e->notifs[i].seq == seq) {
            memmove(&e->notifs[i], &e->notifs[i + 1], (e->n_notifs - i - 1) * sizeof *e->notifs);
            e->n_notifs--;
            if (e->n_notifs == 0) { /* nothing owed: hold no room for it (~180 bytes each) */
                free(e->notifs);
                e->notifs = NULL;
                e->cap_notifs = 0;
            }
            e->dirty = true;
            return ESIM_OK;
        }
    }
    return ESIM_ENOTFOUND;
}

/* ---- SGP.32: associated eIMs ------------------------------------------------ */

size_t sim_euicc_eim_count(const sim_euicc *e)
{
    return e->n_eims;
}

const sim_eim_info *sim_euicc_eim_at(const sim_euicc *e, size_t i)
{
    return i < e->n_eims ? &e->eims[i] : NULL;
}

const sim_eim_info *sim_euicc_eim_find(const sim_euicc *e, const char *eim_id)
{
    for (size_t i = 0; eim_id && i < e->n_eims; i++)
        if (strcmp(e->eims[i].eim_id, eim_id) == 0)
            return &e->eims[i];
    return NULL;
}

/* A deep copy of |c| into |dst| (its key DER duplicated). */
static esim_err eim_copy(sim_eim_info *dst, const sim_eim_info *c)
{
    sim_eim_info n = *c;
    n.key_der = (esim_buf){0};
    if (c->key_der.len && esim_buf_append(&n.key_der, c->key_der.data, c->key_der.len) != ESIM_OK)
        return ESIM_ENOMEM;
    *dst = n;
    return ESIM_OK;
}

esim_err sim_euicc_eim_add(sim_euicc *e, const sim_eim_info *c, int64_t *token)
{
    if (!c->eim_id[0])
        return ESIM_EINVAL;
    if (sim_euicc_eim_find(e, c->eim_id))
        return ESIM_EEXIST;
    if (e->n_eims == SIM_MAX_EIMS)
        return ESIM_ETOOBIG;
    sim_eim_info *grown = realloc(e->eims, (e->n_eims + 1) * sizeof *grown);
    if (!grown)
        return ESIM_ENOMEM;
    e->eims = grown;
    sim_eim_info *n = &e->eims[e->n_eims];
    if (eim_copy(n, c) != ESIM_OK)
        return ESIM_ENOMEM;
    /* The eUICC chooses the token: unique per eUICC, never handed out twice. */
    n->association_token = e->next_token++;
    e->n_eims++;
    e->dirty = true;
    if (token)
        *token = n->association_token;
    return ESIM_OK;
}

esim_err sim_euicc_eim_update(sim_euicc *e, const sim_eim_info *c)
{
    sim_eim_info *cur = (sim_eim_info *)sim_euicc_eim_find(e, c->eim_id);
    if (!cur)
        return ESIM_ENOTFOUND;
    sim_eim_info n;
    if (eim_copy(&n, c) != ESIM_OK)
        return ESIM_ENOMEM;
    n.association_token = cur->association_token;
    esim_buf_free(&cur->key_der);
    *cur = n;
    e->dirty = true;
    return ESIM_OK;
}

esim_err sim_euicc_eim_delete(sim_euicc *e, const char *eim_id)
{
    sim_eim_info *cur = (sim_eim_info *)sim_euicc_eim_find(e, eim_id);
    if (!cur)
        return ESIM_ENOTFOUND;
    esim_buf_free(&cur->key_der);
    size_t i = (size_t)(cur - e->eims);
    memmove(&e->eims[i], &e->eims[i + 1], (e->n_eims - i - 1) * sizeof *e->eims);
    e->n_eims--;
    e->dirty = true;
    return ESIM_OK;
}

void sim_euicc_eim_accept_counter(sim_euicc *e, const char *eim_id, uint64_t counter)
{
    sim_eim_info *cur = (sim_eim_info *)sim_euicc_eim_find(e, eim_id);
    if (cur && counter > cur->counter) {
        cur->counter = counter;
        e->dirty = true;
    }
}

uint32_t sim_euicc_take_seq(sim_euicc *e)
{
    e->dirty = true;
    return e->next_seq++;
}

void sim_euicc_set_auto_enable(sim_euicc *e, bool on, const char *smdp)
{
    e->auto_enable = on;
    free(e->auto_enable_smdp);
    /* At most 255 bytes, as before it was held in a 256-byte array; NULL
     * when out of memory or empty, which reads as "". */
    e->auto_enable_smdp = smdp && *smdp ? strndup(smdp, 255) : NULL;
    e->dirty = true;
}

bool sim_euicc_auto_enable(const sim_euicc *e)
{
    return e->auto_enable;
}

const char *sim_euicc_auto_enable_smdp(const sim_euicc *e)
{
    return e->auto_enable && e->auto_enable_smdp ? e->auto_enable_smdp : "";
}

/* ---- crypto hooks ----------------------------------------------------------- */

esim_err sim_euicc_sign(const sim_euicc *e, const void *data, size_t len, unsigned char sig[64],
                        esim_error *err)
{
    esim_err rc = ensure_credentials((sim_euicc *)e, err);
    if (rc != ESIM_OK)
        return rc;
    unsigned char dgst[32], d[32], point[65];
    sim_sha256(data, len, dgst);
    /* A key as sim_euicc_issue writes it signs by its scalar, read from
     * its DER (no OpenSSL key object per session, as a device's identity
     * key signs); any other form (a reissued eUICC's, an older file's) is
     * parsed once and kept until sim_euicc_release_key: a download signs
     * three times and its notifications once each. */
    if (sim_p256_private_from_der(e->key_der.data, e->key_der.len, d, point)) {
        bool ok = sim_ec_sign_with(d, dgst, sig);
        OPENSSL_cleanse(d, sizeof d);
        if (!ok)
            return esim_fail(err, ESIM_ECRYPTO, "cannot sign with the eUICC key of %s", e->eid);
        return ESIM_OK;
    }
    sim_euicc *m = (sim_euicc *)e;
    if (!m->key && !(m->key = key_from_der(&e->key_der)))
        return esim_fail(err, ESIM_ECRYPTO, "the eUICC key of %s is damaged", e->eid);
    if (!m->sign && !(m->sign = sim_ec_signer_new(m->key)))
        return esim_fail(err, ESIM_ECRYPTO, "cannot sign with the eUICC key of %s", e->eid);
    if (!sim_ec_signer_sign(m->sign, dgst, sig))
        return esim_fail(err, ESIM_ECRYPTO, "ECDSA signing failed");
    return ESIM_OK;
}

void sim_euicc_release_key(sim_euicc *e)
{
    if (e) {
        sim_ec_signer_free(e->sign);
        e->sign = NULL;
        EVP_PKEY_free(e->key);
        e->key = NULL;
    }
}

esim_err sim_euicc_cert_b64(const sim_euicc *e, esim_buf *euicc_b64, esim_buf *eum_b64)
{
    esim_err rc = ensure_credentials((sim_euicc *)e, NULL);
    if (rc == ESIM_OK)
        rc = esim_base64_encode(e->cert_der.data, e->cert_der.len, euicc_b64);
    if (rc == ESIM_OK && eum_b64)
        rc = esim_base64_encode(eum_of(e)->data, eum_of(e)->len, eum_b64);
    return rc;
}

esim_err sim_euicc_cert_der(const sim_euicc *e, const esim_buf **euicc, const esim_buf **eum,
                            esim_error *err)
{
    esim_err rc = ensure_credentials((sim_euicc *)e, err);
    if (rc != ESIM_OK)
        return rc;
    *euicc = &e->cert_der;
    *eum = eum_of(e);
    return ESIM_OK;
}

/* ---- JSON form and files --------------------------------------------------- */

static esim_err copy_field(char *dst, size_t n, const json_t *o, const char *key, esim_error *err);

/* The SGP.32 part: written only once the eUICC has met an eIM, so the
 * state files of iPhones' eUICCs stay as they were. */
static esim_err eims_to_json(const sim_euicc *e, json_t *j)
{
    if (e->n_eims == 0 && e->next_token == 1 && !e->auto_enable)
        return ESIM_OK;
    json_t *arr = json_array();
    if (!arr)
        return ESIM_ENOMEM;
    json_object_set_new(j, "eims", arr);
    json_object_set_new(j, "next_association_token", json_integer(e->next_token));
    if (e->auto_enable)
        json_object_set_new(j, "auto_enable_smdp", json_string(sim_euicc_auto_enable_smdp(e)));
    for (size_t i = 0; i < e->n_eims; i++) {
        const sim_eim_info *m = &e->eims[i];
        json_t *o = json_pack("{s:s, s:s, s:i, s:I, s:I, s:b, s:i, s:b}", "eim_id", m->eim_id,
                              "fqdn", m->fqdn, "id_type", m->id_type, "counter",
                              (json_int_t)m->counter, "association_token",
                              (json_int_t)m->association_token, "key_is_cert", m->key_is_cert,
                              "protocols", (int)m->protocols, "has_protocols", m->has_protocols);
        if (!o || json_array_append_new(arr, o) != 0)
            return ESIM_ENOMEM;
        if (m->key_der.len &&
            sim_json_set_b64(o, "key", m->key_der.data, m->key_der.len) != ESIM_OK)
            return ESIM_ENOMEM;
    }
    return ESIM_OK;
}

static esim_err eims_from_json(sim_euicc *e, const json_t *j, esim_error *err)
{
    json_t *arr = json_object_get(j, "eims"), *tok = json_object_get(j, "next_association_token");
    if (!arr && !tok)
        return ESIM_OK;
    if (!json_is_array(arr) || json_array_size(arr) > SIM_MAX_EIMS || !json_is_integer(tok) ||
        json_integer_value(tok) < 1)
        return esim_fail(err, ESIM_EINVAL, "eUICC state: eims or next_association_token malformed");
    e->next_token = json_integer_value(tok);
    const char *ae = sim_json_str(j, "auto_enable_smdp");
    if (ae) {
        e->auto_enable = true;
        if (strlen(ae) > 255)
            return esim_fail(err, ESIM_EINVAL,
                             "auto_enable_smdp is too long (%zu bytes, at most 255)", strlen(ae));
        if (*ae && !(e->auto_enable_smdp = strdup(ae)))
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    size_t n = json_array_size(arr);
    if (n && !(e->eims = calloc(n, sizeof *e->eims)))
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        sim_eim_info *m = &e->eims[i];
        json_t *ctr = json_object_get(o, "counter"), *at = json_object_get(o, "association_token"),
               *it = json_object_get(o, "id_type"), *pr = json_object_get(o, "protocols");
        esim_err rc = copy_field(m->eim_id, sizeof m->eim_id, o, "eim_id", err);
        if (rc == ESIM_OK)
            rc = copy_field(m->fqdn, sizeof m->fqdn, o, "fqdn", err);
        if (rc != ESIM_OK)
            return rc;
        e->n_eims++; /* from here its key is freed with the eUICC */
        if (!m->eim_id[0] || !json_is_integer(ctr) || json_integer_value(ctr) < 0 ||
            !json_is_integer(at) || json_integer_value(at) < 1 ||
            json_integer_value(at) >= e->next_token || !json_is_integer(it) ||
            json_integer_value(it) < 0 || json_integer_value(it) > 3 || !json_is_integer(pr) ||
            json_integer_value(pr) < 0 || json_integer_value(pr) > 255)
            return esim_fail(err, ESIM_EINVAL, "eUICC state: eIM %zu is malformed", i + 1);
        for (size_t k = 0; k < i; k++)
            if (strcmp(e->eims[k].eim_id, m->eim_id) == 0)
                return esim_fail(err, ESIM_EINVAL, "eUICC state: eIM %s appears twice", m->eim_id);
        m->counter = (uint64_t)json_integer_value(ctr);
        m->association_token = json_integer_value(at);
        m->id_type = (int)json_integer_value(it);
        m->protocols = (uint8_t)json_integer_value(pr);
        m->has_protocols = json_is_true(json_object_get(o, "has_protocols"));
        m->key_is_cert = json_is_true(json_object_get(o, "key_is_cert"));
        if (json_object_get(o, "key") && (rc = sim_json_b64(o, "key", &m->key_der, err)) != ESIM_OK)
            return rc;
    }
    return ESIM_OK;
}

json_t *sim_euicc_to_json(const sim_euicc *e)
{
    json_t *j = json_object(), *profiles = json_array(), *notifs = json_array();
    if (!j || !profiles || !notifs)
        goto fail;
    json_object_set_new(j, "eid", json_string(e->eid));
    if (e->key_der.len &&
        (sim_json_set_b64(j, "key", e->key_der.data, e->key_der.len) != ESIM_OK ||
         sim_json_set_b64(j, "cert", e->cert_der.data, e->cert_der.len) != ESIM_OK ||
         sim_json_set_b64(j, "eum", eum_of(e)->data, eum_of(e)->len) != ESIM_OK))
        goto fail;
    json_object_set_new(j, "next_seq", json_integer(e->next_seq));
    for (size_t i = 0; i < e->n_profiles; i++) {
        const sim_profile *p = &e->profiles[i];
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:s}", "iccid", p->iccid,
                              "state", p->state == SIM_PROFILE_ENABLED ? "enabled" : "disabled",
                              "class", class_name(p->profile_class), "nickname", p->nickname,
                              "service_provider", p->service_provider, "profile_name",
                              p->profile_name, "ppr", (int)p->ppr, "smdp_address", p->smdp_address);
        if (!o || json_array_append_new(profiles, o) != 0)
            goto fail;
    }
    for (size_t i = 0; i < e->n_notifs; i++) {
        const sim_notification *n = &e->notifs[i];
        json_t *o = json_pack("{s:I, s:s, s:s, s:s}", "seq", (json_int_t)n->seq, "event",
                              sim_notif_event_name(n->event), "iccid", n->iccid, "smdp_address",
                              n->smdp_address);
        static const uint8_t zero[16];
        if (o && memcmp(n->transaction_id, zero, sizeof zero) != 0) {
            char hex[33];
            for (size_t k = 0; k < 16; k++)
                snprintf(hex + 2 * k, 3, "%02X", n->transaction_id[k]);
            json_object_set_new(o, "transaction_id", json_string(hex));
        }
        if (!o || json_array_append_new(notifs, o) != 0)
            goto fail;
    }
    json_object_set_new(j, "profiles", profiles);
    json_object_set_new(j, "notifications", notifs);
    profiles = notifs = NULL;
    if (eims_to_json(e, j) != ESIM_OK)
        goto fail;
    return j;
fail:
    json_decref(j);
    json_decref(profiles);
    json_decref(notifs);
    return NULL;
}

static esim_err copy_field(char *dst, size_t n, const json_t *o, const char *key, esim_error *err)
{
    const char *s = sim_json_str(o, key);
    if (!s)
        return esim_fail(err, ESIM_EINVAL, "eUICC state: \"%s\" missing", key);
    return sim_copy(dst, n, s, key, err);
}

static esim_err profile_from_json(const json_t *o, sim_profile *p, esim_error *err)
{
    memset(p, 0, sizeof *p);
    esim_err rc;
    if ((rc = copy_field(p->iccid, sizeof p->iccid, o, "iccid", err)) != ESIM_OK ||
        (rc = esim_iccid_validate(p->iccid, err)) != ESIM_OK ||
        (rc = copy_field(p->nickname, sizeof p->nickname, o, "nickname", err)) != ESIM_OK ||
        (rc = copy_field(p->service_provider, sizeof p->service_provider, o, "service_provider",
                         err)) != ESIM_OK ||
        (rc = copy_field(p->profile_name, sizeof p->profile_name, o, "profile_name", err)) !=
            ESIM_OK ||
        (rc = copy_field(p->smdp_address, sizeof p->smdp_address, o, "smdp_address", err)) !=
            ESIM_OK)
        return rc;
    const char *state = sim_json_str(o, "state");
    if (!state || (strcmp(state, "enabled") != 0 && strcmp(state, "disabled") != 0))
        return esim_fail(err, ESIM_EINVAL, "eUICC state: profile %s has a bad state", p->iccid);
    p->state = strcmp(state, "enabled") == 0 ? SIM_PROFILE_ENABLED : SIM_PROFILE_DISABLED;
    if (!class_parse(sim_json_str(o, "class"), &p->profile_class))
        return esim_fail(err, ESIM_EINVAL, "eUICC state: profile %s has a bad class", p->iccid);
    json_t *ppr = json_object_get(o, "ppr");
    if (!json_is_integer(ppr) || json_integer_value(ppr) < 0 || json_integer_value(ppr) > 3)
        return esim_fail(err, ESIM_EINVAL, "eUICC state: profile %s has bad rules", p->iccid);
    p->ppr = (unsigned)json_integer_value(ppr);
    return ESIM_OK;
}

static esim_err notif_from_json(const json_t *o, sim_notification *n, esim_error *err)
{
    memset(n, 0, sizeof *n);
    json_t *seq = json_object_get(o, "seq");
    const char *ev = sim_json_str(o, "event");
    if (!json_is_integer(seq) || json_integer_value(seq) <= 0 ||
        json_integer_value(seq) > UINT32_MAX || !ev)
        return esim_fail(err, ESIM_EINVAL, "eUICC state: a notification is malformed");
    n->seq = (uint32_t)json_integer_value(seq);
    sim_notif_event evs[] = {SIM_NOTIF_INSTALL, SIM_NOTIF_ENABLE, SIM_NOTIF_DISABLE,
                             SIM_NOTIF_DELETE};
    bool found = false;
    for (size_t i = 0; i < 4; i++)
        if (strcmp(ev, sim_notif_event_name(evs[i])) == 0) {
            n->event = evs[i];
            found = true;
        }
    if (!found)
        return esim_fail(err, ESIM_EINVAL, "eUICC state: notification event \"%s\" unknown", ev);
    esim_err rc = copy_field(n->iccid, sizeof n->iccid, o, "iccid", err);
    if (rc == ESIM_OK)
        rc = copy_field(n->smdp_address, sizeof n->smdp_address, o, "smdp_address", err);
    const char *txid = sim_json_str(o, "transaction_id");
    if (rc == ESIM_OK && txid) {
        esim_buf b = {0};
        if (esim_hex_decode(txid, &b, NULL) != ESIM_OK || b.len != sizeof n->transaction_id)
            rc = esim_fail(err, ESIM_EINVAL,
                           "eUICC state: a notification's transaction_id is not 16 bytes of hex");
        else
            memcpy(n->transaction_id, b.data, b.len);
        esim_buf_free(&b);
    }
    return rc;
}

esim_err sim_euicc_from_json(const sim_pki *pki, const json_t *j, sim_euicc **out, esim_error *err)
{
    const char *eid = sim_json_str(j, "eid");
    esim_err rc = esim_eid_validate(eid, err);
    if (rc != ESIM_OK)
        return rc;
    sim_euicc *e = calloc(1, sizeof *e);
    if (!e)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    e->pki = pki;
    e->next_token = 1;
    memcpy(e->eid, eid, ESIM_EID_LEN + 1);
    json_t *seq = json_object_get(j, "next_seq");
    json_t *profiles = json_object_get(j, "profiles"),
           *notifs = json_object_get(j, "notifications");
    /* No key yet: the eUICC was never used (credentials are made lazily). */
    if (json_object_get(j, "key")) {
        if ((rc = sim_json_b64(j, "key", &e->key_der, err)) != ESIM_OK ||
            (rc = sim_json_b64(j, "cert", &e->cert_der, err)) != ESIM_OK ||
            (rc = sim_json_b64(j, "eum", &e->eum_der, err)) != ESIM_OK)
            goto fail;
        share_eum(e);
        EVP_PKEY *k = key_from_der(&e->key_der);
        X509 *x = sim_x509_from_der(e->cert_der.data, e->cert_der.len);
        char serial[64] = "";
        bool sane =
            k && x &&
            esim_cert_subject_field(x, NID_serialNumber, serial, sizeof serial) == ESIM_OK &&
            strcmp(serial, e->eid) == 0 && X509_check_private_key(x, k) == 1;
        EVP_PKEY_free(k);
        X509_free(x);
        if (!sane) {
            rc = esim_fail(err, ESIM_EINVAL,
                           "eUICC state: key or certificate damaged or not for EID %s", e->eid);
            goto fail;
        }
    }
    if (!json_is_integer(seq) || json_integer_value(seq) < 1 ||
        json_integer_value(seq) > UINT32_MAX || !json_is_array(profiles) ||
        json_array_size(profiles) > SIM_MAX_PROFILES || !json_is_array(notifs) ||
        json_array_size(notifs) > SIM_MAX_NOTIFICATIONS) {
        rc = esim_fail(err, ESIM_EINVAL,
                       "eUICC state: next_seq, profiles or notifications malformed");
        goto fail;
    }
    e->next_seq = (uint32_t)json_integer_value(seq);
    size_t enabled = 0;
    size_t n_profiles = json_array_size(profiles);
    if (n_profiles > 0) {
        e->cap_profiles = n_profiles;
        e->profiles = calloc(e->cap_profiles, sizeof *e->profiles);
        if (!e->profiles) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            goto fail;
        }
    }
    for (size_t i = 0; e->profiles && i < n_profiles; i++) {
        rc = profile_from_json(json_array_get(profiles, i), &e->profiles[i], err);
        if (rc != ESIM_OK)
            goto fail;
        for (size_t k2 = 0; k2 < i; k2++)
            if (strcmp(e->profiles[k2].iccid, e->profiles[i].iccid) == 0) {
                rc = esim_fail(err, ESIM_EINVAL, "eUICC state: ICCID %s appears twice",
                               e->profiles[i].iccid);
                goto fail;
            }
        enabled += e->profiles[i].state == SIM_PROFILE_ENABLED;
        e->n_profiles++;
    }
    if (enabled > 1) {
        rc = esim_fail(err, ESIM_EINVAL, "eUICC state: %zu profiles enabled, at most one may be",
                       enabled);
        goto fail;
    }
    size_t n_notifs = json_array_size(notifs);
    if (n_notifs > 0) {
        e->cap_notifs = n_notifs;
        e->notifs = calloc(n_notifs, sizeof *e->notifs);
        if (!e->notifs) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            goto fail;
        }
    }
    for (size_t i = 0; e->notifs && i < n_notifs; i++) {
        rc = notif_from_json(json_array_get(notifs, i), &e->notifs[i], err);
        if (rc != ESIM_OK)
            goto fail;
        if (e->notifs[i].seq >= e->next_seq) {
            rc = esim_fail(err, ESIM_EINVAL, "eUICC state: notification %u is ahead of next_seq",
                           e->notifs[i].seq);
            goto fail;
        }
        e->n_notifs++;
    }
    if ((rc = eims_from_json(e, j, err)) != ESIM_OK)
        goto fail;
    *out = e;
    return ESIM_OK;
fail:
    sim_euicc_free(e);
    return rc;
}

esim_err sim_euicc_save(sim_euicc *e, const char *path, esim_error *err)
{
    json_t *j = sim_euicc_to_json(e);
    if (!j)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_err rc = sim_json_save(j, path, 0600, err);
    json_decref(j);
    if (rc == ESIM_OK)
        e->dirty = false;
    return rc;
}

esim_err sim_euicc_load(const sim_pki *pki, const char *path, sim_euicc **out, esim_error *err)
{
    json_t *j = NULL;
    esim_err rc = sim_json_load(path, 1 << 20, &j, err);
    if (rc != ESIM_OK)
        return rc;
    rc = sim_euicc_from_json(pki, j, out, err);
    json_decref(j);
    return rc;
}
