"""Spaces without an env: from episode files (action kind from the values) and checkpoints; mismatches
are one-line errors."""

import gymnasium as gym
import numpy as np
import pytest

from torch_dreamer.errors import UserError
from torch_dreamer.runs.spaces import Spaces, looks_one_hot


def episode(actions, act_dim=3, T=6):
    if actions == "onehot":
        action = np.zeros((T + 1, act_dim), np.float32)
        action[np.arange(1, T + 1), np.arange(T) % act_dim] = 1
    else:
        action = np.random.default_rng(0).uniform(-1, 1, (T + 1, act_dim)).astype(np.float32)
        action[0] = 0
    return {"image": np.zeros((T + 1, 8, 8, 3), np.uint8), "vector": np.zeros((T + 1, 5), np.float32),
            "action": action, "reward": np.zeros(T + 1, np.float32), "discount": np.ones(T + 1, np.float32),
            "is_first": np.eye(T + 1, dtype=bool)[0], "is_last": np.eye(T + 1, dtype=bool)[-1],
            "is_terminal": np.zeros(T + 1, bool)}


def test_spaces_from_episodes_tell_discrete_from_continuous():
    discrete = Spaces.from_episode(episode("onehot"))
    assert discrete.discrete and discrete.act_dim == 3
    assert discrete.obs == {"image": ((8, 8, 3), np.dtype(np.uint8)), "vector": ((5,), np.dtype(np.float32))}
    continuous = Spaces.from_episode(episode("box"))
    assert not continuous.discrete and continuous.act_dim == 3
    # The user can say it outright (e.g. a continuous agent that only ever acted at the corners).
    assert not Spaces.from_episode(episode("onehot"), "continuous").discrete
    with pytest.raises(UserError, match="action_kind"):
        Spaces.from_episode(episode("onehot"), "sometimes")


def test_one_hot_detection_needs_real_one_hot_rows():
    assert looks_one_hot(np.array([[0, 0], [1, 0], [0, 1]], np.float32))
    assert not looks_one_hot(np.array([[0, 0], [1, 1], [0, 1]], np.float32))   # two ones in a row
    assert not looks_one_hot(np.array([[0, 0], [0.5, 0], [0, 1]], np.float32))
    assert not looks_one_hot(np.zeros((3, 2), np.float32))                      # never acted: unknown


def test_spaces_round_trip_through_a_checkpoint_dict():
    spaces = Spaces.from_episode(episode("onehot"))
    assert Spaces.from_dict(spaces.to_dict()) == spaces


def test_an_env_that_does_not_fit_the_model_is_named():
    model = Spaces.from_episode(episode("onehot"))
    env = Spaces.from_env(gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
                                           "vector": gym.spaces.Box(-1, 1, (4,), np.float32)}),
                          gym.spaces.Discrete(3))
    with pytest.raises(UserError, match="'vector' of shape \\(4,\\)"):
        model.check_matches(env, "the env")
    with pytest.raises(UserError, match="continuous actions of size 3"):
        model.check_matches(Spaces(model.obs, 3, False), "the env")
    model.check_matches(Spaces(model.obs, 3, True), "the env")  # fits
