/*
 * sequential_writer.c: the device of the fault matrix (run_fault_matrix.sh). Firmware written
 * the way the iotkit v2.3 OTA sample (ota_example_mqtt.c) is written, compiled unchanged
 * against libota: its upgrade cycle (test_device.c) appends every chunk IOT_OTA_FetchYield
 * returns to its image file and never seeks back, so the file is right only if the SDK hands
 * over bytes 0..n-1 of one image, once each, in order (or OFFSET..n-1 after a resume from a
 * breakpoint record, kept here through the writer's own store callbacks).
 *
 * Usage: sequential_writer [output-file]            (default output file: ota.bin)
 *
 * Environment (all optional): the device's (identity, protocol, OTA_BUF_LEN, OTA_FETCH_TIMEOUT_S,
 * OTA_TIMEOUT_S, the broker: test_device.h), and
 *   OTA_CYCLES             upgrade cycles (default 1, as the sample): after an INVALID cycle the
 *                          writer waits for the next upgrade, up to this many cycles in all
 *   OTA_BREAKPOINT_FILE    keep the breakpoint record in this file, through the writer's own
 *                          IOT_OTA_SetBreakpointStore callbacks (resume after a restart)
 *   OTA_ABORT_AFTER_SAVE   N: abort() right after the N-th successful save (a power cut)
 *   OTA_FRESH_URL_WAIT_S   seconds an expired URL waits for a fresh one (extension
 *                          IOT_OTA_SetFreshUrlWait; default: the SDK's, 60 s)
 *   OTA_DELTA_OLD          the image the device runs: delta patches apply to it (extension
 *                          IOT_OTA_SetDeltaSource, one call at start-up; the cycle is unchanged
 *                          and appends the NEW image's bytes)
 *
 * Each cycle ends with one line "writer: cycle N -> VALID|INVALID|TIMEOUT|ERROR" on stdout.
 * Exit code (of the last cycle): 0 VALID (CHECK_FIRMWARE 1, the new version reported),
 * 2 INVALID (CHECK_FIRMWARE 0), 3 the download did not end within OTA_TIMEOUT_S, 1 any other
 * error. With OTA_ABORT_AFTER_SAVE the process dies by SIGABRT.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
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

#define BREAKPOINT_PATH_MAX     (480)
/* Small enough that a 300 KB image gets many saves, so a cut can fall anywhere. */
#define SAVE_EVERY_BYTES        (16 * 1024)
/* The writer drives the connection itself: the sample's 60 s keep-alive. */
#define KEEPALIVE_MS            (60000)

/* The "flash sector" of the breakpoint record: a file, replaced whole on each save. */
typedef struct {
    char path[BREAKPOINT_PATH_MAX];
    char tmp_path[BREAKPOINT_PATH_MAX + 4];
    long abort_after;
    long saves;
} breakpoint_file_t;

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

/* The running image, read by offset for delta patches (OTA_DELTA_OLD). */
static int old_image_fd = -1;

static int read_old_image(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len)
{
    uint32_t done = 0;

    (void)ctx;
    while (done < len) {
        ssize_t n = pread(old_image_fd, buf + done, len - done, (off_t)offset + done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        done += (uint32_t)n;
    }
    return (int)len;
}

/* Registers the running image as the base of delta patches when OTA_DELTA_OLD is set; must
 * come before ReportVersion. */
static int setup_delta_source(void *h_ota)
{
    const char *path = getenv("OTA_DELTA_OLD");
    struct stat st;
    int rc;

    if (NULL == path || path[0] == '\0') {
        return 0;
    }
    old_image_fd = open(path, O_RDONLY);
    if (old_image_fd < 0 || fstat(old_image_fd, &st) != 0) {
        EXAMPLE_TRACE("cannot open OTA_DELTA_OLD %s", path);
        return -1;
    }
    rc = IOT_OTA_SetDeltaSource(h_ota, read_old_image, NULL, (uint32_t)st.st_size);
    if (0 != rc) {
        EXAMPLE_TRACE("IOT_OTA_SetDeltaSource failed, rc = %d", rc);
        return -1;
    }
    EXAMPLE_TRACE("delta patches apply to %s (%ld bytes)", path, (long)st.st_size);
    return 0;
}

int main(int argc, char **argv)
{
    static breakpoint_file_t bp;
    test_device_t d;
    long cycles = env_long("OTA_CYCLES", 1);
    long fresh_url_wait_s = env_long("OTA_FRESH_URL_WAIT_S", 0);
    long cycle;
    int rc = RC_FAILED;

    device_start(&d, "writer", argc, argv);
    if (device_connect(&d, KEEPALIVE_MS, trace_connection_events, NULL) != 0
        || setup_breakpoint_store(d.h_ota, &bp) != 0 || setup_delta_source(d.h_ota) != 0) {
        goto do_exit;
    }
    if (fresh_url_wait_s > 0 && 0 != IOT_OTA_SetFreshUrlWait(d.h_ota, (uint32_t)fresh_url_wait_s)) {
        EXAMPLE_TRACE("IOT_OTA_SetFreshUrlWait failed");
        goto do_exit;
    }
    if (device_report_running_version(&d) != 0) {
        goto do_exit;
    }

    for (cycle = 1; cycle <= cycles; cycle++) {
        rc = device_upgrade_cycle(&d, (int)cycle);
        HAL_Printf("writer: cycle %ld -> %s\n", cycle, rc_name(rc));
        /* Only a rejected image makes the device wait for another upgrade (a superseded one). */
        if (rc != RC_INVALID) {
            break;
        }
    }

do_exit:
    device_stop(&d, rc);
    if (old_image_fd >= 0) {
        close(old_image_fd);
    }
    return rc;
}
