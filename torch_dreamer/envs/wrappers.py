"""Generic wrappers that turn any gymnasium env into the env contract (docs/ARCHITECTURE.md).

`wrap_env` is the official `api.py` stack (GymWrapper -> ResizeImage -> NormalizeAction /
OneHotAction -> TimeLimit) rebuilt on gymnasium 1.x: observations become a Dict of uint8
images, float32 vectors and float32 scalars; Box actions live in [-1, 1]; Discrete stays
Discrete (the run loop one-hots); time limits truncate, they never terminate.
"""

from __future__ import annotations

import re
import warnings

import gymnasium
import numpy as np
from gymnasium import spaces

from torch_dreamer.errors import UserError


def wrap_env(env: gymnasium.Env, config, action_repeat: int | None = None) -> gymnasium.Env:
    """Adapts any gymnasium env to the contract.

    `action_repeat` overrides `config.action_repeat`; suites that repeat actions
    themselves (Atari frame skip, DMC physics steps) pass 1.
    """
    env = DictObservation(env, _render_size(config))
    # Some envs (MiniGrid) return int rewards; episodes store float32.
    env = gymnasium.wrappers.TransformReward(env, float)
    env = normalize_actions(env)
    repeat = config.action_repeat if action_repeat is None else action_repeat
    if repeat > 1:
        env = ActionRepeat(env, repeat)
    if config.time_limit > 0:
        env = gymnasium.wrappers.TimeLimit(env, int(config.time_limit))
    return env


def wants_image(config) -> bool:
    """True when the encoder or decoder would read `image` (the official agent uses re.match)."""
    keys = [config.encoder.cnn_keys, config.decoder.cnn_keys]
    return any(re.match(pattern, "image") for pattern in keys)


def _render_size(config) -> tuple[int, int]:
    size = tuple(int(s) for s in config.render_size)
    if len(size) != 2 or min(size) <= 0:
        raise UserError(f"render_size must be two positive integers (height, width), got {config.render_size}")
    return size


# ----------------------------------------------------------------------------- observations


def resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W, C) array, sampling pixel centres like PIL's NEAREST.

    Done in numpy so any channel count and dtype works (PIL only takes 1, 3 or 4 channels).
    """
    height, width = image.shape[:2]
    if (height, width) == tuple(size):
        return image
    rows = ((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64)
    cols = ((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64)
    return image[rows[:, None], cols[None, :]]


def _to_uint8(image: np.ndarray, high) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    image = np.asarray(image, np.float64)
    # Float images in [0, 1] are scaled up; anything else is taken as already 0..255.
    if np.all(np.asarray(high) <= 1.0):
        image = image * 255.0
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


class _Converter:
    """Converts one observation entry to the contract's key, space and dtype."""

    def __init__(self, key: str, space: spaces.Space, fn):
        self.key, self.space, self.fn = key, space, fn


MAX_CHANNELS = 4  # an image axis this small is a channel axis (gray, RGB, RGBA or 2-4 stacked frames)


def channel_first(key: str, shape: tuple) -> bool:
    """True for a (C, H, W) image, False for (H, W, C); a one-line error when the shape could be either.

    (3, 64, 64) is channel-first and (64, 64, 3) channel-last. A small axis at both ends with a large one
    between, e.g. (3, 64, 4), is ambiguous and refused rather than guessed.
    """
    if len(shape) != 3:
        return False
    first, middle, last = shape
    if first <= MAX_CHANNELS < last:
        return True
    if first <= MAX_CHANNELS and last <= MAX_CHANNELS < middle and first != last:
        raise UserError(f"cannot tell whether observation '{key}' of shape {tuple(shape)} is (C, H, W) or "
                        "(H, W, C); transpose it to (H, W, C) in a gymnasium ObservationWrapper")
    return False


