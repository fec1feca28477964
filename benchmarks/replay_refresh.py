"""How long `EpisodeStore.refresh()` takes over a replay folder of many files (the learner lists it about once a
second while actors write into it).

Writes `--files` copies of one small episode under official names into a temporary folder, opens a store
over it (capacity small, so only the newest files are read), then times: a refresh with nothing new,
and a refresh after `--new` files arrived. Then reopens the folder: the first open had no header index
(`data/header_index.py`), so it read every file's headers (today's cost, plus writing the index); the
reopen reads only the headers of files the index does not vouch for (here the `--new` ones).
Results JSON in benchmarks/results/.

    python benchmarks/replay_refresh.py --files 100000 --new 10
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import pathlib
import platform
import tempfile
import time
import uuid

import numpy as np

from torch_dreamer.data import EpisodeStore
from torch_dreamer.data.header_index import INDEX_NAME


def episode_bytes(length: int = 20) -> bytes:
    rows = length + 1
    episode = {"vector": np.zeros((rows, 4), np.float32), "action": np.eye(2, dtype=np.float32)[np.zeros(rows, int)],
               "reward": np.zeros(rows, np.float32), "is_first": np.eye(rows, dtype=bool)[0],
               "is_last": np.eye(rows, dtype=bool)[-1], "is_terminal": np.zeros(rows, bool)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **episode)
    return buffer.getvalue()


def write_files(folder: pathlib.Path, count: int, data: bytes, start: datetime.datetime, length: int = 20) -> None:
    for i in range(count):
        stamp = (start + datetime.timedelta(seconds=i)).strftime("%Y%m%dT%H%M%S")
        (folder / f"{stamp}-{uuid.uuid4().hex}-{length}.npz").write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data = episode_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        t0 = time.perf_counter()
        write_files(folder, args.files, data, datetime.datetime(2025, 1, 1))
        written = time.perf_counter() - t0
        t0 = time.perf_counter()
        store = EpisodeStore(folder, capacity=1000, minlen=1)
        opened = time.perf_counter() - t0
        t0 = time.perf_counter()
        none_new = store.refresh()
        refresh_idle = time.perf_counter() - t0
        write_files(folder, args.new, data, datetime.datetime(2026, 1, 1))
        t0 = time.perf_counter()
        arrived = store.refresh()
        refresh_new = time.perf_counter() - t0
        t0 = time.perf_counter()
        reopened = EpisodeStore(folder, capacity=1000, minlen=1)
        reopen = time.perf_counter() - t0
        index_bytes = (folder / INDEX_NAME).stat().st_size if (folder / INDEX_NAME).exists() else 0
    result = {
        "date": datetime.date.today().isoformat(), "device": platform.processor() or platform.machine(),
        "files": args.files, "new": args.new, "write_s": round(written, 2), "open_store_s": round(opened, 3),
        "refresh_nothing_new_s": round(refresh_idle, 4), "refresh_with_new_s": round(refresh_new, 4),
        "reopen_store_with_index_s": round(reopen, 3), "index_bytes": index_bytes,
        "reopened_stats_equal": reopened.stats() == store.stats(),
        "new_episodes_seen": arrived, "episodes_seen_when_idle": none_new,
        "stats": store.stats(),
    }
    print(json.dumps(result, indent=2))
    out = pathlib.Path(args.out or f"benchmarks/results/replay-refresh-cpu-{result['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
