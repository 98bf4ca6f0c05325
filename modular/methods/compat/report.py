"""Tables and plots of the compatibility experiments: the study's table and plots, the applications' tables,
and the single-pair rows of the tour (`setting_row`)."""
from __future__ import annotations

import itertools

import numpy as np

from modular import protocol, reporting
from modular.methods.compat.applications import estimates as application_estimates
from modular.methods.compat.recombine import PAPER_FIG2

# The paper's recombination accuracy (%) for the study's rows, where its text gives one: Fig. 2 (Sec. 4), the
# same pretrained weights (Sec. 4: IIW 74.3, IIW+DCC 82.7) and incremental IIW+RP+DCC (Sec. 4: 72.7, over both
# orders, so both of our order rows carry it). The upper bound with own RP heads (85.6) is an own-task accuracy.
PAPER_STUDY = dict(PAPER_FIG2, **{"pretrained IIW": 74.3, "pretrained IIW+DCC": 82.7,
                                  "IIW+RP+DCC, incremental": 72.7, "IIW+RP+DCC, incremental_ba": 72.7})

TABLE_COLUMNS = ("setting", "paper", "ours", "a_to_b", "b_to_a", "train_stats", "own")


def setting_row(name: str, metrics: dict) -> dict:
    """One row of the Fig. 2 table (percentages) from `evaluate` metrics."""
    return dict(setting=name, paper=PAPER_FIG2.get(name), recombination_accuracy=metrics["recombination_accuracy"],
                chance=metrics["chance"], ours=100 * metrics["recombination_accuracy"],
                a_to_b=100 * metrics["recombination_a_ext_b_head"], b_to_a=100 * metrics["recombination_b_ext_a_head"],
                train_stats=100 * metrics["recombination_accuracy_train_stats"], own=100 * metrics["own_accuracy"])


def applications_tables(apps: dict) -> dict:
    """{readme table name: markdown} of the applications that ran: mean ± SE over seeds (%)."""
    tables = {}
    if "uda" in apps:
        u, est = apps["uda"], application_estimates("uda", apps["uda"])
        metrics = (("target acc, stored BN stats", "target_train_stats"), ("target acc, batch BN stats", "target_bs"),
                   ("source acc, stored BN stats", "source_train_stats"), ("target rotation acc", "target_rotation"))
        rows = {label: {c: est[f"{c}/{k}"] for c in ("before", "bn_stats_only", "after")} for label, k in metrics}
        tables["compat_uda"] = protocol.mean_se_table(rows, rows=list(rows), columns=["before", "bn_stats_only", "after"],
                                                      row_title="metric", title=(
            f"UDA via the frozen RP head, {u['source']} -> {u['target']} ({u['setting']} pairs, {u['steps']} steps, "
            f"%, mean ± SE over {len(u['per_seed'])} seeds); frozen parts unchanged: {u['frozen_parts_unchanged']}"))
    if "fast_transfer" in apps:
        f = apps["fast_transfer"]
        est = application_estimates("fast_transfer", f)
        cols = [f"epoch {e}" for e in range(int(f["epochs"]) + 1)] + ["epoch 0 (batch stats)"]
        label = {s: ("re-initialised head" if s == "reinit" else f"recombined ({s}, incremental)") for s in f["starts"]}
        rows = {label[s]: est[s] for s in f["starts"]}
        tables["compat_fast_transfer"] = protocol.mean_se_table(rows, rows=list(rows), columns=cols, row_title="start",
                                                                title=(
            f"Fast transfer: extractor a (pretrained with its RP head) fine-tuned ({f['train_part']}) on {f['task']}, "
            f"test accuracy (%) by epoch, stored BN statistics unless marked; learning rate from {f['lrs']} chosen "
            f"on validation per start and seed; mean ± SE over {len(f['per_seed'])} seeds"))
    if "cross_arch" in apps:
        x = apps["cross_arch"]
        est = application_estimates("cross_arch", x)
        cols = ["transferred_bs", "own_b_bs", "transferred_stored", "own_b_stored", "reference_stored", "old_recombination"]
        a, b = x["model_a"], x["model_b"]
        tables["compat_cross_arch"] = protocol.mean_se_table(est, rows=list(est), columns=cols, row_title="b trained",
                                                             title=(
            f"Head update across architectures: a = {a['name']}-{a['depth']} (width {a['width']}), b = {b['name']}-"
            f"{b['depth']} (width {b['width']}, widen {b.get('widen', 1)}), both trained on {x['task']} classes "
            f"0-{x['old_classes'] - 1} ({x['steps']} steps each, b incrementally against a's frozen heads), 1x1 "
            f"adapters to {x['adapter_width']} channels; then a new {x['new_classes']}-class head trained "
            f"{x['head_steps']} steps on frozen extractor a. transferred = that head on extractor b (no training; "
            f"bs = test-batch BN statistics); own_b = a head trained on extractor b; reference = the head on a; "
            f"old_recombination = {x['old_classes']}-class recombination before the update (%, mean ± SE over "
            f"{len(x['per_seed'])} seeds)"))
    return tables


