"""The `dreamer` command: train, eval, config and plot.

    dreamer train --logdir ~/logdir/pong --configs atari --task atari_pong [--key value ...]
    dreamer eval --logdir ~/logdir/pong --episodes 10 --video pong.gif
    dreamer config --configs atari debug --rssm.deter 200
    dreamer plot --indir ~/logdir --outdir ~/plots
"""

from __future__ import annotations

import sys

from torch_dreamer.errors import UserError

USAGE = """usage: dreamer {train,actor,eval,config,plot} ...

  train   --logdir DIR --configs NAME [NAME ...] [--key value ...]   train, or resume the run in DIR
          [--workers N] [--offline_dir DIR|URL|minari:ID] [--replay_dir URL]   (docs/distributed.md)
  actor   --replay_dir URL --policy_dir URL [--mode train|eval] [train flags]   an env worker
  eval    --logdir DIR [--episodes N] [--video PATH] [--device D]    evaluate the latest checkpoint
  config  --configs NAME [NAME ...] [--key value ...]                print the resolved config
  plot    --indir DIR [DIR ...] --outdir OUT [...]                    learning curves and scores
"""


def split_configs(argv: list[str]) -> tuple[list[str], list[str]]:
    """Takes `--configs a b` (or `--configs a,b`) out of argv; returns (names, the other flags)."""
    names, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--configs":
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                names += [n for n in argv[i].split(",") if n]
                i += 1
        else:
            rest.append(argv[i])
            i += 1
    return names, rest


def resolve_config(argv: list[str]):
    from torch_dreamer.config import resolve

    names, flags = split_configs(argv)
    return resolve(names, flags)


def cmd_train(argv: list[str]) -> int:
    from torch_dreamer.envs import make_vector_env
    from torch_dreamer.runs.setup import validate_run_keys

    config = resolve_config(argv)
    validate_run_keys(config)  # before any env starts
    make_eval = lambda: make_vector_env(config, "eval", config.envs, config.seed + 10_000)
    if config.offline_dir:
        from torch_dreamer.runs.loops import train_offline

        # Offline runs evaluate only on a task the user names: the default task is not their data's.
        task_given = any(arg == "--task" or arg.startswith("--task=") for arg in argv)
        result = train_offline(config, make_eval() if task_given and config.eval_eps > 0 else None)
    elif config.workers > 0 or config.eval_workers > 0 or config.learner_only:
        from torch_dreamer.runs.loops import train_with_workers

        result = train_with_workers(config)
    else:
        from torch_dreamer.runs.train import Trainer

        train_envs = make_vector_env(config, "train", config.envs, config.seed)
        result = Trainer(config, train_envs, make_eval() if config.eval_eps > 0 else None).run()
    print("Finished: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return 0


def cmd_eval(argv: list[str]) -> int:
    import argparse

    from torch_dreamer.envs import make_vector_env
    from torch_dreamer.runs.evaluate import evaluate, load_agent, load_config

    parser = argparse.ArgumentParser(prog="dreamer eval")
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--video", default=None, help="write the first episode as .gif or .mp4")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", default="eval", choices=["eval", "train", "explore"])
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    config = load_config(args.logdir)
    seed = args.seed if args.seed is not None else config.seed + 20_000
    envs = make_vector_env(config, "eval", 1, seed)
    result = evaluate(envs, load_agent(args.logdir, args.device), args.episodes, args.video, args.mode, seed)
    print(f"{config.task}: return {result['mean']:.2f} +- {result['std']:.2f} over {args.episodes} episodes")
    if args.video:
        print(f"Video written to {args.video}")
    return 0


def cmd_actor(argv: list[str]) -> int:
    """An env worker against shared storage: `dreamer actor --replay_dir URL --policy_dir URL [train flags]`."""
    from torch_dreamer.runs.actor import run_actor

    own, rest, i = {"--mode": "train", "--name": None}, [], 0
    while i < len(argv):
        key, _, value = argv[i].partition("=")
        if key in own:
            if not value:
                i += 1
                value = argv[i] if i < len(argv) else ""
            own[key] = value
        else:
            rest.append(argv[i])
        i += 1
    config = resolve_config(rest)
    if not config.replay_dir or not config.policy_dir:
        raise UserError("dreamer actor needs --replay_dir URL and --policy_dir URL (the learner's storage)")
    if own["--mode"] not in ("train", "eval"):
        raise UserError(f"--mode must be train or eval, not '{own['--mode']}'")
    import os
    import socket

    name = own["--name"] or f"{own['--mode']}-{socket.gethostname()}-{os.getpid()}"
    counts = run_actor(dict(config.flat), str(config.replay_dir), str(config.policy_dir), name, own["--mode"],
                       config.seed, threads=max(1, os.cpu_count() or 1))
    print(f"Actor {name} finished: {counts['episodes']} episodes, {counts['steps']} steps")
    return 0


def cmd_config(argv: list[str]) -> int:
    print(resolve_config(argv).yaml(), end="")
    return 0


def cmd_plot(argv: list[str]) -> int:
    from torch_dreamer.tools import plot

    return plot.main(argv)


COMMANDS = {"train": cmd_train, "actor": cmd_actor, "eval": cmd_eval, "config": cmd_config, "plot": cmd_plot}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"error: unknown command '{argv[0]}'; choose train, actor, eval, config or plot", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
