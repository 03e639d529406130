"""Open Inference Protocol v2 and TF Serving's predict path: the protocol's own client (tritonclient)
against a real gunicorn, the binary tensor format byte by byte, and the bad-input battery."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service_helpers import digit, expected, make_app, png, write_version

INFER = "/v2/models/mnist/infer"
LIMITS = {"max_batch": 4, "max_body_bytes": 100_000}  # the battery's 413s; a good batch of 3 fits


def digits(n: int) -> np.ndarray:
    return np.stack([digit(s) for s in range(n)])  # (n, 28, 28) uint8


def v1_probabilities(post, batch: np.ndarray) -> np.ndarray:
    body = post("/v1/predict", json={"instances": [d.tolist() for d in batch]}).json()
    return np.array([p["probabilities"] for p in body["predictions"]])


def tensor(datatype="FP32", shape=(1, 784), data=None, **fields) -> dict:
    t = {"name": "images", "datatype": datatype, "shape": list(shape), **fields}
    if data is not None:
        t["data"] = data
    return t


def infer_json(*inputs, **fields) -> bytes:
    return json.dumps({"inputs": list(inputs), **fields}).encode()


def binary_request(raw: bytes, datatype="FP32", shape=(1, 784), size=None, header_length=None, **fields):
    """(body, headers) of a binary-tensor request, with the sizes given or the true ones."""
    head = infer_json(tensor(datatype, shape, parameters={"binary_data_size": len(raw) if size is None else size}),
                      **fields)
    return head + raw, {"Inference-Header-Content-Length": str(len(head) if header_length is None else header_length)}


def split_response(body: bytes, headers) -> tuple[dict, dict[str, bytes]]:
    """The binary tensor extension's response read by hand: JSON header, then each binary output."""
    n = int(headers["Inference-Header-Content-Length"])
    header, offset, raw = json.loads(body[:n]), n, {}
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            raw[output["name"]] = body[offset:offset + size]
            offset += size
    assert offset == len(body)
    return header, raw


