"""--compile step for real (inductor): the compiled update equals the eager update within float tolerance, and
nothing recompiles once every kind of call has run. One compilation (~70 s on a cold cache on a slow CPU, a few
seconds warm) shared by the tests through a module fixture."""

import pytest
import torch
import torch._dynamo
import torch._inductor.config

from torch_dreamer.agent.agent import Agent
from tests.agent.conftest import make_batch, tiny_config

OBS = {"vector": ((5,), "float32")}
FLAGS = ("--encoder.cnn_keys", "$^", "--decoder.cnn_keys", "$^")
UPDATES = 3


def _run(mode):
    torch.manual_seed(0)
    agent = Agent(tiny_config(*FLAGS, "--compile", mode), OBS, 3, True)
    metrics = [agent.train_step(make_batch(image=None, vector=5, seed=i))[1] for i in range(UPDATES - 1)]
    obs = {"vector": torch.randn(2, 5, generator=torch.Generator().manual_seed(0)),
           "is_first": torch.ones(2, dtype=torch.bool)}
    _, state = agent.policy(obs)
    return agent, metrics, obs, state


@pytest.fixture(scope="module")
def runs(request):
    # The compiled sampling draws the same random numbers as eager (inductor's own RNG is faster but different).
    fallback = torch._inductor.config.fallback_random
    torch._inductor.config.fallback_random = True
    torch._dynamo.reset()
    request.addfinalizer(lambda: setattr(torch._inductor.config, "fallback_random", fallback))
    return {mode: _run(mode) for mode in ("none", "step")}


def test_compiled_update_equals_eager(runs):
    (eager, eager_metrics, *_), (step, step_metrics, *_) = runs["none"], runs["step"]
    assert step._compiled and not eager._compiled
    for ours, ref in zip(step_metrics, eager_metrics):
        for key in ref:
            torch.testing.assert_close(torch.as_tensor(ours[key]).float(), torch.as_tensor(ref[key]).float(),
                                       rtol=1e-4, atol=1e-5, msg=key)
    ref = eager.state_dict()
    for key, value in step.state_dict().items():
        if torch.is_tensor(value):
            torch.testing.assert_close(value, ref[key], rtol=1e-4, atol=1e-5, msg=key)


def test_no_recompilation_in_steady_state(runs):
    step, _, obs, state = runs["step"]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs > 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        step.train_step(make_batch(image=None, vector=5, seed=UPDATES))
        step.policy(obs, state)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert not torch._dynamo.utils.counters["graph_break"]  # whole functions (fullgraph)


def test_compile_time_counts_the_calls_that_compiled(runs):
    eager, step = runs["none"][0], runs["step"][0]
    assert eager.compile_clock.seconds == 0
    seconds = step.compile_clock.seconds
    assert seconds > 0  # the observe cell and imagination step, with and without autograd, and the policy's cell
    step.train_step(make_batch(image=None, vector=5, seed=UPDATES + 1))  # nothing new to compile
    assert step.compile_clock.seconds == seconds
