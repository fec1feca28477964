"""MiniGrid and BabyAI envs (`minigrid_<EnvId>`) with three views (`minigrid_view`).

- partial: the egocentric 7x7 view as RGB (RGBImgPartialObsWrapper, tile 8), as in the
  official MiniGrid example and Continual-Dreamer.
- full: the whole grid as RGB, zero-padded to a square before resizing so that
  non-square grids (Unlock is 11x6) keep their aspect ratio; known ports assumed squares.
- symbolic: MiniGrid's own (object, colour, state) encoding of the egocentric view;
  an `image` of raw codes when the encoder or decoder reads `image`, else a `vector`.

The text `mission` is dropped; `direction` stays as a logged scalar. MiniGrid envs end
episodes at their own `max_steps` by truncation, which passes through unchanged.

With `--probes` set, every MiniGrid env also emits the probe targets (`ProbeTargets`): `probe_map`, the
whole grid in MiniGrid's own (object, colour, state) codes padded to a square, and `probe_goal`, the
direction to the nearest goal in the agent's frame. The world model never encodes `probe_*` keys.
"""

from __future__ import annotations

import difflib

import gymnasium
import numpy as np
from gymnasium import spaces

from torch_dreamer.envs import fourrooms
from torch_dreamer.envs.wrappers import wants_image
from torch_dreamer.errors import UserError, missing_extra

VIEWS = ("partial", "full", "symbolic")


def _import_minigrid():
    try:
        import minigrid
        import minigrid.wrappers
        from torch_dreamer.envs import multiskill

        multiskill.register()  # MiniGrid-MultiSkill-N{2,3,4}-v0, Continual-Dreamer's --eval_skills env
    except ImportError:
        raise missing_extra("minigrid", "minigrid") from None
    return minigrid


def registered_ids() -> list[str]:
    _import_minigrid()  # registers the MiniGrid-* and BabyAI-* ids
    return sorted(k for k in gymnasium.registry if k.startswith(("MiniGrid-", "BabyAI-")))


def make_minigrid(env_id: str, config, seed: int) -> gymnasium.Env:
    minigrid = _import_minigrid()
    ids = registered_ids()
    if fourrooms.is_interference(env_id):
        pass  # built below: a FourRooms layout fixed by the seed in its name
    elif env_id not in ids:
        close = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('minigrid_' + c for c in close)}?" if close else ""
        raise UserError(f"unknown MiniGrid env '{env_id}'{hint}")
    view = config.minigrid_view
    if view not in VIEWS:
        raise UserError(f"minigrid_view must be one of {', '.join(VIEWS)}, got '{view}'")
    env = fourrooms.make_interference(env_id) if fourrooms.is_interference(env_id) else gymnasium.make(env_id)
    if view == "partial":
        env = minigrid.wrappers.RGBImgPartialObsWrapper(env, tile_size=8)
    elif view == "full":
        env = PadSquare(minigrid.wrappers.RGBImgObsWrapper(env, tile_size=8))
    elif not wants_image(config):
        env = SymbolicVector(env)
    if _option(config, "probes", []):
        env = ProbeTargets(env)
    return DropMission(env)


def _option(config, key: str, default):
    try:
        return config[key]
    except KeyError:
        return default


class ProbeTargets(gymnasium.ObservationWrapper):
    """Adds the targets of the `map` and `goal` probes to every observation (any MiniGrid or BabyAI env).

    - `probe_map` float32 (side * side * 3,): `grid.encode()` (MiniGrid's OBJECT_TO_IDX, COLOR_TO_IDX and
      door states, whatever they hold), rows = y, with the agent's cell set to (agent, red, direction) as
      MiniGrid's FullyObsWrapper does, zero-padded ("unseen") to side = max(width, height).
    - `probe_goal` float32 (3,): (forward, right, present) offsets to the nearest `goal` cell in the agent's
      frame, in grid sides; zeros when the env has no goal object.
    """

    def __init__(self, env):
        super().__init__(env)
        from minigrid.core.constants import COLOR_TO_IDX, DIR_TO_VEC, OBJECT_TO_IDX

        self._agent, self._red, self._goal = OBJECT_TO_IDX["agent"], COLOR_TO_IDX["red"], OBJECT_TO_IDX["goal"]
        self._dirs = np.array(DIR_TO_VEC)
        base = env.unwrapped
        self.side = max(int(base.width), int(base.height))
        high = float(max(len(OBJECT_TO_IDX), len(COLOR_TO_IDX), 4))
        self.observation_space = spaces.Dict({
            **env.observation_space.spaces,
            "probe_map": spaces.Box(0, high, (self.side * self.side * 3,), np.float32),
            "probe_goal": spaces.Box(-1, 1, (3,), np.float32),
        })

    def grid_codes(self) -> np.ndarray:
        """(side, side, 3) int codes, rows = y, the agent drawn in."""
        base = self.env.unwrapped
        grid = base.grid.encode().transpose(1, 0, 2)                            # (height, width, 3)
        codes = np.zeros((self.side, self.side, 3), np.int64)
        codes[: grid.shape[0], : grid.shape[1]] = grid
        x, y = base.agent_pos
        codes[y, x] = (self._agent, self._red, base.agent_dir)
        return codes

    def goal_direction(self, codes: np.ndarray) -> np.ndarray:
        cells = np.argwhere(codes[..., 0] == self._goal)                        # (n, 2) as (y, x)
        if not len(cells):
            return np.zeros(3, np.float32)
        base = self.env.unwrapped
        agent = np.array(base.agent_pos)
        offsets = cells[:, ::-1] - agent                                        # (x, y)
        nearest = offsets[np.abs(offsets).sum(1).argmin()]
        forward = self._dirs[base.agent_dir]
        right = np.array([-forward[1], forward[0]])                             # MiniGrid's right_vec
        return np.array([nearest @ forward / self.side, nearest @ right / self.side, 1.0], np.float32)

    def observation(self, obs):
        codes = self.grid_codes()
        return {**obs, "probe_map": codes.reshape(-1).astype(np.float32), "probe_goal": self.goal_direction(codes)}


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
