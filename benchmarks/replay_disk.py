"""RSS and sampling rate of a 2M-step Atari replay in the disk-backed store, beside the RAM store.

Each store runs in its own child process (so one's memory never shows in the other's RSS), one after the
other in one run: the disk store at ``--steps`` (default 2M), the RAM store at ``--ram-steps`` (default
200k, ~0.8 GB; 2M would need 8.2 GB of RAM). Episodes as `replay_memory.py` (``image uint8 (T+1, 64, 64,
1)``, ``T`` uniform in [1000, 27000], random pixels so every page is real) added without an episode
directory, so the fill times the cache writes, not npz compression.

Per store: RSS after the fill and after sampling (current and peak), chunk samples/s of ``(50, 64, 64, 1)``
chunks (each chunk's pages read), batches/s of the official ``16 x 50`` batch through `BatchLoader`, and
the cache's bytes on disk. The disk store is sampled twice: with its files in the page cache (just
written), and cold, after dropping this benchmark's own files from the page cache (`posix_fadvise`,
which leaves other processes' pages alone). With ``--resume-steps N`` the disk child also writes N
steps of episode files and times reopening them into a disk store (peak RSS of the resume).

    nice -n 10 python benchmarks/replay_disk.py                       # ~8.2 GB of disk, a few minutes
    python benchmarks/replay_disk.py --steps 300000 --ram-steps 100000

The cache goes under ``--cache-dir`` (default: a temporary folder beside this script's results) and is
deleted when each child ends.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from replay_memory import atari_episode, cpu_model, rss_bytes  # noqa: E402

from torch_dreamer.data import BatchLoader, ChunkSampler, EpisodeStore  # noqa: E402
from torch_dreamer.data.disk_storage import DiskStorage  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LENGTH, BATCH = 50, 16


def fill(store: EpisodeStore, steps: int, seed: int) -> int:
    """Adds Atari-like episodes until the store holds ``steps`` steps; returns the episodes added."""
    rng = np.random.default_rng(seed)
    episodes = 0
    while store.loaded_steps < steps:
        length = min(int(rng.integers(1000, 27001)), steps - store.loaded_steps)
        store.add(atari_episode(rng, max(length, LENGTH), (64, 64, 1), 18))
        episodes += 1
    return episodes


def chunk_rate(store: EpisodeStore, seconds: float, seed: int) -> dict:
    """Chunks/s of the official sampler, each chunk's image copied out (its pages really read)."""
    sampler = ChunkSampler(store, LENGTH, prioritize_ends=True, seed=seed)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sampler.sample()["image"].copy()  # a slice of a contiguous episode is contiguous: copy to read it
        count += 1
    elapsed = time.perf_counter() - start
    return {"chunks": count, "chunk_samples_per_s": round(count / elapsed, 1)}


def batch_rate(store: EpisodeStore, batches: int, seed: int) -> dict:
    """Official ``16 x 50`` batches/s through `BatchLoader` (sampling and stacking in this thread)."""
    loader = BatchLoader(ChunkSampler(store, LENGTH, prioritize_ends=True), batch=BATCH, prefetch=0, seed=seed)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    per_s = batches / (time.perf_counter() - start)
    return {"batches_per_s": round(per_s, 1), "batch_chunk_samples_per_s": round(per_s * BATCH, 1)}


