/*
 * two_thread_firmware.c: firmware with a yield thread, the way many iotkit v2.3 integrations
 * are written (issue 12, item 3). One thread does nothing but IOT_MQTT_Yield(pclient, 200) in
 * a loop; the main thread waits for an upgrade and runs the iotkit sample's FetchYield loop
 * (append each chunk to the image file, IOT_OTAP_FETCH_FAILED on <= 0, leave on
 * IOT_OTA_IsFetchFinish, IOT_OTAG_CHECK_FIRMWARE once, report the new version) without ever
 * yielding MQTT itself: pings, progress reports and every other message go out only through
 * the yield thread, so a FetchYield that blocks that thread shows up as a late Yield or a
 * missed keep-alive.
 *
 * The yield thread times every IOT_MQTT_Yield (CLOCK_MONOTONIC) and the program prints, at the
 * end, "yield: max N ms over M calls", a histogram line and the number of calls over
 * timeout + 50 ms; and "mqtt: N disconnects, M reconnects" from its event handler. It asserts
 * none of these (the machine may be shared): run_two_thread_test.sh checks the disconnects and
 * the broker's view.
 *
 * Usage: two_thread_firmware [output-file]          (default output file: ota.bin)
 *
 * Environment (all optional):
 *   OTA_PRODUCT_KEY, OTA_DEVICE_NAME, OTA_DEVICE_SECRET   device identity (defaults in test_device.h)
 *   OTA_FIRMWARE_VERSION   version this "build" runs (read by HAL_GetFirmwareVersion)
 *   OTA_LOG_LEVEL          none|crit|error|warning|info|debug or 0..5 (default info)
 *   OTA_BUF_LEN            bytes per IOT_OTA_FetchYield, 1..65536 (default 5000, as the sample)
 *   OTA_FETCH_TIMEOUT_S    timeout of each IOT_OTA_FetchYield in seconds (default 1, as the sample)
 *   OTA_KEEPALIVE_MS       MQTT keep-alive (default 4000)
 *   OTA_TIMEOUT_S          bound of the whole run in seconds (default 120)
 *   IOTX_MQTT_HOST, IOTX_MQTT_PORT   read by IOT_SetupConnInfo: point at a private broker
 *
 * Exit code: 0 the image passed CHECK_FIRMWARE and the new version was reported, 2 CHECK_FIRMWARE
 * said invalid, 3 the run did not end within OTA_TIMEOUT_S, 1 any other error.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "iot_import.h"
#include "iot_export.h"
#include "test_device.h"


#define MQTT_MSGLEN             (2048)
#define OTA_BUF_LEN             (5000)
#define OTA_BUF_LEN_MAX         (64 * 1024)
#define OTA_FETCH_TIMEOUT_S     (1)
#define OTA_KEEPALIVE_MS        (4000)
#define OTA_TIMEOUT_S           (120)
#define OTA_OUTPUT_FILE         "ota.bin"
/* The yield thread's timeout, and how late a Yield may return before it counts as blocked. */
#define YIELD_TIMEOUT_MS        (200)
#define YIELD_SLACK_MS          (50)
/* How long the last reports get to reach the broker before the program stops yielding. */
#define FLUSH_MS                (1000)

#define RC_VALID                (0)
#define RC_FAILED               (1)
#define RC_INVALID              (2)
#define RC_TIMEOUT              (3)

/* Upper bounds (ms past the Yield timeout) of the histogram's buckets; the last is open. */
static const long yield_bucket_over_ms[] = { 0, 5, 10, 20, 50 };
#define YIELD_BUCKETS           ((int)(sizeof(yield_bucket_over_ms) / sizeof(yield_bucket_over_ms[0])) + 1)

/* What both threads touch: only under `lock`. */
typedef struct {
    pthread_mutex_t lock;
    int stop;
    unsigned long disconnects;
    unsigned long reconnects;
} shared_t;

/* Durations of one kind of call, kept by the one thread that makes them (read after join). */
typedef struct {
    unsigned long calls;
    unsigned long errors;
    unsigned long over_budget;
    uint64_t max_us;
    uint64_t total_us;
    unsigned long buckets[YIELD_BUCKETS];
} call_stats_t;

typedef struct {
    void *pclient;
    void *h_ota;
    const char *output;
    char *buf_ota;
    uint32_t buf_len;
    uint32_t fetch_timeout_s;
    uint64_t deadline_ms;
    shared_t *shared;
    call_stats_t yields;
    call_stats_t fetches;
} firmware_t;

