/*
 * api_edge_test.c: every function of ota.h / iot_import.h / iot_export.h at the edges of its
 * contract, each return value asserted against the documented code:
 *   - NULL for each pointer argument, a foreign pointer for each handle;
 *   - zero lengths and buffers one byte too short (nothing may be written: every output buffer
 *     sits between canary bytes and is pre-filled, and both are checked after each call);
 *   - Deinit/Destroy misuse where it is defined (NULL, a foreign handle, a handle of the other
 *     kind, IOT_MQTT_Destroy twice through the same variable, which it sets to NULL).
 *     IOT_OTA_Deinit twice on the same pointer, or any use of a handle after it was released,
 *     is the caller's bug (undefined behaviour) and is not exercised.
 *
 * usage: api_edge_test offline   no network: log, HAL, conn info, IOT_Ioctl, NULL and foreign
 *                                handles, IOT_MQTT_Construct failures
 *        api_edge_test live      a broker at IOTX_MQTT_HOST:IOTX_MQTT_PORT (run_with_broker.sh):
 *                                MQTT calls on a live client, then upgrades the test announces to
 *                                itself (Aliyun MD5, SagooIOT SHA-256 + module + extData, UCloud
 *                                task id), the firmware served by a small HTTP thread of its own
 *
 * Not exercised because the behaviour is undefined by contract: IOT_MQTT_Subscribe with a qos
 * outside iotx_mqtt_qos_t, HAL_Get* with buffers shorter than the documented size (they take
 * no length), strings without a NUL.
 *
 * Runs clean under valgrind memcheck and ASan/UBSan (tests/sanitizers.sh). Prints one line per
 * check; exits 1 at the first failure, after "N passed, 1 failed".
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "iot_import.h"
#include "iot_export.h"
#include "test_checks.h"

/* ------------------------------------------------------------------------------------------ */
/* Output buffers between canaries                                                             */

#define GUARD 32
#define CANARY 0xA5u
#define FILLER 0x5Au

typedef struct {
    unsigned char *block;
    size_t len;
} gbuf_t;

/* A buffer of `len` bytes (pre-filled with FILLER) with GUARD canary bytes on both sides. */
static void *gbuf_new(gbuf_t *g, size_t len)
{
    g->len = len;
    g->block = malloc(len + 2 * GUARD);
    if (g->block == NULL) {
        check_fail("out of memory");
    }
    memset(g->block, CANARY, GUARD);
    memset(g->block + GUARD, FILLER, len);
    memset(g->block + GUARD + len, CANARY, GUARD);
    return g->block + GUARD;
}

static void gbuf_reset(gbuf_t *g)
{
    memset(g->block + GUARD, FILLER, g->len);
}

static unsigned char *gbuf_data(const gbuf_t *g)
{
    return g->block + GUARD;
}

static int gbuf_guards_ok(const gbuf_t *g)
{
    size_t i;
    for (i = 0; i < GUARD; i++) {
        if (g->block[i] != CANARY || g->block[GUARD + g->len + i] != CANARY) {
            return 0;
        }
    }
    return 1;
}

/* Bytes [from, len) still hold the filler: nothing was written there. */
static int gbuf_untouched_from(const gbuf_t *g, size_t from)
{
    size_t i;
    for (i = from; i < g->len; i++) {
        if (g->block[GUARD + i] != FILLER) {
            return 0;
        }
    }
    return 1;
}

static void gbuf_free(gbuf_t *g)
{
    free(g->block);
    g->block = NULL;
}

static void expect_guards(const char *call, const gbuf_t *g)
{
    char what[160];
    snprintf(what, sizeof(what), "  canaries around the %zu-byte buffer of %s intact", g->len, call);
    EXPECT_TRUE(what, gbuf_guards_ok(g));
}

static void expect_untouched(const char *call, const gbuf_t *g)
{
    char what[160];
    snprintf(what, sizeof(what), "  %s wrote nothing (buffer and canaries unchanged)", call);
    EXPECT_TRUE(what, gbuf_guards_ok(g) && gbuf_untouched_from(g, 0));
}

/* A string of `len` copies of `c` (caller frees). */
static char *repeat(char c, size_t len)
{
    char *s = malloc(len + 1);
    if (s == NULL) {
        check_fail("out of memory");
    }
    memset(s, c, len);
    s[len] = '\0';
    return s;
}

/* A handle-sized block that is neither an OTA nor an MQTT handle (its first bytes are zero). */
static uint64_t foreign_block[8];
#define FOREIGN ((void *)foreign_block)

static const char not_utf8[] = { (char)0xff, (char)0xfe, 0 };

/* ------------------------------------------------------------------------------------------ */
/* Offline: log and HAL                                                                        */

static void check_log(void)
{
    static const int bad_levels[] = { -1, 6, INT_MAX, INT_MIN };
    size_t i;
    int level;

    IOT_OpenLog(NULL);
    IOT_OpenLog("api_edge_test");
    for (i = 0; i < sizeof(bad_levels) / sizeof(bad_levels[0]); i++) {
        IOT_SetLogLevel(bad_levels[i]);
        IOT_DumpMemoryStats(bad_levels[i]);
    }
    for (level = IOT_LOG_NONE; level <= IOT_LOG_DEBUG; level++) {
        IOT_DumpMemoryStats(level);
    }
    IOT_CloseLog();
    IOT_DumpMemoryStats(IOT_LOG_CRIT);
    IOT_CloseLog();
    IOT_OpenLog(NULL);
    IOT_SetLogLevel(IOT_LOG_ERROR);
    EXPECT_TRUE("log functions accept NULL ident, out-of-range levels, double close", 1);
}

typedef int (*hal_set_fn)(char *);
typedef int (*hal_get_fn)(char *);

static void check_hal_identity_field(const char *name, hal_set_fn set, hal_get_fn get, size_t max_len)
{
    char what[160];
    char *longest = repeat('m', max_len);
    char *too_long = repeat('x', max_len + 1);
    char empty[] = "";
    char bad[sizeof(not_utf8)];
    gbuf_t g;
    char *buf = gbuf_new(&g, max_len + 1);

    memcpy(bad, not_utf8, sizeof(bad));
    snprintf(what, sizeof(what), "HAL_Set%s(NULL)", name);
    expect_eq_msg(what, set(NULL), -1);
    snprintf(what, sizeof(what), "HAL_Get%s(NULL)", name);
    expect_eq_msg(what, get(NULL), -1);
    snprintf(what, sizeof(what), "HAL_Set%s(%zu bytes, the longest)", name, max_len);
    expect_eq_msg(what, set(longest), (long)max_len);
    snprintf(what, sizeof(what), "HAL_Set%s(%zu bytes, one too many)", name, max_len + 1);
    expect_eq_msg(what, set(too_long), -1);
    snprintf(what, sizeof(what), "HAL_Set%s(not UTF-8)", name);
    expect_eq_msg(what, set(bad), -1);
    snprintf(what, sizeof(what), "HAL_Get%s into exactly %zu bytes", name, max_len + 1);
    expect_eq_msg(what, get(buf), (long)max_len);
    snprintf(what, sizeof(what), "HAL_Get%s", name);
    expect_guards(what, &g);
    snprintf(what, sizeof(what), "  rejected values left the longest one stored, NUL-terminated");
    EXPECT_TRUE(what, memcmp(buf, longest, max_len) == 0 && buf[max_len] == '\0');
    snprintf(what, sizeof(what), "HAL_Set%s(\"\")", name);
    expect_eq_msg(what, set(empty), 0);
    gbuf_reset(&g);
    snprintf(what, sizeof(what), "HAL_Get%s after an empty value", name);
    expect_eq_msg(what, get(buf), 0);
    snprintf(what, sizeof(what), "  HAL_Get%s wrote only the NUL", name);
    EXPECT_TRUE(what, buf[0] == '\0' && gbuf_untouched_from(&g, 1) && gbuf_guards_ok(&g));

    gbuf_free(&g);
    free(longest);
    free(too_long);
}

static void check_hal(void)
{
    gbuf_t g;
    char *buf;
    char *version31 = repeat('v', FIRMWARE_VERSION_MAXLEN - 1);
    char *version32 = repeat('v', FIRMWARE_VERSION_MAXLEN);
    void *p;
    uint64_t t0, t1;

    p = HAL_Malloc(0);
    HAL_Free(p);
    p = HAL_Malloc(1);
    EXPECT_TRUE("HAL_Malloc(1) != NULL", p != NULL);
    memset(p, 0, 1);
    HAL_Free(p);
    HAL_Free(NULL);
    t0 = HAL_UptimeMs();
    HAL_SleepMs(0);
    t1 = HAL_UptimeMs();
    EXPECT_TRUE("HAL_SleepMs(0) returns; HAL_UptimeMs never goes backwards", t1 >= t0);

    check_hal_identity_field("ProductKey", HAL_SetProductKey, HAL_GetProductKey, PRODUCT_KEY_LEN);
    check_hal_identity_field("DeviceName", HAL_SetDeviceName, HAL_GetDeviceName, DEVICE_NAME_LEN);
    check_hal_identity_field("DeviceSecret", HAL_SetDeviceSecret, HAL_GetDeviceSecret, DEVICE_SECRET_LEN);

    EXPECT_EQ(HAL_GetFirmwareVersion(NULL), -1);
    buf = gbuf_new(&g, FIRMWARE_VERSION_MAXLEN);
    unsetenv("OTA_FIRMWARE_VERSION");
    EXPECT_EQ(HAL_GetFirmwareVersion(buf), strlen("app-1.0.0-20180101.1000"));
    EXPECT_TRUE("  the iotkit default version", strcmp(buf, "app-1.0.0-20180101.1000") == 0);
    expect_guards("HAL_GetFirmwareVersion", &g);
    setenv("OTA_FIRMWARE_VERSION", version31, 1);
    gbuf_reset(&g);
    EXPECT_EQ(HAL_GetFirmwareVersion(buf), FIRMWARE_VERSION_MAXLEN - 1);
    expect_guards("HAL_GetFirmwareVersion (31-byte version)", &g);
    setenv("OTA_FIRMWARE_VERSION", version32, 1);
    gbuf_reset(&g);
    EXPECT_EQ(HAL_GetFirmwareVersion(buf), -1);
    expect_untouched("HAL_GetFirmwareVersion (32-byte version)", &g);
    unsetenv("OTA_FIRMWARE_VERSION");
    gbuf_free(&g);
    free(version31);
    free(version32);
}

