/*
 * test_checks.h: what the C API tests (api_misuse_test.c, api_edge_test.c, own_hal_test.c)
 * share: one printed line per check, exit 1 at the first failure after "N passed, 1 failed".
 * Plain stdio, never the HAL: own_hal_test counts every HAL call the firmware makes.
 */
#ifndef OTA_TEST_CHECKS_H
#define OTA_TEST_CHECKS_H

#include "iot_import.h"
#include "iot_export.h"

/* Prints the check; on !ok ends the program. */
void check_int(const char *what, long got, int ok, const char *expected);
/* check_int of `got == expected`, with a description built at run time. */
void expect_eq_msg(const char *what, long got, long expected);
/* A failure found outside a check: prints `why` and ends the program. */
void check_fail(const char *why);
/* Prints "N passed, 0 failed"; the program's exit code, 0. */
int checks_done(void);
/* A handler that ignores every event, for calls that need one. */
void ignore_mqtt_event(void *pcontext, void *pclient, iotx_mqtt_event_msg_pt msg);

#define EXPECT_EQ(expr, expected) \
    do { long got_ = (long)(expr); check_int(#expr, got_, got_ == (long)(expected), "== " #expected); } while (0)
#define EXPECT_LT0(expr) \
    do { long got_ = (long)(expr); check_int(#expr, got_, got_ < 0, "< 0"); } while (0)
#define EXPECT_NULL(expr) \
    do { const void *got_ = (const void *)(expr); check_int(#expr, got_ != NULL, got_ == NULL, "NULL"); } while (0)
#define EXPECT_TRUE(what, cond) \
    do { int got_ = (cond) ? 1 : 0; check_int(what, got_, got_, "true"); } while (0)

#endif
