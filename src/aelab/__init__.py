"""aelab: train, evaluate and use autoencoders and variational autoencoders with PyTorch."""
__version__ = "0.1.0"

from .config import RunConfig, list_presets, resolve_config  # noqa: E402
from .errors import AelabError, ConfigError, DataError, RunError  # noqa: E402
from .models import build_model, list_models  # noqa: E402

__all__ = ["AelabError", "ConfigError", "DataError", "RunError", "RunConfig", "build_model",
           "list_models", "list_presets", "resolve_config", "__version__"]
