# syntax=docker/dockerfile:1
#
# vllm-gateway image: build with the Rust toolchain, run from a distroless
# base as a non-root user.
#
#   docker build -t vllm-gateway:0.1.0 .
#   docker run --rm -p 8080:8080 -v $PWD/my.toml:/etc/vllm-gateway/gateway.toml:ro vllm-gateway:0.1.0
#
# The built-in /etc/vllm-gateway/gateway.toml is the reference configuration
# (config/gateway.toml: workers on 127.0.0.1, admin listener on loopback); a
# real deployment mounts its own over it (deploy/kubernetes/configmap.yaml).

# --- build -------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
# cmake builds zlib-ng for Pingora (no TLS feature, so no OpenSSL). Not
# pinned to a Debian revision: bookworm's cmake only receives fixes, and a
# pinned revision disappears from the mirrors when the next one lands.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build reads (benches are declared in Cargo.toml, so cargo
# wants their files even though it does not build them).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The cache mounts keep the registry and target directory between builds
# (BuildKit); the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin vllm-gateway \
 && install -D -m 0755 target/release/vllm-gateway /out/vllm-gateway

# --- run ---------------------------------------------------------------------
# glibc and libgcc (the binary links them; bookworm on both sides), CA
# certificates, no shell. For a shell (debugging, or an exec preStop hook on
# Kubernetes before 1.30), use debian:bookworm-slim and add a user with
# `useradd --uid 65532 --user-group --no-create-home nonroot`.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="vllm-gateway" \
      org.opencontainers.image.description="An OpenAI-compatible gateway for pools of vLLM workers" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/vllm-gateway /usr/local/bin/vllm-gateway
COPY config/gateway.toml /etc/vllm-gateway/gateway.toml
# Numeric, so Kubernetes' runAsNonRoot can verify it (a user name cannot be
# checked without the image's /etc/passwd).
USER 65532:65532
# server.listen and server.admin_listen of the built-in configuration.
EXPOSE 8080 9090
# SIGTERM drains (server.shutdown_grace); Docker's default stop signal.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/vllm-gateway"]
CMD ["serve", "--config", "/etc/vllm-gateway/gateway.toml"]
