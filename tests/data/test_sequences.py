"""ChunkSampler with replay.minlen != replay.maxlen: the official `Replay._sample_sequence` lengths and
starts, and `_generate_chunks`, which lays sequences end to end and cuts them into dataset.length chunks."""

import numpy as np
import pytest

from torch_dreamer.config import resolve
from torch_dreamer.data import ChunkSampler, EpisodeStore
from torch_dreamer.errors import UserError
from torch_dreamer.runs.learner import make_sampler

N = 6000


def _store(make_episode, *lengths, **kwargs):
    store = EpisodeStore()
    for ident, length in enumerate(lengths):
        store.add(make_episode(length, ident=ident, **kwargs))
    return store


def _sequences(sampler, chunks):
    """The sequences behind `chunks` consecutive chunks, as lists of markers (a new one at every is_first)."""
    sequences, previous = [], None
    for _ in range(chunks):
        chunk = sampler.sample()
        assert len(chunk["action"]) == sampler.length
        for first, marker in zip(chunk["is_first"], chunk["marker"]):
            if first:
                sequences.append([])
            else:  # a continuation is the next row of the same episode, across chunk borders too
                assert marker == previous + 1
            sequences[-1].append(int(marker))
            previous = marker
    return sequences[:-1]  # the last one may be unfinished


def _close(observed, p, n):
    return abs(observed - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-12


def test_debug_config_sequences_are_10_to_30_rows_cut_into_chunks_of_10(make_episode):
    # Official debug: replay {minlen 10, maxlen 30}, dataset.length 10. An episode of 101 rows gives sequences of
    # min(101, 30) - randint(10) = 21..30 rows, uniformly.
    sampler = ChunkSampler(_store(make_episode, 100), 10, seed=0, minlen=10, maxlen=30)
    sequences = _sequences(sampler, N)
    sizes = np.array([len(s) for s in sequences])
    assert sizes.min() == 21 and sizes.max() == 30
    counts = np.bincount(sizes - 21, minlength=10) / len(sizes)
    assert all(_close(c, 0.1, len(sizes)) for c in counts)
    # Chunks continue sequences: some chunks start mid-sequence with is_first False, as the official batches.
    firsts = [sampler.sample()["is_first"][0] for _ in range(300)]
    assert 0 < sum(firsts) < 300


def test_short_episode_sequence_lengths_follow_the_official_clip(make_episode):
    # 13 rows, minlen 10: 13 - randint(10) clipped at 10 -> P(13) = P(12) = P(11) = 0.1, P(10) = 0.7.
    sampler = ChunkSampler(_store(make_episode, 12), 10, seed=1, minlen=10, maxlen=30)
    sizes = np.array([len(s) for s in _sequences(sampler, N)])
    n = len(sizes)
    for size, p in ((10, 0.7), (11, 0.1), (12, 0.1), (13, 0.1)):
        assert _close((sizes == size).mean(), p, n)


def test_prioritize_ends_adds_minlen_draws_at_the_end(make_episode):
    # total 41 rows, sequences of exactly 10 (minlen == maxlen == 10), chunks of 5: starts 0..31 with 10 extra
    # draws clipped to 31, so a sequence ends at the episode end with probability 11 / 42.
    sampler = ChunkSampler(_store(make_episode, 40), 5, prioritize_ends=True, seed=2, minlen=10, maxlen=10)
    sequences = _sequences(sampler, 2 * N)
    assert all(len(s) == 10 for s in sequences)
    ends = np.mean([s[-1] == 40 for s in sequences])
    assert _close(ends, 11 / 42, len(sequences))


def test_maxlen_zero_takes_whole_episode_tails(make_episode):
    sampler = ChunkSampler(_store(make_episode, 30), 8, seed=3, minlen=5, maxlen=0)
    sizes = np.array([len(s) for s in _sequences(sampler, 2000)])
    assert sizes.min() >= 27 and sizes.max() == 31  # 31 - randint(5)


def test_equal_lengths_keep_one_window_per_chunk(make_episode):
    # The default (minlen == maxlen == length) is the official config: every chunk is one fresh window.
    store = _store(make_episode, 30)
    for sampler in (ChunkSampler(store, 10, seed=0), ChunkSampler(store, 10, seed=0, minlen=10, maxlen=10)):
        for _ in range(100):
            chunk = sampler.sample()
            assert chunk["is_first"][0] and not chunk["is_first"][1:].any()
            np.testing.assert_array_equal(np.diff(chunk["marker"]), 1)


def test_chunks_spanning_episodes_keep_the_keys_they_share(make_episode):
    store = EpisodeStore()
    store.add(make_episode(12, ident=0))
    extra = make_episode(12, ident=1)
    extra["direction"] = np.zeros(13, np.int64)
    store.add(extra)
    sampler = ChunkSampler(store, 25, seed=0, minlen=5, maxlen=8)
    for _ in range(50):
        chunk = sampler.sample()
        assert len(chunk["image"]) == 25 and chunk["is_first"].sum() >= 3
        assert {"image", "action", "reward", "is_first", "is_last", "is_terminal"} <= set(chunk)


def test_bad_lengths_and_ongoing_are_one_line_errors(make_episode):
    with pytest.raises(UserError, match="maxlen"):
        ChunkSampler(EpisodeStore(), 10, minlen=20, maxlen=10)
    with pytest.raises(UserError, match="minlen"):
        ChunkSampler(EpisodeStore(), 10, minlen=0)
    config = resolve(["debug"], ["--replay.ongoing", "True"])
    with pytest.raises(UserError, match="replay.ongoing"):
        make_sampler(config, EpisodeStore(), 0)
    sampler = make_sampler(resolve(["debug"], []), EpisodeStore(), 0)
    assert (sampler.minlen, sampler.maxlen, sampler.length) == (10, 30, 10)
