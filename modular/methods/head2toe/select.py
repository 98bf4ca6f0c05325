"""Feature selection (Head2Toe, feature-wise and layer-wise) and k-fold cross-validation on the training set.

Randomness comes from named streams of one seed: the group-lasso scoring head, the head retrained on the
kept features, and the fold split.
"""
from __future__ import annotations

import itertools

import numpy as np

from modular import rng
from modular.methods.head2toe import heads


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"Feature fraction must be in (0, 1], got {fraction}.")


def num_kept(num_features: int, fraction: float) -> int:
    _check_fraction(fraction)
    return max(1, int(round(fraction * num_features)))


def top_fraction_mask(scores: np.ndarray, fraction: float) -> np.ndarray:
    """1 for the round(F * D) highest-scoring features (ties broken by index), else 0."""
    k = num_kept(len(scores), fraction)
    mask = np.zeros(len(scores), np.float32)
    mask[np.argsort(-scores, kind="stable")[:k]] = 1.0
    return mask


def layer_ranking_mask(layer_scores, layers: dict, kept: int) -> np.ndarray:
    """Exactly `kept` features taken layer by layer, best-scored layer first; the last layer taken is cut in
    column order (the official code's top-k over features that all carry their layer's score)."""
    total = max(b for _, b in layers.values())
    if not 0 < kept <= total:
        raise ValueError(f"Layer-wise selection needs 0 < kept <= {total} features, got {kept}.")
    order = sorted(layers, key=lambda n: -float(layer_scores[n]))
    mask = np.zeros(total, np.float32)
    left = kept
    for name in order:
        a, b = layers[name]
        take = min(left, b - a)
        mask[a:a + take] = 1.0
        left -= take
        if left == 0:
            break
    return mask


def layerwise_mask(scores: np.ndarray, layers: dict, fraction: float) -> np.ndarray:
    """round(F * D) features, whole layers ranked by the mean of their features' scores (the official
    'connectivity_l2layer' scoring), so the count equals feature-wise selection's at the same F."""
    k = num_kept(len(scores), fraction)
    return layer_ranking_mask({n: np.mean(scores[slice(*ab)]) for n, ab in layers.items()}, layers, k)


def feature_scores(x: np.ndarray, y: np.ndarray, num_classes: int, *, coef: float, lr: float, steps: int,
                   seed: int) -> np.ndarray:
    """Relevance of every feature: row norms of a group-lasso (l2,1) regularised head on all features."""
    scorer = heads.train_linear(x, y, num_classes, reg="l21", coef=coef, lr=lr, steps=steps,
                                key=rng.key(seed, "scoring_head"))
    return heads.relevance(scorer)


def selected_head(x: np.ndarray, y: np.ndarray, num_classes: int, mask: np.ndarray, *, lr: float, steps: int,
                  seed: int) -> dict:
    """A fresh unregularised head on the kept features only (its other rows are zero)."""
    return heads.train_linear(x, y, num_classes, lr=lr, steps=steps, mask=mask, key=rng.key(seed, "selected_head"))


def head2toe(x: np.ndarray, y: np.ndarray, num_classes: int, *, fraction: float, coef: float, lr: float,
             steps: int, seed: int = 0) -> tuple[np.ndarray, dict, np.ndarray]:
    """Group-lasso scores on all features -> keep the top fraction -> fresh unregularised head. (mask, head, scores)."""
    scores = feature_scores(x, y, num_classes, coef=coef, lr=lr, steps=steps, seed=seed)
    mask = top_fraction_mask(scores, fraction)
    return mask, selected_head(x, y, num_classes, mask, lr=lr, steps=steps, seed=seed), scores


def fold_indices(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs of a shuffled k-fold split of n examples."""
    if folds < 2 or folds > n:
        raise ValueError(f"Cross-validation needs 2 <= folds <= {n} examples, got {folds}.")
    perm = np.random.default_rng(rng.seed(seed, "cv_folds")).permutation(n)
    parts = np.array_split(perm, folds)
    return [(np.concatenate(parts[:i] + parts[i + 1:]), parts[i]) for i in range(folds)]


def cross_validate(x: np.ndarray, y: np.ndarray, num_classes: int, *, fractions, coefs, lrs, steps: int,
                   folds: int = 3, seed: int = 0) -> tuple[dict, list[dict]]:
    """Mean validation accuracy of every (F, coef, lr) over k folds of the training set; the best setting wins.

    The scoring head depends on (coef, lr) only, so it is trained once per fold and reused for every F.
    """
    for f in fractions:
        _check_fraction(f)
    acc = {}
    for tr, va in fold_indices(len(y), folds, seed):
        for coef, lr in itertools.product(coefs, lrs):
            scores = feature_scores(x[tr], y[tr], num_classes, coef=coef, lr=lr, steps=steps, seed=seed)
            for f in fractions:
                mask = top_fraction_mask(scores, f)
                head = selected_head(x[tr], y[tr], num_classes, mask, lr=lr, steps=steps, seed=seed)
                acc.setdefault((f, coef, lr), []).append(heads.head_accuracy(head, x[va] * mask, y[va]))
    rows = [dict(fraction=f, coef=c, lr=l, val_accuracy=float(np.mean(v))) for (f, c, l), v in acc.items()]
    best = max(rows, key=lambda r: r["val_accuracy"])
    return best, rows
