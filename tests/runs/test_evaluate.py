"""Evaluation: fair episode counting with several envs, seeded reproducibility, the video writer checked
before any episode, `dreamer eval` on a run trained through the Python API, and `EnvPolicy`."""

import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import torch_dreamer.api as dv2
from torch_dreamer.agent.agent import Agent
from torch_dreamer.cli import main
from torch_dreamer.errors import UserError
from torch_dreamer.runs.driver import Driver, episode_quotas, run_episodes
from torch_dreamer.runs.evaluate import ENV_RECORD, EnvPolicy, evaluate
from tests.agent.conftest import tiny_config
from tests.runs.conftest import TINY

AUTORESET = gym.vector.AutoresetMode.SAME_STEP
SHORT = ["--steps", "120", "--prefill", "60", "--log_every", "60", "--train_every", "20", "--time_limit", "30",
         "--replay.minlen", "5", "--dataset.batch", "2", "--dataset.length", "5", "--eval_every", "1000"]


class CountEnv(gym.Env):
    """Episodes of `length` steps; the observation is the env's id, the reward 1 per step."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length, ident=0):
        self.length, self.ident, self.t = length, ident, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([self.ident], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.ident], np.float32), 1.0, self.t >= self.length, False, {}


def _vector(*lengths):
    from torch_dreamer.envs import wrap_env

    config = tiny_config()
    fns = [lambda n=n, i=i: wrap_env(CountEnv(n, i), config) for i, n in enumerate(lengths)]
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=AUTORESET)


def _random(obs, state):
    return np.eye(2, dtype=np.float32)[np.zeros(len(obs["is_first"]), int)], None


def test_quotas_share_episodes_evenly():
    assert episode_quotas(1, 4) == [1, 0, 0, 0]
    assert episode_quotas(10, 4) == [3, 3, 2, 2]
    assert episode_quotas(4, 2) == [2, 2]


def test_run_episodes_does_not_favour_short_episodes():
    # env 0: 50-step episodes, env 1: 5-step ones. The first two to finish are both env 1's (return 5);
    # a fair count takes the first episode of each.
    driver = Driver(_vector(50, 5), seed=0)
    seen = []
    driver.on_episode.append(lambda episode, worker: seen.append((worker, float(episode["reward"].sum()))))
    counted = run_episodes(driver, _random, 2)
    assert sorted(float(e["reward"].sum()) for e in counted) == [5.0, 50.0]
    assert seen == [(1, 5.0), (0, 50.0)]  # callbacks see only the counted episodes
    assert len(driver.on_episode) == 1  # and stay as they were
    driver.close()


def _agent(obs_space, act_dim, discrete, *flags):
    torch.manual_seed(0)
    return Agent(tiny_config(*flags), obs_space, act_dim, discrete).eval()


def test_seeded_evaluation_repeats_exactly():
    agent = _agent({"vector": ((4,), np.float32)}, 2, True, "--eval_state_mean", "False")
    from torch_dreamer.envs import make_vector_env

    config = tiny_config("--task", "gym_CartPole-v1")
    results = []
    for _ in range(2):
        torch.manual_seed(np.random.randint(1 << 30))  # whatever state the process is in
        results.append(evaluate(make_vector_env(config, "eval", 1, 7), agent, episodes=3, mode="train", seed=7))
    assert results[0]["returns"] == results[1]["returns"]


def test_mp4_without_ffmpeg_fails_before_any_episode(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed

    class Exploding(CountEnv):
        def step(self, action):
            raise AssertionError("an episode ran")

    from torch_dreamer.envs import wrap_env

    envs = gym.vector.SyncVectorEnv([lambda: wrap_env(Exploding(5), tiny_config())], autoreset_mode=AUTORESET)
    agent = _agent({"vector": ((1,), np.float32)}, 2, True)
    with pytest.raises(UserError, match="imageio-ffmpeg"):
        evaluate(envs, agent, episodes=1, video=str(tmp_path / "run.mp4"))


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    """A CartPole run trained through the Python API (as a user would)."""
    logdir = tmp_path_factory.mktemp("api") / "cartpole"
    # The task key keeps its default (dmc_walker_walk), as in the README's MiniGrid example.
    config = dv2.defaults.update(dv2.configs["gym_vector"]).update({"logdir": str(logdir),
                                                                     "task": dv2.defaults.task})
    config = config.parse_flags(TINY + SHORT)
    torch.set_num_threads(1)
    dv2.train(gym.make("CartPole-v1"), config)
    return logdir


def test_dreamer_eval_rebuilds_the_env_of_a_python_api_run(api_run, capsys):
    assert (api_run / ENV_RECORD).exists()
    assert main(["eval", "--logdir", str(api_run), "--episodes", "2", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert "over 2 episodes" in first and "CartPole-v1" in first
    assert main(["eval", "--logdir", str(api_run), "--episodes", "2", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first  # --seed repeats the evaluation exactly


def test_an_env_dreamer_eval_cannot_rebuild_is_a_one_line_error(api_run, tmp_path, capsys):
    import json
    import shutil

    run = tmp_path / "custom"
    shutil.copytree(api_run, run)
    (run / ENV_RECORD).write_text(json.dumps({"id": None, "class": "my_module:MyEnv", "spec": None}))
    assert main(["eval", "--logdir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "api.evaluate(env, logdir)" in err[0] and "my_module:MyEnv" in err[0]
    # Without a record (an older Python API run) the run's task is the default one, which does not fit.
    (run / ENV_RECORD).unlink()
    assert main(["eval", "--logdir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "api.evaluate(env, logdir)" in err[0] and "dmc_walker_walk" in err[0], err


def test_api_evaluate_checks_the_env_against_the_checkpoint(api_run):
    with pytest.raises(UserError, match="discrete actions of size 3"):
        dv2.evaluate(gym.make("MountainCar-v0"), api_run, episodes=1, device="cpu")
    scores = dv2.evaluate(gym.make("CartPole-v1"), api_run, episodes=2, device="cpu")
    assert len(scores["returns"]) == 2


# ----------------------------------------------------------------------------- EnvPolicy


class SpyAgent:
    """Wraps an agent and records the is_first flags and observations each policy call gets."""

    def __init__(self, agent):
        self.agent, self.calls = agent, []

    def __getattr__(self, name):
        return getattr(self.agent, name)

    def policy(self, obs, state, mode):
        self.calls.append({k: v.clone() for k, v in obs.items()})
        return self.agent.policy(obs, state, mode)


def test_env_policy_acts_in_a_raw_discrete_env(api_run):
    env = gym.make("CartPole-v1")
    agent = SpyAgent(dv2.load_agent(api_run, device="cpu"))
    policy = dv2.EnvPolicy(agent, env)
    obs, _ = env.reset(seed=0)
    for t in range(5):
        action = policy(obs)
        assert isinstance(action, int) and action in (0, 1)
        obs, *_ = env.step(action)
    assert [bool(c["is_first"][0]) for c in agent.calls] == [True, False, False, False, False]
    policy.reset()
    policy(obs)
    assert bool(agent.calls[-1]["is_first"][0])
    batch = np.stack([obs, obs, obs])  # a batch of raw observations (e.g. from a vector env)
    actions = policy(batch)
    assert actions.shape == (3,) and actions.dtype.kind == "i"
    policy.reset(index=[1])
    policy(batch)
    assert agent.calls[-1]["is_first"].tolist() == [False, True, False]


def test_env_policy_rescales_box_actions_and_converts_images():
    class ImageEnv(gym.Env):
        # channel-first float images in [0, 1] and a Box action in [-2, 2] x [0, 10]
        observation_space = gym.spaces.Box(0.0, 1.0, (3, 32, 32), np.float32)
        action_space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))

    agent = SpyAgent(_agent({"image": ((64, 64, 3), np.uint8)}, 2, False))
    policy = EnvPolicy(agent, ImageEnv())
    obs = np.zeros((3, 32, 32), np.float32)
    obs[1] = 0.5  # the green channel
    action = policy(obs)
    assert action.shape == (2,) and action.dtype == np.float32
    assert -2 <= action[0] <= 2 and 0 <= action[1] <= 10
    image = agent.calls[-1]["image"]
    assert image.shape == (1, 64, 64, 3) and image.dtype == torch.uint8
    assert image[0, 5, 5].tolist() == [0, 128, 0]  # transposed to HWC and scaled to 0..255
    # The rescaling is the one training used: -1 -> low, 1 -> high.
    assert np.allclose(policy._env_action(np.array([-1.0, 1.0])), [-2.0, 10.0])
    # Without an env: observations in the agent's own keys; float images in [0, 1] are scaled too.
    bare = EnvPolicy(agent, action_space=ImageEnv.action_space)
    bare({"image": np.full((64, 64, 3), 0.5, np.float32)})
    assert int(agent.calls[-1]["image"][0, 0, 0, 0]) == 128
    with pytest.raises(UserError, match="action space is Discrete"):
        EnvPolicy(agent, observation_space=ImageEnv.observation_space, action_space=gym.spaces.Discrete(2))


def test_env_policy_repeats_actions_like_training():
    agent = SpyAgent(_agent({"vector": ((1,), np.float32)}, 2, True, "--action_repeat", "2"))
    policy = EnvPolicy(agent, CountEnv(10))
    for _ in range(4):
        policy(np.zeros(1, np.float32))
    assert len(agent.calls) == 2  # one decision per action_repeat env steps, as wrap_env did in training


def test_env_policy_drives_a_vector_env(api_run):
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3)
    policy = dv2.EnvPolicy(dv2.load_agent(api_run, device="cpu"), envs)
    obs, _ = envs.reset(seed=0)
    for _ in range(3):
        actions = policy(obs)
        assert actions.shape == (3,)
        obs, _, terminated, truncated, _ = envs.step(actions)
        policy.reset(index=np.flatnonzero(terminated | truncated))
    envs.close()
