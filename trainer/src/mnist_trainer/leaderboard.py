"""A sweep's leaderboard: its published trials, best validation accuracy first (never test accuracy:
the test set is for reporting the winner, not for choosing it).

Built from the published manifests, so every trial of a sweep, wherever it ran, is counted, and
written to MODEL_DIR/<name>/sweeps/<sweep id>.json beside the versions.
"""

from __future__ import annotations

from mnist_artifact import ArtifactError
from mnist_artifact.repository import Repository

SWEEPS = "sweeps"


def sweep_trials(repository: Repository, name: str, sweep_id: str) -> list[dict]:
    """One row per valid version published by the sweep, sorted by validation accuracy (best first)."""
    rows = []
    for version in repository.versions(name):
        try:  # the manifest says which sweep; only its trials' weights are read and verified
            manifest = repository.read_manifest(name, version)
            sweep = manifest.get("sweep") or {}
            if sweep.get("id") != sweep_id:
                continue
            repository.load(name, version)
        except ArtifactError:  # a corrupt or half-deleted version is no candidate; a store that
            continue           # cannot be reached (RepositoryError) stops the leaderboard instead
        validation = manifest.get("metrics", {}).get("validation") or {}
        rows.append({"version": version, "trial": sweep.get("trial"), "parameters": sweep.get("parameters", {}),
                     "validation_accuracy": validation.get("accuracy"), "validation_loss": validation.get("loss"),
                     "training_seconds": manifest.get("training", {}).get("training_seconds")})
    return sorted(rows, key=lambda r: (-(r["validation_accuracy"] or 0), r["validation_loss"] or 0, r["version"]))


def write_leaderboard(repository: Repository, name: str, sweep_id: str,
                      failed: list[int] | None = None) -> tuple[str, list[dict]]:
    """Write the leaderboard; returns where it went and its rows."""
    rows = sweep_trials(repository, name, sweep_id)
    document = {"sweep": sweep_id, "model": name, "sorted_by": "validation_accuracy", "trials": rows}
    if failed is not None:
        document["failed_trials"] = sorted(failed)
    return repository.write_document(name, f"{SWEEPS}/{sweep_id}.json", document), rows


def table(rows: list[dict]) -> str:
    """The leaderboard as an aligned text table."""
    header = ["rank", "trial", "version", "val_acc", "val_loss", "seconds", "parameters"]
    lines = [[str(rank), str(r["trial"]), str(r["version"]), _percent(r["validation_accuracy"]),
              _number(r["validation_loss"]), _number(r["training_seconds"], ".1f"),
              " ".join(f"{k}={_value(v)}" for k, v in sorted(r["parameters"].items()))]
             for rank, r in enumerate(rows, start=1)]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip()
                     for row in [header, *lines])


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _number(value, spec: str = ".4f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
