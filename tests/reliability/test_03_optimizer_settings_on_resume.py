"""Item 3: a resumed run uses the optimiser settings it is started with now, and says which changed."""

import pytest

from torch_dreamer.runs.checkpoint import load_checkpoint
from tests.reliability.conftest import make_trainer


def test_03_resume_applies_the_current_optimiser_settings(tmp_path, capsys):
    make_trainer(tmp_path, 40).run()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["optimizers"]["model"]["opt"]["param_groups"][0]["lr"] == 3e-4
    capsys.readouterr()
    changes = ["--model_opt.lr", "3e-5", "--actor_opt.eps", "1e-6", "--critic_opt.clip", "10", "--model_opt.wd", "0"]
    trainer = make_trainer(tmp_path, 60, extra=changes)
    trainer.run()
    lines = [line for line in capsys.readouterr().out.splitlines() if "changed optimiser settings" in line]
    assert len(lines) == 1
    for text in ("model_opt.lr 0.0003 -> 3e-05", "actor_opt.eps 1e-05 -> 1e-06", "critic_opt.clip 100 -> 10",
                 "model_opt.wd 1e-06 -> 0.0"):
        assert text in lines[0]
    opts = trainer.agent.optimizers()
    assert all(group["lr"] == pytest.approx(3e-5) for group in opts["model"].opt.param_groups)
    assert opts["model"].lr == pytest.approx(3e-5)  # the rate the update step uses
    assert opts["actor"].eps == 1e-6 and opts["critic"].clip == 10 and opts["model"].wd == 0.0
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["optimizers"]["model"]["opt"]["param_groups"][0]["lr"]
    assert saved == pytest.approx(3e-5)


def test_03_unchanged_settings_print_nothing(tmp_path, capsys):
    make_trainer(tmp_path, 40).run()
    make_trainer(tmp_path, 60).run()
    assert "changed optimiser settings" not in capsys.readouterr().out
