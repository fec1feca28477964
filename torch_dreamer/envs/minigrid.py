"""MiniGrid and BabyAI envs (`minigrid_<EnvId>`) with three views (`minigrid_view`).

- partial: the egocentric 7x7 view as RGB (RGBImgPartialObsWrapper, tile 8), as in the
  official MiniGrid example and Continual-Dreamer.
- full: the whole grid as RGB, zero-padded to a square before resizing so that
  non-square grids (Unlock is 11x6) keep their aspect ratio; known ports assumed squares.
- symbolic: MiniGrid's own (object, colour, state) encoding of the egocentric view;
  an `image` of raw codes when the encoder or decoder reads `image`, else a `vector`.

The text `mission` is dropped; `direction` stays as a logged scalar. MiniGrid envs end
episodes at their own `max_steps` by truncation, which passes through unchanged.
"""

from __future__ import annotations

import difflib

import gymnasium
import numpy as np
from gymnasium import spaces

from torch_dreamer.envs.wrappers import wants_image
from torch_dreamer.errors import UserError, missing_extra

VIEWS = ("partial", "full", "symbolic")


def _import_minigrid():
    try:
        import minigrid
        import minigrid.wrappers
    except ImportError:
        raise missing_extra("minigrid", "minigrid") from None
    return minigrid


def registered_ids() -> list[str]:
    _import_minigrid()  # registers the MiniGrid-* and BabyAI-* ids
    return sorted(k for k in gymnasium.registry if k.startswith(("MiniGrid-", "BabyAI-")))


def make_minigrid(env_id: str, config, seed: int) -> gymnasium.Env:
    minigrid = _import_minigrid()
    ids = registered_ids()
    if env_id not in ids:
        close = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('minigrid_' + c for c in close)}?" if close else ""
        raise UserError(f"unknown MiniGrid env '{env_id}'{hint}")
    view = config.minigrid_view
    if view not in VIEWS:
        raise UserError(f"minigrid_view must be one of {', '.join(VIEWS)}, got '{view}'")
    env = gymnasium.make(env_id)
    if view == "partial":
        env = minigrid.wrappers.RGBImgPartialObsWrapper(env, tile_size=8)
    elif view == "full":
        env = PadSquare(minigrid.wrappers.RGBImgObsWrapper(env, tile_size=8))
    elif not wants_image(config):
        env = SymbolicVector(env)
    return DropMission(env)


class DropMission(gymnasium.ObservationWrapper):
    """Removes the text `mission`, which the agent cannot encode."""

    def __init__(self, env):
        super().__init__(env)
        entries = {k: v for k, v in env.observation_space.spaces.items() if k != "mission"}
        self.observation_space = spaces.Dict(entries)

    def observation(self, obs):
        return {k: v for k, v in obs.items() if k != "mission"}


class PadSquare(gymnasium.ObservationWrapper):
    """Zero-pads `image` to a centred square, so resizing keeps the grid cells square."""

    def __init__(self, env):
        super().__init__(env)
        height, width, channels = env.observation_space["image"].shape
        self._side = max(height, width)
        self._top, self._left = (self._side - height) // 2, (self._side - width) // 2
        image = spaces.Box(0, 255, (self._side, self._side, channels), np.uint8)
        self.observation_space = spaces.Dict({**env.observation_space.spaces, "image": image})

    def observation(self, obs):
        image = obs["image"]
        square = np.zeros((self._side, self._side, image.shape[2]), np.uint8)
        square[self._top : self._top + image.shape[0], self._left : self._left + image.shape[1]] = image
        return {**obs, "image": square}


class SymbolicVector(gymnasium.ObservationWrapper):
    """Moves the symbolic grid from `image` to a flat float32 `vector` for MLP encoders."""

    def __init__(self, env):
        super().__init__(env)
        entries = dict(env.observation_space.spaces)
        grid = entries.pop("image")
        entries["vector"] = spaces.Box(0, 255, (int(np.prod(grid.shape)),), np.float32)
        self.observation_space = spaces.Dict(entries)

    def observation(self, obs):
        obs = dict(obs)
        obs["vector"] = np.asarray(obs.pop("image"), np.float32).reshape(-1)
        return obs
