/*
 * package_example.c: firmware that installs a whole package (an upgrade of several files, as
 * SagooIOT and Aliyun send them in a `files` array) and, optionally, downloads it over the MQTT
 * connection itself (`dProtocol` mqtt) instead of HTTP(S). Written the way iotkit v2.3 firmware
 * is (ota/ota_example_mqtt.c), compiled against libota; self-contained on purpose, customers
 * copy it. Comments marked PACKAGE say where it differs from the single-image sample.
 *
 * The package is walked with the sample's loop once per file (see src/ffi/package.rs):
 *   wait for IOT_OTA_IsFetching; ask which file (IOT_OTAG_FILE_INDEX / _COUNT / _NAME / _SIZE)
 *   and where it starts (IOT_OTAG_FETCHED_SIZE: 0, or the resume offset after a restart);
 *   append what IOT_OTA_FetchYield returns to OUTPUT_DIR/<file name> until IOT_OTA_IsFetchFinish;
 *   IOT_OTAG_CHECK_FIRMWARE for that file; next file. When the last file is valid the device
 *   reports the package's version, once, as it would after rebooting into it.
 * A single image (no `files` array) is the same loop run once; it is written to
 * OUTPUT_DIR/firmware.bin since it has no name.
 *
 * Usage: package_example [output-dir]                 (default: ota_package, created if missing)
 *
 * Environment (all optional):
 *   OTA_PRODUCT_KEY, OTA_DEVICE_NAME, OTA_DEVICE_SECRET   device identity (defaults below)
 *   OTA_FIRMWARE_VERSION   version this "build" runs (read by HAL_GetFirmwareVersion)
 *   OTA_LOG_LEVEL          none|crit|error|warning|info|debug or 0..5 (default info)
 *   OTA_PROTOCOL           aliyun (default: IOT_OTA_Init) or sagoo (IOT_OTA_InitWithProtocol);
 *                          Tencent and UCloud have no packages and no download over MQTT
 *   OTA_MAX_FILES          files a package may hold, 1..16 (default 8; IOT_OTAC_MAX_FILES)
 *   OTA_MQTT_BLOCK_SIZE    bytes per block: download over MQTT when the platform says so
 *                          (IOT_OTAC_MQTT_BLOCK_SIZE; unset: such upgrades are refused)
 *   OTA_BUF_LEN            bytes per IOT_OTA_FetchYield, 1..65536 (default 5000, as the sample)
 *   OTA_TIMEOUT_S          overall deadline in seconds (default 120)
 *   OTA_ABORT_AFTER_BYTES  N: abort() once this run has stored N bytes of the package, like a
 *                          power cut (for the resume tests; the restart resumes from the
 *                          breakpoint record in OUTPUT_DIR)
 *   IOTX_MQTT_HOST, IOTX_MQTT_PORT   read by IOT_SetupConnInfo: point at a private broker
 *
 * Lines for scripts (stdout): "package: file I/N NAME, SIZE bytes, from byte OFFSET" when a
 * file starts (I from 1), "package: file I/N NAME -> VALID|INVALID" when it was checked, and
 * "package: VERSION -> VALID|INVALID|TIMEOUT|ERROR" at the end.
 * Exit code: 0 the whole package installed and its version reported, 1 error, 2 a file was
 * invalid (the platform has been told, once, for the package), 3 timeout.
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

#define PRODUCT_KEY             "a1OtaExmpPk"
#define DEVICE_NAME             "ota_example_device"
#define DEVICE_SECRET           "ExampleSecretExampleSecretExampl"

#define MQTT_MSGLEN             (2048)
/* PACKAGE: a block's reply frame must fit the MQTT read buffer: the block, a JSON header of up
 * to 512 bytes, the topic and the packet's own header. */
#define MQTT_BLOCK_FRAME_ROOM   (1024)
#define OTA_BUF_LEN             (5000)
#define OTA_BUF_LEN_MAX         (64 * 1024)
#define OTA_TIMEOUT_S           (120)
#define OTA_OUTPUT_DIR          "ota_package"
/* PACKAGE: the SDK's file names are at most 64 bytes (docs/packages.md). */
#define FILE_NAME_MAXLEN        (64)
#define PATH_MAXLEN             (512)
#define MAX_FILES_DEFAULT       (8)
/* The breakpoint record lives beside the files; a package file cannot take its name, since
 * names starting with '.' are refused below. */
