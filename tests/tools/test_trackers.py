"""Experiment trackers: `--loggers`, MLflow against a real tracking server on loopback (params, metrics,
videos and the checkpoint as artifacts, resume into the same run, a dead server warns once), and wandb in
offline mode read back from its run file."""

import json
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import gymnasium as gym
import numpy as np
import pytest

from torch_dreamer.config import resolve
from torch_dreamer.errors import UserError
from torch_dreamer.tools.logger import JSONLOutput, Logger, default_outputs
from torch_dreamer.tools.trackers import MLflowOutput, WandbOutput


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free loopback port with a SQLite store; stopped after the module."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root",
               str(root / "artifacts"), "--workers", "1"]
    log = open(root / "server.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _run_id(logdir) -> str:
    return json.loads((pathlib.Path(logdir) / "mlflow_run.json").read_text())["run_id"]


# ----------------------------------------------------------------------------- --loggers


def test_loggers_choose_the_outputs(tmp_path):
    config = resolve([], ["--logdir", str(tmp_path)])
    names = lambda outputs: [type(o).__name__ for o in outputs]
    assert names(default_outputs(tmp_path, config=config)) == ["TerminalOutput", "JSONLOutput", "TensorBoardOutput"]
    assert names(default_outputs(tmp_path, terminal=False, config=config)) == ["JSONLOutput", "TensorBoardOutput"]
    config = config.update({"loggers": "jsonl,mlflow,wandb"})
    outputs = default_outputs(tmp_path, config=config)
    assert names(outputs) == ["JSONLOutput", "MLflowOutput", "WandbOutput"]
    for output in outputs:
        output.close()
    with pytest.raises(UserError, match="unknown logger 'mlfow'"):
        default_outputs(tmp_path, loggers=["terminal", "mlfow"])
    assert not list(tmp_path.iterdir())  # trackers connect lazily, on their first write


# ----------------------------------------------------------------------------- MLflow


def test_mlflow_params_metrics_videos_checkpoint_and_resume(mlflow_server, tmp_path):
    logdir = tmp_path / "run"
    logdir.mkdir()
    config = resolve([], ["--logdir", str(logdir), "--mlflow.experiment", "trackers-test", "--rssm.deter", "77"])
    (logdir / "checkpoint.pt").write_bytes(b"weights-1")
    output = MLflowOutput(logdir, config, tracking_uri=mlflow_server)
    with Logger(logdir, multiplier=2, outputs=[output]) as logger:
        logger.add({"model_loss": 1.5, "bad": float("nan")})
        logger.video("train_openl_image", np.zeros((3, 8, 8, 3), np.uint8))
        logger.write(5)
        logger.add({"model_loss": 1.25})
        logger.write(10)
    assert output.errors == []
    run_id = _run_id(logdir)
    client = _client(mlflow_server)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "trackers-test"
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["rssm.deter"] == "77" and run.data.params["logdir"] == str(logdir)
    assert len(run.data.params) == len(config.flat)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "model_loss")] == [(10, 1.5), (20, 1.25)]
    assert "bad" not in run.data.metrics  # non-finite values are not sent
    assert [a.path for a in client.list_artifacts(run_id, "videos")] == ["videos/train_openl_image-10.gif"]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/checkpoint.pt"]
    # Resume: the same logdir continues the same run, its metrics and its checkpoint.
    (logdir / "checkpoint.pt").write_bytes(b"weights-2")
    output = MLflowOutput(logdir, config, tracking_uri=mlflow_server)
    with Logger(logdir, multiplier=2, outputs=[output]) as logger:
        logger.add({"model_loss": 1.0})
        logger.write(15)
    assert _run_id(logdir) == run_id and output.errors == []
    assert [m.step for m in client.get_metric_history(run_id, "model_loss")] == [10, 20, 30]
    local = client.download_artifacts(run_id, "checkpoints/checkpoint.pt", str(tmp_path))
    assert pathlib.Path(local).read_bytes() == b"weights-2"


class Chain(gym.Env):
    """A 6-state chain with vector observations: a training run of a few seconds."""

    observation_space = gym.spaces.Dict({"vector": gym.spaces.Box(0, 1, (6,), np.float32)})
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return {"vector": np.eye(6, dtype=np.float32)[0]}, {}

    def step(self, action):
        self.t += 1
        return {"vector": np.eye(6, dtype=np.float32)[self.t % 6]}, float(action == self.t % 2), self.t >= 10, False, {}


TINY = ["--rssm.deter", "16", "--rssm.hidden", "16", "--rssm.stoch", "4", "--rssm.discrete", "4",
        "--encoder.mlp_layers", "16", "--decoder.mlp_layers", "16", "--reward_head.layers", "1",
        "--reward_head.units", "16", "--discount_head.layers", "1", "--discount_head.units", "16",
        "--actor.layers", "1", "--actor.units", "16", "--critic.layers", "1", "--critic.units", "16",
        "--imag_horizon", "3", "--progress", "False"]


