"""`--compile none | step | graph | auto`: which parts of the update run compiled (issue 12).

- none: eager PyTorch.
- step: the observe-scan cell (`RSSM.obs_cell`: img_in, GRU, posterior, sample) and the imagination step
  (`WorldModel.imagine_step`: actor, sample, prior, features) each compiled as one whole function, so a scan
  step is a few fused kernels instead of dozens of small ones. Every call inside a run has the same shapes, so
  each compiles once per kind of call (with / without autograd, training / acting) and never again.
- graph: the whole update captured in one CUDA graph and replayed (`agent/graph.py`), the policy step in another.
  CUDA only, one learner process, constant schedules.
- auto: step on CUDA; on the CPU step only for small vector-input networks, where it measured faster (per-op
  overhead dominates), eager for the conv/matmul-bound image models (no measured gain, minutes of compilation).
  auto does not pick graph yet: graph has not run on a GPU in this project's tests (no GPU was lent), and a
  default has to be measured first.

`jit True` is the old spelling of `step`. The compiled functions are stored on their modules under the method's
name, so callers pick them up unchanged and checkpoints keep their keys.
"""

from __future__ import annotations

import time
import warnings

import torch

from torch_dreamer.errors import UserError

MODES = ("none", "step", "graph", "auto")
# On the CPU, compiling the scan steps pays off only while per-op overhead dominates: no CNN and a small deter.
# Measured: the tests' tiny model (deter 32) 26 -> 7 ms per update. gym_vector (deter 128): with one thread no
# faster (0.175 vs 0.171 s/update, benchmarks/results/throughput-cpu-gym_vector-quiet-*), with two threads (torch's
# default on a 2-core machine) 0.087-0.091 vs 0.099-0.101 s/update (fastest of 40, two rounds each), and the
# README's CartPole quick start took 126.6 s instead of 148.3 s. atari and dmc_vision: no faster.
AUTO_CPU_MAX_DETER = 128


def option(config, key: str, default):
    try:
        return config[key]
    except KeyError:  # configs saved before the key existed
        return default


def requested(config) -> str:
    """The `--compile` value as written, normalised (any case, surrounding spaces)."""
    return str(option(config, "compile", "none")).strip().lower()


def resolve(config, device_type: str, conv: bool = False) -> str:
    """The mode to run on `device_type` ('cpu', 'cuda'): none, step or graph; UserError for what cannot run.

    conv: whether the model has convolutions (image inputs), which `auto` leaves eager on the CPU."""
    name = requested(config)
    if name not in MODES:
        raise UserError(f"--compile must be one of {', '.join(MODES)}, not '{name}'")
    if name == "none" and option(config, "jit", False):
        name = "step"
    if name == "auto":
        small = not conv and int(config.rssm.deter) <= AUTO_CPU_MAX_DETER
        name = "step" if device_type == "cuda" or small else "none"
    if name == "graph":
        if device_type != "cuda":
            raise UserError("--compile graph captures the update in CUDA graphs and needs a CUDA device; "
                            "on the CPU use --compile step or auto")
        for key in SCHEDULED:
            if not _constant(option(config, key, 0.0)):
                raise UserError(f"--compile graph replays the values captured at its first update, so {key} must "
                                f"be a constant, not '{config[key]}'; use --compile step for scheduled values")
    return name


SCHEDULED = ("actor_ent", "actor_grad_mix", "expl_intr_scale", "expl_extr_scale")  # read through behavior.schedule


def _constant(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def check_processes(config, world: int) -> None:
    """`--compile graph` captures one process's update; data-parallel learners all-reduce from autograd hooks."""
    if world > 1 and requested(config) == "graph":
        raise UserError("--compile graph runs in one learner process; with --nproc/--gpus use --compile step")


def check_single_process(config) -> None:
    """`check_processes` for the process group this process is in (under a plain torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        check_processes(config, dist.get_world_size())


def is_compiler_error(error: Exception) -> bool:
    return "torch._dynamo" in type(error).__module__ or "inductor" in str(type(error))


class CompileClock:
    """Wall time of the calls that compiled a new graph (the first call of each kind), which the learner logs as
    `compile_seconds`; later calls only check dynamo's graph count."""

    def __init__(self):
        self.seconds = 0.0

    def timed(self, fn, *args, **kwargs):
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        if torch._dynamo.utils.counters["stats"]["unique_graphs"] != graphs:
            self.seconds += time.perf_counter() - start
        return result


def compile_steps(targets: list, clock: CompileClock) -> list:
    """Compiles each (module, method name) as one whole function, stored on the module; returns the targets.
    The calls that compile add their time to `clock`.

    If the compiler fails on this platform (it compiles at the first call, before running anything), that call
    and every later one run eagerly, after one warning: nothing of the update has run twice."""
    for module, name in targets:
        compiled = torch.compile(getattr(module, name), fullgraph=True, dynamic=False)
        setattr(module, name, _falling_back(targets, compiled, module, name, clock))
    return targets


def _falling_back(targets: list, compiled, module, name: str, clock: CompileClock):
    def call(*args, **kwargs):
        if module.__dict__.get(name) is not call:  # restored meanwhile
            return getattr(module, name)(*args, **kwargs)
        try:
            return clock.timed(compiled, *args, **kwargs)
        except Exception as error:  # compiler errors vary by platform and backend
            if not is_compiler_error(error):
                raise
            warnings.warn(f"torch.compile failed ({type(error).__name__}); running eagerly (--compile none)")
            restore(targets)
            return getattr(module, name)(*args, **kwargs)

    return call


def restore(targets: list) -> None:
    """Back to the eager methods (after a compiler failure); empties `targets`, the record of what is compiled."""
    for module, name in targets:
        module.__dict__.pop(name, None)
    targets.clear()
