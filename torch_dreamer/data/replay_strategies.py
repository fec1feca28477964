"""Replay strategies for continual learning: which episodes stay (eviction) and which are replayed (sampling).

Evictions plug into `EpisodeStore` (it calls `added` for every new sampleable episode, then `select`
while it is over capacity, `removed` for each dropped key; state goes into the checkpoint):
- `FifoEviction` (the official): the oldest leaves.
- `ReservoirEviction`: the textbook algorithm over episodes. The n-th episode is kept with probability
  k/n (k = episodes held before it arrived), replacing a uniformly random one; otherwise the incoming
  episode itself is dropped. Every episode seen so far is held with the same probability, so every task
  keeps a share proportional to its episodes, whenever it was trained.
- `RandomReplacementEviction`: what Continual-Dreamer's `--reservoir_sampling` really did: the incoming
  episode always stays and a random one leaves, so old data decays about exponentially.
- `CoverageEviction`: keeps the most diverse episodes: each episode gets a small embedding (below) and the
  priority median distance to up to 1000 stored embeddings; the least distant (most redundant) leaves,
  the incoming one included. Embedding: every image frame average-pooled to 8 x 8 grayscale, then the
  mean and standard deviation over time (128 float32 = 512 bytes; vectors use their first 64 dims the
  same way). Continual-Dreamer's untrained ConvLSTM cell state took 1 MiB per episode.

Samplers (over the episodes held, `dataset.length` chunks as the official, all implement `Sampler`):
- `WeightedChunkSampler(weights=...)`: episodes drawn by a weight function of the store;
  `reward_weights` is exp(R - max R) over undiscounted returns (Continual-Dreamer's reward sampling);
- `recent_past`: with probability p the episode index is floor(triangular(0, N, N)) over insertion order
  (a ramp toward the newest), otherwise uniform: Continual-Dreamer's 50:50 at p = 0.5.
- `UncertaintyChunkSampler`: episodes drawn with probability proportional to the world model's surprise
  on them, the mean KL(posterior || prior) of the last chunk trained from each (reported back by the
  learner, `update_priorities`); an episode not trained on yet gets the highest priority held, so every
  new episode is replayed soon, as in prioritised experience replay. Continual-Dreamer's version of this
  never ran (`np.random.choice` over scores, `tf.Tensor(preds)`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .samplers import ChunkSampler, EmptyReplayError
from .store import FifoEviction

EMBED_SIDE = 8
MAX_COMPARISONS = 1000


class _Random(FifoEviction):
    def __init__(self, seed: int | None = None):
        self.rng = np.random.default_rng(seed)
        self.seen = 0

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.rng.bit_generator.state = state["rng"]
            self.seen = int(state["seen"])


class ReservoirEviction(_Random):
    """Textbook reservoir sampling over episodes (the incoming one may be the one dropped)."""

    def __init__(self, seed: int | None = None):
        super().__init__(seed)
        self._incoming: str | None = None
        self._decided = False

    def added(self, key: str, episode: dict) -> None:
        self.seen += 1
        self._incoming, self._decided = key, False

    def select(self, keys: Sequence[str]) -> str:
        held_before = len(keys) - 1
        if not self._decided and self._incoming in keys:
            self._decided = True
            if self.rng.random() >= held_before / max(self.seen, 1):
                return self._incoming  # rejected: the reservoir keeps what it had
        old = [k for k in keys if k != self._incoming]
        return old[int(self.rng.integers(len(old)))]


class RandomReplacementEviction(_Random):
    """Continual-Dreamer's `--reservoir_sampling` as coded: a random old episode leaves, the new one stays."""

    def added(self, key: str, episode: dict) -> None:
        self.seen += 1
        self._incoming = key

    def select(self, keys: Sequence[str]) -> str:
        old = [k for k in keys if k != getattr(self, "_incoming", None)] or list(keys)
        return old[int(self.rng.integers(len(old)))]


