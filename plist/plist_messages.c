/*
 * plist_messages.c — what devices send (PROTOCOLS.md §3): check-in messages
 * (Authenticate, TokenUpdate, CheckOut) and command results, parsed strictly
 * into esim_msg; plus the same messages built, for the simulator and tests.
 */
#include <stdlib.h>
#include <string.h>

#include "plist/plist_internal.h"

/* APNs device tokens are 32 bytes today; core accepts 32..100 (hex 64..200). */
#define TOKEN_MIN 1
#define TOKEN_MAX 100

static const char *const status_names[] = {
    [ESIM_STATUS_IDLE] = "Idle",      [ESIM_STATUS_ACKNOWLEDGED] = "Acknowledged",
    [ESIM_STATUS_ERROR] = "Error",    [ESIM_STATUS_COMMAND_FORMAT_ERROR] = "CommandFormatError",
    [ESIM_STATUS_NOT_NOW] = "NotNow",
};

const char *esim_status_name(esim_status s)
{
    if ((int)s < ESIM_STATUS_IDLE || (int)s > ESIM_STATUS_NOT_NOW)
        return NULL;
    return status_names[s];
}

esim_err esim_status_from_name(const char *name, esim_status *out)
{
    if (!name || !out)
        return ESIM_EINVAL;
    for (int s = ESIM_STATUS_IDLE; s <= ESIM_STATUS_NOT_NOW; s++) {
        if (strcmp(name, status_names[s]) == 0) {
            *out = (esim_status)s;
            return ESIM_OK;
        }
    }
    return ESIM_EINVAL;
}

void esim_msg_free(esim_msg *msg)
{
    if (!msg)
        return;
    esim_buf_free(&msg->token);
    esim_buf_free(&msg->unlock_token);
    if (msg->bootstrap_token.data)
        memset(msg->bootstrap_token.data, 0, msg->bootstrap_token.len); /* a secret */
    esim_buf_free(&msg->bootstrap_token);
    esim_buf_free(&msg->dm_data);
    free(msg->error_chain);
    plist_free(msg->root);
    memset(msg, 0, sizeof *msg);
}

/* ---- parse -------------------------------------------------------------------- */

typedef struct {
    const char *key;
    size_t offset, size;
} string_field;

#define FIELD(key, member)                                                                         \
    {                                                                                              \
        key, offsetof(esim_msg, member), sizeof(((esim_msg *)0)->member)                           \
    }

static const string_field authenticate_fields[] = {
    FIELD("OSVersion", os_version),
    FIELD("BuildVersion", build_version),
    FIELD("ProductName", product_name),
    FIELD("SerialNumber", serial_number),
    FIELD("IMEI", imei),
    FIELD("MEID", meid),
    FIELD("DeviceName", device_name),
    FIELD("Model", model),
};

/* UDID for device channel; EnrollmentID for User Enrollment, which hides
 * the hardware identity. Either names the device in the queue. */
static esim_err read_device_id(esim_msg *m, const char *what, esim_error *err)
{
    esim_err rc = plist_read_string(m->root, "UDID", false, m->udid, sizeof m->udid, what, err);
    if (rc == ESIM_ENOTFOUND) {
        rc = plist_read_string(m->root, "EnrollmentID", false, m->udid, sizeof m->udid, what, err);
        if (rc == ESIM_ENOTFOUND)
            return esim_fail(err, ESIM_EINVAL, "%s: has neither UDID nor EnrollmentID", what);
        m->is_enrollment_id = true;
    }
    if (rc != ESIM_OK)
        return rc;
    esim_error why;
    esim_error_clear(&why);
    if (esim_udid_validate(m->udid, &why) != ESIM_OK)
        return esim_fail(err, ESIM_EINVAL, "%s: %s is invalid: %s", what,
                         m->is_enrollment_id ? "EnrollmentID" : "UDID", why.msg);
    /* The user channel names its user; the device channel does not. */
    rc = plist_read_string(m->root, "UserID", false, m->user_id, sizeof m->user_id, what, err);
    if (rc == ESIM_ENOTFOUND)
        rc = plist_read_string(m->root, "EnrollmentUserID", false, m->user_id, sizeof m->user_id,
                               what, err);
    return rc == ESIM_ENOTFOUND ? ESIM_OK : rc;
}

