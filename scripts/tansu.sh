# shellcheck shell=bash
# A throwaway Kafka-protocol broker (tansu) for the end-to-end tests. Source this file, then:
#
#   tansu_start   # install tansu if missing, start a broker with SQLite storage under
#                 # target/tansu/, export USERSYNC_TEST_KAFKA_BROKERS
#   cargo test --test e2e
#   tansu_stop    # stop the broker and delete its data
#   tansu_secure_start / tansu_secure_stop   # the same behind TLS with SASL SCRAM-SHA-512,
#                 # exporting USERSYNC_TEST_KAFKA_SECURE_BROKERS, …_SECURE_PROPERTIES (the
#                 # librdkafka settings to reach it) and USERSYNC_TEST_KAFKA_OTHER_CA
#
# Why tansu: it is a Kafka-compatible broker in one Rust binary, built from crates.io, so the
# machine needs no JVM and no image registry. It has no transactions; the transactional mode is
# tested on librdkafka's mock cluster instead. Building it takes about 12 minutes once; the
# binary stays in ~/.cargo/bin.
#
# Settings (environment, all optional):
#   USERSYNC_TANSU_PORT   TCP port on 127.0.0.1 (default 59092)
#   USERSYNC_TANSU_DIR    where its data lives (default <repo>/target/tansu)
#   USERSYNC_TANSU_SECURE_PORT, USERSYNC_TANSU_SECURE_INNER_PORT, USERSYNC_TANSU_SECURE_DIR
#                         the secure broker's TLS port (59094), its broker's own port (59093)
#                         and its data (<repo>/target/tansu-secure)

_usersync_tansu_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/certs.sh
source "$_usersync_tansu_repo/scripts/certs.sh"

_tansu_log() { echo "tansu.sh: $*" >&2; }

# Starts a supervised broker: `_tansu_launch DIR PORT ADVERTISED [tansu broker options…]`
# listens on 127.0.0.1:PORT with its storage in DIR (which must exist) and tells clients to
# come back at ADVERTISED (host:port).
_tansu_launch() {
    local dir="$1" port="$2" advertised="$3"
    shift 3
    # A broker that exits during the run is started again on the same storage, the way a
    # production broker comes back after a crash (the roles reconnect; the tests see it as a
    # broker restart). Each exit is recorded in tansu.log and reported by tansu_stop, so a crash
    # is never silent. tansu resolves sqlite:// paths against its working directory.
    rm -f "$dir/stopping" "$dir/exits"
    (
        cd "$dir" || exit 1
        while :; do
            tansu broker \
                --listener-url "tcp://127.0.0.1:$port" \
                --advertised-listener-url "tcp://$advertised" \
                --storage-engine "sqlite://tansu.db" "$@" >>"$dir/tansu.log" 2>&1 &
            echo $! >"$dir/broker.pid"
            # `|| status=$?`: the caller may run under `set -e`, which must not end the loop.
            status=0
            wait $! || status=$?
            [[ -f "$dir/stopping" ]] && exit 0
            echo "tansu.sh: the broker exited with status $status at $(date -u +%H:%M:%S); starting it again" >>"$dir/tansu.log"
            echo "$status" >>"$dir/exits"
            if (($(wc -l <"$dir/exits") >= 20)); then
                echo "tansu.sh: the broker exited 20 times; giving up" >>"$dir/tansu.log"
                exit 1
            fi
            sleep 0.5
        done
    ) &
    echo $! >"$dir/pid"
    _tansu_wait_for "$dir" "$port"
}

