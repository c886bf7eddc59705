/*
 * sequential_writer.c: the device of the fault matrix (run_fault_matrix.sh). Firmware written
 * the way the iotkit v2.3 OTA sample (ota_example_mqtt.c) is written, compiled unchanged
 * against libota: it appends every chunk IOT_OTA_FetchYield returns to its image file and never
 * seeks back, so the file is right only if the SDK hands over bytes 0..n-1 of one image, once
 * each, in order (or OFFSET..n-1 after a resume from a breakpoint record).
 *
 * Usage: sequential_writer [output-file]            (default output file: ota.bin)
 *
 * Environment (all optional):
 *   OTA_PRODUCT_KEY, OTA_DEVICE_NAME, OTA_DEVICE_SECRET   device identity (defaults in test_device.h)
 *   OTA_FIRMWARE_VERSION   version this "build" runs (read by HAL_GetFirmwareVersion)
 *   OTA_LOG_LEVEL          none|crit|error|warning|info|debug or 0..5 (default info)
 *   OTA_PROTOCOL           aliyun (default: IOT_OTA_Init), sagoo, tencent or ucloud
 *                          (IOT_OTA_InitWithProtocol)
 *   OTA_BUF_LEN            bytes per IOT_OTA_FetchYield, 1..65536 (default 5000, as the sample)
 *   OTA_FETCH_TIMEOUT_S    timeout of each IOT_OTA_FetchYield in seconds (default 1, as the sample)
 *   OTA_TIMEOUT_S          bound of the whole run in seconds (default 120)
 *   OTA_CYCLES             upgrade cycles (default 1, as the sample): after an INVALID cycle the
 *                          writer waits for the next upgrade, up to this many cycles in all
 *   OTA_BREAKPOINT_FILE    keep the breakpoint record in this file, through the writer's own
 *                          IOT_OTA_SetBreakpointStore callbacks (resume after a restart)
 *   OTA_ABORT_AFTER_SAVE   N: abort() right after the N-th successful save (a power cut)
 *   OTA_FRESH_URL_WAIT_S   seconds an expired URL waits for a fresh one (extension
 *                          IOT_OTA_SetFreshUrlWait; default: the SDK's, 60 s)
 *   IOTX_MQTT_HOST, IOTX_MQTT_PORT   read by IOT_SetupConnInfo: point at a private broker
 *
 * Each cycle ends with one line "writer: cycle N -> VALID|INVALID|TIMEOUT|ERROR" on stdout.
 * Exit code (of the last cycle): 0 VALID (CHECK_FIRMWARE 1, the new version reported),
 * 2 INVALID (CHECK_FIRMWARE 0), 3 the download did not end within OTA_TIMEOUT_S, 1 any other
 * error. With OTA_ABORT_AFTER_SAVE the process dies by SIGABRT.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "iot_import.h"
#include "iot_export.h"
#include "test_device.h"


#define MQTT_MSGLEN             (2048)
#define OTA_BUF_LEN             (5000)
#define OTA_BUF_LEN_MAX         (64 * 1024)
#define OTA_FETCH_TIMEOUT_S     (1)
#define OTA_TIMEOUT_S           (120)
#define OTA_OUTPUT_FILE         "ota.bin"
#define BREAKPOINT_PATH_MAX     (480)
/* Small enough that a 300 KB image gets many saves, so a cut can fall anywhere. */
#define SAVE_EVERY_BYTES        (16 * 1024)
/* How long the last reports get to reach the broker before the writer exits. */
#define FLUSH_MS                (1000)

#define RC_VALID                (0)
#define RC_FAILED               (1)
#define RC_INVALID              (2)
#define RC_TIMEOUT              (3)

/* The "flash sector" of the breakpoint record: a file, replaced whole on each save. */
typedef struct {
    char path[BREAKPOINT_PATH_MAX];
    char tmp_path[BREAKPOINT_PATH_MAX + 4];
    long abort_after;
    long saves;
} breakpoint_file_t;

typedef struct {
    void *pclient;
    void *h_ota;
    const char *output;
    const char *protocol;
    char *buf_ota;
    uint32_t buf_len;
    uint32_t fetch_timeout_s;
    uint64_t deadline_ms;
} writer_t;

static void event_handle(void *pcontext, void *pclient, iotx_mqtt_event_msg_pt msg)
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

