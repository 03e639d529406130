"""Model repositories (mnist_artifact.repository): a local directory and an S3 bucket on a real S3
server over HTTP (tests/s3_server.py) pass the same tests: publish, list, load, concurrent
publishers and promoters, interrupted publishes, corrupted objects, and clear errors."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from artifact_files import random_arrays
from mnist_artifact import ArtifactError, format
from mnist_artifact.repository import LocalRepository, RepositoryError, S3Location, open_repository, parse_location
from mnist_trainer import MLP


def _arrays(sizes=(784, 8, 10), seed=0):
    return random_arrays(sizes, seed)


def _manifest(sizes=(784, 8, 10), **sections):
    return format.build_manifest("m", _arrays(sizes), scale=1 / 255, mean=0.1307, std=0.3081, **sections)


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path) -> str:
    """Where a repository lives: a directory, or a fresh bucket on the loopback S3 server."""
    return str(tmp_path / "models") if request.param == "local" else request.getfixturevalue("s3_uri")


@pytest.fixture
def repository(location):
    return open_repository(parse_location("MODEL_DIR", location))


def test_publish_then_load_round_trips(repository):
    arrays = _arrays()
    assert repository.publish("m", arrays, _manifest()) == 1
    manifest, loaded = repository.load("m", 1)
    assert manifest["version"] == 1 and manifest["name"] == "m"
    assert all(np.array_equal(arrays[k], loaded[k]) for k in arrays)
    assert repository.read_manifest("m", 1) == manifest
    assert repository.versions("m") == [1] and repository.resolve("m") == 1
    with pytest.raises(ArtifactError, match="has no version 7"):
        repository.resolve("m", 7)


def test_versions_increase_and_are_never_overwritten(repository):
    for seed in range(3):
        repository.publish("m", _arrays(seed=seed), _manifest())
    assert repository.versions("m") == [1, 2, 3]
    assert np.array_equal(repository.load("m", 1)[1]["W1"], _arrays(seed=0)["W1"])
    assert repository.publish("m", _arrays(), _manifest()) == 4
    assert repository.versions("other") == []


def test_extras_are_published_with_the_version(repository, location, tmp_path):
    def write_report(directory):
        (directory / "report").mkdir()
        (directory / "report" / "notes.txt").write_text("hello")

    version = repository.publish("m", _arrays(), _manifest(), write_report)
    assert repository.location("m", version).endswith("/m/1")
    if isinstance(repository, LocalRepository):
        assert (tmp_path / "models" / "m" / "1" / "report" / "notes.txt").read_text() == "hello"


def _publish_many(location, env, seed, n):
    os.environ.update(env)
    repository = open_repository(parse_location("MODEL_DIR", location))
    for i in range(n):
        repository.publish("m", _arrays(seed=seed * 100 + i), _manifest(writer=[seed, i]))


def test_concurrent_publishers_get_distinct_versions(location):
    ctx = multiprocessing.get_context("spawn")
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    workers = [ctx.Process(target=_publish_many, args=(location, env, s, 6)) for s in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    repository = open_repository(parse_location("MODEL_DIR", location))
    assert repository.versions("m") == list(range(1, 19))
    writers = set()
    for v in range(1, 19):
        manifest, arrays = repository.load("m", v)
        seed, i = manifest["writer"]
        assert manifest["version"] == v
        assert np.array_equal(arrays["W1"], _arrays(seed=seed * 100 + i)["W1"])  # content matches manifest
        writers.add((seed, i))
    assert len(writers) == 18


KILLED_PUBLISHER = """
import sys, time
import numpy as np
from mnist_artifact.repository import open_repository, parse_location
from mnist_artifact import format
def stall(directory):
    print("writing", flush=True)
    time.sleep(60)
