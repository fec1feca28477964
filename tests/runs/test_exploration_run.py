"""Exploration in the run loop: which policy acts (expl_until / expl_every), every behaviour trains
with discrete and continuous actions, checkpoints resume the exploration state, and Plan2Explore
covers more of a sparse-reward corridor than the greedy agent in the same step budget."""

import json
import pathlib
import types

import gymnasium as gym
import numpy as np
import pytest
import torch

import torch_dreamer.api as dv2
from torch_dreamer.config import resolve
from torch_dreamer.data import list_episodes, load_episode
from torch_dreamer.envs import wrap_env
from torch_dreamer.runs.checkpoint import load_checkpoint
from torch_dreamer.runs.acting import ExploreSchedule
from torch_dreamer.runs.train import Trainer

# Tiny networks; runs here take seconds each.
TINY = [
    "--rssm.deter", "32", "--rssm.hidden", "32", "--rssm.stoch", "4", "--rssm.discrete", "4",
    "--encoder.mlp_layers", "32", "--decoder.mlp_layers", "32",
    "--reward_head.layers", "1", "--reward_head.units", "32", "--discount_head.layers", "1",
    "--discount_head.units", "32", "--actor.layers", "1", "--actor.units", "32",
    "--critic.layers", "1", "--critic.units", "32", "--expl_head.layers", "1", "--expl_head.units", "32",
    "--disag_models", "3", "--imag_horizon", "3", "--progress", "False", "--precision", "32",
]


pytestmark = pytest.mark.usefixtures("one_thread")


