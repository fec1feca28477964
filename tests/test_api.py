"""The Python API: the official MiniGrid example runs (shortened by flags), evaluate and load_agent."""

import pathlib
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import torch_dreamer.api as dv2
from tests.runs.conftest import TINY, read_metrics

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_minigrid.py"
SHORT = ["--steps", "150", "--prefill", "100", "--log_every", "50", "--train_every", "25", "--time_limit", "40",
         "--replay.minlen", "5", "--dataset.batch", "2", "--dataset.length", "5", "--eval_every", "75"]


def test_official_minigrid_example_runs(tmp_path):
    pytest.importorskip("minigrid")
    logdir = tmp_path / "minigrid"
    result = subprocess.run([sys.executable, str(EXAMPLE), "--logdir", str(logdir)] + TINY + SHORT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    names = set().union(*read_metrics(logdir))
    assert {"train_return", "model_loss", "image_loss", "actor_loss"} <= names
    assert list((logdir / "train_episodes").glob("*.npz")) and (logdir / "checkpoint.pt").exists()


def test_train_evaluate_and_load_agent_on_a_box_action_env(tmp_path):
    config = dv2.defaults.update({"logdir": str(tmp_path / "pendulum"), "encoder.mlp_keys": ".*",
                                  "decoder.mlp_keys": ".*", "encoder.cnn_keys": "$^", "decoder.cnn_keys": "$^"})
    config = config.parse_flags(TINY + SHORT + ["--time_limit", "20"])
    result = dv2.train(gym.make("Pendulum-v1"), config, eval_env=gym.make("Pendulum-v1"))
    assert result["step"] >= 150
    agent = dv2.load_agent(config.logdir, device="cpu")
    assert agent.task_behavior.actor_grad == "dynamics" and not agent.discrete  # detected from the Box space
    obs = {"vector": torch.zeros(1, 3), "is_first": torch.ones(1, dtype=torch.bool)}
    action, _ = agent.policy(obs, None, "eval")
    assert action.shape == (1, 1) and action.abs().max() <= 1
    scores = dv2.evaluate(gym.make("Pendulum-v1"), config.logdir, episodes=2, device="cpu")
    assert len(scores["returns"]) == 2 and np.isfinite(scores["mean"])


def test_defaults_and_configs_are_the_official_blocks():
    assert dv2.defaults.rssm.deter == 1024 and dv2.defaults.discount == 0.99
    assert dv2.configs["atari"]["train_every"] == 16
    updated = dv2.defaults.update({"discount": 0.5})
    assert updated.discount == 0.5 and dv2.defaults.discount == 0.99
