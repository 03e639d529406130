"""Hyper-parameter sweeps: a search space in a small TOML or JSON file, one trial per index.

    preset = "fast"        # every trial starts from this preset
    method = "random"      # or "grid": every combination of the lists
    trials = 4             # random search: how many draws
    seed = 0
    [parameters]
    hidden = [[128], [256]]                      # a list: one of these
    lr = { min = 0.02, max = 0.2, log = true }   # a range: drawn (random search only)

Trial i's hyperparameters depend only on the space and i, so separate processes, machines or the
pods of a Kubernetes Indexed Job ($JOB_COMPLETION_INDEX) each run their own trial with nothing to
coordinate but the atomic publish.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .presets import PRESETS
from .train import TrainConfig

METHODS = ("grid", "random")
SWEEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # a file name and a Kubernetes label value
TUNABLE = {f.name for f in fields(TrainConfig)}


class SpaceError(ValueError):
    """A search space that cannot be used (one line)."""


@dataclass(frozen=True)
class Space:
    preset: str
    method: str
    parameters: dict  # name -> list of values, or {"min": .., "max": .., "log": bool}
    trials: int
    seed: int
    digest: str  # of the file's bytes: trials of the same space agree on their sweep id

    @classmethod
    def load(cls, path: Path) -> Space:
        try:
            raw = Path(path).read_bytes()
            document = json.loads(raw) if Path(path).suffix == ".json" else tomllib.loads(raw.decode())
        except OSError as e:
            raise SpaceError(f"{path}: cannot read: {e.strerror or e}") from None
        except (ValueError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError and JSON errors are ValueErrors
            raise SpaceError(f"{path}: not valid {'JSON' if Path(path).suffix == '.json' else 'TOML'}: {e}") from None
        try:
            return cls._from_document(document, hashlib.sha256(raw).hexdigest())
        except SpaceError as e:
            raise SpaceError(f"{path}: {e}") from None

    @classmethod
    def _from_document(cls, document, digest: str) -> Space:
        if not isinstance(document, dict):
            raise SpaceError("must be a table of preset, method, trials, seed and [parameters]")
        unknown = set(document) - {"preset", "method", "trials", "seed", "parameters"}
        if unknown:
            raise SpaceError(f"unknown keys {sorted(unknown)}: expected preset, method, trials, seed, parameters")
        space = cls(preset=document.get("preset", "default"), method=document.get("method", "random"),
                    parameters=document.get("parameters", {}), trials=document.get("trials", 1),
                    seed=document.get("seed", 0), digest=digest)
        space._check()
        return space

    def _check(self) -> None:
        if self.preset not in PRESETS:
            raise SpaceError(f"preset must be one of {', '.join(sorted(PRESETS))}, got {self.preset!r}")
        if self.method not in METHODS:
            raise SpaceError(f"method must be grid or random, got {self.method!r}")
        if type(self.trials) is not int or self.trials < 1 or type(self.seed) is not int:
            raise SpaceError("trials must be a positive integer and seed an integer")
        if not isinstance(self.parameters, dict) or not self.parameters:
            raise SpaceError("[parameters] must name at least one hyperparameter")
        for name, values in self.parameters.items():
            if name not in TUNABLE:
                raise SpaceError(f"unknown parameter {name!r}: expected one of {', '.join(sorted(TUNABLE))}")
            if isinstance(values, dict):
                _check_range(name, values)
                if self.method == "grid":
                    raise SpaceError(f"parameter {name!r}: a grid needs a list of values, not a range")
            elif not isinstance(values, list) or not values:
                raise SpaceError(f"parameter {name!r} must be a non-empty list or a range {{min, max, log}}")

    def size(self, trials: int | None = None) -> int:
        """How many trials this sweep runs: every grid combination (at most `trials`), or `trials` draws."""
        if self.method == "grid":
            combinations = math.prod(len(v) for v in self.parameters.values())
            return min(combinations, trials) if trials else combinations
        return trials or self.trials

    def trial(self, index: int) -> dict:
        """The hyperparameters of trial `index` (only those the space sets)."""
        names = sorted(self.parameters)
        if self.method == "grid":
            combination = next(itertools.islice(itertools.product(*(self.parameters[n] for n in names)), index, None))
            return dict(zip(names, combination))
        rng = np.random.default_rng([self.seed, index])
        return {name: _draw(self.parameters[name], rng) for name in names}

    def config(self, parameters: dict) -> TrainConfig:
        """The preset with `parameters` applied; ValueError naming a value out of range."""
        if "hidden" in parameters:
            hidden = parameters["hidden"]
            parameters = {**parameters, "hidden": tuple(hidden) if isinstance(hidden, list) else (hidden,)}
        config = PRESETS[self.preset].replace(**parameters)
        config.validate()
        return config

    def default_id(self, path: Path, trials: int) -> str:
        """`<file stem>-<8 hex>`: the same for every process that runs this space with these trials."""
        stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(path).stem) or "sweep"
        suffix = hashlib.sha256(f"{self.digest}:{trials}".encode()).hexdigest()[:8]
        return f"{stem[:50]}-{suffix}"


def _check_range(name: str, bounds: dict) -> None:
    low, high = bounds.get("min"), bounds.get("max")
    if set(bounds) - {"min", "max", "log"} or not all(type(b) in (int, float) for b in (low, high)) or low >= high:
        raise SpaceError(f"parameter {name!r}: a range is {{min = a, max = b, log = false}} with a < b")
    if bounds.get("log") and low <= 0:
        raise SpaceError(f"parameter {name!r}: a log range needs min > 0")


def _draw(values, rng: np.random.Generator):
    if isinstance(values, list):
        return values[int(rng.integers(len(values)))]
    low, high = values["min"], values["max"]
    if values.get("log"):
        return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.4g}")
    if type(low) is int and type(high) is int:
        return int(rng.integers(low, high + 1))
    return float(f"{rng.uniform(low, high):.4g}")


# -- running trials in parallel on this machine ------------------------------------------------

def run_trials(command: Callable[[int], list[str]], n_trials: int, parallel: int, should_stop,
               log) -> list[int]:
    """Run `command(i)` for every trial i, `parallel` at a time, each in its own process (a crash
    fails that trial only). BLAS threads are shared out among them. Returns the failed indexes."""
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    pending, running, failed, stopping = list(range(n_trials)), {}, [], False
    while pending or running:
        if should_stop() and not stopping:  # pass the signal on: each trial stops at its next batch
            pending.clear()
            stopping = True
            for process in running.values():
                process.send_signal(signal.SIGTERM)
        while pending and len(running) < parallel:
            index = pending.pop(0)
            running[index] = subprocess.Popen(command(index), env=env, stdout=sys.stderr)
            log("trial_started", "trial started", trial=index)
        for index, process in list(running.items()):
            if process.poll() is None:
                continue
            del running[index]
            if process.returncode:
                failed.append(index)
                log("trial_failed", "trial failed", trial=index,
                    exit_code=process.returncode)
            else:
                log("trial_done", "trial published", trial=index)
        time.sleep(0.1)
    return failed
