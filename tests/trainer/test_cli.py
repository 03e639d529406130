"""`mnist-train` end to end, as a user runs it: a real process on a tiny generated dataset."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from trainer_helpers import learnable_digits, run

from idx_files import IDX_NAMES, idx_bytes, write_file, write_idx_dataset
from mnist_artifact import Model, format
from mnist_artifact.profile import Profile, build_profile
from mnist_trainer import data

TINY = ["--preset", "fast", "--hidden", "16", "--epochs", "2", "--batch-size", "16", "--val-size", "20"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mnist")
    write_idx_dataset(directory, n_train=200, n_test=50, seed=0)
    return directory


@pytest.fixture(scope="module")
def published(tiny_data, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    result = run("train", "--data", tiny_data, "--model-dir", models, "--name", "digits", *TINY)
    assert result.returncode == 0, result.stderr
    return models, result


def test_train_publishes_a_complete_version(published, tiny_data):
    models, result = published
    summary = json.loads(result.stdout)
    assert summary["version"] == 1 and summary["name"] == "digits"
    path = models / "digits" / "1"
    manifest, arrays = format.load(path)
    assert manifest["architecture"]["layer_sizes"] == [784, 16, 10]
    assert manifest["training"]["epochs_run"] == 2 and manifest["training"]["hyperparameters"]["hidden"] == [16]
    assert manifest["dataset"]["train_size"] == 180 and manifest["dataset"]["validation_size"] == 20
    assert manifest["metrics"]["test"]["accuracy"] == summary["test_accuracy"]
    assert np.array(manifest["metrics"]["test"]["confusion_matrix"]).sum() == 50
    assert len(manifest["metrics"]["test"]["per_class"]) == 10
    for key in ("created", "input", "labels", "code_version", "library_versions", "dataset"):
        assert key in manifest
    assert sorted(p.name for p in (path / "report").iterdir()) == [
        "confusion_matrix.png", "learning_curves.png", "misclassified.png"]
    # One line per epoch with the figures a user watches.
    epochs = [line for line in result.stderr.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2
    for field in ("train_loss", "val_loss", "val_acc", "lr", "samples/s", "elapsed"):
        assert field in epochs[0]


@pytest.fixture(scope="module")
def learnable_data(tmp_path_factory):
    """Digits a tiny network learns in a few epochs: its predictions spread over the classes (on random
    images it predicts one class for all, and a profile of one class would prove little)."""
    directory = tmp_path_factory.mktemp("learnable")
    arrays = (*learnable_digits(400), *learnable_digits(50, seed=1))
    for name, array in zip(IDX_NAMES, arrays):
        write_file(directory / name, idx_bytes(array), gz=False)
    return directory


def test_the_profile_is_the_published_models_on_the_validation_split(learnable_data, tmp_path):
    """docs/artifact.md, "profile": computed at publish on the validation images, with the probabilities
    the published version gives them (what the service will compare live traffic with)."""
    result = run("train", "--data", learnable_data, "--model-dir", tmp_path, *TINY, "--epochs", "3",
                 "--val-size", "100")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "mnist" / "1"
    manifest = format.read_manifest(path)
    assert Profile(manifest["profile"]).samples == manifest["dataset"]["validation_size"] == 100
    _, validation = data.split_validation(data.load(learnable_data).train, 100, manifest["training"]["seed"])
    pixels = validation.images.reshape(100, 784).astype(np.float32)
    probabilities = Model.load(path).predict_proba(pixels)
    predicted = np.bincount(probabilities.argmax(axis=1), minlength=10) / 100
    assert np.count_nonzero(predicted) >= 8  # the model learnt: the shares below say something
    assert manifest["profile"]["signals"]["predicted_class"]["shares"] == pytest.approx(predicted.tolist(), abs=1e-6)
    assert manifest["profile"] == json.loads(json.dumps(build_profile(pixels, probabilities)))  # every signal


def test_without_a_validation_split_there_is_no_profile(tiny_data, tmp_path):
    result = run("train", "--data", tiny_data, "--model-dir", tmp_path, *TINY, "--val-size", "0")
    assert result.returncode == 0, result.stderr
    assert "profile" not in format.read_manifest(tmp_path / "mnist" / "1")
    assert Model.load(tmp_path / "mnist" / "1").profile is None  # served without drift statistics
    said = [line for line in result.stderr.splitlines() if "profile" in line]
    assert len(said) == 1 and "no validation split" in said[0]


def test_evaluate_reproduces_the_manifest(published, tiny_data):
    models, _ = published
    result = run("evaluate", "--model-dir", models, "--name", "digits", "--data", tiny_data)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    manifest = json.loads((models / "digits" / "1" / "manifest.json").read_text())
    assert report["test_accuracy"] == manifest["metrics"]["test"]["accuracy"]
    assert report["matches_manifest"] and report["same_dataset"] and report["version"] == 1


def test_predict_writes_a_kaggle_submission(published, tmp_path):
    models, _ = published
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 784))
    csv = tmp_path / "test.csv"
    header = ",".join(f"pixel{i}" for i in range(784))
    csv.write_text(header + "\n" + "\n".join(",".join(map(str, row)) for row in pixels) + "\n")
    out = tmp_path / "submission.csv"
    result = run("predict", "--model-dir", models, "--name", "digits", csv, "--output", out)
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 6
    assert [int(line.split(",")[0]) for line in lines[1:]] == [1, 2, 3, 4, 5]
    assert all(0 <= int(line.split(",")[1]) <= 9 for line in lines[1:])


def test_environment_variables_configure_every_run(tiny_data, tmp_path):
    env = {"MNIST_DIR": str(tiny_data), "MODEL_DIR": str(tmp_path), "MODEL_NAME": "envmodel",
           "MNIST_EPOCHS": "1", "MNIST_HIDDEN": "8,4", "MNIST_BATCH_SIZE": "16", "MNIST_VAL_SIZE": "20",
           "LOG_FORMAT": "json", "MNIST_NESTEROV": "false"}
    result = run("train", env=env)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "envmodel" / "1" / "manifest.json").read_text())
    assert manifest["architecture"]["layer_sizes"] == [784, 8, 4, 10]
    assert manifest["training"]["epochs_run"] == 1
    assert manifest["training"]["hyperparameters"]["nesterov"] is False
    events = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert [e["event"] for e in events if e["event"] == "epoch"] == ["epoch"]
    assert events[-1]["event"] == "published"
    # A flag beats the environment.
    result = run("train", "--epochs", "2", env=env)
    manifest = json.loads((tmp_path / "envmodel" / "2" / "manifest.json").read_text())
    assert manifest["training"]["epochs_run"] == 2


@pytest.mark.parametrize("args, code, message", [
    (["train", "--hidden", "12,x"], 2, "comma-separated integers"),
    (["train", "--optimizer", "lbfgs"], 2, "optimizer must be one of sgd, adam, rmsprop, adagrad"),
    (["train", "--dropout", "1.5"], 2, "dropout must be in [0, 1)"),
    (["train", "--data", "/nonexistent/mnist"], 3, "/nonexistent/mnist"),
    (["evaluate", "--name", "nothing"], 4, "no published version"),
])
def test_bad_input_is_one_clear_line_and_a_documented_exit_code(args, code, message, tmp_path):
    result = run(*args, "--model-dir", tmp_path)
    assert result.returncode == code
    last = result.stderr.strip().splitlines()[-1]
    assert message in last and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["train", "sweep", "promote", "evaluate", "predict"])
@pytest.mark.parametrize("how", ["flag", "environment"])
@pytest.mark.parametrize("uri", ["gs://models/repo", "s3:/models/repo"])
def test_an_unsupported_uri_is_refused_not_taken_as_a_local_folder(command, how, uri, tmp_path):
    """`--model-dir s3://models/repo` once published into ./s3:/models/repo and exited 0; other
    schemes and typos must not either."""
    args, env = (["--model-dir", uri], None) if how == "flag" else ([], {"MODEL_DIR": uri})
    result = run(command, *args, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert f"{uri!r}: unsupported scheme" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())


def test_every_command_works_on_a_bucket(tiny_data, s3_uri, s3_server, tmp_path):
    """train, sweep, promote, evaluate and predict with --model-dir s3://... on a real S3 server."""
    result = run("train", "--data", tiny_data, "--model-dir", s3_uri, *TINY)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["version"] == 1 and summary["path"] == f"{s3_uri}/mnist/1"
    space = tmp_path / "space.toml"
    space.write_text('preset = "fast"\nmethod = "grid"\n[parameters]\nhidden = [[8], [12]]\nepochs = [1]\n')
    result = run("sweep", "--space", space, "--data", tiny_data, "--model-dir", s3_uri, "--val-size", "20",
                 "--sweep-id", "s1")
    assert result.returncode == 0, result.stderr
    bucket, prefix = s3_uri.removeprefix("s3://").split("/", 1)
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert {f"{prefix}/mnist/{v}/manifest.json" for v in (1, 2, 3)} <= keys
    assert f"{prefix}/mnist/1/report/confusion_matrix.png" in keys and f"{prefix}/mnist/sweeps/s1.json" in keys
    result = run("promote", "--model-dir", s3_uri, "--label", "canary", "--best", "s1", "--percent", "10")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["labels"]["canary"] in (2, 3)
    result = run("promote", "--model-dir", s3_uri, "--label", "stable", "--version", "9")
    assert result.returncode == 4 and "has no version 9" in result.stderr
    result = run("evaluate", "--data", tiny_data, "--model-dir", s3_uri, "--model-version", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["matches_manifest"] is True
    image = tmp_path / "digit.png"
    from PIL import Image, ImageDraw

    picture = Image.new("L", (28, 28))
    ImageDraw.Draw(picture).ellipse((8, 5, 20, 23), outline=255, width=3)
    picture.save(image)
    result = run("predict", "--model-dir", s3_uri, image)
    assert result.returncode == 0 and json.loads(result.stdout)["file"] == str(image)


@pytest.mark.parametrize("command", ["train", "promote", "evaluate"])
def test_a_missing_bucket_is_one_clear_line(command, s3_uri, tiny_data):
    args = {"train": ["--data", tiny_data, *TINY], "promote": ["--label", "stable", "--version", "1"],
            "evaluate": ["--data", tiny_data]}[command]
    result = run(command, "--model-dir", "s3://no-such-bucket/models", *args)
    assert result.returncode == 5 and "Traceback" not in result.stderr
    assert "bucket 'no-such-bucket' does not exist" in result.stderr.strip().splitlines()[-1]
    assert "epoch" not in result.stderr  # found out before training, not after


def test_corrupt_data_fails_before_training(tiny_data, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_data.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    labels = next(broken.glob("train-labels*"))
    labels.write_bytes(labels.read_bytes()[:-40])
    result = run("train", "--data", broken, "--model-dir", tmp_path / "models", *TINY)
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1 and labels.name in result.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_training_and_publishes_nothing(tiny_data, tmp_path, sig):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MNIST_", "MODEL_"))}
    proc = subprocess.Popen([sys.executable, "-m", "mnist_trainer.cli", "train", "--data", str(tiny_data),
                             "--model-dir", str(tmp_path), *TINY, "--epochs", "100000"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:  # wait until training is under way
        if line.startswith("epoch"):
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    assert "nothing was published" in err and out == ""
    assert format.list_versions(tmp_path, "mnist") == []


def test_skip_if_published_trains_only_when_no_valid_version_exists(tiny_data, tmp_path):
    args = ["train", "--data", tiny_data, "--model-dir", tmp_path, *TINY, "--skip-if-published"]
    first = run(*args)
    assert first.returncode == 0 and json.loads(first.stdout)["version"] == 1
    second = run(*args)
    assert second.returncode == 0 and second.stdout == "" and "already published" in second.stderr
    assert format.list_versions(tmp_path, "mnist") == [1]
    (tmp_path / "mnist" / "1" / "manifest.json").write_text("{}")  # no valid version any more
    assert run(*args).returncode == 0
    assert format.list_versions(tmp_path, "mnist") == [1, 2]
    assert run("train", "--data", tiny_data, "--model-dir", tmp_path, *TINY).returncode == 0  # retrain on request
    assert format.list_versions(tmp_path, "mnist") == [1, 2, 3]


@pytest.mark.parametrize("damage", ["weights key", "weights file"])
def test_skip_if_published_treats_a_damaged_version_as_not_published(tiny_data, tmp_path, damage):
    """A version without its `weights` entry or its weights file used to crash --skip-if-published
    with a traceback (KeyError, FileNotFoundError): it is not published, so training goes ahead."""
    args = ["train", "--data", tiny_data, "--model-dir", tmp_path, *TINY, "--skip-if-published"]
    assert run(*args).returncode == 0
    version = tmp_path / "mnist" / "1"
    if damage == "weights key":
        manifest = json.loads((version / "manifest.json").read_text())
        del manifest["weights"]
        (version / "manifest.json").write_text(json.dumps(manifest))
    else:
        (version / "weights.npz").unlink()
    again = run(*args)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr and json.loads(again.stdout)["version"] == 2


def test_predict_prepares_image_files_as_the_service_does(published, tmp_path):
    """`mnist-train predict photo.png` and POST /v1/predict see the same 28x28 for the same file."""
    from PIL import Image, ImageDraw

    from mnist_artifact import Model, preprocess

    models, _ = published
    canvas = Image.new("L", (200, 120), 255)  # dark ink on white paper, off-centre, not square
    ImageDraw.Draw(canvas).line([(20, 20), (70, 100), (90, 30)], fill=0, width=9)
    photo = tmp_path / "photo.png"
    canvas.save(photo)
    result = run("predict", "--model-dir", models, "--name", "digits", photo)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    probabilities = Model.load(models / "digits" / "1").predict_proba(
        preprocess.prepare(photo.read_bytes()).reshape(1, 784).astype(np.float32))[0]
    assert answer["label"] == int(probabilities.argmax())
    assert answer["confidence"] == pytest.approx(float(probabilities.max()), abs=1e-6)
    unreadable = tmp_path / "notes.png"
    unreadable.write_text("not an image")
    bad = run("predict", "--model-dir", models, "--name", "digits", unreadable)
    assert bad.returncode == 3 and len(bad.stderr.strip().splitlines()) == 1 and "notes.png" in bad.stderr


def test_a_validation_split_larger_than_the_data_is_a_data_error(tiny_data, tmp_path):
    result = run("train", "--data", tiny_data, "--model-dir", tmp_path, *TINY, "--val-size", "5000")
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert "validation size must be between 0 and 199" in result.stderr.strip().splitlines()[-1]
