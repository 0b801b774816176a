/* fuzz_http.c — see fuzz_http.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "fuzz_http.h"

static struct {
    struct event_base *base;
    CURLM *multi;
    CURL *easy;
    char ca[1024];
} h;

void fuzz_http_init(struct event_base *base, const char *ca_file)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    h.base = base;
    h.multi = curl_multi_init();
    h.easy = curl_easy_init();
    if (!h.multi || !h.easy)
        abort();
    if (ca_file)
        snprintf(h.ca, sizeof h.ca, "%s", ca_file);
}

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    esim_buf_append(userdata, ptr, size * nmemb);
    return size * nmemb;
}

long fuzz_http_send(const char *method, const char *url, const char *content_type,
                    const char *bearer, const void *body, size_t len, esim_buf *reply)
{
    CURL *e = h.easy;
    curl_easy_reset(e);
    esim_buf_reset(reply);
    struct curl_slist *hdr = NULL;
    char line[256];
    if (content_type) {
        snprintf(line, sizeof line, "Content-Type: %s", content_type);
        hdr = curl_slist_append(hdr, line);
    }
    if (bearer) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", bearer);
        hdr = curl_slist_append(hdr, line);
    }
    hdr = curl_slist_append(hdr, "Expect:");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, reply);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (h.ca[0]) {
        curl_easy_setopt(e, CURLOPT_CAINFO, h.ca);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    curl_multi_add_handle(h.multi, e);
    int running = 1;
    while (running) {
        curl_multi_perform(h.multi, &running);
        event_base_loop(h.base, EVLOOP_NONBLOCK);
        if (running)
            curl_multi_poll(h.multi, NULL, 0, 1, NULL);
    }
    long status = 0;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(h.multi, &left)) != NULL)
        if (msg->msg == CURLMSG_DONE && msg->data.result == CURLE_OK)
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(h.multi, e);
    curl_slist_free_all(hdr);
    return status;
}
