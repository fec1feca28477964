"""Item 1: Ctrl-C in the first moments of a resumed run never overwrites the trained checkpoint with a fresh
model, and never claims a checkpoint was saved."""

import pytest
import torch

from torch_dreamer.runs import learner as learner_module
from torch_dreamer.runs.checkpoint import load_checkpoint
from tests.reliability.conftest import make_trainer


def same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["reading the checkpoint", "loading optimiser states", "claiming the logdir"])
def test_01_ctrl_c_while_a_resumed_run_starts_keeps_the_checkpoint(tmp_path, capsys, monkeypatch, where):
    make_trainer(tmp_path, 40).run()
    before = load_checkpoint(tmp_path / "checkpoint.pt")
    assert before["counters"]["updates"] > 0 and before["optimizers"]["model"]["opt"]["state"]
    capsys.readouterr()
    if where == "reading the checkpoint":
        monkeypatch.setattr(learner_module, "load_run_checkpoint", interrupt)
    elif where == "loading optimiser states":  # the weights are in, the optimisers not yet
        monkeypatch.setattr(learner_module.Agent, "load_optimizer_state", interrupt)
    else:
        monkeypatch.setattr("torch_dreamer.runs.setup.claim_logdir", interrupt)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, 80).run()
    out = capsys.readouterr().out
    assert "checkpoint" not in out
    after = load_checkpoint(tmp_path / "checkpoint.pt")
    assert after["counters"] == before["counters"]
    assert same(after["optimizers"], before["optimizers"]) and same(after["agent"], before["agent"])
    monkeypatch.undo()
    assert make_trainer(tmp_path, 60).run()["updates"] > before["counters"]["updates"]  # and it resumes


def test_01_ctrl_c_after_the_load_saves_the_same_weights(tmp_path, capsys, monkeypatch):
    """Once loaded, an interrupted run writes a checkpoint again: the loaded weights, never fresh ones."""
    make_trainer(tmp_path, 40).run()
    before = load_checkpoint(tmp_path / "checkpoint.pt")
    from tests.reliability.conftest import Chain

    def first_step(env, call, out):
        if call == "step":
            raise KeyboardInterrupt
        return out

    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, 80, env=Chain(fault=first_step)).run()
    assert "checkpoint saved" in capsys.readouterr().out.replace("episodes and checkpoint saved", "checkpoint saved")
    after = load_checkpoint(tmp_path / "checkpoint.pt")
    assert after["counters"]["updates"] == before["counters"]["updates"]
    assert same(after["agent"], before["agent"])
