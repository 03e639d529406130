# mnist-mlp service: `mnist-serve` serving the versions in /models over HTTP (gunicorn + Flask, PORT)
# and the Open Inference Protocol over gRPC (GRPC_PORT; 0 turns it off).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY constraints.txt ./
COPY artifact/ artifact/
COPY service/ service/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c constraints.txt ./artifact ./service \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools \
 && find /opt/venv -depth -type d -name tests -exec rm -rf {} +  # ~40 MB nobody runs in production

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mnist-mlp-service" \
      org.opencontainers.image.description="HTTP and gRPC inference for the mnist-mlp artifact, with Prometheus metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="mnist-mlp"
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mnist \
 && mkdir -p /models
COPY --from=builder /opt/venv /opt/venv
# PROMETHEUS_MULTIPROC_DIR must be in the environment before gunicorn starts (field notes §3).
# It lives on the /tmp tmpfs when the root filesystem is read-only (the Helm chart mounts an
# emptyDir at /metrics instead); mnist-serve creates and empties it at start.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_DIR=/models \
    PORT=8000 \
    GRPC_PORT=8081 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics
USER 10001:10001
EXPOSE 8000 8081
# Healthy when /readyz answers 200 and, unless GRPC_PORT=0, the gRPC health service's readiness
# is SERVING: a dead gRPC server does not hide behind a ready HTTP port.
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 \
  CMD ["python", "-m", "mnist_service.healthcheck"]
# mnist-serve passes SIGTERM to gunicorn and the gRPC server: both drain in-flight requests and RPCs
# for GRACEFUL_TIMEOUT seconds (default 30 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["mnist-serve"]
