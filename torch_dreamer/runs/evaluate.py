"""Evaluation of a trained agent from its logdir (`dreamer eval`, `api.evaluate`), and `EnvPolicy`, which
acts in a raw gymnasium env with a trained agent."""

from __future__ import annotations

import json
import pathlib

import gymnasium as gym
import numpy as np
import torch

from torch_dreamer.agent.agent import Agent
from torch_dreamer.config import Config
from torch_dreamer.errors import UserError
from torch_dreamer.runs import setup
from torch_dreamer.runs.checkpoint import load_run_checkpoint
from torch_dreamer.runs.driver import Driver, run_episodes
from torch_dreamer.runs.spaces import Spaces

ENV_RECORD = "env.json"  # written by api.train: the gymnasium spec of the env the run was trained on
FROM_PYTHON = "evaluate it from Python instead: torch_dreamer.api.evaluate(env, logdir)"


def _checkpoint(logdir) -> dict:
    path = pathlib.Path(logdir).expanduser() / "checkpoint.pt"
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; train first with `dreamer train --logdir {logdir} ...`")
    return load_run_checkpoint(path)  # NaN weights and foreign torch files are one-line errors


def load_run(logdir, device: str = "auto") -> tuple[Agent, Config, Spaces]:
    """(agent in eval mode, config, spaces) of the latest checkpoint in `logdir`, read once."""
    payload = _checkpoint(logdir)
    config = Config(payload["config"])
    spaces = Spaces.from_dict(payload["spaces"])
    agent = Agent(config, spaces.obs, spaces.act_dim, spaces.discrete)
    agent.load_state_dict(payload["agent"])
    return agent.to(setup.resolve_device(device)).eval(), config, spaces


def load_agent(logdir, device: str = "auto") -> Agent:
    """The agent of the latest checkpoint in `logdir`, in eval mode; act with `EnvPolicy(agent, env)`."""
    return load_run(logdir, device)[0]


def load_config(logdir) -> Config:
    return Config(_checkpoint(logdir)["config"])


# ----------------------------------------------------------------------------- which env to evaluate on


