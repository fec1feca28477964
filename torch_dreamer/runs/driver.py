"""Steps a gymnasium vector env with a policy and assembles episodes in the official format."""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import gymnasium as gym
import numpy as np

from torch_dreamer.errors import UserError
from torch_dreamer.tools.files import deferred_interrupts


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


class EnvError(UserError):
    """An env misbehaved (raised, returned NaN/inf or a wrong shape, never ended); names the env and the call."""


NONFINITE_MODES = ("error", "drop")


class Driver:
    """Runs `policy(obs, state) -> (actions (N, A) numpy, state)` in N envs.

    The vector env must autoreset in SAME_STEP mode, so an episode's first observation
    arrives with the previous episode's last step and no policy call is wasted on a reset.
    Callbacks: on_step(transition, worker) for every env step, on_episode(episode, worker)
    with the finished episode as {key: (T + 1, ...)} arrays.

    The env boundary is checked here, so nothing an env does wrong reaches the replay or the model:
    an exception in `step`/`reset` becomes an `EnvError` naming the env (`name`) and the call; a NaN or
    inf in an observation or reward raises an `EnvError` naming the key and the step (`nonfinite="error"`)
    or drops that episode with a warning (`"drop"`: no step of it is written or passed to on_step);
    an episode running `max_episode_steps` steps (0 = no bound) raises an `EnvError`. The unfinished
    episodes stay in the driver, so the caller can `flush()` them (as truncated) before reporting.
    """

    def __init__(self, envs: gym.vector.VectorEnv, seed: int | None = None, name: str = "env",
                 nonfinite: str = "error", max_episode_steps: int = 0):
        if nonfinite not in NONFINITE_MODES:
            raise UserError(f"nonfinite_env must be one of {', '.join(NONFINITE_MODES)}, not '{nonfinite}'")
        self.envs, self.seed, self.name = envs, seed, name
        self.nonfinite, self.max_episode_steps = nonfinite, int(max_episode_steps)
        self.num_envs = envs.num_envs
        self.act_dim, self.discrete = action_spec(envs.single_action_space)
        self.obs_spec = obs_spec(envs.single_observation_space)
        _check_in_process_envs(envs, name, self.obs_spec)
        self.on_step: list[Callable] = []
        self.on_episode: list[Callable] = []
        self.dropped = 0  # episodes dropped for non-finite values
        self._obs = None
        self._episodes: list[list[dict]] = [[] for _ in range(self.num_envs)]
        self._dropping = [False] * self.num_envs
        self._state = None
        self._seeded = False

    def reset(self) -> None:
        # Seed only the first reset: later resets continue the envs' own streams.
        obs, _ = self._call("reset", self.envs.reset, seed=self.seed if not self._seeded else None)
        self._seeded = True
        self._obs, self._state = obs, None
        for i in range(self.num_envs):
            self._begin(i, _index(obs, i))

    def _begin(self, worker: int, obs: dict) -> None:
        first = {**obs, "action": np.zeros(self.act_dim, np.float32), "reward": np.float32(0.0),
                 "is_first": True, "is_last": False, "is_terminal": False}
        self._episodes[worker] = [first]
        self._dropping[worker] = False
        bad = self._nonfinite_key(obs)
        if bad:
            self._nonfinite(worker, bad, "reset")

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
            obs, reward, terminated, truncated, info = self._call("step", self.envs.step, env_actions)
            for i in range(self.num_envs):
                done = bool(terminated[i] or truncated[i])
                last_obs = self._final_obs(info, i) if done else _index(obs, i)
                transition = {**last_obs, "action": actions[i], "reward": np.float32(reward[i]),
                              "is_first": False, "is_last": done, "is_terminal": bool(terminated[i])}
                bad = self._nonfinite_key(last_obs) or ("reward" if not np.isfinite(reward[i]) else None)
                if bad:
                    self._nonfinite(i, bad, f"step {len(self._episodes[i])}", transition)
                if not self._dropping[i]:
                    self._episodes[i].append(transition)
                    step += 1
                    for fn in self.on_step:
                        fn(transition, i)
                if done:
                    # Held interrupts: the episode is written and its buffer replaced together, so a
                    # Ctrl-C never writes it twice (here and in `flush`) nor loses it.
                    with deferred_interrupts():
                        if self._dropping[i]:
                            self.dropped += 1
                        else:
                            self._finish(i)
                            episode += 1
                        self._begin(i, _index(obs, i))
                elif self.max_episode_steps and len(self._episodes[i]) > self.max_episode_steps:
                    raise EnvError(f"env {self.name} ran {self.max_episode_steps} steps without ending an episode "
                                   f"(env copy {i}); give it a time limit with --time_limit N or raise "
                                   "--max_episode_steps (0 = no bound)")
            self._obs = obs
        return step, episode

    def _call(self, call: str, fn, *args, **kwargs):
        """`fn(*args)` on the vector env; its exceptions become one-line `EnvError`s naming env and call.

        Worker processes (AsyncVectorEnv) report a failure, Ctrl-C included (it reaches them too), as
        multi-line tracebacks through warnings before raising it here; those are held back, as the one
        line (or the interrupt) says what happened.
        """
        with _worker_reports(self.envs):
            try:
                return fn(*args, **kwargs)
            except (KeyboardInterrupt, UserError):
                raise
            except Exception as error:  # noqa: BLE001 - any env bug is reported in one line
                raise EnvError(f"env {self.name} raised in {call}(): {_reason(error)}") from error

    def _final_obs(self, info: dict, i: int) -> dict:
        """The last observation of env i's finished episode, checked against the observation space
        (the vector env does not check it: it is the env's own dict)."""
        final = info["final_obs"][i]
        out = {}
        for key, (shape, dtype) in self.obs_spec.items():
            if key not in final:
                raise EnvError(f"env {self.name} returned a last observation without '{key}'")
            value = np.asarray(final[key])
            if value.shape != shape:
                raise EnvError(f"env {self.name} returned observation '{key}' of shape {value.shape} "
                               f"at the end of an episode; its observation space says {shape}")
            out[key] = value.astype(dtype, copy=False)
        return out

    def _nonfinite_key(self, obs: dict) -> str | None:
        for key, value in obs.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                return key
        return None

    def _nonfinite(self, worker: int, key: str, where: str, transition: dict | None = None) -> None:
        """A NaN/inf in `key` of env copy `worker`: raise, or drop the rest of its episode with a warning."""
        if self._dropping[worker]:
            return
        value = (transition or self._episodes[worker][0])[key]
        what = "reward" if key == "reward" else f"observation '{key}'"
        if self.nonfinite == "error":
            raise EnvError(f"env {self.name} returned a non-finite {what} ({_first_bad(value)}) at {where} of an "
                           f"episode (env copy {worker}); fix the env, or pass --nonfinite_env drop to skip such episodes")
        warnings.warn(f"env {self.name} returned a non-finite {what} at {where} of an episode (env copy {worker}); "
                      "the episode is dropped (--nonfinite_env drop)", stacklevel=3)
        self._dropping[worker] = True
        self._episodes[worker] = []

    def _finish(self, worker: int) -> None:
        steps, self._episodes[worker] = self._episodes[worker], []
        episode = {key: np.stack([t[key] for t in steps]) for key in steps[0]}
        for fn in self.on_episode:
            fn(episode, worker)

    def flush(self) -> None:
        """Ends every ongoing episode as truncated (on interrupt or error), so its steps are kept."""
        with deferred_interrupts():
            for i, steps in enumerate(self._episodes):
                if len(steps) > 1 and not self._dropping[i]:
                    steps[-1] = {**steps[-1], "is_last": True}
                    self._finish(i)
                self._episodes[i] = []
            self._obs = None

    def close(self) -> None:
        """Closes the envs; worker processes already gone (Ctrl-C reaches them too) end without a traceback."""
        with _worker_reports(self.envs, keep=False):
            try:
                self.envs.close()
            except BaseException:  # noqa: BLE001 - BrokenPipeError, EOFError or a worker's KeyboardInterrupt
                try:
                    self.envs.close(terminate=True)
                except BaseException:  # noqa: BLE001
                    pass


