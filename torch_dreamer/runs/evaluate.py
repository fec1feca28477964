"""Evaluation of a trained agent from its logdir: `dreamer eval` and `api.evaluate`."""

from __future__ import annotations

import pathlib

import gymnasium as gym
import numpy as np

from torch_dreamer.agent.agent import Agent
from torch_dreamer.config import Config
from torch_dreamer.errors import UserError
from torch_dreamer.runs import setup
from torch_dreamer.runs.checkpoint import load_checkpoint
from torch_dreamer.runs.driver import Driver


def load_agent(logdir, device: str = "auto") -> Agent:
    """The agent of the latest checkpoint in `logdir`, in eval mode; use `agent.policy(obs, state, mode)`."""
    path = pathlib.Path(logdir).expanduser() / "checkpoint.pt"
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; train first with `dreamer train --logdir {logdir} ...`")
    payload = load_checkpoint(path)
    config = Config(payload["config"])
    spaces = payload["spaces"]
    obs_space = {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in spaces["obs"].items()}
    agent = Agent(config, obs_space, int(spaces["act_dim"]), bool(spaces["discrete"]))
    agent.load_state_dict(payload["agent"])
    return agent.to(setup.resolve_device(device)).eval()


def load_config(logdir) -> Config:
    path = pathlib.Path(logdir).expanduser() / "checkpoint.pt"
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; train first with `dreamer train --logdir {logdir} ...`")
    return Config(load_checkpoint(path)["config"])


def evaluate(envs: gym.vector.VectorEnv, agent: Agent, episodes: int = 1, video: str | None = None,
             mode: str = "eval", seed: int | None = None) -> dict:
    """Runs `episodes` episodes with the agent's `mode` policy; returns mean, std and all returns."""
    returns, frames = [], []
    driver = Driver(envs, seed=seed)

    def on_episode(episode, worker):
        if len(returns) < episodes:
            returns.append(float(episode["reward"].astype(np.float64).sum()))
            if video and "image" in episode and not frames:
                frames.extend(episode["image"])

    def act(obs, state):
        action, state = agent.policy(obs, state, mode)
        return action.cpu().numpy(), state

    driver.on_episode.append(on_episode)
    driver(act, episodes=episodes)
    driver.close()
    if video and frames:
        _write_video(video, np.stack(frames))
    return {"mean": float(np.mean(returns)), "std": float(np.std(returns)), "returns": returns}


def _write_video(path: str, frames: np.ndarray) -> None:
    import imageio.v3 as iio

    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, -1)
    path = pathlib.Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        iio.imwrite(path, frames, duration=50, loop=0) if path.suffix == ".gif" else iio.imwrite(path, frames, fps=20)
    except Exception as error:  # imageio names the missing plugin; keep it to one line
        raise UserError(f"cannot write video {path}: {str(error).splitlines()[0]}; use a .gif path "
                        "or pip install imageio-ffmpeg for .mp4") from None
