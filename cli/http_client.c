/*
 * http_client.c — the CLI's one HTTP client: blocking libcurl calls to the
 * admin API and the simulators' JSON endpoints, one handle reused across
 * calls so a progress bar polling every few hundred ms keeps one connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cli/http_client.h"

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    esim_buf *b = userdata;
    return esim_buf_append(b, ptr, size * nmemb) == ESIM_OK ? size * nmemb : 0;
}

static void trim_slash(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/')
        s[--n] = '\0';
}

bool chttp_open_api(chttp *c, const char *server, const char *token_file)
{
    memset(c, 0, sizeof *c);
    if (!server)
        server = getenv("ESIM_MDM_SERVER") ? getenv("ESIM_MDM_SERVER") : "http://127.0.0.1:8080";
    if (!token_file)
        token_file = getenv("ESIM_MDM_TOKEN_FILE") ? getenv("ESIM_MDM_TOKEN_FILE")
                                                   : "esim-mdm-data/api-token";
    snprintf(c->server, sizeof c->server, "%s", server);
    trim_slash(c->server);
    chttp_set_ca(c, NULL);
    char *tok = NULL;
    esim_error e = {{0}};
    if (esim_read_token_file(token_file, &tok, &e) != ESIM_OK) {
        fprintf(stderr,
                "esim-mdm: cannot read the API token: %s (give --token-file, or set "
                "ESIM_MDM_TOKEN_FILE)\n",
                e.msg);
        return false;
    }
    size_t n = strlen(tok);
    bool fits = n < sizeof c->token;
    if (fits)
        memcpy(c->token, tok, n + 1);
    else
        fprintf(stderr, "esim-mdm: the token in %s is longer than %zu bytes\n", token_file,
                sizeof c->token - 1);
    OPENSSL_cleanse(tok, n);
    free(tok);
    return fits;
}

void chttp_set_ca(chttp *c, const char *ca_file)
{
    static const char *const vars[] = {"ESIM_MDM_CACERT", "CURL_CA_BUNDLE", "SSL_CERT_FILE"};
    for (size_t i = 0; !ca_file && i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            ca_file = v;
    }
    snprintf(c->ca_file, sizeof c->ca_file, "%s", ca_file ? ca_file : "");
}

void chttp_open_plain(chttp *c, const char *base_url, const char *ca_file)
{
    memset(c, 0, sizeof *c);
    snprintf(c->server, sizeof c->server, "%s", base_url);
    trim_slash(c->server);
    if (ca_file)
        snprintf(c->ca_file, sizeof c->ca_file, "%s", ca_file);
}

void chttp_close(chttp *c)
{
    if (c->curl)
        curl_easy_cleanup(c->curl);
    c->curl = NULL;
    OPENSSL_cleanse(c->token, sizeof c->token);
}

/* One attempt; *retry_after is the answer's Retry-After in seconds (0 when
 * it had none). */
static esim_err request_once(chttp *c, const char *method, const char *path,
                             const char *content_type, const void *body, size_t len, long *status,
                             esim_buf *reply_out, long *retry_after, esim_error *err)
{
    *retry_after = 0;
    *status = 0;
    if (!c->curl && !(c->curl = curl_easy_init()))
        return esim_fail(err, ESIM_ENOMEM, "cannot start libcurl");
    CURL *h = c->curl;
    curl_easy_reset(h);
    esim_buf url = {0}, auth = {0}, ct = {0}, reply = {0};
    esim_buf_printf(&url, "%s%s", c->server, path);
    struct curl_slist *hdrs = NULL;
    if (c->token[0]) {
        esim_buf_printf(&auth, "Authorization: Bearer %s", c->token);
        hdrs = curl_slist_append(hdrs, (const char *)auth.data);
    }
    esim_buf_printf(&ct, "Content-Type: %s", content_type ? content_type : "application/json");
    hdrs = curl_slist_append(hdrs, (const char *)ct.data);
    curl_easy_setopt(h, CURLOPT_URL, (const char *)url.data);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &reply);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    if (c->ca_file[0])
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    CURLcode res = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    curl_off_t after = 0;
    if (res == CURLE_OK && curl_easy_getinfo(h, CURLINFO_RETRY_AFTER, &after) == CURLE_OK &&
        after > 0)
        *retry_after = after > CHTTP_RETRY_AFTER_MAX ? CHTTP_RETRY_AFTER_MAX : (long)after;
    curl_slist_free_all(hdrs);
    if (auth.data)
        OPENSSL_cleanse(auth.data, auth.len);
    esim_buf_free(&auth);
    esim_buf_free(&ct);
    esim_err rc = ESIM_OK;
    if (res != CURLE_OK) {
        rc = esim_fail(err, ESIM_EUNAVAIL, "cannot reach %s: %s", (const char *)url.data,
                       curl_easy_strerror(res));
        esim_buf_free(&reply);
    } else {
        esim_buf_free(reply_out);
        *reply_out = reply;
    }
    esim_buf_free(&url);
    return rc;
}

esim_err chttp_request(chttp *c, const char *method, const char *path, const char *content_type,
                       const void *body, size_t len, long *status, esim_buf *reply_out,
                       esim_error *err)
{
    for (int attempt = 1;; attempt++) {
        long after = 0;
        esim_err rc =
            request_once(c, method, path, content_type, body, len, status, reply_out, &after, err);
        if (rc != ESIM_OK || *status != 503 || after == 0 || attempt == CHTTP_TRIES_503)
            return rc;
        fprintf(stderr,
                "esim-mdm: %s %s: the service cannot take it now (503; nothing of it was "
                "kept); trying again in %ld s\n",
                method, path, after);
        sleep((unsigned)after);
    }
}

esim_err chttp_call(chttp *c, const char *method, const char *path, const char *content_type,
                    const void *body, size_t len, long *status, json_t **out, esim_error *err)
{
    *out = NULL;
    esim_buf reply = {0};
    esim_err rc = chttp_request(c, method, path, content_type, body, len, status, &reply, err);
    if (rc == ESIM_OK && reply.len)
        *out = json_loadb((const char *)reply.data, reply.len, 0, NULL);
    esim_buf_free(&reply);
    return rc;
}

const char *chttp_error_message(const json_t *reply)
{
    const json_t *m = json_object_get(json_object_get(reply, "error"), "message");
    if (json_is_string(m))
        return json_string_value(m);
    m = json_object_get(reply, "error");
    return json_is_string(m) ? json_string_value(m) : "(no details)";
}
