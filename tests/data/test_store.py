"""EpisodeStore: counters, minlen, FIFO capacity, resume from a directory, pluggable eviction, threads,
refresh from other writers."""

import multiprocessing
import threading
import uuid
import warnings

import numpy as np
import pytest

from torch_dreamer.data import ChunkSampler, EpisodeStore, list_episodes, save_episode
from torch_dreamer.data import episodes as eps


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


# ------------------------------------------------------------------------------ refresh: other writers


def _write_at(directory, stamp, episode):
    """A file from another writer with a given timestamp (files of one second are ordered by mtime)."""
    path = save_episode(directory, episode)
    return path.rename(path.with_name(stamp + path.name[15:]))


def test_refresh_picks_up_files_from_other_processes(tmp_path, make_episode):
    directory = tmp_path / "replay"
    store = EpisodeStore(directory, capacity=1000, minlen=3)
    store.add(make_episode(5, ident=0))
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=save_episode, args=(str(directory), make_episode(n, ident=i)))
               for i, n in ((1, 6), (2, 7), (3, 2))]  # the last is too short to sample
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    assert store.refresh() == 2 and store.refresh() == 0
    assert sorted(_markers(store)) == [0, 1, 2] and _markers(store)[0] == 0
    assert store.stats() == {"total_steps": 20, "total_episodes": 4, "loaded_steps": 18, "loaded_episodes": 3}
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]


def test_refresh_never_rereads_known_files(tmp_path, make_episode, monkeypatch):
    for i in range(3):
        _write_at(tmp_path, f"2024010{i + 1}T000000", make_episode(10, ident=i))
    _write_at(tmp_path, "20240104T000000", make_episode(2, ident=3))  # short
    (tmp_path / f"20240105T000000-{uuid.uuid4().hex}-10.npz").write_bytes(b"corrupt")
    with pytest.warns(UserWarning, match="20240105T000000"):
        store = EpisodeStore(tmp_path, capacity=20, minlen=3)
    # Newest until capacity: the corrupt file holds nothing, so it neither counts nor fills the capacity.
    assert _markers(store) == [1, 2]
    assert store.stats() == {"total_steps": 32, "total_episodes": 4, "loaded_steps": 20, "loaded_episodes": 2}

    loads = []
    real_load = eps.load_episode
    monkeypatch.setattr(eps, "load_episode", lambda path: loads.append(path) or real_load(path))
    store.add(make_episode(10, ident=4))  # its own file is known
    assert store.refresh() == 0 and loads == []
    new = _write_at(tmp_path, "20990101T000000", make_episode(10, ident=5))
    corrupt = tmp_path / f"20990102T000000-{uuid.uuid4().hex}-10.npz"
    corrupt.write_bytes(b"also corrupt")
    with pytest.warns(UserWarning, match="20990102T000000"):
        assert store.refresh() == 1
    assert [eps.file_name(p) for p in loads] == [new.name, corrupt.name]  # only the new files, oldest first
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the corrupt file is not warned about again
        assert store.refresh() == 0
    assert len(loads) == 2
    assert _markers(store) == [4, 5]
    assert store.total_episodes == 6 and store.total_steps == 52  # the two corrupt files count nothing


def test_fifo_capacity_across_refresh(tmp_path, make_episode):
    store = EpisodeStore(tmp_path, capacity=25)
    store.add(make_episode(10, ident=0))
    store.add(make_episode(10, ident=1))
    _write_at(tmp_path, "20990101T000000", make_episode(10, ident=2))
    _write_at(tmp_path, "20990102T000000", make_episode(10, ident=3))
    assert store.refresh() == 2
    assert _markers(store) == [2, 3] and store.loaded_steps == 20
    store.add(make_episode(10, ident=4))
    assert _markers(store) == [3, 4]
    for ident in range(5, 9):
        _write_at(tmp_path, f"2099020{ident}T000000", make_episode(10, ident=ident))
    assert store.refresh() == 3  # 5 would be evicted at once, so it is never read
    assert _markers(store) == [7, 8]
    assert store.stats() == {"total_steps": 90, "total_episodes": 9, "loaded_steps": 20, "loaded_episodes": 2}


def test_refresh_without_directory_or_new_files(make_episode, tmp_path):
    assert EpisodeStore().refresh() == 0
    store = EpisodeStore(tmp_path / "missing")
    assert store.refresh() == 0 and store.directory == tmp_path / "missing"
    store.add(make_episode(3))
    assert store.refresh() == 0 and len(store) == 1


def test_refresh_hands_every_new_episode_to_on_episode(tmp_path, make_episode):
    store = EpisodeStore(tmp_path, capacity=15, minlen=3)
    store.add(make_episode(10, ident=0))
    for ident, length in ((1, 10), (2, 2), (3, 10)):  # the short one is logged but never sampled
        _write_at(tmp_path, f"2099010{ident}T000000", make_episode(length, ident=ident))
    seen = []
    assert store.refresh(on_episode=lambda episode: seen.append((int(episode["marker"][0]) // 100_000,
                                                                 store.total_episodes))) == 2
    assert seen == [(1, 4), (2, 4), (3, 4)]  # oldest first, after the counters include them
    assert _markers(store) == [3]
    assert store.refresh(on_episode=seen.append) == 0 and len(seen) == 3
