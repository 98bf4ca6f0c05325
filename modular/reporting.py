"""Results on disk and on screen: results.json, config.json, "paper vs ours" tables, figures.

Every experiment returns a plain dict; this module makes it JSON-safe, writes it atomically, and
prints the tables a reviewer compares against the paper.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np


def to_jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        x = x.item()
    if hasattr(x, "shape") and hasattr(x, "tolist"):
        return to_jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else str(x)
    return x


def write_json(path: str, obj: Any) -> None:
    """Atomic write: a crash mid-write never leaves a truncated results file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(to_jsonable(obj), f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 1.5 else f"{v:.3f}"
    return str(v)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> str:
    """A markdown table (readable in a terminal and pasteable into a note or README)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    out = [title] if title else []
    out += [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out)


def figure_path(workdir: str, name: str) -> str:
    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    return os.path.join(workdir, "plots", name)


def new_figure(*args, **kw):
    """A matplotlib figure on the headless Agg backend (no display on servers or CI)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kw)


def save_figure(fig, path: str) -> str:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_params_plot(workdir: str, name: str, points: Mapping[str, tuple[float, float]], *, xlabel: str,
                            ylabel: str, title: str) -> str:
    """Labelled scatter of accuracy (%) against parameter count on a log axis; returns the saved PNG's path.

    points: label -> (parameters, accuracy in %). A count of 0 is drawn at 1 so the log axis can show it."""
    fig, ax = new_figure(figsize=(6, 4))
    for label, (count, accuracy) in points.items():
        x = max(count, 1)
        ax.scatter(x, accuracy, s=40)
        ax.annotate(label, (x, accuracy), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_figure(fig, figure_path(workdir, name))


class Stages:
    """Announces a long run's stages ('[tag i/n] title') as each starts and records the seconds each took."""

    def __init__(self, titles: Sequence[str], tag: str = "run"):
        self.titles, self.seconds, self._name, self._i, self._key, self._t = list(titles), {}, tag, 0, None, None

    def next(self, key: str) -> None:
        self._close()
        self._i += 1
        self._key, self._t = key, time.perf_counter()
        print(f"{self.tag} {self.titles[self._i - 1]}", flush=True)

    @property
    def tag(self) -> str:
        return f"[{self._name} {self._i}/{len(self.titles)}]"

    def _close(self) -> None:
        if self._t is not None:
            self.seconds[self._key] = time.perf_counter() - self._t

    def done(self) -> dict:
        """{stage key: seconds}; closes the running stage."""
        self._close()
        self._t = None
        return self.seconds


# --------------------------------------------------------------------------- README tables from results.json
README_MARK = "<!-- results:{name} -->"
README_END = "<!-- /results:{name} -->"


def replace_readme_section(text: str, name: str, body: str) -> str:
    """`text` with the block between README_MARK and README_END for `name` replaced by `body`.

    Each experiment writes its tables into results.json under `readme_tables: {name: markdown}`;
    `python -m experiments.readme` copies them here, so no number in the README is typed by hand.
    """
    start, end = README_MARK.format(name=name), README_END.format(name=name)
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"The README needs exactly one '{start}' line followed by one '{end}' line "
                         f"to receive the {name!r} tables.")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"
