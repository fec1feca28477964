"""Env steps/s and updates/s of `dreamer train` in one process and with 1, 2, 4 env-worker processes.

Each configuration is one `python -m torch_dreamer.cli train` subprocess on CartPole (`--configs gym_vector
--task gym_CartPole-v1`) with tiny networks, run for a fixed number of env steps in a temporary logdir, one
after the other. Rates come from the subprocess wall time and the checkpoint counters (`step`, `updates`);
for worker runs the logged means of `updates_per_s`, `env_steps_per_s` and `replay_ratio` from
metrics.jsonl are reported too (for the single process, the logged `fps`). Both modes pace training at the
same replayed-steps-per-env-step: `train_every`/`train_steps` in one process, `--train_ratio 0` (derived from
them) with workers. Writes JSON to benchmarks/results/actors-cpu-<date>.json.

    OMP_NUM_THREADS=1 python benchmarks/actors.py --steps 1500 --workers-list 0,1,2,4
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

from torch_dreamer.runs.checkpoint import load_checkpoint

# The test suite's tiny networks (tests/runs/conftest.py): the learner's cost stays small next to the actors'.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.runs.conftest import TINY  # noqa: E402


def cpu_name() -> str:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def base_flags(args) -> list[str]:
    return ["--configs", "gym_vector", "--task", "gym_CartPole-v1", "--device", "cpu",
            "--prefill", str(args.prefill), "--eval_eps", "0", "--log_every", str(args.log_every),
            "--eval_every", "1000000",  # checkpoints only at the start and the end
            "--policy_refresh", str(args.policy_refresh), "--policy_refresh_s", "1",
            "--train_ratio", str(args.train_ratio), "--seed", "0", *TINY]


def read_metrics(logdir: pathlib.Path) -> list[dict]:
    path = logdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_of(rows: list[dict], key: str):
    values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def run_command(command: list[str], timeout: float, log: pathlib.Path) -> tuple[object, str, float]:
    """Runs `command` in its own session (the workers are its children), killing the whole group on timeout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = "timeout"
            for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    continue
    return returncode, log.read_text(errors="replace"), time.perf_counter() - start


