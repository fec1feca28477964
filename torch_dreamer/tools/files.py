"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import pathlib


@contextlib.contextmanager
def atomic_write(path, temp_name: str | None = None):
    """Yields a binary file; on success it is flushed, fsynced and renamed over `path`.

    temp_name: the temporary file's name in the same folder (default `<name>.tmp`); on failure it is removed.
    """
    path = pathlib.Path(path)
    temp = path.with_name(temp_name or path.name + ".tmp")
    try:
        with open(temp, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


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
        parent = target.rsplit("/", 1)[0]
        if parent and not fs.exists(parent):
            fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(target, data)
        return
    path = local_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, f".tmp-{path.name}-{os.getpid()}-{os.urandom(4).hex()}") as file:
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
