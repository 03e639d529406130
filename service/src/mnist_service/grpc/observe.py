"""What every unary RPC goes through before and after the servicer: a request id, API keys
(keys.py), shedding by the event loop's lag (admission.py, lag.py), deadlines, and its record
(access.py: metrics and one access line).

Each method's handler is wrapped once, as its service is added to the server, not per RPC as a
grpc.aio ServerInterceptor would: an interceptor is awaited and builds a new handler for every
RPC, which cost more than this module's own work (bench/README.md, "Service").
"""

from __future__ import annotations

import functools
import logging
import time

import grpc

from .. import access, metrics
from ..admission import Admission
from ..errors import ApiError
from ..keys import ApiKeys, presented_key
from ..payloads import PayloadLog
from .lag import EventLoopLag
from .servicer import SERVICE, Rpc, current_rpc

log = logging.getLogger(__name__)

METHOD_PREFIX = f"/{SERVICE}/"
INFER = f"{METHOD_PREFIX}ModelInfer"
OPEN_METHODS = frozenset(f"{METHOD_PREFIX}{m}" for m in ("ServerLive", "ServerReady", "ServerMetadata"))
STATUS_CODES = {  # the REST path's HTTP statuses (ApiError.status) as gRPC status codes
    400: grpc.StatusCode.INVALID_ARGUMENT, 413: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ObservedRpcs:
    """Stands in for the server while services are added (the generated `add_*_to_server(servicer,
    observed)`): their unary methods reach the server wrapped in `_observe`; streams pass as they are.

    Under overload the RPCs wait on the event loop, each behind the work of those before it, and the
    wait is the loop's lag (EventLoopLag). While it is longer than QUEUE_TIMEOUT (QUEUE_TIMEOUT_MAX
    under a crowd: admission.Admission, as HTTP sheds) an inference RPC is answered RESOURCE_EXHAUSTED
    at once.
    """

    def __init__(self, server: grpc.aio.Server, keys: ApiKeys | None, admission: Admission, lag: EventLoopLag,
                 payloads: PayloadLog | None = None):
        self.server, self.keys, self.admission, self.lag, self.payloads = server, keys, admission, lag, payloads

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.server.add_generic_rpc_handlers(tuple(_WrappedHandlers(h, self._wrap) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.server.add_registered_method_handlers(
            service, {name: self._wrap(f"/{service}/{name}", handler) for name, handler in handlers.items()})

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
        if handler is None or handler.unary_unary is None:  # unknown methods; reflection and Watch stream
            return handler
        return grpc.unary_unary_rpc_method_handler(functools.partial(self._observe, handler.unary_unary, method),
                                                   request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    async def _observe(self, behaviour, method: str, request, context):
        arrived = time.perf_counter()
        metadata = dict(context.invocation_metadata())
        request_id = access.make_request_id(metadata.get("x-request-id"))
        notes = {access.NOTES: {"route": method}}
        token = current_rpc.set(Rpc(metadata, notes))
        code, message, response = grpc.StatusCode.OK, "", None
        metrics.IN_FLIGHT.inc()
        try:
            self._admit(method, metadata, context)
            response = await behaviour(request, context)
        except ApiError as e:
            code, message = STATUS_CODES.get(e.status, grpc.StatusCode.UNKNOWN), e.message
        except Exception:
            log.exception("unhandled error", extra={"route": method, "request_id": request_id})
            code, message = grpc.StatusCode.INTERNAL, "internal server error"
        finally:
            current_rpc.reset(token)
            seconds = time.perf_counter() - arrived
            metrics.IN_FLIGHT.dec()
            access.record(notes, request_id=request_id, protocol="grpc", method="POST", status=code.name,
                          seconds=seconds)
            if self.payloads is not None and method == INFER:
                fields = access.notes_of(notes)
                fields["error"] = message or None
                self.payloads.record(fields, request_id=request_id, protocol="grpc", status=code.name,
                                     failed=code is not grpc.StatusCode.OK, seconds=seconds)
        # With the status, not as initial metadata: that is one more operation of grpc core per RPC
        # (12-16 % of a one-image RPC, bench/README.md).
        context.set_trailing_metadata([("x-request-id", request_id), *access.notes_of(notes).get("metadata", [])])
        if code is not grpc.StatusCode.OK:
            await context.abort(code, message)
        return response

    def _admit(self, method: str, metadata: dict, context) -> None:
        """Refuse the RPC (ApiError) without a valid key, when it queued too long, or past its deadline."""
        if self.keys is not None and method.startswith(METHOD_PREFIX) and method not in OPEN_METHODS:
            key = presented_key(metadata.get("authorization"), metadata.get("x-api-key"))
            if key is None or not self.keys.valid(key):
                reason = "missing" if key is None else "invalid"
                metrics.AUTH_FAILURES.labels(method, reason).inc()
                log.warning("refused an RPC without a valid API key", extra={"route": method, "reason": reason})
                raise ApiError(401, "unauthorized", f"{reason} API key: send the metadata "
                               "authorization: Bearer <key> or x-api-key: <key>")
        if method != INFER:
            return
        if not self.admission.on_time(self.lag.seconds):
            metrics.SHED.labels(method).inc()
            raise ApiError(429, "overloaded", "the server is overloaded: retry later")
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise ApiError(504, "deadline_exceeded", "the deadline passed before the RPC could start")


class _WrappedHandlers(grpc.GenericRpcHandler):
    """A service's generic handler, its methods wrapped by `wrap` the first time each is called."""

    def __init__(self, handlers: grpc.GenericRpcHandler, wrap):
        self.handlers, self.wrap, self.wrapped = handlers, wrap, {}

    def service(self, details):
        wrapped = self.wrapped.get(details.method)
        if wrapped is None:
            handler = self.handlers.service(details)
            if handler is None:  # an unknown method: not remembered, or any caller could grow the dict
                return None
            wrapped = self.wrapped[details.method] = self.wrap(details.method, handler)
        return wrapped
