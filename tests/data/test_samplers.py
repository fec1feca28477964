"""ChunkSampler: official start-index formula, is_first semantics, uniform episode choice, seeds."""

import numpy as np
import pytest

from torch_dreamer.data import ChunkSampler, EmptyReplayError, EpisodeStore, chunk_start

N = 20_000


def _store(make_episode, *lengths):
    store = EpisodeStore()
    for ident, length in enumerate(lengths):
        store.add(make_episode(length, ident=ident))
    return store


def _ends_fraction(sampler, n=N):
    """Fraction of chunks whose last row is the episode's last row."""
    hits = 0
    for _ in range(n):
        chunk = sampler.sample()
        hits += bool(chunk["is_last"][-1])
    return hits / n


def _close(observed, p, n=N):
    return abs(observed - p) < 5 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("prioritize_ends", [False, True])
def test_start_distribution_matches_formula(prioritize_ends):
    """total = 21 rows, length 5: starts 0..16; with prioritize_ends, 16 gets 6 of 22 draws."""
    rng = np.random.default_rng(0)
    starts = np.array([chunk_start(rng, 21, 5, prioritize_ends) for _ in range(N)])
    assert starts.min() == 0 and starts.max() == 16
    counts = np.bincount(starts, minlength=17) / N
    if prioritize_ends:
        expected = np.full(17, 1 / 22)
        expected[16] = 6 / 22
    else:
        expected = np.full(17, 1 / 17)
    assert all(_close(c, p) for c, p in zip(counts, expected))


@pytest.mark.parametrize("prioritize_ends, p_end", [(False, 1 / 17), (True, 6 / 22)])
def test_chunks_reach_episode_end(make_episode, prioritize_ends, p_end):
    store = _store(make_episode, 20)  # 21 rows
    sampler = ChunkSampler(store, length=5, prioritize_ends=prioritize_ends, seed=1)
    assert _close(_ends_fraction(sampler), p_end)


def test_chunk_is_a_contiguous_slice_with_is_first(make_episode):
    store = _store(make_episode, 30)
    episode = store.get(store.keys()[0])
    sampler = ChunkSampler(store, length=10, seed=0)
    starts = set()
    for _ in range(200):
        chunk = sampler.sample()
        start = int(chunk["marker"][0])
        starts.add(start)
        assert set(chunk) == set(episode)
        assert all(value.shape[0] == 10 for value in chunk.values())
        np.testing.assert_array_equal(chunk["marker"], np.arange(start, start + 10))
        np.testing.assert_array_equal(chunk["image"], episode["image"][start : start + 10])
        assert chunk["is_first"][0] and not chunk["is_first"][1:].any()
        assert chunk["image"].dtype == np.uint8 and chunk["is_first"].dtype == bool
    assert min(starts) == 0 and max(starts) == 21  # the whole range 0 .. total - length occurs
    assert episode["is_first"].sum() == 1  # forcing is_first on chunks never touches stored data


def test_episode_choice_is_uniform_not_length_weighted(make_episode):
    store = _store(make_episode, 10, 1000)
    sampler = ChunkSampler(store, length=5, seed=2)
    short = sum(int(sampler.sample()["marker"][0]) < 100_000 for _ in range(4000)) / 4000
    assert _close(short, 0.5, 4000)


def test_sampler_follows_official_rng_sequence(make_episode):
    """Episode index then start index, each from one draw of the seeded Generator."""
    lengths = (12, 30, 7, 50)
    store = _store(make_episode, *lengths)
    sampler = ChunkSampler(store, length=6, prioritize_ends=True, seed=123)
    rng = np.random.default_rng(123)
    for _ in range(300):
        ident = int(rng.integers(len(lengths)))
        start = chunk_start(rng, lengths[ident] + 1, 6, True)
        assert int(sampler.sample()["marker"][0]) == ident * 100_000 + start


def test_seed_determinism(make_episode):
    store = _store(make_episode, 15, 40, 25)
    a, b, c = (ChunkSampler(store, 8, True, seed=s) for s in (7, 7, 8))
    seq = [[int(s.sample()["marker"][0]) for _ in range(50)] for s in (a, b, c)]
    assert seq[0] == seq[1] != seq[2]
    a.reseed(7)
    assert [int(a.sample()["marker"][0]) for _ in range(50)] == seq[0]


def test_short_episodes_are_skipped(make_episode):
    store = _store(make_episode, 3, 3, 3, 20)  # only the last has >= 10 rows
    sampler = ChunkSampler(store, length=10, seed=0)
    assert all(int(sampler.sample()["marker"][0]) // 100_000 == 3 for _ in range(50))
    exact = ChunkSampler(_store(make_episode, 9), length=10, seed=0)  # 10 rows fit exactly one chunk
    assert int(exact.sample()["marker"][0]) == 0


def test_nothing_to_sample_raises(make_episode):
    with pytest.raises(EmptyReplayError, match="prefill"):
        ChunkSampler(EpisodeStore(), length=5).sample()
    with pytest.raises(EmptyReplayError):
        ChunkSampler(_store(make_episode, 2, 3), length=5).sample()
