/*
 * The smallest firmware that links libota: it only proves the installed headers and library
 * work together (an OTA module cannot be made without product key, device name and MQTT client).
 */
#include <stdio.h>

#include "iot_import.h"
#include "iot_export.h"

int main(void)
{
    void *h_ota;

    IOT_SetLogLevel(IOT_LOG_ERROR);
    h_ota = IOT_OTA_Init(NULL, NULL, NULL);
    if (NULL != h_ota) {
        HAL_Printf("IOT_OTA_Init(NULL, NULL, NULL) returned a handle\n");
        IOT_OTA_Deinit(h_ota);
        return 1;
    }
    HAL_Printf("IOT_OTA_Init(NULL, NULL, NULL) = NULL, IOT_OTA_GetLastError(NULL) = %d\n",
               IOT_OTA_GetLastError(NULL));
    HAL_Printf("consumer linked against libota: ok\n");
    return 0;
}
