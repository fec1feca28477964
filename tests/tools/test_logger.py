import io
import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from torch_dreamer.tools.logger import (
    JSONLOutput,
    Logger,
    MetricsAverager,
    Progress,
    TensorBoardOutput,
    TerminalOutput,
    VideoFileOutput,
    default_outputs,
)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_lines_parse_and_step_multiplier(tmp_path):
    logger = Logger(tmp_path, multiplier=4, outputs=[JSONLOutput(tmp_path)])
    logger.scalar("fps", 12.5)
    logger.add({"return": np.float32(3.0), "loss": torch.tensor(0.25), "count": 7}, prefix="train")
    logger.write(10)
    logger.add({"loss": torch.tensor(float("nan")), "inf": float("inf")})
    logger.write(20)
    logger.write(30)  # nothing buffered: no line
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[0] == {"step": 40, "fps": 12.5, "train_return": 3.0, "train_loss": 0.25, "train_count": 7}
    assert rows[1] == {"step": 80, "loss": None, "inf": None}
    assert len(rows) == 2
    logger.close()


def test_last_value_wins_and_buffer_clears(tmp_path):
    logger = Logger(tmp_path, outputs=[JSONLOutput(tmp_path)])
    logger.scalar("x", 1)
    logger.scalar("x", 2)
    logger.write(1)
    logger.scalar("y", 3)
    logger.write(2)
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "x": 2}, {"step": 2, "y": 3}]


def test_tensor_scalars_use_one_batched_conversion(tmp_path, monkeypatch):
    calls = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or original(self))
    logger = Logger(tmp_path, outputs=[JSONLOutput(tmp_path)])
    logger.add({f"m{i}": torch.tensor(float(i)) for i in range(5)})
    logger.add({"i": torch.tensor(3)})
    logger.write(0)
    assert calls == []  # .tolist() per (device, dtype) group instead of .item() per metric
    expected = {"step": 0, **{f"m{i}": float(i) for i in range(5)}, "i": 3}
    assert read_jsonl(tmp_path / "metrics.jsonl")[0] == expected


def test_scalar_rejects_arrays(tmp_path):
    with pytest.raises(ValueError):
        Logger(tmp_path, outputs=[]).scalar("x", np.zeros(3))


