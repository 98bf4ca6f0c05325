"""The paper's per-target comparison (Evci et al. 2022, Table 1) on one task and one frozen source model.

Features are cached once; then Linear (pre-logits only), All+l1/l2/l2,1 (every feature, one regulariser),
Head2Toe (group-lasso scores, top fraction F chosen by k-fold CV), layer-wise selection at Head2Toe's
fraction, and optionally fine-tuning, training from scratch (domain affinity = Acc_linear - Acc_scratch)
and Head2Toe-FT, with the time and bytes each costs.
"""
from __future__ import annotations

import math
import time

import ml_collections

from modular import data, optim, rng, supervised
from modular.methods.head2toe import features, finetune, heads, select

METHODS = ("linear", "all_l1", "all_l2", "all_l21", "layerwise", "head2toe", "finetune", "head2toe_ft")


def _timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def compare_on_task(ds: data.Dataset, source: supervised.Classifier, settings: ml_collections.ConfigDict, *,
                    model_cfg: ml_collections.ConfigDict, seed: int) -> dict:
    """Every method of `METHODS` that `settings` enables on `ds`: accuracies, choices, kept features, costs.

    settings: target_size, fractions, coefs, lrs, steps, folds (the CV grid), baseline_coef, baseline_lr
    (the All+reg baselines), finetune, head2toe_ft and finetune_{steps, batch_size, lr}.
    """
    h = settings
    k, y, yt = ds.num_classes, ds.train_labels, ds.test_labels
    cache, t_cache = _timed(features.cache_features, source.model, source.variables, ds.train_images,
                            ds.test_images, h.target_size)
    x, xt, d = cache.train, cache.test, cache.num_features
    acc = {}
    pre = cache.columns(["pre_logits"])
    lin = heads.train_linear(x[:, pre], y, k, lr=h.baseline_lr, steps=h.steps, key=rng.key(seed, "linear"))
    acc["linear"] = heads.head_accuracy(lin, xt[:, pre], yt)
    for reg in ("l1", "l2", "l21"):
        head = heads.train_linear(x, y, k, reg=reg, coef=h.baseline_coef[reg], lr=h.baseline_lr, steps=h.steps,
                                  key=rng.key(seed, "all_features", reg))
        acc[f"all_{reg}"] = heads.head_accuracy(head, xt, yt)
    (best, cv_rows), t_cv = _timed(select.cross_validate, x, y, k, fractions=list(h.fractions), coefs=list(h.coefs),
                                   lrs=list(h.lrs), steps=h.steps, folds=h.folds, seed=seed)
    (mask, head, scores), t_fit = _timed(select.head2toe, x, y, k, fraction=best["fraction"], coef=best["coef"],
                                         lr=best["lr"], steps=h.steps, seed=seed)
    acc["head2toe"] = heads.head_accuracy(head, xt * mask, yt)
    lw_mask = select.layerwise_mask(scores, cache.layers, best["fraction"])
    lw = heads.train_linear(x, y, k, lr=best["lr"], steps=h.steps, mask=lw_mask, key=rng.key(seed, "layerwise"))
    acc["layerwise"] = heads.head_accuracy(lw, xt * lw_mask, yt)
    kept = int(mask.sum())
    result = dict(task=ds.name, num_classes=k, num_train=len(y), num_test=len(yt), total_features=d,
                  selected_features=kept, layerwise_features=int(lw_mask.sum()), chosen=best, cv=cv_rows,
                  features_per_layer={n: b - a for n, (a, b) in cache.layers.items()},
                  kept_per_layer={n: int(mask[a:b].sum()) for n, (a, b) in cache.layers.items()},
                  seconds=dict(cache=t_cache, cross_validation=t_cv, head2toe_fit=t_fit))
    bytes_ = dict(linear=4 * (len(pre) * k + k), head2toe=4 * (kept * k + k) + math.ceil(d / 8))
    if h.finetune:
        optim_cfg = optim.override(optim.default_config(), lr=h.finetune_lr)
        fit_kw = dict(model_cfg=model_cfg, optim_cfg=optim_cfg, num_steps=h.finetune_steps,
                      batch_size=h.finetune_batch_size, seed=seed)
        acc["finetune"], t_ft, n_params = finetune.train_model(ds, init_from=source.variables,
                                                               name=f"finetune_{ds.name}", **fit_kw)
        scratch, _, _ = finetune.train_model(ds, init_from=None, name=f"scratch_{ds.name}", **fit_kw)
        if h.get("head2toe_ft", True):
            acc["head2toe_ft"], result["seconds"]["head2toe_ft"] = finetune.head2toe_ft(
                ds, source, layers=cache.layers, mask=mask, head=head, target=h.target_size, optim_cfg=optim_cfg,
                num_steps=h.finetune_steps, batch_size=h.finetune_batch_size, seed=seed)
        result["scratch_accuracy"] = scratch
        result["domain_affinity"] = acc["linear"] - scratch
        result["seconds"]["finetune"] = t_ft
        bytes_["finetune"] = 4 * n_params
        result["cost_ratio"] = dict(time_head2toe_over_finetune=(t_cache + t_fit) / max(t_ft, 1e-9),
                                    time_with_cv_over_finetune=(t_cache + t_cv + t_fit) / max(t_ft, 1e-9),
                                    bytes_head2toe_over_finetune=bytes_["head2toe"] / bytes_["finetune"],
                                    bytes_linear_over_finetune=bytes_["linear"] / bytes_["finetune"])
    result["bytes"] = bytes_
    result["accuracy"] = acc
    result["gain_over_linear"] = acc["head2toe"] - acc["linear"]
    return result
