"""The model-family checks of issue 3, measured on finished run folders (Fashion-MNIST runs).

    python bench/family_checks.py RUNS_DIR

RUNS_DIR holds runs named after their presets (seed-ae, denoising-gauss, sparse-ae, vae-mnist,
conv-vae, iwae, cvae, vqvae, ...), e.g. made with
`aelab train --preset P --dataset fashion-mnist --out RUNS_DIR/P`. Prints the model table
(family, parameters, seconds per epoch, test recon_mse, test elbo) and each check's figures.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from aelab.corruption import corrupt
from aelab.data import Batches, load_splits
from aelab.evaluate import evaluate
from aelab.losses import iwae_bound
from aelab.runs import load_run


def load(runs: Path, name: str):
    path = runs / name
    if not (path / "model.safetensors").exists():
        return None
    cfg, model, info = load_run(path)
    splits = load_splits(cfg.data, cfg.train.seed)
    history = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    return cfg, model, info, splits, history


@torch.no_grad()
def denoised_mse(model, split, spec="gaussian:0.5", seed=0) -> float:
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for x, _ in Batches(split, 1000):
        total += (model.reconstruct(corrupt(x, spec, generator=gen)) - x).square().mean(dim=(1, 2, 3)).sum().item()
    return total / len(split)


@torch.no_grad()
def k_sample_bound(model, split, k=5, seed=0) -> float:
    torch.manual_seed(seed)
    total = 0.0
    for x, y in Batches(split, 500):
        log_w = model.log_weights(x, k, y if model.needs_labels else None)[0]
        total += iwae_bound(log_w).sum().item()
    return total / len(split)


def train_classifier(train, test, epochs=8, seed=0):
    """A small conv net on the real training images; returns it and its test accuracy."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 7 * 7, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = Batches(train, 128, shuffle=True, seed=seed)
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        net.train()
        for x, y in batches:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        correct = sum((net(x).argmax(1) == y).sum().item() for x, y in Batches(test, 1000))
    return net, correct / len(test)


def main(runs: Path) -> None:
    runs = Path(runs)
    loaded = {p.name: load(runs, p.name) for p in sorted(runs.iterdir()) if p.is_dir()}
    loaded = {k: v for k, v in loaded.items() if v}
    print(f"{'run':<18}{'family':<8}{'arch':<6}{'params':>11}{'s/epoch':>9}{'recon_mse':>11}{'elbo':>10}")
    tests = {}
    for name, (cfg, model, info, splits, history) in loaded.items():
        m = info["test_metrics"]
        secs = statistics.median(r["train_seconds"] for r in history)
        elbo = f"{m['elbo']:.2f}" if "elbo" in m else "-"
        print(f"{name:<18}{cfg.model.name:<8}{cfg.model.arch:<6}{info['n_parameters']:>11,}"
              f"{secs:>9.1f}{m['recon_mse']:>11.5f}{elbo:>10}")
        tests[name] = m

    print()
    if {"seed-ae", "denoising-gauss"} <= set(loaded):
        plain = denoised_mse(loaded["seed-ae"][1], loaded["seed-ae"][3].test)
        denoise = denoised_mse(loaded["denoising-gauss"][1], loaded["denoising-gauss"][3].test)
        print(f"denoising: test images + gaussian noise sigma 0.5, MSE of the output against the clean "
              f"image: plain ae {plain:.5f}, denoising ae {denoise:.5f} -> "
              f"{'lower' if denoise < plain else 'NOT lower'}")
    if {"seed-ae", "sparse-ae"} <= set(loaded):
        cfg, model, _, splits, _ = loaded["sparse-ae"]
        act = evaluate(model, splits.test)["code_mean_activation"]
        ratio = tests["sparse-ae"]["recon_mse"] / tests["seed-ae"]["recon_mse"]
        print(f"sparse: mean code activation {act:.4f} (target {cfg.model.sparsity}); test recon_mse "
              f"{tests['sparse-ae']['recon_mse']:.5f} = {ratio:.2f} x the plain ae's "
              f"({'within' if ratio <= 1.2 else 'NOT within'} 20 %)")
    if {"vae-mnist", "conv-vae"} <= set(loaded):
        a, b = tests["vae-mnist"]["elbo"], tests["conv-vae"]["elbo"]
        print(f"conv vs mlp vae (latent 20): test elbo {b:.2f} vs {a:.2f} -> "
              f"{'higher' if b > a else 'NOT higher'}")
    if {"vae-mnist", "iwae"} <= set(loaded):
        a = k_sample_bound(loaded["vae-mnist"][1], loaded["vae-mnist"][3].test)
        b = k_sample_bound(loaded["iwae"][1], loaded["iwae"][3].test)
        print(f"iwae k=5 vs vae: test 5-sample bound {b:.2f} vs {a:.2f} nats -> "
              f"{'higher' if b > a else 'NOT higher'}")
    if "cvae" in loaded:
        cfg, model, _, splits, _ = loaded["cvae"]
        net, acc = train_classifier(splits.train, splits.test)
        gen = torch.Generator().manual_seed(0)
        per_class = []
        with torch.no_grad():
            for c in range(cfg.model.n_classes):
                x = model.sample(500, generator=gen, labels=torch.full((500,), c))
                per_class.append((net(x).argmax(1) == c).float().mean().item())
        print(f"cvae: classifier test accuracy {acc:.4f}; samples labelled as their class: "
              f"{statistics.mean(per_class):.4f} overall, per class "
              + " ".join(f"{p:.2f}" for p in per_class))
    if {"vqvae", "seed-ae"} <= set(loaded):
        hist = loaded["vqvae"][4][-1]
        print(f"vqvae: test recon_mse {tests['vqvae']['recon_mse']:.5f} vs plain ae "
              f"{tests['seed-ae']['recon_mse']:.5f}; last epoch code usage "
              f"{hist.get('code_usage', float('nan')):.3f}, perplexity {hist.get('code_perplexity', float('nan')):.1f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs"))
