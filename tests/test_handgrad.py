"""Hand-written gradients: the same loss, parts and gradients as autograd, used only where covered."""
from __future__ import annotations

import pytest
import torch

from aelab import handgrad
from aelab.config import list_presets, resolve_config
from aelab.data import Batches, Split
from aelab.models import build_model, model_config_from_dict
from aelab.optim import make_optimizer
from aelab.train import train_one_epoch


def model_of(options: dict, shape=(1, 6, 5)):
    torch.manual_seed(0)
    return build_model(model_config_from_dict({"input_shape": shape, **options})).double()


def both_ways(model, x, seed=1):
    """(autograd's output and grads, the hand-written ones), with the same noise."""
    torch.manual_seed(seed)
    out = model(x)
    out.loss.backward()
    auto = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        hand_out = model.loss_and_gradients(x)
    hand = {n: p.grad for n, p in model.named_parameters()}
    return out, auto, hand_out, hand


COVERED = [
    {"name": "vae"},
    {"name": "vae", "likelihood": "mse", "latent_dim": 3},
    {"name": "vae", "beta": 4.0, "hidden_dims": (12, 8, 6)},
    {"name": "vae", "hidden_dims": ()},
    {"name": "ae", "latent_dim": 4},
    {"name": "ae", "loss": "bce", "hidden_dims": (9,)},
    {"name": "ae", "hidden_dims": ()},
]


@pytest.mark.parametrize("options", COVERED, ids=lambda o: "-".join(map(str, o.values())))
def test_loss_terms_and_every_gradient_equal_autograds(options):
    model = model_of(options, shape=(2, 6, 5))
    assert model.hand_gradients
    x = torch.rand(7, 2, 6, 5, dtype=torch.float64)
    out, auto, hand_out, hand = both_ways(model, x)
    torch.testing.assert_close(hand_out.loss, out.loss.detach())
    assert hand_out.terms.keys() == out.terms.keys()
    for key in out.terms:
        torch.testing.assert_close(hand_out.terms[key], out.terms[key].detach())
    torch.testing.assert_close(hand_out.z, out.z.detach())
    torch.testing.assert_close(hand_out.logits, out.logits.detach())
    assert hand.keys() == auto.keys()
    for name in auto:
        torch.testing.assert_close(hand[name], auto[name], rtol=1e-9, atol=1e-12, msg=name)


def test_the_kl_weight_of_a_warm_up_enters_the_gradients():
    model = model_of({"name": "vae", "kl_warmup": 4})
    model.start_epoch(2)                           # weight 1/4
    assert model.kl_weight == 0.25
    out, auto, hand_out, hand = both_ways(model, torch.rand(5, 1, 6, 5, dtype=torch.float64))
    torch.testing.assert_close(hand_out.loss, out.loss.detach())
    for name in auto:
        torch.testing.assert_close(hand[name], auto[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("options", [
    {"name": "vae", "arch": "conv", "conv_channels": (4,)},
    {"name": "vae", "likelihood": "gaussian"},
    {"name": "vae", "likelihood": "continuous-bernoulli"},
    {"name": "ae", "sparsity": "l1:0.1"},
    {"name": "ae", "noise": "mask:0.2"},
    {"name": "ae", "contractive": 0.1},
    {"name": "cvae", "n_classes": 3},
    {"name": "iwae"},
    {"name": "m2", "n_classes": 3},
    {"name": "m1m2", "n_classes": 3},
    {"name": "vqvae"},
], ids=lambda o: "-".join(map(str, o.values())))
def test_configurations_it_does_not_cover_say_so(options):
    assert not model_of(options, shape=(1, 8, 8)).hand_gradients


HAND_PRESETS = {"vae-mnist", "seed-ae", "seed-vae", "beta-vae"}   # the plain MLP models


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_every_preset_that_uses_them_gets_autograds_gradients(preset):
    """The presets with plain MLP models train on hand-written gradients, and they are autograd's
    for every parameter (a guard for future families and options too); the others use autograd."""
    cfg = resolve_config(preset)
    cfg.model.input_shape, cfg.model.n_classes = (1, 8, 8), 3
    torch.manual_seed(0)
    model = build_model(cfg.model).double()
    assert model.hand_gradients == (preset in HAND_PRESETS)
    if model.hand_gradients:
        out, auto, hand_out, hand = both_ways(model, torch.rand(6, 1, 8, 8, dtype=torch.float64))
        torch.testing.assert_close(hand_out.loss, out.loss.detach())
        for name in auto:
            torch.testing.assert_close(hand[name], auto[name], rtol=1e-9, atol=1e-12, msg=name)


def test_is_mlp_accepts_blocks_mlp_only():
    from torch import nn
    from aelab.models.blocks import mlp
    assert handgrad.is_mlp(mlp(4, (3, 2), 1)) and handgrad.is_mlp(mlp(4, (), 1))
    assert not handgrad.is_mlp(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 1)))
    assert not handgrad.is_mlp(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
    assert not handgrad.is_mlp(nn.Linear(4, 3))


def train_twice(name: str, images: torch.Tensor, **kwargs):
    """Weights after one epoch with hand-written gradients and with autograd, same data and noise."""
    weights = []
    for hand in (True, False):
        torch.manual_seed(0)
        model = build_model(model_config_from_dict({"name": name, "input_shape": (1, 8, 8),
                                                    "latent_dim": 3, "hidden_dims": (32,)}))
        batches = Batches(Split(images, None), 16, shuffle=True, seed=0)
        batches.set_epoch(1)
        means = train_one_epoch(model, make_optimizer(model, 1e-3), batches, hand_gradients=hand, **kwargs)
        weights.append(([p.detach().clone() for p in model.parameters()], means))
    return weights


@pytest.mark.parametrize("name", ["ae", "vae"])
def test_an_epoch_trains_to_the_same_weights_as_autograd(name):
    images = torch.randint(0, 256, (128, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    (hand, hand_means), (auto, auto_means) = train_twice(name, images)
    for a, b in zip(hand, auto):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert hand_means.keys() == auto_means.keys()
    for key in auto_means:
        assert hand_means[key] == pytest.approx(auto_means[key], rel=1e-5)


def test_the_trainer_uses_them_only_where_asked_and_covered(monkeypatch):
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    calls = []
    original = build_model(model_config_from_dict({"name": "vae", "input_shape": (1, 8, 8)})).__class__.loss_and_gradients

    def counting(self, x, y=None):
        calls.append(len(x))
        return original(self, x, y)

    monkeypatch.setattr("aelab.models.vae.VAE.loss_and_gradients", counting)
    model = build_model(model_config_from_dict({"name": "vae", "input_shape": (1, 8, 8)}))
    opt = make_optimizer(model, 1e-3)
    batches = Batches(Split(images, None), 16)
    train_one_epoch(model, opt, batches)
    assert calls == [16] * 4
    for kwargs in ({"hand_gradients": False}, {"precision": "bf16"}):
        calls.clear()
        train_one_epoch(model, opt, batches, **kwargs)
        assert calls == []
