"""Replay data: episode files, the EpisodeStore, chunk samplers and the time-major batch loader.

Episode directories may be local paths or fsspec URLs (``s3://``, ``gs://``, ``memory://``, ``file://``).

Imports no agent/envs/runs code (see docs/ARCHITECTURE.md).
"""

from .batches import BatchLoader, stack_time_major
from .episodes import (
    Episode,
    Location,
    count_episodes,
    count_files,
    episode_files,
    eplen,
    list_episodes,
    load_episode,
    load_episodes,
    load_files,
    normalize_episode,
    parse_length,
    resolve_location,
    save_episode,
    select_newest,
)
from .samplers import ChunkSampler, EmptyReplayError, Sampler, SequentialSampler, chunk_start
from .store import DictStorage, EpisodeStore, Eviction, FifoEviction, Storage

__all__ = [
    "BatchLoader",
    "ChunkSampler",
    "DictStorage",
    "EmptyReplayError",
    "Episode",
    "EpisodeStore",
    "Eviction",
    "FifoEviction",
    "Location",
    "Sampler",
    "SequentialSampler",
    "Storage",
    "chunk_start",
    "count_episodes",
    "count_files",
    "episode_files",
    "eplen",
    "list_episodes",
    "load_episode",
    "load_episodes",
    "load_files",
    "normalize_episode",
    "parse_length",
    "resolve_location",
    "save_episode",
    "select_newest",
    "stack_time_major",
]