/* The check-ins beyond enrolment: no Topic, a few keys of their own. */
static esim_err parse_other_checkin(esim_msg *m, esim_error *err)
{
    const char *what = m->message_type;
    esim_err rc = ESIM_OK;
    switch (m->kind) {
    case ESIM_MSG_USER_AUTHENTICATE: {
        plist_t dr = plist_dict_get_item(m->root, "DigestResponse");
        m->has_digest_response = dr != NULL;
        break;
    }
    case ESIM_MSG_SET_BOOTSTRAP_TOKEN:
        rc = plist_read_data(m->root, "BootstrapToken", false, &m->bootstrap_token, what, err);
        break;
    case ESIM_MSG_DECLARATIVE_MANAGEMENT:
        rc = plist_read_string(m->root, "Endpoint", true, m->dm_endpoint, sizeof m->dm_endpoint,
                               what, err);
        if (rc == ESIM_OK && !m->dm_endpoint[0])
            rc = esim_fail(err, ESIM_EINVAL, "%s: Endpoint is empty", what);
        if (rc == ESIM_OK)
            rc = plist_read_data(m->root, "Data", false, &m->dm_data, what, err);
        break;
    case ESIM_MSG_GET_TOKEN:
        rc = plist_read_string(m->root, "TokenServiceType", true, m->token_service_type,
                               sizeof m->token_service_type, what, err);
        if (rc == ESIM_OK && !m->token_service_type[0])
            rc = esim_fail(err, ESIM_EINVAL, "%s: TokenServiceType is empty", what);
        break;
    default:
        break;
    }
    if (rc == ESIM_ENOTFOUND)
        rc = ESIM_OK;
    if (rc != ESIM_OK)
        return rc;
    /* Topic is optional here; kept when sent. */
    rc = plist_read_string(m->root, "Topic", false, m->topic, sizeof m->topic, what, err);
    return rc == ESIM_ENOTFOUND ? ESIM_OK : rc;
}

