"""Crafter as a gymnasium env, with the official DreamerV2 log keys.

Besides `image`, each step carries `log_reward` (the true reward, also with
`crafter_noreward`) and `log_achievement_<name>` (how often the achievement was unlocked
in this episode); the `crafter` config logs their sum and max per episode.
"""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces

from torch_dreamer.errors import UserError, missing_extra


def _import_crafter():
    try:
        import crafter
    except ImportError:
        raise missing_extra("crafter", "crafter") from None
    return crafter


def make_crafter(name: str, config, seed: int) -> gymnasium.Env:
    if name not in ("reward", "noreward"):
        raise UserError(f"unknown Crafter task 'crafter_{name}'; use crafter_reward or crafter_noreward")
    if config.action_repeat != 1:
        # As in the official train.py: Crafter's benchmark protocol has no action repeat.
        raise UserError(f"Crafter requires action_repeat 1, got {config.action_repeat}")
    size = tuple(int(s) for s in config.render_size)
    return CrafterEnv(reward=name == "reward", size=size, seed=seed)


class CrafterEnv(gymnasium.Env):
    """Adapts crafter's gym-0.x style API (4-tuple step, own spaces) to gymnasium."""

    metadata = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def __init__(self, reward: bool = True, size=(64, 64), seed: int = 0):
        crafter = _import_crafter()
        self._reward, self._size = reward, tuple(size)
        self._achievements = list(crafter.constants.achievements)
        self._env = self._new_env(seed)
        self._last_image = None
        image = spaces.Box(0, 255, (*self._size, 3), np.uint8)
        scalar = spaces.Box(-np.inf, np.inf, (), np.float32)
        entries = {"image": image, "log_reward": scalar}
        entries.update({f"log_achievement_{name}": scalar for name in self._achievements})
        self.observation_space = spaces.Dict(entries)
        self.action_space = spaces.Discrete(int(self._env.action_space.n))

    def _new_env(self, seed):
        crafter = _import_crafter()
        # Crafter's size is (width, height); render_size is (height, width).
        return crafter.Env(size=(self._size[1], self._size[0]), reward=self._reward, seed=seed)

    def _obs(self, image, log_reward, achievements) -> dict:
        self._last_image = image
        obs = {"image": image, "log_reward": np.float32(log_reward)}
        for name in self._achievements:
            obs[f"log_achievement_{name}"] = np.float32(achievements.get(name, 0))
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            # Crafter seeds its worlds from the constructor seed and an episode counter only.
            self._env = self._new_env(seed)
        image = self._env.reset()
        return self._obs(image, 0.0, {}), {}

    def step(self, action):
        image, reward, done, info = self._env.step(int(action))
        # Crafter ends an episode by death (discount 0) or by its length limit (truncation).
        terminated = bool(done and info["discount"] == 0)
        truncated = bool(done and not terminated)
        obs = self._obs(image, info["reward"], info["achievements"])
        return obs, float(reward), terminated, truncated, {"discount": float(info["discount"])}

    def render(self):
        return self._last_image
