/*
 * gateway_example.c: a gateway that upgrades itself and the N sub-devices behind it (meters,
 * PLCs, BLE/Modbus/Zigbee nodes) over its one MQTT connection, written the iotkit v2.3 way (see
 * ota_mqtt_example.c for the single-device version). Self-contained on purpose: customers copy it.
 *
 * One MQTT client, one OTA handle per device (the gateway's own and one per sub-device, each
 * with its own product key / device name), all built on the same pclient. Each handle writes
 * its device's image to its own file, OUTPUT_DIR/<device name>.bin, and tells libota it can read
 * that file back (IOT_OTA_SetLocalImageSource): when several sub-devices are told to install the
 * same image, the gateway downloads it once and the others stream it from the first one's file.
 * The file stands for the gateway's staging storage; last_mile_transfer() is where a vendor
 * sends the verified image on to the sub-device (UART, BLE, Modbus, ...).
 *
 * Usage: gateway_example N [OUTPUT_DIR]   N sub-devices named <prefix>01 .. <prefix>N
 *                                          (default OUTPUT_DIR: the current directory)
 *
 * Environment (all optional):
 *   OTA_PRODUCT_KEY, OTA_DEVICE_NAME, OTA_DEVICE_SECRET   the gateway's identity (defaults below)
 *   OTA_FIRMWARE_VERSION      version the gateway runs (read by HAL_GetFirmwareVersion)
 *   OTA_SUB_PRODUCT_KEY       the sub-devices' product key (default: the gateway's)
 *   OTA_SUB_NAME_PREFIX       the sub-devices' name prefix (default "sub-"); the number has at
 *                             least two digits, as many as N has (sub-01, or sub-001 for N >= 100)
 *   OTA_SUB_FIRMWARE_VERSION  version the sub-devices run (default 1.0.0)
 *   OTA_MAX_DOWNLOADS         simultaneous network downloads (default 1, what a cellular link wants)
 *   OTA_PROTOCOL              aliyun (default: IOT_OTA_Init), sagoo, tencent or ucloud
 *                             (IOT_OTA_InitWithProtocol), the same for every device
 *   OTA_LOG_LEVEL             none|crit|error|warning|info|debug or 0..5 (default warning)
 *   OTA_BUF_LEN               bytes per IOT_OTA_FetchYield, 1..65536 (default 5000)
 *   OTA_TIMEOUT_S             overall deadline in seconds (default 300)
 *   OTA_IMAGE_KEY, OTA_REQUIRE_SIGNATURE   the image policy, as in ota_mqtt_example.c: images
 *                             must be signed with one of these keys unless OTA_REQUIRE_SIGNATURE=0
 *   IOTX_MQTT_HOST, IOTX_MQTT_PORT   read by IOT_SetupConnInfo: point at a private broker
 *
 * Output: one line per device event: "[name] start ...", "[name] waiting ...", "[name] verified
 * ...", "[name] done ...", "[name] failed ...".
 * Exit code: 0 every device upgraded (its image written, its new version reported), 1 a device
 * failed, 2 timeout.
 */
#define _POSIX_C_SOURCE 200809L /* pread, for the local image reader */

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "iot_import.h"
#include "iot_export.h"

#define PRODUCT_KEY             "a1OtaGatewayPk"
#define DEVICE_NAME             "ota_example_gateway"
#define DEVICE_SECRET           "GatewaySecretGatewaySecretGatewa"
#define SUB_NAME_PREFIX         "sub-"
#define SUB_FIRMWARE_VERSION    "1.0.0"

#define MQTT_MSGLEN             (2048)
#define OTA_BUF_LEN             (5000)
#define OTA_BUF_LEN_MAX         (64 * 1024)
#define OTA_TIMEOUT_S           (300)
#define IMAGE_KEY_MAXLEN        (4096)
#define IMAGE_KEYS_MAX          (4)
#define IMAGE_PATH_MAXLEN       (512)
#define PROGRESS_STEP_PERCENT   (10)
#define REPORT_ATTEMPTS         (50)

#define RC_OK                   (0)
#define RC_FAILED               (1)
#define RC_TIMEOUT              (2)

#define EXAMPLE_TRACE(...)                                  \
    do {                                                    \
        HAL_Printf("%s|%03d :: ", __func__, __LINE__);      \
        HAL_Printf(__VA_ARGS__);                            \
        HAL_Printf("%s", "\n");                             \
    } while (0)


typedef enum {
    DEVICE_IDLE,        /* runs its version; no upgrade under way */
    DEVICE_FETCHING,    /* between IOT_OTA_IsFetching and IOT_OTA_IsFetchFinish */
    DEVICE_INSTALLED,   /* the gateway only: its new image is in place, it reboots last */
    DEVICE_UPGRADED,    /* the new version runs and was reported */
    DEVICE_FAILED
} device_state_t;

