"""`inference.GRPCInferenceService`: the Open Inference Protocol's RPCs over the data plane
(dataplane/), their messages decoded and encoded by codec.py with the REST path's checks."""

from __future__ import annotations

from contextvars import ContextVar
from typing import NamedTuple

from .. import access
from ..dataplane.drift import DriftMonitor
from ..dataplane.inference import check_name, pick_model, run_model
from ..dataplane.metadata import SERVER
from ..dataplane.options import Limits
from ..dataplane.store import ModelStore
from ..errors import ApiError
from . import codec
from .proto import grpc_predict_v2_pb2 as pb
from .proto import grpc_predict_v2_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class Rpc(NamedTuple):
    """The RPC being answered (observe.py sets it): its metadata, and its access.note carrier."""

    metadata: dict[str, str]
    notes: dict


current_rpc: ContextVar[Rpc] = ContextVar("current_rpc")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs, answered as the REST path answers them (http/control.py, http/routes.py)."""

    def __init__(self, store: ModelStore, limits: Limits, drift: DriftMonitor):
        self.store, self.limits, self.drift = store, limits, drift

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.store.current is not None)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER["name"], version=SERVER["version"],
                                         extensions=SERVER["extensions"])

    async def ModelReady(self, request, context):
        try:
            pick_model(self.store, request.name, request.version or None)
        except ApiError as e:
            if e.status != 503:  # another model, a missing version: NOT_FOUND
                raise
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):
        if request.version:
            pick_model(self.store, request.name, request.version)
        else:
            check_name(self.store, request.name)  # metadata describes the interface: no model needed
        return codec.model_metadata(self.store.name, self.store.versions())

    async def ModelInfer(self, request, context):
        metadata, notes = current_rpc.get()
        label = metadata.get("x-model-label")
        if label is not None and request.model_version:
            raise ApiError(400, "invalid_request", "ask for a model_version or an x-model-label, not both")
        picked = pick_model(self.store, request.model_name, request.model_version or None, label,
                            metadata.get("x-client-id"))
        access.note(notes, model_version=picked.model.version, model_label=picked.label,
                     metadata=[(name.lower(), value) for name, value in picked.headers()])
        access.note(notes, inference_id=request.id)
        pixels = codec.decode_pixels(request, self.limits)
        outputs = codec.requested_outputs(request)
        probabilities = run_model(picked, pixels, notes, self.drift)
        return codec.encode_response(picked.model, request, outputs, probabilities)
