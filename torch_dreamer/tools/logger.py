"""Metrics logging with the official outputs (terminal, metrics.jsonl, TensorBoard) plus video files,
trackers (MLflow, wandb: `tools/trackers.py`), a running-mean helper and a terminal progress bar.

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


def end_partial_line(path) -> None:
    """Makes `path` end with a newline before rows are appended to it.

    A run killed (or out of disk) while writing leaves a half line at the end; appending after it would
    glue the next row onto it and make the file unreadable for pandas and strict readers. A complete JSON
    row that only lacks its newline gets one; a half-written row (never readable) is cut off.
    """
    path = pathlib.Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with path.open("rb+") as file:
        file.seek(-1, 2)
        if file.read(1) == b"\n":
            return
        end = size
        while end > 0:  # the last newline, reading backwards in blocks
            start = max(0, end - 65536)
            file.seek(start)
            block = file.read(end - start)
            index = block.rfind(b"\n")
            if index >= 0:
                start = start + index + 1
                break
            end = start
        else:
            start = 0
        file.seek(start)
        tail = file.read()
        try:
            complete = isinstance(json.loads(tail), dict)
        except ValueError:
            complete = False
        if complete:
            file.seek(0, 2)
            file.write(b"\n")
        else:
            file.truncate(start)


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
            end_partial_line(self.path)  # a resumed run starts on a fresh line
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
    """One line per write in the official format, `[frames] name value / name value`, for keys matching
    `pattern` (returns, losses, fps), values formatted as the official logger does (2 decimals, or 1e-3 form).

    Lines go through `tqdm.write`, so a live `Progress` bar stays below them; the bar's status line also
    shows the latest of these values.
    """

    def __init__(self, pattern: str = r"(return|model_loss|actor_loss|critic_loss|fps)$", stream=None):
        self.pattern, self.stream = re.compile(pattern), stream

    def write(self, frames, scalars, videos):
        shown = {k: v for k, v in sorted(scalars.items()) if self.pattern.search(k) and v is not None}
        if not shown:
            return
        line = f"[{frames}] " + " / ".join(f"{k} {_official_fmt(v)}" for k, v in shown.items())
        from tqdm import tqdm

        live = Progress.live()
        if live is not None:  # the bar has its own rate: fps stays on the printed line only
            live.show({k: v for k, v in shown.items() if k != "fps"})
        tqdm.write(line, file=self.stream or (live.file if live is not None else None) or sys.stdout)


def _fmt(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _official_fmt(value) -> str:
    """The official TerminalOutput's number format: 0, 12.5, 0.37, 2e4, 1.5e-3."""
    if isinstance(value, str):
        return value
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if 0.01 < abs(value) < 10000:
        return f"{value:.2f}".rstrip("0").rstrip("0").rstrip(".")
    return f"{value:.1e}".replace(".0e", "e").replace("+0", "").replace("+", "").replace("-0", "-")


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


LOGGERS = ("terminal", "jsonl", "tensorboard", "mlflow", "wandb")


def default_outputs(logdir, terminal=True, jsonl=True, tensorboard=True, videos=False, mlflow=False,
                    config=None, loggers=None) -> list:
    """The outputs named by `loggers` (a list or a comma string; default `config.loggers` when a config is
    given): terminal, jsonl, tensorboard, mlflow, wandb (trackers: `torch_dreamer.tools.trackers`).

    `terminal=False` leaves the terminal output out even when named (the progress bar shows instead).
    Without `loggers` or `config` the flags choose, as before; `mlflow=True` then adds MLflow only if it
    imports. A tracker named in `loggers` whose package is missing is a UserError with the install hint.
    """
    from torch_dreamer.tools import trackers

    if loggers is None and config is not None:
        try:
            loggers = config["loggers"]
        except KeyError:  # a config saved before the key existed
            loggers = None
    if loggers is None:
        names = [n for n, on in (("jsonl", jsonl), ("tensorboard", tensorboard)) if on]
        names = (["terminal"] if terminal else []) + names
    else:
        names = [str(n).strip().lower() for n in (loggers.split(",") if isinstance(loggers, str) else loggers)]
        names = [n for n in names if n]
        unknown = [n for n in names if n not in LOGGERS]
        if unknown:
            from torch_dreamer.errors import UserError

            raise UserError(f"unknown logger '{unknown[0]}' in --loggers; choose from {', '.join(LOGGERS)}")
    outputs = [TerminalOutput()] if terminal and "terminal" in names else []
    outputs += [JSONLOutput(logdir)] if "jsonl" in names else []
    outputs += [TensorBoardOutput(logdir)] if "tensorboard" in names else []
    outputs += [VideoFileOutput(logdir)] if videos else []
    for name in ("mlflow", "wandb"):
        if name in names:
            outputs.append(trackers.TRACKERS[name](logdir, config))
    if mlflow and loggers is None:
        try:
            outputs.append(trackers.MLflowOutput(logdir, config))
        except Exception:
            pass  # the optional flag never stops a run
    return outputs


