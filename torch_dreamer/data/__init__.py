"""Replay data: episode files, the EpisodeStore, chunk samplers and the time-major batch loader.

Imports no agent/envs/runs code (see docs/ARCHITECTURE.md).
"""

from .batches import BatchLoader, stack_time_major
from .episodes import (
    Episode,
    count_episodes,
    eplen,
    list_episodes,
    load_episode,
    load_episodes,
    normalize_episode,
    parse_length,
    save_episode,
)
from .samplers import ChunkSampler, EmptyReplayError, Sampler, chunk_start
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
    "Sampler",
    "Storage",
    "chunk_start",
    "count_episodes",
    "eplen",
    "list_episodes",
    "load_episode",
    "load_episodes",
    "normalize_episode",
    "parse_length",
    "save_episode",
    "stack_time_major",
]
