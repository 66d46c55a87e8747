"""Run folders: atomic file writes, the model in safetensors, and loading a finished run.

A run folder holds ``config.yaml``, ``run.json`` (format version, data used, final metrics),
``metrics.jsonl``, ``model.safetensors`` and the PNG pictures.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

from .config import RunConfig, config_from_dict
from .errors import AelabError, RunError
from .models import Autoencoder, build_model

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write a file under a temporary name in the same folder, then rename it into place.

    A failure (a full disk, a missing folder, no permission) leaves any previous file intact,
    removes the temporary one and raises RunError with one line naming the file.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; a new file's usual mode
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = "; the previous file is intact" if path.exists() else ""
            raise RunError(f"cannot write {path}: {e.strerror or e}{kept}") from None
        raise


def _umask() -> int:
    umask = os.umask(0o022)   # the only way to read it is to set it
    os.umask(umask)
    return umask


def create_run_dir(out: str | None, default_name: str) -> Path:
    """Make a fresh run folder; refuse one that already holds files."""
    path = Path(out) if out else Path("runs") / f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} is a file, not a folder; choose another --out")
    if path.exists() and any(path.iterdir()):
        raise RunError(f"{path} already exists and is not empty; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create run folder {path}: {e.strerror}") from None
    return path


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def write_run_info(run_dir: Path, info: dict) -> None:
    info = {"format_version": FORMAT_VERSION, **info}
    atomic_write(run_dir / "run.json", json.dumps(info, indent=2) + "\n")


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def save_model(run_dir: Path, model: Autoencoder) -> None:
    from safetensors.torch import save
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(run_dir / MODEL_FILE, save(tensors))


def read_run_info(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file; give its run folder ({run_dir.parent})")
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not an aelab run folder (no run.json)") from None
    except (OSError, ValueError) as e:
        raise RunError(f"{run_dir}/run.json cannot be read: {e}") from None
    version = info.get("format_version") if isinstance(info, dict) else None
    if not isinstance(version, int):
        raise RunError(f"{run_dir}/run.json has no format_version; not an aelab run folder")
    if version > FORMAT_VERSION:
        raise RunError(f"{run_dir} was written in run format {version}, newer than this aelab "
                       f"understands ({FORMAT_VERSION}); upgrade aelab")
    return info


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"
             ) -> tuple[RunConfig, Autoencoder, dict]:
    """Rebuild a trained model from its run folder: (config, model in eval mode, run info)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    try:
        tree = yaml.safe_load((run_dir / "config.yaml").read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir} has no config.yaml") from None
    except yaml.YAMLError as e:
        raise RunError(f"{run_dir}/config.yaml is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise RunError(f"{run_dir}/config.yaml is not text (not UTF-8)") from None
    try:
        cfg = config_from_dict(tree)
    except AelabError as e:
        raise RunError(f"{run_dir}/config.yaml: {e}") from None
    model_path = run_dir / MODEL_FILE
    if not model_path.exists():
        raise RunError(f"{run_dir} has no {MODEL_FILE}: the run did not finish an epoch")
    model = build_model(cfg.model)
    try:
        state = load_file(str(model_path), device=str(device))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        if lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1:  # its first mismatch
            raise RunError(f"{model_path} does not fit the run's config.yaml: {lines[1]}") from None
        raise RunError(f"{model_path} cannot be loaded: {lines[0]}") from None
    return cfg, model.to(device).eval(), info
