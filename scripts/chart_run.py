"""Play what the Helm chart renders with `podman kube play`, in the order a cluster runs it.

podman runs Pods, Deployments, PersistentVolumeClaims (as named volumes), emptyDirs, ConfigMaps,
security contexts, probes and host ports, but has no Job kind and no Services: a Job is played as
its pod template, retried as `backoffLimit` says (and `backoffLimitPerIndex`, one pod per index with
JOB_COMPLETION_INDEX, for an Indexed Job), and `$(VAR)` in its arguments expanded as the kubelet
does; the `helm test` pod reaches the service pod by its IP, as a Service would route it. The
service pod's ports `http` and `grpc` get host ports: the host predicts a digit through each (over
gRPC with tritonclient, after the health service's `readiness` answers SERVING). What podman
cannot play (Service, HPA, PDB, NetworkPolicy, Ingress, ServiceMonitor) stays covered by
`scripts/check-chart`'s schema validation. Run by `scripts/chart-run`, which builds the images first.

It plays the chart twice, once per place for the models (`--models`): the chart's claim (a podman
volume, read on the host through its mountpoint), then a bucket (`models.uri=s3://...`) on moto's
S3 server, started on the host at the gateway of the bridge that `kube play` puts pods on (so that
they reach it, as a cluster's pods reach a store outside), and read with boto3. The bucket's keys
reach the pods through `models.s3.existingSecret` (`envFrom: secretRef`), which podman 4.3 cannot
play: a Secret given to `kube play` is stored but then refused as "not valid JSON", and a podman
secret made by hand as "illegal base64 data". So the kubelet is emulated here too: the keys of each
Secret the play defines (`Store.secrets`) become plain `env` entries of the containers that refer
to it, before `env` as the kubelet orders them; a reference to any other Secret fails the play.

The claim's play probes the service pod as the chart does by default, over HTTP; the bucket's with
the chart's gRPC probes (`grpc.probes.enabled`), so that both kinds run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import grpc
import numpy as np
import requests
import tritonclient.grpc as triton_grpc
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from mnist_trainer import data

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "mnist-mlp"
RELEASE = "chartrun"
FULLNAME = f"{RELEASE}-mnist-mlp"
DATA_VOLUME = f"{RELEASE}-mnist"
SWEEP_TRIALS = 2
TRAINER_IMAGE = "docker.io/library/mnist-mlp-trainer:latest"  # as `docker compose build` tags it
KUBE_NETWORK = "podman-default-kube-network"  # the bridge `podman kube play` puts pods on, not "podman"
MODEL = "mnist"  # model.name's default
PROBES = {"claim": "http", "bucket": "grpc"}  # the service pod's probes in each play: both kinds run


def values(store_values: list[str], probes: str) -> list[str]:
    """A local run: the images `docker compose build` made, MNIST from a named volume, every trainer
    Job on, the fast preset, the service probed over `probes` (http or grpc); and the store's own
    values (where the models live)."""
    return [
        "--set", "image.repository=docker.io/library/mnist-mlp-service", "--set", "image.tag=latest",
        "--set", "training.image.repository=docker.io/library/mnist-mlp-trainer", "--set", "training.image.tag=latest",
        "--set", "replicaCount=1", "--set", "preStopSleepSeconds=0", "--set", "model.pollSeconds=1",
        "--set", "server.workers=2",
        "--set", "training.preset=fast", "--set", f"training.data.existingClaim={DATA_VOLUME}",
        "--set", "training.cronjob.enabled=true",
        "--set", "sweep.enabled=true", "--set", f"sweep.trials={SWEEP_TRIALS}", "--set", "sweep.parallelism=2",
        "--set", "sweep.promote.label=canary", "--set", "sweep.promote.canaryPercent=50",
        "--set", f"grpc.probes.enabled={str(probes == 'grpc').lower()}",
        *store_values,
    ]


# -- podman --------------------------------------------------------------------------------------

def podman(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=capture, text=True)
    if check and result.returncode != 0:
        raise Failure(f"podman {' '.join(args[:3])}: exit {result.returncode}: {(result.stderr or '').strip()[-800:]}")
    return result


class Failure(Exception):
    """A check a cluster would make did not hold (one line)."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise Failure(message)


