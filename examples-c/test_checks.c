/* test_checks.c: see test_checks.h. */
#include <stdio.h>
#include <stdlib.h>

#include "test_checks.h"

static int checks_passed;

void check_int(const char *what, long got, int ok, const char *expected)
{
    printf("%-72s got %-11ld expected %-24s %s\n", what, got, expected, ok ? "ok" : "FAILED");
    if (!ok) {
        printf("%d passed, 1 failed\n", checks_passed);
        exit(1);
    }
    checks_passed++;
}

void expect_eq_msg(const char *what, long got, long expected)
{
    char text[32];
    snprintf(text, sizeof(text), "== %ld", expected);
    check_int(what, got, got == expected, text);
}

void check_fail(const char *why)
{
    printf("%s\n", why);
    printf("%d passed, 1 failed\n", checks_passed);
    exit(1);
}

int checks_done(void)
{
    printf("%d passed, 0 failed\n", checks_passed);
    return 0;
}

void ignore_mqtt_event(void *pcontext, void *pclient, iotx_mqtt_event_msg_pt msg)
{
    (void)pcontext;
    (void)pclient;
    (void)msg;
}
