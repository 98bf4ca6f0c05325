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


def pm(values: Sequence[float]) -> str:
    """'mean ± SE' in % of per-seed fractions."""
    return _pm(values)


def row_means(per_seed: Sequence[Mapping], part: str) -> dict:
    """{row setting: 'mean ± SE' %} of the 'mean' column of every seed's `part` ('multitask', 'multires') table."""
    rows = [r["setting"] for r in per_seed[0][part]["table"]]
    return {r: _pm([_row(s[part]["table"], "setting", r)["mean"] for s in per_seed]) for r in rows}


def _lrs(value) -> str:
    """A chosen rate, or one per task ('a/b/c') for rows of independent models."""
    return "/".join(f"{v:g}" for v in value) if isinstance(value, (list, tuple)) else f"{value:g}"


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
    with `count_columns` (parameter counts, equal over seeds) copied from the first seed and, where the rows
    hold one, the validation-chosen learning rate of every seed."""
    rows = []
    for i, first in enumerate(tables[0]):
        row = {key: first[key]}
        for c in columns:
            row[c] = _pm([t[i][c] for t in tables])
        for c in count_columns:
            row[c] = f"{first[c]:,}"
        if "lr" in first:
            row["chosen lr per seed"] = ", ".join(_lrs(t[i]["lr"]) for t in tables)
        rows.append(row)
    return reporting.format_table(rows)


def paper_table(paper: Mapping, rows: Sequence[str], ours: Mapping[str, str], *, ours_title: str,
                title: str = "") -> str:
    """The paper's numbers beside ours: one row per our row name, `ours[row]` (a formatted cell), then every
    column of every table in `paper` ({header: {'table', 'rows': {our row: {column: value}}}} as built by
    `paper_columns`); '-' where the paper has no number for that row."""
    table = []
    for r in rows:
        row = {"setting": MODE_LABELS.get(r, r), ours_title: ours.get(r)}
        for header, (source, column) in paper.items():
            row[header] = source.get(r, {}).get(column)
        table.append(row)
    return reporting.format_table(table, ["setting", ours_title] + list(paper), title=title)


def paper_columns(tables: Sequence[tuple[str, Mapping]]) -> dict:
    """{'T1 Flowers': (table rows, 'Flowers'), ...} from [(prefix, paper table {'rows': {row: {col: v}}})]."""
    out = {}
    for prefix, table in tables:
        columns = list(dict.fromkeys(c for cells in table["rows"].values() for c in cells))
        for c in columns:
            out[f"{prefix} {c}"] = (table["rows"], c)
    return out


def paper_gains(rows: Mapping[str, Mapping[str, float]], a: str, b: str) -> list[float]:
    """The paper's a - b (its units, points) on every column where both rows have a number."""
    return [rows[a][c] - rows[b][c] for c in rows[a] if rows[a][c] is not None and rows[b].get(c) is not None]


def _span(values: Sequence[float]) -> str:
    values = sorted(values)
    return f"{values[0]:+.1f} to {values[-1]:+.1f}" if len(values) > 1 else f"{values[0]:+.1f}"


def _row(table: Sequence[Mapping], key: str, name: str) -> Mapping:
    return next(r for r in table if r[key] == name)