def bytes_elements(raw: bytes) -> list[bytes]:
    """BYTES tensor data: each element is a 4-byte little-endian length, then the bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        (n,) = struct.unpack_from("<I", raw, offset)
        elements.append(raw[offset + 4:offset + 4 + n])
        offset += 4 + n
    return elements


# -- server, model metadata and health -------------------------------------------------------------

def test_server_and_model_metadata(client, model_dir):
    write_version(model_dir, 3, seed=3)
    server = client.get("/v2").get_json()
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    assert server["name"] and server["version"]
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/mnist").get_json()
    assert meta == {"name": "mnist", "versions": ["1", "3"], "platform": "numpy_mlp",
                    "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 784]}],
                    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                                {"name": "labels", "datatype": "INT64", "shape": [-1]}]}
    assert client.get("/v2/models/mnist/versions/1").get_json() == meta
    for path in ("/v2/models/mnist/ready", "/v2/models/mnist/versions/1/ready"):
        assert client.get(path).status_code == 200


@pytest.mark.parametrize("path", ["/v2/models/digits", "/v2/models/mnist/versions/9", "/v2/models/mnist/versions/x",
                                  "/v2/models/digits/ready", "/v2/models/mnist/versions/9/ready",
                                  "/v2/models/mnist/versions/" + "1" * 5000 + "/ready"])
def test_unknown_models_and_versions_are_404_in_protocol_form(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert isinstance(response.get_json()["error"], str)


def test_without_a_model_nothing_is_ready(tmp_path):
    client = make_app(tmp_path).test_client()
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.get_json()["ready"] is False
    assert client.get("/v2/models/mnist").get_json()["versions"] == []
    assert client.get("/v2/models/mnist/ready").status_code == 503
    response = client.post(INFER, data=infer_json(tensor("UINT8", data=[0] * 784)))
    assert response.status_code == 503 and isinstance(response.get_json()["error"], str)


# -- inference through the test client -------------------------------------------------------------

@pytest.mark.parametrize("datatype, shape, nested", [("FP32", (2, 784), False), ("FP32", (2, 28, 28), True),
                                                     ("UINT8", (2, 784), True), ("UINT8", (2, 28, 28), False)])
def test_json_data_in_every_layout(client, model_dir, datatype, shape, nested):
    batch = digits(2)
    values = batch / 255 if datatype == "FP32" else batch
    data = values.reshape(shape).tolist() if nested else values.reshape(-1).tolist()
    response = client.post(INFER, data=infer_json(tensor(datatype, shape, data), id="req-7"))
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("mnist", "1", "req-7")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert [o["name"] for o in body["outputs"]] == ["probabilities", "labels"]
    assert outputs["probabilities"]["datatype"] == "FP32" and outputs["probabilities"]["shape"] == [2, 10]
    assert outputs["labels"]["datatype"] == "INT64" and outputs["labels"]["shape"] == [2]
    probabilities = np.reshape(outputs["probabilities"]["data"], (2, 10))
    np.testing.assert_allclose(probabilities, expected(model_dir, batch), atol=1e-6)
    assert outputs["labels"]["data"] == probabilities.argmax(axis=1).tolist()


def test_binary_response_follows_the_extension_byte_by_byte(client, model_dir):
    batch = digits(3)
    body, headers = binary_request(batch.tobytes(), "UINT8", (3, 28, 28), parameters={"binary_data_output": True})
    response = client.post(INFER, data=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    header, raw = split_response(response.get_data(), response.headers)
    assert [(o["name"], o["datatype"], o["shape"]) for o in header["outputs"]] == [
        ("probabilities", "FP32", [3, 10]), ("labels", "INT64", [3])]
    assert all("data" not in o for o in header["outputs"])
    probabilities = np.frombuffer(raw["probabilities"], "<f4").reshape(3, 10)
    np.testing.assert_allclose(probabilities, expected(model_dir, batch), atol=1e-6)
    np.testing.assert_array_equal(np.frombuffer(raw["labels"], "<i8"), probabilities.argmax(axis=1))


def test_outputs_named_choose_their_own_encoding_and_order(client):
    body, headers = binary_request(digits(2).tobytes(), "UINT8", (2, 784), outputs=[
        {"name": "labels", "parameters": {"binary_data": True}}, {"name": "probabilities"}])
    response = client.post(INFER, data=body, headers=headers)
    header, raw = split_response(response.get_data(), response.headers)
    assert [o["name"] for o in header["outputs"]] == ["labels", "probabilities"]
    assert list(raw) == ["labels"] and len(header["outputs"][1]["data"]) == 20
    only = client.post(INFER, data=infer_json(tensor("UINT8", data=[0] * 784), outputs=[{"name": "labels"}]))
    assert [o["name"] for o in only.get_json()["outputs"]] == ["labels"]
    assert "Inference-Header-Content-Length" not in only.headers


def test_classification_is_triton_format_most_probable_first(client, model_dir):
    batch = digits(2)
    p = expected(model_dir, batch)
    outputs = [{"name": "probabilities", "parameters": {"classification": 3, "binary_data": binary}}
               for binary in (True, False)]
    for output in outputs:
        body, headers = binary_request(batch.tobytes(), "UINT8", (2, 784), outputs=[output])
        response = client.post(INFER, data=body, headers=headers)
        assert response.status_code == 200
        if output["parameters"]["binary_data"]:
            header, raw = split_response(response.get_data(), response.headers)
            elements = [e.decode() for e in bytes_elements(raw["probabilities"])]
        else:
            header = response.get_json()
            elements = header["outputs"][0]["data"]
        assert header["outputs"][0]["datatype"] == "BYTES" and header["outputs"][0]["shape"] == [2, 3]
        for row, got in zip(p, np.reshape(elements, (2, 3))):
            top = np.argsort(-row)[:3]
            assert list(got) == [f"{row[i]:f}:{i}" for i in top]


def test_classification_of_more_classes_than_there_are_gives_all_ten(client):
    response = client.post(INFER, data=infer_json(tensor("UINT8", data=[0] * 784), outputs=[
        {"name": "probabilities", "parameters": {"classification": 50}}]))
    assert response.get_json()["outputs"][0]["shape"] == [1, 10]


def test_a_version_on_disk_answers_when_named(client, model_dir):
    write_version(model_dir, 2, seed=5)
    data = infer_json(tensor("UINT8", data=digit().reshape(-1).tolist()))
    client.application.extensions["model_store"].refresh()
    for path, version in ((INFER, 2), ("/v2/models/mnist/versions/1/infer", 1)):
        body = client.post(path, data=data).get_json()
        assert body["model_version"] == str(version)
        np.testing.assert_allclose(body["outputs"][0]["data"], expected(model_dir, [digit()], version)[0], atol=1e-6)


# -- the bad-input battery: every case is a 4xx {"error": "<message>"}, never a 5xx -------------------

NAN = np.full(784, np.nan, "<f4").tobytes()
ONE = digits(1).tobytes()


def bad_requests() -> list[tuple[str, str, bytes, dict, int]]:
    """(case, path, body, headers, status)."""
    good_input = tensor("UINT8", data=[0] * 784)
    cases = [
        ("malformed JSON", INFER, b'{"inputs": [', {}, 400),
        ("empty body", INFER, b"", {}, 400),
        ("not an object", INFER, b"[1, 2]", {}, 400),
        ("no inputs", INFER, b"{}", {}, 400),
        ("wrong input name", INFER, infer_json(tensor("UINT8", data=[0] * 784, name="pixels")), {}, 400),
        ("two inputs", INFER, infer_json(good_input, good_input), {}, 400),
        ("wrong datatype", INFER, infer_json(tensor("FP64", data=[0] * 784)), {}, 400),
        ("wrong shape", INFER, infer_json(tensor("UINT8", (1, 783), [0] * 783)), {}, 400),
        ("shape without batch", INFER, infer_json(tensor("UINT8", (784,), [0] * 784)), {}, 400),
        ("empty batch", INFER, infer_json(tensor("UINT8", (0, 784), [])), {}, 400),
        ("shape not a list", INFER, infer_json(tensor("UINT8", "1x784", [0] * 784)), {}, 400),
        ("data length vs shape", INFER, infer_json(tensor("UINT8", (2, 784), [0] * 784)), {}, 400),
        ("ragged data", INFER, infer_json(tensor("UINT8", (1, 28, 28), [[0] * 28] * 27 + [[0] * 27])), {}, 400),
        ("no data", INFER, infer_json(tensor("UINT8")), {}, 400),
        ("strings as data", INFER, infer_json(tensor("FP32", data=["0.5"] * 784)), {}, 400),
        ("booleans as data", INFER, infer_json(tensor("FP32", data=[True] * 784)), {}, 400),
        ("UINT8 above 255", INFER, infer_json(tensor("UINT8", data=[256] * 784)), {}, 400),
        ("UINT8 negative", INFER, infer_json(tensor("UINT8", data=[-1] * 784)), {}, 400),
        ("UINT8 fractions", INFER, infer_json(tensor("UINT8", data=[0.5] * 784)), {}, 400),
        ("FP32 above 1", INFER, infer_json(tensor("FP32", data=[2.0] * 784)), {}, 400),
        ("FP32 negative", INFER, infer_json(tensor("FP32", data=[-0.1] * 784)), {}, 400),
        ("FP32 beyond float32", INFER, infer_json(tensor("FP32", data=[1e39] * 784)), {}, 400),
        ("NaN in JSON", INFER, infer_json(tensor("FP32", data=[0] * 784)).replace(b"0]", b"NaN]"), {}, 400),
        ("NaN binary", INFER, *binary_request(NAN), 400),
        ("infinity binary", INFER, *binary_request(np.full(784, np.inf, "<f4").tobytes()), 400),
        ("FP32 binary above 1", INFER, *binary_request(np.full(784, 255, "<f4").tobytes()), 400),
        ("binary_data_size vs shape", INFER, *binary_request(ONE, "UINT8", size=100), 400),
        ("binary_data_size not a number", INFER, *binary_request(ONE, "UINT8", size="784"), 400),
        ("binary_data_size past the end", INFER, *binary_request(ONE[:100], "UINT8", size=784), 400),
        ("bytes after the binary data", INFER, *binary_request(ONE + b"xx", "UINT8", size=784), 400),
        ("data and binary_data_size", INFER, infer_json(tensor("UINT8", data=[0] * 784,
                                                               parameters={"binary_data_size": 784})), {}, 400),
        ("header length not a number", INFER, *binary_request(ONE, "UINT8", header_length="12abc"), 400),
        ("header length negative", INFER, *binary_request(ONE, "UINT8", header_length="-5"), 400),
        ("header length beyond the body", INFER, *binary_request(ONE, "UINT8", header_length=10**6), 400),
        ("header length huge", INFER, *binary_request(ONE, "UINT8", header_length="9" * 5000), 400),
        ("binary without header length", INFER, binary_request(ONE, "UINT8")[0], {}, 400),
        ("unknown output", INFER, infer_json(good_input, outputs=[{"name": "logits"}]), {}, 400),
        ("output named twice", INFER, infer_json(good_input, outputs=[{"name": "labels"}] * 2), {}, 400),
        ("classification of labels", INFER, infer_json(good_input, outputs=[
            {"name": "labels", "parameters": {"classification": 2}}]), {}, 400),
        ("classification not a count", INFER, infer_json(good_input, outputs=[
            {"name": "probabilities", "parameters": {"classification": "3"}}]), {}, 400),
        ("binary_data_output not a flag", INFER, infer_json(good_input, parameters={"binary_data_output": 1}), {}, 400),
        ("id not a string", INFER, infer_json(good_input, id=7), {}, 400),
        ("unknown model", "/v2/models/fashion/infer", infer_json(good_input), {}, 404),
        ("unknown version", "/v2/models/mnist/versions/9/infer", infer_json(good_input), {}, 404),
        ("version not a number", "/v2/models/mnist/versions/latest/infer", infer_json(good_input), {}, 404),
        ("batch over MAX_BATCH", INFER, infer_json(tensor("UINT8", (5, 784), [0] * 5 * 784)), {}, 413),
        ("body over MAX_BODY_BYTES", INFER, infer_json(tensor("UINT8", (4, 784), [0] * 4 * 784),
                                                       id="x" * LIMITS["max_body_bytes"]), {}, 413),
    ]
    return cases


BAD = bad_requests()


@pytest.mark.parametrize("case, path, body, headers, status", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_a_4xx_in_protocol_form(model_dir, case, path, body, headers, status):
    client = make_app(model_dir, **LIMITS).test_client()
    response = client.post(path, data=body, headers=headers)
    assert response.status_code == status, response.get_data()
    assert isinstance(response.get_json()["error"], str)


# -- TF Serving / KServe v1 ------------------------------------------------------------------------

def test_tf_serving_predict_answers_as_v1_predict(client, model_dir):
    batch = digits(2)
    instances = {"instances": [batch[0].tolist(), batch[1].reshape(-1).tolist(),
                               {"b64": base64.b64encode(png(batch[1])).decode()}]}
    v1 = client.post("/v1/predict", json=instances).get_json()
    tf = client.post("/v1/models/mnist:predict", json=instances)
    assert tf.status_code == 200 and tf.get_json() == {"predictions": v1["predictions"]}
    # TF Serving users send `curl -d`, which says application/x-www-form-urlencoded.
    curl = client.post("/v1/models/mnist:predict", data=json.dumps(instances),
                       content_type="application/x-www-form-urlencoded")
    assert curl.get_json() == tf.get_json()
    with_inputs = {**instances, "include_input": True}
    tf_inputs = client.post("/v1/models/mnist:predict", json=with_inputs).get_json()["predictions"]
    assert tf_inputs == client.post("/v1/predict", json=with_inputs).get_json()["predictions"]
    assert all("input" in p for p in tf_inputs)
    write_version(model_dir, 2, seed=9)
    pinned = client.post("/v1/models/mnist/versions/2:predict", json=instances).get_json()
    np.testing.assert_allclose([p["probabilities"] for p in pinned["predictions"][:2]],
                               expected(model_dir, batch, 2), atol=1e-6)


@pytest.mark.parametrize("path, body, status", [
    ("/v1/models/fashion:predict", {"instances": [[0] * 784]}, 404),
    ("/v1/models/mnist/versions/9:predict", {"instances": [[0] * 784]}, 404),
    ("/v1/models/mnist:predict", {"inputs": [[0] * 784]}, 422),
    ("/v1/models/mnist:predict", {"instances": [[0] * 783]}, 422),
    ("/v1/models/mnist:predict", {"instances": [[0] * 784] * 5}, 413),
    ("/v1/models/mnist:predict", {"instances": [[0] * 784] * 4, "pad": "x" * LIMITS["max_body_bytes"]}, 413),
])
def test_tf_serving_errors_keep_the_v1_form(model_dir, path, body, status):
    client = make_app(model_dir, **LIMITS).test_client()
    response = client.post(path, data=json.dumps(body), content_type="application/json")
    assert response.status_code == status
    error = response.get_json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)


# -- a real gunicorn, the protocol's own client ----------------------------------------------------

def test_tritonclient_against_gunicorn(model_dir, serve):
    write_version(model_dir, 2, seed=7)
    server = serve(model_dir)
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mnist") and client.is_model_ready("mnist", "1")
        assert not client.is_model_ready("mnist", "7") and not client.is_model_ready("fashion")
        assert {"binary_tensor_data", "classification"} <= set(client.get_server_metadata()["extensions"])
        meta = client.get_model_metadata("mnist")
        assert meta["versions"] == ["1", "2"] and meta["inputs"][0]["shape"] == [-1, 784]

        batch = digits(3)
        want = expected(model_dir, batch, 2)

        # The client's defaults: binary input, binary outputs, all of them.
        images = triton.InferInput("images", [3, 784], "FP32")
        images.set_data_from_numpy((batch / 255).reshape(3, 784).astype(np.float32))
        result = client.infer("mnist", [images], request_id="r1")
        assert result.get_response()["model_version"] == "2" and result.get_response()["id"] == "r1"
        np.testing.assert_allclose(result.as_numpy("probabilities"), want, atol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("labels"), want.argmax(axis=1))

        # The JSON path, both ways.
        images.set_data_from_numpy((batch / 255).reshape(3, 784).astype(np.float32), binary_data=False)
        json_output = triton.InferRequestedOutput("probabilities", binary_data=False)
        result = client.infer("mnist", [images], outputs=[json_output])
        np.testing.assert_allclose(result.as_numpy("probabilities"), want, atol=1e-6)
        assert result.as_numpy("labels") is None

        # UINT8 28x28 images, classification, and a version other than the serving one.
        images = triton.InferInput("images", [3, 28, 28], "UINT8")
        images.set_data_from_numpy(batch)
        result = client.infer("mnist", [images], model_version="1", outputs=[
            triton.InferRequestedOutput("probabilities", class_count=3), triton.InferRequestedOutput("labels")])
        v1 = expected(model_dir, batch, 1)
        classes = result.as_numpy("probabilities")
        assert classes.shape == (3, 3) and result.get_response()["model_version"] == "1"
        for row, got in zip(v1, classes):
            values, indices = zip(*(element.decode().split(":") for element in got))
            assert [int(i) for i in indices] == np.argsort(-row)[:3].tolist()
            np.testing.assert_allclose([float(v) for v in values], np.sort(row)[::-1][:3], atol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("labels"), v1.argmax(axis=1))

        with pytest.raises(InferenceServerException, match="unknown model"):
            client.infer("fashion", [images])
    finally:
        client.close()


def test_v2_probabilities_equal_v1_predict_and_are_counted(model_dir, serve):
    server = serve(model_dir)
    batch = digits(4)
    v1 = v1_probabilities(lambda path, **kw: requests.post(server.url + path, timeout=10, **kw), batch)
    fp32 = (batch / 255).astype(np.float32)
    answers = []
    for raw, datatype in ((fp32.tobytes(), "FP32"), (batch.tobytes(), "UINT8")):
        body, headers = binary_request(raw, datatype, (4, 28, 28), parameters={"binary_data_output": True})
        response = requests.post(server.url + INFER, data=body, headers=headers, timeout=10)
        answers.append(np.frombuffer(split_response(response.content, response.headers)[1]["probabilities"], "<f4"))
    as_json = requests.post(server.url + INFER, data=infer_json(tensor("FP32", (4, 784), fp32.ravel().tolist())),
                            timeout=10).json()
    answers.append(np.array(as_json["outputs"][0]["data"]))
    for answer in answers:
        np.testing.assert_allclose(answer.reshape(4, 10), v1, atol=1e-6)

    exposition = requests.get(server.url + "/metrics", timeout=5).text
    assert 'route="/v2/models/<name>/infer"' in exposition
    assert metric(exposition, "mnist_batch_size_sum") == 4 * 4  # v1 and three v2 requests of 4
    access = [e for e in server.logs() if e.get("route") == "/v2/models/<name>/infer"]
    assert [(e["status"], e["batch_size"], e["model_version"]) for e in access] == [(200, 4, 1)] * 3


def metric(exposition: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def test_bad_input_never_hurts_a_gunicorn_worker(model_dir, serve):
    server = serve(model_dir, MAX_BATCH=LIMITS["max_batch"], MAX_BODY_BYTES=LIMITS["max_body_bytes"])
    with requests.Session() as session:
        for case, path, body, headers, status in BAD:
            response = session.post(server.url + path, data=body, headers=headers, timeout=10)
            assert response.status_code == status, case
            assert isinstance(response.json()["error"], str), case
        body, headers = binary_request(ONE, "UINT8")
        good = session.post(server.url + INFER, data=body, headers=headers, timeout=10)
    assert good.status_code == 200 and len(good.json()["outputs"]) == 2
    log = server.log_path.read_text()
    assert "Traceback" not in log and "Worker exiting" not in log
    assert server.process.poll() is None


def test_unrouted_v2_paths_and_methods_answer_in_protocol_form(client):
    for response in (client.get("/v2/nothing/here"), client.delete("/v2/health/live")):
        assert response.status_code in (404, 405)
        assert isinstance(response.get_json()["error"], str)


def test_a_version_that_int_cannot_read_is_a_clear_4xx(client):
    for version in ("²", "9" * 5000):
        response = client.post("/v1/predict", json={"instances": [[0] * 784]}, query_string={"version": version})
        assert response.status_code == 422 and response.get_json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("path, protocol_form", [
    ("/v1/predict", False), ("/v2/models/mnist/infer", True), ("/v2/models/mnist/versions/1/infer", True),
    ("/v1/models/mnist:predict", False), ("/v1/models/mnist/versions/1:predict", False),
])
def test_every_inference_route_answers_a_wrong_method_alike(client, path, protocol_form):
    """The data plane's routes (routes.ROUTES) share routing, the method check and the error form."""
    for method in ("GET", "PUT", "DELETE"):
        response = client.open(path, method=method)
        assert response.status_code == 405 and response.headers["Allow"] == "POST"
        error = response.get_json()["error"]
        assert isinstance(error, str) if protocol_form else error["code"] == "method_not_allowed"
    access = client.post(path, data=b"{", content_type="application/json")
    assert access.status_code == 400 and "X-Request-ID" in access.headers
