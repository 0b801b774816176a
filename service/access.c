/*
 * access.c — who may use the admin API: API keys with roles (read-only,
 * operator, admin), the one rule saying which role a request needs, failed
 * authentication slowed down per peer address, and the audit log of admin
 * actions kept in the store. docs/api.md ("Keys and roles") describes it
 * for clients.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <openssl/crypto.h>

#include "core/internal.h"
#include "service/service_internal.h"

/* ---- roles --------------------------------------------------------------------- */

const char *esim_role_name(esim_role role)
{
    switch (role) {
    case ESIM_ROLE_READ_ONLY:
        return "read-only";
    case ESIM_ROLE_OPERATOR:
        return "operator";
    case ESIM_ROLE_ADMIN:
        return "admin";
    default:
        return "none";
    }
}

esim_err esim_role_parse(const char *word, esim_role *out, esim_error *err)
{
    static const struct {
        const char *word;
        esim_role role;
    } words[] = {{"read-only", ESIM_ROLE_READ_ONLY},
                 {"readonly", ESIM_ROLE_READ_ONLY},
                 {"read", ESIM_ROLE_READ_ONLY},
                 {"operator", ESIM_ROLE_OPERATOR},
                 {"admin", ESIM_ROLE_ADMIN}};
    for (size_t i = 0; word && i < sizeof words / sizeof words[0]; i++)
        if (strcmp(word, words[i].word) == 0) {
            *out = words[i].role;
            return ESIM_OK;
        }
    return esim_fail(err, ESIM_EINVAL, "unknown role '%.32s': use read-only, operator or admin",
                     word ? word : "");
}

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

esim_role esim_api_role_needed(const char *method, const char *path)
{
    if (!method || !path)
        return ESIM_ROLE_ADMIN;
    bool read = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (strcmp(path, "/v1/audit") == 0 || has_prefix(path, "/v1/audit/"))
        return ESIM_ROLE_ADMIN;
    if (!read && strcmp(path, "/v1/pushcert") == 0)
        return ESIM_ROLE_ADMIN;
    if (strcmp(path, "/migration") == 0 || has_prefix(path, "/migration/"))
        return ESIM_ROLE_ADMIN;
    if (strcmp(method, "DELETE") == 0 && has_prefix(path, "/v1/devices/") &&
        path[strlen("/v1/devices/")] != '\0' && !strchr(path + strlen("/v1/devices/"), '/'))
        return ESIM_ROLE_ADMIN;
    /* NanoMDM's enqueue and push take any method, GET included. */
    if (has_prefix(path, "/v1/push/") || has_prefix(path, "/v1/enqueue/"))
        return ESIM_ROLE_OPERATOR;
    return read ? ESIM_ROLE_READ_ONLY : ESIM_ROLE_OPERATOR;
}

/* ---- keys ------------------------------------------------------------------------ */

#define API_TOKEN_KEY_NAME "api-token"
#define KEY_TOKEN_MIN 16

static bool key_name_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > 63)
        return false;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("._@-", *p))
            return false;
    return true;
}

static bool key_token_valid(const char *token)
{
    size_t len = strlen(token);
    if (len < KEY_TOKEN_MIN || len > ESIM_TOKEN_MAX)
        return false;
    for (const char *p = token; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p == 0x7f)
            return false;
    return true;
}

void esim_api_keys_free(esim_api_key *keys, size_t n)
{
    for (size_t i = 0; keys && i < n; i++) {
        free((char *)keys[i].name);
        if (keys[i].token) {
            OPENSSL_cleanse((char *)keys[i].token, strlen(keys[i].token));
            free((char *)keys[i].token);
        }
    }
    free(keys);
}

/* Checks a set of keys: names and tokens valid and unique. |api_token| (may
 * be NULL) is one more, named API_TOKEN_KEY_NAME, whose length rules are the
 * token file's (it predates keys). */
