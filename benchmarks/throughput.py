"""Training updates per second and policy steps per second of the DreamerV2 agent.

Measures the `atari`, `dmc_vision` and `gym_vector` configs (batch 16 x 50, as the official) with synthetic
batches (so the figures are the agent's, not the environment's), for each `--compile` mode asked for. Every
variant runs in its own worker process and the updates are interleaved (one update of each variant in turn), so
all variants see the same machine load. With `--baseline PATH` the package in PATH (a git worktree of an older
commit, `git worktree add PATH <commit>`) runs eagerly beside the current one. Writes JSON to
benchmarks/results/throughput-<device>-<date>.json.

    python benchmarks/throughput.py                                   # current code, eager and step, CPU
    python benchmarks/throughput.py --baseline /work/baseline --configs gym_vector --updates 3 --threads 1
    python benchmarks/throughput.py --configs atari --compile none --precisions 32 bf16 --profile

`--profile` adds one profiled update per variant and splits its time by kind of op (matmul, convolution,
activation, the rest) with the model FLOPs of one update (torch's FlopCounterMode), so a figure can be read
against the machine's matmul and convolution speed: the time no change short of fewer FLOPs can remove.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
SPACES = {  # observation space, action size, discrete
    "atari": ({"image": ((64, 64, 1), "uint8")}, 6, True),
    "dmc_vision": ({"image": ((64, 64, 3), "uint8")}, 6, False),
    "gym_vector": ({"vector": ((4,), "float32")}, 2, True),
}


# ----------------------------------------------------------------------------- worker (one variant)


def synthetic_batch(obs, act_dim, discrete, T, B, device):
    import torch

    batch = {}
    for key, (shape, dtype) in obs.items():
        if dtype == "uint8":
            batch[key] = torch.randint(0, 256, (T, B, *shape), dtype=torch.uint8, device=device)
        else:
            batch[key] = torch.randn(T, B, *shape, device=device)
    if discrete:
        batch["action"] = torch.nn.functional.one_hot(torch.randint(0, act_dim, (T, B), device=device), act_dim).float()
    else:
        batch["action"] = torch.rand(T, B, act_dim, device=device) * 2 - 1
    batch["reward"] = torch.randn(T, B, device=device)
    batch["is_first"] = torch.zeros(T, B, dtype=torch.bool, device=device)
    batch["is_first"][0] = True
    batch["is_terminal"] = torch.zeros(T, B, dtype=torch.bool, device=device)
    batch["is_last"] = batch["is_terminal"]
    return batch


OP_KINDS = {  # profiler op names (self time) -> kind
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"),
    "convolution": ("aten::convolution_backward", "aten::_convolution", "aten::mkldnn_convolution",
                    "aten::cudnn_convolution", "aten::cudnn_convolution_transpose", "aten::_slow_conv2d_forward",
                    "aten::slow_conv_transpose2d"),
    "activation": ("aten::elu", "aten::elu_backward", "aten::silu", "aten::silu_backward", "aten::relu",
                   "aten::threshold_backward", "aten::gelu", "aten::gelu_backward"),
}


def count_native_transposed_conv() -> None:
    """FLOPs for `aten.slow_conv_transpose2d`, which torch's counter has no formula for (the decoder's one-channel
    last layer runs it on the CPU, `nets._last_deconv`)."""
    import torch
    from torch.utils import flop_counter

    op = torch.ops.aten.slow_conv_transpose2d
    if op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(op)(
            lambda x_shape, w_shape, *args, out_shape=None, **kwargs:
            flop_counter.conv_flop_count(x_shape, w_shape, out_shape, transposed=True))


def profile_update(agent, batch) -> dict:
    """One update's seconds by kind of op (self CPU time; on CUDA the launch side), the wall time outside any
    op, and the update's model FLOPs."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    kind_of = {name: kind for kind, names in OP_KINDS.items() for name in names}
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        agent.train_step(batch)
    wall = time.perf_counter() - start
    seconds = dict.fromkeys([*OP_KINDS, "other"], 0.0)
    for event in prof.key_averages():
        seconds[kind_of.get(event.key, "other")] += event.self_cpu_time_total / 1e6
    seconds["outside ops"] = max(wall - sum(seconds.values()), 0.0)  # Python, the profiler's own cost
    count_native_transposed_conv()
    counter = FlopCounterMode(display=False)
    with torch.compiler.set_stance("force_eager"), counter:  # compiled code runs no dispatch modes
        agent.train_step(batch)
    flops = counter.get_flop_counts().get("Global", {})
    conv = sum(n for op, n in flops.items() if "conv" in str(op))  # convolution*, slow_conv_transpose2d
    return {"seconds": seconds, "total_seconds": sum(seconds.values()), "gflop": counter.get_total_flops() / 1e9,
            "conv_gflop": conv / 1e9}


