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
from torch_dreamer.errors import UserError
from torch_dreamer.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from torch_dreamer.runs.spaces import Spaces
from torch_dreamer.tools.logger import MetricsAverager

MAX_NONFINITE = 100  # consecutive skipped world-model updates before the run stops
DATASET_MODES = ("random", "sequential")


def make_sampler(config, store: EpisodeStore, seed: int):
    """The training sampler named by `dataset.mode`: official random chunks, or whole episodes in order."""
    mode = config.dataset.mode
    if mode == "random":
        return ChunkSampler(store, config.dataset.length, config.replay.prioritize_ends, seed)
    if mode == "sequential":
        return SequentialSampler(store, config.dataset.length, config.dataset.batch, seed)
    raise UserError(f"dataset.mode must be one of {', '.join(DATASET_MODES)}, not '{mode}'")


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

    def __init__(self, config, spaces: Spaces, replay: EpisodeStore, device: torch.device):
        self.config, self.spaces, self.replay, self.device = config, spaces, replay, device
        self.agent = Agent(config, spaces.obs, spaces.act_dim, spaces.discrete).to(device)
        self.sampler = make_sampler(config, replay, config.seed)
        # Videos and reports read their own random chunks, so logging never shifts the training stream.
        self.report_sampler = ChunkSampler(replay, config.dataset.length, False, config.seed + 1)
        self.keys = model_keys(spaces)
        self.dataset: BatchLoader | None = None
        self.state: dict | None = None  # carried posterior state {key: (B, ...)} in sequential mode
        self.updates = 0
        self.loaded = False  # True once weights were loaded or trained: only such weights are ever saved
        self.metrics = MetricsAverager()

    def start(self) -> None:
        """Starts the batch stream; call once the replay holds a chunk (after prefill)."""
        if self.dataset is None:
            prefetch = 0 if self.config.deterministic else 4
            self.dataset = BatchLoader(self.sampler, self.config.dataset.batch, self.device,
                                       prefetch=prefetch, seed=None, keys=self.keys)

    def train(self, count: int, step: int) -> None:
        """`count` updates at env step `step` (the schedules' clock)."""
        self.start()
        self.agent.step = step
        for _ in range(count):
            carried = self.state if self.config.dataset.mode == "sequential" else None
            self.state, metrics = self.agent.train_step(next(self.dataset), carried)
            self.metrics.add(metrics)
            self.updates += 1
            self.loaded = True
            if self.agent.nonfinite_updates() >= MAX_NONFINITE:
                raise NonFiniteStop(f"the world-model loss was non-finite for {MAX_NONFINITE} updates in a row; "
                                    "try --precision 32 or a lower --model_opt.lr")

    def report(self) -> dict:
        """Training metrics averaged since the last report, and open-loop videos from a random batch."""
        result = self.metrics.result()
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
            "report_rng": self.report_sampler.rng.bit_generator.state,
            "config": self.config.flat,
            "spaces": self.spaces.to_dict(),
        }

    def save(self, path: pathlib.Path, counters: dict) -> bool:
        """Writes a checkpoint, but only of weights that were loaded or trained (never a fresh model)."""
        if not self.loaded:
            return False
        save_checkpoint(path, self.payload(counters))
        return True

    def load(self, path: pathlib.Path) -> dict | None:
        """Restores weights, optimisers, counters and RNG streams; returns the counters, None without a file."""
        if not pathlib.Path(path).exists():
            return None
        payload = load_checkpoint(path)
        try:
            self.agent.load_state_dict(payload["agent"])
        except RuntimeError as error:
            raise UserError(f"{path} was written with a different model config "
                            f"({str(error).splitlines()[0]}); use another --logdir or the config in config.yaml") from None
        self.agent.load_optimizer_state(payload["optimizers"])
        self.updates = int(payload["counters"]["updates"])
        set_rng_state(payload["rng"])
        _set_sampler_rng(self.sampler, payload.get("sampler_rng"))
        if payload.get("report_rng"):
            self.report_sampler.rng.bit_generator.state = payload["report_rng"]
        self.loaded = True
        return dict(payload["counters"])

    def close(self) -> None:
        if self.dataset is not None:
            self.dataset.close()


class NonFiniteStop(UserError):
    """The run stops because training kept producing non-finite losses (checkpoint saved first)."""


def _sampler_rng(sampler):
    rng = getattr(sampler, "rng", None)
    return rng.bit_generator.state if isinstance(rng, np.random.Generator) else None


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
