/*
 * windows_csp.c — the eSIM policy for Windows: an OMA-DM SyncML document
 * driving the eUICCs configuration service provider
 * (./Device/Vendor/MSFT/eUICCs/{EID}), for vendors managing both platforms.
 */
#include <stdlib.h>
#include <string.h>

#include "restrictions/restrictions.h"

#define EUICCS_ROOT "./Device/Vendor/MSFT/eUICCs/"

/* Writes |s| with the five XML special characters escaped, so a value can
 * never close an element or open a new one. */
static esim_err append_xml_escaped(esim_buf *b, const char *s)
{
    esim_err rc = ESIM_OK;
    for (const char *c = s; *c && rc == ESIM_OK; c++) {
        switch (*c) {
        case '&':
            rc = esim_buf_append_str(b, "&amp;");
            break;
        case '<':
            rc = esim_buf_append_str(b, "&lt;");
            break;
        case '>':
            rc = esim_buf_append_str(b, "&gt;");
            break;
        case '"':
            rc = esim_buf_append_str(b, "&quot;");
            break;
        case '\'':
            rc = esim_buf_append_str(b, "&apos;");
            break;
        default:
            rc = esim_buf_append(b, c, 1);
            break;
        }
    }
    return rc;
}

typedef struct {
    esim_buf *doc;
    const char *eid;
    int next_cmd_id; /* CmdID values are unique and increasing within a message */
} syncml_writer;

static esim_err open_command(syncml_writer *w, const char *verb)
{
    return esim_buf_printf(w->doc, "    <%s>\n      <CmdID>%d</CmdID>\n", verb, w->next_cmd_id++);
}

static esim_err close_command(syncml_writer *w, const char *verb)
{
    return esim_buf_printf(w->doc, "    </%s>\n", verb);
}

/* One <Item> naming |node| (relative to the eUICC) with an optional boolean. */
static esim_err write_item(syncml_writer *w, const char *node_prefix, const char *server,
                           const char *node_suffix, const bool *bool_value)
{
    esim_err rc = esim_buf_append_str(w->doc, "      <Item>\n        <Target><LocURI>");
    if (rc == ESIM_OK)
        rc = append_xml_escaped(w->doc, EUICCS_ROOT);
    if (rc == ESIM_OK)
        rc = append_xml_escaped(w->doc, w->eid);
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(w->doc, "/");
    if (rc == ESIM_OK)
        rc = append_xml_escaped(w->doc, node_prefix);
    if (rc == ESIM_OK && server)
        rc = append_xml_escaped(w->doc, server);
    if (rc == ESIM_OK && node_suffix)
        rc = append_xml_escaped(w->doc, node_suffix);
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(w->doc, "</LocURI></Target>\n");
    if (rc == ESIM_OK && bool_value)
        rc = esim_buf_printf(w->doc,
                             "        <Meta><Format xmlns=\"syncml:metinf\">bool</Format></Meta>\n"
                             "        <Data>%s</Data>\n",
                             *bool_value ? "true" : "false");
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(w->doc, "      </Item>\n");
    return rc;
}

static esim_err validate_csp(const esim_windows_csp *csp, esim_error *err)
{
    esim_error why = {{0}};
    if (!csp)
        return esim_fail(err, ESIM_EINVAL, "no eUICCs CSP settings were given");
    if (!csp->eid)
        return esim_fail(err, ESIM_EINVAL, "the EID of the eUICC is required (32 digits)");
    if (esim_eid_validate(csp->eid, &why) != ESIM_OK)
        return esim_fail(err, ESIM_EINVAL, "bad EID: %s", why.msg);
    if (csp->server && esim_fqdn_validate(csp->server, &why) != ESIM_OK)
        return esim_fail(err, ESIM_EINVAL, "bad download server name: %s", why.msg);
    if (!csp->server && (csp->auto_enable || csp->discovery_server))
        return esim_fail(err, ESIM_EINVAL,
                         "AutoEnable and IsDiscoveryServer belong to a download server: give "
                         "the server name too");
    if (csp->local_ui_enabled != ESIM_TRI_UNSET && csp->local_ui_enabled != ESIM_TRI_TRUE &&
        csp->local_ui_enabled != ESIM_TRI_FALSE)
        return esim_fail(err, ESIM_EINVAL, "LocalUIEnabled must be unset, true or false");
    /* Windows refuses to hide the eSIM UI unless downloaded profiles turn on
     * by themselves: otherwise nobody could ever enable them. */
    if (csp->local_ui_enabled == ESIM_TRI_FALSE && !csp->auto_enable)
        return esim_fail(err, ESIM_EINVAL,
                         "disabling the local eSIM UI requires AutoEnable: add a download server "
                         "with AutoEnable set, or keep the local UI enabled");
    if (!csp->server && csp->local_ui_enabled == ESIM_TRI_UNSET && !csp->reset_to_factory)
        return esim_fail(err, ESIM_EINVAL,
                         "nothing to do: give a download server, a LocalUIEnabled policy or a "
                         "reset to factory state");
    return ESIM_OK;
}