/* ------------------------------------------------------------------------------------------ */
/* Offline: IOT_SetupConnInfo and IOT_Ioctl                                                    */

static int ioctl_int(int option, int value)
{
    return IOT_Ioctl(option, &value);
}

static int get_region(void)
{
    gbuf_t g;
    int region;
    int *out = gbuf_new(&g, sizeof(int));
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_GET_REGION, out), 0);
    expect_guards("IOT_Ioctl(IOTX_IOCTL_GET_REGION)", &g);
    memcpy(&region, out, sizeof(region));
    gbuf_free(&g);
    return region;
}

static int field_terminated(const char *field, size_t size)
{
    return memchr(field, '\0', size) != NULL;
}

static void check_conn_info(void)
{
    char *pk64 = repeat('p', 64), *pk65 = repeat('p', 65);
    char *dn32 = repeat('d', DEVICE_NAME_LEN), *dn33 = repeat('d', DEVICE_NAME_LEN + 1);
    char *ds64 = repeat('s', DEVICE_SECRET_LEN), *ds65 = repeat('s', DEVICE_SECRET_LEN + 1);
    char *host128 = repeat('h', HOST_ADDRESS_LEN), *host129 = repeat('h', HOST_ADDRESS_LEN + 1);
    void *sentinel = (void *)foreign_block;
    void *info = sentinel;
    iotx_conn_info_t saved;
    iotx_conn_info_pt ci;

    unsetenv("IOTX_MQTT_HOST");
    unsetenv("IOTX_MQTT_PORT");

    EXPECT_EQ(IOT_SetupConnInfo(NULL, "dn", "secret", &info), -1);
    EXPECT_EQ(IOT_SetupConnInfo("pk", NULL, "secret", &info), -1);
    EXPECT_EQ(IOT_SetupConnInfo("pk", "dn", NULL, &info), -1);
    EXPECT_EQ(IOT_SetupConnInfo("pk", "dn", "secret", NULL), -1);
    EXPECT_EQ(IOT_SetupConnInfo(NULL, NULL, NULL, NULL), -1);
    EXPECT_EQ(IOT_SetupConnInfo("", "dn", "secret", &info), -1);
    EXPECT_EQ(IOT_SetupConnInfo("pk", "", "secret", &info), -1);
    EXPECT_EQ(IOT_SetupConnInfo("pk", "dn", "", &info), -1);
    EXPECT_EQ(IOT_SetupConnInfo(not_utf8, "dn", "secret", &info), -1);
    EXPECT_EQ(IOT_SetupConnInfo(pk65, "dn", "secret", &info), -1);
    EXPECT_EQ(IOT_SetupConnInfo("pk", dn33, "secret", &info), -1);
    EXPECT_EQ(IOT_SetupConnInfo("pk", "dn", ds65, &info), -1);
    EXPECT_TRUE("  failed calls left *info_ptr unchanged", info == sentinel);

    EXPECT_EQ(IOT_SetupConnInfo(pk64, dn32, ds64, &info), 0);
    ci = (iotx_conn_info_pt)info;
    EXPECT_TRUE("  longest identity: every field NUL-terminated within its array",
                info != sentinel && field_terminated(ci->host_name, sizeof(ci->host_name))
                    && field_terminated(ci->client_id, sizeof(ci->client_id))
                    && field_terminated(ci->username, sizeof(ci->username))
                    && field_terminated(ci->password, sizeof(ci->password)));
    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "edge", "secret", &info), 0);
    ci = (iotx_conn_info_pt)info;
    EXPECT_TRUE("  default host a1EdgePk.iot-as-mqtt.cn-shanghai.aliyuncs.com:443, TLS on the web roots",
                strcmp(ci->host_name, "a1EdgePk.iot-as-mqtt.cn-shanghai.aliyuncs.com") == 0
                    && ci->port == 443 && ci->pub_key != NULL
                    && strstr(ci->pub_key, "OTA BUNDLED WEB ROOTS") != NULL);
    memcpy(&saved, ci, sizeof(saved));

    /* Environment overrides: checked, never truncated. */
    setenv("IOTX_MQTT_HOST", host129, 1);
    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "other", "secret", &info), -1);
    setenv("IOTX_MQTT_HOST", host128, 1);
    setenv("IOTX_MQTT_PORT", "70000", 1);
    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "other", "secret", &info), -1);
    setenv("IOTX_MQTT_PORT", "0", 1);
    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "other", "secret", &info), -1);
    setenv("IOTX_MQTT_PORT", "port", 1);
    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "other", "secret", &info), -1);
    EXPECT_TRUE("  failed calls left the static conn info unchanged", memcmp(&saved, ci, sizeof(saved)) == 0);
    setenv("IOTX_MQTT_PORT", "", 1);
    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "edge", "secret", &info), 0);
    EXPECT_TRUE("  a 128-byte IOTX_MQTT_HOST fits host_name; an empty IOTX_MQTT_PORT is ignored;"
                " a local broker gets plain TCP",
                strcmp(ci->host_name, host128) == 0 && ci->port == 1883 && ci->pub_key == NULL);
    unsetenv("IOTX_MQTT_HOST");
    unsetenv("IOTX_MQTT_PORT");

    free(pk64); free(pk65); free(dn32); free(dn33); free(ds64); free(ds65);
    free(host128); free(host129);
}

static void check_iot_ioctl(void)
{
    /* Far from the defined options, so that new extensions do not turn them into valid ones. */
    static const int unknown[] = { -1, 1000, INT_MAX, INT_MIN };
    char *host128 = repeat('h', HOST_ADDRESS_LEN), *host129 = repeat('h', HOST_ADDRESS_LEN + 1);
    char what[96];
    gbuf_t g;
    int *out;
    int option, value;
    size_t i;
    void *info = NULL;

    for (i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        value = 0;
        snprintf(what, sizeof(what), "IOT_Ioctl(%d (unknown), &int)", unknown[i]);
        expect_eq_msg(what, IOT_Ioctl(unknown[i], &value), -1);
        snprintf(what, sizeof(what), "IOT_Ioctl(%d (unknown), NULL)", unknown[i]);
        expect_eq_msg(what, IOT_Ioctl(unknown[i], NULL), -1);
    }
    for (option = IOTX_IOCTL_SET_REGION; option <= IOTX_IOCTL_SET_MQTT_CA; option++) {
        snprintf(what, sizeof(what), "IOT_Ioctl(%d, NULL)", option);
        expect_eq_msg(what, IOT_Ioctl(option, NULL), -1);
    }
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_HTTPS_CA, NULL), 0);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_HTTP_PLAIN, NULL), -1);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_HTTP_PLAIN, 2), -1);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_HTTP_PLAIN, -1), -1);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_HTTP_PLAIN, 0), 0);
    /* Back to the default: the live scenarios download over http://. */
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_HTTP_PLAIN, 1), 0);

    /* Getters write exactly one int. */
    EXPECT_EQ(get_region(), IOTX_CLOUD_REGION_SHANGHAI);
    out = gbuf_new(&g, sizeof(int));
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_GET_DYNAMIC_REGISTER, out), 0);
    expect_guards("IOT_Ioctl(IOTX_IOCTL_GET_DYNAMIC_REGISTER)", &g);
    memcpy(&value, out, sizeof(value));
    EXPECT_EQ(value, 0);
    gbuf_free(&g);

    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_REGION, IOTX_CLOUD_DOMAIN_MAX), -1);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_REGION, -1), -1);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_REGION, INT_MAX), -1);
    EXPECT_EQ(get_region(), IOTX_CLOUD_REGION_SHANGHAI);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_REGION, IOTX_CLOUD_REGION_GERMANY), 0);
    EXPECT_EQ(get_region(), IOTX_CLOUD_REGION_GERMANY);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_REGION, IOTX_CLOUD_REGION_CUSTOM), 0);
    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "edge", "secret", &info), -1);

    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_MQTT_DOMAIN, ""), -1);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_MQTT_DOMAIN, host129), -1);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_MQTT_DOMAIN, (void *)not_utf8), -1);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_MQTT_DOMAIN, host128), 0);
    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "edge", "secret", &info), 0);
    EXPECT_TRUE("  the 128-byte MQTT domain is the host", strcmp(((iotx_conn_info_pt)info)->host_name, host128) == 0);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_HTTP_DOMAIN, ""), -1);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_HTTP_DOMAIN, host129), -1);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_HTTP_DOMAIN, host128), 0);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_REGION, IOTX_CLOUD_REGION_SHANGHAI), 0);

    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_DYNAMIC_REGISTER, 1), -1);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_DYNAMIC_REGISTER, 0), 0);

    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_MQTT_PORT, -1), -1);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_MQTT_PORT, 65536), -1);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_MQTT_PORT, 65535), 0);
    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "edge", "secret", &info), 0);
    EXPECT_EQ(((iotx_conn_info_pt)info)->port, 65535);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_MQTT_PORT, 0), 0);

    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_MQTT_TLS, 2), -1);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_MQTT_TLS, -1), -1);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_MQTT_CA, ""), -1);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_MQTT_CA, "not a pem"), -1);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_MQTT_CA, (void *)not_utf8), -1);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_MQTT_TLS, 1), 0);
    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "edge", "secret", &info), 0);
    EXPECT_TRUE("  TLS without a CA: the bundled web roots",
                ((iotx_conn_info_pt)info)->pub_key != NULL
                    && strstr(((iotx_conn_info_pt)info)->pub_key, "OTA BUNDLED WEB ROOTS") != NULL);
    EXPECT_EQ(ioctl_int(IOTX_IOCTL_SET_MQTT_TLS, 0), 0);

    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_HTTPS_CA, ""), -1);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_HTTPS_CA, "not a pem"), -1);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_HTTPS_CA, (void *)not_utf8), -1);
    EXPECT_EQ(IOT_Ioctl(IOTX_IOCTL_SET_HTTPS_CA, NULL), 0);

    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "edge", "secret", &info), 0);
    EXPECT_TRUE("  settings back: cn-shanghai, 1883, plain TCP (TLS turned off above)",
                strcmp(((iotx_conn_info_pt)info)->host_name, "a1EdgePk.iot-as-mqtt.cn-shanghai.aliyuncs.com") == 0
                    && ((iotx_conn_info_pt)info)->port == 1883 && ((iotx_conn_info_pt)info)->pub_key == NULL);
    free(host128);
    free(host129);
}

