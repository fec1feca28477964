"""Env workers in other processes: a learner that holds no env, trains, resumes, survives a killed worker,
and takes remote actors (`dreamer actor`) and the Ray backend."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from torch_dreamer.cli import main
from torch_dreamer.data import list_episodes, load_episode
from torch_dreamer.runs.checkpoint import load_checkpoint
from torch_dreamer.runs.policy_store import actor_reports
from tests.runs.conftest import TINY, read_metrics

SHORT = ["--configs", "gym_vector", "--task", "gym_CartPole-v1", "--prefill", "100", "--eval_every", "200",
         "--log_every", "50", "--replay.minlen", "5", "--dataset.batch", "4", "--dataset.length", "8",
         "--policy_refresh", "5", "--policy_refresh_s", "0.5", "--train_ratio", "8"]


def train(logdir, steps, *extra):
    return main(["train", "--logdir", str(logdir), "--steps", str(steps), *SHORT, *TINY, *extra])


def test_two_workers_train_and_resume(tmp_path, one_thread):
    logdir = tmp_path / "run"
    assert train(logdir, 400, "--workers", "2", "--eval_workers", "1") == 0
    payload = load_checkpoint(logdir / "checkpoint.pt")
    first = payload["counters"]
    assert first["updates"] > 0 and first["step"] >= 400
    rows = read_metrics(logdir)
    logged = set().union(*(row.keys() for row in rows))
    assert {"model_loss", "updates_per_s", "env_steps_per_s", "replay_ratio", "train_return"} <= logged
    assert {"actor_train-0_episodes", "actor_train-1_episodes"} <= logged
    assert "eval_return" in logged  # the eval worker acted with published weights
    reports = actor_reports(logdir / "policy")
    assert reports["train-0"]["episodes"] > 0 and reports["train-1"]["episodes"] > 0
    # Every episode on disk is whole: first flag at row 0 only, last flag at the end.
    for path in list_episodes(logdir / "train_episodes"):
        episode = load_episode(path)
        assert episode["is_first"][0] and not episode["is_first"][1:].any() and episode["is_last"][-1]
    # Resume: no second prefill, counters continue.
    assert train(logdir, 600, "--workers", "2") == 0
    second = load_checkpoint(logdir / "checkpoint.pt")["counters"]
    assert second["step"] >= 600 and second["updates"] > first["updates"]


def test_a_killed_worker_is_restarted_and_the_learner_goes_on(tmp_path, one_thread, capsys):
    logdir = tmp_path / "run"
    killed = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            report = actor_reports(logdir / "policy").get("train-0")
            if report and report["episodes"] >= 2:
                os.kill(report["pid"], signal.SIGKILL)  # mid-episode: it keeps stepping between episodes
                killed.append(report)
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    assert train(logdir, 500, "--workers", "2") == 0
    thread.join(1)
    assert killed, "the worker never reported"
    out = capsys.readouterr().out
    assert "worker train-0" in out and "restarting" in out
    counters = load_checkpoint(logdir / "checkpoint.pt")["counters"]
    assert counters["step"] >= 500
    # The killed worker lost at most its unfinished episode: everything it reported is on disk and whole.
    lengths = [len(load_episode(p)["action"]) - 1 for p in list_episodes(logdir / "train_episodes")]
    assert sum(lengths) >= 500 and all(n > 0 for n in lengths)
    assert actor_reports(logdir / "policy")["train-0"]["pid"] != killed[0]["pid"]  # a new life reported


def test_learner_with_a_remote_actor_command(tmp_path, one_thread):
    """`dreamer train --learner_only` and `dreamer actor` in another process share only the two folders."""
    logdir, replay, policy = tmp_path / "run", tmp_path / "replay", tmp_path / "policy"
    shared = ["--replay_dir", str(replay), "--policy_dir", str(policy)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    actor = subprocess.Popen([sys.executable, "-m", "torch_dreamer.cli", "actor", *shared, *SHORT, *TINY,
                              "--name", "remote-0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert train(logdir, 300, "--learner_only", "True", *shared) == 0
        out, err = actor.communicate(timeout=60)  # the learner's stop file ends the actor
    finally:
        if actor.poll() is None:
            actor.kill()
    assert actor.returncode == 0, err[-2000:]
    assert "Actor remote-0 finished" in out
    assert load_checkpoint(logdir / "checkpoint.pt")["counters"]["updates"] > 0
    assert list_episodes(replay)


def test_ray_backend(tmp_path, one_thread):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert train(tmp_path / "run", 250, "--workers", "1", "--worker_backend", "ray") == 0
    finally:
        ray.shutdown()
    counters = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["counters"]
    assert counters["updates"] > 0 and counters["step"] >= 250


def test_workers_exit_when_the_learner_is_killed(tmp_path):
    """kill -9 of the learner writes no stop file; its local workers notice their parent is gone and exit."""
    logdir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    learner = subprocess.Popen([sys.executable, "-m", "torch_dreamer.cli", "train", "--logdir", str(logdir),
                                "--steps", "1000000", "--workers", "1", *SHORT, *TINY], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, report = time.time() + 90, None
        while time.time() < deadline and report is None:
            report = actor_reports(logdir / "policy").get("train-0")
            time.sleep(0.2)
        assert report is not None, "the worker never reported"
    finally:
        learner.kill()
        learner.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _alive(report["pid"]):
        time.sleep(0.2)
    assert not _alive(report["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone for our purposes
        return f.read().split()[2] != "Z"
