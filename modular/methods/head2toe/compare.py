"""The paper's per-target comparison (Evci et al. 2022, Table 1) under one protocol, for one task and seed.

Every method gets the same steps grid (`settings.steps`) and a learning-rate grid for its optimiser family
(`settings.lrs` for linear heads on cached features; `settings.network_lrs` for networks trained with Adam,
whose optimum lies far lower), plus its own regulariser grid (Head2Toe: F x group-lasso coefficient; All+l1/l2/l2,1: a coefficient grid; layer-wise:
the coefficient of its scoring head, at Head2Toe's chosen feature count). Every choice is made on a
validation split carved from the task's training data; the chosen setting is then retrained on all the
training data and the test set is read once. Methods on cached features train their whole grid in one
compiled program per steps value (`grid.train_grid`); fine-tuning, training from scratch and Head2Toe-FT
train one network per grid point.
"""
from __future__ import annotations

import dataclasses
import math
import time

import ml_collections
import numpy as np

from modular import data, optim, protocol, rng, supervised, train
from modular.data import splits
from modular.methods.head2toe import costs, features, finetune, grid, select

HEAD_METHODS = ("linear", "all_l1", "all_l2", "all_l21", "layerwise", "layerwise_group", "head2toe")
BACKBONE_METHODS = ("finetune", "scratch", "head2toe_ft")
METHODS = HEAD_METHODS + BACKBONE_METHODS
# Grid values beyond which no setting exists, so a choice there is no grid edge (`protocol.grid_edges`):
# a fraction of 1.0 keeps every feature, a coefficient of 0 does not regularise.
GRID_BOUNDS = dict(fraction=[1.0], coef=[0.0])


@dataclasses.dataclass(frozen=True)
class Pair:
    """Cached features to train on (x, y) and to score on (x_eval, y_eval): (fit, validation) or (train, test)."""
    x: np.ndarray
    y: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


