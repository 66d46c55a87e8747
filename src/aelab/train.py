"""The training loop: plain PyTorch, whole splits in memory, Adam, one line per epoch."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from . import __version__
from .config import RunConfig, check_device
from .data import Batches, Split, check_labels, load_splits
from .denormals import flush_denormal
from . import distributed
from .checkpoint import load_checkpoint, rng_states, save_checkpoint
from .errors import AelabError, ConfigError, DataError
from .evaluate import evaluate, mean_loss
from .models import Autoencoder, build_model, model_class
from .optim import make_optimizer
from .runs import (create_run_dir, read_run_info, save_model, write_config, write_metrics,
                   write_run_info)
from .viz import save_grid, save_loss_curve, save_reconstructions

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    model: Autoencoder
    history: list[dict]
    test_metrics: dict[str, float]


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist."""
    check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this PyTorch sees no CUDA GPU")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' asked for, but it is not available here")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def float32_matmul_precision(precision: str):
    """torch.set_float32_matmul_precision(precision) inside, the caller's setting back after.

    ``medium`` lets float32 matrix products take bf16 inputs with float32 sums (oneDNN on CPUs
    with AMX, tensor cores on GPUs); ``high`` allows TF32 on GPUs; ``highest`` is plain fp32."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class Diverged(AelabError):
    """The loss or the gradients stopped being finite numbers."""


def train_one_epoch(model: Autoencoder, opt: torch.optim.Optimizer, batches: Batches,
                    progress: bool = False, desc: str = "", grad_clip: float = 0.0,
                    precision: str = "fp32", matmul_precision: str = "highest",
                    hand_gradients: bool = True) -> dict[str, float]:
    """One pass over the batches; returns the per-image mean of the loss and its parts.

    ``precision`` bf16 runs the forward pass under bf16 autocast (the products in bf16, the loss
    and the weights' gradients in fp32, as autocast chooses per operation). ``matmul_precision``
    is torch's float32 matmul precision for this pass alone (``float32_matmul_precision``).
    ``hand_gradients``: where the model has them (``Autoencoder.hand_gradients``; not through a
    DDP or torch.compile wrapper, nor under autocast), take the gradients from its
    ``loss_and_gradients`` rather than from autograd: the same gradients, a faster step.

    Sums stay on the device. The loss is checked for NaN/Inf every step on the CPU (free there)
    and every 50 steps on an accelerator, so that no step waits for the host; a non-finite loss
    or gradient norm raises Diverged naming the step (1-based within the epoch).
    """
    model.train()
    check_every = 1 if next(model.parameters()).device.type == "cpu" else 50
    names, total, n = None, None, 0
    bar = _progress_bar(len(batches), desc) if progress else None
    device_type = next(model.parameters()).device.type
    by_hand = (hand_gradients and precision == "fp32" and isinstance(model, Autoencoder)
               and model.hand_gradients)
    with float32_matmul_precision(matmul_precision):
        for step, (x, y) in enumerate(batches, start=1):
            if by_hand:
                with torch.no_grad():
                    out = model.loss_and_gradients(x, y)
            else:
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    out = model(x, y)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
            if grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                if not torch.isfinite(norm):
                    raise Diverged(f"the gradient norm became {norm.item()} at step {step}")
            if step % check_every == 0 and not math.isfinite(out.loss.item()):
                raise Diverged(f"the loss became {out.loss.item()} at step {step}")
            opt.step()
            parts = torch.stack([out.loss.detach(), *(t.detach() for t in out.terms.values())])
            if total is None:
                names, total = ["loss", *out.terms], parts * len(x)
            else:
                total.add_(parts, alpha=len(x))
            n += len(x)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    counted = distributed.all_reduce_sum(torch.cat([total, total.new_tensor([n])]))  # all processes
    means = dict(zip(names, (counted[:-1] / counted[-1]).tolist()))
    if not all(map(math.isfinite, means.values())):
        raise Diverged(f"the loss became non-finite within the last {check_every} steps")
    return means


def train(cfg: RunConfig, out: str | None = None, progress: bool | None = None,
          resume: str | None = None) -> TrainResult:
    """Train ``cfg`` and write its run folder. Returns the folder, model, history and test metrics.

    With ``resume`` (a run folder) training continues after that run's last checkpoint, with its
    config (``cfg.train.epochs`` may be raised), and ends exactly as an uninterrupted run would.

    Subnormal floats are flushed to zero for the whole call, on torch's worker threads too
    (``aelab.denormals``), and the caller's setting is put back after. Under torchrun the
    process group is taken down at the end; after an error it is left for the process to end.
    """
    with flush_denormal():
        result = _train(cfg, out, progress, resume)   # on an error under torchrun the process group
        distributed.teardown()                        # stays: taking it down while another
        return result                                 # process waits in it can abort this one


def _train(cfg: RunConfig, out: str | None, progress: bool | None, resume: str | None) -> TrainResult:
    device = resolve_device(cfg.device)
    ranks = distributed.setup(device)          # rank 0 of 1 unless started by torchrun
    device = distributed.local_device(device, ranks)
    seed_everything(cfg.train.seed + ranks.rank)   # own noise per process; DDP syncs the weights
    if cfg.data.labels is not None and not model_class(cfg.model.name).partial_labels:
        raise ConfigError(f"--labels hides training labels, and a {cfg.model.name} cannot learn "
                          "from partly labelled data; use --model m2")
    splits = load_splits(cfg.data, cfg.train.seed, device)
    cfg.data.name = splits.name                  # record the data really used (mnist-5k fallback)
    if cfg.data.data_dir:                        # so that eval, sample, ... find it from any folder
        cfg.data.data_dir = os.path.abspath(cfg.data.data_dir)
    cfg.model.input_shape = splits.train.image_shape
    cfg.model.n_classes = splits.n_classes
    n_labelled = len(splits.train) if splits.labelled is None else len(splits.labelled)
    model_class(cfg.model.name).fit_config(cfg.model, len(splits.train), n_labelled)  # -> config.yaml
    model = build_model(cfg.model).to(device)
    if model.needs_labels and splits.train.labels is None:
        raise DataError(f"a {cfg.model.name} trains on labels, and this data has no label files")
    if model.needs_labels:
        for part in ("val", "test"):
            split = getattr(splits, part)
            if len(split) and split.labels is None and not model.partial_labels:   # m2 evaluates
                raise DataError(f"a {cfg.model.name} is evaluated with the labels of its {part} "
                                "images, and this data has none for them")   # unlabelled ones too
            check_labels(split, cfg.model.n_classes, f"{part} split")
    opt = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    info = {"aelab_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": str(device), "data": splits.describe(),
            "n_parameters": sum(p.numel() for p in model.parameters())}
    main = ranks.is_main                       # only rank 0 prints and writes
    if resume:
        run_dir = Path(resume)
        state = load_checkpoint(run_dir, model, opt, rank=ranks.rank)
        done, history = state["epoch"], state["history"]   # a cut-short epoch is done again
        if cfg.train.epochs < done:
            raise ConfigError(f"{run_dir} has trained {done} epochs already; --epochs must be "
                              f"{done} or more to resume it, got {cfg.train.epochs}")
        before = read_run_info(run_dir)
        info["created"] = before.get("created", info["created"])
        world_before = before.get("world_size", 1)
        if world_before != ranks.world_size:
            log.warning("%s was trained with %d process(es) and resumes with %d: it continues "
                        "correctly, but not bit for bit as it would have", run_dir, world_before,
                        ranks.world_size)
        log.info("resuming %s after epoch %d of %d", run_dir, done, cfg.train.epochs)
    else:
        run_dir = create_run_dir(out, cfg.preset or cfg.model.name) if main else Path(out or ".")
        done, history = 0, []
    if main:
        write_config(run_dir, cfg)
        write_run_info(run_dir, {**info, "world_size": ranks.world_size})
    log.info("training %s (%s parameters) on %s: %d train / %d val / %d test images, device %s%s",
             cfg.model.name, f"{info['n_parameters']:,}", splits.name, len(splits.train),
             len(splits.val), len(splits.test), device,
             f", {ranks.world_size} processes" if ranks.enabled else "")

    # with hidden labels, a minibatch of the labelled images joins every batch
    labelled = None if splits.labelled is None else splits.train.known()
    batches = Batches(splits.train, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed,
                      binarize=cfg.data.binarize, rank=ranks.rank, world=ranks.world_size,
                      labelled=labelled, labelled_batch=min(cfg.data.labelled_batch, n_labelled))
    val_batches = Batches(splits.val, 1000, binarize=cfg.data.binarize, rank=ranks.rank,
                          world=ranks.world_size)
    net = model
    if ranks.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)
    progress = (sys.stderr.isatty() if progress is None else progress) and main
    for epoch in range(done + 1, cfg.train.epochs + 1):
        batches.set_epoch(epoch)
        model.start_epoch(epoch)
        start = time.perf_counter()
        try:
            train_means = train_one_epoch(net, opt, batches, progress,
                                          f"epoch {epoch}/{cfg.train.epochs}", cfg.train.grad_clip,
                                          cfg.train.precision, cfg.train.matmul_precision,
                                          cfg.train.hand_gradients)
        except Diverged as e:
            kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no checkpoint yet"
            raise Diverged(f"training stopped in epoch {epoch}: {e}; {kept} in {run_dir}; "
                           "try a lower --lr or --set train.grad_clip=1.0") from None
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, "train_loss": train_means.pop("loss")}
        if len(splits.val):
            val_means = mean_loss(model, val_batches)
            record["val_loss"] = val_means.pop("loss")
            record.update({f"val_{k}": v for k, v in val_means.items()})
        record.update({f"train_{k}": v for k, v in train_means.items()})
        record.update(model.epoch_stats())
        record["train_seconds"] = round(seconds, 4)
        history.append(record)
        ranks_rng = distributed.gather_objects(rng_states())   # every process's noise, for resume
        if main:   # the checkpoint first: it holds the history that metrics.jsonl shows
            save_checkpoint(run_dir, model, opt, epoch, epoch * len(batches), history, ranks_rng)
            write_metrics(run_dir, history)
            save_model(run_dir, model)
        log.info(_epoch_line(record, cfg.train.epochs))

    model.after_training(Batches(splits.train, cfg.train.batch_size))
    test_metrics = evaluate(model, splits.test)
    if main:
        save_model(run_dir, model)
        write_pictures(run_dir, model, splits.test, history, cfg)
        write_run_info(run_dir, {**info, "world_size": ranks.world_size, "test_metrics": test_metrics})
    log.info("test: %s", "  ".join(f"{k} {v:.5g}" for k, v in test_metrics.items()))
    log.info("run folder: %s", run_dir)
    distributed.barrier()                      # leave together: gloo aborts if a peer quits early
    return TrainResult(run_dir, model, history, test_metrics)


@torch.no_grad()
def write_pictures(run_dir: Path, model: Autoencoder, test: Split, history: list[dict],
                   cfg: RunConfig) -> None:
    model.eval()
    x, y = test.spread(32), test.spread_labels(32)
    save_reconstructions(x, model.reconstruct(x, y), run_dir / "reconstructions.png")
    save_loss_curve(history, run_dir / "loss.png", title=cfg.preset or cfg.model.name)
    if model.can_sample:
        gen = torch.Generator(device=x.device).manual_seed(cfg.train.seed)
        save_grid(model.sample(64, generator=gen), run_dir / "samples.png")


def _epoch_line(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"train_loss {record['train_loss']:.5g}"]
    if "val_loss" in record:
        parts.append(f"val_loss {record['val_loss']:.5g}")
    parts.append(f"{record['train_seconds']:.1f} s")
    return "  ".join(parts)


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, unit="batch", file=sys.stderr)
