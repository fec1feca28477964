"""Failure paths of a run: missing optional packages, unhandled spaces, non-finite losses, parallel envs."""

import builtins

import gymnasium as gym
import numpy as np
import pytest
import torch

from torch_dreamer.cli import main
from torch_dreamer.errors import UserError
from torch_dreamer.runs import learner as learner_module
from tests.runs.conftest import TINY, read_metrics

SHORT = ["--steps", "60", "--prefill", "40", "--eval_every", "30", "--log_every", "20", "--train_every", "10",
         "--replay.minlen", "5", "--dataset.batch", "2", "--dataset.length", "5", "--time_limit", "20"]


@pytest.mark.parametrize("task,module,extra", [
    ("atari_pong", "ale_py", "atari"), ("dmc_walker_walk", "dm_control", "dmc"), ("crafter_reward", "crafter", "crafter"),
    ("minigrid_MiniGrid-Empty-5x5-v0", "minigrid", "minigrid"), ("minihack_MiniHack-Room-5x5-v0", "minihack", "minihack"),
])
def test_missing_optional_package_names_the_extra(tmp_path, capsys, monkeypatch, task, module, extra):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ModuleNotFoundError(f"No module named '{module}'", name=module)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    for name in list(__import__("sys").modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(__import__("sys").modules, name)
    assert main(["train", "--logdir", str(tmp_path / "run"), "--task", task] + TINY + SHORT) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"torch_dreamer[{extra}]" in err


def test_unhandled_observation_space_is_one_line_error(tmp_path):
    import torch_dreamer.api as dv2

    class Graphy(gym.Env):
        observation_space = gym.spaces.Graph(node_space=gym.spaces.Discrete(3), edge_space=None)
        action_space = gym.spaces.Discrete(2)

    config = dv2.defaults.update({"logdir": str(tmp_path / "run")})
    with pytest.raises(UserError) as error:
        dv2.train(Graphy(), config)
    assert len(str(error.value).splitlines()) == 1


def test_nonfinite_losses_stop_the_run_after_a_checkpoint(tmp_path, monkeypatch):
    import torch_dreamer.api as dv2
    from torch_dreamer.agent.world_model import WorldModel

    monkeypatch.setattr(learner_module, "MAX_NONFINITE", 3)
    vector_only = ["--encoder.cnn_keys", "$^", "--decoder.cnn_keys", "$^"]
    config = dv2.defaults.update({"logdir": str(tmp_path / "run")}).parse_flags(TINY + SHORT + vector_only)
    # A NaN from the env is stopped at the env boundary now (tests/reliability/test_02_*); a loss that goes
    # non-finite inside the model (fp16 overflow, a too high learning rate) is what this stop is for.
    real_loss = WorldModel.loss_outputs  # what the agent's update calls

    def poisoned(self, data, state=None):
        loss, *rest = real_loss(self, data, state)
        return (loss * float("nan"), *rest)

    monkeypatch.setattr(WorldModel, "loss_outputs", poisoned)
    with pytest.raises(UserError, match="non-finite"):
        dv2.train(gym.make("CartPole-v1"), config)
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert list((tmp_path / "run" / "train_episodes").glob("*.npz"))  # nothing collected is lost


def test_parallel_envs_collect_episodes_in_the_same_format(tmp_path):
    logdir = tmp_path / "run"
    assert main(["train", "--logdir", str(logdir), "--configs", "gym_vector", "debug", "--task", "gym_CartPole-v1",
                 "--envs", "2"] + TINY + SHORT) == 0
    episodes = [np.load(p) for p in (logdir / "train_episodes").glob("*.npz")]
    assert len(episodes) >= 2
    for episode in episodes:
        assert episode["is_first"][0] and not episode["is_first"][1:].any() and episode["is_last"][-1]
        assert episode["action"].shape[1] == 2 and (episode["action"][0] == 0).all()
    assert any("train_return" in m for m in read_metrics(logdir))