class Progress:
    """The live view of a run on a terminal: a bar with an honest ETA, and a status line under it.

         37%|█████▌         | 2200/6000 [00:41<01:10, 53.2 steps/s]
        train_return 23 / eval_return 150 / model_loss 1.2 / actor_loss -0.53

    - One rate, steps/s (the bar's unit), and the ETA come from the time since the first gradient update
      (`updates > 0`), so the fast prefill neither shortens the ETA nor inflates the rate; until then the
      bar says `prefill`. The final bar keeps the run's average rate.
    - `update()` may be called every env step: it redraws at most every `REFRESH_S` seconds.
    - The status line shows the keyword values given to `update` (returns) and those a `TerminalOutput`
      writes while the bar is live (losses), each with its latest value.
    - The bar appears at the first `update`, so lines printed before (e.g. `Prefill dataset`) stay whole;
      `write(line)` prints above a live bar.
    Disabled when `disable=True` or stdout is not a TTY (CI, redirected logs), where a bar only adds noise.
    """

    REFRESH_S = 0.5
    _live: list = []  # open, enabled bars; TerminalOutput writes through the newest

    def __init__(self, total: int, initial: int = 0, disable: bool | None = None, multiplier: int = 1, file=None,
                 unit: str = "step"):
        if disable is None:
            disable = not sys.stdout.isatty()
        self.disabled, self.multiplier, self.file, self.unit = disable, multiplier, file, unit
        self.total, self.initial = int(total), int(initial)
        self.bar = self.status = None
        self._step, self._updates = self.initial, None
        self._start = None  # (time, step) of the first update with training: rates and ETA count from here
        self._values: dict = {}
        self._drawn = -math.inf
        if not disable:
            Progress._live.append(self)

    @classmethod
    def live(cls) -> Progress | None:
        return cls._live[-1] if cls._live else None

    def update(self, step: int, updates: int | None = None, **values) -> None:
        """`step`: agent steps so far; `updates`: gradient updates so far (0 while prefilling);
        keyword values (returns, a task id) go on the status line."""
        if self.disabled:
            return
        now = time.perf_counter()
        self._step = int(step)
        if updates is not None:
            self._updates = int(updates)
        if self._start is None and (updates is None or updates > 0):
            self._start = (now, self._step)
        self._remember(values)
        if now - self._drawn >= self.REFRESH_S:
            self._draw(now)

    def show(self, values: dict) -> None:
        """Puts `values` (e.g. the losses a TerminalOutput writes) on the status line."""
        if self.disabled:
            return
        self._remember(values)
        now = time.perf_counter()
        if now - self._drawn >= self.REFRESH_S:
            self._draw(now)

    def write(self, line: str) -> None:
        """Prints `line` above the bar (or plainly when there is no live bar)."""
        from tqdm import tqdm

        tqdm.write(line, file=self.file or sys.stdout)

    def _remember(self, values: dict) -> None:
        for key, value in values.items():  # 0-d tensors / numpy scalars become numbers, strings pass through
            if value is None:
                continue
            if not isinstance(value, str):
                value = value.item() if hasattr(value, "item") else value
            self._values[key] = _official_fmt(value)

    def _open(self) -> None:
        from tqdm import tqdm

        class Bar(tqdm):
            fields = {"eta": "?", "speed": ""}

            @property
            def format_dict(self):
                return {**super().format_dict, **self.fields}

        self.bar = Bar(total=self.total, initial=self._step, unit=self.unit, dynamic_ncols=True, file=self.file,
                       bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{eta}{speed}]")
        self.status = tqdm(total=0, position=1, bar_format="{desc}", dynamic_ncols=True, file=self.file)

    def _rate(self, now: float) -> float | None:
        if self._start is None:
            return None
        start_time, start_step = self._start
        elapsed = now - start_time
        return (self._step - start_step) / elapsed if elapsed > 0 and self._step > start_step else None

    def _draw(self, now: float) -> None:
        if self.bar is None:
            self._open()
        rate = self._rate(now)
        if rate:
            left = max(self.total - self._step, 0) / rate
            minutes, seconds = divmod(int(left), 60)
            hours, minutes = divmod(minutes, 60)
            eta = f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"
            self.bar.fields = {"eta": eta, "speed": f", {rate:.0f} {self.unit}s/s" if rate >= 100 else
                               f", {rate:.3g} {self.unit}s/s"}
        else:
            self.bar.fields = {"eta": "?", "speed": ", prefill" if self._start is None else ""}
        self.bar.n = self._step
        self.bar.refresh()
        self.status.set_description_str(" / ".join(f"{k} {v}" for k, v in self._values.items()), refresh=True)
        self._drawn = now

    def close(self) -> None:
        if self in Progress._live:
            Progress._live.remove(self)
        if self.bar is None:
            return
        self._draw(time.perf_counter())
        if self._step >= self.total:
            self.bar.fields = {**self.bar.fields, "eta": "00:00"}
            self.bar.refresh()
        self.bar.close()
        self.status.close()
        self.bar = self.status = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
