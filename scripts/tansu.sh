# shellcheck shell=bash
# A throwaway Kafka-protocol broker (tansu) for the end-to-end tests. Source this file, then:
#
#   tansu_start   # install tansu if missing, start a broker with SQLite storage under
#                 # target/tansu/, export USERSYNC_TEST_KAFKA_BROKERS
#   cargo test --test e2e
#   tansu_stop    # stop the broker and delete its data
#
# Why tansu: it is a Kafka-compatible broker in one Rust binary, built from crates.io, so the
# machine needs no JVM and no image registry. It has no transactions; the transactional mode is
# tested on librdkafka's mock cluster instead. Building it takes about 12 minutes once; the
# binary stays in ~/.cargo/bin.
#
# Settings (environment, all optional):
#   USERSYNC_TANSU_PORT   TCP port on 127.0.0.1 (default 59092)
#   USERSYNC_TANSU_DIR    where its data lives (default <repo>/target/tansu)

_usersync_tansu_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_tansu_log() { echo "tansu.sh: $*" >&2; }

tansu_start() {
    local port="${USERSYNC_TANSU_PORT:-59092}"
    local dir="${USERSYNC_TANSU_DIR:-$_usersync_tansu_repo/target/tansu}"
    if ! command -v tansu >/dev/null 2>&1; then
        _tansu_log "tansu is missing: installing it (cargo install tansu --locked --features libsql, ~12 minutes)"
        cargo install tansu --locked --features libsql || return 1
    fi
    rm -rf "$dir" && mkdir -p "$dir" && dir="$(cd "$dir" && pwd)" || return 1
    # A broker that exits during the run is started again on the same storage, the way a
    # production broker comes back after a crash (the roles reconnect; the tests see it as a
    # broker restart). Each exit is recorded in tansu.log and reported by tansu_stop, so a crash
    # is never silent. tansu resolves sqlite:// paths against its working directory.
    (
        cd "$dir" || exit 1
        while :; do
            tansu broker \
                --listener-url "tcp://127.0.0.1:$port" \
                --advertised-listener-url "tcp://127.0.0.1:$port" \
                --storage-engine "sqlite://tansu.db" >>"$dir/tansu.log" 2>&1 &
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
    local waited=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if [[ -f "$dir/exits" ]] || ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            _tansu_log "the broker exited at start; its log:"
            cat "$dir/tansu.log" >&2
            tansu_stop
            return 1
        fi
        if ((waited >= 300)); then
            _tansu_log "the broker did not listen on 127.0.0.1:$port within 30 s"
            tansu_stop
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    export USERSYNC_TEST_KAFKA_BROKERS="127.0.0.1:$port"
    # The end-to-end tests quote the broker's last lines when they time out.
    export USERSYNC_TEST_KAFKA_LOG="$dir/tansu.log"
    _tansu_log "broker on $USERSYNC_TEST_KAFKA_BROKERS, data in $dir"
}

tansu_stop() {
    local dir="${USERSYNC_TANSU_DIR:-$_usersync_tansu_repo/target/tansu}"
    if [[ -f "$dir/pid" ]]; then
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
        _tansu_log "stopped the broker"
    fi
    rm -rf "$dir"
}
