/*
 * dashboard.c — serving the dashboard: the embedded pages, the log-in
 * (an API key posted from a form becomes a session cookie: HttpOnly,
 * Secure, SameSite=Strict, expiring), the session as a way into the admin
 * API (esim_service_set_session_auth) with a CSRF token on every action,
 * and the security headers of every page (a strict Content-Security-Policy:
 * no inline script or style, no framing).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "dashboard/dashboard_internal.h"

#define DASH_MAX_SESSIONS 256
#define DASH_IDLE_MS (30LL * 60 * 1000)         /* unused this long: logged out */
#define DASH_LIFETIME_MS (8LL * 60 * 60 * 1000) /* at most this long in all */
#define DASH_COOKIE "esim_session"
/* Failed log-ins: after this many within a minute, the form waits. */
#define DASH_MAX_FAILURES 20

/* A session holds the key that opened it (in memory only): every request
 * is checked with that key as if it had sent it, so a key removed or
 * demoted (SIGHUP) takes its sessions with it at once. */
typedef struct {
    bool used;
    unsigned char id_hash[SHA256_DIGEST_LENGTH]; /* of the cookie's value */
    char csrf[65];
    char key[ESIM_TOKEN_MAX + 1];
    int64_t created_ms, used_ms;
} dash_session;

struct dashboard {
    esim_service *svc;
    dash_session sessions[DASH_MAX_SESSIONS];
    dash_fleet_cache fleet;
    int64_t failures_since_ms;
    unsigned failures;
};

dash_fleet_cache *dash_fleet_cache_of(dashboard *d)
{
    return &d->fleet;
}

const char *dash_platform(const char *platform, const char *product_name, const char *model)
{
    if (platform && strcmp(platform, "windows") == 0)
        return "windows";
    const char *p = product_name && *product_name ? product_name : model ? model : "";
    if (strncmp(p, "iPhone", 6) == 0)
        return "ios";
    if (strncmp(p, "iPad", 4) == 0)
        return "ipados";
    if (strncmp(p, "Mac", 3) == 0)
        return "macos";
    if (strncmp(p, "AppleTV", 7) == 0)
        return "tvos";
    if (strstr(p, "Windows"))
        return "windows";
    return "other";
}

/* ---- headers every answer of the dashboard carries ---------------------------------- */

static void security_headers(esim_api_request *r, bool no_store)
{
    esim_api_add_header(r, "Content-Security-Policy",
                        "default-src 'none'; script-src 'self'; style-src 'self'; "
                        "img-src 'self'; connect-src 'self'; form-action 'self'; "
                        "frame-ancestors 'none'; base-uri 'none'");
    esim_api_add_header(r, "X-Frame-Options", "DENY");
    esim_api_add_header(r, "X-Content-Type-Options", "nosniff");
    esim_api_add_header(r, "Referrer-Policy", "same-origin");
    esim_api_add_header(r, "Cross-Origin-Opener-Policy", "same-origin");
    esim_api_add_header(r, "Cross-Origin-Resource-Policy", "same-origin");
    esim_api_add_header(r, "Cache-Control", no_store ? "no-store" : "no-cache");
}

static const dash_asset *asset(const char *name)
{
    for (const dash_asset *a = dash_assets; a->name; a++)
        if (strcmp(a->name, name) == 0)
            return a;
    return NULL;
}

static void redirect(esim_api_request *r, const char *to)
{
    security_headers(r, true);
    esim_api_add_header(r, "Location", to);
    esim_api_reply(r, 303, NULL, NULL, 0);
}

/* ---- sessions ------------------------------------------------------------------------ */

static void hash_id(const char *id, unsigned char out[SHA256_DIGEST_LENGTH])
{
    SHA256((const unsigned char *)id, strlen(id), out);
}

/* The value of |name| in a Cookie header, copied into |out|; false if absent. */
static bool cookie_value(const char *header, const char *name, char *out, size_t out_len)
{
    size_t nl = strlen(name);
    for (const char *p = header; p && *p;) {
        while (*p == ' ' || *p == ';')
            p++;
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t vl = len - nl - 1;
            if (vl >= out_len)
                return false;
            memcpy(out, p + nl + 1, vl);
            out[vl] = '\0';
            return true;
        }
        p = end;
    }
    return false;
}

