"""The official DreamerV2 training loop (train.py) in one process: prefill, pretrain, then eval / train /
checkpoint, with the envs stepped here and an update every `train_every` env steps.

The loop is a learner (`runs/learner.py`: agent, batches, checkpoints, no env) fed by an in-process
actor (a `Driver` stepping the train envs, which adds each finished episode to the replay). Counters
are in agent steps; logs are in frames (steps x action_repeat), as the official logs them.

Whatever ends a run, what it holds is saved first: Ctrl-C, SIGTERM, an env error, a non-finite stop or
any other exception flush the unfinished episodes (as truncated) and checkpoint the trained weights
(never a fresh or a non-finite model), then report in one line. Checkpoints are also written every
`eval_every` steps, `checkpoint_every` updates and `checkpoint_minutes` minutes, which bounds what a
kill -9 can lose. A resumed run continues the counters of its checkpoint and the seeds of its envs.
"""

from __future__ import annotations

import pathlib
import shutil
import signal
import threading
import time

import gymnasium as gym
import numpy as np

from torch_dreamer.data import BatchLoader, ChunkSampler, EpisodeStore
from torch_dreamer.errors import UserError
from torch_dreamer.runs import setup
from torch_dreamer.runs.acting import ExploreSchedule, RandomPolicy, agent_policy, episode_metrics
from torch_dreamer.runs.checkpoint import payload_bytes
from torch_dreamer.runs.driver import Driver, EnvError
from torch_dreamer.runs.learner import Learner, NonFiniteStop, episode_spec, make_storage
from torch_dreamer.runs.spaces import Spaces
from torch_dreamer.tools.files import DiskFull, deferred_interrupts
from torch_dreamer.tools.logger import Logger, Progress, default_outputs

MAX_VIDEO_FRAMES = 500


def replay_dir(config, logdir: pathlib.Path):
    """`replay_dir` (a path or an fsspec URL), or the official `{logdir}/train_episodes`."""
    return str(config.replay_dir) if config.replay_dir else logdir / "train_episodes"


def resume_seed(seed: int, done: int) -> int:
    """The seed of a run's envs (and random policy) after `done` episodes: `seed` for a fresh run, and a
    different seed for every resume point, so a resumed run continues the stream instead of repeating it."""
    if not done:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) % 2**32, int(done)]).generate_state(1)[0] % 2**31)


def env_name(envs) -> str:
    """A name for error messages: the gymnasium id (or class) of an in-process env, else 'env'."""
    inner = getattr(envs, "envs", None)
    if inner:
        spec = getattr(inner[0], "spec", None)
        return spec.id if spec is not None and spec.id else type(inner[0].unwrapped).__name__
    return "env"


