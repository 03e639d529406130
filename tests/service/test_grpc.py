"""The Open Inference Protocol over gRPC against a real `mnist-serve` (gunicorn and the gRPC server
process under its supervisor): tritonclient.grpc here, KServe's InferenceGRPCClient in a process of
its own (kserve_grpc_client.py: the two clients' generated modules cannot share a process), every
RPC, both tensor encodings, every error status, keys, labels, metrics, hot swap, health, reflection,
connection limits and the supervisor.

Requests the clients will not send (both encodings at once, values out of range) are built with
tritonclient's own generated messages: the same wire format. The service's own modules are never
imported here for the same reason.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import requests
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from service_helpers import Server, digit, expected, free_port, metric_total, wait_for, write_version

HERE = Path(__file__).parent
SERVICE = "inference.GRPCInferenceService"


def digits(n: int) -> np.ndarray:
    return np.stack([digit(s % 3) for s in range(n)])  # (n, 28, 28) uint8


def infer_input(pixels: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("images", list(pixels.shape), datatype)
    tensor.set_data_from_numpy(pixels)
    return tensor


def unit(images: np.ndarray, shape=(-1, 784)) -> np.ndarray:
    return (images.astype(np.float32) / 255).reshape(shape)


def status_of(call) -> grpc.StatusCode:
    """The status code of the error a tritonclient call raises (which tells it as "StatusCode.NAME")."""
    with pytest.raises(InferenceServerException) as raised:
        call()
    return grpc.StatusCode[raised.value.status().removeprefix("StatusCode.")]


def stub_call(target: str, request: pb.ModelInferRequest, metadata=()):
    """ModelInfer with tritonclient's generated stub: (response, trailing metadata) or the RpcError."""
    with grpc.insecure_channel(target) as channel:
        try:
            response, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
                request, metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            return e, dict(e.trailing_metadata())
        return response, dict(call.trailing_metadata())


