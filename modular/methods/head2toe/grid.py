"""A whole hyperparameter grid of linear heads on cached features, trained in one compiled program.

Every grid point is one head {w [D, K], b [K]} with its own learning rate, penalty coefficient, feature
mask and initial key; `jax.vmap` over those turns the grid into one program whose forward pass is a single
[B, D] x [D, G*K] matrix product, so a 24-point grid costs little more than one head. The points share the
minibatch sequence (one seed's), which is what "the same data, another hyperparameter" means.

Heads train with Adam and a cosine-decayed learning rate on minibatches of the cached features, like the
official code (and like fine-tuning, so that "steps" means the same for every compared method).

Selected features are re-normalised per layer before the head sees them (`renormalise=True`): each
layer's kept subset is scaled to unit norm per example, as the official code does after its gather. The
cache already holds unit-norm layers, and a per-example positive scale cancels, so re-normalising the kept
columns of the cache equals normalising the kept columns of the raw pooled activations.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

REGULARISERS = ("none", "l1", "l2", "l21", "l21_layers")
PENALTIES = REGULARISERS[1:]   # the columns of a grid's [G, 4] coefficient matrix


def penalty_row(reg: str, coef: float) -> np.ndarray:
    """[4] coefficients of (l1, l2, l21, l21_layers) for one grid point with regulariser `reg`."""
    if reg not in REGULARISERS:
        raise ValueError(f"Unknown regulariser {reg!r}; known: {', '.join(REGULARISERS)}.")
    row = np.zeros(len(PENALTIES), np.float32)
    if reg != "none":
        row[PENALTIES.index(reg)] = coef
    return row


def penalties(w: jax.Array, layers: tuple) -> jax.Array:
    """[4]: l1 sum|W|; l2 sum W^2; l21 the sum of feature rows' L2 norms (group lasso over features);
    l21_layers the sum of each layer's block Frobenius norm (group lasso over layers). Smoothed at 0."""
    return jnp.stack([jnp.sum(jnp.abs(w)), jnp.sum(w ** 2), jnp.sum(jnp.sqrt(jnp.sum(w ** 2, axis=1) + 1e-12)),
                      sum(jnp.sqrt(jnp.sum(w[a:b] ** 2) + 1e-12) for a, b in layers)])


def logits(head: dict, x: jax.Array, mask: jax.Array, layers: tuple, renormalise: bool) -> jax.Array:
    """The head on the kept columns of x; with `renormalise`, each layer's kept subset at unit norm."""
    w = head["w"] * mask[:, None]
    if not renormalise:
        return x @ w + head["b"]
    out = head["b"]
    for a, b in layers:
        xl = x[:, a:b]
        sq = (xl * xl) @ mask[a:b]
        # A layer with nothing kept adds 0; the inner where keeps its gradient finite (fine-tuned features).
        scale = jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
        out = out + scale[:, None] * (xl @ w[a:b])
    return out


def renormalised(x: np.ndarray, mask: np.ndarray, layers) -> np.ndarray:
    """The features a re-normalised head sees: kept columns of each layer at unit norm, the rest 0 (host)."""
    out = np.zeros_like(x)
    for a, b in layers:
        xl = x[:, a:b] * mask[a:b]
        norm = np.linalg.norm(xl, axis=1, keepdims=True)
        out[:, a:b] = np.where(norm > 0, xl / np.where(norm > 0, norm, 1), 0)
    return out


@functools.partial(jax.jit, static_argnames=("num_classes", "layers", "renormalise"))
def _fit_grid(x, y, batch_idx, masks, coefs, lrs, keys, *, num_classes, layers, renormalise):
    steps = batch_idx.shape[0]
    schedule = optax.cosine_decay_schedule(1.0, steps)
    tx = optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(schedule))

    def init(mask, key):
        return {"w": 1e-3 * jax.random.normal(key, (x.shape[1], num_classes)) * mask[:, None],
                "b": jnp.zeros((num_classes,))}

    def one_step(head, opt_state, mask, coef, lr, xb, yb):
        def loss_fn(h):
            ce = optax.softmax_cross_entropy_with_integer_labels(logits(h, xb, mask, layers, renormalise), yb).mean()
            return ce + jnp.dot(coef, penalties(h["w"] * mask[:, None], layers))
        loss, grads = jax.value_and_grad(loss_fn)(head)
        updates, opt_state = tx.update(grads, opt_state, head)
        return optax.apply_updates(head, jax.tree.map(lambda u: -lr * u, updates)), opt_state, loss

    grid_step = jax.vmap(one_step, in_axes=(0, 0, 0, 0, 0, None, None))
    heads = jax.vmap(init)(masks, keys)
    opt_states = jax.vmap(tx.init)(heads)

    def step(carry, idx):
        h, s = carry
        h, s, loss = grid_step(h, s, masks, coefs, lrs, x[idx], y[idx])
        return (h, s), loss

    (heads, _), losses = jax.lax.scan(step, (heads, opt_states), batch_idx)
    return heads, losses[-1]


