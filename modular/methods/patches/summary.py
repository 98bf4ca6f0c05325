"""The patches experiment's numbers over seeds: mean ± SE tables, the paper's claims judged from intervals.

Every function takes the per-seed records the driver collects (one dict per seed), so the verdicts come
from `modular.protocol` and nothing here is typed by hand.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from modular import protocol, reporting

MODE_LABELS = {
    "last_layer": "last layer",
    "last_layer_bn_stats": "last layer + re-estimated BN statistics",
    "sb_last": "S/B + last layer",
    "sb_only": "S/B only, fixed random last layer",
    "dw_last": "DW + last layer (re-estimated BN statistics)",
    "dw_last_frozen_stats": "DW + last layer, BN statistics frozen",
    "sb_dw_last": "S/B + DW + last layer",
    "full": "full fine-tuning",
}


def _pm(values: Sequence[float], scale: float = 100.0) -> str:
    return format(protocol.estimate([scale * v for v in values]), ".1f")


def transfer_table(per_seed: Sequence[Mapping], modes: Sequence[str], total_params: int) -> str:
    """One row per mode: test accuracy (mean ± SE), values stored per task, trainable, chosen lr per seed."""
    rows = []
    for mode in modes:
        stored = per_seed[0]["stored"][mode]
        rows.append({"mode": MODE_LABELS.get(mode, mode),
                     "test accuracy %": _pm([s["accuracy"][mode] for s in per_seed]),
                     "stored per task": f"{stored:,} ({100 * stored / total_params:.1f}%)",
                     "trainable": f"{per_seed[0]['trainable'][mode]:,}",
                     "chosen lr per seed": ", ".join(f"{s['lr'][mode]:g}" for s in per_seed)})
    return reporting.format_table(rows)


def table_over_seeds(tables: Sequence[Sequence[Mapping]], key: str, columns: Sequence[str],
                     count_columns: Sequence[str]) -> str:
    """Rows of per-seed tables (same order, keyed by `key`) as mean ± SE of `columns` (fractions -> %),
    with `count_columns` (parameter counts, equal over seeds) copied from the first seed."""
    rows = []
    for i, first in enumerate(tables[0]):
        row = {key: first[key]}
        for c in columns:
            row[c] = _pm([t[i][c] for t in tables])
        for c in count_columns:
            row[c] = f"{first[c]:,}"
        rows.append(row)
    return reporting.format_table(rows)


def _row(table: Sequence[Mapping], key: str, name: str) -> Mapping:
    return next(r for r in table if r[key] == name)


def claims(per_seed: Sequence[Mapping], *, within_pts: float, cascade_within_pts: float) -> list[dict]:
    """The paper's claims, each judged on the paired per-seed values of the rows it compares."""
    acc = lambda mode: [s["accuracy"][mode] for s in per_seed]
    modes = set(per_seed[0]["accuracy"])
    out = []
    if {"sb_last", "last_layer"} <= modes:
        out.append(protocol.claim_greater("S/B + last layer beats the last layer alone (Table 1/2).",
                                          acc("sb_last"), acc("last_layer"), names=("S/B+last", "last layer")))
    if {"dw_last", "sb_last"} <= modes:
        out.append(protocol.claim_greater("DW + last layer beats S/B + last layer (Table 2).",
                                          acc("dw_last"), acc("sb_last"), names=("DW+last", "S/B+last")))
    if {"dw_last_frozen_stats", "sb_last"} <= modes:
        out.append(protocol.claim_greater(
            "DW + last layer beats S/B + last layer without re-estimated BN statistics (our control).",
            acc("dw_last_frozen_stats"), acc("sb_last"), names=("DW+last frozen stats", "S/B+last")))
    if {"sb_dw_last", "full"} <= modes:
        out.append(protocol.claim_within(
            f"S/B + DW + last layer is within {within_pts:g} pts of full fine-tuning.",
            acc("sb_dw_last"), acc("full"), tolerance=within_pts / 100, names=("S/B+DW+last", "full")))
    if {"sb_last", "full"} <= modes:
        ratio = [math.log10(s["lr"]["sb_last"] / s["lr"]["full"]) for s in per_seed]
        out.append(protocol.claim_above(
            "Patches want a larger learning rate than full fine-tuning (S/B + last layer's chosen lr > full's).",
            ratio, 0.0, name="log10(lr S/B+last / lr full)", unit="decades"))
    if {"last_layer", "last_layer_bn_stats"} <= modes:
        out.append(protocol.claim_greater(
            "Re-estimated BN statistics worsen last-layer transfer (Appendix B.1, most datasets).",
            acc("last_layer"), acc("last_layer_bn_stats"), names=("source statistics", "re-estimated")))
    if all("multitask" in s for s in per_seed):
        mean = lambda name: [_row(s["multitask"]["table"], "setting", name)["mean"] for s in per_seed]
        names = {r["setting"] for r in per_seed[0]["multitask"]["table"]}
        if {"multitask_sb_patch", "independent_full_models"} <= names:
            out.append(protocol.claim_within(
                f"Multi-task S/B patches come within {within_pts:g} pts of independent models (Table 4).",
                mean("multitask_sb_patch"), mean("independent_full_models"), tolerance=within_pts / 100,
                names=("S/B patches", "independent")))
        if {"multitask_sb_patch", "multitask_shared_all_but_head"} <= names:
            out.append(protocol.claim_greater(
                "Multi-task S/B patches beat sharing everything but the last layer (Table 4).",
                mean("multitask_sb_patch"), mean("multitask_shared_all_but_head"),
                names=("S/B patches", "shared all but head")))
    if all("multires" in s for s in per_seed):
        chosen = [s["multires"]["chosen"] for s in per_seed]
        top = [s["multires"]["per_resolution"][-1]["accuracy"] for s in per_seed]
        out.append(protocol.claim_within(
            f"The cascade (threshold chosen on validation) loses at most {cascade_within_pts:g} pts against the "
            f"highest resolution.", [c["accuracy"] for c in chosen], top, tolerance=cascade_within_pts / 100,
            names=("cascade", "highest resolution")))
        out.append(protocol.claim_above(
            "The cascade (threshold chosen on validation) saves FLOPs against the highest resolution.",
            [1.0 - c["relative_cost"] for c in chosen], 0.0, name="FLOPs saved (fraction)"))
    return out


def multires_cascade_table(per_seed: Sequence[Mapping]) -> str:
    """The cascade at its validation-chosen threshold, per seed and as mean ± SE."""
    chosen = [s["multires"]["chosen"] for s in per_seed]
    top = [s["multires"]["per_resolution"][-1] for s in per_seed]
    rows = [{"setting": f"highest resolution ({top[0]['resolution']} px) alone",
             "test accuracy %": _pm([t["accuracy"] for t in top]), "FLOPs vs highest %": "100",
             "threshold per seed": "-"},
            {"setting": "cascade, threshold chosen on validation",
             "test accuracy %": _pm([c["accuracy"] for c in chosen]),
             "FLOPs vs highest %": _pm([c["relative_cost"] for c in chosen]),
             "threshold per seed": ", ".join(f"{c['threshold']:g}" for c in chosen)}]
    return reporting.format_table(rows)
