"""World-model analysis on a tiny model trained here (~30 s on one CPU thread): encode -> decode reconstructs,
dreams with the episode's own actions track the real frames, states round-trip through .npz, latents can be
perturbed, and `dreamer dream` writes the side-by-side video."""

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from torch_dreamer import analysis
from torch_dreamer.agent.agent import Agent
from torch_dreamer.cli import main
from torch_dreamer.config import resolve
from torch_dreamer.errors import UserError

COLOURS = np.array([[255, 60, 60], [60, 255, 60], [60, 60, 255], [255, 255, 60]], np.uint8)


class Slide(gym.Env):
    """A coloured square in one of 4 slots; actions move it left / stay / right; reward in the right slot."""

    observation_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)})
    action_space = gym.spaces.Discrete(3)

    def _obs(self):
        image = np.zeros((64, 64, 3), np.uint8)
        image[24:40, 16 * self.x:16 * self.x + 16] = COLOURS[self.x]
        return {"image": image}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = int(self.np_random.integers(4)), 0
        return self._obs(), {}

    def step(self, action):
        self.x, self.t = int(np.clip(self.x + int(action) - 1, 0, 3)), self.t + 1
        return self._obs(), float(self.x == 3), False, self.t >= 20, {}


TINY = ["--rssm.deter", "64", "--rssm.hidden", "64", "--rssm.stoch", "8", "--rssm.discrete", "8",
        "--encoder.cnn_depth", "8", "--decoder.cnn_depth", "8", "--reward_head.layers", "1", "--reward_head.units", "32",
        "--discount_head.layers", "1", "--discount_head.units", "32", "--actor.layers", "1", "--actor.units", "32",
        "--critic.layers", "1", "--critic.units", "32", "--imag_horizon", "3", "--progress", "False",
        "--encoder.cnn_keys", "image", "--decoder.cnn_keys", "image", "--encoder.mlp_keys", "$^",
        "--decoder.mlp_keys", "$^"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """300 updates on Slide, on 400 random-policy steps (prefill, then pretrain)."""
    from torch_dreamer.runs.train import Trainer

    logdir = tmp_path_factory.mktemp("slide")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = resolve(["debug"], TINY + [
        "--logdir", str(logdir), "--task", "gym_Slide", "--steps", "410", "--prefill", "400", "--pretrain", "300",
        "--eval_every", "1e5", "--log_every", "1e5", "--replay.minlen", "10", "--dataset.batch", "8",
        "--dataset.length", "10", "--time_limit", "0", "--model_opt.lr", "1e-3", "--loggers", "jsonl"])
    vec = lambda: gym.vector.SyncVectorEnv([Slide], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    try:
        Trainer(config, vec(), vec()).run()
    finally:
        torch.set_num_threads(threads)
    return logdir


@pytest.fixture
def model(run, one_thread):
    torch.manual_seed(0)
    return analysis.load(run)


@pytest.fixture
def episode(model):
    return analysis.load_episode(model.episodes("train")[0])  # a random-policy (prefill) episode


def test_encode_decode_reconstructs_better_than_a_random_model(model, episode):
    states = model.encode(episode)
    assert states["deter"].shape == (21, 64) and states["stoch"].shape == (21, 8, 8)
    decoded = model.decode(states)
    assert decoded["image"].shape == (21, 64, 64, 3) and decoded["image"].dtype == np.uint8
    assert decoded["reward"].shape == (21,) and decoded["discount"].shape == (21,)
    error = np.abs(decoded["image"].astype(float) - episode["image"]).mean()
    torch.manual_seed(0)
    random = analysis.DreamModel(Agent(model.config, model.agent.obs_space, model.agent.act_dim, True))
    random_error = np.abs(random.decode(random.encode(episode))["image"].astype(float) - episode["image"]).mean()
    assert error < 0.2 * random_error, (error, random_error)


def test_dreams_with_the_episodes_actions_track_the_real_frames(model):
    """Over 12 starts (6 episodes x 2), 8 dreams each: own actions err far less than random ones."""
    rng = np.random.default_rng(0)
    horizon, own_errors, random_errors = 5, [], []
    for path in model.episodes("train")[:6]:
        episode = analysis.load_episode(path)
        states = model.encode(episode)
        for start in (2, 8):
            real = episode["image"][start:start + horizon + 1].astype(float)
            first = analysis.index(states, slice(start, start + 1))
            own = model.imagine(first, actions=episode["action"][start + 1:start + 1 + horizon], samples=8)
            assert own["deter"].shape == (horizon + 1, 8, 64) and own["action"].shape == (horizon + 1, 8, 3)
            random_actions = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (horizon, 8))]  # (H, N, A): per start
            other = model.imagine(analysis.index(states, [start] * 8), actions=random_actions)
            error = lambda dream: np.abs(model.decode(dream)["image"].astype(float) - real[:, None]).mean(axis=(1, 2, 3, 4))
            own_errors.append(error(own))
            random_errors.append(error(other))
    own, random = np.array(own_errors), np.array(random_errors)
    assert np.allclose(own[:, 0], random[:, 0])  # step 0 is the same start state
    assert own[:, 1:].mean() < 0.8 * random[:, 1:].mean(), (own.mean(0), random.mean(0))
    assert own[:, 1].mean() < random[:, 1].mean()  # already on the first imagined step