/* ------------------------------------------------------------------------------------------ */
/* Offline: every OTA and MQTT entry point with a NULL or foreign handle                       */

static int store_load(void *ctx, uint8_t *buf, uint32_t buf_len);
static int store_save(void *ctx, const uint8_t *buf, uint32_t len);
static int store_erase(void *ctx);

/* Every IOT_OTA_* function given `h`, which is NULL or not an OTA handle. */
static void check_ota_bad_handle(void *h, const char *name)
{
    static const int types[] = { -1, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 1000, INT_MAX };
    ota_breakpoint_store_t store = { store_load, store_save, store_erase, NULL };
    char what[128];
    gbuf_t g;
    char *buf = gbuf_new(&g, 128);
    size_t i;

    printf("-- IOT_OTA_* with a %s handle\n", name);
    EXPECT_EQ(IOT_OTA_Deinit(h), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportVersion(h, "1.0.0"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportVersion(h, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportModuleVersion(h, "MCU", "1.0.0"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportModuleVersion(h, NULL, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_RequestImage(h, "1.0.0"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_RequestImage(h, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, 50, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, IOT_OTAP_BURN_FAILED, "x"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_IsFetching(h), 0);
    EXPECT_EQ(IOT_OTA_IsFetchFinish(h), 0);
    EXPECT_EQ(IOT_OTA_FetchYield(h, buf, 128, 0), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_FetchYield(h, buf, 0, 0), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_FetchYield(h, NULL, 128, 0), IOT_OTAE_INVALID_PARAM);
    expect_untouched("IOT_OTA_FetchYield", &g);
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        snprintf(what, sizeof(what), "IOT_OTA_Ioctl(%s, %d, buf, 128)", name, types[i]);
        expect_eq_msg(what, IOT_OTA_Ioctl(h, types[i], buf, 128), IOT_OTAE_INVALID_PARAM);
        snprintf(what, sizeof(what), "IOT_OTA_Ioctl(%s, %d, buf, 4)", name, types[i]);
        expect_eq_msg(what, IOT_OTA_Ioctl(h, types[i], buf, 4), IOT_OTAE_INVALID_PARAM);
        snprintf(what, sizeof(what), "IOT_OTA_Ioctl(%s, %d, NULL, 0)", name, types[i]);
        expect_eq_msg(what, IOT_OTA_Ioctl(h, types[i], NULL, 0), IOT_OTAE_INVALID_PARAM);
    }
    expect_untouched("IOT_OTA_Ioctl", &g);
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_StartDownload(h, 0, 0), IOT_OTAE_INVALID_PARAM);
    IOT_OTA_UpdateClientMd5(h, buf, 16);
    IOT_OTA_UpdateClientMd5(h, NULL, 16);
    IOT_OTA_UpdateClientMd5(h, NULL, 0);
    EXPECT_EQ(IOT_OTA_ResetClientMD5(h), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportUpgradeBegin(h), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportUpgradeSuccess(h, "2.0.0"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportUpgradeSuccess(h, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportUpgradeFail(h, "2.0.0"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportUpgradeFail(h, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetRetryPolicy(h, 3, 10), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetBreakpointStore(h, &store), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetBreakpointStore(h, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetBreakpointFile(h, "/tmp/ota-edge.bp"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetBreakpointFile(h, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetSaveInterval(h, 4096, 10), IOT_OTAE_INVALID_PARAM);
    expect_untouched("the IOT_OTA_* calls", &g);
    gbuf_free(&g);
}

/* Every IOT_MQTT_* function given `h`, which is NULL or not an MQTT handle. */
static void check_mqtt_bad_handle(void *h, const char *name)
{
    iotx_mqtt_topic_info_t msg;
    void *copy = h;

    printf("-- IOT_MQTT_* with a %s handle\n", name);
    memset(&msg, 0, sizeof(msg));
    msg.qos = IOTX_MQTT_QOS0;
    msg.payload = "x";
    msg.payload_len = 1;
    EXPECT_EQ(IOT_MQTT_Yield(h, 0), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Yield(h, -1), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_CheckStateNormal(h), 0);
    EXPECT_EQ(IOT_MQTT_Subscribe(h, "a/b", IOTX_MQTT_QOS1, ignore_mqtt_event, NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Subscribe(h, NULL, IOTX_MQTT_QOS1, NULL, NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Unsubscribe(h, "a/b"), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Unsubscribe(h, NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Publish(h, "a/b", &msg), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Publish(h, NULL, NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Destroy(&copy), NULL_VALUE_ERROR);
    EXPECT_TRUE("  IOT_MQTT_Destroy left the rejected pointer unchanged", copy == h);
}

static int closed_port(void)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = 1;

    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0
        && getsockname(fd, (struct sockaddr *)&addr, &len) == 0) {
        port = ntohs(addr.sin_port);
    }
    if (fd >= 0) {
        close(fd);
    }
    return port;
}

static void mqtt_params_init(iotx_mqtt_param_t *p, const char *host, uint16_t port, const char *client_id)
{
    memset(p, 0, sizeof(*p));
    p->host = host;
    p->port = port;
    p->client_id = client_id;
    p->request_timeout_ms = 2000;
    p->keepalive_interval_ms = 60000;
    p->clean_session = 1;
}

static void check_construct_failures(void)
{
    iotx_mqtt_param_t p;
    uint16_t port = (uint16_t)closed_port();

    printf("-- IOT_MQTT_Construct failures (nothing listens on 127.0.0.1:%u)\n", (unsigned)port);
    EXPECT_NULL(IOT_MQTT_Construct(NULL));
    mqtt_params_init(&p, NULL, port, "edge");
    EXPECT_NULL(IOT_MQTT_Construct(&p));
    mqtt_params_init(&p, "127.0.0.1", port, NULL);
    EXPECT_NULL(IOT_MQTT_Construct(&p));
    mqtt_params_init(&p, "", port, "edge");
    EXPECT_NULL(IOT_MQTT_Construct(&p));
    mqtt_params_init(&p, not_utf8, port, "edge");
    EXPECT_NULL(IOT_MQTT_Construct(&p));
    mqtt_params_init(&p, "127.0.0.1", 0, "edge");
    EXPECT_NULL(IOT_MQTT_Construct(&p));
    mqtt_params_init(&p, "127.0.0.1", port, "edge");
    p.pub_key = "not a pem";
    EXPECT_NULL(IOT_MQTT_Construct(&p));
    mqtt_params_init(&p, "127.0.0.1", port, "edge");
    EXPECT_NULL(IOT_MQTT_Construct(&p));
}

static void check_offline(void)
{
    void *null_client = NULL;

    check_log();
    check_hal();
    check_conn_info();
    check_iot_ioctl();
    check_ota_bad_handle(NULL, "NULL");
    check_ota_bad_handle(FOREIGN, "foreign");
    check_mqtt_bad_handle(NULL, "NULL");
    check_mqtt_bad_handle(FOREIGN, "foreign");
    EXPECT_EQ(IOT_MQTT_Destroy(NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Destroy(&null_client), NULL_VALUE_ERROR);
    EXPECT_NULL(IOT_OTA_Init(NULL, NULL, NULL));
    EXPECT_NULL(IOT_OTA_Init("pk", "dn", NULL));
    EXPECT_NULL(IOT_OTA_Init("pk", "dn", FOREIGN));
    EXPECT_NULL(IOT_OTA_InitWithProtocol("pk", "dn", NULL, IOT_OTA_PROTOCOL_ALIYUN));
    EXPECT_NULL(IOT_OTA_InitWithProtocol("pk", "dn", FOREIGN, IOT_OTA_PROTOCOL_UCLOUD));
    EXPECT_NULL(IOT_OTA_InitWithProtocol(NULL, NULL, NULL, -1));
    check_construct_failures();
}

/* ------------------------------------------------------------------------------------------ */
/* Live: the firmware server                                                                   */

#define FIRMWARE_SIZE 20011u
/* md5 and sha256 of the FIRMWARE_SIZE bytes firmware_byte(0 .. FIRMWARE_SIZE - 1), computed
 * once with python3's hashlib: bytes(((i*7)^(i>>5))&0xff for i in range(20011)). */
#define FIRMWARE_MD5 "081af5f1a94c2d518e47aff52a84de4f"
#define FIRMWARE_SHA256 "abd7d5afcba84a50d3675aab2cba32c020359190cbf7f38d34c32a693a7d4ad0"

static unsigned char firmware_byte(uint32_t i)
{
    return (unsigned char)(((i * 7u) ^ (i >> 5)) & 0xffu);
}

typedef struct {
    int listen_fd;
    int port;
    pthread_t thread;
    pthread_mutex_t lock;
    int stop;
    unsigned requests;
} http_server_t;

static int server_stopping(http_server_t *s)
{
    int stop;
    pthread_mutex_lock(&s->lock);
    stop = s->stop;
    pthread_mutex_unlock(&s->lock);
    return stop;
}

static int send_all(int fd, const unsigned char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One request: the firmware, from the `Range: bytes=N-` offset when there is one. */
static void serve_one(http_server_t *s, int fd)
{
    char req[4096];
    size_t used = 0;
    unsigned long from = 0;
    const char *range;
    char head[256];
    unsigned char body[4096];
    uint32_t i, n;
    int head_len;

    while (used < sizeof(req) - 1) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        ssize_t got;
        if (poll(&pfd, 1, 10000) <= 0) {
            return;
        }
        got = recv(fd, req + used, sizeof(req) - 1 - used, 0);
        if (got <= 0) {
            return;
        }
        used += (size_t)got;
        req[used] = '\0';
        if (strstr(req, "\r\n\r\n") != NULL) {
            break;
        }
    }
    pthread_mutex_lock(&s->lock);
    s->requests++;
    pthread_mutex_unlock(&s->lock);
    range = strstr(req, "\nrange: bytes=");
    if (range == NULL) {
        range = strstr(req, "\nRange: bytes=");
    }
    if (range != NULL) {
        from = strtoul(range + strlen("\nRange: bytes="), NULL, 10);
    }
    if (from > FIRMWARE_SIZE) {
        head_len = snprintf(head, sizeof(head),
                            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        send_all(fd, (const unsigned char *)head, (size_t)head_len);
        return;
    }
    if (range != NULL) {
        head_len = snprintf(head, sizeof(head),
                            "HTTP/1.1 206 Partial Content\r\nContent-Length: %lu\r\n"
                            "Content-Range: bytes %lu-%lu/%lu\r\nConnection: close\r\n\r\n",
                            (unsigned long)FIRMWARE_SIZE - from, from, (unsigned long)FIRMWARE_SIZE - 1,
                            (unsigned long)FIRMWARE_SIZE);
    } else {
        head_len = snprintf(head, sizeof(head),
                            "HTTP/1.1 200 OK\r\nContent-Length: %lu\r\nConnection: close\r\n\r\n",
                            (unsigned long)FIRMWARE_SIZE);
    }
    if (send_all(fd, (const unsigned char *)head, (size_t)head_len) != 0) {
        return;
    }
    for (i = (uint32_t)from; i < FIRMWARE_SIZE; i += n) {
        uint32_t k;
        n = FIRMWARE_SIZE - i < sizeof(body) ? FIRMWARE_SIZE - i : (uint32_t)sizeof(body);
        for (k = 0; k < n; k++) {
            body[k] = firmware_byte(i + k);
        }
        if (send_all(fd, body, n) != 0) {
            return;
        }
    }
}

static void *server_main(void *arg)
{
    http_server_t *s = arg;
    while (!server_stopping(s)) {
        struct pollfd pfd = { s->listen_fd, POLLIN, 0 };
        int fd;
        if (poll(&pfd, 1, 100) <= 0) {
            continue;
        }
        fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        serve_one(s, fd);
        shutdown(fd, SHUT_WR);
        close(fd);
    }
    return NULL;
}

static void server_start(http_server_t *s)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof(addr);

    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s->listen_fd < 0 || bind(s->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) != 0
        || listen(s->listen_fd, 8) != 0 || getsockname(s->listen_fd, (struct sockaddr *)&addr, &len) != 0
        || pthread_create(&s->thread, NULL, server_main, s) != 0) {
        char why[128];
        snprintf(why, sizeof(why), "cannot start the firmware server: %s", strerror(errno));
        check_fail(why);
    }
    s->port = ntohs(addr.sin_port);
    printf("-- firmware server on http://127.0.0.1:%d/ (%u bytes, md5 %s)\n", s->port, FIRMWARE_SIZE, FIRMWARE_MD5);
}

static void server_stop(http_server_t *s)
{
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
    pthread_mutex_destroy(&s->lock);
}

/* ------------------------------------------------------------------------------------------ */
/* Live: helpers                                                                               */

#define WAIT_MS 30000

typedef struct {
    uint8_t record[1024];
    uint32_t len;
    unsigned loads, saves, erases;
    int overrun;
} flash_t;

static int store_load(void *ctx, uint8_t *buf, uint32_t buf_len)
{
    flash_t *f = ctx;
    f->loads++;
    if (f->len > buf_len) {
        return -1;
    }
    memcpy(buf, f->record, f->len);
    return (int)f->len;
}

static int store_save(void *ctx, const uint8_t *buf, uint32_t len)
{
    flash_t *f = ctx;
    f->saves++;
    if (len > sizeof(f->record)) {
        f->overrun = 1;
        return -1;
    }
    memcpy(f->record, buf, len);
    f->len = len;
    return 0;
}

static int store_erase(void *ctx)
{
    flash_t *f = ctx;
    f->erases++;
    f->len = 0;
    return 0;
}

static void publish_text(void *pclient, const char *topic, const char *payload)
{
    iotx_mqtt_topic_info_t msg;
    char what[200];
    memset(&msg, 0, sizeof(msg));
    msg.qos = IOTX_MQTT_QOS1;
    msg.payload = payload;
    msg.payload_len = (uint32_t)strlen(payload);
    snprintf(what, sizeof(what), "IOT_MQTT_Publish(%s)", topic);
    expect_eq_msg(what, IOT_MQTT_Publish(pclient, topic, &msg), 0);
}

typedef int (*cond_fn)(void *h, int arg);

static int cond_fetching(void *h, int arg)
{
    (void)arg;
    return IOT_OTA_IsFetching(h);
}

static int cond_last_error(void *h, int arg)
{
    return IOT_OTA_GetLastError(h) == arg;
}

/* Drives MQTT until cond(h, arg) holds (at most WAIT_MS). */
static int wait_for(void *pclient, cond_fn cond, void *h, int arg)
{
    uint64_t deadline = HAL_UptimeMs() + WAIT_MS;
    while (!cond(h, arg)) {
        if (HAL_UptimeMs() > deadline) {
            return 0;
        }
        IOT_MQTT_Yield(pclient, 100);
    }
    return 1;
}

static uint32_t ioctl_u32(void *h, int type)
{
    gbuf_t g;
    uint32_t v = 0xffffffffu;
    char what[96];
    void *out = gbuf_new(&g, 4);
    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %d, buf, 4)", type);
    expect_eq_msg(what, IOT_OTA_Ioctl(h, type, out, 4), 0);
    expect_guards("IOT_OTA_Ioctl", &g);
    memcpy(&v, out, 4);
    gbuf_free(&g);
    return v;
}

/* The uint32_t queries refuse every buf_len but 4 and write nothing. */
static void check_u32_lengths(void *h)
{
    static const int types[] = { IOT_OTAG_FETCHED_SIZE, IOT_OTAG_FILE_SIZE, IOT_OTAG_CHECK_FIRMWARE,
                                 IOT_OTAG_RESUME_OFFSET, IOT_OTAG_STATE };
    static const size_t lens[] = { 0, 1, 3, 5, 8 };
    char what[96];
    gbuf_t g;
    void *buf = gbuf_new(&g, 8);
    size_t i, j;

    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        for (j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
            snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %d, buf, %zu)", types[i], lens[j]);
            expect_eq_msg(what, IOT_OTA_Ioctl(h, types[i], buf, lens[j]), IOT_OTAE_INVALID_PARAM);
        }
        snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %d, NULL, 4)", types[i]);
        expect_eq_msg(what, IOT_OTA_Ioctl(h, types[i], NULL, 4), IOT_OTAE_INVALID_PARAM);
    }
    expect_untouched("IOT_OTA_Ioctl with a wrong buf_len", &g);
    gbuf_free(&g);
}

/*
 * A string query that has an answer: exactly strlen + 1 bytes succeed, one byte less (down to
 * 0) fails with IOT_OTAE_STR_TOO_LONG and writes nothing. Returns the answer's length.
 */
static size_t check_string_query(void *h, int type, const char *name, const char *expected)
{
    char what[160];
    gbuf_t big, g;
    char *answer = gbuf_new(&big, 2048);
    size_t len;
    char *buf;

    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %s, buf, 2048)", name);
    expect_eq_msg(what, IOT_OTA_Ioctl(h, type, answer, 2048), 0);
    len = strlen(answer);
    if (len == 0) {
        snprintf(what, sizeof(what), "%s: empty answer", name);
        check_fail(what);
    }
    snprintf(what, sizeof(what), "  %s answer \"%.40s\" NUL-terminated, nothing written after the NUL", name, answer);
    EXPECT_TRUE(what, len < 2048 && gbuf_untouched_from(&big, len + 1) && gbuf_guards_ok(&big));
    if (expected != NULL) {
        snprintf(what, sizeof(what), "  %s is \"%s\"", name, expected);
        EXPECT_TRUE(what, strcmp(answer, expected) == 0);
    }

    buf = gbuf_new(&g, len + 1);
    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %s, buf, %zu) (exact)", name, len + 1);
    expect_eq_msg(what, IOT_OTA_Ioctl(h, type, buf, len + 1), 0);
    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(%s) into %zu bytes", name, len + 1);
    expect_guards(what, &g);
    EXPECT_TRUE("  the exact-size answer equals the large-buffer one", strcmp(buf, answer) == 0);
    gbuf_free(&g);

    buf = gbuf_new(&g, len);
    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %s, buf, %zu) (one byte short)", name, len);
    expect_eq_msg(what, IOT_OTA_Ioctl(h, type, buf, len), IOT_OTAE_STR_TOO_LONG);
    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(%s, one byte short)", name);
    expect_untouched(what, &g);
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_STR_TOO_LONG);
    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %s, buf, 1)", name);
    expect_eq_msg(what, IOT_OTA_Ioctl(h, type, buf, 1), IOT_OTAE_STR_TOO_LONG);
    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %s, buf, 0)", name);
    expect_eq_msg(what, IOT_OTA_Ioctl(h, type, buf, 0), IOT_OTAE_STR_TOO_LONG);
    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %s, NULL, %zu)", name, len + 1);
    expect_eq_msg(what, IOT_OTA_Ioctl(h, type, NULL, len + 1), IOT_OTAE_INVALID_PARAM);
    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(%s) with 1, 0 and NULL", name);
    expect_untouched(what, &g);
    gbuf_free(&g);
    gbuf_free(&big);
    return len;
}

/* A string query without an answer (state or protocol): IOT_OTAE_INVALID_STATE, nothing written. */
static void check_query_unavailable(void *h, int type, const char *name)
{
    char what[128];
    gbuf_t g;
    char *buf = gbuf_new(&g, 256);
    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %s, buf, 256)", name);
    expect_eq_msg(what, IOT_OTA_Ioctl(h, type, buf, 256), IOT_OTAE_INVALID_STATE);
    snprintf(what, sizeof(what), "IOT_OTA_Ioctl(%s)", name);
    expect_untouched(what, &g);
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_INVALID_STATE);
    gbuf_free(&g);
}

