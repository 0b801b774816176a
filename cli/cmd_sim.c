/*
 * cmd_sim.c — `esim-mdm smdp` (the SM-DP+ simulator), `esim-mdm devsim`
 * (N simulated iPhones against the service) and `esim-mdm devsim
 * user-action` (a person acting on one phone). Thin wrappers over sim/sim.h.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <jansson.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "sim/sim.h"

static const char smdp_help[] =
    "usage: esim-mdm smdp [options]\n"
    "\n"
    "Runs the SM-DP+ simulator: the operator's eSIM download server. Devices\n"
    "reach it at the eSIMServerURL of a RefreshCellularPlans command and\n"
    "download the profile ordered for their EID, once. HTTPS on loopback with\n"
    "the test PKI's server certificate; mutual authentication with the eUICC\n"
    "by ECDSA P-256 certificates from the test CI (SGP.22 ES9+, JSON).\n"
    "\n"
    "options:\n"
    "  --pki DIR            test PKI (default ./pki; created when missing)\n"
    "  --listen HOST:PORT   default 127.0.0.1:9443 (port 0 = any free one)\n"
    "  --orders CSV         load orders: lines eid,iccid[,matching_id]\n"
    "  --data-dir DIR       keep orders in DIR/orders.json across restarts\n"
    "  --admin-token-file F the token /admin/ requires ('Authorization: Bearer TOKEN');\n"
    "                       default PKI/smdp-admin-token, made (0600) when missing\n"
    "  --admin-token TOKEN  the token itself instead of a file\n"
    "  --port-file FILE     write the bound port to FILE once listening\n"
    "\n"
    "endpoints:\n"
    "  POST /gsma/rsp2/es9plus/{initiateAuthentication,authenticateClient,\n"
    "       getBoundProfilePackage,handleNotification,cancelSession}\n"
    "  GET  /admin/orders            orders and their states (?summary=1: counts only;\n"
    "                                ?eid=EID: that EID's orders only)\n"
    "  POST /admin/orders            {\"eid\",\"iccid\",\"matching_id\"?,\"released\"?}\n"
    "  POST /admin/orders/release    {\"iccid\"}\n"
    "\n"
    "example:\n"
    "  esim-mdm smdp --orders manifest.csv --listen 127.0.0.1:9443\n"
    "  curl --cacert pki/ca.pem -H \"Authorization: Bearer $(cat pki/smdp-admin-token)\" \\\n"
    "       https://127.0.0.1:9443/admin/orders\n";

static const char devsim_help[] =
    "usage: esim-mdm devsim --server URL --apns-mock URL --devices N [options]\n"
    "       esim-mdm devsim user-action --device UDID ACTION (--status URL | --data-dir DIR)\n"
    "       esim-mdm devsim manifest --devices N [--seed S]   (eid,iccid CSV for esim-mdm smdp)\n"
    "\n"
    "Runs N simulated iPhones in one process. Each enrols with the MDM service\n"
    "(Authenticate, TokenUpdate), registers its push token with the APNs mock's\n"
    "delivery channel and, when a push arrives, checks in and answers commands\n"
    "until its queue is empty. RefreshCellularPlans downloads the eSIM from the\n"
    "SM-DP+ in eSIMServerURL onto the device's virtual eUICC.\n"
    "\n"
    "options:\n"
    "  --server URL            the service (…/mdm is added when the URL has no path);\n"
    "                          given up to 8 times, several instances of it: each\n"
    "                          request goes to the next, so every phone uses all;\n"
    "                          each PC session too (its messages stay on one)\n"
    "  --apns-mock URL         the APNs mock's delivery listener (http://HOST:PORT)\n"
    "  --devices N             how many devices\n"
    "  --first-device I        run only devices I.. of the N (one slice of a fleet shared\n"
    "                          by several simulator processes; each device as a lone\n"
    "                          simulator of N would make it; give each its own --channel)\n"
    "  --slice-devices M       ... and only M of them (default: to the N-th)\n"
    "  --pki DIR               test PKI (default ./pki)\n"
    "  --data-dir DIR          keep each device in DIR/devices/<UDID>.json\n"
    "  --seed S                identities and misbehaviour draws (default 1)\n"
    "  --supervised-share F    share of supervised devices (default 1.0)\n"
    "  --notnow-share F        share locked when their first command comes: NotNow for 2 s\n"
    "                          (default 0)\n"
    "  --offline-share F       share out of coverage when their first push comes: they\n"
    "                          miss it and check in 3 s later (default 0)\n"
    "  --fail-share F          share whose first download fails with 36003 (default 0)\n"
    "  --no-esim-share F       share of models without eSIM: 36002 (default 0)\n"
    "  --os-version V          one iOS version for all (default a mix of 16.4/17.4/18.1)\n"
    "  --channel NAME          APNs mock channel (default devsim)\n"
    "  --status-listen H:P     local JSON status endpoint (GET /stats, /devices,\n"
    "                          /devices/UDID; POST /devices/UDID/actions/ACTION)\n"
    "  --status-port-file F    write the status port to F\n"
    "  --device-auth MODE      signature (default: Mdm-Signature header), mtls (TLS\n"
    "                          client certificate, held in memory) or none (a\n"
    "                          service run with --device-auth none; cheapest for\n"
    "                          load tests)\n"
    "  --max-concurrent N      check-ins in flight at once (default 64)\n"
    "  --reuse-identity-after-erase\n"
    "                          keep the identity certificate across a wipe (a real\n"
    "                          phone re-enrols with a new one; for services that\n"
    "                          cannot re-bind a UDID to a new identity yet)\n"
    "  --duration SECONDS      stop after this long (default: until Ctrl-C)\n"
    "\n"
    "Windows 11 PCs (OMA-DM over HTTPS with a TLS client certificate, eUICCs CSP):\n"
    "  --windows-pcs N         N of the --devices are Windows PCs (spread over the indices)\n"
    "  --windows-share F       or that share of them (default 0)\n"
    "  --windows-server URL    their OMA-DM endpoint (default each --server; …/ManagementServer/\n"
    "                          MDM.svc is added when the URL has no path)\n"
    "  --wns-mock URL          the WNS mock's delivery listener (http://HOST:PORT); without\n"
    "                          it the PCs only poll\n"
    "  --windows-poll-ms N     each PC's polling interval, ±10% (default 60000)\n"
    "  --smdp-resolve NAME=HOST:PORT\n"
    "                          where the PCs and IoT devices reach the SM-DP+ named NAME\n"
    "                          (ServerName, DownloadServers, an activation code; repeatable;\n"
    "                          NAME * = every name without a port); others are https://NAME\n"
    "\n"
    "IoT devices (SGP.32: an IPA polling the eIM over ESipa, a virtual eUICC each):\n"
    "  --iot-devices N         N IoT devices besides the --devices (--devices may be 0)\n"
    "  --iot-poll-ms N         each IPA's poll interval, ±10% (default 60000)\n"
    "  --iot-offline-share F   share offline for --offline-ms first (3 s) (default 0)\n"
    "  --iot-fail-share F      share whose downloads all fail (default 0)\n"
    "  --iot-indirect-share F  share that downloads through the eIM's relay (SGP.32\n"
    "                          indirect download) instead of from the SM-DP+ (default 0)\n"
    "  --eim-url URL           the eIM (default --server; /gsma/rsp2/asn1 is added when\n"
    "                          the URL has no path); its HOST:PORT is the eimFqdn\n"
    "  --eim-id ID             the eimId the eUICCs are associated with (default esim-mdm)\n"
    "  --api-url URL           the service's admin API: the IoT devices' association list\n"
    "                          goes to POST URL/v1/iot/devices at start (default: not sent)\n"
    "  --api-key KEY           an operator API key for it\n"
    "  --api-key-file F        ... or the file holding it (its first line)\n"
    "\n"
    "user actions (honouring the device's restrictions):\n"
    "  delete-esim        refused when allowESIMModification is false\n"
    "  transfer-esim      refused when allowESIMOutgoingTransfers is false\n"
    "  erase-all-content  eSIM kept when forcePreserveESIMOnErase is true\n"
    "  passcode-wipe      same as erase-all-content\n"
    "  findmy-erase       eSIM removed even with forcePreserveESIMOnErase\n"
    "  (a Windows PC knows delete-esim only: refused when LocalUIEnabled is false)\n"
    "\n"
    "example:\n"
    "  esim-mdm devsim --server http://127.0.0.1:8080 --apns-mock http://127.0.0.1:2198 \\\n"
    "                  --devices 1000 --status-listen 127.0.0.1:7070\n"
    "  esim-mdm devsim user-action --device 00008110-0123456789ABCDEF delete-esim \\\n"
    "                  --status http://127.0.0.1:7070\n";

static bool parse_share(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*end || !(v >= 0.0 && v <= 1.0))
        return false;
    *out = v;
    return true;
}

static bool parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    if (!*s || *s == '-')
        return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || v > max)
        return false;
    *out = v;
    return true;
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopexit(arg, NULL);
}

static int run_loop(struct event_base *base, unsigned duration_s)
{
    struct event *sigint = evsignal_new(base, SIGINT, on_stop_signal, base);
    struct event *sigterm = evsignal_new(base, SIGTERM, on_stop_signal, base);
    if (sigint)
        event_add(sigint, NULL);
    if (sigterm)
        event_add(sigterm, NULL);
    if (duration_s) {
        struct timeval tv = {(time_t)duration_s, 0};
        event_base_loopexit(base, &tv);
    }
    event_base_dispatch(base);
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    return CLI_EXIT_OK;
}

static bool write_port(const char *file, unsigned port)
{
    char text[16];
    int n = snprintf(text, sizeof text, "%u\n", port);
    esim_error e;
    if (esim_write_file_atomic(file, text, (size_t)n, 0644, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm: %s\n", e.msg);
        return false;
    }
    return true;
}

/* ---- smdp ------------------------------------------------------------------------ */

