"""MiniGrid: partial / full / symbolic views, non-square grids, every registered env."""

import os

import gymnasium
import numpy as np
import pytest

from torch_dreamer.envs import make_env
from torch_dreamer.errors import UserError

minigrid = pytest.importorskip("minigrid")
from torch_dreamer.envs.minigrid import registered_ids  # noqa: E402

HARD = ["MiniGrid-Dynamic-Obstacles-5x5-v0", "MiniGrid-MultiRoom-N2-S4-v0", "MiniGrid-Unlock-v0"]


def _wfc_patterns_missing(env_id):
    # The minigrid 3.2 wheel ships the WFC code without its pattern images.
    folder = os.path.join(os.path.dirname(minigrid.__file__), "envs", "wfc", "patterns")
    return "-WFC-" in env_id and not os.path.isdir(folder)


@pytest.mark.parametrize("view", ["partial", "full", "symbolic"])
@pytest.mark.parametrize("env_id", HARD)
def test_views_on_envs_known_to_break_other_ports(h, env_id, view):
    env = make_env(h.make_config("minigrid", task=f"minigrid_{env_id}", minigrid_view=view))
    first = h.check_env(env, steps=10, image=(64, 64, 3))
    assert set(first) == {"image", "direction"}  # the text mission is dropped


def test_dynamic_obstacles_has_three_actions(h):
    env = make_env(h.make_config("minigrid", task="minigrid_MiniGrid-Dynamic-Obstacles-5x5-v0"))
    assert env.action_space.n == 3


def test_full_view_pads_non_square_grids(h):
    # Unlock is 11 x 6 cells; the padded frame keeps cells square, centred vertically.
    env = make_env(h.make_config("minigrid", task="minigrid_MiniGrid-Unlock-v0", minigrid_view="full", render_size=[88, 88]))
    image = env.reset()[0]["image"]
    assert image.shape == (88, 88, 3)
    rows = np.flatnonzero(image.any(axis=(1, 2)))
    assert rows[0] == 20 and rows[-1] == 67  # 48 rows of grid (6 cells x 8 px) in the middle
    assert image.any(axis=(0, 2)).all()  # the 11 cells span the full width


def test_symbolic_vector_when_no_cnn_reads_image(h):
    config = h.make_config("minigrid", minigrid_view="symbolic", **{"encoder.cnn_keys": "$^", "decoder.cnn_keys": "$^"})
    env = make_env(config)
    first = h.check_env(env)
    assert first["vector"].shape == (7 * 7 * 3,) and "image" not in first
    # MiniGrid's encoding: object index, colour index, state; the agent's cell is always visible.
    assert first["vector"].max() <= max(minigrid.core.constants.OBJECT_TO_IDX.values())


def test_symbolic_image_keeps_raw_codes(h):
    env = make_env(h.make_config("minigrid", minigrid_view="symbolic"))
    image = env.reset()[0]["image"]
    assert image.shape == (64, 64, 3) and image.max() <= 10


def test_seeded_layouts_repeat(h):
    config = h.make_config("minigrid", task="minigrid_MiniGrid-MultiRoom-N2-S4-v0", minigrid_view="full")
    first = [make_env(config, seed=3).reset()[0]["image"] for _ in range(2)]
    other = make_env(config, seed=4).reset()[0]["image"]
    assert np.array_equal(first[0], first[1]) and not np.array_equal(first[0], other)


def test_unknown_env_suggests(h):
    with pytest.raises(UserError, match="MiniGrid-DoorKey-6x6-v0"):
        make_env(h.make_config("minigrid", task="minigrid_MiniGrid-DoorKey-6x6"))
    with pytest.raises(UserError, match="minigrid_view"):
        make_env(h.make_config("minigrid", minigrid_view="egocentric"))


@pytest.mark.parametrize("env_id", [i for i in registered_ids() if i.startswith("MiniGrid-")])
def test_every_registered_minigrid_env(h, env_id):
    if _wfc_patterns_missing(env_id):
        pytest.skip("the installed minigrid package lacks the WFC pattern images")
    env = make_env(h.make_config("minigrid", task=f"minigrid_{env_id}", minigrid_view="full", render_size=[32, 32]))
    h.check_env(env, steps=2, image=(32, 32, 3))


@pytest.mark.parametrize("env_id", ["BabyAI-GoToRedBall-v0", "BabyAI-UnlockPickup-v0"])
def test_babyai_envs(h, env_id):
    env = make_env(h.make_config("minigrid", task=f"minigrid_{env_id}"))
    h.check_env(env, steps=2, image=(64, 64, 3))


def test_time_limit_cuts_minigrid_by_truncation(h):
    env = make_env(h.make_config("minigrid", task="minigrid_MiniGrid-Empty-8x8-v0", time_limit=4))
    env.reset()
    results = [env.step(0)[2:4] for _ in range(4)]  # turning left never ends the episode
    assert results[-1] == (False, True) and results[:-1] == [(False, False)] * 3
    assert gymnasium.spaces.Discrete(7) == env.action_space
