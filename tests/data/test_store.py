"""EpisodeStore: counters, minlen, FIFO capacity, resume from a directory, pluggable eviction, threads."""

import threading

import numpy as np

from torch_dreamer.data import ChunkSampler, EpisodeStore, list_episodes


def _markers(store):
    """Episode ids in RAM, oldest first."""
    return [int(store.get(k)["marker"][0]) // 100_000 for k in store.keys()]


def test_counters_without_directory(make_episode):
    store = EpisodeStore()
    assert store.add(make_episode(10)) is None
    store.add(make_episode(7, ident=1))
    assert store.stats() == {"total_steps": 17, "total_episodes": 2, "loaded_steps": 17, "loaded_episodes": 2}
    assert len(store) == 2 and store.length(store.keys()[0]) == 10


def test_stored_arrays_are_not_copied(make_episode):
    store = EpisodeStore()
    episode = make_episode(5)
    store.add(episode)
    stored = store.get(store.keys()[0])
    assert all(stored[key] is episode[key] for key in episode)
    assert stored["image"].dtype == np.uint8


def test_minlen_saves_but_does_not_keep(tmp_path, make_episode):
    store = EpisodeStore(tmp_path, minlen=5)
    short = store.add(make_episode(4))
    store.add(make_episode(5, ident=1))
    assert short is not None and short.exists()
    assert _markers(store) == [1]
    assert store.stats() == {"total_steps": 9, "total_episodes": 2, "loaded_steps": 5, "loaded_episodes": 1}


def test_fifo_capacity_evicts_ram_only(tmp_path, make_episode):
    store = EpisodeStore(tmp_path, capacity=25)
    for ident in range(5):
        store.add(make_episode(10, ident=ident))
        assert store.loaded_steps <= 25
    assert _markers(store) == [3, 4]
    assert store.stats() == {"total_steps": 50, "total_episodes": 5, "loaded_steps": 20, "loaded_episodes": 2}
    assert len(list_episodes(tmp_path)) == 5  # eviction never deletes files


def test_capacity_keeps_one_episode_longer_than_capacity(make_episode):
    store = EpisodeStore(capacity=10)
    store.add(make_episode(5))
    store.add(make_episode(30, ident=1))
    assert _markers(store) == [1] and store.loaded_steps == 30


def test_resume_from_directory(tmp_path, make_episode):
    first = EpisodeStore(tmp_path, capacity=100, minlen=3)
    paths = [first.add(make_episode(10, ident=i)) for i in range(5)]
    first.add(make_episode(2, ident=9))  # short: on disk, counted, never loaded
    # Same-second timestamps sort by uuid, so give the files distinct, ordered stamps.
    for i, path in enumerate(paths):
        path.rename(path.with_name(f"2024010{i + 1}T000000" + path.name[15:]))
    resumed = EpisodeStore(tmp_path, capacity=25, minlen=3)
    assert resumed.stats() == {"total_steps": 52, "total_episodes": 6, "loaded_steps": 30, "loaded_episodes": 3}
    assert _markers(resumed) == [2, 3, 4]  # newest until >= capacity, oldest first
    resumed.add(make_episode(10, ident=5))
    assert _markers(resumed) == [4, 5]
    assert resumed.total_steps == 62 and resumed.total_episodes == 7


class _EvictSecondNewest:
    """A non-FIFO rule, to show that eviction plugs in (keeps the oldest episode forever)."""

    def select(self, keys):
        return keys[-2]


def test_custom_eviction_plugs_in(make_episode):
    store = EpisodeStore(capacity=20, eviction=_EvictSecondNewest())
    for ident in range(4):
        store.add(make_episode(10, ident=ident))
    assert _markers(store) == [0, 3]


def test_one_writer_many_samplers(make_episode):
    store = EpisodeStore(capacity=60)
    store.add(make_episode(20))
    errors, stop = [], threading.Event()

    def sample(seed):
        sampler = ChunkSampler(store, length=8, prioritize_ends=True, seed=seed)
        try:
            while not stop.is_set():
                chunk = sampler.sample()
                steps = np.diff(chunk["marker"])
                assert (steps == 1).all() and chunk["is_first"][0]
                store.stats()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sample, args=(s,)) for s in range(3)]
    for thread in threads:
        thread.start()
    for ident in range(1, 300):
        store.add(make_episode(10 + ident % 15, ident=ident))
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.loaded_steps <= 60 and store.total_episodes == 300
