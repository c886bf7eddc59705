/* test_device.c: see test_device.h. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "test_device.h"

#define MQTT_MSGLEN             (2048)
#define OTA_BUF_LEN             (5000)
#define OTA_BUF_LEN_MAX         (64 * 1024)
#define OTA_FETCH_TIMEOUT_S     (1)
#define OTA_TIMEOUT_S           (120)
#define OTA_OUTPUT_FILE         "ota.bin"
/* How long the last reports get to reach the broker after an upgrade cycle. */
#define FLUSH_MS                (1000)

/* The variable's value, or `fallback` when it is unset or empty. */
static const char *env_or(const char *name, const char *fallback)
{
    const char *value = getenv(name);
    return (value != NULL && value[0] != '\0') ? value : fallback;
}

long env_long(const char *name, long fallback)
{
    long value = strtol(env_or(name, "0"), NULL, 10);
    return value > 0 ? value : fallback;
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

uint64_t monotonic_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* OTA_LOG_LEVEL: none|crit|error|warning|info|debug or 0..5 (default info). */
static int log_level_from_env(void)
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

void device_start(test_device_t *d, const char *name, int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(d, 0, sizeof(*d));
    d->name = name;
    d->output = argc > 1 ? argv[1] : OTA_OUTPUT_FILE;
    d->protocol = env_or("OTA_PROTOCOL", "aliyun");
    d->buf_len = (uint32_t)env_long("OTA_BUF_LEN", OTA_BUF_LEN);
    if (d->buf_len > OTA_BUF_LEN_MAX) {
        d->buf_len = OTA_BUF_LEN_MAX;
    }
    d->fetch_timeout_s = (uint32_t)env_long("OTA_FETCH_TIMEOUT_S", OTA_FETCH_TIMEOUT_S);
    /* 0 is a value here (env_long takes it for unset). */
    long yield_ms = strtol(env_or("OTA_YIELD_MS", "100"), NULL, 10);
    d->yield_ms = yield_ms > 0 ? (uint32_t)yield_ms : 0;
    d->deadline_ms = HAL_UptimeMs() + 1000 * (uint64_t)env_long("OTA_TIMEOUT_S", OTA_TIMEOUT_S);

    IOT_OpenLog(name);
    IOT_SetLogLevel((IOT_LogLevel)log_level_from_env());
}

/* OTA_PRODUCT_KEY / OTA_DEVICE_NAME / OTA_DEVICE_SECRET through HAL_Set*, as v2.3 firmware
 * stores its triple, and the running version from HAL_GetFirmwareVersion. */
static int setup_identity(device_identity_t *id)
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

/* The sample's connection: device AUTH through IOT_SetupConnInfo, then IOT_MQTT_Construct. */
static void *mqtt_connect(test_device_t *d, uint32_t keepalive_ms, iotx_mqtt_event_handle_func_fpt handler,
                          void *ctx)
{
    iotx_conn_info_pt pconn_info = NULL;
    iotx_mqtt_param_t mqtt_params;

    if (0 != IOT_SetupConnInfo(d->id.product_key, d->id.device_name, d->id.device_secret, (void **)&pconn_info)) {
        EXAMPLE_TRACE("AUTH request failed!");
        return NULL;
    }
    EXAMPLE_TRACE("connecting to %s:%u, keep-alive %u ms", pconn_info->host_name,
                  (unsigned int)pconn_info->port, (unsigned int)keepalive_ms);

    memset(&mqtt_params, 0x0, sizeof(mqtt_params));
    mqtt_params.port = pconn_info->port;
    mqtt_params.host = pconn_info->host_name;
    mqtt_params.client_id = pconn_info->client_id;
    mqtt_params.username = pconn_info->username;
    mqtt_params.password = pconn_info->password;
    mqtt_params.pub_key = pconn_info->pub_key;

    mqtt_params.request_timeout_ms = 2000;
    mqtt_params.clean_session = 0;
    mqtt_params.keepalive_interval_ms = keepalive_ms;
    mqtt_params.pread_buf = d->msg_readbuf;
    mqtt_params.read_buf_size = MQTT_MSGLEN;
    mqtt_params.pwrite_buf = d->msg_buf;
    mqtt_params.write_buf_size = MQTT_MSGLEN;

    mqtt_params.handle_event.h_fp = handler;
    mqtt_params.handle_event.pcontext = ctx;

    return IOT_MQTT_Construct(&mqtt_params);
}

/* IOT_OTA_Init for "aliyun", as iotkit firmware calls it; IOT_OTA_InitWithProtocol for the rest. */
static void *ota_init(const char *protocol_name, const device_identity_t *id, void *pclient)
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

int device_connect(test_device_t *d, uint32_t keepalive_ms, iotx_mqtt_event_handle_func_fpt handler,
                   void *ctx)
{
    if (setup_identity(&d->id) != 0) {
        return -1;
    }
    d->buf_ota = (char *)HAL_Malloc(d->buf_len);
    d->msg_buf = (char *)HAL_Malloc(MQTT_MSGLEN);
    d->msg_readbuf = (char *)HAL_Malloc(MQTT_MSGLEN);
    if (NULL == d->buf_ota || NULL == d->msg_buf || NULL == d->msg_readbuf) {
        EXAMPLE_TRACE("not enough memory");
        return -1;
    }
    EXAMPLE_TRACE("%s, fetch buffer %u bytes, FetchYield timeout %u s, writing to %s", d->protocol,
                  (unsigned int)d->buf_len, (unsigned int)d->fetch_timeout_s, d->output);
    d->pclient = mqtt_connect(d, keepalive_ms, handler, ctx);
    if (NULL == d->pclient) {
        EXAMPLE_TRACE("MQTT construct failed");
        return -1;
    }
    d->h_ota = ota_init(d->protocol, &d->id, d->pclient);
    if (NULL == d->h_ota) {
        EXAMPLE_TRACE("initialize OTA failed");
        return -1;
    }
    return 0;
}

void trace_connection_events(void *pcontext, void *pclient, iotx_mqtt_event_msg_pt msg)
{
    (void)pcontext;
    (void)pclient;

    switch (msg->event_type) {
        case IOTX_MQTT_EVENT_DISCONNECT:
            EXAMPLE_TRACE("MQTT disconnect.");
            break;
        case IOTX_MQTT_EVENT_RECONNECT:
            EXAMPLE_TRACE("MQTT reconnect.");
            break;
        default:
            break;
    }
}

int device_report_running_version(test_device_t *d)
{
    if (0 != IOT_OTA_ReportVersion(d->h_ota, d->id.firmware_version)) {
        EXAMPLE_TRACE("report OTA version failed");
        return -1;
    }
    return 0;
}

/* Lets `ms` pass while the connection is driven: by this thread's IOT_MQTT_Yield, or by the
 * yield thread. */
static void device_wait(test_device_t *d, int ms)
{
    uint64_t until = HAL_UptimeMs() + (uint64_t)ms;

    if (d->yield_thread) {
        HAL_SleepMs((uint32_t)ms);
        return;
    }
    while (HAL_UptimeMs() < until) {
        IOT_MQTT_Yield(d->pclient, 200);
    }
}

static int wait_for_upgrade(test_device_t *d, int cycle)
{
    EXAMPLE_TRACE("cycle %d: wait ota upgrade command....", cycle);
    while (!IOT_OTA_IsFetching(d->h_ota)) {
        if (HAL_UptimeMs() > d->deadline_ms) {
            EXAMPLE_TRACE("no upgrade command within OTA_TIMEOUT_S");
            return RC_TIMEOUT;
        }
        if (d->yield_thread) {
            HAL_SleepMs(50);
        } else {
            IOT_MQTT_Yield(d->pclient, 200);
        }
    }
    return RC_VALID;
}

/* The image file, cut to `offset` bytes (the bytes a resumed download keeps) and opened for
 * appending: every later write lands at its end. */
static FILE *open_image_at(const char *path, uint32_t offset)
{
    struct stat st;
    FILE *fp;

    if (0 != stat(path, &st)) {
        if (errno != ENOENT) {
            EXAMPLE_TRACE("stat %s failed", path);
            return NULL;
        }
        st.st_size = 0;
    }
    if ((uint64_t)st.st_size < (uint64_t)offset) {
        /* The SDK resumes past bytes this device never got: they are lost for good. */
        EXAMPLE_TRACE("%s holds %lld bytes, fewer than the resume offset %u",
                      path, (long long)st.st_size, (unsigned int)offset);
        return NULL;
    }
    fp = fopen(path, "ab");
    if (NULL == fp) {
        EXAMPLE_TRACE("open file %s failed", path);
        return NULL;
    }
    if (0 != ftruncate(fileno(fp), (off_t)offset)) {
        EXAMPLE_TRACE("truncating %s to %u bytes failed", path, (unsigned int)offset);
        fclose(fp);
        return NULL;
    }
    return fp;
}

/* The sample's download loop, appending; RC_VALID when it ended (CHECK_FIRMWARE decides). */
static int download(test_device_t *d, FILE *fp)
{
    uint32_t size_downloaded = 0, size_file = 0;
    char version[OTA_VERSION_LEN_MAX] = { 0 };
    char md5sum[33] = { 0 };
    int last_percent = -1, percent, len;

    do {
        uint64_t start = monotonic_us();
        len = IOT_OTA_FetchYield(d->h_ota, d->buf_ota, d->buf_len, d->fetch_timeout_s);
        if (NULL != d->on_fetch) {
            d->on_fetch(d->on_fetch_ctx, len, monotonic_us() - start);
        }
        if (len > 0) {
            /* A flash write is synchronous: once FetchYield returned the bytes, a kill keeps them. */
            if (1 != fwrite(d->buf_ota, (size_t)len, 1, fp) || 0 != fflush(fp)) {
                EXAMPLE_TRACE("write data to file failed");
                return RC_FAILED;
            }
        } else {
            IOT_OTA_ReportProgress(d->h_ota, IOT_OTAP_FETCH_FAILED, NULL);
            EXAMPLE_TRACE("ota fetch fail, rc = %d", len);
        }

        /* get OTA information */
        IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FETCHED_SIZE, &size_downloaded, 4);
        IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FILE_SIZE, &size_file, 4);
        (void)IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_MD5SUM, md5sum, sizeof(md5sum));
        IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_VERSION, version, sizeof(version));

        if (size_file > 0) {
            /* 64-bit: a 32-bit fetched * 100 overflows above 42 MB. The first value may be 0. */
            percent = (int)((uint64_t)size_downloaded * 100 / size_file);
            if (percent > last_percent) {
                IOT_OTA_ReportProgress(d->h_ota, (IOT_OTA_Progress_t)percent, NULL);
                last_percent = percent;
            }
        }
        if (!d->yield_thread) {
            IOT_MQTT_Yield(d->pclient, (int)d->yield_ms);
        }
        if (HAL_UptimeMs() > d->deadline_ms) {
            EXAMPLE_TRACE("the download did not end within OTA_TIMEOUT_S (at %u of %u bytes)",
                          (unsigned int)size_downloaded, (unsigned int)size_file);
            return RC_TIMEOUT;
        }
    } while (!IOT_OTA_IsFetchFinish(d->h_ota));
    return RC_VALID;
}

