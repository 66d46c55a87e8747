"""evaluate() and mean_loss(): per-image means over a whole split, seeded, RNG left alone."""
from __future__ import annotations

import pytest
import torch

from aelab.data import Batches, Split
from aelab.evaluate import UNITS, evaluate, mean_loss
from aelab.models import build_model, list_models, model_config_from_dict

N_IMAGES = 10
BATCH = 3            # does not divide N_IMAGES: the last batch holds one image


@pytest.fixture
def split() -> Split:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N_IMAGES, 1, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.arange(N_IMAGES) % 3
    return Split(images, labels)


def tiny_model(name: str):
    torch.manual_seed(0)
    return build_model(model_config_from_dict({"name": name, "input_shape": (1, 8, 8), "latent_dim": 2,
                                               "hidden_dims": (16,)})).eval()


def all_images(split: Split) -> torch.Tensor:
    return split.images.float() / 255


@pytest.mark.parametrize("name", list_models())
def test_evaluate_is_the_mean_over_all_images(name, split):
    model = tiny_model(name)
    result = evaluate(model, split, batch_size=BATCH)
    per_image = model.metrics(all_images(split))
    assert set(result) == set(per_image) and set(result) <= set(UNITS)
    for key in ("recon_mse", "recon_bce", "kl"):
        if key in per_image:
            assert isinstance(result[key], float)
            assert result[key] == pytest.approx(per_image[key].double().mean().item(), rel=1e-6)


@pytest.mark.parametrize("name", list_models())
def test_mean_of_batch_means_would_be_wrong_here(name, split):
    """Guards the fixture: with a 1-image last batch, averaging batch means differs from the truth."""
    model = tiny_model(name)
    values = model.metrics(all_images(split))["recon_bce"]
    batch_means = torch.stack([chunk.mean() for chunk in values.split(BATCH)])
    assert batch_means.mean().item() != pytest.approx(values.mean().item(), rel=1e-6)


def test_vae_elbo_matches_a_manual_seeded_pass(split):
    model = tiny_model("vae")
    torch.manual_seed(4)
    expected = model.metrics(all_images(split))["elbo"].double().mean().item()
    result = evaluate(model, split, batch_size=N_IMAGES, seed=4)
    assert result["elbo"] == pytest.approx(expected, rel=1e-6)


def test_evaluate_is_deterministic_for_a_seed_and_varies_with_it(split):
    model = tiny_model("vae")
    first = evaluate(model, split, batch_size=BATCH, seed=0)
    torch.manual_seed(999)                              # the global state must not matter
    again = evaluate(model, split, batch_size=BATCH, seed=0)
    other = evaluate(model, split, batch_size=BATCH, seed=1)
    assert first == again
    assert other["elbo"] != first["elbo"]
    assert other["recon_mse"] == first["recon_mse"]     # the deterministic parts do not move


def test_evaluate_leaves_the_global_rng_state_alone(split):
    model = tiny_model("vae")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    evaluate(model, split, batch_size=BATCH, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_evaluate_puts_the_model_in_eval_mode_and_leaves_weights_alone(split):
    model = tiny_model("vae").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, split, batch_size=BATCH)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_mean_loss_weights_batches_by_size(split):
    model = tiny_model("ae")        # deterministic loss: per-image mean is exactly comparable
    result = mean_loss(model, Batches(split, BATCH))
    with torch.no_grad():
        whole = model(all_images(split))
    assert result["loss"] == pytest.approx(whole.loss.item(), rel=1e-6)
    assert result["rec"] == pytest.approx(whole.terms["rec"].item(), rel=1e-6)
    batch_means = [model(x).loss.item() for x, _ in Batches(split, BATCH)]
    assert result["loss"] != pytest.approx(sum(batch_means) / len(batch_means), rel=1e-6)


def test_mean_loss_reports_every_term_of_the_objective(split):
    result = mean_loss(tiny_model("vae"), Batches(split, BATCH))
    assert set(result) == {"loss", "rec", "kl"}
    assert all(isinstance(v, float) for v in result.values())
    assert result["loss"] == pytest.approx(result["rec"] + result["kl"], rel=1e-6)
