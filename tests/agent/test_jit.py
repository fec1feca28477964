"""--jit: hot modules are compiled in place (checkpoint keys unchanged) and a compiler failure
falls back to eager mode with one warning instead of stopping the run."""

import warnings

import pytest
import torch
from torch import nn

from torch_dreamer.agent.agent import Agent
from tests.agent.conftest import make_batch, tiny_config

OBS = {"vector": ((5,), "float32")}
FLAGS = ("--encoder.cnn_keys", "$^", "--decoder.cnn_keys", "$^")


def test_jit_keeps_state_dict_keys(monkeypatch):
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: None)  # compiling itself is not under test
    eager = Agent(tiny_config(*FLAGS, "--jit", "False"), OBS, 3, True)
    jitted = Agent(tiny_config(*FLAGS, "--jit", "True"), OBS, 3, True)
    assert list(eager.state_dict()) == list(jitted.state_dict())
    assert len(jitted._compiled) >= 5 and not eager._compiled


def test_compiler_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(self, *args, **kwargs):
        def fail(*a, **k):
            raise torch._dynamo.exc.TorchRuntimeError("no C++ compiler on this platform")
        self._compiled_call_impl = fail

    monkeypatch.setattr(nn.Module, "compile", broken_compile)
    agent = Agent(tiny_config(*FLAGS, "--jit", "True"), OBS, 3, True)
    batch = make_batch(image=None, vector=5)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        _, metrics = agent.train_step(batch)
    assert torch.isfinite(metrics["model_loss"]) and not agent._compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agent.train_step(batch)  # eager from now on, no second warning


def test_other_errors_are_not_swallowed(monkeypatch):
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: None)
    agent = Agent(tiny_config(*FLAGS, "--jit", "True"), OBS, 3, True)
    with pytest.raises(KeyError):
        agent.train_step({"vector": torch.zeros(2, 2, 5)})
