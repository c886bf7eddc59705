/*
 * api_misuse_test.c: every IOT_OTA_* / IOT_MQTT_* entry point called with a NULL handle or an
 * invalid argument returns its documented value instead of crashing; the HAL identity store
 * round-trips and rejects oversized values; the v2.3 enum values and struct sizes hold.
 *
 * Prints one line per check and exits 1 at the first failure.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "iot_import.h"
#include "iot_export.h"
#include "test_checks.h"

#define FIELD_SIZE(type, field) sizeof(((type *)0)->field)

static void check_ota_null_handle(void)
{
    char buf[64];
    uint32_t size = 0;

    EXPECT_NULL(IOT_OTA_Init(NULL, NULL, NULL));
    EXPECT_NULL(IOT_OTA_Init("pk", "dn", NULL));
    EXPECT_EQ(IOT_OTA_Deinit(NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportVersion(NULL, "1"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_RequestImage(NULL, "1"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportProgress(NULL, IOT_OTAP_FETCH_PERCENTAGE_MIN, NULL), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_ReportProgress(NULL, IOT_OTAP_CHECK_FALIED, "md5 mismatch"), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_IsFetching(NULL), 0);
    EXPECT_EQ(IOT_OTA_IsFetchFinish(NULL), 0);
    EXPECT_EQ(IOT_OTA_FetchYield(NULL, buf, sizeof(buf), 1), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_FetchYield(NULL, NULL, 0, 0), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_Ioctl(NULL, IOT_OTAG_FETCHED_SIZE, &size, 4), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_Ioctl(NULL, IOT_OTAG_MD5SUM, buf, 33), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_Ioctl(NULL, IOT_OTAG_CHECK_FIRMWARE, NULL, 0), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_GetLastError(NULL), IOT_OTAE_INVALID_PARAM);
}

static void check_mqtt_null_handle(void)
{
    iotx_mqtt_topic_info_t msg;
    void *null_client = NULL;

    memset(&msg, 0, sizeof(msg));
    msg.qos = IOTX_MQTT_QOS1;
    msg.payload = "x";
    msg.payload_len = 1;

    EXPECT_NULL(IOT_MQTT_Construct(NULL));
    EXPECT_LT0(IOT_MQTT_Yield(NULL, 0));
    EXPECT_LT0(IOT_MQTT_Destroy(NULL));
    EXPECT_LT0(IOT_MQTT_Destroy(&null_client));
    EXPECT_TRUE("IOT_MQTT_CheckStateNormal(NULL) != 1", IOT_MQTT_CheckStateNormal(NULL) != 1);
    EXPECT_LT0(IOT_MQTT_Subscribe(NULL, "/a/b", IOTX_MQTT_QOS1, ignore_mqtt_event, NULL));
    EXPECT_LT0(IOT_MQTT_Unsubscribe(NULL, "/a/b"));
    EXPECT_LT0(IOT_MQTT_Publish(NULL, "/a/b", &msg));
}

static void check_conn_info(void)
{
    void *info = NULL;

    EXPECT_LT0(IOT_SetupConnInfo(NULL, "dn", "secret", &info));
    EXPECT_LT0(IOT_SetupConnInfo("pk", NULL, "secret", &info));
    EXPECT_LT0(IOT_SetupConnInfo("pk", "dn", NULL, &info));
    EXPECT_LT0(IOT_SetupConnInfo("pk", "dn", "secret", NULL));
}

static void check_hal_identity(void)
{
    char key[PRODUCT_KEY_LEN + 1];
    char name[DEVICE_NAME_LEN + 1];
    char long_key[101];
    char pk[] = "a1TestProdKey";
    char dn[] = "misuse_device";

    memset(long_key, 'k', 100);
    long_key[100] = '\0';

    /* iotkit's Linux HAL returns the length stored */
    EXPECT_EQ(HAL_SetProductKey(pk), strlen(pk));
    memset(key, 0, sizeof(key));
    EXPECT_EQ(HAL_GetProductKey(key), strlen(pk));
    EXPECT_TRUE("HAL_GetProductKey round-trips \"a1TestProdKey\"", strcmp(key, pk) == 0);

    EXPECT_EQ(HAL_SetProductKey(long_key), -1);
    memset(key, 0, sizeof(key));
    HAL_GetProductKey(key);
    EXPECT_TRUE("a rejected product key leaves the stored one unchanged", strcmp(key, pk) == 0);

    EXPECT_EQ(HAL_SetDeviceName(dn), strlen(dn));
    memset(name, 0, sizeof(name));
    HAL_GetDeviceName(name);
    EXPECT_TRUE("HAL_GetDeviceName round-trips \"misuse_device\"", strcmp(name, dn) == 0);
}

