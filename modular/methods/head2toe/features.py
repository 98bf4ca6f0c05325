"""Head2Toe features: every named activation of a frozen backbone, pooled to ~T values, L2-normalised, concatenated.

The backbone runs once (`cache_features`); every head is then trained on the cached matrix, so adapting
to a task never computes a backbone gradient or even a backbone forward pass. `features_fn` computes the
same columns differentiably, for the variant that fine-tunes the backbone too.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from modular import models, train

# Aliases of another activation (the extractor's output is also the head's input map).
SKIPPED = ("features",)


def pool_size(channels: int, width: int, target: int) -> int:
    """Side of the disjoint average-pool window for a [H, W, C] map (Evci et al. 2022, Sec. 3).

    C >= T: global pooling (window = W). Otherwise n = int(sqrt(T // C)) patches per side, window W // n.
    Where n > W the official code's window is 0 and it pools globally; we keep every pixel (window 1).
    """
    if channels <= 0 or width <= 0 or target <= 0:
        raise ValueError(f"pool_size needs positive channels, width and target, got {channels}, {width}, {target}.")
    if channels >= target:
        return width
    n = max(1, int(math.sqrt(target // channels)))
    return max(1, width // n)


def token_pool_size(tokens: int, channels: int, target: int) -> int:
    """Window of the disjoint 1-D average pool over N tokens of width C (the official Head2Toe code).

    C >= T: global pooling (window = N). Otherwise the tokens form T / C groups, window int(N / (T / C)),
    so the output has about T values. Where that window is 0 (fewer than T values in the layer) the
    official code pools globally; we keep every token (window 1), as for conv maps."""
    if channels <= 0 or tokens <= 0 or target <= 0:
        raise ValueError(f"token_pool_size needs positive tokens, channels and target, got {tokens}, {channels}, "
                         f"{target}.")
    if channels >= target:
        return tokens
    return max(1, int(tokens / (target / channels)))


def pool_layer(x: jax.Array, target: int) -> jax.Array:
    """One activation -> [B, ~target] features: conv maps pooled in 2-D, token maps in 1-D, vectors as they are."""
    if x.ndim == 2:
        return x
    if x.ndim == 3:  # [B, N, C] tokens: 1-D pooling over tokens
        window = token_pool_size(x.shape[1], x.shape[-1], target)
        # Disjoint windows (stride = window, no padding): remainder tokens are dropped, as in the official code.
        x = nn.avg_pool(x, (window,), strides=(window,), padding="VALID")
        return x.reshape(x.shape[0], -1)
    if x.ndim == 4:  # [B, H, W, C]
        window = pool_size(x.shape[-1], x.shape[2], target)
        # Disjoint windows (stride = window, no padding): a remainder row/column is dropped.
        x = nn.avg_pool(x, (window, window), strides=(window, window), padding="VALID")
        return x.reshape(x.shape[0], -1)
    raise ValueError(f"Cannot pool an activation of shape {x.shape}; expected [B,C], [B,N,C] or [B,H,W,C].")


def l2_normalise(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Per-example unit norm; an all-zero vector stays zero (no division by zero)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return jnp.where(norm > eps, x / jnp.maximum(norm, eps), 0.0)


def layer_features(activation: jax.Array, target: int) -> jax.Array:
    """One activation as Head2Toe columns: pooled to ~target values per example, then unit norm."""
    return l2_normalise(pool_layer(activation.astype(jnp.float32), target))


@dataclasses.dataclass(frozen=True)
class FeatureCache:
    """Cached features of one task: `train`/`test` [N, D] and each layer's column slice."""
    train: np.ndarray
    test: np.ndarray
    layers: dict  # name -> (start, stop)
    aliases: dict = dataclasses.field(default_factory=dict)  # dropped duplicate -> the layer it repeats

    @property
    def num_features(self) -> int:
        return self.train.shape[1]

    def columns(self, layer_names) -> np.ndarray:
        names = [self.aliases.get(n, n) for n in layer_names]
        unknown = [n for n in names if n not in self.layers]
        if unknown:
            raise ValueError(f"Unknown feature layers {unknown}; known: {', '.join(self.layers)}.")
        return np.concatenate([np.arange(*self.layers[n]) for n in names])


@functools.lru_cache(maxsize=16)
def _all_layers_fn(model, target: int):
    """One function per (model, T), so that every task after the first reuses its compilation."""
    def fn(v, batch):
        _, out, _ = models.apply(model, v, batch["image"], mode="eval")
        return {k: layer_features(a, target) for k, a in out.items() if k not in SKIPPED}
    return fn


def all_layer_features(model, variables, images: np.ndarray, target: int, batch_size: int = 500) -> dict:
    """name -> [N, d] pooled and normalised features of every activation the model reports."""
    return train.predict(_all_layers_fn(model, int(target)), variables, images, batch_size=batch_size)


def forward_order(model, variables, example: np.ndarray) -> list:
    """Activation names input-to-output. Jit outputs come back with sorted keys, so the names are read while
    the model is traced abstractly (`jax.eval_shape`: nothing is computed or compiled)."""
    order = []

    def record(v, x):
        _, out, _ = models.apply(model, v, x, mode="eval")
        order.extend(k for k in out if k not in SKIPPED)
    jax.eval_shape(record, variables, jnp.asarray(example))
    return order


def cache_features(model, variables, train_images: np.ndarray, test_images: np.ndarray, target: int) -> FeatureCache:
    """Run the backbone once over both splits; drop layers that exactly repeat an earlier one."""
    tr = all_layer_features(model, variables, train_images, target)
    te = all_layer_features(model, variables, test_images, target)
    kept, layers, aliases, start = [], {}, {}, 0
    for name in forward_order(model, variables, train_images[:1]):
        x = tr[name]
        same = [k for k in kept if x.shape == tr[k].shape and np.array_equal(x, tr[k])]
        if same:
            aliases[name] = same[0]
            continue
        kept.append(name)
        layers[name] = (start, start + x.shape[1])
        start += x.shape[1]
    return FeatureCache(train=np.concatenate([tr[k] for k in kept], 1).astype(np.float32),
                        test=np.concatenate([te[k] for k in kept], 1).astype(np.float32), layers=layers,
                        aliases=aliases)


def features_fn(model, layer_names: tuple, target: int, mode: str):
    """(variables, images) -> ([B, D] features of `layer_names` in that column order, new model state).

    The columns a FeatureCache with these layers holds, but differentiable through the backbone, with
    BatchNorm in `mode` ('train' updates the statistics it returns)."""
    def fn(variables, images):
        _, out, new_state = models.apply(model, variables, images, mode=mode)
        return jnp.concatenate([layer_features(out[name], target) for name in layer_names], axis=1), new_state
    return fn
