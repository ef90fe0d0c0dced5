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
    rm -rf "$dir" && mkdir -p "$dir" || return 1
    # tansu resolves sqlite:// paths against its working directory.
    (cd "$dir" && exec tansu broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "sqlite://tansu.db" >"$dir/tansu.log" 2>&1) &
    echo $! >"$dir/pid"
    local waited=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            _tansu_log "the broker exited at start; its log:"
            cat "$dir/tansu.log" >&2
            return 1
        fi
        if ((waited >= 300)); then
            _tansu_log "the broker did not listen on 127.0.0.1:$port within 30 s"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    export USERSYNC_TEST_KAFKA_BROKERS="127.0.0.1:$port"
    _tansu_log "broker on $USERSYNC_TEST_KAFKA_BROKERS, data in $dir"
}

tansu_stop() {
    local dir="${USERSYNC_TANSU_DIR:-$_usersync_tansu_repo/target/tansu}"
    if [[ -f "$dir/pid" ]]; then
        local pid
        pid="$(cat "$dir/pid")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        _tansu_log "stopped the broker"
    fi
    rm -rf "$dir"
}
