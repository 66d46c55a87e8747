"""Test quality of aelab against the usual PyTorch recipe trained the same way, in one run.

    python bench/quality.py                            # seed-ae and vae-mnist, fashion-mnist, 10 epochs

Both train on all training images (aelab with val_fraction 0, so the data are the same) and are
scored on the test split: recon_mse per pixel from the code mean; for the VAE the ELBO in nats per
image with z drawn from q(z|x). Targets (issue 2): seed-ae recon_mse within 10 % of the reference,
vae-mnist elbo within 1 nat.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from reference import make_reference, test_metrics, train_epoch  # noqa: E402

from aelab.config import resolve_config  # noqa: E402
from aelab.datasets import load_raw  # noqa: E402
from aelab.train import train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--presets", default="seed-ae,vae-mnist")
    args = p.parse_args()
    raw = load_raw(args.dataset)
    rows = []
    for preset in args.presets.split(","):
        start = time.perf_counter()
        model, _, loader, step = make_reference(preset, raw.train_images)
        for _ in range(args.epochs):
            train_epoch(loader, step)
        ref = test_metrics(model, raw.test_images)
        ref_s = time.perf_counter() - start

        cfg = resolve_config(preset, overrides={"data.name": args.dataset, "data.fallback": False,
                                                "data.val_fraction": 0, "train.epochs": args.epochs})
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            ours = train(cfg, out=str(Path(tmp) / "run"), progress=False).test_metrics
        ours_s = time.perf_counter() - start
        rows.append((preset, ref, ref_s, ours, ours_s))

    print(f"\n{args.dataset}, {args.epochs} epochs, test split ({len(raw.test_images)} images)")
    print(f"{'preset':<10}{'metric':<11}{'reference':>11}{'aelab':>11}{'diff':>10}   target   wall s (ref / aelab)")
    for preset, ref, ref_s, ours, ours_s in rows:
        for metric in ref:
            diff = ours[metric] - ref[metric]
            if metric == "recon_mse":
                target, ok = "within 10 %", abs(diff) <= 0.10 * ref[metric]
                shown = f"{100 * diff / ref[metric]:+.1f} %"
            else:
                target, ok = "within 1 nat", abs(diff) <= 1.0
                shown = f"{diff:+.2f}"
            print(f"{preset:<10}{metric:<11}{ref[metric]:>11.5g}{ours[metric]:>11.5g}{shown:>10}   "
                  f"{target} {'ok' if ok else 'MISSED'}   {ref_s:.0f} / {ours_s:.0f}")


if __name__ == "__main__":
    main()
