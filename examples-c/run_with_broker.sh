#!/usr/bin/env bash
# Runs one C test program against a private mosquitto broker on a free 127.0.0.1 port: the
# program finds it through IOTX_MQTT_HOST / IOTX_MQTT_PORT (what IOT_SetupConnInfo reads).
#
# usage: run_with_broker.sh PROGRAM [ARGS...]
# env:   OTA_TEST_WRAPPER (a command the program is run under, split on spaces, e.g. the
#        valgrind wrapper memcheck.sh), OTA_REQUIRE_MOSQUITTO=required (fail instead of skip
#        without mosquitto), MOSQUITTO (path to the broker binary), OTA_KEEP_TMP=1
# exit:  the program's exit code; 77 skipped (no mosquitto)
set -euo pipefail
# shellcheck source=test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/test_lib.sh"

program=${1:?usage: run_with_broker.sh PROGRAM [ARGS...]}
shift

find_mosquitto
require_executables "$program"

read_wrapper

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ota-broker-XXXXXX")
mosquitto_pid=
cleanup() {
    local rc=$?
    if [[ -n $mosquitto_pid ]]; then
        kill "$mosquitto_pid" 2>/dev/null || true
        wait "$mosquitto_pid" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 ]]; then
        echo "----- mosquitto -----"
        cat "$tmp/mosquitto.log" 2>/dev/null || true
    fi
    if [[ -n ${OTA_KEEP_TMP:-} ]]; then
        echo "scratch directory kept: $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

port=$(free_port)
start_mosquitto "$tmp/mosquitto.log"

set +e
IOTX_MQTT_HOST=127.0.0.1 IOTX_MQTT_PORT=$port OTA_TEST_TMPDIR=$tmp \
    "${wrapper[@]}" "$program" "$@"
rc=$?
set -e
exit "$rc"
