"""Item 4: an exclusive lock per logdir (a second run refuses in one line naming the running process), temp
names unique per process, and the shared replay of many writers keeps working without any lock."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from torch_dreamer.cli import main
from torch_dreamer.data import EpisodeStore, list_episodes, save_episode
from torch_dreamer.errors import UserError
from torch_dreamer.runs import setup
from torch_dreamer.runs.checkpoint import load_checkpoint, save_checkpoint
from torch_dreamer.tools.files import atomic_write
from tests.reliability.conftest import make_trainer
from tests.runs.conftest import TINY

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
HOLD = "import sys, time; from torch_dreamer.runs.setup import LogdirLock; " \
       "lock = LogdirLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(120)"


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of `tmp_path/run`, as a running trainer does."""
    logdir = tmp_path / "run"
    logdir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(logdir)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield logdir, proc
    proc.kill()
    proc.wait()


def test_04_second_run_on_a_logdir_refuses_naming_the_running_process(holder, capsys):
    logdir, proc = holder
    with pytest.raises(UserError, match=f"in use by a running dreamer run \\(pid {proc.pid} on "):
        make_trainer(logdir, 40).run()
    assert not list_episodes(logdir / "train_episodes") and not (logdir / "config.yaml").exists()
    code = main(["train", "--logdir", str(logdir), "--configs", "gym_vector", "--task", "gym_CartPole-v1",
                 "--steps", "40", "--prefill", "20"] + TINY)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and str(proc.pid) in err
    assert not (logdir / "checkpoint.pt").exists() and not (logdir / "metrics.jsonl").exists()


def test_04_the_lock_goes_with_the_process(holder):
    logdir, proc = holder
    proc.send_signal(signal.SIGKILL)  # kill -9: no cleanup runs, the kernel drops the lock
    proc.wait()
    assert make_trainer(logdir, 40).run()["step"] == 40
    assert make_trainer(logdir, 60).run()["step"] == 60  # released at the end of each run


def test_04_temp_names_are_unique_per_process_and_call(tmp_path):
    names = []
    for _ in range(2):
        with atomic_write(tmp_path / "checkpoint.pt") as file:
            names.append(pathlib.Path(file.name).name)
            file.write(b"x")
    assert len(set(names)) == 2 and all(n.startswith(".tmp-checkpoint.pt-") and str(os.getpid()) in n for n in names)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


WRITER = """
import sys, torch
from torch_dreamer.runs.checkpoint import save_checkpoint
value = float(sys.argv[2])
for _ in range(15):
    save_checkpoint(sys.argv[1], {"a": torch.full((20000,), value), "b": torch.full((20000,), value)})
"""


def test_04_concurrent_checkpoint_writers_never_mix_tensors(tmp_path):
    path = tmp_path / "checkpoint.pt"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(v)], env=ENV) for v in (1, 2)]
    assert all(proc.wait(timeout=120) == 0 for proc in procs)
    payload = load_checkpoint(path)
    assert payload["a"][0] in (1, 2) and torch.equal(payload["a"], payload["b"])  # one writer's whole file
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_04_the_shared_replay_takes_many_writers_and_no_lock(tmp_path, make_episode):
    replay = tmp_path / "replay"
    (tmp_path / "run").mkdir()
    live_temp = replay / ".tmp-12345-abc-20260101T000000-x-5.npz.part"  # another actor's write in progress
    replay.mkdir()
    live_temp.write_bytes(b"partial")
    config = make_trainer(tmp_path / "run", 40, extra=["--replay_dir", str(replay)]).config
    lock = setup.claim_logdir(config, tmp_path / "run")
    try:
        assert live_temp.exists() and not (replay / ".lock").exists()  # never locked, live temps kept
        store = EpisodeStore(replay)
        writers = [subprocess.Popen([sys.executable, "-c", "import sys, numpy as np; from torch_dreamer.data import "
                                     "save_episode; [save_episode(sys.argv[1], {'action': np.zeros((6, 2), np.float32),"
                                     " 'reward': np.zeros(6, np.float32)}) for _ in range(5)]", str(replay)], env=ENV)
                   for _ in range(3)]
        assert all(proc.wait(timeout=120) == 0 for proc in writers)
        assert store.refresh() == 15 and store.total_steps == 75
    finally:
        lock.release()


def test_04_old_temps_in_a_shared_replay_are_cleaned(tmp_path):
    replay = tmp_path / "replay"
    replay.mkdir()
    old = replay / ".tmp-1-a-x-5.npz.part"
    old.write_bytes(b"partial")
    hour_ago = time.time() - 2 * setup.STALE_SHARED_TEMP_S
    os.utime(old, (hour_ago, hour_ago))
    lock = setup.claim_logdir(make_trainer(tmp_path / "run", 40, extra=["--replay_dir", str(replay)]).config,
                              tmp_path / "run")
    lock.release()
    assert not old.exists()
