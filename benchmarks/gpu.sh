#!/usr/bin/env bash
# GPU figures of issue 12 in one run (<= 8 minutes): at the Atari config (batch 16 x 50)
#   1. updates/s for eager, --compile step and --compile graph, each in fp32 and bf16, interleaved
#      (benchmarks/throughput.py);
#   2. --compile graph equals eager on this GPU (tests/agent/test_graph.py, the CUDA test included);
#   3. for eager fp32, eager bf16 and step bf16: kernel launches per update (torch.profiler), model FLOPs per update
#      (FlopCounterMode) -> utilisation of the card's dense peak, and the policy-step latency for 16 environments
#      (action back on the host).
# Run from the repository root on a machine with a CUDA GPU:  bash benchmarks/gpu.sh
# Writes benchmarks/results/throughput-gpu-<date>.json and benchmarks/results/gpu-profile-<date>.json.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=benchmarks/results
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== 1. updates/s (interleaved; compile time is the warm-up column)"
timeout 270 python benchmarks/throughput.py --device cuda --configs atari --precisions 32 bf16 \
  --compile none step graph --updates 20 --policy-steps 100 --policy-rounds 3 --envs 16 --threads 4 \
  --budget 200 --note "benchmarks/gpu.sh" || echo "throughput: failed or timed out (rc $?)"

echo "== 2. --compile graph equals eager"
timeout 120 python -m pytest -q -p no:cacheprovider tests/agent/test_graph.py || echo "graph test: failed (rc $?)"

echo "== 3. launches, FLOPs, utilisation, policy latency"
timeout 180 python - <<'EOF' || echo "profile: failed or timed out (rc $?)"
import datetime, json, pathlib, time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.throughput import SPACES, synthetic_batch
from torch_dreamer.agent.agent import Agent
from torch_dreamer.config import resolve
from torch_dreamer.runs import setup

# Dense peaks (no sparsity) in FLOP/s: TF32 applies to --precision 32 (setup turns it on), bf16 to bf16.
PEAKS = {"H100": {"32": 494e12, "bf16": 989e12}, "H200": {"32": 494e12, "bf16": 989e12},
         "A100": {"32": 156e12, "bf16": 312e12}}
name = torch.cuda.get_device_name()
peak = next((value for key, value in PEAKS.items() if key in name), None)
setup.seed_everything(0)  # TF32 and cuDNN autotuning, as a run sets them
obs, act_dim, discrete = SPACES["atari"]
date = datetime.date.today().isoformat()
out = pathlib.Path("benchmarks/results") / f"gpu-profile-{date}.json"
rows = []
for precision, mode in (("32", "none"), ("bf16", "none"), ("bf16", "step"), ("bf16", "graph")):
    config = resolve(["atari"], ["--precision", precision, "--compile", mode])
    agent = Agent(config, obs, act_dim, discrete).cuda()
    batch = synthetic_batch(obs, act_dim, discrete, 50, 16, "cuda")
    for _ in range(3):
        agent.train_step(batch)
    torch.cuda.synchronize()
    start, updates = time.perf_counter(), 10
    for _ in range(updates):
        agent.train_step(batch)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / updates
    if mode == "none":  # compiled code does the same math; the counter's dispatch mode would upset dynamo
        with FlopCounterMode(display=False) as counter:
            agent.train_step(batch)
        flops = counter.get_total_flops()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        agent.train_step(batch)
        torch.cuda.synchronize()
    launches = sum(e.count for e in prof.key_averages() if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC",
                                                                        "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch"))
    step_obs = {"image": batch["image"][0], "is_first": torch.zeros(16, dtype=torch.bool, device="cuda")}
    _, state = agent.policy(step_obs)
    torch.cuda.synchronize()
    start, steps = time.perf_counter(), 200
    for _ in range(steps):
        action, state = agent.policy(step_obs, state)
        action.cpu()  # the envs need it on the host
    latency = (time.perf_counter() - start) / steps
    row = {"precision": precision, "compile": mode, "seconds_per_update": seconds, "updates_per_second": 1 / seconds,
           "flops_per_update": flops, "achieved_flops": flops / seconds,
           "utilisation": flops / seconds / peak[precision] if peak else None,
           "kernel_launches_per_update": launches, "policy_step_ms_16_envs": latency * 1e3}
    rows.append(row)
    print(json.dumps(row), flush=True)
    # Written after every row, so a run cut short by its timeout keeps the rows it measured.
    out.write_text(json.dumps({"date": date, "device_name": name, "torch": torch.__version__, "peak_flops": peak,
                               "results": rows}, indent=2))
    del agent
    torch.cuda.empty_cache()
print(f"wrote {out}")
EOF
