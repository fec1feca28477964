"""bf16 kept in one dtype through the scan, channels_last convolutions, TF32 and cuDNN autotuning on
CUDA unless --deterministic (issue 12)."""

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from torch_dreamer.agent.agent import Agent
from torch_dreamer.runs import setup
from tests.agent.conftest import make_batch, tiny_config


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _observe(agent, data):
    with torch.no_grad(), agent.autocast():
        prepared = agent.wm.preprocess(data)
        embed = agent.wm.encoder(prepared)
        with CountOps() as count:
            post, _ = agent.wm.rssm.observe(embed, prepared["action"], prepared["is_first"])
    return post, count.ops


def test_bf16_state_stays_bf16_through_the_scan():
    torch.manual_seed(0)
    agent = Agent(tiny_config("--precision", "bf16"), {"image": ((64, 64, 3), "uint8")}, 3, True)
    short, ops_short = _observe(agent, make_batch(T=4, B=3))
    long, ops_long = _observe(agent, make_batch(T=12, B=3))
    assert long["deter"].dtype == torch.bfloat16 and long["logit"].dtype == torch.float32
    casts_per_step = (ops_long["aten._to_copy.default"] - ops_short["aten._to_copy.default"]) / 8
    # Left per step: the float32 LayerNorm of the GRU (in and out), the float32 logits, the sample into bf16.
    assert casts_per_step <= 4, casts_per_step
    features = agent.wm.rssm.feat({k: v[-1] for k, v in long.items()})
    assert features.dtype == torch.bfloat16


def test_fp32_scan_has_no_casts():
    torch.manual_seed(0)
    agent = Agent(tiny_config(), {"image": ((64, 64, 3), "uint8")}, 3, True)
    post, ops = _observe(agent, make_batch(T=4, B=3))
    assert post["deter"].dtype == torch.float32 and ops["aten._to_copy.default"] == 1  # is_first -> keep, once


def test_channels_last_convolutions_in_every_precision():
    space = {"image": ((64, 64, 3), "uint8")}
    for precision, expected in (("bf16", True), ("32", True)):
        agent = Agent(tiny_config("--precision", precision), space, 3, True)
        conv = agent.wm.encoder.cnn[0].weight
        deconv = agent.wm.heads["decoder"].cnn[3].weight  # the second transposed conv
        for weight in (conv, deconv):
            assert weight.is_contiguous(memory_format=torch.channels_last) == expected
            assert weight.is_contiguous() != expected
        assert agent.wm.heads["decoder"].cnn[0].weight.is_contiguous()  # run as a matmul over its flat weight
    _, metrics = agent.train_step(make_batch())
    assert torch.isfinite(metrics["model_loss"])


def test_tf32_and_cudnn_autotuning_unless_deterministic():
    try:
        setup.seed_everything(0, deterministic=False)
        assert torch.backends.cuda.matmul.fp32_precision == "tf32" and torch.backends.cudnn.benchmark
        setup.seed_everything(0, deterministic=True)
        assert torch.backends.cuda.matmul.fp32_precision == "ieee" and not torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    finally:
        torch.use_deterministic_algorithms(False)
        setup.seed_everything(0, deterministic=False)


def test_float16_on_the_cpu_warns_with_the_faster_precision(tmp_path, monkeypatch):
    import pytest

    from torch_dreamer.config import resolve

    for precision, device in [("32", "cpu"), ("bf16", "cpu"), ("16", "cuda")]:
        assert setup.cpu_precision_note(precision, device) is None
    monkeypatch.setattr(setup, "cpu_bf16_hardware", lambda: True)
    assert setup.cpu_precision_note("16", "cpu").endswith("use --precision bf16 (this CPU has bfloat16 instructions)")
    monkeypatch.setattr(setup, "cpu_bf16_hardware", lambda: False)
    assert setup.cpu_precision_note("16", "cpu").endswith("use --precision 32 (this CPU lacks bfloat16 instructions)")
    logdir = tmp_path / "run"
    config = resolve(["gym_vector"], ["--precision", "16", "--device", "cpu", "--logdir", str(logdir)])
    with pytest.warns(UserWarning, match="--precision 16 runs float16 on the CPU"):
        setup.validate_run_keys(config)  # the run's checks, before the logdir is made
    assert not logdir.exists()
