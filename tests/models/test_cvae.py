"""CVAE: the one-hot label into both networks, labels required for the loss, class-conditional
samples, and reconstructions with the given (or the most likely) label."""
from __future__ import annotations

import logging

import numpy as np
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


# ---------------------------------------------------------------- the ex-post prior


def fitted_cvae(components=1, **options):
    """A cvae whose ex-post mixtures are fitted on codes placed by hand: class c's codes (2-d)
    spread around (4c, -2c), 300 per class, drawn with a fixed seed."""
    model = tiny_cvae(ex_post_components=components, **options)
    gen = torch.Generator().manual_seed(5)
    labels = torch.arange(3).repeat_interleave(300)
    codes = torch.randn(900, 2, generator=gen, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.5], [0.0, 0.3]], dtype=torch.float64) + torch.stack([4.0 * labels, -2.0 * labels], 1)
    model.fit_ex_post(codes, labels)
    return model, codes, labels


@pytest.mark.parametrize("bad, message", [(-1, "must be a number of mixture components, 0 .off. or "
                                                  "more, got -1"), (1.5, "cannot read 1.5 as int"),
                                          ("ten", "cannot read 'ten' as int"), (True, "")])
def test_ex_post_components_must_be_a_whole_number_from_0(bad, message):
    with pytest.raises(ConfigError, match="ex_post_components" + (f".*{message}" if message else "")):
        tiny_cvae(ex_post_components=bad)


def test_by_default_there_is_no_ex_post_prior_and_nothing_more_is_saved():
    model = tiny_cvae()
    assert model.cfg.ex_post_components == 0
    assert not any(k.startswith("ex_post") for k in model.state_dict())
    gen = lambda: torch.Generator().manual_seed(0)     # noqa: E731
    model.after_training([(torch.rand(4, 1, 8, 8), LABELS)])          # nothing to fit
    torch.testing.assert_close(model.draw_prior(4, gen(), LABELS), torch.randn(4, 2, generator=gen()))


def test_one_component_is_the_mean_and_covariance_of_each_classes_codes():
    model, codes, labels = fitted_cvae(components=1)
    assert model.ex_post_fitted.all()
    for c in range(3):
        zc = codes[labels == c].numpy()
        chol = model.ex_post_chol[c, 0].double()
        np.testing.assert_allclose(model.ex_post_means[c, 0].numpy(), zc.mean(0), rtol=1e-5, atol=1e-5)
        # scikit-learn's maximum-likelihood covariance (divided by N) plus its 1e-6 on the diagonal
        np.testing.assert_allclose((chol @ chol.T).numpy(), np.cov(zc.T, bias=True) + 1e-6 * np.eye(2),
                                   rtol=1e-5, atol=1e-6)
        assert model.ex_post_weights[c, 0] == 1


def test_samples_of_a_class_come_from_its_fitted_mixture():
    model, codes, labels = fitted_cvae(components=1)
    draw = torch.tensor([0, 1, 2]).repeat_interleave(4000)
    z = model.draw_prior(len(draw), torch.Generator().manual_seed(0), draw).double()
    for c in range(3):
        torch.testing.assert_close(z[draw == c].mean(0), codes[labels == c].mean(0), atol=0.05, rtol=0)
        torch.testing.assert_close(torch.cov(z[draw == c].T), torch.cov(codes[labels == c].T),
                                   atol=0.05, rtol=0)
    # the images are decoded from those codes; the loss and bounds keep the training prior
    gen = lambda: torch.Generator().manual_seed(1)     # noqa: E731
    with torch.no_grad():
        expected = torch.sigmoid(model.decode(model.draw_prior(3, gen(), torch.arange(3)), torch.arange(3)))
    torch.testing.assert_close(model.sample(3, generator=gen()), expected)
    mu, logvar = torch.zeros(2, 2), torch.zeros(2, 2)
    torch.testing.assert_close(model.kl(mu, logvar, torch.tensor([0, 2])), kl_std_normal(mu, logvar))