def _image_converter(key: str, space: spaces.Box, size) -> _Converter:
    chw = channel_first(key, space.shape)
    shape = (*space.shape[1:], space.shape[0]) if chw else space.shape
    channels = shape[2] if len(shape) == 3 else 1
    new_space = spaces.Box(0, 255, (*size, channels), np.uint8)
    high = np.moveaxis(np.asarray(space.high), 0, -1) if chw and np.ndim(space.high) == 3 else space.high

    def fn(value):
        value = np.asarray(value)
        if chw:  # channel-first (C, H, W), as PyTorch-style envs give: to the contract's (H, W, C)
            value = np.moveaxis(value, 0, -1)
        if value.ndim == 2:  # grayscale without a channel axis
            value = value[..., None]
        return np.ascontiguousarray(resize_nearest(_to_uint8(value, high), size))

    return _Converter(key, new_space, fn)


def _vector_converter(key: str, space: spaces.Space) -> _Converter:
    size = int(np.prod(space.shape)) if space.shape else 1
    low, high = -np.inf, np.inf
    if isinstance(space, spaces.Box):
        low, high = space.low.reshape(-1).astype(np.float32), space.high.reshape(-1).astype(np.float32)
    new_space = spaces.Box(low, high, (size,), np.float32)
    return _Converter(key, new_space, lambda value: np.asarray(value, np.float32).reshape(size))


def _scalar_converter(key: str) -> _Converter:
    new_space = spaces.Box(-np.inf, np.inf, (), np.float32)
    return _Converter(key, new_space, lambda value: np.asarray(value, np.float32).reshape(()))


def _onehot_converter(key: str, space: spaces.Discrete) -> _Converter:
    n, start = int(space.n), int(space.start)

    def fn(value):
        vector = np.zeros(n, np.float32)
        vector[int(value) - start] = 1.0
        return vector

    return _Converter(key, spaces.Box(0, 1, (n,), np.float32), fn)


def _looks_like_image(space: spaces.Box) -> bool:
    # Official ResizeImage treats every rank>1 entry as an image; we also require image-like
    # dtype or channels so that e.g. NLE's int16 glyph maps become vectors, not garbage pixels.
    if len(space.shape) == 2:
        return space.dtype == np.uint8
    if len(space.shape) == 3:  # (H, W, C), or (C, H, W) which the converter transposes
        return space.dtype == np.uint8 or min(space.shape[0], space.shape[2]) <= MAX_CHANNELS
    return False


def _entry_converter(key: str, space: spaces.Space, size) -> _Converter | None:
    """The converter for one Dict entry, or None to drop it (Text, Graph, nested spaces...)."""
    if isinstance(space, spaces.Box):
        if len(space.shape) == 0:
            return _scalar_converter(key)
        if _looks_like_image(space):
            return _image_converter(key, space, size)
        return _vector_converter(key, space)
    if isinstance(space, spaces.Discrete):
        return _scalar_converter(key)
    if isinstance(space, (spaces.MultiBinary, spaces.MultiDiscrete)):
        return _vector_converter(key, space)
    return None


def _top_level_converter(space: spaces.Space, size) -> _Converter | None:
    """A non-Dict observation: rank>=2 Box -> `image`, rank 1 -> `vector`.

    A bare Discrete or scalar observation is the agent's only input, so it becomes an
    encodable `vector` (one-hot for Discrete) rather than a logged-only scalar.
    """
    if isinstance(space, spaces.Box):
        if len(space.shape) in (2, 3):
            return _image_converter("image", space, size)
        return _vector_converter("vector", space)
    if isinstance(space, spaces.Discrete):
        return _onehot_converter("vector", space)
    if isinstance(space, (spaces.MultiBinary, spaces.MultiDiscrete)):
        return _vector_converter("vector", space)
    return None


def build_converters(space: spaces.Space, size) -> dict:
    """{raw key (None for a non-Dict space): converter} turning a raw observation into the contract's dict."""
    if not isinstance(space, spaces.Dict):
        converter = _top_level_converter(space, size)
        if converter is None:
            raise UserError(f"unsupported observation space {space}: use a Box, Discrete or Dict of them")
        return {None: converter}
    converters, dropped = {}, []
    for key, sub in space.spaces.items():
        converter = _entry_converter(str(key), sub, size)
        if converter is None:
            dropped.append(key)
        else:
            converters[key] = converter
    if dropped:
        warnings.warn(f"dropping observation keys the agent cannot use: {', '.join(map(str, dropped))}")
    if not converters:
        raise UserError(f"no usable observation in {space}: need Box, Discrete, MultiBinary or MultiDiscrete entries")
    return converters


