"""Run set-up shared by training and evaluation: logdir, device, seeds."""

from __future__ import annotations

import os
import pathlib
import random
import sys

import numpy as np
import torch

from torch_dreamer.errors import UserError


CHOICES = {
    "dataset.mode": ("random", "sequential"),
    "worker_backend": ("process", "ray"),
    "action_kind": ("auto", "discrete", "continuous"),
}
NON_NEGATIVE = ("workers", "eval_workers", "train_ratio", "policy_refresh_s")
POSITIVE = ("policy_refresh", "dataset.batch", "dataset.length")


def validate_run_keys(config) -> None:
    """The learner/actor keys, checked before the logdir or any env is touched."""
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


def prepare_logdir(config) -> pathlib.Path:
    validate_run_keys(config)
    if str(config.logdir) in ("", "/dev/null"):
        raise UserError("no --logdir given; pass --logdir DIR (a new folder, or an existing run to resume it)")
    logdir = pathlib.Path(str(config.logdir)).expanduser()
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create logdir {logdir}: {error.strerror}") from None
    config.save(logdir / "config.yaml")
    return logdir


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
        torch.backends.cudnn.benchmark = False


def is_tty() -> bool:
    return sys.stdout.isatty()