class BoundaryCheck(gym.Wrapper):
    """Checks what one in-process env returns before the vector env stacks it (and loses the key in its
    error): the observation keys, shapes and dtypes against the observation space, and a numeric scalar
    reward. A mismatch is an `EnvError` naming the env, the call and the key. NaN/inf are the Driver's."""

    def __init__(self, env: gym.Env, name: str, spec: dict):
        super().__init__(env)
        self._name, self._spec = name, spec

    def reset(self, **kwargs):
        obs, info = self._call("reset", self.env.reset, **kwargs)
        self._check(obs, "reset")
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self._call("step", self.env.step, action)
        self._check(obs, "step")
        value = np.asarray(reward) if reward is not None else None
        if value is None or value.size != 1 or value.dtype.kind not in "biuf":
            got = "None" if value is None else f"{value.dtype} of shape {value.shape}"
            raise EnvError(f"env {self._name} returned a reward of {got} from step(); a reward is one number")
        return obs, reward, terminated, truncated, info

    def _call(self, call: str, fn, *args, **kwargs):
        """Names the call itself (a vector env resets inside its own step when an episode ends)."""
        try:
            return fn(*args, **kwargs)
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as error:  # noqa: BLE001 - any env bug is reported in one line
            raise EnvError(f"env {self._name} raised in {call}(): {_reason(error)}") from error

    def _check(self, obs, call: str) -> None:
        if not isinstance(obs, dict):
            raise EnvError(f"env {self._name} returned a {type(obs).__name__} observation from {call}(); "
                           "its observation space is a Dict")
        for key, (shape, dtype) in self._spec.items():
            if key not in obs:
                raise EnvError(f"env {self._name} returned no observation '{key}' from {call}()")
            value = np.asarray(obs[key])
            if value.shape != shape:
                raise EnvError(f"env {self._name} returned observation '{key}' of shape {value.shape} from {call}(); "
                               f"its observation space says {shape}")
            if not np.can_cast(value.dtype, dtype, casting="same_kind"):
                raise EnvError(f"env {self._name} returned observation '{key}' of dtype {value.dtype} from {call}(); "
                               f"its observation space says {dtype}")


