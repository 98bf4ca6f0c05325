"""The comparison protocol every experiment follows, so that its tables can be trusted by a reviewer.

1. Every choice (hyperparameters, thresholds, early stopping, source selection) is made on a validation
   split carved from the training data (`validation_split`); the test set is read once, for the number
   that is reported.
2. Every compared method gets the same tuning grid (`grid`, `budget`), plus its own regulariser grid where
   the method has one; the grid is written into results.json. A choice on the edge of its grid
   (`grid_edges`) is flagged in results.json and printed under the table (`edges_note`): the grid may not
   contain that method's optimum.
3. Every headline number is a mean with its standard error over `config.seeds` runs (`estimate`, `aggregate`).
4. Each paper claim gets a verdict decided from a confidence interval, never by hand (`claim_*`):
   "holds" when the interval lies on the claimed side, "does not hold" when it lies on the other side, and
   "inconclusive" when it straddles (always so with a single seed). Each claim also says its `kind`:
   - "interval": the above, over seeds;
   - "deterministic": every seed gave the same value (a grid choice, a parameter count): a fact, not a
     statistic, so its verdict is read off the value and no interval is claimed;
   - "effect_size" (`claim_effect`): "at least `fraction` of the paper's effect": "holds" when the interval
     lies above that, "refuted" when it lies below it, so a failed reproduction reads as refuted;
   - "not_testable" (`claim_not_testable`): the claim cannot be tested at this scale, with the reason and
     what a test would need.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from modular.data import splits
from modular.data.dataset import Dataset

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
REFUTED, NOT_TESTABLE = "refuted", "not testable at this scale"
INTERVAL, DETERMINISTIC, EFFECT_SIZE, UNTESTABLE = "interval", "deterministic", "effect_size", "not_testable"
LEVEL = 0.95


# --------------------------------------------------------------------------- seeds and validation splits
def seeds(config) -> list[int]:
    """The run seeds: `config.seeds` is a count N (config.seed, config.seed + 1, ...) or an explicit list."""
    spec = config.get("seeds", 1)
    base = int(config.get("seed", 0))
    if isinstance(spec, (list, tuple)):
        out = [int(s) for s in spec]
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool) and spec >= 1:
        out = [base + i for i in range(int(spec))]
    else:
        raise ValueError(f"config.seeds must be a positive count or a list of seeds, got {spec!r}.")
    if not out or len(set(out)) != len(out):
        raise ValueError(f"config.seeds must name distinct seeds, got {out}.")
    return out


def validation_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(fit, validation): both carved from `ds`'s training data, stratified, a pure function of `seed`.

    The validation Dataset holds the held-out training examples in its `test_*` arrays (and the fit part in
    its `train_*`), so every function that evaluates "on the test arrays" can be pointed at validation
    without a second code path. `ds`'s real test arrays appear in neither.
    """
    fit_idx, val_idx = splits.train_test_indices(ds.train_labels, fraction, seed)
    fit = dataclasses.replace(ds, name=f"{ds.name}[fit]", train_images=ds.train_images[fit_idx],
                              train_labels=ds.train_labels[fit_idx])
    val = dataclasses.replace(fit, name=f"{ds.name}[val]", test_images=ds.train_images[val_idx],
                              test_labels=ds.train_labels[val_idx])
    return fit, val


# --------------------------------------------------------------------------- grids and selection
def grid(**axes: Sequence[Any]) -> list[dict]:
    """Every combination of the axes, in a fixed order: grid(lr=[.1, .01], steps=[100]) -> 2 settings."""
    for name, values in axes.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or not list(values):
            raise ValueError(f"grid axis {name!r} must be a non-empty list of values, got {values!r}.")
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(list(axes[n]) for n in names))]