/* Queries that are never answered: COTA and unknown types. */
static void check_unsupported_queries(void *h)
{
    static const int types[] = { IOT_OTAG_COTA_CONFIG_ID, IOT_OTAG_COTA_CONFIG_SIZE, IOT_OTAG_COTA_SIGN,
                                 IOT_OTAG_COTA_SIGN_METHOD, IOT_OTAG_COTA_URL, IOT_OTAG_COTA_GETTYPE,
                                 IOT_OTAG_CHECK_CONFIG, -1, 1000, INT_MAX, INT_MIN };
    char what[96];
    gbuf_t g;
    char *buf = gbuf_new(&g, 256);
    size_t i;
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %d, buf, 256)", types[i]);
        expect_eq_msg(what, IOT_OTA_Ioctl(h, types[i], buf, 256), IOT_OTAE_INVALID_PARAM);
        snprintf(what, sizeof(what), "IOT_OTA_Ioctl(h, %d, buf, 4)", types[i]);
        expect_eq_msg(what, IOT_OTA_Ioctl(h, types[i], buf, 4), IOT_OTAE_INVALID_PARAM);
    }
    expect_untouched("IOT_OTA_Ioctl with COTA and unknown types", &g);
    gbuf_free(&g);
}

/* ------------------------------------------------------------------------------------------ */
/* Live: MQTT                                                                                  */

