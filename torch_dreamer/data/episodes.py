"""Episode files: one compressed ``.npz`` per finished episode, compatible with official DreamerV2.

An episode is ``dict[str, np.ndarray]`` whose arrays all have the same leading length ``T + 1``
(the reset step included): observation keys (e.g. ``image uint8 (T+1, H, W, C)``, ``ram uint8 (T+1, 128)``),
``action float32 (T+1, A)``, ``reward float32 (T+1,)`` and ``is_first``, ``is_last``, ``is_terminal``
``bool (T+1,)``. Its length is ``T = len(action) - 1``.

Files are named ``{YYYYmmddTHHMMSS}-{uuid4 hex}-{T}.npz`` like the official ones, so sorting names
sorts by time and the step count of a directory is known without opening any file.

A directory is a local path (``str``/``PathLike``, or a ``file://`` URL) or any fsspec URL
(``s3://bucket/replay``, ``gs://...``, ``memory://...``), so several machines can share one replay.
Local files are returned as ``pathlib.Path``; remote ones as full URL strings (protocol included),
which every function here accepts back.
"""

from __future__ import annotations

import datetime
import io
import os
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from torch_dreamer.tools.files import TEMP_PREFIX, DiskFull, atomic_write, put_bytes

Episode = dict[str, np.ndarray]
Location = str | os.PathLike  # a local path or an fsspec URL

FLAG_KEYS = ("is_first", "is_last", "is_terminal")
_TEMP_PREFIX = TEMP_PREFIX  # hidden and not ending in .npz, so list_episodes never sees half-written files


def eplen(episode: Episode) -> int:
    """Number of steps ``T`` of an episode: ``len(action) - 1`` (the reset step has no action)."""
    return len(episode["action"]) - 1


def resolve_location(location: Location) -> Path | str:
    """``Path`` for a local directory or file (plain paths and ``file://`` URLs), else the URL string.

    Remote URLs lose a trailing ``/`` so that ``f"{url}/{name}"`` names a file inside them. Local
    ``file://`` URLs become paths because the local disk can rename, which keeps writes atomic there.
    """
    if isinstance(location, os.PathLike) or not _looks_like_url(location):
        return Path(location)
    fs, path = url_to_fs(location)
    if isinstance(fs, LocalFileSystem):
        return Path(path)
    return location.rstrip("/")


def _looks_like_url(location: str) -> bool:
    """``proto://...`` or a chained ``a::b://...`` URL; anything else is a local path."""
    return "://" in location or "::" in location


