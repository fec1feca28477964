"""Atomic file writes: a crash leaves either the old file or the new one, never half of one.

Writes are also interrupt-safe: SIGINT/SIGTERM arriving while `atomic_write` runs are held until the
write has finished (or rolled back) and then delivered, so Ctrl-C never tears a checkpoint or an
episode, and a full disk is reported as one `DiskFull` line naming the file and the space it needed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import signal
import threading
import time
import uuid

from torch_dreamer.errors import UserError

TEMP_PREFIX = ".tmp-"  # every temp file starts so: hidden, never listed as data, cleaned when stale
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFull(UserError):
    """No space left (or quota exceeded) while writing `path`; the write was rolled back."""

    def __init__(self, path, needed: int | None = None):
        self.path, self.needed = pathlib.Path(path), needed
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            free = None
        need = f"needs about {_size(needed)}" if needed else "needs more space"
        have = f", {_size(free)} free" if free is not None else ""
        super().__init__(f"disk full writing {self.path} ({need}{have}); free some space and re-run the same "
                         "command to resume (the last complete files were kept)")


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _DISK_FULL


# ----- interrupts held during writes -----

_HELD = (signal.SIGINT, signal.SIGTERM)
_ESCAPE_AFTER = 3  # the third Ctrl-C during one held section stops at once (the write then rolls back)
_hold = {"depth": 0, "pending": [], "previous": {}}


def _on_signal(signum, frame):
    _hold["pending"].append(signum)
    if len(_hold["pending"]) >= _ESCAPE_AFTER:
        _restore()
        _hold["pending"].clear()
        raise KeyboardInterrupt


def _restore() -> None:
    for signum, handler in _hold["previous"].items():
        signal.signal(signum, handler)
    _hold["previous"] = {}


def _deliver(signum: int, handler) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)  # the default action (terminate), now that the handler is back


@contextlib.contextmanager
def deferred_interrupts():
    """Holds SIGINT and SIGTERM while the block runs, then delivers them as if they arrived just after.

    Nests (only the outermost block installs and restores handlers). Outside the main thread, where
    Python cannot set signal handlers, it does nothing: signals are delivered to the main thread anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _hold["depth"] == 0:
        try:
            _hold["previous"] = {signum: signal.signal(signum, _on_signal) for signum in _HELD}
        except (ValueError, OSError):  # no handlers here (embedded interpreter): write without holding
            _hold["previous"] = {}
            yield
            return
    _hold["depth"] += 1
    try:
        yield
    finally:
        _hold["depth"] -= 1
        if _hold["depth"] == 0:
            previous = dict(_hold["previous"])
            _restore()
            pending, _hold["pending"] = _hold["pending"], []
            if pending:
                _deliver(pending[0], previous.get(pending[0], signal.SIG_DFL))


def unique_temp_name(name: str) -> str:
    """A hidden temp name unique to this process and call, so concurrent writers never share one."""
    return f"{TEMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def atomic_write(path, temp_name: str | None = None, size: int | None = None):
    """Yields a binary file; on success it is flushed, fsynced and renamed over `path`.

    temp_name: the temporary file's name in the same folder (default: hidden and unique per process and
    call); on failure it is removed. SIGINT/SIGTERM wait until the write finished or rolled back. A full
    disk raises `DiskFull` (naming `path` and `size`, the bytes the write needs, when given).
    """
    path = pathlib.Path(path)
    temp = path.with_name(temp_name or unique_temp_name(path.name))
    with deferred_interrupts():
        try:
            with open(temp, "wb") as file:
                yield file
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException as error:
            temp.unlink(missing_ok=True)
            if is_disk_full(error):
                raise DiskFull(path, size) from None
            raise


def clean_stale_temps(directory, before: float | None = None) -> int:
    """Removes hidden temp files (`.tmp-*`, and the older `*.tmp`) last written before `before` (a time).

    Left by killed writers; a live writer's temp file is newer than the start of the run that cleans.
    Returns how many were removed; a missing folder or a URL has none.
    """
    if is_url(directory):
        return 0
    directory = local_path(directory)
    if not directory.is_dir():
        return 0
    before = time.time() if before is None else before
    removed = 0
    for path in directory.iterdir():
        if not (path.name.startswith(TEMP_PREFIX) or path.name.endswith(".tmp")):
            continue
        try:
            if path.is_file() and path.stat().st_mtime < before:
                path.unlink()
                removed += 1
        except OSError:
            pass
    return removed


def is_url(path) -> bool:
    """Whether `path` names an fsspec location (`s3://bucket/x`, `memory://x`, ...) rather than a local path."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def local_path(path) -> pathlib.Path:
    """A local path from a path or a `file://` URL."""
    text = str(path)
    return pathlib.Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()


def join(base, *parts) -> str | pathlib.Path:
    """`base / part / ...` for local paths (a Path) and URLs (a string joined with '/')."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return local_path(base).joinpath(*parts)


def put_bytes(path, data: bytes) -> None:
    """Write `data` so that no reader ever sees part of it.

    Local files: a unique temp file renamed over the target. Object stores have no rename, but a single
    PUT only becomes visible once complete, so one `pipe_file` call gives the same guarantee.
    """
    if is_url(path):
        import fsspec

        fs, target = fsspec.core.url_to_fs(str(path))
        try:
            fs.pipe_file(target, data)
        except FileNotFoundError:  # missing directory or bucket: create it, then retry once
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.pipe_file(target, data)
        return
    path = local_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, size=len(data)) as file:
        file.write(data)


def get_bytes(path) -> bytes | None:
    """The contents of a local file or URL, None when it does not exist."""
    if is_url(path):
        import fsspec

        fs, target = fsspec.core.url_to_fs(str(path))
        try:
            return fs.cat_file(target)
        except FileNotFoundError:
            return None
    try:
        return local_path(path).read_bytes()
    except FileNotFoundError:
        return None


def remove(path) -> None:
    """Delete a local file or URL if it exists."""
    if is_url(path):
        import fsspec

        fs, target = fsspec.core.url_to_fs(str(path))
        try:
            fs.rm_file(target)
        except FileNotFoundError:
            pass
        return
    local_path(path).unlink(missing_ok=True)


def list_names(directory, suffix: str = "") -> list[str]:
    """Names (not paths) of the files in a local folder or URL that end in `suffix`; [] when missing."""
    if is_url(directory):
        import fsspec

        fs, target = fsspec.core.url_to_fs(str(directory))
        try:
            return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(target, detail=False) if p.endswith(suffix))
        except FileNotFoundError:
            return []
    directory = local_path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(suffix))