/* The request's live session, or NULL (an expired one is forgotten). */
static dash_session *session_of(dashboard *d, esim_api_request *r)
{
    const char *cookie = esim_api_header(r, "Cookie");
    char id[80];
    if (!cookie || !cookie_value(cookie, DASH_COOKIE, id, sizeof id) || strlen(id) != 64)
        return NULL;
    unsigned char h[SHA256_DIGEST_LENGTH];
    hash_id(id, h);
    OPENSSL_cleanse(id, sizeof id);
    int64_t now = esim_now_ms();
    for (size_t i = 0; i < DASH_MAX_SESSIONS; i++) {
        dash_session *s = &d->sessions[i];
        if (!s->used || CRYPTO_memcmp(s->id_hash, h, sizeof h) != 0)
            continue;
        if (now - s->used_ms > DASH_IDLE_MS || now - s->created_ms > DASH_LIFETIME_MS) {
            memset(s, 0, sizeof *s);
            return NULL;
        }
        return s;
    }
    return NULL;
}

/* A request from another site (its Origin is not this host) is refused
 * whatever it carries. Browsers send Origin on every POST. */
static bool same_origin(esim_api_request *r)
{
    const char *origin = esim_api_header(r, "Origin");
    if (!origin)
        return true;
    const char *host = esim_api_header(r, "Host");
    if (!host)
        return false;
    const char *rest = strncmp(origin, "https://", 8) == 0  ? origin + 8
                       : strncmp(origin, "http://", 7) == 0 ? origin + 7
                                                            : NULL;
    return rest && strcmp(rest, host) == 0;
}

/* The role the session's key has now for this request (NONE when the key
 * is gone), its name in |name|. */
static esim_role key_role(dashboard *d, dash_session *s, esim_api_request *r, const char *method,
                          const char *path, char name[64])
{
    char peer[48];
    esim_role role = ESIM_ROLE_NONE;
    esim_access a = esim_service_check_access(d->svc, s->key, esim_api_peer(r, peer), method, path,
                                              name, &role, NULL);
    if (a == ESIM_ACCESS_OK || a == ESIM_ACCESS_FORBIDDEN)
        return role;
    if (a == ESIM_ACCESS_NO_KEY)
        OPENSSL_cleanse(s, sizeof *s); /* the key was removed: so is the session */
    return ESIM_ROLE_NONE;
}

static bool csrf_ok(esim_api_request *r, const dash_session *s)
{
    const char *csrf = esim_api_header(r, "X-CSRF-Token");
    return csrf && strlen(csrf) == strlen(s->csrf) &&
           CRYPTO_memcmp(csrf, s->csrf, strlen(s->csrf)) == 0 && same_origin(r);
}

static esim_role session_auth(esim_api_request *r, void *arg, char name[64])
{
    dashboard *d = arg;
    dash_session *s = session_of(d, r);
    if (!s)
        return ESIM_ROLE_NONE;
    const char *method = esim_api_method(r);
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0 && !csrf_ok(r, s))
        return ESIM_ROLE_NONE;
    esim_role role = key_role(d, s, r, method, esim_api_path(r), name);
    if (role != ESIM_ROLE_NONE)
        s->used_ms = esim_now_ms();
    return role;
}

