"""The `dreamer` command: train, eval, config and plot.

    dreamer train --logdir ~/logdir/pong --configs atari --task atari_pong [--key value ...]
    dreamer eval --logdir ~/logdir/pong --episodes 10 --video pong.gif
    dreamer config --configs atari debug --rssm.deter 200
    dreamer plot --indir ~/logdir --outdir ~/plots
"""

from __future__ import annotations

import signal
import sys

from torch_dreamer.errors import UserError

USAGE = """usage: dreamer {train,actor,eval,config,plot} ...

  train   --logdir DIR --configs NAME [NAME ...] [--key value ...]   train, or resume the run in DIR
          [--workers N] [--offline_dir DIR|URL|minari:ID] [--replay_dir URL]   (docs/distributed.md)
  actor   --replay_dir URL --policy_dir URL [--mode train|eval] [train flags]   an env worker
  eval    --logdir DIR [--episodes N] [--video PATH] [--device D]    evaluate the latest checkpoint
  config  --configs NAME [NAME ...] [--key value ...]                print the resolved config
  plot    --indir DIR [DIR ...] --outdir OUT [...]                    learning curves and scores

`dreamer COMMAND --help` shows a command's most used keys and examples; `dreamer config` prints every key.
"""

RUN_KEYS = """Most used keys (any config key works: nested keys dotted, e.g. --rssm.deter 600, or a regex, e.g. --'.*\\.norm' layer):
  --logdir DIR             run folder: checkpoint.pt, config.yaml, metrics.jsonl, episodes, TensorBoard files
  --configs NAME ...       blocks applied over `defaults` in order: {blocks}
  --task TASK              atari_pong, dmc_walker_walk, crafter_reward, minigrid_<id>, minihack_<id>, gym_<id>
  --steps N                agent steps to train for (logged steps are frames: steps x action_repeat)
  --prefill N              random steps collected before training
  --eval_every N           agent steps between evaluations; --eval_eps N episodes each (0: none)
  --log_every N            agent steps between metric lines
  --seed N                 seeds torch, numpy, the envs and replay sampling; --deterministic True repeats a run
  --device auto|cpu|cuda   --precision 32|16|bf16   --envs N (env copies)   --progress True|False (live bar)"""

HELP = {
    "train": """usage: dreamer train --logdir DIR [--configs NAME ...] [--task TASK] [--key value ...]

Trains DreamerV2 on TASK, or resumes the run in DIR (the same command again continues it).

{keys}
  --workers N              env worker processes; --offline_dir DIR|URL trains from fixed episodes (docs/distributed.md)
  --gpus N | --nproc N     N data-parallel learners (torchrun; NCCL on GPUs, gloo on CPUs); dataset.batch is global

All keys and their values: dreamer config [--configs NAME ...] (defaults: torch_dreamer/configs.yaml)

Examples:
  dreamer train --logdir logdir/cartpole --configs gym_vector --task gym_CartPole-v1 --steps 6000
  dreamer train --logdir ~/logdir/pong --configs atari --task atari_pong
  dreamer train --logdir ~/logdir/walker --configs dmc_vision --task dmc_walker_walk --precision bf16
  dreamer train --logdir ~/logdir/debug --configs atari debug --loss_scales.kl 1.0
""",
    "actor": """usage: dreamer actor --replay_dir URL --policy_dir URL [--mode train|eval] [--name NAME] [train keys ...]

An env worker for a learner elsewhere (`dreamer train --learner_only True`): steps envs with the newest
weights from --policy_dir and writes finished episodes to --replay_dir (docs/distributed.md).

  --replay_dir URL         where the learner reads episodes (a path, s3://, gs://, memory://)
  --policy_dir URL         where the learner publishes weights
  --mode train|eval        collect training data (default) or evaluation episodes
  --name NAME              this actor's name in the logs (default: mode-host-pid)
  --configs / --task / ... the same keys as the learner's, so both build the same agent

All keys and their values: dreamer config [--configs NAME ...]

Examples:
  dreamer actor --replay_dir s3://bucket/replay --policy_dir s3://bucket/policy --configs atari --task atari_pong
  dreamer actor --replay_dir ~/shared/replay --policy_dir ~/shared/policy --mode eval --configs atari --task atari_pong
""",
    "eval": """usage: dreamer eval --logdir DIR [--episodes N] [--video PATH] [--seed N] [--mode eval|train|explore] [--device D]

Evaluates the latest checkpoint in DIR on the env it was trained on (its task, or the env a Python API run
recorded) and prints the mean and std return.

  --logdir DIR             a run folder with checkpoint.pt
  --episodes N             complete episodes to run (default 1)
  --video PATH             write the first episode: .gif, or .mp4 with imageio-ffmpeg ('torch_dreamer[video]')
  --seed N                 seeds the env, torch and numpy: the same seed repeats the evaluation exactly
  --mode eval|train|explore  the policy's mode (eval, the default), a sample (train), or the exploration policy
  --device auto|cpu|cuda

Examples:
  dreamer eval --logdir ~/logdir/pong --episodes 10 --video pong.gif
  dreamer eval --logdir logdir/cartpole --episodes 5 --seed 1
""",
    "config": """usage: dreamer config [--configs NAME ...] [--key value ...]

Prints the resolved config, every key with its value: `defaults`, then each --configs block in order, then
the --key value overrides, exactly as `dreamer train` would use them.

  --configs NAME ...       {blocks}
  --key value              any key; nested keys dotted (--rssm.deter 600), regexes allowed (--'.*\\.norm' layer)

Examples:
  dreamer config                                  # the defaults (the official DreamerV2 ones)
  dreamer config --configs atari debug            # what `--configs atari debug` trains with
  dreamer config --configs dmc_vision --rssm.deter 400 | grep rssm
""",
}


