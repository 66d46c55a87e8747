"""CVAE: the one-hot label into both networks, labels required for the loss, class-conditional
samples, and reconstructions with the given (or the most likely) label."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aelab.errors import ConfigError, DataError
from aelab.losses import bernoulli_nll, kl_std_normal, reparameterize
from aelab.models import build_model, model_config_from_dict
from aelab.models.cvae import CVAE
from aelab.models.vae import VAE

N_CLASSES = 3


def tiny_cvae(seed=0, **options):
    torch.manual_seed(seed)
    return build_model(model_config_from_dict({"name": "cvae", "input_shape": (1, 8, 8), "latent_dim": 2,
                                               "hidden_dims": (16,), "n_classes": N_CLASSES, **options}))


LABELS = torch.tensor([0, 1, 2, 1])


def test_a_cvae_is_a_vae_whose_networks_also_take_the_one_hot_label():
    model = tiny_cvae()
    assert isinstance(model, CVAE) and isinstance(model, VAE) and model.needs_labels and model.can_sample
    assert model.encoder.head[0].in_features == 64 + N_CLASSES
    assert model.decoder.net[0][0].in_features == 2 + N_CLASSES


def test_encode_and_decode_concatenate_the_one_hot_label(tiny_images):
    model = tiny_cvae()
    one_hot = F.one_hot(LABELS, N_CLASSES).float()
    mu, logvar = model.encode(tiny_images, LABELS)
    expected = model.encoder.head(torch.cat([tiny_images.flatten(1), one_hot], 1)).chunk(2, -1)
    torch.testing.assert_close((mu, logvar), expected)
    torch.testing.assert_close(model.decode(mu, LABELS), model.decoder(torch.cat([mu, one_hot], 1)))


def test_loss_is_the_vae_loss_with_the_label_in_both_networks(tiny_images):
    model = tiny_cvae()
    torch.manual_seed(4)
    out = model(tiny_images, LABELS)
    mu, logvar = model.encode(tiny_images, LABELS)
    torch.manual_seed(4)
    z = reparameterize(mu, logvar)
    rec = bernoulli_nll(model.decode(z, LABELS), tiny_images)
    torch.testing.assert_close(out.loss, (rec + kl_std_normal(mu, logvar)).mean())
    torch.manual_seed(4)
    assert not torch.allclose(model(tiny_images, (LABELS + 1) % N_CLASSES).loss, out.loss)


def test_loss_and_metrics_need_the_labels(tiny_images):
    model = tiny_cvae()
    with pytest.raises(DataError, match="needs the labels"):
        model(tiny_images)
    with pytest.raises(DataError, match="needs the labels"):
        model.metrics(tiny_images)


def test_metrics_are_the_vaes_with_the_label(tiny_images):
    model = tiny_cvae().eval()
    torch.manual_seed(2)
    metrics = model.metrics(tiny_images, LABELS)
    assert set(metrics) == {"recon_mse", "recon_bce", "kl", "elbo"}
    with torch.no_grad():
        mu, logvar = model.encode(tiny_images, LABELS)
        torch.manual_seed(2)
        z = reparameterize(mu, logvar)
        expected = -bernoulli_nll(model.decode(z, LABELS), tiny_images) - kl_std_normal(mu, logvar)
    torch.testing.assert_close(metrics["elbo"], expected)


def test_sample_draws_the_given_classes_and_cycles_through_all_of_them_by_default():
    model = tiny_cvae().eval()
    gen = lambda: torch.Generator().manual_seed(0)     # noqa: E731
    default = model.sample(7, generator=gen())
    cycled = model.sample(7, generator=gen(), labels=torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    assert torch.equal(default, cycled)
    twos = model.sample(7, generator=gen(), labels=torch.full((7,), 2))
    with torch.no_grad():
        z = torch.randn(7, 2, generator=gen())
        torch.testing.assert_close(twos, torch.sigmoid(model.decode(z, torch.full((7,), 2))))
    assert not torch.allclose(twos[:2], default[:2])
    assert twos.shape == (7, 1, 8, 8) and twos.min() >= 0 and twos.max() <= 1


@pytest.mark.parametrize("labels", [torch.tensor([0, 3]), torch.tensor([-1, 0]), torch.tensor([0, 1, 2])])
def test_sample_rejects_labels_outside_the_classes_or_of_the_wrong_length(labels):
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        tiny_cvae().sample(2, labels=labels)


def test_reconstruct_and_embed_use_the_given_label(tiny_images):
    model = tiny_cvae().eval()
    with torch.no_grad():
        recon = model.reconstruct(tiny_images, LABELS)
        mu = model.encode(tiny_images, LABELS)[0]
        torch.testing.assert_close(recon, torch.sigmoid(model.decode(mu, LABELS)))
        torch.testing.assert_close(model.embed(tiny_images, LABELS), mu)
        assert not torch.allclose(model.reconstruct(tiny_images, (LABELS + 1) % N_CLASSES), recon)


def test_without_a_label_reconstruct_and_embed_use_the_most_likely_one(tiny_images):
    model = tiny_cvae().eval()
    guess = model.most_likely_labels(tiny_images)
    with torch.no_grad():
        scores = []
        for c in range(N_CLASSES):
            y = torch.full((4,), c)
            mu, logvar = model.encode(tiny_images, y)
            scores.append(-bernoulli_nll(model.decode(mu, y), tiny_images) - kl_std_normal(mu, logvar))
        torch.testing.assert_close(guess, torch.stack(scores, 1).argmax(1))
        torch.testing.assert_close(model.reconstruct(tiny_images), model.reconstruct(tiny_images, guess))
        torch.testing.assert_close(model.embed(tiny_images), model.embed(tiny_images, guess))


def test_a_trained_cvae_finds_the_class_of_unlabelled_images():
    """Two classes of 8x8 images (bright top half or bright bottom half): after some steps the
    label with the best ELBO is the true one."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.rand(64, 1, 8, 8, generator=gen) * 0.2
    x[y == 0, :, :4] += 0.7
    x[y == 1, :, 4:] += 0.7
    model = tiny_cvae(n_classes=2, hidden_dims=(32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        model(x, y).loss.backward()
        opt.step()
    model.eval()
    assert (model.most_likely_labels(x) == y).float().mean() >= 0.95


def test_without_classes_a_cvae_is_a_plain_vae(tiny_images):
    cvae = tiny_cvae(n_classes=0)
    vae = build_model(model_config_from_dict({"name": "vae", "input_shape": (1, 8, 8), "latent_dim": 2,
                                              "hidden_dims": (16,)}))
    vae.load_state_dict(cvae.state_dict())
    torch.manual_seed(0)
    a = cvae(tiny_images)
    torch.manual_seed(0)
    assert torch.equal(a.loss, vae(tiny_images).loss)


# ---------------------------------------------------------------- the learned class prior


def learned_prior_cvae(seed=0):
    model = tiny_cvae(seed, prior="learned")
    with torch.no_grad():   # three classes far apart, each with its own spread
        model.prior_mu.copy_(torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]]))
        model.prior_logvar.copy_(torch.tensor([[-2.0, -2.0], [0.0, 0.0], [-4.0, 1.0]]))
    return model