/* The admin token in |path| (esim_read_token_file: first line, a file only
 * its owner may read), or, when |make| and the file is missing, a new random
 * one written there 0600. */
static bool admin_token(const char *path, bool make, char out[256], esim_error *err)
{
    char *tok = NULL;
    esim_err rc = esim_read_token_file(path, &tok, err);
    if (rc == ESIM_ENOTFOUND && make) {
        unsigned char raw[24];
        esim_buf hex = {0};
        rc = esim_random_bytes(raw, sizeof raw);
        if (rc == ESIM_OK)
            rc = esim_hex_encode(raw, sizeof raw, &hex);
        if (rc == ESIM_OK)
            rc = esim_buf_append_str(&hex, "\n");
        if (rc == ESIM_OK)
            rc = esim_write_file_atomic(path, hex.data, hex.len, 0600, err);
        esim_buf_free(&hex);
        if (rc == ESIM_OK)
            rc = esim_read_token_file(path, &tok, err);
    }
    if (rc == ESIM_OK && strlen(tok) >= 256)
        rc = esim_fail(err, ESIM_EINVAL, "%s: the token is longer than 255 bytes", path);
    if (rc == ESIM_OK)
        snprintf(out, 256, "%s", tok);
    else if (rc == ESIM_ENOTFOUND)
        esim_fail(err, rc, "%s does not exist", path);
    free(tok);
    return rc == ESIM_OK;
}