STUDY_COLUMNS = ("recombination", "a_to_b", "b_to_a", "stored_bn", "own", "cka", "unit_corr")
_STUDY_KEYS = dict(recombination="recombination_accuracy", a_to_b="recombination_a_ext_b_head",
                   b_to_a="recombination_b_ext_a_head", stored_bn="recombination_accuracy_train_stats",
                   own="own_accuracy", cka="cka", unit_corr="unit_correlation")


def study_table(estimates: dict, order: list[str], *, title: str) -> str:
    """Mean ± SE over seeds per variant (accuracies in %, similarities x100), the paper's Fig. 2 beside."""
    rows = {n: {c: estimates[n][k] for c, k in _STUDY_KEYS.items() if k in estimates[n]} for n in order}
    return protocol.mean_se_table(rows, rows=order, columns=list(STUDY_COLUMNS), paper=PAPER_STUDY,
                                  row_title="setting", title=title)


def study_plots(workdir: str, estimates: dict, order: list[str], mean_curves: dict, chosen_step: int) -> list[str]:
    """recombination_matrix.png (setting x direction, mean over seeds) and recombination_curves.png
    (validation recombination vs steps per network, the chosen step marked)."""
    paths = []
    cols = [("a_to_b", "ext a + head b"), ("b_to_a", "ext b + head a"), ("own", "own (stored BN)")]
    m = np.array([[100 * estimates[n][_STUDY_KEYS[c]].mean for c, _ in cols] for n in order])
    fig, ax = reporting.new_figure(figsize=(5.2, 0.42 * len(order) + 1.4))
    ax.imshow(m, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for i, j in itertools.product(range(m.shape[0]), range(m.shape[1])):
        ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", color="w" if m[i, j] < 60 else "k", fontsize=8)
    ax.set_xticks(range(len(cols)), [c for _, c in cols], fontsize=8)
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.set_title("test accuracy (%), mean over seeds\n(recombined: BN batch statistics)", fontsize=9)
    paths.append(reporting.save_figure(fig, reporting.figure_path(workdir, "recombination_matrix.png")))
    fig, ax = reporting.new_figure(figsize=(7, 4))
    for name, curve in mean_curves.items():
        steps = sorted(curve)
        if len(steps) > 1:
            ax.plot(steps, [100 * curve[s] for s in steps], marker="o", ms=3, label=name)
    ax.axvline(chosen_step, color="k", ls="--", lw=0.8, label="chosen on validation")
    ax.set_xlabel("steps per network")
    ax.set_ylabel("validation recombination (%)")
    ax.legend(fontsize=7, ncol=2)
    paths.append(reporting.save_figure(fig, reporting.figure_path(workdir, "recombination_curves.png")))
    return paths