typedef struct {
    char product_key[PRODUCT_KEY_LEN + 1];
    char device_name[DEVICE_NAME_LEN + 1];
    char version[OTA_VERSION_LEN_MAX];      /* the version the device runs */
    char image_path[IMAGE_PATH_MAXLEN];     /* OUTPUT_DIR/<device name>.bin */
    int is_gateway;
    void *h_ota;
    int fd;                 /* the image file: appended while fetching, read back for others */
    device_state_t state;
    uint32_t waiting;       /* the last IOT_OTAG_WAITING seen, to print changes only */
    int last_percent;
} device_t;

/* A report to a device's platform that must get there (progress percentages may be skipped). */
typedef enum {
    REPORT_VERSION,         /* IOT_OTA_ReportVersion: the version the device runs */
    REPORT_PROGRESS,        /* IOT_OTA_ReportProgress: `step`, 100 or a failure step */
    REPORT_BURNING,         /* IOT_OTA_ReportUpgradeBegin */
    REPORT_SUCCESS,         /* IOT_OTA_ReportUpgradeSuccess */
    REPORT_FAIL             /* IOT_OTA_ReportUpgradeFail */
} report_kind_t;

typedef struct {
    report_kind_t kind;
    const char *version;
    IOT_OTA_Progress_t step;
    const char *desc;
} report_t;

/* The vendor's image policy, read once and applied to every handle. */
typedef struct {
    char pem[IMAGE_KEYS_MAX][IMAGE_KEY_MAXLEN];
    size_t pem_len[IMAGE_KEYS_MAX];
    int keys;
    uint32_t require_signature;
} image_policy_t;

typedef struct {
    void *pclient;
    device_t *devices;      /* [0] the gateway itself, [1..device_count-1] its sub-devices */
    int device_count;
    char *buf_ota;          /* one fetch buffer: every chunk goes to its file before the next */
    uint32_t buf_len;
    uint64_t deadline_ms;
    image_policy_t policy;
} gateway_t;

static void event_handle(void *pcontext, void *pclient, iotx_mqtt_event_msg_pt msg)
{
    iotx_mqtt_topic_info_pt topic_info = (iotx_mqtt_topic_info_pt)msg->msg;

    (void)pcontext;
    (void)pclient;

    switch (msg->event_type) {
        case IOTX_MQTT_EVENT_DISCONNECT:
            EXAMPLE_TRACE("MQTT disconnect.");
            break;
        case IOTX_MQTT_EVENT_RECONNECT:
            EXAMPLE_TRACE("MQTT reconnect.");
            break;
        case IOTX_MQTT_EVENT_SUBCRIBE_TIMEOUT:
        case IOTX_MQTT_EVENT_SUBCRIBE_NACK:
            EXAMPLE_TRACE("subscribe failed (event %d)", (int)msg->event_type);
            break;
        case IOTX_MQTT_EVENT_PUBLISH_TIMEOUT:
        case IOTX_MQTT_EVENT_PUBLISH_NACK:
            EXAMPLE_TRACE("publish failed (event %d)", (int)msg->event_type);
            break;
        case IOTX_MQTT_EVENT_PUBLISH_RECEIVED:
            EXAMPLE_TRACE("topic message arrived but without any related handle: topic=%.*s",
                          (int)topic_info->topic_len, topic_info->ptopic);
            break;
        case IOTX_MQTT_EVENT_BUFFER_OVERFLOW:
            EXAMPLE_TRACE("buffer overflow");
            break;
        default:
            /* Subscribe and publish acknowledgements: every handle makes some, all routine. */
            break;
    }
}

/* One line per event of one device, prefixed with its name, printed whole so that libota's log
 * lines never cut it. */
static void device_event(const device_t *d, const char *fmt, ...)
{
    char line[256];
    va_list args;

    va_start(args, fmt);
    vsnprintf(line, sizeof(line), fmt, args);
    va_end(args);
    HAL_Printf("[%s] %s\n", d->device_name, line);
}

static const char *env_or(const char *name, const char *fallback)
{
    const char *value = getenv(name);
    return (value != NULL && value[0] != '\0') ? value : fallback;
}

