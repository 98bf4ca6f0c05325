"""Tables and plots of template-mixture results: mixture heatmaps, accuracy tables, interpolation weights."""
from __future__ import annotations

from typing import Mapping

from modular import reporting
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


def accuracy_table(results: Mapping, title: str) -> tuple[list[dict], str]:
    """(rows, text): test accuracy (%) per setting with its one-hotness, signature and steps."""
    steps = results.get("steps", {})
    rows = [dict(setting=k, ours=100 * v, one_hotness=results["one_hotness"].get(k),
                 signature=" ".join(map(str, results["signature"].get(k, []))), steps=steps.get(k))
            for k, v in results["accuracy"].items()]
    columns = ["setting", "ours", "one_hotness", "signature"] + (["steps"] if steps else [])
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


def before_after_table(rows: list[dict], title: str) -> str:
    shown = [dict(r, before=f"{r['before']:.1f}", after=f"{r['after']:.1f}", delta=f"{r['delta']:+.1f}") for r in rows]
    return reporting.format_table(shown, ["method", "tuned", "params", "before", "after", "delta"], title=title)
