"""Item 7: the step counter counts what the files hold (never their names), and a file name alone never
ends a run; the checkpoint's counters are reconciled with the files, so counters never go back."""

import uuid
import warnings

import numpy as np

from torch_dreamer.data import EpisodeStore, list_episodes
from tests.reliability.conftest import make_trainer
from tests.reliability.test_06_mismatched_files import VALID, good, npz


def test_07_names_never_count_only_contents(tmp_path):
    make_trainer(tmp_path, 40).run()
    replay = tmp_path / "train_episodes"
    # Eight planted files claiming 5000 steps each: corrupt ones, and valid ones of 3 steps.
    for index in range(4):
        (replay / f"20990101T00000{index}-{uuid.uuid4().hex}-5000.npz").write_bytes(b"junk")
        (replay / f"20990101T00001{index}-{uuid.uuid4().hex}-5000.npz").write_bytes(npz(**good(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = EpisodeStore(replay)
        assert store.total_steps == 40 + 4 * 3  # not 40 + 8 * 5000
        trainer = make_trainer(tmp_path, 80)
        assert trainer.step == 52
        result = trainer.run()
    assert result["step"] == 80 and result["updates"] > 0  # not ended at once by phantom steps


def test_07_names_beyond_capacity_do_not_count_either(tmp_path):
    (tmp_path / f"20200101T000000-{uuid.uuid4().hex}-100000.npz").write_bytes(VALID)  # 10 steps, named 100000
    (tmp_path / f"20200101T000001-{uuid.uuid4().hex}-100000.npz").write_bytes(b"junk")
    (tmp_path / f"20990101T000000-{uuid.uuid4().hex}-10.npz").write_bytes(VALID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = EpisodeStore(tmp_path, capacity=5)
    assert store.total_steps == 20 and store.total_episodes == 2 and store.loaded_steps == 10


def test_07_the_checkpoint_counter_never_goes_back(tmp_path, capsys):
    make_trainer(tmp_path, 40).run()
    newest = list_episodes(tmp_path / "train_episodes")[-1]
    newest.unlink()  # an episode lost (as the unfinished one is at a kill -9)
    trainer = make_trainer(tmp_path, 60)
    assert trainer.step == 30
    assert trainer.run()["step"] == 60
    assert "Resuming at step 40 of the checkpoint; the episode files hold 30 steps" in capsys.readouterr().out
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines() if "train_return" in line]
    assert steps == sorted(steps)
