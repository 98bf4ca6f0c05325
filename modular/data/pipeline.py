"""Batching as a pure function of the step, so a resumed run sees exactly the same batches.

There is no iterator state: `batch_at(step)` recomputes which examples belong to that step
from (seed, epoch), which also lets every host of a multi-host run agree without talking.
"""
from __future__ import annotations

import functools
from typing import Mapping

import numpy as np

from modular import rng


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng((seed, epoch)).permutation(n)
    perm.setflags(write=False)
    return perm


def batch_indices(num_examples: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Example indices of global step `step`.

    Each epoch is a fresh permutation seeded by (seed, epoch) and split into
    num_examples // batch_size full batches; the remainder of each epoch is dropped, so
    within one epoch no example appears twice and every batch has the same shape.
    """
    if batch_size < 1 or batch_size > num_examples:
        raise ValueError(f"batch_size must be in 1..{num_examples} (the number of examples), got {batch_size}.")
    if step < 0 or seed < 0:
        raise ValueError(f"step and seed must be non-negative, got step={step}, seed={seed}.")
    steps_per_epoch = num_examples // batch_size
    epoch, i = divmod(int(step), steps_per_epoch)
    return _epoch_permutation(num_examples, int(seed), epoch)[i * batch_size:(i + 1) * batch_size]


def batch_at(images: np.ndarray, labels: np.ndarray | None, step: int, batch_size: int, seed: int) -> dict:
    """The training batch of global step `step`: dict(image=[B,H,W,C], label=[B]) (no label if labels is None)."""
    idx = batch_indices(len(images), step, batch_size, seed)
    return {"image": images[idx]} if labels is None else {"image": images[idx], "label": labels[idx]}


def multitask_batch(tasks: Mapping[str, object], step: int, batch_size: int, seed: int) -> dict:
    """The batch of step `step` for several tasks at once: {task: {'image', 'label'}}, the library's one
    multi-task batch layout (loss functions read `batch[task]['image']`).

    `tasks` maps a task name to a `Dataset` (its training split), or to `(images, labels_or_None)` for
    unlabeled data. Each task draws from its own named stream `rng.seed(seed, 'batches', task)`, so adding
    a task leaves the others' batches unchanged.
    """
    out = {}
    for name, src in tasks.items():
        images, labels = (src.train_images, src.train_labels) if hasattr(src, "train_images") else src
        out[str(name)] = batch_at(images, labels, step, min(batch_size, len(images)), rng.seed(seed, "batches", name))
    return out
