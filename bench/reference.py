"""The usual PyTorch recipe, for comparison: a per-sample Dataset that turns each uint8 image into
a float tensor the way torchvision's MNIST with ToTensor does, a DataLoader, the model written out
as in pytorch/examples, the loss on sigmoid outputs, plain (unfused) Adam. Nothing here is aelab.

torchvision itself is not installed (its PyPI wheels do not load beside the CPU build of torch
used here), so its per-sample path is reproduced line for line below."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class ImageDataset(Dataset):
    """One image at a time, as torchvision.datasets.MNIST.__getitem__ followed by ToTensor()."""

    def __init__(self, images: np.ndarray):        # uint8 (N, 1, 28, 28)
        self.data = torch.from_numpy(images[:, 0])   # MNIST keeps (N, 28, 28) uint8

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        img = Image.fromarray(self.data[i].numpy())  # MNIST: "consistent with all other datasets"
        return to_tensor(img), 0


def to_tensor(pic: Image.Image) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor for an 8-bit grey PIL image."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], 1).permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


class ReferenceVAE(nn.Module):
    """pytorch/examples vae/main.py, with the hidden and latent sizes as arguments."""

    def __init__(self, n_in=784, hidden=400, latent=20):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, n_in)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def vae_loss(recon_x, x, mu, logvar):
    """Summed BCE + KL, as in pytorch/examples (per batch, not per image)."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


class ReferenceAE(nn.Module):
    """The study's Part 1 as usually written: nn.Sequential encoder and decoder."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                                     nn.Linear(256, 64))
        self.decoder = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(),
                                     nn.Linear(512, 784), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x.view(-1, 784)))


def make_reference(preset: str, images: np.ndarray, seed: int = 0, device: str = "cpu"):
    """(model, optimizer, loader, step) for 'vae-mnist' or 'seed-ae'; step(x) trains one batch.
    On another ``device`` the model lives there and each batch is moved there in the step."""
    torch.manual_seed(seed)
    if preset == "vae-mnist":
        model, batch_size = ReferenceVAE(), 128
    elif preset == "seed-ae":
        model, batch_size = ReferenceAE(), 64
    else:
        raise ValueError(f"no reference recipe for {preset!r}")
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(ImageDataset(images), batch_size=batch_size, shuffle=True)
    mse = nn.MSELoss()

    def step(x):
        x = x.to(device)
        opt.zero_grad()
        if preset == "vae-mnist":
            recon, mu, logvar = model(x)
            loss = vae_loss(recon, x, mu, logvar)
        else:
            loss = mse(model(x), x.view(-1, 784))
        loss.backward()
        opt.step()
        return loss

    return model, opt, loader, step


def train_epoch(loader, step) -> None:
    for x, _ in loader:
        step(x)


@torch.no_grad()
def test_metrics(model, images: np.ndarray, seed: int = 0) -> dict[str, float]:
    """recon_mse per pixel (from the code mean) and, for the VAE, elbo in nats per image."""
    torch.manual_seed(seed)
    x = torch.from_numpy(images).float().div(255).view(-1, 784)
    if isinstance(model, ReferenceVAE):
        mu, logvar = model.encode(x)
        recon_mean = model.decode(mu)
        recon = model.decode(model.reparameterize(mu, logvar))
        bce = F.binary_cross_entropy(recon, x, reduction="none").sum(1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        return {"recon_mse": F.mse_loss(recon_mean, x).item(), "elbo": -(bce + kl).mean().item()}
    return {"recon_mse": F.mse_loss(model(x), x).item()}