esim_err esim_windows_csp_syncml(const esim_windows_csp *csp, esim_buf *out, esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "an output buffer is required");
    esim_err rc = validate_csp(csp, err);
    if (rc != ESIM_OK)
        return rc;

    esim_buf doc = {0};
    syncml_writer w = {&doc, csp->eid, 1};
    rc = esim_buf_append_str(&doc, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                                   "<SyncML xmlns=\"SYNCML:SYNCML1.2\">\n  <SyncBody>\n");
    /* Reset first: it deletes the operational profiles, so it must not undo
     * a download this same document starts. */
    if (rc == ESIM_OK && csp->reset_to_factory) {
        rc = open_command(&w, "Exec");
        if (rc == ESIM_OK)
            rc = write_item(&w, "Actions/ResetToFactoryState", NULL, NULL, NULL);
        if (rc == ESIM_OK)
            rc = close_command(&w, "Exec");
    }
    /* AutoEnable and IsDiscoveryServer are read when the server node is
     * created (creation starts discovery), so both travel in the one Add. */
    if (rc == ESIM_OK && csp->server) {
        bool auto_enable = csp->auto_enable, discovery = csp->discovery_server;
        rc = open_command(&w, "Add");
        if (rc == ESIM_OK)
            rc = write_item(&w, "DownloadServers/", csp->server, "/AutoEnable", &auto_enable);
        if (rc == ESIM_OK)
            rc = write_item(&w, "DownloadServers/", csp->server, "/IsDiscoveryServer", &discovery);
        if (rc == ESIM_OK)
            rc = close_command(&w, "Add");
    }
    /* The policy node always exists (default true), hence Replace. */
    if (rc == ESIM_OK && csp->local_ui_enabled != ESIM_TRI_UNSET) {
        bool enabled = csp->local_ui_enabled == ESIM_TRI_TRUE;
        rc = open_command(&w, "Replace");
        if (rc == ESIM_OK)
            rc = write_item(&w, "Policies/LocalUIEnabled", NULL, NULL, &enabled);
        if (rc == ESIM_OK)
            rc = close_command(&w, "Replace");
    }
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(&doc, "    <Final/>\n  </SyncBody>\n</SyncML>\n");
    if (rc != ESIM_OK) {
        esim_buf_free(&doc);
        return esim_fail(err, rc, "out of memory writing the SyncML document");
    }
    esim_buf_free(out);
    *out = doc;
    return ESIM_OK;
}

/* ---- one operation, as the service queues it -------------------------------------- */

static const char *const op_names[ESIM_WIN_OP_COUNT] = {
    "add_server",     "delete_server", "add_profile", "enable_profile",
    "delete_profile", "local_ui",      "reset",       "get",
};

const char *esim_windows_op_name(esim_windows_op_kind k)
{
    return (unsigned)k < ESIM_WIN_OP_COUNT ? op_names[k] : NULL;
}

typedef struct {
    esim_buf *b;
    const char *cmd_id;
    const char *eid;
    int n; /* commands written */
    bool several;
} op_writer;

