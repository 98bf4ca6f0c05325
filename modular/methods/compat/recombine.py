"""Evaluating a trained pair: the recombination protocol (paper Sec. 4, App. C.1) and how alike the two
extractors' representations are (App. C.2).

Recombination puts the extractor of one network under the head of the other, with no fine-tuning, and measures
accuracy on the extractor's task over the common classes. BatchNorm runs in two modes: 'batch_stats' (each test
batch normalised by its own statistics, the paper's protocol, since a recombined extractor and head never saw
each other's statistics) and 'eval' (the stored training statistics), reported for comparison.

Similarity: linear CKA (Kornblith et al. 2019) of feature matrices X [n, p] and Y [n, q] of the same n images,
each column centred: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F). It is 1 for representations equal up to a
rotation and isotropic scaling, and near 0 for unrelated ones; it does not need the units to be aligned, so it
says whether the information is alike, while recombination also needs it in the same units (`unit_correlation`
compares units in place).
"""
from __future__ import annotations

import functools
import itertools
from typing import TYPE_CHECKING, Mapping, Sequence

import jax
import numpy as np

from modular import params as P
from modular.methods.compat.model import CompatModules, even_chunks, forward, run_module

if TYPE_CHECKING:
    from modular.methods.compat.training import Pair

# Fig. 2 of the paper (recombination accuracy, %); settings the paper does not report are None.
PAPER_FIG2 = {"independent": 10.6, "DCC": 65.8, "RP": 50.1, "IIW": 25.1, "RP+DCC": None, "IIW+DCC": None,
              "IIW+RP": None, "IIW+RP+DCC": 76.7}

# The metrics that summarise one trained pair in comparisons (schedules, architectures, the tour).
SUMMARY_KEYS = ("recombination_accuracy", "recombination_a_ext_b_head", "recombination_b_ext_a_head",
                "recombination_accuracy_train_stats", "own_accuracy", "own_accuracy_batch_stats", "train_seconds")


def recombined_logits(mods: CompatModules, params: Mapping, stats: Mapping, extractor_of: str, head_of: str,
                      images: np.ndarray, *, mode: str, batch_size: int = 256) -> np.ndarray:
    """Logits of extractor `extractor_of` followed by the task head of `head_of`, with no fine-tuning."""
    if mode not in ("eval", "batch_stats"):
        raise ValueError(f"Recombination BatchNorm mode must be 'eval' or 'batch_stats', got {mode!r}.")
    ext, head = params["tasks"][extractor_of]["extractor"], params["tasks"][head_of]["head"]
    ext_s, head_s = stats["tasks"][extractor_of]["extractor"], stats["tasks"][head_of]["head"]
    return np.concatenate([np.asarray(forward(mods.ext(extractor_of), mods.head(head_of), mode, ext, ext_s, head,
                                              head_s, images[idx]))
                           for idx in even_chunks(len(images), batch_size)])


def recombination_accuracy(mods: CompatModules, params: Mapping, stats: Mapping, extractor_of: str, head_of: str,
                           images: np.ndarray, labels: np.ndarray, common: Sequence[int], *, mode: str) -> float:
    """Accuracy on the extractor's test images of the common classes, argmax over common classes only."""
    common = np.asarray(common)
    keep = np.isin(labels, common)
    if not keep.any():
        raise ValueError("No test example of the extractor's task belongs to the common classes.")
    logits = recombined_logits(mods, params, stats, extractor_of, head_of, images[keep], mode=mode)
    pred = common[np.argmax(logits[:, common], -1)]
    return float(np.mean(pred == labels[keep]))


def task_accuracy(mods: CompatModules, params: Mapping, stats: Mapping, extractor_of: str, head_of: str,
                  images: np.ndarray, labels: np.ndarray, num_classes: int, *, mode: str) -> float:
    """Accuracy of extractor `extractor_of` + task head `head_of` over all `num_classes` labels."""
    return recombination_accuracy(mods, params, stats, extractor_of, head_of, images, labels,
                                  list(range(num_classes)), mode=mode)


def recombine_trees(params: Mapping, stats: Mapping, *, extractor_of: str, into: str) -> tuple[dict, dict]:
    """Trees where network `into` runs the extractor of network `extractor_of` under its own head."""
    src, dst = f"tasks/{extractor_of}/extractor", f"tasks/{into}/extractor"
    return (P.replace_subtree(params, dst, P.get_subtree(params, src)),
            P.replace_subtree(stats, dst, P.get_subtree(stats, src)))


