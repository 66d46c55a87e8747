"""What every registered model family must do, on every network (mlp, conv): build, forward,
backward, save/reload, train, metrics."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from aelab.evaluate import UNITS
from aelab.models import Autoencoder, ModelOutput, build_model, list_models, model_config_from_dict
from aelab.models.blocks import ARCHS
from aelab.runs import MODEL_FILE, save_model

CASES = [(name, arch) for name in list_models() for arch in ARCHS]
LABELS = torch.tensor([0, 1, 2, 1])


def tiny_model(name: str, seed: int = 0, arch: str = "mlp") -> Autoencoder:
    torch.manual_seed(seed)
    cfg = model_config_from_dict({"name": name, "input_shape": (1, 8, 8), "latent_dim": 2,
                                  "hidden_dims": (16,), "arch": arch, "conv_channels": (4, 8),
                                  "n_classes": 3})
    return build_model(cfg)


def labels_for(model: Autoencoder, x: torch.Tensor):
    """Labels for label-conditional families, None for the others."""
    return LABELS[: len(x)] if model.needs_labels else None


def embed(model, x):
    return model.embed(x, labels_for(model, x)) if model.needs_labels else model.embed(x)


def reconstruct(model, x):
    return model.reconstruct(x, labels_for(model, x)) if model.needs_labels else model.reconstruct(x)


def test_the_registry_has_the_known_families():
    assert {"ae", "vae"} <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_builds_from_its_name(name):
    model = tiny_model(name)
    assert isinstance(model, Autoencoder)
    assert model.family == name and model.cfg.name == name
    assert model.cfg.input_shape == (1, 8, 8) and model.cfg.latent_dim == 2


@pytest.mark.parametrize("name, arch", CASES)
def test_forward_gives_a_finite_scalar_loss_and_logits_of_the_input_shape(name, arch, tiny_images):
    model = tiny_model(name, arch=arch)
    out = model(tiny_images, labels_for(model, tiny_images))
    assert isinstance(out, ModelOutput)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.logits.shape == tiny_images.shape
    assert out.z.shape[0] == 4
    assert all(t.shape == () and torch.isfinite(t) for t in out.terms.values())


@pytest.mark.parametrize("name, arch", CASES)
def test_backward_gives_every_parameter_a_gradient(name, arch, tiny_images):
    model = tiny_model(name, arch=arch)
    model(tiny_images, labels_for(model, tiny_images)).loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    for pname, p in params:
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for _, p in params)


@pytest.mark.parametrize("name, arch", CASES)
def test_safetensors_save_and_reload_gives_the_same_outputs(name, arch, tiny_images, tmp_path):
    model = tiny_model(name, seed=0, arch=arch).eval()
    save_model(tmp_path, model)
    state = load_file(str(tmp_path / MODEL_FILE))
    assert set(state) == set(model.state_dict())

    fresh = tiny_model(name, seed=1, arch=arch).eval()
    assert not torch.equal(embed(fresh, tiny_images), embed(model, tiny_images))  # another init
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(embed(fresh, tiny_images), embed(model, tiny_images), rtol=0, atol=0)
        torch.testing.assert_close(reconstruct(fresh, tiny_images), reconstruct(model, tiny_images),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("name, arch", CASES)
def test_embed_is_deterministic_and_reconstruct_is_in_unit_range(name, arch, tiny_images):
    model = tiny_model(name, arch=arch).eval()
    with torch.no_grad():
        code = embed(model, tiny_images)
        assert code.ndim == 2 and code.shape[0] == 4
        assert torch.equal(code, embed(model, tiny_images))
        recon = reconstruct(model, tiny_images)
    assert recon.shape == tiny_images.shape
    assert recon.min() >= 0 and recon.max() <= 1


@pytest.mark.parametrize("name, arch", CASES)
def test_metrics_are_per_image_and_documented(name, arch, tiny_images):
    model = tiny_model(name, arch=arch).eval()
    metrics = model.metrics(tiny_images, labels_for(model, tiny_images))
    assert {"recon_mse", "recon_bce"} <= set(metrics)
    for key, values in metrics.items():
        assert values.shape == (4,), key
        assert torch.isfinite(values).all(), key
        assert not values.requires_grad, key
        assert key in UNITS, key
    assert (metrics["recon_mse"] >= 0).all() and (metrics["recon_bce"] > 0).all()


@pytest.mark.parametrize("name, arch", CASES)
def test_metrics_of_one_image_do_not_depend_on_the_rest_of_the_batch(name, arch, tiny_images):
    model = tiny_model(name, arch=arch).eval()
    whole = model.metrics(tiny_images, labels_for(model, tiny_images))
    alone = model.metrics(tiny_images[1:2], None if not model.needs_labels else LABELS[1:2])
    for key in ("recon_mse", "recon_bce"):
        torch.testing.assert_close(alone[key], whole[key][1:2])


@pytest.mark.parametrize("name, arch", CASES)
def test_an_adam_step_changes_every_weight_tensor(name, arch, tiny_images):
    model = tiny_model(name, arch=arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    loss = model(tiny_images, labels_for(model, tiny_images)).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    for pname, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[pname]), pname


@pytest.mark.parametrize("name, arch", CASES)
def test_a_few_adam_steps_lower_the_loss(name, arch, tiny_images):
    model = tiny_model(name, arch=arch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_now():
        torch.manual_seed(123)     # same noise for VAEs, so the comparison is fair
        return model(tiny_images, labels_for(model, tiny_images)).loss

    first = loss_now().item()
    for _ in range(20):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    assert loss_now().item() < first
