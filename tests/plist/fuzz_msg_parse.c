/*
 * fuzz_msg_parse.c — libFuzzer target for what a device may send: every
 * byte string goes through esim_msg_parse (and, when it parses, the
 * ServiceSubscriptions reader), plus esim_cmd_parse and esim_profile_parse;
 * a body the flat XML fast path takes must give libplist's own tree.
 * A crash, a leak, or a broken promise of the API (abort below) is a finding.
 *
 * Built two ways: with clang -fsanitize=fuzzer (ESIM_LIBFUZZER=ON) for real
 * fuzzing, and linked into fuzz_smoke_driver.c for the ctest smoke run.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plist/esim_plist.h"
#include "plist/plist_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A refusal must say why; an acceptance must have filled what it promises. */
static void check_msg_promises(esim_err rc, const esim_msg *m, const esim_error *err)
{
    if (rc != ESIM_OK) {
        if (rc != ESIM_EINVAL && rc != ESIM_ETOOBIG && rc != ESIM_ENOMEM)
            abort();
        if (err->msg[0] == '\0')
            abort();
        return;
    }
    if (!m->root || m->udid[0] == '\0')
        abort();
    switch (m->kind) {
    case ESIM_MSG_AUTHENTICATE:
    case ESIM_MSG_CHECKOUT:
        if (m->topic[0] == '\0')
            abort();
        break;
    case ESIM_MSG_TOKEN_UPDATE:
        if (m->topic[0] == '\0' || m->token.len == 0 || m->push_magic[0] == '\0')
            abort();
        break;
    case ESIM_MSG_RESULT:
        if (!esim_status_name(m->status))
            abort();
        if (m->status != ESIM_STATUS_IDLE && m->command_uuid[0] == '\0')
            abort();
        if ((m->error_chain_len == 0) != (m->error_chain == NULL))
            abort();
        break;
    default:
        abort();
    }
}

/* The fast path's tree is the one libplist's reader builds (compared as XML). */
static void check_flat_path(const uint8_t *data, size_t size)
{
    plist_t fast = plist_xml_flat_dict(data, size);
    if (!fast)
        return;
    plist_t slow = NULL;
    plist_from_xml((const char *)data, (uint32_t)size, &slow);
    esim_buf a = {0}, b = {0};
    if (!slow || esim_plist_serialize(fast, ESIM_PLIST_XML, &a, NULL) != ESIM_OK ||
        esim_plist_serialize(slow, ESIM_PLIST_XML, &b, NULL) != ESIM_OK || a.len != b.len ||
        memcmp(a.data, b.data, a.len) != 0)
        abort();
    esim_buf_free(&a);
    esim_buf_free(&b);
    plist_free(fast);
    plist_free(slow);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < UINT32_MAX)
        check_flat_path(data, size);
    /* A small limit too, so the size and depth refusals are exercised. */
    const esim_parse_limits tight = {.max_body = 4096, .max_depth = 4};
    const esim_parse_limits *limits[] = {NULL, &tight};
    for (size_t k = 0; k < 2; k++) {
        esim_msg m;
        esim_error err = {{0}};
        esim_err rc = esim_msg_parse(data, size, limits[k], &m, &err);
        check_msg_promises(rc, &m, &err);
        if (rc == ESIM_OK) {
            esim_subscription *subs = NULL;
            size_t n = 0;
            if (esim_msg_service_subscriptions(&m, &subs, &n, &err) == ESIM_OK) {
                for (size_t s = 0; s < n; s++)
                    if (strlen(subs[s].eid) > ESIM_EID_LEN)
                        abort();
                free(subs);
            }
            esim_msg_free(&m);
        }
    }
    esim_cmd_parsed cmd;
    if (esim_cmd_parse(data, size, NULL, &cmd, NULL) == ESIM_OK) {
        if (!cmd.command || cmd.command_uuid[0] == '\0' || cmd.request_type[0] == '\0')
            abort();
        esim_cmd_parsed_free(&cmd);
    }
    plist_t profile = NULL;
    if (esim_profile_parse(data, size, NULL, &profile, NULL, NULL) == ESIM_OK) {
        if (!profile)
            abort();
        plist_free(profile);
    }
    return 0;
}
