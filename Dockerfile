# One image with every binary of the workspace: sidecar (also the gateway,
# with MESH_MODE=gateway), control-plane, meshctl, catalog, inventory,
# payments, orders, users. Each Kubernetes container picks its binary with `command:`.
#
#   docker build -t registry.example.com/mesh:0.1.0 .
#
# The build stage compiles the dependencies in a layer of their own (the
# manifests and the lock file with stub sources), so a change to the mesh's
# code rebuilds only the mesh's crates. Plain layers, no BuildKit cache
# mounts: the cache also works with --cache-from and with other builders.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# No protoc: every .proto (the mesh's and the vendored etcd-client's) is
# compiled by protox, in Rust.
WORKDIR /src

# 1. Dependencies. Every target cargo discovers needs a file: stub libs and
#    mains, and a build script for the root package so its build
#    dependencies are compiled here too. A new member, or an explicit
#    [[bin]]/[[test]] path, must be added here.
COPY Cargo.toml Cargo.lock ./
COPY sidecar/Cargo.toml sidecar/
COPY control-plane/Cargo.toml control-plane/
COPY ca/Cargo.toml ca/
COPY meshctl/Cargo.toml meshctl/
COPY xtask/Cargo.toml xtask/
# Third-party code patched in for crates.io's (whole: it is a dependency).
COPY vendor vendor
COPY services/catalog/Cargo.toml services/catalog/
COPY services/inventory/Cargo.toml services/inventory/
COPY services/payments/Cargo.toml services/payments/
COPY services/orders/Cargo.toml services/orders/
COPY services/users/Cargo.toml services/users/
COPY bench/Cargo.toml bench/
RUN set -eu; \
    mkdir -p src sidecar/src control-plane/src ca/src meshctl/src xtask/src bench/src; \
    echo 'fn main() {}' > build.rs; \
    touch src/lib.rs sidecar/src/lib.rs control-plane/src/lib.rs ca/src/lib.rs meshctl/src/lib.rs; \
    for bin in sidecar control-plane meshctl xtask bench; do echo 'fn main() {}' > "$bin/src/main.rs"; done; \
    for service in catalog inventory payments orders users; do \
        mkdir -p "services/$service/src"; \
        echo 'fn main() {}' > "services/$service/src/main.rs"; \
    done; \
    cargo build --release --locked --workspace --exclude bench --exclude xtask --bins

# 2. The mesh itself, with the same command (same features, same profile),
#    so every dependency artifact of step 1 is reused.
COPY . .
# The stubs were compiled after the real files' modification times (COPY
# keeps them): touch the sources, so cargo cannot take the stubs' builds for
# fresh ones and ship empty binaries (the last line checks that it did not).
RUN set -eu; \
    find build.rs src sidecar control-plane ca meshctl xtask services bench -name '*.rs' -exec touch {} +; \
    cargo build --release --locked --workspace --exclude bench --exclude xtask --bins; \
    mkdir -p /out; \
    for bin in sidecar control-plane meshctl catalog inventory payments orders users; do \
        cp "target/release/$bin" /out/; \
    done; \
    /out/sidecar --version | grep '^sidecar ' >/dev/null; /out/meshctl --version | grep '^meshctl ' >/dev/null

# The binaries need glibc and libgcc only, which the slim image has; it also
# has /bin/sh, which the canary's routes Job uses to wait for payments v2.
FROM debian:${DEBIAN_RELEASE}-slim
LABEL org.opencontainers.image.title="mesh" \
      org.opencontainers.image.description="A gRPC service mesh in Rust: sidecar, gateway, control plane, meshctl and the demo shop" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ /usr/local/bin/
# A numeric non-root user, so Kubernetes can check runAsNonRoot.
USER 10001:10001
# Documentation only. Sidecar: inbound 15006 (mTLS), probes and metrics
# 15021 (admin 15000 and outbound 15001 are loopback only); gateway: ingress
# 8080; control plane: gRPC 15010 (mTLS), admin 15020; shop apps bind
# loopback only.
EXPOSE 8080 15006 15010 15020 15021
CMD ["meshctl", "--help"]