static esim_err parse_checkin(esim_msg *m, esim_error *err)
{
    const char *what = m->message_type;
    if (strcmp(m->message_type, "Authenticate") == 0)
        m->kind = ESIM_MSG_AUTHENTICATE;
    else if (strcmp(m->message_type, "TokenUpdate") == 0)
        m->kind = ESIM_MSG_TOKEN_UPDATE;
    else if (strcmp(m->message_type, "CheckOut") == 0)
        m->kind = ESIM_MSG_CHECKOUT;
    else if (strcmp(m->message_type, "UserAuthenticate") == 0)
        m->kind = ESIM_MSG_USER_AUTHENTICATE;
    else if (strcmp(m->message_type, "SetBootstrapToken") == 0)
        m->kind = ESIM_MSG_SET_BOOTSTRAP_TOKEN;
    else if (strcmp(m->message_type, "GetBootstrapToken") == 0)
        m->kind = ESIM_MSG_GET_BOOTSTRAP_TOKEN;
    else if (strcmp(m->message_type, "DeclarativeManagement") == 0)
        m->kind = ESIM_MSG_DECLARATIVE_MANAGEMENT;
    else if (strcmp(m->message_type, "GetToken") == 0)
        m->kind = ESIM_MSG_GET_TOKEN;
    else
        return esim_fail(err, ESIM_EINVAL,
                         "check-in MessageType '%s' is not one of Authenticate, TokenUpdate, "
                         "CheckOut, UserAuthenticate, SetBootstrapToken, GetBootstrapToken, "
                         "DeclarativeManagement, GetToken",
                         m->message_type);
    esim_err rc = read_device_id(m, what, err);
    if (rc != ESIM_OK)
        return rc;
    if (m->kind > ESIM_MSG_RESULT)
        return parse_other_checkin(m, err);
    if ((rc = plist_read_string(m->root, "Topic", true, m->topic, sizeof m->topic, what, err)) !=
        ESIM_OK)
        return rc;
    if (!m->topic[0])
        return esim_fail(err, ESIM_EINVAL, "%s: Topic is empty", what);
    if (m->kind == ESIM_MSG_AUTHENTICATE) {
        for (size_t k = 0; k < sizeof authenticate_fields / sizeof authenticate_fields[0]; k++) {
            const string_field *f = &authenticate_fields[k];
            rc = plist_read_string(m->root, f->key, false, (char *)m + f->offset, f->size, what,
                                   err);
            if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
                return rc;
        }
    } else if (m->kind == ESIM_MSG_TOKEN_UPDATE) {
        if ((rc = plist_read_data(m->root, "Token", true, &m->token, what, err)) != ESIM_OK)
            return rc;
        if (m->token.len < TOKEN_MIN || m->token.len > TOKEN_MAX)
            return esim_fail(
                err, ESIM_EINVAL,
                "%s: Token is %zu bytes; it must be %d to %d bytes (APNs judges the rest)", what,
                m->token.len, TOKEN_MIN, TOKEN_MAX);
        if ((rc = plist_read_string(m->root, "PushMagic", true, m->push_magic, sizeof m->push_magic,
                                    what, err)) != ESIM_OK)
            return rc;
        if (!m->push_magic[0])
            return esim_fail(err, ESIM_EINVAL, "%s: PushMagic is empty", what);
        rc = plist_read_data(m->root, "UnlockToken", false, &m->unlock_token, what, err);
        if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
            return rc;
        rc = plist_read_bool(m->root, "AwaitingConfiguration", false, &m->awaiting_configuration,
                             what, err);
        if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
            return rc;
    }
    return ESIM_OK;
}

static esim_err parse_error_chain(esim_msg *m, esim_error *err)
{
    plist_t chain = plist_dict_get_item(m->root, "ErrorChain");
    if (!chain)
        return ESIM_OK;
    if (plist_get_node_type(chain) != PLIST_ARRAY)
        return esim_fail(err, ESIM_EINVAL, "command result: ErrorChain must be an array");
    uint32_t n = plist_array_get_size(chain);
    if (n == 0)
        return ESIM_OK;
    esim_error_chain_entry *entries = calloc(n, sizeof *entries);
    if (!entries)
        return esim_fail(err, ESIM_ENOMEM, "out of memory reading ErrorChain");
    for (uint32_t k = 0; k < n; k++) {
        plist_t item = plist_array_get_item(chain, k);
        esim_error_chain_entry *e = &entries[k];
        char what[32];
        snprintf(what, sizeof what, "ErrorChain[%u]", k);
        esim_err rc;
        if (plist_get_node_type(item) != PLIST_DICT) {
            rc = esim_fail(err, ESIM_EINVAL, "%s is not a dictionary", what);
            goto fail;
        }
        if ((rc = plist_read_int(item, "ErrorCode", true, &e->code, what, err)) != ESIM_OK)
            goto fail;
        if ((rc = plist_read_string(item, "ErrorDomain", true, e->domain, sizeof e->domain, what,
                                    err)) != ESIM_OK)
            goto fail;
        /* Descriptions are for people and real clients sometimes leave them
         * out; code and domain are what the server acts on. */
        rc = plist_read_string(item, "LocalizedDescription", false, e->localized_description,
                               sizeof e->localized_description, what, err);
        if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
            goto fail;
        rc = plist_read_string(item, "USEnglishDescription", false, e->us_english_description,
                               sizeof e->us_english_description, what, err);
        if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
            goto fail;
        continue;
    fail:
        free(entries);
        return rc;
    }
    m->error_chain = entries;
    m->error_chain_len = n;
    return ESIM_OK;
}

