"""BatchLoader: (T, B, ...) shapes and dtypes, determinism with and without prefetch, thread errors, close."""

import threading

import numpy as np
import pytest
import torch

from torch_dreamer.data import BatchLoader, ChunkSampler, EmptyReplayError, EpisodeStore, stack_time_major


@pytest.fixture
def store(make_episode):
    store = EpisodeStore()
    for ident, length in enumerate((30, 45, 12, 60)):
        store.add(make_episode(length, ident=ident, image=(16, 16, 3), actions=6))
    return store


def test_shapes_dtypes_time_major(store):
    with BatchLoader(ChunkSampler(store, 10, True), batch=4, prefetch=2) as loader:
        batch = next(loader)
    assert batch["image"].shape == (10, 4, 16, 16, 3) and batch["image"].dtype == torch.uint8
    assert batch["action"].shape == (10, 4, 6) and batch["action"].dtype == torch.float32
    assert batch["reward"].shape == (10, 4) and batch["reward"].dtype == torch.float32
    for key in ("is_first", "is_last", "is_terminal"):
        assert batch[key].shape == (10, 4) and batch[key].dtype == torch.bool
    assert batch["is_first"][0].all()
    assert (batch["marker"].diff(dim=0) == 1).all()  # each column is one contiguous chunk
    assert all(value.device.type == "cpu" for value in batch.values())


def test_stack_casts_floats_to_float32():
    chunks = [{"x": np.full((3, 2), b, np.float64), "m": np.zeros(3, np.uint8)} for b in range(5)]
    batch = stack_time_major(chunks)
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (3, 5, 2)
    assert batch["m"].dtype == torch.uint8
    assert torch.equal(batch["x"][:, 2], torch.full((3, 2), 2.0))


def _markers(loader, n):
    return [next(loader)["marker"][0].tolist() for _ in range(n)]


def test_deterministic_for_a_seed_with_and_without_prefetch(store):
    sync = BatchLoader(ChunkSampler(store, 8, True, seed=99), batch=3, prefetch=0, seed=5)
    with BatchLoader(ChunkSampler(store, 8, True), batch=3, prefetch=4, seed=5) as threaded:
        assert _markers(sync, 20) == _markers(threaded, 20)
    other = BatchLoader(ChunkSampler(store, 8, True), batch=3, prefetch=0, seed=6)
    assert _markers(BatchLoader(ChunkSampler(store, 8, True), 3, prefetch=0, seed=5), 20) != _markers(other, 20)


class _Failing:
    """Sampler that fails on its n-th chunk."""

    length = 4

    def __init__(self, fail_at):
        self.calls, self.fail_at = 0, fail_at

    def reseed(self, seed):
        pass

    def sample(self):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ValueError("sampler exploded")
        return {"x": np.zeros((4, 2), np.float32), "is_first": np.ones(4, bool)}


@pytest.mark.parametrize("prefetch", [0, 3])
def test_sampler_exceptions_surface_in_next(prefetch):
    with BatchLoader(_Failing(fail_at=5), batch=2, prefetch=prefetch) as loader:
        next(loader), next(loader)  # chunks 1-4
        with pytest.raises(ValueError, match="sampler exploded"):
            next(loader)
        if prefetch:
            with pytest.raises(ValueError, match="sampler exploded"):
                next(loader)  # stays failed


def test_empty_replay_surfaces(make_episode):
    with BatchLoader(ChunkSampler(EpisodeStore(), 5), batch=2, prefetch=2) as loader:
        with pytest.raises(EmptyReplayError):
            next(loader)


def test_close_joins_daemon_thread(store):
    loader = BatchLoader(ChunkSampler(store, 5), batch=2, prefetch=2)
    thread = loader._thread
    assert thread.daemon and thread.is_alive()
    next(loader)
    loader.close()
    assert not thread.is_alive()
    loader.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)
    assert all(t.name != "BatchLoader" for t in threading.enumerate())


def test_iterates_and_sees_new_episodes(store, make_episode):
    """Sampling is live: episodes added after the loader starts show up in later batches."""
    loader = BatchLoader(ChunkSampler(store, 5), batch=8, prefetch=0)
    store.add(make_episode(20, ident=7, image=(16, 16, 3), actions=6))
    seen = set()
    for _, batch in zip(range(20), loader):
        seen.update((batch["marker"][0] // 100_000).tolist())
    assert 7 in seen


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_are_on_device(store):
    with BatchLoader(ChunkSampler(store, 5), batch=2, device="cuda", prefetch=2) as loader:
        batch = next(loader)
    assert all(value.is_cuda for value in batch.values())
    assert batch["image"].dtype == torch.uint8


def test_mismatched_chunks_name_the_key():
    chunks = [{"image": np.zeros((3, 4, 4, 3), np.uint8)}, {"image": np.zeros((3, 8, 8, 3), np.uint8)}]
    with pytest.raises(ValueError, match="'image'"):
        stack_time_major(chunks)


def test_mixed_keys_stack_the_common_ones():
    """Official files carry `discount`, our MiniGrid ones `direction`: only shared keys are batched."""
    official = {"image": np.zeros((3, 4, 4, 3), np.uint8), "discount": np.ones(3, np.float32),
                "reward": np.zeros(3, np.float32)}
    ours = {"reward": np.ones(3, np.float32), "direction": np.zeros(3, np.int32),
            "image": np.ones((3, 4, 4, 3), np.uint8)}
    batch = stack_time_major([official, ours])
    assert list(batch) == ["image", "reward"]  # the first chunk's order
    assert batch["image"].shape == (3, 2, 4, 4, 3) and torch.equal(batch["reward"][:, 1], torch.ones(3))
    assert list(stack_time_major([official, ours], keys=["reward"])) == ["reward"]
    with pytest.raises(ValueError, match="'discount'.*missing from an episode"):
        stack_time_major([official, ours], keys=["image", "discount"])


def test_loader_passes_keys_through(store):
    with BatchLoader(ChunkSampler(store, 5), batch=2, prefetch=0, keys=["image", "action"]) as loader:
        assert sorted(next(loader)) == ["action", "image"]
