"""`mnist-train promote`: labels point only at verified versions, and labels.json is replaced whole."""

import json
import threading

import pytest
from trainer_helpers import run

from artifact_files import random_arrays
from mnist_artifact import format
from mnist_artifact.repository import LocalRepository
from mnist_trainer.promote import best_of_sweep, remove_label, set_label


def _publish(model_dir, validation_accuracy, sweep_id=None, trial=None):
    arrays = random_arrays((784, 8, 10))
    manifest = format.build_manifest("mnist", arrays, scale=1 / 255, mean=0.1307, std=0.3081,
                                     metrics={"validation": {"accuracy": validation_accuracy, "loss": 1.0}})
    if sweep_id:
        manifest["sweep"] = {"id": sweep_id, "trial": trial, "parameters": {"lr": 0.1 * (trial + 1)}}
    return LocalRepository(model_dir).publish("mnist", arrays, manifest)


@pytest.fixture
def models(tmp_path):
    for accuracy in (0.90, 0.95, 0.93):
        _publish(tmp_path, accuracy, "s1", trial=len(format.list_versions(tmp_path, "mnist")))
    _publish(tmp_path, 0.99)  # better, but not in the sweep
    return tmp_path


def labels_file(models):
    return models / "mnist" / format.LABELS_FILE


def test_promote_sets_moves_and_removes_labels(models):
    result = run("promote", "--model-dir", models, "--label", "stable", "--version", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(labels_file(models).read_text())
    canary = run("promote", "--model-dir", models, "--label", "canary", "--version", "2", "--percent", "12.5")
    assert canary.returncode == 0, canary.stderr
    assert format.read_labels(models, "mnist") == format.VersionLabels({"stable": 1, "canary": 2}, 12.5)
    assert run("promote", "--model-dir", models, "--label", "stable", "--version", "2").returncode == 0
    assert run("promote", "--model-dir", models, "--remove", "canary").returncode == 0
    assert format.read_labels(models, "mnist") == format.VersionLabels({"stable": 2}, 0.0)
    assert not [p for p in (models / "mnist").iterdir() if p.name.startswith(format.TEMP_PREFIX)]


def test_best_of_a_sweep_is_chosen_by_validation_accuracy(models):
    assert best_of_sweep(LocalRepository(models), "mnist", "s1") == 2  # 0.95; version 4 (0.99) is not in the sweep
    result = run("promote", "--model-dir", models, "--label", "canary", "--best", "s1", "--percent", "5")
    assert result.returncode == 0, result.stderr
    assert format.read_labels(models, "mnist").versions == {"canary": 2}
    leaderboard_empty = run("promote", "--model-dir", models, "--label", "stable", "--best", "nope")
    assert leaderboard_empty.returncode == 4 and "sweep 'nope' has no valid published trial" in leaderboard_empty.stderr


def test_a_corrupt_trial_is_no_candidate(models):
    weights = models / "mnist" / "2" / format.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    assert best_of_sweep(LocalRepository(models), "mnist", "s1") == 3


@pytest.mark.parametrize("args, code, message", [
    (["--label", "stable", "--version", "9"], 4, "has no version 9"),
    (["--label", "canary", "--version", "1"], 2, "a canary needs --percent"),
    (["--label", "canary", "--version", "1", "--percent", "100"], 2, "between 0 and 100"),
    (["--label", "stable", "--version", "1", "--percent", "5"], 2, "for the 'canary' label only"),
    (["--label", "Stable!", "--version", "1"], 2, "must match"),
    (["--label", "stable"], 2, "needs --version N or --best SWEEP_ID"),
    (["--remove", "beta"], 4, "has no label 'beta'"),
    (["--remove", "stable", "--version", "2"], 2, "takes no --version, --best or --percent"),
])
def test_refused_promotions_change_nothing(models, args, code, message):
    set_label(LocalRepository(models), "mnist", "stable", 1)
    before = labels_file(models).read_bytes()
    result = run("promote", "--model-dir", models, *args)
    assert result.returncode == code and message in result.stderr
    assert "Traceback" not in result.stderr and labels_file(models).read_bytes() == before


def test_a_corrupt_version_cannot_be_promoted(models):
    weights = models / "mnist" / "3" / format.WEIGHTS
    weights.write_bytes(b"0" + weights.read_bytes()[1:])
    result = run("promote", "--model-dir", models, "--label", "stable", "--version", "3")
    assert result.returncode == 4 and "sha256 does not match" in result.stderr
    assert not labels_file(models).exists()


def test_promoters_at_once_lose_no_label(models):
    """Each promote reads, changes and rewrites the file under a lock: no update is lost."""
    repository = LocalRepository(models)
    threads = [threading.Thread(target=set_label, args=(repository, "mnist", f"l{i}", 1 + i % 4)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert format.read_labels(models, "mnist").versions == {f"l{i}": 1 + i % 4 for i in range(20)}
    remove_label(LocalRepository(models), "mnist", "l0")
    assert "l0" not in format.read_labels(models, "mnist").versions
