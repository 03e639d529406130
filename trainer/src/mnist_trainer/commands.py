"""The work behind each `mnist-train` subcommand."""

from __future__ import annotations

import contextlib
import csv
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mnist_artifact import ArtifactError, Model, format, preprocess
from mnist_artifact.profile import build_profile
from mnist_artifact.repository import Repository

from . import __version__, data, metrics, report
from .leaderboard import table, write_leaderboard
from .logs import EventLog
from .mlp import MLP
from .promote import best_of_sweep, remove_label, set_label
from .sweep import Space, SpaceError, run_trials
from .train import MEAN, PIXEL_SCALE, STD, Interrupted, TrainConfig


def _load_data(args, *, progress: bool) -> data.MNIST:
    mirrors = [m.strip() for m in args.mirror.split(",") if m.strip()] if args.mirror else None
    return data.load(args.data, mirrors=mirrors, cache_dir=args.cache_dir, progress=progress)


def train(args, config: TrainConfig, log: EventLog, should_stop) -> int:
    if args.skip_if_published and (manifest := _latest_valid(args.model_dir, args.name)):
        log("skipped", f"{args.name} version {manifest['version']} is already published in {args.model_dir}; "
            "not training (run without --skip-if-published to retrain)", version=manifest["version"])
        return 0
    train_and_publish(args, config, args.preset, log, should_stop)
    return 0


def _latest_valid(repository: Repository, name: str) -> dict | None:
    """The manifest of the highest version that loads and verifies, if any."""
    for version in reversed(repository.versions(name)):
        try:
            return repository.load(name, version)[0]
        except ArtifactError:
            continue
    return None