static esim_err keys_check(const char *api_token, const esim_api_key *keys, size_t n,
                           esim_error *err)
{
    for (size_t i = 0; i < n; i++) {
        const esim_api_key *k = &keys[i];
        if (!k->name || !key_name_valid(k->name))
            return esim_fail(err, ESIM_EINVAL,
                             "API key %zu: a name is 1 to 63 letters, digits or ._@- characters",
                             i + 1);
        if (!k->token || !key_token_valid(k->token))
            return esim_fail(err, ESIM_EINVAL,
                             "API key '%s': a token is %d to %d bytes without spaces or control "
                             "characters",
                             k->name, KEY_TOKEN_MIN, ESIM_TOKEN_MAX);
        if (k->role < ESIM_ROLE_READ_ONLY || k->role > ESIM_ROLE_ADMIN)
            return esim_fail(err, ESIM_EINVAL, "API key '%s': no such role", k->name);
        if (api_token && *api_token &&
            (strcmp(k->name, API_TOKEN_KEY_NAME) == 0 || strcmp(k->token, api_token) == 0))
            return esim_fail(err, ESIM_EINVAL,
                             "API key '%s': its name or token is the API token's ('%s')", k->name,
                             API_TOKEN_KEY_NAME);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(keys[j].name, k->name) == 0)
                return esim_fail(err, ESIM_EINVAL, "API key '%s' is named twice", k->name);
            if (strcmp(keys[j].token, k->token) == 0)
                return esim_fail(err, ESIM_EINVAL, "API keys '%s' and '%s' share one token",
                                 keys[j].name, k->name);
        }
    }
    return ESIM_OK;
}

