"""Parity tests for torch_dreamer.agent.behavior: lambda-returns, the actor/critic slicing and
objectives, the slow critic schedule and schedules (reference §4 Targets / Critic / Actor)."""

import contextlib
import math

import pytest
import torch
from torch import nn

from torch_dreamer.agent import dists
from torch_dreamer.config import Config
from torch_dreamer.agent.behavior import ActorCritic, StreamNorm, lambda_return, schedule
from torch_dreamer.agent.world_model import WorldModel

LOG_2PI = math.log(2 * math.pi)


# ----- lambda_return -----

REWARD = [1.0, 2.0, 3.0]
VALUE = [0.5, 1.0, 1.5]     # v_0 is never used: R_t bootstraps from v_{t+1}
DISC = [0.9, 0.8, 0.7]
BOOT = 2.0


def _lambda(lam, value=VALUE):
    col = lambda xs: torch.tensor(xs)[:, None]
    return lambda_return(col(REWARD), col(value), col(DISC), torch.tensor([BOOT]), lam)[:, 0].tolist()


def test_lambda_return_three_steps_by_hand():
    # R_2 = 3 + 0.7 * 2 = 4.4
    # R_1 = 2 + 0.8 * (0.5 * 1.5 + 0.5 * 4.4) = 2 + 0.8 * 2.95 = 4.36
    # R_0 = 1 + 0.9 * (0.5 * 1.0 + 0.5 * 4.36) = 1 + 0.9 * 2.68 = 3.412
    assert _lambda(0.5) == pytest.approx([3.412, 4.36, 4.4], abs=1e-5)
    # The first value does not enter any target.
    assert _lambda(0.5, value=[-100.0, 1.0, 1.5]) == pytest.approx([3.412, 4.36, 4.4], abs=1e-5)


def test_lambda_one_is_discounted_monte_carlo():
    # R_2 = 3 + 0.7 * 2 = 4.4; R_1 = 2 + 0.8 * 4.4 = 5.52; R_0 = 1 + 0.9 * 5.52 = 5.968
    assert _lambda(1.0) == pytest.approx([5.968, 5.52, 4.4], abs=1e-5)
    mc0 = 1 + 0.9 * 2 + 0.9 * 0.8 * 3 + 0.9 * 0.8 * 0.7 * BOOT
    assert _lambda(1.0)[0] == pytest.approx(mc0, abs=1e-5)


def test_lambda_zero_is_one_step():
    # R_t = r_t + d_t v_{t+1}: [1 + 0.9 * 1.0, 2 + 0.8 * 1.5, 3 + 0.7 * 2]
    assert _lambda(0.0) == pytest.approx([1.9, 3.2, 4.4], abs=1e-5)


# ----- ActorCritic with stub networks -----

