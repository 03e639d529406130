"""`mnist-train`: train and publish, sweep hyper-parameters, promote versions, evaluate, predict.

Every flag can also be set by the environment variable shown in `--help` (flags win).
Exit codes: 0 ok, 1 unexpected error, 2 usage, 3 data error, 4 model/artifact error, 5 the model
repository cannot be read or written (unreachable, denied, no such bucket: a retry may help),
130 interrupted (SIGINT), 143 terminated (SIGTERM); `sweep` without --index: the number of failed trials.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from mnist_artifact import ArtifactError
from mnist_artifact.options import parse_bool
from mnist_artifact.preprocess import PREPROCESS
from mnist_artifact.repository import Repository, RepositoryError, open_repository, parse_location

from . import __version__
from .data import DataError
from .logs import EventLog
from .presets import PRESETS
from .promote import LabelError
from .sweep import Space, SpaceError
from .train import Interrupted, TrainConfig

EXIT_ERROR, EXIT_USAGE, EXIT_DATA, EXIT_MODEL, EXIT_REPOSITORY = 1, 2, 3, 4, 5


def _env_flag(parser, flag: str, env: str, help: str, **kwargs) -> None:
    """Add a flag whose default comes from $env (argparse converts it with `type`)."""
    if env in os.environ and kwargs.get("action") is argparse.BooleanOptionalAction:
        try:
            kwargs["default"] = parse_bool(env, os.environ[env])
        except ValueError as e:
            parser.error(str(e))
    elif env in os.environ:
        kwargs["default"] = os.environ[env]
    parser.add_argument(flag, help=f"{help} [env {env}]", **kwargs)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"layer sizes must be positive integers, got {text!r}")
    return sizes


def _model_dir(text: str) -> Repository:
    try:
        return open_repository(parse_location("--model-dir", text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_model_flags(p) -> None:
    _env_flag(p, "--model-dir", "MODEL_DIR", "model repository: a local directory or s3://bucket/prefix "
              "(AWS_* variables configure S3)", default="models", type=_model_dir)
    _env_flag(p, "--name", "MODEL_NAME", "model name", default="mnist")


def _add_run_flags(p) -> None:
    _env_flag(p, "--val-size", "MNIST_VAL_SIZE", "validation images held out of training",
              default=5000, type=int)
    _env_flag(p, "--log-format", "LOG_FORMAT", "text or json (JSON lines)", default="text",
              choices=["text", "json"])


def _add_data_flags(p) -> None:
    _env_flag(p, "--data", "MNIST_DIR",
              "MNIST folder or file (IDX, Kaggle CSV or mnist.npz); unset: download", default=None)
    _env_flag(p, "--mirror", "MNIST_MIRRORS", "comma-separated download mirrors (base URLs)",
              default=None)
    _env_flag(p, "--cache-dir", "MNIST_CACHE_DIR", "where downloads are cached", default=None, type=Path)


# Hyperparameter flags: flag -> (TrainConfig field, type, help). Unset flags keep the preset's value.
HYPERPARAMETER_FLAGS = {
    "--hidden": ("hidden", _int_list, "hidden layer sizes, e.g. 512,256"),
    "--epochs": ("epochs", _positive_int, "training epochs"),
    "--batch-size": ("batch_size", _positive_int, "mini-batch size"),
    "--optimizer": ("optimizer", str, "sgd, adam, rmsprop or adagrad"),
    "--lr": ("lr", float, "peak learning rate"),
    "--momentum": ("momentum", float, "SGD momentum"),
    "--weight-decay": ("weight_decay", float, "decoupled weight decay (weights only)"),
    "--l2": ("l2", float, "L2 penalty added to the loss"),
    "--dropout": ("dropout", float, "dropout rate of hidden units"),
    "--label-smoothing": ("label_smoothing", float, "label smoothing, e.g. 0.1 (0: off)"),
    "--ema": ("ema", float, "publish an exponential moving average of the weights with this decay, "
              "e.g. 0.999 (0: off)"),
    "--schedule": ("schedule", str, "learning-rate schedule: cosine, step or constant"),
    "--warmup-epochs": ("warmup_epochs", float, "linear warm-up length in epochs"),
    "--augment": ("augment", str, "none, shift (up to 2 px), affine, or elastic (affine + elastic "
                  "distortions + stroke thickness)"),
    "--patience": ("patience", int, "early stopping after N epochs without improvement (0: off)"),
    "--seed": ("seed", int, "random seed (same seed, same machine: identical weights)"),
}


# Boolean hyperparameters: --flag / --no-flag, the TrainConfig field named like the flag.
BOOLEAN_FLAGS = {
    "--nesterov": "Nesterov momentum",
    "--batch-norm": "batch normalisation of hidden layers (folded into the weights when published)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-train", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model and publish the next version")
    _add_data_flags(train)
    _add_model_flags(train)
    _env_flag(train, "--preset", "MNIST_PRESET", "hyperparameter preset", default="default",
              choices=sorted(PRESETS))
    for flag, (field, type_, help_) in HYPERPARAMETER_FLAGS.items():
        env = "MNIST_" + field.upper()
        _env_flag(train, flag, env, help_, default=None, type=type_)
    for flag, help_ in BOOLEAN_FLAGS.items():
        _env_flag(train, flag, "MNIST_" + flag[2:].replace("-", "_").upper(), help_, default=None,
                  action=argparse.BooleanOptionalAction)
    _add_run_flags(train)
    _env_flag(train, "--skip-if-published", "MNIST_SKIP_IF_PUBLISHED",
              "do nothing when a valid version of --name already exists (for `docker compose up`)",
              default=False, action=argparse.BooleanOptionalAction)

    sweep = sub.add_parser("sweep", help="train the trials of a search space, each published as a candidate version")
    _add_data_flags(sweep)
    _add_model_flags(sweep)
    _add_run_flags(sweep)
    _env_flag(sweep, "--space", "SWEEP_SPACE", "search space file (TOML or JSON)", type=Path,
              required="SWEEP_SPACE" not in os.environ)
    _env_flag(sweep, "--sweep-id", "SWEEP_ID", "the sweep's id, recorded in every trial's manifest "
              "(default: the space file's name and a hash of its content)", default=None)
    _env_flag(sweep, "--trials", "SWEEP_TRIALS", "random search: how many trials; grid: at most this many "
              "(default: the space file's)", default=None, type=_positive_int)
    _env_flag(sweep, "--parallel", "SWEEP_PARALLEL", "trials run at once, each a process with its share of "
              "the BLAS threads", default=1, type=_positive_int)
    _env_flag(sweep, "--index", "JOB_COMPLETION_INDEX", "run trial I only (0-based; a Kubernetes Indexed "
              "Job sets it)", default=None, type=int)

    promote = sub.add_parser("promote", help="point a label (stable, canary, ...) at a verified version")
    _add_model_flags(promote)
    action = promote.add_mutually_exclusive_group(required=True)
    action.add_argument("--label", help="the label to set, e.g. stable or canary")
    action.add_argument("--remove", metavar="LABEL", help="remove this label (e.g. canary: all traffic to stable)")
    which = promote.add_mutually_exclusive_group()
    which.add_argument("--version", type=_positive_int, help="the version the label points at")
    which.add_argument("--best", metavar="SWEEP_ID", help="the version of this sweep with the best validation accuracy")
    promote.add_argument("--percent", type=float, help="canary only: the share of unlabelled requests it takes")

    evaluate = sub.add_parser("evaluate", help="test accuracy of a published version")
    _add_data_flags(evaluate)
    _add_model_flags(evaluate)
    _env_flag(evaluate, "--model-version", "MODEL_VERSION", "version (default: the highest)",
              default=None, type=int)

    predict = sub.add_parser("predict", help="labels for a Kaggle test.csv or image files")
    _add_model_flags(predict)
    _env_flag(predict, "--model-version", "MODEL_VERSION", "version (default: the highest)",
              default=None, type=int)
    predict.add_argument("inputs", nargs="+", type=Path, help="test.csv, or image files")
    _env_flag(predict, "--preprocess", "MNIST_PREPROCESS",
              "image files: mnist (fit into 20x20, centre by mass, as the service does) or none (28x28 as is)",
              default="mnist", choices=PREPROCESS)
    _env_flag(predict, "--output", "MNIST_PREDICT_OUTPUT",
              "submission file for a CSV input (default: stdout)", default=None, type=Path)
    return parser


def train_config(args) -> TrainConfig:
    overrides = {field: getattr(args, flag[2:].replace("-", "_"))
                 for flag, (field, _, _) in HYPERPARAMETER_FLAGS.items()}
    overrides |= {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag in BOOLEAN_FLAGS}
    config = PRESETS[args.preset].replace(**{k: v for k, v in overrides.items() if v is not None})
    try:
        config.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    return config


class UsageError(Exception):
    pass


class _StopFlag:
    """Set by SIGINT/SIGTERM; the training loop checks it at every batch boundary."""

    def __init__(self):
        self.signum = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from . import commands  # heavy imports only after argument errors had their chance

    log = EventLog(getattr(args, "log_format", "text"))
    stop = _StopFlag()
    try:
        if args.command == "train":
            return commands.train(args, train_config(args), log, stop)
        if args.command == "sweep":
            return commands.sweep(args, Space.load(args.space), log, stop)
        if args.command == "promote":
            if args.label and (args.version is None) == (args.best is None):
                raise UsageError("promote --label needs --version N or --best SWEEP_ID")
            if args.remove and (args.version is not None or args.best or args.percent is not None):
                raise UsageError("promote --remove LABEL takes no --version, --best or --percent")
            return commands.promote(args)
        if args.command == "evaluate":
            return commands.evaluate(args)
        return commands.predict(args)
    except (UsageError, SpaceError, LabelError) as e:
        parser.error(str(e))
    except Interrupted as e:
        log("interrupted", f"mnist-train: {e} by signal {stop.signum}; nothing was published")
        return 128 + stop.signum
    except DataError as e:
        print(f"mnist-train: {e}", file=sys.stderr)
        return EXIT_DATA
    except RepositoryError as e:
        print(f"mnist-train: {e}", file=sys.stderr)
        return EXIT_REPOSITORY
    except ArtifactError as e:
        print(f"mnist-train: {e}", file=sys.stderr)
        return EXIT_MODEL
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
