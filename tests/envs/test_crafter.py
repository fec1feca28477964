"""Crafter with the official log keys."""

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
    for _ in range(1000):  # a seeded random walk unlocks an achievement within ~50 steps
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert reward == 0.0
        if obs["log_reward"] != 0:
            break
    assert obs["log_reward"] == 1.0
    unlocked = [k for k, v in obs.items() if k.startswith("log_achievement_") and v > 0]
    assert len(unlocked) == 1 and obs[unlocked[0]] == 1.0


def test_action_repeat_must_be_one(h):
    with pytest.raises(UserError, match="action_repeat 1"):
        make_env(h.make_config("crafter", action_repeat=2))


def test_unknown_crafter_task(h):
    with pytest.raises(UserError, match="crafter_reward"):
        make_env(h.make_config("crafter", task="crafter_rewards"))
