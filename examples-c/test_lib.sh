# Shared by the test scripts of examples-c (sourced, not run): finding the broker, free ports,
# waiting for a listener, the wrapper the C programs run under, showing a log.

# Sets mosquitto_bin, or exits: 77 (skip) without mosquitto, 1 when OTA_REQUIRE_MOSQUITTO is
# "required" (CI).
find_mosquitto() {
    mosquitto_bin=${MOSQUITTO:-$(command -v mosquitto || true)}
    if [[ -z $mosquitto_bin && -x /usr/sbin/mosquitto ]]; then
        mosquitto_bin=/usr/sbin/mosquitto
    fi
    if [[ -z $mosquitto_bin || ! -x $mosquitto_bin ]]; then
        if [[ ${OTA_REQUIRE_MOSQUITTO:-} == required ]]; then
            echo "FAIL: mosquitto is not installed but OTA_REQUIRE_MOSQUITTO=required (apt-get install mosquitto)" >&2
            exit 1
        fi
        echo "SKIP: mosquitto is not installed (apt-get install mosquitto); set OTA_REQUIRE_MOSQUITTO=required to fail instead"
        exit 77
    fi
}

# Exits 1 unless every argument is an executable file.
require_executables() {
    local bin
    for bin in "$@"; do
        if [[ ! -x $bin ]]; then
            echo "FAIL: $bin is missing or not executable (build first: cmake --build)" >&2
            exit 1
        fi
    done
}

# Sets the array `wrapper` from OTA_TEST_WRAPPER (split on spaces; empty when unset).
read_wrapper() {
    wrapper=()
    if [[ -n ${OTA_TEST_WRAPPER:-} ]]; then
        read -r -a wrapper <<<"$OTA_TEST_WRAPPER"
    fi
}

free_port() {
    python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# Succeeds once something accepts TCP connections on 127.0.0.1:$1 (up to $2 seconds).
wait_for_port() {
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

show_log() {
    echo "----- $1 -----"
    cat "$2" 2>/dev/null || true
}

# Starts mosquitto (logging to $1; on the port in `port`, or with the config file $2) and waits
# until it listens: sets mosquitto_pid, exits 1 when it does not start.
start_mosquitto() {
    if [[ -n ${2:-} ]]; then
        "$mosquitto_bin" -c "$2" >"$1" 2>&1 &
    else
        "$mosquitto_bin" -p "$port" >"$1" 2>&1 &
    fi
    mosquitto_pid=$!
    if ! wait_for_port "$port" 10; then
        echo "FAIL: mosquitto did not start listening on 127.0.0.1:$port" >&2
        exit 1
    fi
    echo "mosquitto listening on 127.0.0.1:$port"
}

# Waits (up to 10 s) for ota-cloud (pid $2) to print its ready line in $1: the device reports
# its version once at start-up, so the cloud must be subscribed before that. Returns 1 when
# the cloud exited first.
wait_cloud_ready() {
    local _
    for _ in $(seq 100); do
        if grep -q "waiting for the device's version report" "$1" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$2" 2>/dev/null; then
            echo "FAIL: ota-cloud exited before it was ready" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "note: ota-cloud printed no ready line within 10 s; starting the device anyway"
}
