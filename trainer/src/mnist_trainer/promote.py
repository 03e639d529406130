"""Version labels: point `stable`, `canary` or any label at a verified version (labels.json).

The service reads the labels with the versions and follows them within its poll interval, so
promoting, sending a share of traffic to a canary and rolling back are each one command.
"""

from __future__ import annotations

from mnist_artifact import ArtifactError, format
from mnist_artifact.repository import Repository

from .leaderboard import sweep_trials


def set_label(repository: Repository, name: str, label: str, version: int,
              percent: float | None = None) -> format.VersionLabels:
    """Point `label` at `version` (verified first); a canary takes `percent` % of unlabelled traffic."""
    _check_label(label, percent)
    repository.load(name, repository.resolve(name, version))  # refuse a missing or invalid version

    def point(labels: format.VersionLabels) -> format.VersionLabels:
        canary_percent = percent if label == format.CANARY else labels.canary_percent
        return format.VersionLabels({**labels.versions, label: version}, canary_percent)

    return repository.update_labels(name, point)


def remove_label(repository: Repository, name: str, label: str) -> format.VersionLabels:
    def remove(labels: format.VersionLabels) -> format.VersionLabels:
        if label not in labels.versions:
            raise ArtifactError(f"model {name!r} has no label {label!r} "
                                f"(labels: {', '.join(labels.versions) or 'none'})")
        canary_percent = 0.0 if label == format.CANARY else labels.canary_percent
        return format.VersionLabels({k: v for k, v in labels.versions.items() if k != label}, canary_percent)

    return repository.update_labels(name, remove)


def best_of_sweep(repository: Repository, name: str, sweep_id: str) -> int:
    """The valid version of sweep `sweep_id` with the best validation accuracy."""
    trials = sweep_trials(repository, name, sweep_id)
    if not trials:
        raise ArtifactError(f"sweep {sweep_id!r} has no valid published trial of model {name!r} in {repository}")
    return trials[0]["version"]


class LabelError(ValueError):
    """A label or canary percentage that cannot be used (a usage error: nothing was changed)."""


def _check_label(label: str, percent: float | None) -> None:
    if not format.LABEL_NAME.fullmatch(label):
        raise LabelError(f"label {label!r} must match {format.LABEL_NAME.pattern}")
    if label == format.CANARY and (percent is None or not 0 < percent < 100):
        raise LabelError("a canary needs --percent between 0 and 100 (exclusive): the share of traffic it takes")
    if label != format.CANARY and percent is not None:
        raise LabelError(f"--percent is for the {format.CANARY!r} label only")
