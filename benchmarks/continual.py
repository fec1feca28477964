"""Continual-Dreamer figures on the 3-task MiniGrid sequence (DoorKey-8x8, LavaCrossingS9N1, SimpleCrossingS9N1).

Part 1, `composition` (the default): replay composition for FIFO, random replacement and reservoir eviction.
Cheap by design: a random policy collects `--steps` env steps per task (DoorKey-8x8, LavaCrossingS9N1,
SimpleCrossingS9N1 with Continual-Dreamer's settings: egocentric view, time limit 100), no learning; every
episode goes into one store per eviction rule with a capacity of one task's worth of steps. After each
task the share of every task's episodes in each store is recorded. Results JSON in benchmarks/results/.

    python benchmarks/continual.py --steps 20000 --capacity 20000

Part 2, `learn`: a short learning run of DV2 and DV2 + Plan2Explore + reservoir (the README's commands,
`--minlen=5`, a reduced model so it fits a CPU; `--steps` per task), single-task reference runs for
forward transfer, then `dreamer continual metrics` on success rates, next to the paper's DV2 figures.

    python benchmarks/continual.py learn --steps 8000
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform

import numpy as np

from torch_dreamer.data import EpisodeStore
from torch_dreamer.data.replay_strategies import make_eviction
from torch_dreamer.runs.acting import RandomPolicy
from torch_dreamer.runs.continual_cli import build
from torch_dreamer.runs.driver import Driver
from torch_dreamer.runs.spaces import Spaces

EVICTIONS = ("fifo", "random_replacement", "reservoir")


def shares(store: EpisodeStore, tasks: int) -> list[float]:
    held = [int(store.get(k)["task"][0]) for k in store.keys()]
    counts = np.bincount(held, minlength=tasks)
    return (counts / max(counts.sum(), 1)).round(3).tolist()


# The paper's MiniGrid figures (0.75M steps per task, 2M buffer, 20 seeds), from a third-party summary
# (reference §7), unverified against the paper.
PAPER = {"DV2": {"performance": 0.72, "forgetting": -0.11, "forward_transfer": 0.49},
         "DV2+p2e": {"performance": 0.46, "forgetting": 0.05, "forward_transfer": 0.43}}
# A model small enough for a 2-core CPU (the official DreamerV2 sizes take seconds per update there).
SMALL_MODEL = ["--rssm.deter", "128", "--rssm.hidden", "128", "--rssm.stoch", "16", "--rssm.discrete", "16",
               "--encoder.cnn_depth", "8", "--decoder.cnn_depth", "8", "--reward_head.units", "128",
               "--discount_head.units", "128", "--actor.units", "128", "--critic.units", "128",
               "--actor.layers", "2", "--critic.layers", "2", "--reward_head.layers", "2",
               "--discount_head.layers", "2", "--expl_head.units", "128", "--expl_head.layers", "2",
               "--dataset.batch", "8", "--dataset.length", "32", "--progress", "False", "--wandb.mode", "disabled"]
VARIANTS = {
    "DV2": ["--sep_exp_eval_policies", "--rssm_full_recon"],
    "DV2+p2e+reservoir": ["--sep_exp_eval_policies", "--rssm_full_recon", "--plan2explore",
                          "--expl_intr_scale=0.9", "--expl_extr_scale=0.9", "--reservoir_sampling"],
}


def learn(argv: list[str]) -> None:
    import time

    from actors import cpu_name  # benchmarks/actors.py, beside this file
    from torch_dreamer.cli import main as dreamer

    parser = argparse.ArgumentParser(prog="benchmarks/continual.py learn")
    parser.add_argument("--steps", type=int, default=8000, help="env steps per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logdir", default="/tmp/continual-learn")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    # The paper's buffer held 2M of 2.25M steps; the same ratio here.
    budget = ["--cl", "--num_tasks=3", f"--steps={args.steps}", f"--seed={args.seed}", "--minlen=5",
              f"--replay_capacity={int(args.steps * 3 * 2 / 2.25)}", "--prefill", str(args.steps // 8),
              "--eval_every", str(args.steps // 4), "--cl.eval_eps_per_task", "5", *SMALL_MODEL]
    result = {"date": datetime.date.today().isoformat(), "device": cpu_name(), "steps_per_task": args.steps,
              "budget": budget, "paper_0.75M_steps_per_task": PAPER, "runs": {}}
    started = time.perf_counter()
    reference = f"{args.logdir}/reference"
    assert dreamer(["continual", "reference", "minigrid", f"--logdir={reference}", "--tag=ref",
                    "--sep_exp_eval_policies", "--rssm_full_recon", *budget]) == 0
    ref_dir = f"{reference}/minigrid_ref_{args.seed}"
    for name, flags in VARIANTS.items():
        tag = name.replace("+", "_")
        assert dreamer(["continual", "minigrid", f"--logdir={args.logdir}", f"--tag={tag}", *flags, *budget]) == 0
        run = f"{args.logdir}/minigrid_{tag}_{args.seed}"
        out = pathlib.Path(run) / "cl_metrics.json"
        assert dreamer(["continual", "metrics", "--logdir", run, "--reference", ref_dir, "--metric", "success",
                        "--out", str(out)]) == 0
        result["runs"][name] = {key: value["mean"] for key, value in json.loads(out.read_text())["summary"].items()}
        result["runs"][name]["final_eval"] = final_eval(run)
    result["wall_clock_s"] = round(time.perf_counter() - started)
    result["paper_budget_ratio"] = round(750_000 / args.steps)
    print(json.dumps(result["runs"], indent=2))
    path = pathlib.Path(args.out or f"benchmarks/results/continual-learn-cpu-{result['date']}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")


# 0.5 * log(2 pi) per pixel channel: the image NLL of a unit-variance Gaussian decoder never goes below
# 12288 times this on 64x64x3 frames, so the world model's progress is the excess over it.
NLL_FLOOR = 0.5 * 64 * 64 * 3 * float(np.log(2 * np.pi))


def final_eval(run: str) -> dict:
    """The last logged eval_return_i / eval_success_i of a run, and each task's first and last
    `eval_recon_loss_i` as the excess over the Gaussian floor (the world model's learning, visible even
    when no task is solved)."""
    last, recon = {}, {}
    for line in (pathlib.Path(run) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        last.update({k: v for k, v in row.items() if k.startswith(("eval_return_", "eval_success_"))})
        for key in (k for k in row if k.startswith("eval_recon_loss_")):
            recon.setdefault(key, []).append(round(row[key] - NLL_FLOOR, 1))
    last.update({f"{key}_above_floor_first_last": [values[0], values[-1]] for key, values in recon.items()})
    return last


def main() -> None:
    import sys

    if sys.argv[1:2] == ["learn"]:
        return learn(sys.argv[2:])
    if sys.argv[1:2] == ["composition"]:
        sys.argv.pop(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per task")
    parser.add_argument("--capacity", type=int, default=20_000, help="replay capacity in steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    config, _ = build("minigrid", ["--cl", "--num_tasks=3", f"--seed={args.seed}", "--minlen=5",
                                   "--encoder.cnn_keys", "$^", "--decoder.cnn_keys", "$^"])
    from torch_dreamer.envs import make_vector_env

    stores = {name: EpisodeStore(None, args.capacity, 5, eviction=make_eviction(name, args.seed)) for name in EVICTIONS}
    timeline = {name: [] for name in EVICTIONS}
    for task_id, task in enumerate(config.cl.tasks):
        envs = make_vector_env(config.update({"task": task}), "train", 1, args.seed + task_id)
        spaces = Spaces.from_vector_env(envs)
        driver = Driver(envs, seed=args.seed + task_id)

        def on_episode(episode, worker, task_id=task_id):
            episode = {**episode, "task": np.full(len(episode["action"]), task_id, np.int32)}
            for store in stores.values():
                store.add(episode)

        driver.on_episode.append(on_episode)
        driver(RandomPolicy(spaces.act_dim, spaces.discrete, args.seed), steps=args.steps)
        driver.close()
        for name, store in stores.items():
            timeline[name].append({"after_task": task_id, "shares": shares(store, 3), **store.stats()})
    result = {
        "date": datetime.date.today().isoformat(), "device": platform.processor() or platform.machine(),
        "tasks": list(config.cl.tasks), "steps_per_task": args.steps, "capacity": args.capacity,
        "policy": "uniform random (no learning)", "timeline": timeline,
        "final_shares": {name: steps[-1]["shares"] for name, steps in timeline.items()},
    }
    print(json.dumps(result["final_shares"], indent=2))
    out = pathlib.Path(args.out or f"benchmarks/results/continual-composition-cpu-{result['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
