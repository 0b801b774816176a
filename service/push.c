/*
 * push.c — waking devices: an MDM push ({"mdm": PushMagic} to the device's
 * token through the APNs client in apns/) only tells a device to check in.
 * Outcomes go back to the store: accepted pushes mark the device's queued
 * entries pushed; dead tokens stop further pushes until a TokenUpdate.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "apns/apns.h"
#include "service/service_internal.h"

struct svc_push {
    apns_client *client; /* NULL without --apns */
    /* SHA-256 of the certificate and key files |client| was made from: a
     * reload makes a new client only when they changed (a new client
     * cancels the pushes in flight). */
    unsigned char files_sha256[32];
    /* That certificate's topic (its UID; empty if none) and notAfter (ms). */
    char cert_topic[256];
    int64_t cert_not_after;
    /* --apns-cert, --apns-key, --apns-topic as started (NULL if not given). */
    char *cfg_cert, *cfg_key, *cfg_topic;
};

/* A client made by a reload, not in use yet. */
struct push_fresh {
    apns_client *client;
    unsigned char files_sha256[32];
    char cert_topic[256];
    int64_t cert_not_after;
};

static esim_err file_cert_facts(const char *path, char topic[256], int64_t *not_after,
                                esim_error *err);

/* SHA-256 over the bytes of |cert| then |key|. */
static esim_err files_digest(const char *cert, const char *key, unsigned char out[32],
                             esim_error *err)
{
    esim_buf c = {0}, k = {0};
    esim_err rc = esim_read_file(cert, 1 << 20, &c, err);
    if (rc == ESIM_OK)
        rc = esim_read_file(key, 1 << 20, &k, err);
    EVP_MD_CTX *md = rc == ESIM_OK ? EVP_MD_CTX_new() : NULL;
    unsigned int n = 0;
    if (rc == ESIM_OK &&
        (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
         EVP_DigestUpdate(md, c.data, c.len) != 1 || EVP_DigestUpdate(md, k.data, k.len) != 1 ||
         EVP_DigestFinal_ex(md, out, &n) != 1 || n != 32))
        rc = esim_fail(err, ESIM_ECRYPTO, "cannot hash the push certificate");
    EVP_MD_CTX_free(md);
    if (k.data)
        OPENSSL_cleanse(k.data, k.len);
    esim_buf_free(&c);
    esim_buf_free(&k);
    return rc;
}

bool push_configured(const esim_service *svc)
{
    return svc->push && svc->push->client;
}

typedef struct {
    esim_service *svc;
    char udid[65];
} push_ticket;

/* APNs trouble is logged when it starts and when it stops, not per push:
 * a dead APNs would otherwise write a line per device. */
static void apns_health(esim_service *svc, bool ok, const char *outcome, int status,
                        const char *reason)
{
    if (ok) {
        if (svc->apns_failing) {
            char n[24];
            snprintf(n, sizeof n, "%llu", (unsigned long long)svc->apns_failing);
            svc_log(svc, ESIM_LOG_INFO, "apns_recovered", "failures", n, NULL);
        }
        svc->apns_failing = 0;
        return;
    }
    if (svc->apns_failing++ == 0) {
        char st[8];
        snprintf(st, sizeof st, "%d", status);
        svc_log(svc, ESIM_LOG_WARN, "apns_failing", "outcome", outcome, "status",
                status ? st : NULL, "reason", reason && *reason ? reason : NULL, NULL);
    }
}

/* What an APNs or WNS answer leaves in the store (the push recorded, its
 * token dead, or a push_failed event): with a store pool, on a worker (an
 * admin job), the loop going on meanwhile; nothing waits for it but the
 * count of store failures. */
typedef struct {
    pool_job job; /* first: the pool's view of it */
    push_note_kind kind;
    bool no_device; /* a push_failed event of no device (WNS's token endpoint) */
    char udid[65];
    char detail[300];
    int64_t now;
} push_note_job;

static void push_note_run(store *st, pool_job *pj)
{
    push_note_job *n = (push_note_job *)pj;
    if (n->kind == PUSH_NOTE_FAILED)
        pj->rc = esim_store_event_append(st, "push_failed", n->no_device ? NULL : n->udid, NULL,
                                         n->detail, NULL, 0, n->now, NULL);
    else
        pj->rc = esim_store_push_recorded(st, n->udid, n->kind == PUSH_NOTE_DEAD, n->now, NULL);
}

