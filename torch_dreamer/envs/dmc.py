"""DeepMind Control Suite as a gymnasium env, with the official DreamerV2 semantics.

Proprioceptive observations keep their dm_control names as flat float32 vectors; the
`image` is rendered only when the encoder or decoder would read it (rendering dominates
the step time). Action repeat sums rewards inside the env so frames are rendered once
per agent step. dm_control episodes end by a time limit, which is a truncation.
"""

from __future__ import annotations

import difflib
import glob
import os

import gymnasium
import numpy as np
from gymnasium import spaces

from torch_dreamer.envs.wrappers import wants_image
from torch_dreamer.errors import UserError, missing_extra


def choose_gl_backend() -> str:
    """Sets MUJOCO_GL for headless rendering unless the user chose one: EGL with a GPU, else OSMesa.

    It must run before dm_control is imported, because dm_control picks its GL backend on import.
    """
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl" if _cuda_visible() else "osmesa"
    return os.environ["MUJOCO_GL"]


def _cuda_visible() -> bool:
    # Checked without importing torch, which would slow down every worker process.
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def _import_suite():
    choose_gl_backend()
    try:
        from dm_control import suite
    except ImportError:
        raise missing_extra("dm_control", "dmc") from None
    return suite


def split_task(name: str) -> tuple[str, str]:
    """`ball_in_cup_catch` -> (`ball_in_cup`, `catch`): domains and tasks may both contain underscores."""
    suite = _import_suite()
    names = {f"{domain}_{task}": (domain, task) for domain, task in suite.ALL_TASKS}
    if name in names:
        return names[name]
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('dmc_' + c for c in close)}?" if close else ""
    raise UserError(f"unknown DMC task '{name}'{hint}")


def make_dmc(name: str, config, seed: int) -> gymnasium.Env:
    """The DMC env; it repeats actions itself, so the caller adds no ActionRepeat."""
    domain, task = split_task(name)
    camera = int(config.dmc_camera)
    if camera == -1:
        camera = 2 if domain == "quadruped" else 0
    size = tuple(int(s) for s in config.render_size)
    return DMCEnv(domain, task, size, camera, int(config.action_repeat), wants_image(config), seed)


class DMCEnv(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def __init__(self, domain, task, size=(64, 64), camera=0, action_repeat=1, image=True, seed=0):
        suite = _import_suite()
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        self._size, self._camera, self._image = tuple(size), camera, image
        self._repeat = max(1, int(action_repeat))
        self._closed = False
        self.observation_space = self._obs_space()
        spec = self._env.action_spec()
        self.action_space = spaces.Box(spec.minimum.astype(np.float32), spec.maximum.astype(np.float32), dtype=np.float32)

    def _obs_space(self) -> spaces.Dict:
        entries = {}
        for key, spec in self._env.observation_spec().items():
            entries[key] = spaces.Box(-np.inf, np.inf, (int(np.prod(spec.shape)),), np.float32)
        if self._image:
            entries["image"] = spaces.Box(0, 255, (*self._size, 3), np.uint8)
        return spaces.Dict(entries)

    def _obs(self, time_step) -> dict:
        obs = {key: np.asarray(value, np.float32).reshape(-1) for key, value in time_step.observation.items()}
        if self._image:
            obs["image"] = self.render()
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            # dm_control draws initial states from the task's RandomState; replace it to reseed.
            self._env.task._random = np.random.RandomState(seed)
        return self._obs(self._env.reset()), {}

    def step(self, action):
        reward = 0.0
        for _ in range(self._repeat):
            time_step = self._env.step(action)
            reward += time_step.reward or 0.0
            if time_step.last():
                break
        # Only a zero discount is a real termination; suite tasks end by their time limit.
        terminated = bool(time_step.last() and time_step.discount == 0)
        truncated = bool(time_step.last() and not terminated)
        return self._obs(time_step), float(reward), terminated, truncated, {"discount": float(time_step.discount)}

    def render(self):
        return self._env.physics.render(*self._size, camera_id=self._camera)

    def close(self):
        # Free the GL contexts now: freeing them at interpreter exit prints tracebacks.
        if not self._closed:
            self._closed = True
            self._env.physics.free()