static esim_err random_hex(char *out, size_t bytes)
{
    unsigned char raw[32];
    if (bytes > sizeof raw || esim_random_bytes(raw, bytes) != ESIM_OK)
        return ESIM_ECRYPTO;
    for (size_t i = 0; i < bytes; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
    OPENSSL_cleanse(raw, sizeof raw);
    return ESIM_OK;
}

/* A new session for |key|; its cookie value in |id| (65 bytes). The
 * oldest session makes room when all are taken. */
static dash_session *session_new(dashboard *d, const char *key, char id[65])
{
    int64_t now = esim_now_ms();
    dash_session *slot = NULL;
    for (size_t i = 0; i < DASH_MAX_SESSIONS; i++) {
        dash_session *s = &d->sessions[i];
        if (s->used && (now - s->used_ms > DASH_IDLE_MS || now - s->created_ms > DASH_LIFETIME_MS))
            memset(s, 0, sizeof *s);
        if (!s->used) {
            if (!slot || slot->used)
                slot = s;
        } else if (!slot || (slot->used && s->used_ms < slot->used_ms)) {
            slot = s;
        }
    }
    memset(slot, 0, sizeof *slot);
    if (random_hex(id, 32) != ESIM_OK || random_hex(slot->csrf, 32) != ESIM_OK)
        return NULL;
    hash_id(id, slot->id_hash);
    slot->used = true;
    snprintf(slot->key, sizeof slot->key, "%s", key);
    slot->created_ms = slot->used_ms = now;
    return slot;
}

static void set_cookie(esim_api_request *r, const char *value, long max_age_s)
{
    char c[256];
    snprintf(c, sizeof c, DASH_COOKIE "=%s; Path=/; Max-Age=%ld; HttpOnly; Secure; SameSite=Strict",
             value, max_age_s);
    esim_api_add_header(r, "Set-Cookie", c);
}

/* ---- pages ----------------------------------------------------------------------------- */

static void reply_asset(esim_api_request *r, const dash_asset *a, bool no_store)
{
    security_headers(r, no_store);
    esim_api_reply(r, 200, a->content_type, a->data, a->len);
}

static void h_root(esim_api_request *r, void *arg)
{
    redirect(r, "/dashboard/");
}

static void h_app(esim_api_request *r, void *arg)
{
    if (!session_of(arg, r)) {
        redirect(r, "/dashboard/login");
        return;
    }
    reply_asset(r, asset("index.html"), true);
}

static void h_asset(esim_api_request *r, void *arg)
{
    const dash_asset *a = asset(esim_api_param(r, 0));
    if (!a || strcmp(a->name, "index.html") == 0 || strcmp(a->name, "login.html") == 0) {
        security_headers(r, true);
        esim_api_error(r, 404, NULL, "no such dashboard file: %s", esim_api_path(r));
        return;
    }
    reply_asset(r, a, false);
}

/* The log-in page, with |message| (plain text, no markup) in place of its
 * <!--MESSAGE--> mark. */
static void login_page(esim_api_request *r, int code, const char *message)
{
    const dash_asset *a = asset("login.html");
    const char *mark = "<!--MESSAGE-->";
    const char *at = memmem(a->data, a->len, mark, strlen(mark));
    esim_buf b = {0};
    if (at) {
        size_t head = (size_t)((const unsigned char *)at - a->data);
        esim_buf_append(&b, a->data, head);
        if (message)
            esim_buf_printf(&b, "<p class=\"error\" role=\"alert\">%s</p>", message);
        esim_buf_append(&b, at + strlen(mark), a->len - head - strlen(mark));
    } else {
        esim_buf_append(&b, a->data, a->len);
    }
    security_headers(r, true);
    esim_api_reply(r, code, a->content_type, b.data, b.len);
    esim_buf_free(&b);
}

static void h_login_page(esim_api_request *r, void *arg)
{
    if (session_of(arg, r)) {
        redirect(r, "/dashboard/");
        return;
    }
    login_page(r, 200, NULL);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* The form field |name| of an application/x-www-form-urlencoded body,
 * decoded into |out|; false when absent or too long. */
static bool form_field(const unsigned char *body, size_t len, const char *name, char *out,
                       size_t out_len)
{
    size_t nl = strlen(name), i = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && body[end] != '&')
            end++;
        if (end - i > nl && memcmp(body + i, name, nl) == 0 && body[i + nl] == '=') {
            size_t o = 0;
            for (size_t k = i + nl + 1; k < end; k++) {
                char c = (char)body[k];
                if (c == '+')
                    c = ' ';
                else if (c == '%' && k + 2 < end && hexval((char)body[k + 1]) >= 0 &&
                         hexval((char)body[k + 2]) >= 0) {
                    c = (char)(hexval((char)body[k + 1]) * 16 + hexval((char)body[k + 2]));
                    k += 2;
                }
                if (o + 1 >= out_len || c == '\0')
                    return false;
                out[o++] = c;
            }
            out[o] = '\0';
            return true;
        }
        i = end + 1;
    }
    return false;
}

static void h_login(esim_api_request *r, void *arg)
{
    dashboard *d = arg;
    int64_t now = esim_now_ms();
    if (now - d->failures_since_ms > 60000) {
        d->failures_since_ms = now;
        d->failures = 0;
    }
    if (!same_origin(r)) {
        login_page(r, 403, "This form can only be sent from the dashboard's own page.");
        return;
    }
    if (d->failures >= DASH_MAX_FAILURES) {
        esim_api_add_header(r, "Retry-After", "60");
        login_page(r, 429, "Too many failed log-ins: wait a minute.");
        return;
    }
    size_t len = 0;
    const unsigned char *body = esim_api_body(r, &len);
    char key[ESIM_TOKEN_MAX + 1], peer[48];
    bool got = body && form_field(body, len, "key", key, sizeof key);
    /* The same check as the API's (and the same lock-out of an address
     * that keeps failing): may this key read the dashboard's data? */
    int retry = 0;
    esim_access a = got ? esim_service_check_access(d->svc, key, esim_api_peer(r, peer), "GET",
                                                    "/v1/dashboard/fleet", NULL, NULL, &retry)
                        : ESIM_ACCESS_NO_KEY;
    if (a == ESIM_ACCESS_THROTTLED) {
        OPENSSL_cleanse(key, sizeof key);
        char after[16];
        snprintf(after, sizeof after, "%d", retry > 0 ? retry : 1);
        esim_api_add_header(r, "Retry-After", after);
        login_page(r, 429, "Too many failed log-ins from this address: wait a little.");
        return;
    }
    if (a != ESIM_ACCESS_OK) {
        OPENSSL_cleanse(key, sizeof key);
        d->failures++;
        login_page(r, 401, "That is not an API key of this service.");
        return;
    }
    char id[65];
    dash_session *s = session_new(d, key, id);
    OPENSSL_cleanse(key, sizeof key);
    if (!s) {
        login_page(r, 500, "No randomness for a session: try again.");
        return;
    }
    set_cookie(r, id, (long)(DASH_LIFETIME_MS / 1000));
    OPENSSL_cleanse(id, sizeof id);
    redirect(r, "/dashboard/");
}

