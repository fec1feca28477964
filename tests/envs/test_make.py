"""make_env dispatch, errors, seeding, and vector envs."""

import gymnasium
import numpy as np
import pytest

from torch_dreamer.envs import EVAL_SEED_OFFSET, make_env, make_vector_env
from torch_dreamer.errors import UserError


def test_unknown_suite_lists_suites(h):
    with pytest.raises(UserError, match="atari, dmc, crafter, minigrid, minihack, gym"):
        make_env(h.make_config("defaults", task="procgen_coinrun"))
    with pytest.raises(UserError, match="did you mean dmc_"):
        make_env(h.make_config("defaults", task="dcm_walker_walk"))
    with pytest.raises(UserError, match="unknown task"):
        make_env(h.make_config("defaults", task="atari"))


def test_unknown_gym_id(h):
    with pytest.raises(UserError, match="gym_CartPole-v1"):
        make_env(h.make_config("gym_vector", task="gym_CartPole-v2"))


def test_gym_suite_applies_config(h):
    env = make_env(h.make_config("gym_vector", time_limit=7, action_repeat=2))
    h.check_env(env)
    env.reset()
    total = 0
    for _ in range(7):
        _, reward, terminated, truncated, _ = env.step(0)
        total += reward
        if terminated or truncated:
            break
    assert total == 2 * 7 or terminated  # rewards of repeated steps are summed
    assert truncated or terminated


@pytest.mark.parametrize(
    "names, task",
    [
        (["gym_vector"], "gym_CartPole-v1"),
        (["atari"], "atari_pong"),
        (["minigrid"], "minigrid_MiniGrid-MultiRoom-N2-S4-v0"),
        (["dmc_proprio"], "dmc_cartpole_swingup"),
    ],
)
def test_same_seed_same_observations(h, closing, names, task):
    config = h.make_config(*names, task=task)
    envs = [make_env(config, seed=s) for s in (5, 5, 6)]
    for env in envs:
        closing(env)
    # Actions sampled from a built env's action space are reproducible too.
    assert np.array_equal(envs[0].action_space.sample(), envs[1].action_space.sample())
    a, b, c = (_rollout(env, 25) for env in envs)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # Atari starts look alike; sticky actions and no-op starts make trajectories differ.
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def _rollout(env, steps):
    """Flattened observations of a reset and `steps` fixed actions (episodes restart on end)."""
    space = env.action_space
    space.seed(0)
    actions = [space.sample() for _ in range(steps)]
    obs, _ = env.reset()
    frames = [np.concatenate([v.reshape(-1).astype(np.float64) for v in obs.values()])]
    for action in actions:
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
        frames.append(np.concatenate([v.reshape(-1).astype(np.float64) for v in obs.values()]))
    return frames


def test_eval_envs_use_other_seeds(h):
    config = h.make_config("gym_vector", seed=3)
    train, evaluation = make_env(config, "train"), make_env(config, "eval")
    assert train.reset()[0]["vector"].tolist() == make_env(config, seed=3).reset()[0]["vector"].tolist()
    explicit = make_env(config, seed=3 + EVAL_SEED_OFFSET).reset()[0]["vector"]
    assert np.array_equal(evaluation.reset()[0]["vector"], explicit)
    with pytest.raises(ValueError):
        make_env(config, "test")


def test_vector_env_single_copy_is_sync(h):
    envs = make_vector_env(h.make_config("gym_vector"), "train", 1, 0)
    assert isinstance(envs, gymnasium.vector.SyncVectorEnv)
    obs, _ = envs.reset()
    assert obs["vector"].shape == (1, 4)
    envs.close()


def test_vector_env_copies_are_seeded_in_order(h):
    config = h.make_config("gym_vector", envs_parallel="process")
    envs = make_vector_env(config, "train", 2, 10)
    assert isinstance(envs, gymnasium.vector.AsyncVectorEnv)
    obs, _ = envs.reset()
    envs.close()
    for i in range(2):
        single = make_env(config, seed=10 + i).reset()[0]["vector"]
        assert np.array_equal(obs["vector"][i], single)


def test_async_dict_observations_and_autoreset(h):
    config = h.make_config("minigrid", task="minigrid_MiniGrid-Empty-5x5-v0", time_limit=3)
    envs = make_vector_env(config, "eval", 2, 0)
    try:
        assert isinstance(envs, gymnasium.vector.AsyncVectorEnv)
        assert set(envs.single_observation_space.spaces) == {"image", "direction"}
        obs, _ = envs.reset()
        assert obs["image"].shape == (2, 64, 64, 3) and obs["image"].dtype == np.uint8
        assert obs["direction"].shape == (2,) and obs["direction"].dtype == np.float32
        for _ in range(3):
            obs, reward, terminated, truncated, info = envs.step(np.zeros(2, np.int64))
        assert truncated.all() and not terminated.any()
        # SAME_STEP autoreset: the done step returns the next episode's first observation and
        # keeps the last one in info["final_obs"].
        assert len(info["final_obs"]) == 2 and info["final_obs"][0]["image"].shape == (64, 64, 3)
        obs, reward, terminated, truncated, _ = envs.step(np.zeros(2, np.int64))
        assert not truncated.any()
    finally:
        envs.close()


def test_async_dmc_pixels(h):
    pytest.importorskip("dm_control")
    config = h.make_config("dmc_vision", task="dmc_cartpole_balance", render_size=[32, 32])
    envs = make_vector_env(config, "train", 2, 0)
    try:
        obs, _ = envs.reset()
        assert obs["image"].shape == (2, 32, 32, 3)
        obs, *_ = envs.step(np.zeros((2, 1), np.float32))
        assert obs["image"].std() > 0
        assert not np.array_equal(obs["position"][0], obs["position"][1])  # different seeds
    finally:
        envs.close()


def test_vector_env_errors(h):
    with pytest.raises(UserError, match="envs_parallel"):
        make_vector_env(h.make_config("gym_vector", envs_parallel="thread"), "train", 2, 0)
    with pytest.raises(UserError, match="unknown task"):
        make_vector_env(h.make_config("gym_vector", task="nope_x"), "train", 2, 0)


def test_gym_module_prefix_imports_the_registering_module(h):
    env = make_env(h.make_config("gym_vector", task="gym_gymnasium.envs.classic_control:CartPole-v1"))
    assert env.observation_space["vector"].shape == (4,)