def file_name(path: Location) -> str:
    """Base name of a local path or of a URL, e.g. ``s3://b/replay/x-3.npz`` -> ``x-3.npz``."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def parse_length(path: Location) -> int:
    """Step count ``T`` encoded as the last ``-`` field of a file name, e.g. ``...-hex-1000.npz`` -> 1000.

    Raises ValueError when the name does not end in an integer field.
    """
    name = stem = file_name(path)
    if stem.endswith(".npz"):
        stem = stem[: -len(".npz")]
    field = stem.rsplit("-", 1)[-1]
    if not field.isdigit():
        raise ValueError(f"episode file name does not end in a step count: {name}")
    return int(field)


def _is_episode_name(name: str) -> bool:
    return name.endswith(".npz") and not name.startswith(_TEMP_PREFIX)


def list_episodes(directory: Location) -> list[Path] | list[str]:
    """Episode files of ``directory`` sorted oldest -> newest by `age_key`.

    A missing directory has no episodes. Temp files of interrupted writes and non-``.npz`` names are
    not listed. Local directories give ``Path`` objects, remote ones URLs (see `episode_files`).
    """
    return sorted(episode_files(directory), key=age_key)


def new_episode_files(directory: Location, known: set) -> list[Path] | list[str]:
    """`episode_files` whose names are not in `known`; local folders build paths for the new names only,
    so a refresh of a 100k-file replay costs one listing and a set lookup per name."""
    where = resolve_location(directory)
    if isinstance(where, Path):
        if not where.is_dir():
            return []
        return [where / name for name in os.listdir(where)
                if name not in known and name.endswith(".npz") and _is_episode_name(name)]
    return [path for path in episode_files(where) if file_name(path) not in known]


def episode_files(directory: Location) -> list[Path] | list[str]:
    """Episode files of ``directory`` in no particular order; `list_episodes` sorts them.

    Unsorted so that a caller interested only in unknown names (``EpisodeStore.refresh``) computes
    sort keys, which stat local files, for those alone. Remote directories take a single listing call
    (no per-file request, so 100k objects list in one paginated ``ls``), read fresh every time so
    files written by other machines show up.
    """
    where = resolve_location(directory)
    if isinstance(where, Path):
        if not where.is_dir():
            return []
        return [where / name for name in os.listdir(where) if name.endswith(".npz") and _is_episode_name(name)]
    fs, root = url_to_fs(where)
    fs.invalidate_cache(root)  # s3fs/gcsfs cache listings; other writers' files must appear
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    names = {file_name(entry) for entry in entries}
    return [f"{where}/{name}" for name in names if _is_episode_name(name)]


def age_key(path: Location) -> tuple:
    """Sort key oldest -> newest: ``(name timestamp, write time, name)``.

    Local files break ties within one second by their write time: the uuid in the name is random, so
    without it a resumed run would reorder the episodes saved within one second, and the sampler
    (which indexes episodes in order) with them. Remote files use write time 0 (timestamp, then name):
    a stat per object would not scale to 100k files.
    """
    name = file_name(path)
    written = 0
    if isinstance(path, os.PathLike) or not _looks_like_url(path):
        try:
            written = os.stat(path).st_mtime_ns
        except OSError:
            pass
    return (name.split("-", 1)[0], written, name)


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


def save_episode(directory: Location, episode: Episode) -> Path | str:
    """Write ``episode`` as a compressed npz into ``directory`` (created if needed); return its path or URL.

    Readers never see a partial file. The npz is built in memory first, then
    - local: written to a hidden temp file unique to this process and call (pid + uuid, so concurrent
      writers never share one), flushed, fsynced and renamed over the final name with ``os.replace``;
    - remote: uploaded as one whole object with ``fs.pipe_file``. Object stores cannot rename, but a
      single PUT (or a multipart upload, which appears only on completion) is atomic on S3 and GCS:
      the object becomes visible only once complete.
    """
    where = resolve_location(directory)
    name = episode_filename(eplen(episode))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **episode)
    if isinstance(where, Path):
        where.mkdir(parents=True, exist_ok=True)
        path = where / name
        try:
            with atomic_write(path, f"{_TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}-{name}.part") as f:
                f.write(buffer.getbuffer())
        except DiskFull:
            raise DiskFull(path, buffer.tell()) from None
        return path
    url = f"{where}/{name}"
    put_bytes(url, buffer.getvalue())
    return url


def load_episode(path: Location) -> Episode:
    """Read one episode file (local path or URL) into RAM (decompressed) with canonical dtypes and all flags.

    Raises OSError/ValueError/zipfile errors for unreadable or inconsistent files.
    """
    where = resolve_location(path)
    if isinstance(where, Path):
        # Open the file ourselves: np.load(path) leaks its handle when the zip is corrupt.
        with open(where, "rb") as f, np.load(f, allow_pickle=False) as data:
            episode = {key: data[key] for key in data.files}
    else:
        fs, remote = url_to_fs(where)
        raw = fs.cat_file(remote)  # one GET; np.load then seeks in memory, not over the network
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            episode = {key: data[key] for key in data.files}
    return normalize_episode(episode)


def select_newest(paths: Iterable[Location], capacity: int | None = None, minlen: int = 1) -> list:
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


def load_files(paths: Iterable[Location], capacity: int | None = None, minlen: int = 1,
               spec: Spec | None = None) -> dict[str, Episode]:
    """Load the newest of ``paths`` until ``capacity`` steps (see `select_newest`), keyed by path string.

    The dict is ordered oldest -> newest (insertion order = FIFO order). Unreadable or corrupt files,
    and files that do not match ``spec`` (see `check_layout`) or hold NaN/inf, are skipped with one
    ``warnings.warn`` line naming the file (and the key); the rest still loads.
    """
    episodes = read_files(list(reversed(select_newest(paths, capacity, minlen))), spec)
    return {key: episode for key, episode in episodes.items() if eplen(episode) >= minlen}


# ----- validation: does a file hold an episode this run can train on? -----

Spec = dict  # {key: (shape of one step, numpy dtype)}: observation keys, "action" and "reward"


class EpisodeMismatch(ValueError):
    """An episode that loads but cannot join this replay; the message names the key."""


def canonical_dtype(dtype) -> np.dtype:
    """The dtype `normalize_episode` gives an array: floats float32, signed ints int32, the rest unchanged."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return np.dtype(np.float32)
    if np.issubdtype(dtype, np.signedinteger):
        return np.dtype(np.int32)
    return dtype


def check_layout(layout: dict, spec: Spec | None = None) -> str | None:
    """What is wrong with an episode of arrays ``{key: (full shape, dtype)}``, or None when it can be used.

    Always: ``action (T+1, A)`` and ``reward (T+1,)`` exist and every array has the leading length
    ``T + 1 >= 1``. With ``spec`` ({key: (step shape, dtype)}, dtypes canonical): each key of the spec
    exists with that step shape and dtype (extra keys, such as the official ``discount``, are fine).
    """
    for key in ("action", "reward"):
        if key not in layout:
            return f"no '{key}' array"
    lengths = {key: (shape[0] if len(shape) else None) for key, (shape, _) in layout.items()}
    size = lengths["action"]
    if size is None or size < 1:
        return f"'action' has shape {tuple(layout['action'][0])}, not (T + 1, A)"
    for key, length in lengths.items():
        if length != size:
            return f"'{key}' has {length if length is not None else 'no'} rows, 'action' has {size}"
    if len(layout["action"][0]) != 2:
        return f"'action' has shape {tuple(layout['action'][0])}, not (T + 1, A)"
    for key, (shape, dtype) in (spec or {}).items():
        if key not in layout:
            return f"no '{key}' array (this run's episodes have one)"
        got_shape, got_dtype = tuple(layout[key][0][1:]), canonical_dtype(layout[key][1])
        if got_shape != tuple(shape):
            return f"'{key}' has steps of shape {got_shape}, this run's are {tuple(shape)}"
        if got_dtype != canonical_dtype(dtype):
            return f"'{key}' is {got_dtype}, this run's is {canonical_dtype(dtype)}"
    return None


