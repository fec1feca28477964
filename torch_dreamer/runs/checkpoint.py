"""Checkpoints: atomic saves, safe loads, and RNG state capture for exact resumption.

Files are read with `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers,
so a checkpoint from an untrusted source cannot execute code. Everything saved must therefore be made
of tensors, numbers, strings, bytes, None, dicts, lists and tuples; `save_checkpoint` checks this up
front, because finding out only on resume (hours later) would lose the run.
"""

from __future__ import annotations

import collections
import os
import pathlib
import random
import warnings

import numpy as np
import torch

from torch_dreamer.tools.files import atomic_write

from torch_dreamer.errors import UserError

# Exact types: subclasses such as numpy.float64 (a float) or IntEnum pickle as their own class and are refused.
_PLAIN = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def _check(value, where: str) -> None:
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN:
        return
    if type(value) in (dict, collections.OrderedDict):  # module state dicts are OrderedDicts
        for key, item in value.items():
            if not isinstance(key, int | str):
                raise TypeError(f"checkpoint key {where}[{key!r}] must be str or int, got {type(key).__name__}")
            _check(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):  # exact: namedtuples are refused on load
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
        return
    hint = " (convert numpy values with torch.as_tensor or .tolist())" if type(value).__module__ == "numpy" else ""
    raise TypeError(f"checkpoint value {where} has type {type(value).__name__}, which weights_only loading refuses{hint}")


def _fsync_directory(directory: pathlib.Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def payload_bytes(value) -> int:
    """Roughly the bytes `torch.save` writes for `value`: its tensors' storage (what dominates)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(payload_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(payload_bytes(item) for item in value)
    return 8


def save_checkpoint(path, payload: dict) -> None:
    """Write `payload` to `path` atomically: a crash leaves either the old file or the new one, never half.

    Ctrl-C and SIGTERM wait until the file is complete (or rolled back); a full disk raises `DiskFull`
    naming the path and the size needed, and the previous checkpoint stays as it was.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"checkpoint payload must be a dict, got {type(payload).__name__}")
    _check(payload, "payload")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, size=payload_bytes(payload)) as file:
        torch.save(payload, file)
    _fsync_directory(path.parent)


# What `Learner.save` writes; a file without these parts is some other torch file.
REQUIRED = {"agent": dict, "optimizers": dict, "counters": dict, "config": dict, "spaces": dict}


def nonfinite_tensor(tree, where: str = "") -> str | None:
    """The name of the first floating tensor in `tree` holding NaN or inf, else None."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and tree.numel() and not bool(torch.isfinite(tree).all()):
            return where or "tensor"
        return None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        found = nonfinite_tensor(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def check_structure(payload: dict, path) -> None:
    """One-line `UserError` unless `payload` is a torch_dreamer checkpoint with finite weights."""
    for key, kind in REQUIRED.items():
        if not isinstance(payload.get(key), kind):
            found = "missing" if key not in payload else f"a {type(payload[key]).__name__}"
            raise UserError(f"{path} is not a torch_dreamer checkpoint ('{key}' is {found}); "
                            "use another --logdir or move the file away")
    if "updates" not in payload["counters"]:
        raise UserError(f"{path} is not a torch_dreamer checkpoint (no 'updates' counter); move the file away")
    spaces = payload["spaces"]
    if not all(key in spaces for key in ("obs", "act_dim", "discrete")):
        raise UserError(f"{path} is not a torch_dreamer checkpoint (incomplete 'spaces'); move the file away")
    bad = nonfinite_tensor(payload["agent"])
    if bad:
        raise UserError(f"{path} holds non-finite weights ({bad}); it cannot be resumed or evaluated: "
                        "restore a backup or delete it to restart from scratch")


def load_checkpoint(path, check: bool = False) -> dict:
    """Load a checkpoint onto the CPU; unreadable or unsafe files raise a one-line `UserError`.

    With `check` the file must also be a run's checkpoint (`check_structure`): a torch file of another
    structure, or one with NaN/inf weights, is refused in one line. Runs load with `load_run_checkpoint`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the logdir or start a new run")
    try:
        with warnings.catch_warnings():  # legacy pickle files warn about the protocol; we refuse or read them anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if "weights only load failed" in str(error).lower():
            raise UserError(
                f"checkpoint {path} contains objects other than tensors and plain containers and was not loaded "
                "(loading it could run code); delete it or re-create it with torch_dreamer"
            ) from None
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        raise UserError(
            f"checkpoint {path} is corrupt or incomplete ({reason}); delete it to restart from scratch "
            "or replace it with a backup"
        ) from None
    if not isinstance(payload, dict):
        raise UserError(f"checkpoint {path} does not hold a dict (got {type(payload).__name__}); delete it")
    if check:
        check_structure(payload, path)
    return payload


def load_run_checkpoint(path) -> dict:
    """A run's checkpoint (`Learner.save`), checked: other torch files and NaN weights are one-line errors."""
    return load_checkpoint(path, check=True)


def rng_state() -> dict:
    """Python, NumPy (global) and torch CPU/CUDA RNG states, as tensors/ints/strings loadable with weights_only."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),  # 624 uint32 words + position, fit in int64
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the streams saved by `rng_state`; missing parts (e.g. CUDA on a CPU machine) are skipped."""
    if "python" in state:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    if "numpy" in state:
        npy = state["numpy"]
        keys = np.asarray(npy["keys"].tolist() if torch.is_tensor(npy["keys"]) else npy["keys"], dtype=np.uint32)
        np.random.set_state(
            (npy["bit_generator"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        # A resumed run may see a different number of GPUs; restore the ones both runs have.
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.to(torch.uint8), index)

