/*
 * signed_image_test.c: signed images (issue 14) through the C API, under ctest:
 * run_signed_test.sh signs the images with the real imgtool, tampers with them, and plays the
 * platform with ota-cloud over Mosquitto. The device is the shared test device (test_device.c),
 * firmware written like the iotkit v2.3 sample: it appends what IOT_OTA_FetchYield returns,
 * reports IOT_OTAP_FETCH_FAILED on every return <= 0 and leaves its loop only on
 * IOT_OTA_IsFetchFinish. It sets the image policy through IOT_OTA_Ioctl before it reports its
 * version, and checks:
 *   - the image Ioctls' argument checks: a garbage key, uint32_t options with buf_len != 4, values
 *     out of range, queries before IOT_OTAG_CHECK_FIRMWARE is 1; nothing written on an error;
 *   - during the download: every configuration refused with IOT_OTAE_INVALID_STATE, queries too;
 *   - OTA_EXPECT=valid: CHECK_FIRMWARE 1, then IOT_OTAG_IMAGE_SIGNED, IMAGE_KEY_INDEX,
 *     IMAGE_VERSION, PAYLOAD_OFFSET and PAYLOAD_SIZE as expected;
 *   - OTA_EXPECT=IOT_OTAE_IMAGE_...: found mid-image (OTA_EXPECT_FOUND=stream), IOT_OTA_FetchYield
 *     returns that code; found at the end (end), the last bytes are returned with IsFetchFinish 1
 *     and IOT_OTA_GetLastError gives the code, no FetchYield returning an error; then
 *     CHECK_FIRMWARE 0, the queries IOT_OTAE_INVALID_STATE, and IOT_OTA_GetLastError still
 *     naming the refusal.
 * The script checks the rest: the bytes written, and the platform's one failure report.
 *
 * usage: signed_image_test OUTPUT_FILE
 * env:   the test device's (test_device.h), and
 *   OTA_IMAGE_KEYS                public key files (PEM), ':'-separated, added in this order
 *   OTA_REQUIRE_SIGNATURE         1: a signature is required
 *   OTA_RUNNING_VERSION           the running image's version (IOT_OTAC_RUNNING_VERSION)
 *   OTA_RUNNING_SECURITY_COUNTER  the running image's security counter
 *   OTA_EXPECT                    valid, or the IOT_OTAE_IMAGE_* name of the refusal
 *   OTA_EXPECT_FOUND              stream or end (a refusal)
 *   OTA_EXPECT_SIGNED, OTA_EXPECT_KEY_INDEX, OTA_EXPECT_PAYLOAD_OFFSET, OTA_EXPECT_PAYLOAD_SIZE,
 *   OTA_EXPECT_IMAGE_VERSION      (valid) the query answers; IMAGE_VERSION "-": none
 * Prints one line per check; exit 0 when every check passed, 1 at the first failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iot_import.h"
#include "iot_export.h"
#include "test_checks.h"
#include "test_device.h"

/* The device drives the connection itself: the sample's 60 s keep-alive. */
#define KEEPALIVE_MS            (60000)
#define MAX_KEYS                (4)
#define KEY_FILE_MAX            (4096)
#define CANARY32                (0xA5A5A5A5u)

typedef struct {
    char pem[MAX_KEYS][KEY_FILE_MAX];
    size_t len[MAX_KEYS];
    int count;
} key_files_t;

/* What the fetch observer saw of the download. */
typedef struct {
    void *h_ota;
    const key_files_t *keys;
    /* The first IOT_OTA_FetchYield return < 0, or 0. */
    int first_error;
    /* IOT_OTA_GetLastError right after the FetchYield that ended the download with bytes. */
    int error_at_end;
    int ended_with_bytes;
    int checked_during_download;
    int checked_after;
    /* IOT_OTA_GetLastError as CHECK_FIRMWARE answered. */
    int error_at_check;
} observed_t;

