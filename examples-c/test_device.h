/*
 * test_device.h: the device the C test firmware (sequential_writer.c, two_thread_firmware.c,
 * signed_image_test.c) is built on: settings from the command line and the environment, the
 * device identity, the MQTT connection and OTA handle, and the iotkit v2.3 OTA sample's upgrade
 * cycle (wait for the upgrade, append what IOT_OTA_FetchYield returns, IOT_OTAG_CHECK_FIRMWARE,
 * report the new version). Each program keeps only what it tests.
 *
 * ota_mqtt_example.c does not use it: it is the sample customers copy, and ota-cloud's demo and
 * ota-bench compile it alone.
 *
 * Environment read here (all optional):
 *   OTA_PRODUCT_KEY, OTA_DEVICE_NAME, OTA_DEVICE_SECRET   device identity (defaults below)
 *   OTA_FIRMWARE_VERSION   version this "build" runs (read by HAL_GetFirmwareVersion)
 *   OTA_LOG_LEVEL          none|crit|error|warning|info|debug or 0..5 (default info)
 *   OTA_PROTOCOL           aliyun (default: IOT_OTA_Init), sagoo, tencent or ucloud
 *                          (IOT_OTA_InitWithProtocol)
 *   OTA_BUF_LEN            bytes per IOT_OTA_FetchYield, 1..65536 (default 5000, as the sample)
 *   OTA_FETCH_TIMEOUT_S    timeout of each IOT_OTA_FetchYield in seconds (default 1, as the sample)
 *   OTA_YIELD_MS           IOT_MQTT_Yield's timeout after each FetchYield (default 100, as the
 *                          sample; 0 for tiny buffers, whose many calls would each wait 100 ms)
 *   OTA_TIMEOUT_S          bound of the whole run in seconds (default 120)
 *   IOTX_MQTT_HOST, IOTX_MQTT_PORT   read by IOT_SetupConnInfo: point at a private broker
 */
#ifndef OTA_TEST_DEVICE_H
#define OTA_TEST_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "iot_import.h"
#include "iot_export.h"

#define TEST_PRODUCT_KEY        "a1OtaExmpPk"
#define TEST_DEVICE_NAME        "ota_example_device"
#define TEST_DEVICE_SECRET      "ExampleSecretExampleSecretExampl"

/* The outcome of an upgrade cycle, and the exit code of the test devices. */
#define RC_VALID                (0)
#define RC_FAILED               (1)
#define RC_INVALID              (2)
#define RC_TIMEOUT              (3)

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

/* Called after each IOT_OTA_FetchYield of the upgrade cycle with its result and duration. */
typedef void (*fetch_observer_fn)(void *ctx, int len, uint64_t took_us);
/* Called once IOT_OTAG_CHECK_FIRMWARE answered, with its value, before the new version is
 * reported: where firmware reads what it is about to install. */
typedef void (*check_observer_fn)(void *ctx, uint32_t firmware_valid);

typedef struct {
    /* Settings (device_start). `name` is the log ident and the prefix of the lines the test
     * scripts read ("writer: cycle 1 fetching ..."). */
    const char *name;
    const char *output;
    const char *protocol;
    uint32_t buf_len;
    uint32_t fetch_timeout_s;
    uint32_t yield_ms;
    uint64_t deadline_ms;
    /* 1 when another thread drives the connection: the device then never calls
     * IOT_MQTT_Yield itself and sleeps where it would yield. */
    int yield_thread;
    fetch_observer_fn on_fetch;
    void *on_fetch_ctx;
    check_observer_fn on_check;
    void *on_check_ctx;

    /* What the device holds (device_connect, released by device_stop). */
    device_identity_t id;
    void *pclient;
    void *h_ota;
    char *buf_ota;
    char *msg_buf;
    char *msg_readbuf;
} test_device_t;

/* The variable as a positive number, or `fallback`. */
long env_long(const char *name, long fallback);
/* Copies `src` and its NUL into `dst`; -1 (and a trace naming `what`) when it does not fit. */
int copy_field(char *dst, size_t dst_len, const char *src, const char *what);
/* CLOCK_MONOTONIC in microseconds, for timing single calls. */
uint64_t monotonic_us(void);

/* Reads the settings (output file argv[1], default ota.bin; the environment above), starts the
 * deadline and opens the log as `name`. Nothing to release yet. */
void device_start(test_device_t *d, const char *name, int argc, char **argv);
/* The identity through HAL_Set*, the buffers, the MQTT connection (the sample's parameters with
 * `keepalive_ms`; connection events to `handler` with `ctx`) and the OTA handle of the
 * protocol. 0, or -1 after a trace. */
int device_connect(test_device_t *d, uint32_t keepalive_ms, iotx_mqtt_event_handle_func_fpt handler,
                   void *ctx);
/* An event handler that traces disconnections and reconnections. */
void trace_connection_events(void *pcontext, void *pclient, iotx_mqtt_event_msg_pt msg);
/* IOT_OTA_ReportVersion of the running version. 0 or -1. */
int device_report_running_version(test_device_t *d);
/* One upgrade as the sample runs it: wait for it, append the image to `output` (cut to the
 * resume offset first), check it, report the new version in the protocol's terms, give the
 * reports time to leave. RC_VALID, RC_INVALID, RC_TIMEOUT or RC_FAILED. */
int device_upgrade_cycle(test_device_t *d, int cycle);
/* "VALID", "INVALID", "TIMEOUT" or "ERROR". */
const char *rc_name(int rc);
/* Traces the exit code, releases what device_connect made and closes the log. */
void device_stop(test_device_t *d, int rc);

#endif
