"""Unsupervised domain adaptation by moment matching (M3SDA-style) on a few chosen parameters.

The target's features are pulled towards the frozen source model's features by matching their first
and second moments; which parameters may move is decided by the optimizer rules: only the target's
mixture weights xi (the paper's method), or only the input adapter of a plain net (the baseline).
The adversarial variant (ADDA / gradient reversal) below replaces the moment distance by a learned
domain discriminator on the same pooled features.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

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


# --- adversarial (ADDA-style) adaptation of the target's mixture weights -------------------------------
#
# A small domain discriminator D on pooled features says "source" (1) or "target" (0). It lives in the
# same parameter tree under `adversary/...`, so one train.fit loop updates both D and the target's xi;
# the optimizer rules decide that nothing else moves. Two formulations:
#   adda: ADDA's GAN loss with inverted labels. D minimises BCE(D(f_src), 1) + BCE(D(f_tgt), 0) on
#         stop-gradient features; xi minimises BCE(D'(f_tgt), 1) through a stop-gradient copy D' of D.
#         Both terms are summed into one objective, so D and xi update simultaneously each step.
#   grl:  DANN's gradient reversal. One BCE domain loss; D descends it and xi, behind a gradient-reversal
#         layer, ascends it (the minimax form; weaker gradients once D is confident).

ADVERSARIAL = ("adda", "grl")
ADVERSARY = "adversary"


def discriminator_init(rng: jax.Array, in_dim: int, hidden: int = 64) -> dict:
    k1, k2 = jax.random.split(rng)
    he = lambda k, shape: jnp.sqrt(2.0 / shape[0]) * jax.random.normal(k, shape)
    return dict(dense1=dict(kernel=he(k1, (in_dim, hidden)), bias=jnp.zeros((hidden,))),
                dense2=dict(kernel=0.01 * jax.random.normal(k2, (hidden, 1)), bias=jnp.zeros((1,))))


def discriminator_apply(d_params, features: jax.Array) -> jax.Array:
    """[B, D] features -> [B] logits of 'comes from the source domain'."""
    h = jax.nn.relu(features @ d_params["dense1"]["kernel"] + d_params["dense1"]["bias"])
    return (h @ d_params["dense2"]["kernel"] + d_params["dense2"]["bias"])[:, 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gradient_reversal(x: jax.Array, scale: float = 1.0) -> jax.Array:
    """Identity forward; multiplies the incoming gradient by -scale backward."""
    return x


def _grl_fwd(x, scale):
    return x, None


def _grl_bwd(scale, _, g):
    return (-scale * g,)


gradient_reversal.defvjp(_grl_fwd, _grl_bwd)


def _bce(logits: jax.Array, label: float) -> jax.Array:
    """Mean binary cross-entropy of logits against a constant label (1 = source, 0 = target)."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))


def adversarial_terms(d_params, f_src: jax.Array, f_tgt: jax.Array, formulation: str = "adda",
                      weight: float = 1.0) -> tuple[jax.Array, dict]:
    """(objective, metrics): minimising the objective trains D to tell the domains apart and f_tgt to fool it."""
    if formulation not in ADVERSARIAL:
        raise ValueError(f"Unknown adversarial formulation {formulation!r}; known: {', '.join(ADVERSARIAL)}.")
    f_src = jax.lax.stop_gradient(f_src)  # the source model is a constant
    if formulation == "adda":
        d_src, d_tgt = discriminator_apply(d_params, f_src), discriminator_apply(d_params, jax.lax.stop_gradient(f_tgt))
        d_loss = _bce(d_src, 1.0) + _bce(d_tgt, 0.0)
        g_loss = _bce(discriminator_apply(jax.lax.stop_gradient(d_params), f_tgt), 1.0)
        total = d_loss + weight * g_loss
    else:
        d_src, d_tgt = discriminator_apply(d_params, f_src), discriminator_apply(d_params, gradient_reversal(f_tgt, weight))
        d_loss = _bce(d_src, 1.0) + _bce(d_tgt, 0.0)
        g_loss, total = -d_loss, d_loss
    acc = 0.5 * (jnp.mean(d_src > 0) + jnp.mean(d_tgt <= 0))
    return total, dict(disc_loss=d_loss, confusion_loss=g_loss, domain_accuracy=acc)


def add_discriminator(params, rng: jax.Array, feature_dim: int, hidden: int = 64) -> dict:
    """params with a fresh discriminator under `adversary/...` (ignored by isometric.apply)."""
    return dict(params, **{ADVERSARY: discriminator_init(rng, feature_dim, hidden)})


def adversarial_loss(cfg, *, source_params, source_stats, source_task: int, target_task: int,
                     formulation: str = "adda", weight: float = 1.0):
    """loss_fn for train.fit on batches {image_src, image_tgt}; params must hold `adversary/...`.

    Like moment matching: no target labels, the source model is a frozen copy in eval mode and the
    target runs in train mode (its moving BN statistics follow the target domain).
    """
    if formulation not in ADVERSARIAL:
        raise ValueError(f"Unknown adversarial formulation {formulation!r}; known: {', '.join(ADVERSARIAL)}.")

    def loss_fn(params, batch_stats, batch, rng):
        del rng
        _, src, _ = isometric.apply(cfg, source_params, source_stats, batch["image_src"], task=source_task)
        _, tgt, batch_stats = isometric.apply(cfg, params, batch_stats, batch["image_tgt"], task=target_task,
                                              train=True)
        total, metrics = adversarial_terms(params[ADVERSARY], src["features"], tgt["features"], formulation, weight)
        return total, (batch_stats, metrics)
    return loss_fn


def adaptation_rules(tunable: str, discriminator_lr_mult: float = 1.0, tunable_lr_mult: float = 1.0):
    """Rules (default 0 = frozen) for adversarial adaptation: the `tunable` regex and the discriminator."""
    return [(tunable, tunable_lr_mult), (rf"{ADVERSARY}/.*", discriminator_lr_mult)]


def strip_discriminator(params) -> dict:
    return {k: v for k, v in params.items() if k != ADVERSARY}
