"""What the agent is built from: observation and action spaces, without needing an env object.

A learner fed by actors in other processes (or by a fixed dataset) never holds an env, so the spaces
come from one of three sources, in this order of trust:
- the checkpoint of a resumed run (what the weights were built for);
- an env, when this process steps one (the single-process loop, actors, evaluation);
- the episode files themselves: observation keys, shapes and dtypes from the arrays, the action size
  from ``action``'s width and its kind (one-hot rows = discrete) from the values, unless
  ``action_kind`` says it outright.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np

from torch_dreamer.errors import UserError

# Episode keys that are not observations (the official files also carry `discount`).
STEP_KEYS = ("action", "reward", "discount", "is_first", "is_last", "is_terminal")


@dataclasses.dataclass(frozen=True)
class Spaces:
    """obs: {key: (shape, numpy dtype)} of one step; act_dim: action size (one-hot size if discrete)."""

    obs: dict
    act_dim: int
    discrete: bool

    @classmethod
    def from_env(cls, observation_space: gym.spaces.Dict, action_space: gym.Space) -> Spaces:
        if isinstance(action_space, gym.spaces.Discrete):
            act_dim, discrete = int(action_space.n), True
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            act_dim, discrete = int(action_space.shape[0]), False
        else:
            raise UserError(f"unsupported action space {action_space}; use Discrete or a 1-D Box")
        obs = {key: (tuple(sub.shape), np.dtype(sub.dtype)) for key, sub in observation_space.spaces.items()}
        return cls(obs, act_dim, discrete)

    @classmethod
    def from_vector_env(cls, envs: gym.vector.VectorEnv) -> Spaces:
        return cls.from_env(envs.single_observation_space, envs.single_action_space)

    @classmethod
    def from_episode(cls, episode: dict, action_kind: str = "auto") -> Spaces:
        """Spaces of the run that wrote ``episode`` ({key: (T + 1, ...)} arrays)."""
        obs = {key: (tuple(value.shape[1:]), np.dtype(value.dtype))
               for key, value in episode.items() if key not in STEP_KEYS}
        if not obs:
            raise UserError("the episode files hold no observation keys besides action/reward/flags")
        action = np.asarray(episode["action"])
        if action.ndim != 2:
            raise UserError(f"episode actions must be (T + 1, A) arrays, got shape {action.shape}")
        if action_kind not in ("auto", "discrete", "continuous"):
            raise UserError(f"action_kind must be auto, discrete or continuous, not '{action_kind}'")
        discrete = looks_one_hot(action) if action_kind == "auto" else action_kind == "discrete"
        return cls(obs, int(action.shape[1]), discrete)

    def to_dict(self) -> dict:
        """Plain containers, storable in a weights_only checkpoint."""
        return {"obs": {k: [list(shape), str(dtype)] for k, (shape, dtype) in self.obs.items()},
                "act_dim": self.act_dim, "discrete": self.discrete}

    @classmethod
    def from_dict(cls, data: dict) -> Spaces:
        obs = {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in data["obs"].items()}
        return cls(obs, int(data["act_dim"]), bool(data["discrete"]))

    def check_matches(self, other: Spaces, what: str) -> None:
        """One-line error when ``other`` (e.g. an env's spaces) cannot feed a model built for ``self``."""
        if (self.act_dim, self.discrete) != (other.act_dim, other.discrete):
            kind = lambda s: f"{'discrete' if s.discrete else 'continuous'} actions of size {s.act_dim}"
            raise UserError(f"{what} has {kind(other)}, but the model was built for {kind(self)}")
        for key, (shape, _) in self.obs.items():
            if key.startswith("log_"):
                continue
            if key not in other.obs or tuple(other.obs[key][0]) != tuple(shape):
                got = other.obs[key][0] if key in other.obs else "nothing"
                raise UserError(f"{what} gives observation '{key}' of shape {got}, but the model expects {shape}")


def looks_one_hot(action: np.ndarray) -> bool:
    """Every row is all zeros (the reset step) or exactly one 1 and zeros: the acting of a discrete agent."""
    binary = np.isin(action, (0.0, 1.0)).all()
    return bool(binary and (action.sum(-1) <= 1).all() and action.shape[0] > 1 and action[1:].sum() > 0)
