"""M2 (Kingma et al. 2014): the labelled loss is the cvae's -ELBO plus alpha x the classifier's
cross-entropy, the unlabelled loss is its expectation over q(y|x) minus the entropy, a batch mixes
both, and the classifier gives class_error, labels for reconstruct/embed and learns from
unlabelled images."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aelab.models.m2 as m2_module
from aelab.errors import ConfigError
from aelab.evaluate import require_likelihood
from aelab.losses import bernoulli_nll, kl_std_normal
from aelab.models import build_model, model_config_from_dict
from aelab.models.cvae import CVAE
from aelab.models.m2 import M2, default_alpha

K = 3
LABELS = torch.tensor([0, 1, 2, 1])
HIDDEN = torch.full((4,), -1)


def tiny_m2(seed=0, **options) -> M2:
    torch.manual_seed(seed)
    return build_model(model_config_from_dict({"name": "m2", "input_shape": (1, 8, 8), "latent_dim": 2,
                                               "hidden_dims": (16,), "n_classes": K, **options}))


@pytest.fixture
def no_noise(monkeypatch):
    """z = the posterior mean in every m2 loss, so that losses can be compared term by term."""
    monkeypatch.setattr(m2_module, "reparameterize", lambda mu, logvar: mu)


def neg_elbo(model, x, y):
    """-ELBO(x, y) per image at z = the mean (the no_noise fixture's)."""
    mu, logvar = model.encode(x, y)
    return bernoulli_nll(model.decode(mu, y), x) + model.kl(mu, logvar, y)


def test_an_m2_is_a_cvae_with_a_classifier():
    model = tiny_m2()
    assert isinstance(model, CVAE) and model.needs_labels and model.partial_labels and model.can_sample
    assert model.classifier(torch.zeros(2, 1, 8, 8)).shape == (2, K)
    assert model.alpha == pytest.approx(0.1)          # built by hand: 0.1 N / N with every label
    assert tiny_m2(alpha=7.5).alpha == 7.5


def test_default_alpha_is_the_papers_0_1_n_per_labelled_image():
    assert default_alpha(54_000, 100) == pytest.approx(54.0)
    assert default_alpha(720, 720) == pytest.approx(0.1)


def test_negative_alpha_is_refused():
    with pytest.raises(ConfigError, match="alpha"):
        tiny_m2(alpha=-1.0)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_classifier_dropout_outside_0_1_is_refused(p):
    with pytest.raises(ConfigError, match="classifier_dropout"):
        tiny_m2(classifier_dropout=p)


def test_classifier_dropout_drops_input_pixels_while_training_only(tiny_images):
    model = tiny_m2(classifier_dropout=0.5)
    plain = model.classifier(tiny_images)
    torch.manual_seed(0)
    assert not torch.allclose(model.classify(tiny_images).exp(), F.softmax(plain, 1))
    model.eval()
    torch.testing.assert_close(model.classify(tiny_images), F.log_softmax(plain, 1))
    assert torch.equal(model.most_likely_labels(tiny_images), plain.argmax(1))


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_encode_each_class_equals_encoding_with_each_label(arch, tiny_images):
    model = tiny_m2(arch=arch, conv_channels=(4, 8))
    mu, logvar = model.encode_each_class(tiny_images)
    assert mu.shape == logvar.shape == (K, 4, 2)
    for c in range(K):
        expected = model.encode(tiny_images, torch.full((4,), c))
        torch.testing.assert_close((mu[c], logvar[c]), expected)


def test_labelled_loss_is_the_cvae_loss_plus_alpha_times_the_cross_entropy(no_noise, tiny_images):
    model = tiny_m2(alpha=2.5)
    ce = F.cross_entropy(model.classifier(tiny_images), LABELS, reduction="none")
    expected = (neg_elbo(model, tiny_images, LABELS) + 2.5 * ce).mean()
    torch.testing.assert_close(model(tiny_images, LABELS).loss, expected)


def test_changing_alpha_changes_the_loss_by_exactly_alpha_times_the_cross_entropy(tiny_images):
    model = tiny_m2()
    ce = F.cross_entropy(model.classifier(tiny_images), LABELS)
    losses = {}
    for alpha in (0.0, 1.0, 40.0):
        model.alpha = alpha
        torch.manual_seed(5)                           # the same z draws each time
        losses[alpha] = model(tiny_images, LABELS).loss
    torch.testing.assert_close(losses[1.0] - losses[0.0], ce)
    torch.testing.assert_close(losses[40.0] - losses[0.0], 40 * ce)


@pytest.mark.parametrize("prior", ["standard", "learned"])
def test_unlabelled_loss_sums_the_classes_under_q_minus_the_entropy(no_noise, tiny_images, prior):
    model = tiny_m2(alpha=3.0, prior=prior)
    if prior == "learned":                             # each class its own p(z|y), not N(0, I)
        with torch.no_grad():
            model.prior_mu.normal_()
            model.prior_logvar.uniform_(-1, 1)
    q = F.softmax(model.classifier(tiny_images), dim=1)                      # (B, K)
    per_class = torch.stack([neg_elbo(model, tiny_images, torch.full((4,), c)) for c in range(K)], 1)
    entropy = -(q * q.log()).sum(1)
    expected = ((q * per_class).sum(1) - entropy).mean()
    torch.testing.assert_close(model(tiny_images, HIDDEN).loss, expected)
    torch.testing.assert_close(model(tiny_images).loss, expected)           # no labels at all


def test_unlabelled_loss_is_the_expected_labelled_loss_without_alpha_minus_the_entropy(no_noise,
                                                                                       tiny_images):
    """U(x) = sum_y q(y|x) L(x, y) - H(q(y|x)) with L's alpha = 0, one image at a time."""
    model = tiny_m2(alpha=0.0)
    for i in range(4):
        x = tiny_images[i:i + 1]
        q = F.softmax(model.classifier(x), dim=1)[0]
        labelled = torch.stack([model(x, torch.tensor([c])).loss for c in range(K)])
        expected = (q * labelled).sum() + (q * q.log()).sum()
        torch.testing.assert_close(model(x, torch.tensor([-1])).loss, expected)


def test_a_mixed_batch_is_the_per_image_mean_of_both_losses(no_noise, tiny_images):
    model = tiny_m2(alpha=4.0)
    y = torch.tensor([2, -1, 0, -1])
    known = y >= 0
    lab = model(tiny_images[known], y[known]).loss * 2
    unl = model(tiny_images[~known], y[~known]).loss * 2
    out = model(tiny_images, y)
    torch.testing.assert_close(out.loss, (lab + unl) / 4)
    assert out.logits.shape == tiny_images.shape and out.z.shape == (4, 2)
    assert {"rec", "kl", "class_ce", "class_error", "entropy"} == set(out.terms)
    # the labelled images' outputs stay in their places in the batch
    torch.testing.assert_close(out.logits[0], model.decode(model.encode(tiny_images[:1], y[:1])[0],
                                                            y[:1])[0])


class Oracle(nn.Module):
    """A classifier that knows the labels of one fixed batch."""

    def __init__(self, labels):
        super().__init__()
        self.labels = labels

    def forward(self, x):
        return 10.0 * F.one_hot(self.labels, K).float()


def test_class_error_is_zero_for_a_classifier_that_is_always_right(tiny_images):
    model = tiny_m2().eval()
    model.classifier = Oracle(LABELS)
    assert torch.equal(model.metrics(tiny_images, LABELS)["class_error"], torch.zeros(4))
    wrong = (LABELS + 1) % K
    assert torch.equal(model.metrics(tiny_images, wrong)["class_error"], torch.ones(4))
    assert torch.equal(model.most_likely_labels(tiny_images), LABELS)


def test_class_error_is_per_image_argmax_against_the_label(tiny_images):
    model = tiny_m2().eval()
    guess = model.classifier(tiny_images).argmax(1)
    torch.testing.assert_close(model.metrics(tiny_images, LABELS)["class_error"],
                               (guess != LABELS).float())
    assert "class_error" not in model.metrics(tiny_images)


def test_metrics_elbo_bounds_log_p_x_with_the_label_summed_out(no_noise, tiny_images):
    model = tiny_m2().eval()
    metrics = model.metrics(tiny_images, LABELS)
    with torch.no_grad():
        log_q = F.log_softmax(model.classifier(tiny_images), dim=1)
        per_class = torch.stack([-neg_elbo(model, tiny_images, torch.full((4,), c)) for c in range(K)], 1)
        expected = (log_q.exp() * (per_class - math.log(K) - log_q)).sum(1)
        mu, logvar = model.encode(tiny_images, LABELS)
    torch.testing.assert_close(metrics["elbo"], expected)
    torch.testing.assert_close(metrics["kl"], kl_std_normal(mu, logvar))   # with the given label


def test_reconstruct_and_embed_use_the_classifiers_label_when_none_is_given(tiny_images):
    model = tiny_m2().eval()
    guess = model.classifier(tiny_images).argmax(1)
    torch.testing.assert_close(model.most_likely_labels(tiny_images), guess)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(tiny_images), model.encode(tiny_images, guess)[0])
        torch.testing.assert_close(model.reconstruct(tiny_images), model.reconstruct(tiny_images, guess))
        torch.testing.assert_close(model.embed(tiny_images, LABELS), model.encode(tiny_images, LABELS)[0])


