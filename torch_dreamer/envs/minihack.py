"""MiniHack envs (`minihack_<EnvId>`) through NLE.

`minihack_obs`:
- pixel_crop: the 9x9-tile egocentric crop (144x144 RGB) as `image`, resized to
  render_size, as Continual-Dreamer used it.
- glyphs: the full glyph map `glyphs` (21x79) and the egocentric `glyphs_crop` (9x9) as
  flat float32 vectors for MLP encoders (glyph ids go up to ~6000, so not uint8 images).

NLE reports its step limit (StepStatus.ABORTED) as `terminated`; we turn it into
`truncated`, since running out of time is not a terminal state.
"""

from __future__ import annotations

import difflib
import warnings

import gymnasium
import numpy as np
from gymnasium import spaces

from torch_dreamer.errors import UserError, missing_extra

OBS_KEYS = {"pixel_crop": ("pixel_crop",), "glyphs": ("glyphs", "glyphs_crop")}
ABORTED = -1  # nle.env.base.NLE.StepStatus.ABORTED: the episode hit max_episode_steps


def _import_minihack():
    try:
        with warnings.catch_warnings():
            # minihack imports pkg_resources, which setuptools deprecates noisily.
            warnings.simplefilter("ignore", UserWarning)
            import minihack
    except ImportError:
        raise missing_extra("minihack", "minihack") from None
    return minihack


def registered_ids() -> list[str]:
    _import_minihack()
    return sorted(k for k in gymnasium.registry if k.startswith("MiniHack-"))


def make_minihack(env_id: str, config, seed: int) -> gymnasium.Env:
    ids = registered_ids()
    if env_id not in ids:
        close = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('minihack_' + c for c in close)}?" if close else ""
        raise UserError(f"unknown MiniHack env '{env_id}'{hint}")
    if config.minihack_obs not in OBS_KEYS:
        raise UserError(f"minihack_obs must be one of {', '.join(OBS_KEYS)}, got '{config.minihack_obs}'")
    # No ttyrec recordings: NLE would otherwise create nle_data/ in the working directory.
    # Each NLE instance already runs its game in a private temporary directory.
    # The env checker is off because NLE knowingly reuses its observation arrays; the
    # adapter copies them.
    env = gymnasium.make(
        env_id,
        observation_keys=OBS_KEYS[config.minihack_obs],
        save_ttyrec_every=0,
        savedir=None,
        disable_env_checker=True,
        # MiniHack's reward settings (Continual-Dreamer: win 1, lose 0, -0.001 per step); None keeps its own.
        **{key: config[f"minihack_{key}"] for key in ("reward_win", "reward_lose", "penalty_step")
           if f"minihack_{key}" in config and config[f"minihack_{key}"] is not None},
    )
    return MiniHackAdapter(env, config.minihack_obs)


class MiniHackAdapter(gymnasium.Wrapper):
    """Renames and flattens MiniHack observations and reports step limits as truncation."""

    def __init__(self, env, mode: str):
        super().__init__(env)
        self._mode = mode
        self._rng = None
        source = env.observation_space
        if mode == "pixel_crop":
            entries = {"image": source["pixel_crop"]}
        else:
            entries = {k: spaces.Box(0, np.inf, (int(np.prod(source[k].shape)),), np.float32) for k in OBS_KEYS[mode]}
        self.observation_space = spaces.Dict(entries)

    def _obs(self, obs):
        # NLE reuses its arrays between steps, so every entry is copied here.
        if self._mode == "pixel_crop":
            return {"image": np.array(obs["pixel_crop"], np.uint8)}
        return {k: np.asarray(obs[k], np.float32).reshape(-1) for k in OBS_KEYS[self._mode]}

    def reset(self, *, seed=None, options=None):
        # NLE ignores gymnasium seeds and seeds NetHack only for the next episode, so every
        # reset after a seeded one draws fresh NetHack seeds from our own generator.
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        if self._rng is not None:
            core, disp = (int(x) for x in self._rng.integers(0, 2**63 - 1, size=2))
            self.env.unwrapped.seed(core, disp, reseed=False)
        obs, info = self.env.reset(seed=seed, options=options)
        return self._obs(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if int(info.get("end_status", 0)) == ABORTED:
            terminated, truncated = False, True
        return self._obs(obs), reward, terminated, truncated, info
