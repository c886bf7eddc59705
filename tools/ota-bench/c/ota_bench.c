/*
 * ota_bench.c: the Aliyun-sample device flow, instrumented for ota-bench.
 *
 * Usage: ota_bench BUF_LEN [PROTOCOL]   (broker from IOTX_MQTT_HOST / IOTX_MQTT_PORT)
 *        PROTOCOL: an IOT_OTA_PROTOCOL_* number (default 0, Aliyun through IOT_OTA_Init; others
 *        through IOT_OTA_InitWithProtocol, e.g. 1 SagooIOT for a SHA-256 signed upgrade)
 *
 * IOT_MQTT_Construct -> IOT_OTA_Init -> IOT_OTA_ReportVersion -> waits for the SUBACK, prints
 * "READY", then loops IOT_MQTT_Yield(pclient, 200) until IOT_OTA_IsFetching, runs the FetchYield
 * loop of examples-c/ota_mqtt_example.c (FetchYield, progress report when the percentage grows,
 * IOT_MQTT_Yield(pclient, 0); the bytes are discarded instead of written to a file) and
 * IOT_OTAG_CHECK_FIRMWARE, then prints one line:
 *   RESULT bytes=N loop_ns=T check_ns=T first_byte_mono_ns=T valid=0|1 hwm_kib=K
 *          heap_init=B heap_download=B threads_init=N threads_max=N
 * first_byte_mono_ns is CLOCK_MONOTONIC when the first FetchYield returned data (the bench
 * compares it with its own CLOCK_MONOTONIC at publish time); hwm_kib is VmHWM from
 * /proc/self/status after the download: the peak RSS of this program since its exec.
 * heap_init is the malloc heap in use (glibc mallinfo2: arena + mmapped chunks) after
 * IOT_SetupConnInfo + IOT_MQTT_Construct + IOT_OTA_Init, minus before them; heap_download the
 * same at the end of the FetchYield loop (so it includes the download's HTTP connection).
 * Thread stacks are not malloc'd: they show in hwm_kib only. threads_init counts the
 * program's threads (/proc/self/task) after init, threads_max the most seen during the download
 * (sampled every 16 FetchYields and at the end).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <malloc.h>
#include <dirent.h>

#include "iot_import.h"
#include "iot_export.h"

#define PK "a1BenchPk01"
#define DN "bench_device"
#define DS "BenchSecretBenchSecretBenchSecre"
#define MQTT_MSGLEN 2048

static volatile int subscribed = 0;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Peak RSS of this program since exec (VmHWM), KiB; -1 when unknown. */
static long vm_hwm_kib(void)
{
    char line[256];
    long kib = -1;
    FILE *f = fopen("/proc/self/status", "r");

    if (!f) {
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

/* Bytes of malloc heap in use; -1 without glibc. */
static long long heap_in_use(void)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 mi = mallinfo2();
    return (long long)(mi.uordblks + mi.hblkhd);
#else
    return -1;
#endif
}

/* Threads of this process (/proc/self/task entries); -1 when unknown. */
static long thread_count(void)
{
    long n = 0;
    struct dirent *e;
    DIR *d = opendir("/proc/self/task");

    if (!d) {
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n;
}

static void event_handle(void *pcontext, void *pclient, iotx_mqtt_event_msg_pt msg)
{
    (void)pcontext;
    (void)pclient;
    if (msg->event_type == IOTX_MQTT_EVENT_SUBCRIBE_SUCCESS) {
        subscribed = 1;
    }
}

int main(int argc, char **argv)
{
    long buf_len = argc > 1 ? strtol(argv[1], NULL, 10) : 5000;
    long protocol = argc > 2 ? strtol(argv[2], NULL, 10) : IOT_OTA_PROTOCOL_ALIYUN;
    char *buf, *msg_buf, *msg_readbuf;
    iotx_conn_info_pt ci = NULL;
    iotx_mqtt_param_t p;
    void *pclient, *h_ota;
    uint64_t deadline, t0, t1, t2, first = 0, total = 0;
    uint32_t valid = 0, fetched = 0, size = 0;
    int last_percent = 0, len;
    long long heap0, heap_init, heap_download;
    long threads_init, threads_max, calls = 0;

    if (buf_len <= 0 || buf_len > 65536) {
        fprintf(stderr, "bad buffer length\n");
        return 1;
    }
    buf = malloc((size_t)buf_len);
    msg_buf = malloc(MQTT_MSGLEN);
    msg_readbuf = malloc(MQTT_MSGLEN);
    if (!buf || !msg_buf || !msg_readbuf) {
        return 1;
    }
    IOT_OpenLog("bench");
    IOT_SetLogLevel(IOT_LOG_ERROR);
    heap0 = heap_in_use();
    if (IOT_SetupConnInfo(PK, DN, DS, (void **)&ci) != 0) {
        fprintf(stderr, "IOT_SetupConnInfo failed\n");
        return 1;
    }
    memset(&p, 0, sizeof(p));
    p.port = ci->port;
    p.host = ci->host_name;
    p.client_id = ci->client_id;
    p.username = ci->username;
    p.password = ci->password;
    p.pub_key = ci->pub_key;
    p.request_timeout_ms = 2000;
    p.clean_session = 0;
    p.keepalive_interval_ms = 60000;
    p.pread_buf = msg_readbuf;
    p.read_buf_size = MQTT_MSGLEN;
    p.pwrite_buf = msg_buf;
    p.write_buf_size = MQTT_MSGLEN;
    p.handle_event.h_fp = event_handle;
    pclient = IOT_MQTT_Construct(&p);
    if (!pclient) {
        fprintf(stderr, "IOT_MQTT_Construct failed\n");
        return 1;
    }
    h_ota = protocol == IOT_OTA_PROTOCOL_ALIYUN
                ? IOT_OTA_Init(PK, DN, pclient)
                : IOT_OTA_InitWithProtocol(PK, DN, pclient, (IOT_OTA_Protocol_t)protocol);
    heap_init = heap_in_use() - heap0;
    threads_init = thread_count();
    threads_max = threads_init;
    if (!h_ota || IOT_OTA_ReportVersion(h_ota, "1.0.0") != 0) {
        fprintf(stderr, "IOT_OTA_Init / ReportVersion failed\n");
        return 1;
    }
    deadline = mono_ns() + 10ull * 1000000000ull;
    while (!subscribed && mono_ns() < deadline) {
        IOT_MQTT_Yield(pclient, 10);
    }
    if (!subscribed) {
        fprintf(stderr, "no SUBACK\n");
        return 1;
    }
    printf("READY\n");
    fflush(stdout);

    deadline = mono_ns() + 60ull * 1000000000ull;
    for (;;) {
        IOT_MQTT_Yield(pclient, 200);
        if (IOT_OTA_IsFetching(h_ota)) {
            break;
        }
        if (mono_ns() > deadline) {
            fprintf(stderr, "no upgrade message\n");
            return 2;
        }
    }
    t0 = mono_ns();
    do {
        len = IOT_OTA_FetchYield(h_ota, buf, (uint32_t)buf_len, 1);
        if (len < 0) {
            fprintf(stderr, "FetchYield failed: %d (last error %d)\n", len, IOT_OTA_GetLastError(h_ota));
            return 1;
        }
        if (len > 0) {
            if (!first) {
                first = mono_ns();
            }
            total += (uint64_t)len;
        }
        IOT_OTA_Ioctl(h_ota, IOT_OTAG_FETCHED_SIZE, &fetched, 4);
        IOT_OTA_Ioctl(h_ota, IOT_OTAG_FILE_SIZE, &size, 4);
        if (size != 0) {
            int percent = (int)((uint64_t)fetched * 100 / size);
            if (percent > last_percent) {
                IOT_OTA_ReportProgress(h_ota, (IOT_OTA_Progress_t)percent, NULL);
                last_percent = percent;
            }
        }
        IOT_MQTT_Yield(pclient, 0);
        if (++calls % 16 == 0) {
            long n = thread_count();
            threads_max = n > threads_max ? n : threads_max;
        }
    } while (!IOT_OTA_IsFetchFinish(h_ota));
    {
        long n = thread_count();
        threads_max = n > threads_max ? n : threads_max;
    }
    t1 = mono_ns();
    heap_download = heap_in_use() - heap0;
    if (IOT_OTA_Ioctl(h_ota, IOT_OTAG_CHECK_FIRMWARE, &valid, 4) != 0) {
        valid = 0;
    }
    t2 = mono_ns();
    printf("RESULT bytes=%llu loop_ns=%llu check_ns=%llu first_byte_mono_ns=%llu valid=%u hwm_kib=%ld"
           " heap_init=%lld heap_download=%lld threads_init=%ld threads_max=%ld\n",
           (unsigned long long)total, (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1),
           (unsigned long long)first, (unsigned)valid, vm_hwm_kib(), heap_init, heap_download,
           threads_init, threads_max);
    fflush(stdout);
    IOT_OTA_Deinit(h_ota);
    IOT_MQTT_Destroy(&pclient);
    free(buf);
    free(msg_buf);
    free(msg_readbuf);
    return valid ? 0 : 1;
}
