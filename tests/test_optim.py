"""LeanAdam: torch's fused Adam, bit for bit, with its hooks, closures and state_dict."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from aelab.optim import LeanAdam, make_optimizer


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.Linear(3, 2))


def run(opt_class, steps=6, weight_decay=0.0, state=None):
    """Train ``net()`` for ``steps`` steps; the last layer sits out the odd steps (no gradient)."""
    model = net()
    opt = opt_class(model.parameters(), lr=1e-2, weight_decay=weight_decay, fused=True)
    if state is not None:
        opt.load_state_dict(state)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(8, 5, generator=g)
        opt.zero_grad(set_to_none=True)
        out = model[:3](x) if step % 2 else model(x)
        out.square().sum().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_same_weights_and_state_as_torchs_fused_adam_bit_for_bit(weight_decay):
    lean, lean_opt = run(LeanAdam, weight_decay=weight_decay)
    plain, plain_opt = run(torch.optim.Adam, weight_decay=weight_decay)
    for a, b in zip(lean.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    lean_state, plain_state = lean_opt.state_dict(), plain_opt.state_dict()
    assert lean_state["param_groups"] == plain_state["param_groups"]
    for index, entry in plain_state["state"].items():
        for key, value in entry.items():
            assert torch.equal(lean_state["state"][index][key], value), (index, key)


def test_state_dicts_move_between_lean_and_torchs_adam():
    _, plain_opt = run(torch.optim.Adam, steps=3)
    resumed, _ = run(LeanAdam, steps=3, state=plain_opt.state_dict())
    _, lean_opt = run(LeanAdam, steps=3)
    back, _ = run(torch.optim.Adam, steps=3, state=lean_opt.state_dict())
    for a, b in zip(resumed.parameters(), back.parameters()):
        assert torch.equal(a, b)


def test_step_hooks_run_once_per_step_every_step():
    model = net()
    opt = LeanAdam(model.parameters(), lr=1e-2, fused=True)
    seen = []
    opt.register_step_pre_hook(lambda *_: seen.append("pre"))
    opt.register_step_post_hook(lambda *_: seen.append("post"))
    for _ in range(3):
        model(torch.randn(2, 5)).sum().backward()
        opt.step()
    assert seen == ["pre", "post"] * 3


def test_a_closure_is_evaluated_and_its_loss_returned():
    model = net()
    opt = LeanAdam(model.parameters(), lr=1e-2, fused=True)
    x = torch.randn(4, 5)

    def closure():
        opt.zero_grad()
        loss = model(x).square().sum()
        loss.backward()
        return loss

    first = opt.step(closure)
    second = opt.step(closure)
    assert torch.is_tensor(first) and second < first


def test_make_optimizer_gives_lean_adam_on_the_cpu():
    assert isinstance(make_optimizer(net(), 1e-3), LeanAdam)


def test_a_kernel_with_another_signature_falls_back_to_torchs_step_without_a_double_step(monkeypatch):
    def other_signature(*args, **kwargs):
        raise TypeError("_fused_adam_() got an unexpected keyword argument 'maximize'")

    monkeypatch.setattr("aelab.optim.FUSED_ADAM", other_signature)
    lean, lean_opt = run(LeanAdam)
    assert lean_opt.torch_step_only
    plain, plain_opt = run(torch.optim.Adam)
    for a, b in zip(lean.parameters(), plain.parameters()):
        assert torch.equal(a, b)
