/*
 * engine_bench.c — the campaign engine alone, with no I/O: N devices through
 * restrictions profile, refresh and verification (results fed as the
 * service's hook would), batches of changed records taken as the service
 * writes them. Prints time and memory per device, and as the reference
 * measured in the same run, the cost of parsing one device's verification
 * answer (esim_msg_parse + ServiceSubscriptions), which every campaign pays.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "campaign/campaign_engine.h"
#include "core/internal.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kb(void)
{
    esim_proc_usage u;
    esim_proc_usage_read(0, &u);
    return u.rss_kb;
}

static size_t queued, pushed;

static esim_err q(void *arg, campaign *c, size_t dev, campaign_step step, esim_error *err)
{
    (void)arg, (void)c, (void)dev, (void)step, (void)err;
    queued++;
    return ESIM_OK;
}

static esim_err p(void *arg, campaign *c, size_t dev, esim_error *err)
{
    (void)arg, (void)c, (void)dev, (void)err;
    pushed++;
    return ESIM_OK;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
    if (n == 0 || n > 10000000) {
        fprintf(stderr, "usage: campaign_engine_bench [DEVICES (1..10000000)]\n");
        return 2;
    }
    char(*udids)[65] = malloc(n * sizeof *udids);
    char(*eids)[33] = malloc(n * sizeof *eids);
    campaign_target *t = calloc(n, sizeof *t);
    if (!udids || !eids || !t)
        return 1;
    for (size_t i = 0; i < n; i++) {
        snprintf(udids[i], 65, "00008110-%016zX", i);
        snprintf(eids[i], 33, "8904903200000000%014zu00", i);
        esim_eid_set_check_digits(eids[i], NULL);
        t[i].udid = udids[i];
        t[i].expected_eid = eids[i];
    }
    campaign_spec spec = {0};
    spec.steps[CAMPAIGN_STEP_PROFILE] = spec.steps[CAMPAIGN_STEP_REFRESH] =
        spec.steps[CAMPAIGN_STEP_VERIFY] = true;
    spec.policy.allow_esim_modification = ESIM_TRI_FALSE;
    spec.smdp_url = "https://smdp.example.com";
    campaign_settings_init(&spec.settings);
    spec.settings.pushes_per_second = 1e7;
    campaign_io io = {NULL, q, p, true, NULL, NULL, NULL};

    long rss0 = rss_kb();
    double t0 = now_s();
    campaign *c = NULL;
    esim_error e;
    if (campaign_new(&spec, t, n, 0, &c, &e) != ESIM_OK) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    long rss1 = rss_kb();
    size_t taken = 0, nd;
    campaign_tick(c, 0, &io);
    campaign_take_dirty(c, &nd);
    esim_subscription sub = {0};
    campaign_result ack = {.status = ESIM_STATUS_ACKNOWLEDGED};
    for (int step = 0; step < 3; step++)
        for (size_t i = 0; i < n; i++) {
            long dev = campaign_find_device(c, udids[i]); /* as the hook looks it up */
            campaign_result r = ack;
            if (step == 2) {
                memcpy(sub.eid, eids[i], 33);
                r.subs = &sub;
                r.n_subs = 1;
            }
            campaign_on_result(c, (size_t)dev, (campaign_step)step, &r, 1 + step, &io);
            if (i % 1000 == 999) {
                campaign_take_dirty(c, &nd);
                taken += nd;
            }
        }
    campaign_take_dirty(c, &nd);
    taken += nd;
    double engine_s = now_s() - t0;
    size_t counts[CDEV_STATE_COUNT];
    campaign_counts(c, counts);
    long rss2 = rss_kb();

    /* Reference: parsing verification answers, as the service must. */
    plist_t qr = plist_new_dict(), subs = plist_new_array(), s1 = plist_new_dict();
    plist_dict_set_item(s1, "EID", plist_new_string(eids[0]));
    plist_dict_set_item(s1, "ICCID", plist_new_string("8944000000000000019"));
    plist_array_append_item(subs, s1);
    plist_dict_set_item(qr, "ServiceSubscriptions", subs);
    plist_t extra = plist_new_dict();
    plist_dict_set_item(extra, "QueryResponses", qr);
    esim_buf body = {0};
    esim_msg_build_result(udids[0], ESIM_STATUS_ACKNOWLEDGED,
                          "6c1b1f4e-0d43-4a5a-9a39-2a4a1f0a9e11", NULL, 0, extra, ESIM_PLIST_XML,
                          &body, NULL);
    plist_free(extra);
    size_t ref_n = n < 20000 ? n : 20000;
    double r0 = now_s();
    for (size_t i = 0; i < ref_n; i++) {
        esim_msg m = {0};
        esim_subscription *out = NULL;
        size_t k = 0;
        esim_msg_parse(body.data, body.len, NULL, &m, NULL);
        esim_msg_service_subscriptions(&m, &out, &k, NULL);
        free(out);
        esim_msg_free(&m);
    }
    double ref_per_dev = (now_s() - r0) / (double)ref_n;
    esim_buf_free(&body);

    double per_dev = engine_s / (double)n;
    printf(
        "campaign engine: %zu devices, 3 steps each: %.3f s (%.0f devices/s, %.2f us per device)\n",
        n, engine_s, (double)n / engine_s, per_dev * 1e6);
    printf("  verified %zu, commands queued %zu, pushes %zu, records written %zu\n",
           counts[CDEV_VERIFIED], queued, pushed, taken);
    printf("  memory: %.0f bytes per device at creation, %.0f bytes per device at the end\n",
           (double)(rss1 - rss0) * 1024.0 / (double)n, (double)(rss2 - rss0) * 1024.0 / (double)n);
    printf("  reference: parsing one verification answer costs %.2f us; the engine's whole\n"
           "  per-device work is %.2fx that (ratio engine/reference)\n",
           ref_per_dev * 1e6, per_dev / ref_per_dev);
    printf("{\"devices\":%zu,\"engine_s\":%.4f,\"engine_devices_per_s\":%.0f,\"bytes_per_device\":%"
           ".0f,"
           "\"reference_parse_us\":%.3f,\"ratio_engine_to_parse\":%.3f}\n",
           n, engine_s, (double)n / engine_s, (double)(rss2 - rss0) * 1024.0 / (double)n,
           ref_per_dev * 1e6, per_dev / ref_per_dev);
    campaign_free(c);
    free(udids);
    free(eids);
    free(t);
    return counts[CDEV_VERIFIED] == n ? 0 : 1;
}