class Heads:
    """The methods that train linear heads on one task's cached features, for one seed.

    `run` trains the points of several methods together: first every head that sees unselected features
    (Linear, All+reg, the scoring heads), then every head refitted on selected features, each stage one
    compiled program per steps value."""

    def __init__(self, num_classes: int, layers: dict, pre_logits: np.ndarray, *, batch_size: int, seed: int):
        self.k, self.layers = num_classes, layers
        self.slices = tuple(layers.values())
        self.num_features = max(b for _, b in self.slices)
        self.pre_mask = np.zeros(self.num_features, np.float32)
        self.pre_mask[pre_logits] = 1.0     # the cache's layers are unit-norm already: no re-normalisation
        self.batch_size, self.seed = batch_size, seed

    def _stage(self, pair: Pair, jobs: list[dict], renormalise: bool):
        """jobs {lr, steps, coefs [4], mask, stream} -> ([J] accuracies on pair's eval part, [J] heads)."""
        acc, heads = np.full(len(jobs), np.nan), [None] * len(jobs)
        for steps in sorted({j["steps"] for j in jobs}):
            idx = [i for i, j in enumerate(jobs) if j["steps"] == steps]
            masks = np.stack([jobs[i]["mask"] for i in idx])
            out = grid.train_grid(pair.x, pair.y, self.k, steps=steps, lrs=[jobs[i]["lr"] for i in idx],
                                  coefs=np.stack([jobs[i]["coefs"] for i in idx]),
                                  keys=[rng.key(self.seed, jobs[i]["stream"]) for i in idx], masks=masks,
                                  layers=self.slices, renormalise=renormalise, batch_size=self.batch_size,
                                  batch_seed=rng.seed(self.seed, "head_batches"))
            a = grid.grid_accuracy(out, pair.x_eval, pair.y_eval, masks=masks, layers=self.slices,
                                   renormalise=renormalise)
            for j, i in enumerate(idx):
                acc[i], heads[i] = a[j], {"w": out["w"][j], "b": out["b"][j]}
        return acc, heads

    def run(self, pair: Pair, points: dict) -> dict:
        """{method: [point, ...]} -> {method: ([accuracy per point], {'masks', 'heads'} where selected)}.

        head2toe: l2,1 scores of every feature -> the top fraction F -> a fresh head on those.
        layerwise / layerwise_group: whole layers up to exactly round(F * D) features, ranked by the mean l2,1
        score of their features, or by the block norm under a lasso whose groups are the layers."""
        ones = np.ones(self.num_features, np.float32)
        plain, owners = [], []
        regs = dict(linear="none", all_l1="l1", all_l2="l2", all_l21="l21")
        for m, reg in regs.items():
            for i, p in enumerate(points.get(m, [])):
                plain.append(dict(lr=p["lr"], steps=p["steps"], coefs=grid.penalty_row(reg, p.get("coef", 0.0)),
                                  mask=self.pre_mask if m == "linear" else ones,
                                  stream="linear" if m == "linear" else f"all_{reg}"))
                owners.append((m, i))
        scorer_of = {}
        for m in ("head2toe", "layerwise", "layerwise_group"):
            reg = "l21_layers" if m == "layerwise_group" else "l21"
            for p in points.get(m, []):
                key = (reg, p["lr"], p["steps"], p["coef"])
                if key not in scorer_of:
                    scorer_of[key] = len(plain)
                    plain.append(dict(lr=p["lr"], steps=p["steps"], coefs=grid.penalty_row(reg, p["coef"]), mask=ones,
                                      stream="scoring_head" if reg == "l21" else "layer_scoring_head"))
        acc, heads = self._stage(pair, plain, renormalise=False)
        out = {m: (np.full(len(points[m]), np.nan), {}) for m in points}
        for (m, i), a in zip(owners, acc):
            out[m][0][i] = a
        refits, refit_owners = [], []
        for m in ("head2toe", "layerwise", "layerwise_group"):
            reg = "l21_layers" if m == "layerwise_group" else "l21"
            for i, p in enumerate(points.get(m, [])):
                w = heads[scorer_of[(reg, p["lr"], p["steps"], p["coef"])]]["w"]
                if m == "head2toe":
                    mask = select.top_fraction_mask(np.linalg.norm(w, axis=1), p["fraction"])
                elif m == "layerwise":
                    mask = select.layerwise_mask(np.linalg.norm(w, axis=1), self.layers, p["fraction"])
                else:
                    score = {n: np.linalg.norm(w[a:b]) for n, (a, b) in self.layers.items()}
                    mask = select.layer_ranking_mask(score, self.layers, select.num_kept(len(w), p["fraction"]))
                refits.append(dict(lr=p["lr"], steps=p["steps"], coefs=grid.penalty_row("none", 0.0), mask=mask,
                                   stream=f"{m}_selected_head"))
                refit_owners.append((m, i))
        if refits:
            acc, heads = self._stage(pair, refits, renormalise=True)
            for (m, i), a, job, head in zip(refit_owners, acc, refits, heads):
                out[m][0][i] = a
                out[m][1].setdefault("masks", []).append(job["mask"])
                out[m][1].setdefault("heads", []).append(head)
        return out


def _timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def _tune_and_test(method, points, val, test) -> dict:
    """Score every point on validation, keep the best (ties: the earliest), retrain it on all the training
    data and read the test set once. Returns chosen, validation, test accuracy, extras, both timings."""
    (val_acc, _), t_grid = _timed(method, val, points)
    chosen, val_score = protocol.select(points, list(val_acc))
    (test_acc, extras), t_refit = _timed(method, test, [chosen])
    return dict(chosen=chosen, validation=val_score, accuracy=float(test_acc[0]), extras=extras,
                grid_points=[dict(p) for p in points],
                grid_validation=[None if not np.isfinite(v) else float(v) for v in val_acc],
                seconds=dict(grid=t_grid, refit=t_refit))


def _tune_and_test_heads(heads: Heads, grids: dict, fractions, val: Pair, test: Pair) -> tuple[dict, dict]:
    """`_tune_and_test` for every head method at once (one program per stage and steps value). Layer-wise
    selection is trained at every F and chosen among the points at Head2Toe's chosen F (equal counts)."""
    points = {m: grids[m] for m in HEAD_METHODS}
    for m in ("layerwise", "layerwise_group"):
        points[m] = [dict(p, fraction=f) for p in grids[m] for f in fractions]
    val_out, t_grid = _timed(heads.run, val, points)
    chosen = {}
    for m in ("linear", "all_l1", "all_l2", "all_l21", "head2toe", "layerwise", "layerwise_group"):
        pts, acc = points[m], val_out[m][0]
        if m.startswith("layerwise"):
            keep = [i for i, p in enumerate(pts) if p["fraction"] == chosen["head2toe"][0]["fraction"]]
            pts, acc = [pts[i] for i in keep], acc[keep]
        chosen[m] = protocol.select(pts, list(acc)) + ([dict(p) for p in pts],
                                                       [None if not np.isfinite(v) else float(v) for v in acc])
    test_out, t_refit = _timed(heads.run, test, {m: [c[0]] for m, c in chosen.items()})
    runs = {m: dict(chosen=c, validation=v, grid_points=p, grid_validation=g, accuracy=float(test_out[m][0][0]),
                    extras=test_out[m][1], seconds={}) for m, (c, v, p, g) in chosen.items()}
    return runs, dict(grid=t_grid, refit=t_refit)