def budget(config_grid) -> list[dict]:
    """The shared learning-rate x steps grid from a config section with `lrs` and `steps` lists."""
    steps = config_grid.steps if isinstance(config_grid.steps, (list, tuple)) else [config_grid.steps]
    return grid(lr=[float(v) for v in config_grid.lrs], steps=[int(v) for v in steps])


def select(settings: Sequence[Mapping], scores: Sequence[float]) -> tuple[dict, float]:
    """(best setting, its validation score); ties go to the earliest setting, so the order of the grid
    (cheapest first, by convention) decides, never the test set."""
    if len(settings) != len(scores) or not settings:
        raise ValueError(f"select needs one score per setting, got {len(settings)} settings and "
                         f"{len(scores)} scores.")
    scores = np.asarray(scores, np.float64)
    if not np.isfinite(scores).any():
        raise ValueError("every setting of the grid gave a non-finite validation score.")
    best = int(np.nanargmax(np.where(np.isfinite(scores), scores, -np.inf)))
    return dict(settings[best]), float(scores[best])


def choose(settings: Sequence[Mapping], evaluate: Callable[[Mapping], float]) -> tuple[dict, float, list]:
    """Evaluates every setting on validation and returns (best, its score, [(setting, score), ...])."""
    scores = [float(evaluate(s)) for s in settings]
    best, score = select(settings, scores)
    return best, score, [dict(setting=dict(s), validation=v) for s, v in zip(settings, scores)]


def grid_edges(axes: Mapping[str, Sequence[Any]], chosen: Sequence[Mapping[str, Any]],
               seeds: Sequence[Any] | None = None, *, scores: Sequence[Sequence[tuple[Mapping, float]] | None] | None = None,
               bounds: Mapping[str, Sequence[float]] | None = None) -> list[dict]:
    """The choices that sit on the edge of an ordered grid axis, where the optimum may lie outside the grid.

    `axes` {name: values} is the grid a method searched (its numeric axes are checked; an axis of one value
    was not searched); `chosen` holds the chosen setting per seed ({name: value}, keys absent from `axes`
    ignored). Returns one entry per (axis, edge) that some seed chose: {axis, value, edge: "lowest" |
    "highest", seeds, tied, of, grid}. A two-value axis has no interior, so every choice on it is an edge.

    `scores` (optional, per choice: [(setting, validation score), ...] over the points it chose among) tells a
    real edge from a tie: when a point whose value on that axis is interior scored as well as the edge choice
    on validation, the grid holds a maximiser inside it, and the seed goes to `tied` instead of `seeds`.
    `bounds` {name: values} are an axis's own limits, beyond which no setting exists (a feature fraction of
    1.0 keeps every feature; a coefficient of 0 does not regularise): a choice there is not an edge.
    Only entries with `seeds` make a number a lower bound (`edges_note`); an empty list means every choice is
    interior, tied with an interior point, or at a bound."""
    seeds = list(range(len(chosen))) if seeds is None else list(seeds)
    if len(seeds) != len(chosen):
        raise ValueError(f"grid_edges: {len(chosen)} chosen settings but {len(seeds)} seeds.")
    if scores is not None and len(scores) != len(chosen):
        raise ValueError(f"grid_edges: {len(chosen)} chosen settings but {len(scores)} lists of scores.")
    bounds = {name: [float(v) for v in values] for name, values in (bounds or {}).items()}
    found = []
    for name, values in axes.items():
        values = list(values)
        if len(values) < 2 or not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                                      for v in values):
            continue
        ordered = sorted(float(v) for v in values)
        for edge, value in (("lowest", ordered[0]), ("highest", ordered[-1])):
            if any(math.isclose(value, b, rel_tol=1e-9, abs_tol=0.0) for b in bounds.get(name, [])):
                continue
            hit, tied = [], []
            for i, (s, c) in enumerate(zip(seeds, chosen)):
                if name not in c or c[name] is None or not math.isclose(float(c[name]), value, rel_tol=1e-9,
                                                                        abs_tol=0.0):
                    continue
                tie = scores is not None and scores[i] is not None and _tied_inside(
                    c, scores[i], name, ordered[0], ordered[-1])
                (tied if tie else hit).append(s)
            if hit or tied:
                found.append(dict(axis=name, value=value, edge=edge, seeds=hit, tied=tied, of=len(chosen),
                                  grid=[v for v in ordered]))
    return found


