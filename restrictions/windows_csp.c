/*
 * windows_csp.c — the eSIM policy for Windows: an OMA-DM SyncML document
 * driving the eUICCs configuration service provider
 * (./Device/Vendor/MSFT/eUICCs/{EID}), for vendors managing both platforms.
 */
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