class Playground:
    """Everything played, so that it is all torn down whatever happens."""

    def __init__(self, work: Path, secrets: dict[str, dict]):
        self.work, self.secrets, self.pods = work, secrets, []
        self.volumes_before = set(podman("volume", "ls", "-q").stdout.split())

    def play(self, name: str, *objects: dict, configmaps: list[dict] = ()) -> str:
        """`podman kube play` these objects; returns the name of the pod it made."""
        for o in objects:
            if o["kind"] in ("Pod", "Deployment"):
                inline_secrets(o["spec"] if o["kind"] == "Pod" else o["spec"]["template"]["spec"], self.secrets)
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(objects))
        args = ["kube", "play"]
        for i, configmap in enumerate(configmaps):
            cm_path = self.work / f"{name}-configmap-{i}.yaml"
            cm_path.write_text(yaml.safe_dump(configmap))
            args += ["--configmap", str(cm_path)]
        podman(*args, str(path))
        pod = name if objects[-1]["kind"] == "Pod" else f"{name}-pod-0"  # a Deployment's first replica
        self.pods.append(pod)
        return pod

    def remove_pod(self, pod: str) -> None:
        podman("pod", "rm", "-f", "-t", "5", pod, check=False)

    def teardown(self) -> None:
        for pod in self.pods:
            self.remove_pod(pod)
        for volume in set(podman("volume", "ls", "-q").stdout.split()) - self.volumes_before:
            podman("volume", "rm", "-f", volume, check=False)  # claims, ConfigMaps, emptyDirs, MNIST