static void *mqtt_connect(const device_identity_t *id, char *msg_buf, char *msg_readbuf)
{
    iotx_conn_info_pt pconn_info = NULL;
    iotx_mqtt_param_t mqtt_params;

    if (0 != IOT_SetupConnInfo(id->product_key, id->device_name, id->device_secret, (void **)&pconn_info)) {
        EXAMPLE_TRACE("AUTH request failed!");
        return NULL;
    }
    EXAMPLE_TRACE("connecting to %s:%u", pconn_info->host_name, (unsigned int)pconn_info->port);

    memset(&mqtt_params, 0x0, sizeof(mqtt_params));
    mqtt_params.port = pconn_info->port;
    mqtt_params.host = pconn_info->host_name;
    mqtt_params.client_id = pconn_info->client_id;
    mqtt_params.username = pconn_info->username;
    mqtt_params.password = pconn_info->password;
    mqtt_params.pub_key = pconn_info->pub_key;

    mqtt_params.request_timeout_ms = 2000;
    mqtt_params.clean_session = 0;
    mqtt_params.keepalive_interval_ms = 60000;
    mqtt_params.pread_buf = msg_readbuf;
    mqtt_params.read_buf_size = MQTT_MSGLEN;
    mqtt_params.pwrite_buf = msg_buf;
    mqtt_params.write_buf_size = MQTT_MSGLEN;

    mqtt_params.handle_event.h_fp = event_handle;
    mqtt_params.handle_event.pcontext = NULL;

    return IOT_MQTT_Construct(&mqtt_params);
}

/* ---- breakpoint store: the record in a file, replaced by write-then-rename ---- */

static int bp_load(void *ctx, uint8_t *buf, uint32_t buf_len)
{
    breakpoint_file_t *bp = (breakpoint_file_t *)ctx;
    FILE *fp = fopen(bp->path, "rb");
    size_t n;

    if (NULL == fp) {
        return errno == ENOENT ? 0 : -1;
    }
    n = fread(buf, 1, buf_len, fp);
    if (ferror(fp)) {
        fclose(fp);
        return -1;
    }
    fclose(fp);
    return (int)n;
}

static int bp_save(void *ctx, const uint8_t *buf, uint32_t len)
{
    breakpoint_file_t *bp = (breakpoint_file_t *)ctx;
    FILE *fp = fopen(bp->tmp_path, "wb");
    int ok;

    if (NULL == fp) {
        return -1;
    }
    ok = fwrite(buf, 1, len, fp) == len;
    ok = (0 == fclose(fp)) && ok;
    /* abort() ends the process, not the kernel: a record that reached the kernel survives it,
     * and the rename replaces the old one whole. */
    if (!ok || 0 != rename(bp->tmp_path, bp->path)) {
        return -1;
    }
    bp->saves++;
    if (bp->abort_after > 0 && bp->saves == bp->abort_after) {
        HAL_Printf("writer: abort() after save %ld\n", bp->saves);
        fflush(stdout);
        abort();
    }
    return 0;
}

static int bp_erase(void *ctx)
{
    breakpoint_file_t *bp = (breakpoint_file_t *)ctx;

    if (0 != unlink(bp->path) && errno != ENOENT) {
        return -1;
    }
    return 0;
}

/* Registers the file store when OTA_BREAKPOINT_FILE is set; must come before ReportVersion. */
static int setup_breakpoint_store(void *h_ota, breakpoint_file_t *bp)
{
    const char *path = getenv("OTA_BREAKPOINT_FILE");
    ota_breakpoint_store_t store;
    int rc;

    if (NULL == path || path[0] == '\0') {
        return 0;
    }
    if (copy_field(bp->path, sizeof(bp->path), path, "OTA_BREAKPOINT_FILE") != 0) {
        return -1;
    }
    memcpy(bp->tmp_path, bp->path, strlen(bp->path));
    memcpy(bp->tmp_path + strlen(bp->path), ".tmp", 5);
    bp->abort_after = env_long("OTA_ABORT_AFTER_SAVE", 0);
    bp->saves = 0;

    store.load = bp_load;
    store.save = bp_save;
    store.erase = bp_erase;
    store.ctx = bp;
    rc = IOT_OTA_SetBreakpointStore(h_ota, &store);
    if (0 == rc) {
        rc = IOT_OTA_SetSaveInterval(h_ota, SAVE_EVERY_BYTES, 0);
    }
    if (0 != rc) {
        EXAMPLE_TRACE("breakpoint store not set, rc = %d", rc);
        return -1;
    }
    EXAMPLE_TRACE("breakpoint record in %s (abort after save %ld)", bp->path, bp->abort_after);
    return 0;
}

/* ---- one upgrade cycle ---- */

