"""The recombination protocol (paper Sec. 4, App. C.1): put the extractor of one network under the head
of the other, with no fine-tuning, and measure accuracy on the extractor's task over the common classes.

BatchNorm runs in two modes: 'batch_stats' (each test batch normalised by its own statistics, the paper's
protocol, since a recombined extractor and head never saw each other's statistics) and 'eval' (the stored
training statistics), reported for comparison.
"""
from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np

from modular import params as P
from modular.methods.compat.modules import CompatModules, even_chunks, forward
from modular.methods.compat.schedule import Pair, train_pair

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


def evaluate(pair: Pair, ds_a, ds_b) -> dict:
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


def train_and_evaluate(ds_a, ds_b, **pair_kw) -> tuple[Pair, dict]:
    """`train_pair(ds_a, ds_b, **pair_kw)` and its `evaluate` metrics, with train_seconds and history."""
    pair = train_pair(ds_a, ds_b, **pair_kw)
    return pair, dict(evaluate(pair, ds_a, ds_b), train_seconds=pair.train_seconds, history=pair.history)


def summary(metrics: Mapping) -> dict:
    """The `SUMMARY_KEYS` of `evaluate`/`train_and_evaluate` metrics."""
    return {k: metrics[k] for k in SUMMARY_KEYS}
