"""How long a pixel attribution (mnist_service.dataplane.explain) of one digit takes, in-process, one BLAS
thread, against the forward pass: median and p99 ms of each case (bench/README.md, "Explanations").

    .venv/bin/python -m bench.service.explain_bench [--model-dir DIR [--name mnist]] [--repeats 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

TARGET_MS = 20.0  # integrated gradients of one digit, default steps, median


def parse_args():
    parser = argparse.ArgumentParser(prog="python -m bench.service.explain_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="a MODEL_DIR with published versions (default: random 784-800-10)")
    parser.add_argument("--name", default="mnist")
    parser.add_argument("--version", type=int)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per case")
    parser.add_argument("--blas-threads", type=int, default=1)
    return parser.parse_args()


def random_model(sizes=(784, 800, 10), seed: int = 0):
    from bench.common import random_arrays
    from mnist_artifact import Model

    manifest = {"name": "random", "version": 0, "weights": {"sha256": "-"},
                "architecture": {"layer_sizes": list(sizes)},
                "input": {"scale": 1 / 255, "mean": 0.1307, "std": 0.3081}}
    return Model(manifest, random_arrays(sizes, seed))


def ring():
    """A digit-like "0": a thick ring, 784 pixels 0..255 (as tests/service/service_helpers.digit)."""
    import numpy as np

    yy, xx = np.mgrid[:28, :28]
    r = np.hypot(yy - 14, (xx - 14) * 1.4)
    return np.clip((1 - np.abs(r - 7) / 2.5) * 255, 0, 255).astype(np.uint8).reshape(1, 784)


def main() -> int:
    args = parse_args()
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)  # before NumPy loads OpenBLAS
    import numpy as np

    from bench.common import Others, markdown_table, percentile
    from mnist_artifact import Model
    from mnist_artifact.repository import LocalRepository
    from mnist_service.dataplane import explain

    if args.model_dir:
        path = LocalRepository(Path(args.model_dir)).directory(args.name, args.version)
        model, described = Model.load(path), str(path)
    else:
        model, described = random_model(), "random weights"
    sizes = "-".join(str(w.shape[0]) for w in model.weights) + f"-{model.weights[-1].shape[1]}"
    pixels = ring()
    target = int(model.predict_proba(pixels.astype(np.float32)).argmax())
    attributions = explain.integrated_gradients(model, pixels, target)[0].reshape(28, 28)
    steps = explain.DEFAULT_STEPS

    def gap(k: int) -> str:
        logits, _ = explain.logits_and_gradients(model, np.concatenate([pixels, 0 * pixels]), target)
        change = float(logits[0, target]) - float(logits[1, target])
        total = explain.integrated_gradients(model, pixels, target, k).sum()
        return f"{abs(total - change) / max(abs(change), 1e-9):.3%}"

    cases = {
        "forward pass (predict_proba)": (lambda: model.predict_proba(pixels.astype(np.float32)), ""),
        "gradient x input": (lambda: explain.gradient_times_input(model, pixels, target), ""),
        **{f"integrated gradients, {k} steps{' (default)' if k == steps else ''}":
           (lambda k=k: explain.integrated_gradients(model, pixels, target, k), gap(k))
           for k in (steps, 2 * steps, 4 * steps)},
        "heatmap PNG data URL 28x28": (lambda: explain.heatmap_data_url(attributions), ""),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn, _ in cases.values():  # warm up
        for _ in range(5):
            fn()
    others = Others()
    chunk = 10
    for _ in range(max(1, args.repeats // chunk)):
        for name, (fn, _) in cases.items():
            for _ in range(chunk):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    other = others.cores()

    rows = []
    for name, (_, completeness) in cases.items():
        times = samples[name]
        rows.append([name, f"{statistics.median(times):.3f}", f"{percentile(times, 99):.3f}", completeness or "-"])
    print(f"Model {sizes} ({described}), one digit (a ring, target class {target}), {len(times)} calls each, "
          f"OPENBLAS_NUM_THREADS={args.blas_threads}, other processes {other:.2f} cores during the run.\n")
    print(markdown_table(["case", "median ms", "p99 ms", "completeness gap"], rows))
    ig_median = statistics.median(samples[next(n for n in cases if n.endswith("(default)"))])
    verdict = "met" if ig_median < TARGET_MS else f"MISSED by {ig_median - TARGET_MS:.1f} ms"
    print(f"\nIntegrated gradients, {steps} steps: median {ig_median:.2f} ms, target < {TARGET_MS:g} ms: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
