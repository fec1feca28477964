"""Replay strategies: reservoir keeps every task's share, random replacement reproduces Continual-Dreamer's
skew, FIFO keeps only the last task; 50:50, reward and coverage behave as their formulas say."""

import numpy as np
import pytest

from torch_dreamer.data import EpisodeStore
from torch_dreamer.data.replay_strategies import (
    CoverageEviction,
    FifoEviction,
    RandomReplacementEviction,
    ReservoirEviction,
    UncertaintyChunkSampler,
    WeightedChunkSampler,
    embed_episode,
    make_eviction,
)


def episode(task, length=10, value=0.0, reward=0.0):
    rows = length + 1
    rewards = np.full(rows, reward / length, np.float32)
    rewards[0] = 0.0  # the reset step has no reward
    return {"vector": np.full((rows, 3), value, np.float32), "action": np.zeros((rows, 2), np.float32),
            "reward": rewards, "task": np.full(rows, task, np.int32)}


def task_shares(eviction, tasks=4, per_task=100, length=10):
    """Shares of each task's episodes in a store of one task's capacity after the whole sequence."""
    store = EpisodeStore(None, capacity=per_task * length, minlen=1, eviction=eviction)
    for task in range(tasks):
        for _ in range(per_task):
            store.add(episode(task, length))
    held = [int(store.get(k)["task"][0]) for k in store.keys()]
    return np.bincount(held, minlength=tasks) / len(held)


def test_reservoir_keeps_every_task_at_an_equal_share():
    shares = np.mean([task_shares(ReservoirEviction(seed)) for seed in range(40)], axis=0)
    assert np.allclose(shares, 0.25, atol=0.03), shares


def test_random_replacement_reproduces_the_original_skew():
    shares = np.mean([task_shares(RandomReplacementEviction(seed)) for seed in range(20)], axis=0)
    # Reference §5 (lengths U[20, 100]): .05 / .09 / .23 / .63: old tasks decay, the last dominates.
    assert shares[0] < 0.1 and shares[1] < 0.15 and 0.15 < shares[2] < 0.35 and shares[3] > 0.5, shares
    assert np.all(np.diff(shares) > 0)


def test_fifo_keeps_only_the_last_task():
    assert task_shares(FifoEviction()).tolist() == [0, 0, 0, 1]


def test_reservoir_can_reject_the_incoming_episode():
    store = EpisodeStore(None, capacity=10, minlen=1, eviction=ReservoirEviction(0))
    store.add(episode(0))
    kept_new = 0
    for i in range(200):
        store.add(episode(1, value=i))
        kept_new += any(store.get(k)["vector"][0, 0] == i and store.get(k)["task"][0] == 1 for k in store.keys())
    assert 0 < kept_new < 200  # sometimes the new one is dropped, as the textbook algorithm does


def test_recent_past_draws_the_configured_fraction_from_the_ramp():
    store = EpisodeStore(None, minlen=1)
    for i in range(100):
        store.add({**episode(0, length=10), "marker": np.full(11, i, np.int32)})
    for p, expected in ((0.0, 0.5), (0.5, 0.5 * 0.75 + 0.5 * 0.5), (1.0, 0.75)):
        sampler = WeightedChunkSampler(store, 5, seed=1, recent_past=p)
        newest_half = np.mean([sampler.sample()["marker"][0] >= 50 for _ in range(4000)])
        assert newest_half == pytest.approx(expected, abs=0.03), (p, newest_half)


def test_reward_weights_follow_exp_of_return_minus_max():
    store = EpisodeStore(None, minlen=1)
    returns = [0.0, 1.0, 2.0]
    for i, r in enumerate(returns):
        store.add({**episode(0, reward=r), "marker": np.full(11, i, np.int32)})
    sampler = WeightedChunkSampler(store, 5, seed=2, weights="reward")
    counts = np.bincount([sampler.sample()["marker"][0] for _ in range(6000)], minlength=3) / 6000
    expected = np.exp(np.array(returns) - 2.0)
    assert np.allclose(counts, expected / expected.sum(), atol=0.02), counts


def diverse_held(eviction, copies_first: bool) -> int:
    """Diverse episodes held out of 20 after 20 near-copies of one episode and 20 different ones."""
    store = EpisodeStore(None, capacity=20 * 10, minlen=1, eviction=eviction)
    rng = np.random.default_rng(0)
    for i in range(40):
        copy = (i < 20) == copies_first
        vector = rng.normal(size=(11, 3)) * (0.01 if copy else 3)
        store.add({**episode(0 if copy else 1), "vector": vector.astype(np.float32)})
    return [int(store.get(k)["task"][0]) for k in store.keys()].count(1)


