"""Shared pieces of the reliability suite (issue 10): a tiny deterministic env, misbehaving variants of it,
and a Trainer factory with networks small enough that a run takes about a second on 2 CPU cores."""

import gymnasium as gym
import numpy as np
import pytest

from torch_dreamer.config import resolve
from torch_dreamer.runs.train import Trainer
from tests.runs.conftest import TINY


class Chain(gym.Env):
    """Fixed-length episodes of one-hot observations; `fault(env, call)` may misbehave at any call."""

    observation_space = gym.spaces.Dict({"vector": gym.spaces.Box(0, 1, (6,), np.float32)})
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length=10, fault=None):
        self.length, self.fault, self.calls, self.t = length, fault, 0, 0

    def _obs(self):
        return {"vector": np.eye(6, dtype=np.float32)[self.t % 6]}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        out = (self._obs(), {})
        return self.fault(self, "reset", out) if self.fault else out

    def step(self, action):
        self.calls += 1
        self.t += 1
        out = (self._obs(), float(action == self.t % 2), self.t >= self.length, False, {})
        return self.fault(self, "step", out) if self.fault else out


def at_call(n, change):
    """A fault applying `change(out) -> out` to the result of step call n (and later ones when n is None)."""
    def fault(env, call, out):
        if call == "step" and env.calls == n:
            return change(out)
        return out
    return fault


def vector(env):
    return gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def run_config(logdir, steps, extra=()):
    return resolve(["gym_vector", "debug"], TINY + [
        "--logdir", str(logdir), "--steps", str(steps), "--prefill", "20", "--eval_every", "20",
        "--log_every", "10", "--train_every", "5", "--replay.minlen", "5", "--dataset.batch", "3",
        "--dataset.length", "5", "--eval_eps", "1", "--deterministic", "True", "--time_limit", "0", *extra])


def make_trainer(logdir, steps, env=None, extra=(), eval_env=None):
    config = run_config(logdir, steps, extra)
    return Trainer(config, vector(env or Chain()), vector(eval_env or Chain()), name="chain")


@pytest.fixture
def make_episode():
    from tests.data.conftest import _episode

    return _episode


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny networks run fastest on one thread, and far faster when other processes share the cores."""
    yield
