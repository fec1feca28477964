"""--compile graph (issue 12): the update and the policy step are capture-ready, checked on the CPU by tracing two
consecutive eager calls op by op, and (where a GPU exists) the captured calls equal the eager ones.

A CUDA graph replays the kernels, arguments and memory of the call it captured. So a captured update equals the
eager one exactly when consecutive eager updates (a) never wait for the device (no host sync, no data-dependent
shape), (b) run the same ops with the same non-tensor arguments, and (c) read the same persistent tensors, updated
in place rather than replaced by new ones (a replaced tensor would be read at its captured address forever).
"""

import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from torch_dreamer.agent import graph as graph_lib
from torch_dreamer.agent.agent import Agent
from tests.agent.conftest import make_batch, tiny_config

VECTOR = ("--encoder.cnn_keys", "$^", "--decoder.cnn_keys", "$^")
aten = torch.ops.aten
# Ops that make the host wait for the device: a value read back, or an output whose shape depends on the data.
SYNCS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.item.default, aten.nonzero.default,
         aten.masked_select.default, aten.unique_consecutive.default, aten._unique2.default}


class Trace(TorchDispatchMode):
    """Every op of a call: its name, the shapes/dtypes of its tensors, its other arguments; the host syncs; and the
    storages it read that it did not create (parameters, optimiser state, counters, the input batch)."""

    def __init__(self):
        super().__init__()
        self.ops, self.syncs, self.created, self.external = [], [], set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        fresh = func is aten.lift_fresh.default  # torch.tensor(constant): a new tensor, not kept state
        for value in flat:
            if isinstance(value, torch.Tensor) and value.numel() and not fresh:
                ptr = value.untyped_storage().data_ptr()
                if ptr not in self.created:
                    self.external.add(ptr)
        out = func(*args, **kwargs)
        if str(func).startswith("profiler."):  # torch.optim's record_function markers: no kernels
            return out
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.created.add(value.untyped_storage().data_ptr())
        if func in SYNCS:
            self.syncs.append(str(func))
        self.ops.append((str(func), tuple((tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else repr(v)
                                          for v in flat)))
        return out


def _traced_calls(call, *inputs):
    """Two traced calls after two untraced ones (lazily created optimiser state); returns the traces and the last
    output. Every call gets the same input tensors, as a replay reads its static input buffers."""
    for _ in range(2):
        call(*inputs)
    traces = []
    for _ in range(2):
        with Trace() as trace:
            out = call(*inputs)
        traces.append(trace)
    return traces, out


def _traced_updates(agent, data, state=None, sequence_scores=False):
    traces, (_, metrics) = _traced_calls(agent.train_step, data, state, sequence_scores)
    return traces, metrics


CASES = {
    "vector, discrete (reinforce)": (VECTOR, dict(image=None, vector=5), {"vector": ((5,), "float32")}, True, {}),
    "image, continuous (dynamics)": ((), {}, {"image": ((64, 64, 3), "uint8")}, False, {}),
    "plan2explore, bf16": (VECTOR + ("--expl_behavior", "plan2explore", "--precision", "bf16"),
                           dict(image=None, vector=5), {"vector": ((5,), "float32")}, True, {}),
    "carried state, sequence scores": (VECTOR, dict(image=None, vector=5), {"vector": ((5,), "float32")}, True,
                                       {"carry": True, "sequence_scores": True}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_consecutive_updates_are_the_same_ops_on_the_same_state_without_host_syncs(case):
    flags, batch, space, discrete, options = CASES[case]
    torch.manual_seed(0)
    agent = Agent(tiny_config(*flags), space, 3, discrete)
    data = make_batch(discrete=discrete, **batch)
    state = agent.wm.rssm.initial(2) if options.get("carry") else None
    (first, second), metrics = _traced_updates(agent, data, state, options.get("sequence_scores", False))
    assert first.syncs == [] and second.syncs == []
    assert len(first.ops) > 500 and first.ops == second.ops
    assert first.external == second.external
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())


def test_the_trace_catches_a_replaced_counter_and_a_host_sync():
    """The checks can fail: the slow critic's counter as a new tensor each update, and a Python branch on it."""
    torch.manual_seed(0)
    agent = Agent(tiny_config(*VECTOR), {"vector": ((5,), "float32")}, 3, True)
    ac = agent.task_behavior

    def replaced():
        ac.update_count = ac.update_count + 1  # a new tensor: a replay would keep reading the captured one

    ac.update_slow_target = replaced
    (first, second), _ = _traced_updates(agent, make_batch(image=None, vector=5))
    assert first.syncs == [] and first.external != second.external

    ac.update_slow_target = lambda: bool(ac.update_count % 2 == 0)  # a Python decision on a device value
    (first, _), _ = _traced_updates(agent, make_batch(image=None, vector=5))
    assert "aten.is_nonzero.default" in first.syncs or "aten._local_scalar_dense.default" in first.syncs


def test_consecutive_policy_steps_are_the_same_ops_on_the_same_state_without_host_syncs():
    for mode, discrete in (("train", True), ("eval", True), ("train", False)):
        torch.manual_seed(0)
        agent = Agent(tiny_config(*VECTOR), {"vector": ((5,), "float32")}, 3, discrete)
        obs = {"vector": torch.randn(4, 5), "is_first": torch.zeros(4, dtype=torch.bool)}
        _, state = agent.policy(obs, None, mode)
        (first, second), (action, _) = _traced_calls(agent.policy, obs, state, mode)
        assert first.syncs == [] and second.syncs == [], mode
        assert len(first.ops) > 30 and first.ops == second.ops and first.external == second.external
        if discrete:
            assert torch.equal(action.sum(-1), torch.ones(4)) and set(action.unique().tolist()) <= {0.0, 1.0}


def test_signature_separates_what_a_graph_is_specific_to():
    data = make_batch(image=None, vector=5)
    base = graph_lib.signature((data, None, False))
    assert graph_lib.signature((make_batch(image=None, vector=5, seed=1), None, False)) == base  # values don't matter
    assert graph_lib.signature((make_batch(T=5, image=None, vector=5), None, False)) != base
    assert graph_lib.signature((data, {"deter": torch.zeros(2, 16)}, False)) != base
    assert graph_lib.signature((data, None, True)) != base
    obs = {"vector": np.zeros((4, 5), np.float32), "is_first": np.zeros(4, bool)}
    assert graph_lib.signature((obs, None, "train")) != graph_lib.signature((obs, None, "eval"))
    assert graph_lib.signature((obs, None, "train")) == graph_lib.signature(({k: torch.as_tensor(v) for k, v in obs.items()}, None, "train"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_captured_update_equals_the_eager_update_on_cuda():
    space, flags = {"image": ((64, 64, 3), "uint8")}, ("--precision", "32")
    agents = {}
    for mode in ("none", "graph"):
        torch.manual_seed(0)
        torch.cuda.manual_seed(0)
        agents[mode] = Agent(tiny_config(*flags, "--compile", mode), space, 3, True).cuda()
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    results = {}
    for mode, agent in agents.items():
        torch.cuda.manual_seed(1)
        metrics = []
        for seed in range(graph_lib.WARMUP + 3):  # eager warm-up updates, the capture, two replays
            data = {k: v.cuda() for k, v in make_batch(seed=seed).items()}
            metrics.append(agent.train_step(data)[1])
        results[mode] = (metrics, agent.state_dict())
    assert agents["graph"]._captured is not None and len(agents["graph"]._captured[0].graphs) == 1
    (eager_metrics, eager_state), (graph_metrics, graph_state) = results["none"], results["graph"]
    for key, value in eager_state.items():
        if torch.is_tensor(value) and value.is_floating_point():
            torch.testing.assert_close(graph_state[key], value, rtol=1e-4, atol=1e-5, msg=key)
    for eager, graphed in zip(eager_metrics, graph_metrics):
        for key in ("model_loss", "actor_loss", "critic_loss"):
            torch.testing.assert_close(graphed[key], eager[key], rtol=1e-4, atol=1e-5)
    # The policy step: eval mode (no sampling) on the same weights acts the same, replayed or eager.
    obs = {"image": torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, device="cuda"),
           "is_first": torch.zeros(4, dtype=torch.bool, device="cuda")}
    agents["graph"].load_state_dict(agents["none"].state_dict())
    states = {mode: None for mode in agents}
    for _ in range(graph_lib.WARMUP + 3):
        actions = {}
        for mode, agent in agents.items():
            actions[mode], states[mode] = agent.policy(obs, states[mode], "eval")
        torch.testing.assert_close(actions["graph"], actions["none"])
    assert len(agents["graph"]._captured[1].graphs) == 2  # the first step (no state) and the later ones


class _RecordedGraph:
    """A CPU stand-in for torch.cuda.CUDAGraph: capturing records every op with its argument and output tensors
    (the capture's memory); replay reruns the ops on those tensors and writes each result into the recorded output,
    as a CUDA graph replays its kernels on the captured addresses. Unlike CUDA, the capture itself also runs."""

    def __init__(self):
        self.ops = []

    def replay(self):
        with torch.no_grad():
            for func, args, kwargs, out in self.ops:
                for new, old in zip(tree_flatten(func(*args, **kwargs))[0], tree_flatten(out)[0]):
                    if isinstance(old, torch.Tensor) and new.data_ptr() != old.data_ptr():
                        old.copy_(new)


class _Recorder(TorchDispatchMode):
    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not str(func).startswith("profiler."):
            self.graph.ops.append((func, args, kwargs or {}, out))
        return out


class _FailingRecorder(_Recorder):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is aten.addmm.default:
            raise RuntimeError("operation not permitted when stream is capturing")
        return super().__torch_dispatch__(func, types, args, kwargs)


class _Stream:
    def __init__(self, *args):
        pass

    def wait_stream(self, other):
        pass


def _stand_in_cuda(monkeypatch, recorder=_Recorder):
    import contextlib

    monkeypatch.setattr(torch.cuda, "CUDAGraph", _RecordedGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph, **kwargs: recorder(graph))
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *args: _Stream())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)


@pytest.mark.parametrize("case", ["vector, discrete (reinforce)", "image, continuous (dynamics)", "capture fails"])
def test_replaying_the_recorded_update_and_policy_equals_eager(monkeypatch, case):
    """Captured's plumbing (eager warm-up, static inputs, cloned outputs, keys) and the replay semantics, on the CPU:
    the update and the policy step replayed from their recorded ops equal the eager ones. A capture that fails
    warns once and runs that call and every later one eagerly (the stand-in's failing capture has run nothing)."""
    fails = case == "capture fails"
    _stand_in_cuda(monkeypatch, _FailingRecorder if fails else _Recorder)
    flags, batch, space, discrete, _ = CASES["vector, discrete (reinforce)" if fails else case]
    agents = {}
    for mode in ("eager", "replayed"):
        torch.manual_seed(0)
        agents[mode] = Agent(tiny_config(*flags), space, 3, discrete)
    replayed = agents["replayed"]
    replayed._compiled = []  # as `_compile` leaves it in graph mode
    replayed._captured = (graph_lib.Captured(replayed._train_step, torch.device("cpu")),
                          graph_lib.Captured(replayed._policy, torch.device("cpu")))
    batches = [make_batch(discrete=discrete, seed=seed, **batch) for seed in range(graph_lib.WARMUP + 3)]
    obs = [{**{k: v[0, :2] for k, v in step.items() if k in space}, "is_first": torch.zeros(2, dtype=torch.bool)}
           for step in batches]
    results = {}
    warnings.simplefilter("always")
    for mode, agent in agents.items():
        torch.manual_seed(1)
        metrics, actions, state = [], [], None
        for step, batch in enumerate(batches):
            # The stand-in's capture runs each call once more (a failing one stops at its first matmul).
            extra = mode == "eager" and step == graph_lib.WARMUP and not fails
            if extra:
                agent.train_step(batch)
            with warnings.catch_warnings(record=True) as caught:
                metrics.append(agent.train_step(batch)[1])
            assert len(caught) == int(fails and mode == "replayed" and step == graph_lib.WARMUP), caught
            if extra:
                agent.policy(obs[step], state, "eval")
            action, state = agent.policy(obs[step], state, "eval")
            actions.append(action)
        results[mode] = metrics, actions, agent.state_dict()
    assert [len(captured.graphs) for captured in replayed._captured] == ([0, 0] if fails else [1, 1])
    assert [captured.failed for captured in replayed._captured] == [fails, fails]
    (eager_metrics, eager_actions, eager_state), (metrics, actions, state) = results["eager"], results["replayed"]
    for key, value in eager_state.items():
        if torch.is_tensor(value):
            torch.testing.assert_close(state[key], value, rtol=1e-6, atol=1e-7, msg=key)
    for eager, replay in zip(eager_metrics, metrics):
        assert eager.keys() == replay.keys()
        for key in eager:
            torch.testing.assert_close(replay[key], eager[key], rtol=1e-6, atol=1e-7, msg=key)
    for eager, replay in zip(eager_actions, actions):
        assert torch.equal(replay, eager)
