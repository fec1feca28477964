"""The learner: trains the agent on batches from a replay. It holds no env.

Every mode of `dreamer train` drives one `Learner` and differs only in where episodes come from:
- single process (the official loop): an in-process actor steps the envs and adds episodes to the replay,
  and calls `train` every `train_every` env steps (`runs/train.py`);
- env workers: actor processes write episodes into the replay directory, which the learner refreshes, and
  the learner trains at `train_ratio` replayed steps per env step (`runs/workers.py`, `runs/loops.py`);
- offline: a fixed directory of episodes, no env at all (`runs/loops.py`).

One training step, end to end: `BatchLoader` stacks `dataset.batch` chunks of `dataset.length` rows into
a time-major batch {key: (T, B, ...)} -> `Agent.train_step(batch, state)` updates the world model, then
the actor-critic in imagination, and returns the last posterior state {key: (B, ...)} -> in `sequential`
dataset mode that state is carried into the next batch of the same slots (truncated BPTT); in `random`
mode (the official) every chunk starts from zeros.
"""

from __future__ import annotations

import pathlib
import time

import numpy as np
import torch

from torch_dreamer.agent.agent import Agent
from torch_dreamer.data import BatchLoader, ChunkSampler, EpisodeStore, SequentialSampler
from torch_dreamer.data.replay_strategies import UncertaintyChunkSampler, WeightedChunkSampler, make_eviction
from torch_dreamer.errors import UserError
from torch_dreamer.runs.checkpoint import load_run_checkpoint, rng_state, save_checkpoint, set_rng_state
from torch_dreamer.runs.spaces import Spaces
from torch_dreamer.tools.logger import MetricsAverager

MAX_NONFINITE = 100  # consecutive skipped updates of any optimiser before the run stops
# The streaks are device counters: reading them waits for the device, so back-to-back updates read them every
# few updates (and once after each batch of updates).
STREAK_CHECK_EVERY = 10
# The config block each optimiser of `Agent.optimizers()` takes its settings from.
OPTIMIZER_KEYS = {"model": "model_opt", "actor": "actor_opt", "critic": "critic_opt",
                  "expl_model": "expl_opt", "expl_actor": "actor_opt", "expl_critic": "critic_opt"}
OPTIMIZER_SETTINGS = ("lr", "eps", "clip", "wd")
# Keys that never change the model's structure, left out of the model-mismatch message.
RUN_KEYS = ("logdir", "steps", "seed", "device", "progress", "deterministic", "prefill", "eval_every", "log_every",
            "eval_eps", "checkpoint_every", "checkpoint_minutes", "envs", "workers", "eval_workers", "replay_dir",
            "policy_dir", "offline_dir", "learner_only", "jit", "compile", "precision")
DATASET_MODES = ("random", "sequential")


def make_sampler(config, store: EpisodeStore, seed: int):
    """The training sampler named by `dataset.mode`: official random chunks, or whole episodes in order."""
    mode = config.dataset.mode
    if config.replay.ongoing:
        raise UserError("replay.ongoing True (sampling unfinished episodes) is not supported: actors keep "
                        "unfinished episodes to themselves; use --replay.ongoing False (the official default)")
    if config.replay.sampling == "uncertainty":
        if mode != "random":
            raise UserError("replay.sampling uncertainty draws random chunks; use it with --dataset.mode random")
        return UncertaintyChunkSampler(store, config.dataset.length, config.replay.prioritize_ends, seed)
    if mode == "random" and (config.replay.sampling == "reward" or config.replay.recent_past > 0):
        weights = "reward" if config.replay.sampling == "reward" else None
        return WeightedChunkSampler(store, config.dataset.length, config.replay.prioritize_ends, seed,
                                    weights=weights, recent_past=config.replay.recent_past)
    if mode == "random":
        return ChunkSampler(store, config.dataset.length, config.replay.prioritize_ends, seed,
                            minlen=config.replay.minlen, maxlen=config.replay.maxlen)
    if mode == "sequential":
        return SequentialSampler(store, config.dataset.length, config.dataset.batch, seed)
    raise UserError(f"dataset.mode must be one of {', '.join(DATASET_MODES)}, not '{mode}'")