def record_env(env: gym.Env, logdir) -> None:
    """Notes in `logdir/env.json` how to rebuild `env` (its gymnasium spec), so `dreamer eval` can."""
    spec = getattr(env, "spec", None)
    record = {"id": getattr(spec, "id", None), "class": f"{type(env.unwrapped).__module__}:"
              f"{type(env.unwrapped).__qualname__}", "spec": None}
    if spec is not None:
        try:
            record["spec"] = spec.to_json()
        except Exception:  # kwargs that are not JSON: the id alone is not enough to rebuild it faithfully
            pass
    path = pathlib.Path(str(logdir)).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    (path / ENV_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def rebuild_env(logdir) -> gym.Env | None:
    """The env recorded by `record_env`, rebuilt; None when the run has no record (a `dreamer train` run).

    Wrappers that do not record their arguments (most third-party ones, e.g. MiniGrid's image wrappers) are
    rebuilt with their defaults, with a note.
    """
    path = pathlib.Path(str(logdir)).expanduser() / ENV_RECORD
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    name = record.get("id") or record.get("class")
    if not record.get("spec"):
        raise UserError(f"this run was trained through the Python API on {name}, which dreamer eval cannot "
                        f"rebuild (not a registered gymnasium env); {FROM_PYTHON}")
    import dataclasses

    from gymnasium.envs.registration import EnvSpec, load_env_creator

    try:
        spec = EnvSpec.from_json(record["spec"])
        env = gym.make(dataclasses.replace(spec, additional_wrappers=()))
        for wrapper in spec.additional_wrappers:
            if wrapper.kwargs is None:
                print(f"note: rebuilt {wrapper.name} with its default arguments (it does not record them)")
            env = load_env_creator(wrapper.entry_point)(env, **(wrapper.kwargs or {}))
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise UserError(f"cannot rebuild {name}, the env this run was trained on ({reason}); {FROM_PYTHON}") from None
    return env


def vector_env(env: gym.Env, config, seed: int | None = None) -> gym.vector.VectorEnv:
    """One user env with the official wrappers (as `api.train` wraps it) as a SAME_STEP vector env."""
    from torch_dreamer.envs import wrap_env
    from torch_dreamer.envs.wrappers import SeedOnFirstReset

    wrapped = wrap_env(env, config)
    wrapped = SeedOnFirstReset(wrapped, seed) if seed is not None else wrapped
    return gym.vector.SyncVectorEnv([lambda: wrapped], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def make_eval_envs(logdir, config, seed: int, num_envs: int = 1) -> gym.vector.VectorEnv:
    """The env the run in `logdir` was trained on: rebuilt from `env.json` (Python API runs), else `config.task`."""
    env = rebuild_env(logdir)
    if env is not None:
        return vector_env(env, config, seed)
    from torch_dreamer.envs import make_vector_env

    try:
        return make_vector_env(config, "eval", num_envs, seed)
    except UserError as error:
        raise UserError(f"{error} (task '{config.task}' from the run's config; if the run was trained through "
                        f"the Python API, {FROM_PYTHON})") from None


def check_spaces(spaces: Spaces, envs: gym.vector.VectorEnv, what: str) -> None:
    """One-line error, before any episode runs, when `envs` cannot feed the model in the checkpoint."""
    try:
        env_spaces = Spaces.from_vector_env(envs)
    except UserError as error:
        raise UserError(f"{what}: {error}") from None
    try:
        spaces.check_matches(env_spaces, what)
    except UserError as error:
        raise UserError(f"{error}; evaluate on the env the run was trained on") from None


def check_video_path(video) -> pathlib.Path | None:
    """Fails fast, before any episode runs, when `video` cannot be written: .gif always works, other
    formats (.mp4, ...) need the ffmpeg plugin (`pip install imageio-ffmpeg`, in torch_dreamer[video])."""
    if not video:
        return None
    path = pathlib.Path(str(video)).expanduser()
    if path.suffix.lower() != ".gif":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise UserError(f"writing {path.suffix or 'extension-less'} video {path} needs imageio-ffmpeg: "
                            "pip install imageio-ffmpeg (or 'torch_dreamer[video]'), or use a .gif path") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write video {path}: {error.strerror}") from None
    return path


# ----------------------------------------------------------------------------- evaluation


def evaluate(envs: gym.vector.VectorEnv, agent: Agent, episodes: int = 1, video: str | None = None,
             mode: str = "eval", seed: int | None = None) -> dict:
    """Runs `episodes` complete episodes with the agent's `mode` policy; returns mean, std and all returns.

    With several envs each contributes a share fixed in advance (`run_episodes`), so short episodes are not
    favoured. `seed` seeds the envs and torch/numpy (the posterior is sampled), so a seeded evaluation
    repeats exactly on the same machine. The video is the first counted episode of the first env.
    """
    path = check_video_path(video)
    if seed is not None:
        setup.seed_everything(int(seed))
    driver = Driver(envs, seed=seed)

    def act(obs, state):
        action, state = agent.policy(obs, state, mode)
        return action.cpu().numpy(), state

    try:
        counted = run_episodes(driver, act, episodes)
    finally:
        driver.close()
    returns = [float(episode["reward"].astype(np.float64).sum()) for episode in counted]
    if path is not None and counted and "image" in counted[0]:
        _write_video(path, np.asarray(counted[0]["image"]))
    return {"mean": float(np.mean(returns)), "std": float(np.std(returns)), "returns": returns}


def evaluate_logdir(logdir, episodes: int = 1, video: str | None = None, device: str = "auto",
                    mode: str = "eval", seed: int | None = None) -> tuple[dict, Config]:
    """`dreamer eval`: the checkpoint in `logdir` on the env it was trained on; returns (result, config),
    the result with the env's name under `env`."""
    check_video_path(video)
    agent, config, spaces = load_run(logdir, device)
    seed = int(config.seed) + 20_000 if seed is None else int(seed)
    envs, name = make_eval_envs(logdir, config, seed), _env_name(logdir, config)
    try:
        check_spaces(spaces, envs, f"the env of this run ({name})")
    except UserError as error:
        envs.close()
        if (pathlib.Path(str(logdir)).expanduser() / ENV_RECORD).exists():
            raise
        raise UserError(f"{error}; if the run was trained through the Python API, {FROM_PYTHON}") from None
    return {**evaluate(envs, agent, episodes, video, mode, seed), "env": name}, config


def _env_name(logdir, config) -> str:
    path = pathlib.Path(str(logdir)).expanduser() / ENV_RECORD
    if path.exists():
        record = json.loads(path.read_text())
        return record.get("id") or record.get("class") or "recorded env"
    return str(config.task)


def _write_video(path: pathlib.Path, frames: np.ndarray) -> None:
    import imageio.v3 as iio

    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, -1)
    try:
        iio.imwrite(path, frames, duration=50, loop=0) if path.suffix.lower() == ".gif" else iio.imwrite(path, frames, fps=20)
    except Exception as error:  # imageio names the missing plugin; keep it to one line
        raise UserError(f"cannot write video {path}: {str(error).splitlines()[0]}; use a .gif path "
                        "or pip install imageio-ffmpeg for .mp4") from None


# ----------------------------------------------------------------------------- acting in a raw env


class EnvPolicy:
    """Acts in a raw gymnasium env with a trained agent: raw observation in, env action out.

        agent = dv2.load_agent(logdir)
        policy = EnvPolicy(agent, env)            # env: the raw env (or one like it), unwrapped
        obs, _ = env.reset()
        policy.reset()
        while True:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            if terminated or truncated:
                break

    Observations are converted as training converted them (`wrap_env`: image resize, uint8 with floats in
    [0, 1] scaled by 255, channel-first images transposed, dict keys), one observation or a batch (leading
    axis) of them. The policy keeps its own recurrent state and marks the first call after `reset()` as an
    episode start (`reset(index)` for some rows of a batch, e.g. when a vector env restarts them). Actions
    come back in the env's space: an int for Discrete (an int array for a batch), or values rescaled to the
    Box bounds. Without `env`, give observations in the agent's own keys and shapes (e.g. a wrapped env's).

    Args:
        agent: a trained agent (`load_agent(logdir)`).
        env: the env to act in (a vector env too), or one with the same spaces; or give `observation_space`
            / `action_space`.
        mode: `eval` (the mode of the policy, default), `train` (samples) or `explore`.
        action_repeat: env steps each decision lasts; default the run's `action_repeat`, which `wrap_env`
            applied in training. Pass 1 for an env that repeats actions itself (e.g. ALE's frameskip).
    """

    def __init__(self, agent: Agent, env: gym.Env | None = None, mode: str = "eval", *,
                 observation_space: gym.Space | None = None, action_space: gym.Space | None = None,
                 action_repeat: int | None = None):
        if mode not in ("eval", "train", "explore"):
            raise UserError(f"mode must be eval, train or explore, not '{mode}'")
        self.agent, self.mode = agent, mode
        if isinstance(env, gym.vector.VectorEnv):  # a vector env: one env's spaces, batched observations
            observation_space = observation_space or env.single_observation_space
            action_space = action_space or env.single_action_space
        self.observation_space = observation_space or (env.observation_space if env is not None else None)
        self.action_space = action_space or (env.action_space if env is not None else None)
        self.action_repeat = max(1, int(agent.config.action_repeat if action_repeat is None else action_repeat))
        self._converters = None
        if self.observation_space is not None:
            from torch_dreamer.envs.wrappers import build_converters

            self._converters = build_converters(self.observation_space, tuple(agent.config.render_size))
            converted = {c.key: (tuple(c.space.shape), np.dtype(c.space.dtype)) for c in self._converters.values()}
            for key, (shape, _) in agent.obs_space.items():
                if not key.startswith("log_") and key in converted and converted[key][0] != tuple(shape):
                    raise UserError(f"the env gives observation '{key}' of shape {converted[key][0]}, but the "
                                    f"agent expects {tuple(shape)}")
        if self.action_space is not None:
            _check_action_space(self.action_space, agent)
        self.reset()

    def reset(self, index=None) -> None:
        """Starts new episodes: all rows (default), or the rows in `index` of a batch."""
        if index is None:
            self._state, self._first, self._calls, self._action = None, None, 0, None
        else:
            if self._first is None:
                return  # every row starts fresh anyway
            self._first[np.asarray(index, dtype=np.int64).reshape(-1)] = True

    def __call__(self, observation):
        obs, batched = self._prepare(observation)
        size = len(next(iter(obs.values())))
        if self._calls % self.action_repeat == 0 or self._action is None or len(self._action) != size:
            if self._first is None or len(self._first) != size:
                self._first, self._state = np.ones(size, bool), None
            tensors = {k: torch.as_tensor(v, device=self.agent.device) for k, v in obs.items()}
            tensors["is_first"] = torch.as_tensor(self._first, device=self.agent.device)
            action, self._state = self.agent.policy(tensors, self._state, self.mode)
            self._action = action.float().cpu().numpy()
            self._first = np.zeros(size, bool)
        self._calls += 1
        actions = [self._env_action(row) for row in self._action]
        if batched:
            return np.stack([np.asarray(a) for a in actions])
        return actions[0]

    # ----- observations

    def _prepare(self, observation) -> tuple[dict, bool]:
        """{key: (B, ...) array} in the agent's keys and dtypes, and whether the input was a batch."""
        if self._converters is not None:
            from torch_dreamer.envs.wrappers import convert_observation

            batched = self._batched_raw(observation)
            rows = _unbatch(observation, batched)
            converted = [convert_observation(self._converters, row) for row in rows]
            obs = {key: np.stack([row[key] for row in converted]) for key in converted[0]}
            return self._select(obs), batched
        return self._contract(observation)

    def _batched_raw(self, observation) -> bool:
        space = self.observation_space
        if isinstance(space, gym.spaces.Dict):
            key = next(k for k in self._converters)
            return np.ndim(observation[key]) > len(space[key].shape)
        return np.ndim(observation) > len(space.shape or ())

    def _select(self, obs: dict) -> dict:
        missing = [k for k in self.agent.obs_space if k not in obs and not k.startswith("log_")
                   and len(self.agent.obs_space[k][0]) > 0]
        if missing:
            raise UserError(f"the observation lacks {', '.join(missing)}, which the agent was trained on")
        return {k: v for k, v in obs.items() if k in self.agent.obs_space}

    def _contract(self, observation) -> tuple[dict, bool]:
        """Observations already in the agent's keys (a wrapped env's), or a bare array for a one-key agent."""
        keys = [k for k, (shape, _) in self.agent.obs_space.items() if not k.startswith("log_") and len(shape)]
        if not isinstance(observation, dict):
            if len(keys) != 1:
                raise UserError(f"the agent reads {', '.join(keys)}: pass a dict, or EnvPolicy(agent, env) "
                                "to convert the env's observations")
            observation = {keys[0]: observation}
        obs, batched = {}, None
        for key in keys:
            if key not in observation:
                raise UserError(f"the observation lacks '{key}'; pass EnvPolicy(agent, env) to convert raw "
                                "env observations as training did")
            shape, dtype = self.agent.obs_space[key]
            value = np.asarray(observation[key])
            if batched is None:
                batched = value.ndim > len(shape)
            value = value if batched else value[None]
            obs[key] = _as_contract(key, value, tuple(shape), np.dtype(dtype))
        return obs, bool(batched)

    # ----- actions

    def _env_action(self, action: np.ndarray):
        space = self.action_space
        if self.agent.discrete:
            index = int(np.argmax(action))
            return index + int(space.start) if isinstance(space, gym.spaces.Discrete) else index
        if space is None:
            return action.astype(np.float32)
        low = np.asarray(space.low, np.float64).reshape(-1)
        high = np.asarray(space.high, np.float64).reshape(-1)
        finite = np.isfinite(low) & np.isfinite(high)
        # As in training (RescaleAction / NormalizeAction): [-1, 1] to [low, high]; unbounded dims pass through.
        low, high = np.where(finite, low, -1.0), np.where(finite, high, 1.0)
        scaled = np.where(finite, low + (action + 1.0) / 2.0 * (high - low), action)
        return scaled.reshape(space.shape).astype(space.dtype)


def _check_action_space(space: gym.Space, agent: Agent) -> None:
    if isinstance(space, gym.spaces.Discrete):
        ok, kind = agent.discrete and int(space.n) == agent.act_dim, f"Discrete({space.n})"
    elif isinstance(space, gym.spaces.Box):
        ok, kind = not agent.discrete and int(np.prod(space.shape)) == agent.act_dim, f"Box of shape {space.shape}"
    else:
        ok, kind = False, type(space).__name__
    if not ok:
        have = f"{'discrete' if agent.discrete else 'continuous'} actions of size {agent.act_dim}"
        raise UserError(f"the env's action space is {kind}, but the agent was trained for {have}")


def _unbatch(observation, batched: bool) -> list:
    if not batched:
        return [observation]
    if isinstance(observation, dict):
        size = len(next(iter(observation.values())))
        return [{k: v[i] for k, v in observation.items()} for i in range(size)]
    return list(observation)


def _as_contract(key: str, value: np.ndarray, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A (B, ...) batch in the agent's shape and dtype: images to uint8 (floats in [0, 1] scaled), CHW to HWC."""
    if len(shape) == 3 and value.shape[1:] != shape and value.shape[1:] == (shape[2], shape[0], shape[1]):
        value = np.moveaxis(value, 1, -1)
    if value.shape[1:] != shape:
        raise UserError(f"observation '{key}' has shape {value.shape[1:]}, but the agent expects {shape}; "
                        "pass EnvPolicy(agent, env) to convert raw env observations as training did")
    if dtype == np.uint8 and value.dtype != np.uint8:
        value = value.astype(np.float64)
        if value.size and value.max() <= 1.0:
            value = value * 255.0
        value = np.clip(np.round(value), 0, 255).astype(np.uint8)
    return value.astype(dtype, copy=False)
