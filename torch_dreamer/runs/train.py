"""The official DreamerV2 training loop (train.py) in one process: prefill, pretrain, then eval / train /
checkpoint, with the envs stepped here and an update every `train_every` env steps.

The loop is a learner (`runs/learner.py`: agent, batches, checkpoints, no env) fed by an in-process
actor (a `Driver` stepping the train envs, which adds each finished episode to the replay). Counters
are in agent steps; logs are in frames (steps x action_repeat), as the official logs them.
"""

from __future__ import annotations

import pathlib
import time

import gymnasium as gym

from torch_dreamer.data import BatchLoader, ChunkSampler, EpisodeStore
from torch_dreamer.errors import UserError
from torch_dreamer.runs import setup
from torch_dreamer.runs.acting import ExploreSchedule, RandomPolicy, agent_policy, episode_metrics
from torch_dreamer.runs.driver import Driver
from torch_dreamer.runs.learner import Learner, NonFiniteStop
from torch_dreamer.runs.spaces import Spaces
from torch_dreamer.tools.logger import Logger, Progress, default_outputs

MAX_VIDEO_FRAMES = 500


def replay_dir(config, logdir: pathlib.Path):
    """`replay_dir` (a path or an fsspec URL), or the official `{logdir}/train_episodes`."""
    return str(config.replay_dir) if config.replay_dir else logdir / "train_episodes"


def holds_chunk(store: EpisodeStore, length: int) -> bool:
    """Whether some episode in RAM is long enough for one `length` chunk."""
    return any(store.length(k) >= length for k in store.keys())