static void yield_for(writer_t *w, int total_ms)
{
    uint64_t until = HAL_UptimeMs() + (uint64_t)total_ms;

    while (HAL_UptimeMs() < until) {
        IOT_MQTT_Yield(w->pclient, 200);
    }
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
        /* The SDK resumes past bytes this writer never got: they are lost for good. */
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
static int download(writer_t *w, FILE *fp)
{
    uint32_t size_downloaded = 0, size_file = 0;
    char version[OTA_VERSION_LEN_MAX] = { 0 };
    char md5sum[33] = { 0 };
    int last_percent = -1, percent, len;

    do {
        len = IOT_OTA_FetchYield(w->h_ota, w->buf_ota, w->buf_len, w->fetch_timeout_s);
        if (len > 0) {
            /* A flash write is synchronous: once FetchYield returned the bytes, a kill keeps them. */
            if (1 != fwrite(w->buf_ota, (size_t)len, 1, fp) || 0 != fflush(fp)) {
                EXAMPLE_TRACE("write data to file failed");
                return RC_FAILED;
            }
        } else {
            IOT_OTA_ReportProgress(w->h_ota, IOT_OTAP_FETCH_FAILED, NULL);
            EXAMPLE_TRACE("ota fetch fail, rc = %d", len);
        }

        /* get OTA information */
        IOT_OTA_Ioctl(w->h_ota, IOT_OTAG_FETCHED_SIZE, &size_downloaded, 4);
        IOT_OTA_Ioctl(w->h_ota, IOT_OTAG_FILE_SIZE, &size_file, 4);
        (void)IOT_OTA_Ioctl(w->h_ota, IOT_OTAG_MD5SUM, md5sum, sizeof(md5sum));
        IOT_OTA_Ioctl(w->h_ota, IOT_OTAG_VERSION, version, sizeof(version));

        if (size_file > 0) {
            /* 64-bit: a 32-bit fetched * 100 overflows above 42 MB. The first value may be 0. */
            percent = (int)((uint64_t)size_downloaded * 100 / size_file);
            if (percent > last_percent) {
                IOT_OTA_ReportProgress(w->h_ota, (IOT_OTA_Progress_t)percent, NULL);
                last_percent = percent;
            }
        }
        IOT_MQTT_Yield(w->pclient, 100);
        if (HAL_UptimeMs() > w->deadline_ms) {
            EXAMPLE_TRACE("the download did not end within OTA_TIMEOUT_S (at %u of %u bytes)",
                          (unsigned int)size_downloaded, (unsigned int)size_file);
            return RC_TIMEOUT;
        }
    } while (!IOT_OTA_IsFetchFinish(w->h_ota));
    return RC_VALID;
}

/* The valid image is in place: report it in the protocol's terms. */
static int report_new_version(writer_t *w, const char *version)
{
    int rc;

    if (0 == strcmp(w->protocol, "tencent") || 0 == strcmp(w->protocol, "ucloud")) {
        IOT_OTA_ReportUpgradeBegin(w->h_ota);
        rc = IOT_OTA_ReportUpgradeSuccess(w->h_ota, version);
    } else {
        rc = IOT_OTA_ReportVersion(w->h_ota, version);
    }
    if (0 != rc) {
        EXAMPLE_TRACE("reporting version %s failed, rc = %d", version, rc);
        return RC_FAILED;
    }
    EXAMPLE_TRACE("reported new version %s", version);
    return RC_VALID;
}

static int upgrade_cycle(writer_t *w, int cycle)
{
    uint32_t offset = 0, firmware_valid = 0;
    char version[OTA_VERSION_LEN_MAX] = { 0 };
    FILE *fp;
    int rc;

    EXAMPLE_TRACE("cycle %d: wait ota upgrade command....", cycle);
    for (;;) {
        IOT_MQTT_Yield(w->pclient, 200);
        if (IOT_OTA_IsFetching(w->h_ota)) {
            break;
        }
        if (HAL_UptimeMs() > w->deadline_ms) {
            EXAMPLE_TRACE("no upgrade command within OTA_TIMEOUT_S");
            return RC_TIMEOUT;
        }
    }
    /* Read once: where this download starts (0, or the resume offset after a restart). */
    IOT_OTA_Ioctl(w->h_ota, IOT_OTAG_FETCHED_SIZE, &offset, 4);
    IOT_OTA_Ioctl(w->h_ota, IOT_OTAG_VERSION, version, sizeof(version));
    HAL_Printf("writer: cycle %d fetching %s from byte %u\n", cycle, version, (unsigned int)offset);
    fp = open_image_at(w->output, offset);
    if (NULL == fp) {
        return RC_FAILED;
    }
    rc = download(w, fp);
    if (0 != fclose(fp) && rc == RC_VALID) {
        EXAMPLE_TRACE("closing %s failed", w->output);
        rc = RC_FAILED;
    }
    if (rc != RC_VALID) {
        return rc;
    }

    if (0 != IOT_OTA_Ioctl(w->h_ota, IOT_OTAG_CHECK_FIRMWARE, &firmware_valid, 4)) {
        EXAMPLE_TRACE("CHECK_FIRMWARE failed, last error = %d", IOT_OTA_GetLastError(w->h_ota));
        return RC_FAILED;
    }
    IOT_OTA_Ioctl(w->h_ota, IOT_OTAG_VERSION, version, sizeof(version));
    if (0 == firmware_valid) {
        EXAMPLE_TRACE("The firmware is invalid");
        yield_for(w, FLUSH_MS);
        return RC_INVALID;
    }
    EXAMPLE_TRACE("The firmware is valid");
    rc = report_new_version(w, version);
    yield_for(w, FLUSH_MS);
    return rc;
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
    static breakpoint_file_t bp;
    device_identity_t id;
    writer_t w;
    char *msg_buf = NULL, *msg_readbuf = NULL;
    long cycles = env_long("OTA_CYCLES", 1);
    long cycle;
    int rc = RC_FAILED;

    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(&w, 0, sizeof(w));
    w.output = argc > 1 ? argv[1] : OTA_OUTPUT_FILE;
    w.protocol = env_or("OTA_PROTOCOL", "aliyun");
    w.buf_len = (uint32_t)env_long("OTA_BUF_LEN", OTA_BUF_LEN);
    if (w.buf_len > OTA_BUF_LEN_MAX) {
        w.buf_len = OTA_BUF_LEN_MAX;
    }
    w.fetch_timeout_s = (uint32_t)env_long("OTA_FETCH_TIMEOUT_S", OTA_FETCH_TIMEOUT_S);
    w.deadline_ms = HAL_UptimeMs() + 1000 * (uint64_t)env_long("OTA_TIMEOUT_S", OTA_TIMEOUT_S);

    IOT_OpenLog("writer");
    IOT_SetLogLevel((IOT_LogLevel)log_level_from_env());

    if (setup_identity(&id) != 0) {
        goto do_exit;
    }
    w.buf_ota = (char *)HAL_Malloc(w.buf_len);
    msg_buf = (char *)HAL_Malloc(MQTT_MSGLEN);
    msg_readbuf = (char *)HAL_Malloc(MQTT_MSGLEN);
    if (NULL == w.buf_ota || NULL == msg_buf || NULL == msg_readbuf) {
        EXAMPLE_TRACE("not enough memory");
        goto do_exit;
    }
    EXAMPLE_TRACE("%s, fetch buffer %u bytes, FetchYield timeout %u s, writing to %s", w.protocol,
                  (unsigned int)w.buf_len, (unsigned int)w.fetch_timeout_s, w.output);

    w.pclient = mqtt_connect(&id, msg_buf, msg_readbuf);
    if (NULL == w.pclient) {
        EXAMPLE_TRACE("MQTT construct failed");
        goto do_exit;
    }
    w.h_ota = ota_init(w.protocol, &id, w.pclient);
    if (NULL == w.h_ota) {
        EXAMPLE_TRACE("initialize OTA failed");
        goto do_exit;
    }
    if (setup_breakpoint_store(w.h_ota, &bp) != 0) {
        goto do_exit;
    }
    if (env_long("OTA_FRESH_URL_WAIT_S", 0) > 0
        && 0 != IOT_OTA_SetFreshUrlWait(w.h_ota, (uint32_t)env_long("OTA_FRESH_URL_WAIT_S", 0))) {
        EXAMPLE_TRACE("IOT_OTA_SetFreshUrlWait failed");
        goto do_exit;
    }
    if (0 != IOT_OTA_ReportVersion(w.h_ota, id.firmware_version)) {
        EXAMPLE_TRACE("report OTA version failed");
        goto do_exit;
    }

    for (cycle = 1; cycle <= cycles; cycle++) {
        rc = upgrade_cycle(&w, (int)cycle);
        HAL_Printf("writer: cycle %ld -> %s\n", cycle, rc_name(rc));
        /* Only a rejected image makes the device wait for another upgrade (a superseded one). */
        if (rc != RC_INVALID) {
            break;
        }
    }

do_exit:
    EXAMPLE_TRACE("exit, rc = %d", rc);
    if (NULL != w.h_ota) {
        IOT_OTA_Deinit(w.h_ota);
    }
    if (NULL != w.pclient) {
        IOT_MQTT_Destroy(&w.pclient);
    }
    HAL_Free(w.buf_ota);
    HAL_Free(msg_buf);
    HAL_Free(msg_readbuf);
    IOT_CloseLog();
    return rc;
}