def test_a_mixture_draws_its_components_by_weight():
    model = tiny_cvae(ex_post_components=2)
    with torch.no_grad():
        model.ex_post_fitted[:] = True
        model.ex_post_weights[1] = torch.tensor([0.25, 0.75])
        model.ex_post_means[1] = torch.tensor([[-10.0, 0.0], [10.0, 0.0]])
        model.ex_post_chol[1] = 0.1 * torch.eye(2)
    z = model.draw_prior(8000, torch.Generator().manual_seed(0), torch.ones(8000, dtype=torch.long))
    assert abs((z[:, 0] > 0).float().mean().item() - 0.75) < 0.02
    assert z[:, 1].std().item() == pytest.approx(0.1, rel=0.05)


def test_classes_without_enough_codes_and_unfitted_models_draw_from_the_training_prior(caplog):
    caplog.set_level(logging.INFO, logger="aelab")
    model = tiny_cvae(ex_post_components=4, prior="learned")
    gen = lambda: torch.Generator().manual_seed(0)     # noqa: E731
    labels = torch.tensor([0, 1, 2, 0])
    before = model.draw_prior(4, gen(), labels)
    with torch.no_grad():
        eps = torch.randn(4, 2, generator=gen())
        expected = model.prior_mu[labels] + torch.exp(0.5 * model.prior_logvar[labels]) * eps
    torch.testing.assert_close(before, expected)                   # nothing fitted yet
    codes = torch.randn(23, 2, dtype=torch.float64)
    model.fit_ex_post(codes, torch.tensor([0] * 10 + [1] * 10 + [2] * 3))   # class 2: 3 codes < 4
    assert model.ex_post_fitted.tolist() == [True, True, False] and "class 2 has 3" in caplog.text
    assert "fitted for 2 of 3 classes" in caplog.text
    caplog.clear()
    too_many = tiny_cvae(ex_post_components=30)                   # no class has 30 codes
    too_many.fit_ex_post(codes, torch.tensor([0] * 10 + [1] * 10 + [2] * 3))
    assert not too_many.ex_post_fitted.any() and "mixture fitted" not in caplog.text
    z = model.draw_prior(4, gen(), labels)
    assert not torch.allclose(z[[0, 1, 3]], before[[0, 1, 3]])
    torch.testing.assert_close(z[2], before[2])


def test_after_training_fits_on_the_posterior_means_and_guesses_unknown_labels(tiny_images):
    model = tiny_cvae(ex_post_components=1).eval()
    x = torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(60) % 3
    hidden = y.clone()
    hidden[::5] = -1                                              # some labels unknown (m2)
    model.after_training([(x[:32], hidden[:32]), (x[32:], hidden[32:])])
    known = torch.where(hidden >= 0, hidden, model.most_likely_labels(x))
    reference = tiny_cvae(ex_post_components=1)
    reference.fit_ex_post(model.encode(x, known)[0].detach().double(), known)
    for name in ("ex_post_means", "ex_post_chol", "ex_post_weights", "ex_post_fitted"):
        torch.testing.assert_close(getattr(model, name), getattr(reference, name))


def test_the_fitted_mixtures_are_saved_and_reload_to_the_same_samples(tmp_path):
    from safetensors.torch import load_file
    from aelab.runs import save_model
    model, _, _ = fitted_cvae(components=2, prior="learned")
    save_model(tmp_path, model)
    again = tiny_cvae(seed=9, ex_post_components=2, prior="learned")
    again.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    gen = lambda: torch.Generator().manual_seed(4)     # noqa: E731
    torch.testing.assert_close(again.sample(30, generator=gen()), model.sample(30, generator=gen()))
    assert again.ex_post_fitted.all()


def test_the_cvae_preset_fits_its_ex_post_prior_when_training_ends(tmp_path, mnist_dir):
    """End to end on 800 real MNIST images: the trainer calls after_training, the fitted
    mixtures are in the run folder, and the reloaded run draws the same samples."""
    from aelab.runs import load_run
    from cli_helpers import trained_run
    run = trained_run(tmp_path / "cvae", mnist_dir, "--preset", "cvae", "--epochs", "1", "--hidden", "32",
                      "--latent-dim", "4", "--set", "model.ex_post_components=3")
    cfg, model, _ = load_run(run)
    assert cfg.model.ex_post_components == 3 and model.ex_post_fitted.all()
    assert model.ex_post_means.abs().sum() > 0 and model.ex_post_weights.sum(1).allclose(torch.ones(10))
    gen = lambda: torch.Generator().manual_seed(0)     # noqa: E731
    torch.testing.assert_close(load_run(run)[1].sample(20, generator=gen()), model.sample(20, generator=gen()))
