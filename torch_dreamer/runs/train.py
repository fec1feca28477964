"""The official DreamerV2 training loop (train.py): prefill, pretrain, then eval / train / checkpoint.

Counters are in agent steps; logs are in frames (steps x action_repeat), as the official logs them.
"""

from __future__ import annotations

import pathlib
import re
import time

import gymnasium as gym
import numpy as np
import torch

from torch_dreamer.agent.agent import Agent
from torch_dreamer.data import BatchLoader, ChunkSampler, EpisodeStore
from torch_dreamer.errors import UserError
from torch_dreamer.runs import setup
from torch_dreamer.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from torch_dreamer.runs.driver import Driver, RandomPolicy, action_spec, obs_spec
from torch_dreamer.tools.logger import Logger, MetricsAverager, Progress, default_outputs

MAX_NONFINITE = 100  # consecutive skipped world-model updates before the run stops
MAX_VIDEO_FRAMES = 500


class Trainer:
    """Holds what one run needs; `run()` is the loop. Build with `Trainer(config, train_envs, eval_envs)`."""

    def __init__(self, config, train_envs: gym.vector.VectorEnv, eval_envs: gym.vector.VectorEnv | None = None):
        self.config = config
        self.logdir = setup.prepare_logdir(config)
        self.device = setup.resolve_device(config.device)
        setup.seed_everything(config.seed, config.deterministic)
        self.train_driver = Driver(train_envs, seed=config.seed)
        self.eval_driver = Driver(eval_envs, seed=config.seed + 10_000) if eval_envs is not None else None
        self.act_dim, self.discrete = action_spec(train_envs.single_action_space)
        self.obs_space = obs_spec(train_envs.single_observation_space)
        self.agent = Agent(config, self.obs_space, self.act_dim, self.discrete).to(self.device)
        self.train_store = EpisodeStore(self.logdir / "train_episodes", config.replay.capacity, config.replay.minlen)
        self.eval_store = EpisodeStore(self.logdir / "eval_episodes", config.replay.capacity / 10, config.dataset.length)
        self.step = self.train_store.total_steps  # resumes from the episode files, as the official does
        self.updates = 0
        self._next_expl = 0  # the step from which the explore policy acts next (expl_every)
        self.logger = Logger(self.logdir, config.action_repeat,
                             default_outputs(self.logdir, terminal=not config.progress or not setup.is_tty()))
        self.metrics = MetricsAverager()
        self.sampler = ChunkSampler(self.train_store, config.dataset.length, config.replay.prioritize_ends, config.seed)
        self.dataset = None
        self.last_returns: dict = {}
        self._log_time = (time.perf_counter(), self.step)
        self.train_driver.on_step.append(self.on_train_step)
        self.train_driver.on_episode.append(lambda episode, worker: self.on_episode(episode, "train"))
        if self.eval_driver is not None:
            self.eval_driver.on_episode.append(lambda episode, worker: self.on_episode(episode, "eval"))

    # ----- policies -----

    def policy(self, mode):
        """mode: a policy mode, or a function returning one, asked at every call (expl_every)."""
        def act(obs, state):
            action, state = self.agent.policy(obs, state, mode() if callable(mode) else mode)
            return action.cpu().numpy(), state
        return act

    def train_mode(self) -> str:
        """explore while step < expl_until (frames; 0 = no end, the official Until(0)), then train,
        or, with expl_every N > 0, explore on one policy call every N agent steps."""
        config = self.config
        expl_until = config.expl_until / config.action_repeat  # given in frames, as in train.py
        if expl_until and self.step < expl_until:
            return "explore"
        if config.expl_every > 0:
            if self.step >= self._next_expl:
                self._next_expl = self.step + int(config.expl_every)
                return "explore"
            return "train"
        return "train" if expl_until else "explore"

    # ----- callbacks -----

    def on_train_step(self, transition: dict, worker: int) -> None:
        self.step += 1
        self.agent.step = self.step
        if self.dataset is None:
            return  # prefilling
        config = self.config
        if self.step % config.train_every == 0:
            for _ in range(config.train_steps):
                self.train_once()
        if self.step % config.log_every == 0:
            self.log_metrics()

    def train_once(self) -> None:
        self.metrics.add(self.agent.train_step(next(self.dataset)))
        self.updates += 1
        if self.agent.nonfinite_updates() >= MAX_NONFINITE:
            self.save()
            raise UserError(f"the world-model loss was non-finite for {MAX_NONFINITE} updates in a row; "
                            "checkpoint saved; try --precision 32 or a lower --model_opt.lr")

    def on_episode(self, episode: dict, mode: str) -> None:
        config = self.config
        store = self.train_store if mode == "train" else self.eval_store
        store.add(episode)
        length = len(episode["reward"]) - 1
        score = float(episode["reward"].astype(np.float64).sum())
        self.last_returns[f"{mode}_return"] = score
        self.logger.scalar(f"{mode}_return", score)
        self.logger.scalar(f"{mode}_length", length)
        for key, value in episode.items():
            if re.match(config.log_keys_sum, key):
                self.logger.scalar(f"sum_{mode}_{key}", value.sum())
            if re.match(config.log_keys_mean, key):
                self.logger.scalar(f"mean_{mode}_{key}", value.mean())
            if re.match(config.log_keys_max, key):
                self.logger.scalar(f"max_{mode}_{key}", value.max(0).mean())
        for name, value in store.stats().items():
            self.logger.scalar(f"{mode}_{name}", value)
        if self._want_policy_video(mode):
            for key in config.log_keys_video:
                if key in episode and episode[key].ndim == 4:
                    self.logger.video(f"{mode}_policy_{key}", episode[key][:MAX_VIDEO_FRAMES])
        self.logger.write(self.step)
        self.progress.update(self.step, self.updates, **self.last_returns)

    def _want_policy_video(self, mode: str) -> bool:
        # One policy video per evaluation phase keeps TensorBoard small.
        if mode == "eval" and self._eval_video_pending:
            self._eval_video_pending = False
            return True
        return False

    def log_metrics(self) -> None:
        self.logger.add(self.metrics.result())
        self.logger.add(self.agent.report(next(self.dataset)), prefix="train")
        now = time.perf_counter()
        last_time, last_step = self._log_time
        self.logger.scalar("fps", (self.step - last_step) * self.config.action_repeat / max(now - last_time, 1e-9))
        self._log_time = (now, self.step)
        self.logger.write(self.step)

    # ----- checkpoints -----

    @property
    def checkpoint_path(self) -> pathlib.Path:
        return self.logdir / "checkpoint.pt"

    def save(self) -> None:
        payload = {
            "agent": self.agent.state_dict(),
            "optimizers": self.agent.optimizer_state(),
            "counters": {"step": self.step, "updates": self.updates},
            "rng": rng_state(),
            "sampler_rng": self.sampler.rng.bit_generator.state,
            "config": self.config.flat,
            "spaces": {"obs": {k: [list(s), str(d)] for k, (s, d) in self.obs_space.items()},
                       "act_dim": self.act_dim, "discrete": self.discrete},
        }
        save_checkpoint(self.checkpoint_path, payload)

    def load(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        payload = load_checkpoint(self.checkpoint_path)
        try:
            self.agent.load_state_dict(payload["agent"])
        except RuntimeError as error:
            raise UserError(f"{self.checkpoint_path} was written with a different model config "
                            f"({str(error).splitlines()[0]}); use another --logdir or the config in config.yaml") from None
        self.agent.load_optimizer_state(payload["optimizers"])
        self.updates = int(payload["counters"]["updates"])
        set_rng_state(payload["rng"])
        self.sampler.rng.bit_generator.state = payload["sampler_rng"]
        return True

    # ----- the loop -----

    def prefill(self) -> None:
        config = self.config
        missing = max(0, int(config.prefill) - self.train_store.total_steps)
        if missing or self.train_store.loaded_episodes == 0:
            print(f"Prefill dataset ({missing} steps).")
            random_policy = RandomPolicy(self.act_dim, self.discrete, config.seed)
            self.train_driver(random_policy, steps=missing, episodes=1)
            if self.eval_driver is not None and self.eval_store.total_episodes == 0:
                self.eval_driver(random_policy, episodes=1)
            self.train_driver.reset()
            self.step = self.train_store.total_steps  # the unfinished prefill episode is dropped

    def run(self) -> dict:
        config = self.config
        steps = int(config.steps)
        # None lets the bar switch itself off when stdout is not a terminal (logs, CI).
        self.progress = Progress(steps, self.step, disable=None if config.progress else True,
                                 multiplier=config.action_repeat)
        self._eval_video_pending = False
        try:
            self.prefill()
            if not self.holds_chunk(self.train_store):
                raise UserError(f"no episode has dataset.length={config.dataset.length} steps to train on; "
                                "lower --dataset.length or raise --prefill")
            prefetch = 0 if config.deterministic else 4
            self.dataset = BatchLoader(self.sampler, config.dataset.batch, self.device, prefetch=prefetch, seed=None)
            if not self.load():
                for _ in range(int(config.pretrain)):
                    self.train_once()
            while self.step < steps:
                self.evaluate()
                self.train_driver(self.policy(self.train_mode), steps=min(int(config.eval_every), steps - self.step))
                self.save()
            self.evaluate()
        except KeyboardInterrupt:
            self.train_driver.flush()
            if self.dataset is not None:
                self.save()
            print(f"\nInterrupted at step {self.step}; checkpoint and episodes saved in {self.logdir}.")
            raise
        finally:
            self.close()
        return {"step": self.step, "updates": self.updates, **self.last_returns}

    def holds_chunk(self, store: EpisodeStore) -> bool:
        """Whether some episode in RAM is long enough for one dataset.length chunk."""
        return any(store.length(k) >= self.config.dataset.length for k in store.keys())

    def evaluate(self) -> None:
        if self.eval_driver is None or self.config.eval_eps <= 0:
            return
        if self.holds_chunk(self.eval_store):
            eval_sampler = ChunkSampler(self.eval_store, self.config.dataset.length, False, self.step)
            batch = BatchLoader(eval_sampler, self.config.dataset.batch, self.device, prefetch=0, seed=None)
            self.logger.add(self.agent.report(next(batch)), prefix="eval")
            batch.close()
        self._eval_video_pending = True
        self.eval_driver.reset()
        self.eval_driver(self.policy("eval"), episodes=self.config.eval_eps)

    def close(self) -> None:
        if self.dataset is not None:
            self.dataset.close()
        self.progress.close()
        self.logger.close()
        self.train_driver.close()
        if self.eval_driver is not None:
            self.eval_driver.close()