static uint64_t monotonic_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void stats_add(call_stats_t *s, uint64_t us, long timeout_ms)
{
    long over_ms = (long)(us / 1000u) - timeout_ms;
    int b = 0;

    while (b < YIELD_BUCKETS - 1 && over_ms >= yield_bucket_over_ms[b]) {
        b++;
    }
    s->buckets[b]++;
    s->calls++;
    s->total_us += us;
    if (us > s->max_us) {
        s->max_us = us;
    }
    if (us > (uint64_t)(timeout_ms + YIELD_SLACK_MS) * 1000u) {
        s->over_budget++;
    }
}

static void stats_print(const char *what, const call_stats_t *s, long timeout_ms)
{
    char line[256];
    size_t used = 0;
    int b;

    HAL_Printf("%s: max %.1f ms over %lu calls (mean %.1f ms, timeout %ld ms, %lu over timeout + %d ms, %lu errors)\n",
               what, (double)s->max_us / 1000.0, s->calls,
               s->calls ? (double)s->total_us / 1000.0 / (double)s->calls : 0.0, timeout_ms,
               s->over_budget, YIELD_SLACK_MS, s->errors);
    for (b = 0; b < YIELD_BUCKETS && used < sizeof(line); b++) {
        int n;
        if (b == 0) {
            n = snprintf(line + used, sizeof(line) - used, " <%ld:%lu", timeout_ms, s->buckets[b]);
        } else if (b == YIELD_BUCKETS - 1) {
            n = snprintf(line + used, sizeof(line) - used, " >=%ld:%lu",
                         timeout_ms + yield_bucket_over_ms[b - 1], s->buckets[b]);
        } else {
            n = snprintf(line + used, sizeof(line) - used, " %ld-%ld:%lu",
                         timeout_ms + yield_bucket_over_ms[b - 1], timeout_ms + yield_bucket_over_ms[b],
                         s->buckets[b]);
        }
        if (n < 0) {
            break;
        }
        used += (size_t)n;
    }
    HAL_Printf("%s: histogram ms%s\n", what, line);
}

/* Runs on the yield thread, inside IOT_MQTT_Yield. */
static void event_handle(void *pcontext, void *pclient, iotx_mqtt_event_msg_pt msg)
{
    shared_t *shared = (shared_t *)pcontext;
    (void)pclient;

    switch (msg->event_type) {
        case IOTX_MQTT_EVENT_DISCONNECT:
            pthread_mutex_lock(&shared->lock);
            shared->disconnects++;
            pthread_mutex_unlock(&shared->lock);
            EXAMPLE_TRACE("MQTT disconnect.");
            break;
        case IOTX_MQTT_EVENT_RECONNECT:
            pthread_mutex_lock(&shared->lock);
            shared->reconnects++;
            pthread_mutex_unlock(&shared->lock);
            EXAMPLE_TRACE("MQTT reconnect.");
            break;
        default:
            break;
    }
}

static int should_stop(shared_t *shared)
{
    int stop;

    pthread_mutex_lock(&shared->lock);
    stop = shared->stop;
    pthread_mutex_unlock(&shared->lock);
    return stop;
}

/* The yield thread: the connection's only driver, timed call by call. */
static void *yield_thread(void *arg)
{
    firmware_t *fw = (firmware_t *)arg;

    while (!should_stop(fw->shared)) {
        uint64_t start = monotonic_us();
        int rc = IOT_MQTT_Yield(fw->pclient, YIELD_TIMEOUT_MS);
        uint64_t took = monotonic_us() - start;

        stats_add(&fw->yields, took, YIELD_TIMEOUT_MS);
        if (rc != 0) {
            fw->yields.errors++;
        }
        if (took > (uint64_t)(YIELD_TIMEOUT_MS + YIELD_SLACK_MS) * 1000u) {
            EXAMPLE_TRACE("IOT_MQTT_Yield took %.1f ms", (double)took / 1000.0);
        }
    }
    return NULL;
}