#define BREAKPOINT_NAME         ".ota-breakpoint"
/* A single image has no name in the upgrade message. */
#define SINGLE_IMAGE_NAME       "firmware.bin"

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

typedef struct {
    const char *dir;
    void *pclient;
    void *h_ota;
    char *buf_ota;
    uint32_t buf_len;
    uint64_t deadline_ms;
    /* The power-cut knob: bytes stored by this run, and the count that ends it (0: never). */
    uint64_t stored;
    uint64_t abort_after;
} device_t;

/* The file being fetched, as the SDK describes it when its cycle starts. */
typedef struct {
    uint32_t index;
    uint32_t count;
    uint32_t size;
    uint32_t offset;
    char name[FILE_NAME_MAXLEN + 1];
} package_file_t;

static const char *env_or(const char *name, const char *fallback)
{
    const char *value = getenv(name);
    return (value != NULL && value[0] != '\0') ? value : fallback;
}

static long env_long(const char *name, long fallback)
{
    long value = strtol(env_or(name, "0"), NULL, 10);
    return value > 0 ? value : fallback;
}

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
        case IOTX_MQTT_EVENT_BUFFER_OVERFLOW:
            EXAMPLE_TRACE("buffer overflow");
            break;
        default:
            break;
    }
}

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

/* Copies an identity field, refusing (not truncating) one that does not fit its buffer. */
static int copy_field(char *dst, size_t dst_len, const char *src, const char *what)
{
    if (strlen(src) >= dst_len) {
        EXAMPLE_TRACE("%s is longer than %u characters", what, (unsigned int)(dst_len - 1));
        return -1;
    }
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

/* Stores the triple through the HAL, as v2.3 firmware does. */
static int setup_identity(device_identity_t *id)
{
    memset(id, 0, sizeof(*id));
    if (copy_field(id->product_key, sizeof(id->product_key), env_or("OTA_PRODUCT_KEY", PRODUCT_KEY), "product key") != 0
        || copy_field(id->device_name, sizeof(id->device_name), env_or("OTA_DEVICE_NAME", DEVICE_NAME), "device name") != 0
        || copy_field(id->device_secret, sizeof(id->device_secret), env_or("OTA_DEVICE_SECRET", DEVICE_SECRET), "device secret") != 0) {
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

static void *mqtt_connect(const device_identity_t *id, char *msg_buf, char *msg_readbuf,
                          uint32_t readbuf_len)
{
    iotx_conn_info_pt pconn_info = NULL;
    iotx_mqtt_param_t mqtt_params;

    if (0 != IOT_SetupConnInfo(id->product_key, id->device_name, id->device_secret, (void **)&pconn_info)) {
        EXAMPLE_TRACE("AUTH request failed!");
        return NULL;
    }
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
    mqtt_params.read_buf_size = readbuf_len;
    mqtt_params.pwrite_buf = msg_buf;
    mqtt_params.write_buf_size = MQTT_MSGLEN;

    mqtt_params.handle_event.h_fp = event_handle;
    mqtt_params.handle_event.pcontext = NULL;

    return IOT_MQTT_Construct(&mqtt_params);
}

/* The OTA module, set up before the version report that may bring an upgrade. */
static void *ota_init(device_t *d, const device_identity_t *id, uint32_t block_size)
{
    const char *protocol = env_or("OTA_PROTOCOL", "aliyun");
    uint32_t max_files = (uint32_t)env_long("OTA_MAX_FILES", MAX_FILES_DEFAULT);
    char record[PATH_MAXLEN];
    void *h_ota;

    if (0 == strcmp(protocol, "aliyun")) {
        h_ota = IOT_OTA_Init(id->product_key, id->device_name, d->pclient);
    } else if (0 == strcmp(protocol, "sagoo")) {
        h_ota = IOT_OTA_InitWithProtocol(id->product_key, id->device_name, d->pclient, IOT_OTA_PROTOCOL_SAGOO);
    } else {
        EXAMPLE_TRACE("OTA_PROTOCOL %s: packages exist on aliyun and sagoo only", protocol);
        return NULL;
    }
    if (NULL == h_ota) {
        return NULL;
    }
    /* Before ReportVersion, so a download cut by a power loss resumes after the restart. */
    if (snprintf(record, sizeof(record), "%s/%s", d->dir, BREAKPOINT_NAME) >= (int)sizeof(record)
        || 0 != IOT_OTA_SetBreakpointFile(h_ota, record)) {
        EXAMPLE_TRACE("breakpoint file %s/%s not set", d->dir, BREAKPOINT_NAME);
        goto fail;
    }
    /* PACKAGE: off by default, so firmware that does not walk files never takes a package's
     * first file for the whole upgrade. */
    if (0 != IOT_OTA_Ioctl(h_ota, IOT_OTAC_MAX_FILES, &max_files, 4)) {
        EXAMPLE_TRACE("IOT_OTAC_MAX_FILES %u refused", (unsigned int)max_files);
        goto fail;
    }
    /* PACKAGE: blocks over this MQTT connection when the platform sends `dProtocol` mqtt. */
    if (block_size > 0 && 0 != IOT_OTA_Ioctl(h_ota, IOT_OTAC_MQTT_BLOCK_SIZE, &block_size, 4)) {
        EXAMPLE_TRACE("IOT_OTAC_MQTT_BLOCK_SIZE %u refused, last error = %d", (unsigned int)block_size,
                      IOT_OTA_GetLastError(h_ota));
        goto fail;
    }
    EXAMPLE_TRACE("%s, up to %u files, MQTT download blocks %u bytes (0: off), breakpoint record %s",
                  protocol, (unsigned int)max_files, (unsigned int)block_size, record);
    return h_ota;

fail:
    IOT_OTA_Deinit(h_ota);
    return NULL;
}

/* PACKAGE: the name comes from the platform and becomes a path: only a plain name inside the
 * output directory is accepted. */
static int file_name_is_safe(const char *name)
{
    return name[0] != '\0' && name[0] != '.' && NULL == strchr(name, '/') && NULL == strchr(name, '\\');
}

/* PACKAGE: which file this cycle fetches, and from where. */
static int describe_file(device_t *d, package_file_t *f)
{
    memset(f, 0, sizeof(*f));
    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FILE_COUNT, &f->count, 4);
    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FILE_INDEX, &f->index, 4);
    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FILE_SIZE, &f->size, 4);
    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FETCHED_SIZE, &f->offset, 4);
    if (0 != IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FILE_NAME, f->name, sizeof(f->name))) {
        EXAMPLE_TRACE("file name longer than %d bytes", FILE_NAME_MAXLEN);
        return -1;
    }
    if (f->name[0] == '\0') {
        memcpy(f->name, SINGLE_IMAGE_NAME, sizeof(SINGLE_IMAGE_NAME));
    }
    if (!file_name_is_safe(f->name)) {
        EXAMPLE_TRACE("file name \"%s\" is not a plain file name", f->name);
        return -1;
    }
    return 0;
}