# Waits until something listens on 127.0.0.1:PORT, or the broker in DIR has exited.
_tansu_wait_for() {
    local dir="$1" port="$2" waited=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if [[ -f "$dir/exits" ]] || ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            _tansu_log "the broker exited at start; its log:"
            cat "$dir/tansu.log" >&2
            _tansu_halt "$dir"
            return 1
        fi
        if ((waited >= 300)); then
            _tansu_log "nothing listened on 127.0.0.1:$port within 30 s"
            _tansu_halt "$dir"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# Stops the supervised broker in DIR (its storage stays), reporting any exit during the run.
_tansu_halt() {
    local dir="$1"
    [[ -f "$dir/pid" ]] || return 0
    touch "$dir/stopping"
    local pid
    pid="$(cat "$dir/pid")"
    if [[ -f "$dir/broker.pid" ]]; then
        kill "$(cat "$dir/broker.pid")" 2>/dev/null || true
    fi
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    if [[ -f "$dir/broker.pid" ]]; then
        kill -9 "$(cat "$dir/broker.pid")" 2>/dev/null || true
    fi
    if [[ -f "$dir/exits" ]]; then
        _tansu_log "the broker exited $(wc -l <"$dir/exits") time(s) during the run and was started again; the lines before each exit:"
        grep -B 30 "^tansu.sh: the broker exited" "$dir/tansu.log" >&2 || true
        # A full disk is one way a SQLite-backed broker dies.
        df -h "$dir" >&2 || true
    fi
    rm -f "$dir/pid" "$dir/broker.pid"
}

_tansu_install() {
    if ! command -v tansu >/dev/null 2>&1; then
        _tansu_log "tansu is missing: installing it (cargo install tansu --locked --features libsql, ~12 minutes)"
        cargo install tansu --locked --features libsql || return 1
    fi
}

tansu_start() {
    local port="${USERSYNC_TANSU_PORT:-59092}"
    local dir="${USERSYNC_TANSU_DIR:-$_usersync_tansu_repo/target/tansu}"
    _tansu_install || return 1
    rm -rf "$dir" && mkdir -p "$dir" && dir="$(cd "$dir" && pwd)" || return 1
    _tansu_launch "$dir" "$port" "127.0.0.1:$port" || return 1
    export USERSYNC_TEST_KAFKA_BROKERS="127.0.0.1:$port"
    # The end-to-end tests quote the broker's last lines when they time out.
    export USERSYNC_TEST_KAFKA_LOG="$dir/tansu.log"
    _tansu_log "broker on $USERSYNC_TEST_KAFKA_BROKERS, data in $dir"
}

# The secure broker: TLS (a certificate authority made for this run) and SASL SCRAM-SHA-512,
# as managed Kafka services ask for. tansu 0.6's own TLS options cannot be combined (its
# `--cert` refuses `--key`), so Debian's stunnel4 terminates TLS in front of it, the broker
# advertising stunnel's address so every connection goes through TLS. SCRAM is tansu's own: the
# user is added by a broker without authentication on the same storage, which then restarts
# with `--authentication`.
tansu_secure_start() {
    local port="${USERSYNC_TANSU_SECURE_PORT:-59094}"
    local inner="${USERSYNC_TANSU_SECURE_INNER_PORT:-59093}"
    local dir="${USERSYNC_TANSU_SECURE_DIR:-$_usersync_tansu_repo/target/tansu-secure}"
    _tansu_install || return 1
    if ! command -v stunnel4 >/dev/null 2>&1; then
        if [[ "$(id -u)" -ne 0 ]]; then
            _tansu_log "stunnel4 is missing; installing needs root: sudo apt-get install -y stunnel4"
            return 1
        fi
        _tansu_log "stunnel4 is missing: installing Debian's stunnel4 package"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 >&2 \
            || { _tansu_log "apt-get install stunnel4 failed"; return 1; }
    fi
    tansu_secure_stop 2>/dev/null
    rm -rf "$dir" && mkdir -p "$dir" && dir="$(cd "$dir" && pwd)" || return 1
    make_test_certs "$dir/tls" || return 1
    local password
    password="$(openssl rand -hex 16)" || return 1

    _tansu_launch "$dir" "$inner" "localhost:$port" || return 1
    if ! tansu user create --broker "tcp://127.0.0.1:$inner" --mechanism scram512 \
        usersync "$password" >>"$dir/tansu.log" 2>&1; then
        _tansu_log "adding the SCRAM user failed; the broker's log:"
        tail -n 20 "$dir/tansu.log" >&2
        _tansu_halt "$dir"
        return 1
    fi
    _tansu_halt "$dir"
    _tansu_launch "$dir" "$inner" "localhost:$port" --authentication || return 1

    cat >"$dir/stunnel.conf" <<CONF
foreground = yes
pid =
output = $dir/stunnel.log
[kafka]
accept = 127.0.0.1:$port
connect = 127.0.0.1:$inner
cert = $dir/tls/server.pem
key = $dir/tls/server-key.pem
CONF
    stunnel4 "$dir/stunnel.conf" >>"$dir/stunnel.log" 2>&1 &
    echo $! >"$dir/stunnel.pid"
    local waited=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$(cat "$dir/stunnel.pid")" 2>/dev/null || ((waited >= 100)); then
            _tansu_log "stunnel4 did not listen on 127.0.0.1:$port; its log:"
            cat "$dir/stunnel.log" >&2
            tansu_secure_stop
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    export USERSYNC_TEST_KAFKA_SECURE_BROKERS="localhost:$port"
    export USERSYNC_TEST_KAFKA_SECURE_PROPERTIES="security.protocol=SASL_SSL;ssl.ca.location=$dir/tls/ca.pem;sasl.mechanism=SCRAM-SHA-512;sasl.username=usersync;sasl.password=$password"
    export USERSYNC_TEST_KAFKA_OTHER_CA="$dir/tls/other-ca.pem"
    export USERSYNC_TEST_KAFKA_SECURE_LOG="$dir/tansu.log"
    _tansu_log "secure broker (TLS + SCRAM-SHA-512) on $USERSYNC_TEST_KAFKA_SECURE_BROKERS, data in $dir"
}

tansu_secure_stop() {
    local dir="${USERSYNC_TANSU_SECURE_DIR:-$_usersync_tansu_repo/target/tansu-secure}"
    if [[ -f "$dir/stunnel.pid" ]]; then
        kill "$(cat "$dir/stunnel.pid")" 2>/dev/null || true
    fi
    _tansu_halt "$dir"
    rm -rf "$dir"
}

tansu_stop() {
    local dir="${USERSYNC_TANSU_DIR:-$_usersync_tansu_repo/target/tansu}"
    if [[ -f "$dir/pid" ]]; then
        _tansu_halt "$dir"
        _tansu_log "stopped the broker"
    fi
    rm -rf "$dir"
}