typedef struct {
    int calls;
    int nested_yield;
    void *pclient_seen;
    int topic_ok;
    int payload_ok;
} reentry_t;

static void on_reentry(void *pcontext, void *pclient, iotx_mqtt_event_msg_pt msg)
{
    reentry_t *r = pcontext;
    iotx_mqtt_topic_info_pt info;
    if (msg == NULL || msg->event_type != IOTX_MQTT_EVENT_PUBLISH_RECEIVED) {
        return;
    }
    info = (iotx_mqtt_topic_info_pt)msg->msg;
    r->calls++;
    r->pclient_seen = pclient;
    r->nested_yield = IOT_MQTT_Yield(pclient, 0);
    r->topic_ok = info->topic_len == strlen("edge/reentry") && memcmp(info->ptopic, "edge/reentry", info->topic_len) == 0;
    r->payload_ok = info->payload_len == 5 && memcmp(info->payload, "hello", 5) == 0;
}

static int cond_reentry(void *h, int arg)
{
    (void)arg;
    return ((reentry_t *)h)->calls > 0;
}

static void *connect_live(void)
{
    void *info = NULL;
    iotx_conn_info_pt ci;
    iotx_mqtt_param_t p;
    char client_id[64];
    void *pclient;

    EXPECT_EQ(IOT_SetupConnInfo("a1EdgePk", "edge_device", "EdgeSecret", &info), 0);
    ci = (iotx_conn_info_pt)info;
    snprintf(client_id, sizeof(client_id), "edge-%ld", (long)getpid());
    mqtt_params_init(&p, ci->host_name, ci->port, client_id);
    p.username = ci->username;
    p.password = ci->password;
    p.request_timeout_ms = 20000;
    p.read_buf_size = 1; /* below 1024: ignored */
    pclient = IOT_MQTT_Construct(&p);
    EXPECT_TRUE("IOT_MQTT_Construct(broker from IOTX_MQTT_HOST/PORT) != NULL", pclient != NULL);
    return pclient;
}

