"""Episode files: one compressed ``.npz`` per finished episode, compatible with official DreamerV2.

An episode is ``dict[str, np.ndarray]`` whose arrays all have the same leading length ``T + 1``
(the reset step included): observation keys (e.g. ``image uint8 (T+1, H, W, C)``, ``ram uint8 (T+1, 128)``),
``action float32 (T+1, A)``, ``reward float32 (T+1,)`` and ``is_first``, ``is_last``, ``is_terminal``
``bool (T+1,)``. Its length is ``T = len(action) - 1``.

Files are named ``{YYYYmmddTHHMMSS}-{uuid4 hex}-{T}.npz`` like the official ones, so sorting names
sorts by time and the step count of a directory is known without opening any file.
"""

from __future__ import annotations

import datetime
import os
import uuid
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from torch_dreamer.tools.files import atomic_write

Episode = dict[str, np.ndarray]

FLAG_KEYS = ("is_first", "is_last", "is_terminal")
_TEMP_PREFIX = ".tmp-"  # hidden and not ending in .npz, so list_episodes never sees half-written files


def eplen(episode: Episode) -> int:
    """Number of steps ``T`` of an episode: ``len(action) - 1`` (the reset step has no action)."""
    return len(episode["action"]) - 1


def parse_length(path: str | os.PathLike) -> int:
    """Step count ``T`` encoded as the last ``-`` field of a file name, e.g. ``...-hex-1000.npz`` -> 1000.

    Raises ValueError when the name does not end in an integer field.
    """
    stem = Path(path).name
    if stem.endswith(".npz"):
        stem = stem[: -len(".npz")]
    field = stem.rsplit("-", 1)[-1]
    if not field.isdigit():
        raise ValueError(f"episode file name does not end in a step count: {Path(path).name}")
    return int(field)


def list_episodes(directory: str | os.PathLike) -> list[Path]:
    """Episode files of ``directory`` sorted oldest -> newest by file name (timestamp first).

    A missing directory has no episodes. Temp files of interrupted writes are not listed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.glob("*.npz") if not p.name.startswith(_TEMP_PREFIX)), key=age_key)


def age_key(path: Path) -> tuple:
    """Sort key oldest -> newest: the name's timestamp, then the write time for files of the same second.

    The uuid in the name is random, so without the write time a resumed run would reorder the
    episodes saved within one second, and the sampler (which indexes episodes in order) with them.
    """
    try:
        written = path.stat().st_mtime_ns
    except OSError:
        written = 0
    return (path.name.split("-", 1)[0], written, path.name)


def normalize_episode(episode: dict) -> Episode:
    """Arrays with canonical dtypes plus the three flags, copying only arrays whose dtype changes.

    floats -> float32, signed ints -> int32 (as the official converter), uint8 and bool unchanged.
    Missing flags are derived (files from older official versions have ``discount`` instead):
    ``is_first`` marks the reset step, ``is_last`` the final step, and ``is_terminal`` is
    ``discount == 0`` when a discount is stored, else all False: without a discount a time limit
    cannot be told from a real termination, and bootstrapping past an end is the milder mistake.
    Raises ValueError on a missing ``action`` or on arrays of different leading length.
    """
    if "action" not in episode:
        raise ValueError("episode has no 'action' array")
    out = {key: _convert(np.asarray(value)) for key, value in episode.items()}
    lengths = {key: (len(value) if value.ndim else -1) for key, value in out.items()}
    size = lengths["action"]
    bad = sorted(key for key, n in lengths.items() if n != size)
    if bad or size < 1:
        raise ValueError(f"episode arrays must share one leading length >= 1, got {lengths}")
    _derive_flags(out, size)
    return out


def _convert(value: np.ndarray) -> np.ndarray:
    """Canonical dtype for one array; ``astype(copy=False)`` keeps memory when nothing changes."""
    if np.issubdtype(value.dtype, np.floating):
        return value.astype(np.float32, copy=False)
    if np.issubdtype(value.dtype, np.signedinteger):
        return value.astype(np.int32, copy=False)
    return value


def _derive_flags(episode: Episode, size: int) -> None:
    """Fill in missing ``is_first``/``is_last``/``is_terminal`` of a complete episode, in place."""
    if "is_first" not in episode:
        episode["is_first"] = np.zeros(size, bool)
        episode["is_first"][0] = True
    if "is_last" not in episode:
        episode["is_last"] = np.zeros(size, bool)
        episode["is_last"][-1] = True
    if "is_terminal" not in episode:
        if "discount" in episode:
            episode["is_terminal"] = episode["discount"] == 0
        else:
            episode["is_terminal"] = np.zeros(size, bool)
    for key in FLAG_KEYS:
        episode[key] = episode[key].astype(bool, copy=False)


def episode_filename(length: int, now: datetime.datetime | None = None) -> str:
    """Official name ``{YYYYmmddTHHMMSS}-{uuid4 hex}-{length}.npz`` (local time, like the official)."""
    now = now or datetime.datetime.now()
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex}-{length}.npz"


def save_episode(directory: str | os.PathLike, episode: Episode) -> Path:
    """Write ``episode`` as a compressed npz into ``directory`` (created if needed) and return its path.

    Atomic: the data goes to a hidden temp file in the same directory, is flushed to disk and then
    renamed with ``os.replace``, so readers and resumed runs never see a partial file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / episode_filename(eplen(episode))
    # A file object, not a name: np.savez_compressed would append '.npz' to a name.
    with atomic_write(path, f"{_TEMP_PREFIX}{path.name}.part") as f:
        np.savez_compressed(f, **episode)
    return path


