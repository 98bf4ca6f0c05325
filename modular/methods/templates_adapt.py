"""Unsupervised domain adaptation by moment matching (M3SDA-style) on a few chosen parameters.

The target's features are pulled towards the frozen source model's features by matching their first
and second moments; which parameters may move is decided by the optimizer rules: only the target's
mixture weights xi (the paper's method), or only the input adapter of a plain net (the baseline).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from modular.models import isometric


def moment_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared distance of per-feature means plus of per-feature second moments."""
    return jnp.sum((a.mean(0) - b.mean(0)) ** 2) + jnp.sum(((a ** 2).mean(0) - (b ** 2).mean(0)) ** 2)


def moment_matching_loss(cfg, *, source_params, source_stats, source_task: int, target_task: int):
    """loss_fn for train.fit on batches {image_src, image_tgt}: no target labels are used.

    The source model is a constant (frozen copy, eval-mode BN); the target runs in train mode, so its
    own moving BN statistics follow the target domain.
    """
    def loss_fn(params, batch_stats, batch, rng):
        del rng
        _, src, _ = isometric.apply(cfg, source_params, source_stats, batch["image_src"], task=source_task)
        _, tgt, batch_stats = isometric.apply(cfg, params, batch_stats, batch["image_tgt"], task=target_task,
                                              train=True)
        loss = moment_distance(jax.lax.stop_gradient(src["features"]), tgt["features"])
        return loss, (batch_stats, dict(moment_distance=loss))
    return loss_fn
