"""Tables and plots of template-mixture results: mixture heatmaps, accuracy tables, interpolation weights."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from modular import protocol, reporting
from modular.methods.templates.multitask import Outcome


def mixture_heatmap(workdir: str, summaries: Mapping[str, dict], title: str) -> str:
    """One [template x layer] heatmap of xi per setting; returns the figure's path."""
    fig, axes = reporting.new_figure(1, len(summaries), figsize=(2.6 * len(summaries) + 1, 3.2), squeeze=False)
    for ax, (name, s) in zip(axes[0], summaries.items()):
        xi = s["xi"]
        im = ax.imshow(xi.T, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(name, fontsize=8)
        ax.set_xticks(range(xi.shape[0]))
        ax.set_yticks(range(xi.shape[1]))
        ax.set_xlabel("layer")
        ax.set_ylabel("template")
    fig.colorbar(im, ax=axes[0, -1])
    fig.suptitle(title, fontsize=9)
    return reporting.save_figure(fig, reporting.figure_path(workdir, f"mixture_weights_{title.split()[0]}.png"))


def results(outcome: Outcome, workdir: str, title: str) -> dict:
    """results.json entries of an outcome: accuracy, its extra results, and per shown setting the argmax
    signature, one-hotness, mixture weights and their heatmap (none when nothing mixes)."""
    out = dict(accuracy=outcome.accuracy, **outcome.extra, params=outcome.counts)
    s = outcome.summaries
    out.update(signature={k: v["signature"] for k, v in s.items()}, one_hotness={k: v["one_hotness"] for k, v in s.items()})
    if s:
        out.update(mixture_weights={k: v["xi"] for k, v in s.items()}, plots=[mixture_heatmap(workdir, s, title)])
    return out


def accuracy_table(results: Mapping, title: str, paper: Mapping[str, str] | None = None) -> tuple[list[dict], str]:
    """(rows, text): test accuracy (%) per setting with its one-hotness, signature and steps, and the paper's
    cell per setting when `paper` is given."""
    steps = results.get("steps", {})
    rows = [dict(setting=k, paper=(paper or {}).get(k, "-"), ours=100 * v, one_hotness=results["one_hotness"].get(k),
                 signature=" ".join(map(str, results["signature"].get(k, []))), steps=steps.get(k))
            for k, v in results["accuracy"].items()]
    columns = ["setting"] + (["paper"] if paper else []) + ["ours", "one_hotness", "signature"] + (
        ["steps"] if steps else [])
    return rows, reporting.format_table(rows, columns, title=title)


def interpolation_lines(interpolation: Mapping[str, dict]) -> str:
    """The chosen interpolation weights (and source scores) of the transfer inits, one line each."""
    lines = []
    for kind, info in interpolation.items():
        lines.append(f"{kind} weights: " + ", ".join(f"{k} {v:.3f}" for k, v in info["weights"].items()))
        if "scores" in info:
            lines.append(f"{kind} source accuracy on target train data: "
                         + ", ".join(f"{k} {100 * v:.1f}%" for k, v in info["scores"].items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------- over seeds (modular.protocol)
def _pm(values, scale: float = 1.0, spec: str = ".1f") -> str:
    e = protocol.estimate([scale * v for v in values])
    return format(e, spec)


def multitask_tables(records: Sequence[dict], paper: Mapping[str, Mapping[str, str]],
                     plain: Sequence[Mapping[str, float]] | None = None) -> dict:
    """{name: markdown} of the multi-seed multitask study (`study.SeedRun.record` per seed): accuracy and
    organisation with vs without the regulariser, per-layer one-hotness, and every seed's signatures.
    paper: {task or 'mean': {'isometric': cell, 'compositional': cell}} (the paper's numbers beside ours);
    plain: per seed {task: accuracy} of a plain multi-task net on the same tasks (a column when given)."""
    reg, unreg = [r["regularised"] for r in records], [r["unregularised"] for r in records]
    tasks = list(reg[0]["accuracy"])
    rows = []
    for t in tasks:
        rows.append(dict(task=t, paper_isometric=paper.get(t, {}).get("isometric", "-"),
                         paper_comp=paper.get(t, {}).get("compositional", "-"),
                         plain=_pm([p[t] for p in plain], 100) if plain else None,
                         regularised=_pm([r["accuracy"][t] for r in reg], 100),
                         unregularised=_pm([r["accuracy"][t] for r in unreg], 100),
                         one_hot_reg=_pm([r["organisation"][t]["one_hotness"] for r in reg], 1, ".3f"),
                         one_hot_unreg=_pm([r["organisation"][t]["one_hotness"] for r in unreg], 1, ".3f"),
                         progressiveness=_pm([r["organisation"][t]["progressiveness"] for r in reg], 1, ".2f")))
    rows.append(dict(task="mean over tasks", paper_isometric=paper.get("mean", {}).get("isometric", "-"),
                     paper_comp=paper.get("mean", {}).get("compositional", "-"),
                     plain=_pm([np.mean([p[t] for t in tasks]) for p in plain], 100) if plain else None,
                     regularised=_pm([np.mean(list(r["accuracy"].values())) for r in reg], 100),
                     unregularised=_pm([np.mean(list(r["accuracy"].values())) for r in unreg], 100),
                     one_hot_reg=_pm([r["mean_one_hotness"] for r in reg], 1, ".3f"),
                     one_hot_unreg=_pm([r["mean_one_hotness"] for r in unreg], 1, ".3f"),
                     progressiveness=_pm([r["mean_progressiveness"] for r in reg], 1, ".2f")))
    n = len(records)
    columns = ["task", "paper_isometric", "paper_comp"] + (["plain"] if plain else []) + [
        "regularised", "unregularised", "one_hot_reg", "one_hot_unreg", "progressiveness"]
    main = reporting.format_table(rows, columns,
                                  title=f"templates/multitask: test accuracy (%) and one-hotness, mean ± SE over "
                                        f"{n} seed(s); regularised = clustering regulariser on, unregularised = off"
                                        + ("; plain = a plain multi-task net (L layers, per-task BN + logits)"
                                           if plain else "") + "; paper = Table 12 (its digit domains, "
                                        "supervised multi-domain training)")
    depth = len(reg[0]["organisation"][tasks[0]]["layer_one_hotness"])
    layer_rows = []
    for kind, runs in (("regularised", reg), ("unregularised", unreg)):
        for t in tasks:
            row = dict(run=kind, task=t)
            for l in range(depth):
                row[f"L{l}"] = f"{np.mean([r['organisation'][t]['layer_one_hotness'][l] for r in runs]):.2f}"
            layer_rows.append(row)
        row = dict(run=kind, task="cross-task agreement")
        for l in range(depth):
            row[f"L{l}"] = f"{np.mean([r['layer_agreement'][l] for r in runs]):.2f}"
        layer_rows.append(row)
    layers = reporting.format_table(layer_rows, ["run", "task"] + [f"L{l}" for l in range(depth)],
                                    title="templates/multitask: per-layer one-hotness max_k xi (mean over seeds; "
                                          "1/K = uniform, 1 = one-hot) and the fraction of task pairs sharing "
                                          "the layer's argmax template")
    sig_rows = [dict(seed=rec["seed"], run=kind, task=t, signature=" ".join(map(str, o["signature"])),
                     runs=" ".join(map(str, o["runs"])), progressiveness=f"{o['progressiveness']:+.2f}")
                for rec in records for kind in ("regularised", "unregularised")
                for t, o in rec[kind]["organisation"].items()]
    sigs = reporting.format_table(sig_rows, ["seed", "run", "task", "signature", "runs", "progressiveness"],
                                  title="templates/multitask: argmax signatures (template per layer), their run "
                                        "lengths and progressiveness (Kendall tau of run length vs position)")
    return dict(templates=main, templates_layers=layers, templates_signatures=sigs)


def transfer_table(per_seed: Sequence[Mapping[str, float]], paper: Mapping[str, str], title: str) -> str:
    """Target test accuracy (%) per transfer init, mean ± SE over seeds, with the paper's finding per row."""
    inits = list(per_seed[0])
    rows = [dict(init=k, paper=paper.get(k, "-"), ours=_pm([a[k] for a in per_seed if k in a], 100)) for k in inits]
    return reporting.format_table(rows, ["init", "paper", "ours"], title=title)


def multitask_heatmaps(workdir: str, records: Sequence[dict], summaries_by_kind: Mapping[str, Mapping]) -> list[str]:
    """One heatmap figure (a panel per task: templates x layers) per run kind of the first seed."""
    seed = records[0]["seed"]
    return [mixture_heatmap(workdir, s, f"multitask_{kind} seed {seed}: mixture weights xi per task")
            for kind, s in summaries_by_kind.items() if s]


def before_after_seeds_table(rows_per_seed: Sequence[Sequence[dict]], paper: Mapping[str, str], title: str) -> str:
    """`compare_adaptation`'s before/after rows (accuracy %) over seeds: mean ± SE of before, after and delta."""
    out = []
    for i, row in enumerate(rows_per_seed[0]):
        runs = [rows[i] for rows in rows_per_seed]
        kind = ("bn_stats" if row["tuned"] == "-" else "plain" if "plain" in row["method"]
                else "mixture" if "supervised" not in row["method"] else None)
        out.append(dict(method=row["method"], tuned=row["tuned"], params=row["params"],
                        paper=paper.get(row["method"], paper.get(kind, "-")),
                        before=_pm([r["before"] for r in runs]), after=_pm([r["after"] for r in runs]),
                        delta=_pm([r["delta"] for r in runs])))
    return reporting.format_table(out, ["method", "tuned", "params", "paper", "before", "after", "delta"], title=title)