/* The valid image is in place: report it in the protocol's terms. */
static int report_new_version(test_device_t *d, const char *version)
{
    int rc;

    if (0 == strcmp(d->protocol, "tencent") || 0 == strcmp(d->protocol, "ucloud")) {
        IOT_OTA_ReportUpgradeBegin(d->h_ota);
        rc = IOT_OTA_ReportUpgradeSuccess(d->h_ota, version);
    } else {
        rc = IOT_OTA_ReportVersion(d->h_ota, version);
    }
    if (0 != rc) {
        EXAMPLE_TRACE("reporting version %s failed, rc = %d", version, rc);
        return RC_FAILED;
    }
    EXAMPLE_TRACE("reported new version %s", version);
    return RC_VALID;
}

int device_upgrade_cycle(test_device_t *d, int cycle)
{
    uint32_t offset = 0, firmware_valid = 0;
    char version[OTA_VERSION_LEN_MAX] = { 0 };
    FILE *fp;
    int rc;

    rc = wait_for_upgrade(d, cycle);
    if (rc != RC_VALID) {
        return rc;
    }
    /* Read once: where this download starts (0, or the resume offset after a restart). */
    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FETCHED_SIZE, &offset, 4);
    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_VERSION, version, sizeof(version));
    HAL_Printf("%s: cycle %d fetching %s from byte %u\n", d->name, cycle, version, (unsigned int)offset);
    fp = open_image_at(d->output, offset);
    if (NULL == fp) {
        return RC_FAILED;
    }
    rc = download(d, fp);
    if (0 != fclose(fp) && rc == RC_VALID) {
        EXAMPLE_TRACE("closing %s failed", d->output);
        rc = RC_FAILED;
    }
    if (rc != RC_VALID) {
        return rc;
    }

    if (0 != IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_CHECK_FIRMWARE, &firmware_valid, 4)) {
        EXAMPLE_TRACE("CHECK_FIRMWARE failed, last error = %d", IOT_OTA_GetLastError(d->h_ota));
        return RC_FAILED;
    }
    if (NULL != d->on_check) {
        d->on_check(d->on_check_ctx, firmware_valid);
    }
    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_VERSION, version, sizeof(version));
    if (0 == firmware_valid) {
        EXAMPLE_TRACE("The firmware is invalid");
        device_wait(d, FLUSH_MS);
        return RC_INVALID;
    }
    EXAMPLE_TRACE("The firmware is valid");
    rc = report_new_version(d, version);
    device_wait(d, FLUSH_MS);
    return rc;
}

const char *rc_name(int rc)
{
    switch (rc) {
        case RC_VALID:
            return "VALID";
        case RC_INVALID:
            return "INVALID";
        case RC_TIMEOUT:
            return "TIMEOUT";
        default:
            return "ERROR";
    }
}

void device_stop(test_device_t *d, int rc)
{
    EXAMPLE_TRACE("exit, rc = %d", rc);
    if (NULL != d->h_ota) {
        IOT_OTA_Deinit(d->h_ota);
        d->h_ota = NULL;
    }
    if (NULL != d->pclient) {
        IOT_MQTT_Destroy(&d->pclient);
    }
    HAL_Free(d->buf_ota);
    HAL_Free(d->msg_buf);
    HAL_Free(d->msg_readbuf);
    d->buf_ota = d->msg_buf = d->msg_readbuf = NULL;
    IOT_CloseLog();
}