static const struct {
    const char *name;
    int code;
} image_codes[] = {
    { "IOT_OTAE_IMAGE_NOT_MCUBOOT", IOT_OTAE_IMAGE_NOT_MCUBOOT },
    { "IOT_OTAE_IMAGE_BAD_HEADER", IOT_OTAE_IMAGE_BAD_HEADER },
    { "IOT_OTAE_IMAGE_ENCRYPTED", IOT_OTAE_IMAGE_ENCRYPTED },
    { "IOT_OTAE_IMAGE_TRUNCATED", IOT_OTAE_IMAGE_TRUNCATED },
    { "IOT_OTAE_IMAGE_BAD_TLV_INFO", IOT_OTAE_IMAGE_BAD_TLV_INFO },
    { "IOT_OTAE_IMAGE_TLV_PAST_END", IOT_OTAE_IMAGE_TLV_PAST_END },
    { "IOT_OTAE_IMAGE_TLV_LENGTH", IOT_OTAE_IMAGE_TLV_LENGTH },
    { "IOT_OTAE_IMAGE_DUPLICATE_TLV", IOT_OTAE_IMAGE_DUPLICATE_TLV },
    { "IOT_OTAE_IMAGE_TLV_TRUNCATED", IOT_OTAE_IMAGE_TLV_TRUNCATED },
    { "IOT_OTAE_IMAGE_TRAILING_BYTES", IOT_OTAE_IMAGE_TRAILING_BYTES },
    { "IOT_OTAE_IMAGE_SIZE_MISMATCH", IOT_OTAE_IMAGE_SIZE_MISMATCH },
    { "IOT_OTAE_IMAGE_UNSUPPORTED", IOT_OTAE_IMAGE_UNSUPPORTED },
    { "IOT_OTAE_IMAGE_MISSING_HASH", IOT_OTAE_IMAGE_MISSING_HASH },
    { "IOT_OTAE_IMAGE_HASH_MISMATCH", IOT_OTAE_IMAGE_HASH_MISMATCH },
    { "IOT_OTAE_IMAGE_MISSING_SIGNATURE", IOT_OTAE_IMAGE_MISSING_SIGNATURE },
    { "IOT_OTAE_IMAGE_NO_KEYS", IOT_OTAE_IMAGE_NO_KEYS },
    { "IOT_OTAE_IMAGE_UNKNOWN_KEY", IOT_OTAE_IMAGE_UNKNOWN_KEY },
    { "IOT_OTAE_IMAGE_BAD_SIGNATURE", IOT_OTAE_IMAGE_BAD_SIGNATURE },
    { "IOT_OTAE_IMAGE_DOWNGRADE", IOT_OTAE_IMAGE_DOWNGRADE },
    { "IOT_OTAE_IMAGE_COUNTER_DOWNGRADE", IOT_OTAE_IMAGE_COUNTER_DOWNGRADE },
};

/* The uint32_t queries about a verified image. */
static const struct {
    const char *name;
    int type;
} u32_queries[] = {
    { "IOT_OTAG_IMAGE_SIGNED", IOT_OTAG_IMAGE_SIGNED },
    { "IOT_OTAG_IMAGE_KEY_INDEX", IOT_OTAG_IMAGE_KEY_INDEX },
    { "IOT_OTAG_PAYLOAD_OFFSET", IOT_OTAG_PAYLOAD_OFFSET },
    { "IOT_OTAG_PAYLOAD_SIZE", IOT_OTAG_PAYLOAD_SIZE },
};

static const char *env_str(const char *name)
{
    const char *value = getenv(name);
    return (value != NULL) ? value : "";
}

/* A required integer from the environment (negative allowed). */
static long env_int(const char *name)
{
    const char *value = getenv(name);
    char *end = NULL;
    long n;
    char why[128];

    if (value != NULL && value[0] != '\0') {
        n = strtol(value, &end, 10);
        if (*end == '\0') {
            return n;
        }
    }
    snprintf(why, sizeof(why), "%s must be set to an integer", name);
    check_fail(why);
    return 0;
}

