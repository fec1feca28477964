"""Item 2: non-finite env data is caught at the env boundary (or dropped on request), every optimiser's
non-finite streak is watched, and non-finite state is never checkpointed."""

import numpy as np
import pytest
import torch

from torch_dreamer.data import list_episodes, load_episode
from torch_dreamer.errors import UserError
from torch_dreamer.runs import learner as learner_module
from torch_dreamer.runs.checkpoint import load_checkpoint
from tests.reliability.conftest import Chain, at_call, make_trainer


def nan_reward(out):
    obs, reward, terminated, truncated, info = out
    return obs, float("nan"), terminated, truncated, info


def inf_obs(out):
    obs, reward, terminated, truncated, info = out
    return {"vector": np.full(6, np.inf, np.float32)}, reward, terminated, truncated, info


def disk_steps(directory):
    return sum(len(load_episode(p)["action"]) - 1 for p in list_episodes(directory))


@pytest.mark.parametrize("change,key", [(nan_reward, "reward"), (inf_obs, "observation 'vector'")])
def test_02_nonfinite_env_data_is_one_line_error_after_saving(tmp_path, change, key):
    with pytest.raises(UserError) as error:
        make_trainer(tmp_path, 200, env=Chain(fault=at_call(55, change))).run()
    message = str(error.value)
    assert "\n" not in message and "env chain" in message and f"non-finite {key}" in message
    assert "step 5 of an episode" in message and "checkpoint saved" in message
    assert load_checkpoint(tmp_path / "checkpoint.pt")["counters"]["updates"] > 0
    assert disk_steps(tmp_path / "train_episodes") == 54  # every finite step, the unfinished episode too
    for path in list_episodes(tmp_path / "train_episodes"):
        assert all(np.isfinite(v).all() for v in load_episode(path).values() if v.dtype.kind == "f")


def test_02_nonfinite_env_data_can_be_dropped_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="non-finite reward.*dropped"):
        result = make_trainer(tmp_path, 80, env=Chain(fault=at_call(55, nan_reward)),
                              extra=["--nonfinite_env", "drop"]).run()
    assert result["step"] == 80
    episodes = [load_episode(p) for p in list_episodes(tmp_path / "train_episodes")]
    assert all(np.isfinite(e["reward"]).all() for e in episodes)
    # The dropped episode is not on disk: its 4 steps before the NaN were taken (and counted), the rest
    # of it never counted, and the run still collected its 80 steps.
    assert sum(len(e["action"]) - 1 for e in episodes) == 80 - 4


def test_02_every_optimiser_streak_is_watched_and_nonfinite_state_is_never_saved(tmp_path, monkeypatch):
    make_trainer(tmp_path, 40).run()
    good = load_checkpoint(tmp_path / "checkpoint.pt")
    monkeypatch.setattr(learner_module, "MAX_NONFINITE", 3)
    real_train = learner_module.Learner.train

    def poisoned(self, count, step):  # what one NaN reward used to do: the reward normaliser goes NaN
        self.agent.task_behavior.rewnorm.mag.fill_(float("nan"))
        real_train(self, count, step)

    monkeypatch.setattr(learner_module.Learner, "train", poisoned)
    with pytest.raises(UserError) as error:
        make_trainer(tmp_path, 200).run()
    message = str(error.value)
    assert "\n" not in message
    assert "the actor loss was non-finite for 3 updates in a row" in message and "--actor_opt.lr" in message
    assert "rewnorm.mag became non-finite; kept the last good checkpoint" in message
    kept = load_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["counters"] == good["counters"]
    assert torch.isfinite(kept["agent"]["task_behavior.rewnorm.mag"]).all()


def test_02_nonfinite_state_refuses_to_save(tmp_path):
    trainer = make_trainer(tmp_path, 40)
    trainer.run()
    trainer.learner.agent.task_behavior.rewnorm.mag.fill_(float("inf"))
    with pytest.raises(learner_module.NonFiniteState, match="rewnorm.mag"):
        trainer.learner.save(tmp_path / "other.pt", {"step": 41})
    assert not (tmp_path / "other.pt").exists()
