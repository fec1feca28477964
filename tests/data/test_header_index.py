"""The header index: a reopened replay reads no header twice, and counts what a store without an index counts
when other processes add, remove or replace files, when the spec changes, or when the index is damaged."""

import json
import warnings

import pytest

from torch_dreamer.data import EpisodeStore, save_episode
from torch_dreamer.data import episodes as eps
from torch_dreamer.data.header_index import INDEX_NAME


@pytest.fixture
def header_reads(monkeypatch):
    """Counts `episode_layout` calls (one per file whose headers are read)."""
    calls = []
    real = eps.episode_layout

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(eps, "episode_layout", counting)
    return calls


def _fill(directory, make_episode, count, start=0):
    return [save_episode(directory, make_episode(5, ident=start + i)) for i in range(count)]


def _without_index(directory, **kwargs):
    (directory / INDEX_NAME).unlink(missing_ok=True)
    return EpisodeStore(directory, **kwargs)


def test_reopen_reads_no_header_twice(tmp_path, make_episode, header_reads):
    _fill(tmp_path, make_episode, 12)
    first = EpisodeStore(tmp_path, capacity=10)
    assert len(header_reads) == 10 and (tmp_path / INDEX_NAME).exists()  # 2 files loaded, 10 inspected
    header_reads.clear()
    again = EpisodeStore(tmp_path, capacity=10)
    assert header_reads == [] and again.stats() == first.stats() and again.keys() == first.keys()


def test_files_added_removed_and_replaced_by_others(tmp_path, make_episode, header_reads):
    paths = _fill(tmp_path, make_episode, 10)
    EpisodeStore(tmp_path, capacity=10)
    paths[0].unlink()  # another process deletes one
    paths[1].write_bytes(b"not a zip any more")  # and clobbers another in place
    new = _fill(tmp_path, make_episode, 3, start=10)  # actors write more: the 2 newest fill capacity
    header_reads.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        indexed = EpisodeStore(tmp_path, capacity=10)
        assert sorted(map(str, header_reads)) == sorted(map(str, [paths[1], new[0]]))  # changed and unseen files
        assert indexed.stats() == _without_index(tmp_path, capacity=10).stats()
    assert any(str(paths[1]) in str(w.message) for w in caught)


def test_refreshed_files_are_indexed_and_the_spec_is_checked_each_open(tmp_path, make_episode, header_reads):
    store = EpisodeStore(tmp_path, capacity=10)
    writer = EpisodeStore(tmp_path)
    for i in range(6):
        writer.add(make_episode(5, ident=i))
    store.refresh()
    store._index.write()  # refresh writes only every INDEX_BATCH files; the store's own index is current
    header_reads.clear()
    spec = {"image": ((8, 8, 3), "uint8"), "action": ((4,), "float32"), "reward": ((), "float32")}
    assert EpisodeStore(tmp_path, capacity=10, spec=spec).total_episodes == 6
    with pytest.warns(UserWarning, match="'image' has steps of shape"):
        wrong = EpisodeStore(tmp_path, capacity=10, spec={**spec, "image": ((4, 4, 3), "uint8")})
    assert header_reads == [] and wrong.total_episodes == 0  # indexed ones checked in memory, loaded ones whole


def test_damaged_index_is_ignored_and_replaced(tmp_path, make_episode, header_reads):
    _fill(tmp_path, make_episode, 8)
    good = EpisodeStore(tmp_path, capacity=10).stats()
    (tmp_path / INDEX_NAME).write_text('{"version": 1, "layouts": [], "files": {"x": [1, 2')
    header_reads.clear()
    assert EpisodeStore(tmp_path, capacity=10).stats() == good
    assert header_reads and len(json.loads((tmp_path / INDEX_NAME).read_text())["files"]) == 8