/* Copies a string, refusing (not truncating) one that does not fit its buffer. */
static int copy_field(char *dst, size_t dst_len, const char *src, const char *what)
{
    if (strlen(src) >= dst_len) {
        EXAMPLE_TRACE("%s is longer than %u characters", what, (unsigned int)(dst_len - 1));
        return -1;
    }
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

/* ---- Local image source: libota reads one device's verified image back from its file ---- */

/* IOT_OTA_LocalImageRead for a device: another handle that needs the same image streams it
 * from this device's file instead of downloading it again. */
static int read_kept_image(void *ctx, uint32_t offset, char *buf, uint32_t buf_len)
{
    const device_t *d = (const device_t *)ctx;
    size_t len = buf_len > INT_MAX ? INT_MAX : buf_len;
    ssize_t n;

    if (d->fd < 0) {
        return -1;
    }
    do {
        n = pread(d->fd, buf, len, (off_t)offset);
    } while (n < 0 && errno == EINTR);
    /* 0 is the end of the file: the image is shorter than libota was told, an error too. */
    return n > 0 ? (int)n : -1;
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* ---- The last mile: replace with the transfer to the sub-device (UART, BLE, Modbus, ...) ---- */

/* Sends the verified image in d->image_path to the sub-device and returns 0 once the sub-device
 * has installed it (or -1). This example's sub-devices are the files themselves: it keeps the
 * file, which must stay in place anyway while other handles stream from it. */
static int last_mile_transfer(const device_t *d)
{
    (void)d;
    return 0;
}

/* ---- Image policy (as in ota_mqtt_example.c) ---- */

/* Reads the public key in the PEM file `path` into the policy. */
static int load_image_key(image_policy_t *policy, const char *path)
{
    size_t len;
    FILE *fp;

    if (policy->keys == IMAGE_KEYS_MAX) {
        EXAMPLE_TRACE("more than %d image keys", IMAGE_KEYS_MAX);
        return -1;
    }
    if (NULL == (fp = fopen(path, "rb"))) {
        EXAMPLE_TRACE("cannot open image key %s", path);
        return -1;
    }
    len = fread(policy->pem[policy->keys], 1, IMAGE_KEY_MAXLEN, fp);
    fclose(fp);
    if (len == 0 || len == IMAGE_KEY_MAXLEN) {
        EXAMPLE_TRACE("image key %s is empty or too long for a public key", path);
        return -1;
    }
    policy->pem_len[policy->keys++] = len;
    EXAMPLE_TRACE("image key: %s", path);
    return 0;
}

/* The keys of OTA_IMAGE_KEY (':'-separated) and OTA_REQUIRE_SIGNATURE (default 1). */
static int load_image_policy(image_policy_t *policy)
{
    char paths[1024];
    char *path, *next;

    memset(policy, 0, sizeof(*policy));
    policy->require_signature = strcmp(env_or("OTA_REQUIRE_SIGNATURE", "1"), "0") != 0;
    if (copy_field(paths, sizeof(paths), env_or("OTA_IMAGE_KEY", ""), "OTA_IMAGE_KEY") != 0) {
        return -1;
    }
    for (path = paths; path != NULL && *path != '\0'; path = next) {
        next = strchr(path, ':');
        if (next != NULL) {
            *next++ = '\0';
        }
        if (*path != '\0' && load_image_key(policy, path) != 0) {
            return -1;
        }
    }
    if (!policy->require_signature) {
        EXAMPLE_TRACE("OTA_REQUIRE_SIGNATURE=0: images are accepted on the platform's digest alone");
    } else if (policy->keys == 0) {
        EXAMPLE_TRACE("a signature is required and OTA_IMAGE_KEY names no key: every image will be "
                      "refused (give the vendor's public key, or OTA_REQUIRE_SIGNATURE=0)");
    }
    return 0;
}

/* Applies the policy to one handle, with its device's running version as the downgrade floor. */
static int apply_image_policy(void *h_ota, const image_policy_t *policy, const device_t *d)
{
    char running[OTA_VERSION_LEN_MAX];
    uint32_t require = policy->require_signature;
    int i;

    for (i = 0; i < policy->keys; i++) {
        char pem[IMAGE_KEY_MAXLEN];
        memcpy(pem, policy->pem[i], policy->pem_len[i]);
        if (IOT_OTA_Ioctl(h_ota, IOT_OTAC_ADD_IMAGE_KEY, pem, policy->pem_len[i]) != 0) {
            EXAMPLE_TRACE("image key %d is not an Ed25519 or P-256 public key", i + 1);
            return -1;
        }
    }
    if (IOT_OTA_Ioctl(h_ota, IOT_OTAC_REQUIRE_SIGNATURE, &require, 4) != 0) {
        return -1;
    }
    memcpy(running, d->version, sizeof(running));
    if (IOT_OTA_Ioctl(h_ota, IOT_OTAC_RUNNING_VERSION, running, sizeof(running)) != 0) {
        device_event(d, "running version %s is not MAJOR.MINOR.REVISION: no downgrade check",
                     d->version);
    }
    return 0;
}

/* ---- Set-up ---- */

/* IOT_OTA_Init for Aliyun, as iotkit firmware calls it; the extension for the other platforms. */
static void *ota_init_protocol(const device_t *d, void *pclient)
{
    const char *name = env_or("OTA_PROTOCOL", "aliyun");
    IOT_OTA_Protocol_t protocol;

    if (0 == strcmp(name, "aliyun")) {
        return IOT_OTA_Init(d->product_key, d->device_name, pclient);
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
    return IOT_OTA_InitWithProtocol(d->product_key, d->device_name, pclient, protocol);
}

/* One device's OTA handle on the gateway's connection: the image policy, and its image file
 * offered to the other handles once verified. */
static int device_ota_init(gateway_t *gw, device_t *d)
{
    d->h_ota = ota_init_protocol(d, gw->pclient);
    if (NULL == d->h_ota) {
        device_event(d, "failed: IOT_OTA_Init refused %s/%s", d->product_key, d->device_name);
        return -1;
    }
    if (apply_image_policy(d->h_ota, &gw->policy, d) != 0
        || IOT_OTA_SetLocalImageSource(d->h_ota, read_kept_image, d) != 0) {
        device_event(d, "failed: setting up its OTA handle");
        IOT_OTA_Deinit(d->h_ota);
        d->h_ota = NULL;
        return -1;
    }
    return 0;
}

static const char *const report_names[] = { "version", "progress", "burning", "success", "failure" };

static int report_once(void *h_ota, const report_t *r)
{
    switch (r->kind) {
        case REPORT_VERSION:
            return IOT_OTA_ReportVersion(h_ota, r->version);
        case REPORT_PROGRESS:
            return IOT_OTA_ReportProgress(h_ota, r->step, r->desc);
        case REPORT_BURNING:
            return IOT_OTA_ReportUpgradeBegin(h_ota);
        case REPORT_SUCCESS:
            return IOT_OTA_ReportUpgradeSuccess(h_ota, r->version);
        default:
            return IOT_OTA_ReportUpgradeFail(h_ota, r->version);
    }
}

/* Sends a report the platform must get. Many handles finishing at once can fill the client's
 * request queue (IOT_OTAE_OSC_FAILED): a yield lets it drain, then the report is tried again. */
static int send_report_retrying(gateway_t *gw, device_t *d, const report_t *r)
{
    int attempt, rc = IOT_OTAE_OSC_FAILED;

    for (attempt = 0; attempt < REPORT_ATTEMPTS && rc == IOT_OTAE_OSC_FAILED; attempt++) {
        if (attempt > 0) {
            IOT_MQTT_Yield(gw->pclient, 100);
        }
        rc = report_once(d->h_ota, r);
    }
    if (rc != 0) {
        device_event(d, "reporting %s to the platform failed, rc = %d", report_names[r->kind], rc);
    }
    return rc;
}

/* A version report, the end of the download, burning, success or failure of `version`. */
static int send_report(gateway_t *gw, device_t *d, report_kind_t kind, const char *version)
{
    report_t r;

    memset(&r, 0, sizeof(r));
    r.kind = kind;
    r.version = version;
    r.step = IOT_OTAP_FETCH_PERCENTAGE_MAX;
    return send_report_retrying(gw, d, &r);
}

/* A failure step (IOT_OTAP_*_FAILED) and why. */
static int send_failure(gateway_t *gw, device_t *d, IOT_OTA_Progress_t step, const char *why)
{
    report_t r;

    memset(&r, 0, sizeof(r));
    r.kind = REPORT_PROGRESS;
    r.step = step;
    r.desc = why;
    return send_report_retrying(gw, d, &r);
}

static int device_setup(device_t *d, const char *pk, const char *dn, const char *version,
                        const char *output_dir)
{
    int n;

    memset(d, 0, sizeof(*d));
    d->fd = -1;
    if (copy_field(d->product_key, sizeof(d->product_key), pk, "product key") != 0
        || copy_field(d->device_name, sizeof(d->device_name), dn, "device name") != 0
        || copy_field(d->version, sizeof(d->version), version, "firmware version") != 0) {
        return -1;
    }
    n = snprintf(d->image_path, sizeof(d->image_path), "%s/%s.bin", output_dir, dn);
    if (n < 0 || (size_t)n >= sizeof(d->image_path)) {
        EXAMPLE_TRACE("output path for %s is too long", dn);
        return -1;
    }
    return 0;
}

/* The gateway (device 0, its identity stored through the HAL as v2.3 firmware does) and its
 * sub-devices <prefix>01 .. <prefix>N. */
static int setup_devices(gateway_t *gw, int sub_count, const char *output_dir)
{
    const char *sub_pk = env_or("OTA_SUB_PRODUCT_KEY", env_or("OTA_PRODUCT_KEY", PRODUCT_KEY));
    const char *prefix = env_or("OTA_SUB_NAME_PREFIX", SUB_NAME_PREFIX);
    const char *sub_version = env_or("OTA_SUB_FIRMWARE_VERSION", SUB_FIRMWARE_VERSION);
    char pk[PRODUCT_KEY_LEN + 1], dn[DEVICE_NAME_LEN + 1], version[FIRMWARE_VERSION_MAXLEN];
    int i, n, width;

    if (HAL_GetProductKey(pk) < 0 || HAL_GetDeviceName(dn) < 0 || HAL_GetFirmwareVersion(version) < 0) {
        EXAMPLE_TRACE("the HAL has no gateway identity or firmware version");
        return -1;
    }
    if (device_setup(&gw->devices[0], pk, dn, version, output_dir) != 0) {
        return -1;
    }
    gw->devices[0].is_gateway = 1;
    /* At least two digits, as many as N has: sub-01 .. sub-16, sub-001 .. sub-256. */
    width = snprintf(NULL, 0, "%d", sub_count);
    width = width < 2 ? 2 : width;
    for (i = 1; i <= sub_count; i++) {
        n = snprintf(dn, sizeof(dn), "%s%0*d", prefix, width, i);
        if (n < 0 || (size_t)n >= sizeof(dn)) {
            EXAMPLE_TRACE("sub-device names %s.. are longer than %d characters", prefix, DEVICE_NAME_LEN);
            return -1;
        }
        if (device_setup(&gw->devices[i], sub_pk, dn, sub_version, output_dir) != 0) {
            return -1;
        }
    }
    gw->device_count = sub_count + 1;
    EXAMPLE_TRACE("gateway %s/%s runs %s; %d sub-devices %s/%s01.. run %s", pk,
                  gw->devices[0].device_name, version, sub_count, sub_pk, prefix, sub_version);
    return 0;
}

/* Stores the gateway's triple through the HAL: the connection is the gateway's. */
static int setup_gateway_identity(void)
{
    char pk[PRODUCT_KEY_LEN + 1], dn[DEVICE_NAME_LEN + 1], secret[DEVICE_SECRET_LEN + 1];

    if (copy_field(pk, sizeof(pk), env_or("OTA_PRODUCT_KEY", PRODUCT_KEY), "product key") != 0
        || copy_field(dn, sizeof(dn), env_or("OTA_DEVICE_NAME", DEVICE_NAME), "device name") != 0
        || copy_field(secret, sizeof(secret), env_or("OTA_DEVICE_SECRET", DEVICE_SECRET), "device secret") != 0) {
        return -1;
    }
    if (HAL_SetProductKey(pk) < 0 || HAL_SetDeviceName(dn) < 0 || HAL_SetDeviceSecret(secret) < 0) {
        EXAMPLE_TRACE("HAL_Set* refused the gateway identity");
        return -1;
    }
    return 0;
}

static int log_level_from_env(void)
{
    static const char *const names[] = { "none", "crit", "error", "warning", "info", "debug" };
    const char *value = env_or("OTA_LOG_LEVEL", "warning");
    int i;

    if (value[0] >= '0' && value[0] <= '5' && value[1] == '\0') {
        return value[0] - '0';
    }
    for (i = 0; i < (int)(sizeof(names) / sizeof(names[0])); i++) {
        if (strcmp(value, names[i]) == 0) {
            return i;
        }
    }
    return IOT_LOG_WARNING;
}

static uint32_t buf_len_from_env(void)
{
    long len = strtol(env_or("OTA_BUF_LEN", "0"), NULL, 10);

    if (len <= 0) {
        return OTA_BUF_LEN;
    }
    return len > OTA_BUF_LEN_MAX ? OTA_BUF_LEN_MAX : (uint32_t)len;
}

static void *mqtt_connect(char *msg_buf, char *msg_readbuf)
{
    char pk[PRODUCT_KEY_LEN + 1], dn[DEVICE_NAME_LEN + 1], secret[DEVICE_SECRET_LEN + 1];
    iotx_conn_info_pt pconn_info = NULL;
    iotx_mqtt_param_t mqtt_params;

    HAL_GetProductKey(pk);
    HAL_GetDeviceName(dn);
    HAL_GetDeviceSecret(secret);
    if (0 != IOT_SetupConnInfo(pk, dn, secret, (void **)&pconn_info)) {
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

/* ---- One device's upgrade ---- */

static const char *waiting_reason(uint32_t waiting)
{
    switch (waiting) {
        case OTA_WAITING_SLOT:
            return "waiting for a download slot (OTA_MAX_DOWNLOADS)";
        case OTA_WAITING_SAME_IMAGE:
            return "waiting for the same image, which another device is downloading";
        case OTA_WAITING_READERS:
            return "waiting until the other devices finish reading its kept image";
        default:
            return "waiting";
    }
}

static int from_local_image(const device_t *d)
{
    uint32_t local = 0;

    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_LOCAL_IMAGE, &local, 4);
    return local == 1;
}

static const char *source_name(const device_t *d)
{
    return from_local_image(d) ? "local image (another device's kept file)" : "network";
}

static void device_fail(gateway_t *gw, device_t *d, IOT_OTA_Progress_t step, const char *why)
{
    device_event(d, "failed: %s (last error %d)", why, IOT_OTA_GetLastError(d->h_ota));
    send_failure(gw, d, step, why);
    d->state = DEVICE_FAILED;
}

/* IsFetching turned 1: a fresh cycle from byte 0 (no breakpoint store here), so the file is
 * emptied; no other handle reads it any more (libota waits for its readers first: OTA_WAITING_READERS). */
static void start_fetch(gateway_t *gw, device_t *d)
{
    char version[OTA_VERSION_LEN_MAX] = { 0 };
    uint32_t size_file = 0;

    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_VERSION, version, sizeof(version));
    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FILE_SIZE, &size_file, 4);
    device_event(d, "start: version %s, %u bytes, source %s", version, (unsigned int)size_file,
                 source_name(d));
    if (d->fd >= 0) {
        close(d->fd);
    }
    d->fd = open(d->image_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    d->last_percent = 0;
    d->waiting = OTA_WAITING_NONE;
    d->state = DEVICE_FETCHING;
    if (d->fd < 0) {
        device_fail(gw, d, IOT_OTAP_BURN_FAILED, "cannot open the image file");
    }
}

/* Reports the download percentage in steps of PROGRESS_STEP_PERCENT: N devices share one uplink
 * and one request queue. Best effort: a percentage the queue has no room for is skipped. */
static void report_progress(device_t *d)
{
    uint32_t size_downloaded = 0, size_file = 0;
    int percent;

    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FETCHED_SIZE, &size_downloaded, 4);
    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_FILE_SIZE, &size_file, 4);
    if (size_file == 0) {
        return;
    }
    percent = (int)((uint64_t)size_downloaded * 100 / size_file);
    if (percent - d->last_percent >= PROGRESS_STEP_PERCENT && percent < 100) {
        IOT_OTA_ReportProgress(d->h_ota, (IOT_OTA_Progress_t)percent, NULL);
        d->last_percent = percent;
    }
}

/* Returns 1 when the image matches the announced digest and passed its own checks; fills the
 * new version. From here on libota offers this file to the other handles. */
static int verify_firmware(device_t *d, char *version, size_t version_len)
{
    uint32_t firmware_valid = 0;

    IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_VERSION, version, version_len);
    if (IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_CHECK_FIRMWARE, &firmware_valid, 4) != 0) {
        return 0;
    }
    return firmware_valid == 1;
}

