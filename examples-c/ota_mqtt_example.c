/*
 * ota_mqtt_example.c: firmware upgrade over MQTT + HTTPS, written the way Aliyun iotkit v2.3
 * firmware is (its samples mqtt/mqtt_example.c and ota/ota_example_mqtt.c), compiled unchanged
 * against libota. Self-contained on purpose: customers copy it, and ota-cloud's demo and
 * ota-bench compile it alone (the test devices share test_device.c instead).
 *
 * Usage: ota_mqtt_example [output-file]            (default output file: ota.bin)
 *
 * Environment (all optional):
 *   OTA_PRODUCT_KEY, OTA_DEVICE_NAME, OTA_DEVICE_SECRET   device identity (defaults below)
 *   OTA_FIRMWARE_VERSION   version this "build" runs (read by HAL_GetFirmwareVersion)
 *   OTA_LOG_LEVEL          none|crit|error|warning|info|debug or 0..5 (default info)
 *   OTA_BUF_LEN            bytes per IOT_OTA_FetchYield, 1..65536 (default 5000, as the sample)
 *   OTA_TIMEOUT_S          overall deadline in seconds (default 120)
 *   OTA_PROTOCOL           aliyun (default: IOT_OTA_Init), sagoo, tencent or ucloud
 *                          (IOT_OTA_InitWithProtocol)
 *   OTA_IMAGE_KEY          the vendor's public key(s) that images must be signed with (MCUboot
 *                          imgtool format): PEM files from `imgtool getpub -e pem`,
 *                          ':'-separated for key rotation
 *   OTA_REQUIRE_SIGNATURE  1 (default, the secure way): only images signed with one of those
 *                          keys, not older than the running version, are installed; 0 accepts
 *                          any image the platform's digest accepts (not recommended: whoever
 *                          can publish the upgrade message then chooses the firmware)
 *   OTA_DELTA_OLD          path of the image this build runs (a device reads its flash): a
 *                          detools patch the platform sends is applied to it on the way and the
 *                          output file gets the new image (IOT_OTA_SetDeltaSource)
 *   IOTX_MQTT_HOST, IOTX_MQTT_PORT   read by IOT_SetupConnInfo: point at a private broker
 *
 * Exit code: 0 upgraded (new firmware written, new version reported), 1 failure (a refused
 * image prints "firmware refused: error N", N an IOT_OTAE_* code of ota.h), 2 timeout.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iot_import.h"
#include "iot_export.h"

#define PRODUCT_KEY             "a1OtaExmpPk"
#define DEVICE_NAME             "ota_example_device"
#define DEVICE_SECRET           "ExampleSecretExampleSecretExampl"

#define MQTT_MSGLEN             (2048)
#define OTA_BUF_LEN             (5000)
#define OTA_BUF_LEN_MAX         (64 * 1024)
#define OTA_TIMEOUT_S           (120)
#define OTA_OUTPUT_FILE         "ota.bin"
#define IMAGE_KEY_MAXLEN        (4096)
#define IMAGE_VERSION_MAXLEN    (32)

#define RC_OK                   (0)
#define RC_FAILED               (1)
#define RC_TIMEOUT              (2)

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

/* Everything the download loop works with, so each step stays a small function. */
typedef struct {
    void *pclient;
    void *h_ota;
    FILE *fp;
    char *buf_ota;
    uint32_t buf_len;
    uint64_t deadline_ms;
} ota_session_t;

