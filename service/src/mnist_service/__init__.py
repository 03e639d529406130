"""mnist-mlp service: serves the trainer's weights artifact (docs/artifact.md) over HTTP and gRPC.

A request travels: process/ (mnist-serve, gunicorn's gevent worker, the gRPC processes) → http/ or
grpc/ (the transport: middleware or wrapped handlers, routes or servicer) → codecs/ (the wire format) →
dataplane/ (pick a version from the store, run it, explain it). Shared by every room: settings.py,
errors.py, logs.py, metrics.py, access.py (request ids and access lines), admission.py (shedding),
keys.py (API keys); healthcheck.py is the container's probe.
"""

__version__ = "0.1.0"