static void push_note_done(esim_service *svc, pool_job *pj)
{
    if (pj->ran && pj->rc != ESIM_OK)
        svc_store_failed(svc, NULL);
    free(pj);
}

void push_note(esim_service *svc, push_note_kind kind, const char *udid, const char *detail,
               int64_t now)
{
    push_note_job *n = calloc(1, sizeof *n);
    if (!n) {
        svc_store_failed(svc, "out of memory");
        return;
    }
    n->job.run = push_note_run;
    n->job.done = push_note_done;
    n->job.admin = true;
    n->kind = kind;
    n->no_device = udid == NULL;
    snprintf(n->udid, sizeof n->udid, "%s", udid ? udid : "");
    snprintf(n->detail, sizeof n->detail, "%s", detail ? detail : "");
    n->now = now;
    pool_run(svc, &n->job);
}

static void on_push_result(const apns_result *r, void *arg)
{
    esim_service *svc = arg;
    push_ticket *t = r->user_data;
    if ((int)r->outcome >= 0 &&
        (size_t)r->outcome < sizeof svc->m.push_outcomes / sizeof svc->m.push_outcomes[0])
        svc->m.push_outcomes[r->outcome]++;
    int64_t now = esim_now_ms();
    if (r->outcome == APNS_OUTCOME_ACCEPTED || r->outcome == APNS_OUTCOME_TOKEN_DEAD)
        apns_health(svc, true, NULL, 0, NULL); /* APNs answered: a dead token is the device's */
    else if (r->outcome != APNS_OUTCOME_CANCELED)
        apns_health(svc, false, esim_apns_outcome_name(r->outcome), r->status, r->reason);
    if (r->outcome == APNS_OUTCOME_ACCEPTED) {
        push_note(svc, PUSH_NOTE_SENT, t->udid, NULL, now);
    } else if (r->outcome == APNS_OUTCOME_TOKEN_DEAD) {
        push_note(svc, PUSH_NOTE_DEAD, t->udid, NULL, now);
    } else if (r->outcome != APNS_OUTCOME_CANCELED) {
        char detail[300];
        snprintf(detail, sizeof detail, "%s: %d %s", esim_apns_outcome_name(r->outcome), r->status,
                 r->reason);
        push_note(svc, PUSH_NOTE_FAILED, t->udid, detail, now);
    }
    free(t);
}

const char *push_topic(const esim_service *svc)
{
    return push_configured(svc) ? esim_apns_client_topic(svc->push->client) : NULL;
}

static esim_err client_new(esim_service *svc, const char *cert, const char *key, const char *topic,
                           apns_client **out, esim_error *err)
{
    apns_config cfg;
    esim_apns_config_init(&cfg);
    cfg.url = svc->apns_url;
    cfg.auth = cert ? APNS_AUTH_CERTIFICATE : APNS_AUTH_NONE;
    cfg.cert_path = cert;
    cfg.key_path = key;
    cfg.ca_path = svc->apns_ca_path;
    cfg.topic = topic;
    return esim_apns_client_new(svc->base, &cfg, on_push_result, svc, out, err);
}

/* Where PUT /v1/pushcert keeps the certificate and key it was given. */
static void stored_paths(const esim_service *svc, char cert[600], char key[600])
{
    snprintf(cert, 600, "%s/apns-push.pem", svc->data_dir ? svc->data_dir : ".");
    snprintf(key, 600, "%s/apns-push.key", svc->data_dir ? svc->data_dir : ".");
}