def grid_axes(h: ml_collections.ConfigDict) -> dict:
    """method -> {axis: values} it searches: lr (its optimiser family's range) x steps x its regulariser axes.
    Layer-wise selection is chosen at Head2Toe's chosen F, so F is not one of its searched axes."""
    steps = [int(v) for v in (h.steps if isinstance(h.steps, (list, tuple)) else [h.steps])]
    head_lrs = [float(v) for v in h.lrs]
    network_lrs = [float(v) for v in (h.get("network_lrs") or h.lrs)]
    reg = {"all_l1": dict(coef=list(h.baseline_coefs.l1)), "all_l2": dict(coef=list(h.baseline_coefs.l2)),
           "all_l21": dict(coef=list(h.baseline_coefs.l21)), "head2toe": dict(coef=list(h.coefs), fraction=list(h.fractions)),
           "layerwise": dict(coef=list(h.coefs)), "layerwise_group": dict(coef=list(h.coefs))}
    return {m: dict(lr=network_lrs if m in BACKBONE_METHODS else head_lrs, steps=steps, **reg.get(m, {}))
            for m in METHODS}


def settings_grids(h: ml_collections.ConfigDict) -> dict:
    """method -> its grid: every combination of `grid_axes`, lr and steps outermost."""
    return {m: protocol.grid(**axes) for m, axes in grid_axes(h).items()}


def compare_on_task(ds: data.Dataset, source: supervised.Classifier, settings: ml_collections.ConfigDict, *,
                    model_cfg: ml_collections.ConfigDict, seed: int, val_fraction: float) -> dict:
    """Every method of `METHODS` that `settings` enables on `ds` for one seed: the grid each was given, the
    setting chosen on validation, its test accuracy, the kept features, time and bytes.

    settings: target_size, lrs, steps (the shared budget), batch_size, fractions, coefs, baseline_coefs
    {l1, l2, l21}, finetune (fine-tuning and scratch), head2toe_ft."""
    h = settings
    k = ds.num_classes
    grids = settings_grids(h)
    cache, t_cache = _timed(features.cache_features, source.model, source.variables, ds.train_images,
                            ds.test_images, h.target_size)
    fit_idx, val_idx = splits.train_test_indices(ds.train_labels, val_fraction, seed)   # = protocol.validation_split
    x, y = cache.train, ds.train_labels
    val = Pair(x[fit_idx], y[fit_idx], x[val_idx], y[val_idx])
    test = Pair(x, y, cache.test, ds.test_labels)
    heads = Heads(k, cache.layers, cache.columns(["pre_logits"]), batch_size=h.batch_size, seed=seed)
    runs, t_heads = _tune_and_test_heads(heads, grids, h.fractions, val, test)
    mask = runs["head2toe"]["extras"]["masks"][0]
    kept = int(mask.sum())
    d = cache.num_features
    result = dict(task=ds.name, seed=seed, num_classes=k, num_train=len(y), num_fit=len(fit_idx),
                  num_validation=len(val_idx), num_test=len(ds.test_labels), total_features=d,
                  selected_features=kept, kept_features=np.flatnonzero(mask).tolist(),
                  layerwise_features={m: int(runs[m]["extras"]["masks"][0].sum()) for m in ("layerwise", "layerwise_group")},
                  features_per_layer={n: b - a for n, (a, b) in cache.layers.items()},
                  kept_per_layer={n: int(mask[a:b].sum()) for n, (a, b) in cache.layers.items()})
    bytes_ = dict(linear=4 * (int(heads.pre_mask.sum()) * k + k), head2toe=4 * (kept * k + k) + math.ceil(d / 8))
    if h.finetune:
        test_start = (mask, runs["head2toe"]["extras"]["heads"][0])
        runs.update(_backbone_methods(ds, source, h, grids, cache, runs["head2toe"]["chosen"], heads, val, test_start,
                                      model_cfg=model_cfg, seed=seed, fit_idx=fit_idx, val_idx=val_idx))
        bytes_["finetune"] = 4 * runs["finetune"].pop("params")
    result["methods"] = {m: {key: v for key, v in r.items() if key not in ("extras", "seconds")}
                         for m, r in runs.items()}
    result["accuracy"] = {m: runs[m]["accuracy"] for m in METHODS if m in runs}
    result["gain_over_linear"] = result["accuracy"]["head2toe"] - result["accuracy"]["linear"]
    result["seconds"] = dict(cache=t_cache, heads=t_heads,
                             **{m: r["seconds"] for m, r in runs.items() if r["seconds"]})
    result["bytes"] = bytes_
    if h.finetune:
        result["domain_affinity"] = result["accuracy"]["linear"] - result["accuracy"]["scratch"]
        result["domain_affinity_validation"] = runs["linear"]["validation"] - runs["scratch"]["validation"]
        # Adaptation work only, at each method's chosen setting, in FLOPs (`costs`); wall times stay in
        # `seconds` (they include compiling, so they compare caches, not methods).
        flops = costs.adaptation_flops(
            source.model, source.variables, image_shape=ds.image_shape, num_train=len(y), batch_size=h.batch_size,
            num_classes=k, num_features=d, finetune_steps=runs["finetune"]["chosen"]["steps"],
            head2toe_steps=runs["head2toe"]["chosen"]["steps"], fractions=h.fractions)
        result["flops"] = flops
        result["cost_ratio"] = dict(
            flops_finetune_over_head2toe_paper=flops["ratio_paper"],
            flops_finetune_over_head2toe_forward_backward=flops["ratio_forward_backward"],
            flops_ceiling=flops["ceiling"],
            bytes_head2toe_over_finetune=bytes_["head2toe"] / bytes_["finetune"],
            bytes_linear_over_finetune=bytes_["linear"] / bytes_["finetune"])
    return result


