"""The tour's adapters: each method as "pretrained model + target data -> accuracy, bank file, cost".

Every adapter calls its method's own code (`patches.transfer`, the template-mixture rules and loss,
Head2Toe's feature cache and selection) and exports the task-private subtree it produced to one bank
file tagged with the backbone it fits, so a leaderboard can compare what each method trains, what it
stores per task and how long adapting takes, on equal terms.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Mapping

import jax
import numpy as np

from modular import checkpoint, data, optim, params as P, supervised, train
from modular.methods import head2toe_features as h2t_features
from modular.methods import head2toe_heads as h2t_heads
from modular.methods import head2toe_select as h2t_select
from modular.methods import patches
from modular.methods import templates as T
from modular.models import isometric

TARGET_TASK = 1   # a template model's new task id: task 0 is the source, so every target compiles alike


@dataclasses.dataclass
class Adapted:
    """One method on one target."""
    accuracy: float
    trainable: int           # task-private parameters that were trained
    stored: int              # values in the bank file (trained ones plus the statistics / indices they need)
    file_bytes: int          # size of the bank file
    seconds: float           # adaptation wall time (training, feature caching, selection), not the export
    full_model_bytes: int    # one stand-alone model of this family: what a bank file stands in for
    resumed: bool = False    # training restored from a checkpoint, so `seconds` is not a full adaptation
    info: dict = dataclasses.field(default_factory=dict)


def adapt_patch(source: supervised.Classifier, ds: data.Dataset, mode: str, *, model_cfg, optim_cfg,
                num_steps: int, batch_size: int, seed: int, workdir: str | None, bank_path: str,
                log_every: int, meta: Mapping) -> tuple[Adapted, supervised.Classifier]:
    """A model-patch transfer mode (last layer, S/B + last layer, full) on the frozen source backbone."""
    start = time.perf_counter()
    clf, trainable = patches.transfer(source, ds, mode, model_cfg=model_cfg, optim_cfg=optim_cfg,
                                      num_steps=num_steps, batch_size=batch_size, seed=seed, workdir=workdir,
                                      log_every=log_every, verbose=True)
    seconds = time.perf_counter() - start
    accuracy = patches.accuracy(clf.model, clf.variables, ds.test_images, ds.test_labels)
    file_bytes = patches.export_patch(bank_path, clf.variables, mode, meta=meta)
    _, private = patches.split_private(clf.variables, mode)
    return Adapted(accuracy, trainable, P.count(private), file_bytes, seconds, P.nbytes(clf.variables),
                   resumed=clf.fit.resumed_from is not None), clf


def train_template_source(cfg, ds: data.Dataset, *, optim_cfg, num_steps: int, batch_size: int, seed: int,
                          mixture_lr_mult: float, entropy_weight: float, workdir: str | None,
                          checkpoint_every: int, log_every: int) -> tuple[dict, dict, train.FitResult]:
    """Templates, adapters and the source task's mixture trained on the source (resumes in workdir)."""
    params, stats = isometric.init(cfg, jax.random.key(seed), ds.image_shape[-1], [ds.num_classes])
    ocfg = optim.override(optim_cfg, lr_mults=T.multitask_rules(mixture_lr_mult, fixed_signature=False),
                          default_mult=1.0)
    tx = optim.build(ocfg, params, num_steps)
    fit = train.fit(state=train.TrainState.create(params, stats, tx), tx=tx,
                    loss_fn=T.multitask_loss(cfg, tasks=[0], signatures={0: None}, entropy_weight=entropy_weight),
                    batch_fn=T.batch_fn({0: ds}, batch_size, seed), num_steps=num_steps, seed=seed,
                    trainable=optim.trainable_mask(params, ocfg), workdir=workdir,
                    checkpoint_every=checkpoint_every, log_every=log_every, name="tour/templates_source")
    params, stats = jax.tree.map(np.asarray, jax.device_get((fit.state.params, fit.state.model_state)))
    return params, stats, fit


