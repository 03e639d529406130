"""mnist_artifact.format: the one reader of docs/artifact.md. Every invalid version is refused with
an ArtifactError naming the problem (never a KeyError or a traceback); the trainer's
--skip-if-published and the service's model store both rely on it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from artifact_files import random_arrays
from mnist_artifact import ArtifactError, Model, format
from mnist_artifact.profile import Profile, build_profile
from mnist_artifact.repository import LocalRepository


def _arrays(sizes=(784, 12, 8, 10), seed=0):
    return random_arrays(sizes, seed)


def write(directory: Path, arrays: dict[str, np.ndarray], **manifest_changes) -> Path:
    """A version directory written by hand as docs/artifact.md says (not by the trainer's publish)."""
    directory.mkdir(parents=True)
    np.savez(directory / format.WEIGHTS, **arrays)
    manifest = format.build_manifest("mnist", arrays, scale=1 / 255, mean=0.1307, std=0.3081)
    manifest["weights"]["sha256"] = format.sha256_file(directory / format.WEIGHTS)
    manifest["version"] = int(directory.name)
    (directory / format.MANIFEST).write_text(json.dumps({**manifest, **manifest_changes}))
    return directory


@pytest.fixture
def version(tmp_path) -> Path:
    return write(tmp_path / "mnist" / "1", _arrays())


def test_a_valid_version_loads(version):
    manifest, arrays = format.load(version)
    assert manifest["version"] == 1 and sorted(arrays) == ["W1", "W2", "W3", "b1", "b2", "b3"]
    model = Model.load(version)
    assert (model.name, model.version, model.sha256) == ("mnist", 1, manifest["weights"]["sha256"])
    assert model.predict_proba(np.zeros((3, 784), np.float32)).shape == (3, 10)


def _profile(seed=0) -> dict:
    """A valid "profile" section, on random pixels and probabilities."""
    rng = np.random.default_rng(seed)
    return build_profile(rng.integers(0, 256, (50, 784)).astype(np.float32), rng.dirichlet(np.ones(10), 50))


def test_a_version_with_a_profile_serves_it_and_one_without_serves_none(tmp_path):
    profile = _profile()
    with_profile = Model.load(write(tmp_path / "mnist" / "1", _arrays(), profile=profile))
    assert isinstance(with_profile.profile, Profile) and with_profile.profile.samples == 50
    np.testing.assert_array_equal(with_profile.profile.shares["ink"], profile["signals"]["ink"]["shares"])
    without = write(tmp_path / "mnist" / "2", _arrays())  # as published before profiles existed
    assert "profile" not in format.read_manifest(without) and Model.load(without).profile is None


def _spoil_profile(path: Path, spoil) -> None:
    profile = _profile()
    spoil(profile)
    _edit_manifest(path, profile=profile)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, **changes}))


def _drop(path: Path, section: str, key: str) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest[section][key]
    (path / "manifest.json").write_text(json.dumps(manifest))


def _replace_weights(path: Path, **changes) -> None:
    with np.load(path / "weights.npz") as npz:
        arrays = {**{k: npz[k] for k in npz.files}, **changes}
    np.savez(path / "weights.npz", **arrays)
    _edit_manifest(path, weights={"file": "weights.npz", "sha256": format.sha256_file(path / "weights.npz")})


