# exfilwatch container image: the release binary on a distroless, shell-less, non-root
# runtime (glibc only).
#   docker build -t exfilwatch:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
# The C parts of the build: librdkafka (bundled, linked to the system OpenSSL) and jemalloc are
# built with make; OpenSSL's headers are found through pkg-config.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin exfilwatch \
    && strip target/release/exfilwatch

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/exfilwatch /usr/local/bin/exfilwatch
# The default rule pack; the Kubernetes deployment mounts its own over it.
COPY rules/default.yaml /etc/exfilwatch/rules/default.yaml
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/exfilwatch"]
CMD ["run", "--config", "/etc/exfilwatch/config/config.yaml"]
