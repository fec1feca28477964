"""The Python API of the official `dreamerv2.api`, for any gymnasium env.

    import gymnasium as gym, minigrid
    import torch_dreamer.api as dv2
    config = dv2.defaults.update({'logdir': '~/logdir/minigrid', 'prefill': 1e4}).parse_flags()
    env = minigrid.wrappers.RGBImgPartialObsWrapper(gym.make('MiniGrid-DoorKey-6x6-v0'))
    dv2.train(env, config)
"""

from __future__ import annotations

import gymnasium as gym

from torch_dreamer.config import Config, load_configs
from torch_dreamer.runs.evaluate import EnvPolicy, load_agent
from torch_dreamer.runs.evaluate import evaluate as _evaluate

configs = load_configs()
defaults = Config(configs["defaults"])

__all__ = ["Config", "configs", "defaults", "train", "evaluate", "load_agent", "EnvPolicy"]


def _vector(env: gym.Env, config) -> gym.vector.VectorEnv:
    from torch_dreamer.envs import wrap_env  # envs are imported lazily: the agent API needs none of them

    wrapped = wrap_env(env, config)
    return gym.vector.SyncVectorEnv([lambda: wrapped], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def train(env: gym.Env, config: Config, eval_env: gym.Env | None = None) -> dict:
    """Trains DreamerV2 on a gymnasium env with the official wrappers (resize, one-hot, normalise, time limit).

    Discrete or Box actions are detected from the action space. Evaluation episodes run only when
    `eval_env` (a second instance) is given, as the official API has none. Returns final counters and returns.
    """
    from torch_dreamer.runs.evaluate import record_env
    from torch_dreamer.runs.train import Trainer

    eval_envs = _vector(eval_env, config) if eval_env is not None else None
    train_envs = _vector(env, config)
    if str(config.logdir) not in ("", "/dev/null"):
        record_env(env, config.logdir)  # so `dreamer eval --logdir` can rebuild this env
    return Trainer(config, train_envs, eval_envs).run()


def evaluate(env: gym.Env, logdir, episodes: int = 1, video: str | None = None, device: str = "auto") -> dict:
    """Mean and std return of the latest checkpoint in `logdir` over `episodes` episodes of `env`."""
    from torch_dreamer.runs.evaluate import check_spaces, check_video_path, load_run

    check_video_path(video)
    agent, config, spaces = load_run(logdir, device)
    envs = _vector(env, config)
    check_spaces(spaces, envs, "the env given to evaluate")
    return _evaluate(envs, agent, episodes, video)
