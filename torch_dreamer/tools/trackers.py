"""Experiment trackers as Logger outputs: MLflow and Weights & Biases (`--loggers ...,mlflow,wandb`).

Both run their calls on a background thread, so a slow or unreachable server never stalls training: a
tracker that fails prints one warning and the run goes on (it keeps trying, silently, on later writes;
the other outputs lose nothing). `close()` waits up to `close_timeout` seconds for pending calls.

- MLflow: the server named by MLFLOW_TRACKING_URI, else a local store in ``./mlruns`` (SQLite
  ``./mlruns/mlflow.db``, artifacts beside it; ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``).
  Experiment `mlflow.experiment` (else MLFLOW_EXPERIMENT_NAME, else the task), run name `mlflow.run_name`
  (else the logdir's name). Logs the resolved config as params, scalars as metrics (step = frames),
  videos as GIF artifacts under ``videos/`` and ``checkpoint.pt`` under ``checkpoints/`` whenever it
  changed. The run id is kept in ``{logdir}/mlflow_run.json``: a resumed run continues the same run.
- wandb: offline unless `wandb.mode` or WANDB_MODE say otherwise; project, group and name from
  `wandb.*` (name defaults to the logdir's name); the entity is wandb's own (WANDB_ENTITY or the
  account's default), never set here. Files go to ``{wandb.dir or logdir}/wandb``; the run id is kept in
  ``{logdir}/wandb_run.json`` and a resumed run continues it (``resume="allow"``).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import queue
import sys
import tempfile
import threading
import time
import uuid

from torch_dreamer.tools.logger import Output
from torch_dreamer.tools.video import gif_bytes

CLOSE = object()


def _option(config, key: str, default=""):
    if config is None:
        return default
    try:
        return config[key]
    except KeyError:
        return default


class TrackerOutput(Output):
    """A Logger output whose calls run on one daemon thread (see the module docstring).

    Subclasses implement `_start()` (connect / create or resume the run), `_log(frames, scalars, videos)`
    and `_finish()`. `errors` keeps every failure, for tests and post-mortems.
    """

    name = "tracker"

    def __init__(self, logdir, config=None, queue_size: int = 1000, close_timeout: float = 120.0):
        self.logdir, self.config = pathlib.Path(logdir), config
        self.close_timeout = close_timeout
        self.errors: list[str] = []
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._started = False
        self._warned = False

    # ----- Output interface (called by the Logger, never blocks) -----

    def write(self, frames: int, scalars: dict, videos: dict) -> None:
        self._put(("log", int(frames), dict(scalars), dict(videos)))

    def close(self) -> None:
        if self._thread is None:
            return
        self._put(CLOSE, block=True)
        self._thread.join(self.close_timeout)
        if self._thread.is_alive():
            self._warn(f"still busy after {self.close_timeout:.0f} s at exit; its last calls may be lost")
        elif self.dropped:
            self._warn(f"{self.dropped} writes were dropped while it could not keep up")
        self._thread = None

    # ----- the worker -----

    def _put(self, item, block: bool = False) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=f"{self.name}-tracker", daemon=True)
            self._thread.start()
        try:
            self._queue.put(item, block=block, timeout=self.close_timeout if block else None)
        except queue.Full:
            self.dropped += 1

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            closing = item is CLOSE
            try:
                if not self._started:
                    self._start()
                    self._started = True
                if closing:
                    self._finish()
                else:
                    self._log(*item[1:])
            except Exception as error:  # any failure of the tracker: warn once, keep the run going
                self._warn(f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}")
            if closing:
                return

    def _warn(self, message: str) -> None:
        self.errors.append(message)
        if not self._warned:
            self._warned = True
            print(f"warning: the {self.name} tracker failed ({message}); the run goes on without it "
                  "(later failures are not shown)", file=sys.stderr, flush=True)

    def _start(self) -> None:
        raise NotImplementedError

    def _log(self, frames: int, scalars: dict, videos: dict) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    # ----- helpers -----

    def _state_path(self) -> pathlib.Path:
        return self.logdir / f"{self.name}_run.json"

    def _read_state(self) -> dict:
        try:
            return json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._state_path().write_text(json.dumps(state, indent=1) + "\n")

    def _run_name(self, key: str) -> str:
        return str(_option(self.config, key, "")) or self.logdir.resolve().name


def _finite(scalars: dict) -> dict:
    out = {}
    for key, value in scalars.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[key] = value
    return out


def default_mlflow_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store in ./mlruns (artifacts in ./mlruns/<experiment id>)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = pathlib.Path("mlruns").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


class MLflowOutput(TrackerOutput):
    """Params, metrics, videos and the checkpoint of a run to MLflow (see the module docstring)."""

    name = "mlflow"
    MAX_PARAM = 500  # MLflow 2.x's limit on a param value

    def __init__(self, logdir, config=None, tracking_uri: str | None = None, **kwargs):
        try:
            import mlflow  # noqa: F401
        except ImportError:
            from torch_dreamer.errors import missing_extra

            raise missing_extra("mlflow", "mlflow") from None
        super().__init__(logdir, config, **kwargs)
        self.tracking_uri = tracking_uri
        self.client = self.run_id = None
        self._checkpoint_mtime = None

    def _start(self) -> None:
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri or default_mlflow_uri()
        client = MlflowClient(uri)
        state = self._read_state()
        run_id = None
        if state.get("run_id") and state.get("tracking_uri") == uri:
            try:
                client.get_run(state["run_id"])
                run_id = state["run_id"]
                client.update_run(run_id, status="RUNNING")
            except Exception:  # the run was deleted or the store changed: start a new one
                run_id = None
        if run_id is None:
            experiment = (str(_option(self.config, "mlflow.experiment", "")) or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                          or str(_option(self.config, "task", "")) or "torch_dreamer")
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            run = client.create_run(experiment_id, run_name=self._run_name("mlflow.run_name"),
                                    tags={"logdir": str(self.logdir.resolve())})
            run_id = run.info.run_id
            self._write_state({"run_id": run_id, "tracking_uri": uri, "experiment_id": experiment_id})
        self.client, self.run_id = client, run_id
        self._log_params()

    def _log_params(self) -> None:
        from mlflow.entities import Param

        if self.config is None:
            return
        logged = self.client.get_run(self.run_id).data.params
        params = [Param(key, str(value)[: self.MAX_PARAM]) for key, value in self.config.flat.items()
                  if key not in logged]  # a resumed run keeps the params it started with
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _log(self, frames, scalars, videos) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, frames) for key, value in _finite(scalars).items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])
        for name, video in videos.items():
            with tempfile.TemporaryDirectory() as folder:
                path = pathlib.Path(folder) / f"{name.replace('/', '_')}-{frames}.gif"
                path.write_bytes(gif_bytes(video, 20))
                self.client.log_artifact(self.run_id, str(path), "videos")
        self._log_checkpoint()

    def _log_checkpoint(self) -> None:
        path = self.logdir / "checkpoint.pt"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return
        if mtime != self._checkpoint_mtime:
            self.client.log_artifact(self.run_id, str(path), "checkpoints")
            self._checkpoint_mtime = mtime

    def _finish(self) -> None:
        self._log_checkpoint()
        self.client.set_terminated(self.run_id)


class WandbOutput(TrackerOutput):
    """Config, metrics and videos of a run to Weights & Biases, offline by default (see the module docstring)."""

    name = "wandb"

    def __init__(self, logdir, config=None, **kwargs):
        try:
            import wandb  # noqa: F401
        except ImportError:
            from torch_dreamer.errors import missing_extra

            raise missing_extra("wandb", "wandb") from None
        super().__init__(logdir, config, **kwargs)
        self.run = None

    def mode(self) -> str:
        return str(_option(self.config, "wandb.mode", "")) or os.environ.get("WANDB_MODE") or "offline"

    def _start(self) -> None:
        import wandb

        state = self._read_state()
        run_id = state.get("run_id") or uuid.uuid4().hex[:12]
        self._write_state({"run_id": run_id})
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=str(_option(self.config, "wandb.project", "")) or "torch_dreamer",
            group=str(_option(self.config, "wandb.group", "")) or None,
            name=self._run_name("wandb.name"),
            dir=self._directory(),
            id=run_id,
            resume="allow",
            mode=self.mode(),
            config=self.config.flat if self.config is not None else None,
            # wandb's console capture rewraps stdout/stderr, under the progress bar; WANDB_CONSOLE turns it on.
            settings=wandb.Settings(console=os.environ.get("WANDB_CONSOLE", "off")),
        )

    def _directory(self) -> str:
        """`wandb.dir` (Continual-Dreamer's --wandb_dir), created if missing; the logdir when empty."""
        chosen = str(_option(self.config, "wandb.dir", ""))
        directory = pathlib.Path(chosen).expanduser() if chosen else self.logdir
        directory.mkdir(parents=True, exist_ok=True)
        return str(directory.resolve())

    def _log(self, frames, scalars, videos) -> None:
        import wandb

        data = dict(_finite(scalars))
        with tempfile.TemporaryDirectory() as folder:
            for name, video in videos.items():
                path = pathlib.Path(folder) / f"{name.replace('/', '_')}-{frames}.gif"
                path.write_bytes(gif_bytes(video, 20))
                data[name] = wandb.Video(str(path), format="gif")
            if data:
                self.run.log(data, step=frames)

    def _finish(self) -> None:
        self.run.finish()


TRACKERS = {"mlflow": MLflowOutput, "wandb": WandbOutput}
