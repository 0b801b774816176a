/*
 * cmd_demo.c — `esim-mdm demo`: the product's main job on one machine.
 * `--sample` prints the commands a campaign sends (restrictions profile,
 * RefreshCellularPlans, the verification query, the erase that keeps the eSIM).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "plist/esim_plist.h"
#include "restrictions/restrictions.h"

static const char demo_help[] =
    "usage: esim-mdm demo [--devices N] [--json]\n"
    "       esim-mdm demo --sample\n"
    "\n"
    "Runs the whole system on this machine: the service on an embedded store,\n"
    "the APNs mock, the SM-DP+ simulator and N simulated iPhones, then rolls an\n"
    "eSIM out to all of them and prints where every device stands.\n"
    "\n"
    "options:\n"
    "  --devices N   simulated devices (default 1000)\n"
    "  --json        the last line of output is one JSON summary object\n"
    "  --sample      only print the commands a campaign sends, and exit\n"
    "\n"
    "exit status: 0 every device that can be verified is verified, 1 not, 2 bad options.\n";

#define DEMO_SMDP_URL "https://smdp.example.com"

/* The campaign's policy: what the demo (and a cautious admin) asks for. */
static esim_policy demo_policy(void)
{
    esim_policy p = {0};
    p.allow_esim_modification = ESIM_TRI_FALSE;
    p.force_preserve_esim_on_erase = ESIM_TRI_TRUE;
    p.allow_esim_outgoing_transfers = ESIM_TRI_FALSE;
    return p;
}

static int print_step(const char *title, const esim_buf *body)
{
    printf("==== %s\n%.*s\n", title, (int)body->len, (const char *)body->data);
    return 0;
}

/* Prints the commands of a sample campaign; every builder's error is fatal. */
static int demo_print_sample(void)
{
    esim_error err = {{0}};
    esim_policy policy = demo_policy();
    esim_buf profile = {0};
    esim_cmd install = {0}, refresh = {0}, verify = {0}, erase = {0};
    int rc = CLI_EXIT_FAIL;
    static const char *const queries[] = {"ServiceSubscriptions"};
    esim_erase_opts erase_opts = {.preserve_data_plan = true};

    if (esim_policy_to_profile(&policy, NULL, NULL, &profile, &err) != ESIM_OK ||
        esim_cmd_install_profile(profile.data, profile.len, NULL, &install, &err) != ESIM_OK ||
        esim_cmd_refresh_plans(DEMO_SMDP_URL, NULL, &refresh, &err) != ESIM_OK ||
        esim_cmd_device_information(queries, 1, NULL, &verify, &err) != ESIM_OK ||
        esim_cmd_erase_device(&erase_opts, NULL, &erase, &err) != ESIM_OK) {
        fprintf(stderr, "esim-mdm demo: %s\n", err.msg);
        goto out;
    }
    printf("A sample eSIM campaign: the commands the service sends to each device, in order.\n\n");
    print_step("1. the eSIM restrictions profile (delivered inside InstallProfile)", &profile);
    print_step("   InstallProfile", &install.body);
    print_step("2. RefreshCellularPlans: the device asks the SM-DP+ for its profile", &refresh.body);
    print_step("3. verify: DeviceInformation ServiceSubscriptions (EID and ICCID must match)",
               &verify.body);
    print_step("4. optional: erase that keeps the eSIM (EraseDevice PreserveDataPlan)", &erase.body);
    rc = CLI_EXIT_OK;
out:
    esim_buf_free(&profile);
    esim_cmd_free(&install);
    esim_cmd_free(&refresh);
    esim_cmd_free(&verify);
    esim_cmd_free(&erase);
    return rc;
}

int cmd_demo(int argc, char **argv)
{
    bool sample = false;
    if (cli_wants_help(argc, argv)) {
        fputs(demo_help, stdout);
        return CLI_EXIT_OK;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--sample") == 0)
            sample = true;
        else if (strcmp(argv[i], "--devices") == 0 || strcmp(argv[i], "--json") == 0) {
            if (strcmp(argv[i], "--devices") == 0 && ++i >= argc)
                return cli_usage_error("demo: --devices needs a number");
        } else
            return cli_usage_error("demo: unknown option '%s' (see esim-mdm demo --help)", argv[i]);
    }
    if (!sample)
        fprintf(stderr, "esim-mdm demo: the end-to-end run needs the service and simulator, "
                        "which are still landing; printing a sample campaign instead.\n\n");
    return demo_print_sample();
}
