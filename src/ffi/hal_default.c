/*
 * The Linux defaults of the HAL functions in iot_import.h, all weak: firmware that brings its own
 * HAL_OS_<board>.c defines any of them and the linker takes the firmware's (libota.a), or the
 * dynamic linker does (libota.so). C, because stable Rust defines neither weak nor variadic
 * functions. The identity store stays in Rust (shared with the Rust API); the defaults reach it
 * through ota_hal_identity_set/get, which are internal to libota and not in any header.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "iot_import.h"

#define OTA_HAL_WEAK __attribute__((weak))

/* Field numbers shared with src/ffi/hal.rs (IDENTITY_FIELDS). */
enum ota_hal_identity {
    OTA_HAL_PRODUCT_KEY = 0,
    OTA_HAL_DEVICE_NAME = 1,
    OTA_HAL_DEVICE_SECRET = 2,
    OTA_HAL_FIRMWARE_VERSION = 3
};

int ota_hal_identity_set(int field, const char *value);
int ota_hal_identity_get(int field, char *buf);
int ota_hal_printf_is_default(void);

OTA_HAL_WEAK void *HAL_Malloc(uint32_t size)
{
    return malloc(size);
}

OTA_HAL_WEAK void HAL_Free(void *ptr)
{
    free(ptr);
}

/* A weak alias of a local function, so that ota_hal_printf_is_default can tell whether the
 * firmware replaced HAL_Printf (the library's log then goes there, as iotkit's does). */
static void ota_hal_default_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

void HAL_Printf(const char *fmt, ...) __attribute__((weak, alias("ota_hal_default_printf")));

int ota_hal_printf_is_default(void)
{
    return HAL_Printf == ota_hal_default_printf;
}

OTA_HAL_WEAK int HAL_Snprintf(char *str, const int len, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (len < 0) {
        return -1;
    }
    va_start(ap, fmt);
    n = vsnprintf(str, (size_t)len, fmt, ap);
    va_end(ap);
    return n;
}

OTA_HAL_WEAK void HAL_SleepMs(uint32_t ms)
{
    struct timespec left;
    left.tv_sec = (time_t)(ms / 1000);
    left.tv_nsec = (long)(ms % 1000) * 1000000L;
    /* A signal cuts nanosleep short; sleep the rest so the caller waits at least ms. */
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

OTA_HAL_WEAK uint64_t HAL_UptimeMs(void)
{
    struct timespec now;
    if (clock_gettime(CLOCK_MONOTONIC, &now) != 0) {
        return 0;
    }
    return (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

OTA_HAL_WEAK int HAL_SetProductKey(char *product_key)
{
    return ota_hal_identity_set(OTA_HAL_PRODUCT_KEY, product_key);
}

OTA_HAL_WEAK int HAL_SetDeviceName(char *device_name)
{
    return ota_hal_identity_set(OTA_HAL_DEVICE_NAME, device_name);
}

OTA_HAL_WEAK int HAL_SetDeviceSecret(char *device_secret)
{
    return ota_hal_identity_set(OTA_HAL_DEVICE_SECRET, device_secret);
}

OTA_HAL_WEAK int HAL_GetProductKey(char *product_key)
{
    return ota_hal_identity_get(OTA_HAL_PRODUCT_KEY, product_key);
}

OTA_HAL_WEAK int HAL_GetDeviceName(char *device_name)
{
    return ota_hal_identity_get(OTA_HAL_DEVICE_NAME, device_name);
}

OTA_HAL_WEAK int HAL_GetDeviceSecret(char *device_secret)
{
    return ota_hal_identity_get(OTA_HAL_DEVICE_SECRET, device_secret);
}

OTA_HAL_WEAK int HAL_GetFirmwareVersion(char *version)
{
    return ota_hal_identity_get(OTA_HAL_FIRMWARE_VERSION, version);
}