static int image_code(const char *name)
{
    size_t i;
    char why[128];

    for (i = 0; i < sizeof(image_codes) / sizeof(image_codes[0]); i++) {
        if (0 == strcmp(image_codes[i].name, name)) {
            return image_codes[i].code;
        }
    }
    snprintf(why, sizeof(why), "OTA_EXPECT=%s is neither valid nor an IOT_OTAE_IMAGE_* name", name);
    check_fail(why);
    return 0;
}

/* OTA_IMAGE_KEYS: each file's PEM text. */
static void read_keys(key_files_t *keys)
{
    char list[1024];
    char *path, *rest = NULL;
    FILE *fp;

    memset(keys, 0, sizeof(*keys));
    if (strlen(env_str("OTA_IMAGE_KEYS")) >= sizeof(list)) {
        check_fail("OTA_IMAGE_KEYS is too long");
    }
    strcpy(list, env_str("OTA_IMAGE_KEYS"));
    for (path = strtok_r(list, ":", &rest); path != NULL; path = strtok_r(NULL, ":", &rest)) {
        if (keys->count == MAX_KEYS) {
            check_fail("more than MAX_KEYS keys in OTA_IMAGE_KEYS");
        }
        fp = fopen(path, "rb");
        if (NULL == fp) {
            check_fail("a key file of OTA_IMAGE_KEYS cannot be opened");
        }
        keys->len[keys->count] = fread(keys->pem[keys->count], 1, KEY_FILE_MAX - 1, fp);
        fclose(fp);
        keys->count++;
    }
}

static int ioctl_u32(void *h, int type, uint32_t value, size_t buf_len)
{
    uint32_t buf[2] = { value, value };
    return IOT_OTA_Ioctl(h, (IOT_OTA_CmdType_t)type, buf, buf_len);
}

/* Every image query refused with `expected`, its buffer untouched. */
static void queries_refused(void *h, int expected, const char *when)
{
    char what[160];
    char version[32];
    uint32_t value;
    size_t i;

    for (i = 0; i < sizeof(u32_queries) / sizeof(u32_queries[0]); i++) {
        value = CANARY32;
        snprintf(what, sizeof(what), "%s %s", u32_queries[i].name, when);
        expect_eq_msg(what, IOT_OTA_Ioctl(h, (IOT_OTA_CmdType_t)u32_queries[i].type, &value, 4), expected);
        snprintf(what, sizeof(what), "  ... its buffer untouched");
        expect_eq_msg(what, value, CANARY32);
    }
    memset(version, 'Z', sizeof(version));
    snprintf(what, sizeof(what), "IOT_OTAG_IMAGE_VERSION %s", when);
    expect_eq_msg(what, IOT_OTA_Ioctl(h, IOT_OTAG_IMAGE_VERSION, version, sizeof(version)), expected);
    EXPECT_TRUE("  ... its buffer untouched", version[0] == 'Z' && version[sizeof(version) - 1] == 'Z');
}

