"""BatchLoader: time-major training batches ``dict[str, torch.Tensor (T, B, ...)]`` from a Sampler.

A daemon thread samples ``batch`` chunks from RAM, stacks them into ``(T, B, ...)`` arrays written
straight into (pinned, for CUDA) torch tensors, and keeps up to ``prefetch`` batches queued. ``next()``
only moves a ready batch to the device with a non-blocking copy, so training never waits on disk.
``prefetch=0`` samples synchronously in the caller's thread (same batches, no thread) for tests.

Dtypes: floats become float32; uint8 images, bools and integers keep their dtype.
"""

from __future__ import annotations

import queue
import threading
from typing import Sequence

import numpy as np
import torch

from .samplers import Chunk, Sampler

Batch = dict[str, torch.Tensor]

_POLL_S = 0.1  # how often blocked queue calls re-check the stop flag / thread liveness


def stack_time_major(
    chunks: Sequence[Chunk], pin_memory: bool = False, keys: Sequence[str] | None = None
) -> Batch:
    """Stack B chunks of ``(T, ...)`` arrays into CPU tensors ``(T, B, ...)``, one copy per key.

    Each array is written once, directly into the tensor's memory (pinned when ``pin_memory``), so
    no intermediate numpy batch exists. Floats are cast to float32 on the way.

    keys: the keys to stack. None stacks the keys every chunk has (in the first chunk's order):
    episodes from different sources carry different extras (official files ``discount``, our
    MiniGrid ones ``direction``) and one odd key must not crash training. Given keys must be in
    every chunk; a missing one raises ValueError naming it.
    """
    if keys is None:
        common = set(chunks[0]).intersection(*chunks[1:])
        keys = [key for key in chunks[0] if key in common]
    else:
        for key in keys:
            if any(key not in chunk for chunk in chunks):
                raise ValueError(f"key '{key}' is missing from an episode in this batch (chunk keys differ)")
    batch: Batch = {}
    for key in keys:
        arrays = [chunk[key] for chunk in chunks]
        first = arrays[0]
        dtype = np.float32 if np.issubdtype(first.dtype, np.floating) else first.dtype
        shape = (first.shape[0], len(arrays), *first.shape[1:])
        tensor = torch.empty(shape, dtype=_torch_dtype(dtype), pin_memory=pin_memory)
        try:
            np.stack(arrays, axis=1, out=tensor.numpy(), casting="same_kind")
        except ValueError as exc:  # name the key: mixed image sizes are a config mistake worth finding fast
            shapes = sorted({array.shape for array in arrays})
            raise ValueError(f"cannot stack chunks of key '{key}' with shapes {shapes}: {exc}") from exc
        batch[key] = tensor
    return batch


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Copy a CPU batch to ``device``; non-blocking, which overlaps with compute when the source is pinned."""
    if device.type == "cpu":
        return batch
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


class _Failure:
    """Queue item carrying an exception raised in the loader thread to ``next()``."""

    def __init__(self, error: BaseException):
        self.error = error


class BatchLoader:
    """Iterator of batches ``dict[str, Tensor (T, B, ...)]`` on ``device``.

    Args:
        sampler: source of ``(T, ...)`` chunks; called ``batch`` times per batch from one thread.
        batch: B, chunks per batch.
        device: where ``next()`` puts the tensors; CUDA devices get pinned staging memory.
        prefetch: batches kept ready by the background thread; 0 samples synchronously in ``next()``.
        seed: reseeds the sampler, so the batch sequence depends only on the data and this seed
            (also with prefetching, since one thread samples in order); None keeps the sampler's stream.
        keys: keys to put in each batch (see `stack_time_major`); None takes those all chunks share.

    Errors raised while sampling in the thread are re-raised by ``next()``. Use as a context manager or
    call ``close()``; the thread is a daemon, so a forgotten loader never keeps the process alive.
    """

    def __init__(
        self,
        sampler: Sampler,
        batch: int,
        device: str | torch.device = "cpu",
        prefetch: int = 4,
        seed: int | None = 0,
        keys: Sequence[str] | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.sampler = sampler
        self.batch = int(batch)
        self.device = torch.device(device)
        self.prefetch = int(prefetch)
        self.keys = tuple(keys) if keys is not None else None
        self._pin = self.device.type == "cuda"
        self._closed = False
        self._failure: _Failure | None = None
        if seed is not None:
            sampler.reseed(seed)
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(self.prefetch, 1))
        self._thread: threading.Thread | None = None
        if self.prefetch > 0:
            self._thread = threading.Thread(target=self._work, name="BatchLoader", daemon=True)
            self._thread.start()

    def _make_batch(self) -> Batch:
        """One CPU batch ``(T, B, ...)``, pinned when the target device is CUDA."""
        chunks = [self.sampler.sample() for _ in range(self.batch)]
        return stack_time_major(chunks, pin_memory=self._pin, keys=self.keys)

    def _work(self) -> None:
        """Thread body: fill the queue until stopped; an exception ends the thread and is queued."""
        try:
            while not self._stop.is_set():
                self._put(self._make_batch())
        except BaseException as error:  # noqa: BLE001 - every failure must reach next()
            self._put(_Failure(error))

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> Batch:
        """The next batch on ``self.device``; raises the loader thread's exception if it failed."""
        if self._closed:
            raise RuntimeError("BatchLoader is closed")
        if self._failure is not None:
            raise self._failure.error
        if self._thread is None:
            return to_device(self._make_batch(), self.device)
        item = self._get()
        if isinstance(item, _Failure):
            self._failure = item
            raise item.error
        return to_device(item, self.device)

    def _get(self) -> object:
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("BatchLoader thread stopped without a batch or an error") from None

    def close(self) -> None:
        """Stop and join the thread; idempotent. Queued batches are dropped."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        while not self._queue.empty():
            self._queue.get_nowait()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
