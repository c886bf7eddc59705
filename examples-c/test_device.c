/* test_device.c: see test_device.h. */
#include <stdlib.h>
#include <string.h>

#include "test_device.h"

const char *env_or(const char *name, const char *fallback)
{
    const char *value = getenv(name);
    return (value != NULL && value[0] != '\0') ? value : fallback;
}

long env_long(const char *name, long fallback)
{
    long value = strtol(env_or(name, "0"), NULL, 10);
    return value > 0 ? value : fallback;
}

int log_level_from_env(void)
{
    static const char *const names[] = { "none", "crit", "error", "warning", "info", "debug" };
    const char *value = env_or("OTA_LOG_LEVEL", "info");
    int i;

    if (value[0] >= '0' && value[0] <= '5' && value[1] == '\0') {
        return value[0] - '0';
    }
    for (i = 0; i < (int)(sizeof(names) / sizeof(names[0])); i++) {
        if (strcmp(value, names[i]) == 0) {
            return i;
        }
    }
    return IOT_LOG_INFO;
}

int copy_field(char *dst, size_t dst_len, const char *src, const char *what)
{
    if (strlen(src) >= dst_len) {
        EXAMPLE_TRACE("%s is longer than %u characters", what, (unsigned int)(dst_len - 1));
        return -1;
    }
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

int setup_identity(device_identity_t *id)
{
    memset(id, 0, sizeof(*id));
    if (copy_field(id->product_key, sizeof(id->product_key), env_or("OTA_PRODUCT_KEY", TEST_PRODUCT_KEY), "product key") != 0
        || copy_field(id->device_name, sizeof(id->device_name), env_or("OTA_DEVICE_NAME", TEST_DEVICE_NAME), "device name") != 0
        || copy_field(id->device_secret, sizeof(id->device_secret), env_or("OTA_DEVICE_SECRET", TEST_DEVICE_SECRET), "device secret") != 0) {
        return -1;
    }
    if (HAL_SetProductKey(id->product_key) < 0 || HAL_SetDeviceName(id->device_name) < 0
        || HAL_SetDeviceSecret(id->device_secret) < 0) {
        EXAMPLE_TRACE("HAL_Set* refused the device identity");
        return -1;
    }
    /* On Linux the HAL answers OTA_FIRMWARE_VERSION when set: the tests pretend to run 1.0.0 */
    if (HAL_GetFirmwareVersion(id->firmware_version) < 0) {
        EXAMPLE_TRACE("HAL_GetFirmwareVersion failed");
        return -1;
    }
    return 0;
}

void *ota_init(const char *protocol_name, const device_identity_t *id, void *pclient)
{
    IOT_OTA_Protocol_t protocol;

    if (0 == strcmp(protocol_name, "aliyun")) {
        return IOT_OTA_Init(id->product_key, id->device_name, pclient);
    } else if (0 == strcmp(protocol_name, "sagoo")) {
        protocol = IOT_OTA_PROTOCOL_SAGOO;
    } else if (0 == strcmp(protocol_name, "tencent")) {
        protocol = IOT_OTA_PROTOCOL_TENCENT;
    } else if (0 == strcmp(protocol_name, "ucloud")) {
        protocol = IOT_OTA_PROTOCOL_UCLOUD;
    } else {
        EXAMPLE_TRACE("unknown OTA_PROTOCOL %s", protocol_name);
        return NULL;
    }
    return IOT_OTA_InitWithProtocol(id->product_key, id->device_name, pclient, protocol);
}
