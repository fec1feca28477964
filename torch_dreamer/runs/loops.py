"""Learner loops without envs in this process: env workers elsewhere (`--workers N`) and offline RL
(`--offline_dir`). Both pace on the replay; the single-process official loop is `runs/train.py`.

With workers, the learner trains while `updates < pretrain + (step - prefill) * train_ratio / (B * T)`
(step = env steps in the replay), otherwise it refreshes the replay and waits for data; actors never
wait for it (they only pause under `limit_step_ratio`). Offline, `--steps` counts updates.
"""

from __future__ import annotations

import pathlib
import time

from torch_dreamer.data import EpisodeStore
from torch_dreamer.errors import UserError
from torch_dreamer.runs import setup
from torch_dreamer.runs.acting import agent_policy, episode_metrics
from torch_dreamer.runs.actor import actor_status
from torch_dreamer.runs.checkpoint import load_run_checkpoint
from torch_dreamer.runs.driver import Driver, EnvError
from torch_dreamer.runs.learner import Learner, NonFiniteStop, Rate, episode_spec, make_storage
from torch_dreamer.runs.policy_store import clear_stop, publish_policy, request_stop, write_json
from torch_dreamer.runs.spaces import Spaces
from torch_dreamer.runs.train import holds_chunk, replay_dir, resume_seed
from torch_dreamer.runs.workers import actor_specs, make_pool
from torch_dreamer.tools.files import join
from torch_dreamer.tools.logger import Logger, Progress, default_outputs

REFRESH_S = 1.0      # how often the learner lists the replay for new episodes
IDLE_SLEEP_S = 0.05  # the learner's wait when it is ahead of train_ratio


def train_ratio(config) -> float:
    """Replayed steps per env step: `train_ratio`, or what `train_every`/`train_steps` imply."""
    if float(config.train_ratio) > 0:
        return float(config.train_ratio)
    return config.dataset.batch * config.dataset.length * config.train_steps / config.train_every


def find_spaces(config, checkpoint: pathlib.Path, replay: EpisodeStore) -> Spaces:
    """From the checkpoint of a resumed run, else from an episode in the replay."""
    if checkpoint.exists():
        return Spaces.from_dict(load_run_checkpoint(checkpoint)["spaces"])
    keys = replay.keys()
    if not keys:
        raise UserError(f"no episodes to read the spaces from in {replay.directory}")
    return Spaces.from_episode(replay.get(keys[-1]), config.action_kind)


class ReplayLoop:
    """What both env-free loops share: logdir, logger, learner built from the replay, checkpoints."""

    def __init__(self, config, replay: EpisodeStore, multiplier: int):
        self.config, self.replay = config, replay
        self.logdir, self.lock = setup.prepare_logdir(config)
        self.device = setup.resolve_device(config.device)
        setup.seed_everything(config.seed, config.deterministic)
        self.logger = Logger(self.logdir, multiplier,
                             default_outputs(self.logdir, terminal=True, config=config))  # lines print above the bar
        self.learner: Learner | None = None
        self.last_returns: dict = {}
        self._saved_at = (time.monotonic(), 0)

    @property
    def checkpoint_path(self) -> pathlib.Path:
        return self.logdir / "checkpoint.pt"

    def build_learner(self) -> dict:
        """The learner for the replay's spaces, restored from the checkpoint; returns its counters.

        Episodes that do not fit those spaces are dropped from the replay with a warning (and from then
        on skipped when they appear); config.yaml is written once the checkpoint loaded.
        """
        spaces = find_spaces(self.config, self.checkpoint_path, self.replay)
        self.replay.set_spec(episode_spec(spaces))
        self.learner = Learner(self.config, spaces, self.replay, self.device)
        counters = self.learner.load(self.checkpoint_path)
        setup.write_config(self.config, self.logdir)
        if counters is None:
            self.learner.train(int(self.config.pretrain), 0)
            counters = {}
        self._saved_at = (time.monotonic(), self.learner.updates)
        return counters

    def checkpoint_due(self) -> bool:
        """`checkpoint_every` updates or `checkpoint_minutes` minutes since the last checkpoint."""
        config, (last_time, last_updates) = self.config, self._saved_at
        if self.learner is None:
            return False
        if config.checkpoint_every and self.learner.updates - last_updates >= config.checkpoint_every:
            return True
        return bool(config.checkpoint_minutes) and time.monotonic() - last_time >= 60 * config.checkpoint_minutes

    def safe_save(self, step: int) -> tuple[bool, list[str]]:
        """`save`, with a full disk or non-finite state reported as a line instead of raised."""
        try:
            return self.save(step), []
        except UserError as error:
            return False, [str(error)]

    def log_episode(self, episode: dict, mode: str, step: int) -> None:
        metrics = episode_metrics(self.config, episode, mode)
        self.last_returns[f"{mode}_return"] = metrics[f"{mode}_return"]
        self.logger.add(metrics)
        self.logger.write(step)

    def save(self, step: int) -> bool:
        saved = self.learner is not None and self.learner.save(self.checkpoint_path, {"step": step})
        if saved:
            self._saved_at = (time.monotonic(), self.learner.updates)
        return saved

    def close(self) -> None:
        if self.learner is not None:
            self.learner.close()
        self.logger.close()
        self.lock.release()