def adapt_mixture(cfg, source_params: Mapping, source_stats: Mapping, source_classes: int, ds: data.Dataset, *,
                  optim_cfg, num_steps: int, batch_size: int, seed: int, mixture_lr_mult: float,
                  entropy_weight: float, workdir: str | None, bank_path: str, log_every: int,
                  meta: Mapping) -> Adapted:
    """A new task on frozen templates: its mixture weights (started from the source task's), BN and head train."""
    t = TARGET_TASK
    start = time.perf_counter()
    params, stats = isometric.init(cfg, jax.random.key(seed + 7), ds.image_shape[-1], [source_classes, ds.num_classes])
    params = dict(params, shared=source_params["shared"], task0=source_params["task0"])
    params[f"task{t}"] = dict(params[f"task{t}"], mixture=source_params["task0"]["mixture"])
    stats = dict(stats, task0=source_stats["task0"])
    ocfg = optim.override(optim_cfg, lr_mults=T.transfer_rules(t, "source", mixture_lr_mult), default_mult=0.0)
    tx = optim.build(ocfg, params, num_steps)
    mask = optim.trainable_mask(params, ocfg)
    fit = train.fit(state=train.TrainState.create(params, stats, tx), tx=tx,
                    loss_fn=T.multitask_loss(cfg, tasks=[t], signatures={t: None}, entropy_weight=entropy_weight),
                    batch_fn=T.batch_fn({t: ds}, batch_size, seed), num_steps=num_steps, seed=seed, trainable=mask,
                    workdir=workdir, checkpoint_every=num_steps, log_every=log_every, name="tour/mixture_weights")
    params, stats = jax.tree.map(np.asarray, jax.device_get((fit.state.params, fit.state.model_state)))
    seconds = time.perf_counter() - start
    accuracy = T.evaluate(cfg, params, stats, ds, t)
    private = {"params": params[f"task{t}"], "batch_stats": stats[f"task{t}"]}
    file_bytes = checkpoint.export_subtree(bank_path, private, backbone=params["shared"], meta=meta)
    trainable = optim.trainable_count(params, mask)
    full_model = P.nbytes(params["shared"]) + P.nbytes(private)
    return Adapted(accuracy, trainable, P.count(private), file_bytes, seconds, full_model,
                   resumed=fit.resumed_from is not None, info={"one_hotness": isometric.one_hotness(
                       isometric.mixture_weights(params, t))})


def adapt_head2toe(source: supervised.Classifier, ds: data.Dataset, *, target_size: int, fractions, coefs, lrs,
                   steps: int, folds: int, seed: int, bank_path: str, meta: Mapping) -> Adapted:
    """Head2Toe on the frozen source model: cached features of every layer, a small CV grid, a sparse head.

    The bank file holds the kept feature indices and the head's rows for them, nothing else."""
    start = time.perf_counter()
    cache = h2t_features.cache_features(source.model, source.variables, ds.train_images, ds.test_images, target_size)
    x, y, k = cache.train, ds.train_labels, ds.num_classes
    if len(fractions) * len(coefs) * len(lrs) == 1:  # nothing to choose: skip the k-fold fits
        best = dict(fraction=fractions[0], coef=coefs[0], lr=lrs[0], val_accuracy=None)
    else:
        best, _ = h2t_select.cross_validate(x, y, k, fractions=list(fractions), coefs=list(coefs), lrs=list(lrs),
                                            steps=steps, folds=folds, seed=seed)
    mask, head, _ = h2t_select.head2toe(x, y, k, fraction=best["fraction"], coef=best["coef"], lr=best["lr"],
                                        steps=steps, seed=seed)
    seconds = time.perf_counter() - start
    accuracy = h2t_heads.head_accuracy(head, cache.test * mask, ds.test_labels)
    kept = np.flatnonzero(mask).astype(np.int32)
    private = {"features": kept, "head": {"w": head["w"][kept], "b": head["b"]}}
    file_bytes = checkpoint.export_subtree(bank_path, private, backbone=source.variables["params"],
                                           meta=dict(meta, target_size=target_size, **{k: v for k, v in best.items() if v is not None}))
    return Adapted(accuracy, kept.size * k + k, P.count(private), file_bytes, seconds, P.nbytes(source.variables),
                   info=dict(chosen=best, kept=int(kept.size), total_features=int(cache.num_features)))
