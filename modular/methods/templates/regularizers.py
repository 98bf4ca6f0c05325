"""Regularizers on mixture weights xi [L, K]: entropy pushes each layer towards one template, clustering
pulls each layer's generated weights towards the few templates it leans on."""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def entropy(xi: jax.Array) -> jax.Array:
    """Mean per-layer entropy of mixture weights; minimizing it pushes xi towards one-hot."""
    return -jnp.mean(jnp.sum(xi * jnp.log(xi + 1e-8), axis=-1))


def clustering(xi: jax.Array, templates: Mapping[str, jax.Array]) -> jax.Array:
    """R = sum_k xi_k g(||theta_bar - theta_k||) averaged over layers, with g(d) = d^2.

    theta_bar is the layer's mixed parameter vector: the penalty is the xi-weighted spread of the
    templates around the generated layer, small when the mixture leans on one template (or the
    templates it mixes are close), so it clusters each layer around few templates.
    """
    bank = jnp.concatenate([v.reshape(v.shape[0], -1) for v in templates.values()], axis=1)  # [K, P]
    mixed = xi @ bank                                                                         # [L, P]
    dist2 = jnp.sum((mixed[:, None, :] - bank[None, :, :]) ** 2, axis=-1)                     # [L, K]
    return jnp.mean(jnp.sum(xi * dist2, axis=-1)) / bank.shape[1]
