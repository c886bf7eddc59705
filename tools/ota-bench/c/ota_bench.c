/*
 * ota_bench.c: the Aliyun-sample device flow, instrumented for ota-bench.
 *
 * Usage: ota_bench BUF_LEN [PROTOCOL] [--https-ca FILE] [--handles N] [--idle] [--image-key FILE]
 *        (broker from IOTX_MQTT_HOST / IOTX_MQTT_PORT)
 *        PROTOCOL: an IOT_OTA_PROTOCOL_* number (default 0, Aliyun through IOT_OTA_Init; others
 *        through IOT_OTA_InitWithProtocol, e.g. 1 SagooIOT for a SHA-256 signed upgrade)
 *        --https-ca FILE: trust the CA certificate(s) in FILE (PEM) for HTTPS downloads, set
 *        with IOT_Ioctl(IOTX_IOCTL_SET_HTTPS_CA) before IOT_OTA_Init (counted in heap_init)
 *        --handles N: after the first, N-1 more OTA handles on the same MQTT client, device
 *        names DN_2 .. DN_N (a second handle with the same name would take over the first
 *        one's upgrade topic); the download runs on the first
 *        --idle: no download: once every handle has reported its version and the broker has
 *        acknowledged every handle's subscription, print the RESULT line (bytes=0 valid=1,
 *        hwm_kib and heap_handles as below) and exit: a gateway with N idle sub-devices
 *        --image-key FILE: after IOT_OTA_Init (outside heap_init), IOT_OTAC_ADD_IMAGE_KEY with the
 *        public key in FILE (PEM) and IOT_OTAC_REQUIRE_SIGNATURE 1: only an MCUboot image signed
 *        with it verifies
 *
 * IOT_MQTT_Construct -> IOT_OTA_Init -> IOT_OTA_ReportVersion -> waits for every handle's SUBACK, prints
 * "READY", then loops IOT_MQTT_Yield(pclient, 200) until IOT_OTA_IsFetching, runs the FetchYield
 * loop of examples-c/ota_mqtt_example.c (FetchYield, progress report when the percentage grows,
 * IOT_MQTT_Yield(pclient, 0); the bytes are discarded instead of written to a file) and
 * IOT_OTAG_CHECK_FIRMWARE, then prints one line:
 *   RESULT bytes=N loop_ns=T check_ns=T first_byte_mono_ns=T valid=0|1 hwm_kib=K
 *          heap_init=B heap_mid=B heap_download=B heap_handles=B,B,..|refused
 *          threads_init=N threads_max=N signed=0|1
 * first_byte_mono_ns is CLOCK_MONOTONIC when the first FetchYield returned data (the bench
 * compares it with its own CLOCK_MONOTONIC at publish time); hwm_kib is VmHWM from
 * /proc/self/status after the download: the peak RSS of this program since its exec.
 * heap_init is the malloc heap in use (glibc mallinfo2: arena + mmapped chunks) after
 * IOT_SetupConnInfo + IOT_MQTT_Construct + IOT_OTA_Init, minus before them; heap_mid the same
 * when the fetched size first reaches half the file (a download in flight: its connection, and
 * with TLS its session); heap_download at the end of the FetchYield loop. heap_handles is the
 * heap after each IOT_OTA_Init of --handles (the first is heap_init); "refused" ends the list
 * where an IOT_OTA_Init returned NULL.
 * Thread stacks are not malloc'd: they show in hwm_kib only. threads_init counts the
 * program's threads (/proc/self/task) after init, threads_max the most seen during the download
 * (sampled every 16 FetchYields and at the end). signed is IOT_OTAG_IMAGE_SIGNED of a valid
 * image (1: its signature verified with the --image-key key).
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

/* SUBACKs seen: one per handle (each subscribes its upgrade topic). */
static volatile long subscribed = 0;

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
        subscribed++;
    }
}

