"""`--compile graph`: the whole update (world model, probes, actor-critic, exploration) captured in a CUDA graph.

A CUDA graph records the kernels of one call and replays them with one launch, so the thousands of kernel launches
of an update (issue 12: ~6,400 at the Atari config) stop costing host time. A replay reads and writes exactly the
memory the capture did, so:

- the batch (and a carried state) is copied into static input buffers before each replay, and the outputs (the
  metrics, the last posterior) are cloned out after it, since the next replay overwrites them;
- everything the update keeps between calls is updated in place: parameters, optimiser moments and step counts,
  the non-finite streak, the loss scale, the slow critic and its update counter (`ActorCritic.update_count`);
- the update makes no host sync and takes no Python branch that differs between calls.
  `tests/agent/test_graph.py` checks both on the CPU by tracing two consecutive eager updates op by op.

What would change between calls is refused when the mode is resolved (`compile.resolve`): a schedule that is not a
constant, data-parallel learners (their all-reduce hooks), a device other than CUDA. The first `WARMUP` updates run
eagerly on a side stream (they create the optimiser state and let cuDNN/cuBLAS pick kernels), the next one is
captured and replayed: every batch is trained on exactly once, as in eager mode. A new input signature (another
batch shape, a carried state) captures its own graph.
"""

from __future__ import annotations

import torch

WARMUP = 2


def signature(data: dict, state: dict | None, sequence_scores: bool) -> tuple:
    """What a captured graph is specific to: the shapes and dtypes of its inputs and its flags."""
    shapes = lambda d: tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in d.items()))
    return shapes(data), None if state is None else shapes(state), bool(sequence_scores)


class CapturedUpdate:
    """Wraps `step(data, state, sequence_scores) -> (last, metrics)` (`Agent._train_step`) as a CUDA-graph replay."""

    def __init__(self, step, device: torch.device):
        self.step, self.device = step, device
        self.graphs: dict = {}  # signature -> (graph, static inputs (data, state), static outputs (last, metrics))
        self.calls = 0
        self.capture_seconds = 0.0

    def __call__(self, data: dict, state: dict | None, sequence_scores: bool = False):
        key = signature(data, state, sequence_scores)
        if key not in self.graphs:
            if self.calls < WARMUP:
                self.calls += 1
                return self._warmup(data, state, sequence_scores)
            self.graphs[key] = self._capture(data, state, sequence_scores)
        graph, (static_data, static_state), outputs = self.graphs[key]
        _fill(static_data, data)
        if state is not None:
            _fill(static_state, state)
        graph.replay()
        last, metrics = outputs
        return {k: v.clone() for k, v in last.items()}, {k: v.clone() for k, v in metrics.items()}

    def _warmup(self, data, state, sequence_scores):
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self.step(data, state, sequence_scores)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, data, state, sequence_scores):
        import time

        start = time.perf_counter()
        static_data = {k: torch.empty_like(v, device=self.device) for k, v in data.items()}
        static_state = None if state is None else {k: torch.empty_like(v, device=self.device) for k, v in state.items()}
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        # thread_local: the replay's sampling thread may copy the next batch meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = self.step(static_data, static_state, sequence_scores)
        torch.cuda.synchronize(self.device)
        self.capture_seconds += time.perf_counter() - start
        # Capturing records the kernels without running them: the caller's replay trains on this batch.
        return graph, (static_data, static_state), outputs


def _fill(static: dict, values: dict) -> None:
    for key, buffer in static.items():
        buffer.copy_(values[key], non_blocking=True)