arrays = {"W1": np.zeros((784, 10), np.float32), "b1": np.zeros(10, np.float32)}
manifest = format.build_manifest("m", arrays, scale=1 / 255, mean=0.0, std=1.0)
open_repository(parse_location("MODEL_DIR", sys.argv[1])).publish("m", arrays, manifest, stall)
"""


def test_a_publisher_killed_mid_publish_leaves_no_version(repository, location):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PUBLISHER, location], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # weights staged, nothing visible yet
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert repository.versions("m") == []
    assert repository.publish("m", _arrays(), _manifest()) >= 1
    assert len(repository.versions("m")) == 1


def test_an_upload_that_fails_midway_is_never_a_version(s3_uri, s3_server):
    """The weights are sent, then the store goes away before the manifest: no version, ever."""
    repository = open_repository(parse_location("MODEL_DIR", s3_uri))
    sent = []

    def stop_after_weights(request, **_):
        sent.append(request.url)
        if "manifest.json" in request.url:
            s3_server.stop()

    repository.client.meta.events.register("before-send.s3.PutObject", stop_after_weights)
    try:
        with pytest.raises(RepositoryError, match="upload: cannot reach the store"):
            repository.publish("m", _arrays(), _manifest())
    finally:
        s3_server.start()
    assert any("weights.npz" in url for url in sent)
    fresh = open_repository(parse_location("MODEL_DIR", s3_uri))
    assert fresh.versions("m") == []
    assert fresh.publish("m", _arrays(), _manifest()) == 2  # the claimed number is never reused


def test_a_corrupted_object_is_refused(repository, location, s3_server, tmp_path):
    repository.publish("m", _arrays(), _manifest())
    key = "m/1/weights.npz"
    if isinstance(repository, LocalRepository):
        path = tmp_path / "models" / key
        path.write_bytes(b"0" + path.read_bytes()[1:])
    else:
        s3 = s3_server.client()
        location_ = parse_location("MODEL_DIR", location)
        full = f"{location_.prefix}/{key}"
        body = s3.get_object(Bucket=location_.bucket, Key=full)["Body"].read()
        s3.put_object(Bucket=location_.bucket, Key=full, Body=b"0" + body[1:])
    with pytest.raises(ArtifactError, match=r"m/1/weights.npz: sha256 does not match the manifest"):
        repository.load("m", 1)


def test_a_damaged_cached_copy_is_downloaded_again(s3_uri, tmp_path):
    cache = tmp_path / "cache"
    repository = open_repository(parse_location("MODEL_DIR", s3_uri), cache_dir=cache)
    repository.publish("m", _arrays(), _manifest())
    repository.load("m", 1)
    [weights] = cache.glob("m/*/1/weights.npz")
    weights.write_bytes(b"damaged")
    assert np.array_equal(repository.load("m", 1)[1]["W1"], _arrays()["W1"])


def test_the_cache_keeps_a_bounded_number_of_versions(s3_uri, tmp_path):
    cache = tmp_path / "cache"
    repository = open_repository(parse_location("MODEL_DIR", s3_uri), cache_dir=cache)
    repository.cache_versions = 2
    for seed in range(4):
        repository.publish("m", _arrays(seed=seed), _manifest())
        repository.load("m", seed + 1)
    assert sorted(p.name for p in cache.glob("m/*/*")) == ["3", "4"]


def _load_repeatedly(uri, env, cache, versions, rounds):
    os.environ.update(env)
    repository = open_repository(parse_location("MODEL_DIR", uri), cache_dir=cache)
    repository.cache_versions = 2
    for _ in range(rounds):
        for version in versions:
            repository.load("m", version)


def test_workers_sharing_a_cache_load_the_same_versions_at_once(s3_uri, tmp_path):
    """Each gunicorn worker (and gRPC process) has its own repository on one MODEL_CACHE_DIR: their
    downloads, renames and evictions of the same versions race, and every load must still succeed."""
    cache = tmp_path / "cache"
    publisher = open_repository(parse_location("MODEL_DIR", s3_uri))
    for seed in range(4):
        publisher.publish("m", _arrays(seed=seed), _manifest())
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_load_repeatedly, args=(s3_uri, env, cache, [1, 2, 3, 4][::step], 6))
               for step in (1, -1, 1, -1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]


def test_a_cache_that_cannot_be_written_is_a_repository_error(s3_uri, tmp_path):
    """A full or read-only disk is counted and retried like a store failure, never a traceback."""
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("")
    repository = open_repository(parse_location("MODEL_DIR", s3_uri), cache_dir=not_a_directory)
    repository.publish("m", _arrays(), _manifest())
    with pytest.raises(RepositoryError, match=f"m/1: download: cannot write {not_a_directory}") as raised:
        repository.load("m", 1)
    assert raised.value.operation == "download"


def test_concurrent_promotions_lose_no_label(repository):
    for seed in range(4):
        repository.publish("m", _arrays(seed=seed), _manifest())

    def point(i):
        repository.update_labels("m", lambda labels: format.VersionLabels(
            {**labels.versions, f"l{i}": 1 + i % 4}, labels.canary_percent))

    threads = [threading.Thread(target=point, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert repository.read_labels("m").versions == {f"l{i}": 1 + i % 4 for i in range(12)}


def test_a_promotion_that_keeps_losing_fails_clearly(s3_uri, monkeypatch):
    from mnist_artifact.repository import s3

    repository = open_repository(parse_location("MODEL_DIR", s3_uri))
    monkeypatch.setattr(s3, "LABEL_ATTEMPTS", 2)

    other = open_repository(parse_location("MODEL_DIR", s3_uri))

    def meddle(labels):  # another promoter writes between every read and write
        other.update_labels("m", lambda current: format.VersionLabels({"x": current.versions.get("x", 0) + 1}))
        return format.VersionLabels({"stable": 1})

    with pytest.raises(ArtifactError, match="changed 2 times .* nothing was changed: run it again"):
        repository.update_labels("m", meddle)
    assert repository.read_labels("m").versions == {"x": 2}


def test_wrong_credentials_name_the_bucket(s3_uri, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKEY")
    bucket = parse_location("MODEL_DIR", s3_uri).bucket
    with pytest.raises(RepositoryError, match=f"access to bucket '{bucket}' denied"):
        open_repository(parse_location("MODEL_DIR", s3_uri)).versions("m")


def test_a_missing_bucket_is_named(s3_uri):
    with pytest.raises(RepositoryError, match="bucket 'no-such-bucket' does not exist"):
        open_repository(parse_location("MODEL_DIR", "s3://no-such-bucket/models")).versions("m")


def test_an_unreachable_store_is_a_repository_error(s3_uri, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # discard: nothing listens
    with pytest.raises(RepositoryError, match="list: cannot reach the store") as raised:
        open_repository(parse_location("MODEL_DIR", s3_uri)).versions("m")
    assert raised.value.operation == "list"


@pytest.mark.parametrize("text, message", [
    ("gs://bucket/models", "unsupported scheme 'gs'"),
    ("az://container/models", "unsupported scheme 'az'"),
    ("s3:/bucket/models", "unsupported scheme 's3'"),
    ("file:///models", "unsupported scheme 'file'"),
    ("s3://Bad_Bucket/models", "is not a bucket name"),
    ("s3://", "is not a bucket name"),
])
def test_unsupported_locations_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_location("MODEL_DIR", text)


def test_locations_parse():
    assert parse_location("MODEL_DIR", "s3://models/a/b/") == S3Location("models", "a/b")
    assert str(parse_location("MODEL_DIR", "s3://models")) == "s3://models"
    assert str(parse_location("MODEL_DIR", "models/local")) == "models/local"


def test_mlp_round_trips_through_a_repository(repository):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 28, 28)), rng.integers(0, 10, 64)
    model = MLP(hidden=(16, 8), epochs=1, batch_size=16).fit(x, y)
    version = repository.publish("m", model.arrays(), _manifest((784, 16, 8, 10)))
    loaded = MLP.from_verified(*repository.load("m", version))
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