/* A sub-device's new version is the platform's proof of success: it is reported on the same
 * handle, which keeps offering the image to the sub-devices that still need it. */
static void finish_sub_device(gateway_t *gw, device_t *d, const char *version)
{
    if (last_mile_transfer(d) != 0) {
        device_event(d, "failed: the last-mile transfer to the sub-device");
        send_report(gw, d, REPORT_FAIL, version);
        d->state = DEVICE_FAILED;
        return;
    }
    /* The image is in place: tell the platform (Tencent "done", UCloud "success"). */
    if (send_report(gw, d, REPORT_SUCCESS, version) != 0) {
        d->state = DEVICE_FAILED;
        return;
    }
    /* The sub-device rebooted into the new image; the gateway reports what it now runs. */
    memcpy(d->version, version, sizeof(d->version));
    if (send_report(gw, d, REPORT_VERSION, d->version) != 0) {
        d->state = DEVICE_FAILED;
        return;
    }
    d->state = DEVICE_UPGRADED;
    device_event(d, "done: runs %s", d->version);
}

static void finish_upgrade(gateway_t *gw, device_t *d)
{
    char version[OTA_VERSION_LEN_MAX] = { 0 };

    if (!verify_firmware(d, version, sizeof(version))) {
        device_fail(gw, d, IOT_OTAP_CHECK_FALIED, "image check failed");
        return;
    }
    device_event(d, "verified: version %s, source %s", version, source_name(d));
    if (send_report(gw, d, REPORT_PROGRESS, NULL) != 0 || send_report(gw, d, REPORT_BURNING, NULL) != 0) {
        d->state = DEVICE_FAILED;
        return;
    }
    if (!d->is_gateway) {
        finish_sub_device(gw, d, version);
        return;
    }
    /* The gateway's own image: in place now, booted once the sub-devices are done. */
    if (send_report(gw, d, REPORT_SUCCESS, version) != 0) {
        d->state = DEVICE_FAILED;
        return;
    }
    memcpy(d->version, version, sizeof(d->version));
    d->state = DEVICE_INSTALLED;
    device_event(d, "installed %s: reboots once every sub-device is done", version);
}

