/*
 * cmd_card.c — `esim-mdm sim card`: one virtual eUICC as a smart card in
 * vsmartcard's vpcd reader, so any PC/SC program (an LPA, an IPA, scriptor)
 * talks to it through pcscd. Its state lives in a file it reloads and saves.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "sim/sim.h"

static const char sim_help[] =
    "usage: esim-mdm sim card --state FILE [--eid EID] [--vpcd HOST:PORT] [options]\n"
    "\n"
    "Attaches one virtual eUICC to vsmartcard's vpcd reader driver (which pcscd\n"
    "loads), so PC/SC software sees it as a card in the reader \"Virtual PCD\".\n"
    "The card answers ISO 7816 APDUs: MANAGE CHANNEL, SELECT of the ISD-R\n"
    "(" SIM_ISDR_AID "), STORE DATA with chaining and\n"
    "GET RESPONSE after 61xx, carrying SGP.22/SGP.32 ES10 requests (GetEID,\n"
    "eIM configuration, eUICC packages, profiles, notifications).\n"
    "Runs until SIGINT/SIGTERM; reconnects when pcscd restarts.\n"
    "\n"
    "  --state FILE      the eUICC's state (profiles, eIMs, counters, key); made\n"
    "                    with --eid when missing, saved after every change\n"
    "  --eid EID         32 digits; needed only when FILE does not exist\n"
    "  --vpcd HOST:PORT  where vpcd listens (default 127.0.0.1:35963)\n"
    "  --pki DIR         the test PKI whose EUM issues the eUICC (default pki)\n"
    "  --direct          answer with data + 90 00 instead of 61xx + GET RESPONSE\n"
    "\n"
    "example:\n"
    "  esim-mdm sim card --state card.json --eid 89049032123451234512345678901235\n";

static volatile sig_atomic_t card_stop;

static void on_signal(int sig)
{
    (void)sig;
    card_stop = 1;
}

typedef struct {
    sim_euicc *e;
    const char *state;
    bool failed;
} card_run;

static void save_if_changed(void *arg)
{
    card_run *r = arg;
    esim_error err;
    if (sim_euicc_dirty(r->e) && sim_euicc_save(r->e, r->state, &err) != ESIM_OK && !r->failed) {
        fprintf(stderr, "esim-mdm: sim card: could not save %s: %s\n", r->state, err.msg);
        r->failed = true;
    }
}

static void on_connect(void *arg, bool up)
{
    card_run *r = arg;
    fprintf(stderr, "esim-mdm: sim card: eUICC %s %s vpcd\n", sim_euicc_eid(r->e),
            up ? "inserted into" : "removed from");
}

static int card(int argc, char **argv)
{
    static const cli_option opts[] = {{"state", true, 's'},   {"eid", true, 'e'},
                                      {"vpcd", true, 'v'},    {"pki", true, 'p'},
                                      {"direct", false, 'd'}, {NULL, false, 0}};
    const char *state = NULL, *eid = NULL, *vpcd = "127.0.0.1:35963", *pki_dir = "pki";
    bool direct = false;
    cli_parser p;
    cli_parser_init(&p, "sim card", opts, argc, argv, 1);
    int c;
    while ((c = cli_next(&p)) != CLI_END) {
        switch (c) {
        case 's':
            state = p.value;
            break;
        case 'e':
            eid = p.value;
            break;
        case 'v':
            vpcd = p.value;
            break;
        case 'p':
            pki_dir = p.value;
            break;
        case 'd':
            direct = true;
            break;
        case CLI_ARG:
            return cli_unexpected("sim card", p.value);
        default:
            return CLI_EXIT_USAGE;
        }
    }
    if (!state)
        return cli_missing("sim card", "--state FILE");
    char host[256];
    const char *colon = strrchr(vpcd, ':');
    long port;
    if (!colon || colon == vpcd || (size_t)(colon - vpcd) >= sizeof host ||
        !cli_parse_long(colon + 1, 1, 65535, &port))
        return cli_bad_option_value("sim card", "vpcd", vpcd, "HOST:PORT");
    memcpy(host, vpcd, (size_t)(colon - vpcd));
    host[colon - vpcd] = '\0';

    esim_error err;
    sim_pki *pki = NULL;
    if (sim_pki_open(pki_dir, &pki, &err) != ESIM_OK) {
        fprintf(stderr, "esim-mdm: sim card: %s\n", err.msg);
        return CLI_EXIT_FAIL;
    }
    sim_euicc *e = NULL;
    esim_err rc = sim_euicc_load(pki, state, &e, &err);
    if (rc == ESIM_ENOTFOUND) {
        if (!eid) {
            sim_pki_free(pki);
            return cli_usage_error("sim card: %s does not exist; give --eid EID to make it", state);
        }
        rc = sim_euicc_new(pki, eid, &e, &err);
        if (rc == ESIM_OK)
            rc = sim_euicc_save(e, state, &err);
    } else if (rc == ESIM_OK && eid && strcmp(eid, sim_euicc_eid(e)) != 0) {
        rc =
            esim_fail(&err, ESIM_EINVAL, "%s holds eUICC %s, not %s", state, sim_euicc_eid(e), eid);
    }
    sim_card *card = NULL;
    if (rc == ESIM_OK)
        rc = sim_card_new(e, &card, &err);
    int status = CLI_EXIT_OK;
    if (rc == ESIM_OK) {
        sim_card_set_direct(card, direct);
        struct sigaction sa = {.sa_handler = on_signal};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        card_run run = {.e = e, .state = state};
        sim_vpcd_opts o = {.host = host,
                           .port = (uint16_t)port,
                           .stop = &card_stop,
                           .after_apdu = save_if_changed,
                           .on_connect = on_connect,
                           .arg = &run};
        fprintf(stderr, "esim-mdm: sim card: eUICC %s waiting for vpcd at %s\n", sim_euicc_eid(e),
                vpcd);
        rc = sim_vpcd_run(card, &o, &err);
        save_if_changed(&run);
        if (run.failed)
            status = CLI_EXIT_FAIL;
    }
    if (rc != ESIM_OK) {
        fprintf(stderr, "esim-mdm: sim card: %s\n", err.msg);
        status = rc == ESIM_EINVAL ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    }
    sim_card_free(card);
    sim_euicc_free(e);
    sim_pki_free(pki);
    return status;
}

int cmd_sim(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(sim_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    if (strcmp(argv[1], "card") == 0) {
        if (cli_wants_help(argc - 1, argv + 1)) {
            fputs(sim_help, stdout);
            return CLI_EXIT_OK;
        }
        return card(argc - 1, argv + 1);
    }
    return cli_usage_error("sim: unknown subcommand '%s'; `esim-mdm sim --help` lists them",
                           argv[1]);
}
