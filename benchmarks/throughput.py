"""Training updates per second and policy steps per second of the DreamerV2 agent.

Measures the `atari` and `dmc_vision` configs (batch 16 x 50, as the official) at precision 32 and
bf16, on the CPU and on a GPU when one is available, with synthetic batches (so the figures are the
agent's, not the environment's). Writes JSON to benchmarks/results/throughput-<device>-<date>.json.

    python benchmarks/throughput.py                      # everything available
    python benchmarks/throughput.py --configs atari --precisions 32 --updates 3 --devices cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import time

import numpy as np
import torch

from torch_dreamer.agent.agent import Agent
from torch_dreamer.config import resolve

SPACES = {
    "atari": ({"image": ((64, 64, 1), "uint8")}, 6, True),
    "dmc_vision": ({"image": ((64, 64, 3), "uint8")}, 6, False),
}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return platform.processor() or "cpu"


def synthetic_batch(obs, act_dim, discrete, T, B, device):
    batch = {}
    for key, (shape, dtype) in obs.items():
        batch[key] = torch.randint(0, 256, (T, B, *shape), dtype=torch.uint8, device=device)
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


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(config_name: str, precision: str, device: str, updates: int, policy_steps: int, jit: bool) -> dict:
    obs, act_dim, discrete = SPACES[config_name]
    config = resolve([config_name], ["--precision", precision, "--jit", str(jit)])
    torch.manual_seed(0)
    agent = Agent(config, obs, act_dim, discrete).to(device)
    T, B = config.dataset.length, config.dataset.batch
    batch = synthetic_batch(obs, act_dim, discrete, T, B, device)
    agent.train_step(batch)  # warm-up: allocations, autotuning, compilation
    sync(device)
    start = time.perf_counter()
    for _ in range(updates):
        agent.train_step(batch)
    sync(device)
    update_time = (time.perf_counter() - start) / updates
    step_obs = {k: v[0, :1] for k, v in batch.items() if k in obs}
    step_obs["is_first"] = torch.zeros(1, dtype=torch.bool, device=device)
    state = None
    _, state = agent.policy(step_obs, state, "train")
    sync(device)
    start = time.perf_counter()
    for _ in range(policy_steps):
        _, state = agent.policy(step_obs, state, "train")
    sync(device)
    policy_time = (time.perf_counter() - start) / policy_steps
    return {"config": config_name, "precision": precision, "device": device, "batch": [B, T],
            "seconds_per_update": update_time, "updates_per_second": 1 / update_time,
            "policy_steps_per_second": 1 / policy_time}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=list(SPACES))
    parser.add_argument("--precisions", nargs="+", default=["32", "bf16"])
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--policy-steps", type=int, default=200)
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = parser.parse_args()
    results = []
    for device in args.devices:
        for name in args.configs:
            for precision in args.precisions:
                updates = args.updates if device == "cpu" else max(args.updates, 20)
                row = measure(name, precision, device, updates, args.policy_steps, args.jit)
                row["device_name"] = device_name(device)
                results.append(row)
                print(f"{device_name(device):40s} {name:11s} precision {precision:4s}  "
                      f"{row['seconds_per_update']:7.3f} s/update  {row['updates_per_second']:7.2f} updates/s  "
                      f"{row['policy_steps_per_second']:7.1f} policy steps/s", flush=True)
    date = datetime.date.today().isoformat()
    tag = "gpu" if any(d.startswith("cuda") for d in args.devices) else "cpu"
    out = pathlib.Path(args.out) / f"throughput-{tag}-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": date, "torch": torch.__version__, "numpy": np.__version__,
                               "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
