"""Metrics logging with the official outputs (terminal, metrics.jsonl, TensorBoard) plus video files,
optional MLflow, a running-mean helper and a terminal progress bar.

The run counts agent steps; every output receives frames (= steps * multiplier, the action repeat), as
the official logger does, so curves are comparable with the published scores.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import sys
import time

import numpy as np
import torch

from torch_dreamer.tools.video import gif_bytes, to_uint8


def _resolve(values: dict) -> dict:
    """Turn buffered scalars into python numbers, with one device sync per (device, dtype) group.

    Calling `.item()` per metric would stall a GPU run once per metric; stacking first costs one sync.
    """
    out, groups = {}, {}
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            groups.setdefault((value.device, value.dtype), []).append(name)
        elif isinstance(value, np.generic | np.ndarray):
            out[name] = np.asarray(value).item()
        else:
            out[name] = value
    for names in groups.values():
        stacked = torch.stack([values[name].detach().reshape(()) for name in names]).cpu().tolist()
        out.update(zip(names, stacked))
    return {name: int(v) if isinstance(v, bool) else v for name, v in out.items()}


class Logger:
    """Buffers scalars and videos, then hands them to every output on `write(step)`.

    A scalar added twice before a write keeps its last value; averaging is the caller's job
    (see `MetricsAverager`), which keeps the logger free of policy.
    """

    def __init__(self, logdir, multiplier: int = 1, outputs=None):
        self.logdir = pathlib.Path(logdir)
        self.multiplier = multiplier
        if outputs is None:
            outputs = default_outputs(self.logdir)
        self.outputs = list(outputs)
        self._scalars, self._videos = {}, {}

    def scalar(self, name: str, value) -> None:
        size = value.numel() if isinstance(value, torch.Tensor) else np.size(value)
        if size != 1:
            raise ValueError(f"scalar '{name}' must have one element, got shape {np.shape(value)}")
        self._scalars[name] = value  # resolved lazily in write(), see _resolve

    def video(self, name: str, frames) -> None:
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu().numpy()
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] not in (1, 3):  # fail at the call site, not at write time
            raise ValueError(f"video '{name}' must be (T, H, W, 1|3), got shape {frames.shape}")
        self._videos[name] = to_uint8(frames)

    def add(self, mapping: dict, prefix: str | None = None) -> None:
        """Scalars (0-d / one element) and videos (4-d) by shape; keys become `prefix_key` as official."""
        for key, value in mapping.items():
            name = f"{prefix}_{key}" if prefix else key
            ndim = len(value.shape) if hasattr(value, "shape") else 0
            if ndim == 4:
                self.video(name, value)
            else:
                self.scalar(name, value)

    def write(self, step: int) -> None:
        frames = int(step) * self.multiplier
        scalars, videos = _resolve(self._scalars), self._videos
        self._scalars, self._videos = {}, {}
        for output in self.outputs:
            output.write(frames, scalars, videos)

    def close(self) -> None:
        for output in self.outputs:
            output.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MetricsAverager:
    """Running means of metrics between log writes.

    Tensors are summed on their own device (no sync per update); `result()` returns 0-d tensors that
    `Logger` converts in one batch.
    """

    def __init__(self):
        self._sums, self._counts = {}, {}

    def add(self, metrics: dict) -> None:
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().reshape(()).float()
            elif isinstance(value, np.generic | np.ndarray):
                value = float(value)
            self._sums[key] = self._sums[key] + value if key in self._sums else value
            self._counts[key] = self._counts.get(key, 0) + 1

    def result(self, reset: bool = True) -> dict:
        means = {key: total / self._counts[key] for key, total in self._sums.items()}
        if reset:
            self._sums, self._counts = {}, {}
        return means


class Output:
    def write(self, frames: int, scalars: dict, videos: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONLOutput(Output):
    """One `{"step": frames, ...}` line per write in `logdir/metrics.jsonl`, the official plot format."""

    def __init__(self, logdir, filename: str = "metrics.jsonl"):
        self.path = pathlib.Path(logdir) / filename
        self._file = None

    def write(self, frames, scalars, videos):
        if not scalars:
            return
        # NaN/inf are not JSON; null keeps the line parseable by strict readers (and the official plotter).
        row = {"step": frames}
        row.update({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in scalars.items()})
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a")
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()  # a crash must not lose logged rows

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardOutput(Output):
    """Scalars under `scalars/<name>` (as the official), videos as animated GIF image summaries."""

    def __init__(self, logdir, fps: float = 20):
        self.logdir, self.fps = pathlib.Path(logdir), fps
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:  # lazy: no empty event file for runs that never log, faster startup
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.logdir), max_queue=1000, flush_secs=30)
        return self._writer

    def write(self, frames, scalars, videos):
        for name, value in scalars.items():
            tag = name if "/" in name else f"scalars/{name}"
            self.writer.add_scalar(tag, value, frames)
        for name, video in videos.items():
            self._video(name, video, frames)
        if scalars or videos:
            self.writer.flush()

    def _video(self, name, video, frames):
        # SummaryWriter.add_video needs moviepy; an Image summary holding GIF bytes is animated by TB too.
        from tensorboard.compat.proto.summary_pb2 import Summary

        _, height, width, channels = video.shape
        image = Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=gif_bytes(video, self.fps)
        )
        summary = Summary(value=[Summary.Value(tag=name, image=image)])
        self.writer._get_file_writer().add_summary(summary, frames)

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class TerminalOutput(Output):
    """One compact line per write: `[frames] name value / name value` for keys matching `pattern`."""

    def __init__(self, pattern: str = r"(return|model_loss|actor_loss|critic_loss|fps)$", stream=None):
        self.pattern, self.stream = re.compile(pattern), stream

    def write(self, frames, scalars, videos):
        items = [f"{k} {_fmt(v)}" for k, v in sorted(scalars.items()) if self.pattern.search(k)]
        if not items:
            return
        line = f"[{frames}] " + " / ".join(items)
        from tqdm import tqdm

        tqdm.write(line, file=self.stream or sys.stdout)  # tqdm.write keeps a live progress bar intact


def _fmt(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


class VideoFileOutput(Output):
    """Videos as `logdir/videos/<name>-<frames>.gif`, or `.mp4` when imageio-ffmpeg is installed."""

    def __init__(self, logdir, fps: float = 20, format: str = "auto"):
        self.directory, self.fps = pathlib.Path(logdir) / "videos", fps
        if format == "auto":
            try:
                import imageio_ffmpeg  # noqa: F401

                format = "mp4"
            except ImportError:
                format = "gif"
        self.format = format

    def write(self, frames, scalars, videos):
        for name, video in videos.items():
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{name.replace('/', '_')}-{frames}.{self.format}"
            if self.format == "gif":
                path.write_bytes(gif_bytes(video, self.fps))
            else:
                import imageio.v2 as imageio

                # macro_block_size=1 keeps odd-sized layouts (e.g. 3H x 6W) from being resized.
                imageio.mimwrite(path, video, fps=self.fps, macro_block_size=1)


class MLflowOutput(Output):
    """Finite scalars to the active MLflow run (one is started if none is active)."""

    def __init__(self):
        try:
            import mlflow
        except ImportError:
            from torch_dreamer.errors import missing_extra

            raise missing_extra("mlflow", "mlflow") from None
        self.mlflow = mlflow
        if mlflow.active_run() is None:
            mlflow.start_run()

    def write(self, frames, scalars, videos):
        finite = {k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(v)}
        if finite:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in finite.items()}, step=frames)


def default_outputs(logdir, terminal=True, jsonl=True, tensorboard=True, videos=False, mlflow=False) -> list:
    """The official outputs; `mlflow=True` adds MLflow only if it imports (silently skipped otherwise)."""
    outputs = [TerminalOutput()] if terminal else []
    outputs += [JSONLOutput(logdir)] if jsonl else []
    outputs += [TensorBoardOutput(logdir)] if tensorboard else []
    outputs += [VideoFileOutput(logdir)] if videos else []
    if mlflow:
        try:
            outputs.append(MLflowOutput())
        except Exception:
            pass  # optional integration: never let it stop a run
    return outputs


class Progress:
    """Live progress bar: steps, fps (frames/s), updates/s, ETA and the last train/eval return.

    Disabled when `disable=True` or stdout is not a TTY (CI, redirected logs), where a bar only adds noise.
    """

    def __init__(self, total: int, initial: int = 0, disable: bool | None = None, multiplier: int = 1, file=None):
        from tqdm import tqdm

        if disable is None:
            disable = not sys.stdout.isatty()
        self.disabled, self.multiplier = disable, multiplier
        self.bar = tqdm(
            total=total, initial=initial, disable=disable, unit="step", dynamic_ncols=True, smoothing=0.1, file=file
        )
        self._last = (time.perf_counter(), initial, None)
        self._postfix = {}

    def update(self, step: int, updates: int | None = None, **postfix) -> None:
        """`step`: agent steps so far; `updates`: gradient updates so far (shown as a rate)."""
        if self.disabled:
            return
        now = time.perf_counter()
        last_time, last_step, last_updates = self._last
        elapsed = now - last_time
        if elapsed > 0.5:  # rates over short windows are too noisy to read
            self._postfix["fps"] = f"{(step - last_step) * self.multiplier / elapsed:.0f}"
            if updates is not None and last_updates is not None:
                self._postfix["upd/s"] = f"{(updates - last_updates) / elapsed:.1f}"
            self._last = (now, step, updates)
        for key, value in postfix.items():  # 0-d tensors / numpy scalars become numbers, strings pass through
            self._postfix[key] = value if isinstance(value, str) else _fmt(value if type(value) is int else float(value))
        self.bar.set_postfix(self._postfix, refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