/* The file's storage opened for appending at `offset`: what a restart kept before it stays,
 * anything after it (bytes stored after the last breakpoint save) is cut off. */
static FILE *open_file_at(const char *path, uint32_t offset)
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
        EXAMPLE_TRACE("%s holds %lld bytes, fewer than the resume offset %u", path,
                      (long long)st.st_size, (unsigned int)offset);
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

/* The sample's download loop for one file: appends, never seeks back, reports FETCH_FAILED on
 * every FetchYield that returns <= 0, and leaves only when IsFetchFinish says so. */
static int download_file(device_t *d, FILE *fp)
{
    uint32_t size_downloaded = 0, size_file = 0;
    int last_percent = 0, percent, len;

    do {
        len = IOT_OTA_FetchYield(d->h_ota, d->buf_ota, d->buf_len, 1);
        if (len > 0) {
            if (1 != fwrite(d->buf_ota, (size_t)len, 1, fp) || 0 != fflush(fp)) {
                EXAMPLE_TRACE("write data to file failed");
                IOT_OTA_ReportProgress(d->h_ota, IOT_OTAP_BURN_FAILED, "write to storage failed");
                return RC_FAILED;
            }
            d->stored += (uint64_t)len;
            if (d->abort_after > 0 && d->stored >= d->abort_after) {
                HAL_Printf("package: abort() after %llu bytes\n", (unsigned long long)d->stored);
                fflush(stdout);
                abort();
            }
        } else {
            IOT_OTA_ReportProgress(d->h_ota, IOT_OTAP_FETCH_FAILED, NULL);
            EXAMPLE_TRACE("ota fetch fail, rc = %d", len);
        }

        /* PACKAGE: the percent of this file; the SDK reports the package's byte-weighted one. */
        IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FETCHED_SIZE, &size_downloaded, 4);
        IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FILE_SIZE, &size_file, 4);
        if (size_file > 0 && !IOT_OTA_IsFetchFinish(d->h_ota)) {
            /* 64-bit: a 32-bit fetched * 100 overflows above 42 MB */
            percent = (int)((uint64_t)size_downloaded * 100 / size_file);
            if (percent > last_percent) {
                IOT_OTA_ReportProgress(d->h_ota, (IOT_OTA_Progress_t)percent, NULL);
                last_percent = percent;
            }
        }
        /* One non-blocking pass sends the queued report; over MQTT, FetchYield drives the
         * connection itself while it waits for a block. */
        IOT_MQTT_Yield(d->pclient, 0);
        if (HAL_UptimeMs() > d->deadline_ms) {
            EXAMPLE_TRACE("the download did not end within OTA_TIMEOUT_S (at %u of %u bytes)",
                          (unsigned int)size_downloaded, (unsigned int)size_file);
            return RC_TIMEOUT;
        }
    } while (!IOT_OTA_IsFetchFinish(d->h_ota));
    return RC_VALID;
}