def drop_page_cache(folder: Path) -> None:
    """Evicts this benchmark's own cache files from the page cache (written back first); others' stay."""
    for path in folder.glob("*.episode"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def reset_peak() -> None:
    """Restarts the peak RSS (VmHWM) from the current RSS, so each phase reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def rss_gb() -> dict:
    current, peak = rss_bytes()
    return {"rss_gb": round(current / 1e9, 3), "rss_peak_gb": round(peak / 1e9, 3)}


def resume(root: Path, steps: int, seed: int) -> dict:
    """Writes ``steps`` of episode files, then opens a fresh disk store over them (the resume path)."""
    replay = root / "episodes"
    writer = EpisodeStore(replay, capacity=1)  # keeps one episode in RAM: only the files matter
    fill_steps, rng = 0, np.random.default_rng(seed + 1)
    while fill_steps < steps:
        length = min(int(rng.integers(1000, 27001)), steps - fill_steps)
        writer.add(atari_episode(rng, max(length, LENGTH), (64, 64, 1), 18))
        fill_steps += max(length, LENGTH)
    del writer
    reset_peak()
    before = rss_bytes()[0]
    start = time.perf_counter()
    store = EpisodeStore(replay, capacity=steps, minlen=1, storage=DiskStorage(root / "resume_cache"))
    result = {"resume_steps": store.loaded_steps, "resume_s": round(time.perf_counter() - start, 1),
              "resume_rss_growth_gb": round((rss_bytes()[0] - before) / 1e9, 3), **rss_gb()}
    store.close()
    shutil.rmtree(replay)
    return result


def child(storage: str, steps: int, args: argparse.Namespace) -> dict:
    import torch  # noqa: F401 - the learner process has torch loaded; count its RSS in the baseline

    result: dict = {"storage": storage, "steps": steps, "baseline": rss_gb()}
    disk = DiskStorage(args.cache_dir, max_mapped_bytes=args.max_mapped_gb * 2**30) if storage == "disk" else None
    store = EpisodeStore(None, minlen=1, storage=disk)
    start = time.perf_counter()
    result["episodes"] = fill(store, steps, args.seed)
    result["fill_s"] = round(time.perf_counter() - start, 1)
    result["after_fill"] = rss_gb()
    reset_peak()
    result["sampling_warm"] = {**chunk_rate(store, args.seconds, args.seed),
                               **batch_rate(store, args.batches, args.seed)}
    result["after_sampling_warm"] = rss_gb()
    if disk is not None:
        result["disk_bytes"] = disk.disk_bytes()
        result["max_mapped_gb"] = args.max_mapped_gb
        disk.unmap()  # pages still mapped cannot leave the page cache
        drop_page_cache(disk.directory)
        reset_peak()
        result["sampling_cold"] = {**chunk_rate(store, args.seconds, args.seed + 1),
                                   **batch_rate(store, args.batches, args.seed + 1)}
        result["after_sampling_cold"] = rss_gb()
        store.close()
        if args.resume_steps:
            result["resume"] = resume(Path(args.cache_dir), args.resume_steps, args.seed)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2_000_000, help="disk store size")
    parser.add_argument("--ram-steps", type=int, default=200_000, help="RAM store size (0 skips it)")
    parser.add_argument("--resume-steps", type=int, default=0, help="also time a resume of this many steps")
    parser.add_argument("--seconds", type=float, default=10.0, help="chunk sampling time per pass")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--max-mapped-gb", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--child", choices=["ram", "disk"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps if args.child == "disk" else args.ram_steps, args)))
        return
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="replay_disk-", dir=RESULTS.parent))
    free = shutil.disk_usage(cache_dir).free
    runs = []
    try:
        for storage in ["disk", "ram"] if args.ram_steps else ["disk"]:
            command = [sys.executable, __file__, "--child", storage, "--cache-dir", str(cache_dir)]
            command += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                        if k not in ("child", "cache_dir", "out") and v is not None]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(output.strip().splitlines()[-1]))
            print(json.dumps(runs[-1], indent=2), flush=True)
    finally:
        if not args.cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
    date = datetime.date.today().isoformat()
    result = {"benchmark": "replay_disk", "date": date, "device": cpu_model(), "cpus": os.cpu_count(),
              "disk_free_before_gb": round(free / 1e9, 1), "image_shape": [64, 64, 1], "chunk": [LENGTH],
              "batch": [LENGTH, BATCH], "python": sys.version.split()[0], "numpy": np.__version__, "runs": runs}
    out = args.out or RESULTS / f"replay-disk-cpu-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
