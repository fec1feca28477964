"""Data-parallel learners: one agent trained by N processes with torch.distributed (docs/distributed.md).

    torchrun --nproc_per_node N -m torch_dreamer.cli train --workers 4 ...   # N learners, NCCL on GPUs, gloo on CPU
    dreamer train --gpus N ... | --nproc N ...                               # the same, torchrun started for you

Every rank runs the same lockstep loop. Rank 0, the leader, is the run everybody else knows: it holds the
logdir lock, the logger, the actors (`--workers`, process or Ray) and their policy folder, and it alone
writes checkpoints. Each loop turn the leader decides a plan (refresh the replay, build the learner, run
k updates at env step s, or stop) from its view of the replay and broadcasts it; every rank then does
exactly that, so every rank runs the same number of updates and issues the same collectives.

- Batches: `dataset.batch` is the global batch; each rank samples batch / N chunks with its own seed from
  its own copy of the one replay directory (refreshed when the leader refreshes).
- Gradients: each optimiser averages its gradients over the ranks right after backward, bucketed and
  overlapped with backward (`agent/grad_sync.py`), so the clip and Adam step see the gradient of the global
  batch on every rank and the weights stay equal.
- Counters: updates are the same on every rank; env steps are the leader's replay count, and the replay
  ratio is accounted with the global batch.
- Start and resume: every rank loads the same checkpoint, then takes a seed of its own for sampling and
  imagination noise, and rank 0's weights and buffers are broadcast to all.
- Reward normalisers average their batch statistics over ranks (`grad_sync.mean_over_ranks`).
"""

from __future__ import annotations

import datetime
import math
import os
import pathlib
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from torch_dreamer.data import EpisodeStore
from torch_dreamer.agent import compile as compile_lib
from torch_dreamer.errors import UserError
from torch_dreamer.runs import setup
from torch_dreamer.runs.learner import Learner, NonFiniteStop, Rate, _set_sampler_rng, episode_spec, make_sampler, make_storage
from torch_dreamer.runs.loops import (IDLE_SLEEP_S, REFRESH_S, ReplayLoop, _log_learner, _poll, _stop_workers, find_spaces,
                                      train_ratio)
from torch_dreamer.runs.policy_store import clear_stop, publish_policy, write_json
from torch_dreamer.runs.train import holds_chunk, replay_dir, resume_seed
from torch_dreamer.runs.workers import actor_specs, make_pool
from torch_dreamer.tools.files import join
from torch_dreamer.tools.logger import Progress