static int wait_for_file(device_t *d)
{
    while (!IOT_OTA_IsFetching(d->h_ota)) {
        if (HAL_UptimeMs() > d->deadline_ms) {
            EXAMPLE_TRACE("no upgrade (or next file) within OTA_TIMEOUT_S");
            return RC_TIMEOUT;
        }
        IOT_MQTT_Yield(d->pclient, 200);
    }
    return RC_VALID;
}

/* One file of the package: wait for its cycle, store it, check it. */
static int install_file(device_t *d, package_file_t *f)
{
    char path[PATH_MAXLEN];
    uint32_t firmware_valid = 0;
    FILE *fp;
    int rc;

    rc = wait_for_file(d);
    if (rc != RC_VALID) {
        return rc;
    }
    if (describe_file(d, f) != 0) {
        IOT_OTA_ReportProgress(d->h_ota, IOT_OTAP_BURN_FAILED, "bad file name");
        return RC_FAILED;
    }
    HAL_Printf("package: file %u/%u %s, %u bytes, from byte %u\n", (unsigned int)f->index + 1,
               (unsigned int)f->count, f->name, (unsigned int)f->size, (unsigned int)f->offset);
    if (snprintf(path, sizeof(path), "%s/%s", d->dir, f->name) >= (int)sizeof(path)
        || NULL == (fp = open_file_at(path, f->offset))) {
        IOT_OTA_ReportProgress(d->h_ota, IOT_OTAP_BURN_FAILED, "cannot open the file");
        return RC_FAILED;
    }
    rc = download_file(d, fp);
    if (0 != fclose(fp) && rc == RC_VALID) {
        EXAMPLE_TRACE("closing %s failed", path);
        IOT_OTA_ReportProgress(d->h_ota, IOT_OTAP_BURN_FAILED, "write to storage failed");
        rc = RC_FAILED;
    }
    if (rc != RC_VALID) {
        return rc;
    }
    /* PACKAGE: each file is checked on its own (its digest, the image policy). */
    if (0 != IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_CHECK_FIRMWARE, &firmware_valid, 4)) {
        EXAMPLE_TRACE("CHECK_FIRMWARE failed, last error = %d", IOT_OTA_GetLastError(d->h_ota));
        return RC_FAILED;
    }
    HAL_Printf("package: file %u/%u %s -> %s\n", (unsigned int)f->index + 1, (unsigned int)f->count,
               f->name, firmware_valid ? "VALID" : "INVALID");
    return firmware_valid ? RC_VALID : RC_INVALID;
}

