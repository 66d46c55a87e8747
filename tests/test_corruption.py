"""Denoising corruptions: spec parsing, errors, and the statistics of each kind with seeded generators."""
from __future__ import annotations

import math
import re

import pytest
import torch

from aelab.corruption import corrupt, parse_corruption
from aelab.errors import ConfigError

N_PIXELS = 4 * 1 * 250 * 250      # 250,000 pixels: binomial fractions to within ~0.001


def grey(value: float = 0.5) -> torch.Tensor:
    return torch.full((4, 1, 250, 250), value)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fraction_tolerance(p: float) -> float:
    """Six binomial standard deviations of a fraction over N_PIXELS."""
    return 6 * math.sqrt(p * (1 - p) / N_PIXELS)


@pytest.mark.parametrize("spec, expected", [
    ("gaussian:0.5", ("gaussian", 0.5)),
    ("mask:0.3", ("mask", 0.3)),
    ("saltpepper:1e-2", ("saltpepper", 0.01)),
    (" mask:0.25 ", ("mask", 0.25)),
])
def test_parse_valid_specs(spec, expected):
    assert parse_corruption(spec) == expected


@pytest.mark.parametrize("spec", ["blur:1", "gaussian:-1", "gaussian:0", "gaussian:inf", "gaussian",
                                  "mask:1.5", "mask:0", "mask:1", "mask:", "mask:x", "mask:nan",
                                  "saltpepper:-0.1", "saltpepper:2", "", "0.3"])
def test_bad_specs_are_config_errors_naming_the_spec(spec):
    with pytest.raises(ConfigError, match=f"noise {re.escape(repr(spec))}"):
        parse_corruption(spec)


def test_corrupt_rejects_a_bad_spec_too():
    with pytest.raises(ConfigError):
        corrupt(grey(), "blur:1")


@pytest.mark.parametrize("spec", ["gaussian:0.5", "mask:0.3", "saltpepper:0.2"])
def test_same_seed_same_corruption_other_seed_other_and_input_untouched(spec):
    x = torch.rand(8, 1, 12, 12, generator=gen(5))
    before = x.clone()
    a, b, c = corrupt(x, spec, gen(1)), corrupt(x, spec, gen(1)), corrupt(x, spec, gen(2))
    assert torch.equal(x, before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, x)


@pytest.mark.parametrize("spec", ["gaussian:0.5", "mask:0.3", "saltpepper:0.2"])
def test_without_a_generator_the_global_seed_decides(spec):
    x = torch.rand(2, 1, 8, 8, generator=gen(5))
    torch.manual_seed(7)
    a = corrupt(x, spec)
    torch.manual_seed(7)
    assert torch.equal(a, corrupt(x, spec))


def test_a_parsed_spec_gives_the_same_corruption_as_its_text():
    x = torch.rand(2, 1, 8, 8, generator=gen(5))
    assert torch.equal(corrupt(x, ("mask", 0.3), gen(3)), corrupt(x, "mask:0.3", gen(3)))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.75])
def test_mask_zeroes_a_fraction_p_and_leaves_the_rest_exactly(p):
    x = torch.rand(4, 1, 250, 250, generator=gen(9)) * 0.9 + 0.1      # no pixel is 0 before
    out = corrupt(x, f"mask:{p}", gen(1))
    zeroed = out == 0
    assert abs(zeroed.float().mean().item() - p) < fraction_tolerance(p)
    assert torch.equal(out[~zeroed], x[~zeroed])


@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_gaussian_noise_has_mean_zero_and_std_sigma_before_clamping(sigma):
    x = grey(0.5)            # 0.5 / sigma >= 5 standard deviations from either bound: no clamping
    noise = corrupt(x, f"gaussian:{sigma}", gen(2)) - x
    assert abs(noise.mean().item()) < 6 * sigma / math.sqrt(N_PIXELS)
    assert noise.std().item() == pytest.approx(sigma, rel=0.01)


def test_gaussian_noise_is_clamped_to_the_unit_interval():
    x = grey(0.5)
    out = corrupt(x, "gaussian:1.0", gen(3))
    assert out.min() == 0 and out.max() == 1
    p_clamped = math.erfc(0.5 / math.sqrt(2))            # P(|N(0, 1)| > 0.5)
    at_bounds = ((out == 0) | (out == 1)).float().mean().item()
    assert abs(at_bounds - p_clamped) < fraction_tolerance(p_clamped)


@pytest.mark.parametrize("p", [0.05, 0.4])
def test_saltpepper_sets_p_of_the_pixels_half_to_0_half_to_1(p):
    out = corrupt(grey(0.5), f"saltpepper:{p}", gen(4))
    salt, pepper = (out == 1).float().mean().item(), (out == 0).float().mean().item()
    kept = (out == 0.5).float().mean().item()
    assert abs(salt - p / 2) < fraction_tolerance(p / 2)
    assert abs(pepper - p / 2) < fraction_tolerance(p / 2)
    assert abs(kept - (1 - p)) < fraction_tolerance(p)
    assert salt + pepper + kept == pytest.approx(1.0)