static esim_err parse_result(esim_msg *m, esim_error *err)
{
    const char *what = "command result";
    m->kind = ESIM_MSG_RESULT;
    char status[32];
    esim_err rc = plist_read_string(m->root, "Status", true, status, sizeof status, what, err);
    if (rc != ESIM_OK)
        return rc;
    if (esim_status_from_name(status, &m->status) != ESIM_OK)
        return esim_fail(err, ESIM_EINVAL,
                         "command result: Status '%s' is not one of Idle, Acknowledged, Error, "
                         "CommandFormatError, NotNow",
                         status);
    if ((rc = read_device_id(m, what, err)) != ESIM_OK)
        return rc;
    rc = plist_read_string(m->root, "CommandUUID", false, m->command_uuid, sizeof m->command_uuid,
                           what, err);
    if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
        return rc;
    /* Results are matched on CommandUUID alone, so only Idle may lack it. */
    if (m->status != ESIM_STATUS_IDLE && !m->command_uuid[0])
        return esim_fail(err, ESIM_EINVAL, "command result: Status %s needs a CommandUUID", status);
    rc = plist_read_string(m->root, "RequestType", false, m->request_type, sizeof m->request_type,
                           what, err);
    if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
        return rc;
    plist_t responses = plist_dict_get_item(m->root, "QueryResponses");
    if (responses && plist_get_node_type(responses) != PLIST_DICT)
        return esim_fail(err, ESIM_EINVAL, "command result: QueryResponses must be a dictionary");
    return parse_error_chain(m, err);
}

esim_err esim_msg_parse(const void *body, size_t len, const esim_parse_limits *limits,
                        esim_msg *out, esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the message");
    /* On the stack: a 2 KiB block from malloc cost more than the rest of a
     * small message's reading (the callgrind count of bench/service). */
    esim_msg local = {0}, *m = &local;
    esim_err rc = esim_plist_parse_dict(body, len, limits, &m->root, err);
    if (rc != ESIM_OK)
        goto done;
    bool has_status = plist_dict_get_item(m->root, "Status") != NULL;
    rc = plist_read_string(m->root, "MessageType", false, m->message_type, sizeof m->message_type,
                           "device message", err);
    if (rc == ESIM_OK && has_status) {
        rc = esim_fail(err, ESIM_EINVAL,
                       "device message has both MessageType and Status; it must be either a "
                       "check-in or a command result");
    } else if (rc == ESIM_OK) {
        rc = parse_checkin(m, err);
    } else if (rc == ESIM_ENOTFOUND) {
        rc = has_status ? parse_result(m, err)
                        : esim_fail(err, ESIM_EINVAL,
                                    "device message has neither MessageType (check-in) nor "
                                    "Status (command result)");
    }
    if (rc == ESIM_OK) {
        *out = *m;
        memset(m, 0, sizeof *m);
    }
done:
    esim_msg_free(m);
    return rc;
}

/* ---- ServiceSubscriptions ------------------------------------------------------- */

static esim_err read_subscription(plist_t d, uint32_t index, esim_subscription *s, esim_error *err)
{
    char what[48];
    snprintf(what, sizeof what, "ServiceSubscriptions[%u]", index);
    if (plist_get_node_type(d) != PLIST_DICT)
        return esim_fail(err, ESIM_EINVAL, "%s is not a dictionary", what);
    struct {
        const char *key;
        char *out;
        size_t size;
    } strings[] = {
        {"EID", s->eid, sizeof s->eid},
        {"ICCID", s->iccid, sizeof s->iccid},
        {"IMEI", s->imei, sizeof s->imei},
        {"Slot", s->slot, sizeof s->slot},
        {"Label", s->label, sizeof s->label},
        {"CurrentCarrierNetwork", s->carrier, sizeof s->carrier},
        {"PhoneNumber", s->phone_number, sizeof s->phone_number},
    };
    for (size_t k = 0; k < sizeof strings / sizeof strings[0]; k++) {
        esim_err rc =
            plist_read_string(d, strings[k].key, false, strings[k].out, strings[k].size, what, err);
        if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
            return rc;
    }
    esim_err rc = plist_read_bool(d, "IsDataPreferred", false, &s->is_data_preferred, what, err);
    if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
        return rc;
    rc = plist_read_bool(d, "IsVoicePreferred", false, &s->is_voice_preferred, what, err);
    if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
        return rc;
    return ESIM_OK;
}

