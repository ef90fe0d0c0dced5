#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one.
#
# It installs and starts what the tests need (a throwaway PostgreSQL under target/pg speaking
# TLS, a tansu Kafka-protocol broker under target/tansu for the end-to-end tests and a second
# one behind TLS and SASL under target/tansu-secure, Debian's Chromium and
# ChromeDriver for the admin page's browser test), checks
# formatting and lints, runs every test (unit, property, integration, end to end) and the admin
# API's contract test (scripts/api-contract.sh), and stops
# what it started, whatever happens. Under CI (CI set), a test whose component is missing
# fails instead of skipping.
#
#   scripts/test.sh                 # everything
#   PROPTEST_CASES=100000 scripts/test.sh   # longer property runs
#   FUZZ_SECONDS=300 scripts/test.sh         # longer fuzz runs (docs/fuzzing.md)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
# shellcheck source=scripts/tansu.sh
source scripts/tansu.sh
# They run whatever happens; none may change the exit status of the run.
trap 'tansu_secure_stop || true; tansu_stop || true; pg_stop || true' EXIT

step "the C libraries librdkafka links (TLS, SASL, OAUTHBEARER's token fetch)"
# docs/kafka.md: system OpenSSL and libcurl, found through pkg-config.
if ! pkg-config --exists openssl libcurl 2>/dev/null; then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "test.sh: installing needs root; run: sudo apt-get install -y libssl-dev libcurl4-openssl-dev pkg-config" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev libcurl4-openssl-dev pkg-config >&2
fi

step "PostgreSQL for the store tests"
pg_start

step "tansu (Kafka-protocol broker) for the end-to-end tests"
tansu_start

step "a second tansu behind TLS (stunnel4) with SASL SCRAM-SHA-512"
tansu_secure_start

step "Chromium and ChromeDriver for the browser test"
# tests/browser.rs drives Debian's headless Chromium through its chromedriver (the test
# starts both; under CI it fails without them).
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "test.sh: installing needs root; run: sudo apt-get install -y chromium chromium-driver" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2
fi

step "podman, podman-compose and debootstrap for the container test"
# tests/containers.rs builds the image and brings up the compose stack (docs/deploy.md).
scripts/containers.sh install

step "kubectl, kubernetes-validate and promtool for the deploy/ checks"
# tests/deploy.rs runs scripts/deploy-check.sh; --install fetches what is missing.
scripts/deploy-check.sh --install

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --all-targets --locked -- -D warnings
# The product without its test equipment (no `sim`, `demo`, `decide`; README.md).
cargo clippy --lib --bins --no-default-features --locked -- -D warnings

step "tests"
cargo test --locked

step "the admin API against docs/openapi.yaml (schemathesis)"
# Installs schemathesis into target/schemathesis (python3-venv from Debian when missing; without
# root it fails, naming the package) and runs it against `usersync demo`, with the admin token
# and without (docs/security.md, "API contract").
scripts/api-contract.sh

step "end to end again, on the broker behind TLS and SASL"
# The suite once more, every role and the test's own clients reaching Kafka as SASL_SSL
# clients do (docs/kafka.md). In two parts: after the rest of the suite, tansu 0.6's storage
# was seen to wedge in the random runs with kill -9 (SCRAM lookups then fail), so those two
# run on the secure broker started afresh (docs/kafka.md, "Testing").
random_runs=(random_changes_with_moves_gaps_and_kills_end_where_the_records_say
    a_thousand_random_changes_end_where_usersync_decide_says)
secure_e2e() {
    USERSYNC_TEST_KAFKA_BROKERS="$USERSYNC_TEST_KAFKA_SECURE_BROKERS" \
        USERSYNC_TEST_KAFKA_PROPERTIES="$USERSYNC_TEST_KAFKA_SECURE_PROPERTIES" \
        USERSYNC_TEST_KAFKA_LOG="$USERSYNC_TEST_KAFKA_SECURE_LOG" \
        cargo test --locked --test e2e -- "$@"
}
secure_e2e --skip "${random_runs[0]}" --skip "${random_runs[1]}"
tansu_secure_stop
tansu_secure_start
secure_e2e --exact "${random_runs[@]}"

step "benchmarks compile"
cargo bench --locked --no-run

step "fuzz targets (libFuzzer, ${FUZZ_SECONDS:-20}s each; docs/fuzzing.md)"
# cargo-fuzz on the stable toolchain: `--sanitizer none` needs no nightly flag. The build is
# cached in fuzz/target, the corpus grows in fuzz/corpus (both git-ignored); a crash or a
# hang (-timeout) fails the script, its input saved under fuzz/artifacts/<target>/.
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo fuzz has no --locked: check here that fuzz/Cargo.lock is current.
cargo metadata --manifest-path fuzz/Cargo.toml --locked --format-version 1 >/dev/null
cargo fuzz build --sanitizer none
for target in $(cargo fuzz list); do
    step "fuzz $target"
    USERSYNC_FUZZ_SEEDS="fuzz/corpus/$target" \
        cargo fuzz run --sanitizer none "$target" -- \
        -max_total_time="${FUZZ_SECONDS:-20}" -timeout=10 -print_final_stats=1
done

step "done"
