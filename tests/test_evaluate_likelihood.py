"""The importance weighted likelihood (iw_nll, Burda et al. 2016) and ``aelab eval --iw-samples``:
the bound, its K = 1 case, the chunked log-sum-exp, units, fixed binarisation, and the CLI end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from aelab.cli import main
from aelab.data import Batches, Split
from aelab.errors import ConfigError
from aelab.evaluate import UNITS, binarize_fixed, evaluate, iw_nll, logsumexp_chunks
from aelab.losses import iwae_bound
from aelab.models import build_model, model_config_from_dict
from cli_helpers import quiet_main, trained_run

TINY = ["--epochs", "2", "--hidden", "32", "--latent-dim", "4", "--batch-size", "64"]

D = 784                     # pixels of a 1x28x28 image


def mnist_part(mnist_5k, start: int, stop: int) -> Split:
    """Images start..stop of a fixed shuffle of the real MNIST sample (which is sorted by class)."""
    images, labels = mnist_5k
    idx = np.random.default_rng(0).permutation(len(images))[start:stop]
    return Split(torch.from_numpy(images[idx]).unsqueeze(1), torch.from_numpy(labels[idx]))


@pytest.fixture(scope="module")
def trained_vae(mnist_5k):
    """A small Bernoulli vae trained 325 Adam steps on 800 real MNIST images."""
    train = mnist_part(mnist_5k, 0, 800)
    torch.manual_seed(0)
    model = build_model(model_config_from_dict({"name": "vae", "input_shape": (1, 28, 28),
                                                "latent_dim": 8, "hidden_dims": (64,)}))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = Batches(train, 64, shuffle=True)
    for epoch in range(25):
        batches.set_epoch(epoch)
        for x, y in batches:
            opt.zero_grad()
            model(x, y).loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def test_split(mnist_5k) -> Split:
    """200 held-out real MNIST images, binarised once (seed 0): a Bernoulli is a true pmf on them."""
    return binarize_fixed(mnist_part(mnist_5k, 800, 1000), seed=0)


# ---------------------------------------------------------------- the chunked log-sum-exp


@pytest.mark.parametrize("chunk", [1, 7, 50])
def test_chunked_logsumexp_equals_a_direct_logsumexp(chunk):
    log_w = 10 * torch.randn(50, 6, generator=torch.Generator().manual_seed(0)) - 300
    direct = torch.logsumexp(log_w.double(), dim=0)
    chunked = logsumexp_chunks(log_w.split(chunk))
    torch.testing.assert_close(chunked, direct, rtol=1e-6, atol=0)


@pytest.mark.parametrize("centre", [-1e4, 1e4])
def test_chunked_logsumexp_neither_underflows_nor_overflows(centre):
    k = 5000
    log_w = centre + torch.randn(k, 3, generator=torch.Generator().manual_seed(1))   # float32
    naive = torch.log(torch.exp(log_w).mean(0))       # what a plain mean of weights gives
    assert torch.isinf(naive).all() and (naive < 0).all() == (centre < 0)
    estimate = logsumexp_chunks(log_w.split(7)) - math.log(k)
    assert torch.isfinite(estimate).all()
    torch.testing.assert_close(estimate, torch.logsumexp(log_w.double(), 0) - math.log(k),
                               rtol=1e-6, atol=0)
    # log mean w lies between the mean and the largest log weight (Jensen)
    assert (log_w.double().mean(0) <= estimate).all() and (estimate <= log_w.double().max(0).values).all()


class FixedWeights:
    """Stands in for a model: image i's j-th log weight is table[j, i] however the draws are
    chunked or batched (the split's labels carry the image ids)."""
    family = "stub"
    n_pixels = 64

    def __init__(self, table: torch.Tensor):          # (K, N)
        self.table = table
        self.drawn = torch.zeros(table.shape[1], dtype=torch.long)

    def eval(self):
        return self

    def log_weights(self, x, k, y):
        rows = self.drawn[y] + torch.arange(k)[:, None]                # (k, B)
        self.drawn[y] += k
        return self.table[rows, y], None, None, None


@pytest.mark.parametrize("chunk", [1, 7, 20, None])
@pytest.mark.parametrize("batch_size", [3, 10])
def test_iw_nll_is_the_same_for_every_chunk_and_batch_size(chunk, batch_size):
    k, n = 20, 10
    table = 5 * torch.randn(k, n, generator=torch.Generator().manual_seed(2)) - 100
    stub = FixedWeights(table)
    split = Split(torch.zeros(n, 1, 8, 8, dtype=torch.uint8), torch.arange(n))
    result = iw_nll(stub, split, k, batch_size=batch_size, chunk=chunk)
    assert (stub.drawn == k).all()                    # every image got exactly k weights
    expected = -(torch.logsumexp(table.double(), 0) - math.log(k)).mean().item()
    assert result["nll_iw"] == pytest.approx(expected, rel=1e-6)
    assert result["bits_per_dim"] == pytest.approx(expected / (64 * math.log(2)), rel=1e-12)


# ---------------------------------------------------------------- on a trained vae


@pytest.mark.parametrize("k", [1, 50])
def test_iw_nll_matches_the_models_own_bound_for_the_same_draws(trained_vae, test_split, k):
    """K = 1: the negative single-sample Monte-Carlo ELBO of log_weights; any K: -iwae_bound."""
    x, y = test_split.images.float() / 255, test_split.labels
    torch.manual_seed(3)
    log_w = trained_vae.log_weights(x, k, y)[0].double()                # (k, B)
    result = iw_nll(trained_vae, test_split, k, batch_size=len(x), chunk=k, seed=3)
    assert result["nll_iw"] == pytest.approx(-iwae_bound(log_w).mean().item(), rel=1e-6)
    if k == 1:
        assert result["nll_iw"] == pytest.approx(-log_w.mean().item(), rel=1e-6)


def test_nll_iw_is_below_minus_the_elbo(trained_vae, test_split):
    elbo = evaluate(trained_vae, test_split, seed=0)["elbo"]
    nll = iw_nll(trained_vae, test_split, 100, seed=0)["nll_iw"]
    assert nll < -elbo < nll + 20       # a tighter bound, but not absurdly far from the ELBO


def test_nll_iw_falls_as_k_grows(trained_vae, test_split):
    def mean_nll(k):
        return sum(iw_nll(trained_vae, test_split, k, seed=s)["nll_iw"] for s in range(3)) / 3
    nll_1, nll_10, nll_100 = mean_nll(1), mean_nll(10), mean_nll(100)
    assert nll_1 > nll_10 > nll_100
    assert nll_1 - nll_100 > 0.5        # a real gain, not noise


def test_nll_iw_sign_and_units(trained_vae, test_split):
    """nats per image and bits per pixel: positive for a pmf on binary images, below the 1 bit per
    pixel (784 ln 2 = 543 nats) of a coin flip per pixel, and bits = nats / (784 ln 2)."""
    result = iw_nll(trained_vae, test_split, 20, seed=0)
    assert 50 < result["nll_iw"] < D * math.log(2)
    assert result["bits_per_dim"] == pytest.approx(result["nll_iw"] / (D * math.log(2)), rel=1e-12)
    assert 0 < result["bits_per_dim"] < 1
    assert {"nll_iw", "bits_per_dim"} <= set(UNITS)
    assert "nats per image" in UNITS["nll_iw"] and "8-bit" in UNITS["bits_per_dim"]


def test_iw_nll_is_seeded_and_leaves_the_global_rng_alone(trained_vae, test_split):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = iw_nll(trained_vae, test_split, 5, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert iw_nll(trained_vae, test_split, 5, seed=1) == first
    assert iw_nll(trained_vae, test_split, 5, seed=2) != first


def test_progress_goes_to_stderr_only(trained_vae, test_split, capsys):
    iw_nll(trained_vae, test_split, 10, batch_size=50, chunk=3, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "nll_iw" in err


# ---------------------------------------------------------------- families and binarisation


def tiny_model(name: str):
    torch.manual_seed(0)
    return build_model(model_config_from_dict({"name": name, "input_shape": (1, 8, 8), "latent_dim": 2,
                                               "hidden_dims": (16,), "n_classes": 3})).eval()


@pytest.fixture
def tiny_split() -> Split:
    gen = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8, generator=gen),
                 torch.arange(10) % 3)


@pytest.mark.parametrize("name", ["vae", "iwae", "cvae"])
def test_every_family_with_a_likelihood_gets_one(name, tiny_split):
    result = iw_nll(tiny_model(name), tiny_split, 5, batch_size=4, chunk=2)
    assert math.isfinite(result["nll_iw"])


@pytest.mark.parametrize("name", ["ae", "vqvae"])
def test_families_without_a_likelihood_are_a_config_error(name, tiny_split):
    with pytest.raises(ConfigError, match=f"a {name} has no likelihood"):
        iw_nll(tiny_model(name), tiny_split, 5)


def test_fixed_binarisation_is_seeded_and_keeps_the_mean(mnist_5k):
    grey = mnist_part(mnist_5k, 0, 500)
    first, again, other = binarize_fixed(grey, 0), binarize_fixed(grey, 0), binarize_fixed(grey, 1)
    assert torch.equal(first.images, again.images) and not torch.equal(first.images, other.images)
    assert set(first.images.unique().tolist()) == {0, 255}
    assert first.images.float().mean().item() == pytest.approx(grey.images.float().mean().item(), rel=0.02)
    assert first.labels is grey.labels


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, mnist_dir) -> str:
    return trained_run(tmp_path_factory.mktemp("iw") / "vae", mnist_dir, *TINY)


