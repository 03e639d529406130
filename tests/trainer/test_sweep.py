"""`mnist-train sweep`: search spaces, and real sweeps of tiny trials publishing real versions."""

import json
import os
import signal
import subprocess
import sys

import pytest
from trainer_helpers import run

from idx_files import write_idx_dataset
from mnist_artifact import format
from mnist_trainer.sweep import Space, SpaceError

TINY = {"hidden": [[8], [16]], "epochs": [1], "batch_size": [32]}


def space_file(tmp_path, text: str, name: str = "space.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mnist")
    write_idx_dataset(directory, n_train=200, n_test=50, seed=1)
    return directory


def test_a_grid_runs_every_combination_in_a_fixed_order(tmp_path):
    text = 'method = "grid"\n[parameters]\nlr = [0.1, 0.2]\nhidden = [[8], [16, 8]]\n'
    space = Space.load(space_file(tmp_path, text))
    assert space.size() == 4 and space.size(3) == 3
    assert [space.trial(i) for i in range(4)] == [
        {"hidden": [8], "lr": 0.1}, {"hidden": [8], "lr": 0.2}, {"hidden": [16, 8], "lr": 0.1},
        {"hidden": [16, 8], "lr": 0.2}]
    assert space.config(space.trial(2)).hidden == (16, 8)


def test_random_trials_depend_only_on_the_space_and_the_index(tmp_path):
    text = ('trials = 50\nseed = 3\n[parameters]\nlr = { min = 0.001, max = 0.1, log = true }\n'
            'epochs = { min = 2, max = 4 }\nlabel_smoothing = { min = 0.0, max = 0.2 }\noptimizer = ["sgd", "adam"]\n')
    space, again = Space.load(space_file(tmp_path, text)), Space.load(space_file(tmp_path, text, "copy.toml"))
    trials = [space.trial(i) for i in range(50)]
    assert trials == [again.trial(i) for i in range(50)]  # another process, another pod: the same trial
    assert all(0.001 <= t["lr"] <= 0.1 and t["epochs"] in (2, 3, 4) and 0 <= t["label_smoothing"] <= 0.2
               for t in trials)
    assert {t["epochs"] for t in trials} == {2, 3, 4} and {t["optimizer"] for t in trials} == {"sgd", "adam"}
    assert sum(t["lr"] < 0.01 for t in trials) > 10  # log-uniform: a decade each side of 0.01 is as likely
    other_seed = Space.load(space_file(tmp_path, text.replace("seed = 3", "seed = 4"), "s4.toml"))
    assert [other_seed.trial(i) for i in range(5)] != trials[:5]


def test_json_spaces_read_like_toml(tmp_path):
    path = space_file(tmp_path, json.dumps({"preset": "fast", "method": "grid", "parameters": {"lr": [0.1]}}),
                      "space.json")
    assert Space.load(path).trial(0) == {"lr": 0.1}


@pytest.mark.parametrize("text, message", [
    ('[parameters]\nlearning_rate = [0.1]\n', "unknown parameter 'learning_rate'"),
    ('method = "grid"\n[parameters]\nlr = { min = 0.1, max = 0.2 }\n', "a grid needs a list"),
    ('[parameters]\nlr = { min = 0.2, max = 0.1 }\n', "a < b"),
    ('[parameters]\nlr = { min = 0.0, max = 0.1, log = true }\n', "log range needs min > 0"),
    ('[parameters]\nlr = []\n', "non-empty list"),
    ('preset = "huge"\n[parameters]\nlr = [0.1]\n', "preset must be one of"),
    ('trials = 0\n[parameters]\nlr = [0.1]\n', "trials must be a positive integer"),
    ('colour = "red"\n[parameters]\nlr = [0.1]\n', "unknown keys ['colour']"),
    ('[parameters\nlr = [0.1]\n', "not valid TOML"),
])
def test_bad_spaces_are_refused_with_one_line(tmp_path, text, message):
    with pytest.raises(SpaceError, match=message.replace("[", r"\[").replace("(", r"\(")):
        Space.load(space_file(tmp_path, text))


def test_the_shipped_spaces_are_valid():
    for name in ("example.toml", "large.toml"):
        space = Space.load(os.path.join(os.path.dirname(__file__), "../../trainer/sweeps", name))
        for index in range(space.size()):
            space.config(space.trial(index))  # every trial's hyperparameters are in range


