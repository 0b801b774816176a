/* A vendor's first program against the installed libesim-mdm: every public
 * header compiles on its own include path, and the library links and runs. */
#include <stdio.h>

#include "apns/apns.h"
#include "campaign/campaign.h"
#include "core/esim.h"
#include "restrictions/restrictions.h"
#include "service/service.h"

int main(void)
{
    char eid[ESIM_EID_LEN + 1] = "89049032000000000000000000000100";
    esim_service_config cfg;
    esim_service_config_init(&cfg);
    if (esim_eid_set_check_digits(eid, NULL) != ESIM_OK || esim_eid_validate(eid, NULL) != ESIM_OK)
        return 1;
    if (esim_campaigns_attach(NULL, NULL, NULL) != ESIM_EINVAL ||
        esim_apns_latency_bound_ms(0) != 1)
        return 1;
    printf("%s %s\n", eid, esim_strerror(ESIM_ENOTFOUND));
    return 0;
}
