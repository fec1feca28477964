"""Shared helpers for the env tests: configs and the contract checks."""

import os
import warnings

# Headless MuJoCo rendering on CPU machines; must happen before dm_control is imported.
os.environ.setdefault("MUJOCO_GL", "osmesa")
# minihack imports pkg_resources at import time, which setuptools deprecates noisily.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


def pytest_configure(config):
    # Every registered MiniGrid env is tested, including the superseded -v0 versions.
    config.addinivalue_line("filterwarnings", "ignore:.*is out of date. You should consider upgrading")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gymnasium import spaces  # noqa: E402

from torch_dreamer.config import resolve  # noqa: E402


def make_config(*names, **overrides):
    """`resolve(names)` with `--key value` overrides given as keyword arguments."""
    flags = []
    for key, value in overrides.items():
        flags += [f"--{key}", ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    return resolve(list(names), flags)


def check_obs(space: spaces.Dict, obs: dict) -> None:
    """The contract: uint8 (H, W, C) images, float32 (D,) vectors, float32 () scalars."""
    assert isinstance(space, spaces.Dict)
    assert set(obs) == set(space.spaces), (sorted(obs), sorted(space.spaces))
    for key, value in obs.items():
        sub = space[key]
        assert isinstance(value, np.ndarray), key
        assert value.shape == sub.shape and value.dtype == sub.dtype, (key, value.shape, value.dtype, sub)
        assert (sub.dtype == np.uint8 and value.ndim == 3) or (sub.dtype == np.float32 and value.ndim <= 1), key


def check_action_space(space) -> None:
    if isinstance(space, spaces.Discrete):
        assert int(space.start) == 0
        return
    assert isinstance(space, spaces.Box) and space.dtype == np.float32 and len(space.shape) == 1
    assert np.all(space.low == -1) and np.all(space.high == 1)


def check_env(env, steps: int = 3, image=None):
    """Resets and steps `env`, checking the contract; returns the first observation."""
    check_action_space(env.action_space)
    first, info = env.reset()
    check_obs(env.observation_space, first)
    assert isinstance(info, dict)
    if image is not None:
        assert first["image"].shape == image
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        check_obs(env.observation_space, obs)
        assert isinstance(reward, float)
        assert isinstance(terminated, bool) and isinstance(truncated, bool)
        if terminated or truncated:
            env.reset()
    return first


@pytest.fixture
def closing():
    """Collects envs and closes them after the test (MuJoCo GL contexts must be freed)."""
    envs = []
    yield envs.append
    for env in envs:
        env.close()


class Helpers:
    """The helpers as a fixture: test modules cannot import conftest under --import-mode=importlib."""

    make_config = staticmethod(make_config)
    check_obs = staticmethod(check_obs)
    check_env = staticmethod(check_env)
    check_action_space = staticmethod(check_action_space)


@pytest.fixture
def h():
    return Helpers
