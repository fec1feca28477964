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
    assert opt.opt.param_groups[0]["eps"] == pytest.approx(1e-5)  # the correction never rewrites param groups


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
    state = opt.opt.state[w]                               # Adam's moments and step count were never touched
    assert state["step"].item() == 0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any()
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


# ----------------------------------------------------------------------------- the sync-free step


class TorchAdamReference:
    """The previous implementation: torch.optim.Adam with eps_t = eps / sqrt(1 - beta2^t) written into its
    param groups before each step, and a host-side skip of non-finite updates."""

    def __init__(self, params, lr, eps, clip, wd):
        self.params, self.eps, self.clip, self.wd = list(params), eps, clip, wd
        self.opt = torch.optim.Adam(self.params, lr=lr, eps=eps)

    def __call__(self, loss):
        self.opt.zero_grad(set_to_none=True)
        loss.backward(inputs=self.params)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        if not torch.isfinite(norm):
            return
        with torch.no_grad():
            torch._foreach_mul_(self.params, 1.0 - self.wd)
        state = self.opt.state.get(self.params[0])
        step = int(state["step"]) + 1 if state else 1
        self.opt.param_groups[0]["eps"] = self.eps / math.sqrt(1 - B2 ** step)
        self.opt.step()


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ELU(), nn.Linear(8, 2))


def _loss(net, step, bad=False):
    g = torch.Generator().manual_seed(step)
    loss = net(torch.randn(16, 4, generator=g)).pow(2).mean() * (1 + step)
    return loss * float("nan") if bad else loss


def test_matches_torch_adam_with_keras_eps_over_many_steps_and_skips():
    ours, ref = _net(), _net()
    opt = Optimizer("model", ours.parameters(), lr=3e-3, eps=1e-5, clip=1.0, wd=1e-2)
    reference = TorchAdamReference(ref.parameters(), lr=3e-3, eps=1e-5, clip=1.0, wd=1e-2)
    for step in range(30):
        bad = step in (0, 7, 8)  # a skipped first update too: the step count must stay 0
        opt(_loss(ours, step, bad))
        reference(_loss(ref, step, bad))
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours.parameters(), ref.parameters()):
        sa, sb = opt.opt.state[a], reference.opt.state[b]
        assert sa["step"].item() == sb["step"].item() == 27
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-5, atol=1e-10)


def test_the_step_never_reads_a_tensor_on_the_host(monkeypatch):
    net = _net()
    opt = Optimizer("model", net.parameters(), lr=1e-3, eps=1e-5, clip=100, wd=1e-6)
    opt(_loss(net, 0))  # the first call creates the moments

    def host_read(*args):
        raise AssertionError("the optimizer step read a device value on the host")

    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    metrics = opt(_loss(net, 1))
    monkeypatch.undo()
    assert metrics["model_nonfinite"].item() == 0 and opt.nonfinite == 0


def test_nonfinite_streak_is_read_lazily():
    net = _net()
    opt = Optimizer("model", net.parameters(), lr=1e-3, eps=1e-5, clip=100, wd=0.0)
    assert opt.nonfinite == 0
    for step in range(3):
        opt(_loss(net, step, bad=True))
    assert opt.nonfinite == 3
    opt(_loss(net, 3))
    assert opt.nonfinite == 0


def test_old_torch_adam_checkpoints_load_and_continue_identically():
    """Checkpoints hold torch.optim.Adam's state (written by the previous implementation)."""
    ours, ref = _net(), _net()
    reference = TorchAdamReference(ref.parameters(), lr=1e-3, eps=1e-5, clip=100, wd=1e-6)
    for step in range(3):
        reference(_loss(ref, step))
    with torch.no_grad():
        for a, b in zip(ours.parameters(), ref.parameters()):
            a.copy_(b)
    opt = Optimizer("model", ours.parameters(), lr=1e-3, eps=1e-5, clip=100, wd=1e-6)
    opt.load_state_dict(copy.deepcopy({"opt": reference.opt.state_dict(), "scaler": {}}))
    for step in range(3, 6):
        opt(_loss(ours, step))
        reference(_loss(ref, step))
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert isinstance(opt.state_dict()["opt"]["state"][0]["step"], torch.Tensor)


def test_parameters_without_gradient_keep_their_moments():
    used, unused = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = Optimizer("x", [used, unused], lr=0.1, eps=1e-5, clip=100, wd=0.5)
    opt((used * 3).sum())
    assert unused.tolist() == [0.5, 0.5]                    # decayed, as the official decays every weight
    assert not opt.opt.state[unused]                        # but no Adam step
    assert opt.opt.state[used]["step"].item() == 1


def test_fp16_loss_scaling_skips_overflowing_steps(monkeypatch):
    scaler_class = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda enabled: scaler_class("cpu", enabled=enabled))
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Optimizer("model", [w], lr=0.1, eps=1e-5, clip=100, wd=0.0, precision=16)
    assert opt.scaler.is_enabled()
    start = opt.scaler.get_scale()
    metrics = opt(w.sum() * float("inf"))
    assert w.tolist() == [1.0, -2.0] and metrics["model_nonfinite"].item() == 1
    assert metrics["model_loss_scale"].item() == start / 2  # the overflow halved the scale
    opt((torch.tensor([3.0, 4.0]) * w).sum())
    eps_1 = 1e-5 / math.sqrt(1 - B2)
    assert w.tolist() == pytest.approx([1.0 - 0.1 * 3 / (3 + eps_1), -2.0 - 0.1 * 4 / (4 + eps_1)], abs=1e-6)
