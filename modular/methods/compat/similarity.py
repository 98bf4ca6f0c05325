"""How alike two extractors' representations are (paper App. C.2): linear CKA between their features.

Linear CKA (Kornblith et al. 2019) of feature matrices X [n, p] and Y [n, q] of the same n images, each
column centred: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F). It is 1 for representations equal up to a
rotation and isotropic scaling, and near 0 for unrelated ones; it does not need the units to be aligned,
so it says whether the information is alike, while recombination also needs it in the same units.
"""
from __future__ import annotations

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"linear_cka needs the features of the same n >= 2 images, got {len(x)} and {len(y)}.")
    x, y = x - x.mean(0), y - y.mean(0)
    # Gram form (n x n): cheaper than p x q when features are wider than the image count.
    kx, ky = x @ x.T, y @ y.T
    denom = np.linalg.norm(kx) * np.linalg.norm(ky)
    return float(np.sum(kx * ky) / denom) if denom > 0 else 0.0


def unit_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Mean Pearson correlation of unit i of x with unit i of y over images (units compared in place, as a
    recombined head sees them); constant units count as 0."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    x, y = x - x.mean(0), y - y.mean(0)
    denom = np.sqrt((x ** 2).sum(0) * (y ** 2).sum(0))
    corr = np.where(denom > 0, (x * y).sum(0) / np.where(denom > 0, denom, 1.0), 0.0)
    return float(corr.mean())
