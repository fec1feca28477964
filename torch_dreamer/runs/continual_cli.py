"""`dreamer continual`: Continual-Dreamer's experiments with their own command lines.

    dreamer continual minigrid --cl --num_tasks=3 --steps=750000 --seed=1 --logdir=logs_cl --minlen=5 ...
    dreamer continual minihack --cl --cl_small --num_tasks=4 --reservoir_sampling ...
    dreamer continual interference --cl --num_tasks=2 --plan2explore ...   (or --proc)
    dreamer continual reference minigrid --steps=750000 --seed=1 --logdir=refs   # single-task runs for FT
    dreamer continual metrics --logdir RUN [RUN ...] [--reference REF [REF ...]] [--metric success|return]
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib

import gymnasium
import numpy as np

from torch_dreamer.errors import UserError
from torch_dreamer.runs.continual_flags import run_logdir, split_flags, translate

SUITES = ("minigrid", "minihack", "interference")
MINIHACK_SMALL = ["minihack_MiniHack-Room-Random-15x15-v0", "minihack_MiniHack-Room-Trap-15x15-v0",
                  "minihack_MiniHack-River-Narrow-v0", "minihack_MiniHack-River-Monster-v0"]
MULTISKILL = "minigrid_MiniGrid-MultiSkill-N2-v0"
USAGE = __doc__


def build(suite: str, argv: list[str]):
    """(config, eval task names) of a Continual-Dreamer command line for `suite`."""
    from torch_dreamer.config import resolve
    from torch_dreamer.envs.fourrooms import interference_id

    if suite not in SUITES:
        raise UserError(f"unknown continual suite '{suite}'; choose {', '.join(SUITES)}, reference or metrics")
    known, rest = split_flags(argv)
    updates, options = translate(known)
    config = resolve([f"cl_{suite}"], []).update(updates).parse_flags(rest)
    tasks = list(config.cl.tasks)
    extra_eval: list[str] = []
    if suite == "minihack" and config.cl.small:
        tasks = list(MINIHACK_SMALL)
    if suite == "interference":
        layout = config.cl.env_seed if config.cl.env_seed >= 0 else config.seed
        pair = [f"minigrid_{interference_id(layout, goal)}" for goal in (0, 1)]
        tasks, extra_eval = (["minigrid_MiniGrid-FourRooms-v0"], pair) if config.cl.proc else (pair, [])
    if suite == "minigrid" and config.cl.eval_skills:
        extra_eval = [MULTISKILL]
    if not config.cl.enabled:  # the original's single-task run: task --env of the list
        if not 0 <= config.cl.env < len(tasks):
            raise UserError(f"--env {config.cl.env} is not a task index (0..{len(tasks) - 1})")
        tasks = [tasks[config.cl.env]]
    count = len(tasks) if not config.cl.enabled else min(max(int(config.cl.num_tasks), 1), len(tasks))
    if config.cl.enabled and config.cl.num_tasks > len(tasks):
        raise UserError(f"--num_tasks {config.cl.num_tasks}: the {suite} list has {len(tasks)} tasks")
    config = config.update({"cl.tasks": tasks, "cl.num_tasks": count, "task": tasks[0], "cl.suite": suite,
                            "logdir": run_logdir(suite, options, config.seed)})
    return config, tasks[:count] + extra_eval


def env_factory(config):
    """`make_envs(task, mode, seed) -> VectorEnv` for a continual run (state bonus on training envs only)."""
    from torch_dreamer.envs import make_vector_env
    from torch_dreamer.envs.state_bonus import VisitCounts

    kept = VisitCounts() if config.cl.state_bonus_keep else None
    if config.cl.state_bonus and config.cl.state_bonus_keep and config.envs > 1:
        raise UserError("--state_bonus_keep shares visit counts between envs of this process; use --envs 1")

    def make_envs(task: str, mode: str, seed: int):
        task_config = config.update({"task": task})
        if not (config.cl.state_bonus and mode == "train"):
            return make_vector_env(task_config, mode, config.envs, seed)
        counts = kept if kept is not None else VisitCounts()  # a new table per task: counts reset
        fns = [functools.partial(_bonus_env, task_config, seed + i, counts) for i in range(int(config.envs))]
        return gymnasium.vector.SyncVectorEnv(fns, autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP)

    return make_envs


def _bonus_env(config, seed, counts):
    from torch_dreamer.envs import make_env
    from torch_dreamer.envs.state_bonus import StateBonus

    return StateBonus(make_env(config, "train", seed), counts)


def cmd_run(suite: str, argv: list[str]) -> int:
    from torch_dreamer.runs.continual import ContinualRun

    config, eval_tasks = build(suite, argv)
    if config.cl.state_bonus and config.expl_behavior.lower() != "greedy":
        raise UserError("--state_bonus and --plan2explore do not combine (the original asserts it); pick one")
    result = ContinualRun(config, env_factory(config), eval_tasks).run()
    print("Finished: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return 0


def cmd_reference(argv: list[str]) -> int:
    """Single-task reference runs (forward transfer's baseline): task i alone, from scratch, `{logdir}/task_{i}`."""
    from torch_dreamer.runs.continual import ContinualRun

    if not argv or argv[0] not in SUITES:
        raise UserError(f"usage: dreamer continual reference {{{','.join(SUITES)}}} [flags]")
    config, _ = build(argv[0], argv[1:] + ["--cl"])
    base = config.logdir
    for index, task in enumerate(config.cl.tasks[: config.cl.num_tasks]):
        single = config.update({"cl.tasks": [task], "cl.num_tasks": 1, "cl.num_task_repeats": 1,
                                "cl.unbalanced_steps": [config.cl.unbalanced_steps[index]] if config.cl.unbalanced_steps else [],
                                "logdir": f"{base}/task_{index}", "task": task})
        print(f"Reference run {index}: {task}")
        ContinualRun(single, env_factory(single), [task]).run()
    return 0


def cmd_metrics(argv: list[str]) -> int:
    from torch_dreamer.config import Config, load_yaml
    from torch_dreamer.runs.continual import task_schedule
    from torch_dreamer.tools import cl_metrics

    parser = argparse.ArgumentParser(prog="dreamer continual metrics")
    parser.add_argument("--logdir", nargs="+", required=True, help="continual runs (one per seed)")
    parser.add_argument("--reference", nargs="*", default=[], help="folders of `dreamer continual reference` runs")
    parser.add_argument("--metric", default="success", choices=["success", "return"])
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    per_run = []
    for logdir in map(pathlib.Path, args.logdir):
        if not (logdir / "metrics.jsonl").exists():
            raise UserError(f"{logdir} holds no metrics.jsonl; pass the folders of continual runs")
        config = Config(load_yaml(logdir / "config.yaml"))
        schedule = task_schedule(config)
        curves = cl_metrics.read_curves(logdir, args.metric, len(schedule), int(config.get("action_repeat", 1)))
        edges = np.cumsum([0] + [steps for *_, steps in schedule]).tolist()
        references = None
        if args.reference:
            try:
                references = [cl_metrics.reference_curve(args.reference, task_id, args.metric)
                              for task_id, *_ in schedule]
            except FileNotFoundError as error:
                raise UserError(str(error)) from None
        per_run.append(cl_metrics.cl_metrics(curves, edges, references))
    summary = {key: cl_metrics.bootstrap([run[key] for run in per_run]) for key in per_run[0]}
    for key, value in summary.items():
        print(f"{key:>17}: {value['mean']:.3f}  [{value['low']:.3f}, {value['high']:.3f}]  over {value['seeds']} runs")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps({"runs": per_run, "summary": summary}, indent=2) + "\n")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] == "metrics":
        return cmd_metrics(argv[1:])
    if argv[0] == "reference":
        return cmd_reference(argv[1:])
    return cmd_run(argv[0], argv[1:])
