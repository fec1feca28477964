"""EpisodeStore: finished episodes on disk (every one) and in RAM (the newest, up to a step capacity).

Official DreamerV2 replay semantics:
- every finished episode is saved as one file; episodes shorter than ``minlen`` are not sampled;
- RAM holds the newest episodes up to ``capacity`` steps; eviction is FIFO and removes only the RAM copy;
- a new store over an existing directory loads the newest files until ``capacity`` so runs resume.

The RAM side sits behind two small protocols so other strategies plug in without touching the store:
``Storage`` (where the arrays live: a dict today, memory-mapped files later) and ``Eviction`` (which
episode leaves when over capacity: FIFO today, reservoir/random replacement for continual learning later).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol, Sequence

from .episodes import Episode, count_episodes, episode_filename, eplen, load_episodes, normalize_episode, save_episode


class Storage(Protocol):
    """Sampleable episodes keyed by name, in insertion order (oldest first).

    Implementations need not be thread-safe: ``EpisodeStore`` serialises every call with its lock,
    except that the ``keys()`` snapshot must stay valid (immutable) after the lock is released.
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
    """Chooses which stored episode to drop from RAM while the store is over capacity."""

    def select(self, keys: Sequence[str]) -> str: ...


class FifoEviction:
    """Drop the oldest episode (the official policy)."""

    def select(self, keys: Sequence[str]) -> str:
        return keys[0]


class EpisodeStore:
    """Replay of finished episodes, on disk under ``directory`` and in RAM up to ``capacity`` steps.

    Args:
        directory: where episode files go and are resumed from; None keeps episodes in RAM only.
        capacity: most steps (sum of ``T`` over episodes) kept in RAM; None is unbounded. The store
            never evicts its last episode, so one episode longer than ``capacity`` still stays.
        minlen: episodes with fewer steps are saved (and counted) but never kept for sampling.
        storage, eviction: RAM container and eviction rule; defaults are a dict and FIFO.

    Thread safety: one writer thread calling ``add`` and any number of sampler threads calling
    ``keys``/``get``/counters. Disk writes happen outside the lock so samplers never wait on them.
    """

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        capacity: int | float | None = None,
        minlen: int = 1,
        storage: Storage | None = None,
        eviction: Eviction | None = None,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.capacity = int(capacity) if capacity else None
        self.minlen = int(minlen)
        self._storage: Storage = storage if storage is not None else DictStorage()
        self._eviction: Eviction = eviction if eviction is not None else FifoEviction()
        self._lock = threading.RLock()
        self._lengths: dict[str, int] = {}
        self._loaded_steps = 0
        self._total_episodes = self._total_steps = 0
        if self.directory is not None:
            self._resume(self.directory)

    def _resume(self, directory: Path) -> None:
        """Counters from every file name; RAM from the newest files up to capacity."""
        self._total_episodes, self._total_steps = count_episodes(directory)
        for key, episode in load_episodes(directory, self.capacity, self.minlen).items():
            self._insert(key, episode)

    def add(self, episode: dict) -> Path | None:
        """Store one finished episode (arrays ``(T+1, ...)``); returns its file path, or None without a directory.

        Arrays are kept by reference (only dtype conversions copy), so callers must not mutate them later.
        """
        episode = normalize_episode(episode)
        length = eplen(episode)
        path = save_episode(self.directory, episode) if self.directory is not None else None
        key = str(path) if path is not None else episode_filename(length)
        with self._lock:
            self._total_episodes += 1
            self._total_steps += length
            if length >= self.minlen:
                self._insert(key, episode)
                self._enforce_limit()
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