def claims(per_seed: Sequence[Mapping], *, paper: Mapping, within_pts: float, cascade_within_pts: float,
           chance: float, fraction: float = 0.5) -> list[dict]:
    """The paper's claims, each judged on the paired per-seed values of the rows it compares, worded as the
    paper states them with its table or figure. Where the paper reports the size of an effect, the claim is
    "at least `fraction` of the paper's mean effect over its datasets" (`protocol.claim_effect`); tolerances
    (`within_pts`, `cascade_within_pts`) are ours and say so."""
    acc = lambda mode: [s["accuracy"][mode] for s in per_seed]
    modes = set(per_seed[0]["accuracy"])
    t1, t3, t4, t5 = (paper[k]["rows"] for k in ("table1", "table3", "table4", "table5"))
    mean_gain = lambda gains: float(sum(gains) / len(gains)) / 100
    out = []
    if {"sb_last", "last_layer"} <= modes:
        g5, g1 = paper_gains(t5, "sb_last", "last_layer"), paper_gains(t1, "sb_last", "last_layer")
        out.append(protocol.claim_effect(
            f"S/B + last layer beats the last layer alone (App. B.1, Table 5, MobileNetV2: {_span(g5)} pts over "
            f"{len(g5)} datasets; Table 1, InceptionV3: {_span(g1)}); judged against half the Table 5 mean.",
            acc("sb_last"), acc("last_layer"), paper_effect=mean_gain(g5), fraction=fraction,
            names=("S/B+last", "last layer")))
    if "sb_only" in modes:
        t1_sb = [v for v in t1["sb_only"].values() if v is not None]
        out.append(protocol.claim_above(
            f"S/B only, the last layer fixed at its random init, still learns the task: above chance (Sec. 3.1, "
            f"Table 1: {min(t1_sb):g}-{max(t1_sb):g}% on 102-196 classes, 'non-trivial').",
            acc("sb_only"), chance, name="S/B only accuracy", scale=100.0, unit="pts"))
    if {"dw_last", "last_layer"} <= modes:
        out.append(protocol.claim_greater(
            "DW + last layer beats the last layer alone (Sec. 3.1, Fig. 2, MobileNetV2: plotted, no number in "
            "the text).", acc("dw_last"), acc("last_layer"), names=("DW+last", "last layer")))
    if {"dw_last_frozen_stats", "last_layer"} <= modes:
        out.append(protocol.claim_greater(
            "DW + last layer beats the last layer alone with the source's BN statistics kept (our control: the "
            "depthwise patch's gain without re-estimated statistics).",
            acc("dw_last_frozen_stats"), acc("last_layer"), names=("DW+last frozen stats", "last layer")))
    if {"dw_last", "sb_last"} <= modes:
        out.append(protocol.claim_greater(
            "DW + last layer beats S/B + last layer (our comparison: Fig. 2 plots both, the text ranks neither).",
            acc("dw_last"), acc("sb_last"), names=("DW+last", "S/B+last")))
    if {"full", "sb_last"} <= modes:
        g = paper_gains(t1, "full", "sb_last")
        out.append(protocol.claim_effect(
            f"Full fine-tuning stays ahead of S/B + last layer (Sec. 3.1, Table 1, InceptionV3: by {_span(g)} "
            f"pts); judged against half the Table 1 mean.",
            acc("full"), acc("sb_last"), paper_effect=mean_gain(g), fraction=fraction, names=("full", "S/B+last")))
    if {"sb_dw_last", "full"} <= modes:
        out.append(protocol.claim_within(
            f"S/B + DW + last layer is within {within_pts:g} pts of full fine-tuning (our criterion: the paper has "
            f"this pair only in Fig. 2's plot).",
            acc("sb_dw_last"), acc("full"), tolerance=within_pts / 100, names=("S/B+DW+last", "full")))
    if {"sb_last", "full"} <= modes:
        ratio = [math.log10(s["lr"]["sb_last"] / s["lr"]["full"]) for s in per_seed]
        out.append(protocol.claim_above(
            "Patches want a larger learning rate than full fine-tuning: S/B + last layer's validation-chosen rate "
            "is above full fine-tuning's (Sec. 3.1; App. B.2, Fig. 9).",
            ratio, 0.0, name="log10(lr S/B+last / lr full)", unit="decades"))
    if {"last_layer", "last_layer_bn_stats"} <= modes:
        g = paper_gains(t5, "last_layer", "last_layer_bn_stats")
        out.append(protocol.claim_greater(
            f"Re-estimating the BN statistics lowers last-layer transfer (App. B.1, Table 5, MobileNetV2: "
            f"source statistics minus re-estimated = {', '.join(f'{v:+.1f}' for v in g)} pts on "
            f"{', '.join(t5['last_layer'])}, lower on {sum(v > 0 for v in g)} of {len(g)}).",
            acc("last_layer"), acc("last_layer_bn_stats"), names=("source statistics", "re-estimated")))
    if all("multitask" in s for s in per_seed):
        mean = lambda name: [_row(s["multitask"]["table"], "setting", name)["mean"] for s in per_seed]
        names = {r["setting"] for r in per_seed[0]["multitask"]["table"]}
        if {"multitask_sb_patch", "independent_full_models"} <= names:
            g = paper_gains(t3, "multitask_sb_patch", "independent_full_models")
            out.append(protocol.claim_within(
                f"Multi-task S/B patches (+ last layer) come close to independently trained models (Sec. 3.2, "
                f"Table 3: {_span(g)} pts); 'close' = within {within_pts:g} pts of the task mean, our criterion.",
                mean("multitask_sb_patch"), mean("independent_full_models"), tolerance=within_pts / 100,
                names=("S/B patches", "independent")))
        if {"multitask_sb_patch", "multitask_shared_all_but_head"} <= names:
            g = paper_gains(t3, "multitask_sb_patch", "multitask_shared_all_but_head")
            out.append(protocol.claim_effect(
                f"Multi-task S/B patches beat sharing everything but the last layer (Sec. 3.2, Table 3: "
                f"{_span(g)} pts); judged against half the Table 3 mean.",
                mean("multitask_sb_patch"), mean("multitask_shared_all_but_head"), paper_effect=mean_gain(g),
                fraction=fraction, names=("S/B patches", "shared all but head")))
    if all("multires" in s for s in per_seed):
        mean = lambda name: [_row(s["multires"]["table"], "setting", name)["mean"] for s in per_seed]
        names = {r["setting"] for r in per_seed[0]["multires"]["table"]}
        if {"sb_patch_per_resolution", "all_shared"} <= names:
            g = paper_gains(t4, "sb_patch_per_resolution", "all_shared")
            out.append(protocol.claim_effect(
                f"An S/B patch per resolution beats one model shared by every resolution (Sec. 3.2, Table 4: "
                f"{_span(g)} pts over {len(g)} resolutions); judged against half the Table 4 mean, on the mean "
                f"over resolutions.", mean("sb_patch_per_resolution"), mean("all_shared"),
                paper_effect=mean_gain(g), fraction=fraction, names=("S/B per resolution", "all shared")))
        if {"sb_patch_per_resolution", "independent_per_resolution"} <= names:
            g = paper_gains(t4, "sb_patch_per_resolution", "independent_per_resolution")
            out.append(protocol.claim_within(
                f"An S/B patch per resolution matches independently trained models (Sec. 3.2, Table 4: {_span(g)} "
                f"pts); 'matches' = within {within_pts:g} pts of the mean over resolutions, our criterion.",
                mean("sb_patch_per_resolution"), mean("independent_per_resolution"), tolerance=within_pts / 100,
                names=("S/B per resolution", "independent")))
        chosen = [s["multires"]["chosen"] for s in per_seed]
        top = [s["multires"]["per_resolution"][-1]["accuracy"] for s in per_seed]
        cascade = paper["cascade"]
        out.append(protocol.claim_within(
            f"The cascade (threshold chosen on validation) keeps the highest resolution's accuracy (Sec. 3.2: the "
            f"same accuracy as the best model); 'keeps' = loses at most {cascade_within_pts:g} pts, our criterion.",
            [c["accuracy"] for c in chosen], top, tolerance=cascade_within_pts / 100,
            names=("cascade", "highest resolution")))
        out.append(protocol.claim_effect(
            f"The cascade (threshold chosen on validation) saves computation against the highest resolution "
            f"(Sec. 3.2: {cascade['cost_saved_pct']:g}% less average cost); judged against half that saving.",
            [1.0 - c["relative_cost"] for c in chosen], [0.0] * len(chosen),
            paper_effect=cascade["cost_saved_pct"] / 100, fraction=fraction, names=("FLOPs saved", "none"),
            unit="% of FLOPs"))
    return out