def worker(spec: dict) -> None:
    """Builds one agent, then answers commands on stdin ('update', 'policy N', 'profile', 'quit') with JSON
    lines."""
    import torch

    from torch_dreamer.agent.agent import Agent
    from torch_dreamer.config import resolve

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    obs, act_dim, discrete = SPACES[spec["config"]]
    flags = ["--precision", spec["precision"]]
    if spec["compile"] != "none":  # older code (a baseline) may not know the key
        flags += ["--compile", spec["compile"]]
    config = resolve([spec["config"]], flags)
    torch.manual_seed(0)
    agent = Agent(config, obs, act_dim, discrete).to(device)
    batch = synthetic_batch(obs, act_dim, discrete, config.dataset.length, config.dataset.batch, device)
    step_obs = {k: v[0, : spec["envs"]] for k, v in batch.items() if k in obs}
    step_obs["is_first"] = torch.zeros(spec["envs"], dtype=torch.bool, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    start = time.perf_counter()
    agent.train_step(batch)  # warm-up: allocations, autotuning, compilation
    _, state = agent.policy(step_obs, None, "train")
    sync()
    reply({"warmup_seconds": time.perf_counter() - start, "file": sys.modules["torch_dreamer"].__file__})
    for line in sys.stdin:
        command = line.split()
        if command[0] == "quit":
            return
        if command[0] == "profile":
            reply(profile_update(agent, batch))
            continue
        start = time.perf_counter()
        if command[0] == "update":
            agent.train_step(batch)
        else:
            for _ in range(int(command[1])):
                _, state = agent.policy(step_obs, state, "train")
        sync()
        reply({"seconds": time.perf_counter() - start})


def reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- driver


class Variant:
    """One worker process: a code root (current or baseline) and a compile mode."""

    def __init__(self, name: str, root: pathlib.Path, spec: dict):
        self.name, self.spec = name, spec
        env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=str(spec["threads"]))
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], cwd=root, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._read()
        if not self.ready["file"].startswith(str(root)):
            raise RuntimeError(f"{name} imported {self.ready['file']}, not the package under {root}")
        self.updates, self.policy, self.profile = [], [], None

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} {self.spec} failed (see its stderr above)")
        return json.loads(line)

    def ask(self, command: str):
        """The reply's seconds, or the whole reply of a 'profile'."""
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        answer = self._read()
        return answer if command == "profile" else answer["seconds"]

    def close(self) -> None:
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def rotated(items: list, shift: int) -> list:
    """Each round starts with another variant, so no variant always runs right after the same neighbour."""
    shift %= len(items)
    return items[shift:] + items[:shift]


def past(deadline: float | None) -> bool:
    """Whether `--budget` is spent: later rounds are skipped, so the script ends (and writes) on its own."""
    return deadline is not None and time.monotonic() > deadline