def _tied_inside(chosen: Mapping, scored: Sequence[tuple[Mapping, float]], name: str, low: float,
                 high: float) -> bool:
    """Whether a point strictly inside (low, high) on axis `name` scored at least as well as `chosen`."""
    def inside(setting):
        return name in setting and setting[name] is not None and low < float(setting[name]) < high
    mine = [v for s, v in scored if v is not None and all(s.get(k) == chosen[k] for k in chosen)]
    if not mine:
        raise ValueError(f"grid_edges: the chosen setting {dict(chosen)} is not among its scored points.")
    inner = [v for s, v in scored if v is not None and inside(s)]
    return bool(inner) and max(inner) >= max(mine)


def edge_text(edges: Sequence[Mapping]) -> str:
    """'lr 0.1 (highest of 0.001..0.1, in 3 of 3 choices)'; '' when no choice is on an edge. A choice is one
    seed's (or one seed and target's) selection; choices tied with an interior point are counted beside."""
    def tied(e):
        n = len(e.get("tied", []))
        return f"; {n} more tied with an interior value" if n else ""
    return "; ".join(f"{e['axis']} {e['value']:g} ({e['edge']} of {e['grid'][0]:g}..{e['grid'][-1]:g}, "
                     f"in {len(e['seeds'])} of {e['of']} choices{tied(e)})" for e in edges if e["seeds"])


def edges_note(rows: Mapping[str, Sequence[Mapping]]) -> str:
    """The line printed under a table whose rows chose grid edges ({row: grid_edges(...)}); '' when none did."""
    hit = {row: edges for row, edges in rows.items() if any(e["seeds"] for e in edges)}
    if not hit:
        return ""
    listed = "; ".join(f"{row}: {edge_text(edges)}" for row, edges in hit.items())
    return (f"Grid-edge choices ({len(hit)} of {len(rows)} rows), so these rows' optimum may lie outside the "
            f"grid and their numbers are lower bounds: {listed}.")


# --------------------------------------------------------------------------- estimates over seeds
@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean over n runs with its standard error and a t-based confidence interval."""
    mean: float
    se: float
    n: int
    values: tuple[float, ...]

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        if self.n < 2 or not math.isfinite(self.se):
            return (-math.inf, math.inf)
        from scipy import stats  # slow import; only needed here
        half = float(stats.t.ppf(0.5 + level / 2, self.n - 1)) * self.se
        return (self.mean - half, self.mean + half)

    def as_dict(self, scale: float = 1.0) -> dict:
        lo, hi = self.interval()
        return dict(mean=scale * self.mean, se=scale * self.se if math.isfinite(self.se) else None, n=self.n,
                    interval=[scale * lo if math.isfinite(lo) else None, scale * hi if math.isfinite(hi) else None],
                    values=[scale * v for v in self.values])

    def __format__(self, spec: str) -> str:
        spec = spec or ".1f"
        if self.n < 2:
            return format(self.mean, spec)
        return f"{format(self.mean, spec)} ± {format(self.se, spec)}"


def estimate(values: Iterable[float]) -> Estimate:
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("estimate needs at least one value.")
    n = len(vals)
    mean = float(np.mean(vals))
    se = float(np.std(vals, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(mean, se, n, vals)


def aggregate(per_seed: Sequence[Mapping[str, Any]]) -> dict:
    """{key: Estimate} from one {key: number} dict per seed; nested dicts are aggregated key by key.
    Keys missing from some seed (or None there) are estimated from the seeds that have them."""
    keys = list(dict.fromkeys(k for run in per_seed for k in run))
    out = {}
    for k in keys:
        vals = [run.get(k) for run in per_seed if run.get(k) is not None]
        if vals and isinstance(vals[0], Mapping):
            out[k] = aggregate(vals)
        elif vals:
            out[k] = estimate(vals)
    return out


def to_dicts(estimates: Mapping[str, Any], scale: float = 1.0) -> dict:
    """JSON form of `aggregate`'s output: {key: {mean, se, n, interval, values}} (nested alike)."""
    return {k: to_dicts(v, scale) if isinstance(v, Mapping) else v.as_dict(scale) for k, v in estimates.items()}


