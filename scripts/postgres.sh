# shellcheck shell=bash
# A throwaway PostgreSQL for tests. Source this file, then:
#
#   pg_start   # install the server if missing, start a fresh cluster under target/pg/,
#              # export USERSYNC_TEST_DATABASE_URL, and USERSYNC_TEST_DATABASE_CA /
#              # USERSYNC_TEST_DATABASE_OTHER_CA for the TLS tests
#   cargo test --test store
#   pg_stop    # stop the cluster and delete it
#
# Why a script and not a container: CI and developers run on the same kind of machine, which
# reaches Debian's packages but no image registry, and a cluster in target/ is gone with
# `cargo clean`. The cluster trusts every local connection and listens on loopback only. It
# speaks TLS (`ssl=on`) with a server certificate for localhost that a certificate authority
# made for this run signed (scripts/certs.sh), so `sslmode=verify-full` is tested for real;
# plain connections still work, as most tests use them.
#
# Settings (environment, all optional):
#   USERSYNC_PG_PORT   TCP port on 127.0.0.1 (default 55432); pick another to run two at once
#   USERSYNC_PG_DIR    where the cluster lives (default <repo>/target/pg)
#
# The functions do not change the caller's shell options; they return non-zero with a message
# on standard error when something fails.

_usersync_pg_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/certs.sh
source "$_usersync_pg_repo/scripts/certs.sh"

_pg_log() { echo "postgres.sh: $*" >&2; }

# The directory holding initdb and pg_ctl: the newest Debian server package first, then PATH.
_pg_bindir() {
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null \
        | sort -V | tail -n 1)"
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
        echo "$dir"
        return 0
    fi
    local initdb
    initdb="$(command -v initdb 2>/dev/null)" || return 1
    initdb="$(readlink -f "$initdb")"
    dir="$(dirname "$initdb")"
    [[ -x "$dir/pg_ctl" && -x "$dir/postgres" ]] || return 1
    echo "$dir"
}

# Runs a server command as the cluster's owner: root may not run PostgreSQL.
_pg_as_owner() {
    if [[ "$(id -u)" -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

_pg_settings() {
    _pg_port="${USERSYNC_PG_PORT:-55432}"
    _pg_dir="${USERSYNC_PG_DIR:-$_usersync_pg_repo/target/pg}"
    _pg_data="$_pg_dir/data"
    _pg_socket="$_pg_dir/run"
    _pg_logfile="$_pg_dir/server.log"
}

# Stops the cluster in the data dir if one runs there, and deletes the directory.
_pg_remove_cluster() {
    local bindir="$1"
    if [[ -f "$_pg_data/postmaster.pid" ]]; then
        _pg_log "stopping the cluster in $_pg_data"
        _pg_as_owner "$bindir/pg_ctl" -D "$_pg_data" -m fast -w -t 30 stop >/dev/null 2>&1 \
            || _pg_as_owner "$bindir/pg_ctl" -D "$_pg_data" -m immediate -w -t 30 stop \
                >/dev/null 2>&1 \
            || true
    fi
    rm -rf "$_pg_dir"
}

pg_start() {
    _pg_settings
    local bindir
    if ! bindir="$(_pg_bindir)"; then
        _pg_log "no PostgreSQL server found; installing Debian's postgresql package"
        if [[ "$(id -u)" -ne 0 ]]; then
            _pg_log "installing needs root; run: sudo apt-get install -y postgresql"
            return 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 \
            || { _pg_log "apt-get install postgresql failed"; return 1; }
        bindir="$(_pg_bindir)" || { _pg_log "postgresql installed but initdb not found"; return 1; }
    fi

    if [[ "$(id -u)" -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres \
            || { _pg_log "cannot create the postgres user"; return 1; }
    fi

    # A stale cluster from an earlier run goes first.
    _pg_remove_cluster "$bindir"

    if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$_pg_port" >/dev/null 2>&1; then
        _pg_log "something else already answers on 127.0.0.1:$_pg_port; set USERSYNC_PG_PORT"
        return 1
    fi

    mkdir -p "$_pg_data" "$_pg_socket" || return 1
    chmod 700 "$_pg_data"
    if [[ "$(id -u)" -eq 0 ]]; then
        chown -R postgres: "$_pg_dir" || return 1
    fi

    _pg_log "creating a cluster in $_pg_data ($("$bindir/postgres" --version))"
    _pg_as_owner "$bindir/initdb" -D "$_pg_data" -U postgres --auth=trust \
        --encoding=UTF8 --locale=C.UTF-8 >"$_pg_dir/initdb.log" 2>&1 \
        || { cat "$_pg_dir/initdb.log" >&2; _pg_log "initdb failed"; return 1; }

    make_test_certs "$_pg_dir/tls" || return 1
    # The server reads its key as the cluster's owner, and refuses a key others can read.
    cp "$_pg_dir/tls/server.pem" "$_pg_dir/tls/server-key.pem" "$_pg_data/" || return 1
    chmod 600 "$_pg_data/server-key.pem"
    if [[ "$(id -u)" -eq 0 ]]; then
        chown postgres: "$_pg_data/server.pem" "$_pg_data/server-key.pem" || return 1
    fi

    _pg_log "starting on 127.0.0.1:$_pg_port (TLS on)"
    _pg_as_owner "$bindir/pg_ctl" -D "$_pg_data" -l "$_pg_logfile" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $_pg_port -k $_pg_socket -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
            -c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server-key.pem" \
        start >/dev/null \
        || { cat "$_pg_logfile" >&2; _pg_log "pg_ctl start failed"; return 1; }

    local tries=0
    until "$bindir/pg_isready" -q -h 127.0.0.1 -p "$_pg_port" -U postgres; do
        tries=$((tries + 1))
        if [[ $tries -ge 60 ]]; then
            cat "$_pg_logfile" >&2
            _pg_log "the server did not become ready"
            return 1
        fi
        sleep 0.5
    done

    "$bindir/createdb" -h 127.0.0.1 -p "$_pg_port" -U postgres usersync_test \
        || { _pg_log "createdb usersync_test failed"; return 1; }

    export USERSYNC_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$_pg_port/usersync_test"
    export USERSYNC_TEST_DATABASE_CA="$_pg_dir/tls/ca.pem"
    export USERSYNC_TEST_DATABASE_OTHER_CA="$_pg_dir/tls/other-ca.pem"
    _pg_log "ready: USERSYNC_TEST_DATABASE_URL=$USERSYNC_TEST_DATABASE_URL (CA $USERSYNC_TEST_DATABASE_CA)"
}

pg_stop() {
    _pg_settings
    local bindir
    bindir="$(_pg_bindir)" || { rm -rf "$_pg_dir"; unset USERSYNC_TEST_DATABASE_URL; return 0; }
    _pg_remove_cluster "$bindir"
    unset USERSYNC_TEST_DATABASE_URL USERSYNC_TEST_DATABASE_CA USERSYNC_TEST_DATABASE_OTHER_CA
    _pg_log "stopped and removed $_pg_dir"
}