esim_err esim_api_keys_load(const char *path, esim_api_key **keys, size_t *n, esim_error *err)
{
    *keys = NULL;
    *n = 0;
    esim_buf b = {0};
    esim_err rc = esim_read_private_file(path, 1 << 20, &b, err);
    if (rc != ESIM_OK)
        return rc;
    esim_buf_append(&b, "", 1); /* NUL-terminated */
    esim_api_key *list = NULL;
    size_t count = 0, cap = 0, line_no = 0;
    char *save = NULL;
    for (char *line = b.data ? strtok_r((char *)b.data, "\n", &save) : NULL; line && rc == ESIM_OK;
         line = strtok_r(NULL, "\n", &save)) {
        line_no++; /* strtok_r skips empty lines: numbers count non-empty ones */
        char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r')
            p++;
        if (*p == '\0' || *p == '#')
            continue;
        char *fields[4] = {0};
        size_t nf = 0;
        char *fs = NULL;
        for (char *f = strtok_r(p, " \t\r", &fs); f && nf < 4; f = strtok_r(NULL, " \t\r", &fs))
            fields[nf++] = f;
        esim_role role = ESIM_ROLE_NONE;
        if (nf != 3) {
            rc = esim_fail(err, ESIM_EINVAL,
                           "%s, key %zu: write NAME ROLE TOKEN (three fields), not %zu", path,
                           line_no, nf);
            break;
        }
        if (esim_role_parse(fields[1], &role, NULL) != ESIM_OK) {
            rc = esim_fail(err, ESIM_EINVAL,
                           "%s, key '%.63s': unknown role '%.32s' (read-only, operator or admin)",
                           path, fields[0], fields[1]);
            break;
        }
        if (count == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            esim_api_key *grown = realloc(list, ncap * sizeof *grown);
            if (!grown) {
                rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
                break;
            }
            list = grown;
            cap = ncap;
        }
        list[count] = (esim_api_key){strdup(fields[0]), strdup(fields[2]), role};
        count++;
        if (!list[count - 1].name || !list[count - 1].token)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    if (b.data)
        OPENSSL_cleanse(b.data, b.len);
    esim_buf_free(&b);
    if (rc == ESIM_OK && count == 0)
        rc = esim_fail(err, ESIM_EINVAL, "%s: no API key in it (NAME ROLE TOKEN per line)", path);
    if (rc == ESIM_OK) {
        esim_error e;
        if (keys_check(NULL, list, count, &e) != ESIM_OK)
            rc = esim_fail(err, ESIM_EINVAL, "%s: %s", path, e.msg);
    }
    if (rc != ESIM_OK) {
        esim_api_keys_free(list, count);
        return rc;
    }
    *keys = list;
    *n = count;
    return ESIM_OK;
}

static void svc_keys_free(svc_key *keys, size_t n)
{
    for (size_t i = 0; keys && i < n; i++) {
        free(keys[i].name);
        if (keys[i].token) {
            OPENSSL_cleanse(keys[i].token, strlen(keys[i].token));
            free(keys[i].token);
        }
    }
    free(keys);
}

esim_err esim_service_set_api_keys(esim_service *svc, const char *api_token,
                                   const esim_api_key *keys, size_t n, esim_error *err)
{
    if (!svc || (n && !keys))
        return esim_fail(err, ESIM_EINVAL, "esim_service_set_api_keys needs a service");
    esim_err rc = keys_check(api_token, keys, n, err);
    if (rc != ESIM_OK)
        return rc;
    size_t total = n + (api_token && *api_token ? 1 : 0);
    svc_key *list = total ? calloc(total, sizeof *list) : NULL;
    if (total && !list)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    bool oom = false;
    size_t k = 0;
    if (api_token && *api_token) {
        list[k].name = strdup(API_TOKEN_KEY_NAME);
        list[k].token = strdup(api_token);
        list[k].role = ESIM_ROLE_ADMIN;
        oom |= !list[k].name || !list[k].token;
        k++;
    }
    for (size_t i = 0; i < n; i++, k++) {
        list[k].name = strdup(keys[i].name);
        list[k].token = strdup(keys[i].token);
        list[k].role = keys[i].role;
        oom |= !list[k].name || !list[k].token;
    }
    if (oom) {
        svc_keys_free(list, total);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    svc_keys_free(svc->keys, svc->n_keys);
    svc->keys = list;
    svc->n_keys = total;
    return ESIM_OK;
}

esim_err access_init(esim_service *svc, esim_error *err)
{
    if (svc->cfg.auth_failures_free == 0)
        svc->cfg.auth_failures_free = 5;
    return esim_service_set_api_keys(svc, svc->cfg.api_token, svc->cfg.api_keys,
                                     svc->cfg.n_api_keys, err);
}

void access_free(esim_service *svc)
{
    svc_keys_free(svc->keys, svc->n_keys);
    svc->keys = NULL;
    svc->n_keys = 0;
}

/* Every key is compared, in constant time each, whichever matches: how long
 * this takes says nothing about which key is near. */
static const svc_key *key_find(const esim_service *svc, const char *token)
{
    const svc_key *hit = NULL;
    for (size_t i = 0; token && i < svc->n_keys; i++)
        if (http_secret_equal(token, svc->keys[i].token) && !hit)
            hit = &svc->keys[i];
    return hit;
}

/* ---- failed authentication, per peer address ------------------------------------- */

/* Failures older than this are forgotten. */
#define AUTHFAIL_FORGET_MS (15 * 60 * 1000LL)
#define AUTHFAIL_LOCK_MAX_MS 60000LL

static svc_authfail *authfail_slot(esim_service *svc, const char *peer, bool create, int64_t now)
{
    if (!peer || !*peer)
        return NULL;
    size_t h = (size_t)(esim_hash_bytes(peer, strlen(peer)) % SVC_AUTHFAIL_SLOTS);
    /* Open addressing over a few slots; the stalest one is reused. */
    svc_authfail *victim = NULL;
    for (size_t i = 0; i < 8; i++) {
        svc_authfail *s = &svc->authfail[(h + i) % SVC_AUTHFAIL_SLOTS];
        if (s->addr[0] && strcmp(s->addr, peer) == 0) {
            if (now - s->last_ms > AUTHFAIL_FORGET_MS && now >= s->locked_until_ms) {
                s->failures = 0;
                s->locked_until_ms = 0;
            }
            return s;
        }
        if (!victim || !s->addr[0] || (victim->addr[0] && s->last_ms < victim->last_ms))
            victim = s;
    }
    if (!create)
        return NULL;
    memset(victim, 0, sizeof *victim);
    snprintf(victim->addr, sizeof victim->addr, "%s", peer);
    return victim;
}

esim_access esim_service_check_access(esim_service *svc, const char *token, const char *peer,
                                      const char *method, const char *path, char name[64],
                                      esim_role *role, int *retry_after_s)
{
    if (name)
        name[0] = '\0';
    if (role)
        *role = ESIM_ROLE_NONE;
    if (retry_after_s)
        *retry_after_s = 0;
    int64_t now = esim_now_ms();
    svc_authfail *slot = authfail_slot(svc, peer, false, now);
    if (slot && slot->locked_until_ms > now) {
        if (retry_after_s)
            *retry_after_s = (int)((slot->locked_until_ms - now + 999) / 1000);
        svc->m.api_throttled++;
        return ESIM_ACCESS_THROTTLED;
    }
    const svc_key *k = token && *token ? key_find(svc, token) : NULL;
    if (!k) {
        svc->m.api_auth_refused++;
        /* A request without any key is a client not yet set up, not a guess. */
        if (token && *token && (slot = authfail_slot(svc, peer, true, now)) != NULL) {
            slot->failures++;
            slot->last_ms = now;
            if (slot->failures >= svc->cfg.auth_failures_free) {
                unsigned over = slot->failures - svc->cfg.auth_failures_free;
                int64_t lock = over >= 6 ? AUTHFAIL_LOCK_MAX_MS : 1000LL << over;
                slot->locked_until_ms = now + lock;
            }
        }
        return ESIM_ACCESS_NO_KEY;
    }
    if (slot) {
        slot->failures = 0;
        slot->locked_until_ms = 0;
    }
    if (name)
        snprintf(name, 64, "%s", k->name);
    if (role)
        *role = k->role;
    if (k->role < esim_api_role_needed(method, path)) {
        svc->m.api_forbidden++;
        return ESIM_ACCESS_FORBIDDEN;
    }
    return ESIM_ACCESS_OK;
}

/* ---- requests ---------------------------------------------------------------------- */

const char *access_method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    default:
        return "OTHER";
    }
}

