"""Updates/s and env steps/s of data-parallel learners (1 and 2 ranks) fed by 1, 2 and 4 actors.

Each configuration is one `python -m torch_dreamer.cli train --nproc R --workers A` subprocess on CartPole
(`--configs gym_vector --task gym_CartPole-v1`) in a temporary logdir, one after the other, stopped with
SIGINT after `--seconds` (it saves its checkpoint, as on Ctrl-C). The actors never wait (`--limit_step_ratio 0`) and the train ratio is high, so the learners
train as fast as they can: updates/s measures the learners, env steps/s the actors, both competing for the
same machine. `dataset.batch` is the global batch, the same for every R, so R ranks split the same update.
Rates are the learner's logged rows (the first, start-up row dropped) and end to end (counters / wall time).
On a GPU machine `--device cuda` runs the learners with `--gpus R` (NCCL); the device name is recorded.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py --seconds 45 --ranks 1,2 --actors 1,2,4
    python benchmarks/scaling.py --device cuda --model small --seconds 60     # on a GPU machine

Writes JSON to benchmarks/results/scaling-<cpu|gpu>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from actors import cpu_name, mean_of, run_command  # noqa: E402  (benchmarks/actors.py, beside this file)
from tests.runs.conftest import TINY  # noqa: E402

# Networks: the test suite's tiny ones (the learner's cost stays near the actors'), or a small real model.
MODELS = {"tiny": TINY, "small": ["--rssm.deter", "200", "--rssm.hidden", "200", "--progress", "False",
                                  "--precision", "32"]}


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_name()


def command_for(ranks: int, actors: int, logdir: pathlib.Path, args) -> list[str]:
    launch = ["--gpus" if args.device.startswith("cuda") else "--nproc", str(ranks)]
    return [sys.executable, "-m", "torch_dreamer.cli", "train", *launch, "--logdir", str(logdir),
            "--configs", "gym_vector", "--task", "gym_CartPole-v1", "--device", args.device,
            "--steps", "100000000", "--prefill", str(args.prefill), "--eval_eps", "0",
            "--eval_every", "1000000", "--log_every", str(args.log_every), "--workers", str(actors),
            "--limit_step_ratio", "0", "--train_ratio", str(args.train_ratio), "--policy_refresh", "50",
            "--dataset.batch", str(args.batch), "--seed", "0", *MODELS[args.model]]


def _rounded(value):
    return round(value, 3) if value is not None else None


def measure(ranks: int, actors: int, args, root: pathlib.Path) -> dict:
    logdir = root / f"ranks-{ranks}-actors-{actors}"
    command = command_for(ranks, actors, logdir, args)
    logdir.mkdir(parents=True)
    # On timeout the run gets SIGINT (it saves, as on Ctrl-C), then SIGKILL, sent to its whole group.
    code, _, wall = run_command(command, args.seconds, root / f"{logdir.name}.txt")
    result = {"ranks": ranks, "actors": actors, "returncode": code, "wall_s": round(wall, 1)}
    if code != "timeout":  # the runs are meant to be stopped by the timeout
        result["error_tail"] = (root / f"{logdir.name}.txt").read_text(errors="replace")[-1500:]
    metrics = logdir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    learner_rows = [row for row in rows if "updates_per_s" in row]
    if not learner_rows:
        return result
    # The counts of the last log row: a run stopped at the deadline may not finish its last checkpoint in time.
    last, steady = learner_rows[-1], learner_rows[1:]
    result.update({"step": last["step"], "updates": last.get("updates"), "logged_rows": len(steady),
                   "updates_per_s": _rounded(mean_of(steady, "updates_per_s")),
                   "env_steps_per_s": _rounded(mean_of(steady, "env_steps_per_s")),
                   "replay_ratio": _rounded(mean_of(steady, "replay_ratio")),
                   "updates_per_s_wall": round((last.get("updates") or 0) / wall, 3),
                   "env_steps_per_s_wall": round(last["step"] / wall, 2)})
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2", help="comma-separated learner counts")
    parser.add_argument("--actors", default="1,2,4", help="comma-separated actor (worker process) counts")
    parser.add_argument("--seconds", type=float, default=45, help="wall time per configuration, start-up included")
    parser.add_argument("--prefill", type=int, default=200)
    parser.add_argument("--log-every", dest="log_every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16, help="the global dataset.batch (divides by every rank count)")
    parser.add_argument("--train-ratio", dest="train_ratio", type=float, default=1000,
                        help="high, so the learners are never ahead of the actors")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (then the learners are --gpus R)")
    parser.add_argument("--note", default="", help="a free-text observation stored in the JSON")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    date = datetime.date.today().isoformat()
    out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" / f"scaling-{kind}-{date}.json")
    root = pathlib.Path(tempfile.mkdtemp(prefix="dreamer-scaling-"))
    results = []
    try:
        for ranks in [int(r) for r in args.ranks.split(",")]:
            for actors in [int(a) for a in args.actors.split(",")]:
                print(f"ranks={ranks} actors={actors} ...", flush=True)
                results.append(measure(ranks, actors, args, root))
                print(json.dumps({k: v for k, v in results[-1].items() if k != "error_tail"}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {"benchmark": "scaling", "date": date, "device": device_name(args.device), "cores": os.cpu_count(),
              "torch": torch.__version__,
              "settings": {key: getattr(args, key) for key in ("seconds", "prefill", "batch", "train_ratio", "model",
                                                                "device", "log_every")},
              "notes": ["dataset.batch is the global batch: R learners split the same update (batch / R each).",
                        "updates_per_s / env_steps_per_s: means of the learner's log rows after the first; *_wall: "
                        "counters over the whole subprocess (start-up, prefill and shutdown included).",
                        "Actors never wait (limit_step_ratio 0) and train_ratio is high: the learners train flat out "
                        "while the actors step as fast as they can, all on the same cores.",
                        *([args.note] if args.note else [])],
              "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
