"""DiskStorage: the same episodes, order and membership as the in-RAM dict, read through memory maps; its
files come and go with the members; a store over it resumes from the episode files; the config picks it."""

import os

import numpy as np
import pytest

from torch_dreamer.config import resolve
from torch_dreamer.data import ChunkSampler, DictStorage, EpisodeStore
from torch_dreamer.data.disk_storage import DiskStorage, remove_stale_caches, storage_for
from torch_dreamer.data.replay_strategies import make_eviction
from torch_dreamer.errors import UserError


def _same(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
        np.testing.assert_array_equal(a[key], b[key])


def _cache_files(storage):
    return sorted(path.name for path in storage.directory.glob("*.episode"))


def _disk_store(tmp_path, *args, **kwargs):
    return EpisodeStore(*args, storage=DiskStorage(tmp_path / "cache", max_open=2), **kwargs)


def test_operations_match_dict_storage(tmp_path, make_episode):
    ram, disk = DictStorage(), DiskStorage(tmp_path, max_open=2)
    episodes = {f"k{i}": make_episode(5 + i, ident=i) for i in range(6)}
    for key, episode in episodes.items():
        ram.add(key, episode)
        disk.add(key, episode)
    _same(disk.remove("k2"), ram.remove("k2"))
    popped_ram, popped_disk = ram.pop_oldest(), disk.pop_oldest()
    assert popped_disk[0] == popped_ram[0] == "k0"
    _same(popped_disk[1], popped_ram[1])
    assert disk.keys() == ram.keys() == ("k1", "k3", "k4", "k5") and len(disk) == len(ram) == 4
    for key in ram.keys():  # more keys than open maps: the LRU reopens them
        _same(disk.get(key), ram.get(key))
        _same(disk.get(key), episodes[key])
    with pytest.raises(KeyError):
        disk.get("k0")
    with pytest.raises(KeyError):
        disk.add("k1", episodes["k1"])
    assert not disk.get("k1")["image"].flags.writeable  # the cache cannot be changed through a view


def test_removed_files_go_at_settle_and_views_stay_readable(tmp_path, make_episode):
    disk = DiskStorage(tmp_path)
    disk.add("a", make_episode(5))
    disk.add("b", make_episode(5, ident=1))
    view = disk.get("a")["marker"]
    disk.remove("a")
    assert len(_cache_files(disk)) == 2  # kept until settle, so a remove-then-add reuses the file
    disk.settle()
    assert len(_cache_files(disk)) == 1
    assert view[3] == 3  # the unlinked file stays mapped while a view holds it
    disk.close()
    assert not disk.directory.exists()


def test_remove_then_add_back_adopts_the_file(tmp_path, make_episode):
    disk = DiskStorage(tmp_path)
    disk.add("a", make_episode(5))
    disk.add("b", make_episode(5, ident=1))
    before = _cache_files(disk)
    disk.add("a", disk.remove("a"))  # what EpisodeStore.load_state_dict does to reorder members
    disk.settle()
    assert _cache_files(disk) == before and disk.keys() == ("b", "a")
    _same(disk.get("a"), make_episode(5))


def test_stale_cache_folders_of_dead_owners_are_removed(tmp_path):
    live = DiskStorage(tmp_path)
    dead = tmp_path / "cache-1-dead"
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / "000000001.episode").write_bytes(b"x")
    keep = tmp_path / "my_notes.txt"
    keep.write_text("not ours")
    assert remove_stale_caches(tmp_path) == [dead]
    assert live.directory.exists() and keep.exists()  # a live storage's folder and other files stay
    DiskStorage(tmp_path)  # opening also cleans: nothing stale is left now
    assert not dead.exists()


@pytest.mark.parametrize("eviction", ["fifo", "reservoir"])
def test_store_membership_and_chunks_match_ram(tmp_path, make_episode, eviction):
    ram = EpisodeStore(None, capacity=60, minlen=3, eviction=make_eviction(eviction, 5))
    disk = _disk_store(tmp_path, None, capacity=60, minlen=3, eviction=make_eviction(eviction, 5))
    for ident in range(30):
        episode = make_episode(int(np.random.default_rng(ident).integers(2, 20)), ident=ident)
        ram.add(episode)
        disk.add(episode)
    markers = lambda store: [int(store.get(k)["marker"][0]) for k in store.keys()]
    assert markers(disk) == markers(ram) and disk.stats() == ram.stats()
    assert len(_cache_files(disk._storage)) == len(disk)  # evicted episodes' files are gone
    samplers = [ChunkSampler(store, 4, prioritize_ends=True, seed=11) for store in (ram, disk)]
    for _ in range(20):
        _same(samplers[1].sample(), samplers[0].sample())


