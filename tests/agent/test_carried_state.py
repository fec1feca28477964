"""Training with a carried state (truncated BPTT, PyDreamer's keep_state): chunked RSSM observes that pass
the last posterior on equal one long observe, and Agent.train_step(data, state) -> (state, metrics)."""

import copy

import numpy as np
import pytest
import torch

from torch_dreamer.agent.agent import Agent
from torch_dreamer.agent.rssm import RSSM
from torch_dreamer.data import BatchLoader, EpisodeStore
from torch_dreamer.data.samplers import SequentialSampler

VECTOR_ONLY = ("--encoder.cnn_keys", "$^", "--decoder.cnn_keys", "$^")


@pytest.mark.parametrize("discrete", [2, 0])
@pytest.mark.parametrize("cuts", [(4, 8), (5, 9), (1, 2, 3, 11)])
def test_chunked_observe_with_carried_state_is_bit_identical(discrete, cuts):
    """sample=False, so no RNG: the recurrence over (T, B) equals the chunks' recurrences bit for bit,
    with resets (is_first) mid-chunk, at a chunk start and at t = 0."""
    torch.manual_seed(0)
    rssm = RSSM(embed_size=5, act_dim=3, hidden=8, deter=6, stoch=2, discrete=discrete)
    T, B = 12, 3
    embed, action = torch.randn(T, B, 5), torch.randn(T, B, 3)
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[0], is_first[4, 1], is_first[6, 2], is_first[9, 0] = True, True, True, True
    with torch.no_grad():
        full, full_prior = rssm.observe(embed, action, is_first, sample=False)
        state, posts, priors = None, [], []
        for lo, hi in zip((0, *cuts), (*cuts, T)):
            post, prior = rssm.observe(embed[lo:hi], action[lo:hi], is_first[lo:hi], state, sample=False)
            posts.append(post)
            priors.append(prior)
            state = {key: value[-1] for key, value in post.items()}
    keys = {"deter", "stoch", "logit"} if discrete else {"deter", "stoch", "mean", "std"}
    assert set(full) == keys
    for key in keys:
        assert torch.equal(full[key], torch.cat([p[key] for p in posts])), key
    # The prior heads run once over all (T, B) rows, not in the recurrence: a different matmul batch
    # size may round differently, so they match to float precision only.
    assert set(full_prior) == keys - {"stoch"}  # the prior of observe holds statistics, no sample
    for key in full_prior:
        torch.testing.assert_close(full_prior[key], torch.cat([p[key] for p in priors]), rtol=1e-6, atol=1e-6)


def _agent(tiny, space, *flags):
    torch.manual_seed(0)
    return Agent(tiny(*VECTOR_ONLY, *flags), space(None, 5), 3, True)


def _model_loss(agent, data, state):
    """The world-model loss of one train_step on a copy of agent (same RNG draws each time)."""
    torch.manual_seed(1)
    return copy.deepcopy(agent).train_step(data, state)[1]["model_loss"]


def test_train_step_returns_the_last_posterior(tiny, space, batch):
    agent = _agent(tiny, space)
    initial = agent.wm.rssm.initial(2)
    state, metrics = agent.train_step(batch(B=2, image=None, vector=5))
    assert torch.isfinite(metrics["model_loss"])
    assert set(state) == set(initial)
    for key, value in state.items():
        assert value.shape == initial[key].shape and value.dtype == initial[key].dtype, key
        assert not value.requires_grad and value.abs().sum() > 0, key
    # The state is the world model's posterior after the last row (same RNG draws, same weights).
    data = batch(B=2, image=None, vector=5, seed=3)
    before = copy.deepcopy(agent)
    torch.manual_seed(7)
    state, _ = agent.train_step(data)
    torch.manual_seed(7)
    with torch.no_grad():
        post = before.wm.loss(data)[1]
    for key, value in state.items():
        assert torch.equal(value, post[key][-1]), key

def test_carried_state_feeds_continuations_and_resets_at_is_first(tiny, space, batch):
    agent = _agent(tiny, space)
    state, _ = agent.train_step(batch(B=2, image=None, vector=5))
    continuation = batch(B=2, image=None, vector=5, seed=1)
    continuation["is_first"][0] = False
    assert not torch.equal(_model_loss(agent, continuation, state), _model_loss(agent, continuation, None))
    restart = batch(B=2, image=None, vector=5, seed=1)  # is_first[0] True: the carried state is reset
    assert torch.equal(_model_loss(agent, restart, state), _model_loss(agent, restart, None))


def test_carried_state_under_bf16_autocast(tiny, space, batch):
    """Under bf16 the deterministic state stays bf16 through the scan (no dtype switch per step) while the
    distribution statistics and samples stay float32; a carried state feeds back in with those dtypes."""
    agent = _agent(tiny, space, "--precision", "bf16")
    state, _ = agent.train_step(batch(B=2, image=None, vector=5))
    expected = {"deter": torch.bfloat16, "stoch": torch.float32, "logit": torch.float32}
    assert {k: v.dtype for k, v in state.items()} == expected
    continuation = batch(B=2, image=None, vector=5, seed=1)
    continuation["is_first"][0] = False
    state, metrics = agent.train_step(continuation, state)
    assert torch.isfinite(metrics["model_loss"]) and {k: v.dtype for k, v in state.items()} == expected
