"""Fixed one-hot signatures (paper Table 5): which template each layer uses, instead of a learned mixture."""
from __future__ import annotations

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