/* One step of the iotkit download loop: FetchYield, append to the device's file (never seek
 * back), report progress; the checks once IsFetchFinish. */
static void fetch_step(gateway_t *gw, device_t *d)
{
    int len = IOT_OTA_FetchYield(d->h_ota, gw->buf_ota, gw->buf_len, 1);

    if (len < 0) {
        device_fail(gw, d, IOT_OTAP_FETCH_FAILED, "download failed");
        return;
    }
    if (len > 0 && write_all(d->fd, gw->buf_ota, (size_t)len) != 0) {
        device_fail(gw, d, IOT_OTAP_BURN_FAILED, "write to storage failed");
        return;
    }
    if (!IOT_OTA_IsFetchFinish(d->h_ota)) {
        report_progress(d);
        return;
    }
    finish_upgrade(gw, d);
}

/* Prints a change of IOT_OTAG_WAITING: the handle has an upgrade it may not start yet. */
static void watch_waiting(device_t *d)
{
    uint32_t waiting = OTA_WAITING_NONE;

    if (IOT_OTA_Ioctl(d->h_ota, IOT_OTAG_WAITING, &waiting, 4) != 0 || waiting == d->waiting) {
        return;
    }
    /* The end of a wait is the "start" line that follows. */
    if (waiting != OTA_WAITING_NONE) {
        device_event(d, "%s", waiting_reason(waiting));
    }
    d->waiting = waiting;
}

