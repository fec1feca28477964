"""DiskStorage: the sampleable side of an `EpisodeStore` kept in files on disk and read through memory maps.

For replays larger than RAM (2M Atari steps of 64x64x1 frames are 8.2 GB decompressed): each stored
episode is one raw file (every array back to back, 64-byte aligned, no compression), and `get` returns
read-only numpy views of a memory map of it, so a sampler's chunk slices read only the pages they touch.

It is a cache: the episode ``.npz`` files of the replay directory stay the source of truth, and a new
store rebuilds it from them (`EpisodeStore` hands each file to `stage` as it is read, so a resume holds
one decompressed episode in RAM at a time). Each storage writes into its own folder
``{root}/cache-{pid}-{hex}/``, deleted when the storage is closed or garbage-collected or the process
exits; folders left by killed processes are deleted by the next storage opened on the same root (a
folder is in use while its ``.lock`` is flocked by its owner). Nothing else under ``root`` is touched.

Memory: pages of a mapped file count in the process RSS once touched, so only a few maps stay open
(an LRU bounded by count, for the open-file limit: each map holds a descriptor, and by mapped bytes,
for RSS). Views a caller still holds keep their map alive after it leaves the LRU. Removed episodes'
files are unlinked at the next `settle()` (the store calls it after every write); the disk space comes
back once the last view of them is gone.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torch_dreamer.errors import UserError
from torch_dreamer.tools.files import DiskFull

from .episodes import Episode

ALIGN = 64  # array offsets in a cache file: cache-line aligned, so views are aligned for every dtype
CACHE_PREFIX = "cache-"
LOCK_NAME = ".lock"
MAX_OPEN = 128  # open maps: each holds a file descriptor (the soft limit is often 1024)
MAX_MAPPED_BYTES = 1 << 30  # mapped bytes kept open: bounds the RSS that touched pages can reach


@dataclass
class _Record:
    """One cache file: where it is, ``{name: (dtype, shape, offset)}`` of its arrays, and its size."""

    path: Path
    layout: dict
    size: int
    handed: object = field(default=None, repr=False)  # the episode `stage`/`remove` returned, until settled


def _map_file(path: Path) -> mmap.mmap:
    with open(path, "rb") as f:  # mmap keeps its own descriptor; ours closes here
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _views(buffer, layout: dict) -> Episode:
    """Read-only arrays over ``buffer`` (they keep it alive); nothing is read until a page is touched."""
    return {name: np.frombuffer(buffer, dtype, int(np.prod(shape)), offset).reshape(shape)
            for name, (dtype, shape, offset) in layout.items()}


class MappedEpisode(Mapping):
    """An episode whose arrays are mapped from its cache file on each lookup, holding no map or descriptor
    in between: what `stage` and `remove` return, since a resume may stage 100k episodes at once.
    Lookups work until the storage's next `settle` unless the episode was added (arrays already
    looked up stay readable)."""

    def __init__(self, record: _Record):
        self._path, self._layout = record.path, record.layout

    def __getitem__(self, name: str) -> np.ndarray:
        dtype, shape, offset = self._layout[name]
        return _views(_map_file(self._path), {name: (dtype, shape, offset)})[name]

    def __iter__(self):
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._layout)


class DiskStorage:
    """`Storage` of episodes in raw files under ``root`` (created if needed), read through memory maps.

    Args:
        root: folder for the cache; this storage writes only into its own subfolder (module docstring).
            Put it on a disk with room for the decompressed replay (~4.1 KB per 64x64x1 step), not on a
            tmpfs, which is RAM.
        max_open, max_mapped_bytes: bounds of the LRU of open maps (at least one map stays open).

    A key names one episode: `add` of the episode that `stage(key)` or `remove(key)` returned adopts the
    file already written instead of writing it again. Not thread-safe (`EpisodeStore` serialises calls).
    """

    def __init__(self, root: str | os.PathLike, max_open: int = MAX_OPEN, max_mapped_bytes: int = MAX_MAPPED_BYTES):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_caches(self.root)
        self.directory = self.root / f"{CACHE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.directory.mkdir()
        self._lock_file = _hold_lock(self.directory / LOCK_NAME)
        self._cleanup = weakref.finalize(self, _remove_cache, self.directory, self._lock_file, os.getpid())
        self.max_open, self.max_mapped_bytes = max(1, int(max_open)), int(max_mapped_bytes)
        self._records: dict[str, _Record] = {}  # members, oldest first
        self._loose: dict[str, _Record] = {}  # staged or removed files, kept until `settle`
        self._open: OrderedDict[str, tuple[Episode, int]] = OrderedDict()  # LRU of mapped members, with sizes
        self._mapped_bytes = 0
        self._keys: tuple[str, ...] | None = ()
        self._written = 0  # names cache files; keys are paths and may hold any character

    # ----- Storage protocol -----

    def add(self, key: str, episode: Episode) -> None:
        if key in self._records:
            raise KeyError(f"duplicate episode key {key}")
        loose = self._loose.pop(key, None)
        if loose is not None and loose.handed is episode:
            self._records[key] = loose  # staged or just removed: the file on disk is this episode
        else:
            if loose is not None:
                self._unlink(loose)
            self._records[key] = self._write(episode)
        self._records[key].handed = None
        self._keys = None

    def remove(self, key: str) -> Episode:
        self._close(key)
        record = self._records.pop(key)
        self._keys = None
        record.handed = MappedEpisode(record)
        self._loose[key] = record
        return record.handed

    def pop_oldest(self) -> tuple[str, Episode]:
        key = next(iter(self._records))
        return key, self.remove(key)

    def get(self, key: str) -> Episode:
        """Read-only views of the episode's arrays (a new dict each call, the arrays shared)."""
        if key in self._open:
            self._open.move_to_end(key)
            return dict(self._open[key][0])
        return dict(self._map(key))

    def keys(self) -> tuple[str, ...]:
        if self._keys is None:
            self._keys = tuple(self._records)
        return self._keys

    def __len__(self) -> int:
        return len(self._records)

    # ----- what EpisodeStore calls when present -----

    def stage(self, key: str, episode: Episode) -> Episode:
        """Writes an episode read from a file to the cache now, so its RAM copy can go before `add`."""
        self._unlink(self._loose.pop(key, None))
        record = self._write(episode)
        record.handed = MappedEpisode(record)
        self._loose[key] = record
        return record.handed

    def settle(self) -> None:
        """Deletes the files of staged episodes never added and of removed ones not added back."""
        for record in self._loose.values():
            self._unlink(record)
        self._loose.clear()

    def close(self) -> None:
        """Deletes this storage's cache folder; views still held stay readable until dropped (Linux)."""
        self.unmap()
        self._records.clear()
        self._loose.clear()
        self._keys = ()
        self._cleanup()

    def unmap(self) -> None:
        """Drops the open maps, so the RSS of their touched pages goes back (maps reopen on `get`)."""
        self._open.clear()
        self._mapped_bytes = 0

    def disk_bytes(self) -> int:
        """Bytes of the members' cache files."""
        return sum(record.size for record in self._records.values())

    # ----- files and maps -----

    def _write(self, episode: Episode) -> _Record:
        self._written += 1
        path = self.directory / f"{self._written:09d}.episode"
        layout, offset = {}, 0
        try:
            with open(path, "wb") as f:
                for name, value in episode.items():
                    value = np.ascontiguousarray(value)
                    if value.dtype.hasobject:
                        raise ValueError(f"episode array '{name}' has dtype object, which cannot be cached on disk")
                    pad = -offset % ALIGN
                    f.write(bytes(pad))
                    offset += pad
                    layout[name] = (value.dtype, value.shape, offset)
                    f.write(value.reshape(-1).view(np.uint8).data)
                    offset += value.nbytes
                if offset == 0:
                    f.write(b"\0")  # an empty file cannot be mapped
        except OSError as error:
            path.unlink(missing_ok=True)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(path, offset) from None
            raise
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return _Record(path, layout, max(offset, 1))

    def _map(self, key: str) -> Episode:
        record = self._records[key]
        episode = _views(_map_file(record.path), record.layout)
        self._open[key] = (episode, record.size)
        self._mapped_bytes += record.size
        while len(self._open) > 1 and (len(self._open) > self.max_open or self._mapped_bytes > self.max_mapped_bytes):
            self._close(next(iter(self._open)))
        return episode

    def _close(self, key: str) -> None:
        """Drops the LRU's map of ``key``; the OS unmaps it once no caller holds a view either."""
        entry = self._open.pop(key, None)
        if entry is not None:
            self._mapped_bytes -= entry[1]

    @staticmethod
    def _unlink(record: _Record | None) -> None:
        if record is not None:
            record.path.unlink(missing_ok=True)


