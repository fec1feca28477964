"""Shared helpers for the agent tests: tiny configurations and synthetic batches."""

import numpy as np
import pytest
import torch

from torch_dreamer import config as config_lib

# Every network small enough that a full train step takes well under a second on CPU.
TINY = [
    "--rssm.deter", "16", "--rssm.hidden", "16", "--rssm.stoch", "4", "--rssm.discrete", "4",
    "--encoder.cnn_depth", "2", "--decoder.cnn_depth", "2",
    "--encoder.mlp_layers", "16,16", "--decoder.mlp_layers", "16,16",
    "--reward_head.layers", "1", "--reward_head.units", "16",
    "--discount_head.layers", "1", "--discount_head.units", "16",
    "--actor.layers", "1", "--actor.units", "16", "--critic.layers", "1", "--critic.units", "16",
    "--expl_head.layers", "1", "--expl_head.units", "16",
    "--imag_horizon", "3",
]


def tiny_config(*flags, names=()):
    return config_lib.resolve(list(names), TINY + [str(f) for f in flags])


def make_batch(T=4, B=2, act_dim=3, discrete=True, image=(64, 64, 3), vector=None, seed=0):
    """A (T, B, ...) batch in the official layout: action[t] led to obs[t]; chunk starts are is_first."""
    g = torch.Generator().manual_seed(seed)
    data = {}
    if image:
        data["image"] = torch.randint(0, 256, (T, B) + tuple(image), dtype=torch.uint8, generator=g)
    if vector:
        data["vector"] = torch.randn((T, B, vector), generator=g)
    if discrete:
        data["action"] = torch.nn.functional.one_hot(torch.randint(0, act_dim, (T, B), generator=g), act_dim).float()
    else:
        data["action"] = torch.rand((T, B, act_dim), generator=g) * 2 - 1
    data["action"][0] = 0
    data["reward"] = torch.randn((T, B), generator=g)
    data["is_first"] = torch.zeros(T, B, dtype=torch.bool)
    data["is_first"][0] = True
    data["is_last"] = torch.zeros(T, B, dtype=torch.bool)
    data["is_terminal"] = torch.zeros(T, B, dtype=torch.bool)
    data["is_terminal"][-1, 0] = True
    data["is_last"][-1, 0] = True
    return data


def obs_space(image=(64, 64, 3), vector=None):
    space = {}
    if image:
        space["image"] = (image, np.uint8)
    if vector:
        space["vector"] = ((vector,), np.float32)
    return space


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture
def batch():
    return make_batch


@pytest.fixture
def space():
    return obs_space
