"""pythae's recipe for bench/train_speed.py: the same network trained by pythae's own trainer.

Run by the python of bench/.venv-pythae (pythae from PyPI, without aelab), which train_speed.py
sets up and calls:

    python bench/pythae_recipe.py --spec JSON --images IMAGES.npy --workdir DIR

SPEC (from aelab's preset): {"family": "vae" | "ae", "input_shape": [1, 28, 28],
"hidden_dims": [400], "latent_dim": 20, "batch_size": 128, "lr": 0.001, "epochs": 10}.
IMAGES.npy: float32 (N, C, H, W) in [0, 1]. Trains with TrainingPipeline (BaseTrainer, Adam, no
eval set; its checkpoints and final model go under DIR) and prints one JSON line on stdout with
the seconds of each epoch, from a TrainingCallback's on_epoch_begin to its on_epoch_end.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from pythae.models import AE, VAE, AEConfig, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.pipelines import TrainingPipeline
from pythae.trainers import BaseTrainerConfig
from pythae.trainers.training_callbacks import TrainingCallback
from torch import nn


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear layers with ReLU between them and none after the last (aelab.models.blocks.mlp)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Encoder(BaseEncoder):
    """Flatten, then the MLP. Gaussian (VAE): one last layer of 2 * latent outputs split into the
    mean and the log-variance, as aelab's VAE does; otherwise the code itself."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], latent: int, gaussian: bool):
        BaseEncoder.__init__(self)
        self.gaussian = gaussian
        self.net = mlp((n_in, *hidden, 2 * latent if gaussian else latent))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = self.net(x.flatten(1))
        if not self.gaussian:
            return ModelOutput(embedding=h)
        mu, logvar = h.chunk(2, dim=-1)
        return ModelOutput(embedding=mu, log_covariance=logvar)


class Decoder(BaseDecoder):
    """The mirrored MLP, then a sigmoid: pythae's losses take probabilities, not logits."""

    def __init__(self, latent: int, hidden: tuple[int, ...], input_shape: tuple[int, ...]):
        BaseDecoder.__init__(self)
        self.input_shape = tuple(input_shape)
        self.net = mlp((latent, *reversed(hidden), math.prod(input_shape)))

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).view(-1, *self.input_shape))


class EpochTimer(TrainingCallback):
    """Seconds of each epoch: the training pass and what the trainer does after it (keeping the
    best model so far), up to on_epoch_end."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, training_config, **kwargs):
        self._start = time.perf_counter()

    def on_epoch_end(self, training_config, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def build_model(spec: dict):
    """pythae's VAE ("bce" reconstruction loss) or AE (its only loss, MSE) with our networks."""
    shape, hidden, latent = tuple(spec["input_shape"]), tuple(spec["hidden_dims"]), spec["latent_dim"]
    gaussian = spec["family"] == "vae"
    encoder = Encoder(math.prod(shape), hidden, latent, gaussian)
    decoder = Decoder(latent, hidden, shape)
    if gaussian:
        config = VAEConfig(input_dim=shape, latent_dim=latent, reconstruction_loss="bce")
        return VAE(config, encoder=encoder, decoder=decoder)
    return AE(AEConfig(input_dim=shape, latent_dim=latent), encoder=encoder, decoder=decoder)


def linear_flops_per_image(model: nn.Module) -> int:
    """As in train_speed.py: multiply-adds of the Linear layers, x2 for FLOPs, x3 for fwd + bwd."""
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return 3 * 2 * macs


def train(spec: dict, images: np.ndarray, workdir: Path) -> dict:
    torch.manual_seed(0)
    model = build_model(spec)
    config = BaseTrainerConfig(output_dir=str(workdir / "pythae-output"), num_epochs=spec["epochs"],
                               learning_rate=spec["lr"], per_device_train_batch_size=spec["batch_size"],
                               optimizer_cls="Adam", steps_saving=None, no_cuda=True)
    timer = EpochTimer()
    TrainingPipeline(model=model, training_config=config)(train_data=images, callbacks=[timer])
    return {"times": timer.times, "n_images": len(images), "batch_size": spec["batch_size"],
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "flops_per_image": linear_flops_per_image(model),
            "pythae_version": version("pythae"), "torch_version": torch.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="the network and training settings, as JSON")
    p.add_argument("--images", required=True, type=Path, help="float32 (N, C, H, W) in [0, 1], .npy")
    p.add_argument("--workdir", required=True, type=Path, help="pythae's output_dir goes under it")
    args = p.parse_args()
    images = np.load(args.images)
    print(json.dumps(train(json.loads(args.spec), images, args.workdir)))


if __name__ == "__main__":
    main()
