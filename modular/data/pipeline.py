"""Batching as a pure function of the step, so a resumed run sees exactly the same batches.

There is no iterator state: `batch_at(step)` recomputes which examples belong to that step
from (seed, epoch), which also lets every host of a multi-host run agree without talking.
"""
from __future__ import annotations

import functools
from typing import Iterator

import numpy as np


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


def batch_at(images: np.ndarray, labels: np.ndarray, step: int, batch_size: int, seed: int) -> dict:
    """The training batch of global step `step`: dict(image=[B,H,W,C], label=[B])."""
    idx = batch_indices(len(images), step, batch_size, seed)
    return {"image": images[idx], "label": labels[idx]}


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Iterator[dict]:
    """Every example once, in order, in fixed-size batches so a jitted eval compiles once.

    The last batch is zero-padded; `mask` (float32, 1 = real example) says which rows count.
    """
    n = len(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    for start in range(0, n, batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        real = len(x)
        mask = np.ones(batch_size, np.float32)
        if real < batch_size:
            pad = batch_size - real
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros((pad,) + y.shape[1:], y.dtype)])
            mask[real:] = 0.0
        yield {"image": x, "label": y, "mask": mask}
