#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one.
#
# It installs and starts what the tests need (a throwaway PostgreSQL under target/pg), checks
# formatting and lints, runs every test (unit, property, integration, end to end), and stops
# what it started, whatever happens. Under CI (CI set), a test whose component is missing
# fails instead of skipping.
#
#   scripts/test.sh                 # everything
#   PROPTEST_CASES=100000 scripts/test.sh   # longer property runs
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
trap pg_stop EXIT

step "PostgreSQL for the store tests"
pg_start

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --all-targets --locked -- -D warnings

step "tests"
cargo test --locked

step "benchmarks compile"
cargo bench --locked --no-run

step "done"
