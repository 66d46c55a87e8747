"""Checkpoints for exact resume: model, optimizer, epoch, step and every RNG state, in one
safetensors file (tensors) with JSON metadata (everything else). Nothing is pickled.

Under several processes each draws its own noise, so the RNG states of every rank are saved
(``rng_states``, gathered by the trainer) and each rank restores its own on resume.

Written atomically at the end of every epoch, so a kill at any moment, even during the write,
leaves the previous checkpoint loadable.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from .errors import RunError
from .runs import atomic_write

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_VERSION = 1


def rng_states() -> dict:
    """This process's RNG states: torch (CPU, and CUDA devices in use), numpy and python."""
    np_state = np.random.get_state()
    states = {"torch": torch.get_rng_state(),
              "numpy": [np_state[0], np_state[1].tolist(), *map(_plain_number, np_state[2:])],
              "python": _listify(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    epoch: int, step: int, history: list[dict] | None = None,
                    ranks_rng: list[dict] | None = None) -> None:
    """Everything needed to continue after ``epoch`` (1-based) exactly as if never stopped,
    including the per-epoch records so far (metrics.jsonl is rebuilt from them on resume).
    ``ranks_rng``: every process's ``rng_states()`` in rank order (default: this process's)."""
    from safetensors.torch import save
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state = opt.state_dict()
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    ranks_rng = ranks_rng or [rng_states()]
    for rank, rng in enumerate(ranks_rng):    # rank 0's under the names of a 1-process run
        suffix = f".rank{rank}" if rank else ""
        tensors["rng.torch" + suffix] = rng["torch"]
        for i, s in enumerate(rng.get("cuda", [])):
            tensors[f"rng.cuda.{i}{suffix}"] = s
    meta = {
        "checkpoint_version": CHECKPOINT_VERSION, "epoch": epoch, "step": step,
        "history": history or [],
        "param_groups": state["param_groups"],
        "rng_numpy": ranks_rng[0]["numpy"], "rng_python": ranks_rng[0]["python"],
        "rng_ranks": [{"numpy": r["numpy"], "python": r["python"]} for r in ranks_rng[1:]],
    }
    atomic_write(run_dir / CHECKPOINT_FILE, save(tensors, metadata={"aelab": json.dumps(meta)}))


def load_checkpoint(run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    rank: int = 0) -> dict:
    """Restore model, optimizer and the RNG states of process ``rank`` (rank 0's for a rank the
    checkpoint has none of) from a run's checkpoint; returns epoch, step and the history."""
    from safetensors import SafetensorError, safe_open
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        raise RunError(f"{run_dir} has no {CHECKPOINT_FILE}: nothing to resume")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["aelab"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise RunError(f"{path} cannot be read: {str(e).splitlines()[0]}") from None
    if meta.get("checkpoint_version", 0) > CHECKPOINT_VERSION:
        raise RunError(f"{path} is of a newer checkpoint format than this aelab understands")
    device = next(model.parameters()).device
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            value = value.to(device) if value.ndim else value   # Adam keeps `step` on the CPU
            per_param.setdefault(int(index), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    opt.load_state_dict({"state": per_param, "param_groups": groups})
    others = meta.get("rng_ranks", [])
    own = 0 < rank <= len(others)
    suffix = f".rank{rank}" if own else ""
    torch.set_rng_state(tensors["rng.torch" + suffix])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.") and k.endswith(suffix)
                   and (own or ".rank" not in k)), key=lambda k: int(k.split(".")[2]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, keys, *rest = others[rank - 1]["numpy"] if own else meta["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    random.setstate(_tuplify(others[rank - 1]["python"] if own else meta["rng_python"]))
    return {"epoch": meta["epoch"], "step": meta["step"], "history": meta.get("history", [])}


def _plain_number(x):
    return x.item() if hasattr(x, "item") else x


def _listify(x):
    return [_listify(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x
