"""The README's CartPole quick start, timed: this checkout beside an older one (a git worktree), same steps
and seed, one after the other on a quiet machine. Records wall-clock and the first step whose evaluation
reached 500. JSON to benchmarks/results/quickstart-cpu-<date>.json.

    git worktree add ../baseline COMMIT
    python benchmarks/quickstart.py --baseline ../baseline
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
COMMAND = ["train", "--configs", "gym_vector", "--task", "gym_CartPole-v1", "--progress", "False"]


def run(root: pathlib.Path, logdir: str, steps: int, seed: int) -> dict:
    # cwd and PYTHONPATH both point at `root`: `python -m` puts the cwd first on sys.path.
    env = dict(os.environ, PYTHONPATH=str(root))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch_dreamer.cli", *COMMAND, "--logdir", logdir, "--steps", str(steps),
                    "--seed", str(seed)], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (pathlib.Path(logdir) / "metrics.jsonl").read_text().splitlines()]
    evals = [(row["step"], row["eval_return"]) for row in rows if "eval_return" in row]
    solved = next((step for step, value in evals if value >= 500), None)
    return {"wall_s": round(wall, 1), "first_step_with_eval_500": solved, "final_eval_return": evals[-1][1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True, help="a checkout of the older code")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/quickstart-cpu-DATE.json)")
    args = parser.parse_args()
    baseline = pathlib.Path(args.baseline).resolve()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=baseline, capture_output=True, text=True).stdout.strip()
    result = {"date": datetime.date.today().isoformat(), "device": "cpu", "steps": args.steps, "seed": args.seed,
              "baseline_commit": commit, "runs": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name, root in (("baseline", baseline), ("current", REPO)):
            result["runs"][name] = run(root, f"{folder}/{name}", args.steps, args.seed)
            print(name, result["runs"][name])
    out = pathlib.Path(args.out or REPO / "benchmarks" / "results" / f"quickstart-cpu-{result['date']}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