def test_resume_from_directory_and_state_dict(tmp_path, make_episode):
    replay = tmp_path / "replay"
    first = EpisodeStore(replay, capacity=60, minlen=3, eviction=make_eviction("reservoir", 1))
    for ident in range(20):
        first.add(make_episode(8, ident=ident))
    state = first.state_dict()
    held = [int(first.get(k)["marker"][0]) for k in first.keys()]
    resumed = _disk_store(tmp_path, replay, capacity=60, minlen=3, eviction=make_eviction("reservoir", 99))
    resumed_ram = EpisodeStore(replay, capacity=60, minlen=3, eviction=make_eviction("reservoir", 99))
    assert resumed.stats() == resumed_ram.stats() and resumed.keys() == resumed_ram.keys()
    resumed.load_state_dict(state)
    assert resumed.stats() == first.stats()
    assert [int(resumed.get(k)["marker"][0]) for k in resumed.keys()] == held
    assert len(_cache_files(resumed._storage)) == len(held)  # staged or dropped files were freed
    for key in resumed.keys():
        _same(resumed.get(key), first.get(key))
    assert len(list(replay.glob("*.npz"))) == 20  # the episode files are never touched
    resumed.close()
    assert not resumed._storage.directory.exists()


def test_refresh_with_on_episode_reads_staged_episodes(tmp_path, make_episode):
    replay = tmp_path / "replay"
    store = _disk_store(tmp_path, replay, capacity=30, minlen=3)
    ram = EpisodeStore(replay, capacity=30, minlen=3)
    writer = EpisodeStore(replay)
    for ident in range(5):
        writer.add(make_episode(2 + 4 * ident, ident=ident))
    seen = []
    store.refresh(on_episode=lambda episode: seen.append(int(episode["marker"][-1])))
    assert seen == [2, 100_006, 200_010, 300_014, 400_018]  # short ones included, every array readable
    ram.refresh()
    assert store.keys() == ram.keys() and store.stats() == ram.stats()
    writer.add(make_episode(9, ident=5))
    store.refresh(), ram.refresh()
    assert store.keys() == ram.keys() and len(store.keys()) == 2
    assert len(_cache_files(store._storage)) == 2


def test_config_key_reaches_the_store(tmp_path, make_episode):
    from torch_dreamer.runs.learner import make_replay

    config = resolve([], ["--replay.storage", "disk", "--logdir", str(tmp_path / "run"), "--replay.minlen", "1"])
    store = make_replay(config, tmp_path / "run" / "train_episodes")
    assert isinstance(store._storage, DiskStorage)
    assert store._storage.root == tmp_path / "run" / "replay_cache"
    store.add(make_episode(4))
    assert len(_cache_files(store._storage)) == 1
    own = resolve([], ["--replay.storage", "disk", "--replay.storage_dir", str(tmp_path / "elsewhere"),
                       "--logdir", str(tmp_path / "run")])
    assert storage_for(own.replay.storage, own.replay.storage_dir, own.logdir).root == tmp_path / "elsewhere"
    assert isinstance(make_replay(resolve([], ["--logdir", str(tmp_path)]), None)._storage, DictStorage)
    with pytest.raises(UserError, match="replay.storage must be one of ram, disk"):
        storage_for("ssd", "", tmp_path)


def test_open_maps_stay_bounded(tmp_path, make_episode):
    disk = DiskStorage(tmp_path, max_open=3, max_mapped_bytes=1 << 40)
    for i in range(10):
        disk.add(f"k{i}", make_episode(5, ident=i))
    for key in disk.keys():
        disk.get(key)
    assert len(disk._open) == 3
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for key in disk.keys() * 20:
        disk.get(key)
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) <= fds + 1
