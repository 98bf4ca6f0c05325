"""Self-supervised views built inside the model step (pure jnp, so they work under jit)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def rotation_views(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rotation prediction (Gidaris et al. 2018): each image at 0/90/180/270 degrees.

    Returns ([4B,H,W,C] grouped by rotation: all k=0 first, then k=1, ...; int32 labels k).
    Images must be square so the four views stack.
    """
    b, h, w = images.shape[:3]
    if h != w:
        raise ValueError(f"rotation_views needs square images, got {h}x{w}.")
    views = jnp.concatenate([jnp.rot90(images, k, axes=(1, 2)) for k in range(4)], axis=0)
    labels = jnp.repeat(jnp.arange(4, dtype=jnp.int32), b)
    return views, labels
