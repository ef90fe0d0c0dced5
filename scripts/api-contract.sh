#!/usr/bin/env bash
# The admin API against its own document (docs/openapi.yaml), by schemathesis.
#
# Installs schemathesis (pinned) into a virtual environment under target/schemathesis, starts
# `usersync demo` (every part in this process, on loopback) with a throwaway admin token, and
# runs schemathesis twice against the document the server serves at /api/v1/openapi.yaml:
#
#   1. with the token: no answer is a 5xx, and every answer's status, content type and body
#      are the ones the document gives for that operation;
#   2. without it: the same, and every state-changing call under /api/v1 is 401 (the check in
#      scripts/api_contract_hooks.py).
#
# Left out: the live feed (a WebSocket) and the OAuth callback (a redirect that needs a state
# from a started authorization); both are described in the document. Every request says
# Content-Type: application/json, so a state-changing call always gets past the guard's JSON
# rule (415 otherwise, checked by the guard's own tests) to the token check and the handler.
#
# Exits non-zero on any failure, and stops the server it started whatever happens.
# docs/security.md ("API contract") says what this shows.
#
#   scripts/api-contract.sh                          # build usersync (debug) and run both
#   USERSYNC_API_CONTRACT_EXAMPLES=200 scripts/api-contract.sh   # more cases per operation
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

schemathesis_version=4.32.5
venv=target/schemathesis
work=target/api-contract
examples="${USERSYNC_API_CONTRACT_EXAMPLES:-25}"

say() { printf 'api-contract.sh: %s\n' "$*" >&2; }

install_schemathesis() {
    if [[ -x "$venv/bin/schemathesis" ]] &&
        [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" == *" $schemathesis_version" ]]; then
        return
    fi
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        # Debian ships venv's pip bootstrap apart from python3.
        if [[ "$(id -u)" -ne 0 ]]; then
            say "python3 with venv is needed; run: sudo apt-get install -y python3-venv"
            exit 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    fi
    say "installing schemathesis $schemathesis_version into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "schemathesis==$schemathesis_version"
}

install_schemathesis
cargo build --locked --bin usersync
mkdir -p "$work"

# A throwaway token for this run: 48 hex characters, handed over in the environment (never on
# the command line of usersync).
token="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
server_log="$work/demo.log"
USERSYNC_ADMIN_TOKEN="$token" target/debug/usersync demo >"$server_log" 2>&1 &
server=$!

stop_server() {
    if kill -0 "$server" 2>/dev/null; then
        kill -INT "$server" 2>/dev/null || true
        for _ in $(seq 60); do
            kill -0 "$server" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$server" 2>/dev/null || true
    fi
    wait "$server" 2>/dev/null || true
}
trap stop_server EXIT

# The demo prints its admin address once its story is told ("Admin: http://127.0.0.1:PORT").
url=""
for _ in $(seq 360); do
    url="$(sed -n 's/^Admin: \(http:[^ ]*\).*/\1/p' "$server_log" | head -n1)"
    [[ -n "$url" ]] && break
    if ! kill -0 "$server" 2>/dev/null; then
        say "usersync demo stopped before serving its admin API:"
        cat "$server_log" >&2
        exit 1
    fi
    sleep 0.5
done
if [[ -z "$url" ]]; then
    say "usersync demo did not print its admin address within 3 minutes:"
    cat "$server_log" >&2
    exit 1
fi
say "usersync demo serves its admin API at $url"

contract_checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
# Run from $work: schemathesis keeps its cache (.schemathesis/) in the working directory.
schemathesis_run() {
    (cd "$work" && "$root/$venv/bin/schemathesis" run "$url/api/v1/openapi.yaml" \
        --wait-for-schema 30 \
        --max-examples "$examples" \
        --request-timeout 30 \
        --exclude-path /api/v1/feed \
        --exclude-path-regex '^/oauth/' \
        --header 'Content-Type: application/json' \
        --suppress-health-check too_slow \
        "$@")
}

status=0
say "with the admin token"
# The token is on schemathesis's command line for this run only; it is a throwaway of a
# server on loopback that stops with the script.
schemathesis_run --checks "$contract_checks" \
    --header "Authorization: Bearer $token" || status=1

say "without the admin token"
PYTHONPATH="$root/scripts${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=api_contract_hooks \
    schemathesis_run --checks "$contract_checks,state_changing_calls_need_the_token" || status=1

if ! kill -0 "$server" 2>/dev/null; then
    say "usersync demo stopped during the run:"
    cat "$server_log" >&2
    status=1
fi
if [[ "$status" -ne 0 ]]; then
    say "the admin API does not keep to docs/openapi.yaml (see above; server log: $server_log)"
fi
exit "$status"