def _check_in_process_envs(envs, name: str, spec: dict) -> None:
    """Wraps the sub-envs of a SyncVectorEnv in `BoundaryCheck` (worker processes report their own errors)."""
    inner = getattr(envs, "envs", None)
    if isinstance(envs, gym.vector.SyncVectorEnv) and isinstance(inner, list):
        envs.envs = [env if isinstance(env, BoundaryCheck) else BoundaryCheck(env, name, spec) for env in inner]


@contextlib.contextmanager
def _worker_reports(envs, keep: bool = True):
    """Holds the warnings raised in the block for worker-process vector envs: shown afterwards when the
    block succeeds (and `keep`), dropped when it fails (a worker's traceback, told in one line instead)."""
    if not isinstance(envs, gym.vector.AsyncVectorEnv):
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        yield
    for item in caught if keep else ():
        warnings.showwarning(item.message, item.category, item.filename, item.lineno)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _first_bad(value) -> str:
    flat = np.asarray(value, np.float64).reshape(-1)
    return str(flat[~np.isfinite(flat)][0])


def _index(obs: dict, i: int) -> dict:
    return {key: value[i] for key, value in obs.items()}


def episode_quotas(episodes: int, num_envs: int) -> list[int]:
    """How many of `episodes` each env contributes: as even as possible, the first envs one more."""
    return [episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)]


def run_episodes(driver: Driver, policy, episodes: int) -> list[dict]:
    """Runs until the driver's envs completed `episodes` episodes between them, counted fairly; returns them.

    Counting whichever episodes finish first favours short episodes (with N envs and 1 episode, the
    shortest of N). Here env i contributes its first `episode_quotas(...)[i]` episodes, a share fixed
    before any episode runs, so which episodes count never depends on their length. Episodes an env
    finishes beyond its share are dropped, and the driver's on_episode callbacks see only counted
    episodes. Returns the counted episodes ordered by env, then by time. Call `driver.reset()` first
    for fresh episodes, as an ongoing one is counted once it finishes.
    """
    quotas = episode_quotas(int(episodes), driver.num_envs)
    counted: list[list[dict]] = [[] for _ in quotas]
    callbacks = driver.on_episode

    def gate(episode, worker):
        if len(counted[worker]) < quotas[worker]:
            counted[worker].append(episode)
            for fn in callbacks:
                fn(episode, worker)

    driver.on_episode = [gate]
    try:
        while any(len(done) < quota for done, quota in zip(counted, quotas)):
            driver(policy, episodes=1)
    finally:
        driver.on_episode = callbacks
    return [episode for done in counted for episode in done]
