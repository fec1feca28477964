"""`--compile graph`: the whole update (world model, probes, actor-critic, exploration) and the policy step
captured in CUDA graphs.

A CUDA graph records the kernels of one call and replays them with one launch, so the thousands of kernel launches
of an update (issue 12: ~6,400 at the Atari config) stop costing host time. A replay reads and writes exactly the
memory the capture did, so:

- the inputs (the batch and a carried state; the observations and the policy state) are copied into static
  buffers before each replay, and the outputs (metrics, the last posterior; actions and the new policy state)
  are cloned out after it, since the next replay overwrites them;
- everything the update keeps between calls is updated in place: parameters, optimiser moments and step counts,
  the non-finite streak, the loss scale, the slow critic and its update counter (`ActorCritic.update_count`);
- the update makes no host sync and takes no Python branch that differs between calls.
  `tests/agent/test_graph.py` checks both on the CPU by tracing two consecutive eager updates op by op.

What would change between calls is refused when the mode is resolved (`compile.resolve`): a schedule that is not a
constant, data-parallel learners (their all-reduce hooks), a device other than CUDA. The first `WARMUP` updates run
eagerly on a side stream (they create the optimiser state and let cuDNN/cuBLAS pick kernels), the next one is
captured and replayed: every batch is trained on exactly once, as in eager mode. A new input signature (another
batch shape, a carried state, another policy mode or number of envs) captures its own graph.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

WARMUP = 2


def signature(inputs) -> tuple:
    """What a captured graph is specific to: the structure of its inputs, the shapes and dtypes of their arrays
    and the values of everything else (flags, modes)."""
    return _signature(*tree_flatten(inputs))


def _signature(leaves: list, spec) -> tuple:
    return str(spec), tuple((tuple(x.shape), torch.as_tensor(x).dtype) if _is_array(x) else ("value", x)
                            for x in leaves)


class Captured:
    """`fn(*inputs)` (tensors or arrays nested in dicts/tuples, plus constants) replayed from CUDA graphs."""

    def __init__(self, fn, device: torch.device):
        self.fn, self.device = fn, device
        self.graphs: dict = {}  # signature -> (graph, static input leaves, static outputs)
        self.calls = 0
        self.failed = False  # a capture failed: every call runs eagerly

    def __call__(self, *inputs):
        if self.failed:
            return self.fn(*inputs)
        leaves, spec = tree_flatten(inputs)  # once per call: the policy step runs this every env step
        key = _signature(leaves, spec)
        if key not in self.graphs:
            if self.calls < WARMUP:
                self.calls += 1
                return self._warmup(inputs)
            try:
                self.graphs[key] = self._capture(leaves, spec)
            except Exception as error:  # what cannot be captured varies by op, library and driver
                # A capture records without running, so nothing of this call has happened yet: run it eagerly.
                warnings.warn(f"CUDA-graph capture failed ({type(error).__name__}: {error}); running eagerly "
                              "from now on (--compile none)")
                self.failed, self.graphs = True, {}
                return self.fn(*inputs)
        graph, static, outputs = self.graphs[key]
        for buffer, value in zip(static, leaves):
            if buffer is not None:
                buffer.copy_(torch.as_tensor(value), non_blocking=True)
        graph.replay()
        return tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, outputs)

    def _warmup(self, inputs):
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self.fn(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, leaves: list, spec):
        # Filled with this call's inputs already, so the buffers never hold garbage (a capture records, it does not
        # run; tests/agent/test_graph.py's CPU stand-in runs it).
        static = [torch.as_tensor(x).to(self.device, copy=True) if _is_array(x) else None for x in leaves]
        call_inputs = tree_unflatten([b if b is not None else x for b, x in zip(static, leaves)], spec)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        # thread_local: another thread (the replay's batch prefetch) may use the device meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = self.fn(*call_inputs)
        torch.cuda.synchronize(self.device)
        # Capturing records the kernels without running them: the caller's replay runs them on these inputs.
        return graph, static, outputs


def _is_array(x) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))