def load_episode(path: str | os.PathLike) -> Episode:
    """Read one episode file into RAM (decompressed) with canonical dtypes and all three flags.

    Raises OSError/ValueError/zipfile errors for unreadable or inconsistent files.
    """
    # Open the file ourselves: np.load(path) leaks its handle when the zip is corrupt.
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
        episode = {key: data[key] for key in data.files}
    return normalize_episode(episode)


def select_newest(paths: Iterable[Path], capacity: int | None = None, minlen: int = 1) -> list[Path]:
    """The newest files (see `age_key`) worth loading, returned newest first.

    Files shorter than ``minlen`` steps are skipped (they are never sampled). Selection stops once
    the selected files hold at least ``capacity`` steps; the file that crosses the limit is kept, like
    the official loader, so the newest ``capacity`` steps are always covered. Names without a step
    count are kept (their length is only known after loading).
    """
    chosen, steps = [], 0
    for path in sorted(paths, key=age_key, reverse=True):
        try:
            length = parse_length(path)
        except ValueError:
            length = None
        if length is not None and length < minlen:
            continue
        if capacity and steps >= capacity:
            break
        chosen.append(path)
        steps += length or 0
    return chosen


def load_episodes(
    directory: str | os.PathLike, capacity: int | None = None, minlen: int = 1
) -> dict[str, Episode]:
    """Load the newest episodes of ``directory`` until ``capacity`` steps, keyed by path string.

    The dict is ordered oldest -> newest (insertion order = FIFO order). Unreadable or corrupt files
    are skipped with one ``warnings.warn`` line naming the file; the rest still loads.
    """
    episodes: dict[str, Episode] = {}
    for path in reversed(select_newest(list_episodes(directory), capacity, minlen)):
        try:
            episode = load_episode(path)
        except Exception as exc:  # corrupt zip, truncated file, bad arrays: skip, keep the run going
            warnings.warn(f"skipping unreadable episode file {path}: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        if eplen(episode) >= minlen:
            episodes[str(path)] = episode
    return episodes


def count_episodes(directory: str | os.PathLike) -> tuple[int, int]:
    """``(episodes, steps)`` of every file in ``directory``, from the names alone (nothing is opened)."""
    episodes = steps = 0
    for path in list_episodes(directory):
        try:
            steps += parse_length(path)
        except ValueError:
            continue
        episodes += 1
    return episodes, steps
