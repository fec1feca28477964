"""Replay directories given as fsspec URLs: memory:// round trips, atomic remote writes, and a real
S3-compatible server (moto in server mode on loopback) reached through s3fs."""

import io
import uuid

import fsspec
import numpy as np
import pytest

from torch_dreamer.data import EpisodeStore, count_episodes, list_episodes, load_episode, load_episodes, save_episode
from torch_dreamer.data import episodes as eps


@pytest.fixture
def memory_url():
    """A fresh ``memory://`` directory (the memory filesystem is global to the process), removed after."""
    url = f"memory://replay-{uuid.uuid4().hex}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _markers(store):
    return [int(store.get(k)["marker"][0]) // 100_000 for k in store.keys()]


def _write_at(url, stamp, episode):
    """Another writer's file with a given timestamp: remote files of one second sort by their random uuid."""
    fs, root = fsspec.core.url_to_fs(url)
    data = io.BytesIO()
    np.savez_compressed(data, **episode)
    name = f"{stamp}-{uuid.uuid4().hex}-{len(episode['action']) - 1}.npz"
    fs.pipe_file(f"{root}/{name}", data.getvalue())
    return f"{url}/{name}"


def test_memory_round_trip(memory_url, make_episode):
    paths = [save_episode(memory_url, make_episode(5 + i, ident=i)) for i in range(3)]
    assert all(isinstance(p, str) and p.startswith(memory_url + "/") for p in paths)
    listed = list_episodes(memory_url)
    assert sorted(listed) == sorted(paths) and all(isinstance(p, str) for p in listed)
    assert count_episodes(memory_url) == (3, 5 + 6 + 7)
    episode = load_episode(paths[1])
    np.testing.assert_array_equal(episode["image"], make_episode(6, ident=1)["image"])
    assert episode["image"].dtype == np.uint8 and episode["is_first"][0]
    assert sorted(load_episodes(memory_url)) == sorted(paths)
    assert list_episodes(memory_url + "-missing") == [] and count_episodes(memory_url + "-missing") == (0, 0)


def test_remote_names_sort_by_timestamp_without_stat(memory_url, make_episode, monkeypatch):
    for stamp in ["20240102T000000", "20230101T000000", "20240101T120000"]:
        _write_at(memory_url, stamp, make_episode(3))
    fs, root = fsspec.core.url_to_fs(memory_url)
    fs.pipe_file(f"{root}/notes.txt", b"not an episode")
    monkeypatch.setattr(eps.os, "stat", None)  # remote keys must not stat anything
    stamps = [eps.file_name(p)[:15] for p in list_episodes(memory_url)]
    assert stamps == ["20230101T000000", "20240101T120000", "20240102T000000"]


def test_remote_partial_writes_are_invisible(memory_url, make_episode, monkeypatch):
    fs, root = fsspec.core.url_to_fs(memory_url)
    save_episode(memory_url, make_episode(4))
    fs.pipe_file(f"{root}/.tmp-20990101T000000-abc-4.npz", b"half an upload")
    fs.pipe_file(f"{root}/.tmp-20990101T000000-abc-4.npz.part", b"half an upload")
    assert len(list_episodes(memory_url)) == 1

    def interrupted(self, path, value, **kwargs):
        raise ConnectionError("network gone mid-upload")

    monkeypatch.setattr(type(fs), "pipe_file", interrupted)
    with pytest.raises(ConnectionError):
        save_episode(memory_url, make_episode(4))
    assert len(list_episodes(memory_url)) == 1


def test_store_over_memory_url_refreshes(memory_url, make_episode):
    store = EpisodeStore(memory_url, capacity=25)
    assert store.directory == memory_url and store.stats()["total_episodes"] == 0
    store.add(make_episode(10, ident=0))
    for ident in (1, 2):  # another writer: same directory, unknown to the store
        _write_at(memory_url, f"2099010{ident}T000000", make_episode(10, ident=ident))
    assert store.refresh() == 2 and store.refresh() == 0
    assert _markers(store) == [1, 2]  # FIFO: the store's own episode left first
    assert store.stats() == {"total_steps": 30, "total_episodes": 3, "loaded_steps": 20, "loaded_episodes": 2}
    resumed = EpisodeStore(memory_url + "/", capacity=100)
    assert resumed.directory == memory_url and resumed.total_episodes == 3 and len(resumed) == 3


# ----------------------------------------------------------------------------------------- real S3 server


def test_s3_save_list_load_refresh(s3_endpoint, make_episode):
    client, url = s3_endpoint, "s3://replay-bucket/replay"
    store = EpisodeStore(url, capacity=100, minlen=3)
    path = store.add(make_episode(6, ident=0))
    assert isinstance(path, str) and path.startswith(url + "/")
    # The object is really on the server: ask it directly, without s3fs.
    keys = [obj["Key"] for obj in client.list_objects_v2(Bucket="replay-bucket")["Contents"]]
    assert keys == ["replay/" + eps.file_name(path)]
    assert list_episodes(url) == [path] and count_episodes(url) == (1, 6)

    # Another machine uploads with its own client: refresh must see it despite s3fs's listing cache.
    data = io.BytesIO()
    np.savez_compressed(data, **make_episode(8, ident=1))
    name = f"20990101T000000-{uuid.uuid4().hex}-8.npz"  # newest by name: sorts last
    client.put_object(Bucket="replay-bucket", Key=f"replay/{name}", Body=data.getvalue())
    client.put_object(Bucket="replay-bucket", Key="replay/.tmp-partial-8.npz", Body=b"x")
    save_episode(url, make_episode(2, ident=2))  # too short to sample, still counted
    assert store.refresh() == 1 and store.refresh() == 0
    assert _markers(store) == [0, 1]
    assert store.stats() == {"total_steps": 16, "total_episodes": 3, "loaded_steps": 14, "loaded_episodes": 2}
    assert list_episodes(url)[-1] == f"{url}/{name}"
    np.testing.assert_array_equal(load_episode(f"{url}/{name}")["marker"], make_episode(8, ident=1)["marker"])
    resumed = EpisodeStore(url, capacity=100, minlen=3)
    assert resumed.stats() == store.stats()