def make_replay(config, directory, spec: dict | None = None) -> EpisodeStore:
    """The run's replay: `replay.capacity` steps sampleable, `replay.eviction` choosing who leaves,
    `replay.storage` saying where they live (see `make_storage`)."""
    eviction = make_eviction(config.replay.eviction, config.seed + 7)
    return EpisodeStore(directory, config.replay.capacity, config.replay.minlen, eviction=eviction, spec=spec,
                        storage=make_storage(config))


def make_storage(config):
    """`replay.storage`: None (the store's in-RAM dict) for `ram`; for `disk` a `DiskStorage` under
    `replay.storage_dir`, by default `{logdir}/replay_cache` (a local disk the run already writes to)."""
    from torch_dreamer.data.disk_storage import storage_for

    return storage_for(config.replay.storage, config.replay.storage_dir, config.logdir)


def episode_spec(spaces: Spaces) -> dict:
    """{key: (step shape, dtype)} every episode of the run's replay must match (see `EpisodeStore`)."""
    return {**{key: (tuple(shape), np.dtype(dtype)) for key, (shape, dtype) in spaces.obs.items()},
            "action": ((spaces.act_dim,), np.dtype(np.float32)), "reward": ((), np.dtype(np.float32))}


def model_keys(spaces: Spaces) -> list[str]:
    """The episode keys a batch must carry: observations of the spaces plus the step keys the model reads.

    Episodes from other sources may hold more (official files carry `discount`, MiniGrid `direction`);
    those never reach a batch, so mixing sources cannot break stacking.
    """
    return [*spaces.obs, "action", "reward", "is_first", "is_last", "is_terminal"]


