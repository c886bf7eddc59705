/*
 * own_hal_test.c: firmware that brings its own HAL (own_hal.c) links with libota and every HAL
 * call reaches the firmware's definition, not libota's weak default: the calls the firmware
 * makes itself, and libota's own log lines, which go to the firmware's HAL_Printf.
 *
 * Prints one line per check and exits 1 at the first failure.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "iot_import.h"
#include "iot_export.h"
#include "own_hal.h"
#include "test_checks.h"


static const char *const hal_names[OWN_HAL_FUNCTIONS] = {
    "HAL_Malloc", "HAL_Free", "HAL_Printf", "HAL_Snprintf", "HAL_SleepMs", "HAL_UptimeMs",
    "HAL_SetProductKey", "HAL_SetDeviceName", "HAL_SetDeviceSecret", "HAL_GetProductKey",
    "HAL_GetDeviceName", "HAL_GetDeviceSecret", "HAL_GetFirmwareVersion",
};

/* The override of f was called exactly n times more than before. */
static void check_calls(const char *what, enum own_hal_function f, unsigned before, unsigned n)
{
    char line[128];
    snprintf(line, sizeof(line), "%s: own override called %u time(s)", what, n);
    EXPECT_TRUE(line, own_hal_calls[f] - before == n);
}

static void check_memory(void)
{
    unsigned m = own_hal_calls[OWN_HAL_MALLOC];
    unsigned f = own_hal_calls[OWN_HAL_FREE];
    unsigned char *p = HAL_Malloc(64);
    check_calls("HAL_Malloc(64)", OWN_HAL_MALLOC, m, 1);
    EXPECT_TRUE("HAL_Malloc(64) returned a block of the firmware's allocator", own_hal_owns(p));
    memset(p, 0xa5, 64);
    HAL_Free(p);
    HAL_Free(NULL);
    check_calls("HAL_Free(p), HAL_Free(NULL)", OWN_HAL_FREE, f, 2);
}

static void check_text(void)
{
    char buf[8];
    unsigned s = own_hal_calls[OWN_HAL_SNPRINTF];
    unsigned p = own_hal_calls[OWN_HAL_PRINTF];
    EXPECT_TRUE("HAL_Snprintf(buf, 8, \"%s-%d\", \"v\", 2) == 3", HAL_Snprintf(buf, sizeof(buf), "%s-%d", "v", 2) == 3);
    EXPECT_TRUE("  wrote \"v-2\"", strcmp(buf, "v-2") == 0);
    EXPECT_TRUE("HAL_Snprintf(buf, 4, \"abcdef\") == 6, cut to \"abc\"",
                HAL_Snprintf(buf, 4, "%s", "abcdef") == 6 && strcmp(buf, "abc") == 0);
    check_calls("HAL_Snprintf", OWN_HAL_SNPRINTF, s, 2);
    HAL_Printf("own_hal_test: firmware line %d\n", 42);
    check_calls("HAL_Printf", OWN_HAL_PRINTF, p, 1);
    EXPECT_TRUE("HAL_Printf's text reached the firmware's transcript",
                strstr(own_hal_printed(), "own_hal_test: firmware line 42\n") != NULL);
}

static void check_time(void)
{
    unsigned u = own_hal_calls[OWN_HAL_UPTIME_MS];
    unsigned s = own_hal_calls[OWN_HAL_SLEEP_MS];
    uint64_t t0 = HAL_UptimeMs();
    uint64_t t1;
    HAL_SleepMs(5);
    t1 = HAL_UptimeMs();
    check_calls("HAL_UptimeMs", OWN_HAL_UPTIME_MS, u, 2);
    check_calls("HAL_SleepMs(5)", OWN_HAL_SLEEP_MS, s, 1);
    EXPECT_TRUE("HAL_UptimeMs counts on the firmware's clock", t0 >= OWN_HAL_UPTIME_BASE_MS);
    EXPECT_TRUE("HAL_UptimeMs advanced by >= 5 ms over HAL_SleepMs(5)", t1 - t0 >= 5);
}

