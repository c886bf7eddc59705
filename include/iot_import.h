/*
 * iot_import.h: the header name Aliyun iotkit firmware includes for the HAL_* platform layer.
 *
 * It exists so that firmware written against the Aliyun iotkit v2.3 SDK compiles unchanged. The
 * HAL functions (HAL_Malloc, HAL_Free, HAL_Printf, HAL_Snprintf, HAL_SleepMs, HAL_UptimeMs and
 * the HAL_Set / HAL_Get identity functions) are declared in the cbindgen-generated "ota.h" with
 * the iotkit signatures. libota defines each of them as a weak Linux default: firmware that
 * brings its own HAL_OS_<board>.c defines any of them and its definition is the one called,
 * with libota.a and with libota.so. libota itself calls only HAL_Printf (for its log lines).
 */
#ifndef OTA_IOT_IMPORT_H
#define OTA_IOT_IMPORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ota.h"

#endif /* OTA_IOT_IMPORT_H */