class Learner:
    """The agent, its training data stream and its counters.

    Args:
        config: the resolved run config.
        spaces: what the agent is built for (from a checkpoint, an env or the episode files).
        replay: the episodes to train on; other threads may add to it while the learner samples.
        device: where the agent and batches live.
    """

    def __init__(self, config, spaces: Spaces, replay: EpisodeStore, device: torch.device, sampler=None,
                 batch: int | None = None):
        self.config, self.spaces, self.replay, self.device = config, spaces, replay, device
        self.agent = Agent(config, spaces.obs, spaces.act_dim, spaces.discrete).to(device)
        # The training stream; a caller may pass its own (e.g. one that tallies where chunks come from).
        self.sampler = sampler if sampler is not None else make_sampler(config, replay, config.seed)
        # Chunks per update: `dataset.batch`, or this rank's share of it with data-parallel learners.
        self.batch = int(batch) if batch else int(config.dataset.batch)
        # Videos and reports read their own random chunks, so logging never shifts the training stream.
        self.report_sampler = ChunkSampler(replay, config.dataset.length, False, config.seed + 1)
        # Uncertainty sampling reports each sequence's surprise back to the sampler, by the chunk's replay_id.
        self.scores = hasattr(self.sampler, "update_priorities")
        self.keys = model_keys(spaces)
        self.dataset: BatchLoader | None = None
        self.state: dict | None = None  # carried posterior state {key: (B, ...)} in sequential mode
        self.updates = 0
        self.loaded = False  # True once weights were loaded or trained: only such weights are ever saved
        self._saved: tuple | None = None  # (path, updates, counters) of the last checkpoint written
        self.metrics = MetricsAverager()

    def start(self) -> None:
        """Starts the batch stream; call once the replay holds a chunk (after prefill)."""
        if self.dataset is None:
            prefetch = 0 if self.config.deterministic else 4
            self.dataset = BatchLoader(self.sampler, self.batch, self.device,
                                       prefetch=prefetch, seed=None,
                                       keys=self.keys + (["replay_id"] if self.scores else []))

    def train(self, count: int, step: int) -> None:
        """`count` updates at env step `step` (the schedules' clock)."""
        self.start()
        self.agent.step = step
        for _ in range(count):
            carried = self.state if self.config.dataset.mode == "sequential" else None
            batch = next(self.dataset)
            ids = batch.pop("replay_id", None)
            self.state, metrics = self.agent.train_step(batch, carried, sequence_scores=self.scores)
            if self.scores:
                self.sampler.update_priorities(ids[0], metrics.pop("sequence_kl"))
            self.metrics.add(metrics)
            self.updates += 1
            self.loaded = True
            if self.updates % STREAK_CHECK_EVERY == 0:
                self.check_streaks()
        self.check_streaks()  # acting waits for the device anyway

    def check_streaks(self) -> None:
        """Stops the run once any optimiser (world model, actor, critic, exploration) skipped
        `MAX_NONFINITE` updates in a row for non-finite gradients."""
        for name, opt in self.agent.optimizers().items():
            if opt.nonfinite >= MAX_NONFINITE:
                key = OPTIMIZER_KEYS.get(name, f"{name}_opt")
                raise NonFiniteStop(f"the {name} loss was non-finite for {MAX_NONFINITE} updates in a row; "
                                    f"try --precision 32 or a lower --{key}.lr")

    def report(self) -> dict:
        """Training metrics averaged since the last report, and open-loop videos from a random batch."""
        result = self.metrics.result()
        if self.agent.compile_clock.seconds:  # `--compile step`: the compilations so far, read at log time
            result["compile_seconds"] = self.agent.compile_clock.seconds
        if self.wants_video():
            chunks = [self.report_sampler.sample() for _ in range(self.config.dataset.batch)]
            from torch_dreamer.data import stack_time_major
            from torch_dreamer.data.batches import to_device

            batch = to_device(stack_time_major(chunks, keys=self.keys), self.device)
            result.update({f"train_{k}": v for k, v in self.agent.report(batch).items()})
        return result

    def wants_video(self) -> bool:
        decoder_keys = self.agent.wm.heads["decoder"].cnn_keys
        return any(key in decoder_keys for key in self.config.log_keys_video)

    # ----- checkpoints -----

    def payload(self, counters: dict) -> dict:
        return {
            "agent": self.agent.state_dict(),
            "optimizers": self.agent.optimizer_state(),
            "counters": {**counters, "updates": self.updates},
            "rng": rng_state(),
            "sampler_rng": _sampler_rng(self.sampler),
            "sampler_rest": _sampler_rest(self.sampler),
            "sampler_state": self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else None,
            "report_rng": self.report_sampler.rng.bit_generator.state,
            "config": self.config.flat,
            "spaces": self.spaces.to_dict(),
            "replay": self.replay.state_dict(),  # membership and eviction state (empty for FIFO)
        }

    def save(self, path: pathlib.Path, counters: dict) -> bool:
        """Writes a checkpoint, but only of weights that were loaded or trained (never a fresh model) and
        only of finite state: a NaN/inf anywhere in the agent or its optimisers raises `NonFiniteState`
        and the last good checkpoint stays. Skips the write when nothing changed since the last one.
        Interrupts wait until the file is complete; a full disk raises `DiskFull` (old file kept)."""
        if not self.loaded:
            return False
        saved = (str(path), self.updates, tuple(sorted(counters.items())))
        if saved == self._saved and pathlib.Path(path).exists():
            return True
        bad = self.nonfinite_state()
        if bad:
            raise NonFiniteState(f"the agent's {bad} became non-finite; kept the last good checkpoint {path}; "
                                 "try --precision 32 or lower learning rates (e.g. --model_opt.lr)")
        save_checkpoint(path, self.payload(counters))
        self._saved = saved
        return True

    def nonfinite_state(self) -> str | None:
        """The name of the first agent or optimiser tensor holding NaN/inf, else None (one sync per device)."""
        named = [(f"state {key}", value) for key, value in self.agent.state_dict().items()
                 if torch.is_tensor(value) and value.is_floating_point()]
        for name, opt in self.agent.optimizers().items():
            for index, state in enumerate(opt.opt.state.values()):
                named += [(f"{name} optimiser {key} (parameter {index})", value) for key, value in state.items()
                          if torch.is_tensor(value) and value.is_floating_point()]
        by_device: dict = {}
        for index, (_, value) in enumerate(named):
            by_device.setdefault(value.device, []).append(index)
        for indices in by_device.values():
            flags = torch.stack([torch.isfinite(named[i][1]).all() for i in indices]).cpu()
            if not bool(flags.all()):
                return named[indices[int((~flags).nonzero()[0])]][0]
        return None

    def load(self, path: pathlib.Path) -> dict | None:
        """Restores weights, optimisers, counters and RNG streams; returns the counters, None without a file."""
        if not pathlib.Path(path).exists():
            return None
        payload = load_run_checkpoint(path)
        saved_config = payload["config"]
        try:
            self.agent.load_state_dict(payload["agent"])
        except RuntimeError as error:
            changed = _changed_keys(saved_config, self.config.flat, skip=RUN_KEYS)
            detail = "; ".join(changed[:6]) if changed else str(error).splitlines()[0][:200]
            raise UserError(f"{path} was written with a different model config ({detail}); resume with that "
                            "run's flags, or use another --logdir") from None
        try:
            self.agent.load_optimizer_state(payload["optimizers"])
        except (KeyError, ValueError, RuntimeError) as error:
            raise UserError(f"{path} holds optimiser states that do not fit this model ({str(error).splitlines()[0][:120]}); "
                            "use another --logdir") from None
        self.apply_optimizer_settings(saved_config)
        self.updates = int(payload["counters"]["updates"])
        set_rng_state(payload["rng"])
        self.replay.load_state_dict(payload.get("replay", {}))
        _set_sampler_rng(self.sampler, payload.get("sampler_rng"))
        _set_sampler_rest(self.sampler, payload.get("sampler_rest"))
        if payload.get("sampler_state") and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(payload["sampler_state"])
        if payload.get("report_rng"):
            self.report_sampler.rng.bit_generator.state = payload["report_rng"]
        self.loaded = True
        return dict(payload["counters"])

    def apply_optimizer_settings(self, saved_config: dict | None = None) -> list[str]:
        """Sets lr, eps, clip and wd of every optimiser from the current config.

        Loading optimiser states restores the learning rates they were saved with; a resumed run uses
        the config it is started with now, so they are set again here. Prints one line listing the keys
        that differ from `saved_config` (the checkpoint's) and returns them.
        """
        for name, opt in self.agent.optimizers().items():
            settings = self.config[OPTIMIZER_KEYS.get(name, f"{name}_opt")]
            for group in opt.opt.param_groups:  # kept in the checkpoint's format too
                group["lr"] = float(settings["lr"])
            opt.lr, opt.eps = float(settings["lr"]), float(settings["eps"])  # what the step reads
            opt.clip, opt.wd = settings["clip"], settings["wd"]
        keys = [f"{block}.{setting}" for block in sorted(set(OPTIMIZER_KEYS.values())) for setting in OPTIMIZER_SETTINGS]
        changed = [line for line in _changed_keys(saved_config or {}, self.config.flat) if line.split(" ")[0] in keys]
        if changed:
            print(f"Resuming with changed optimiser settings: {', '.join(changed)}")
        return changed

    def close(self) -> None:
        if self.dataset is not None:
            self.dataset.close()