def pod_network_gateway(ground: Playground) -> str:
    """The host's address on the played pods' bridge, held up, with a fixed MAC address, until the
    tear-down. netavark creates a bridge, and so that address, with the first container on it and
    deletes it after the last: an empty pod holds it, so that a server bound to it outlives the pods
    that come and go. And netavark 1.4 (podman 4.3's) leaves the bridge's MAC to the kernel, which
    takes the lowest of its ports': it changes as pods come and go, and a pod that resolved the
    gateway before then sends to a MAC nobody answers, its connections to the host timing out until
    its ARP entry expires (seen here: a sweep trial that could not publish to the bucket). Later
    netavark versions fix the bridge's MAC themselves (containers/netavark#833); this fixes it to the
    one it has. Held in both plays: the service pod answers the host port through the same gateway."""
    if podman("network", "exists", KUBE_NETWORK, check=False).returncode != 0:
        podman("network", "create", KUBE_NETWORK)  # as the first `kube play` on this machine would
    gateway = podman("network", "inspect", KUBE_NETWORK, "--format", "{{range .Subnets}}{{.Gateway}}{{end}}").stdout
    check(bool(gateway.strip()), f"podman network {KUBE_NETWORK} has no gateway address")
    holder = f"{RELEASE}-network"
    podman("pod", "create", "--name", holder, "--network", KUBE_NETWORK)
    ground.pods.append(holder)
    podman("pod", "start", holder)
    bridge = podman("network", "inspect", KUBE_NETWORK, "--format", "{{.NetworkInterface}}").stdout.strip()
    mac = json.loads(ip("-j", "link", "show", "dev", bridge))[0]["address"]
    ip("link", "set", "dev", bridge, "address", mac)  # set, even to the same value: the kernel then keeps it
    return gateway.strip()


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    check(result.returncode == 0, f"ip {' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def container_of(pod: str, container: str) -> str:
    return f"{pod}-{container}"


def wait_exit(name: str, timeout: float) -> int:
    result = subprocess.run(["podman", "wait", name], capture_output=True, text=True, timeout=timeout)
    check(result.returncode == 0, f"podman wait {name}: {result.stderr.strip()}")
    return int(result.stdout.strip().splitlines()[-1])


def logs_tail(name: str, lines: int = 15) -> str:
    return podman("logs", "--tail", str(lines), name, check=False).stdout + podman(
        "logs", "--tail", str(lines), name, check=False).stderr


def secret(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "stringData": data}


def inline_secrets(spec: dict, secrets: dict[str, dict]) -> None:
    """Each container's `envFrom: secretRef` as plain env entries, as the kubelet resolves it (podman
    cannot: see the module docstring): the Secret's keys first, in env's place; an entry of env wins
    over the same name from a Secret, and a later Secret over an earlier one."""
    for container in spec.get("initContainers", []) + spec["containers"]:
        from_secrets = {}
        for source in container.pop("envFrom", []):
            check("secretRef" in source, f"container {container['name']}: chart-run emulates envFrom secretRef "
                  f"only, not {source}")
            name = source["secretRef"]["name"]
            check(name in secrets, f"container {container['name']} takes its environment from Secret {name}, "
                  f"which this play does not define ({sorted(secrets) or 'none'})")
            from_secrets.update({source.get("prefix", "") + k: v for k, v in secrets[name]["stringData"].items()})
        env = container.get("env", [])
        own = {e["name"] for e in env}
        container["env"] = [{"name": k, "value": v} for k, v in from_secrets.items() if k not in own] + env


# -- the rendered chart --------------------------------------------------------------------------

def render(store_values: list[str], probes: str) -> list[dict]:
    result = subprocess.run(["helm", "template", RELEASE, str(CHART), "--kube-version", "1.35.0",
                             *values(store_values, probes)], capture_output=True, text=True)
    check(result.returncode == 0, f"helm template: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    check(len(matches) == 1, f"the chart rendered {len(matches)} {kind} named {name}")
    return copy.deepcopy(matches[0])


def pod_of(name: str, template: dict, index: int | None = None) -> dict:
    """A Job's pod template as a Pod; for an Indexed Job, pod `index` with JOB_COMPLETION_INDEX set and
    `$(VAR)` references in command and args expanded from the container's env, as the kubelet does."""
    spec = copy.deepcopy(template["spec"])
    for container in spec["containers"]:
        env = container.setdefault("env", [])
        if index is not None:
            env.append({"name": "JOB_COMPLETION_INDEX", "value": str(index)})
        known = {e["name"]: e["value"] for e in env if "value" in e}
        for key in ("command", "args"):
            if key in container:
                container[key] = [expand(arg, known) for arg in container[key]]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": template["metadata"]["labels"]},
            "spec": spec}


def podman_probe(probe: dict, container: dict) -> dict:
    """An httpGet or grpc probe as the health check podman runs. The kubelet makes both itself;
    podman turns httpGet into `curl http://localhost:<port>` run inside the container (the service
    image has no curl, and the named port `http` became port 0), knows no grpc probe, joins an exec
    probe's words into a shell command, and kills the container when the check fails
    `failureThreshold` times: so the same GET, or the same gRPC health Check (SERVING passes, as for
    the kubelet), in Python, quoted for that shell, and a threshold that never kills (readiness,
    unlike liveness, never restarts a pod)."""
    timeout = probe.get("timeoutSeconds", 1)
    if "grpc" in probe:
        script = ("import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; "
                  f"s = g.HealthStub(grpc.insecure_channel('127.0.0.1:{probe['grpc']['port']}')).Check("
                  f"h.HealthCheckRequest(service='{probe['grpc'].get('service', '')}'), timeout={timeout}); "
                  "raise SystemExit(s.status != h.HealthCheckResponse.SERVING)")
    else:
        get = probe["httpGet"]
        port = get["port"]
        if isinstance(port, str):  # a named port, resolved as the kubelet resolves it
            port = next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
        script = (f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{get['path']}', "
                  f"timeout={timeout})")  # raises, so exits 1, unless 2xx
    return {"exec": {"command": ["python", "-c", f'"{script}"']}, "periodSeconds": probe.get("periodSeconds", 10),
            "timeoutSeconds": timeout, "failureThreshold": 10_000}


def probe_target(probe: dict) -> str:
    """What a probe asks, for the log."""
    if "grpc" in probe:
        return f"the gRPC health service {probe['grpc'].get('service', '')!r} on port {probe['grpc']['port']}"
    return probe["httpGet"]["path"]


def probe_passes(container_name: str, probe: dict) -> bool:
    """Run a converted probe once, as podman's health check runs it (a shell command)."""
    command = " ".join(probe["exec"]["command"])
    return podman("exec", container_name, "sh", "-c", command, check=False).returncode == 0


def expand(text: str, env: dict[str, str]) -> str:
    """$(NAME) replaced by NAME's value from `env`; unknown references stay as they are (the kubelet's rule)."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def run_job(ground: Playground, job: dict, timeout: float, configmaps: list[dict] = ()) -> None:
    """Run a Job's pod until it succeeds, at most backoffLimit + 1 times; exit codes the pod failure
    policy marks FailJob end it at once. Indexed Jobs: each index, `parallelism` at a time."""
    spec = job["spec"]
    container = spec["template"]["spec"]["containers"][0]["name"]
    fail_now = {code for rule in spec.get("podFailurePolicy", {}).get("rules", [])
                if rule["action"] in ("FailJob", "FailIndex") for code in rule.get("onExitCodes", {}).get("values", [])}
    if spec.get("completionMode") == "Indexed":
        indexes, parallel = list(range(spec["completions"])), spec.get("parallelism", 1)
        attempts = spec.get("backoffLimitPerIndex", 0) + 1
    else:
        indexes, parallel, attempts = [None], 1, spec.get("backoffLimit", 6) + 1
    failed = []
    for start in range(0, len(indexes), parallel):
        batch = indexes[start:start + parallel]
        left = {index: attempts for index in batch}
        while left:
            running = {}
            for index in left:
                name = job["metadata"]["name"] + ("" if index is None else f"-{index}") + f"-{attempts - left[index]}"
                running[index] = ground.play(name, pod_of(name, spec["template"], index), configmaps=configmaps)
            for index, pod in running.items():
                code = wait_exit(container_of(pod, container), timeout)
                user, read_only = podman("inspect", container_of(pod, container), "--format",
                                         "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}").stdout.split()
                print(f"  pod {pod}: exit {code}, user {user}, read-only root filesystem {read_only}")
                check(user.split(":")[0] == "10001" and read_only == "true", f"pod {pod} ran as {user}, "
                      f"read-only root filesystem {read_only}")
                left[index] -= 1
                if code == 0:
                    del left[index]
                elif code in fail_now or left[index] == 0:
                    print(logs_tail(container_of(pod, container)))
                    failed.append(index)
                    del left[index]
                ground.remove_pod(pod)
    if failed:
        which = f"indexes {failed}" if failed != [None] else f"{attempts} attempts"
        raise Failure(f"Job {job['metadata']['name']} failed ({which})")


# -- where the models live ----------------------------------------------------------------------

class Store:
    """Where one play keeps its models, and how the host reads them back for the checks (never through
    the project's own repository code): versions, manifests, labels.json, sweep leaderboards."""

    name, title, stopped = "", "", ""  # stopped: what stop() ends, for the tear-down step's title
    secrets: dict[str, dict] = {}  # the Kubernetes Secrets this play defines, by name

    def values(self) -> list[str]:
        return []

    def start(self, ground: Playground, gateway: str) -> None:
        """Before the chart is rendered; `gateway` is the host's address on the pods' network."""

    def stop(self) -> None:
        """After the play's pods and volumes are gone, whatever happened."""

    def provide(self, ground: Playground, objects: list[dict]) -> None:
        """What the rendered chart needs before its first pod, and the checks of how it reaches the models."""

    def check_service(self, container: str, metrics: str) -> None:
        """Checks of the running service pod once it has served version 1."""

    def versions(self) -> list[int]:
        raise NotImplementedError

    def document(self, relative: str) -> dict | None:
        """<model>/<relative> as JSON, None when there is none."""
        raise NotImplementedError

    def manifest(self, version: int) -> dict:
        manifest = self.document(f"{version}/manifest.json")
        check(manifest is not None, f"version {version} has no manifest.json")
        return manifest

    def labels(self) -> dict:
        return self.document("labels.json") or {}

    def leaderboard(self, sweep_id: str) -> dict | None:
        return self.document(f"sweeps/{sweep_id}.json")


class ClaimStore(Store):
    """The chart's own PersistentVolumeClaim, which podman makes a named volume: read on the host at
    its mountpoint."""

    name, title = "claim", "the chart's PersistentVolumeClaim (a podman volume)"

    def provide(self, ground: Playground, objects: list[dict]) -> None:
        claim = find(objects, "PersistentVolumeClaim", f"{FULLNAME}-models")
        path = ground.work / "claim.yaml"
        path.write_text(yaml.safe_dump(claim))
        podman("kube", "play", str(path))  # its volume goes in the teardown, with every volume made since
        mountpoint = podman("volume", "inspect", claim["metadata"]["name"], "--format", "{{.Mountpoint}}").stdout
        self.path = Path(mountpoint.strip()) / MODEL

    def check_service(self, container: str, metrics: str) -> None:
        requests_sent = metric_total(metrics, "mnist_model_repository_requests_total")
        check(requests_sent == 0, f"a directory repository counted {requests_sent} S3 requests")

    def versions(self) -> list[int]:
        return sorted(int(p.name) for p in self.path.iterdir() if p.name.isdigit()) if self.path.is_dir() else []

    def document(self, relative: str) -> dict | None:
        path = self.path / relative
        return json.loads(path.read_text()) if path.is_file() else None


class BucketStore(Store):
    """A bucket on moto's S3 server, run on the host from the dev venv (this interpreter) and bound to
    the pods' bridge gateway: the host's address on their network, like a store outside a cluster.
    Read with boto3."""

    name, title, stopped = "bucket", "a bucket on moto's S3 server, at the pods' bridge gateway", ", the S3 server"
    bucket, prefix, region = "chartrun-models", "models", "us-east-1"
    secret_name = f"{RELEASE}-models-s3"
    keys = {"AWS_ACCESS_KEY_ID": "chartrun", "AWS_SECRET_ACCESS_KEY": "chartrun-secret"}  # moto takes any

    def __init__(self):
        self.secrets = {self.secret_name: secret(self.secret_name, self.keys)}
        self.server: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def values(self) -> list[str]:
        return ["--set", f"models.uri={self.uri}", "--set", f"models.s3.endpoint={self.endpoint}",
                "--set", f"models.s3.region={self.region}", "--set", f"models.s3.existingSecret={self.secret_name}"]

    def start(self, ground: Playground, gateway: str) -> None:
        with socket.socket() as probe:  # a free port on that address (moto has no port 0)
            probe.bind((gateway, 0))
            port = probe.getsockname()[1]
        self.endpoint = f"http://{gateway}:{port}"
        self.log = ground.work / "moto.log"
        env = {k: v for k, v in os.environ.items() if k != "INITIAL_NO_AUTH_ACTION_COUNT"}  # any key, always
        with open(self.log, "w") as log:  # its own process group: stopped with whatever it started
            self.server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", gateway, "-p", str(port)],
                                           stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for(self._answers, 30, f"moto's S3 server on {self.endpoint}")
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                                   aws_access_key_id=self.keys["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=self.keys["AWS_SECRET_ACCESS_KEY"],
                                   config=Config(s3={"addressing_style": "path"}))
        self.client.create_bucket(Bucket=self.bucket)
        print(f"  moto's S3 server on {self.endpoint} (pid {self.server.pid}), bucket {self.bucket}")

    def _answers(self) -> bool:
        if self.server.poll() is not None:
            raise Failure(f"moto's S3 server exited {self.server.returncode}: {self.log.read_text()[-800:]}")
        return requests.get(self.endpoint, timeout=1).status_code < 500

    def stop(self) -> None:
        if self.server is None or self.server.poll() is not None:
            return
        os.killpg(self.server.pid, signal.SIGTERM)
        try:
            self.server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()

    def provide(self, ground: Playground, objects: list[dict]) -> None:
        claims = [o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"]
        check(not claims, f"with models.uri the chart rendered PersistentVolumeClaims {claims}")
        pod = find(objects, "Deployment", FULLNAME)["spec"]["template"]["spec"]
        server = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in server["env"]}
        check(env.get("MODEL_DIR") == self.uri, f"the service pod's MODEL_DIR is {env.get('MODEL_DIR')}")
        self.cache_dir = env.get("MODEL_CACHE_DIR")
        mount = next((m for m in server["volumeMounts"] if m["mountPath"] == self.cache_dir), None)
        volume = next((v for v in pod["volumes"] if mount and v["name"] == mount["name"]), {})
        check("emptyDir" in volume, f"the service pod's MODEL_CACHE_DIR ({self.cache_dir}) is on "
              f"{volume or 'no volume'}")
        print(f"  no PersistentVolumeClaim; MODEL_DIR={self.uri}; MODEL_CACHE_DIR={self.cache_dir} on emptyDir "
              f"{volume['emptyDir']}")

    def check_service(self, container: str, metrics: str) -> None:
        sent = metric_total(metrics, "mnist_model_repository_requests_total")
        errors = metric_total(metrics, "mnist_model_repository_errors_total")
        check(sent > 0 and errors == 0, f"/metrics: {sent:.0f} S3 requests, {errors:.0f} errors")
        cached = podman("exec", container, "find", self.cache_dir, "-name", "weights.npz").stdout.split()
        check(any(Path(p).parent.name == "1" for p in cached), f"version 1 is not in the cache: {cached}")
        print(f"  /metrics: {sent:.0f} S3 requests, no errors; version 1 cached in {self.cache_dir}")

    def versions(self) -> list[int]:
        root = f"{self.prefix}/{MODEL}/"
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root)
        keys = [item["Key"][len(root):] for page in pages for item in page.get("Contents", [])]
        return sorted(int(k.split("/")[0]) for k in keys if re.fullmatch(r"\d+/manifest\.json", k))

    def document(self, relative: str) -> dict | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{MODEL}/{relative}")["Body"]
        except ClientError as e:
            if e.response["Error"]["Code"] == "NoSuchKey":
                return None
            raise
        return json.loads(body.read())


def check_grpc(address: str, image: np.ndarray, label: int, version: int) -> str:
    """The service at `address` over gRPC, as the Open Inference Protocol's clients call it: the health
    service's `readiness` is SERVING, and tritonclient's ModelInfer of `image` (28x28, 0..255) answers
    `label` from `version`, with probabilities that sum to 1. A line saying so; Failure otherwise.
    Also run by scripts/compose-e2e: one check for both."""
    try:
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=5).status
        check(status == health_pb2.HealthCheckResponse.SERVING,
              f"gRPC health of readiness at {address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
        client = triton_grpc.InferenceServerClient(address)
        try:
            pixels = triton_grpc.InferInput("images", [1, 784], "FP32")
            pixels.set_data_from_numpy((image.reshape(1, 784) / 255).astype(np.float32))  # FP32 is [0, 1]
            result = client.infer(MODEL, [pixels], client_timeout=10)
        finally:
            client.close()
    except grpc.RpcError as e:  # unreachable, refused, timed out: one line (tritonclient raises its own)
        raise Failure(f"gRPC health check at {address}: {e.code().name}: {e.details()}") from None
    except InferenceServerException as e:
        raise Failure(f"gRPC ModelInfer at {address}: {e}") from None
    answer = result.get_response()
    labels, probabilities = result.as_numpy("labels"), result.as_numpy("probabilities")
    check(answer.model_name == MODEL and answer.model_version == str(version),
          f"gRPC ModelInfer answered from model {answer.model_name!r} version {answer.model_version!r}, "
          f"not {MODEL!r} version {version}")
    check(labels is not None and probabilities is not None and labels.shape == (1,) and 0 <= labels[0] <= 9
          and probabilities.shape == (1, 10), f"gRPC ModelInfer outputs: {[o.name for o in answer.outputs]}, "
          f"labels {labels}, probabilities {probabilities}")
    check(abs(float(probabilities.sum()) - 1) < 1e-3 and probabilities.argmax() == labels[0],
          f"gRPC ModelInfer probabilities {probabilities} (sum {probabilities.sum():.6f}) for label {labels[0]}")
    check(labels[0] == label, f"digit {label} predicted as {labels[0]} over gRPC")
    return (f"gRPC at {address}: readiness SERVING; label {label}, predicted {labels[0]} by version "
            f"{answer.model_version} (p = {probabilities[0, labels[0]]:.3f}, probabilities sum to "
            f"{probabilities.sum():.4f})")


def metric_total(metrics: str, name: str) -> float:
    """A counter's samples summed over their labels; 0 when it has none."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith((name + "{", name + " ")))


STORES = {"claim": ClaimStore, "bucket": BucketStore}


# -- the run -------------------------------------------------------------------------------------

class Steps:
    def __init__(self, play: str):
        self.play, self.started = play, time.monotonic()

    def __call__(self, title: str) -> None:
        print(f"\n== [{self.play}] {title} ({time.monotonic() - self.started:.0f}s)", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise Failure(f"timed out after {timeout:.0f} s waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18900, help="host port of the service pod's HTTP port")
    parser.add_argument("--grpc-port", type=int, default=18901, help="host port of the service pod's gRPC port")
    parser.add_argument("--data", default=os.environ.get("MNIST_DIR"), help="MNIST folder (MNIST_DIR)")
    parser.add_argument("--models", choices=["claim", "bucket", "both"], default="both",
                        help="where the models live: the chart's claim, a bucket (models.uri), or one play of each")
    args = parser.parse_args()
    if not args.data:
        parser.error("set MNIST_DIR or --data to a folder with the MNIST files")
    started, times = time.monotonic(), []
    for kind in STORES if args.models == "both" else [args.models]:
        step = Steps(kind)
        if not play(STORES[kind](), step, {"http": args.port, "grpc": args.grpc_port}, Path(args.data)):
            return 1
        times.append(f"{kind} {step.elapsed():.0f}s")
    print(f"\nchart-run: OK in {time.monotonic() - started:.0f}s ({', '.join(times)})")
    return 0


def play(store: Store, step: Steps, host_ports: dict[str, int], mnist_dir: Path) -> bool:
    """One play of the chart with its models in `store`, torn down whatever happens."""
    with tempfile.TemporaryDirectory(prefix="chart-run-") as work:
        ground = Playground(Path(work), store.secrets)
        try:
            step(f"the pods' network; models in {store.title}")
            gateway = pod_network_gateway(ground)
            print(f"  the pods' bridge: gateway {gateway}, its MAC address fixed")
            store.start(ground, gateway)
            play_everything(ground, step, host_ports, mnist_dir, store)
        except Failure as e:
            print(f"\nchart-run: FAIL ({store.name}): {e}", file=sys.stderr)
            return False
        finally:
            step(f"tear down: pods and volumes{store.stopped}")
            ground.teardown()
            store.stop()
    return True


def play_everything(ground: Playground, step: Steps, host_ports: dict[str, int], mnist_dir: Path,
                    store: Store) -> None:
    step(f"helm template (the service probed over {PROBES[store.name]})")
    objects = render(store.values(), PROBES[store.name])
    print("  " + ", ".join(sorted({f"{o['kind']}" for o in objects})))

    step("MNIST into a volume (the training.data.existingClaim)")
    podman("volume", "create", DATA_VOLUME)
    podman("run", "--rm", "--user", "0", "-v", f"{DATA_VOLUME}:/data", "-v", f"{mnist_dir}:/src:ro",
           "--entrypoint", "sh", TRAINER_IMAGE, "-c", "cp /src/*-ubyte* /data/")

    step(f"the models {store.name} as the chart renders it")
    store.provide(ground, objects)

    step("the training hook Job (its pod template as a pod)")
    run_job(ground, find(objects, "Job", f"{FULLNAME}-train"), timeout=600)
    check(store.versions() == [1], f"versions after training: {store.versions()}")
    print("  published version 1")

    step("the Deployment: ready through its own probes, serving on host ports")
    deployment = find(objects, "Deployment", FULLNAME)
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    check(sorted(p["name"] for p in server["ports"]) == sorted(host_ports), f"the server's ports: {server['ports']}")
    for container_port in server["ports"]:
        container_port["hostPort"] = host_ports[container_port["name"]]
    probes = {kind: server.pop(kind) for kind in ("startupProbe", "livenessProbe", "readinessProbe") if kind in server}
    check(set(probes) == {"startupProbe", "livenessProbe", "readinessProbe"}, f"the server's probes: {sorted(probes)}")
    server["livenessProbe"] = podman_probe(probes["readinessProbe"], server)  # the health check podman runs
    server_pod = ground.play(deployment["metadata"]["name"], deployment)
    server_container = container_of(server_pod, server["name"])
    wait_for(lambda: podman("inspect", server_container, "--format", "{{.State.Health.Status}}").stdout.strip()
             == "healthy", 90, "the readiness probe to pass")
    for kind in ("startupProbe", "livenessProbe"):
        check(probe_passes(server_container, podman_probe(probes[kind], server)), f"the {kind} fails")
    print(f"  {server_container}: ready (the readiness probe on {probe_target(probes['readinessProbe'])} "
          "passes); the startup and liveness probes pass")
    url = f"http://127.0.0.1:{host_ports['http']}"

    step("a prediction of a real MNIST test digit, and /metrics")
    test = data.load(mnist_dir).test
    answer = requests.post(url + "/v1/predict", json={"instances": [test.images[0].reshape(-1).tolist()]}, timeout=10)
    check(answer.status_code == 200, f"POST /v1/predict: {answer.status_code} {answer.text[:200]}")
    predicted = answer.json()["predictions"][0]["label"]
    check(predicted == int(test.labels[0]), f"digit {test.labels[0]} predicted as {predicted}")
    print(f"  label {test.labels[0]}, predicted {predicted} by version {answer.json()['model']['version']}")
    metrics = requests.get(url + "/metrics", timeout=5).text
    check('mnist_http_requests_total{' in metrics and 'model_version="1"' in metrics, "/metrics lacks the request")
    store.check_service(server_container, metrics)

    step("over gRPC: the health service, the same digit predicted with tritonclient, /metrics")
    print("  " + check_grpc(f"127.0.0.1:{host_ports['grpc']}", test.images[0], int(test.labels[0]), version=1))
    metrics = requests.get(url + "/metrics", timeout=5).text  # the gRPC process counts in the same directory
    check(any(line.startswith("mnist_http_requests_total{") and 'protocol="grpc"' in line and "/ModelInfer" in line
              for line in metrics.splitlines()), "/metrics lacks the gRPC ModelInfer")
    print('  /metrics counts it (protocol="grpc")')

    step("helm test: the test pod, reaching the service pod by its IP")
    test_pod = find(objects, "Pod", f"{FULLNAME}-test-prediction")
    infra = podman("pod", "inspect", server_pod, "--format", "{{.InfraContainerID}}").stdout.strip()
    pod_ip = podman("inspect", infra, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}").stdout
    pod_ip = pod_ip.strip()  # the pod's IP: its containers share the infra container's network
    check(bool(pod_ip), f"pod {server_pod} has no IP address")
    for env in test_pod["spec"]["containers"][0]["env"]:
        if env["name"] == "BASE_URL":
            env["value"] = f"http://{pod_ip}:{server['ports'][0]['containerPort']}"
    test_name = ground.play(test_pod["metadata"]["name"], test_pod)
    code = wait_exit(container_of(test_name, "test"), 180)
    print(logs_tail(container_of(test_name, "test"), 5).rstrip())
    check(code == 0, f"the helm test pod exited {code}")

    step("the retraining CronJob's pod: the next version, swapped in by the running pod")
    cronjob = find(objects, "CronJob", f"{FULLNAME}-retrain")
    run_job(ground, {"metadata": {"name": f"{FULLNAME}-retrain"}, "spec": cronjob["spec"]["jobTemplate"]["spec"]},
            timeout=600)
    check(store.versions() == [1, 2], f"versions after retraining: {store.versions()}")
    wait_for(lambda: requests.get(url + "/v1/models", timeout=2).json()["models"][0]["serving_version"] == 2, 30,
             "the service to serve version 2")
    print("  published version 2; the service swapped it in")

    step(f"the sweep's Indexed Job ({SWEEP_TRIALS} pods), then the promotion Job")
    configmap = find(objects, "ConfigMap", f"{FULLNAME}-sweep-space")
    run_job(ground, find(objects, "Job", f"{FULLNAME}-sweep"), timeout=600, configmaps=[configmap])
    check(store.versions() == list(range(1, 3 + SWEEP_TRIALS)), f"versions after the sweep: {store.versions()}")
    trials = store.versions()[2:]
    sweeps = [store.manifest(v)["sweep"] for v in trials]
    check(sorted(s["trial"] for s in sweeps) == list(range(SWEEP_TRIALS)) and len({s["id"] for s in sweeps}) == 1,
          f"sweep sections: {sweeps}")
    run_job(ground, find(objects, "Job", f"{FULLNAME}-promote"), timeout=120)
    labels = store.labels()
    check(labels.get("labels", {}).get("canary") in trials and labels.get("canary_percent") == 50,
          f"labels.json: {labels}")
    board = store.leaderboard(sweeps[0]["id"]) or {}
    check(sorted(row["version"] for row in board.get("trials", [])) == trials,
          f"the sweep's leaderboard sweeps/{sweeps[0]['id']}.json: {board or 'none'}")
    print(f"  sweep {sweeps[0]['id']}: versions {trials}, in its leaderboard; canary -> {labels['labels']['canary']} "
          "at 50 %")

    canary, answers = labels["labels"]["canary"], {}

    def canary_answers() -> bool:
        answers.clear()  # X-Model-Label -> the versions that answered under it
        for _ in range(40):
            answer = requests.post(url + "/v1/predict", json={"instances": [[0] * 784]}, timeout=5)
            answers.setdefault(answer.headers.get("X-Model-Label"), set()).add(answer.json()["model"]["version"])
        return {"canary", None} <= set(answers)
    wait_for(canary_answers, 30, "the service to send a share to the canary")
    check(answers["canary"] == {canary}, f"the canary's share answered by versions {answers['canary']}, not {canary}")
    print(f"  the running pod sends a share of requests to the canary, version {canary}; the rest to versions "
          f"{sorted(answers[None])}")

    step("security: uid 10001, read-only root filesystem")
    uid = podman("exec", server_container, "id", "-u").stdout.strip()
    check(uid == "10001", f"the service runs as uid {uid}")
    write = podman("exec", server_container, "touch", "/written-by-chart-run", check=False)
    check(write.returncode != 0 and "Read-only file system" in write.stderr, f"writing to / was not refused: {write}")
    print(f"  service: uid {uid}; touch /: {write.stderr.strip()}")


if __name__ == "__main__":
    sys.exit(main())