esim_err esim_msg_service_subscriptions(const esim_msg *msg, esim_subscription **out, size_t *n,
                                        esim_error *err)
{
    if (!msg || !out || !n)
        return esim_fail(err, ESIM_EINVAL, "no message or no place to put its subscriptions");
    plist_t responses = msg->root ? plist_dict_get_item(msg->root, "QueryResponses") : NULL;
    plist_t subs = NULL;
    if (responses) {
        if (plist_get_node_type(responses) != PLIST_DICT)
            return esim_fail(err, ESIM_EINVAL, "QueryResponses must be a dictionary");
        subs = plist_dict_get_item(responses, "ServiceSubscriptions");
    }
    if (!subs) {
        *out = NULL;
        *n = 0;
        return ESIM_OK;
    }
    if (plist_get_node_type(subs) != PLIST_ARRAY)
        return esim_fail(err, ESIM_EINVAL, "QueryResponses: ServiceSubscriptions must be an array");
    uint32_t count = plist_array_get_size(subs);
    esim_subscription *list = NULL;
    if (count > 0) {
        list = calloc(count, sizeof *list);
        if (!list)
            return esim_fail(err, ESIM_ENOMEM, "out of memory reading ServiceSubscriptions");
    }
    for (uint32_t k = 0; k < count; k++) {
        esim_err rc = read_subscription(plist_array_get_item(subs, k), k, &list[k], err);
        if (rc != ESIM_OK) {
            free(list);
            return rc;
        }
    }
    *out = list;
    *n = count;
    return ESIM_OK;
}

/* ---- device-side builders -------------------------------------------------------- */

static esim_err check_udid_topic(const char *udid, const char *topic, esim_error *err)
{
    esim_error why;
    esim_error_clear(&why);
    if (!udid || esim_udid_validate(udid, &why) != ESIM_OK)
        return esim_fail(err, ESIM_EINVAL, "UDID is invalid: %s", udid ? why.msg : "it is missing");
    if (!topic || !topic[0] || strlen(topic) >= sizeof(((esim_msg *)0)->topic))
        return esim_fail(err, ESIM_EINVAL,
                         "Topic must be the push topic, 1 to 255 bytes, such as "
                         "com.apple.mgmt.External.<uuid>");
    return ESIM_OK;
}

static esim_err finish_message(plist_t d, esim_plist_format format, esim_buf *out, esim_error *err)
{
    if (!d)
        return esim_fail(err, ESIM_ENOMEM, "out of memory building a device message");
    esim_err rc = esim_plist_serialize(d, format, out, err);
    plist_free(d);
    return rc;
}

static plist_t checkin_dict(const char *message_type, const char *udid, const char *topic)
{
    plist_t d = plist_new_dict();
    if (!d)
        return NULL;
    plist_dict_set_item(d, "MessageType", plist_new_string(message_type));
    plist_dict_set_item(d, "UDID", plist_new_string(udid));
    plist_dict_set_item(d, "Topic", plist_new_string(topic));
    return d;
}

/* |s| needs no escaping in libplist's XML: printable ASCII without '&',
 * '<' or '>' (the only characters it escapes). */
