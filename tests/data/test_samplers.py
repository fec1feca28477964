"""ChunkSampler: official start-index formula, is_first semantics, uniform episode choice, seeds.
SequentialSampler: whole episodes streamed per batch slot, continuations, eviction, seeds."""

import numpy as np
import pytest
import torch

from torch_dreamer.data import BatchLoader, ChunkSampler, EmptyReplayError, EpisodeStore, chunk_start
from torch_dreamer.data.samplers import SequentialSampler

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


# ----- SequentialSampler: whole episodes streamed per batch slot, for a carried state -----


def _slot_chunks(sampler, batch, rounds):
    """``rounds`` batches of ``batch`` calls; returns the chunks of each slot in order."""
    chunks = [[] for _ in range(batch)]
    for _ in range(rounds):
        for slot in range(batch):
            chunks[slot].append(sampler.sample())
    return chunks


def _check_stream(store, chunks, length):
    """The slot's rows are whole episodes back to back (the last one possibly unfinished); returns their idents."""
    marker = np.concatenate([chunk["marker"] for chunk in chunks])
    is_first = np.concatenate([chunk["is_first"] for chunk in chunks])
    rows = marker % 100_000
    np.testing.assert_array_equal(is_first, rows == 0)  # True exactly at episode starts
    starts = np.flatnonzero(rows == 0)
    assert starts[0] == 0  # default: the stream starts at row 0 of an episode
    episodes = {int(store.get(key)["marker"][0]) // 100_000: store.get(key) for key in store.keys()}
    idents = []
    for begin, end in zip(starts, list(starts[1:]) + [len(marker)]):
        ident = int(marker[begin]) // 100_000
        episode = episodes[ident]
        np.testing.assert_array_equal(marker[begin:end], episode["marker"][: end - begin])  # consecutive rows
        if end < len(marker):
            assert end - begin == len(episode["marker"])  # an episode is read to its end before the next
        idents.append(ident)
    for chunk in chunks:
        assert all(value.shape[0] == length for value in chunk.values())
        assert chunk["is_first"][0] == (chunk["marker"][0] % 100_000 == 0)  # False on continuations
    return idents


def test_sequential_streams_whole_episodes_across_chunks(make_episode):
    store = _store(make_episode, 1, 3, 7, 12)  # 2, 4, 8 and 13 rows: chunks span several episodes
    sampler = SequentialSampler(store, length=5, batch=1, seed=0)
    chunks = _slot_chunks(sampler, 1, 60)[0]
    idents = _check_stream(store, chunks, 5)
    assert set(idents) == {0, 1, 2, 3} and len(idents) > 20
    assert any(not c["is_first"][0] for c in chunks) and any(c["is_first"][1:].any() for c in chunks)
    # Images follow the markers: the rows are the stored rows.
    episodes = {int(store.get(k)["marker"][0]): store.get(k) for k in store.keys()}
    image = np.concatenate([c["image"] for c in chunks])
    marker = np.concatenate([c["marker"] for c in chunks])
    for t in range(len(marker)):
        np.testing.assert_array_equal(image[t], episodes[marker[t] // 100_000 * 100_000]["image"][marker[t] % 100_000])


def test_sequential_slots_are_independent_streams(make_episode):
    store = _store(make_episode, 4, 9, 15, 6, 11)
    sampler = SequentialSampler(store, length=4, batch=3, seed=1)
    streams = [_check_stream(store, chunks, 4) for chunks in _slot_chunks(sampler, 3, 40)]
    assert len({tuple(s[:6]) for s in streams}) == 3  # each slot draws its own episodes


def test_sequential_chunks_are_copies_with_chunk_sampler_layout(make_episode):
    store = _store(make_episode, 20, 3)
    reference = ChunkSampler(store, length=6, seed=0).sample()
    sampler = SequentialSampler(store, length=6, batch=2, seed=0)
    for _ in range(10):
        chunk = sampler.sample()
        assert set(chunk) == set(reference)
        assert {k: v.dtype for k, v in chunk.items()} == {k: v.dtype for k, v in reference.items()}
        assert {k: v.shape for k, v in chunk.items()} == {k: v.shape for k, v in reference.items()}
        for key in store.keys():
            assert not any(np.shares_memory(chunk[k], v) for k, v in store.get(key).items())
        chunk["is_first"][:] = True
    assert all(store.get(key)["is_first"].sum() == 1 for key in store.keys())


def test_sequential_feeds_batch_loader_slots(make_episode):
    """Through BatchLoader, column b of every batch continues column b of the previous batch."""
    store = _store(make_episode, 5, 8, 13)
    with BatchLoader(SequentialSampler(store, length=4, batch=3), batch=3, prefetch=2, seed=5) as loader:
        batches = [next(loader) for _ in range(10)]
    marker = torch.cat([b["marker"] for b in batches]).numpy()       # (10 * T, B)
    is_first = torch.cat([b["is_first"] for b in batches]).numpy()
    for b in range(3):
        rows = marker[:, b] % 100_000
        np.testing.assert_array_equal(is_first[:, b], rows == 0)
        steps = np.diff(marker[:, b])
        assert np.all((steps == 1) | (rows[1:] == 0))  # consecutive, except where a new episode starts


def test_sequential_keeps_reading_an_evicted_episode(make_episode):
    store = EpisodeStore(capacity=25)
    store.add(make_episode(20, ident=0))
    sampler = SequentialSampler(store, length=6, batch=1, seed=0)
    assert list(sampler.sample()["marker"]) == list(range(6))
    store.add(make_episode(20, ident=1))  # evicts episode 0 from RAM
    assert len(store) == 1 and int(store.get(store.keys()[0])["marker"][0]) == 100_000
    marker = np.concatenate([sampler.sample()["marker"] for _ in range(4)])
    np.testing.assert_array_equal(marker[:15], np.arange(6, 21))  # episode 0 to its end
    np.testing.assert_array_equal(marker[15:], 100_000 + np.arange(9))  # then the only stored one


def test_sequential_seed_reseed_and_random_start(make_episode):
    store = _store(make_episode, 15, 40, 25)
    run = lambda s: [int(s.sample()["marker"][0]) for _ in range(30)]
    a, b, c = (SequentialSampler(store, 7, 2, seed=s) for s in (3, 3, 4))
    seq = [run(s) for s in (a, b, c)]
    assert seq[0] == seq[1] != seq[2]
    a.reseed(3)  # fresh streams, not a continuation
    assert run(a) == seq[0]
    offsets = set()
    for seed in range(20):
        sampler = SequentialSampler(store, 7, 2, seed=seed, random_start=True)
        firsts = [sampler.sample() for _ in range(2)]
        for first in firsts:
            offsets.add(int(first["marker"][0]) % 100_000)
            assert first["is_first"][0]  # the first chunk of a stream always starts from a reset
            assert not first["is_first"][1:].any() or first["marker"][0] % 100_000 != 0
        for first in firsts:  # then the slot continues where it stopped
            after = sampler.sample()
            assert after["marker"][0] == first["marker"][-1] + 1 or after["marker"][0] % 100_000 == 0
    assert len(offsets) > 5
    assert all(store.get(key)["is_first"].sum() == 1 for key in store.keys())


def test_sequential_nothing_to_sample_raises(make_episode):
    with pytest.raises(EmptyReplayError, match="prefill"):
        SequentialSampler(EpisodeStore(), length=5, batch=2).sample()
    with pytest.raises(ValueError):
        SequentialSampler(EpisodeStore(), length=0, batch=2)
    with pytest.raises(ValueError):
        SequentialSampler(EpisodeStore(), length=5, batch=0)


def test_sequential_chunk_across_episodes_keeps_shared_keys(make_episode):
    store = EpisodeStore()
    store.add(make_episode(2, ident=0))
    sampler = SequentialSampler(store, length=6, batch=1, seed=0)
    extra = make_episode(2, ident=1)
    extra["direction"] = np.zeros(3, np.int64)
    store.add(extra)
    store.add(make_episode(2, ident=2))
    for _ in range(20):
        chunk = sampler.sample()
        assert all(value.shape[0] == 6 for value in chunk.values())
        assert set(chunk) >= set(make_episode(1)) and "marker" in chunk
