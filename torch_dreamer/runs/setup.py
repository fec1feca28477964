"""Run set-up shared by training and evaluation: config checks, the logdir (and its lock), device, seeds."""

from __future__ import annotations

import os
import pathlib
import random
import socket
import sys
import time
import warnings

import numpy as np
import torch

from torch_dreamer.errors import UserError


CHOICES = {
    "dataset.mode": ("random", "sequential"),
    "worker_backend": ("process", "ray"),
    "lr_scaling": ("none", "linear", "sqrt"),
    "action_kind": ("auto", "discrete", "continuous"),
    "replay.eviction": ("fifo", "reservoir", "random_replacement", "coverage"),
    "replay.sampling": ("uniform", "reward", "uncertainty"),
    "replay.storage": ("ram", "disk"),
}
NON_NEGATIVE = ("workers", "eval_workers", "train_ratio", "policy_refresh_s")
POSITIVE = ("policy_refresh", "dataset.batch", "dataset.length")


def validate_run_keys(config) -> None:
    """The whole resolved config (`config.validate`) and the learner/actor keys, checked before the
    logdir, any file or any env is touched."""
    from torch_dreamer.config import validate

    validate(config)
    if str(config.logdir) in ("", "/dev/null"):
        raise UserError("no --logdir given; pass --logdir DIR (a new folder, or an existing run to resume it)")
    flat = config.flat
    for key, choices in CHOICES.items():
        if str(flat[key]) not in choices:
            raise UserError(f"--{key} must be one of {', '.join(choices)}, not '{flat[key]}'")
    for key in NON_NEGATIVE:
        if flat[key] < 0:
            raise UserError(f"--{key} must be >= 0, got {flat[key]}")
    for key in POSITIVE:
        if flat[key] <= 0:
            raise UserError(f"--{key} must be > 0, got {flat[key]}")
    if config.offline_dir and (config.workers or config.eval_workers or config.learner_only):
        raise UserError("--offline_dir trains from a fixed dataset; drop --workers/--eval_workers/--learner_only")
    from torch_dreamer.agent import compile as compile_lib

    device_type = resolve_device(str(config.device)).type
    compile_lib.resolve(config, device_type)  # --compile graph on a CPU, etc.
    if note := cpu_precision_note(str(config.precision), device_type):
        warnings.warn(note)


def cpu_bf16_hardware() -> bool:
    """Whether this CPU has bfloat16 matmul instructions (AVX512-BF16 or AMX), where oneDNN runs bf16 fast."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's private probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cpu_precision_note(precision: str, device_type: str) -> str | None:
    """One line for `--precision 16` on a CPU: CPUs have no fast float16 kernels (one gym_vector update took
    0.84 s vs 0.15 s in 32 on one core here), while bf16 on AVX512-BF16/AMX CPUs is the fast mixed precision
    (atari config: 6.0 vs 12.1 s per update, benchmarks/results/throughput-cpu-bf16-stop17-*)."""
    if device_type != "cpu" or precision != "16":
        return None
    better = "bf16 (this CPU has bfloat16 instructions)" if cpu_bf16_hardware() else "32 (this CPU lacks bfloat16 instructions)"
    return f"--precision 16 runs float16 on the CPU, which has no fast kernels for it (several times slower); use --precision {better}"


def prepare_logdir(config) -> tuple[pathlib.Path, LogdirLock]:
    """`make_logdir`, then `claim_logdir`: for a run that starts at once. Returns the logdir and its lock
    (release it when the run ends). config.yaml is written by `write_config` once the run starts."""
    logdir = make_logdir(config)
    return logdir, claim_logdir(config, logdir)


def make_logdir(config) -> pathlib.Path:
    """Checks the whole config, then creates the logdir (unclaimed: claim it with `claim_logdir` before
    writing into it)."""
    validate_run_keys(config)
    logdir = pathlib.Path(str(config.logdir)).expanduser()
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create logdir {logdir}: {error.strerror}") from None
    return logdir


def claim_logdir(config, logdir: pathlib.Path) -> LogdirLock:
    """Takes the logdir's lock (a second run refuses in one line) and removes temp files of killed writers.

    Returns the lock: release it when the run ends (the OS releases it if the process dies).
    """
    started = time.time()
    lock = LogdirLock(logdir)
    lock.acquire()
    from torch_dreamer.tools.files import clean_stale_temps

    # Temp files of killed writers: this run holds the lock, so every writer of these folders is gone.
    for folder in (logdir, logdir / "train_episodes", logdir / "eval_episodes", logdir / "policy"):
        clean_stale_temps(folder, started)
    if config.replay_dir:  # a replay shared with other writers: only temps too old to be a live write
        clean_stale_temps(str(config.replay_dir), started - STALE_SHARED_TEMP_S)
    return lock


STALE_SHARED_TEMP_S = 3600.0  # no episode write takes an hour; younger temps in a shared replay may be live


def write_config(config, logdir: pathlib.Path) -> None:
    """config.yaml of a run that starts (written after its checkpoint loaded, so a rejected command never
    overwrites the config of the run in the logdir)."""
    config.save(pathlib.Path(logdir) / "config.yaml")


class LogdirLock:
    """An exclusive lock on `{logdir}/.lock` (flock) holding the pid and host of the run using the logdir.

    A second run on the same logdir gets a one-line error naming that process. The lock disappears with
    the process, so a killed run never leaves a stale one. File systems without locks (some network
    mounts) only get a warning. The shared replay of many actors is never locked.
    """

    def __init__(self, logdir: pathlib.Path):
        self.path = pathlib.Path(logdir) / ".lock"
        self._file = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            return
        file = open(self.path, "a+")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise UserError(f"{self.path.parent} is in use by a running dreamer run ({holder}); wait for it to end, "
                            "stop it, or use another --logdir") from None
        except OSError as error:
            file.close()
            warnings.warn(f"cannot lock {self.path} ({error.strerror}); make sure no other run uses this logdir")
            return
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device '{name}'; use auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    # On CUDA, fp32 matmuls and convolutions in TF32 (as TF2 ran the official code on Ampere) and cuDNN's autotuner,
    # unless the run must repeat exactly; no effect on the CPU.
    fast = "ieee" if deterministic else "tf32"
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = fast
    torch.backends.cudnn.benchmark = not deterministic


def is_tty() -> bool:
    return sys.stdout.isatty()
