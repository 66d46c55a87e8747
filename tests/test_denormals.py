"""Subnormals flushed to zero inside ``flush_denormal``, on every thread, the caller's state after."""
from __future__ import annotations

import pytest
import torch

from aelab.denormals import flush_denormal, set_flush_denormal


def _flushing() -> bool:
    return (torch.tensor([1e-310], dtype=torch.float64) * 1.0).item() == 0


@pytest.mark.parametrize("before", [False, True])
def test_flush_denormal_restores_the_previous_state(before):
    if not torch.set_flush_denormal(before):
        if before:
            pytest.skip("this CPU cannot flush denormals")
    try:
        assert _flushing() == before
        with flush_denormal():
            assert _flushing()
        assert _flushing() == before
    finally:
        torch.set_flush_denormal(False)


def test_flush_denormal_restores_the_state_after_an_error():
    torch.set_flush_denormal(False)
    with pytest.raises(ZeroDivisionError), flush_denormal():
        1 / 0
    assert not _flushing()


def subnormal_products() -> torch.Tensor:
    """1e-20 * 1e-20 = 1e-40, a subnormal float32, a million times over: a parallel op, so each
    of torch's threads computes a part."""
    return torch.full((1_000_000,), 1e-20).mul(1e-20)


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs torch's OpenMP workers")
def test_the_workers_flush_too_when_they_started_before():
    set_flush_denormal(False)
    assert (subnormal_products() != 0).all()          # the workers now exist, flag off
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    torch.set_flush_denormal(False)
    try:
        with flush_denormal():
            assert (subnormal_products() == 0).all()  # every part, the workers' parts too
        assert (subnormal_products() != 0).all()      # all of them back to the caller's state
    finally:
        set_flush_denormal(False)