/* PACKAGE: the files in order until one is invalid or the last one is in. */
static int install_package(device_t *d, char *version, size_t version_len)
{
    package_file_t f;
    int rc;

    memset(&f, 0, sizeof(f));
    EXAMPLE_TRACE("wait ota upgrade command....");
    do {
        rc = install_file(d, &f);
        IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_VERSION, version, version_len);
    } while (rc == RC_VALID && f.index + 1 < f.count);
    return rc;
}

/* Lets the last reports reach the broker. */
static void flush_reports(device_t *d)
{
    int i;

    for (i = 0; i < 5; i++) {
        IOT_MQTT_Yield(d->pclient, 200);
    }
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
    device_t d;
    device_identity_t id;
    char version[OTA_VERSION_LEN_MAX] = { 0 };
    char *msg_buf = NULL, *msg_readbuf = NULL;
    uint32_t block_size = (uint32_t)env_long("OTA_MQTT_BLOCK_SIZE", 0);
    uint32_t readbuf_len = MQTT_MSGLEN;
    int rc = RC_FAILED;

    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(&d, 0, sizeof(d));
    d.dir = argc > 1 ? argv[1] : OTA_OUTPUT_DIR;
    d.buf_len = (uint32_t)env_long("OTA_BUF_LEN", OTA_BUF_LEN);
    if (d.buf_len > OTA_BUF_LEN_MAX) {
        d.buf_len = OTA_BUF_LEN_MAX;
    }
    d.deadline_ms = HAL_UptimeMs() + 1000 * (uint64_t)env_long("OTA_TIMEOUT_S", OTA_TIMEOUT_S);
    d.abort_after = (uint64_t)env_long("OTA_ABORT_AFTER_BYTES", 0);
    if (block_size > 0 && block_size + MQTT_BLOCK_FRAME_ROOM > readbuf_len) {
        readbuf_len = block_size + MQTT_BLOCK_FRAME_ROOM;
    }

    IOT_OpenLog("package");
    IOT_SetLogLevel((IOT_LogLevel)log_level_from_env());

    if (setup_identity(&id) != 0) {
        goto do_exit;
    }
    if (0 != mkdir(d.dir, 0755) && errno != EEXIST) {
        EXAMPLE_TRACE("cannot create the output directory %s", d.dir);
        goto do_exit;
    }
    d.buf_ota = (char *)HAL_Malloc(d.buf_len);
    msg_buf = (char *)HAL_Malloc(MQTT_MSGLEN);
    msg_readbuf = (char *)HAL_Malloc(readbuf_len);
    if (NULL == d.buf_ota || NULL == msg_buf || NULL == msg_readbuf) {
        EXAMPLE_TRACE("not enough memory");
        goto do_exit;
    }
    d.pclient = mqtt_connect(&id, msg_buf, msg_readbuf, readbuf_len);
    if (NULL == d.pclient) {
        EXAMPLE_TRACE("MQTT construct failed");
        goto do_exit;
    }
    d.h_ota = ota_init(&d, &id, block_size);
    if (NULL == d.h_ota) {
        EXAMPLE_TRACE("initialize OTA failed");
        goto do_exit;
    }
    if (0 != IOT_OTA_ReportVersion(d.h_ota, id.firmware_version)) {
        EXAMPLE_TRACE("report OTA version failed");
        goto do_exit;
    }

    rc = install_package(&d, version, sizeof(version));
    if (rc == RC_VALID) {
        /* Every file is in place: a reboot into the package would report its version. */
        if (0 != IOT_OTA_ReportVersion(d.h_ota, version)) {
            EXAMPLE_TRACE("reporting version %s failed", version);
            rc = RC_FAILED;
        }
    }
    /* A failed file was reported by the SDK (CHECK_FIRMWARE 0): one report for the package. */
    flush_reports(&d);
    HAL_Printf("package: %s -> %s\n", version[0] != '\0' ? version : "(none)", rc_name(rc));

do_exit:
    EXAMPLE_TRACE("exit, rc = %d", rc);
    if (NULL != d.h_ota) {
        IOT_OTA_Deinit(d.h_ota);
    }
    if (NULL != d.pclient) {
        IOT_MQTT_Destroy(&d.pclient);
    }
    HAL_Free(d.buf_ota);
    HAL_Free(msg_buf);
    HAL_Free(msg_readbuf);
    IOT_CloseLog();
    return rc;
}
