#!/usr/bin/env bash
# The container test's machinery (tests/containers.rs; docs/deploy.md, "Compose"): podman and
# podman-compose, base images made without a registry, the project's image from a binary built
# on the host, and the compose stack with the test's stand-ins for Kafka and PostgreSQL.
#
#   scripts/containers.sh install          # podman, runc, debootstrap, podman-compose 1.6.0,
#                                          # /etc/containers/containers.conf, tansu (as root)
#   scripts/containers.sh images           # base images, stand-ins, the project's image
#   scripts/containers.sh compose ARGS…    # podman-compose on docker-compose.yml + the override
#   scripts/containers.sh release-image    # the Dockerfile's default target, compiled in its
#                                          # build stage (not part of the test; slow)
#
# Settings (environment, all optional):
#   USERSYNC_BINARY              the binary for the image (default target/debug/usersync)
#   USERSYNC_IMAGE               the project's image tag (default localhost/usersync:test)
#   USERSYNC_CONTAINERS_PROJECT  the compose project name (default usersync-test)
#   USERSYNC_CONTAINERS_ENV      the env file for compose (default target/containers/test.env,
#                                made when missing; it holds no secret)
#
# Why the image is built from a host binary: the test machines reach no image registry, so the
# Dockerfile's build stage (FROM rust:…) has no base image, and compiling the crate again inside
# a container would double the test's time; the Dockerfile's `prebuilt` target takes the binary
# cargo already built for the tests, and the builder skips the unused build stage.
set -euo pipefail
cd "$(dirname "$0")/.."

work=target/containers
image="${USERSYNC_IMAGE:-localhost/usersync:test}"
project="${USERSYNC_CONTAINERS_PROJECT:-usersync-test}"
env_file="${USERSYNC_CONTAINERS_ENV:-$work/test.env}"
compose_version=1.6.0
debian_image=docker.io/library/debian:bookworm-slim
tansu_image=localhost/usersync-test-tansu:latest
postgres_image=localhost/usersync-test-postgres:latest