static void event_handle(void *pcontext, void *pclient, iotx_mqtt_event_msg_pt msg)
{
    uintptr_t packet_id = (uintptr_t)msg->msg;
    iotx_mqtt_topic_info_pt topic_info = (iotx_mqtt_topic_info_pt)msg->msg;

    (void)pcontext;
    (void)pclient;

    switch (msg->event_type) {
        case IOTX_MQTT_EVENT_UNDEF:
            EXAMPLE_TRACE("undefined event occur.");
            break;
        case IOTX_MQTT_EVENT_DISCONNECT:
            EXAMPLE_TRACE("MQTT disconnect.");
            break;
        case IOTX_MQTT_EVENT_RECONNECT:
            EXAMPLE_TRACE("MQTT reconnect.");
            break;
        case IOTX_MQTT_EVENT_SUBCRIBE_SUCCESS:
            EXAMPLE_TRACE("subscribe success, packet-id=%u", (unsigned int)packet_id);
            break;
        case IOTX_MQTT_EVENT_SUBCRIBE_TIMEOUT:
            EXAMPLE_TRACE("subscribe wait ack timeout, packet-id=%u", (unsigned int)packet_id);
            break;
        case IOTX_MQTT_EVENT_SUBCRIBE_NACK:
            EXAMPLE_TRACE("subscribe nack, packet-id=%u", (unsigned int)packet_id);
            break;
        case IOTX_MQTT_EVENT_UNSUBCRIBE_SUCCESS:
            EXAMPLE_TRACE("unsubscribe success, packet-id=%u", (unsigned int)packet_id);
            break;
        case IOTX_MQTT_EVENT_UNSUBCRIBE_TIMEOUT:
            EXAMPLE_TRACE("unsubscribe timeout, packet-id=%u", (unsigned int)packet_id);
            break;
        case IOTX_MQTT_EVENT_UNSUBCRIBE_NACK:
            EXAMPLE_TRACE("unsubscribe nack, packet-id=%u", (unsigned int)packet_id);
            break;
        case IOTX_MQTT_EVENT_PUBLISH_SUCCESS:
            EXAMPLE_TRACE("publish success, packet-id=%u", (unsigned int)packet_id);
            break;
        case IOTX_MQTT_EVENT_PUBLISH_TIMEOUT:
            EXAMPLE_TRACE("publish timeout, packet-id=%u", (unsigned int)packet_id);
            break;
        case IOTX_MQTT_EVENT_PUBLISH_NACK:
            EXAMPLE_TRACE("publish nack, packet-id=%u", (unsigned int)packet_id);
            break;
        case IOTX_MQTT_EVENT_PUBLISH_RECEIVED:
            EXAMPLE_TRACE("topic message arrived but without any related handle: topic=%.*s, topic_msg=%.*s",
                          (int)topic_info->topic_len, topic_info->ptopic,
                          (int)topic_info->payload_len, topic_info->payload);
            break;
        case IOTX_MQTT_EVENT_BUFFER_OVERFLOW:
            EXAMPLE_TRACE("buffer overflow");
            break;
        default:
            EXAMPLE_TRACE("Should NOT arrive here.");
            break;
    }
}

static const char *env_or(const char *name, const char *fallback)
{
    const char *value = getenv(name);
    return (value != NULL && value[0] != '\0') ? value : fallback;
}