def test_tensorboard_scalar_and_gif_video(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    logger = Logger(tmp_path, multiplier=2, outputs=[TensorBoardOutput(tmp_path)])
    logger.scalar("model_loss", 1.5)
    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    logger.add({"openl_image": frames}, prefix="train")
    logger.write(3)
    logger.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    (event,) = acc.Scalars("scalars/model_loss")
    assert event.step == 6 and event.value == pytest.approx(1.5)
    (image,) = acc.Images("train_openl_image")
    assert image.step == 6 and (image.height, image.width) == (8, 8)
    assert iio.imread(image.encoded_image_string, index=None, extension=".gif").shape[0] == 5


def test_tensorboard_is_lazy(tmp_path):
    output = TensorBoardOutput(tmp_path / "tb")
    output.close()
    assert not (tmp_path / "tb").exists()


def test_terminal_output_line():
    stream = io.StringIO()
    logger = Logger("unused", multiplier=4, outputs=[TerminalOutput(stream=stream)])
    logger.add({"train_return": 12.0, "model_loss": 0.5, "kl_loss": 1.0, "fps": 100.0, "steps": 3})
    logger.write(250)
    assert stream.getvalue().strip() == "[1000] fps 100 / model_loss 0.5 / train_return 12"


def test_video_file_output(tmp_path):
    output = VideoFileOutput(tmp_path, format="gif")
    logger = Logger(tmp_path, multiplier=2, outputs=[output])
    logger.video("eval/policy", np.zeros((3, 4, 4, 1), np.float32))
    logger.write(5)
    path = tmp_path / "videos" / "eval_policy-10.gif"
    assert iio.imread(path, index=None).shape[0] in (1, 3)  # identical frames may be merged


def test_default_outputs_skip_missing_mlflow(tmp_path):
    outputs = default_outputs(tmp_path, videos=True, mlflow=True)
    names = [type(o).__name__ for o in outputs][:4]
    assert names == ["TerminalOutput", "JSONLOutput", "TensorBoardOutput", "VideoFileOutput"]


def test_metrics_averager_means_and_reset():
    averager = MetricsAverager()
    averager.add({"loss": torch.tensor(1.0), "x": 1, "y": np.float32(2.0)})
    averager.add({"loss": torch.tensor(3.0), "x": 2})
    result = averager.result()
    assert float(result["loss"]) == 2.0 and result["x"] == 1.5 and result["y"] == 2.0
    assert averager.result() == {}
    averager.add({"loss": torch.tensor(5.0)})
    assert float(averager.result()["loss"]) == 5.0


def test_progress_disabled_and_enabled():
    with Progress(total=100, initial=10, disable=True) as progress:
        progress.update(20, updates=3, train_return=1.0)
    assert Progress.live() is None


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _progress(monkeypatch, total=6000):
    clock = FakeClock()
    monkeypatch.setattr("torch_dreamer.tools.logger.time.perf_counter", clock)
    stream = io.StringIO()
    return Progress(total=total, initial=0, disable=False, file=stream), stream, clock


def test_progress_eta_excludes_the_prefill_and_shows_one_rate(monkeypatch):
    progress, stream, clock = _progress(monkeypatch)
    assert stream.getvalue() == ""  # no bar before the first update: `Prefill dataset` prints whole
    progress.update(1000, updates=0)  # the prefill: fast random steps, no updates
    assert "1000/6000" in stream.getvalue() and "prefill" in stream.getvalue()
    clock.now += 1
    progress.update(1000, updates=1)  # training starts: the rate and ETA count from here
    clock.now += 10
    progress.update(2000, updates=200)  # 1000 steps in 10 s: 100 steps/s, 4000 steps left: 40 s
    text = stream.getvalue().split("\r")[-2:]
    assert any("2000/6000" in t and "<00:40, 100 steps/s]" in t for t in text), text
    assert "fps" not in stream.getvalue() and "upd/s" not in stream.getvalue()
    clock.now += 50
    progress.update(6000, updates=1000)
    progress.close()
    final = stream.getvalue()
    assert "6000/6000" in final and "<00:00, 83.3 steps/s]" in final  # the run's average, never 0


def test_progress_redraws_on_time_not_on_every_call(monkeypatch):
    progress, stream, clock = _progress(monkeypatch)
    progress.update(1, updates=1)
    drawn = stream.getvalue()
    for step in range(2, 500):  # called every env step: no redraw within REFRESH_S
        progress.update(step, updates=1)
    assert stream.getvalue() == drawn
    clock.now += Progress.REFRESH_S
    progress.update(500, updates=2)  # the next call after REFRESH_S redraws, episode end or not
    assert "500/6000" in stream.getvalue()
    progress.close()


def test_status_line_shows_returns_and_the_losses_terminal_output_writes(monkeypatch):
    progress, stream, clock = _progress(monkeypatch)
    progress.update(100, updates=0, train_return=np.float32(23.456))
    logger = Logger("unused", multiplier=2, outputs=[TerminalOutput()])  # a live session: lines and bar share
    logger.add({"model_loss": torch.tensor(1.2345), "actor_loss": -0.5312, "image_loss": 3.0, "fps": 12345.0})
    clock.now += 1
    logger.write(150)
    text = stream.getvalue()
    assert "[300] actor_loss -0.53 / fps 1.2e4 / model_loss 1.23\n" in text  # the official format, above the bar
    status = [part for part in text.split("\r") if part.startswith("train_return")][-1]
    assert "train_return 23.46" in status and "model_loss 1.23" in status and "actor_loss -0.53" in status
    assert "fps" not in status  # one rate: the bar's
    progress.close()
    assert Progress.live() is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_average_and_resolve(tmp_path):
    averager = MetricsAverager()
    for value in (1.0, 2.0):
        averager.add({"loss": torch.tensor(value, device="cuda"), "cpu": torch.tensor(value)})
    logger = Logger(tmp_path, outputs=[JSONLOutput(tmp_path)])
    logger.add(averager.result())
    logger.write(1)
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 1.5, "cpu": 1.5}]
