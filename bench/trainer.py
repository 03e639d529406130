"""Benchmarks of the NumPy trainer: speed against PyTorch and scikit-learn, memory, accuracy, augmentation
and the machine's speed. `bench/run speed|memory|accuracy|augment|machine` (or `python -m bench.trainer`
from the repository root, in .bench-venv); what each measures is in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import mnist_trainer
from bench import common
from bench.common import BUSY, Others, load_mnist, log, machine_factor, machine_speed, markdown_table, yardstick
from mnist_trainer import MLP, data
from mnist_trainer.augment import AUGMENTATIONS, random_elastic, random_thickness
from mnist_trainer.presets import PRESETS
from mnist_trainer.train import TrainConfig, fit, to_input

THREADS = 2  # the reference machine has 2 cores; every framework gets both (--threads)
MEMORY_TARGET_MIB = 1024
AUGMENT_BUDGET_SECONDS = 2.0  # all augmentation of one epoch of 60,000 images, on the reference machine


# The targets stated in mnist_trainer/presets.py: test accuracy (the mean of the seeds, or every seed's)
# and training seconds on the reference machine, scaled by the machine factor.
ACCURACY_TARGETS = {"default": {"accuracy": 0.990, "reference_seconds": 60, "every_seed": False},
                    "best": {"accuracy": 0.9935, "reference_seconds": 15 * 60, "every_seed": True}}

# The speed benchmark's network and optimiser, identical in all three frameworks.
SPEED = TrainConfig(hidden=(256,), epochs=5, batch_size=128, optimizer="sgd", lr=0.05, momentum=0.9,
                    nesterov=False, schedule="constant")


def limit_threads(threads: int) -> dict:
    """Both NumPy's BLAS and torch's intra-op pool to `threads`; returns a description of the pools."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # in force for the rest of the process
    pools = [f"{p['internal_api']} ({p['prefix']}) {p['num_threads']}" for p in threadpool_info()]
    return {"torch.get_num_threads": torch.get_num_threads(), "threadpools": pools}


def speed_numpy(x_train, y_train, x_test, y_test, epochs: int, seed: int) -> dict:
    """This trainer. It takes uint8 images and normalises each batch inside its loop."""
    started = time.perf_counter()
    result = fit(x_train, y_train, SPEED.replace(epochs=epochs, seed=seed))
    seconds = time.perf_counter() - started
    logits = result.network.logits(to_input(x_test))
    return {"seconds": seconds, "accuracy": float((logits.argmax(axis=1) == y_test).mean())}


