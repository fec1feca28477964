"""A memory task for the two dataset modes: official random chunks vs sequential chunks with a carried state.

'Recall' (defined here): at t = 0 the observation shows a cue c in {0, 1}; for the next `delay` steps it is
blank except a step counter (and, on the last of them, a query flag); the action taken on the query step is
judged: reward +1 if it equals c, else 0, and the episode terminates. Discrete(2) actions; the episode has
`delay + 1` actions; any policy that ignores the cue gets 0.5 on average.

The agent must carry the cue over `delay + 1` steps. With `--dataset.mode random` and `dataset.length` 50 (the
official) no training chunk that holds the reward also holds the cue once delay >= 50, so the world model
cannot learn to predict the reward from it. `--dataset.mode sequential` carries the posterior state across
chunks, so the cue can reach the reward prediction, but gradients are still truncated at chunk boundaries
(truncated BPTT): nothing trains the model to *keep* the cue across a boundary, it can only keep it by chance.

Each run goes through `torch_dreamer.api.train(env, config, eval_env)` with `resolve(["gym_vector"], flags)`,
one after the other in this process, and reads the eval returns back from metrics.jsonl. Writes JSON to
benchmarks/results/memory-task-cpu-<date>.json.

    OMP_NUM_THREADS=1 python benchmarks/memory_task.py --steps 6000 --delay 100 --seeds 0
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
import time

import gymnasium as gym
import numpy as np
import torch

from torch_dreamer import api
from torch_dreamer.config import resolve

MODES = ("random", "sequential")

# Networks between tests' TINY and gym_vector's (128 units): one batch-16 x 50 update of gym_vector's sizes
# takes ~0.4 s on one core of this machine, of these ~0.15 s.
SMALL = [
    "--rssm.deter", "64", "--rssm.hidden", "64", "--rssm.stoch", "8", "--rssm.discrete", "8",
    "--encoder.mlp_layers", "64", "--decoder.mlp_layers", "64",
    "--reward_head.units", "64", "--discount_head.units", "64", "--actor.units", "64", "--critic.units", "64",
]


class RecallEnv(gym.Env):
    """Observation [cue is 0, cue is 1, t / delay, query], all float32 in [0, 1]; Discrete(2) actions.

    Row 0 (reset) shows the cue one-hot; rows 1..delay show zeros there; row `delay` raises the query flag; the
    action taken there gets reward 1 if it equals the cue and ends the episode (terminated, not truncated).
    """

    metadata = {"render_modes": []}

    def __init__(self, delay: int = 100):
        if delay < 1:
            raise ValueError(f"delay must be >= 1, got {delay}")
        self.delay = int(delay)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._t, self._cue = 0, 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(4, np.float32)
        if self._t == 0:
            obs[self._cue] = 1.0
        obs[2] = min(self._t, self.delay) / self.delay
        obs[3] = float(self._t == self.delay)
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t, self._cue = 0, int(self.np_random.integers(2))
        return self._obs(), {"cue": self._cue}

    def step(self, action):
        action = np.asarray(action)
        action = int(action.argmax()) if action.size > 1 else int(action.reshape(-1)[0])  # index or one-hot
        if self._t == self.delay:  # the query step: judge the action and end
            reward = float(action == self._cue)
            self._t += 1
            obs = np.zeros(4, np.float32)
            obs[2] = 1.0
            return obs, reward, True, False, {"cue": self._cue}
        self._t += 1
        return self._obs(), 0.0, False, False, {"cue": self._cue}


def run_flags(args, mode: str, seed: int, logdir: pathlib.Path) -> list[str]:
    return ["--logdir", str(logdir), "--task", "recall", "--seed", str(seed), "--steps", str(args.steps),
            "--dataset.mode", mode, "--dataset.length", str(args.length), "--dataset.batch", str(args.batch),
            "--replay.minlen", str(args.length), "--prefill", str(args.prefill),
            "--train_every", str(args.train_every), "--eval_every", str(args.eval_every),
            "--eval_eps", str(args.eval_eps), "--log_every", str(args.log_every),
            "--imag_horizon", str(args.imag_horizon), "--device", "cpu", "--precision", "32",
            "--progress", "False", *(SMALL if args.networks == "small" else [])]


def read_metrics(logdir: pathlib.Path) -> list[dict]:
    path = logdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves(rows: list[dict]) -> dict:
    """Eval return per evaluation, train return and losses over time.

    The first eval row of a fresh run is the one episode `Trainer.prefill` plays with the random policy (logged
    at the prefill's last step, before the counter drops the unfinished train episode); every later group of
    rows with one step is one evaluation of `eval_eps` greedy episodes.
    """
    evals = []  # [(step, [returns], policy)]
    for row in rows:
        if row.get("eval_return") is None:
            continue
        step, value = int(row["step"]), float(row["eval_return"])
        if not evals:
            evals.append((step, [value], "random (prefill)"))
        elif evals[-1][2] == "agent" and evals[-1][0] == step:
            evals[-1][1].append(value)
        else:
            evals.append((step, [value], "agent"))
    train = [(int(row["step"]), float(row["train_return"])) for row in rows if row.get("train_return") is not None]
    losses = [{"step": int(row["step"]), **{k: round(float(row[k]), 5) for k in ("reward_loss", "model_loss", "kl_loss")
                                            if row.get(k) is not None}}
              for row in rows if row.get("model_loss") is not None]
    window = 10
    return {
        "eval": [{"step": step, "mean_return": round(float(np.mean(v)), 4), "episodes": len(v), "policy": policy}
                 for step, v, policy in evals],
        "train_return_per_10_episodes": [
            {"step": train[i][0], "mean_return": round(float(np.mean([r for _, r in train[i - window + 1:i + 1]])), 4)}
            for i in range(window - 1, len(train), window)],
        "losses": losses,
    }


def summarize(rows: list[dict], prefill: int) -> dict:
    """Final evaluation, all greedy evaluations pooled, and train returns after the prefill."""
    curve = curves(rows)
    agent_evals = [e for e in curve["eval"] if e["policy"] == "agent"]
    final = agent_evals[-1] if agent_evals else None
    pooled = [(e["mean_return"], e["episodes"]) for e in agent_evals]
    trained = [(float(row["train_return"])) for row in rows
               if row.get("train_return") is not None and int(row["step"]) > prefill]
    return {
        "final_eval_mean_return": final["mean_return"] if final else None,
        "final_eval_episodes": final["episodes"] if final else 0,
        "all_evals_mean_return": round(sum(m * n for m, n in pooled) / sum(n for _, n in pooled), 4) if pooled else None,
        "all_evals_episodes": sum(n for _, n in pooled),
        "train_return_mean_after_prefill": round(float(np.mean(trained)), 4) if trained else None,
        "train_episodes_after_prefill": len(trained),
        "curves": curve,
    }


def run_one(args, mode: str, seed: int, root: pathlib.Path) -> dict:
    logdir = root / f"{mode}-seed{seed}"
    flags = run_flags(args, mode, seed, logdir)
    config = resolve(["gym_vector"], flags)
    start = time.perf_counter()
    error = None
    try:
        result = api.train(RecallEnv(args.delay), config, RecallEnv(args.delay))
    except Exception as exc:  # report, do not hide: the other runs still go
        import traceback

        error, result = traceback.format_exc()[-3000:], {}
        print(error, flush=True)
    wall = time.perf_counter() - start
    return {
        "mode": mode, "seed": seed, "wall_s": round(wall, 1),
        "call": f"api.train(RecallEnv({args.delay}), resolve(['gym_vector'], {flags!r}), RecallEnv({args.delay}))",
        "result": {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in result.items()},
        "error": error,
        **summarize(read_metrics(logdir), args.prefill),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000, help="env steps per run (prefill included)")
    parser.add_argument("--delay", type=int, default=100, help="steps between the cue and the query")
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--length", type=int, default=50, help="dataset.length for both modes")
    parser.add_argument("--batch", type=int, default=16, help="dataset.batch")
    parser.add_argument("--prefill", type=int, default=1000)
    parser.add_argument("--train-every", dest="train_every", type=int, default=5)
    parser.add_argument("--eval-every", dest="eval_every", type=int, default=1000)
    parser.add_argument("--eval-eps", dest="eval_eps", type=int, default=10)
    parser.add_argument("--log-every", dest="log_every", type=int, default=500)
    parser.add_argument("--imag-horizon", dest="imag_horizon", type=int, default=15)
    parser.add_argument("--networks", choices=["small", "gym_vector"], default="small")
    parser.add_argument("--out", default=None, help="default benchmarks/results/memory-task-cpu-<date>.json")
    parser.add_argument("--note", default="", help="free-text observation stored in the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the logdirs")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    modes = [m for m in args.modes.split(",") if m.strip()]
    date = datetime.date.today().isoformat()
    out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" / f"memory-task-cpu-{date}.json")

    root = pathlib.Path(tempfile.mkdtemp(prefix="dreamer-memory-"))
    runs = []
    try:
        for seed in seeds:
            for mode in modes:
                print(f"== {mode} seed {seed}", flush=True)
                run = run_one(args, mode, seed, root)
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k not in ("curves", "call", "error")}), flush=True)
                print("eval:", [(e["step"], e["mean_return"]) for e in run["curves"]["eval"]], flush=True)
    finally:
        if args.keep:
            print(f"logdirs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    summary = {}
    for mode in modes:
        done = [r for r in runs if r["mode"] == mode and r["final_eval_mean_return"] is not None]
        mean = lambda key: round(float(np.mean([r[key] for r in done])), 4) if done else None
        summary[mode] = {"final_eval_mean_return": mean("final_eval_mean_return"),
                         "all_evals_mean_return": mean("all_evals_mean_return"),
                         "train_return_mean_after_prefill": mean("train_return_mean_after_prefill"), "seeds": len(done)}
    cpu = next((line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    report = {
        "benchmark": "memory_task",
        "date": date,
        "device": {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "torch": torch.__version__,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "task": {"name": "Recall", "delay": args.delay, "episode_actions": args.delay + 1,
                 "observation": "[cue==0, cue==1, t/delay, query] (cue shown only at reset)",
                 "reward": "1 if the action on the query step equals the cue, else 0; then terminated",
                 "chance_return": 0.5},
        "settings": {"steps": args.steps, "seeds": seeds, "modes": modes, "dataset.length": args.length,
                     "dataset.batch": args.batch, "prefill": args.prefill, "train_every": args.train_every,
                     "train_steps": 1, "eval_every": args.eval_every, "eval_eps": args.eval_eps,
                     "imag_horizon": args.imag_horizon, "networks": args.networks,
                     "config": "resolve(['gym_vector'], flags): gym_vector's block over defaults"},
        "notes": [
            "In sequential mode the posterior state is carried into the next chunk of the same batch slot, but "
            "gradients are still truncated at chunk boundaries (truncated BPTT over dataset.length steps).",
            f"With dataset.length {args.length} and delay {args.delay}, the cue and the reward are "
            f"{args.delay + 1} rows apart, so no single chunk holds both when delay + 1 > length.",
            "Eval policy is greedy (mode of the actor); a policy that ignores the cue still scores 0.5 in "
            "expectation; each evaluation averages eval_eps episodes (a binomial: std 0.5/sqrt(eval_eps)).",
        ],
        "summary": summary,
        "runs": runs,
    }
    if args.note:
        report["observation"] = args.note
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    print(json.dumps(summary))
    return 0 if all(r["error"] is None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