def multires_cascade_table(per_seed: Sequence[Mapping], paper: Mapping | None = None) -> str:
    """The cascade at its validation-chosen threshold, per seed and as mean ± SE; with `paper` (the paper's
    tables), its Sec. 3.2 cascade beside ours: the best model's Table 4 accuracy (the cascade keeps it, the text
    says) and its average cost."""
    chosen = [s["multires"]["chosen"] for s in per_seed]
    top = [s["multires"]["per_resolution"][-1] for s in per_seed]
    rows = [{"setting": f"highest resolution ({top[0]['resolution']} px) alone",
             "test accuracy %": _pm([t["accuracy"] for t in top]), "FLOPs vs highest %": "100",
             "threshold per seed": "-"},
            {"setting": "cascade, threshold chosen on validation",
             "test accuracy %": _pm([c["accuracy"] for c in chosen]),
             "FLOPs vs highest %": _pm([c["relative_cost"] for c in chosen]),
             "threshold per seed": ", ".join(f"{c['threshold']:g}" for c in chosen)}]
    if paper is not None:
        best = max(paper["table4"]["rows"]["sb_patch_per_resolution"].values())
        cost = paper["cascade"]["cost_saved_pct"]
        for row, paper_cost in zip(rows, (100.0, 100.0 - cost)):
            row.update({"paper accuracy % (Table 4, Sec. 3.2)": best, "paper cost vs highest % (Sec. 3.2)": paper_cost})
    return reporting.format_table(rows)