/* Bad arguments, before any upgrade: each refused with its code, GetLastError agreeing. */
static void argument_checks(void *h, const key_files_t *keys)
{
    static const char garbage_pem[] =
        "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PUBLIC KEY-----\n";
    unsigned char raw31[31];
    size_t i;
    char what[160];
    static const int u32_options[] = {
        IOT_OTAC_REQUIRE_SIGNATURE, IOT_OTAC_RUNNING_SECURITY_COUNTER, IOT_OTAC_ALLOW_DOWNGRADE,
    };

    memset(raw31, 0x42, sizeof(raw31));
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_ADD_IMAGE_KEY, (void *)garbage_pem, sizeof(garbage_pem) - 1),
              IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_ADD_IMAGE_KEY, raw31, sizeof(raw31)), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_ADD_IMAGE_KEY, NULL, 32), IOT_OTAE_INVALID_PARAM);
    if (keys->count > 0) {
        /* A real key cut in half. */
        EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_ADD_IMAGE_KEY, (void *)keys->pem[0], keys->len[0] / 2),
                  IOT_OTAE_INVALID_PARAM);
        EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_ADD_IMAGE_KEY, (void *)keys->pem[0], 0),
                  IOT_OTAE_INVALID_PARAM);
    }
    for (i = 0; i < sizeof(u32_options) / sizeof(u32_options[0]); i++) {
        snprintf(what, sizeof(what), "uint32_t option %d with buf_len 2", u32_options[i]);
        expect_eq_msg(what, ioctl_u32(h, u32_options[i], 0, 2), IOT_OTAE_INVALID_PARAM);
        snprintf(what, sizeof(what), "uint32_t option %d with buf_len 8", u32_options[i]);
        expect_eq_msg(what, ioctl_u32(h, u32_options[i], 0, 8), IOT_OTAE_INVALID_PARAM);
    }
    EXPECT_EQ(ioctl_u32(h, IOT_OTAC_REQUIRE_SIGNATURE, 2, 4), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAC_ALLOW_DOWNGRADE, 2, 4), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_RUNNING_VERSION, "1.2.x", 6), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_RUNNING_VERSION, "256.0.0", 8), IOT_OTAE_INVALID_PARAM);
    /* No NUL within buf_len. */
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_RUNNING_VERSION, "1.2.3", 5), IOT_OTAE_INVALID_PARAM);
    /* The uint32_t queries' length is checked before the state. */
    for (i = 0; i < sizeof(u32_queries) / sizeof(u32_queries[0]); i++) {
        snprintf(what, sizeof(what), "%s with buf_len 8", u32_queries[i].name);
        expect_eq_msg(what, ioctl_u32(h, u32_queries[i].type, 0, 8), IOT_OTAE_INVALID_PARAM);
    }
    queries_refused(h, IOT_OTAE_INVALID_STATE, "before any upgrade");
    EXPECT_EQ(IOT_OTA_GetLastError(h), IOT_OTAE_INVALID_STATE);
}

/* The policy from the environment; the first key is passed with its NUL counted. */
static void configure(void *h, const key_files_t *keys)
{
    int i;
    char what[160];

    /* The defaults, said explicitly: accepted. */
    EXPECT_EQ(ioctl_u32(h, IOT_OTAC_ALLOW_DOWNGRADE, 0, 4), 0);
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_RUNNING_VERSION, "", 1), 0);
    for (i = 0; i < keys->count; i++) {
        snprintf(what, sizeof(what), "IOT_OTAC_ADD_IMAGE_KEY key %d", i);
        expect_eq_msg(what, IOT_OTA_Ioctl(h, IOT_OTAC_ADD_IMAGE_KEY, (void *)keys->pem[i],
                                          keys->len[i] + (i == 0 ? 1 : 0)), 0);
    }
    if (0 == strcmp(env_str("OTA_REQUIRE_SIGNATURE"), "1")) {
        EXPECT_EQ(ioctl_u32(h, IOT_OTAC_REQUIRE_SIGNATURE, 1, 4), 0);
    }
    if (env_str("OTA_RUNNING_VERSION")[0] != '\0') {
        EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_RUNNING_VERSION, (void *)env_str("OTA_RUNNING_VERSION"),
                                strlen(env_str("OTA_RUNNING_VERSION")) + 1), 0);
    }
    if (env_str("OTA_RUNNING_SECURITY_COUNTER")[0] != '\0') {
        EXPECT_EQ(ioctl_u32(h, IOT_OTAC_RUNNING_SECURITY_COUNTER,
                            (uint32_t)env_int("OTA_RUNNING_SECURITY_COUNTER"), 4), 0);
    }
}