static void check_mqtt_live(void *pclient)
{
    iotx_mqtt_topic_info_t msg;
    reentry_t r;

    printf("-- IOT_MQTT_* on a live client\n");
    EXPECT_EQ(IOT_MQTT_CheckStateNormal(pclient), 1);
    EXPECT_EQ(IOT_MQTT_Yield(pclient, 0), 0);
    EXPECT_EQ(IOT_MQTT_Yield(pclient, -100), 0);
    EXPECT_EQ(IOT_MQTT_Yield(pclient, INT_MIN), 0);

    EXPECT_EQ(IOT_MQTT_Subscribe(pclient, NULL, IOTX_MQTT_QOS1, ignore_mqtt_event, NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Subscribe(pclient, "edge/x", IOTX_MQTT_QOS1, NULL, NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Subscribe(pclient, "edge/#/x", IOTX_MQTT_QOS1, ignore_mqtt_event, NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Subscribe(pclient, "", IOTX_MQTT_QOS1, ignore_mqtt_event, NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Subscribe(pclient, not_utf8, IOTX_MQTT_QOS1, ignore_mqtt_event, NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Unsubscribe(pclient, NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Unsubscribe(pclient, "edge/never/subscribed"), FAIL_RETURN);

    memset(&msg, 0, sizeof(msg));
    msg.qos = IOTX_MQTT_QOS0;
    msg.payload = "hello";
    msg.payload_len = 5;
    EXPECT_EQ(IOT_MQTT_Publish(pclient, NULL, &msg), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Publish(pclient, "edge/x", NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Publish(pclient, "edge/+", &msg), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Publish(pclient, "edge/#", &msg), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Publish(pclient, "", &msg), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Publish(pclient, not_utf8, &msg), NULL_VALUE_ERROR);
    msg.qos = 3;
    EXPECT_EQ(IOT_MQTT_Publish(pclient, "edge/x", &msg), NULL_VALUE_ERROR);
    msg.qos = IOTX_MQTT_QOS0;
    msg.payload = NULL;
    EXPECT_EQ(IOT_MQTT_Publish(pclient, "edge/x", &msg), NULL_VALUE_ERROR);
    msg.payload_len = 0;
    EXPECT_EQ(IOT_MQTT_Publish(pclient, "edge/x", &msg), 0);

    /* A handler that calls IOT_MQTT_Yield on its own client gets FAIL_RETURN. */
    memset(&r, 0, sizeof(r));
    EXPECT_EQ(IOT_MQTT_Subscribe(pclient, "edge/reentry", IOTX_MQTT_QOS1, on_reentry, &r), 0);
    publish_text(pclient, "edge/reentry", "hello");
    EXPECT_TRUE("the subscription handler ran within 30 s", wait_for(pclient, cond_reentry, &r, 0));
    EXPECT_EQ(r.nested_yield, FAIL_RETURN);
    EXPECT_TRUE("  the handler got its client, the topic (topic_len) and the payload",
                r.pclient_seen == pclient && r.topic_ok && r.payload_ok);
    EXPECT_EQ(IOT_MQTT_Unsubscribe(pclient, "edge/reentry"), 0);
    EXPECT_EQ(IOT_MQTT_Yield(pclient, 200), 0);
}

/*
 * A filter, topic or payload that makes a packet larger than the client's maximum packet size
 * (64 KiB by default) is refused with NULL_VALUE_ERROR before it is queued: rumqttc could not
 * send it and would drop the connection again after every reconnection. The connection stays up.
 */
static void check_mqtt_oversize(void *pclient)
{
    iotx_mqtt_topic_info_t msg;
    char *long_topic = repeat('t', 70000);
    char *big = repeat('x', 70000);

    printf("-- IOT_MQTT_* with packets over the maximum packet size\n");
    memset(&msg, 0, sizeof(msg));
    msg.qos = IOTX_MQTT_QOS0;
    msg.payload = "hello";
    msg.payload_len = 5;
    EXPECT_EQ(IOT_MQTT_Subscribe(pclient, long_topic, IOTX_MQTT_QOS1, ignore_mqtt_event, NULL), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_Publish(pclient, long_topic, &msg), NULL_VALUE_ERROR);
    msg.payload = big;
    msg.payload_len = 70000;
    EXPECT_EQ(IOT_MQTT_Publish(pclient, "edge/big", &msg), NULL_VALUE_ERROR);
    msg.payload_len = 60000;
    EXPECT_EQ(IOT_MQTT_Publish(pclient, "edge/big", &msg), 0);
    EXPECT_EQ(IOT_MQTT_Yield(pclient, 1000), 0);
    EXPECT_EQ(IOT_MQTT_CheckStateNormal(pclient), 1);
    free(long_topic);
    free(big);
}

/* ------------------------------------------------------------------------------------------ */
/* Live: OTA                                                                                   */

static void check_ota_init(void *pclient)
{
    char *pk64 = repeat('p', 64), *pk65 = repeat('p', 65);
    void *h;

    printf("-- IOT_OTA_Init / InitWithProtocol arguments\n");
    EXPECT_NULL(IOT_OTA_Init(NULL, "edge_device", pclient));
    EXPECT_NULL(IOT_OTA_Init("a1EdgePk", NULL, pclient));
    EXPECT_NULL(IOT_OTA_Init("", "edge_device", pclient));
    EXPECT_NULL(IOT_OTA_Init("a1EdgePk", "", pclient));
    EXPECT_NULL(IOT_OTA_Init("a1/EdgePk", "edge_device", pclient));
    EXPECT_NULL(IOT_OTA_Init("a1EdgePk", "edge+device", pclient));
    EXPECT_NULL(IOT_OTA_Init("a1EdgePk", "edge#", pclient));
    EXPECT_NULL(IOT_OTA_Init(pk65, "edge_device", pclient));
    EXPECT_NULL(IOT_OTA_Init(not_utf8, "edge_device", pclient));
    EXPECT_NULL(IOT_OTA_InitWithProtocol("a1EdgePk", "edge_device", pclient, -1));
    EXPECT_NULL(IOT_OTA_InitWithProtocol("a1EdgePk", "edge_device", pclient, 4));
    EXPECT_NULL(IOT_OTA_InitWithProtocol("a1EdgePk", "edge_device", pclient, INT_MAX));
    EXPECT_NULL(IOT_OTA_InitWithProtocol("a1EdgePk", "edge_device", pclient, INT_MIN));
    h = IOT_OTA_Init(pk64, "edge_device", pclient);
    EXPECT_TRUE("IOT_OTA_Init(64-byte product key) != NULL", h != NULL);
    /* The same device twice on one connection: the second would take the first's messages. */
    EXPECT_NULL(IOT_OTA_Init(pk64, "edge_device", pclient));
    EXPECT_EQ(IOT_OTA_Deinit(h), 0);
    h = IOT_OTA_Init(pk64, "edge_device", pclient);
    EXPECT_TRUE("IOT_OTA_Init again after IOT_OTA_Deinit != NULL", h != NULL);
    EXPECT_EQ(IOT_OTA_Deinit(h), 0);
    free(pk64);
    free(pk65);
}

/* Argument checks on a valid handle in the idle state (no upgrade accepted yet). */
static void check_ota_idle(void *h, void *pclient)
{
    char *v63 = repeat('7', 63), *v64 = repeat('7', 64);
    char *m63 = repeat('m', 63), *m64 = repeat('m', 64);
    char *path = NULL;
    const char *tmpdir = getenv("OTA_TEST_TMPDIR");
    ota_breakpoint_store_t store = { store_load, store_save, store_erase, NULL };
    gbuf_t g;
    char *buf = gbuf_new(&g, 64);
    char bad[sizeof(not_utf8)];

    memcpy(bad, not_utf8, sizeof(bad));
    printf("-- a fresh handle, no upgrade\n");
    EXPECT_EQ(IOT_OTA_GetLastError(h), 0);
    EXPECT_EQ(IOT_OTA_IsFetching(h), 0);
    EXPECT_EQ(IOT_OTA_IsFetchFinish(h), 0);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_STATE), IOT_OTAS_INITED);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_FETCHED_SIZE), 0);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_FILE_SIZE), 0);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_RESUME_OFFSET), 0);
    check_u32_lengths(h);
    check_unsupported_queries(h);
    {
        gbuf_t c;
        void *out = gbuf_new(&c, 4);
        EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAG_CHECK_FIRMWARE, out, 4), IOT_OTAE_INVALID_STATE);
        expect_untouched("IOT_OTA_Ioctl(IOT_OTAG_CHECK_FIRMWARE) before a download", &c);
        gbuf_free(&c);
    }
    check_query_unavailable(h, IOT_OTAG_MD5SUM, "IOT_OTAG_MD5SUM");
    check_query_unavailable(h, IOT_OTAG_VERSION, "IOT_OTAG_VERSION");
    check_query_unavailable(h, IOT_OTAG_SHA256SUM, "IOT_OTAG_SHA256SUM");
    check_query_unavailable(h, IOT_OTAG_SIGN_METHOD, "IOT_OTAG_SIGN_METHOD");
    check_query_unavailable(h, IOT_OTAG_MODULE, "IOT_OTAG_MODULE");
    check_query_unavailable(h, IOT_OTAG_TASK_ID, "IOT_OTAG_TASK_ID");
    check_query_unavailable(h, IOT_OTAG_EXT_DATA, "IOT_OTAG_EXT_DATA");

    EXPECT_EQ(IOT_OTA_FetchYield(h, buf, 64, 0), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_FetchYield(h, buf, 0, 0), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_FetchYield(h, NULL, 64, 0), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_INVALID_PARAM);
    expect_untouched("IOT_OTA_FetchYield before an upgrade", &g);

    EXPECT_EQ(IOT_OTA_ReportVersion(h, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportVersion(h, ""), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportVersion(h, bad), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportVersion(h, v64), IOT_OTAE_STR_TOO_LONG);
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_STR_TOO_LONG);
    EXPECT_EQ(IOT_OTA_ReportVersion(h, v63), 0);
    EXPECT_EQ(IOT_OTA_ReportModuleVersion(h, "MCU", NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportModuleVersion(h, "MCU", ""), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportModuleVersion(h, bad, "1.0.0"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportModuleVersion(h, m64, "1.0.0"), IOT_OTAE_STR_TOO_LONG);
    EXPECT_EQ(IOT_OTA_ReportModuleVersion(h, "MCU", v64), IOT_OTAE_STR_TOO_LONG);
    EXPECT_EQ(IOT_OTA_ReportModuleVersion(h, m63, "1.0.0"), 0);
    EXPECT_EQ(IOT_OTA_ReportModuleVersion(h, NULL, "1.0.0"), 0);
    EXPECT_EQ(IOT_OTA_ReportModuleVersion(h, "", "1.0.0"), 0);
    EXPECT_EQ(IOT_OTA_RequestImage(h, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_RequestImage(h, ""), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_RequestImage(h, v64), IOT_OTAE_STR_TOO_LONG);
    EXPECT_EQ(IOT_OTA_RequestImage(h, v63), 0);

    EXPECT_EQ(IOT_OTA_ReportProgress(h, 101, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, -5, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, INT_MIN, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, 0, NULL), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, IOT_OTAP_FETCH_FAILED, "x"), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, 10, bad), IOT_OTAE_INVALID_PARAM);

    EXPECT_EQ(IOT_OTA_StartDownload(h, 0, 0), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_ResetClientMD5(h), IOT_OTAE_INVALID_STATE);
    IOT_OTA_UpdateClientMd5(h, NULL, 16);
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_INVALID_PARAM);
    IOT_OTA_UpdateClientMd5(h, buf, 0);
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_INVALID_STATE);
    IOT_OTA_UpdateClientMd5(h, buf, 16);
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_INVALID_STATE);
    expect_untouched("IOT_OTA_UpdateClientMd5 (reads only)", &g);
    EXPECT_EQ(IOT_OTA_ReportUpgradeBegin(h), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_ReportUpgradeSuccess(h, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportUpgradeSuccess(h, ""), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportUpgradeSuccess(h, v64), IOT_OTAE_STR_TOO_LONG);
    EXPECT_EQ(IOT_OTA_ReportUpgradeSuccess(h, "2.0.0"), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_ReportUpgradeFail(h, NULL), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_ReportUpgradeFail(h, "2.0.0"), IOT_OTAE_INVALID_STATE);

    EXPECT_EQ(IOT_OTA_SetRetryPolicy(h, 1001, 0), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetRetryPolicy(h, UINT32_MAX, 0), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetRetryPolicy(h, 1000, UINT32_MAX), 0);
    EXPECT_EQ(IOT_OTA_SetRetryPolicy(h, 0, 0), 0);
    EXPECT_EQ(IOT_OTA_SetRetryPolicy(h, 5, 30), 0);
    EXPECT_EQ(IOT_OTA_SetSaveInterval(h, 0, 101), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetSaveInterval(h, UINT32_MAX, UINT32_MAX), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetSaveInterval(h, 0, 0), 0);
    EXPECT_EQ(IOT_OTA_SetSaveInterval(h, UINT32_MAX, 100), 0);
    EXPECT_EQ(IOT_OTA_SetSaveInterval(h, 4096, 10), 0);

    EXPECT_EQ(IOT_OTA_SetBreakpointFile(h, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetBreakpointFile(h, ""), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_SetBreakpointFile(h, "/tmp/"), IOT_OTAE_INVALID_PARAM);
    if (tmpdir != NULL) {
        size_t n = strlen(tmpdir) + sizeof("/edge.bp");
        path = malloc(n);
        if (path != NULL) {
            snprintf(path, n, "%s/edge.bp", tmpdir);
            EXPECT_EQ(IOT_OTA_SetBreakpointFile(h, path), 0);
        }
    }
    EXPECT_EQ(IOT_OTA_SetBreakpointStore(h, NULL), IOT_OTAE_INVALID_PARAM);
    store.load = NULL;
    EXPECT_EQ(IOT_OTA_SetBreakpointStore(h, &store), IOT_OTAE_INVALID_PARAM);
    store.load = store_load;
    store.save = NULL;
    EXPECT_EQ(IOT_OTA_SetBreakpointStore(h, &store), IOT_OTAE_INVALID_PARAM);
    store.save = store_save;
    store.erase = NULL;
    EXPECT_EQ(IOT_OTA_SetBreakpointStore(h, &store), IOT_OTAE_INVALID_PARAM);

    /* Handles of the other kind are foreign. */
    EXPECT_EQ(IOT_OTA_ReportVersion(pclient, "1.0.0"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_Ioctl(pclient, IOT_OTAG_STATE, buf, 4), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_Deinit(pclient), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_MQTT_Yield(h, 0), NULL_VALUE_ERROR);
    EXPECT_EQ(IOT_MQTT_CheckStateNormal(h), 0);
    {
        void *copy = h;
        EXPECT_EQ(IOT_MQTT_Destroy(&copy), NULL_VALUE_ERROR);
        EXPECT_TRUE("  IOT_MQTT_Destroy(&ota_handle) left it unchanged", copy == h);
    }
    EXPECT_EQ(IOT_MQTT_CheckStateNormal(pclient), 1);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_STATE), IOT_OTAS_INITED);
    expect_untouched("the foreign-handle calls", &g);

    gbuf_free(&g);
    free(path);
    free(v63); free(v64); free(m63); free(m64);
}