int cmd_smdp(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(smdp_help, stdout);
        return CLI_EXIT_OK;
    }
    static const cli_option opts[] = {{"pki", true, 'p'},         {"listen", true, 'l'},
                                      {"orders", true, 'o'},      {"data-dir", true, 'd'},
                                      {"admin-token", true, 't'}, {"admin-token-file", true, 'T'},
                                      {"port-file", true, 'f'},   {NULL, false, 0}};
    const char *pki_dir = "pki", *listen = "127.0.0.1:9443", *orders = NULL, *data_dir = NULL,
               *token = NULL, *port_file = NULL, *token_file = NULL;
    cli_parser p;
    cli_parser_init(&p, "smdp", opts, argc, argv, 1);
    int c;
    while ((c = cli_next(&p)) != CLI_END) {
        switch (c) {
        case 'p':
            pki_dir = p.value;
            break;
        case 'l':
            listen = p.value;
            break;
        case 'o':
            orders = p.value;
            break;
        case 'd':
            data_dir = p.value;
            break;
        case 't':
            token = p.value;
            break;
        case 'T':
            token_file = p.value;
            break;
        case 'f':
            port_file = p.value;
            break;
        case CLI_ARG:
            return cli_unexpected("smdp", p.value);
        default:
            return CLI_EXIT_USAGE;
        }
    }
    char host[128];
    const char *colon = strrchr(listen, ':');
    unsigned long long port;
    if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof host ||
        !parse_uint(colon + 1, 65535, &port))
        return cli_bad_option_value("smdp", "listen", listen,
                                    "wants HOST:PORT (e.g. 127.0.0.1:9443)");
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';

    esim_error e = {{0}};
    sim_pki *pki = NULL;
    if (sim_pki_open(pki_dir, &pki, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm smdp: PKI in %s: %s\n", pki_dir, e.msg);
        return CLI_EXIT_FAIL;
    }
    char token_path[4096], file_token[256];
    if (!token) {
        if (token_file)
            snprintf(token_path, sizeof token_path, "%s", token_file);
        else
            snprintf(token_path, sizeof token_path, "%s/smdp-admin-token", pki_dir);
        if (!admin_token(token_path, !token_file, file_token, &e)) {
            fprintf(stderr, "esim-mdm smdp: admin token: %s\n", e.msg);
            sim_pki_free(pki);
            return token_file ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
        }
        token = file_token;
    }
    struct event_base *base = cli_event_base_new();
    sim_smdp *s = NULL;
    sim_smdp_config cfg = {.pki = pki,
                           .listen_host = host,
                           .port = (uint16_t)port,
                           .data_dir = data_dir,
                           .admin_token = token};
    esim_err rc = base ? sim_smdp_new(base, &cfg, &s, &e) : ESIM_ENOMEM;
    int exit_code = CLI_EXIT_OK;
    if (rc != ESIM_OK) {
        fprintf(stderr, "esim-mdm smdp: %s\n", e.msg);
        exit_code = rc == ESIM_EINVAL ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
        goto out;
    }
    size_t added = 0;
    if (orders && sim_smdp_load_csv(s, orders, &added, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm smdp: --orders: %s\n", e.msg);
        exit_code = CLI_EXIT_USAGE;
        goto out;
    }
    if (port_file && !write_port(port_file, sim_smdp_port(s))) {
        exit_code = CLI_EXIT_FAIL;
        goto out;
    }
    printf("esim-mdm smdp: SM-DP+ on %s (eSIMServerURL), %zu orders (%zu loaded), admin "
           "%s/admin/orders (token %s)\n",
           sim_smdp_url(s), sim_smdp_order_count(s), added, sim_smdp_url(s),
           token == file_token ? token_path : "from --admin-token");
    fflush(stdout);
    run_loop(base, 0);
    printf("esim-mdm smdp: stopped\n");
out:
    sim_smdp_free(s);
    if (base)
        event_base_free(base);
    sim_pki_free(pki);
    return exit_code;
}

/* ---- devsim user-action ----------------------------------------------------------- */

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    return esim_buf_append(userdata, ptr, size * nmemb) == ESIM_OK ? size * nmemb : 0;
}

