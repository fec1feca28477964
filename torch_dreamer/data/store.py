"""EpisodeStore: finished episodes on disk (every one) and in RAM (the newest, up to a step capacity).

Official DreamerV2 replay semantics:
- every finished episode is saved as one file; episodes shorter than ``minlen`` are not sampled;
- RAM holds the newest episodes up to ``capacity`` steps; eviction is FIFO and removes only the RAM copy;
- a new store over an existing directory loads the newest files until ``capacity`` so runs resume.

The directory may be an fsspec URL (``s3://bucket/replay``) shared by several processes or machines:
``refresh()`` picks up the files others wrote since, reading each new file once.

The RAM side sits behind two small protocols so other strategies plug in without touching the store:
``Storage`` (where the arrays live: a dict by default, or memory-mapped files on disk for replays larger
than RAM, `disk_storage.DiskStorage`) and ``Eviction`` (which episode leaves when over capacity: FIFO by
default, the others in `replay_strategies`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Protocol, Sequence

import warnings

from .episodes import (
    Episode,
    EpisodeMismatch,
    Location,
    Spec,
    age_key,
    check_episode,
    check_layout,
    episode_files,
    new_episode_files,
    episode_filename,
    eplen,
    file_name,
    inspect_files,
    layout_steps,
    list_episodes,
    normalize_episode,
    parse_length,
    read_files,
    resolve_location,
    save_episode,
    select_newest,
)
from .header_index import HeaderIndex, episode_layout_of


EpisodeCallback = Callable[[Episode], None]
INDEX_BATCH = 1000  # files refreshed into the store between rewrites of the header index


def _short_name(path: Location, minlen: int) -> bool:
    try:
        return parse_length(path) < minlen
    except ValueError:
        return False


class Storage(Protocol):
    """Sampleable episodes keyed by name, in insertion order (oldest first).

    Implementations need not be thread-safe: ``EpisodeStore`` serialises every call with its lock,
    except that the ``keys()`` snapshot must stay valid (immutable) after the lock is released.

    Optional methods the store calls when present (a disk-backed storage needs them, a dict does not):
    ``stage(key, episode) -> Episode`` before inserting an episode, under the write lock but outside
    the sampler lock, so it must not change what ``get`` reads; the store then ``add``s what it returned;
    ``settle()`` after each write, to free staged episodes that were not added and removed ones that
    were not added back; ``close()`` from `EpisodeStore.close`.
    """

    def add(self, key: str, episode: Episode) -> None: ...

    def remove(self, key: str) -> Episode: ...

    def pop_oldest(self) -> tuple[str, Episode]: ...

    def get(self, key: str) -> Episode: ...

    def keys(self) -> Sequence[str]: ...

    def __len__(self) -> int: ...


class DictStorage:
    """Episodes as in-RAM numpy arrays in an insertion-ordered dict; arrays are stored, never copied."""

    def __init__(self) -> None:
        self._episodes: dict[str, Episode] = {}
        self._keys: tuple[str, ...] | None = ()

    def add(self, key: str, episode: Episode) -> None:
        if key in self._episodes:
            raise KeyError(f"duplicate episode key {key}")
        self._episodes[key] = episode
        self._keys = None

    def remove(self, key: str) -> Episode:
        episode = self._episodes.pop(key)
        self._keys = None
        return episode

    def pop_oldest(self) -> tuple[str, Episode]:
        key = next(iter(self._episodes))
        return key, self.remove(key)

    def get(self, key: str) -> Episode:
        return self._episodes[key]

    def keys(self) -> tuple[str, ...]:
        # Cached immutable snapshot: samplers index it per chunk, while writes happen once per episode.
        if self._keys is None:
            self._keys = tuple(self._episodes)
        return self._keys

    def __len__(self) -> int:
        return len(self._episodes)


class Eviction(Protocol):
    """Chooses which stored episode leaves RAM while the store is over capacity.

    The store calls `added(key, episode)` for every new sampleable episode (before evicting), `select(keys)`
    while over capacity (it may return the newest key: the incoming episode is then dropped), `removed(key)`
    for each key that left, and `restored(key, episode)` for the members brought back on resume.
    Strategies beyond FIFO: `torch_dreamer.data.replay_strategies`.
    """

    def added(self, key: str, episode: Episode) -> None: ...

    def select(self, keys: Sequence[str]) -> str: ...

    def removed(self, key: str) -> None: ...

    def restored(self, key: str, episode: Episode) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class FifoEviction:
    """Drop the oldest episode (the official policy)."""

    def added(self, key: str, episode: Episode) -> None:
        pass

    def select(self, keys: Sequence[str]) -> str:
        return keys[0]

    def removed(self, key: str) -> None:
        pass

    def restored(self, key: str, episode: Episode) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EpisodeStore:
    """Replay of finished episodes, on disk under ``directory`` and in RAM up to ``capacity`` steps.

    Args:
        directory: where episode files go and are resumed from: a local path (kept as ``Path`` in
            ``self.directory``) or an fsspec URL (kept as a string); None keeps episodes in RAM only.
        capacity: most steps (sum of ``T`` over episodes) kept in RAM; None is unbounded. The store
            never evicts its last episode, so one episode longer than ``capacity`` still stays.
        minlen: episodes with fewer steps are saved (and counted) but never kept for sampling.
        storage, eviction: RAM container and eviction rule; defaults are a dict and FIFO.
        spec: ``{key: (step shape, dtype)}`` every file must match (observation keys, ``action``,
            ``reward``); see `set_spec`. Files that do not, or do not load, are skipped with a warning.

    Counting: ``total_steps``/``total_episodes`` count what the files hold, never their names. Files
    loaded into RAM count once loaded and checked; the older files beyond ``capacity`` count only if
    their array headers are readable and match the spec (read without decompressing the data), so a
    corrupt, foreign or misnamed file (``...-5000.npz`` holding 10 steps) adds nothing but a warning.

    Thread safety: writer calls (``add``, ``refresh``) are serialised by their own lock, and any number
    of sampler threads may call ``keys``/``get``/counters meanwhile. Disk and network I/O happen
    outside the sampler lock so samplers never wait on it.
    """

    def __init__(
        self,
        directory: Location | None = None,
        capacity: int | float | None = None,
        minlen: int = 1,
        storage: Storage | None = None,
        eviction: Eviction | None = None,
        spec: Spec | None = None,
    ) -> None:
        self.directory: Path | str | None = resolve_location(directory) if directory is not None else None
        self.capacity = int(capacity) if capacity else None
        self.minlen = int(minlen)
        self._storage: Storage = storage if storage is not None else DictStorage()
        self._eviction: Eviction = eviction if eviction is not None else FifoEviction()
        self._lock = threading.RLock()  # guards RAM and counters; held only briefly
        self._write_lock = threading.Lock()  # serialises add/refresh, held across their I/O
        self._known: set[str] = set()  # file names already seen: written, loaded or skipped
        self._lengths: dict[str, int] = {}
        self._loaded_steps = 0
        self._total_episodes = self._total_steps = 0
        self._spec = spec
        self._layouts: dict[str, dict] = {}  # counted files not in RAM: their headers, for `set_spec`
        # Layouts of files already checked, so a reopen reads only new headers (local folders only).
        self._index = HeaderIndex(self.directory) if self.directory is not None else None
        if self.directory is not None:
            listed = list_episodes(self.directory)
            self._ingest(listed, resume=True)
            self._index.write(listed)

    def _ingest(self, paths: Sequence[Location], resume: bool, on_episode: EpisodeCallback | None = None) -> int:
        """Count ``paths`` (unknown names, oldest first), load the ones worth keeping, mark all known.

        Without ``on_episode`` only files that can still be in RAM after eviction are read (the newest
        up to capacity, as on resume) and the rest are checked from their array headers; that shortcut
        equals load-then-evict only for FIFO, so with another eviction rule every new file is loaded.
        With ``on_episode`` every readable file is read, short ones included, and passed to it after the
        store is updated. Only files that load (or whose headers check out) count. Returns how many
        episodes were put in RAM.
        """
        self._known.update(file_name(path) for path in paths)
        if on_episode is not None:
            loaded, layouts = self._read_files(paths), {}
        else:
            limit = self.capacity if resume or isinstance(self._eviction, FifoEviction) else None
            loaded, tried = self._load_newest(paths, limit)  # bad files warn here, once: they are known now
            untried = [path for path in paths if str(path) not in tried]
            layouts = self._index.inspect(untried, self._spec) if self._index else inspect_files(untried, self._spec)
        added = 0
        with self._lock:
            self._total_episodes += len(loaded) + len(layouts)
            self._total_steps += sum(eplen(episode) for episode in loaded.values())
            self._total_steps += sum(layout_steps(layout) for layout in layouts.values())
            self._layouts.update(layouts)
            for key, episode in loaded.items():
                if eplen(episode) < self.minlen:
                    continue
                self._insert(key, episode)
                added += 1
                if not resume:  # on resume the file crossing capacity stays, like the official loader
                    self._hook("added", key, episode)
                    self._enforce_limit()
        if on_episode is not None:
            for episode in loaded.values():
                on_episode(episode)
        self._settle()  # after the callbacks: a disk storage's staged episodes stay readable until here
        return added

    def _load_newest(self, paths: Sequence[Location], limit: int | None) -> tuple[dict[str, Episode], set]:
        """The newest of ``paths`` (oldest first) worth loading up to ``limit`` steps, read and checked,
        and the set of paths tried. Chosen by their names first; when names over-promise or files fail,
        older files are read until the loaded episodes reach ``limit`` (or none is left)."""
        chosen = select_newest(paths, limit, self.minlen)[::-1]
        tried = {str(path) for path in chosen}
        loaded = self._read_files(chosen)
        steps = sum(eplen(episode) for episode in loaded.values() if eplen(episode) >= self.minlen)
        if limit and steps < limit:
            for path in reversed(paths):
                if steps >= limit:
                    break
                if str(path) in tried or _short_name(path, self.minlen):
                    continue
                tried.add(str(path))
                for key, episode in self._read_files([path]).items():
                    loaded[key] = episode
                    steps += eplen(episode) if eplen(episode) >= self.minlen else 0
            order = {str(path): index for index, path in enumerate(paths)}
            loaded = dict(sorted(loaded.items(), key=lambda item: order[item[0]]))
        return loaded, tried

    def _read_files(self, paths: Sequence[Location]) -> dict[str, Episode]:
        """`read_files`, one file at a time, each sampleable episode handed to the storage's `stage` (see
        `_stage`) as soon as it is read: a disk storage then holds one decompressed episode in RAM at a
        time while a 2M-step replay resumes, instead of all of them."""
        episodes = {}
        for path in paths:
            for key, episode in read_files([path], self._spec).items():
                if self._index is not None:
                    self._index.record(path, episode_layout_of(episode))
                episodes[key] = self._stage(key, episode)
        return episodes

    def _stage(self, key: str, episode: Episode) -> Episode:
        """What to insert for a sampleable episode: the storage's `stage(key, episode)` when it has one (a
        disk storage writes its file here, outside the sampler lock), else the episode itself. Staged
        episodes that are not inserted are freed by `_settle`. Call with the write lock held."""
        stage = getattr(self._storage, "stage", None)
        if stage is None or eplen(episode) < self.minlen:
            return episode
        return stage(key, episode)

    def _settle(self) -> None:
        """Lets the storage free what it kept for this write (staged episodes never inserted, removed
        ones not inserted again): the disk storage's `settle`. Call with the write lock held."""
        settle = getattr(self._storage, "settle", None)
        if settle is not None:
            settle()

    def set_spec(self, spec: Spec | None) -> int:
        """Checks every later file against ``spec``, and drops (with a warning naming file and key) the
        episodes already counted that do not match it. For replays opened before the spaces are known
        (the learner reads them from the first episodes). Returns how many were dropped."""
        dropped = 0
        with self._write_lock, self._lock:
            self._spec = spec
            for key in list(self._storage.keys()):
                try:
                    check_episode(self._storage.get(key), spec)
                except EpisodeMismatch as error:
                    warnings.warn(f"skipping episode file {key}: {error}", stacklevel=2)
                    self._storage.remove(key)
                    length = self._lengths.pop(key)
                    self._loaded_steps -= length
                    self._total_steps -= length
                    self._total_episodes -= 1
                    dropped += 1
            for key, layout in list(self._layouts.items()):
                problem = check_layout(layout, spec)
                if problem:
                    warnings.warn(f"skipping episode file {key}: {problem}", stacklevel=2)
                    del self._layouts[key]
                    self._total_steps -= layout_steps(layout)
                    self._total_episodes -= 1
                    dropped += 1
            self._settle()
        return dropped

    def refresh(self, on_episode: EpisodeCallback | None = None) -> int:
        """Add episode files that appeared in ``directory`` since the last look (e.g. other writers').

        Lists the directory once; files whose names are known (written by this store, or seen
        before, including skipped short/corrupt/over-capacity ones) are never read again. New files
        are loaded oldest first and enter RAM as the newest episodes, evicting like `add` (so some
        may leave again at once). ``on_episode(episode)`` is called for every new readable episode,
        short ones included (e.g. to log workers' returns), oldest first, once the store is updated.
        Returns how many episodes were put in RAM; 0 without a directory.

        Writers must publish files atomically (as `save_episode` does): a corrupt file is warned about
        once and then ignored for good, so a half-written one would never be retried.
        """
        if self.directory is None:
            return 0
        with self._write_lock:
            fresh = new_episode_files(self.directory, self._known)
            fresh.sort(key=age_key)  # sort keys (a stat per local file) for the new files only
            added = self._ingest(fresh, False, on_episode) if fresh else 0
            self._index.write(min_new=INDEX_BATCH)  # rarely: the whole index is rewritten each time
            return added

    def add(self, episode: dict) -> Path | str | None:
        """Store one finished episode (arrays ``(T+1, ...)``); returns its file path (URL when remote),
        or None without a directory.

        Arrays are kept by reference (only dtype conversions copy), so callers must not mutate them later.
        """
        episode = normalize_episode(episode)
        length = eplen(episode)
        with self._write_lock:
            path = save_episode(self.directory, episode) if self.directory is not None else None
            key = str(path) if path is not None else episode_filename(length)
            if path is not None:
                self._known.add(file_name(path))
            stored = self._stage(key, episode)
            with self._lock:
                self._total_episodes += 1
                self._total_steps += length
                if length >= self.minlen:
                    self._insert(key, stored)
                    self._hook("added", key, episode)
                    self._enforce_limit()
                self._settle()
        return path

    def _insert(self, key: str, episode: Episode) -> None:
        self._storage.add(key, episode)
        self._lengths[key] = eplen(episode)
        self._loaded_steps += self._lengths[key]

    def _enforce_limit(self) -> None:
        """Evict RAM copies while over capacity, always keeping at least one episode."""
        if not self.capacity:
            return
        while len(self._storage) > 1 and self._loaded_steps > self.capacity:
            key = self._eviction.select(self._storage.keys())
            self._storage.remove(key)
            self._loaded_steps -= self._lengths.pop(key)
            self._hook("removed", key)

    def _hook(self, name: str, *args) -> None:
        """Calls an eviction's optional hook; a plain `select`-only eviction needs none."""
        hook = getattr(self._eviction, name, None)
        if hook is not None:
            hook(*args)

    def state_dict(self) -> dict:
        """Which episodes are held (file names, oldest first) and the eviction's state, for the checkpoint.

        FIFO needs no membership: a resumed store holds the newest files, which is what FIFO held."""
        with self._lock:
            if isinstance(self._eviction, FifoEviction) and type(self._eviction).select is FifoEviction.select:
                return {}
            return {"members": [file_name(key) for key in self._storage.keys()],
                    "eviction": self._eviction.state_dict() if hasattr(self._eviction, "state_dict") else {}}

    def load_state_dict(self, state: dict) -> None:
        """Restores the held episodes of a checkpoint exactly (not "the newest files"), reading members
        that are not in RAM from the directory and dropping the others from RAM. Members whose files are
        gone are skipped with a warning."""
        if not state or "members" not in state:
            return
        members = list(state["members"])
        with self._write_lock:
            by_name = {file_name(key): key for key in self._storage.keys()}
            wanted = set(members)
            missing = [name for name in members if name not in by_name]
            paths = {file_name(path): path for path in list_episodes(self.directory)} if missing else {}
            loaded = self._read_files([paths[name] for name in missing if name in paths]) if paths else {}
            loaded_by_name = {file_name(key): (key, episode) for key, episode in loaded.items()}
            with self._lock:
                for name, key in by_name.items():
                    if name not in wanted:
                        self._storage.remove(key)
                        self._loaded_steps -= self._lengths.pop(key)
                held = {file_name(key): key for key in self._storage.keys()}
                order = []
                for name in members:
                    if name in held:
                        order.append((held[name], self._storage.remove(held[name])))
                    elif name in loaded_by_name:
                        order.append(loaded_by_name[name])
                    else:
                        warnings.warn(f"replay member {name} is gone from {self.directory}; continuing without it",
                                      stacklevel=2)
                for key in [k for k, _ in order if k in self._lengths]:
                    self._loaded_steps -= self._lengths.pop(key)
                for key, episode in order:  # re-inserted oldest first: the held order is the saved one
                    self._insert(key, episode)
                self._hook("load_state_dict", state.get("eviction", {}))
                for key, episode in order:
                    self._hook("restored", key, episode)
                self._settle()

    def close(self) -> None:
        """Frees what the storage holds outside the process (a disk storage deletes its cache files; the
        episode files stay). Use the store no more afterwards."""
        with self._write_lock, self._lock:
            close = getattr(self._storage, "close", None)
            if close is not None:
                close()

    def keys(self) -> Sequence[str]:
        """Immutable snapshot of the sampleable episode keys, oldest first."""
        with self._lock:
            return self._storage.keys()

    def get(self, key: str) -> Episode:
        """The episode stored under ``key`` (arrays shared, do not modify); KeyError once evicted."""
        with self._lock:
            return self._storage.get(key)

    def length(self, key: str) -> int:
        """Steps ``T`` of a stored episode (its arrays have ``T + 1`` rows); KeyError once evicted."""
        with self._lock:
            return self._lengths[key]

    def __len__(self) -> int:
        return self.loaded_episodes

    @property
    def total_steps(self) -> int:
        """Steps of every episode ever saved here (evicted and short ones included)."""
        return self._total_steps

    @property
    def total_episodes(self) -> int:
        return self._total_episodes

    @property
    def loaded_steps(self) -> int:
        """Steps currently in RAM and sampleable."""
        return self._loaded_steps

    @property
    def loaded_episodes(self) -> int:
        with self._lock:
            return len(self._storage)

    def stats(self) -> dict[str, int]:
        """The official replay counters, consistent with each other (read under one lock)."""
        with self._lock:
            return {
                "total_steps": self._total_steps,
                "total_episodes": self._total_episodes,
                "loaded_steps": self._loaded_steps,
                "loaded_episodes": len(self._storage),
            }
