/*
 * fuzz_syncml.c — the SyncML reader of the Windows endpoint
 * (service/omadm_syncml.c): every byte of a device's OMA-DM message reaches
 * it before anything else. What it accepts must hold what the endpoint
 * relies on (a DeviceID the API can name, a MsgID from 1, a CmdID on every
 * command, a three-digit code on every Status), and what it refuses must
 * come back with a sentence and nothing allocated. The first input byte
 * also drives the reader of queued command fragments.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "service/omadm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_msg(const omadm_msg *m, bool header)
{
    if (header) {
        if (!m->source || esim_udid_validate(m->source, NULL) != ESIM_OK || m->msg_id == 0 ||
            !m->session_id || !m->session_id[0] || strlen(m->session_id) > OMADM_MAX_SESSION_ID)
            abort();
    }
    if (m->n_cmds > OMADM_MAX_CMDS)
        abort();
    for (size_t i = 0; i < m->n_cmds; i++) {
        const omadm_cmd *c = &m->cmds[i];
        if (!c->cmd_id || !c->cmd_id[0] || strlen(c->cmd_id) > OMADM_MAX_ID)
            abort();
        if (c->parent >= (int)i || c->n_items > OMADM_MAX_ITEMS)
            abort();
        if (c->verb == OMADM_STATUS &&
            (!c->cmd_ref || !c->msg_ref || !c->cmd || omadm_status_code(c->data) < 100 ||
             !c->raw != omadm_status_of_hdr(c)))
            abort();
        for (size_t k = 0; k < c->n_items; k++)
            if (c->items[k].target && strlen(c->items[k].target) > OMADM_MAX_URI)
                abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    omadm_msg m;
    esim_error err = {{0}};
    esim_err rc = omadm_parse(data, size, &m, &err);
    if (rc == ESIM_OK) {
        check_msg(&m, true);
        omadm_msg_free(&m);
    } else if (err.msg[0] == '\0' || m.cmds || m.source) {
        abort();
    }
    /* The same bytes as a queued command of "u-1". */
    rc = omadm_parse_commands(data, size, "u-1", &m, &err);
    if (rc == ESIM_OK) {
        check_msg(&m, false);
        for (size_t i = 0; i < m.n_cmds; i++)
            if (strncmp(m.cmds[i].cmd_id, "u-1", 3) != 0 || m.cmds[i].verb == OMADM_STATUS)
                abort();
        omadm_msg_free(&m);
    }
    return 0;
}
