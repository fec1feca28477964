"""MiniHack through NLE: pixel crops, glyphs, truncation, seeding, no files in the cwd."""

import os

import numpy as np
import pytest

from torch_dreamer.envs import make_env
from torch_dreamer.errors import UserError

pytest.importorskip("minihack")  # needs nle, which installs from manylinux wheels


def test_pixel_crop(h, closing):
    env = make_env(h.make_config("minihack"))
    closing(env)
    first = h.check_env(env, steps=5, image=(64, 64, 3))
    assert set(first) == {"image"} and first["image"].any()
    assert env.action_space.n == 8


def test_glyphs(h, closing):
    env = make_env(h.make_config("minihack", minihack_obs="glyphs"))
    closing(env)
    first = h.check_env(env)
    assert first["glyphs"].shape == (21 * 79,) and first["glyphs_crop"].shape == (81,)
    assert first["glyphs"].max() > 255  # glyph ids, which would not survive a uint8 image


def test_step_limit_is_truncation(h, closing):
    # NLE itself reports the step limit as `terminated`; the adapter fixes that.
    env = make_env(h.make_config("minihack", task="minihack_MiniHack-Corridor-R2-v0"))
    closing(env)
    env.reset()
    limit = env.unwrapped._max_episode_steps
    for step in range(1, limit + 1):
        _, _, terminated, truncated, _ = env.step(0)  # walking north into the wall forever
        assert not terminated
        if truncated:
            break
    assert truncated and step == limit


def test_seeding_reproduces_episodes(h, closing):
    config = h.make_config("minihack", task="minihack_MiniHack-Room-Random-5x5-v0", minihack_obs="glyphs")

    def episodes(seed):
        env = make_env(config, seed=seed)
        closing(env)
        return [env.reset()[0]["glyphs"] for _ in range(3)]

    a, b, c = episodes(1), episodes(1), episodes(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], a[2])  # episodes differ from each other
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_writes_nothing_to_the_working_directory(h, closing, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for task in ["MiniHack-Room-5x5-v0", "MiniHack-KeyRoom-S5-v0"]:
        env = make_env(h.make_config("minihack", task=f"minihack_{task}"))
        closing(env)
        env.reset()
        for _ in range(5):
            env.step(env.action_space.sample())
    assert os.listdir(tmp_path) == []


def test_unknown_env_and_obs(h):
    with pytest.raises(UserError, match="MiniHack-Room-5x5-v0"):
        make_env(h.make_config("minihack", task="minihack_MiniHack-Room5x5-v0"))
    with pytest.raises(UserError, match="minihack_obs"):
        make_env(h.make_config("minihack", minihack_obs="pixel"))