def batch_indices(n: int, steps: int, batch_size: int | None, seed: int) -> np.ndarray:
    """[steps, B] example indices: shuffled epochs drawn with `seed` (B = n: full batch)."""
    if batch_size is None or batch_size >= n:
        return np.tile(np.arange(n, dtype=np.int32), (steps, 1))
    draw = np.random.default_rng(seed)
    epochs = -(-steps * batch_size // n)
    order = np.concatenate([draw.permutation(n) for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def _padded(n: int) -> int:
    """Grids are padded to a power of two so that grids of similar size share one compiled program."""
    return 1 << max(0, (n - 1).bit_length())


def train_grid(x: np.ndarray, y: np.ndarray, num_classes: int, *, steps: int, lrs, coefs, keys,
               masks: np.ndarray | None = None, layers=(), renormalise: bool = False,
               batch_size: int | None = None, batch_seed: int = 0) -> dict:
    """G heads at once: point g has lrs[g], coefs[g] ([4] penalty coefficients, `penalty_row`), keys[g]
    (its initial weights) and masks[g] (None: every feature).

    Returns host {'w': [G, D, K] (rows of dropped features zero), 'b': [G, K], 'final_loss': [G]};
    a point whose loss became non-finite keeps its non-finite weights and scores NaN."""
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"train_grid needs features [N, D] and labels [N], got {x.shape} and {y.shape}.")
    g = len(lrs)
    coefs = np.asarray(coefs, np.float32).reshape(-1, len(PENALTIES)) if g else np.zeros((0, 4))
    if not (len(coefs) == len(keys) == g) or g == 0:
        raise ValueError(f"train_grid needs one lr, coef row and key per grid point, got {g}, {len(coefs)}, "
                         f"{len(keys)}.")
    masks = np.ones((g, x.shape[1]), np.float32) if masks is None else np.asarray(masks, np.float32)
    layers = tuple((int(a), int(b)) for a, b in layers) or ((0, x.shape[1]),)
    idx = batch_indices(len(y), int(steps), batch_size, batch_seed)
    pad = _padded(g) - g
    rep = lambda a: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a
    heads, final = _fit_grid(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), jnp.asarray(idx),
                             jnp.asarray(rep(masks)), jnp.asarray(rep(coefs)),
                             jnp.asarray(rep(np.asarray(lrs, np.float32))),
                             jnp.stack(list(keys) + [keys[-1]] * pad), num_classes=int(num_classes),
                             layers=layers, renormalise=bool(renormalise))
    w = np.asarray(heads["w"])[:g] * masks[:, :, None]
    return {"w": w, "b": np.asarray(heads["b"])[:g], "final_loss": np.asarray(final)[:g]}


@functools.partial(jax.jit, static_argnames=("layers", "renormalise"))
def _predict_grid(w, b, masks, x, *, layers, renormalise):
    return jax.vmap(lambda w_, b_, m: jnp.argmax(logits({"w": w_, "b": b_}, x, m, layers, renormalise), -1))(
        w, b, masks)


def grid_accuracy(heads: dict, x: np.ndarray, y: np.ndarray, *, masks: np.ndarray | None = None, layers=(),
                  renormalise: bool = False) -> np.ndarray:
    """[G] accuracy of each head of a `train_grid` result on (x, y); NaN for a head with non-finite weights."""
    g = heads["w"].shape[0]
    masks = np.ones((g, x.shape[1]), np.float32) if masks is None else np.asarray(masks, np.float32)
    layers = tuple((int(a), int(b)) for a, b in layers) or ((0, x.shape[1]),)
    pad = _padded(g) - g
    rep = lambda a: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a
    pred = np.asarray(_predict_grid(jnp.asarray(rep(heads["w"])), jnp.asarray(rep(heads["b"])),
                                    jnp.asarray(rep(masks)), jnp.asarray(x, jnp.float32), layers=layers,
                                    renormalise=bool(renormalise)))[:g]
    acc = np.mean(pred == np.asarray(y)[None, :], axis=1)
    finite = np.all(np.isfinite(heads["w"]), axis=(1, 2)) & np.all(np.isfinite(heads["b"]), axis=1)
    return np.where(finite, acc, np.nan)