static void check_hal_runtime(void)
{
    char text[16];
    void *p = HAL_Malloc(128);
    uint64_t before = HAL_UptimeMs();

    EXPECT_TRUE("HAL_Malloc(128) != NULL", p != NULL);
    memset(p, 0xa5, 128);
    HAL_Free(p);
    HAL_Free(NULL);
    HAL_SleepMs(20);
    EXPECT_TRUE("HAL_UptimeMs advances by >= 20 over HAL_SleepMs(20)", HAL_UptimeMs() - before >= 20);
    EXPECT_EQ(HAL_Snprintf(text, sizeof(text), "%s-%d", "v", 2), 3);
}

/* The names are the contract, and so are the v2.3 values firmware may have stored or logged. */
static void check_abi_values(void)
{
    EXPECT_EQ(IOT_OTAE_GENERAL, -1);
    EXPECT_EQ(IOT_OTAE_INVALID_PARAM, -2);
    EXPECT_EQ(IOT_OTAE_INVALID_STATE, -3);
    EXPECT_EQ(IOT_OTAE_STR_TOO_LONG, -4);
    EXPECT_EQ(IOT_OTAE_FETCH_FAILED, -5);
    EXPECT_EQ(IOT_OTAE_NOMEM, -6);
    EXPECT_EQ(IOT_OTAE_OSC_FAILED, -7);
    EXPECT_EQ(IOT_OTAE_NONE, 0);
    EXPECT_EQ(IOT_OTAP_BURN_FAILED, -4);
    EXPECT_EQ(IOT_OTAP_CHECK_FALIED, -3);
    EXPECT_EQ(IOT_OTAP_FETCH_FAILED, -2);
    EXPECT_EQ(IOT_OTAP_GENERAL_FAILED, -1);
    EXPECT_EQ(IOT_OTAP_FETCH_PERCENTAGE_MAX, 100);
    EXPECT_EQ(IOT_OTAG_FETCHED_SIZE, 6);
    EXPECT_EQ(IOT_OTAG_FILE_SIZE, 7);
    EXPECT_EQ(IOT_OTAG_MD5SUM, 8);
    EXPECT_EQ(IOT_OTAG_VERSION, 9);
    EXPECT_EQ(IOT_OTAG_CHECK_FIRMWARE, 10);
    EXPECT_EQ(IOTX_MQTT_EVENT_SUBCRIBE_SUCCESS, 3);
    EXPECT_EQ(IOTX_MQTT_EVENT_PUBLISH_RECEIVED, 12);
    EXPECT_EQ(IOTX_MQTT_EVENT_BUFFER_OVERFLOW, 13);
    EXPECT_EQ(IOTX_MQTT_QOS1, 1);
    EXPECT_EQ(FIELD_SIZE(iotx_conn_info_t, host_name), 129);
    EXPECT_EQ(FIELD_SIZE(iotx_conn_info_t, client_id), 257);
    EXPECT_EQ(FIELD_SIZE(iotx_conn_info_t, username), 513);
    EXPECT_EQ(FIELD_SIZE(iotx_conn_info_t, password), 257);
    EXPECT_EQ(offsetof(iotx_mqtt_topic_info_t, payload_len), 8);
    EXPECT_TRUE("OTA_VERSION_LEN_MAX >= 32", OTA_VERSION_LEN_MAX >= 32);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    IOT_OpenLog("misuse");
    IOT_SetLogLevel(IOT_LOG_DEBUG);

    check_abi_values();
    check_ota_null_handle();
    check_mqtt_null_handle();
    check_conn_info();
    check_hal_identity();
    check_hal_runtime();

    IOT_CloseLog();
    return checks_done();
}