/* One command of one item: <Verb><CmdID/><Item><Target/>[<Meta/><Data/>]</Item></Verb>. */
static esim_err op_cmd(op_writer *w, const char *verb, const char *node, const char *suffix,
                       const char *format, const char *data)
{
    esim_err rc = esim_buf_printf(w->b, "<%s><CmdID>", verb);
    if (rc == ESIM_OK)
        rc = append_xml_escaped(w->b, w->cmd_id);
    if (rc == ESIM_OK && w->several)
        rc = esim_buf_printf(w->b, ".%d", w->n + 1);
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(w->b, "</CmdID><Item><Target><LocURI>" EUICCS_ROOT);
    if (rc == ESIM_OK)
        rc = append_xml_escaped(w->b, w->eid);
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(w->b, "/");
    if (rc == ESIM_OK)
        rc = append_xml_escaped(w->b, node);
    if (rc == ESIM_OK && suffix)
        rc = append_xml_escaped(w->b, suffix);
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(w->b, "</LocURI></Target>");
    if (rc == ESIM_OK && format)
        rc = esim_buf_printf(w->b, "<Meta><Format xmlns=\"syncml:metinf\">%s</Format></Meta>",
                             format);
    if (rc == ESIM_OK && data) {
        rc = esim_buf_append_str(w->b, "<Data>");
        if (rc == ESIM_OK)
            rc = append_xml_escaped(w->b, data);
        if (rc == ESIM_OK)
            rc = esim_buf_append_str(w->b, "</Data>");
    }
    if (rc == ESIM_OK)
        rc = esim_buf_printf(w->b, "</Item></%s>", verb);
    w->n++;
    return rc;
}

/* An SM-DP+ name as the eUICCs CSP takes it: an FQDN, or "host:port" (the
 * simulated PCs keep the port, so an SM-DP+ simulator on a free port can be
 * named). */
static esim_err server_validate(const char *server, esim_error *err)
{
    const char *colon = strchr(server, ':');
    if (!colon)
        return esim_fqdn_validate(server, err);
    char host[256];
    size_t hl = (size_t)(colon - server);
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (hl == 0 || hl >= sizeof host || !colon[1] || *end || port < 1 || port > 65535)
        return esim_fail(err, ESIM_EINVAL, "'%.200s' is not HOST or HOST:PORT", server);
    memcpy(host, server, hl);
    host[hl] = '\0';
    return esim_fqdn_validate(host, err);
}

static esim_err validate_op(const esim_windows_op *op, const char *cmd_id, esim_error *err)
{
    esim_error why = {{0}};
    if (!op || (unsigned)op->kind >= ESIM_WIN_OP_COUNT)
        return esim_fail(err, ESIM_EINVAL, "unknown eUICCs operation");
    if (!cmd_id || !*cmd_id || strlen(cmd_id) > 100)
        return esim_fail(err, ESIM_EINVAL, "a command identifier is required");
    if (!op->eid || esim_eid_validate(op->eid, &why) != ESIM_OK)
        return esim_fail(err, ESIM_EINVAL, "bad EID: %s", op->eid ? why.msg : "none given");
    bool needs_server = op->kind == ESIM_WIN_ADD_SERVER || op->kind == ESIM_WIN_DELETE_SERVER ||
                        op->kind == ESIM_WIN_ADD_PROFILE;
    if (needs_server && (!op->server || server_validate(op->server, &why) != ESIM_OK))
        return esim_fail(err, ESIM_EINVAL, "bad SM-DP+ server name: %s",
                         op->server ? why.msg : "none given");
    bool needs_iccid = op->kind == ESIM_WIN_ADD_PROFILE || op->kind == ESIM_WIN_ENABLE_PROFILE ||
                       op->kind == ESIM_WIN_DELETE_PROFILE;
    if (needs_iccid && (!op->iccid || esim_iccid_validate(op->iccid, &why) != ESIM_OK))
        return esim_fail(err, ESIM_EINVAL, "bad ICCID: %s", op->iccid ? why.msg : "none given");
    if (op->kind == ESIM_WIN_ADD_PROFILE &&
        (!op->matching_id || esim_windows_matching_id_validate(op->matching_id, &why) != ESIM_OK))
        return esim_fail(err, ESIM_EINVAL, "bad MatchingID: %s",
                         op->matching_id ? why.msg : "none given");
    if (op->kind == ESIM_WIN_ENABLE_PROFILE && op->enabled == ESIM_TRI_UNSET)
        return esim_fail(err, ESIM_EINVAL, "enable_profile needs IsEnabled true or false");
    if (op->kind == ESIM_WIN_GET) {
        if (!op->nodes || op->n_nodes == 0 || op->n_nodes > 16)
            return esim_fail(err, ESIM_EINVAL, "a Get names 1 to 16 nodes under the eUICC");
        for (size_t i = 0; i < op->n_nodes; i++) {
            const char *n = op->nodes[i];
            if (!n || !*n || n[0] == '/' || strstr(n, "..") || strlen(n) > 200)
                return esim_fail(err, ESIM_EINVAL,
                                 "bad node '%.200s': a path under the eUICC, as Profiles/ICCID/"
                                 "State",
                                 n ? n : "");
            for (const char *c = n; *c; c++)
                if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f)
                    return esim_fail(err, ESIM_EINVAL,
                                     "bad node '%.200s': a character that "
                                     "is not printable ASCII",
                                     n);
        }
    }
    return ESIM_OK;
}

