"""wrap_env on user envs: observation, action and time-limit adaptation."""

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from torch_dreamer.envs import wrap_env
from torch_dreamer.envs.wrappers import ActionRepeat, resize_nearest
from torch_dreamer.errors import UserError


class ToyEnv(gymnasium.Env):
    """An env with configurable spaces; ends (terminated) after `length` steps, reward 1 per step."""

    def __init__(self, observation_space, action_space=None, length=1000):
        self.observation_space = observation_space
        self.action_space = action_space or spaces.Discrete(3)
        self.length, self.t, self.actions = length, 0, []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        self.actions.append(action)
        return self.observation_space.sample(), 1, self.t >= self.length, False, {}


def test_cartpole(h):
    env = wrap_env(gymnasium.make("CartPole-v1"), h.make_config("defaults", time_limit=0))
    assert list(env.observation_space.spaces) == ["vector"]
    assert env.observation_space["vector"].shape == (4,)
    assert env.action_space == spaces.Discrete(2)
    h.check_env(env, steps=20)


def test_minigrid_rgb_partial(h):
    minigrid = pytest.importorskip("minigrid")
    import minigrid.wrappers  # noqa: F401

    raw = minigrid.wrappers.RGBImgPartialObsWrapper(gymnasium.make("MiniGrid-DoorKey-6x6-v0"))
    with pytest.warns(UserWarning, match="dropping observation keys the agent cannot use: mission"):
        env = wrap_env(raw, h.make_config("minigrid"))
    # `mission` is a Text space: dropped with a warning; `direction` becomes a logged scalar.
    assert set(env.observation_space.spaces) == {"image", "direction"}
    assert env.observation_space["direction"].shape == ()
    h.check_env(env, image=(64, 64, 3))


def test_resize_nearest_picks_pixel_centres():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    up = resize_nearest(image, (8, 8))
    assert up.shape == (8, 8, 1)
    assert np.array_equal(up[::2, ::2], image) and np.array_equal(up[1::2, 1::2], image)
    down = resize_nearest(image, (2, 2))
    assert down[..., 0].tolist() == [[5, 7], [13, 15]]
    odd = np.zeros((3, 5, 7), np.uint8)  # any channel count works
    assert resize_nearest(odd, (6, 4)).shape == (6, 4, 7)


def test_images_get_channels_dtype_and_size(h):
    obs_space = spaces.Dict(
        {
            "gray": spaces.Box(0, 255, (10, 12), np.uint8),
            "float_rgb": spaces.Box(0.0, 1.0, (20, 20, 3), np.float32),
            "matrix": spaces.Box(-5, 5, (3, 4), np.float32),  # not image-like: a vector
            "count": spaces.Discrete(5),
            "flags": spaces.MultiBinary(4),
            "pos": spaces.Box(-1, 1, (2,), np.float64),
        }
    )
    env = wrap_env(ToyEnv(obs_space), h.make_config("defaults", render_size=[16, 24]))
    space = env.observation_space
    assert space["gray"].shape == (16, 24, 1) and space["gray"].dtype == np.uint8
    assert space["float_rgb"].shape == (16, 24, 3)
    assert space["matrix"].shape == (12,) and space["matrix"].dtype == np.float32
    assert space["count"].shape == () and space["count"].dtype == np.float32
    assert space["flags"].shape == (4,)
    assert space["pos"].dtype == np.float32
    h.check_env(env)


def test_float_image_in_unit_range_is_scaled():
    space = spaces.Box(0.0, 1.0, (4, 4, 3), np.float32)
    env = wrap_env(ToyEnv(space), _config(render_size=[4, 4]))
    env.unwrapped.observation_space = spaces.Box(1.0, 1.0, (4, 4, 3), np.float32)  # constant ones
    obs, _ = env.reset()
    assert obs["image"].dtype == np.uint8 and np.all(obs["image"] == 255)


class ChannelFirstEnv(ToyEnv):
    """Gives (C, H, W) images whose channel c is filled with the value c + 1 (so a garbled layout shows)."""

    def _obs(self):
        shape = self.observation_space.shape
        value = np.arange(1, shape[0] + 1, dtype=np.float32)[:, None, None] * np.ones(shape, np.float32)
        return value.astype(self.observation_space.dtype) if self.observation_space.dtype == np.uint8 else value / 10

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        _, reward, terminated, truncated, info = super().step(action)
        return self._obs(), reward, terminated, truncated, info