def test_states_round_trip_policy_dreams_and_perturbations(model, episode, tmp_path):
    states = model.encode(episode)
    path = analysis.save_states(tmp_path / "states.npz", states)
    loaded = analysis.load_states(path)
    assert loaded.keys() == states.keys() and all(np.array_equal(loaded[k], states[k]) for k in states)
    dream = model.imagine(analysis.index(loaded, slice(0, 3)), policy="task", horizon=4, samples=2)
    assert dream["stoch"].shape == (5, 6, 8, 8)
    assert model.decode(dream)["image"].shape == (5, 6, 64, 64, 3)
    with pytest.raises(UserError, match="exploration policy"):
        model.imagine(analysis.index(loaded, slice(0, 1)), policy="explore")
    changed = model.perturb(states, latent_index=[0, 1, 2, 3, 4, 5, 6, 7], value=0)
    assert (changed["stoch"][..., 0] == 1).all() and np.array_equal(changed["deter"], states["deter"])
    assert not np.array_equal(model.decode(changed)["image"], model.decode(states)["image"])
    assert np.array_equal(states["stoch"], loaded["stoch"])  # perturb copies


def test_dream_command_writes_the_video(run, model, episode, tmp_path, one_thread, capsys):
    out = tmp_path / "dream.gif"
    episode_file = model.episodes("train")[0]
    code = main(["dream", "--logdir", str(run), "--episode", str(episode_file), "--start", "2", "--horizon", "6",
                 "--samples", "3", "--out", str(out), "--save-states", str(tmp_path / "s.npz"), "--device", "cpu"])
    assert code == 0 and "written" in capsys.readouterr().out
    frames = iio.imread(out, index=None)
    assert frames.shape[1:3] == (12 + 2 * (64 + 2), 4 * (64 + 2) - 2)  # labels; real + 3 dreams; their errors
    assert 1 < frames.shape[0] <= 7
    # From saved states with a policy's actions: dreams only, no real column.
    out = tmp_path / "from_states.gif"
    assert main(["dream", "--logdir", str(run), "--from-states", str(tmp_path / "s.npz"), "--start", "4",
                 "--horizon", "3", "--samples", "2", "--out", str(out), "--device", "cpu"]) == 0
    frames = iio.imread(out, index=None)
    assert frames.shape[1:3] == (12 + 64 + 2, 2 * (64 + 2) - 2)
    assert main(["dream", "--logdir", str(run), "--start", "999", "--out", str(out), "--device", "cpu"]) == 2
