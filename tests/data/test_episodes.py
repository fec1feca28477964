"""Episode files: naming, atomic writes, official-format compatibility, resume loading, corrupt files."""

import re
import uuid
import warnings

import numpy as np
import pytest

from torch_dreamer.data import episodes as eps
from torch_dreamer.data.episodes import list_episodes, load_episode, load_episodes, parse_length, save_episode

NAME = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{32}-(\d+)\.npz$")


def _official_write(directory, stamp, episode):
    """Write a file the way official DreamerV2 does: np.savez_compressed to its final name."""
    length = len(episode["action"]) - 1
    path = directory / f"{stamp}-{uuid.uuid4().hex}-{length}.npz"
    np.savez_compressed(path, **episode)
    return path


def test_save_load_roundtrip_and_name(tmp_path, make_episode):
    episode = make_episode(12)
    path = save_episode(tmp_path / "train_episodes", episode)
    match = NAME.match(path.name)
    assert match and int(match.group(1)) == 12 == parse_length(path)
    loaded = load_episode(path)
    assert set(loaded) == set(episode)
    for key, value in episode.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
        np.testing.assert_array_equal(loaded[key], value)
    assert loaded["image"].dtype == np.uint8


def test_atomic_write_leaves_no_temp_files(tmp_path, make_episode, monkeypatch):
    save_episode(tmp_path, make_episode(5))
    assert [p.name for p in tmp_path.iterdir()] == [p.name for p in list_episodes(tmp_path)]

    def broken(file, **arrays):
        file.write(b"partial zip bytes")
        raise OSError("disk full")

    monkeypatch.setattr(eps.np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        save_episode(tmp_path, make_episode(5))
    assert len(list(tmp_path.iterdir())) == 1  # only the first, complete file; no temp, no partial


def test_list_is_sorted_by_name_and_skips_temp(tmp_path, make_episode):
    for stamp in ["20240102T000000", "20230101T000000", "20240101T120000"]:
        _official_write(tmp_path, stamp, make_episode(3))
    (tmp_path / ".tmp-20250101T000000-abc-3.npz.part").write_bytes(b"x")
    stamps = [p.name[:15] for p in list_episodes(tmp_path)]
    assert stamps == ["20230101T000000", "20240101T120000", "20240102T000000"]
    assert list_episodes(tmp_path / "missing") == []


def test_parse_length():
    assert parse_length("20220503T101010-0123abcd-1000.npz") == 1000
    assert parse_length("/x/y/20220503T101010-0123abcd-7") == 7
    with pytest.raises(ValueError):
        parse_length("episode.npz")


def test_official_file_loads(tmp_path, make_episode):
    """Official DreamerV2 file: ram + image obs, one-hot action with a zero reset row, bool flags."""
    episode = make_episode(20)
    episode["ram"] = np.zeros((21, 128), np.uint8)
    episode["reward"] = episode["reward"].astype(np.float64)  # np.float64 rewards get float32
    path = _official_write(tmp_path, "20220503T101010", episode)
    loaded = load_episodes(tmp_path)
    assert list(loaded) == [str(path)]
    ep = loaded[str(path)]
    assert ep["ram"].shape == (21, 128) and ep["ram"].dtype == np.uint8
    assert ep["reward"].dtype == np.float32
    assert not ep["action"][0].any()
    assert ep["is_first"][0] and ep["is_last"][-1] and ep["is_terminal"][-1]


def test_old_official_file_with_discount_gets_flags(tmp_path, make_episode):
    """Older official files store `discount` and no flags; the flags are derived."""
    episode = make_episode(6)
    for key in ("is_first", "is_last", "is_terminal"):
        del episode[key]
    episode["discount"] = np.array([1, 1, 1, 1, 1, 1, 0], np.float32)
    path = _official_write(tmp_path, "20210101T000000", episode)
    ep = load_episode(path)
    np.testing.assert_array_equal(ep["is_first"], [1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(ep["is_last"], [0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(ep["is_terminal"], [0, 0, 0, 0, 0, 0, 1])
    assert ep["is_terminal"].dtype == bool
    del episode["discount"]
    ep = load_episode(_official_write(tmp_path, "20210101T000001", episode))
    assert not ep["is_terminal"].any()  # unknown: treated as a time limit


def test_load_newest_until_capacity(tmp_path, make_episode):
    paths = [_official_write(tmp_path, f"2024010{i}T000000", make_episode(10, ident=i)) for i in range(1, 6)]
    loaded = load_episodes(tmp_path, capacity=25)
    # Newest first until >= 25 steps: 10 + 10 + 10 (the crossing file is kept, as in the official).
    assert list(loaded) == [str(p) for p in paths[2:]]  # ordered oldest -> newest
    assert len(load_episodes(tmp_path)) == 5
    assert len(load_episodes(tmp_path, capacity=10)) == 1


def test_load_skips_short_episodes(tmp_path, make_episode):
    _official_write(tmp_path, "20240101T000000", make_episode(10))
    _official_write(tmp_path, "20240102T000000", make_episode(2))
    loaded = load_episodes(tmp_path, capacity=15, minlen=5)
    assert [len(e["action"]) - 1 for e in loaded.values()] == [10]


def test_corrupt_files_are_skipped_with_warning(tmp_path, make_episode):
    good = [_official_write(tmp_path, f"2024010{i}T000000", make_episode(4, ident=i)) for i in (1, 4)]
    garbage = tmp_path / f"20240102T000000-{uuid.uuid4().hex}-4.npz"
    garbage.write_bytes(b"not a zip file")
    truncated = tmp_path / f"20240103T000000-{uuid.uuid4().hex}-4.npz"
    truncated.write_bytes(good[0].read_bytes()[:200])
    with pytest.warns(UserWarning) as record:
        loaded = load_episodes(tmp_path)
    assert list(loaded) == [str(p) for p in good]
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert any(garbage.name in m for m in messages) and any(truncated.name in m for m in messages)
    assert all("\n" not in m for m in messages)


def test_inconsistent_episode_is_rejected(make_episode):
    episode = make_episode(4)
    episode["reward"] = episode["reward"][:-1]
    with pytest.raises(ValueError, match="leading length"):
        eps.normalize_episode(episode)
    with pytest.raises(ValueError, match="action"):
        eps.normalize_episode({"image": np.zeros((3, 2, 2, 1), np.uint8)})


def test_normalize_does_not_copy_canonical_arrays(make_episode):
    episode = make_episode(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = eps.normalize_episode(episode)
    assert all(out[key] is episode[key] for key in episode)


def test_episodes_of_the_same_second_keep_their_write_order(tmp_path):
    import os
    import time

    from torch_dreamer.data import list_episodes, save_episode
    from torch_dreamer.data.episodes import select_newest

    def episode(value):
        return {"vector": np.full((6, 2), value, np.float32), "action": np.zeros((6, 1), np.float32),
                "reward": np.zeros(6, np.float32), "is_first": np.eye(6, dtype=bool)[0],
                "is_last": np.eye(6, dtype=bool)[-1], "is_terminal": np.zeros(6, bool)}

    first, second = save_episode(tmp_path, episode(1)), save_episode(tmp_path, episode(2))
    # Same timestamp, uuids sorting against the write order.
    a = first.rename(tmp_path / "20260101T000000-ffffffffffffffffffffffffffffffff-5.npz")
    b = second.rename(tmp_path / "20260101T000000-00000000000000000000000000000000-5.npz")
    os.utime(a, ns=(time.time_ns() - 10**9, time.time_ns() - 10**9))
    assert list_episodes(tmp_path) == [a, b]
    assert select_newest(list_episodes(tmp_path)) == [b, a]


def test_temp_names_are_unique_per_process_and_call(tmp_path, make_episode, monkeypatch):
    import os

    temps = []
    real = eps.atomic_write
    monkeypatch.setattr(eps, "atomic_write", lambda path, temp: temps.append(temp) or real(path, temp))
    paths = [save_episode(tmp_path, make_episode(3)) for _ in range(2)]
    assert len(set(temps)) == 2
    for temp, path in zip(temps, paths):
        assert temp.startswith(f".tmp-{os.getpid()}-") and temp.endswith(f"{path.name}.part")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


_INTERRUPTED_WRITER = """
import os, sys
import numpy as np
from torch_dreamer.data import save_episode
os.replace = lambda *args: os._exit(3)  # killed after writing the temp file, before the rename
save_episode(sys.argv[1], {"action": np.zeros((5, 2), np.float32), "reward": np.zeros(5, np.float32)})
"""


def test_interrupted_writer_leaves_no_listed_file(tmp_path):
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", _INTERRUPTED_WRITER, str(tmp_path)], env=env, timeout=120)
    assert result.returncode == 3
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")  # the complete temp, never renamed
    assert list_episodes(tmp_path) == [] and load_episodes(tmp_path) == {}
    assert eps.count_episodes(tmp_path) == (0, 0)


def test_file_urls_are_local_paths(tmp_path, make_episode):
    url = f"file://{tmp_path}/replay"
    path = save_episode(url, make_episode(4))
    assert path.parent == tmp_path / "replay"  # a pathlib.Path, renamed atomically like any local file
    assert list_episodes(url) == [path] == list_episodes(tmp_path / "replay")
    assert eps.resolve_location(url) == tmp_path / "replay"
    assert eps.resolve_location("memory://x/") == "memory://x"