def test_unknown_prior_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown prior 'flat'"):
        tiny_cvae(prior="flat")


def test_the_learned_prior_starts_as_the_standard_normal(tiny_images):
    standard, learned = tiny_cvae(), tiny_cvae(prior="learned")
    learned.load_state_dict({**standard.state_dict(), "prior_mu": learned.prior_mu,
                             "prior_logvar": learned.prior_logvar})
    torch.manual_seed(1)
    a = standard(tiny_images, LABELS)
    torch.manual_seed(1)
    b = learned(tiny_images, LABELS)
    torch.testing.assert_close(b.loss, a.loss)


def test_the_kl_is_to_the_prior_of_each_images_class(tiny_images):
    model = learned_prior_cvae()
    mu, logvar = model.encode(tiny_images, LABELS)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)),
        torch.distributions.Normal(model.prior_mu[LABELS], torch.exp(0.5 * model.prior_logvar[LABELS]))).sum(-1)
    torch.testing.assert_close(model.kl(mu, logvar, LABELS), expected)
    torch.testing.assert_close(model.metrics(tiny_images, LABELS)["kl"], expected)
    torch.manual_seed(2)
    out = model(tiny_images, LABELS)
    torch.testing.assert_close(out.terms["kl"], expected.mean())


def test_samples_of_a_class_come_from_that_classes_prior():
    model = learned_prior_cvae()
    labels = torch.tensor([0, 1, 2]).repeat_interleave(4000)
    z = model.draw_prior(len(labels), torch.Generator().manual_seed(0), labels)
    for c in range(3):
        zc = z[labels == c]
        torch.testing.assert_close(zc.mean(0), model.prior_mu[c].detach(), atol=0.1, rtol=0)
        torch.testing.assert_close(zc.var(0).log(), model.prior_logvar[c].detach(), atol=0.1, rtol=0)


def test_the_importance_weights_use_the_class_prior(tiny_images):
    model = learned_prior_cvae()
    torch.manual_seed(3)
    log_w, log_px, z, _ = model.log_weights(tiny_images, 3, LABELS)
    mu, logvar = model.encode(tiny_images, LABELS)
    prior = torch.distributions.Normal(model.prior_mu[LABELS], torch.exp(0.5 * model.prior_logvar[LABELS]))
    posterior = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    expected = log_px + prior.log_prob(z).sum(-1) - posterior.log_prob(z).sum(-1)
    torch.testing.assert_close(log_w, expected)


def test_the_learned_prior_gets_gradients_and_is_saved(tiny_images):
    model = learned_prior_cvae()
    model(tiny_images, LABELS).loss.backward()
    assert model.prior_mu.grad[LABELS.unique()].abs().sum() > 0
    assert "prior_mu" in model.state_dict() and "prior_logvar" in model.state_dict()