/* The whole of FILE in a NUL-terminated malloc'd buffer; NULL when unreadable. */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long n;

    if (!f) {
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        text = malloc((size_t)n + 1);
        if (text && fread(text, 1, (size_t)n, f) == (size_t)n) {
            text[n] = '\0';
        } else {
            free(text);
            text = NULL;
        }
    }
    fclose(f);
    return text;
}

/* ota-bench's idle-handle rows go to 256; the SDK allows IOT_OTA_MAX_HANDLES_PER_CLIENT. */
#define MAX_HANDLES 256

int main(int argc, char **argv)
{
    long buf_len = 5000, protocol = IOT_OTA_PROTOCOL_ALIYUN, handles = 1;
    const char *ca_file = NULL, *key_file = NULL;
    char *buf, *msg_buf, *msg_readbuf, *ca_pem = NULL, *key_pem = NULL;
    char heap_handles[MAX_HANDLES * 24] = "";
    iotx_conn_info_pt ci = NULL;
    iotx_mqtt_param_t p;
    void *pclient, *h_ota, *extra[MAX_HANDLES] = {NULL};
    uint64_t deadline, t0, t1, t2, first = 0, total = 0;
    uint32_t valid = 0, fetched = 0, size = 0, is_signed = 0;
    int last_percent = 0, len, positional = 0, i, idle = 0;
    long long heap0, heap_init, heap_mid = -1, heap_download;
    long threads_init, threads_max, calls = 0, extra_count = 0;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--https-ca") == 0 && i + 1 < argc) {
            ca_file = argv[++i];
        } else if (strcmp(argv[i], "--image-key") == 0 && i + 1 < argc) {
            key_file = argv[++i];
        } else if (strcmp(argv[i], "--handles") == 0 && i + 1 < argc) {
            handles = strtol(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--idle") == 0) {
            idle = 1;
        } else if (positional == 0) {
            buf_len = strtol(argv[i], NULL, 10);
            positional++;
        } else if (positional == 1) {
            protocol = strtol(argv[i], NULL, 10);
            positional++;
        } else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 1;
        }
    }
    if (buf_len <= 0 || buf_len > 65536) {
        fprintf(stderr, "bad buffer length\n");
        return 1;
    }
    if (handles < 1 || handles > MAX_HANDLES) {
        fprintf(stderr, "bad handle count\n");
        return 1;
    }
    buf = malloc((size_t)buf_len);
    msg_buf = malloc(MQTT_MSGLEN);
    msg_readbuf = malloc(MQTT_MSGLEN);
    if (!buf || !msg_buf || !msg_readbuf) {
        return 1;
    }
    /* The firmware's copy of the CA is its own memory: read before heap0. */
    if (ca_file && !(ca_pem = read_file(ca_file))) {
        fprintf(stderr, "cannot read %s\n", ca_file);
        return 1;
    }
    if (key_file && !(key_pem = read_file(key_file))) {
        fprintf(stderr, "cannot read %s\n", key_file);
        return 1;
    }
    IOT_OpenLog("bench");
    IOT_SetLogLevel(IOT_LOG_ERROR);
    heap0 = heap_in_use();
    /* The SDK copies the CA at this call: that copy is part of heap_init. */
    if (ca_pem && IOT_Ioctl(IOTX_IOCTL_SET_HTTPS_CA, ca_pem) != 0) {
        fprintf(stderr, "IOT_Ioctl(IOTX_IOCTL_SET_HTTPS_CA) refused %s\n", ca_file);
        return 1;
    }
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
    if (key_pem) {
        uint32_t require = 1;

        if (IOT_OTA_Ioctl(h_ota, IOT_OTAC_ADD_IMAGE_KEY, key_pem, strlen(key_pem)) != 0
            || IOT_OTA_Ioctl(h_ota, IOT_OTAC_REQUIRE_SIGNATURE, &require, 4) != 0) {
            fprintf(stderr, "the image key in %s was refused\n", key_file);
            return 1;
        }
    }
    snprintf(heap_handles, sizeof(heap_handles), "%lld", heap_init);
    /* More handles on the same client, as a gateway with sub-devices has. */
    for (i = 2; i <= handles; i++) {
        char name[40];
        size_t used = strlen(heap_handles);

        snprintf(name, sizeof(name), "%s_%d", DN, i);
        extra[extra_count] = protocol == IOT_OTA_PROTOCOL_ALIYUN
                                 ? IOT_OTA_Init(PK, name, pclient)
                                 : IOT_OTA_InitWithProtocol(PK, name, pclient,
                                                            (IOT_OTA_Protocol_t)protocol);
        if (!extra[extra_count]) {
            snprintf(heap_handles + used, sizeof(heap_handles) - used, ",refused");
            break;
        }
        extra_count++;
        snprintf(heap_handles + used, sizeof(heap_handles) - used, ",%lld",
                 heap_in_use() - heap0);
        /* An idle sub-device has told its platform its version, as the first has. */
        if (idle && IOT_OTA_ReportVersion(extra[extra_count - 1], "1.0.0") != 0) {
            fprintf(stderr, "IOT_OTA_ReportVersion of handle %d failed\n", i);
            return 1;
        }
    }
    deadline = mono_ns() + 10ull * 1000000000ull;
    while (subscribed < 1 + extra_count && mono_ns() < deadline) {
        IOT_MQTT_Yield(pclient, 10);
    }
    if (subscribed < 1 + extra_count) {
        fprintf(stderr, "%ld SUBACKs of %ld\n", (long)subscribed, 1 + extra_count);
        return 1;
    }
    if (idle) {
        printf("RESULT bytes=0 loop_ns=0 check_ns=0 first_byte_mono_ns=0 valid=1 hwm_kib=%ld"
               " heap_init=%lld heap_mid=-1 heap_download=-1 heap_handles=%s"
               " threads_init=%ld threads_max=%ld signed=0\n",
               vm_hwm_kib(), heap_init, heap_handles, threads_init, thread_count());
        fflush(stdout);
        while (extra_count > 0) {
            IOT_OTA_Deinit(extra[--extra_count]);
        }
        IOT_OTA_Deinit(h_ota);
        IOT_MQTT_Destroy(&pclient);
        free(buf);
        free(msg_buf);
        free(msg_readbuf);
        free(ca_pem);
        free(key_pem);
        return 0;
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
            /* Once, halfway: the heap with the download's connection open. */
            if (heap_mid < 0 && (uint64_t)fetched * 2 >= size) {
                heap_mid = heap_in_use() - heap0;
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
    if (valid && IOT_OTA_Ioctl(h_ota, IOT_OTAG_IMAGE_SIGNED, &is_signed, 4) != 0) {
        is_signed = 0;
    }
    if (!valid) {
        fprintf(stderr, "CHECK_FIRMWARE 0, last error %d\n", IOT_OTA_GetLastError(h_ota));
    }
    printf("RESULT bytes=%llu loop_ns=%llu check_ns=%llu first_byte_mono_ns=%llu valid=%u hwm_kib=%ld"
           " heap_init=%lld heap_mid=%lld heap_download=%lld heap_handles=%s"
           " threads_init=%ld threads_max=%ld signed=%u\n",
           (unsigned long long)total, (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1),
           (unsigned long long)first, (unsigned)valid, vm_hwm_kib(), heap_init, heap_mid,
           heap_download, heap_handles, threads_init, threads_max, (unsigned)is_signed);
    fflush(stdout);
    while (extra_count > 0) {
        IOT_OTA_Deinit(extra[--extra_count]);
    }
    IOT_OTA_Deinit(h_ota);
    IOT_MQTT_Destroy(&pclient);
    free(buf);
    free(msg_buf);
    free(msg_readbuf);
    free(ca_pem);
    free(key_pem);
    return valid ? 0 : 1;
}
