"""Epoch time of aelab against the usual PyTorch recipe (bench/reference.py), in one run.

    python bench/train_speed.py                        # vae-mnist on fashion-mnist, 3 rounds
    python bench/train_speed.py --preset seed-ae --dataset mnist-5k

Both train the same architecture on the same training images with Adam; epochs alternate between
the two recipes so both see the same machine state. Prints seconds per epoch (median of rounds
after the first, which warms up), images per second, achieved GFLOP/s and the share of a matrix-
multiply peak measured here, then aelab's speed-up over the reference against the target.
"""
from __future__ import annotations

import argparse
import statistics
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="vae-mnist", choices=("vae-mnist", "seed-ae"))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--rounds", type=int, default=3, help="epochs per recipe (first one is warm-up)")
    args = p.parse_args()

    raw = load_raw(args.dataset)
    images = raw.train_images                       # uint8 (N, 1, 28, 28), same for both
    n = len(images)
    cfg = resolve_config(args.preset, overrides={"data.name": args.dataset})
    cfg.model.input_shape = tuple(images.shape[1:])

    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = make_optimizer(model, cfg.train.lr)
    batches = Batches(Split(torch.from_numpy(images), None), cfg.train.batch_size, shuffle=True)
    ref_model, _, loader, step = make_reference(args.preset, images)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in ref_model.parameters()), "architectures differ"

    times = {"reference (DataLoader)": [], "aelab": []}
    for epoch in range(args.rounds):
        start = time.perf_counter()
        train_epoch(loader, step)
        times["reference (DataLoader)"].append(time.perf_counter() - start)
        batches.set_epoch(epoch)
        with flush_denormal():
            start = time.perf_counter()
            train_one_epoch(model, opt, batches)
            times["aelab"].append(time.perf_counter() - start)

    peak = matmul_peak_gflops()
    flops = linear_flops_per_image(model) * n
    print(f"{args.preset} on {raw.name}: {n} training images, batch {cfg.train.batch_size}, "
          f"{n_params:,} parameters, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matrix-multiply peak measured now: {peak:.1f} GFLOP/s; "
          f"matmul floor for one epoch: {flops / peak / 1e9:.2f} s")
    print(f"{'recipe':<24}{'s/epoch':>9}{'images/s':>11}{'GFLOP/s':>9}{'% peak':>8}   all epochs (s)")
    medians = {}
    for name, ts in times.items():
        med = statistics.median(ts[1:] if len(ts) > 1 else ts)
        medians[name] = med
        print(f"{name:<24}{med:>9.2f}{n / med:>11,.0f}{flops / med / 1e9:>9.1f}"
              f"{100 * flops / med / 1e9 / peak:>7.0f}%   {', '.join(f'{t:.2f}' for t in ts)}")
    speedup = medians["reference (DataLoader)"] / medians["aelab"]
    verdict = "meets" if speedup >= TARGET_SPEEDUP else "BELOW"
    print(f"aelab speed-up over the reference: {speedup:.2f}x ({verdict} the {TARGET_SPEEDUP:.1f}x target)")


if __name__ == "__main__":
    main()