def test_sample_draws_the_given_classes():
    model = tiny_m2().eval()
    images = model.sample(6, generator=torch.Generator().manual_seed(0), labels=torch.full((6,), 2))
    assert images.shape == (6, 1, 8, 8) and images.min() >= 0 and images.max() <= 1


def test_there_is_no_importance_weighted_likelihood():
    with pytest.raises(ConfigError, match="no likelihood"):
        require_likelihood(tiny_m2())


def test_without_classes_an_m2_is_a_plain_vae(tiny_images):
    model = tiny_m2(n_classes=0)
    assert model.classifier is None
    vae = build_model(model_config_from_dict({"name": "vae", "input_shape": (1, 8, 8), "latent_dim": 2,
                                              "hidden_dims": (16,)}))
    vae.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    a = model(tiny_images)
    torch.manual_seed(0)
    assert torch.equal(a.loss, vae(tiny_images).loss)


def test_trained_on_two_labels_and_many_unlabelled_images_it_classifies_them_all():
    """Two classes of 8x8 images (bright top half or bright bottom half), one labelled image of
    each, alpha the paper's 0.1 N / N_labelled. (Some initialisations end with the class in z and
    q(y|x) near uniform instead, M2's known failure; this seed is not one of them.)"""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.rand(64, 1, 8, 8, generator=gen) * 0.2
    x[y == 0, :, :4] += 0.7
    x[y == 1, :, 4:] += 0.7
    seen = torch.full((64,), -1)
    seen[:2] = y[:2]
    model = tiny_m2(seed=1, n_classes=2, hidden_dims=(32,), alpha=default_alpha(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        model(x, seen).loss.backward()
        opt.step()
    model.eval()
    assert model.metrics(x, y)["class_error"].mean() <= 0.05
