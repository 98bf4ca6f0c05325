"""Named, deterministic image corruptions used as domain shifts (`mnist5k/blur`, ...).

Each takes float32 [N,H,W,C] in [0,1] and a seed and returns the same shape and range; the
seed matters only where the corruption is random. Parameters are fixed (one severity) so a
name always means the same shift.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

SHEAR = 0.5            # horizontal shear factor (x' = x + SHEAR * (y - centre))
SCALE = 0.6            # zoom out around the centre
SHOT_PHOTONS = 20.0    # Poisson rate at intensity 1: lower is noisier
MIN_ANGLE, MAX_ANGLE = 30.0, 60.0  # rotation magnitude in degrees, random sign


def _affine(images: np.ndarray, matrix2d: np.ndarray) -> np.ndarray:
    """Applies one 2x2 map (output -> input coordinates) about the image centre to every image."""
    _, h, w, _ = images.shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    matrix = np.eye(4)
    matrix[1:3, 1:3] = matrix2d
    offset = np.zeros(4)
    offset[1:3] = centre - matrix2d @ centre
    # Identity on the batch and channel axes samples them at integer positions, so one call
    # transforms all images exactly as a per-image loop would.
    return ndimage.affine_transform(images, matrix, offset=offset, order=1, mode="constant", cval=0.0)


def shear(images: np.ndarray, seed: int) -> np.ndarray:
    del seed
    return _affine(images, np.array([[1.0, 0.0], [SHEAR, 1.0]]))


def scale(images: np.ndarray, seed: int) -> np.ndarray:
    del seed
    return _affine(images, np.eye(2) / SCALE)


def shot_noise(images: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(images * SHOT_PHOTONS) / SHOT_PHOTONS


def blur(images: np.ndarray, seed: int) -> np.ndarray:
    """Gaussian blur with sigma = image_size / 16 (one pixel at 16x16)."""
    del seed
    sigma = images.shape[1] / 16.0
    return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="constant")


def _sobel(images: np.ndarray, axis: int, across: int) -> np.ndarray:
    """Sobel derivative along `axis`, smoothed along `across` only (ndimage.sobel would also
    smooth across the batch and channel axes, mixing neighbouring images)."""
    d = ndimage.correlate1d(images, [-1.0, 0.0, 1.0], axis=axis, mode="constant")
    return ndimage.correlate1d(d, [1.0, 2.0, 1.0], axis=across, mode="constant")


def edges(images: np.ndarray, seed: int) -> np.ndarray:
    """Sobel gradient magnitude, each image rescaled to max 1 (blank images stay blank)."""
    del seed
    gy, gx = _sobel(images, 1, 2), _sobel(images, 2, 1)
    mag = np.hypot(gx, gy)
    peak = mag.max(axis=(1, 2, 3), keepdims=True)
    return mag / np.where(peak > 0, peak, 1.0)


def rotate(images: np.ndarray, seed: int) -> np.ndarray:
    """Rotates each image by its own angle, |angle| uniform in [30, 60] degrees, random sign."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(MIN_ANGLE, MAX_ANGLE, len(images)) * rng.choice([-1.0, 1.0], len(images))
    return np.stack([ndimage.rotate(im, a, axes=(0, 1), reshape=False, order=1, mode="constant")
                     for im, a in zip(images, angles)]) if len(images) else images


def invert(images: np.ndarray, seed: int) -> np.ndarray:
    del seed
    return 1.0 - images


CORRUPTIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "shear": shear, "scale": scale, "shot_noise": shot_noise, "blur": blur,
    "edges": edges, "rotate": rotate, "invert": invert,
}


def apply(name: str, images: np.ndarray, seed: int) -> np.ndarray:
    """Corrupts `images` with the named corruption; float32 in [0,1] out."""
    out = CORRUPTIONS[name](np.asarray(images, np.float32), seed)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
