/*
 * own_hal.h: what own_hal.c (a firmware's own HAL) records, for own_hal_test.c to check.
 */
#ifndef OWN_HAL_H
#define OWN_HAL_H

#include <stddef.h>
#include <stdint.h>

enum own_hal_function {
    OWN_HAL_MALLOC,
    OWN_HAL_FREE,
    OWN_HAL_PRINTF,
    OWN_HAL_SNPRINTF,
    OWN_HAL_SLEEP_MS,
    OWN_HAL_UPTIME_MS,
    OWN_HAL_SET_PRODUCT_KEY,
    OWN_HAL_SET_DEVICE_NAME,
    OWN_HAL_SET_DEVICE_SECRET,
    OWN_HAL_GET_PRODUCT_KEY,
    OWN_HAL_GET_DEVICE_NAME,
    OWN_HAL_GET_DEVICE_SECRET,
    OWN_HAL_GET_FIRMWARE_VERSION,
    OWN_HAL_FUNCTIONS
};

/* Calls of each override so far. */
extern unsigned own_hal_calls[OWN_HAL_FUNCTIONS];

/* HAL_UptimeMs counts from here, far above any CLOCK_MONOTONIC reading libota's default gives. */
#define OWN_HAL_UPTIME_BASE_MS 1000000000000ULL

/* What HAL_GetFirmwareVersion reports (libota's default reports app-1.0.0-20180101.1000). */
#define OWN_HAL_FIRMWARE_VERSION "own-hal-fw-4.5.6"

/* Everything HAL_Printf printed (the test's and libota's log lines), NUL-terminated, cut when full. */
const char *own_hal_printed(void);

/* Whether ptr came from this HAL_Malloc and is still live. */
int own_hal_owns(const void *ptr);

#endif /* OWN_HAL_H */
