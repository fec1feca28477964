"""Item 5: Ctrl-C / SIGTERM during a checkpoint or episode write waits until the file is complete, and a
full disk stops the run with one line naming the path and the space needed, keeping the last good files."""

import contextlib
import errno
import os
import signal

import numpy as np
import pytest
import torch

from torch_dreamer.cli import main
from torch_dreamer.data import episodes as episodes_module
from torch_dreamer.data import list_episodes, load_episode, save_episode
from torch_dreamer.errors import UserError
from torch_dreamer.runs import checkpoint as checkpoint_module
from torch_dreamer.runs import train as train_module
from torch_dreamer.runs.checkpoint import load_checkpoint, save_checkpoint
from torch_dreamer.tools.files import DiskFull
from tests.reliability.conftest import make_trainer
from tests.runs.conftest import TINY

real_save = torch.save


def signal_midway(signum):
    """torch.save that gets `signum` halfway through writing the file."""
    def save(obj, file):
        file.write(b"")  # the temp file exists
        os.kill(os.getpid(), signum)
        real_save(obj, file)
    return save


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_05_a_signal_during_a_checkpoint_write_waits_for_the_file(tmp_path, monkeypatch, signum):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": torch.tensor(1)})
    monkeypatch.setattr(checkpoint_module.torch, "save", signal_midway(signum))
    previous = signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, {"step": torch.tensor(2), "big": torch.zeros(100_000)})
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert int(load_checkpoint(path)["step"]) == 2  # finished first, then interrupted
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_05_ctrl_c_during_an_episode_write_waits_for_the_file(tmp_path, monkeypatch, make_episode):
    real = episodes_module.atomic_write

    @contextlib.contextmanager
    def interrupted(path, temp=None):
        with real(path, temp) as file:
            os.kill(os.getpid(), signal.SIGINT)  # arrives with the temp file open and empty
            yield file

    monkeypatch.setattr(episodes_module, "atomic_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_episode(tmp_path, make_episode(5))
    paths = list_episodes(tmp_path)
    assert len(paths) == 1 and len(load_episode(paths[0])["action"]) == 6
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]


def test_05_a_full_disk_is_one_line_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": torch.tensor(1)})

    def full(obj, file):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    with pytest.raises(DiskFull) as error:
        save_checkpoint(path, {"step": torch.tensor(2), "weights": torch.zeros(1_000_000)})
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "needs about 3.8 MB" in message
    monkeypatch.undo()
    assert int(load_checkpoint(path)["step"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_05_a_full_disk_stops_the_run_once_with_one_line(tmp_path, monkeypatch, capsys):
    make_trainer(tmp_path, 40).run()
    good = load_checkpoint(tmp_path / "checkpoint.pt")

    def full(obj, file):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    with pytest.raises(DiskFull, match="disk full writing .*checkpoint.pt"):
        make_trainer(tmp_path, 200).run()
    monkeypatch.undo()
    kept = load_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["counters"] == good["counters"]
    # Not collected-then-crashed over and over: the run stopped at its first checkpoint (step 60).
    assert sum(len(load_episode(p)["action"]) - 1 for p in list_episodes(tmp_path / "train_episodes")) == 60


def test_05_a_full_disk_for_an_episode_is_one_line(tmp_path, monkeypatch, capsys):
    real = episodes_module.atomic_write
    calls = {"n": 0}

    def atomic(path, temp=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise DiskFull(path)
        return real(path, temp)

    monkeypatch.setattr(episodes_module, "atomic_write", atomic)
    code = main(["train", "--logdir", str(tmp_path / "run"), "--configs", "gym_vector", "--task", "gym_CartPole-v1",
                 "--steps", "100", "--prefill", "60", "--eval_eps", "0", "--time_limit", "10", "--replay.minlen", "5",
                 "--dataset.batch", "2", "--dataset.length", "5"] + TINY)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "disk full writing" in err and "train_episodes" in err


def test_05_too_little_space_refuses_before_collecting(tmp_path, monkeypatch):
    class Usage:
        free = 1000

    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(DiskFull, match="checkpoint.pt"):
        make_trainer(tmp_path, 40).run()
    assert not list_episodes(tmp_path / "train_episodes")