static void check_identity(void)
{
    char pk[] = "a1OwnHalKey";
    char dn[] = "own-hal-device";
    char ds[] = "own-hal-secret";
    char key[PRODUCT_KEY_LEN + 1];
    char name[DEVICE_NAME_LEN + 1];
    char secret[DEVICE_SECRET_LEN + 1];
    char version[FIRMWARE_VERSION_MAXLEN];
    unsigned before[OWN_HAL_FUNCTIONS];
    int f;

    memcpy(before, own_hal_calls, sizeof(before));
    EXPECT_TRUE("HAL_SetProductKey(\"a1OwnHalKey\") == 11", HAL_SetProductKey(pk) == 11);
    EXPECT_TRUE("HAL_SetDeviceName(\"own-hal-device\") == 14", HAL_SetDeviceName(dn) == 14);
    EXPECT_TRUE("HAL_SetDeviceSecret(\"own-hal-secret\") == 14", HAL_SetDeviceSecret(ds) == 14);
    EXPECT_TRUE("HAL_GetProductKey round-trips", HAL_GetProductKey(key) == 11 && strcmp(key, pk) == 0);
    EXPECT_TRUE("HAL_GetDeviceName round-trips", HAL_GetDeviceName(name) == 14 && strcmp(name, dn) == 0);
    EXPECT_TRUE("HAL_GetDeviceSecret round-trips", HAL_GetDeviceSecret(secret) == 14 && strcmp(secret, ds) == 0);
    EXPECT_TRUE("HAL_GetFirmwareVersion is the firmware's " OWN_HAL_FIRMWARE_VERSION,
                HAL_GetFirmwareVersion(version) == (int)strlen(OWN_HAL_FIRMWARE_VERSION)
                    && strcmp(version, OWN_HAL_FIRMWARE_VERSION) == 0);
    for (f = OWN_HAL_SET_PRODUCT_KEY; f <= OWN_HAL_GET_FIRMWARE_VERSION; f++) {
        check_calls(hal_names[f], (enum own_hal_function)f, before[f], 1);
    }
}

/* libota logs through HAL_Printf when the firmware defines it, as iotkit's SDK does. */
static void check_library_log(void)
{
    unsigned p = own_hal_calls[OWN_HAL_PRINTF];
    IOT_OpenLog("own_hal_test");
    IOT_SetLogLevel(IOT_LOG_DEBUG);
    EXPECT_TRUE("IOT_OTA_Init(NULL, NULL, NULL) == NULL", IOT_OTA_Init(NULL, NULL, NULL) == NULL);
    EXPECT_TRUE("  its error line went to the firmware's HAL_Printf", own_hal_calls[OWN_HAL_PRINTF] > p);
    EXPECT_TRUE("  transcript has \"[err] \" and \"IOT_OTA_Init\"",
                strstr(own_hal_printed(), "[err] ") != NULL && strstr(own_hal_printed(), "IOT_OTA_Init") != NULL);
    p = own_hal_calls[OWN_HAL_PRINTF];
    IOT_DumpMemoryStats(IOT_LOG_INFO);
    check_calls("IOT_DumpMemoryStats(IOT_LOG_INFO) logs one line", OWN_HAL_PRINTF, p, 1);
    EXPECT_TRUE("  transcript has \"[inf] \" and \"memory: \"",
                strstr(own_hal_printed(), "[inf] ") != NULL && strstr(own_hal_printed(), "memory: ") != NULL);
    p = own_hal_calls[OWN_HAL_PRINTF];
    IOT_CloseLog();
    IOT_DumpMemoryStats(IOT_LOG_CRIT);
    check_calls("a closed log prints nothing", OWN_HAL_PRINTF, p, 0);
}

int main(void)
{
    int f;
    char line[96];
    check_memory();
    check_text();
    check_time();
    check_identity();
    check_library_log();
    for (f = 0; f < OWN_HAL_FUNCTIONS; f++) {
        snprintf(line, sizeof(line), "the firmware's %s was called", hal_names[f]);
        EXPECT_TRUE(line, own_hal_calls[f] > 0);
    }
    return checks_done();
}
