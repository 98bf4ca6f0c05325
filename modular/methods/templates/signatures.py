"""Signatures: which template each layer uses. Fixed one-hot ones (paper Table 5) instead of a learned
mixture, and the run structure of a learned mixture's argmax signature (contiguous, "progressive" blocks)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

SIGNATURES = ("learned", "sequential", "cyclic", "random")


def signature(kind: str, depth: int, num_templates: int, seed: int = 0) -> list[int] | None:
    """Template index per layer for a fixed one-hot signature (None = learned mixture).

    sequential: consecutive layers share a template (blocks of L/K layers); cyclic: layer l uses l mod K;
    random: a seeded uniform draw. All use the same K templates, so parameter counts match the learned one.
    """
    if kind not in SIGNATURES:
        raise ValueError(f"Unknown signature {kind!r}; known: {', '.join(SIGNATURES)}.")
    if kind == "learned":
        return None
    if kind == "sequential":
        return [l * num_templates // depth for l in range(depth)]
    if kind == "cyclic":
        return [l % num_templates for l in range(depth)]
    return [int(i) for i in np.random.default_rng(seed).integers(0, num_templates, depth)]


def runs(sig: Sequence[int]) -> list[tuple[int, int]]:
    """(template, length) of each maximal run of consecutive layers using one template, in layer order."""
    out: list[tuple[int, int]] = []
    for t in sig:
        if out and out[-1][0] == int(t):
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((int(t), 1))
    return out


def progressiveness(sig: Sequence[int]) -> float:
    """How much the runs of a signature lengthen with depth, in [-1, 1] (the paper's "progressive" signatures
    use each template for a contiguous block of layers, with longer blocks towards the output).

    With run lengths r_1..r_m in layer order (see `runs`), it is Kendall's tau-a between run position and
    run length: (#pairs i < j with r_i < r_j  -  #pairs with r_i > r_j) / (m (m - 1) / 2). +1: every later run
    is longer; -1: every later run is shorter; 0: no trend, equal lengths, or a single run (m = 1).
    E.g. [0, 1, 1, 2, 2, 2] -> +1, [0, 0, 0, 1, 1, 2] -> -1, cyclic [0, 1, 2, 0, 1, 2] -> 0.
    """
    lengths = [n for _, n in runs(sig)]
    m = len(lengths)
    if m < 2:
        return 0.0
    concordant = sum(np.sign(lengths[j] - lengths[i]) for i in range(m) for j in range(i + 1, m))
    return float(concordant) / (m * (m - 1) / 2)


def signature_stats(sig: Sequence[int]) -> dict:
    """Runs, their count, mean length and progressiveness of one argmax signature (for results.json)."""
    r = runs(sig)
    return dict(runs=[n for _, n in r], num_runs=len(r), mean_run_length=float(np.mean([n for _, n in r])),
                progressiveness=progressiveness(sig))