esim_err push_init(esim_service *svc, esim_error *err)
{
    svc->push = calloc(1, sizeof *svc->push);
    if (!svc->push)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (!svc->apns_url)
        return ESIM_OK;
    svc_push *p = svc->push;
    if ((svc->apns_cert_path && !(p->cfg_cert = strdup(svc->apns_cert_path))) ||
        (svc->apns_key_path && !(p->cfg_key = strdup(svc->apns_key_path))) ||
        (svc->apns_topic && !(p->cfg_topic = strdup(svc->apns_topic))))
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    /* No --apns-cert: a certificate uploaded earlier (PUT /v1/pushcert)
     * is used again. */
    char cert[600], key[600];
    stored_paths(svc, cert, key);
    if (!svc->apns_cert_path && !svc->apns_topic && access(cert, R_OK) == 0 &&
        access(key, R_OK) == 0) {
        svc->apns_cert_path = strdup(cert);
        svc->apns_key_path = strdup(key);
        if (!svc->apns_cert_path || !svc->apns_key_path)
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    esim_err rc =
        client_new(svc, svc->apns_cert_path, svc->apns_key_path, svc->apns_topic, &p->client, err);
    if (rc == ESIM_OK && svc->apns_cert_path && svc->apns_key_path)
        rc = files_digest(svc->apns_cert_path, svc->apns_key_path, p->files_sha256, err);
    /* A certificate without a UID still pushes with --apns-topic. */
    if (rc == ESIM_OK && svc->apns_cert_path &&
        file_cert_facts(svc->apns_cert_path, p->cert_topic, &p->cert_not_after, NULL) != ESIM_OK)
        p->cert_topic[0] = '\0';
    return rc;
}

const char *push_configured_cert(const esim_service *svc)
{
    return svc->push ? svc->push->cfg_cert : NULL;
}

const char *push_configured_key(const esim_service *svc)
{
    return svc->push ? svc->push->cfg_key : NULL;
}

const char *push_configured_topic(const esim_service *svc)
{
    return svc->push ? svc->push->cfg_topic : NULL;
}

esim_err push_reload_prepare(esim_service *svc, struct push_fresh **fresh, esim_error *err)
{
    *fresh = NULL;
    if (!push_configured(svc) || !svc->apns_cert_path || !svc->apns_key_path)
        return ESIM_OK;
    unsigned char sha[32];
    esim_err rc = files_digest(svc->apns_cert_path, svc->apns_key_path, sha, err);
    if (rc != ESIM_OK || memcmp(sha, svc->push->files_sha256, sizeof sha) == 0)
        return rc;
    struct push_fresh *f = calloc(1, sizeof *f);
    if (!f)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    memcpy(f->files_sha256, sha, sizeof sha);
    rc = client_new(svc, svc->apns_cert_path, svc->apns_key_path, svc->apns_topic, &f->client, err);
    if (rc != ESIM_OK) {
        free(f);
        return rc;
    }
    /* Without --apns-topic the topic is the certificate's UID: checked as
     * PUT /v1/pushcert checks it. */
    rc = file_cert_facts(svc->apns_cert_path, f->cert_topic, &f->cert_not_after, err);
    if (rc != ESIM_OK && svc->apns_topic) {
        f->cert_topic[0] = '\0';
        rc = ESIM_OK;
    }
    if (rc != ESIM_OK) {
        push_reload_discard(f);
        return rc;
    }
    *fresh = f;
    return ESIM_OK;
}

void push_reload_commit(esim_service *svc, struct push_fresh *fresh)
{
    if (!fresh)
        return;
    /* As for PUT: the old client's pushes in flight end as canceled. */
    esim_apns_client_free(svc->push->client);
    svc->push->client = fresh->client;
    memcpy(svc->push->files_sha256, fresh->files_sha256, sizeof fresh->files_sha256);
    memcpy(svc->push->cert_topic, fresh->cert_topic, sizeof fresh->cert_topic);
    svc->push->cert_not_after = fresh->cert_not_after;
    free(fresh);
}

void push_reload_discard(struct push_fresh *fresh)
{
    if (!fresh)
        return;
    esim_apns_client_free(fresh->client);
    free(fresh);
}

/* The topic (the subject's UID) and notAfter of a push certificate. */
static esim_err cert_facts(X509 *x, char topic[256], int64_t *not_after, esim_error *err)
{
    X509_NAME *name = X509_get_subject_name(x);
    int i = name ? X509_NAME_get_index_by_NID(name, NID_userId, -1) : -1;
    ASN1_STRING *v = i >= 0 ? X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)) : NULL;
    if (!v || ASN1_STRING_length(v) <= 0 || ASN1_STRING_length(v) >= 256)
        return esim_fail(err, ESIM_EINVAL,
                         "not an MDM push certificate: its subject has no UID (the topic, "
                         "com.apple.mgmt.External.<uuid>)");
    memcpy(topic, ASN1_STRING_get0_data(v), (size_t)ASN1_STRING_length(v));
    topic[ASN1_STRING_length(v)] = '\0';
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1)
        return esim_fail(err, ESIM_EINVAL, "the certificate's notAfter is unreadable");
    *not_after = (int64_t)timegm(&tm) * 1000;
    return ESIM_OK;
}