esim_err esim_windows_op_syncml(const esim_windows_op *op, const char *cmd_id, esim_buf *out,
                                esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "an output buffer is required");
    esim_err rc = validate_op(op, cmd_id, err);
    if (rc != ESIM_OK)
        return rc;
    esim_buf b = {0};
    op_writer w = {&b, cmd_id, op->eid, 0, true};
    char path[300];
    switch (op->kind) {
    case ESIM_WIN_ADD_SERVER:
        /* Creating the node starts discovery: AutoEnable goes with it, in
         * the same message (the CSP reads it then). */
        snprintf(path, sizeof path, "DownloadServers/%s", op->server);
        rc = op_cmd(&w, "Add", path, NULL, "node", NULL);
        if (rc == ESIM_OK)
            rc = op_cmd(&w, "Add", path, "/AutoEnable", "bool", op->auto_enable ? "true" : "false");
        if (rc == ESIM_OK && op->discovery != ESIM_TRI_UNSET)
            rc = op_cmd(&w, "Add", path, "/IsDiscoveryServer", "bool",
                        op->discovery == ESIM_TRI_TRUE ? "true" : "false");
        break;
    case ESIM_WIN_DELETE_SERVER:
        w.several = false;
        snprintf(path, sizeof path, "DownloadServers/%s", op->server);
        rc = op_cmd(&w, "Delete", path, NULL, NULL, NULL);
        break;
    case ESIM_WIN_ADD_PROFILE:
        snprintf(path, sizeof path, "Profiles/%s", op->iccid);
        rc = op_cmd(&w, "Add", path, NULL, "node", NULL);
        if (rc == ESIM_OK)
            rc = op_cmd(&w, "Add", path, "/ServerName", "chr", op->server);
        if (rc == ESIM_OK)
            rc = op_cmd(&w, "Add", path, "/MatchingID", "chr", op->matching_id);
        if (rc == ESIM_OK && op->enabled != ESIM_TRI_UNSET)
            rc = op_cmd(&w, "Add", path, "/IsEnabled", "bool",
                        op->enabled == ESIM_TRI_TRUE ? "true" : "false");
        break;
    case ESIM_WIN_ENABLE_PROFILE:
        w.several = false;
        snprintf(path, sizeof path, "Profiles/%s", op->iccid);
        rc = op_cmd(&w, "Replace", path, "/IsEnabled", "bool",
                    op->enabled == ESIM_TRI_TRUE ? "true" : "false");
        break;
    case ESIM_WIN_DELETE_PROFILE:
        w.several = false;
        snprintf(path, sizeof path, "Profiles/%s", op->iccid);
        rc = op_cmd(&w, "Delete", path, NULL, NULL, NULL);
        break;
    case ESIM_WIN_LOCAL_UI:
        w.several = false;
        rc = op_cmd(&w, "Replace", "Policies/LocalUIEnabled", NULL, "bool",
                    op->local_ui_enabled ? "true" : "false");
        break;
    case ESIM_WIN_RESET:
        w.several = false;
        rc = op_cmd(&w, "Exec", "Actions/ResetToFactoryState", NULL, NULL, NULL);
        break;
    case ESIM_WIN_GET:
        w.several = op->n_nodes > 1;
        for (size_t i = 0; rc == ESIM_OK && i < op->n_nodes; i++)
            rc = op_cmd(&w, "Get", op->nodes[i], NULL, NULL, NULL);
        break;
    default:
        rc = ESIM_EINVAL;
    }
    if (rc != ESIM_OK) {
        esim_buf_free(&b);
        return esim_fail(err, rc, "out of memory writing SyncML");
    }
    esim_buf_free(out);
    *out = b;
    return ESIM_OK;
}
