"""Continual learning over a task sequence (Continual-Dreamer's protocol, done right).

One learner and one replay for all tasks; the agent is task-agnostic and its weights carry over. Task i
trains for its own env steps in envs of its own; every `eval_every` env steps every task of the sequence
(future ones too) is evaluated on its own eval envs for `cl.eval_eps_per_task` whole episodes. Episodes
carry a `task` key (never fed to the model) so the replay's composition is known: `er_task_{i}` (episodes
of task i held for sampling) and `replay_share_{i}` (task i's share of the chunks trained on).

Counters (total step, task index, steps into the task) live in the checkpoint, so a resumed sequence
continues the same task at the same step; replay membership is restored by the store.
"""

from __future__ import annotations

import collections
import shutil
import threading

import numpy as np

import torch

from torch_dreamer.data import ChunkSampler, EpisodeStore, stack_time_major
from torch_dreamer.data.batches import to_device
from torch_dreamer.errors import UserError
from torch_dreamer.runs import setup
from torch_dreamer.runs.acting import ExploreSchedule, RandomPolicy, agent_policy, episode_metrics
from torch_dreamer.runs.driver import Driver
from torch_dreamer.runs.learner import Learner, NonFiniteStop, episode_spec, make_replay, make_sampler
from torch_dreamer.runs.spaces import Spaces
from torch_dreamer.tools import cl_metrics
from torch_dreamer.tools.logger import Logger, Progress, default_outputs


def task_schedule(config) -> list[tuple[int, str, int]]:
    """[(task id, task name, env steps)] in training order: the first `num_tasks` tasks, repeated
    `num_task_repeats` times (the original never reset its task index, so repeats did nothing),
    with `unbalanced_steps` giving per-task budgets (the original could not parse them)."""
    cl = config.cl
    tasks = list(cl.tasks)
    count = min(int(cl.num_tasks), len(tasks)) if cl.num_tasks > 0 else len(tasks)
    budgets = [float(s) for s in cl.unbalanced_steps] or [float(cl.steps)] * count
    if len(budgets) < count:
        raise UserError(f"--unbalanced_steps gives {len(budgets)} budgets for {count} tasks; give one per task")
    schedule = []
    for _ in range(max(1, int(cl.num_task_repeats))):
        schedule += [(i, tasks[i], int(budgets[i])) for i in range(count)]
    return schedule


def success(episode: dict) -> float:
    """A success ends in a real termination with a positive last reward (MiniGrid's goal, MiniHack's win)."""
    return float(bool(episode["is_terminal"][-1]) and float(episode["reward"][-1]) > 0)


class TaskTally:
    """Wraps the training sampler and counts, per task id, the chunks it hands out (`replay_share_{i}`)."""

    def __init__(self, sampler):
        self.sampler, self.length = sampler, sampler.length
        self.counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def sample(self):
        chunk = self.sampler.sample()
        if "task" in chunk:
            with self._lock:
                self.counts[int(chunk["task"][0])] += 1
        return chunk

    def reseed(self, seed):
        self.sampler.reseed(seed)

    @property
    def rng(self):
        return self.sampler.rng

    def __getattr__(self, name):
        # The wrapped sampler's optional interface (uncertainty priorities, their checkpoint state), so
        # `hasattr(tally, ...)` answers as the wrapped sampler would.
        if name in ("update_priorities", "state_dict", "load_state_dict"):
            return getattr(self.__dict__["sampler"], name)
        raise AttributeError(name)

    def shares(self) -> dict:
        with self._lock:
            total = sum(self.counts.values())
            return {f"replay_share_{i}": n / total for i, n in sorted(self.counts.items())} if total else {}


