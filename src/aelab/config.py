"""Run configuration: typed dataclasses, YAML presets and files, and dotted-path overrides.

Precedence, lowest first: dataclass defaults < preset < ``--config`` file < flags.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from .errors import ConfigError
from .models import ModelConfig, model_config_class, model_config_from_dict
from .typed import suggest, typed_kwargs

DEFAULT_PRESET = "vae-mnist"
PRECISIONS = ("fp32", "bf16")
MATMUL_PRECISIONS = ("highest", "high", "medium")     # torch.set_float32_matmul_precision's


@dataclass
class DataConfig:
    name: str = "mnist"            # dataset registry name; ignored when data_dir is set
    data_dir: str | None = None    # your own data: IDX, NumPy or image files (aelab.folders)
    val_fraction: float = 0.1      # share of the training images held out for validation
    binarize: bool = False         # dynamic binarisation: a fresh Bernoulli draw per batch
    fallback: bool = True          # mnist only: use the bundled mnist-5k when mnist cannot be had
    exclude_class: int | None = None   # drop this label from train and val (not test): anomaly runs
    labels: int | None = None      # keep N training labels (N / n_classes per class, seeded), hide
                                   # the rest (-1): semi-supervised runs (m2); None keeps them all
    labelled_batch: int = 10       # with labels: this many labelled images (at most N) join each batch

    def __post_init__(self):
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.exclude_class is not None and self.exclude_class < 0:
            raise ConfigError(f"data.exclude_class must be a label, 0 or more; got {self.exclude_class}")
        if self.labels is not None and self.labels < 1:
            raise ConfigError(f"--labels must be at least 1, got {self.labels}")
        if self.labelled_batch < 1:
            raise ConfigError(f"data.labelled_batch must be at least 1, got {self.labelled_batch}")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3               # Adam
    weight_decay: float = 0.0      # Adam's L2 penalty on all weights
    grad_clip: float = 0.0         # clip the gradients' global norm to this; 0 disables
    seed: int = 0
    precision: str = "fp32"        # fp32 | bf16: the training forward under bf16 autocast
                                   # (weights, Adam and evaluation stay fp32)
    compile: bool = False          # torch.compile the training forward (pays off on GPUs)
    matmul_precision: str = "highest"   # torch.set_float32_matmul_precision while training:
                                   # highest (fp32 products) | high (TF32 on GPUs that have it) |
                                   # medium (bf16 products, fp32 sums: AMX CPUs, GPUs)
    hand_gradients: bool = True    # gradients written out by hand where the model has them
                                   # (aelab.handgrad: plain MLP ae/vae); false: autograd always

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be non-negative, got {self.grad_clip}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be non-negative, got {self.weight_decay}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(f"unknown matmul_precision {self.matmul_precision!r}; choose from "
                              f"{', '.join(MATMUL_PRECISIONS)}")
        if not 0 <= self.seed < 2**32:   # numpy's data split and the shuffle seeds need this range
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: model_config_from_dict({"name": "vae"}))
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"           # auto | cpu | cuda | cuda:N | mps
    preset: str | None = None      # the preset this run started from, for the record

    def __post_init__(self):
        check_device(self.device)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


# ---------------------------------------------------------------- presets


def list_presets() -> dict[str, dict]:
    """Preset name -> its YAML content (with a ``description`` key)."""
    folder = resources.files("aelab") / "presets"
    presets = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            presets[entry.name[: -len(".yaml")]] = yaml.safe_load(entry.read_text())
    return presets


def load_preset(name: str) -> dict:
    presets = list_presets()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}{suggest(name, presets)}")
    preset = dict(presets[name])
    preset.pop("description", None)
    return preset


# ---------------------------------------------------------------- building


def resolve_config(preset: str | None = None, config_file: str | None = None,
                   overrides: dict[str, Any] | None = None) -> RunConfig:
    """Build a RunConfig from a preset, a YAML file and dotted-path overrides (in that order).

    With neither a preset nor a file the default preset is used. When an override changes
    ``model.name``, model options the new family does not have are dropped.
    """
    tree: dict = {}
    if preset or not config_file:
        tree = load_preset(preset or DEFAULT_PRESET)
        tree["preset"] = preset or DEFAULT_PRESET
    if config_file:
        tree = _merge(tree, read_yaml(config_file))
    if not tree.get("model"):   # a file without a model section: the default family, as in
        tree["model"] = {"name": "vae"}   # config_from_dict, before flags add options to it
    # model.name first, so that options set for the new family are not dropped with the old ones
    for path, value in sorted((overrides or {}).items(), key=lambda item: item[0] != "model.name"):
        if path == "model.name" and value != tree.get("model", {}).get("name"):
            tree["model"] = _keep_shared_model_keys(tree.get("model", {}), value)
        _set_path(tree, path, value)
    return config_from_dict(tree)


def check_device(name: str) -> None:
    """Raise ConfigError unless ``name`` is a device aelab knows how to ask for."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"unknown device {name!r}; choose from auto, cpu, cuda, cuda:N, mps")


def config_from_dict(tree: dict) -> RunConfig:
    """Strictly convert a nested dict (from YAML) into a RunConfig; unknown keys are errors."""
    if not isinstance(tree, dict):
        raise ConfigError("a config must be a mapping of sections (data, model, train, ...)")
    tree = dict(tree)
    model = model_config_from_dict(tree.pop("model", {"name": "vae"}) or {"name": "vae"})
    kwargs = typed_kwargs(RunConfig, tree, "", skip={"model"})
    return RunConfig(model=model, **kwargs)


def read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            tree = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not text (not UTF-8): is it the right file?") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path} must be a mapping of sections (data, model, train, ...)")
    return tree


def _keep_shared_model_keys(model: dict, new_name: str) -> dict:
    known = {f.name for f in dataclasses.fields(model_config_class(new_name))}
    return {k: v for k, v in model.items() if k in known}


def _set_path(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {path}: {key} is not a section")
    node[leaf] = value


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if key == "model" and value.get("name", out[key].get("name")) != out[key].get("name"):
                out[key] = dict(value)  # another family: the file's model section stands alone
            else:
                out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _plain(value):
    """Tuples to lists so that yaml.safe_dump writes plain YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
