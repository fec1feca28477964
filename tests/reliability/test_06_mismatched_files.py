"""Item 6: corrupt, foreign and mismatched episode files in the replay are each skipped with one warning
naming the file (and the key), whether they fall inside the RAM capacity (loaded) or beyond it (headers)."""

import io
import uuid
import warnings
import zipfile

import numpy as np
import pytest

from torch_dreamer.data import EpisodeStore
from torch_dreamer.runs.learner import episode_spec
from torch_dreamer.runs.spaces import Spaces
from tests.reliability.conftest import make_trainer

SPACES = Spaces({"vector": ((6,), np.dtype(np.float32))}, 2, True)


def good(length=10):
    action = np.zeros((length + 1, 2), np.float32)
    action[1:, 0] = 1
    return {"vector": np.zeros((length + 1, 6), np.float32), "action": action,
            "reward": np.zeros(length + 1, np.float32), "is_first": np.eye(length + 1, dtype=bool)[0],
            "is_last": np.eye(length + 1, dtype=bool)[-1], "is_terminal": np.zeros(length + 1, bool)}


def npz(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def without(key):
    return npz(**{k: v for k, v in good().items() if k != key})


def changed(key, value):
    return npz(**{**good(), key: value})


def zip_of_text():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    return buffer.getvalue()


VALID = npz(**good())
# (what, file bytes, what the warning must name besides the file)
BAD = [
    ("junk bytes", b"this is not a zip file", "unreadable"),
    ("truncated zip", VALID[: len(VALID) // 2], "unreadable"),
    ("empty file", b"", "unreadable"),
    ("zip without arrays", zip_of_text(), "'action'"),
    ("no reward", without("reward"), "'reward'"),
    ("no action", without("action"), "'action'"),
    ("no observation", without("vector"), "'vector'"),
    ("observation shape", changed("vector", np.zeros((11, 7), np.float32)), "'vector'"),
    ("observation dtype", changed("vector", np.zeros((11, 6), np.uint8)), "'vector'"),
    ("action width", changed("action", np.zeros((11, 3), np.float32)), "'action'"),
    ("ragged lengths", changed("reward", np.zeros(7, np.float32)), "'reward'"),
    ("scalar action", changed("action", np.float32(0)), "'action'"),
    ("image task's file", npz(**{**{k: v for k, v in good().items() if k != "vector"},
                                 "image": np.zeros((11, 8, 8, 3), np.uint8)}), "'vector'"),
    ("object array", npz(**{**good(), "vector": np.array([object()] * 11)}), "unreadable"),
    ("NaN reward", changed("reward", np.full(11, np.nan, np.float32)), "'reward'"),
    ("inf observation", changed("vector", np.full((11, 6), np.inf, np.float32)), "'vector'"),
]


def plant(directory, stamp="20990101T0000"):
    """Every bad file, named like a real episode (newest, so a resume reads them first)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (what, data, _) in enumerate(BAD):
        path = directory / f"{stamp}{index:02d}-{uuid.uuid4().hex}-10.npz"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_06_fifteen_kinds_of_bad_files_are_each_skipped_naming_file_and_key(tmp_path):
    assert len(BAD) >= 15
    paths = plant(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = EpisodeStore(tmp_path, spec=episode_spec(SPACES))
    messages = [str(w.message) for w in caught]
    assert store.total_episodes == 0 and store.total_steps == 0 and len(store) == 0
    for path, (what, _, key) in zip(paths, BAD):
        matching = [m for m in messages if path.name in m]
        assert len(matching) == 1, what
        assert key in matching[0] and "\n" not in matching[0], (what, matching[0])


def test_06_files_beyond_capacity_are_checked_from_their_headers(tmp_path):
    paths = plant(tmp_path, stamp="20200101T0000")  # older than the good files: beyond the RAM capacity
    for index in range(3):
        (tmp_path / f"20990101T00000{index}-{uuid.uuid4().hex}-10.npz").write_bytes(VALID)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = EpisodeStore(tmp_path, capacity=25, spec=episode_spec(SPACES))
    messages = " ".join(str(w.message) for w in caught)
    # The headers tell every structural problem; values (NaN, inf) are only read when a file is loaded.
    structural = [path for path, (what, _, _) in zip(paths, BAD) if what not in ("NaN reward", "inf observation")]
    assert all(path.name in messages for path in structural)
    assert store.total_episodes == 3 + 2 and store.total_steps == 50  # the 3 good ones and the 2 readable ones


def test_06_a_run_resumes_past_bad_files(tmp_path):
    make_trainer(tmp_path, 40).run()
    plant(tmp_path / "train_episodes")
    with pytest.warns(UserWarning, match="skipping episode file"):
        result = make_trainer(tmp_path, 80).run()
    assert result["step"] == 80


def test_06_a_replay_read_before_its_spaces_are_known_drops_mismatches(tmp_path):
    """Workers/offline learners open the replay first and learn the spaces from it or the checkpoint."""
    (tmp_path / f"20990101T000000-{uuid.uuid4().hex}-10.npz").write_bytes(VALID)
    (tmp_path / f"20990101T000001-{uuid.uuid4().hex}-10.npz").write_bytes(BAD[7][1])  # wrong shape
    store = EpisodeStore(tmp_path)
    assert store.total_episodes == 2
    with pytest.warns(UserWarning, match="'vector' has steps of shape"):
        assert store.set_spec(episode_spec(SPACES)) == 1
    assert store.total_episodes == 1 and store.total_steps == 10 and len(store) == 1