def means(estimates: Mapping[str, Any]) -> dict:
    """{key: mean} (nested alike), for code that wants plain numbers."""
    return {k: means(v) if isinstance(v, Mapping) else v.mean for k, v in estimates.items()}


# --------------------------------------------------------------------------- claims
def verdict(difference: Estimate, *, level: float = LEVEL) -> str:
    """HOLDS when the interval of (claimed side - other side) is above 0, FAILS when below, else INCONCLUSIVE."""
    lo, hi = difference.interval(level)
    if lo > 0:
        return HOLDS
    if hi < 0:
        return FAILS
    return INCONCLUSIVE


def is_deterministic(difference: Estimate) -> bool:
    """Several seeds and no spread at all: the value is a fact of the setup, not a sample."""
    return difference.n > 1 and len(set(difference.values)) == 1


def _claim(text: str, difference: Estimate, evidence: str, scale: float) -> dict:
    if is_deterministic(difference):
        value = difference.values[0]
        return dict(claim=text, evidence=f"{evidence}; the same in every seed", kind=DETERMINISTIC,
                    verdict=HOLDS if value > 0 else FAILS, difference=difference.as_dict(scale), level=LEVEL)
    return dict(claim=text, evidence=evidence, verdict=verdict(difference), kind=INTERVAL,
                difference=difference.as_dict(scale), level=LEVEL)


def claim_greater(text: str, a: Sequence[float], b: Sequence[float], *, names: tuple[str, str] = ("a", "b"),
                  margin: float = 0.0, scale: float = 100.0, unit: str = "pts") -> dict:
    """Claim "a > b + margin", judged on the paired per-seed differences (same seeds, same data splits)."""
    if len(a) != len(b):
        raise ValueError(f"claim {text!r}: {len(a)} values of {names[0]} but {len(b)} of {names[1]}; "
                         "paired claims need one value per seed on each side.")
    diff = estimate(x - y - margin for x, y in zip(a, b))
    ea, eb = estimate(a), estimate(b)
    extra = f" {'-' if margin > 0 else '+'} {scale * abs(margin):g}" if margin else ""
    evidence = (f"{names[0]} {ea.mean * scale:.1f} vs {names[1]} {eb.mean * scale:.1f}; "
                f"{names[0]} - {names[1]}{extra} = {_interval_text(diff, scale)} {unit} (n={diff.n})")
    return _claim(text, diff, evidence, scale)


def claim_within(text: str, a: Sequence[float], b: Sequence[float], *, tolerance: float,
                 names: tuple[str, str] = ("a", "b"), scale: float = 100.0, unit: str = "pts") -> dict:
    """Claim "a is no worse than b by more than `tolerance`": holds when the interval of a - b + tolerance
    lies above 0."""
    return claim_greater(text, a, b, names=names, margin=-tolerance, scale=scale, unit=unit)


def claim_above(text: str, values: Sequence[float], threshold: float, *, name: str = "value",
                scale: float = 1.0, unit: str = "") -> dict:
    """Claim "value > threshold" over seeds (e.g. a correlation below zero: pass the negated values)."""
    diff = estimate(v - threshold for v in values)
    ev = estimate(values)
    evidence = (f"{name} {format(Estimate(ev.mean * scale, ev.se * scale, ev.n, ()), '.3g')}"
                f" vs threshold {threshold * scale:g}; difference {_interval_text(diff, scale, '.3g')}"
                f"{(' ' + unit) if unit else ''} (n={diff.n})")
    return _claim(text, diff, evidence, scale)


