/* A vendor's first program against the installed libesim-mdm. */
#include <stdio.h>
#include <string.h>

#include "core/esim.h"
#include "service/service.h"

int main(void)
{
    char eid[ESIM_EID_LEN + 1] = "89049032000000000000000000000100";
    esim_service_config cfg;
    esim_service_config_init(&cfg);
    if (esim_eid_set_check_digits(eid, NULL) != ESIM_OK || esim_eid_validate(eid, NULL) != ESIM_OK)
        return 1;
    printf("%s %s\n", eid, esim_strerror(ESIM_ENOTFOUND));
    return strcmp(esim_strerror(ESIM_OK), esim_strerror(ESIM_EINVAL)) == 0;
}
