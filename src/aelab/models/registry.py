"""The model registry: a family is added by decorating its class with ``@register(name)``."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..typed import dataclass_from_dict, suggest

if TYPE_CHECKING:
    from .base import Autoencoder, ModelConfig

_MODELS: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a model family buildable from config by ``name``."""
    def add(cls):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        cls.family = name
        _MODELS[name] = cls
        return cls
    return add


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_class(name: str) -> type[Autoencoder]:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}{suggest(name, _MODELS)}")
    return _MODELS[name]


def model_config_class(name: str) -> type[ModelConfig]:
    return model_class(name).config_cls


def model_config_from_dict(values: dict) -> ModelConfig:
    """Build the config of the family named by ``values['name']``; unknown options are errors."""
    if not isinstance(values, dict) or "name" not in values:
        raise ConfigError("the model section needs a 'name' (one of: " + ", ".join(list_models()) + ")")
    name = str(values["name"])
    known = _option_names(name)
    for key in (key for key in values if key not in known):
        owners = [family for family in list_models() if key in _option_names(family)]
        if owners:
            raise ConfigError(f"model.{key} is an option of {', '.join(owners)}, not of {name} "
                              f"(set the family with --model or model.name)")
    return dataclass_from_dict(model_config_class(name), values, "model.")


def _option_names(family: str) -> set[str]:
    return {f.name for f in dataclasses.fields(model_config_class(family)) if f.init}


def build_model(cfg: ModelConfig) -> Autoencoder:
    return model_class(cfg.name)(cfg)
