# syntax=docker/dockerfile:1
# The chatmq image: one binary, every mode (all, broker, bridge, migrate).
#   docker build -t chatmq:0.1.0 .
#   docker run --rm -p 1883:1883 -p 8083:8083 chatmq:0.1.0
# (the second line runs the built-in config: demo users, data in the container).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches outlive the build; the binary is copied out
# of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p chatmq \
    && install -D -m 0755 target/release/chatmq /out/chatmq

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/chatmq /usr/local/bin/chatmq
# The commented default config, so the image runs without a mounted one.
COPY chatmq/chatmq.toml /etc/chatmq/chatmq.toml
RUN install -d -o 65532 -g 65532 /var/lib/chatmq
USER 65532:65532
WORKDIR /var/lib/chatmq
# MQTT, MQTT/TLS, WebSocket, WebSocket/TLS, HTTP (/metrics, /healthz, /readyz)
EXPOSE 1883 8883 8083 8084 9090
ENTRYPOINT ["chatmq"]
CMD ["all", "--config", "/etc/chatmq/chatmq.toml", "--data-dir", "/var/lib/chatmq"]