def measure(workers: int, limit: float, args, root: pathlib.Path) -> dict:
    logdir = root / f"workers-{workers}-limit-{limit:g}"
    logdir.mkdir(parents=True)
    steps = args.steps if workers or not args.single_steps else args.single_steps
    command = [sys.executable, "-m", "torch_dreamer.cli", "train", "--logdir", str(logdir),
               "--steps", str(steps), *base_flags(args)]
    if workers:
        command += ["--workers", str(workers), "--limit_step_ratio", f"{limit:g}"]
    returncode, output, wall = run_command(command, args.timeout, logdir / "stdout.txt")
    result = {"workers": workers, "limit_step_ratio": limit if workers else None, "command": " ".join(command),
              "returncode": returncode, "wall_s": round(wall, 2)}
    checkpoint = logdir / "checkpoint.pt"
    if returncode != 0:
        result["error_tail"] = output[-3000:]
    if not checkpoint.exists():
        return result
    counters = load_checkpoint(checkpoint)["counters"]
    step, updates = int(counters["step"]), int(counters["updates"])
    rows = read_metrics(logdir)
    cfg_batch, cfg_length = 16, 20  # gym_vector's dataset block
    result.update({
        "step": step,
        "updates": updates,
        "env_steps_per_s_wall": round(step / wall, 2),
        "updates_per_s_wall": round(updates / wall, 3),
        "replay_ratio_final": round(updates * cfg_batch * cfg_length / max(step, 1), 2),
        "train_episodes": sum(1 for row in rows if "train_return" in row),
    })
    if workers:
        # The first learner row's rates cover the learner's start-up (and pretrain); later rows are steady state.
        learner_rows = [row for row in rows if "updates_per_s" in row]
        steady = learner_rows[1:]
        result["logged_rows"] = len(steady)
        # Env steps already in the replay when the learner logged first: the workers act with a random policy
        # (prefill) until the learner has started and published weights.
        result["step_at_first_learner_row"] = learner_rows[0]["step"] if learner_rows else None
        for key in ("updates_per_s", "env_steps_per_s", "replay_ratio", "actor_lag"):
            value = mean_of(steady, key)
            result[f"logged_mean_{key}"] = round(value, 3) if value is not None else None
        restarts = [line for line in output.splitlines() if "restarting" in line]
        if restarts:
            result["worker_restarts"] = restarts[:5]
    else:
        value = mean_of(rows, "fps")  # env steps/s between log rows (action_repeat 1), prefill excluded
        result["logged_mean_fps"] = round(value, 2) if value is not None else None
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="env steps per configuration")
    parser.add_argument("--single-steps", dest="single_steps", type=int, default=0,
                        help="env steps of the 0-worker run (default --steps): it is ~10x slower than the actors")
    parser.add_argument("--workers-list", default="0,1,2,4", help="comma-separated; 0 = single process")
    parser.add_argument("--limit-step-ratios", dest="limit_step_ratios", default="0",
                        help="comma-separated limit_step_ratio values for the worker runs (0 = actors never wait; "
                             "the pacing itself is 16*20/64 = 5 env steps per update)")
    parser.add_argument("--prefill", type=int, default=300)
    parser.add_argument("--log-every", dest="log_every", type=int, default=250)
    parser.add_argument("--train-ratio", dest="train_ratio", type=float, default=0,
                        help="0 = batch*length*train_steps/train_every (what the single process does)")
    parser.add_argument("--policy-refresh", dest="policy_refresh", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=120, help="seconds per configuration")
    parser.add_argument("--out", default=None, help="default benchmarks/results/actors-cpu-<date>.json")
    parser.add_argument("--note", default="", help="a free-text observation stored in the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary logdirs")
    args = parser.parse_args(argv)
    workers_list = [int(w) for w in args.workers_list.split(",") if w.strip()]
    date = datetime.date.today().isoformat()
    out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" / f"actors-cpu-{date}.json")

    root = pathlib.Path(tempfile.mkdtemp(prefix="dreamer-actors-"))
    results = []
    try:
        limits = [float(v) for v in args.limit_step_ratios.split(",") if v.strip()]
        runs = [(w, 0.0) for w in workers_list if w == 0] + [(w, l) for w in workers_list if w > 0 for l in limits]
        for workers, limit in runs:
            print(f"workers={workers} limit_step_ratio={limit:g} ...", flush=True)
            result = measure(workers, limit, args, root)
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k not in ("command", "error_tail")}), flush=True)
            if "error_tail" in result:
                print(result["error_tail"][-1500:], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logdirs kept in {root}")

    cores = os.cpu_count()
    for result in results:  # how far past --steps the run went (workers keep acting until told to stop)
        if "step" in result:
            result["requested_steps"] = args.steps if result["workers"] or not args.single_steps else args.single_steps
    report = {
        "benchmark": "actors",
        "date": date,
        "device": {"cpu": cpu_name(), "cores": cores},
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "settings": {"steps": args.steps, "single_steps": args.single_steps or args.steps, "prefill": args.prefill, "workers_list": workers_list,
                     "train_ratio": args.train_ratio or "0 (= 16*20*1/5 = 64 replayed steps per env step)",
                     "networks": "TINY (tests/runs/conftest.py)", "OMP_NUM_THREADS": 1,
                     "policy_refresh": args.policy_refresh, "limit_step_ratios": args.limit_step_ratios},
        "notes": [
            f"{cores} cores: the N worker processes and the learner compete for the same cores, so more workers "
            "cannot raise the total compute here: env steps/s can only grow by taking CPU time from the learner "
            "(lower updates/s and replay ratio); the figures show the split's overhead and contention, not its scaling.",
            "*_wall rates are end to end (interpreter and torch start-up, worker start, prefill, training, "
            "shutdown) divided by the subprocess wall time; logged_mean_* are the learner's own log rows "
            "(the first, start-up row dropped).",
            "With workers the actors never wait for the learner (limit_step_ratio 0): when the learner is "
            "slower than the actors, replay_ratio_final falls below the configured 64.",
        ],
        "results": results,
    }
    report["observation"] = observe(results)
    if args.note:
        report["note"] = args.note
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r.get("returncode") == 0 for r in results) else 1


def observe(results: list[dict]) -> str:
    ok = [r for r in results if r.get("returncode") == 0 and "step" in r]
    if not ok:
        return "no configuration finished"
    parts = [f"{r['workers']} workers (limit_step_ratio {r['limit_step_ratio']}): {r['env_steps_per_s_wall']} env steps/s, {r['updates_per_s_wall']} updates/s "
             f"(replay ratio {r['replay_ratio_final']})" for r in ok]
    return "; ".join(parts) + " (end to end, wall time)."


if __name__ == "__main__":
    sys.exit(main())
