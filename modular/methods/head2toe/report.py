"""Across targets: mean accuracies, the domain-affinity analysis, cost ratios and the two figures.

Works on the per-task dicts `compare_on_task` returns.
"""
from __future__ import annotations

import numpy as np

from modular import reporting
from modular.methods.head2toe.protocol import METHODS


def correlation(a, b) -> float | None:
    """Pearson r, or None when it is undefined (fewer than two points, or a constant series)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def summarize(tasks: list[dict]) -> dict:
    """methods (run on every task), mean accuracy, corr(gain over Linear, domain affinity), mean cost ratios."""
    methods = [m for m in METHODS if all(m in t["accuracy"] for t in tasks)]
    affinity = [t.get("domain_affinity") for t in tasks]
    gains = [t["gain_over_linear"] for t in tasks]
    ratios = {}
    if all("cost_ratio" in t for t in tasks):
        ratios = {k: float(np.mean([t["cost_ratio"][k] for t in tasks])) for k in tasks[0]["cost_ratio"]}
    return dict(methods=methods,
                accuracy={m: float(np.mean([t["accuracy"][m] for t in tasks])) for m in methods},
                affinity_gain_correlation=correlation(affinity, gains) if None not in affinity else None,
                cost_ratios=ratios)


def per_task_table(tasks: list[dict], methods) -> str:
    return reporting.format_table(
        [dict(task=t["task"], affinity=None if t.get("domain_affinity") is None else 100 * t["domain_affinity"],
              **{m: 100 * t["accuracy"][m] for m in methods}, kept=f"{t['selected_features']}/{t['total_features']}")
         for t in tasks], title="Per-task test accuracy (%)")


def plots(tasks: list[dict], workdir: str) -> dict:
    """Fraction of each layer's features kept per task; gain over Linear against domain affinity."""
    layers = list(tasks[0]["kept_per_layer"])
    fig, ax = reporting.new_figure(figsize=(9, 4))
    width = 0.8 / len(tasks)
    for i, t in enumerate(tasks):
        frac = [t["kept_per_layer"][n] / t["features_per_layer"][n] for n in layers]
        ax.bar(np.arange(len(layers)) + i * width, frac, width, label=t["task"])
    ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("fraction of layer's features kept")
    ax.set_title("Head2Toe: features kept per layer")
    ax.legend(fontsize=7)
    paths = {"kept_per_layer": reporting.save_figure(fig, reporting.figure_path(workdir, "kept_per_layer.png"))}
    with_aff = [t for t in tasks if "domain_affinity" in t]
    if with_aff:
        fig, ax = reporting.new_figure(figsize=(5, 4))
        xs = [100 * t["domain_affinity"] for t in with_aff]
        ys = [100 * t["gain_over_linear"] for t in with_aff]
        ax.scatter(xs, ys)
        for t, a, g in zip(with_aff, xs, ys):
            ax.annotate(t["task"], (a, g), fontsize=7)
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_xlabel("domain affinity: Acc_linear - Acc_scratch (points)")
        ax.set_ylabel("Head2Toe gain over Linear (points)")
        paths["gain_vs_affinity"] = reporting.save_figure(fig, reporting.figure_path(workdir, "gain_vs_affinity.png"))
    return paths
