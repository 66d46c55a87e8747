"""The model-family checks of issue 3, measured on finished run folders (Fashion-MNIST runs).

    python bench/family_checks.py RUNS_DIR

RUNS_DIR holds runs named after their presets (seed-ae, denoising-gauss, sparse-ae, vae-mnist,
conv-vae, iwae, cvae, vqvae, ...; ae-16: seed-ae with latent_dim 16, the vqvae's code budget),
e.g. made with
`aelab train --preset P --dataset fashion-mnist --out RUNS_DIR/P`. Prints the model table
(family, parameters, seconds per epoch, test recon_mse, test elbo) and each check's figures; for
the cvae, the fraction of its samples (500 per class, 8-bit) that the cached classifier labels
as the class drawn, per class beside the classifier's own accuracy on the real test images and on
the cvae's reconstructions of them.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import torch

from aelab.corruption import corrupt
from aelab.data import Batches, load_splits
from aelab.evaluate import evaluate
from aelab.losses import iwae_bound
from aelab.runs import load_run
from aelab.sample_quality import classifier_for


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


@torch.no_grad()
def quantised_code_mse(model, train, test, bits: int) -> float:
    """Test recon_mse of an ae whose code numbers are each stored in ``bits`` bits: uniform levels
    over each code dimension's range on the training images, the nearest level decoded."""
    codes = torch.cat([model.embed(x) for x, _ in Batches(train, 1000)])
    low, high = codes.min(0).values, codes.max(0).values
    step = (high - low).clamp_min(1e-12) / (2**bits - 1)
    total = 0.0
    for x, _ in Batches(test, 1000):
        z = model.embed(x).clamp(low, high)
        z = low + torch.round((z - low) / step) * step
        total += (torch.sigmoid(model.decode(z)) - x).square().mean(dim=(1, 2, 3)).sum().item()
    return total / len(test)


def per_class(hits, labels, k: int) -> str:
    """The fraction of hits (N,) bool within each class 0..k-1 of labels (N,), as '0.84 0.99 ...'."""
    return " ".join(f"{hits[labels == c].float().mean().item():.2f}" for c in range(k))


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
        clf = classifier_for(cfg.data)        # the cached classifier of `aelab eval --fid`
        k, test = cfg.model.n_classes, splits.test
        labels = torch.arange(500 * k) % k
        with torch.no_grad():
            x = model.sample(len(labels), generator=torch.Generator().manual_seed(0), labels=labels)
            x = x.clamp(0, 1).mul(255).round().div(255)       # 8-bit, like the real images
            right = clf.net.classify(x) == labels
            real = clf.net.classify(test.images) == test.labels
            recon = model.reconstruct(test.images.float() / 255, test.labels)
            recon = clf.net.classify(recon) == test.labels
        prior = cfg.model.prior + (f", ex-post mixtures of {cfg.model.ex_post_components}"
                                   if getattr(cfg.model, "ex_post_components", 0) else "")
        print(f"cvae ({cfg.model.arch}, prior {prior}): samples labelled as their class "
              f"{right.float().mean().item():.4f} ({'at least' if right.float().mean() >= 0.9 else 'NOT'} "
              f"0.90); classifier test accuracy {clf.test_accuracy:.4f}, on the cvae's test "
              f"reconstructions {recon.float().mean().item():.4f}")
        print(f"  per class, samples:          {per_class(right, labels, k)}")
        print(f"  per class, real test images: {per_class(real, test.labels, k)}")
        print(f"  per class, reconstructions:  {per_class(recon, test.labels, k)}")
    if "vqvae" in loaded:
        cfg, model, _, splits, history = loaded["vqvae"]
        m = cfg.model
        n_codes, bits = m.latent_dim // m.code_dim, math.log2(m.codebook_size)
        hist = history[-1]
        print(f"vqvae: {n_codes} codes of {bits:g} bits = {n_codes * bits:g} bits per image; test "
              f"recon_mse {tests['vqvae']['recon_mse']:.5f}; last epoch code usage "
              f"{hist.get('code_usage', float('nan')):.3f}, perplexity "
              f"{hist.get('code_perplexity', float('nan')):.1f}")
        same_bits = f"ae-{n_codes}"
        if same_bits in loaded:
            _, ae, _, ae_splits, _ = loaded[same_bits]
            mse = quantised_code_mse(ae, ae_splits.train, ae_splits.test, round(bits))
            vq = tests["vqvae"]["recon_mse"]
            print(f"  same code budget: the ae with {n_codes} code numbers, each stored in "
                  f"{round(bits)} bits: test recon_mse {mse:.5f} (unquantised "
                  f"{tests[same_bits]['recon_mse']:.5f}) -> vqvae {'lower' if vq < mse else 'NOT lower'}")
        if "seed-ae" in loaded:
            print(f"  for scale, the ae with 64 float32 code numbers (2048 bits): "
                  f"{tests['seed-ae']['recon_mse']:.5f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs"))
