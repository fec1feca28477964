"""Replay composition over the 3-task MiniGrid sequence for FIFO, random replacement and reservoir eviction.

Cheap by design: a random policy collects `--steps` env steps per task (DoorKey-8x8, LavaCrossingS9N1,
SimpleCrossingS9N1 with Continual-Dreamer's settings: egocentric view, time limit 100), no learning; every
episode goes into one store per eviction rule with a capacity of one task's worth of steps. After each
task the share of every task's episodes in each store is recorded. Results JSON in benchmarks/results/.

    python benchmarks/continual.py --steps 20000 --capacity 20000
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


def main() -> None:
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