static bool xml_plain(const char *s)
{
    for (; *s; s++)
        if (*s < 0x20 || *s > 0x7e || *s == '&' || *s == '<' || *s == '>')
            return false;
    return true;
}

/* A dictionary of the strings |vals| under |keys| (NULL values left out),
 * written byte for byte as plist_to_xml writes the same dictionary
 * (test_plist_messages compares them), without building and freeing the
 * tree; false when a value needs escaping (the caller then builds it). */
static bool strings_xml_plain(const char *const *vals, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (vals[k] && !xml_plain(vals[k]))
            return false;
    return true;
}

static esim_err strings_xml(const char *const *keys, const char *const *vals, size_t n,
                            esim_buf *out, esim_error *err)
{
    static const char head[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD "
        "PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist "
        "version=\"1.0\">\n<dict>\n";
    esim_buf fresh = {0};
    esim_err rc = esim_buf_reserve(&fresh, 512);
    if (rc == ESIM_OK)
        rc = esim_buf_append(&fresh, head, sizeof head - 1);
    for (size_t k = 0; k < n && rc == ESIM_OK; k++) {
        if (!vals[k])
            continue;
        rc = esim_buf_append(&fresh, "\t<key>", 6);
        if (rc == ESIM_OK)
            rc = esim_buf_append_str(&fresh, keys[k]);
        if (rc == ESIM_OK)
            rc = esim_buf_append(&fresh, "</key>\n\t<string>", 16);
        if (rc == ESIM_OK)
            rc = esim_buf_append_str(&fresh, vals[k]);
        if (rc == ESIM_OK)
            rc = esim_buf_append(&fresh, "</string>\n", 10);
    }
    if (rc == ESIM_OK)
        rc = esim_buf_append(&fresh, "</dict>\n</plist>\n", 17);
    if (rc != ESIM_OK) {
        esim_buf_free(&fresh);
        return esim_fail(err, rc, "out of memory building a device message");
    }
    esim_buf_free(out);
    *out = fresh;
    return ESIM_OK;
}

esim_err esim_msg_build_authenticate(const esim_authenticate_info *info, esim_buf *out,
                                     esim_error *err)
{
    if (!info || !out)
        return esim_fail(err, ESIM_EINVAL, "no device information or no place to put it");
    esim_err rc = check_udid_topic(info->udid, info->topic, err);
    if (rc != ESIM_OK)
        return rc;
    const char *values[] = {info->os_version,    info->build_version, info->product_name,
                            info->serial_number, info->imei,          info->meid,
                            info->device_name,   info->model};
    _Static_assert(sizeof values / sizeof values[0] ==
                       sizeof authenticate_fields / sizeof authenticate_fields[0],
                   "one value per Authenticate field");
    for (size_t k = 0; k < sizeof values / sizeof values[0]; k++)
        if (values[k] && strlen(values[k]) >= authenticate_fields[k].size)
            return esim_fail(err, ESIM_EINVAL, "Authenticate: %s is longer than %zu bytes",
                             authenticate_fields[k].key, authenticate_fields[k].size - 1);
    /* MessageType, UDID, Topic, then the fields in their order. */
    enum { NA = 3 + sizeof values / sizeof values[0] };
    const char *keys[NA] = {"MessageType", "UDID", "Topic"};
    const char *vals[NA] = {"Authenticate", info->udid, info->topic};
    for (size_t k = 3; k < NA; k++) {
        keys[k] = authenticate_fields[k - 3].key;
        vals[k] = values[k - 3];
    }
    if (strings_xml_plain(vals, NA))
        return strings_xml(keys, vals, NA, out, err);
    plist_t d = checkin_dict("Authenticate", info->udid, info->topic);
    for (size_t k = 0; d && k < sizeof values / sizeof values[0]; k++)
        if (values[k])
            plist_dict_set_item(d, authenticate_fields[k].key, plist_new_string(values[k]));
    return finish_message(d, ESIM_PLIST_XML, out, err);
}

/* TokenUpdate with plain strings, written as plist_to_xml writes it: the
 * Token's base64 in lines of 68 characters (51 bytes), each indented by a
 * tab, as libplist writes <data> one level deep. */
static esim_err token_update_xml(const char *udid, const char *topic, const void *token,
                                 size_t token_len, const char *push_magic, esim_buf *out,
                                 esim_error *err)
{
    const char *keys[3] = {"MessageType", "UDID", "Topic"};
    const char *vals[3] = {"TokenUpdate", udid, topic};
    esim_buf fresh = {0}, b64 = {0};
    esim_err rc = strings_xml(keys, vals, 3, &fresh, err);
    if (rc != ESIM_OK)
        return rc;
    static const char tail[] = "</dict>\n</plist>\n";
    fresh.len -= sizeof tail - 1; /* reopened for the last two entries */
    rc = esim_base64_encode(token, token_len, &b64);
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(&fresh, "\t<key>Token</key>\n\t<data>\n");
    for (size_t at = 0; rc == ESIM_OK && at < b64.len; at += 68) {
        size_t n = b64.len - at < 68 ? b64.len - at : 68;
        rc = esim_buf_append(&fresh, "\t", 1);
        if (rc == ESIM_OK)
            rc = esim_buf_append(&fresh, b64.data + at, n);
        if (rc == ESIM_OK)
            rc = esim_buf_append(&fresh, "\n", 1);
    }
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(&fresh, "\t</data>\n\t<key>PushMagic</key>\n\t<string>");
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(&fresh, push_magic);
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(&fresh, "</string>\n");
    if (rc == ESIM_OK)
        rc = esim_buf_append(&fresh, tail, sizeof tail - 1);
    esim_buf_free(&b64);
    if (rc != ESIM_OK) {
        esim_buf_free(&fresh);
        return esim_fail(err, rc, "out of memory building a device message");
    }
    esim_buf_free(out);
    *out = fresh;
    return ESIM_OK;
}

esim_err esim_msg_build_token_update(const char *udid, const char *topic, const void *token,
                                     size_t token_len, const char *push_magic, esim_buf *out,
                                     esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the message");
    esim_err rc = check_udid_topic(udid, topic, err);
    if (rc != ESIM_OK)
        return rc;
    if (!token || token_len < TOKEN_MIN || token_len > TOKEN_MAX)
        return esim_fail(err, ESIM_EINVAL,
                         "TokenUpdate: the APNs device token must be %d to %d bytes", TOKEN_MIN,
                         TOKEN_MAX);
    if (!push_magic || !push_magic[0] || strlen(push_magic) >= sizeof(((esim_msg *)0)->push_magic))
        return esim_fail(err, ESIM_EINVAL, "TokenUpdate: PushMagic must be 1 to 127 bytes");
    if (xml_plain(udid) && xml_plain(topic) && xml_plain(push_magic))
        return token_update_xml(udid, topic, token, token_len, push_magic, out, err);
    plist_t d = checkin_dict("TokenUpdate", udid, topic);
    if (d) {
        plist_dict_set_item(d, "Token", plist_new_data(token, token_len));
        plist_dict_set_item(d, "PushMagic", plist_new_string(push_magic));
    }
    return finish_message(d, ESIM_PLIST_XML, out, err);
}

esim_err esim_msg_build_checkout(const char *udid, const char *topic, esim_buf *out,
                                 esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the message");
    esim_err rc = check_udid_topic(udid, topic, err);
    if (rc != ESIM_OK)
        return rc;
    return finish_message(checkin_dict("CheckOut", udid, topic), ESIM_PLIST_XML, out, err);
}

static esim_err check_chain_entry(const esim_error_chain_entry *e, size_t k, esim_error *err)
{
    const char *texts[] = {e->domain, e->localized_description, e->us_english_description};
    size_t sizes[] = {sizeof e->domain, sizeof e->localized_description,
                      sizeof e->us_english_description};
    for (size_t t = 0; t < 3; t++)
        if (!memchr(texts[t], '\0', sizes[t]))
            return esim_fail(err, ESIM_EINVAL, "ErrorChain[%zu] has an unterminated string", k);
    if (!e->domain[0])
        return esim_fail(err, ESIM_EINVAL, "ErrorChain[%zu] needs an ErrorDomain", k);
    return ESIM_OK;
}

esim_err esim_msg_build_result(const char *udid, esim_status status, const char *command_uuid,
                               const esim_error_chain_entry *chain, size_t n_chain, plist_t extra,
                               esim_plist_format format, esim_buf *out, esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the result");
    esim_error why;
    esim_error_clear(&why);
    if (!udid || esim_udid_validate(udid, &why) != ESIM_OK)
        return esim_fail(err, ESIM_EINVAL, "UDID is invalid: %s", udid ? why.msg : "it is missing");
    const char *status_name = esim_status_name(status);
    if (!status_name)
        return esim_fail(err, ESIM_EINVAL, "unknown command status %d", (int)status);
    bool has_uuid = command_uuid && command_uuid[0];
    if (status != ESIM_STATUS_IDLE && !has_uuid)
        return esim_fail(err, ESIM_EINVAL, "a %s result needs the CommandUUID it answers",
                         status_name);
    if (has_uuid && strlen(command_uuid) >= sizeof(((esim_msg *)0)->command_uuid))
        return esim_fail(err, ESIM_EINVAL, "CommandUUID is longer than 127 bytes");
    if (n_chain > 0 && !chain)
        return esim_fail(err, ESIM_EINVAL, "%zu ErrorChain entries announced but none given",
                         n_chain);
    for (size_t k = 0; k < n_chain; k++) {
        esim_err rc = check_chain_entry(&chain[k], k, err);
        if (rc != ESIM_OK)
            return rc;
    }
    if (extra && plist_get_node_type(extra) != PLIST_DICT)
        return esim_fail(err, ESIM_EINVAL, "extra result keys must come as a dictionary");
    if (!extra && n_chain == 0 && format == ESIM_PLIST_XML && xml_plain(udid) &&
        (!has_uuid || xml_plain(command_uuid)))
        return strings_xml((const char *const[]){"UDID", "Status", "CommandUUID"},
                           (const char *const[]){udid, status_name, has_uuid ? command_uuid : NULL},
                           3, out, err);
    plist_t d = extra ? plist_copy(extra) : plist_new_dict();
    if (!d)
        return esim_fail(err, ESIM_ENOMEM, "out of memory building a result");
    /* The fixed keys win over anything of the same name in |extra|. */
    plist_dict_set_item(d, "UDID", plist_new_string(udid));
    plist_dict_set_item(d, "Status", plist_new_string(status_name));
    if (has_uuid)
        plist_dict_set_item(d, "CommandUUID", plist_new_string(command_uuid));
    else
        plist_dict_remove_item(d, "CommandUUID");
    if (n_chain > 0) {
        plist_t list = plist_new_array();
        for (size_t k = 0; k < n_chain; k++) {
            plist_t e = plist_new_dict();
            plist_dict_set_item(e, "ErrorCode", plist_new_uint((uint64_t)chain[k].code));
            plist_dict_set_item(e, "ErrorDomain", plist_new_string(chain[k].domain));
            plist_dict_set_item(e, "LocalizedDescription",
                                plist_new_string(chain[k].localized_description));
            if (chain[k].us_english_description[0])
                plist_dict_set_item(e, "USEnglishDescription",
                                    plist_new_string(chain[k].us_english_description));
            plist_array_append_item(list, e);
        }
        plist_dict_set_item(d, "ErrorChain", list);
    } else {
        plist_dict_remove_item(d, "ErrorChain");
    }
    plist_dict_remove_item(d, "MessageType");
    return finish_message(d, format, out, err);
}