/* Returns 1 while the device downloads. */
static int poll_device(gateway_t *gw, device_t *d)
{
    if (d->state == DEVICE_FETCHING) {
        fetch_step(gw, d);
    } else if (d->state != DEVICE_INSTALLED) {
        watch_waiting(d);
        if (IOT_OTA_IsFetching(d->h_ota)) {
            start_fetch(gw, d);
        }
    }
    return d->state == DEVICE_FETCHING;
}

/* The gateway boots its new image: a fresh OTA handle reports the new version. */
static int reboot_gateway(gateway_t *gw)
{
    device_t *d = &gw->devices[0];

    IOT_OTA_Deinit(d->h_ota);
    d->h_ota = NULL;
    if (device_ota_init(gw, d) != 0 || send_report(gw, d, REPORT_VERSION, d->version) != 0) {
        d->state = DEVICE_FAILED;
        return -1;
    }
    d->state = DEVICE_UPGRADED;
    device_event(d, "done: rebooted, runs %s", d->version);
    return 0;
}

/* 1 when no device has anything left to do in this run. */
static int all_settled(const gateway_t *gw)
{
    int i;

    for (i = 0; i < gw->device_count; i++) {
        device_state_t state = gw->devices[i].state;
        if (state == DEVICE_IDLE || state == DEVICE_FETCHING) {
            return 0;
        }
    }
    return 1;
}

