"""Item 11: a checkpoint with NaN weights or of another structure is one line; `--envs 2` Ctrl-C ends
without a traceback; stale temp files are cleaned; metrics.jsonl survives a partial line; a crafted pickle
in a checkpoint runs no code."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from torch_dreamer.cli import main
from torch_dreamer.errors import UserError
from torch_dreamer.runs.checkpoint import load_checkpoint, save_checkpoint
from torch_dreamer.tools import scores
from torch_dreamer.tools.logger import JSONLOutput
from tests.reliability.conftest import make_trainer
from tests.runs.conftest import TINY

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_11_nan_weights_in_a_checkpoint_are_one_line(tmp_path, capsys):
    make_trainer(tmp_path, 40).run()
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    key = next(k for k, v in payload["agent"].items() if torch.is_tensor(v) and v.is_floating_point())
    payload["agent"][key][...] = float("nan")
    save_checkpoint(tmp_path / "checkpoint.pt", payload)
    with pytest.raises(UserError, match=f"non-finite weights \\({key}\\)"):
        make_trainer(tmp_path, 60).run()
    assert main(["eval", "--logdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "non-finite weights" in err


@pytest.mark.parametrize("payload", [{"model": {"w": torch.zeros(3)}}, {"agent": [1, 2]}, [torch.zeros(2)],
                                     {"agent": {}, "optimizers": {}, "counters": {}, "config": {}, "spaces": {}}])
def test_11_a_torch_file_of_another_structure_is_one_line(tmp_path, capsys, payload):
    (tmp_path / "run").mkdir()
    torch.save(payload, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(UserError) as error:
        make_trainer(tmp_path / "run", 40).run()
    assert "\n" not in str(error.value) and "checkpoint.pt" in str(error.value)
    assert main(["eval", "--logdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


def test_11_a_crafted_pickle_in_a_run_checkpoint_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    (tmp_path / "run").mkdir()
    torch.save({"agent": Evil()}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(UserError, match="could run code"):
        make_trainer(tmp_path / "run", 40).run()
    assert main(["eval", "--logdir", str(tmp_path / "run")]) == 2
    assert not marker.exists()


def test_11_stale_temp_files_are_cleaned_when_a_run_starts(tmp_path):
    make_trainer(tmp_path, 40).run()
    old = time.time() - 60
    stale = [tmp_path / ".tmp-checkpoint.pt-123-abc", tmp_path / "checkpoint.pt.tmp",
             tmp_path / "train_episodes" / ".tmp-123-abc-20260101T000000-x-10.npz.part",
             tmp_path / "eval_episodes" / ".tmp-123-def-20260101T000000-y-10.npz.part"]
    for path in stale:
        path.write_bytes(b"left by a kill -9")
        os.utime(path, (old, old))
    make_trainer(tmp_path, 60).run()
    assert not any(path.exists() for path in stale)
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_11_a_resumed_run_starts_metrics_on_a_fresh_line(tmp_path):
    make_trainer(tmp_path, 40).run()
    path = tmp_path / "metrics.jsonl"
    with path.open("a") as file:
        file.write('{"step": 41, "train_ret')  # the half line a kill -9 (or a full disk) leaves
    make_trainer(tmp_path, 60).run()
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # every line parses, as pandas needs
    assert rows[-1]["step"] == 60 and not any(row.get("step") == 41 for row in rows)


def test_11_a_complete_last_row_without_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}')
    output = JSONLOutput(tmp_path)
    output.write(3, {"a": 3}, {})
    output.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_11_plot_reads_past_a_partial_line(tmp_path):
    run = tmp_path / "runs" / "gym_chain" / "ours" / "0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 10, "eval_return": 1.0}\n{"step": 20, "eval_re'
                                       '{"step": 30, "eval_return": 2.0}\n{"step": 40, "eval_return": 3.0}\n')
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        rows = scores.read_metrics(run / "metrics.jsonl")
    assert [row["step"] for row in rows] == [10, 40]
    with pytest.warns(UserWarning):
        assert main(["plot", "--indir", str(tmp_path / "runs"), "--outdir", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "curves.png").exists()


CTRL_C = ["-m", "torch_dreamer.cli", "train", "--configs", "gym_vector", "--task", "gym_CartPole-v1", "--envs", "2",
          "--steps", "100000", "--prefill", "100", "--eval_every", "150", "--log_every", "50", "--eval_eps", "2",
          "--dataset.batch", "2", "--dataset.length", "10", "--replay.minlen", "10"]


def test_11_envs_2_ctrl_c_ends_without_a_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, *CTRL_C, "--logdir", str(tmp_path), *TINY], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    metrics = tmp_path / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and "model_loss" in metrics.read_text()):
        time.sleep(0.2)  # until it trains (after the prefill)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Error" not in err, err[-2000:]
    assert "Interrupted at step" in out and "checkpoint saved" in out
