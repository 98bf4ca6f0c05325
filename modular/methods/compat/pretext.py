"""The self-supervised pretext task of RP: which transforms the shared head predicts.

'rot4' is the paper's rotation prediction (0/90/180/270 degrees). On upright digits it is nearly solved from
a few low-level cues (strokes run mostly vertically, digits are taller than wide), so a shared head may
constrain the features little. 'dihedral8' adds a horizontal mirror to each rotation (8 classes): telling a
digit from its mirror image needs its shape (a 2 from a mirrored 2), not a stroke direction, so the shared
head has to read features that carry class-level structure. Each image gets one transform drawn uniformly
(`draw`); `apply` rotates/mirrors a batch by per-image transform ids inside a jitted step.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

KINDS = {"rot4": 4, "dihedral8": 8}


def num_classes(kind: str) -> int:
    if kind not in KINDS:
        raise ValueError(f"Unknown compat.rp_transforms {kind!r}; known: {', '.join(KINDS)}.")
    return KINDS[kind]


def draw(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """n transform ids, uniform over the kind's classes."""
    return rng.integers(0, num_classes(kind), n).astype(np.int32)


def apply(images, ids, kind: str):
    """Each image [B,H,W,C] transformed by its id: id % 4 quarter turns, then mirrored when id >= 4."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"Rotation prediction needs square images, got {images.shape[1]}x{images.shape[2]}.")
    variants = [jnp.rot90(images, k, axes=(1, 2)) for k in range(4)]
    if num_classes(kind) == 8:
        variants += [jnp.flip(v, axis=2) for v in variants]
    stacked = jnp.stack(variants)                                  # [K,B,H,W,C]
    onehot = (ids[None, :] == jnp.arange(len(variants))[:, None]).astype(images.dtype)
    return jnp.einsum("kb,kbhwc->bhwc", onehot, stacked)
