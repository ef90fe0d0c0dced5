# The usersync image: one binary, every role (docs/deploy.md, "Image").
#
#   docker build -t usersync .
#       compiles in the build stage (release, locked) and copies the binary into the runtime
#       stage, the default target.
#   podman build --target prebuilt -t localhost/usersync:dev -f Dockerfile DIR
#       skips the compiler: DIR (the build context) holds nothing but a `usersync` binary
#       built on the host for Debian bookworm (the container test does this; see the docs).
#
# Stages: build (compiles) → runtime-base (Debian slim, CA bundle, OpenSSL, user, health
# check) → prebuilt (runtime-base + a binary from the context) | runtime (runtime-base + the
# build stage's binary, the last stage and the default target). A builder skips the stages the
# target does not need, so `--target prebuilt` never reads the source.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# rdkafka builds librdkafka from source, linked to the system's OpenSSL and libcurl.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev libcurl4-openssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: the product and `sim/`, the simulators' crate. The binary keeps the
# default features, simulators included: the compose file's demo profile runs `usersync sim
# salesforce`, `usersync sim outreach` and `usersync demo` from this image.
COPY . .
# The registry and the target folder live in cache mounts, so a rebuild after a source change
# recompiles only the crate. The binary is copied out in the same step: a cache mount is not
# part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin usersync \
 && install -m 0755 target/release/usersync /usr/local/bin/usersync

FROM docker.io/library/debian:bookworm-slim AS runtime-base
# What the binary links beyond the slim image (ldd: librdkafka's libssl3 for TLS and libcurl4
# for OAUTHBEARER's token fetch; zlib, libgcc and libc are already there) and the CA bundle
# for HTTPS to Salesforce, Outreach and Kafka.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libcurl4 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /var/lib/usersync \
        --shell /usr/sbin/nologin usersync
WORKDIR /var/lib/usersync
# Logs as JSON lines on standard error (src/app/cli.rs); RUST_LOG sets the level.
ENV USERSYNC_LOG_FORMAT=json
USER 10001:10001
# The admin server of `usersync run` (give it admin.listen 0.0.0.0:8700 and an admin token).
EXPOSE 8700
# `usersync health` asks this container's usersync for /healthz: USERSYNC_HEALTH_LISTEN when
# set (a role run alone with --health-listen), else admin.listen. No curl needed.
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
    CMD ["usersync", "health"]
ENTRYPOINT ["usersync"]
CMD ["run"]

# A binary built outside (the build context holds only `usersync`).
FROM runtime-base AS prebuilt
COPY usersync /usr/local/bin/usersync

# The default target: the binary of the build stage.
FROM runtime-base AS runtime
COPY --from=build /usr/local/bin/usersync /usr/local/bin/usersync
