"""The optimiser of one part of a pair (a network, or the shared heads), with the paper's recipe available:
Adam with L2 weight decay folded into the gradient and a step-decayed learning rate.

`config.optim` keys: name (adam | adamw | sgd | momentum), lr, schedule (constant | cosine | warmup_cosine |
step), weight_decay, and for 'step': decay_at (fractions of the run) and decay_factor. With name 'adam' a
positive weight_decay is an L2 penalty on every parameter added to the gradient (the classic, coupled
form, as in the paper's Adam + weight decay 1e-7); 'adamw' is the decoupled form of `modular.optim`.
"""
from __future__ import annotations

import ml_collections
import optax

from modular import optim


def learning_rate(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    if cfg.get("schedule") != "step":
        return optim.schedule(cfg, num_steps)
    factor = float(cfg.get("decay_factor", 0.1))
    at = sorted({max(1, int(round(float(f) * num_steps))) for f in cfg.get("decay_at", (0.5, 0.75))})
    return optax.piecewise_constant_schedule(float(cfg.lr), {b: factor for b in at})


def build(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """The optimiser for `num_steps` updates of one part (its schedule counts that part's own updates)."""
    lr, wd, name = learning_rate(cfg, num_steps), float(cfg.get("weight_decay", 0.0)), cfg.get("name", "adam")
    if name == "adam":
        return optax.chain(optax.add_decayed_weights(wd), optax.adam(lr)) if wd else optax.adam(lr)
    if name == "adamw":
        return optax.adamw(lr, weight_decay=wd)
    if name in ("sgd", "momentum"):
        tx = optax.sgd(lr, momentum=float(cfg.get("momentum", 0.9)) if name == "momentum" else None)
        return optax.chain(optax.add_decayed_weights(wd), tx) if wd else tx
    raise ValueError(f"Unknown optimizer {name!r} for compat; known: adam, adamw, sgd, momentum.")
