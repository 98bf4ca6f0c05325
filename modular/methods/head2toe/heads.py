"""Linear heads on cached features, trained full-batch with optax (the features fit in memory).

One jitted trainer serves every head: the kept-feature mask multiplies the inputs, so selecting a
different fraction F never changes shapes or triggers recompilation (masked columns get zero gradient
and, without regularisation, their zero-initialised rows stay zero).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

REGULARISERS = ("none", "l1", "l2", "l21")


def penalty(w: jax.Array, reg: str) -> jax.Array:
    """l1: sum|W|; l2: sum W^2; l21 (group lasso): sum_i ||W_i||_2 over feature rows (smoothed at 0)."""
    if reg == "none":
        return jnp.zeros(())
    if reg == "l1":
        return jnp.sum(jnp.abs(w))
    if reg == "l2":
        return jnp.sum(w ** 2)
    if reg == "l21":
        return jnp.sum(jnp.sqrt(jnp.sum(w ** 2, axis=1) + 1e-12))
    raise ValueError(f"Unknown regulariser {reg!r}; known: {', '.join(REGULARISERS)}.")


@functools.partial(jax.jit, static_argnames=("num_classes", "reg", "steps"))
def _fit(x, y, mask, coef, lr, key, *, num_classes, reg, steps):
    x = x * mask[None, :]
    params = {"w": 1e-3 * jax.random.normal(key, (x.shape[1], num_classes)) * mask[:, None],
              "b": jnp.zeros((num_classes,))}
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps))

    def loss_fn(p):
        logits = x @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + coef * penalty(p["w"], reg)

    def step(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(g, s, p)
        return (optax.apply_updates(p, updates), s), loss

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params, losses


def train_linear(x: np.ndarray, y: np.ndarray, num_classes: int, *, reg: str = "none", coef: float = 0.0,
                 lr: float = 0.01, steps: int = 500, mask: np.ndarray | None = None,
                 key: jax.Array | None = None) -> dict:
    """Softmax regression on (masked) features: mean cross-entropy + coef * penalty(W). Returns {'w','b'}.

    key: draws the small random initial weights (None: `jax.random.key(0)`)."""
    if reg not in REGULARISERS:
        raise ValueError(f"Unknown regulariser {reg!r}; known: {', '.join(REGULARISERS)}.")
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"train_linear needs features [N, D] and labels [N], got {x.shape} and {y.shape}.")
    mask = np.ones(x.shape[1], np.float32) if mask is None else np.asarray(mask, np.float32)
    params, losses = _fit(jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.asarray(mask), float(coef), float(lr),
                          jax.random.key(0) if key is None else key, num_classes=int(num_classes), reg=reg,
                          steps=int(steps))
    if not np.isfinite(float(losses[-1])):
        raise FloatingPointError(f"Linear head training diverged (loss {float(losses[-1])}) at lr {lr}, coef {coef}.")
    return {"w": np.asarray(params["w"]) * mask[:, None], "b": np.asarray(params["b"])}


def head_accuracy(head: dict, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(x @ head["w"] + head["b"], -1) == y))


def relevance(head: dict) -> np.ndarray:
    """Head2Toe score of each feature: the L2 norm of its outgoing weight row."""
    return np.linalg.norm(head["w"], axis=1)
