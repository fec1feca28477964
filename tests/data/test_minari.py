"""Minari datasets -> episode files: small datasets made locally with Minari itself, nothing downloaded."""

import json
import sys

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari")
# Minari's own advice on dataset metadata (description, eval_env...) is noise for these throwaway datasets.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:minari")
pytest.importorskip("h5py")  # Minari's default storage backend (minari[hdf5])

from minari.data_collector import EpisodeBuffer  # noqa: E402

from torch_dreamer.data.episodes import count_episodes, list_episodes, load_episode  # noqa: E402
from torch_dreamer.data.minari import MARKER, convert_minari, is_minari, minari_id  # noqa: E402
from torch_dreamer.errors import UserError  # noqa: E402


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    """A private Minari store: datasets are created here and looked up here only."""
    path = tmp_path / "minari_store"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def _record(env, episodes, seed):
    """Episodes of random actions as Minari EpisodeBuffers (what DataCollector records, without jax)."""
    buffers = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        env.action_space.seed(seed + i)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        while True:
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terminations.append(bool(terminated))
            truncations.append(bool(truncated))
            if terminated or truncated:
                break
        buffers.append(
            EpisodeBuffer(
                seed=seed + i,
                observations=observations,
                actions=actions,
                rewards=rewards,
                terminations=terminations,
                truncations=truncations,
            )
        )
    return buffers


def _cartpole(dataset_id="cartpole/random-v0", episodes=5, seed=0):
    env = gym.make("CartPole-v1")
    return minari.create_dataset_from_buffers(dataset_id, _record(env, episodes, seed), env=env, algorithm_name="random")


def _pendulum(dataset_id="pendulum/random-v0", episodes=3, seed=10):
    env = gym.wrappers.TimeLimit(gym.make("Pendulum-v1"), max_episode_steps=20)
    return minari.create_dataset_from_buffers(dataset_id, _record(env, episodes, seed), env=env, algorithm_name="random")


def _converted(directory):
    """Converted episodes in dataset order (the marker lists the files in that order)."""
    marker = json.loads((directory / MARKER).read_text())
    return marker, [load_episode(directory / name) for name in marker["files"]]


def _snapshot(directory):
    return {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}


def _check_common(ours, theirs):
    rows = len(theirs.rewards) + 1
    for key, value in ours.items():
        assert len(value) == rows, key
    assert ours["action"].dtype == np.float32 and ours["reward"].dtype == np.float32
    assert not ours["action"][0].any() and ours["reward"][0] == 0
    np.testing.assert_array_equal(ours["reward"][1:], np.asarray(theirs.rewards, np.float32))
    np.testing.assert_array_equal(ours["is_terminal"][1:], theirs.terminations)
    assert not ours["is_terminal"][0]
    assert ours["is_first"].tolist() == [True] + [False] * (rows - 1)
    assert ours["is_last"].tolist() == [False] * (rows - 1) + [True]


def test_is_minari_and_id():
    assert is_minari("minari:cartpole/random-v0") and not is_minari("/data/episodes")
    assert minari_id("minari:D4RL/door/human-v2") == "D4RL/door/human-v2"
    with pytest.raises(UserError):
        minari_id("minari:")


def test_discrete_dataset_converts_once(tmp_path):
    dataset = _cartpole()
    out = tmp_path / "out"
    summary = convert_minari("cartpole/random-v0", out)
    assert summary == {
        "dataset_id": "cartpole/random-v0",
        "episodes": 5,
        "steps": dataset.total_steps,
        "discrete": True,
        "act_dim": 2,
    }
    assert count_episodes(out) == (5, dataset.total_steps)
    marker, episodes = _converted(out)
    assert marker["complete"] and marker["observations"] == {"vector": [[4], "float32"]}
    assert not (out / ".minari-partial").exists()
    for ours, theirs in zip(episodes, dataset.iterate_episodes(), strict=True):
        _check_common(ours, theirs)
        assert sorted(ours) == ["action", "is_first", "is_last", "is_terminal", "reward", "vector"]
        assert ours["vector"].dtype == np.float32
        np.testing.assert_array_equal(ours["vector"], theirs.observations.astype(np.float32))
        assert ours["action"].shape == (len(theirs.actions) + 1, 2)
        assert (ours["action"][1:].sum(-1) == 1).all()
        np.testing.assert_array_equal(ours["action"][1:].argmax(-1), theirs.actions)
    # Random CartPole falls over long before its time limit: every episode ends in a real termination.
    assert all(ep["is_terminal"][-1] for ep in episodes)

    before = _snapshot(out)
    assert convert_minari("cartpole/random-v0", out) == summary
    assert _snapshot(out) == before  # nothing rewritten, nothing added


def test_box_actions_rescaled_and_truncation_not_terminal(tmp_path):
    dataset = _pendulum()
    out = tmp_path / "out"
    summary = convert_minari("pendulum/random-v0", out)
    assert summary == {"dataset_id": "pendulum/random-v0", "episodes": 3, "steps": 60, "discrete": False, "act_dim": 1}
    marker, episodes = _converted(out)
    assert marker["action_low"] == [-2.0] and marker["action_high"] == [2.0]
    for ours, theirs in zip(episodes, dataset.iterate_episodes(), strict=True):
        _check_common(ours, theirs)
        np.testing.assert_allclose(ours["action"][1:], np.asarray(theirs.actions).reshape(-1, 1) / 2, atol=1e-6)
        assert np.abs(ours["action"]).max() <= 1
        np.testing.assert_array_equal(ours["vector"], theirs.observations.astype(np.float32))
        assert theirs.truncations[-1] and not ours["is_terminal"].any()  # a time limit is no termination