def convert_observation(converters: dict, observation) -> dict:
    """One raw observation to the contract's {key: array} with the converters of `build_converters`."""
    if None in converters:
        converter = converters[None]
        return {converter.key: converter.fn(observation)}
    return {c.key: c.fn(observation[key]) for key, c in converters.items()}


class DictObservation(gymnasium.ObservationWrapper):
    """Observations as a Dict of uint8 images (resized), float32 vectors and float32 scalars."""

    def __init__(self, env: gymnasium.Env, size: tuple[int, int]):
        super().__init__(env)
        self._converters = build_converters(env.observation_space, size)
        self.observation_space = spaces.Dict({c.key: c.space for c in self._converters.values()})

    def observation(self, observation):
        return convert_observation(self._converters, observation)


# ----------------------------------------------------------------------------- actions


def normalize_actions(env: gymnasium.Env) -> gymnasium.Env:
    """Box actions to Box(-1, 1, (d,), float32); Discrete(n) kept, other action spaces refused."""
    space = env.action_space
    if isinstance(space, spaces.Discrete):
        if int(space.start) == 0:
            return env
        start = int(space.start)
        return gymnasium.wrappers.TransformAction(env, lambda a: int(a) + start, spaces.Discrete(int(space.n)))
    if not isinstance(space, spaces.Box):
        raise UserError(f"unsupported action space {space}: only Discrete and Box actions are supported")
    finite = np.isfinite(space.low).all() and np.isfinite(space.high).all()
    if finite and space.dtype == np.float32 and len(space.shape) == 1:
        ones = np.ones(space.shape, np.float32)  # float32 bounds: float64 ones make gymnasium warn
        return gymnasium.wrappers.RescaleAction(env, -ones, ones)
    return NormalizeAction(env)


class NormalizeAction(gymnasium.ActionWrapper):
    """The official NormalizeAction: finite dimensions map from [-1, 1]; unbounded ones pass through.

    Also flattens multi-dimensional Box actions and casts to the env's dtype, which
    gymnasium's RescaleAction does not do.
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        space = env.action_space
        low, high = space.low.reshape(-1).astype(np.float64), space.high.reshape(-1).astype(np.float64)
        self._mask = np.isfinite(low) & np.isfinite(high)
        # Unbounded dimensions get dummy bounds; np.where below ignores their values.
        self._low, self._high = np.where(self._mask, low, -1.0), np.where(self._mask, high, 1.0)
        self.action_space = spaces.Box(-1.0, 1.0, (self._low.size,), np.float32)

    def action(self, action):
        action = np.asarray(action, np.float64).reshape(-1)
        scaled = (action + 1.0) / 2.0 * (self._high - self._low) + self._low
        original = np.where(self._mask, scaled, action)
        space = self.env.action_space
        return original.reshape(space.shape).astype(space.dtype)


# ----------------------------------------------------------------------------- time


class ActionRepeat(gymnasium.Wrapper):
    """Repeats each action `amount` times and sums the rewards; stops early at episode end."""

    def __init__(self, env: gymnasium.Env, amount: int):
        super().__init__(env)
        self._amount = int(amount)

    def step(self, action):
        total = 0.0
        for _ in range(self._amount):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class SeedOnFirstReset(gymnasium.Wrapper):
    """Uses `seed` on the first reset that gives none, so a built env is reproducible as is.

    Later resets without a seed continue the env's own random stream (gymnasium semantics).
    """

    def __init__(self, env: gymnasium.Env, seed: int):
        super().__init__(env)
        self._seed = int(seed)
        self._seeded = False
        self.action_space.seed(self._seed)

    def reset(self, *, seed=None, options=None):
        if seed is None and not self._seeded:
            seed = self._seed
        self._seeded = True
        return self.env.reset(seed=seed, options=options)