@pytest.mark.parametrize("dtype,high", [(np.uint8, 255), (np.float32, 1.0)])
def test_channel_first_images_are_transposed(h, dtype, high):
    env = wrap_env(ChannelFirstEnv(spaces.Box(0, high, (3, 48, 40), dtype)), _config())
    assert env.observation_space["image"].shape == (64, 64, 3)
    obs, _ = env.reset()
    expected = [1, 2, 3] if dtype == np.uint8 else [26, 51, 77]  # 0.1, 0.2, 0.3 (float32) x 255, rounded
    assert obs["image"].shape == (64, 64, 3) and obs["image"][10, 20].tolist() == expected
    h.check_env(env, image=(64, 64, 3))
    stacked = wrap_env(ToyEnv(spaces.Dict({"frames": spaces.Box(0, 255, (4, 84, 84), np.uint8)})), _config())
    assert stacked.observation_space["frames"].shape == (64, 64, 4)


def test_ambiguous_image_layout_is_a_one_line_error():
    with pytest.raises(UserError, match=r"\(C, H, W\) or \(H, W, C\)"):
        wrap_env(ToyEnv(spaces.Box(0, 255, (3, 64, 4), np.uint8)), _config())
    # Channel-last stays as it is, even when the height is small.
    assert wrap_env(ToyEnv(spaces.Box(0, 255, (4, 4, 3), np.uint8)), _config()).observation_space["image"].shape \
        == (64, 64, 3)


def test_top_level_spaces(h):
    image = wrap_env(ToyEnv(spaces.Box(0, 255, (30, 40), np.uint8)), _config())
    assert image.observation_space["image"].shape == (64, 64, 1)
    discrete = wrap_env(ToyEnv(spaces.Discrete(6)), _config())
    # A bare Discrete observation is the agent's only input: one-hot, encodable.
    assert discrete.observation_space["vector"].shape == (6,)
    obs, _ = discrete.reset()
    assert obs["vector"].sum() == 1.0
    h.check_env(discrete)


def test_unsupported_spaces_raise_user_errors():
    with pytest.raises(UserError, match="observation space"):
        wrap_env(ToyEnv(spaces.Text(5)), _config())
    with pytest.raises(UserError, match="no usable observation"), pytest.warns(UserWarning, match="dropping"):
        wrap_env(ToyEnv(spaces.Dict({"mission": spaces.Text(5)})), _config())
    with pytest.raises(UserError, match="action space"):
        wrap_env(ToyEnv(spaces.Box(-1, 1, (2,)), spaces.MultiDiscrete([2, 3])), _config())


def test_box_actions_normalised(h):
    finite = ToyEnv(spaces.Box(-1, 1, (2,)), spaces.Box(np.array([0.0, -4.0], np.float32), np.array([10.0, 4.0], np.float32)))
    env = wrap_env(finite, _config())
    h.check_action_space(env.action_space)
    env.reset()
    env.step(np.array([-1.0, 1.0], np.float32))
    assert np.allclose(finite.actions[-1], [0.0, 4.0])

    # Unbounded dimensions pass through unchanged (official NormalizeAction); float64 2-D gets flattened.
    low = np.array([[0.0, -np.inf]])
    mixed = ToyEnv(spaces.Box(-1, 1, (2,)), spaces.Box(low, np.array([[2.0, np.inf]]), dtype=np.float64))
    assert mixed.action_space.dtype == np.float64
    env = wrap_env(mixed, _config())
    h.check_action_space(env.action_space)
    env.reset()
    env.step(np.array([0.0, 7.5], np.float32))
    assert mixed.actions[-1].shape == (1, 2) and mixed.actions[-1].dtype == np.float64
    assert np.allclose(mixed.actions[-1], [[1.0, 7.5]])


def test_discrete_with_start_is_shifted():
    inner = ToyEnv(spaces.Box(-1, 1, (2,)), spaces.Discrete(3, start=5))
    env = wrap_env(inner, _config())
    assert env.action_space == spaces.Discrete(3)
    env.reset()
    env.step(0)
    assert inner.actions[-1] == 5


def test_time_limit_truncates_not_terminates():
    env = wrap_env(ToyEnv(spaces.Box(-1, 1, (2,))), _config(time_limit=5))
    env.reset()
    flags = [env.step(0)[2:4] for _ in range(5)]
    assert flags[:4] == [(False, False)] * 4
    assert flags[4] == (False, True)


def test_action_repeat_sums_rewards_and_stops_at_the_end():
    inner = ToyEnv(spaces.Box(-1, 1, (2,)), length=5)
    env = wrap_env(inner, _config(action_repeat=3))
    assert any(isinstance(w, ActionRepeat) for w in _chain(env))
    env.reset()
    assert env.step(1)[1] == 3.0
    _, reward, terminated, _, _ = env.step(1)
    assert reward == 2.0 and terminated and inner.t == 5


def _chain(env):
    while hasattr(env, "env"):
        yield env
        env = env.env


def _config(**overrides):
    from torch_dreamer.config import resolve

    flags = []
    for key, value in overrides.items():
        flags += [f"--{key}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return resolve(["defaults"], flags)