static void print_esims(const json_t *dev)
{
    json_t *esims = json_object_get(dev, "esims"), *it;
    size_t i;
    if (json_array_size(esims) == 0)
        printf("eSIM: none\n");
    json_array_foreach(esims, i, it)
        printf("eSIM: %s %s (%s)\n", json_string_value(json_object_get(it, "iccid")),
               json_string_value(json_object_get(it, "state")),
               json_string_value(json_object_get(it, "class")));
}

static int action_via_status(const char *status_url, const char *udid, const char *action)
{
    char url[1024];
    snprintf(url, sizeof url, "%s/devices/%s/actions/%s", status_url, udid, action);
    CURL *c = curl_easy_init();
    esim_buf body = {0};
    if (!c)
        return CLI_EXIT_FAIL;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    CURLcode res = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (res != CURLE_OK) {
        fprintf(stderr,
                "esim-mdm devsim user-action: %s: %s (is the simulator running with "
                "--status-listen?)\n",
                url, curl_easy_strerror(res));
        esim_buf_free(&body);
        return CLI_EXIT_FAIL;
    }
    json_t *j = body.len ? json_loadb((const char *)body.data, body.len, 0, NULL) : NULL;
    esim_buf_free(&body);
    if (status != 200 || !j) {
        fprintf(stderr, "esim-mdm devsim user-action: %s\n",
                j && json_string_value(json_object_get(j, "error"))
                    ? json_string_value(json_object_get(j, "error"))
                    : "the simulator refused the request");
        json_decref(j);
        return status == 404 || status == 400 ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    }
    printf("%s: %s\n", json_is_true(json_object_get(j, "allowed")) ? "allowed" : "refused",
           json_string_value(json_object_get(j, "reason")));
    print_esims(json_object_get(j, "device"));
    json_decref(j);
    return CLI_EXIT_OK;
}