def wants_help(argv: list[str], command: str) -> bool:
    """Prints `command`'s help when argv asks for it (-h or --help anywhere); True if it did."""
    if not any(arg in ("-h", "--help") for arg in argv):
        return False
    try:
        from torch_dreamer.config import load_configs

        blocks = ", ".join(name for name in load_configs() if name != "defaults")
    except Exception:  # help must never fail
        blocks = "atari, dmc_vision, dmc_proprio, crafter, minigrid, minihack, gym_vector, small, debug"
    keys = RUN_KEYS.format(blocks=blocks)
    print(HELP[command].format(keys=keys, blocks=blocks), end="")
    return True


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


def load_torch() -> None:
    """Imports torch with Ctrl-C and SIGTERM held until it is loaded: an interrupt that lands inside torch's
    C++ import code aborts the interpreter (pybind11 cannot pass a KeyboardInterrupt on) instead of raising."""
    from torch_dreamer.tools.files import deferred_interrupts

    with deferred_interrupts():
        import torch  # noqa: F401


def cmd_train(argv: list[str]) -> int:
    if wants_help(argv, "train"):
        return 0
    load_torch()
    from torch_dreamer.envs import make_vector_env
    from torch_dreamer.runs import distributed
    from torch_dreamer.runs.setup import validate_run_keys

    launched = distributed.launch(argv, resolve_config)  # --nproc N / --gpus N: torchrun starts N learners
    if launched is not None:
        return launched
    config = resolve_config(argv)
    validate_run_keys(config)  # the whole config, before any env starts or any file is written
    make_eval = lambda: make_vector_env(config, "eval", config.envs, config.seed + 10_000)
    ranks = distributed.ranks_from_env()  # under torchrun: this process is one of several learners
    if ranks is not None:
        result = distributed.train_data_parallel(config, ranks)
    elif config.offline_dir:
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
        try:
            eval_envs = make_eval() if config.eval_eps > 0 else None
            trainer = Trainer(config, train_envs, eval_envs, name=str(config.task))
        except BaseException:
            train_envs.close()
            raise
        result = trainer.run()
    if result is not None:  # data-parallel learners other than rank 0 report nothing
        print("Finished: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return 0


def cmd_eval(argv: list[str]) -> int:
    if wants_help(argv, "eval"):
        return 0
    load_torch()
    import argparse

    from torch_dreamer.runs.evaluate import evaluate_logdir

    parser = _one_line_parser("dreamer eval")
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--video", default=None, help="write the first episode as .gif or .mp4")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", default="eval", choices=["eval", "train", "explore"])
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {args.episodes}")
    import os
    import pathlib

    # evaluate_logdir loads the checkpoint checked (`load_run_checkpoint`): another torch file or NaN
    # weights are one line before any env starts.
    video = pathlib.Path(args.video).expanduser() if args.video else None
    before = os.stat(video).st_mtime_ns if video is not None and video.exists() else None
    # The env the run was trained on (a Python API run's recorded env, else its task), checked against the
    # checkpoint's spaces; seeds envs, torch and numpy (default seed: the run's + 20000).
    result, config = evaluate_logdir(args.logdir, args.episodes, args.video, args.device, args.mode, args.seed)
    print(f"{result['env']}: return {result['mean']:.2f} +- {result['std']:.2f} over {args.episodes} episodes")
    if video is not None:
        if video.exists() and os.stat(video).st_mtime_ns != before:
            print(f"Video written to {args.video}")
        else:
            print(f"No video written: the episodes of {config.task} have no 'image' observation to film "
                  "(a vector task)")
    return 0