static int count_in_state(const gateway_t *gw, device_state_t state)
{
    int i, n = 0;

    for (i = 0; i < gw->device_count; i++) {
        n += gw->devices[i].state == state;
    }
    return n;
}

static int gateway_loop(gateway_t *gw)
{
    int i, fetching = 0;

    for (i = 0; i < gw->device_count; i++) {
        if (device_ota_init(gw, &gw->devices[i]) != 0 || send_report(gw, &gw->devices[i], REPORT_VERSION, gw->devices[i].version) != 0) {
            return RC_FAILED;
        }
    }
    EXAMPLE_TRACE("%d devices reported their versions; waiting for upgrades", gw->device_count);
    while (!all_settled(gw)) {
        /* While a download runs, one non-blocking pass per chunk keeps every handle moving. */
        IOT_MQTT_Yield(gw->pclient, fetching ? 0 : 200);
        fetching = 0;
        for (i = 0; i < gw->device_count; i++) {
            fetching |= poll_device(gw, &gw->devices[i]);
        }
        if (HAL_UptimeMs() > gw->deadline_ms) {
            EXAMPLE_TRACE("deadline reached: %d idle, %d downloading, %d upgraded, %d failed",
                          count_in_state(gw, DEVICE_IDLE), count_in_state(gw, DEVICE_FETCHING),
                          count_in_state(gw, DEVICE_UPGRADED), count_in_state(gw, DEVICE_FAILED));
            return RC_TIMEOUT;
        }
    }
    if (gw->devices[0].state == DEVICE_INSTALLED) {
        reboot_gateway(gw);
    }
    /* Sends the last reports before the connection closes. */
    for (i = 0; i < 3; i++) {
        IOT_MQTT_Yield(gw->pclient, 200);
    }
    EXAMPLE_TRACE("%d of %d devices upgraded, %d failed", count_in_state(gw, DEVICE_UPGRADED),
                  gw->device_count, count_in_state(gw, DEVICE_FAILED));
    return count_in_state(gw, DEVICE_UPGRADED) == gw->device_count ? RC_OK : RC_FAILED;
}

