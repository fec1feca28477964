"""Video helpers: the open-loop prediction layout and GIF encoding.

Kept free of torch so that analysis tools can use it on saved arrays.
"""

from __future__ import annotations

import io

import numpy as np

MAX_SEQUENCES = 6  # the official report shows 6 sequences side by side


def to_float(frames) -> np.ndarray:
    """uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1]."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / 255.0
    return frames.astype(np.float32)


def to_uint8(frames) -> np.ndarray:
    """float in [0, 1] (clipped) or uint8 -> uint8; rounds rather than truncates so 0.5 maps to 128."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return np.clip(np.round(frames.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def to_rgb(frames: np.ndarray) -> np.ndarray:
    """(..., C) with C in {1, 3} -> (..., 3): grayscale is repeated so every video has one format."""
    channels = frames.shape[-1]
    if channels == 3:
        return frames
    if channels == 1:
        return np.repeat(frames, 3, axis=-1)
    raise ValueError(f"expected 1 or 3 channels, got shape {frames.shape}")


def openl_video(truth, model, max_sequences: int = MAX_SEQUENCES) -> np.ndarray:
    """Official open-loop layout: rows truth / model / error, one column block per sequence.

    truth, model: (B, T, H, W, C), uint8 or float in [0, 1], C in {1, 3}.
    Returns uint8 (T, 3H, B'W, 3) with B' = min(B, max_sequences); error = (model - truth + 1) / 2,
    so gray (0.5) means a perfect prediction.
    """
    truth, model = to_float(truth), to_float(model)
    if truth.shape != model.shape or truth.ndim != 5:
        raise ValueError(f"truth and model must both be (B, T, H, W, C); got {truth.shape} and {model.shape}")
    truth, model = truth[:max_sequences], model[:max_sequences]
    error = (model - truth + 1.0) / 2.0
    video = np.concatenate([truth, model, error], axis=2)  # (B, T, 3H, W, C)
    batch, time, height, width, channels = video.shape
    video = video.transpose(1, 2, 0, 3, 4).reshape(time, height, batch * width, channels)
    return to_rgb(to_uint8(video))


def gif_bytes(frames, fps: float = 20) -> bytes:
    """Encode (T, H, W, C) frames (uint8 or float in [0, 1], C in {1, 3}) as a looping GIF.

    Pillow merges identical consecutive frames (adding up their durations), so playback time is right
    but a decoder may report fewer frames for a video with static stretches.
    """
    from PIL import Image  # lazy: only needed when a video is written

    frames = to_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or len(frames) == 0:
        raise ValueError(f"expected non-empty (T, H, W, 1|3) frames, got shape {frames.shape}")
    if frames.shape[-1] == 1:
        images = [Image.fromarray(frame[..., 0]) for frame in frames]
    else:
        images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    duration = max(int(round(1000 / fps)), 10)  # GIF delays are in centiseconds; browsers clamp tiny ones
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False
    )
    return buffer.getvalue()
