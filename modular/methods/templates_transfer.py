"""Transfer inits for template mixtures: interpolating the source tasks' mixture weights xi.

A new task on frozen templates needs its own xi [L, K]. Besides a random init or one source task's xi
(`experiments.templates.run_transfer`), the target can start from a convex combination of all S source
tasks' mixtures:

    xi_tgt = sum_s w_s * xi_s,   w on the simplex,

interpolated in *mixture-weight* space (xi = softmax of the stored logits, so xi_tgt stays a valid
mixture and is stored back as log xi_tgt). Two ways to pick w:
  * accuracy-based: w = softmax(score_s / T) (or score_s / sum score for T = 0), where score_s is how
    well source model s does on the target's *training* data (its own head when the label spaces agree,
    else a nearest-class-mean probe on its pooled features);
  * learned: w = softmax(alpha) with alpha a trainable [S] vector stored at `task{t}/interp`; the loss
    rebuilds `task{t}/mixture` from alpha on every step (`learned_interpolation_loss`), so only the S
    interpolation coefficients (plus the target's BN patch and head) learn. `materialize` then writes
    the interpolated xi into `task{t}/mixture` (and drops alpha) so it can be tuned further.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modular import train
from modular.models import isometric

LOG_EPS = 1e-12


def interpolation_weights(scores: Sequence[float], temperature: float = 0.1) -> np.ndarray:
    """Simplex weights over sources from their scores (higher score -> more weight).

    temperature > 0: softmax(scores / temperature); temperature == 0: scores normalised to sum 1
    (uniform if they are all zero).
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 1 or not len(s) or not np.all(np.isfinite(s)):
        raise ValueError(f"Interpolation needs a non-empty vector of finite source scores, got {scores!r}.")
    if temperature < 0:
        raise ValueError(f"Interpolation temperature must be >= 0, got {temperature}.")
    if temperature == 0:
        if np.any(s < 0):
            raise ValueError(f"Normalised interpolation (temperature 0) needs scores >= 0, got {scores!r}.")
        return s / s.sum() if s.sum() > 0 else np.full(len(s), 1.0 / len(s))
    z = (s - s.max()) / temperature
    return np.exp(z) / np.exp(z).sum()


def interpolate_logits(source_logits: jax.Array, weights: jax.Array) -> jax.Array:
    """[S, L, K] source mixture logits, [S] simplex weights -> [L, K] logits of sum_s w_s softmax(logits_s).

    softmax of the result is exactly the interpolated mixture (rows of a convex combination of
    distributions already sum to 1, so log is its own inverse up to softmax's normalisation).
    """
    xi = jax.nn.softmax(jnp.asarray(source_logits), axis=-1)
    mixed = jnp.einsum("s,slk->lk", jnp.asarray(weights, xi.dtype), xi)
    return jnp.log(mixed + LOG_EPS)


def source_logits(params: Mapping, sources: Sequence[int]) -> jax.Array:
    """[S, L, K] stacked mixture logits of the source tasks."""
    return jnp.stack([jnp.asarray(params[f"task{s}"]["mixture"]) for s in sources])


def _centroid_probe(features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Nearest-class-mean accuracy on a held-out half: a head-free score when label spaces differ."""
    idx = np.random.default_rng(seed).permutation(len(labels))
    fit, held = idx[: len(idx) // 2], idx[len(idx) // 2:]
    classes = np.unique(labels[fit])
    means = np.stack([features[fit][labels[fit] == c].mean(0) for c in classes])
    d = ((features[held][:, None, :] - means[None]) ** 2).sum(-1)
    return float(np.mean(classes[d.argmin(1)] == labels[held]))


def source_scores(cfg, params: Mapping, batch_stats: Mapping, images: np.ndarray, labels: np.ndarray,
                  sources: Sequence[int], num_classes: int, seed: int = 0) -> dict:
    """{'scores': [S] accuracies of each source model on (target) images, 'kind': per source 'head'|'probe'}.

    A source whose head has `num_classes` outputs is scored by its own predictions (same label space);
    otherwise by a nearest-class-mean probe on its pooled features.
    """
    scores, kinds = [], []
    for s in sources:
        variables = dict(params=params, batch_stats=batch_stats)
        if params[f"task{s}"]["head"]["kernel"].shape[-1] == num_classes:
            fn = lambda v, b, s=s: isometric.apply(cfg, v["params"], v["batch_stats"], b["image"], task=s)[0]
            scores.append(train.accuracy(fn, variables, images, labels))
            kinds.append("head")
        else:
            fn = lambda v, b, s=s: isometric.apply(cfg, v["params"], v["batch_stats"], b["image"], task=s)[1]["features"]
            scores.append(_centroid_probe(np.asarray(train.predict(fn, variables, images)), np.asarray(labels), seed))
            kinds.append("probe")
    return dict(scores=np.asarray(scores), kind=kinds)


def init_interp(params: Mapping, target: int, num_sources: int, init: Sequence[float] | None = None) -> dict:
    """params with `task{target}/interp` = log(init) (uniform if None): the learned coefficients alpha."""
    w = np.full(num_sources, 1.0 / num_sources) if init is None else np.asarray(init, np.float64)
    if w.shape != (num_sources,):
        raise ValueError(f"Interpolation init must have one weight per source ({num_sources}), got shape {w.shape}.")
    task = dict(params[f"task{target}"], interp=jnp.asarray(np.log(w + LOG_EPS), jnp.float32))
    return dict(params, **{f"task{target}": task})


def with_interpolated_mixture(params: Mapping, target: int, src_logits: jax.Array) -> dict:
    """params whose `task{target}/mixture` is rebuilt from softmax(`task{target}/interp`) over src_logits."""
    task = params[f"task{target}"]
    mixture = interpolate_logits(src_logits, jax.nn.softmax(task["interp"]))
    return dict(params, **{f"task{target}": dict(task, mixture=mixture)})


def learned_interpolation_loss(base_loss_fn, target: int, src_logits: jax.Array):
    """Wrap a train.fit loss so the target's xi is the learned interpolation of the (constant) source xi."""
    src_logits = jax.lax.stop_gradient(jnp.asarray(src_logits))

    def loss_fn(params, batch_stats, batch, rng):
        return base_loss_fn(with_interpolated_mixture(params, target, src_logits), batch_stats, batch, rng)
    return loss_fn


def materialize(params: Mapping, target: int, src_logits: jax.Array) -> tuple[dict, np.ndarray]:
    """(params with the interpolated xi stored as `task{target}/mixture` and alpha removed, weights w)."""
    params = with_interpolated_mixture(params, target, src_logits)
    task = dict(params[f"task{target}"])
    w = np.asarray(jax.nn.softmax(task.pop("interp")))
    return dict(params, **{f"task{target}": task}), w


def learned_interp_rules(target: int, interp_lr_mult: float) -> list[tuple[str, float]]:
    """Only alpha, the target's BN patch and head train; its stored xi is overwritten by the loss."""
    tgt = f"task{target}"
    return [(rf"{tgt}/interp", interp_lr_mult), (rf"{tgt}/mixture", 0.0), (rf"{tgt}/(bn|head)/.*", 1.0)]
