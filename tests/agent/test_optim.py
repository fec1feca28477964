"""Parity tests for torch_dreamer.agent.optim.Optimizer: Adam eps 1e-5, global-norm clipping,
decoupled weight decay on all parameters before the step, non-finite skips and gradient isolation
(reference §3 Optimizer, §13 item 12)."""

import copy
import math

import pytest
import torch
from torch import nn

from torch_dreamer import config as config_lib
from torch_dreamer.agent.optim import Optimizer

B1, B2 = 0.9, 0.999


def test_two_adam_steps_with_clipping_and_weight_decay_by_hand():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Optimizer("model", [w], lr=0.1, eps=1e-5, clip=2.5, wd=0.1)
    # Step 1: grad [3, 4] has global norm 5 and is clipped to norm 2.5: [1.5, 2.0].
    metrics = opt((torch.tensor([3.0, 4.0]) * w).sum())
    assert metrics["model_grad_norm"].item() == pytest.approx(5.0)      # the norm before clipping
    assert metrics["model_loss"].item() == pytest.approx(3 * 1 - 4 * 2)
    assert metrics["model_nonfinite"].item() == 0
    assert w.grad.tolist() == pytest.approx([1.5, 2.0], abs=1e-5)
    g1 = [1.5, 2.0]
    m = [(1 - B1) * g for g in g1]
    v = [(1 - B2) * g * g for g in g1]
    w1 = []
    for i, w0 in enumerate([1.0, -2.0]):
        decayed = (1 - 0.1) * w0                                  # w <- (1 - wd) w before the step
        m_hat, v_hat = m[i] / (1 - B1), v[i] / (1 - B2)
        # Keras adds eps to the uncorrected sqrt(v): eps / sqrt(1 - beta2^t) after bias correction.
        w1.append(decayed - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-5 / math.sqrt(1 - B2)))
    assert w.tolist() == pytest.approx(w1, abs=1e-6)
    # Step 2: grad [-1, 0] (norm 1, not clipped).
    opt((torch.tensor([-1.0, 0.0]) * w).sum())
    g2 = [-1.0, 0.0]
    w2 = []
    for i in range(2):
        m[i] = B1 * m[i] + (1 - B1) * g2[i]
        v[i] = B2 * v[i] + (1 - B2) * g2[i] ** 2
        m_hat, v_hat = m[i] / (1 - B1 ** 2), v[i] / (1 - B2 ** 2)
        w2.append(0.9 * w1[i] - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-5 / math.sqrt(1 - B2 ** 2)))
    assert w.tolist() == pytest.approx(w2, abs=1e-6)


def test_config_optimizers_use_eps_1e5_and_wd_1e6():
    config = config_lib.resolve([])
    for name in ("model_opt", "actor_opt", "critic_opt"):
        assert config[name]["eps"] == pytest.approx(1e-5) and config[name]["wd"] == pytest.approx(1e-6)
        assert config[name]["clip"] == 100
    w = nn.Parameter(torch.tensor([1.0]))
    opt = Optimizer("model", [w], **{**config.model_opt.to_dict(), "lr": 0.1})
    assert opt.eps == pytest.approx(1e-5)
    # A gradient equal to the effective Keras eps of step 1, eps / sqrt(1 - beta2), makes the first
    # Adam step lr * g / (|g| + eps_1) = lr / 2.
    eps_1 = 1e-5 / math.sqrt(1 - B2)
    opt(eps_1 * w.sum())
    assert w.item() == pytest.approx((1 - 1e-6) * 1.0 - 0.1 / 2, abs=1e-7)
    assert opt.opt.param_groups[0]["eps"] == pytest.approx(eps_1)


def test_weight_decay_applies_to_every_parameter():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.bias.fill_(-4.0)
    opt = Optimizer("x", layer.parameters(), lr=0.0, eps=1e-5, clip=100, wd=0.25)
    opt(layer(torch.ones(1, 2)).sum())
    # lr 0 isolates the decay: biases decay too.
    assert layer.weight.tolist() == [[1.5, 1.5], [1.5, 1.5]]
    assert layer.bias.tolist() == [-3.0, -3.0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_loss_skips_the_update(bad):
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Optimizer("model", [w], lr=0.1, eps=1e-5, clip=100, wd=0.1)
    for count in (1, 2):
        metrics = opt(w.sum() * bad)
        assert w.tolist() == [1.0, -2.0]                  # no decay, no step
        assert opt.nonfinite == count
        assert metrics["model_nonfinite"].item() == 1.0
        assert not math.isfinite(metrics["model_grad_norm"].item())
    assert not opt.opt.state                               # Adam's moments were never touched
    opt((torch.tensor([3.0, 4.0]) * w).sum())
    assert opt.nonfinite == 0
    # The first real step is Adam's step 1: lr * g / (|g| + eps_1) after the decay.
    eps_1 = 1e-5 / math.sqrt(1 - B2)
    assert w.tolist() == pytest.approx([0.9 - 0.1 * 3 / (3 + eps_1), -1.8 - 0.1 * 4 / (4 + eps_1)], abs=1e-6)


def test_no_clipping_when_clip_is_zero():
    w = nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = Optimizer("x", [w], lr=0.1, eps=1e-5, clip=0, wd=0.0)
    metrics = opt((torch.tensor([300.0, 400.0]) * w).sum())
    assert metrics["x_grad_norm"].item() == pytest.approx(500.0)
    assert w.grad.tolist() == [300.0, 400.0]


def test_gradients_stay_inside_the_optimizer_parameters():
    torch.manual_seed(0)
    world_model, actor = nn.Linear(3, 3), nn.Linear(3, 1)
    frozen = nn.Parameter(torch.ones(1), requires_grad=False)
    wm_before = [p.detach().clone() for p in world_model.parameters()]
    actor_before = [p.detach().clone() for p in actor.parameters()]
    opt = Optimizer("actor", list(actor.parameters()) + [frozen], lr=0.1, eps=1e-5, clip=100, wd=1e-6)
    assert len(opt.params) == 2                               # parameters without grad are dropped
    loss = (actor(world_model(torch.randn(4, 3))) * frozen).pow(2).mean()
    opt(loss)
    assert all(p.grad is None for p in world_model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(wm_before, world_model.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(actor_before, actor.parameters()))


def test_state_dict_round_trip():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Optimizer("x", [w], lr=0.1, eps=1e-5, clip=100, wd=0.0)
    opt((torch.tensor([3.0, 4.0]) * w).sum())
    w2 = nn.Parameter(w.detach().clone())
    opt2 = Optimizer("x", [w2], lr=0.1, eps=1e-5, clip=100, wd=0.0)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as a checkpoint file would
    opt((torch.tensor([-1.0, 2.0]) * w).sum())
    opt2((torch.tensor([-1.0, 2.0]) * w2).sum())
    assert torch.equal(w, w2)


def test_only_adam_is_supported():
    with pytest.raises(ValueError, match="adam"):
        Optimizer("model", [nn.Parameter(torch.zeros(1))], opt="sgd")
