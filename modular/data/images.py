"""Array-level image conversions shared by every source: resizing and channel count."""
from __future__ import annotations

import jax
import numpy as np


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of float [N,H,W,C] to [N,size,size,C], antialiased when shrinking.

    Runs on the CPU backend so the result is the same on every machine and the whole
    dataset never lands in accelerator memory.
    """
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return np.asarray(images, np.float32)
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        out = jax.image.resize(np.asarray(images, np.float32), (n, size, size, c), method="linear",
                               antialias=True)
        return np.clip(np.asarray(out), 0.0, 1.0)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Grayscale -> RGB by repeating, RGB(A) -> grayscale by the mean of R, G, B."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    c = images.shape[-1]
    if c == channels:
        return images
    if c == 1:
        return np.repeat(images, channels, axis=-1)
    if c in (3, 4):  # alpha, if any, carries no class information here
        rgb = images[..., :3]
        return rgb if channels == 3 else rgb.mean(axis=-1, keepdims=True, dtype=np.float32)
    raise ValueError(f"cannot convert images with {c} channels to {channels}.")