/* The topic and notAfter of the certificate in the file |path|. */
static esim_err file_cert_facts(const char *path, char topic[256], int64_t *not_after,
                                esim_error *err)
{
    BIO *bio = BIO_new_file(path, "r");
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    ERR_clear_error();
    if (!x)
        return esim_fail(err, ESIM_ECRYPTO, "cannot read the push certificate %s", path);
    esim_err rc = cert_facts(x, topic, not_after, err);
    X509_free(x);
    return rc;
}

esim_err push_cert_info(esim_service *svc, char topic[256], int64_t *not_after, esim_error *err)
{
    if (!push_configured(svc) || !svc->apns_cert_path)
        return esim_fail(err, ESIM_ENOTFOUND,
                         "no push certificate is loaded (give --apns-cert and --apns-key, or "
                         "PUT one to /v1/pushcert)");
    /* The certificate the running client was made from, whatever the file
     * holds now (a SIGHUP reads it again). */
    if (!svc->push->cert_topic[0])
        return esim_fail(err, ESIM_ECRYPTO,
                         "the push certificate %s has no topic (no UID in its subject)",
                         svc->apns_cert_path);
    memcpy(topic, svc->push->cert_topic, 256);
    *not_after = svc->push->cert_not_after;
    return ESIM_OK;
}

esim_err push_replace_cert(esim_service *svc, const void *pem, size_t len, char topic[256],
                           int64_t *not_after, esim_error *err)
{
    if (!svc->apns_url)
        return esim_fail(err, ESIM_ESTATE,
                         "no APNs URL is configured (--apns): a push certificate would not be "
                         "used");
    /* Parse: one certificate and one unencrypted key that belong together. */
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    esim_err rc = ESIM_OK;
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL;
    long dlen = 0;
    while (rc == ESIM_OK && bio && PEM_read_bio(bio, &name, &header, &data, &dlen) == 1) {
        const unsigned char *p = data;
        if (strcmp(name, "CERTIFICATE") == 0 && !x) {
            x = d2i_X509(NULL, &p, dlen);
        } else if (strstr(name, "PRIVATE KEY") && !k) {
            if (strstr(name, "ENCRYPTED") || (header && strstr(header, "ENCRYPTED")))
                rc = esim_fail(err, ESIM_EINVAL,
                               "the private key is encrypted: send it "
                               "unencrypted (openssl pkey -in key.pem)");
            else if (strcmp(name, "PRIVATE KEY") == 0)
                k = d2i_AutoPrivateKey(NULL, &p, dlen);
            else if (strcmp(name, "RSA PRIVATE KEY") == 0)
                k = d2i_PrivateKey(EVP_PKEY_RSA, NULL, &p, dlen);
            else if (strcmp(name, "EC PRIVATE KEY") == 0)
                k = d2i_PrivateKey(EVP_PKEY_EC, NULL, &p, dlen);
        } else if (!strstr(name, "PRIVATE KEY") && strcmp(name, "CERTIFICATE") != 0) {
            rc = esim_fail(err, ESIM_EINVAL,
                           "unexpected PEM block '%.60s': send the push "
                           "certificate and its key",
                           name);
        }
        OPENSSL_free(name);
        OPENSSL_free(header);
        if (data)
            OPENSSL_cleanse(data, (size_t)dlen);
        OPENSSL_free(data);
        name = header = NULL;
        data = NULL;
    }
    BIO_free(bio);
    ERR_clear_error();
    if (rc == ESIM_OK && (!x || !k))
        rc = esim_fail(err, ESIM_EINVAL,
                       "the body must hold a PEM certificate and its PEM private key (%s missing)",
                       !x ? "the certificate is" : "the key is");
    if (rc == ESIM_OK && X509_check_private_key(x, k) != 1)
        rc = esim_fail(err, ESIM_EINVAL, "the private key does not belong to the certificate");
    ERR_clear_error();
    if (rc == ESIM_OK)
        rc = cert_facts(x, topic, not_after, err);
    /* Written next to the store, then a new client is made from the files
     * (as from --apns-cert): only then is the old one replaced. */
    char cert_path[600], key_path[600], tmp_cert[620], tmp_key[620];
    stored_paths(svc, cert_path, key_path);
    snprintf(tmp_cert, sizeof tmp_cert, "%s.new", cert_path);
    snprintf(tmp_key, sizeof tmp_key, "%s.new", key_path);
    esim_buf cert_pem = {0}, key_pem = {0};
    if (rc == ESIM_OK) {
        BIO *cb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_mem());
        char *p = NULL;
        long n;
        if (cb && kb && PEM_write_bio_X509(cb, x) == 1 &&
            PEM_write_bio_PrivateKey(kb, k, NULL, NULL, 0, NULL, NULL) == 1) {
            n = BIO_get_mem_data(cb, &p);
            esim_buf_append(&cert_pem, p, (size_t)n);
            n = BIO_get_mem_data(kb, &p);
            esim_buf_append(&key_pem, p, (size_t)n);
        }
        BIO_free(cb);
        BIO_free_all(kb);
        if (!cert_pem.len || !key_pem.len)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    X509_free(x);
    EVP_PKEY_free(k);
    /* With a PostgreSQL store the data directory may not exist yet. */
    if (rc == ESIM_OK)
        rc = esim_mkdirs(svc->data_dir ? svc->data_dir : ".", 0700, err);
    if (rc == ESIM_OK)
        rc = esim_write_file_atomic(tmp_cert, cert_pem.data, cert_pem.len, 0600, err);
    if (rc == ESIM_OK)
        rc = esim_write_file_atomic(tmp_key, key_pem.data, key_pem.len, 0600, err);
    if (key_pem.data)
        OPENSSL_cleanse(key_pem.data, key_pem.len);
    esim_buf_free(&cert_pem);
    esim_buf_free(&key_pem);
    apns_client *fresh = NULL;
    if (rc == ESIM_OK)
        rc = client_new(svc, tmp_cert, tmp_key, NULL, &fresh, err);
    if (rc == ESIM_OK && (rename(tmp_cert, cert_path) != 0 || rename(tmp_key, key_path) != 0))
        rc = esim_fail(err, ESIM_EIO, "cannot store the push certificate in %s", cert_path);
    unsigned char sha[32];
    if (rc == ESIM_OK)
        rc = files_digest(cert_path, key_path, sha, err);
    char *cp = rc == ESIM_OK ? strdup(cert_path) : NULL,
         *kp = rc == ESIM_OK ? strdup(key_path) : NULL;
    if (rc == ESIM_OK && (!cp || !kp))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (rc != ESIM_OK) {
        unlink(tmp_cert);
        unlink(tmp_key);
        esim_apns_client_free(fresh);
        free(cp);
        free(kp);
        return rc;
    }
    /* The old client's pushes still in flight end as canceled; the devices
     * they were for are pushed again by their next enqueue or debt. */
    esim_apns_client_free(svc->push->client);
    svc->push->client = fresh;
    memcpy(svc->push->files_sha256, sha, sizeof sha);
    memcpy(svc->push->cert_topic, topic, 256);
    svc->push->cert_not_after = *not_after;
    free(svc->apns_cert_path);
    free(svc->apns_key_path);
    free(svc->apns_topic);
    svc->apns_cert_path = cp;
    svc->apns_key_path = kp;
    svc->apns_topic = NULL;
    return ESIM_OK;
}

