#!/bin/sh
# Use MNIST from /data/mnist when something is mounted there (read-only is fine), else let the
# trainer download it into MNIST_CACHE_DIR. An explicit MNIST_DIR or --data wins.
if [ -z "${MNIST_DIR:-}" ] && [ -n "$(ls -A /data/mnist 2>/dev/null)" ]; then
  export MNIST_DIR=/data/mnist
fi
exec mnist-train "$@"