/* IOT_OTA_Init for Aliyun, as iotkit firmware calls it; the extension for the other platforms. */
static void *ota_init_protocol(const device_identity_t *id, void *pclient)
{
    const char *name = env_or("OTA_PROTOCOL", "aliyun");
    IOT_OTA_Protocol_t protocol;

    if (0 == strcmp(name, "aliyun")) {
        return IOT_OTA_Init(id->product_key, id->device_name, pclient);
    } else if (0 == strcmp(name, "sagoo")) {
        protocol = IOT_OTA_PROTOCOL_SAGOO;
    } else if (0 == strcmp(name, "tencent")) {
        protocol = IOT_OTA_PROTOCOL_TENCENT;
    } else if (0 == strcmp(name, "ucloud")) {
        protocol = IOT_OTA_PROTOCOL_UCLOUD;
    } else {
        EXAMPLE_TRACE("unknown OTA_PROTOCOL %s", name);
        return NULL;
    }
    return IOT_OTA_InitWithProtocol(id->product_key, id->device_name, pclient, protocol);
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

/* Adds the public key in the PEM file `path` to the keys images may be signed with. */
static int add_image_key(void *h_ota, const char *path)
{
    static char pem[IMAGE_KEY_MAXLEN];
    size_t len;
    FILE *fp = fopen(path, "rb");

    if (NULL == fp) {
        EXAMPLE_TRACE("cannot open image key %s", path);
        return -1;
    }
    len = fread(pem, 1, sizeof(pem), fp);
    fclose(fp);
    if (len == 0 || len == sizeof(pem)) {
        EXAMPLE_TRACE("image key %s is empty or too long for a public key", path);
        return -1;
    }
    if (IOT_OTA_Ioctl(h_ota, IOT_OTAC_ADD_IMAGE_KEY, pem, len) != 0) {
        EXAMPLE_TRACE("image key %s is not an Ed25519 or P-256 public key", path);
        return -1;
    }
    EXAMPLE_TRACE("image key: %s", path);
    return 0;
}

/* The image policy, before any download: the vendor's keys (OTA_IMAGE_KEY), the signature
 * required unless OTA_REQUIRE_SIGNATURE=0, and no image older than the running version. */
static int configure_image_policy(void *h_ota, const device_identity_t *id)
{
    char paths[1024];
    char running[FIRMWARE_VERSION_MAXLEN + 1];
    char *path, *next;
    uint32_t require = strcmp(env_or("OTA_REQUIRE_SIGNATURE", "1"), "0") != 0;
    int keys = 0;

    if (copy_field(paths, sizeof(paths), env_or("OTA_IMAGE_KEY", ""), "OTA_IMAGE_KEY") != 0) {
        return -1;
    }
    for (path = paths; path != NULL && *path != '\0'; path = next) {
        next = strchr(path, ':');
        if (next != NULL) {
            *next++ = '\0';
        }
        if (*path != '\0') {
            if (add_image_key(h_ota, path) != 0) {
                return -1;
            }
            keys++;
        }
    }
    if (IOT_OTA_Ioctl(h_ota, IOT_OTAC_REQUIRE_SIGNATURE, &require, 4) != 0) {
        return -1;
    }
    /* Anti-downgrade: a signed old release replayed by whoever sends upgrades is refused. */
    memcpy(running, id->firmware_version, sizeof(running));
    if (IOT_OTA_Ioctl(h_ota, IOT_OTAC_RUNNING_VERSION, running, sizeof(running)) != 0) {
        EXAMPLE_TRACE("running version %s is not MAJOR.MINOR.REVISION: no downgrade check",
                      id->firmware_version);
    }
    if (!require) {
        EXAMPLE_TRACE("OTA_REQUIRE_SIGNATURE=0: images are accepted on the platform's digest alone");
    } else if (keys == 0) {
        EXAMPLE_TRACE("a signature is required and OTA_IMAGE_KEY names no key: every image will be "
                      "refused (give the vendor's public key, or OTA_REQUIRE_SIGNATURE=0)");
    }
    return 0;
}

/* The running image, for delta patches (OTA_DELTA_OLD): opened once, read by offset. */
static FILE *old_image;

static int read_old_image(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len)
{
    FILE *fp = (FILE *)ctx;

    if (fseek(fp, (long)offset, SEEK_SET) != 0 || fread(buf, 1, len, fp) != len) {
        return -1;
    }
    return (int)len;
}

/* Delta upgrades: the platform may send a patch against the image this build runs. */
static int configure_delta(void *h_ota)
{
    const char *path = env_or("OTA_DELTA_OLD", "");
    long size;

    if ('\0' == path[0]) {
        return 0;
    }
    if (NULL == old_image && NULL == (old_image = fopen(path, "rb"))) {
        EXAMPLE_TRACE("cannot open OTA_DELTA_OLD %s", path);
        return -1;
    }
    if (fseek(old_image, 0, SEEK_END) != 0 || (size = ftell(old_image)) < 0) {
        return -1;
    }
    EXAMPLE_TRACE("delta patches apply to %s (%ld bytes)", path, size);
    return IOT_OTA_SetDeltaSource(h_ota, read_old_image, old_image, (uint32_t)size);
}

/* The OTA module, set up before its first download. */
static void *ota_init(const device_identity_t *id, void *pclient)
{
    void *h_ota = ota_init_protocol(id, pclient);

    if (NULL != h_ota && (configure_image_policy(h_ota, id) != 0 || configure_delta(h_ota) != 0)) {
        IOT_OTA_Deinit(h_ota);
        return NULL;
    }
    return h_ota;
}

/* Stores the triple through the HAL, as v2.3 firmware does, and reads it back from there. */
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
    memset(id, 0, sizeof(*id));
    HAL_GetProductKey(id->product_key);
    HAL_GetDeviceName(id->device_name);
    HAL_GetDeviceSecret(id->device_secret);
    /* On Linux the HAL answers OTA_FIRMWARE_VERSION when set: the tests pretend to run 1.0.0 */
    if (HAL_GetFirmwareVersion(id->firmware_version) < 0) {
        EXAMPLE_TRACE("HAL_GetFirmwareVersion failed");
        return -1;
    }
    EXAMPLE_TRACE("device %s/%s, firmware version %s", id->product_key, id->device_name,
                  id->firmware_version);
    return 0;
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

static uint32_t buf_len_from_env(void)
{
    long len = strtol(env_or("OTA_BUF_LEN", "0"), NULL, 10);

    if (len <= 0) {
        return OTA_BUF_LEN;
    }
    return len > OTA_BUF_LEN_MAX ? OTA_BUF_LEN_MAX : (uint32_t)len;
}

static void *mqtt_connect(const device_identity_t *id, char *msg_buf, char *msg_readbuf)
{
    iotx_conn_info_pt pconn_info = NULL;
    iotx_mqtt_param_t mqtt_params;

    /* Device AUTH: host, port, client id, username and password derived from the triple */
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

/* One FetchYield: 0 go on, RC_FAILED on a download or write error. */
static int fetch_chunk(ota_session_t *s)
{
    int len = IOT_OTA_FetchYield(s->h_ota, s->buf_ota, s->buf_len, 1);

    if (len > 0) {
        if (1 != fwrite(s->buf_ota, (size_t)len, 1, s->fp)) {
            EXAMPLE_TRACE("write data to file failed");
            IOT_OTA_ReportProgress(s->h_ota, IOT_OTAP_BURN_FAILED, "write to storage failed");
            return RC_FAILED;
        }
    } else if (len < 0) {
        EXAMPLE_TRACE("ota fetch failed, rc = %d, last error = %d", len, IOT_OTA_GetLastError(s->h_ota));
        if (len <= IOT_OTAE_IMAGE_NOT_MCUBOOT) {
            /* The image's own checks refused it on the way (see IOT_OTAE_IMAGE_* in ota.h). */
            EXAMPLE_TRACE("firmware refused: error %d", len);
        }
        IOT_OTA_ReportProgress(s->h_ota, IOT_OTAP_FETCH_FAILED, "download failed");
        return RC_FAILED;
    }
    return 0;
}

/* Reports the download percentage when it grew. */
static void report_progress(ota_session_t *s, int *last_percent)
{
    uint32_t size_downloaded = 0, size_file = 0;
    int percent;

    IOT_OTA_Ioctl(s->h_ota, IOT_OTAG_FETCHED_SIZE, &size_downloaded, 4);
    IOT_OTA_Ioctl(s->h_ota, IOT_OTAG_FILE_SIZE, &size_file, 4);
    if (size_file == 0) {
        return;
    }
    /* 64-bit: a 32-bit fetched * 100 overflows above 42 MB */
    percent = (int)((uint64_t)size_downloaded * 100 / size_file);
    if (percent - *last_percent > 0) {
        EXAMPLE_TRACE("downloaded %u / %u bytes (%d%%)", (unsigned int)size_downloaded,
                      (unsigned int)size_file, percent);
        IOT_OTA_ReportProgress(s->h_ota, (IOT_OTA_Progress_t)percent, NULL);
        *last_percent = percent;
    }
}

static int download_firmware(ota_session_t *s)
{
    int last_percent = 0;

    do {
        if (fetch_chunk(s) != 0) {
            return RC_FAILED;
        }
        /* 100 % waits for the image's checks: after a refusal a percentage is refused too, and
         * its error would replace the refusal's in IOT_OTA_GetLastError. */
        if (!IOT_OTA_IsFetchFinish(s->h_ota)) {
            report_progress(s, &last_percent);
        }
        /* One non-blocking pass sends the queued report and services the connection; the
         * sample's 100 ms here would add 100 ms to every chunk (a minute for 3 MB). */
        IOT_MQTT_Yield(s->pclient, 0);
        if (HAL_UptimeMs() > s->deadline_ms) {
            EXAMPLE_TRACE("timed out while downloading");
            return RC_TIMEOUT;
        }
    } while (!IOT_OTA_IsFetchFinish(s->h_ota));
    return RC_OK;
}

/* What the image's own checks found: whether a configured key verified its signature, which,
 * its header version, and where the payload lies in the file (to strip the header when the
 * bare payload is what gets installed). */
static void print_image_info(void *h_ota)
{
    uint32_t is_signed = 0, payload_offset = 0, payload_size = 0;
    int key_index = -1;
    char image_version[IMAGE_VERSION_MAXLEN] = { 0 };

    IOT_OTA_Ioctl(h_ota, IOT_OTAG_IMAGE_SIGNED, &is_signed, 4);
    IOT_OTA_Ioctl(h_ota, IOT_OTAG_IMAGE_KEY_INDEX, &key_index, 4);
    IOT_OTA_Ioctl(h_ota, IOT_OTAG_PAYLOAD_OFFSET, &payload_offset, 4);
    IOT_OTA_Ioctl(h_ota, IOT_OTAG_PAYLOAD_SIZE, &payload_size, 4);
    /* A plain file (accepted unsigned) starts with its payload: no header, no version. */
    if (payload_offset == 0
        || IOT_OTA_Ioctl(h_ota, IOT_OTAG_IMAGE_VERSION, image_version, sizeof(image_version)) != 0) {
        strcpy(image_version, "none");
    }
    EXAMPLE_TRACE("image: signed %u, key %d, version %s, payload offset %u size %u",
                  (unsigned int)is_signed, key_index, image_version,
                  (unsigned int)payload_offset, (unsigned int)payload_size);
}

/* Returns 1 when the downloaded image matches the announced digest and passed its own checks
 * (signature, version); fills the new version. */
static int verify_firmware(ota_session_t *s, char *version, size_t version_len)
{
    uint32_t firmware_valid = 0;
    char md5sum[33] = { 0 };

    IOT_OTA_Ioctl(s->h_ota, IOT_OTAG_MD5SUM, md5sum, sizeof(md5sum));
    IOT_OTA_Ioctl(s->h_ota, IOT_OTAG_VERSION, version, version_len);
    if (IOT_OTA_Ioctl(s->h_ota, IOT_OTAG_CHECK_FIRMWARE, &firmware_valid, 4) != 0) {
        EXAMPLE_TRACE("checking the firmware failed, last error = %d", IOT_OTA_GetLastError(s->h_ota));
        return 0;
    }
    EXAMPLE_TRACE("firmware version %s, md5 %s: %s", version, md5sum,
                  firmware_valid ? "valid" : "INVALID");
    if (!firmware_valid) {
        /* The platform has been told why; IOT_OTAE_IMAGE_* codes are the image's own checks. */
        EXAMPLE_TRACE("firmware refused: error %d", IOT_OTA_GetLastError(s->h_ota));
        return 0;
    }
    print_image_info(s->h_ota);
    return 1;
}

/* What the device does after rebooting into the new image: a fresh OTA module reports the new
 * version, which is the only thing the platform counts as success. */
static int reboot_and_report(ota_session_t *s, const device_identity_t *id, const char *version)
{
    int i, rc;

    IOT_OTA_Deinit(s->h_ota);
    s->h_ota = ota_init(id, s->pclient);
    if (NULL == s->h_ota) {
        EXAMPLE_TRACE("initialize OTA after the simulated reboot failed");
        return RC_FAILED;
    }
    rc = IOT_OTA_ReportVersion(s->h_ota, version);
    if (0 != rc) {
        EXAMPLE_TRACE("report OTA version %s failed, rc = %d", version, rc);
        return RC_FAILED;
    }
    for (i = 0; i < 3; i++) {
        IOT_MQTT_Yield(s->pclient, 200);
    }
    EXAMPLE_TRACE("reported new version %s", version);
    return RC_OK;
}

static int finish_upgrade(ota_session_t *s, const device_identity_t *id)
{
    char version[OTA_VERSION_LEN_MAX] = { 0 };
    int close_rc;

    if (!verify_firmware(s, version, sizeof(version))) {
        EXAMPLE_TRACE("The firmware is invalid");
        IOT_OTA_ReportProgress(s->h_ota, IOT_OTAP_CHECK_FALIED, "image check failed");
        IOT_MQTT_Yield(s->pclient, 200);
        return RC_FAILED;
    }
    EXAMPLE_TRACE("The firmware is valid");
    IOT_OTA_ReportProgress(s->h_ota, IOT_OTAP_FETCH_PERCENTAGE_MAX, NULL);
    IOT_OTA_ReportUpgradeBegin(s->h_ota);
    close_rc = fclose(s->fp);
    s->fp = NULL;
    if (close_rc != 0) {
        EXAMPLE_TRACE("closing the firmware file failed");
        IOT_OTA_ReportUpgradeFail(s->h_ota, version);
        IOT_MQTT_Yield(s->pclient, 200);
        return RC_FAILED;
    }
    /* The image is in place: tell the platform (Tencent "done", UCloud "success"). */
    IOT_OTA_ReportUpgradeSuccess(s->h_ota, version);
    IOT_MQTT_Yield(s->pclient, 200);
    return reboot_and_report(s, id, version);
}

static int ota_mqtt_loop(ota_session_t *s, const device_identity_t *id)
{
    int rc;

    s->h_ota = ota_init(id, s->pclient);
    if (NULL == s->h_ota) {
        EXAMPLE_TRACE("initialize OTA failed");
        return RC_FAILED;
    }
    rc = IOT_OTA_ReportVersion(s->h_ota, id->firmware_version);
    if (0 != rc) {
        EXAMPLE_TRACE("report OTA version failed, rc = %d", rc);
        return RC_FAILED;
    }

    EXAMPLE_TRACE("wait ota upgrade command....");
    for (;;) {
        IOT_MQTT_Yield(s->pclient, 200);
        if (IOT_OTA_IsFetching(s->h_ota)) {
            EXAMPLE_TRACE("upgrade announced, downloading");
            rc = download_firmware(s);
            return rc != RC_OK ? rc : finish_upgrade(s, id);
        }
        if (HAL_UptimeMs() > s->deadline_ms) {
            EXAMPLE_TRACE("no upgrade command before the deadline");
            return RC_TIMEOUT;
        }
    }
}

int main(int argc, char **argv)
{
    static char buf_default[OTA_BUF_LEN];
    const char *output = argc > 1 ? argv[1] : OTA_OUTPUT_FILE;
    device_identity_t id;
    ota_session_t s;
    char *msg_buf = NULL, *msg_readbuf = NULL;
    long timeout_s = strtol(env_or("OTA_TIMEOUT_S", "0"), NULL, 10);
    int rc = RC_FAILED;

    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(&s, 0, sizeof(s));
    s.buf_len = buf_len_from_env();
    s.deadline_ms = HAL_UptimeMs() + 1000 * (uint64_t)(timeout_s > 0 ? timeout_s : OTA_TIMEOUT_S);

    IOT_OpenLog("ota");
    IOT_SetLogLevel((IOT_LogLevel)log_level_from_env());

    if (setup_identity(&id) != 0) {
        goto do_exit;
    }
    s.buf_ota = s.buf_len == OTA_BUF_LEN ? buf_default : (char *)HAL_Malloc(s.buf_len);
    msg_buf = (char *)HAL_Malloc(MQTT_MSGLEN);
    msg_readbuf = (char *)HAL_Malloc(MQTT_MSGLEN);
    if (NULL == s.buf_ota || NULL == msg_buf || NULL == msg_readbuf) {
        EXAMPLE_TRACE("not enough memory");
        goto do_exit;
    }
    EXAMPLE_TRACE("fetch buffer %u bytes, writing the firmware to %s", (unsigned int)s.buf_len, output);
    if (NULL == (s.fp = fopen(output, "wb"))) {
        EXAMPLE_TRACE("open file %s failed", output);
        goto do_exit;
    }

    s.pclient = mqtt_connect(&id, msg_buf, msg_readbuf);
    if (NULL == s.pclient) {
        EXAMPLE_TRACE("MQTT construct failed");
        goto do_exit;
    }
    rc = ota_mqtt_loop(&s, &id);

do_exit:
    EXAMPLE_TRACE("exit, rc = %d", rc);
    if (NULL != s.h_ota) {
        IOT_OTA_Deinit(s.h_ota);
    }
    if (NULL != s.pclient) {
        IOT_MQTT_Destroy(&s.pclient);
    }
    if (NULL != s.fp) {
        fclose(s.fp);
    }
    if (NULL != s.buf_ota && s.buf_ota != buf_default) {
        HAL_Free(s.buf_ota);
    }
    if (NULL != msg_buf) {
        HAL_Free(msg_buf);
    }
    if (NULL != msg_readbuf) {
        HAL_Free(msg_readbuf);
    }
    IOT_DumpMemoryStats(IOT_LOG_DEBUG);
    IOT_CloseLog();
    return rc;
}