void push_free(esim_service *svc)
{
    if (!svc->push)
        return;
    esim_apns_client_free(svc->push->client); /* pending pushes end as canceled */
    free(svc->push->cfg_cert);
    free(svc->push->cfg_key);
    free(svc->push->cfg_topic);
    free(svc->push);
    svc->push = NULL;
}

esim_err push_device(esim_service *svc, const char *udid, esim_push_state *state,
                     char apns_id[ESIM_UUID_LEN + 1], esim_error *err)
{
    if (apns_id)
        apns_id[0] = '\0';
    store_push_target t;
    esim_err rc = esim_store_push_target(svc->st, udid, &t, err);
    if (rc != ESIM_OK)
        return rc;
    push_send(svc, &t, state, apns_id, err);
    return ESIM_OK;
}

void push_send(esim_service *svc, const store_push_target *t, esim_push_state *state,
               char apns_id[ESIM_UUID_LEN + 1], esim_error *err)
{
    if (apns_id)
        apns_id[0] = '\0';
    esim_push_state ps;
    if (strcmp(t->platform, "iot") == 0) {
        /* IoT eUICCs are not woken: their IPA polls the eIM and gets its
         * packages then. */
        ps = ESIM_PUSH_PENDING;
    } else if (!t->enrolled || t->push_state == STORE_PUSH_NONE || !t->push_token[0]) {
        ps = ESIM_PUSH_NO_TOKEN;
    } else if (t->push_state == STORE_PUSH_DEAD) {
        ps = ESIM_PUSH_DEAD_TOKEN;
    } else if (strcmp(t->platform, "windows") == 0) {
        ps = wns_push(svc, t->udid, t->push_token); /* wns.c: WNS, not APNs */
    } else if (!push_configured(svc)) {
        /* No APNs: nothing is lost, the device gets its commands at its next
         * check-in. */
        ps = ESIM_PUSH_PENDING;
    } else {
        push_ticket *ticket = calloc(1, sizeof *ticket);
        ps = ESIM_PUSH_FAILED;
        if (ticket) {
            ticket->svc = svc;
            memcpy(ticket->udid, t->udid, sizeof ticket->udid);
            /* Our own apns-id, which APNs keeps: the API can name the push
             * at once (NanoMDM's push_result) while its answer is pending. */
            char id[ESIM_UUID_LEN + 1];
            esim_uuid_new(id);
            apns_push p = {.token = t->push_token,
                           .push_magic = t->push_magic,
                           .apns_id = id,
                           .user_data = ticket};
            esim_error pe = {{0}};
            if (esim_apns_client_push(svc->push->client, &p, &pe) == ESIM_OK) {
                ps = ESIM_PUSH_SENT;
                if (apns_id)
                    memcpy(apns_id, id, sizeof id);
            } else {
                free(ticket);
                apns_health(svc, false, "refused", 0, pe.msg);
                if (err)
                    *err = pe;
            }
        }
    }
    svc->m.pushes[ps]++;
    if (state)
        *state = ps;
}

