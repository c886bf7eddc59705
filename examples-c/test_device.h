/*
 * test_device.h: what the C test devices (sequential_writer.c, two_thread_firmware.c) share:
 * settings from the environment, the device identity, and IOT_OTA_Init by protocol name.
 * ota_mqtt_example.c stays self-contained, as the sample it mirrors.
 */
#ifndef OTA_TEST_DEVICE_H
#define OTA_TEST_DEVICE_H

#include <stddef.h>

#include "iot_import.h"
#include "iot_export.h"

#define TEST_PRODUCT_KEY        "a1OtaExmpPk"
#define TEST_DEVICE_NAME        "ota_example_device"
#define TEST_DEVICE_SECRET      "ExampleSecretExampleSecretExampl"

#define EXAMPLE_TRACE(...)                                  \
    do {                                                    \
        HAL_Printf("%s|%03d :: ", __func__, __LINE__);      \
        HAL_Printf(__VA_ARGS__);                            \
        HAL_Printf("%s", "\n");                             \
    } while (0)

typedef struct {
    char product_key[PRODUCT_KEY_LEN + 1];
    char device_name[DEVICE_NAME_LEN + 1];
    char device_secret[DEVICE_SECRET_LEN + 1];
    char firmware_version[FIRMWARE_VERSION_MAXLEN + 1];
} device_identity_t;

/* The variable's value, or `fallback` when it is unset or empty. */
const char *env_or(const char *name, const char *fallback);
/* The variable as a positive number, or `fallback`. */
long env_long(const char *name, long fallback);
/* OTA_LOG_LEVEL: none|crit|error|warning|info|debug or 0..5 (default info). */
int log_level_from_env(void);
/* Copies `src` and its NUL into `dst`; -1 (and a trace naming `what`) when it does not fit. */
int copy_field(char *dst, size_t dst_len, const char *src, const char *what);
/* OTA_PRODUCT_KEY / OTA_DEVICE_NAME / OTA_DEVICE_SECRET (defaults above) through HAL_Set*, and
 * the running version from HAL_GetFirmwareVersion (OTA_FIRMWARE_VERSION on Linux). 0 or -1. */
int setup_identity(device_identity_t *id);
/* IOT_OTA_Init for "aliyun", IOT_OTA_InitWithProtocol for sagoo, tencent and ucloud. */
void *ota_init(const char *protocol_name, const device_identity_t *id, void *pclient);

#endif
