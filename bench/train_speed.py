"""Epoch time of aelab against the usual PyTorch recipe (bench/reference.py), in one run.

    python bench/train_speed.py                        # vae-mnist on fashion-mnist, 10 epochs each
    python bench/train_speed.py --preset seed-ae --dataset mnist-5k

Both train the same architecture on the same training images with Adam, each in a fresh process.
Prints seconds per epoch (median of rounds
after the first, which warms up), images per second, achieved GFLOP/s and the share of a matrix-
multiply peak measured here, then aelab's speed-up over the reference against the target.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from reference import make_reference, train_epoch  # noqa: E402

from aelab.config import resolve_config  # noqa: E402
from aelab.data import Batches, Split  # noqa: E402
from aelab.datasets import load_raw  # noqa: E402
from aelab.models import build_model  # noqa: E402
from aelab.train import flush_denormal, make_optimizer, train_one_epoch  # noqa: E402

TARGET_SPEEDUP = 3.0


def linear_flops_per_image(model: torch.nn.Module) -> int:
    """Multiply-adds of every Linear layer, x2 for FLOPs, x3 for forward + backward."""
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 3 * 2 * macs


def matmul_peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def time_recipe(recipe: str, preset: str, dataset: str, rounds: int) -> dict:
    """Epoch times of one recipe, in this process (run it in a fresh one: see main)."""
    raw = load_raw(dataset)
    images = raw.train_images                       # uint8 (N, 1, 28, 28), same for both recipes
    cfg = resolve_config(preset, overrides={"data.name": dataset})
    cfg.model.input_shape = tuple(images.shape[1:])
    times = []
    if recipe == "reference":
        model, _, loader, step = make_reference(preset, images)
        for _ in range(rounds):
            start = time.perf_counter()
            train_epoch(loader, step)
            times.append(time.perf_counter() - start)
    else:
        with flush_denormal():                      # as aelab.train.train does for a whole run
            torch.manual_seed(0)
            model = build_model(cfg.model)
            opt = make_optimizer(model, cfg.train.lr)
            batches = Batches(Split(torch.from_numpy(images), None), cfg.train.batch_size, shuffle=True)
            for epoch in range(rounds):
                batches.set_epoch(epoch)
                start = time.perf_counter()
                train_one_epoch(model, opt, batches)
                times.append(time.perf_counter() - start)
    return {"times": times, "n_images": len(images), "batch_size": cfg.train.batch_size,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "flops_per_image": linear_flops_per_image(model), "dataset": raw.name,
            "peak_gflops": matmul_peak_gflops()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="vae-mnist", choices=("vae-mnist", "seed-ae"))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--rounds", type=int, default=10,
                   help="epochs per recipe, as in the presets; the first is a warm-up")
    p.add_argument("--recipe", choices=("aelab", "reference"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.recipe:                                 # worker: one recipe, JSON on stdout
        print(json.dumps(time_recipe(args.recipe, args.preset, args.dataset, args.rounds)))
        return

    # Each recipe in a fresh process, so that neither inherits the other's thread or CPU state
    # (the flush-to-zero flag is per thread and PyTorch's worker threads copy it when they start).
    results = {}
    for recipe in ("reference", "aelab"):
        cmd = [sys.executable, __file__, "--recipe", recipe, "--preset", args.preset,
               "--dataset", args.dataset, "--rounds", str(args.rounds)]
        results[recipe] = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                    text=True).stdout.strip().splitlines()[-1])
    ref, ours = results["reference"], results["aelab"]
    assert ref["n_parameters"] == ours["n_parameters"], "the two recipes build different models"
    n, peak = ours["n_images"], min(ref["peak_gflops"], ours["peak_gflops"])
    flops = ours["flops_per_image"] * n
    print(f"{args.preset} on {ours['dataset']}: {n} training images, batch {ours['batch_size']}, "
          f"{ours['n_parameters']:,} parameters, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matrix-multiply peak measured in this run: {peak:.0f} GFLOP/s; "
          f"linear layers' FLOPs (forward + backward) at that peak: {flops / peak / 1e9:.2f} s per epoch")
    print(f"{'recipe':<24}{'s/epoch':>9}{'images/s':>11}{'GFLOP/s':>9}{'% peak':>8}   all epochs (s)")
    medians = {}
    for name, label in (("reference", "reference (DataLoader)"), ("aelab", "aelab")):
        ts = results[name]["times"]
        med = medians[name] = statistics.median(ts[1:] if len(ts) > 1 else ts)
        print(f"{label:<24}{med:>9.2f}{n / med:>11,.0f}{flops / med / 1e9:>9.1f}"
              f"{100 * flops / med / 1e9 / peak:>7.0f}%   {', '.join(f'{t:.2f}' for t in ts)}")
    speedup = medians["reference"] / medians["aelab"]
    verdict = "meets" if speedup >= TARGET_SPEEDUP else "BELOW"
    print(f"aelab speed-up over the reference: {speedup:.2f}x ({verdict} the {TARGET_SPEEDUP:.1f}x target)")


if __name__ == "__main__":
    main()