void access_peer(struct evhttp_request *req, char out[48])
{
    out[0] = '\0';
    struct evhttp_connection *c = evhttp_request_get_connection(req);
    char *host = NULL;
    ev_uint16_t port = 0;
    if (c)
        evhttp_connection_get_peer(c, &host, &port);
    if (host)
        esim_copy_text(out, 48, host);
}

/* The key an Authorization header carries: Bearer KEY, or Basic with the
 * key as the password (NanoMDM's clients send that). |out| is cleansed by
 * the caller. */
static void header_token(const char *h, char *out, size_t out_len)
{
    out[0] = '\0';
    if (!h)
        return;
    if (strncasecmp(h, "Bearer ", 7) == 0) {
        if (strlen(h + 7) < out_len)
            snprintf(out, out_len, "%s", h + 7);
        return;
    }
    if (strncasecmp(h, "Basic ", 6) != 0)
        return;
    esim_buf dec = {0};
    if (esim_base64_decode(h + 6, strlen(h + 6), &dec, NULL) == ESIM_OK && dec.data) {
        const char *colon = memchr(dec.data, ':', dec.len);
        size_t len = colon ? dec.len - (size_t)(colon + 1 - (const char *)dec.data) : 0;
        if (colon && len < out_len && !memchr(colon + 1, '\0', len)) {
            memcpy(out, colon + 1, len);
            out[len] = '\0';
        }
    }
    if (dec.data)
        OPENSSL_cleanse(dec.data, dec.len);
    esim_buf_free(&dec);
}

/* A request without an Authorization header, from a browser's session
 * (esim_service_set_session_auth): the session's key decides, by the same
 * rule. */
static bool session_check(esim_service *svc, api_request *r, const char *method, const char *path)
{
    r->role = svc->session_fn(r, svc->session_arg, r->who);
    if (r->role == ESIM_ROLE_NONE) {
        r->who[0] = '\0';
        api_error(r, 401, NULL, "no session, an expired one, or an action without its CSRF token");
        return false;
    }
    if (r->role < esim_api_role_needed(method, path)) {
        r->audited = true; /* a refused action is an action too */
        r->hold = pool_on(svc);
        api_error(r, 403, NULL, "API key '%s' has role %s; %s %s needs %s", r->who,
                  esim_role_name(r->role), method, path,
                  esim_role_name(esim_api_role_needed(method, path)));
        return false;
    }
    return true;
}