def check_episode(episode: Episode, spec: Spec | None = None) -> None:
    """Raises `EpisodeMismatch` naming the key when a loaded episode cannot join a replay of ``spec``
    (see `check_layout`) or when a float array holds NaN or inf."""
    problem = check_layout({key: (value.shape, value.dtype) for key, value in episode.items()}, spec)
    if problem is None:
        for key, value in episode.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                problem = f"'{key}' holds non-finite values (NaN or inf)"
                break
    if problem:
        raise EpisodeMismatch(problem)


def read_episode(path: Location, spec: Spec | None = None) -> Episode:
    """`load_episode` followed by `check_episode`: the episode, or an exception naming what is wrong."""
    episode = load_episode(path)
    check_episode(episode, spec)
    return episode


def _skip_warning(path, error: Exception) -> None:
    if isinstance(error, EpisodeMismatch):
        reason = str(error)
    else:
        reason = f"unreadable ({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''})"
    warnings.warn(f"skipping episode file {path}: {reason}", stacklevel=4)


def read_files(paths: Iterable[Location], spec: Spec | None = None) -> dict[str, Episode]:
    """Every readable, valid episode of ``paths`` (kept in their order), keyed by path string; each
    other file is skipped with one warning naming it and the reason (the key, for a mismatch)."""
    episodes: dict[str, Episode] = {}
    for path in paths:
        try:
            episodes[str(path)] = read_episode(path, spec)
        except Exception as error:  # corrupt zip, truncated file, foreign arrays: skip, keep the run going
            _skip_warning(path, error)
    return episodes


def episode_layout(path: Location) -> dict:
    """``{key: (full shape, dtype)}`` of an episode file from the headers of its arrays alone.

    Reads the zip directory and the first bytes of each array, not the (compressed) data, so checking
    a file costs about as much as listing it; truncated and non-zip files raise.
    """
    where = resolve_location(path)
    if isinstance(where, Path):
        handle = open(where, "rb")
    else:
        fs, remote = url_to_fs(where)
        handle = fs.open(remote, "rb", block_size=1 << 16)
    layout = {}
    with handle, zipfile.ZipFile(handle) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            layout[info.filename[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    return layout


def inspect_files(paths: Sequence[Location], spec: Spec | None = None) -> dict[str, dict]:
    """``{path: layout}`` (see `episode_layout`) of the files of ``paths`` whose headers pass
    `check_layout`, in their order; each other file is skipped with one warning naming it (and the key).
    The steps of a file are ``layout["action"][0][0] - 1``. Remote files are inspected in parallel."""
    def inspect(path):
        try:
            layout = episode_layout(path)
            problem = check_layout(layout, spec)
            if problem:
                raise EpisodeMismatch(problem)
            return layout, None
        except Exception as error:  # noqa: BLE001 - reported as a skipped file
            return None, error

    paths = list(paths)
    remote = any(not isinstance(resolve_location(path), Path) for path in paths)
    if remote and len(paths) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(inspect, paths))
    else:
        results = [inspect(path) for path in paths]
    layouts = {}
    for path, (layout, error) in zip(paths, results):
        if error is not None:
            _skip_warning(path, error)
        else:
            layouts[str(path)] = layout
    return layouts


def layout_steps(layout: dict) -> int:
    """Steps ``T`` of an episode from its `episode_layout`."""
    return int(layout["action"][0][0]) - 1


def load_episodes(directory: Location, capacity: int | None = None, minlen: int = 1) -> dict[str, Episode]:
    """Load the newest episodes of ``directory`` until ``capacity`` steps; see `load_files`."""
    return load_files(list_episodes(directory), capacity, minlen)


def count_files(paths: Iterable[Location]) -> tuple[int, int]:
    """``(episodes, steps)`` of ``paths`` from the names alone; names without a step count are not counted.

    A quick estimate only: `EpisodeStore` counts what the files hold (`inspect_files`), since a name
    can lie (a copied or planted file) and a corrupt file holds nothing.
    """
    episodes = steps = 0
    for path in paths:
        try:
            steps += parse_length(path)
        except ValueError:
            continue
        episodes += 1
    return episodes, steps


def count_episodes(directory: Location) -> tuple[int, int]:
    """``(episodes, steps)`` of every file in ``directory``, from the names alone (nothing is opened)."""
    return count_files(list_episodes(directory))