def _toml(parameters: dict, **top) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()] + ["[parameters]"]
    return "\n".join(lines + [f"{k} = {json.dumps(v)}" for k, v in parameters.items()]) + "\n"


def test_a_parallel_sweep_publishes_candidates_and_a_leaderboard(tmp_path, tiny_data):
    """Three trials, two at a time; the third has an invalid dropout and fails alone: exit code 1."""
    space = space_file(tmp_path, _toml({**TINY, "dropout": [0.0, 1.5]}, preset="fast", method="grid", trials=1))
    models = tmp_path / "models"
    result = run("sweep", "--space", space, "--data", tiny_data, "--model-dir", models, "--val-size", "40",
                 "--parallel", "2", "--trials", "3", "--sweep-id", "s1")
    assert result.returncode == 1, result.stderr  # one failed trial
    assert "dropout must be in [0, 1)" in result.stderr
    assert format.list_versions(models, "mnist") == [1, 2]
    trials = {}
    for version in (1, 2):
        manifest = format.load(models / "mnist" / str(version))[0]
        assert manifest["sweep"]["id"] == "s1" and manifest["sweep"]["trials"] == 3
        assert manifest["profile"]["samples"] == 40  # trials get a reference profile too (format.load checked it)
        trials[manifest["sweep"]["trial"]] = manifest
    assert sorted(trials) == [0, 1]  # trial 2 (dropout 1.5) published nothing
    assert trials[1]["sweep"]["parameters"] == {"hidden": [16], "epochs": 1, "batch_size": 32, "dropout": 0.0}
    assert trials[1]["training"]["hyperparameters"]["hidden"] == [16]
    leaderboard = json.loads((models / "mnist" / "sweeps" / "s1.json").read_text())
    assert leaderboard["failed_trials"] == [2] and len(leaderboard["trials"]) == 2
    accuracies = [row["validation_accuracy"] for row in leaderboard["trials"]]
    assert accuracies == sorted(accuracies, reverse=True)
    assert leaderboard["trials"][0]["validation_accuracy"] == trials[leaderboard["trials"][0]["trial"]][
        "metrics"]["validation"]["accuracy"]
    table = result.stdout.splitlines()
    assert table[0].split()[:4] == ["rank", "trial", "version", "val_acc"] and len(table) == 3


def test_one_trial_per_process_as_an_indexed_job_runs_it(tmp_path, tiny_data):
    """$JOB_COMPLETION_INDEX picks the trial; the default sweep id is the same in every pod."""
    space = space_file(tmp_path, _toml(TINY, preset="fast", method="grid"))
    models = tmp_path / "models"
    ids = set()
    for index in (1, 0):
        result = run("sweep", "--space", space, "--data", tiny_data, "--model-dir", models, "--val-size", "40",
                     env={"JOB_COMPLETION_INDEX": str(index)})
        assert result.returncode == 0, result.stderr
        version = json.loads(result.stdout)["version"]
        manifest = format.load(models / "mnist" / str(version))[0]
        assert manifest["sweep"]["trial"] == index
        assert manifest["sweep"]["parameters"]["hidden"] == TINY["hidden"][index]
        ids.add(manifest["sweep"]["id"])
    assert len(ids) == 1 and ids.pop().startswith("space-")
    result = run("sweep", "--space", space, "--data", tiny_data, "--model-dir", models, "--index", "2")
    assert result.returncode == 2 and "outside this sweep's 2 trials" in result.stderr


def test_an_interrupted_sweep_publishes_nothing(tmp_path, tiny_data):
    space = space_file(tmp_path, _toml({"hidden": [[64]], "epochs": [100000]}, preset="fast", trials=2))
    models = tmp_path / "models"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MNIST_", "MODEL_"))}
    process = subprocess.Popen([sys.executable, "-m", "mnist_trainer.cli", "sweep", "--space", str(space),
                                "--data", str(tiny_data), "--model-dir", str(models), "--parallel", "2",
                                "--val-size", "40", "--log-format", "json"], stderr=subprocess.PIPE, text=True, env=env)
    started = 0
    while started < 2:  # both trials are running
        event = json.loads(process.stderr.readline())
        started += event["event"] == "epoch" and event["epoch"] == 1
    process.send_signal(signal.SIGTERM)
    # communicate() reads on: trials that log every epoch would otherwise fill the pipe and block
    # in write(), never reaching the batch where they stop (this hung CI once).
    process.communicate(timeout=60)
    assert process.returncode == 143
    assert format.list_versions(models, "mnist") == []
