import pathlib
import pickle
import random

import numpy as np
import pytest
import torch

from torch_dreamer.errors import UserError
from torch_dreamer.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def draw():
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [np.random.randn()],
        torch.rand(3).tolist() + torch.randn(2).tolist(),
    )


def make_payload():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ELU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-5)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        optimizer.step()
    return model, optimizer, {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "counters": {"step": 12345, "updates": 678, "episodes": 9},
        "config": {"task": "atari_pong", "betas": (0.9, 0.999)},
        "rng": rng_state(),
    }


def assert_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_equal(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_equal(x, y)
    else:
        assert a == b


def test_round_trip_and_no_tmp_left(tmp_path):
    model, optimizer, payload = make_payload()
    path = tmp_path / "sub" / "checkpoint.pt"
    save_checkpoint(path, payload)
    save_checkpoint(path, payload)  # overwriting works too
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]
    loaded = load_checkpoint(path)
    assert_equal(payload, loaded)
    # The loaded states restore into fresh objects.
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ELU(), torch.nn.Linear(8, 2))
    fresh.load_state_dict(loaded["model"])
    fresh_opt = torch.optim.Adam(fresh.parameters())
    fresh_opt.load_state_dict(loaded["optimizer"])
    assert fresh_opt.param_groups[0]["eps"] == 1e-5
    assert_equal(fresh_opt.state_dict()["state"], optimizer.state_dict()["state"])


def test_rng_streams_restore_exactly(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn()  # leave cached gaussians in both generators
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = draw()
    draw()  # move every stream further on
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert draw() == expected


def test_pickled_objects_are_refused(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    for index, dump in enumerate([lambda obj, f: torch.save(obj, f), lambda obj, f: pickle.dump(obj, f)]):
        path = tmp_path / f"evil{index}.pt"
        with open(path, "wb") as file:
            dump({"x": Evil()}, file)
        with pytest.raises(UserError, match="evil") as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 10, 0.5])
def test_corrupt_or_partial_file_is_user_error(tmp_path, keep):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"x": torch.arange(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(UserError, match="checkpoint.pt") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "delete" in str(info.value)


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_unloadable_payload_is_rejected_before_writing(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})
    for bad in [{"array": np.zeros(3)}, {"scalar": np.float64(1.0)}, {"nested": [{"f": lambda: 0}]}]:
        with pytest.raises(TypeError):
            save_checkpoint(path, bad)
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_failed_write_keeps_old_file_and_removes_tmp(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def broken_save(obj, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_restores(tmp_path):
    torch.cuda.manual_seed_all(5)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = torch.rand(4, device="cuda").tolist()
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert torch.rand(4, device="cuda").tolist() == expected
