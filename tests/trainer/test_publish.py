import multiprocessing
import os
import signal
import subprocess
import sys

import numpy as np

from artifact_files import random_arrays
from mnist_artifact import format
from mnist_artifact.format import list_versions
from mnist_trainer import MLP
from mnist_trainer.publish import latest_valid, publish


def _arrays(sizes=(784, 8, 10), seed=0):
    return random_arrays(sizes, seed)


def _manifest(sizes=(784, 8, 10)):
    return format.build_manifest("m", _arrays(sizes), scale=1 / 255, mean=0.1307, std=0.3081)


def test_publish_then_load_round_trips(tmp_path):
    arrays = _arrays()
    version, path = publish(tmp_path, "m", arrays, _manifest())
    assert (version, path) == (1, tmp_path / "m" / "1")
    manifest, loaded = format.load(path)
    assert manifest["version"] == 1
    assert manifest["weights"]["sha256"] == format.sha256_file(path / "weights.npz")
    assert all(np.array_equal(arrays[k], loaded[k]) for k in arrays)
    # Plain arrays only: loadable without pickle.
    with np.load(path / "weights.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["W1", "W2", "b1", "b2"]


def test_versions_increase_and_are_never_overwritten(tmp_path):
    for seed in range(3):
        publish(tmp_path, "m", _arrays(seed=seed), _manifest())
    assert list_versions(tmp_path, "m") == [1, 2, 3]
    first = format.load(tmp_path / "m" / "1")[1]
    assert np.array_equal(first["W1"], _arrays(seed=0)["W1"])
    (tmp_path / "m" / ".publishing-leftover").mkdir()  # non-numeric names are not versions
    (tmp_path / "m" / "notes").mkdir()
    assert list_versions(tmp_path, "m") == [1, 2, 3]
    assert format.resolve_version(tmp_path, "m") == tmp_path / "m" / "3"
    assert publish(tmp_path, "m", _arrays(), _manifest())[0] == 4


def test_latest_valid_skips_invalid_versions(tmp_path):
    assert latest_valid(tmp_path, "m") is None
    publish(tmp_path, "m", _arrays(), _manifest())
    _, broken = publish(tmp_path, "m", _arrays(seed=1), _manifest())
    (broken / "weights.npz").unlink()
    assert latest_valid(tmp_path, "m")["version"] == 1


def _publish_many(model_dir, seed, n):
    for i in range(n):
        publish(model_dir, "m", _arrays(seed=seed * 100 + i), {**_manifest(), "writer": [seed, i]})


def test_concurrent_publishers_never_collide(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_publish_many, args=(tmp_path, s, 8)) for s in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert list_versions(tmp_path, "m") == list(range(1, 25))
    writers = set()
    for v in range(1, 25):
        manifest, arrays = format.load(tmp_path / "m" / str(v))
        assert manifest["version"] == v
        seed, i = manifest["writer"]
        assert np.array_equal(arrays["W1"], _arrays(seed=seed * 100 + i)["W1"])  # content matches manifest
        writers.add(tuple(manifest["writer"]))
    assert len(writers) == 24
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


KILLED_PUBLISHER = """
import sys, time
import numpy as np
from mnist_trainer.publish import publish
def stall(directory):
    print("writing", flush=True)
    time.sleep(60)
publish(sys.argv[1], "m", {"W1": np.zeros((784, 10), np.float32), "b1": np.zeros(10, np.float32)},
        {"format_version": 1, "weights": {"file": "weights.npz"}}, stall)
"""


def test_a_publisher_killed_mid_publish_leaves_no_visible_version(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PUBLISHER, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"  # weights are on disk, not yet renamed
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert list_versions(tmp_path, "m") == []
    staging = [p.name for p in (tmp_path / "m").iterdir()]
    assert len(staging) == 1 and staging[0].startswith(".publishing-")
    # The next publish is unaffected by the leftover staging directory.
    assert publish(tmp_path, "m", _arrays(), _manifest())[0] == 1


def test_mlp_round_trips_through_an_artifact(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 28, 28)), rng.integers(0, 10, 64)
    model = MLP(hidden=(16, 8), epochs=1, batch_size=16).fit(x, y)
    _, path = publish(tmp_path, "m", model.arrays(), _manifest((784, 16, 8, 10)))
    loaded = MLP.from_artifact(path)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert loaded.manifest["version"] == 1