def raw_request(pixels: np.ndarray, datatype: str = "FP32", **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mnist", **fields)
    request.inputs.add(name="images", datatype=datatype, shape=list(pixels.shape))
    request.raw_input_contents.append(pixels.tobytes())
    return request


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the read-only cases: versions 1 and 2 (2 serves), one gRPC process."""
    root = tmp_path_factory.mktemp("grpc")
    model_dir = root / "models"
    write_version(model_dir, 1, seed=1)
    write_version(model_dir, 2, seed=2)
    (root / "metrics").mkdir()
    server = Server(model_dir, root / "metrics", workers=1, grpc_workers=1, MAX_BATCH=256)
    yield server, model_dir
    server.stop(graceful=False)


@pytest.fixture(scope="module")
def client(served):
    server, _ = served
    return triton.InferenceServerClient(server.grpc_target)


def test_every_rpc_answers_as_the_protocol_says(served, client):
    server, _ = served
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist") and client.is_model_ready("mnist", "1")
    assert status_of(lambda: client.is_model_ready("mnist", "7")) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: client.is_model_ready("other")) == grpc.StatusCode.NOT_FOUND
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "mnist-mlp" and "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata("mnist", as_json=True)
    assert model["versions"] == ["1", "2"] and model["platform"] == "numpy_mlp"
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [("images", "FP32", ["-1", "784"])]
    assert [t["name"] for t in model["outputs"]] == ["probabilities", "labels"]
    # the same metadata as the REST path's
    rest = requests.get(server.url + "/v2/models/mnist", timeout=5).json()
    assert rest["versions"] == model["versions"] and rest["platform"] == model["platform"]


@pytest.mark.parametrize("datatype, shape", [("FP32", (-1, 784)), ("FP32", (-1, 28, 28)), ("UINT8", (-1, 784)),
                                             ("UINT8", (-1, 28, 28))])
def test_binary_tensors_answer_as_the_rest_path_and_the_model(served, client, datatype, shape):
    server, model_dir = served
    images = digits(3)
    pixels = unit(images, shape) if datatype == "FP32" else images.reshape(shape)
    result = client.infer("mnist", [infer_input(pixels, datatype)])
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("labels")
    want = expected(model_dir, images, version=2)
    np.testing.assert_allclose(probabilities, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(labels, want.argmax(axis=1))
    assert result.get_response().model_version == "2"
    # REST v2 on the same input: the same numbers, bit for bit
    body = {"inputs": [{"name": "images", "datatype": datatype, "shape": list(pixels.shape),
                        "data": pixels.ravel().tolist()}]}
    rest = requests.post(server.url + "/v2/models/mnist/infer", json=body, timeout=10).json()
    np.testing.assert_array_equal(np.asarray(rest["outputs"][0]["data"], np.float32), probabilities.ravel())


def test_a_batch_of_256_fits_and_257_is_refused(served, client):
    _, model_dir = served
    images = digits(256)
    result = client.infer("mnist", [infer_input(unit(images))])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected(model_dir, images, 2), rtol=1e-6, atol=1e-7)
    too_many = infer_input(unit(digits(257)))
    assert status_of(lambda: client.infer("mnist", [too_many])) == grpc.StatusCode.INVALID_ARGUMENT


def test_versions_outputs_and_classification(served, client):
    _, model_dir = served
    images = digits(2)
    result = client.infer("mnist", [infer_input(unit(images))], model_version="1",
                          outputs=[triton.InferRequestedOutput("probabilities", class_count=3)], request_id="r-7")
    response = result.get_response()
    assert (response.model_version, response.id, [o.name for o in response.outputs]) == ("1", "r-7", ["probabilities"])
    want = expected(model_dir, images, 1)
    top = result.as_numpy("probabilities")  # BYTES "<value>:<index>", most probable first, as Triton writes them
    assert [int(e.decode().split(":")[1]) for e in top[0]] == list(np.argsort(-want[0], kind="stable")[:3])
    assert status_of(lambda: client.infer("mnist", [infer_input(unit(images))], model_version="9")) \
        == grpc.StatusCode.NOT_FOUND


def test_kserve_client_typed_and_raw_tensors_and_the_proto(served):
    """KServe's InferenceGRPCClient (typed contents from lists, raw from numpy), in its own process;
    it also checks that the repository's .proto matches the descriptor KServe ships."""
    server, model_dir = served
    images = digits(2)
    result = subprocess.run([sys.executable, str(HERE / "kserve_grpc_client.py"), server.grpc_target,
                             json.dumps(unit(images).tolist())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    want = expected(model_dir, images, 2)
    for encoding in ("typed", "raw"):
        np.testing.assert_allclose(np.array(answers[encoding]["probabilities"]), want, rtol=1e-6, atol=1e-7)
        assert answers[encoding]["labels"] == want.argmax(axis=1).tolist()
        assert answers[encoding]["model_version"] == "2"
    assert answers["proto_matches_kserve"] == [], answers["proto_matches_kserve"]


def bad_requests() -> list:
    good = unit(digits(1))
    cases = []

    def case(name, request, fragment):
        cases.append(pytest.param(request, fragment, id=name))

    case("shape", raw_request(good.reshape(1, 28, 28)[:, :27]), "shape must be")
    case("datatype", raw_request(good.astype(np.float64), "FP64"), "datatype must be FP32")
    short = raw_request(good)
    short.raw_input_contents[0] = good.tobytes()[:-4]
    case("size", short, "must be 3136 bytes")
    case("range", raw_request(good * 2), "[0, 1]")
    case("name", pb.ModelInferRequest(model_name="mnist", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=[1, 784])],
        raw_input_contents=[good.tobytes()]), "unknown input")
    both = raw_request(good)
    both.inputs[0].contents.fp32_contents.extend(good.ravel().tolist())
    case("both encodings", both, "both contents and raw_input_contents")
    typed = pb.ModelInferRequest(model_name="mnist")
    typed.inputs.add(name="images", datatype="UINT8", shape=[1, 784]).contents.uint_contents.extend([300] * 784)
    case("uint8 past 255", typed, "0..255")
    wrong_field = pb.ModelInferRequest(model_name="mnist")
    wrong_field.inputs.add(name="images", datatype="FP32", shape=[1, 784]).contents.int_contents.extend([0] * 784)
    case("typed field", wrong_field, "contents.fp32_contents")
    count = pb.ModelInferRequest(model_name="mnist")
    count.inputs.add(name="images", datatype="FP32", shape=[1, 784]).contents.fp32_contents.extend([0.0] * 10)
    case("typed count", count, "has 10 values")
    output = raw_request(good)
    output.outputs.add(name="logits")
    case("output", output, "unknown output")
    case("no input", pb.ModelInferRequest(model_name="mnist"), "one input tensor")
    return cases


@pytest.mark.parametrize("request_, fragment", bad_requests())
def test_bad_input_is_invalid_argument_with_a_clear_message(served, request_, fragment):
    server, _ = served
    error, _ = stub_call(server.grpc_target, request_)
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in error.details(), error.details()


def test_unknown_model_and_version_are_not_found(served):
    server, _ = served
    for fields in ({"model_name": "other"}, {"model_version": "5"}, {"model_version": "x"}):
        request = raw_request(unit(digits(1)))
        for key, value in fields.items():
            setattr(request, key, value)
        error, _ = stub_call(server.grpc_target, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND, fields


def test_a_message_over_the_size_limit_is_refused_and_the_server_keeps_serving(tmp_path, serve):
    write_version(tmp_path, 1)
    server = serve(tmp_path, workers=1, grpc_workers=1, MAX_BODY_BYTES=100_000)
    client = triton.InferenceServerClient(server.grpc_target)
    assert status_of(lambda: client.infer("mnist", [infer_input(unit(digits(40)))])) \
        == grpc.StatusCode.RESOURCE_EXHAUSTED  # grpc core: larger than grpc.max_receive_message_length
    assert client.infer("mnist", [infer_input(unit(digits(4)))]).as_numpy("labels").shape == (4,)


def test_without_a_model_the_server_is_live_not_ready_and_infer_is_unavailable(tmp_path, serve):
    (tmp_path / "mnist").mkdir()
    server = serve(tmp_path, workers=1, grpc_workers=1)
    client = triton.InferenceServerClient(server.grpc_target)
    assert client.is_server_live() and not client.is_server_ready() and not client.is_model_ready("mnist")
    assert status_of(lambda: client.infer("mnist", [infer_input(unit(digits(1)))])) == grpc.StatusCode.UNAVAILABLE
    assert health_status(server.grpc_target, "readiness") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_status(server.grpc_target, "liveness") == health_pb2.HealthCheckResponse.SERVING


def health_status(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def test_health_names_and_reflection(served):
    server, _ = served
    for service in ("", SERVICE, "readiness", "liveness"):
        assert health_status(server.grpc_target, service) == health_pb2.HealthCheckResponse.SERVING, service
    with grpc.insecure_channel(server.grpc_target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(services)


def test_rpcs_are_counted_timed_and_logged_with_http(served, client):
    server, _ = served
    route = f"/{SERVICE}/ModelInfer"
    before = metric_total(server.url, "mnist_http_requests_total", protocol="grpc", route=route, status="OK",
                          model_version="2")
    bad_before = metric_total(server.url, "mnist_http_requests_total", protocol="grpc", route=route,
                              status="INVALID_ARGUMENT")
    client.infer("mnist", [infer_input(unit(digits(2)))], headers={"x-request-id": "grpc-test-1"})
    status_of(lambda: client.infer("mnist", [infer_input(unit(digits(1)).reshape(1, 28, 28)[:, 1:])]))
    assert metric_total(server.url, "mnist_http_requests_total", protocol="grpc", route=route, status="OK",
                        model_version="2") == before + 1
    assert metric_total(server.url, "mnist_http_requests_total", protocol="grpc", route=route,
                        status="INVALID_ARGUMENT") == bad_before + 1
    assert metric_total(server.url, "mnist_http_request_duration_seconds_count", protocol="grpc", route=route) > 0
    # the request id comes back with the status, with answers and errors alike
    for pixels in (unit(digits(1)), unit(digits(1)) * 2):
        _, metadata = stub_call(server.grpc_target, raw_request(pixels), [("x-request-id", "grpc-echo")])
        assert metadata["x-request-id"] == "grpc-echo"
    lines = [e for e in server.logs() if e.get("request_id") == "grpc-test-1"]
    assert len(lines) == 1
    assert {k: lines[0][k] for k in ("protocol", "method", "route", "status", "batch_size", "model_version")} == {
        "protocol": "grpc", "method": "POST", "route": route, "status": "OK", "batch_size": 2, "model_version": 2}
    http = [e for e in server.logs() if e.get("protocol") == "http"]
    assert http and set(lines[0]) == set(http[-1])  # one access-line format for both


@pytest.fixture
def keyed(tmp_path, serve):
    write_version(tmp_path / "models", 1)
    keys = tmp_path / "keys"
    keys.write_text("grpc-secret\n")
    return serve(tmp_path / "models", workers=1, grpc_workers=1, API_KEYS_FILE=keys)


def test_api_keys_are_the_same_keys_as_metadata(keyed):
    client = triton.InferenceServerClient(keyed.grpc_target)
    tensor = infer_input(unit(digits(1)))
    assert status_of(lambda: client.infer("mnist", [tensor])) == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(lambda: client.infer("mnist", [tensor], headers={"authorization": "Bearer nope"})) \
        == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(lambda: client.get_model_metadata("mnist")) == grpc.StatusCode.UNAUTHENTICATED
    for headers in ({"authorization": "Bearer grpc-secret"}, {"x-api-key": "grpc-secret"}):
        assert client.infer("mnist", [tensor], headers=headers).as_numpy("labels").shape == (1,)
    # health, reflection and the server's own liveness, readiness and metadata stay open, as the HTTP probes
    assert client.is_server_live() and client.is_server_ready() and client.get_server_metadata()
    assert health_status(keyed.grpc_target, "readiness") == health_pb2.HealthCheckResponse.SERVING
    assert metric_total(keyed.url, "mnist_auth_failures_total", route=f"/{SERVICE}/ModelInfer") == 2


def test_labels_canary_share_and_sticky_clients(tmp_path, serve):
    write_version(tmp_path, 1, seed=1)
    write_version(tmp_path, 2, seed=2)
    (tmp_path / "mnist" / "labels.json").write_text(json.dumps(
        {"format_version": 1, "labels": {"stable": 1, "canary": 2}, "canary_percent": 50}))
    server = serve(tmp_path, workers=1, grpc_workers=1)
    request = raw_request(unit(digits(1)))
    seen = {}
    for client_id in [f"client-{i}" for i in range(40)]:
        answers = {stub_call(server.grpc_target, request, [("x-client-id", client_id)])[1]["x-model-version"]
                   for _ in range(3)}
        assert len(answers) == 1, client_id  # a client that names itself stays on one side
        seen[client_id] = answers.pop()
    assert set(seen.values()) == {"1", "2"}
    # the same client id lands on the same side over HTTP
    for client_id, version in list(seen.items())[:10]:
        response = requests.post(server.url + "/v1/predict", json={"instances": [digit().tolist()]},
                                 headers={"X-Client-Id": client_id}, timeout=10)
        assert response.headers["X-Model-Version"] == version
    response, metadata = stub_call(server.grpc_target, request, [("x-model-label", "canary")])
    assert (response.model_version, metadata["x-model-version"], metadata["x-model-label"]) == ("2", "2", "canary")
    error, _ = stub_call(server.grpc_target, request, [("x-model-label", "nightly")])
    assert error.code() == grpc.StatusCode.NOT_FOUND
    both = raw_request(unit(digits(1)), model_version="1")
    error, _ = stub_call(server.grpc_target, both, [("x-model-label", "canary")])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_hot_swap_under_grpc_load_fails_no_rpc(tmp_path, serve):
    write_version(tmp_path, 1, seed=1)
    server = serve(tmp_path, workers=1, grpc_workers=2, MODEL_POLL_SECONDS=0.2)
    images = digits(2)
    # Each version's answer, computed once before the threads start: loading a .npz parses its header
    # with ast.literal_eval, which CPython 3.11 can fail when threads run it at once ("AST constructor
    # recursion depth mismatch", python/cpython#106905).
    reference = tmp_path / "reference"
    for version in (1, 2):
        write_version(reference, version, seed=version)
    want = {version: expected(reference, images, version) for version in (1, 2)}
    errors, versions, stop = [], set(), threading.Event()

    def load():
        client = triton.InferenceServerClient(server.grpc_target)
        while not stop.is_set():
            try:
                result = client.infer("mnist", [infer_input(unit(images))])
                version = int(result.get_response().model_version)
                np.testing.assert_allclose(result.as_numpy("probabilities"), want[version], rtol=1e-6, atol=1e-7)
                versions.add(version)
            except Exception as e:  # every failure is the test's failure
                errors.append(repr(e))

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(load)
        time.sleep(0.5)
        write_version(tmp_path, 2, seed=2)
        assert wait_for(lambda: 2 in versions, timeout=15)
        time.sleep(0.5)
        stop.set()
    assert errors == [] and versions == {1, 2}


def test_sigterm_drains_rpcs_in_flight_and_the_service_exits_cleanly(tmp_path, serve):
    write_version(tmp_path, 1)
    server = serve(tmp_path, workers=1, grpc_workers=1, GRACEFUL_TIMEOUT=10)
    client = triton.InferenceServerClient(server.grpc_target)
    tensor = infer_input(unit(digits(256)))
    results, done = [], threading.Event()

    def load():
        while not done.is_set():
            try:
                results.append(client.infer("mnist", [tensor]).as_numpy("labels").shape)
            except InferenceServerException as e:
                results.append(e.status())  # "StatusCode.NAME"
                return

    thread = threading.Thread(target=load)
    thread.start()
    assert wait_for(lambda: len(results) >= 3)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(20) == 0
    done.set()
    thread.join(10)
    # Answered in full until the server stopped taking RPCs; the next one is refused (CANCELLED by a
    # server shutting down, UNAVAILABLE once it is gone), never a broken answer.
    answered = [r for r in results if r == (256,)]
    assert answered and all(r == (256,) for r in results[:-1]), results[-3:]
    assert results[-1] in ((256,), "StatusCode.CANCELLED", "StatusCode.UNAVAILABLE")
    logs = server.logs()
    assert any(e.get("message") == "gRPC server draining" for e in logs)
    started = [e for e in logs if e.get("protocol") == "grpc" and e.get("route", "").endswith("/ModelInfer")]
    assert len(started) >= len(answered) and {e["status"] for e in started} == {"OK"}  # every RPC it ran, finished


def grpc_processes(server: Server) -> list[psutil.Process]:
    """The supervisor's gRPC server processes that are alive (not the one killed, before it is reaped)."""
    found = []
    for child in psutil.Process(server.process.pid).children():
        try:
            if "mnist_service.grpc.server" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # a zombie, a process gone
            continue
    return found


def test_a_dead_grpc_process_is_restarted_and_serves_again(tmp_path, serve):
    write_version(tmp_path, 1)
    server = serve(tmp_path, workers=1, grpc_workers=1)
    [process] = grpc_processes(server)
    process.send_signal(signal.SIGKILL)
    assert wait_for(lambda: len(grpc_processes(server)) == 1 and grpc_processes(server)[0].pid != process.pid,
                    timeout=15)
    client = triton.InferenceServerClient(server.grpc_target)
    assert wait_for(lambda: _answers(client), timeout=15)
    assert any(e.get("message") == "gRPC server process died; restarting it" for e in server.logs())
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 200  # HTTP never stopped


def _answers(client) -> bool:
    try:
        return client.infer("mnist", [infer_input(unit(digits(1)))]).as_numpy("labels").shape == (1,)
    except InferenceServerException:
        return False


def test_a_taken_grpc_port_is_one_line_and_exit_2(tmp_path):
    write_version(tmp_path, 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environment = {**os.environ, "MODEL_DIR": str(tmp_path), "HOST": "127.0.0.1", "PORT": str(free_port()),
                       "GRPC_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
        result = subprocess.run([sys.executable, "-m", "mnist_service.process.cli"], env=environment,
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"mnist-serve: GRPC_PORT {port} is in use on 127.0.0.1"


def test_a_connection_that_sends_nothing_is_closed_after_client_timeout(tmp_path, serve):
    write_version(tmp_path, 1)
    server = serve(tmp_path, workers=1, grpc_workers=1, CLIENT_TIMEOUT=1)
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as silent:
        started = time.monotonic()
        while silent.recv(1024):  # the server's HTTP/2 settings, then the end: our preface never came
            pass
        assert time.monotonic() - started < 5


def test_an_idle_connection_is_closed_after_grpc_max_connection_idle(tmp_path, serve):
    write_version(tmp_path, 1)
    server = serve(tmp_path, workers=1, grpc_workers=1, GRPC_MAX_CONNECTION_IDLE=1)
    states = []
    with grpc.insecure_channel(server.grpc_target) as channel:
        channel.subscribe(states.append)
        pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
        # the server's GOAWAY after a second without RPCs takes the channel back to IDLE
        assert wait_for(lambda: states and states[-1] == grpc.ChannelConnectivity.IDLE, timeout=10), states
        assert grpc.ChannelConnectivity.READY in states


def flood(target: str, count: int, batch: int, timeout: float | None = None) -> list[str]:
    """`count` concurrent ModelInfer RPCs of `batch` images: the status of each."""
    request = raw_request(unit(digits(batch)))

    def one(_):
        with grpc.insecure_channel(target) as channel:
            try:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout or 30)
            except grpc.RpcError as e:
                return e.code().name
            return "OK"

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_overload_is_resource_exhausted_at_once_and_counted(tmp_path, serve):
    write_version(tmp_path, 1)
    server = serve(tmp_path, workers=1, grpc_workers=1, QUEUE_TIMEOUT=0.01, QUEUE_TIMEOUT_MAX=0.01)
    statuses = flood(server.grpc_target, 48, 1024)
    assert set(statuses) == {"OK", "RESOURCE_EXHAUSTED"}, statuses
    shed = statuses.count("RESOURCE_EXHAUSTED")
    assert metric_total(server.url, "mnist_http_requests_shed_total", route=f"/{SERVICE}/ModelInfer") == shed
    assert metric_total(server.url, "mnist_http_requests_total", protocol="grpc", status="RESOURCE_EXHAUSTED") == shed


def test_an_rpc_whose_deadline_passed_in_the_queue_is_not_run(tmp_path, serve):
    write_version(tmp_path, 1)
    server = serve(tmp_path, workers=1, grpc_workers=1, QUEUE_TIMEOUT=30, QUEUE_TIMEOUT_MAX=30)
    statuses = flood(server.grpc_target, 48, 1024, timeout=0.05)
    assert "DEADLINE_EXCEEDED" in statuses
    assert wait_for(lambda: any(e.get("status") == "DEADLINE_EXCEEDED" for e in server.logs()))
    skipped = [e for e in server.logs() if e.get("status") == "DEADLINE_EXCEEDED"]
    assert all(e["batch_size"] is None for e in skipped)  # never decoded nor run


def test_a_grpc_server_that_cannot_start_takes_the_service_down_visibly(tmp_path, serve):
    """Killed, then its port taken by another program: every restart fails at once; after
    supervisor.CRASH_LIMIT of them mnist-serve stops gunicorn too and exits 1, with a critical line."""
    write_version(tmp_path, 1)
    server = serve(tmp_path, workers=1, grpc_workers=1)
    [process] = grpc_processes(server)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        process.send_signal(signal.SIGKILL)
        process.wait(5)
        squatter.bind(("127.0.0.1", server.grpc_port))
        squatter.listen()
        assert server.process.wait(60) == 1
    assert any(e.get("message") == "gRPC server process cannot start: stopping the service" and
               e.get("level") == "critical" for e in server.logs())
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/healthz", timeout=5)  # not a half-dead pod serving HTTP alone


def test_connections_are_recycled_after_grpc_max_connection_age_and_no_rpc_fails(tmp_path, serve):
    write_version(tmp_path, 1)
    server = serve(tmp_path, workers=1, grpc_workers=1, GRPC_MAX_CONNECTION_AGE=1, GRACEFUL_TIMEOUT=2)
    states = []
    with grpc.insecure_channel(server.grpc_target) as channel:
        channel.subscribe(states.append)
        stub, request = pb_grpc.GRPCInferenceServiceStub(channel), raw_request(unit(digits(1)))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # RPCs all along: the server's GOAWAY makes the channel reconnect
            assert stub.ModelInfer(request, timeout=5).model_version == "1"
            time.sleep(0.05)
    assert states.count(grpc.ChannelConnectivity.READY) >= 2, states  # connected again after each GOAWAY
