"""Crafter with the official log keys."""

import numpy as np
import pytest

from torch_dreamer.envs import make_env
from torch_dreamer.errors import UserError

crafter = pytest.importorskip("crafter")


def test_reward_task_logs_achievements(h, closing):
    env = make_env(h.make_config("crafter"))
    closing(env)
    first = h.check_env(env, steps=5, image=(64, 64, 3))
    achievements = {f"log_achievement_{name}" for name in crafter.constants.achievements}
    assert achievements | {"image", "log_reward"} == set(first)
    assert all(first[key] == 0 for key in achievements) and first["log_reward"] == 0
    assert env.action_space.n == 17


def test_noreward_hides_reward_but_logs_it(h, closing):
    env = make_env(h.make_config("crafter", task="crafter_noreward"))
    closing(env)
    env.reset()
    rewards, logged = [], []
    for _ in range(30):  # "noop" steps; health changes give non-zero true rewards eventually
        obs, reward, *_ = env.step(0)
        rewards.append(reward)
        logged.append(obs["log_reward"])
    assert set(rewards) == {0.0}
    assert all(isinstance(x, np.float32) or x.dtype == np.float32 for x in logged)


def test_action_repeat_must_be_one(h):
    with pytest.raises(UserError, match="action_repeat 1"):
        make_env(h.make_config("crafter", action_repeat=2))


def test_unknown_crafter_task(h):
    with pytest.raises(UserError, match="crafter_reward"):
        make_env(h.make_config("crafter", task="crafter_rewards"))
