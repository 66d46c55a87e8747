"""Model families. Importing a family's module registers it; add new families here."""
from . import ae, cvae, iwae, vae  # noqa: F401  (fills the registry)
from . import vqvae  # noqa: F401
from . import m2  # noqa: F401
from . import m1m2  # noqa: F401
from .base import Autoencoder, ModelConfig, ModelOutput
from .registry import (build_model, list_models, model_class, model_config_class,
                       model_config_from_dict, register)

__all__ = ["Autoencoder", "ModelConfig", "ModelOutput", "build_model", "list_models", "model_class",
           "model_config_class", "model_config_from_dict", "register"]
