"""Resume: a run cut in two keeps its counters and episodes, and under --deterministic its weights;
Ctrl-C saves a checkpoint and the unfinished episodes; a corrupt episode file is skipped."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from torch_dreamer.config import resolve
from torch_dreamer.data import list_episodes, load_episode
from torch_dreamer.runs.checkpoint import load_checkpoint
from torch_dreamer.runs.train import Trainer
from tests.runs.conftest import TINY, read_metrics


class Chain(gym.Env):
    """Fixed-length, seed-independent episodes: resumed and uncut runs see the same env."""

    observation_space = gym.spaces.Dict({"vector": gym.spaces.Box(0, 1, (6,), np.float32)})
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length=10, interrupt_at=None):
        self.length, self.interrupt_at, self.calls = length, interrupt_at, 0

    def _obs(self):
        return {"vector": np.eye(6, dtype=np.float32)[self.t % 6]}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.t += 1
        return self._obs(), float(action == self.t % 2), self.t >= self.length, False, {}


def make_trainer(logdir, steps, interrupt_at=None, extra=()):
    config = resolve(["gym_vector", "debug"], TINY + [
        "--logdir", str(logdir), "--steps", str(steps), "--prefill", "20", "--eval_every", "20",
        "--log_every", "10", "--train_every", "5", "--replay.minlen", "5", "--dataset.batch", "3",
        "--dataset.length", "5", "--eval_eps", "1", "--deterministic", "True", "--time_limit", "0", *extra])
    vec = lambda env: gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return Trainer(config, vec(Chain(interrupt_at=interrupt_at)), vec(Chain()))


def weights(logdir):
    return load_checkpoint(logdir / "checkpoint.pt")["agent"]


def test_cut_run_matches_uncut_run(tmp_path):
    uncut = make_trainer(tmp_path / "uncut", 80).run()
    first = make_trainer(tmp_path / "cut", 40).run()
    assert first["step"] == 40
    second = make_trainer(tmp_path / "cut", 80).run()
    assert second["step"] == uncut["step"] == 80
    assert second["updates"] == uncut["updates"]
    assert len(list_episodes(tmp_path / "cut" / "train_episodes")) == len(list_episodes(tmp_path / "uncut" / "train_episodes"))
    a, b = weights(tmp_path / "uncut"), weights(tmp_path / "cut")
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
    # No second prefill: the resumed run continued from step 40.
    steps = [m["step"] for m in read_metrics(tmp_path / "cut") if "train_return" in m]
    assert steps == sorted(steps)


def test_interrupt_saves_checkpoint_and_unfinished_episode(tmp_path):
    trainer = make_trainer(tmp_path / "run", 200, interrupt_at=47)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    episodes = [load_episode(p) for p in list_episodes(tmp_path / "run" / "train_episodes")]
    lengths = sorted(len(e["reward"]) - 1 for e in episodes)
    assert sum(lengths) == 46  # every step taken before the interrupt is on disk
    partial = [e for e in episodes if len(e["reward"]) - 1 < 10]
    assert len(partial) == 1 and partial[0]["is_last"][-1] and not partial[0]["is_terminal"][-1]
    resumed = make_trainer(tmp_path / "run", 60).run()
    assert resumed["step"] == 60


def test_corrupt_episode_file_is_skipped_with_a_warning(tmp_path):
    make_trainer(tmp_path / "run", 20).run()
    (tmp_path / "run" / "train_episodes" / "20260101T000000-00000000000000000000000000000000-10.npz").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="junk|corrupt|could not|skip"):
        result = make_trainer(tmp_path / "run", 40).run()
    assert result["step"] >= 40


def test_two_deterministic_runs_log_identical_metrics(tmp_path):
    make_trainer(tmp_path / "a", 40).run()
    make_trainer(tmp_path / "b", 40).run()
    strip = lambda rows: [{k: v for k, v in row.items() if k != "fps" and not k.endswith("_per_s")} for row in rows]
    a, b = strip(read_metrics(tmp_path / "a")), strip(read_metrics(tmp_path / "b"))
    assert a == b and any("model_loss" in row for row in a)
