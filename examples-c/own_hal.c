/*
 * own_hal.c: the HAL a firmware port brings (iotkit's HAL_OS_<board>.c), overriding every weak
 * default libota defines, with iotkit's signatures (HAL_Snprintf's `const int len` included;
 * buffers as pointers: an array spelling such as `char product_key[PRODUCT_KEY_LEN]` also links,
 * but GCC's -Warray-parameter, part of -Wall, flags it against the header). Each function
 * counts its calls and leaves a mark a default would not: a tagged heap block, a clock based at
 * OWN_HAL_UPTIME_BASE_MS, its own identity store and firmware version, a transcript of
 * HAL_Printf.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "iot_import.h"
#include "own_hal.h"

unsigned own_hal_calls[OWN_HAL_FUNCTIONS];

/* Written before each block HAL_Malloc returns; HAL_Free checks and clears it. */
#define OWN_HAL_BLOCK_TAG 0x0a11c0deu

struct own_hal_block {
    uint32_t tag;
    uint32_t size;
    /* Keeps the caller's memory aligned as malloc's is. */
    union {
        long double ld;
        long long ll;
        void *p;
        void (*f)(void);
    } align;
};

static char printed[8192];
static size_t printed_len;

static char product_key[PRODUCT_KEY_LEN + 1];
static char device_name[DEVICE_NAME_LEN + 1];
static char device_secret[DEVICE_SECRET_LEN + 1];

static struct own_hal_block *block_of(const void *ptr)
{
    return (struct own_hal_block *)((char *)(uintptr_t)ptr - offsetof(struct own_hal_block, align));
}

void *HAL_Malloc(uint32_t size)
{
    struct own_hal_block *b;
    own_hal_calls[OWN_HAL_MALLOC]++;
    b = malloc(offsetof(struct own_hal_block, align) + (size_t)size);
    if (b == NULL) {
        return NULL;
    }
    b->tag = OWN_HAL_BLOCK_TAG;
    b->size = size;
    return &b->align;
}

void HAL_Free(void *ptr)
{
    struct own_hal_block *b;
    own_hal_calls[OWN_HAL_FREE]++;
    if (ptr == NULL) {
        return;
    }
    b = block_of(ptr);
    if (b->tag != OWN_HAL_BLOCK_TAG) {
        fprintf(stderr, "own HAL_Free: %p is not a block of own HAL_Malloc\n", ptr);
        abort();
    }
    b->tag = 0;
    free(b);
}

int own_hal_owns(const void *ptr)
{
    return ptr != NULL && block_of(ptr)->tag == OWN_HAL_BLOCK_TAG;
}

void HAL_Printf(const char *fmt, ...)
{
    va_list ap;
    int n;
    own_hal_calls[OWN_HAL_PRINTF]++;
    va_start(ap, fmt);
    n = vsnprintf(printed + printed_len, sizeof(printed) - printed_len, fmt, ap);
    va_end(ap);
    if (n > 0) {
        fputs(printed + printed_len, stdout);
        printed_len += (size_t)n < sizeof(printed) - printed_len ? (size_t)n : sizeof(printed) - 1 - printed_len;
    }
}

const char *own_hal_printed(void)
{
    return printed;
}

int HAL_Snprintf(char *str, const int len, const char *fmt, ...)
{
    va_list ap;
    int n;
    own_hal_calls[OWN_HAL_SNPRINTF]++;
    if (len < 0) {
        return -1;
    }
    va_start(ap, fmt);
    n = vsnprintf(str, (size_t)len, fmt, ap);
    va_end(ap);
    return n;
}

void HAL_SleepMs(uint32_t ms)
{
    struct timespec left;
    own_hal_calls[OWN_HAL_SLEEP_MS]++;
    left.tv_sec = (time_t)(ms / 1000);
    left.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

uint64_t HAL_UptimeMs(void)
{
    struct timespec now;
    own_hal_calls[OWN_HAL_UPTIME_MS]++;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return OWN_HAL_UPTIME_BASE_MS + (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

/* Copies value into dst of size bytes; the length, or -1 when either is NULL or value is too long. */
static int store(char *dst, size_t size, const char *value)
{
    size_t len;
    if (dst == NULL || value == NULL) {
        return -1;
    }
    len = strlen(value);
    if (len >= size) {
        return -1;
    }
    memcpy(dst, value, len + 1);
    return (int)len;
}

int HAL_SetProductKey(char *product_key_in)
{
    own_hal_calls[OWN_HAL_SET_PRODUCT_KEY]++;
    return store(product_key, sizeof(product_key), product_key_in);
}

int HAL_SetDeviceName(char *device_name_in)
{
    own_hal_calls[OWN_HAL_SET_DEVICE_NAME]++;
    return store(device_name, sizeof(device_name), device_name_in);
}

int HAL_SetDeviceSecret(char *device_secret_in)
{
    own_hal_calls[OWN_HAL_SET_DEVICE_SECRET]++;
    return store(device_secret, sizeof(device_secret), device_secret_in);
}

int HAL_GetProductKey(char *product_key_out)
{
    own_hal_calls[OWN_HAL_GET_PRODUCT_KEY]++;
    return store(product_key_out, PRODUCT_KEY_LEN + 1, product_key);
}

int HAL_GetDeviceName(char *device_name_out)
{
    own_hal_calls[OWN_HAL_GET_DEVICE_NAME]++;
    return store(device_name_out, DEVICE_NAME_LEN + 1, device_name);
}

int HAL_GetDeviceSecret(char *device_secret_out)
{
    own_hal_calls[OWN_HAL_GET_DEVICE_SECRET]++;
    return store(device_secret_out, DEVICE_SECRET_LEN + 1, device_secret);
}

int HAL_GetFirmwareVersion(char *version)
{
    own_hal_calls[OWN_HAL_GET_FIRMWARE_VERSION]++;
    return store(version, FIRMWARE_VERSION_MAXLEN, OWN_HAL_FIRMWARE_VERSION);
}