def train_and_publish(args, config: TrainConfig, preset: str, log: EventLog, should_stop,
                      sweep: dict | None = None) -> None:
    """Train, evaluate and publish the next version; `sweep` (id, trial, parameters) goes into its
    manifest. Prints a one-line JSON summary on stdout."""
    args.model_dir.versions(args.name)  # a bucket that is missing or denied fails now, not after training
    tty = sys.stderr.isatty()
    mnist = _load_data(args, progress=tty)
    try:
        train_split, val_split = data.split_validation(mnist.train, args.val_size, config.seed)
    except ValueError as e:  # --val-size too large for this dataset
        raise data.DataError(f"data: {mnist.source}: {e}") from None
    log("data", f"data {mnist.source}", train=len(train_split.images), validation=len(val_split.images),
        test=len(mnist.test.images) if mnist.test else 0, sha256=mnist.sha256[:12])
    log("config", "config", preset=preset, **config.as_dict())

    model = MLP(config=config)
    validation = (val_split.images, val_split.labels) if len(val_split.images) else None
    with _progress_bar(tty, len(train_split.images) // config.batch_size) as bar:
        def on_epoch(record):
            bar.reset()
            _log_epoch(log, record, config.epochs)

        model.fit(train_split.images, train_split.labels, validation=validation,
                  on_epoch=on_epoch, on_batch=bar.update_to, should_stop=should_stop)

    metrics_ = _metrics(model, validation, mnist.test)
    profile = _profile(model, val_split, log)
    manifest = _manifest(args, preset, config, mnist, train_split, val_split, model, metrics_, profile)
    if sweep is not None:
        manifest["sweep"] = sweep

    def write_report(directory: Path) -> None:
        test = mnist.test or val_split  # without a labelled test set, show validation errors
        proba = model.predict_proba(test.images)
        report.write_report(directory / "report", model.history,
                            metrics.confusion_matrix(test.labels, proba.argmax(axis=1)),
                            test.images, test.labels, proba.argmax(axis=1), proba,
                            title=f"preset {preset}: {config.describe()}")

    if should_stop():  # a signal after the last batch: still publish nothing
        raise Interrupted("stopped before publishing")
    version = args.model_dir.publish(args.name, model.arrays(), manifest, write_report)
    path = args.model_dir.location(args.name, version)
    summary = {"name": args.name, "version": version, "path": path,
               "test_accuracy": metrics_["test"]["accuracy"] if metrics_.get("test") else None,
               "validation_accuracy": metrics_["validation"]["accuracy"] if validation else None,
               "training_seconds": round(model.training_seconds, 2)}
    log("published", f"published {args.name} version {version} at {path}", **{
        k: v for k, v in summary.items() if k not in ("name", "version", "path")})
    print(json.dumps(summary), flush=True)


def _log_epoch(log: EventLog, r: dict, epochs: int) -> None:
    if log.fmt == "json":
        log("epoch", **r, epochs=epochs)
        return
    val = (f"val_loss {r['val_loss']:.4f}  val_acc {100 * r['val_accuracy']:.2f}%"
           if r["val_loss"] is not None else "no validation")
    log("epoch", f"epoch {r['epoch']:>3}/{epochs}  train_loss {r['train_loss']:.4f}  {val}  "
        f"lr {r['lr']:.4g}  samples/s {r['samples_per_second']:,.0f}  elapsed {r['elapsed']:.1f}s")


class _BatchBar(tqdm):
    """A per-epoch batch progress bar on a terminal; disabled (nothing printed) in logs and pipes."""

    def update_to(self, n):
        self.update(n - self.n)


def _progress_bar(tty: bool, total: int) -> _BatchBar:
    return _BatchBar(total=total, unit="batch", leave=False, file=sys.stderr, disable=not tty)


def _metrics(model: MLP, validation, test: data.Split | None) -> dict:
    result = {}
    if validation is not None:
        result["validation"] = model.evaluate(*validation)
    if test is not None:
        predictions = model.predict(test.images)
        result["test"] = {**model.evaluate(test.images, test.labels),
                          **metrics.classification_report(test.labels, predictions)}
    return result


def _code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+g{commit}" if commit else __version__


def _profile(model: MLP, val_split: data.Split, log: EventLog) -> dict | None:
    """The reference profile (docs/artifact.md): the validation images through the published arrays and
    the service's forward pass, so that live traffic is compared with what this very version saw."""
    if not len(val_split.images):
        log("profile", "no validation split: this version has no reference profile and will serve "
            "without drift statistics")
        return None
    arrays = model.arrays()
    served = Model({"name": "", "version": 0, "weights": {"sha256": ""},  # not published yet: no number, no file
                    "architecture": {"layer_sizes": format.layer_sizes(arrays)},
                    "input": {"scale": PIXEL_SCALE, "mean": MEAN, "std": STD}}, arrays)
    # MNIST's images are already what the service's preprocessing makes of a picture: 28x28, ink high
    pixels = val_split.images.reshape(len(val_split.images), format.PIXELS).astype(np.float32)
    return build_profile(pixels, served.predict_proba(pixels))


def _manifest(args, preset: str, config, mnist, train_split, val_split, model: MLP, metrics_: dict,
              profile: dict | None) -> dict:
    import matplotlib

    return format.build_manifest(
        args.name, model.arrays(), scale=PIXEL_SCALE, mean=MEAN, std=STD,
        training={"preset": preset, "hyperparameters": config.as_dict(), "seed": config.seed,
                  "epochs_run": len(model.history), "best_epoch": model.best_epoch,
                  "training_seconds": round(model.training_seconds, 3), "history": model.history},
        dataset={"source": mnist.source, "sha256": mnist.sha256, "files": mnist.files,
                 "train_size": len(train_split.images), "validation_size": len(val_split.images),
                 "test_size": len(mnist.test.images) if mnist.test else 0},
        metrics=metrics_,
        **({"profile": profile} if profile is not None else {}),  # none: no key at all (null is invalid)
        code_version=_code_version(),
        library_versions={"python": platform.python_version(), "numpy": np.__version__,
                          "matplotlib": matplotlib.__version__},
    )


def sweep(args, space: Space, log: EventLog, should_stop) -> int:
    """Run one trial (--index, as a pod of an Indexed Job does) or all of them, `--parallel` at a
    time; exit code: how many trials failed."""
    n_trials = space.size(args.trials)
    sweep_id = args.sweep_id or space.default_id(args.space, n_trials)
    if args.index is not None:
        return _sweep_trial(args, space, sweep_id, n_trials, should_stop)
    _load_data(args, progress=sys.stderr.isatty())  # one clear error for bad data; one download for all trials
    args.model_dir.versions(args.name)  # and for a repository that cannot be reached
    log("sweep", f"sweep {sweep_id}: {n_trials} trials, {args.parallel} at a time", sweep=sweep_id,
        trials=n_trials, parallel=args.parallel)
    failed = run_trials(lambda index: _trial_command(args, sweep_id, n_trials, index), n_trials, args.parallel,
                        should_stop, log)
    if should_stop():
        raise Interrupted("sweep stopped")
    path, rows = write_leaderboard(args.model_dir, args.name, sweep_id, failed)
    print(table(rows), flush=True)
    log("leaderboard", f"sweep {sweep_id}: {len(rows)} trials published, {len(failed)} failed; leaderboard {path}",
        sweep=sweep_id, failed=failed)
    return min(len(failed), 125)


def _sweep_trial(args, space: Space, sweep_id: str, n_trials: int, should_stop) -> int:
    if not 0 <= args.index < n_trials:
        raise SpaceError(f"--index {args.index} is outside this sweep's {n_trials} trials (0 to {n_trials - 1})")
    parameters = space.trial(args.index)
    try:
        config = space.config(parameters)
    except (TypeError, ValueError) as e:
        raise SpaceError(f"trial {args.index} {parameters}: {e}") from None
    log = EventLog(args.log_format, trial=args.index)
    train_and_publish(args, config, space.preset, log, should_stop, sweep={
        "id": sweep_id, "trial": args.index, "trials": n_trials, "parameters": parameters,
        "space": Path(args.space).name})
    write_leaderboard(args.model_dir, args.name, sweep_id)
    return 0


def _trial_command(args, sweep_id: str, n_trials: int, index: int) -> list[str]:
    """This program, running trial `index` of the same sweep with the same data and models folder."""
    command = [sys.executable, "-m", "mnist_trainer.cli", "sweep", "--space", str(args.space),
               "--sweep-id", sweep_id, "--trials", str(n_trials), "--index", str(index),
               "--model-dir", str(args.model_dir), "--name", args.name, "--val-size", str(args.val_size),
               "--log-format", args.log_format]
    for flag, value in (("--data", args.data), ("--mirror", args.mirror), ("--cache-dir", args.cache_dir)):
        if value is not None:
            command += [flag, str(value)]
    return command


def promote(args) -> int:
    if args.remove:
        labels = remove_label(args.model_dir, args.name, args.remove)
    else:
        version = args.version if args.version is not None else best_of_sweep(args.model_dir, args.name, args.best)
        labels = set_label(args.model_dir, args.name, args.label, version, args.percent)
    print(json.dumps(labels.to_json()))
    return 0


def _read_model(args) -> MLP:
    repository = args.model_dir
    return MLP.from_verified(*repository.load(args.name, repository.resolve(args.name, args.model_version)))


def evaluate(args) -> int:
    model = _read_model(args)
    mnist = _load_data(args, progress=sys.stderr.isatty())
    if mnist.test is None:
        raise data.DataError(f"data: {mnist.source}: has no labelled test set to evaluate on")
    result = model.evaluate(mnist.test.images, mnist.test.labels)
    recorded = model.manifest["metrics"].get("test", {}).get("accuracy")
    print(json.dumps({"name": args.name, "version": model.manifest["version"],
                      "test_accuracy": result["accuracy"], "test_loss": result["loss"],
                      "manifest_test_accuracy": recorded,
                      "matches_manifest": recorded == result["accuracy"],
                      "dataset_sha256": mnist.sha256,
                      "same_dataset": mnist.sha256 == model.manifest["dataset"]["sha256"]}))
    return 0


def predict(args) -> int:
    model = _read_model(args)
    if len(args.inputs) == 1 and args.inputs[0].suffix.lower() == ".csv":
        split = data.read_kaggle_csv(args.inputs[0])
        labels = model.predict(split.images)
        target = open(args.output, "w", newline="") if args.output else contextlib.nullcontext(sys.stdout)
        with target as out:
            writer = csv.writer(out)
            writer.writerow(["ImageId", "Label"])
            writer.writerows((i, int(label)) for i, label in enumerate(labels, start=1))
        return 0
    images = np.stack([_read_image(p, args.preprocess) for p in args.inputs])
    proba = model.predict_proba(images)
    for path, p in zip(args.inputs, proba):
        print(json.dumps({"file": str(path), "label": int(p.argmax()), "confidence": float(p.max())}))
    return 0



def _read_image(path: Path, how: str) -> np.ndarray:
    """An image file prepared exactly as the service prepares the same file (mnist_artifact.preprocess)."""
    try:
        return preprocess.prepare(path.read_bytes(), how)
    except OSError as e:
        raise data.DataError(f"data: {path}: cannot read: {e.strerror or e}") from None
    except preprocess.ImageError as e:
        raise data.DataError(f"data: {path}: {e}") from None
