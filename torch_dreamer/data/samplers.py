"""Samplers turn an EpisodeStore into fixed-length training chunks ``dict[str, np.ndarray (length, ...)]``.

``ChunkSampler`` is the official DreamerV2 rule; ``SequentialSampler`` streams whole episodes per batch
slot for training with a carried state (PyDreamer's ``keep_state``). Other strategies (reservoir-aware,
50:50 recent/past, coverage, reward-weighted) implement ``Sampler``: ``BatchLoader`` calls ``sample()``
exactly ``batch`` times per batch, in batch-slot order, from a single thread, so a stateful sampler can
keep one stream per slot and mark continuations with ``is_first[0] = False``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from torch_dreamer.errors import UserError

from .episodes import Episode
from .store import EpisodeStore

Chunk = dict[str, np.ndarray]

_REJECTION_TRIES = 64  # uniform picks before falling back to filtering the keys for long-enough episodes


class Sampler(Protocol):
    """Produces training chunks with leading length ``length``."""

    length: int

    def sample(self) -> Chunk:
        """One chunk ``dict[str, np.ndarray (length, ...)]`` including ``is_first (length,) bool``."""
        ...

    def reseed(self, seed: int | None) -> None:
        """Restart the random stream so the chunk sequence is a function of (data, seed)."""
        ...


class EmptyReplayError(RuntimeError):
    """No stored episode is long enough to cut a chunk from (replay not prefilled, or minlen < length)."""


def chunk_start(rng: np.random.Generator, total: int, length: int, prioritize_ends: bool) -> int:
    """Official start index of a ``length`` chunk in an episode with ``total`` rows (``T + 1``).

    ``min(randint(total - length + 1 + length * prioritize_ends), total - length)``: with
    ``prioritize_ends`` the extra ``length`` draws all clip to the last window, so chunks ending at the
    episode end get probability ``(length + 1) / (total + 1)`` instead of ``1 / (total - length + 1)``.
    """
    upper = total - length + 1 + (length if prioritize_ends else 0)
    return min(int(rng.integers(upper)), total - length)


class ChunkSampler:
    """Official replay sampling (``Replay._generate_chunks``): one stream of sequences cut into chunks.

    Each sequence is a uniform episode (not length-weighted) and an official window of it: its length is
    ``min(total, maxlen) - randint(minlen)``, at least ``minlen``, and its start index follows
    ``chunk_start`` with ``minlen`` extra draws at the end when ``prioritize_ends``. Sequences are laid
    end to end and cut into chunks of ``length`` rows, as the official generator does: a sequence longer
    than what a chunk still needs continues at the start of the next chunk, a shorter one is followed by
    the next sequence inside the same chunk. Every sequence starts with ``is_first`` True (a zero state);
    a chunk that continues a sequence has ``is_first[0]`` False, as in the official batches.

    With ``minlen == maxlen == length`` (every official config except ``debug``) each chunk is exactly one
    sequence: a window of ``length`` rows of one episode, starting with ``is_first`` True.

    Args:
        store: episodes to sample from; new episodes become sampleable as soon as they are added.
        length: chunk length ``T`` (``dataset.length``).
        prioritize_ends: oversample sequences that end at the episode end (``replay.prioritize_ends``).
        seed: seed of the numpy Generator; None draws fresh entropy.
        minlen, maxlen: ``replay.minlen`` / ``replay.maxlen``, the sequence length range; None means
            ``length`` (chunks of one sequence); ``maxlen`` 0 means no upper bound (whole episode tails).

    Episodes with fewer than ``minlen`` rows cannot hold a sequence and are skipped (uniform over the
    rest). ``BatchLoader`` calls ``sample()`` ``batch`` times per batch in slot order, so consecutive
    chunks of the stream fill consecutive slots, like the official ``dataset.batch``.
    """

    def __init__(self, store: EpisodeStore, length: int, prioritize_ends: bool = False, seed: int | None = None,
                 minlen: int | None = None, maxlen: int | None = None):
        if length < 1:
            raise ValueError(f"chunk length must be >= 1, got {length}")
        self.store = store
        self.length = int(length)
        self.minlen = self.length if minlen is None else int(minlen)
        self.maxlen = self.minlen if maxlen is None else int(maxlen)
        if self.minlen < 1:
            raise UserError(f"replay.minlen must be >= 1, got {self.minlen}")
        if self.maxlen < 0 or (self.maxlen and self.maxlen < self.minlen):
            raise UserError(f"replay.maxlen ({self.maxlen}) must be 0 (no limit) or >= replay.minlen ({self.minlen})")
        self.prioritize_ends = bool(prioritize_ends)
        self.rng = np.random.default_rng(seed)
        self._rest: Chunk | None = None  # what is left of the current sequence

    def reseed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)
        self._rest = None

    def sample(self) -> Chunk:
        """One chunk ``dict[str, np.ndarray (length, ...)]``. Rows of one sequence are views into the
        stored arrays, except ``is_first`` which is copied because its first entry is overwritten; a chunk
        made of several sequences is a fresh array holding the keys they all share."""
        pieces, need = [], self.length
        while need:
            if self._rest is None:
                self._rest = self._sequence()
            rest = self._rest
            size = len(rest["action"])
            take = min(need, size)
            pieces.append({key: value[:take] for key, value in rest.items()})
            self._rest = {key: value[take:] for key, value in rest.items()} if take < size else None
            need -= take
        if len(pieces) == 1:
            return pieces[0]
        keys = [key for key in pieces[0] if all(key in piece for piece in pieces[1:])]
        return {key: np.concatenate([piece[key] for piece in pieces]) for key in keys}

    def _sequence(self) -> Chunk:
        """One official sequence (``Replay._sample_sequence``) with ``is_first[0] = True``."""
        episode = self._pick_episode()
        total = len(episode["action"])
        size = min(total, self.maxlen) if self.maxlen else total
        if size > self.minlen:  # the official subtracts randint(minlen) then clips at minlen
            size = max(self.minlen, size - int(self.rng.integers(self.minlen)))
        upper = total - size + 1 + (self.minlen if self.prioritize_ends else 0)
        start = min(int(self.rng.integers(upper)), total - size)
        sequence = {key: value[start : start + size] for key, value in episode.items()}
        sequence["is_first"] = sequence["is_first"].copy()
        sequence["is_first"][0] = True
        return sequence

    def _pick_episode(self) -> Episode:
        """Uniform over stored episodes with at least ``minlen`` rows (``T + 1 >= minlen``).

        Rejection sampling keeps the common case O(1); if the store is mostly short episodes, fall back
        to an explicit filter. A key evicted between snapshot and lookup just triggers another draw.
        """
        for _ in range(_REJECTION_TRIES):
            keys = self.store.keys()
            if not keys:
                break
            key = keys[int(self.rng.integers(len(keys)))]
            try:
                episode = self.store.get(key)
            except KeyError:
                continue
            if len(episode["action"]) >= self.minlen:
                return episode
        return self._pick_filtered()

    def _pick_filtered(self) -> Episode:
        while True:
            eligible = []
            for key in self.store.keys():
                try:
                    if self.store.length(key) + 1 >= self.minlen:
                        eligible.append(key)
                except KeyError:
                    continue
            if not eligible:
                stats = self.store.stats()
                raise EmptyReplayError(
                    f"no stored episode has {self.minlen} steps to cut a chunk from "
                    f"({stats['loaded_episodes']} episodes, {stats['loaded_steps']} steps loaded); "
                    "prefill the replay first or set replay.minlen >= dataset.length"
                )
            try:
                return self.store.get(eligible[int(self.rng.integers(len(eligible)))])
            except KeyError:  # evicted meanwhile by the writer thread; draw again
                continue


class SequentialSampler:
    """Full episodes read in order, one stream per batch slot, for training with a carried state (TBPTT).

    PyDreamer's ``keep_state``: slot ``b`` of every batch continues slot ``b`` of the previous batch, so the
    learner passes the last posterior state of one batch in as the start state of the next
    (``Agent.train_step(data, state) -> (state, metrics)``).

    Args:
        store: episodes to stream; each new episode of a slot is drawn uniformly from ``store.keys()``.
        length: chunk length ``T``; any episode length works since chunks span episode boundaries.
        batch: B, the number of independent streams; the i-th ``sample()`` call serves slot ``i % batch``
            (``BatchLoader`` calls it ``batch`` times per batch, in slot order, from one thread).
        seed: seed of the numpy Generator; None draws fresh entropy.
        random_start: start each slot's first episode at a uniform row instead of row 0 (PyDreamer's
            ``skip_first``), so the slots do not cross episode boundaries in lockstep. Off by default.

    Each chunk ``dict[str, np.ndarray (length, ...)]`` is a fresh copy of the next ``length`` rows of the
    slot's stream, with the keys and dtypes of ``ChunkSampler``'s (a chunk spanning episodes keeps the keys
    they all share). When an episode ends, the rows of the next one follow inside the same chunk; its row 0
    has ``is_first`` True, so the model resets there. ``is_first`` is kept as stored, so a continuation has
    ``is_first[0] = False`` and the learner carries its state; only the first chunk of a stream (after
    construction or ``reseed``) gets ``is_first[0] = True`` forced, which also resets a stale carried state.

    A slot holds the arrays of the episode it reads, so an episode evicted from the store meanwhile is
    still read to its end. There is no ``state_dict``: the learner's carried state is not checkpointed
    either, so a resumed run (or ``reseed``) restarts every stream at a fresh episode.
    """

    def __init__(self, store: EpisodeStore, length: int, batch: int, seed: int | None = None,
                 random_start: bool = False):
        if length < 1:
            raise ValueError(f"chunk length must be >= 1, got {length}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.store = store
        self.length = int(length)
        self.batch = int(batch)
        self.random_start = bool(random_start)
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """New Generator and fresh streams: the chunk sequence is a function of (data, seed)."""
        self.rng = np.random.default_rng(seed)
        self._episodes: list[Episode | None] = [None] * self.batch  # episode each slot is reading
        self._rows = [0] * self.batch  # next row of that episode
        self._calls = 0

    def sample(self) -> Chunk:
        """The next ``length`` rows of slot ``calls % batch``: ``dict[str, np.ndarray (length, ...)]``."""
        slot = self._calls % self.batch
        first_chunk = self._episodes[slot] is None
        pieces, need = [], self.length
        while need:
            episode, row = self._episodes[slot], self._rows[slot]
            if episode is None or row >= len(episode["action"]):
                episode = self._pick_episode()
                offset = first_chunk and not pieces and self.random_start
                row = int(self.rng.integers(len(episode["action"]))) if offset else 0
            take = min(need, len(episode["action"]) - row)
            pieces.append({key: value[row : row + take] for key, value in episode.items()})
            self._episodes[slot], self._rows[slot] = episode, row + take
            need -= take
        self._calls += 1  # after the loop: an empty store raises before any slot moves on
        # Keys all pieces share: episodes from different sources may carry different extras.
        keys = [key for key in pieces[0] if all(key in piece for piece in pieces[1:])]
        chunk = {key: np.concatenate([piece[key] for piece in pieces]) for key in keys}
        if first_chunk:
            chunk["is_first"][0] = True
        return chunk

    def _pick_episode(self) -> Episode:
        """Uniform over the stored episodes; a key evicted between snapshot and lookup draws again."""
        while True:
            keys = self.store.keys()
            if not keys:
                stats = self.store.stats()
                raise EmptyReplayError(
                    f"no stored episode to stream ({stats['total_episodes']} episodes saved, none sampleable); "
                    "prefill the replay first"
                )
            try:
                return self.store.get(keys[int(self.rng.integers(len(keys)))])
            except KeyError:
                continue