/* During the download the policy is fixed, and nothing is verified yet. */
static void checks_during_download(void *h, const key_files_t *keys)
{
    uint32_t valid = CANARY32;

    if (keys->count > 0) {
        EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_ADD_IMAGE_KEY, (void *)keys->pem[0], keys->len[0]),
                  IOT_OTAE_INVALID_STATE);
    }
    EXPECT_EQ(ioctl_u32(h, IOT_OTAC_REQUIRE_SIGNATURE, 0, 4), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAC_ALLOW_DOWNGRADE, 1, 4), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(ioctl_u32(h, IOT_OTAC_RUNNING_SECURITY_COUNTER, 0, 4), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_RUNNING_VERSION, "0.0.1", 6), IOT_OTAE_INVALID_STATE);
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAC_RUNNING_VERSION, "", 1), IOT_OTAE_INVALID_STATE);
    /* An argument error is still one. */
    EXPECT_EQ(ioctl_u32(h, IOT_OTAC_REQUIRE_SIGNATURE, 0, 8), IOT_OTAE_INVALID_PARAM);
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAG_CHECK_FIRMWARE, &valid, 4), IOT_OTAE_INVALID_STATE);
    queries_refused(h, IOT_OTAE_INVALID_STATE, "during the download");
}

static void on_fetch(void *ctx, int len, uint64_t took_us)
{
    observed_t *o = (observed_t *)ctx;

    (void)took_us;
    if (len < 0 && o->first_error == 0) {
        o->first_error = len;
    }
    if (len <= 0) {
        return;
    }
    if (IOT_OTA_IsFetchFinish(o->h_ota)) {
        /* What firmware can learn right after the last bytes: the refusal, if any. */
        o->ended_with_bytes = 1;
        o->error_at_end = IOT_OTA_GetLastError(o->h_ota);
    } else if (!o->checked_during_download) {
        o->checked_during_download = 1;
        checks_during_download(o->h_ota, o->keys);
    }
}

/* A verified image: what the queries say about it. */
static void check_verified(void *h)
{
    uint32_t value = CANARY32;
    int32_t key_index = (int32_t)CANARY32;
    char version[32];
    char short_buf[4];
    const char *expected_version = env_str("OTA_EXPECT_IMAGE_VERSION");

    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAG_IMAGE_SIGNED, &value, 4), 0);
    expect_eq_msg("IOT_OTAG_IMAGE_SIGNED", value, env_int("OTA_EXPECT_SIGNED"));
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAG_IMAGE_KEY_INDEX, &key_index, 4), 0);
    expect_eq_msg("IOT_OTAG_IMAGE_KEY_INDEX", key_index, env_int("OTA_EXPECT_KEY_INDEX"));
    value = CANARY32;
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAG_PAYLOAD_OFFSET, &value, 4), 0);
    expect_eq_msg("IOT_OTAG_PAYLOAD_OFFSET", value, env_int("OTA_EXPECT_PAYLOAD_OFFSET"));
    value = CANARY32;
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAG_PAYLOAD_SIZE, &value, 4), 0);
    expect_eq_msg("IOT_OTAG_PAYLOAD_SIZE", value, env_int("OTA_EXPECT_PAYLOAD_SIZE"));

    memset(version, 'Z', sizeof(version));
    if (0 == strcmp(expected_version, "-")) {
        EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAG_IMAGE_VERSION, version, sizeof(version)), IOT_OTAE_INVALID_STATE);
        EXPECT_TRUE("IOT_OTAG_IMAGE_VERSION buffer untouched", version[0] == 'Z');
        return;
    }
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAG_IMAGE_VERSION, version, sizeof(version)), 0);
    printf("IOT_OTAG_IMAGE_VERSION: \"%s\" (expected \"%s\")\n", version, expected_version);
    EXPECT_TRUE("IOT_OTAG_IMAGE_VERSION is OTA_EXPECT_IMAGE_VERSION", 0 == strcmp(version, expected_version));
    EXPECT_TRUE("  ... exactly its length and the NUL written",
                strlen(expected_version) + 1 < sizeof(version) && version[strlen(expected_version) + 1] == 'Z');
    /* Too short for the text and its NUL: refused, nothing written. */
    memset(short_buf, 'Z', sizeof(short_buf));
    EXPECT_EQ(IOT_OTA_Ioctl(h, IOT_OTAG_IMAGE_VERSION, short_buf, sizeof(short_buf)), IOT_OTAE_STR_TOO_LONG);
    EXPECT_TRUE("  ... the short buffer untouched", short_buf[0] == 'Z' && short_buf[3] == 'Z');
}

