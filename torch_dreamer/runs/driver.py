"""Steps a gymnasium vector env with a policy and assembles episodes in the official format."""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np


def action_spec(space: gym.Space) -> tuple[int, bool]:
    """(action size, discrete) of one env's action space; discrete actions are one-hot vectors."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n), True
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return int(space.shape[0]), False
    raise ValueError(f"unsupported action space {space}")


def obs_spec(space: gym.spaces.Dict) -> dict:
    """{key: (shape, dtype)} of one env's observation dict."""
    return {key: (tuple(sub.shape), np.dtype(sub.dtype)) for key, sub in space.spaces.items()}


class RandomPolicy:
    """Uniform actions: random one-hots for discrete spaces, uniform in [-1, 1] otherwise."""

    def __init__(self, act_dim: int, discrete: bool, seed: int | None = None):
        self.act_dim, self.discrete = act_dim, discrete
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: dict, state=None):
        batch = len(obs["is_first"])
        if self.discrete:
            return np.eye(self.act_dim, dtype=np.float32)[self.rng.integers(0, self.act_dim, batch)], None
        return self.rng.uniform(-1, 1, (batch, self.act_dim)).astype(np.float32), None


class Driver:
    """Runs `policy(obs, state) -> (actions (N, A) numpy, state)` in N envs.

    The vector env must autoreset in SAME_STEP mode, so an episode's first observation
    arrives with the previous episode's last step and no policy call is wasted on a reset.
    Callbacks: on_step(transition, worker) for every env step, on_episode(episode, worker)
    with the finished episode as {key: (T + 1, ...)} arrays.
    """

    def __init__(self, envs: gym.vector.VectorEnv, seed: int | None = None):
        self.envs, self.seed = envs, seed
        self.num_envs = envs.num_envs
        self.act_dim, self.discrete = action_spec(envs.single_action_space)
        self.on_step: list[Callable] = []
        self.on_episode: list[Callable] = []
        self._obs = None
        self._episodes: list[list[dict]] = [[] for _ in range(self.num_envs)]
        self._state = None
        self._seeded = False

    def reset(self) -> None:
        # Seed only the first reset: later resets continue the envs' own streams.
        obs, _ = self.envs.reset(seed=self.seed if not self._seeded else None)
        self._seeded = True
        self._obs, self._state = obs, None
        for i in range(self.num_envs):
            self._begin(i, _index(obs, i))

    def _begin(self, worker: int, obs: dict) -> None:
        first = {**obs, "action": np.zeros(self.act_dim, np.float32), "reward": np.float32(0.0),
                 "is_first": True, "is_last": False, "is_terminal": False}
        self._episodes[worker] = [first]

    def __call__(self, policy, steps: int = 0, episodes: int = 0) -> tuple[int, int]:
        """Runs until at least `steps` env steps and `episodes` finished episodes; returns both counts."""
        if self._obs is None:
            self.reset()
        step = episode = 0
        while step < steps or episode < episodes:
            is_first = np.array([len(ep) == 1 for ep in self._episodes])
            actions, self._state = policy({**self._obs, "is_first": is_first}, self._state)
            actions = np.asarray(actions, np.float32)
            env_actions = actions.argmax(-1) if self.discrete else actions
            obs, reward, terminated, truncated, info = self.envs.step(env_actions)
            for i in range(self.num_envs):
                done = bool(terminated[i] or truncated[i])
                last_obs = info["final_obs"][i] if done else _index(obs, i)
                transition = {**last_obs, "action": actions[i], "reward": np.float32(reward[i]),
                              "is_first": False, "is_last": done, "is_terminal": bool(terminated[i])}
                self._episodes[i].append(transition)
                step += 1
                for fn in self.on_step:
                    fn(transition, i)
                if done:
                    self._finish(i)
                    episode += 1
                    self._begin(i, _index(obs, i))
            self._obs = obs
        return step, episode

    def _finish(self, worker: int) -> None:
        episode = {key: np.stack([t[key] for t in self._episodes[worker]]) for key in self._episodes[worker][0]}
        for fn in self.on_episode:
            fn(episode, worker)

    def flush(self) -> None:
        """Ends every ongoing episode as truncated (on interrupt), so its steps are kept."""
        for i, steps in enumerate(self._episodes):
            if len(steps) > 1:
                steps[-1] = {**steps[-1], "is_last": True}
                self._finish(i)
        self._obs = None

    def close(self) -> None:
        self.envs.close()


def _index(obs: dict, i: int) -> dict:
    return {key: value[i] for key, value in obs.items()}