static int parse_sub_count(const char *arg)
{
    char *end = NULL;
    long n = strtol(arg, &end, 10);

    /* The gateway's own handle counts towards the client's limit. */
    if (end == arg || *end != '\0' || n < 1 || n > IOT_OTA_MAX_HANDLES_PER_CLIENT - 1) {
        EXAMPLE_TRACE("N must be 1..%d sub-devices, not %s", IOT_OTA_MAX_HANDLES_PER_CLIENT - 1, arg);
        return -1;
    }
    return (int)n;
}

int main(int argc, char **argv)
{
    gateway_t gw;
    char *msg_buf = NULL, *msg_readbuf = NULL;
    const char *output_dir = argc > 2 ? argv[2] : ".";
    long timeout_s = strtol(env_or("OTA_TIMEOUT_S", "0"), NULL, 10);
    int max_downloads = (int)strtol(env_or("OTA_MAX_DOWNLOADS", "1"), NULL, 10);
    int sub_count, i, rc = RC_FAILED;

    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(&gw, 0, sizeof(gw));
    IOT_OpenLog("gateway");
    IOT_SetLogLevel((IOT_LogLevel)log_level_from_env());

    if (argc < 2 || argc > 3) {
        EXAMPLE_TRACE("usage: %s N [OUTPUT_DIR]", argv[0]);
        goto do_exit;
    }
    if ((sub_count = parse_sub_count(argv[1])) < 0) {
        goto do_exit;
    }
    if (mkdir(output_dir, 0755) != 0 && errno != EEXIST) {
        EXAMPLE_TRACE("cannot create the output directory %s", output_dir);
        goto do_exit;
    }
    gw.buf_len = buf_len_from_env();
    gw.deadline_ms = HAL_UptimeMs() + 1000 * (uint64_t)(timeout_s > 0 ? timeout_s : OTA_TIMEOUT_S);
    gw.buf_ota = (char *)HAL_Malloc(gw.buf_len);
    gw.devices = (device_t *)HAL_Malloc((uint32_t)(sizeof(device_t) * (size_t)(sub_count + 1)));
    msg_buf = (char *)HAL_Malloc(MQTT_MSGLEN);
    msg_readbuf = (char *)HAL_Malloc(MQTT_MSGLEN);
    if (NULL == gw.buf_ota || NULL == gw.devices || NULL == msg_buf || NULL == msg_readbuf) {
        EXAMPLE_TRACE("not enough memory");
        goto do_exit;
    }
    if (setup_gateway_identity() != 0 || setup_devices(&gw, sub_count, output_dir) != 0
        || load_image_policy(&gw.policy) != 0) {
        goto do_exit;
    }

    gw.pclient = mqtt_connect(msg_buf, msg_readbuf);
    if (NULL == gw.pclient) {
        EXAMPLE_TRACE("MQTT construct failed");
        goto do_exit;
    }
    if (IOT_OTA_SetMaxDownloads(gw.pclient, max_downloads) != 0) {
        EXAMPLE_TRACE("OTA_MAX_DOWNLOADS must be 1 or more, not %d", max_downloads);
        goto do_exit;
    }
    EXAMPLE_TRACE("at most %d simultaneous downloads, fetch buffer %u bytes, images in %s",
                  max_downloads, (unsigned int)gw.buf_len, output_dir);
    rc = gateway_loop(&gw);

do_exit:
    EXAMPLE_TRACE("exit, rc = %d", rc);
    /* Handles first: they stop reading the image files before the files close. */
    for (i = 0; gw.devices != NULL && i < gw.device_count; i++) {
        if (NULL != gw.devices[i].h_ota) {
            IOT_OTA_Deinit(gw.devices[i].h_ota);
        }
    }
    for (i = 0; gw.devices != NULL && i < gw.device_count; i++) {
        if (gw.devices[i].fd >= 0) {
            close(gw.devices[i].fd);
        }
    }
    if (NULL != gw.pclient) {
        IOT_MQTT_Destroy(&gw.pclient);
    }
    HAL_Free(gw.devices);
    HAL_Free(gw.buf_ota);
    HAL_Free(msg_buf);
    HAL_Free(msg_readbuf);
    IOT_DumpMemoryStats(IOT_LOG_DEBUG);
    IOT_CloseLog();
    return rc;
}