static void on_check(void *ctx, uint32_t firmware_valid)
{
    observed_t *o = (observed_t *)ctx;
    const char *expect = env_str("OTA_EXPECT");

    o->checked_after = 1;
    o->error_at_check = IOT_OTA_GetLastError(o->h_ota);
    if (0 == strcmp(expect, "valid")) {
        EXPECT_EQ(firmware_valid, 1);
        check_verified(o->h_ota);
        return;
    }
    EXPECT_EQ(firmware_valid, 0);
    queries_refused(o->h_ota, IOT_OTAE_INVALID_STATE, "after CHECK_FIRMWARE 0");
}

int main(int argc, char **argv)
{
    static key_files_t keys;
    static observed_t seen;
    test_device_t d;
    const char *expect = env_str("OTA_EXPECT");
    const char *found = env_str("OTA_EXPECT_FOUND");
    int code = 0;
    int rc;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (0 != strcmp(expect, "valid")) {
        code = image_code(expect);
        if (0 != strcmp(found, "stream") && 0 != strcmp(found, "end")) {
            check_fail("OTA_EXPECT_FOUND must be stream or end");
        }
    }
    read_keys(&keys);
    device_start(&d, "signed", argc, argv);
    if (device_connect(&d, KEEPALIVE_MS, trace_connection_events, NULL) != 0) {
        check_fail("the device did not connect");
    }
    seen.h_ota = d.h_ota;
    seen.keys = &keys;
    d.on_fetch = on_fetch;
    d.on_fetch_ctx = &seen;
    d.on_check = on_check;
    d.on_check_ctx = &seen;

    argument_checks(d.h_ota, &keys);
    configure(d.h_ota, &keys);
    if (device_report_running_version(&d) != 0) {
        check_fail("the running version was not reported");
    }
    rc = device_upgrade_cycle(&d, 1);
    HAL_Printf("signed: cycle 1 -> %s\n", rc_name(rc));

    EXPECT_TRUE("CHECK_FIRMWARE was read after the download", seen.checked_after);
    if (0 == strcmp(expect, "valid")) {
        EXPECT_EQ(rc, RC_VALID);
        EXPECT_EQ(seen.first_error, 0);
        EXPECT_TRUE("the policy was tried during the download", seen.checked_during_download);
    } else {
        EXPECT_EQ(rc, RC_INVALID);
        if (0 == strcmp(found, "stream")) {
            expect_eq_msg("the first IOT_OTA_FetchYield error is OTA_EXPECT", seen.first_error, code);
        } else {
            EXPECT_EQ(seen.first_error, 0);
            EXPECT_TRUE("the last FetchYield returned bytes and IsFetchFinish 1", seen.ended_with_bytes);
            expect_eq_msg("IOT_OTA_GetLastError after the last bytes is OTA_EXPECT", seen.error_at_end, code);
        }
        expect_eq_msg("IOT_OTA_GetLastError when CHECK_FIRMWARE is 0 is OTA_EXPECT",
                      seen.error_at_check, code);
    }
    device_stop(&d, rc);
    return checks_done();
}
