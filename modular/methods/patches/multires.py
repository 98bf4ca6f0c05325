"""Multi-resolution patches (Mudrakarta et al. 2018, Sec. 5): one task seen at several input resolutions.

Every resolution owns an S/B patch (BN gamma/beta and statistics); the backbone and the last layer are
shared, and all train together (multi-task patches with sharing 'sb_shared_head'). At test time a
cascade runs the cheapest resolution first and only escalates the examples whose top softmax
probability is below a threshold, trading accuracy for average cost. Costs are XLA's FLOP counts of the
compiled forward pass at each resolution, not a guess from pixel counts.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np

from modular import data, models, params as P
from modular.methods.patches.multitask import per_task_count, task_variables, train_multitask
from modular.methods.patches.transfer import target_start


def check_aligned(datasets: Sequence[data.Dataset]) -> None:
    """The cascade compares one example across resolutions: every version must hold the same labels."""
    first = datasets[0]
    for ds in datasets[1:]:
        if not (np.array_equal(ds.test_labels, first.test_labels) and np.array_equal(ds.train_labels, first.train_labels)):
            raise ValueError(f"Datasets {first.name!r} at different resolutions do not hold the same examples; "
                             f"load them with one seed and split.")


def forward_flops(model, variables: Mapping, image_shape: tuple) -> float:
    """FLOPs per example of the eval-mode forward pass, from XLA's cost analysis of the compiled call."""
    fn = jax.jit(lambda v, x: models.apply(model, v, x, mode="eval")[0])
    cost = fn.lower(variables, np.zeros((1,) + tuple(image_shape), np.float32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", np.prod(image_shape)))


def probabilities(model, variables: Mapping, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax class probabilities in eval mode, in batches."""
    fn = jax.jit(lambda v, x: jax.nn.softmax(models.apply(model, v, x, mode="eval")[0]))
    return np.concatenate([np.asarray(fn(variables, images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])


def cascade(probs: Sequence[np.ndarray], costs: Sequence[float], labels: np.ndarray, threshold: float) -> dict:
    """Resolutions in increasing cost; an example stops at the first whose confidence >= threshold.

    Its cost is the sum of every resolution it ran through (a rejected cheap pass is not free)."""
    n = len(labels)
    decided = np.zeros(n, bool)
    prediction = np.zeros(n, int)
    cost = np.zeros(n)
    stopped_at = np.zeros(len(probs), int)
    for level, (p, c) in enumerate(zip(probs, costs)):
        last = level == len(probs) - 1
        running = ~decided
        cost[running] += c
        accept = running & ((p.max(-1) >= threshold) | last)
        prediction[accept] = p[accept].argmax(-1)
        stopped_at[level] = int(accept.sum())
        decided |= accept
    return dict(threshold=float(threshold), accuracy=float(np.mean(prediction == labels)),
                mean_cost=float(cost.mean()), relative_cost=float(cost.mean() / costs[-1]),
                stopped_at=stopped_at.tolist())


def evaluate(model, params: Mapping, state: Mapping, datasets: Sequence[data.Dataset],
             thresholds: Sequence[float]) -> dict:
    """Per-resolution accuracy and FLOPs, and the cascade's accuracy/cost at every threshold."""
    check_aligned(datasets)
    variables = [task_variables(params, state, i) for i in range(len(datasets))]
    costs = [forward_flops(model, v, ds.image_shape) for v, ds in zip(variables, datasets)]
    order = np.argsort(costs)
    probs = [probabilities(model, variables[i], datasets[i].test_images) for i in order]
    labels = datasets[0].test_labels
    per_resolution = [dict(resolution=int(datasets[i].image_shape[0]), flops=costs[i],
                           relative_cost=costs[i] / costs[order[-1]],
                           accuracy=float(np.mean(p.argmax(-1) == labels))) for i, p in zip(order, probs)]
    curve = [cascade(probs, [costs[i] for i in order], labels, t) for t in thresholds]
    return dict(per_resolution=per_resolution, cascade=curve)


def train_and_evaluate(source, datasets: Sequence[data.Dataset], thresholds: Sequence[float], *, model_cfg,
                       optim_cfg, num_steps: int, batch_size: int, seed: int, workdir: str | None,
                       log_every: int) -> dict:
    """From the source backbone: an S/B patch per resolution and one last layer trained together, then
    `evaluate`, plus the parameter counts (one resolution's patch, the shared part)."""
    model, start = target_start(source, model_cfg, datasets[0].num_classes, datasets[0].image_shape, seed)
    params, state = train_multitask(model, start, datasets, "sb_shared_head", optim_cfg=optim_cfg,
                                    num_steps=num_steps, batch_size=batch_size, seed=seed, workdir=workdir,
                                    log_every=log_every)
    out = evaluate(model, params, state, datasets, thresholds)
    out.update(per_resolution_patch_params=per_task_count(params), shared_params=P.count(params["shared"]))
    return out
