"""DeepMind Control Suite: pixels and proprio, action repeat, truncation, rendering."""

import numpy as np
import pytest

from torch_dreamer.envs import make_env
from torch_dreamer.envs.dmc import split_task
from torch_dreamer.errors import UserError

pytest.importorskip("dm_control")


@pytest.mark.parametrize(
    "name, parts",
    [
        ("walker_walk", ("walker", "walk")),
        ("ball_in_cup_catch", ("ball_in_cup", "catch")),
        ("point_mass_easy", ("point_mass", "easy")),
        ("humanoid_CMU_run", ("humanoid_CMU", "run")),
        ("finger_turn_hard", ("finger", "turn_hard")),
    ],
)
def test_task_names_split_at_the_right_underscore(name, parts):
    assert split_task(name) == parts


def test_unknown_task(h):
    with pytest.raises(UserError, match="dmc_walker_walk"):
        make_env(h.make_config("dmc_vision", task="dmc_walker_wlak"))


def test_vision_renders_image(h, closing):
    env = make_env(h.make_config("dmc_vision"))
    closing(env)
    first = h.check_env(env, image=(64, 64, 3))
    assert first["image"].std() > 0  # an actual rendering, not a blank frame
    assert env.action_space.shape == (6,)


def test_proprio_skips_rendering(h, closing):
    env = make_env(h.make_config("dmc_proprio"))
    closing(env)
    first = h.check_env(env)
    assert "image" not in first
    assert first["orientations"].shape == (14,) and first["height"].shape == (1,)


def test_quadruped_uses_camera_two(h, closing):
    env = make_env(h.make_config("dmc_vision", task="dmc_quadruped_walk", render_size=[32, 32]))
    closing(env)
    assert env.unwrapped._camera == 2
    h.check_env(env, steps=1, image=(32, 32, 3))


def test_episode_end_is_truncation_with_action_repeat(h, closing):
    # 1000 physics steps with action repeat 2 are 500 agent steps, ending by time limit.
    env = make_env(h.make_config("dmc_proprio", task="dmc_cartpole_balance"))
    closing(env)
    env.reset()
    action = np.zeros(env.action_space.shape, np.float32)
    for step in range(1, 501):
        _, reward, terminated, truncated, _ = env.step(action)
        assert not terminated
        if truncated:
            break
    assert step == 500 and truncated
    assert 0.0 <= reward <= 2.0  # the sum of two rewards in [0, 1]


def test_camera_from_config(h, closing):
    env = make_env(h.make_config("dmc_vision", task="dmc_cartpole_balance", dmc_camera=1, render_size=[16, 16]))
    closing(env)
    assert env.unwrapped._camera == 1
    h.check_env(env, steps=1, image=(16, 16, 3))


def test_gl_backend_choice(monkeypatch):
    from torch_dreamer.envs import dmc

    monkeypatch.setenv("MUJOCO_GL", "glfw")
    assert dmc.choose_gl_backend() == "glfw"  # the user's choice wins
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.setattr(dmc, "_cuda_visible", lambda: False)
    assert dmc.choose_gl_backend() == "osmesa"
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.setattr(dmc, "_cuda_visible", lambda: True)
    assert dmc.choose_gl_backend() == "egl"
    monkeypatch.undo()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert dmc._cuda_visible() is False  # hidden GPUs do not count