def claim_effect(text: str, a: Sequence[float], b: Sequence[float], *, paper_effect: float,
                 fraction: float = 0.5, names: tuple[str, str] = ("a", "b"), scale: float = 100.0,
                 unit: str = "pts") -> dict:
    """Claim "a - b reaches at least `fraction` of the paper's effect `paper_effect`" (both as fractions, e.g.
    0.395 for 39.5 points): "holds" when the interval of a - b lies above fraction x paper_effect, "refuted"
    when it lies below it, "inconclusive" otherwise. Sized to the paper, so a null result can be rejected."""
    if paper_effect <= 0:
        raise ValueError(f"claim {text!r}: paper_effect must be a positive gain, got {paper_effect}.")
    claim = claim_greater(text, a, b, names=names, margin=fraction * paper_effect, scale=scale, unit=unit)
    claim["evidence"] += f"; paper's effect {scale * paper_effect:.1f} {unit}, {fraction:g} of it = {scale * fraction * paper_effect:.1f}"
    if claim["verdict"] == FAILS:
        claim["verdict"] = REFUTED
    claim.update(paper_effect=scale * paper_effect, fraction=fraction)
    if claim["kind"] == INTERVAL:
        claim["kind"] = EFFECT_SIZE
    return claim


def claim_not_testable(text: str, reason: str, needed: str) -> dict:
    """A paper claim that this scale cannot test: why, and what a test would need (a number where possible)."""
    return dict(claim=text, verdict=NOT_TESTABLE, kind=UNTESTABLE, evidence=f"{reason}; a test needs {needed}",
                reason=reason, needed=needed)


def _interval_text(e: Estimate, scale: float, spec: str = ".1f") -> str:
    lo, hi = e.interval()
    if not math.isfinite(lo):
        return f"{format(e.mean * scale, spec)} (one seed: no interval)"
    return (f"{format(e.mean * scale, spec)} ± {format(e.se * scale, spec)} "
            f"[{format(lo * scale, spec)}, {format(hi * scale, spec)}]")


def claims_table(claims: Sequence[Mapping]) -> str:
    """The printed form of a results.json `claims` list."""
    from modular import reporting
    rows = [dict(claim=c["claim"], evidence=c["evidence"],
                 verdict=c["verdict"] + (" (deterministic)" if c.get("kind") == DETERMINISTIC else ""))
            for c in claims]
    return reporting.format_table(rows, ["claim", "verdict", "evidence"], title="Paper claims at this scale")


def mean_se_table(estimates: Mapping[str, Mapping[str, Estimate]], *, rows: Sequence[str],
                  columns: Sequence[str], scale: float = 100.0, paper: Mapping | None = None,
                  row_title: str = "method", title: str = "", paper_title: str = "paper",
                  extra: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A markdown table of `estimates[row][column]` as 'mean ± se' (scaled, default %), optional paper column
    (headed `paper_title`, which should say which of the paper's tables and settings its numbers come from)
    and `extra` columns {title: {row: value}} at the end."""
    from modular import reporting
    table = []
    for r in rows:
        row = {row_title: r}
        if paper is not None:
            row[paper_title] = paper.get(r)
        for c in columns:
            e = estimates.get(r, {}).get(c)
            row[c] = None if e is None else format(Estimate(e.mean * scale, e.se * scale, e.n, ()), ".1f")
        for name, values in (extra or {}).items():
            row[name] = values.get(r)
        table.append(row)
    cols = [row_title] + ([paper_title] if paper is not None else []) + list(columns) + list(extra or {})
    return reporting.format_table(table, cols, title=title)