def train_with_workers(config) -> dict:
    """`dreamer train --workers N`: actors in other processes, this process only learns."""
    logdir = pathlib.Path(str(config.logdir)).expanduser()
    replay = EpisodeStore(replay_dir(config, logdir), config.replay.capacity, config.replay.minlen,
                          storage=make_storage(config))
    loop = ReplayLoop(config, replay, config.action_repeat)
    try:
        return _train_with_workers(config, replay, loop)
    finally:
        loop.lock.release()


def _train_with_workers(config, replay: EpisodeStore, loop: ReplayLoop) -> dict:
    policy_dir = str(config.policy_dir) if config.policy_dir else loop.logdir / "policy"
    eval_store = EpisodeStore(loop.logdir / "eval_episodes", config.replay.capacity / 10, 1)
    clear_stop(policy_dir)
    specs = actor_specs(config, replay.directory, eval_store.directory, policy_dir)
    for spec in specs:  # a resumed run's actors continue the seed stream instead of repeating their episodes
        spec["seed"] = resume_seed(spec["seed"], replay.total_episodes + eval_store.total_episodes)
    pool = make_pool(config.worker_backend, specs)
    progress = Progress(int(config.steps), replay.total_steps, disable=None if config.progress else True,
                        multiplier=config.action_repeat)
    step = replay.total_steps
    try:
        pool.start()
        print(f"Started {len(pool.specs)} {config.worker_backend} workers; prefill {int(config.prefill)} steps.")
        write_json(join(policy_dir, "progress.json"), {"updates": 0, "step": replay.total_steps})
        while replay.total_steps < config.prefill or not holds_chunk(replay, config.dataset.length):
            _poll(pool, replay, eval_store, loop)
            write_json(join(policy_dir, "progress.json"), {"updates": 0, "step": replay.total_steps})
            time.sleep(REFRESH_S)
        loop.build_learner()
        learner, ratio = loop.learner, train_ratio(config)
        publish_policy(policy_dir, learner.agent, learner.spaces, config, learner.updates, replay.total_steps)
        published, rates, last_refresh = learner.updates, (Rate(learner.updates), Rate(replay.total_steps)), 0.0
        next_log = next_save = step = replay.total_steps
        while step < config.steps:
            if time.time() - last_refresh >= REFRESH_S:
                _poll(pool, replay, eval_store, loop)
                step, last_refresh = replay.total_steps, time.time()
                # What actors throttle on (limit_step_ratio): one small file, read cheaply from any machine.
                write_json(join(policy_dir, "progress.json"), {"updates": learner.updates, "step": step})
                progress.update(step, learner.updates, **loop.last_returns)
            target = config.pretrain + (step - config.prefill) * ratio / (config.dataset.batch * config.dataset.length)
            if learner.updates < target:
                learner.train(1, step)
            else:
                time.sleep(IDLE_SLEEP_S)
            if learner.updates - published >= config.policy_refresh:
                publish_policy(policy_dir, learner.agent, learner.spaces, config, learner.updates, step)
                published = learner.updates
            if step >= next_log:
                _log_learner(loop, step, rates, policy_dir)
                next_log = step + config.log_every
            if step >= next_save or loop.checkpoint_due():
                loop.save(step)
                next_save = step + config.eval_every
    except KeyboardInterrupt:
        print(f"\nInterrupted at step {step}; stopping workers (they save their unfinished episodes).")
        raise
    except NonFiniteStop as error:
        raise UserError(f"{error}; {_stop_workers(pool, policy_dir, replay, loop)}") from None
    finally:
        if pool.stopping is False:
            problems = _stop_workers(pool, policy_dir, replay, loop)
            if "not saved" in problems:
                print(problems)
        progress.close()
        loop.close()
    learner = loop.learner
    return {"step": replay.total_steps, "updates": learner.updates, "worker_restarts": pool.restarts,
            **loop.last_returns}


def _stop_workers(pool, policy_dir, replay: EpisodeStore, loop: ReplayLoop) -> str:
    """Stops the actors (they write their unfinished episodes), counts those episodes and checkpoints;
    returns one line saying what was saved."""
    request_stop(policy_dir)
    pool.stop()
    replay.refresh()  # the workers' last (truncated) episodes count for the next run
    saved, problems = loop.safe_save(replay.total_steps)
    line = f"episodes{' and checkpoint' if saved else ''} saved in {loop.logdir}"
    return line + "".join(f"; checkpoint not saved: {problem}" for problem in problems)