def speed_torch(x_train, y_train, x_test, y_test, epochs: int, seed: int) -> dict:
    """An idiomatic PyTorch CPU loop over a shuffled index tensor; data converted to tensors first."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x = torch.from_numpy(to_input(x_train))
    y = torch.from_numpy(y_train.astype(np.int64))
    model = nn.Sequential(nn.Linear(784, SPEED.hidden[0]), nn.ReLU(), nn.Linear(SPEED.hidden[0], 10))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=SPEED.lr, momentum=SPEED.momentum, nesterov=False)
    batch = SPEED.batch_size

    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started

    model.eval()
    with torch.no_grad():
        predictions = model(torch.from_numpy(to_input(x_test))).argmax(dim=1).numpy()
    return {"seconds": seconds, "accuracy": float((predictions == y_test).mean())}


def speed_sklearn(x_train, y_train, x_test, y_test, epochs: int, seed: int) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, xt = to_input(x_train), to_input(x_test)
    clf = MLPClassifier(hidden_layer_sizes=SPEED.hidden, solver="sgd", momentum=SPEED.momentum,
                        nesterovs_momentum=False, batch_size=SPEED.batch_size,
                        learning_rate_init=SPEED.lr, alpha=0.0, max_iter=epochs, shuffle=True,
                        tol=0.0, n_iter_no_change=1000, random_state=seed)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y_train)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "accuracy": float(clf.score(xt, y_test))}


FRAMEWORKS = {"numpy (mnist_trainer)": speed_numpy, "pytorch": speed_torch, "scikit-learn": speed_sklearn}


def cmd_speed(args) -> dict:
    mnist = load_mnist(args.data)
    threads = limit_threads(args.threads)
    train, test = mnist.train, mnist.test
    samples = args.epochs * len(train.images)
    runs = {name: [] for name in FRAMEWORKS}
    # numpy, torch, numpy, torch, ... so that load changes on a shared machine hit both alike.
    plan = [name for _ in range(args.repeats) for name in list(FRAMEWORKS)[:2]] + ["scikit-learn"]
    for n, name in enumerate(plan, 1):
        others = Others()
        run = FRAMEWORKS[name](train.images, train.labels, test.images, test.labels, args.epochs,
                               seed=len(runs[name]))
        run["samples_per_second"] = samples / run["seconds"]
        run["other_cores"] = others.cores()  # how busy the rest of the machine was
        runs[name].append(run)
        log(f"[{n}/{len(plan)}] {name}: {run['seconds']:.1f} s, {run['samples_per_second']:,.0f} samples/s, "
            f"test accuracy {100 * run['accuracy']:.2f}%, other processes {run.get('other_cores', 0):.2f} cores")

    summary = {name: {"samples_per_second": statistics.median(r["samples_per_second"] for r in rs),
                      "best_samples_per_second": max(r["samples_per_second"] for r in rs),
                      "seconds": statistics.median(r["seconds"] for r in rs),
                      "accuracy": statistics.median(r["accuracy"] for r in rs), "runs": rs}
               for name, rs in runs.items()}
    ours = summary["numpy (mnist_trainer)"]["samples_per_second"]
    ratios = {"numpy/torch": ours / summary["pytorch"]["samples_per_second"],
              "numpy/sklearn": ours / summary["scikit-learn"]["samples_per_second"],
              "numpy/torch (best runs)": summary["numpy (mnist_trainer)"]["best_samples_per_second"]
              / summary["pytorch"]["best_samples_per_second"]}

    print(f"784-{SPEED.hidden[0]}-10 ReLU, batch {SPEED.batch_size}, SGD momentum {SPEED.momentum} "
          f"lr {SPEED.lr}, {args.epochs} epochs x {len(train.images):,} images, {args.threads} threads; "
          f"median and best of {args.repeats} runs (scikit-learn: 1 run)\n")
    print(markdown_table(
        ["framework", "samples/s (median)", "samples/s (best)", "training s (median)", "test accuracy",
         "vs mnist_trainer"],
        [[name, f"{s['samples_per_second']:,.0f}", f"{s['best_samples_per_second']:,.0f}", f"{s['seconds']:.1f}",
          f"{100 * s['accuracy']:.2f}%", f"{s['samples_per_second'] / ours:.2f}x"] for name, s in summary.items()]))
    print(f"\nnumpy/torch {ratios['numpy/torch']:.2f}x (best runs: {ratios['numpy/torch (best runs)']:.2f}x; "
          f"target >= 1.0), numpy/sklearn {ratios['numpy/sklearn']:.2f}x")
    print(f"threads: torch.get_num_threads() = {threads['torch.get_num_threads']}; "
          + "; ".join(threads["threadpools"]))
    factor = machine_factor(runs["pytorch"])
    print(common.describe_factor(factor))
    busy = max(r.get("other_cores", 0.0) for rs in runs.values() for r in rs)
    if busy > BUSY:
        print(f"warning: other processes used up to {busy:.2f} cores during a run; {args.threads}-thread "
              f"BLAS/OpenMP loops slow down many times when a core is taken: re-run on an idle machine")
    return {"benchmark": "speed", "epochs": args.epochs, "repeats": args.repeats, "threads": threads,
            "max_other_cores": busy, "results": summary, "ratios": ratios, "machine_factor": factor}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def memory_child(args) -> None:
    """In a fresh process: what `mnist-train train --preset default --epochs N` does, minus publishing."""
    stages = {"imports": peak_mib()}
    mnist = load_mnist(args.data)
    config = PRESETS["default"].replace(epochs=args.epochs)
    train, val = data.split_validation(mnist.train, 5000, config.seed)
    stages["data loaded"] = peak_mib()
    model = MLP(config=config).fit(train.images, train.labels, validation=(val.images, val.labels))
    stages["trained"] = peak_mib()
    accuracy = model.evaluate(mnist.test.images, mnist.test.labels)["accuracy"]
    stages["evaluated"] = peak_mib()
    print(json.dumps({"peak_mib_after": stages, "test_accuracy": accuracy,
                      "training_seconds": model.training_seconds}))


def cmd_memory(args) -> dict:
    command = [sys.executable, "-m", "bench.trainer", "memory", "--child", "--epochs", str(args.epochs)]
    if args.data:
        command += ["--data", str(Path(args.data).resolve())]
    child = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=common.REPO)  # stderr passes through
    if child.returncode:
        sys.exit(f"bench: the memory measurement failed (exit status {child.returncode})")
    child = json.loads(child.stdout)
    stages = child["peak_mib_after"]
    peak = max(stages.values())
    print(f"`default` preset ({'-'.join(map(str, (784, *PRESETS['default'].hidden, 10)))}), "
          f"{args.epochs} epoch(s) on 55,000 images, peak RSS (ru_maxrss) of a fresh process\n")
    print(markdown_table(["peak RSS after", "MiB"], [[stage, f"{mib:.0f}"] for stage, mib in stages.items()]))
    verdict = "OK" if peak <= MEMORY_TARGET_MIB else "OVER TARGET"
    print(f"\npeak {peak:.0f} MiB (target <= {MEMORY_TARGET_MIB} MiB: {verdict}); "
          f"test accuracy {100 * child['test_accuracy']:.2f}% after {child['training_seconds']:.1f} s")
    return {"benchmark": "memory", "preset": "default", "epochs": args.epochs, "peak_mib": peak,
            "target_mib": MEMORY_TARGET_MIB, **child}


def cmd_accuracy(args) -> dict:
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if unknown := [p for p in presets if p not in PRESETS]:
        sys.exit(f"bench: unknown preset(s) {unknown} (expected one of {', '.join(PRESETS)})")
    mnist = load_mnist(args.data)
    speed_before = machine_speed()
    # The yardstick before the first run and after every run: each run's factor comes from both sides of it.
    yardsticks = [yardstick(args.data)]
    results, seed_rows, summary_rows = {}, [], []
    for preset in presets:
        target, runs = ACCURACY_TARGETS.get(preset), []
        for seed in range(args.seeds or (3 if preset == "default" else 1)):
            train, val = data.split_validation(mnist.train, 5000, seed)  # as `mnist-train train` does
            others = Others()
            model = MLP(config=PRESETS[preset].replace(seed=seed)).fit(train.images, train.labels,
                                                                       validation=(val.images, val.labels))
            other_cores = others.cores()
            accuracy = model.evaluate(mnist.test.images, mnist.test.labels)["accuracy"]
            yardsticks.append(yardstick(args.data))
            factor = machine_factor(*yardsticks[-2:])
            run = {"seed": seed, "test_accuracy": accuracy, "training_seconds": model.training_seconds,
                   "best_epoch": model.best_epoch, "other_cores": other_cores, "machine_factor": factor}
            verdict, budget = "-", "-"
            if target:
                run["budget_seconds"] = target["reference_seconds"] * factor["factor"]
                budget = f"{run['budget_seconds']:.0f}"
                verdict = judge(run["training_seconds"] <= run["budget_seconds"] and (
                    accuracy >= target["accuracy"] or not target["every_seed"]), factor["other_cores_max"])
            runs.append(run)
            log(f"{preset} seed {seed}: test accuracy {100 * accuracy:.2f}%, {run['training_seconds']:.1f} s, "
                f"machine factor {factor['factor']:.2f}, other processes {other_cores:.2f} cores")
            seed_rows.append([f"`{preset}`", seed, f"{100 * accuracy:.2f}%", run["best_epoch"],
                              f"{run['training_seconds']:.1f}", f"{other_cores:.2f}", f"{factor['factor']:.2f}",
                              budget, verdict])
        acc, sec = [r["test_accuracy"] for r in runs], [r["training_seconds"] for r in runs]
        summary = results[preset] = {"config": PRESETS[preset].as_dict(), "runs": runs,
                                     "accuracy_mean": statistics.mean(acc), "accuracy_std": std(acc),
                                     "seconds_mean": statistics.mean(sec), "seconds_std": std(sec)}
        verdict = described = "-"
        if target:
            accurate = (min(acc) if target["every_seed"] else summary["accuracy_mean"]) >= target["accuracy"]
            summary["target"] = target | {"met": accurate and all(r["training_seconds"] <= r["budget_seconds"]
                                                                  for r in runs)}
            verdict = judge(summary["target"]["met"], max(r["machine_factor"]["other_cores_max"] for r in runs))
            who = "every seed" if target["every_seed"] else "mean of seeds"
            described = (f">= {100 * target['accuracy']:g}% ({who}), each run in <= "
                         f"{target['reference_seconds']:g} s x factor")
        summary_rows.append([f"`{preset}`", len(acc), f"{100 * summary['accuracy_mean']:.2f}% ± "
                             f"{100 * summary['accuracy_std']:.2f} ({100 * min(acc):.2f}-{100 * max(acc):.2f})",
                             f"{summary['seconds_mean']:.1f} ± {summary['seconds_std']:.1f}", described, verdict])
    print("Train on 55,000 images (5,000 held out for validation / best epoch), test on 10,000. Each run's "
          "budget is its reference-machine seconds x the machine factor measured just before and after it.\n")
    print(markdown_table(["preset", "seed", "test accuracy", "best epoch", "training s", "others' cores",
                          "machine factor", "budget s", "this run"], seed_rows))
    print()
    print(markdown_table(["preset", "seeds", "test accuracy: mean ± std (min-max)", "training s: mean ± std",
                          "target", "verdict"], summary_rows))
    overall = machine_factor(*yardsticks)
    print(f"\n{common.describe_factor(overall)}")
    return {"benchmark": "accuracy", "results": results, "machine_factor": overall,
            "machine_speed": report_speed(speed_before)}


def judge(met: bool, yardstick_other_cores: float) -> str:
    """A verdict against a budget scaled by a machine factor. Other processes busy during the yardstick
    inflate the factor, and the budget with it, so a pass measured then is not established."""
    if not met:
        return "**missed**"
    return "met" if yardstick_other_cores <= BUSY else "met only with a suspect factor (busy machine)"


def std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


# What the training loop may call once per batch; the thickness change and the warp alone for comparison.
AUGMENTERS = {"shift": AUGMENTATIONS["shift"], "affine": AUGMENTATIONS["affine"],
              "elastic": AUGMENTATIONS["elastic"], "elastic, warp only (random_elastic)": random_elastic,
              "elastic, thickness only (random_thickness)": random_thickness}
AUGMENT_BATCH = TrainConfig().batch_size  # 128, as in training


def augment_epoch(images, function, seed: int) -> float:
    """Seconds to augment one epoch as fit() does: shuffled batches, the last partial one dropped."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    started = time.perf_counter()
    for i in range(len(images) // AUGMENT_BATCH):
        function(images[order[i * AUGMENT_BATCH : (i + 1) * AUGMENT_BATCH]], rng)
    return time.perf_counter() - started


def cmd_augment(args) -> dict:
    images = load_mnist(args.data).train.images
    runs, speed_before, yardstick_before = {name: [] for name in AUGMENTERS}, machine_speed(), yardstick(args.data)
    for repeat in range(args.repeats):  # round robin, so that load changes hit every augmentation alike
        for name, function in AUGMENTERS.items():
            others = Others()
            seconds = augment_epoch(images, function, seed=repeat)
            other_cores = others.cores()
            runs[name].append({"seconds": seconds, "other_cores": other_cores})
            log(f"[{repeat + 1}/{args.repeats}] {name}: {seconds:.2f} s, other processes {other_cores:.2f} cores")

    summary = {name: {"seconds": statistics.median(r["seconds"] for r in rs),
                      "best_seconds": min(r["seconds"] for r in rs), "runs": rs} for name, rs in runs.items()}
    factor = machine_factor(yardstick_before, yardstick(args.data))
    budget = AUGMENT_BUDGET_SECONDS * factor["factor"]
    batches = len(images) // AUGMENT_BATCH
    print(f"One epoch: {batches} shuffled batches of {AUGMENT_BATCH} from {len(images):,} training images, "
          f"augmented as the training loop does; median and best of {args.repeats} runs. Budget: "
          f"{AUGMENT_BUDGET_SECONDS:g} s x machine factor {factor['factor']:.2f} = {budget:.2f} s per epoch\n")
    print(markdown_table(
        ["augmentation", "s/epoch (median)", "s/epoch (best)", "µs/image (median)",
         f"budget <= {budget:.2f} s/epoch"],
        [[name, f"{s['seconds']:.2f}", f"{s['best_seconds']:.2f}",
          f"{1e6 * s['seconds'] / (batches * AUGMENT_BATCH):.1f}",
          judge(s["seconds"] <= budget, factor["other_cores_max"])] for name, s in summary.items()]))
    print(f"\n{common.describe_factor(factor)}")
    speed = report_speed(speed_before)
    busy = max(r["other_cores"] for rs in runs.values() for r in rs)
    if busy > BUSY:
        print(f"\nwarning: other processes used up to {busy:.2f} cores during a run: re-run on an idle machine")
    return {"benchmark": "augment", "batch_size": AUGMENT_BATCH, "batches": batches, "repeats": args.repeats,
            "reference_budget_seconds": AUGMENT_BUDGET_SECONDS, "budget_seconds": budget, "machine_factor": factor,
            "max_other_cores": busy, "results": summary, "machine_speed": speed}


def report_speed(before: dict) -> dict:
    """The machine's speed before a run and now, printed under the run's table; returned for the JSON."""
    speed = {"before": before, "after": machine_speed()}
    print(f"\n{common.describe_speed(*speed.values())}")
    return speed


def cmd_machine(args) -> dict:
    speed, factor = machine_speed(), machine_factor(yardstick(args.data))
    print(common.describe_speed(speed))
    print(common.describe_factor(factor))
    return {"benchmark": "machine", "machine_speed": speed, "machine_factor": factor}


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")

    def command(name, help_):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--data", help="MNIST directory or file (default: $MNIST_DIR, else ../shared/data/mnist)")
        p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
        return p

    speed = command("speed", "samples/s of the same MLP in this trainer, PyTorch and scikit-learn")
    speed.add_argument("--repeats", type=positive, default=3, help="interleaved runs of numpy and torch (median)")
    speed.add_argument("--threads", type=positive, default=THREADS, help="BLAS / torch threads (default: 2)")
    speed.add_argument("--epochs", type=positive, default=SPEED.epochs, help=argparse.SUPPRESS)  # quick checks
    memory = command("memory", "peak RSS of training the default preset")
    memory.add_argument("--epochs", type=positive, default=1)
    memory.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    accuracy = command("accuracy", "test accuracy and training time of presets")
    accuracy.add_argument("--presets", default="fast,default",
                          help="comma-separated (`best`: 15 min x the machine factor a seed)")
    accuracy.add_argument("--seeds", type=positive, default=None,
                          help="seeds per preset (default: 3 for default, else 1)")
    augment = command("augment", "seconds per epoch of each data augmentation")
    augment.add_argument("--repeats", type=positive, default=5, help="runs per augmentation (median)")
    command("machine", "how fast this machine is right now: matrix products, memory and the machine factor "
                       "(about 20 s)")

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*sub.choices, "-h", "--help"):
        argv.insert(0, "speed")  # the default subcommand, also for `bench/run --repeats 5`
    args = parser.parse_args(argv)
    if args.command == "memory" and args.child:
        return memory_child(args)
    results = {"speed": cmd_speed, "memory": cmd_memory, "accuracy": cmd_accuracy,
               "augment": cmd_augment, "machine": cmd_machine}[args.command](args)
    environment = common.environment(mnist_trainer=mnist_trainer.__version__)
    common.write_json(args.json, {**results, "environment": environment})


if __name__ == "__main__":
    main()
