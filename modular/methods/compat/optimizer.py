"""The optimiser of one part of a pair (a network, or the shared heads), with the paper's Adam + L2.

`config.optim` keys: name (adam | adamw | sgd | momentum), lr, schedule (any `modular.optim.schedule`,
including the paper's 'step' with decay_at and decay_factor), weight_decay. With name 'adam' a positive
weight_decay is an L2 penalty on every parameter added to the gradient (the classic, coupled form, as in
the paper's Adam + weight decay 1e-7); 'adamw' is the decoupled form of `modular.optim`.
"""
from __future__ import annotations

import ml_collections
import optax

from modular import optim


def build(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """The optimiser for `num_steps` updates of one part (its schedule counts that part's own updates)."""
    lr, wd, name = optim.schedule(cfg, num_steps), float(cfg.get("weight_decay", 0.0)), cfg.get("name", "adam")
    if name == "adam":
        return optax.chain(optax.add_decayed_weights(wd), optax.adam(lr)) if wd else optax.adam(lr)
    if name == "adamw":
        return optax.adamw(lr, weight_decay=wd)
    if name in ("sgd", "momentum"):
        tx = optax.sgd(lr, momentum=float(cfg.get("momentum", 0.9)) if name == "momentum" else None)
        return optax.chain(optax.add_decayed_weights(wd), tx) if wd else tx
    raise ValueError(f"Unknown optimizer {name!r} for compat; known: adam, adamw, sgd, momentum.")