CORRUPTIONS = {  # name: (corrupt the version in place, words the error must contain)
    "format_version": (lambda p: _edit_manifest(p, format_version=2), "format_version"),
    "version_mismatch": (lambda p: _edit_manifest(p, version=7), "manifest says version 7"),
    "sha256": (lambda p: _flip_a_byte(p / "weights.npz"), "sha256 does not match"),
    "truncated_weights": (lambda p: (p / "weights.npz").write_bytes((p / "weights.npz").read_bytes()[:-10]),
                          "sha256"),
    "shape": (lambda p: _replace_weights(p, W2=np.zeros((12, 9), np.float32)), "W2"),
    "dtype": (lambda p: _replace_weights(p, b1=np.zeros(12, np.float64)), "float32"),
    "non_finite": (lambda p: _replace_weights(p, W1=np.full((784, 12), np.inf, np.float32)), "non-finite"),
    "nan": (lambda p: _replace_weights(p, b3=np.full(10, np.nan, np.float32)), "non-finite"),
    "extra_array": (lambda p: _replace_weights(p, W9=np.zeros(1, np.float32)), "do not match"),
    "no_manifest": (lambda p: (p / "manifest.json").unlink(), "cannot read manifest"),
    "manifest_not_json": (lambda p: (p / "manifest.json").write_text("{not json"), "cannot read manifest"),
    "manifest_not_an_object": (lambda p: (p / "manifest.json").write_text("[1, 2]"), "not a JSON object"),
    "no_weights_key": (lambda p: _edit_manifest(p, weights=None), "weights.file"),
    "no_sha256": (lambda p: _drop(p, "weights", "sha256"), "weights.sha256"),
    "no_weights_file": (lambda p: (p / "weights.npz").unlink(), "cannot read weights"),
    "weights_file_elsewhere": (lambda p: _edit_manifest(p, weights={"file": "../../etc/passwd", "sha256": "0" * 64}),
                               "weights.file"),
    "no_architecture": (lambda p: _edit_manifest(p, architecture={}), "layer_sizes"),
    "layer_sizes_not_ints": (lambda p: _edit_manifest(p, architecture={"layer_sizes": [784, "12", 10]}),
                             "layer_sizes"),
    "not_784_to_10": (lambda p: _edit_manifest(p, architecture={"layer_sizes": [784, 12, 8, 9]}),
                      "784 pixels to 10 classes"),
    "zero_std": (lambda p: _edit_manifest(p, input={"scale": 1 / 255, "mean": 0.1, "std": 0}), "input.std"),
    "labels": (lambda p: _edit_manifest(p, labels=["a"] * 10), "labels"),
    "no_name": (lambda p: _edit_manifest(p, name=3), "name"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_invalid_versions_are_refused_with_a_one_line_reason(version, corruption):
    corrupt, words = CORRUPTIONS[corruption]
    corrupt(version)
    with pytest.raises(ArtifactError, match=words) as error:
        format.load(version)
    assert "\n" not in str(error.value)
    with pytest.raises(ArtifactError):
        Model.load(version)


PROFILE_CORRUPTIONS = {
    "profile_null": (lambda p: _edit_manifest(p, profile=None), "profile"),
    "profile_without_a_signal": (lambda p: _spoil_profile(p, lambda s: s["signals"].pop("offset")),
                                 "profile: signal 'offset' is missing"),
    "profile_unsorted_edges": (lambda p: _spoil_profile(p, lambda s: s["signals"]["ink"]["edges"].reverse()),
                               "profile: ink.edges"),
    "profile_shares": (lambda p: _spoil_profile(p, lambda s: s["signals"]["confidence"]["shares"].append(0.5)),
                       "profile: confidence.shares must be "),
}


@pytest.mark.parametrize("corruption", sorted(PROFILE_CORRUPTIONS))
def test_a_version_with_an_invalid_profile_is_refused_by_whoever_runs_it(version, corruption):
    """The profile is checked where a version becomes a Model (the service's store, the trainer's
    evaluate): its message names the version and the field."""
    corrupt, words = PROFILE_CORRUPTIONS[corruption]
    corrupt(version)
    repository = LocalRepository(version.parent.parent)
    for read in (Model.load, lambda v: Model(*repository.load("mnist", 1))):
        with pytest.raises(ArtifactError, match=words) as error:
            read(version)
        assert str(error.value).startswith("mnist version 1: profile") and "\n" not in str(error.value)


def test_versions_are_positive_integer_directories(tmp_path):
    for name in ("1", "2", "10", ".publishing-abc", "notes", "007", "0"):
        (tmp_path / "mnist" / name).mkdir(parents=True)
    (tmp_path / "mnist" / "3").write_text("a file, not a version")
    assert format.list_versions(tmp_path, "mnist") == [1, 2, 10]
    assert format.list_versions(tmp_path, "other") == []
    repository = LocalRepository(tmp_path)
    assert repository.directory("mnist") == tmp_path / "mnist" / "10"
    assert repository.directory("mnist", 2) == tmp_path / "mnist" / "2"
    with pytest.raises(ArtifactError, match="no version 7.*available: 1, 2, 10"):
        repository.directory("mnist", 7)
    with pytest.raises(ArtifactError, match="no published version"):
        repository.directory("other")


def test_build_manifest_describes_the_arrays():
    arrays = _arrays((784, 5, 10))
    manifest = format.build_manifest("digits", arrays, scale=0.5, mean=0.0, std=1.0, training={"seed": 3})
    assert manifest["format_version"] == format.FORMAT_VERSION and manifest["name"] == "digits"
    assert manifest["architecture"]["layer_sizes"] == [784, 5, 10]
    assert manifest["weights"] == {"file": "weights.npz", "arrays": {
        "W1": {"shape": [784, 5], "dtype": "float32"}, "b1": {"shape": [5], "dtype": "float32"},
        "W2": {"shape": [5, 10], "dtype": "float32"}, "b2": {"shape": [10], "dtype": "float32"}}}
    assert manifest["input"]["scale"] == 0.5 and manifest["training"] == {"seed": 3}
    assert manifest["labels"] == [str(d) for d in range(10)]


def test_labels_read_back_and_absent_means_none(tmp_path):
    assert format.read_labels(tmp_path, "mnist") == format.VersionLabels()
    labels = format.VersionLabels({"stable": 3, "canary": 5}, 12.5)
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / format.LABELS_FILE).write_text(json.dumps(labels.to_json()))
    assert format.read_labels(tmp_path, "mnist") == labels


@pytest.mark.parametrize("document, message", [
    ("not json", "cannot read labels"),
    ([], "JSON object with format_version 1"),
    ({"format_version": 2, "labels": {}}, "format_version 1"),
    ({"format_version": 1, "labels": ["stable"]}, "label -> version"),
    ({"format_version": 1, "labels": {"Stable": 1}}, "must match"),
    ({"format_version": 1, "labels": {"stable": "1"}}, "positive integer"),
    ({"format_version": 1, "labels": {"stable": 0}}, "positive integer"),
    ({"format_version": 1, "labels": {"stable": True}}, "positive integer"),
    ({"format_version": 1, "labels": {"canary": 2}}, "exactly when there is a 'canary' label"),
    ({"format_version": 1, "labels": {"stable": 2}, "canary_percent": 5}, "exactly when"),
    ({"format_version": 1, "labels": {"canary": 2}, "canary_percent": 100}, "[0, 100)"),
    ({"format_version": 1, "labels": {"canary": 2}, "canary_percent": "5"}, "[0, 100)"),
])
def test_invalid_labels_are_refused_with_a_one_line_reason(tmp_path, document, message):
    (tmp_path / "mnist").mkdir()
    text = document if isinstance(document, str) else json.dumps(document)
    (tmp_path / "mnist" / format.LABELS_FILE).write_text(text)
    with pytest.raises(ArtifactError, match=re.escape(message)) as error:
        format.read_labels(tmp_path, "mnist")
    assert "\n" not in str(error.value) and format.LABELS_FILE in str(error.value)


def test_labels_and_sweeps_beside_the_versions_are_not_versions(tmp_path):
    write(tmp_path / "mnist" / "2", _arrays())
    (tmp_path / "mnist" / format.LABELS_FILE).write_text("{}")
    (tmp_path / "mnist" / "sweeps").mkdir()
    assert format.list_versions(tmp_path, "mnist") == [2]
