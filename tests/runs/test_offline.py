"""Offline RL: training from a fixed folder of episodes (ours, official-format files, a Minari dataset),
with no env stepping; `--steps` counts updates."""

import numpy as np
import pytest

from torch_dreamer.cli import main
from torch_dreamer.data import list_episodes
from torch_dreamer.runs.checkpoint import load_checkpoint
from tests.runs.conftest import TINY, read_metrics

COMMON = ["--configs", "gym_vector", "--replay.minlen", "5", "--dataset.batch", "4", "--dataset.length", "8",
          "--deterministic", "True", "--seed", "3"]


def test_offline_training_matches_the_online_world_model_loss(tmp_path, one_thread):
    online = tmp_path / "online"
    assert main(["train", "--logdir", str(online), "--task", "gym_CartPole-v1", "--steps", "1500",
                 "--prefill", "300", "--train_every", "5", "--eval_every", "5000", "--log_every", "100",
                 *COMMON, *TINY]) == 0
    online_updates = load_checkpoint(online / "checkpoint.pt")["counters"]["updates"]
    online_rows = [r for r in read_metrics(online) if "model_loss" in r]
    online_loss = np.mean([r["model_loss"] for r in online_rows[-3:]])
    offline = tmp_path / "offline"
    assert main(["train", "--logdir", str(offline), "--offline_dir", str(online / "train_episodes"),
                 "--steps", str(online_updates), "--log_every", "20", "--eval_every", "100000", *COMMON, *TINY]) == 0
    counters = load_checkpoint(offline / "checkpoint.pt")["counters"]
    assert counters["updates"] == online_updates
    offline_rows = [r for r in read_metrics(offline) if "model_loss" in r]
    offline_loss = np.mean([r["model_loss"] for r in offline_rows[-3:]])
    # Same data, same number of updates: the world model fits at least about as well (within 10%).
    assert offline_loss <= 1.1 * online_loss, (offline_loss, online_loss)
    assert not list_episodes(offline / "train_episodes")  # no env was stepped


def test_offline_resumes_and_evaluates_only_on_a_named_task(tmp_path, one_thread, make_official_episodes):
    data = make_official_episodes(tmp_path / "official")
    logdir = tmp_path / "run"
    args = ["train", "--logdir", str(logdir), "--offline_dir", str(data), "--log_every", "5", "--eval_every", "10",
            *COMMON, *TINY]
    assert main([*args, "--steps", "10"]) == 0
    assert not any("eval_return" in r for r in read_metrics(logdir))  # no --task: no evaluation
    assert main([*args, "--steps", "20", "--task", "gym_CartPole-v1", "--eval_eps", "1"]) == 0
    assert load_checkpoint(logdir / "checkpoint.pt")["counters"]["updates"] == 20
    assert any("eval_return" in r for r in read_metrics(logdir))


def test_offline_refuses_an_env_that_does_not_fit(tmp_path, make_official_episodes, capsys):
    data = make_official_episodes(tmp_path / "official")
    code = main(["train", "--logdir", str(tmp_path / "run"), "--offline_dir", str(data), "--steps", "2",
                 "--task", "gym_MountainCar-v0", *COMMON, *TINY])
    assert code == 2
    assert "discrete actions of size 3" in capsys.readouterr().err


def test_offline_from_a_minari_dataset(tmp_path, monkeypatch, one_thread):
    minari = pytest.importorskip("minari")
    pytest.importorskip("jax")  # DataCollector's dependency
    import gymnasium as gym

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = minari.DataCollector(gym.make("CartPole-v1"))
    env.action_space.seed(0)
    for episode in range(6):
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    env.create_dataset(dataset_id="cartpole/random-v0", algorithm_name="random")
    logdir = tmp_path / "run"
    assert main(["train", "--logdir", str(logdir), "--offline_dir", "minari:cartpole/random-v0", "--steps", "6",
                 "--log_every", "3", "--eval_every", "6", "--task", "gym_CartPole-v1", *COMMON, *TINY]) == 0
    assert len(list_episodes(logdir / "offline_episodes")) == 6
    rows = read_metrics(logdir)
    assert any("model_loss" in r for r in rows) and any("eval_return" in r for r in rows)