def evaluate(pair: "Pair", ds_a, ds_b) -> dict:
    """Own and recombined accuracies, both BatchNorm modes, on each extractor's task test set."""
    sets = {"a": ds_a, "b": ds_b}
    out = {}
    for mode, tag in (("batch_stats", "bs"), ("eval", "train_stats")):
        for ext, head in itertools.product("ab", "ab"):
            ds = sets[ext]
            out[f"{tag}/{ext}{head}"] = recombination_accuracy(pair.modules, pair.params, pair.stats, ext, head,
                                                               ds.test_images, ds.test_labels, pair.common, mode=mode)
    return dict(
        recombination_accuracy=(out["bs/ab"] + out["bs/ba"]) / 2,
        recombination_a_ext_b_head=out["bs/ab"], recombination_b_ext_a_head=out["bs/ba"],
        recombination_accuracy_train_stats=(out["train_stats/ab"] + out["train_stats/ba"]) / 2,
        recombination_a_ext_b_head_train_stats=out["train_stats/ab"],
        recombination_b_ext_a_head_train_stats=out["train_stats/ba"],
        own_accuracy=(out["train_stats/aa"] + out["train_stats/bb"]) / 2,
        own_accuracy_a=out["train_stats/aa"], own_accuracy_b=out["train_stats/bb"],
        own_accuracy_batch_stats=(out["bs/aa"] + out["bs/bb"]) / 2,
        chance=1.0 / len(pair.common),
        matrix_batch_stats=[[out["bs/aa"], out["bs/ab"]], [out["bs/ba"], out["bs/bb"]]],
        matrix_train_stats=[[out["train_stats/aa"], out["train_stats/ab"]],
                            [out["train_stats/ba"], out["train_stats/bb"]]],
    )


def summary(metrics: Mapping) -> dict:
    """The `SUMMARY_KEYS` of `evaluate` / `training.train_and_evaluate` metrics."""
    return {k: metrics[k] for k in SUMMARY_KEYS}


def val_metrics(mods, params, stats, common, val: dict) -> dict:
    """Recombination and own accuracy (BN batch statistics, the paper's protocol) on validation sets."""
    acc = {f"{e}{h}": recombination_accuracy(mods, params, stats, e, h, val[e].test_images, val[e].test_labels,
                                             common, mode="batch_stats") for e in "ab" for h in "ab"}
    return dict(recombination=(acc["ab"] + acc["ba"]) / 2, a_to_b=acc["ab"], b_to_a=acc["ba"],
                own=(acc["aa"] + acc["bb"]) / 2)


# The extractors' similarity (App. C.2).

def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"linear_cka needs the features of the same n >= 2 images, got {len(x)} and {len(y)}.")
    x, y = x - x.mean(0), y - y.mean(0)
    # Gram form (n x n): cheaper than p x q when features are wider than the image count.
    kx, ky = x @ x.T, y @ y.T
    denom = np.linalg.norm(kx) * np.linalg.norm(ky)
    return float(np.sum(kx * ky) / denom) if denom > 0 else 0.0


def unit_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Mean Pearson correlation of unit i of x with unit i of y over images (units compared in place, as a
    recombined head sees them); constant units count as 0."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    x, y = x - x.mean(0), y - y.mean(0)
    denom = np.sqrt((x ** 2).sum(0) * (y ** 2).sum(0))
    corr = np.where(denom > 0, (x * y).sum(0) / np.where(denom > 0, denom, 1.0), 0.0)
    return float(corr.mean())


@functools.lru_cache(maxsize=16)
def _features_fn(extractor):
    return jax.jit(lambda p, s, x: run_module(extractor, p, s, x, "eval")[0])


def features(mods, params, stats, task: str, images: np.ndarray) -> np.ndarray:
    fn = _features_fn(mods.ext(task))
    p, s = params["tasks"][task]["extractor"], stats["tasks"][task]["extractor"]
    return np.concatenate([np.asarray(fn(p, s, images[i:i + 250])) for i in range(0, len(images), 250)])


def test_metrics(pair: "Pair", ds_a, ds_b, *, similarity_images: int = 500) -> dict:
    """`evaluate` on the test sets plus the two extractors' feature similarity on a's test images
    (linear CKA and per-unit correlation, stored BN statistics)."""
    out = evaluate(pair, ds_a, ds_b)
    x = ds_a.test_images[:similarity_images]
    fa, fb = (features(pair.modules, pair.params, pair.stats, t, x) for t in "ab")
    out.update(cka=linear_cka(fa, fb), unit_correlation=unit_correlation(fa, fb))
    return out