bool access_check_request(esim_service *svc, api_request *r, const char *method, const char *path)
{
    char token[ESIM_TOKEN_MAX + 1];
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Authorization");
    if (!h && svc->session_fn)
        return session_check(svc, r, method, path);
    header_token(h, token, sizeof token);
    char peer[48];
    access_peer(r->req, peer);
    int retry = 0;
    esim_access a =
        esim_service_check_access(svc, token, peer, method, path, r->who, &r->role, &retry);
    OPENSSL_cleanse(token, sizeof token);
    struct evkeyvalq *out = evhttp_request_get_output_headers(r->req);
    switch (a) {
    case ESIM_ACCESS_OK:
        return true;
    case ESIM_ACCESS_THROTTLED: {
        char s[16];
        snprintf(s, sizeof s, "%d", retry);
        svc_log_limited(svc, SVC_LOGLIM_API_AUTH, ESIM_LOG_WARN, "api_auth_throttled", "peer", peer,
                        "method", method, "path", path, "retry_after_s", s, NULL);
        evhttp_add_header(out, "Retry-After", s);
        api_error(r, 429, NULL, "too many failed authentications from %s: try again in %d s",
                  peer[0] ? peer : "this address", retry);
        return false;
    }
    case ESIM_ACCESS_FORBIDDEN:
        svc_log_limited(svc, SVC_LOGLIM_API_AUTH, ESIM_LOG_WARN, "api_forbidden", "peer", peer,
                        "key", r->who, "role", esim_role_name(r->role), "needs",
                        esim_role_name(esim_api_role_needed(method, path)), "method", method,
                        "path", path, NULL);
        r->audited = true; /* a refused action is an action too */
        r->hold = pool_on(svc);
        api_error(r, 403, NULL, "API key '%s' has role %s; %s %s needs %s", r->who,
                  esim_role_name(r->role), method, path,
                  esim_role_name(esim_api_role_needed(method, path)));
        return false;
    default:
        svc_log_limited(svc, SVC_LOGLIM_API_AUTH, ESIM_LOG_WARN, "api_auth_refused", "peer", peer,
                        "method", method, "path", path, "reason",
                        h ? "unknown API key" : "no Authorization header", NULL);
        evhttp_add_header(out, "WWW-Authenticate", "Bearer");
        api_error(r, 401, NULL, "missing or wrong API token: send Authorization: Bearer <token>");
        return false;
    }
}

/* ---- the audit log ------------------------------------------------------------------- */

void access_audit_note(esim_service *svc, struct evhttp_request *req, int code, const char *msg)
{
    if (!svc->audit || svc->audit->req != req)
        return;
    if (code)
        svc->audit->status = code;
    if (msg)
        snprintf(svc->audit->detail, sizeof svc->audit->detail, "%s", msg);
}

void access_audit_write(esim_service *svc, api_request *r, const char *method, const char *path)
{
    if (access_audit_add(svc->st, r, method, path) != ESIM_OK)
        svc_store_failed(svc, NULL);
}

esim_err access_audit_add(store *st, const api_request *r, const char *method, const char *path)
{
    store_audit a = {.at = esim_now_ms(), .status = r->status};
    snprintf(a.who, sizeof a.who, "%s", r->who);
    snprintf(a.role, sizeof a.role, "%s", esim_role_name(r->role));
    snprintf(a.method, sizeof a.method, "%s", method);
    snprintf(a.target, sizeof a.target, "%s", path);
    svc_utf8_sanitize(a.target);
    if (a.target[sizeof a.target - 2])
        memcpy(a.target + sizeof a.target - 4, "...", 4);
    snprintf(a.detail, sizeof a.detail, "%s", r->detail);
    svc_utf8_sanitize(a.detail);
    esim_error e;
    return esim_store_audit_add(st, &a, &e);
}