def _poll(pool, replay: EpisodeStore, eval_store: EpisodeStore, loop: ReplayLoop) -> None:
    for line in pool.check():
        print(line)
    replay.refresh(on_episode=lambda episode: loop.log_episode(episode, "train", replay.total_steps))
    eval_store.refresh(on_episode=lambda episode: loop.log_episode(episode, "eval", replay.total_steps))


def _log_learner(loop: ReplayLoop, step: int, rates, policy_dir) -> None:
    learner, config = loop.learner, loop.config
    update_rate, step_rate = rates[0].read(learner.updates), rates[1].read(step)
    loop.logger.add(learner.report())
    loop.logger.add({
        "updates_per_s": update_rate,
        "env_steps_per_s": step_rate,
        "fps": step_rate * config.action_repeat,
        "replay_ratio": learner.updates * config.dataset.batch * config.dataset.length / max(step, 1),
        "updates": learner.updates,
        **actor_status(policy_dir, learner.updates),
    })
    loop.logger.add({f"train_{k}": v for k, v in loop.replay.stats().items()})
    loop.logger.write(step)


def train_offline(config, eval_envs=None) -> dict:
    """`dreamer train --offline_dir DIR_OR_URL`: world model and behaviour from a fixed set of episodes.

    `--steps` counts updates; logs, checkpoints (every `eval_every` updates) and evaluation (only when
    `eval_envs` are given) run on that clock.
    """
    from torch_dreamer.data.minari import convert_minari, is_minari

    logdir = pathlib.Path(str(config.logdir)).expanduser()
    source = str(config.offline_dir)
    if is_minari(source):
        convert_minari(source[len("minari:"):], logdir / "offline_episodes")
        source = logdir / "offline_episodes"
    capacity = config.replay.capacity if config.replay.capacity else None
    replay = EpisodeStore(source, capacity, config.replay.minlen, storage=make_storage(config))  # read, never written
    if not holds_chunk(replay, config.dataset.length):
        raise UserError(f"no episode in {config.offline_dir} has dataset.length={config.dataset.length} steps; "
                        "lower --dataset.length or --replay.minlen")
    loop = ReplayLoop(config, replay, 1)
    try:
        loop.build_learner()
    except BaseException:
        loop.close()
        raise
    learner = loop.learner
    driver = None
    if eval_envs is not None:
        try:
            learner.spaces.check_matches(Spaces.from_vector_env(eval_envs), f"the evaluation env {config.task}")
        except BaseException:
            loop.close()
            raise
        eval_dir = loop.logdir / "eval_episodes"
        done = len([name for name in (eval_dir.iterdir() if eval_dir.is_dir() else ()) if name.suffix == ".npz"])
        driver = Driver(eval_envs, seed=resume_seed(config.seed + 10_000, done), name=str(config.task),
                        nonfinite=config.nonfinite_env, max_episode_steps=config.max_episode_steps)
        driver.on_episode.append(lambda episode, worker: loop.log_episode(episode, "eval", learner.updates))
    progress = Progress(int(config.steps), learner.updates, disable=None if config.progress else True)
    rates = (Rate(learner.updates), Rate(0))
    try:
        while learner.updates < config.steps:
            learner.train(1, learner.updates)
            progress.update(learner.updates, learner.updates, **loop.last_returns)
            if learner.updates % config.log_every == 0:
                loop.logger.add(learner.report())
                loop.logger.add({"updates_per_s": rates[0].read(learner.updates), **replay.stats()})
                loop.logger.write(learner.updates)
            evaluate = learner.updates % config.eval_every == 0 or learner.updates >= config.steps
            if evaluate or loop.checkpoint_due():
                loop.save(learner.updates)
            if evaluate and driver is not None and config.eval_eps > 0:
                driver.reset()
                driver(agent_policy(learner.agent, "eval"), episodes=config.eval_eps)
    except KeyboardInterrupt:
        saved, problems = loop.safe_save(learner.updates)
        print(f"\nInterrupted at update {learner.updates}; checkpoint {'saved' if saved else 'not saved'} in "
              f"{loop.logdir}" + "".join(f"; {problem}" for problem in problems) + ".")
        raise
    except (NonFiniteStop, EnvError) as error:
        saved, problems = loop.safe_save(learner.updates)
        problems = [p for p in problems if str(error) not in p]
        raise UserError(f"{error}; checkpoint {'saved' if saved else 'not saved'}"
                        + "".join(f"; {p}" for p in problems)) from None
    finally:
        progress.close()
        if driver is not None:
            driver.close()
        loop.close()
    return {"updates": learner.updates, **loop.last_returns}
