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