# ----- cache folders -----


def _hold_lock(path: Path):
    """An open file flocked for this storage's life (marks the folder in use); None without flock."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock, so stale folders are never cleaned automatically
        return None
    file = open(path, "a")
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: the folder just looks stale to others, never in use
        pass
    return file


def _remove_cache(directory: Path, lock_file, owner: int) -> None:
    if os.getpid() != owner:  # a forked child exiting must not delete its parent's cache
        return
    shutil.rmtree(directory, ignore_errors=True)
    if lock_file is not None:
        lock_file.close()


def remove_stale_caches(root: Path) -> list[Path]:
    """Deletes ``cache-*`` folders under ``root`` whose owner is gone (their ``.lock`` can be taken);
    returns them. Folders without a lock file may be being created and are left alone."""
    try:
        import fcntl
    except ImportError:
        return []
    removed = []
    for folder in root.glob(f"{CACHE_PREFIX}*"):
        lock = folder / LOCK_NAME
        if not folder.is_dir() or not lock.exists():
            continue
        try:
            with open(lock, "a") as file:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        except OSError:  # held by a live storage (or vanished meanwhile)
            continue
    return removed


STORAGES = ("ram", "disk")


def storage_for(kind: str, storage_dir: str | os.PathLike, logdir: str | os.PathLike) -> DiskStorage | None:
    """The storage `replay.storage` names: None (the store's in-RAM dict) for ``ram``, a `DiskStorage`
    under ``storage_dir`` (``''``: ``{logdir}/replay_cache``) for ``disk``."""
    if kind == "ram":
        return None
    if kind != "disk":
        raise UserError(f"replay.storage must be one of {', '.join(STORAGES)}, not '{kind}'; "
                        "use --replay.storage disk for replays larger than RAM")
    root = Path(str(storage_dir)).expanduser() if str(storage_dir) else Path(str(logdir)).expanduser() / "replay_cache"
    try:
        return DiskStorage(root)
    except OSError as error:
        raise UserError(f"cannot create the replay cache in {root} ({error.strerror}); pass "
                        "--replay.storage_dir DIR on a local disk with room for the replay") from None
