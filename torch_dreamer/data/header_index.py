"""A sidecar index of a local replay folder's checked episode files, so reopening 100k files skips their headers.

Opening a store counts every file beyond RAM by reading its array headers (`episodes.inspect_files`,
~0.4 ms a file, ~39 s for 100k). ``{replay}/.header_index.json`` remembers, per file name, the file's
size and write time and its arrays' layout (`episodes.episode_layout`), so a later open reads only the
headers of files it has not seen.

It is only a cache, correct whatever other processes do to the folder:
- the directory listing decides which files exist; entries of files gone are ignored and dropped;
- an entry counts only while the file's size and ``mtime_ns`` still match it (a replaced file is read again);
- the layout is checked against the run's spec in memory on every open, as a freshly read one would be;
- files that fail to read are never indexed, so they are retried (and warned about) as without an index;
- the file is rewritten whole through a temp file and a rename: readers see the old or the new one, and
  two stores writing at once only lose each other's additions (their files are read again later).
A corrupt or foreign index is ignored (and replaced). Remote replays (fsspec URLs) have no index.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from torch_dreamer.tools.files import TEMP_PREFIX, DiskFull, atomic_write

from .episodes import Episode, Location, Spec, check_layout, file_name, inspect_files

INDEX_NAME = ".header_index.json"  # hidden and not .npz: never listed as an episode
VERSION = 1


def _stat(path: Location) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def episode_layout_of(episode: Episode) -> dict:
    """The layout (``{key: (full shape, dtype)}``) of an episode already read."""
    return {key: (tuple(value.shape), np.dtype(value.dtype)) for key, value in episode.items()}


class HeaderIndex:
    """The index of one local replay folder (see the module docstring); a no-op for remote ones.

    Entries are kept as written, ``name -> (size, mtime_ns, rows, step)`` with ``step`` a JSON key into
    a table of step layouts (most files share one), so reading, checking and rewriting 100k entries
    costs one check per distinct step layout, not per file.
    """

    def __init__(self, directory: Path | str):
        self.path = Path(directory) / INDEX_NAME if isinstance(directory, Path) else None
        self._entries: dict[str, tuple] = {}
        self._steps: dict[str, dict] = {}  # step key -> {array key: (step shape, dtype)}
        self._unwritten = 0
        if self.path is not None:
            self._entries, self._steps = _read(self.path)

    def inspect(self, paths: Sequence[Location], spec: Spec | None) -> dict[str, dict]:
        """`inspect_files(paths, spec)`, reading only the headers of files the index does not vouch for."""
        if self.path is None:
            return inspect_files(paths, spec)
        entries = {str(path): self._entry(path) for path in paths}
        unknown = [path for path in paths if entries[str(path)] is None]
        for key, layout in inspect_files(unknown, None).items():  # spec-free: indexed whatever the spec
            self.record(key, layout)
            entries[key] = self._entries.get(file_name(key))
        problems: dict[tuple, str | None] = {}  # per step layout: rows never change the verdict (>= 1)
        layouts = {}
        for path in paths:
            entry = entries[str(path)]
            if entry is None:
                continue  # unreadable: inspect_files warned
            layout = _full_layout(entry[2], self._steps[entry[3]])
            verdict = (entry[3], entry[2] > 0)
            if verdict not in problems:
                problems[verdict] = check_layout(layout, spec)
            if problems[verdict]:
                warnings.warn(f"skipping episode file {path}: {problems[verdict]}", stacklevel=3)
                continue
            layouts[str(path)] = layout
        return layouts

    def record(self, path: Location, layout: dict) -> None:
        """Remembers the layout of a file just read (whole or its headers)."""
        stat = _stat(path) if self.path is not None else None
        rows = {shape[0] if len(shape) else None for shape, _ in layout.values()}
        if stat is None or len(rows) != 1 or None in rows:
            return  # only layouts that pass check_layout (one leading length) are indexed
        step = json.dumps(sorted((key, list(shape[1:]), np.dtype(dtype).str) for key, (shape, dtype) in layout.items()))
        entry = (*stat, rows.pop(), step)
        if self._entries.get(file_name(path)) != entry:
            self._steps.setdefault(step, _decode_step(step))
            self._entries[file_name(path)] = entry
            self._unwritten += 1

    def write(self, listed: Sequence[Location] | None = None, min_new: int = 1) -> bool:
        """Rewrites the index once ``min_new`` entries changed, keeping only the names in ``listed``
        (when given: the folder's current files). A folder that cannot be written (read-only datasets)
        just keeps no index. Returns whether it was written."""
        if listed is not None:
            names = {file_name(path) for path in listed}
            gone = [name for name in self._entries if name not in names]
            for name in gone:
                del self._entries[name]
            self._unwritten += len(gone)
        if self.path is None or self._unwritten < min_new:
            return False
        steps = sorted({entry[3] for entry in self._entries.values()})
        ids = {step: index for index, step in enumerate(steps)}
        files = {name: [size, mtime, rows, ids[step]] for name, (size, mtime, rows, step) in self._entries.items()}
        data = {"version": VERSION, "layouts": [json.loads(step) for step in steps], "files": files}
        try:
            with atomic_write(self.path, f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}-{INDEX_NAME}.part") as f:
                f.write(json.dumps(data, separators=(",", ":")).encode())
        except (OSError, DiskFull):  # read-only or full: the index is an optimisation, the run goes on
            return False
        self._unwritten = 0
        return True

    def _entry(self, path: Location) -> tuple | None:
        """The entry of ``path`` if the file is still the one indexed (same size and write time)."""
        entry = self._entries.get(file_name(path))
        return entry if entry is not None and entry[:2] == _stat(path) else None


def _decode_step(step: str) -> dict:
    return {key: (tuple(shape), np.dtype(dtype)) for key, shape, dtype in json.loads(step)}


def _full_layout(rows: int, step: dict) -> dict:
    return {key: ((rows, *shape), dtype) for key, (shape, dtype) in step.items()}


def _read(path: Path) -> tuple[dict, dict]:
    """Entries and step layouts of an index file; empty when missing, half-read or foreign."""
    try:
        data = json.loads(path.read_text())
        if data.get("version") != VERSION:
            return {}, {}
        keys = [json.dumps(layout) for layout in data["layouts"]]
        steps = {key: _decode_step(key) for key in keys}
        entries = {name: (int(size), int(mtime), int(rows), keys[ident])
                   for name, (size, mtime, rows, ident) in data["files"].items()}
        return entries, steps
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return {}, {}