log() { echo "containers.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}
# Seconds since the script started, for the step timings.
elapsed() { echo "$((SECONDS))s"; }

# podman-compose 1.6.0: the one on PATH when it is that version, else a virtual environment
# under target/ (never the system's Python packages).
compose_bin() {
    if command -v podman-compose >/dev/null 2>&1 &&
        podman-compose --version 2>/dev/null | grep -q "podman-compose version $compose_version"; then
        echo podman-compose
    elif [[ -x "$work/venv/bin/podman-compose" ]]; then
        echo "$work/venv/bin/podman-compose"
    else
        return 1
    fi
}

install() {
    local packages=()
    for tool in podman runc debootstrap; do
        command -v "$tool" >/dev/null 2>&1 || packages+=("$tool")
    done
    if ! compose_bin >/dev/null && ! python3 -m venv --help >/dev/null 2>&1; then
        packages+=(python3-venv)
    fi
    if ((${#packages[@]})); then
        [[ "$(id -u)" -eq 0 ]] || die "installing ${packages[*]} needs root: sudo apt-get install -y ${packages[*]}"
        log "installing ${packages[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >&2
    fi
    if ! compose_bin >/dev/null; then
        log "installing podman-compose $compose_version into $work/venv"
        mkdir -p "$work"
        python3 -m venv "$work/venv"
        "$work/venv/bin/pip" install --quiet "podman-compose==$compose_version"
    fi
    # crun refuses these machines' hybrid cgroup layout and podman's default ulimits exceed the
    # sandbox's hard limits: runc, cgroupfs and lower ulimits make podman work here.
    if [[ ! -f /etc/containers/containers.conf ]]; then
        [[ "$(id -u)" -eq 0 ]] || die "writing /etc/containers/containers.conf needs root"
        log "writing /etc/containers/containers.conf (runc, cgroupfs, ulimits)"
        mkdir -p /etc/containers
        cat >/etc/containers/containers.conf <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
    fi
    if ! command -v tansu >/dev/null 2>&1; then
        log "tansu is missing: installing it (cargo install tansu --locked --features libsql, ~12 minutes)"
        cargo install tansu --locked --features libsql
    fi
    log "tools ready ($(elapsed))"
}

# Debian bookworm from Debian's packages, tagged with the official name the Dockerfile uses. The
# root file system is cached as a tarball under target/, so a warm run only imports it (or
# nothing, when podman still has the image).
base_image() {
    if podman image exists "$debian_image"; then
        return
    fi
    local tarball="$work/debian-bookworm-rootfs.tar"
    if [[ ! -s "$tarball" ]]; then
        log "debootstrap bookworm (minbase; about a minute)"
        local rootfs="$work/rootfs-bookworm"
        rm -rf "$rootfs"
        mkdir -p "$work"
        debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
            die "debootstrap failed; its log: $work/debootstrap.log"
        tar -C "$rootfs" --exclude='./var/cache/apt/archives/*.deb' --exclude='./var/lib/apt/lists/*' \
            -cf "$tarball.partial" .
        mv "$tarball.partial" "$tarball"
        rm -rf "$rootfs"
    fi
    log "importing $tarball as $debian_image"
    podman import --quiet "$tarball" "$debian_image" >/dev/null
}

# A build context holding only the given files (hard links when possible).
context_with() {
    local dir="$1"
    shift
    rm -rf "$dir"
    mkdir -p "$dir"
    for file in "$@"; do
        ln "$file" "$dir/" 2>/dev/null || cp "$file" "$dir/"
    done
}

images() {
    local binary="${USERSYNC_BINARY:-target/debug/usersync}"
    [[ -x "$binary" ]] || die "no binary at $binary: build it first (cargo build)"
    command -v tansu >/dev/null 2>&1 || die "tansu is missing: scripts/containers.sh install"
    base_image
    log "base image ready ($(elapsed))"

    context_with "$work/context-tansu" "$(command -v tansu)"
    podman build --quiet --format docker -t "$tansu_image" \
        -f tests/containers/tansu.Containerfile "$work/context-tansu" >/dev/null
    context_with "$work/context-postgres" tests/containers/postgres-entrypoint.sh
    podman build --quiet --format docker -t "$postgres_image" \
        -f tests/containers/postgres.Containerfile "$work/context-postgres" >/dev/null
    log "stand-ins ready: $tansu_image, $postgres_image ($(elapsed))"

    # --format docker keeps the HEALTHCHECK (the OCI format has no field for it).
    context_with "$work/context-usersync" "$binary"
    podman build --quiet --format docker --target prebuilt -t "$image" \
        -f Dockerfile "$work/context-usersync" >/dev/null
    log "$image ready from $binary ($(elapsed))"
}

# The Dockerfile as users build it (the build stage compiles, release), to check that path and
# measure the image. The build stage's base is a stand-in made from the host's toolchain. Its
# `cargo build` reaches the Rust package registry through this machine's TLS proxy, so the
# machine's CA bundle is mounted into the build steps — only there, never into an image.
release_image() {
    local version
    version="$(rustc --version | awk '{print $2}')"
    local rust_image="docker.io/library/rust:$version-bookworm"
    local release_tag="${USERSYNC_RELEASE_IMAGE:-localhost/usersync:release}"
    base_image
    if ! podman image exists "$rust_image"; then
        local toolchain
        toolchain="$(rustc --print sysroot)"
        log "making $rust_image from $toolchain"
        rm -rf "$work/context-rust"
        mkdir -p "$work/context-rust"
        cp -al "$toolchain" "$work/context-rust/toolchain" 2>/dev/null ||
            cp -a "$toolchain" "$work/context-rust/toolchain"
        rm -rf "$work/context-rust/toolchain/share/doc"
        podman build --quiet --format docker -t "$rust_image" \
            -f tests/containers/rust.Containerfile "$work/context-rust" >/dev/null
        rm -rf "$work/context-rust"
        log "$rust_image ready ($(elapsed))"
    fi
    local mounts=()
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        mounts=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    fi
    # The bundle goes into the build stage's steps only (a `-v` reaches every RUN of the
    # build, and the runtime stage's apt must write its own bundle): the build stage first,
    # with it; then the whole Dockerfile, which finds that stage in the layer cache.
    podman build --format docker "${mounts[@]}" --build-arg "RUST_VERSION=$version" \
        --target build -f Dockerfile . >&2
    podman build --format docker --build-arg "RUST_VERSION=$version" \
        -t "$release_tag" -f Dockerfile . >&2
    log "$release_tag built ($(elapsed)); its layers:"
    podman history --format '{{.Size}}\t{{.CreatedBy}}' "$release_tag" | cut -c1-120 >&2
    podman image inspect --format '{{.Size}}' "$release_tag"
}

# An env file for a run that has none: the image and the host port. No secret: the compose
# file's `secrets` service makes them.
ensure_env_file() {
    [[ -f "$env_file" ]] && return
    mkdir -p "$(dirname "$env_file")"
    cat >"$env_file" <<EOF
USERSYNC_IMAGE=$image
USERSYNC_ADMIN_PORT=18700
EOF
}

compose() {
    local bin
    bin="$(compose_bin)" || die "podman-compose $compose_version is missing: scripts/containers.sh install"
    ensure_env_file
    exec "$bin" --project-name "$project" --env-file "$env_file" \
        -f docker-compose.yml -f tests/containers/compose.override.yml "$@"
}

case "${1:-}" in
install) install ;;
images) images ;;
release-image) release_image ;;
compose)
    shift
    compose "$@"
    ;;
*)
    echo "usage: scripts/containers.sh install | images | compose ARGS… | release-image" >&2
    exit 2
    ;;
esac
