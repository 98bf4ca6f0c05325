"""Adapt a saved backbone to the user's data and add the task to a bank (configs/adapt.py).

Only the method's task-private subtree trains, on the frozen backbone. Patch methods choose their learning
rate on a validation split carved from the training data, then train on all of it; Head2Toe chooses its
feature fraction and regularisation by k-fold cross-validation on the training data. The test split is
read once, for the reported accuracy.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from configs.adapt import METHODS
from modular import backbone as backbone_lib, bank, data, optim
from modular.data import splits
from modular.methods import head2toe, patches
from modular.methods.head2toe import serving as head2toe_serving
from modular.methods.patches import serving as patches_serving
from modular.projection.phases import Phase, phase

PATCH_MODES = {"linear": "last_layer", "sb_patch": "sb_last", "dw_patch": "dw_last", "mixture": "mixture"}


def task_name(config) -> str:
    return config.task or config.data.name


def run_dir(config, workdir: str) -> str:
    """Where this task's runs, config record and results live inside the bank."""
    return os.path.join(workdir, "runs", f"{config.method}-{bank.slug(task_name(config))}")


def _check(config) -> None:
    if config.method not in METHODS:
        raise ValueError(f"Unknown adapt method {config.method!r}; known: {', '.join(METHODS)}.")
    if not config.backbone:
        raise ValueError("config.backbone is empty; give the workdir of a pretrain run (--config.backbone=DIR).")
    if not 0.0 < config.data.val_fraction < 1.0:
        raise ValueError(f"config.data.val_fraction must be in (0, 1), got {config.data.val_fraction}.")


def validation_split(ds: data.Dataset, fraction: float, seed: int) -> data.Dataset:
    """`ds` whose test split is a class-stratified `fraction` of its training data (the test set unread)."""
    fit, val = splits.train_test_indices(ds.train_labels, fraction, seed)
    return dataclasses.replace(ds, train_images=ds.train_images[fit], train_labels=ds.train_labels[fit],
                               test_images=ds.train_images[val], test_labels=ds.train_labels[val])


def _adapt_patch(config, bb, ds, mode, path, meta, workdir) -> tuple[bank.Adapted, dict]:
    kw = dict(model_cfg=bb.model_cfg, num_steps=config.adapt.num_steps, batch_size=config.adapt.batch_size,
              seed=config.seed, log_every=config.log_every)
    val_ds = validation_split(ds, config.data.val_fraction, config.seed)
    val = {}
    for lr in config.adapt.lrs:
        clf, _ = patches.transfer(bb.classifier, val_ds, mode, optim_cfg=optim.override(config.optim, lr=float(lr)),
                                  workdir=os.path.join(workdir, f"val_lr{lr:g}"), **kw)
        val[f"{lr:g}"] = patches.accuracy(clf.model, clf.variables, val_ds.test_images, val_ds.test_labels)
    best = max(val, key=val.get)
    print(f"[adapt] validation accuracy by learning rate: {val}; chosen {best}", flush=True)
    adapted, _ = patches.adapt(bb.classifier, ds, mode, optim_cfg=optim.override(config.optim, lr=float(best)),
                               workdir=os.path.join(workdir, "final"), bank_path=path, meta=meta, **kw)
    return adapted, dict(lr=float(best), val_accuracy=val)


def run(config, workdir: str) -> dict:
    _check(config)
    bb = backbone_lib.load(config.backbone)
    ds = data.load(config.data.name, image_size=bb.image_size, channels=bb.channels, seed=config.seed,
                   max_train=config.data.max_train)
    task, method = task_name(config), config.method
    bank_dir = os.path.join(workdir, bank.BANK_DIR)
    path = bank.task_file(bank_dir, method, task)
    classes = list(ds.class_names) if getattr(ds, "class_names", None) else [str(c) for c in range(ds.num_classes)]
    meta = dict(task=task, method=method, classes=classes, backbone=bb.path)
    if method == "head2toe":
        h = config.head2toe
        adapted = head2toe.adapt(bb.classifier, ds, target_size=h.target_size, fractions=list(h.fractions),
                                 coefs=list(h.coefs), lrs=list(h.lrs), steps=h.steps, folds=h.folds,
                                 seed=config.seed, bank_path=path, meta=meta)
        chosen = {k: v for k, v in adapted.info["chosen"].items() if v is not None}
    else:
        adapted, chosen = _adapt_patch(config, bb, ds, PATCH_MODES[method], path, meta, run_dir(config, workdir))
    server = (head2toe_serving if method == "head2toe" else patches_serving).__name__   # serves the file
    entry = dict(method=method, server=server, mode=PATCH_MODES.get(method), file=os.path.relpath(path, bank_dir),
                 classes=classes, num_classes=ds.num_classes, accuracy=adapted.accuracy, bytes=adapted.file_bytes,
                 trainable=adapted.trainable, backbone=bb.path, image_size=bb.image_size, channels=bb.channels,
                 dataset=ds.name, chosen=chosen)
    manifest = bank.add_to_manifest(bank_dir, task, entry)
    print(f"[adapt] {task} ({method}) on {os.path.basename(bb.path)}: test accuracy {100 * adapted.accuracy:.1f}%, "
          f"{adapted.file_bytes:,} B in {path}; the bank holds {len(manifest)} task(s)", flush=True)
    return dict(accuracy=adapted.accuracy, task=task, method=method, chosen=chosen,
                bank_file=os.path.relpath(path, workdir),
                file_bytes=adapted.file_bytes, trainable=adapted.trainable, full_model_bytes=adapted.full_model_bytes,
                fraction_of_full_model=adapted.file_bytes / adapted.full_model_bytes, adapt_seconds=adapted.seconds,
                test_examples=int(len(ds.test_labels)), bank_tasks=sorted(manifest),
                chance=float(np.max(np.bincount(ds.test_labels)) / len(ds.test_labels)))


# The projection (`python -m experiments.project`, modular.projection.phases): the training phases this
# experiment runs, and what they leave out of the count.
UNCOUNTED = "evaluation; Head2Toe heads on cached features (method head2toe has no network step)"


def phases(config) -> list[Phase]:
    a, mode = config.adapt, PATCH_MODES.get(config.method)
    if mode is None:  # head2toe: linear heads on cached features, not a network step
        return []
    return [phase(config, f"{config.method} (validation grid + final)", batch_size=a.batch_size, steps=a.num_steps,
                  rules=patches.lr_rules(mode), repeats=len(a.lrs) + 1)]
