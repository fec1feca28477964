"""PyDreamer's importance-weighted bound (`iwae_samples`): K = 1 is the official loss, K > 1 is tighter."""

import math

import pytest
import torch

from torch_dreamer.agent.agent import Agent
from torch_dreamer.agent.optim import Optimizer
from torch_dreamer.agent.world_model import WorldModel, iwae_loss
from torch_dreamer.errors import UserError

VECTOR = ["--encoder.cnn_keys", "$^", "--decoder.cnn_keys", "$^"]


def chain_batch(T=12, B=16, states=4, seed=0):
    """Vector observations of a hidden 4-state chain the actions move (with 10% slips), reward in state 0."""
    g = torch.Generator().manual_seed(seed)
    action = torch.randint(0, 3, (T, B), generator=g)
    state = torch.randint(0, states, (B,), generator=g)
    obs, reward = [], []
    for t in range(T):
        if t:
            slip = torch.rand(B, generator=g) < 0.1
            state = torch.where(slip, torch.randint(0, states, (B,), generator=g), (state + action[t]) % states)
        obs.append(2 * torch.nn.functional.one_hot(state, states).float() + 0.3 * torch.randn((B, states), generator=g))
        reward.append((state == 0).float())
    data = {"vector": torch.stack(obs), "reward": torch.stack(reward),
            "action": torch.nn.functional.one_hot(action, 3).float()}
    data["action"][0] = 0
    data["is_first"] = torch.zeros(T, B, dtype=torch.bool)
    data["is_first"][0] = True
    data["is_last"] = torch.zeros(T, B, dtype=torch.bool)
    data["is_terminal"] = torch.zeros(T, B, dtype=torch.bool)
    return data


def standard_loss(wm, data):
    """The official DreamerV2 world-model loss, written out: balanced KL plus each head's mean NLL, scaled."""
    config = wm.config
    data = wm.preprocess(data)
    post, prior = wm.rssm.observe(wm.encoder(data), data["action"], data["is_first"])
    kl_loss, _ = wm.rssm.kl_loss(post, prior, **config.kl)
    feat = wm.rssm.feat(post)
    losses = {"kl": kl_loss}
    for name, head in wm.heads.items():
        out = head(feat if name in config.grad_heads else feat.detach())
        for key, dist in (out.items() if isinstance(out, dict) else [(name, out)]):
            losses[key] = -dist.log_prob(data[key]).mean()
    return sum(config.loss_scales.get(key, 1.0) * value for key, value in losses.items())


def test_one_sample_is_exactly_the_standard_loss(tiny, one_thread):
    config = tiny(*VECTOR, "--iwae_samples", "1", "--loss_scales.kl", "0.3", "--kl.free", "0.5")
    wm = WorldModel(config, {"vector": (4,)}, 3)
    data = chain_batch(T=5, B=3)
    torch.manual_seed(0)
    loss, *_ = wm.loss(data)
    torch.manual_seed(0)
    assert torch.equal(loss, standard_loss(wm, data))
    # The IWAE estimator with one sample and the analytic KL is the same number (Jensen with K = 1 is equality).
    wm = WorldModel(tiny(*VECTOR), {"vector": (4,)}, 3)
    torch.manual_seed(0)
    loss, post, metrics, kl_value = wm.loss(data)
    nll = sum(metrics[f"{key}_loss"] for key in ("vector", "reward", "discount"))
    per_step = kl_value.detach()  # (T, B); with the default scales (1) and free 0 the loss is mean KL + NLLs
    assert float(iwae_loss(per_step[..., None])) == pytest.approx(float(per_step.mean()), rel=1e-6)
    assert float(loss.detach()) == pytest.approx(float(kl_value.mean() + nll), rel=1e-5)


@pytest.fixture(scope="module")
def trained():
    """A tiny world model trained for 300 updates on the chain (about 10 s on one CPU thread)."""
    from tests.agent.conftest import tiny_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    wm = WorldModel(tiny_config(*VECTOR, "--clip_rewards", "identity"), {"vector": (4,)}, 3)
    opt = Optimizer("model", wm.parameters(), lr=3e-3)
    for step in range(300):
        loss, *_ = wm.loss(chain_batch(seed=step))
        opt(loss)
    torch.set_num_threads(threads)
    return wm


def test_more_samples_give_a_tighter_bound_than_the_elbo(trained, one_thread):
    data = chain_batch(T=12, B=64, seed=10_000)
    torch.manual_seed(1)
    elbo = trained.log_likelihood_bound(data, samples=1)
    torch.manual_seed(1)
    bound, single = trained.log_likelihood_bound(data, samples=8, per_sample=True)
    assert elbo.shape == bound.shape == (12, 64) and single.shape == (12, 64, 8)
    # Jensen on the same samples: log-mean-exp >= mean, step by step.
    assert (bound >= single.mean(-1) - 1e-5).all()
    # In expectation over samples: the 8-sample bound beats the ELBO (analytic KL) on average.
    gap = (bound - elbo).mean().item()
    assert gap > 0, gap
    assert math.isfinite(gap)


def test_training_with_samples(tiny, one_thread):
    agent = Agent(tiny(*VECTOR, "--iwae_samples", "4"), {"vector": ((4,), "float32")}, 3, True)
    data = chain_batch(T=5, B=3)
    loss, post, metrics, kl_value = agent.wm.loss(data)
    assert post["deter"].shape[:2] == (5, 3) and kl_value.shape == (5, 3)  # the first sample per sequence
    assert metrics["iwae_gap"] >= 0
    state, metrics = agent.train_step(data)
    assert state["deter"].shape[0] == 3
    state, metrics = agent.train_step(data, state)  # a carried state is repeated per sample
    assert math.isfinite(float(metrics["model_loss"]))


def test_samples_reject_free_nats(tiny):
    with pytest.raises(UserError, match="kl.free 0"):
        WorldModel(tiny(*VECTOR, "--iwae_samples", "2", "--kl.free", "1.0"), {"vector": (4,)}, 3)
