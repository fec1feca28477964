"""Gradient averaging across data-parallel learners, inside each optimiser's step.

DreamerV2 steps several optimisers per update (world model, actor, critic, exploration, probes) and its
imagination calls submodules outside any single forward, so DDP's module wrapper does not fit. Instead
every `Optimizer` owns a `GradSync` over its own parameters and calls it right after its backward: the
gradients, averaged over all ranks, then go through unscaling, clipping and the step exactly as one
process's gradients of the global batch would (every loss is a mean over equally sized rank shares).

Buckets: the parameters are split into flat buffers of about `BUCKET_BYTES` (DDP's default size), in
reverse registration order, roughly the order backward produces their gradients. A gradient hook
(`register_post_accumulate_grad_hook`) copies each gradient into its bucket as soon as backward has
accumulated it, and launches the bucket's asynchronous all-reduce once the bucket is full, so
communication overlaps the rest of the backward pass. Buckets always launch in index order (a full
bucket waits for the ones before it): collectives must be issued in the same order on every rank even
when one rank's graph leaves a parameter without a gradient. The call after backward launches what is
left, waits, and writes the averages back into `.grad`.

Each bucket also carries one presence flag per parameter, summed with the gradients: a parameter gets
a gradient iff some rank produced one (a rank without one contributes zeros, as that share of the batch
would in one process), which keeps Adam's skip-on-None behaviour identical to one process.
"""

from __future__ import annotations

import weakref

import torch
import torch.distributed as dist

BUCKET_BYTES = 25 * 2**20


def is_data_parallel() -> bool:
    """True inside a process group of more than one rank (torchrun, `dreamer train --nproc N`)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def for_params(params, bucket_bytes: int = BUCKET_BYTES):
    """The gradient sync of one optimiser: a `GradSync` across ranks, or a no-op in a single process."""
    return GradSync(params, bucket_bytes) if is_data_parallel() else NoSync()


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` averaged over all ranks (itself in one process). For statistics that must stay equal on
    every rank, such as the running magnitudes of the reward normalisers."""
    if not is_data_parallel():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


class NoSync:
    """One process: gradients stay as backward left them."""

    def __call__(self) -> None:
        return None


# Which GradSync hooks a parameter, by id with a weak reference to tell a reused id from the same
# parameter: a parameter shared by two optimisers would fire both optimisers' hooks in either backward
# and launch a collective out of order, so such syncs give up overlapping.
_HOOK_OWNERS: dict[int, tuple] = {}


def _hook_owner(param: torch.Tensor):
    ref, owner = _HOOK_OWNERS.get(id(param), (None, None))
    return owner() if ref is not None and ref() is param else None


class _Bucket:
    """Parameters whose gradients share one flat buffer (allocated lazily: the optimiser is built before
    the model moves to its device), plus one presence flag per parameter at the end."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(params))]
        self.total = sum(self.sizes)
        self.flat: torch.Tensor | None = None
        self.copied = [False] * len(params)  # gradients already in the buffer this step
        self.work = None  # the in-flight all-reduce

    def buffer(self) -> torch.Tensor:
        first = self.params[0]
        if self.flat is None or self.flat.device != first.device or self.flat.dtype != first.dtype:
            self.flat = torch.empty(self.total + len(self.params), dtype=first.dtype, device=first.device)
        return self.flat

    def copy_in(self, index: int) -> None:
        grad, offset, size = self.params[index].grad, self.offsets[index], self.sizes[index]
        self.buffer()[offset:offset + size].copy_(grad.reshape(-1))
        self.copied[index] = True

    def full(self) -> bool:
        return all(self.copied)

    def launch(self) -> None:
        """Fills the slots backward left empty (zeros, flag 0) and starts the asynchronous sum."""
        flat = self.buffer()
        flags = flat[self.total:]
        if self.full():
            flags.fill_(1.0)
        else:
            for index, param in enumerate(self.params):
                if not self.copied[index] and param.grad is not None:
                    self.copy_in(index)
            for index in range(len(self.params)):
                if not self.copied[index]:
                    flat[self.offsets[index]:self.offsets[index] + self.sizes[index]].zero_()
            flags.copy_(torch.tensor([float(param.grad is not None) for param in self.params], dtype=flat.dtype))
        self.work = dist.all_reduce(flat, async_op=True)

    def write_back(self, world: int) -> None:
        """Waits for the sum and puts the averages into `.grad`."""
        self.work.wait()
        self.work = None
        flat = self.buffer()
        averages = list(torch.split(flat[:self.total].div_(world), self.sizes))
        present = [param.grad is not None for param in self.params]
        if not all(present):  # only then read the flags (a host sync): who had a gradient anywhere
            anywhere = flat[self.total:].tolist()
            for index, param in enumerate(self.params):
                if not present[index] and anywhere[index] > 0:
                    param.grad = averages[index].view_as(param).clone()
        pairs = [(param.grad, average) for param, average, here in zip(self.params, averages, present) if here]
        if pairs:
            torch._foreach_copy_([grad for grad, _ in pairs], [average.view_as(grad) for grad, average in pairs])
        self.copied = [False] * len(self.params)


class GradSync:
    """Averages the gradients of `params` over every rank of the default process group; call it after
    each backward into these parameters (the `Optimizer` does), on every rank in the same order."""

    def __init__(self, params, bucket_bytes: int = BUCKET_BYTES):
        params = [p for p in params if p.requires_grad]
        self.world = dist.get_world_size()
        self.buckets = _split(list(reversed(params)), bucket_bytes)
        self.next_launch = 0  # buckets launch in index order on every rank
        self.handles: list = []
        self._hook_all()

    def _hook_all(self) -> None:
        owners = [_hook_owner(p) for b in self.buckets for p in b.params]
        if any(owner is not None for owner in owners):  # shared with another optimiser: no launches from backward
            for owner in {id(o): o for o in owners if o is not None}.values():
                owner.stop_overlap()
            return
        for bucket_index, bucket in enumerate(self.buckets):
            for index, param in enumerate(bucket.params):
                hook = self._make_hook(bucket_index, index)
                self.handles.append(param.register_post_accumulate_grad_hook(hook))
                _HOOK_OWNERS[id(param)] = (weakref.ref(param), weakref.ref(self))

    def stop_overlap(self) -> None:
        """No more launches from backward: everything is sent when the optimiser calls."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _make_hook(self, bucket_index: int, index: int):
        def on_grad(param: torch.Tensor) -> None:
            self.buckets[bucket_index].copy_in(index)
            self._launch_ready()
        return on_grad

    def _launch_ready(self) -> None:
        while self.next_launch < len(self.buckets) and self.buckets[self.next_launch].full():
            self.buckets[self.next_launch].launch()
            self.next_launch += 1

    def __call__(self) -> None:
        """After backward: launches the buckets still waiting, then averages every gradient."""
        for bucket in self.buckets[self.next_launch:]:
            bucket.launch()
        for bucket in self.buckets:
            bucket.write_back(self.world)
        self.next_launch = 0


def _split(params: list[torch.Tensor], bucket_bytes: int) -> list[_Bucket]:
    """Consecutive parameters grouped into buckets of about `bucket_bytes` (a bigger parameter alone)."""
    buckets, current, size = [], [], 0
    for param in params:
        nbytes = param.numel() * param.element_size()
        if current and size + nbytes > bucket_bytes:
            buckets.append(_Bucket(current))
            current, size = [], 0
        current.append(param)
        size += nbytes
    if current:
        buckets.append(_Bucket(current))
    return buckets
