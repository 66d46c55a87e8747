"""M1+M2 (Kingma et al. 2014): the loss is M1's -ELBO plus an M2's loss on M1's detached codes,
so M1 gets no gradient from the M2; the classifier reads M1's posterior mean; bad options are
ConfigErrors; saved and reloaded, it classifies the same."""
from __future__ import annotations

import pytest
import torch

from aelab.errors import ConfigError
from aelab.evaluate import require_likelihood
from aelab.models import build_model, model_config_from_dict
from aelab.models.m1m2 import M1M2
from aelab.models.m2 import M2
from aelab.models.vae import VAE

K = 3
MIXED = torch.tensor([0, -1, 2, -1])


def config(**options):
    return model_config_from_dict({"name": "m1m2", "input_shape": (1, 8, 8), "latent_dim": 3,
                                   "hidden_dims": (16,), "m2_latent_dim": 2, "m2_hidden_dims": (8,),
                                   "n_classes": K, **options})


def tiny_m1m2(seed=0, **options) -> M1M2:
    torch.manual_seed(seed)
    return build_model(config(**options))


def m1_parameters(model):
    return {n: p for n, p in model.named_parameters() if not n.startswith("m2.")}


def test_an_m1m2_is_a_vae_holding_an_m2_on_its_codes(tiny_images):
    model = tiny_m1m2(alpha=2.0)
    assert isinstance(model, VAE) and isinstance(model.m2, M2)
    assert model.needs_labels and model.partial_labels and model.can_sample
    assert model.m2.cfg.input_shape == (1, 1, 3) and model.m2.cfg.latent_dim == 2
    assert model.m2.alpha == 2.0
    assert model.classify(tiny_images).shape == (4, K)


def test_the_loss_is_m1s_negative_elbo_plus_the_m2_loss_on_the_detached_codes(tiny_images):
    model = tiny_m1m2(alpha=2.0)
    torch.manual_seed(1)
    out = model(tiny_images, MIXED)
    torch.manual_seed(1)                               # the same draws: M1's z first, then the M2's
    m1 = VAE.forward(model, tiny_images)
    m2 = model.m2(m1.z[:, None, None, :], MIXED)
    torch.testing.assert_close(out.loss, m1.loss + m2.loss)
    assert {"rec", "kl", "m2_rec", "m2_kl", "class_ce", "class_error", "entropy"} == set(out.terms)


def test_m1_gets_no_gradient_from_the_m2(tiny_images):
    model = tiny_m1m2(alpha=5.0)
    torch.manual_seed(1)
    model(tiny_images, MIXED).loss.backward()
    joint = {n: p.grad.clone() for n, p in m1_parameters(model).items()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.m2.parameters())
    model.zero_grad()
    torch.manual_seed(1)
    VAE.forward(model, tiny_images).loss.backward()    # M1 trained alone
    for name, p in m1_parameters(model).items():
        torch.testing.assert_close(joint[name], p.grad, msg=name)


def test_class_error_reads_the_classifier_at_m1s_posterior_mean(tiny_images):
    model = tiny_m1m2().eval()
    labels = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        mu = model.encode(tiny_images)[0]
        guess = model.m2.classifier(mu[:, None, None, :]).argmax(1)
    torch.manual_seed(1)
    metrics = model.metrics(tiny_images, labels)
    torch.testing.assert_close(metrics["class_error"], (guess != labels).float())
    assert torch.equal(model.most_likely_labels(tiny_images), guess)
    assert "class_error" not in model.metrics(tiny_images)
    torch.manual_seed(1)                               # M1's elbo, the same z draw
    torch.testing.assert_close(metrics["elbo"], VAE.metrics(model, tiny_images)["elbo"])


def test_saved_and_reloaded_it_gives_the_same_class_predictions(tiny_images):
    model = tiny_m1m2(seed=3, alpha=1.5).eval()
    again = build_model(config(alpha=1.5)).eval()       # another initialisation, then the weights
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.most_likely_labels(tiny_images), model.most_likely_labels(tiny_images))
    torch.testing.assert_close(again.classify(tiny_images), model.classify(tiny_images))


def test_fit_config_sets_the_papers_alpha_when_unset():
    cfg = config()
    M1M2.fit_config(cfg, 54_000, 100)
    assert cfg.alpha == pytest.approx(54.0)
    cfg = config(alpha=3.0)
    M1M2.fit_config(cfg, 54_000, 100)
    assert cfg.alpha == 3.0


@pytest.mark.parametrize("option, value", [("alpha", -1.0), ("m2_latent_dim", 0),
                                           ("m2_hidden_dims", (0,)), ("m2_hidden_dims", ()),
                                           ("classifier_dropout", 1.0)])
def test_bad_options_are_config_errors(option, value):
    with pytest.raises(ConfigError, match=option):
        config(**{option: value})


def test_sample_draws_the_given_classes_through_the_m2():
    model = tiny_m1m2().eval()
    images = model.sample(6, generator=torch.Generator().manual_seed(0), labels=torch.full((6,), 2))
    assert images.shape == (6, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="classes"):
        model.sample(2, labels=torch.tensor([0, K]))


def test_there_is_no_importance_weighted_likelihood():
    with pytest.raises(ConfigError, match="no likelihood"):
        require_likelihood(tiny_m1m2())
