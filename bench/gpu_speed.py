"""Epoch time on a GPU: aelab against the same PyTorch recipe on that GPU, in one run.

    python bench/gpu_speed.py --data-dir .gpu_data          # on the GPU machine: the RESULTS.md table
    python bench/gpu_speed.py --device cpu --epochs 2 --limit 2000    # a quick check that it runs

For each of vae-mnist and seed-ae, on full-size data (Fashion-MNIST's 60,000 training images from
--data-dir, a folder of IDX files, else the registered dataset), in this order:
- reference: bench/reference.py, the usual recipe (per-sample Dataset + DataLoader, plain Adam),
  with its model on the GPU and each batch moved there;
- aelab: the whole split on the GPU as uint8, fused Adam, the loss read once per epoch (fp32),
  hand-written gradients (aelab.handgrad);
- aelab autograd: the same with autograd's gradients (`train.hand_gradients: false`);
- aelab bf16: the same with the forward under bf16 autocast (`train --precision bf16`);
- aelab tf32: the same fp32 training with TF32 matrix products (`--matmul-precision high`);
- aelab compile: the same as aelab with the model's forward through torch.compile (`--compile`;
  its first epoch, which compiles, is left out of the median like every first epoch).
Prints seconds per epoch (median after the first), images per second, peak GPU memory
(torch.cuda.max_memory_allocated, since that recipe started) and the speed-up over the reference,
as a Markdown table for bench/RESULTS.md. A recipe that fails prints its one-line reason instead.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from reference import make_reference  # noqa: E402

from aelab.config import resolve_config  # noqa: E402
from aelab.data import Batches, Split  # noqa: E402
from aelab.datasets import load_idx_folder, load_raw  # noqa: E402
from aelab.models import build_model  # noqa: E402
from aelab.train import flush_denormal, make_optimizer, train_one_epoch  # noqa: E402

PRESETS = ("vae-mnist", "seed-ae")
RECIPES = ("reference", "aelab", "aelab autograd", "aelab bf16", "aelab tf32", "aelab compile")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def time_reference(preset: str, images: np.ndarray, epochs: int, device: torch.device) -> list[float]:
    _, _, loader, step = make_reference(preset, images, device=str(device))
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for x, _ in loader:
            step(x)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def time_aelab(recipe: str, preset: str, images: np.ndarray, epochs: int, device: torch.device
               ) -> list[float]:
    cfg = resolve_config(preset)
    cfg.model.input_shape = tuple(images.shape[1:])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    opt = make_optimizer(model, cfg.train.lr)
    net = torch.compile(model) if recipe == "aelab compile" else model
    batches = Batches(Split(torch.from_numpy(images).to(device), None), cfg.train.batch_size,
                      shuffle=True)
    times = []
    with flush_denormal():
        for epoch in range(epochs):
            batches.set_epoch(epoch)
            start = time.perf_counter()
            train_one_epoch(net, opt, batches, precision="bf16" if recipe == "aelab bf16" else "fp32",
                            matmul_precision="high" if recipe == "aelab tf32" else "highest",
                            hand_gradients=recipe != "aelab autograd")
            synchronize(device)       # train_one_epoch reads its sums once at the end; be sure
            times.append(time.perf_counter() - start)
    return times


def measure(recipe: str, preset: str, images: np.ndarray, epochs: int, device: torch.device) -> dict:
    """{'s_epoch', 'times', 'memory_mib'} or {'error': one line}."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if recipe == "reference":
            times = time_reference(preset, images, epochs, device)
        else:
            times = time_aelab(recipe, preset, images, epochs, device)
    except Exception as e:                       # a row that cannot be measured says why
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
    median = statistics.median(times[1:] if len(times) > 1 else times)
    return {"s_epoch": median, "times": times, "memory_mib": peak_memory_mib(device)}


def print_table(preset: str, n_images: int, rows: dict[str, dict]) -> None:
    ref = rows["reference"].get("s_epoch")
    print(f"\n{preset}: {n_images:,} training images\n")
    print("| recipe | s/epoch | images/s | peak GPU memory (MiB) | speed-up over reference | all epochs (s) |")
    print("|---|---|---|---|---|---|")
    for recipe, r in rows.items():
        if "error" in r:
            print(f"| {recipe} | failed: {r['error']} | | | | |")
            continue
        memory = "-" if r["memory_mib"] is None else f"{r['memory_mib']:,.0f}"
        speedup = f"{ref / r['s_epoch']:.2f}x" if ref else "-"
        times = ", ".join(f"{t:.3f}" for t in r["times"])
        print(f"| {recipe} | {r['s_epoch']:.3f} | {n_images / r['s_epoch']:,.0f} | {memory} | "
              f"{speedup} | {times} |")


def load_images(data_dir: str | None, dataset: str, limit: int) -> tuple[np.ndarray, str]:
    raw = load_idx_folder(data_dir, name=dataset) if data_dir else load_raw(dataset)
    images = np.asarray(raw.train_images)
    return (images[:limit] if limit else images), (data_dir or dataset)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="folder of IDX files (Fashion-MNIST's, carried to the GPU machine)")
    p.add_argument("--dataset", default="fashion-mnist", help="registered dataset when no --data-dir")
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=4, help="epochs per recipe; the first is a warm-up")
    p.add_argument("--limit", type=int, default=0, help="first LIMIT training images only (0: all)")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    args = p.parse_args()
    device = torch.device(args.device)
    images, source = load_images(args.data_dir, args.dataset, args.limit)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; data: {source}; {args.epochs} epochs per "
          f"recipe, median after the first", flush=True)
    for preset in args.presets:
        rows = {}
        for recipe in ("reference", *(r for r in args.recipes if r != "reference")):
            rows[recipe] = measure(recipe, preset, images, args.epochs, device)
            print(f"  {preset} {recipe}: {rows[recipe].get('s_epoch', rows[recipe].get('error'))}",
                  file=sys.stderr, flush=True)
        print_table(preset, len(images), rows)


if __name__ == "__main__":
    main()
