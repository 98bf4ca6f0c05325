"""Printed tables and plots of the compatibility experiments (Fig. 2 sweep, schedules, applications)."""
from __future__ import annotations

import itertools

import numpy as np

from modular import reporting
from modular.methods.compat.recombine import PAPER_FIG2
from modular.methods.compat.schedule import SCHEDULES

TABLE_COLUMNS = ("setting", "paper", "ours", "a_to_b", "b_to_a", "train_stats", "own")


def setting_row(name: str, metrics: dict) -> dict:
    """One row of the Fig. 2 table (percentages) from `evaluate` metrics."""
    return dict(setting=name, paper=PAPER_FIG2.get(name), recombination_accuracy=metrics["recombination_accuracy"],
                chance=metrics["chance"], ours=100 * metrics["recombination_accuracy"],
                a_to_b=100 * metrics["recombination_a_ext_b_head"], b_to_a=100 * metrics["recombination_b_ext_a_head"],
                train_stats=100 * metrics["recombination_accuracy_train_stats"], own=100 * metrics["own_accuracy"])


def settings_table(rows: list[dict], *, schedule: str, task_a: str, task_b: str) -> str:
    return reporting.format_table(rows, list(TABLE_COLUMNS), title=(
        f"Recombination accuracy (%), {schedule} training, a={task_a} b={task_b}, BN batch statistics; "
        f"a_to_b = extractor a + head b on a's test set; train_stats = same with stored BN statistics; "
        f"own = own-task accuracy; chance {100 * rows[0]['chance']:.1f}%"))


def plots(workdir: str, rows: list[dict], matrices: dict, names: tuple[str, str] = ("a", "b")) -> list[str]:
    """Bars of recombination accuracy (paper vs ours) and each setting's 2x2 extractor/head matrix."""
    paths = []
    fig, ax = reporting.new_figure(figsize=(8, 3.6))
    xs = np.arange(len(rows))
    ours = [100 * r["recombination_accuracy"] for r in rows]
    paper = [r["paper"] if r["paper"] is not None else 0.0 for r in rows]
    ax.bar(xs - 0.2, paper, 0.4, label="paper (Fig. 2)", color="#bbbbbb")
    ax.bar(xs + 0.2, ours, 0.4, label="ours", color="#3366aa")
    ax.axhline(100 * rows[0]["chance"], color="k", ls="--", lw=0.8, label="chance")
    ax.set_xticks(xs, [r["setting"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("recombination accuracy (%)")
    ax.legend(fontsize=8)
    paths.append(reporting.save_figure(fig, reporting.figure_path(workdir, "recombination_bars.png")))

    n = len(matrices)
    cols = min(4, n)
    fig, axes = reporting.new_figure(-(-n // cols), cols, figsize=(2.6 * cols, 2.5 * -(-n // cols)), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (setting, m) in zip(axes.flat, matrices.items()):
        ax.imshow(100 * np.asarray(m), vmin=0, vmax=100, cmap="viridis")
        for i, j in itertools.product(range(2), range(2)):
            ax.text(j, i, f"{100 * m[i][j]:.0f}", ha="center", va="center", color="w" if m[i][j] < 0.6 else "k")
        ax.set_xticks([0, 1], [f"head {names[0]}", f"head {names[1]}"], fontsize=7)
        ax.set_yticks([0, 1], [f"ext {names[0]}", f"ext {names[1]}"], fontsize=7)
        ax.set_title(setting, fontsize=8)
    paths.append(reporting.save_figure(fig, reporting.figure_path(workdir, "recombination_matrix.png")))
    return paths


def _summary_row(first: dict, metrics: dict) -> dict:
    return dict(first, recombination=100 * metrics["recombination_accuracy"],
                a_to_b=100 * metrics["recombination_a_ext_b_head"], b_to_a=100 * metrics["recombination_b_ext_a_head"],
                train_stats=100 * metrics["recombination_accuracy_train_stats"], own=100 * metrics["own_accuracy"])


def schedules_table(sched: dict) -> str:
    """`apps.compare_schedules`' result as a table."""
    rows = [_summary_row(dict(schedule=k), v) for k, v in sched.items() if k in SCHEDULES]
    return reporting.format_table(rows, ["schedule", "recombination", "a_to_b", "b_to_a", "train_stats", "own"],
                                  title=f"Joint vs incremental training, {sched['setting']} (%, BN batch statistics)")


def applications_table(apps: dict) -> str:
    """The applications' results (whichever ran) as tables."""
    lines = []
    if "uda" in apps:
        u = apps["uda"]
        rows = [dict(metric=m, before=100 * u["before"][k], bn_stats_only=100 * u["bn_stats_only"][k],
                     after=100 * u["after"][k])
                for m, k in (("target acc, stored BN stats", "target_train_stats"),
                             ("target acc, batch BN stats", "target_bs"),
                             ("source acc, stored BN stats", "source_train_stats"),
                             ("target rotation acc", "target_rotation"))]
        lines.append(reporting.format_table(rows, ["metric", "before", "bn_stats_only", "after"], title=(
            f"UDA via frozen RP head, {u['source']} -> {u['target']} ({u['steps']} steps, %); frozen parts "
            f"unchanged: {u['frozen_parts_unchanged']}")))
    if "fast_transfer" in apps:
        f = apps["fast_transfer"]
        rows = [dict(head=tag, epoch=e["epoch"], batch_stats=100 * e["batch_stats"], train_stats=100 * e["eval"])
                for tag in ("compatible_head", "reinit_head", "independent_head") if tag in f
                for e in f[tag]["curve"]]
        lines.append(reporting.format_table(rows, ["head", "epoch", "batch_stats", "train_stats"], title=(
            f"Fast transfer: extractor a ({f['setting']}) + head, fine-tuned ({f['train_part']}) on {f['task']} "
            f"(test accuracy %)")))
    if "cross_arch" in apps:
        x = apps["cross_arch"]
        rows = [_summary_row(dict(setting=k), v) for k, v in x["settings"].items()]
        lines.append(reporting.format_table(rows, ["setting", "recombination", "a_to_b", "b_to_a", "own"], title=(
            f"Heads shared across architectures via 1x1 adapters ({x['model_a']['name']} vs {x['model_b']['name']}, "
            f"width {x['adapter_width']}; %, BN batch statistics)")))
    return "\n".join(lines)