static int action_on_file(const char *data_dir, const char *pki_dir, const char *udid,
                          sim_user_action a)
{
    esim_error e = {{0}};
    if (esim_udid_validate(udid, &e) != ESIM_OK)
        return cli_usage_error("devsim user-action: --device: %s", e.msg);
    sim_pki *pki = NULL;
    if (sim_pki_open(pki_dir, &pki, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm devsim user-action: PKI: %s\n", e.msg);
        return CLI_EXIT_FAIL;
    }
    char path[2048];
    snprintf(path, sizeof path, "%s/devices/%s.json", data_dir, udid);
    sim_device *d = NULL;
    esim_err rc = sim_device_load(pki, path, &d, &e);
    if (rc != ESIM_OK) {
        fprintf(stderr, "esim-mdm devsim user-action: %s\n", e.msg);
        sim_pki_free(pki);
        return rc == ESIM_ENOTFOUND ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    }
    sim_action_outcome o;
    rc = sim_device_user_action(d, a, &o, &e);
    int code = CLI_EXIT_OK;
    if (rc != ESIM_OK && rc != ESIM_ESTATE) {
        fprintf(stderr, "esim-mdm devsim user-action: %s\n", e.msg);
        code = CLI_EXIT_FAIL;
    } else {
        /* The device re-enrols (as after setup) the next time the simulator runs. */
        if (sim_device_dirty(d) && sim_device_save(d, path, &e) != ESIM_OK) {
            fprintf(stderr, "esim-mdm devsim user-action: %s\n", e.msg);
            code = CLI_EXIT_FAIL;
        }
        printf("%s: %s\n", o.allowed ? "allowed" : "refused", o.reason);
        esim_buf b = {0};
        sim_device_describe_json(d, &b, NULL);
        json_t *j = json_loads((const char *)b.data, 0, NULL);
        print_esims(j);
        json_decref(j);
        esim_buf_free(&b);
    }
    sim_device_free(d);
    sim_pki_free(pki);
    return code;
}

static int cmd_user_action(int argc, char **argv)
{
    static const cli_option opts[] = {{"device", true, 'u'},
                                      {"status", true, 's'},
                                      {"data-dir", true, 'd'},
                                      {"pki", true, 'p'},
                                      {NULL, false, 0}};
    const char *udid = NULL, *status = NULL, *data_dir = NULL, *pki_dir = "pki", *action = NULL;
    cli_parser p;
    cli_parser_init(&p, "devsim user-action", opts, argc, argv, 1);
    int c;
    while ((c = cli_next(&p)) != CLI_END) {
        switch (c) {
        case 'u':
            udid = p.value;
            break;
        case 's':
            status = p.value;
            break;
        case 'd':
            data_dir = p.value;
            break;
        case 'p':
            pki_dir = p.value;
            break;
        case CLI_ARG:
            if (action)
                return cli_unexpected("devsim user-action", p.value);
            action = p.value;
            break;
        default:
            return CLI_EXIT_USAGE;
        }
    }
    if (!udid)
        return cli_missing("devsim user-action", "--device UDID");
    if (!action)
        return cli_usage_error(
            "devsim user-action: name exactly one action (delete-esim, transfer-esim, "
            "erase-all-content, passcode-wipe, findmy-erase)");
    sim_user_action a;
    esim_error e;
    if (sim_user_action_parse(action, &a, &e) != ESIM_OK)
        return cli_usage_error("devsim user-action: %s", e.msg);
    if (!status == !data_dir)
        return cli_usage_error(
            "devsim user-action: give --status URL (a running simulator) or --data-dir DIR "
            "(a stopped one's files), not both");
    if (status)
        return action_via_status(status, udid, sim_user_action_name(a));
    return action_on_file(data_dir, pki_dir, udid, a);
}

/* ---- devsim manifest ------------------------------------------------------------------ */

/* The operator's order manifest for a run: the same identities the
 * simulator will use for --devices N --seed S, one ICCID each. */
static int cmd_manifest(int argc, char **argv)
{
    static const cli_option opts[] = {
        {"devices", true, 'n'}, {"seed", true, 's'}, {NULL, false, 0}};
    unsigned long long n = 0, seed = 1;
    cli_parser p;
    cli_parser_init(&p, "devsim manifest", opts, argc, argv, 1);
    int c;
    while ((c = cli_next(&p)) != CLI_END) {
        switch (c) {
        case 'n':
            if (!parse_uint(p.value, 10000000, &n) || n == 0)
                return cli_bad_value(&p, "wants 1..10000000");
            break;
        case 's':
            if (!parse_uint(p.value, UINT64_MAX, &seed))
                return cli_bad_value(&p, "wants a non-negative integer");
            break;
        case CLI_ARG:
            return cli_unexpected("devsim manifest", p.value);
        default:
            return CLI_EXIT_USAGE;
        }
    }
    if (n == 0)
        return cli_missing("devsim manifest", "--devices N");
    puts("eid,iccid");
    for (unsigned i = 0; i < n; i++) {
        char udid[65], eid[ESIM_EID_LEN + 1], iccid[SIM_ICCID_MAX + 1];
        sim_devsim_identity(seed, i, udid, eid);
        snprintf(iccid, sizeof iccid, "8901260%012u0", i);
        esim_iccid_set_check_digit(iccid, NULL);
        printf("%s,%s\n", eid, iccid);
    }
    return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

/* The service refused a device's enrolment: say why, once per reason. */
static void say_refused(void *arg, const char *udid, long status, const char *reason)
{
    (void)arg;
    if (status)
        fprintf(stderr,
                "esim-mdm devsim: the service refused to enrol %s (HTTP %ld): %s; the devices "
                "retry with back-off\n",
                udid, status, reason);
    else
        fprintf(stderr, "esim-mdm devsim: enrolling %s: %s; the devices retry with back-off\n",
                udid, reason);
}

/* ---- devsim ------------------------------------------------------------------------- */

int cmd_devsim(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "manifest") == 0) {
        if (cli_wants_help(argc - 1, argv + 1)) {
            fputs(devsim_help, stdout);
            return CLI_EXIT_OK;
        }
        return cmd_manifest(argc - 1, argv + 1);
    }
    if (argc >= 2 && strcmp(argv[1], "user-action") == 0) {
        if (cli_wants_help(argc - 1, argv + 1)) {
            fputs(devsim_help, stdout);
            return CLI_EXIT_OK;
        }
        return cmd_user_action(argc - 1, argv + 1);
    }
    if (cli_wants_help(argc, argv)) {
        fputs(devsim_help, stdout);
        return CLI_EXIT_OK;
    }
    enum {
        O_SERVER = 1,
        O_APNS,
        O_DEVICES,
        O_PKI,
        O_DATA,
        O_SEED,
        O_SUP,
        O_NOTNOW,
        O_OFFLINE,
        O_FAIL,
        O_OS,
        O_CHANNEL,
        O_STATUS,
        O_STATUS_FILE,
        O_MTLS,
        O_MAXC,
        O_DURATION,
        O_REUSE,
        O_NOESIM,
        O_WIN_PCS,
        O_WIN_SHARE,
        O_WIN_SERVER,
        O_WNS,
        O_WIN_POLL,
        O_RESOLVE,
        O_IOT,
        O_IOT_POLL,
        O_IOT_OFFLINE,
        O_IOT_FAIL,
        O_IOT_INDIRECT,
        O_EIM_URL,
        O_EIM_ID,
        O_API_URL,
        O_API_KEY,
        O_API_KEY_FILE,
        O_FIRST,
        O_SLICE
    };
    static const cli_option opts[] = {{"server", true, O_SERVER},
                                      {"apns-mock", true, O_APNS},
                                      {"devices", true, O_DEVICES},
                                      {"pki", true, O_PKI},
                                      {"data-dir", true, O_DATA},
                                      {"seed", true, O_SEED},
                                      {"supervised-share", true, O_SUP},
                                      {"notnow-share", true, O_NOTNOW},
                                      {"offline-share", true, O_OFFLINE},
                                      {"fail-share", true, O_FAIL},
                                      {"no-esim-share", true, O_NOESIM},
                                      {"os-version", true, O_OS},
                                      {"channel", true, O_CHANNEL},
                                      {"status-listen", true, O_STATUS},
                                      {"status-port-file", true, O_STATUS_FILE},
                                      {"device-auth", true, O_MTLS},
                                      {"max-concurrent", true, O_MAXC},
                                      {"reuse-identity-after-erase", false, O_REUSE},
                                      {"duration", true, O_DURATION},
                                      {"windows-pcs", true, O_WIN_PCS},
                                      {"windows-share", true, O_WIN_SHARE},
                                      {"windows-server", true, O_WIN_SERVER},
                                      {"wns-mock", true, O_WNS},
                                      {"windows-poll-ms", true, O_WIN_POLL},
                                      {"smdp-resolve", true, O_RESOLVE},
                                      {"iot-devices", true, O_IOT},
                                      {"iot-poll-ms", true, O_IOT_POLL},
                                      {"iot-offline-share", true, O_IOT_OFFLINE},
                                      {"iot-fail-share", true, O_IOT_FAIL},
                                      {"iot-indirect-share", true, O_IOT_INDIRECT},
                                      {"eim-url", true, O_EIM_URL},
                                      {"eim-id", true, O_EIM_ID},
                                      {"api-url", true, O_API_URL},
                                      {"api-key", true, O_API_KEY},
                                      {"api-key-file", true, O_API_KEY_FILE},
                                      {"first-device", true, O_FIRST},
                                      {"slice-devices", true, O_SLICE},
                                      {NULL, false, 0}};
    sim_devsim_config cfg = {
        .pki_dir = "pki", .supervised_share = 1.0, .seed = 1, .on_enrol_refused = say_refused};
    bool have_devices = false;
    const char *status_file = NULL;
    const char *more_servers[7];
    size_t n_more_servers = 0;
    const char *resolve[16];
    unsigned long long v;
    unsigned duration = 0;
    char api_key[512] = "";
    cli_parser p;
    cli_parser_init(&p, "devsim", opts, argc, argv, 1);
    int c;
    while ((c = cli_next(&p)) != CLI_END) {
        switch (c) {
        case O_SERVER:
            /* Given again: another instance of the service. */
            if (!cfg.server_url)
                cfg.server_url = p.value;
            else if (n_more_servers < 7)
                more_servers[n_more_servers++] = p.value;
            else
                return cli_usage_error("devsim: at most 8 --server URLs");
            break;
        case O_APNS:
            cfg.apns_url = p.value;
            break;
        case O_DEVICES:
            if (!parse_uint(p.value, 10000000, &v))
                return cli_bad_value(&p, "wants 0..10000000");
            cfg.devices = (unsigned)v;
            have_devices = true;
            break;
        case O_FIRST:
        case O_SLICE:
            if (!parse_uint(p.value, 10000000, &v))
                return cli_bad_value(&p, "wants 0..10000000");
            *(c == O_FIRST ? &cfg.first_device : &cfg.slice_devices) = (unsigned)v;
            break;
        case O_PKI:
            cfg.pki_dir = p.value;
            break;
        case O_DATA:
            cfg.data_dir = p.value;
            break;
        case O_SEED:
            if (!parse_uint(p.value, UINT64_MAX, &v))
                return cli_bad_value(&p, "wants a non-negative integer");
            cfg.seed = v;
            break;
        case O_SUP:
        case O_NOTNOW:
        case O_OFFLINE:
        case O_FAIL:
        case O_NOESIM: {
            double *dst = c == O_SUP       ? &cfg.supervised_share
                          : c == O_NOTNOW  ? &cfg.notnow_share
                          : c == O_OFFLINE ? &cfg.offline_share
                          : c == O_NOESIM  ? &cfg.no_esim_share
                                           : &cfg.fail_share;
            if (!parse_share(p.value, dst))
                return cli_bad_value(&p, "shares are numbers from 0 to 1");
            break;
        }
        case O_OS:
            cfg.os_version = p.value;
            break;
        case O_CHANNEL:
            cfg.channel = p.value;
            break;
        case O_STATUS:
            cfg.status_listen = p.value;
            break;
        case O_STATUS_FILE:
            status_file = p.value;
            break;
        case O_MTLS:
            if (strcmp(p.value, "mtls") == 0)
                cfg.tls_client_auth = true;
            else if (strcmp(p.value, "none") == 0)
                cfg.no_identity = true;
            else if (strcmp(p.value, "signature") != 0)
                return cli_bad_value(&p, "signature, mtls or none");
            break;
        case O_REUSE:
            cfg.reuse_identity_on_erase = true;
            break;
        case O_MAXC:
            if (!parse_uint(p.value, 100000, &v) || v == 0)
                return cli_bad_value(&p, "wants 1..100000");
            cfg.max_concurrent = (unsigned)v;
            break;
        case O_DURATION:
            if (!parse_uint(p.value, 86400 * 365, &v))
                return cli_bad_value(&p, "wants seconds");
            duration = (unsigned)v;
            break;
        case O_WIN_PCS:
            if (!parse_uint(p.value, 10000000, &v))
                return cli_bad_value(&p, "wants 0..10000000");
            cfg.windows_pcs = (unsigned)v;
            break;
        case O_WIN_SHARE:
            if (!parse_share(p.value, &cfg.windows_share))
                return cli_bad_value(&p, "shares are numbers from 0 to 1");
            break;
        case O_WIN_SERVER:
            cfg.windows_server_url = p.value;
            break;
        case O_WNS:
            cfg.wns_url = p.value;
            break;
        case O_WIN_POLL:
            if (!parse_uint(p.value, 86400000, &v) || v < 100)
                return cli_bad_value(&p, "wants 100..86400000 milliseconds");
            cfg.windows_poll_ms = (unsigned)v;
            break;
        case O_RESOLVE:
            if (cfg.n_smdp_resolve == 16)
                return cli_bad_value(&p, "at most 16 of them");
            resolve[cfg.n_smdp_resolve++] = p.value;
            cfg.smdp_resolve = resolve;
            break;
        case O_IOT:
            if (!parse_uint(p.value, 1000000, &v))
                return cli_bad_value(&p, "wants 0..1000000");
            cfg.iot_devices = (unsigned)v;
            break;
        case O_IOT_POLL:
            if (!parse_uint(p.value, 86400000, &v) || v < 100)
                return cli_bad_value(&p, "wants 100..86400000 milliseconds");
            cfg.iot_poll_ms = (unsigned)v;
            break;
        case O_IOT_OFFLINE:
        case O_IOT_FAIL:
        case O_IOT_INDIRECT:
            if (!parse_share(p.value, c == O_IOT_FAIL       ? &cfg.iot_fail_share
                                      : c == O_IOT_INDIRECT ? &cfg.iot_indirect_share
                                                            : &cfg.iot_offline_share))
                return cli_bad_value(&p, "shares are numbers from 0 to 1");
            break;
        case O_EIM_URL:
            cfg.eim_url = p.value;
            break;
        case O_EIM_ID:
            cfg.eim_id = p.value;
            break;
        case O_API_URL:
            cfg.api_url = p.value;
            break;
        case O_API_KEY:
            cfg.api_key = p.value;
            break;
        case O_API_KEY_FILE: {
            /* The key kept off the command line (ps shows arguments). */
            esim_buf kb = {0};
            esim_error ke = {{0}};
            if (esim_read_file(p.value, 4096, &kb, &ke) != ESIM_OK) {
                fprintf(stderr, "esim-mdm devsim: --api-key-file %s: %s\n", p.value, ke.msg);
                return CLI_EXIT_USAGE;
            }
            size_t kl = strcspn(kb.len ? (const char *)kb.data : "", "\r\n");
            snprintf(api_key, sizeof api_key, "%.*s", (int)kl, kb.len ? (const char *)kb.data : "");
            esim_buf_free(&kb);
            if (!api_key[0])
                return cli_bad_value(&p, "names an empty file");
            cfg.api_key = api_key;
            break;
        }
        case CLI_ARG:
            return cli_unexpected("devsim", p.value);
        default:
            return CLI_EXIT_USAGE;
        }
    }
    if (!cfg.server_url)
        return cli_missing("devsim", "--server URL");
    cfg.more_server_urls = more_servers;
    cfg.n_more_server_urls = n_more_servers;
    if (!cfg.apns_url)
        return cli_missing("devsim", "--apns-mock URL");
    if (!have_devices)
        return cli_missing("devsim", "--devices N");
    if (!cfg.devices && !cfg.iot_devices)
        return cli_usage_error("devsim: --devices 0 needs --iot-devices N");
    if (cfg.api_key && !cfg.api_url)
        return cli_usage_error("devsim: --api-key needs --api-url");
    if (status_file && !cfg.status_listen)
        return cli_usage_error("devsim: --status-port-file needs --status-listen");
    if (cfg.windows_pcs && cfg.windows_share > 0)
        return cli_usage_error("devsim: give --windows-pcs or --windows-share, not both");

    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct event_base *base = cli_event_base_new();
    sim_devsim *s = NULL;
    esim_error e = {{0}};
    esim_err rc = base ? sim_devsim_new(base, &cfg, &s, &e) : ESIM_ENOMEM;
    int code = CLI_EXIT_OK;
    if (rc != ESIM_OK) {
        fprintf(stderr, "esim-mdm devsim: %s\n", e.msg);
        code = rc == ESIM_EINVAL ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    } else if (status_file && !write_port(status_file, sim_devsim_status_port(s))) {
        code = CLI_EXIT_FAIL;
    } else {
        printf("esim-mdm devsim: %u devices against %s", cfg.devices, cfg.server_url);
        if (sim_devsim_windows_count(s))
            printf(" (%zu of them Windows PCs)", sim_devsim_windows_count(s));
        if (sim_devsim_iot_count(s))
            printf(" and %zu IoT devices", sim_devsim_iot_count(s));
        if (cfg.status_listen)
            printf(", status on http://127.0.0.1:%u/stats", sim_devsim_status_port(s));
        printf("\n");
        fflush(stdout);
        run_loop(base, duration);
        sim_devsim_stats t = sim_devsim_get_stats(s);
        printf(
            "esim-mdm devsim: %zu devices, %zu enrolments, %zu pushes, %zu check-ins, %zu commands "
            "(%zu acknowledged, %zu errors, %zu NotNow), %zu downloads (%zu failed), %zu HTTP "
            "errors\n",
            t.devices, t.enrolled, t.pushes, t.checkins, t.commands, t.acknowledged, t.errors,
            t.not_now, t.downloads_ok + t.downloads_failed, t.downloads_failed, t.http_errors);
        if (t.windows_pcs)
            printf("esim-mdm devsim: %zu Windows PCs, %zu OMA-DM sessions (%zu failed), %zu WNS "
                   "pushes, %zu channels (%zu expired), %zu downloads (%zu failed), %zu resets\n",
                   t.windows_pcs, t.win_sessions, t.win_session_errors, t.wns_pushes,
                   t.wns_channels, t.wns_expired, t.win_downloads_ok + t.win_downloads_failed,
                   t.win_downloads_failed, t.win_resets);
        if (t.iot.devices)
            printf("esim-mdm devsim: %zu IoT devices, %zu poll cycles (%zu failed), %zu polls, "
                   "%zu packages (%zu refused by the eUICC), %zu data requests, %zu downloads "
                   "(%zu failed), %zu notifications acknowledged, %zu registered\n",
                   t.iot.devices, t.iot.cycles, t.iot.cycle_errors, t.iot.polls,
                   t.iot.packages_ok + t.iot.packages_refused, t.iot.packages_refused,
                   t.iot.data_requests, t.iot.downloads_ok + t.iot.downloads_failed,
                   t.iot.downloads_failed, t.iot.acknowledged, t.iot.registered);
    }
    sim_devsim_free(s);
    if (base)
        event_base_free(base);
    curl_global_cleanup();
    return code;
}
