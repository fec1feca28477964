import imageio.v3 as iio
import numpy as np
import pytest

from torch_dreamer.tools.video import gif_bytes, openl_video


def test_openl_layout_and_error_values():
    # 2 sequences, 3 steps, 2x2 grayscale frames with known values.
    truth = np.zeros((2, 3, 2, 2, 1), np.float32)
    model = np.zeros((2, 3, 2, 2, 1), np.float32)
    truth[0] = 1.0  # sequence 0: truth white, model black -> error (0 - 1 + 1) / 2 = 0
    model[1] = 1.0  # sequence 1: truth black, model white -> error 1
    video = openl_video(truth, model)
    assert video.shape == (3, 6, 4, 3) and video.dtype == np.uint8
    h, w = 2, 2
    # Column block 0 = sequence 0: truth / model / error stacked vertically.
    assert (video[:, :h, :w] == 255).all()
    assert (video[:, h : 2 * h, :w] == 0).all()
    assert (video[:, 2 * h :, :w] == 0).all()
    # Column block 1 = sequence 1.
    assert (video[:, :h, w:] == 0).all()
    assert (video[:, h : 2 * h, w:] == 255).all()
    assert (video[:, 2 * h :, w:] == 255).all()


def test_openl_perfect_prediction_is_gray_and_uint8_input():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (3, 4, 5, 6, 3), dtype=np.uint8)
    video = openl_video(truth, truth.copy())
    assert video.shape == (4, 15, 18, 3)
    np.testing.assert_array_equal(video[:, :5, 6:12], truth[1])
    np.testing.assert_array_equal(video[:, 5:10, 12:18], truth[2])
    assert (video[:, 10:] == 128).all()  # error of a perfect prediction is 0.5


def test_openl_keeps_at_most_six_sequences():
    truth = np.zeros((8, 2, 4, 4, 3), np.float32)
    assert openl_video(truth, truth).shape == (2, 12, 24, 3)


def test_openl_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        openl_video(np.zeros((1, 2, 4, 4, 3)), np.zeros((1, 3, 4, 4, 3)))


@pytest.mark.parametrize("channels", [1, 3])
def test_gif_bytes_decode_to_frame_count(channels):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (7, 16, 12, channels), dtype=np.uint8)
    data = gif_bytes(frames, fps=10)
    assert data[:6] in (b"GIF87a", b"GIF89a")
    decoded = iio.imread(data, index=None, extension=".gif")
    assert decoded.shape[:3] == (7, 16, 12)