def eval_json(*argv) -> dict:
    code, out, err = quiet_main(["eval", *argv, "--json"])
    assert code == 0, err
    assert len(out.splitlines()) == 1
    return json.loads(out)


def test_cli_eval_iw_samples_reports_nll_bits_and_settings(vae_run):
    result = eval_json(vae_run, "--iw-samples", "20")
    assert (result["iw_samples"], result["binarize"], result["seed"]) == (20, "none", 0)
    assert result["bits_per_dim"] == pytest.approx(result["nll_iw"] / (D * math.log(2)), rel=1e-9)
    assert result["nll_iw"] < -result["elbo"]
    assert {"nll_iw", "bits_per_dim", "elbo"} <= set(result["units"])
    assert "nats per image" in result["units"]["nll_iw"]


def test_cli_eval_text_names_the_settings(vae_run, capsys):
    assert main(["eval", vae_run, "--iw-samples", "3", "--binarize", "fixed", "--seed", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "fixed binarisation (seed 2), 3 importance samples" in lines[0]
    assert [line.split()[0] for line in lines[1:]][-2:] == ["nll_iw", "bits_per_dim"]


def test_cli_eval_without_iw_samples_has_no_nll(vae_run):
    result = eval_json(vae_run)
    assert "nll_iw" not in result and "iw_samples" not in result and result["binarize"] == "none"


def test_cli_fixed_binarisation_is_repeatable_and_changes_the_figures(vae_run):
    first = eval_json(vae_run, "--iw-samples", "5", "--binarize", "fixed")
    again = eval_json(vae_run, "--iw-samples", "5", "--binarize", "fixed")
    grey = eval_json(vae_run, "--iw-samples", "5")
    assert first == again and first["binarize"] == "fixed"
    assert first["nll_iw"] != grey["nll_iw"] and first["recon_bce"] != grey["recon_bce"]
    # A Bernoulli NLL is linear in the target, so only noise tells those apart; the squared error
    # is not: E[(b - m)^2] = (x - m)^2 + x (1 - x) for b ~ Bernoulli(x), larger on binary images.
    assert first["recon_mse"] > 1.05 * grey["recon_mse"]


def test_cli_iw_samples_on_an_ae_is_one_error_line(tmp_path, mnist_dir):
    run = trained_run(tmp_path / "ae", mnist_dir, *TINY, "--model", "ae", "--epochs", "1")
    code, out, err = quiet_main(["eval", run, "--iw-samples", "5", "--json"])
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("aelab: error: ") and "has no likelihood" in lines[0]


def test_cli_iw_samples_must_be_positive(vae_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", vae_run, "--iw-samples", "0"])
    assert exit_info.value.code == 2
    assert "--iw-samples" in capsys.readouterr().err
