"""Replay RAM per step: fill an EpisodeStore with Atari-like episodes and measure the process RSS.

Episodes: ``image uint8 (T+1, 64, 64, 3)``, one-hot ``action float32 (T+1, 18)``, ``reward float32``,
``is_first/is_last/is_terminal bool``, ``T`` uniform in [1000, 27000] (27000 = the Atari time limit),
the last episode trimmed so the store holds exactly ``--steps`` steps. Random pixels: RAM holds
decompressed arrays, so content does not matter, and random bytes make sure every page is touched.

Official DreamerV2 needs about 11.4 GB of RAM per 1M steps of 64x64x3 images (issue #40); the
payload alone is 12288 bytes per image, 12.3 GB (11.4 GiB) per 1M steps.

    python benchmarks/replay_memory.py            # 200k steps, about 2.5 GB
    python benchmarks/replay_memory.py --full     # 1M steps, about 12.5 GB of RAM needed
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np

from torch_dreamer.data import BatchLoader, ChunkSampler, EpisodeStore

OFFICIAL_GB_PER_1M = (11.4, 12.0)  # issue #40 and the 12288-byte image payload
RESULTS = Path(__file__).parent / "results"


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # reported in kB
    return fields["VmRSS"], fields["VmHWM"]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def atari_episode(rng: np.random.Generator, length: int, shape: tuple[int, ...], actions: int) -> dict:
    """One episode with ``length`` steps: arrays ``(length + 1, ...)`` in the official layout."""
    rows = length + 1
    action = np.zeros((rows, actions), np.float32)
    action[np.arange(1, rows), rng.integers(actions, size=length)] = 1.0
    flags = np.zeros((3, rows), bool)
    flags[0, 0] = flags[1, -1] = flags[2, -1] = True
    return {
        "image": rng.integers(0, 256, (rows, *shape), dtype=np.uint8),
        "action": action,
        "reward": rng.choice(np.float32([0, 0, 0, 1, -1]), rows),
        "is_first": flags[0].copy(),
        "is_last": flags[1].copy(),
        "is_terminal": flags[2].copy(),
    }


def fill(store: EpisodeStore, steps: int, args: argparse.Namespace) -> tuple[int, int]:
    """Add episodes until the store holds ``steps`` steps; returns (episodes, payload bytes)."""
    rng = np.random.default_rng(args.seed)
    shape = (args.size, args.size, args.channels)
    payload = episodes = 0
    while store.loaded_steps < steps:
        length = min(int(rng.integers(args.min_length, args.max_length + 1)), steps - store.loaded_steps)
        episode = atari_episode(rng, length, shape, args.actions)
        payload += sum(value.nbytes for value in episode.values())
        store.add(episode)
        episodes += 1
    return episodes, payload


def sampling_speed(store: EpisodeStore, batches: int, compute_s: float = 0.01) -> dict:
    """Official dataset shape (B=16, T=50): producer throughput, and how long ``next()`` blocks when
    the consumer does ``compute_s`` of GIL-free work per batch (as a GPU training step does)."""
    sampler = ChunkSampler(store, 50, prioritize_ends=True)
    loader = BatchLoader(sampler, batch=16, prefetch=0)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    speeds = {"sync_batches_per_s": round(batches / (time.perf_counter() - start), 1)}
    waits = []
    with BatchLoader(sampler, batch=16, prefetch=4) as loader:
        next(loader)
        for _ in range(batches):
            time.sleep(compute_s)
            start = time.perf_counter()
            next(loader)
            waits.append(time.perf_counter() - start)
    speeds["prefetch4_next_wait_ms_mean"] = round(1e3 * float(np.mean(waits)), 3)
    speeds["prefetch4_next_wait_ms_p99"] = round(1e3 * float(np.percentile(waits, 99)), 3)
    speeds["prefetch4_consumer_compute_ms"] = 1e3 * compute_s
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--full", action="store_true", help="1M steps (overrides --steps)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--actions", type=int, default=18)
    parser.add_argument("--min-length", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=27000)
    parser.add_argument("--sample-batches", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/replay_memory-<date>.json)")
    args = parser.parse_args()
    steps = 1_000_000 if args.full else args.steps

    store = EpisodeStore()  # RAM only: disk writes would time compression, not memory
    before, _ = rss_bytes()
    start = time.perf_counter()
    episodes, payload = fill(store, steps, args)
    fill_s = time.perf_counter() - start
    after, peak = rss_bytes()
    per_step = (after - before) / steps
    result = {
        "benchmark": "replay_memory",
        "date": datetime.date.today().isoformat(),
        "device": cpu_model(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "steps": steps,
        "episodes": episodes,
        "image_shape": [args.size, args.size, args.channels],
        "actions": args.actions,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_peak_bytes": peak,
        "rss_bytes_per_step": round(per_step, 1),
        "payload_bytes_per_step": round(payload / steps, 1),
        "overhead_bytes_per_step": round(per_step - payload / steps, 1),
        "projected_rss_1m_steps_gb": round(per_step * 1e6 / 1e9, 2),
        "projected_rss_1m_steps_gib": round(per_step * 1e6 / 2**30, 2),
        "official_rss_1m_steps_gb": list(OFFICIAL_GB_PER_1M),
        "fill_seconds": round(fill_s, 1),
        **store.stats(),
        **sampling_speed(store, args.sample_batches),
    }
    out = args.out or RESULTS / f"replay_memory-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