/* Aliyun: a rejected notice, then a full download in odd-sized pieces, each between canaries. */
static void scenario_aliyun(void *pclient, const http_server_t *server)
{
    static const uint32_t sizes[] = { 1, 7, 100, 4096, 65536, 3 };
    char topic[128], notice[512];
    char *long_msg = repeat('d', 2000);
    flash_t flash;
    ota_breakpoint_store_t store = { store_load, store_save, store_erase, NULL };
    uint32_t fetched = 0, calls = 0;
    uint64_t deadline;
    int all_ok = 1;
    gbuf_t g;
    char *buf;
    void *h;
    char bad[sizeof(not_utf8)];

    memcpy(bad, not_utf8, sizeof(bad));
    printf("-- Aliyun: notice, download, verify\n");
    h = IOT_OTA_Init("a1EdgePk", "edge_device", pclient);
    EXPECT_TRUE("IOT_OTA_Init(live client) != NULL", h != NULL);
    check_ota_idle(h, pclient);
    memset(&flash, 0, sizeof(flash));
    store.ctx = &flash;
    EXPECT_EQ(IOT_OTA_SetBreakpointStore(h, &store), 0);
    EXPECT_EQ(IOT_OTA_ReportVersion(h, "1.0.0"), 0);

    snprintf(topic, sizeof(topic), "/ota/device/upgrade/%s/%s", "a1EdgePk", "edge_device");
    /* Rejected: size beyond uint32_t. */
    snprintf(notice, sizeof(notice),
             "{\"code\":\"1000\",\"data\":{\"size\":5000000000,\"version\":\"2.0.0\","
             "\"url\":\"http://127.0.0.1:%d/fw.bin\",\"md5\":\"%s\"},\"id\":1,\"message\":\"success\"}",
             server->port, FIRMWARE_MD5);
    publish_text(pclient, topic, notice);
    EXPECT_TRUE("a notice with a 5 GB size is rejected: GetLastError IOT_OTAE_GENERAL",
                wait_for(pclient, cond_last_error, h, IOT_OTAE_GENERAL));
    EXPECT_EQ(IOT_OTA_IsFetching(h), 0);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_STATE), IOT_OTAS_INITED);

    snprintf(notice, sizeof(notice),
             "{\"code\":\"1000\",\"data\":{\"size\":%u,\"version\":\"2.0.0\","
             "\"url\":\"http://127.0.0.1:%d/fw.bin\",\"md5\":\"%s\"},\"id\":2,\"message\":\"success\"}",
             FIRMWARE_SIZE, server->port, FIRMWARE_MD5);
    publish_text(pclient, topic, notice);
    EXPECT_TRUE("the upgrade notice is accepted within 30 s", wait_for(pclient, cond_fetching, h, 0));
    EXPECT_EQ(IOT_OTA_IsFetchFinish(h), 0);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_STATE), IOT_OTAS_FETCHING);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_FILE_SIZE), FIRMWARE_SIZE);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_FETCHED_SIZE), 0);
    check_u32_lengths(h);
    check_unsupported_queries(h);
    check_string_query(h, IOT_OTAG_MD5SUM, "IOT_OTAG_MD5SUM", FIRMWARE_MD5);
    check_string_query(h, IOT_OTAG_VERSION, "IOT_OTAG_VERSION", "2.0.0");
    check_string_query(h, IOT_OTAG_SIGN_METHOD, "IOT_OTAG_SIGN_METHOD", "MD5");
    check_string_query(h, IOT_OTAG_MODULE, "IOT_OTAG_MODULE", "default");
    check_query_unavailable(h, IOT_OTAG_SHA256SUM, "IOT_OTAG_SHA256SUM");
    check_query_unavailable(h, IOT_OTAG_TASK_ID, "IOT_OTAG_TASK_ID");
    check_query_unavailable(h, IOT_OTAG_EXT_DATA, "IOT_OTAG_EXT_DATA");
    {
        gbuf_t c;
        void *out = gbuf_new(&c, 4);
        EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAG_CHECK_FIRMWARE, out, 4), IOT_OTAE_INVALID_STATE);
        expect_untouched("IOT_OTA_Ioctl(IOT_OTAG_CHECK_FIRMWARE) while fetching", &c);
        gbuf_free(&c);
    }

    EXPECT_EQ(IOT_OTA_ReportProgress(h, 0, ""), 0);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, 1, NULL), 0);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, 2, bad), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, 3, long_msg), IOT_OTAE_STR_TOO_LONG);
    EXPECT_EQ(IOT_OTA_SetBreakpointStore(h, &store), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_SetBreakpointFile(h, "/tmp/edge-while-fetching.bp"), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_StartDownload(h, FIRMWARE_SIZE + 1, 0), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_StartDownload(h, 0, FIRMWARE_SIZE + 1), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_StartDownload(h, 0, FIRMWARE_SIZE - 1), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_StartDownload(h, 0, FIRMWARE_SIZE), 0);
    EXPECT_EQ(IOT_OTA_ResetClientMD5(h), 0);
    /* NULL with a length feeds nothing (the image must still verify below). */
    IOT_OTA_UpdateClientMd5(h, NULL, 16);
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_INVALID_PARAM);
    IOT_OTA_UpdateClientMd5(h, NULL, 0);

    buf = gbuf_new(&g, 64);
    EXPECT_EQ(IOT_OTA_FetchYield(h, buf, 0, 1), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_FetchYield(h, NULL, 64, 1), IOT_OTAE_INVALID_PARAM);
    expect_untouched("IOT_OTA_FetchYield with buf_len 0 / NULL buf", &g);
    EXPECT_EQ(IOT_OTA_IsFetching(h), 1);
    gbuf_free(&g);

    /* The download: every piece is checked against the image, beyond it nothing is written. */
    deadline = HAL_UptimeMs() + 2 * WAIT_MS;
    while (!IOT_OTA_IsFetchFinish(h) && HAL_UptimeMs() < deadline) {
        uint32_t size = sizes[calls % (sizeof(sizes) / sizeof(sizes[0]))];
        uint32_t k;
        int n;
        buf = gbuf_new(&g, size);
        n = IOT_OTA_FetchYield(h, buf, size, calls % 5 == 4 ? 0 : 5);
        calls++;
        if (n < 0 || (uint32_t)n > size || !gbuf_guards_ok(&g) || !gbuf_untouched_from(&g, (size_t)n)) {
            printf("FetchYield(buf_len %u) = %d at offset %u: out of bounds or failed\n", size, n, fetched);
            all_ok = 0;
            gbuf_free(&g);
            break;
        }
        for (k = 0; k < (uint32_t)n; k++) {
            if (gbuf_data(&g)[k] != firmware_byte(fetched + k)) {
                printf("FetchYield: byte %u differs from the image\n", fetched + k);
                all_ok = 0;
            }
        }
        fetched += (uint32_t)n;
        if (ioctl_u32(h, IOT_OTAG_FETCHED_SIZE) != fetched) {
            all_ok = 0;
        }
        gbuf_free(&g);
        if (!all_ok) {
            break;
        }
        IOT_MQTT_Yield(pclient, 0);
    }
    printf("   %u FetchYield calls, %u bytes\n", calls, fetched);
    EXPECT_TRUE("every FetchYield wrote the image's next bytes, within buf_len and the returned length", all_ok);
    EXPECT_EQ(fetched, FIRMWARE_SIZE);
    EXPECT_EQ(IOT_OTA_IsFetchFinish(h), 1);
    EXPECT_EQ(IOT_OTA_IsFetching(h), 0);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_STATE), IOT_OTAS_FETCHED);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_CHECK_FIRMWARE), 1);
    EXPECT_TRUE("the breakpoint store was saved to within its 1024 bytes", flash.saves > 0 && !flash.overrun);
    buf = gbuf_new(&g, 64);
    EXPECT_EQ(IOT_OTA_FetchYield(h, buf, 64, 0), IOT_OTAE_INVALID_STATE);
    expect_untouched("IOT_OTA_FetchYield after the download", &g);
    gbuf_free(&g);
    check_string_query(h, IOT_OTAG_VERSION, "IOT_OTAG_VERSION (after the download)", "2.0.0");

    EXPECT_EQ(IOT_OTA_StartDownload(h, 0, 0), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_ReportUpgradeBegin(h), 0);
    EXPECT_EQ(IOT_OTA_ReportUpgradeSuccess(h, ""), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportUpgradeSuccess(h, long_msg), IOT_OTAE_STR_TOO_LONG);
    EXPECT_EQ(IOT_OTA_ReportUpgradeSuccess(h, "2.0.0"), 0);
    EXPECT_EQ(IOT_MQTT_Yield(pclient, 200), 0);
    EXPECT_EQ(IOT_OTA_Deinit(h), 0);
    free(long_msg);
}