class Corridor(gym.Env):
    """Cells -half .. half along a line, starting at 0; the observation is the position / half.

    Discrete actions: left, right, stay, stay. Box actions (1,): move by round(a). The only reward
    is 1 at the right end, which ends the episode (a sparse-reward task).
    """

    def __init__(self, half=25, continuous=False):
        self.half = half
        self.observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32) if continuous else gym.spaces.Discrete(4)

    def _obs(self):
        return np.array([self.pos / self.half], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def step(self, action):
        if isinstance(self.action_space, gym.spaces.Discrete):
            move = [-1, 1, 0, 0][int(action)]
        else:
            move = int(np.round(np.asarray(action).reshape(-1)[0]))
        self.pos = min(max(self.pos + move, -self.half), self.half)
        goal = self.pos == self.half
        return self._obs(), float(goal), goal, False, {}


def read_metrics(logdir) -> list[dict]:
    path = pathlib.Path(logdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def visited(logdir, half) -> set:
    """Distinct cells in the saved training episodes."""
    cells = set()
    for path in list_episodes(pathlib.Path(logdir) / "train_episodes"):
        cells |= set(np.round(load_episode(path)["vector"][:, 0] * half).astype(int).tolist())
    return cells


# ----------------------------------------------------------------------------- which policy acts


def modes(steps_per_call: int, calls: int, **config) -> str:
    defaults = {"expl_until": 0, "expl_every": 0, "action_repeat": 1}
    schedule = ExploreSchedule(types.SimpleNamespace(**{**defaults, **config}))
    out = ""
    for call in range(calls):
        out += "E" if schedule(call * steps_per_call) == "explore" else "t"
    return out


def test_which_policy_acts():
    assert modes(1, 6) == "EEEEEE"                                      # the official Until(0): no end
    assert modes(1, 6, expl_until=6, action_repeat=2) == "EEEttt"      # expl_until is in frames
    assert modes(1, 9, expl_every=3) == "EttEttEtt"                    # one agent step in three
    assert modes(2, 6, expl_every=4) == "EtEtEt"                       # two envs: counted in agent steps
    assert modes(1, 9, expl_until=4, expl_every=3) == "EEEEEttEt"   # then one in three


# ----------------------------------------------------------------------------- short runs


def make_trainer(logdir, behavior, continuous, steps, extra=()):
    config = resolve(["gym_vector"], TINY + [
        "--logdir", str(logdir), "--steps", str(steps), "--prefill", "20", "--eval_every", "20",
        "--log_every", "10", "--train_every", "5", "--replay.minlen", "5", "--dataset.batch", "3",
        "--dataset.length", "5", "--eval_eps", "1", "--time_limit", "10", "--expl_behavior", behavior, *extra])
    vec = lambda: gym.vector.SyncVectorEnv([lambda: wrap_env(Corridor(4, continuous), config)],
                                           autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return Trainer(config, vec(), vec())


EXPL_METRICS = {"expl_intr_mean", "expl_intr_std", "expl_model_loss", "expl_actor_loss", "expl_critic_loss"}


@pytest.mark.parametrize("behavior", ["greedy", "Plan2Explore", "ModelLoss", "Random"])
@pytest.mark.parametrize("continuous", [False, True])
def test_each_behaviour_trains(tmp_path, behavior, continuous):
    result = make_trainer(tmp_path, behavior, continuous, 40, ["--expl_every", "2"]).run()
    assert result["step"] == 40 and result["updates"] > 2
    logged = set().union(*(row.keys() for row in read_metrics(tmp_path)))
    assert {"model_loss", "actor_loss", "eval_return"} <= logged
    learns = behavior in ("Plan2Explore", "ModelLoss")
    assert (EXPL_METRICS <= logged) == learns and (not learns) == (not any(k.startswith("expl_") for k in logged))
    optimizers = load_checkpoint(tmp_path / "checkpoint.pt")["optimizers"]
    assert ({"expl_model", "expl_actor", "expl_critic"} <= set(optimizers)) == learns


def test_resume_restores_every_exploration_module_and_optimiser(tmp_path):
    extra = ["--eval_policy", "explore", "--expl_reward_norm.momentum", "0.9", "--reward_norm.momentum", "0.9"]
    make_trainer(tmp_path, "plan2explore", False, 40, extra).run()
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    saved = payload["agent"]
    assert saved["expl_behavior.intr_rewnorm.mag"].item() != 1.0    # momentum < 1 really normalises
    assert saved["task_behavior.rewnorm.mag"].item() != 1.0
    trainer = make_trainer(tmp_path, "plan2explore", False, 60, extra)
    assert trainer.load()
    state = trainer.agent.state_dict()
    assert any(k.startswith("expl_behavior.heads.2.") for k in state)
    for key, value in saved.items():
        assert torch.equal(state[key], value) if isinstance(value, torch.Tensor) else state[key] == value, key
    assert trainer.agent.expl_behavior.ac.updates == payload["agent"]["expl_behavior.ac._extra_state"]["updates"] > 0
    for name in ("expl_model", "expl_actor", "expl_critic"):
        loaded = trainer.agent.optimizers()[name].opt.state_dict()["state"]
        assert loaded and all(torch.equal(loaded[i]["exp_avg"], s["exp_avg"])
                              for i, s in payload["optimizers"][name]["opt"]["state"].items())
    trainer.logger.close(), trainer.train_driver.close(), trainer.eval_driver.close()
    assert make_trainer(tmp_path, "plan2explore", False, 60, extra).run()["step"] == 60


# ----------------------------------------------------------------------------- coverage


def coverage_run(logdir, behavior, seed):
    """One run on a 51-cell corridor (30-step episodes); returns how many distinct cells its
    training episodes (prefill included) visited. Learning rates, KL and replay settings are
    pinned here so that preset changes do not move the test."""
    config = resolve(["gym_vector"], TINY + [
        "--logdir", str(logdir), "--seed", str(seed), "--steps", "2000", "--prefill", "150", "--eval_eps", "0",
        "--log_every", "1e9", "--eval_every", "1e9", "--train_every", "3", "--time_limit", "30",
        "--replay.minlen", "5", "--replay.prioritize_ends", "False", "--dataset.batch", "8",
        "--dataset.length", "10", "--imag_horizon", "10", "--kl.free", "0", "--clip_rewards", "identity",
        "--discount", "0.99", "--model_opt.lr", "3e-4", "--critic_opt.lr", "3e-4", "--actor_opt.lr", "1e-3",
        "--actor_ent", "1e-3", "--disag_models", "5", "--disag_target", "feat",
        "--expl_reward_norm.momentum", "0.99", "--expl_behavior", behavior])
    dv2.train(Corridor(25), config)
    return len(visited(logdir, 25))


@pytest.mark.slow
def test_plan2explore_covers_more_than_greedy(tmp_path):
    """Same seeds, same step budget, reward only at one end: the disagreement-seeking explorer
    visits clearly more distinct cells than the greedy agent (summed over two seeds)."""
    greedy = [coverage_run(tmp_path / f"greedy{seed}", "greedy", seed) for seed in (0, 1)]
    explore = [coverage_run(tmp_path / f"p2e{seed}", "plan2explore", seed) for seed in (0, 1)]
    print(f"distinct cells visited of 51 (seeds 0, 1): greedy {greedy}, plan2explore {explore}")
    assert sum(explore) >= 1.25 * sum(greedy), (greedy, explore)
