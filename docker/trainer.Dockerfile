# mnist-mlp trainer: `mnist-train`, a batch job that publishes versions into /models.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY constraints.txt ./
COPY artifact/ artifact/
COPY trainer/ trainer/
# The whole runtime goes into one virtual environment, copied alone into the final stage.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c constraints.txt ./artifact ./trainer \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools \
 && find /opt/venv -depth -type d -name tests -exec rm -rf {} +  # ~40 MB nobody runs in production

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mnist-mlp-trainer" \
      org.opencontainers.image.description="Trains a NumPy MLP on MNIST and publishes a versioned weights artifact" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="mnist-mlp"
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mnist \
 && mkdir -p /models /cache /data/mnist \
 && chown mnist:mnist /models /cache
COPY --from=builder /opt/venv /opt/venv
COPY docker/trainer-entrypoint.sh /usr/local/bin/trainer-entrypoint
# Search spaces for `mnist-train sweep --space /sweeps/example.toml` (README: sweeps).
COPY trainer/sweeps/ /sweeps/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_DIR=/models \
    MNIST_CACHE_DIR=/cache \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
VOLUME ["/models", "/cache"]
ENTRYPOINT ["/usr/local/bin/trainer-entrypoint"]
CMD ["train"]