class Trainer:
    """Holds what one run needs; `run()` is the loop. Build with `Trainer(config, train_envs, eval_envs)`."""

    def __init__(self, config, train_envs: gym.vector.VectorEnv, eval_envs: gym.vector.VectorEnv | None = None):
        self.config = config
        self.logdir = setup.prepare_logdir(config)
        self.device = setup.resolve_device(config.device)
        setup.seed_everything(config.seed, config.deterministic)
        self.spaces = Spaces.from_vector_env(train_envs)
        self.train_driver = Driver(train_envs, seed=config.seed)
        self.eval_driver = Driver(eval_envs, seed=config.seed + 10_000) if eval_envs is not None else None
        self.train_store = EpisodeStore(replay_dir(config, self.logdir), config.replay.capacity, config.replay.minlen)
        self.eval_store = EpisodeStore(self.logdir / "eval_episodes", config.replay.capacity / 10, config.dataset.length)
        self.learner = Learner(config, self.spaces, self.train_store, self.device)
        self.step = self.train_store.total_steps  # resumes from the episode files, as the official does
        self.explore = ExploreSchedule(config)
        self.logger = Logger(self.logdir, config.action_repeat,
                             default_outputs(self.logdir, terminal=not config.progress or not setup.is_tty()))
        self.last_returns: dict = {}
        self._log_time = (time.perf_counter(), self.step, 0)
        self._training = False  # False while prefilling: env steps then only count
        self.train_driver.on_step.append(self.on_train_step)
        self.train_driver.on_episode.append(lambda episode, worker: self.on_episode(episode, "train"))
        if self.eval_driver is not None:
            self.eval_driver.on_episode.append(lambda episode, worker: self.on_episode(episode, "eval"))

    @property
    def agent(self):
        return self.learner.agent

    @property
    def updates(self) -> int:
        return self.learner.updates

    # ----- callbacks -----

    def on_train_step(self, transition: dict, worker: int) -> None:
        self.step += 1
        self.agent.step = self.step
        if not self._training:
            return
        config = self.config
        if self.step % config.train_every == 0:
            self.learner.train(config.train_steps, self.step)
        if self.step % config.log_every == 0:
            self.log_metrics()

    def on_episode(self, episode: dict, mode: str) -> None:
        store = self.train_store if mode == "train" else self.eval_store
        store.add(episode)
        metrics = episode_metrics(self.config, episode, mode)
        self.last_returns[f"{mode}_return"] = metrics[f"{mode}_return"]
        self.logger.add(metrics)
        self.logger.add({f"{mode}_{name}": value for name, value in store.stats().items()})
        if mode == "eval" and self._eval_video_pending:  # one policy video per evaluation keeps TensorBoard small
            self._eval_video_pending = False
            for key in self.config.log_keys_video:
                if key in episode and episode[key].ndim == 4:
                    self.logger.video(f"{mode}_policy_{key}", episode[key][:MAX_VIDEO_FRAMES])
        self.logger.write(self.step)
        self.progress.update(self.step, self.updates, **self.last_returns)

    def log_metrics(self) -> None:
        config = self.config
        self.logger.add(self.learner.report())
        now = time.perf_counter()
        last_time, last_step, last_updates = self._log_time
        elapsed = max(now - last_time, 1e-9)
        self.logger.add({
            "fps": (self.step - last_step) * config.action_repeat / elapsed,
            "env_steps_per_s": (self.step - last_step) / elapsed,
            "updates_per_s": (self.updates - last_updates) / elapsed,
            "replay_ratio": self.updates * config.dataset.batch * config.dataset.length / max(self.step, 1),
        })
        self._log_time = (now, self.step, self.updates)
        self.logger.write(self.step)

    # ----- checkpoints -----

    @property
    def checkpoint_path(self) -> pathlib.Path:
        return self.logdir / "checkpoint.pt"

    def save(self) -> bool:
        return self.learner.save(self.checkpoint_path, {"step": self.step})

    def load(self) -> bool:
        return self.learner.load(self.checkpoint_path) is not None

    # ----- the loop -----

    def prefill(self) -> None:
        config = self.config
        missing = max(0, int(config.prefill) - self.train_store.total_steps)
        if missing or self.train_store.loaded_episodes == 0:
            print(f"Prefill dataset ({missing} steps).")
            random_policy = RandomPolicy(self.spaces.act_dim, self.spaces.discrete, config.seed)
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
            if not holds_chunk(self.train_store, config.dataset.length):
                raise UserError(f"no episode has dataset.length={config.dataset.length} steps to train on; "
                                "lower --dataset.length or raise --prefill")
            if not self.load():
                self.learner.train(int(config.pretrain), self.step)
            self._training = True
            collect = agent_policy(self.agent, lambda: self.explore(self.step))
            while self.step < steps:
                self.evaluate()
                self.train_driver(collect, steps=min(int(config.eval_every), steps - self.step))
                self.save()
            self.evaluate()
        except KeyboardInterrupt:
            self.train_driver.flush()
            saved = self.save()
            print(f"\nInterrupted at step {self.step}; episodes{' and checkpoint' if saved else ''} "
                  f"saved in {self.logdir}.")
            raise
        except NonFiniteStop as error:
            self.save()
            raise UserError(f"{error}; checkpoint saved") from None
        finally:
            self.close()
        return {"step": self.step, "updates": self.updates, **self.last_returns}

    def evaluate(self) -> None:
        if self.eval_driver is None or self.config.eval_eps <= 0:
            return
        if holds_chunk(self.eval_store, self.config.dataset.length) and self.learner.wants_video():
            eval_sampler = ChunkSampler(self.eval_store, self.config.dataset.length, False, self.step)
            batch = BatchLoader(eval_sampler, self.config.dataset.batch, self.device, prefetch=0, seed=None,
                                keys=self.learner.keys)
            self.logger.add(self.agent.report(next(batch)), prefix="eval")
            batch.close()
        self._eval_video_pending = True
        self.eval_driver.reset()
        self.eval_driver(agent_policy(self.agent, "eval"), episodes=self.config.eval_eps)

    def close(self) -> None:
        self.learner.close()
        self.progress.close()
        self.logger.close()
        self.train_driver.close()
        if self.eval_driver is not None:
            self.eval_driver.close()