static void *mqtt_connect(const device_identity_t *id, shared_t *shared, uint32_t keepalive_ms,
                          char *msg_buf, char *msg_readbuf)
{
    iotx_conn_info_pt pconn_info = NULL;
    iotx_mqtt_param_t mqtt_params;

    if (0 != IOT_SetupConnInfo(id->product_key, id->device_name, id->device_secret, (void **)&pconn_info)) {
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
    mqtt_params.pread_buf = msg_readbuf;
    mqtt_params.read_buf_size = MQTT_MSGLEN;
    mqtt_params.pwrite_buf = msg_buf;
    mqtt_params.write_buf_size = MQTT_MSGLEN;

    mqtt_params.handle_event.h_fp = event_handle;
    mqtt_params.handle_event.pcontext = shared;

    return IOT_MQTT_Construct(&mqtt_params);
}

/* The sample's download loop, appending, minus its IOT_MQTT_Yield: the yield thread does that. */
static int download(firmware_t *fw, FILE *fp)
{
    uint32_t size_downloaded = 0, size_file = 0;
    char version[OTA_VERSION_LEN_MAX] = { 0 };
    char md5sum[33] = { 0 };
    int last_percent = -1, percent, len;

    do {
        uint64_t start = monotonic_us();
        len = IOT_OTA_FetchYield(fw->h_ota, fw->buf_ota, fw->buf_len, fw->fetch_timeout_s);
        stats_add(&fw->fetches, monotonic_us() - start, (long)fw->fetch_timeout_s * 1000);
        if (len > 0) {
            if (1 != fwrite(fw->buf_ota, (size_t)len, 1, fp)) {
                EXAMPLE_TRACE("write data to file failed");
                return RC_FAILED;
            }
        } else {
            fw->fetches.errors++;
            IOT_OTA_ReportProgress(fw->h_ota, IOT_OTAP_FETCH_FAILED, NULL);
            EXAMPLE_TRACE("ota fetch fail, rc = %d", len);
        }

        /* get OTA information */
        IOT_OTA_Ioctl(fw->h_ota, IOT_OTAG_FETCHED_SIZE, &size_downloaded, 4);
        IOT_OTA_Ioctl(fw->h_ota, IOT_OTAG_FILE_SIZE, &size_file, 4);
        (void)IOT_OTA_Ioctl(fw->h_ota, IOT_OTAG_MD5SUM, md5sum, sizeof(md5sum));
        IOT_OTA_Ioctl(fw->h_ota, IOT_OTAG_VERSION, version, sizeof(version));

        if (size_file > 0) {
            percent = (int)((uint64_t)size_downloaded * 100 / size_file);
            if (percent > last_percent) {
                IOT_OTA_ReportProgress(fw->h_ota, (IOT_OTA_Progress_t)percent, NULL);
                last_percent = percent;
            }
        }
        if (HAL_UptimeMs() > fw->deadline_ms) {
            EXAMPLE_TRACE("the download did not end within OTA_TIMEOUT_S (at %u of %u bytes)",
                          (unsigned int)size_downloaded, (unsigned int)size_file);
            return RC_TIMEOUT;
        }
    } while (!IOT_OTA_IsFetchFinish(fw->h_ota));
    return RC_VALID;
}

/* The main thread's part: wait for the upgrade, download it, check it, report it. */
static int upgrade(firmware_t *fw)
{
    uint32_t firmware_valid = 0;
    char version[OTA_VERSION_LEN_MAX] = { 0 };
    FILE *fp;
    int rc;

    EXAMPLE_TRACE("wait ota upgrade command....");
    while (!IOT_OTA_IsFetching(fw->h_ota)) {
        if (HAL_UptimeMs() > fw->deadline_ms) {
            EXAMPLE_TRACE("no upgrade command within OTA_TIMEOUT_S");
            return RC_TIMEOUT;
        }
        HAL_SleepMs(50);
    }
    IOT_OTA_Ioctl(fw->h_ota, IOT_OTAG_VERSION, version, sizeof(version));
    HAL_Printf("two_thread: fetching %s\n", version);
    fp = fopen(fw->output, "wb");
    if (NULL == fp) {
        EXAMPLE_TRACE("open file %s failed", fw->output);
        return RC_FAILED;
    }
    rc = download(fw, fp);
    if (0 != fclose(fp) && rc == RC_VALID) {
        EXAMPLE_TRACE("closing %s failed", fw->output);
        rc = RC_FAILED;
    }
    if (rc != RC_VALID) {
        return rc;
    }

    if (0 != IOT_OTA_Ioctl(fw->h_ota, IOT_OTAG_CHECK_FIRMWARE, &firmware_valid, 4)) {
        EXAMPLE_TRACE("CHECK_FIRMWARE failed, last error = %d", IOT_OTA_GetLastError(fw->h_ota));
        return RC_FAILED;
    }
    IOT_OTA_Ioctl(fw->h_ota, IOT_OTAG_VERSION, version, sizeof(version));
    if (0 == firmware_valid) {
        EXAMPLE_TRACE("The firmware is invalid");
        HAL_SleepMs(FLUSH_MS);
        return RC_INVALID;
    }
    EXAMPLE_TRACE("The firmware is valid");
    if (0 != IOT_OTA_ReportVersion(fw->h_ota, version)) {
        EXAMPLE_TRACE("reporting version %s failed", version);
        return RC_FAILED;
    }
    EXAMPLE_TRACE("reported new version %s", version);
    HAL_SleepMs(FLUSH_MS);
    return RC_VALID;
}

static const char *rc_name(int rc)
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

int main(int argc, char **argv)
{
    static shared_t shared;
    static firmware_t fw;
    device_identity_t id;
    pthread_t yielder;
    int yielding = 0;
    char *msg_buf = NULL, *msg_readbuf = NULL;
    uint32_t keepalive_ms = (uint32_t)env_long("OTA_KEEPALIVE_MS", OTA_KEEPALIVE_MS);
    int rc = RC_FAILED;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (0 != pthread_mutex_init(&shared.lock, NULL)) {
        return RC_FAILED;
    }
    fw.shared = &shared;
    fw.output = argc > 1 ? argv[1] : OTA_OUTPUT_FILE;
    fw.buf_len = (uint32_t)env_long("OTA_BUF_LEN", OTA_BUF_LEN);
    if (fw.buf_len > OTA_BUF_LEN_MAX) {
        fw.buf_len = OTA_BUF_LEN_MAX;
    }
    fw.fetch_timeout_s = (uint32_t)env_long("OTA_FETCH_TIMEOUT_S", OTA_FETCH_TIMEOUT_S);
    fw.deadline_ms = HAL_UptimeMs() + 1000 * (uint64_t)env_long("OTA_TIMEOUT_S", OTA_TIMEOUT_S);

    IOT_OpenLog("two_thread");
    IOT_SetLogLevel((IOT_LogLevel)log_level_from_env());

    if (setup_identity(&id) != 0) {
        goto do_exit;
    }
    fw.buf_ota = (char *)HAL_Malloc(fw.buf_len);
    msg_buf = (char *)HAL_Malloc(MQTT_MSGLEN);
    msg_readbuf = (char *)HAL_Malloc(MQTT_MSGLEN);
    if (NULL == fw.buf_ota || NULL == msg_buf || NULL == msg_readbuf) {
        EXAMPLE_TRACE("not enough memory");
        goto do_exit;
    }
    fw.pclient = mqtt_connect(&id, &shared, keepalive_ms, msg_buf, msg_readbuf);
    if (NULL == fw.pclient) {
        EXAMPLE_TRACE("MQTT construct failed");
        goto do_exit;
    }
    fw.h_ota = IOT_OTA_Init(id.product_key, id.device_name, fw.pclient);
    if (NULL == fw.h_ota) {
        EXAMPLE_TRACE("initialize OTA failed");
        goto do_exit;
    }
    if (0 != pthread_create(&yielder, NULL, yield_thread, &fw)) {
        EXAMPLE_TRACE("starting the yield thread failed");
        goto do_exit;
    }
    yielding = 1;
    if (0 != IOT_OTA_ReportVersion(fw.h_ota, id.firmware_version)) {
        EXAMPLE_TRACE("report OTA version failed");
        goto do_exit;
    }
    rc = upgrade(&fw);
    HAL_Printf("two_thread: upgrade -> %s\n", rc_name(rc));

do_exit:
    if (yielding) {
        pthread_mutex_lock(&shared.lock);
        shared.stop = 1;
        pthread_mutex_unlock(&shared.lock);
        pthread_join(yielder, NULL);
        stats_print("yield", &fw.yields, YIELD_TIMEOUT_MS);
        stats_print("fetch", &fw.fetches, (long)fw.fetch_timeout_s * 1000);
        pthread_mutex_lock(&shared.lock);
        HAL_Printf("mqtt: %lu disconnects, %lu reconnects (keep-alive %u ms)\n", shared.disconnects,
                   shared.reconnects, (unsigned int)keepalive_ms);
        pthread_mutex_unlock(&shared.lock);
    }
    EXAMPLE_TRACE("exit, rc = %d", rc);
    if (NULL != fw.h_ota) {
        IOT_OTA_Deinit(fw.h_ota);
    }
    if (NULL != fw.pclient) {
        IOT_MQTT_Destroy(&fw.pclient);
    }
    HAL_Free(fw.buf_ota);
    HAL_Free(msg_buf);
    HAL_Free(msg_readbuf);
    IOT_CloseLog();
    pthread_mutex_destroy(&shared.lock);
    return rc;
}