def _one_line_parser(prog: str):
    """An argparse parser whose mistakes are one `error:` line (exit 2) instead of usage + error."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UserError(f"{prog}: {message}")

    return Parser(prog=prog)


def cmd_actor(argv: list[str]) -> int:
    """An env worker against shared storage: `dreamer actor --replay_dir URL --policy_dir URL [train flags]`."""
    if wants_help(argv, "actor"):
        return 0
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


def cmd_continual(argv: list[str]) -> int:
    """Continual-Dreamer's experiments: `dreamer continual minigrid|minihack|interference|reference|metrics`."""
    from torch_dreamer.runs.continual_cli import main as continual_main

    return continual_main(argv)


def cmd_config(argv: list[str]) -> int:
    if wants_help(argv, "config"):
        return 0
    print(resolve_config(argv).yaml(), end="")
    return 0


def cmd_plot(argv: list[str]) -> int:
    from torch_dreamer.tools import plot

    return plot.main(argv)


def cmd_dream(argv: list[str]) -> int:
    """Dreams of a trained world model beside the real continuation, as a GIF or MP4 (docs/analysis.md)."""
    import argparse

    import torch

    from torch_dreamer import analysis

    examples = """examples:
  dreamer dream --logdir ~/logdir/doorkey --episode EPISODE.npz --start 10 --horizon 50 --samples 4 --out dream.gif
  dreamer dream --logdir ~/logdir/doorkey --start 10 --save-states states.npz    # the latest eval episode
  dreamer dream --logdir ~/logdir/doorkey --from-states states.npz --start 10 --policy task --out policy.mp4
"""
    parser = argparse.ArgumentParser(prog="dreamer dream", description=cmd_dream.__doc__, epilog=examples,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", required=True, help="the run whose checkpoint dreams")
    parser.add_argument("--episode", default=None, help="an episode .npz (default: the run's latest eval episode)")
    parser.add_argument("--from-states", dest="from_states", default=None,
                        help="start from states saved by --save-states or analysis.save_states")
    parser.add_argument("--start", type=int, default=0, help="the state to dream from (index into the states)")
    parser.add_argument("--horizon", type=int, default=50, help="imagined steps")
    parser.add_argument("--samples", type=int, default=4, help="dreams side by side, each with its own latents")
    parser.add_argument("--policy", choices=["task", "explore"], default=None,
                        help="dream with the policy's actions (default: the episode's own actions)")
    parser.add_argument("--key", default="image", help="the decoded image to show")
    parser.add_argument("--scale", type=int, default=1, help="pixel upscaling of the frames")
    parser.add_argument("--fps", type=float, default=8, help="frames per second of the video")
    parser.add_argument("--out", default="dream.gif", help="a .gif or .mp4 path (.mp4 needs imageio-ffmpeg)")
    parser.add_argument("--save-states", dest="save_states", default=None, help="also save the encoded states (.npz)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.horizon < 1 or args.samples < 1:
        raise UserError("--horizon and --samples must be at least 1")
    torch.manual_seed(args.seed)
    model = analysis.load(args.logdir, args.device)
    episode = analysis.load_episode(args.episode) if args.episode else None
    if episode is None and not args.from_states:
        files = model.episodes("eval") or model.episodes("train")
        if not files:
            raise UserError(f"no episodes in {args.logdir}; pass --episode FILE or --from-states S.npz")
        episode = analysis.load_episode(files[-1])
    states = analysis.load_states(args.from_states) if args.from_states else None
    if args.save_states:
        states = states if states is not None else model.encode(episode)
        print(f"States written to {analysis.save_states(args.save_states, states)}")
    result = analysis.dream(model, episode, states, args.start, args.horizon, args.samples, args.policy, args.key)
    path = analysis.write_video(args.out, analysis.render_dream(result["dreams"], result["real"], args.scale), args.fps)
    print(f"Dream of {len(result['dreams'])} frames x {args.samples} samples from step {args.start} written to {path}")
    return 0


COMMANDS = {"train": cmd_train, "actor": cmd_actor, "continual": cmd_continual, "eval": cmd_eval, "config": cmd_config, "plot": cmd_plot,
            "dream": cmd_dream}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"error: unknown command '{argv[0]}'; choose train, actor, eval, config or plot", file=sys.stderr)
        return 2
    # Schedulers (Slurm, Kubernetes) stop jobs with SIGTERM: handle it like Ctrl-C, which saves first.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return command(argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)  # main() called from Python leaves the caller's handler


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