MAX_PLAN_UPDATES = 8  # updates per broadcast plan with actors: fewer syncs, at most this much past the target
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)  # the leader may checkpoint a large model meanwhile
PLAN_KEYS = ("updates", "step", "refresh", "build", "stop")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the learners (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int
    world: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def ranks_from_env() -> Ranks | None:
    """The ranks torchrun set for this process, or None outside a launch of more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


# ----- launching -----

def launch_request(argv: list[str]) -> tuple[int, bool, list[str]] | None:
    """(processes, whether they must be GPUs, the other flags) from `--nproc N` or `--gpus N`, else None."""
    for flag in ("--nproc", "--gpus"):
        for index, arg in enumerate(argv):
            key, _, value = arg.partition("=")
            if key != flag:
                continue
            rest = argv[:index] + argv[index + (1 if value else 2):]
            value = value or (argv[index + 1] if index + 1 < len(argv) else "")
            if not value.isdigit() or int(value) < 1:
                raise UserError(f"{flag} takes a number of learner processes >= 1, not '{value}'")
            return int(value), flag == "--gpus", rest
    return None


def launch(argv: list[str], resolve) -> int | None:
    """`dreamer train --nproc N` / `--gpus N`: checks the config here (one line on a mistake), then runs
    `torchrun --standalone --nproc_per_node N -m torch_dreamer.cli train ...` and returns its exit code.
    None when argv asks for no launch. `resolve(argv)` turns the flags into the config."""
    request = launch_request(argv)
    if request is None:
        return None
    count, gpus, rest = request
    if ranks_from_env() is not None:
        raise UserError("--nproc/--gpus starts torchrun itself; under torchrun drop them (torchrun's "
                        "--nproc_per_node sets the learners)")
    if gpus and torch.cuda.device_count() < count:
        raise UserError(f"--gpus {count} asked for, but PyTorch sees {torch.cuda.device_count()} CUDA GPUs; "
                        f"use --gpus {torch.cuda.device_count()} or --nproc {count} for CPU learners (gloo)")
    config = resolve(rest)
    setup.validate_run_keys(config)
    check_config(config, count)
    if count == 1:  # one learner needs no torchrun: the plain run of the same flags
        from torch_dreamer.cli import cmd_train

        return cmd_train(rest)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={count}",
               "-m", "torch_dreamer.cli", "train", *rest]
    return _wait(subprocess.Popen(command))


def _wait(process: subprocess.Popen) -> int:
    """The launch's exit code; an interrupt here (Ctrl-C, or SIGTERM from a scheduler) is passed on as
    SIGTERM, which makes torchrun stop every rank, and the ranks save as they do on Ctrl-C."""
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        raise


# ----- config -----

def check_config(config, world: int) -> None:
    """One line for a config data-parallel learners cannot run (`lr_scaling` is among the choices
    `setup.validate_run_keys` checks before this)."""
    if world <= 1:
        return
    if config.dataset.batch % world:
        fit = max(world, round(config.dataset.batch / world) * world)
        raise UserError(f"--dataset.batch {config.dataset.batch} is the global batch and must divide by the {world} "
                        f"learners; use --dataset.batch {fit}")
    if not (config.offline_dir or config.workers > 0 or config.eval_workers > 0 or config.learner_only):
        raise UserError(f"{world} data-parallel learners take their episodes from env workers: add --workers N "
                        "(or --learner_only True with `dreamer actor`s elsewhere, or --offline_dir)")
    if str(config.device).startswith("cuda:"):
        raise UserError(f"--device {config.device} names one GPU, but each learner takes its own (cuda:LOCAL_RANK); "
                        "use --device cuda or auto")
    compile_lib.check_processes(config, world)


def lr_factor(scaling: str, world: int) -> float:
    """How much `lr_scaling` multiplies every learning rate with `world` learners."""
    return {"none": 1.0, "linear": float(world), "sqrt": math.sqrt(world)}[scaling]


def scale_learning_rates(config, world: int):
    """The config with every `*_opt.lr` multiplied by `lr_factor` (unchanged for `lr_scaling none`)."""
    factor = lr_factor(str(config.lr_scaling), world)
    if factor == 1.0:
        return config
    keys = [key for key in config.flat if key.endswith("_opt.lr")]
    return config.update({key: float(config.flat[key]) * factor for key in keys})


def rank_seed(seed: int, rank: int, updates: int) -> int:
    """The seed of one rank's batch sampling and imagination noise, distinct per rank and per resume point."""
    return int(np.random.SeedSequence([int(seed) % 2**32, rank, updates]).generate_state(1)[0] % 2**31)


# ----- process group and learner -----

def start(config, ranks: Ranks) -> torch.device:
    """Joins the process group torchrun set up (NCCL for GPUs, gloo for CPUs); returns this rank's device."""
    device = rank_device(str(config.device), ranks)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))  # learners share the CPUs
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return device


def rank_device(name: str, ranks: Ranks) -> torch.device:
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    device = setup.resolve_device(name)
    if device.type != "cuda":
        return device
    if ranks.local_rank >= torch.cuda.device_count():
        raise UserError(f"learner {ranks.rank} needs GPU {ranks.local_rank}, but PyTorch sees "
                        f"{torch.cuda.device_count()}; start at most that many learners per machine")
    return torch.device("cuda", ranks.local_rank)


def rank_storage(config, ranks: Ranks):
    """The replay's storage; with `replay.storage disk` each rank caches into its own folder."""
    if ranks.leader or str(config.replay.storage) != "disk":
        return make_storage(config)
    base = str(config.replay.storage_dir) or str(pathlib.Path(str(config.logdir)).expanduser() / "replay_cache")
    return make_storage(config.update({"replay.storage_dir": f"{base}-rank{ranks.rank}"}))