def _changed_keys(before: dict, now: dict, skip=()) -> list[str]:
    """`key old -> new` for the keys of `now` whose value differs in `before` (keys missing there are skipped)."""
    return [f"{key} {before[key]} -> {value}" for key, value in now.items()
            if key in before and before[key] != value and key not in skip]


class NonFiniteStop(UserError):
    """The run stops because training kept producing non-finite losses (checkpoint saved first)."""


class NonFiniteState(NonFiniteStop):
    """The agent's state holds NaN/inf, so it is not saved: the last good checkpoint stays."""


def _sampler_rng(sampler):
    rng = getattr(sampler, "rng", None)
    return rng.bit_generator.state if isinstance(rng, np.random.Generator) else None


def _sampler_rest(sampler):
    """The unfinished sequence a chunk sampler carries into its next chunk (`replay.maxlen` > the chunk
    length), as tensors: without it a resumed run would sample a different stream than an uncut one."""
    rest = getattr(sampler, "_rest", None)
    if not isinstance(rest, dict):
        return None
    # A copy: the rows may be read-only views of a disk-backed replay (`replay.storage disk`).
    return {key: torch.from_numpy(np.array(value)) for key, value in rest.items()}


def _set_sampler_rest(sampler, state) -> None:
    if state and hasattr(sampler, "_rest"):
        sampler._rest = {key: value.numpy() for key, value in state.items()}


def _set_sampler_rng(sampler, state) -> None:
    rng = getattr(sampler, "rng", None)
    if state and isinstance(rng, np.random.Generator):
        rng.bit_generator.state = state


class Rate:
    """Events per second since the last `read()`: updates/s and env steps/s for the logs."""

    def __init__(self, value: int = 0):
        self._last = (time.perf_counter(), value)

    def read(self, value: int) -> float:
        now = time.perf_counter()
        last_time, last_value = self._last
        self._last = (now, value)
        return (value - last_value) / max(now - last_time, 1e-9)