class StubActor(nn.Module):
    """Two actions with logits [0, theta * t] where t = feat[..., 0]; theta = ln 2."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(math.log(2.0)))

    def forward(self, feat):
        t = feat[..., 0]
        return dists.OneHotDist(logits=torch.stack([torch.zeros_like(t), self.theta * t], -1))


class StubCritic(nn.Module):
    """Unit-variance value a * t + b."""

    def __init__(self, a=10.0, b=0.0):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))

    def forward(self, feat):
        return dists.MSEDist(self.a * feat[..., 0] + self.b, 0)


def _behavior(tiny, *flags, discrete=True):
    ac = ActorCritic(tiny(*flags), feat_size=1, act_dim=2, discrete=discrete)
    ac.actor = StubActor()
    ac.critic = StubCritic(10.0)
    ac.target_critic = StubCritic(10.0)
    return ac


def _seq():
    """H = 3: states t = 0..3 (feat = t), action_0 = 0, action_1 = [1, 0], action_2 = [0, 1]."""
    return {
        "feat": torch.arange(4.0)[:, None, None].requires_grad_(True),                 # (4, 1, 1)
        "action": torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])[:, None].requires_grad_(True),
        "weight": torch.tensor([1.0, 0.9, 0.81, 0.729])[:, None],
    }


TARGET = [5.0, 7.0, 13.0]
# Policy on feat[:-2] (t = 0, 1): probs [1/2, 1/2] and [1/3, 2/3]; actions action[1:-1] = [0], [1].
LOGPI = [math.log(1 / 2), math.log(2 / 3)]
ENT = [math.log(2), -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))]
# Baseline v_slow(feat[:-2]) = [0, 10]; advantage target[1:] - baseline = [7, 3].
ADV = [7.0, 3.0]
W = [1.0, 0.9]


def _target():
    return torch.tensor(TARGET)[:, None].requires_grad_(True)


def test_auto_resolution_of_actor_grad_and_dist(tiny):
    discrete = ActorCritic(tiny(), 8, 3, discrete=True)
    assert discrete.actor_grad == "reinforce" and discrete.actor.head.dist == "onehot"
    continuous = ActorCritic(tiny(), 8, 3, discrete=False)
    assert continuous.actor_grad == "dynamics" and continuous.actor.head.dist == "trunc_normal"
    forced = ActorCritic(tiny("--actor_grad", "both", "--actor.dist", "normal"), 8, 3, discrete=True)
    assert forced.actor_grad == "both" and forced.actor.head.dist == "normal"


def test_actor_loss_reinforce_slicing(tiny):
    ac = _behavior(tiny, "--actor_grad", "reinforce", "--actor_ent", "0.1")
    seq, target = _seq(), _target()
    loss, metrics = ac.actor_loss(seq, target)
    obj = [LOGPI[i] * ADV[i] + 0.1 * ENT[i] for i in range(2)]
    assert loss.item() == pytest.approx(-(W[0] * obj[0] + W[1] * obj[1]) / 2, abs=1e-6)
    assert metrics["actor_ent"].item() == pytest.approx(sum(ENT) / 2, abs=1e-6)
    assert metrics["actor_ent_scale"].item() == pytest.approx(0.1)
    loss.backward()
    # d/dtheta: t = 0 contributes nothing; at t = 1 (a = 1): d log pi = 1 - p_1 = 1/3,
    # dH = -p_1 (log p_1 + H) = -(2/3)(log 2/3 + H_1).
    dent = -(2 / 3) * (math.log(2 / 3) + ENT[1])
    assert ac.actor.theta.grad.item() == pytest.approx(-(W[1] * (ADV[1] / 3 + 0.1 * dent)) / 2, abs=1e-6)
    # The advantage, the action and the features are constants for the actor.
    assert target.grad is None and seq["action"].grad is None and seq["feat"].grad is None


def test_actor_loss_dynamics(tiny):
    ac = _behavior(tiny, "--actor_grad", "dynamics", "--actor_ent", "0.1")
    seq, target = _seq(), _target()
    loss, _ = ac.actor_loss(seq, target)
    obj = [TARGET[1] + 0.1 * ENT[0], TARGET[2] + 0.1 * ENT[1]]
    assert loss.item() == pytest.approx(-(W[0] * obj[0] + W[1] * obj[1]) / 2, abs=1e-6)
    loss.backward()
    # The return is backpropagated: d loss / d target[1:] = -weight[:-2] / 2.
    assert target.grad[:, 0].tolist() == pytest.approx([0.0, -0.5, -0.45], abs=1e-7)


def test_actor_loss_both_mix(tiny):
    ac = _behavior(tiny, "--actor_grad", "both", "--actor_grad_mix", "0.3", "--actor_ent", "0.1")
    seq, target = _seq(), _target()
    loss, metrics = ac.actor_loss(seq, target)
    obj = [0.3 * TARGET[i + 1] + 0.7 * LOGPI[i] * ADV[i] + 0.1 * ENT[i] for i in range(2)]
    assert loss.item() == pytest.approx(-(W[0] * obj[0] + W[1] * obj[1]) / 2, abs=1e-6)
    assert metrics["actor_grad_mix"].item() == pytest.approx(0.3)
    loss.backward()
    assert target.grad[:, 0].tolist() == pytest.approx([0.0, -0.3 * 0.5, -0.3 * 0.45], abs=1e-7)
    # As in the official, log pi(a) treats the one-hot action as a constant: the reinforce term sends no
    # gradient into the (straight-through) action; only the dynamics term reaches the model, via the return.
    assert seq["action"].grad is None
    # The reinforce term still trains the actor: d/dtheta at t = 1 (a = 1) is 0.7 * adv * (1 - p_1) = 0.7 * 3 / 3.
    dent = -(2 / 3) * (math.log(2 / 3) + ENT[1])
    assert ac.actor.theta.grad.item() == pytest.approx(-(W[1] * (0.7 * ADV[1] / 3 + 0.1 * dent)) / 2, abs=1e-6)


def test_slow_baseline_false_takes_the_reinforce_baseline_from_the_online_critic(tiny):
    ac = _behavior(tiny, "--actor_grad", "reinforce", "--actor_ent", "0.0", "--slow_baseline", "False")
    ac.critic = StubCritic(0.0)  # online critic 0: advantages are the returns target[1:] = [7, 13]
    loss, _ = ac.actor_loss(_seq(), _target())
    assert loss.item() == pytest.approx(-(W[0] * LOGPI[0] * 7 + W[1] * LOGPI[1] * 13) / 2, abs=1e-6)
    ac = _behavior(tiny, "--actor_grad", "reinforce", "--actor_ent", "0.0")  # default True: the slow critic
    ac.critic = StubCritic(0.0)
    loss, _ = ac.actor_loss(_seq(), _target())
    assert loss.item() == pytest.approx(-(W[0] * LOGPI[0] * ADV[0] + W[1] * LOGPI[1] * ADV[1]) / 2, abs=1e-6)


def test_actor_grad_mix_and_entropy_follow_schedules(tiny):
    ac = _behavior(tiny, "--actor_grad", "both", "--actor_grad_mix", "linear(1,0,10)",
                   "--actor_ent", "warmup(10,0.2)")
    ac.step = 5
    loss, metrics = ac.actor_loss(_seq(), _target())
    assert metrics["actor_grad_mix"].item() == pytest.approx(0.5)
    assert metrics["actor_ent_scale"].item() == pytest.approx(0.1)
    obj = [0.5 * TARGET[i + 1] + 0.5 * LOGPI[i] * ADV[i] + 0.1 * ENT[i] for i in range(2)]
    assert loss.item() == pytest.approx(-(W[0] * obj[0] + W[1] * obj[1]) / 2, abs=1e-6)


def test_critic_loss_slicing(tiny):
    ac = _behavior(tiny)
    seq, target = _seq(), _target()
    loss, metrics = ac.critic_loss(seq, target)
    # Critic on feat[:-1] (t = 0, 1, 2): values [0, 10, 20]; errors [5, -3, -7]; weights [1, 0.9, 0.81].
    nll = [0.5 * 25 + 0.5 * LOG_2PI, 0.5 * 9 + 0.5 * LOG_2PI, 0.5 * 49 + 0.5 * LOG_2PI]
    assert loss.item() == pytest.approx((nll[0] * 1 + nll[1] * 0.9 + nll[2] * 0.81) / 3, abs=1e-5)
    assert metrics["critic"].item() == pytest.approx(10.0)
    loss.backward()
    # d/da of 0.5 (target - a t)^2 is -(target - a t) t, weighted and averaged over the 3 steps.
    assert ac.critic.a.grad.item() == pytest.approx(-(0.9 * -3 * 1 + 0.81 * -7 * 2) / 3, abs=1e-5)
    assert target.grad is None and seq["feat"].grad is None


def test_target_uses_slow_critic_and_lambda_alignment(tiny):
    ac = _behavior(tiny, "--discount_lambda", "0.5")
    ac.critic = StubCritic(1000.0, 1000.0)        # the online critic must not be used
    ac.target_critic = StubCritic(0.5, 0.5)        # v_slow(t) = 0.5 t + 0.5: [0.5, 1.0, 1.5, 2.0]
    seq = {"feat": torch.arange(4.0)[:, None, None],
           "reward": torch.tensor([1.0, 2.0, 3.0, 99.0])[:, None],        # the last reward is unused
           "discount": torch.tensor([0.9, 0.8, 0.7, 0.123])[:, None]}     # the last discount is unused
    target, metrics = ac.target(seq)
    assert target.shape == (3, 1)
    assert target[:, 0].tolist() == pytest.approx([3.412, 4.36, 4.4], abs=1e-5)
    assert metrics["critic_slow"].item() == pytest.approx(1.25)
    assert metrics["critic_target"].item() == pytest.approx((3.412 + 4.36 + 4.4) / 3, abs=1e-5)


# ----- slow critic -----

def _fill(module, value):
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


def _values(module):
    return {round(v, 6) for p in module.parameters() for v in p.flatten().tolist()}


def test_slow_critic_copy_schedule(tiny):
    # slow_target_fraction defaults to the int 1 (as the official configs.yaml), so the config type
    # check refuses 0.5; build the config around it.
    base = tiny("--slow_target_update", "3").to_dict()
    ac = ActorCritic(Config({**base, "slow_target_fraction": 0.5}), 4, 2, discrete=True)
    _fill(ac.critic, 1.0)
    _fill(ac.target_critic, -5.0)
    ac.update_slow_target()                 # update 0: hard copy regardless of the fraction
    assert _values(ac.target_critic) == {1.0}
    _fill(ac.critic, 3.0)
    ac.update_slow_target()                 # update 1
    ac.update_slow_target()                 # update 2
    assert _values(ac.target_critic) == {1.0}
    ac.update_slow_target()                 # update 3: 0.5 * 3 + 0.5 * 1
    assert _values(ac.target_critic) == {2.0}
    _fill(ac.critic, 5.0)
    ac.update_slow_target()                 # 4
    ac.update_slow_target()                 # 5
    assert _values(ac.target_critic) == {2.0}
    ac.update_slow_target()                 # 6: 0.5 * 5 + 0.5 * 2
    assert _values(ac.target_critic) == {3.5}
    assert ac.updates == 7
    assert not any(p.requires_grad for p in ac.target_critic.parameters())


def test_slow_critic_default_hard_copy_every_100(tiny):
    ac = ActorCritic(tiny(), 4, 2, discrete=True)
    assert ac.config.slow_target_update == 100 and ac.config.slow_target_fraction == 1
    _fill(ac.critic, 2.0)
    ac.update_slow_target()
    assert _values(ac.target_critic) == {2.0}
    _fill(ac.critic, 7.0)
    for _ in range(99):
        ac.update_slow_target()             # updates 1..99
    assert _values(ac.target_critic) == {2.0}
    ac.update_slow_target()                 # update 100
    assert _values(ac.target_critic) == {7.0}


def test_without_slow_target_the_critic_is_its_own_target(tiny):
    ac = ActorCritic(tiny("--slow_target", "False"), 4, 2, discrete=True)
    assert ac.slow_critic is ac.critic
    ac.update_slow_target()
    assert ac.updates == 1


# ----- schedules and reward normalisation -----

def test_schedules():
    assert schedule("linear(1,0,10)", 5) == pytest.approx(0.5)
    assert schedule("linear(1,0,10)", 0) == pytest.approx(1.0)
    assert schedule("linear(1,0,10)", 20) == pytest.approx(0.0)       # clipped after the duration
    assert schedule("linear(3e-3, 3e-4, 2.5e6)", 1.25e6) == pytest.approx(1.65e-3)
    assert schedule("warmup(10,2)", 5) == pytest.approx(1.0)
    assert schedule("warmup(10,2)", 50) == pytest.approx(2.0)
    assert schedule("exp(1,0,10)", 10) == pytest.approx(0.5)          # one half-life
    assert schedule("exp(2,1,5)", 10) == pytest.approx(1.25)          # (2 - 1) / 4 + 1
    assert schedule("horizon(10,100,10)", 0) == pytest.approx(0.9)    # 1 - 1/10
    assert schedule("horizon(10,100,10)", 5) == pytest.approx(1 - 1 / 55)
    assert schedule("horizon(10,100,10)", 10) == pytest.approx(0.99)
    assert schedule(0.1, 123) == pytest.approx(0.1)
    assert schedule("3e-4", 0) == pytest.approx(3e-4)
    with pytest.raises(ValueError):
        schedule("fast", 0)


def test_stream_norm():
    inputs = torch.tensor([1.0, -3.0])
    out, metrics = StreamNorm(momentum=1.0)(inputs)             # the official default: identity
    assert out.tolist() == [1.0, -3.0]
    assert metrics["mean"].item() == pytest.approx(-1.0)
    assert metrics["std"].item() == pytest.approx(math.sqrt(8.0))  # unbiased std of [1, -3]
    norm = StreamNorm(momentum=0.5, scale=2.0)
    out, _ = norm(inputs)
    # mag = 0.5 * 1 + 0.5 * mean(|x|) = 0.5 + 1 = 1.5; out = x / 1.5 * 2
    assert out.tolist() == pytest.approx([2 / 1.5, -6 / 1.5], abs=1e-6)


# ----- a real update does not touch the world model -----

def test_train_step_leaves_world_model_gradients_alone(tiny, space, batch):
    config = tiny()
    wm = WorldModel(config, {k: s for k, (s, _) in space().items()}, 3)
    ac = ActorCritic(config, wm.rssm.feat_size, 3, discrete=True)
    data = batch()
    torch.manual_seed(0)
    # Start states that still carry a graph into the world model.
    _, post, _, _ = wm.loss(data)
    before = [p.detach().clone() for p in wm.parameters()]
    actor_before = [p.detach().clone() for p in ac.actor.parameters()]
    reward_fn = lambda seq: dists.mode(wm.heads["reward"](seq["feat"]))
    metrics = ac.train_step(wm, post, data["is_terminal"], reward_fn, contextlib.nullcontext)
    assert all(p.grad is None for p in wm.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, wm.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, ac.actor.parameters()))
    for key in ("actor_loss", "actor_grad_norm", "critic_loss", "critic_grad_norm", "critic_slow",
                "critic_target", "critic", "actor_ent", "actor_ent_scale", "reward_mean", "reward_std"):
        assert torch.isfinite(metrics[key]), key
    assert ac.updates == 1
