/*
 * iot_export.h: the header name Aliyun iotkit firmware includes for the IOT_* API.
 *
 * It exists so that firmware written against the Aliyun iotkit v2.3 SDK compiles unchanged:
 * every declaration lives in the cbindgen-generated "ota.h"; this file only keeps the old name.
 */
#ifndef OTA_IOT_EXPORT_H
#define OTA_IOT_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "ota.h"

#endif /* OTA_IOT_EXPORT_H */