def test_coverage_keeps_the_more_diverse_episodes():
    assert diverse_held(CoverageEviction(0), copies_first=True) >= 17
    # Diverse ones first: FIFO keeps only the copies; coverage keeps about half diverse (priorities are
    # computed once, on arrival, as in the original).
    assert diverse_held(FifoEviction(), copies_first=False) == 0
    assert diverse_held(CoverageEviction(0), copies_first=False) >= 8


def test_coverage_embedding_is_small():
    image_episode = {"image": np.random.default_rng(0).integers(0, 255, (101, 64, 64, 3), np.uint8),
                     "action": np.zeros((101, 2), np.float32)}
    assert embed_episode(image_episode).nbytes <= 4096


def test_eviction_state_round_trips():
    a = ReservoirEviction(3)
    for i in range(5):
        a.added(f"k{i}", {})
    b = make_eviction("reservoir", 99)
    b.load_state_dict(a.state_dict())
    assert b.seen == 5 and b.rng.random() == a.rng.random()


def test_membership_and_eviction_state_survive_a_resume(tmp_path):
    store = EpisodeStore(tmp_path, capacity=100, minlen=1, eviction=ReservoirEviction(0))
    for i in range(60):
        store.add(episode(i // 20, value=i))
    state = store.state_dict()
    names = lambda s: [k.rsplit("/", 1)[-1] for k in s.keys()]
    assert state["members"] == names(store) and state["eviction"]["seen"] == 60
    # A new store over the folder holds the newest files (FIFO) until the membership is restored.
    resumed = EpisodeStore(tmp_path, capacity=100, minlen=1, eviction=ReservoirEviction(123))
    assert names(resumed) != state["members"]
    resumed.load_state_dict(state)
    assert names(resumed) == state["members"] and resumed.loaded_steps == store.loaded_steps
    # Both continue identically: same eviction stream, same membership after more episodes.
    for i in range(60, 80):
        store.add(episode(3, value=i))
        resumed.add(episode(3, value=i))
    held = lambda s: sorted(float(s.get(k)["vector"][0, 0]) for k in s.keys())
    assert held(resumed) == held(store)


def test_fifo_needs_no_membership_state(tmp_path):
    store = EpisodeStore(tmp_path, capacity=30, minlen=1)
    store.add(episode(0))
    assert store.state_dict() == {}


def test_uncertainty_sampling_draws_in_proportion_to_reported_surprise():
    store = EpisodeStore(None, minlen=1)
    for i in range(3):
        store.add({**episode(0), "marker": np.full(11, i, np.int32)})
    sampler = UncertaintyChunkSampler(store, 5, seed=3, floor=0.0)
    # Before any report every episode has the same (top) priority: uniform.
    first = [sampler.sample() for _ in range(300)]
    assert set(np.unique([c["marker"][0] for c in first])) == {0, 1, 2}
    # Each chunk names its episode; report surprise 3, 1, 0 for markers 0, 1, 2.
    surprise = {0: 3.0, 1: 1.0, 2: 0.0}
    ids = {int(c["marker"][0]): int(c["replay_id"][0]) for c in first}
    assert all((c["replay_id"] == c["replay_id"][0]).all() for c in first)  # one id per chunk
    sampler.update_priorities(np.array(list(ids.values())), np.array([surprise[m] for m in ids]))
    counts = np.bincount([sampler.sample()["marker"][0] for _ in range(6000)], minlength=3) / 6000
    assert np.allclose(counts, [0.75, 0.25, 0.0], atol=0.02), counts


def test_uncertainty_sampling_gives_new_episodes_the_top_priority_and_round_trips():
    store = EpisodeStore(None, minlen=1)
    store.add(episode(0))
    sampler = UncertaintyChunkSampler(store, 5, seed=4)
    chunk = sampler.sample()
    sampler.update_priorities(chunk["replay_id"][:1], np.array([2.0]))
    store.add(episode(1))
    probs = sampler.probabilities(store.keys())
    assert np.allclose(probs, [0.5, 0.5])  # the unscored newcomer gets the highest priority held
    restored = UncertaintyChunkSampler(store, 5, seed=4)
    restored.load_state_dict(sampler.state_dict())
    assert np.allclose(restored.probabilities(store.keys()), probs)
