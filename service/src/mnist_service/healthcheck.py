"""`python -m mnist_service.healthcheck`: exit 0 when this container's service is ready.

For Docker's HEALTHCHECK, where the image has no curl: asks /readyz on the service's PORT and,
unless GRPC_PORT is 0, the gRPC health service's "readiness" on GRPC_PORT: both must be ready.
"""

import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mnist_service.settings import Settings

TIMEOUT = 1.5  # each check: both fit the image's HEALTHCHECK --timeout=4s


def http_ready(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=TIMEOUT) as response:
        if response.status != 200:
            raise OSError(f"/readyz answered {response.status}")


def grpc_ready(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service="readiness")
        status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT).status
    if status != health_pb2.HealthCheckResponse.SERVING:
        raise OSError(f"gRPC readiness is {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")


def main() -> int:
    try:
        settings = Settings.from_env()
        http_ready(settings.port)
        if settings.grpc_port:
            grpc_ready(settings.grpc_port)
    except (ValueError, urllib.error.URLError, OSError, grpc.RpcError) as e:
        print(f"not ready: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
