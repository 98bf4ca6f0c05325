"""Deterministic index selection: stratified train/test splits and class-balanced caps."""
from __future__ import annotations

import dataclasses

import numpy as np


def train_test_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of range(len(labels)), a pure function of `seed`.

    Falls back to an unstratified split when a class is too rare to appear on both sides
    (tiny or mocked datasets), rather than failing.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    from sklearn import model_selection  # slow to import; only needed here

    idx = np.arange(len(labels))
    try:
        train, test = model_selection.train_test_split(idx, test_size=test_fraction, stratify=labels,
                                                       random_state=seed)
    except ValueError:
        train, test = model_selection.train_test_split(idx, test_size=test_fraction, random_state=seed)
    # Sorted: the split is a set, not an order (batching does its own shuffling).
    return np.sort(train), np.sort(test)


def validation_split(ds, fraction: float, seed: int):
    """`ds` (a `data.Dataset`) whose test split is a class-stratified `fraction` of its training data and
    whose training split is the rest: choices are made on it, the real test set stays unread."""
    fit, val = train_test_indices(ds.train_labels, fraction, seed)
    return dataclasses.replace(ds, train_images=ds.train_images[fit], train_labels=ds.train_labels[fit],
                               test_images=ds.train_images[val], test_labels=ds.train_labels[val])


def balanced_subset_indices(labels: np.ndarray, max_size: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `max_size` examples, as class-balanced as possible.

    Shuffles with `seed`, ranks each example within its class and keeps the lowest ranks
    first, so a few-shot cap (10 examples, 10 classes) gets one per class, not a lucky draw.
    """
    if max_size < 1:
        raise ValueError(f"max_train must be a positive integer, got {max_size}.")
    if max_size >= len(labels):
        return np.arange(len(labels))
    perm = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[perm]
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(shuffled):
        where = np.flatnonzero(shuffled == c)
        rank[where] = np.arange(len(where))
    order = np.argsort(rank, kind="stable")
    return np.sort(perm[order[:max_size]])
