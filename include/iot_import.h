/*
 * iot_import.h: the header name Aliyun iotkit firmware includes for the HAL_* platform layer.
 *
 * It exists so that firmware written against the Aliyun iotkit v2.3 SDK compiles unchanged: the
 * HAL functions are declared in the cbindgen-generated "ota.h" (implemented for Linux in libota).
 * HAL_Printf and HAL_Snprintf are variadic, which the Rust library cannot define, so they map to
 * the C library here.
 */
#ifndef OTA_IOT_IMPORT_H
#define OTA_IOT_IMPORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ota.h"

#ifndef HAL_Printf
#define HAL_Printf printf
#endif

#ifndef HAL_Snprintf
#define HAL_Snprintf snprintf
#endif

#endif /* OTA_IOT_IMPORT_H */
