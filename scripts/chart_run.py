"""Play what the Helm chart renders with `podman kube play`, in the order a cluster runs it.

podman runs Pods, Deployments, PersistentVolumeClaims (as named volumes), emptyDirs, ConfigMaps,
security contexts, probes and host ports, but has no Job kind and no Services: a Job is played as
its pod template, retried as `backoffLimit` says (and `backoffLimitPerIndex`, one pod per index with
JOB_COMPLETION_INDEX, for an Indexed Job), and `$(VAR)` in its arguments expanded as the kubelet
does; the `helm test` pod reaches the service pod by its IP, as a Service would route it. What podman
cannot play (Service, HPA, PDB, NetworkPolicy, Ingress, ServiceMonitor) stays covered by
`scripts/check-chart`'s schema validation. Run by `scripts/chart-run`, which builds the images first.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

from mnist_trainer import data

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "mnist-mlp"
RELEASE = "chartrun"
FULLNAME = f"{RELEASE}-mnist-mlp"
DATA_VOLUME = f"{RELEASE}-mnist"
SWEEP_TRIALS = 2
TRAINER_IMAGE = "docker.io/library/mnist-mlp-trainer:latest"  # as `docker compose build` tags it


def values() -> list[str]:
    """A local run: the images `docker compose build` made, a claim podman provides (the chart's
    own PVC), MNIST from a named volume, every trainer Job on, the fast preset."""
    return [
        "--set", "image.repository=docker.io/library/mnist-mlp-service", "--set", "image.tag=latest",
        "--set", "training.image.repository=docker.io/library/mnist-mlp-trainer", "--set", "training.image.tag=latest",
        "--set", "replicaCount=1", "--set", "preStopSleepSeconds=0", "--set", "model.pollSeconds=1",
        "--set", "server.workers=2",
        "--set", "training.preset=fast", "--set", f"training.data.existingClaim={DATA_VOLUME}",
        "--set", "training.cronjob.enabled=true",
        "--set", "sweep.enabled=true", "--set", f"sweep.trials={SWEEP_TRIALS}", "--set", "sweep.parallelism=2",
        "--set", "sweep.promote.label=canary", "--set", "sweep.promote.canaryPercent=50",
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

    def __init__(self, work: Path):
        self.work, self.pods = work, []
        self.volumes_before = set(podman("volume", "ls", "-q").stdout.split())

    def play(self, name: str, *objects: dict, configmaps: list[dict] = ()) -> str:
        """`podman kube play` these objects; returns the name of the pod it made."""
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


def container_of(pod: str, container: str) -> str:
    return f"{pod}-{container}"


def wait_exit(name: str, timeout: float) -> int:
    result = subprocess.run(["podman", "wait", name], capture_output=True, text=True, timeout=timeout)
    check(result.returncode == 0, f"podman wait {name}: {result.stderr.strip()}")
    return int(result.stdout.strip().splitlines()[-1])


def logs_tail(name: str, lines: int = 15) -> str:
    return podman("logs", "--tail", str(lines), name, check=False).stdout + podman(
        "logs", "--tail", str(lines), name, check=False).stderr


# -- the rendered chart --------------------------------------------------------------------------

def render() -> list[dict]:
    result = subprocess.run(["helm", "template", RELEASE, str(CHART), "--kube-version", "1.35.0",
                             *values()], capture_output=True, text=True)
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
    """An httpGet probe as the health check podman runs. The kubelet makes httpGet probes itself;
    podman turns them into `curl http://localhost:<port>` run inside the container (the service
    image has no curl, and the named port `http` became port 0), joins an exec probe's words into a
    shell command, and kills the container when the check fails `failureThreshold` times: so the
    same GET, in Python, quoted for that shell, and a threshold that never kills (readiness, unlike
    liveness, never restarts a pod)."""
    get = probe["httpGet"]
    port = get["port"]
    if isinstance(port, str):  # a named port, resolved as the kubelet resolves it
        port = next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
    script = (f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{get['path']}', "
              f"timeout={probe.get('timeoutSeconds', 1)})")  # raises, so exits 1, unless 2xx
    return {"exec": {"command": ["python", "-c", f'"{script}"']}, "periodSeconds": probe.get("periodSeconds", 10),
            "timeoutSeconds": probe.get("timeoutSeconds", 1), "failureThreshold": 10_000}


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


# -- the run -------------------------------------------------------------------------------------

class Steps:
    def __init__(self):
        self.started = time.monotonic()

    def __call__(self, title: str) -> None:
        print(f"\n== {title} ({time.monotonic() - self.started:.0f}s)", flush=True)


def models_path(claim: str) -> Path:
    mountpoint = podman("volume", "inspect", claim, "--format", "{{.Mountpoint}}").stdout.strip()
    return Path(mountpoint) / "mnist"


def versions(path: Path) -> list[int]:
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []


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
    parser.add_argument("--port", type=int, default=18900, help="host port of the service pod")
    parser.add_argument("--data", default=os.environ.get("MNIST_DIR"), help="MNIST folder (MNIST_DIR)")
    args = parser.parse_args()
    if not args.data:
        parser.error("set MNIST_DIR or --data to a folder with the MNIST files")
    step = Steps()
    with tempfile.TemporaryDirectory(prefix="chart-run-") as work:
        ground = Playground(Path(work))
        try:
            play_everything(ground, step, args.port, Path(args.data))
        except Failure as e:
            print(f"\nchart-run: FAIL: {e}", file=sys.stderr)
            return 1
        finally:
            step("tear down: pods and volumes")
            ground.teardown()
    print(f"\nchart-run: OK in {time.monotonic() - step.started:.0f}s")
    return 0


def play_everything(ground: Playground, step: Steps, port: int, mnist_dir: Path) -> None:
    step("helm template")
    objects = render()
    print("  " + ", ".join(sorted({f"{o['kind']}" for o in objects})))

    step("MNIST into a volume (the training.data.existingClaim)")
    podman("volume", "create", DATA_VOLUME)
    podman("run", "--rm", "--user", "0", "-v", f"{DATA_VOLUME}:/data", "-v", f"{mnist_dir}:/src:ro",
           "--entrypoint", "sh", TRAINER_IMAGE, "-c", "cp /src/*-ubyte* /data/")

    step("the models PersistentVolumeClaim")
    claim = find(objects, "PersistentVolumeClaim", f"{FULLNAME}-models")
    claim_name = claim["metadata"]["name"]
    path = ground.work / "claim.yaml"
    path.write_text(yaml.safe_dump(claim))
    podman("kube", "play", str(path))
    models = models_path(claim_name)

    step("the training hook Job (its pod template as a pod)")
    run_job(ground, find(objects, "Job", f"{FULLNAME}-train"), timeout=600)
    check(versions(models) == [1], f"versions after training: {versions(models)}")
    print("  published version 1")

    step("the Deployment: ready through its own probes, serving on a host port")
    deployment = find(objects, "Deployment", FULLNAME)
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    server["ports"][0]["hostPort"] = port
    probes = {kind: server.pop(kind) for kind in ("startupProbe", "livenessProbe", "readinessProbe") if kind in server}
    check(set(probes) == {"startupProbe", "livenessProbe", "readinessProbe"}, f"the server's probes: {sorted(probes)}")
    server["livenessProbe"] = podman_probe(probes["readinessProbe"], server)  # the health check podman runs
    server_pod = ground.play(deployment["metadata"]["name"], deployment)
    server_container = container_of(server_pod, server["name"])
    wait_for(lambda: podman("inspect", server_container, "--format", "{{.State.Health.Status}}").stdout.strip()
             == "healthy", 90, "the readiness probe to pass")
    for kind in ("startupProbe", "livenessProbe"):
        check(probe_passes(server_container, podman_probe(probes[kind], server)), f"the {kind} fails")
    print(f"  {server_container}: ready (the readiness probe on {probes['readinessProbe']['httpGet']['path']} "
          "passes); the startup and liveness probes pass")
    url = f"http://127.0.0.1:{port}"

    step("a prediction of a real MNIST test digit, and /metrics")
    test = data.load(mnist_dir).test
    answer = requests.post(url + "/v1/predict", json={"instances": [test.images[0].reshape(-1).tolist()]}, timeout=10)
    check(answer.status_code == 200, f"POST /v1/predict: {answer.status_code} {answer.text[:200]}")
    predicted = answer.json()["predictions"][0]["label"]
    check(predicted == int(test.labels[0]), f"digit {test.labels[0]} predicted as {predicted}")
    print(f"  label {test.labels[0]}, predicted {predicted} by version {answer.json()['model']['version']}")
    metrics = requests.get(url + "/metrics", timeout=5).text
    check('mnist_http_requests_total{' in metrics and 'model_version="1"' in metrics, "/metrics lacks the request")

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
    check(versions(models) == [1, 2], f"versions after retraining: {versions(models)}")
    wait_for(lambda: requests.get(url + "/v1/models", timeout=2).json()["models"][0]["serving_version"] == 2, 30,
             "the service to serve version 2")
    print("  published version 2; the service swapped it in")

    step(f"the sweep's Indexed Job ({SWEEP_TRIALS} pods), then the promotion Job")
    configmap = find(objects, "ConfigMap", f"{FULLNAME}-sweep-space")
    run_job(ground, find(objects, "Job", f"{FULLNAME}-sweep"), timeout=600, configmaps=[configmap])
    trials = versions(models)[2:]
    check(len(trials) == SWEEP_TRIALS, f"versions after the sweep: {versions(models)}")
    sweeps = [json.loads((models / str(v) / "manifest.json").read_text())["sweep"] for v in trials]
    check(sorted(s["trial"] for s in sweeps) == list(range(SWEEP_TRIALS)) and len({s["id"] for s in sweeps}) == 1,
          f"sweep sections: {sweeps}")
    run_job(ground, find(objects, "Job", f"{FULLNAME}-promote"), timeout=120)
    labels = json.loads((models / "labels.json").read_text())
    check(labels["labels"].get("canary") in trials and labels["canary_percent"] == 50, f"labels.json: {labels}")
    print(f"  sweep {sweeps[0]['id']}: versions {trials}; canary -> {labels['labels']['canary']} at 50 %")

    def answered_by_canary() -> set:
        return {requests.post(url + "/v1/predict", json={"instances": [[0] * 784]}, timeout=5).headers.get(
            "X-Model-Label") for _ in range(40)}
    wait_for(lambda: answered_by_canary() >= {"canary", None}, 30, "the service to send a share to the canary")
    print("  the running pod sends a share of requests to the canary")

    step("security: uid 10001, read-only root filesystem")
    uid = podman("exec", server_container, "id", "-u").stdout.strip()
    check(uid == "10001", f"the service runs as uid {uid}")
    write = podman("exec", server_container, "touch", "/written-by-chart-run", check=False)
    check(write.returncode != 0 and "Read-only file system" in write.stderr, f"writing to / was not refused: {write}")
    print(f"  service: uid {uid}; touch /: {write.stderr.strip()}")


if __name__ == "__main__":
    sys.exit(main())