def _train(logdir, steps, uri):
    from torch_dreamer.runs.train import Trainer

    config = resolve(["gym_vector", "debug"], TINY + [
        "--logdir", str(logdir), "--steps", str(steps), "--prefill", "20", "--eval_every", "20", "--log_every", "10",
        "--train_every", "5", "--replay.minlen", "5", "--dataset.batch", "3", "--dataset.length", "5",
        "--eval_eps", "1", "--time_limit", "0", "--loggers", "jsonl,mlflow", "--mlflow.experiment", "train-test"])
    vec = lambda: gym.vector.SyncVectorEnv([Chain], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return Trainer(config, vec(), vec()).run()


def test_a_training_run_logs_to_mlflow_and_its_resume_continues_the_run(mlflow_server, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    logdir = tmp_path / "chain"
    assert _train(logdir, 40, mlflow_server)["step"] == 40
    run_id = _run_id(logdir)
    client = _client(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.params["task"] == "gym_CartPole-v1" and run.data.params["loggers"] == "['jsonl', 'mlflow']"
    assert {"model_loss", "train_return", "eval_return", "fps"} <= set(run.data.metrics)
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/checkpoint.pt"]
    first = len(client.get_metric_history(run_id, "model_loss"))
    assert _train(logdir, 80, mlflow_server)["step"] == 80
    assert _run_id(logdir) == run_id
    history = client.get_metric_history(run_id, "model_loss")
    assert len(history) > first and max(m.step for m in history) > 40
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_dead_tracking_server_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    config = resolve([], ["--logdir", str(tmp_path)])
    tracker = MLflowOutput(tmp_path, config, tracking_uri=dead, close_timeout=60)
    with Logger(tmp_path, outputs=[JSONLOutput(tmp_path), tracker]) as logger:
        for step in range(3):
            logger.add({"model_loss": float(step)})
            logger.write(step)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["model_loss"] for row in rows] == [0.0, 1.0, 2.0]  # nothing else is lost
    assert len(tracker.errors) >= 3  # it kept trying on every write and at close
    warnings = [line for line in capsys.readouterr().err.splitlines() if "tracker failed" in line]
    assert len(warnings) == 1 and "mlflow" in warnings[0]


# ----------------------------------------------------------------------------- wandb


def read_wandb_records(path):
    """Records of a wandb run file (LevelDB-style log: 32 KiB blocks, 7-byte headers, protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data, block = pathlib.Path(path).read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, chunks = 7, []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        chunks = [chunk] if kind in (1, 2) else chunks + [chunk]
        if kind in (1, 4):  # full or last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))


def _wandb_log(logdir, config, values):
    output = WandbOutput(logdir, config)
    with Logger(logdir, outputs=[output]) as logger:
        for step, value in values:
            logger.add({"model_loss": value, "inf": float("inf")})
            if step == values[0][0]:
                logger.video("train_openl_image", np.full((2, 8, 8, 3), 128, np.uint8))
            logger.write(step)
    assert output.errors == [] and output.mode() == "offline"


def _wandb_log_alone(logdir, flags, values):
    """`_wandb_log` in a fresh interpreter: wandb keeps process-wide state (its service, settings) that
    earlier tests in this process leave behind, and a training run has its own process anyway."""
    code = ("import json, sys, pathlib; from tests.tools.test_trackers import _wandb_log; "
            "from torch_dreamer.config import resolve; "
            "_wandb_log(pathlib.Path(sys.argv[1]), resolve([], json.loads(sys.argv[2])), json.loads(sys.argv[3]))")
    root = pathlib.Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code, str(logdir), json.dumps(flags), json.dumps(values)],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_wandb_offline_run_holds_config_and_metrics_and_resumes(wandb_env, tmp_path):
    logdir = tmp_path / "seed0"
    flags = ["--logdir", str(logdir), "--wandb.project", "proj", "--wandb.group", "grp"]
    _wandb_log_alone(logdir, flags, [(10, 2.0), (20, 1.5)])
    run_id = json.loads((logdir / "wandb_run.json").read_text())["run_id"]
    (first,) = sorted((logdir / "wandb").glob("offline-run-*/run-*.wandb"))
    records = list(read_wandb_records(first))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group, run.display_name, run.run_id, run.entity) == ("proj", "grp", "seed0", run_id, "")
    config_items = {_key(item): json.loads(item.value_json) for item in run.config.update}
    assert config_items["wandb.project"] == "proj" and config_items["rssm.deter"] == 1024  # the resolved config
    history = [{_key(item): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["model_loss"]) for h in history] == [(10, 2.0), (20, 1.5)]
    assert "inf" not in history[0] and history[0]["train_openl_image/_type"] == "video-file"
    assert (first.parent / "files" / history[0]["train_openl_image/path"]).stat().st_size > 0  # the GIF is kept
    # Resume: the same run id, steps continue in a new offline segment (`wandb sync` merges them).
    time.sleep(1.1)  # wandb names offline segments by the second: one started within the same second overwrites
    _wandb_log_alone(logdir, flags, [(30, 1.0)])
    files = sorted((logdir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)
    steps = [json.loads(item.value_json) for f in files for r in read_wandb_records(f)
             if r.WhichOneof("record_type") == "history" for item in r.history.item if _key(item) == "_step"]
    assert steps == [10, 20, 30]


def test_wandb_mode_from_config_then_environment(wandb_env, monkeypatch, tmp_path):
    config = resolve([], ["--logdir", str(tmp_path)])
    assert WandbOutput(tmp_path, config).mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbOutput(tmp_path, config).mode() == "disabled"
    assert WandbOutput(tmp_path, config.update({"wandb.mode": "online"})).mode() == "online"