def build_learner(config, replay: EpisodeStore, checkpoint: pathlib.Path, device: torch.device,
                  ranks: Ranks) -> tuple[Learner, dict | None]:
    """This rank's learner: its share of the batch, its own sampling seed, the checkpoint (every rank
    loads the same file), then rank 0's weights on every rank. Returns it and the checkpoint's counters."""
    spaces = find_spaces(config, checkpoint, replay)
    replay.set_spec(episode_spec(spaces))
    batch = config.dataset.batch // ranks.world
    seed = rank_seed(config.seed, ranks.rank, 0)
    sampler = make_sampler(config.update({"dataset.batch": batch}), replay, seed)
    learner = Learner(config, spaces, replay, device, sampler=sampler, batch=batch)
    counters = learner.load(checkpoint)
    if counters is not None:  # every rank restored rank 0's random streams: each takes its own again
        seed = rank_seed(config.seed, ranks.rank, learner.updates)
        _set_sampler_rng(learner.sampler, np.random.default_rng(seed).bit_generator.state)
    setup.seed_everything(seed, config.deterministic)
    broadcast_state(learner.agent)
    return learner, counters


def broadcast_state(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank, one flat broadcast per dtype."""
    groups: dict = {}
    for tensor in module.state_dict().values():
        if torch.is_tensor(tensor):
            groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for tensors in groups.values():
        flat = torch._utils._flatten_dense_tensors(tensors)
        dist.broadcast(flat, src=0)
        torch._foreach_copy_(tensors, list(torch._utils._unflatten_dense_tensors(flat, tensors)))


def share_plan(plan: dict | None, device: torch.device) -> dict:
    """The leader's plan on every rank (followers pass None)."""
    values = torch.tensor([int(plan[key]) for key in PLAN_KEYS] if plan else [0] * len(PLAN_KEYS), dtype=torch.int64,
                          device=device)
    dist.broadcast(values, src=0)
    return dict(zip(PLAN_KEYS, values.tolist()))


def make_plan(updates=0, step=0, refresh=False, build=False, stop=False) -> dict:
    return {"updates": updates, "step": step, "refresh": refresh, "build": build, "stop": stop}


# ----- the leader and the followers -----

class LeadLoop(ReplayLoop):
    """The leader's logdir, lock, logger and checkpoints, around a learner built the data-parallel way."""

    def __init__(self, config, replay: EpisodeStore, multiplier: int, ranks: Ranks, device: torch.device):
        super().__init__(config, replay, multiplier)
        self.ranks, self.device = ranks, device

    def build_learner(self) -> dict:
        self.learner, counters = build_learner(self.config, self.replay, self.checkpoint_path, self.device, self.ranks)
        setup.write_config(self.config, self.logdir)
        if counters is None:
            self.learner.train(int(self.config.pretrain), 0)
        self._saved_at = (time.monotonic(), self.learner.updates)
        return counters or {}


class Follower:
    """A rank other than 0: learns in step with the leader; no logdir lock, logs, actors or checkpoints."""

    def __init__(self, config, replay: EpisodeStore, ranks: Ranks, device: torch.device):
        self.config, self.replay, self.ranks, self.device = config, replay, ranks, device
        self.checkpoint = pathlib.Path(str(config.logdir)).expanduser() / "checkpoint.pt"
        setup.seed_everything(config.seed, config.deterministic)  # the same initial weights as the leader's
        self.learner: Learner | None = None

    def plan(self) -> None:  # the leader's plan arrives by broadcast
        return None

    def build(self) -> Learner:
        self.learner, counters = build_learner(self.config, self.replay, self.checkpoint, self.device, self.ranks)
        if counters is None:
            self.learner.train(int(self.config.pretrain), 0)
        return self.learner

    def after(self, plan: dict) -> None:
        """Nothing: logs, weights for the actors and checkpoints are the leader's."""

    def finish(self, error: BaseException | None) -> None:
        if self.learner is not None:
            self.learner.close()


class WorkersLead:
    """The leader with actors (`--workers` as processes or Ray tasks, or `--learner_only` with remote
    `dreamer actor`s): the pacing and bookkeeping of `loops.train_with_workers`, decided for all ranks."""

    def __init__(self, config, replay: EpisodeStore, ranks: Ranks, device: torch.device):
        self.config, self.replay = config, replay
        self.loop = LeadLoop(config, replay, config.action_repeat, ranks, device)
        self.policy_dir = str(config.policy_dir) if config.policy_dir else self.loop.logdir / "policy"
        self.eval_store = EpisodeStore(self.loop.logdir / "eval_episodes", config.replay.capacity / 10, 1)
        clear_stop(self.policy_dir)
        specs = actor_specs(config, replay.directory, self.eval_store.directory, self.policy_dir)
        done = replay.total_episodes + self.eval_store.total_episodes
        self.pool = make_pool(config.worker_backend, [{**spec, "seed": resume_seed(spec["seed"], done)} for spec in specs])
        self.progress = Progress(int(config.steps), replay.total_steps, disable=None if config.progress else True,
                                 multiplier=config.action_repeat)
        self.step, self.last_refresh = replay.total_steps, 0.0
        self.published = self.next_log = self.next_save = 0
        self.rates = (Rate(0), Rate(replay.total_steps))
        self.pool.start()
        print(f"Started {len(self.pool.specs)} {config.worker_backend} workers for {ranks.world} learners; "
              f"prefill {int(config.prefill)} steps.")
        write_json(join(self.policy_dir, "progress.json"), {"updates": 0, "step": replay.total_steps})

    @property
    def learner(self) -> Learner | None:
        return self.loop.learner

    def plan(self) -> dict:
        config, learner = self.config, self.learner
        refresh = time.time() - self.last_refresh >= REFRESH_S
        if refresh:
            self.poll()
        if learner is None:
            ready = self.replay.total_steps >= config.prefill and holds_chunk(self.replay, config.dataset.length)
            return make_plan(step=self.step, refresh=refresh, build=refresh and ready)
        if self.step >= config.steps:
            return make_plan(step=self.step, stop=True)
        target = config.pretrain + (self.step - config.prefill) * train_ratio(config) / (
            config.dataset.batch * config.dataset.length)
        updates = min(MAX_PLAN_UPDATES, max(0, math.ceil(target - learner.updates)))
        return make_plan(updates=updates, step=self.step, refresh=refresh)

    def poll(self) -> None:
        _poll(self.pool, self.replay, self.eval_store, self.loop)
        self.step, self.last_refresh = self.replay.total_steps, time.time()
        updates = self.learner.updates if self.learner is not None else 0
        # What actors throttle on (limit_step_ratio): one small file, read cheaply from any machine.
        write_json(join(self.policy_dir, "progress.json"), {"updates": updates, "step": self.step})
        self.progress.update(self.step, updates, **self.loop.last_returns)

    def build(self) -> Learner:
        self.loop.build_learner()
        learner = self.learner
        publish_policy(self.policy_dir, learner.agent, learner.spaces, self.config, learner.updates, self.step)
        self.published, self.rates = learner.updates, (Rate(learner.updates), Rate(self.step))
        self.next_log = self.next_save = self.step
        return learner

    def after(self, plan: dict) -> None:
        learner, config = self.learner, self.config
        if learner is None:
            return
        if learner.updates - self.published >= config.policy_refresh:
            publish_policy(self.policy_dir, learner.agent, learner.spaces, config, learner.updates, self.step)
            self.published = learner.updates
        if self.step >= self.next_log:
            _log_learner(self.loop, self.step, self.rates, self.policy_dir)
            self.next_log = self.step + config.log_every
        if self.step >= self.next_save or self.loop.checkpoint_due():
            self.loop.save(self.step)
            self.next_save = self.step + config.eval_every

    def finish(self, error: BaseException | None) -> None:
        """Stops the actors (they save their unfinished episodes) and checkpoints, whatever ended the run."""
        try:
            if isinstance(error, KeyboardInterrupt):
                print(f"\nInterrupted at step {self.step}; stopping workers (they save their unfinished episodes).")
            line = _stop_workers(self.pool, self.policy_dir, self.replay, self.loop)
            if isinstance(error, NonFiniteStop):
                raise UserError(f"{error}; {line}") from None
            if "not saved" in line:
                print(line)
        finally:
            self.progress.close()
            self.loop.close()

    def result(self) -> dict:
        return {"step": self.replay.total_steps, "updates": self.learner.updates if self.learner else 0,
                "worker_restarts": self.pool.restarts, **self.loop.last_returns}


class OfflineLead:
    """The leader of an offline run (`--offline_dir`): `--steps` counts updates, one plan per update so
    logs and checkpoints land on the same updates as in one process; no evaluation envs."""

    def __init__(self, config, replay: EpisodeStore, ranks: Ranks, device: torch.device):
        self.config, self.replay = config, replay
        self.loop = LeadLoop(config, replay, 1, ranks, device)
        self.progress = Progress(int(config.steps), 0, disable=None if config.progress else True)
        self.rate = Rate(0)

    @property
    def learner(self) -> Learner | None:
        return self.loop.learner

    def plan(self) -> dict:
        learner = self.learner
        if learner is None:
            return make_plan(build=True)
        if learner.updates >= self.config.steps:
            return make_plan(step=learner.updates, stop=True)
        return make_plan(updates=1, step=learner.updates)

    def build(self) -> Learner:
        self.loop.build_learner()
        self.rate = Rate(self.learner.updates)
        return self.learner

    def after(self, plan: dict) -> None:
        learner, config, loop = self.learner, self.config, self.loop
        if not plan["updates"]:
            return
        self.progress.update(learner.updates, learner.updates, **loop.last_returns)
        if learner.updates % config.log_every == 0:
            loop.logger.add(learner.report())
            loop.logger.add({"updates_per_s": self.rate.read(learner.updates), **self.replay.stats()})
            loop.logger.write(learner.updates)
        if learner.updates % config.eval_every == 0 or learner.updates >= config.steps or loop.checkpoint_due():
            loop.save(learner.updates)

    def finish(self, error: BaseException | None) -> None:
        try:
            if self.learner is not None:
                saved, problems = self.loop.safe_save(self.learner.updates)
                if error is not None or problems:
                    print(f"Checkpoint {'saved' if saved else 'not saved'} in {self.loop.logdir}"
                          + "".join(f"; {problem}" for problem in problems) + ".")
        finally:
            self.progress.close()
            self.loop.close()

    def result(self) -> dict:
        return {"updates": self.learner.updates if self.learner else 0, **self.loop.last_returns}


# ----- the loop -----

def run_lockstep(side, replay: EpisodeStore, ranks: Ranks, device: torch.device) -> None:
    """Every rank: take the leader's plan, then refresh the replay, build the learner, run the updates."""
    learner, error = None, None
    try:
        while True:
            plan = share_plan(side.plan(), device)
            if plan["refresh"] and not ranks.leader:
                replay.refresh()  # the leader refreshed while planning
            if plan["build"] and learner is None:
                learner = side.build()
            if plan["stop"]:
                break
            if plan["updates"]:
                learner.train(plan["updates"], plan["step"])
            elif not plan["build"]:
                time.sleep(IDLE_SLEEP_S)
            side.after(plan)
    except BaseException as raised:
        error = raised
        raise
    finally:
        side.finish(error)


def open_replay(config, ranks: Ranks) -> EpisodeStore:
    """This rank's copy of the run's one replay: the shared replay folder, or the offline episodes."""
    if config.offline_dir:
        from torch_dreamer.data.minari import convert_minari, is_minari

        source, logdir = str(config.offline_dir), pathlib.Path(str(config.logdir)).expanduser()
        if is_minari(source):
            if ranks.leader:
                convert_minari(source[len("minari:"):], logdir / "offline_episodes")
            dist.barrier()  # the conversion is done before anyone reads it
            source = logdir / "offline_episodes"
        capacity = config.replay.capacity if config.replay.capacity else None
        replay = EpisodeStore(source, capacity, config.replay.minlen, storage=rank_storage(config, ranks))
        if not holds_chunk(replay, config.dataset.length):
            raise UserError(f"no episode in {config.offline_dir} has dataset.length={config.dataset.length} steps; "
                            "lower --dataset.length or --replay.minlen")
        return replay
    logdir = pathlib.Path(str(config.logdir)).expanduser()
    return EpisodeStore(replay_dir(config, logdir), config.replay.capacity, config.replay.minlen,
                        storage=rank_storage(config, ranks))


def train_data_parallel(config, ranks: Ranks) -> dict | None:
    """One rank of a data-parallel run (under torchrun); the leader returns the run's result, others None."""
    check_config(config, ranks.world)
    device = start(config, ranks)
    try:
        scaled = scale_learning_rates(config, ranks.world)
        if ranks.leader and scaled is not config:
            print(f"lr_scaling {config.lr_scaling}: learning rates x{lr_factor(str(config.lr_scaling), ranks.world):.3g} "
                  f"for {ranks.world} learners")
        replay = open_replay(scaled, ranks)
        if not ranks.leader:
            run_lockstep(Follower(scaled, replay, ranks, device), replay, ranks, device)
            return None
        side = (OfflineLead if config.offline_dir else WorkersLead)(scaled, replay, ranks, device)
        run_lockstep(side, replay, ranks, device)
        return {**side.result(), "learners": ranks.world}
    finally:
        dist.destroy_process_group()