def measure(config: str, args) -> list[dict]:
    """Interleaved rounds: one update of every variant per round, then `policy_steps` policy steps of each."""
    base = {"config": config, "device": args.device, "threads": args.threads, "envs": args.envs}
    plan = [("current", REPO, dict(base, precision=p, compile=c)) for p in args.precisions for c in args.compile]
    if args.baseline:
        plan += [("baseline", pathlib.Path(args.baseline).resolve(), dict(base, precision=p, compile="none"))
                 for p in args.precisions]
    variants = [Variant(name, root, spec) for name, root, spec in plan]
    try:
        for round_ in range(args.updates):
            if round_ and past(args.deadline):
                break
            for variant in rotated(variants, round_):
                variant.updates.append(variant.ask("update"))
        for round_ in range(args.policy_rounds):
            if round_ and past(args.deadline):
                break
            for variant in rotated(variants, round_):
                variant.policy.append(variant.ask(f"policy {args.policy_steps}") / args.policy_steps)
        if args.profile:
            for variant in variants:
                variant.profile = variant.ask("profile")
    finally:
        for variant in variants:
            variant.close()
    rows = []
    for variant in variants:
        seconds = sorted(variant.updates)[len(variant.updates) // 2]  # the median resists a busy moment
        row = {"code": variant.name, **variant.spec, "warmup_seconds": variant.ready["warmup_seconds"],
               "seconds_per_update": seconds, "updates_per_second": 1 / seconds, "update_seconds": variant.updates}
        if variant.policy:
            row["policy_steps_per_second"] = 1 / sorted(variant.policy)[len(variant.policy) // 2]
        if variant.profile:
            row["profile"] = variant.profile
        rows.append(row)
    reference = {r["precision"]: r["seconds_per_update"] for r in rows if r["code"] == "baseline"}
    for row in rows:
        if row["precision"] in reference:
            row["speedup_vs_baseline"] = reference[row["precision"]] / row["seconds_per_update"]
        print(f"{config:11s} {row['code']:8s} compile {row['compile']:5s} precision {row['precision']:4s} "
              f"{row['seconds_per_update']:8.3f} s/update  {row['updates_per_second']:7.2f} updates/s  "
              f"x{row.get('speedup_vs_baseline', float('nan')):.2f} vs baseline  "
              f"{row.get('policy_steps_per_second', float('nan')):7.1f} policy steps/s  "
              f"(warm-up {row['warmup_seconds']:.1f} s)", flush=True)
        if "profile" in row:
            print_profile(row["profile"])
    return rows


def print_profile(profile: dict) -> None:
    """The profiled update by kind of op, and the matmul/convolution speed it reached."""
    seconds, gflop, conv = profile["seconds"], profile["gflop"], profile["conv_gflop"]
    split = "  ".join(f"{kind} {s:.3f}" for kind, s in seconds.items())
    rates = []
    for kind, flop in (("matmul", gflop - conv), ("convolution", conv)):
        if seconds[kind] > 0 and flop > 0:
            rates.append(f"{kind} {flop / seconds[kind]:.0f} GFLOP/s")
    print(f"            profiled update {profile['total_seconds']:.3f} s: {split} s;  {gflop:.1f} GFLOP "
          f"({conv:.1f} in convolutions);  {', '.join(rates)}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--configs", nargs="+", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--precisions", nargs="+", default=["32"])
    parser.add_argument("--compile", nargs="+", default=["none", "step"], help="modes of the current code")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (1: one core each)")
    parser.add_argument("--updates", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--budget", type=float, help="seconds after which no new round starts (each measurement "
                                                      "keeps at least one), for a fixed slot such as benchmarks/gpu.sh")
    parser.add_argument("--policy-steps", type=int, default=50)
    parser.add_argument("--policy-rounds", type=int, default=3)
    parser.add_argument("--envs", type=int, default=1, help="environments per policy step")
    parser.add_argument("--baseline", help="a checkout of older code (git worktree add PATH COMMIT) to run beside")
    parser.add_argument("--profile", action="store_true", help="one more update per variant, profiled by kind of op")
    parser.add_argument("--note", default="", help="recorded in the JSON, e.g. 'machine shared with other jobs'")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for the JSON")
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    args.deadline = time.monotonic() + args.budget if args.budget else None
    import torch

    results = [row for name in args.configs for row in measure(name, args)]
    date = datetime.date.today().isoformat()
    tag = "gpu" if args.device.startswith("cuda") else "cpu"
    out = pathlib.Path(args.out) / f"throughput-{tag}-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    baseline_commit = None
    if args.baseline:
        baseline_commit = subprocess.run(["git", "-C", args.baseline, "rev-parse", "HEAD"], capture_output=True,
                                         text=True).stdout.strip()
    out.write_text(json.dumps({"date": date, "device": args.device, "device_name": device_name(args.device),
                               "threads_per_worker": args.threads, "torch": torch.__version__,
                               "baseline": args.baseline, "baseline_commit": baseline_commit, "note": args.note,
                               "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