/* SagooIOT: SHA-256, a module and extData; released in the middle of a download. */
static void scenario_sagoo(void *pclient, const http_server_t *server)
{
    char topic[128], notice[640];
    gbuf_t g;
    char *buf;
    void *h;
    size_t len;
    int n = 0;
    uint64_t deadline;

    printf("-- SagooIOT: SHA-256, module, extData; IOT_OTA_Deinit mid-download\n");
    h = IOT_OTA_InitWithProtocol("a1EdgePk", "edge_sagoo", pclient, IOT_OTA_PROTOCOL_SAGOO);
    EXPECT_TRUE("IOT_OTA_InitWithProtocol(SAGOO) != NULL", h != NULL);
    EXPECT_EQ(IOT_OTA_ReportModuleVersion(h, "MCU", "3.1.3"), 0);
    snprintf(topic, sizeof(topic), "/ota/device/upgrade/%s/%s", "a1EdgePk", "edge_sagoo");
    snprintf(notice, sizeof(notice),
             "{\"code\":\"200\",\"data\":{\"size\":%u,\"version\":\"3.1.4\","
             "\"url\":\"http://127.0.0.1:%d/fw.bin\",\"sign\":\"%s\",\"signMethod\":\"SHA256\","
             "\"module\":\"MCU\",\"extData\":{\"key1\":\"value1\",\"_package_udi\":\"udi\"}},"
             "\"id\":1626969597470,\"message\":\"success\"}",
             FIRMWARE_SIZE, server->port, FIRMWARE_SHA256);
    publish_text(pclient, topic, notice);
    EXPECT_TRUE("the SagooIOT notice is accepted within 30 s", wait_for(pclient, cond_fetching, h, 0));
    check_string_query(h, IOT_OTAG_SHA256SUM, "IOT_OTAG_SHA256SUM", FIRMWARE_SHA256);
    check_string_query(h, IOT_OTAG_SIGN_METHOD, "IOT_OTAG_SIGN_METHOD", "SHA256");
    check_string_query(h, IOT_OTAG_MODULE, "IOT_OTAG_MODULE", "MCU");
    check_string_query(h, IOT_OTAG_VERSION, "IOT_OTAG_VERSION", "3.1.4");
    len = check_string_query(h, IOT_OTAG_EXT_DATA, "IOT_OTAG_EXT_DATA", NULL);
    EXPECT_TRUE("  extData is the JSON object sent", len > 0);
    check_query_unavailable(h, IOT_OTAG_MD5SUM, "IOT_OTAG_MD5SUM");
    check_query_unavailable(h, IOT_OTAG_TASK_ID, "IOT_OTAG_TASK_ID");

    buf = gbuf_new(&g, 1);
    deadline = HAL_UptimeMs() + WAIT_MS;
    while (n == 0 && HAL_UptimeMs() < deadline) {
        n = IOT_OTA_FetchYield(h, buf, 1, 5);
    }
    EXPECT_EQ(n, 1);
    EXPECT_TRUE("  one byte, the image's first, canaries intact",
                gbuf_data(&g)[0] == firmware_byte(0) && gbuf_guards_ok(&g));
    gbuf_free(&g);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_FETCHED_SIZE), 1);
    EXPECT_EQ(IOT_OTA_Deinit(h), 0);
}

/* UCloud: a task id; a download that fails (nothing listens) with retries off. */
static void scenario_ucloud(void *pclient)
{
    char topic[128], notice[512];
    gbuf_t g;
    char *buf;
    void *h;

    printf("-- UCloud: task id; a failed download\n");
    h = IOT_OTA_InitWithProtocol("a1EdgePk", "edge_ucloud", pclient, IOT_OTA_PROTOCOL_UCLOUD);
    EXPECT_TRUE("IOT_OTA_InitWithProtocol(UCLOUD) != NULL", h != NULL);
    EXPECT_EQ(IOT_OTA_SetRetryPolicy(h, 0, 1), 0);
    snprintf(topic, sizeof(topic), "/$system/%s/%s/ota/downstream", "a1EdgePk", "edge_ucloud");
    snprintf(notice, sizeof(notice),
             "{\"Method\":\"notify\",\"Payload\":{\"Version\":\"4.0.0\",\"Module\":\"module_a\","
             "\"URL\":\"http://127.0.0.1:%d/fw.bin\",\"MD5\":\"%s\",\"Size\":%u,\"TaskID\":\"task-42\"}}",
             closed_port(), FIRMWARE_MD5, FIRMWARE_SIZE);
    publish_text(pclient, topic, notice);
    EXPECT_TRUE("the UCloud notice is accepted within 30 s", wait_for(pclient, cond_fetching, h, 0));
    check_string_query(h, IOT_OTAG_TASK_ID, "IOT_OTAG_TASK_ID", "task-42");
    check_string_query(h, IOT_OTAG_MODULE, "IOT_OTAG_MODULE", "module_a");
    check_query_unavailable(h, IOT_OTAG_EXT_DATA, "IOT_OTAG_EXT_DATA");

    buf = gbuf_new(&g, 256);
    EXPECT_EQ(IOT_OTA_FetchYield(h, buf, 256, 10), IOT_OTAE_FETCH_FAILED);
    expect_untouched("IOT_OTA_FetchYield (failed download)", &g);
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_FETCH_FAILED);
    EXPECT_EQ(IOT_OTA_IsFetchFinish(h), 1);
    EXPECT_EQ(IOT_OTA_IsFetching(h), 0);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_CHECK_FIRMWARE), 0);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAG_STATE), IOT_OTAS_FETCHED);
    /* The ended download keeps answering with its error, at once, until the next upgrade. */
    EXPECT_EQ(IOT_OTA_FetchYield(h, buf, 256, 10), IOT_OTAE_FETCH_FAILED);
    EXPECT_EQ(IOT_OTA_IsFetchFinish(h), 1);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, 50, NULL), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_ReportUpgradeBegin(h), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_ReportUpgradeFail(h, NULL), 0);
    EXPECT_EQ(IOT_OTA_ReportProgress(h, IOT_OTAP_FETCH_FAILED, NULL), 0);
    expect_untouched("the calls after the failure", &g);
    gbuf_free(&g);
    EXPECT_EQ(IOT_MQTT_Yield(pclient, 100), 0);
    EXPECT_EQ(IOT_OTA_Deinit(h), 0);
}

static void check_live(void)
{
    http_server_t server;
    void *pclient;

    if (getenv("IOTX_MQTT_HOST") == NULL || getenv("IOTX_MQTT_PORT") == NULL) {
        check_fail("live mode needs IOTX_MQTT_HOST and IOTX_MQTT_PORT (run_with_broker.sh sets them)");
    }
    server_start(&server);
    pclient = connect_live();
    check_mqtt_live(pclient);
    check_ota_init(pclient);
    scenario_aliyun(pclient, &server);
    scenario_sagoo(pclient, &server);
    scenario_ucloud(pclient);
    check_mqtt_oversize(pclient);

    printf("-- IOT_MQTT_Destroy twice through the same variable\n");
    EXPECT_EQ(IOT_MQTT_Destroy(&pclient), 0);
    EXPECT_NULL(pclient);
    EXPECT_EQ(IOT_MQTT_Destroy(&pclient), NULL_VALUE_ERROR);
    server_stop(&server);
    EXPECT_TRUE("the firmware server answered the download requests", server.requests >= 2);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "offline";

    setvbuf(stdout, NULL, _IOLBF, 0);
    IOT_OpenLog("api_edge_test");
    IOT_SetLogLevel(IOT_LOG_ERROR);
    if (strcmp(mode, "offline") == 0) {
        check_offline();
    } else if (strcmp(mode, "live") == 0) {
        check_live();
    } else {
        printf("usage: api_edge_test offline|live\n");
        return 2;
    }
    IOT_CloseLog();
    return checks_done();
}
