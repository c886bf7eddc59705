/*
 * two_thread_firmware.c: firmware with a yield thread, the way many iotkit v2.3 integrations
 * are written (issue 12, item 3). One thread does nothing but IOT_MQTT_Yield(pclient, 200) in
 * a loop; the main thread waits for an upgrade and runs the iotkit sample's FetchYield loop
 * (test_device.c: append each chunk to the image file, IOT_OTAP_FETCH_FAILED on <= 0, leave on
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
 * Environment (all optional): the device's (identity, protocol, OTA_BUF_LEN, OTA_FETCH_TIMEOUT_S,
 * OTA_TIMEOUT_S, the broker: test_device.h), and
 *   OTA_KEEPALIVE_MS       MQTT keep-alive (default 4000)
 *
 * Exit code: 0 the image passed CHECK_FIRMWARE and the new version was reported, 2 CHECK_FIRMWARE
 * said invalid, 3 the run did not end within OTA_TIMEOUT_S, 1 any other error.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#include "iot_import.h"
#include "iot_export.h"
#include "test_device.h"

#define OTA_KEEPALIVE_MS        (4000)
/* The yield thread's timeout, and how late a Yield may return before it counts as blocked. */
#define YIELD_TIMEOUT_MS        (200)
#define YIELD_SLACK_MS          (50)

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
    test_device_t device;
    shared_t shared;
    call_stats_t yields;
    call_stats_t fetches;
} firmware_t;

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
static void count_connection_events(void *pcontext, void *pclient, iotx_mqtt_event_msg_pt msg)
{
    shared_t *shared = (shared_t *)pcontext;

    switch (msg->event_type) {
        case IOTX_MQTT_EVENT_DISCONNECT:
            pthread_mutex_lock(&shared->lock);
            shared->disconnects++;
            pthread_mutex_unlock(&shared->lock);
            break;
        case IOTX_MQTT_EVENT_RECONNECT:
            pthread_mutex_lock(&shared->lock);
            shared->reconnects++;
            pthread_mutex_unlock(&shared->lock);
            break;
        default:
            break;
    }
    trace_connection_events(pcontext, pclient, msg);
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

    while (!should_stop(&fw->shared)) {
        uint64_t start = monotonic_us();
        int rc = IOT_MQTT_Yield(fw->device.pclient, YIELD_TIMEOUT_MS);
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

/* Runs on the main thread after each FetchYield of the upgrade cycle. */
static void time_fetch(void *ctx, int len, uint64_t took_us)
{
    firmware_t *fw = (firmware_t *)ctx;

    stats_add(&fw->fetches, took_us, (long)fw->device.fetch_timeout_s * 1000);
    if (len <= 0) {
        fw->fetches.errors++;
    }
}

int main(int argc, char **argv)
{
    static firmware_t fw;
    test_device_t *d = &fw.device;
    pthread_t yielder;
    int yielding = 0;
    uint32_t keepalive_ms = (uint32_t)env_long("OTA_KEEPALIVE_MS", OTA_KEEPALIVE_MS);
    int rc = RC_FAILED;

    if (0 != pthread_mutex_init(&fw.shared.lock, NULL)) {
        return RC_FAILED;
    }
    device_start(d, "two_thread", argc, argv);
    d->yield_thread = 1;
    d->on_fetch = time_fetch;
    d->on_fetch_ctx = &fw;
    if (device_connect(d, keepalive_ms, count_connection_events, &fw.shared) != 0) {
        goto do_exit;
    }
    if (0 != pthread_create(&yielder, NULL, yield_thread, &fw)) {
        EXAMPLE_TRACE("starting the yield thread failed");
        goto do_exit;
    }
    yielding = 1;
    if (device_report_running_version(d) != 0) {
        goto do_exit;
    }
    rc = device_upgrade_cycle(d, 1);
    HAL_Printf("two_thread: upgrade -> %s\n", rc_name(rc));

do_exit:
    if (yielding) {
        pthread_mutex_lock(&fw.shared.lock);
        fw.shared.stop = 1;
        pthread_mutex_unlock(&fw.shared.lock);
        pthread_join(yielder, NULL);
        stats_print("yield", &fw.yields, YIELD_TIMEOUT_MS);
        stats_print("fetch", &fw.fetches, (long)d->fetch_timeout_s * 1000);
        pthread_mutex_lock(&fw.shared.lock);
        HAL_Printf("mqtt: %lu disconnects, %lu reconnects (keep-alive %u ms)\n", fw.shared.disconnects,
                   fw.shared.reconnects, (unsigned int)keepalive_ms);
        pthread_mutex_unlock(&fw.shared.lock);
    }
    device_stop(d, rc);
    pthread_mutex_destroy(&fw.shared.lock);
    return rc;
}