def embed_episode(episode: dict) -> np.ndarray:
    """(128,) float32: mean and std over time of 8 x 8 grayscale frames (or of the first 64 vector dims)."""
    image = next((v for k, v in episode.items() if v.ndim == 4 and v.dtype == np.uint8), None)
    if image is not None:
        frames = image.astype(np.float32).mean(-1) / 255.0                     # (T, H, W)
        T, H, W = frames.shape
        h, w = H // EMBED_SIDE * EMBED_SIDE or H, W // EMBED_SIDE * EMBED_SIDE or W
        pooled = frames[:, :h, :w].reshape(T, EMBED_SIDE, max(h // EMBED_SIDE, 1), EMBED_SIDE,
                                           max(w // EMBED_SIDE, 1)).mean((2, 4)).reshape(T, -1)
    else:
        vectors = [v.reshape(len(v), -1).astype(np.float32) for k, v in episode.items()
                   if k not in ("action", "reward", "discount", "task") and not k.startswith("is_")]
        flat = np.concatenate(vectors, 1) if vectors else np.zeros((len(episode["action"]), 1), np.float32)
        pooled = np.zeros((len(flat), EMBED_SIDE * EMBED_SIDE), np.float32)
        pooled[:, : min(flat.shape[1], pooled.shape[1])] = flat[:, : pooled.shape[1]]
    return np.concatenate([pooled.mean(0), pooled.std(0)]).astype(np.float32)


class CoverageEviction(_Random):
    """Evict the most redundant episode: the lowest median distance to (up to 1000) stored embeddings."""

    def __init__(self, seed: int | None = None, comparisons: int = MAX_COMPARISONS):
        super().__init__(seed)
        self.comparisons = comparisons
        self.embeddings: dict[str, np.ndarray] = {}
        self.priority: dict[str, float] = {}

    def added(self, key: str, episode: dict) -> None:
        self.seen += 1
        embedding = embed_episode(episode)
        others = list(self.embeddings.values())
        if len(others) > self.comparisons:
            others = [others[i] for i in self.rng.choice(len(others), self.comparisons, replace=False)]
        distances = [float(np.linalg.norm(embedding - other)) for other in others]
        self.embeddings[key] = embedding
        # No neighbour yet: 0, as the original's first episode (compared with itself) got.
        self.priority[key] = float(np.median(distances)) if distances else 0.0

    def select(self, keys: Sequence[str]) -> str:
        return min(keys, key=lambda k: self.priority.get(k, float("inf")))

    def removed(self, key: str) -> None:
        self.embeddings.pop(key, None)
        self.priority.pop(key, None)

    def state_dict(self) -> dict:
        # Embeddings are recomputed from the episodes on resume; priorities are kept as they were.
        # Keys are file paths; priorities are stored by file name so a moved logdir still resumes.
        return {**super().state_dict(), "priority": {k.rsplit("/", 1)[-1]: v for k, v in self.priority.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._saved_priority = dict(state.get("priority", {}))

    def restored(self, key: str, episode: dict) -> None:
        self.embeddings[key] = embed_episode(episode)  # recomputed from the episode
        saved = getattr(self, "_saved_priority", {})
        self.priority[key] = saved.get(key.rsplit("/", 1)[-1], self.priority.get(key, float("inf")))


EVICTIONS = {"fifo": FifoEviction, "reservoir": ReservoirEviction, "random_replacement": RandomReplacementEviction,
             "coverage": CoverageEviction}


def make_eviction(name: str, seed: int | None = None):
    if name not in EVICTIONS:
        raise ValueError(f"replay.eviction must be one of {', '.join(EVICTIONS)}, not '{name}'")
    return EVICTIONS[name]() if name == "fifo" else EVICTIONS[name](seed)


# ----------------------------------------------------------------------------------------------- sampling


def reward_weights(store, keys: Sequence[str], cache: dict) -> np.ndarray:
    """exp(R - max R) over each held episode's undiscounted return (cached per key)."""
    returns = []
    for key in keys:
        if key not in cache:
            cache[key] = float(store.get(key)["reward"].astype(np.float64).sum())
        returns.append(cache[key])
    returns = np.asarray(returns)
    return np.exp(returns - returns.max())


def draw_index(cumulative: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn from cumulative probabilities (the last index when rounding leaves the total below 1)."""
    return min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(cumulative) - 1)


class WeightedChunkSampler(ChunkSampler):
    """Official chunks from episodes drawn by reward weight, or by the 50:50 recent/past ramp.

    weights: None (uniform) or "reward"; recent_past: probability of drawing from the ramp toward the newest.
    Too-short episodes are redrawn (rejection), as `ChunkSampler` does; the reward distribution is
    recomputed only when the store's key snapshot changes (once per added episode).
    """

    def __init__(self, store, length: int, prioritize_ends: bool = False, seed: int | None = None,
                 weights: str | None = None, recent_past: float = 0.0):
        super().__init__(store, length, prioritize_ends, seed)
        if weights not in (None, "reward"):
            raise ValueError(f"weights must be None or 'reward', not {weights!r}")
        self.weights, self.recent_past = weights, float(recent_past)
        self._returns: dict[str, float] = {}
        self._cached: tuple = (None, None)  # (key snapshot, cumulative probabilities)
        self._key = None  # the key of the episode drawn last

    def _pick_episode(self):
        for _ in range(64):
            keys = self.store.keys()
            if not keys:
                break
            key = keys[self._index(keys)]
            try:
                episode = self.store.get(key)
            except KeyError:  # evicted meanwhile: draw again
                continue
            if len(episode["action"]) >= self.length:
                self._key = key
                return episode
        return self._pick_fallback()

    def _pick_fallback(self):
        """When rejection keeps drawing short episodes: uniform over the long-enough ones."""
        return self._pick_filtered()

    def _index(self, keys: Sequence[str]) -> int:
        count = len(keys)
        if self.weights == "reward":
            if self._cached[0] is not keys:
                probs = reward_weights(self.store, keys, self._returns)
                self._cached = (keys, np.cumsum(probs / probs.sum()))
            return draw_index(self._cached[1], self.rng)
        if self.recent_past > 0 and self.rng.random() < self.recent_past:
            return min(int(np.floor(self.rng.triangular(0, count, count))), count - 1)
        return int(self.rng.integers(count))


class UncertaintyChunkSampler(WeightedChunkSampler):
    """Chunks from episodes drawn with probability proportional to `priority ** alpha` (see the module doc).

    Every chunk carries `replay_id` (T,) int64, the same id on every row, naming its episode; the learner
    stacks it into the batch and reports `update_priorities(ids (B,), kl (B,))` after the update. Reports
    are queued and applied by the sampling thread, so the training thread never waits for the device.
    """

    def __init__(self, store, length: int, prioritize_ends: bool = False, seed: int | None = None,
                 alpha: float = 1.0, floor: float = 1e-3):
        super().__init__(store, length, prioritize_ends, seed)
        self.alpha, self.floor = float(alpha), float(floor)
        self.priority: dict[str, float] = {}  # episode name -> last reported surprise
        self._ids: dict[str, int] = {}  # episode key -> replay_id, and back
        self._keys: list[str] = []
        self._pending: list = []  # (ids, scores) reports not applied yet

    def update_priorities(self, ids, scores) -> None:
        """Queues the surprise of the sequences of one batch: ids (B,), scores (B,) (tensors or arrays)."""
        self._pending.append((ids, scores))

    def _apply_pending(self) -> bool:
        pending, self._pending = self._pending, []
        for ids, scores in pending:
            ids, scores = np.asarray(_to_numpy(ids)).reshape(-1), np.asarray(_to_numpy(scores)).reshape(-1)
            for index, score in zip(ids.tolist(), scores.tolist()):
                if np.isfinite(score):
                    self.priority[_name(self._keys[index])] = max(float(score), 0.0)
        return bool(pending)

    def _index(self, keys: Sequence[str]) -> int:
        if self._apply_pending() or self._cached[0] is not keys:
            probs = self.probabilities(keys)
            self._cached = (keys, np.cumsum(probs))
        return draw_index(self._cached[1], self.rng)

    def probabilities(self, keys: Sequence[str]) -> np.ndarray:
        """Sampling probability of each key: (priority + floor) ** alpha, normalised; unscored keys get
        the highest priority held (1.0 before any report)."""
        known = [self.priority.get(_name(key)) for key in keys]
        top = max((value for value in known if value is not None), default=1.0)
        values = np.array([top if value is None else value for value in known], dtype=np.float64)
        weights = (values + self.floor) ** self.alpha
        return weights / weights.sum()

    def _pick_fallback(self):
        """By priority among the episodes long enough for a chunk (when rejection keeps drawing short ones)."""
        while True:
            keys = [key for key in self.store.keys() if _length(self.store, key) + 1 >= self.length]
            if not keys:
                raise EmptyReplayError(f"no stored episode has {self.length} steps to cut a chunk from; prefill "
                                       "the replay first or set replay.minlen >= dataset.length")
            key = keys[draw_index(np.cumsum(self.probabilities(keys)), self.rng)]
            try:
                episode = self.store.get(key)
            except KeyError:  # evicted meanwhile: draw again
                continue
            self._key = key
            return episode

    def _sequence(self):
        sequence = super()._sequence()
        key = self._key
        if key not in self._ids:
            self._ids[key] = len(self._keys)
            self._keys.append(key)
        sequence["replay_id"] = np.full(len(sequence["action"]), self._ids[key], np.int64)
        return sequence

    def state_dict(self) -> dict:
        self._apply_pending()
        return {"priority": dict(self.priority)}  # by file name, so a moved logdir still resumes

    def load_state_dict(self, state: dict) -> None:
        self.priority = {str(k): float(v) for k, v in (state or {}).get("priority", {}).items()}


def _length(store, key: str) -> int:
    try:
        return store.length(key)
    except KeyError:
        return -1


def _name(key: str) -> str:
    return str(key).rsplit("/", 1)[-1]


def _to_numpy(value):
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value