def _backbone_methods(ds, source, h, grids, cache, h2t_chosen, heads: Heads, val: Pair, test_start, *, model_cfg,
                      seed, fit_idx, val_idx) -> dict:
    """Fine-tuning, scratch and Head2Toe-FT on the shared lr x steps grid, each network trained per point."""
    val_ds = dataclasses.replace(ds, name=f"{ds.name}[val]", train_images=ds.train_images[fit_idx],
                                 train_labels=ds.train_labels[fit_idx], test_images=ds.train_images[val_idx],
                                 test_labels=ds.train_labels[val_idx])
    n_params = []

    def network(init_from, name):
        def run(target: data.Dataset, points):
            acc = []
            for p in points:
                try:
                    a, _, count = finetune.train_model(
                        target, model_cfg=model_cfg, optim_cfg=optim.override(optim.default_config(), lr=p["lr"]),
                        num_steps=p["steps"], batch_size=h.batch_size, seed=seed, init_from=init_from,
                        name=f"{name}_{ds.name}")
                    n_params.append(count)
                except train.NonFiniteLossError:
                    a = math.nan        # a diverged setting scores as such on validation and is never chosen
                acc.append(a)
            return np.asarray(acc), {}
        return run

    out = {"finetune": _tune_and_test(network(source.variables, "finetune"), grids["finetune"], val_ds, ds),
           "scratch": _tune_and_test(network(None, "scratch"), grids["scratch"], val_ds, ds)}
    out["finetune"]["params"] = n_params[-1]
    if h.get("head2toe_ft", True):
        # Each phase starts from Head2Toe (its chosen setting) fitted on that phase's training part.
        _, fitted = heads.run(val, {"head2toe": [h2t_chosen]})["head2toe"]
        starts = {val_ds.name: (fitted["masks"][0], fitted["heads"][0]), ds.name: test_start}

        def run(target: data.Dataset, points):
            mask, head = starts[target.name]
            acc = []
            for p in points:
                try:
                    a, _ = finetune.head2toe_ft(
                        target, source, layers=cache.layers, mask=mask, head=head, target=h.target_size,
                        optim_cfg=optim.override(optim.default_config(), lr=p["lr"]), num_steps=p["steps"],
                        batch_size=h.batch_size, seed=seed)
                except train.NonFiniteLossError:
                    a = math.nan
                acc.append(a)
            return np.asarray(acc), {}
        out["head2toe_ft"] = _tune_and_test(run, grids["head2toe_ft"], val_ds, ds)
    return out