push_read *push_read_targets(store *st, const char *const *udids, size_t n)
{
    push_read *out = calloc(n ? n : 1, sizeof *out);
    for (size_t i = 0; out && i < n; i++)
        out[i].rc = esim_store_push_target(st, udids[i], &out[i].t, &out[i].e);
    return out;
}

esim_err push_read_send(esim_service *svc, const push_read *pr, esim_push_state *state,
                        char apns_id[ESIM_UUID_LEN + 1], esim_error *err)
{
    if (apns_id)
        apns_id[0] = '\0';
    if (pr->rc != ESIM_OK) {
        if (err)
            *err = pr->e;
        return pr->rc;
    }
    push_send(svc, &pr->t, state, apns_id, err);
    return ESIM_OK;
}

/* A push whose caller waits for nothing (a duplicate's, an undone refill's):
 * the store read of its target on a pool worker, the push on the loop when
 * it is back. */
typedef struct {
    pool_job job; /* first: the pool's view of it */
    store_push_target t;
    char udid[65];
} push_later_job;

static void push_later_run(store *st, pool_job *pj)
{
    push_later_job *j = (push_later_job *)pj;
    pj->rc = esim_store_push_target(st, j->udid, &j->t, NULL);
}

static void push_later_done(esim_service *svc, pool_job *pj)
{
    push_later_job *j = (push_later_job *)pj;
    if (pj->ran && pj->rc == ESIM_OK)
        push_send(svc, &j->t, NULL, NULL, NULL);
    else if (pj->ran && pj->rc == ESIM_ESTORE)
        svc_store_failed(svc, NULL);
    free(j);
}

void push_later(esim_service *svc, const char *udid)
{
    push_later_job *j = calloc(1, sizeof *j);
    if (!j) {
        svc_store_failed(svc, "out of memory");
        return;
    }
    j->job.run = push_later_run;
    j->job.done = push_later_done;
    j->job.admin = true;
    snprintf(j->udid, sizeof j->udid, "%s", udid);
    pool_run(svc, &j->job);
}

void push_metrics(esim_service *svc, esim_buf *out)
{
    if (!push_configured(svc))
        return;
    esim_buf_append_str(out, "# HELP esim_mdm_apns_outcomes_total APNs results by outcome.\n"
                             "# TYPE esim_mdm_apns_outcomes_total counter\n");
    for (int o = APNS_OUTCOME_ACCEPTED; o <= APNS_OUTCOME_CANCELED; o++)
        esim_buf_printf(out, "esim_mdm_apns_outcomes_total{outcome=\"%s\"} %llu\n",
                        esim_apns_outcome_name((apns_outcome)o),
                        (unsigned long long)svc->m.push_outcomes[o]);
    esim_buf_printf(out, "# TYPE esim_mdm_apns_pending gauge\nesim_mdm_apns_pending %zu\n",
                    esim_apns_client_pending(svc->push->client));
}
