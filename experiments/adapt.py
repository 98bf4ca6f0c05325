"""Adapt a saved backbone to the user's data and add the task to a bank (configs/adapt.py).

Only the method's task-private subtree trains, on the frozen backbone. Patch methods choose their learning
rate on a validation split carved from the training data, then train on all of it; Head2Toe chooses its
feature fraction and regularisation by k-fold cross-validation on the training data. The test split is
read once, for the reported accuracy. Each method is the adapter registered under its name
(`modular.adapters`, one signature for all), so this module imports no paper.
"""
from __future__ import annotations

import os

import numpy as np

from configs.adapt import METHODS
from modular import adapters, backbone as backbone_lib, bank, data
from modular.projection.phases import Phase


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
    # The method's registered adapter (modular.adapters) trains, stores the file and names its server.
    adapted = adapters.adapt(method, bb, ds, config, seed=config.seed, workdir=run_dir(config, workdir),
                             bank_path=path, meta=meta)
    chosen = adapted.entry.get("chosen", {})
    entry = dict(method=method, server=adapted.server, mode=None, file=os.path.relpath(path, bank_dir),
                 classes=classes, num_classes=ds.num_classes, accuracy=adapted.accuracy, bytes=adapted.file_bytes,
                 trainable=adapted.trainable, backbone=bb.path, image_size=bb.image_size, channels=bb.channels,
                 dataset=ds.name, chosen=chosen)
    entry.update(adapted.entry)
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
    return adapters.phases(config.method, config)   # the adapter's own (Head2Toe: none, no network step)
