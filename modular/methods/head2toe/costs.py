"""Adaptation cost in FLOPs, read from XLA's cost analysis of the programs, counted the way the paper counts.

Wall time measured the compile cache more than the methods (a refit that reuses its grid's program against
one that compiles fresh), so costs are FLOPs: each program is lowered at its shapes and XLA's cost analysis
counts its floating-point operations; nothing runs. Only adaptation work is counted, at the chosen setting:
Head2Toe's one forward pass over the N training images (its feature cache; test features are inference) and
its head steps; fine-tuning's t training steps at batch B.

Two accountings, side by side:
- the paper's (Evci et al. 2022, App. B): fine-tuning costs C_I * t (a forward pass per step) and Head2Toe
  C_I + C_all * t, with the search over F adding the sum of the fractions tried times C_all;
- forward + backward: fine-tuning's steps as they run (forward, backward, no optimizer update).
Whatever Head2Toe does, fine-tuning at t steps of batch B on N images costs at most t * B / N times
Head2Toe's feature pass in the paper's accounting: the ceiling of any "x times cheaper" claim at that scale.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from modular import models, supervised
from modular.methods.head2toe import grid


def program_flops(fn, *args, **static) -> float:
    """FLOPs of `fn(*args)` from XLA's cost analysis of its lowered program (args may be ShapeDtypeStructs)."""
    lowered = (fn if hasattr(fn, "lower") else jax.jit(fn)).lower(*args, **static)
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    if flops is None or not np.isfinite(flops) or flops <= 0:
        raise RuntimeError(f"XLA's cost analysis reported no FLOP count for {getattr(fn, '__name__', fn)!r}.")
    return float(flops)


def _spec(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), dtype)


def backbone_flops(model, variables, image_shape, batch: int, num_classes: int) -> dict:
    """{forward, forward_backward}: the backbone on `batch` images in eval mode, and a fine-tuning step's
    loss and gradient (BN in train mode) for a head of `num_classes` outputs."""
    images = _spec((batch, *image_shape))
    forward = program_flops(lambda v, x: models.apply(model, v, x, mode="eval")[0], variables, images)
    loss_fn = supervised.classification_loss(model)
    params, state = models.split_variables(variables)
    batch_spec = {"image": images, "label": _spec((batch,), jnp.int32)}
    grad = jax.value_and_grad(lambda p, s, b, r: loss_fn(p, s, b, r)[0])
    both = program_flops(grad, params, state, batch_spec, jax.random.key(0))
    del num_classes  # the source's head stands in for the target's: a K-way head is a rounding error here
    return dict(forward=forward, forward_backward=both)


def head_step_flops(num_features: int, num_classes: int, batch: int, num_train: int) -> float:
    """One step of one Head2Toe scoring head (all D features, group lasso, Adam), from the grid's program."""
    one = program_flops(
        grid._fit_grid, _spec((num_train, num_features)), _spec((num_train,), jnp.int32),
        _spec((1, batch), jnp.int32), _spec((1, num_features)), _spec((1, len(grid.PENALTIES))), _spec((1,)),
        jax.random.split(jax.random.key(0), 1), num_classes=int(num_classes), layers=((0, int(num_features)),),
        renormalise=False)
    return one


def adaptation_flops(model, variables, *, image_shape, num_train: int, batch_size: int, num_classes: int,
                     num_features: int, finetune_steps: int, head2toe_steps: int, fractions) -> dict:
    """Both methods' adaptation FLOPs at their chosen settings, in both accountings, and the ceiling t*B/N."""
    per_batch = backbone_flops(model, variables, image_shape, batch_size, num_classes)
    features = per_batch["forward"] * num_train / batch_size          # C_I: one pass over the training images
    head = head_step_flops(num_features, num_classes, batch_size, num_train)
    head2toe = features + head * head2toe_steps * (1.0 + float(np.sum(fractions)))
    paper_ft = per_batch["forward"] * finetune_steps
    fb_ft = per_batch["forward_backward"] * finetune_steps
    return dict(head2toe=head2toe, head2toe_features=features, head2toe_heads=head2toe - features,
                finetune_paper=paper_ft, finetune_forward_backward=fb_ft,
                ratio_paper=paper_ft / head2toe, ratio_forward_backward=fb_ft / head2toe,
                ceiling=finetune_steps * batch_size / num_train)