static void h_logout(esim_api_request *r, void *arg)
{
    dashboard *d = arg;
    dash_session *s = session_of(d, r);
    if (s && csrf_ok(r, s))
        OPENSSL_cleanse(s, sizeof *s);
    else if (s) {
        security_headers(r, true);
        esim_api_error(r, 403, NULL, "log-out needs the page's CSRF token");
        return;
    }
    set_cookie(r, "", 0);
    security_headers(r, true);
    esim_api_reply(r, 204, NULL, NULL, 0);
}

/* What the page needs to know: the role (to hide what it may not do), the
 * CSRF token to send on actions, when the session ends. */
static void h_session(esim_api_request *r, void *arg)
{
    dashboard *d = arg;
    dash_session *s = session_of(d, r);
    char name[64] = "";
    esim_role role = s ? key_role(d, s, r, "GET", "/v1/dashboard/fleet", name) : ESIM_ROLE_NONE;
    security_headers(r, true);
    if (role == ESIM_ROLE_NONE) {
        esim_api_error(r, 401, NULL, "not logged in");
        return;
    }
    int64_t idle_end = s->used_ms + DASH_IDLE_MS, end = s->created_ms + DASH_LIFETIME_MS;
    esim_api_reply_json(r, 200,
                        json_pack("{s:s,s:s,s:s,s:b,s:I}", "key", name, "role",
                                  esim_role_name(role), "csrf", s->csrf, "can_act",
                                  role >= ESIM_ROLE_OPERATOR, "expires_ms",
                                  (json_int_t)(idle_end < end ? idle_end : end)));
}

/* ---- attaching -------------------------------------------------------------------------- */

static void dash_close(esim_service *svc, void *arg)
{
    dashboard *d = arg;
    json_decref(d->fleet.json);
    pthread_mutex_destroy(&d->fleet.lock);
    OPENSSL_cleanse(d->sessions, sizeof d->sessions);
    free(d);
}

esim_err esim_dashboard_attach(esim_service *svc, esim_error *err)
{
    if (!svc)
        return esim_fail(err, ESIM_EINVAL, "no service to attach the dashboard to");
    dashboard *d = calloc(1, sizeof *d);
    if (!d)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    d->svc = svc;
    pthread_mutex_init(&d->fleet.lock, NULL);
    static const struct {
        const char *method, *pattern;
        esim_api_handler fn;
    } pages[] = {
        {"GET", "/", h_root},
        {"GET", "/dashboard", h_root},
        {"GET", "/dashboard/", h_app},
        {"GET", "/dashboard/login", h_login_page},
        {"POST", "/dashboard/login", h_login},
        {"POST", "/dashboard/logout", h_logout},
        {"GET", "/dashboard/session", h_session},
        {"GET", "/dashboard/:", h_asset},
    };
    esim_err rc = ESIM_OK;
    for (size_t i = 0; rc == ESIM_OK && i < sizeof pages / sizeof pages[0]; i++)
        rc = esim_service_add_public_route(svc, pages[i].method, pages[i].pattern, pages[i].fn, d);
    if (rc == ESIM_OK)
        rc = dash_api_add_routes(d, svc, err);
    if (rc == ESIM_OK)
        rc = esim_service_set_session_auth(svc, session_auth, d);
    if (rc == ESIM_OK)
        rc = esim_service_add_close(svc, dash_close, d);
    if (rc != ESIM_OK) {
        esim_service_remove_hooks(svc, d);
        free(d);
        return esim_fail(err, rc, "cannot attach the dashboard: %s", esim_strerror(rc));
    }
    return ESIM_OK;
}