def test_dict_observations_and_unit_box_actions(tmp_path):
    obs_space = gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
            "pos": gym.spaces.Box(-1, 1, (2, 2), np.float64),
            "dir": gym.spaces.Discrete(4),
            "mission": gym.spaces.Text(20),
        }
    )
    act_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    for space in (obs_space, act_space):
        space.seed(3)
    buffers = []
    for length in (4, 7):
        samples = [obs_space.sample() for _ in range(length + 1)]
        buffers.append(
            EpisodeBuffer(
                observations={key: [s[key] for s in samples] for key in obs_space.spaces},
                actions=[act_space.sample() for _ in range(length)],
                rewards=list(np.arange(length, dtype=float)),
                terminations=[False] * (length - 1) + [True],
                truncations=[False] * length,
            )
        )
    dataset = minari.create_dataset_from_buffers(
        "toy/dict-v0", buffers, observation_space=obs_space, action_space=act_space
    )
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="mission"):
        summary = convert_minari("toy/dict-v0", out)
    assert summary["discrete"] is False and summary["act_dim"] == 2 and summary["steps"] == 11
    marker, episodes = _converted(out)
    assert "action_low" not in marker  # already [-1, 1]: stored as is
    for ours, theirs in zip(episodes, dataset.iterate_episodes(), strict=True):
        _check_common(ours, theirs)
        assert sorted(ours) == ["action", "dir", "image", "is_first", "is_last", "is_terminal", "pos", "reward"]
        assert ours["image"].dtype == np.uint8
        np.testing.assert_array_equal(ours["image"], theirs.observations["image"])
        rows = len(theirs.rewards) + 1
        np.testing.assert_array_equal(ours["pos"], theirs.observations["pos"].reshape(rows, 4).astype(np.float32))
        assert ours["dir"].shape == (rows,) and ours["dir"].dtype == np.float32
        np.testing.assert_array_equal(ours["dir"], theirs.observations["dir"])
        np.testing.assert_array_equal(ours["action"][1:], theirs.actions)
        assert ours["is_terminal"][-1]


def test_changed_dataset_is_converted_again(tmp_path):
    dataset = _cartpole(episodes=3)
    out = tmp_path / "out"
    first = convert_minari("cartpole/random-v0", out)
    old = {p.name for p in list_episodes(out)}
    dataset.update_dataset_from_buffer(_record(gym.make("CartPole-v1"), 2, seed=50))
    second = convert_minari("cartpole/random-v0", out)
    assert (first["episodes"], second["episodes"]) == (3, 5)
    new = {p.name for p in list_episodes(out)}
    assert len(new) == 5 and not old & new  # old files replaced, not mixed in
    assert second["steps"] == minari.load_dataset("cartpole/random-v0").total_steps


def test_interrupted_conversion_is_redone(tmp_path):
    _cartpole()
    out = tmp_path / "out"
    convert_minari("cartpole/random-v0", out)
    marker = json.loads((out / MARKER).read_text())
    marker["complete"] = False  # as if stopped while moving files out of the staging folder
    (out / MARKER).write_text(json.dumps(marker))
    (out / ".minari-partial").mkdir()
    (out / ".minari-partial" / "leftover.npz").write_bytes(b"junk")
    summary = convert_minari("cartpole/random-v0", out)
    assert summary["episodes"] == 5 and count_episodes(out) == (5, summary["steps"])
    assert not (out / ".minari-partial").exists()
    assert not set(marker["files"]) & {p.name for p in list_episodes(out)}


def test_converted_data_survives_deleting_the_dataset(tmp_path):
    _cartpole()
    out = tmp_path / "out"
    summary = convert_minari("cartpole/random-v0", out)
    minari.delete_dataset("cartpole/random-v0")
    assert convert_minari("cartpole/random-v0", out) == summary


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="minari download nothing/here-v0"):
        convert_minari("nothing/here-v0", tmp_path / "a")
    assert not (tmp_path / "a").exists()

    _cartpole()
    foreign = tmp_path / "b"
    foreign.mkdir()
    (foreign / "20240101T000000-abc-10.npz").write_bytes(b"x")
    with pytest.raises(UserError, match="not a conversion"):
        convert_minari("cartpole/random-v0", foreign)

    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    buffer = EpisodeBuffer(
        observations=[space.sample() for _ in range(3)],
        actions=[np.array([0, 1]), np.array([1, 2])],
        rewards=[0.0, 1.0],
        terminations=[False, True],
        truncations=[False, False],
    )
    minari.create_dataset_from_buffers(
        "toy/multidiscrete-v0", [buffer], observation_space=space, action_space=gym.spaces.MultiDiscrete([2, 3])
    )
    with pytest.raises(UserError, match="MultiDiscrete"):
        convert_minari("toy/multidiscrete-v0", tmp_path / "c")

    monkeypatch.setitem(sys.modules, "minari", None)
    with pytest.raises(UserError, match="pip install"):
        convert_minari("cartpole/random-v0", tmp_path / "d")


def test_data_collector_dataset(tmp_path):
    """The same conversion for a dataset recorded by Minari's DataCollector (needs minari[create])."""
    pytest.importorskip("jax")
    env = minari.DataCollector(gym.make("CartPole-v1"))
    for seed in range(3):
        env.reset(seed=seed)
        env.action_space.seed(seed)
        while True:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                break
    dataset = env.create_dataset(dataset_id="cartpole/collected-v0", algorithm_name="random")
    summary = convert_minari("cartpole/collected-v0", tmp_path / "out")
    assert summary["episodes"] == 3 and summary["steps"] == dataset.total_steps
    _, episodes = _converted(tmp_path / "out")
    for ours, theirs in zip(episodes, dataset.iterate_episodes(), strict=True):
        _check_common(ours, theirs)
        np.testing.assert_array_equal(ours["action"][1:].argmax(-1), theirs.actions)
