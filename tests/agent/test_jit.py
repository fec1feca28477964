"""--compile step (and its old spelling --jit True): the scan cell and the imagination step compiled as whole
functions in place (checkpoint keys unchanged); a compiler failure falls back to eager mode with one warning."""

import warnings

import pytest
import torch

from torch_dreamer.agent import compile as compile_lib
from torch_dreamer.agent.agent import Agent
from torch_dreamer.errors import UserError
from tests.agent.conftest import make_batch, tiny_config

OBS = {"vector": ((5,), "float32")}
FLAGS = ("--encoder.cnn_keys", "$^", "--decoder.cnn_keys", "$^")


def _no_compile(fn, **kwargs):
    return fn  # compiling itself is not under test here


@pytest.mark.parametrize("flags,device,conv,expected", [
    (("--compile", "none"), "cpu", False, "none"), (("--compile", "step"), "cpu", True, "step"),
    (("--jit", "True"), "cpu", False, "step"), (("--compile", "auto"), "cuda", True, "step"),
    (("--compile", "auto"), "cpu", False, "step"),                                  # small vector model: overhead-bound
    (("--compile", "auto"), "cpu", True, "none"),                                   # image models: conv-bound
    (("--compile", "auto", "--rssm.deter", "128"), "cpu", False, "step"),           # gym_vector size: faster on 2 threads
    (("--compile", "auto", "--rssm.deter", "200"), "cpu", False, "none"),           # unmeasured: eager
    (("--compile", "auto", "--rssm.deter", "600"), "cpu", False, "none"),           # large: matmul-bound
])
def test_modes(flags, device, conv, expected):
    assert compile_lib.resolve(tiny_config(*flags), device, conv) == expected


def test_graph_and_unknown_modes_are_one_line_errors():
    assert compile_lib.resolve(tiny_config("--compile", "graph"), "cuda") == "graph"
    for flags, device, match in [(("--compile", "graph"), "cpu", "needs a CUDA device"),
                                 (("--compile", "graph", "--actor_ent", "linear(3e-3,3e-4,1e6)"), "cuda",
                                  "actor_ent must be a constant"),
                                 (("--compile", "fast"), "cpu", "must be one of")]:
        with pytest.raises(UserError, match=match) as error:
            compile_lib.resolve(tiny_config(*flags), device)
        assert "\n" not in str(error.value)


def test_compile_keeps_state_dict_keys(monkeypatch):
    monkeypatch.setattr(torch, "compile", _no_compile)
    eager = Agent(tiny_config(*FLAGS, "--compile", "none"), OBS, 3, True)
    jitted = Agent(tiny_config(*FLAGS, "--jit", "True"), OBS, 3, True)
    for agent in (eager, jitted):
        agent.train_step(make_batch(image=None, vector=5))
    assert list(eager.state_dict()) == list(jitted.state_dict())
    assert len(jitted._compiled) == 2 and not eager._compiled
    assert "obs_cell" in vars(jitted.wm.rssm) and "imagine_step" in vars(jitted.wm)


def test_compiler_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(fn, **kwargs):
        def fail(*a, **k):
            raise torch._dynamo.exc.TorchRuntimeError("no C++ compiler on this platform")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    agent = Agent(tiny_config(*FLAGS, "--compile", "step"), OBS, 3, True)
    batch = make_batch(image=None, vector=5)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        _, metrics = agent.train_step(batch)
    assert torch.isfinite(metrics["model_loss"]) and not agent._compiled
    assert "obs_cell" not in vars(agent.wm.rssm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agent.train_step(batch)  # eager from now on, no second warning


def test_other_errors_are_not_swallowed(monkeypatch):
    monkeypatch.setattr(torch, "compile", _no_compile)
    agent = Agent(tiny_config(*FLAGS, "--compile", "step"), OBS, 3, True)
    with pytest.raises(KeyError):
        agent.train_step({"vector": torch.zeros(2, 2, 5)})