def check_free_space(directory: pathlib.Path, needed: int) -> None:
    """One line before anything is collected when `directory` cannot hold a checkpoint of `needed` bytes."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < needed:
        raise DiskFull(directory / "checkpoint.pt", needed)


def holds_chunk(store: EpisodeStore, length: int) -> bool:
    """Whether some episode in RAM is long enough for one `length` chunk."""
    return any(store.length(k) >= length for k in store.keys())


class Trainer:
    """Holds what one run needs; `run()` is the loop. Build with `Trainer(config, train_envs, eval_envs)`."""

    def __init__(self, config, train_envs: gym.vector.VectorEnv, eval_envs: gym.vector.VectorEnv | None = None,
                 name: str | None = None):
        self.config = config
        self.logdir = setup.make_logdir(config)
        self.lock: setup.LogdirLock | None = None  # taken by run(): a Trainer that never runs claims nothing
        name = name or env_name(train_envs)
        self.device = setup.resolve_device(config.device)
        setup.seed_everything(config.seed, config.deterministic)
        self.spaces = Spaces.from_vector_env(train_envs)
        spec = episode_spec(self.spaces)  # files that do not fit these spaces are skipped with a warning
        self.train_store = EpisodeStore(replay_dir(config, self.logdir), config.replay.capacity, config.replay.minlen,
                                        spec=spec, storage=make_storage(config))
        self.eval_store = EpisodeStore(self.logdir / "eval_episodes", config.replay.capacity / 10, config.dataset.length,
                                       spec=spec)
        checks = {"name": name, "nonfinite": config.nonfinite_env, "max_episode_steps": config.max_episode_steps}
        self.train_driver = Driver(train_envs, seed=resume_seed(config.seed, self.train_store.total_episodes), **checks)
        self.eval_driver = (Driver(eval_envs, seed=resume_seed(config.seed + 10_000, self.eval_store.total_episodes),
                                   **checks) if eval_envs is not None else None)
        self.learner = Learner(config, self.spaces, self.train_store, self.device)
        self.step = self.train_store.total_steps  # resumes from the episode files, as the official does
        self._saved_at = (time.monotonic(), 0)  # (time, updates) of the last checkpoint, for checkpoint_every
        self.explore = ExploreSchedule(config)
        self.logger = Logger(self.logdir, config.action_repeat,
                             default_outputs(self.logdir, terminal=True, config=config))  # lines print above the bar
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
        self.progress.update(self.step, self.updates)  # redraws at most twice a second, not only on episode ends
        if not self._training:
            return
        config = self.config
        if self.step % config.train_every == 0:
            self.learner.train(config.train_steps, self.step)
            if self.checkpoint_due():
                self.save()
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
        saved = self.learner.save(self.checkpoint_path, {"step": self.step})
        if saved:
            self._saved_at = (time.monotonic(), self.updates)
        return saved

    def checkpoint_due(self) -> bool:
        """`checkpoint_every` updates or `checkpoint_minutes` minutes since the last checkpoint."""
        config = self.config
        last_time, last_updates = self._saved_at
        if config.checkpoint_every and self.updates - last_updates >= config.checkpoint_every:
            return True
        return bool(config.checkpoint_minutes) and time.monotonic() - last_time >= 60 * config.checkpoint_minutes

    def load(self) -> bool:
        """Restores the checkpoint, if any; the step counter continues from it (see `resume`)."""
        counters = self.learner.load(self.checkpoint_path)
        if counters is not None:
            self.resume(counters)
        return counters is not None

    def resume(self, counters: dict) -> None:
        """Reconciles the step counter of the episode files with the checkpoint's.

        Episodes unfinished at a kill -9 are lost, so the files may hold fewer steps than the checkpoint
        counted: the step counter never goes back (logs and schedules stay monotonic). Files hold more
        when episodes finished after the checkpoint; those steps count.
        """
        saved = int(counters.get("step", 0))
        if saved > self.step:
            print(f"Resuming at step {saved} of the checkpoint; the episode files hold {self.step} steps "
                  f"({saved - self.step} steps of unfinished episodes were not saved).")
            self.step = saved
        self._saved_at = (time.monotonic(), self.updates)

    def rescue(self) -> tuple[str, list[str]]:
        """Saves what the run holds before it ends early: the unfinished train episodes (as truncated) and a
        checkpoint of trained, finite weights. Interrupts wait until both are written. Returns what was
        saved, as words for a message, and the one-line problems met on the way."""
        problems, flushed, saved = [], False, False
        try:
            with deferred_interrupts():
                try:
                    self.train_driver.flush()
                    flushed = True
                except UserError as error:
                    problems.append(str(error))
                try:
                    saved = self.save()
                except UserError as error:  # DiskFull, NonFiniteState: the last good checkpoint stays
                    problems.append(str(error))
        except KeyboardInterrupt:  # a second Ctrl-C, held until both writes were done: nothing more to do
            pass
        what = " and ".join(name for name, done in (("episodes", flushed), ("checkpoint", saved)) if done)
        return (f"{what} saved in {self.logdir}" if what else "nothing saved"), problems

    # ----- the loop -----

    def prefill(self) -> None:
        config = self.config
        missing = max(0, int(config.prefill) - self.step)
        if missing or self.train_store.loaded_episodes == 0:
            print(f"Prefill dataset ({missing} steps).")
            seed = resume_seed(config.seed, self.train_store.total_episodes)
            random_policy = RandomPolicy(self.spaces.act_dim, self.spaces.discrete, seed)
            self.train_driver(random_policy, steps=missing, episodes=1)
            if self.eval_driver is not None and self.eval_store.total_episodes == 0:
                self.eval_driver(random_policy, episodes=1)
            # The unfinished prefill episode is kept (truncated): its steps count, so no run prefills twice.
            self.train_driver.flush()

    def run(self) -> dict:
        config = self.config
        steps = int(config.steps)
        # None lets the bar switch itself off when stdout is not a terminal (logs, CI).
        self.progress = Progress(steps, self.step, disable=None if config.progress else True,
                                 multiplier=config.action_repeat)
        self._eval_video_pending = False
        try:
            self.lock = setup.claim_logdir(config, self.logdir)  # a second run on this logdir stops here
        except BaseException:
            self.close()
            raise
        restore_sigterm = _sigterm_as_interrupt()
        try:
            # The checkpoint loads first: a mismatch is refused before anything is collected or written.
            resumed = self.load()
            check_free_space(self.logdir, 3 * payload_bytes(self.agent.state_dict()))  # weights + Adam moments
            setup.write_config(config, self.logdir)
            self.prefill()
            if not holds_chunk(self.train_store, config.dataset.length):
                raise UserError(f"no episode has dataset.length={config.dataset.length} steps to train on; "
                                "lower --dataset.length or raise --prefill")
            if not resumed:
                self.learner.train(int(config.pretrain), self.step)
            self._training = True
            collect = agent_policy(self.agent, lambda: self.explore(self.step))
            while self.step < steps:
                self.evaluate()
                self.train_driver(collect, steps=min(int(config.eval_every), steps - self.step))
                self.save()
            self.evaluate()
            self.rescue_or_raise()  # the unfinished train episode too: a longer --steps resumes after it
        except KeyboardInterrupt:
            saved, problems = self.rescue()
            print(f"\nInterrupted at step {self.step}; {saved}" + "".join(f"; {problem}" for problem in problems) + ".")
            raise
        except (EnvError, NonFiniteStop) as error:
            saved, problems = self.rescue()
            problems = [p for p in problems if str(error) not in p]
            raise UserError(f"{error}; {saved}" + "".join(f"; {p}" for p in problems)) from None
        except DiskFull:
            self.rescue()  # an episode may still fit; the last good checkpoint stays in any case
            raise
        except Exception:
            self.rescue()  # a bug or an unexpected error: save what we hold, then show it with its traceback
            raise
        finally:
            restore_sigterm()
            self.close()
        return {"step": self.step, "updates": self.updates, **self.last_returns}

    def rescue_or_raise(self) -> None:
        saved, problems = self.rescue()
        if problems:
            raise UserError("; ".join(problems))

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
        from torch_dreamer.runs.driver import run_episodes  # eval_eps complete episodes, shared fairly by the envs

        run_episodes(self.eval_driver, agent_policy(self.agent, "eval"), self.config.eval_eps)

    def close(self) -> None:
        self.learner.close()
        self.progress.close()
        self.logger.close()
        self.train_driver.close()
        if self.eval_driver is not None:
            self.eval_driver.close()
        if self.lock is not None:
            self.lock.release()


def _sigterm_as_interrupt():
    """SIGTERM (what Slurm and Kubernetes send) raises KeyboardInterrupt, so it saves like Ctrl-C.

    Only where nobody set a handler already (the CLI sets the same); returns the function restoring it.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return lambda: None
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except (ValueError, OSError):
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