class ContinualRun:
    """`make_envs(task, mode, seed) -> VectorEnv` builds any task's envs; the sequence is `task_schedule`."""

    def __init__(self, config, make_envs, eval_tasks: list[str] | None = None):
        self.config, self.make_envs = config, make_envs
        self.schedule = task_schedule(config)
        self.eval_tasks = eval_tasks if eval_tasks is not None else list(dict.fromkeys(t for _, t, _ in self.schedule))
        self.logdir, self.lock = setup.prepare_logdir(config)
        try:
            self._build(config, make_envs)
        except BaseException:
            self.lock.release()
            raise

    def _build(self, config, make_envs) -> None:
        self.device = setup.resolve_device(config.device)
        setup.seed_everything(config.seed, config.deterministic)
        self.eval_envs = {name: make_envs(name, "eval", config.seed + 10_000 + 97 * i)
                          for i, name in enumerate(self.eval_tasks)}
        self.spaces = self._common_spaces()
        self.store = make_replay(config, self.logdir / "train_episodes", episode_spec(self.spaces))
        self.tally = TaskTally(make_sampler(config, self.store, config.seed))
        self.learner = Learner(config, self.spaces, self.store, self.device, sampler=self.tally)
        self.logger = Logger(self.logdir, config.action_repeat,
                             default_outputs(self.logdir, terminal=True, config=config))  # lines print above the bar
        self.counters = {"step": 0, "task_index": 0, "task_step": 0}
        self.progress = None
        self.curves: dict[int, list] = collections.defaultdict(list)  # eval task index -> [(step, success)]

    def _common_spaces(self) -> Spaces:
        """All tasks must share one action space and observation layout (a task-agnostic agent)."""
        spaces = None
        for name, envs in self.eval_envs.items():
            these = Spaces.from_vector_env(envs)
            if spaces is None:
                spaces, first = these, name
            else:
                spaces.check_matches(these, f"task {name} (the first task, {first}, fixes the spaces)")
        return spaces

    # ----- the loop -----

    def run(self) -> dict:
        config = self.config
        counters = self.learner.load(self.logdir / "checkpoint.pt")
        if counters is not None:
            self.counters.update({k: int(counters[k]) for k in self.counters if k in counters})
            self._reload_curves()
        setup.write_config(config, self.logdir)  # only for a run that starts
        total = sum(steps for *_, steps in self.schedule)
        self.progress = Progress(total, self.counters["step"], disable=None if config.progress else True,
                                 multiplier=config.action_repeat)
        try:
            while self.counters["task_index"] < len(self.schedule):
                self._train_task(*self.schedule[self.counters["task_index"]])
                self.counters["task_index"] += 1
                self.counters["task_step"] = 0
                self._save()
            self._evaluate()
            self._save()
        except KeyboardInterrupt:
            self._save()
            print(f"\nInterrupted at step {self.counters['step']} (task {self.counters['task_index']}); "
                  f"state saved in {self.logdir}.")
            raise
        except NonFiniteStop as error:
            self._save()
            raise UserError(f"{error}; checkpoint saved") from None
        finally:
            self.close()
        if config.cl.del_exp_replay and self.learner.loaded:
            shutil.rmtree(self.logdir / "train_episodes", ignore_errors=True)
            print(f"Deleted the replay {self.logdir / 'train_episodes'} after the final checkpoint (--del_exp_replay).")
        return {**self.counters, "updates": self.learner.updates, **self.summary()}

    def _train_task(self, task_id: int, name: str, steps: int) -> None:
        config = self.config
        seed = config.seed + 1_000 * (self.counters["task_index"] + 1) + self.counters["task_step"]
        driver = Driver(self._train_envs(name, seed), seed=seed)
        explore = ExploreSchedule(config)

        def on_step(transition, worker):
            self.counters["step"] += 1
            self.counters["task_step"] += 1
            if self.learner.dataset is None:
                return
            if self.counters["step"] % config.train_every == 0:
                self.learner.train(config.train_steps, self.counters["step"])
            if self.counters["step"] % config.log_every == 0:
                self._log_learner()

        driver.on_step.append(on_step)
        driver.on_episode.append(lambda episode, worker: self._on_train_episode(episode, task_id))
        try:
            if self.learner.dataset is None:
                self._prefill(driver)
            policy = agent_policy(self.learner.agent, lambda: explore(self.counters["step"]))
            while self.counters["task_step"] < steps:
                self._evaluate()
                driver(policy, steps=min(int(config.eval_every), steps - self.counters["task_step"]))
                self._save()
        except KeyboardInterrupt:
            driver.flush()
            raise
        finally:
            driver.close()

    def _train_envs(self, name: str, seed: int):
        envs = self.make_envs(name, "train", seed)
        self.spaces.check_matches(Spaces.from_vector_env(envs), f"task {name}")
        return envs

    def _prefill(self, driver: Driver) -> None:
        config = self.config
        missing = max(0, int(config.prefill) - self.store.total_steps)
        if missing or self.store.loaded_episodes == 0:
            print(f"Prefill dataset ({missing} steps).")
            driver(RandomPolicy(self.spaces.act_dim, self.spaces.discrete, config.seed), steps=missing, episodes=1)
        if not any(self.store.length(k) >= config.dataset.length for k in self.store.keys()):
            raise UserError(f"no episode has dataset.length={config.dataset.length} steps to train on; "
                            "lower --dataset.length or raise --prefill")
        self.learner.start()
        if not self.learner.loaded:
            self.learner.train(int(config.pretrain), self.counters["step"])

    def _on_train_episode(self, episode: dict, task_id: int) -> None:
        episode = {**episode, "task": np.full(len(episode["action"]), task_id, np.int32)}
        self.store.add(episode)
        metrics = episode_metrics(self.config, episode, "train")
        metrics["task"] = task_id
        metrics.update({f"train_{k}": v for k, v in self.store.stats().items()})
        metrics.update(self.replay_composition())
        self.logger.add(metrics)
        self.logger.write(self.counters["step"])
        self.progress.update(self.counters["step"], self.learner.updates, task=task_id)

    def replay_composition(self) -> dict:
        """`er_task_{i}`: episodes of task i held for sampling, Continual-Dreamer's name."""
        counts = collections.Counter()
        for key in self.store.keys():
            try:
                episode = self.store.get(key)
            except KeyError:
                continue
            counts[int(episode["task"][0]) if "task" in episode else -1] += 1
        return {f"er_task_{i}": n for i, n in sorted(counts.items()) if i >= 0}

    def _log_learner(self) -> None:
        self.logger.add(self.learner.report())
        self.logger.add(self.tally.shares())
        self.logger.write(self.counters["step"])

    # ----- evaluation and metrics -----

    def _evaluate(self) -> None:
        config = self.config
        if config.cl.eval_eps_per_task <= 0:
            return
        policy = agent_policy(self.learner.agent, "eval")
        for index, (name, envs) in enumerate(self.eval_envs.items()):
            episodes = []
            driver = Driver(envs, seed=config.seed + 20_000 + index)
            driver.on_episode.append(lambda episode, worker: episodes.append(episode))
            driver(policy, episodes=int(config.cl.eval_eps_per_task))
            episodes = episodes[: config.cl.eval_eps_per_task]
            successes = [success(episode) for episode in episodes]
            self.curves[index].append((self.counters["step"], float(np.mean(successes))))
            self.logger.add({f"eval_return_{index}": float(np.mean([e["reward"].sum() for e in episodes])),
                             f"eval_success_{index}": float(np.mean(successes)),
                             **self._recon_loss(episodes, index)})
        self.logger.add({f"cl_{k}": v for k, v in self.online_metrics().items()})
        self.logger.write(self.counters["step"])

    @torch.no_grad()
    def _recon_loss(self, episodes: list, index: int) -> dict:
        """`eval_recon_loss_{i}`: the world model's loss on task i's evaluation episodes (the original's name)."""
        length = self.config.dataset.length
        store = EpisodeStore(None, minlen=length)
        for episode in episodes:
            store.add(episode)
        if not store.keys():
            return {}
        sampler = ChunkSampler(store, length, False, self.config.seed + index)
        chunks = [sampler.sample() for _ in range(self.config.dataset.batch)]
        batch = to_device(stack_time_major(chunks, keys=self.learner.keys), self.device)
        loss = self.learner.agent.wm.loss(batch)[0]
        return {f"eval_recon_loss_{index}": float(loss)}

    def _reload_curves(self) -> None:
        """A resumed run's evaluation curves so far, from its metrics.jsonl (partial lines skipped)."""
        if not (self.logdir / "metrics.jsonl").exists():
            return
        curves = cl_metrics.read_curves(self.logdir, "success", len(self.eval_tasks), int(self.config.action_repeat))
        for index, (steps, values) in enumerate(curves):
            self.curves[index] += [(int(step), float(value)) for step, value in zip(steps, values)
                                   if step <= self.counters["step"]]

    def boundaries(self) -> list[int]:
        edges = [0]
        for *_, steps in self.schedule:
            edges.append(edges[-1] + steps)
        return edges

    def online_metrics(self) -> dict:
        """Performance now over every evaluated task, and forgetting of the tasks already trained."""
        curves = self._curve_arrays()
        if not curves:
            return {}
        now = self.counters["step"]
        result = {"performance": cl_metrics.performance(list(curves.values()), now)}
        edges = self.boundaries()
        done = [i for i in range(len(self.schedule)) if edges[i + 1] <= now and self.schedule[i][0] in curves]
        if done:
            result["forgetting"] = float(np.mean([cl_metrics.value_at(curves[self.schedule[i][0]], edges[i + 1])
                                                  - cl_metrics.value_at(curves[self.schedule[i][0]], now)
                                                  for i in done]))
        return result

    def _curve_arrays(self) -> dict:
        return {i: (np.array([s for s, _ in points]), np.array([v for _, v in points]))
                for i, points in self.curves.items() if points}

    def summary(self) -> dict:
        curves = self._curve_arrays()
        if len(curves) < len(self.schedule) or len(self.schedule) > len(self.eval_tasks):
            return {}
        ordered = [curves[task_id] for task_id, *_ in self.schedule]
        references = None
        if self.config.cl.reference:  # single-task runs: forward transfer too
            try:
                references = [cl_metrics.reference_curve(self.config.cl.reference, task_id)
                              for task_id, *_ in self.schedule]
            except FileNotFoundError as error:
                print(f"No forward transfer: {error}")
        return {f"cl_{k}": v for k, v in cl_metrics.cl_metrics(ordered, self.boundaries(), references).items()}

    # ----- checkpoints -----

    def _save(self) -> None:
        self.learner.save(self.logdir / "checkpoint.pt", dict(self.counters))

    def close(self) -> None:
        self.learner.close()
        if self.progress is not None:
            self.progress.close()
        self.logger.close()
        for envs in self.eval_envs.values():
            envs.close()
        self.lock.release()


