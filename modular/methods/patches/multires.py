"""Multi-resolution patches (Mudrakarta et al. 2018, Sec. 3.2 and Table 4): one task seen at several input resolutions.

Every resolution owns an S/B patch (BN gamma/beta and statistics); the backbone and the last layer are
shared, and all train together (multi-task patches with sharing 'sb_shared_head'). At test time a
cascade runs the cheapest resolution first and only escalates the examples whose top softmax
probability is below a threshold, trading accuracy for average cost. The threshold is chosen on a validation
split of the training data (the cheapest one that loses no validation accuracy against the highest
resolution alone); the test set then gives the reported accuracy and cost at that threshold. Costs are XLA's
FLOP counts of the compiled forward pass at each resolution, not a guess from pixel counts. Baselines: one
model shared by every resolution (statistics included) and an independent fine-tuned model per resolution.
Every row chooses its learning rate from one grid on the same validation split (`sweep.sweep_multitask`,
`sweep.sweep`: all rates through one compiled program).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np

from modular import compiled, data, models, params as P, protocol, train
from modular.methods.patches import sweep as sweeps
from modular.methods.patches.multitask import per_task_count, task_variables
from modular.methods.patches.transfer import accuracy, eval_logits, target_start


def check_aligned(datasets: Sequence[data.Dataset]) -> None:
    """The cascade compares one example across resolutions: every version must hold the same labels."""
    first = datasets[0]
    for ds in datasets[1:]:
        if not (np.array_equal(ds.test_labels, first.test_labels) and np.array_equal(ds.train_labels, first.train_labels)):
            raise ValueError(f"Datasets {first.name!r} at different resolutions do not hold the same examples; "
                             f"load them with one seed and split.")


_FLOPS = compiled.ProgramCache(maxsize=64)


def forward_flops(model, variables: Mapping, image_shape: tuple) -> float:
    """FLOPs per example of the eval-mode forward pass, from XLA's cost analysis of the compiled call. They
    depend on shapes alone, so each (model, variable shapes, image shape) is compiled once: another seed's
    variables reuse the count (a new `jax.jit` per call compiled every seed's forward passes again)."""
    try:
        key = (model, compiled.tree_signature(variables), tuple(image_shape))
        hash(key)
    except TypeError:   # a module with an unhashable field: measured every time
        return _measure_flops(model, variables, image_shape)
    return _FLOPS.get(key, lambda: _measure_flops(model, variables, image_shape))


def _measure_flops(model, variables: Mapping, image_shape: tuple) -> float:
    fn = jax.jit(lambda v, x: models.apply(model, v, x, mode="eval")[0])
    cost = fn.lower(variables, np.zeros((1,) + tuple(image_shape), np.float32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", np.prod(image_shape)))


def probabilities(model, variables: Mapping, images: np.ndarray) -> np.ndarray:
    """Softmax class probabilities in eval mode (through the model's one cached, compiled forward pass)."""
    return np.asarray(jax.nn.softmax(train.predict(eval_logits(model), variables, images), axis=-1))


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


def _probabilities(model, variables, datasets, order, split: str) -> list:
    return [probabilities(model, variables[i], getattr(datasets[i], f"{split}_images")) for i in order]


def evaluate(model, params: Mapping, state: Mapping, datasets: Sequence[data.Dataset],
             thresholds: Sequence[float]) -> dict:
    """Per-resolution test accuracy and FLOPs, and the cascade's test accuracy/cost at every threshold."""
    check_aligned(datasets)
    variables = [task_variables(params, state, i) for i in range(len(datasets))]
    costs = [forward_flops(model, v, ds.image_shape) for v, ds in zip(variables, datasets)]
    order = np.argsort(costs)
    probs = _probabilities(model, variables, datasets, order, "test")
    labels = datasets[0].test_labels
    per_resolution = [dict(resolution=int(datasets[i].image_shape[0]), flops=costs[i],
                           relative_cost=costs[i] / costs[order[-1]],
                           accuracy=float(np.mean(p.argmax(-1) == labels))) for i, p in zip(order, probs)]
    curve = [cascade(probs, [costs[i] for i in order], labels, t) for t in thresholds]
    return dict(per_resolution=per_resolution, cascade=curve, costs=[costs[i] for i in order],
                order=[int(i) for i in order], variables=variables)


def choose_threshold(curve: Sequence[Mapping], top_accuracy: float) -> dict:
    """The cheapest cascade point whose accuracy is at least `top_accuracy` (the highest resolution alone);
    the most accurate point when none is. Ties in cost go to the higher accuracy, then the lower threshold."""
    ok = [c for c in curve if c["accuracy"] >= top_accuracy - 1e-12] or [max(curve, key=lambda c: c["accuracy"])]
    return min(ok, key=lambda c: (c["relative_cost"], -c["accuracy"], c["threshold"]))


def _per_resolution_row(setting: str, datasets, accuracies, per_task: int, total: int, lr) -> dict:
    return dict(setting=setting, **{f"{int(ds.image_shape[0])}px": a for ds, a in zip(datasets, accuracies)},
                mean=float(np.mean(accuracies)), per_resolution_params=per_task, total_params=total, lr=lr)


def train_and_evaluate(source, datasets: Sequence[data.Dataset], thresholds: Sequence[float], *, model_cfg,
                       optim_cfg, lrs: Sequence[float], num_steps: int, batch_size: int, seed: int,
                       val_fraction: float = 0.2, baselines: bool = True, sequential: bool = True) -> dict:
    """From the source backbone, on the training data minus a validation split: an S/B patch per resolution
    and one last layer trained together at every rate of `lrs`, the rate chosen by the mean validation
    accuracy over resolutions; the cascade threshold chosen on the same validation split, and its test accuracy
    and cost reported; with `baselines`, one shared model and independent models per resolution, each choosing
    its rate from the same grid on the same validation split. Every row keeps the model its sweep trained at the
    chosen rate (trained on the same data a retrain would use), so the test sets are read once, after choosing."""
    check_aligned(datasets)
    halves = [protocol.validation_split(ds, val_fraction, seed) for ds in datasets]
    fits = [fit for fit, _ in halves]          # the training data minus validation, with the real test arrays
    vals = [val for _, val in halves]
    model, start = target_start(source, model_cfg, datasets[0].num_classes, datasets[0].image_shape, seed)
    common = dict(optim_cfg=optim_cfg, num_steps=num_steps, batch_size=batch_size, seed=seed, sequential=sequential)
    grids, chosen_lr = {}, {}

    def joint(row: str, sharing: str):
        swept = sweeps.sweep_multitask(model, start, fits, vals, sharing, lrs, **common)
        chosen_lr[row], grids[row] = sweeps.choose_rate(lrs, swept["validation"])
        return swept["trees"][[float(v) for v in lrs].index(chosen_lr[row])]

    params, state = joint("sb_patch_per_resolution", "sb_shared_head")
    out = evaluate(model, params, state, fits, thresholds)
    variables, order, costs = out.pop("variables"), out.pop("order"), out.pop("costs")
    val_probs = _probabilities(model, variables, vals, order, "test")
    val_labels = vals[0].test_labels
    val_curve = [cascade(val_probs, costs, val_labels, t) for t in thresholds]
    val_top = float(np.mean(val_probs[-1].argmax(-1) == val_labels))
    chosen = choose_threshold(val_curve, val_top)
    test_at = next(c for c in out["cascade"] if c["threshold"] == chosen["threshold"])
    per_task = per_task_count(params, state)
    out.update(per_resolution_patch_params=per_task, shared_params=P.count(params["shared"]),
               validation_cascade=val_curve, validation_top_accuracy=val_top,
               chosen=dict(threshold=chosen["threshold"], validation_accuracy=chosen["accuracy"],
                           validation_relative_cost=chosen["relative_cost"], accuracy=test_at["accuracy"],
                           relative_cost=test_at["relative_cost"], stopped_at=test_at["stopped_at"]))
    rows = [_per_resolution_row("sb_patch_per_resolution", fits, [r["accuracy"] for r in _by_input(out, fits)],
                                per_task, P.count(params["shared"]) + per_task * len(fits),
                                chosen_lr["sb_patch_per_resolution"])]
    if baselines:
        shared_params, shared_state = joint("all_shared", "none")
        whole = P.count(shared_params["shared"]) + P.count(shared_state["shared"])
        rows.append(_per_resolution_row("all_shared", fits, [
            accuracy(model, task_variables(shared_params, shared_state, i), ds.test_images, ds.test_labels)
            for i, ds in enumerate(fits)], 0, whole, chosen_lr["all_shared"]))
        accuracies, rates, grids["independent_per_resolution"] = [], [], {}
        for fit, val in zip(fits, vals):
            swept = sweeps.sweep(source, fit, val, "full", lrs, model_cfg=model_cfg, verbose=True, **common)
            lr, grids["independent_per_resolution"][f"{int(fit.image_shape[0])}px"] = sweeps.choose_rate(
                lrs, swept["validation"])
            v = swept["variables"][[float(x) for x in lrs].index(lr)]
            accuracies.append(accuracy(model, v, fit.test_images, fit.test_labels))
            rates.append(lr)
        rows.append(_per_resolution_row("independent_per_resolution", fits, accuracies, whole, whole * len(fits),
                                        rates))
    out.update(table=rows, grids=grids)
    return out


def _by_input(out: Mapping, datasets) -> list:
    """The per-resolution rows in the order of `datasets` (evaluate lists them cheapest first)."""
    by = {r["resolution"]: r for r in out["per_resolution"]}
    return [by[int(ds.image_shape[0])] for ds in datasets]
