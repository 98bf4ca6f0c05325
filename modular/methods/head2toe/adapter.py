"""Head2Toe as a bank entry: frozen source model + target data -> a sparse head and its small task file."""
from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from modular import bank, checkpoint, data, params as P, supervised
from modular.methods.head2toe import features, heads, select, serving


def adapt(source: supervised.Classifier, ds: data.Dataset, *, target_size: int, fractions, coefs, lrs,
          steps: int, folds: int, seed: int, bank_path: str, meta: Mapping) -> bank.Adapted:
    """Head2Toe on the frozen source model: cached features of every layer, the CV grid (skipped when it
    has one point), a sparse head. The bank file holds the kept feature indices and the head's rows for
    them, nothing else; `info` holds the chosen setting and how many features were kept."""
    start = time.perf_counter()
    cache = features.cache_features(source.model, source.variables, ds.train_images, ds.test_images, target_size)
    x, y, k = cache.train, ds.train_labels, ds.num_classes
    if len(fractions) * len(coefs) * len(lrs) == 1:  # nothing to choose: skip the k-fold fits
        best = dict(fraction=fractions[0], coef=coefs[0], lr=lrs[0], val_accuracy=None)
    else:
        best, _ = select.cross_validate(x, y, k, fractions=list(fractions), coefs=list(coefs), lrs=list(lrs),
                                        steps=steps, folds=folds, seed=seed)
    mask, head, _ = select.head2toe(x, y, k, fraction=best["fraction"], coef=best["coef"], lr=best["lr"],
                                    steps=steps, seed=seed)
    seconds = time.perf_counter() - start
    accuracy = heads.head_accuracy(head, cache.test * mask, ds.test_labels)
    kept = np.flatnonzero(mask).astype(np.int32)
    private = {"features": kept, "head": {"w": head["w"][kept], "b": head["b"]}}
    chosen = {name: value for name, value in best.items() if value is not None}
    file_bytes = checkpoint.export_subtree(bank_path, private, backbone=source.variables["params"],
                                           meta=dict(meta, target_size=target_size, layers=list(cache.layers), **chosen))
    return bank.Adapted(accuracy, kept.size * k + k, P.count(private), file_bytes, seconds,
                        P.nbytes(source.variables),
                        info=dict(chosen=best, kept=int(kept.size), total_features=int(cache.num_features)))


def adapt_task(backbone, dataset: data.Dataset, config, *, seed: int, workdir: str, bank_path: str,
               meta: Mapping) -> bank.Adapted:
    """`adapt` as a bank adapter (`modular.adapters`, method 'head2toe'): the settings are `config.head2toe`
    (target_size, fractions, coefs, lrs, steps, folds); `backbone` is a `backbone.Backbone`. Trains no
    network, so nothing goes under `workdir`."""
    h = config.head2toe
    adapted = adapt(backbone.classifier, dataset, target_size=h.target_size, fractions=list(h.fractions),
                    coefs=list(h.coefs), lrs=list(h.lrs), steps=h.steps, folds=h.folds, seed=seed,
                    bank_path=bank_path, meta=meta)
    chosen = {k: v for k, v in adapted.info["chosen"].items() if v is not None}
    adapted.server, adapted.entry = serving.__name__, dict(mode=None, chosen=chosen)
    return adapted
