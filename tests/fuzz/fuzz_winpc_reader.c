/*
 * fuzz_winpc_reader.c — the simulated Windows PC's two readers of a server's
 * SyncML (sim/winpc.c): the strict scanner for plain XML and libxml2. Each
 * input is one server message to a PC that just sent its package 1
 * (SessionID 1); two identical PCs get it, one reading through the scanner
 * first, one through libxml2 alone. Any difference (the result, the end of
 * the session, the answer's bytes, the CSP state after it) is a finding, as
 * is a crash or a sanitizer report: what the PC accepts and refuses must stay
 * libxml2's word.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>

#include "fuzz_dir.h"
#include "sim/sim_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct {
    sim_pki *pki;
    char dir[64];
    char eid[ESIM_EID_LEN + 1];
} g;

static void teardown(void)
{
    sim_pki_free(g.pki);
    fuzz_dir_remove(g.dir);
    xmlCleanupParser();
}

static void setup(void)
{
    snprintf(g.dir, sizeof g.dir, "/tmp/esim-fuzz-winpc-XXXXXX");
    if (!mkdtemp(g.dir))
        abort();
    esim_error err = {{0}};
    char pki_dir[128];
    snprintf(pki_dir, sizeof pki_dir, "%s/pki", g.dir);
    snprintf(g.eid, sizeof g.eid, "89049032000001000000000000000000");
    if (sim_pki_open(pki_dir, &g.pki, &err) != ESIM_OK ||
        esim_eid_set_check_digits(g.eid, &err) != ESIM_OK) {
        fprintf(stderr, "fuzz_winpc_reader: %s\n", err.msg);
        abort();
    }
    atexit(teardown);
}

/* The CSP nodes a message can change, read back. */
static const char *const probes[] = {
    "Policies/LocalUIEnabled",
    "Profiles",
    "DownloadServers",
    "Actions/Status",
    "Profiles/8944500102198304826/MatchingID",
    "Profiles/8944500102198304826/IsEnabled",
};

static void run(const uint8_t *data, size_t size, bool libxml2_only, esim_err *rc, bool *done,
                esim_buf *out)
{
    sim_winpc_spec spec = {.device_id = "FUZZPC", .eid = g.eid};
    sim_winpc *pc;
    esim_buf start = {0}, v = {0};
    if (sim_winpc_new(g.pki, &spec, &pc, NULL) != ESIM_OK ||
        sim_winpc_session_start(pc, "https://mdm.example.com/ManagementServer/MDM.svc", false,
                                &start, NULL) != ESIM_OK)
        abort();
    sim_winpc_xml_reader_for_tests(libxml2_only);
    *rc = sim_winpc_session_reply(pc, data, size, out, done, NULL);
    sim_winpc_xml_reader_for_tests(false);
    /* The state after it joins the answer, so the comparison covers both. */
    esim_buf_append_str(out, sim_winpc_in_session(pc) ? "\n#open" : "\n#closed");
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        char uri[256];
        snprintf(uri, sizeof uri, "./Device/Vendor/MSFT/eUICCs/%s/%s", g.eid, probes[i]);
        esim_buf_printf(out, "\n%s=", probes[i]);
        if (sim_winpc_get(pc, uri, &v) == ESIM_OK)
            esim_buf_append(out, v.data, v.len);
        else
            esim_buf_append_str(out, "(none)");
    }
    esim_buf_free(&v);
    esim_buf_free(&start);
    sim_winpc_free(pc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g.pki)
        setup();
    esim_buf out[2] = {{0}};
    esim_err rc[2];
    bool done[2];
    run(data, size, false, &rc[0], &done[0], &out[0]);
    run(data, size, true, &rc[1], &done[1], &out[1]);
    if (rc[0] != rc[1] || done[0] != done[1] || out[0].len != out[1].len ||
        memcmp(out[0].data, out[1].data, out[0].len) != 0) {
        fprintf(stderr,
                "fuzz_winpc_reader: the readers differ (rc %d/%d, done %d/%d)\n%.*s\n----\n%.*s\n",
                rc[0], rc[1], done[0], done[1], (int)out[0].len, (char *)out[0].data,
                (int)out[1].len, (char *)out[1].data);
        abort();
    }
    esim_buf_free(&out[0]);
    esim_buf_free(&out[1]);
    return 0;
}
