"""Item 8: each episode is written exactly once, a resumed run continues the seed stream instead of
repeating it, and prefill keeps its unfinished episode (truncated), so a run never prefills twice."""

import gymnasium as gym
import numpy as np
import pytest

from torch_dreamer.data import list_episodes, load_episode
from torch_dreamer.data import store as store_module
from torch_dreamer.runs.train import resume_seed
from tests.reliability.conftest import Chain, make_trainer


def contents(directory):
    return [load_episode(p) for p in list_episodes(directory)]


def test_08_ctrl_c_right_after_an_episode_is_written_saves_it_once(tmp_path, monkeypatch):
    real_add = store_module.EpisodeStore.add
    count = {"n": 0}

    def add_then_interrupt(self, episode):
        path = real_add(self, episode)
        count["n"] += 1
        if count["n"] == 5:
            raise KeyboardInterrupt  # arrives just after the file was renamed into place
        return path

    monkeypatch.setattr(store_module.EpisodeStore, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, 200).run()
    episodes = contents(tmp_path / "train_episodes")
    # Adds: 2 prefill episodes, 1 eval prefill, 1 evaluation, then the 5th, a train episode, interrupted
    # just after its file was written: 3 train episodes of 10 steps, the last one not written twice.
    assert len(episodes) == 3
    assert sum(len(e["action"]) - 1 for e in episodes) == 30


class Random(gym.Env):
    """Seed-dependent observations, to tell repeated episodes from new ones."""

    observation_space = gym.spaces.Dict({"vector": gym.spaces.Box(-1, 1, (6,), np.float32)})
    action_space = gym.spaces.Discrete(2)

    def __init__(self, interrupt_at=None):
        self.interrupt_at, self.calls = interrupt_at, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return {"vector": self.np_random.uniform(-1, 1, 6).astype(np.float32)}, {}

    def step(self, action):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.t += 1
        return {"vector": self.np_random.uniform(-1, 1, 6).astype(np.float32)}, 0.0, self.t >= 10, False, {}


def test_08_resumed_runs_continue_the_seed_stream(tmp_path):
    assert resume_seed(0, 0) == 0 and len({resume_seed(0, n) for n in range(50)}) == 50
    for attempt in range(3):  # a prefill cut three times, no checkpoint yet
        with pytest.raises(KeyboardInterrupt):
            make_trainer(tmp_path, 200, env=Random(interrupt_at=15), extra=["--prefill", "100"]).run()
    observations = [e["vector"].tobytes() for e in contents(tmp_path / "train_episodes")]
    assert len(observations) == len(set(observations)) == 6  # 2 per run (one whole, one truncated), all new


def test_08_prefill_keeps_its_partial_episode_and_never_repeats(tmp_path, capsys):
    trainer = make_trainer(tmp_path, 40, extra=["--prefill", "25"])
    trainer.run()
    episodes = contents(tmp_path / "train_episodes")
    partial = [e for e in episodes if len(e["action"]) - 1 == 5]
    assert len(partial) >= 1 and partial[0]["is_last"][-1] and not partial[0]["is_terminal"][-1]
    assert capsys.readouterr().out.count("Prefill dataset") == 1
    make_trainer(tmp_path, 60, extra=["--prefill", "25"]).run()
    assert "Prefill dataset" not in capsys.readouterr().out


def test_08_interrupted_prefills_add_up_to_one_prefill(tmp_path, capsys):
    for _ in range(4):  # four Ctrl-C during prefill: each keeps what it collected
        with pytest.raises(KeyboardInterrupt):
            make_trainer(tmp_path, 200, env=Chain(fault=_interrupt_at(13)), extra=["--prefill", "60"]).run()
    steps = sum(len(e["action"]) - 1 for e in contents(tmp_path / "train_episodes"))
    assert steps == 4 * 12
    capsys.readouterr()
    make_trainer(tmp_path, 70, extra=["--prefill", "60"]).run()
    out = capsys.readouterr().out
    assert "Prefill dataset (12 steps)." in out  # only what is missing, once


def _interrupt_at(n):
    def fault(env, call, out):
        if call == "step" and env.calls == n:
            raise KeyboardInterrupt
        return out
    return fault
